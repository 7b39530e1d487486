"""Three real `sluice` processes on 127.0.0.1 as one cluster (--node-id, --cluster-listen,
--peers): an RF=3 topic takes acks=all idempotent writes from confluent-kafka while the leader
of a partition is killed with SIGKILL and later restarted. Nothing acknowledged may be lost or
duplicated, every acknowledged record must be at its acknowledged offset, and after the restart
every node must report the same leaders, with the leader's ISR back to all three replicas."""

import threading
import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import free_port

TOPIC = "replicated"
PARTITIONS = 3
HEAL_TIMEOUT_S = 45


def start_cluster(broker_factory, size=3):
    cluster_ports = [free_port() for _ in range(size)]
    peers = ",".join(f"{i + 1}@127.0.0.1:{port}" for i, port in enumerate(cluster_ports))
    nodes = []
    for i, port in enumerate(cluster_ports):
        nodes.append(broker_factory(
            "--node-id", i + 1,
            "--cluster-listen", f"127.0.0.1:{port}",
            "--peers", peers,
            "--default-replication-factor", 3,
        ))
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
