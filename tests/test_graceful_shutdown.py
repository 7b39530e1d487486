"""SIGTERM while clients are in full flow: the broker drains and exits 0 within its bound.
Kafka producers get answers for the requests already read, AMQP clients get connection.close
320 CONNECTION_FORCED after their pending confirms, and after a restart every acknowledged
or confirmed message is there."""

import threading
import time

import pika
import pytest

from amqp.conftest import wait_for_amqp
from librdkafka_client import create_topic, read_all, unique_name
from test_crash_durability import PARTITIONS, AckingProducer

# The broker's own bound is 8 s of draining plus the final flush: "always finishes".
SHUTDOWN_BOUND_S = 10


def terminate_within_bound(broker):
    """SIGTERM; the broker must exit 0 within the bound, with no error in its log."""
    started = time.monotonic()
    code = broker.terminate()
    elapsed = time.monotonic() - started
    assert code == 0
    assert elapsed < SHUTDOWN_BOUND_S, f"shutdown took {elapsed:.1f}s:\n{broker.log_tail()}"
    log = broker.log_path.read_text(errors="replace")
    errors = [line for line in log.splitlines() if " ERROR " in line or "panicked" in line]
    assert not errors, "errors in the broker log:\n" + "\n".join(errors[:10])
    assert "broker flushed and stopped" in log
    return elapsed


@pytest.mark.timeout(180)
def test_sigterm_drains_kafka_producers_and_keeps_every_acknowledged_message(broker_factory):
    broker = broker_factory("--fsync", "batch")
    topic = unique_name("drain")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    # The crash test's producer (r0-<n> values, round robin, every delivery report recorded).
    producer = AckingProducer(broker.bootstrap, topic, round_number=0)
    producer.start()
    assert producer.first_ack.wait(30), "no acknowledgement in 30s"
    time.sleep(1.5)
    elapsed = terminate_within_bound(broker)
    producer.stop.set()
    producer.join(timeout=60)
    assert not producer.is_alive(), "producer did not finish after the broker stopped"
    assert producer.error is None, f"producer failed: {producer.error!r}"
    print(f"shutdown in {elapsed:.2f}s; acknowledged {len(producer.acked)}, "
          f"failed {producer.failed}")

    broker.start()
    records = read_all(broker.bootstrap, topic, PARTITIONS, timeout_s=120,
                       extra_config={"check.crcs": True})
    at = {(partition, offset): value for partition, offset, _, value, _ in records}
    lost = [(n, where) for n, where in producer.acked.items()
            if at.get(where) != f"r0-{n}".encode()]
    assert not lost, f"{len(lost)} acknowledged messages missing after restart, e.g. {lost[:5]}"
    # A clean shutdown leaves nothing to recover: the next start finds its markers.
    log = broker.log_path.read_text(errors="replace")
    assert " ERROR " not in log


def connect(broker):
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", broker.amqp_port, connection_attempts=1, socket_timeout=5,
        blocked_connection_timeout=30))


def publish_until_closed(broker, exchange, confirmed, closed_by, ready):
    try:
        channel = connect(broker).channel()
        channel.confirm_delivery()
        n = 0
        while True:
            body = f"{threading.current_thread().name}-{n}".encode()
            channel.basic_publish(exchange, "", body, pika.BasicProperties(delivery_mode=2))
            confirmed.append(body)  # returned: the broker confirmed it (a nack would raise)
            ready.set()
            n += 1
    except pika.exceptions.ConnectionClosedByBroker as closed:
        closed_by.append((closed.reply_code, closed.reply_text))
    except Exception as other:
        closed_by.append((None, repr(other)))


def consume_until_closed(broker, queue, consumed, closed_by):
    try:
        channel = connect(broker).channel()
        channel.basic_qos(prefetch_count=50)

        def on_message(channel, method, _properties, body):
            consumed.append(body)
            channel.basic_ack(method.delivery_tag)

        channel.basic_consume(queue, on_message)
        channel.start_consuming()
    except pika.exceptions.ConnectionClosedByBroker as closed:
        closed_by.append((closed.reply_code, closed.reply_text))
    except Exception as other:
        closed_by.append((None, repr(other)))


@pytest.mark.timeout(180)
def test_sigterm_closes_amqp_connections_with_320_after_confirming(broker):
    assert wait_for_amqp("127.0.0.1", broker.amqp_port, 30) is None
    exchange, kept, consumed_queue = "drain-x", "drain-kept", "drain-consumed"
    connection = connect(broker)
    channel = connection.channel()
    channel.exchange_declare(exchange, "fanout", durable=True)
    for queue in (kept, consumed_queue):
        channel.queue_declare(queue, durable=True)
        channel.queue_bind(queue, exchange)
    connection.close()

    confirmed, consumed, closed_by = [], [], []
    ready = threading.Event()
    threads = [threading.Thread(target=publish_until_closed, name=f"p{i}", daemon=True,
                                args=(broker, exchange, confirmed, closed_by, ready))
               for i in range(3)]
    threads.append(threading.Thread(target=consume_until_closed, daemon=True,
                                    args=(broker, consumed_queue, consumed, closed_by)))
    for thread in threads:
        thread.start()
    assert ready.wait(30), "no confirm in 30s"
    time.sleep(1.5)
    terminate_within_bound(broker)
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive(), "a client did not notice the shutdown"
    assert len(closed_by) == len(threads)
    for code, text in closed_by:
        assert code == 320, f"expected connection.close 320, got {code}: {text}"
        assert "CONNECTION_FORCED" in text and "shutdown" in text, text
    print(f"confirmed {len(confirmed)}, consumed {len(consumed)}")

    broker.start()
    assert wait_for_amqp("127.0.0.1", broker.amqp_port, 30) is None
    connection = connect(broker)
    channel = connection.channel()
    stored = set()
    while True:
        method, _properties, body = channel.basic_get(kept, auto_ack=True)
        if method is None:
            break
        stored.add(body)
    connection.close()
    lost = [body for body in confirmed if body not in stored]
    assert not lost, f"{len(lost)} confirmed messages missing after restart, e.g. {lost[:5]}"
