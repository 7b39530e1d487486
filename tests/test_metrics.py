"""The server's observability that needs no HTTP endpoint: `--log-format json` (flag, or
`log_format` in the TOML config) writes every log line as one JSON object.

The Prometheus scrape tests live in metrics_scrape.py until `--http-listen` serves GET /metrics
(see that file)."""

import json
import time

SERVING_TIMEOUT_S = 10


def json_log_lines(broker):
    """The broker's log lines as parsed JSON objects; fails on a line that is not JSON. The
    lines conftest writes itself (`---- start #n: ...`) are left out."""
    objects = []
    for line in broker.log_path.read_text().splitlines():
        if not line.strip() or line.startswith("---- start #"):
            continue
        try:
            objects.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise AssertionError(f"log line is not JSON ({error}): {line!r}") from None
    return objects


def wait_for_serving_line(broker):
    deadline = time.monotonic() + SERVING_TIMEOUT_S
    while time.monotonic() < deadline:
        for entry in json_log_lines(broker):
            if entry.get("fields", {}).get("message") == "sluice is serving":
                return entry
        time.sleep(0.1)
    raise AssertionError(f"no 'sluice is serving' line:\n{broker.log_tail()}")


def assert_json_serving_line(broker):
    entry = wait_for_serving_line(broker)
    assert entry["level"] == "INFO"
    assert entry["target"] == "sluice"
    assert entry["fields"]["kafka"] == broker.bootstrap
    assert "timestamp" in entry


def test_log_format_json_writes_one_json_object_per_line(broker_factory):
    broker = broker_factory("--log-format", "json")
    assert_json_serving_line(broker)
    broker.terminate()
    # Shutdown lines too: every line the process wrote is JSON.
    messages = [e.get("fields", {}).get("message", "") for e in json_log_lines(broker)]
    assert any("SIGTERM" in m for m in messages), messages


def test_log_format_from_the_config_file(broker_factory, tmp_path):
    config = tmp_path / "sluice.toml"
    config.write_text('log_format = "json"\n')
    broker = broker_factory("--config", config)
    assert_json_serving_line(broker)


def test_log_format_text_is_the_default(broker):
    deadline = time.monotonic() + SERVING_TIMEOUT_S
    while "sluice is serving" not in broker.log_path.read_text():
        assert time.monotonic() < deadline, broker.log_tail()
        time.sleep(0.1)
    line = next(l for l in broker.log_path.read_text().splitlines() if "sluice is serving" in l)
    assert not line.lstrip().startswith("{"), line
    assert "INFO" in line
