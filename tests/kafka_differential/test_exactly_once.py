"""Exactly-once, proven the hard way: a consume-transform-produce loop (sendOffsetsToTransaction
with the Java client, send_offsets_to_transaction with librdkafka) is killed with SIGKILL at
random points again and again, and the broker itself once midway; after it has caught up, the
output topic read with read_committed holds every input record exactly once, in each
partition's order. Against Apache Kafka too, so the test is known to be right.

The copiers are tests/clients/java (dev.sluice.probe.EosCopier) and tests/clients/eos."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from librdkafka_client import read_to_end
from required import missing

from .test_java_client import PROBE_CLASSES, PROBE_LIB, java

PYTHON_COPIER = Path(__file__).resolve().parents[1] / "clients" / "eos" / "eos_copier.py"
JAVA_COPIER = "dev.sluice.probe.EosCopier"
PARTITIONS = 2
INPUTS = 1000
KILLS = 6
CATCH_UP_S = 120
# Between transactions: 1000 records at 5 per transaction take over ten seconds to copy, so
# the kills land inside the copy, not after it.
PAUSE_MS = 40


def copier_command(client: str, kafka, source: str, sink: str, group: str, tid: str):
    args = [kafka.bootstrap, source, sink, group, tid, str(PAUSE_MS)]
    if client == "librdkafka":
        return [sys.executable, str(PYTHON_COPIER), *args]
    if not (PROBE_CLASSES / "dev" / "sluice" / "probe" / "EosCopier.class").exists():
        missing("the Java copier is not built (mvn -B -q -f tests/clients/java/pom.xml package)")
    return [java(), "-Xms32m", "-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC",
            "-cp", f"{PROBE_CLASSES}:{PROBE_LIB}/*", JAVA_COPIER, *args]


def start(command, log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def kill9(process: subprocess.Popen):
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def read_committed(kafka, topic: str) -> dict[int, list[bytes]]:
    """Each partition's values as a read_committed consumer reads them to the end."""
    values = {p: [] for p in range(PARTITIONS)}
    for message in read_to_end(kafka.bootstrap, topic, PARTITIONS, kafka.name("check")):
        values[message.partition()].append(message.value())
    return values


@pytest.mark.timeout(420)
@pytest.mark.parametrize("client", ["librdkafka", "java"])
def test_a_copier_killed_at_random_points_copies_every_record_exactly_once(kafka, client,
                                                                          tmp_path):
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    source = kafka.create_topic(partitions=PARTITIONS)
    sink = kafka.create_topic(partitions=PARTITIONS)
    producer = kafka.producer(**{"enable.idempotence": True, "linger.ms": 5})
    expected = {p: [] for p in range(PARTITIONS)}
    for i in range(INPUTS):
        value = f"record-{i:05d}".encode()
        producer.produce(source, value=value, partition=i % PARTITIONS)
        expected[i % PARTITIONS].append(value)
    assert producer.flush(60) == 0

    group, tid = kafka.name("eos-group"), kafka.name("eos-tx")
    command = copier_command(client, kafka, source, sink, group, tid)
    log_path = tmp_path / "copier.log"
    # The JVM takes a second or so to start: its kills come later to land inside the loop.
    earliest, latest = (0.3, 2.5) if client == "librdkafka" else (1.0, 4.0)
    for round_ in range(KILLS):
        copier = start(command, log_path)
        time.sleep(rng.uniform(earliest, latest))
        kill9(copier)
        if round_ == KILLS // 2:
            kafka.restart(kill=True)
    committed_before = log_path.read_text().count("committed ")
    # The killed copiers made progress: the kills landed inside the copy.
    assert committed_before > 0, f"no copier committed before its kill: " \
        f"{log_path.read_text()[-3000:]}"

    copier = start(command, log_path)
    try:
        deadline = time.monotonic() + CATCH_UP_S
        while True:
            copied = read_committed(kafka, sink)
            if sum(len(v) for v in copied.values()) >= INPUTS:
                break
            assert copier.poll() is None, \
                f"the copier exited ({copier.returncode}): {log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, \
                f"copied {sum(len(v) for v in copied.values())} of {INPUTS} (seed {seed}): " \
                f"{log_path.read_text()[-3000:]}"
            time.sleep(1)
    finally:
        kill9(copier)
    copied = read_committed(kafka, sink)
    for partition in range(PARTITIONS):
        got = copied[partition]
        duplicates = len(got) - len(set(got))
        assert duplicates == 0, f"partition {partition}: {duplicates} duplicates (seed {seed})"
        assert got == expected[partition], \
            f"partition {partition}: {len(got)} records, {len(expected[partition])} expected " \
            f"(seed {seed})"
    print(f"{client}: {committed_before} transactions committed by the {KILLS} killed copiers; "
          f"seed {seed}")
