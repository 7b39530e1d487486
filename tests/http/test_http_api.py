"""The HTTP API against the real binary, with data from real clients (confluent-kafka, pika):
every endpoint, the auth rules (401 with a challenge, 403 for non-administrators), 404 and 400
with reasons, reset-offsets seen by a real consumer, and get / publish / move on AMQP queues."""

import base64
import time

import pika
import pytest
import requests
from confluent_kafka import Consumer, Producer

from http_client import GUEST, Api, assert_error, wait_for
from librdkafka_client import create_topic, produce_values, unique_name

USERS = "reader:read-pw,ops:ops:pw:administrator"
READER = ("reader", "read-pw")
# A password may contain ':' and the tag is only the last field.
OPS = ("ops", "ops:pw")


@pytest.fixture
def api_broker(broker_factory):
    return broker_factory("--amqp-users", USERS)


@pytest.fixture
def api(api_broker):
    return Api(api_broker)


def amqp_channel(broker, name="http-api-test"):
    connection = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", broker.amqp_port, heartbeat=0,
        client_properties={"connection_name": name}))
    return connection, connection.channel()


# ---- auth ----

def test_health_metrics_and_openapi_need_no_credentials(api):
    health = api.get("/api/health", auth=None)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    metrics = api.get("/metrics", auth=None)
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    document = api.get("/api/openapi.json", auth=None)
    assert document.status_code == 200
    paths = document.json()["paths"]
    for path in ["/api/health", "/api/ready", "/api/overview", "/api/topics",
                 "/api/topics/{name}/messages", "/api/groups/{group}/reset-offsets",
                 "/api/queues/{name}/move", "/api/exchanges/{name}/publish", "/metrics",
                 "/api/connections", "/api/channels", "/api/bindings"]:
        assert path in paths, path


def test_missing_or_wrong_credentials_get_401_with_a_basic_challenge(api):
    for auth in [None, ("guest", "wrong"), ("nobody", "pw"), ("reader", "")]:
        response = api.get("/api/topics", auth=auth)
        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Basic realm=")
    # A malformed header is a 401 too, never a 400 or a 500.
    response = api.get("/api/overview", auth=None, headers={"Authorization": "Basic %%%"})
    assert_error(response, 401, "unauthorized")


def test_reads_need_a_user_and_mutations_an_administrator(api):
    assert api.get("/api/topics", auth=READER).status_code == 200
    topic = unique_name("auth")
    assert_error(api.post("/api/topics", {"name": topic}, auth=READER), 403, "forbidden")
    assert api.get(f"/api/topics/{topic}").status_code == 404, "the refused create did nothing"
    assert api.post("/api/topics", {"name": topic}, auth=OPS).status_code == 201
    assert_error(api.delete(f"/api/topics/{topic}", auth=READER), 403)
    assert_error(api.post("/api/queues/q/purge", auth=READER), 403)
    assert api.delete(f"/api/topics/{topic}", auth=GUEST).status_code == 204


def test_unknown_paths_and_methods_are_json_errors(api):
    assert_error(api.get("/api/nothing-here"), 404, "not_found")
    assert_error(api.request("PATCH", "/api/topics"), 405, "method_not_allowed")


# ---- system ----

def test_ready_and_overview_report_traffic_connections_and_disk(api_broker, api):
    ready = api.ok("GET", "/api/ready")
    assert ready["ready"] is True
    assert {c["name"] for c in ready["checks"]} == {"storage", "listeners"}

    topic = unique_name("overview")
    create_topic(api_broker.bootstrap, topic)
    values = [b"x" * 100 for _ in range(50)]
    producer = Producer({"bootstrap.servers": api_broker.bootstrap, "acks": "all"})
    for value in values:
        producer.produce(topic, value=value)
    assert producer.flush(30) == 0
    connection, _channel = amqp_channel(api_broker)
    try:
        overview = api.ok("GET", "/api/overview")
        assert overview["connections"]["kafka"] >= 1, overview["connections"]
        assert overview["connections"]["amqp"] == 1, overview["connections"]
        traffic = overview["traffic"]
        assert traffic["messages_in_total"] >= 50
        assert traffic["bytes_in_total"] >= 50 * 100
        assert overview["counts"]["topics"] == 1
        assert overview["counts"]["partitions"] == 1
        assert overview["disk"]["data_dir_bytes"] >= 50 * 100
        assert overview["disk"]["free_bytes"] > 0
        assert overview["memory"]["rss_bytes"] > 0
        assert overview["alarms"] == []
        assert overview["nodes"][0]["kafka_port"] == int(api_broker.bootstrap.split(":")[1])
        assert {l["protocol"] for l in overview["listeners"]} == {"kafka", "amqp"}
        connections = api.ok("GET", "/api/connections")
        amqp = [c for c in connections if c["protocol"] == "amqp"]
        assert len(amqp) == 1 and amqp[0]["user"] == "guest" and amqp[0]["channels"] == 1
        assert amqp[0]["client"] == "http-api-test"
        assert amqp[0]["peer"].startswith("127.0.0.1:")
        channels = api.ok("GET", "/api/channels")
        assert [(c["connection"], c["channel"]) for c in channels] == [(amqp[0]["id"], 1)]
    finally:
        connection.close()
    # Rates come from samples every ~5 s: keep producing until one shows the traffic.
    def rate_seen():
        for value in values[:10]:
            producer.produce(topic, value=value)
        producer.flush(10)
        rate = api.ok("GET", "/api/overview")["traffic"]["messages_in_per_sec"]
        return rate > 0 and rate
    wait_for(rate_seen, timeout=20, interval=1, what="a message-in rate")
    wait_for(lambda: api.ok("GET", "/api/overview")["connections"]["amqp"] == 0,
             what="the closed AMQP connection to leave the list")


def scrape(api):
    """Samples of /metrics as {(name, frozenset(labels)): value}."""
    response = api.get("/metrics", auth=None)
    assert response.status_code == 200
    samples = {}
    for line in response.text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        name, _, label_text = series.partition("{")
        labels = frozenset(
            tuple(pair.split("=", 1)) for pair in label_text.rstrip("}").split(",") if pair)
        samples[(name, labels)] = float(value)
    return samples


def test_metrics_count_api_requests_by_route_and_status(api):
    for _ in range(3):
        api.get("/api/topics/missing")
    api.get("/api/topics")
    samples = scrape(api)
    def requests_total(route, status):
        key = ("sluice_http_requests_total", frozenset(
            {("method", '"GET"'), ("route", f'"{route}"'), ("status", f'"{status}"')}))
        return samples.get(key, 0)
    assert requests_total("/api/topics/{name}", 404) == 3
    assert requests_total("/api/topics", 200) == 1
    api.get("/api/topics")
    assert scrape(api)[("sluice_http_requests_total", frozenset(
        {("method", '"GET"'), ("route", '"/api/topics"'), ("status", '"200"')}))] == 2


# ---- topics ----

def test_topic_create_describe_configs_and_delete(api):
    topic = unique_name("topic")
    created = api.ok("POST", "/api/topics", 201,
                     json={"name": topic, "partitions": 3, "configs": {"retention.ms": "60000"}})
    assert created["name"] == topic and len(created["partitions"]) == 3
    assert created["configs"] == {"retention.ms": "60000"}
    assert_error(api.post("/api/topics", {"name": topic}), 409, "conflict")
    assert topic in [t["name"] for t in api.ok("GET", "/api/topics")]

    configs = {c["name"]: c for c in api.ok("GET", f"/api/topics/{topic}/configs")}
    assert configs["retention.ms"]["value"] == "60000"
    assert configs["retention.ms"]["source"] == "topic_override"
    assert configs["segment.bytes"]["source"] in ("default", "static_broker")

    changed = {c["name"]: c for c in api.ok(
        "PUT", f"/api/topics/{topic}/configs",
        json={"configs": {"retention.ms": None, "segment.bytes": "1048576"}})}
    assert changed["segment.bytes"]["value"] == "1048576"
    assert changed["segment.bytes"]["source"] == "topic_override"
    assert changed["retention.ms"]["source"] != "topic_override"
    replaced = {c["name"]: c for c in api.ok(
        "PUT", f"/api/topics/{topic}/configs",
        json={"configs": {"retention.bytes": "1000000"}, "replace": True})}
    assert replaced["segment.bytes"]["source"] != "topic_override"
    assert replaced["retention.bytes"]["value"] == "1000000"

    assert api.delete(f"/api/topics/{topic}").status_code == 204
    assert_error(api.get(f"/api/topics/{topic}"), 404, "not_found")


def test_invalid_topic_input_is_400_with_the_reason(api):
    topic = unique_name("bad")
    assert_error(api.post("/api/topics", {"name": topic, "configs": {"retention.ms": "soon"}}),
                 400, "bad_request", "retention.ms")
    assert_error(api.post("/api/topics", {"name": topic, "configs": {"no.such.config": "1"}}),
                 400, "bad_request", "no.such.config")
    assert_error(api.post("/api/topics", {"name": "bad/name"}), 400, "bad_request")
    assert_error(api.post("/api/topics", {"name": topic, "partitions": 0}), 400, "bad_request")
    assert_error(api.post("/api/topics", {"partitions": 1}), 400, "bad_request")
    assert_error(api.post("/api/topics", data="{not json",
                          headers={"content-type": "application/json"}), 400)
    assert_error(api.post("/api/topics", {"name": topic, "extra": 1}), 400)
    assert api.ok("POST", "/api/topics", 201, json={"name": topic})
    assert_error(api.put(f"/api/topics/{topic}/configs",
                         {"configs": {"segment.bytes": "-5"}}), 400, "bad_request", "segment.bytes")
    assert_error(api.put(f"/api/topics/{topic}/configs", {"configs": {"x.y": "1"}}), 400)


def test_unknown_topic_is_404_everywhere(api):
    for method, path in [("GET", "/api/topics/missing"), ("DELETE", "/api/topics/missing"),
                         ("GET", "/api/topics/missing/configs"),
                         ("PUT", "/api/topics/missing/configs"),
                         ("GET", "/api/topics/missing/partitions"),
                         ("GET", "/api/topics/missing/messages")]:
        kwargs = {"json": {"configs": {}}} if method == "PUT" else {}
        assert_error(api.request(method, path, **kwargs), 404, "not_found")


def test_partitions_show_offsets_and_size_of_produced_data(api_broker, api):
    topic = unique_name("parts")
    create_topic(api_broker.bootstrap, topic, partitions=2)
    produce_values(api_broker.bootstrap, topic, [b"v" * 10] * 7, partition=1)
    partitions = api.ok("GET", f"/api/topics/{topic}/partitions")
    assert [p["partition"] for p in partitions] == [0, 1]
    assert partitions[0]["high_watermark"] == 0 and partitions[0]["log_end_offset"] == 0
    assert partitions[1]["high_watermark"] == 7 and partitions[1]["log_end_offset"] == 7
    assert partitions[1]["log_start_offset"] == 0
    assert partitions[1]["size_bytes"] > 70 and partitions[1]["segments"] >= 1
    assert partitions[1]["leader"] == 0 and partitions[1]["replicas"] == [0]
    summary = [t for t in api.ok("GET", "/api/topics") if t["name"] == topic][0]
    assert summary["messages"] == 7 and summary["partitions"] == 2


# ---- messages ----

def test_messages_by_offset_range_and_timestamp_with_keys_headers_and_binary(api_broker, api):
    topic = unique_name("msgs")
    create_topic(api_broker.bootstrap, topic, partitions=2)
    producer = Producer({"bootstrap.servers": api_broker.bootstrap, "acks": "all"})
    base_ms = int(time.time() * 1000) - 100_000
    for i in range(10):
        producer.produce(topic, partition=0, key=f"k{i}".encode(), value=f"value-{i}".encode(),
                         headers=[("h", f"hv{i}".encode())], timestamp=base_ms + i * 1000)
    producer.produce(topic, partition=1, key=None, value=b"\xff\x00\x01")
    assert producer.flush(30) == 0

    page = api.ok("GET", f"/api/topics/{topic}/messages",
                  params={"partition": 0, "offset": 3, "end_offset": 6, "hex": "true"})
    assert [m["offset"] for m in page["messages"]] == [3, 4, 5]
    first = page["messages"][0]
    assert first["partition"] == 0
    assert first["key"]["text"] == "k3"
    assert first["value"]["text"] == "value-3"
    assert base64.b64decode(first["value"]["base64"]) == b"value-3"
    assert first["value"]["hex"] == b"value-3".hex()
    assert first["headers"] == [{"key": "h", "value": {
        "size": 3, "text": "hv3", "base64": base64.b64encode(b"hv3").decode(), "hex": b"hv3".hex()}}]
    assert first["timestamp_ms"] == base_ms + 3000
    assert first["timestamp_type"] == "create_time"
    assert first["size_bytes"] == len("k3") + len("value-3") + len("h") + len("hv3")
    assert page["positions"] == [{"partition": 0, "next_offset": 6, "high_watermark": 10}]

    by_time = api.ok("GET", f"/api/topics/{topic}/messages",
                     params={"partition": 0, "timestamp_ms": base_ms + 7500})
    assert [m["offset"] for m in by_time["messages"]] == [8, 9]

    everything = api.ok("GET", f"/api/topics/{topic}/messages", params={"limit": 1000})
    assert len(everything["messages"]) == 11
    binary = [m for m in everything["messages"] if m["partition"] == 1][0]
    assert binary["key"] is None
    assert binary["value"]["text"] is None
    assert base64.b64decode(binary["value"]["base64"]) == b"\xff\x00\x01"
    assert "hex" not in binary["value"]

    limited = api.ok("GET", f"/api/topics/{topic}/messages", params={"partition": 0, "limit": 4})
    assert [m["offset"] for m in limited["messages"]] == [0, 1, 2, 3]
    assert limited["positions"][0]["next_offset"] == 4


def test_message_query_errors(api_broker, api):
    topic = unique_name("msgerr")
    create_topic(api_broker.bootstrap, topic)
    path = f"/api/topics/{topic}/messages"
    assert_error(api.get(path, params={"limit": 0}), 400)
    assert_error(api.get(path, params={"limit": 100000}), 400)
    assert_error(api.get(path, params={"offset": -1}), 400)
    assert_error(api.get(path, params={"offset": "abc"}), 400)
    assert_error(api.get(path, params={"offset": 1, "timestamp_ms": 5}), 400)
    assert_error(api.get(path, params={"partition": 7}), 404)
    assert_error(api.get(path, params={"key": "k", "message_id": "m"}), 400)
    assert_error(api.get(path, params={"key": "k", "offset": 0}), 400)
    assert_error(api.get(path, params={"key": "k", "partition": 7}), 404)
    assert_error(api.get(f"/api/topics/{topic}-missing/messages", params={"key": "k"}), 404)


def test_messages_by_key_and_by_message_id_across_partitions(api_broker, api):
    topic = unique_name("bykey")
    create_topic(api_broker.bootstrap, topic, partitions=3)
    producer = Producer({"bootstrap.servers": api_broker.bootstrap})
    for i in range(60):
        producer.produce(topic, key=f"order-{i % 7}".encode(), value=f"v{i}".encode(),
                         headers=[("message-id", f"id-{i}".encode())])
    assert producer.flush(30) == 0

    found = api.get(f"/api/topics/{topic}/messages", params={"key": "order-3"})
    assert found.status_code == 200, found.text
    messages = found.json()["messages"]
    assert sorted(m["value"]["text"] for m in messages) == sorted(
        f"v{i}" for i in range(3, 60, 7))
    assert {m["key"]["text"] for m in messages} == {"order-3"}

    by_id = api.get(f"/api/topics/{topic}/messages", params={"message_id": "id-41"}).json()
    assert [m["value"]["text"] for m in by_id["messages"]] == ["v41"]
    # What the id query found is what an offset query shows at that place.
    [hit] = by_id["messages"]
    same = api.get(f"/api/topics/{topic}/messages", params={
        "partition": hit["partition"], "offset": hit["offset"], "limit": 1}).json()
    assert same["messages"][0]["value"]["text"] == "v41"

    assert api.get(f"/api/topics/{topic}/messages",
                   params={"key": "no-such-key"}).json()["messages"] == []


# ---- consumer groups ----

def group_consumer(bootstrap, group):
    return Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                     "enable.auto.commit": False, "auto.offset.reset": "earliest",
                     "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})


def consume_n(consumer, n, timeout=30):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        got.append(msg)
    assert len(got) == n, f"consumed {len(got)} of {n}"
    return got


def test_group_describe_lag_reset_offsets_and_delete(api_broker, api):
    bootstrap = api_broker.bootstrap
    topic = unique_name("grp")
    group = unique_name("g")
    create_topic(bootstrap, topic, partitions=2)
    produce_values(bootstrap, topic, [f"a{i}".encode() for i in range(10)], partition=0)
    produce_values(bootstrap, topic, [f"b{i}".encode() for i in range(4)], partition=1)
    consumer = group_consumer(bootstrap, group)
    consumer.subscribe([topic])
    consume_n(consumer, 14)
    # Commit less than everything, so there is lag to see.
    from confluent_kafka import TopicPartition
    consumer.commit(offsets=[TopicPartition(topic, 0, 6), TopicPartition(topic, 1, 4)],
                    asynchronous=False)

    def described_stable():
        detail = api.ok("GET", f"/api/groups/{group}")
        return detail if detail["state"] == "Stable" and detail["members"] else None
    detail = wait_for(described_stable, what="a stable group with a member")
    member = detail["members"][0]
    assert sorted((a["topic"], a["partition"]) for a in member["assignments"]) == [
        (topic, 0), (topic, 1)]
    offsets = {o["partition"]: o for o in detail["offsets"]}
    assert offsets[0]["committed_offset"] == 6 and offsets[0]["lag"] == 4
    assert offsets[0]["high_watermark"] == 10 and offsets[0]["log_end_offset"] == 10
    assert offsets[1]["lag"] == 0
    assert offsets[0]["member_id"] == member["member_id"]
    assert detail["total_lag"] == 4
    listed = [g for g in api.ok("GET", "/api/groups") if g["group_id"] == group][0]
    assert listed["members"] == 1 and listed["state"] == "Stable"
    assert listed["protocol_type"] == "consumer"

    # Refused while the group has members, as kafka-consumer-groups does.
    assert_error(api.post(f"/api/groups/{group}/reset-offsets", {"strategy": "earliest"}),
                 409, "conflict")
    assert_error(api.delete(f"/api/groups/{group}"), 409, "conflict")
    consumer.close()
    wait_for(lambda: api.ok("GET", f"/api/groups/{group}")["state"] == "Empty",
             what="the group to become empty")

    plan = api.ok("POST", f"/api/groups/{group}/reset-offsets",
                  json={"strategy": "earliest", "dry_run": True})
    assert plan["dry_run"] is True
    assert sorted((p["partition"], p["previous_offset"], p["new_offset"])
                  for p in plan["partitions"]) == [(0, 6, 0), (1, 4, 0)]
    after_dry_run = {o["partition"]: o["committed_offset"]
                     for o in api.ok("GET", f"/api/groups/{group}")["offsets"]}
    assert after_dry_run == {0: 6, 1: 4}, "a dry run changes nothing"

    shifted = api.ok("POST", f"/api/groups/{group}/reset-offsets",
                     json={"topic": topic, "partitions": [0], "strategy": "shift", "shift": -3})
    assert [(p["partition"], p["new_offset"]) for p in shifted["partitions"]] == [(0, 3)]
    # A real consumer of the group resumes where the reset put it.
    consumer = group_consumer(bootstrap, group)
    consumer.subscribe([topic])
    resumed = consume_n(consumer, 7)
    assert sorted((m.partition(), m.offset()) for m in resumed) == [(0, o) for o in range(3, 10)]
    consumer.close()
    wait_for(lambda: api.ok("GET", f"/api/groups/{group}")["state"] == "Empty",
             what="the group to become empty again")

    to_offset = api.ok("POST", f"/api/groups/{group}/reset-offsets",
                       json={"topic": topic, "strategy": "offset", "offset": 99})
    assert sorted((p["partition"], p["new_offset"]) for p in to_offset["partitions"]) == [
        (0, 10), (1, 4)], "clamped to the high watermark"
    latest = api.ok("POST", f"/api/groups/{group}/reset-offsets",
                    json={"topic": topic, "strategy": "latest"})
    assert sorted(p["new_offset"] for p in latest["partitions"]) == [4, 10]

    assert_error(api.post(f"/api/groups/{group}/reset-offsets", {"strategy": "timestamp"}),
                 400, reason_contains="timestamp_ms")
    assert_error(api.post(f"/api/groups/{group}/reset-offsets", {"strategy": "sideways"}), 400)
    assert_error(api.post(f"/api/groups/{group}/reset-offsets",
                          {"topic": "missing", "strategy": "earliest"}), 404)
    assert api.delete(f"/api/groups/{group}").status_code == 204
    assert_error(api.get(f"/api/groups/{group}"), 404, "not_found")
    assert_error(api.delete(f"/api/groups/{group}"), 404, "not_found")


def test_a_consumer_protocol_group_is_shown_and_guarded_like_a_classic_one(api_broker, api):
    """A group on the consumer rebalance protocol (KIP-848, group.protocol=consumer): the API
    shows its members with the partitions the coordinator assigned them, and refuses to reset
    its offsets while it has members."""
    bootstrap = api_broker.bootstrap
    topic = unique_name("kip848")
    group = unique_name("g848")
    create_topic(bootstrap, topic, partitions=2)
    produce_values(bootstrap, topic, [f"v{i}".encode() for i in range(4)], partition=0)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "group.protocol": "consumer", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    consume_n(consumer, 4)
    consumer.commit(asynchronous=False)

    def described_stable():
        detail = api.ok("GET", f"/api/groups/{group}")
        return detail if detail["state"] == "Stable" and detail["members"] else None
    detail = wait_for(described_stable, what="a stable consumer-protocol group")
    [member] = detail["members"]
    assert sorted((a["topic"], a["partition"]) for a in member["assignments"]) == [
        (topic, 0), (topic, 1)]
    assert {o["partition"]: o["committed_offset"] for o in detail["offsets"]}[0] == 4
    listed = [g for g in api.ok("GET", "/api/groups") if g["group_id"] == group][0]
    assert (listed["state"], listed["protocol_type"], listed["protocol"], listed["members"]) \
        == ("Stable", "consumer", "uniform", 1)
    assert_error(api.post(f"/api/groups/{group}/reset-offsets", {"strategy": "earliest"}),
                 409, "conflict")
    assert_error(api.delete(f"/api/groups/{group}"), 409, "conflict")
    consumer.close()
    wait_for(lambda: api.ok("GET", f"/api/groups/{group}")["state"] == "Empty",
             what="the group to become empty")
    reset = api.ok("POST", f"/api/groups/{group}/reset-offsets", json={"strategy": "earliest"})
    assert sorted(p["new_offset"] for p in reset["partitions"]) == [0]
    assert api.delete(f"/api/groups/{group}").status_code == 204


def test_reset_offsets_to_a_timestamp_is_seen_by_a_consumer(api_broker, api):
    bootstrap = api_broker.bootstrap
    topic = unique_name("ts")
    group = unique_name("gts")
    create_topic(bootstrap, topic)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    base_ms = int(time.time() * 1000) - 60_000
    for i in range(6):
        producer.produce(topic, value=f"m{i}".encode(), timestamp=base_ms + i * 1000)
    assert producer.flush(30) == 0
    result = api.ok("POST", f"/api/groups/{group}/reset-offsets",
                    json={"topic": topic, "strategy": "timestamp", "timestamp_ms": base_ms + 3500})
    assert [(p["previous_offset"], p["new_offset"]) for p in result["partitions"]] == [(None, 4)]
    consumer = group_consumer(bootstrap, group)
    consumer.subscribe([topic])
    assert [m.value() for m in consume_n(consumer, 2)] == [b"m4", b"m5"]
    consumer.close()


# ---- AMQP ----

def test_exchanges_queues_and_bindings_declared_and_listed(api_broker, api):
    exchange, queue = unique_name("ex"), unique_name("q")
    created = api.ok("POST", "/api/exchanges", 201,
                     json={"name": exchange, "type": "topic", "arguments": {"alternate-exchange": "ae"}})
    assert created["type"] == "topic" and created["durable"] is True
    assert created["arguments"] == {"alternate-exchange": "ae"}
    assert api.ok("GET", f"/api/exchanges/{exchange}")["name"] == exchange
    default = api.ok("GET", "/api/exchanges/amq.default")
    assert default["name"] == "" and default["type"] == "direct"
    assert_error(api.post("/api/exchanges", {"name": exchange, "type": "fanout"}), 400)
    assert_error(api.post("/api/exchanges", {"name": unique_name("x"), "type": "nope"}), 400)

    declared = api.ok("POST", "/api/queues", 201,
                      json={"name": queue, "arguments": {"x-max-length": 100}})
    assert declared["type"] == "classic" and declared["arguments"] == {"x-max-length": 100}
    connection, channel = amqp_channel(api_broker)
    try:
        channel.queue_bind(queue, exchange, routing_key="a.*")
        bindings = [b for b in api.ok("GET", "/api/bindings") if b["source"] == exchange]
        assert bindings == [{"vhost": "/", "source": exchange, "destination": queue,
                             "destination_type": "queue", "routing_key": "a.*", "arguments": {}}]
        assert_error(api.delete(f"/api/exchanges/{exchange}", params={"if_unused": "true"}),
                     409, "conflict")
        channel.basic_publish(exchange, "a.b", b"hello")
        wait_for(lambda: api.ok("GET", f"/api/queues/{queue}")["messages_ready"] == 1,
                 what="the published message")
        channel.basic_consume(queue, lambda *a: None, auto_ack=False)
        connection.process_data_events(0.5)
        info = api.ok("GET", f"/api/queues/{queue}")
        assert info["consumers"] == 1 and info["messages_unacked"] == 1
        assert info["message_stats"]["publish_total"] == 1
        assert info["message_stats"]["deliver_total"] == 1
        assert_error(api.delete(f"/api/queues/{queue}", params={"if_unused": "true"}), 409)
    finally:
        connection.close()
    assert queue in [q["name"] for q in api.ok("GET", "/api/queues")]
    assert api.delete(f"/api/exchanges/{exchange}").status_code == 204
    assert_error(api.get(f"/api/exchanges/{exchange}"), 404)
    assert_error(api.delete("/api/exchanges/amq.direct"), 403)
    assert api.delete(f"/api/queues/{queue}").status_code == 204
    assert_error(api.get(f"/api/queues/{queue}"), 404, "not_found")
    assert_error(api.delete(f"/api/queues/{queue}"), 404)
    assert_error(api.post(f"/api/queues/{queue}/purge"), 404)


def test_publish_get_with_requeue_take_and_purge(api_broker, api):
    queue = unique_name("pq")
    api.ok("POST", "/api/queues", 201, json={"name": queue})
    for i in range(3):
        published = api.ok("POST", "/api/exchanges/amq.default/publish", json={
            "routing_key": queue, "payload": f"body-{i}",
            "properties": {"content_type": "text/plain", "delivery_mode": 2,
                           "message_id": f"id-{i}", "headers": {"n": i, "tag": "t"}}})
        assert published == {"routed": True}
    binary = base64.b64encode(b"\x00\xffbin").decode()
    api.ok("POST", "/api/exchanges/amq.default/publish",
           json={"routing_key": queue, "payload": binary, "payload_encoding": "base64"})
    unrouted = api.ok("POST", "/api/exchanges/amq.default/publish",
                      json={"routing_key": unique_name("nowhere"), "payload": "x"})
    assert unrouted == {"routed": False}

    peeked = api.ok("POST", f"/api/queues/{queue}/get", json={"count": 2})
    assert [m["payload"]["text"] for m in peeked] == ["body-0", "body-1"]
    assert peeked[0]["properties"]["message_id"] == "id-0"
    assert peeked[0]["properties"]["headers"] == {"n": 0, "tag": "t"}
    assert peeked[0]["redelivered"] is False and peeked[0]["routing_key"] == queue
    assert peeked[1]["message_count"] == 2
    assert api.ok("GET", f"/api/queues/{queue}")["messages_ready"] == 4, "peek requeues"

    # A real client sees the peeked messages again, first and flagged redelivered.
    connection, channel = amqp_channel(api_broker)
    try:
        method, properties, body = channel.basic_get(queue, auto_ack=False)
        assert body == b"body-0" and method.redelivered
        assert properties.message_id == "id-0" and properties.headers == {"n": 0, "tag": "t"}
        channel.basic_nack(method.delivery_tag, requeue=True)
    finally:
        connection.close()

    taken = api.ok("POST", f"/api/queues/{queue}/get", json={"count": 10, "ack_mode": "ack"})
    assert [m["payload"]["base64"] for m in taken][-1] == binary
    assert taken[-1]["payload"]["text"] is None
    assert len(taken) == 4
    assert api.ok("GET", f"/api/queues/{queue}")["messages_ready"] == 0
    assert api.ok("POST", f"/api/queues/{queue}/get", json={}) == []

    api.ok("POST", "/api/exchanges/amq.default/publish", json={"routing_key": queue, "payload": "p"})
    assert api.ok("POST", f"/api/queues/{queue}/purge") == {"messages_purged": 1}


def test_publish_and_get_input_errors(api_broker, api):
    queue = unique_name("eq")
    api.ok("POST", "/api/queues", 201, json={"name": queue})
    publish = "/api/exchanges/amq.default/publish"
    assert_error(api.post("/api/exchanges/missing/publish", {"payload": "x"}), 404)
    assert_error(api.post(publish, {"routing_key": "r" * 256, "payload": "x"}), 400)
    assert_error(api.post(publish, {"payload": "%%%", "payload_encoding": "base64"}), 400)
    assert_error(api.post(publish, {"payload": "x", "properties": {"expiration": "soon"}}), 400)
    assert_error(api.post(publish, {"payload": "x", "properties": {"delivery_mode": 9}}), 400)
    assert_error(api.post(publish, {"payload": "x", "properties": {"user_id": "someone"}}), 400)
    assert_error(api.post(publish, {"payload": "x", "properties": {"message_id": "m" * 300}}), 400)
    assert_error(api.post(f"/api/queues/{queue}/get", {"count": 0}), 400)
    assert_error(api.post(f"/api/queues/{queue}/get", {"ack_mode": "maybe"}), 400)
    assert_error(api.post("/api/queues/missing/get", {}), 404)
    assert_error(api.post("/api/queues", {"name": queue, "arguments": {"x-max-length": "x"}}), 400)


def test_move_dead_lettered_messages_back_to_their_original_exchange(api_broker, api):
    work, dlq, dlx, orders = (unique_name(n) for n in ("work", "dlq", "dlx", "orders"))
    connection, channel = amqp_channel(api_broker)
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
        # The consumer rejects them: they are dead-lettered with x-death.
        for _ in range(3):
            method, _props, _body = channel.basic_get(work, auto_ack=False)
            channel.basic_reject(method.delivery_tag, requeue=False)
        # And one message with no x-death, which cannot be moved back.
        channel.basic_publish("", dlq, b"stray")
        wait_for(lambda: api.ok("GET", f"/api/queues/{dlq}")["messages_ready"] == 4,
                 what="dead-lettered messages")
        dead = api.ok("POST", f"/api/queues/{dlq}/get", json={"count": 1})[0]
        death = dead["properties"]["headers"]["x-death"][0]
        assert death["exchange"] == orders and death["routing-keys"] == ["new-order"]

        moved = api.ok("POST", f"/api/queues/{dlq}/move", json={})
        assert moved == {"moved": 3, "skipped": 1}
        assert api.ok("GET", f"/api/queues/{dlq}")["messages_ready"] == 1
        bodies = []
        for _ in range(3):
            method, _props, body = channel.basic_get(work, auto_ack=True)
            assert method is not None
            bodies.append(body)
        assert sorted(bodies) == [b"order-0", b"order-1", b"order-2"]

        # To a named exchange with a routing key: the stray one goes to `work` too.
        moved = api.ok("POST", f"/api/queues/{dlq}/move",
                       json={"exchange": orders, "routing_key": "new-order"})
        assert moved == {"moved": 1, "skipped": 0}
        method, _props, body = channel.basic_get(work, auto_ack=True)
        assert body == b"stray"
        assert api.ok("GET", f"/api/queues/{dlq}")["messages"] == 0
    finally:
        connection.close()
    assert_error(api.post(f"/api/queues/{dlq}/move", {"exchange": "missing"}), 404)
    assert_error(api.post(f"/api/queues/{dlq}/move", {"routing_key": "k"}), 400)
    assert_error(api.post("/api/queues/missing/move", {}), 404)


def test_http_listen_off_serves_no_api(broker_factory):
    broker = broker_factory("--http-listen", "off")
    with pytest.raises(requests.ConnectionError):
        requests.get(broker.http_url + "/api/health", timeout=5)


def test_oversized_publishes_are_400_not_a_crash(broker_factory):
    broker = broker_factory("--amqp-max-message-bytes", "1000")
    api = Api(broker)
    queue = unique_name("big")
    api.ok("POST", "/api/queues", 201, json={"name": queue})
    publish = "/api/exchanges/amq.default/publish"
    assert api.ok("POST", publish, json={"routing_key": queue, "payload": "x" * 1000})["routed"]
    assert_error(api.post(publish, {"routing_key": queue, "payload": "x" * 1001}), 400,
                 reason_contains="largest message body")
    # Far over the request body limit (the largest body in base64 plus 1 MiB).
    assert_error(api.post(publish, {"routing_key": queue, "payload": "x" * (3 << 20)}), 400)
    assert api.ok("GET", f"/api/queues/{queue}")["messages_ready"] == 1
