"""The namespace harness itself, with today's standalone binary (one independent node per
namespace): clients in the root namespace reach every node at its own address; SIGKILL, SIGSTOP
and restart act on the right process; isolate, cut and partition drop exactly the traffic they
name and heal restores it; a crashed run's namespaces are cleaned up by the next."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from kafka_wire import KafkaWire
from librdkafka_client import create_topic, produce_values, read_all, unique_name

from .netns import KAFKA_PORT, NAMESPACE_NAME, NetemUnavailable, cleanup_stale, run

TESTS_DIR = Path(__file__).resolve().parents[1]
PROBE_TIMEOUT_S = 0.7

# Run inside a namespace: tries a TCP connection to each address at once, prints the map.
REACH_PROBE = """
import json, socket, sys, threading
result = {}
def probe(address):
    try:
        socket.create_connection((address, %d), timeout=%s).close()
        result[address] = True
    except OSError:
        result[address] = False
threads = [threading.Thread(target=probe, args=(a,)) for a in sys.argv[1:]]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(result))
""" % (KAFKA_PORT, PROBE_TIMEOUT_S)


def reachable_from(cluster, source: int) -> set[int]:
    """The other nodes whose Kafka port node `source` can connect to, probed from inside its
    namespace."""
    others = [n for n in cluster.nodes if n != source]
    out = cluster.network.exec(source, [sys.executable, "-c", REACH_PROBE]
                               + [cluster.node(n).ip for n in others]).stdout
    by_ip = json.loads(out)
    return {n for n in others if by_ip[cluster.node(n).ip]}


def reachability(cluster) -> dict[int, set[int]]:
    return {n: reachable_from(cluster, n) for n in cluster.nodes}


def serves(address: str, timeout_s: float = 2.0) -> bool:
    """One ApiVersions round trip from the root namespace within timeout_s."""
    try:
        with KafkaWire(address, timeout_s=timeout_s) as wire:
            wire.negotiate()
        return True
    except (OSError, TimeoutError):
        return False


def topics_on(address: str) -> set[str]:
    metadata = AdminClient({"bootstrap.servers": address}).list_topics(timeout=10)
    return {t for t in metadata.topics if not t.startswith("__")}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("size", [3, 5])
def test_each_node_serves_its_own_data_at_its_own_address(netns_cluster, size):
    cluster = netns_cluster(size)
    assert len({node.ip for node in cluster.nodes.values()}) == size
    topics = {}
    for node_id, node in cluster.nodes.items():
        topic = unique_name(f"node{node_id}")
        create_topic(node.kafka_address, topic, 2)
        values = [f"{node_id}-{i}".encode() for i in range(20)]
        produce_values(node.kafka_address, topic, values, partition_for=lambda i: i % 2)
        topics[node_id] = (topic, values)
    for node_id, node in cluster.nodes.items():
        topic, values = topics[node_id]
        assert topics_on(node.kafka_address) == {topic}, "standalone nodes share no data"
        got = sorted(r[3] for r in read_all(node.kafka_address, topic, 2))
        assert got == sorted(values)
    # Every node reaches every other one while nothing is cut.
    assert reachability(cluster) == {n: set(cluster.nodes) - {n} for n in cluster.nodes}


@pytest.mark.timeout(120)
def test_sigkill_stops_only_that_node_and_restart_keeps_its_data(netns_cluster):
    cluster = netns_cluster(3)
    victim = cluster.node(2)
    topic = unique_name("restart")
    create_topic(victim.kafka_address, topic, 1)
    values = [f"v{i}".encode() for i in range(50)]
    produce_values(victim.kafka_address, topic, values, partition=0)
    first_pid = victim.pid
    victim.kill()
    assert not victim.running()
    with pytest.raises(ProcessLookupError):
        os.kill(first_pid, 0)
    assert not serves(victim.kafka_address)
    assert serves(cluster.node(1).kafka_address) and serves(cluster.node(3).kafka_address)

    victim.start()
    assert victim.pid != first_pid and victim.starts == 2
    assert [r[3] for r in read_all(victim.kafka_address, topic, 1)] == values
    assert "---- start #2" in victim.log_path.read_text()


@pytest.mark.timeout(120)
def test_pause_freezes_the_node_and_resume_brings_it_back(netns_cluster):
    cluster = netns_cluster(3)
    node = cluster.node(1)
    node.pause()
    try:
        assert node.process_state() == "T"
        # The kernel still accepts the connection; the broker answers nothing.
        assert not serves(node.kafka_address, timeout_s=2)
        assert serves(cluster.node(2).kafka_address)
    finally:
        node.resume()
    assert node.process_state() != "T"
    assert serves(node.kafka_address)


@pytest.mark.timeout(120)
def test_isolate_cuts_a_node_from_everyone_and_heal_restores_it(netns_cluster):
    cluster = netns_cluster(3)
    cluster.network.isolate(3)
    assert not serves(cluster.node(3).kafka_address, timeout_s=1)
    assert reachability(cluster) == {1: {2}, 2: {1}, 3: set()}
    cluster.heal()
    assert serves(cluster.node(3).kafka_address)
    assert reachability(cluster) == {1: {2, 3}, 2: {1, 3}, 3: {1, 2}}


@pytest.mark.timeout(120)
def test_heal_restarts_killed_resumes_paused_and_reconnects_isolated_nodes(netns_cluster):
    cluster = netns_cluster(3)
    cluster.node(1).kill()
    cluster.node(2).pause()
    cluster.network.isolate(3)
    cluster.network.cut(1, 2)
    assert not any(serves(n.kafka_address, timeout_s=1) for n in cluster.nodes.values())
    cluster.heal()
    assert all(n.running() and not n.paused for n in cluster.nodes.values())
    assert cluster.node(1).starts == 2 and cluster.node(2).starts == 1
    assert all(serves(n.kafka_address) for n in cluster.nodes.values())
    assert cluster.network.blocked_pairs() == []
    assert reachability(cluster) == {1: {2, 3}, 2: {1, 3}, 3: {1, 2}}


@pytest.mark.timeout(120)
def test_cut_drops_only_that_pair_and_clients_still_reach_both(netns_cluster):
    cluster = netns_cluster(3)
    # "Leader cut from the majority": node 1 loses 2 and 3 but still hears its clients.
    cluster.network.cut(1, 2)
    cluster.network.cut(1, 3)
    assert sorted(cluster.network.blocked_pairs()) == [(1, 2), (1, 3), (2, 1), (3, 1)]
    assert reachability(cluster) == {1: set(), 2: {3}, 3: {2}}
    topic = unique_name("cut-leader")
    create_topic(cluster.node(1).kafka_address, topic, 1)
    produce_values(cluster.node(1).kafka_address, topic, [b"still-served"], partition=0)
    cluster.heal()
    assert cluster.network.blocked_pairs() == []
    assert reachability(cluster) == {1: {2, 3}, 2: {1, 3}, 3: {1, 2}}


@pytest.mark.timeout(120)
def test_one_way_cut_drops_one_direction_only(netns_cluster):
    cluster = netns_cluster(3)
    cluster.network.cut(1, 2, both_ways=False)
    assert reachability(cluster) == {1: {3}, 2: {3}, 3: {1, 2}}
    # 2's SYN reaches 1, but 1's SYN-ACK to 2 is dropped: no connection either way, yet the
    # rules name one direction only.
    assert cluster.network.blocked_pairs() == [(1, 2)]


@pytest.mark.timeout(180)
def test_minority_partition_of_five_splits_reachability_and_heals(netns_cluster):
    cluster = netns_cluster(5)
    cluster.network.partition([1, 2], [3, 4, 5])
    assert reachability(cluster) == {1: {2}, 2: {1}, 3: {4, 5}, 4: {3, 5}, 5: {3, 4}}
    for node in cluster.nodes.values():
        assert serves(node.kafka_address), "a partition between nodes leaves clients connected"
    cluster.heal()
    assert reachability(cluster) == {n: set(cluster.nodes) - {n} for n in cluster.nodes}


@pytest.mark.timeout(60)
def test_latency_is_added_with_netem_or_reported_missing(netns_cluster):
    cluster = netns_cluster(3)
    probe = ("import socket, time; t = time.monotonic(); "
             "socket.create_connection(('%s', %d), timeout=5).close(); "
             "print(time.monotonic() - t)" % (cluster.node(2).ip, KAFKA_PORT))

    def connect_s():
        return float(cluster.network.exec(1, [sys.executable, "-c", probe]).stdout)

    try:
        cluster.network.latency(1, 200)
    except NetemUnavailable as error:
        # This kernel lacks CONFIG_NET_SCH_NETEM: the harness says so instead of pretending.
        assert "netem" in str(error)
        assert connect_s() < 0.2
        return
    try:
        assert connect_s() >= 0.2, "a 200 ms egress delay on node 1 must delay its handshake"
    finally:
        cluster.heal()
    assert connect_s() < 0.2


def _namespaces_of(pid: int) -> list[str]:
    names = [line.split()[0] for line in run(["ip", "netns", "list"]).stdout.splitlines()
             if line.split()]
    return [n for n in names if (m := NAMESPACE_NAME.match(n)) and int(m.group(1)) == pid]


def _links_of(pid: int) -> list[str]:
    out = run(["ip", "-o", "link", "show"]).stdout
    return [line.split(":")[1].strip() for line in out.splitlines()
            if line.split(":")[1].strip().startswith((f"sb{pid}", f"sv{pid}"))]


def _run_network_process(ending: str) -> int:
    """A separate Python process that builds a 2-node network, then ends as told; its pid."""
    code = ("import os, signal; from cluster.netns import Network; "
            "n = Network(2).create(); print(os.getpid(), flush=True); " + ending)
    done = subprocess.run([sys.executable, "-c", code], cwd=TESTS_DIR, capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.strip(), done.stderr
    return int(done.stdout.split()[0])


@pytest.mark.timeout(60)
def test_namespaces_of_a_killed_run_are_removed_by_the_next(require_netns):
    pid = _run_network_process("os.kill(os.getpid(), signal.SIGKILL)")
    assert len(_namespaces_of(pid)) == 2, "a SIGKILLed run leaves its namespaces behind"
    assert _links_of(pid), "and its bridge and veths"
    removed = cleanup_stale()
    assert _namespaces_of(pid) == [] and _links_of(pid) == []
    assert any(str(pid) in name for name in removed)


@pytest.mark.timeout(60)
def test_namespaces_are_removed_when_the_run_exits(require_netns):
    pid = _run_network_process("pass")
    assert _namespaces_of(pid) == [] and _links_of(pid) == []


@pytest.mark.timeout(60)
def test_cleanup_keeps_the_namespaces_of_a_live_run(netns_cluster):
    cluster = netns_cluster(3)
    cleanup_stale()
    assert len(_namespaces_of(os.getpid())) == 3
    assert all(node.running() for node in cluster.nodes.values())
    assert serves(cluster.node(1).kafka_address)
