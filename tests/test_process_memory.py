"""The broker process's memory settings, read from /proc."""

from pathlib import Path


def test_the_broker_runs_without_transparent_huge_pages(broker):
    """mimalloc asks for huge pages on its arenas; a fault on a purged 2 MiB region then
    zeroed a whole huge page, a quarter of a cluster's CPU (README, Benchmark). The broker
    turns them off for its process (prctl PR_SET_THP_DISABLE)."""
    status = Path(f"/proc/{broker.pid}/status").read_text()
    [line] = [line for line in status.splitlines() if line.startswith("THP_enabled:")]
    assert line.split() == ["THP_enabled:", "0"], line
