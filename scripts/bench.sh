#!/usr/bin/env bash
# The benchmark matrix of issue 2, in one run on this machine: a disk probe, then 100-byte and
# 1 KiB messages with acks=1 and acks=all on 1 and 8 partitions (fsync=batch), the end-to-end
# latency at a fixed 20,000 msgs/s (fsync=batch), and the same with fsync=never.
# Prints the bench tool's summaries; `BENCH_SECS` sets each run's length (default 10).
# BENCH_AMQP=1 also runs scripts/bench_amqp.sh (AMQP: RabbitMQ and Sluice) at the end.
# BENCH_CASES=latency runs only the disk probe and the two latency runs; SLUICE_BIN benchmarks
# another broker binary (for before/after comparisons), BENCH_BUILD=0 skips the build. Binaries
# come from $CARGO_TARGET_DIR (default target/); BENCH_BIN names another sluice-bench.
#
# BENCH_CLUSTER=1 (or `scripts/bench.sh --cluster`) runs the cluster comparison instead of the
# matrix: acks=all at 100 B and 1 KiB on 1 and 8 partitions, and 100 B acks=all at a fixed 20,000
# msgs/s, each row against one node, then against 3 `sluice serve` nodes on loopback (topics with
# replication factor 3, created through $ROOT/.venv's confluent-kafka), each started afresh for
# the row, all fsync=batch, and
# prints a table: throughput of both, the cluster/single ratio, produce->ack and end-to-end
# p50/p99, what the machine did during each run (bytes written to the data directory's disk,
# CPU busy and iowait: a row bound by the shared disk shows the cluster writing its three
# copies at the rate the disk probe at the start gives), plus each broker's RSS after every
# run. BENCH_RATE=N caps the four throughput runs at
# N msgs/s (the same offered load for both). BENCH_OUT=DIR keeps the runs' JSON summaries and the
# broker logs in DIR.
# BENCH_CLUSTER_FLAGS adds `sluice serve` flags to every cluster node (scripts/bench_cluster_tls.sh
# passes --cluster-tls-*).
#
# BENCH_KAFKA=1 (or `scripts/bench.sh --kafka`) runs the comparison with Apache Kafka instead
# (scripts/bench_kafka.py): Sluice with fsync=batch, Kafka with its defaults (no fsync before the
# acknowledgement) and Kafka with log.flush.interval.messages=1, each through sluice-bench
# (100 B and 1 KiB, 1 and 8 partitions, acks=all, and the latency at 20,000 msgs/s) and Kafka's
# kafka-producer-perf-test / kafka-consumer-perf-test; a table at the end. Kafka's jars are the
# ones scripts/test resolves for the differential suite. BENCH_OUT=DIR keeps the raw outputs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SECS="${BENCH_SECS:-10}"
CLUSTER="${BENCH_CLUSTER:-0}"
if [ "${1:-}" = --cluster ]; then CLUSTER=1; fi
KAFKA_COMPARISON="${BENCH_KAFKA:-0}"
if [ "${1:-}" = --kafka ]; then KAFKA_COMPARISON=1; fi
if [ "${BENCH_BUILD:-1}" != 0 ]; then cargo build --release -p sluice-server -p sluice-bench; fi
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
SLUICE="${SLUICE_BIN:-$TARGET_DIR/release/sluice}"
BENCH="${BENCH_BIN:-$TARGET_DIR/release/sluice-bench}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench.XXXXXX")"
# shellcheck source=scripts/bench_lib.sh
source "$ROOT/scripts/bench_lib.sh"
PORT="$(free_ports 1)"
BROKER_PID=""
NODE_PIDS=()
stop_broker() { if [ -n "$BROKER_PID" ]; then kill "$BROKER_PID" 2>/dev/null || true; wait "$BROKER_PID" 2>/dev/null || true; BROKER_PID=""; fi; }
stop_cluster() { stop_processes ${NODE_PIDS[@]+"${NODE_PIDS[@]}"}; NODE_PIDS=(); }
trap 'stop_broker; stop_cluster; remove_memory_cgroups "sluice-bench-$$-"; rm -rf "$WORK"' EXIT

# BENCH_MEMORY_LIMIT=2G (any size `numfmt --from=iec` reads) runs each broker in a memory
# cgroup of its own with that limit, so its page cache is recycled instead of growing into
# free memory. On this VM a page the guest touches for the first time in a while is slow
# (writing 3 GB into the page cache took 1.35 s, the next 3 GB 3.0 s, the next 8.0 s): without
# a limit, a run's figures depend on how much page cache earlier runs left, and the cluster,
# writing three copies, pays most. Needs root and a cgroup v1 or v2 memory controller.
MEMORY_LIMIT_BYTES=""
if [ -n "${BENCH_MEMORY_LIMIT:-}" ] && [ "${BENCH_MEMORY_LIMIT}" != 0 ]; then
    MEMORY_LIMIT_BYTES="$(numfmt --from=iec "$BENCH_MEMORY_LIMIT")"
fi
limited() { # $1: cgroup name, then the command; runs it in that cgroup when a limit is set
    local name="$1"; shift
    exec_limited "sluice-bench-$$-$name" "$MEMORY_LIMIT_BYTES" "$@"
}

start_broker() { # $1: fsync policy
    stop_broker
    rm -rf "$WORK/data"
    (limited single "$SLUICE" serve --data-dir "$WORK/data" --kafka-listen "127.0.0.1:$PORT" --fsync "$1" --amqp-listen off --http-listen off \
        >"$WORK/broker-$1.log" 2>&1) &
    BROKER_PID=$!
    wait_for_port "$PORT" || { echo "broker did not start" >&2; cat "$WORK/broker-$1.log" >&2; exit 1; }
}

run() { # label, then sluice-bench kafka flags
    local label="$1"; shift
    printf '\n### %s\n' "$label"
    "$BENCH" kafka --bootstrap "127.0.0.1:$PORT" --create-topic --no-progress --duration-secs "$SECS" "$@"
}

if [ "$KAFKA_COMPARISON" = 1 ]; then
    PY="$ROOT/.venv/bin/python"
    [ -x "$PY" ] || { echo "no venv at $ROOT/.venv: run scripts/test once" >&2; exit 1; }
    OUT="${BENCH_OUT:-$WORK/out}"
    "$PY" "$ROOT/scripts/bench_kafka.py" --sluice "$SLUICE" --bench "$BENCH" --out "$OUT" \
        --secs "$SECS" --work-dir "$WORK"
    exit 0
fi

if [ "$CLUSTER" = 1 ]; then
    PY="$ROOT/.venv/bin/python"
    if ! "$PY" -c 'import confluent_kafka' 2>/dev/null; then
        python3 -m venv "$ROOT/.venv"
        "$PY" -m pip install --quiet --disable-pip-version-check -r "$ROOT/tests/requirements.txt"
    fi
    OUT="${BENCH_OUT:-$WORK/out}"
    mkdir -p "$OUT"
    REPLICAS=3

    start_cluster() { # on empty data directories, as start_broker
        local cluster_ports=() kafka_ports=() ports=() peers="" i
        for i in $(seq 1 "$REPLICAS"); do rm -rf "$WORK/node$i"; done
        read -r -a ports <<< "$(free_ports $((2 * REPLICAS)))"
        for i in $(seq 1 "$REPLICAS"); do
            cluster_ports+=("${ports[2 * i - 2]}"); kafka_ports+=("${ports[2 * i - 1]}")
            peers="${peers:+$peers,}$i@127.0.0.1:${cluster_ports[i - 1]}"
        done
        BOOTSTRAP=""
        local extra=()
        read -r -a extra <<< "${BENCH_CLUSTER_FLAGS:-}"
        for i in $(seq 1 "$REPLICAS"); do
            (limited "node$i" "$SLUICE" serve --data-dir "$WORK/node$i" --node-id "$i" ${extra[@]+"${extra[@]}"} \
                --cluster-listen "127.0.0.1:${cluster_ports[i - 1]}" --peers "$peers" \
                --kafka-listen "127.0.0.1:${kafka_ports[i - 1]}" --default-replication-factor "$REPLICAS" \
                --fsync batch --amqp-listen off --http-listen off >>"$OUT/node$i.log" 2>&1) &
            NODE_PIDS+=($!)
            BOOTSTRAP="${BOOTSTRAP:+$BOOTSTRAP,}127.0.0.1:${kafka_ports[i - 1]}"
        done
        for i in $(seq 1 "$REPLICAS"); do
            if ! wait_for_port "${kafka_ports[i - 1]}" || ! kill -0 "${NODE_PIDS[i - 1]}" 2>/dev/null; then
                echo "node $i did not start" >&2; tail -n 40 "$OUT/node$i.log" >&2; exit 1
            fi
        done
    }

    print_table() {
        printf '\n### fsync=batch, %s s per run; cluster: %s nodes on loopback, replication factor %s\n' \
            "$SECS" "$REPLICAS" "$REPLICAS"
        "$PY" "$ROOT/scripts/bench_cluster.py" table "$OUT"
    }

    # $1 mode (single|cluster), $2 file name <NN>_<label>, $3 partitions, then sluice-bench flags.
    compare_run() {
        local mode="$1" name="$2" partitions="$3"; shift 3
        local topic="${name%%_*}-$mode"
        printf '### %s %s (%s)\n' "$mode" "${name#*_}" "$(uptime | sed 's/.*\(load average\)/\1/')" | tr _ ' '
        if [ "$mode" = cluster ]; then
            report_memory cluster quiet
            "$PY" "$ROOT/scripts/bench_cluster.py" create-topic "$BOOTSTRAP" "$topic" "$partitions" "$REPLICAS"
            resources_start
            "$BENCH" kafka --bootstrap "$BOOTSTRAP" --topic "$topic" --partitions "$partitions" \
                --no-progress --json --duration-secs "$SECS" "$@" >"$OUT/$mode-$name.json"
        else
            resources_start
            "$BENCH" kafka --bootstrap "127.0.0.1:$PORT" --topic "$topic" --partitions "$partitions" \
                --create-topic --no-progress --json --duration-secs "$SECS" "$@" >"$OUT/$mode-$name.json"
        fi
        resources_end "$OUT/$mode-$name.resources"
        report_memory "$mode"
    }

    # $1 mode, $2 `quiet` to check only. Resident memory now and at its peak (VmHWM) of each
    # broker process; a node that died (e.g. OOM-killed: see dmesg) stops the comparison, since
    # later runs would time a 2-node cluster.
    report_memory() {
        local pids=("$BROKER_PID") pid i=0
        if [ "$1" = cluster ]; then pids=("${NODE_PIDS[@]}"); fi
        for pid in "${pids[@]}"; do
            i=$((i + 1))
            if ! kill -0 "$pid" 2>/dev/null; then
                echo "$1 broker $i (pid $pid) is gone: see its log in $OUT and dmesg" >&2
                print_table
                exit 1
            fi
            if [ "${2:-}" = quiet ]; then continue; fi
            printf '    broker %s RSS %s, peak %s\n' "$i" \
                "$(awk '/^VmRSS/ {print $2 " " $3}' "/proc/$pid/status")" \
                "$(awk '/^VmHWM/ {print $2 " " $3}' "/proc/$pid/status")"
        done
    }

    # One row of the table: the single node, then the cluster, each started on empty data
    # directories. The two halves of a ratio run back to back, on a machine in the same state:
    # with all single-node rows first, the page cache and this VM's free memory drifted
    # between the halves and moved a ratio by a third from one run to the next.
    row() { # $1 file name <NN>_<label>, $2 partitions, then sluice-bench flags
        start_broker batch
        compare_run single "$@"
        stop_broker
        cat "$WORK/broker-batch.log" >>"$OUT/single.log"
        start_cluster
        compare_run cluster "$@"
        stop_cluster
    }

    printf '### load before: %s\n' "$(uptime)"
    printf "### disk probe (the disk the nodes' data is on)\n"
    "$BENCH" disk-probe --dir "$WORK"
    rate=() label=""
    if [ "${BENCH_RATE:-0}" != 0 ]; then rate=(--rate "$BENCH_RATE"); label="_rate=$BENCH_RATE"; fi
    row "1_100_B_acks=all_p=1$label" 1 --message-bytes 100 --acks all --producers 1 --consumers 1 ${rate[@]+"${rate[@]}"}
    row "2_100_B_acks=all_p=8$label" 8 --message-bytes 100 --acks all --producers 1 --consumers 1 ${rate[@]+"${rate[@]}"}
    row "3_1_KiB_acks=all_p=1$label" 1 --message-bytes 1024 --acks all --producers 1 --consumers 1 ${rate[@]+"${rate[@]}"}
    row "4_1_KiB_acks=all_p=8$label" 8 --message-bytes 1024 --acks all --producers 1 --consumers 1 ${rate[@]+"${rate[@]}"}
    row 5_100_B_acks=all_rate=20000 1 --message-bytes 100 --acks all --rate 20000 \
        --linger-ms 0 --fetch-wait-max-ms 100
    # The Java client's default: idempotent, so at most 5 requests in flight per connection.
    row "6_1_KiB_idempotent_p=1$label" 1 --message-bytes 1024 --acks all --idempotence \
        --producers 1 --consumers 1 ${rate[@]+"${rate[@]}"}
    printf '### load at the end: %s\n' "$(uptime)"
    print_table
    exit 0
fi

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
