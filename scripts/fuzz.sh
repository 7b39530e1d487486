#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer, nightly toolchain) of the decoders that take
# untrusted bytes: Kafka requests, AMQP frames and methods, record batches, and recovery over
# arbitrary segment bytes. Runs every target (or those named) for FUZZ_SECS each, all at once,
# starting from the committed corpus; then minimises what they found back into fuzz/corpus/,
# which `cargo test` replays on stable. A crash leaves its input in fuzz/artifacts/<target>/.
#
#   FUZZ_SECS=900 scripts/fuzz.sh                    # every target, 15 minutes each
#   FUZZ_SECS=60 scripts/fuzz.sh amqp_frame          # one target
#
# Needs `rustup toolchain install nightly` and `cargo install cargo-fuzz`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"
SECS="${FUZZ_SECS:-900}"
TARGETS=("$@")
if [ "${#TARGETS[@]}" -eq 0 ]; then
    TARGETS=(kafka_request amqp_frame record_batch segment_recovery)
fi
cargo +nightly fuzz build -O
status=0
pids=()
for target in "${TARGETS[@]}"; do
    mkdir -p "corpus-work/$target" "corpus/$target"
    cargo +nightly fuzz run -O "$target" "corpus-work/$target" "corpus/$target" -- \
        -max_total_time="$SECS" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
        > "corpus-work/$target.log" 2>&1 &
    pids+=($!)
done
for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
        echo "${TARGETS[$i]}: FAILED (see fuzz/corpus-work/${TARGETS[$i]}.log and fuzz/artifacts/)"
        status=1
    fi
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "corpus-work/${TARGETS[$i]}.log" \
        | sed "s/^/${TARGETS[$i]}: /" || true
done
# Keep a small corpus: only inputs that add coverage.
for target in "${TARGETS[@]}"; do
    mkdir -p "corpus-min/$target"
    cargo +nightly fuzz run -O "$target" "corpus-min/$target" "corpus/$target" "corpus-work/$target" \
        -- -merge=1 > "corpus-work/$target.merge.log" 2>&1 || true
    if [ -n "$(ls -A "corpus-min/$target")" ]; then
        rm -rf "corpus/$target" && mv "corpus-min/$target" "corpus/$target"
    fi
done
rm -rf corpus-min
du -sh corpus/* | sed 's/^/corpus: /'
exit "$status"
