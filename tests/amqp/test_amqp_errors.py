"""Protocol errors: bad acks, methods on channels that are not open, malformed and oversized
frames, unknown methods, a bad protocol header. Each test then checks that the broker still
serves new connections and still holds the messages it had stored before.

Reply codes are RabbitMQ's throughout. Reply texts are compared where RabbitMQ's are plain
sentences; for frame-level errors RabbitMQ prints Erlang terms (`{frame_too_large,5013,4088}`),
so only the code and its name are checked there."""

import struct

import pytest

from . import raw_amqp
from .raw_amqp import (BASIC_PUBLISH, CHANNEL_CLOSE, CHANNEL_CLOSE_OK, CHANNEL_OPEN,
                       CONNECTION_OPEN, FRAME_BODY, FRAME_HEARTBEAT, FRAME_METHOD, QUEUE_DECLARE,
                       basic_publish_args, content_header_frame, frame, method_frame,
                       queue_declare_args, shortstr)
from .amqp_expect import (CHANNEL_ERROR, COMMAND_INVALID, FRAME_ERROR, NOT_IMPLEMENTED, PERSISTENT,
                          PRECONDITION_FAILED, UNEXPECTED_FRAME, channel_closed, confirmed_channel,
                          get_bodies, publish_bodies, queue_depth, roundtrip)

STORED_BODIES = [b"stored-1", b"stored-2", b"stored-3"]


class StoredQueue:
    """A durable queue holding confirmed persistent messages, declared before the error."""

    def __init__(self, amqp):
        self.amqp = amqp
        self.name = amqp.name("stored")
        channel = confirmed_channel(amqp.connect())
        channel.queue_declare(self.name, durable=True)
        publish_bodies(channel, "", self.name, STORED_BODIES, PERSISTENT)
        channel.connection.close()

    def assert_broker_intact(self, count=len(STORED_BODIES)):
        """A new connection works and the stored messages (`count` of them, if the test took
        some) are still there."""
        connection = self.amqp.connect()
        channel = connection.channel()
        assert queue_depth(channel, self.name) == count
        probe = channel.queue_declare("", exclusive=True).method.queue
        channel.basic_publish("", probe, b"probe")
        assert get_bodies(channel, probe) == [b"probe"]
        connection.close()


@pytest.fixture
def stored(amqp):
    return StoredQueue(amqp)


def raw_connection(amqp, **handshake) -> raw_amqp.RawConnection:
    return raw_amqp.RawConnection(amqp.host, amqp.port).handshake(**handshake)


def channel_close_args(code=200, text="bye"):
    return struct.pack(">H", code) + shortstr(text) + struct.pack(">HH", 0, 0)


# -- acknowledgements ------------------------------------------------------------------------

@pytest.mark.parametrize("settle", ["ack", "nack", "reject"])
def test_settling_an_unknown_delivery_tag_closes_channel_precondition_failed(amqp, stored,
                                                                             settle):
    connection = amqp.connect()
    channel = connection.channel()
    {"ack": lambda: channel.basic_ack(42),
     "nack": lambda: channel.basic_nack(42),
     "reject": lambda: channel.basic_reject(42)}[settle]()
    with channel_closed(PRECONDITION_FAILED, "PRECONDITION_FAILED - unknown delivery tag 42"):
        roundtrip(channel)
    assert connection.is_open
    stored.assert_broker_intact()


def test_acking_a_delivery_twice_closes_channel_precondition_failed(amqp, stored):
    channel = amqp.connect().channel()
    method, _props, _body = channel.basic_get(stored.name)
    channel.basic_ack(method.delivery_tag)
    channel.basic_ack(method.delivery_tag)
    with channel_closed(PRECONDITION_FAILED, "PRECONDITION_FAILED - unknown delivery tag 1"):
        roundtrip(channel)
    # The first ack counted: one stored message is gone.
    stored.assert_broker_intact(count=len(STORED_BODIES) - 1)


def test_delivery_tags_belong_to_their_channel(amqp, stored):
    connection = amqp.connect()
    getter = connection.channel()
    method, _props, _body = getter.basic_get(stored.name)
    other = connection.channel()
    other.basic_ack(method.delivery_tag)
    with channel_closed(PRECONDITION_FAILED, "PRECONDITION_FAILED - unknown delivery tag 1"):
        roundtrip(other)
    getter.close()  # the message was never acked, so it returns
    stored.assert_broker_intact()


def test_ack_multiple_with_tag_zero_acks_everything_outstanding(amqp, stored):
    channel = amqp.connect().channel()
    channel.basic_ack(0, multiple=True)  # nothing outstanding: not an error
    channel.basic_get(stored.name)
    channel.basic_get(stored.name)
    channel.basic_ack(0, multiple=True)
    roundtrip(channel)
    channel.close()
    stored.assert_broker_intact(count=len(STORED_BODIES) - 2)


# -- channels that are not open ----------------------------------------------------------------

def test_method_on_a_channel_never_opened_closes_connection_channel_error(amqp, stored):
    with raw_connection(amqp) as raw:
        raw.send_method(5, QUEUE_DECLARE, queue_declare_args("x", passive=True))
        code, text, class_id, method_id = raw.expect_connection_close()
    assert (code, text) == (CHANNEL_ERROR, "CHANNEL_ERROR - expected 'channel.open'")
    assert (class_id, method_id) == QUEUE_DECLARE
    stored.assert_broker_intact()


def test_method_on_a_closed_channel_closes_connection_channel_error(amqp, stored):
    with raw_connection(amqp) as raw:
        raw.open_channel(1)
        raw.send_method(1, CHANNEL_CLOSE, channel_close_args())
        raw.expect_method(CHANNEL_CLOSE_OK, 1)
        raw.send_method(1, QUEUE_DECLARE, queue_declare_args("x", passive=True))
        code, text, class_id, method_id = raw.expect_connection_close()
    assert (code, text) == (CHANNEL_ERROR, "CHANNEL_ERROR - expected 'channel.open'")
    assert (class_id, method_id) == QUEUE_DECLARE
    stored.assert_broker_intact()


def test_channel_closed_by_broker_ignores_methods_until_close_ok(amqp, stored):
    # After the broker sends channel.close, it discards what the client sent before its
    # close-ok (the client may not have seen the close yet); then the channel can reopen.
    with raw_connection(amqp) as raw:
        raw.open_channel(1)
        missing = amqp.name("missing")
        raw.send_method(1, QUEUE_DECLARE, queue_declare_args(missing, passive=True))
        raw.send_method(1, QUEUE_DECLARE, queue_declare_args(missing, passive=True))
        raw.send_method(1, BASIC_PUBLISH, basic_publish_args("", missing))
        raw.send(content_header_frame(1, 60, 0))
        closed = raw.read_frame()
        assert closed.method == CHANNEL_CLOSE and closed.close_reason()[0] == 404
        raw.send_method(1, CHANNEL_CLOSE_OK)
        raw.open_channel(1)
        raw.send_method(1, QUEUE_DECLARE, queue_declare_args(stored.name, passive=True))
        raw.expect_method(raw_amqp.QUEUE_DECLARE_OK, 1)
    stored.assert_broker_intact()


def test_opening_an_open_channel_again_closes_connection_channel_error(amqp, stored):
    with raw_connection(amqp) as raw:
        raw.open_channel(1)
        raw.send_method(1, CHANNEL_OPEN, shortstr(""))
        code, text, class_id, method_id = raw.expect_connection_close()
    assert (code, text) == (CHANNEL_ERROR, "CHANNEL_ERROR - second 'channel.open' seen")
    assert (class_id, method_id) == CHANNEL_OPEN
    stored.assert_broker_intact()


def test_channel_method_on_channel_zero_closes_connection_channel_error(amqp, stored):
    with raw_connection(amqp) as raw:
        raw.send_method(0, QUEUE_DECLARE, queue_declare_args("x", passive=True))
        code, text, _class_id, _method_id = raw.expect_connection_close()
    assert code == CHANNEL_ERROR, text
    stored.assert_broker_intact()


def test_connection_method_on_a_channel_closes_connection_command_invalid(amqp, stored):
    with raw_connection(amqp) as raw:
        raw.open_channel(1)
        raw.send_method(1, CONNECTION_OPEN, shortstr("/") + shortstr("") + b"\x00")
        code, text, class_id, method_id = raw.expect_connection_close()
    assert code == COMMAND_INVALID, text  # RabbitMQ: "COMMAND_INVALID - unimplemented method"
    assert (class_id, method_id) == CONNECTION_OPEN
    stored.assert_broker_intact()


# -- malformed frames ------------------------------------------------------------------------

def test_bad_frame_end_octet_closes_connection_frame_error(amqp, stored):
    with raw_connection(amqp) as raw:
        raw.open_channel(1)
        raw.send(method_frame(1, QUEUE_DECLARE, queue_declare_args("x", passive=True),
                              end=0x00))
        code, text, _class_id, _method_id = raw.expect_connection_close()
    assert code == FRAME_ERROR and text.startswith("FRAME_ERROR - "), text
    stored.assert_broker_intact()


@pytest.mark.parametrize("frame_kind", ["method", "body"])
def test_frame_larger_than_frame_max_closes_connection_frame_error(amqp, stored, frame_kind):
    with raw_connection(amqp, frame_max=4096) as raw:
        raw.open_channel(1)
        if frame_kind == "method":
            # A method frame padded past frame_max (the payload limit is frame_max - 8).
            raw.send(method_frame(1, QUEUE_DECLARE, queue_declare_args("x") + b"\x00" * 5000))
        else:
            raw.send_method(1, BASIC_PUBLISH, basic_publish_args("", stored.name))
            raw.send(content_header_frame(1, 60, 5000))
            raw.send(frame(FRAME_BODY, 1, b"x" * 5000))
        code, text, _class_id, _method_id = raw.expect_connection_close()
    # RabbitMQ: "FRAME_ERROR - type 1, all octets = <<>>: {frame_too_large,5013,4088}"
    assert code == FRAME_ERROR and text.startswith("FRAME_ERROR - "), text
    stored.assert_broker_intact()


def test_unknown_frame_type_closes_connection_frame_error(amqp, stored):
    with raw_connection(amqp) as raw:
        raw.open_channel(1)
        raw.send(frame(9, 1, b"abc"))
        code, text, _class_id, _method_id = raw.expect_connection_close()
    assert code == FRAME_ERROR and text.startswith("FRAME_ERROR - "), text
    stored.assert_broker_intact()


def test_truncated_method_arguments_close_connection_frame_error(amqp, stored):
    with raw_connection(amqp) as raw:
        raw.open_channel(1)
        raw.send(frame(FRAME_METHOD, 1, struct.pack(">HH", *QUEUE_DECLARE) + b"\x00"))
        code, text, class_id, method_id = raw.expect_connection_close()
    # RabbitMQ: 501 "FRAME_ERROR - cannot decode <<0>>", not 502 SYNTAX_ERROR.
    assert code == FRAME_ERROR and text.startswith("FRAME_ERROR - "), text
    assert (class_id, method_id) == QUEUE_DECLARE
    stored.assert_broker_intact()


@pytest.mark.parametrize("case", ["header-without-method", "body-without-header",
                                  "method-instead-of-header", "method-instead-of-body",
                                  "header-of-other-class", "heartbeat-on-channel"])
def test_frame_out_of_sequence_closes_connection_unexpected_frame(amqp, stored, case):
    with raw_connection(amqp) as raw:
        raw.open_channel(1)
        publish = method_frame(1, BASIC_PUBLISH, basic_publish_args("", stored.name))
        declare = method_frame(1, QUEUE_DECLARE, queue_declare_args("", False))
        raw.send({
            "header-without-method": content_header_frame(1, 60, 10),
            "body-without-header": frame(FRAME_BODY, 1, b"abc"),
            "method-instead-of-header": publish + declare,
            "method-instead-of-body": publish + content_header_frame(1, 60, 3) + declare,
            "header-of-other-class": publish + content_header_frame(1, 50, 3),
            "heartbeat-on-channel": frame(FRAME_HEARTBEAT, 1, b""),
        }[case])
        code, text, _class_id, _method_id = raw.expect_connection_close()
    assert code == UNEXPECTED_FRAME, text
    stored.assert_broker_intact()


def test_method_before_connection_open_is_an_unexpected_frame(amqp, stored):
    with raw_amqp.RawConnection(amqp.host, amqp.port) as raw:
        raw.login()
        raw.tune()
        raw.send_method(1, CHANNEL_OPEN, shortstr(""))
        code, text, _class_id, _method_id = raw.expect_connection_close()
    assert code == UNEXPECTED_FRAME, text
    stored.assert_broker_intact()


@pytest.mark.parametrize("method", [(50, 99), (99, 10)], ids=["unknown-method", "unknown-class"])
def test_unknown_method_ends_the_connection(amqp, stored, method):
    # The spec would have connection.close with 540 NOT_IMPLEMENTED or 503 COMMAND_INVALID;
    # RabbitMQ 3.10's frame decoder crashes the connection instead and the socket just closes.
    # Either ends the connection; no other reply is acceptable.
    with raw_connection(amqp) as raw:
        raw.open_channel(1)
        raw.send_method(1, method)
        try:
            received = raw.read_frame()
        except raw_amqp.ConnectionEnded:
            received = None
        if received is not None:
            assert received.method == raw_amqp.CONNECTION_CLOSE, received
            assert received.close_reason()[0] in (NOT_IMPLEMENTED, COMMAND_INVALID)
    stored.assert_broker_intact()


@pytest.mark.parametrize("header", [b"AMQP\x00\x00\x09\x00", b"AMQP\x00\x00\x08\x00",
                                    b"AMQP\x00\x01\x00\x00", b"HTTP/1.1",
                                    b"\x16\x03\x01\x02\x00\x01\x00\x01"],
                         ids=["amqp-0-9-0", "amqp-0-8", "amqp-1-0", "http", "tls-hello"])
def test_bad_protocol_header_gets_the_supported_header_and_a_close(amqp, stored, header):
    with raw_amqp.RawConnection(amqp.host, amqp.port) as raw:
        raw.send(header)
        assert raw.read_until_closed() == raw_amqp.PROTOCOL_HEADER
    stored.assert_broker_intact()


def test_client_vanishing_mid_frame_is_survived(amqp, stored):
    with raw_connection(amqp) as raw:
        raw.open_channel(1)
        raw.send_method(1, BASIC_PUBLISH, basic_publish_args("", stored.name))
        raw.send(content_header_frame(1, 60, 100))
        raw.send(frame(FRAME_BODY, 1, b"x" * 100)[:50])  # half a body frame, then gone
    stored.assert_broker_intact()


def test_pika_connection_survives_after_a_neighbour_misbehaves(amqp, stored):
    connection = amqp.connect()
    channel = connection.channel()
    with raw_connection(amqp) as raw:
        raw.send(frame(9, 0, b""))
        assert raw.expect_connection_close()[0] == FRAME_ERROR
    assert queue_depth(channel, stored.name) == len(STORED_BODIES)
    stored.assert_broker_intact()
