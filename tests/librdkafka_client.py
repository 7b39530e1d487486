"""Short, bounded operations through confluent-kafka (librdkafka): create a topic, produce and
read a topic back completely, and prove that a broker still serves an ordinary client."""

import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


def create_topic(bootstrap: str, topic: str, partitions: int = 1, config=None, timeout_s=30):
    client = admin(bootstrap)  # must outlive its futures, or they fail with _DESTROY
    futures = client.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=timeout_s, request_timeout=timeout_s)
    futures[topic].result(timeout=timeout_s)
    wait_for_topic(bootstrap, topic, partitions, timeout_s)


def wait_for_topic(bootstrap: str, topic: str, partitions: int, timeout_s=30):
    client = admin(bootstrap)
    deadline = time.monotonic() + timeout_s
    while True:
        metadata = client.list_topics(topic=topic, timeout=10)
        found = metadata.topics.get(topic)
        if found is not None and found.error is None and len(found.partitions) == partitions:
            return
        assert time.monotonic() < deadline, f"topic {topic} not visible in metadata: {found}"
        time.sleep(0.1)


def produce_values(bootstrap: str, topic: str, values, partition=None, key=None, extra_config=None,
                   timeout_s=60, partition_for=None):
    """Produce values with acks=all and wait for every delivery report; returns (partition,
    offset) per value, in order. Any delivery error fails the caller. The partition is
    `partition_for(index)` if given, else `partition`, else the client's partitioner's."""
    config = {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5}
    config.update(extra_config or {})
    producer = Producer(config)
    results = [None] * len(values)
    errors = []

    def report(index):
        def on_delivery(err, msg):
            if err is not None:
                errors.append((index, err))
            else:
                results[index] = (msg.partition(), msg.offset())
        return on_delivery

    for index, value in enumerate(values):
        kwargs = {"value": value, "key": key, "on_delivery": report(index)}
        if partition_for is not None:
            kwargs["partition"] = partition_for(index)
        elif partition is not None:
            kwargs["partition"] = partition
        producer.produce(topic, **kwargs)
        producer.poll(0)
    remaining = producer.flush(timeout_s)
    assert remaining == 0, f"{remaining} messages still undelivered after {timeout_s}s"
    assert not errors, f"delivery errors: {errors[:5]}"
    return results


def high_watermarks(bootstrap: str, topic: str, partitions: int):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("watermarks"),
                         "enable.auto.commit": False})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                for p in range(partitions)}
    finally:
        consumer.close()


def read_all(bootstrap: str, topic: str, partitions: int, timeout_s=60, extra_config=None,
             start_offsets=None):
    """Every record of the topic, from offset 0 (or `start_offsets[partition]`) up to the high
    watermark of each partition as it is now, as (partition, offset, key, value, timestamp)
    sorted by partition and offset. Any consumer error fails the caller: nothing corrupt may be
    served."""
    ends = {p: hw for p, (_, hw) in high_watermarks(bootstrap, topic, partitions).items()}
    config = {"bootstrap.servers": bootstrap, "group.id": unique_name("read-all"),
              "enable.auto.commit": False, "auto.offset.reset": "earliest",
              "enable.partition.eof": False}
    config.update(extra_config or {})
    consumer = Consumer(config)
    records = []
    starts = start_offsets or {}
    positions = {p: starts.get(p, 0) for p in range(partitions)}
    try:
        consumer.assign([TopicPartition(topic, p, starts.get(p, OFFSET_BEGINNING))
                         for p in range(partitions)])
        deadline = time.monotonic() + timeout_s
        while any(positions[p] < ends[p] for p in positions):
            assert time.monotonic() < deadline, (
                f"read {len(records)} records in {timeout_s}s; positions {positions}, "
                f"ends {ends}")
            for msg in consumer.consume(num_messages=10000, timeout=0.5):
                if msg.error() is not None:
                    raise AssertionError(f"consumer error: {msg.error()}")
                if msg.offset() >= ends[msg.partition()]:
                    continue
                records.append((msg.partition(), msg.offset(), msg.key(), msg.value(),
                                msg.timestamp()[1]))
                positions[msg.partition()] = msg.offset() + 1
    finally:
        consumer.close()
    records.sort(key=lambda r: (r[0], r[1]))
    return records


def read_to_end(bootstrap: str, topic: str, partitions: int, group: str,
                isolation: str = "read_committed", timeout_s: float = 60) -> list:
    """Every message a consumer at `isolation` reads from offset 0 of each partition until it
    has reached the end of every one (the last stable offset under read_committed), in the
    order they arrived. Any consumer error fails the caller."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "isolation.level": isolation, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        at_end = set()
        messages = []
        deadline = time.monotonic() + timeout_s
        while len(at_end) < partitions:
            assert time.monotonic() < deadline, f"not at the end of {topic} after {timeout_s}s"
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                assert message.error().code() == KafkaError._PARTITION_EOF, message.error()
                at_end.add(message.partition())
                continue
            at_end.discard(message.partition())
            messages.append(message)
        return messages
    finally:
        consumer.close()


def assert_broker_serves_another_client(bootstrap: str):
    """A fresh client can still create a topic, produce to it and read it back."""
    topic = unique_name("still-serving")
    create_topic(bootstrap, topic, 1)
    values = [f"alive-{i}".encode() for i in range(10)]
    produce_values(bootstrap, topic, values)
    records = read_all(bootstrap, topic, 1, timeout_s=30)
    assert [r[3] for r in records] == values
