"""AMQP connection limits: the handshake timeout (RabbitMQ's `handshake_timeout`, 10 s by
default; `--amqp-handshake-timeout-ms`) and the connections a listener serves at once
(`--amqp-max-connections`, RabbitMQ's `connection_max`). Sluice-only: RabbitMQ's is a node-wide setting that the
shared differential node keeps at its default.
"""

import time

import pika

from amqp import raw_amqp
from amqp.amqp_expect import get_bodies
from amqp.conftest import wait_for_amqp


def test_connection_that_never_completes_the_handshake_is_closed(broker_factory):
    """A socket that sends
    nothing, or only the protocol header, is closed after --amqp-handshake-timeout-ms, and a
    connection that completed its handshake is not."""
    broker = broker_factory("--amqp-handshake-timeout-ms", "500")
    assert wait_for_amqp("127.0.0.1", broker.amqp_port, 30, alive=broker.running) is None
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1",
                                                                   broker.amqp_port))
    silent = raw_amqp.RawConnection("127.0.0.1", broker.amqp_port, timeout_s=10)
    header_only = raw_amqp.RawConnection("127.0.0.1", broker.amqp_port, timeout_s=10)
    header_only.send(raw_amqp.PROTOCOL_HEADER)
    started = time.monotonic()
    assert silent.read_until_closed() == b""
    header_only.expect_method(raw_amqp.CONNECTION_START)
    assert header_only.read_until_closed() == b""
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"closed after {elapsed:.1f} s"
    silent.close()
    header_only.close()
    # The open connection outlived the timeout and still works.
    channel = connection.channel()
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.basic_publish("", queue, b"still here")
    assert get_bodies(channel, queue) == [b"still here"]
    connection.close()


def test_connections_over_the_listener_limit_are_closed_and_the_rest_served(broker_factory):
    broker = broker_factory("--amqp-max-connections", "2")
    assert wait_for_amqp("127.0.0.1", broker.amqp_port, 30, alive=broker.running) is None
    params = pika.ConnectionParameters("127.0.0.1", broker.amqp_port)
    first = pika.BlockingConnection(params)
    second = pika.BlockingConnection(params)
    over = raw_amqp.RawConnection("127.0.0.1", broker.amqp_port, timeout_s=10)
    over.send(raw_amqp.PROTOCOL_HEADER)
    assert over.read_until_closed() == b"", "a third connection was served"
    over.close()
    # The two within the limit work; once one closes, a new one is served.
    channel = second.channel()
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.basic_publish("", queue, b"within the limit")
    assert get_bodies(channel, queue) == [b"within the limit"]
    first.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            third = pika.BlockingConnection(params)
            break
        except pika.exceptions.AMQPConnectionError:
            assert time.monotonic() < deadline, "no connection served after one closed"
            time.sleep(0.1)
    third.channel().queue_declare("", exclusive=True)
    third.close()
    second.close()


def test_dead_letter_routing_key_longer_than_a_short_string_is_refused(broker):
    """Dead-lettered messages carry x-dead-letter-routing-key as their routing key, a 255-byte
    short string; a longer one would make every dead-lettered delivery a malformed frame."""
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1",
                                                                   broker.amqp_port))
    channel = connection.channel()
    try:
        channel.queue_declare("dlrk-long", arguments={"x-dead-letter-exchange": "dlx",
                                                      "x-dead-letter-routing-key": "r" * 256})
        raise AssertionError("declare with a 256-byte x-dead-letter-routing-key was accepted")
    except pika.exceptions.ChannelClosedByBroker as closed:
        assert closed.reply_code == 406, closed
    channel = connection.channel()
    channel.queue_declare("dlrk-ok", arguments={"x-dead-letter-exchange": "dlx",
                                                "x-dead-letter-routing-key": "r" * 255})
    connection.close()
