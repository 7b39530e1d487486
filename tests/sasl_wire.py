"""Kafka's SASL and security requests as raw frames, for tests that must see exactly what a
broker answers (error codes, session lifetimes, the SCRAM messages themselves) where client
libraries hide it: SaslHandshake v1, SaslAuthenticate v1, DescribeAcls v1 and
DescribeUserScramCredentials v0."""

from __future__ import annotations

import struct

from kafka_wire import KafkaWire, compact_string, frame

API_SASL_HANDSHAKE = 17
API_SASL_AUTHENTICATE = 36
API_DESCRIBE_ACLS = 29
API_DESCRIBE_USER_SCRAM_CREDENTIALS = 50


def kstring(value: str) -> bytes:
    data = value.encode()
    return struct.pack(">h", len(data)) + data


def sasl_handshake(wire: KafkaWire, mechanism: str) -> tuple[int, list[str]]:
    """SaslHandshake v1: (error code, the broker's enabled mechanisms)."""
    cid = wire.next_correlation_id()
    wire.send_raw(frame(API_SASL_HANDSHAKE, 1, cid, kstring(mechanism)))
    body = wire.recv_frame()
    got_cid, error, count = struct.unpack_from(">ihi", body, 0)
    assert got_cid == cid
    offset, mechanisms = 10, []
    for _ in range(count):
        (length,) = struct.unpack_from(">h", body, offset)
        mechanisms.append(body[offset + 2:offset + 2 + length].decode())
        offset += 2 + length
    return error, mechanisms


def sasl_authenticate(wire: KafkaWire, token: bytes) -> tuple[int, str | None, bytes, int]:
    """SaslAuthenticate v1: (error code, error message, auth bytes, session lifetime ms)."""
    cid = wire.next_correlation_id()
    wire.send_raw(frame(API_SASL_AUTHENTICATE, 1, cid, struct.pack(">i", len(token)) + token))
    body = wire.recv_frame()
    got_cid, error, message_length = struct.unpack_from(">ihh", body, 0)
    assert got_cid == cid
    offset = 8
    message = None
    if message_length >= 0:
        message = body[offset:offset + message_length].decode()
        offset += message_length
    (auth_length,) = struct.unpack_from(">i", body, offset)
    offset += 4
    auth_bytes = body[offset:offset + max(auth_length, 0)]
    offset += max(auth_length, 0)
    (lifetime_ms,) = struct.unpack_from(">q", body, offset)
    return error, message, auth_bytes, lifetime_ms


def describe_all_acls_error(wire: KafkaWire) -> int:
    """DescribeAcls v1 for every binding (filter ANY); the response's error code."""
    # resource type, name (null), pattern type, principal (null), host (null), operation,
    # permission type; 1 = ANY for each enum.
    body = struct.pack(">bhbhhbb", 1, -1, 1, -1, -1, 1, 1)
    cid = wire.next_correlation_id()
    wire.send_raw(frame(API_DESCRIBE_ACLS, 1, cid, body))
    got_cid, _throttle_ms, error = struct.unpack_from(">iih", wire.recv_frame(), 0)
    assert got_cid == cid
    return error


def describe_scram_credentials_error(wire: KafkaWire, user: str) -> int:
    """DescribeUserScramCredentials v0 (flexible) for one user; the response's top-level error
    code. (librdkafka 2.16 aborts the process on a top-level error of this response, so the
    refusal is read off the wire.)"""
    body = b"\x02" + compact_string(user.encode()) + b"\x00" + b"\x00"
    cid = wire.next_correlation_id()
    wire.send_raw(frame(API_DESCRIBE_USER_SCRAM_CREDENTIALS, 0, cid, body, flexible_header=True))
    response = wire.recv_frame()
    got_cid, header_tags, _throttle_ms, error = struct.unpack_from(">ibih", response, 0)
    assert (got_cid, header_tags) == (cid, 0)
    return error


def plain_login(wire: KafkaWire, user: str, password: str) -> tuple[int, str | None, int]:
    """SaslHandshake PLAIN + SaslAuthenticate v1: (error, message, session lifetime ms)."""
    error, mechanisms = sasl_handshake(wire, "PLAIN")
    assert error == 0, f"SaslHandshake PLAIN: error {error}, mechanisms {mechanisms}"
    error, message, _auth, lifetime_ms = sasl_authenticate(
        wire, b"\0" + user.encode() + b"\0" + password.encode())
    return error, message, lifetime_ms
