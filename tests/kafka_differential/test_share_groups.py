"""Share groups (KIP-932, "queues for Kafka") as the Java client's KafkaShareConsumer and admin
client (kafka-clients 4.1.1) see them, against both brokers.

Covered: where a new group starts (the group config share.auto.offset.reset, earliest or the
default latest), delivery counts and their limit, explicit acknowledgements (ACCEPT, RELEASE,
REJECT; committed, or sent by the close) and implicit ones, what happens to records a consumer
got but did not acknowledge when it closes, two consumers of one group sharing the records of a
partition (and of three), DescribeShareGroups, ListGroups and DescribeShareGroupOffsets of a
share group, the group configs (IncrementalAlterConfigs and DescribeConfigs on resource type
GROUP) with their errors, AlterShareGroupOffsets and DeleteShareGroupOffsets, and the record
states and delivery counts a restart keeps.

The steps are KafkaClientProbe's (tests/clients/java; its class comment lists them): each test
runs the probe once, a JVM costs about a second. On the wire the 4.1.1 client uses
ShareGroupHeartbeat v1, ShareFetch v1 (acknowledgements of implicit mode ride on the next
ShareFetch), ShareAcknowledge v1 (commitSync, and the close with share session epoch -1),
ShareGroupDescribe v1, DescribeShareGroupOffsets v0, IncrementalAlterConfigs v1 and
DescribeConfigs v4 (resource type 32) and ListGroups v5.

Kafka serves share groups only with the feature share.version=1 (conftest.KafkaNode formats its
storage so). Its group configs are at their defaults: record locks of 30 s, heartbeats every 5 s,
at most 5 deliveries of a record.
"""

from __future__ import annotations

import pytest

from .test_java_client import one, only, probe, step

EARLIEST = {"share.auto.offset.reset": "earliest"}
# How long a consumer polls for records it must not get: each poll is a ShareFetch that waits
# up to 500 ms for records.
QUIET_MS = 1500
# Generous: the probe's JVM may wait for a CPU on a busy machine. A test meets it only when a
# broker does not deliver what it should.
CONSUME_TIMEOUT_MS = 30000


def deliveries(lines: list[dict], name: str | None = None) -> list[tuple]:
    """(partition, offset, value, delivery count) of each record delivered, in delivery order;
    only those to the share consumer `name` when given."""
    return [(r["partition"], r["offset"], r["value"], r["delivery_count"])
            for r in only(lines, "share-record") if name is None or r["name"] == name]


def commits_succeeded(lines: list[dict]):
    commits = only(lines, "share-commit")
    assert all(c["error"] is None for c in commits), commits


def finished(lines: list[dict], name: str) -> dict:
    """The share-consume summary of consumer `name`; asserts it ended without error."""
    summaries = [s for s in only(lines, "share-consume") if s["name"] == name]
    assert len(summaries) == 1 and "error" not in summaries[0], summaries
    return summaries[0]


@pytest.mark.timeout(180)
def test_an_earliest_group_gets_each_earlier_record_once_in_offset_order(kafka):
    """With share.auto.offset.reset=earliest set before the group exists, the 10 records
    produced before its first consumer starts are each delivered once (delivery count 1) in
    offset order to an implicit-mode consumer, whose next polls acknowledge them: a second
    consumer gets only the 5 records produced after. The group's start offset (the first offset
    not acknowledged) is 10 once those 5 are released.

    Right after the 10 are acknowledged Kafka 4.1.1 answers start offset 0, not 10: it persists
    each acknowledgement with the start offset as it was before it (here: 0, and the batch 0-9
    ACKNOWLEDGED), and moves its start offset only in memory. The release of the next records is
    persisted with start offset 10, which is also the start offset it then has."""
    topic = kafka.create_topic()
    group = kafka.name("share")
    lines = probe(kafka,
                  step("group-config", group=group, **EARLIEST),
                  step("produce", topic=topic, count=10, headers=False),
                  # Implicit mode acknowledges a poll's records on the next poll (ShareFetch);
                  # the close does not (KafkaShareConsumer 4.1.1): poll on after the 10 until
                  # the broker answered their acknowledgement.
                  step("share-consume", group=group, name="first", topic=topic, count=10,
                       settle=True, timeout_ms=CONSUME_TIMEOUT_MS),
                  step("share-group-offsets", group=group),
                  step("produce", topic=topic, count=5, headers=False, value_prefix="more-"),
                  step("share-consume", group=group, name="second", topic=topic, count=5,
                       mode="explicit", default_ack="release", timeout_ms=CONSUME_TIMEOUT_MS),
                  step("share-group-offsets", group=group))
    assert one(lines, "group-config")["error"] is None
    assert deliveries(lines, "first") == [(0, i, f"value-{i}", 1) for i in range(10)]
    assert finished(lines, "first")["records"] == 10
    acked = [a for a in only(lines, "share-acked") if a["name"] == "first"]
    assert [o for a in acked for o in a["offsets"]] == list(range(10)), acked
    assert all((a["partition"], a["error"]) == (0, None) for a in acked), acked

    acknowledged, released = only(lines, "share-group-offsets")
    assert acknowledged["error"] is None
    [entry] = acknowledged["offsets"]
    assert (entry["topic"], entry["partition"]) == (topic, 0)
    assert entry["offset"] in (0, 10), entry  # Kafka 4.1.1: 0 (see above)

    # 0-9 were acknowledged: the second consumer gets 10-14 only, each on its first delivery.
    second = deliveries(lines, "second")
    assert sorted({(p, o, v) for p, o, v, _ in second}) == \
        [(0, 10 + i, f"more-{i}") for i in range(5)]
    assert second[:5] == [(0, 10 + i, f"more-{i}", 1) for i in range(5)]
    commits_succeeded(lines)
    assert released == {"step": "share-group-offsets", "group": group, "error": None,
                        "offsets": [{"topic": topic, "partition": 0, "offset": 10,
                                     "leader_epoch": 0}]}


@pytest.mark.timeout(180)
def test_a_latest_group_skips_what_was_produced_before_its_first_fetch_and_gets_the_rest(kafka):
    """share.auto.offset.reset is latest by default: a new group's partition starts at its end
    as of the group's first ShareFetch of it. The 3 records produced before the consumer started
    are never delivered; records produced while it polls are, from some point on: the markers
    produced one by one until it got one (those before its first fetch are skipped), then 3
    more, which it gets all, each once and in offset order."""
    topic = kafka.create_topic()
    group = kafka.name("share")
    lines = probe(kafka,
                  step("produce", topic=topic, count=3, headers=False, value_prefix="before-"),
                  step("share-consume", group=group, name="c", topic=topic, count=1000,
                       background=True, settle=True, timeout_ms=CONSUME_TIMEOUT_MS),
                  step("produce", topic=topic, count=150, headers=False, value_prefix="marker-",
                       interval_ms=200, until_share="c"),
                  step("produce", topic=topic, count=3, headers=False, value_prefix="after-"),
                  # It polls on until 1 s after it got the last record (or its timeout).
                  step("share-wait", name="c", stop_after_value="after-2", stop_idle_ms=1000),
                  step("share-group-offsets", group=group))
    produced = only(lines, "produce")
    assert all(p.get("error") is None for p in produced), produced
    assert sorted(p["offset"] for p in produced) == list(range(len(produced)))
    markers = len(produced) - 6
    got = deliveries(lines, "c")
    assert finished(lines, "c")["timed_out"] is False
    values = [v for _, _, v, _ in got]
    assert not [v for v in values if v.startswith("before-")], got
    # The markers it got are the last ones sent, from the first it got on: none skipped after.
    got_markers = [v for v in values if v.startswith("marker-")]
    assert got_markers, got
    first = int(got_markers[0].split("-")[1])
    assert got_markers == [f"marker-{i}" for i in range(first, markers)]
    assert values == got_markers + ["after-0", "after-1", "after-2"]
    assert [o for _, o, _, _ in got] == list(range(3 + first, len(produced)))
    assert {c for _, _, _, c in got} == {1}
    # The start offset is past the records it skipped (Kafka persists it as of before the last
    # acknowledgement: it may lag behind the end).
    [entry] = one(lines, "share-group-offsets")["offsets"]
    assert 3 + first <= entry["offset"] <= len(produced), (entry, first)


def test_explicit_release_redelivers_a_record_and_reject_drops_it(kafka):
    """Explicit acknowledgement: offset 0 RELEASEd on its first delivery comes back with
    delivery count 2 (and is accepted then); offset 1 REJECTed never comes back; the others,
    ACCEPTed, are delivered once. commitSync (ShareAcknowledge) answers no error."""
    topic = kafka.create_topic()
    group = kafka.name("share")
    lines = probe(kafka,
                  step("group-config", group=group, **EARLIEST),
                  step("produce", topic=topic, count=10, headers=False),
                  step("share-consume", group=group, topic=topic, count=11, mode="explicit",
                       acks="0@1:release,1@1:reject", extra_poll_ms=QUIET_MS,
                       timeout_ms=CONSUME_TIMEOUT_MS))
    records = only(lines, "share-record")
    by_offset = {}
    for record in records:
        by_offset.setdefault(record["offset"], []).append(
            (record["delivery_count"], record["ack"]))
    assert by_offset == {0: [(1, "RELEASE"), (2, "ACCEPT")], 1: [(1, "REJECT")],
                         **{i: [(1, "ACCEPT")] for i in range(2, 10)}}
    # First deliveries in offset order (Kafka delivers the 10 in one poll, and the released
    # record after them).
    firsts = [r for r in records if r["delivery_count"] == 1]
    assert [(r["offset"], r["value"]) for r in firsts] == [(i, f"value-{i}") for i in range(10)]
    commits = only(lines, "share-commit")
    assert commits and all((c["topic"], c["partition"], c["error"]) == (topic, 0, None)
                           for c in commits), commits
    assert finished(lines, group)["records"] == 11


def test_a_record_released_on_every_delivery_is_delivered_five_times_at_most(kafka):
    """A record RELEASEd on each of its deliveries comes back until it was delivered
    group.share.delivery.count.limit times (5 by default), then never again: it is archived.
    The record after it is delivered once."""
    topic = kafka.create_topic()
    group = kafka.name("share")
    lines = probe(kafka,
                  step("group-config", group=group, **EARLIEST),
                  step("produce", topic=topic, count=2, headers=False),
                  step("share-consume", group=group, topic=topic, count=6, mode="explicit",
                       acks="0:release", extra_poll_ms=QUIET_MS, timeout_ms=CONSUME_TIMEOUT_MS))
    records = only(lines, "share-record")
    assert [(r["offset"], r["delivery_count"], r["ack"]) for r in records if r["offset"] == 0] == \
        [(0, i, "RELEASE") for i in range(1, 6)]
    assert [(r["offset"], r["delivery_count"], r["ack"]) for r in records if r["offset"] != 0] == \
        [(1, 1, "ACCEPT")]
    commits_succeeded(lines)
    assert finished(lines, group)["records"] == 6


def test_acknowledgements_a_consumer_did_not_commit_go_with_its_close(kafka):
    """Explicit acknowledgements (ACCEPT, REJECT, ACCEPT) made without commitSync are sent by
    the close (ShareAcknowledge with share session epoch -1 carries them) and answered to the
    AcknowledgementCommitCallback: the records are done, the next consumer gets none."""
    topic = kafka.create_topic()
    group = kafka.name("share")
    lines = probe(kafka,
                  step("group-config", group=group, **EARLIEST),
                  step("produce", topic=topic, count=3, headers=False),
                  step("share-consume", group=group, name="first", topic=topic, count=3,
                       mode="explicit", commit=False, acks="1:reject",
                       timeout_ms=CONSUME_TIMEOUT_MS),
                  step("share-consume", group=group, name="second", topic=topic, count=1,
                       timeout_ms=3000))
    assert [(r["offset"], r["delivery_count"], r["ack"]) for r in only(lines, "share-record")] \
        == [(0, 1, "ACCEPT"), (1, 1, "REJECT"), (2, 1, "ACCEPT")]
    assert not only(lines, "share-commit")
    # The callback ran in the close, after the step's summary.
    summary = next(i for i, line in enumerate(lines)
                   if line["step"] == "share-consume" and line["name"] == "first")
    [acked] = only(lines, "share-acked")
    assert lines.index(acked) > summary
    assert (acked["name"], acked["partition"], acked["offsets"], acked["error"]) == \
        ("first", 0, [0, 1, 2], None)
    assert finished(lines, "second") == {"step": "share-consume", "name": "second",
                                         "group": group, "records": 0, "timed_out": True}


@pytest.mark.parametrize("mode", ["explicit", "implicit"])
def test_records_a_consumer_closes_without_acknowledging_go_to_the_next_one(kafka, mode):
    """A consumer that got 3 records and closes without acknowledging them (explicit mode, no
    acknowledge; or implicit mode, closing right after the poll: KafkaShareConsumer 4.1.1's close
    does not acknowledge the last poll's records) leaves them to the group: the next consumer
    gets them. Kafka releases them when the share session closes (ShareAcknowledge with epoch -1)
    and takes back the delivery it counted: they come again with delivery count 1, not 2."""
    topic = kafka.create_topic()
    group = kafka.name("share")
    first = {"mode": "explicit", "default_ack": "none"} if mode == "explicit" else {}
    lines = probe(kafka,
                  step("group-config", group=group, **EARLIEST),
                  step("produce", topic=topic, count=3, headers=False),
                  step("share-consume", group=group, name="first", topic=topic, count=3,
                       timeout_ms=CONSUME_TIMEOUT_MS, **first),
                  step("share-consume", group=group, name="second", topic=topic, count=3,
                       mode="explicit", extra_poll_ms=QUIET_MS, timeout_ms=CONSUME_TIMEOUT_MS))
    expected = [(0, i, f"value-{i}", 1) for i in range(3)]
    assert deliveries(lines, "first") == expected
    if mode == "explicit":
        assert [r["ack"] for r in only(lines, "share-record") if r["name"] == "first"] == \
            [None] * 3
    assert not [c for c in only(lines, "share-commit") if c["name"] == "first"]
    assert deliveries(lines, "second") == expected
    commits_succeeded(lines)
    assert finished(lines, "first")["records"] == finished(lines, "second")["records"] == 3


@pytest.mark.timeout(180)
@pytest.mark.parametrize("partitions", [1, 3])
def test_two_consumers_of_one_group_share_the_records_and_none_gets_one_twice(kafka, partitions):
    """Two consumers of one share group poll at once while 30 records are produced one by one:
    together they get every record, each exactly once (delivery count 1), and none gets a
    record the other got; each sees a partition's records in offset order. (Both get every
    partition: a share group's assignor gives a partition to more than one member.) They
    acknowledge with commitSync after each poll: a record still unacknowledged when one
    closes would go back to the group, and could come to the other."""
    topic = kafka.create_topic(partitions=partitions)
    group = kafka.name("share")
    lines = probe(kafka,
                  step("group-config", group=group, **EARLIEST),
                  step("share-consume-parallel", group=group, topic=topic, consumers=2,
                       count=30, commit=True, background=True, extra_poll_ms=QUIET_MS,
                       timeout_ms=CONSUME_TIMEOUT_MS),
                  step("produce", topic=topic, count=30, headers=False, interval_ms=50),
                  step("share-wait", name=group))
    produced = {(p["partition"], p["offset"]) for p in only(lines, "produce")}
    assert len(produced) == 30
    if partitions == 3:
        assert {partition for partition, _ in produced} == {0, 1, 2}
    got = {name: deliveries(lines, name) for name in (f"{group}-1", f"{group}-2")}
    everything = [(p, o) for records in got.values() for p, o, _, _ in records]
    assert sorted(everything) == sorted(produced), got
    assert {c for records in got.values() for _, _, _, c in records} == {1}
    for records in got.values():
        for partition in range(partitions):
            offsets = [o for p, o, _, _ in records if p == partition]
            assert offsets == sorted(offsets), records
    commits_succeeded(lines)
    assert one(lines, "share-wait")["finished"] is True
    for name in got:
        assert finished(lines, name)["timed_out"] is False


def test_an_open_share_consumer_is_a_stable_member_of_a_share_group(kafka):
    """While a share consumer is open, DescribeShareGroups shows its group Stable with it as the
    one member, assigned every partition of the topic, at the group's epoch; ListGroups lists
    the group as a share group (protocol type "share"); DescribeConsumerGroups does not know it
    as a consumer group; its config shows share.auto.offset.reset as set. Once it closed the
    group is Empty, and its epoch moved on while the assignment's did not."""
    topic = kafka.create_topic(partitions=3)
    group = kafka.name("share")
    lines = probe(kafka,
                  step("group-config", group=group, **EARLIEST),
                  step("produce", topic=topic, count=6, headers=False),
                  step("share-consume", group=group, topic=topic, count=6, commit=True,
                       keep=True, client_id="share-client", timeout_ms=CONSUME_TIMEOUT_MS),
                  step("describe-share-group", group=group),
                  step("list-groups", group=group),
                  step("describe-group", group=group),
                  step("describe-group-config", group=group, keys="share.auto.offset.reset"),
                  step("share-close", name=group),
                  step("describe-share-group", group=group),
                  step("list-groups", group=group))
    assert len(deliveries(lines)) == 6
    stable, empty = only(lines, "describe-share-group")
    assert (stable["error"], stable["state"]) == (None, "Stable"), stable
    [member] = stable["members"]
    assert member["client_id"] == "share-client"
    assert member["host"] == "/127.0.0.1"
    assert isinstance(member["member_id"], str) and member["member_id"]
    assert member["assignment"] == [[topic, p] for p in range(3)]
    epoch = stable["group_epoch"]
    assert epoch >= 1 and member["member_epoch"] == stable["assignment_epoch"] == epoch, stable
    assert stable["coordinator"] is not None

    listed_stable, listed_empty = only(lines, "list-groups")
    assert listed_stable["groups"] == [{"group": group, "protocol": "share", "type": "Share",
                                        "state": "Stable"}]
    described = one(lines, "describe-group")
    assert (described["error"], described["code"], described["message"]) == \
        ("GroupIdNotFoundException", "GROUP_ID_NOT_FOUND",
         f"Group {group} is not a consumer group.")
    config = one(lines, "describe-group-config")
    assert config["error"] is None
    assert config["entries"] == {"share.auto.offset.reset": {
        "value": "earliest", "source": "DYNAMIC_GROUP_CONFIG", "default": False,
        "read_only": False, "sensitive": False, "type": "STRING", "documented": True,
        "synonyms": [["share.auto.offset.reset", "DYNAMIC_GROUP_CONFIG"]]}}

    assert one(lines, "share-close") == {"step": "share-close", "name": group, "was_open": True,
                                          "error": None}
    assert (empty["error"], empty["state"], empty["members"]) == (None, "Empty", [])
    # The member's leaving is a new group epoch; no assignment was computed for it.
    assert (empty["group_epoch"], empty["assignment_epoch"]) == (epoch + 1, epoch)
    assert listed_empty["groups"] == [{"group": group, "protocol": "share", "type": "Share",
                                       "state": "Empty"}]


def default(value: str, kind: str) -> dict:
    return {"value": value, "source": "DEFAULT_CONFIG", "default": True, "read_only": False,
            "sensitive": False, "type": kind, "documented": True}


# What DescribeConfigs lists for a group none was set for (any group id, known or not), with
# the broker's defaults: every group config, those of consumer and streams groups too.
GROUP_CONFIG_DEFAULTS = {
    "consumer.heartbeat.interval.ms": default("5000", "INT"),
    "consumer.session.timeout.ms": default("45000", "INT"),
    "share.auto.offset.reset": default("latest", "STRING"),
    "share.heartbeat.interval.ms": default("5000", "INT"),
    "share.isolation.level": default("read_uncommitted", "STRING"),
    "share.record.lock.duration.ms": default("30000", "INT"),
    "share.session.timeout.ms": default("45000", "INT"),
    "streams.heartbeat.interval.ms": default("5000", "INT"),
    "streams.num.standby.replicas": default("0", "INT"),
    "streams.session.timeout.ms": default("45000", "INT"),
}


def test_a_group_without_configs_describes_every_group_config_at_its_default(kafka):
    """DescribeConfigs of a group id nothing was set for (no such group exists: that is no
    error) lists every group config Kafka has, each at the broker's default."""
    group = kafka.name("share")
    lines = probe(kafka, step("describe-group-config", group=group))
    described = one(lines, "describe-group-config")
    assert described["error"] is None
    entries = {name: {k: v for k, v in entry.items() if k != "synonyms"}
               for name, entry in described["entries"].items()}
    assert entries == GROUP_CONFIG_DEFAULTS
    assert all(entry["synonyms"] == [[name, "DEFAULT_CONFIG"]]
               for name, entry in described["entries"].items()), described


def test_group_config_errors_are_invalid_config_and_change_nothing(kafka):
    """IncrementalAlterConfigs on a group: an invalid value, an unknown config name and a lock
    duration below the broker's minimum are each INVALID_CONFIG, with Kafka's message; a request
    with one bad config sets none of the others. Deleting an unknown config is no error. What
    was set by a good request stays."""
    group = kafka.name("share")
    lines = probe(kafka,
                  step("group-config", group=group, **{"share.auto.offset.reset": "bogus"}),
                  step("group-config", group=group, **{"no.such.config": "1"}),
                  step("group-config", group=group,
                       **{"share.record.lock.duration.ms": "1000"}),
                  step("group-config", group=group, **{"share.isolation.level": "read_committed",
                                                       "no.such.config": "1"}),
                  step("group-config", group=group, delete="no.such.config"),
                  step("group-config", group=group, **{"share.auto.offset.reset": "earliest"}),
                  step("group-config", group=group, **{"share.auto.offset.reset": "EARLIEST"}),
                  step("describe-group-config", group=group,
                       keys="share.auto.offset.reset,share.isolation.level,"
                            "share.record.lock.duration.ms"))
    bogus, unknown, too_short, mixed, delete_unknown, earliest, upper = \
        only(lines, "group-config")

    def invalid(message):
        return ("InvalidConfigurationException", "INVALID_CONFIG", message)

    def error(line):
        return line["error"], line.get("code"), line.get("message")

    reset_message = ("Invalid value {0} for configuration share.auto.offset.reset: Invalid value "
                     "`{0}` for configuration share.auto.offset.reset. The value must be either "
                     "'earliest', 'latest' or of the format 'by_duration:<PnDTnHnMn.nS>'.")
    assert error(bogus) == invalid(reset_message.format("bogus"))
    assert error(unknown) == invalid("Unknown group config name: no.such.config")
    assert error(too_short) == invalid("share.record.lock.duration.ms must be greater than or "
                                       "equal to group.share.min.record.lock.duration.ms")
    assert error(mixed) == invalid("Unknown group config name: no.such.config")
    assert error(delete_unknown) == (None, None, None)
    assert error(earliest) == (None, None, None)
    # Values are case-sensitive.
    assert error(upper) == invalid(reset_message.format("EARLIEST"))

    entries = one(lines, "describe-group-config")["entries"]
    assert {name: (e["value"], e["source"]) for name, e in entries.items()} == {
        "share.auto.offset.reset": ("earliest", "DYNAMIC_GROUP_CONFIG"),
        "share.isolation.level": ("read_uncommitted", "DEFAULT_CONFIG"),
        "share.record.lock.duration.ms": ("30000", "DEFAULT_CONFIG"),
    }


@pytest.mark.timeout(180)
def test_an_empty_share_groups_offsets_are_altered_and_deleted_by_the_admin_client(kafka):
    """alterShareGroupOffsets and deleteShareGroupOffsets (AlterShareGroupOffsets v0,
    DeleteShareGroupOffsets v0) on a share group whose consumer closed: on Sluice the group
    reads again from the start offset it was given (each record on its first delivery: the old
    records' states are gone; Kafka 4.1.1 does not apply it, see below); deleting a topic's offsets forgets the group's state of it, so the next
    consumer starts where share.auto.offset.reset says (earliest: offset 0), and a second delete
    finds nothing to delete. While a consumer is open both are refused (NON_EMPTY_GROUP), and
    an unknown topic or group is named in the error.

    Kafka 4.1.1 answers AlterShareGroupOffsets of a non-empty or unknown group with success and
    changes nothing: its broker drops the coordinator's top-level error (KAFKA-19440, fixed after 4.1)
    and its admin client reads only the partitions' errors. Sluice refuses it, on each partition
    too, so that client raises GroupNotEmptyException."""
    topic = kafka.create_topic()
    group = kafka.name("share")
    lines = probe(kafka,
                  step("group-config", group=group, **EARLIEST),
                  step("produce", topic=topic, count=6, headers=False),
                  step("share-consume", group=group, name="first", topic=topic, count=6,
                       mode="explicit", timeout_ms=CONSUME_TIMEOUT_MS),
                  step("alter-share-group-offsets", group=group, topic=topic, offset=2),
                  step("alter-share-group-offsets", group=group, topic=kafka.name("none"),
                       offset=0),
                  step("alter-share-group-offsets", group=kafka.name("none"), topic=topic,
                       offset=0),
                  step("share-group-offsets", group=group),
                  # Sluice delivers at once; Kafka 4.1.1 nothing (see below) until the timeout.
                  step("share-consume", group=group, name="second", topic=topic, count=4,
                       mode="explicit", keep=True, extra_poll_ms=QUIET_MS, timeout_ms=10000),
                  step("alter-share-group-offsets", group=group, topic=topic, offset=0),
                  step("delete-share-group-offsets", group=group, topics=topic),
                  step("share-close", name="second"),
                  step("delete-share-group-offsets", group=group, topics=topic),
                  step("share-group-offsets", group=group),
                  step("delete-share-group-offsets", group=group, topics=topic),
                  step("delete-share-group-offsets", group=kafka.name("none"), topics=topic),
                  step("share-consume", group=group, name="third", topic=topic, count=6,
                       mode="explicit", extra_poll_ms=QUIET_MS, timeout_ms=CONSUME_TIMEOUT_MS))
    assert deliveries(lines, "first") == [(0, i, f"value-{i}", 1) for i in range(6)]
    altered, unknown_topic, unknown_group, busy_alter = only(lines, "alter-share-group-offsets")
    assert altered["error"] is None, altered
    assert (unknown_topic["error"], unknown_topic["code"]) == \
        ("UnknownTopicOrPartitionException", "UNKNOWN_TOPIC_OR_PARTITION"), unknown_topic
    if kafka.kind == "sluice":
        assert (unknown_group["error"], unknown_group["code"]) == \
            ("GroupIdNotFoundException", "GROUP_ID_NOT_FOUND"), unknown_group
        assert (busy_alter["error"], busy_alter["code"]) == \
            ("GroupNotEmptyException", "NON_EMPTY_GROUP"), busy_alter
    else:  # KAFKA-19440, see above
        assert unknown_group["error"] is None and busy_alter["error"] is None, \
            (unknown_group, busy_alter)

    listed_after_alter, listed_after_delete = only(lines, "share-group-offsets")
    if kafka.kind == "sluice":
        assert [(e["topic"], e["partition"], e["offset"])
                for e in listed_after_alter["offsets"]] == [(topic, 0, 2)]
        assert deliveries(lines, "second") == [(0, i, f"value-{i}", 1) for i in range(2, 6)]
    else:
        # Kafka 4.1.1 answers the alteration with success but applies none of it here: the
        # listed start offset stays what it stored before (0, see the first test), and the
        # share partition it still holds in memory (start offset 6) hands nothing out.
        assert [(e["topic"], e["partition"], e["offset"])
                for e in listed_after_alter["offsets"]] == [(topic, 0, 0)]
        assert deliveries(lines, "second") == []

    busy_delete, deleted, nothing_left, unknown = only(lines, "delete-share-group-offsets")
    assert (busy_delete["error"], busy_delete["code"], busy_delete["message"]) == \
        ("GroupNotEmptyException", "NON_EMPTY_GROUP", "The group is not empty."), busy_delete
    assert deleted["error"] is None, deleted
    assert listed_after_delete["error"] is None and listed_after_delete["offsets"] == []
    assert (nothing_left["error"], nothing_left["message"]) == \
        ("UnknownTopicOrPartitionException", "There is no offset information to delete."), \
        nothing_left
    assert (unknown["error"], unknown["code"]) == \
        ("GroupIdNotFoundException", "GROUP_ID_NOT_FOUND"), unknown
    # The group starts over where share.auto.offset.reset says.
    assert deliveries(lines, "third") == [(0, i, f"value-{i}", 1) for i in range(6)]
    commits_succeeded(lines)


@pytest.mark.timeout(240)
def test_acknowledged_and_released_records_keep_their_state_across_a_restart(kafka):
    """The share partition's state outlives the broker: offset 0, RELEASEd on both its
    deliveries, comes back after a restart on its third delivery (delivery count 3), while
    offsets 1 and 2, ACCEPTed, are not delivered again although the start offset stayed at 0.
    Kafka keeps each in-flight record's state and delivery count in its share coordinator's
    log; Sluice stores them beside the start offset."""
    topic = kafka.create_topic()
    group = kafka.name("share")
    before = probe(kafka,
                   step("group-config", group=group, **EARLIEST),
                   step("produce", topic=topic, count=3, headers=False),
                   step("share-consume", group=group, name="before", topic=topic, count=4,
                        mode="explicit", acks="0:release", timeout_ms=CONSUME_TIMEOUT_MS))
    assert sorted(deliveries(before, "before")) == \
        [(0, 0, "value-0", 1), (0, 0, "value-0", 2), (0, 1, "value-1", 1),
         (0, 2, "value-2", 1)]
    commits_succeeded(before)

    kafka.restart()
    after = probe(kafka,
                  step("share-consume", group=group, name="after", topic=topic, count=3,
                       mode="explicit", extra_poll_ms=QUIET_MS, timeout_ms=10000))
    assert deliveries(after, "after") == [(0, 0, "value-0", 3)]
    commits_succeeded(after)


@pytest.mark.timeout(180)
def test_records_held_by_a_consumer_whose_connection_drops_go_back_to_the_group_at_once(kafka):
    """A share consumer that got 3 records and dies (its JVM halts: its sockets close with no
    final share session epoch and no leave) does not keep them locked for the 60 s lock
    duration: the broker releases what the member held when its connection drops, taking back
    the delivery it counted, so the next consumer gets all 3 at once, each on delivery 1. The
    dead member stays in the group until its session times out, and shares the partition
    with the new one meanwhile."""
    topic = kafka.create_topic()
    group = kafka.name("share")
    first = probe(kafka,
                  step("group-config", group=group, **EARLIEST,
                       **{"share.record.lock.duration.ms": "60000"}),
                  step("produce", topic=topic, count=3, headers=False),
                  step("share-consume", group=group, name="first", topic=topic, count=3,
                       mode="explicit", default_ack="none", keep=True,
                       timeout_ms=CONSUME_TIMEOUT_MS),
                  step("halt"))
    assert deliveries(first, "first") == [(0, i, f"value-{i}", 1) for i in range(3)]
    assert first[-1] == {"step": "halt"}
    second = probe(kafka,
                   step("share-consume", group=group, name="second", topic=topic, count=3,
                        mode="explicit", timeout_ms=20000))
    assert deliveries(second, "second") == [(0, i, f"value-{i}", 1) for i in range(3)]
    commits_succeeded(second)


@pytest.mark.timeout(180)
def test_a_read_committed_share_group_gets_committed_records_only(kafka):
    """With the group config share.isolation.level=read_committed a share group gets the
    records of committed transactions (and plain ones), never those of an aborted transaction
    nor control records, and nothing past the last stable offset while a transaction is open.
    A read_uncommitted group (the default) gets every data record, the open transaction's too."""
    topic = kafka.create_topic()
    committed = kafka.name("committed")
    uncommitted = kafka.name("uncommitted")
    txn = kafka.name("txn")
    lines = probe(kafka,
                  step("group-config", group=committed, **EARLIEST,
                       **{"share.isolation.level": "read_committed"}),
                  step("group-config", group=uncommitted, **EARLIEST),
                  step("produce", topic=topic, count=2, headers=False, value_prefix="a-",
                       transactional_id=txn, end="commit"),
                  step("produce", topic=topic, count=2, headers=False, value_prefix="b-",
                       transactional_id=txn, end="abort"),
                  step("produce", topic=topic, count=1, headers=False, value_prefix="c-"),
                  step("produce", topic=topic, count=2, headers=False, value_prefix="d-",
                       transactional_id=txn + "-open", end="open"),
                  step("share-consume", group=committed, name="committed", topic=topic,
                       count=3, mode="explicit", extra_poll_ms=QUIET_MS,
                       timeout_ms=CONSUME_TIMEOUT_MS),
                  step("share-consume", group=uncommitted, name="uncommitted", topic=topic,
                       count=7, mode="explicit", extra_poll_ms=QUIET_MS,
                       timeout_ms=CONSUME_TIMEOUT_MS))
    # Offsets: a-0 a-1 (0, 1), commit marker 2, b-0 b-1 (3, 4), abort marker 5, c-0 (6),
    # d-0 d-1 (7, 8) open.
    assert [(o, v, n) for _, o, v, n in deliveries(lines, "committed")] == \
        [(0, "a-0", 1), (1, "a-1", 1), (6, "c-0", 1)]
    assert [(o, v, n) for _, o, v, n in deliveries(lines, "uncommitted")] == \
        [(0, "a-0", 1), (1, "a-1", 1), (3, "b-0", 1), (4, "b-1", 1), (6, "c-0", 1),
         (7, "d-0", 1), (8, "d-1", 1)]
    commits_succeeded(lines)
