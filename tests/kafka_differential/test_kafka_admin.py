"""Topic administration as Apache Kafka answers it: CreateTopics, DeleteTopics, CreatePartitions,
DescribeConfigs and IncrementalAlterConfigs, error codes included."""

import time

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions,
                                   NewTopic)


def create_error(kafka, new_topic: NewTopic, **kw):
    """The error code CreateTopics answers for one topic, or None when it is created."""
    future = kafka.admin().create_topics([new_topic], operation_timeout=30, **kw)[new_topic.topic]
    try:
        future.result(timeout=30)
        return None
    except KafkaException as exc:
        return exc.args[0].code()


def test_create_topic_twice_is_topic_already_exists(kafka):
    name = kafka.create_topic(partitions=2)
    assert create_error(kafka, NewTopic(name, 2, 1)) == KafkaError.TOPIC_ALREADY_EXISTS


def test_create_topic_with_no_partitions_is_invalid_partitions(kafka):
    assert create_error(kafka, NewTopic(kafka.name(), 0, 1)) == KafkaError.INVALID_PARTITIONS


def test_create_topic_with_more_replicas_than_brokers_is_invalid_replication_factor(kafka):
    assert create_error(kafka, NewTopic(kafka.name(), 1, 3)) == \
        KafkaError.INVALID_REPLICATION_FACTOR


@pytest.mark.parametrize("name", ["bad/name", "a" * 250, "..", "spaces are bad"])
def test_create_topic_with_an_illegal_name_is_invalid_topic(kafka, name):
    assert create_error(kafka, NewTopic(name, 1, 1)) == KafkaError.TOPIC_EXCEPTION


@pytest.mark.parametrize("config", [{"retention.ms": "soon"}, {"no.such.config": "1"},
                                    {"cleanup.policy": "shred"}])
def test_create_topic_with_a_bad_config_is_invalid_config(kafka, config):
    assert create_error(kafka, NewTopic(kafka.name(), 1, 1, config=config)) == \
        KafkaError.INVALID_CONFIG


def test_validate_only_creates_nothing(kafka):
    name = kafka.name()
    assert create_error(kafka, NewTopic(name, 3, 1), validate_only=True) is None
    assert name not in kafka.admin().list_topics(timeout=10).topics
    # The same request's errors come back without validate_only's effect too.
    assert create_error(kafka, NewTopic(name, 0, 1), validate_only=True) == \
        KafkaError.INVALID_PARTITIONS


def test_delete_unknown_topic_is_unknown_topic_or_partition(kafka):
    future = kafka.admin().delete_topics([kafka.name()], operation_timeout=30)
    error = next(iter(future.values())).exception(timeout=30)
    assert error is not None and error.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_a_deleted_topic_is_gone_from_metadata(kafka):
    name = kafka.create_topic()
    next(iter(kafka.admin().delete_topics([name], operation_timeout=30).values())).result(30)
    topics = once_settled(lambda: kafka.admin().list_topics(timeout=10).topics,
                          lambda listed: name not in listed, timeout_s=30)
    assert name not in topics, f"{name} still in Metadata 30 s after its deletion"


def once_settled(read, check, timeout_s=15):
    """`read()` once `check` holds of it, or its last value after `timeout_s`. Apache Kafka
    answers an admin request (DeleteTopics, CreatePartitions, IncrementalAlterConfigs) once its
    controller has it, and its metadata cache and configs follow a moment later, so a read
    right after may still show the old state (seen in CI); Sluice shows the new one at once."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if check(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_create_partitions_grows_and_never_shrinks(kafka):
    name = kafka.create_topic(partitions=2)
    admin = kafka.admin()
    admin.create_partitions([NewPartitions(name, 5)], operation_timeout=30)[name].result(30)
    count = once_settled(lambda: len(admin.list_topics(name, timeout=10).topics[name].partitions),
                         lambda n: n == 5)
    assert count == 5
    for count, code in [(5, KafkaError.INVALID_PARTITIONS), (3, KafkaError.INVALID_PARTITIONS)]:
        error = admin.create_partitions([NewPartitions(name, count)],
                                        operation_timeout=30)[name].exception(30)
        assert error is not None and error.args[0].code() == code, (count, error)
    error = admin.create_partitions([NewPartitions(kafka.name(), 4)],
                                    operation_timeout=30)
    error = next(iter(error.values())).exception(30)
    assert error is not None and error.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def describe(kafka, name) -> dict:
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    return kafka.admin().describe_configs([resource])[resource].result(timeout=30)


def described_once(kafka, name, key, check, timeout_s=15):
    """The entry `key` of `name` once `check(entry)` holds (see `once_settled`)."""
    return once_settled(lambda: describe(kafka, name)[key], check, timeout_s)


# The defaults Kafka documents for a topic created without configs (broker defaults unchanged).
TOPIC_DEFAULTS = {
    "cleanup.policy": "delete",
    "retention.ms": "604800000",
    "retention.bytes": "-1",
    "min.insync.replicas": "1",  # a cluster-wide dynamic default on Kafka 4 (KIP-966)
    "message.timestamp.type": "CreateTime",
    "compression.type": "producer",
    "max.message.bytes": "1048588",
}


def test_describe_configs_shows_kafkas_defaults_and_what_was_set(kafka):
    name = kafka.create_topic(config={"retention.ms": "3600000"})
    entries = describe(kafka, name)
    for key, value in TOPIC_DEFAULTS.items():
        if key == "retention.ms":
            continue
        assert entries[key].value == value, key
        assert entries[key].is_default or key == "min.insync.replicas", key
    assert entries["retention.ms"].value == "3600000"
    assert not entries["retention.ms"].is_default
    assert entries["retention.ms"].source == ConfigResource.Type.TOPIC.value or \
        entries["retention.ms"].source == 1  # DYNAMIC_TOPIC_CONFIG


def test_describe_configs_of_an_unknown_topic_is_unknown_topic_or_partition(kafka):
    resource = ConfigResource(ConfigResource.Type.TOPIC, kafka.name())
    error = kafka.admin().describe_configs([resource])[resource].exception(timeout=30)
    assert error is not None and error.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_incremental_alter_configs_sets_and_deletes(kafka):
    name = kafka.create_topic()
    admin = kafka.admin()
    resource = ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=[
        ConfigEntry("retention.ms", "120000",
                    incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([resource])[resource].result(timeout=30)
    entry = described_once(kafka, name, "retention.ms", lambda e: e.value == "120000")
    assert entry.value == "120000"
    resource = ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=[
        ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE)])
    admin.incremental_alter_configs([resource])[resource].result(timeout=30)
    entry = described_once(kafka, name, "retention.ms", lambda e: e.is_default)
    assert entry.value == "604800000" and entry.is_default


def test_incremental_alter_configs_refuses_a_bad_value(kafka):
    name = kafka.create_topic()
    resource = ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=[
        ConfigEntry("retention.ms", "forever", incremental_operation=AlterConfigOpType.SET)])
    error = kafka.admin().incremental_alter_configs([resource])[resource].exception(timeout=30)
    assert error is not None and error.args[0].code() == KafkaError.INVALID_CONFIG
    assert describe(kafka, name)["retention.ms"].value == "604800000"


# Kafka 4.1's topic configs with their defaults, as DescribeConfigs lists them for a new topic.
KAFKA_TOPIC_CONFIGS = {
    "cleanup.policy": "delete", "compression.gzip.level": "-1", "compression.lz4.level": "9",
    "compression.type": "producer", "compression.zstd.level": "3",
    "delete.retention.ms": "86400000", "file.delete.delay.ms": "60000",
    "flush.messages": "9223372036854775807", "flush.ms": "9223372036854775807",
    "follower.replication.throttled.replicas": "", "index.interval.bytes": "4096",
    "leader.replication.throttled.replicas": "", "local.retention.bytes": "-2",
    "local.retention.ms": "-2", "max.compaction.lag.ms": "9223372036854775807",
    "max.message.bytes": "1048588", "message.timestamp.after.max.ms": "3600000",
    "message.timestamp.before.max.ms": "9223372036854775807",
    "message.timestamp.type": "CreateTime", "min.cleanable.dirty.ratio": "0.5",
    "min.compaction.lag.ms": "0", "min.insync.replicas": "1", "preallocate": "false",
    "remote.log.copy.disable": "false", "remote.log.delete.on.disable": "false",
    "remote.storage.enable": "false", "retention.bytes": "-1", "retention.ms": "604800000",
    "segment.bytes": "1073741824", "segment.index.bytes": "10485760",
    "segment.jitter.ms": "0", "segment.ms": "604800000",
    "unclean.leader.election.enable": "false",
}
# Sluice's own topic configs (README, "Topic configs").
SLUICE_TOPIC_CONFIGS = {"fsync", "message.key.index.enable"}


def test_every_standard_topic_config_is_described_with_kafkas_default(kafka):
    entries = describe(kafka, kafka.create_topic())
    own = SLUICE_TOPIC_CONFIGS if kafka.kind == "sluice" else set()
    assert set(entries) == set(KAFKA_TOPIC_CONFIGS) | own
    assert {key: entries[key].value for key in KAFKA_TOPIC_CONFIGS} == KAFKA_TOPIC_CONFIGS


@pytest.mark.parametrize("key, value", [
    ("segment.bytes", "1048575"), ("flush.messages", "0"), ("segment.index.bytes", "3"),
    ("compression.type", "brotli"), ("compression.gzip.level", "0"),
    ("compression.lz4.level", "18"), ("compression.zstd.level", "23"),
    ("min.cleanable.dirty.ratio", "1.5"), ("local.retention.ms", "-3"),
    ("follower.replication.throttled.replicas", "bogus"), ("preallocate", "yes"),
    ("max.compaction.lag.ms", "0"), ("message.timestamp.after.max.ms", "-1"),
    ("min.insync.replicas", "0"), ("remote.storage.enable", "true"),
    ("message.format.version", "3.0"), ("message.downconversion.enable", "true"),
])
def test_topic_config_values_kafka_refuses_are_invalid_config(kafka, key, value):
    assert create_error(kafka, NewTopic(kafka.name(), 1, 1, config={key: value}),
                        validate_only=True) == KafkaError.INVALID_CONFIG


@pytest.mark.parametrize("key, value", [
    ("segment.bytes", "1048576"), ("max.message.bytes", "0"), ("retention.bytes", "-5"),
    ("compression.type", "zstd"), ("compression.gzip.level", "9"), ("retention.ms", " 100"),
    ("follower.replication.throttled.replicas", "*"),
    ("leader.replication.throttled.replicas", "0:1,1:2"),
    ("unclean.leader.election.enable", "TRUE"), ("cleanup.policy", ""),
    ("min.insync.replicas", "2"), ("message.timestamp.before.max.ms", "0"),
])
def test_topic_config_values_kafka_accepts_are_accepted(kafka, key, value):
    assert create_error(kafka, NewTopic(kafka.name(), 1, 1, config={key: value}),
                        validate_only=True) is None


def test_describe_configs_lists_synonyms_as_kafka_does(kafka):
    name = kafka.create_topic(config={"retention.ms": "3600000", "segment.bytes": "2000000",
                                      "preallocate": "true"})
    entries = describe(kafka, name)
    synonyms = {key: [(s.name, s.value, s.source) for s in entry.synonyms.values()]
                for key, entry in entries.items()}
    topic, default = 1, 5  # DYNAMIC_TOPIC_CONFIG, DEFAULT_CONFIG
    assert synonyms["retention.ms"] == [("retention.ms", "3600000", topic)]
    assert synonyms["segment.bytes"] == [("segment.bytes", "2000000", topic),
                                         ("log.segment.bytes", "1073741824", default)]
    assert synonyms["preallocate"] == [("preallocate", "true", topic),
                                       ("log.preallocate", "false", default)]
    assert synonyms["cleanup.policy"] == [("log.cleanup.policy", "delete", default)]
    assert synonyms["max.message.bytes"] == [("message.max.bytes", "1048588", default)]
    assert synonyms["segment.ms"] == []
    assert synonyms["leader.replication.throttled.replicas"] == []
