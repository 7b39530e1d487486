"""Kafka security, differentially: the same SASL, ACL and SCRAM-credential scenarios against an
Apache Kafka node started with security and against Sluice configured the same way.

Both targets have one SASL_PLAINTEXT listener on loopback with PLAIN, SCRAM-SHA-256 and
SCRAM-SHA-512, the users admin, alice and bob (passwords `<name>-pw`), `User:admin` as the only
super user, and no access where no ACL grants it (allow.everyone.if.no.acl.found=false).

Apache Kafka (a second KRaft node of its own, separate from the session's plaintext one in
conftest.py) has its PLAIN users in the listener's JAAS configuration and its SCRAM users
formatted into its metadata log (`kafka-storage format --add-scram`); its controller listener
authenticates with PLAIN as admin too, as a super user must be the principal of its own node.
Sluice gets the users through its HTTP API (guest/guest from loopback), untagged so that only
--super-users makes anyone a super user.

The Kafka node lives for the session, so every test starts by deleting every ACL on it (and
waits until its authorizer shows none) and takes its topic and group names from `name()`.
Kafka applies ACL and SCRAM changes asynchronously (the controller commits, then the broker's
metadata listener applies them): an outcome that follows such a change is polled for up to
PROPAGATION_S, on both targets alike (Sluice applies them before it answers).

Not compared, as the two are configured differently there by design: a user made only through
AlterUserScramCredentials (carol) cannot log in with PLAIN on Kafka, whose PLAIN users are the
static list in its JAAS configuration, while Sluice checks PLAIN against the same user store as
SCRAM (and so accepts her).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation,
                                   AclPermissionType, AdminClient, NewTopic, ResourcePatternType,
                                   ResourceType, ScramCredentialInfo, ScramMechanism,
                                   UserScramCredentialDeletion, UserScramCredentialUpsertion)

import differential
from conftest import free_port
from kafka_wire import ConnectionClosed, KafkaWire
from sasl_wire import (describe_all_acls_error, describe_scram_credentials_error, plain_login,
                       sasl_handshake)

from .conftest import (HERE, KAFKA_START_TIMEOUT_S, KAFKA_STOP_TIMEOUT_S, class_path, java,
                       node_lifetime, run_java, selected_targets)

MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
USERS = {"admin": "admin-pw", "alice": "alice-pw", "bob": "bob-pw"}
ADMIN, ALICE, BOB = "admin", "alice", "bob"
CLIENT_TIMEOUT_S = 20
PROPAGATION_S = 10
CLUSTER_NAME = "kafka-cluster"

ERROR_TOPIC_AUTHORIZATION_FAILED = 29
ERROR_CLUSTER_AUTHORIZATION_FAILED = 31
ERROR_UNSUPPORTED_SASL_MECHANISM = 33
ERROR_SASL_AUTHENTICATION_FAILED = 58
ERROR_UNKNOWN_TOPIC_OR_PARTITION = 3

pytestmark = pytest.mark.timeout(300)

ANY_ACL = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                           AclOperation.ANY, AclPermissionType.ANY)


# -- the secured Apache Kafka node ------------------------------------------------------------

def jaas_plain(*, login_as_admin: bool, users: dict[str, str]) -> str:
    login = f'username="{ADMIN}" password="{USERS[ADMIN]}" ' if login_as_admin else ""
    accounts = " ".join(f'user_{name}="{password}"' for name, password in users.items())
    return f"org.apache.kafka.common.security.plain.PlainLoginModule required {login}{accounts};"


SCRAM_JAAS = "org.apache.kafka.common.security.scram.ScramLoginModule required;"


def client_config(bootstrap: str, user: str, password: str, mechanism: str) -> dict:
    return {"bootstrap.servers": bootstrap, "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanisms": mechanism, "sasl.username": user, "sasl.password": password,
            "socket.timeout.ms": 10000, "reconnect.backoff.max.ms": 1000}


class SecureKafkaNode:
    """Apache Kafka, KRaft, one process: SASL_PLAINTEXT for clients, the StandardAuthorizer,
    super.users=User:admin, allow.everyone.if.no.acl.found=false."""

    def __init__(self, base_dir: Path):
        self.base_dir = base_dir
        self.port = free_port()
        self.controller_port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = base_dir / "server.log"
        self.stdout_path = base_dir / "stdout.log"
        self.config_path = base_dir / "server.properties"
        self.process = None
        self.config_path.write_text("\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
            f"listeners=SASL_PLAINTEXT://127.0.0.1:{self.port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{self.port}",
            "listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,"
            "CONTROLLER:SASL_PLAINTEXT",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=SASL_PLAINTEXT",
            # The clients' listener.
            "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
            "sasl.mechanism.inter.broker.protocol=PLAIN",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config="
            + jaas_plain(login_as_admin=True, users=USERS),
            f"listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config={SCRAM_JAAS}",
            f"listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config={SCRAM_JAAS}",
            # The controller listener: the node's own broker registers there, as admin (with a
            # PLAINTEXT controller listener it would be User:ANONYMOUS, which the authorizer
            # refuses CLUSTER_ACTION unless it is made a super user as well).
            "sasl.mechanism.controller.protocol=PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
            "listener.name.controller.plain.sasl.jaas.config="
            + jaas_plain(login_as_admin=True, users={ADMIN: USERS[ADMIN]}),
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            f"super.users=User:{ADMIN}",
            "allow.everyone.if.no.acl.found=false",
            f"log.dirs={base_dir / 'data'}",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=3",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=3",
            "group.initial.rebalance.delay.ms=0",
            "",
        ]))

    def format_storage(self):
        cluster_id = run_java("kafka.tools.StorageTool", "random-uuid").stdout.strip()
        scram = []
        for name, password in USERS.items():
            for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
                scram += ["--add-scram", f"{mechanism}=[name={name},password={password}]"]
        result = run_java("kafka.tools.StorageTool", "format", "-t", cluster_id,
                          "-c", self.config_path, *scram)
        if result.returncode != 0:
            raise RuntimeError(f"kafka-storage format failed ({result.returncode}): "
                               f"{result.stdout} {result.stderr}")

    def start(self):
        with open(self.stdout_path, "ab") as out:
            self.process = subprocess.Popen(
                [java(), "-Xms256m", "-Xmx1g", "-XX:+UseG1GC",
                 f"-Dlog4j2.configurationFile={HERE / 'reference' / 'log4j2.properties'}",
                 f"-Dkafka.log.file={self.log_path}",
                 "-cp", class_path(), "kafka.Kafka", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.base_dir, start_new_session=True)
        error = self.wait_until_serving()
        if error is not None:
            code = self.process.poll()
            self.kill()
            last_lines = " | ".join(self.log_tail(3).splitlines())
            raise RuntimeError(f"secured Apache Kafka did not serve {self.bootstrap} (exit code "
                               f"{code}, last error {error}); logs in {self.base_dir}: "
                               f"{last_lines}")

    def wait_until_serving(self) -> str | None:
        """Until admin gets Metadata with the broker in it; None when it does."""
        deadline = time.monotonic() + KAFKA_START_TIMEOUT_S
        error = "not tried"
        config = client_config(self.bootstrap, ADMIN, USERS[ADMIN], "PLAIN")
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                if AdminClient(config).list_topics(timeout=5).brokers:
                    return None
                error = "no brokers in Metadata"
            except Exception as exc:  # refused while booting: retry until the deadline
                error = repr(exc)
            time.sleep(0.3)
        return error

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=KAFKA_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self):
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=KAFKA_STOP_TIMEOUT_S)

    def log_tail(self, lines=40) -> str:
        return differential.log_tail([self.stdout_path, self.log_path], lines, "(no Kafka log)")


@pytest.fixture(scope="session")
def secure_kafka_node():
    yield from node_lifetime(SecureKafkaNode, "sluice-kafka-secure-", "the secured Apache Kafka")


# -- targets ----------------------------------------------------------------------------------

class SecureTarget:
    """A secured broker as the tests see it: its SASL_PLAINTEXT address, client
    configurations per user, and admin clients kept for the test (a future outlives no
    client it came from)."""

    kind = "?"

    def __init__(self, bootstrap: str):
        self.bootstrap = bootstrap
        self._admins = {}

    def name(self, prefix: str = "t") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}"

    def config(self, user: str = ALICE, mechanism: str = "PLAIN", password: str | None = None,
               **extra) -> dict:
        password = USERS[user] if password is None else password
        return {**client_config(self.bootstrap, user, password, mechanism), **extra}

    def admin(self, user: str = ADMIN, mechanism: str = "SCRAM-SHA-256") -> AdminClient:
        key = (user, mechanism)
        if key not in self._admins:
            self._admins[key] = AdminClient(self.config(user, mechanism))
        return self._admins[key]

    def create_topic(self, partitions: int = 1) -> str:
        topic = self.name("topic")
        admin = self.admin()
        futures = admin.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=30,
                                      request_timeout=30)
        futures[topic].result(timeout=40)
        deadline = time.monotonic() + 30
        while True:
            found = admin.list_topics(topic, timeout=10).topics.get(topic)
            if (found is not None and found.error is None and len(found.partitions) == partitions
                    and all(p.leader >= 0 for p in found.partitions.values())):
                return topic
            assert time.monotonic() < deadline, f"{topic}: no leader in Metadata: {found}"
            time.sleep(0.1)

    def create_acls(self, bindings: list[AclBinding]):
        futures = self.admin().create_acls(bindings, request_timeout=15)
        for binding, future in futures.items():
            assert future.result(timeout=CLIENT_TIMEOUT_S) is None, binding

    def describe_acls(self, acl_filter: AclBindingFilter, client: AdminClient | None = None):
        client = client or self.admin()
        return client.describe_acls(acl_filter, request_timeout=15).result(timeout=CLIENT_TIMEOUT_S)


class KafkaSecureTarget(SecureTarget):
    kind = "kafka"

    def __init__(self, node: SecureKafkaNode):
        super().__init__(node.bootstrap)
        self.node = node

    def reset(self):
        """No ACL left from an earlier test: deleted, and gone from the broker's authorizer."""
        admin = self.admin()
        admin.delete_acls([ANY_ACL], request_timeout=15)[ANY_ACL].result(timeout=CLIENT_TIMEOUT_S)
        eventually(lambda: self.describe_acls(ANY_ACL) == [] or fail("ACLs still listed"))


class SluiceSecureTarget(SecureTarget):
    kind = "sluice"

    def __init__(self, broker):
        super().__init__(broker.bootstrap)
        self.broker = broker

    def add_user(self, name: str, password: str):
        response = requests.put(f"{self.broker.http_url}/api/users/{name}",
                                json={"password": password, "tags": ""},
                                auth=("guest", "guest"), timeout=10)
        assert response.status_code in (201, 204), (name, response.status_code, response.text)


@pytest.fixture(params=selected_targets())
def secure(request):
    if request.param == "kafka":
        node = request.getfixturevalue("secure_kafka_node")
        # conftest.py's report hook attaches the log tail of the node named so to a failure.
        request.node._kafka_node = node
        target = KafkaSecureTarget(node)
        target.reset()
    else:
        port = free_port()
        broker = request.getfixturevalue("broker_factory")(
            "--kafka-listen", f"SASL_PLAINTEXT://127.0.0.1:{port}",
            "--allow-everyone-if-no-acl-found", "false", "--super-users", f"User:{ADMIN}")
        assert broker.port == port
        target = SluiceSecureTarget(broker)
        for name, password in USERS.items():
            target.add_user(name, password)
    yield target
    target._admins.clear()


# -- helpers ----------------------------------------------------------------------------------

def fail(message: str):
    raise AssertionError(message)


def eventually(check, timeout_s: float = PROPAGATION_S, interval_s: float = 0.3):
    """check() until it returns without an AssertionError or KafkaException (ACL and SCRAM
    changes reach Kafka's broker asynchronously); its last failure if it never does."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return check()
        except (AssertionError, KafkaException):
            if time.monotonic() >= deadline:
                raise
        time.sleep(interval_s)


class ErrorLog:
    """An error_cb that keeps what librdkafka reports."""

    def __init__(self):
        self.errors: list[KafkaError] = []

    def __call__(self, error):
        self.errors.append(error)

    def codes(self):
        return {e.code() for e in self.errors}


def allow(principal: str, restype: ResourceType, name: str, operation: AclOperation,
          pattern=ResourcePatternType.LITERAL, host="*",
          permission=AclPermissionType.ALLOW) -> AclBinding:
    return AclBinding(restype, name, pattern, principal, host, operation, permission)


def acl_key(binding: AclBinding) -> tuple:
    return (binding.restype, binding.name, binding.resource_pattern_type, binding.principal,
            binding.host, binding.operation, binding.permission_type)


def acl_keys(bindings) -> set:
    keys = [acl_key(b) for b in bindings]
    assert len(keys) == len(set(keys)), f"a binding listed twice: {sorted(keys)}"
    return set(keys)


def login_ok(config: dict) -> None:
    """Metadata as the configured user (after a successful SASL login)."""
    errors = ErrorLog()
    metadata = AdminClient({**config, "error_cb": errors}).list_topics(timeout=10)
    assert metadata.brokers, metadata
    assert KafkaError._AUTHENTICATION not in errors.codes(), errors.errors


def login_refused(config: dict, timeout_s: float = 15) -> None:
    """A producer with `config` sends one message; its login must be refused: librdkafka
    reports _AUTHENTICATION through error_cb and the message is never delivered."""
    errors = ErrorLog()
    producer = Producer({**config, "error_cb": errors, "message.timeout.ms": timeout_s * 1000})
    delivered = []
    producer.produce(f"auth-{uuid.uuid4().hex[:8]}", b"x",
                     on_delivery=lambda err, _msg: delivered.append(err is None))
    deadline = time.monotonic() + timeout_s
    while KafkaError._AUTHENTICATION not in errors.codes() and time.monotonic() < deadline:
        producer.poll(0.2)
    producer.purge()
    producer.flush(5)
    assert KafkaError._AUTHENTICATION in errors.codes(), (
        f"no authentication error within {timeout_s}s; errors: {errors.errors}")
    assert True not in delivered, "a message was delivered without authentication"


def produce_outcome(config: dict, topic: str, value: bytes, timeout_s: float = 10):
    """Produces one message (acks=all); None when delivered, else its KafkaError."""
    errors = ErrorLog()
    producer = Producer({**config, "acks": "all", "linger.ms": 0, "error_cb": errors,
                         "message.timeout.ms": int(timeout_s * 1000)})
    outcome = []
    producer.produce(topic, value, on_delivery=lambda err, _msg: outcome.append(err))
    producer.flush(timeout_s + 5)
    assert outcome, f"no delivery report for {topic} (client errors {errors.errors[:3]})"
    return outcome[0]


def consume_outcome(config: dict, topic: str, group: str, count: int, timeout_s: float = 20):
    """Subscribes to `topic` in `group` and reads from the beginning: the first error the
    consumer gets, or the `count` values it read."""
    consumer = Consumer({**config, "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, "session.timeout.ms": 6000})
    try:
        consumer.subscribe([topic])
        got = []
        deadline = time.monotonic() + timeout_s
        while len(got) < count:
            assert time.monotonic() < deadline, (
                f"neither an error nor {count} values from {topic} in {timeout_s}s: {got}")
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:
                return message.error()
            got.append(message.value())
        return got
    finally:
        consumer.close()


def error_code_of(future) -> int | None:
    """The error code an admin future fails with; None if it succeeds."""
    try:
        future.result(timeout=CLIENT_TIMEOUT_S)
    except KafkaException as exc:
        return exc.args[0].code()
    return None


# -- 1. SASL logins ---------------------------------------------------------------------------

@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_sasl_login_succeeds_and_wrong_password_fails(secure, mechanism):
    login_ok(secure.config(ALICE, mechanism))
    login_refused(secure.config(ALICE, mechanism, password="not-alices-password"))
    login_refused(secure.config("mallory", mechanism, password=USERS[ALICE]))
    # The right password still works afterwards.
    login_ok(secure.config(ALICE, mechanism))


def test_sasl_wire_rules(secure):
    """Byte for byte: the enabled mechanisms in a refused SaslHandshake; a request other than
    ApiVersions or SaslHandshake before authenticating closes the connection; a wrong PLAIN
    password is SASL_AUTHENTICATION_FAILED and the connection is closed; a good login gets
    Metadata."""
    with KafkaWire(secure.bootstrap) as wire:
        wire.negotiate()  # ApiVersions is allowed before authenticating
        error, mechanisms = sasl_handshake(wire, "GSSAPI")
        # Kafka lists them in the order of a hash map's keys: the order means nothing.
        assert (error, sorted(mechanisms)) == (ERROR_UNSUPPORTED_SASL_MECHANISM, list(MECHANISMS))

    with KafkaWire(secure.bootstrap) as wire:
        wire.negotiate()
        with pytest.raises(ConnectionClosed):
            wire.metadata([])
            wire.metadata([])  # in case the close raced the first answer's read

    with KafkaWire(secure.bootstrap) as wire:
        error, message, _lifetime = plain_login(wire, ALICE, "wrong")
        assert error == ERROR_SASL_AUTHENTICATION_FAILED, (error, message)
        assert wire.wait_closed(5), "the connection stayed open after a failed authentication"

    with KafkaWire(secure.bootstrap) as wire:
        wire.negotiate()
        error, message, _lifetime = plain_login(wire, ALICE, USERS[ALICE])
        assert error == 0, message
        assert [b.node_id for b in wire.metadata([]).brokers]


# -- 2. produce and consume under ACLs --------------------------------------------------------

def test_produce_and_consume_need_acls(secure):
    topic = secure.create_topic()
    group = secure.name("g")
    alice = secure.config(ALICE, "SCRAM-SHA-256")
    principal = f"User:{ALICE}"

    # No ACL for alice: her producer learns TOPIC_AUTHORIZATION_FAILED.
    error = produce_outcome(alice, topic, b"refused")
    assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, error

    # WRITE on the topic (literal): delivered.
    secure.create_acls([allow(principal, ResourceType.TOPIC, topic, AclOperation.WRITE)])
    eventually(lambda: produce_outcome(alice, topic, b"v1") is None or fail("not delivered"))
    assert produce_outcome(alice, topic, b"v2") is None

    # WRITE does not let her read it; READ on the topic without READ on the group:
    # GROUP_AUTHORIZATION_FAILED.
    secure.create_acls([allow(principal, ResourceType.TOPIC, topic, AclOperation.READ)])

    def group_refused():
        error = consume_outcome(alice, topic, group, 1, timeout_s=15)
        assert isinstance(error, KafkaError), f"read without a group ACL: {error}"
        assert error.code() == KafkaError.GROUP_AUTHORIZATION_FAILED, error
    eventually(group_refused)

    # READ on the group too: she reads both values.
    secure.create_acls([allow(principal, ResourceType.GROUP, group, AclOperation.READ)])
    eventually(lambda: consume_outcome(alice, topic, group, 2) == [b"v1", b"v2"]
               or fail("values not read"))

    # bob, with no ACL, still gets nothing.
    bob = secure.config(BOB, "PLAIN")
    error = produce_outcome(bob, topic, b"bob")
    assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, error


def test_read_on_group_without_read_on_topic(secure):
    """READ on the group but only WRITE (so DESCRIBE) on the topic: the consumer joins and is
    refused the topic."""
    topic = secure.create_topic()
    group = secure.name("g")
    principal = f"User:{ALICE}"
    secure.create_acls([allow(principal, ResourceType.TOPIC, topic, AclOperation.WRITE),
                        allow(principal, ResourceType.GROUP, group, AclOperation.READ)])
    alice = secure.config(ALICE, "PLAIN")
    eventually(lambda: produce_outcome(alice, topic, b"v") is None or fail("not delivered"))
    error = consume_outcome(alice, topic, group, 1)
    assert isinstance(error, KafkaError), f"read without READ on the topic: {error}"
    assert error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, error


# -- 3. CreateAcls / DescribeAcls / DeleteAcls ------------------------------------------------

def test_create_describe_delete_acls(secure):
    p = secure.name("sec")  # every resource name of this test starts with it
    orders = f"{p}-orders"
    alice, bob = f"User:{ALICE}", f"User:{BOB}"
    T, G, C, X = (ResourceType.TOPIC, ResourceType.GROUP, ResourceType.BROKER,
                  ResourceType.TRANSACTIONAL_ID)
    LIT, PRE = ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED
    bindings = {
        "orders-read": allow(alice, T, orders, AclOperation.READ),
        "orders-deny": allow(bob, T, orders, AclOperation.WRITE, host="127.0.0.1",
                             permission=AclPermissionType.DENY),
        "prefix-write": allow(alice, T, f"{p}-", AclOperation.WRITE, PRE),
        "any-topic": allow(bob, T, "*", AclOperation.DESCRIBE),
        "group": allow(alice, G, f"{p}-g", AclOperation.READ),
        "group-prefix": allow(bob, G, f"{p}-", AclOperation.READ, PRE),
        "cluster": allow(bob, C, CLUSTER_NAME, AclOperation.DESCRIBE),
        "txn": allow(alice, X, f"{p}-tx", AclOperation.WRITE),
        "other-principal": allow("User:carol", T, orders, AclOperation.ALL),
    }
    secure.create_acls(list(bindings.values()))

    def keys(*names):
        return {acl_key(bindings[n]) for n in names}

    def described(restype=ResourceType.ANY, name=None, pattern=ResourcePatternType.ANY,
                  principal=None, host=None, operation=AclOperation.ANY,
                  permission=AclPermissionType.ANY):
        return acl_keys(secure.describe_acls(AclBindingFilter(
            restype, name, pattern, principal, host, operation, permission)))

    everything = keys(*bindings)
    eventually(lambda: described() == everything or fail(f"{described()} != {everything}"))
    # By principal.
    assert described(principal=alice) == keys("orders-read", "prefix-write", "group", "txn")
    assert described(principal=bob) == keys("orders-deny", "any-topic", "group-prefix",
                                            "cluster")
    assert described(principal="User:nobody") == set()
    # By resource: LITERAL is that exact literal name, MATCH adds the wildcard and the
    # prefixes that cover it, PREFIXED is that exact prefix, ANY is any pattern of that name.
    literal = keys("orders-read", "orders-deny", "other-principal")
    assert described(T, orders, LIT) == literal
    assert described(T, orders, ResourcePatternType.MATCH) == literal | keys("prefix-write",
                                                                              "any-topic")
    assert described(T, orders, ResourcePatternType.ANY) == literal
    assert described(T, f"{p}-", PRE) == keys("prefix-write")
    assert described(T, f"{p}-", ResourcePatternType.ANY) == keys("prefix-write")
    assert described(T, "*", LIT) == keys("any-topic")
    assert described(G, f"{p}-g", ResourcePatternType.MATCH) == keys("group", "group-prefix")
    assert described(G) == keys("group", "group-prefix")
    assert described(C) == keys("cluster")
    assert described(X) == keys("txn")
    # By the other fields.
    assert described(operation=AclOperation.WRITE) == keys("orders-deny", "prefix-write", "txn")
    assert described(permission=AclPermissionType.DENY) == keys("orders-deny")
    assert described(host="127.0.0.1") == keys("orders-deny")
    assert described(T, orders, ResourcePatternType.MATCH, principal=alice) == keys(
        "orders-read", "prefix-write")

    # DeleteAcls returns what it deleted; MATCH deletes what it matches.
    admin = secure.admin()
    match_orders = AclBindingFilter(T, orders, ResourcePatternType.MATCH, None, None,
                                    AclOperation.ANY, AclPermissionType.ANY)
    deleted = admin.delete_acls([match_orders], request_timeout=15)[match_orders].result(
        timeout=CLIENT_TIMEOUT_S)
    assert acl_keys(deleted) == literal | keys("prefix-write", "any-topic")
    rest = keys("group", "group-prefix", "cluster", "txn")
    eventually(lambda: described() == rest or fail(f"{described()} != {rest}"))

    # Two filters in one request; one matches nothing.
    by_bob = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, bob, None,
                              AclOperation.ANY, AclPermissionType.ANY)
    nothing = AclBindingFilter(T, f"{p}-none", LIT, None, None, AclOperation.ANY,
                               AclPermissionType.ANY)
    futures = admin.delete_acls([by_bob, nothing], request_timeout=15)
    assert acl_keys(futures[by_bob].result(timeout=CLIENT_TIMEOUT_S)) == keys("group-prefix",
                                                                              "cluster")
    assert futures[nothing].result(timeout=CLIENT_TIMEOUT_S) == []
    rest = keys("group", "txn")
    eventually(lambda: described() == rest or fail(f"{described()} != {rest}"))

    # Creating a binding that exists already changes nothing.
    secure.create_acls([bindings["group"]])
    assert described() == rest


def test_create_acls_validation(secure):
    """What CreateAcls refuses (INVALID_REQUEST per binding) and what it stores as given: a
    principal of another type, a host that is no address, an operation that means nothing for
    the resource, a prefixed `*`."""
    p = secure.name("val")
    T = ResourceType.TOPIC
    refused = {
        "principal without a type": allow(ALICE, T, p, AclOperation.READ),
        "empty resource name": allow(f"User:{ALICE}", T, "", AclOperation.READ),
        "cluster not named kafka-cluster": allow(f"User:{ALICE}", ResourceType.BROKER, p,
                                                 AclOperation.DESCRIBE),
    }
    accepted = [
        allow("Group:devs", T, p, AclOperation.READ),
        allow("User:*", T, p, AclOperation.WRITE),
        allow(f"User:{ALICE}", T, p, AclOperation.READ, host="not an address"),
        allow(f"User:{ALICE}", T, p, AclOperation.CLUSTER_ACTION),
        allow(f"User:{ALICE}", T, "*", AclOperation.READ, ResourcePatternType.PREFIXED),
        allow(f"User:{ALICE}", ResourceType.BROKER, CLUSTER_NAME, AclOperation.DESCRIBE,
              ResourcePatternType.PREFIXED),
    ]
    futures = secure.admin().create_acls([*refused.values(), *accepted], request_timeout=15)
    outcomes = {}
    for what, binding in refused.items():
        try:
            futures[binding].result(timeout=CLIENT_TIMEOUT_S)
            outcomes[what] = None
        except KafkaException as exc:
            outcomes[what] = exc.args[0].code()
    assert outcomes == {what: KafkaError.INVALID_REQUEST for what in refused}, outcomes
    for binding in accepted:
        assert futures[binding].result(timeout=CLIENT_TIMEOUT_S) is None, binding
    expected = acl_keys(accepted)
    eventually(lambda: acl_keys(secure.describe_acls(ANY_ACL)) == expected
               or fail(f"{acl_keys(secure.describe_acls(ANY_ACL))} != {expected}"))


# -- 4. the ACL APIs need cluster permissions -------------------------------------------------

def test_acl_apis_refused_to_non_super_user(secure):
    alice = secure.admin(ALICE, "PLAIN")
    # librdkafka's describe_acls turns the response's top-level error into an empty result
    # (against Apache Kafka too): the same on both, and the error itself is read off the wire.
    try:
        outcome = ("result", alice.describe_acls(ANY_ACL, request_timeout=15).result(
            timeout=CLIENT_TIMEOUT_S))
    except KafkaException as exc:
        outcome = ("error", exc.args[0].code())
    assert outcome == ("result", []), outcome
    with KafkaWire(secure.bootstrap) as wire:
        error, message, _lifetime = plain_login(wire, ALICE, USERS[ALICE])
        assert error == 0, message
        assert describe_all_acls_error(wire) == ERROR_CLUSTER_AUTHORIZATION_FAILED
    # CreateAcls and DeleteAcls too; nothing is created.
    binding = allow(f"User:{ALICE}", ResourceType.TOPIC, "*", AclOperation.ALL)
    assert error_code_of(alice.create_acls([binding], request_timeout=15)[binding]) == \
        KafkaError.CLUSTER_AUTHORIZATION_FAILED
    assert error_code_of(alice.delete_acls([ANY_ACL], request_timeout=15)[ANY_ACL]) == \
        KafkaError.CLUSTER_AUTHORIZATION_FAILED
    assert secure.describe_acls(ANY_ACL) == []
    # With DESCRIBE on the cluster she may list them (and only that).
    secure.create_acls([allow(f"User:{ALICE}", ResourceType.BROKER, CLUSTER_NAME,
                              AclOperation.DESCRIBE)])
    expected = {acl_key(allow(f"User:{ALICE}", ResourceType.BROKER, CLUSTER_NAME,
                              AclOperation.DESCRIBE))}
    eventually(lambda: acl_keys(secure.describe_acls(ANY_ACL, alice)) == expected
               or fail("alice cannot describe"))
    assert error_code_of(alice.create_acls([binding], request_timeout=15)[binding]) == \
        KafkaError.CLUSTER_AUTHORIZATION_FAILED


# -- 5. Metadata shows only described topics --------------------------------------------------

def test_metadata_lists_only_described_topics(secure):
    visible = secure.create_topic()
    hidden = secure.create_topic()
    secure.create_acls([allow(f"User:{ALICE}", ResourceType.TOPIC, visible,
                              AclOperation.DESCRIBE)])
    alice = secure.admin(ALICE, "PLAIN")
    bob = secure.admin(BOB, "SCRAM-SHA-512")
    admin_topics = set(secure.admin().list_topics(timeout=10).topics)
    assert {visible, hidden} <= admin_topics

    eventually(lambda: set(alice.list_topics(timeout=10).topics) == {visible}
               or fail(f"alice sees {set(alice.list_topics(timeout=10).topics)}"))
    assert set(bob.list_topics(timeout=10).topics) == set()
    named = alice.list_topics(topic=hidden, timeout=10).topics[hidden]
    assert named.error is not None
    assert named.error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, named.error

    # On the wire: a topic she may not describe is TOPIC_AUTHORIZATION_FAILED whether it
    # exists or not (and whether it may be created or not); one she may describe but not
    # create is TOPIC_AUTHORIZATION_FAILED when auto-creation is asked for, else unknown.
    secure.create_acls([allow(f"User:{ALICE}", ResourceType.TOPIC, "maybe-",
                              AclOperation.DESCRIBE, ResourcePatternType.PREFIXED)])
    roles = {visible: "visible", hidden: "hidden", secure.name("absent"): "absent, hidden",
             secure.name("maybe-"): "absent, described"}

    def wire_outcomes():
        """{(role, allow_auto_topic_creation): error code} of Metadata requests as alice."""
        outcomes = {}
        with KafkaWire(secure.bootstrap) as wire:
            wire.negotiate()
            error, message, _lifetime = plain_login(wire, ALICE, USERS[ALICE])
            assert error == 0, message
            for auto in (True, False):
                response = wire.metadata(list(roles), allow_auto_topic_creation=auto)
                for topic in response.topics:
                    outcomes[(roles[topic.name], auto)] = topic.error_code
        return outcomes

    expected = {}
    for auto in (True, False):
        expected[("visible", auto)] = 0
        expected[("hidden", auto)] = ERROR_TOPIC_AUTHORIZATION_FAILED
        expected[("absent, hidden", auto)] = ERROR_TOPIC_AUTHORIZATION_FAILED
    expected[("absent, described", True)] = ERROR_TOPIC_AUTHORIZATION_FAILED  # no CREATE
    expected[("absent, described", False)] = ERROR_UNKNOWN_TOPIC_OR_PARTITION

    def outcomes_as_expected():
        outcomes = wire_outcomes()
        differences = {k: (outcomes.get(k), v) for k, v in expected.items()
                       if outcomes.get(k) != v}
        assert not differences, f"(got, expected) per (topic, auto-create): {differences}"
    eventually(outcomes_as_expected)
    # Nothing was created.
    absent = set(roles) - {visible, hidden}
    assert not absent & set(secure.admin().list_topics(timeout=10).topics)


# -- 6. SCRAM credentials through the admin API -----------------------------------------------

def scram_infos(admin: AdminClient, users: list[str]) -> dict:
    """describe_user_scram_credentials per user: {(mechanism, iterations)} or an error code."""
    futures = admin.describe_user_scram_credentials(users, request_timeout=15)
    out = {}
    for user in users:
        try:
            description = futures[user].result(timeout=CLIENT_TIMEOUT_S)
            out[user] = {(i.mechanism, i.iterations) for i in description.scram_credential_infos}
        except KafkaException as exc:
            out[user] = exc.args[0].code()
    return out


def test_scram_credentials_admin_api(secure):
    admin = secure.admin(ADMIN, "SCRAM-SHA-512")
    carol, carol_pw = "carol", "carol-pw"
    both = {(ScramMechanism.SCRAM_SHA_256, 4096), (ScramMechanism.SCRAM_SHA_512, 4096)}
    assert scram_infos(admin, [ALICE, BOB, ADMIN, carol]) == {
        ALICE: both, BOB: both, ADMIN: both, carol: KafkaError.RESOURCE_NOT_FOUND}

    # carol from a SCRAM-SHA-256 credential.
    upsert = UserScramCredentialUpsertion(
        carol, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 8192), carol_pw.encode())
    futures = admin.alter_user_scram_credentials([upsert], request_timeout=15)
    assert futures[carol].result(timeout=CLIENT_TIMEOUT_S) is None
    eventually(lambda: login_ok(secure.config(carol, "SCRAM-SHA-256", password=carol_pw)))
    eventually(lambda: scram_infos(admin, [carol]) == {
        carol: {(ScramMechanism.SCRAM_SHA_256, 8192)}} or fail(str(scram_infos(admin, [carol]))))
    # Not with the mechanism she has no credential for, nor with a wrong password.
    login_refused(secure.config(carol, "SCRAM-SHA-512", password=carol_pw))
    login_refused(secure.config(carol, "SCRAM-SHA-256", password="wrong"))

    # A second mechanism for her, with other iterations.
    upsert = UserScramCredentialUpsertion(
        carol, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), carol_pw.encode())
    admin.alter_user_scram_credentials([upsert], request_timeout=15)[carol].result(
        timeout=CLIENT_TIMEOUT_S)
    both_of_carol = {carol: {(ScramMechanism.SCRAM_SHA_256, 8192),
                             (ScramMechanism.SCRAM_SHA_512, 4096)}}
    eventually(lambda: login_ok(secure.config(carol, "SCRAM-SHA-512", password=carol_pw)))
    eventually(lambda: scram_infos(admin, [carol]) == both_of_carol
               or fail(str(scram_infos(admin, [carol]))))

    # Two alterations of one user in one request: DUPLICATE_RESOURCE, and neither is done.
    deletions = [UserScramCredentialDeletion(carol, ScramMechanism.SCRAM_SHA_256),
                 UserScramCredentialDeletion(carol, ScramMechanism.SCRAM_SHA_512)]
    code = error_code_of(admin.alter_user_scram_credentials(deletions,
                                                            request_timeout=15)[carol])
    assert code == KafkaError.DUPLICATE_RESOURCE, code
    assert scram_infos(admin, [carol]) == both_of_carol

    # Deleting a credential of a user who has none: RESOURCE_NOT_FOUND.
    absent = UserScramCredentialDeletion(BOB + "-none", ScramMechanism.SCRAM_SHA_256)
    code = error_code_of(admin.alter_user_scram_credentials(
        [absent], request_timeout=15)[BOB + "-none"])
    assert code == KafkaError.RESOURCE_NOT_FOUND, code

    # Deleting both, one request each: she can no longer log in, and has no credentials.
    for deletion in deletions:
        futures = admin.alter_user_scram_credentials([deletion], request_timeout=15)
        assert futures[carol].result(timeout=CLIENT_TIMEOUT_S) is None
    eventually(lambda: scram_infos(admin, [carol]) == {carol: KafkaError.RESOURCE_NOT_FOUND}
               or fail(f"carol still has {scram_infos(admin, [carol])}"))
    eventually(lambda: login_refused(secure.config(carol, "SCRAM-SHA-256", password=carol_pw),
                                     timeout_s=5))

    # Iterations out of Kafka's bounds are refused.
    low = UserScramCredentialUpsertion(
        carol, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 1024), carol_pw.encode())
    code = error_code_of(admin.alter_user_scram_credentials([low], request_timeout=15)[carol])
    assert code == KafkaError.UNACCEPTABLE_CREDENTIAL, code


def test_scram_credentials_refused_to_non_super_user(secure):
    alice = secure.admin(ALICE, "SCRAM-SHA-256")
    upsert = UserScramCredentialUpsertion(
        ALICE, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 8192), b"stolen")
    code = error_code_of(alice.alter_user_scram_credentials([upsert], request_timeout=15)[ALICE])
    assert code == KafkaError.CLUSTER_AUTHORIZATION_FAILED, code
    with KafkaWire(secure.bootstrap) as wire:
        error, message, _lifetime = plain_login(wire, ALICE, USERS[ALICE])
        assert error == 0, message
        assert describe_scram_credentials_error(wire, ALICE) == ERROR_CLUSTER_AUTHORIZATION_FAILED
    # Her password is unchanged.
    login_ok(secure.config(ALICE, "SCRAM-SHA-256"))
