#!/usr/bin/env bash
# The full crash soak: 100 SIGKILLs of the broker under mixed Kafka (idempotent, acks=all) and
# AMQP (confirms, manual acks) load, every acknowledged message checked after each restart
# (tests/test_crash_soak.py; scripts/test runs it with 10 kills).
#
#   SLUICE_SOAK_KILLS=N   number of kills (default 100)
#   SLUICE_SOAK_SEED=S    replay a schedule
#   SLUICE_BIN=PATH       broker binary (default target/release/sluice, built if missing)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ -z "${SLUICE_BIN:-}" ]; then
    cargo build --release -p sluice-server
    export SLUICE_BIN="$ROOT/target/release/sluice"
fi
[ -x .venv/bin/python ] || { echo "run ./scripts/test once first: it creates .venv" >&2; exit 1; }
export SLUICE_SOAK_KILLS="${SLUICE_SOAK_KILLS:-100}"
exec .venv/bin/python -m pytest tests/test_crash_soak.py -v -s -p no:cacheprovider
