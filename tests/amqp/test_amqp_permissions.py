"""Users and their permissions: logins refused, vhost access, and RabbitMQ's per-vhost
configure/write/read regular expressions checked on each method, with RabbitMQ's reply codes
and texts.

Each test makes its own users (unique names) with permissions on '/' through the broker's
management HTTP API as guest (RabbitMQ's, and Sluice's which follows it); on RabbitMQ they are
deleted afterwards, the node being shared. Queues and exchanges the users act on are usually declared by guest first, so that a
refusal is the only thing that differs between two calls.
"""

from __future__ import annotations

import uuid
from urllib.parse import quote

import pika
import pika.exceptions
import pytest

from . import raw_amqp
from .amqp_expect import (ACCESS_REFUSED, NOT_ALLOWED, NOT_FOUND, channel_closed, get_bodies,
                          roundtrip)

AUTH_ERRORS = (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError)
LOGIN_REFUSED_PLAIN = ("ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. "
                       "For details see the broker logfile.")
ALL = (".*", ".*", ".*")
VHOST = "/"


def refused(access: str, kind: str, name: str, user: str) -> str:
    """RabbitMQ's text for a refused `access` (configure, write or read) to a resource. The
    reference, RabbitMQ 3.10 (Debian 12), does not name the permission in it; later releases
    do ("ACCESS_REFUSED - configure access to queue ..."). `access` says which one is checked."""
    assert access in ("configure", "write", "read")
    return (f"ACCESS_REFUSED - access to {kind} '{name}' in vhost '{VHOST}' refused "
            f"for user '{user}'")


class User:
    def __init__(self, amqp, name: str, password: str):
        self.amqp = amqp
        self.name = name
        self.password = password

    def credentials(self, password: str | None = None) -> pika.PlainCredentials:
        return pika.PlainCredentials(self.name, self.password if password is None else password)

    def connect(self) -> pika.BlockingConnection:
        return self.amqp.connect(credentials=self.credentials())

    def channel(self):
        return self.connect().channel()


class Users:
    """Users of the broker under test, with permissions on '/', made through its management
    HTTP API (as guest, an administrator on loopback)."""

    def __init__(self, amqp):
        self.amqp = amqp
        self.created: list[str] = []

    def add(self, permissions: tuple[str, str, str] | None = ALL) -> User:
        """A new user; `permissions` (configure, write, read) on '/', or None for none."""
        name = f"perm-{uuid.uuid4().hex[:8]}"
        password = f"{name}-pw"
        self.amqp.api("PUT", f"users/{name}", {"password": password, "tags": ""})
        self.created.append(name)
        if permissions is not None:
            self.set_permissions(name, *permissions)
        return User(self.amqp, name, password)

    def set_permissions(self, name: str, configure: str, write: str, read: str):
        self.amqp.api("PUT", f"permissions/{quote(VHOST, safe='')}/{name}",
                      {"configure": configure, "write": write, "read": read})

    def clear_permissions(self, name: str):
        self.amqp.api("DELETE", f"permissions/{quote(VHOST, safe='')}/{name}")

    def cleanup(self):
        # Sluice's broker is the test's own; RabbitMQ's node is shared by the session.
        if self.amqp.kind != "rabbitmq":
            return
        node = self.amqp.node
        if node.process is None or node.process.poll() is not None:
            return
        for name in self.created:
            self.amqp.api("DELETE", f"users/{name}", ok=(204, 404))


@pytest.fixture
def users(amqp):
    users = Users(amqp)
    yield users
    users.cleanup()


@pytest.fixture
def guest(amqp):
    """A channel of guest, who may do everything: sets up what the users act on, and looks."""
    return amqp.connect().channel()


def assert_queue_missing(amqp, queue: str):
    channel = amqp.connect().channel()
    with channel_closed(NOT_FOUND, f"NOT_FOUND - no queue '{queue}' in vhost '/'"):
        channel.queue_declare(queue, passive=True)


def assert_channel_usable(connection):
    """A channel error leaves the connection open: a new channel works."""
    assert connection.is_open
    roundtrip(connection.channel())


# -- logins and vhost access ------------------------------------------------------------------

@pytest.mark.parametrize("who", ["wrong password", "unknown user"])
def test_refused_login_is_access_refused_403(amqp, users, who):
    user = users.add()
    name, password = ((user.name, "not-the-password") if who == "wrong password"
                      else (f"nobody-{uuid.uuid4().hex[:8]}", user.password))
    with pytest.raises(AUTH_ERRORS):
        amqp.connect(credentials=pika.PlainCredentials(name, password))
    with raw_amqp.RawConnection(amqp.host, amqp.port) as raw:
        raw.login(name, password)
        code, text, class_id, method_id = raw.expect_connection_close()
    assert (code, text) == (ACCESS_REFUSED, LOGIN_REFUSED_PLAIN)
    assert (class_id, method_id) == (0, 0)  # RabbitMQ names no failing method here
    # The right password still works.
    assert user.connect().is_open


def refused_open(amqp, user: User, vhost: str = VHOST) -> tuple[int, str, tuple[int, int]]:
    """Logs in by hand and opens `vhost`; the broker must close the connection:
    (code, text, (class id, method id))."""
    with raw_amqp.RawConnection(amqp.host, amqp.port) as raw:
        raw.login(user.name, user.password)
        raw.tune()
        raw.open(vhost)
        code, text, class_id, method_id = raw.expect_connection_close()
    return code, text, (class_id, method_id)


def test_user_without_permissions_on_the_vhost_gets_not_allowed_530(amqp, users):
    user = users.add(permissions=None)
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as excinfo:
        user.connect()
    assert "(530)" in str(excinfo.value), excinfo.value
    code, text, method = refused_open(amqp, user)
    assert (code, text) == (NOT_ALLOWED,
                            f"NOT_ALLOWED - access to vhost '/' refused for user '{user.name}'")
    assert method == raw_amqp.CONNECTION_OPEN


def test_permissions_cleared_then_set_again_apply_to_new_connections(amqp, users):
    user = users.add()
    assert user.connect().is_open
    users.clear_permissions(user.name)
    code, text, _method = refused_open(amqp, user)
    assert (code, text) == (NOT_ALLOWED,
                            f"NOT_ALLOWED - access to vhost '/' refused for user '{user.name}'")
    users.set_permissions(user.name, "^app-", ".*", ".*")
    channel = user.channel()
    channel.queue_declare(amqp.name("app"))
    with channel_closed(ACCESS_REFUSED):
        channel.queue_declare(amqp.name("other"))


def test_empty_patterns_open_the_vhost_but_allow_nothing(amqp, users, guest):
    """An empty pattern matches nothing; having one still gives access to the vhost."""
    queue = amqp.name("q")
    guest.queue_declare(queue)
    user = users.add(permissions=("", "", ""))
    connection = user.connect()
    channel = connection.channel()
    with channel_closed(ACCESS_REFUSED) as excinfo:
        channel.queue_declare(amqp.name("app"))
    assert excinfo.value.reply_text.startswith("ACCESS_REFUSED - access to queue ")
    channel = connection.channel()
    channel.basic_publish("", queue, b"nope")
    with channel_closed(ACCESS_REFUSED, refused("write", "exchange", "amq.default", user.name)):
        roundtrip(channel)
    channel = connection.channel()
    with channel_closed(ACCESS_REFUSED, refused("read", "queue", queue, user.name)):
        channel.basic_get(queue)
    assert_channel_usable(connection)


# -- configure --------------------------------------------------------------------------------

def test_configure_covers_queue_declare_of_matching_names_only(amqp, users):
    user = users.add(permissions=("^app-", ".*", ".*"))
    connection = user.connect()
    channel = connection.channel()
    allowed, other = amqp.name("app"), amqp.name("other")
    channel.queue_declare(allowed)
    with channel_closed(ACCESS_REFUSED) as excinfo:
        channel.queue_declare(other)
    assert excinfo.value.reply_text == refused("configure", "queue", other, user.name)
    assert_queue_missing(amqp, other)
    # The connection survives the channel error, and write and read are untouched.
    channel = connection.channel()
    channel.basic_publish("", allowed, b"ok")
    assert get_bodies(channel, allowed) == [b"ok"]


def test_configure_is_checked_on_redeclare_but_not_on_passive_declare(amqp, users, guest):
    other = amqp.name("other")
    guest.queue_declare(other)
    guest.basic_publish("", other, b"m")
    user = users.add(permissions=("^app-", ".*", ".*"))
    connection = user.connect()
    channel = connection.channel()
    assert channel.queue_declare(other, passive=True).method.message_count == 1
    with channel_closed(ACCESS_REFUSED, refused("configure", "queue", other, user.name)):
        channel.queue_declare(other)
    assert_channel_usable(connection)


def test_configure_of_a_server_named_queue_is_checked_on_amq_gen(amqp, users):
    refused_user = users.add(permissions=("^app-", ".*", ".*"))
    channel = refused_user.channel()
    with channel_closed(ACCESS_REFUSED) as excinfo:
        channel.queue_declare("", exclusive=True)
    text = excinfo.value.reply_text
    assert text.startswith("ACCESS_REFUSED - access to queue 'amq.gen-"), text
    assert text.endswith(f"' in vhost '/' refused for user '{refused_user.name}'"), text
    allowed_user = users.add(permissions=(r"^amq\.gen-", ".*", ".*"))
    queue = allowed_user.channel().queue_declare("", exclusive=True).method.queue
    assert queue.startswith("amq.gen-"), queue


def test_patterns_are_not_anchored(amqp, users):
    user = users.add(permissions=("app", ".*", ".*"))
    channel = user.channel()
    inside = amqp.name("my-app")
    channel.queue_declare(inside)
    other = amqp.name("other")
    with channel_closed(ACCESS_REFUSED, refused("configure", "queue", other, user.name)):
        channel.queue_declare(other)


def test_queue_delete_needs_configure(amqp, users, guest):
    other = amqp.name("other")
    guest.queue_declare(other)
    user = users.add(permissions=("^app-", ".*", ".*"))
    connection = user.connect()
    channel = connection.channel()
    allowed = amqp.name("app")
    channel.queue_declare(allowed)
    channel.queue_delete(allowed)
    assert_queue_missing(amqp, allowed)
    with channel_closed(ACCESS_REFUSED, refused("configure", "queue", other, user.name)):
        channel.queue_delete(other)
    guest.queue_declare(other, passive=True)  # still there
    # The check comes before the lookup: a queue that does not exist is refused the same way.
    missing = amqp.name("other")
    channel = connection.channel()
    with channel_closed(ACCESS_REFUSED, refused("configure", "queue", missing, user.name)):
        channel.queue_delete(missing)


def test_exchange_declare_and_delete_need_configure(amqp, users, guest):
    guest_exchange = amqp.name("other")
    guest.exchange_declare(guest_exchange, "direct")
    user = users.add(permissions=("^app-", ".*", ".*"))
    connection = user.connect()
    channel = connection.channel()
    allowed = amqp.name("app")
    channel.exchange_declare(allowed, "fanout")
    channel.exchange_delete(allowed)
    other = amqp.name("other")
    with channel_closed(ACCESS_REFUSED, refused("configure", "exchange", other, user.name)):
        channel.exchange_declare(other, "fanout")
    channel = connection.channel()
    channel.exchange_declare(guest_exchange, "direct", passive=True)  # passive: no check
    with channel_closed(ACCESS_REFUSED,
                        refused("configure", "exchange", guest_exchange, user.name)):
        channel.exchange_declare(guest_exchange, "direct")
    channel = connection.channel()
    with channel_closed(ACCESS_REFUSED,
                        refused("configure", "exchange", guest_exchange, user.name)):
        channel.exchange_delete(guest_exchange)
    guest.exchange_declare(guest_exchange, "direct", passive=True)  # still there


# -- write ------------------------------------------------------------------------------------

@pytest.mark.parametrize("exchange", ["", "amq.direct", "named"])
def test_publish_needs_write_on_the_exchange(amqp, users, guest, exchange):
    queue = amqp.name("q")
    guest.queue_declare(queue)
    if exchange == "named":
        exchange = amqp.name("x")
        guest.exchange_declare(exchange, "direct")
    if exchange:
        guest.queue_bind(queue, exchange, routing_key=queue)
    user = users.add(permissions=(".*", "", ".*"))
    connection = user.connect()
    channel = connection.channel()
    channel.basic_publish(exchange, queue, b"refused")
    with channel_closed(ACCESS_REFUSED,
                        refused("write", "exchange", exchange or "amq.default", user.name)):
        roundtrip(channel)
    assert_channel_usable(connection)
    assert get_bodies(guest, queue) == []


def test_the_default_exchange_is_named_amq_default_in_write_patterns(amqp, users, guest):
    queue = amqp.name("q")
    guest.queue_declare(queue)
    guest.queue_bind(queue, "amq.direct", routing_key=queue)
    user = users.add(permissions=(".*", r"^amq\.default$", ".*"))
    channel = user.channel()
    channel.confirm_delivery()
    channel.basic_publish("", queue, b"through the default exchange")
    with channel_closed(ACCESS_REFUSED, refused("write", "exchange", "amq.direct", user.name)):
        channel.basic_publish("amq.direct", queue, b"refused")
    assert get_bodies(guest, queue) == [b"through the default exchange"]


def test_publish_write_check_comes_before_the_exchange_lookup(amqp, users):
    user = users.add(permissions=(".*", "^app-", ".*"))
    connection = user.connect()
    channel = connection.channel()
    refused_missing = amqp.name("other")
    channel.basic_publish(refused_missing, "k", b"m")
    with channel_closed(ACCESS_REFUSED, refused("write", "exchange", refused_missing, user.name)):
        roundtrip(channel)
    allowed_missing = amqp.name("app")
    channel = connection.channel()
    channel.basic_publish(allowed_missing, "k", b"m")
    with channel_closed(NOT_FOUND, f"NOT_FOUND - no exchange '{allowed_missing}' in vhost '/'"):
        roundtrip(channel)


# -- read -------------------------------------------------------------------------------------

@pytest.mark.parametrize("operation", ["get", "consume", "purge"])
def test_get_consume_and_purge_need_read_on_the_queue(amqp, users, guest, operation):
    queue = amqp.name("q")
    guest.queue_declare(queue)
    guest.basic_publish("", queue, b"kept")
    user = users.add(permissions=(".*", ".*", "^$"))
    connection = user.connect()
    channel = connection.channel()
    act = {"get": lambda: channel.basic_get(queue),
           "consume": lambda: channel.basic_consume(queue, lambda *_: None),
           "purge": lambda: channel.queue_purge(queue)}[operation]
    with channel_closed(ACCESS_REFUSED, refused("read", "queue", queue, user.name)):
        act()
    assert_channel_usable(connection)
    assert get_bodies(guest, queue) == [b"kept"]


def test_read_check_comes_before_the_queue_lookup(amqp, users):
    user = users.add(permissions=(".*", ".*", "^app-"))
    connection = user.connect()
    channel = connection.channel()
    refused_missing = amqp.name("other")
    with channel_closed(ACCESS_REFUSED, refused("read", "queue", refused_missing, user.name)):
        channel.basic_get(refused_missing)
    allowed_missing = amqp.name("app")
    channel = connection.channel()
    with channel_closed(NOT_FOUND, f"NOT_FOUND - no queue '{allowed_missing}' in vhost '/'"):
        channel.basic_get(allowed_missing)


def test_read_on_matching_queues_only(amqp, users, guest):
    allowed, other = amqp.name("app"), amqp.name("other")
    for queue in (allowed, other):
        guest.queue_declare(queue)
        guest.basic_publish("", queue, queue.encode())
    user = users.add(permissions=(".*", ".*", "^app-"))
    connection = user.connect()
    channel = connection.channel()
    assert get_bodies(channel, allowed) == [allowed.encode()]
    with channel_closed(ACCESS_REFUSED, refused("read", "queue", other, user.name)):
        channel.basic_consume(other, lambda *_: None)


# -- bindings ---------------------------------------------------------------------------------

@pytest.mark.parametrize("action", ["bind", "unbind"])
@pytest.mark.parametrize("refuse", ["write on the queue", "read on the exchange", "both"])
def test_queue_bind_needs_write_on_the_queue_and_read_on_the_exchange(amqp, users, guest,
                                                                      action, refuse):
    queue = amqp.name("q")
    guest.queue_declare(queue)
    guest.queue_bind(queue, "amq.direct", routing_key="bound")
    write = "^$" if refuse in ("write on the queue", "both") else ".*"
    read = "^$" if refuse in ("read on the exchange", "both") else ".*"
    user = users.add(permissions=(".*", write, read))
    connection = user.connect()
    channel = connection.channel()
    # Write on the queue is checked first.
    expected = (refused("read", "exchange", "amq.direct", user.name)
                if refuse == "read on the exchange"
                else refused("write", "queue", queue, user.name))
    with channel_closed(ACCESS_REFUSED, expected):
        if action == "bind":
            channel.queue_bind(queue, "amq.direct", routing_key="other-key")
        else:
            channel.queue_unbind(queue, "amq.direct", routing_key="bound")
    assert_channel_usable(connection)
    # Nothing changed: the old binding routes, the refused one does not.
    guest.confirm_delivery()
    guest.basic_publish("amq.direct", "bound", b"bound")
    guest.basic_publish("amq.direct", "other-key", b"other")
    assert get_bodies(guest, queue) == [b"bound"]


def test_queue_bind_allowed_by_write_on_the_queue_and_read_on_the_exchange(amqp, users, guest):
    queue = amqp.name("app")
    guest.queue_declare(queue)
    user = users.add(permissions=("^$", "^app-", r"^amq\.direct$"))
    channel = user.channel()
    channel.queue_bind(queue, "amq.direct", routing_key=queue)
    guest.confirm_delivery()
    guest.basic_publish("amq.direct", queue, b"routed")
    assert get_bodies(guest, queue) == [b"routed"]
    channel.queue_unbind(queue, "amq.direct", routing_key=queue)
    guest.basic_publish("amq.direct", queue, b"dropped")
    assert get_bodies(guest, queue) == []


def test_binding_to_the_default_exchange_is_refused_as_such(amqp, users, guest):
    """RabbitMQ checks write on the queue, then that no side is the default exchange, then
    read on the exchange."""
    queue = amqp.name("q")
    guest.queue_declare(queue)
    user = users.add(permissions=(".*", ".*", "^$"))
    channel = user.channel()
    with channel_closed(ACCESS_REFUSED,
                        "ACCESS_REFUSED - operation not permitted on the default exchange"):
        channel.queue_bind(queue, "", routing_key="k")


@pytest.mark.parametrize("action", ["bind", "unbind"])
@pytest.mark.parametrize("refuse", ["write on the destination", "read on the source"])
def test_exchange_bind_needs_write_on_destination_and_read_on_source(amqp, users, guest,
                                                                     action, refuse):
    source, destination = amqp.name("src"), amqp.name("dst")
    guest.exchange_declare(source, "fanout")
    guest.exchange_declare(destination, "fanout")
    if action == "unbind":
        guest.exchange_bind(destination, source)
    write, read = ((rf"^{source}$", ".*") if refuse == "write on the destination"
                   else (".*", rf"^{destination}$"))
    user = users.add(permissions=(".*", write, read))
    connection = user.connect()
    channel = connection.channel()
    expected = (refused("write", "exchange", destination, user.name)
                if refuse == "write on the destination"
                else refused("read", "exchange", source, user.name))
    with channel_closed(ACCESS_REFUSED, expected):
        if action == "bind":
            channel.exchange_bind(destination, source)
        else:
            channel.exchange_unbind(destination, source)
    assert_channel_usable(connection)
    allowed = users.add(permissions=("^$", rf"^{destination}$", rf"^{source}$"))
    channel = allowed.channel()
    if action == "bind":
        channel.exchange_bind(destination, source)
    else:
        channel.exchange_unbind(destination, source)


# -- permissions changed while connected ------------------------------------------------------

def test_changed_permissions_apply_to_the_next_connection(amqp, users):
    user = users.add(permissions=("^app-", ".*", ".*"))
    before = user.channel()
    before.queue_declare(amqp.name("app"))
    users.set_permissions(user.name, "^other-", ".*", ".*")
    channel = user.channel()
    channel.queue_declare(amqp.name("other"))
    app = amqp.name("app")
    with channel_closed(ACCESS_REFUSED, refused("configure", "queue", app, user.name)):
        channel.queue_declare(app)


def test_revoked_permission_applies_to_a_new_channel_of_an_open_connection(amqp, users):
    """RabbitMQ checks permissions on each method against its user database (a channel caches
    only the checks that passed), so a revocation reaches open connections."""
    user = users.add(permissions=(".*", ".*", ".*"))
    connection = user.connect()
    connection.channel().queue_declare(amqp.name("app"))
    users.set_permissions(user.name, "^app-", ".*", ".*")
    channel = connection.channel()
    other = amqp.name("other")
    with channel_closed(ACCESS_REFUSED, refused("configure", "queue", other, user.name)):
        channel.queue_declare(other)


def test_granted_permission_applies_to_an_open_connection(amqp, users):
    user = users.add(permissions=("^app-", ".*", ".*"))
    connection = user.connect()
    channel = connection.channel()
    channel.queue_declare(amqp.name("app"))
    users.set_permissions(user.name, ".*", ".*", ".*")
    channel.queue_declare(amqp.name("other"))
