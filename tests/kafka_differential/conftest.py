"""The differential Kafka suite: every test runs against a real Apache Kafka and against Sluice.

The `kafka` fixture is parametrized over the targets named in SLUICE_KAFKA_TARGETS (a comma list
of `kafka` and `sluice`, default both). Apache Kafka is the reference: each test asserts what
Kafka does, so a test that passes against `[kafka]` and fails against `[sluice]` is a difference
in Sluice.

Kafka runs as one KRaft node (broker and controller in one process) per test session, from the
jars that scripts/test resolves from Maven Central (tests/kafka_differential/reference/pom.xml)
into SLUICE_KAFKA_LIB, in a temporary directory on free ports, formatted with the feature
share.version=1 so that it serves share groups (KIP-932, a preview in Kafka 4.1). As the node is
shared, tests take their topic and group names from `kafka.name()`. Sluice gets a fresh broker
per test from `broker_factory`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import free_port
import differential
from kafka_wire import ERROR_NONE, KafkaWire
from required import missing

ALL_TARGETS = ("kafka", "sluice")
HERE = Path(__file__).resolve().parent
KAFKA_LIB = Path(os.environ.get("SLUICE_KAFKA_LIB", HERE / "reference" / "target" / "lib"))
KAFKA_START_TIMEOUT_S = 90
KAFKA_STOP_TIMEOUT_S = 30
TOOL_TIMEOUT_S = 120
LOG_TAIL_LINES = 40


def selected_targets() -> list[str]:
    return differential.selected_targets("SLUICE_KAFKA_TARGETS", ALL_TARGETS)


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    return str(Path(home) / "bin" / "java") if home else "java"


def class_path() -> str:
    return f"{KAFKA_LIB}/*"


def kafka_lib_present() -> bool:
    return any(KAFKA_LIB.glob("kafka_2.13-*.jar")) and any(KAFKA_LIB.glob("kafka-tools-*.jar"))


def run_java(main_class: str, *args, timeout=TOOL_TIMEOUT_S, stdin_text=None,
             jvm_args=()) -> subprocess.CompletedProcess:
    """One of Kafka's command-line tools (the class behind its bin/ script) from the jars."""
    return subprocess.run(
        [java(), "-Xms64m", "-Xmx512m", "-XX:TieredStopAtLevel=1", *jvm_args,
         f"-Dlog4j2.configurationFile={HERE / 'reference' / 'log4j2-tools.properties'}",
         "-cp", class_path(), main_class, *[str(a) for a in args]],
        input=stdin_text, capture_output=True, text=True, timeout=timeout)


def wait_for_kafka(bootstrap: str, timeout_s: float, alive=lambda: True) -> str | None:
    """Wait until the broker answers Metadata with itself in it; None when it does."""
    deadline = time.monotonic() + timeout_s
    error = "not tried"
    host, port = bootstrap.rsplit(":", 1)
    while time.monotonic() < deadline and alive():
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=5)
            if metadata.brokers:
                return None
            error = "no brokers in Metadata"
        except Exception as exc:  # refused while booting: retry until the deadline
            error = repr(exc)
        time.sleep(0.2)
    return error


class KafkaNode:
    """An Apache Kafka node of our own: KRaft, one process, temporary directory, free ports."""

    def __init__(self, base_dir: Path):
        self.base_dir = base_dir
        self.port = free_port()
        self.controller_port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = base_dir / "server.log"
        self.stdout_path = base_dir / "stdout.log"
        self.config_path = base_dir / "server.properties"
        self.process = None
        self.config_path.write_text("\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={base_dir / 'data'}",
            # One node: every internal topic has one replica. What clients see of them is the
            # same; fewer offsets-topic partitions only make the first group start faster.
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=3",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=3",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            # The share groups' state topic (test_share_groups.py): 3 partitions, not 50, so that
            # the first share group on the node does not wait for 50 to be created and loaded.
            "share.coordinator.state.topic.num.partitions=3",
            # As Sluice's test brokers run (conftest.Broker): a group forms without waiting.
            "group.initial.rebalance.delay.ms=0",
            # Compaction tests (test_compaction.py) wait for the cleaner; Sluice's runs as often.
            "log.cleaner.backoff.ms=100",
            "",
        ]))

    def format_storage(self):
        cluster_id = run_java("kafka.tools.StorageTool", "random-uuid").stdout.strip()
        # Share groups (KIP-932, test_share_groups.py) are a preview feature in Kafka 4.1: the
        # brokers serve ShareGroupHeartbeat, ShareFetch, ShareAcknowledge and the share-group
        # admin APIs only with the feature share.version at 1, which the default metadata
        # version (4.1-IV1) does not bring. Finalized at format time, it changes nothing else.
        result = run_java("kafka.tools.StorageTool", "format", "-t", cluster_id,
                          "-c", self.config_path, "--feature", "share.version=1")
        if result.returncode != 0:
            raise RuntimeError(f"kafka-storage format failed ({result.returncode}): "
                               f"{result.stdout} {result.stderr}")

    def start(self):
        with open(self.stdout_path, "ab") as out:
            self.process = subprocess.Popen(
                [java(), "-Xms256m", "-Xmx1g", "-XX:+UseG1GC",
                 f"-Dlog4j2.configurationFile={HERE / 'reference' / 'log4j2.properties'}",
                 f"-Dkafka.log.file={self.log_path}",
                 "-cp", class_path(), "kafka.Kafka", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.base_dir, start_new_session=True)
        error = wait_for_kafka(self.bootstrap, KAFKA_START_TIMEOUT_S,
                               alive=lambda: self.process.poll() is None)
        if error is not None:
            code = self.process.poll()
            self.kill()
            last_lines = " | ".join(self.log_tail(3).splitlines())
            raise RuntimeError(f"Apache Kafka did not serve {self.bootstrap} (exit code {code}, "
                               f"last error {error}); logs in {self.base_dir}: {last_lines}")

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=KAFKA_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self):
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=KAFKA_STOP_TIMEOUT_S)

    def log_tail(self, lines=LOG_TAIL_LINES) -> str:
        return differential.log_tail([self.stdout_path, self.log_path], lines, "(no Kafka log)")


def node_lifetime(make_node, prefix: str, what: str):
    """Formats and starts a Kafka node in a fresh directory, yields it, then stops it and
    removes the directory (for session fixtures). Missing jars, or a node that does not come
    up, skip with the reason, or fail in CI (`required`)."""
    if not kafka_lib_present():
        missing(f"Apache Kafka's jars are not in {KAFKA_LIB} (scripts/test resolves them with "
                f"Maven from tests/kafka_differential/reference/pom.xml)")
    base_dir = Path(tempfile.mkdtemp(prefix=prefix))
    node = make_node(base_dir)
    try:
        node.format_storage()
        node.start()
    except Exception as exc:
        node.kill()
        missing(f"{what} did not start: {exc}")
    yield node
    node.stop()
    shutil.rmtree(base_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka_node():
    """The session's Apache Kafka node, started on first use."""
    yield from node_lifetime(KafkaNode, "sluice-kafka-", "Apache Kafka")


class KafkaTarget:
    """What a test sees of the broker under test: its address, and clients that are closed
    after the test."""

    kind = "?"
    bootstrap = ""

    def __init__(self):
        self._closers = []
        self._topics = []
        self._admins = {}

    def name(self, prefix: str = "t") -> str:
        """A topic, group or transactional id no other test uses."""
        return f"{prefix}-{uuid.uuid4().hex[:10]}"

    def admin(self, **conf) -> AdminClient:
        """An admin client kept for the whole test: a future outlives no client it came from."""
        key = tuple(sorted(conf.items()))
        if key not in self._admins:
            self._admins[key] = AdminClient({"bootstrap.servers": self.bootstrap, **conf})
        return self._admins[key]

    def producer(self, **conf) -> Producer:
        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 0, **conf})
        self._closers.append(lambda: producer.flush(5))
        return producer

    def consumer(self, **conf) -> Consumer:
        conf = {"bootstrap.servers": self.bootstrap, "auto.offset.reset": "earliest",
                "enable.auto.commit": False, **conf}
        conf.setdefault("group.id", self.name("g"))
        consumer = Consumer(conf)
        self._closers.append(consumer.close)
        return consumer

    def create_topic(self, name: str | None = None, partitions: int = 1,
                     config: dict | None = None) -> str:
        name = name or self.name("topic")
        futures = self.admin().create_topics(
            [NewTopic(name, partitions, 1, config=config or {})], operation_timeout=30)
        futures[name].result(timeout=30)
        self._topics.append(name)
        wait_for_leaders(self, name, partitions)
        return name

    def restart(self, kill: bool = False):
        raise NotImplementedError

    def tool(self, main_class: str, *args, **kw) -> subprocess.CompletedProcess:
        """Kafka's command-line tool `main_class`, pointed at this broker."""
        return run_java(main_class, "--bootstrap-server", self.bootstrap, *args, **kw)

    def cleanup(self):
        for close in reversed(self._closers):
            try:
                close()
            except Exception:  # a client the test already broke or closed: nothing to release
                pass
        self._admins.clear()


def wait_for_leaders(target: KafkaTarget, topic: str, partitions: int, timeout_s: float = 30):
    """Until every partition of `topic` has a leader in Metadata (Kafka answers CreateTopics
    before its partitions are ready to take writes)."""
    deadline = time.monotonic() + timeout_s
    admin = target.admin()
    while time.monotonic() < deadline:
        metadata = admin.list_topics(topic, timeout=5).topics.get(topic)
        if (metadata is not None and metadata.error is None
                and len(metadata.partitions) == partitions
                and all(p.leader >= 0 for p in metadata.partitions.values())):
            return
        time.sleep(0.1)
    raise AssertionError(f"{topic}: partitions without a leader after {timeout_s}s")


def wait_until_partitions_serve(target: KafkaTarget, topic: str, timeout_s: float = 60):
    """Until every partition of `topic` answers ListOffsets without an error."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        metadata = AdminClient({"bootstrap.servers": target.bootstrap}) \
            .list_topics(topic, timeout=5).topics.get(topic)
        if metadata is not None and metadata.error is None and metadata.partitions:
            try:
                with KafkaWire(target.bootstrap) as wire:
                    last = [wire.list_offset(topic, p, -1).error_code
                            for p in sorted(metadata.partitions)]
            except OSError as exc:  # the listener came up and went again: ask once more
                last = exc
            if last and all(code == ERROR_NONE for code in last):
                return
        time.sleep(0.2)
    raise AssertionError(f"{topic}: partitions not serving {timeout_s}s after a restart: {last}")


class ApacheKafkaTarget(KafkaTarget):
    kind = "kafka"

    def __init__(self, node: KafkaNode):
        super().__init__()
        self.node = node
        self.bootstrap = node.bootstrap

    def restart(self, kill: bool = False):
        """Stops the broker (SIGTERM, or SIGKILL with `kill`) and starts it on the same data."""
        if kill:
            self.node.kill()
        else:
            self.node.stop()
        self.node.start()
        # Kafka listens before it leads its partitions again: after a SIGKILL it recovers the
        # logs and waits to be unfenced by its controller, and meanwhile answers
        # NOT_LEADER_OR_FOLLOWER. A client would retry; the tests' raw requests do not.
        listed = AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=30)
        topics = set(self._topics) | {t for t in listed.topics if not t.startswith("__")}
        for topic in sorted(topics):
            wait_until_partitions_serve(self, topic)

    def cleanup(self):
        super().cleanup()
        # The node outlives the test: delete what it created under its unique names.
        if self._topics and self.node.process is not None and self.node.process.poll() is None:
            futures = self.admin().delete_topics(self._topics, operation_timeout=30)
            for future in futures.values():
                try:
                    future.result(timeout=30)
                except Exception:  # deleted by the test itself
                    pass


class SluiceTarget(KafkaTarget):
    kind = "sluice"

    def __init__(self, broker):
        super().__init__()
        self.broker = broker
        self.bootstrap = broker.bootstrap

    def restart(self, kill: bool = False):
        if kill:
            self.broker.kill9()
            self.broker.start()
        else:
            self.broker.restart()


@pytest.fixture(params=selected_targets())
def kafka(request):
    if request.param == "kafka":
        node = request.getfixturevalue("kafka_node")
        request.node._kafka_node = node
        target = ApacheKafkaTarget(node)
    else:
        broker = request.getfixturevalue("broker_factory")("--log-cleaner-backoff-ms", "100")
        target = SluiceTarget(broker)
    yield target
    target.cleanup()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    node = getattr(item, "_kafka_node", None)
    if report.failed and node is not None:
        report.sections.append((f"Apache Kafka log tail ({node.base_dir})", node.log_tail()))
