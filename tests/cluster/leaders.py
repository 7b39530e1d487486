"""Who leads each partition, as each node's Kafka Metadata answer says.

Each node is asked on its own connection (a librdkafka client could answer from any broker it
knows), and a broker in an answer is mapped to a harness node by its advertised host and port,
so the cluster's broker ids need not equal the harness's node ids. When nodes disagree (a
deposed leader cut from the majority still believes it leads), the answer with the highest
leader epoch wins.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from kafka_wire import KafkaWire

from .netns import Cluster

METADATA_TIMEOUT_S = 2.0


class NoLeaders(AssertionError):
    """The partitions had no agreed, caught-up leaders within the time allowed."""


@dataclass(frozen=True)
class PartitionState:
    leader: int | None  # harness node id; None if the answer names no (known) leader
    epoch: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    error_code: int


def metadata_from(cluster: Cluster, node_id: int, topic: str,
                  timeout_s: float = METADATA_TIMEOUT_S) -> dict[int, PartitionState] | None:
    """Node node_id's view of the topic's partitions, or None if it does not answer."""
    node = cluster.node(node_id)
    try:
        with KafkaWire(node.kafka_address, timeout_s=timeout_s, client_id="nemesis-leaders") \
                as wire:
            response = wire.metadata([topic], allow_auto_topic_creation=False)
    except (OSError, TimeoutError, AssertionError, ValueError, EOFError):
        return None
    brokers = {}
    for broker in response.brokers:
        found = cluster.node_at(broker.host, broker.port)
        brokers[broker.node_id] = found.node_id if found else None

    def nodes(ids):
        return tuple(sorted(n for n in (brokers.get(i) for i in ids) if n is not None))

    view = {}
    for found_topic in response.topics:
        if found_topic.name != topic:
            continue
        for p in found_topic.partitions:
            leader = brokers.get(p.leader_id) if p.leader_id >= 0 else None
            view[p.partition_index] = PartitionState(leader, p.leader_epoch,
                                                     nodes(p.replica_nodes), nodes(p.isr_nodes),
                                                     p.error_code)
    return view


def views(cluster: Cluster, topic: str) -> dict[int, dict[int, PartitionState]]:
    """Every running, unpaused node's answer (nodes that do not answer are left out)."""
    out = {}
    for node in cluster.running_nodes():
        view = metadata_from(cluster, node.node_id, topic)
        if view is not None:
            out[node.node_id] = view
    return out


def newest(all_views: dict[int, dict[int, PartitionState]], partitions: int
           ) -> dict[int, PartitionState | None]:
    """Per partition, the answer with the highest leader epoch that names a leader."""
    best: dict[int, PartitionState | None] = {p: None for p in range(partitions)}
    for view in all_views.values():
        for p, state in view.items():
            if state.leader is None or p not in best:
                continue
            if best[p] is None or state.epoch > best[p].epoch:
                best[p] = state
    return best


def current_leaders(cluster: Cluster, topic: str, partitions: int) -> dict[int, int | None]:
    return {p: s.leader if s else None for p, s in newest(views(cluster, topic),
                                                          partitions).items()}


def wait_for_leaders(cluster: Cluster, topic: str, partitions: int, timeout_s: float = 60,
                     caught_up: bool = True) -> dict[int, PartitionState]:
    """Waits until every running node answers, all name the same running leader for every
    partition and (with caught_up) every replica is in the ISR; returns the agreed states."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        running = {n.node_id for n in cluster.running_nodes()}
        all_views = views(cluster, topic)
        last = all_views
        agreed = _agreed(all_views, running, partitions, caught_up)
        if agreed is not None:
            return agreed
        if time.monotonic() >= deadline:
            raise NoLeaders(f"no agreed{' caught-up' if caught_up else ''} leaders for {topic} "
                            f"within {timeout_s}s; running nodes {sorted(running)}, their "
                            f"answers: {last}")
        time.sleep(0.2)


def _agreed(all_views, running, partitions, caught_up):
    if set(all_views) != running or not running:
        return None
    agreed = {}
    for p in range(partitions):
        states = {view.get(p) for view in all_views.values()}
        if len(states) != 1:
            return None
        (state,) = states
        if state is None or state.error_code != 0 or state.leader not in running:
            return None
        if caught_up and (not state.replicas or set(state.isr) != set(state.replicas)):
            return None
        agreed[p] = state
    return agreed
