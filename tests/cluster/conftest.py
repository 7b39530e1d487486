"""Fixtures of the cluster tests: `netns_cluster(size, clustered=...)` starts Sluice nodes in
network namespaces (see netns.py) and always tears them down, namespaces included.

Needs root, iproute2 and nftables (scripts/test installs nftables); without them the tests skip,
and fail in CI (tests/required.py). A cluster test against a binary without the cluster flags
fails with the reason: it never skips.
"""

from __future__ import annotations

import pytest

from required import missing

from .netns import Cluster, ClusterFlagsMissing, cleanup_stale, missing_tools, require_cluster_flags


@pytest.fixture
def require_netns():
    absent = missing_tools()
    if absent:
        missing(f"the cluster harness needs {', '.join(absent)} (scripts/test installs nftables)")
    cleanup_stale()


def fail_unless_cluster_flags():
    """Fails (never skips) the test if the binary lacks the cluster flags, saying which."""
    reason = None
    try:
        require_cluster_flags()
    except (ClusterFlagsMissing, FileNotFoundError) as error:
        reason = str(error)
    if reason:
        pytest.fail(reason, pytrace=False)


@pytest.fixture
def require_cluster():
    fail_unless_cluster_flags()


@pytest.fixture
def netns_cluster(require_netns, tmp_path, request):
    """`netns_cluster(size, clustered=False, extra_args=())` -> a started Cluster."""
    made = []

    def start(size: int, clustered: bool = False, extra_args=()) -> Cluster:
        if clustered:
            fail_unless_cluster_flags()
        cluster = Cluster(size, tmp_path / f"cluster{len(made)}", clustered=clustered,
                          extra_args=extra_args)
        made.append(cluster)
        # The root conftest attaches these nodes' log tails to a failing test's report.
        request.node._sluice_brokers = [n for c in made for n in c.nodes.values()]
        return cluster.start()

    yield start
    for cluster in made:
        cluster.close()
