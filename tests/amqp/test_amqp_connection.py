"""Connection and channel lifecycle: PLAIN login, vhosts, heartbeats, channels, channel.flow."""

import socket
import time

import pika
import pika.exceptions
import pytest

from . import raw_amqp
from .amqp_expect import (ACCESS_REFUSED, NOT_ALLOWED, NOT_FOUND, NOT_IMPLEMENTED, channel_closed,
                          idle, queue_depth, wait_until)

AUTH_ERRORS = (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError)


def test_login_with_good_credentials_opens_connection_with_advertised_capabilities(amqp):
    connection = amqp.connect()
    assert connection.is_open
    # The capabilities whose semantics this suite relies on (pika reads them too).
    capabilities = connection._impl.server_capabilities
    for name in ("publisher_confirms", "basic.nack", "authentication_failure_close",
                 "per_consumer_qos", "consumer_cancel_notify"):
        assert capabilities.get(name) is True, (name, capabilities)
    connection.channel().queue_declare("", exclusive=True)
    connection.close()
    assert connection.is_closed


def test_wrong_password_is_refused_with_access_refused(amqp):
    with pytest.raises(AUTH_ERRORS) as excinfo:
        amqp.connect(credentials=pika.PlainCredentials("guest", "not-the-password"))
    assert "(403)" in str(excinfo.value) and "ACCESS_REFUSED" in str(excinfo.value)


def test_unknown_user_is_refused_with_access_refused(amqp):
    with pytest.raises(AUTH_ERRORS) as excinfo:
        amqp.connect(credentials=pika.PlainCredentials("nobody", "guest"))
    assert "(403)" in str(excinfo.value)


def test_failed_login_gets_connection_close_403_on_the_wire(amqp):
    # A client that announces the authentication_failure_close capability gets a
    # connection.close with 403 instead of a bare disconnect.
    with raw_amqp.RawConnection(amqp.host, amqp.port) as raw:
        raw.login("guest", "wrong")
        code, text, _class_id, _method_id = raw.expect_connection_close()
    assert code == ACCESS_REFUSED
    assert text.startswith("ACCESS_REFUSED - Login was refused using authentication mechanism "
                           "PLAIN"), text


def test_second_user_logs_in_and_is_told_apart_from_guest(amqp):
    amqp.add_user("alice", "secret")
    connection = amqp.connect(credentials=pika.PlainCredentials("alice", "secret"))
    channel = connection.channel()
    queue = amqp.name("alice")
    channel.queue_declare(queue, auto_delete=True)
    # user_id is checked against the authenticated user, so alice may claim "alice" only.
    channel.basic_publish("", queue, b"hi", pika.BasicProperties(user_id="alice"))
    _method, properties, _body = channel.basic_get(queue, auto_ack=True)
    assert properties.user_id == "alice"
    with pytest.raises(AUTH_ERRORS):
        amqp.connect(credentials=pika.PlainCredentials("alice", "guest"))


def test_vhost_slash_is_the_default_and_can_be_named(amqp):
    connection = amqp.connect(virtual_host="/")
    assert connection.channel().is_open


def test_unknown_vhost_is_refused_with_not_allowed(amqp):
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as excinfo:
        amqp.connect(virtual_host="no-such-vhost")
    assert "(530)" in str(excinfo.value)
    with raw_amqp.RawConnection(amqp.host, amqp.port) as raw:
        raw.login()
        raw.tune()
        raw.open("no-such-vhost")
        code, text, class_id, method_id = raw.expect_connection_close()
    assert code == NOT_ALLOWED
    assert text == "NOT_ALLOWED - vhost no-such-vhost not found"
    assert (class_id, method_id) == raw_amqp.CONNECTION_OPEN


def test_heartbeat_is_negotiated_and_keeps_an_idle_connection_alive(amqp):
    proposed = []

    def take_one_second(_connection, server_heartbeat_s):
        proposed.append(server_heartbeat_s)
        return 1

    connection = amqp.connect(heartbeat=take_one_second)
    assert proposed == [60]  # RabbitMQ's default proposal
    # More than two heartbeat intervals with no traffic but heartbeats: still open.
    idle(connection, 2.5)
    assert connection.is_open
    channel = connection.channel()
    channel.queue_declare("", exclusive=True)


def test_broker_sends_heartbeats_and_drops_a_silent_client(amqp):
    with raw_amqp.RawConnection(amqp.host, amqp.port) as raw:
        raw.handshake(heartbeat_s=1)
        started = time.monotonic()
        heartbeats = []
        ended_after_s = None
        raw.sock.settimeout(0.2)
        while time.monotonic() - started < 6:
            try:
                frame = raw.read_frame()
            except socket.timeout:
                continue
            except raw_amqp.ConnectionEnded:
                ended_after_s = time.monotonic() - started
                break
            assert frame.type == raw_amqp.FRAME_HEARTBEAT, frame
            assert frame.channel == 0
            heartbeats.append(time.monotonic() - started)
    # The broker heartbeats at least once a second and, hearing nothing back, gives up on the
    # client after about two intervals (RabbitMQ: ~3 s for a 1 s heartbeat, no close method).
    assert len(heartbeats) >= 2, heartbeats
    assert heartbeats[0] < 1.5, heartbeats
    assert ended_after_s is not None and 1.5 < ended_after_s < 5, ended_after_s


def test_many_channels_open_and_close_independently(amqp):
    connection = amqp.connect()
    channels = [connection.channel() for _ in range(64)]
    assert len({c.channel_number for c in channels}) == 64
    for channel in channels[::2]:
        channel.close()
    queue = amqp.name("chan")
    channels[1].queue_declare(queue, auto_delete=True)
    for channel in channels[1::2]:
        channel.basic_publish("", queue, f"{channel.channel_number}".encode())
    # Publishes on different channels are not ordered with each other: wait for all.
    wait_until(connection, lambda: queue_depth(channels[-1], queue) == 32)
    # Channel numbers are reused after close.
    reopened = connection.channel(channel_number=channels[0].channel_number)
    assert reopened.is_open
    channels[1].queue_delete(queue)


def test_channel_error_closes_only_that_channel(amqp):
    connection = amqp.connect()
    survivor = connection.channel()
    failing = connection.channel()
    with channel_closed(NOT_FOUND):
        failing.queue_declare(amqp.name("missing"), passive=True)
    assert failing.is_closed and survivor.is_open and connection.is_open
    survivor.queue_declare("", exclusive=True)


def test_client_closes_channel_and_connection_cleanly(amqp):
    connection = amqp.connect()
    channel = connection.channel()
    channel.close()
    assert channel.is_closed
    with pytest.raises(pika.exceptions.ChannelWrongStateError):
        channel.queue_declare("", exclusive=True)
    connection.close()
    assert connection.is_closed


def test_channel_flow_active_true_is_confirmed(amqp):
    with raw_amqp.RawConnection(amqp.host, amqp.port) as raw:
        raw.handshake()
        raw.open_channel(1)
        raw.send_method(1, raw_amqp.CHANNEL_FLOW, b"\x01")
        flow_ok = raw.expect_method(raw_amqp.CHANNEL_FLOW_OK, 1)
        assert flow_ok.payload[4:] == b"\x01"


def test_channel_flow_active_false_is_not_implemented(amqp):
    # RabbitMQ does not let a client stop deliveries with channel.flow (basic.qos is the way):
    # it closes the connection with 540.
    with raw_amqp.RawConnection(amqp.host, amqp.port) as raw:
        raw.handshake()
        raw.open_channel(1)
        raw.send_method(1, raw_amqp.CHANNEL_FLOW, b"\x00")
        code, text, class_id, method_id = raw.expect_connection_close()
    assert (code, text) == (NOT_IMPLEMENTED, "NOT_IMPLEMENTED - active=false")
    assert (class_id, method_id) == raw_amqp.CHANNEL_FLOW


def test_opening_more_channels_than_negotiated_channel_max_is_refused(amqp):
    # RabbitMQ counts open channels against channel_max (it does not refuse a high channel
    # number as such); channels 1..max and then max+1 is refused under either reading.
    with raw_amqp.RawConnection(amqp.host, amqp.port) as raw:
        raw.handshake(channel_max=2)
        raw.open_channel(1)
        raw.open_channel(2)
        raw.send_method(3, raw_amqp.CHANNEL_OPEN, raw_amqp.shortstr(""))
        code, text, _class_id, _method_id = raw.expect_connection_close()
    assert code == NOT_ALLOWED, text
    assert "channel_max" in text, text


@pytest.mark.only("rabbitmq")
def test_connection_blocked_is_sent_while_the_broker_is_out_of_memory(amqp):
    # RabbitMQ's trigger (a memory alarm through rabbitmqctl); Sluice's is
    # --memory-high-watermark-bytes, tested below.
    blocked, unblocked = [], []
    connection = amqp.connect()
    connection.add_on_connection_blocked_callback(lambda _c, frame: blocked.append(frame))
    connection.add_on_connection_unblocked_callback(lambda _c, frame: unblocked.append(frame))
    channel = connection.channel()
    queue = amqp.name("blocked")
    channel.queue_declare(queue, auto_delete=True)
    amqp.node.ctl("set_vm_memory_high_watermark", "0.000001")
    try:
        # RabbitMQ blocks a connection when it next publishes during the alarm.
        channel.basic_publish("", queue, b"x")
        wait_until(connection, lambda: blocked, 3, "connection.blocked")
    finally:
        amqp.node.ctl("set_vm_memory_high_watermark", "0.4")
    wait_until(connection, lambda: unblocked, 3, "connection.unblocked")
    assert blocked[0].method.reason == "low on memory"


@pytest.mark.only("sluice")
def test_connection_blocked_when_queued_messages_pass_the_memory_watermark(amqp):
    # The same client-visible behaviour as the RabbitMQ test above, with Sluice's own trigger:
    # --memory-high-watermark-bytes (RabbitMQ's is a VM-wide memory alarm set by rabbitmqctl).
    amqp.broker.extra_args += ["--memory-high-watermark-bytes", "100000"]
    amqp.restart()
    blocked, unblocked = [], []
    connection = amqp.connect()
    connection.add_on_connection_blocked_callback(lambda _c, frame: blocked.append(frame))
    connection.add_on_connection_unblocked_callback(lambda _c, frame: unblocked.append(frame))
    channel = connection.channel()
    queue = amqp.name("blocked")
    channel.queue_declare(queue)
    channel.basic_publish("", queue, b"x" * 150_000)
    wait_until(connection, lambda: blocked, 3, "connection.blocked")
    assert blocked[0].method.reason == "low on memory"
    # Another connection drains the queue; the alarm clears and the publisher is told.
    other = amqp.connect()
    assert other.channel().queue_purge(queue).method.message_count == 1
    wait_until(connection, lambda: unblocked, 3, "connection.unblocked")
    channel.basic_publish("", queue, b"after")
    other.close()
    connection.close()


@pytest.mark.only("sluice")
def test_connection_blocked_when_the_data_disk_is_low(amqp):
    # Sluice's disk alarm: a free-space limit above what any disk has blocks publishers
    # (RabbitMQ's alarms are covered by the memory test above).
    amqp.broker.extra_args += ["--disk-free-limit-bytes", str(2 ** 62)]
    amqp.restart()
    blocked = []
    connection = amqp.connect()
    connection.add_on_connection_blocked_callback(lambda _c, frame: blocked.append(frame))
    channel = connection.channel()
    queue = amqp.name("disk")
    channel.queue_declare(queue, auto_delete=True)
    channel.basic_publish("", queue, b"x")
    wait_until(connection, lambda: blocked, 3, "connection.blocked")
    assert blocked[0].method.reason == "low on disk"
