"""Kafka client quotas against the real binary: DescribeClientQuotas and AlterClientQuotas
(through kafka-python's protocol classes on a raw connection), and a producer over its
producer_byte_rate told to back off (throttle_time_ms, which librdkafka reports to throttle_cb)
while another client id is not."""

from __future__ import annotations

import time

from confluent_kafka import Producer
from kafka.protocol.admin import (AlterClientQuotasRequest, AlterClientQuotasResponse,
                                  CreatePartitionsRequest, CreatePartitionsResponse,
                                  CreateTopicsRequest, CreateTopicsResponse,
                                  DeleteTopicsRequest, DeleteTopicsResponse,
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
    # 0.001% of a thread is 10 µs a second (100 µs over the 10 s window): a few hundred
    # Metadata requests of a microsecond or two each are more.
    assert alter(admin, "chatty", "request_percentage", 0.001) == 0
    assert describe(admin, "chatty") == {"request_percentage": 0.001}

    # The versions come from another connection: ApiVersions v0 cannot carry throttle_time_ms,
    # and one that crossed the quota would hold the next answer back unseen (see below).
    versions = admin.negotiate()

    def throttles(client_id, requests):
        wire = KafkaWire(broker.bootstrap, client_id=client_id)
        wire.api_versions = versions
        seen = []
        for _ in range(requests):
            response = wire.metadata([])
            seen.append(response.throttle_time_ms)
            if response.throttle_time_ms > 0:
                # The broker now reads nothing more from this connection for that long.
                break
        wire.close()
        return seen

    chatty = throttles("chatty", 5000)
    assert chatty[-1] > 0, f"no throttle in {len(chatty)} Metadata responses"
    assert set(throttles("quiet", 200)) == {0}

    assert alter(admin, "chatty", "request_percentage", 0.0, remove=True) == 0
    admin.close()


def test_a_client_too_old_to_back_off_itself_gets_its_answers_late(broker):
    """KIP-219: a response of a version the client does not back off by itself (ApiVersions v0
    has no throttle_time_ms at all) is held by the broker for the throttle time instead."""
    admin = KafkaWire(broker.bootstrap)
    assert alter(admin, "old-chatty", "request_percentage", 0.001) == 0
    wire = KafkaWire(broker.bootstrap, client_id="old-chatty", timeout_s=30)
    slowest = 0.0
    for requests in range(1, 5001):
        started = time.monotonic()
        wire.negotiate()
        slowest = max(slowest, time.monotonic() - started)
        # An ApiVersions round trip here takes well under a millisecond; once the client is
        # over its quota, each answer waits its throttle (a second or so at this quota).
        if slowest >= 0.05:
            break
    wire.close()
    assert slowest >= 0.05, f"no answer held back in {requests} ApiVersions v0 requests"

    quiet = KafkaWire(broker.bootstrap, client_id="quiet")
    started = time.monotonic()
    for _ in range(200):
        quiet.negotiate()
    assert time.monotonic() - started < 5
    quiet.close()
    assert alter(admin, "old-chatty", "request_percentage", 0.0, remove=True) == 0
    admin.close()


THROTTLING_QUOTA_EXCEEDED = 89


def create_topics(wire, version, partitions: dict[str, int]):
    request = CreateTopicsRequest(
        topics=[CreateTopicsRequest.CreatableTopic(name=name, num_partitions=count,
                                                   replication_factor=-1, assignments=[],
                                                   configs=[])
                for name, count in partitions.items()],
        timeout_ms=10000, validate_only=False)
    response = wire.request(request, version=version, response_class=CreateTopicsResponse)
    return {t.name: t.error_code for t in response.topics}, response.throttle_time_ms


def test_controller_mutation_rate_refuses_partitions_beyond_the_bucket(broker):
    """controller_mutation_rate (KIP-599): partitions created or deleted per second, in a
    token bucket of 11 s; a request of a version that knows THROTTLING_QUOTA_EXCEEDED gets it
    for the topics met once the bucket is empty, an older one is served whole; both are told
    how long to wait."""
    admin = KafkaWire(broker.bootstrap)
    for client_id in ("creator", "old-creator", "deleter", "grower"):
        assert alter(admin, client_id, "controller_mutation_rate", 1.0) == 0

    # 11 tokens: 8 partitions fit, 8 more are admitted (the bucket had some), then none.
    creator = KafkaWire(broker.bootstrap, client_id="creator")
    errors, throttle_ms = create_topics(creator, 7, {"cm-a": 8, "cm-b": 8, "cm-c": 1})
    assert errors == {"cm-a": 0, "cm-b": 0, "cm-c": THROTTLING_QUOTA_EXCEEDED}
    assert 4000 <= throttle_ms <= 5100, throttle_ms
    creator.close()
    # Another client id has no quota.
    free = KafkaWire(broker.bootstrap, client_id="free")
    errors, throttle_ms = create_topics(free, 7, {"cm-d": 20, "cm-e": 20})
    assert errors == {"cm-d": 0, "cm-e": 0} and throttle_ms == 0
    free.close()
    # CreateTopics v5 predates the error: everything is created, the client is throttled.
    old = KafkaWire(broker.bootstrap, client_id="old-creator")
    errors, throttle_ms = create_topics(old, 5, {"cm-f": 10, "cm-g": 10})
    assert errors == {"cm-f": 0, "cm-g": 0} and throttle_ms > 0
    old.close()

    deleter = KafkaWire(broker.bootstrap, client_id="deleter")
    response = deleter.request(DeleteTopicsRequest(
        topics=[DeleteTopicsRequest.DeleteTopicState(name=name, topic_id=None)
                for name in ("cm-d", "cm-e")], topic_names=[], timeout_ms=10000), version=6,
        response_class=DeleteTopicsResponse)
    assert {r.name: r.error_code for r in response.responses} == {
        "cm-d": 0, "cm-e": THROTTLING_QUOTA_EXCEEDED}
    assert response.throttle_time_ms > 0
    deleter.close()

    grower = KafkaWire(broker.bootstrap, client_id="grower")
    response = grower.request(CreatePartitionsRequest(
        topics=[CreatePartitionsRequest.CreatePartitionsTopic(name=name, count=30,
                                                              assignments=None)
                for name in ("cm-f", "cm-g")], timeout_ms=10000, validate_only=False),
        version=3, response_class=CreatePartitionsResponse)
    assert {r.name: r.error_code for r in response.results} == {
        "cm-f": 0, "cm-g": THROTTLING_QUOTA_EXCEEDED}
    grower.close()

    metadata = KafkaWire(broker.bootstrap).metadata(["cm-c", "cm-d", "cm-e", "cm-f", "cm-g"],
                                                     allow_auto_topic_creation=False)
    counts = {t.name: len(t.partitions) for t in metadata.topics if t.error_code == 0}
    assert counts.get("cm-f") == 30 and counts.get("cm-g") == 10
    assert "cm-c" not in counts and "cm-d" not in counts and counts.get("cm-e") == 20
    admin.close()

