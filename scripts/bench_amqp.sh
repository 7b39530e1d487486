#!/usr/bin/env bash
# AMQP 0-9-1 benchmark: persistent 100-byte messages to a durable queue with publisher confirms
# and manual acks (prefetch 100), 1 and 4 publishers, plus a paced latency run, against a
# private RabbitMQ node and against Sluice, in one session on the same disk.
#
#   scripts/bench_amqp.sh                    # disk probe, then RabbitMQ, then Sluice; a summary
#   scripts/bench_amqp.sh run URL [LABEL]    # the matrix against a broker that is already up
#   scripts/bench_amqp.sh rabbitmq-start DIR # a private RabbitMQ node with its state in DIR
#   scripts/bench_amqp.sh rabbitmq-stop DIR
#
# Environment: BENCH_SECS (each run's length, default 10), BENCH_REPEAT (runs of each
# throughput case, default 1), BENCH_AMQP_RATE (msgs/s of the latency run, default 5000),
# BENCH_BROKERS (default "rabbitmq sluice"), BENCH_CONSUMERS (consumer counts, default "1 2"), BENCH_BUILD=0 (use the binaries as they are),
# BENCH_WARMUP_SECS (an unreported first run per broker, default 3; 0 skips it),
# BENCH_RABBITMQ_PORT (default 5699; its Erlang distribution port is this + 20000),
# BENCH_RABBITMQ_NODENAME (default sluicebench@localhost), SLUICE_BIN, SLUICE_BENCH_BIN,
# CARGO_TARGET_DIR (where the binaries are built and looked for).
# A broker that is not installed, does not start or refuses connections is skipped with a
# message; the script still runs the others.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/bench_lib.sh
source "$ROOT/scripts/bench_lib.sh"
cd "$ROOT"
SECS="${BENCH_SECS:-10}"
REPEAT="${BENCH_REPEAT:-1}"
RATE="${BENCH_AMQP_RATE:-5000}"
WARMUP_SECS="${BENCH_WARMUP_SECS:-3}"
BROKERS="${BENCH_BROKERS:-rabbitmq sluice}"
CONSUMERS="${BENCH_CONSUMERS:-1 2}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BENCH="${SLUICE_BENCH_BIN:-$TARGET_DIR/release/sluice-bench}"
SLUICE="${SLUICE_BIN:-$TARGET_DIR/release/sluice}"
RABBITMQ_BIN="${RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}"
RABBITMQ_PORT="${BENCH_RABBITMQ_PORT:-5699}"
RABBITMQ_NODENAME="${BENCH_RABBITMQ_NODENAME:-sluicebench@localhost}"

port_open() { # host port
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# Runs a command with the private node's environment. Calling /usr/lib/rabbitmq/bin directly
# (not the /usr/sbin wrapper, which switches to the rabbitmq user and drops the environment)
# keeps the node's files, cookie and ports away from any system or test node.
rabbitmq_env() { # dir command...
    local dir="$1"; shift
    env RABBITMQ_NODENAME="$RABBITMQ_NODENAME" \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="$RABBITMQ_PORT" \
        RABBITMQ_DIST_PORT="$((RABBITMQ_PORT + 20000))" \
        RABBITMQ_MNESIA_BASE="$dir/mnesia" \
        RABBITMQ_LOG_BASE="$dir/log" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
        RABBITMQ_PLUGINS_EXPAND_DIR="$dir/plugins-expand" \
        RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" \
        RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
        RABBITMQ_PID_FILE="$dir/pid" \
        HOME="$dir/home" \
        "$@"
}

rabbitmq_start() { # dir
    local dir="$1"
    if [ ! -x "$RABBITMQ_BIN/rabbitmq-server" ]; then
        echo "### rabbitmq: $RABBITMQ_BIN/rabbitmq-server not found (apt-get install rabbitmq-server)" >&2
        return 1
    fi
    if port_open 127.0.0.1 "$RABBITMQ_PORT"; then
        echo "### rabbitmq: port $RABBITMQ_PORT is already taken; set BENCH_RABBITMQ_PORT" >&2
        return 1
    fi
    mkdir -p "$dir/home" "$dir/log"
    rm -rf "$dir/mnesia"
    echo '[].' >"$dir/enabled_plugins"
    : >"$dir/rabbitmq-env.conf"
    printf 'listeners.tcp.default = 127.0.0.1:%s\n' "$RABBITMQ_PORT" >"$dir/rabbitmq.conf"
    rabbitmq_env "$dir" setsid "$RABBITMQ_BIN/rabbitmq-server" >"$dir/server.out" 2>&1 </dev/null &
    echo $! >"$dir/wrapper.pid"
    for _ in $(seq 1 600); do
        if port_open 127.0.0.1 "$RABBITMQ_PORT"; then
            echo "rabbitmq node $RABBITMQ_NODENAME up on 127.0.0.1:$RABBITMQ_PORT (state in $dir)"
            return 0
        fi
        if ! kill -0 "$(cat "$dir/wrapper.pid")" 2>/dev/null; then break; fi
        sleep 0.2
    done
    echo "### rabbitmq: node did not start; tail of $dir/server.out:" >&2
    tail -n 20 "$dir/server.out" >&2 || true
    rabbitmq_stop "$dir"
    return 1
}

rabbitmq_stop() { # dir
    local dir="$1"
    [ -d "$dir" ] || return 0
    if [ -f "$dir/pid" ]; then
        # Waits for the Erlang VM (whose pid the file holds) to exit.
        rabbitmq_env "$dir" timeout 60 "$RABBITMQ_BIN/rabbitmqctl" -n "$RABBITMQ_NODENAME" \
            stop "$dir/pid" >/dev/null 2>&1 || true
        local vm_pid
        vm_pid="$(cat "$dir/pid" 2>/dev/null || true)"
        if [ -n "$vm_pid" ] && kill -0 "$vm_pid" 2>/dev/null; then kill "$vm_pid" 2>/dev/null || true; fi
        rm -f "$dir/pid"
    fi
    if [ -f "$dir/wrapper.pid" ]; then
        local wrapper_pid
        wrapper_pid="$(cat "$dir/wrapper.pid")"
        for _ in $(seq 1 50); do kill -0 "$wrapper_pid" 2>/dev/null || break; sleep 0.1; done
        kill "$wrapper_pid" 2>/dev/null || true
        rm -f "$dir/wrapper.pid"
    fi
}

FAILED_RUNS=0
JSON_OUT=""

bench_one() { # url label, then sluice-bench amqp flags; returns the bench's status
    local url="$1" label="$2"; shift 2
    # The load average tells a run disturbed by other work on the machine.
    printf '\n### %s  [load average %s]\n' "$label" "$(cut -d' ' -f1-3 /proc/loadavg)"
    local json_args=()
    if [ -n "$JSON_OUT" ]; then json_args=(--json-append "$JSON_OUT" --label "$label"); fi
    if "$BENCH" amqp --url "$url" --secs "$SECS" --size 100 --prefetch 100 \
        --no-progress "${json_args[@]}" "$@"; then
        return 0
    fi
    FAILED_RUNS=$((FAILED_RUNS + 1))
    return 1
}

run_matrix() { # url label
    local url="$1" label="$2" hostport host port
    hostport="${url#*://}"; hostport="${hostport#*@}"; hostport="${hostport%%/*}"
    host="${hostport%%:*}"; port="${hostport##*:}"
    [ "$port" = "$hostport" ] && port=5672
    if ! port_open "$host" "$port"; then
        printf '\n### %s: nothing accepts connections on %s:%s, skipped\n' "$label" "$host" "$port"
        return 0
    fi
    if [ "$WARMUP_SECS" -gt 0 ]; then
        printf '\n### %s: warm-up, %s s (not reported)\n' "$label" "$WARMUP_SECS"
        local warmup_log
        warmup_log="$(mktemp "${TMPDIR:-/tmp}/sluice-bench-warmup.XXXXXX")"
        if ! "$BENCH" amqp --url "$url" --queue bench-warmup --secs "$WARMUP_SECS" --no-progress \
            >"$warmup_log" 2>&1; then
            printf '### %s: the warm-up failed, skipping %s:\n' "$label" "$label"
            sed 's/^/    /' "$warmup_log"
            rm -f "$warmup_log"
            FAILED_RUNS=$((FAILED_RUNS + 1))
            return 0
        fi
        rm -f "$warmup_log"
    fi
    for run in $(seq 1 "$REPEAT"); do
        for consumers in $CONSUMERS; do
            for publishers in 1 4; do
                if ! bench_one "$url" "$label: 100 B persistent, confirms, ${publishers} publisher(s), ${consumers} consumer(s) (run $run)" \
                    --queue "bench-p${publishers}-c${consumers}" --publishers "$publishers" \
                    --consumers "$consumers"; then
                    printf '### %s: the run failed (see the error above); skipping the rest of %s\n' "$label" "$label"
                    return 0
                fi
            done
        done
    done
    bench_one "$url" "$label: latency at $RATE msgs/s, 100 B persistent, 1 publisher, 1 consumer" \
        --queue bench-latency --publishers 1 --consumers 1 --rate "$RATE" || true
}

summary() { # json lines file
    [ -s "$1" ] || return 0
    printf '\n### summary (msgs/s; latency p50 / p99 in ms)\n'
    python3 - "$1" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
head = ("run", "published/s", "confirmed/s", "consumed/s", "MB/s", "confirm p50/p99", "e2e p50/p99", "missing", "dup")
fmt = "{:<72} {:>11} {:>11} {:>10} {:>6} {:>17} {:>17} {:>7} {:>4}"
print(fmt.format(*head))
for r in rows:
    lat = lambda s: "{:.2f} / {:.2f}".format(s["latency_ms_p50"], s["latency_ms_p99"])
    print(fmt.format(r.get("label") or r["queue"], round(r["publish_msgs_per_sec"]),
                     round(r["confirm_msgs_per_sec"]), round(r["consume_msgs_per_sec"]),
                     r["confirm_mb_per_sec"], lat(r["confirm"]), lat(r["end_to_end"]),
                     r["missing_msgs"], r["duplicate_msgs"]))
EOF
}

compare() {
    if [ "${BENCH_BUILD:-1}" != 0 ]; then
        cargo build --release -p sluice-bench
        if [[ " $BROKERS " == *" sluice "* ]] && [ -z "${SLUICE_BIN:-}" ]; then
            cargo build --release -p sluice-server || echo "### sluice: build failed; Sluice will be skipped" >&2
        fi
    fi
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench-amqp.XXXXXX")"
    JSON_OUT="$WORK/results.jsonl"
    SLUICE_PID=""
    trap 'rabbitmq_stop "$WORK/rabbitmq"; stop_sluice; rm -rf "$WORK"' EXIT
    printf '### disk probe (same disk as both brokers'"'"' data)\n'
    "$BENCH" disk-probe --dir "$WORK"
    for broker in $BROKERS; do
        case "$broker" in
            rabbitmq)
                if rabbitmq_start "$WORK/rabbitmq"; then
                    run_matrix "amqp://guest:guest@127.0.0.1:$RABBITMQ_PORT/%2f" rabbitmq
                    rabbitmq_stop "$WORK/rabbitmq"
                else
                    printf '\n### rabbitmq: skipped (node did not start)\n'
                fi
                ;;
            sluice)
                if start_sluice; then
                    run_matrix "amqp://guest:guest@127.0.0.1:$SLUICE_AMQP_PORT/%2f" sluice
                    stop_sluice
                fi
                ;;
            *) echo "unknown broker $broker in BENCH_BROKERS" >&2; exit 2 ;;
        esac
    done
    summary "$JSON_OUT"
    if [ "$FAILED_RUNS" -gt 0 ]; then printf '\n%s run(s) failed\n' "$FAILED_RUNS"; fi
}

start_sluice() {
    if [ ! -x "$SLUICE" ]; then
        printf '\n### sluice: %s not found, skipped\n' "$SLUICE"
        return 1
    fi
    local kafka_port
    read -r SLUICE_AMQP_PORT kafka_port <<< "$(free_ports 2)"
    rm -rf "$WORK/sluice-data"
    "$SLUICE" serve --data-dir "$WORK/sluice-data" --kafka-listen "127.0.0.1:$kafka_port" \
        --amqp-listen "127.0.0.1:$SLUICE_AMQP_PORT" --http-listen off >"$WORK/sluice.log" 2>&1 &
    SLUICE_PID=$!
    for _ in $(seq 1 100); do
        if port_open 127.0.0.1 "$SLUICE_AMQP_PORT"; then return 0; fi
        if ! kill -0 "$SLUICE_PID" 2>/dev/null; then break; fi
        sleep 0.1
    done
    printf '\n### sluice: no AMQP listener on 127.0.0.1:%s (does this build have --amqp-listen?), skipped; its log:\n' \
        "$SLUICE_AMQP_PORT"
    tail -n 5 "$WORK/sluice.log" | sed 's/^/    /'
    stop_sluice
    return 1
}

stop_sluice() {
    if [ -n "${SLUICE_PID:-}" ]; then
        kill "$SLUICE_PID" 2>/dev/null || true
        wait "$SLUICE_PID" 2>/dev/null || true
        SLUICE_PID=""
    fi
}

case "${1:-compare}" in
    compare) compare ;;
    run)
        [ $# -ge 2 ] || { echo "usage: $0 run URL [LABEL]" >&2; exit 2; }
        run_matrix "$2" "${3:-$2}"
        [ "$FAILED_RUNS" -eq 0 ]
        ;;
    rabbitmq-start) [ $# -eq 2 ] || { echo "usage: $0 rabbitmq-start DIR" >&2; exit 2; }; rabbitmq_start "$2" ;;
    rabbitmq-stop) [ $# -eq 2 ] || { echo "usage: $0 rabbitmq-stop DIR" >&2; exit 2; }; rabbitmq_stop "$2" ;;
    -h|--help|help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) echo "unknown command $1 (compare, run, rabbitmq-start, rabbitmq-stop)" >&2; exit 2 ;;
esac
