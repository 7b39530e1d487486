"""Virtual hosts besides '/': each its own namespace of exchanges, queues and messages, its
own permissions and limits, kept across a restart, and deleted with everything in it (its
connections closed with 320 CONNECTION_FORCED), with RabbitMQ's reply codes and texts.

Vhosts, users and permissions are made through the management HTTP API on both brokers
(`PUT /api/vhosts/{name}`, `PUT /api/permissions/...`: RabbitMQ's, and Sluice's which follows
it); on RabbitMQ they are deleted after each test, the node being shared by the session.
"""

from __future__ import annotations

import time
import uuid
from urllib.parse import quote

import pika
import pika.exceptions
import pytest
import requests

from .amqp_expect import (CONNECTION_FORCED, NOT_FOUND, PRECONDITION_FAILED,
                          PERSISTENT, channel_closed, queue_depth,
                          wait_until)

ALL = (".*", ".*", ".*")


class Vhosts:
    """Vhosts, users and permissions of the broker under test, made through its management
    HTTP API."""

    def __init__(self, amqp):
        self.amqp = amqp
        self.rabbitmq = amqp.kind == "rabbitmq"
        self.vhosts: list[str] = []
        self.users: list[str] = []

    def _api(self, method: str, path: str, body=None, ok=(200, 201, 204)) -> requests.Response:
        return self.amqp.api(method, path, body, ok)

    def add(self, prefix: str = "vh") -> str:
        """A new vhost where guest may do everything."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        assert self._api("PUT", f"vhosts/{quote(name, safe='')}").status_code == 201
        self.vhosts.append(name)
        self.set_permissions(name, "guest", *ALL)
        return name

    def delete(self, name: str):
        self._api("DELETE", f"vhosts/{quote(name, safe='')}")
        self.vhosts.remove(name)

    def add_user(self) -> tuple[str, str]:
        name = f"vu-{uuid.uuid4().hex[:8]}"
        password = f"{name}-pw"
        self._api("PUT", f"users/{name}", {"password": password, "tags": ""})
        self.users.append(name)
        return name, password

    def set_permissions(self, vhost: str, user: str, configure: str, write: str, read: str):
        self._api("PUT", f"permissions/{quote(vhost, safe='')}/{user}",
                  {"configure": configure, "write": write, "read": read})

    def set_max_connections(self, vhost: str, limit: int):
        self._api("PUT", f"vhost-limits/{quote(vhost, safe='')}/max-connections",
                  {"value": limit})

    def connect(self, vhost: str, user: str = "guest", password: str = "guest"):
        return self.amqp.connect(virtual_host=vhost,
                                 credentials=pika.PlainCredentials(user, password))

    def cleanup(self):
        if not self.rabbitmq:
            return
        node = self.amqp.node
        if node.process is None or node.process.poll() is not None:
            return
        for name in self.vhosts:
            self._api("DELETE", f"vhosts/{quote(name, safe='')}", ok=(204, 404))
        for name in self.users:
            self._api("DELETE", f"users/{name}", ok=(204, 404))


def assert_open_refused(connect, text: str):
    """connection.open is refused with 530 and `text` (pika reports it as access denied)."""
    with pytest.raises((pika.exceptions.ProbableAccessDeniedError,
                        pika.exceptions.ConnectionClosedByBroker)) as excinfo:
        connect()
    shown = str(excinfo.value)
    assert "(530)" in shown and f"'{text}'" in shown.replace('"', "'"), shown


@pytest.fixture
def vhosts(amqp):
    vhosts = Vhosts(amqp)
    yield vhosts
    vhosts.cleanup()


def test_queues_of_the_same_name_in_two_vhosts_are_separate(amqp, vhosts):
    first, second = vhosts.add(), vhosts.add()
    queue = f"shared-{uuid.uuid4().hex[:8]}"
    in_first = vhosts.connect(first).channel()
    in_second = vhosts.connect(second).channel()
    in_first.queue_declare(queue, durable=True)
    in_second.queue_declare(queue, durable=True)
    for body in (b"1", b"2"):
        in_first.basic_publish("", queue, body, PERSISTENT)
    in_second.basic_publish("", queue, b"only", PERSISTENT)
    wait_until(in_first.connection, lambda: queue_depth(in_first, queue) == 2,
               what="both messages in the first vhost's queue")
    assert queue_depth(in_second, queue) == 1
    method, _, body = in_second.basic_get(queue, auto_ack=True)
    assert body == b"only"
    assert queue_depth(in_first, queue) == 2
    # '/' has no such queue, and the error names the vhost it looked in.
    default = amqp.connect().channel()
    with channel_closed(NOT_FOUND, f"NOT_FOUND - no queue '{queue}' in vhost '/'"):
        default.queue_declare(queue, passive=True)
    missing = f"missing-{uuid.uuid4().hex[:6]}"
    with channel_closed(NOT_FOUND, f"NOT_FOUND - no queue '{missing}' in vhost '{first}'"):
        vhosts.connect(first).channel().queue_declare(missing, passive=True)


def test_exchanges_and_bindings_belong_to_their_vhost(amqp, vhosts):
    first, second = vhosts.add(), vhosts.add()
    exchange = f"ex-{uuid.uuid4().hex[:8]}"
    channel = vhosts.connect(first).channel()
    channel.exchange_declare(exchange, "fanout")
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, exchange)
    channel.basic_publish(exchange, "", b"routed")
    wait_until(channel.connection, lambda: queue_depth(channel, queue) == 1,
               what="the fanout delivery")
    other = vhosts.connect(second).channel()
    with channel_closed(NOT_FOUND, f"NOT_FOUND - no exchange '{exchange}' in vhost '{second}'"):
        other.exchange_declare(exchange, passive=True)


def test_permissions_are_per_vhost(amqp, vhosts):
    allowed, refused = vhosts.add(), vhosts.add()
    user, password = vhosts.add_user()
    vhosts.set_permissions(allowed, user, *ALL)
    channel = vhosts.connect(allowed, user, password).channel()
    channel.queue_declare("", exclusive=True)
    assert_open_refused(lambda: vhosts.connect(refused, user, password),
                        f"NOT_ALLOWED - access to vhost '{refused}' refused for user '{user}'")
    # Permissions restricted in one vhost leave the other's alone.
    vhosts.set_permissions(refused, user, "^mine-", ".*", ".*")
    restricted = vhosts.connect(refused, user, password).channel()
    with channel_closed(403, f"ACCESS_REFUSED - access to queue 'theirs' in vhost '{refused}' "
                             f"refused for user '{user}'"):
        restricted.queue_declare("theirs")
    vhosts.connect(allowed, user, password).channel().queue_declare("theirs-" + user,
                                                                    auto_delete=True)


def test_connection_limits_count_each_vhost_apart(amqp, vhosts):
    limited = vhosts.add()
    vhosts.set_max_connections(limited, 1)
    held = vhosts.connect(limited)
    # '/' is not limited, and its connections do not count against the other vhost.
    amqp.connect()
    deadline = time.monotonic() + 10
    while True:
        try:
            extra = vhosts.connect(limited)
        except (pika.exceptions.ProbableAccessDeniedError,
                pika.exceptions.ConnectionClosedByBroker) as closed:
            text = (f"NOT_ALLOWED - access to vhost '{limited}' refused for user 'guest': "
                    f"connection limit (1) is reached")
            shown = str(closed)
            assert "(530)" in shown and f"'{text}'" in shown.replace('"', "'"), shown
            break
        # RabbitMQ counts connections asynchronously: the first may not be counted yet.
        extra.close()
        assert time.monotonic() < deadline, "the second connection was never refused"
        time.sleep(0.2)
    assert held.is_open


def test_a_deleted_vhost_closes_its_connections_and_loses_its_queues(amqp, vhosts):
    doomed = vhosts.add()
    connection = vhosts.connect(doomed)
    channel = connection.channel()
    channel.queue_declare("kept-nowhere", durable=True)
    channel.basic_publish("", "kept-nowhere", b"gone", PERSISTENT)
    channel.queue_declare("kept-nowhere", passive=True)
    bystander = amqp.connect()
    vhosts.delete(doomed)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.1)
    assert closed.value.reply_code == CONNECTION_FORCED
    # RabbitMQ closes them as deleted, or as down when its vhost's processes stop first.
    assert closed.value.reply_text in (f"CONNECTION_FORCED - vhost '{doomed}' is deleted",
                                       f"CONNECTION_FORCED - vhost '{doomed}' is down")
    assert bystander.is_open
    bystander.channel().queue_declare("", exclusive=True)
    assert_open_refused(lambda: vhosts.connect(doomed), f"NOT_ALLOWED - vhost {doomed} not found")
    # Made again, the vhost starts empty.
    vhosts._api("PUT", f"vhosts/{quote(doomed, safe='')}")
    vhosts.vhosts.append(doomed)
    vhosts.set_permissions(doomed, "guest", *ALL)
    with channel_closed(NOT_FOUND, f"NOT_FOUND - no queue 'kept-nowhere' in vhost '{doomed}'"):
        vhosts.connect(doomed).channel().queue_declare("kept-nowhere", passive=True)


def test_durable_queues_of_a_vhost_survive_a_restart(amqp, vhosts):
    vhost = vhosts.add()
    queue = f"durable-{uuid.uuid4().hex[:8]}"
    channel = vhosts.connect(vhost).channel()
    channel.confirm_delivery()
    channel.queue_declare(queue, durable=True)
    for i in range(3):
        channel.basic_publish("", queue, f"m{i}".encode(), PERSISTENT)
    amqp.restart()
    channel = vhosts.connect(vhost).channel()
    assert queue_depth(channel, queue) == 3
    bodies = [channel.basic_get(queue, auto_ack=True)[2] for _ in range(3)]
    assert bodies == [b"m0", b"m1", b"m2"]


@pytest.mark.only("sluice")
def test_stream_queues_are_refused_outside_the_default_vhost(amqp, vhosts):
    # Sluice's streams are Kafka topics, which have one namespace: RabbitMQ has streams in
    # every vhost, Sluice only in '/'.
    vhost = vhosts.add()
    channel = vhosts.connect(vhost).channel()
    with channel_closed(PRECONDITION_FAILED,
                        f"PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue 's' in "
                        f"vhost '{vhost}': stream queues are Kafka topics"):
        channel.queue_declare("s", durable=True, arguments={"x-queue-type": "stream"})


@pytest.mark.only("sluice")
def test_the_http_api_lists_and_scopes_by_vhost(amqp, vhosts):
    vhost = vhosts.add()
    path_name = quote(vhost, safe="")
    channel = vhosts.connect(vhost).channel()
    channel.queue_declare("listed", durable=True)
    channel.basic_publish("", "listed", b"x", PERSISTENT)
    channel.queue_declare("listed", passive=True)
    listed = {v["name"]: v for v in vhosts._api("GET", "vhosts").json()}
    assert set(listed) >= {"/", vhost}
    assert listed[vhost]["queues"] == 1 and listed[vhost]["connections"] == 1
    assert vhosts._api("GET", f"vhosts/{path_name}").json()["messages"] == 1
    queues = vhosts._api("GET", f"queues?vhost={path_name}").json()
    assert [(q["vhost"], q["name"], q["messages"]) for q in queues] == [(vhost, "listed", 1)]
    everywhere = vhosts._api("GET", "queues").json()
    assert (vhost, "listed") in {(q["vhost"], q["name"]) for q in everywhere}
    vhosts._api("GET", "queues/listed", ok=(404,))
    got = vhosts._api("POST", f"queues/listed/get?vhost={path_name}",
                      {"count": 1, "ack_mode": "ack"}).json()
    assert [m["payload"]["text"] for m in got] == ["x"]
    vhosts._api("POST", f"exchanges/amq.default/publish?vhost={path_name}",
                {"routing_key": "listed", "payload": "y"})
    assert vhosts._api("GET", f"queues/listed?vhost={path_name}").json()["messages"] == 1
    vhosts._api("GET", "queues?vhost=no-such-vhost", ok=(404,))
    vhosts._api("DELETE", "vhosts/%2F", ok=(400,))
    vhosts._api("DELETE", "vhosts/no-such-vhost", ok=(404,))
    assert vhosts._api("PUT", f"vhosts/{path_name}").status_code == 204
    # Deleting it forgets its permissions (a vhost made again starts with none).
    vhosts.delete(vhost)
    permissions = vhosts._api("GET", "permissions").json()
    assert vhost not in {p["vhost"] for p in permissions}
