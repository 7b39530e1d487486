"""A hand-rolled AMQP 0-9-1 client for the tests a real client library cannot express.

pika never sends a bad frame, a method on an unopened channel or an unknown method, so the error
tests speak the wire protocol themselves: struct-packed frames, the connection handshake with
PLAIN, and a reader that returns whatever the broker sends next (a method, a heartbeat, or the
end of the connection).
"""

from __future__ import annotations

import socket
import struct
import time

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE

# (class id, method id) of the methods the tests send or expect.
CONNECTION_START = (10, 10)
CONNECTION_START_OK = (10, 11)
CONNECTION_TUNE = (10, 30)
CONNECTION_TUNE_OK = (10, 31)
CONNECTION_OPEN = (10, 40)
CONNECTION_OPEN_OK = (10, 41)
CONNECTION_CLOSE = (10, 50)
CONNECTION_CLOSE_OK = (10, 51)
CHANNEL_OPEN = (20, 10)
CHANNEL_OPEN_OK = (20, 11)
CHANNEL_FLOW = (20, 20)
CHANNEL_FLOW_OK = (20, 21)
CHANNEL_CLOSE = (20, 40)
CHANNEL_CLOSE_OK = (20, 41)
QUEUE_DECLARE = (50, 10)
QUEUE_DECLARE_OK = (50, 11)
BASIC_CONSUME = (60, 20)
BASIC_CONSUME_OK = (60, 21)
BASIC_PUBLISH = (60, 40)


class ConnectionEnded(Exception):
    """The broker closed the TCP connection."""


def shortstr(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return struct.pack(">B", len(data)) + data


def longstr(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return struct.pack(">I", len(data)) + data


def parse_shortstr(data: bytes, offset: int) -> str:
    return data[offset + 1:offset + 1 + data[offset]].decode()


def table(fields: dict) -> bytes:
    """A field table of strings, bools, ints and nested tables (all the handshake needs)."""
    out = b""
    for key, value in fields.items():
        out += shortstr(key)
        if isinstance(value, bool):
            out += b"t" + struct.pack(">B", value)
        elif isinstance(value, int):
            out += b"l" + struct.pack(">q", value)
        elif isinstance(value, dict):
            out += b"F" + table(value)
        else:
            out += b"S" + longstr(value)
    return struct.pack(">I", len(out)) + out


def frame(frame_type: int, channel: int, payload: bytes, end: int = FRAME_END) -> bytes:
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + bytes([end])


def method_frame(channel: int, method: tuple[int, int], args: bytes = b"", end: int = FRAME_END):
    return frame(FRAME_METHOD, channel, struct.pack(">HH", *method) + args, end)


def content_header_frame(channel: int, class_id: int, body_size: int) -> bytes:
    # weight 0, no property flags set
    return frame(FRAME_HEADER, channel, struct.pack(">HHQH", class_id, 0, body_size, 0))


def basic_publish_args(exchange: str, routing_key: str) -> bytes:
    # reserved short, exchange, routing key, bits (mandatory, immediate)
    return struct.pack(">H", 0) + shortstr(exchange) + shortstr(routing_key) + b"\x00"


def basic_consume_args(queue: str, consumer_tag: str = "") -> bytes:
    # reserved short, queue, consumer tag, bits (no-local, no-ack, exclusive, no-wait), arguments
    return struct.pack(">H", 0) + shortstr(queue) + shortstr(consumer_tag) + b"\x00" + table({})


def queue_declare_args(name: str, passive=False, durable=False) -> bytes:
    bits = (1 if passive else 0) | (2 if durable else 0)
    return struct.pack(">H", 0) + shortstr(name) + bytes([bits]) + table({})


class Frame:
    def __init__(self, frame_type: int, channel: int, payload: bytes):
        self.type = frame_type
        self.channel = channel
        self.payload = payload

    @property
    def method(self) -> tuple[int, int] | None:
        if self.type != FRAME_METHOD:
            return None
        return struct.unpack(">HH", self.payload[:4])

    def close_reason(self) -> tuple[int, str, int, int]:
        """(reply code, reply text, failing class id, failing method id) of a close method."""
        args = self.payload[4:]
        (code,) = struct.unpack(">H", args[:2])
        text_len = args[2]
        text = args[3:3 + text_len].decode(errors="replace")
        class_id, method_id = struct.unpack(">HH", args[3 + text_len:7 + text_len])
        return code, text, class_id, method_id

    def __repr__(self):
        return f"Frame(type={self.type}, channel={self.channel}, method={self.method})"


class RawConnection:
    """One socket to the broker. `handshake()` opens the AMQP connection on it."""

    def __init__(self, host: str, port: int, timeout_s: float = 5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self.buffer = b""
        self.frame_max = 0
        self.channel_max = 0
        self.heartbeat_s = 0
        self.server_properties = b""

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data: bytes):
        self.sock.sendall(data)

    def read_exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise ConnectionEnded(f"connection closed with {self.buffer!r} unread")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def read_until_closed(self) -> bytes:
        """Everything the broker sends until it closes the socket."""
        data = self.buffer
        self.buffer = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk

    def read_frame(self) -> Frame:
        frame_type, channel, size = struct.unpack(">BHI", self.read_exactly(7))
        payload = self.read_exactly(size)
        end = self.read_exactly(1)[0]
        assert end == FRAME_END, f"broker sent frame end {end:#x}"
        return Frame(frame_type, channel, payload)

    def expect_method(self, method: tuple[int, int], channel: int = 0) -> Frame:
        """The next non-heartbeat frame, which must be `method`; a close instead fails loudly."""
        while True:
            received = self.read_frame()
            if received.type == FRAME_HEARTBEAT:
                continue
            if received.method in (CONNECTION_CLOSE, CHANNEL_CLOSE) and method != received.method:
                raise AssertionError(f"expected {method}, broker closed: {received.close_reason()}")
            assert (received.method, received.channel) == (method, channel), received
            return received

    def send_method(self, channel: int, method: tuple[int, int], args: bytes = b""):
        self.send(method_frame(channel, method, args))

    def login(self, user="guest", password="guest"):
        """Protocol header, then start-ok with PLAIN; the broker answers with tune or close."""
        self.send(PROTOCOL_HEADER)
        start = self.expect_method(CONNECTION_START)
        self.server_properties = start.payload
        client_properties = table({
            "product": "sluice raw_amqp test client",
            # Ask for a connection.close (403) on a failed login instead of a bare disconnect.
            "capabilities": {"authentication_failure_close": True},
        })
        response = b"\x00" + user.encode() + b"\x00" + password.encode()
        self.send_method(0, CONNECTION_START_OK, client_properties + shortstr("PLAIN")
                         + longstr(response) + shortstr("en_US"))

    def tune(self, heartbeat_s=0, frame_max=131072, channel_max=0):
        """Answer connection.tune, taking the smaller limits (0 on either side: the other's)."""
        tune = self.expect_method(CONNECTION_TUNE)
        server_channel_max, server_frame_max, _heartbeat = struct.unpack(">HIH",
                                                                         tune.payload[4:12])
        self.frame_max = min(v for v in (frame_max, server_frame_max, 1 << 32) if v)
        self.channel_max = min(v for v in (channel_max, server_channel_max, 65535) if v)
        self.heartbeat_s = heartbeat_s
        self.send_method(0, CONNECTION_TUNE_OK,
                         struct.pack(">HIH", self.channel_max, self.frame_max, heartbeat_s))

    def open(self, vhost="/"):
        self.send_method(0, CONNECTION_OPEN, shortstr(vhost) + shortstr("") + b"\x00")

    def handshake(self, user="guest", password="guest", vhost="/", heartbeat_s=0,
                  frame_max=131072, channel_max=0):
        """The whole connection handshake; returns once open-ok has arrived."""
        self.login(user, password)
        self.tune(heartbeat_s, frame_max, channel_max)
        self.open(vhost)
        self.expect_method(CONNECTION_OPEN_OK)
        return self

    def open_channel(self, channel: int):
        self.send_method(channel, CHANNEL_OPEN, shortstr(""))
        self.expect_method(CHANNEL_OPEN_OK, channel)

    def expect_connection_close(self) -> tuple[int, str, int, int]:
        """Wait for connection.close, answer close-ok, return its reason."""
        while True:
            received = self.read_frame()
            if received.method == CONNECTION_CLOSE:
                reason = received.close_reason()
                try:
                    self.send_method(0, CONNECTION_CLOSE_OK)
                except OSError:
                    pass  # the broker may already have dropped the socket
                return reason

    def expect_channel_close(self, channel: int) -> tuple[int, str, int, int]:
        """Wait for channel.close on `channel`, answer close-ok, return its reason."""
        while True:
            received = self.read_frame()
            if received.method == CONNECTION_CLOSE:
                raise AssertionError(f"expected a channel close, got connection close "
                                     f"{received.close_reason()}")
            if received.method == CHANNEL_CLOSE and received.channel == channel:
                self.send_method(channel, CHANNEL_CLOSE_OK)
                return received.close_reason()

    def frames_for(self, duration_s: float) -> list[Frame]:
        """Every frame that arrives within `duration_s` (stops early if the socket closes)."""
        frames = []
        deadline = time.monotonic() + duration_s
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                frames.append(self.read_frame())
            except (socket.timeout, ConnectionEnded):
                break
        return frames
