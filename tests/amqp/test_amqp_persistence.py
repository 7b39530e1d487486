"""What survives a broker restart: durable exchanges, queues and bindings and persistent
messages do; transient queues, exchanges and messages do not. Sluice also after kill -9."""

import pika
import pytest

from .amqp_expect import (NOT_FOUND, PERSISTENT, channel_closed, confirmed_channel, get_all,
                          publish_bodies, queue_depth)

TRANSIENT = pika.BasicProperties(delivery_mode=1)


def declare_durable_topology(amqp, channel):
    exchange = amqp.name("dx")
    queue = amqp.name("dq")
    channel.exchange_declare(exchange, "direct", durable=True)
    channel.queue_declare(queue, durable=True)
    channel.queue_bind(queue, exchange, "key")
    return exchange, queue


def test_durable_topology_and_persistent_messages_survive_restart(amqp):
    connection = amqp.connect()
    channel = confirmed_channel(connection)
    exchange, queue = declare_durable_topology(amqp, channel)
    properties = pika.BasicProperties(delivery_mode=2, message_id="id-1",
                                      headers={"kept": True}, content_type="text/plain")
    publish_bodies(channel, exchange, "key", [b"p1", b"p2", b"p3", b"p4"], properties)
    holder = connection.channel()
    acked, _props, _body = holder.basic_get(queue)
    holder.basic_ack(acked.delivery_tag)  # p1 is gone for good
    holder.basic_get(queue)  # p2 is unacked when the broker stops

    amqp.restart()

    channel = confirmed_channel(amqp.connect())
    channel.exchange_declare(exchange, passive=True)
    assert queue_depth(channel, queue) == 3
    messages = get_all(channel, queue)
    # The message unacked at shutdown comes back first, marked as redelivered.
    assert [(m.redelivered, body) for m, _p, body in messages] == [
        (True, b"p2"), (False, b"p3"), (False, b"p4")]
    received = messages[1][1]
    assert (received.delivery_mode, received.message_id, received.headers,
            received.content_type) == (2, "id-1", {"kept": True}, "text/plain")
    # The binding survived too.
    channel.basic_publish(exchange, "key", b"after restart", PERSISTENT)
    assert [body for _m, _p, body in get_all(channel, queue)] == [b"after restart"]


def test_transient_queues_exchanges_and_messages_are_gone_after_restart(amqp):
    channel = confirmed_channel(amqp.connect())
    _exchange, durable_queue = declare_durable_topology(amqp, channel)
    transient_queue = amqp.name("tq")
    transient_exchange = amqp.name("tx")
    channel.queue_declare(transient_queue, durable=False)
    channel.exchange_declare(transient_exchange, "fanout", durable=False)
    channel.basic_publish("", transient_queue, b"in transient queue", PERSISTENT)
    # In a durable queue a message is kept only if it is persistent itself.
    channel.basic_publish("", durable_queue, b"transient message", TRANSIENT)
    channel.basic_publish("", durable_queue, b"persistent message", PERSISTENT)

    amqp.restart()

    connection = amqp.connect()
    with channel_closed(NOT_FOUND):
        connection.channel().queue_declare(transient_queue, passive=True)
    with channel_closed(NOT_FOUND):
        connection.channel().exchange_declare(transient_exchange, passive=True)
    channel = connection.channel()
    assert [body for _m, _p, body in get_all(channel, durable_queue)] == [b"persistent message"]


@pytest.mark.only("sluice")
def test_confirmed_persistent_messages_survive_kill_9(amqp):
    # A Sluice durability test: the shared RabbitMQ node is only restarted cleanly.
    connection = amqp.connect()
    channel = confirmed_channel(connection)
    exchange, queue = declare_durable_topology(amqp, channel)
    bodies = [f"m{i}".encode() for i in range(200)]
    # Each publish returns only after its basic.ack: every one of them must survive.
    publish_bodies(channel, exchange, "key", bodies, PERSISTENT)
    holder = connection.channel()
    acked, _props, _body = holder.basic_get(queue)
    holder.basic_ack(acked.delivery_tag)
    holder.basic_get(queue)  # m1 unacked at the kill
    holder.basic_qos(prefetch_count=0)  # a round trip, so the ack has been handled

    amqp.kill9_and_start()

    channel = confirmed_channel(amqp.connect())
    received = [body for _m, _p, body in get_all(channel, queue)]
    # Acks are not synced the way publishes are: the acked m0 may come back (at least once),
    # but every confirmed message must, in order.
    assert received in (bodies, bodies[1:]), received[:5]
    channel.basic_publish(exchange, "key", b"after kill", PERSISTENT)
    assert [body for _m, _p, body in get_all(channel, queue)] == [b"after kill"]
