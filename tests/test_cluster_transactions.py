"""Transactions (KIP-98) on three real `sluice` processes as one cluster, through confluent-kafka
(librdkafka), on RF=3 topics of three partitions.

The transaction coordinator of every transactional id is the metadata Raft group's leader, and
its state is replicated through that group; commit and abort markers go to each partition
through the partition's Raft leader. What is proven, as Apache Kafka behaves:

- A read_committed consumer reads committed transactions whole, at their acknowledged offsets
  and in each partition's order, never an aborted one; read_uncommitted reads both; markers take
  offsets but never reach the application; and once every transaction has ended the last stable
  offset of every partition is its high watermark (no partition is left behind an open
  transaction).
- A transaction left open when the coordinator's node is killed with SIGKILL commits through the
  next metadata leader: the partitions it had added survive, so every one gets its marker, and
  the producer's id and epoch survive, so the same producer goes on, also once the killed node is
  back.
- A second producer with the same transactional id fences the first and aborts its open
  transaction, which stops holding the last stable offset; the first producer's commit is then a
  fatal FENCED error.
- In a consume-transform-produce loop the consumer group's offsets are committed with the
  transaction and discarded with an aborted one, so after rewinding to them the output holds
  every input record exactly once.
"""

import time

import pytest
from confluent_kafka import (OFFSET_BEGINNING, OFFSET_INVALID, Consumer, IsolationLevel,
                             KafkaError, KafkaException, Producer, TopicPartition)
from confluent_kafka.admin import AdminClient, OffsetSpec
from kafka.protocol.metadata import FindCoordinatorRequest

from conftest import start_static_cluster
from kafka_wire import KafkaWire
from librdkafka_client import read_to_end, unique_name
from test_cluster_local import (HEAL_TIMEOUT_S, create_topic_with_leaders, http_get,
                                retry_while_leadership_moves)

PARTITIONS = 3
RECORDS_PER_TRANSACTION = 30
INIT_TIMEOUT_S = 30
# librdkafka finds a new coordinator by itself, but only after it notices the old one is gone.
COMMIT_TIMEOUT_S = 60
# Answers while a coordinator is loading, unknown or has moved (COORDINATOR_LOAD_IN_PROGRESS,
# COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR): clients look again.
RETRIABLE_COORDINATOR_ERRORS = (14, 15, 16)
READ_COMMITTED = "read_committed"
READ_UNCOMMITTED = "read_uncommitted"


def start_cluster_with_topics(broker_factory, *topics):
    """Three nodes and an RF=3 topic of PARTITIONS partitions per name, each with a leader;
    (nodes, a bootstrap list naming every node)."""
    nodes, _ = start_static_cluster(broker_factory)
    bootstrap = ",".join(n.bootstrap for n in nodes)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for topic in topics:
        create_topic_with_leaders(admin, topic, PARTITIONS)
    return nodes, bootstrap


def transactional_producer(bootstrap, transactional_id):
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": transactional_id,
                         "linger.ms": 5, "topic.metadata.refresh.interval.ms": 1000})
    producer.init_transactions(INIT_TIMEOUT_S)
    return producer


def labelled(label, count=RECORDS_PER_TRANSACTION):
    return [f"{label}-{i}".encode() for i in range(count)]


def produce_acknowledged(producer, topic, values):
    """Produces values[i] to partition i % PARTITIONS and waits for every delivery report;
    {value: (partition, offset)}. Any delivery error fails the caller."""
    acknowledged, failures = {}, []

    def delivered(error, message):
        if error is not None:
            failures.append(error)
        else:
            acknowledged[message.value()] = (message.partition(), message.offset())

    for i, value in enumerate(values):
        producer.produce(topic, value=value, partition=i % PARTITIONS, on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(30) == 0, "records still undelivered after 30 s"
    assert not failures, f"delivery errors: {failures[:5]}"
    assert len(acknowledged) == len(values)
    return acknowledged


def per_partition(*value_lists):
    """{partition: values} as produce_acknowledged places the lists, one after the other."""
    return {p: [v for values in value_lists for i, v in enumerate(values) if i % PARTITIONS == p]
            for p in range(PARTITIONS)}


def read_topic(bootstrap, topic, isolation):
    """{partition: [(offset, value)]} a consumer at `isolation` reads from offset 0 until it has
    reached the end of every partition (its last stable offset under read_committed); any
    consumer error fails the caller."""
    records = {p: [] for p in range(PARTITIONS)}
    for message in read_to_end(bootstrap, topic, PARTITIONS, unique_name("txn-check"),
                               isolation):
        records[message.partition()].append((message.offset(), message.value()))
    return records


def values_of(records):
    return {p: [value for _, value in pairs] for p, pairs in records.items()}


def latest_offsets(bootstrap, topic, isolation):
    """{partition: ListOffsets latest}: the high watermark for READ_UNCOMMITTED, the last
    stable offset for READ_COMMITTED."""
    def ask():
        admin = AdminClient({"bootstrap.servers": bootstrap})
        futures = admin.list_offsets(
            {TopicPartition(topic, p): OffsetSpec.latest() for p in range(PARTITIONS)},
            isolation_level=isolation, request_timeout=30)
        return {tp.partition: future.result(timeout=30).offset for tp, future in futures.items()}
    return retry_while_leadership_moves(ask)


def assert_no_transaction_holds_the_end(bootstrap, topic):
    """Every partition's last stable offset reaches its high watermark. Kafka writes the markers
    just after EndTxn answers, so they may trail the commit by a moment."""
    deadline = time.monotonic() + 15
    while True:
        stable = latest_offsets(bootstrap, topic, IsolationLevel.READ_COMMITTED)
        high = latest_offsets(bootstrap, topic, IsolationLevel.READ_UNCOMMITTED)
        if stable == high:
            return
        assert time.monotonic() < deadline, (
            f"last stable offsets {stable} stay behind the high watermarks {high}: "
            f"a transaction was left open")
        time.sleep(0.2)


def commit_retrying(producer, timeout_s=COMMIT_TIMEOUT_S):
    """commit_transaction, called again while it fails with a retriable error: as librdkafka
    documents, the commit is then still under way and the next call resumes it. An error that
    requires an abort, or a fatal one, fails the test: the transaction had to survive."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            producer.commit_transaction(max(1.0, deadline - time.monotonic()))
            return
        except KafkaException as raised:
            error = raised.args[0]
            if (error.fatal() or error.txn_requires_abort() or not error.retriable()
                    or time.monotonic() > deadline):
                raise AssertionError(
                    f"commit_transaction failed: {error} (fatal={error.fatal()}, "
                    f"requires abort={error.txn_requires_abort()}, "
                    f"retriable={error.retriable()})") from raised
            time.sleep(0.2)


def agreed_metadata_leader(nodes, exclude=()):
    """The metadata leader every live node's GET /api/cluster names: the coordinator of every
    transactional id. `exclude`: ids of nodes that are down, which must not be named."""
    deadline = time.monotonic() + HEAL_TIMEOUT_S
    last = None
    while time.monotonic() < deadline:
        try:
            views = [http_get(n, "/api/cluster")["metadata_leader"]
                     for node_id, n in enumerate(nodes, start=1) if node_id not in exclude]
            if (all(v == views[0] for v in views) and views[0] in range(1, len(nodes) + 1)
                    and views[0] not in exclude):
                return views[0]
            last = views
        except OSError as error:  # a node's API restarting, or a request timing out
            last = error
        time.sleep(0.2)
    pytest.fail(f"the nodes did not agree on a metadata leader in {HEAL_TIMEOUT_S}s: {last}")


def transaction_coordinator(node, transactional_id):
    """The node id FindCoordinator with key type 1 (a transactional id) answers on `node`,
    asked again while the answer is that the coordinator is loading or unknown."""
    deadline = time.monotonic() + HEAL_TIMEOUT_S
    while True:
        with KafkaWire(node.bootstrap) as wire:
            response = wire.request(FindCoordinatorRequest(
                key_type=1, key=transactional_id, coordinator_keys=[transactional_id]))
        answer = response.coordinators[0] if response.coordinators else response  # v4+: per key
        if answer.error_code == 0:
            return answer.node_id
        assert answer.error_code in RETRIABLE_COORDINATOR_ERRORS and \
            time.monotonic() < deadline, \
            f"FindCoordinator({transactional_id!r}) on {node.bootstrap}: {response}"
        time.sleep(0.2)


def test_committed_transactions_are_read_and_aborted_ones_skipped_on_a_cluster(
        broker_factory):
    topic = "transactional"
    _, bootstrap = start_cluster_with_topics(broker_factory, topic)
    producer = transactional_producer(bootstrap, "committer")
    first, aborted, second = labelled("A"), labelled("B"), labelled("C")

    producer.begin_transaction()
    acknowledged = produce_acknowledged(producer, topic, first)
    commit_retrying(producer)
    producer.begin_transaction()
    acknowledged.update(produce_acknowledged(producer, topic, aborted))
    producer.abort_transaction(30)
    producer.begin_transaction()
    acknowledged.update(produce_acknowledged(producer, topic, second))
    commit_retrying(producer)

    # Every transaction spans every partition: each partition's leader wrote each marker.
    committed = read_topic(bootstrap, topic, READ_COMMITTED)
    assert values_of(committed) == per_partition(first, second)
    for p, pairs in committed.items():
        assert [acknowledged[value] for _, value in pairs] == [(p, offset) for offset, _ in pairs]

    # Aborted records stay in the log for read_uncommitted; markers are never messages.
    uncommitted = read_topic(bootstrap, topic, READ_UNCOMMITTED)
    assert values_of(uncommitted) == per_partition(first, aborted, second)
    for p, pairs in uncommitted.items():
        offsets = {value: offset for offset, value in pairs}
        # Each transaction's marker takes an offset between it and the next transaction.
        for before, after in ((first, aborted), (aborted, second)):
            last = max(offsets[v] for v in per_partition(before)[p])
            assert min(offsets[v] for v in per_partition(after)[p]) > last + 1, (p, pairs)

    # Nothing is open: read_committed may read to the very end of every partition.
    assert_no_transaction_holds_the_end(bootstrap, topic)


@pytest.mark.timeout(180)
def test_a_transaction_survives_the_coordinator_being_killed(broker_factory):
    topic, transactional_id = "failover", "survivor"
    nodes, bootstrap = start_cluster_with_topics(broker_factory, topic)
    producer = transactional_producer(bootstrap, transactional_id)
    coordinator = agreed_metadata_leader(nodes)
    # The node to kill must really be the transaction coordinator, or the test proves nothing.
    assert [transaction_coordinator(n, transactional_id) for n in nodes] == [coordinator] * 3

    before, during, after = labelled("before"), labelled("during"), labelled("after")
    producer.begin_transaction()
    produce_acknowledged(producer, topic, before)
    commit_retrying(producer)
    # Every record of the open transaction is acknowledged before the kill: what is left to
    # survive is the coordinator's state (the partitions added, the producer's epoch).
    producer.begin_transaction()
    produce_acknowledged(producer, topic, during)
    nodes[coordinator - 1].kill9()
    commit_retrying(producer)

    new_coordinator = agreed_metadata_leader(nodes, exclude=(coordinator,))
    survivors = [n for node_id, n in enumerate(nodes, start=1) if node_id != coordinator]
    assert [transaction_coordinator(n, transactional_id) for n in survivors] == \
        [new_coordinator] * 2
    surviving = ",".join(n.bootstrap for n in survivors)
    assert values_of(read_topic(surviving, topic, READ_COMMITTED)) == \
        per_partition(before, during)
    assert_no_transaction_holds_the_end(surviving, topic)

    # The killed node comes back as a follower; the same producer (its id and epoch known to
    # the new coordinator) commits again.
    nodes[coordinator - 1].start()
    producer.begin_transaction()
    produce_acknowledged(producer, topic, after)
    commit_retrying(producer)
    assert values_of(read_topic(bootstrap, topic, READ_COMMITTED)) == \
        per_partition(before, during, after)
    assert_no_transaction_holds_the_end(bootstrap, topic)


def test_an_open_transaction_of_a_fenced_producer_is_aborted_on_a_cluster(broker_factory):
    topic, transactional_id = "fenced", "one-writer"
    _, bootstrap = start_cluster_with_topics(broker_factory, topic)
    zombie_values, successor_values = labelled("zombie"), labelled("successor")

    zombie = transactional_producer(bootstrap, transactional_id)
    zombie.begin_transaction()
    open_records = produce_acknowledged(zombie, topic, zombie_values)
    # The open transaction holds each partition's last stable offset at its first record.
    first_open = {p: min(o for q, o in open_records.values() if q == p) for p in range(PARTITIONS)}
    assert latest_offsets(bootstrap, topic, IsolationLevel.READ_COMMITTED) == first_open

    # A new instance with the same id bumps the epoch and aborts what the old one left open.
    successor = transactional_producer(bootstrap, transactional_id)
    successor.begin_transaction()
    produce_acknowledged(successor, topic, successor_values)
    commit_retrying(successor)

    assert values_of(read_topic(bootstrap, topic, READ_COMMITTED)) == \
        per_partition(successor_values)
    assert_no_transaction_holds_the_end(bootstrap, topic)
    # Aborted, not lost: read_uncommitted still reads the zombie's records, then the abort
    # marker's offset, then the successor's.
    uncommitted = read_topic(bootstrap, topic, READ_UNCOMMITTED)
    assert values_of(uncommitted) == per_partition(zombie_values, successor_values)
    for p, pairs in uncommitted.items():
        offsets = {value: offset for offset, value in pairs}
        last_zombie = max(offsets[v] for v in per_partition(zombie_values)[p])
        assert min(offsets[v] for v in per_partition(successor_values)[p]) > last_zombie + 1

    with pytest.raises(KafkaException) as raised:
        zombie.commit_transaction(30)
    error = raised.value.args[0]
    assert error.fatal(), error
    assert error.code() == KafkaError._FENCED, error


def test_consume_transform_produce_commits_offsets_with_the_transaction_on_a_cluster(
        broker_factory):
    source, sink, group = "input", "output", "transformers"
    total, batch = 60, 15
    _, bootstrap = start_cluster_with_topics(broker_factory, source, sink)
    inputs = labelled("in", total)
    plain = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    input_offsets = produce_acknowledged(plain, source, inputs)
    input_ends = {p: 1 + max(o for q, o in input_offsets.values() if q == p)
                  for p in range(PARTITIONS)}

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "isolation.level": READ_COMMITTED, "session.timeout.ms": 6000})
    producer = transactional_producer(bootstrap, "transformer")

    def take(count):
        taken = []
        deadline = time.monotonic() + 30
        while len(taken) < count:
            assert time.monotonic() < deadline, f"consumed {len(taken)} of {count}"
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            taken.append(message)
        return taken

    def transform(messages):
        """Opens a transaction with the transformed records and the consumer's positions;
        the positions sent (partitions consumed from so far only)."""
        producer.begin_transaction()
        for message in messages:
            producer.produce(sink, value=message.value().replace(b"in-", b"out-"),
                             partition=message.partition())
        positions = consumer.position(consumer.assignment())
        producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), 30)
        return {tp.partition: tp.offset for tp in positions if tp.offset >= 0}

    def committed_offsets():
        reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
        try:
            answer = reader.committed([TopicPartition(source, p) for p in range(PARTITIONS)],
                                      timeout=30)
            return {tp.partition: tp.offset for tp in answer}
        finally:
            reader.close()

    def transformed(messages):
        return {p: [m.value().replace(b"in-", b"out-") for m in messages if m.partition() == p]
                for p in range(PARTITIONS)}

    committed_positions = {}
    processed = []
    try:
        consumer.subscribe([source])
        for _ in range(2):
            messages = take(batch)
            sent = transform(messages)
            commit_retrying(producer)
            committed_positions.update(sent)
            processed += messages

        # An aborted batch: its offsets are not committed and its output is never read.
        aborted = take(batch)
        sent = transform(aborted)
        producer.abort_transaction(30)
        assert sent != committed_positions, (sent, committed_positions)
        committed = committed_offsets()
        assert committed == {p: committed_positions.get(p, OFFSET_INVALID)
                             for p in range(PARTITIONS)}
        assert values_of(read_topic(bootstrap, sink, READ_COMMITTED)) == transformed(processed)

        # As an exactly-once application does after an abort: back to the committed offsets,
        # and the rest (the aborted batch again included) in committed transactions.
        for tp in consumer.assignment():
            offset = committed[tp.partition]
            consumer.seek(TopicPartition(source, tp.partition,
                                         offset if offset >= 0 else OFFSET_BEGINNING))
        while len(processed) < total:
            messages = take(min(batch, total - len(processed)))
            sent = transform(messages)
            commit_retrying(producer)
            committed_positions.update(sent)
            processed += messages
    finally:
        consumer.close()

    assert sorted(m.value() for m in processed) == sorted(inputs), "a record processed twice"
    assert committed_offsets() == committed_positions
    # Past every input record (at or after its end: a Raft control batch, which clients skip,
    # may follow the last record).
    assert all(committed_positions[p] >= input_ends[p] for p in range(PARTITIONS)), \
        (committed_positions, input_ends)
    out = [value.replace(b"in-", b"out-") for value in inputs]
    assert values_of(read_topic(bootstrap, sink, READ_COMMITTED)) == per_partition(out)
    assert_no_transaction_holds_the_end(bootstrap, sink)
