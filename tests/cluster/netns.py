"""Sluice nodes in network namespaces: one namespace per node, each with a veth pair to a bridge
in the root namespace, so clients in the root namespace reach node N at 10.77.X.N while faults
cut the network of one node or of a pair of nodes without touching the others.

Layout of one run (X is a free /24, picked under a lock so concurrent runs never share one):

    root namespace: bridge sb<pid><k> at 10.77.X.254/24, host ends sv<pid><k><n> of the veths
    namespace sluice-<pid><k>-<n>: lo, eth0 at 10.77.X.<n>/24, nft table inet sluice_nemesis

`<pid>` is the creating process and `<k>` a letter per network it made, so names are unique per
run, and a later run can tell a crashed run's leftovers (its pid is gone) from a live run's.

Faults: `isolate(n)` takes node n's link down (nobody reaches it, clients included);
`cut(a, b)` drops the packets between a and b with nft rules inside both namespaces (clients
still reach both: this is how the leader is cut from the majority while it still hears its
clients); `partition(*groups)` cuts every pair across groups; `latency(n, ms)` adds tc netem
delay; `heal()` undoes all of them.
"""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
NAMESPACE_PREFIX = "sluice-"
BRIDGE_PREFIX = "sb"
VETH_PREFIX = "sv"
NAMESPACE_NAME = re.compile(r"^sluice-(\d+)([a-z])-(\d+)$")
LINK_NAME = re.compile(r"^s[bv](\d+)([a-z])(\d?)(@.*)?$")
SUBNET_FIRST_OCTETS = "10.77"
BRIDGE_HOST = 254
# Where the next network's subnet search starts (see Network.create).
_next_subnet_octet = 1
NFT_TABLE = "sluice_nemesis"
KAFKA_PORT = 9092
CLUSTER_PORT = 9093
MAX_NODES = 9  # node ids are one digit in the interface names
LOCK_PATH = Path("/run/sluice-netns.lock")
STARTUP_TIMEOUT_S = 30
SHUTDOWN_TIMEOUT_S = 20
LOG_TAIL_LINES = 60
CLUSTER_FLAGS = ("--node-id", "--cluster-listen", "--peers")


class NetnsError(RuntimeError):
    """A command that builds or changes the namespaces failed."""


class NetemUnavailable(NetnsError):
    """The kernel has no netem qdisc (CONFIG_NET_SCH_NETEM), so latency cannot be added."""


class ClusterFlagsMissing(RuntimeError):
    """The sluice binary does not take the cluster flags yet."""


def sluice_bin() -> Path:
    path = Path(os.environ.get("SLUICE_BIN", REPO_ROOT / "target" / "release" / "sluice"))
    return path if path.is_absolute() else REPO_ROOT / path


def missing_tools() -> list[str]:
    """What this module needs from the machine and does not find (root, ip, nft)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces)")
    for tool in ("ip", "nft", "tc"):
        if shutil.which(tool) is None:
            missing.append(tool)
    return missing


def unsupported_cluster_flags(binary: Path | None = None) -> list[str]:
    """The cluster flags `sluice serve --help` does not list (empty once the cluster landed)."""
    binary = binary or sluice_bin()
    if not binary.exists():
        raise FileNotFoundError(f"sluice binary not found at {binary}: build it (cargo build "
                                f"--release -p sluice-server) or point SLUICE_BIN at it")
    help_text = subprocess.run([str(binary), "serve", "--help"], capture_output=True, text=True,
                               timeout=30).stdout
    return [flag for flag in CLUSTER_FLAGS if flag not in help_text]


def require_cluster_flags(binary: Path | None = None):
    missing = unsupported_cluster_flags(binary)
    if missing:
        raise ClusterFlagsMissing(
            f"{binary or sluice_bin()} does not take {', '.join(missing)}: the Raft cluster has "
            f"not landed in this binary yet. The cluster tests need `sluice serve --node-id N "
            f"--cluster-listen IP:{CLUSTER_PORT} --peers 1@IP:{CLUSTER_PORT},... "
            f"--kafka-listen IP:{KAFKA_PORT}`.")


def run(argv, check=True, timeout=30) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise NetnsError(f"{' '.join(map(str, argv))} exited {result.returncode}: "
                         f"{result.stderr.strip() or result.stdout.strip()}")
    return result


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_namespace_processes(namespace: str):
    # Only processes inside one of our namespaces: a node (or a probe) this harness started.
    pids = run(["ip", "netns", "pids", namespace], check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def _delete_namespace(namespace: str):
    _kill_namespace_processes(namespace)
    run(["ip", "netns", "delete", namespace], check=False)


def _link_names() -> list[str]:
    out = run(["ip", "-o", "link", "show"], check=False).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()
            if line.count(":") >= 2]


def cleanup_stale() -> list[str]:
    """Removes the namespaces, bridges and veths of runs whose process is gone (a crashed or
    SIGKILLed run, whose atexit never ran); returns what it removed. A live run's are kept."""
    removed = []
    for line in run(["ip", "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = NAMESPACE_NAME.match(name)
        if match and not _pid_alive(int(match.group(1))):
            _delete_namespace(name)
            removed.append(name)
    for name in _link_names():
        match = LINK_NAME.match(name)
        if match and not _pid_alive(int(match.group(1))):
            run(["ip", "link", "delete", name], check=False)
            removed.append(name)
    return removed


try:
    # Resolved here, not in the child: after fork only this one call runs (no dlopen, no locks).
    _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent():
    # If the runner itself is killed, take the node down with it (PR_SET_PDEATHSIG = 1). `ip
    # netns exec` execs the broker in place, so the setting reaches the broker. It fires when
    # the forking thread exits: nodes are started from the main thread only.
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)


_networks_lock = threading.Lock()
_networks_made = 0
_live_networks: list["Network"] = []


def _destroy_live_networks():
    for network in list(_live_networks):
        network.destroy()


atexit.register(_destroy_live_networks)


class Network:
    """The bridge, the namespaces and the fault rules of one run of `size` nodes (ids 1..size)."""

    def __init__(self, size: int):
        global _networks_made
        if not 1 <= size <= MAX_NODES:
            raise ValueError(f"1 to {MAX_NODES} nodes, not {size}")
        with _networks_lock:
            letter = "abcdefghijklmnopqrstuvwxyz"[_networks_made % 26]
            _networks_made += 1
        self.size = size
        self.run_id = f"{os.getpid()}{letter}"
        self.bridge = f"{BRIDGE_PREFIX}{self.run_id}"
        self.subnet_octet = None
        self.created = False
        self.isolated: set[int] = set()

    def namespace(self, node_id: int) -> str:
        return f"{NAMESPACE_PREFIX}{self.run_id}-{node_id}"

    def host_veth(self, node_id: int) -> str:
        return f"{VETH_PREFIX}{self.run_id}{node_id}"

    def ip(self, node_id: int) -> str:
        return f"{SUBNET_FIRST_OCTETS}.{self.subnet_octet}.{node_id}"

    @property
    def host_ip(self) -> str:
        """The root namespace's address on the bridge: where test clients come from."""
        return self.ip(BRIDGE_HOST)

    def node_ids(self) -> list[int]:
        return list(range(1, self.size + 1))

    def _used_subnet_octets(self) -> set[int]:
        out = run(["ip", "-o", "-4", "addr", "show"], check=False).stdout
        prefix = re.escape(SUBNET_FIRST_OCTETS)
        return {int(m.group(1)) for m in re.finditer(rf"inet {prefix}\.(\d+)\.", out)}

    def create(self) -> "Network":
        cleanup_stale()
        LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
        with open(LOCK_PATH, "w") as lock:
            # The subnet is chosen and taken (the bridge's address) under one lock.
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = self._used_subnet_octets()
            # A subnet this process used before comes last: a client an earlier test left
            # alive (a librdkafka or kafka-python thread still refreshing metadata) must not
            # reach the next test's nodes at the same addresses and auto-create its topic
            # there (seen in CI: "nemesis" on a fresh node).
            global _next_subnet_octet
            order = list(range(_next_subnet_octet, 250)) + list(range(1, _next_subnet_octet))
            free = [x for x in order if x not in used]
            if not free:
                raise NetnsError(f"no free {SUBNET_FIRST_OCTETS}.X.0/24 subnet")
            self.subnet_octet = free[0]
            _next_subnet_octet = self.subnet_octet % 249 + 1
            _live_networks.append(self)
            self.created = True
            run(["ip", "link", "add", self.bridge, "type", "bridge"])
            run(["ip", "addr", "add", f"{self.host_ip}/24", "dev", self.bridge])
            run(["ip", "link", "set", self.bridge, "up"])
        for node_id in self.node_ids():
            self._create_node_namespace(node_id)
        return self

    def _create_node_namespace(self, node_id: int):
        namespace, host_end = self.namespace(node_id), self.host_veth(node_id)
        peer = f"{host_end}p"
        run(["ip", "netns", "add", namespace])
        run(["ip", "link", "add", host_end, "type", "veth", "peer", "name", peer])
        run(["ip", "link", "set", peer, "netns", namespace])
        run(["ip", "link", "set", host_end, "master", self.bridge])
        run(["ip", "link", "set", host_end, "up"])
        self.exec(node_id, ["ip", "link", "set", "lo", "up"])
        self.exec(node_id, ["ip", "link", "set", peer, "name", "eth0"])
        self.exec(node_id, ["ip", "addr", "add", f"{self.ip(node_id)}/24", "dev", "eth0"])
        self.exec(node_id, ["ip", "link", "set", "eth0", "up"])
        self.exec(node_id, ["nft", "-f", "-"], stdin=(
            f"table inet {NFT_TABLE} {{\n"
            f"  chain input {{ type filter hook input priority 0; policy accept; }}\n"
            f"  chain output {{ type filter hook output priority 0; policy accept; }}\n"
            f"}}\n"))

    def exec(self, node_id: int, argv, stdin: str | None = None, check=True, timeout=30):
        """Runs a command inside node_id's namespace."""
        full = ["ip", "netns", "exec", self.namespace(node_id)] + [str(a) for a in argv]
        result = subprocess.run(full, input=stdin, capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise NetnsError(f"{' '.join(full)} exited {result.returncode}: "
                             f"{result.stderr.strip()}")
        return result

    def destroy(self):
        if not self.created:
            return
        for node_id in self.node_ids():
            _delete_namespace(self.namespace(node_id))
            run(["ip", "link", "delete", self.host_veth(node_id)], check=False)
        run(["ip", "link", "delete", self.bridge], check=False)
        self.created = False
        if self in _live_networks:
            _live_networks.remove(self)

    # ---- faults ----

    def isolate(self, node_id: int):
        """Takes the node's link down: no node and no client reaches it, nor it them."""
        run(["ip", "link", "set", self.host_veth(node_id), "down"])
        self.isolated.add(node_id)

    def cut(self, a: int, b: int, both_ways=True):
        """Drops the packets from a to b (and b to a) inside the namespaces; clients in the
        root namespace still reach both."""
        self._drop_between(a, b)
        if both_ways:
            self._drop_between(b, a)

    def _drop_between(self, source: int, target: int):
        self.exec(source, ["nft", "add", "rule", "inet", NFT_TABLE, "output", "ip", "daddr",
                           self.ip(target), "drop"])
        self.exec(target, ["nft", "add", "rule", "inet", NFT_TABLE, "input", "ip", "saddr",
                           self.ip(source), "drop"])

    def partition(self, *groups):
        """Cuts every pair of nodes in different groups; nodes in no group keep all links."""
        sets = [set(g) for g in groups]
        for i, group in enumerate(sets):
            for other in sets[i + 1:]:
                for a in group:
                    for b in other:
                        self.cut(a, b)

    def latency(self, node_id: int, delay_ms: int, jitter_ms: int = 0):
        argv = ["tc", "qdisc", "replace", "dev", "eth0", "root", "netem", "delay",
                f"{delay_ms}ms"]
        if jitter_ms:
            argv.append(f"{jitter_ms}ms")
        result = self.exec(node_id, argv, check=False)
        if result.returncode != 0:
            if "netem" in result.stderr or "qdisc kind is unknown" in result.stderr:
                raise NetemUnavailable(f"tc netem is not available in this kernel "
                                       f"(CONFIG_NET_SCH_NETEM): {result.stderr.strip()}")
            raise NetnsError(f"{' '.join(argv)}: {result.stderr.strip()}")

    def blocked_pairs(self) -> list[tuple[int, int]]:
        """(source, target) pairs whose packets are dropped now, read back from the rules."""
        pairs = []
        for node_id in self.node_ids():
            rules = self.exec(node_id, ["nft", "list", "chain", "inet", NFT_TABLE, "output"]).stdout
            for m in re.finditer(r"ip daddr (\S+) drop", rules):
                pairs.append((node_id, int(m.group(1).rsplit(".", 1)[1])))
        return pairs

    def heal(self):
        """Undoes every fault: links up, no drop rules, no added latency."""
        for node_id in self.node_ids():
            run(["ip", "link", "set", self.host_veth(node_id), "up"])
            for chain in ("input", "output"):
                self.exec(node_id, ["nft", "flush", "chain", "inet", NFT_TABLE, chain])
            self.exec(node_id, ["tc", "qdisc", "del", "dev", "eth0", "root"], check=False)
        self.isolated.clear()


@dataclass
class Node:
    """One `sluice serve` process inside its namespace; keeps its data dir across restarts."""

    node_id: int
    network: Network
    data_dir: Path
    log_path: Path
    clustered: bool
    extra_args: list = field(default_factory=list)
    process: subprocess.Popen | None = None
    starts: int = 0
    paused: bool = False

    @property
    def ip(self) -> str:
        return self.network.ip(self.node_id)

    @property
    def kafka_address(self) -> str:
        return f"{self.ip}:{KAFKA_PORT}"

    @property
    def cluster_address(self) -> str:
        return f"{self.ip}:{CLUSTER_PORT}"

    @property
    def pid(self):
        return self.process.pid if self.process else None

    def command(self) -> list[str]:
        args = [str(sluice_bin()), "serve",
                "--data-dir", str(self.data_dir),
                "--kafka-listen", self.kafka_address,
                "--amqp-listen", "off",
                "--group-initial-rebalance-delay-ms", "0"]
        if self.clustered:
            peers = ",".join(f"{n}@{self.network.ip(n)}:{CLUSTER_PORT}"
                             for n in self.network.node_ids())
            args += ["--node-id", str(self.node_id), "--cluster-listen", self.cluster_address,
                     "--peers", peers]
        return args + [str(a) for a in self.extra_args]

    def start(self, wait=True) -> "Node":
        if self.running():
            raise RuntimeError(f"node {self.node_id} is already running")
        binary = sluice_bin()
        if not binary.exists():
            raise FileNotFoundError(f"sluice binary not found at {binary}")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The broker reads SLUICE_<FLAG> variables: the caller's must not change what runs.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        env.setdefault("NO_COLOR", "1")
        if os.environ.get("NEMESIS_NODE_LOG"):
            # The nodes' log filter (SLUICE_LOG), e.g. to debug one module during a run.
            env["SLUICE_LOG"] = os.environ["NEMESIS_NODE_LOG"]
        self.starts += 1
        argv = ["ip", "netns", "exec", self.network.namespace(self.node_id)] + self.command()
        with open(self.log_path, "ab") as log:
            log.write(f"\n---- start #{self.starts}: {' '.join(argv)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=log, env=env, cwd=self.data_dir.parent,
                                            preexec_fn=_die_with_parent)
        self.paused = False
        if wait:
            self.wait_until_listening()
        return self

    def wait_until_listening(self, timeout_s=STARTUP_TIMEOUT_S):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(f"node {self.node_id} exited with {code} during startup:\n"
                                   f"{self.log_tail()}")
            try:
                with socket.create_connection((self.ip, KAFKA_PORT), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"node {self.node_id} did not accept connections on "
                           f"{self.kafka_address} within {timeout_s}s:\n{self.log_tail()}")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self):
        """SIGKILL: a crash, nothing flushed beyond what the broker already synced."""
        if self.running():
            if self.paused:
                self.process.send_signal(signal.SIGCONT)
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=SHUTDOWN_TIMEOUT_S)
        self.paused = False

    def pause(self):
        """SIGSTOP: the process holds its sockets but answers nothing (a long GC pause).
        Returns once the kernel reports it stopped (signal delivery is asynchronous)."""
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True
        self._wait_for_state(lambda state: state == "T", "stopped")

    def resume(self):
        self.process.send_signal(signal.SIGCONT)
        self.paused = False
        self._wait_for_state(lambda state: state != "T", "running again")

    def process_state(self) -> str:
        """The state letter of /proc/PID/stat: R, S, D, T (stopped), Z, ..."""
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0]  # the command name may hold spaces

    def _wait_for_state(self, wanted, description: str, timeout_s: float = 5):
        deadline = time.monotonic() + timeout_s
        while not wanted(self.process_state()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {self.node_id} (pid {self.pid}) not {description} "
                                   f"within {timeout_s}s: state {self.process_state()}")
            time.sleep(0.005)

    def terminate(self) -> int:
        """SIGTERM and wait for the clean shutdown; returns the exit code."""
        if self.paused:
            self.resume()
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"node {self.node_id} did not exit within {SHUTDOWN_TIMEOUT_S}s "
                               f"of SIGTERM:\n{self.log_tail()}") from None

    def restart(self, graceful=True) -> "Node":
        """Stops the node (SIGTERM, or SIGKILL if not graceful) and starts it on the same data."""
        if self.running():
            if graceful:
                self.terminate()
            else:
                self.kill()
        return self.start()

    def log_tail(self, lines=LOG_TAIL_LINES) -> str:
        try:
            all_lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no node log)"
        notable = [line for line in all_lines
                   if "panicked at" in line or " ERROR " in line][:10]
        tail = "\n".join(all_lines[-lines:])
        if not notable:
            return tail
        return ("panics and errors (first 10):\n" + "\n".join(notable)
                + f"\n\nlast {lines} lines:\n" + tail)


class Cluster:
    """`size` nodes in their namespaces. `clustered=False` starts standalone nodes (today's
    binary), `clustered=True` passes --node-id/--cluster-listen/--peers so they form one Raft
    cluster."""

    def __init__(self, size: int, out_dir: Path, clustered: bool = True, extra_args=()):
        if clustered:
            require_cluster_flags()
        self.network = Network(size)
        self.out_dir = Path(out_dir)
        self.clustered = clustered
        self.nodes: dict[int, Node] = {
            n: Node(n, self.network, self.out_dir / f"node{n}" / "data",
                    self.out_dir / f"node{n}" / "sluice.log", clustered, list(extra_args))
            for n in range(1, size + 1)}

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def start(self) -> "Cluster":
        self.network.create()
        for node in self.nodes.values():
            node.log_path.parent.mkdir(parents=True, exist_ok=True)
            node.start(wait=False)
        for node in self.nodes.values():
            node.wait_until_listening()
        if self.clustered:
            self.wait_until_registered()
        return self

    def wait_until_registered(self, timeout_s: float = STARTUP_TIMEOUT_S):
        """Until Metadata lists every node: a node listens before the metadata group has
        registered the others, and a CreateTopics then fails with INVALID_REPLICATION_FACTOR,
        as Kafka's does before its brokers register."""
        from confluent_kafka.admin import AdminClient

        client = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        deadline = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < deadline:
            try:
                seen = len(client.list_topics(timeout=2).brokers)
            except Exception:  # not answering yet: try again until the deadline
                seen = 0
            if seen == len(self.nodes):
                return
            time.sleep(0.1)
        raise TimeoutError(f"{seen} of {len(self.nodes)} nodes registered after {timeout_s} s")

    @property
    def bootstrap(self) -> str:
        return ",".join(node.kafka_address for node in self.nodes.values())

    def node(self, node_id: int) -> Node:
        return self.nodes[node_id]

    def node_at(self, host: str, port: int) -> Node | None:
        """The node listening at host:port, as a Metadata response names a broker."""
        for node in self.nodes.values():
            if node.ip == host and port == KAFKA_PORT:
                return node
        return None

    def running_nodes(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.running() and not n.paused]

    def heal(self):
        """Undoes network faults, resumes paused nodes and starts stopped ones."""
        self.network.heal()
        stopped = []
        for node in self.nodes.values():
            if node.paused:
                node.resume()
            if not node.running():
                # All at once: a clustered node may wait for a quorum before it listens.
                node.start(wait=False)
                stopped.append(node)
        for node in stopped:
            node.wait_until_listening()

    def close(self):
        for node in self.nodes.values():
            node.kill()
        self.network.destroy()
