"""One user store, one set of ACLs, quotas and vhost limits for a whole cluster: three real
`sluice` processes with SASL_PLAINTEXT Kafka listeners, where a change made on any node (HTTP
API, Kafka's AlterUserScramCredentials, CreateAcls, AlterClientQuotas) holds on every node,
concurrent changes on different nodes are all kept, a node that was down catches up, and a
user added with `sluice user add --data-dir` to a stopped node's data directory reaches the
cluster when the node starts again.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import requests
from confluent_kafka import KafkaError
from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation, AclPermissionType,
                                   AdminClient, ResourcePatternType, ResourceType,
                                   ScramCredentialInfo, ScramMechanism,
                                   UserScramCredentialUpsertion)

from conftest import free_port
from kafka_wire import KafkaWire
from sasl_wire import plain_login
from test_client_quotas import alter as alter_quota
from test_client_quotas import describe as describe_quota
from test_security_kafka import (create_acls_as, create_topic_as, produce_failure, produce_ok,
                                 sasl_config)
from tls_certs import add_user, sluice_user, user_broker_factory  # noqa: F401

ADMIN, ADMIN_PW = "admin", "admin-secret"
GUEST = ("guest", "guest")
SPREAD_S = 20
ERROR_NONE = 0
ERROR_SASL_AUTHENTICATION_FAILED = 58


def start_secure_cluster(user_broker_factory):
    """Three nodes, each with one SASL_PLAINTEXT listener; only node 1's data directory has
    `admin` (an administrator), added offline before the cluster first starts."""
    cluster_ports = [free_port() for _ in range(3)]
    peers = ",".join(f"{i + 1}@127.0.0.1:{port}" for i, port in enumerate(cluster_ports))
    nodes = []
    for index, cluster_port in enumerate(cluster_ports):
        prepare = (lambda data_dir: add_user(data_dir, ADMIN, ADMIN_PW, "administrator")) \
            if index == 0 else None
        nodes.append(user_broker_factory(
            "--node-id", index + 1, "--cluster-listen", f"127.0.0.1:{cluster_port}",
            "--peers", peers, "--default-replication-factor", 3,
            "--kafka-listen", f"SASL_PLAINTEXT://127.0.0.1:{free_port()}", prepare=prepare))
    return nodes


def login_error(node, user: str, password: str) -> int:
    """SASL PLAIN on a fresh connection to the node: the SaslAuthenticate error code."""
    wire = KafkaWire(node.bootstrap)
    try:
        return plain_login(wire, user, password)[0]
    finally:
        wire.close()


def until(condition, what: str, timeout_s: float = SPREAD_S):
    """Waits for `condition()` to hold: a change committed on one node reaches the others as
    fast as their metadata state machines apply it."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.2)


def logins_everywhere(nodes, user, password, expected_error=ERROR_NONE):
    for number, node in enumerate(nodes, 1):
        until(lambda: login_error(node, user, password) == expected_error,
              f"{user}'s login on node {number} answers {expected_error}")


def http(node, method, path, **kwargs):
    response = requests.request(method, f"{node.http_url}{path}", auth=GUEST, timeout=30,
                                **kwargs)
    return response


def test_every_node_holds_every_security_change(user_broker_factory):
    nodes = start_secure_cluster(user_broker_factory)
    # node 1's offline admin is the cluster's from its first start.
    logins_everywhere(nodes, ADMIN, ADMIN_PW)
    admin_on = [sasl_config(node.port, "SCRAM-SHA-256", ADMIN, ADMIN_PW) for node in nodes]

    # A user made through node 2's HTTP API logs in on every node.
    response = http(nodes[1], "PUT", "/api/users/alice", json={"password": "alice-secret"})
    assert response.status_code == 201, response.text
    assert login_error(nodes[1], "alice", "alice-secret") == ERROR_NONE, \
        "the node that made the change holds it when it answers"
    logins_everywhere(nodes, "alice", "alice-secret")

    # A SCRAM credential set through Kafka's admin API on node 1 works on node 3, with SCRAM.
    upsert = UserScramCredentialUpsertion(
        "bob", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), b"bob-secret")
    # The client must outlive its futures.
    admin = AdminClient(admin_on[0])
    admin.alter_user_scram_credentials([upsert], request_timeout=15)["bob"].result(timeout=30)
    logins_everywhere(nodes, "bob", "bob-secret")
    create_topic_as(admin_on[0], "ledger")
    produce_ok(sasl_config(nodes[2].port, "SCRAM-SHA-512", "bob", "bob-secret"), "ledger",
               [b"from-bob"])

    # An ACL created on node 3 is enforced by whichever node leads the partition, and listed
    # by every node.
    deny_bob = AclBinding(ResourceType.TOPIC, "ledger", ResourcePatternType.LITERAL,
                          "User:bob", "*", AclOperation.WRITE, AclPermissionType.DENY)
    create_acls_as(admin_on[2], [deny_bob])
    for config in admin_on:
        def listed(config=config):
            admin = AdminClient(config)
            found = admin.describe_acls(AclBindingFilter(
                ResourceType.TOPIC, "ledger", ResourcePatternType.LITERAL, "User:bob", "*",
                AclOperation.WRITE, AclPermissionType.DENY), request_timeout=15)
            return len(found.result(timeout=30)) == 1
        until(listed, "the ACL is listed")
    for node in nodes:
        outcome, _errors = produce_failure(
            sasl_config(node.port, "SCRAM-SHA-512", "bob", "bob-secret"), "ledger")
        assert outcome[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, outcome

    # A client quota set on node 1 is described by node 2; a vhost limit set on node 2 is
    # listed by node 3.
    wire = KafkaWire(nodes[0].bootstrap)
    assert plain_login(wire, ADMIN, ADMIN_PW)[0] == ERROR_NONE
    assert alter_quota(wire, "batch-jobs", "producer_byte_rate", 5000) == ERROR_NONE
    wire.close()

    def quota_on_node_2():
        wire = KafkaWire(nodes[1].bootstrap)
        try:
            assert plain_login(wire, ADMIN, ADMIN_PW)[0] == ERROR_NONE
            return describe_quota(wire, "batch-jobs") == {"producer_byte_rate": 5000}
        finally:
            wire.close()
    until(quota_on_node_2, "node 2 describes the quota")
    response = http(nodes[1], "PUT", "/api/vhost-limits/%2F/max-queues", json={"value": 7})
    assert response.status_code == 204, response.text
    until(lambda: http(nodes[2], "GET", "/api/vhost-limits").json()
          == [{"vhost": "/", "value": {"max-queues": 7}}], "node 3 lists the vhost limit")


def test_concurrent_changes_on_different_nodes_are_all_kept(user_broker_factory):
    nodes = start_secure_cluster(user_broker_factory)
    logins_everywhere(nodes, ADMIN, ADMIN_PW)

    def create(index):
        node = nodes[index % 3]
        response = http(node, "PUT", f"/api/users/user{index}",
                        json={"password": f"pw{index}"})
        return response.status_code, response.text

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(create, range(24)))
    assert all(status == 201 for status, _ in answers), answers
    expected = {f"user{index}" for index in range(24)} | {ADMIN, "guest"}
    for number, node in enumerate(nodes, 1):
        until(lambda node=node: {u["name"] for u in http(node, "GET", "/api/users").json()}
              == expected, f"node {number} lists all 24 users")
    assert login_error(nodes[2], "user5", "pw5") == ERROR_NONE


def test_a_node_catches_up_and_its_offline_changes_reach_the_cluster(user_broker_factory):
    nodes = start_secure_cluster(user_broker_factory)
    logins_everywhere(nodes, ADMIN, ADMIN_PW)
    assert http(nodes[0], "PUT", "/api/users/dora",
                json={"password": "dora-secret"}).status_code == 201
    logins_everywhere(nodes, "dora", "dora-secret")

    # Node 3 misses a deletion while it is down, and applies it when it is back.
    nodes[2].kill9()
    assert http(nodes[0], "DELETE", "/api/users/dora").status_code == 204
    nodes[2].start()
    logins_everywhere(nodes, "dora", "dora-secret", ERROR_SASL_AUTHENTICATION_FAILED)

    # A user added to node 2's data directory while it is stopped (the cluster unchanged
    # meanwhile) becomes everyone's when it starts again.
    assert nodes[1].terminate() == 0
    sluice_user(nodes[1].data_dir, "add", "erin", "--password", "erin-secret")
    nodes[1].start()
    logins_everywhere(nodes, "erin", "erin-secret")

    # An offline change made on a version the cluster has since replaced is not kept: the
    # cluster's document wins on that node.
    assert nodes[2].terminate() == 0
    sluice_user(nodes[2].data_dir, "add", "stale", "--password", "stale-secret")
    assert http(nodes[0], "PUT", "/api/users/fresh",
                json={"password": "fresh-secret"}).status_code == 201
    nodes[2].start()
    logins_everywhere(nodes, "fresh", "fresh-secret")
    logins_everywhere(nodes, "stale", "stale-secret", ERROR_SASL_AUTHENTICATION_FAILED)

    # A user declared on the command line of a node that comes back to a cluster whose users
    # changed meanwhile is declared again through the cluster, not lost with the local copy.
    assert nodes[0].terminate() == 0
    assert http(nodes[1], "PUT", "/api/users/gail",
                json={"password": "gail-secret"}).status_code == 201
    nodes[0].extra_args += ["--amqp-users", "hank:hank-secret"]
    nodes[0].start()
    logins_everywhere(nodes, "gail", "gail-secret")
    logins_everywhere(nodes, "hank", "hank-secret")
