"""Crash safety over AMQP: SIGKILL while publishers wait for confirms and a consumer holds
unacked deliveries. After the restart every confirmed persistent message is in its durable
queue exactly once, acked ones stay gone, and unacked ones come back with redelivered=True."""

import random
import threading
import time

import pika
import pytest

from amqp.conftest import wait_for_amqp

ROUNDS = 3
PUBLISHERS = 4


def connect(broker):
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", broker.amqp_port, connection_attempts=1, socket_timeout=5))


def publish_until_killed(broker, queue, worker, confirmed, stop):
    try:
        channel = connect(broker).channel()
        channel.confirm_delivery()
        n = 0
        while not stop.is_set():
            body = f"{worker}-{n}".encode()
            channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2),
                                  mandatory=True)
            confirmed.append(body)  # basic_publish returned: the broker confirmed it
            n += 1
    except Exception:  # the broker died under us: what was confirmed is recorded
        pass


def drain(broker, queue):
    connection = connect(broker)
    channel = connection.channel()
    messages = []
    while True:
        method, _properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            break
        messages.append((body, method.redelivered))
    connection.close()
    return messages


@pytest.mark.timeout(300)
def test_confirmed_messages_survive_sigkill_exactly_once(broker):
    queue = "crash-queue"
    connection = connect(broker)
    connection.channel().queue_declare(queue, durable=True)
    connection.close()
    seen = {}
    for round_number in range(ROUNDS):
        confirmed, stop = [], threading.Event()
        threads = [threading.Thread(target=publish_until_killed,
                                    args=(broker, queue, f"r{round_number}w{w}", confirmed, stop))
                   for w in range(PUBLISHERS)]
        for thread in threads:
            thread.start()
        # A consumer takes some deliveries, acks half of them and holds the rest unacked.
        time.sleep(0.3)
        consumer = connect(broker)
        channel = consumer.channel()
        channel.basic_qos(prefetch_count=20)
        taken = []
        channel.basic_consume(queue, lambda ch, m, p, b: taken.append((m.delivery_tag, b)))
        deadline = time.monotonic() + 5
        while len(taken) < 20 and time.monotonic() < deadline:
            consumer.process_data_events(time_limit=0.1)
        acked = [body for _, body in taken[:10]]
        for tag, _ in taken[:10]:
            channel.basic_ack(tag)
        unacked = [body for _, body in taken[10:]]
        consumer.process_data_events(time_limit=0.3)  # the acks reach the broker
        time.sleep(random.uniform(0.5, 2.0))
        broker.kill9()
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        assert confirmed, "no publish was confirmed before the kill"
        broker.start()
        # start() waits for the Kafka listener; the AMQP one binds after the queues recover.
        assert wait_for_amqp("127.0.0.1", broker.amqp_port, 30, alive=broker.running) is None

        messages = drain(broker, queue)
        bodies = [body for body, _ in messages]
        assert len(bodies) == len(set(bodies)), "a message came back twice"
        present = set(bodies)
        missing = [b for b in confirmed if b not in present and b not in acked]
        assert not missing, f"{len(missing)} confirmed messages lost, e.g. {missing[:5]}"
        assert not present & set(acked), "acked messages came back"
        redelivered = {body for body, flag in messages if flag}
        assert set(unacked) <= redelivered, "unacked deliveries did not come back redelivered"
        seen[round_number] = (len(confirmed), len(unacked))
    print("confirmed and unacked per round:", seen)
