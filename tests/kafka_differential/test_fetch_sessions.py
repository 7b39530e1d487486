"""Incremental fetch sessions (KIP-227) as Apache Kafka keeps them: a full fetch opens a
session, incremental fetches name only what changed and get back only partitions with news,
and an unknown session or a wrong epoch is refused."""

from kafka.protocol.consumer import FetchRequest

from kafka_wire import KafkaWire
from librdkafka_client import produce_values

FETCH_SESSION_ID_NOT_FOUND = 70
INVALID_FETCH_SESSION_EPOCH = 71
VERSION = 12  # topics by name


def fetch(wire, session_id, epoch, partitions, forgotten=(), max_wait_ms=200):
    """partitions: {(topic, partition): fetch offset}; forgotten: [(topic, partition)]."""
    topics = {}
    for (topic, partition), offset in partitions.items():
        topics.setdefault(topic, []).append(FetchRequest.FetchTopic.FetchPartition(
            partition=partition, fetch_offset=offset, partition_max_bytes=1 << 20))
    forgotten_topics = {}
    for topic, partition in forgotten:
        forgotten_topics.setdefault(topic, []).append(partition)
    request = FetchRequest(
        replica_id=-1, max_wait_ms=max_wait_ms, min_bytes=1, max_bytes=1 << 22,
        isolation_level=0, session_id=session_id, session_epoch=epoch,
        topics=[FetchRequest.FetchTopic(topic=t, partitions=p) for t, p in topics.items()],
        forgotten_topics_data=[FetchRequest.ForgottenTopic(topic=t, partitions=p)
                               for t, p in forgotten_topics.items()],
        rack_id="")
    return wire.request(request, version=VERSION)


def answered(response):
    """{(topic, partition): (high watermark, record bytes)} of a fetch response."""
    return {(t.topic, p.partition_index): (p.high_watermark, len(p.records or b""))
            for t in response.responses for p in t.partitions}


def test_an_incremental_fetch_answers_only_partitions_with_news(kafka):
    first = kafka.create_topic(partitions=2)
    second = kafka.create_topic()
    produce_values(kafka.bootstrap, first, [b"a", b"b"], partition=0)
    with KafkaWire(kafka.bootstrap) as wire:
        full = fetch(wire, 0, 0, {(first, 0): 0, (first, 1): 0, (second, 0): 0})
        assert full.error_code == 0 and full.session_id != 0
        seen = answered(full)
        assert set(seen) == {(first, 0), (first, 1), (second, 0)}
        assert seen[(first, 0)][0] == 2 and seen[(first, 0)][1] > 0

        # Nothing changed and nothing new: the session answers with no partitions.
        quiet = fetch(wire, full.session_id, 1, {(first, 0): 2})
        assert quiet.error_code == 0 and quiet.session_id == full.session_id
        assert answered(quiet) == {}

        # New records in the second topic are news; the forgotten partition is gone.
        produce_values(kafka.bootstrap, second, [b"c"], partition=0)
        news = fetch(wire, full.session_id, 2, {}, forgotten=[(first, 1)])
        assert set(answered(news)) == {(second, 0)}

        # A wrong epoch and an unknown session are refused.
        assert fetch(wire, full.session_id, 7, {}).error_code == INVALID_FETCH_SESSION_EPOCH
        unknown = fetch(wire, full.session_id + 1, 1, {})
        assert unknown.error_code == FETCH_SESSION_ID_NOT_FOUND


def test_the_final_epoch_fetches_without_a_session(kafka):
    topic = kafka.create_topic()
    with KafkaWire(kafka.bootstrap) as wire:
        response = fetch(wire, 0, -1, {(topic, 0): 0})
        assert response.error_code == 0 and response.session_id == 0
        assert set(answered(response)) == {(topic, 0)}
