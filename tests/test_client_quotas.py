"""Kafka client quotas against the real binary: DescribeClientQuotas and AlterClientQuotas
(through kafka-python's protocol classes on a raw connection), and a producer over its
producer_byte_rate told to back off (throttle_time_ms, which librdkafka reports to throttle_cb)
while another client id is not."""

from __future__ import annotations

import time

from confluent_kafka import Producer
from kafka.protocol.admin import (AlterClientQuotasRequest, AlterClientQuotasResponse,
                                  DescribeClientQuotasRequest, DescribeClientQuotasResponse)

from kafka_wire import KafkaWire

QUOTA_BYTES_PER_S = 10_000


def alter(wire, client_id, key, value, remove=False, validate_only=False):
    request = AlterClientQuotasRequest(
        entries=[AlterClientQuotasRequest.EntryData(
            entity=[AlterClientQuotasRequest.EntryData.EntityData(
                entity_type="client-id", entity_name=client_id)],
            ops=[AlterClientQuotasRequest.EntryData.OpData(key=key, value=value, remove=remove)])],
        validate_only=validate_only)
    response = wire.request(request, version=0, response_class=AlterClientQuotasResponse)
    [entry] = response.entries
    return entry.error_code


def describe(wire, client_id):
    request = DescribeClientQuotasRequest(
        components=[DescribeClientQuotasRequest.ComponentData(
            entity_type="client-id", match_type=0, match=client_id)],
        strict=False)
    response = wire.request(request, version=0, response_class=DescribeClientQuotasResponse)
    assert response.error_code == 0, response
    return {value.key: value.value for entry in response.entries or [] for value in entry.values}


def produce(broker, client_id, total_bytes, record_bytes=1000):
    throttles = []
    producer = Producer({"bootstrap.servers": broker.bootstrap, "client.id": client_id,
                         "linger.ms": 5, "throttle_cb": lambda event: throttles.append(event)})
    for _ in range(total_bytes // record_bytes):
        producer.produce("quota-topic", b"x" * record_bytes)
        producer.poll(0)
    assert producer.flush(30) == 0
    deadline = time.monotonic() + 5
    while not throttles and time.monotonic() < deadline:
        producer.poll(0.2)
    return throttles


def test_quotas_are_set_described_validated_and_removed(broker):
    wire = KafkaWire(broker.bootstrap)
    assert alter(wire, "slow", "producer_byte_rate", QUOTA_BYTES_PER_S, validate_only=True) == 0
    assert describe(wire, "slow") == {}
    assert alter(wire, "slow", "producer_byte_rate", QUOTA_BYTES_PER_S) == 0
    assert describe(wire, "slow") == {"producer_byte_rate": QUOTA_BYTES_PER_S}
    assert alter(wire, "slow", "no_such_quota", 1.0) == 42  # INVALID_REQUEST
    assert alter(wire, "slow", "producer_byte_rate", -5.0) == 42
    assert alter(wire, "slow", "producer_byte_rate", 0.0, remove=True) == 0
    assert describe(wire, "slow") == {}
    # Kept across a restart.
    assert alter(wire, "kept", "consumer_byte_rate", 1234.0) == 0
    wire.close()
    broker.restart()
    wire = KafkaWire(broker.bootstrap)
    assert describe(wire, "kept") == {"consumer_byte_rate": 1234.0}


def test_a_producer_over_its_quota_is_throttled_and_others_are_not(broker):
    wire = KafkaWire(broker.bootstrap)
    assert alter(wire, "slow", "producer_byte_rate", QUOTA_BYTES_PER_S) == 0
    # 150 KB in about a second: 15 KB/s over the ten-second window, half again the quota.
    started = time.monotonic()
    throttles = produce(broker, "slow", 150_000)
    assert throttles, "librdkafka saw no throttle_time_ms"
    assert max(t.throttle_time for t in throttles) > 0.5, [t.throttle_time for t in throttles]
    assert time.monotonic() - started < 30
    assert produce(broker, "fast", 150_000) == []


def test_a_client_over_its_request_percentage_is_throttled_and_others_are_not(broker):
    """request_percentage (KIP-124): the time the broker spends handling a client's requests,
    in percent of one thread; a client over it is answered with throttle_time_ms."""
    admin = KafkaWire(broker.bootstrap)
    # 0.001% of a thread is 10 µs a second: a handful of Metadata requests is more.
    assert alter(admin, "chatty", "request_percentage", 0.001) == 0
    assert describe(admin, "chatty") == {"request_percentage": 0.001}

    def throttles(client_id, requests):
        wire = KafkaWire(broker.bootstrap, client_id=client_id)
        seen = []
        for _ in range(requests):
            response = wire.metadata([])
            seen.append(response.throttle_time_ms)
            if response.throttle_time_ms > 0:
                # The broker now reads nothing more from this connection for that long.
                break
        wire.close()
        return seen

    chatty = throttles("chatty", 200)
    assert chatty[-1] > 0, f"no throttle in {len(chatty)} Metadata responses"
    assert set(throttles("quiet", 200)) == {0}

    assert alter(admin, "chatty", "request_percentage", 0.0, remove=True) == 0
    admin.close()
