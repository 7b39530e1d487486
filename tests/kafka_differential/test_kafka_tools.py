"""Kafka's own command-line tools (the classes behind bin/kafka-*.sh) against each broker.

What an operator types and reads: kafka-topics, kafka-console-producer/-consumer,
kafka-consumer-groups, kafka-configs, kafka-get-offsets, kafka-delete-records and
kafka-transactions. Each test asserts the exit code and the output Apache Kafka 4.1 gives, with
only what differs by nature normalized (the broker's id and address, generated ids, timestamps).

A JVM start costs a second or more, so each test walks through one tool's life cycle rather than
starting it once per assertion, and the tools' classes are shared from an archive. What Sluice is
known to answer differently is checked at the end of a test or in a test of its own, so that one
difference hides no other step.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import ConfigResource

from kafka_wire import KafkaWire
from librdkafka_client import read_to_end

from .test_java_client import probe, step

TOPICS = "org.apache.kafka.tools.TopicCommand"
CONSOLE_PRODUCER = "org.apache.kafka.tools.ConsoleProducer"
CONSOLE_CONSUMER = "org.apache.kafka.tools.consumer.ConsoleConsumer"
CONSUMER_GROUPS = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"
CONFIGS = "kafka.admin.ConfigCommand"
GET_OFFSETS = "org.apache.kafka.tools.GetOffsetShell"
DELETE_RECORDS = "org.apache.kafka.tools.DeleteRecordsCommand"
TRANSACTIONS = "org.apache.kafka.tools.TransactionsCommand"
SHARE_GROUPS = "org.apache.kafka.tools.consumer.group.ShareGroupCommand"
FEATURES = "org.apache.kafka.tools.FeatureCommand"
CONSOLE_SHARE_CONSUMER = "org.apache.kafka.tools.consumer.ConsoleShareConsumer"

# A console consumer waits for --max-messages forever unless told otherwise.
CONSUMER_TIMEOUT_MS = "20000"


class ClassArchive:
    """The JVM's class data archive of the tools' classes: dumped by the module's first tool
    run, mapped by the others, it halves the start of each of the file's many JVMs."""

    def __init__(self, path: Path):
        self.path = path
        self.dump_tried = False

    def jvm_args(self) -> list[str]:
        # No JVM log on stdout (an unusable archive is a warning, then ignored); a JVM without
        # dynamic archives ignores the options.
        args = ["-XX:+IgnoreUnrecognizedVMOptions", "-Xshare:auto", "-Xlog:disable"]
        if self.path.exists():
            return args + [f"-XX:SharedArchiveFile={self.path}"]
        if self.dump_tried:  # a dump costs seconds: once, even when it did not work
            return args
        self.dump_tried = True
        return args + [f"-XX:ArchiveClassesAtExit={self.path}"]


CLASS_ARCHIVE: ClassArchive | None = None


@pytest.fixture(scope="module", autouse=True)
def class_archive(tmp_path_factory):
    global CLASS_ARCHIVE
    CLASS_ARCHIVE = ClassArchive(tmp_path_factory.mktemp("jvm") / "kafka-tools.jsa")
    yield
    CLASS_ARCHIVE.path.unlink(missing_ok=True)
    CLASS_ARCHIVE = None


def run(kafka, main_class, *args, rc=0, stdin_text=None):
    """The tool's result, after checking its exit code."""
    result = tool(kafka, main_class, *args, stdin_text=stdin_text)
    assert result.returncode == rc, (
        f"{main_class.rsplit('.', 1)[-1]} {' '.join(map(str, args))}: exit code "
        f"{result.returncode}, expected {rc}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def tool(kafka, main_class, *args, stdin_text=None):
    jvm_args = CLASS_ARCHIVE.jvm_args() if CLASS_ARCHIVE else []
    return kafka.tool(main_class, *args, stdin_text=stdin_text, jvm_args=jvm_args)


def broker_id(kafka) -> int:
    brokers = kafka.admin().list_topics(timeout=10).brokers
    assert len(brokers) == 1, brokers
    return next(iter(brokers))


def produce(kafka, topic, partition, count, timestamps=None, **conf):
    producer = kafka.producer(**conf)
    for i in range(count):
        kw = {"timestamp": timestamps[i]} if timestamps else {}
        producer.produce(topic, value=f"m{i}".encode(), key=f"k{i}".encode(),
                         partition=partition, **kw)
    assert producer.flush(30) == 0


def committed(kafka, group) -> dict:
    """The group's committed offsets by partition, as the admin API reads them."""
    future = kafka.admin().list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])
    offsets = future[group].result(timeout=30).topic_partitions
    return {tp.partition: tp.offset for tp in offsets if tp.offset >= 0}


def table(text, first_column) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the whitespace-aligned table whose header starts with
    `first_column` (kafka-consumer-groups' output)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.split()[:1] == [first_column]:
            rows = [row.split() for row in lines[i + 1:] if row.strip()]
            return line.split(), rows
    raise AssertionError(f"no table with a {first_column} column in:\n{text}")


def rows_by_partition(text) -> dict:
    header, rows = table(text, "GROUP")
    return {int(row[header.index("PARTITION")]): dict(zip(header, row)) for row in rows}


def topic_description(text) -> tuple[dict, list[str]]:
    """kafka-topics --describe of one topic: its header fields, and its partition lines."""
    lines = text.rstrip("\n").split("\n")
    header = dict(field.split(": ", 1) if ": " in field else (field.rstrip(":"), "")
                  for field in lines[0].split("\t"))
    return header, lines[1:]


def dynamic_configs(text) -> dict:
    """kafka-configs --describe: each `  key=value sensitive=... synonyms={...}` line by key."""
    configs = {}
    for line in text.splitlines()[1:]:
        match = re.fullmatch(r"  ([^=]+)=(.*) sensitive=(true|false) synonyms=\{(.*)\}", line)
        assert match, f"unexpected kafka-configs line {line!r} in:\n{text}"
        configs[match[1]] = match[2]
    return configs


# ---- kafka-topics


def test_kafka_topics_create_list_alter_delete(kafka):
    name = kafka.name("tools")
    assert run(kafka, TOPICS, "--create", "--topic", name, "--partitions", "2",
               "--config", "retention.ms=3600000").stdout == f"Created topic {name}.\n"
    assert name in run(kafka, TOPICS, "--list").stdout.splitlines()

    assert run(kafka, TOPICS, "--alter", "--topic", name, "--partitions", "5").stdout == ""
    header, partitions = topic_description(run(kafka, TOPICS, "--describe", "--topic", name).stdout)
    assert header["PartitionCount"] == "5"
    assert "retention.ms=3600000" in header["Configs"].split(","), header
    assert [line.split("\t")[2] for line in partitions] == [f"Partition: {p}" for p in range(5)]

    assert run(kafka, TOPICS, "--delete", "--topic", name).stdout == ""
    # DeleteTopics answers before every listener's metadata has caught up on Kafka.
    deadline = time.monotonic() + 30
    while name in kafka.admin().list_topics(timeout=10).topics and time.monotonic() < deadline:
        time.sleep(0.2)
    assert name not in kafka.admin().list_topics(timeout=10).topics


def test_kafka_topics_describe_shows_partitions_replicas_and_configs(kafka):
    name = kafka.create_topic(partitions=3, config={"retention.ms": "3600000",
                                                    "max.message.bytes": "20000"})
    result = run(kafka, TOPICS, "--describe", "--topic", name)
    header, partitions = topic_description(result.stdout)
    assert header["Topic"] == name
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", header["TopicId"]) and \
        header["TopicId"] != "AAAAAAAAAAAAAAAAAAAAAA", header
    assert header["PartitionCount"] == "3" and header["ReplicationFactor"] == "1"
    configs = dict(entry.split("=", 1) for entry in header["Configs"].split(",") if entry)
    # Kafka 4 lists min.insync.replicas for every topic: with eligible leader replicas on, the
    # cluster holds it as a dynamic cluster-wide default (KIP-966), not as the topic's own.
    configs.pop("min.insync.replicas", None)
    assert configs == {"retention.ms": "3600000", "max.message.bytes": "20000"}, result.stdout
    me = broker_id(kafka)
    # Elr and LastKnownElr are empty lists from DescribeTopicPartitions; N/A means the tool had
    # to fall back to Metadata, which has no such fields.
    assert partitions == [f"\tTopic: {name}\tPartition: {p}\tLeader: {me}\tReplicas: {me}"
                          f"\tIsr: {me}\tElr: \tLastKnownElr: " for p in range(3)], result.stdout


# (id, partitions of an existing topic or None, arguments, Kafka's message or None for success)
TOPIC_COMMAND_ERRORS = [
    ("create-existing", 2, ["--create", "--topic", "{name}", "--partitions", "2"],
     "Topic '{name}' already exists."),
    ("create-if-not-exists", 2, ["--create", "--if-not-exists", "--topic", "{name}"], None),
    ("create-three-replicas", None, ["--create", "--topic", "{name}", "--replication-factor", "3"],
     "Unable to replicate the partition 3 time(s): The target replication factor of 3 cannot be "
     "reached because only 1 broker(s) are registered."),
    ("create-unknown-config", None, ["--create", "--topic", "{name}", "--config", "no.such=1"],
     "Unknown topic config name: no.such"),
    ("alter-to-fewer-partitions", 4, ["--alter", "--topic", "{name}", "--partitions", "3"],
     "The topic {name} currently has 4 partition(s); 3 would not be an increase."),
    ("alter-to-same-partitions", 2, ["--alter", "--topic", "{name}", "--partitions", "2"],
     "Topic already has 2 partition(s)."),
]


@pytest.mark.parametrize("partitions,args,message",
                         [case[1:] for case in TOPIC_COMMAND_ERRORS],
                         ids=[case[0] for case in TOPIC_COMMAND_ERRORS])
def test_kafka_topics_errors(kafka, partitions, args, message):
    name = kafka.create_topic(partitions=partitions) if partitions else kafka.name("tools")
    args = [arg.format(name=name) for arg in args]
    result = run(kafka, TOPICS, *args, rc=0 if message is None else 1)
    if message is None:
        assert result.stdout == ""
    else:
        assert result.stdout == f"Error while executing topic command : " \
                                f"{message.format(name=name)}\n"
    if partitions is None:
        assert name not in kafka.admin().list_topics(timeout=10).topics


# ---- kafka-console-producer and kafka-console-consumer


def test_console_producer_lines_come_back_from_console_consumer(kafka):
    name = kafka.create_topic()
    before_ms = int(time.time() * 1000)
    lines = "h1:x,h2:y\tk1:v1\nh3:z\tk2:v2:with a colon\nh4:\tk3:hello world\n"
    result = run(kafka, CONSOLE_PRODUCER, "--topic", name,
                 "--property", "parse.key=true", "--property", "key.separator=:",
                 "--property", "parse.headers=true", stdin_text=lines)
    assert result.stdout == ""
    after_ms = int(time.time() * 1000)

    result = run(kafka, CONSOLE_CONSUMER, "--topic", name, "--from-beginning",
                 "--max-messages", "3", "--timeout-ms", CONSUMER_TIMEOUT_MS,
                 "--property", "print.key=true", "--property", "print.timestamp=true",
                 "--property", "print.partition=true", "--property", "print.offset=true",
                 "--property", "print.headers=true")
    assert "Processed a total of 3 messages" in result.stderr
    expected = [("h1:x,h2:y", "k1", "v1"), ("h3:z", "k2", "v2:with a colon"),
                ("h4:", "k3", "hello world")]
    got = result.stdout.splitlines()
    assert len(got) == 3, result.stdout
    for offset, (line, (headers, key, value)) in enumerate(zip(got, expected)):
        match = re.fullmatch(r"CreateTime:(\d+)\t(.*)", line)
        assert match and before_ms - 1000 <= int(match[1]) <= after_ms + 1000, line
        assert match[2] == f"Partition:0\tOffset:{offset}\t{headers}\t{key}\t{value}"

    # From an offset of one partition, with the printed key separator of one's choice.
    result = run(kafka, CONSOLE_CONSUMER, "--topic", name, "--partition", "0", "--offset", "1",
                 "--max-messages", "2", "--timeout-ms", CONSUMER_TIMEOUT_MS,
                 "--property", "print.key=true", "--property", "key.separator==")
    assert result.stdout.splitlines() == ["k2=v2:with a colon", "k3=hello world"]
    assert "Processed a total of 2 messages" in result.stderr


# ---- kafka-consumer-groups


def join_and_commit(kafka, topic, group, offsets, partitions, **conf):
    """A consumer of `group` subscribed to `topic` until it owns every partition, which then
    commits `offsets` ({partition: offset}); returned still in the group."""
    consumer = kafka.consumer(**{"group.id": group, **conf})
    consumer.subscribe([topic])
    deadline = time.monotonic() + 30
    while len(consumer.assignment()) < partitions and time.monotonic() < deadline:
        consumer.poll(0.2)
    assert len(consumer.assignment()) == partitions, consumer.assignment()
    consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()],
                    asynchronous=False)
    return consumer


def reset(kafka, group, *args):
    """kafka-consumer-groups --reset-offsets: NEW-OFFSET by partition."""
    result = run(kafka, CONSUMER_GROUPS, "--reset-offsets", "--group", group, *args)
    header, rows = table(result.stdout, "GROUP")
    assert header == ["GROUP", "TOPIC", "PARTITION", "NEW-OFFSET"], result.stdout
    return {int(row[2]): int(row[3]) for row in rows}


def test_consumer_groups_describe_reset_and_delete(kafka):
    topic = kafka.create_topic(partitions=2)
    produce(kafka, topic, 0, 5)
    produce(kafka, topic, 1, 3)
    group = kafka.name("g")
    join_and_commit(kafka, topic, group, {0: 3, 1: 1}, partitions=2).close()

    assert group in run(kafka, CONSUMER_GROUPS, "--list").stdout.splitlines()

    result = run(kafka, CONSUMER_GROUPS, "--describe", "--group", group)
    assert f"Consumer group '{group}' has no active members." in result.stderr
    header, _ = table(result.stdout, "GROUP")
    assert header == ["GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG",
                      "CONSUMER-ID", "HOST", "CLIENT-ID"]
    rows = rows_by_partition(result.stdout)
    assert {p: (r["TOPIC"], r["CURRENT-OFFSET"], r["LOG-END-OFFSET"], r["LAG"], r["CONSUMER-ID"],
                r["HOST"], r["CLIENT-ID"]) for p, r in rows.items()} == {
        0: (topic, "3", "5", "2", "-", "-", "-"),
        1: (topic, "1", "3", "2", "-", "-", "-")}, result.stdout

    result = run(kafka, CONSUMER_GROUPS, "--describe", "--group", group, "--state")
    state_line = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(rf"{re.escape(group)} +{re.escape(kafka.bootstrap)} +"
                        rf"\({broker_id(kafka)}\) +- +Empty +0", state_line), result.stdout

    # A dry run shows what would be committed and commits nothing.
    assert reset(kafka, group, "--topic", topic, "--to-earliest", "--dry-run") == {0: 0, 1: 0}
    assert committed(kafka, group) == {0: 3, 1: 1}
    assert reset(kafka, group, "--topic", topic, "--to-earliest", "--execute") == {0: 0, 1: 0}
    assert committed(kafka, group) == {0: 0, 1: 0}
    assert reset(kafka, group, "--topic", f"{topic}:0", "--to-offset", "4", "--execute") == \
        {0: 4}
    assert committed(kafka, group) == {0: 4, 1: 0}
    # Past either end of the log the tool clamps to it (and says so on stderr).
    result = tool(kafka, CONSUMER_GROUPS, "--reset-offsets", "--group", group, "--all-topics",
                  "--shift-by", "2", "--execute")
    assert result.returncode == 0, result.stderr
    assert f"New offset (6) is higher than latest offset for topic partition {topic}-0. " \
           f"Value will be set to 5" in result.stderr
    assert committed(kafka, group) == {0: 5, 1: 2}
    assert reset(kafka, group, "--topic", topic, "--shift-by", "-3", "--execute") == {0: 2, 1: 0}
    assert reset(kafka, group, "--topic", topic, "--to-latest", "--dry-run") == {0: 5, 1: 3}
    assert committed(kafka, group) == {0: 2, 1: 0}

    rows = rows_by_partition(run(kafka, CONSUMER_GROUPS, "--describe", "--group", group).stdout)
    assert {p: (r["CURRENT-OFFSET"], r["LOG-END-OFFSET"], r["LAG"]) for p, r in rows.items()} == \
        {0: ("2", "5", "3"), 1: ("0", "3", "3")}

    result = run(kafka, CONSUMER_GROUPS, "--delete", "--group", group)
    assert result.stdout.strip() == \
        f"Deletion of requested consumer groups ('{group}') was successful."
    listed = kafka.admin().list_consumer_groups().result(timeout=30).valid
    assert group not in [listing.group_id for listing in listed]


def test_consumer_groups_with_an_active_member(kafka):
    topic = kafka.create_topic()
    produce(kafka, topic, 0, 4)
    group = kafka.name("g")
    consumer = join_and_commit(kafka, topic, group, {0: 1}, partitions=1,
                               **{"client.id": "tools-client"})

    result = run(kafka, CONSUMER_GROUPS, "--describe", "--group", group, "--state")
    assert re.fullmatch(rf"{re.escape(group)} +{re.escape(kafka.bootstrap)} +"
                        rf"\({broker_id(kafka)}\) +range +Stable +1",
                        result.stdout.strip().splitlines()[-1]), result.stdout

    # Offsets of a group with members cannot be reset, nor can the group be deleted: the tool
    # says so and exits 0 all the same.
    result = run(kafka, CONSUMER_GROUPS, "--reset-offsets", "--group", group, "--topic", topic,
                 "--to-earliest", "--execute")
    assert f"Error: Assignments can only be reset if the group '{group}' is inactive, but the " \
           f"current state is Stable." in result.stdout
    result = run(kafka, CONSUMER_GROUPS, "--delete", "--group", group)
    assert f"* Group '{group}' could not be deleted due to: " \
           f"org.apache.kafka.common.errors.GroupNotEmptyException: The group is not empty." \
           in result.stdout
    assert committed(kafka, group) == {0: 1}

    consumer.poll(0.1)  # still a member: a heartbeat is due soon
    result = run(kafka, CONSUMER_GROUPS, "--describe", "--group", group)
    row = rows_by_partition(result.stdout)[0]
    assert (row["CURRENT-OFFSET"], row["LOG-END-OFFSET"], row["LAG"]) == ("1", "4", "3")
    assert row["CONSUMER-ID"].startswith("tools-client-") and row["CLIENT-ID"] == "tools-client"
    # Kafka shows a member's address as Java prints an InetAddress without a host name.
    assert row["HOST"] == "/127.0.0.1", result.stdout


def test_consumer_groups_delete_offsets(kafka):
    topic = kafka.create_topic(partitions=2)
    produce(kafka, topic, 0, 2)
    group = kafka.name("g")
    join_and_commit(kafka, topic, group, {0: 2, 1: 0}, partitions=2).close()
    result = run(kafka, CONSUMER_GROUPS, "--delete-offsets", "--group", group, "--topic", topic)
    assert f"Request succeeded for deleting offsets from group {group}." in result.stdout, \
        result.stdout
    header, rows = table(result.stdout, "TOPIC")
    assert header == ["TOPIC", "PARTITION", "STATUS"]
    assert sorted(rows) == [[topic, "0", "Successful"], [topic, "1", "Successful"]]
    assert committed(kafka, group) == {}


def test_consumer_groups_describe_of_an_unknown_group(kafka):
    group = kafka.name("g")
    result = run(kafka, CONSUMER_GROUPS, "--describe", "--group", group)
    assert result.stdout.strip() == \
        f"Error: Executing consumer group command failed due to " \
        f"org.apache.kafka.common.errors.GroupIdNotFoundException: Group {group} not found."


# ---- kafka-configs


def test_kafka_configs_add_and_delete_topic_configs(kafka):
    name = kafka.create_topic(config={"retention.ms": "3600000", "max.message.bytes": "20000"})
    describe = ["--entity-type", "topics", "--entity-name", name, "--describe"]
    alter = ["--entity-type", "topics", "--entity-name", name, "--alter"]
    result = run(kafka, CONFIGS, *describe)
    assert result.stdout.splitlines()[0] == f"Dynamic configs for topic {name} are:"
    assert dynamic_configs(result.stdout) == {"max.message.bytes": "20000",
                                              "retention.ms": "3600000"}

    result = run(kafka, CONFIGS, *alter,
                 "--add-config", "retention.ms=120000,segment.bytes=2000000")
    assert result.stdout == f"Completed updating config for topic {name}.\n"
    result = run(kafka, CONFIGS, *alter, "--delete-config", "max.message.bytes")
    assert result.stdout == f"Completed updating config for topic {name}.\n"
    result = run(kafka, CONFIGS, *describe)
    assert dynamic_configs(result.stdout) == {"retention.ms": "120000", "segment.bytes": "2000000"}
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    entry = kafka.admin().describe_configs([resource])[resource].result(30)["max.message.bytes"]
    assert entry.value == "1048588" and entry.is_default
    # Each config with its synonyms, most specific first: the topic's own value, then the broker
    # default it overrides (under the broker's name for it).
    assert result.stdout.splitlines()[1:] == [
        "  retention.ms=120000 sensitive=false synonyms={DYNAMIC_TOPIC_CONFIG:retention.ms=120000}",
        "  segment.bytes=2000000 sensitive=false synonyms={DYNAMIC_TOPIC_CONFIG:segment.bytes="
        "2000000, DEFAULT_CONFIG:log.segment.bytes=1073741824}",
    ], result.stdout


# What `kafka-configs --describe --all` lists for a topic created without configs on a Kafka 4.1
# node with the broker defaults (min.insync.replicas is the cluster-wide dynamic default).
KAFKA_TOPIC_CONFIG_DEFAULTS = {
    "cleanup.policy": "delete",
    "compression.gzip.level": "-1",
    "compression.lz4.level": "9",
    "compression.type": "producer",
    "compression.zstd.level": "3",
    "delete.retention.ms": "86400000",
    "file.delete.delay.ms": "60000",
    "flush.messages": "9223372036854775807",
    "flush.ms": "9223372036854775807",
    "follower.replication.throttled.replicas": "",
    "index.interval.bytes": "4096",
    "leader.replication.throttled.replicas": "",
    "local.retention.bytes": "-2",
    "local.retention.ms": "-2",
    "max.compaction.lag.ms": "9223372036854775807",
    "max.message.bytes": "1048588",
    "message.timestamp.after.max.ms": "3600000",
    "message.timestamp.before.max.ms": "9223372036854775807",
    "message.timestamp.type": "CreateTime",
    "min.cleanable.dirty.ratio": "0.5",
    "min.compaction.lag.ms": "0",
    "min.insync.replicas": "1",
    "preallocate": "false",
    "remote.log.copy.disable": "false",
    "remote.log.delete.on.disable": "false",
    "remote.storage.enable": "false",
    "retention.bytes": "-1",
    "retention.ms": "604800000",
    "segment.bytes": "1073741824",
    "segment.index.bytes": "10485760",
    "segment.jitter.ms": "0",
    "segment.ms": "604800000",
    "unclean.leader.election.enable": "false",
}


def test_kafka_configs_describe_all_lists_every_topic_config(kafka):
    name = kafka.create_topic()
    result = run(kafka, CONFIGS, "--entity-type", "topics", "--entity-name", name,
                 "--describe", "--all")
    assert result.stdout.splitlines()[0] == f"All configs for topic {name} are:"
    configs = dynamic_configs(result.stdout)
    missing = sorted(set(KAFKA_TOPIC_CONFIG_DEFAULTS) - set(configs))
    assert not missing, f"not described: {missing}"
    assert {key: configs[key] for key in KAFKA_TOPIC_CONFIG_DEFAULTS} == \
        KAFKA_TOPIC_CONFIG_DEFAULTS


# (id, arguments after --alter, Kafka's exception in the tool's "Caused by:" line)
CONFIG_COMMAND_ERRORS = [
    ("bad-value", ["--add-config", "retention.ms=abc"],
     "org.apache.kafka.common.errors.InvalidConfigurationException: Invalid value abc for "
     "configuration retention.ms: Not a number of type LONG"),
    ("unknown-config", ["--add-config", "no.such=1"],
     "org.apache.kafka.common.errors.InvalidConfigurationException: Unknown topic config name: "
     "no.such"),
]


@pytest.mark.parametrize("args,error", [case[1:] for case in CONFIG_COMMAND_ERRORS],
                         ids=[case[0] for case in CONFIG_COMMAND_ERRORS])
def test_kafka_configs_refuses_a_bad_topic_config(kafka, args, error):
    name = kafka.create_topic()
    result = run(kafka, CONFIGS, "--entity-type", "topics", "--entity-name", name, "--alter",
                 *args, rc=1)
    assert f"Caused by: {error}" in result.stderr.splitlines(), result.stderr
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    entries = kafka.admin().describe_configs([resource])[resource].result(30)
    assert entries["retention.ms"].is_default and "no.such" not in entries


# ---- kafka-get-offsets and kafka-delete-records


def test_get_offsets_latest_earliest_by_timestamp_and_max_timestamp(kafka):
    name = kafka.create_topic(partitions=3)
    base = int(time.time() * 1000) - 60_000
    produce(kafka, name, 0, 5, timestamps=[base + t for t in (1000, 5000, 3000, 2000, 4000)])
    produce(kafka, name, 1, 2, timestamps=[base + 1000, base + 2000])

    def offsets(*args):
        return run(kafka, GET_OFFSETS, "--topic", name, *args).stdout.splitlines()

    assert offsets() == [f"{name}:0:5", f"{name}:1:2", f"{name}:2:0"]
    assert offsets("--time", "-2") == [f"{name}:0:0", f"{name}:1:0", f"{name}:2:0"]
    assert offsets("--time", "latest", "--partitions", "0,2") == [f"{name}:0:5", f"{name}:2:0"]
    # The first record at or after a timestamp; partitions without one are left out.
    assert offsets("--time", str(base + 2500)) == [f"{name}:0:1"]
    # The record with the largest timestamp; an empty partition has none.
    assert offsets("--time", "max-timestamp") == [f"{name}:0:1", f"{name}:1:1"]


def test_delete_records_from_an_offsets_file(kafka, tmp_path):
    name = kafka.create_topic(partitions=3)
    produce(kafka, name, 0, 5)
    produce(kafka, name, 1, 3)
    offsets_file = tmp_path / "offsets.json"
    offsets_file.write_text(json.dumps({"version": 1, "partitions": [
        {"topic": name, "partition": 0, "offset": 2},
        {"topic": name, "partition": 1, "offset": -1},  # -1: up to the high watermark
        {"topic": name, "partition": 2, "offset": 1},   # past the end of an empty partition
    ]}))
    result = run(kafka, DELETE_RECORDS, "--offset-json-file", offsets_file)
    lines = result.stdout.splitlines()
    assert lines[:2] == ["Executing records delete operation",
                         "Records delete operation completed:"], result.stdout
    # One line a partition, in no particular order.
    assert sorted(lines[2:]) == [
        f"partition: {name}-0\tlow_watermark: 2",
        f"partition: {name}-1\tlow_watermark: 3",
        f"partition: {name}-2\terror: org.apache.kafka.common.errors.OffsetOutOfRangeException: "
        f"The requested offset is not within the range of offsets maintained by the server.",
    ], result.stdout
    result = run(kafka, GET_OFFSETS, "--topic", name, "--time", "earliest")
    assert result.stdout.splitlines() == [f"{name}:0:2", f"{name}:1:3", f"{name}:2:0"]


# ---- kafka-transactions


def test_transactions_list_and_describe_an_open_transaction(kafka):
    # Before any transaction, so that a broker without the API fails here rather than in the
    # producer's timeouts.
    result = run(kafka, TRANSACTIONS, "list")
    assert [cell.strip() for cell in result.stdout.splitlines()[0].split("\t")] == \
        ["TransactionalId", "Coordinator", "ProducerId", "TransactionState", ""]

    topic = kafka.create_topic()
    transactional_id = kafka.name("tx")
    producer = kafka.producer(**{"transactional.id": transactional_id})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, value=b"in a transaction", partition=0)
    assert producer.flush(30) == 0

    rows = [[cell.strip() for cell in line.split("\t")]
            for line in run(kafka, TRANSACTIONS, "list").stdout.splitlines()]
    mine = [row for row in rows if row[0] == transactional_id]
    assert len(mine) == 1, rows
    assert mine[0][1] == str(broker_id(kafka)) and mine[0][3] == "Ongoing", mine
    producer_id = mine[0][2]

    result = run(kafka, TRANSACTIONS, "describe", "--transactional-id", transactional_id)
    header, row = [line.split("\t") for line in result.stdout.splitlines()]
    described = {key.strip(): value.strip() for key, value in zip(header, row)}
    assert described["TransactionalId"] == transactional_id
    assert described["ProducerId"] == producer_id
    assert described["TransactionState"] == "Ongoing"
    assert described["TopicPartitions"] == f"{topic}-0"
    producer.commit_transaction(30)


def test_transactions_abort_a_hanging_transaction(kafka):
    """`kafka-transactions abort --start-offset` ends a transaction its producer left open
    (found through DescribeProducers, ended with WriteTxnMarkers): the last stable offset moves
    past it and read_committed consumers skip its records."""
    topic = kafka.create_topic()
    hanging = kafka.producer(**{"transactional.id": kafka.name("tx"),
                                "transaction.timeout.ms": 120000})
    hanging.init_transactions(30)
    hanging.begin_transaction()
    hanging.produce(topic, value=b"hanging", partition=0)
    assert hanging.flush(30) == 0
    produce(kafka, topic, 0, 2)

    def last_stable_and_high_watermark():
        with KafkaWire(kafka.bootstrap) as wire:
            return (wire.list_offset(topic, 0, -1, isolation_level=1).offset,
                    wire.list_offset(topic, 0, -1).offset)

    assert last_stable_and_high_watermark() == (0, 3)
    def transaction_starts():
        rows = run(kafka, TRANSACTIONS, "describe-producers", "--topic", topic,
                   "--partition", "0").stdout.splitlines()[1:]
        return sorted(row.split("\t")[5].strip() for row in rows)

    assert transaction_starts() == ["0"]

    run(kafka, TRANSACTIONS, "abort", "--topic", topic, "--partition", "0",
        "--start-offset", "0")
    # The marker took offset 3.
    assert last_stable_and_high_watermark() == (4, 4)
    values = [m.value() for m in read_to_end(kafka.bootstrap, topic, 1, kafka.name("read"))]
    assert b"hanging" not in values and len(values) == 2
    assert transaction_starts() == ["None"]


def test_transactions_run_at_version_2_and_every_end_moves_the_epoch_on(kafka):
    """Both brokers finalize the feature transaction.version at 2 (KIP-890 part 2), so the
    Java client 4.1 sends no AddPartitionsToTxn (Produce v12 adds the partition) and every
    EndTxn (v5) ends the transaction under the next epoch: two producers of one transactional
    id, one committing and one aborting, leave the id at epoch 3 (InitProducerId 0, commit 1,
    InitProducerId 2, abort 3), and the abort marker carries that epoch."""
    lines = run(kafka, FEATURES, "describe").stdout.splitlines()
    [transaction_version] = [line for line in lines
                             if line.startswith("Feature: transaction.version\t")]
    fields = dict(field.split(": ", 1) for field in transaction_version.split("\t"))
    assert (fields["SupportedMaxVersion"], fields["FinalizedVersionLevel"]) == ("2", "2"), \
        transaction_version

    topic = kafka.create_topic()
    transactional_id = kafka.name("tx")
    lines = probe(kafka,
                  step("produce", topic=topic, count=2, headers=False,
                       transactional_id=transactional_id, end="commit"),
                  step("produce", topic=topic, count=1, headers=False,
                       transactional_id=transactional_id, end="abort"))
    assert [line.get("error") for line in lines if line.get("phase")] == [None, None]
    result = run(kafka, TRANSACTIONS, "describe", "--transactional-id", transactional_id)
    header, row = [line.split("\t") for line in result.stdout.splitlines()]
    described = {key.strip(): value.strip() for key, value in zip(header, row)}
    assert (described["ProducerEpoch"], described["TransactionState"]) == \
        ("3", "CompleteAbort"), described
    result = run(kafka, TRANSACTIONS, "describe-producers", "--topic", topic,
                 "--partition", "0")
    header, *rows = [[cell.strip() for cell in line.split("\t")]
                     for line in result.stdout.splitlines()]
    assert len(rows) == 1, result.stdout
    producer = dict(zip(header, rows[0]))
    assert (producer["ProducerId"], producer["ProducerEpoch"],
            producer["CurrentTransactionStartOffset"]) == \
        (described["ProducerId"], "3", "None"), producer
    assert values_read_committed(kafka, topic) == [b"value-0", b"value-1"]


def values_read_committed(kafka, topic: str) -> list[bytes]:
    return [m.value() for m in read_to_end(kafka.bootstrap, topic, 1, kafka.name("read"))]


def test_transactions_describe_producers_of_a_partition(kafka):
    topic = kafka.create_topic()
    produce(kafka, topic, 0, 3, **{"enable.idempotence": True})
    result = run(kafka, TRANSACTIONS, "describe-producers", "--topic", topic, "--partition", "0")
    header, *rows = [[cell.strip() for cell in line.split("\t")]
                     for line in result.stdout.splitlines()]
    assert header == ["ProducerId", "ProducerEpoch", "LatestCoordinatorEpoch", "LastSequence",
                      "LastTimestamp", "CurrentTransactionStartOffset", ""], result.stdout
    assert len(rows) == 1, result.stdout
    described = dict(zip(header, rows[0]))
    assert described["ProducerEpoch"] == "0" and described["LastSequence"] == "2"
    assert described["CurrentTransactionStartOffset"] == "None"


def test_consumer_groups_with_a_member_on_the_consumer_protocol(kafka):
    """kafka-consumer-groups on a KIP-848 group (group.protocol=consumer): the tool reads it
    through ConsumerGroupDescribe."""
    topic = kafka.create_topic(partitions=2)
    produce(kafka, topic, 0, 4)
    group = kafka.name("g")
    consumer = join_and_commit(kafka, topic, group, {0: 1, 1: 0}, partitions=2,
                               **{"client.id": "kip848-client", "group.protocol": "consumer"})

    result = run(kafka, CONSUMER_GROUPS, "--describe", "--group", group, "--state")
    header, [row] = table(result.stdout, "GROUP")
    described = dict(zip(header, row))
    assert (described["ASSIGNMENT-STRATEGY"], described["STATE"], described["#MEMBERS"]) == \
        ("uniform", "Stable", "1"), result.stdout
    result = run(kafka, CONSUMER_GROUPS, "--describe", "--group", group, "--members",
                 "--verbose")
    header, [row] = table(result.stdout, "GROUP")
    assert header == ["GROUP", "CONSUMER-ID", "HOST", "CLIENT-ID", "#PARTITIONS",
                      "CURRENT-EPOCH", "CURRENT-ASSIGNMENT", "TARGET-EPOCH",
                      "TARGET-ASSIGNMENT"], result.stdout
    member = dict(zip(header, row))
    assert {k: member[k] for k in header if k not in ("GROUP", "CONSUMER-ID")} == {
        "HOST": "/127.0.0.1", "CLIENT-ID": "kip848-client", "#PARTITIONS": "2",
        "CURRENT-EPOCH": "1", "CURRENT-ASSIGNMENT": f"{topic}:0,1", "TARGET-EPOCH": "1",
        "TARGET-ASSIGNMENT": f"{topic}:0,1"}, result.stdout
    rows = rows_by_partition(run(kafka, CONSUMER_GROUPS, "--describe", "--group", group).stdout)
    assert {p: (r["CURRENT-OFFSET"], r["LOG-END-OFFSET"], r["CLIENT-ID"])
            for p, r in rows.items()} == {0: ("1", "4", "kip848-client"),
                                          1: ("0", "0", "kip848-client")}

    result = run(kafka, CONSUMER_GROUPS, "--reset-offsets", "--group", group, "--topic", topic,
                 "--to-earliest", "--execute")
    assert f"Error: Assignments can only be reset if the group '{group}' is inactive, but the " \
           f"current state is Stable." in result.stdout
    assert committed(kafka, group) == {0: 1, 1: 0}
    consumer.close()
    assert reset(kafka, group, "--topic", topic, "--to-earliest", "--execute") == {0: 0, 1: 0}
    result = run(kafka, CONSUMER_GROUPS, "--delete", "--group", group)
    assert result.stdout.strip() == \
        f"Deletion of requested consumer groups ('{group}') was successful."


# ---- share groups: kafka-configs --entity-type groups, kafka-console-share-consumer,
# kafka-share-groups (--list, --describe, --delete-offsets, --delete)


def test_share_group_configured_consumed_described_and_deleted_with_the_tools(kafka):
    topic = kafka.create_topic()
    group = kafka.name("share")
    run(kafka, CONFIGS, "--alter", "--entity-type", "groups", "--entity-name", group,
        "--add-config", "share.auto.offset.reset=earliest")
    described = run(kafka, CONFIGS, "--describe", "--entity-type", "groups",
                    "--entity-name", group)
    assert dynamic_configs(described.stdout) == {"share.auto.offset.reset": "earliest"}
    unknown = kafka.name("none")
    described = run(kafka, CONFIGS, "--describe", "--entity-type", "groups",
                    "--entity-name", unknown)
    assert described.stdout.strip() == \
        f"The group '{unknown}' doesn't exist and doesn't have dynamic config."
    produce(kafka, topic, 0, 5)

    result = run(kafka, CONSOLE_SHARE_CONSUMER, "--topic", topic, "--group", group,
                 "--max-messages", "5", "--timeout-ms", CONSUMER_TIMEOUT_MS,
                 "--property", "print.key=true")
    assert result.stdout.splitlines() == [f"k{i}\tm{i}" for i in range(5)]
    assert "Processed a total of 5 messages" in result.stderr

    # They were acknowledged: a second consumer of the group gets nothing.
    again = run(kafka, CONSOLE_SHARE_CONSUMER, "--topic", topic, "--group", group,
                "--max-messages", "5", "--timeout-ms", "5000")
    assert again.stdout == "" and "Processed a total of 0 messages" in again.stderr

    assert group in run(kafka, SHARE_GROUPS, "--list").stdout.split()
    offsets = run(kafka, SHARE_GROUPS, "--describe", "--group", group)
    rows = rows_by_partition(offsets.stdout)
    assert list(rows) == [0]
    # Kafka 4.1 stores each acknowledgement with the start offset from before it, and the
    # tool shows what is stored: 0 there until a later acknowledgement; Sluice stores the
    # moved start offset before it answers.
    start = {"5"} if kafka.kind == "sluice" else {"0", "5"}
    assert rows[0]["TOPIC"] == topic and rows[0]["START-OFFSET"] in start, offsets.stdout
    state = run(kafka, SHARE_GROUPS, "--describe", "--group", group, "--state")
    header, rows = table(state.stdout, "GROUP")
    assert [dict(zip(header, row)) for row in rows] == \
        [{"GROUP": group, "COORDINATOR": rows[0][1], "(ID)": rows[0][2], "STATE": "Empty",
          "#MEMBERS": "0"}], state.stdout
    members = run(kafka, SHARE_GROUPS, "--describe", "--group", group, "--members")
    assert f"Share group '{group}' has no active members." in members.stderr

    # --delete-offsets (DeleteShareGroupOffsets): the topic's state goes, once.
    forgot = run(kafka, SHARE_GROUPS, "--delete-offsets", "--group", group, "--topic", topic)
    header, rows = table(forgot.stdout, "TOPIC")
    assert [dict(zip(header, row)) for row in rows] == \
        [{"TOPIC": topic, "STATUS": "Successful"}], forgot.stdout
    again = tool(kafka, SHARE_GROUPS, "--delete-offsets", "--group", group, "--topic", topic)
    assert "There is no offset information to delete." in again.stdout + again.stderr, again

    deleted = run(kafka, SHARE_GROUPS, "--delete", "--group", group)
    assert f"Deletion of requested share groups ('{group}') was successful." in \
        deleted.stdout, deleted.stdout
    assert group not in run(kafka, SHARE_GROUPS, "--list").stdout.split()
