"""SASL/SCRAM over TLS with the Java and Go clients (issue 11): the Apache Kafka Java client
(tests/clients/java, dev.sluice.probe.KafkaClientProbe) and franz-go (tests/clients/go,
kgoprobe) create a topic, produce and consume in a group on a SASL_SSL listener with
SCRAM-SHA-256 and SCRAM-SHA-512, and are refused with a wrong password or a CA that did not sign
the broker's certificate. The Java client fails each send and poll with the authentication error;
franz-go fails an admin request with it at once, but its producer retries the connection until
the records' deadline, so there the refusal shows as no record acknowledged (and none written).

The probes are built by scripts/test (by hand: `mvn -B -q -f tests/clients/java/pom.xml package`
and `cd tests/clients/go && go build -o target/kgoprobe .`). Security settings reach them as
`--prop CONFIG=VALUE` before the Java probe's bootstrap, and as kgoprobe's -sasl-mechanism,
-sasl-user, -sasl-password and -tls-ca flags. A probe that is not built, or a missing `java`,
fails the test: a security suite that skips proves nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import free_port
from tls_certs import add_user, certs, tls_flags, user_broker_factory  # noqa: F401

CLIENTS = Path(__file__).resolve().parent / "clients"
JAVA_DIR = CLIENTS / "java"
JAVA_CLASSES = JAVA_DIR / "target" / "classes"
JAVA_LIB = JAVA_DIR / "target" / "lib"
JAVA_MAIN = "dev.sluice.probe.KafkaClientProbe"
KGOPROBE = Path(os.environ.get("SLUICE_KGOPROBE", CLIENTS / "go" / "target" / "kgoprobe"))

SCRAM = ("SCRAM-SHA-256", "SCRAM-SHA-512")
ALICE, ALICE_PW = "alice", "alice-pw"
COUNT = 5
JAVA_TIMEOUT_S = 120
GO_TIMEOUT_S = 60


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def start_broker(user_broker_factory, certs):
    """A broker whose only Kafka listener is SASL_SSL (SCRAM-SHA-256 and -512), with ALICE."""
    port = free_port()
    return user_broker_factory("--kafka-listen", f"SASL_SSL://127.0.0.1:{port}",
                               *tls_flags(certs),
                               "--sasl-mechanisms", "SCRAM-SHA-256,SCRAM-SHA-512",
                               prepare=lambda data_dir: add_user(data_dir, ALICE, ALICE_PW))


def json_lines(stdout: str, stderr: str) -> list[dict]:
    lines = []
    for text in stdout.splitlines():
        if not text.strip():
            continue
        try:
            lines.append(json.loads(text))
        except ValueError:
            raise AssertionError(f"a probe printed a line that is not JSON: {text!r}\n"
                                 f"stderr: {stderr[-3000:]}") from None
    return lines


# -- the Java client --------------------------------------------------------------------------

def java() -> str:
    home = os.environ.get("JAVA_HOME")
    binary = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if binary is None or not os.access(binary, os.X_OK):
        pytest.fail("`java` is required for the Java client probe (JAVA_HOME or PATH)",
                    pytrace=False)
    return binary


def java_props(mechanism: str, password: str, ca: Path) -> dict:
    module = "org.apache.kafka.common.security.scram.ScramLoginModule"
    return {"security.protocol": "SASL_SSL", "sasl.mechanism": mechanism,
            "sasl.jaas.config":
                f'{module} required username="{ALICE}" password="{password}";',
            "ssl.truststore.type": "PEM", "ssl.truststore.location": str(ca)}


def java_probe(broker, props: dict, *steps: list[str]) -> tuple[int, list[dict], str]:
    """Runs the steps in one JVM with `--prop` per entry of `props`: (exit status, JSON lines,
    stderr)."""
    if not (JAVA_CLASSES / "dev" / "sluice" / "probe" / "KafkaClientProbe.class").exists() \
            or not any(JAVA_LIB.glob("kafka-clients-*.jar")):
        pytest.fail(f"the Java client probe is not built in {JAVA_DIR}/target (build it with "
                    f"`mvn -B -q -f tests/clients/java/pom.xml package`)", pytrace=False)
    argv = []
    for words in steps:
        if argv:
            argv.append(";")
        argv.extend(words)
    options = [word for key, value in props.items() for word in ("--prop", f"{key}={value}")]
    result = subprocess.run(
        [java(), "-Xms32m", "-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC",
         "-cp", f"{JAVA_CLASSES}:{JAVA_LIB}/*", JAVA_MAIN, *options, broker.bootstrap, *argv],
        capture_output=True, text=True, timeout=JAVA_TIMEOUT_S, stdin=subprocess.DEVNULL)
    return result.returncode, json_lines(result.stdout, result.stderr), result.stderr


def java_ok(broker, props: dict, *steps: list[str]) -> list[dict]:
    status, lines, stderr = java_probe(broker, props, *steps)
    failed = [line for line in lines if "fatal" in line or line.get("error")]
    assert status == 0 and not failed, \
        f"the Java probe failed (exit {status}): {failed}\nstderr: {stderr[-3000:]}"
    return lines


def only(lines: list[dict], step: str) -> list[dict]:
    return [line for line in lines if line.get("step") == step]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mechanism", SCRAM)
def test_java_client_scram_over_tls_round_trip(user_broker_factory, certs, mechanism):
    broker = start_broker(user_broker_factory, certs)
    topic, group = unique("java-scram"), unique("g")
    lines = java_ok(broker, java_props(mechanism, ALICE_PW, certs.ca),
                    ["create-topic", f"name={topic}", "partitions=1"],
                    ["produce", f"topic={topic}", f"count={COUNT}", "value-prefix=secret-"],
                    ["consume", f"topic={topic}", f"group={group}", f"count={COUNT}"])
    assert [(p["partition"], p["offset"]) for p in only(lines, "produce")] == \
        [(0, i) for i in range(COUNT)], lines
    assert [(r["offset"], r["key"], r["value"]) for r in only(lines, "record")] == \
        [(i, f"key-{i}", f"secret-{i}") for i in range(COUNT)], lines
    # The group's offsets were committed through the coordinator on the same secured listener.
    [commit] = only(lines, "commit")
    assert commit["positions"] == [{"topic": topic, "partition": 0, "offset": COUNT}], lines


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mechanism", SCRAM)
def test_java_client_wrong_password_or_untrusted_ca_is_refused(user_broker_factory, certs,
                                                               mechanism):
    broker = start_broker(user_broker_factory, certs)
    topic = unique("java-refused")
    java_ok(broker, java_props(mechanism, ALICE_PW, certs.ca),
            ["create-topic", f"name={topic}", "partitions=1"])

    for props, what in ((java_props(mechanism, "not-alice-pw", certs.ca), "SaslAuthentication"),
                        (java_props(mechanism, ALICE_PW, certs.untrusted_ca), "SslAuthentication")):
        status, lines, stderr = java_probe(
            broker, props, ["produce", f"topic={topic}", "count=3"],
            ["consume", f"topic={topic}", f"group={unique('g')}", "count=1",
             "timeout-ms=15000", "commit=false"])
        produced = only(lines, "produce")
        # Each send failed with the authentication error, and the consumer's poll raised it.
        assert len(produced) == 3 and all((p.get("error") or "").startswith(what)
                                          for p in produced), (what, status, lines, stderr[-2000:])
        assert any((line.get("error") or "").startswith(what)
                   for line in only(lines, "consume")), (what, lines)
        assert not only(lines, "record"), lines
        if what == "SaslAuthentication":
            assert {p.get("code") for p in produced} == {"SASL_AUTHENTICATION_FAILED"}, produced

    # Nothing was written by the refused producers.
    lines = java_ok(broker, java_props(mechanism, ALICE_PW, certs.ca),
                    ["list-offsets", f"topic={topic}", "spec=latest"])
    assert [line["offset"] for line in only(lines, "list-offsets")] == [0], lines


# -- the Go client (franz-go) -----------------------------------------------------------------

def go_security(mechanism: str, password: str, ca: Path) -> list[str]:
    return ["-sasl-mechanism", mechanism, "-sasl-user", ALICE, "-sasl-password", password,
            "-tls-ca", str(ca)]


def kgoprobe(broker, command: str, *args, records=None,
             timeout: str = "30s") -> tuple[int, list[dict], str]:
    """Runs `kgoprobe command`: (exit status, JSON lines, stderr). `records` go to stdin."""
    if not os.access(KGOPROBE, os.X_OK):
        pytest.fail(f"the franz-go probe is not built at {KGOPROBE} "
                    f"(cd tests/clients/go && go build -o target/kgoprobe .)", pytrace=False)
    stdin = "".join(json.dumps(r) + "\n" for r in records) if records is not None else ""
    result = subprocess.run(
        [str(KGOPROBE), command, "-brokers", broker.bootstrap, "-timeout", timeout,
         *map(str, args)],
        input=stdin, capture_output=True, text=True, timeout=GO_TIMEOUT_S)
    return result.returncode, json_lines(result.stdout, result.stderr), result.stderr


def kgoprobe_ok(broker, command: str, *args, records=None) -> list[dict]:
    status, lines, stderr = kgoprobe(broker, command, *args, records=records)
    fatal = [line for line in lines if "fatal" in line]
    assert status == 0 and not fatal, \
        f"kgoprobe {command} exited {status}: {fatal} {stderr[-2000:]}"
    return lines


@pytest.mark.parametrize("mechanism", SCRAM)
def test_go_client_scram_over_tls_round_trip(user_broker_factory, certs, mechanism):
    broker = start_broker(user_broker_factory, certs)
    security = go_security(mechanism, ALICE_PW, certs.ca)
    topic, group = unique("go-scram"), unique("g")
    [created] = kgoprobe_ok(broker, "create-topics", *security, "-partitions", 1,
                            "-replication-factor", 1, topic)
    assert (created["topic"], created["error"]) == (topic, None), created

    sent = [{"key": f"key-{i}", "value": f"secret-{i}", "headers": [["i", str(i)]]}
            for i in range(COUNT)]
    results = kgoprobe_ok(broker, "produce", *security, "-topic", topic, records=sent)
    assert [(r["error"], r["partition"], r["offset"]) for r in results] == \
        [(None, 0, i) for i in range(COUNT)], results

    lines = kgoprobe_ok(broker, "consume", *security, "-topic", topic, "-count", COUNT,
                        "-group", group)
    records = [line for line in lines if "offset" in line]
    assert [(r["offset"], r["key"], r["value"], r["headers"]) for r in records] == \
        [(i, s["key"], s["value"], s["headers"]) for i, s in enumerate(sent)], lines
    assert {"committed": True} in lines, lines

    [committed] = kgoprobe_ok(broker, "fetch-offsets", *security, "-group", group)
    assert (committed["topic"], committed["offset"], committed["error"]) == \
        (topic, COUNT, None), committed


def kgoprobe_fatal(broker, command: str, *args) -> str:
    """Runs `kgoprobe command`, which must fail: its fatal message."""
    status, lines, stderr = kgoprobe(broker, command, *args, timeout="15s")
    fatal = [line["fatal"] for line in lines if "fatal" in line]
    assert status != 0 and len(fatal) == 1, (status, lines, stderr[-2000:])
    return fatal[0]


@pytest.mark.parametrize("mechanism", SCRAM)
def test_go_client_wrong_password_or_untrusted_ca_is_refused(user_broker_factory, certs,
                                                             mechanism):
    broker = start_broker(user_broker_factory, certs)
    good = go_security(mechanism, ALICE_PW, certs.ca)
    wrong_password = go_security(mechanism, "not-alice-pw", certs.ca)
    untrusted_ca = go_security(mechanism, ALICE_PW, certs.untrusted_ca)
    topic = unique("go-refused")

    # franz-go reports a failed authentication to a request it was asked to make (an admin
    # request) at once ...
    fatal = kgoprobe_fatal(broker, "create-topics", *wrong_password, "-partitions", 1,
                           "-replication-factor", 1, topic)
    assert "SASL_AUTHENTICATION_FAILED" in fatal, fatal
    fatal = kgoprobe_fatal(broker, "metadata", *untrusted_ca)
    assert "certificate signed by unknown authority" in fatal, fatal

    [created] = kgoprobe_ok(broker, "create-topics", *good, "-partitions", 1,
                            "-replication-factor", 1, topic)
    assert created["error"] is None, created
    # ... while its producer keeps retrying the connection until the records' deadline: no
    # record is acknowledged.
    records = [{"key": "k", "value": f"refused-{i}"} for i in range(3)]
    for security in (wrong_password, untrusted_ca):
        status, lines, stderr = kgoprobe(broker, "produce", *security, "-topic", topic,
                                         records=records, timeout="4s")
        assert status == 0 and len(lines) == len(records), (status, lines, stderr[-2000:])
        assert all(line["error"] is not None and line["offset"] is None for line in lines), lines

    # Nothing was written by the refused producers.
    offsets = kgoprobe_ok(broker, "list-offsets", *good, "-mode", "end", topic)
    assert [(o["partition"], o["offset"], o["error"]) for o in offsets] == [(0, 0, None)], offsets
