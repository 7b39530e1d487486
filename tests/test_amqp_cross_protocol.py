"""A message crosses between AMQP and Kafka with its body, headers and key intact.

A queue declared with `x-queue-type: stream` is the Kafka topic of the same name: whatever an
exchange routes to it is appended to the topic, and AMQP consumers of it read the topic (from
`x-stream-offset`), as RabbitMQ stream consumers do. See the README's "Kafka and AMQP".
Sluice-only: RabbitMQ has no Kafka side to compare with.
"""

import time
import types

import pika
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from librdkafka_client import unique_name


def amqp_connect(broker):
    return pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.amqp_port))


def declare_stream(channel, name):
    channel.queue_declare(name, durable=True, arguments={"x-queue-type": "stream"})


def kafka_read_all(bootstrap, topic, count, partitions=1, timeout_s=30):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("g"),
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    records = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            records.append(message)
    finally:
        consumer.close()
    assert len(records) == count, f"read {len(records)} of {count} records from {topic}"
    return records


def amqp_read_stream(channel, stream, count, offset="first", timeout_s=30):
    channel.basic_qos(prefetch_count=50)
    received = []

    def on_message(ch, method, properties, body):
        received.append((method, properties, body))
        ch.basic_ack(method.delivery_tag)

    tag = channel.basic_consume(stream, on_message, arguments={"x-stream-offset": offset})
    deadline = time.monotonic() + timeout_s
    while len(received) < count and time.monotonic() < deadline:
        channel.connection.process_data_events(time_limit=0.2)
    channel.basic_cancel(tag)
    assert len(received) == count, f"got {len(received)} of {count} messages from {stream}"
    return received


def test_published_over_amqp_consumed_over_kafka(broker):
    topic = unique_name("orders")
    connection = amqp_connect(broker)
    channel = connection.channel()
    channel.confirm_delivery()
    channel.exchange_declare("orders-x", "topic", durable=True)
    declare_stream(channel, topic)
    channel.queue_bind(topic, "orders-x", "order.#")
    for i in range(50):
        channel.basic_publish(
            "orders-x", "order.created", f'{{"n": {i}}}'.encode(),
            pika.BasicProperties(delivery_mode=2, content_type="application/json",
                                 message_id=f"m-{i}", headers={"trace": f"t-{i}", "n": i}),
            mandatory=True)  # confirmed: on disk in the topic
    connection.close()

    records = kafka_read_all(broker.bootstrap, topic, 50)
    for i, record in enumerate(records):
        assert record.value() == f'{{"n": {i}}}'.encode()
        assert record.key() == b"order.created"
        headers = dict(record.headers())
        assert headers["trace"] == f"t-{i}".encode()
        assert headers["n"] == str(i).encode()
        assert headers["content-type"] == b"application/json"
        assert headers["message-id"] == f"m-{i}".encode()
        assert headers["amqp.exchange"] == b"orders-x"


def test_produced_over_kafka_consumed_over_amqp(broker):
    topic = unique_name("events")
    connection = amqp_connect(broker)
    channel = connection.channel()
    declare_stream(channel, topic)  # creates the topic, as a Kafka admin would
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    for i in range(20):
        producer.produce(topic, value=f"event-{i}".encode(), key=b"user-7",
                         headers=[("trace", f"k-{i}".encode()), ("content-type", b"text/plain")])
    assert producer.flush(30) == 0

    received = amqp_read_stream(channel, topic, 20)
    for i, (method, properties, body) in enumerate(received):
        assert body == f"event-{i}".encode()
        assert method.routing_key == "user-7"
        assert method.redelivered is False
        assert properties.content_type == "text/plain"
        assert properties.headers["trace"] in (f"k-{i}", f"k-{i}".encode())
        assert properties.headers["x-kafka-key"] in ("user-7", b"user-7")
        assert properties.headers["x-stream-offset"] == i
    connection.close()


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_kafka_batches_are_consumed_over_amqp(broker, codec):
    topic = unique_name(f"packed-{codec}")
    connection = amqp_connect(broker)
    channel = connection.channel()
    declare_stream(channel, topic)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all",
                         "compression.type": codec, "linger.ms": 20})
    for i in range(30):
        producer.produce(topic, value=(f"event-{i} " * 10).encode(), key=b"user-7")
    assert producer.flush(30) == 0

    received = amqp_read_stream(channel, topic, 30)
    assert [body for _, _, body in received] == [(f"event-{i} " * 10).encode() for i in range(30)]
    connection.close()


def test_kafka_names_and_values_too_long_for_amqp_short_strings_still_deliver(broker):
    """Kafka bounds neither header names nor values; AMQP carries names, the routing key and
    most properties in short strings of at most 255 bytes. A header with a longer name is left
    out, a property header with a longer value stays a long-string header of its name, a longer
    key gives an empty routing key (the key stays in x-kafka-key): well-formed frames, and the
    records after it arrive too."""
    topic = unique_name("long-names")
    connection = amqp_connect(broker)
    channel = connection.channel()
    declare_stream(channel, topic)
    long_key = b"k" * 300
    long_value = b"v" * 300
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    producer.produce(topic, value=b"oversized", key=long_key,
                     headers=[("n" * 300, b"name too long"),
                              ("content-type", long_value),
                              ("message-id", long_value),
                              ("amqp.type", long_value),
                              ("reply-to", b"short-reply"),
                              ("trace", b"kept")])
    producer.produce(topic, value=b"after", key=b"user-1")
    assert producer.flush(30) == 0

    received = amqp_read_stream(channel, topic, 2, timeout_s=10)
    (method, properties, body), (after_method, _, after_body) = received
    assert body == b"oversized"
    assert method.routing_key == ""
    assert method.exchange == ""
    assert properties.content_type is None
    assert properties.message_id is None
    assert properties.type is None
    assert properties.reply_to == "short-reply"
    headers = properties.headers
    assert all(len(name.encode()) <= 255 for name in headers), list(headers)
    for name in ("content-type", "message-id", "amqp.type"):
        assert headers[name] in (long_value, long_value.decode()), name
    assert headers["trace"] in (b"kept", "kept")
    assert headers["x-kafka-key"] in (long_key, long_key.decode())
    assert (after_body, after_method.routing_key) == (b"after", "user-1")
    # The connection is still sound.
    assert channel.queue_declare(topic, passive=True)
    connection.close()


def test_amqp_to_stream_to_amqp_keeps_header_types(broker):
    stream = unique_name("roundtrip")
    connection = amqp_connect(broker)
    channel = connection.channel()
    declare_stream(channel, stream)
    headers = {"int": 42, "bool": True, "nested": {"k": "v"}, "list": [1, "two"]}
    channel.basic_publish("", stream, b"body", pika.BasicProperties(
        delivery_mode=2, headers=headers, correlation_id="c-1", priority=3))
    [(method, properties, body)] = amqp_read_stream(channel, stream, 1)
    assert body == b"body"
    assert properties.correlation_id == "c-1"
    assert properties.priority == 3
    assert properties.delivery_mode == 2
    for key, value in headers.items():
        assert properties.headers[key] == value
    connection.close()


def test_stream_offset_next_sees_only_new_messages(broker):
    stream = unique_name("next")
    connection = amqp_connect(broker)
    channel = connection.channel()
    declare_stream(channel, stream)
    channel.confirm_delivery()  # "old" is in the topic before the consumer starts
    channel.basic_publish("", stream, b"old")
    channel.basic_qos(prefetch_count=10)
    received = []
    channel.basic_consume(stream, lambda ch, m, p, b: (received.append(b), ch.basic_ack(m.delivery_tag)),
                          arguments={"x-stream-offset": "next"})
    connection.process_data_events(time_limit=0.5)
    channel.basic_publish("", stream, b"new")
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.2)
    assert received == [b"new"]
    connection.close()


def test_stream_queue_and_its_binding_survive_a_restart(broker):
    stream = unique_name("kept")
    connection = amqp_connect(broker)
    channel = connection.channel()
    channel.exchange_declare("kept-x", "direct", durable=True)
    declare_stream(channel, stream)
    channel.queue_bind(stream, "kept-x", "k")
    channel.basic_publish("kept-x", "k", b"before")
    connection.close()
    broker.restart()

    connection = amqp_connect(broker)
    channel = connection.channel()
    channel.confirm_delivery()
    channel.basic_publish("kept-x", "k", b"after", mandatory=True)
    bodies = [body for _, _, body in amqp_read_stream(channel, stream, 2)]
    assert bodies == [b"before", b"after"]
    connection.close()


def test_one_topic_is_read_whole_by_a_consumer_group_a_share_group_and_an_amqp_stream_consumer(
        broker):
    """The three ways to read a topic do not disturb each other: a Kafka consumer group
    (committing its offsets), a share group (the Java KafkaShareConsumer, accepting every
    record: a share group's acknowledgements take nothing from the log) and an AMQP consumer
    of the stream queue that is the topic each get all 20 records; afterwards the share group
    has nothing left to hand out and the consumer group's offsets are at the end."""
    from kafka_differential.test_java_client import only, probe, step

    topic = unique_name("shared")
    connection = amqp_connect(broker)
    channel = connection.channel()
    declare_stream(channel, topic)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    values = [f"m{i}" for i in range(20)]
    for value in values:
        producer.produce(topic, value=value.encode())
    assert producer.flush(10) == 0

    java = types.SimpleNamespace(bootstrap=broker.bootstrap)
    group = unique_name("share")
    shared = probe(java,
                   step("group-config", group=group, **{"share.auto.offset.reset": "earliest"}),
                   step("share-consume", group=group, topic=topic, count=20, mode="explicit",
                        timeout_ms=30000))
    assert sorted(r["value"] for r in only(shared, "share-record")) == sorted(values)
    assert all(c["error"] is None for c in only(shared, "share-commit"))

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique_name("g"),
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    grouped = []
    deadline = time.monotonic() + 30
    while len(grouped) < 20 and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and not message.error():
            grouped.append(message.value().decode())
    consumer.commit(asynchronous=False)
    committed = consumer.committed([TopicPartition(topic, 0)], timeout=10)
    consumer.close()
    assert sorted(grouped) == sorted(values)
    assert committed[0].offset == 20

    streamed = amqp_read_stream(channel, topic, 20, offset="first")
    assert sorted(body.decode() for _, _, body in streamed) == sorted(values)
    connection.close()

    again = probe(java, step("share-consume", group=group, topic=topic, count=1,
                             mode="explicit", timeout_ms=3000))
    assert only(again, "share-record") == []
