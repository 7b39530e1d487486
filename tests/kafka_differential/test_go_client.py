"""franz-go, the Go client, as Apache Kafka answers it: idempotent acks=all produce, a consumer
group that commits, and kadm's admin calls (CreateTopics, ListOffsets, OffsetFetch,
DescribeGroups, DeleteRecords, Metadata).

The client is tests/clients/go (kgoprobe), built by
`cd tests/clients/go && go build -o target/kgoprobe .`; each subcommand prints one JSON object
per line, with broker errors by their Kafka name (TOPIC_ALREADY_EXISTS, ...).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from required import missing

GO_DIR = Path(__file__).resolve().parent.parent / "clients" / "go"
KGOPROBE = Path(os.environ.get("SLUICE_KGOPROBE", GO_DIR / "target" / "kgoprobe"))
PROBE_TIMEOUT_S = 60
# Timestamps far from the clock, so that one the broker made up could not pass for them.
BASE_TS = 1_600_000_000_000
# A record batch's compression attribute, by the name kgoprobe's -compression takes.
CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


@pytest.fixture(autouse=True)
def kgoprobe_built():
    if not os.access(KGOPROBE, os.X_OK):
        missing(f"the franz-go probe is not built at {KGOPROBE} "
                f"(cd tests/clients/go && go build -o target/kgoprobe .)")


def probe(kafka, command: str, *args, records=None, timeout_s: float = 30) -> list[dict]:
    """Runs `kgoprobe command` against the target; its JSON lines. `records` go to stdin."""
    stdin = "".join(json.dumps(r) + "\n" for r in records) if records is not None else None
    completed = subprocess.run(
        [str(KGOPROBE), command, "-brokers", kafka.bootstrap, "-timeout", f"{timeout_s}s",
         *[str(a) for a in args]],
        input=stdin, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    lines = [json.loads(line) for line in completed.stdout.splitlines() if line.strip()]
    fatal = [line["fatal"] for line in lines if "fatal" in line]
    assert completed.returncode == 0 and not fatal, \
        f"kgoprobe {command} exited {completed.returncode}: {fatal} {completed.stderr[-2000:]}"
    return lines


def produce(kafka, topic: str, records: list[dict], *args) -> list[dict]:
    results = probe(kafka, "produce", "-topic", topic, *args, records=records)
    assert [r["error"] for r in results] == [None] * len(records), results
    return results


def consume(kafka, topic: str, count: int, *args) -> tuple[list[dict], list[dict]]:
    """(records, the other lines) of `kgoprobe consume`."""
    lines = probe(kafka, "consume", "-topic", topic, "-count", count, *args)
    records = [line for line in lines if "offset" in line]
    return records, [line for line in lines if "offset" not in line]


def keyed_records(n: int, base_ts: int = BASE_TS, partition: int | None = None) -> list[dict]:
    records = []
    for i in range(n):
        record = {"key": f"key-{i}", "value": f"value-{i}",
                  "headers": [["trace", f"t{i}"], ["n", str(i)]], "timestamp": base_ts + i * 1000}
        if partition is not None:
            record["partition"] = partition
        records.append(record)
    return records


def by_partition(lines: list[dict]) -> dict:
    return {line["partition"]: line for line in lines}


def test_produce_assigns_offsets_from_zero_and_keeps_timestamps(kafka):
    topic = kafka.create_topic()
    results = produce(kafka, topic, keyed_records(5))
    assert [(r["partition"], r["offset"], r["timestamp"]) for r in results] == \
        [(0, i, BASE_TS + i * 1000) for i in range(5)]


def test_keys_values_headers_and_timestamps_round_trip(kafka):
    topic = kafka.create_topic()
    sent = [
        {"key": "k0", "value": "v0", "headers": [["a", "1"], ["a", "2"], ["b", ""]],
         "timestamp": BASE_TS},
        {"key": None, "value": "no key", "headers": [], "timestamp": BASE_TS + 1},
        {"key": "tombstone", "value": None, "headers": [["only", "header"]],
         "timestamp": BASE_TS - 86_400_000},
        {"key": "", "value": "", "headers": [], "timestamp": BASE_TS + 2},
        {"key": "ünïcödé", "value": "ë" * 3000, "headers": [["h", "ß"]], "timestamp": BASE_TS + 3},
    ]
    produce(kafka, topic, [dict(r, partition=0) for r in sent], "-manual-partition")
    records, _ = consume(kafka, topic, len(sent))
    assert [r["offset"] for r in records] == list(range(len(sent)))
    for got, want in zip(records, sent):
        assert (got["key"], got["value"], got["headers"], got["timestamp"]) == \
            (want["key"], want["value"], want["headers"], want["timestamp"])
        assert got["timestamp_type"] == 0  # CreateTime


@pytest.mark.parametrize("compression", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches_round_trip_and_keep_their_codec(kafka, compression):
    topic = kafka.create_topic()  # compression.type=producer: the broker keeps the codec
    sent = [{"key": f"key-{i}", "value": "payload " * 50 + str(i), "headers": [["i", str(i)]],
             "timestamp": BASE_TS + i} for i in range(20)]
    produce(kafka, topic, sent, "-compression", compression)
    records, _ = consume(kafka, topic, len(sent))
    assert [(r["offset"], r["key"], r["value"], r["headers"], r["timestamp"]) for r in records] \
        == [(i, s["key"], s["value"], s["headers"], s["timestamp"]) for i, s in enumerate(sent)]
    assert {r["compression"] for r in records} == {CODECS[compression]}


def test_log_append_time_topic_replaces_the_producers_timestamp(kafka):
    topic = kafka.create_topic(config={"message.timestamp.type": "LogAppendTime"})
    before = int(time.time() * 1000)
    produce(kafka, topic, keyed_records(3))
    after = int(time.time() * 1000)
    records, _ = consume(kafka, topic, 3)
    for record in records:
        assert record["timestamp_type"] == 1  # LogAppendTime
        assert before - 1000 <= record["timestamp"] <= after + 1000, record


def test_idempotent_produce_across_partitions_is_contiguous(kafka):
    topic = kafka.create_topic(partitions=3)
    records = [dict(r, partition=i % 3) for i, r in enumerate(keyed_records(600))]
    results = produce(kafka, topic, records, "-manual-partition")
    for partition in range(3):
        offsets = [r["offset"] for r in results if r["partition"] == partition]
        assert offsets == list(range(200)), partition
    ends = probe(kafka, "list-offsets", "-mode", "end", topic)
    assert [(e["partition"], e["offset"], e["error"]) for e in ends] == \
        [(p, 200, None) for p in range(3)]


def test_group_consume_commits_and_describe_shows_the_member(kafka):
    topic = kafka.create_topic(partitions=3)
    records = [dict(r, partition=i % 3) for i, r in enumerate(keyed_records(9))]
    produce(kafka, topic, records, "-manual-partition")
    group = kafka.name("g")
    consumed, other = consume(kafka, topic, 9, "-group", group, "-describe")
    assert sorted((r["partition"], r["offset"]) for r in consumed) == \
        sorted((p, o) for p in range(3) for o in range(3))
    assert {"committed": True} in other, other
    described = next(line for line in other if "state" in line)
    assert described["error"] is None
    assert (described["state"], described["protocol_type"], described["protocol"]) == \
        ("Stable", "consumer", "cooperative-sticky")
    assert len(described["members"]) == 1
    member = described["members"][0]
    assert member["client_id"] == "kgoprobe"
    assert member["member_id"].startswith("kgoprobe-")
    assert member["subscribed"] == [topic]
    assert member["assigned"] == {topic: [0, 1, 2]}
    assert {"closed": True} in other

    committed = probe(kafka, "fetch-offsets", "-group", group)
    assert [(c["topic"], c["partition"], c["offset"], c["error"]) for c in committed] == \
        [(topic, p, 3, None) for p in range(3)]
    # The member left on close: the group is empty, its offsets stay.
    (after,) = probe(kafka, "describe-groups", group)
    assert (after["state"], after["protocol_type"], after["members"], after["error"]) == \
        ("Empty", "consumer", [], None)


def test_describe_groups_gives_the_member_host_as_java_prints_an_address(kafka):
    """Kafka fills DescribeGroups' client_host with InetAddress.toString(): "/127.0.0.1"."""
    topic = kafka.create_topic()
    produce(kafka, topic, keyed_records(1))
    _, other = consume(kafka, topic, 1, "-group", kafka.name("g"), "-describe")
    described = next(line for line in other if "state" in line)
    assert [m["client_host"] for m in described["members"]] == ["/127.0.0.1"]


def test_a_second_member_of_the_group_resumes_from_the_commit(kafka):
    topic = kafka.create_topic()
    produce(kafka, topic, keyed_records(4))
    group = kafka.name("g")
    first, _ = consume(kafka, topic, 4, "-group", group)
    assert [r["offset"] for r in first] == [0, 1, 2, 3]
    produce(kafka, topic, keyed_records(2, base_ts=BASE_TS + 10_000))
    second, _ = consume(kafka, topic, 2, "-group", group)
    assert [(r["offset"], r["timestamp"]) for r in second] == \
        [(4, BASE_TS + 10_000), (5, BASE_TS + 11_000)]
    committed = probe(kafka, "fetch-offsets", "-group", group)
    assert [(c["partition"], c["offset"]) for c in committed] == [(0, 6)]


def test_unknown_group_has_no_offsets_and_is_dead(kafka):
    group = kafka.name("g")
    assert probe(kafka, "fetch-offsets", "-group", group) == []
    # Up to DescribeGroups v5 an unknown group is Dead without an error (v6 answers
    # GROUP_ID_NOT_FOUND); pinned to v5, the highest both brokers speak.
    (described,) = probe(kafka, "describe-groups", "-max-version", "DescribeGroups=5", group)
    assert (described["state"], described["members"], described["error"]) == ("Dead", [], None)


# franz-go compresses with snappy by default, when that makes a batch smaller: the lookup by
# timestamp must find the record inside a compressed batch as it does in a plain one.
@pytest.mark.parametrize("compression", ["none", "snappy"])
def test_list_offsets_start_end_and_by_timestamp(kafka, compression):
    topic = kafka.create_topic(partitions=2)
    empty_start = probe(kafka, "list-offsets", "-mode", "start", topic)
    empty_end = probe(kafka, "list-offsets", "-mode", "end", topic)
    assert [(o["partition"], o["offset"]) for o in empty_start] == [(0, 0), (1, 0)]
    assert [(o["partition"], o["offset"]) for o in empty_end] == [(0, 0), (1, 0)]

    produce(kafka, topic, keyed_records(5, partition=0), "-manual-partition",
            "-compression", compression)
    records, _ = consume(kafka, topic, 5)
    assert {r["compression"] for r in records} == {CODECS[compression]}
    start = by_partition(probe(kafka, "list-offsets", "-mode", "start", topic))
    end = by_partition(probe(kafka, "list-offsets", "-mode", "end", topic))
    assert (start[0]["offset"], end[0]["offset"], start[1]["offset"], end[1]["offset"]) == \
        (0, 5, 0, 0)
    assert all(o["error"] is None for o in [*start.values(), *end.values()])

    def after(milli):
        return by_partition(probe(kafka, "list-offsets", "-mode", "after-milli",
                                  "-milli", milli, topic))

    # (timestamp asked, (offset, timestamp) answered): the first record at or after it.
    answers = {milli: after(milli)[0] for milli in
               (0, BASE_TS + 2000, BASE_TS + 2500, BASE_TS + 4000)}
    assert {milli: (o["offset"], o["timestamp"], o["error"]) for milli, o in answers.items()} == {
        0: (0, BASE_TS, None),
        BASE_TS + 2000: (2, BASE_TS + 2000, None),
        BASE_TS + 2500: (3, BASE_TS + 3000, None),
        BASE_TS + 4000: (4, BASE_TS + 4000, None),
    }
    # Past the last record: Kafka finds none (-1), which kadm reports as the end offset.
    late = after(BASE_TS + 3_600_000)
    assert (late[0]["offset"], late[0]["error"]) == (5, None)
    assert (late[1]["offset"], late[1]["error"]) == (0, None)


OUT_OF_ORDER = [BASE_TS + d for d in (5000, 1000, 9000, 2000, 3000)]


def out_of_order_batch(kafka, compression: str) -> str:
    """A topic holding one batch of five records whose timestamps are not in offset order."""
    topic = kafka.create_topic()
    produce(kafka, topic, [{"key": f"k{i}", "value": "v" * 100, "timestamp": ts}
                           for i, ts in enumerate(OUT_OF_ORDER)], "-compression", compression)
    records, _ = consume(kafka, topic, 5)
    assert [(r["offset"], r["timestamp"], r["compression"]) for r in records] == \
        [(i, ts, CODECS[compression]) for i, ts in enumerate(OUT_OF_ORDER)]
    return topic


def listed_after(kafka, topic: str, milli: int) -> tuple:
    (listed,) = probe(kafka, "list-offsets", "-mode", "after-milli", "-milli", milli, topic)
    return listed["offset"], listed["timestamp"], listed["error"]


@pytest.mark.parametrize("compression", ["none", "snappy"])
def test_list_offsets_by_timestamp_with_timestamps_out_of_order(kafka, compression):
    topic = out_of_order_batch(kafka, compression)
    # The first offset whose record is at or after the time, with that record's timestamp.
    assert listed_after(kafka, topic, BASE_TS + 1500) == (0, BASE_TS + 5000, None)
    assert listed_after(kafka, topic, BASE_TS + 6000) == (2, BASE_TS + 9000, None)


@pytest.mark.parametrize("compression", ["none", "snappy"])
def test_list_offsets_max_timestamp_is_the_record_with_the_largest_timestamp(kafka, compression):
    topic = out_of_order_batch(kafka, compression)
    # MAX_TIMESTAMP (-3, ListOffsets v7+) is the record holding it, not the batch's last offset.
    assert listed_after(kafka, topic, -3) == (2, BASE_TS + 9000, None)


def test_list_offsets_timestamps_newer_than_the_version_are_unsupported_version(kafka):
    topic = kafka.create_topic()
    produce(kafka, topic, keyed_records(2))
    # EARLIEST_LOCAL (-4) needs ListOffsets v8 and LATEST_TIERED (-5) v9; at v7 they are refused.
    for special in (-4, -5):
        (listed,) = probe(kafka, "list-offsets", "-max-version", "ListOffsets=7",
                          "-mode", "after-milli", "-milli", special, topic)
        assert (listed["offset"], listed["error"]) == (-1, "UNSUPPORTED_VERSION"), special


def create(kafka, partitions, replication_factor, *topics, extra=()):
    return {line["topic"]: line
            for line in probe(kafka, "create-topics", "-partitions", partitions,
                              "-replication-factor", replication_factor, *extra, *topics)}


def test_create_topics_answers_kafkas_errors(kafka):
    existing = kafka.create_topic(partitions=2)
    assert create(kafka, 2, 1, existing)[existing]["error"] == "TOPIC_ALREADY_EXISTS"
    no_partitions = kafka.name()
    assert create(kafka, 0, 1, no_partitions)[no_partitions]["error"] == "INVALID_PARTITIONS"
    too_many_replicas = kafka.name()
    assert create(kafka, 1, 3, too_many_replicas)[too_many_replicas]["error"] == \
        "INVALID_REPLICATION_FACTOR"
    bad_config = kafka.name()
    assert create(kafka, 1, 1, bad_config, extra=["-config", "retention.ms=soon"])[
        bad_config]["error"] == "INVALID_CONFIG"
    # None of them was created.
    listed = {line.get("topic") for line in probe(kafka, "metadata")}
    assert existing in listed
    assert not listed & {no_partitions, too_many_replicas, bad_config}


def test_create_topics_answers_what_it_created(kafka):
    name, defaults = kafka.name(), kafka.name()
    created = create(kafka, 3, 1, name)[name]
    kafka._topics.append(name)  # deleted after the test, as create_topic's are
    assert (created["error"], created["partitions"], created["replication_factor"]) == \
        (None, 3, 1)
    assert created["topic_id"] != "AAAAAAAAAAAAAAAAAAAAAA"
    # -1 asks for the broker's defaults (num.partitions=1, default.replication.factor=1).
    made = create(kafka, -1, -1, defaults)[defaults]
    kafka._topics.append(defaults)
    assert (made["error"], made["partitions"], made["replication_factor"]) == (None, 1, 1)
    (metadata,) = [line for line in probe(kafka, "metadata", name) if "topic" in line]
    assert metadata["topic_id"] == created["topic_id"]
    assert len(metadata["partitions"]) == 3


def test_delete_records_moves_the_start_offset(kafka):
    topic = kafka.create_topic()
    produce(kafka, topic, keyed_records(10))
    (deleted,) = probe(kafka, "delete-records", f"{topic}:0:4")
    assert (deleted["partition"], deleted["low_watermark"], deleted["error"]) == (0, 4, None)
    (start,) = probe(kafka, "list-offsets", "-mode", "start", topic)
    (end,) = probe(kafka, "list-offsets", "-mode", "end", topic)
    assert (start["offset"], end["offset"]) == (4, 10)
    records, _ = consume(kafka, topic, 6)
    assert [r["offset"] for r in records] == list(range(4, 10))
    assert records[0]["key"] == "key-4"
    # Past the high watermark is out of range; -1 means up to the high watermark.
    (beyond,) = probe(kafka, "delete-records", f"{topic}:0:11")
    assert beyond["error"] == "OFFSET_OUT_OF_RANGE"
    (to_end,) = probe(kafka, "delete-records", f"{topic}:0:-1")
    assert (to_end["low_watermark"], to_end["error"]) == (10, None)
    (start,) = probe(kafka, "list-offsets", "-mode", "start", topic)
    assert start["offset"] == 10


def test_metadata_describes_the_broker_and_topics(kafka):
    topic = kafka.create_topic(partitions=3)
    cluster, *topics = probe(kafka, "metadata", topic)
    assert len(cluster["brokers"]) == 1
    broker = cluster["brokers"][0]
    assert f"{broker['host']}:{broker['port']}" == kafka.bootstrap
    assert cluster["controller"] == broker["node_id"]
    assert cluster["cluster"]
    (described,) = topics
    assert (described["topic"], described["internal"], described["error"]) == \
        (topic, False, None)
    assert [(p["partition"], p["leader"], p["replicas"], p["isr"], p["error"])
            for p in described["partitions"]] == \
        [(p, broker["node_id"], [broker["node_id"]], [broker["node_id"]], None)
         for p in range(3)]
    # Listing every topic leaves internal ones out; an unknown topic is UNKNOWN_TOPIC_OR_PARTITION
    # (kadm's Metadata does not ask for it to be created).
    listed = {line["topic"]: line for line in probe(kafka, "metadata") if "topic" in line}
    assert topic in listed and "__consumer_offsets" not in listed
    unknown = kafka.name()
    _, missing_topic = probe(kafka, "metadata", unknown)
    assert (missing_topic["topic"], missing_topic["error"]) == \
        (unknown, "UNKNOWN_TOPIC_OR_PARTITION")


def test_cluster_id_is_a_uuid_in_kafkas_base64_form(kafka):
    """A KRaft cluster id is a Uuid as Kafka prints one: URL-safe base64, 22 characters (the
    storage tool refuses any other); clients and tools show and compare it as such."""
    cluster = probe(kafka, "metadata", "-all")[0]
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster["cluster"]), cluster["cluster"]


def test_go_produces_and_librdkafka_consumes(kafka):
    topic = kafka.create_topic()
    produce(kafka, topic, keyed_records(5))
    consumer = kafka.consumer()
    consumer.subscribe([topic])
    got = []
    deadline = time.monotonic() + 30
    while len(got) < 5 and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            got.append(message)
    assert [(m.offset(), m.key(), m.value(), m.timestamp(), m.headers()) for m in got] == \
        [(i, f"key-{i}".encode(), f"value-{i}".encode(), (1, BASE_TS + i * 1000),
          [("trace", f"t{i}".encode()), ("n", str(i).encode())]) for i in range(5)]


def test_librdkafka_produces_and_go_consumes_in_a_group(kafka):
    topic = kafka.create_topic()
    producer = kafka.producer(**{"enable.idempotence": True, "acks": "all"})
    for i in range(5):
        producer.produce(topic, key=f"k{i}", value=f"v{i}", timestamp=BASE_TS + i,
                         headers=[("from", b"librdkafka")], partition=0)
    assert producer.flush(30) == 0
    group = kafka.name("g")
    records, other = consume(kafka, topic, 5, "-group", group)
    assert [(r["offset"], r["key"], r["value"], r["timestamp"], r["headers"]) for r in records] == \
        [(i, f"k{i}", f"v{i}", BASE_TS + i, [["from", "librdkafka"]]) for i in range(5)]
    assert {"committed": True} in other
    # librdkafka sees the group's commit as Kafka stored it.
    (committed,) = kafka.consumer(**{"group.id": group}).committed(
        [TopicPartition(topic, 0)], timeout=30)
    assert committed.offset == 5
