#!/usr/bin/env bash
# The cost of TLS (issue 11): one Sluice node with a PLAINTEXT and an SSL Kafka listener on the
# same broker, and Kafka's own kafka-producer-perf-test (org.apache.kafka.tools.ProducerPerformance,
# from the jars scripts/test resolves for the differential suite) producing 100 B and 1 KiB
# records with acks=all through each listener in turn. Prints the tool's summary lines
# (records/s, MB/s, average and max latency, p50/p95/p99/p99.9) for the four runs.
# BENCH_RECORDS (default 1,000,000 for 100 B, a quarter of that for 1 KiB) sets the run length;
# BENCH_BUILD=0 skips the build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ "${BENCH_BUILD:-1}" != 0 ]; then cargo build --release -p sluice-server; fi
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
SLUICE="${SLUICE_BIN:-$TARGET_DIR/release/sluice}"
LIB="${SLUICE_KAFKA_LIB:-$ROOT/tests/kafka_differential/reference/target/lib}"
[ -d "$LIB" ] || { echo "no Kafka jars in $LIB: run scripts/test once (it resolves them)" >&2; exit 1; }
RECORDS="${BENCH_RECORDS:-1000000}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench-tls.XXXXXX")"
# shellcheck source=scripts/bench_lib.sh
source "$ROOT/scripts/bench_lib.sh"
read -r PLAIN TLS <<< "$(free_ports 2)"

# A CA and a server certificate for 127.0.0.1.
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/ca.key" -out "$WORK/ca.pem" -days 2 \
    -subj "/CN=bench CA" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout "$WORK/server.key" -out "$WORK/server.csr" \
    -subj "/CN=127.0.0.1" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > "$WORK/ext"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
    -CAcreateserial -out "$WORK/server.pem" -days 2 -extfile "$WORK/ext" 2>/dev/null

mkdir -p "$WORK/data"
"$SLUICE" serve --data-dir "$WORK/data" --amqp-listen off --http-listen off \
    --kafka-listen "PLAINTEXT://127.0.0.1:$PLAIN,SSL://127.0.0.1:$TLS" \
    --tls-cert "$WORK/server.pem" --tls-key "$WORK/server.key" > "$WORK/sluice.log" 2>&1 &
SLUICE_PID=$!
trap 'kill $SLUICE_PID 2>/dev/null; wait $SLUICE_PID 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$TLS") 2>/dev/null && break; sleep 0.1; done

perf() { # protocol port size records
    local extra=()
    if [ "$1" = SSL ]; then
        extra=(security.protocol=SSL ssl.truststore.type=PEM "ssl.truststore.location=$WORK/ca.pem")
    fi
    java -Xmx1g -cp "$LIB/*" org.apache.kafka.tools.ProducerPerformance \
        --topic "tls-$1-$3" --num-records "$4" --record-size "$3" --throughput -1 \
        --producer-props "bootstrap.servers=127.0.0.1:$2" acks=all linger.ms=5 batch.size=262144 \
        "${extra[@]}" 2>/dev/null | tail -1
}
for size in 100 1024; do
    records=$RECORDS
    [ "$size" = 1024 ] && records=$((RECORDS / 4))
    for protocol in PLAINTEXT SSL; do
        port=$PLAIN
        [ "$protocol" = SSL ] && port=$TLS
        printf '%-9s %5s B: ' "$protocol" "$size"
        perf "$protocol" "$port" "$size" "$records"
    done
done
