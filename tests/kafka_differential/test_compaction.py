"""Log compaction (cleanup.policy=compact) against Apache Kafka and Sluice: the cleaner keeps the
last record of each key at the offset it was written at, removes tombstones after
delete.retention.ms, leaves records of cleanup.policy=delete topics alone, and both brokers
refuse keyless records and conflicting lag settings the same way.

Both cleaners run every 100 ms here (Kafka's log.cleaner.backoff.ms, Sluice's
--log-cleaner-backoff-ms); segments roll after segment.ms=100, so each round of records below
lands in a segment of its own that the cleaner may take."""

import time

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewTopic

from librdkafka_client import read_to_end

COMPACTED = {"cleanup.policy": "compact", "segment.ms": "100",
             "min.cleanable.dirty.ratio": "0.01"}
CLEANED_WITHIN_S = 90


def produce(producer, topic, records) -> dict:
    """Produces (key, value) pairs one by one; {(key, value): offset} from delivery reports."""
    offsets = {}
    errors = []

    def delivered(error, message):
        if error is not None:
            errors.append(error)
        else:
            offsets[(message.key(), message.value())] = message.offset()

    for key, value in records:
        producer.produce(topic, key=key, value=value, on_delivery=delivered)
        assert producer.flush(30) == 0
    assert not errors, errors
    return offsets


def read_all(kafka, topic) -> list[tuple[int, bytes | None, bytes | None]]:
    return [(m.offset(), m.key(), m.value())
            for m in read_to_end(kafka.bootstrap, topic, 1, kafka.name("read"),
                                 "read_uncommitted")]


def until_cleaned(kafka, producer, topic, cleaned) -> list:
    """Reads the topic until `cleaned(records)` holds, producing a record of another key
    between reads, more than segment.ms apart, so that the segment before it rolls and the
    log keeps getting dirty enough for the next pass (as a live topic does)."""
    deadline = time.monotonic() + CLEANED_WITHIN_S
    while True:
        time.sleep(0.2)
        produce(producer, topic, [(b"roll", b"r")])
        records = read_all(kafka, topic)
        if cleaned([r for r in records if r[1] != b"roll"]):
            return records
        assert time.monotonic() < deadline, f"not compacted after {CLEANED_WITHIN_S}s: {records}"


def test_compaction_keeps_the_last_record_of_each_key_at_its_offset(kafka):
    topic = kafka.create_topic(config=COMPACTED)
    producer = kafka.producer()
    written = {}
    for round_ in range(6):
        written.update(produce(producer, topic,
                               [(f"key-{k}".encode(), f"v{round_}-{k}".encode())
                                for k in range(4)]))
        time.sleep(0.15)
    last = {key: (offset, value) for (key, value), offset in sorted(
        written.items(), key=lambda item: item[1])}

    def one_per_key(records):
        keys = [key for _, key, _ in records]
        return sorted(keys) == sorted(set(keys)) and len(keys) == 4

    records = until_cleaned(kafka, producer, topic, one_per_key)
    kept = {key: (offset, value) for offset, key, value in records if key != b"roll"}
    assert kept == last
    # The offsets in between were removed, not renumbered: the log still ends where it did.
    assert max(offset for offset, _, _ in records) >= max(written.values())


def test_tombstones_remove_a_key_after_delete_retention(kafka):
    topic = kafka.create_topic(config={**COMPACTED, "delete.retention.ms": "0"})
    producer = kafka.producer()
    produce(producer, topic, [(b"kept", b"1"), (b"deleted", b"1")])
    time.sleep(0.15)
    produce(producer, topic, [(b"deleted", b"2"), (b"deleted", None)])
    time.sleep(0.15)

    def deleted_gone(records):
        return [key for _, key, _ in records] == [b"kept"]

    records = until_cleaned(kafka, producer, topic, deleted_gone)
    assert [(key, value) for _, key, value in records if key != b"roll"] == [(b"kept", b"1")]


def test_a_delete_policy_topic_keeps_every_record(kafka):
    topic = kafka.create_topic(config={"segment.ms": "100"})
    producer = kafka.producer()
    for round_ in range(3):
        produce(producer, topic, [(b"same", f"{round_}".encode())])
        time.sleep(0.15)
    time.sleep(1)
    assert [value for _, _, value in read_all(kafka, topic)] == [b"0", b"1", b"2"]


def test_a_compacted_topic_refuses_records_without_a_key(kafka):
    topic = kafka.create_topic(config=COMPACTED)
    producer = kafka.producer(retries=0)
    errors = []
    producer.produce(topic, value=b"no key", on_delivery=lambda error, _: errors.append(error))
    producer.flush(30)
    assert len(errors) == 1 and errors[0] is not None
    assert errors[0].code() == KafkaError.INVALID_RECORD, errors[0]
    # The topic still takes keyed records.
    assert produce(producer, topic, [(b"k", b"v")])


def test_conflicting_compaction_lags_are_refused(kafka):
    name = kafka.name("topic")
    futures = kafka.admin().create_topics([NewTopic(name, 1, 1, config={
        "cleanup.policy": "compact", "min.compaction.lag.ms": "10",
        "max.compaction.lag.ms": "9"})], operation_timeout=30)
    with pytest.raises(KafkaException) as raised:
        futures[name].result(timeout=30)
    assert raised.value.args[0].code() == KafkaError.INVALID_CONFIG


def test_an_open_transaction_holds_the_cleaner_and_an_aborted_one_is_removed(kafka):
    """The cleaner stops at the last stable offset: a value in a transaction still open must
    not take the place of the key's committed value, which then survives the abort."""
    topic = kafka.create_topic(config=COMPACTED)
    producer = kafka.producer()
    produce(producer, topic, [(b"k", b"committed")])
    time.sleep(0.15)
    transactional = kafka.producer(**{"transactional.id": kafka.name("tx")})
    transactional.init_transactions(30)
    transactional.begin_transaction()
    transactional.produce(topic, key=b"k", value=b"aborted")
    assert transactional.flush(30) == 0
    # Segments roll and passes run past the open transaction.
    for _ in range(5):
        time.sleep(0.2)
        produce(producer, topic, [(b"roll", b"r")])
    time.sleep(1)
    transactional.abort_transaction(30)

    def aborted_removed(records):
        return [(key, value) for _, key, value in records] == [(b"k", b"committed")]

    until_cleaned(kafka, producer, topic, aborted_removed)
    committed = [(m.key(), m.value()) for m in read_to_end(
        kafka.bootstrap, topic, 1, kafka.name("read"), "read_committed") if m.key() == b"k"]
    assert committed == [(b"k", b"committed")]
