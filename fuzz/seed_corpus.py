"""Writes the seed inputs of the fuzz targets into fuzz/corpus/<target>/ (valid requests, frames,
batches and segments, made with the clients' own encoders), from which libFuzzer mutates.
Run with the test venv: .venv/bin/python fuzz/seed_corpus.py"""

import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests"))
sys.path.insert(0, str(ROOT.parent / "tests" / "amqp"))

from kafka.protocol.consumer import FetchRequest  # noqa: E402
from kafka.protocol.metadata import ApiVersionsRequest, MetadataRequest  # noqa: E402
from kafka.protocol.producer import InitProducerIdRequest, ProduceRequest  # noqa: E402

import raw_amqp  # noqa: E402
from kafka_wire import record_batch  # noqa: E402


def write(target, data: bytes):
    directory = ROOT / "corpus" / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)


def kafka_frame(message, version):
    message.with_header(correlation_id=7, client_id="seed")
    return bytes(message.encode(version=version, header=True, framed=False))


batch = record_batch([b"hello", b"world"], producer_id=5, producer_epoch=0, base_sequence=0,
                     timestamp_ms=1_700_000_000_000)
write("record_batch", batch)
write("record_batch", batch + record_batch([b"x" * 100], timestamp_ms=1_700_000_000_001))
write("record_batch", record_batch([b"gz"] * 3, compression_type=1, timestamp_ms=1))

# A segment is batches back to back; the broker assigns offsets, which recovery checks.
second = bytearray(record_batch([b"next"], timestamp_ms=1_700_000_000_002))
second[0:8] = (2).to_bytes(8, "big")
write("segment_recovery", batch + bytes(second))
write("segment_recovery", batch[:-3])

write("kafka_request", kafka_frame(ApiVersionsRequest(), 0))
write("kafka_request", kafka_frame(MetadataRequest(topics=[MetadataRequest.MetadataRequestTopic(
    name="t")], allow_auto_topic_creation=True), 9))
write("kafka_request", kafka_frame(ProduceRequest(
    transactional_id=None, acks=-1, timeout_ms=1000,
    topic_data=[ProduceRequest.TopicProduceData(name="t", partition_data=[
        ProduceRequest.TopicProduceData.PartitionProduceData(index=0, records=batch)])]), 9))
write("kafka_request", kafka_frame(FetchRequest(
    max_wait_ms=100, min_bytes=1, topics=[FetchRequest.FetchTopic(topic="t", partitions=[
        FetchRequest.FetchTopic.FetchPartition(partition=0, fetch_offset=0,
                                               partition_max_bytes=1 << 20)])]), 12))
write("kafka_request", kafka_frame(InitProducerIdRequest(transactional_id=None,
                                                         transaction_timeout_ms=1000), 4))

start_ok = raw_amqp.method_frame(0, (10, 11), raw_amqp.table({"product": "seed", "capabilities": {
    "publisher_confirms": True}}) + raw_amqp.shortstr("PLAIN") + raw_amqp.longstr(
    b"\x00guest\x00guest") + raw_amqp.shortstr("en_US"))
publish = (raw_amqp.method_frame(1, (60, 40), raw_amqp.basic_publish_args("amq.topic", "a.b"))
           + raw_amqp.content_header_frame(1, 60, 5) + raw_amqp.frame(3, 1, b"hello"))
declare = raw_amqp.method_frame(1, (50, 10), raw_amqp.queue_declare_args("q", durable=True))
write("amqp_frame", start_ok)
write("amqp_frame", publish)
write("amqp_frame", declare + publish)
print("seed corpus written to", ROOT / "corpus")

# Regression inputs for findings (kept here so a fresh seed run still has them):
# client properties nested 15,000 tables deep (amq-protocol's parser recursed once per level
# and overflowed the stack of an unauthenticated connection's task).
nested = b""
for _ in range(15_000):
    entry = raw_amqp.shortstr("a") + b"F" + len(nested).to_bytes(4, "big") + nested
    nested = entry
deep_table = len(nested).to_bytes(4, "big") + nested
write("amqp_frame", raw_amqp.method_frame(0, (10, 11), deep_table + raw_amqp.shortstr("PLAIN")
                                         + raw_amqp.longstr(b"\x00guest\x00guest")
                                         + raw_amqp.shortstr("en_US")))
