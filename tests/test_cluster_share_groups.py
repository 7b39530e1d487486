"""Share groups (KIP-932, "queues for Kafka") on three real `sluice` processes as one cluster,
through the Java client's KafkaShareConsumer and admin client (the Java probe of
tests/clients/java, as in kafka_differential/test_share_groups.py), on RF=3 topics.

Kafka splits a share group between two places, and so does a Sluice cluster: the membership
(ShareGroupHeartbeat, ShareGroupDescribe) and the share-group admin APIs (DescribeShareGroupOffsets,
AlterShareGroupOffsets, DeleteShareGroupOffsets) are served by the group coordinator, the metadata
Raft leader; each share partition (which records are acquired, acknowledged or released, and
their delivery counts) lives on the partition's Raft leader, which serves ShareFetch and
ShareAcknowledge for it. Share-partition states are committed through the metadata group, so
that another node can take a share partition over. What is proven:

- Two consumers of one group on a topic of three partitions get every record produced while
  they poll exactly once between them (delivery count 1), each partition's records in offset
  order, and the group's start offset of every partition ends past its last record.
- When a partition's leader is killed with SIGKILL, its new leader serves the share partition
  where the old one left it: a RELEASEd record comes again with its delivery count one higher,
  the ACCEPTed ones never again, and records produced after the failover come once.
- AlterShareGroupOffsets through the coordinator makes every partition's leader, whichever node
  it is, hand its records out again from the new start offset, each on a first delivery; after
  DeleteShareGroupOffsets the group starts over on every partition where
  share.auto.offset.reset says.

Group configs (share.auto.offset.reset=earliest) are not replicated in a cluster, so these tests
keep the default, latest: a new group's share partition starts at the partition's end as of its
first ShareFetch (or of the assignment, on the coordinator when it leads the partition). So each
test first has a consumer of the group poll the empty topic until DescribeShareGroupOffsets lists
every partition (their starts are fixed and stored), and only then produces the records it
counts: none can be skipped for having come before the group's start.
"""

import time
import types

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from conftest import start_static_cluster
from kafka_differential.test_java_client import one, only, probe, step
from kafka_differential.test_share_groups import (CONSUME_TIMEOUT_MS, QUIET_MS,
                                                  commits_succeeded, deliveries, finished)
from test_cluster_local import HEAL_TIMEOUT_S, create_topic_with_leaders, http_get
from test_cluster_transactions import agreed_metadata_leader

# How long the warm-up consumer of a new group polls the empty topic: its assignment and first
# ShareFetch of every partition come well within it. It polls again if they did not.
WARM_UP_MS = 3000


def start_cluster_with_topic(broker_factory, topic, partitions):
    """Three nodes and an RF=3 topic whose partitions each have a leader; the nodes."""
    nodes, _ = start_static_cluster(broker_factory)
    admin = AdminClient({"bootstrap.servers": bootstrap_of(nodes)})
    create_topic_with_leaders(admin, topic, partitions)
    return nodes


def bootstrap_of(nodes):
    return ",".join(n.bootstrap for n in nodes)


def java_client(nodes):
    """What probe() needs of its target: a bootstrap list, here of the given nodes."""
    return types.SimpleNamespace(bootstrap=bootstrap_of(nodes))


def start_offsets(lines):
    """{partition: start offset} of the probe's only share-group-offsets line, which must have
    succeeded."""
    listed = one(lines, "share-group-offsets")
    assert listed["error"] is None, listed
    return {entry["partition"]: entry["offset"] for entry in listed["offsets"]}


def fix_group_start(java, group, topic, partitions):
    """Has a consumer of share group `group`, which has no start offsets yet, poll `topic` until
    the group has one for each partition (latest: the end as of the first ShareFetch); it must
    get nothing. {partition: start offset}. Whatever is produced afterwards is the group's to
    get."""
    deadline = time.monotonic() + HEAL_TIMEOUT_S
    while True:
        lines = probe(java,
                      step("share-consume", group=group, name="warm-up", topic=topic, count=1,
                           timeout_ms=WARM_UP_MS),
                      step("share-group-offsets", group=group))
        assert deliveries(lines) == [], lines
        starts = start_offsets(lines)
        if sorted(starts) == list(range(partitions)):
            return starts
        assert time.monotonic() < deadline, \
            f"the group has no start offset for every partition of {topic}: {lines}"


def produce(bootstrap, topic, values, partition):
    """Produces `values` to `partition` with acks=all; their offsets, in order."""
    offsets, failures = {}, []

    def delivered(error, message):
        if error is not None:
            failures.append(error)
        else:
            offsets[message.value().decode()] = message.offset()

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "enable.idempotence": True, "topic.metadata.refresh.interval.ms": 1000})
    for value in values:
        producer.produce(topic, value=value.encode(), partition=partition, on_delivery=delivered)
    assert producer.flush(30) == 0, "records still undelivered after 30 s"
    assert not failures, failures
    return [offsets[value] for value in values]


def agreed_partition_leader(nodes, topic, partition, exclude=()):
    """The leader of `partition` that every live node's HTTP API names, with the same leader
    epoch. `exclude`: ids of nodes that are down, which must not be named."""
    deadline = time.monotonic() + HEAL_TIMEOUT_S
    last = None
    while time.monotonic() < deadline:
        try:
            views = [{p["partition"]: (p["leader"], p["leader_epoch"])
                      for p in http_get(n, f"/api/topics/{topic}/partitions")}.get(partition)
                     for node_id, n in enumerate(nodes, start=1) if node_id not in exclude]
            leader = views[0][0] if views[0] else -1
            if (all(v == views[0] for v in views) and leader in range(1, len(nodes) + 1)
                    and leader not in exclude):
                return leader
            last = views
        except OSError as error:  # a node's API restarting, or a request timing out
            last = error
        time.sleep(0.2)
    pytest.fail(f"the nodes did not agree on a leader of {topic}/{partition} in "
                f"{HEAL_TIMEOUT_S}s: {last}")


@pytest.mark.timeout(120)
def test_a_share_group_on_a_cluster_delivers_each_record_once_across_partitions(
        broker_factory):
    topic, group, partitions, total = "queue", "workers", 3, 60
    nodes = start_cluster_with_topic(broker_factory, topic, partitions)
    java = java_client(nodes)
    leaders = {p: agreed_partition_leader(nodes, topic, p) for p in range(partitions)}
    fix_group_start(java, group, topic, partitions)

    # Two consumers poll while the records are produced one by one (keyed: they spread over
    # the partitions), each ACCEPTing what it gets with commitSync after every poll: a record
    # left unacknowledged when one closes would go back to the group and could come again.
    lines = probe(java,
                  step("share-consume-parallel", group=group, topic=topic, consumers=2,
                       count=total, mode="explicit", background=True, extra_poll_ms=QUIET_MS,
                       timeout_ms=CONSUME_TIMEOUT_MS),
                  step("produce", topic=topic, count=total, headers=False, interval_ms=20),
                  step("share-wait", name=group),
                  step("share-group-offsets", group=group))
    produced = only(lines, "produce")
    assert all(p.get("error") is None for p in produced), produced
    records = {(p["partition"], p["offset"]): f"value-{p['index']}" for p in produced}
    assert len(records) == total
    assert {partition for partition, _ in records} == set(range(partitions)), records

    got = {name: deliveries(lines, name) for name in (f"{group}-1", f"{group}-2")}
    everything = sorted((p, o, v) for delivered in got.values() for p, o, v, _ in delivered)
    assert everything == sorted((p, o, v) for (p, o), v in records.items()), \
        (leaders, got)
    assert {c for delivered in got.values() for _, _, _, c in delivered} == {1}, got
    for delivered in got.values():
        for partition in range(partitions):
            offsets = [o for p, o, _, _ in delivered if p == partition]
            assert offsets == sorted(offsets), delivered
    commits_succeeded(lines)
    assert one(lines, "share-wait")["finished"] is True
    for name in got:
        assert finished(lines, name)["timed_out"] is False

    # Every record acknowledged: each partition's start offset is past its last record.
    last = {p: max(o for q, o in records if q == p) for p in range(partitions)}
    starts = start_offsets(lines)
    assert sorted(starts) == list(range(partitions)), starts
    assert all(starts[p] > last[p] for p in range(partitions)), (starts, last, leaders)


@pytest.mark.timeout(150)
def test_share_partition_state_survives_its_leader_being_killed(broker_factory):
    """Mirrors test_share_groups.py's restart test with a failover instead: offset o0 RELEASEd
    on both its deliveries, o1 and o2 ACCEPTed; the partition's leader is killed (whether or
    not it is also the metadata leader that coordinates the group), and its successor hands
    o0 out on its third delivery, never o1 or o2, and the record produced after the failover
    once."""
    topic, group = "failover", "survivors"
    nodes = start_cluster_with_topic(broker_factory, topic, 1)
    java = java_client(nodes)
    fix_group_start(java, group, topic, 1)
    o0, o1, o2 = produce(bootstrap_of(nodes), topic, ["value-0", "value-1", "value-2"], 0)

    before = probe(java,
                   step("share-consume", group=group, name="before", topic=topic, count=4,
                        mode="explicit", acks=f"{o0}:release", timeout_ms=CONSUME_TIMEOUT_MS))
    assert sorted(deliveries(before, "before")) == \
        [(0, o0, "value-0", 1), (0, o0, "value-0", 2), (0, o1, "value-1", 1),
         (0, o2, "value-2", 1)]
    commits_succeeded(before)

    leader = agreed_partition_leader(nodes, topic, 0)
    coordinator = agreed_metadata_leader(nodes)
    nodes[leader - 1].kill9()
    new_leader = agreed_partition_leader(nodes, topic, 0, exclude=(leader,))
    assert new_leader != leader
    survivors = [n for node_id, n in enumerate(nodes, start=1) if node_id != leader]
    [o3] = produce(bootstrap_of(survivors), topic, ["after-0"], 0)

    after = probe(java_client(survivors),
                  step("share-consume", group=group, name="after", topic=topic, count=2,
                       mode="explicit", extra_poll_ms=QUIET_MS, timeout_ms=CONSUME_TIMEOUT_MS),
                  step("share-group-offsets", group=group))
    case = f"killed node {leader} (the metadata leader was {coordinator}), new leader " \
           f"{new_leader}"
    assert sorted(deliveries(after, "after")) == \
        [(0, o0, "value-0", 3), (0, o3, "after-0", 1)], (case, after)
    commits_succeeded(after)
    # Both acknowledged: the start offset is past the last record.
    assert start_offsets(after)[0] > o3, (case, after)


@pytest.mark.timeout(150)
def test_altered_and_deleted_share_group_offsets_take_effect_on_each_partitions_leader(
        broker_factory):
    """On each of three partitions: 4 records ACCEPTed; AlterShareGroupOffsets (served by the
    coordinator) to the third record's offset makes the next consumer get the last two again,
    each on its first delivery, from each partition's leader, whichever node that is (it drops
    the share partition it had loaded); DeleteShareGroupOffsets of the topic leaves the group no
    start offset, a second one finds nothing to delete, and the next consumer starts each
    partition at its end again (latest), past records produced after the delete."""
    topic, group, partitions = "admin", "rewinders", 3
    nodes = start_cluster_with_topic(broker_factory, topic, partitions)
    java = java_client(nodes)
    bootstrap = bootstrap_of(nodes)
    fix_group_start(java, group, topic, partitions)
    offsets = {p: produce(bootstrap, topic, [f"p{p}-{i}" for i in range(4)], p)
               for p in range(partitions)}
    leaders = {p: agreed_partition_leader(nodes, topic, p) for p in range(partitions)}
    coordinator = agreed_metadata_leader(nodes)
    where = f"partition leaders {leaders}, coordinator {coordinator}"

    lines = probe(java,
                  step("share-consume", group=group, name="first", topic=topic,
                       count=4 * partitions, mode="explicit", timeout_ms=CONSUME_TIMEOUT_MS),
                  *[step("alter-share-group-offsets", group=group, topic=topic, partition=p,
                         offset=offsets[p][2]) for p in range(partitions)],
                  step("share-group-offsets", group=group),
                  step("share-consume", group=group, name="second", topic=topic,
                       count=2 * partitions, mode="explicit", extra_poll_ms=QUIET_MS,
                       timeout_ms=CONSUME_TIMEOUT_MS),
                  step("delete-share-group-offsets", group=group, topics=topic),
                  step("delete-share-group-offsets", group=group, topics=topic))
    assert sorted(deliveries(lines, "first")) == \
        sorted((p, offsets[p][i], f"p{p}-{i}", 1) for p in range(partitions) for i in range(4))
    altered = only(lines, "alter-share-group-offsets")
    assert [a["error"] for a in altered] == [None] * partitions, (where, altered)
    assert start_offsets(lines) == {p: offsets[p][2] for p in range(partitions)}, where
    assert sorted(deliveries(lines, "second")) == \
        sorted((p, offsets[p][i], f"p{p}-{i}", 1) for p in range(partitions) for i in (2, 3)), \
        (where, lines)
    commits_succeeded(lines)
    deleted, nothing_left = only(lines, "delete-share-group-offsets")
    assert deleted["error"] is None, (where, deleted)
    assert (nothing_left["error"], nothing_left["message"]) == \
        ("UnknownTopicOrPartitionException", "There is no offset information to delete."), \
        nothing_left

    # Produced after the delete and before the next consumer: a partition that kept its old
    # state (start offset past p*-3) would hand these out; one that starts over at its end
    # (latest) does not.
    later = {p: produce(bootstrap, topic, [f"later-{p}"], p)[0] for p in range(partitions)}
    assert start_offsets(probe(java, step("share-group-offsets", group=group))) == {}
    starts = fix_group_start(java, group, topic, partitions)
    assert all(starts[p] > later[p] for p in range(partitions)), (where, starts, later)
