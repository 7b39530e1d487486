"""Three real `sluice` processes on 127.0.0.1 as one cluster (--node-id, --cluster-listen,
--peers): an RF=3 topic takes acks=all idempotent writes from confluent-kafka while the leader
of a partition is killed with SIGKILL and later restarted. Nothing acknowledged may be lost or
duplicated, every acknowledged record must be at its acknowledged offset, and after the restart
every node must report the same leaders, with the leader's ISR back to all three replicas.
A consumer group's acknowledged commits survive a SIGKILL of its coordinator. On four nodes
with RF=3, a node without a replica of a partition names its leader (Kafka Metadata and the
HTTP API), and GET /api/cluster lists the nodes. A fourth node joins three with --join, takes
a replica and is removed again (HTTP API and `sluice cluster remove-node`). The HTTP API's
produce works on every node, whichever node leads each partition."""

import json
import os
import subprocess
import threading
import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from conftest import free_port, sluice_bin, start_static_cluster

TOPIC = "replicated"
PARTITIONS = 3
HEAL_TIMEOUT_S = 45
# Answers a client gets while its view of partition leadership is behind an election.
# librdkafka's admin API reports a partition whose Metadata names no leader yet (leader -1,
# as Kafka answers mid-election) as _NOENT "No leaders found" (seen in CI on DeleteRecords).
LEADERSHIP_MOVED = {KafkaError.FENCED_LEADER_EPOCH, KafkaError.UNKNOWN_LEADER_EPOCH,
                    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                    KafkaError._NOENT}


def retry_while_leadership_moves(call):
    """call()'s result, retried while the client's view of partition leadership is behind an
    election: right after one the broker answers NOT_LEADER_FOR_PARTITION or FENCED_LEADER_EPOCH
    (as Kafka does) and librdkafka's admin API does not retry either. `call` should use a new
    admin client each time: an old one may keep its stale leader epochs (seen in CI: 45 s of
    FENCED_LEADER_EPOCH)."""
    deadline = time.monotonic() + HEAL_TIMEOUT_S
    while True:
        try:
            return call()
        except KafkaException as error:
            if error.args[0].code() not in LEADERSHIP_MOVED or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def http_post_while_coordinator_moves(node, path, body):
    """http_post, retried while the answer is 503 `not_ready` (the group coordinator moved with
    the metadata leadership, which the API asks the caller to retry)."""
    deadline = time.monotonic() + HEAL_TIMEOUT_S
    while True:
        status, answer = http_post(node, path, body)
        if status != 503 or time.monotonic() > deadline:
            return status, answer
        time.sleep(0.5)


def start_cluster(broker_factory, size=3):
    nodes, _ = start_static_cluster(broker_factory, size)
    return nodes


def partition_views(bootstrap):
    """{partition: (leader, replicas, isr)} as one broker reports them."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    metadata = admin.list_topics(TOPIC, timeout=5)
    topic = metadata.topics[TOPIC]
    if topic.error is not None:
        return {}
    return {p.id: (p.leader, sorted(p.replicas), sorted(p.isrs)) for p in topic.partitions.values()}


def wait_for_agreement(nodes, timeout_s):
    """Every node reports the same live leader for every partition, and the leader's own
    report has ISR == replicas. Returns {partition: leader}."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            views = [partition_views(n.bootstrap) for n in nodes]
            leaders = [{p: v[0] for p, v in view.items()} for view in views]
            if (len(views[0]) == PARTITIONS and all(l == leaders[0] for l in leaders)
                    and all(leader > 0 for leader in leaders[0].values())):
                by_id = {i + 1: view for i, view in enumerate(views)}
                if all(by_id[leader][p][2] == by_id[leader][p][1] == [1, 2, 3]
                       for p, leader in leaders[0].items()):
                    return leaders[0]
            last = views
        except KafkaException as error:
            last = error
        time.sleep(0.2)
    pytest.fail(f"the nodes did not agree on leaders with full ISRs in {timeout_s}s: {last}")


def test_cluster_survives_a_leader_kill_without_losing_acknowledged_records(broker_factory):
    nodes = start_cluster(broker_factory)
    bootstrap = ",".join(n.bootstrap for n in nodes)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(TOPIC, PARTITIONS, 3)]).values():
        future.result(timeout=30)
    # Replication factor larger than the cluster is refused, as Kafka does.
    too_many = admin.create_topics([NewTopic("too-many", 1, 4)])["too-many"]
    with pytest.raises(KafkaException, match="INVALID_REPLICATION_FACTOR"):
        too_many.result(timeout=30)
    leaders = wait_for_agreement(nodes, HEAL_TIMEOUT_S)

    acknowledged = {}  # value -> (partition, offset)
    failures = []
    lock = threading.Lock()

    def delivered(error, message):
        with lock:
            if error is not None:
                failures.append(str(error))
            else:
                acknowledged[message.value().decode()] = (message.partition(), message.offset())

    producer = Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "message.timeout.ms": 60000,
        "topic.metadata.refresh.interval.ms": 1000,
    })
    stop = threading.Event()
    sent = [0]

    def produce_until_stopped():
        while not stop.is_set():
            producer.produce(TOPIC, value=f"m{sent[0]}".encode(), on_delivery=delivered)
            sent[0] += 1
            producer.poll(0)
            time.sleep(0.002)

    thread = threading.Thread(target=produce_until_stopped)
    thread.start()
    try:
        time.sleep(2)
        victim_id = leaders[0]
        victim = nodes[victim_id - 1]
        with lock:
            before_kill = len(acknowledged)
        victim.kill9()
        time.sleep(5)
        with lock:
            during_outage = len(acknowledged) - before_kill
        victim.start()
        time.sleep(3)
    finally:
        stop.set()
        thread.join()
    assert producer.flush(60) == 0, "messages still unacknowledged after 60 s"
    assert not failures, f"delivery failures: {failures[:5]}"
    assert before_kill > 0 and during_outage > 0, (before_kill, during_outage)
    assert len(acknowledged) == sent[0]

    wait_for_agreement(nodes, HEAL_TIMEOUT_S)

    # Read everything back from the leaders: each acknowledged value exactly once, at its
    # acknowledged offset.
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "cluster-check",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    seen = {}
    duplicates = []
    try:
        consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])
        deadline = time.monotonic() + 60
        while len(seen) < len(acknowledged) and time.monotonic() < deadline:
            message = consumer.poll(1)
            if message is None or message.error():
                continue
            value = message.value().decode()
            if value in seen:
                duplicates.append(value)
            seen[value] = (message.partition(), message.offset())
    finally:
        consumer.close()
    missing = [v for v in acknowledged if v not in seen]
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {missing[:5]}"
    assert not duplicates, f"records written twice: {duplicates[:5]}"
    moved = {v: (acknowledged[v], seen[v]) for v in acknowledged if acknowledged[v] != seen[v]}
    assert not moved, f"records not at their acknowledged offsets: {list(moved.items())[:5]}"


def test_topic_configs_and_offsets_for_leader_epoch_through_the_cluster(broker_factory):
    from confluent_kafka.admin import ConfigResource

    nodes = start_cluster(broker_factory)
    bootstrap = ",".join(n.bootstrap for n in nodes)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(TOPIC, PARTITIONS, 3, config={"retention.ms": "3600000"})])[
        TOPIC].result(timeout=30)
    resource = ConfigResource(ConfigResource.Type.TOPIC, TOPIC, set_config={
        "retention.ms": "7200000", "min.insync.replicas": "2"})
    admin.alter_configs([resource])[resource].result(timeout=30)
    # Every node answers from the metadata group.
    deadline = time.monotonic() + 10
    for node in nodes:
        node_admin = AdminClient({"bootstrap.servers": node.bootstrap})
        while True:
            described = node_admin.describe_configs(
                [ConfigResource(ConfigResource.Type.TOPIC, TOPIC)])
            configs = list(described.values())[0].result(timeout=10)
            if configs["retention.ms"].value == "7200000" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert configs["retention.ms"].value == "7200000"
        assert configs["min.insync.replicas"].value == "2"
    wait_for_agreement(nodes, HEAL_TIMEOUT_S)
    # A consumer validating its position after a leader change asks OffsetForLeaderEpoch;
    # librdkafka does that on every assign with a known epoch, so a full read proves the API
    # answers.
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "enable.idempotence": True})
    for i in range(30):
        producer.produce(TOPIC, value=f"v{i}".encode(), partition=i % PARTITIONS)
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "epochs",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 30 and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                got.append(message.value())
                assert message.leader_epoch() is not None and message.leader_epoch() >= 1
        assert len(got) == 30
    finally:
        consumer.close()


def agreed_controller(nodes, timeout_s, exclude=()):
    """The node every live node names as controller (the metadata leader, which coordinates
    every consumer group)."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            views = [AdminClient({"bootstrap.servers": n.bootstrap}).list_topics(timeout=5).controller_id
                     for i, n in enumerate(nodes) if i + 1 not in exclude]
            if views and all(v == views[0] for v in views) and views[0] > 0 \
                    and views[0] not in exclude:
                return views[0]
            last = views
        except KafkaException as error:
            last = error
        time.sleep(0.2)
    pytest.fail(f"the nodes did not agree on a controller in {timeout_s}s: {last}")


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_group_resumes_from_its_commits_after_the_coordinator_is_killed(broker_factory,
                                                                         protocol):
    """Both rebalance protocols: the classic one and KIP-848's (group.protocol=consumer),
    whose coordinator moves with the metadata leader as the classic one does."""
    group = "resumers"
    total = 300
    nodes = start_cluster(broker_factory)
    bootstrap = ",".join(n.bootstrap for n in nodes)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(TOPIC, PARTITIONS, 3)])[TOPIC].result(timeout=30)
    wait_for_agreement(nodes, HEAL_TIMEOUT_S)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "enable.idempotence": True})
    for i in range(total):
        producer.produce(TOPIC, value=f"v{i}".encode(), partition=i % PARTITIONS)
    assert producer.flush(30) == 0

    consumer_config = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "topic.metadata.refresh.interval.ms": 1000,
    }
    if protocol == "consumer":
        # The coordinator decides session and heartbeat timing in this protocol.
        consumer_config["group.protocol"] = "consumer"
    else:
        consumer_config["session.timeout.ms"] = 6000
    # The first member processes half and commits synchronously: every acknowledged commit
    # is recorded, per partition the next offset to process.
    acknowledged = {}
    processed = set()
    first = Consumer(consumer_config)
    try:
        first.subscribe([TOPIC])
        deadline = time.monotonic() + 60
        while len(processed) < total // 2 and time.monotonic() < deadline:
            message = first.poll(0.5)
            if message is None or message.error():
                continue
            processed.add(message.value().decode())
            if len(processed) % 10 == 0:
                for tp in first.commit(asynchronous=False):
                    assert tp.error is None, tp.error
                    if tp.offset < 0:
                        continue  # assigned, nothing consumed yet
                    assert tp.offset >= acknowledged.get(tp.partition, 0), "commit went back"
                    acknowledged[tp.partition] = tp.offset
        assert len(processed) >= total // 2, f"only {len(processed)} consumed"
    finally:
        first.close()
    assert acknowledged, "nothing committed"

    coordinator = agreed_controller(nodes, HEAL_TIMEOUT_S)
    nodes[coordinator - 1].kill9()
    new_coordinator = agreed_controller(nodes, HEAL_TIMEOUT_S, exclude=(coordinator,))
    assert new_coordinator != coordinator

    # The next member of the group finds every acknowledged commit on the new coordinator and
    # starts each partition from there: nothing goes back, nothing is skipped.
    second = Consumer(consumer_config)
    try:
        partitions = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
        deadline = time.monotonic() + 60
        committed = None
        while time.monotonic() < deadline:
            try:
                committed = {tp.partition: tp.offset for tp in second.committed(partitions, timeout=10)}
                break
            except KafkaException:
                time.sleep(0.5)
        assert committed is not None, "OffsetFetch never answered after the failover"
        for partition, offset in acknowledged.items():
            assert committed[partition] == offset, (partition, committed, acknowledged)

        second.subscribe([TOPIC])
        first_offsets = {}
        remaining = set(f"v{i}" for i in range(total)) - processed
        deadline = time.monotonic() + 90
        while remaining and time.monotonic() < deadline:
            message = second.poll(0.5)
            if message is None or message.error():
                continue
            first_offsets.setdefault(message.partition(), message.offset())
            remaining.discard(message.value().decode())
        assert not remaining, f"{len(remaining)} records never processed, e.g. {sorted(remaining)[:5]}"
        # (At or after: Raft's control batches, which clients skip, may sit at the offset.)
        for partition, offset in acknowledged.items():
            assert first_offsets.get(partition, offset) >= offset, \
                (partition, first_offsets, acknowledged)
        for tp in second.commit(asynchronous=False):
            assert tp.error is None, tp.error
            if tp.offset < 0:
                continue
            assert tp.offset >= acknowledged.get(tp.partition, 0), "commit went back"
    finally:
        second.close()


def test_a_live_consumer_protocol_member_rejoins_when_its_coordinator_is_killed(broker_factory):
    """KIP-848 membership lives in the coordinator's memory (as the classic protocol's): when
    the metadata leader that coordinates the group dies, the live member finds the new
    coordinator, is told UNKNOWN_MEMBER_ID, rejoins with epoch 0 and goes on consuming."""
    group = "kip848-failover"
    nodes = start_cluster(broker_factory)
    bootstrap = ",".join(n.bootstrap for n in nodes)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(TOPIC, PARTITIONS, 3)])[TOPIC].result(timeout=30)
    wait_for_agreement(nodes, HEAL_TIMEOUT_S)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "enable.idempotence": True})

    def produce(values):
        for value in values:
            producer.produce(TOPIC, value=value.encode())
        assert producer.flush(30) == 0

    def consume(consumer, wanted, timeout_s=90):
        wanted = set(wanted)
        deadline = time.monotonic() + timeout_s
        while wanted and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            wanted.discard(message.value().decode())
        assert not wanted, f"{len(wanted)} never consumed, e.g. {sorted(wanted)[:5]}"

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "group.protocol": "consumer", "auto.offset.reset": "earliest",
                         "topic.metadata.refresh.interval.ms": 1000})
    try:
        consumer.subscribe([TOPIC])
        before = [f"before-{i}" for i in range(30)]
        produce(before)
        consume(consumer, before)
        coordinator = agreed_controller(nodes, HEAL_TIMEOUT_S)
        nodes[coordinator - 1].kill9()
        agreed_controller(nodes, HEAL_TIMEOUT_S, exclude=(coordinator,))
        live = [n for i, n in enumerate(nodes) if i + 1 != coordinator]
        live_admin = AdminClient({"bootstrap.servers": ",".join(n.bootstrap for n in live)})

        def member_count():
            [described] = live_admin.describe_consumer_groups([group]).values()
            try:
                description = described.result(timeout=10)
            except KafkaException:
                return None  # the new coordinator is still being found
            if str(description.type) != "ConsumerGroupType.CONSUMER":
                return 0  # the new coordinator knows the group by its offsets only
            return len(description.members)

        # The member learns at its next heartbeat (every 5 s) that the new coordinator does
        # not know it, and rejoins.
        deadline = time.monotonic() + 60
        while member_count() != 1:
            assert time.monotonic() < deadline, "the member did not rejoin the new coordinator"
            for _ in range(5):
                consumer.poll(0.2)
        after = [f"after-{i}" for i in range(30)]
        produce(after)
        consume(consumer, after)
    finally:
        consumer.close()


def http_get(node, path):
    """GET on a node's HTTP API as guest (allowed from loopback); the JSON answer."""
    import base64
    import json
    import urllib.request
    request = urllib.request.Request(node.http_url + path, headers={
        "Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def test_every_node_names_every_leader_with_more_nodes_than_replicas(broker_factory):
    """Four nodes, RF=3: each partition has a node without a replica of it, which must still
    name the partition's leader (Kafka Metadata and the HTTP API), as every node agrees."""
    nodes = start_cluster(broker_factory, size=4)
    bootstrap = ",".join(n.bootstrap for n in nodes)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(TOPIC, PARTITIONS, 3)]).values():
        future.result(timeout=30)

    deadline = time.monotonic() + HEAL_TIMEOUT_S
    last = None
    while time.monotonic() < deadline:
        try:
            views = [partition_views(n.bootstrap) for n in nodes]
            leaders = [{p: v[0] for p, v in view.items()} for view in views]
            if (len(views[0]) == PARTITIONS and all(l == leaders[0] for l in leaders)
                    and all(leader > 0 for leader in leaders[0].values())):
                break
            last = views
        except KafkaException as error:
            last = error
        time.sleep(0.2)
    else:
        pytest.fail(f"the nodes did not agree on leaders in {HEAL_TIMEOUT_S}s: {last}")
    leaders = leaders[0]
    # Three replicas of each partition on four nodes: some node holds none of it.
    assert all(len(v[1]) == 3 for v in views[0].values()), views[0]

    # The HTTP API: the same leaders, with epochs and replicas, from every node. A partition may
    # elect again right after its creation (its leader then shows the new epoch a moment before a
    # node without a replica learns it), so read until every node shows the same leader and epoch.
    def http_partition_views():
        return [{p["partition"]: p for p in http_get(n, f"/api/topics/{TOPIC}/partitions")}
                for n in nodes]

    def leadership(view):
        return {p: (v["leader"], v["leader_epoch"]) for p, v in view.items()}

    deadline = time.monotonic() + HEAL_TIMEOUT_S
    while True:
        http_views = http_partition_views()
        if (all(leadership(view) == leadership(http_views[0]) for view in http_views)
                and all(leader > 0 for leader, _ in leadership(http_views[0]).values())):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"the nodes' HTTP views did not agree in {HEAL_TIMEOUT_S}s: {http_views}")
        time.sleep(0.2)
    leaders = {p: v["leader"] for p, v in http_views[0].items()}
    for view in http_views:
        assert all(v["leader_epoch"] > 0 and len(v["replicas"]) == 3 for v in view.values())
    outsiders = [(i, p) for i, view in enumerate(http_views) for p, v in view.items()
                 if i + 1 not in v["replicas"]]
    assert outsiders, http_views
    for i, p in outsiders:
        assert http_views[i][p]["log_end_offset"] == -1  # no replica there
        assert http_views[i][p]["leader_epoch"] == http_views[leaders[p] - 1][p]["leader_epoch"]

    clusters = [http_get(n, "/api/cluster") for n in nodes]
    for i, cluster in enumerate(clusters):
        assert cluster["clustered"] is True and cluster["node_id"] == i + 1
        assert sorted(node["node_id"] for node in cluster["nodes"]) == [1, 2, 3, 4]
        assert [node["node_id"] for node in cluster["nodes"] if node["is_self"]] == [i + 1]
        assert cluster["metadata_leader"] in (1, 2, 3, 4)
        by_id = {node["node_id"]: node for node in cluster["nodes"]}
        assert by_id[i + 1]["kafka_address"] == nodes[i].bootstrap
        # Every pair of nodes keeps a transport connection.
        assert all(node["connected"] for node in cluster["nodes"]), cluster


def alter_disallowing_replication_factor_change(kafka_admin, reassignments):
    """AlterPartitionReassignments v1 with allow_replication_factor_change=False, sent with
    kafka-python's own request class and admin connection (its admin method leaves the field at
    its default, true). {TopicPartition: error class or None}."""
    import kafka.errors as errors
    from kafka import TopicPartition as KafkaTopicPartition
    from kafka.protocol.admin import AlterPartitionReassignmentsRequest

    request = AlterPartitionReassignmentsRequest(
        timeout_ms=30_000, allow_replication_factor_change=False,
        topics=kafka_admin._process_alter_partition_reassignments_input(reassignments))

    def top_level_error(response):
        yield errors.for_code(response.error_code)
    response = kafka_admin._manager.run(
        kafka_admin._send_request_to_controller, request, top_level_error)
    assert response.allow_replication_factor_change is False, response
    results = {}
    for topic in response.responses:
        for partition in topic.partitions:
            error = errors.for_code(partition.error_code)
            results[KafkaTopicPartition(topic.name, partition.partition_index)] = \
                None if error is errors.NoError else error
    return results


def test_partition_reassignment_with_kafka_python_admin(broker_factory):
    """AlterPartitionReassignments from kafka-python's admin client moves an RF=3 partition
    on a 4-node cluster to another node set while confluent-kafka produces acks=all;
    ListPartitionReassignments shows the move until it is done; the node that left is killed
    and every acknowledged record is read back from the new replicas."""
    from kafka import KafkaAdminClient
    from kafka import TopicPartition as KafkaTopicPartition
    from kafka.errors import (InvalidReplicationAssignmentError, InvalidReplicationFactorError,
                              UnknownTopicOrPartitionError)

    topic = "moved"
    nodes = start_cluster(broker_factory, size=4)
    bootstrap = ",".join(n.bootstrap for n in nodes)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 3)])[topic].result(timeout=30)
    # Only the partition's replicas know its leader: ask every node.
    node_admins = [AdminClient({"bootstrap.servers": n.bootstrap}) for n in nodes]
    deadline = time.monotonic() + 30
    partition = None
    while partition is None:
        for node_admin in node_admins:
            found = node_admin.list_topics(topic, timeout=5).topics[topic].partitions.get(0)
            if found is not None and found.leader > 0:
                partition = found
        assert partition is not None or time.monotonic() < deadline, "no leader for the topic"
        time.sleep(0.2)
    original = list(partition.replicas)
    leaving = original[0]
    joining = next(n for n in range(1, 5) if n not in original)
    target = original[1:] + [joining]

    stop = threading.Event()
    acknowledged = []
    lock = threading.Lock()

    def delivered(error, message):
        if error is None:
            with lock:
                acknowledged.append((message.offset(), message.value()))

    def produce_until_stopped():
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                             "enable.idempotence": True, "linger.ms": 5})
        i = 0
        while not stop.is_set():
            producer.produce(topic, value=f"r{i}".encode(), partition=0, on_delivery=delivered)
            producer.poll(0)
            i += 1
            time.sleep(0.002)
        assert producer.flush(60) == 0

    thread = threading.Thread(target=produce_until_stopped)
    thread.start()
    kafka_admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        time.sleep(1)
        tp = KafkaTopicPartition(topic, 0)
        refused = kafka_admin.alter_partition_reassignments({
            tp: [original[0], original[1], 9]})
        assert refused[tp] is InvalidReplicationAssignmentError, refused
        refused = kafka_admin.alter_partition_reassignments({tp: [2, 2, 3]})
        assert refused[tp] is InvalidReplicationAssignmentError, refused
        unknown = KafkaTopicPartition(topic, 7)
        refused = kafka_admin.alter_partition_reassignments({unknown: target})
        assert refused[unknown] is UnknownTopicOrPartitionError, refused
        # KIP-860 (v1): a move that would change the replica count is refused when the request
        # disallows it (kafka-reassign-partitions --disallow-replication-factor-change).
        refused = alter_disallowing_replication_factor_change(
            kafka_admin, {tp: original + [joining]})
        assert refused == {tp: InvalidReplicationFactorError}, refused

        accepted = kafka_admin.alter_partition_reassignments({tp: target})
        assert accepted[tp] is None, accepted
        deadline = time.monotonic() + 60
        seen_listed = None
        while True:
            ongoing = kafka_admin.list_partition_reassignments()
            if tp in ongoing:
                seen_listed = ongoing[tp]
            replicas = admin.list_topics(topic, timeout=5).topics[topic].partitions[0].replicas
            if not ongoing and sorted(replicas) == sorted(target):
                break
            assert time.monotonic() < deadline, f"reassignment did not finish: {ongoing} {replicas}"
            time.sleep(0.05)
        if seen_listed is not None:
            assert seen_listed["adding_replicas"] == [joining], seen_listed
            assert seen_listed["removing_replicas"] == [leaving], seen_listed
        time.sleep(1)
    finally:
        stop.set()
        thread.join()
        kafka_admin.close()
    assert len(acknowledged) > 50, len(acknowledged)
    print(f"moved {original} -> {target}; {len(acknowledged)} records acknowledged; "
          f"listed while in progress: {seen_listed}")

    nodes[leaving - 1].kill9()
    remaining = ",".join(nodes[n - 1].bootstrap for n in target)
    consumer = Consumer({"bootstrap.servers": remaining, "group.id": "moved-reader",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        got = {}
        wanted = dict(acknowledged)
        deadline = time.monotonic() + 60
        while not all(offset in got for offset in wanted) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                got[message.offset()] = message.value()
        missing = [offset for offset in wanted if got.get(offset) != wanted[offset]]
        assert not missing, f"{len(missing)} acknowledged records missing, first {missing[:5]}"
    finally:
        consumer.close()


def http_delete(node, path):
    """DELETE on a node's HTTP API as guest; (status, JSON body or None)."""
    import base64
    import json
    import urllib.error
    import urllib.request
    request = urllib.request.Request(node.http_url + path, method="DELETE", headers={
        "Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def wait_for_replicas(admin, topic, wanted, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while True:
        partition = admin.list_topics(topic, timeout=5).topics[topic].partitions.get(0)
        if partition is not None and sorted(partition.replicas) == sorted(wanted):
            return
        assert time.monotonic() < deadline, f"replicas never became {wanted}: {partition}"
        time.sleep(0.1)


def test_a_node_joins_with_join_takes_a_replica_and_is_removed(broker_factory, tmp_path):
    """Three nodes started with --peers; a fourth started with --join (a member's cluster
    address) joins: Kafka Metadata lists four brokers from every node, kafka-python's admin
    moves a replica onto it, and acks=all records are produced and read back through it. A
    process asking to join with id 4 from another address is refused and exits. The HTTP API
    refuses to remove node 4 while it hosts the replica (409), removes it once the replica is
    moved back, and every remaining node then lists three brokers."""
    from kafka import KafkaAdminClient
    from kafka import TopicPartition as KafkaTopicPartition

    topic = "grown"
    nodes, cluster_ports = start_static_cluster(broker_factory)
    admin = AdminClient({"bootstrap.servers": ",".join(n.bootstrap for n in nodes)})
    # Created before the join, so its replicas are on nodes 1-3.
    admin.create_topics([NewTopic(topic, 1, 3)])[topic].result(timeout=30)

    join = ",".join(f"127.0.0.1:{port}" for port in reversed(cluster_ports))
    fourth_port = free_port()
    fourth = broker_factory("--node-id", 4, "--cluster-listen", f"127.0.0.1:{fourth_port}",
                            "--join", join, "--default-replication-factor", 3)
    nodes.append(fourth)
    deadline = time.monotonic() + 30
    while True:
        seen = [sorted(AdminClient({"bootstrap.servers": n.bootstrap})
                       .list_topics(timeout=5).brokers) for n in nodes]
        if all(s == [1, 2, 3, 4] for s in seen):
            break
        assert time.monotonic() < deadline, f"not every node lists four brokers: {seen}"
        time.sleep(0.2)
    by_id = {b.id: f"{b.host}:{b.port}" for b in admin.list_topics(timeout=5).brokers.values()}
    assert by_id[4] == fourth.bootstrap, by_id
    assert sorted(n["node_id"] for n in http_get(fourth, "/api/cluster")["nodes"]) == [1, 2, 3, 4]

    # The fifth process (data dir broker4) exits during startup with the refusal.
    with pytest.raises(pytest.fail.Exception, match="exited with 1 during startup"):
        broker_factory("--node-id", 4, "--cluster-listen", f"127.0.0.1:{free_port()}",
                       "--join", f"127.0.0.1:{cluster_ports[0]}")
    refused_log = (tmp_path / "broker4" / "sluice.log").read_text(errors="replace")
    assert "node id 4 is already used by the node at" in refused_log, refused_log[-2000:]

    original = sorted(admin.list_topics(topic, timeout=5).topics[topic].partitions[0].replicas)
    assert 4 not in original, original
    target = original[1:] + [4]
    tp = KafkaTopicPartition(topic, 0)
    kafka_admin = KafkaAdminClient(bootstrap_servers=fourth.bootstrap)
    try:
        assert kafka_admin.alter_partition_reassignments({tp: target})[tp] is None
        wait_for_replicas(admin, topic, target)
    finally:
        kafka_admin.close()

    producer = Producer({"bootstrap.servers": fourth.bootstrap, "acks": "all",
                         "enable.idempotence": True})
    acknowledged = []
    for i in range(200):
        producer.produce(topic, value=f"j{i}".encode(), partition=0,
                         on_delivery=lambda e, m: e is None and acknowledged.append(m.value()))
    assert producer.flush(30) == 0
    assert len(acknowledged) == 200, len(acknowledged)
    consumer = Consumer({"bootstrap.servers": fourth.bootstrap, "group.id": "grown-reader",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 200 and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                got.append(message.value())
        assert got == [f"j{i}".encode() for i in range(200)], got[:5]
    finally:
        consumer.close()
    # Node 4 holds the records itself: its HTTP API reports its replica's log end.
    partitions = http_get(fourth, f"/api/topics/{topic}/partitions")
    assert partitions[0]["log_end_offset"] >= 200, partitions

    status, body = http_delete(nodes[0], "/api/cluster/nodes/4")
    assert status == 409 and f"{topic}-0" in body["reason"], (status, body)
    kafka_admin = KafkaAdminClient(bootstrap_servers=nodes[0].bootstrap)
    try:
        assert kafka_admin.alter_partition_reassignments({tp: original})[tp] is None
        wait_for_replicas(admin, topic, original)
    finally:
        kafka_admin.close()
    # The CLI: `sluice cluster remove-node` (DELETE /api/cluster/nodes/4) on another node.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env["HOME"] = str(tmp_path)
    removed = subprocess.run(
        [str(sluice_bin()), "cluster", "remove-node", "--node-id", "4", "--url", nodes[1].http_url],
        capture_output=True, env=env, timeout=90)
    assert removed.returncode == 0, removed
    assert b"removed node 4" in removed.stdout, removed
    deadline = time.monotonic() + 10
    while True:  # node 3 applies the removal within a heartbeat or so
        listed = subprocess.run(
            [str(sluice_bin()), "cluster", "nodes", "--url", nodes[2].http_url, "--json"],
            capture_output=True, env=env, timeout=30)
        ids = sorted(n["node_id"] for n in json.loads(listed.stdout)["nodes"])
        if ids == [1, 2, 3]:
            break
        assert time.monotonic() < deadline, listed
        time.sleep(0.1)
    status, body = http_delete(nodes[0], "/api/cluster/nodes/4")
    assert status == 404, (status, body)
    fourth.terminate()
    deadline = time.monotonic() + 30
    while True:
        seen = [sorted(AdminClient({"bootstrap.servers": n.bootstrap})
                       .list_topics(timeout=5).brokers) for n in nodes[:3]]
        if all(s == [1, 2, 3] for s in seen):
            break
        assert time.monotonic() < deadline, f"node 4 still listed: {seen}"
        time.sleep(0.2)
    # The three go on: a new RF=3 topic is created and written.
    admin.create_topics([NewTopic("after-removal", 1, 3)])["after-removal"].result(timeout=30)
    producer = Producer({"bootstrap.servers": nodes[0].bootstrap, "acks": "all"})
    producer.produce("after-removal", value=b"still here")
    assert producer.flush(30) == 0

    # As the README says: with an empty data directory the removed node joins again, under
    # its old id, and takes a replica.
    again = broker_factory("--node-id", 4, "--cluster-listen", f"127.0.0.1:{free_port()}",
                           "--join", join, "--default-replication-factor", 3)
    deadline = time.monotonic() + 30
    while True:
        seen = [sorted(AdminClient({"bootstrap.servers": n.bootstrap})
                       .list_topics(timeout=5).brokers) for n in nodes[:3] + [again]]
        if all(s == [1, 2, 3, 4] for s in seen):
            break
        assert time.monotonic() < deadline, f"node 4 did not join again: {seen}"
        time.sleep(0.2)
    kafka_admin = KafkaAdminClient(bootstrap_servers=nodes[0].bootstrap)
    try:
        back = KafkaTopicPartition("after-removal", 0)
        assert kafka_admin.alter_partition_reassignments({back: [4, 2, 3]})[back] is None
        wait_for_replicas(admin, "after-removal", [4, 2, 3])
    finally:
        kafka_admin.close()
    producer.produce("after-removal", value=b"on node 4 too")
    assert producer.flush(30) == 0
    assert http_get(again, "/api/topics/after-removal/partitions")[0]["log_end_offset"] >= 2


def test_a_removed_node_restarted_with_its_old_data_and_join_is_a_member_again(broker_factory):
    """A node removed while running keeps a membership that still lists it as a voter; the
    others refuse it. Restarted with --join and its old data directory, it asks to join, is
    added back (as a learner, then a voter) and is listed by every node again."""
    nodes, cluster_ports = start_static_cluster(broker_factory)
    join = ",".join(f"127.0.0.1:{port}" for port in cluster_ports)
    fourth = broker_factory("--node-id", 4, "--cluster-listen", f"127.0.0.1:{free_port()}",
                            "--join", join)

    def brokers_seen():
        return [sorted(AdminClient({"bootstrap.servers": n.bootstrap}).list_topics(timeout=5)
                       .brokers) for n in nodes + [fourth]]

    def wait_for(wanted, what):
        deadline = time.monotonic() + 30
        while (seen := brokers_seen()) != wanted:
            assert time.monotonic() < deadline, f"{what}: {seen}"
            time.sleep(0.2)

    wait_for([[1, 2, 3, 4]] * 4, "node 4 did not join")
    status, body = http_delete(nodes[0], "/api/cluster/nodes/4")
    assert status in (200, 204), (status, body)
    deadline = time.monotonic() + 10
    while any(sorted(n["node_id"] for n in http_get(node, "/api/cluster")["nodes"]) != [1, 2, 3]
              for node in nodes):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    fourth.terminate()
    fourth.start()  # the same data directory and flags, --join included
    wait_for([[1, 2, 3, 4]] * 4, "node 4 is not a member again")
    admin = AdminClient({"bootstrap.servers": nodes[0].bootstrap})
    create_topic_with_leaders(admin, "after-rejoin", 4)
    producer = Producer({"bootstrap.servers": nodes[0].bootstrap, "acks": "all"})
    for partition in range(4):
        producer.produce("after-rejoin", value=b"x", partition=partition)
    assert producer.flush(30) == 0
    replicas = admin.list_topics("after-rejoin", timeout=5).topics["after-rejoin"].partitions
    assert any(4 in p.replicas for p in replicas.values()), replicas


def create_topic_with_leaders(admin, topic, partitions):
    """Creates an RF=3 topic and waits until every partition has a leader; its metadata."""
    for future in admin.create_topics([NewTopic(topic, partitions, 3)]).values():
        future.result(timeout=30)
    deadline = time.monotonic() + HEAL_TIMEOUT_S
    while True:
        metadata = admin.list_topics(topic, timeout=5).topics[topic]
        if (metadata.error is None and len(metadata.partitions) == partitions
                and all(p.leader > 0 for p in metadata.partitions.values())):
            return metadata
        assert time.monotonic() < deadline, f"no leaders for {topic}: {metadata}"
        time.sleep(0.2)


def http_post(node, path, body):
    """POST of a JSON body on a node's HTTP API as guest; (status, JSON answer)."""
    import base64
    import urllib.error
    import urllib.request
    request = urllib.request.Request(
        node.http_url + path, method="POST", data=json.dumps(body).encode(),
        headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode(),
                 "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def test_http_produce_on_any_node_goes_through_each_partitions_leader(broker_factory):
    """Four nodes, RF=3: POST /api/topics/{t}/messages on every node (leader, follower or no
    replica at all of each partition) stores the messages in the replicated partitions, at
    the offsets the answer gives, where a Kafka consumer reads them."""
    topic = "http-produced"
    nodes = start_cluster(broker_factory, size=4)
    bootstrap = ",".join(n.bootstrap for n in nodes)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    metadata = create_topic_with_leaders(admin, topic, PARTITIONS)

    produced = {}  # (partition, offset) -> value
    for i, node in enumerate(nodes):
        messages = [{"partition": p, "value": f"node{i + 1}-p{p}"} for p in range(PARTITIONS)]
        messages += [{"key": f"key-{k}", "value": f"node{i + 1}-key{k}"} for k in range(6)]
        status, answer = http_post(node, f"/api/topics/{topic}/messages", {"messages": messages})
        assert status == 200, answer
        for message, placed in zip(messages, answer["offsets"]):
            assert placed["offset"] >= 0, answer
            if "partition" in message:
                assert placed["partition"] == message["partition"]
            produced[(placed["partition"], placed["offset"])] = message["value"].encode()
    assert len(produced) == len(nodes) * (PARTITIONS + 6)

    status, answer = http_post(nodes[0], f"/api/topics/{topic}/messages",
                               {"messages": [{"partition": PARTITIONS, "value": "nowhere"}]})
    assert status == 404, answer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "http-produce-check",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        got = {}
        deadline = time.monotonic() + 30
        while len(got) < len(produced) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            got[(message.partition(), message.offset())] = message.value()
        assert got == produced
    finally:
        consumer.close()


def test_delete_records_moves_the_low_watermark_on_every_replica(broker_factory):
    """DeleteRecords through confluent-kafka's AdminClient on an RF=3 topic: the records below
    the offset are gone, an offset past the high watermark is OFFSET_OUT_OF_RANGE, and after
    the leader is killed the new leader (another replica) has the same low watermark."""
    topic = "trimmed"
    nodes = start_cluster(broker_factory)
    bootstrap = ",".join(n.bootstrap for n in nodes)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    create_topic_with_leaders(admin, topic, 1)

    offsets = []
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for i in range(10):
        producer.produce(topic, value=f"m{i}".encode(),
                         on_delivery=lambda error, message: offsets.append(
                             (error, message.offset())))
        producer.flush(30)
    assert [error for error, _ in offsets] == [None] * 10
    offsets = [offset for _, offset in offsets]

    def delete_records(offset):
        admin = AdminClient({"bootstrap.servers": bootstrap})
        deleted = admin.delete_records([TopicPartition(topic, 0, offset)])
        return next(iter(deleted.values())).result(timeout=30)

    low_watermark = retry_while_leadership_moves(lambda: delete_records(offsets[4])).low_watermark
    assert low_watermark == offsets[4]
    with pytest.raises(KafkaException, match="OFFSET_OUT_OF_RANGE"):
        retry_while_leadership_moves(lambda: delete_records(offsets[-1] + 100))

    def first_value():
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "trim-check",
                             "enable.auto.commit": False, "auto.offset.reset": "earliest"})
        try:
            consumer.assign([TopicPartition(topic, 0, -2)])  # OFFSET_BEGINNING
            deadline = time.monotonic() + HEAL_TIMEOUT_S
            while time.monotonic() < deadline:
                message = consumer.poll(1)
                if message is not None and not message.error():
                    low, _ = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=5)
                    return message.value().decode(), message.offset(), low
            pytest.fail("nothing to consume")
        finally:
            consumer.close()

    assert first_value() == ("m4", offsets[4], offsets[4])

    leader = admin.list_topics(topic, timeout=5).topics[topic].partitions[0].leader
    nodes[leader - 1].kill9()
    deadline = time.monotonic() + HEAL_TIMEOUT_S
    partition = None
    while True:
        try:
            partition = admin.list_topics(topic, timeout=5).topics[topic].partitions[0]
            if partition.leader > 0 and partition.leader != leader:
                break
        except KafkaException:
            # librdkafka may still be asking the killed node (seen in CI: TIMED_OUT).
            pass
        assert time.monotonic() < deadline, f"no new leader: {partition}"
        time.sleep(0.2)
    # The new leader applied the same DeleteRecords entry.
    assert first_value() == ("m4", offsets[4], offsets[4])
    nodes[leader - 1].start()


def test_http_messages_and_groups_on_every_node_of_a_cluster(broker_factory):
    """Four nodes, RF=3: every node's HTTP API browses a replicated topic's messages (by offset
    and by key) from the replicas it holds, names the partitions it holds none of, and lists a
    consumer group with its committed offsets and lag (committed offsets are replicated to
    every node)."""
    topic, group = "browsed", "browsers"
    nodes = start_cluster(broker_factory, size=4)
    bootstrap = ",".join(n.bootstrap for n in nodes)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    metadata = create_topic_with_leaders(admin, topic, PARTITIONS)
    replicas = {p.id: set(p.replicas) for p in metadata.partitions.values()}

    produced = {}  # value -> (partition, offset)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})

    def delivered(error, message):
        assert error is None, error
        produced[message.value().decode()] = (message.partition(), message.offset())

    for i in range(30):
        producer.produce(topic, key=f"key-{i}".encode(), value=f"value-{i}".encode(),
                         partition=i % PARTITIONS, on_delivery=delivered)
    assert producer.flush(30) == 0
    committed = {p: max(o for (q, o) in produced.values() if q == p) for p in range(PARTITIONS)}
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False})
    try:
        for tp in consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in committed.items()],
                                  asynchronous=False):
            assert tp.error is None, tp.error
    finally:
        consumer.close()

    for i, node in enumerate(nodes):
        node_id = i + 1
        here = sorted(p for p, r in replicas.items() if node_id in r)
        elsewhere = sorted(p for p, r in replicas.items() if node_id not in r)
        wanted = {v: po for v, po in produced.items() if po[0] in here}
        deadline = time.monotonic() + HEAL_TIMEOUT_S
        while True:  # a follower applies the last commits at its next heartbeat
            answer = http_get(node, f"/api/topics/{topic}/messages?limit=1000")
            seen = {m["value"]["text"]: (m["partition"], m["offset"]) for m in answer["messages"]}
            if seen == wanted:
                break
            assert time.monotonic() < deadline, (node_id, seen, wanted)
            time.sleep(0.2)
        assert answer.get("partitions_elsewhere", []) == elsewhere, (node_id, answer)
        assert sorted(p["partition"] for p in answer["positions"]) == here

        by_key = http_get(node, f"/api/topics/{topic}/messages?key=key-4")["messages"]
        if produced["value-4"][0] in here:
            assert [(m["partition"], m["offset"]) for m in by_key] == [produced["value-4"]]
        else:
            assert by_key == []

        deadline = time.monotonic() + HEAL_TIMEOUT_S
        while group not in [g["group_id"] for g in http_get(node, "/api/groups")]:
            assert time.monotonic() < deadline, f"node {node_id} does not list {group}"
            time.sleep(0.2)
        detail = http_get(node, f"/api/groups/{group}")
        offsets = {o["partition"]: o for o in detail["offsets"]}
        assert {p: o["committed_offset"] for p, o in offsets.items()} == committed, detail
        for p in here:  # the replica here knows the end: lag from the last message
            assert offsets[p]["high_watermark"] > committed[p]
            assert offsets[p]["lag"] == offsets[p]["high_watermark"] - committed[p]
        for p in elsewhere:
            assert offsets[p]["lag"] is None


def test_http_reset_offsets_and_delete_group_on_every_node_of_a_cluster(broker_factory):
    """Four nodes, RF=3: POST /api/groups/{g}/reset-offsets works on every node, whether it
    coordinates the group (the metadata leader) or forwards to the coordinator, and whether it
    leads, follows or holds no replica of each partition; every strategy gives the offsets
    Kafka's reset tool would. A group with a live member is refused with 409 everywhere, and
    DELETE /api/groups/{g} through a node that does not coordinate removes the group's
    offsets on every node."""
    topic, group = "reset", "resetters"
    nodes = start_cluster(broker_factory, size=4)
    bootstrap = ",".join(n.bootstrap for n in nodes)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    create_topic_with_leaders(admin, topic, PARTITIONS)

    base_ms = int(time.time() * 1000) - 100_000
    produced = []  # (partition, offset, timestamp)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})

    def delivered(error, message):
        assert error is None, error
        produced.append((message.partition(), message.offset(), message.timestamp()[1]))

    for i in range(30):
        producer.produce(topic, value=f"v{i}".encode(), partition=i % PARTITIONS,
                         timestamp=base_ms + i * 1000, on_delivery=delivered)
    assert producer.flush(30) == 0
    end = {p: 1 + max(o for q, o, _ in produced if q == p) for p in range(PARTITIONS)}
    cut_ms = base_ms + 15 * 1000 + 500
    at_cut = {p: min((o for q, o, t in produced if q == p and t >= cut_ms), default=end[p])
              for p in range(PARTITIONS)}

    def committed():
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
        try:
            answer = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)],
                                        timeout=30)
            return {tp.partition: tp.offset for tp in answer}
        finally:
            consumer.close()

    controller = agreed_controller(nodes, HEAL_TIMEOUT_S)
    # The coordinator's node first and last: both ways of reaching it, and a group that
    # starts without committed offsets (so the topic must be named).
    order = [controller] + [i + 1 for i in range(len(nodes)) if i + 1 != controller]
    def log_ends():
        # The high watermarks as they are now: a leader elected after the produce appends a
        # control batch of its term, which moves the end past the last record. Right after an
        # election the admin client's leader epochs may be old: the broker answers
        # FENCED_LEADER_EPOCH.
        def list_ends():
            admin = AdminClient({"bootstrap.servers": bootstrap})
            futures = admin.list_offsets(
                {TopicPartition(topic, p): OffsetSpec.latest() for p in range(PARTITIONS)},
                request_timeout=30)
            return {tp.partition: future.result(timeout=30).offset
                    for tp, future in futures.items()}
        return retry_while_leadership_moves(list_ends)

    for node_id in order + [controller]:
        node = nodes[node_id - 1]
        ends = log_ends()
        at_end = None  # the log ends, read again when an election moved them
        strategies = [
            ({"strategy": "latest"}, at_end),
            ({"strategy": "earliest"}, {p: 0 for p in range(PARTITIONS)}),
            ({"strategy": "timestamp", "timestamp_ms": cut_ms}, at_cut),
            ({"strategy": "shift", "shift": -2}, {p: at_cut[p] - 2 for p in range(PARTITIONS)}),
            ({"strategy": "offset", "offset": 10_000}, at_end),  # clamped to the end
        ]
        for body, wanted in strategies:
            status, answer = http_post_while_coordinator_moves(
                node, f"/api/groups/{group}/reset-offsets", {**body, "topic": topic})
            assert status == 200, (node_id, body, answer)
            plan = {p["partition"]: p["new_offset"] for p in answer["partitions"]}
            if wanted is at_end:
                wanted = ends
                if plan != wanted:
                    # A leader elected since `ends` was read appended its term's control
                    # batch (seen in CI): the end the reset used is the one now.
                    ends = log_ends()
                    wanted = ends
            assert plan == wanted, (node_id, body, answer)
            assert committed() == wanted, (node_id, body)
        # Without a topic: the partitions the group has offsets for. A dry run changes nothing.
        status, answer = http_post_while_coordinator_moves(
            node, f"/api/groups/{group}/reset-offsets", {"strategy": "earliest", "dry_run": True})
        assert status == 200, (node_id, answer)
        assert {p["partition"]: p["new_offset"] for p in answer["partitions"]} == \
            {p: 0 for p in range(PARTITIONS)}
        assert committed() == ends

    # A live member: every node refuses, and the offsets stay.
    member = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                       "enable.auto.commit": False, "session.timeout.ms": 6000})
    try:
        member.subscribe([topic])
        deadline = time.monotonic() + HEAL_TIMEOUT_S
        while not member.assignment():
            assert time.monotonic() < deadline, "the member got no assignment"
            member.poll(0.2)
        for node_id, node in enumerate(nodes, start=1):
            status, answer = http_post(node, f"/api/groups/{group}/reset-offsets",
                                       {"strategy": "earliest", "topic": topic})
            assert status == 409, (node_id, answer)
            assert "active members" in answer["reason"], answer
            status, answer = http_delete(node, f"/api/groups/{group}")
            assert status == 409, (node_id, answer)
    finally:
        member.close()
    assert committed() == ends

    elsewhere = next(i + 1 for i in range(len(nodes)) if i + 1 != controller)
    status, answer = http_delete(nodes[elsewhere - 1], f"/api/groups/{group}")
    assert status == 204, answer
    assert committed() == {p: -1001 for p in range(PARTITIONS)}  # OFFSET_INVALID: none
    for node_id, node in enumerate(nodes, start=1):
        deadline = time.monotonic() + HEAL_TIMEOUT_S
        while group in [g["group_id"] for g in http_get(node, "/api/groups")]:
            assert time.monotonic() < deadline, f"node {node_id} still lists {group}"
            time.sleep(0.2)
    status, answer = http_delete(nodes[elsewhere - 1], f"/api/groups/{group}")
    assert status == 404, answer


def metric_value(node, name):
    """A counter's value in a node's /metrics scrape (0 when absent)."""
    import urllib.request
    with urllib.request.urlopen(node.http_url + "/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_concurrent_produce_requests_share_raft_entries_at_their_acknowledged_offsets(
        broker_factory):
    """Many producers, each sending one message at a time and waiting for it (so every
    request is one small batch), half of them idempotent, write one RF=3 partition at once.
    The leader groups the batches that queue while earlier entries are in flight into one
    Raft entry (its metrics show more batches than entries), and every acknowledged message
    is where its delivery report says, once."""
    topic = "grouped"
    nodes = start_cluster(broker_factory)
    bootstrap = ",".join(n.bootstrap for n in nodes)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    metadata = create_topic_with_leaders(admin, topic, 1)
    leader = nodes[metadata.partitions[0].leader - 1]
    entries_before = metric_value(leader, "sluice_raft_entries_proposed_total")
    batches_before = metric_value(leader, "sluice_raft_batches_proposed_total")

    producers, per_producer = 8, 250
    acknowledged = {}  # offset -> value
    failures = []
    lock = threading.Lock()

    def produce(n):
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0,
                             "enable.idempotence": n % 2 == 0, "message.timeout.ms": 60000})

        def report(error, message):
            with lock:
                if error is not None:
                    failures.append(error)
                else:
                    assert message.offset() not in acknowledged, message.offset()
                    acknowledged[message.offset()] = message.value()

        for i in range(per_producer):
            producer.produce(topic, value=f"p{n}-{i}".encode(), partition=0, on_delivery=report)
            assert producer.flush(60) == 0

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(producers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:5]
    assert len(acknowledged) == producers * per_producer

    entries = metric_value(leader, "sluice_raft_entries_proposed_total") - entries_before
    batches = metric_value(leader, "sluice_raft_batches_proposed_total") - batches_before
    print(f"the leader proposed {batches:.0f} batches in {entries:.0f} entries")
    assert batches >= producers * per_producer, (entries, batches)
    assert batches > entries, f"no batches were grouped: {entries} entries, {batches} batches"

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "grouped-check",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        got = {}
        deadline = time.monotonic() + 60
        while len(got) < len(acknowledged) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            assert message.offset() not in got
            got[message.offset()] = message.value()
        assert got == acknowledged
    finally:
        consumer.close()


def test_reassignment_answers_request_timed_out_at_its_timeout_ms(broker_factory):
    """AlterPartitionReassignments bounds its wait by the request's timeout_ms, as Kafka's
    controller does: with two of three nodes paused the metadata group cannot record the
    move, and the answer is REQUEST_TIMED_OUT after about timeout_ms, not a later default."""
    import signal

    from kafka.admin import KafkaAdminClient
    from kafka.protocol.admin import (AlterPartitionReassignmentsRequest,
                                      AlterPartitionReassignmentsResponse)

    from kafka_wire import KafkaWire

    topic = "stalled-move"
    nodes = start_cluster(broker_factory)
    admin = AdminClient({"bootstrap.servers": ",".join(n.bootstrap for n in nodes)})
    create_topic_with_leaders(admin, topic, 1)
    from kafka import TopicPartition as KafkaTopicPartition
    topics = KafkaAdminClient._process_alter_partition_reassignments_input(
        {KafkaTopicPartition(topic, 0): [3, 2, 1]})
    paused = nodes[1:]
    for node in paused:
        node.process.send_signal(signal.SIGSTOP)
    try:
        with KafkaWire(nodes[0].bootstrap, timeout_s=30) as wire:
            started = time.monotonic()
            response = wire.request(
                AlterPartitionReassignmentsRequest(timeout_ms=1500, topics=topics),
                response_class=AlterPartitionReassignmentsResponse)
            elapsed = time.monotonic() - started
    finally:
        for node in paused:
            node.process.send_signal(signal.SIGCONT)
    [partition] = response.responses[0].partitions
    assert partition.error_code == 7, response  # REQUEST_TIMED_OUT
    assert 1.2 <= elapsed < 6, elapsed
