#!/usr/bin/env bash
# A/B of broker binaries on a 3-node cluster: scripts/bench_cluster_ab.sh PARTITIONS BYTES BIN...
# For each round (BENCH_ROUNDS, default 3) and each binary in turn: 3 fresh `sluice serve` nodes
# on loopback, each in a memory cgroup of BENCH_MEMORY_LIMIT (default 2G; 0 for none; see
# scripts/bench.sh for why), a topic of replication factor 3, then one sluice-bench run of
# BENCH_SECS (default 10) with acks=all. One line per run: the binary, msgs/s, produce->ack
# p50/p99, each broker's CPU-seconds per million messages (utime + stime from /proc) and minor
# page faults over the run, and the AppendEntries timeouts in the nodes' logs. Alternating the
# binaries on fresh nodes is what makes a difference visible on this VM, whose runs move by a
# fifth. Extra env is passed to the brokers (e.g. SLUICE_LOG, MIMALLOC_* options).
# BENCH_ARGS adds sluice-bench flags (e.g. "--idempotence", the Java client's default).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/bench_lib.sh
source "$ROOT/scripts/bench_lib.sh"
if [ $# -lt 3 ]; then
    echo "usage: $0 PARTITIONS BYTES BIN..." >&2
    exit 2
fi
PARTITIONS="$1"; BYTES="$2"; shift 2
BINS=("$@")
ROUNDS="${BENCH_ROUNDS:-3}"
SECS="${BENCH_SECS:-10}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BENCH="${BENCH_BIN:-$TARGET_DIR/release/sluice-bench}"
PY="$ROOT/.venv/bin/python"
[ -x "$BENCH" ] || { echo "no $BENCH: cargo build --release -p sluice-bench" >&2; exit 1; }
[ -x "$PY" ] || { echo "no $PY: run scripts/test once (it makes the venv)" >&2; exit 1; }
LIMIT="${BENCH_MEMORY_LIMIT:-2G}"
LIMIT_BYTES=""
if [ "$LIMIT" != 0 ]; then LIMIT_BYTES="$(numfmt --from=iec "$LIMIT")"; fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sluice-ab.XXXXXX")"
PIDS=()
stop_nodes() { stop_processes ${PIDS[@]+"${PIDS[@]}"}; PIDS=(); }
trap 'stop_nodes; remove_memory_cgroups "sluice-ab-$$-"; rm -rf "$WORK"' EXIT

limited() { # $1: cgroup name, then the command
    local name="$1"; shift
    exec_limited "sluice-ab-$$-$name" "$LIMIT_BYTES" "$@"
}
# utime+stime (clock ticks) and minor faults of each node, space-separated.
proc_stat() { local pid; for pid in "${PIDS[@]}"; do awk '{printf "%d:%d ", $14 + $15, $10}' "/proc/$pid/stat"; done; }

run() { # $1: binary, $2: run number
    local bin="$1" dir="$WORK/run$2" ports=() peers="" bootstrap="" i
    mkdir -p "$dir"
    read -r -a ports <<< "$(free_ports 6)"
    for i in 1 2 3; do
        peers="${peers:+$peers,}$i@127.0.0.1:${ports[2 * i - 2]}"
        bootstrap="${bootstrap:+$bootstrap,}127.0.0.1:${ports[2 * i - 1]}"
    done
    for i in 1 2 3; do
        (limited "run$2-node$i" "$bin" serve --data-dir "$dir/node$i" --node-id "$i" \
            --cluster-listen "127.0.0.1:${ports[2 * i - 2]}" --peers "$peers" \
            --kafka-listen "127.0.0.1:${ports[2 * i - 1]}" --default-replication-factor 3 \
            --fsync batch --amqp-listen off --http-listen off >"$dir/node$i.log" 2>&1) &
        PIDS+=($!)
    done
    for i in 1 2 3; do
        wait_for_port "${ports[2 * i - 1]}" || { echo "node $i did not start" >&2; tail -n 20 "$dir/node$i.log" >&2; exit 1; }
    done
    "$PY" "$ROOT/scripts/bench_cluster.py" create-topic "$bootstrap" ab "$PARTITIONS" 3 >/dev/null
    local before after
    before="$(proc_stat)"
    # shellcheck disable=SC2086 # BENCH_ARGS is split into flags on purpose
    "$BENCH" kafka --bootstrap "${bootstrap%%,*}" --topic ab --partitions "$PARTITIONS" --no-progress \
        --json --duration-secs "$SECS" --message-bytes "$BYTES" --acks all --producers 1 \
        --consumers 1 ${BENCH_ARGS:-} >"$dir/summary.json"
    after="$(proc_stat)"
    local timeouts
    timeouts="$(cat "$dir"/node*.log | grep -c 'timeout after' || true)"
    stop_nodes
    python3 - "$dir/summary.json" "$before" "$after" "$bin" "$timeouts" <<'PY'
import json, os, sys
summary = json.load(open(sys.argv[1]))
ack = summary["produce_ack"]
msgs = max(summary["produced_msgs"], 1)
before = [tuple(map(int, x.split(":"))) for x in sys.argv[2].split()]
after = [tuple(map(int, x.split(":"))) for x in sys.argv[3].split()]
cpu = " ".join("%.2f" % ((a[0] - b[0]) / os.sysconf("SC_CLK_TCK") / msgs * 1e6) for b, a in zip(before, after))
faults = " ".join(str(a[1] - b[1]) for b, a in zip(before, after))
print("%-28s %9.0f msgs/s  ack p50/p99 %6.1f/%6.1f ms  cpu-s/M msgs %s  minflt %s  timeouts %s  errors %s"
      % (sys.argv[4][-28:], summary["produce_msgs_per_sec"], ack["latency_ms_p50"],
         ack["latency_ms_p99"], cpu, faults, sys.argv[5], summary["errors"]["total"]))
PY
    rm -rf "$dir"
}

printf '### %s partition(s), %s B, acks=all, %s s per run, memory limit %s, %s round(s)\n' \
    "$PARTITIONS" "$BYTES" "$SECS" "$LIMIT" "$ROUNDS"
n=0
for _ in $(seq 1 "$ROUNDS"); do
    for bin in "${BINS[@]}"; do
        n=$((n + 1))
        run "$bin" "$n"
    done
done
