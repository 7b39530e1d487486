"""Unmodified clients produce keyed messages with acks=all and read every one back, each key's
messages in the order they were sent; compressed batches come back intact."""

import collections
import os
import time

import pytest
from confluent_kafka import Consumer, Producer
from kafka import KafkaConsumer, KafkaProducer

from librdkafka_client import create_topic, read_all, unique_name

PARTITIONS = 3
KEYS = 1000
MESSAGES = 100_000
# kafka-python (pure Python) produces and consumes 100,000 messages in well under a minute on
# this 2-core machine with the crc32c extension installed; override to shorten a local run.
KAFKA_PYTHON_MESSAGES = int(os.environ.get("SLUICE_KAFKA_PYTHON_MESSAGES", MESSAGES))


def keyed_messages(count):
    """(key, value) pairs; the value carries the key and that key's sequence number."""
    sequence = collections.Counter()
    for i in range(count):
        key = f"key-{i % KEYS:04d}"
        yield key.encode(), f"{key}:{sequence[key]:06d}".encode()
        sequence[key] += 1


def assert_complete_and_in_key_order(sent, received):
    """sent: [(key, value)] in send order. received: [(partition, key, value)] in the order the
    consumer saw them (partitions interleaved, each partition in offset order)."""
    assert len(received) == len(sent), f"received {len(received)} of {len(sent)} messages"
    assert {(k, v) for _, k, v in received} == set(sent), "received set differs from sent set"
    partition_of_key = {}
    last_sequence = {}
    for partition, key, value in received:
        assert partition_of_key.setdefault(key, partition) == partition, (
            f"key {key!r} found in partitions {partition_of_key[key]} and {partition}")
        sequence = int(value.rsplit(b":", 1)[1])
        previous = last_sequence.get(key, -1)
        assert sequence == previous + 1, (
            f"key {key!r}: sequence {sequence} arrived after {previous}")
        last_sequence[key] = sequence


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_acks_all_keyed_messages_through_librdkafka_arrive_complete_in_key_order(kafka):
    topic = unique_name("librdkafka-keyed")
    create_topic(kafka.bootstrap, topic, PARTITIONS)
    sent = list(keyed_messages(MESSAGES))

    producer = Producer({
        "bootstrap.servers": kafka.bootstrap, "acks": "all", "linger.ms": 20,
        "batch.num.messages": 10000, "queue.buffering.max.messages": 2 * MESSAGES,
        "compression.type": "none"})
    delivery_errors = []
    delivered = [0]

    def on_delivery(err, msg):
        if err is not None:
            delivery_errors.append(err)
        else:
            delivered[0] += 1

    for key, value in sent:
        producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(120) == 0, "messages still undelivered after 120s"
    assert not delivery_errors, f"delivery errors: {delivery_errors[:5]}"
    assert delivered[0] == MESSAGES

    consumer = Consumer({
        "bootstrap.servers": kafka.bootstrap, "group.id": unique_name("librdkafka-reader"),
        "auto.offset.reset": "earliest", "enable.auto.commit": False})
    received = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 120
        while len(received) < MESSAGES:
            assert time.monotonic() < deadline, f"consumed {len(received)} of {MESSAGES} in 120s"
            for msg in consumer.consume(num_messages=10000, timeout=1.0):
                assert msg.error() is None, f"consumer error: {msg.error()}"
                received.append((msg.partition(), msg.key(), msg.value()))
        # Nothing beyond what was sent turns up.
        extra = consumer.consume(num_messages=100, timeout=1.0)
        assert not extra, f"{len(extra)} unexpected extra messages"
    finally:
        consumer.close()
    assert_complete_and_in_key_order(sent, received)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_acks_all_keyed_messages_through_kafka_python_arrive_complete_in_key_order(kafka):
    topic = unique_name("kafka-python-keyed")
    create_topic(kafka.bootstrap, topic, PARTITIONS)
    sent = list(keyed_messages(KAFKA_PYTHON_MESSAGES))

    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all", linger_ms=20,
                             batch_size=256 * 1024, max_request_size=4 << 20)
    errors = []
    try:
        for key, value in sent:
            producer.send(topic, key=key, value=value).add_errback(errors.append)
        producer.flush(timeout=120)
    finally:
        producer.close(timeout=10)
    assert not errors, f"send errors: {errors[:5]}"

    consumer = KafkaConsumer(topic, bootstrap_servers=kafka.bootstrap,
                             group_id=unique_name("kafka-python-reader"),
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             max_poll_records=10000)
    received = []
    try:
        deadline = time.monotonic() + 180
        while len(received) < len(sent):
            assert time.monotonic() < deadline, (
                f"consumed {len(received)} of {len(sent)} in 180s")
            for tp, msgs in consumer.poll(timeout_ms=1000).items():
                received.extend((tp.partition, m.key, m.value) for m in msgs)
        assert not any(consumer.poll(timeout_ms=1000).values()), "unexpected extra messages"
    finally:
        consumer.close()
    assert_complete_and_in_key_order(sent, received)


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
@pytest.mark.timeout(120)
def test_compressed_batches_are_served_back_intact(kafka, codec):
    topic = unique_name(f"compressed-{codec}")
    create_topic(kafka.bootstrap, topic, PARTITIONS)
    # Repetitive values so every codec really shrinks the batch; the id makes each one unique.
    values = [f"{i:06d} ".encode() + b"sluice compresses well " * 20 for i in range(5000)]
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "acks": "all",
                         "compression.type": codec, "linger.ms": 20})
    errors = []
    for i, value in enumerate(values):
        producer.produce(topic, key=str(i % 50).encode(), value=value,
                         on_delivery=lambda err, msg: err and errors.append(err))
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not errors, f"delivery errors: {errors[:5]}"

    records = read_all(kafka.bootstrap, topic, PARTITIONS)
    assert sorted(r[3] for r in records) == sorted(values)

    # A second, independent client decompresses the same stored batches.
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=10000)
    try:
        consumer.subscribe([topic])
        kafka_python_values = []
        deadline = time.monotonic() + 60
        while len(kafka_python_values) < len(values) and time.monotonic() < deadline:
            for msgs in consumer.poll(timeout_ms=1000).values():
                kafka_python_values.extend(m.value for m in msgs)
    finally:
        consumer.close()
    assert sorted(kafka_python_values) == sorted(values)


@pytest.mark.parametrize("acks", ["0", "1"])
@pytest.mark.timeout(60)
def test_produce_with_weaker_acks_is_stored_in_order(kafka, acks):
    topic = unique_name(f"acks-{acks}")
    create_topic(kafka.bootstrap, topic, 1)
    values = [f"{i:05d}".encode() for i in range(2000)]
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "acks": acks, "linger.ms": 5})
    errors = []
    for value in values:
        producer.produce(topic, value=value,
                         on_delivery=lambda err, msg: err and errors.append(err))
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not errors, errors[:5]
    # acks=0 gets no response: wait for the log to catch up before reading it.
    deadline = time.monotonic() + 30
    while True:
        records = read_all(kafka.bootstrap, topic, 1)
        if len(records) >= len(values) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert [r[3] for r in records] == values
