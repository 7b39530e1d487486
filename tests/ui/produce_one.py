"""Produces one record (run by run.mjs while the message browser follows a partition).

    python produce_one.py BOOTSTRAP TOPIC PARTITION VALUE
"""

import sys

from confluent_kafka import Producer


def main():
    bootstrap, topic, partition, value = sys.argv[1:5]
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    producer.produce(topic, value=value.encode(), key=b"followed", partition=int(partition))
    if producer.flush(30) != 0:
        sys.exit("the record was not delivered within 30 s")


if __name__ == "__main__":
    main()
