"""A consumer that does not read its socket must not make the broker copy a whole queue into
memory: deliveries pause while a connection's unsent frames pass a few MiB, and resume as the
socket drains. This matters for consumers no prefetch limits (no basic.qos, or no-ack), which
would otherwise get the whole queue encoded into their connection's send queue at once.
Sluice-only: it reads the broker's memory use."""

import time

import pika

MESSAGES = 3000
BODY = b"x" * (64 << 10)  # 3000 x 64 KiB = 188 MiB


def test_a_stalled_consumer_without_prefetch_does_not_buffer_the_queue(broker):
    params = pika.ConnectionParameters("127.0.0.1", broker.amqp_port, heartbeat=0)
    publisher = pika.BlockingConnection(params)
    channel = publisher.channel()
    channel.queue_declare("backlog")
    for _ in range(MESSAGES):
        channel.basic_publish("", "backlog", BODY)
    publisher.close()
    time.sleep(0.5)
    before = broker.memory_bytes()

    consumer = pika.BlockingConnection(params)
    received = []
    consumer_channel = consumer.channel()
    # No basic.qos: nothing but the socket limits how much is sent ahead.
    consumer_channel.basic_consume(
        "backlog", lambda ch, m, p, b: (received.append(len(b)), ch.basic_ack(m.delivery_tag)))
    time.sleep(2)  # the client reads nothing now: its socket fills, then the broker's backlog
    grown = broker.memory_bytes() - before
    print(f"broker memory grew by {grown >> 20} MiB while the consumer stalled")
    assert grown < 48 << 20, f"the broker grew by {grown >> 20} MiB for a stalled consumer"

    deadline = time.monotonic() + 60
    while len(received) < MESSAGES and time.monotonic() < deadline:
        consumer.process_data_events(time_limit=0.2)
    assert len(received) == MESSAGES, f"{len(received)} of {MESSAGES} delivered after the stall"
    assert set(received) == {len(BODY)}
    consumer.close()
