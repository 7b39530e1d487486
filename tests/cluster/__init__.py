"""Cluster tests: Sluice nodes in network namespaces, faults, a history and its checker.

Run from the repository's tests/ directory so that `cluster` is importable as a package, as
pytest and scripts/nemesis.sh do.
"""
