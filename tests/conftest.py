"""Start the real `sluice` binary for integration tests.

`broker` is a broker on a free port with a fresh data directory; `broker_factory(*flags)` starts
more, with extra `sluice serve` flags. Each broker logs to a file under the test's tmp_path, whose
tail is attached to the report of a failing test, and is always killed at teardown.
"""

import ctypes
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 30
SHUTDOWN_TIMEOUT_S = 20
LOG_TAIL_LINES = 60
# Lines a dying Rust process leaves in its stderr.
FATAL_MARKERS = ("memory allocation of", "fatal runtime error", "Aborted", "SIGSEGV")


def sluice_bin() -> Path:
    path = Path(os.environ.get("SLUICE_BIN", REPO_ROOT / "target" / "release" / "sluice"))
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


# Ports free_port handed out: a port is free until its process binds it, so two asked for
# before either is bound could otherwise be the same (seen in CI: a node's cluster and Kafka
# listeners on one port).
_ports_given = set()


def free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port


def first_listener_port(listeners: str) -> int:
    """The port of the first listener of a --kafka-listen value: `PROTO://HOST:PORT` or
    `HOST:PORT` entries, comma-separated (HOST may be a bracketed IPv6 address)."""
    first = listeners.split(",")[0].strip()
    address = first.split("://", 1)[1] if "://" in first else first
    return int(address.rsplit(":", 1)[1])


def start_static_cluster(broker_factory, size=3):
    """`size` nodes on 127.0.0.1 started with --peers (RF 3 by default); (nodes, their
    cluster ports), the ports for a later node's --join."""
    cluster_ports = [free_port() for _ in range(size)]
    peers = ",".join(f"{i + 1}@127.0.0.1:{port}" for i, port in enumerate(cluster_ports))
    nodes = [broker_factory("--node-id", i + 1, "--cluster-listen", f"127.0.0.1:{port}",
                            "--peers", peers, "--default-replication-factor", 3)
             for i, port in enumerate(cluster_ports)]
    return nodes, cluster_ports


try:
    # Resolved here, not in the child: after fork only this one call runs (no dlopen, no locks).
    _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent():
    # If pytest itself is killed (hard timeout, ^C twice), take the broker down with it rather
    # than leave it holding a port. PR_SET_PDEATHSIG = 1. It fires when the thread that forked
    # exits, so brokers are started from the test's main thread only.
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)


class Broker:
    """One `sluice serve` process; keeps its port and data directory across restarts."""

    def __init__(self, data_dir: Path, log_path: Path, extra_args=()):
        self.data_dir = data_dir
        self.log_path = log_path
        self.extra_args = [str(a) for a in extra_args]
        # A test that passes --kafka-listen names its own listeners (several, with security
        # protocols): `port` is the first one's, which startup waits for.
        listeners = self.arg_value("--kafka-listen")
        self.port = first_listener_port(listeners) if listeners is not None else free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        # Every broker gets its own AMQP port too, so that test brokers never race for the
        # default 5672 (or for each other's ports) unless a test picks the listener itself.
        self.amqp_port = free_port()
        # And its own HTTP API port (the default 8080 would be shared by every test broker).
        self.http_port = free_port()
        self.http_url = f"http://127.0.0.1:{self.http_port}"
        self.process = None
        self.starts = 0

    def arg_value(self, flag):
        """The value given to `flag` in extra_args (the last one), or None."""
        values = [self.extra_args[i + 1] for i, arg in enumerate(self.extra_args[:-1])
                  if arg == flag]
        return values[-1] if values else None

    @property
    def pid(self):
        return self.process.pid if self.process else None

    def command(self):
        args = [
            str(sluice_bin()),
            "serve",
            "--data-dir", str(self.data_dir),
        ]
        if "--kafka-listen" not in self.extra_args:
            args += ["--kafka-listen", self.bootstrap]
        if "--group-initial-rebalance-delay-ms" not in self.extra_args:
            args += ["--group-initial-rebalance-delay-ms", "0"]
        if "--amqp-listen" not in self.extra_args:
            args += ["--amqp-listen", f"127.0.0.1:{self.amqp_port}"]
        if "--http-listen" not in self.extra_args:
            args += ["--http-listen", f"127.0.0.1:{self.http_port}"]
        return args + self.extra_args

    def start(self):
        assert not self.running(), "broker already running"
        binary = sluice_bin()
        if not binary.exists():
            pytest.fail(f"sluice binary not found at {binary}: build it (cargo build --release "
                        f"-p sluice-server) or point SLUICE_BIN at it")
        # The broker reads SLUICE_<FLAG> variables; never let the caller's environment (for
        # example SLUICE_BIN itself, or a developer's SLUICE_DATA_DIR) change what a test runs.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        env.setdefault("NO_COLOR", "1")  # plain log lines in the captured log file
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n---- start #{self.starts}: {' '.join(self.command())}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                cwd=self.data_dir.parent, preexec_fn=_die_with_parent)
        self.wait_until_listening()
        return self

    def wait_until_listening(self):
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                pytest.fail(f"sluice exited with {code} during startup:\n{self.log_tail()}")
            try:
                # The HTTP API binds after the Kafka listener: wait for it too when it is ours,
                # or a test could call the API before it listens.
                for port in self.listening_ports():
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        pass
                return
            except OSError:
                time.sleep(0.05)
        self.kill9()
        pytest.fail(f"sluice did not accept connections on {self.bootstrap} within "
                    f"{STARTUP_TIMEOUT_S}s:\n{self.log_tail()}")

    def listening_ports(self):
        ports = [self.port]
        if "--http-listen" not in self.extra_args:
            ports.append(self.http_port)
        return ports

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self) -> int:
        """SIGTERM and wait: a clean shutdown must finish in time and exit 0."""
        assert self.running(), "broker is not running"
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill9()
            pytest.fail(f"sluice did not exit within {SHUTDOWN_TIMEOUT_S}s of SIGTERM:\n"
                        f"{self.log_tail()}")
        assert code == 0, f"sluice exited with {code} after SIGTERM:\n{self.log_tail()}"
        return code

    def kill9(self):
        if self.running():
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=SHUTDOWN_TIMEOUT_S)

    def restart(self):
        self.terminate()
        return self.start()

    def memory_bytes(self, field: str = "VmRSS") -> int:
        """A memory figure of the broker process from /proc (VmRSS, VmPeak, VmHWM, ...)."""
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(field)

    def log_tail(self, lines=LOG_TAIL_LINES) -> str:
        """The log's last lines, preceded by its first panics and errors (which a backtrace or
        a chatty shutdown would push out of the tail)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no broker log)"
        all_lines = text.splitlines()
        notable = []
        for i, line in enumerate(all_lines):
            if "panicked at" in line:  # the panic message is on the next line
                notable.append(line + " " + (all_lines[i + 1] if i + 1 < len(all_lines) else ""))
            elif " ERROR " in line or any(m in line for m in FATAL_MARKERS):
                notable.append(line)
        tail = "\n".join(all_lines[-lines:])
        if not notable:
            return tail
        return ("panics and errors (first 10):\n" + "\n".join(notable[:10])
                + f"\n\nlast {lines} lines:\n" + tail)


@pytest.fixture
def broker_factory(tmp_path, request):
    brokers = []

    def start(*extra_args) -> Broker:
        index = len(brokers)
        data_dir = tmp_path / f"broker{index}" / "data"
        data_dir.mkdir(parents=True)
        broker = Broker(data_dir, tmp_path / f"broker{index}" / "sluice.log", extra_args)
        brokers.append(broker)
        request.node._sluice_brokers = brokers
        return broker.start()

    yield start
    for broker in brokers:
        broker.kill9()


@pytest.fixture
def broker(broker_factory) -> Broker:
    return broker_factory()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for index, broker in enumerate(getattr(item, "_sluice_brokers", [])):
            report.sections.append(
                (f"sluice broker{index} log tail ({broker.log_path})", broker.log_tail()))


def pytest_collection_modifyitems(config, items):
    if os.environ.get("SLUICE_TEST_FAST") == "1":
        skip = pytest.mark.skip(reason="SLUICE_TEST_FAST=1")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)
