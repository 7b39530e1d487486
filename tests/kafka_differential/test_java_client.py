"""The Java client (org.apache.kafka:kafka-clients 4.1.1) against both brokers.

tests/clients/java builds dev.sluice.probe.KafkaClientProbe, a program that runs the steps it is
given with the Java producer, consumer and admin client and prints one JSON object per result
(its class comment lists the steps). Each test runs it once or twice (a JVM start costs about a
second, so one run does several steps) and asserts what Apache Kafka answers.

The module is built (classes in target/classes, the jars they need in target/lib) with
    mvn -B -q -f tests/clients/java/pom.xml package
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, Producer

from required import missing

PROBE_DIR = Path(__file__).resolve().parents[1] / "clients" / "java"
PROBE_CLASSES = PROBE_DIR / "target" / "classes"
PROBE_LIB = PROBE_DIR / "target" / "lib"
PROBE_MAIN = "dev.sluice.probe.KafkaClientProbe"
PROBE_TIMEOUT_S = 120

# Explicit record timestamps: a fixed time in the past (2023-11-14), so that CreateTime records
# keep it and a broker that stamped its own clock on them would show.
T0 = 1_700_000_000_000
ZERO_UUID = "AAAAAAAAAAAAAAAAAAAAAA"
# The headers every probe record carries (KafkaClientProbe.produce): a repeated key, an empty
# value and a null value, in this order.
PROBE_HEADERS = [["dup", "first"], ["dup", "second"], ["empty", ""], ["null", None]]


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    return str(Path(home) / "bin" / "java") if home else "java"


def step(name: str, /, **args) -> list[str]:
    """One step of the probe's command line: `name key=value ...` (a keyword's `_` is `-`)."""
    words = [name]
    for key, value in args.items():
        if value is None:
            continue
        if "." not in key:
            key = key.replace("_", "-")
        if isinstance(value, bool):
            value = "true" if value else "false"
        words.append(f"{key}={value}")
    return words


def probe(kafka, *steps: list[str]) -> list[dict]:
    """Runs the steps in one JVM against `kafka`; the JSON lines it printed, in order."""
    if not (PROBE_CLASSES / "dev" / "sluice" / "probe" / "KafkaClientProbe.class").exists() \
            or not any(PROBE_LIB.glob("kafka-clients-*.jar")):
        missing(f"the Java client probe is not built in {PROBE_DIR}/target (build it with "
                f"`mvn -B -q -f tests/clients/java/pom.xml package`)")
    argv = []
    for words in steps:
        if argv:
            argv.append(";")
        argv.extend(words)
    result = subprocess.run(
        [java(), "-Xms32m", "-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC",
         "-cp", f"{PROBE_CLASSES}:{PROBE_LIB}/*", PROBE_MAIN, kafka.bootstrap, *argv],
        capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    lines = []
    for text in result.stdout.splitlines():
        try:
            lines.append(json.loads(text))
        except ValueError:
            raise AssertionError(f"the probe printed a line that is not JSON: {text!r}\n"
                                 f"stderr: {result.stderr[-3000:]}") from None
    fatal = [line for line in lines if "fatal" in line]
    if result.returncode != 0 or fatal:
        raise AssertionError(f"the probe failed (exit {result.returncode}): {fatal}\n"
                             f"argv: {argv}\nstderr: {result.stderr[-3000:]}")
    return lines


def sluice_lacks(request, kafka, reason: str):
    """Marks this run an expected failure on [sluice] only: a Kafka feature Sluice does not
    have yet (strict, so the mark must go once it does)."""
    if kafka.kind == "sluice":
        request.applymarker(pytest.mark.xfail(reason=reason, strict=True))


def only(lines: list[dict], name: str) -> list[dict]:
    return [line for line in lines if line["step"] == name]


def one(lines: list[dict], name: str) -> dict:
    found = only(lines, name)
    assert len(found) == 1, (name, lines)
    return found[0]


def error_of(line: dict):
    """(exception class, Kafka error name) of a step's line; (None, None) when it succeeded."""
    return line.get("error"), line.get("code")


def records_as_seen(lines: list[dict]) -> list[tuple]:
    return [(r["partition"], r["offset"], r["key"], r["value"]) for r in only(lines, "record")]


def test_idempotent_produce_assigns_offsets_in_order_and_the_consumer_sees_each_record(kafka):
    topic = kafka.create_topic()
    lines = probe(kafka,
                  step("produce", topic=topic, count=5, timestamp=T0),
                  step("consume", topic=topic, group=kafka.name("g"), count=5))
    produced = only(lines, "produce")
    assert [(p["partition"], p["offset"], p["timestamp"]) for p in produced] == \
        [(0, i, T0 + i * 1000) for i in range(5)]
    records = only(lines, "record")
    assert [(r["partition"], r["offset"]) for r in records] == [(0, i) for i in range(5)]
    for i, record in enumerate(records):
        assert record["timestamp"] == T0 + i * 1000
        assert record["timestamp_type"] == "CREATE_TIME"
        assert (record["key"], record["value"]) == (f"key-{i}", f"value-{i}")
        assert record["headers"] == [["index", str(i)], *PROBE_HEADERS]
        assert record["leader_epoch"] == 0


def test_idempotent_producer_with_many_batches_in_flight_leaves_no_gap_or_duplicate(kafka):
    topic = kafka.create_topic(partitions=3)
    count = 600
    lines = probe(kafka,
                  step("produce", topic=topic, count=count, headers=False, linger_ms=5,
                       **{"producer.batch.size": 1024,
                          "producer.max.in.flight.requests.per.connection": 5}),
                  step("consume", topic=topic, group=kafka.name("g"), count=count))
    produced = only(lines, "produce")
    assert all(p.get("error") is None for p in produced), produced[:3]
    by_partition = {}
    for p in produced:
        by_partition.setdefault(p["partition"], []).append(p["offset"])
    # Keys spread over every partition (murmur2), and each partition's offsets run 0..n-1 in
    # the order the records were sent.
    assert sorted(by_partition) == [0, 1, 2]
    for offsets in by_partition.values():
        assert offsets == list(range(len(offsets)))
    sent = {(p["partition"], p["offset"]): f"key-{p['index']}" for p in produced}
    seen = {(r["partition"], r["offset"]): r["key"] for r in only(lines, "record")}
    assert seen == sent


def test_log_append_time_topic_stamps_the_brokers_clock(kafka):
    topic = kafka.create_topic(config={"message.timestamp.type": "LogAppendTime"})
    before = int(time.time() * 1000)
    lines = probe(kafka,
                  # One batch (the producer lingers for it): one LogAppendTime for all three.
                  step("produce", topic=topic, count=3, timestamp=T0, headers=False,
                       linger_ms=200),
                  step("consume", topic=topic, group=kafka.name("g"), count=3),
                  step("list-offsets", topic=topic, spec="max-timestamp"))
    after = int(time.time() * 1000)
    produced = only(lines, "produce")
    assert [p["offset"] for p in produced] == [0, 1, 2]
    # The producer's callback carries the broker's LogAppendTime, not the record's own time.
    assert all(before - 1000 <= p["timestamp"] <= after for p in produced), produced
    records = only(lines, "record")
    assert [r["timestamp_type"] for r in records] == ["LOG_APPEND_TIME"] * 3
    assert [r["timestamp"] for r in records] == [p["timestamp"] for p in produced]
    assert len({p["timestamp"] for p in produced}) == 1
    # MAX_TIMESTAMP: the first record that has the highest timestamp.
    newest = one(lines, "list-offsets")
    assert (newest["offset"], newest["timestamp"]) == (0, produced[0]["timestamp"])


def test_group_commit_shows_in_list_consumer_group_offsets_and_describe(kafka):
    topic = kafka.create_topic()
    group = kafka.name("g")
    lines = probe(kafka,
                  step("produce", topic=topic, count=4, headers=False),
                  step("consume", topic=topic, group=group, count=4, keep=True,
                       client_id="probe-client"),
                  step("describe-group", group=group),
                  step("list-groups", group=group),
                  step("group-offsets", group=group),
                  step("delete-group", group=group),
                  step("close", group=group),
                  step("describe-group", group=group),
                  step("list-groups", group=group),
                  step("delete-group", group=group),
                  step("describe-group", group=group),
                  step("group-offsets", group=group))
    commit = one(lines, "commit")
    assert commit["positions"] == [{"topic": topic, "partition": 0, "offset": 4}]
    assert "error" not in commit

    stable, empty, gone = only(lines, "describe-group")
    assert stable["error"] is None
    assert (stable["state"], stable["type"], stable["simple"], stable["assignor"]) == \
        ("Stable", "Classic", False, "range")
    assert stable["coordinator"] is not None
    [member] = stable["members"]
    assert member["client_id"] == "probe-client"
    assert member["member_id"].startswith("probe-client-")
    assert member["group_instance_id"] is None
    assert member["assignment"] == [[topic, 0]]

    listed_stable, listed_empty = only(lines, "list-groups")
    assert listed_stable["groups"] == [{"group": group, "protocol": "consumer",
                                        "type": "Classic", "state": "Stable"}]
    assert listed_empty["groups"] == [{"group": group, "protocol": "consumer",
                                       "type": "Classic", "state": "Empty"}]

    committed, after_delete = only(lines, "group-offsets")
    assert committed["offsets"] == [{"topic": topic, "partition": 0, "offset": 4,
                                     "metadata": "", "leader_epoch": 0}]

    refused, deleted = only(lines, "delete-group")
    assert error_of(refused) == ("GroupNotEmptyException", "NON_EMPTY_GROUP")
    assert (empty["error"], empty["state"], empty["members"]) == (None, "Empty", [])
    assert (empty["type"], empty["assignor"]) == ("Classic", "")
    assert error_of(deleted) == (None, None)
    assert error_of(gone) == ("GroupIdNotFoundException", "GROUP_ID_NOT_FOUND")
    assert (after_delete["error"], after_delete["offsets"]) == (None, [])


def test_describe_groups_names_member_hosts_and_static_members_as_kafka_does(kafka):
    """A member's host is Kafka's InetAddress text ("/127.0.0.1"); a static member
    (group.instance.id) gets a member id that starts with its instance id, and it stays in the
    group when it closes (it sends no LeaveGroup) until its session times out."""
    topic = kafka.create_topic()
    dynamic, static = kafka.name("g"), kafka.name("g")
    instance = kafka.name("instance")
    lines = probe(kafka,
                  step("produce", topic=topic, count=1, headers=False),
                  step("consume", topic=topic, group=dynamic, count=1, keep=True,
                       client_id="dynamic-client"),
                  step("describe-group", group=dynamic),
                  step("consume", topic=topic, group=static, count=1, keep=True,
                       client_id="static-client", **{"consumer.group.instance.id": instance}),
                  step("describe-group", group=static),
                  step("close", group=static),
                  step("describe-group", group=static))
    described_dynamic, described_static, static_after_close = only(lines, "describe-group")
    [dynamic_member] = described_dynamic["members"]
    [static_member] = described_static["members"]
    seen = {
        "dynamic host": dynamic_member["host"],
        "dynamic member id from client id": dynamic_member["member_id"].startswith(
            "dynamic-client-"),
        "static host": static_member["host"],
        "static instance id": static_member["group_instance_id"],
        "static member id from instance id": static_member["member_id"].startswith(
            f"{instance}-"),
        "static member after close": (static_after_close["state"],
                                      [m["member_id"] for m in static_after_close["members"]]),
    }
    assert seen == {
        "dynamic host": "/127.0.0.1",
        "dynamic member id from client id": True,
        "static host": "/127.0.0.1",
        "static instance id": instance,
        "static member id from instance id": True,
        "static member after close": ("Stable", [static_member["member_id"]]),
    }


def test_produce_errors_the_broker_answers(kafka):
    """Broker-side refusals the producer's callback reports: a batch over the topic's
    max.message.bytes, and a timestamp more than log.message.timestamp.after.max.ms (one hour
    by default since Kafka 4.0) ahead of the broker's clock. An old timestamp is fine."""
    topic = kafka.create_topic(config={"max.message.bytes": "1000"})
    two_hours_ahead = int(time.time() * 1000) + 2 * 3600 * 1000
    lines = probe(kafka,
                  step("produce", topic=topic, count=1, headers=False, value_size=5000),
                  step("produce", topic=topic, count=1, headers=False,
                       timestamp=two_hours_ahead),
                  step("produce", topic=topic, count=1, headers=False, timestamp=1000),
                  step("consume", topic=topic, group=kafka.name("g"), count=1))
    too_large, ahead, old = only(lines, "produce")
    assert {"too large": error_of(too_large), "an hour ahead": error_of(ahead),
            "old": error_of(old)} == {
        "too large": ("RecordTooLargeException", "MESSAGE_TOO_LARGE"),
        "an hour ahead": ("InvalidTimestampException", "INVALID_TIMESTAMP"),
        "old": (None, None),
    }
    assert [(r["offset"], r["timestamp"]) for r in only(lines, "record")] == [(0, 1000)]


def test_consumer_group_protocol_group_is_described_as_a_consumer_group(kafka):
    """The consumer with group.protocol=consumer (KIP-848: ConsumerGroupHeartbeat)."""
    topic = kafka.create_topic(partitions=2)
    group = kafka.name("g")
    lines = probe(kafka,
                  step("produce", topic=topic, count=4, headers=False),
                  step("consume", topic=topic, group=group, count=4, protocol="consumer",
                       keep=True),
                  step("describe-group", group=group),
                  step("close", group=group),
                  step("describe-group", group=group),
                  step("list-groups", group=group),
                  step("group-offsets", group=group))
    consumed = one(lines, "consume")
    assert error_of(consumed) == (None, None), consumed
    assert sorted(records_as_seen(lines)) == \
        sorted((p["partition"], p["offset"], f"key-{p['index']}", f"value-{p['index']}")
               for p in only(lines, "produce"))
    assert one(lines, "consume")["assignment"] == [[topic, 0], [topic, 1]]
    stable, empty = only(lines, "describe-group")
    assert (stable["error"], stable["state"], stable["type"], stable["assignor"]) == \
        (None, "Stable", "Consumer", "uniform")
    [member] = stable["members"]
    assert member["assignment"] == [[topic, 0], [topic, 1]]
    assert (empty["state"], empty["type"], empty["members"]) == ("Empty", "Consumer", [])
    assert one(lines, "list-groups")["groups"] == [
        {"group": group, "protocol": "consumer", "type": "Consumer", "state": "Empty"}]
    committed = one(lines, "group-offsets")["offsets"]
    positions = {(c["partition"], c["offset"]) for c in one(lines, "commit")["positions"]}
    assert {(c["partition"], c["offset"]) for c in committed} == positions
    assert sum(offset for _, offset in positions) == 4


def test_a_group_resumes_from_the_offset_an_admin_set(kafka):
    topic = kafka.create_topic()
    group = kafka.name("g")
    lines = probe(kafka,
                  step("produce", topic=topic, count=5, headers=False),
                  step("alter-group-offsets", group=group, topic=topic, offset=3,
                       metadata="set-by-admin"),
                  step("group-offsets", group=group),
                  step("describe-group", group=group),
                  step("consume", topic=topic, group=group, count=2),
                  step("group-offsets", group=group))
    assert error_of(one(lines, "alter-group-offsets")) == (None, None)
    altered, consumed = only(lines, "group-offsets")
    assert altered["offsets"] == [{"topic": topic, "partition": 0, "offset": 3,
                                   "metadata": "set-by-admin", "leader_epoch": None}]
    # A group that only has offsets is a simple, empty classic group.
    described = one(lines, "describe-group")
    assert (described["state"], described["type"], described["simple"], described["members"]) \
        == ("Empty", "Classic", True, [])
    assert [r["offset"] for r in only(lines, "record")] == [3, 4]
    assert consumed["offsets"] == [{"topic": topic, "partition": 0, "offset": 5,
                                    "metadata": "", "leader_epoch": 0}]


def test_a_committed_offset_out_of_range_resets_as_the_policy_says(kafka):
    topic = kafka.create_topic()
    early, fail, none, low = (kafka.name("g") for _ in range(4))
    lines = probe(kafka,
                  step("produce", topic=topic, count=3, headers=False),
                  # Committed past the end: reset to the earliest offset, or fail with
                  # auto.offset.reset=none.
                  step("alter-group-offsets", group=early, topic=topic, offset=100),
                  step("consume", topic=topic, group=early, count=3, reset="earliest"),
                  step("alter-group-offsets", group=fail, topic=topic, offset=100),
                  step("consume", topic=topic, group=fail, count=1, reset="none"),
                  # Nothing committed and no reset policy.
                  step("consume", topic=topic, group=none, count=1, reset="none"),
                  # Committed below the log start: reset to the latest offset.
                  step("delete-records", topic=topic, before=2),
                  step("alter-group-offsets", group=low, topic=topic, offset=1),
                  step("consume", topic=topic, group=low, count=0, reset="latest"))
    assert [r["offset"] for r in only(lines, "record")] == [0, 1, 2]
    failures = [line for line in only(lines, "consume") if "error" in line]
    assert [error_of(line) for line in failures] == [("OffsetOutOfRangeException", None),
                                                     ("NoOffsetForPartitionException", None)]
    assert [c["group"] for c in only(lines, "commit")] == [early, low]
    assert only(lines, "commit")[-1]["positions"] == [{"topic": topic, "partition": 0,
                                                       "offset": 3}]


def test_list_offsets_earliest_latest_by_timestamp_and_max_timestamp(kafka):
    topic = kafka.create_topic()
    asked = ["earliest", "earliest-local", "latest", "max-timestamp", T0 + 1500, T0 + 400, T0,
             T0 + 3000, T0 + 3500, T0 + 10_000]
    lines = probe(kafka,
                  # Offsets 0..3 at T0, T0+1s, T0+2s, T0+3s; then one batch (the producer
                  # lingers for it) of offsets 4..6 at T0+5s, T0+2.5s, T0: out of order.
                  step("produce", topic=topic, count=4, timestamp=T0, headers=False),
                  step("produce", topic=topic, count=3, timestamp=T0 + 5000,
                       timestamp_step=-2500, linger_ms=200, headers=False),
                  *[step("list-offsets", topic=topic, spec=spec) for spec in asked],
                  step("list-offsets", topic=topic, spec="latest", isolation="read_committed"))
    assert [p["offset"] for p in only(lines, "produce")] == list(range(7))
    labels = [f"{spec}" for spec in asked] + ["latest read_committed"]
    # (error, offset, timestamp, leader epoch) for each, as one dict so that every difference
    # shows at once.
    answers = {label: (line["error"], line.get("offset"), line.get("timestamp"),
                       line.get("leader_epoch"))
               for label, line in zip(labels, only(lines, "list-offsets"), strict=True)}
    assert answers == {
        "earliest": (None, 0, -1, 0),
        # ListOffsets v8+ (-4, KIP-405): without tiered storage, the log start offset.
        "earliest-local": (None, 0, -1, 0),
        "latest": (None, 7, -1, 0),
        # The record with the highest timestamp, not the last of its batch.
        "max-timestamp": (None, 4, T0 + 5000, 0),
        # The first offset (in log order) whose timestamp is at or after the one asked for.
        f"{T0 + 1500}": (None, 2, T0 + 2000, 0),
        f"{T0 + 400}": (None, 1, T0 + 1000, 0),
        f"{T0}": (None, 0, T0, 0),
        f"{T0 + 3000}": (None, 3, T0 + 3000, 0),
        f"{T0 + 3500}": (None, 4, T0 + 5000, 0),
        # None that late: offset -1, no timestamp and no epoch.
        f"{T0 + 10_000}": (None, -1, -1, None),
        # No transaction: the last stable offset is the high watermark.
        "latest read_committed": (None, 7, -1, 0),
    }


def test_delete_records_moves_the_earliest_offset(kafka):
    topic = kafka.create_topic()
    lines = probe(kafka,
                  step("produce", topic=topic, count=5, headers=False),
                  step("delete-records", topic=topic, before=2),
                  step("list-offsets", topic=topic, spec="earliest"),
                  step("consume", topic=topic, group=kafka.name("g"), count=3),
                  step("delete-records", topic=topic, before=100),
                  step("delete-records", topic=topic, before=-1),
                  step("list-offsets", topic=topic, spec="earliest"),
                  step("list-offsets", topic=topic, spec="latest"))
    to_two, past_end, to_end = only(lines, "delete-records")
    assert (to_two["error"], to_two["low_watermark"]) == (None, 2)
    # Past the high watermark: OFFSET_OUT_OF_RANGE; -1 means the high watermark itself.
    assert error_of(past_end) == ("OffsetOutOfRangeException", "OFFSET_OUT_OF_RANGE")
    assert (to_end["error"], to_end["low_watermark"]) == (None, 5)
    earliest_after_two, earliest_after_all, latest = only(lines, "list-offsets")
    assert earliest_after_two["offset"] == 2
    assert [r["offset"] for r in only(lines, "record")] == [2, 3, 4]
    assert (earliest_after_all["offset"], latest["offset"]) == (5, 5)


def test_create_topics_answers_and_errors(kafka):
    name = kafka.name("topic")
    lines = probe(kafka,
                  step("create-topic", name=name, partitions=3, replication=1,
                       **{"config.retention.ms": "3600000"}),
                  step("describe-topic", topic=name),
                  step("create-topic", name=name, partitions=3, replication=1),
                  step("create-topic", name=kafka.name("topic"), partitions=0, replication=1),
                  step("create-topic", name=kafka.name("topic"), partitions=1, replication=3),
                  step("create-topic", name=kafka.name("topic"), partitions=1,
                       **{"config.retention.ms": "soon"}),
                  step("create-topic", name="bad/name", partitions=1),
                  step("describe-topic", topic=kafka.name("absent")))
    created, exists, no_partitions, too_many_replicas, bad_config, bad_name = \
        only(lines, "create-topic")
    assert (created["error"], created["partitions"], created["replication"]) == (None, 3, 1)
    assert created["topic_id"] != ZERO_UUID
    assert error_of(exists) == ("TopicExistsException", "TOPIC_ALREADY_EXISTS")
    assert error_of(no_partitions) == ("InvalidPartitionsException", "INVALID_PARTITIONS")
    assert error_of(too_many_replicas) == \
        ("InvalidReplicationFactorException", "INVALID_REPLICATION_FACTOR")
    assert error_of(bad_config) == ("InvalidConfigurationException", "INVALID_CONFIG")
    assert error_of(bad_name) == ("InvalidTopicException", "INVALID_TOPIC_EXCEPTION")

    described, absent = only(lines, "describe-topic")
    assert (described["error"], described["internal"]) == (None, False)
    assert described["topic_id"] == created["topic_id"]
    assert [p["partition"] for p in described["partitions"]] == [0, 1, 2]
    for partition in described["partitions"]:
        assert len(partition["replicas"]) == 1
        assert partition["leader"] == partition["replicas"][0]
        assert partition["isr"] == partition["replicas"]
    assert error_of(absent) == ("UnknownTopicOrPartitionException",
                                "UNKNOWN_TOPIC_OR_PARTITION")


def test_topics_by_id_describe_and_delete(kafka):
    """describeTopics and deleteTopics by topic id (Metadata v10+ and DeleteTopics v6 with
    topic ids instead of names)."""
    topic = kafka.create_topic(partitions=2)
    unknown_id = "AAAAAAAAAAAAAAAAAAAAAQ"
    lines = probe(kafka,
                  # id_of: the probe looks the id up by name, then asks by id.
                  step("describe-topic", id_of=topic),
                  step("describe-topic", id=unknown_id),
                  step("delete-topic", id=unknown_id),
                  step("delete-topic", id_of=topic))
    by_id, unknown = only(lines, "describe-topic")
    delete_unknown, delete = only(lines, "delete-topic")
    assert {
        "describe by id": (by_id["error"], by_id.get("topic"),
                           len(by_id.get("partitions", []))),
        "describe an unknown id": error_of(unknown),
        "delete an unknown id": error_of(delete_unknown),
        "delete by id": error_of(delete),
    } == {
        "describe by id": (None, topic, 2),
        "describe an unknown id": ("UnknownTopicIdException", "UNKNOWN_TOPIC_ID"),
        "delete an unknown id": ("UnknownTopicIdException", "UNKNOWN_TOPIC_ID"),
        "delete by id": (None, None),
    }
    # Deleted: gone from Metadata (Kafka's brokers learn it from the controller soon after).
    deadline = time.monotonic() + 15
    while topic in kafka.admin().list_topics(timeout=10).topics and time.monotonic() < deadline:
        time.sleep(0.2)
    assert topic not in kafka.admin().list_topics(timeout=10).topics


def test_describe_configs_with_synonyms_and_documentation(kafka):
    """DescribeConfigs as the Java admin asks it (include_synonyms and include_documentation):
    the topic configs Kafka lists by default, with their source, type and synonyms."""
    topic = kafka.create_topic(config={"retention.ms": "3600000"})
    keys = ["cleanup.policy", "compression.type", "max.message.bytes", "message.timestamp.type",
            "message.timestamp.after.max.ms", "retention.ms", "segment.bytes"]
    lines = probe(kafka, step("describe-configs", topic=topic, keys=",".join(keys)))
    described = one(lines, "describe-configs")
    assert described["error"] is None
    entries = described["entries"]

    def default(value, kind, synonym):
        return {"value": value, "source": "DEFAULT_CONFIG", "default": True,
                "read_only": False, "sensitive": False, "type": kind, "documented": True,
                "synonyms": [[synonym, "DEFAULT_CONFIG"]]}

    expected = {
        "cleanup.policy": default("delete", "LIST", "log.cleanup.policy"),
        "compression.type": default("producer", "STRING", "compression.type"),
        "max.message.bytes": default("1048588", "INT", "message.max.bytes"),
        "message.timestamp.type": default("CreateTime", "STRING", "log.message.timestamp.type"),
        "message.timestamp.after.max.ms": default("3600000", "LONG",
                                                  "log.message.timestamp.after.max.ms"),
        "segment.bytes": default("1073741824", "INT", "log.segment.bytes"),
        "retention.ms": {"value": "3600000", "source": "DYNAMIC_TOPIC_CONFIG", "default": False,
                         "read_only": False, "sensitive": False, "type": "LONG",
                         "documented": True,
                         "synonyms": [["retention.ms", "DYNAMIC_TOPIC_CONFIG"]]},
    }
    assert {key: entries.get(key) for key in keys} == expected


def test_the_offsets_topic_is_internal_and_cannot_be_created_again(request, kafka):
    """Once a group has committed, __consumer_offsets exists: an internal topic, which
    CreateTopics refuses as it refuses any existing name."""
    sluice_lacks(request, kafka, "Sluice keeps committed offsets in a store of its own, not in "
                 "a __consumer_offsets topic")
    topic = kafka.create_topic()
    lines = probe(kafka,
                  step("produce", topic=topic, count=1, headers=False),
                  step("consume", topic=topic, group=kafka.name("g"), count=1),
                  step("describe-topic", topic="__consumer_offsets"),
                  step("create-topic", name="__consumer_offsets", partitions=1, replication=1))
    assert "error" not in one(lines, "commit")
    described = one(lines, "describe-topic")
    assert {"describe": (described["error"], described.get("internal"),
                         len(described.get("partitions", [])) >= 1),
            "create": error_of(one(lines, "create-topic"))} == {
        "describe": (None, True, True),
        "create": ("TopicExistsException", "TOPIC_ALREADY_EXISTS"),
    }


def test_transactions_read_committed_and_the_last_stable_offset(kafka):
    topic = kafka.create_topic()
    tid = kafka.name("tx")
    produced = probe(kafka,
                     step("produce", topic=topic, count=2, headers=False, transactional_id=tid),
                     step("produce", topic=topic, count=2, headers=False, transactional_id=tid,
                          value_prefix="aborted-", end="abort"),
                     step("produce", topic=topic, count=1, headers=False, transactional_id=tid,
                          value_prefix="third-"))
    assert [(p.get("phase"), p["error"]) for p in produced if "phase" in p] == \
        [("commit", None), ("abort", None), ("commit", None)], produced
    # Each transaction ends with a control record: 0,1 committed (marker 2), 3,4 aborted
    # (marker 5), 6 committed (marker 7).
    assert [p["offset"] for p in produced if "phase" not in p] == [0, 1, 3, 4, 6]
    lines = probe(kafka,
                  step("consume", topic=topic, group=kafka.name("g"), count=3,
                       isolation="read_committed", commit=False),
                  step("produce", topic=topic, count=1, headers=False,
                       transactional_id=kafka.name("tx"), value_prefix="open-", end="open"),
                  step("list-offsets", topic=topic, spec="latest"),
                  step("list-offsets", topic=topic, spec="latest", isolation="read_committed"))
    assert [(r["offset"], r["value"]) for r in only(lines, "record")] == \
        [(0, "value-0"), (1, "value-1"), (6, "third-0")]
    assert [p.get("offset") for p in only(lines, "produce")] == [8, None]  # record, "open"
    uncommitted, committed = only(lines, "list-offsets")
    assert uncommitted["offset"] == 9
    assert committed["offset"] == 8  # the open transaction's first offset


def test_compressed_batches_and_a_record_bigger_than_fetch_max_bytes(kafka):
    topic = kafka.create_topic()
    codecs = ["gzip", "snappy", "lz4", "zstd"]
    lines = probe(kafka,
                  *[step("produce", topic=topic, count=2, compression=codec,
                         value_prefix=f"{codec}-", timestamp=T0) for codec in codecs],
                  step("produce", topic=topic, count=1, value_size=200_000, value_prefix="big-",
                       headers=False),
                  # A fetch limit smaller than the record: the first batch comes anyway.
                  step("consume", topic=topic, group=kafka.name("g"), count=9,
                       **{"consumer.fetch.max.bytes": 1024,
                          "consumer.max.partition.fetch.bytes": 1024}))
    records = only(lines, "record")
    assert [r["offset"] for r in records] == list(range(9))
    assert [r["value"] for r in records[:8]] == \
        [f"{codec}-{i}" for codec in codecs for i in range(2)]
    assert all(r["headers"] == [["index", r["value"][-1]], *PROBE_HEADERS] for r in records[:8])
    assert [r["timestamp"] for r in records[:8]] == [T0, T0 + 1000] * 4
    assert records[8]["value"] == "big-0" + "." * (200_000 - 5)


def test_records_cross_between_the_java_client_and_confluent_kafka(kafka):
    """confluent_kafka (librdkafka) produces what the Java consumer reads, and the Java producer
    produces what confluent_kafka reads: keys, values, headers (repeated, empty and null) and
    CreateTime timestamps arrive as sent."""
    from_python, from_java = kafka.create_topic(), kafka.create_topic()
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "linger.ms": 0})
    for i in range(3):
        producer.produce(from_python, key=f"py-key-{i}".encode(), value=f"py-value-{i}".encode(),
                         timestamp=T0 + i, headers=[("h", b"1"), ("h", b"2"), ("none", None)])
    assert producer.flush(30) == 0
    del producer

    lines = probe(kafka,
                  step("consume", topic=from_python, group=kafka.name("g"), count=3),
                  step("produce", topic=from_java, count=3, timestamp=T0))
    records = only(lines, "record")
    assert [(r["offset"], r["key"], r["value"], r["timestamp"], r["timestamp_type"])
            for r in records] == \
        [(i, f"py-key-{i}", f"py-value-{i}", T0 + i, "CREATE_TIME") for i in range(3)]
    assert all(r["headers"] == [["h", "1"], ["h", "2"], ["none", None]] for r in records)
    assert one(lines, "commit")["positions"] == [{"topic": from_python, "partition": 0,
                                                  "offset": 3}]
    assert [p["offset"] for p in only(lines, "produce")] == [0, 1, 2]

    consumer = kafka.consumer()
    consumer.subscribe([from_java])
    messages = []
    deadline = time.monotonic() + 30
    while len(messages) < 3 and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None:
            assert message.error() is None, message.error()
            messages.append(message)
    assert [m.offset() for m in messages] == [0, 1, 2]
    for i, message in enumerate(messages):
        assert (message.key(), message.value()) == (f"key-{i}".encode(), f"value-{i}".encode())
        assert message.timestamp() == (TIMESTAMP_CREATE_TIME, T0 + i * 1000)
        assert message.headers() == [("index", str(i).encode()), ("dup", b"first"),
                                     ("dup", b"second"), ("empty", b""), ("null", None)]
