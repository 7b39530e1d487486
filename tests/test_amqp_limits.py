"""AMQP connection limits: the handshake timeout (RabbitMQ's `handshake_timeout`, 10 s by
default; `--amqp-handshake-timeout-ms`). Sluice-only: RabbitMQ's is a node-wide setting that the
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
