"""basic.* : consume and cancel, get, ack / nack / reject / recover, redelivery of unacked
messages, prefetch (basic.qos), message properties and bodies, and per-queue order."""

import datetime
import decimal

import pika
import pika.exceptions
import pytest

from . import raw_amqp
from .amqp_expect import (ACCESS_REFUSED, NOT_ALLOWED, NOT_FOUND, NOT_IMPLEMENTED,
                          PRECONDITION_FAILED, Consumer, channel_closed, confirmed_channel,
                          connection_closed, get_all, idle, publish_bodies, queue_depth, roundtrip,
                          wait_until)


@pytest.fixture
def queue(amqp):
    """A durable, non-exclusive queue (so several connections can use it)."""
    name = amqp.name("q")
    amqp.connect().channel().queue_declare(name)
    return name


def fill(amqp, queue, count, prefix="m"):
    bodies = [f"{prefix}{i}".encode() for i in range(1, count + 1)]
    publish_bodies(confirmed_channel(amqp.connect()), "", queue, bodies)
    return bodies


# -- consume, cancel, consumer tags ---------------------------------------------------------

def test_consumer_receives_messages_with_its_tag_and_increasing_delivery_tags(amqp, queue):
    bodies = fill(amqp, queue, 3)
    channel = amqp.connect().channel()
    consumer = Consumer(channel, queue, consumer_tag="my-tag")
    deliveries = consumer.wait_for(3)
    assert [d.body for d in deliveries] == bodies
    assert [d.method.consumer_tag for d in deliveries] == ["my-tag"] * 3
    assert [d.method.delivery_tag for d in deliveries] == [1, 2, 3]
    assert all(d.method.exchange == "" and d.method.routing_key == queue for d in deliveries)
    assert not any(d.method.redelivered for d in deliveries)


def test_server_generates_a_consumer_tag_when_none_is_given(amqp, queue):
    # pika always names its consumers, so ask on the wire with an empty tag.
    with raw_amqp.RawConnection(amqp.host, amqp.port) as raw:
        raw.handshake()
        raw.open_channel(1)
        raw.send_method(1, raw_amqp.BASIC_CONSUME, raw_amqp.basic_consume_args(queue, ""))
        consume_ok = raw.expect_method(raw_amqp.BASIC_CONSUME_OK, 1)
    tag = raw_amqp.parse_shortstr(consume_ok.payload, 4)
    assert tag.startswith("amq.ctag-"), tag


def test_consume_from_missing_queue_is_not_found(amqp):
    missing = amqp.name("missing")
    with channel_closed(NOT_FOUND, f"NOT_FOUND - no queue '{missing}' in vhost '/'"):
        Consumer(amqp.connect().channel(), missing)


def test_reusing_a_consumer_tag_on_a_channel_closes_the_connection(amqp, queue):
    # pika refuses a duplicate tag itself, so this one goes over the wire by hand.
    with raw_amqp.RawConnection(amqp.host, amqp.port) as raw:
        raw.handshake()
        raw.open_channel(1)
        raw.send_method(1, raw_amqp.BASIC_CONSUME, raw_amqp.basic_consume_args(queue, "dup"))
        raw.expect_method(raw_amqp.BASIC_CONSUME_OK, 1)
        raw.send_method(1, raw_amqp.BASIC_CONSUME, raw_amqp.basic_consume_args(queue, "dup"))
        code, text, class_id, method_id = raw.expect_connection_close()
    assert (code, text) == (NOT_ALLOWED, "NOT_ALLOWED - attempt to reuse consumer tag 'dup'")
    assert (class_id, method_id) == raw_amqp.BASIC_CONSUME


def test_exclusive_consumer_locks_out_other_consumers(amqp, queue):
    Consumer(amqp.connect().channel(), queue, exclusive=True)
    with channel_closed(ACCESS_REFUSED) as excinfo:
        Consumer(amqp.connect().channel(), queue)
    assert excinfo.value.reply_text == (
        f"ACCESS_REFUSED - queue '{queue}' in vhost '/' in exclusive use")


def test_exclusive_consume_is_refused_while_another_consumer_exists(amqp, queue):
    Consumer(amqp.connect().channel(), queue)
    with channel_closed(ACCESS_REFUSED, f"ACCESS_REFUSED - queue '{queue}' in vhost '/' in "
                                        f"exclusive use"):
        Consumer(amqp.connect().channel(), queue, exclusive=True)


def test_cancel_stops_deliveries_and_unacked_ones_stay_ackable(amqp, queue):
    fill(amqp, queue, 2)
    connection = amqp.connect()
    channel = connection.channel()
    channel.basic_qos(prefetch_count=1)
    consumer = Consumer(channel, queue)
    consumer.wait_for(1)
    consumer.cancel()
    fill(amqp, queue, 2, prefix="late")
    idle(connection, 0.2)
    assert consumer.bodies == [b"m1"]
    channel.basic_ack(consumer.deliveries[0].method.delivery_tag)
    roundtrip(channel)
    assert queue_depth(channel, queue) == 3  # m2, late1, late2


def test_deleting_a_queue_cancels_its_consumers_with_basic_cancel(amqp, queue):
    # consumer_cancel_notify: the broker tells the consumer its queue is gone.
    connection = amqp.connect()
    channel = connection.channel()
    cancelled = []
    channel.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    consumer = Consumer(channel, queue, consumer_tag="watching")
    amqp.connect().channel().queue_delete(queue)
    wait_until(connection, lambda: cancelled, what="basic.cancel from the broker")
    assert cancelled == [consumer.tag]
    assert channel.is_open


def test_consumers_on_one_queue_share_its_messages_round_robin(amqp, queue):
    connection = amqp.connect()
    first = Consumer(connection.channel(), queue)
    second = Consumer(connection.channel(), queue)
    fill(amqp, queue, 6)
    wait_until(connection, lambda: len(first.deliveries) + len(second.deliveries) == 6)
    # Each message goes to exactly one consumer; with no prefetch limit the split is even.
    assert sorted(first.bodies + second.bodies) == sorted(f"m{i}".encode() for i in range(1, 7))
    assert len(first.deliveries) == len(second.deliveries) == 3


def test_no_ack_consumer_does_not_get_messages_back_after_close(amqp, queue):
    fill(amqp, queue, 3)
    connection = amqp.connect()
    channel = connection.channel()
    consumer = Consumer(channel, queue, auto_ack=True)
    consumer.wait_for(3)
    channel.close()
    assert queue_depth(connection.channel(), queue) == 0


# -- basic.get ------------------------------------------------------------------------------

def test_get_returns_messages_with_remaining_count_then_get_empty(amqp, queue):
    fill(amqp, queue, 3)
    channel = amqp.connect().channel()
    counts = []
    for expected in (b"m1", b"m2", b"m3"):
        method, _props, body = channel.basic_get(queue, auto_ack=True)
        assert body == expected
        counts.append(method.message_count)
    assert counts == [2, 1, 0]
    assert channel.basic_get(queue) == (None, None, None)


def test_get_without_ack_leaves_the_message_unacked_until_acked(amqp, queue):
    fill(amqp, queue, 1)
    connection = amqp.connect()
    channel = connection.channel()
    method, _props, _body = channel.basic_get(queue)
    assert method.delivery_tag == 1 and not method.redelivered
    assert channel.basic_get(queue) == (None, None, None)
    channel.basic_ack(method.delivery_tag)
    channel.close()
    assert queue_depth(connection.channel(), queue) == 0


# -- ack / nack / reject / recover -----------------------------------------------------------

def test_ack_multiple_acks_every_tag_up_to_it(amqp, queue):
    fill(amqp, queue, 5)
    connection = amqp.connect()
    channel = connection.channel()
    consumer = Consumer(channel, queue)
    consumer.wait_for(5)
    channel.basic_ack(3, multiple=True)
    channel.close()
    # Only m4 and m5 were unacked, so only they come back.
    redelivered = get_all(connection.channel(), queue)
    assert [body for _m, _p, body in redelivered] == [b"m4", b"m5"]
    assert all(m.redelivered for m, _p, _b in redelivered)


def test_nack_with_requeue_redelivers_in_original_order(amqp, queue):
    fill(amqp, queue, 4)
    connection = amqp.connect()
    channel = connection.channel()
    channel.basic_qos(prefetch_count=3)
    consumer = Consumer(channel, queue)
    consumer.wait_for(3)
    channel.basic_nack(3, multiple=True, requeue=True)
    consumer.wait_for(6)
    idle(connection, 0.2)
    # Requeued messages go back to their place at the head, ahead of m4 (which the prefetch
    # window, full again, holds back); each redelivery gets a new delivery tag.
    redeliveries = consumer.deliveries[3:]
    assert [d.body for d in redeliveries] == [b"m1", b"m2", b"m3"]
    assert all(d.method.redelivered for d in redeliveries)
    assert [d.method.delivery_tag for d in redeliveries] == [4, 5, 6]
    channel.basic_ack(4)
    deliveries = consumer.wait_for(7)
    assert (deliveries[6].body, deliveries[6].method.redelivered) == (b"m4", False)


def test_nack_without_requeue_drops_the_message(amqp, queue):
    fill(amqp, queue, 2)
    connection = amqp.connect()
    channel = connection.channel()
    consumer = Consumer(channel, queue)
    consumer.wait_for(2)
    channel.basic_nack(1, requeue=False)
    channel.basic_ack(2)
    roundtrip(channel)
    idle(connection, 0.1)
    assert len(consumer.deliveries) == 2
    assert queue_depth(channel, queue) == 0


def test_reject_with_requeue_redelivers_and_without_drops(amqp, queue):
    fill(amqp, queue, 2)
    connection = amqp.connect()
    channel = connection.channel()
    first, _p, _b = channel.basic_get(queue)
    second, _p, _b = channel.basic_get(queue)
    channel.basic_reject(first.delivery_tag, requeue=True)
    channel.basic_reject(second.delivery_tag, requeue=False)
    messages = get_all(channel, queue)
    assert [(m.redelivered, body) for m, _p, body in messages] == [(True, b"m1")]


def test_recover_with_requeue_redelivers_unacked_messages(amqp, queue):
    fill(amqp, queue, 2)
    connection = amqp.connect()
    channel = connection.channel()
    consumer = Consumer(channel, queue)
    consumer.wait_for(2)
    channel.basic_ack(1)
    channel.basic_recover(requeue=True)
    deliveries = consumer.wait_for(3)
    idle(connection, 0.2)
    assert [(d.body, d.method.redelivered) for d in consumer.deliveries] == [
        (b"m1", False), (b"m2", False), (b"m2", True)]
    channel.basic_ack(deliveries[2].method.delivery_tag)
    roundtrip(channel)


def test_recover_without_requeue_is_not_implemented(amqp, queue):
    channel = amqp.connect().channel()
    with connection_closed(NOT_IMPLEMENTED, "NOT_IMPLEMENTED - requeue=false"):
        channel.basic_recover(requeue=False)


@pytest.mark.parametrize("how", ["channel-close", "connection-close", "cancel-then-close"])
def test_unacked_delivery_is_redelivered_when_its_channel_goes(amqp, queue, how):
    fill(amqp, queue, 2)
    connection = amqp.connect()
    channel = connection.channel()
    consumer = Consumer(channel, queue)
    consumer.wait_for(2)
    channel.basic_ack(1)
    if how == "cancel-then-close":
        consumer.cancel()  # cancelling alone keeps the unacked message with the channel
        idle(connection, 0.1)
        assert queue_depth(channel, queue) == 0
    if how == "connection-close":
        connection.close()
    else:
        channel.close()
    observer = amqp.connect().channel()
    wait_until(observer.connection, lambda: queue_depth(observer, queue) == 1)
    [(method, _props, body)] = get_all(observer, queue)
    assert (body, method.redelivered) == (b"m2", True)


# -- basic.qos ------------------------------------------------------------------------------

def test_prefetch_per_consumer_limits_each_consumers_unacked_deliveries(amqp):
    connection = amqp.connect()
    channel = connection.channel()
    queues = [amqp.name("qa"), amqp.name("qb")]
    for name in queues:
        channel.queue_declare(name, auto_delete=True)
        fill(amqp, name, 5)
    channel.basic_qos(prefetch_count=2)  # global=False: a limit for each new consumer
    consumers = [Consumer(channel, name) for name in queues]
    wait_until(connection, lambda: all(len(c.deliveries) == 2 for c in consumers))
    idle(connection, 0.2)
    assert [len(c.deliveries) for c in consumers] == [2, 2]
    # Acking one of the first consumer's frees exactly one slot for it.
    channel.basic_ack(consumers[0].deliveries[0].method.delivery_tag)
    consumers[0].wait_for(3)
    idle(connection, 0.2)
    assert [len(c.deliveries) for c in consumers] == [3, 2]


def test_prefetch_global_is_shared_by_all_consumers_of_the_channel(amqp):
    connection = amqp.connect()
    channel = connection.channel()
    queues = [amqp.name("qa"), amqp.name("qb")]
    for name in queues:
        channel.queue_declare(name, auto_delete=True)
        fill(amqp, name, 5)
    channel.basic_qos(prefetch_count=3, global_qos=True)
    consumers = [Consumer(channel, name) for name in queues]
    wait_until(connection, lambda: sum(len(c.deliveries) for c in consumers) == 3)
    idle(connection, 0.3)
    assert sum(len(c.deliveries) for c in consumers) == 3
    channel.basic_ack(0, multiple=True)
    wait_until(connection, lambda: sum(len(c.deliveries) for c in consumers) == 6)
    idle(connection, 0.2)
    assert sum(len(c.deliveries) for c in consumers) == 6


def two_consumers_after_qos(amqp, *qos_calls):
    """Two consumers on one channel, each on its own queue of 5 messages, after the given
    basic.qos calls; returns how many deliveries each holds once the broker stops sending."""
    connection = amqp.connect()
    channel = connection.channel()
    queues = [amqp.name("qa"), amqp.name("qb")]
    for name in queues:
        channel.queue_declare(name, auto_delete=True)
        fill(amqp, name, 5)
    for prefetch_count, global_qos in qos_calls:
        channel.basic_qos(prefetch_count=prefetch_count, global_qos=global_qos)
    consumers = [Consumer(channel, name) for name in queues]
    wait_until(connection, lambda: sum(len(c.deliveries) for c in consumers) >= 3)
    idle(connection, 0.3)
    return [len(c.deliveries) for c in consumers]


def test_prefetch_per_consumer_then_global_limits_apply_together(amqp):
    # RabbitMQ's documented combination: at most 2 for each consumer, 3 for the channel.
    assert two_consumers_after_qos(amqp, (2, False), (3, True)) == [2, 1]


def test_per_consumer_qos_after_global_qos_lifts_the_channel_limit(amqp):
    # RabbitMQ's order dependence: basic.qos with global=false clears the channel-wide limit
    # (it is how a default_consumer_prefetch gets overridden), so only the 2 per consumer stays.
    assert two_consumers_after_qos(amqp, (3, True), (2, False)) == [2, 2]


def test_prefetch_does_not_limit_no_ack_consumers(amqp, queue):
    fill(amqp, queue, 5)
    connection = amqp.connect()
    channel = connection.channel()
    channel.basic_qos(prefetch_count=1)
    Consumer(channel, queue, auto_ack=True).wait_for(5)


# -- properties, bodies, order ---------------------------------------------------------------

HEADERS = {
    "string": "text", "unicode": "ünïcødé", "empty": "", "int": 42, "negative": -7,
    "big": 2 ** 40, "true": True, "false": False, "void": None,
    "decimal": decimal.Decimal("1.5"), "bytes": b"\x00\xff",
    "timestamp": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    "table": {"k": "v", "n": 1, "deeper": {"list": [1]}}, "empty-table": {},
    "list": [1, "two", {"three": 3}, [4], True], "empty-list": [],
}


def test_properties_and_headers_round_trip(amqp, queue):
    properties = pika.BasicProperties(
        content_type="application/json", content_encoding="gzip", headers=HEADERS,
        delivery_mode=2, priority=7, correlation_id="corr-1", reply_to="reply-queue",
        expiration="60000", message_id="msg-1", timestamp=1_700_000_000, type="order.created",
        user_id="guest", app_id="sluice-tests", cluster_id="cluster-x")
    channel = confirmed_channel(amqp.connect())
    channel.basic_publish("", queue, b"{}", properties)
    [(_method, received, body)] = get_all(channel, queue)
    assert body == b"{}"
    for name in ("content_type", "content_encoding", "delivery_mode", "priority",
                 "correlation_id", "reply_to", "expiration", "message_id", "timestamp", "type",
                 "user_id", "app_id", "cluster_id"):
        assert getattr(received, name) == getattr(properties, name), name
    assert received.headers == HEADERS


def test_message_without_properties_arrives_without_properties(amqp, queue):
    channel = confirmed_channel(amqp.connect())
    channel.basic_publish("", queue, b"bare")
    [(_method, received, _body)] = get_all(channel, queue)
    assert all(getattr(received, name) is None for name in (
        "content_type", "headers", "delivery_mode", "priority", "message_id", "timestamp"))


def test_user_id_other_than_the_authenticated_user_is_refused(amqp, queue):
    channel = confirmed_channel(amqp.connect())
    with channel_closed(PRECONDITION_FAILED) as excinfo:
        channel.basic_publish("", queue, b"x", pika.BasicProperties(user_id="mallory"))
    assert excinfo.value.reply_text == (
        "PRECONDITION_FAILED - user_id property set to 'mallory' but authenticated user was "
        "'guest'")
    assert queue_depth(amqp.connect().channel(), queue) == 0


@pytest.mark.parametrize("size", [0, 1, 131_072 - 8, 131_072 - 7, 1 << 20])
def test_bodies_of_any_size_round_trip_split_over_frames(amqp, queue, size):
    # 131072 is the negotiated frame_max; a body frame carries frame_max - 8 bytes.
    body = bytes(i % 251 for i in range(size))
    channel = confirmed_channel(amqp.connect())
    channel.basic_publish("", queue, body)
    [(_method, _props, received)] = get_all(channel, queue)
    assert len(received) == size and received == body


def test_messages_of_one_queue_are_delivered_in_publish_order(amqp, queue):
    connection = amqp.connect()
    publisher = connection.channel()
    bodies = [f"{i:05d}".encode() for i in range(500)]
    publish_bodies(publisher, "", queue, bodies)
    consumer = Consumer(connection.channel(), queue, auto_ack=True)
    consumer.wait_for(500)
    assert consumer.bodies == bodies
