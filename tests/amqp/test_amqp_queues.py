"""Queues: declare flags, server-named queues, passive declare, counts, purge, delete rules,
exclusivity, auto-delete, and inequivalent redeclaration."""

import pika
import pytest

from .amqp_expect import (ACCESS_REFUSED, NOT_FOUND, PRECONDITION_FAILED, RESOURCE_LOCKED,
                          Consumer, channel_closed, confirmed_channel, consumer_count, get_bodies,
                          publish_bodies, queue_depth, wait_until)


def queue_exists(connection, queue: str) -> bool:
    channel = connection.channel()
    try:
        channel.queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == NOT_FOUND, exc
        return False
    channel.close()
    return True


def wait_until_gone(connection, queue: str, timeout_s=5.0):
    # Deletion on connection close or last cancel is asynchronous in RabbitMQ.
    wait_until(connection, lambda: not queue_exists(connection, queue), timeout_s,
               f"queue {queue} to be deleted")


@pytest.mark.parametrize("flags", [
    {"durable": True}, {"durable": False}, {"exclusive": True}, {"auto_delete": True},
    {"durable": True, "auto_delete": True},
], ids=["durable", "transient", "exclusive", "auto-delete", "durable-auto-delete"])
def test_queue_declare_ok_names_the_queue_and_counts_zero(amqp, flags):
    channel = amqp.connect().channel()
    queue = amqp.name("q")
    ok = channel.queue_declare(queue, **flags).method
    assert (ok.queue, ok.message_count, ok.consumer_count) == (queue, 0, 0)
    # Redeclaring with the same flags is fine and idempotent.
    assert channel.queue_declare(queue, **flags).method.queue == queue


def test_server_named_queue_gets_an_amq_gen_name(amqp):
    channel = amqp.connect().channel()
    first = channel.queue_declare("", exclusive=True).method.queue
    second = channel.queue_declare("", exclusive=True).method.queue
    assert first.startswith("amq.gen-") and second.startswith("amq.gen-")
    assert first != second
    channel.basic_publish("", first, b"to a generated name")
    assert get_bodies(channel, first) == [b"to a generated name"]


def test_declaring_an_amq_prefixed_queue_is_refused(amqp):
    with channel_closed(ACCESS_REFUSED,
                        "ACCESS_REFUSED - queue name 'amq.mine' contains reserved prefix 'amq.*'"):
        amqp.connect().channel().queue_declare("amq.mine")


def test_declare_ok_and_passive_declare_report_ready_messages_and_consumers(amqp):
    connection = amqp.connect()
    channel = confirmed_channel(connection)
    queue = amqp.name("q")
    channel.queue_declare(queue)
    publish_bodies(channel, "", queue, [b"1", b"2", b"3", b"4"])
    ok = channel.queue_declare(queue).method
    assert (ok.message_count, ok.consumer_count) == (4, 0)
    consuming = connection.channel()
    consuming.basic_qos(prefetch_count=1)
    consumer = Consumer(consuming, queue)
    consumer.wait_for(1)
    ok = channel.queue_declare(queue, passive=True).method
    # message_count counts ready messages only: the one delivered and unacked is not in it.
    assert (ok.message_count, ok.consumer_count) == (3, 1)


def test_passive_declare_of_missing_queue_closes_channel_not_found(amqp):
    connection = amqp.connect()
    queue = amqp.name("missing")
    with channel_closed(NOT_FOUND, f"NOT_FOUND - no queue '{queue}' in vhost '/'"):
        connection.channel().queue_declare(queue, passive=True)
    assert connection.is_open


def test_purge_removes_ready_messages_and_returns_their_count(amqp):
    connection = amqp.connect()
    channel = confirmed_channel(connection)
    queue = amqp.name("q")
    channel.queue_declare(queue)
    publish_bodies(channel, "", queue, [b"1", b"2", b"3", b"4"])
    holder = connection.channel()
    method, _props, body = holder.basic_get(queue)  # one unacked: purge leaves it alone
    assert body == b"1"
    assert channel.queue_purge(queue).method.message_count == 3
    assert channel.queue_purge(queue).method.message_count == 0
    holder.close()  # the unacked message goes back
    wait_until(connection, lambda: queue_depth(channel, queue) == 1)
    assert get_bodies(channel, queue) == [b"1"]


def test_delete_returns_the_message_count_and_removes_the_queue(amqp):
    connection = amqp.connect()
    channel = confirmed_channel(connection)
    queue = amqp.name("q")
    channel.queue_declare(queue)
    publish_bodies(channel, "", queue, [b"1", b"2"])
    assert channel.queue_delete(queue).method.message_count == 2
    assert not queue_exists(connection, queue)
    # Deleting a queue that does not exist is not an error in RabbitMQ.
    assert channel.queue_delete(queue).method.message_count == 0


def test_delete_if_unused_fails_while_a_consumer_is_attached(amqp):
    connection = amqp.connect()
    channel = connection.channel()
    queue = amqp.name("q")
    channel.queue_declare(queue)
    consumer = Consumer(connection.channel(), queue)
    with channel_closed(PRECONDITION_FAILED) as excinfo:
        channel.queue_delete(queue, if_unused=True)
    assert excinfo.value.reply_text == f"PRECONDITION_FAILED - queue '{queue}' in vhost '/' in use"
    consumer.cancel()
    connection.channel().queue_delete(queue, if_unused=True)
    assert not queue_exists(connection, queue)


def test_delete_if_empty_fails_while_messages_are_ready(amqp):
    connection = amqp.connect()
    channel = confirmed_channel(connection)
    queue = amqp.name("q")
    channel.queue_declare(queue)
    channel.basic_publish("", queue, b"m")
    with channel_closed(PRECONDITION_FAILED) as excinfo:
        channel.queue_delete(queue, if_empty=True)
    assert excinfo.value.reply_text == (
        f"PRECONDITION_FAILED - queue '{queue}' in vhost '/' not empty")
    channel = connection.channel()
    get_bodies(channel, queue)
    channel.queue_delete(queue, if_empty=True)
    assert not queue_exists(connection, queue)


LOCKED_TEXT = "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue"


@pytest.mark.parametrize("operation", ["declare", "passive-declare", "consume", "get", "purge",
                                       "delete", "bind"])
def test_exclusive_queue_is_locked_to_its_connection(amqp, operation):
    owner = amqp.connect()
    queue = amqp.name("excl")
    owner.channel().queue_declare(queue, exclusive=True)
    channel = amqp.connect().channel()
    run = {
        "declare": lambda: channel.queue_declare(queue, exclusive=True),
        "passive-declare": lambda: channel.queue_declare(queue, passive=True),
        "consume": lambda: channel.basic_consume(queue, lambda *a: None),
        "get": lambda: channel.basic_get(queue),
        "purge": lambda: channel.queue_purge(queue),
        "delete": lambda: channel.queue_delete(queue),
        "bind": lambda: channel.queue_bind(queue, "amq.direct", "k"),
    }[operation]
    with channel_closed(RESOURCE_LOCKED, LOCKED_TEXT):
        run()
    # Publishing to it from elsewhere is allowed.
    publisher = confirmed_channel(amqp.connect())
    publisher.basic_publish("", queue, b"from outside")
    assert get_bodies(owner.channel(), queue) == [b"from outside"]


def test_exclusive_queue_is_deleted_when_its_connection_closes(amqp):
    owner = amqp.connect()
    queue = amqp.name("excl")
    owner.channel().queue_declare(queue, exclusive=True)
    observer = amqp.connect()
    owner.close()
    wait_until_gone(observer, queue)


def test_auto_delete_queue_is_deleted_after_its_last_consumer_cancels(amqp):
    connection = amqp.connect()
    channel = connection.channel()
    queue = amqp.name("autodel")
    channel.queue_declare(queue, auto_delete=True)
    # Never consumed: it stays.
    assert queue_exists(connection, queue)
    first = Consumer(connection.channel(), queue)
    second = Consumer(connection.channel(), queue)
    first.cancel()
    assert consumer_count(channel, queue) == 1
    second.cancel()
    wait_until_gone(connection, queue)


def test_auto_delete_queue_is_deleted_when_its_consumers_channel_closes(amqp):
    connection = amqp.connect()
    queue = amqp.name("autodel")
    connection.channel().queue_declare(queue, auto_delete=True)
    consuming = connection.channel()
    Consumer(consuming, queue)
    consuming.close()
    wait_until_gone(connection, queue)


def test_redeclaring_queue_with_other_durability_fails_precondition(amqp):
    connection = amqp.connect()
    queue = amqp.name("q")
    connection.channel().queue_declare(queue, durable=False)
    with channel_closed(PRECONDITION_FAILED) as excinfo:
        connection.channel().queue_declare(queue, durable=True)
    assert excinfo.value.reply_text == (
        f"PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{queue}' in vhost '/': "
        f"received 'true' but current is 'false'")


def test_redeclaring_queue_with_other_arguments_fails_precondition(amqp):
    connection = amqp.connect()
    queue = amqp.name("q")
    connection.channel().queue_declare(queue, arguments={"x-max-length": 10})
    with channel_closed(PRECONDITION_FAILED,
                        "PRECONDITION_FAILED - inequivalent arg 'x-max-length'"):
        connection.channel().queue_declare(queue, arguments={"x-max-length": 5})
    with channel_closed(PRECONDITION_FAILED,
                        "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl'"):
        connection.channel().queue_declare(queue, arguments={"x-max-length": 10,
                                                             "x-message-ttl": 1000})
    # Same arguments: fine.
    connection.channel().queue_declare(queue, arguments={"x-max-length": 10})


def test_redeclaring_queue_with_other_auto_delete_fails_precondition(amqp):
    connection = amqp.connect()
    queue = amqp.name("q")
    connection.channel().queue_declare(queue)
    with channel_closed(PRECONDITION_FAILED,
                        "PRECONDITION_FAILED - inequivalent arg 'auto_delete'"):
        connection.channel().queue_declare(queue, auto_delete=True)


def test_passive_declare_ignores_flags_and_arguments(amqp):
    connection = amqp.connect()
    queue = amqp.name("q")
    connection.channel().queue_declare(queue, arguments={"x-max-length": 10})
    ok = connection.channel().queue_declare(queue, passive=True, durable=True,
                                            arguments={"x-max-length": 1}).method
    assert ok.queue == queue
