//! Seeded randomised simulation of the whole broker on the simulated disk (in the spirit of
//! TigerBeetle's VOPR and of crates/log/tests/simulation.rs): idempotent Kafka produce through
//! the partition API (with retries of batches whose answer was lost or failed), AMQP publish
//! with confirms, basic.get and ack through a VirtualHost session, small segments so they
//! roll, retention; at random points the power is cut (everything not fsynced is lost, the
//! last write torn), the process "crashes" (dropped without a flush, page cache kept) or stops
//! cleanly, and writes or fsyncs fail with EIO or ENOSPC. After every restart it checks:
//! - every acknowledged Kafka record is present exactly once at its acknowledged offset, and
//!   only records that were produced are served, each once;
//! - every confirmed AMQP message is in its queue exactly once unless it was acked (an ack
//!   lost to a power cut brings the message back), and nothing else is;
//! - the high watermark never exposes a batch that was not acknowledged while running.
//!
//! `cargo test` runs a fixed set of seeds. `SLUICE_SIM_SEEDS=N` runs seeds 0..N (long mode);
//! `SLUICE_SIM_SEED=S` replays one seed, printing its steps.
//!
//! Determinism: every choice comes from the seeded RNG and each operation is awaited before
//! the next, on a current-thread runtime per broker life; the group commit's flusher runs on
//! a blocking thread, but with one waiter at a time its rounds do not depend on timing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use amq_protocol_types::FieldTable;
use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice_broker::vhost::{
    Delivery, DeliverySink, Message, MessageProperties, Session, Settle, VhostConfig, VirtualHost,
};
use sluice_broker::{Acks, Broker, BrokerConfig, BrokerError};
use sluice_log::{decode_records, Record, RecordBatchBuilder, SimDisk};

#[path = "../../log/tests/support/seeded.rs"]
mod seeded;

const SEEDS_DEFAULT: u64 = 12;
const STEPS_PER_SEED: usize = 600;
const TOPIC: &str = "t";
const PARTITIONS: i32 = 2;
const QUEUE: &str = "q";

struct NoDeliveries;

impl DeliverySink for NoDeliveries {
    fn deliver(&self, _channel: u16, _delivery: Delivery<'_>) {}
    fn consumer_cancelled(&self, _channel: u16, _consumer_tag: &str) {}
}

/// One idempotent producer's view of one partition.
#[derive(Default)]
struct PartitionModel {
    next_sequence: i32,
    /// A batch sent whose outcome is unknown (storage error): retried before anything new.
    in_doubt: Option<(i32, usize)>,
    /// The last acknowledged batch (sequence, records, base offset), to retry as a client
    /// whose answer was lost does.
    last_acked: Option<(i32, usize, i64)>,
    /// Acknowledged records by offset.
    acked: BTreeMap<i64, String>,
    /// Every value ever sent to this partition (served records must be among them).
    sent: BTreeSet<String>,
    /// The high watermark may not pass this while running: the end of what was acknowledged
    /// (or found on disk at the last start).
    visible_end: i64,
}

#[derive(Default)]
struct QueueModel {
    next_message: u64,
    /// Confirmed and not acked: must be in the queue.
    confirmed: BTreeSet<String>,
    /// Nacked publishes: may or may not be in the queue.
    in_doubt: BTreeSet<String>,
    /// Acked: gone, unless a power cut undid the ack.
    acked: BTreeSet<String>,
    /// Delivered and not yet settled in this life, by delivery tag.
    unacked: HashMap<u64, String>,
}

struct Life {
    runtime: tokio::runtime::Runtime,
    broker: Arc<Broker>,
    vhost: Arc<VirtualHost>,
    session: Arc<Session>,
}

struct Simulation {
    rng: StdRng,
    disk: SimDisk,
    /// Keeps the data directory (the broker's lock file is on the real disk) for the run.
    _dir: tempfile::TempDir,
    data_dir: PathBuf,
    segment_bytes: u32,
    retention_bytes: u32,
    producer_id: i64,
    partitions: Vec<PartitionModel>,
    queue: QueueModel,
    life: Option<Life>,
    lives: u64,
    /// An injected failure may still be waiting for its write or fsync: only a power cut
    /// (which clears it) may end this life.
    fault_armed: bool,
    steps: Vec<String>,
    verbose: bool,
}

fn batch(producer_id: i64, partition: usize, sequence: i32, count: usize) -> BytesMut {
    let mut builder = RecordBatchBuilder::new();
    builder.producer(producer_id, 0, sequence);
    for i in 0..count {
        builder.push(Record {
            timestamp: sluice_broker::now_ms(),
            value: Some(value(partition, sequence, i).into_bytes()),
            ..Record::default()
        });
    }
    BytesMut::from(&builder.build()[..])
}

fn value(partition: usize, sequence: i32, index: usize) -> String {
    format!("p{partition}-s{sequence}-{index}")
}

impl Simulation {
    fn new(seed: u64, verbose: bool) -> Simulation {
        let mut rng = StdRng::seed_from_u64(seed);
        let disk = SimDisk::new(rng.gen());
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().to_path_buf();
        Simulation {
            segment_bytes: rng.gen_range(400..3_000),
            retention_bytes: rng.gen_range(2_000..20_000),
            rng,
            disk,
            _dir: dir,
            data_dir,
            producer_id: 0,
            partitions: (0..PARTITIONS).map(|_| PartitionModel::default()).collect(),
            queue: QueueModel::default(),
            life: None,
            lives: 0,
            fault_armed: false,
            steps: Vec::new(),
            verbose,
        }
    }

    fn note(&mut self, step: String) {
        if self.verbose {
            println!("{step}");
        }
        self.steps.push(step);
    }

    fn life(&self) -> &Life {
        self.life.as_ref().expect("a running broker")
    }

    fn start(&mut self) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut config = BrokerConfig::new(self.data_dir.clone());
        config.storage = self.disk.storage();
        // Small segments, so that the run rolls and deletes many: a broker setting, as the
        // topic config's minimum is Kafka's 1 MiB.
        config.log_defaults.segment_bytes_max = u64::from(self.segment_bytes);
        let data_dir = self.data_dir.clone();
        let lives = self.lives;
        let (broker, vhost, session) = runtime.block_on(async {
            let broker = Broker::open(config).expect("broker reopens after any failure");
            let vhost = VirtualHost::open(
                VhostConfig {
                    data_dir,
                    message_bytes_max: 1 << 20,
                    memory_high_watermark_bytes: 1 << 30,
                    disk_free_limit_bytes: 0,
                },
                Arc::clone(&broker),
            )
            .expect("vhost reopens after any failure");
            let session = Session::new(
                Arc::clone(&vhost),
                lives + 1,
                1,
                "guest".into(),
                Arc::new(NoDeliveries),
            );
            (broker, vhost, session)
        });
        self.lives += 1;
        self.life = Some(Life {
            runtime,
            broker,
            vhost,
            session,
        });
    }

    fn setup(&mut self) {
        self.start();
        let configs = BTreeMap::from([(
            "retention.bytes".to_string(),
            self.retention_bytes.to_string(),
        )]);
        let life = self.life();
        life.broker
            .create_topic(TOPIC, PARTITIONS, configs, false)
            .expect("topic");
        life.vhost
            .declare_queue(QUEUE, false, true, false, false, FieldTable::default(), 0)
            .expect("queue");
        self.producer_id = life.broker.allocate_producer_id().expect("pid").0;
        self.note(format!(
            "setup: segment.bytes={} retention.bytes={}",
            self.segment_bytes, self.retention_bytes
        ));
    }

    fn run(&mut self) {
        self.setup();
        for _ in 0..STEPS_PER_SEED {
            match self.rng.gen_range(0..100) {
                0..=39 => self.produce(),
                40..=44 => self.retry_last_acked(),
                45..=64 => self.publish(),
                65..=76 => self.get(),
                77..=88 => self.ack(),
                89..=90 => self.enforce_retention(),
                91 => self.snapshot_with_publish_between(),
                92..=94 => self.inject_fault(),
                95..=97 => self.restart(Restart::PowerCut),
                98 => self.restart(Restart::Crash),
                _ => self.restart(Restart::Clean),
            }
        }
        self.restart(Restart::PowerCut);
    }

    fn produce(&mut self) {
        let partition = self.rng.gen_range(0..PARTITIONS as usize);
        let model = &mut self.partitions[partition];
        let (sequence, count) = match model.in_doubt {
            Some(batch) => batch,
            None => {
                let count = self.rng.gen_range(1..6);
                let sequence = model.next_sequence;
                model.next_sequence += count as i32;
                for i in 0..count {
                    model.sent.insert(value(partition, sequence, i));
                }
                (sequence, count)
            }
        };
        let records = batch(self.producer_id, partition, sequence, count);
        let life = self.life();
        let target = life
            .broker
            .partition(TOPIC, partition as i32)
            .expect("partition");
        let result = life.runtime.block_on(target.produce(records, Acks::All));
        let high_watermark = target.high_watermark();
        let model = &mut self.partitions[partition];
        let step = match result {
            Ok(outcome) => {
                for i in 0..count {
                    let offset = outcome.base_offset + i as i64;
                    let previous = model.acked.insert(offset, value(partition, sequence, i));
                    assert!(
                        previous.is_none(),
                        "p{partition}: offset {offset} acknowledged twice"
                    );
                }
                model.in_doubt = None;
                model.last_acked = Some((sequence, count, outcome.base_offset));
                model.visible_end = model.visible_end.max(outcome.base_offset + count as i64);
                format!(
                    "produce p{partition} seq {sequence} x{count}: acked at {}",
                    outcome.base_offset
                )
            }
            Err(BrokerError::Storage(failure)) => {
                model.in_doubt = Some((sequence, count));
                format!(
                    "produce p{partition} seq {sequence} x{count}: storage error ({:?})",
                    failure.kind
                )
            }
            Err(error) => panic!("p{partition} seq {sequence}: unexpected produce error {error:?}"),
        };
        assert!(
            high_watermark <= model.visible_end,
            "p{partition}: high watermark {high_watermark} exposes unacknowledged data (acknowledged end {})",
            model.visible_end
        );
        self.note(step);
    }

    /// A client whose answer was lost sends the batch again: it must be answered with the
    /// same offset and not stored twice.
    fn retry_last_acked(&mut self) {
        let partition = self.rng.gen_range(0..PARTITIONS as usize);
        let model = &self.partitions[partition];
        let (Some((sequence, count, base_offset)), None) = (model.last_acked, model.in_doubt)
        else {
            return;
        };
        let records = batch(self.producer_id, partition, sequence, count);
        let life = self.life();
        let target = life
            .broker
            .partition(TOPIC, partition as i32)
            .expect("partition");
        let end_before = target.log_end_offset();
        match life.runtime.block_on(target.produce(records, Acks::All)) {
            Ok(outcome) => {
                assert_eq!(
                    outcome.base_offset, base_offset,
                    "p{partition}: a retried batch is answered with its first offset"
                );
                assert_eq!(
                    target.log_end_offset(),
                    end_before,
                    "a retry was stored again"
                );
            }
            // A storage failure may refuse it; it was acknowledged before, so nothing changes.
            Err(BrokerError::Storage(_)) => {}
            Err(error) => panic!("p{partition}: retry of seq {sequence}: {error:?}"),
        }
        self.note(format!(
            "retry p{partition} seq {sequence} (acked at {base_offset})"
        ));
    }

    fn publish(&mut self) {
        let body = format!("m{}", self.queue.next_message);
        self.queue.next_message += 1;
        let message = Message {
            exchange: String::new(),
            routing_key: QUEUE.to_string(),
            properties: MessageProperties {
                delivery_mode: Some(2),
                ..Default::default()
            },
            body: Bytes::from(body.clone()),
        };
        let life = self.life();
        let confirmed = life.runtime.block_on(async {
            let outcome = life.vhost.publish(message).expect("publish routes");
            let mut confirmed = true;
            for wait in outcome.durable {
                confirmed &= matches!(wait.await, Ok(Ok(())));
            }
            confirmed && !outcome.rejected
        });
        if confirmed {
            self.queue.confirmed.insert(body.clone());
        } else {
            self.queue.in_doubt.insert(body.clone());
        }
        self.note(format!(
            "publish {body}: {}",
            if confirmed { "ack" } else { "nack" }
        ));
    }

    /// A settle-log snapshot with a confirmed publish between its two halves: where the queue
    /// once read `upto` after collecting its live set, so recovery dropped that message.
    fn snapshot_with_publish_between(&mut self) {
        let queue = {
            let life = self.life();
            life.vhost.queue_for(QUEUE, 0).expect("queue")
        };
        let snapshot = queue.begin_snapshot().expect("a durable queue has a store");
        self.publish();
        snapshot.write(true);
        self.note("snapshot (a publish between its halves)".into());
    }

    fn get(&mut self) {
        let life = self.life();
        let _runtime = life.runtime.enter();
        let got = life.session.get(QUEUE, false).expect("basic.get");
        drop(_runtime);
        let Some(got) = got else {
            self.note("get: empty".into());
            return;
        };
        let body = String::from_utf8_lossy(&got.message.body).into_owned();
        assert!(
            !self.queue.acked.contains(&body),
            "{body} was delivered after its ack"
        );
        assert!(
            self.queue.confirmed.contains(&body) || self.queue.in_doubt.contains(&body),
            "{body} was delivered but never published (or delivered twice)"
        );
        assert!(
            !self.queue.unacked.values().any(|b| *b == body),
            "{body} delivered twice"
        );
        self.queue.unacked.insert(got.delivery_tag, body.clone());
        self.note(format!("get {body} tag {}", got.delivery_tag));
    }

    fn ack(&mut self) {
        let Some(&tag) = self.queue.unacked.keys().min() else {
            return;
        };
        let body = self.queue.unacked.remove(&tag).unwrap_or_default();
        let life = self.life();
        let _runtime = life.runtime.enter();
        life.session.settle(tag, false, Settle::Ack).expect("ack");
        drop(_runtime);
        self.queue.confirmed.remove(&body);
        self.queue.in_doubt.remove(&body);
        self.queue.acked.insert(body.clone());
        self.note(format!("ack {body} tag {tag}"));
    }

    fn enforce_retention(&mut self) {
        let life = self.life();
        let _runtime = life.runtime.enter();
        let deleted = life.broker.enforce_retention();
        drop(_runtime);
        self.note(format!("retention: {deleted:?}"));
    }

    fn inject_fault(&mut self) {
        let fault = self.rng.gen_range(0..3);
        match fault {
            0 => self.disk.fail_next_write(),
            1 => self.disk.fail_next_sync(),
            _ => self
                .disk
                .set_space_bytes_max(Some(self.rng.gen_range(20_000..200_000))),
        }
        self.fault_armed = true;
        self.note(format!(
            "inject {}",
            ["EIO on write", "EIO on fsync", "ENOSPC"][fault]
        ));
    }

    fn restart(&mut self, how: Restart) {
        let how = if self.fault_armed {
            Restart::PowerCut
        } else {
            how
        };
        let life = self.life.take().expect("a running broker");
        if how == Restart::Clean {
            let _runtime = life.runtime.enter();
            life.vhost.shutdown();
            life.broker.shutdown();
        }
        if how == Restart::PowerCut {
            self.disk.power_cut();
            self.disk.set_space_bytes_max(None);
            self.fault_armed = false;
        }
        drop(life);
        // Deliveries not acked go back to the queue.
        self.queue.unacked.clear();
        self.note(format!("restart: {how:?}"));
        self.start();
        self.check_after_start();
    }

    fn check_after_start(&mut self) {
        for index in 0..PARTITIONS as usize {
            self.check_partition(index);
        }
        self.check_queue();
    }

    fn check_partition(&mut self, index: usize) {
        let life = self.life();
        let partition = life
            .broker
            .partition(TOPIC, index as i32)
            .expect("partition");
        let start = partition.log_start_offset();
        let high_watermark = partition.high_watermark();
        let mut served = BTreeMap::new();
        let mut offset = start;
        while offset < high_watermark {
            let fetched = partition
                .fetch(offset, 1 << 16)
                .unwrap_or_else(|e| panic!("p{index}: fetch at {offset}: {e:?}"));
            let records = decode_records(&fetched.records).expect("served batches decode");
            let Some(last) = records.last() else { break };
            let next = last.offset + 1;
            for record in records {
                assert!(
                    record.offset < high_watermark,
                    "p{index}: read past the high watermark"
                );
                if record.offset >= start {
                    let value =
                        String::from_utf8_lossy(&record.value.unwrap_or_default()).into_owned();
                    served.insert(record.offset, value);
                }
            }
            offset = next;
        }
        let model = &mut self.partitions[index];
        let mut seen = BTreeSet::new();
        for (offset, value) in &served {
            assert!(
                model.sent.contains(value),
                "p{index}: offset {offset} serves {value}, which was never produced"
            );
            assert!(seen.insert(value.clone()), "p{index}: {value} stored twice");
            if let Some(acked) = model.acked.get(offset) {
                assert_eq!(acked, value, "p{index}: offset {offset} changed");
            }
        }
        for (offset, value) in model.acked.range(start..) {
            assert_eq!(
                served.get(offset),
                Some(value),
                "p{index}: acknowledged {value} at {offset} lost (log {start}..{high_watermark})"
            );
        }
        model.visible_end = high_watermark;
        let note = format!(
            "check p{index}: {start}..{high_watermark}, {} served",
            served.len()
        );
        self.note(note);
    }

    fn check_queue(&mut self) {
        let life = self.life();
        let _runtime = life.runtime.enter();
        let session = Session::new(
            Arc::clone(&life.vhost),
            u64::MAX,
            1,
            "guest".into(),
            Arc::new(NoDeliveries),
        );
        let mut found = BTreeSet::new();
        while let Some(got) = session.get(QUEUE, false).expect("basic.get") {
            let body = String::from_utf8_lossy(&got.message.body).into_owned();
            assert!(found.insert(body.clone()), "{body} is in the queue twice");
        }
        // Unsettled: back into the queue for the next life.
        session.close();
        drop(_runtime);
        let queue = &mut self.queue;
        for body in &queue.confirmed {
            assert!(found.contains(body), "confirmed {body} lost");
        }
        for body in &found {
            assert!(
                queue.confirmed.contains(body)
                    || queue.in_doubt.contains(body)
                    || queue.acked.contains(body),
                "{body} is in the queue but was never published"
            );
        }
        // Whatever is there now must be there until acked.
        for body in &found {
            queue.in_doubt.remove(body);
            queue.acked.remove(body);
            queue.confirmed.insert(body.clone());
        }
        queue.in_doubt.clear(); // not found: lost for good, never to appear again
        let note = format!("check queue: {} messages", found.len());
        self.note(note);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restart {
    /// Everything not fsynced is lost, the last write torn.
    PowerCut,
    /// The process dies without a flush; the page cache survives.
    Crash,
    /// Logs and queues are flushed first.
    Clean,
}

impl seeded::SeededRun for Simulation {
    fn run(&mut self) {
        Simulation::run(self);
    }
    fn steps(&self) -> &[String] {
        &self.steps
    }
}

#[test]
fn acknowledged_messages_survive_power_cuts_and_storage_failures() {
    seeded::run_seeds(
        "broker simulation",
        "cargo test -p sluice-broker --test simulation",
        SEEDS_DEFAULT,
        20,
        Simulation::new,
    );
}
