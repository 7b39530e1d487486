"""Property test of the HTTP API against its own OpenAPI document with schemathesis: every
operation, with generated valid and invalid input (and the stateful phase that chains
operations), never gets a 5xx. Bounded examples keep it under two minutes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from http_client import Api
from librdkafka_client import create_topic, produce_values

# Examples per operation; SLUICE_SCHEMATHESIS_EXAMPLES raises it for a longer hunt.
MAX_EXAMPLES = int(os.environ.get("SLUICE_SCHEMATHESIS_EXAMPLES", "25"))
# Creating topics of thousands of partitions is valid but slow (a directory and fsyncs each):
# the property test keeps generated counts small so it explores the rest of the API instead.
PARTITIONS_MAX_IN_TEST = 8


def bounded_document(document):
    schemas = document["components"]["schemas"]
    schemas["CreateTopicRequest"]["properties"]["partitions"]["maximum"] = PARTITIONS_MAX_IN_TEST
    return document


@pytest.mark.timeout(300)
def test_no_operation_answers_a_server_error(broker_factory, tmp_path):
    broker = broker_factory("--amqp-users", "ops:pw:administrator")
    api = Api(broker)
    # Some data to find: a topic with messages and a group with offsets.
    create_topic(broker.bootstrap, "orders", partitions=2)
    produce_values(broker.bootstrap, "orders", [b"a", b"b", b"c"], partition=0)
    api.ok("POST", "/api/groups/billing/reset-offsets", json={"topic": "orders", "strategy": "earliest"})
    api.ok("POST", "/api/queues", 201, json={"name": "jobs"})

    document = api.ok("GET", "/api/openapi.json", auth=None)
    schema_path = tmp_path / "openapi.json"
    schema_path.write_text(json.dumps(bounded_document(document)))
    cli = Path(sys.executable).with_name("schemathesis")
    report = tmp_path / "junit.xml"
    command = [
        str(cli), "run", str(schema_path), "--url", broker.http_url,
        "--checks", "not_a_server_error", "--max-examples", str(MAX_EXAMPLES),
        "--auth", "guest:guest", "--seed", "20261130", "--generation-database", "none",
        "--request-timeout", "30", "--report", "junit", "--report-junit-path", str(report),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=280,
                            cwd=tmp_path, env={**os.environ, "NO_COLOR": "1"})
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"schemathesis found failures:\n{output[-8000:]}"
    assert "Test cases:" in output and " passed" in output, output[-2000:]
    lines = output.splitlines()
    cases = lines[lines.index(next(l for l in lines if "Test cases:" in l)) + 1].strip()
    print(f"schemathesis: {cases}")  # shown with -s / -rP
    assert broker.running(), "the broker survived"
