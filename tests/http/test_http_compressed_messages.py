"""The HTTP message browser shows messages a producer compressed: librdkafka with each
compression.type (gzip, snappy, lz4, zstd) produces keyed messages with a message-id header,
and GET /api/topics/{t}/messages returns every one of them, decoded, with nothing passed over."""

import pytest
from confluent_kafka import Producer

from http_client import Api
from librdkafka_client import create_topic, unique_name


@pytest.fixture
def api_broker(broker_factory):
    return broker_factory()


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches_are_shown_by_the_message_browser(api_broker, codec):
    api = Api(api_broker)
    topic = unique_name(f"packed-{codec}")
    create_topic(api_broker.bootstrap, topic)
    producer = Producer({"bootstrap.servers": api_broker.bootstrap, "acks": "all",
                         "compression.type": codec, "linger.ms": 50})
    # Compressible values, many per batch: the producer really compresses them.
    for i in range(200):
        producer.produce(topic, partition=0, key=f"{codec}-key-{i % 4}".encode(),
                         value=(f"{codec} value {i} " * 20).encode(),
                         headers=[("message-id", f"{codec}-id-{i}".encode())])
    assert producer.flush(30) == 0
    # The log holds what the producer sent: compressed, so the values' text is not in it.
    logs = [p for p in api_broker.data_dir.rglob("*.log") if p.stat().st_size > 0]
    assert logs and all(f"{codec} value 57 ".encode() not in p.read_bytes() for p in logs)

    page = api.ok("GET", f"/api/topics/{topic}/messages", params={"partition": 0, "limit": 1000})
    assert page["skipped_compressed_batches"] == 0
    assert [m["offset"] for m in page["messages"]] == list(range(200))
    message = page["messages"][57]
    assert message["key"]["text"] == f"{codec}-key-1"
    assert message["value"]["text"] == f"{codec} value 57 " * 20
    assert message["headers"][0]["key"] == "message-id"
    assert message["headers"][0]["value"]["text"] == f"{codec}-id-57"

    middle = api.ok("GET", f"/api/topics/{topic}/messages",
                    params={"partition": 0, "offset": 120, "end_offset": 123})
    assert [m["offset"] for m in middle["messages"]] == [120, 121, 122]

    # Key and message-id lookups find compressed messages through the key index too.
    by_key = api.ok("GET", f"/api/topics/{topic}/messages",
                    params={"key": f"{codec}-key-1", "limit": 1000})
    assert by_key["skipped_compressed_batches"] == 0
    assert [m["offset"] for m in by_key["messages"]] == list(range(1, 200, 4))
    by_id = api.ok("GET", f"/api/topics/{topic}/messages", params={"message_id": f"{codec}-id-57"})
    assert [m["offset"] for m in by_id["messages"]] == [57]
