"""kill -9 while producing with acks=all: after a restart every acknowledged message is there,
exactly once, at the offset it was acknowledged with, and nothing corrupt is served."""

import os
import random
import re
import threading
import time

import pytest
from confluent_kafka import Producer

from librdkafka_client import create_topic, read_all, unique_name

ROUNDS = 3
PARTITIONS = 3
KILL_AFTER_S = (1.0, 4.0)
VALUE = re.compile(rb"^r(\d+)-(\d+)$")


class AckingProducer(threading.Thread):
    """Produces r<round>-<n> as fast as librdkafka accepts them, round-robin over partitions,
    and records each delivery report without error: the acknowledged set."""

    def __init__(self, bootstrap, topic, round_number):
        super().__init__(name=f"producer-round-{round_number}", daemon=True)
        self.topic = topic
        self.round = round_number
        self.producer = Producer({
            "bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 2,
            "queue.buffering.max.messages": 100_000,
            # Once the broker is dead, fail what is in flight quickly instead of retrying.
            "message.timeout.ms": 3000,
            "enable.idempotence": False,
        })
        self.stop = threading.Event()
        self.first_ack = threading.Event()
        self.lock = threading.Lock()
        self.acked = {}  # n -> (partition, offset)
        self.produced = 0
        self.failed = 0
        self.error = None

    def on_delivery(self, err, msg):
        if err is not None:
            self.failed += 1
            return
        n = int(VALUE.match(msg.value()).group(2))
        with self.lock:
            self.acked[n] = (msg.partition(), msg.offset())
        self.first_ack.set()

    def run(self):
        try:
            n = 0
            while not self.stop.is_set():
                try:
                    self.producer.produce(self.topic, value=f"r{self.round}-{n}".encode(),
                                          partition=n % PARTITIONS, on_delivery=self.on_delivery)
                except BufferError:
                    self.producer.poll(0.01)
                    continue
                n += 1
                self.produced = n
                if n % 100 == 0:
                    self.producer.poll(0)
            # Every outstanding message gets its report (success or timeout) before we return.
            remaining = self.producer.flush(30)
            assert remaining == 0, f"{remaining} messages without a delivery report"
        except Exception as err:  # surfaced by the test through .error
            self.error = err


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_acknowledged_messages_survive_sigkill_exactly_once_in_order(broker_factory):
    seed = int(os.environ.get("SLUICE_CRASH_SEED", time.time_ns() % 1_000_000))
    print(f"crash test seed: {seed} (rerun with SLUICE_CRASH_SEED={seed})")
    rng = random.Random(seed)
    broker = broker_factory("--fsync", "batch")
    topic = unique_name("crash")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    acked = {}  # (round, n) -> (partition, offset)
    produced = {}  # round -> how many were handed to the client

    for round_number in range(ROUNDS):
        producer = AckingProducer(broker.bootstrap, topic, round_number)
        producer.start()
        assert producer.first_ack.wait(30), f"round {round_number}: no acknowledgement in 30s"
        time.sleep(rng.uniform(*KILL_AFTER_S))
        acked_before_kill = len(producer.acked)
        broker.process.kill()  # SIGKILL while the producer is in full flow
        broker.process.wait(timeout=30)
        assert broker.process.returncode == -9
        producer.stop.set()
        producer.join(timeout=60)
        assert not producer.is_alive(), "producer did not finish after the broker died"
        assert producer.error is None, f"producer failed: {producer.error!r}"
        print(f"round {round_number}: produced {producer.produced}, acknowledged "
              f"{len(producer.acked)} ({acked_before_kill} before the kill), "
              f"failed {producer.failed}")
        acked.update(((round_number, n), where) for n, where in producer.acked.items())
        produced[round_number] = producer.produced

        broker.start()
        assert_every_acknowledged_message_present_once_in_order(
            broker.bootstrap, topic, acked, produced, round_number)


def assert_every_acknowledged_message_present_once_in_order(bootstrap, topic, acked, produced,
                                                            round_number):
    records = read_all(bootstrap, topic, PARTITIONS, timeout_s=120,
                       extra_config={"check.crcs": True})
    at = {}
    seen = {}
    for partition, offset, _, value, _ in records:
        match = VALUE.match(value or b"")
        assert match, f"round {round_number}: corrupt value {value!r} at {partition}/{offset}"
        key = (int(match.group(1)), int(match.group(2)))
        assert key[0] <= round_number and key[1] < produced[key[0]], (
            f"value {value!r} at {partition}/{offset} was never produced")
        at[(partition, offset)] = key
        seen[key] = seen.get(key, 0) + 1

    for partition in range(PARTITIONS):
        offsets = sorted(o for p, o in at if p == partition)
        assert offsets == list(range(len(offsets))), (
            f"round {round_number}: partition {partition} has offset gaps")

    missing = [k for k in acked if k not in seen]
    assert not missing, (f"round {round_number}: {len(missing)} acknowledged messages lost, "
                         f"e.g. {sorted(missing)[:5]}")
    duplicated = [k for k in acked if seen[k] > 1]
    assert not duplicated, (f"round {round_number}: acknowledged messages stored more than "
                            f"once, e.g. {sorted(duplicated)[:5]}")
    moved = [(k, where, at.get(where)) for k, where in acked.items() if at.get(where) != k]
    assert not moved, (f"round {round_number}: acknowledged offsets now hold other messages, "
                       f"e.g. {moved[:5]}")
    # Acknowledgement order is production order within a partition.
    for partition in range(PARTITIONS):
        in_log = [k for (p, _), k in sorted(at.items()) if p == partition and k in acked]
        assert in_log == sorted(in_log), (
            f"round {round_number}: partition {partition} holds acknowledged messages out of "
            f"production order")
