"""The consumer rebalance protocol (KIP-848: ConsumerGroupHeartbeat, ConsumerGroupDescribe),
against Apache Kafka and Sluice alike: the coordinator assigns, members reconcile through
heartbeats, and a partition is handed over only once its owner revoked it."""

import time
import uuid

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

import consumer_protocol_wire as cp
from kafka_wire import ERROR_NONE, KafkaWire
from kafka.protocol.metadata import FindCoordinatorRequest

RETRIABLE_COORDINATOR_ERRORS = (14, 15, 16)  # load in progress, not available, not coordinator


def heartbeat(kafka, group, member_id, epoch, **kw) -> cp.HeartbeatResponse:
    """One heartbeat on a fresh connection, retried while the coordinator is still loading
    (Apache Kafka creates its offsets topic on the first FindCoordinator)."""
    deadline = time.monotonic() + 30
    while True:
        with KafkaWire(kafka.bootstrap) as wire:
            wire.request(FindCoordinatorRequest(key_type=0, key=group, coordinator_keys=[group]))
            response = cp.heartbeat(wire, group, member_id, epoch, **kw)
        if response.error_code not in RETRIABLE_COORDINATOR_ERRORS or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def join(kafka, group, topics, member_id=None, **kw) -> cp.HeartbeatResponse:
    return heartbeat(kafka, group, member_id or str(uuid.uuid4()), 0,
                     rebalance_timeout_ms=30000, topics=topics, owned={}, **kw)


def describe(kafka, group) -> cp.DescribedGroup:
    deadline = time.monotonic() + 30
    while True:
        with KafkaWire(kafka.bootstrap) as wire:
            wire.request(FindCoordinatorRequest(key_type=0, key=group, coordinator_keys=[group]))
            [described] = cp.describe(wire, [group])
        if described.error_code not in RETRIABLE_COORDINATOR_ERRORS or time.monotonic() > deadline:
            return described
        time.sleep(0.2)


def until_assigned(kafka, group, member, joined) -> tuple[int, dict]:
    """(epoch, assignment) once the member has one. Apache Kafka's coordinator may not see a
    topic created a moment ago yet: it answers the join with an empty assignment and assigns
    on a later heartbeat, under a new epoch."""
    epoch, assignment = joined.member_epoch, joined.assignment
    deadline = time.monotonic() + 30
    while not assignment:
        assert time.monotonic() < deadline, "no assignment after 30 s"
        time.sleep(0.2)
        beat = heartbeat(kafka, group, member, epoch, owned={})
        assert beat.error_code == ERROR_NONE, beat
        epoch, assignment = beat.member_epoch, beat.assignment
    return epoch, assignment


def test_a_member_joins_reconciles_and_leaves(kafka):
    topic = kafka.create_topic(partitions=2)
    group = kafka.name("cg")
    member = str(uuid.uuid4())
    joined = join(kafka, group, [topic], member_id=member)
    assert (joined.error_code, joined.member_id, joined.heartbeat_interval_ms) == \
        (ERROR_NONE, member, 5000)
    epoch, assignment = until_assigned(kafka, group, member, joined)
    [(topic_id, partitions)] = assignment.items()
    assert partitions == [0, 1]

    # Nothing changed: the next heartbeat carries no assignment.
    steady = heartbeat(kafka, group, member, epoch, owned={topic_id: [0, 1]})
    assert (steady.error_code, steady.member_epoch, steady.assignment) == \
        (ERROR_NONE, epoch, None)
    described = describe(kafka, group)
    assert (described.error_code, described.state, described.group_epoch,
            described.assignment_epoch, described.assignor) == \
        (ERROR_NONE, "Stable", epoch, epoch, "uniform")
    [m] = described.members
    assert (m.member_id, m.member_epoch, m.assignment, m.target_assignment,
            m.subscribed_topic_names) == \
        (member, epoch, {topic: [0, 1]}, {topic: [0, 1]}, [topic])

    # A second member: the coordinator targets one partition each, but the second gets its
    # partition only once the first has given it up.
    second = join(kafka, group, [topic])
    assert (second.error_code, second.member_epoch, second.assignment) == \
        (ERROR_NONE, epoch + 1, {})
    revoke = heartbeat(kafka, group, member, epoch, owned={topic_id: [0, 1]})
    assert revoke.error_code == ERROR_NONE
    assert revoke.member_epoch == epoch  # unchanged until it has revoked
    [kept] = revoke.assignment.values()
    assert len(kept) == 1
    assert describe(kafka, group).state == "Reconciling"
    revoked = heartbeat(kafka, group, member, epoch, owned={topic_id: kept})
    assert (revoked.error_code, revoked.member_epoch) == (ERROR_NONE, epoch + 1)
    taken = heartbeat(kafka, group, second.member_id, epoch + 1, owned={})
    assert taken.assignment == {topic_id: [1 - kept[0]]}
    assert describe(kafka, group).state == "Stable"

    # Leaving (epoch -1) hands the partition back.
    left = heartbeat(kafka, group, second.member_id, -1)
    assert (left.error_code, left.member_epoch) == (ERROR_NONE, -1)
    back = heartbeat(kafka, group, member, epoch + 1, owned={topic_id: kept})
    assert (back.member_epoch, back.assignment) == (epoch + 2, {topic_id: [0, 1]})


def test_heartbeats_out_of_step_are_refused_with_kafkas_codes(kafka):
    topic = kafka.create_topic(partitions=1)
    group = kafka.name("cg")
    joined = join(kafka, group, [topic])
    assert joined.error_code == ERROR_NONE
    member = joined.member_id
    assert heartbeat(kafka, group, member, 5).error_code == cp.ERROR_FENCED_MEMBER_EPOCH
    assert heartbeat(kafka, group, str(uuid.uuid4()), 1).error_code == \
        cp.ERROR_UNKNOWN_MEMBER_ID
    no_timeout = heartbeat(kafka, group, str(uuid.uuid4()), 0, topics=[topic], owned={})
    assert no_timeout.error_code == cp.ERROR_INVALID_REQUEST
    assert join(kafka, group, [topic], assignor="no-such-assignor").error_code == \
        cp.ERROR_UNSUPPORTED_ASSIGNOR
    bad_regex = heartbeat(kafka, group, str(uuid.uuid4()), 0, rebalance_timeout_ms=30000,
                          regex="(", owned={})
    assert bad_regex.error_code == cp.ERROR_INVALID_REGULAR_EXPRESSION
    # A static member's instance id is taken while it is in the group.
    instance = kafka.name("instance")
    assert join(kafka, group, [topic], instance_id=instance).error_code == ERROR_NONE
    assert join(kafka, group, [topic], instance_id=instance).error_code == \
        cp.ERROR_UNRELEASED_INSTANCE_ID
    # The member that was not refused is still in step.
    assert heartbeat(kafka, group, member, joined.member_epoch).error_code == ERROR_NONE


def test_groups_of_the_other_protocol_or_none_are_not_found(kafka):
    topic = kafka.create_topic(partitions=1)
    nobody = kafka.name("nobody")
    missing = describe(kafka, nobody)
    assert (missing.error_code, missing.error_message, missing.state) == \
        (cp.ERROR_GROUP_ID_NOT_FOUND, f"Group {nobody} not found.", "")
    # A classic group with a member is no consumer group, for either API.
    classic_group = kafka.name("classic")
    consumer = kafka.consumer(**{"group.id": classic_group})
    consumer.subscribe([topic])
    deadline = time.monotonic() + 30
    while not consumer.assignment():
        assert time.monotonic() < deadline, "the classic consumer got no assignment"
        consumer.poll(0.2)
    described = describe(kafka, classic_group)
    assert described.error_code == cp.ERROR_GROUP_ID_NOT_FOUND
    assert described.error_message == f"Group {classic_group} is not a consumer group."
    # (A consumer-protocol member joining it converts the live group: see
    # test_a_live_group_moves_to_the_consumer_protocol_and_back.)
    # And a consumer group is no classic group (DescribeGroups v6, KIP-1043).
    consumer_group = kafka.name("cg")
    assert join(kafka, consumer_group, [topic]).error_code == ERROR_NONE
    [classic_view] = kafka.admin().describe_consumer_groups([consumer_group]).values()
    assert classic_view.result(timeout=20).group_id == consumer_group


def consume_all(consumers, expected: int, timeout_s: float = 90) -> list:
    seen = []
    deadline = time.monotonic() + timeout_s
    while len(seen) < expected:
        assert time.monotonic() < deadline, f"consumed {len(seen)} of {expected}"
        for consumer in consumers:
            message = consumer.poll(0.1)
            if message is None or message.error():
                continue
            seen.append((message.partition(), message.offset(), message.value()))
            consumer.commit(message, asynchronous=False)
    return seen


@pytest.mark.timeout(240)
def test_librdkafka_consumers_on_the_consumer_protocol_share_and_hand_over(kafka):
    """librdkafka with group.protocol=consumer: two members split four partitions, every
    message is read once, and when one closes the other takes everything over.

    The group settles before anything is produced: a manual commit racing an assignment
    change can get STALE_MEMBER_EPOCH (the coordinator bumped the member's epoch while the
    commit was in flight), on Apache Kafka as on Sluice, and the partition then moves on
    with its message uncommitted, to be read again."""
    topic = kafka.create_topic(partitions=4)
    group = kafka.name("cg")
    producer = kafka.producer()
    conf = {"group.id": group, "group.protocol": "consumer"}
    first = kafka.consumer(**conf)
    second = kafka.consumer(**conf)
    first.subscribe([topic])
    second.subscribe([topic])
    # Both end up with two partitions each.
    settle([first, second], lambda: sorted(len(owned(c)) for c in (first, second)) == [2, 2])
    described = describe(kafka, group)
    assert described.state == "Stable"
    assert sorted(len(p) for m in described.members for p in m.assignment.values()) == [2, 2]
    for i in range(40):
        producer.produce(topic, value=f"m{i}".encode(), partition=i % 4)
    assert producer.flush(30) == 0
    seen = consume_all([first, second], 40)
    assert sorted(value for _, _, value in seen) == sorted(f"m{i}".encode() for i in range(40))
    assert len(set(seen)) == 40

    second.close()
    settle([first], lambda: len(owned(first)) == 4)
    for i in range(40, 48):
        producer.produce(topic, value=f"m{i}".encode(), partition=i % 4)
    assert producer.flush(30) == 0
    later = consume_all([first], 8)
    assert sorted(value for _, _, value in later) == sorted(f"m{i}".encode() for i in range(40, 48))
    committed = first.committed([TopicPartition(topic, p) for p in range(4)], timeout=20)
    assert sorted(tp.offset for tp in committed) == [12, 12, 12, 12]
    # A commit with an epoch the member does not have is refused: here, after it left.
    first.close()
    listed = kafka.admin().list_consumer_groups().result(timeout=20)
    [entry] = [g for g in listed.valid if g.group_id == group]
    assert str(entry.type) in ("ConsumerGroupType.CONSUMER", "GroupType.CONSUMER")


def settle(consumers, until, timeout_s: float = 60) -> None:
    """Polls every consumer (discarding what it reads) until `until()` holds."""
    deadline = time.monotonic() + timeout_s
    while not until():
        assert time.monotonic() < deadline, [c.assignment() for c in consumers]
        for consumer in consumers:
            consumer.poll(0.1)


def owned(consumer) -> set:
    return {tp.partition for tp in consumer.assignment()}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky"])
def test_a_live_group_moves_to_the_consumer_protocol_and_back(kafka, strategy):
    """Online migration (KIP-848, group.consumer.migration.policy=bidirectional, Kafka's
    default): a librdkafka consumer on the classic protocol (an eager assignor, which gives
    up everything before it joins again, or a cooperative one, which says what it still
    owns) holds all four partitions; a
    second one on the consumer protocol joins the same group, which becomes a consumer group
    with the classic member still in it (it keeps JoinGroup/SyncGroup/Heartbeat, the
    coordinator assigns for it). The two split the partitions, never both holding one, and
    commit as members. When the consumer-protocol member leaves, the group is classic again
    and the first consumer gets everything back. Every message is read."""
    topic = kafka.create_topic(partitions=4)
    group = kafka.name("migrating")
    producer = kafka.producer()

    def produce(first: int, count: int) -> None:
        for i in range(first, first + count):
            producer.produce(topic, value=f"m{i}".encode(), partition=i % 4)
        assert producer.flush(30) == 0

    produce(0, 8)
    classic = kafka.consumer(**{"group.id": group, "group.protocol": "classic",
                                "partition.assignment.strategy": strategy,
                                "session.timeout.ms": 10000, "heartbeat.interval.ms": 500})
    classic.subscribe([topic])
    seen = consume_all([classic], 8)
    assert len(owned(classic)) == 4
    with KafkaWire(kafka.bootstrap) as wire:
        wire.request(FindCoordinatorRequest(key_type=0, key=group, coordinator_keys=[group]))
        [before] = cp.describe(wire, [group])
    assert before.error_code == cp.ERROR_GROUP_ID_NOT_FOUND, before

    modern = kafka.consumer(**{"group.id": group, "group.protocol": "consumer"})
    modern.subscribe([topic])

    def split() -> bool:
        mine, theirs = owned(classic), owned(modern)
        assert not mine & theirs, (mine, theirs)
        return len(mine) == 2 and len(theirs) == 2

    settle([classic, modern], split)
    described = describe(kafka, group)
    assert described.error_code == ERROR_NONE and described.state == "Stable", described
    assert sorted(len(p) for m in described.members for p in m.assignment.values()) == [2, 2]
    produce(8, 8)
    # Each commits what it read, as a member (the classic one with its generation).
    seen += consume_all([classic, modern], 8)

    modern.close()
    settle([classic], lambda: len(owned(classic)) == 4)
    with KafkaWire(kafka.bootstrap) as wire:
        wire.request(FindCoordinatorRequest(key_type=0, key=group, coordinator_keys=[group]))
        [after] = cp.describe(wire, [group])
    assert after.error_code == cp.ERROR_GROUP_ID_NOT_FOUND, after
    produce(16, 8)
    seen += consume_all([classic], 8)
    assert sorted(value for _, _, value in seen) == sorted(f"m{i}".encode() for i in range(24))
    committed = classic.committed([TopicPartition(topic, p) for p in range(4)], timeout=20)
    assert sorted(tp.offset for tp in committed) == [6, 6, 6, 6]
