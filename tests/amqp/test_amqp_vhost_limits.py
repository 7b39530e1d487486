"""Virtual host limits: `max-connections` refused at connection.open (530 NOT_ALLOWED) and
`max-queues` refused at the declaration of a new queue (406 PRECONDITION_FAILED), with
RabbitMQ's reply texts; a limit of 0, lowering a limit below what is open, and clearing limits.

Limits are set on '/' through the management API on both brokers (`/api/vhost-limits`, one
limit per path), and cleared again after each test: the RabbitMQ node, and its vhost, are
shared by the whole session.

RabbitMQ counts a vhost's connections from its connection tracking, which its connection
created/closed events update asynchronously; so before a refusal is expected the test waits
until the broker counts the connections it holds, and other tests' queues may still be in the
shared vhost: the queue limits are set relative to the queues already there.
"""

from __future__ import annotations

import time
from urllib.parse import quote

import pika
import pika.exceptions
import pytest
import requests

from . import raw_amqp
from .amqp_expect import NOT_ALLOWED, NOT_FOUND, PRECONDITION_FAILED, channel_closed, roundtrip

VHOST = "/"
MAX_CONNECTIONS = "max-connections"
MAX_QUEUES = "max-queues"
SETTLE_TIMEOUT_S = 10


def connection_limit_text(limit: int, user: str = "guest") -> str:
    return (f"NOT_ALLOWED - access to vhost '{VHOST}' refused for user '{user}': "
            f"connection limit ({limit}) is reached")


def queue_limit_text(queue: str, limit: int) -> str:
    return (f"PRECONDITION_FAILED - cannot declare queue '{queue}': "
            f"queue limit in vhost '{VHOST}' ({limit}) is reached")


class VhostLimits:
    """The limits of '/' and what they count, on either broker."""

    def __init__(self, amqp):
        self.amqp = amqp
        self.rabbitmq = amqp.kind == "rabbitmq"

    # -- administration -----------------------------------------------------------------------

    def _api(self, method: str, path: str, body=None) -> requests.Response:
        return self.amqp.api(method, path, body)

    def _eval(self, expression: str) -> str:
        return self.amqp.node.ctl("eval", expression).stdout.strip()

    def set(self, **limits: int):
        """Sets exactly these limits (max_connections=, max_queues=), clearing the others."""
        wanted = {name.replace("_", "-"): value for name, value in limits.items()}
        for name in (MAX_CONNECTIONS, MAX_QUEUES):
            path = f"vhost-limits/{quote(VHOST, safe='')}/{name}"
            if name in wanted:
                self._api("PUT", path, {"value": wanted[name]})
            else:
                self._api("DELETE", path)

    def clear(self):
        for name in (MAX_CONNECTIONS, MAX_QUEUES):
            self._api("DELETE", f"vhost-limits/{quote(VHOST, safe='')}/{name}")

    def listed(self) -> dict[str, int]:
        """The limits the broker lists for '/'."""
        for entry in self._api("GET", "vhost-limits").json():
            if entry["vhost"] == VHOST:
                # RabbitMQ keeps the vhost listed once its limits are cleared, with an empty
                # object encoded as `[]`; Sluice answers `{}`.
                if self.rabbitmq and entry["value"] == []:
                    return {}
                return entry["value"]
        return {}

    # -- what the limits count ----------------------------------------------------------------

    def connection_count(self) -> int:
        """Connections of '/' the broker counts against max-connections."""
        if self.rabbitmq:
            return int(self._eval(
                'rabbit_connection_tracking:count_tracked_items_in({vhost, <<"/">>}).'))
        # Only connections past connection.open count (they have a user): a socket still in
        # its handshake, or a refused one lingering until the client hangs up, does not.
        return sum(1 for c in self._api("GET", "connections").json()
                   if c["protocol"] == "amqp" and c.get("user"))

    def queue_count(self) -> int:
        if self.rabbitmq:
            return int(self._eval('rabbit_amqqueue:count(<<"/">>).'))
        return len(self._api("GET", "queues").json())

    def wait_for_connections(self, count: int):
        """Until the broker counts `count` connections (RabbitMQ tracks them asynchronously)."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while (counted := self.connection_count()) != count:
            assert time.monotonic() < deadline, f"the broker counts {counted} connections, " \
                                                f"not {count}"
            time.sleep(0.1)

    def settled_queue_count(self) -> int:
        """The vhost's queue count once two reads agree (other tests' exclusive and
        auto-delete queues go asynchronously on RabbitMQ)."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        count = self.queue_count()
        while True:
            time.sleep(0.2)
            again = self.queue_count()
            if again == count or time.monotonic() > deadline:
                return again
            count = again


@pytest.fixture
def limits(amqp):
    """Sets limits on '/' and clears them after the test (before `amqp` closes its connections
    and deletes its queues)."""
    vhost_limits = VhostLimits(amqp)
    yield vhost_limits
    vhost_limits.clear()


def refused_open(amqp) -> tuple[int, str, tuple[int, int]]:
    """Logs in as guest by hand and opens '/'; the broker must close the connection:
    (code, text, (class id, method id))."""
    with raw_amqp.RawConnection(amqp.host, amqp.port) as raw:
        raw.login()
        raw.tune()
        raw.open(VHOST)
        code, text, class_id, method_id = raw.expect_connection_close()
    return code, text, (class_id, method_id)


def assert_connection_refused(amqp, limit: int):
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as excinfo:
        amqp.connect()
    assert "(530)" in str(excinfo.value), excinfo.value
    assert refused_open(amqp) == (NOT_ALLOWED, connection_limit_text(limit),
                                  raw_amqp.CONNECTION_OPEN)


# -- max-connections --------------------------------------------------------------------------

def test_connection_beyond_max_connections_is_refused_at_open_with_530(amqp, limits):
    limits.wait_for_connections(0)  # the connections of earlier tests are gone
    limits.set(max_connections=2)
    first, second = amqp.connect(), amqp.connect()
    limits.wait_for_connections(2)
    assert_connection_refused(amqp, 2)
    # The refused attempts took no slot, and the open connections are untouched.
    assert limits.connection_count() == 2
    roundtrip(first.channel())
    roundtrip(second.channel())
    # Closing one lets one new connection in, and only one.
    first.close()
    limits.wait_for_connections(1)
    third = amqp.connect()
    roundtrip(third.channel())
    limits.wait_for_connections(2)
    assert_connection_refused(amqp, 2)


def test_lowering_max_connections_keeps_open_connections_and_zero_refuses_all(amqp, limits):
    limits.wait_for_connections(0)
    connection = amqp.connect()
    limits.wait_for_connections(1)
    limits.set(max_connections=0)
    assert_connection_refused(amqp, 0)
    # The limit is checked at connection.open only: the open connection goes on working.
    assert connection.is_open
    channel = connection.channel()
    queue = amqp.name("q")
    channel.queue_declare(queue)
    channel.basic_publish("", queue, b"still here")
    assert channel.basic_get(queue, auto_ack=True)[2] == b"still here"


# -- max-queues -------------------------------------------------------------------------------

def test_new_queue_beyond_max_queues_is_refused_with_406(amqp, limits):
    connection = amqp.connect()
    channel = connection.channel()
    limit = limits.settled_queue_count() + 3
    limits.set(max_queues=limit)
    queues = [amqp.name("q") for _ in range(3)]
    for queue in queues:
        assert channel.queue_declare(queue).method.queue == queue
    refused = amqp.name("q")
    with channel_closed(PRECONDITION_FAILED) as excinfo:
        channel.queue_declare(refused)
    assert excinfo.value.reply_text == queue_limit_text(refused, limit)
    # The connection survives the channel error; the refused queue was not made.
    channel = connection.channel()
    with channel_closed(NOT_FOUND, f"NOT_FOUND - no queue '{refused}' in vhost '/'"):
        channel.queue_declare(refused, passive=True)
    # Redeclaring, or passively declaring, a queue that exists is no new queue.
    channel = connection.channel()
    assert channel.queue_declare(queues[0]).method.queue == queues[0]
    assert channel.queue_declare(queues[1], passive=True).method.queue == queues[1]
    # Deleting one makes room for one.
    channel.queue_delete(queues[2])
    assert channel.queue_declare(refused).method.queue == refused
    another = amqp.name("q")
    with channel_closed(PRECONDITION_FAILED) as excinfo:
        channel.queue_declare(another)
    assert excinfo.value.reply_text == queue_limit_text(another, limit)


def test_server_named_queue_beyond_max_queues_is_refused_under_its_generated_name(amqp, limits):
    channel = amqp.connect().channel()
    limit = limits.settled_queue_count()
    limits.set(max_queues=limit)
    with channel_closed(PRECONDITION_FAILED) as excinfo:
        channel.queue_declare("", exclusive=True)
    text = excinfo.value.reply_text
    assert text.startswith("PRECONDITION_FAILED - cannot declare queue 'amq.gen-"), text
    assert text.endswith(f"': queue limit in vhost '/' ({limit}) is reached"), text


def test_max_queues_zero_refuses_every_new_queue_but_not_a_redeclare(amqp, limits):
    connection = amqp.connect()
    channel = connection.channel()
    existing = amqp.name("q")
    channel.queue_declare(existing)
    limits.set(max_queues=0)
    assert channel.queue_declare(existing).method.queue == existing
    refused = amqp.name("q")
    with channel_closed(PRECONDITION_FAILED) as excinfo:
        channel.queue_declare(refused)
    assert excinfo.value.reply_text == queue_limit_text(refused, 0)


# -- listing and clearing ---------------------------------------------------------------------

def test_cleared_limits_are_lifted(amqp, limits):
    limits.wait_for_connections(0)
    connection = amqp.connect()
    channel = connection.channel()
    queue_limit = limits.settled_queue_count()
    limits.set(max_connections=1, max_queues=queue_limit)
    assert limits.listed() == {MAX_CONNECTIONS: 1, MAX_QUEUES: queue_limit}
    limits.wait_for_connections(1)
    assert_connection_refused(amqp, 1)
    refused = amqp.name("q")
    with channel_closed(PRECONDITION_FAILED) as excinfo:
        channel.queue_declare(refused)
    assert excinfo.value.reply_text == queue_limit_text(refused, queue_limit)
    limits.clear()
    assert limits.listed() == {}
    channel = connection.channel()
    assert channel.queue_declare(refused).method.queue == refused
    roundtrip(amqp.connect().channel())
    roundtrip(amqp.connect().channel())

