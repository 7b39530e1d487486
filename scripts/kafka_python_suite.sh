#!/usr/bin/env bash
# kafka-python's own integration tests, from its PyPI source distribution, against a Sluice
# broker started here: test/integration/test_{producer,consumer,admin}_integration.py.
#
# How the upstream fixtures are pointed at Sluice (test/integration/conftest.py, fixtures.py):
#   KAFKA_URI=kafka://127.0.0.1:PORT  parsed with urlparse (a scheme is needed for .hostname and
#                                     .port); makes every broker fixture an external one, so no
#                                     Kafka or ZooKeeper is spawned (ZOOKEEPER_URI stays unset).
#   KAFKA_VERSION=3.9.0               without it every integration test is skipped. It is also
#                                     the clients' api_version (kafka-python then uses
#                                     min(that version's API table, what ApiVersions advertises))
#                                     and selects version-dependent expectations and skipifs.
#   KAFKA_ROOT=<empty dir>            only checked to be a directory (Fixture.__init__); its
#                                     bin/ scripts are used solely to spawn a local Kafka, which
#                                     never happens with KAFKA_URI set.
# The sdist ships neither test/__init__.py nor test/service.py, which fixtures.py imports;
# both are supplied here (scripts/kafka_python_service_shim.py).
#
# Env: SLUICE_BIN, KAFKA_VERSION (default 3.9.0), KAFKA_PYTHON_MIN_PASS (default 46), KAFKA_PYTHON_RERUNS (default 3),
#      KAFKA_PYTHON_TEST_TIMEOUT (seconds per test, default 60).
# The sdist's pyproject asks for --timeout-method=thread, whose timeout ends the whole pytest
# process (no report, no counts); the signal method fails just the test that hangs.
# Exit status: 0 when at least KAFKA_PYTHON_MIN_PASS tests pass, 1 otherwise.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PY="$ROOT/.venv/bin/python"
SLUICE_BIN="${SLUICE_BIN:-$ROOT/target/release/sluice}"
KAFKA_VERSION="${KAFKA_VERSION:-3.9.0}"
MIN_PASS="${KAFKA_PYTHON_MIN_PASS:-49}"
TEST_TIMEOUT_S="${KAFKA_PYTHON_TEST_TIMEOUT:-60}"
# kafka-python's consumer has client-side races around metadata refreshes (its own TODOs in
# kafka/cluster.py: "handle future when old metadata request is currently in-flight"): a
# consumer that subscribes while its bootstrap Metadata request is in flight can sit without an
# assignment until the test times out. Such a test is re-run; the summary names every test that
# needed a re-run, so a broker-side flake would still show.
RERUNS="${KAFKA_PYTHON_RERUNS:-3}"
SUITE_TIMEOUT_S=1800
OUT="$ROOT/target/kafka-python-suite"
CACHE="$ROOT/.cache/kafka-python-sdist"
TEST_FILES=(
    test/integration/test_producer_integration.py
    test/integration/test_consumer_integration.py
    test/integration/test_admin_integration.py
)
# Tests not run, each with its reason (none at the moment; the transactional tests run since
# Sluice has transactions). The summary lists them as not run.
NOT_RUN=()

VERSION="$(sed -n 's/^kafka-python==\([^ ]*\).*/\1/p' "$ROOT/tests/requirements.txt")"
[ -n "$VERSION" ] || { echo "kafka-python is not pinned in tests/requirements.txt" >&2; exit 1; }
[ -x "$PY" ] || { echo "no venv at $ROOT/.venv: run scripts/test" >&2; exit 1; }
[ -x "$SLUICE_BIN" ] || { echo "no broker binary at $SLUICE_BIN" >&2; exit 1; }

# -- the source distribution --------------------------------------------------------------
mkdir -p "$CACHE" "$OUT"
TARBALL="$CACHE/kafka_python-$VERSION.tar.gz"
if [ ! -f "$TARBALL" ]; then
    "$PY" -m pip download --quiet --disable-pip-version-check --no-binary :all: --no-deps \
        "kafka-python==$VERSION" -d "$CACHE"
fi
[ -f "$TARBALL" ] || { echo "pip did not leave $TARBALL" >&2; ls -la "$CACHE" >&2; exit 1; }
SRC="$CACHE/kafka_python-$VERSION"
rm -rf "$SRC"
tar -xzf "$TARBALL" -C "$CACHE"

missing=0
for f in "${TEST_FILES[@]}" test/integration/conftest.py test/integration/fixtures.py test/testutil.py; do
    if [ ! -f "$SRC/$f" ]; then echo "the sdist has no $f" >&2; missing=1; fi
done
if [ "$missing" -ne 0 ]; then
    echo "test files in the sdist:" >&2
    (cd "$SRC" && find . -path '*test*' -name '*.py' | sort) >&2
    exit 1
fi
[ -f "$SRC/test/__init__.py" ] || : > "$SRC/test/__init__.py"
if [ ! -f "$SRC/test/service.py" ]; then
    echo "the sdist lacks test/service.py: using scripts/kafka_python_service_shim.py"
    cp "$ROOT/scripts/kafka_python_service_shim.py" "$SRC/test/service.py"
fi

# -- a broker -----------------------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sluice-kafka-python.XXXXXX")"
mkdir -p "$WORK/data" "$WORK/kafka-root"
BROKER_LOG="$OUT/sluice.log"
BROKER_PID=""
cleanup() {
    if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill -TERM "$BROKER_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$BROKER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# The broker reads SLUICE_* variables as flags: start it with none of the caller's.
unset_sluice_env=()
while IFS= read -r name; do unset_sluice_env+=(-u "$name"); done < <(compgen -e | grep '^SLUICE_' || true)
# Settings as in the broker config kafka-python's own test fixtures run Kafka with: no initial
# rebalance delay, consumer session timeouts down to 1 s (test_group uses 3 s), and 4
# partitions for auto-created topics (test_transactional_producer_offsets commits an offset of
# partition 1 of a topic its first send created).
env "${unset_sluice_env[@]}" "$SLUICE_BIN" serve --data-dir "$WORK/data" \
    --kafka-listen "127.0.0.1:$PORT" --group-initial-rebalance-delay-ms 0 \
    --default-partitions 4 \
    --group-min-session-timeout-ms 1000 --amqp-listen off --http-listen off \
    >"$BROKER_LOG" 2>&1 &
BROKER_PID=$!
for _ in $(seq 1 300); do
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
        echo "sluice exited during startup:" >&2; tail -n 40 "$BROKER_LOG" >&2; exit 1
    fi
    if "$PY" -c "import socket,sys; socket.create_connection(('127.0.0.1', $PORT), 0.5)" 2>/dev/null; then
        break
    fi
    sleep 0.1
done
"$PY" -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.5)" 2>/dev/null || {
    echo "sluice did not listen on 127.0.0.1:$PORT within 30s:" >&2; tail -n 40 "$BROKER_LOG" >&2; exit 1; }
echo "sluice (pid $BROKER_PID) on 127.0.0.1:$PORT; log: $BROKER_LOG"

# What kafka-python makes of Sluice's ApiVersions, to compare with KAFKA_VERSION (the upstream
# test_kafka_version_infer asserts the two agree).
INFERRED="$(timeout 30 "$PY" - "$PORT" <<'PYEOF' 2>/dev/null || echo unknown
import sys
from kafka import KafkaConsumer
consumer = KafkaConsumer(bootstrap_servers=f"127.0.0.1:{sys.argv[1]}", api_version=None)
print(".".join(map(str, consumer.config["api_version"])))
consumer.close()
PYEOF
)"
echo "kafka-python infers Kafka ${INFERRED} from Sluice's ApiVersions; KAFKA_VERSION=${KAFKA_VERSION}"

# -- the upstream tests -------------------------------------------------------------------
JUNIT="$OUT/junit.xml"
LOG="$OUT/pytest.log"
rm -f "$JUNIT"
echo "running ${#TEST_FILES[@]} upstream files from kafka-python $VERSION (full output: $LOG)"
status=0
(
    cd "$SRC"
    KAFKA_URI="kafka://127.0.0.1:$PORT" KAFKA_VERSION="$KAFKA_VERSION" KAFKA_ROOT="$WORK/kafka-root" \
        timeout --signal=TERM --kill-after=30 "$SUITE_TIMEOUT_S" \
        "$PY" -m pytest -p no:cacheprovider --timeout="$TEST_TIMEOUT_S" --timeout-method=signal \
        --reruns "$RERUNS" --reruns-delay 1 \
        "${NOT_RUN[@]/#/--deselect=}" \
        --junitxml="$JUNIT" -rfEs "${TEST_FILES[@]}"
) >"$LOG" 2>&1 || status=$?
echo "upstream pytest exit status: $status"
for test in "${NOT_RUN[@]}"; do echo "  NOT RUN  $test"; done

"$PY" - "$JUNIT" "$MIN_PASS" "$VERSION" "$KAFKA_VERSION" "$OUT/summary.txt" <<'PYEOF'
import sys
import xml.etree.ElementTree as ET

junit, min_pass, version, kafka_version, summary_path = sys.argv[1:]
try:
    root = ET.parse(junit).getroot()
except (OSError, ET.ParseError) as err:
    print(f"no junit report ({err}); the run did not finish")
    cases = []
else:
    cases = list(root.iter("testcase"))
# pytest-rerunfailures writes one <testcase> per attempt: the last one is the outcome.
attempts = {}
for case in cases:
    name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
    attempts.setdefault(name, []).append(case)
outcomes = {"passed": [], "failed": [], "error": [], "skipped": []}
rerun = []
for name, tries in attempts.items():
    case = tries[-1]
    detail = None
    for tag in ("failure", "error", "skipped"):
        node = case.find(tag)
        if node is not None:
            detail = (node.get("message") or "").strip().splitlines()
            detail = detail[0][:200] if detail else ""
            outcomes["failed" if tag == "failure" else tag].append((name, detail))
            break
    else:
        outcomes["passed"].append((name, ""))
        if len(tries) > 1:
            rerun.append((name, len(tries) - 1))
for label in ("failed", "error", "skipped"):
    for name, detail in outcomes[label]:
        print(f"  {label.upper():8} {name}: {detail}")
for name, reruns in rerun:
    print(f"  RERUN    {name}: passed after failing {reruns} time(s)")
passed = len(outcomes["passed"])
line = (f"kafka-python {version} upstream integration (KAFKA_VERSION={kafka_version}): "
        f"passed={passed} failed={len(outcomes['failed'])} errors={len(outcomes['error'])} "
        f"skipped={len(outcomes['skipped'])} total={len(attempts)} "
        f"(passed only on a re-run: {len(rerun)}); "
        f"required passed>={min_pass}")
print(line)
with open(summary_path, "w") as summary:
    summary.write(line + "\n")
sys.exit(0 if passed >= int(min_pass) else 1)
PYEOF
