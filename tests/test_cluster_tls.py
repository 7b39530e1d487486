"""Mutual TLS between cluster nodes (--cluster-tls-cert/-key/-ca): three real `sluice`
processes whose node-to-node connections are all TLS with client certificates replicate an
RF=3 topic (acks=all writes acknowledged by a quorum, every replica in sync); a node whose
certificate is signed by another CA cannot join, and neither plain TCP nor a TLS client without
a certificate gets past the handshake, while the cluster goes on serving.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import struct
import time

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from conftest import free_port
from test_cluster_local import create_topic_with_leaders
from tls_certs import _ca, _leaf
from tls_certs import certs  # noqa: F401

TOPIC = "sealed"
HEAL_TIMEOUT_S = 45


def cluster_tls_flags(certs, kind="trusted"):
    cert, key = {
        "trusted": (certs.node_cert, certs.node_key),
        "untrusted": (certs.untrusted_node_cert, certs.untrusted_node_key),
        "misnamed": (certs.misnamed_node_cert, certs.misnamed_node_key),
    }[kind]
    return ["--cluster-tls-cert", cert, "--cluster-tls-key", key, "--cluster-tls-ca", certs.ca]


def start_tls_cluster(broker_factory, certs, kinds=("trusted",) * 3):
    cluster_ports = [free_port() for _ in range(3)]
    peers = ",".join(f"{i + 1}@127.0.0.1:{port}" for i, port in enumerate(cluster_ports))
    nodes = [broker_factory("--node-id", i + 1, "--cluster-listen", f"127.0.0.1:{port}",
                            "--peers", peers, "--default-replication-factor", 3,
                            *cluster_tls_flags(certs, kind))
             for i, (port, kind) in enumerate(zip(cluster_ports, kinds))]
    return nodes, cluster_ports


def all_in_sync(admin, topic):
    metadata = admin.list_topics(topic, timeout=5).topics[topic]
    return metadata.error is None and all(
        p.leader > 0 and sorted(p.isrs) == [1, 2, 3] for p in metadata.partitions.values())


def produce_and_read(nodes, values):
    bootstrap = ",".join(n.bootstrap for n in nodes)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "enable.idempotence": True})
    failed = []
    for value in values:
        producer.produce(TOPIC, value, on_delivery=lambda err, _m: err and failed.append(err))
    assert producer.flush(30) == 0 and not failed, failed
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{time.monotonic()}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([TOPIC])
    seen = []
    deadline = time.monotonic() + 30
    while not set(values) <= set(seen) and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and not message.error():
            seen.append(message.value())
    consumer.close()
    return seen


def test_nodes_replicate_over_mutual_tls_and_refuse_strangers(broker_factory, certs, tmp_path):
    nodes, cluster_ports = start_tls_cluster(broker_factory, certs)
    admin = AdminClient({"bootstrap.servers": ",".join(n.bootstrap for n in nodes)})
    create_topic_with_leaders(admin, TOPIC, 2)
    deadline = time.monotonic() + HEAL_TIMEOUT_S
    while not all_in_sync(admin, TOPIC):
        assert time.monotonic() < deadline, "replicas did not get in sync over TLS"
        time.sleep(0.2)
    values = [f"v{i}".encode() for i in range(50)]
    assert sorted(produce_and_read(nodes, values)) == sorted(values)

    # Plain TCP speaking the transport's framing (a length-prefixed hello) is not a TLS
    # ClientHello: the node drops it.
    with socket.create_connection(("127.0.0.1", cluster_ports[0]), timeout=10) as plain:
        plain.sendall(struct.pack(">I", 9) + b"\x00" * 9)
        received = b""
        try:
            while chunk := plain.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass
        # Closed, with nothing or a TLS alert record (content type 21); a recv that times
        # out instead fails the test.
        assert not received or received[0] == 21, received

    # A TLS client trusting the CA but with no certificate of its own is refused in the
    # handshake (client certificates are required between nodes).
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.check_hostname = False
    with socket.create_connection(("127.0.0.1", cluster_ports[1]), timeout=10) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            with context.wrap_socket(raw) as secured:
                # TLS 1.3 reports the refused certificate on the first read.
                secured.sendall(b"\x00\x00\x00\x01\x00")
                if secured.recv(1) == b"":
                    raise ConnectionResetError("closed")

    # A fourth node with a certificate from another CA cannot join, and gives up.
    with pytest.raises(pytest.fail.Exception, match="exited with 1 during startup"):
        broker_factory("--node-id", 4, "--cluster-listen", f"127.0.0.1:{free_port()}",
                       "--join", f"127.0.0.1:{cluster_ports[0]}", "--join-timeout-secs", 3,
                       *cluster_tls_flags(certs, "untrusted"))
    refused_log = (tmp_path / "broker3" / "sluice.log").read_text(errors="replace")
    assert "UnknownCA" in refused_log, refused_log[-2000:]

    # The cluster is unaffected: still three brokers, still in sync, still writable.
    assert sorted(b.id for b in admin.list_topics(timeout=5).brokers.values()) == [1, 2, 3]
    more = [f"w{i}".encode() for i in range(20)]
    assert set(more) <= set(produce_and_read(nodes, more))
    assert all_in_sync(admin, TOPIC)


def test_a_node_whose_certificate_names_another_address_is_kept_out(broker_factory, certs,
                                                                      tmp_path):
    """Node 1's certificate is from the cluster's CA but names 127.0.0.2, not the address it
    listens on and claims in --peers: the others refuse its hello (the certificate does not
    name the node it claims to be) and its listener, so nodes 2 and 3 serve alone as a
    majority and node 1 never registers."""
    from confluent_kafka.admin import NewTopic
    nodes, _ = start_tls_cluster(broker_factory, certs, ("misnamed", "trusted", "trusted"))
    admin = AdminClient({"bootstrap.servers": ",".join(n.bootstrap for n in nodes[1:])})
    deadline = time.monotonic() + HEAL_TIMEOUT_S
    while sorted(b.id for b in admin.list_topics(timeout=5).brokers.values()) != [2, 3]:
        assert time.monotonic() < deadline, "nodes 2 and 3 did not register"
        time.sleep(0.2)
    admin.create_topics([NewTopic(TOPIC, 1, 2)])[TOPIC].result(timeout=30)
    values = [f"v{i}".encode() for i in range(10)]
    assert sorted(produce_and_read(nodes[1:], values)) == sorted(values)
    assert sorted(b.id for b in admin.list_topics(timeout=5).brokers.values()) == [2, 3]
    logs = "".join((tmp_path / f"broker{i}" / "sluice.log").read_text(errors="replace")
                   for i in (1, 2))
    assert "does not name the address of the node it claims" in logs, logs[-3000:]


def replace_file(path, contents: bytes):
    """Writes `contents` to `path` in one step (a reload never sees half a file)."""
    temporary = path.with_suffix(".new")
    temporary.write_bytes(contents)
    os.replace(temporary, path)


def wait_in_sync(admin, what):
    deadline = time.monotonic() + HEAL_TIMEOUT_S
    while not all_in_sync(admin, TOPIC):
        assert time.monotonic() < deadline, f"replicas did not get back in sync {what}"
        time.sleep(0.2)


def test_the_cluster_ca_is_rotated_node_by_node_while_it_serves(broker_factory, certs,
                                                                 tmp_path):
    """A rolling change of the cluster's CA, as an operator does it: every node first trusts
    both CAs, then each in turn gets a certificate from the new CA and is restarted, then the
    old CA is dropped. The files are reloaded where they are (no flag changes); the cluster
    stays in sync and writable after every step, and at the end a certificate from the old CA
    is refused."""
    config = certs.directory / "openssl.cnf"
    new = tmp_path / "new-ca"
    new.mkdir()
    new_ca = _ca("new-ca", "/O=Sluice/CN=Sluice Test CA 2", config, new)
    new_node = _leaf("new-node", "/O=Sluice/CN=node", "node", new_ca, config, new)
    directories = []
    for node in range(3):
        directory = tmp_path / f"node{node + 1}-tls"
        directory.mkdir()
        shutil.copy(certs.node_cert, directory / "cert.pem")
        shutil.copy(certs.node_key, directory / "key.pem")
        shutil.copy(certs.ca, directory / "ca.pem")
        directories.append(directory)
    cluster_ports = [free_port() for _ in range(3)]
    peers = ",".join(f"{i + 1}@127.0.0.1:{port}" for i, port in enumerate(cluster_ports))
    nodes = [broker_factory("--node-id", i + 1, "--cluster-listen", f"127.0.0.1:{port}",
                            "--peers", peers, "--default-replication-factor", 3,
                            "--cluster-tls-cert", d / "cert.pem",
                            "--cluster-tls-key", d / "key.pem",
                            "--cluster-tls-ca", d / "ca.pem")
             for i, (port, d) in enumerate(zip(cluster_ports, directories))]
    admin = AdminClient({"bootstrap.servers": ",".join(n.bootstrap for n in nodes)})
    create_topic_with_leaders(admin, TOPIC, 2)
    wait_in_sync(admin, "at the start")
    written = [f"start-{i}".encode() for i in range(10)]
    assert set(written) <= set(produce_and_read(nodes, written))

    old_ca, new_ca_pem = certs.ca.read_bytes(), new_ca[0].read_bytes()
    for directory in directories:
        replace_file(directory / "ca.pem", old_ca + new_ca_pem)
    time.sleep(1.5)  # files are looked at again at most once a second
    for index, (node, directory) in enumerate(zip(nodes, directories)):
        replace_file(directory / "key.pem", new_node[1].read_bytes())
        replace_file(directory / "cert.pem", new_node[0].read_bytes())
        # A restart makes every connection to and from the node anew, with its new
        # certificate on one side and the others' (old or new) on the other.
        node.kill9()
        node.start()
        wait_in_sync(admin, f"after node {index + 1} got the new certificate")
        batch = [f"node{index + 1}-{i}".encode() for i in range(10)]
        assert set(batch) <= set(produce_and_read(nodes, batch))
        written += batch

    for directory in directories:
        replace_file(directory / "ca.pem", new_ca_pem)
    time.sleep(1.5)
    nodes[0].kill9()
    nodes[0].start()
    wait_in_sync(admin, "with only the new CA trusted")
    batch = [f"end-{i}".encode() for i in range(10)]
    assert set(written + batch) <= set(produce_and_read(nodes, batch))
    logs = "".join((tmp_path / f"broker{i}" / "sluice.log").read_text(errors="replace")
                   for i in range(3))
    assert "TLS certificate reloaded" in logs

    # A certificate from the old CA is now refused: a node presenting one cannot join.
    old_only = tmp_path / "old-node"
    old_only.mkdir()
    shutil.copy(new_ca[0], old_only / "ca.pem")
    with pytest.raises(pytest.fail.Exception, match="exited with 1 during startup"):
        broker_factory("--node-id", 4, "--cluster-listen", f"127.0.0.1:{free_port()}",
                       "--join", f"127.0.0.1:{cluster_ports[1]}", "--join-timeout-secs", 3,
                       "--cluster-tls-cert", certs.node_cert, "--cluster-tls-key",
                       certs.node_key, "--cluster-tls-ca", old_only / "ca.pem")
    assert all_in_sync(admin, TOPIC)

