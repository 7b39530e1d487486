"""A Kafka Streams application (org.apache.kafka:kafka-streams 4.1.1) with
processing.guarantee=exactly_once_v2 against both brokers: it counts the records of each key
(tests/clients/java, dev.sluice.probe.EosCounter), committing output and input offsets in one
transaction per commit. Read with read_committed, the output's last count of every key is the
same on Sluice as on Apache Kafka: the number of input records with that key."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import time
from collections import Counter

import pytest

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


@pytest.mark.timeout(240)
def test_a_streams_application_with_exactly_once_v2_counts_every_record_once(kafka, tmp_path):
    if not (PROBE_CLASSES / "dev" / "sluice" / "probe" / "EosCounter.class").exists() \
            or not any(PROBE_LIB.glob("kafka-streams-*.jar")):
        missing("the Streams application is not built "
                "(mvn -B -q -f tests/clients/java/pom.xml package)")
    source = kafka.create_topic(partitions=PARTITIONS)
    sink = kafka.create_topic(partitions=PARTITIONS)
    producer = kafka.producer(**{"enable.idempotence": True, "linger.ms": 5})
    expected = Counter()
    for i in range(RECORDS):
        key = f"key-{i % KEYS}"
        producer.produce(source, key=key.encode(), value=f"v{i}".encode())
        expected[key] += 1
    assert producer.flush(60) == 0

    log_path = tmp_path / "streams.log"
    with open(log_path, "wb") as log:
        app = subprocess.Popen(
            [java(), "-Xms64m", "-Xmx512m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC",
             "-cp", f"{PROBE_CLASSES}:{PROBE_LIB}/*", STREAMS_MAIN, kafka.bootstrap,
             kafka.name("counter"), source, sink, str(tmp_path / "state")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    try:
        deadline = time.monotonic() + RUN_S
        while True:
            counts = last_counts(kafka, sink)
            if counts == dict(expected):
                break
            assert app.poll() is None, \
                f"the application stopped ({app.returncode}): {log_path.read_text()[-4000:]}"
            assert time.monotonic() < deadline, \
                f"counts after {RUN_S}s: {counts}, expected {dict(expected)}: " \
                f"{log_path.read_text()[-4000:]}"
            time.sleep(1)
    finally:
        try:
            os.killpg(app.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        app.wait(timeout=30)
    assert "state RUNNING" in log_path.read_text()
