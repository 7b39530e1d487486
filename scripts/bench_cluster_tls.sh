#!/usr/bin/env bash
# What mutual TLS between cluster nodes costs: scripts/bench.sh --cluster twice on this
# machine, first with the plain node-to-node transport, then with --cluster-tls-cert/-key/-ca
# (every node's certificate from one CA, made with openssl by tests/tls_certs.py). Each run
# prints its own table (single node, 3 nodes with RF 3, acks=all, 100 B and 1 KiB); compare the
# cluster columns. BENCH_SECS and the other bench.sh settings apply to both runs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
if ! "$PY" -c 'import confluent_kafka, pytest' 2>/dev/null; then
    python3 -m venv "$ROOT/.venv"
    "$PY" -m pip install --quiet --disable-pip-version-check -r "$ROOT/tests/requirements.txt"
fi
CERTS="$(mktemp -d)"
trap 'rm -rf "$CERTS"' EXIT
"$PY" -c "import sys; sys.path.insert(0, sys.argv[1]); from tls_certs import generate; generate(sys.argv[2])" \
    "$ROOT/tests" "$CERTS" >/dev/null

printf '## plain TCP between the nodes\n'
BENCH_CLUSTER=1 BENCH_CLUSTER_FLAGS="" "$ROOT/scripts/bench.sh"
printf '\n## mutual TLS between the nodes\n'
BENCH_CLUSTER=1 BENCH_BUILD=0 \
    BENCH_CLUSTER_FLAGS="--cluster-tls-cert $CERTS/node.pem --cluster-tls-key $CERTS/node.key --cluster-tls-ca $CERTS/ca.pem" \
    "$ROOT/scripts/bench.sh"
