#!/usr/bin/env bash
# The nemesis run against a Sluice Raft cluster in network namespaces (tests/cluster/nemesis.py):
# idempotent acks=all producers, a consumer group and readers while leaders are killed, nodes
# paused, cut from the majority, partitioned and restarted; the JSONL history is then checked
# (tests/cluster/checker.py). Exit 0 only if every property held and the cluster recovered
# after every fault.
#
#   scripts/nemesis.sh --faults 15 --nodes 3          the CI size (~3-5 minutes)
#   scripts/nemesis.sh --faults 100 --nodes 5         a long run
#   scripts/nemesis.sh --seed 1234 ...                replay the fault sequence of a run
#   scripts/nemesis.sh --kinds leader_kill,pause      only some fault kinds
#   scripts/nemesis.sh --standalone --faults 6        today's binary: one node, kill/pause/restart
#
# Output (history.jsonl, summary.txt, clients.log, nodeN/sluice.log) goes to
# target/nemesis/<time>/ unless --out DIR. Needs root (network namespaces); installs nftables
# from Debian if missing. SLUICE_BIN names the binary [$CARGO_TARGET_DIR/release/sluice, built
# if missing]. `python -m cluster.checker HISTORY` (from tests/) re-checks a history.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/nemesis.sh needs root (it creates network namespaces)" >&2
    exit 1
fi
if ! command -v nft >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables
fi
if ! "$PY" -c 'import confluent_kafka, kafka' 2>/dev/null; then
    python3 -m venv "$ROOT/.venv"
    "$PY" -m pip install --quiet --disable-pip-version-check -r "$ROOT/tests/requirements.txt"
fi
if [ -z "${SLUICE_BIN:-}" ]; then
    SLUICE_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/sluice"
    if [ ! -x "$SLUICE_BIN" ]; then
        (cd "$ROOT" && cargo build --release -p sluice-server)
    fi
fi
export SLUICE_BIN

cd "$ROOT/tests"
exec "$PY" -m cluster.nemesis "$@"
