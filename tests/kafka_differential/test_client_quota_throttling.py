"""Byte-rate and request-rate quotas as Kafka applies them: a client id over its
producer_byte_rate, consumer_byte_rate or request_percentage is told to wait
(throttle_time_ms > 0) while a client id without a quota is not. The throttle times depend on
timing, so only "throttled or not" is compared. Client ids are unique per test: the Kafka node
is shared, and a quota reaches Kafka's quota managers through its metadata log (waited for)."""

from __future__ import annotations

import time

from kafka.protocol.admin import (AlterClientQuotasRequest, AlterClientQuotasResponse,
                                  DescribeClientQuotasRequest, DescribeClientQuotasResponse)
from kafka.protocol.consumer import FetchRequest
from kafka.protocol.producer import ProduceRequest

from kafka_wire import KafkaWire, record_batch

BATCH_BYTES = 64 << 10


def set_quota(kafka, client_id: str, key: str, value: float):
    with KafkaWire(kafka.bootstrap) as wire:
        response = wire.request(AlterClientQuotasRequest(
            entries=[AlterClientQuotasRequest.EntryData(
                entity=[AlterClientQuotasRequest.EntryData.EntityData(
                    entity_type="client-id", entity_name=client_id)],
                ops=[AlterClientQuotasRequest.EntryData.OpData(key=key, value=value,
                                                               remove=False)])],
            validate_only=False), version=0, response_class=AlterClientQuotasResponse)
        assert [e.error_code for e in response.entries] == [0]
        deadline = time.monotonic() + 10
        while not wire.request(DescribeClientQuotasRequest(
                components=[DescribeClientQuotasRequest.ComponentData(
                    entity_type="client-id", match_type=0, match=client_id)], strict=False),
                version=0, response_class=DescribeClientQuotasResponse).entries:
            assert time.monotonic() < deadline, "the quota was never described"
            time.sleep(0.1)
    if kafka.kind == "kafka":
        time.sleep(1)


def produce_throttles(kafka, client_id: str, topic: str, batches: int) -> list[int]:
    """throttle_time_ms of each Produce response, until the first non-zero one."""
    seen = []
    with KafkaWire(kafka.bootstrap, client_id=client_id) as wire:
        for _ in range(batches):
            response = wire.request(ProduceRequest(
                transactional_id=None, acks=-1, timeout_ms=10000,
                topic_data=[ProduceRequest.TopicProduceData(
                    name=topic,
                    partition_data=[ProduceRequest.TopicProduceData.PartitionProduceData(
                        index=0, records=record_batch([b"x" * BATCH_BYTES]))])]))
            seen.append(response.throttle_time_ms)
            if response.throttle_time_ms > 0:
                break
    return seen


def fetch_throttles(kafka, client_id: str, topic: str, fetches: int) -> list[int]:
    seen = []
    with KafkaWire(kafka.bootstrap, client_id=client_id) as wire:
        for _ in range(fetches):
            response = wire.request(FetchRequest(
                max_wait_ms=0, min_bytes=1,
                topics=[FetchRequest.FetchTopic(
                    topic=topic,
                    partitions=[FetchRequest.FetchTopic.FetchPartition(
                        partition=0, fetch_offset=0, partition_max_bytes=1 << 20)])]))
            seen.append(response.throttle_time_ms)
            if response.throttle_time_ms > 0:
                break
    return seen


def test_a_producer_over_its_byte_rate_is_throttled_and_another_is_not(kafka):
    topic = kafka.create_topic()
    limited = kafka.name("slow-producer")
    set_quota(kafka, limited, "producer_byte_rate", 10_000)
    throttled = produce_throttles(kafka, limited, topic, 20)
    assert throttled[-1] > 0, throttled
    assert set(produce_throttles(kafka, kafka.name("free-producer"), topic, 5)) == {0}


def test_a_consumer_over_its_byte_rate_is_throttled_and_another_is_not(kafka):
    topic = kafka.create_topic()
    produce_throttles(kafka, kafka.name("filler"), topic, 4)
    limited = kafka.name("slow-consumer")
    set_quota(kafka, limited, "consumer_byte_rate", 10_000)
    throttled = fetch_throttles(kafka, limited, topic, 20)
    assert throttled[-1] > 0, throttled
    assert set(fetch_throttles(kafka, kafka.name("free-consumer"), topic, 3)) == {0}


def metadata_throttles(kafka, client_id: str, requests: int) -> list[int]:
    seen = []
    with KafkaWire(kafka.bootstrap, client_id=client_id) as wire:
        for _ in range(requests):
            response = wire.metadata([])
            seen.append(response.throttle_time_ms)
            if response.throttle_time_ms > 0:
                break
    return seen


def test_a_client_over_its_request_percentage_is_throttled_and_another_is_not(kafka):
    limited = kafka.name("chatty")
    # 0.001% of a thread: 100 µs over the 10-second window, which a few hundred requests pass.
    set_quota(kafka, limited, "request_percentage", 0.001)
    throttled = metadata_throttles(kafka, limited, 5000)
    assert throttled[-1] > 0, f"no throttle in {len(throttled)} Metadata responses"
    assert set(metadata_throttles(kafka, kafka.name("quiet"), 200)) == {0}
