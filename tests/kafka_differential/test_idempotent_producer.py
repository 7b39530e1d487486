"""The idempotent producer: a retried batch (same producer id, epoch and base sequence) is
acknowledged at its original offset and stored once, also after a restart; sequence gaps and
stale epochs get Kafka's errors."""

import pytest
from confluent_kafka import Producer

from kafka_wire import (
    ERROR_INVALID_PRODUCER_EPOCH,
    ERROR_NONE,
    ERROR_OUT_OF_ORDER_SEQUENCE_NUMBER,
    KafkaWire,
    record_batch,
)
from librdkafka_client import create_topic, read_all, unique_name

BATCH = 5  # records per hand-built batch


def values(prefix, n=BATCH):
    return [f"{prefix}-{i}".encode() for i in range(n)]


def latest_offset(wire, topic):
    response = wire.list_offset(topic, 0, -1)
    assert response.error_code == ERROR_NONE, response
    return response.offset


def stored_values(bootstrap, topic):
    return [r[3] for r in read_all(bootstrap, topic, 1, timeout_s=30)]


@pytest.fixture
def topic(kafka):
    name = unique_name("idempotent")
    create_topic(kafka.bootstrap, name, 1)
    return name


@pytest.mark.timeout(120)
def test_idempotent_librdkafka_producer_stores_each_message_once_in_order(kafka):
    partitions = 2
    topic = unique_name("idempotent-librdkafka")
    create_topic(kafka.bootstrap, topic, partitions)
    total = 10_000
    errors = []
    client_errors = []  # error_cb: a fatal idempotence error (e.g. a sequence gap) lands here
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "enable.idempotence": True,
                         "linger.ms": 5, "max.in.flight.requests.per.connection": 5,
                         "error_cb": client_errors.append})
    for i in range(total):
        producer.produce(topic, partition=i % partitions, value=f"{i:05d}".encode(),
                         on_delivery=lambda err, msg: err and errors.append(err))
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not errors, errors[:5]
    assert not [e for e in client_errors if e.fatal()], client_errors

    records = read_all(kafka.bootstrap, topic, partitions)
    for partition in range(partitions):
        got = [r[3] for r in records if r[0] == partition]
        assert got == [f"{i:05d}".encode() for i in range(partition, total, partitions)]


@pytest.mark.timeout(60)
def test_duplicate_batch_is_acknowledged_at_original_offset_and_stored_once(kafka, topic):
    with KafkaWire(kafka.bootstrap) as wire:
        producer_id, epoch = wire.init_producer_id()
        assert producer_id >= 0 and epoch >= 0
        first = record_batch(values("a"), producer_id, epoch, base_sequence=0)

        original = wire.produce(topic, 0, first)
        assert original.error_code == ERROR_NONE, original
        retried = wire.produce(topic, 0, first)
        assert retried.error_code == ERROR_NONE, retried
        assert retried.base_offset == original.base_offset
        assert latest_offset(wire, topic) == original.base_offset + BATCH

        following = wire.produce(topic, 0, record_batch(values("b"), producer_id, epoch,
                                                        base_sequence=BATCH))
        assert following.error_code == ERROR_NONE, following
        assert following.base_offset == original.base_offset + BATCH
    assert stored_values(kafka.bootstrap, topic) == values("a") + values("b")


@pytest.mark.timeout(60)
def test_sequence_gap_gets_out_of_order_sequence_number_and_stores_nothing(kafka, topic):
    with KafkaWire(kafka.bootstrap) as wire:
        producer_id, epoch = wire.init_producer_id()
        assert wire.produce(topic, 0, record_batch(values("a"), producer_id, epoch,
                                                   0)).error_code == ERROR_NONE
        gap = wire.produce(topic, 0, record_batch(values("gap"), producer_id, epoch,
                                                  base_sequence=2 * BATCH))
        assert gap.error_code == ERROR_OUT_OF_ORDER_SEQUENCE_NUMBER, gap
        assert latest_offset(wire, topic) == BATCH
        # The rejected batch did not move the expected sequence.
        assert wire.produce(topic, 0, record_batch(values("b"), producer_id, epoch,
                                                   BATCH)).error_code == ERROR_NONE
    assert stored_values(kafka.bootstrap, topic) == values("a") + values("b")


@pytest.mark.timeout(60)
def test_batch_from_an_older_epoch_gets_invalid_producer_epoch(kafka, topic):
    # InitProducerId without a transactional id always hands out a new producer id, so the epoch
    # is bumped the way an idempotent producer bumps it itself (KIP-360): the next epoch,
    # starting again at sequence 0. From then on the old epoch is stale.
    with KafkaWire(kafka.bootstrap) as wire:
        producer_id, epoch = wire.init_producer_id()
        assert epoch < 32767
        assert wire.produce(topic, 0, record_batch(values("a"), producer_id, epoch,
                                                   0)).error_code == ERROR_NONE
        bumped = wire.produce(topic, 0, record_batch(values("b"), producer_id, epoch + 1, 0))
        assert bumped.error_code == ERROR_NONE, bumped
        stale = wire.produce(topic, 0, record_batch(values("stale"), producer_id, epoch,
                                                    BATCH))
        assert stale.error_code == ERROR_INVALID_PRODUCER_EPOCH, stale
        assert latest_offset(wire, topic) == 2 * BATCH
    assert stored_values(kafka.bootstrap, topic) == values("a") + values("b")


@pytest.mark.timeout(60)
def test_new_epoch_not_starting_at_sequence_zero_gets_out_of_order_sequence_number(
        kafka, topic):
    with KafkaWire(kafka.bootstrap) as wire:
        producer_id, epoch = wire.init_producer_id()
        assert epoch < 32767
        assert wire.produce(topic, 0, record_batch(values("a"), producer_id, epoch,
                                                   0)).error_code == ERROR_NONE
        skipped = wire.produce(topic, 0, record_batch(values("b"), producer_id, epoch + 1,
                                                      BATCH))
        assert skipped.error_code == ERROR_OUT_OF_ORDER_SEQUENCE_NUMBER, skipped
        assert latest_offset(wire, topic) == BATCH


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
@pytest.mark.timeout(90)
def test_duplicate_detection_survives_broker_restart(kafka, topic, stop):
    with KafkaWire(kafka.bootstrap) as wire:
        producer_id, epoch = wire.init_producer_id()
        first = record_batch(values("a"), producer_id, epoch, 0)
        second = record_batch(values("b"), producer_id, epoch, BATCH)
        first_offset = wire.produce(topic, 0, first)
        second_offset = wire.produce(topic, 0, second)
        assert first_offset.error_code == second_offset.error_code == ERROR_NONE

    kafka.restart(kill=stop == "sigkill")

    with KafkaWire(kafka.bootstrap) as wire:
        # The producer's last batch is recognised after a restart by Kafka and Sluice alike.
        retried = wire.produce(topic, 0, second)
        assert retried.error_code == ERROR_NONE, retried
        assert retried.base_offset == second_offset.base_offset
        retried = wire.produce(topic, 0, first)
        if kafka.kind == "sluice":
            # Sluice rebuilds the last five batches from its log, as before the restart.
            assert retried.error_code == ERROR_NONE, retried
            assert retried.base_offset == first_offset.base_offset
        else:
            # Kafka's producer-state snapshot keeps only each producer's last batch.
            assert retried.error_code == ERROR_OUT_OF_ORDER_SEQUENCE_NUMBER, retried
        assert latest_offset(wire, topic) == 2 * BATCH
        following = wire.produce(topic, 0, record_batch(values("c"), producer_id, epoch,
                                                        2 * BATCH))
        assert following.error_code == ERROR_NONE, following
        assert following.base_offset == 2 * BATCH
    assert stored_values(kafka.bootstrap, topic) == values("a") + values("b") + values("c")
