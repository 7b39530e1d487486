"""Topic configs through the admin API (CreateTopics, DescribeConfigs, IncrementalAlterConfigs):
validated, persisted across restarts, and acted on. Retention deletes whole old segments and
moves the log start, which consumers see as the low watermark."""

import time

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic,
                                   ResourceType)

from librdkafka_client import (admin, create_topic, high_watermarks, produce_values, read_all,
                               unique_name)


def topic_configs(bootstrap, topic):
    client = admin(bootstrap)
    resource = ConfigResource(ResourceType.TOPIC, topic)
    entries = client.describe_configs([resource])[resource].result(timeout=30)
    return {name: entry.value for name, entry in entries.items()}


def test_invalid_topic_config_is_refused_and_nothing_is_created(broker):
    topic = unique_name("bad-config")
    client = admin(broker.bootstrap)
    futures = client.create_topics([NewTopic(topic, 1, 1, config={"fsync": "sometimes"})],
                                   operation_timeout=30, request_timeout=30)
    with pytest.raises(KafkaException) as refused:
        futures[topic].result(timeout=30)
    assert refused.value.args[0].name() == "INVALID_CONFIG"
    assert topic not in client.list_topics(timeout=10).topics


def test_topic_configs_are_described_altered_and_survive_restart(broker):
    topic = unique_name("configs")
    create_topic(broker.bootstrap, topic, 1,
                 config={"fsync": "never", "retention.ms": "3600000"})
    configs = topic_configs(broker.bootstrap, topic)
    assert configs["fsync"] == "never"
    assert configs["retention.ms"] == "3600000"
    assert configs["cleanup.policy"] == "delete"

    client = admin(broker.bootstrap)
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("segment.bytes", "1048576", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE),
    ])
    client.incremental_alter_configs([resource])[resource].result(timeout=30)

    produce_values(broker.bootstrap, topic, [b"one", b"two"], partition=0)
    broker.restart()
    configs = topic_configs(broker.bootstrap, topic)
    assert configs["segment.bytes"] == "1048576"
    assert configs["retention.ms"] == "604800000", "a deleted override falls back to the default"
    assert configs["fsync"] == "never"
    assert [record[3] for record in read_all(broker.bootstrap, topic, 1)] == [b"one", b"two"]


def test_retention_by_bytes_deletes_old_segments_and_moves_the_low_watermark(broker_factory):
    broker = broker_factory("--retention-check-interval-ms", "200")
    topic = unique_name("retention")
    create_topic(broker.bootstrap, topic, 1,
                 config={"segment.bytes": "1048576", "retention.bytes": "2097152"})
    # Kafka 4's smallest segment is 1 MiB: 5 MiB of messages fill five of them.
    values = [f"{i:06d}".encode().ljust(1024, b".") for i in range(5000)]
    produce_values(broker.bootstrap, topic, values, partition=0,
                   extra_config={"batch.size": 16384})

    deadline = time.monotonic() + 20
    while True:
        low, high = high_watermarks(broker.bootstrap, topic, 1)[0]
        if low > 0:
            break
        assert time.monotonic() < deadline, f"retention never ran: watermarks {low}..{high}"
        time.sleep(0.2)
    assert high == len(values)
    # Kafka's rule: keep at least retention.bytes, deleting only whole segments.
    assert 2048 <= high - low < 5000, (low, high)

    # What remains is exactly the newest messages, readable from the new low watermark.
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique_name("ret"),
                         "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, 0, low)])
        seen = []
        deadline = time.monotonic() + 30
        while len(seen) < high - low and time.monotonic() < deadline:
            for message in consumer.consume(1000, 1.0):
                assert message.error() is None, message.error()
                seen.append((message.offset(), message.value()))
    finally:
        consumer.close()
    assert seen == [(offset, values[offset]) for offset in range(low, high)]


def test_log_append_time_topic_stamps_records_with_the_broker_clock(broker):
    from confluent_kafka import Producer

    topic = unique_name("append-time")
    create_topic(broker.bootstrap, topic, 1, config={"message.timestamp.type": "LogAppendTime"})
    before_ms = int(time.time() * 1000)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    for value in (b"a", b"b"):
        # A client timestamp from 1970: the broker must replace it with its own clock.
        producer.produce(topic, value=value, partition=0, timestamp=1_000)
    assert producer.flush(30) == 0
    records = read_all(broker.bootstrap, topic, 1)
    assert [record[3] for record in records] == [b"a", b"b"]
    after_ms = int(time.time() * 1000)
    for record in records:
        assert before_ms - 1000 <= record[4] <= after_ms + 1000, record
