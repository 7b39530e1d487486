"""A raw Kafka protocol connection for tests that must send exactly the bytes they mean.

Valid requests are encoded with kafka-python's protocol classes at a version negotiated with the
broker through ApiVersions; tests that need broken input build or mutate the bytes themselves.
Frame: size i32 | api_key i16 | api_version i16 | correlation_id i32 | client_id (i16 length)
| [tagged fields, flexible header only] | body.
"""

import socket
import struct
import time

from kafka.protocol.consumer import (
    FetchRequest,
    FetchResponse,
    ListOffsetsRequest,
    ListOffsetsResponse,
)
from kafka.protocol.metadata import (
    ApiVersionsRequest,
    ApiVersionsResponse,
    FindCoordinatorRequest,
    FindCoordinatorResponse,
    MetadataRequest,
    MetadataResponse,
)
from kafka.protocol.producer import (
    InitProducerIdRequest,
    InitProducerIdResponse,
    ProduceRequest,
    ProduceResponse,
)
from kafka.record.default_records import DefaultRecordBatchBuilder

API_KEY_PRODUCE = 0
API_KEY_FETCH = 1
API_KEY_METADATA = 3
API_KEY_API_VERSIONS = 18

ERROR_NONE = 0
ERROR_CORRUPT_MESSAGE = 2
ERROR_UNKNOWN_TOPIC_OR_PARTITION = 3
ERROR_MESSAGE_TOO_LARGE = 10
ERROR_UNSUPPORTED_VERSION = 35
ERROR_OUT_OF_ORDER_SEQUENCE_NUMBER = 45
ERROR_DUPLICATE_SEQUENCE_NUMBER = 46
ERROR_INVALID_PRODUCER_EPOCH = 47

# Highest versions these tests encode, whatever the broker advertises: from Produce v13 and
# Fetch v13 on, topics are named by id, which these tests do not look up.
VERSION_CAPS = {
    API_KEY_PRODUCE: 12,
    API_KEY_FETCH: 12,
    API_KEY_METADATA: 12,
}

RESPONSE_FRAME_BYTES_MAX = 64 << 20


class ConnectionClosed(Exception):
    pass


class KafkaWire:
    """One TCP connection speaking Kafka frames, with a bound on every wait."""

    def __init__(self, bootstrap: str, timeout_s: float = 10.0, client_id: str = "sluice-wire",
                 version_caps: dict[int, int] | None = None):
        host, port = bootstrap.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout_s = timeout_s
        self.client_id = client_id
        self.correlation_id = 0
        self.api_versions = None  # api_key -> (min, max), filled by negotiate()
        self.version_caps = {**VERSION_CAPS, **(version_caps or {})}

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def next_correlation_id(self) -> int:
        self.correlation_id += 1
        return self.correlation_id

    def send_raw(self, data: bytes):
        self.sock.sendall(data)

    def _recv_exact(self, n: int, deadline: float) -> bytes:
        chunks = []
        while n > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no response within {self.timeout_s}s")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(min(n, 1 << 20))
            except ConnectionResetError as err:
                raise ConnectionClosed(str(err)) from err
            if not chunk:
                raise ConnectionClosed("peer closed the connection")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def recv_frame(self) -> bytes:
        """One response frame, without its size prefix."""
        deadline = time.monotonic() + self.timeout_s
        (size,) = struct.unpack(">i", self._recv_exact(4, deadline))
        assert 0 <= size <= RESPONSE_FRAME_BYTES_MAX, f"absurd response frame size {size}"
        return self._recv_exact(size, deadline)

    def wait_closed(self, timeout_s: float = 10.0) -> bool:
        """True if the server closes this connection within timeout_s (any bytes it sends first
        are read and dropped)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if not self.sock.recv(65536):
                    return True
            except socket.timeout:
                return False
            except (ConnectionResetError, BrokenPipeError):
                return True
        return False

    # -- valid requests ----------------------------------------------------------------------

    def negotiate(self):
        """ApiVersions v0 (every broker answers it); remembers the broker's ranges."""
        response = self.request(ApiVersionsRequest(), version=0, response_class=ApiVersionsResponse)
        assert response.error_code == ERROR_NONE, f"ApiVersions v0 failed: {response}"
        self.api_versions = {k.api_key: (k.min_version, k.max_version) for k in response.api_keys}
        return self.api_versions

    def version_for(self, request_class) -> int:
        if self.api_versions is None:
            self.negotiate()
        key = request_class.API_KEY
        assert key in self.api_versions, f"broker does not advertise api key {key}"
        broker_min, broker_max = self.api_versions[key]
        version = min(broker_max, request_class.max_version, self.version_caps.get(key, 1 << 15))
        assert version >= broker_min, (
            f"no common version of api {key}: broker {broker_min}-{broker_max}, "
            f"test client up to {version}")
        return version

    def request(self, message, version=None, response_class=None):
        if version is None:
            version = self.version_for(type(message))
        if response_class is None:
            response_class = RESPONSE_CLASSES[type(message)]
        correlation_id = self.next_correlation_id()
        message.with_header(correlation_id=correlation_id, client_id=self.client_id)
        self.send_raw(bytes(message.encode(version=version, header=True, framed=True)))
        if not message.expect_response():
            return None
        frame = self.recv_frame()
        response = response_class.decode(frame, version=version, header=True)
        assert response.header.correlation_id == correlation_id, (
            f"correlation id {response.header.correlation_id} != {correlation_id}")
        return response

    def init_producer_id(self, transactional_id=None, timeout_ms=60000, retry_s=30):
        # A broker that has just started may still be loading its coordinators: retry those
        # answers (COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE) as clients do. A
        # transactional id is looked up first (FindCoordinator makes Kafka create its
        # transaction log; until then it answers NOT_COORDINATOR).
        deadline = time.monotonic() + retry_s
        while True:
            if transactional_id is not None:
                self.request(FindCoordinatorRequest(
                    key_type=1, key=transactional_id, coordinator_keys=[transactional_id]))
            response = self.request(InitProducerIdRequest(
                transactional_id=transactional_id, transaction_timeout_ms=timeout_ms))
            if response.error_code not in (14, 15, 16) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert response.error_code == ERROR_NONE, f"InitProducerId failed: {response}"
        return response.producer_id, response.producer_epoch

    def produce(self, topic: str, partition: int, records: bytes, acks: int = -1,
                transactional_id: str | None = None):
        """Produce one record batch; returns the partition's response."""
        request = ProduceRequest(
            transactional_id=transactional_id, acks=acks, timeout_ms=10000,
            topic_data=[ProduceRequest.TopicProduceData(
                name=topic,
                partition_data=[ProduceRequest.TopicProduceData.PartitionProduceData(
                    index=partition, records=records)])])
        response = self.request(request)
        if response is None:
            return None
        [topic_response] = response.responses
        [partition_response] = topic_response.partition_responses
        return partition_response

    def fetch(self, topic: str, partition: int, offset: int, max_wait_ms=100):
        request = FetchRequest(
            max_wait_ms=max_wait_ms, min_bytes=1,
            topics=[FetchRequest.FetchTopic(
                topic=topic,
                partitions=[FetchRequest.FetchTopic.FetchPartition(
                    partition=partition, fetch_offset=offset, partition_max_bytes=1 << 20)])])
        response = self.request(request)
        return response

    def list_offset(self, topic: str, partition: int, timestamp: int, isolation_level: int = 0):
        """ListOffsets for one partition: timestamp -1 latest, -2 earliest; isolation level 1
        (read_committed) answers latest with the last stable offset."""
        request = ListOffsetsRequest(
            replica_id=-1,
            isolation_level=isolation_level,
            topics=[ListOffsetsRequest.ListOffsetsTopic(
                name=topic,
                partitions=[ListOffsetsRequest.ListOffsetsTopic.ListOffsetsPartition(
                    partition_index=partition, timestamp=timestamp)])])
        response = self.request(request)
        [topic_response] = response.topics
        [partition_response] = topic_response.partitions
        return partition_response

    def metadata(self, topics, allow_auto_topic_creation=True):
        request = MetadataRequest(
            topics=[MetadataRequest.MetadataRequestTopic(name=t) for t in topics],
            allow_auto_topic_creation=allow_auto_topic_creation)
        return self.request(request)


RESPONSE_CLASSES = {
    ApiVersionsRequest: ApiVersionsResponse,
    MetadataRequest: MetadataResponse,
    ProduceRequest: ProduceResponse,
    FetchRequest: FetchResponse,
    ListOffsetsRequest: ListOffsetsResponse,
    InitProducerIdRequest: InitProducerIdResponse,
    FindCoordinatorRequest: FindCoordinatorResponse,
}


def record_batch(values, producer_id=-1, producer_epoch=-1, base_sequence=-1,
                 timestamp_ms=None, compression_type=0, transactional=False) -> bytes:
    """A record batch v2 holding `values` (keyless), with a correct CRC-32C."""
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=compression_type, is_transactional=int(transactional),
        producer_id=producer_id, producer_epoch=producer_epoch, base_sequence=base_sequence,
        batch_size=64 << 20)
    if timestamp_ms is None:
        timestamp_ms = int(time.time() * 1000)
    for i, value in enumerate(values):
        builder.append(i, timestamp=timestamp_ms, key=None, value=value, headers=[])
    return bytes(builder.build())


# Record batch v2 header layout: baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 |
# magic i8 | crc u32 | attributes i16 | ... The CRC covers everything from attributes on.
BATCH_CRC_OFFSET = 17
BATCH_ATTRIBUTES_OFFSET = 21


def corrupt_payload(batch: bytes) -> bytes:
    """The same batch with one bit of its last record's value flipped (the byte before the
    record's trailing header count): still well-formed, but the CRC no longer matches."""
    data = bytearray(batch)
    data[-2] ^= 0x01
    return bytes(data)


def frame(api_key: int, api_version: int, correlation_id: int, body: bytes,
          client_id: bytes = b"sluice-wire", flexible_header: bool = False) -> bytes:
    """A hand-built request frame (for versions or bodies kafka-python refuses to encode)."""
    header = struct.pack(">hhi", api_key, api_version, correlation_id)
    header += struct.pack(">h", len(client_id)) + client_id
    if flexible_header:
        header += b"\x00"  # empty tagged fields
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def compact_string(value: bytes) -> bytes:
    """COMPACT_STRING with a length below 127 (one-byte unsigned varint of length + 1)."""
    assert len(value) < 127
    return bytes([len(value) + 1]) + value


def decode_api_versions_error_response(frame_body: bytes):
    """The KIP-511 reply to an ApiVersions request at an unknown version is v0-format:
    correlation_id i32 | error_code i16 | [api_key i16 min i16 max i16] (i32 count)."""
    correlation_id, error_code, count = struct.unpack_from(">ihi", frame_body, 0)
    ranges = {}
    offset = 10
    for _ in range(count):
        api_key, version_min, version_max = struct.unpack_from(">hhh", frame_body, offset)
        ranges[api_key] = (version_min, version_max)
        offset += 6
    return correlation_id, error_code, ranges
