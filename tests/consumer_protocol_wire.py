"""ConsumerGroupHeartbeat (api 68) and ConsumerGroupDescribe (api 69) on a raw connection.

kafka-python has no classes for the KIP-848 APIs, so these few messages are encoded here by
hand, from the published message schemas (both are flexible versions only: compact strings
and arrays, tagged fields). Request header v2, response header v1.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field

from kafka_wire import KafkaWire

API_KEY_CONSUMER_GROUP_HEARTBEAT = 68
API_KEY_CONSUMER_GROUP_DESCRIBE = 69

ERROR_UNKNOWN_MEMBER_ID = 25
ERROR_INVALID_REQUEST = 42
ERROR_GROUP_ID_NOT_FOUND = 69
ERROR_FENCED_MEMBER_EPOCH = 110
ERROR_UNRELEASED_INSTANCE_ID = 111
ERROR_UNSUPPORTED_ASSIGNOR = 112
ERROR_INVALID_REGULAR_EXPRESSION = 128


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _compact_string(text: str | None) -> bytes:
    if text is None:
        return _uvarint(0)
    data = text.encode()
    return _uvarint(len(data) + 1) + data


def _compact_array(items: list[bytes] | None) -> bytes:
    if items is None:
        return _uvarint(0)
    return _uvarint(len(items) + 1) + b"".join(items)


NO_TAGGED_FIELDS = _uvarint(0)


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos:self.pos + n]
        assert len(chunk) == n, "response ended early"
        self.pos += n
        return chunk

    def int8(self) -> int:
        return struct.unpack(">b", self.take(1))[0]

    def int16(self) -> int:
        return struct.unpack(">h", self.take(2))[0]

    def int32(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def uvarint(self) -> int:
        shift = value = 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7

    def compact_string(self) -> str | None:
        length = self.uvarint()
        return None if length == 0 else self.take(length - 1).decode()

    def uuid(self) -> uuid.UUID:
        return uuid.UUID(bytes=self.take(16))

    def array(self, item) -> list | None:
        length = self.uvarint()
        return None if length == 0 else [item() for _ in range(length - 1)]

    def skip_tagged_fields(self):
        for _ in range(self.uvarint()):
            self.uvarint()
            self.take(self.uvarint())


@dataclass
class HeartbeatResponse:
    error_code: int
    error_message: str | None
    member_id: str | None
    member_epoch: int
    heartbeat_interval_ms: int
    # topic id -> partitions; None when the response carries no assignment.
    assignment: dict[uuid.UUID, list[int]] | None


@dataclass
class DescribedMember:
    member_id: str
    member_epoch: int
    assignment: dict[str, list[int]]
    target_assignment: dict[str, list[int]]
    subscribed_topic_names: list[str]


@dataclass
class DescribedGroup:
    error_code: int
    error_message: str | None
    group_id: str
    state: str
    group_epoch: int
    assignment_epoch: int
    assignor: str
    members: list[DescribedMember] = field(default_factory=list)


def _send(wire: KafkaWire, api_key: int, version: int, body: bytes) -> _Reader:
    correlation_id = wire.next_correlation_id()
    client_id = wire.client_id.encode()
    header = (struct.pack(">hhi", api_key, version, correlation_id)
              + struct.pack(">h", len(client_id)) + client_id + NO_TAGGED_FIELDS)
    frame = header + body
    wire.send_raw(struct.pack(">i", len(frame)) + frame)
    reader = _Reader(wire.recv_frame())
    assert reader.int32() == correlation_id
    reader.skip_tagged_fields()
    return reader


def heartbeat(wire: KafkaWire, group_id: str, member_id: str, member_epoch: int, *,
              instance_id: str | None = None, rebalance_timeout_ms: int = -1,
              topics: list[str] | None = None, regex: str | None = None,
              assignor: str | None = None,
              owned: dict[uuid.UUID, list[int]] | None = None,
              version: int = 1) -> HeartbeatResponse:
    owned_items = None if owned is None else [
        topic_id.bytes
        + _compact_array([struct.pack(">i", p) for p in partitions])
        + NO_TAGGED_FIELDS
        for topic_id, partitions in owned.items()]
    body = (_compact_string(group_id) + _compact_string(member_id)
            + struct.pack(">i", member_epoch)
            + _compact_string(instance_id) + _compact_string(None)  # rack id
            + struct.pack(">i", rebalance_timeout_ms)
            + _compact_array(None if topics is None else [_compact_string(t) for t in topics])
            + (_compact_string(regex) if version >= 1 else b"")
            + _compact_string(assignor)
            + _compact_array(owned_items)
            + NO_TAGGED_FIELDS)
    r = _send(wire, API_KEY_CONSUMER_GROUP_HEARTBEAT, version, body)
    r.int32()  # throttle time
    error_code = r.int16()
    error_message = r.compact_string()
    response_member_id = r.compact_string()
    epoch = r.int32()
    interval = r.int32()
    assignment = None
    if r.int8() >= 0:
        def topic_partitions():
            topic_id = r.uuid()
            partitions = r.array(r.int32) or []
            r.skip_tagged_fields()
            return topic_id, sorted(partitions)
        assignment = dict(r.array(topic_partitions) or [])
        r.skip_tagged_fields()
    r.skip_tagged_fields()
    return HeartbeatResponse(error_code, error_message, response_member_id, epoch, interval,
                             assignment)


def describe(wire: KafkaWire, group_ids: list[str], version: int = 0) -> list[DescribedGroup]:
    body = (_compact_array([_compact_string(g) for g in group_ids])
            + b"\x00"  # include authorized operations: no
            + NO_TAGGED_FIELDS)
    r = _send(wire, API_KEY_CONSUMER_GROUP_DESCRIBE, version, body)
    r.int32()  # throttle time

    def assignment():
        def topic_partitions():
            r.uuid()
            name = r.compact_string()
            partitions = r.array(r.int32) or []
            r.skip_tagged_fields()
            return name, sorted(partitions)
        result = dict(r.array(topic_partitions) or [])
        r.skip_tagged_fields()
        return result

    def member():
        member_id = r.compact_string()
        r.compact_string()  # instance id
        r.compact_string()  # rack id
        epoch = r.int32()
        r.compact_string()  # client id
        r.compact_string()  # client host
        topics = r.array(r.compact_string) or []
        r.compact_string()  # regex
        assigned = assignment()
        target = assignment()
        if version >= 1:
            r.int8()  # member type
        r.skip_tagged_fields()
        return DescribedMember(member_id, epoch, assigned, target, topics)

    def group():
        error_code = r.int16()
        error_message = r.compact_string()
        group_id = r.compact_string()
        state = r.compact_string()
        group_epoch = r.int32()
        assignment_epoch = r.int32()
        assignor = r.compact_string()
        members = r.array(member) or []
        r.int32()  # authorized operations
        r.skip_tagged_fields()
        return DescribedGroup(error_code, error_message, group_id, state, group_epoch,
                              assignment_epoch, assignor, members)

    groups = r.array(group) or []
    r.skip_tagged_fields()
    return groups
