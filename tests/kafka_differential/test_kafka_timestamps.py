"""Produce timestamps as Apache Kafka checks them: the CreateTime window of
message.timestamp.before.max.ms / message.timestamp.after.max.ms (KIP-937), refused with
INVALID_TIMESTAMP, and LogAppendTime topics, which take any timestamp."""

import time

import pytest
from confluent_kafka import KafkaError

HOUR_MS = 3_600_000


def produce_one(kafka, topic, timestamp_ms):
    """The error code of producing one record with this timestamp, or None."""
    producer = kafka.producer(**{"message.timeout.ms": 10000, "retries": 0})
    reports = []
    producer.produce(topic, b"v", timestamp=timestamp_ms,
                     on_delivery=lambda err, msg: reports.append(err))
    producer.flush(15)
    assert len(reports) == 1
    return reports[0].code() if reports[0] is not None else None


@pytest.mark.parametrize("offset_ms, expected", [
    (2 * HOUR_MS, KafkaError.INVALID_TIMESTAMP),
    (HOUR_MS - 60_000, None),
    (-365 * 24 * HOUR_MS, None),  # any age by default
])
def test_default_window_refuses_timestamps_over_an_hour_ahead(kafka, offset_ms, expected):
    topic = kafka.create_topic()
    assert produce_one(kafka, topic, int(time.time() * 1000) + offset_ms) == expected


def test_before_max_ms_refuses_old_timestamps(kafka):
    topic = kafka.create_topic(config={"message.timestamp.before.max.ms": "60000"})
    now = int(time.time() * 1000)
    assert produce_one(kafka, topic, now - 10 * 60_000) == KafkaError.INVALID_TIMESTAMP
    assert produce_one(kafka, topic, now) is None


def test_log_append_time_topics_take_any_timestamp(kafka):
    topic = kafka.create_topic(config={"message.timestamp.type": "LogAppendTime"})
    assert produce_one(kafka, topic, int(time.time() * 1000) + 5 * HOUR_MS) is None
