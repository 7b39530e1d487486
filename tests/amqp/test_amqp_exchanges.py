"""Exchanges and routing: the four exchange types, the default and amq.* exchanges, declare /
delete rules, bindings, and mandatory publishes that route nowhere."""

import pika
import pika.exceptions
import pytest

from .amqp_expect import (ACCESS_REFUSED, COMMAND_INVALID, NO_ROUTE, NOT_FOUND,
                          PRECONDITION_FAILED, channel_closed, confirmed_channel,
                          connection_closed, get_bodies, idle, roundtrip, wait_until)


def bound_queue(channel, amqp, exchange, routing_key="", arguments=None):
    queue = amqp.name("q")
    channel.queue_declare(queue, auto_delete=True)
    channel.queue_bind(queue, exchange, routing_key, arguments)
    return queue


def test_direct_exchange_routes_on_the_exact_key(amqp):
    channel = confirmed_channel(amqp.connect())
    exchange = amqp.name("direct")
    channel.exchange_declare(exchange, "direct", auto_delete=True)
    orange = bound_queue(channel, amqp, exchange, "orange")
    black = bound_queue(channel, amqp, exchange, "black")
    # One queue bound twice gets one copy per message, not two.
    both = bound_queue(channel, amqp, exchange, "orange")
    channel.queue_bind(both, exchange, "black")
    for key in ("orange", "black", "green", "Orange", "orange.x"):
        channel.basic_publish(exchange, key, key.encode())
    assert get_bodies(channel, orange) == [b"orange"]
    assert get_bodies(channel, black) == [b"black"]
    assert get_bodies(channel, both) == [b"orange", b"black"]


def test_fanout_exchange_copies_to_every_bound_queue_whatever_the_key(amqp):
    channel = confirmed_channel(amqp.connect())
    exchange = amqp.name("fanout")
    channel.exchange_declare(exchange, "fanout", auto_delete=True)
    queues = [bound_queue(channel, amqp, exchange, key) for key in ("", "a", "b")]
    channel.basic_publish(exchange, "anything", b"m1")
    channel.basic_publish(exchange, "", b"m2")
    for queue in queues:
        assert get_bodies(channel, queue) == [b"m1", b"m2"]


TOPIC_CASES = [
    # binding pattern, routing keys that match it, routing keys that do not
    ("a.*.c", ["a.b.c", "a.xyz.c", "a..c"], ["a.c", "a.b.b.c", "a.b.c.d", "x.b.c", "a.b.cc"]),
    ("a.#", ["a", "a.b", "a.b.c"], ["b.a", "ab", "b"]),
    ("#", ["", "a", "a.b.c"], []),
    ("#.c", ["c", "a.c", "a.b.c"], ["c.a", "a.cc", "ac"]),
    ("a.#.c", ["a.c", "a.b.c", "a.b.b.c"], ["a.b", "ac", "a.c.d", "b.a.c"]),
    # An empty key has no words (so no match for "*"), but "a..c" has an empty middle word.
    ("*", ["a"], ["", "a.b", "a.b.c"]),
    ("a.*", ["a.b", "a."], ["a", "a.b.c", "b.a"]),
    ("*.#", ["a", "a.b", "a.b.c"], []),
    ("a.b", ["a.b"], ["a.b.c", "a", "a.bb"]),
]


@pytest.mark.parametrize("pattern,matching,other", TOPIC_CASES,
                         ids=[case[0] for case in TOPIC_CASES])
def test_topic_exchange_matches_star_and_hash_wildcards(amqp, pattern, matching, other):
    channel = confirmed_channel(amqp.connect())
    exchange = amqp.name("topic")
    channel.exchange_declare(exchange, "topic", auto_delete=True)
    queue = bound_queue(channel, amqp, exchange, pattern)
    for key in matching + other:
        channel.basic_publish(exchange, key, key.encode())
    assert get_bodies(channel, queue) == [key.encode() for key in matching]


HEADERS_ALL = {"x-match": "all", "format": "pdf", "type": "report"}
HEADERS_ANY = {"x-match": "any", "format": "pdf", "type": "report"}


@pytest.mark.parametrize("binding,headers,routed", [
    (HEADERS_ALL, {"format": "pdf", "type": "report"}, True),
    (HEADERS_ALL, {"format": "pdf", "type": "report", "extra": 1}, True),
    (HEADERS_ALL, {"format": "pdf"}, False),
    (HEADERS_ALL, {"format": "pdf", "type": "log"}, False),
    (HEADERS_ALL, None, False),
    (HEADERS_ANY, {"format": "pdf"}, True),
    (HEADERS_ANY, {"type": "report", "format": "zip"}, True),
    (HEADERS_ANY, {"format": "zip"}, False),
    (HEADERS_ANY, None, False),
    # x-match defaults to all.
    ({"format": "pdf", "type": "report"}, {"format": "pdf"}, False),
    ({"format": "pdf", "type": "report"}, {"format": "pdf", "type": "report"}, True),
    # Binding keys starting with x- take no part in matching.
    ({"x-match": "all", "x-tag": "ignored", "format": "pdf"}, {"format": "pdf"}, True),
    ({"x-match": "any", "x-tag": "ignored"}, {"x-tag": "ignored"}, False),
    # Values compare with their types: the integer 1 is not the string "1".
    ({"x-match": "all", "n": 1}, {"n": 1}, True),
    ({"x-match": "all", "n": 1}, {"n": "1"}, False),
], ids=["all-exact", "all-superset", "all-missing-one", "all-wrong-value", "all-no-headers",
        "any-one", "any-one-of-two", "any-none", "any-no-headers", "default-all-partial",
        "default-all-exact", "x-keys-ignored", "any-only-x-keys", "typed-int",
        "typed-int-vs-string"])
def test_headers_exchange_matches_on_headers(amqp, binding, headers, routed):
    channel = confirmed_channel(amqp.connect())
    exchange = amqp.name("headers")
    channel.exchange_declare(exchange, "headers", auto_delete=True)
    queue = bound_queue(channel, amqp, exchange, "ignored-key", binding)
    channel.basic_publish(exchange, "any-key", b"m", pika.BasicProperties(headers=headers))
    assert get_bodies(channel, queue) == ([b"m"] if routed else [])


def test_default_exchange_routes_to_the_queue_named_by_the_key(amqp):
    channel = confirmed_channel(amqp.connect())
    queue = amqp.name("q")
    channel.queue_declare(queue, auto_delete=True)
    channel.basic_publish("", queue, b"direct to queue")
    channel.basic_publish("", queue + "-other", b"nowhere")
    assert get_bodies(channel, queue) == [b"direct to queue"]


def test_binding_to_the_default_exchange_is_refused(amqp):
    channel = amqp.connect().channel()
    queue = amqp.name("q")
    channel.queue_declare(queue, auto_delete=True)
    with channel_closed(ACCESS_REFUSED,
                        "ACCESS_REFUSED - operation not permitted on the default exchange"):
        channel.queue_bind(queue, "", "some-key")


@pytest.mark.parametrize("exchange,exchange_type", [
    ("amq.direct", "direct"), ("amq.fanout", "fanout"), ("amq.topic", "topic"),
    ("amq.headers", "headers"), ("amq.match", "headers"),
])
def test_predeclared_amq_exchanges_exist_and_route_as_their_type(amqp, exchange, exchange_type):
    channel = confirmed_channel(amqp.connect())
    channel.exchange_declare(exchange, passive=True)
    key = amqp.name("key")
    arguments = {"x-match": "all", "k": key} if exchange_type == "headers" else None
    queue = bound_queue(channel, amqp, exchange, {"topic": key + ".#"}.get(exchange_type, key),
                        arguments)
    channel.basic_publish(exchange, key, b"m", pika.BasicProperties(headers={"k": key}))
    assert get_bodies(channel, queue) == [b"m"]
    channel.queue_unbind(queue, exchange, {"topic": key + ".#"}.get(exchange_type, key),
                         arguments)


def test_exchange_declare_is_idempotent_and_passive_declare_finds_it(amqp):
    channel = amqp.connect().channel()
    exchange = amqp.name("ex")
    channel.exchange_declare(exchange, "topic", durable=False, auto_delete=False)
    channel.exchange_declare(exchange, "topic", durable=False, auto_delete=False)
    channel.exchange_declare(exchange, passive=True)
    # A passive declare ignores type and flags.
    channel.exchange_declare(exchange, "fanout", passive=True, durable=True)
    channel.exchange_delete(exchange)


def test_passive_declare_of_missing_exchange_closes_channel_not_found(amqp):
    connection = amqp.connect()
    exchange = amqp.name("missing")
    with channel_closed(NOT_FOUND, f"NOT_FOUND - no exchange '{exchange}' in vhost '/'"):
        connection.channel().exchange_declare(exchange, passive=True)
    assert connection.is_open


def test_redeclaring_exchange_with_other_type_or_durability_fails_precondition(amqp):
    connection = amqp.connect()
    exchange = amqp.name("ex")
    connection.channel().exchange_declare(exchange, "direct")
    with channel_closed(PRECONDITION_FAILED) as excinfo:
        connection.channel().exchange_declare(exchange, "fanout")
    assert excinfo.value.reply_text == (
        f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{exchange}' in vhost "
        f"'/': received 'fanout' but current is 'direct'")
    with channel_closed(PRECONDITION_FAILED, "PRECONDITION_FAILED - inequivalent arg 'durable'"):
        connection.channel().exchange_declare(exchange, "direct", durable=True)
    # The exchange is untouched.
    connection.channel().exchange_declare(exchange, "direct")


def test_declaring_a_new_amq_prefixed_exchange_is_refused(amqp):
    with channel_closed(ACCESS_REFUSED) as excinfo:
        amqp.connect().channel().exchange_declare("amq.foo", "direct", durable=True)
    assert excinfo.value.reply_text == (
        "ACCESS_REFUSED - exchange name 'amq.foo' contains reserved prefix 'amq.*'")


def test_redeclaring_a_predeclared_exchange_must_match_it(amqp):
    connection = amqp.connect()
    # amq.direct is durable and of type direct: an equivalent declare is fine ...
    connection.channel().exchange_declare("amq.direct", "direct", durable=True)
    # ... any other is the usual inequivalence, not a refusal for the prefix.
    with channel_closed(PRECONDITION_FAILED, "PRECONDITION_FAILED - inequivalent arg 'type'"):
        connection.channel().exchange_declare("amq.direct", "fanout", durable=True)


def test_unknown_exchange_type_closes_connection_command_invalid(amqp):
    exchange = amqp.name("ex")
    with connection_closed(COMMAND_INVALID,
                           "COMMAND_INVALID - unknown exchange type 'no-such-type'"):
        amqp.connect().channel().exchange_declare(exchange, "no-such-type")


def test_exchange_delete_removes_it_and_its_bindings(amqp):
    connection = amqp.connect()
    channel = confirmed_channel(connection)
    exchange = amqp.name("ex")
    channel.exchange_declare(exchange, "fanout")
    queue = bound_queue(channel, amqp, exchange)
    channel.exchange_delete(exchange)
    with channel_closed(NOT_FOUND):
        connection.channel().exchange_declare(exchange, passive=True)
    # Re-created, it has no bindings left.
    channel.exchange_declare(exchange, "fanout")
    channel.basic_publish(exchange, "", b"m")
    assert get_bodies(channel, queue) == []
    # Deleting an exchange that does not exist is not an error in RabbitMQ.
    channel.exchange_delete(amqp.name("never-declared"))


def test_exchange_delete_if_unused_fails_while_bound(amqp):
    connection = amqp.connect()
    channel = connection.channel()
    exchange = amqp.name("ex")
    channel.exchange_declare(exchange, "direct")
    queue = bound_queue(channel, amqp, exchange, "k")
    with channel_closed(PRECONDITION_FAILED) as excinfo:
        channel.exchange_delete(exchange, if_unused=True)
    assert excinfo.value.reply_text == (
        f"PRECONDITION_FAILED - exchange '{exchange}' in vhost '/' in use")
    channel = connection.channel()
    channel.queue_unbind(queue, exchange, "k")
    channel.exchange_delete(exchange, if_unused=True)
    with channel_closed(NOT_FOUND):
        channel.exchange_declare(exchange, passive=True)


def test_auto_delete_exchange_goes_when_its_last_binding_does(amqp):
    connection = amqp.connect()
    channel = connection.channel()
    exchange = amqp.name("ex")
    channel.exchange_declare(exchange, "direct", auto_delete=True)
    queue = bound_queue(channel, amqp, exchange, "k")
    channel.exchange_declare(exchange, passive=True)
    channel.queue_unbind(queue, exchange, "k")
    with channel_closed(NOT_FOUND):
        channel.exchange_declare(exchange, passive=True)


def test_bind_to_missing_exchange_or_queue_is_not_found(amqp):
    connection = amqp.connect()
    channel = connection.channel()
    queue = amqp.name("q")
    channel.queue_declare(queue, auto_delete=True)
    missing = amqp.name("missing")
    with channel_closed(NOT_FOUND, f"NOT_FOUND - no exchange '{missing}' in vhost '/'"):
        channel.queue_bind(queue, missing, "k")
    with channel_closed(NOT_FOUND, f"NOT_FOUND - no queue '{missing}' in vhost '/'"):
        connection.channel().queue_bind(missing, "amq.direct", "k")


def test_queue_unbind_stops_routing_and_unbinding_twice_is_fine(amqp):
    channel = confirmed_channel(amqp.connect())
    exchange = amqp.name("ex")
    channel.exchange_declare(exchange, "direct", auto_delete=True)
    queue = bound_queue(channel, amqp, exchange, "k1")
    channel.queue_bind(queue, exchange, "k2")
    channel.basic_publish(exchange, "k1", b"before")
    channel.queue_unbind(queue, exchange, "k1")
    channel.queue_unbind(queue, exchange, "k1")
    channel.basic_publish(exchange, "k1", b"after")
    channel.basic_publish(exchange, "k2", b"other binding")
    assert get_bodies(channel, queue) == [b"before", b"other binding"]


def test_headers_binding_is_unbound_by_its_arguments(amqp):
    channel = confirmed_channel(amqp.connect())
    exchange = amqp.name("hx")
    channel.exchange_declare(exchange, "headers", auto_delete=True)
    queue = bound_queue(channel, amqp, exchange, "", {"x-match": "any", "a": "1"})
    channel.queue_bind(queue, exchange, "", {"x-match": "any", "b": "2"})
    channel.queue_unbind(queue, exchange, "", {"x-match": "any", "a": "1"})
    channel.basic_publish(exchange, "", b"a", pika.BasicProperties(headers={"a": "1"}))
    channel.basic_publish(exchange, "", b"b", pika.BasicProperties(headers={"b": "2"}))
    assert get_bodies(channel, queue) == [b"b"]


def test_mandatory_publish_that_routes_nowhere_is_returned_no_route(amqp):
    connection = amqp.connect()
    channel = connection.channel()
    returned = []
    channel.add_on_return_callback(lambda _ch, method, props, body:
                                   returned.append((method, props, body)))
    exchange = amqp.name("ex")
    channel.exchange_declare(exchange, "direct", auto_delete=True)
    bound_queue(channel, amqp, exchange, "bound")
    properties = pika.BasicProperties(message_id="m-1", headers={"h": "v"})
    channel.basic_publish(exchange, "unbound", b"lost", properties, mandatory=True)
    channel.basic_publish(exchange, "bound", b"routed", mandatory=True)
    channel.basic_publish(exchange, "unbound", b"dropped silently")  # not mandatory
    wait_until(connection, lambda: returned, what="basic.return")
    idle(connection, 0.2)
    assert len(returned) == 1
    method, props, body = returned[0]
    assert (method.reply_code, method.reply_text) == (NO_ROUTE, "NO_ROUTE")
    assert (method.exchange, method.routing_key, body) == (exchange, "unbound", b"lost")
    assert (props.message_id, props.headers) == ("m-1", {"h": "v"})


def test_mandatory_publish_to_default_exchange_without_queue_is_returned(amqp):
    connection = amqp.connect()
    channel = connection.channel()
    returned = []
    channel.add_on_return_callback(lambda _ch, method, _props, _body: returned.append(method))
    channel.basic_publish("", amqp.name("no-such-queue"), b"x", mandatory=True)
    wait_until(connection, lambda: returned, what="basic.return")
    assert returned[0].reply_code == NO_ROUTE


def test_unroutable_mandatory_publish_in_confirm_mode_is_returned_then_acked(amqp):
    # The broker sends basic.return and then basic.ack for it; pika turns that into
    # UnroutableError carrying the returned message.
    channel = confirmed_channel(amqp.connect())
    with pytest.raises(pika.exceptions.UnroutableError) as excinfo:
        channel.basic_publish("amq.direct", amqp.name("unbound"), b"lost", mandatory=True)
    [message] = excinfo.value.messages
    assert message.method.reply_code == NO_ROUTE
    assert message.body == b"lost"
    # An unroutable publish that is not mandatory is simply acked.
    channel.basic_publish("amq.direct", amqp.name("unbound"), b"dropped")
    roundtrip(channel)


def test_exchange_to_exchange_binding_routes_through_both(amqp):
    channel = amqp.connect().channel()
    upstream, downstream = amqp.name("up"), amqp.name("down")
    queue = amqp.name("e2e")
    channel.exchange_declare(upstream, "topic", auto_delete=False)
    channel.exchange_declare(downstream, "direct", auto_delete=False)
    channel.queue_declare(queue, auto_delete=True)
    channel.exchange_bind(destination=downstream, source=upstream, routing_key="orders.#")
    channel.queue_bind(queue, downstream, "orders.eu")
    channel.basic_publish(upstream, "orders.eu", b"through both")
    channel.basic_publish(upstream, "orders.us", b"stops at the direct exchange")
    channel.basic_publish(upstream, "invoices.eu", b"stops at the topic exchange")
    method, _properties, body = channel.basic_get(queue, auto_ack=True)
    assert body == b"through both"
    assert method.exchange == upstream
    assert channel.basic_get(queue, auto_ack=True)[0] is None
    channel.exchange_unbind(destination=downstream, source=upstream, routing_key="orders.#")
    channel.basic_publish(upstream, "orders.eu", b"unbound")
    assert channel.basic_get(queue, auto_ack=True)[0] is None
    channel.exchange_delete(upstream)
    channel.exchange_delete(downstream)
