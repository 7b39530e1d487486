"""Clients that misbehave on purpose or by accident: field tables nested thousands deep, a close
sent while publishes are still on the wire, a socket that connects and never says anything.
The broker answers each cleanly and keeps serving everyone else.

Nesting: amq-protocol's parser is recursive, so Sluice refuses tables nested deeper than 32
levels with 501 FRAME_ERROR before parsing them. RabbitMQ (Erlang) has no such limit and may
accept what Sluice refuses; both must survive it.
"""

import struct
import threading
import time

import pytest

from . import raw_amqp
from .raw_amqp import (BASIC_PUBLISH, CONNECTION_CLOSE, CONNECTION_CLOSE_OK, CONNECTION_START,
                       CONNECTION_START_OK, CONNECTION_TUNE, FRAME_HEADER, FRAME_HEARTBEAT,
                       QUEUE_DECLARE, basic_publish_args, frame, longstr, method_frame, shortstr,
                       table)
from .amqp_expect import FRAME_ERROR, get_bodies, queue_depth
from .test_amqp_errors import STORED_BODIES, raw_connection, stored  # noqa: F401 (fixture)

# Deep enough to overflow a recursive parser's stack many times over (7 bytes a level).
DEPTH_HOSTILE = 15_000
# Frames still arriving after a close are written for about this long (40 chunks, 50 ms apart):
# longer than a broker that stops reading after 1 s would take them, well under the 5 s linger.
IN_FLIGHT_CHUNKS = 40
IN_FLIGHT_PAUSE_S = 0.05


def write_paced(raw, first: bytes, chunk: bytes, errors: list):
    """Writes `first` at once, then `chunk` IN_FLIGHT_CHUNKS times, paced: frames a client
    still has in flight. Write errors (EPIPE, a reset) are collected."""
    try:
        raw.send(first)
        for _ in range(IN_FLIGHT_CHUNKS):
            time.sleep(IN_FLIGHT_PAUSE_S)
            raw.send(chunk)
    except OSError as exc:
        errors.append(exc)


def nested_table(depth: int) -> bytes:
    """A field table `depth` levels deep: {"t": {"t": ... {"leaf": true}}}. Built from the
    lengths, as concatenating level by level would copy the whole table at every level."""
    leaf = table({"leaf": True})
    # Each level: its length, then the entry "t" of type F holding the next level.
    sizes = [len(leaf)]
    for _ in range(depth - 1):
        sizes.append(4 + 2 + 1 + sizes[-1])
    parts = [struct.pack(">I", size - 4) + shortstr("t") + b"F" for size in reversed(sizes[1:])]
    return b"".join(parts) + leaf


def test_nested_table_builder_is_well_formed():
    assert nested_table(1) == table({"leaf": True})
    assert nested_table(3) == table({"t": {"t": {"leaf": True}}})


def answer_is_clean(raw: raw_amqp.RawConnection, expected_if_accepted):
    """What a broker may answer a deeply nested table with: a connection.close (Sluice: 501),
    or, where it parses it (RabbitMQ), the next step of the protocol; "dropped" if the socket
    just closed (RabbitMQ does that to a start-ok frame above its pre-tune frame limit)."""
    while True:
        try:
            received = raw.read_frame()
        except raw_amqp.ConnectionEnded:
            return "dropped"
        if received.type == FRAME_HEARTBEAT:
            continue
        if received.method == CONNECTION_CLOSE:
            code = received.close_reason()[0]
            try:
                raw.send_method(0, CONNECTION_CLOSE_OK)
            except OSError:
                pass
            return code
        assert received.method == expected_if_accepted, received
        return None


@pytest.mark.parametrize("where", ["start-ok", "queue.declare", "content-header"])
def test_deeply_nested_field_table_gets_a_clean_close(amqp, stored, where):  # noqa: F811
    deep = nested_table(DEPTH_HOSTILE)
    if where == "start-ok":
        with raw_amqp.RawConnection(amqp.host, amqp.port) as raw:
            raw.send(raw_amqp.PROTOCOL_HEADER)
            raw.expect_method(CONNECTION_START)
            raw.send_method(0, CONNECTION_START_OK, deep + shortstr("PLAIN")
                            + longstr(b"\x00guest\x00guest") + shortstr("en_US"))
            code = answer_is_clean(raw, CONNECTION_TUNE)
    else:
        with raw_connection(amqp) as raw:
            raw.open_channel(1)
            if where == "queue.declare":
                raw.send_method(1, QUEUE_DECLARE, struct.pack(">H", 0)
                                + shortstr(amqp.name("deep")) + b"\x00" + deep)
                code = answer_is_clean(raw, raw_amqp.QUEUE_DECLARE_OK)
            else:
                # Property flags: only headers (bit 13); then a body frame.
                header = struct.pack(">HHQH", 60, 0, 1, 1 << 13) + deep
                raw.send(method_frame(1, BASIC_PUBLISH, basic_publish_args("", stored.name))
                         + frame(FRAME_HEADER, 1, header) + frame(raw_amqp.FRAME_BODY, 1, b"x"))
                raw.send_method(1, QUEUE_DECLARE, struct.pack(">H", 0)
                                + shortstr(stored.name) + b"\x01" + table({}))
                code = answer_is_clean(raw, raw_amqp.QUEUE_DECLARE_OK)
    if amqp.kind == "sluice":
        assert code == FRAME_ERROR
    else:
        assert code in (None, FRAME_ERROR, "dropped")
    # Sluice refused the content header, so the publish never happened; RabbitMQ took it.
    published = where == "content-header" and code is None
    stored.assert_broker_intact(len(STORED_BODIES) + (1 if published else 0))


def test_close_sent_while_publishes_are_in_flight_still_gets_close_ok(amqp):
    """A client closes while a burst of its publishes (and frames sent after the close, as a
    pipelining client does) are still on the wire: the broker answers close-ok and reads on
    until the client closes, so the client's writes never fail and it reads its close-ok."""
    queue = amqp.name("burst")
    body = b"x" * 1024
    publish = (method_frame(1, BASIC_PUBLISH, basic_publish_args("", queue))
               + frame(FRAME_HEADER, 1, struct.pack(">HHQH", 60, 0, len(body), 0))
               + frame(raw_amqp.FRAME_BODY, 1, body))
    close = method_frame(0, CONNECTION_CLOSE, struct.pack(">H", 200) + shortstr("bye")
                         + struct.pack(">HH", 0, 0))
    with raw_connection(amqp) as raw:
        raw.open_channel(1)
        raw.send_method(1, QUEUE_DECLARE, struct.pack(">H", 0) + shortstr(queue) + b"\x00"
                        + table({}))
        raw.expect_method(raw_amqp.QUEUE_DECLARE_OK, 1)
        write_error = []
        writer = threading.Thread(target=write_paced,
                                  args=(raw, publish * 500 + close, publish * 100, write_error))
        writer.start()
        raw.sock.settimeout(20)
        try:
            while True:
                received = raw.read_frame()
                if received.method == CONNECTION_CLOSE_OK:
                    break
                assert received.type == FRAME_HEARTBEAT, received
        finally:
            writer.join(timeout=20)
        assert not writer.is_alive(), "the burst could not be written"
        assert write_error == [], f"writing the frames in flight failed: {write_error}"
    # The publishes before the close were taken (up to 500, unconfirmed: count what arrived).
    connection = amqp.connect()
    channel = connection.channel()
    assert queue_depth(channel, queue) <= 500
    channel.queue_delete(queue)
    probe = channel.queue_declare("", exclusive=True).method.queue
    channel.basic_publish("", probe, b"probe")
    assert get_bodies(channel, probe) == [b"probe"]
    connection.close()


def test_broker_close_while_client_publishes_waits_for_close_ok(amqp):
    """The broker closes a connection (an error) while the client is still publishing: it
    discards everything but close-ok, and the client's writes do not fail before it answers."""
    body = b"y" * 1024
    publish = (method_frame(1, BASIC_PUBLISH, basic_publish_args("", "nowhere"))
               + frame(FRAME_HEADER, 1, struct.pack(">HHQH", 60, 0, len(body), 0))
               + frame(raw_amqp.FRAME_BODY, 1, body))
    with raw_connection(amqp) as raw:
        raw.open_channel(1)
        write_error = []
        # A heartbeat on channel 1 is a connection error (505) in the middle of the burst.
        writer = threading.Thread(target=write_paced, args=(
            raw, publish * 200 + frame(FRAME_HEARTBEAT, 1, b""), publish * 100, write_error))
        writer.start()
        raw.sock.settimeout(20)
        try:
            while True:
                received = raw.read_frame()
                if received.method == CONNECTION_CLOSE:
                    break
        finally:
            writer.join(timeout=20)
        assert write_error == [], f"writing the frames in flight failed: {write_error}"
        raw.send_method(0, CONNECTION_CLOSE_OK)
        assert raw.read_until_closed() == b""
