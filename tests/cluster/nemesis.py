"""The nemesis run: clients write and read a replicated topic while faults hit the cluster; every
event goes to a JSONL history (history.py) that checker.py then judges.

Clients (each a thread): idempotent acks=all producers, one confluent-kafka
(enable.idempotence) and one kafka-python (acks='all', enable_idempotence), writing unique
values round-robin over the partitions; a consumer group of members committing by hand; two
independent readers (confluent-kafka and kafka-python, no group) reading every partition.

Faults, chosen in a seeded shuffled rotation so a short run sees each kind: leader kill,
follower kill, pause, leader cut from the majority, minority partition, node restart, and a
combination (leader kill plus another node isolated). Each is held for `hold_s`, healed, and the
cluster must again have agreed, caught-up leaders within `recovery_s`.

    cd tests && python -m cluster.nemesis --nodes 3 --faults 15     (or scripts/nemesis.sh)
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from librdkafka_client import read_all

from .checker import CheckResult, check
from .history import History, load
from .leaders import NoLeaders, current_leaders, wait_for_leaders
from .netns import REPO_ROOT, Cluster, ClusterFlagsMissing

FAULTS = ("leader_kill", "follower_kill", "pause", "leader_cut_from_majority",
          "minority_partition", "node_restart", "combined")
# Not a fault a correct cluster survives (a Raft voter must not forget what it acknowledged):
# only for proving that the runner and checker catch lost acknowledged writes.
SELF_TEST_FAULTS = ("data_loss",)
STANDALONE_FAULTS = ("leader_kill", "pause", "node_restart")
REPLICATION_FACTOR = 3


@dataclass
class NemesisConfig:
    nodes: int = 3
    faults: int = 15
    partitions: int = 4
    hold_s: float = 3.0
    recovery_s: float = 45.0
    settle_s: float = 1.0
    produce_interval_s: float = 0.01  # per producer: ~100 values a second
    group_members: int = 2
    seed: int | None = None
    fault_kinds: tuple[str, ...] = FAULTS
    out_dir: Path | None = None
    topic: str = "nemesis"
    group: str = "nemesis-group"
    # Today's binary: standalone nodes (no cluster flags). Only meaningful with one node and
    # the single-node faults (STANDALONE_FAULTS); it proves the runner, clients and checker.
    standalone: bool = False


@dataclass
class NemesisOutcome:
    result: CheckResult
    history_path: Path
    out_dir: Path
    faults_done: list[str]
    unavailable: list[str] = field(default_factory=list)  # faults after which no recovery
    client_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.result.ok and not self.unavailable and not self.client_errors

    def summary(self) -> str:
        lines = [f"nemesis: {len(self.faults_done)} faults ({', '.join(self.faults_done)})",
                 f"output: {self.out_dir}", self.result.summary()]
        if self.unavailable:
            lines.append("NOT RECOVERED after: " + "; ".join(self.unavailable))
        if self.client_errors:
            lines.append("client thread errors: " + "; ".join(self.client_errors[:5]))
        lines.append("NEMESIS: " + ("PASS" if self.ok else "FAIL"))
        return "\n".join(lines)


class Worker(threading.Thread):
    """A client thread: runs `body` until stopped; an exception is kept for the report."""

    def __init__(self, name: str, stop: threading.Event, errors: list[str]):
        super().__init__(name=name, daemon=True)
        self.stop = stop
        self.errors = errors

    def run(self):
        try:
            self.body()
        except Exception:  # noqa: BLE001 - any crash of a client is a finding to report
            self.errors.append(f"{self.name}: {traceback.format_exc(limit=5)}")

    def body(self):
        raise NotImplementedError


class EpochBumpLog(logging.LoggerAdapter):
    """librdkafka's log for one producer, into the clients' log; its epoch bumps (KIP-360:
    after some errors librdkafka re-sends the in-flight messages as a new producer epoch, which
    no broker can de-duplicate against the old one) are also recorded in the history, with
    librdkafka's reason, for the checker."""

    def __init__(self, run: "NemesisRun", name: str):
        super().__init__(run.client_log, {})
        self.history = run.history
        self.client_errors = run.client_errors
        self.producer = name

    def log(self, level, msg, *args, **kwargs):
        text = msg % args if args else str(msg)
        if "epoch bump" in text.lower() or "bumped epoch" in text.lower():
            self.history.record("epoch_bump", producer=self.producer, log=text[-300:])
        if "Fatal error:" in text:
            # The error callback does not always run before the producer is torn down (a
            # fatal error during the final flush), librdkafka's log line always does.
            self.history.record("client_error", client=self.producer, error=text[-500:])
            self.client_errors.append(f"{self.producer}: fatal idempotent producer error {text}")
        # librdkafka's debug lines carry syslog level 7, below the clients' log level: the eos
        # ones (idempotence state, drains, the errors that caused them) are kept as WARNING.
        super().log(max(level, logging.WARNING), msg, *args, **kwargs)


class ConfluentProducer(Worker):
    def __init__(self, run: "NemesisRun", index: int):
        super().__init__(f"confluent-{index}", run.stop_producers, run.client_errors)
        self.run_ = run

    def body(self):
        run, history = self.run_, self.run_.history
        incarnation = 0
        seq = 0
        while not self.stop.is_set():
            # A fatal idempotence error ends a producer; its successor is a new producer id,
            # so a new name: send order is promised per producer only.
            name = f"{self.name}.{incarnation}"
            fatal = threading.Event()

            def on_error(err, fatal=fatal, name=name):
                history.record("client_error", client=name, error=str(err))
                if err.fatal():
                    # E.g. OUT_OF_ORDER_SEQUENCE_NUMBER: the cluster lost acknowledged
                    # batches or the producer's sequence state. A finding, not a nuisance.
                    run.client_errors.append(f"{name}: fatal idempotent producer error {err}")
                    fatal.set()

            producer = Producer({
                "bootstrap.servers": run.cluster.bootstrap, "enable.idempotence": True,
                "acks": "all", "linger.ms": 5, "message.timeout.ms": 30000,
                "request.timeout.ms": 5000, "retry.backoff.ms": 100,
                "socket.connection.setup.timeout.ms": 3000, "error_cb": on_error,
                # eos: librdkafka logs its idempotence state, epoch bumps included.
                "debug": "eos", "logger": EpochBumpLog(run, name)})

            while not self.stop.is_set() and not fatal.is_set():
                partition = seq % run.config.partitions
                value = f"{name}-{seq}"
                history.record("send", producer=name, partition=partition, seq=seq, value=value)
                try:
                    self._produce(producer, name, partition, seq, value)
                    producer.poll(0)
                except KafkaException as error:  # raised once the producer is in fatal state
                    history.record("fail", producer=name, partition=partition, seq=seq,
                                   value=value, error=str(error))
                    fatal.set()
                seq += 1
                time.sleep(run.config.produce_interval_s)
            try:
                left = producer.flush(60)
            except (KafkaException, SystemError) as error:
                # After a fatal error confluent-kafka can raise out of flush (a delivery
                # report then ran with the fatal error pending): the producer is done
                # either way, and a new one takes over.
                history.record("client_error", client=name, error=f"flush: {error!r}")
                left = 0
            if left:
                history.record("client_error", client=name,
                               error=f"{left} messages undelivered at shutdown")
            incarnation += 1

    def _produce(self, producer, name, partition, seq, value):
        history = self.run_.history

        def on_delivery(err, msg):
            if err is None:
                history.record("ack", producer=name, partition=msg.partition(), seq=seq,
                               value=value, offset=msg.offset())
            else:
                history.record("fail", producer=name, partition=partition, seq=seq,
                               value=value, error=str(err))

        while True:
            try:
                producer.produce(self.run_.config.topic, value=value.encode(),
                                 partition=partition, on_delivery=on_delivery)
                return
            except BufferError:
                producer.poll(0.1)


class KafkaPythonProducer(Worker):
    def __init__(self, run: "NemesisRun", index: int):
        super().__init__(f"kafka-python-{index}", run.stop_producers, run.client_errors)
        self.run_ = run

    def body(self):
        from kafka import KafkaProducer

        run, history = self.run_, self.run_.history
        name = f"{self.name}.0"
        producer = KafkaProducer(
            bootstrap_servers=run.cluster.bootstrap.split(","), acks="all",
            enable_idempotence=True, linger_ms=5, request_timeout_ms=5000,
            delivery_timeout_ms=30000, retry_backoff_ms=100, max_block_ms=10000)
        seq = 0
        try:
            while not self.stop.is_set():
                partition = seq % run.config.partitions
                value = f"{name}-{seq}"
                history.record("send", producer=name, partition=partition, seq=seq, value=value)
                try:
                    future = producer.send(run.config.topic, value=value.encode(),
                                           partition=partition)
                except Exception as error:  # noqa: BLE001 - e.g. metadata timeout: not sent
                    history.record("fail", producer=name, partition=partition, seq=seq,
                                   value=value, error=repr(error))
                else:
                    future.add_callback(self._acked, name, seq, value)
                    future.add_errback(self._failed, name, partition, seq, value)
                seq += 1
                time.sleep(run.config.produce_interval_s)
            producer.flush(timeout=60)
        finally:
            producer.close(timeout=10)

    def _acked(self, name, seq, value, metadata):
        self.run_.history.record("ack", producer=name, partition=metadata.partition, seq=seq,
                                 value=value, offset=metadata.offset)

    def _failed(self, name, partition, seq, value, error):
        self.run_.history.record("fail", producer=name, partition=partition, seq=seq,
                                 value=value, error=repr(error))


class GroupMember(Worker):
    """A consumer group member: records what it processes, commits synchronously each second."""

    def __init__(self, run: "NemesisRun", index: int):
        super().__init__(f"member-{index}", run.stop_consumers, run.client_errors)
        self.run_ = run

    def body(self):
        run, history = self.run_, self.run_.history
        consumer = Consumer({
            "bootstrap.servers": run.cluster.bootstrap, "group.id": run.config.group,
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "session.timeout.ms": 10000, "heartbeat.interval.ms": 1000,
            "enable.partition.eof": False, "client.id": self.name,
            "logger": run.client_log})
        consumer.subscribe([run.config.topic])
        last_commit = time.monotonic()
        try:
            while not self.stop.is_set():
                for msg in consumer.consume(num_messages=500, timeout=0.5):
                    if msg.error() is not None:
                        history.record("client_error", client=self.name, error=str(msg.error()))
                        continue
                    value = msg.value().decode()
                    history.record("process", group=run.config.group, member=self.name,
                                   partition=msg.partition(), offset=msg.offset(), value=value)
                    run.note_processed(msg.partition(), msg.offset())
                if time.monotonic() - last_commit >= 1.0:
                    self._commit(consumer)
                    last_commit = time.monotonic()
            self._commit(consumer)
        finally:
            consumer.close()

    def _commit(self, consumer):
        history = self.run_.history
        try:
            committed = consumer.commit(asynchronous=False)
        except KafkaException as error:
            if error.args[0].code() != KafkaError._NO_OFFSET:
                history.record("commit_fail", group=self.run_.config.group, member=self.name,
                               error=str(error))
            return
        for tp in committed or []:
            if tp.error is None and tp.offset >= 0:
                history.record("commit", group=self.run_.config.group, member=self.name,
                               partition=tp.partition, offset=tp.offset)


class ConfluentReader(Worker):
    """Reads every partition from the start without a group, as a plain tailing client."""

    def __init__(self, run: "NemesisRun"):
        super().__init__("reader-confluent", run.stop_consumers, run.client_errors)
        self.run_ = run

    def body(self):
        run, history = self.run_, self.run_.history
        consumer = Consumer({
            "bootstrap.servers": run.cluster.bootstrap, "group.id": f"{self.name}-unused",
            "enable.auto.commit": False, "enable.partition.eof": False,
            "logger": run.client_log})
        consumer.assign([TopicPartition(run.config.topic, p, 0)
                         for p in range(run.config.partitions)])
        try:
            while not self.stop.is_set():
                for msg in consumer.consume(num_messages=500, timeout=0.5):
                    if msg.error() is not None:
                        history.record("client_error", client=self.name, error=str(msg.error()))
                        continue
                    history.record("read", reader=self.name, partition=msg.partition(),
                                   offset=msg.offset(), value=msg.value().decode())
        finally:
            consumer.close()


class KafkaPythonReader(Worker):
    def __init__(self, run: "NemesisRun"):
        super().__init__("reader-kafka-python", run.stop_consumers, run.client_errors)
        self.run_ = run

    def body(self):
        from kafka import KafkaConsumer
        from kafka import TopicPartition as KpTopicPartition

        run, history = self.run_, self.run_.history
        consumer = KafkaConsumer(bootstrap_servers=run.cluster.bootstrap.split(","),
                                 enable_auto_commit=False, group_id=None,
                                 request_timeout_ms=10000)
        partitions = [KpTopicPartition(run.config.topic, p)
                      for p in range(run.config.partitions)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        try:
            while not self.stop.is_set():
                try:
                    batches = consumer.poll(timeout_ms=500, max_records=500)
                except Exception as error:  # noqa: BLE001 - a fault shows as client errors
                    history.record("client_error", client=self.name, error=repr(error))
                    time.sleep(0.2)
                    continue
                for records in batches.values():
                    for record in records:
                        history.record("read", reader=self.name, partition=record.partition,
                                       offset=record.offset, value=record.value.decode())
        finally:
            consumer.close()


class NemesisRun:
    def __init__(self, config: NemesisConfig):
        self.config = config
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.out_dir = Path(config.out_dir or REPO_ROOT / "target" / "nemesis" / stamp)
        allowed = STANDALONE_FAULTS if config.standalone else FAULTS
        if set(config.fault_kinds) - set(allowed + SELF_TEST_FAULTS) or (
                config.standalone and config.nodes != 1):
            kind = "standalone run (one node)" if config.standalone else "cluster run"
            raise ValueError(f"fault kinds {config.fault_kinds}: a {kind} takes "
                             f"{', '.join(allowed + SELF_TEST_FAULTS)}")
        # A standalone node that lost its data re-creates the topic on the clients' first
        # use: with the same partition count.
        extra = ["--default-partitions", str(config.partitions)] if config.standalone else []
        # Before any output: a binary without the cluster flags fails here.
        self.cluster = Cluster(config.nodes, self.out_dir, clustered=not config.standalone,
                               extra_args=extra)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.seed = config.seed if config.seed is not None else random.randrange(1 << 32)
        self.rng = random.Random(self.seed)
        self.history = History(self.out_dir / "history.jsonl")
        # The clients' own logs (librdkafka's and kafka-python's) go to a file, not the console.
        self.client_log = logging.getLogger(f"nemesis.clients.{id(self)}")
        handler = logging.FileHandler(self.out_dir / "clients.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        for logger in (self.client_log, logging.getLogger("kafka")):
            logger.addHandler(handler)
            logger.propagate = False
        self._client_log_handler = handler
        self.stop_producers = threading.Event()
        self.stop_consumers = threading.Event()
        self.client_errors: list[str] = []
        self.unavailable: list[str] = []
        self.faults_done: list[str] = []
        self._processed_lock = threading.Lock()
        self._processed: set[tuple[int, int]] = set()
        self._probe_producer: Producer | None = None
        self._probe_seq = 0
        self._probe_incarnation = -1

    def note_processed(self, partition: int, offset: int):
        with self._processed_lock:
            self._processed.add((partition, offset))

    def log(self, message: str):
        print(f"[nemesis {time.strftime('%H:%M:%S')}] {message}", flush=True)

    # ---- the run ----

    def execute(self) -> NemesisOutcome:
        self.log(f"seed {self.seed}, {self.config.nodes} nodes, {self.config.faults} faults, "
                 f"output {self.out_dir}")
        self.cluster.start()
        try:
            self._create_topic()
            producers = [ConfluentProducer(self, 0), KafkaPythonProducer(self, 0)]
            consumers = [GroupMember(self, i) for i in range(self.config.group_members)]
            consumers += [ConfluentReader(self), KafkaPythonReader(self)]
            for worker in producers + consumers:
                worker.start()
            time.sleep(self.config.settle_s * 3)
            self._fault_loop()
            self._wait_recovered("final heal")
            self.stop_producers.set()
            for worker in producers:
                worker.join(timeout=120)
            self._final_read_and_drain(consumers)
        finally:
            self.stop_producers.set()
            self.stop_consumers.set()
            if self._probe_producer is not None:
                try:
                    self._probe_producer.flush(5)
                except (KafkaException, SystemError) as error:  # fatal, see ConfluentProducer
                    self.history.record("client_error", client="probe", error=repr(error))
                # Destroyed now: a librdkafka client kept alive with the run object would go on
                # refreshing metadata of the next test's nodes at the same addresses, and
                # auto-create this run's topic there (seen in CI: "nemesis" on a fresh node).
                self._probe_producer = None
            self.history.close()
            self.cluster.close()
            # librdkafka clients of an interrupted run may outlive this: their logger keeps
            # its file. The shared "kafka" logger must not write into a finished run's file.
            logging.getLogger("kafka").removeHandler(self._client_log_handler)
        result = check(load(self.history.path))
        outcome = NemesisOutcome(result, self.history.path, self.out_dir, self.faults_done,
                                 self.unavailable, self.client_errors)
        (self.out_dir / "summary.txt").write_text(outcome.summary() + "\n")
        return outcome

    def _create_topic(self):
        client = AdminClient({"bootstrap.servers": self.cluster.bootstrap,
                              "logger": self.client_log})
        factor = min(REPLICATION_FACTOR, self.config.nodes)
        futures = client.create_topics(
            [NewTopic(self.config.topic, num_partitions=self.config.partitions,
                      replication_factor=factor)], operation_timeout=30, request_timeout=30)
        futures[self.config.topic].result(timeout=60)
        wait_for_leaders(self.cluster, self.config.topic, self.config.partitions, timeout_s=60)

    def _fault_loop(self):
        rotation: list[str] = []
        for index in range(self.config.faults):
            if not rotation:
                rotation = list(self.config.fault_kinds)
                self.rng.shuffle(rotation)
            kind = rotation.pop()
            try:
                nodes = getattr(self, f"_fault_{kind}")()
            except NoLeaders as error:
                self.unavailable.append(f"before {kind}: {error}")
                self.log(f"no leaders to aim {kind} at; stopping the faults")
                return
            self.faults_done.append(kind)
            self.history.record("nemesis", phase="start", fault=kind, nodes=nodes)
            self.log(f"fault {index + 1}/{self.config.faults}: {kind} on nodes {nodes}")
            time.sleep(self.config.hold_s)
            self.cluster.heal()
            self.history.record("nemesis", phase="heal", fault=kind, nodes=nodes)
            if not self._wait_recovered(f"{kind} on {nodes}"):
                # More faults would only pile up on an unavailable cluster: go to the final
                # read, so the history is still checked.
                self.log("the cluster did not recover; stopping the faults")
                return
            time.sleep(self.config.settle_s)

    def _wait_recovered(self, after: str) -> bool:
        """After a heal the cluster must again agree on caught-up leaders and acknowledge an
        acks=all produce to every partition, both within recovery_s; False if it did not."""
        deadline = time.monotonic() + self.config.recovery_s
        try:
            wait_for_leaders(self.cluster, self.config.topic, self.config.partitions,
                             timeout_s=self.config.recovery_s)
            for partition in range(self.config.partitions):
                self._probe(partition, deadline, after)
        except NoLeaders as error:
            self.unavailable.append(f"{after}: {error}")
            self.history.record("unavailable", after=after, error=str(error)[:2000])
            self.log(f"NOT RECOVERED within {self.config.recovery_s}s after {after}")
            return False
        return True

    def _probe(self, partition: int, deadline: float, after: str):
        """One acks=all produce to the partition acknowledged before the deadline, recorded
        like any other producer's; a producer that hits a fatal error is replaced."""
        error = "no answer"
        while time.monotonic() < deadline:
            if self._probe_producer is None:
                self._probe_incarnation += 1
                self._probe_seq = 0
                self._probe_producer = Producer({
                    "bootstrap.servers": self.cluster.bootstrap, "acks": "all",
                    "enable.idempotence": True, "linger.ms": 0,
                    "message.timeout.ms": int(self.config.recovery_s * 1000),
                    "logger": self.client_log})
            name = f"probe.{self._probe_incarnation}"
            seq, self._probe_seq = self._probe_seq, self._probe_seq + 1
            value = f"{name}-{seq}"
            outcome = []
            self.history.record("send", producer=name, partition=partition, seq=seq,
                                value=value)
            try:
                self._probe_producer.produce(
                    self.config.topic, value=value.encode(), partition=partition,
                    on_delivery=lambda err, msg, out=outcome: out.append((err, msg)))
                while not outcome and time.monotonic() < deadline:
                    self._probe_producer.poll(0.05)
            except KafkaException as fatal:
                self.history.record("client_error", client=name, error=str(fatal))
                self._probe_producer = None
                outcome.append((fatal, None))
            if outcome and outcome[0][0] is None:
                self.history.record("ack", producer=name, partition=partition, seq=seq,
                                    value=value, offset=outcome[0][1].offset())
                return
            error = outcome[0][0] if outcome else "no answer"
            # Not acknowledged: it may still be stored, so "fail" (indeterminate).
            self.history.record("fail", producer=name, partition=partition, seq=seq,
                                value=value, error=str(error))
            if not outcome:
                break
            time.sleep(0.2)
        raise NoLeaders(f"no acks=all produce to partition {partition} acknowledged within "
                        f"{self.config.recovery_s}s of the heal after {after}: {error}")

    # ---- faults: each applies itself and returns the nodes it hit; heal() undoes all ----

    def _leaders(self) -> dict[int, int]:
        leaders = current_leaders(self.cluster, self.config.topic, self.config.partitions)
        known = {p: n for p, n in leaders.items() if n is not None}
        if not known:
            raise NoLeaders(f"no partition of {self.config.topic} has a leader: {leaders}")
        return known

    def _some_leader(self) -> tuple[int, int]:
        partition, leader = self.rng.choice(sorted(self._leaders().items()))
        return partition, leader

    def _fault_leader_kill(self):
        _, leader = self._some_leader()
        self.cluster.node(leader).kill()
        return [leader]

    def _fault_follower_kill(self):
        partition, leader = self._some_leader()
        state = wait_for_leaders(self.cluster, self.config.topic, self.config.partitions,
                                 timeout_s=10, caught_up=False)[partition]
        followers = [n for n in state.replicas if n != leader] or \
            [n for n in self.cluster.nodes if n != leader]
        victim = self.rng.choice(followers)
        self.cluster.node(victim).kill()
        return [victim]

    def _fault_pause(self):
        victim = self.rng.choice(sorted(self.cluster.nodes))
        self.cluster.node(victim).pause()
        return [victim]

    def _fault_leader_cut_from_majority(self):
        _, leader = self._some_leader()
        for other in self.cluster.nodes:
            if other != leader:
                self.cluster.network.cut(leader, other)
        return [leader]

    def _fault_minority_partition(self):
        ids = sorted(self.cluster.nodes)
        minority = self.rng.sample(ids, (len(ids) - 1) // 2)
        self.cluster.network.partition(minority, [n for n in ids if n not in minority])
        return sorted(minority)

    def _fault_node_restart(self):
        victim = self.rng.choice(sorted(self.cluster.nodes))
        self.cluster.node(victim).restart(graceful=True)
        return [victim]

    def _fault_data_loss(self):
        victim = self.rng.choice(sorted(self.cluster.nodes))
        node = self.cluster.node(victim)
        node.kill()
        shutil.rmtree(node.data_dir)
        return [victim]

    def _fault_combined(self):
        _, leader = self._some_leader()
        other = self.rng.choice([n for n in self.cluster.nodes if n != leader])
        self.cluster.node(leader).kill()
        self.cluster.network.isolate(other)
        return [leader, other]

    # ---- the end ----

    def _final_read_and_drain(self, consumers):
        bootstrap, topic, partitions = (self.cluster.bootstrap, self.config.topic,
                                        self.config.partitions)
        try:
            records = read_all(bootstrap, topic, partitions, timeout_s=120,
                               extra_config={"logger": self.client_log})
        except (AssertionError, KafkaException) as error:
            # No final_done: the checker fails final_read (and every acknowledgement).
            self.unavailable.append(f"final read: {error}")
            self.history.record("final_read_error", error=str(error)[:2000])
            self.stop_consumers.set()
            return
        end_offsets = {p: 0 for p in range(partitions)}
        for partition, offset, _key, value, _ts in records:
            self.history.record("final", partition=partition, offset=offset,
                                value=value.decode())
            end_offsets[partition] = max(end_offsets[partition], offset + 1)
        # Let the group catch up with everything stored before stopping it (at least once).
        stored = {(r[0], r[1]) for r in records}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with self._processed_lock:
                behind = len(stored - self._processed)
            if behind == 0:
                break
            time.sleep(0.5)
        else:
            self.log(f"the group still had {behind} stored records unprocessed after 120 s")
        time.sleep(2)  # the readers' last polls and the members' last commits
        self.stop_consumers.set()
        for worker in consumers:
            worker.join(timeout=60)
        self.history.record("final_done", partitions=partitions,
                            end_offsets={str(p): e for p, e in end_offsets.items()})


def run_nemesis(config: NemesisConfig) -> NemesisOutcome:
    return NemesisRun(config).execute()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--faults", type=int, default=15)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--hold-s", type=float, default=3.0)
    parser.add_argument("--recovery-s", type=float, default=45.0)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--kinds", default=",".join(FAULTS),
                        help=f"comma-separated subset of {','.join(FAULTS)}, or "
                             f"{','.join(SELF_TEST_FAULTS)} to see the checker catch lost data")
    parser.add_argument("--out", type=Path, help="output dir [target/nemesis/<time>]")
    parser.add_argument("--standalone", action="store_true",
                        help="one standalone node (today's binary, no cluster flags) and the "
                             f"faults {','.join(STANDALONE_FAULTS)}: exercises the runner")
    args = parser.parse_args(argv)
    if args.standalone:
        args.nodes = 1
        if args.kinds == ",".join(FAULTS):
            args.kinds = ",".join(STANDALONE_FAULTS)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    unknown = set(kinds) - set(FAULTS + SELF_TEST_FAULTS)
    if unknown:
        parser.error(f"unknown fault kinds {sorted(unknown)}")
    # SIGTERM unwinds like ^C: nodes killed, namespaces removed (atexit), history closed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        run = NemesisRun(NemesisConfig(
            nodes=args.nodes, faults=args.faults, partitions=args.partitions,
            hold_s=args.hold_s, recovery_s=args.recovery_s, seed=args.seed, fault_kinds=kinds,
            out_dir=args.out, standalone=args.standalone))
    except ClusterFlagsMissing as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    outcome = run.execute()
    print(outcome.summary())
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
