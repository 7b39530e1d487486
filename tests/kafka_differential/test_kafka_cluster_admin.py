"""DescribeCluster (KIP-700), OffsetDelete (KIP-496) and what a topic's deletion does to the
offsets committed for it, as Apache Kafka answers them."""

import time

from kafka import errors as kafka_errors
import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicCollection, TopicPartition
from confluent_kafka.admin import AclOperation
from kafka import KafkaAdminClient
from kafka import TopicPartition as KafkaPythonPartition


def test_describe_cluster_names_the_broker_the_controller_and_the_cluster_id(kafka):
    description = kafka.admin().describe_cluster(
        include_authorized_operations=True, request_timeout=15).result(timeout=20)
    host, port = kafka.bootstrap.rsplit(":", 1)
    assert [(node.host, node.port) for node in description.nodes] == [(host, int(port))]
    assert description.controller.id == description.nodes[0].id
    # Kafka's form: a UUID's 16 bytes in URL-safe base64, no padding.
    assert len(description.cluster_id) == 22, description.cluster_id
    # No authorizer: every cluster operation is allowed, and listed as Kafka lists them.
    assert set(description.authorized_operations) == {
        AclOperation.CREATE, AclOperation.CLUSTER_ACTION, AclOperation.DESCRIBE_CONFIGS,
        AclOperation.ALTER_CONFIGS, AclOperation.IDEMPOTENT_WRITE, AclOperation.ALTER,
        AclOperation.DESCRIBE}


def commit(kafka, group, topic, offsets):
    consumer = kafka.consumer(**{"group.id": group})
    consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()],
                    asynchronous=False)
    consumer.close()


def committed(kafka, group, topic, partitions):
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(topic, p) for p in range(partitions)])
    result = kafka.admin().list_consumer_group_offsets([request])[group].result(timeout=20)
    return {tp.partition: tp.offset for tp in result.topic_partitions}


def delete_offsets(kafka, group, partitions):
    """OffsetDelete through kafka-python (librdkafka's Python binding does not offer it):
    {(topic, partition): error class}, or the top-level error raised."""
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:
        results = admin.delete_group_offsets(
            group, [KafkaPythonPartition(t, p) for t, p in partitions])
    finally:
        admin.close()
    return {(tp.topic, tp.partition): error for tp, error in results.items()}


def test_offset_delete_removes_an_empty_groups_offsets_of_the_named_partitions(kafka):
    topic = kafka.create_topic(partitions=2)
    group = kafka.name("g")
    commit(kafka, group, topic, {0: 5, 1: 7})
    assert delete_offsets(kafka, group, [(topic, 0)]) == {(topic, 0): kafka_errors.NoError}
    assert committed(kafka, group, topic, 2) == {0: -1001, 1: 7}


def test_offset_delete_of_an_unknown_group_is_group_id_not_found(kafka):
    topic = kafka.create_topic()
    with pytest.raises(kafka_errors.GroupIdNotFoundError):
        delete_offsets(kafka, kafka.name("g"), [(topic, 0)])


def test_offset_delete_keeps_offsets_of_topics_the_members_consume(kafka):
    consumed = kafka.create_topic()
    other = kafka.create_topic()
    group = kafka.name("g")
    commit(kafka, group, other, {0: 3})
    consumer = kafka.consumer(**{"group.id": group})
    consumer.subscribe([consumed])
    deadline = time.monotonic() + 30
    while not consumer.assignment():
        assert time.monotonic() < deadline, "no assignment"
        consumer.poll(0.2)
    consumer.commit(offsets=[TopicPartition(consumed, 0, 1)], asynchronous=False)

    # The subscribed topic's partition is refused; the other topic's offset goes.
    assert delete_offsets(kafka, group, [(consumed, 0), (other, 0)]) == {
        (consumed, 0): kafka_errors.GroupSubscribedToTopicError,
        (other, 0): kafka_errors.NoError}
    assert committed(kafka, group, consumed, 1) == {0: 1}
    assert committed(kafka, group, other, 1) == {0: -1001}


def test_describe_topics_lists_the_operations_allowed_on_the_topic(kafka):

    topic = kafka.create_topic(partitions=2)
    futures = kafka.admin().describe_topics(TopicCollection([topic]),
                                            include_authorized_operations=True)
    description = futures[topic].result(timeout=20)
    assert len(description.partitions) == 2
    assert set(description.authorized_operations) == {
        AclOperation.READ, AclOperation.WRITE, AclOperation.CREATE, AclOperation.DELETE,
        AclOperation.ALTER, AclOperation.DESCRIBE, AclOperation.DESCRIBE_CONFIGS,
        AclOperation.ALTER_CONFIGS}


def test_deleting_a_topic_deletes_the_offsets_groups_committed_for_it(kafka):
    """Kafka deletes the committed offsets of a deleted topic (in the background, after
    DeleteTopics answered): a group that committed offsets for it and for another topic lists
    only the other's afterwards, so a topic created again under the same name would start
    with none."""
    deleted, kept = kafka.create_topic(partitions=2), kafka.create_topic()
    group = kafka.name("g")
    commit(kafka, group, deleted, {0: 5, 1: 7})
    commit(kafka, group, kept, {0: 3})
    future = kafka.admin().delete_topics([deleted], operation_timeout=30)[deleted]
    future.result(timeout=30)

    def listed():
        result = kafka.admin().list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group)])[group].result(timeout=20)
        return sorted((tp.topic, tp.partition, tp.offset) for tp in result.topic_partitions)

    deadline = time.monotonic() + 30
    while (offsets := listed()) != [(kept, 0, 3)]:
        assert time.monotonic() < deadline, offsets
        time.sleep(0.2)
    assert committed(kafka, group, deleted, 2) == {0: -1001, 1: -1001}
