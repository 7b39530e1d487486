"""Failover time of a Raft cluster in network namespaces: SIGKILL a partition's leader and
measure until an acks=all produce to that partition is acknowledged again (p50 and max over
SLUICE_FAILOVER_KILLS kills, default 5); the max must stay under SLUICE_FAILOVER_MAX_S
(default 10 s).

Needs the cluster flags; against a binary without them the test fails and says so."""

from __future__ import annotations

import os

import pytest

from .failover import measure

KILLS = int(os.environ.get("SLUICE_FAILOVER_KILLS", "5"))
MAX_S = float(os.environ.get("SLUICE_FAILOVER_MAX_S", "10"))


@pytest.mark.timeout(120 + KILLS * 60)
@pytest.mark.parametrize("nodes", [3, 5])
def test_leader_kill_fails_over_within_bound(require_netns, require_cluster, netns_cluster,
                                             nodes):
    cluster = netns_cluster(nodes, clustered=True)
    times = measure(cluster, KILLS)
    print(times.summary())
    assert len(times.seconds) == KILLS
    assert times.max_s < MAX_S, times.summary()
