"""The `sluice` client subcommands against the real binary: data produced and checked with real
clients (confluent-kafka, pika), every subcommand's table and --json output, and the exit codes
(0 ok, 1 an error from the server or refused input, 2 a usage error, 3 the server unreachable)."""

import base64
import json
import os
import re
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pika
import pytest
import requests
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from conftest import free_port, sluice_bin
from librdkafka_client import create_topic, produce_values, unique_name

USERS = "reader:read-pw,ops:ops-pw:administrator"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CONNECTION = 0, 1, 2, 3


def wait_for_http(broker):
    """The broker binds its HTTP listener after the Kafka one, which is what startup waits for."""
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"{broker.http_url}/api/health", timeout=2).status_code == 200:
                return broker
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, "the HTTP API did not come up"
        time.sleep(0.05)


@pytest.fixture
def cli_broker(broker_factory):
    return wait_for_http(broker_factory("--amqp-users", USERS))


def read_messages(bootstrap, topic, partitions, count, timeout_s=30):
    """`count` messages of the topic from the beginning, as confluent-kafka Message objects
    (with headers)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("cli-read"),
                         "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        got = []
        deadline = time.monotonic() + timeout_s
        while len(got) < count:
            assert time.monotonic() < deadline, f"read {len(got)} of {count}"
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                assert message.error() is None, message.error()
                got.append(message)
        return got
    finally:
        consumer.close()


@pytest.fixture
def home(tmp_path):
    """An empty home, so no developer's ~/.config/sluice/cli.toml changes what a test runs."""
    path = tmp_path / "home"
    path.mkdir()
    return path


def run_cli(args, broker=None, home=None, stdin=None, env=None, timeout=60):
    """Runs `sluice ARGS` (with --url of the broker) and gives the finished process."""
    command = [str(sluice_bin()), *map(str, args)]
    if broker is not None:
        command += ["--url", broker.http_url]
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("SLUICE_") and k != "XDG_CONFIG_HOME"}
    if home is not None:
        clean["HOME"] = str(home)
    clean.update(env or {})
    return subprocess.run(command, input=stdin, capture_output=True, env=clean, timeout=timeout)


def ok(args, broker, home, **kwargs) -> str:
    done = run_cli(args, broker, home, **kwargs)
    assert done.returncode == EXIT_OK, (
        f"sluice {' '.join(map(str, args))} exited {done.returncode}\n"
        f"stdout: {done.stdout.decode(errors='replace')}\nstderr: {done.stderr.decode(errors='replace')}")
    return done.stdout.decode()


def ok_json(args, broker, home, **kwargs):
    return json.loads(ok([*args, "--json"], broker, home, **kwargs))


def json_lines(args, broker, home, **kwargs):
    return [json.loads(line) for line in ok([*args, "--json"], broker, home, **kwargs).splitlines()]


def fails(args, broker, home, code=EXIT_ERROR, reason=None, **kwargs) -> str:
    done = run_cli(args, broker, home, **kwargs)
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == code, (
        f"sluice {' '.join(map(str, args))}: expected exit {code}, got {done.returncode}\n"
        f"stdout: {done.stdout.decode(errors='replace')}\nstderr: {stderr}")
    if reason:
        assert reason in stderr, stderr
    return stderr


def table(text: str):
    """A borderless table as dicts keyed by the lower-case headers (columns are 2+ spaces
    apart, cells hold no such gap)."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = re.split(r"\s{2,}", lines[0].strip())
    rows = []
    for line in lines[1:]:
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) == len(header) - 1:
            cells.append("")  # an empty last cell leaves only padding
        assert len(cells) == len(header), f"{line!r} does not fit {header}"
        rows.append(dict(zip((h.lower() for h in header), cells)))
    return rows


def amqp_channel(broker):
    connection = pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", broker.amqp_port, heartbeat=0))
    return connection, connection.channel()


def wait_for(predicate, timeout=20, interval=0.1, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last value {last!r}")


# ---- topics ----

def test_topic_create_list_describe_alter_and_delete(cli_broker, home):
    topic = unique_name("cli-topic")
    assert ok(["topic", "create", topic, "-p", "3", "-c", "retention.ms=3600000"],
              cli_broker, home).strip() == f"topic {topic} has 3 partitions"
    produce_values(cli_broker.bootstrap, topic, [b"a", b"b", b"c", b"d"], partition=1)

    listed = {row["name"]: row for row in table(ok(["topic", "list"], cli_broker, home))}
    assert listed[topic]["partitions"] == "3" and listed[topic]["messages"] == "4"
    as_json = {t["name"]: t for t in ok_json(["topic", "list"], cli_broker, home)}
    assert as_json[topic]["partitions"] == 3 and as_json[topic]["messages"] == 4

    described = ok(["topic", "describe", topic], cli_broker, home)
    assert described.startswith(f"topic {topic}  id ")
    partitions_text = described.split("\n\n")[1]
    rows = {row["partition"]: row for row in table(partitions_text)}
    assert rows["1"]["log end"] == "4" and rows["1"]["high watermark"] == "4"
    assert rows["0"]["messages"] == "0" and rows["2"]["messages"] == "0"
    assert "retention.ms=3600000" in described
    detail = ok_json(["topic", "describe", topic, "--all-configs"], cli_broker, home)
    assert [p["high_watermark"] for p in detail["partitions"]] == [0, 4, 0]
    entries = {e["name"]: e for e in detail["config_entries"]}
    assert entries["retention.ms"]["value"] == "3600000"
    assert entries["retention.ms"]["source"] == "topic_override"

    altered = table(ok(["topic", "alter", topic, "--set", "retention.ms=1000",
                        "--set", "segment.ms=60000"], cli_broker, home).split("\n", 1)[1])
    assert {(r["config"], r["value"]) for r in altered} == {
        ("retention.ms", "1000"), ("segment.ms", "60000")}
    after = ok_json(["topic", "alter", topic, "--delete", "segment.ms"], cli_broker, home)
    overrides = {e["name"]: e["value"] for e in after if e["source"] == "topic_override"}
    assert overrides == {"retention.ms": "1000"}
    # The change is the broker's: a Kafka admin client sees it.
    from confluent_kafka.admin import AdminClient, ConfigResource
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    admin = AdminClient({"bootstrap.servers": cli_broker.bootstrap})  # outlives its futures
    configs = admin.describe_configs([resource])[resource].result(timeout=30)
    assert configs["retention.ms"].value == "1000"

    assert ok(["topic", "delete", topic], cli_broker, home).strip() == f"deleted topic {topic}"
    assert topic not in {t["name"] for t in ok_json(["topic", "list"], cli_broker, home)}


def test_topic_errors_carry_the_servers_reason_and_exit_1(cli_broker, home):
    fails(["topic", "describe", "no-such-topic"], cli_broker, home,
          reason="unknown topic 'no-such-topic' (HTTP 404 not_found)")
    fails(["topic", "create", unique_name("bad"), "-c", "retention.ms=soon"], cli_broker, home,
          reason="retention.ms")
    fails(["topic", "create", "bad/name"], cli_broker, home, reason="invalid topic name")
    topic = unique_name("twice")
    ok(["topic", "create", topic], cli_broker, home)
    fails(["topic", "create", topic], cli_broker, home, reason="409")
    ok(["topic", "create", topic, "--if-not-exists"], cli_broker, home)
    fails(["topic", "alter", topic], cli_broker, home, reason="nothing to change")
    ok(["topic", "delete", topic], cli_broker, home)
    fails(["topic", "delete", topic], cli_broker, home, reason="404")
    ok(["topic", "delete", topic, "--if-exists"], cli_broker, home)
    # clap's own usage errors keep clap's exit code.
    fails(["topic", "create"], cli_broker, home, code=EXIT_USAGE, reason="<NAME>")
    fails(["topic", "frobnicate"], cli_broker, home, code=EXIT_USAGE)


# ---- produce ----

def test_produce_lines_with_keys_and_headers_as_a_kafka_consumer_reads_them(cli_broker, home):
    topic = unique_name("cli-produce")
    create_topic(cli_broker.bootstrap, topic, partitions=4)
    lines = [f"user-{i % 5}::event {i}" for i in range(40)] + ["no separator here"]
    summary = ok_json(["produce", "-t", topic, "-K", "::", "-H", "source=cli", "-H", "v=1"],
                      cli_broker, home, stdin="\n".join(lines).encode() + b"\n")
    assert summary["messages"] == 41
    assert sum(p["messages"] for p in summary["partitions"]) == 41

    records = read_messages(cli_broker.bootstrap, topic, 4, 41)
    assert len(records) == 41
    got = sorted((m.key() or b"<none>", m.value()) for m in records)
    expected = sorted([(f"user-{i % 5}".encode(), f"event {i}".encode()) for i in range(40)]
                      + [(b"<none>", b"no separator here")])
    assert [m.key() for m in records if m.value() == b"no separator here"] == [None]
    assert got == expected
    assert all(m.headers() == [("source", b"cli"), ("v", b"1")] for m in records)
    # One key, one partition, in line order: the partition Kafka's Java client (murmur2) picks.
    by_key = {}
    for m in records:
        if m.key() is not None:
            by_key.setdefault(m.key(), set()).add(m.partition())
    assert all(len(p) == 1 for p in by_key.values()), by_key
    java_like = Producer({"bootstrap.servers": cli_broker.bootstrap,
                          "partitioner": "murmur2_random"})
    placed = {}
    for key in by_key:
        java_like.produce(topic, key=key, value=b"x",
                          on_delivery=lambda err, msg: placed.__setitem__(msg.key(), msg.partition()))
    assert java_like.flush(30) == 0
    assert {k: p.pop() for k, p in by_key.items()} == placed
    events_of_user0 = [m.value() for m in sorted(records, key=lambda m: m.offset())
                       if m.key() == b"user-0"]
    assert events_of_user0 == [f"event {i}".encode() for i in range(0, 40, 5)]


def test_produce_a_file_in_several_requests_to_one_partition_and_binary_input(cli_broker, home,
                                                                             tmp_path):
    topic = unique_name("cli-file")
    create_topic(cli_broker.bootstrap, topic, partitions=2)
    path = tmp_path / "lines.txt"
    path.write_bytes(b"".join(f"line {i}\r\n".encode() for i in range(2500)))
    out = ok(["produce", "-t", topic, "-f", path, "-p", "1", "-k", "fixed",
              "--batch-size", "700"], cli_broker, home)
    assert out.splitlines()[0] == f"produced 2500 messages to topic {topic}"
    [row] = table("\n".join(out.splitlines()[1:]))
    assert row == {"partition": "1", "messages": "2500", "first offset": "0",
                   "last offset": "2499"}

    binary = tmp_path / "blob.bin"
    blob = bytes(range(256)) * 4
    binary.write_bytes(blob)
    ok(["produce", "-t", topic, "-f", binary, "--single", "-p", "0"], cli_broker, home)
    records = read_messages(cli_broker.bootstrap, topic, 2, 2501)
    by_partition = {0: [], 1: []}
    for m in sorted(records, key=lambda m: m.offset()):
        by_partition[m.partition()].append(m)
    assert [m.value() for m in by_partition[1]] == [f"line {i}".encode() for i in range(2500)]
    assert {m.key() for m in by_partition[1]} == {b"fixed"}
    assert [m.value() for m in by_partition[0]] == [blob]


def test_produce_draws_a_progress_bar_on_a_terminal_only(cli_broker, home, tmp_path):
    topic = unique_name("cli-progress")
    create_topic(cli_broker.bootstrap, topic)
    path = tmp_path / "many.txt"
    path.write_bytes(b"".join(b"event %d with some padding to make it longer\n" % i
                             for i in range(100_000)))
    command = (f"{sluice_bin()} produce -t {topic} -f {path} --url {cli_broker.http_url}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env["HOME"] = str(home)
    # `script` runs the command on a pseudo-terminal, as a person's shell would.
    on_terminal = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True,
                                 env=env, timeout=120)
    assert on_terminal.returncode == 0, on_terminal.stdout
    frames = on_terminal.stdout.decode(errors="replace").replace("\r", "\n")
    assert re.search(r"\d+(\.\d+)? (B|KiB|MiB)/4\.\d+ MiB \d+ messages", frames), frames[-2000:]
    assert f"produced 100000 messages to topic {topic}" in frames
    piped = run_cli(["produce", "-t", topic, "-f", path], cli_broker, home)
    assert piped.returncode == 0 and piped.stderr == b"", "no bar when stderr is not a terminal"


def test_produce_to_an_unknown_topic_or_partition_fails_with_the_reason(cli_broker, home):
    fails(["produce", "-t", "no-such-topic"], cli_broker, home, stdin=b"x\n",
          reason="unknown topic 'no-such-topic'")
    topic = unique_name("cli-part")
    create_topic(cli_broker.bootstrap, topic, partitions=1)
    fails(["produce", "-t", topic, "-p", "5"], cli_broker, home, stdin=b"x\n",
          reason="has no partition 5")
    fails(["produce", "-t", topic], cli_broker, home, env={
        "SLUICE_USER": "reader", "SLUICE_PASSWORD": "read-pw"}, stdin=b"x\n", reason="403")


def test_produce_endpoint_refuses_bad_input_before_storing_anything(cli_broker):
    topic = unique_name("api-produce")
    create_topic(cli_broker.bootstrap, topic, partitions=2, config={"max.message.bytes": "2000"})
    url = f"{cli_broker.http_url}/api/topics/{topic}/messages"
    guest = ("guest", "guest")

    def post(body, auth=guest):
        return requests.post(url, json=body, auth=auth, timeout=30)

    stored = post({"messages": [
        {"key": "k", "value": "v", "headers": [{"key": "h", "value": "x"}, {"key": "n"}],
         "partition": 0},
        {"value": base64.b64encode(b"\xff\x00").decode(), "encoding": "base64", "partition": 1},
        {"value": None, "partition": 1, "timestamp_ms": 1234}]})
    assert stored.status_code == 200, stored.text
    offsets = stored.json()["offsets"]
    assert offsets[1] == {"partition": 1, "offset": 0} and offsets[2] == {"partition": 1, "offset": 1}
    read = requests.get(url, params={"partition": 1}, auth=guest, timeout=30).json()["messages"]
    assert read[0]["value"]["base64"] == "/wA=" and read[1]["value"] is None
    assert read[1]["timestamp_ms"] == 1234

    for body, status, reason in [
        ({"messages": []}, 400, "give 1 to 10000"),
        ({"messages": [{"value": "ok"}, {"value": "%%%", "encoding": "base64"}]}, 400, "message 1"),
        ({"messages": [{"value": "ok"}, {"value": "x" * 5000}]}, 400, "max.message.bytes"),
        ({"messages": [{"value": "ok", "partition": 9}]}, 404, "no partition 9"),
        ({"messages": [{"value": "ok", "colour": "red"}]}, 400, "colour"),
    ]:
        answer = post(body)
        assert answer.status_code == status and reason in answer.json()["reason"], answer.text
    assert requests.post(f"{cli_broker.http_url}/api/topics/missing/messages",
                         json={"messages": [{"value": "x"}]}, auth=guest).status_code == 404
    assert post({"messages": [{"value": "x"}]}, auth=("reader", "read-pw")).status_code == 403
    # Nothing of the refused requests was stored.
    positions = requests.get(url, auth=guest, timeout=30).json()["positions"]
    assert sum(p["high_watermark"] for p in positions) == 3


# ---- consume and query ----

def produce_timed(broker, topic, count, base_ms, partition=0):
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    for i in range(count):
        producer.produce(topic, key=f"k{i}".encode(), value=f"m{i}".encode(),
                         headers=[("n", str(i).encode())], partition=partition,
                         timestamp=base_ms + i * 1000)
    assert producer.flush(30) == 0


def test_consume_from_the_beginning_an_offset_a_time_and_the_end(cli_broker, home):
    topic = unique_name("cli-consume")
    create_topic(cli_broker.bootstrap, topic, partitions=2)
    base_ms = int(time.time() * 1000) - 600_000
    produce_timed(cli_broker, topic, 6, base_ms, partition=0)
    produce_values(cli_broker.bootstrap, topic, [b"p1-a", b"p1-b"], partition=1)
    produce_values(cli_broker.bootstrap, topic, [b"\xff\xfe"], partition=1)

    everything = run_cli(["consume", "-t", topic], cli_broker, home)
    assert everything.returncode == 0, everything.stderr
    assert sorted(everything.stdout.splitlines()) == sorted(
        [f"m{i}".encode() for i in range(6)] + [b"p1-a", b"p1-b", b"\xff\xfe"])
    raw = run_cli(["consume", "-t", topic, "-p", "1"], cli_broker, home).stdout
    assert raw == b"p1-a\np1-b\n\xff\xfe\n", "raw is the value's bytes as they are"

    from_offset = ok(["consume", "-t", topic, "-p", "0", "-o", "4", "--with", "offset,key,headers"],
                     cli_broker, home)
    assert from_offset.splitlines() == ["0:4\tk4\tn=4\tm4", "0:5\tk5\tn=5\tm5"]
    last_two = ok(["consume", "-t", topic, "-p", "0", "-o", "-2"], cli_broker, home)
    assert last_two.splitlines() == ["m4", "m5"]
    since = ok(["consume", "-t", topic, "-p", "0", "--time", str(base_ms + 2500)], cli_broker, home)
    assert since.splitlines() == ["m3", "m4", "m5"]
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime((base_ms + 3000) / 1000)) + \
        f".{(base_ms + 3000) % 1000:03d}Z"
    assert ok(["consume", "-t", topic, "-p", "0", "--time", iso], cli_broker, home).splitlines() \
        == ["m3", "m4", "m5"]
    assert ok(["consume", "-t", topic, "--end"], cli_broker, home) == ""
    assert len(ok(["consume", "-t", topic, "-c", "3"], cli_broker, home).splitlines()) == 3

    lines = json_lines(["consume", "-t", topic, "-p", "1"], cli_broker, home)
    assert [(m["partition"], m["offset"]) for m in lines] == [(1, 0), (1, 1), (1, 2)]
    assert lines[0]["value"] == "p1-a" and lines[0]["key"] is None
    assert lines[2]["value"] is None and base64.b64decode(lines[2]["value_base64"]) == b"\xff\xfe"
    first = json_lines(["consume", "-t", topic, "-p", "0", "-c", "1"], cli_broker, home)[0]
    assert first["key"] == "k0" and first["headers"] == [{"key": "n", "value": "0"}]
    assert first["timestamp_ms"] == base_ms

    fails(["consume", "-t", "no-such-topic"], cli_broker, home, reason="unknown topic")
    fails(["consume", "-t", topic, "-p", "7"], cli_broker, home, reason="has no partition 7")
    fails(["consume", "-t", topic, "--time", "yesterday"], cli_broker, home, code=EXIT_USAGE,
          reason="yesterday")
    fails(["consume", "-t", topic, "--end", "-o", "3"], cli_broker, home, code=EXIT_USAGE)


def test_consume_follow_prints_messages_produced_after_it_started(cli_broker, home):
    topic = unique_name("cli-follow")
    create_topic(cli_broker.bootstrap, topic, partitions=2)
    produce_values(cli_broker.bootstrap, topic, [b"old"], partition=0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env["HOME"] = str(home)
    follower = subprocess.Popen(
        [str(sluice_bin()), "consume", "-t", topic, "--end", "--follow", "-c", "3",
         "--poll-interval-ms", "100", "--json", "--url", cli_broker.http_url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        time.sleep(1.0)  # let it find the end before the new messages arrive
        assert follower.poll() is None, follower.stderr.read()
        produce_values(cli_broker.bootstrap, topic, [b"new-0"], partition=0)
        produce_values(cli_broker.bootstrap, topic, [b"new-1", b"new-2"], partition=1)
        out, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 0, err
    got = sorted(json.loads(line)["value"] for line in out.decode().splitlines())
    assert got == ["new-0", "new-1", "new-2"]


def test_consume_into_a_closed_pipe_ends_quietly(cli_broker, home):
    topic = unique_name("cli-pipe")
    create_topic(cli_broker.bootstrap, topic)
    produce_values(cli_broker.bootstrap, topic, [b"x" * 200 for _ in range(3000)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env["HOME"] = str(home)
    reader = subprocess.Popen(
        [str(sluice_bin()), "consume", "-t", topic, "--url", cli_broker.http_url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert reader.stdout.readline() == b"x" * 200 + b"\n"
    reader.stdout.close()  # as `| head -1` does
    assert reader.wait(timeout=30) == 0
    assert reader.stderr.read() == b""


def test_query_by_offset_and_time_as_a_table_and_json_lines(cli_broker, home):
    topic = unique_name("cli-query")
    create_topic(cli_broker.bootstrap, topic, partitions=2)
    base_ms = int(time.time() * 1000) - 600_000
    produce_timed(cli_broker, topic, 5, base_ms, partition=1)

    rows = table(ok(["query", "-t", topic, "--offset", "3"], cli_broker, home))
    assert [(r["partition"], r["offset"], r["key"], r["value"], r["headers"]) for r in rows] == [
        ("1", "3", "k3", "m3", "n=3"), ("1", "4", "k4", "m4", "n=4")]
    assert rows[0]["timestamp"].endswith("Z")
    found = json_lines(["query", "-t", topic, "--time", str(base_ms + 1000), "-n", "2"],
                       cli_broker, home)
    assert [(m["partition"], m["offset"], m["key"], m["value"]) for m in found] == [
        (1, 1, "k1", "m1"), (1, 2, "k2", "m2")]
    assert ok(["query", "-t", topic, "--offset", "0", "-p", "0"], cli_broker, home) == ""
    fails(["query", "-t", topic], cli_broker, home, code=EXIT_USAGE)
    fails(["query", "-t", "no-such-topic", "--offset", "0"], cli_broker, home,
          reason="unknown topic")


def test_query_by_key_on_the_broker(cli_broker, home):
    """Against the real broker: the key index answers, and the CLI prints every message with
    the key, one JSON object per line."""
    topic = unique_name("cli-key")
    create_topic(cli_broker.bootstrap, topic, partitions=3)
    producer = Producer({"bootstrap.servers": cli_broker.bootstrap})
    for i in range(30):
        producer.produce(topic, key=f"order-{i % 6}".encode(), value=f"v{i}".encode())
    assert producer.flush(30) == 0
    done = run_cli(["query", "--topic", topic, "--key", "order-2", "--json"], cli_broker, home)
    assert done.returncode == EXIT_OK, done.stderr
    found = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert sorted(m["value"] for m in found) == sorted(f"v{i}" for i in range(2, 30, 6))
    assert {m["key"] for m in found} == {"order-2"}
    assert all({"partition", "offset", "key", "value"} <= set(m) for m in found)


class FakeMessagesApi:
    """An HTTP server answering GET /api/topics/{name}/messages as the API's contract says, to
    check what the CLI asks and prints for queries the real broker cannot answer yet."""

    def __init__(self):
        self.requests = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                url = urlparse(self.path)
                fake.requests.append((url.path, parse_qs(url.query),
                                      self.headers.get("Authorization")))
                messages = [{
                    "partition": 2, "offset": 41, "timestamp_ms": 1700000000000,
                    "timestamp_type": "create_time",
                    "key": {"size": 7, "text": "order-7", "base64": "b3JkZXItNw=="},
                    "value": {"size": 5, "text": "hello", "base64": "aGVsbG8="},
                    "headers": [{"key": "id", "value": {"size": 2, "text": "m1",
                                                         "base64": "bTE="}}],
                    "size_bytes": 16}, {
                    "partition": 0, "offset": 3, "timestamp_ms": 1700000000001,
                    "timestamp_type": "create_time",
                    "key": {"size": 7, "text": "order-7", "base64": "b3JkZXItNw=="},
                    "value": {"size": 2, "text": None, "base64": "/wA="},
                    "headers": [], "size_bytes": 9}]
                body = json.dumps({"topic": "orders", "messages": messages, "positions": [],
                                   "skipped_compressed_batches": 0}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_query_by_key_and_id_follow_the_api_contract(home):
    fake = FakeMessagesApi()
    try:
        done = run_cli(["query", "--url", fake.url, "--topic", "orders", "--key", "order-7",
                        "--json"], home=home)
        assert done.returncode == 0, done.stderr
        lines = [json.loads(line) for line in done.stdout.decode().splitlines()]
        assert lines[0] == {
            "partition": 2, "offset": 41, "timestamp_ms": 1700000000000,
            "timestamp_type": "create_time", "key": "order-7", "value": "hello",
            "headers": [{"key": "id", "value": "m1"}], "size_bytes": 16}
        assert lines[1]["value"] is None and lines[1]["value_base64"] == "/wA="
        path, query, authorization = fake.requests[-1]
        assert path == "/api/topics/orders/messages"
        assert query["key"] == ["order-7"] and "message_id" not in query
        assert authorization == "Basic " + base64.b64encode(b"guest:guest").decode()

        done = run_cli(["query", "--url", fake.url, "-t", "orders", "--id", "m 1&x=y",
                        "-p", "2"], home=home)
        assert done.returncode == 0, done.stderr
        _, query, _ = fake.requests[-1]
        assert query["message_id"] == ["m 1&x=y"] and query["partition"] == ["2"]
        rows = table(done.stdout.decode())
        assert rows[0]["value"] == "hello" and rows[1]["value"] == "<2 bytes>"
    finally:
        fake.close()


# ---- consumer groups ----

def group_consumer(bootstrap, group):
    return Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                     "auto.offset.reset": "earliest", "enable.auto.commit": False,
                     "session.timeout.ms": 6000})


def consume_n(consumer, n, timeout_s=30):
    got = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            got.append(message)
    assert len(got) == n, f"consumed {len(got)} of {n}"
    return got


def test_group_list_describe_reset_offsets_and_delete(cli_broker, home):
    bootstrap = cli_broker.bootstrap
    topic, group = unique_name("cli-grp"), unique_name("g")
    create_topic(bootstrap, topic, partitions=2)
    base_ms = int(time.time() * 1000) - 600_000
    produce_timed(cli_broker, topic, 10, base_ms, partition=0)
    produce_values(bootstrap, topic, [f"b{i}".encode() for i in range(4)], partition=1)
    consumer = group_consumer(bootstrap, group)
    consumer.subscribe([topic])
    consume_n(consumer, 14)
    consumer.commit(offsets=[TopicPartition(topic, 0, 6), TopicPartition(topic, 1, 4)],
                    asynchronous=False)

    def stable():
        rows = [r for r in table(ok(["group", "list"], cli_broker, home)) if r["group"] == group]
        return rows and rows[0]["state"] == "Stable" and rows[0]
    row = wait_for(stable, what="a stable group")
    assert row["members"] == "1" and row["protocol"].startswith("consumer")

    described = ok(["group", "describe", group], cli_broker, home)
    head, offsets_text, members_text = described.strip().split("\n\n")
    assert head.startswith(f"group {group}  state Stable") and head.endswith("total lag 4")
    offsets = {r["partition"]: r for r in table(offsets_text)}
    assert (offsets["0"]["committed"], offsets["0"]["log end"], offsets["0"]["lag"]) == (
        "6", "10", "4")
    assert offsets["1"]["lag"] == "0" and offsets["0"]["member"] != "-"
    [member] = table(members_text)
    assert set(member["assignments"].split(",")) == {f"{topic}:0", f"{topic}:1"}
    detail = ok_json(["group", "describe", group], cli_broker, home)
    assert detail["total_lag"] == 4

    fails(["group", "reset-offsets", group, "--to-earliest"], cli_broker, home, reason="409")
    fails(["group", "delete", group], cli_broker, home, reason="409")
    consumer.close()
    wait_for(lambda: ok_json(["group", "describe", group], cli_broker, home)["state"] == "Empty",
             what="the group to become empty")

    dry = table(ok(["group", "reset-offsets", group, "--to-earliest", "--dry-run"],
                   cli_broker, home).rsplit("\n", 2)[0])
    assert sorted((r["partition"], r["previous"], r["new"]) for r in dry) == [
        ("0", "6", "0"), ("1", "4", "0")]
    assert {o["partition"]: o["committed_offset"]
            for o in ok_json(["group", "describe", group], cli_broker, home)["offsets"]} == {
        0: 6, 1: 4}, "a dry run changes nothing"

    shifted = ok_json(["group", "reset-offsets", group, "-t", topic, "-p", "0",
                       "--shift-by", "-3"], cli_broker, home)
    assert [(p["partition"], p["new_offset"]) for p in shifted["partitions"]] == [(0, 3)]
    consumer = group_consumer(bootstrap, group)
    consumer.subscribe([topic])
    resumed = consume_n(consumer, 7)
    assert sorted((m.partition(), m.offset()) for m in resumed) == [(0, o) for o in range(3, 10)]
    consumer.close()
    wait_for(lambda: ok_json(["group", "describe", group], cli_broker, home)["state"] == "Empty",
             what="the group to become empty again")

    by_time = ok_json(["group", "reset-offsets", group, "-t", topic, "-p", "0",
                       "--to-datetime", str(base_ms + 7500)], cli_broker, home)
    assert [p["new_offset"] for p in by_time["partitions"]] == [8]
    to_offset = ok_json(["group", "reset-offsets", group, "--to-offset", "99"], cli_broker, home)
    assert sorted(p["new_offset"] for p in to_offset["partitions"]) == [4, 10]
    latest = ok(["group", "reset-offsets", group, "--to-latest"], cli_broker, home)
    assert latest.strip().endswith(f"group {group}: 2 partition offsets reset")
    fails(["group", "reset-offsets", group], cli_broker, home, code=EXIT_USAGE)
    fails(["group", "reset-offsets", group, "--to-earliest", "--to-latest"], cli_broker, home,
          code=EXIT_USAGE)

    assert ok(["group", "delete", group], cli_broker, home).strip() == f"deleted group {group}"
    assert group not in {g["group_id"] for g in ok_json(["group", "list"], cli_broker, home)}
    fails(["group", "describe", group], cli_broker, home, reason="404")


# ---- AMQP ----

def test_publish_queue_list_get_purge_exchanges_and_bindings(cli_broker, home):
    exchange, queue = unique_name("cli-ex"), unique_name("cli-q")
    connection, channel = amqp_channel(cli_broker)
    try:
        channel.exchange_declare(exchange, "topic", durable=True)
        channel.queue_declare(queue, durable=True)
        channel.queue_bind(queue, exchange, routing_key="orders.#")

        published = ok(["publish", "-e", exchange, "-r", "orders.new", "-b", "first",
                        "--message-id", "m-1", "-H", "tenant=acme", "--persistent",
                        "--content-type", "text/plain"], cli_broker, home)
        assert published.strip() == "published and routed"
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        assert body == b"first" and method.routing_key == "orders.new"
        assert properties.message_id == "m-1" and properties.delivery_mode == 2
        assert properties.headers == {"tenant": "acme"}
        assert properties.content_type == "text/plain"

        not_routed = ok(["publish", "-e", exchange, "-r", "elsewhere", "-b", "x"],
                        cli_broker, home)
        assert "NOT routed" in not_routed
        assert ok_json(["publish", "-r", queue, "-b", "to the default exchange"],
                       cli_broker, home) == {"routed": True}
        ok(["publish", "-e", exchange, "-r", "orders.old"], cli_broker, home, stdin=b"\xff\x00")

        rows = {r["name"]: r for r in table(ok(["queue", "list"], cli_broker, home))}
        assert rows[queue]["ready"] == "2" and rows[queue]["type"] == "classic"
        peeked = table(ok(["queue", "get", queue, "-c", "5"], cli_broker, home))
        assert [r["payload"] for r in peeked] == ["to the default exchange", "<2 bytes>"]
        assert [r["routing key"] for r in peeked] == [queue, "orders.old"]
        as_json = ok_json(["queue", "get", queue], cli_broker, home)
        assert as_json[0]["redelivered"] is True, "a peek puts the messages back"
        assert [q for q in ok_json(["queue", "list"], cli_broker, home)
                if q["name"] == queue][0]["messages_ready"] == 2
        taken = ok_json(["queue", "get", queue, "--ack"], cli_broker, home)
        assert taken[0]["payload"]["text"] == "to the default exchange"
        assert ok(["queue", "purge", queue], cli_broker, home).strip() == \
            f"purged 1 messages from queue {queue}"
        assert channel.basic_get(queue, auto_ack=True)[0] is None

        exchanges = {r["name"]: r for r in table(ok(["exchange", "list"], cli_broker, home))}
        assert exchanges[exchange]["type"] == "topic" and "(default)" in exchanges
        assert exchange in {e["name"] for e in ok_json(["exchange", "list"], cli_broker, home)}
        bindings = [r for r in table(ok(["binding", "list"], cli_broker, home))
                    if r["destination"] == queue and r["source"] == exchange]
        assert bindings == [{"source": exchange, "destination": queue,
                             "destination type": "queue", "routing key": "orders.#",
                             "arguments": ""}]
        assert {"source": exchange, "destination": queue, "routing_key": "orders.#"}.items() <= \
            [b for b in ok_json(["binding", "list"], cli_broker, home)
             if b["destination"] == queue and b["source"] == exchange][0].items()
    finally:
        connection.close()
    fails(["queue", "get", "no-such-queue"], cli_broker, home, reason="404")
    fails(["publish", "-e", "no-such-exchange", "-b", "x"], cli_broker, home, reason="404")


def test_queue_move_sends_dead_lettered_messages_back(cli_broker, home):
    work, dlq, dlx, orders = (unique_name(n) for n in ("work", "dlq", "dlx", "orders"))
    connection, channel = amqp_channel(cli_broker)
    try:
        channel.exchange_declare(orders, "direct", durable=True)
        channel.exchange_declare(dlx, "fanout", durable=True)
        channel.queue_declare(work, durable=True, arguments={"x-dead-letter-exchange": dlx})
        channel.queue_declare(dlq, durable=True)
        channel.queue_bind(work, orders, routing_key="new-order")
        channel.queue_bind(dlq, dlx)
        for i in range(3):
            channel.basic_publish(orders, "new-order", f"order-{i}".encode(),
                                  pika.BasicProperties(delivery_mode=2))
        for _ in range(3):
            method, _props, _body = channel.basic_get(work, auto_ack=False)
            channel.basic_reject(method.delivery_tag, requeue=False)
        channel.basic_publish("", dlq, b"stray")
        wait_for(lambda: [q for q in ok_json(["queue", "list"], cli_broker, home)
                          if q["name"] == dlq][0]["messages_ready"] == 4,
                 what="dead-lettered messages")

        moved = ok(["queue", "move", dlq], cli_broker, home)
        assert moved.startswith(f"moved 3 messages from queue {dlq}; 1 left in it")
        bodies = sorted(channel.basic_get(work, auto_ack=True)[2] for _ in range(3))
        assert bodies == [b"order-0", b"order-1", b"order-2"]
        assert ok_json(["queue", "move", dlq, "--to-exchange", orders, "--routing-key",
                        "new-order"], cli_broker, home) == {"moved": 1, "skipped": 0}
        assert channel.basic_get(work, auto_ack=True)[2] == b"stray"
    finally:
        connection.close()
    fails(["queue", "move", dlq, "--to-exchange", "missing"], cli_broker, home, reason="404")
    fails(["queue", "move", dlq, "--routing-key", "k"], cli_broker, home, code=EXIT_USAGE)


# ---- address, credentials, exit codes ----

def test_no_credentials_means_guest_and_others_come_from_flags_env_or_the_config_file(
        cli_broker, home, tmp_path):
    topic = unique_name("cli-auth")
    # guest/guest by default (the broker allows it from loopback).
    ok(["topic", "create", topic], cli_broker, home)
    # Flags.
    ok(["topic", "list", "--user", "reader", "--password", "read-pw"], cli_broker, home)
    fails(["topic", "list", "--user", "reader", "--password", "wrong"], cli_broker, home,
          reason="HTTP 401 unauthorized")
    fails(["topic", "delete", topic, "--user", "reader", "--password", "read-pw"],
          cli_broker, home, reason="HTTP 403 forbidden")
    fails(["topic", "list", "--user", "reader"], cli_broker, home, reason="without a password")
    # Environment.
    fails(["topic", "delete", topic], cli_broker, home,
          env={"SLUICE_USER": "reader", "SLUICE_PASSWORD": "read-pw"}, reason="403")
    # A config file named on the command line, and the default one under the home directory;
    # the flag beats the file.
    config = tmp_path / "ops.toml"
    config.write_text(f'url = "{cli_broker.http_url}"\nuser = "reader"\npassword = "read-pw"\n')
    fails(["topic", "delete", topic, "--cli-config", config], None, home, reason="403")
    default_config = home / ".config" / "sluice" / "cli.toml"
    default_config.parent.mkdir(parents=True)
    default_config.write_text(f'url = "{cli_broker.http_url}"\nuser = "ops"\n'
                              'password = "ops-pw"\n')
    listed = ok_json(["topic", "list"], None, home)
    assert topic in {t["name"] for t in listed}, "url and credentials came from the file"
    fails(["topic", "delete", topic, "--password", "wrong"], None, home, reason="401")
    ok(["topic", "delete", topic], None, home)
    default_config.write_text("colour = 'red'\n")
    fails(["topic", "list"], None, home, reason="invalid config file")
    # The URL from the environment.
    default_config.unlink()
    ok(["topic", "list"], None, home, env={"SLUICE_URL": cli_broker.http_url})


def test_an_unreachable_server_has_its_own_exit_code(home):
    port = free_port()  # nothing listens there
    stderr = fails(["topic", "list", "--url", f"http://127.0.0.1:{port}"], None, home,
                   code=EXIT_CONNECTION)
    assert f"cannot reach http://127.0.0.1:{port}/" in stderr
    assert "sluice serve" in stderr
    fails(["topic", "list", "--url", "https://127.0.0.1:1"], None, home, reason="https")
    fails(["topic", "list", "--url", "127.0.0.1:8080"], None, home, reason="invalid --url")


def test_a_server_that_stops_gives_the_connection_exit_code(broker_factory, home):
    broker = wait_for_http(broker_factory())
    ok(["topic", "list"], broker, home)
    broker.terminate()
    fails(["topic", "list"], broker, home, code=EXIT_CONNECTION, reason="cannot reach")


def test_vhost_add_list_and_delete(cli_broker, home):
    assert ok(["vhost", "add", "tenant a"], cli_broker, home).strip() == "vhost 'tenant a' exists"
    ok(["vhost", "add", "tenant a"], cli_broker, home)  # again: nothing happens
    rows = {r["name"]: r for r in table(ok(["vhost", "list"], cli_broker, home))}
    assert set(rows) == {"/", "tenant a"}
    assert rows["tenant a"]["queues"] == "0" and rows["tenant a"]["exchanges"] == "6"
    assert [v["name"] for v in ok_json(["vhost", "list"], cli_broker, home)] == ["/", "tenant a"]
    # Queue commands take --vhost; a list without it shows every vhost's queues.
    ok(["user", "permissions", "guest", "--vhost", "tenant a", "--configure", ".*",
        "--write", ".*", "--read", ".*"], cli_broker, home)
    with pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", cli_broker.amqp_port, virtual_host="tenant a",
            credentials=pika.PlainCredentials("guest", "guest"))) as connection:
        channel = connection.channel()
        channel.queue_declare("tenant-jobs")
        channel.basic_publish("", "tenant-jobs", b"for tenant a")
        channel.queue_declare("tenant-jobs", passive=True)
    rows = [r for r in table(ok(["queue", "list"], cli_broker, home)) if r["vhost"] == "tenant a"]
    assert [(r["name"], r["ready"]) for r in rows] == [("tenant-jobs", "1")]
    assert [q["name"] for q in ok_json(["queue", "list", "--vhost", "tenant a"], cli_broker,
                                       home)] == ["tenant-jobs"]
    peeked = ok_json(["queue", "get", "tenant-jobs", "--vhost", "tenant a"], cli_broker, home)
    assert peeked[0]["payload"]["text"] == "for tenant a"
    assert ok(["queue", "purge", "tenant-jobs", "--vhost", "tenant a"], cli_broker,
              home).strip() == "purged 1 messages from queue tenant-jobs"
    missing_queue = run_cli(["queue", "purge", "tenant-jobs"], cli_broker, home)
    assert missing_queue.returncode == EXIT_ERROR, "not in '/'"
    assert ok(["vhost", "delete", "tenant a"], cli_broker, home).strip() == \
        "deleted vhost 'tenant a'"
    missing = run_cli(["vhost", "delete", "tenant a"], cli_broker, home)
    assert missing.returncode == EXIT_ERROR and b"no vhost 'tenant a'" in missing.stderr
    refused = run_cli(["vhost", "delete", "/"], cli_broker, home)
    assert refused.returncode == EXIT_ERROR and b"cannot be deleted" in refused.stderr
