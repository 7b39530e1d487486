"""Prometheus scrape tests: traffic from real clients moves the counters and gauges that
GET /metrics reports (no credentials, as Prometheus scrapes), parsed with prometheus_client's
text parser.
"""

import time
import urllib.request

import pika
from confluent_kafka import Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from kafka_wire import KafkaWire
from librdkafka_client import create_topic, produce_values, unique_name

# The gauge sampler runs every 5 s; allow two rounds and some scheduling slack.
SAMPLED_WITHIN_S = 12


def start_with_http(broker_factory):
    broker = broker_factory()
    broker.metrics_url = f"{broker.http_url}/metrics"
    return broker


def scrape(broker):
    """{(sample name, frozenset of labels): value} of one scrape."""
    with urllib.request.urlopen(broker.metrics_url, timeout=10) as response:
        assert response.status == 200
        assert response.headers.get("Content-Type", "").startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def wait_for(broker, predicate, what):
    """Scrapes until `predicate(samples)` holds (sampled gauges lag by up to one period)."""
    deadline = time.monotonic() + SAMPLED_WITHIN_S
    while True:
        samples = scrape(broker)
        if predicate(samples):
            return samples
        assert time.monotonic() < deadline, f"{what} not reported within {SAMPLED_WITHIN_S}s"
        time.sleep(0.5)


def test_kafka_traffic_moves_topic_request_and_group_metrics(broker_factory):
    broker = start_with_http(broker_factory)
    topic = unique_name("metrics")
    group = unique_name("metrics-group")
    create_topic(broker.bootstrap, topic, partitions=1)
    before = scrape(broker)
    assert value(before, "sluice_topic_records_produced_total", topic=topic) in (None, 0.0)

    values = [f"value-{i}".encode() for i in range(50)]
    produce_values(broker.bootstrap, topic, values, partition=0)
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        consumer.subscribe([topic])
        consumed = 0
        deadline = time.monotonic() + 30
        while consumed < 20:
            assert time.monotonic() < deadline, f"consumed {consumed} of 20"
            message = consumer.poll(1.0)
            if message is not None and message.error() is None:
                consumed += 1
        consumer.commit(offsets=[TopicPartition(topic, 0, 20)], asynchronous=False)

        samples = scrape(broker)
        assert value(samples, "sluice_topic_records_produced_total", topic=topic) == 50
        assert value(samples, "sluice_topic_bytes_produced_total", topic=topic) >= sum(map(len, values))
        assert value(samples, "sluice_topic_records_fetched_total", topic=topic) >= 20
        assert value(samples, "sluice_topic_bytes_fetched_total", topic=topic) > 0
        assert value(samples, "sluice_kafka_requests_total", api="Produce") >= 1
        assert value(samples, "sluice_kafka_requests_total", api="Fetch") >= 1
        assert value(samples, "sluice_kafka_request_duration_seconds_count", api="Produce") >= 1
        assert value(samples, "sluice_produce_durable_seconds_count") >= 1
        assert value(samples, "sluice_log_fsync_duration_seconds_count") >= 1
        assert value(samples, "sluice_connections", protocol="kafka") >= 1
        assert value(samples, "sluice_connections_opened_total", protocol="kafka") >= 1
        # The commit path sets the lag at once: 50 records, 20 committed.
        assert value(samples, "sluice_group_lag", group=group, topic=topic, partition="0") == 30

        samples = wait_for(
            broker,
            lambda s: value(s, "sluice_group_members", group=group) == 1
            and (value(s, "sluice_disk_free_bytes") or 0) > 0,
            "the group's member and the disk gauges")
        assert value(samples, "sluice_disk_used_bytes") > 0
        assert value(samples, "sluice_process_resident_memory_bytes") > 0
        assert value(samples, "sluice_alarm", kind="disk") == 0
        assert value(samples, "sluice_alarm", kind="memory") == 0
    finally:
        consumer.close()


def test_kafka_errors_are_counted_under_kafka_error_names(broker_factory):
    broker = start_with_http(broker_factory)
    topic = unique_name("metrics-errors")
    create_topic(broker.bootstrap, topic, partitions=1)
    # Partition 5 does not exist: the fetch answers UNKNOWN_TOPIC_OR_PARTITION for it.
    with KafkaWire(broker.bootstrap) as wire:
        wire.fetch(topic, 5, 0)
        wire.fetch(topic, 5, 0)
    samples = scrape(broker)
    assert value(samples, "sluice_kafka_request_errors_total",
                 api="Fetch", error="UNKNOWN_TOPIC_OR_PARTITION") == 2


def test_amqp_traffic_moves_message_counters_and_queue_gauges(broker_factory):
    broker = start_with_http(broker_factory)
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.amqp_port))
    try:
        channel = connection.channel()
        queue = unique_name("metrics-queue")
        channel.queue_declare(queue, durable=True)
        channel.confirm_delivery()
        for i in range(10):
            channel.basic_publish("", queue, f"m{i}".encode(),
                                  pika.BasicProperties(delivery_mode=2))
        for _ in range(3):
            method, _, _ = channel.basic_get(queue)
            channel.basic_ack(method.delivery_tag)
        method, _, _ = channel.basic_get(queue)  # left unacked
        channel.basic_nack(method.delivery_tag, requeue=True)
        method, _, _ = channel.basic_get(queue)  # the requeued one, redelivered; still unacked

        samples = wait_for(
            broker,
            lambda s: value(s, "sluice_queue_messages_ready", vhost="/", queue=queue) == 6
            and value(s, "sluice_queue_messages_unacked", vhost="/", queue=queue) == 1,
            "the queue's depth")
        assert value(samples, "sluice_queue_consumers", vhost="/", queue=queue) == 0
        assert value(samples, "sluice_amqp_messages_published_total") >= 10
        assert value(samples, "sluice_amqp_messages_delivered_total") >= 5
        assert value(samples, "sluice_amqp_messages_acked_total") >= 3
        assert value(samples, "sluice_amqp_messages_redelivered_total") >= 1
        assert value(samples, "sluice_amqp_channels") >= 1
        assert value(samples, "sluice_connections", protocol="amqp") >= 1
    finally:
        connection.close()
    samples = wait_for(broker, lambda s: value(s, "sluice_connections", protocol="amqp") == 0,
                       "the closed AMQP connection")
    assert value(samples, "sluice_amqp_channels") == 0
