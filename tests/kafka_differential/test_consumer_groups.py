"""Consumer groups with the classic rebalance protocol: a member that leaves hands its
partitions over without any offset being committed twice; committed offsets are where a group
resumes, also after the broker restarts; the group admin APIs see and delete groups."""

import threading
import time

import pytest
from confluent_kafka import (
    Consumer,
    ConsumerGroupState,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from librdkafka_client import admin, create_topic, high_watermarks, produce_values, unique_name


def group_consumer(bootstrap, group, **extra):
    config = {
        "bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
        "auto.offset.reset": "earliest", "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 500, "max.poll.interval.ms": 60000,
    }
    config.update(extra)
    return Consumer(config)


class CommitLedger:
    """Every successful synchronous commit, in the order the brokers acknowledged them (each
    member records its commit before it can take part in the next rebalance)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.commits = []  # (partition, offset, member)
        self.processed = []  # (partition, offset, value, member)

    def record_processed(self, member, msgs):
        with self.lock:
            self.processed.extend((m.partition(), m.offset(), m.value(), member) for m in msgs)

    def record_commit(self, member, offsets):
        with self.lock:
            self.commits.extend((tp.partition, tp.offset, member) for tp in offsets)

    def distinct_values(self):
        with self.lock:
            return {value for _, _, value, _ in self.processed}


# A commit that races a rebalance is refused with one of these; it is not a failure.
REBALANCE_COMMIT_ERRORS = {KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION,
                           KafkaError.UNKNOWN_MEMBER_ID, KafkaError._ASSIGNMENT_LOST}


class GroupMember(threading.Thread):
    """Polls, processes, then commits what it processed synchronously, until `stop` is set;
    then it closes its consumer, which leaves the group."""

    def __init__(self, name, bootstrap, group, topic, ledger):
        super().__init__(name=name, daemon=True)
        self.member = name
        self.consumer = group_consumer(bootstrap, group)
        self.topic = topic
        self.ledger = ledger
        self.stop = threading.Event()
        self.assignment = set()
        self.assignment_history = []
        self.error = None

    def on_assign(self, consumer, partitions):
        self.assignment = {tp.partition for tp in partitions}
        self.assignment_history.append(sorted(self.assignment))

    def on_revoke(self, consumer, partitions):
        self.assignment = set()

    def run(self):
        try:
            self.consumer.subscribe([self.topic], on_assign=self.on_assign,
                                    on_revoke=self.on_revoke)
            while not self.stop.is_set():
                msgs = self.consumer.consume(num_messages=50, timeout=0.2)
                for msg in msgs:
                    if msg.error() is not None:
                        raise KafkaException(msg.error())
                if not msgs:
                    continue
                self.ledger.record_processed(self.member, msgs)
                next_offsets = {}
                for msg in msgs:
                    next_offsets[msg.partition()] = msg.offset() + 1
                offsets = [TopicPartition(self.topic, p, o) for p, o in next_offsets.items()]
                try:
                    committed = self.consumer.commit(offsets=offsets, asynchronous=False)
                except KafkaException as err:
                    # A commit racing a rebalance is refused (REBALANCE_IN_PROGRESS,
                    # ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID); those messages are processed
                    # again by the next owner. At-least-once, as with Kafka.
                    if err.args[0].retriable() or err.args[0].code() in REBALANCE_COMMIT_ERRORS:
                        continue
                    raise
                failed = [tp for tp in committed if tp.error is not None]
                self.ledger.record_commit(
                    self.member, [tp for tp in committed if tp.error is None])
                if failed and not all(tp.error.code() in REBALANCE_COMMIT_ERRORS
                                      for tp in failed):
                    raise KafkaException(failed[0].error)
        except Exception as err:  # surfaced by the test through .error
            self.error = err
        finally:
            self.consumer.close()


def wait_until(condition, timeout_s, message):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, message() if callable(message) else message
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_member_leaving_moves_partitions_without_any_offset_committed_twice(kafka):
    partitions = 6
    total = 6000
    topic = unique_name("group-rebalance")
    group = unique_name("group")
    create_topic(kafka.bootstrap, topic, partitions)
    ledger = CommitLedger()
    members = [GroupMember(f"member-{i}", kafka.bootstrap, group, topic, ledger)
               for i in range(3)]
    for member in members:
        member.start()
    try:
        wait_until(lambda: sorted(len(m.assignment) for m in members) == [2, 2, 2], 60,
                   lambda: f"group never settled on 2 partitions each: "
                           f"{[m.assignment_history for m in members]}")

        # Produce while the group consumes, so the leave lands mid-stream.
        values = [f"msg-{i:06d}".encode() for i in range(total)]
        producer_done = threading.Event()
        producer_error = []

        def produce_in_bursts():
            try:
                for start in range(0, total, 500):
                    # Round-robin over partitions, so every partition keeps receiving messages
                    # after the leave.
                    produce_values(kafka.bootstrap, topic, values[start:start + 500],
                                   partition_for=lambda i: i % partitions)
                    time.sleep(0.25)
            except Exception as err:
                producer_error.append(err)
            finally:
                producer_done.set()

        producer = threading.Thread(target=produce_in_bursts, daemon=True)
        producer.start()

        wait_until(lambda: len(ledger.distinct_values()) >= total // 3 or producer_error, 60,
                   "group did not process a third of the messages in 60s")
        leaver = members[0]
        leaver.stop.set()
        leaver.join(timeout=30)
        assert not leaver.is_alive(), "leaving member did not close within 30s"
        assert leaver.error is None, f"leaving member failed: {leaver.error!r}"
        with ledger.lock:
            processed_before_leave = len(ledger.processed)

        producer.join(timeout=90)
        assert not producer.is_alive() and not producer_error, producer_error
        wait_until(lambda: len(ledger.distinct_values()) == total, 90,
                   lambda: f"only {len(ledger.distinct_values())} of {total} processed")
        survivors = members[1:]
        wait_until(lambda: set().union(*(m.assignment for m in survivors)) == set(range(6)),
                   30, "the two remaining members do not own all six partitions")
        ends = {p: hw for p, (_, hw) in high_watermarks(kafka.bootstrap, topic,
                                                        partitions).items()}

        def all_committed():
            latest = {}
            with ledger.lock:
                for partition, offset, _ in ledger.commits:
                    latest[partition] = max(latest.get(partition, 0), offset)
            return latest == ends

        wait_until(all_committed, 30, "the group never committed up to the end of the log")
    finally:
        for member in members:
            member.stop.set()
        for member in members:
            member.join(timeout=30)
    for member in members:
        assert member.error is None, f"{member.member} failed: {member.error!r}"

    assert ledger.distinct_values() == set(values), "some messages were never processed"
    # The leaver's partitions moved to the others, who processed them after it left.
    leaver_partitions = set(members[0].assignment_history[-1])
    taken_over = {p for p, _, _, m in ledger.processed[processed_before_leave:]
                  if m != "member-0"}
    assert leaver_partitions <= taken_over, (leaver_partitions, taken_over)
    # No offset committed twice: per partition, commits only ever move forward, across members.
    by_partition = {}
    for partition, offset, member in ledger.commits:
        by_partition.setdefault(partition, []).append((offset, member))
    for partition, commits in by_partition.items():
        offsets = [o for o, _ in commits]
        assert all(a < b for a, b in zip(offsets, offsets[1:])), (
            f"partition {partition}: offsets committed out of order or twice: {commits}")
    # And from the broker's point of view the group's committed offsets are the log ends.
    check = group_consumer(kafka.bootstrap, group)
    try:
        committed = check.committed([TopicPartition(topic, p) for p in range(partitions)],
                                    timeout=10)
    finally:
        check.close()
    assert {tp.partition: tp.offset for tp in committed} == ends


def consume_n(consumer, n, timeout_s=30):
    msgs = []
    deadline = time.monotonic() + timeout_s
    while len(msgs) < n:
        assert time.monotonic() < deadline, f"consumed {len(msgs)} of {n} in {timeout_s}s"
        for msg in consumer.consume(num_messages=n - len(msgs), timeout=0.5):
            assert msg.error() is None, f"consumer error: {msg.error()}"
            msgs.append(msg)
    return msgs


def commit_first(bootstrap, group, topic, n):
    """A member reads n messages, commits after the n-th synchronously, and leaves."""
    consumer = group_consumer(bootstrap, group)
    try:
        consumer.subscribe([topic])
        msgs = consume_n(consumer, n)
        last = msgs[-1]
        consumer.commit(offsets=[TopicPartition(topic, last.partition(), last.offset() + 1)],
                        asynchronous=False)
        return last.offset() + 1
    finally:
        consumer.close()


def assert_resumes_at(bootstrap, group, topic, values, committed_offset):
    consumer = group_consumer(bootstrap, group)
    try:
        [tp] = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        assert tp.offset == committed_offset
        consumer.subscribe([topic])
        [first] = consume_n(consumer, 1)
        assert first.offset() == committed_offset, (
            f"resumed at offset {first.offset()}, committed {committed_offset}")
        assert first.value() == values[committed_offset]
    finally:
        consumer.close()


@pytest.mark.timeout(90)
def test_consumer_restarted_after_commit_resumes_exactly_at_committed_offset(kafka):
    topic = unique_name("resume")
    group = unique_name("resume-group")
    create_topic(kafka.bootstrap, topic, 1)
    values = [f"msg-{i}".encode() for i in range(100)]
    produce_values(kafka.bootstrap, topic, values)
    committed = commit_first(kafka.bootstrap, group, topic, 40)
    assert committed == 40
    assert_resumes_at(kafka.bootstrap, group, topic, values, committed)


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
@pytest.mark.timeout(120)
def test_committed_offsets_survive_broker_restart(kafka, stop):
    topic = unique_name("offsets-durable")
    group = unique_name("durable-group")
    create_topic(kafka.bootstrap, topic, 1)
    values = [f"msg-{i}".encode() for i in range(100)]
    produce_values(kafka.bootstrap, topic, values)
    committed = commit_first(kafka.bootstrap, group, topic, 60)
    # A commit acknowledged to the client is durable: it must survive kill -9 too.
    kafka.restart(kill=stop == "sigkill")
    assert_resumes_at(kafka.bootstrap, group, topic, values, committed)


@pytest.mark.timeout(120)
def test_group_admin_lists_describes_and_deletes_groups(kafka):
    topic = unique_name("group-admin")
    group = unique_name("admin-group")
    create_topic(kafka.bootstrap, topic, 2)
    produce_values(kafka.bootstrap, topic, [b"a", b"b", b"c"])
    client = admin(kafka.bootstrap)

    consumer = group_consumer(kafka.bootstrap, group)
    try:
        consumer.subscribe([topic])
        consume_n(consumer, 1)
        description = client.describe_consumer_groups([group], request_timeout=10)[group].result(
            timeout=15)
        assert description.group_id == group
        assert description.state == ConsumerGroupState.STABLE
        assert len(description.members) == 1
        [member] = description.members
        assigned = {(tp.topic, tp.partition) for tp in member.assignment.topic_partitions}
        assert assigned == {(topic, 0), (topic, 1)}
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()

    listed = client.list_consumer_groups(request_timeout=10).result(timeout=15)
    assert not listed.errors, listed.errors
    assert group in {g.group_id for g in listed.valid}

    description = client.describe_consumer_groups([group], request_timeout=10)[group].result(
        timeout=15)
    assert description.state == ConsumerGroupState.EMPTY
    assert not description.members

    client.delete_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
    listed = client.list_consumer_groups(request_timeout=10).result(timeout=15)
    assert group not in {g.group_id for g in listed.valid}
    # Its committed offsets went with it.
    check = group_consumer(kafka.bootstrap, group)
    try:
        committed = check.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)],
                                    timeout=10)
    finally:
        check.close()
    assert all(tp.offset < 0 for tp in committed), committed
