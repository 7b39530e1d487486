"""Transactions and exactly-once (KIP-98) through librdkafka, against Apache Kafka and Sluice:
commit and abort, read_committed consumers stopping at the last stable offset and dropping
aborted records, fencing by transactional id, transaction timeouts, offsets sent with a
transaction, the coordinator surviving a kill -9, and Kafka's errors for bad requests."""

import time

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from kafka_wire import API_KEY_PRODUCE, ERROR_NONE, KafkaWire, record_batch
from librdkafka_client import read_to_end

ERROR_INVALID_TXN_STATE = 48
ERROR_INVALID_PRODUCER_ID_MAPPING = 49
ERROR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53

READ_COMMITTED = "read_committed"
READ_UNCOMMITTED = "read_uncommitted"


def consume_to_end(kafka, topic: str, partitions: int, isolation: str
                   ) -> list[tuple[int, int, bytes]]:
    """Every record a consumer at `isolation` reads from offset 0 until it reaches the end of
    every partition (the last stable offset for read_committed), as (partition, offset, value)."""
    return sorted((m.partition(), m.offset(), m.value())
                  for m in read_to_end(kafka.bootstrap, topic, partitions, kafka.name("read"),
                                       isolation))


def values_of(records) -> list[bytes]:
    return [value for _, _, value in records]


def transactional_producer(kafka, transactional_id: str | None = None, **conf):
    producer = kafka.producer(**{"transactional.id": transactional_id or kafka.name("tx"),
                                 **conf})
    producer.init_transactions(30)
    return producer


def produce_all(producer, topic: str, values, partition: int | None = None):
    for value in values:
        if partition is None:
            producer.produce(topic, value=value)
        else:
            producer.produce(topic, value=value, partition=partition)
    assert producer.flush(30) == 0


def latest_offsets(kafka, topic: str, partition: int) -> tuple[int, int]:
    """(read_uncommitted latest, read_committed latest): the high watermark and the last
    stable offset as ListOffsets answers them."""
    with KafkaWire(kafka.bootstrap) as wire:
        uncommitted = wire.list_offset(topic, partition, -1)
        committed = wire.list_offset(topic, partition, -1, isolation_level=1)
    assert uncommitted.error_code == ERROR_NONE and committed.error_code == ERROR_NONE
    return uncommitted.offset, committed.offset


def offsets_once_markers_are_written(kafka, topic: str, partition: int,
                                     expected: tuple[int, int]) -> tuple[int, int]:
    """latest_offsets, read until they are `expected` (or 10 s passed): Kafka's EndTxn answers
    once the coordinator has logged the decision and writes the markers just after, so the last
    stable offset may trail the commit by a moment there (Sluice writes them before answering)."""
    deadline = time.monotonic() + 10
    while (offsets := latest_offsets(kafka, topic, partition)) != expected \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    return offsets


@pytest.mark.timeout(120)
def test_committed_transaction_is_read_whole_and_each_marker_takes_an_offset(kafka):
    topic = kafka.create_topic(partitions=2)
    producer = transactional_producer(kafka)
    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic, value=f"c{i}".encode(), partition=i % 2)
    producer.commit_transaction(30)

    for isolation in (READ_COMMITTED, READ_UNCOMMITTED):
        records = consume_to_end(kafka, topic, 2, isolation)
        assert sorted(values_of(records)) == sorted(f"c{i}".encode() for i in range(10))
        # Five records and the commit marker in each partition.
        assert [offset for p, offset, _ in records if p == 0] == [0, 1, 2, 3, 4]
    assert offsets_once_markers_are_written(kafka, topic, 0, (6, 6)) == (6, 6)
    assert offsets_once_markers_are_written(kafka, topic, 1, (6, 6)) == (6, 6)


@pytest.mark.timeout(120)
def test_aborted_transaction_is_dropped_by_read_committed_and_kept_by_read_uncommitted(kafka):
    topic = kafka.create_topic()
    producer = transactional_producer(kafka)
    producer.begin_transaction()
    produce_all(producer, topic, [b"kept-1"], partition=0)
    producer.commit_transaction(30)
    producer.begin_transaction()
    produce_all(producer, topic, [b"aborted-1", b"aborted-2"], partition=0)
    producer.abort_transaction(30)
    producer.begin_transaction()
    produce_all(producer, topic, [b"kept-2"], partition=0)
    producer.commit_transaction(30)

    committed = consume_to_end(kafka, topic, 1, READ_COMMITTED)
    assert values_of(committed) == [b"kept-1", b"kept-2"]
    # kept-1, its marker, two aborted records, the abort marker, kept-2.
    assert [offset for _, offset, _ in committed] == [0, 5]
    uncommitted = consume_to_end(kafka, topic, 1, READ_UNCOMMITTED)
    assert values_of(uncommitted) == [b"kept-1", b"aborted-1", b"aborted-2", b"kept-2"]
    assert offsets_once_markers_are_written(kafka, topic, 0, (7, 7)) == (7, 7)


@pytest.mark.timeout(120)
def test_read_committed_stops_at_the_last_stable_offset_of_an_open_transaction(kafka):
    topic = kafka.create_topic()
    plain = kafka.producer()
    produce_all(plain, topic, [b"before"], partition=0)
    producer = transactional_producer(kafka)
    producer.begin_transaction()
    produce_all(producer, topic, [b"open-1", b"open-2"], partition=0)
    produce_all(plain, topic, [b"beside"], partition=0)

    # The open transaction starts at offset 1: read_committed reads offset 0 only.
    assert latest_offsets(kafka, topic, 0) == (4, 1)
    assert values_of(consume_to_end(kafka, topic, 1, READ_COMMITTED)) == [b"before"]
    assert values_of(consume_to_end(kafka, topic, 1, READ_UNCOMMITTED)) == \
        [b"before", b"open-1", b"open-2", b"beside"]

    producer.commit_transaction(30)
    assert offsets_once_markers_are_written(kafka, topic, 0, (5, 5)) == (5, 5)
    assert values_of(consume_to_end(kafka, topic, 1, READ_COMMITTED)) == \
        [b"before", b"open-1", b"open-2", b"beside"]


@pytest.mark.timeout(120)
def test_a_new_instance_fences_the_old_one_and_aborts_its_open_transaction(kafka):
    topic = kafka.create_topic()
    transactional_id = kafka.name("tx")
    zombie = transactional_producer(kafka, transactional_id)
    zombie.begin_transaction()
    produce_all(zombie, topic, [b"zombie"], partition=0)

    successor = transactional_producer(kafka, transactional_id)
    with pytest.raises(KafkaException) as raised:
        zombie.commit_transaction(30)
    error = raised.value.args[0]
    assert error.fatal(), error
    assert error.code() == KafkaError._FENCED, error

    successor.begin_transaction()
    produce_all(successor, topic, [b"successor"], partition=0)
    successor.commit_transaction(30)
    assert values_of(consume_to_end(kafka, topic, 1, READ_COMMITTED)) == [b"successor"]


@pytest.mark.timeout(120)
def test_a_transaction_past_its_timeout_is_aborted_by_the_coordinator(kafka):
    topic = kafka.create_topic()
    producer = transactional_producer(kafka, **{"transaction.timeout.ms": 2000})
    producer.begin_transaction()
    produce_all(producer, topic, [b"too-slow"], partition=0)
    assert latest_offsets(kafka, topic, 0) == (1, 0)
    # Kafka checks every 10 s (transaction.abort.timed.out.transaction.cleanup.interval.ms).
    deadline = time.monotonic() + 40
    while latest_offsets(kafka, topic, 0)[1] == 0:
        assert time.monotonic() < deadline, "the timed-out transaction was never aborted"
        time.sleep(0.5)
    # Aborted: the marker follows the record and nothing is readable.
    assert latest_offsets(kafka, topic, 0) == (2, 2)
    assert consume_to_end(kafka, topic, 1, READ_COMMITTED) == []
    with pytest.raises(KafkaException):
        producer.commit_transaction(30)


@pytest.mark.timeout(60)
def test_a_transaction_timeout_above_the_broker_maximum_is_refused(kafka):
    producer = kafka.producer(**{"transactional.id": kafka.name("tx"),
                                 "transaction.timeout.ms": 900_001})
    with pytest.raises(KafkaException) as raised:
        producer.init_transactions(30)
    assert raised.value.args[0].code() == KafkaError.INVALID_TRANSACTION_TIMEOUT, raised.value


@pytest.mark.timeout(120)
def test_offsets_sent_with_a_transaction_commit_with_it_and_abort_with_it(kafka):
    source = kafka.create_topic()
    sink = kafka.create_topic()
    produce_all(kafka.producer(), source, [f"in-{i}".encode() for i in range(6)], partition=0)
    group = kafka.name("eos")
    consumer = kafka.consumer(**{"group.id": group, "isolation.level": READ_COMMITTED})
    consumer.subscribe([source])
    producer = transactional_producer(kafka)

    def transform(count: int):
        taken = []
        deadline = time.monotonic() + 30
        while len(taken) < count:
            assert time.monotonic() < deadline, f"consumed {len(taken)} of {count}"
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                taken.append(message)
        producer.begin_transaction()
        for message in taken:
            producer.produce(sink, value=message.value().replace(b"in", b"out"), partition=0)
        producer.send_offsets_to_transaction(consumer.position(consumer.assignment()),
                                             consumer.consumer_group_metadata(), 30)

    def committed_offset() -> int:
        return kafka.consumer(**{"group.id": group}).committed(
            [TopicPartition(source, 0)], timeout=10)[0].offset

    transform(3)
    producer.commit_transaction(30)
    assert committed_offset() == 3
    transform(3)
    producer.abort_transaction(30)
    assert committed_offset() == 3
    assert values_of(consume_to_end(kafka, sink, 1, READ_COMMITTED)) == \
        [b"out-0", b"out-1", b"out-2"]


@pytest.mark.timeout(180)
def test_the_coordinator_survives_kill_9_and_the_next_instance_aborts_what_was_open(kafka):
    topic = kafka.create_topic()
    transactional_id = kafka.name("tx")
    producer = transactional_producer(kafka, transactional_id)
    producer.begin_transaction()
    produce_all(producer, topic, [b"committed"], partition=0)
    producer.commit_transaction(30)
    producer.begin_transaction()
    produce_all(producer, topic, [b"open-at-the-crash"], partition=0)

    kafka.restart(kill=True)
    # Still open after the restart: the coordinator's state and the partition's open
    # transaction were recovered.
    assert latest_offsets(kafka, topic, 0) == (3, 2)
    successor = transactional_producer(kafka, transactional_id)
    assert latest_offsets(kafka, topic, 0) == (4, 4)
    successor.begin_transaction()
    produce_all(successor, topic, [b"after"], partition=0)
    successor.commit_transaction(30)
    assert values_of(consume_to_end(kafka, topic, 1, READ_COMMITTED)) == \
        [b"committed", b"after"]
    assert values_of(consume_to_end(kafka, topic, 1, READ_UNCOMMITTED)) == \
        [b"committed", b"open-at-the-crash", b"after"]


@pytest.mark.timeout(60)
def test_a_transactional_batch_outside_a_transaction_is_refused(kafka):
    """Verified as Kafka does since KIP-890: a transactional batch is appended only to a
    partition its producer's open transaction holds. Otherwise no marker would ever end it and
    the partition's last stable offset would stay behind it forever."""
    topic = kafka.create_topic()
    transactional_id = kafka.name("tx")
    # Produce v9: from v12 on (transaction version 2) both brokers add the partition to the
    # transaction themselves.
    with KafkaWire(kafka.bootstrap, version_caps={API_KEY_PRODUCE: 9}) as wire:
        producer_id, epoch = wire.init_producer_id(transactional_id=transactional_id)
        batch = record_batch([b"x"], producer_id, epoch, 0, transactional=True)
        never_added = wire.produce(topic, 0, batch, transactional_id=transactional_id)
        assert never_added.error_code == ERROR_INVALID_TXN_STATE, never_added
        # A request carrying transactional batches must name its transactional id.
        unnamed = wire.produce(topic, 0, batch)
        assert unnamed.error_code == ERROR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED, unnamed
        idempotent_id, idempotent_epoch = wire.init_producer_id()
        not_transactional = wire.produce(
            topic, 0, record_batch([b"y"], idempotent_id, idempotent_epoch, 0,
                                   transactional=True),
            transactional_id=kafka.name("tx"))
        assert not_transactional.error_code == ERROR_INVALID_PRODUCER_ID_MAPPING, \
            not_transactional
    assert latest_offsets(kafka, topic, 0) == (0, 0)


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
@pytest.mark.timeout(120)
def test_offsets_sent_with_only_a_group_id_commit_while_the_group_has_members(kafka, protocol):
    """TxnOffsetCommit without member id or generation (kafka-python given only a group id):
    Kafka checks the committer against the group only when the request names one, so the
    offsets commit with the transaction although the group has a member."""
    from kafka import KafkaProducer
    from kafka.structs import OffsetAndMetadata, TopicPartition as KafkaPythonPartition

    topic = kafka.create_topic()
    group = kafka.name("g")
    consumer = kafka.consumer(**{"group.id": group, "group.protocol": protocol})
    consumer.subscribe([topic])
    deadline = time.monotonic() + 30
    while not consumer.assignment():
        assert time.monotonic() < deadline, "the member got no assignment"
        consumer.poll(0.2)
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap,
                             transactional_id=kafka.name("tx"))
    try:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(topic, b"x", partition=0)
        producer.send_offsets_to_transaction(
            {KafkaPythonPartition(topic, 0): OffsetAndMetadata(7, "", -1)}, group)
        producer.commit_transaction()
    finally:
        producer.close(timeout=10)
    committed = consumer.committed([TopicPartition(topic, 0)], timeout=20)
    assert [tp.offset for tp in committed] == [7]
