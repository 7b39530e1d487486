"""Static membership (KIP-345) as Apache Kafka runs it: a member that restarts with the same
group.instance.id within its session timeout gets its partitions back without a rebalance."""

import time

from confluent_kafka import Consumer


def static_consumer(kafka, group, instance, assignments):
    consumer = Consumer({
        "bootstrap.servers": kafka.bootstrap, "group.id": group,
        "group.instance.id": instance, "session.timeout.ms": 20000,
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "partition.assignment.strategy": "range"})

    def on_assign(_consumer, partitions):
        assignments.append(sorted(p.partition for p in partitions))

    return consumer, on_assign


def poll_until(consumers, condition, timeout_s=45):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        for consumer in consumers:
            consumer.poll(0.1)


def test_a_static_member_restarting_within_its_session_gets_its_partitions_back(kafka):
    topic = kafka.create_topic(partitions=4)
    group = kafka.name("static")
    first_assignments, second_assignments = [], []
    first, on_first = static_consumer(kafka, group, "instance-a", first_assignments)
    second, on_second = static_consumer(kafka, group, "instance-b", second_assignments)
    first.subscribe([topic], on_assign=on_first)
    second.subscribe([topic], on_assign=on_second)
    try:
        # Both joined and the group settled on two members with two partitions each.
        poll_until([first, second], lambda: first_assignments and second_assignments
                   and len(first_assignments[-1]) == 2 and len(second_assignments[-1]) == 2)
        description = kafka.admin().describe_consumer_groups([group])[group].result(timeout=20)
        instances = sorted(m.group_instance_id for m in description.members)
        assert instances == ["instance-a", "instance-b"]
        kept = first_assignments[-1]
        rebalances_seen_by_second = len(second_assignments)

        # A static member leaves no LeaveGroup behind when it closes: its partitions wait.
        first.close()
        restarted_assignments = []
        first, on_first = static_consumer(kafka, group, "instance-a", restarted_assignments)
        first.subscribe([topic], on_assign=on_first)
        poll_until([first, second], lambda: restarted_assignments)
        assert restarted_assignments[-1] == kept
        # The other member saw no rebalance.
        for _ in range(20):
            second.poll(0.1)
        assert len(second_assignments) == rebalances_seen_by_second
        description = kafka.admin().describe_consumer_groups([group])[group].result(timeout=20)
        assert sorted(m.group_instance_id for m in description.members) == instances
    finally:
        first.close()
        second.close()
