"""The web UI in a real browser: Debian's chromium driven by playwright-core (tests/ui/run.mjs)
against the real binary holding data from real clients (confluent-kafka, pika). This module
fills the broker and writes what each page must show; run.mjs clicks through every page,
asserts it, and saves screenshots at laptop and phone widths under target/test-output/ui/."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pika
import pytest
import requests
from confluent_kafka import Consumer, Producer, TopicPartition

from conftest import free_port, start_static_cluster
from librdkafka_client import create_topic
from required import missing

UI_TESTS = Path(__file__).resolve().parent
REPO_ROOT = UI_TESTS.parent.parent
OUTPUT_DIR = Path(os.environ.get("SLUICE_TEST_OUTPUT", REPO_ROOT / "target" / "test-output")) / "ui"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

TOPIC = "ui-orders"
GROUP = "ui-group"
QUEUE = "ui-jobs"
WORK_QUEUE = "ui-work"
DEAD_QUEUE = "ui-dead"
P0_MESSAGES = 10
P1_TEXT_MESSAGES = 4
COMMITTED = {0: 4, 1: 2}
READER = ("reader", "read-pw")  # a user without the administrator tag
HOSTILE_KEY = "<b>bold</b>"
HOSTILE_VALUE = '<img src=x onerror="window.__sluice_xss=1"><script>window.__sluice_xss=2</script>'


def require_tools():
    if shutil.which("node") is None:
        missing("node is not installed: the browser tests cannot run (scripts/test installs it)")
    if not os.access(CHROMIUM, os.X_OK):
        missing(f"no chromium at {CHROMIUM}: apt-get install chromium (scripts/test does)")
    if not (UI_TESTS / "node_modules" / "playwright-core").is_dir():
        missing("playwright-core is not installed: npm ci --prefix tests/ui (scripts/test does)")


def wait_for_http(url, timeout_s=30):
    # The fixture waits for the Kafka listener only; the HTTP one may come up a moment later.
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if requests.get(f"{url}/api/health", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, f"no HTTP API at {url} within {timeout_s}s"
        time.sleep(0.1)


def run_browser(config, tmp_path):
    """Runs run.mjs on `config`; its output is printed, a failure fails the test."""
    config_path = tmp_path / "ui-config.json"
    config_path.write_text(json.dumps(config, indent=2))
    result = subprocess.run(
        ["node", str(UI_TESTS / "run.mjs")],
        env={**os.environ, "SLUICE_UI_CONFIG": str(config_path), "CHROMIUM": CHROMIUM},
        capture_output=True, text=True, timeout=240)
    print(result.stdout)
    print(result.stderr, file=sys.stderr)
    assert result.returncode == 0, f"the browser tests failed:\n{result.stdout}\n{result.stderr}"


def seed_kafka(bootstrap, base_ms):
    create_topic(bootstrap, TOPIC, partitions=2)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    for n in range(P0_MESSAGES):
        producer.produce(TOPIC, partition=0, key=f"k-{n}".encode(),
                         value=json.dumps({"n": n, "item": f"order-{n}"}, separators=(",", ":")).encode(),
                         headers=[("source", b"ui-test"), ("message-id", f"id-{n}".encode())],
                         timestamp=base_ms + n * 1000)
        producer.flush(30)  # one batch per record, so every record keeps its own timestamp
    for n in range(P1_TEXT_MESSAGES):
        producer.produce(TOPIC, partition=1, key=f"p1-{n}".encode(), value=f"text {n}".encode())
    producer.produce(TOPIC, partition=1, key=HOSTILE_KEY.encode(), value=HOSTILE_VALUE.encode())
    producer.produce(TOPIC, partition=1, key=b"binary", value=bytes([0, 1, 0xFE, 0xFF]))
    assert producer.flush(30) == 0

    # A group that committed and left: its lag is known exactly.
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP,
                         "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(TOPIC, p, o) for p, o in COMMITTED.items()],
                        asynchronous=False)
    finally:
        consumer.close()


def seed_amqp(amqp_port):
    """Three messages in QUEUE; two rejected from WORK_QUEUE into DEAD_QUEUE (with x-death)."""
    connection = pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", amqp_port, heartbeat=0))
    channel = connection.channel()
    channel.queue_declare(QUEUE, durable=True)
    for n in range(3):
        channel.basic_publish("", QUEUE, f"job {n}".encode(),
                              pika.BasicProperties(delivery_mode=2, message_id=f"job-{n}"))
    channel.queue_declare(DEAD_QUEUE, durable=True)
    channel.queue_declare(WORK_QUEUE, durable=True, arguments={
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": DEAD_QUEUE})
    for n in range(2):
        channel.basic_publish("", WORK_QUEUE, f"work {n}".encode(), pika.BasicProperties(delivery_mode=2))
    for _ in range(2):
        method, _props, _body = channel.basic_get(WORK_QUEUE)
        assert method is not None
        channel.basic_reject(method.delivery_tag, requeue=False)
    deadline = time.monotonic() + 10
    while channel.queue_declare(DEAD_QUEUE, passive=True).method.message_count != 2:
        assert time.monotonic() < deadline, "the rejected messages did not reach the dead-letter queue"
        time.sleep(0.05)
    return connection  # left open: the connections page must show it


@pytest.mark.timeout(300)
def test_every_page_of_the_ui_shows_the_broker_data(broker_factory, tmp_path):
    require_tools()
    broker = broker_factory("--amqp-users", f"{READER[0]}:{READER[1]}")
    wait_for_http(broker.http_url)
    base_ms = int(time.time() * 1000) - 3_600_000
    seed_kafka(broker.bootstrap, base_ms)
    amqp = seed_amqp(broker.amqp_port)
    try:
        p0_lag = P0_MESSAGES - COMMITTED[0]
        p1_end = P1_TEXT_MESSAGES + 2
        p1_lag = p1_end - COMMITTED[1]
        config = {
            "url": broker.http_url,
            "output_dir": str(OUTPUT_DIR),
            "topic": TOPIC, "group": GROUP, "queue": QUEUE,
            "work_queue": WORK_QUEUE, "dead_queue": DEAD_QUEUE,
            "base_timestamp_ms": base_ms,
            "reader": READER,
            "hostile_key": HOSTILE_KEY, "hostile_value": HOSTILE_VALUE,
            "produce_cmd": [sys.executable, str(UI_TESTS / "produce_one.py"), broker.bootstrap, TOPIC, "0"],
            "expected": {
                "topics": 1, "queues": 3, "partitions": 2,
                "messages_in_at_least": P0_MESSAGES + p1_end + 3 + 2,
                "topic_messages": P0_MESSAGES + p1_end,
                "p0_end": P0_MESSAGES,
                "hostile_offset": P1_TEXT_MESSAGES,
                "committed": {str(p): o for p, o in COMMITTED.items()},
                "lag": {"0": p0_lag, "1": p1_lag},
                "total_lag": p0_lag + p1_lag,
                # After "shift by -2" (clamped at the log start 0).
                "total_lag_after_shift_2": sum(
                    (P0_MESSAGES if p == 0 else p1_end) - max(0, o - 2) for p, o in COMMITTED.items()),
                "queue_ready": 3,
                "dead": 2,
            },
        }
        if OUTPUT_DIR.exists():
            shutil.rmtree(OUTPUT_DIR)
        run_browser(config, tmp_path)
        pages = ["login", "overview", "groups", "group", "group-reset-plan", "topics",
                 "topic-messages", "topic-follow", "queues", "queue", "exchanges", "connections"]
        for page in pages:
            for width in ("laptop", "phone"):
                shot = OUTPUT_DIR / f"{page}-{width}.png"
                assert shot.is_file() and shot.stat().st_size > 1000, f"no screenshot {shot}"
    finally:
        amqp.close()


def cluster_node_ids(url):
    response = requests.get(f"{url}/api/cluster", auth=("guest", "guest"), timeout=10)
    response.raise_for_status()
    return sorted(n["node_id"] for n in response.json()["nodes"])


@pytest.mark.timeout(300)
def test_the_cluster_page_removes_a_node_and_shows_why_it_cannot_remove_another(
        broker_factory, tmp_path):
    """Three nodes with an RF=3 topic and a fourth joined with --join: on the Cluster page the
    Remove button of node 2 (it hosts replicas) shows the 409 refusal and keeps the node; the
    button of node 4 (no replicas) removes it, which every node's API then shows."""
    from confluent_kafka.admin import AdminClient, NewTopic

    require_tools()
    nodes, cluster_ports = start_static_cluster(broker_factory)
    admin = AdminClient({"bootstrap.servers": ",".join(n.bootstrap for n in nodes)})
    admin.create_topics([NewTopic("ui-replicated", 1, 3)])["ui-replicated"].result(timeout=30)
    fourth = broker_factory("--node-id", 4, "--cluster-listen", f"127.0.0.1:{free_port()}",
                            "--join", f"127.0.0.1:{cluster_ports[0]}")
    for node in nodes + [fourth]:
        wait_for_http(node.http_url)
    deadline = time.monotonic() + 30
    while cluster_node_ids(nodes[0].http_url) != [1, 2, 3, 4]:
        assert time.monotonic() < deadline, cluster_node_ids(nodes[0].http_url)
        time.sleep(0.2)

    out = OUTPUT_DIR.parent / "ui-cluster"
    if out.exists():
        shutil.rmtree(out)
    run_browser({"mode": "cluster", "url": nodes[0].http_url, "output_dir": str(out),
                 "hosting_node": 2, "free_node": 4, "topic": "ui-replicated"}, tmp_path)
    deadline = time.monotonic() + 10
    while any(cluster_node_ids(n.http_url) != [1, 2, 3] for n in nodes):
        assert time.monotonic() < deadline, [cluster_node_ids(n.http_url) for n in nodes]
        time.sleep(0.2)
    for page in ("cluster-refusal", "cluster-removal"):
        for width in ("laptop", "phone"):
            shot = out / f"{page}-{width}.png"
            assert shot.is_file() and shot.stat().st_size > 1000, f"no screenshot {shot}"
