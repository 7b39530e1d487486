"""Dead-lettering (x-dead-letter-exchange / -routing-key) of rejected, expired and over-length
messages, the x-death and x-first-death-* headers RabbitMQ writes, TTLs and x-overflow."""

import datetime
import time

import pika
import pika.exceptions
import pytest

from .amqp_expect import (Consumer, confirmed_channel, get_all, get_bodies, idle, queue_depth,
                          wait_until)

X_DEATH_KEYS = {"count", "reason", "queue", "time", "exchange", "routing-keys"}


@pytest.fixture
def dead_letters(amqp):
    """A fanout exchange and the queue bound to it, collecting whatever is dead-lettered."""
    connection = amqp.connect()
    channel = connection.channel()
    exchange = amqp.name("dlx")
    queue = amqp.name("dlq")
    channel.exchange_declare(exchange, "fanout")
    channel.queue_declare(queue)
    channel.queue_bind(queue, exchange)
    consumer = Consumer(channel, queue, auto_ack=True)
    consumer.exchange = exchange
    return consumer


def source_queue(amqp, channel, dead_letters, **arguments):
    queue = amqp.name("src")
    arguments = {"x-dead-letter-exchange": dead_letters.exchange, **arguments}
    channel.queue_declare(queue, arguments=arguments)
    return queue


def assert_x_death(headers, *, reason, queue, exchange="", routing_keys, count=1, extra=()):
    [death] = headers["x-death"]
    assert set(death) == X_DEATH_KEYS | set(extra), death
    assert (death["count"], death["reason"], death["queue"], death["exchange"],
            death["routing-keys"]) == (count, reason, queue, exchange, routing_keys)
    age = datetime.datetime.now(datetime.timezone.utc) - death["time"]
    assert datetime.timedelta(seconds=-5) < age < datetime.timedelta(seconds=60), death["time"]
    assert headers["x-first-death-reason"] == reason
    assert headers["x-first-death-queue"] == queue
    assert headers["x-first-death-exchange"] == exchange
    return death


@pytest.mark.parametrize("settle", ["reject", "nack"])
def test_message_rejected_without_requeue_is_dead_lettered_with_x_death(amqp, dead_letters,
                                                                          settle):
    channel = confirmed_channel(amqp.connect())
    queue = source_queue(amqp, channel, dead_letters)
    properties = pika.BasicProperties(message_id="m-1", content_type="text/plain",
                                      headers={"app": "kept"})
    channel.basic_publish("", queue, b"bad", properties)
    method, _props, _body = channel.basic_get(queue)
    if settle == "reject":
        channel.basic_reject(method.delivery_tag, requeue=False)
    else:
        channel.basic_nack(method.delivery_tag, requeue=False)
    [delivery] = dead_letters.wait_for(1)
    assert delivery.body == b"bad"
    # Routed through the dead-letter exchange with the original routing key.
    assert (delivery.method.exchange, delivery.method.routing_key) == (dead_letters.exchange,
                                                                       queue)
    received = delivery.properties
    assert (received.message_id, received.content_type) == ("m-1", "text/plain")
    assert received.headers["app"] == "kept"
    assert_x_death(received.headers, reason="rejected", queue=queue, routing_keys=[queue])
    assert set(received.headers) == {"app", "x-death", "x-first-death-reason",
                                     "x-first-death-queue", "x-first-death-exchange"}
    assert queue_depth(channel, queue) == 0


def test_dead_letter_routing_key_replaces_the_key_but_x_death_keeps_the_original(amqp):
    channel = confirmed_channel(amqp.connect())
    exchange = amqp.name("dlx")
    channel.exchange_declare(exchange, "direct")
    target = amqp.name("dlq")
    channel.queue_declare(target)
    channel.queue_bind(target, exchange, "to-target")
    source = amqp.name("src")
    channel.queue_declare(source, arguments={"x-dead-letter-exchange": exchange,
                                             "x-dead-letter-routing-key": "to-target"})
    publish_exchange = amqp.name("in")
    channel.exchange_declare(publish_exchange, "direct")
    channel.queue_bind(source, publish_exchange, "original-key")
    channel.basic_publish(publish_exchange, "original-key", b"m")
    method, _props, _body = channel.basic_get(source)
    channel.basic_reject(method.delivery_tag, requeue=False)
    wait_until(channel.connection, lambda: queue_depth(channel, target) == 1)
    [(method, props, body)] = get_all(channel, target)
    assert (method.exchange, method.routing_key) == (exchange, "to-target")
    assert_x_death(props.headers, reason="rejected", queue=source, exchange=publish_exchange,
                   routing_keys=["original-key"])


def test_rejected_without_dead_letter_exchange_is_dropped(amqp):
    channel = amqp.connect().channel()
    queue = amqp.name("q")
    channel.queue_declare(queue)
    channel.basic_publish("", queue, b"m")
    method, _props, _body = channel.basic_get(queue)
    channel.basic_reject(method.delivery_tag, requeue=False)
    assert channel.basic_get(queue) == (None, None, None)


def test_queue_message_ttl_expires_and_dead_letters_messages(amqp, dead_letters):
    channel = confirmed_channel(amqp.connect())
    queue = source_queue(amqp, channel, dead_letters, **{"x-message-ttl": 150})
    started = time.monotonic()
    channel.basic_publish("", queue, b"old", pika.BasicProperties(headers={"n": 1}))
    [delivery] = dead_letters.wait_for(1)
    # Not before its TTL (give or take a timer tick), and by a timer: nobody touched the
    # source queue meanwhile.
    assert time.monotonic() - started >= 0.13
    assert delivery.body == b"old"
    assert_x_death(delivery.properties.headers, reason="expired", queue=queue,
                   routing_keys=[queue])
    assert delivery.properties.expiration is None
    assert queue_depth(channel, queue) == 0


def test_per_message_expiration_dead_letters_with_original_expiration(amqp, dead_letters):
    channel = confirmed_channel(amqp.connect())
    queue = source_queue(amqp, channel, dead_letters)
    channel.basic_publish("", queue, b"short-lived", pika.BasicProperties(expiration="150"))
    channel.basic_publish("", queue, b"long-lived", pika.BasicProperties(expiration="60000"))
    [delivery] = dead_letters.wait_for(1)
    assert delivery.body == b"short-lived"
    # The expiration property is taken off and recorded in x-death instead, so the
    # dead-lettered copy does not expire again for the same reason.
    assert delivery.properties.expiration is None
    death = assert_x_death(delivery.properties.headers, reason="expired", queue=queue,
                           routing_keys=[queue], extra={"original-expiration"})
    assert death["original-expiration"] == "150"
    idle(channel.connection, 0.2)
    assert len(dead_letters.deliveries) == 1
    assert get_bodies(channel, queue) == [b"long-lived"]


def test_expired_messages_are_not_delivered(amqp):
    channel = confirmed_channel(amqp.connect())
    queue = amqp.name("ttl")
    channel.queue_declare(queue, arguments={"x-message-ttl": 100})
    channel.basic_publish("", queue, b"queue ttl")
    channel.basic_publish("", queue, b"message ttl", pika.BasicProperties(expiration="100"))
    time.sleep(0.3)
    assert get_bodies(channel, queue) == []
    # A fresh message is delivered as usual.
    channel.basic_publish("", queue, b"fresh")
    assert get_bodies(channel, queue) == [b"fresh"]


def test_zero_expiration_is_delivered_only_to_a_waiting_consumer(amqp):
    channel = confirmed_channel(amqp.connect())
    queue = amqp.name("ttl0")
    channel.queue_declare(queue)
    channel.basic_publish("", queue, b"nobody waiting", pika.BasicProperties(expiration="0"))
    consumer = Consumer(amqp.connect().channel(), queue, auto_ack=True)
    channel.basic_publish("", queue, b"consumer waiting", pika.BasicProperties(expiration="0"))
    consumer.wait_for(1)
    idle(consumer.channel.connection, 0.2)
    assert consumer.bodies == [b"consumer waiting"]


def test_max_length_drops_and_dead_letters_from_the_head(amqp, dead_letters):
    channel = confirmed_channel(amqp.connect())
    queue = source_queue(amqp, channel, dead_letters, **{"x-max-length": 2})
    for body in (b"m1", b"m2", b"m3", b"m4"):
        channel.basic_publish("", queue, body)
    deliveries = dead_letters.wait_for(2)
    assert [d.body for d in deliveries] == [b"m1", b"m2"]
    assert_x_death(deliveries[0].properties.headers, reason="maxlen", queue=queue,
                   routing_keys=[queue])
    assert get_bodies(channel, queue) == [b"m3", b"m4"]


def test_max_length_bytes_drops_from_the_head(amqp):
    channel = confirmed_channel(amqp.connect())
    queue = amqp.name("maxbytes")
    channel.queue_declare(queue, arguments={"x-max-length-bytes": 10})
    for body in (b"aaaa", b"bbbb", b"cccc"):
        channel.basic_publish("", queue, body)
    assert get_bodies(channel, queue) == [b"bbbb", b"cccc"]


def test_overflow_reject_publish_nacks_publishes_beyond_max_length(amqp, dead_letters):
    channel = confirmed_channel(amqp.connect())
    queue = source_queue(amqp, channel, dead_letters,
                         **{"x-max-length": 1, "x-overflow": "reject-publish"})
    channel.basic_publish("", queue, b"fits")
    # pika raises NackError when the broker answers the publish with basic.nack.
    with pytest.raises(pika.exceptions.NackError):
        channel.basic_publish("", queue, b"refused")
    # reject-publish neither drops the head nor dead-letters the refused message.
    idle(channel.connection, 0.2)
    assert dead_letters.deliveries == []
    assert get_bodies(channel, queue) == [b"fits"]
    channel.basic_publish("", queue, b"fits again")


def test_x_death_counts_repeated_deaths_in_one_entry(amqp):
    # A queue that dead-letters into itself: rejecting the same message twice leaves one
    # x-death entry for (queue, reason) with count 2.
    channel = amqp.connect().channel()
    queue = amqp.name("loop")
    channel.queue_declare(queue, arguments={"x-dead-letter-exchange": "",
                                            "x-dead-letter-routing-key": queue})
    channel.basic_publish("", queue, b"m")
    for _ in range(2):
        wait_until(channel.connection, lambda: queue_depth(channel, queue) == 1)
        method, _props, _body = channel.basic_get(queue)
        channel.basic_reject(method.delivery_tag, requeue=False)
    wait_until(channel.connection, lambda: queue_depth(channel, queue) == 1)
    [(_method, props, _body)] = get_all(channel, queue)
    assert_x_death(props.headers, reason="rejected", queue=queue, routing_keys=[queue], count=2)


def test_x_death_lists_deaths_in_different_queues_newest_first(amqp, dead_letters):
    # expired in `first` (dead-lettered by key into `second`), then rejected in `second`.
    channel = confirmed_channel(amqp.connect())
    first = amqp.name("first")
    second = source_queue(amqp, channel, dead_letters)
    channel.queue_declare(first, arguments={"x-message-ttl": 100,
                                            "x-dead-letter-exchange": "",
                                            "x-dead-letter-routing-key": second})
    channel.basic_publish("", first, b"m")
    wait_until(channel.connection, lambda: queue_depth(channel, second) == 1)
    method, _props, _body = channel.basic_get(second)
    channel.basic_reject(method.delivery_tag, requeue=False)
    [delivery] = dead_letters.wait_for(1)
    headers = delivery.properties.headers
    deaths = headers["x-death"]
    assert [(d["queue"], d["reason"], d["count"]) for d in deaths] == [
        (second, "rejected", 1), (first, "expired", 1)]
    assert deaths[0]["routing-keys"] == [second]  # the key it was dead-lettered with
    assert deaths[1]["routing-keys"] == [first]
    assert (headers["x-first-death-queue"], headers["x-first-death-reason"]) == (first,
                                                                                 "expired")
