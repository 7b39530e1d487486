"""Crash soak: SIGKILL the broker many times under mixed, continuous load, restarting it each
time, while the clients keep going across the restarts as real applications do:

- Kafka: an idempotent (enable.idempotence), acks=all librdkafka producer to a 3-partition topic.
  Batches in flight at a kill are retried after the restart, so the broker's de-duplication of
  retried batches (producer state rebuilt from the log) is exercised at every kill.
- AMQP: two publishers in confirm mode (persistent messages, durable queue) and a consumer with
  manual acks and a prefetch window, each reconnecting after every kill.

After every restart the Kafka topic is read back: every acknowledged record is there exactly once at
its acknowledged offset, no value is stored twice, nothing unproduced or corrupt is served. Every
FULL_CHECK_EVERY kills, and at the end, the whole topic is checked; in between, the part a crash
can touch: from RECHECK_RECORDS before the previous check's end of each partition.
At the end, with the publishers stopped and the queue drained: every confirmed AMQP message was
delivered, none was delivered fresh (redelivered=False) twice, and every repeat came flagged
redelivered (an ack the kill undid).

SLUICE_SOAK_KILLS sets the number of kills (default 10, as CI runs it; `scripts/crash_soak.sh`
runs 100), SLUICE_SOAK_SEED the random schedule.
"""

import os
import random
import re
import threading
import time

import pika
import pytest
from confluent_kafka import Producer

from librdkafka_client import create_topic, read_all, unique_name

PARTITIONS = 3
KAFKA_RATE_PER_S = 2_000
AMQP_PUBLISHERS = 2
AMQP_RATE_PER_S = 500  # per publisher
RUN_BEFORE_KILL_S = (0.4, 1.5)
KAFKA_VALUE = re.compile(rb"^k(\d+)$")
QUEUE = "soak-queue"
FULL_CHECK_EVERY = 10
# Records per partition before the last checked end that each check reads again: far more than
# a kill can leave unsynced (a few hundred ms of load).
RECHECK_RECORDS = 20_000


def kills_wanted() -> int:
    return int(os.environ.get("SLUICE_SOAK_KILLS", "10"))


class Paced:
    """Sleeps so a loop runs at about `rate_per_s` iterations a second."""

    def __init__(self, rate_per_s):
        self.interval = 1.0 / rate_per_s
        self.next = time.monotonic()

    def wait(self):
        self.next += self.interval
        delay = self.next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif delay < -1:
            self.next = time.monotonic()  # far behind (a restart): do not burst to catch up


class KafkaLoad(threading.Thread):
    def __init__(self, bootstrap, topic):
        super().__init__(name="kafka-producer", daemon=True)
        self.topic = topic
        self.producer = Producer({
            "bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
            "linger.ms": 5, "message.timeout.ms": 120_000,
            "reconnect.backoff.ms": 20, "reconnect.backoff.max.ms": 200,
            "log_level": 2,  # the refused reconnects of every restart are expected
        })
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked = {}  # n -> (partition, offset)
        self.failed = []
        self.produced = 0
        self.fatal = None

    def on_delivery(self, err, msg):
        n = int(KAFKA_VALUE.match(msg.value()).group(1))
        with self.lock:
            if err is not None:
                self.failed.append((n, str(err)))
                if err.fatal():
                    self.fatal = str(err)
            else:
                self.acked[n] = (msg.partition(), msg.offset())

    def acked_count(self):
        with self.lock:
            return len(self.acked)

    def run(self):
        pace = Paced(KAFKA_RATE_PER_S)
        n = 0
        while not self.stop.is_set():
            try:
                self.producer.produce(self.topic, value=b"k%d" % n, partition=n % PARTITIONS,
                                      on_delivery=self.on_delivery)
            except BufferError:
                self.producer.poll(0.05)
                continue
            n += 1
            self.produced = n
            self.producer.poll(0)
            pace.wait()
        self.remaining = self.producer.flush(150)


def amqp_connect(port):
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", port, connection_attempts=1, socket_timeout=5, blocked_connection_timeout=30,
        heartbeat=0))


class AmqpPublisher(threading.Thread):
    def __init__(self, port, worker):
        super().__init__(name=f"amqp-publisher-{worker}", daemon=True)
        self.port = port
        self.worker = worker
        self.stop = threading.Event()
        self.confirmed = []
        self.n = 0

    def run(self):
        pace = Paced(AMQP_RATE_PER_S)
        while not self.stop.is_set():
            try:
                connection = amqp_connect(self.port)
                channel = connection.channel()
                channel.confirm_delivery()
                while not self.stop.is_set():
                    body = f"p{self.worker}-{self.n}".encode()
                    self.n += 1  # a number is never reused, confirmed or not
                    channel.basic_publish("", QUEUE, body, pika.BasicProperties(delivery_mode=2),
                                          mandatory=True)
                    self.confirmed.append(body)  # returned: the broker confirmed it
                    pace.wait()
                connection.close()
            except Exception:  # the broker died: reconnect once it is back
                time.sleep(0.05)


class AmqpConsumer(threading.Thread):
    def __init__(self, port):
        super().__init__(name="amqp-consumer", daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.deliveries = []  # (body, redelivered) in arrival order
        self.last_delivery = time.monotonic()

    def on_message(self, channel, method, _properties, body):
        self.deliveries.append((body, method.redelivered))
        self.last_delivery = time.monotonic()
        channel.basic_ack(method.delivery_tag)

    def run(self):
        while not self.stop.is_set():
            try:
                connection = amqp_connect(self.port)
                channel = connection.channel()
                channel.basic_qos(prefetch_count=50)
                channel.basic_consume(QUEUE, self.on_message)
                while not self.stop.is_set():
                    connection.process_data_events(time_limit=0.1)
                connection.close()
            except Exception:
                time.sleep(0.05)


def check_kafka(bootstrap, topic, load, kill, starts=None):
    """Checks the topic from `starts` (partition -> offset; all of it when None); returns each
    partition's end as read."""
    starts = starts or {}
    with load.lock:
        acked = {n: where for n, where in load.acked.items() if where[1] >= starts.get(where[0], 0)}
    produced = load.produced
    records = read_all(bootstrap, topic, PARTITIONS, timeout_s=300,
                       extra_config={"check.crcs": True}, start_offsets=starts)
    ends = dict(starts)
    at = {}
    for partition, offset, _key, value, _headers in records:
        match = KAFKA_VALUE.match(value or b"")
        assert match, f"kill {kill}: corrupt value {value!r} at {partition}/{offset}"
        n = int(match.group(1))
        assert n < produced + 10_000, f"kill {kill}: {value!r} was never produced"
        assert n not in at, (f"kill {kill}: {value!r} stored twice, at {at[n]} and "
                             f"{(partition, offset)}: a retried batch was not de-duplicated")
        at[n] = (partition, offset)
        ends[partition] = offset + 1
    lost = [n for n in acked if n not in at]
    assert not lost, f"kill {kill}: {len(lost)} acknowledged records lost, e.g. {sorted(lost)[:5]}"
    moved = [(n, acked[n], at[n]) for n in acked if at[n] != acked[n]]
    assert not moved, f"kill {kill}: acknowledged records moved offset, e.g. {moved[:5]}"
    return ends


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_soak_sigkill_under_mixed_load_loses_and_duplicates_nothing(broker_factory):
    kills = kills_wanted()
    seed = int(os.environ.get("SLUICE_SOAK_SEED", time.time_ns() % 1_000_000))
    print(f"crash soak: {kills} kills, seed {seed} (SLUICE_SOAK_SEED={seed} replays the schedule)")
    rng = random.Random(seed)
    broker = broker_factory("--fsync", "batch")
    topic = unique_name("soak")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    setup = amqp_connect(broker.amqp_port)
    setup.channel().queue_declare(QUEUE, durable=True)
    setup.close()

    kafka = KafkaLoad(broker.bootstrap, topic)
    publishers = [AmqpPublisher(broker.amqp_port, w) for w in range(AMQP_PUBLISHERS)]
    consumer = AmqpConsumer(broker.amqp_port)
    for thread in [kafka, consumer, *publishers]:
        thread.start()
    checked_ends = {}
    try:
        for kill in range(1, kills + 1):
            before = kafka.acked_count()
            time.sleep(rng.uniform(*RUN_BEFORE_KILL_S))
            deadline = time.monotonic() + 30
            while kafka.acked_count() == before and time.monotonic() < deadline:
                time.sleep(0.05)  # make sure each round carries acknowledged work
            assert kafka.fatal is None, f"idempotent producer failed fatally: {kafka.fatal}"
            broker.kill9()
            broker.start()
            full = kill % FULL_CHECK_EVERY == 0
            starts = None if full else {p: max(0, end - RECHECK_RECORDS)
                                        for p, end in checked_ends.items()}
            checked_ends = check_kafka(broker.bootstrap, topic, kafka, kill, starts)
            confirmed = sum(len(p.confirmed) for p in publishers)
            print(f"kill {kill}: kafka {kafka.acked_count()} acked / "
                  f"{sum(checked_ends.values())} stored ({'full' if full else 'recent'} check), "
                  f"amqp {confirmed} confirmed / {len(consumer.deliveries)} delivered")
    finally:
        for thread in [kafka, *publishers]:
            thread.stop.set()
        for thread in [kafka, *publishers]:
            thread.join(timeout=180)

    assert kafka.fatal is None, f"idempotent producer failed fatally: {kafka.fatal}"
    assert kafka.remaining == 0, f"{kafka.remaining} Kafka messages without a delivery report"
    # Messages still in flight when the load stopped are retried to a live broker: all succeed.
    assert not kafka.failed, f"{len(kafka.failed)} Kafka deliveries failed, e.g. {kafka.failed[:3]}"
    check_kafka(broker.bootstrap, topic, kafka, "final")

    # Drain: the consumer takes everything left; then compare.
    deadline = time.monotonic() + 120
    while time.monotonic() - consumer.last_delivery < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    consumer.stop.set()
    consumer.join(timeout=30)
    confirmed = [body for p in publishers for body in p.confirmed]
    delivered = {}
    fresh = {}
    for body, redelivered in consumer.deliveries:
        delivered[body] = delivered.get(body, 0) + 1
        if not redelivered:
            fresh[body] = fresh.get(body, 0) + 1
    lost = [b for b in confirmed if b not in delivered]
    assert not lost, f"{len(lost)} confirmed AMQP messages never delivered, e.g. {lost[:5]}"
    twice = [b for b, count in fresh.items() if count > 1]
    assert not twice, f"{len(twice)} AMQP messages delivered fresh twice (stored twice): {twice[:5]}"
    print(f"crash soak done: {kills} kills; kafka {len(kafka.acked)} acknowledged; amqp "
          f"{len(confirmed)} confirmed, {len(consumer.deliveries)} deliveries, "
          f"{sum(1 for _b, r in consumer.deliveries if r)} redelivered")
