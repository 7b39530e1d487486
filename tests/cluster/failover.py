"""Failover time: SIGKILL the leader of a partition and time how long until an acks=all produce
to that partition is acknowledged again, as an ordinary client sees it (librdkafka finding the
new leader through Metadata included). Repeated over several kills; the killed node is
restarted and caught up before the next one.

    cd tests && python -m cluster.failover --nodes 3 --kills 10     (p50 and max in seconds)
"""

from __future__ import annotations

import argparse
import logging
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from .leaders import wait_for_leaders
from .netns import REPO_ROOT, Cluster, ClusterFlagsMissing

TOPIC = "failover"
PARTITIONS = 3
PROBE_PARTITION = 0


@dataclass
class FailoverTimes:
    seconds: list[float]
    leaders_killed: list[int]

    @property
    def p50_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def max_s(self) -> float:
        return max(self.seconds)

    def summary(self) -> str:
        each = ", ".join(f"{s:.2f}" for s in self.seconds)
        return (f"failover over {len(self.seconds)} leader kills: p50 {self.p50_s:.2f} s, "
                f"max {self.max_s:.2f} s (each: {each}; leaders killed: {self.leaders_killed})")


def _client_log(out_dir: Path) -> logging.Logger:
    """librdkafka's log lines (connection refused, ...) go to a file, not the console."""
    logger = logging.getLogger(f"failover.clients.{out_dir}")
    if not logger.handlers:
        handler = logging.FileHandler(out_dir / "clients.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    return logger


def create_topic(cluster: Cluster, topic: str, partitions: int):
    client = AdminClient({"bootstrap.servers": cluster.bootstrap,
                          "logger": _client_log(cluster.out_dir)})
    futures = client.create_topics([NewTopic(topic, num_partitions=partitions,
                                             replication_factor=min(3, len(cluster.nodes)))],
                                   operation_timeout=30, request_timeout=30)
    futures[topic].result(timeout=60)
    wait_for_leaders(cluster, topic, partitions, timeout_s=60)


def produce_acked(producer: Producer, topic: str, partition: int, value: bytes,
                  timeout_s: float) -> bool:
    """One acks=all produce; True once acknowledged, False on an error or no answer in time."""
    outcome = []
    producer.produce(topic, value=value, partition=partition,
                     on_delivery=lambda err, msg: outcome.append(err))
    deadline = time.monotonic() + timeout_s
    while not outcome and time.monotonic() < deadline:
        producer.poll(0.01)
    return bool(outcome) and outcome[0] is None


def measure(cluster: Cluster, kills: int, topic: str = TOPIC, partitions: int = PARTITIONS,
            partition: int = PROBE_PARTITION, give_up_s: float = 60,
            restart_at_once: bool = False) -> FailoverTimes:
    """Kills the partition's leader `kills` times; the time of each is from the SIGKILL to the
    first acknowledged acks=all produce to that partition. With restart_at_once the killed node
    is started again right after the kill (a standalone node has no other replica to fail over
    to: the time is then its crash recovery)."""
    create_topic(cluster, topic, partitions)
    # Retries inside the client are what a real producer does; a short backoff and metadata
    # refresh keep the client's own delay small next to the cluster's.
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all",
                         "enable.idempotence": True, "linger.ms": 0,
                         "message.timeout.ms": int(give_up_s * 1000), "retry.backoff.ms": 50,
                         "retry.backoff.max.ms": 200,
                         "topic.metadata.refresh.fast.interval.ms": 50,
                         "reconnect.backoff.ms": 50, "reconnect.backoff.max.ms": 500,
                         "socket.connection.setup.timeout.ms": 2000,
                         "logger": _client_log(cluster.out_dir)})
    seconds, killed = [], []
    try:
        for kill in range(kills):
            leader = wait_for_leaders(cluster, topic, partitions, timeout_s=give_up_s)[
                partition].leader
            if not produce_acked(producer, topic, partition, f"warm-{kill}".encode(), 30):
                raise AssertionError(f"before kill {kill + 1}: the healthy cluster did not "
                                     f"acknowledge a produce to partition {partition}")
            started = time.monotonic()
            cluster.node(leader).kill()
            if restart_at_once:
                cluster.node(leader).start(wait=False)
            if not produce_acked(producer, topic, partition, f"after-kill-{kill}".encode(),
                                 give_up_s):
                raise AssertionError(f"kill {kill + 1} (leader node {leader}): no acks=all "
                                     f"produce to partition {partition} succeeded within "
                                     f"{give_up_s}s")
            seconds.append(time.monotonic() - started)
            killed.append(leader)
            if not restart_at_once:
                cluster.node(leader).start()
    finally:
        producer.flush(10)
    return FailoverTimes(seconds, killed)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "target" / "failover")
    parser.add_argument("--standalone", action="store_true",
                        help="one standalone node restarted at once (today's binary): the "
                             "time is its crash recovery")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like ^C: nodes killed, namespaces removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    nodes = 1 if args.standalone else args.nodes
    try:
        cluster = Cluster(nodes, args.out / time.strftime("%Y%m%dT%H%M%S"),
                          clustered=not args.standalone)
    except ClusterFlagsMissing as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with cluster:
        times = measure(cluster, args.kills, restart_at_once=args.standalone)
    print(times.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
