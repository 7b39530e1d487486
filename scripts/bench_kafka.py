"""Sluice against Apache Kafka on this machine, in one run (`scripts/bench.sh --kafka`).

Three brokers, one after the other, each on a fresh data directory:
  - sluice        `sluice serve --fsync batch` (an acknowledgement waits for the group fsync)
  - kafka         Apache Kafka 4.1 (the reference node of tests/kafka_differential) with its
                  defaults, which acknowledge before any fsync
  - kafka-flush   the same with log.flush.interval.messages=1 (Kafka's flush.messages=1:
                  every append is fsynced before the acknowledgement)
The same workloads run against each: sluice-bench (librdkafka) at 100 B and 1 KiB on 1 and 8
partitions with acks=all, and the end-to-end latency at a fixed 20,000 msgs/s; then Kafka's own
kafka-producer-perf-test and kafka-consumer-perf-test (acks=all, 8 partitions). The table at the
end compares them; the raw outputs stay in the output directory.

    python scripts/bench_kafka.py --sluice BIN --bench BIN --out DIR [--secs N]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import free_port  # noqa: E402
from kafka_differential.conftest import (  # noqa: E402
    KafkaNode, class_path, java, kafka_lib_present, wait_for_kafka)

BROKERS = ("sluice", "kafka", "kafka-flush")
# (file name, label, sluice-bench flags)
WORKLOADS = [
    ("1_100B_p1", "100 B acks=all p=1",
     ["--message-bytes", "100", "--acks", "all", "--partitions", "1"]),
    ("2_100B_p8", "100 B acks=all p=8",
     ["--message-bytes", "100", "--acks", "all", "--partitions", "8"]),
    ("3_1KiB_p1", "1 KiB acks=all p=1",
     ["--message-bytes", "1024", "--acks", "all", "--partitions", "1"]),
    ("4_1KiB_p8", "1 KiB acks=all p=8",
     ["--message-bytes", "1024", "--acks", "all", "--partitions", "8"]),
    ("5_latency", "100 B acks=all at 20,000 msgs/s",
     ["--message-bytes", "100", "--acks", "all", "--partitions", "1", "--rate", "20000",
      "--linger-ms", "0", "--fetch-wait-max-ms", "100"]),
]
# Kafka's perf tools: (label, record bytes, records).
PERF_TOOL_RUNS = [("100 B", 100, 3_000_000), ("1 KiB", 1024, 1_000_000)]
PRODUCER_PERF = "org.apache.kafka.tools.ProducerPerformance"
CONSUMER_PERF = "org.apache.kafka.tools.ConsumerPerformance"


class Sluice:
    def __init__(self, binary: str, work: Path):
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log = open(work / "sluice.log", "wb")
        self.process = subprocess.Popen(
            [binary, "serve", "--data-dir", str(work / "sluice-data"), "--kafka-listen",
             self.bootstrap, "--fsync", "batch", "--amqp-listen", "off", "--http-listen", "off",
             # As the reference node is configured: groups form without waiting.
             "--group-initial-rebalance-delay-ms", "0"],
            stdout=self.log, stderr=subprocess.STDOUT)
        error = wait_for_kafka(self.bootstrap, 30, alive=lambda: self.process.poll() is None)
        if error is not None:
            raise RuntimeError(f"sluice did not start: {error}")

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()


class Kafka:
    def __init__(self, work: Path, flush_every_message: bool):
        self.node = KafkaNode(work)
        if flush_every_message:
            with open(self.node.config_path, "a") as config:
                config.write("log.flush.interval.messages=1\n")
        self.node.format_storage()
        self.node.start()
        self.bootstrap = self.node.bootstrap

    def stop(self):
        self.node.stop()


def tool(main_class: str, *args, timeout=900) -> str:
    result = subprocess.run(
        [java(), "-Xms512m", "-Xmx1g",
         f"-Dlog4j2.configurationFile={ROOT / 'tests/kafka_differential/reference/log4j2-tools.properties'}",
         "-cp", class_path(), main_class, *map(str, args)],
        capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{main_class} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result.stdout


def create_topic(bootstrap: str, topic: str, partitions: int):
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = admin.list_topics(topic, timeout=10).topics.get(topic)
        if found and not found.error and len(found.partitions) == partitions and \
                all(p.leader >= 0 for p in found.partitions.values()):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{topic}: no leaders after 60 s")


def run_broker(name: str, args, out: Path):
    work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-", dir=args.work_dir))
    print(f"### {name}: starting", flush=True)
    broker = Sluice(args.sluice, work) if name == "sluice" else \
        Kafka(work, flush_every_message=(name == "kafka-flush"))
    try:
        for file_name, label, flags in [] if args.perf_tools_only else WORKLOADS:
            topic = f"bench-{file_name}"
            print(f"### {name}: {label}", flush=True)
            result = subprocess.run(
                [args.bench, "kafka", "--bootstrap", broker.bootstrap, "--topic", topic,
                 "--create-topic", "--no-progress", "--json", "--duration-secs",
                 str(args.secs), "--producers", "1", "--consumers", "1", *flags],
                capture_output=True, text=True, timeout=args.secs * 10 + 120)
            (out / f"{name}-{file_name}.json").write_text(result.stdout)
            if result.returncode != 0:
                print(f"    sluice-bench failed ({result.returncode}): {result.stderr[-1000:]}")
        for label, size, records in PERF_TOOL_RUNS:
            topic = f"perf-{size}"
            create_topic(broker.bootstrap, topic, 8)
            print(f"### {name}: kafka-producer-perf-test {label}", flush=True)
            produced = tool(PRODUCER_PERF, "--topic", topic, "--num-records", records,
                            "--record-size", size, "--throughput", -1, "--producer-props",
                            f"bootstrap.servers={broker.bootstrap}", "acks=all",
                            "linger.ms=5", "batch.size=131072")
            print(f"### {name}: kafka-consumer-perf-test {label}", flush=True)
            consumed = tool(CONSUMER_PERF, "--bootstrap-server", broker.bootstrap, "--topic",
                            topic, "--messages", records, "--timeout", 60_000)
            (out / f"{name}-perf-{size}.txt").write_text(produced + "\n" + consumed)
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


def load_runs(out: Path):
    runs = {}
    for path in out.glob("*.json"):
        broker, _, workload = path.stem.partition("-")
        if broker == "kafka" and workload.startswith("flush-"):
            broker, workload = "kafka-flush", workload[len("flush-"):]
        try:
            runs[(broker, workload)] = json.loads(path.read_text())
        except ValueError:
            runs[(broker, workload)] = None
    return runs


def perf_numbers(text: str):
    """(producer records/s, MB/s, p50 ms, p99 ms), (consumer records/s, MB/s): the consumer's
    fetch phase (fetch.nMsg.sec), without the group's join, which the tool's nMsg.sec counts."""
    produced = re.search(r"records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\).*?"
                         r"(\d+) ms 50th, \d+ ms 95th, (\d+) ms 99th", text)
    consumed = None
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) >= 6 and re.match(r"\d{4}-", cells[0]):
            consumed = cells
    return (produced.groups() if produced else ("-",) * 4,
            (consumed[9], consumed[8]) if consumed and len(consumed) >= 10 else ("-", "-"))


def print_table(out: Path):
    runs = load_runs(out)
    rows = [("workload", "broker", "produce msgs/s", "MB/s", "consume msgs/s",
             "ack p50/p99 ms", "e2e p50/p99 ms", "errors")]
    for file_name, label, _ in WORKLOADS:
        for broker in BROKERS:
            run = runs.get((broker, file_name))
            if not run:
                rows.append((label, broker, "-", "-", "-", "-", "-", "failed"))
                continue
            rows.append((label, broker, f"{run['produce_msgs_per_sec']:,.0f}",
                         f"{run['produce_mb_per_sec']:.1f}",
                         f"{run['consume_msgs_per_sec']:,.0f}",
                         f"{run['produce_ack']['latency_ms_p50']:.2f}/"
                         f"{run['produce_ack']['latency_ms_p99']:.2f}",
                         f"{run['end_to_end']['latency_ms_p50']:.2f}/"
                         f"{run['end_to_end']['latency_ms_p99']:.2f}",
                         str(run["errors"]["total"] + run["missing_msgs"])))
    for label, size, _ in PERF_TOOL_RUNS:
        for broker in BROKERS:
            path = out / f"{broker}-perf-{size}.txt"
            if not path.exists():
                continue
            (rate, mb, p50, p99), (consume_rate, _) = perf_numbers(path.read_text())
            rows.append((f"perf-test {label} p=8", broker, f"{float(rate):,.0f}", mb,
                         f"{float(consume_rate):,.0f}", f"{p50}/{p99}", "-", "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(row, widths))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sluice", required=True)
    parser.add_argument("--bench", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--secs", type=int, default=10)
    parser.add_argument("--brokers", default=",".join(BROKERS))
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--perf-tools-only", action="store_true",
                        help="only the producer/consumer perf tool runs (e.g. to compare two "
                             "Sluice builds' consume rate)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        if not kafka_lib_present():
            sys.exit("Apache Kafka's jars are missing: run scripts/test once (it resolves them)")
        for name in args.brokers.split(","):
            run_broker(name, args, args.out)
    print_table(args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
