"""Replay from a point in time: ListOffsets by timestamp finds the first message at or after
that time, and a consumer positioned there receives exactly the messages from then on."""

import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from librdkafka_client import create_topic, produce_values, unique_name

PARTITIONS = 3
BURSTS = 3
PER_BURST = 100  # messages per partition per burst
BURST_GAP_MS = 60_000


def produce_bursts(bootstrap, topic):
    """Three bursts a minute apart (explicit CreateTime timestamps, an hour ago, so the test
    does not depend on the wall clock); within a burst message j of a partition is stamped
    burst_start + j. Returns the burst start times."""
    base_ms = (int(time.time() * 1000) - 3_600_000) // 1000 * 1000
    starts = [base_ms + b * BURST_GAP_MS for b in range(BURSTS)]
    for burst, start_ms in enumerate(starts):
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
        errors = []
        for partition in range(PARTITIONS):
            for j in range(PER_BURST):
                producer.produce(topic, partition=partition, timestamp=start_ms + j,
                                 value=f"p{partition}-b{burst}-{j:03d}".encode(),
                                 on_delivery=lambda err, msg: err and errors.append(err))
        # Each burst is flushed on its own, so it lands in its own batches.
        assert producer.flush(30) == 0
        assert not errors, errors
    return starts


def expected_from(partition, first_offset):
    return [f"p{partition}-b{o // PER_BURST}-{o % PER_BURST:03d}".encode()
            for o in range(first_offset, BURSTS * PER_BURST)]


def new_consumer(bootstrap):
    return Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("replay"),
                     "enable.auto.commit": False, "auto.offset.reset": "earliest"})


def consume_until_end(consumer, count_expected, timeout_s=30):
    got = {}
    deadline = time.monotonic() + timeout_s
    total = 0
    while total < count_expected:
        assert time.monotonic() < deadline, f"got {total} of {count_expected} in {timeout_s}s"
        for msg in consumer.consume(num_messages=1000, timeout=0.5):
            assert msg.error() is None, f"consumer error: {msg.error()}"
            got.setdefault(msg.partition(), []).append(msg)
            total += 1
    assert not consumer.consume(num_messages=10, timeout=1.0), "messages beyond the log end"
    return got


@pytest.fixture
def replay_topic(kafka):
    topic = unique_name("replay")
    create_topic(kafka.bootstrap, topic, PARTITIONS)
    starts = produce_bursts(kafka.bootstrap, topic)
    return topic, starts


@pytest.mark.timeout(90)
def test_offsets_for_times_finds_first_message_at_or_after_timestamp(kafka, replay_topic):
    topic, starts = replay_topic
    consumer = new_consumer(kafka.bootstrap)
    try:
        cases = {
            starts[0] - 1: 0,                          # before everything: the first message
            starts[0]: 0,
            starts[1]: PER_BURST,                      # a burst boundary
            starts[1] + 50: PER_BURST + 50,            # inside a batch: record-level search
            starts[2] + PER_BURST - 1: 3 * PER_BURST - 1,  # the very last message
            starts[1] + PER_BURST + 10: 2 * PER_BURST,  # in the gap: the next burst's first
            starts[2] + PER_BURST: -1,                 # after everything: no offset (-1)
        }
        for timestamp, offset in cases.items():
            found = consumer.offsets_for_times(
                [TopicPartition(topic, p, timestamp) for p in range(PARTITIONS)], timeout=10)
            for tp in found:
                assert tp.error is None, tp.error
                assert tp.offset == offset, (
                    f"timestamp {timestamp - starts[0]:+d}ms from start, partition "
                    f"{tp.partition}: offset {tp.offset}, expected {offset}")
    finally:
        consumer.close()


@pytest.mark.timeout(90)
def test_consumer_assigned_at_timestamp_offset_receives_exactly_the_later_messages(
        kafka, replay_topic):
    topic, starts = replay_topic
    consumer = new_consumer(kafka.bootstrap)
    try:
        target = starts[1] + 25
        found = consumer.offsets_for_times(
            [TopicPartition(topic, p, target) for p in range(PARTITIONS)], timeout=10)
        consumer.assign(found)
        expected_count = PARTITIONS * (BURSTS * PER_BURST - (PER_BURST + 25))
        got = consume_until_end(consumer, expected_count)
    finally:
        consumer.close()
    for partition in range(PARTITIONS):
        msgs = got[partition]
        assert msgs[0].offset() == PER_BURST + 25
        assert [m.value() for m in msgs] == expected_from(partition, PER_BURST + 25)
        assert all(m.timestamp()[1] >= target for m in msgs)


@pytest.mark.timeout(90)
def test_seek_to_timestamp_offset_mid_stream_replays_from_there(kafka, replay_topic):
    topic, starts = replay_topic
    consumer = new_consumer(kafka.bootstrap)
    try:
        tp = TopicPartition(topic, 0, OFFSET_BEGINNING)
        consumer.assign([tp])
        first = consume_n(consumer, 10)
        assert [m.offset() for m in first] == list(range(10))
        [found] = consumer.offsets_for_times([TopicPartition(topic, 0, starts[2])], timeout=10)
        assert found.offset == 2 * PER_BURST
        consumer.seek(found)
        got = consume_until_end(consumer, PER_BURST)
    finally:
        consumer.close()
    assert [m.offset() for m in got[0]] == list(range(2 * PER_BURST, 3 * PER_BURST))
    assert [m.value() for m in got[0]] == expected_from(0, 2 * PER_BURST)


def consume_n(consumer, n, timeout_s=30):
    msgs = []
    deadline = time.monotonic() + timeout_s
    while len(msgs) < n:
        assert time.monotonic() < deadline, f"got {len(msgs)} of {n}"
        for msg in consumer.consume(num_messages=n - len(msgs), timeout=0.5):
            assert msg.error() is None, f"consumer error: {msg.error()}"
            msgs.append(msg)
    return msgs


@pytest.mark.timeout(90)
def test_list_offsets_earliest_and_latest_match_the_log(kafka, replay_topic):
    topic, _ = replay_topic
    consumer = new_consumer(kafka.bootstrap)
    try:
        for partition in range(PARTITIONS):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                       timeout=10, cached=False)
            assert (low, high) == (0, BURSTS * PER_BURST)
    finally:
        consumer.close()
    # Appending moves the latest offset, not the earliest.
    produce_values(kafka.bootstrap, topic, [b"one more"], partition=1)
    consumer = new_consumer(kafka.bootstrap)
    try:
        assert consumer.get_watermark_offsets(TopicPartition(topic, 1), timeout=10) == (
            0, BURSTS * PER_BURST + 1)
    finally:
        consumer.close()
