"""The differential AMQP 0-9-1 suite: every test runs against a real RabbitMQ and against Sluice.

The `amqp` fixture is parametrized over the targets named in SLUICE_AMQP_TARGETS (a comma list of
`rabbitmq` and `sluice`, default both). RabbitMQ is the reference: each test asserts what RabbitMQ
does, so a test that passes against `[rabbitmq]` and fails against `[sluice]` is a difference in
Sluice.

RabbitMQ runs as one node per test session, started from the Debian package's scripts in a
temporary directory (own node name, ports, data, logs, cookie, and the management plugin alone
on a port of its own), never as the system service. Users, permissions and vhosts are made on
both brokers through the same management HTTP API (`AmqpTarget.api`): on RabbitMQ that is much
faster than `rabbitmqctl`, which boots an Erlang VM per call. As the node is shared, tests take their queue and exchange names from
`amqp.name()`: unique, and deleted again after the test. Sluice gets a fresh broker per test from
`broker_factory`.
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

import pika
import pytest
import requests

import differential
from required import missing

ALL_TARGETS = ("rabbitmq", "sluice")
RABBITMQ_SCRIPTS = Path(os.environ.get("RABBITMQ_SCRIPTS_DIR", "/usr/lib/rabbitmq/bin"))
RABBITMQ_START_TIMEOUT_S = 60
RABBITMQ_STOP_TIMEOUT_S = 30
LOG_TAIL_LINES = 40
HTTP_TIMEOUT_S = 10


def selected_targets() -> list[str]:
    return differential.selected_targets("SLUICE_AMQP_TARGETS", ALL_TARGETS)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_amqp(host: str, port: int, timeout_s: float, alive=lambda: True) -> str | None:
    """Wait until a guest login succeeds; None when it does, else the last error."""
    deadline = time.monotonic() + timeout_s
    error = "not tried"
    while time.monotonic() < deadline and alive():
        try:
            # A plain TCP probe first: pika logs every refused attempt at ERROR level.
            socket.create_connection((host, port), timeout=1).close()
            pika.BlockingConnection(pika.ConnectionParameters(
                host, port, credentials=pika.PlainCredentials("guest", "guest"),
                connection_attempts=1, socket_timeout=2, stack_timeout=5)).close()
            return None
        except Exception as exc:  # refused while booting, or an AMQP error: retry until deadline
            error = repr(exc)
            time.sleep(0.2)
    return error


class RabbitMQNode:
    """A RabbitMQ node of our own: temporary directory, free ports, fixed cookie, and only the
    management plugin (its HTTP API, on loopback)."""

    def __init__(self, base_dir: Path):
        self.base_dir = base_dir
        self.node_name = f"sluice-test-{os.getpid()}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.http_port = free_port()
        self.http_url = f"http://127.0.0.1:{self.http_port}"
        self.log_path = base_dir / "log" / "rabbit.log"
        self.stdout_path = base_dir / "stdout.log"
        self.process = None
        home = base_dir / "home"
        home.mkdir(parents=True)
        # rabbitmqctl and the node find each other through the Erlang cookie in $HOME.
        cookie = home / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex)
        cookie.chmod(0o400)
        (base_dir / "enabled_plugins").write_text("[rabbitmq_management].\n")
        (base_dir / "rabbitmq.conf").write_text(
            "loopback_users.guest = true\n"  # the default, stated: Sluice does the same
            "management.tcp.ip = 127.0.0.1\n"
            f"management.tcp.port = {self.http_port}\n"
            "log.console = false\n"
            f"log.file = {self.log_path}\n"
            "log.file.level = info\n")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")},
            "HOME": str(home),
            "RABBITMQ_CONF_ENV_FILE": str(base_dir / "rabbitmq-env.conf"),  # absent: skip /etc
            "RABBITMQ_NODENAME": self.node_name,
            "RABBITMQ_USE_LONGNAME": "false",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(base_dir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base_dir / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base_dir / "enabled_plugins"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(base_dir / "plugins-expand"),
            "RABBITMQ_MNESIA_BASE": str(base_dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base_dir / "log"),
            "RABBITMQ_PID_FILE": str(base_dir / "rabbitmq.pid"),
            # Run the Erlang VM in the foreground as our direct child with its stdin a pipe we
            # hold: if pytest dies, stdin closes and the VM halts, so no node outlives the run.
            "RABBITMQ_ALLOW_INPUT": "true",
        }

    def start(self):
        with open(self.stdout_path, "ab") as out:
            self.process = subprocess.Popen(
                [str(RABBITMQ_SCRIPTS / "rabbitmq-server")], stdin=subprocess.PIPE, stdout=out,
                stderr=subprocess.STDOUT, env=self.env, cwd=self.base_dir,
                start_new_session=True)
        error = wait_for_amqp("127.0.0.1", self.port, RABBITMQ_START_TIMEOUT_S,
                              alive=lambda: self.process.poll() is None)
        if error is None:
            error = self.wait_for_http(RABBITMQ_START_TIMEOUT_S)
        if error is not None:
            code = self.process.poll()
            self.kill()
            # One line: it becomes the skip reason of every rabbitmq test.
            last_lines = " | ".join(self.log_tail(3).splitlines())
            raise RuntimeError(f"node {self.node_name} did not accept AMQP on port {self.port} "
                               f"(exit code {code}, last error {error}); logs in "
                               f"{self.base_dir}: {last_lines}")

    def wait_for_http(self, timeout_s: float) -> str | None:
        """Wait until the management API answers guest; None when it does, else the error."""
        deadline = time.monotonic() + timeout_s
        error = "not tried"
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                response = requests.get(f"{self.http_url}/api/overview", auth=("guest", "guest"),
                                        timeout=2)
                if response.status_code == 200:
                    return None
                error = f"HTTP {response.status_code}"
            except requests.RequestException as exc:
                error = repr(exc)
            time.sleep(0.2)
        return f"management API at {self.http_url}: {error}"

    def ctl(self, *args, check=True) -> subprocess.CompletedProcess:
        return subprocess.run([str(RABBITMQ_SCRIPTS / "rabbitmqctl"), "-n", self.node_name,
                               *args], env=self.env, cwd=self.base_dir, capture_output=True,
                              text=True, timeout=RABBITMQ_STOP_TIMEOUT_S, check=check)

    def stop(self):
        """Clean stop through rabbitmqctl; SIGKILL to our process group if that fails."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.ctl("stop", check=False)
            self.process.wait(timeout=RABBITMQ_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process.stdin.close()

    def kill(self):
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=RABBITMQ_STOP_TIMEOUT_S)
            self.process.stdin.close()

    def restart(self):
        self.stop()
        self.start()

    def log_tail(self, lines=LOG_TAIL_LINES) -> str:
        return differential.log_tail([self.stdout_path, self.log_path], lines, "(no RabbitMQ log)")


@pytest.fixture(scope="session")
def rabbitmq_node():
    """The session's RabbitMQ node, started on first use. When the package is missing or the node
    does not come up, every rabbitmq test skips with the reason, or fails in CI (`required`)."""
    if not (RABBITMQ_SCRIPTS / "rabbitmq-server").exists():
        missing(f"rabbitmq-server is not installed ({RABBITMQ_SCRIPTS}/rabbitmq-server "
                    f"missing; Debian: apt-get install rabbitmq-server)")
    base_dir = Path(tempfile.mkdtemp(prefix="sluice-rabbitmq-"))
    node = RabbitMQNode(base_dir)
    try:
        node.start()
    except Exception as exc:
        node.kill()
        missing(f"RabbitMQ node did not start: {exc}")
    yield node
    node.stop()
    shutil.rmtree(base_dir, ignore_errors=True)


class AmqpTarget:
    """What a test sees of the broker under test."""

    kind = "?"
    host = "127.0.0.1"
    port = 0

    def __init__(self):
        self._connections = []
        self._names = []

    @property
    def http_url(self) -> str:
        """The broker's management HTTP API (RabbitMQ's, or Sluice's which follows it)."""
        raise NotImplementedError

    def api(self, method: str, path: str, body=None, ok=(200, 201, 204)) -> requests.Response:
        """`method` on `/api/{path}` as guest (an administrator on loopback on both brokers);
        a status outside `ok` fails the test."""
        response = requests.request(method, f"{self.http_url}/api/{path}",
                                    auth=("guest", "guest"), json=body, timeout=HTTP_TIMEOUT_S)
        assert response.status_code in ok, (method, path, response.status_code, response.text)
        return response

    def params(self, **kw) -> pika.ConnectionParameters:
        kw.setdefault("credentials", pika.PlainCredentials("guest", "guest"))
        kw.setdefault("connection_attempts", 1)
        kw.setdefault("socket_timeout", 5)
        kw.setdefault("stack_timeout", 10)
        kw.setdefault("blocked_connection_timeout", 10)
        return pika.ConnectionParameters(self.host, self.port, **kw)

    def connect(self, **kw) -> pika.BlockingConnection:
        connection = pika.BlockingConnection(self.params(**kw))
        self._connections.append(connection)
        return connection

    def name(self, prefix: str = "t") -> str:
        """A queue or exchange name no other test uses; deleted after the test."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self._names.append(name)
        return name

    def restart(self):
        raise NotImplementedError

    def add_user(self, user: str, password: str):
        raise NotImplementedError

    def cleanup(self):
        for connection in self._connections:
            if connection.is_open:
                try:
                    connection.close()
                except Exception:  # already broken by the test: nothing to release
                    pass


class RabbitMQTarget(AmqpTarget):
    kind = "rabbitmq"

    def __init__(self, node: RabbitMQNode):
        super().__init__()
        self.node = node
        self.port = node.port
        self._users = []

    @property
    def http_url(self) -> str:
        return self.node.http_url

    def restart(self):
        self.node.restart()

    def add_user(self, user: str, password: str):
        self.api("PUT", f"users/{user}", {"password": password, "tags": ""})
        self.api("PUT", f"permissions/%2F/{user}",
                 {"configure": ".*", "write": ".*", "read": ".*"})
        self._users.append(user)

    def cleanup(self):
        super().cleanup()
        # The node outlives the test: delete whatever it declared under its unique names.
        if self.node.process is None or self.node.process.poll() is not None:
            return
        if self._names:
            with pika.BlockingConnection(self.params()) as connection:
                for name in self._names:
                    channel = connection.channel()
                    channel.queue_delete(name)
                    channel.exchange_delete(name)
                    channel.close()
        for user in self._users:
            self.api("DELETE", f"users/{user}", ok=(204, 404))


class SluiceTarget(AmqpTarget):
    kind = "sluice"

    def __init__(self, broker):
        super().__init__()
        self.broker = broker
        self.port = broker.amqp_port

    @property
    def http_url(self) -> str:
        return self.broker.http_url

    def wait_until_serving(self):
        error = wait_for_amqp(self.host, self.port, 30, alive=self.broker.running)
        if error is not None:
            pytest.fail(f"sluice does not serve AMQP on port {self.port}: {error}\n"
                        f"{self.broker.log_tail()}")

    def restart(self):
        self.broker.restart()
        self.wait_until_serving()

    def kill9_and_start(self):
        self.broker.kill9()
        self.broker.start()
        self.wait_until_serving()

    def add_user(self, user: str, password: str):
        # Sluice takes its users from the command line: restart with one more.
        args = self.broker.extra_args
        if "--amqp-users" in args:
            index = args.index("--amqp-users") + 1
            args[index] += f",{user}:{password}"
        else:
            args += ["--amqp-users", f"{user}:{password}"]
        self.restart()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "only(target): a one-sided test (a trigger or a check only one broker has); "
        "it runs against that target alone instead of skipping on the other")


def pytest_collection_modifyitems(config, items):
    differential.deselect_one_sided(config, items, "only", "amqp")


@pytest.fixture(params=selected_targets())
def amqp(request):
    if request.param == "rabbitmq":
        node = request.getfixturevalue("rabbitmq_node")
        request.node._rabbitmq_node = node
        target = RabbitMQTarget(node)
    else:
        broker = request.getfixturevalue("broker_factory")()
        target = SluiceTarget(broker)
        target.wait_until_serving()
    yield target
    target.cleanup()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    node = getattr(item, "_rabbitmq_node", None)
    if report.failed and node is not None:
        report.sections.append((f"RabbitMQ node {node.node_name} log tail", node.log_tail()))
