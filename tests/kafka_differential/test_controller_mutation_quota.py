"""The controller mutation quota (KIP-599) as Kafka applies it: `controller_mutation_rate`
(partitions created or deleted per second, set with AlterClientQuotas on a client id) fills a
token bucket; CreateTopics v6+, CreatePartitions v3+ and DeleteTopics v5+ get
THROTTLING_QUOTA_EXCEEDED for the topics met once it is empty, CreateTopics v5 is served whole;
every one of them is told to wait (throttle_time_ms). Client ids are unique per test: the
Kafka node is shared."""

from __future__ import annotations

import time

from kafka.protocol.admin import (AlterClientQuotasRequest, AlterClientQuotasResponse,
                                  CreatePartitionsRequest, CreatePartitionsResponse,
                                  CreateTopicsRequest, CreateTopicsResponse,
                                  DeleteTopicsRequest, DeleteTopicsResponse,
                                  DescribeClientQuotasRequest, DescribeClientQuotasResponse)

from kafka_wire import KafkaWire

THROTTLING_QUOTA_EXCEEDED = 89


def set_rate(kafka, client_id: str, rate: float):
    with KafkaWire(kafka.bootstrap) as wire:
        response = wire.request(AlterClientQuotasRequest(
            entries=[AlterClientQuotasRequest.EntryData(
                entity=[AlterClientQuotasRequest.EntryData.EntityData(
                    entity_type="client-id", entity_name=client_id)],
                ops=[AlterClientQuotasRequest.EntryData.OpData(
                    key="controller_mutation_rate", value=rate, remove=False)])],
            validate_only=False), version=0, response_class=AlterClientQuotasResponse)
        assert [e.error_code for e in response.entries] == [0]
        # Kafka applies a quota once its metadata log reaches the broker: wait until it is
        # described, then for the quota managers to take it.
        deadline = time.monotonic() + 10
        while True:
            described = wire.request(DescribeClientQuotasRequest(
                components=[DescribeClientQuotasRequest.ComponentData(
                    entity_type="client-id", match_type=0, match=client_id)], strict=False),
                version=0, response_class=DescribeClientQuotasResponse)
            if described.entries:
                break
            assert time.monotonic() < deadline, "the quota was never described"
            time.sleep(0.1)
    if kafka.kind == "kafka":
        time.sleep(1)


def create(kafka, client_id: str, version: int, partitions: dict[str, int]):
    with KafkaWire(kafka.bootstrap, client_id=client_id) as wire:
        response = wire.request(CreateTopicsRequest(
            topics=[CreateTopicsRequest.CreatableTopic(
                name=name, num_partitions=count, replication_factor=-1, assignments=[],
                configs=[]) for name, count in partitions.items()],
            timeout_ms=30000, validate_only=False), version=version,
            response_class=CreateTopicsResponse)
    kafka._topics.extend(t.name for t in response.topics if t.error_code == 0)
    return {t.name: t.error_code for t in response.topics}, response.throttle_time_ms


def test_create_topics_past_the_bucket_are_throttled(kafka):
    client_id = kafka.name("creator")
    set_rate(kafka, client_id, 1.0)
    a, b, c = kafka.name("cm"), kafka.name("cm"), kafka.name("cm")
    errors, throttle_ms = create(kafka, client_id, 7, {a: 8, b: 8, c: 1})
    assert errors == {a: 0, b: 0, c: THROTTLING_QUOTA_EXCEEDED}
    assert 3000 <= throttle_ms <= 6000, throttle_ms
    # A client id without a quota is not limited.
    d = kafka.name("cm")
    assert create(kafka, kafka.name("free"), 7, {d: 20}) == ({d: 0}, 0)


def test_an_old_create_topics_is_served_whole_and_throttled(kafka):
    client_id = kafka.name("old")
    set_rate(kafka, client_id, 1.0)
    a, b = kafka.name("cm"), kafka.name("cm")
    errors, throttle_ms = create(kafka, client_id, 5, {a: 10, b: 10})
    assert errors == {a: 0, b: 0}
    assert throttle_ms > 0


def test_delete_topics_and_create_partitions_past_the_bucket_are_throttled(kafka):
    a, b = kafka.name("cm"), kafka.name("cm")
    assert create(kafka, kafka.name("free"), 7, {a: 20, b: 20})[0] == {a: 0, b: 0}
    grower = kafka.name("grower")
    set_rate(kafka, grower, 1.0)
    with KafkaWire(kafka.bootstrap, client_id=grower) as wire:
        response = wire.request(CreatePartitionsRequest(
            topics=[CreatePartitionsRequest.CreatePartitionsTopic(name=n, count=35,
                                                                  assignments=None)
                    for n in (a, b)], timeout_ms=30000, validate_only=False),
            version=3, response_class=CreatePartitionsResponse)
    # Kafka's controller does not keep the request's order: one of the two is refused.
    assert {r.name for r in response.results} == {a, b}
    assert sorted(r.error_code for r in response.results) == [0, THROTTLING_QUOTA_EXCEEDED]
    assert response.throttle_time_ms > 0
    deleter = kafka.name("deleter")
    set_rate(kafka, deleter, 1.0)
    with KafkaWire(kafka.bootstrap, client_id=deleter) as wire:
        response = wire.request(DeleteTopicsRequest(
            topics=[DeleteTopicsRequest.DeleteTopicState(name=n, topic_id=None)
                    for n in (a, b)], topic_names=[], timeout_ms=30000),
            version=6, response_class=DeleteTopicsResponse)
    assert {r.name for r in response.responses} == {a, b}
    assert sorted(r.error_code for r in response.responses) == [0, THROTTLING_QUOTA_EXCEEDED]
    assert response.throttle_time_ms > 0
