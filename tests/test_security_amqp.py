"""AMQP 0-9-1 security against the real binary with pika: TLS (the amqps listener) with PLAIN and
EXTERNAL (the client certificate's CN is the user), refused logins, RabbitMQ's per-vhost
configure/write/read permissions with its reply codes and texts, and user management through
the `sluice user` CLI and the HTTP API. What is asserted is what RabbitMQ does.
"""

from __future__ import annotations

import ssl
import struct
import subprocess
from urllib.parse import quote

import pika
import pika.credentials
import pika.exceptions
import pytest
import requests

from amqp import raw_amqp
from amqp.amqp_expect import ACCESS_REFUSED, NOT_ALLOWED, channel_closed
from conftest import free_port, sluice_bin
from tls_certs import (CLIENT_CN, add_user, certs, clean_env, sluice_user,  # noqa: F401
                       tls_flags, user_broker_factory, wait_for_port)

AUTH_ERRORS = (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError)
ALL = (".*", ".*", ".*")
LOGIN_REFUSED_PLAIN = ("ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. "
                       "For details see the broker logfile.")
HTTP_TIMEOUT_S = 10


def amqps_broker(user_broker_factory, certs, client_auth=None, prepare=None):
    """A broker with an amqps listener (and its usual plain AMQP one); (broker, amqps port)."""
    port = free_port()
    broker = user_broker_factory("--amqps-listen", f"127.0.0.1:{port}",
                                 *tls_flags(certs, client_auth), prepare=prepare)
    wait_for_port(port, broker)
    wait_for_port(broker.amqp_port, broker)
    return broker, port


def params(port: int, credentials, ssl_context=None, **kw) -> pika.ConnectionParameters:
    if ssl_context is not None:
        kw["ssl_options"] = pika.SSLOptions(ssl_context, server_hostname="localhost")
    return pika.ConnectionParameters("127.0.0.1", port, credentials=credentials,
                                     connection_attempts=1, socket_timeout=5, stack_timeout=10,
                                     blocked_connection_timeout=10, **kw)


def connect(port: int, user: str, password: str, ssl_context=None) -> pika.BlockingConnection:
    return pika.BlockingConnection(params(port, pika.PlainCredentials(user, password),
                                          ssl_context))


def publish_and_get(connection: pika.BlockingConnection, queue: str, body: bytes = b"hello"):
    channel = connection.channel()
    channel.queue_declare(queue, auto_delete=False)
    channel.confirm_delivery()
    channel.basic_publish("", queue, body)
    method, _properties, got = channel.basic_get(queue, auto_ack=True)
    assert method is not None and got == body
    channel.queue_delete(queue)
    channel.close()


def refused_open(port: int, user: str, password: str, vhost: str = "/") -> tuple[int, str, tuple]:
    """Logs in on the plain AMQP port by hand and opens `vhost`; the broker must close the
    connection: (code, text, (class id, method id))."""
    with raw_amqp.RawConnection("127.0.0.1", port) as raw:
        raw.login(user, password)
        raw.tune()
        raw.open(vhost)
        code, text, class_id, method_id = raw.expect_connection_close()
    return code, text, (class_id, method_id)


# -- TLS --------------------------------------------------------------------------------------

def test_amqps_plain_login_as_a_cli_user(user_broker_factory, certs):
    broker, port = amqps_broker(user_broker_factory, certs, prepare=lambda d: add_user(
        d, "app", "app-secret", permissions=ALL))
    with connect(port, "app", "app-secret", certs.server_context()) as connection:
        assert connection.is_open
        publish_and_get(connection, "tls-queue")
    # guest from loopback over TLS too, and app on the plain listener as well.
    with connect(port, "guest", "guest", certs.server_context()) as connection:
        assert connection.is_open
    with connect(broker.amqp_port, "app", "app-secret") as connection:
        publish_and_get(connection, "plain-queue")


def test_amqps_refuses_a_client_that_does_not_trust_the_server(user_broker_factory, certs):
    _broker, port = amqps_broker(user_broker_factory, certs)
    context = ssl.create_default_context(cafile=str(certs.untrusted_ca))
    with pytest.raises((pika.exceptions.AMQPConnectionError, ssl.SSLError)):
        connect(port, "guest", "guest", context)
    # The same client trusting the right CA gets in: the refusal was the chain's.
    with connect(port, "guest", "guest", certs.server_context()) as connection:
        assert connection.is_open


def test_amqps_wrong_password_and_unknown_user_are_refused(user_broker_factory, certs):
    broker, port = amqps_broker(user_broker_factory, certs, prepare=lambda d: add_user(
        d, "app", "app-secret", permissions=ALL))
    for user, password in (("app", "wrong"), ("nobody", "app-secret")):
        with pytest.raises(pika.exceptions.ProbableAuthenticationError) as excinfo:
            connect(port, user, password, certs.server_context())
        assert "(403)" in str(excinfo.value), excinfo.value
        assert "Login was refused using authentication mechanism PLAIN" in str(excinfo.value)
    # On the wire (plain listener): connection.close 403 with RabbitMQ's text.
    with raw_amqp.RawConnection("127.0.0.1", broker.amqp_port) as raw:
        raw.login("app", "wrong")
        code, text, _class_id, _method_id = raw.expect_connection_close()
    assert (code, text) == (ACCESS_REFUSED, LOGIN_REFUSED_PLAIN)
    # The right password still works.
    with connect(port, "app", "app-secret", certs.server_context()) as connection:
        assert connection.is_open


def test_external_login_with_the_client_certificate(user_broker_factory, certs):
    """EXTERNAL on a TLS connection with a verified client certificate: the user is the
    certificate's CN (`client`), who must exist; PLAIN still works without a certificate."""
    broker, port = amqps_broker(user_broker_factory, certs, client_auth="requested",
                                prepare=lambda d: add_user(d, CLIENT_CN, "unused-password",
                                                           permissions=ALL))
    external = pika.credentials.ExternalCredentials()
    with pika.BlockingConnection(params(port, external, certs.client_context())) as connection:
        channel = connection.channel()
        queue = "external-queue"
        channel.queue_declare(queue)
        # The connection's user is `client`: a message claiming that user_id is accepted.
        channel.basic_publish("", queue, b"x", pika.BasicProperties(user_id=CLIENT_CN))
        method, properties, _body = channel.basic_get(queue, auto_ack=True)
        assert method is not None and properties.user_id == CLIENT_CN
    # Without a client certificate (or without TLS) EXTERNAL has nobody to log in.
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(params(port, external, certs.server_context()))
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(params(broker.amqp_port, external))
    # PLAIN on the same listener without a certificate.
    with connect(port, CLIENT_CN, "unused-password", certs.server_context()) as connection:
        assert connection.is_open


def test_external_login_of_a_certificate_whose_user_does_not_exist(user_broker_factory, certs):
    _broker, port = amqps_broker(user_broker_factory, certs, client_auth="requested")
    with pytest.raises(AUTH_ERRORS) as excinfo:
        pika.BlockingConnection(params(port, pika.credentials.ExternalCredentials(),
                                       certs.client_context()))
    assert "(403)" in str(excinfo.value), excinfo.value


def test_untrusted_expired_or_missing_client_certificate_is_refused_when_required(user_broker_factory, certs):
    _broker, port = amqps_broker(user_broker_factory, certs, client_auth="required",
                                 prepare=lambda d: add_user(d, CLIENT_CN, "pw", permissions=ALL))
    external = pika.credentials.ExternalCredentials()
    with pika.BlockingConnection(params(port, external, certs.client_context())) as connection:
        assert connection.is_open
    for context in (certs.client_context(certs.untrusted_client_cert,
                                         certs.untrusted_client_key),
                    certs.client_context(certs.expired_client_cert, certs.expired_client_key),
                    certs.server_context()):
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            pika.BlockingConnection(params(port, pika.PlainCredentials(CLIENT_CN, "pw"),
                                           context))


# -- permissions ------------------------------------------------------------------------------

def test_configure_permission_limits_declares(user_broker_factory):
    broker = user_broker_factory(prepare=lambda d: add_user(
        d, "bob", "bob-secret", permissions=("^app-", ".*", ".*")))
    with connect(broker.amqp_port, "bob", "bob-secret") as connection:
        channel = connection.channel()
        channel.queue_declare("app-1")
        with channel_closed(ACCESS_REFUSED) as excinfo:
            channel.queue_declare("other-1")
        assert excinfo.value.reply_text == (
            "ACCESS_REFUSED - access to queue 'other-1' in vhost '/' refused for "
            "user 'bob'")
        # The connection survives the channel error.
        channel = connection.channel()
        channel.basic_publish("", "app-1", b"ok")
        channel.queue_declare("app-1", passive=True)


def test_write_and_read_permissions(user_broker_factory):
    """write covers publishing to an exchange, read consuming from a queue (RabbitMQ)."""
    def prepare(data_dir):
        add_user(data_dir, "writer", "w-secret", permissions=(".*", ".*", "^$"))
        add_user(data_dir, "reader", "r-secret", permissions=(".*", "^$", ".*"))
    broker = user_broker_factory(prepare=prepare)
    with connect(broker.amqp_port, "writer", "w-secret") as connection:
        channel = connection.channel()
        channel.queue_declare("jobs")
        channel.confirm_delivery()
        channel.basic_publish("", "jobs", b"job")
        with channel_closed(ACCESS_REFUSED) as excinfo:
            channel.basic_get("jobs")
        assert excinfo.value.reply_text == (
            "ACCESS_REFUSED - access to queue 'jobs' in vhost '/' refused for user "
            "'writer'")
    with connect(broker.amqp_port, "reader", "r-secret") as connection:
        channel = connection.channel()
        method, _properties, body = channel.basic_get("jobs", auto_ack=True)
        assert method is not None and body == b"job"
        channel.confirm_delivery()
        with channel_closed(ACCESS_REFUSED) as excinfo:
            channel.basic_publish("", "jobs", b"nope")
        assert excinfo.value.reply_text == (
            "ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for "
            "user 'reader'")


def test_user_without_permissions_on_the_vhost_gets_not_allowed(user_broker_factory):
    broker = user_broker_factory(prepare=lambda d: add_user(d, "bob", "bob-secret"))
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as excinfo:
        connect(broker.amqp_port, "bob", "bob-secret")
    assert "(530)" in str(excinfo.value), excinfo.value
    code, text, method = refused_open(broker.amqp_port, "bob", "bob-secret")
    assert (code, text) == (NOT_ALLOWED, "NOT_ALLOWED - access to vhost '/' refused for user 'bob'")
    assert method == raw_amqp.CONNECTION_OPEN


# -- user management --------------------------------------------------------------------------

def test_user_cli_add_passwd_delete_list(user_broker_factory):
    def prepare(data_dir):
        add_user(data_dir, "ann", "old-secret", tags="administrator,monitoring", permissions=ALL)
        sluice_user(data_dir, "passwd", "ann", "--password", "new-secret")
        add_user(data_dir, "zed", "zed-secret", permissions=ALL)
        sluice_user(data_dir, "delete", "zed")
        listed = sluice_user(data_dir, "list").stdout
        lines = {line.split()[0]: line for line in listed.splitlines() if line.split()}
        assert "ann" in lines and "guest" in lines and "zed" not in lines, listed
        assert "administrator" in lines["ann"] and "monitoring" in lines["ann"], listed
        assert "administrator" in lines["guest"], listed
        # Adding a user twice, or deleting one that is not there, is an error.
        assert sluice_user(data_dir, "add", "ann", "--password", "x", check=False).returncode != 0
        assert sluice_user(data_dir, "delete", "zed", check=False).returncode != 0
    broker = user_broker_factory(prepare=prepare)
    with connect(broker.amqp_port, "ann", "new-secret") as connection:
        assert connection.is_open
    for user, password in (("ann", "old-secret"), ("zed", "zed-secret")):
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            connect(broker.amqp_port, user, password)
    # ann is an administrator: the HTTP API lets her change things.
    response = requests.put(f"{broker.http_url}/api/users/ann2", auth=("ann", "new-secret"),
                            json={"password": "p", "tags": ""}, timeout=HTTP_TIMEOUT_S)
    assert response.status_code in (201, 204), response.text


def test_user_management_through_the_http_api(user_broker_factory):
    broker = user_broker_factory()
    api = broker.http_url + "/api"
    guest = ("guest", "guest")
    slash = quote("/", safe="")

    response = requests.put(f"{api}/users/erin", auth=guest, timeout=HTTP_TIMEOUT_S,
                            json={"password": "erin-secret", "tags": "monitoring"})
    assert response.status_code in (201, 204), response.text
    users = requests.get(f"{api}/users", auth=guest, timeout=HTTP_TIMEOUT_S)
    assert users.status_code == 200, users.text
    erin = [u for u in users.json() if u["name"] == "erin"]
    assert erin, users.json()
    tags = erin[0]["tags"]
    assert (tags if isinstance(tags, list) else tags.split(",")) == ["monitoring"]
    assert "password" not in erin[0]

    # A new user has no permissions: 530 on connection.open.
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
        connect(broker.amqp_port, "erin", "erin-secret")
    response = requests.put(f"{api}/permissions/{slash}/erin", auth=guest,
                            timeout=HTTP_TIMEOUT_S,
                            json={"configure": ".*", "write": ".*", "read": ".*"})
    assert response.status_code in (201, 204), response.text
    with connect(broker.amqp_port, "erin", "erin-secret") as connection:
        publish_and_get(connection, "erin-queue")

    # erin is no administrator: she may not manage users.
    response = requests.put(f"{api}/users/mallory", auth=("erin", "erin-secret"),
                            json={"password": "x", "tags": "administrator"},
                            timeout=HTTP_TIMEOUT_S)
    assert response.status_code in (401, 403), response.text
    response = requests.put(f"{api}/users/mallory", json={"password": "x", "tags": ""},
                            timeout=HTTP_TIMEOUT_S)
    assert response.status_code == 401, response.text

    # Permissions revoked: 530 again; user deleted: login refused.
    response = requests.delete(f"{api}/permissions/{slash}/erin", auth=guest,
                               timeout=HTTP_TIMEOUT_S)
    assert response.status_code in (200, 204), response.text
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
        connect(broker.amqp_port, "erin", "erin-secret")
    response = requests.put(f"{api}/users/erin", auth=guest, timeout=HTTP_TIMEOUT_S,
                            json={"password": "changed", "tags": ""})
    assert response.status_code in (201, 204), response.text
    response = requests.delete(f"{api}/users/erin", auth=guest, timeout=HTTP_TIMEOUT_S)
    assert response.status_code in (200, 204), response.text
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        connect(broker.amqp_port, "erin", "changed")
    users = requests.get(f"{api}/users", auth=guest, timeout=HTTP_TIMEOUT_S).json()
    assert "erin" not in {u["name"] for u in users}


def test_user_cli_against_a_running_node(user_broker_factory):
    """Without --data-dir, `sluice user` goes through the running node's HTTP API (as guest by
    default); the change applies at once."""
    broker = user_broker_factory()

    def cli(*args):
        result = subprocess.run([str(sluice_bin()), "user", *args, "--url", broker.http_url],
                                capture_output=True, text=True, timeout=30, env=clean_env(),
                                stdin=subprocess.DEVNULL)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result.stdout

    cli("add", "frank", "--password", "frank-secret", "--tags", "monitoring")
    assert "frank" in cli("list")
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
        connect(broker.amqp_port, "frank", "frank-secret")
    cli("permissions", "frank", "--vhost", "/", "--configure", ".*", "--write", ".*",
        "--read", ".*")
    with connect(broker.amqp_port, "frank", "frank-secret") as connection:
        publish_and_get(connection, "frank-queue")
    cli("passwd", "frank", "--password", "new-frank-secret")
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        connect(broker.amqp_port, "frank", "frank-secret")
    with connect(broker.amqp_port, "frank", "new-frank-secret") as connection:
        assert connection.is_open
    cli("delete", "frank")
    assert "frank" not in cli("list")


# -- mechanisms on the wire -------------------------------------------------------------------

def offered_mechanisms(raw: raw_amqp.RawConnection) -> set[str]:
    """Sends the protocol header; the mechanisms of the broker's connection.start."""
    raw.send(raw_amqp.PROTOCOL_HEADER)
    payload = raw.expect_method(raw_amqp.CONNECTION_START).payload
    offset = 4 + 2  # class and method ids, version major and minor
    (properties_length,) = struct.unpack_from(">I", payload, offset)
    offset += 4 + properties_length
    (length,) = struct.unpack_from(">I", payload, offset)
    return set(payload[offset + 4:offset + 4 + length].decode().split())


def start_ok(raw: raw_amqp.RawConnection, mechanism: str, response: bytes):
    properties = raw_amqp.table({"product": "sluice security test",
                                 "capabilities": {"authentication_failure_close": True}})
    raw.send_method(0, raw_amqp.CONNECTION_START_OK, properties + raw_amqp.shortstr(mechanism)
                    + raw_amqp.longstr(response) + raw_amqp.shortstr("en_US"))


def amqplain(user: str, password: str) -> bytes:
    """AMQPLAIN's response: a field table without its length prefix."""
    return raw_amqp.table({"LOGIN": user, "PASSWORD": password})[4:]


def tls_raw(port: int, context: ssl.SSLContext) -> raw_amqp.RawConnection:
    raw = raw_amqp.RawConnection("127.0.0.1", port)
    raw.sock = context.wrap_socket(raw.sock, server_hostname="localhost")
    return raw


def test_mechanisms_offered_and_amqplain_login(user_broker_factory, certs):
    """PLAIN and AMQPLAIN everywhere; EXTERNAL only on a TLS connection whose client sent a
    verified certificate (RabbitMQ's rabbit_auth_mechanism_ssl offers it only then)."""
    broker, port = amqps_broker(user_broker_factory, certs, client_auth="requested",
                                prepare=lambda d: add_user(d, CLIENT_CN, "client-secret",
                                                           permissions=ALL))
    with raw_amqp.RawConnection("127.0.0.1", broker.amqp_port) as raw:
        mechanisms = offered_mechanisms(raw)
        assert {"PLAIN", "AMQPLAIN"} <= mechanisms and "EXTERNAL" not in mechanisms, mechanisms
        start_ok(raw, "AMQPLAIN", amqplain(CLIENT_CN, "client-secret"))
        raw.tune()
        raw.open("/")
        raw.expect_method(raw_amqp.CONNECTION_OPEN_OK)
    with raw_amqp.RawConnection("127.0.0.1", broker.amqp_port) as raw:
        offered_mechanisms(raw)
        start_ok(raw, "AMQPLAIN", amqplain(CLIENT_CN, "wrong"))
        code, text, _class_id, _method_id = raw.expect_connection_close()
    assert (code, text) == (ACCESS_REFUSED, "ACCESS_REFUSED - Login was refused using "
                            "authentication mechanism AMQPLAIN. For details see the broker "
                            "logfile.")
    with tls_raw(port, certs.server_context()) as raw:
        mechanisms = offered_mechanisms(raw)
        assert {"PLAIN", "AMQPLAIN"} <= mechanisms and "EXTERNAL" not in mechanisms, mechanisms
    with tls_raw(port, certs.client_context()) as raw:
        assert "EXTERNAL" in offered_mechanisms(raw)
        start_ok(raw, "EXTERNAL", b"")
        raw.tune()
        raw.open("/")
        raw.expect_method(raw_amqp.CONNECTION_OPEN_OK)


def test_http_api_over_tls(user_broker_factory, certs):
    """--https-listen serves the same API over TLS: the CA's clients get in with the store's
    users, guest still only from loopback, and a client that does not trust the CA is refused."""
    port = free_port()
    broker = user_broker_factory("--https-listen", f"127.0.0.1:{port}", *tls_flags(certs),
                                 prepare=lambda d: add_user(d, "ops", "ops-pw", "administrator"))
    wait_for_port(port, broker)
    url = f"https://127.0.0.1:{port}"
    answer = requests.get(f"{url}/api/overview", auth=("ops", "ops-pw"), verify=str(certs.ca),
                          timeout=HTTP_TIMEOUT_S)
    assert answer.status_code == 200, answer.text
    answer = requests.get(f"{url}/api/users", auth=("guest", "guest"), verify=str(certs.ca),
                          timeout=HTTP_TIMEOUT_S)
    assert answer.status_code == 200 and {u["name"] for u in answer.json()} >= {"guest", "ops"}
    answer = requests.get(f"{url}/api/overview", auth=("ops", "wrong"), verify=str(certs.ca),
                          timeout=HTTP_TIMEOUT_S)
    assert answer.status_code == 401
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{url}/api/overview", auth=("ops", "ops-pw"), timeout=HTTP_TIMEOUT_S)
    # Plain HTTP on the TLS port gets no answer, and the broker goes on serving.
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(f"http://127.0.0.1:{port}/api/overview", timeout=HTTP_TIMEOUT_S)
    answer = requests.get(f"{url}/api/health", verify=str(certs.ca), timeout=HTTP_TIMEOUT_S)
    assert answer.status_code == 200
