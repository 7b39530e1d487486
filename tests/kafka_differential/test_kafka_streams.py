"""A Kafka Streams application (org.apache.kafka:kafka-streams 4.1.1) with
processing.guarantee=exactly_once_v2 against both brokers: it counts the records of each key
(tests/clients/java, dev.sluice.probe.EosCounter), committing output and input offsets in one
transaction per commit, its counts kept in a compacted changelog topic. Read with
read_committed, the output's last count of every key is the same on Sluice as on Apache Kafka:
the number of input records with that key, also when the application is killed with SIGKILL
and restores its counts from the changelog."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import time
from collections import Counter

import pytest
from confluent_kafka.admin import ConfigResource

from librdkafka_client import read_to_end
from required import missing

from .test_java_client import PROBE_CLASSES, PROBE_LIB, java

STREAMS_MAIN = "dev.sluice.probe.EosCounter"
PARTITIONS = 2
KEYS = 7
RECORDS = 700
RUN_S = 120


def last_counts(kafka, topic: str) -> dict[str, int]:
    """The last count of each key, as a read_committed consumer reads the output to its end."""
    counts = {}
    for message in read_to_end(kafka.bootstrap, topic, PARTITIONS, kafka.name("check")):
        (count,) = struct.unpack(">q", message.value())
        counts[message.key().decode()] = count
    return counts


def produce_inputs(kafka, topic: str, first: int, count: int, expected: Counter):
    producer = kafka.producer(**{"enable.idempotence": True, "linger.ms": 5})
    for i in range(first, first + count):
        key = f"key-{i % KEYS}"
        producer.produce(topic, key=key.encode(), value=f"v{i}".encode())
        expected[key] += 1
    assert producer.flush(60) == 0


class StreamsApp:
    """One run of the EosCounter application (a JVM) until killed."""

    def __init__(self, kafka, application_id: str, source: str, sink: str, tmp_path):
        if not (PROBE_CLASSES / "dev" / "sluice" / "probe" / "EosCounter.class").exists() \
                or not any(PROBE_LIB.glob("kafka-streams-*.jar")):
            missing("the Streams application is not built "
                    "(mvn -B -q -f tests/clients/java/pom.xml package)")
        self.kafka, self.sink = kafka, sink
        self.log_path = tmp_path / f"streams-{time.monotonic_ns()}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [java(), "-Xms64m", "-Xmx512m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC",
                 "-cp", f"{PROBE_CLASSES}:{PROBE_LIB}/*", STREAMS_MAIN, kafka.bootstrap,
                 application_id, source, sink, str(tmp_path / "state")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)

    def wait_for_counts(self, expected: Counter):
        deadline = time.monotonic() + RUN_S
        while True:
            counts = last_counts(self.kafka, self.sink)
            if counts == dict(expected):
                return
            assert self.process.poll() is None, \
                f"the application stopped ({self.process.returncode}): " \
                f"{self.log_path.read_text()[-4000:]}"
            assert time.monotonic() < deadline, \
                f"counts after {RUN_S}s: {counts}, expected {dict(expected)}: " \
                f"{self.log_path.read_text()[-4000:]}"
            time.sleep(1)

    def kill(self):
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)
        assert "state RUNNING" in self.log_path.read_text()


@pytest.mark.timeout(240)
def test_a_streams_application_with_exactly_once_v2_counts_every_record_once(kafka, tmp_path):
    source = kafka.create_topic(partitions=PARTITIONS)
    sink = kafka.create_topic(partitions=PARTITIONS)
    expected = Counter()
    produce_inputs(kafka, source, 0, RECORDS, expected)
    app = StreamsApp(kafka, kafka.name("counter"), source, sink, tmp_path)
    try:
        app.wait_for_counts(expected)
    finally:
        app.kill()


@pytest.mark.timeout(360)
def test_a_killed_streams_application_restores_its_counts_from_the_compacted_changelog(
        kafka, tmp_path):
    """Killed with SIGKILL, the application's in-memory counts are gone: its next run restores
    them from the changelog topic (created by Streams with cleanup.policy=compact) and counts
    on from there, so the final counts are still exact."""
    source = kafka.create_topic(partitions=PARTITIONS)
    sink = kafka.create_topic(partitions=PARTITIONS)
    application_id = kafka.name("counter")
    expected = Counter()
    produce_inputs(kafka, source, 0, RECORDS // 2, expected)
    first = StreamsApp(kafka, application_id, source, sink, tmp_path)
    try:
        first.wait_for_counts(expected)
    finally:
        first.kill()
    changelog = f"{application_id}-counts-changelog"
    described = kafka.admin().describe_configs(
        [ConfigResource(ConfigResource.Type.TOPIC, changelog)])
    config = next(iter(described.values())).result(timeout=30)
    assert config["cleanup.policy"].value == "compact"

    produce_inputs(kafka, source, RECORDS // 2, RECORDS - RECORDS // 2, expected)
    second = StreamsApp(kafka, application_id, source, sink, tmp_path)
    try:
        second.wait_for_counts(expected)
    finally:
        second.kill()
