"""The nemesis runner and the failover timer end to end with today's binary: one standalone
node (no cluster flags) killed, paused and restarted under the same clients, history and checker
the cluster tests use. Proves the runner records a history the checker can pass, and that the
node keeps every acknowledged write across SIGKILL."""

from __future__ import annotations

import pytest

from .checker import PROPERTIES
from .failover import measure
from .history import load
from .nemesis import STANDALONE_FAULTS, NemesisConfig, run_nemesis


@pytest.mark.timeout(300)
def test_standalone_node_keeps_acknowledged_writes_across_kill_pause_restart(require_netns,
                                                                              tmp_path):
    outcome = run_nemesis(NemesisConfig(nodes=1, faults=6, standalone=True, seed=7,
                                        fault_kinds=STANDALONE_FAULTS,
                                        out_dir=tmp_path / "nemesis"))
    print(outcome.summary())
    assert outcome.ok, outcome.summary()
    assert sorted(set(outcome.faults_done)) == sorted(STANDALONE_FAULTS)
    counts = outcome.result.counts
    assert counts["ack"] > 100 and counts["read"] > 0 and counts["process"] > 0
    assert counts["commit"] > 0 and counts["final"] >= counts["ack"]
    events = load(outcome.history_path)
    acked_by = {e["producer"].split(".")[0] for e in events if e["type"] == "ack"}
    assert acked_by == {"confluent-0", "kafka-python-0", "probe"}
    read_by = {e["reader"] for e in events if e["type"] == "read"}
    assert read_by == {"reader-confluent", "reader-kafka-python"}
    assert [e["phase"] for e in events if e["type"] == "nemesis"] == ["start", "heal"] * 6
    assert set(PROPERTIES) <= set(outcome.result.violations)
    for name in ("history.jsonl", "summary.txt", "clients.log", "node1/sluice.log"):
        assert (outcome.out_dir / name).exists(), name


@pytest.mark.timeout(120)
def test_failover_timer_measures_each_kill_of_a_standalone_node(netns_cluster):
    cluster = netns_cluster(1)
    times = measure(cluster, 3, restart_at_once=True)
    print(times.summary())
    assert len(times.seconds) == 3 and times.leaders_killed == [1, 1, 1]
    assert all(0 < s < 30 for s in times.seconds)
    assert cluster.node(1).starts == 4


@pytest.mark.timeout(180)
def test_runner_catches_a_node_that_forgets_acknowledged_writes(require_netns, tmp_path):
    # The self-test fault wipes the node's data dir under the clients: the history must fail,
    # naming the lost acknowledged values and the offsets that changed value under readers.
    outcome = run_nemesis(NemesisConfig(nodes=1, faults=1, standalone=True, seed=3,
                                        fault_kinds=("data_loss",),
                                        out_dir=tmp_path / "nemesis"))
    print(outcome.summary())
    assert not outcome.ok
    failed = outcome.result.failed()
    assert "acked_present_once" in failed and "no_divergent_reads" in failed, failed
    assert "NEMESIS: FAIL" in (outcome.out_dir / "summary.txt").read_text()
