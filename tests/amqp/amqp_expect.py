"""What the AMQP tests expect of a broker: reply codes, closes, deliveries, queue depths."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import pika
import pika.exceptions
import pytest

# Reply codes of AMQP 0-9-1 (spec section 1.1, "constants").
CONNECTION_FORCED = 320
NO_ROUTE = 312
ACCESS_REFUSED = 403
NOT_FOUND = 404
RESOURCE_LOCKED = 405
PRECONDITION_FAILED = 406
FRAME_ERROR = 501
COMMAND_INVALID = 503
CHANNEL_ERROR = 504
UNEXPECTED_FRAME = 505
NOT_ALLOWED = 530
NOT_IMPLEMENTED = 540

PERSISTENT = pika.BasicProperties(delivery_mode=2)


@contextmanager
def channel_closed(code: int, text_starts: str | None = None):
    """The block must end with the broker closing the channel with `code`."""
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
        yield excinfo
    assert excinfo.value.reply_code == code, excinfo.value
    if text_starts is not None:
        assert excinfo.value.reply_text.startswith(text_starts), excinfo.value


@contextmanager
def connection_closed(code: int, text_starts: str | None = None):
    """The block must end with the broker closing the connection with `code`."""
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as excinfo:
        yield excinfo
    assert excinfo.value.reply_code == code, excinfo.value
    if text_starts is not None:
        assert excinfo.value.reply_text.startswith(text_starts), excinfo.value


def roundtrip(channel):
    """A synchronous no-op: once it returns, the broker has handled everything sent before it
    on this channel, and a channel error caused by an asynchronous method (ack, publish) has
    been raised."""
    channel.exchange_declare("amq.direct", passive=True)


def queue_depth(channel, queue: str) -> int:
    """Ready messages (not counting unacked ones), from a passive declare."""
    return channel.queue_declare(queue, passive=True).method.message_count


def consumer_count(channel, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.consumer_count


def wait_until(connection, predicate, timeout_s: float = 5.0, what: str = "condition"):
    """Run the connection's I/O until `predicate()` holds (the timeout only bounds how long a
    failing test waits: on a loaded machine the broker may be slow)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        connection.process_data_events(time_limit=0.02)


def idle(connection, seconds: float = 0.3):
    """Run the connection's I/O for a while, to see that nothing more arrives."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        connection.process_data_events(time_limit=min(left, 0.05))


@dataclass
class Delivery:
    method: pika.spec.Basic.Deliver
    properties: pika.spec.BasicProperties
    body: bytes


class Consumer:
    """A basic.consume whose deliveries are collected in a list."""

    def __init__(self, channel, queue: str, **kw):
        self.channel = channel
        self.deliveries: list[Delivery] = []
        self.tag = channel.basic_consume(queue, self._on_message, **kw)

    def _on_message(self, _channel, method, properties, body):
        self.deliveries.append(Delivery(method, properties, body))

    @property
    def bodies(self) -> list[bytes]:
        return [d.body for d in self.deliveries]

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[Delivery]:
        wait_until(self.channel.connection, lambda: len(self.deliveries) >= count, timeout_s,
                   f"{count} deliveries (have {len(self.deliveries)})")
        return self.deliveries

    def cancel(self):
        self.channel.basic_cancel(self.tag)


def get_all(channel, queue: str, auto_ack: bool = True) -> list[tuple]:
    """basic.get until get-empty: a list of (method, properties, body)."""
    messages = []
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=auto_ack)
        if method is None:
            return messages
        messages.append((method, properties, body))


def get_bodies(channel, queue: str) -> list[bytes]:
    return [body for _method, _properties, body in get_all(channel, queue)]


def confirmed_channel(connection):
    """A channel in confirm mode: each basic_publish returns once the broker has acked it."""
    channel = connection.channel()
    channel.confirm_delivery()
    return channel


def publish_bodies(channel, exchange: str, routing_key: str, bodies, properties=None):
    for body in bodies:
        channel.basic_publish(exchange, routing_key, body, properties)
