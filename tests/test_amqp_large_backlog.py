"""Peak shaving: a durable queue absorbs a backlog far larger than the broker's memory.

500,000 persistent 2 KiB messages (about 1 GiB) go to a durable queue nobody consumes, with
publisher confirms. Once every one is confirmed the broker's RSS must stay under 256 MiB (the
queue keeps an index entry per message, not the bodies), and again after a restart (start-up
reads the index, not the data). A sample drained from the head comes back intact and in order,
and the rest is all there.

The publisher speaks the wire protocol itself (tests/amqp/raw_amqp.py): pika waits for each
confirm, which would take far longer than the broker does.
"""

import struct
import time

import pika
import pytest

from amqp.conftest import wait_for_amqp
from amqp.raw_amqp import (FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, RawConnection,
                           basic_publish_args, frame, method_frame, queue_declare_args)

QUEUE = "large-backlog"
MESSAGES = 500_000
BODY_BYTES = 2048
BURST = 10_000
RSS_MAX_BYTES = 256 << 20
SAMPLE = 20_000

CONFIRM_SELECT = (85, 10)
CONFIRM_SELECT_OK = (85, 11)
QUEUE_DECLARE = (50, 10)
QUEUE_DECLARE_OK = (50, 11)
BASIC_PUBLISH = (60, 40)
BASIC_ACK = (60, 80)
BASIC_NACK = (60, 120)
DELIVERY_MODE_FLAG = 1 << 12


def body(n: int) -> bytes:
    return (f"{n:08d}".encode() * (BODY_BYTES // 8 + 1))[:BODY_BYTES]


def publish_confirmed(port: int):
    """Publishes MESSAGES persistent bodies in bursts, each burst fully confirmed before the
    next is sent."""
    connection = RawConnection("127.0.0.1", port, timeout_s=60).handshake()
    connection.open_channel(1)
    connection.send_method(1, QUEUE_DECLARE, queue_declare_args(QUEUE, durable=True))
    connection.expect_method(QUEUE_DECLARE_OK, 1)
    connection.send_method(1, CONFIRM_SELECT, b"\x00")
    connection.expect_method(CONFIRM_SELECT_OK, 1)
    publish = method_frame(1, BASIC_PUBLISH, basic_publish_args("", QUEUE))
    header = frame(FRAME_HEADER, 1,
                   struct.pack(">HHQHB", 60, 0, BODY_BYTES, DELIVERY_MODE_FLAG, 2))
    confirmed = 0
    for start in range(0, MESSAGES, BURST):
        end = min(start + BURST, MESSAGES)
        connection.send(b"".join(publish + header + frame(FRAME_BODY, 1, body(n))
                                 for n in range(start, end)))
        while confirmed < end:
            received = connection.read_frame()
            if received.type == FRAME_HEARTBEAT:
                continue
            assert received.method != BASIC_NACK, f"publish nacked after {confirmed} confirms"
            assert received.method == BASIC_ACK, received
            tag, bits = struct.unpack(">QB", received.payload[4:13])
            assert tag > confirmed and (bits & 1 or tag == confirmed + 1), (tag, bits, confirmed)
            confirmed = tag
    connection.close()


def connect(broker):
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", broker.amqp_port, connection_attempts=1, socket_timeout=10))


def drain_sample(broker, first: int):
    """Consumes SAMPLE messages from the head and checks they are first, first+1, ..."""
    connection = connect(broker)
    channel = connection.channel()
    channel.basic_qos(prefetch_count=1000)
    expected = first
    for method, _properties, received in channel.consume(QUEUE, inactivity_timeout=30):
        assert method is not None, f"no delivery within 30 s after {expected - first}"
        assert received == body(expected), f"message {expected} is not intact or out of order"
        expected += 1
        if expected % 500 == 0 or expected == first + SAMPLE:
            channel.basic_ack(method.delivery_tag, multiple=True)
        if expected == first + SAMPLE:
            break
    channel.cancel()
    connection.close()


def queue_length(broker) -> int:
    connection = connect(broker)
    count = connection.channel().queue_declare(QUEUE, passive=True).method.message_count
    connection.close()
    return count


def settle_rss(broker) -> int:
    """RSS once it stops moving (freed memory is returned to the OS with some delay)."""
    rss = broker.memory_bytes()
    for _ in range(10):
        time.sleep(0.3)
        now = broker.memory_bytes()
        if abs(now - rss) < (4 << 20):
            return now
        rss = now
    return rss


@pytest.mark.timeout(300)
def test_durable_queue_holds_a_backlog_far_larger_than_its_memory(broker):
    assert wait_for_amqp("127.0.0.1", broker.amqp_port, 10) is None
    started = time.monotonic()
    publish_confirmed(broker.amqp_port)
    published_s = time.monotonic() - started
    rss = settle_rss(broker)
    print(f"{MESSAGES} x {BODY_BYTES} B confirmed in {published_s:.1f} s; RSS {rss >> 20} MiB")
    assert rss < RSS_MAX_BYTES, f"RSS {rss >> 20} MiB with the backlog on disk"
    assert queue_length(broker) == MESSAGES

    drain_sample(broker, 0)

    broker.restart()
    assert wait_for_amqp("127.0.0.1", broker.amqp_port, 30) is None
    rss = settle_rss(broker)
    print(f"after restart: RSS {rss >> 20} MiB")
    assert rss < RSS_MAX_BYTES, f"RSS {rss >> 20} MiB after a restart"
    assert queue_length(broker) == MESSAGES - SAMPLE

    drain_sample(broker, SAMPLE)
    rss = settle_rss(broker)
    assert rss < RSS_MAX_BYTES, f"RSS {rss >> 20} MiB while draining"
    assert queue_length(broker) == MESSAGES - 2 * SAMPLE
