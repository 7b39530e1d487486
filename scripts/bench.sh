#!/usr/bin/env bash
# The benchmark matrix of issue 2, in one run on this machine: a disk probe, then 100-byte and
# 1 KiB messages with acks=1 and acks=all on 1 and 8 partitions (fsync=batch), the end-to-end
# latency at a fixed 20,000 msgs/s (fsync=batch), and the same with fsync=never.
# Prints the bench tool's summaries; `BENCH_SECS` sets each run's length (default 10).
# BENCH_AMQP=1 also runs scripts/bench_amqp.sh (AMQP: RabbitMQ and Sluice) at the end.
# BENCH_CASES=latency runs only the disk probe and the two latency runs; SLUICE_BIN benchmarks
# another broker binary (for before/after comparisons), BENCH_BUILD=0 skips the build. Binaries
# come from $CARGO_TARGET_DIR (default target/); BENCH_BIN names another sluice-bench.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SECS="${BENCH_SECS:-10}"
if [ "${BENCH_BUILD:-1}" != 0 ]; then cargo build --release -p sluice-server -p sluice-bench; fi
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
SLUICE="${SLUICE_BIN:-$TARGET_DIR/release/sluice}"
BENCH="${BENCH_BIN:-$TARGET_DIR/release/sluice-bench}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench.XXXXXX")"
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
BROKER_PID=""
stop_broker() { if [ -n "$BROKER_PID" ]; then kill "$BROKER_PID" 2>/dev/null || true; wait "$BROKER_PID" 2>/dev/null || true; BROKER_PID=""; fi; }
trap 'stop_broker; rm -rf "$WORK"' EXIT

start_broker() { # $1: fsync policy
    stop_broker
    rm -rf "$WORK/data"
    "$SLUICE" serve --data-dir "$WORK/data" --kafka-listen "127.0.0.1:$PORT" --fsync "$1" --amqp-listen off --http-listen off \
        >"$WORK/broker-$1.log" 2>&1 &
    BROKER_PID=$!
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "broker did not start" >&2; cat "$WORK/broker-$1.log" >&2; exit 1
}

run() { # label, then sluice-bench kafka flags
    local label="$1"; shift
    printf '\n### %s\n' "$label"
    "$BENCH" kafka --bootstrap "127.0.0.1:$PORT" --create-topic --no-progress --duration-secs "$SECS" "$@"
}

start_broker batch
printf '### disk probe (same disk as the broker data)\n'
"$BENCH" disk-probe --dir "$WORK"
THROUGHPUT_SIZES="100 1024"
if [ "${BENCH_CASES:-all}" = latency ]; then THROUGHPUT_SIZES=""; fi
for bytes in $THROUGHPUT_SIZES; do
    for acks in 1 all; do
        for partitions in 1 8; do
            run "fsync=batch ${bytes} B acks=${acks} partitions=${partitions}" \
                --topic "t-${bytes}-${acks}-${partitions}" --message-bytes "$bytes" --acks "$acks" \
                --partitions "$partitions" --producers 1 --consumers 1
        done
    done
done
run "fsync=batch latency at 20,000 msgs/s, 100 B acks=all" --topic latency-batch \
    --message-bytes 100 --acks all --partitions 1 --rate 20000 --linger-ms 0 --fetch-wait-max-ms 100 \
    --disk-probe-dir "$WORK" --disk-probe-seq-mib 0

start_broker never
run "fsync=never latency at 20,000 msgs/s, 100 B acks=1" --topic latency-never \
    --message-bytes 100 --acks 1 --partitions 1 --rate 20000 --linger-ms 0 --fetch-wait-max-ms 100

if [ "${BENCH_AMQP:-0}" = 1 ]; then
    stop_broker
    BENCH_BUILD=0 SLUICE_BIN="$SLUICE" SLUICE_BENCH_BIN="$BENCH" "$ROOT/scripts/bench_amqp.sh"
fi
