"""DescribeTopicPartitions (KIP-966) as Apache Kafka pages it: partitions in topic-name order,
at most `response_partition_limit` per response, with a cursor to the next one."""

from kafka.protocol.admin import DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse

from kafka_wire import KafkaWire


def pages(kafka, topics, limit):
    """Every page of DescribeTopicPartitions for `topics`, following the cursor:
    [[(topic, [partitions])], ...]."""
    result, cursor = [], None
    with KafkaWire(kafka.bootstrap) as wire:
        while True:
            request = DescribeTopicPartitionsRequest(
                topics=[DescribeTopicPartitionsRequest.TopicRequest(name=t) for t in topics],
                response_partition_limit=limit, cursor=cursor)
            response = wire.request(request, version=0,
                                    response_class=DescribeTopicPartitionsResponse)
            result.append([(t.name, [p.partition_index for p in t.partitions],
                            t.error_code) for t in response.topics])
            if response.next_cursor is None:
                return result
            cursor = DescribeTopicPartitionsRequest.Cursor(
                topic_name=response.next_cursor.topic_name,
                partition_index=response.next_cursor.partition_index)
            assert len(result) < 20, result


def test_partitions_come_in_pages_of_the_limit_in_topic_order(kafka):
    prefix = kafka.name("pages")
    first = kafka.create_topic(f"{prefix}-a", partitions=3)
    second = kafka.create_topic(f"{prefix}-b", partitions=4)
    assert pages(kafka, [second, first], 2) == [
        [(first, [0, 1], 0)],
        [(first, [2], 0), (second, [0], 0)],
        [(second, [1, 2], 0)],
        [(second, [3], 0)],
    ]
    assert pages(kafka, [first, second], 100) == [[(first, [0, 1, 2], 0), (second, [0, 1, 2, 3], 0)]]


def test_an_unknown_topic_is_unknown_topic_or_partition(kafka):
    missing = kafka.name("missing")
    assert pages(kafka, [missing], 10) == [[(missing, [], 3)]]
