"""Kafka security against the real binary, with real clients over real sockets: SASL (PLAIN,
SCRAM-SHA-256, SCRAM-SHA-512) on SASL_PLAINTEXT and SASL_SSL listeners, TLS client certificates
on SSL listeners, ACLs with Kafka's semantics, the SCRAM credential admin APIs, KIP-368
re-authentication, the refusal to start an unauthenticated listener on a non-loopback address,
and hostile input on the secured ports.

Users are made with `sluice user add` on the data directory before the broker starts. What is
asserted is what Apache Kafka does (error codes, closes, principals); clients are confluent-kafka
(librdkafka) and kafka-python.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import socket
import ssl
import subprocess
import threading
import time

import pytest
import requests
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation,
                                   AclPermissionType, AdminClient, NewTopic, ResourcePatternType,
                                   ResourceType, ScramCredentialInfo, ScramMechanism,
                                   UserScramCredentialDeletion, UserScramCredentialUpsertion)

from conftest import free_port, sluice_bin
from kafka_wire import ConnectionClosed, KafkaWire, frame
from librdkafka_client import unique_name
from sasl_wire import (describe_all_acls_error, describe_scram_credentials_error, plain_login,
                       sasl_authenticate, sasl_handshake)
from tls_certs import (CLIENT_PRINCIPAL, add_user, certs, clean_env, tls_flags,  # noqa: F401
                       tls_handshake_outcome, user_broker_factory)

MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
ALICE, ALICE_PW = "alice", "alice-secret"
BOB, BOB_PW = "bob", "bob-secret"
CAROL, CAROL_PW = "carol", "carol-secret"
ADMIN, ADMIN_PW = "admin", "admin-secret"

ERROR_CLUSTER_AUTHORIZATION_FAILED = 31
ERROR_UNSUPPORTED_SASL_MECHANISM = 33
ERROR_SASL_AUTHENTICATION_FAILED = 58
CLIENT_TIMEOUT_S = 20


# -- brokers ----------------------------------------------------------------------------------

def listeners(*protocols: str) -> tuple[str, dict[str, int]]:
    """A --kafka-listen value with one loopback listener per protocol (the first is the one
    startup waits for), and each protocol's port."""
    ports = {protocol: free_port() for protocol in protocols}
    return ",".join(f"{p}://127.0.0.1:{port}" for p, port in ports.items()), ports


def users(*entries):
    """A `prepare` step for user_broker_factory: (name, password[, tags]) per user."""
    def prepare(data_dir):
        for entry in entries:
            add_user(data_dir, *entry)
    return prepare


# -- client configurations --------------------------------------------------------------------

def base_config(port: int, protocol: str) -> dict:
    return {"bootstrap.servers": f"127.0.0.1:{port}", "security.protocol": protocol,
            "socket.timeout.ms": 10000, "reconnect.backoff.max.ms": 1000}


def sasl_config(port: int, mechanism: str, user: str, password: str,
                protocol: str = "SASL_PLAINTEXT", certs=None) -> dict:
    config = base_config(port, protocol)
    config.update({"sasl.mechanisms": mechanism, "sasl.username": user,
                   "sasl.password": password})
    if protocol == "SASL_SSL":
        config["ssl.ca.location"] = str(certs.ca)
    return config


def ssl_config(port: int, certs, cert=None, key=None) -> dict:
    config = base_config(port, "SSL")
    config["ssl.ca.location"] = str(certs.ca)
    if cert is not None:
        config.update({"ssl.certificate.location": str(cert), "ssl.key.location": str(key)})
    return config


def plaintext_config(port: int) -> dict:
    return base_config(port, "PLAINTEXT")


# -- client operations ------------------------------------------------------------------------

class ErrorLog:
    """An error_cb that keeps what librdkafka reports."""

    def __init__(self):
        self.errors: list[KafkaError] = []

    def __call__(self, error):
        self.errors.append(error)

    def codes(self):
        return {e.code() for e in self.errors}


def produce_ok(config: dict, topic: str, values: list[bytes], timeout_s=CLIENT_TIMEOUT_S):
    """Produces `values` with acks=all; every one must be delivered."""
    errors = ErrorLog()
    producer = Producer({**config, "acks": "all", "linger.ms": 5, "error_cb": errors,
                         "message.timeout.ms": timeout_s * 1000})
    failed = []
    for value in values:
        producer.produce(topic, value, on_delivery=lambda err, _msg: err and failed.append(err))
        producer.poll(0)
    remaining = producer.flush(timeout_s + 5)
    assert remaining == 0 and not failed, (
        f"produce to {topic}: {remaining} undelivered, delivery errors {failed[:3]}, "
        f"client errors {errors.errors[:3]}")


def produce_failure(config: dict, topic: str, timeout_s=10) -> tuple[list[KafkaError], ErrorLog]:
    """Produces one message that must not be delivered; (delivery errors, client errors)."""
    errors = ErrorLog()
    producer = Producer({**config, "acks": "all", "error_cb": errors,
                         "message.timeout.ms": timeout_s * 1000})
    outcome = []
    producer.produce(topic, b"must-not-arrive", on_delivery=lambda err, _msg: outcome.append(err))
    producer.flush(timeout_s + 5)
    assert outcome, "no delivery report"
    assert outcome[0] is not None, f"the message to {topic} was delivered"
    return outcome, errors


def consume_values(config: dict, topic: str, count: int, group: str,
                   timeout_s=CLIENT_TIMEOUT_S) -> list[bytes]:
    """`count` values of `topic` read from the beginning as a member of `group` (subscribe:
    FindCoordinator, JoinGroup, SyncGroup, OffsetFetch, ListOffsets, Fetch)."""
    consumer = Consumer({**config, "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, "session.timeout.ms": 6000})
    try:
        consumer.subscribe([topic])
        got = []
        deadline = time.monotonic() + timeout_s
        while len(got) < count:
            assert time.monotonic() < deadline, f"read {len(got)} of {count} from {topic}"
            for message in consumer.consume(num_messages=100, timeout=0.5):
                assert message.error() is None, f"consumer error: {message.error()}"
                got.append(message.value())
        consumer.commit(asynchronous=False)
        return got
    finally:
        consumer.close()


def consumer_error(config: dict, topic: str, group: str, timeout_s=15) -> KafkaError:
    """The first error a consumer of `topic` in `group` gets (it must get one)."""
    consumer = Consumer({**config, "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, "session.timeout.ms": 6000})
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is not None, (
                f"consumer in group {group} read {message.value()!r}")
            return message.error()
        raise AssertionError(f"no error for a consumer of {topic} in group {group} within "
                             f"{timeout_s}s")
    finally:
        consumer.close()


def create_topic_as(config: dict, topic: str, partitions: int = 1):
    client = AdminClient(config)
    futures = client.create_topics([NewTopic(topic, num_partitions=partitions,
                                             replication_factor=1)],
                                   operation_timeout=15, request_timeout=15)
    futures[topic].result(timeout=CLIENT_TIMEOUT_S)
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    while True:
        found = client.list_topics(topic=topic, timeout=10).topics.get(topic)
        if found is not None and found.error is None and len(found.partitions) == partitions:
            return
        assert time.monotonic() < deadline, f"topic {topic} not visible: {found}"
        time.sleep(0.1)


def allow(principal: str, resource: ResourceType, name: str, operation: AclOperation,
          pattern=ResourcePatternType.LITERAL) -> AclBinding:
    return AclBinding(resource, name, pattern, principal, "*", operation, AclPermissionType.ALLOW)


def create_acls_as(config: dict, bindings: list[AclBinding]):
    client = AdminClient(config)
    for binding, future in client.create_acls(bindings, request_timeout=15).items():
        assert future.result(timeout=CLIENT_TIMEOUT_S) is None, binding


def kafka_error_of(future) -> KafkaError:
    """The KafkaError a failing admin future raises (it must fail)."""
    with pytest.raises(KafkaException) as excinfo:
        future.result(timeout=CLIENT_TIMEOUT_S)
    return excinfo.value.args[0]


def auth_error_within(config: dict, timeout_s=15) -> ErrorLog:
    """A producer with `config` sends one message; it must be refused authentication: the
    client reports _AUTHENTICATION through error_cb and the message is never delivered."""
    errors = ErrorLog()
    producer = Producer({**config, "error_cb": errors, "message.timeout.ms": timeout_s * 1000})
    delivered = []
    producer.produce(unique_name("auth"), b"x",
                     on_delivery=lambda err, _msg: delivered.append(err is None))
    deadline = time.monotonic() + timeout_s
    while KafkaError._AUTHENTICATION not in errors.codes() and time.monotonic() < deadline:
        producer.poll(0.2)
    producer.purge()  # the message would wait for a login that never succeeds
    producer.flush(5)
    assert KafkaError._AUTHENTICATION in errors.codes(), (
        f"no authentication error within {timeout_s}s; errors: {errors.errors}")
    assert True not in delivered, "a message was delivered without authentication"
    return errors


# -- raw SASL frames --------------------------------------------------------------------------


def scram_login(wire: KafkaWire, mechanism: str, user: str, password: str,
                tamper_nonce: bool = False) -> tuple[int, str | None]:
    """A SCRAM exchange by the book (RFC 5802 / 7677) over SaslHandshake + SaslAuthenticate v1.
    On success the server's signature is verified; (error code of the final step, message)."""
    digest = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}[mechanism]
    error, mechanisms = sasl_handshake(wire, mechanism)
    assert error == 0, f"SaslHandshake {mechanism}: error {error}, mechanisms {mechanisms}"
    client_nonce = base64.b64encode(os.urandom(18)).decode()
    client_first_bare = f"n={user},r={client_nonce}"
    error, message, server_first, _ = sasl_authenticate(
        wire, b"n,," + client_first_bare.encode())
    assert error == 0, (error, message)
    fields = dict(item.split("=", 1) for item in server_first.decode().split(","))
    nonce, salt, iterations = fields["r"], base64.b64decode(fields["s"]), int(fields["i"])
    assert nonce.startswith(client_nonce) and len(nonce) > len(client_nonce), server_first
    assert iterations >= 4096, f"fewer iterations than Kafka's minimum: {iterations}"
    salted = hashlib.pbkdf2_hmac(digest().name, password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", digest)
    stored_key = digest(client_key).digest()
    final_nonce = nonce + "x" if tamper_nonce else nonce
    without_proof = f"c=biws,r={final_nonce}"
    auth_message = f"{client_first_bare},{server_first.decode()},{without_proof}".encode()
    signature = hmac.digest(stored_key, auth_message, digest)
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode()
    error, message, server_final, _ = sasl_authenticate(
        wire, f"{without_proof},p={proof}".encode())
    if error == 0:
        server_key = hmac.digest(salted, b"Server Key", digest)
        expected = base64.b64encode(hmac.digest(server_key, auth_message, digest)).decode()
        assert server_final.decode() == f"v={expected}", server_final
    return error, message


# -- SASL -------------------------------------------------------------------------------------

@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_sasl_plaintext_round_trip(user_broker_factory, mechanism):
    listen, ports = listeners("SASL_PLAINTEXT")
    user_broker_factory("--kafka-listen", listen, prepare=users((ALICE, ALICE_PW)))
    config = sasl_config(ports["SASL_PLAINTEXT"], mechanism, ALICE, ALICE_PW)
    topic = unique_name("sasl")
    values = [f"{mechanism}-{i}".encode() for i in range(5)]
    produce_ok(config, topic, values)
    assert consume_values(config, topic, len(values), unique_name("g")) == values


def test_scram_over_sasl_ssl_with_confluent_kafka_and_kafka_python(user_broker_factory, certs):
    from kafka import KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KTopicPartition

    listen, ports = listeners("SASL_SSL")
    user_broker_factory("--kafka-listen", listen, *tls_flags(certs),
                        "--sasl-mechanisms", "SCRAM-SHA-256,SCRAM-SHA-512",
                        prepare=users((ALICE, ALICE_PW)))
    port = ports["SASL_SSL"]
    topic = unique_name("scram-ssl")
    first = [f"librdkafka-{i}".encode() for i in range(5)]
    produce_ok(sasl_config(port, "SCRAM-SHA-512", ALICE, ALICE_PW, "SASL_SSL", certs), topic,
               first)

    kafka_python = dict(bootstrap_servers=f"127.0.0.1:{port}", security_protocol="SASL_SSL",
                        sasl_mechanism="SCRAM-SHA-256", sasl_plain_username=ALICE,
                        sasl_plain_password=ALICE_PW, ssl_cafile=str(certs.ca),
                        ssl_check_hostname=True, bootstrap_timeout_ms=15000)
    producer = KafkaProducer(acks="all", **kafka_python)
    second = [f"kafka-python-{i}".encode() for i in range(5)]
    try:
        for value in second:
            producer.send(topic, value).get(timeout=CLIENT_TIMEOUT_S)
        producer.flush(timeout=CLIENT_TIMEOUT_S)
    finally:
        producer.close(timeout=5)

    consumer = KafkaConsumer(group_id=None, auto_offset_reset="earliest",
                             enable_auto_commit=False, **kafka_python)
    try:
        consumer.assign([KTopicPartition(topic, 0)])
        consumer.seek_to_beginning()
        got = []
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while len(got) < 10 and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                got.extend(r.value for r in records)
        assert got == first + second
    finally:
        consumer.close()

    # And librdkafka reads what kafka-python wrote, with the other SCRAM mechanism.
    assert consume_values(sasl_config(port, "SCRAM-SHA-256", ALICE, ALICE_PW, "SASL_SSL", certs),
                          topic, 10, unique_name("g")) == first + second


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_wrong_password_and_unknown_user_are_refused(user_broker_factory, mechanism):
    listen, ports = listeners("SASL_PLAINTEXT")
    user_broker_factory("--kafka-listen", listen, prepare=users((ALICE, ALICE_PW)))
    port = ports["SASL_PLAINTEXT"]
    auth_error_within(sasl_config(port, mechanism, ALICE, "not-alices-password"))
    auth_error_within(sasl_config(port, mechanism, "mallory", ALICE_PW))
    # The right password still works on the same broker afterwards.
    produce_ok(sasl_config(port, mechanism, ALICE, ALICE_PW), unique_name("after"), [b"ok"])


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_kafka_python_raises_on_a_failed_login(user_broker_factory):
    """kafka-python cannot bootstrap with a wrong password (against Apache Kafka it sees the
    connection closed after SaslAuthenticate and gives up with KafkaTimeoutError); with the
    right one it can."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError as KafkaPythonError

    listen, ports = listeners("SASL_PLAINTEXT")
    user_broker_factory("--kafka-listen", listen, prepare=users((ALICE, ALICE_PW)))
    config = dict(bootstrap_servers=f"127.0.0.1:{ports['SASL_PLAINTEXT']}",
                  security_protocol="SASL_PLAINTEXT", sasl_plain_username=ALICE,
                  bootstrap_timeout_ms=4000)
    records = _Records()
    logger = logging.getLogger("kafka")
    logger.addHandler(records)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        for mechanism in ("PLAIN", "SCRAM-SHA-256"):
            with pytest.raises(KafkaPythonError):
                KafkaProducer(sasl_mechanism=mechanism, sasl_plain_password="wrong", **config)
        assert not any("Bootstrap complete" in line for line in records.lines), records.lines
        assert any("failed" in line for line in records.lines), records.lines[-20:]
    finally:
        logger.removeHandler(records)
        logger.setLevel(old_level)
    producer = KafkaProducer(sasl_mechanism="SCRAM-SHA-512", sasl_plain_password=ALICE_PW,
                             **config)
    producer.send(unique_name("kafka-python"), b"ok").get(timeout=CLIENT_TIMEOUT_S)
    producer.close(timeout=5)


def test_unsupported_mechanism_is_refused(user_broker_factory):
    listen, ports = listeners("SASL_PLAINTEXT")
    broker = user_broker_factory("--kafka-listen", listen, "--sasl-mechanisms", "PLAIN",
                                 prepare=users((ALICE, ALICE_PW)))
    port = ports["SASL_PLAINTEXT"]
    errors = auth_error_within(sasl_config(port, "SCRAM-SHA-256", ALICE, ALICE_PW))
    assert any("mechanism" in e.str().lower() for e in errors.errors), errors.errors
    with KafkaWire(broker.bootstrap) as wire:
        error, mechanisms = sasl_handshake(wire, "SCRAM-SHA-256")
        assert (error, mechanisms) == (ERROR_UNSUPPORTED_SASL_MECHANISM, ["PLAIN"])
    # PLAIN, the one offered, works.
    produce_ok(sasl_config(port, "PLAIN", ALICE, ALICE_PW), unique_name("plain"), [b"ok"])


def test_sasl_wire_rules(user_broker_factory):
    """Kafka's rules on a SASL listener, byte for byte: only ApiVersions and SaslHandshake before
    authenticating (anything else closes the connection); a failed SaslAuthenticate is
    answered SASL_AUTHENTICATION_FAILED and the connection closed soon after; a good one
    serves requests."""
    listen, _ports = listeners("SASL_PLAINTEXT")
    broker = user_broker_factory("--kafka-listen", listen, prepare=users((ALICE, ALICE_PW)))

    with KafkaWire(broker.bootstrap) as wire:
        wire.negotiate()  # ApiVersions is allowed before authentication
        with pytest.raises(ConnectionClosed):
            wire.metadata([])
            wire.metadata([])  # in case the close raced the first answer's read

    with KafkaWire(broker.bootstrap) as wire:
        error, message, _lifetime = plain_login(wire, ALICE, "wrong")
        assert error == ERROR_SASL_AUTHENTICATION_FAILED, (error, message)
        assert wire.wait_closed(5), "the connection stayed open after a failed authentication"

    with KafkaWire(broker.bootstrap) as wire:
        wire.negotiate()
        error, message, lifetime_ms = plain_login(wire, ALICE, ALICE_PW)
        assert error == 0, message
        assert lifetime_ms == 0  # no --kafka-reauth-ms: sessions do not expire
        response = wire.metadata([])
        assert [b.node_id for b in response.brokers], response


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_exchange_by_the_rfc(user_broker_factory, mechanism):
    """A hand-made SCRAM client: the server's nonce extends the client's, its final message
    carries the right ServerSignature; a client-final whose nonce was changed, a wrong password,
    a malformed client-first and one asking for channel binding (which Kafka does not offer)
    are refused with SASL_AUTHENTICATION_FAILED and the connection closed."""
    listen, _ports = listeners("SASL_PLAINTEXT")
    broker = user_broker_factory("--kafka-listen", listen, prepare=users((ALICE, ALICE_PW)))
    with KafkaWire(broker.bootstrap) as wire:
        error, message = scram_login(wire, mechanism, ALICE, ALICE_PW)
        assert error == 0, message
        assert wire.metadata([]).brokers
    for kwargs in ({"password": "wrong"}, {"password": ALICE_PW, "tamper_nonce": True}):
        with KafkaWire(broker.bootstrap) as wire:
            error, message = scram_login(wire, mechanism, ALICE, **kwargs)
            assert error == ERROR_SASL_AUTHENTICATION_FAILED, (kwargs, error, message)
            assert wire.wait_closed(5), f"{kwargs}: still open after a failed authentication"
    for client_first in (b"garbage", b"p=tls-unique,,n=alice,r=abc", b"n,,r=abc",
                         b"\xff\xfe" * 40):
        with KafkaWire(broker.bootstrap) as wire:
            error, _mechanisms = sasl_handshake(wire, mechanism)
            assert error == 0
            error, message, _auth, _lifetime = sasl_authenticate(wire, client_first)
            assert error == ERROR_SASL_AUTHENTICATION_FAILED, (client_first, error, message)
            assert wire.wait_closed(5), f"{client_first!r}: still open"


def test_reauthentication_kip_368(user_broker_factory):
    """--kafka-reauth-ms: SaslAuthenticate tells the session lifetime; re-authenticating on the
    same connection extends it; a request after it expired closes the connection."""
    lifetime = 2000
    listen, ports = listeners("SASL_PLAINTEXT")
    broker = user_broker_factory("--kafka-listen", listen, "--kafka-reauth-ms", lifetime,
                                 prepare=users((ALICE, ALICE_PW)))
    with KafkaWire(broker.bootstrap) as wire:
        wire.negotiate()
        started = time.monotonic()
        error, message, first_ms = plain_login(wire, ALICE, ALICE_PW)
        assert error == 0, message
        assert 0 < first_ms <= lifetime, first_ms
        assert wire.metadata([]).brokers
        time.sleep(1.0)
        renewed = time.monotonic()
        error, message, second_ms = plain_login(wire, ALICE, ALICE_PW)
        assert error == 0, message
        assert 0 < second_ms <= lifetime, second_ms
        # Past the first session's end, inside the second's.
        time.sleep(max(0.0, started + first_ms / 1000 + 0.3 - time.monotonic()))
        assert time.monotonic() < renewed + second_ms / 1000
        assert wire.metadata([]).brokers
        # Past the second session's end without re-authenticating: closed.
        time.sleep(max(0.0, renewed + second_ms / 1000 + 0.5 - time.monotonic()))
        with pytest.raises(ConnectionClosed):
            wire.metadata([])
            wire.metadata([])

    # librdkafka re-authenticates by itself (KIP-368): a producer keeps delivering across
    # several session lifetimes without an error.
    config = sasl_config(ports["SASL_PLAINTEXT"], "SCRAM-SHA-256", ALICE, ALICE_PW)
    errors = ErrorLog()
    producer = Producer({**config, "acks": "all", "error_cb": errors, "linger.ms": 0})
    topic = unique_name("reauth")
    failed, delivered = [], []
    end = time.monotonic() + 2.5 * lifetime / 1000
    while time.monotonic() < end:
        producer.produce(topic, b"v", on_delivery=lambda err, _m: (failed if err else delivered)
                         .append(err))
        producer.poll(0.1)
    assert producer.flush(CLIENT_TIMEOUT_S) == 0
    assert not failed and not errors.errors, (failed[:3], errors.errors[:3])
    assert len(delivered) > 10


def test_reauthentication_checks_again(user_broker_factory):
    """KIP-368 re-authentication is a full login: a wrong password, another principal or
    another mechanism fails it, and the connection is closed (Kafka's behaviour)."""
    listen, _ports = listeners("SASL_PLAINTEXT")
    broker = user_broker_factory("--kafka-listen", listen, "--kafka-reauth-ms", 60000,
                                 prepare=users((ALICE, ALICE_PW), (BOB, BOB_PW)))
    for user, password in ((ALICE, "wrong"), (BOB, BOB_PW)):
        with KafkaWire(broker.bootstrap) as wire:
            wire.negotiate()
            error, message, _lifetime = plain_login(wire, ALICE, ALICE_PW)
            assert error == 0, message
            error, message, _lifetime = plain_login(wire, user, password)
            assert error == ERROR_SASL_AUTHENTICATION_FAILED, (user, error, message)
            assert wire.wait_closed(5), f"re-authentication as {user}: still open"
    with KafkaWire(broker.bootstrap) as wire:
        wire.negotiate()
        error, message, _lifetime = plain_login(wire, ALICE, ALICE_PW)
        assert error == 0, message
        try:
            error, message = scram_login(wire, "SCRAM-SHA-256", ALICE, ALICE_PW)
        except (ConnectionClosed, AssertionError):
            pass  # Kafka closes the connection at the SaslHandshake
        else:
            raise AssertionError("re-authentication with another mechanism succeeded")
        assert wire.wait_closed(5), "re-authentication with another mechanism: still open"


def test_plaintext_loopback_listener_alongside_sasl_listener(user_broker_factory):
    """Two listeners at once: PLAINTEXT on loopback needs no login, SASL_PLAINTEXT does; each
    advertises its own port in Metadata, and both serve the same topics."""
    listen, ports = listeners("PLAINTEXT", "SASL_PLAINTEXT")
    user_broker_factory("--kafka-listen", listen, prepare=users((ALICE, ALICE_PW)))
    plain = plaintext_config(ports["PLAINTEXT"])
    sasl = sasl_config(ports["SASL_PLAINTEXT"], "SCRAM-SHA-512", ALICE, ALICE_PW)
    for config, port in ((plain, ports["PLAINTEXT"]), (sasl, ports["SASL_PLAINTEXT"])):
        brokers = AdminClient(config).list_topics(timeout=10).brokers
        assert [(b.host, b.port) for b in brokers.values()] == [("127.0.0.1", port)], brokers
    topic = unique_name("two-listeners")
    produce_ok(plain, topic, [b"anonymous"])
    produce_ok(sasl, topic, [b"alice"])
    assert consume_values(sasl, topic, 2, unique_name("g")) == [b"anonymous", b"alice"]
    assert consume_values(plain, topic, 2, unique_name("g")) == [b"anonymous", b"alice"]
    # A client that does not log in gets nothing from the SASL listener.
    with pytest.raises(KafkaException):
        AdminClient(plaintext_config(ports["SASL_PLAINTEXT"])).list_topics(timeout=5)


# -- ACLs -------------------------------------------------------------------------------------

ACL_FLAGS = ("--allow-everyone-if-no-acl-found", "false", "--super-users", f"User:{ADMIN}")


def acl_broker(user_broker_factory, *extra_users):
    """SASL_PLAINTEXT, no access without an ACL, admin a super user; topic `orders` exists;
    alice may write and read it and read group g1, carol may only read it."""
    listen, ports = listeners("SASL_PLAINTEXT")
    user_broker_factory("--kafka-listen", listen, *ACL_FLAGS, prepare=users(
        (ADMIN, ADMIN_PW), (ALICE, ALICE_PW), (BOB, BOB_PW), (CAROL, CAROL_PW), *extra_users))
    port = ports["SASL_PLAINTEXT"]
    admin = sasl_config(port, "SCRAM-SHA-256", ADMIN, ADMIN_PW)
    create_topic_as(admin, "orders")
    create_acls_as(admin, [
        allow(f"User:{ALICE}", ResourceType.TOPIC, "orders", AclOperation.WRITE),
        allow(f"User:{ALICE}", ResourceType.TOPIC, "orders", AclOperation.READ),
        allow(f"User:{ALICE}", ResourceType.GROUP, "g1", AclOperation.READ),
        allow(f"User:{CAROL}", ResourceType.TOPIC, "orders", AclOperation.READ),
    ])
    return port, admin


def test_acls_allow_alice_and_refuse_bob(user_broker_factory):
    port, _admin = acl_broker(user_broker_factory)
    alice = sasl_config(port, "SCRAM-SHA-256", ALICE, ALICE_PW)
    values = [b"order-1", b"order-2", b"order-3"]
    produce_ok(alice, "orders", values)
    assert consume_values(alice, "orders", 3, "g1") == values

    # bob has no ACL: his producer learns TOPIC_AUTHORIZATION_FAILED (from Metadata).
    outcome, _errors = produce_failure(sasl_config(port, "PLAIN", BOB, BOB_PW), "orders")
    assert outcome[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, outcome
    # carol may read (so describe) orders, not write it: refused by Produce itself.
    outcome, _errors = produce_failure(sasl_config(port, "PLAIN", CAROL, CAROL_PW), "orders")
    assert outcome[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, outcome

    # alice may read orders but not as a member of group g2.
    error = consumer_error(alice, "orders", "g2")
    assert error.code() == KafkaError.GROUP_AUTHORIZATION_FAILED, error


def test_acls_hide_unauthorized_topics_from_metadata(user_broker_factory):
    port, admin = acl_broker(user_broker_factory)
    create_topic_as(admin, "payments")
    alice = AdminClient(sasl_config(port, "PLAIN", ALICE, ALICE_PW))
    bob = AdminClient(sasl_config(port, "PLAIN", BOB, BOB_PW))
    everything = AdminClient(admin).list_topics(timeout=10).topics
    assert {"orders", "payments"} <= set(everything)
    assert "orders" in alice.list_topics(timeout=10).topics
    assert "payments" not in alice.list_topics(timeout=10).topics
    assert not {"orders", "payments"} & set(bob.list_topics(timeout=10).topics)
    named = bob.list_topics(topic="orders", timeout=10).topics["orders"]
    assert named.error is not None and named.error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_acls_guard_admin_operations(user_broker_factory):
    port, admin = acl_broker(user_broker_factory)
    alice_config = sasl_config(port, "SCRAM-SHA-512", ALICE, ALICE_PW)
    alice = AdminClient(alice_config)

    # CreateTopics needs CREATE on the cluster or the topic.
    topic = unique_name("new")
    error = kafka_error_of(alice.create_topics([NewTopic(topic, 1, 1)],
                                               request_timeout=15)[topic])
    assert error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, error
    create_acls_as(admin, [allow(f"User:{ALICE}", ResourceType.TOPIC, "alice-",
                                 AclOperation.CREATE, ResourcePatternType.PREFIXED)])
    own = unique_name("alice")
    alice.create_topics([NewTopic(own, 1, 1)], request_timeout=15)[own].result(timeout=20)

    # DeleteTopics needs DELETE.
    error = kafka_error_of(alice.delete_topics(["orders"], request_timeout=15)["orders"])
    assert error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, error

    # The ACL APIs need DESCRIBE / ALTER on the cluster. (librdkafka turns DescribeAcls'
    # top-level error into an empty result, so that one is read off the wire.)
    any_acl = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                               AclOperation.ANY, AclPermissionType.ANY)
    try:
        assert alice.describe_acls(any_acl, request_timeout=15).result(timeout=20) == []
    except KafkaException as exc:
        assert exc.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED, exc
    with KafkaWire(f"127.0.0.1:{port}") as wire:
        error, message, _lifetime = plain_login(wire, ALICE, ALICE_PW)
        assert error == 0, message
        assert describe_all_acls_error(wire) == ERROR_CLUSTER_AUTHORIZATION_FAILED
        # So do the SCRAM credential APIs.
        assert describe_scram_credentials_error(wire, ALICE) == ERROR_CLUSTER_AUTHORIZATION_FAILED
    upsert = UserScramCredentialUpsertion(
        ALICE, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 8192), b"stolen")
    error = kafka_error_of(alice.alter_user_scram_credentials([upsert],
                                                              request_timeout=15)[ALICE])
    assert error.code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED, error
    produce_ok(sasl_config(port, "SCRAM-SHA-256", ALICE, ALICE_PW), "orders", [b"unchanged"])
    binding = allow(f"User:{ALICE}", ResourceType.TOPIC, "*", AclOperation.ALL)
    error = kafka_error_of(alice.create_acls([binding], request_timeout=15)[binding])
    assert error.code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED, error
    error = kafka_error_of(alice.delete_acls([any_acl], request_timeout=15)[any_acl])
    assert error.code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED, error


def acl_key(binding: AclBinding):
    return (binding.restype, binding.name, binding.resource_pattern_type, binding.principal,
            binding.host, binding.operation, binding.permission_type)


def test_create_describe_delete_acls_as_super_users(user_broker_factory):
    """Through confluent-kafka's AdminClient, as admin (--super-users) and as root (the
    administrator tag); the bindings take effect and stop doing so once deleted."""
    listen, ports = listeners("SASL_PLAINTEXT")
    user_broker_factory("--kafka-listen", listen, *ACL_FLAGS, prepare=users(
        (ADMIN, ADMIN_PW), ("root", "root-secret", "administrator"), (ALICE, ALICE_PW)))
    port = ports["SASL_PLAINTEXT"]
    admin_config = sasl_config(port, "SCRAM-SHA-256", ADMIN, ADMIN_PW)
    admin = AdminClient(admin_config)
    root = AdminClient(sasl_config(port, "PLAIN", "root", "root-secret"))
    alice = sasl_config(port, "PLAIN", ALICE, ALICE_PW)
    create_topic_as(admin_config, "audit")

    bindings = [
        allow(f"User:{ALICE}", ResourceType.TOPIC, "audit", AclOperation.WRITE),
        allow(f"User:{ALICE}", ResourceType.TOPIC, "audit", AclOperation.READ),
        allow(f"User:{ALICE}", ResourceType.TOPIC, "logs-", AclOperation.WRITE,
              ResourcePatternType.PREFIXED),
        allow("User:bob", ResourceType.GROUP, "*", AclOperation.READ),
    ]
    create_acls_as(admin_config, bindings)

    any_acl = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                               AclOperation.ANY, AclPermissionType.ANY)
    for client in (admin, root):
        described = client.describe_acls(any_acl, request_timeout=15).result(timeout=20)
        assert sorted(map(acl_key, described)) == sorted(map(acl_key, bindings))
    audit_only = AclBindingFilter(ResourceType.TOPIC, "audit", ResourcePatternType.LITERAL, None,
                                  None, AclOperation.ANY, AclPermissionType.ANY)
    described = admin.describe_acls(audit_only, request_timeout=15).result(timeout=20)
    assert sorted(map(acl_key, described)) == sorted(map(acl_key, bindings[:2]))
    # MATCH: the literal bindings of the name and the prefixed ones that cover it.
    matching = AclBindingFilter(ResourceType.TOPIC, "logs-app", ResourcePatternType.MATCH, None,
                                None, AclOperation.ANY, AclPermissionType.ANY)
    described = admin.describe_acls(matching, request_timeout=15).result(timeout=20)
    assert [acl_key(b) for b in described] == [acl_key(bindings[2])]

    produce_ok(alice, "audit", [b"allowed"])

    deleted = root.delete_acls([audit_only], request_timeout=15)[audit_only].result(timeout=20)
    assert sorted(map(acl_key, deleted)) == sorted(map(acl_key, bindings[:2]))
    described = admin.describe_acls(any_acl, request_timeout=15).result(timeout=20)
    assert sorted(map(acl_key, described)) == sorted(map(acl_key, bindings[2:]))
    outcome, _errors = produce_failure(alice, "audit")
    assert outcome[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, outcome


def test_ssl_client_certificate_principal_with_acls(user_broker_factory, certs):
    """On an SSL listener that requires client certificates the principal is the certificate's
    subject in RFC 2253 form; ACLs name it like any other principal."""
    listen, ports = listeners("SSL", "SASL_PLAINTEXT")
    user_broker_factory("--kafka-listen", listen, *tls_flags(certs, "required"), *ACL_FLAGS,
                        prepare=users((ADMIN, ADMIN_PW)))
    admin = sasl_config(ports["SASL_PLAINTEXT"], "PLAIN", ADMIN, ADMIN_PW)
    create_topic_as(admin, "certified")
    create_topic_as(admin, "uncertified")
    create_acls_as(admin, [
        allow(CLIENT_PRINCIPAL, ResourceType.TOPIC, "certified", AclOperation.WRITE),
        allow(CLIENT_PRINCIPAL, ResourceType.TOPIC, "certified", AclOperation.READ),
        allow(CLIENT_PRINCIPAL, ResourceType.GROUP, "cert-group", AclOperation.READ),
    ])
    client = ssl_config(ports["SSL"], certs, certs.client_cert, certs.client_key)
    values = [b"signed-1", b"signed-2"]
    produce_ok(client, "certified", values)
    assert consume_values(client, "certified", 2, "cert-group") == values
    outcome, _errors = produce_failure(client, "uncertified")
    assert outcome[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, outcome
    # The ACLs as stored name the principal exactly so.
    principal_filter = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY,
                                        CLIENT_PRINCIPAL, None, AclOperation.ANY,
                                        AclPermissionType.ANY)
    admin_client = AdminClient(admin)  # must outlive its futures
    described = admin_client.describe_acls(principal_filter,
                                           request_timeout=15).result(timeout=20)
    assert len(described) == 3


def test_ssl_listener_without_client_certificate_is_anonymous(user_broker_factory, certs):
    """--tls-client-auth requested: a client without a certificate is User:ANONYMOUS, one with a
    certificate is its subject; each gets exactly what its ACLs allow."""
    listen, ports = listeners("SSL", "SASL_PLAINTEXT")
    user_broker_factory("--kafka-listen", listen, *tls_flags(certs, "requested"), *ACL_FLAGS,
                        prepare=users((ADMIN, ADMIN_PW)))
    admin = sasl_config(ports["SASL_PLAINTEXT"], "PLAIN", ADMIN, ADMIN_PW)
    create_topic_as(admin, "for-anonymous")
    create_topic_as(admin, "for-client")
    create_acls_as(admin, [
        allow("User:ANONYMOUS", ResourceType.TOPIC, "for-anonymous", AclOperation.WRITE),
        allow(CLIENT_PRINCIPAL, ResourceType.TOPIC, "for-client", AclOperation.WRITE),
    ])
    anonymous = ssl_config(ports["SSL"], certs)
    client = ssl_config(ports["SSL"], certs, certs.client_cert, certs.client_key)
    produce_ok(anonymous, "for-anonymous", [b"anon"])
    produce_ok(client, "for-client", [b"cert"])
    for config, topic in ((anonymous, "for-client"), (client, "for-anonymous")):
        outcome, _errors = produce_failure(config, topic)
        assert outcome[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, (topic, outcome)


def test_acls_and_credentials_survive_a_restart(user_broker_factory):
    listen, ports = listeners("SASL_PLAINTEXT")
    broker = user_broker_factory("--kafka-listen", listen, *ACL_FLAGS,
                                 prepare=users((ADMIN, ADMIN_PW)))
    port = ports["SASL_PLAINTEXT"]
    admin_config = sasl_config(port, "SCRAM-SHA-256", ADMIN, ADMIN_PW)
    admin = AdminClient(admin_config)
    create_topic_as(admin_config, "kept")
    binding = allow("User:erin", ResourceType.TOPIC, "kept", AclOperation.WRITE)
    create_acls_as(admin_config, [binding])
    upsert = UserScramCredentialUpsertion(
        "erin", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), b"erin-secret")
    admin.alter_user_scram_credentials([upsert], request_timeout=15)["erin"].result(timeout=20)
    erin = sasl_config(port, "SCRAM-SHA-512", "erin", "erin-secret")
    produce_ok(erin, "kept", [b"before"])
    del admin

    broker.restart()
    admin = AdminClient(admin_config)
    any_acl = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                               AclOperation.ANY, AclPermissionType.ANY)
    described = admin.describe_acls(any_acl, request_timeout=15).result(timeout=20)
    assert [acl_key(b) for b in described] == [acl_key(binding)]
    produce_ok(erin, "kept", [b"after"])
    outcome, _errors = produce_failure(erin, unique_name("not-kept"))
    assert outcome[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, outcome


def test_http_api_user_logs_in_over_kafka_sasl(user_broker_factory):
    """One user store: a user made through the HTTP API logs in with every mechanism; deleted,
    with none."""
    listen, ports = listeners("SASL_PLAINTEXT")
    broker = user_broker_factory("--kafka-listen", listen)
    response = requests.put(f"{broker.http_url}/api/users/grace", auth=("guest", "guest"),
                            json={"password": "grace-secret", "tags": ""}, timeout=10)
    assert response.status_code in (201, 204), response.text
    topic = unique_name("grace")
    for mechanism in MECHANISMS:
        produce_ok(sasl_config(ports["SASL_PLAINTEXT"], mechanism, "grace", "grace-secret"),
                   topic, [mechanism.encode()])
    response = requests.delete(f"{broker.http_url}/api/users/grace", auth=("guest", "guest"),
                               timeout=10)
    assert response.status_code in (200, 204), response.text
    auth_error_within(sasl_config(ports["SASL_PLAINTEXT"], "PLAIN", "grace", "grace-secret"))
    auth_error_within(sasl_config(ports["SASL_PLAINTEXT"], "SCRAM-SHA-256", "grace",
                                  "grace-secret"))


# -- SCRAM credentials through the admin API --------------------------------------------------

def test_scram_credentials_admin_api(user_broker_factory):
    listen, ports = listeners("SASL_PLAINTEXT")
    broker = user_broker_factory("--kafka-listen", listen, prepare=users(
        (ADMIN, ADMIN_PW, "administrator"), (ALICE, ALICE_PW)))
    port = ports["SASL_PLAINTEXT"]
    admin = AdminClient(sasl_config(port, "SCRAM-SHA-512", ADMIN, ADMIN_PW))

    # A new user with one SCRAM-SHA-256 credential.
    upsert = UserScramCredentialUpsertion(
        "dave", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 8192), b"dave-secret")
    for user, future in admin.alter_user_scram_credentials([upsert],
                                                           request_timeout=15).items():
        assert future.result(timeout=20) is None, user
    described = admin.describe_user_scram_credentials(["dave"], request_timeout=15)
    description = described["dave"].result(timeout=20)
    assert [(i.mechanism, i.iterations) for i in description.scram_credential_infos] == [
        (ScramMechanism.SCRAM_SHA_256, 8192)]
    # A user from a password has both.
    description = admin.describe_user_scram_credentials(
        [ALICE], request_timeout=15)[ALICE].result(timeout=20)
    assert {i.mechanism for i in description.scram_credential_infos} == {
        ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512}
    # No credentials: RESOURCE_NOT_FOUND.
    error = kafka_error_of(admin.describe_user_scram_credentials(
        ["nobody"], request_timeout=15)["nobody"])
    assert error.code() == KafkaError.RESOURCE_NOT_FOUND, error

    # dave logs in with the credential he has, not with one he lacks.
    topic = unique_name("dave")
    produce_ok(sasl_config(port, "SCRAM-SHA-256", "dave", "dave-secret"), topic, [b"hi"])
    auth_error_within(sasl_config(port, "SCRAM-SHA-512", "dave", "dave-secret"))
    # The same user store: the HTTP API lists him.
    listed = requests.get(f"{broker.http_url}/api/users", auth=("guest", "guest"), timeout=10)
    assert listed.status_code == 200, listed.text
    assert "dave" in {u["name"] for u in listed.json()}

    # Changing alice's SCRAM-SHA-512 password: the old one stops working for it.
    upsert = UserScramCredentialUpsertion(
        ALICE, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), b"new-alice-secret")
    admin.alter_user_scram_credentials([upsert], request_timeout=15)[ALICE].result(timeout=20)
    produce_ok(sasl_config(port, "SCRAM-SHA-512", ALICE, "new-alice-secret"), topic, [b"new"])
    auth_error_within(sasl_config(port, "SCRAM-SHA-512", ALICE, ALICE_PW))

    # Deleting dave's only credential: he can no longer log in.
    deletion = UserScramCredentialDeletion("dave", ScramMechanism.SCRAM_SHA_256)
    admin.alter_user_scram_credentials([deletion], request_timeout=15)["dave"].result(timeout=20)
    error = kafka_error_of(admin.describe_user_scram_credentials(
        ["dave"], request_timeout=15)["dave"])
    assert error.code() == KafkaError.RESOURCE_NOT_FOUND, error
    auth_error_within(sasl_config(port, "SCRAM-SHA-256", "dave", "dave-secret"))


# -- safe default: no unauthenticated listener off loopback -----------------------------------

def serve_briefly(tmp_path, listen: str, *flags, timeout_s=20) -> subprocess.CompletedProcess:
    """Runs `sluice serve` expecting it to refuse to start; fails the test if it is still
    running after `timeout_s`."""
    data_dir = tmp_path / unique_name("refused")
    data_dir.mkdir()
    command = [str(sluice_bin()), "serve", "--data-dir", str(data_dir), "--kafka-listen", listen,
               "--amqp-listen", f"127.0.0.1:{free_port()}",
               "--http-listen", f"127.0.0.1:{free_port()}", *map(str, flags)]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                              env={**clean_env(), "NO_COLOR": "1"}, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`{' '.join(command)}` started (still running after {timeout_s}s) instead "
                    f"of refusing: {exc.stdout!r} {exc.stderr!r}")


@pytest.mark.parametrize("scheme", ["PLAINTEXT://", "", "SSL://"])
def test_unauthenticated_listener_off_loopback_refuses_to_start(tmp_path, certs, scheme):
    port = free_port()
    listen = f"{scheme}0.0.0.0:{port}"
    tls = tls_flags(certs) if scheme == "SSL://" else []
    result = serve_briefly(tmp_path, listen, *tls)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"0.0.0.0:{port}" in output, f"the error does not name the listener:\n{output}"


def test_unauthenticated_listener_off_loopback_starts_when_allowed(broker_factory, certs):
    port = free_port()
    broker = broker_factory("--kafka-listen", f"PLAINTEXT://0.0.0.0:{port}",
                            "--allow-unauthenticated", "true")
    assert broker.port == port
    assert AdminClient(plaintext_config(port)).list_topics(timeout=10).brokers


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SSL"])
def test_authenticated_listener_off_loopback_starts(broker_factory, certs, protocol):
    port = free_port()
    tls = tls_flags(certs, "required") if protocol == "SSL" else []
    broker = broker_factory("--kafka-listen", f"{protocol}://0.0.0.0:{port}", *tls)
    assert broker.running()


# -- hostile input on secured ports -----------------------------------------------------------

APIVERSIONS_V0 = frame(18, 0, 1, b"")  # what a plaintext client sends first


def assert_closed(sock: socket.socket, timeout_s: float = 10.0, what: str = "") -> bytes:
    """The server must close `sock` within timeout_s; whatever it sent first is returned and
    may only be a TLS alert record (content type 21)."""
    deadline = time.monotonic() + timeout_s
    received = b""
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{what}: still open after {timeout_s}s (got {received[:40]!r})"
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            break
        except socket.timeout:
            continue
        if not chunk:
            break
        received += chunk
    assert not received or received[0] == 0x15, f"{what}: answered with {received[:40]!r}"
    return received


def test_garbage_on_tls_ports_is_dropped_while_good_clients_work(user_broker_factory, certs):
    listen, ports = listeners("SASL_SSL", "SSL")
    user_broker_factory("--kafka-listen", listen, *tls_flags(certs),
                        prepare=users((ALICE, ALICE_PW)))
    good = sasl_config(ports["SASL_SSL"], "SCRAM-SHA-256", ALICE, ALICE_PW, "SASL_SSL", certs)
    topic = unique_name("amid-garbage")
    produce_ok(good, topic, [b"before"])

    payloads = {
        "plaintext ApiVersions": APIVERSIONS_V0,
        "random bytes": os.urandom(4096),
        "HTTP": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    }
    hostile = []
    for protocol in ("SASL_SSL", "SSL"):
        for name, payload in payloads.items():
            sock = socket.create_connection(("127.0.0.1", ports[protocol]), timeout=5)
            sock.sendall(payload)
            hostile.append((f"{name} to {protocol}", sock))
        # A real TLS session, then garbage inside it (an absurd Kafka frame size).
        tls = certs.server_context().wrap_socket(
            socket.create_connection(("127.0.0.1", ports[protocol]), timeout=5),
            server_hostname="localhost")
        tls.sendall(b"\x7f\xff\xff\xff" + os.urandom(64))
        hostile.append((f"garbage frame inside TLS on {protocol}", tls))

    # While those hang there, a good client does a full round trip.
    result = {}

    def good_client():
        try:
            produce_ok(good, topic, [b"during"])
            result["values"] = consume_values(good, topic, 2, unique_name("g"))
        except BaseException as exc:  # reported by the main thread
            result["error"] = exc

    thread = threading.Thread(target=good_client)
    thread.start()
    try:
        for what, sock in hostile:
            if isinstance(sock, ssl.SSLSocket):
                deadline = time.monotonic() + 10
                while True:  # inside TLS: EOF, a reset or an SSL error all mean closed
                    assert time.monotonic() < deadline, f"{what}: still open"
                    try:
                        sock.settimeout(max(0.1, deadline - time.monotonic()))
                        data = sock.recv(65536)
                    except (ssl.SSLError, ConnectionError, OSError):
                        break
                    if not data:
                        break
                    raise AssertionError(f"{what}: answered with {data[:40]!r}")
            else:
                assert_closed(sock, what=what)
    finally:
        thread.join(CLIENT_TIMEOUT_S * 3)
        for _what, sock in hostile:
            sock.close()
    assert "error" not in result, result.get("error")
    assert result.get("values") == [b"before", b"during"]


def test_untrusted_or_missing_client_certificate_is_refused(user_broker_factory, certs):
    listen, ports = listeners("SSL")
    user_broker_factory("--kafka-listen", listen, *tls_flags(certs, "required"))
    port = ports["SSL"]
    assert tls_handshake_outcome(port, certs.client_context()) == "open"
    for what, context in (
            ("untrusted", certs.client_context(certs.untrusted_client_cert,
                                               certs.untrusted_client_key)),
            ("expired", certs.client_context(certs.expired_client_cert,
                                             certs.expired_client_key)),
            ("no certificate", certs.server_context())):
        outcome = tls_handshake_outcome(port, context)
        assert outcome.startswith("refused"), f"{what} client certificate: {outcome}"

    # librdkafka with the untrusted certificate gets no metadata; with the trusted one it does.
    untrusted = AdminClient(ssl_config(port, certs, certs.untrusted_client_cert,
                                       certs.untrusted_client_key))
    with pytest.raises(KafkaException):
        untrusted.list_topics(timeout=5)
    trusted = AdminClient(ssl_config(port, certs, certs.client_cert, certs.client_key))
    assert trusted.list_topics(timeout=10).brokers
