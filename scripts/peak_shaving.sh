#!/usr/bin/env bash
# Peak shaving, end to end: persistent 1 KiB messages into a durable queue with no consumer for
# PEAK_SECS, then a restart (page cache dropped when run as root), then one consumer drains the
# backlog. Prints the bench summaries, the broker's RSS (VmRSS / VmHWM) after each phase, the
# data directory's size, and a monitor line every 5 s (queue depth and RSS while publishing) in
# $WORK/monitor.log, from which the rate of each million follows.
#
#   PEAK_SECS=170 scripts/peak_shaving.sh     # about 20 million messages on a 2-core machine
#   PEAK_DIR=/big/disk scripts/peak_shaving.sh  # where the broker's data goes (default: a temp dir)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
if [ "${BENCH_BUILD:-1}" != 0 ]; then cargo build --release -p sluice-server -p sluice-bench; fi
BIN="${SLUICE_BIN:-$TARGET/release/sluice}"
BENCH="${BENCH_BIN:-$TARGET/release/sluice-bench}"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || { echo "run ./scripts/test once first: it creates .venv (pika)" >&2; exit 1; }
WORK="$(mktemp -d "${PEAK_DIR:-${TMPDIR:-/tmp}}/sluice-peak.XXXXXX")"
DATA="$WORK/data"
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
KAFKA_PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
URL="amqp://guest:guest@127.0.0.1:$PORT/%2f"
PID=""
MONITOR=""
cleanup() {
    [ -n "$MONITOR" ] && kill "$MONITOR" 2>/dev/null || true
    [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
    rm -rf "$DATA"
}
trap cleanup EXIT

start() {
    "$BIN" serve --data-dir "$DATA" --kafka-listen "127.0.0.1:$KAFKA_PORT" --amqp-listen "127.0.0.1:$PORT" --http-listen off \
        >>"$WORK/broker.log" 2>&1 &
    PID=$!
    local t0 t1
    t0=$(date +%s.%N)
    until (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do sleep 0.05; done
    t1=$(date +%s.%N)
    echo "broker listening $(python3 -c "print(f'{$t1 - $t0:.2f}')") s after start"
}
memory() { grep -E "VmRSS|VmHWM" "/proc/$PID/status" | tr -s ' \t' ' ' | tr '\n' ' '; echo; }
depth() {
    "$PY" -c 'import pika, sys
c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", int(sys.argv[1])))
print(c.channel().queue_declare("backlog", durable=True, passive=True).method.message_count)
c.close()' "$PORT" 2>/dev/null || echo "?"
}

start
"$PY" -c 'import pika, sys
c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", int(sys.argv[1])))
c.channel().queue_declare("backlog", durable=True); c.close()' "$PORT"
(while sleep 5; do echo "$(date +%s) depth=$(depth) $(memory)"; done) >"$WORK/monitor.log" 2>&1 &
MONITOR=$!
echo "== publish (no consumer), ${PEAK_SECS:-170} s"
"$BENCH" amqp --url "$URL" --queue backlog --publishers 4 --consumers 0 --size 1024 \
    --secs "${PEAK_SECS:-170}" --max-in-flight 1000 --confirm-timeout-secs 60 --no-progress
kill "$MONITOR"; MONITOR=""
echo "== after publishing: $(memory)"; du -sh "$DATA"
echo "== restart"
kill -TERM "$PID"; wait "$PID" || true
if [ "$(id -u)" -eq 0 ]; then sync; echo 3 >/proc/sys/vm/drop_caches; fi
start
sleep 1
echo "== after the restart: $(memory)"
echo "== drain (one consumer)"
"$BENCH" amqp-drain --url "$URL" --queue backlog --prefetch 1000 --ack-every 100
echo "== after draining: $(memory)"; sleep 3; du -sh "$DATA"
echo "monitor: $WORK/monitor.log"
