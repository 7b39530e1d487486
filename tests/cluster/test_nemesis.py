"""The nemesis against a real Raft cluster in network namespaces: acks=all idempotent producers,
a consumer group and independent readers while leaders are killed, nodes paused, cut and
restarted; the history must pass every property of checker.py and the cluster must recover
after each fault.

Needs the cluster flags (--node-id, --cluster-listen, --peers); against a binary without them
the tests fail and say so. SLUICE_NEMESIS_FAULTS sets the number of faults of the 3-node run
(default 15, a long run 100+) and SLUICE_NEMESIS_FAULTS_5 of the 5-node run (default 8: the same
fault kinds, with a second follower to spare; kept shorter to hold CI under 40 minutes),
SLUICE_NEMESIS_SEED replays a run."""

from __future__ import annotations

import os

import pytest

from .nemesis import NemesisConfig, run_nemesis

FAULTS = int(os.environ.get("SLUICE_NEMESIS_FAULTS", "15"))
FAULTS_5 = int(os.environ.get("SLUICE_NEMESIS_FAULTS_5", "8"))
SEED = int(os.environ["SLUICE_NEMESIS_SEED"]) if os.environ.get("SLUICE_NEMESIS_SEED") else None


def run_and_check(tmp_path, nodes: int, faults: int):
    outcome = run_nemesis(NemesisConfig(nodes=nodes, faults=faults, seed=SEED,
                                        out_dir=tmp_path / "nemesis"))
    print(outcome.summary())
    assert outcome.ok, outcome.summary()
    assert len(outcome.faults_done) == faults
    assert outcome.result.counts.get("ack", 0) > 0, "nothing was acknowledged"


@pytest.mark.timeout(60 + FAULTS * 20)
def test_acknowledged_writes_survive_faults_on_three_nodes(require_netns, require_cluster,
                                                          tmp_path):
    run_and_check(tmp_path, nodes=3, faults=FAULTS)


@pytest.mark.slow
@pytest.mark.timeout(60 + FAULTS_5 * 20)
def test_acknowledged_writes_survive_faults_on_five_nodes(require_netns, require_cluster,
                                                         tmp_path):
    run_and_check(tmp_path, nodes=5, faults=FAULTS_5)
