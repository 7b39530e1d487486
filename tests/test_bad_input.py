"""Bad input gets the protocol's answer (an error code, or that connection closed) and never
stops the server or disturbs another client."""

import socket
import struct

import pytest
from confluent_kafka import KafkaError, Producer
from kafka.protocol.consumer import FetchRequest
from kafka.protocol.metadata import ApiVersionsRequest, ApiVersionsResponse

from kafka_wire import (
    API_KEY_API_VERSIONS,
    BATCH_CRC_OFFSET,
    API_KEY_METADATA,
    API_KEY_PRODUCE,
    ERROR_CORRUPT_MESSAGE,
    ERROR_MESSAGE_TOO_LARGE,
    ERROR_NONE,
    ERROR_UNKNOWN_TOPIC_OR_PARTITION,
    ERROR_UNSUPPORTED_VERSION,
    ConnectionClosed,
    KafkaWire,
    compact_string,
    corrupt_payload,
    decode_api_versions_error_response,
    frame,
    record_batch,
)
from librdkafka_client import (
    admin,
    assert_broker_serves_another_client,
    create_topic,
    read_all,
    unique_name,
)

CLOSE_TIMEOUT_S = 10


def assert_alive(broker, after):
    assert broker.running(), f"broker died after {after}:\n{broker.log_tail()}"


def assert_still_serving(broker, bystander=None):
    """The process is alive, a connection opened before the bad input still answers, and a
    fresh librdkafka client can list topics, produce and consume."""
    assert_alive(broker, "the bad input")
    if bystander is not None:
        bystander.negotiate()
    metadata = admin(broker.bootstrap).list_topics(timeout=10)
    assert 0 in metadata.brokers
    assert_broker_serves_another_client(broker.bootstrap)


@pytest.fixture
def bystander(broker):
    """A healthy connection that is open while another one misbehaves."""
    with KafkaWire(broker.bootstrap) as wire:
        wire.negotiate()
        yield wire


@pytest.mark.timeout(90)
def test_malformed_request_body_closes_only_that_connection(broker, bystander):
    with KafkaWire(broker.bootstrap) as bad:
        # Metadata v1 whose topic array claims 2^31-1 entries but the frame ends right there.
        bad.send_raw(frame(API_KEY_METADATA, 1, 1, struct.pack(">i", 0x7FFFFFFF)))
        assert bad.wait_closed(CLOSE_TIMEOUT_S), "malformed request did not close the connection"
    assert_alive(broker, "a Metadata request with an array length beyond its frame")
    with KafkaWire(broker.bootstrap) as bad:
        # ApiVersions v3 whose client_software_name claims 50 bytes and carries 3.
        body = bytes([51]) + b"abc"
        bad.send_raw(frame(API_KEY_API_VERSIONS, 3, 1, body, flexible_header=True))
        assert bad.wait_closed(CLOSE_TIMEOUT_S), "truncated body did not close the connection"
    assert_alive(broker, "an ApiVersions request with a string length beyond its frame")
    assert_still_serving(broker, bystander)


@pytest.mark.timeout(90)
def test_connection_dropped_mid_frame_does_not_disturb_others(broker, bystander):
    request = frame(API_KEY_METADATA, 1, 1, struct.pack(">i", -1))
    with KafkaWire(broker.bootstrap) as bad:
        bad.send_raw(request[: len(request) // 2])
        bad.sock.shutdown(socket.SHUT_WR)  # EOF in the middle of a frame
        assert bad.wait_closed(CLOSE_TIMEOUT_S), "connection not closed after EOF mid-frame"
    assert_still_serving(broker, bystander)


@pytest.mark.parametrize("size", [0x7FFFFFFF, 0x40000000, -1, 0])
@pytest.mark.timeout(90)
def test_absurd_frame_length_closes_connection_without_allocating_it(broker, bystander, size):
    # A buffer reserved for the claimed size shows in the peak of mapped memory even if its
    # pages are never touched; a few new malloc arenas stay far below the threshold.
    peak_before = broker.memory_bytes("VmPeak")
    with KafkaWire(broker.bootstrap) as bad:
        # The connection stays open: only rejecting the length up front closes it in time.
        bad.send_raw(struct.pack(">i", size) + b"\x00\x12\x00\x00\x00\x00\x00\x01")
        assert bad.wait_closed(CLOSE_TIMEOUT_S), f"frame size {size} did not close the connection"
    peak_growth = broker.memory_bytes("VmPeak") - peak_before
    assert peak_growth < 512 << 20, (
        f"broker mapped {peak_growth >> 20} MiB more after one frame header of size {size}")
    assert_still_serving(broker, bystander)


@pytest.mark.timeout(60)
def test_api_versions_at_unknown_version_gets_unsupported_version_with_ranges(broker):
    with KafkaWire(broker.bootstrap) as wire:
        # A future ApiVersions (v99) is flexible: header v2 and a compact body (KIP-511).
        body = compact_string(b"sluice-tests") + compact_string(b"0.0.1") + b"\x00"
        wire.send_raw(frame(API_KEY_API_VERSIONS, 99, 4242, body, flexible_header=True))
        correlation_id, error_code, ranges = decode_api_versions_error_response(
            wire.recv_frame())
        assert correlation_id == 4242
        assert error_code == ERROR_UNSUPPORTED_VERSION
        assert API_KEY_API_VERSIONS in ranges and API_KEY_PRODUCE in ranges, ranges
        for api_key, (version_min, version_max) in ranges.items():
            assert 0 <= version_min <= version_max, (api_key, version_min, version_max)
        # The client retries on the same connection at a version the broker speaks.
        retry_version = min(ranges[API_KEY_API_VERSIONS][1], 3)
        response = wire.request(
            ApiVersionsRequest(client_software_name="sluice-tests",
                               client_software_version="0.0.1"),
            version=retry_version, response_class=ApiVersionsResponse)
        assert response.error_code == ERROR_NONE
        advertised = {k.api_key: (k.min_version, k.max_version) for k in response.api_keys}
        assert advertised == ranges


def assert_refused(wire, correlation_id):
    """Kafka closes the connection on a request it cannot parse (unknown key or version);
    answering UNSUPPORTED_VERSION for the right correlation id is accepted too."""
    try:
        body = wire.recv_frame()
    except ConnectionClosed:
        return "closed"
    (got_correlation_id,) = struct.unpack_from(">i", body, 0)
    assert got_correlation_id == correlation_id
    assert struct.pack(">h", ERROR_UNSUPPORTED_VERSION) in body[4:], body.hex()
    return "unsupported_version"


@pytest.mark.timeout(90)
def test_unknown_api_key_is_refused_and_server_keeps_serving(broker, bystander):
    with KafkaWire(broker.bootstrap) as wire:
        wire.send_raw(frame(999, 0, 7, b""))
        assert_refused(wire, 7)
    assert_still_serving(broker, bystander)


@pytest.mark.timeout(90)
def test_unsupported_produce_version_is_refused_and_server_keeps_serving(broker, bystander):
    with KafkaWire(broker.bootstrap) as wire:
        wire.negotiate()
        unsupported = wire.api_versions[API_KEY_PRODUCE][1] + 50
        wire.send_raw(frame(API_KEY_PRODUCE, unsupported, 8, b"\x00" * 32, flexible_header=True))
        assert_refused(wire, 8)
    assert_still_serving(broker, bystander)


@pytest.mark.parametrize("damage", ["record_value", "crc_field"])
@pytest.mark.timeout(90)
def test_batch_with_bad_crc_gets_corrupt_message_and_is_not_stored(broker, bystander, damage):
    topic = unique_name("bad-crc")
    create_topic(broker.bootstrap, topic, 1)
    with KafkaWire(broker.bootstrap) as wire:
        batch = record_batch([b"first", b"second", b"third"])
        if damage == "record_value":
            corrupt = corrupt_payload(batch)
        else:
            corrupt = bytearray(batch)
            corrupt[BATCH_CRC_OFFSET] ^= 0x01
            corrupt = bytes(corrupt)
        response = wire.produce(topic, 0, corrupt)
        assert response.error_code == ERROR_CORRUPT_MESSAGE, response
        latest = wire.list_offset(topic, 0, -1)
        assert latest.error_code == ERROR_NONE and latest.offset == 0, latest
        # The same batch, intact, is stored at offset 0: nothing of the corrupt one was kept.
        response = wire.produce(topic, 0, batch)
        assert response.error_code == ERROR_NONE and response.base_offset == 0, response
    assert [r[3] for r in read_all(broker.bootstrap, topic, 1)] == [b"first", b"second",
                                                                    b"third"]
    assert_still_serving(broker, bystander)


@pytest.fixture
def small_broker(broker_factory):
    return broker_factory("--message-max-bytes", "10000")


@pytest.mark.timeout(90)
def test_batch_over_message_max_bytes_gets_message_too_large(small_broker):
    broker = small_broker
    topic = unique_name("too-large")
    create_topic(broker.bootstrap, topic, 1)
    with KafkaWire(broker.bootstrap) as wire:
        response = wire.produce(topic, 0, record_batch([b"x" * 20_000]))
        assert response.error_code == ERROR_MESSAGE_TOO_LARGE, response
        assert wire.list_offset(topic, 0, -1).offset == 0
        assert wire.produce(topic, 0, record_batch([b"small"])).error_code == ERROR_NONE

    # librdkafka's own limit is 1 MB, so the broker is the one refusing here.
    reports = []
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all",
                         "message.timeout.ms": 10000})
    producer.produce(topic, value=b"y" * 20_000, on_delivery=lambda err, msg: reports.append(err))
    assert producer.flush(15) == 0
    assert len(reports) == 1 and reports[0] is not None
    assert reports[0].code() == KafkaError.MSG_SIZE_TOO_LARGE, reports[0]
    assert [r[3] for r in read_all(broker.bootstrap, topic, 1)] == [b"small"]
    assert_still_serving(broker)


@pytest.fixture
def no_auto_create_broker(broker_factory):
    return broker_factory("--auto-create-topics", "false")


@pytest.mark.timeout(90)
def test_unknown_topic_with_auto_create_off_gets_unknown_topic_or_partition(
        no_auto_create_broker):
    broker = no_auto_create_broker
    topic = unique_name("no-such-topic")
    with KafkaWire(broker.bootstrap) as wire:
        response = wire.produce(topic, 0, record_batch([b"nowhere"]))
        assert response.error_code == ERROR_UNKNOWN_TOPIC_OR_PARTITION, response

        fetched = wire.fetch(topic, 0, 0)
        [topic_response] = fetched.responses
        [partition_response] = topic_response.partitions
        assert partition_response.error_code == ERROR_UNKNOWN_TOPIC_OR_PARTITION, fetched

        # Even a Metadata request that allows auto-creation does not create it.
        metadata = wire.metadata([topic], allow_auto_topic_creation=True)
        [topic_metadata] = metadata.topics
        assert topic_metadata.error_code == ERROR_UNKNOWN_TOPIC_OR_PARTITION, metadata
    assert topic not in admin(broker.bootstrap).list_topics(timeout=10).topics
    assert_still_serving(broker)


FETCH_MAX_BYTES = 100_000
I32_MAX = 2**31 - 1


@pytest.fixture
def fetch_capped_broker(broker_factory):
    return broker_factory("--fetch-max-bytes", str(FETCH_MAX_BYTES))


@pytest.mark.timeout(90)
def test_fetch_asking_for_everything_gets_at_most_fetch_max_bytes(fetch_capped_broker):
    """max_bytes and partition_max_bytes of i32::MAX over partitions holding far more than
    --fetch-max-bytes: the response carries at most that many record bytes (the first batch,
    smaller than the cap, needs no KIP-74 exception)."""
    broker = fetch_capped_broker
    topic = unique_name("fetch-cap")
    partitions = 3
    create_topic(broker.bootstrap, topic, partitions)
    with KafkaWire(broker.bootstrap) as wire:
        for partition in range(partitions):
            for _ in range(20):  # 20 batches of ~20 KB: ~400 KB per partition
                batch = record_batch([b"v" * 1000] * 20)
                assert wire.produce(topic, partition, batch).error_code == ERROR_NONE
        request = FetchRequest(
            replica_id=-1, max_wait_ms=0, min_bytes=1, max_bytes=I32_MAX, isolation_level=0,
            topics=[FetchRequest.FetchTopic(
                topic=topic,
                partitions=[FetchRequest.FetchTopic.FetchPartition(
                    partition=p, fetch_offset=0, partition_max_bytes=I32_MAX)
                    for p in range(partitions)])])
        response = wire.request(request)
        sizes = []
        for topic_response in response.responses:
            for partition in topic_response.partitions:
                assert partition.error_code == ERROR_NONE, partition
                sizes.append(len(partition.records or b""))
        assert 0 < sum(sizes) <= FETCH_MAX_BYTES, sizes
        assert sum(sizes) > FETCH_MAX_BYTES // 2, sizes
    assert_still_serving(broker)
