"""A consume-transform-produce loop with exactly-once semantics through librdkafka
(confluent-kafka): each batch read from the input topic is written to the output topic, and
the input offsets are sent, in one transaction. The exactly-once test kills it with SIGKILL at
random points and starts it again.

    eos_copier.py BOOTSTRAP INPUT OUTPUT GROUP TRANSACTIONAL_ID PAUSE_MS

It takes at most 5 records per transaction and pauses between transactions, so the copy
spreads over enough time for the kills to land inside it. It runs until killed, printing one
line per committed transaction."""

import sys
import time

from confluent_kafka import Consumer, Producer


def main():
    bootstrap, source, sink, group, transactional_id, pause_ms = sys.argv[1:7]
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        # Static membership: a restarted copier takes its predecessor's place at once instead
        # of waiting out the dead member's session.
        "group.instance.id": transactional_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
    })
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": transactional_id,
                         "linger.ms": 0})
    producer.init_transactions(60)
    consumer.subscribe([source])
    while True:
        messages = [m for m in consumer.consume(5, 0.2) if not m.error()]
        if not messages:
            continue
        producer.begin_transaction()
        for message in messages:
            producer.produce(sink, key=message.key(), value=message.value(),
                             partition=message.partition())
        producer.send_offsets_to_transaction(consumer.position(consumer.assignment()),
                                             consumer.consumer_group_metadata(), 60)
        producer.commit_transaction(60)
        print(f"committed {len(messages)}", flush=True)
        time.sleep(int(pause_ms) / 1000)


if __name__ == "__main__":
    main()
