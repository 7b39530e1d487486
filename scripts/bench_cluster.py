"""Helpers of `BENCH_CLUSTER=1 scripts/bench.sh` (the single-node vs 3-node comparison).

    bench_cluster.py create-topic BOOTSTRAP TOPIC PARTITIONS REPLICATION_FACTOR
        creates the topic (sluice-bench --create-topic always asks for replication factor 1) and
        waits until every node reports a leader for every partition and the leader reports all
        replicas in sync, so the run does not time the first elections.
    bench_cluster.py table DIR
        prints the comparison table from DIR/<mode>-<NN>_<workload>.json (sluice-bench --json;
        mode is `single` or `cluster`, NN orders the rows), with the disk and CPU figures of
        DIR/<mode>-<NN>_<workload>.resources where bench.sh wrote them.
"""

import concurrent.futures
import json
import sys
import time
from pathlib import Path

READY_TIMEOUT_S = 120


def create_topic(bootstrap: str, topic: str, partitions: int, replication_factor: int):
    # Imported here: `table` needs only the standard library.
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = None
    # The metadata group may still be electing its first leader: retry until it takes the topic.
    while True:
        future = admin.create_topics(
            [NewTopic(topic, partitions, replication_factor)], operation_timeout=30)[topic]
        try:
            future.result(timeout=40)
            break
        except KafkaException as error:
            if "TOPIC_ALREADY_EXISTS" in str(error):
                break
            last = error
        except concurrent.futures.TimeoutError:
            # A busy cluster (elections after a heavy run) may not answer in time: ask again.
            last = "CreateTopics unanswered after 40 s"
        if time.monotonic() > deadline:
            sys.exit(f"creating {topic}: {last}")
        time.sleep(0.5)

    nodes = bootstrap.split(",")
    while True:
        try:
            views = [partition_view(node, topic) for node in nodes]
            if ready(views, partitions, replication_factor):
                return
            last = views
        except KafkaException as error:
            last = error
        if time.monotonic() > deadline:
            sys.exit(f"{topic}: partitions not led with full ISRs after {READY_TIMEOUT_S}s: {last}")
        time.sleep(0.2)


def partition_view(node: str, topic: str):
    """{partition: (leader, replicas, isr)} as one node reports them."""
    from confluent_kafka.admin import AdminClient

    metadata = AdminClient({"bootstrap.servers": node}).list_topics(topic, timeout=5)
    described = metadata.topics[topic]
    if described.error is not None:
        return {}
    return {p.id: (p.leader, sorted(p.replicas), sorted(p.isrs))
            for p in described.partitions.values()}


def ready(views, partitions: int, replication_factor: int) -> bool:
    """Every node names the same live leader per partition, and each leader's own view has all
    replicas in sync. views[i] is node i+1's report (node ids follow the --peers order)."""
    leaders = [{p: v[0] for p, v in view.items()} for view in views]
    if len(leaders[0]) != partitions or any(l != leaders[0] for l in leaders):
        return False
    if any(leader <= 0 or leader > len(views) for leader in leaders[0].values()):
        return False
    return all(len(views[leader - 1][p][2]) == replication_factor
               for p, leader in leaders[0].items())


def print_table(directory: Path):
    runs, machine = {}, {}
    for path in sorted(directory.glob("*.json")):
        mode, _, workload = path.stem.partition("-")
        runs.setdefault(workload, {})[mode] = json.loads(path.read_text())
        # What bench.sh saw the machine do during the run (absent in older output directories).
        resources = path.with_suffix(".resources")
        if resources.exists():
            machine.setdefault(workload, {})[mode] = json.loads(resources.read_text())
    header = ("workload", "single msgs/s", "MB/s", "cluster msgs/s", "MB/s", "ratio",
              "ack p50/p99 ms single", "cluster", "e2e p50/p99 ms single", "cluster",
              "disk MB/s single", "cluster", "CPU busy/iowait % single", "cluster",
              "errors+missing single/cluster")
    rows = [header]
    for workload, by_mode in runs.items():
        single, cluster = by_mode.get("single"), by_mode.get("cluster")
        seen = machine.get(workload, {})

        def disk(mode):
            rate = seen.get(mode, {}).get("disk_write_mb_per_sec")
            return "-" if rate is None else f"{rate:.0f}"

        def cpu(mode):
            run = seen.get(mode)
            return f"{run['cpu_busy_pct']:.0f}/{run['cpu_iowait_pct']:.0f}" if run else "-"

        def rate(run):
            return (f"{run['produce_msgs_per_sec']:,.0f}", f"{run['produce_mb_per_sec']:.1f}") \
                if run else ("-", "-")

        def latency(run, key):
            return f"{run[key]['latency_ms_p50']:.1f}/{run[key]['latency_ms_p99']:.1f}" \
                if run else "-"

        def faults(run):
            # A run whose producer flush timed out reports the rate up to its last ack only.
            return run["errors"]["total"] + run["missing_msgs"] if run else "-"

        # A producer flush that timed out leaves a rate over the acknowledged part only: no
        # ratio then (the errors column says why).
        ratio = (f"{cluster['produce_msgs_per_sec'] / single['produce_msgs_per_sec']:.2f}"
                 if single and cluster and single["produce_msgs_per_sec"]
                 and not single["errors"]["total"] and not cluster["errors"]["total"] else "-")
        # Files are named <mode>-<NN>_<label> so that sorting keeps the run order.
        label = workload.partition("_")[2].replace("_", " ")
        rows.append((label, *rate(single), *rate(cluster), ratio,
                     latency(single, "produce_ack"), latency(cluster, "produce_ack"),
                     latency(single, "end_to_end"), latency(cluster, "end_to_end"),
                     disk("single"), disk("cluster"), cpu("single"), cpu("cluster"),
                     f"{faults(single)}/{faults(cluster)}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(row, widths))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def main(argv):
    if len(argv) == 6 and argv[1] == "create-topic":
        create_topic(argv[2], argv[3], int(argv[4]), int(argv[5]))
    elif len(argv) == 3 and argv[1] == "table":
        print_table(Path(argv[2]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
