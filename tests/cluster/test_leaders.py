"""Reading leadership from several nodes' Metadata answers, and the exact command line a
clustered node is started with. Pure: needs neither root nor a broker."""

from __future__ import annotations

from pathlib import Path

from .leaders import PartitionState, _agreed, newest
from .netns import Network, Node


def state(leader, epoch=1, replicas=(1, 2, 3), isr=(1, 2, 3), error_code=0):
    return PartitionState(leader, epoch, tuple(replicas), tuple(isr), error_code)


def test_newest_answer_wins_over_a_deposed_leader_that_still_claims_the_partition():
    views = {1: {0: state(1, epoch=4)},          # cut from the majority, still believes
             2: {0: state(2, epoch=5)}, 3: {0: state(2, epoch=5)}}
    assert newest(views, 1)[0].leader == 2
    assert _agreed(views, {1, 2, 3}, 1, caught_up=False) is None


def test_leaderless_answers_are_ignored_and_a_partition_nobody_leads_is_none():
    views = {1: {0: state(None, epoch=9), 1: state(None)}, 2: {0: state(3, epoch=2)}}
    best = newest(views, 2)
    assert best[0].leader == 3 and best[1] is None


def test_agreement_needs_every_running_node_the_same_running_leader_and_a_full_isr():
    healthy = {n: {0: state(2), 1: state(3)} for n in (1, 2, 3)}
    assert _agreed(healthy, {1, 2, 3}, 2, caught_up=True) == {0: state(2), 1: state(3)}
    # A running node that did not answer.
    assert _agreed({n: healthy[n] for n in (1, 2)}, {1, 2, 3}, 2, caught_up=True) is None
    # The named leader is not running.
    assert _agreed({n: healthy[n] for n in (1, 3)}, {1, 3}, 2, caught_up=False) is None
    # A replica is behind: agreed, but not caught up.
    lagging = {n: {0: state(2, isr=(1, 2)), 1: state(3)} for n in (1, 2, 3)}
    assert _agreed(lagging, {1, 2, 3}, 2, caught_up=True) is None
    assert _agreed(lagging, {1, 2, 3}, 2, caught_up=False)[0].isr == (1, 2)
    # A partition error.
    failing = {n: {0: state(2, error_code=5), 1: state(3)} for n in (1, 2, 3)}
    assert _agreed(failing, {1, 2, 3}, 2, caught_up=False) is None


def test_clustered_node_gets_node_id_cluster_listen_and_all_peers():
    network = Network(3)
    network.subnet_octet = 42
    node = Node(2, network, Path("/d/node2/data"), Path("/d/node2/sluice.log"), clustered=True)
    command = node.command()
    assert command[1:] == [
        "serve", "--data-dir", "/d/node2/data", "--kafka-listen", "10.77.42.2:9092",
        "--amqp-listen", "off", "--group-initial-rebalance-delay-ms", "0",
        "--node-id", "2", "--cluster-listen", "10.77.42.2:9093",
        "--peers", "1@10.77.42.1:9093,2@10.77.42.2:9093,3@10.77.42.3:9093"]
    standalone = Node(2, network, Path("/d"), Path("/l"), clustered=False).command()
    assert "--peers" not in standalone and "--node-id" not in standalone
