//! The `kafka` subcommand: creates the topic if asked, starts consumers at the end of the topic,
//! runs paced or unpaced producers for a fixed time, drains, and reports.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::consumer_worker::{self, ConsumerSettings};
use crate::disk_probe::{self, DiskProbeConfig};
use crate::payload_header::PAYLOAD_HEADER_BYTES;
use crate::producer_worker::{self, ProducerSettings};
use crate::progress::{self, ProgressCounts};
use crate::report::{
    latency_histogram_us, ErrorCounts, KafkaReport, KafkaRunSettings, LatencySummary,
};
use crate::run_state::{new_run_id, FirstError, RunClock};

const TOPIC_READY_TIMEOUT: Duration = Duration::from_secs(15);
const CONSUMERS_READY_TIMEOUT: Duration = Duration::from_secs(45);
const PRODUCERS_READY_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct KafkaLoadConfig {
    pub bootstrap: String,
    pub topic: String,
    pub producers: usize,
    pub consumers: usize,
    pub message_bytes: usize,
    /// Every message gets a distinct key.
    pub keys: bool,
    pub partitions: i32,
    pub acks: String,
    pub duration: Duration,
    /// Total across producers; 0 is unlimited.
    pub rate_msgs_per_sec: u64,
    pub create_topic: bool,
    pub linger_ms: u64,
    pub batch_bytes: u64,
    pub queue_msgs_max: u64,
    pub queue_kib_max: u64,
    pub compression: String,
    pub idempotence: bool,
    pub fetch_wait_max_ms: u64,
    pub consumer_group: bool,
    pub flush_timeout: Duration,
    pub drain_timeout: Duration,
    pub disk_probe: Option<DiskProbeConfig>,
    pub show_progress: bool,
}

/// Counters and flags shared by every worker thread.
pub struct RunShared {
    pub clock: RunClock,
    /// Written into every payload so consumers skip messages from other runs.
    pub run_id: u64,
    pub start_producing: AtomicBool,
    pub stop_producing: AtomicBool,
    pub producers_ready: AtomicUsize,
    pub stop_consuming: AtomicBool,
    pub consumers_ready: AtomicUsize,
    pub acked_msgs: AtomicU64,
    pub last_acked_ns: AtomicU64,
    pub consumed_msgs: AtomicU64,
    pub consumed_bytes: AtomicU64,
    /// Messages read that this run did not produce (earlier runs, other clients).
    pub foreign_msgs: AtomicU64,
    pub last_consumed_ns: AtomicU64,
    pub send_errors: AtomicU64,
    pub delivery_errors: AtomicU64,
    pub consume_errors: AtomicU64,
    pub client_errors: AtomicU64,
    first_error: FirstError,
}

impl RunShared {
    fn new() -> Self {
        Self {
            clock: RunClock::start(),
            run_id: new_run_id(),
            start_producing: AtomicBool::new(false),
            stop_producing: AtomicBool::new(false),
            producers_ready: AtomicUsize::new(0),
            stop_consuming: AtomicBool::new(false),
            consumers_ready: AtomicUsize::new(0),
            acked_msgs: AtomicU64::new(0),
            last_acked_ns: AtomicU64::new(0),
            consumed_msgs: AtomicU64::new(0),
            consumed_bytes: AtomicU64::new(0),
            foreign_msgs: AtomicU64::new(0),
            last_consumed_ns: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            delivery_errors: AtomicU64::new(0),
            consume_errors: AtomicU64::new(0),
            client_errors: AtomicU64::new(0),
            first_error: FirstError::default(),
        }
    }

    pub fn record_first_error(&self, message: String) {
        self.first_error.record(message);
    }

    pub fn record_client_error(&self, error: &KafkaError, reason: &str) {
        self.client_errors.fetch_add(1, Ordering::Relaxed);
        self.record_first_error(format!("client: {error}: {reason}"));
    }

    fn error_counts(&self) -> ErrorCounts {
        ErrorCounts {
            send_errors: self.send_errors.load(Ordering::Relaxed),
            delivery_errors: self.delivery_errors.load(Ordering::Relaxed),
            consume_errors: self.consume_errors.load(Ordering::Relaxed),
            client_errors: self.client_errors.load(Ordering::Relaxed),
            first_error: self.first_error.get(),
        }
    }
}

pub fn run(config: &KafkaLoadConfig) -> Result<KafkaReport> {
    ensure!(
        config.message_bytes >= PAYLOAD_HEADER_BYTES,
        "--message-bytes must be at least {PAYLOAD_HEADER_BYTES} (send timestamp and run id)"
    );
    ensure!(
        config.producers > 0 || config.consumers > 0,
        "need at least one producer or consumer"
    );

    // Probe first, while the broker is idle, so the report compares against the same disk state.
    let disk_probe = config
        .disk_probe
        .as_ref()
        .map(disk_probe::run)
        .transpose()
        .context("disk probe")?;

    if config.create_topic {
        create_topic(config)?;
    }
    let partitions = wait_for_topic_partitions(config)?;
    if partitions != config.partitions {
        eprintln!(
            "note: topic {} has {partitions} partitions (--partitions {})",
            config.topic, config.partitions
        );
    }

    let shared = Arc::new(RunShared::new());
    let consumer_handles = start_consumers(config, partitions, &shared)?;
    wait_for_consumers(config, &shared)?;

    let producer_handles = start_producers(config, partitions, &shared)?;
    wait_for_producers(config, &shared);
    let produce_started = Instant::now();
    let produce_started_ns = shared.clock.now_ns();
    shared.start_producing.store(true, Ordering::SeqCst);
    progress::show_rates(
        config.duration,
        produce_started,
        config.show_progress,
        "produced",
        || ProgressCounts {
            acked_msgs: shared.acked_msgs.load(Ordering::Relaxed),
            consumed_msgs: shared.consumed_msgs.load(Ordering::Relaxed),
            errors: shared.error_counts().total(),
        },
    );
    shared.stop_producing.store(true, Ordering::SeqCst);

    let mut ack_latency_us = latency_histogram_us();
    for handle in producer_handles {
        match join_worker(handle) {
            Ok(outcome) => ack_latency_us.add(&outcome.ack_latency_us)?,
            Err(error) => shared.record_first_error(format!("producer: {error:#}")),
        }
    }
    let produced_msgs = shared.acked_msgs.load(Ordering::SeqCst);
    let last_acked_ns = shared.last_acked_ns.load(Ordering::SeqCst);
    let produce_secs = last_acked_ns.saturating_sub(produce_started_ns) as f64 / 1e9;

    // Give consumers until the drain timeout to catch up with everything acknowledged.
    let drain_started = Instant::now();
    while config.consumers > 0
        && shared.consumed_msgs.load(Ordering::SeqCst) < produced_msgs
        && drain_started.elapsed() < config.drain_timeout
    {
        thread::sleep(Duration::from_millis(10));
    }
    shared.stop_consuming.store(true, Ordering::SeqCst);

    let mut end_to_end_latency_us = latency_histogram_us();
    for handle in consumer_handles {
        match join_worker(handle) {
            Ok(outcome) => end_to_end_latency_us.add(&outcome.end_to_end_latency_us)?,
            Err(error) => shared.record_first_error(format!("consumer: {error:#}")),
        }
    }
    let consumed_msgs = shared.consumed_msgs.load(Ordering::SeqCst);
    let last_consumed_ns = shared.last_consumed_ns.load(Ordering::SeqCst);
    let consume_secs = last_consumed_ns.saturating_sub(produce_started_ns) as f64 / 1e9;

    Ok(KafkaReport {
        settings: KafkaRunSettings {
            bootstrap: config.bootstrap.clone(),
            topic: config.topic.clone(),
            partitions,
            producers: config.producers,
            consumers: config.consumers,
            message_bytes: config.message_bytes,
            acks: config.acks.clone(),
            rate_msgs_per_sec: config.rate_msgs_per_sec,
            duration_secs: config.duration.as_secs(),
            linger_ms: config.linger_ms,
            batch_bytes: config.batch_bytes,
            compression: config.compression.clone(),
            idempotence: config.idempotence,
            consumer_group: config.consumer_group,
        },
        disk_probe,
        produced_msgs,
        produce_secs,
        produce_ack: LatencySummary::from_histogram(&ack_latency_us),
        consumed_msgs,
        consumed_bytes: shared.consumed_bytes.load(Ordering::SeqCst),
        consume_secs,
        end_to_end: LatencySummary::from_histogram(&end_to_end_latency_us),
        foreign_msgs: shared.foreign_msgs.load(Ordering::SeqCst),
        missing_msgs: if config.consumers > 0 {
            produced_msgs.saturating_sub(consumed_msgs)
        } else {
            0
        },
        errors: shared.error_counts(),
    })
}

fn base_client_config(config: &KafkaLoadConfig) -> ClientConfig {
    let mut client_config = ClientConfig::new();
    client_config
        .set("bootstrap.servers", &config.bootstrap)
        .set("client.id", "sluice-bench")
        // Latency is what is measured; do not let Nagle hold back small requests.
        .set("socket.nagle.disable", "true");
    client_config
}

fn producer_client_config(config: &KafkaLoadConfig) -> ClientConfig {
    let mut client_config = base_client_config(config);
    client_config
        .set("acks", &config.acks)
        .set("linger.ms", config.linger_ms.to_string())
        .set("batch.size", config.batch_bytes.to_string())
        // Let batch.size, not the message count, bound a batch of small messages.
        .set("batch.num.messages", "1000000")
        // The local queue bounds the messages in flight per producer.
        .set(
            "queue.buffering.max.messages",
            config.queue_msgs_max.to_string(),
        )
        .set(
            "queue.buffering.max.kbytes",
            config.queue_kib_max.to_string(),
        )
        .set("compression.codec", &config.compression)
        .set("enable.idempotence", config.idempotence.to_string())
        // Bounded: a message not acknowledged by then fails instead of being retried forever.
        .set(
            "message.timeout.ms",
            (config.duration + config.flush_timeout)
                .as_millis()
                .to_string(),
        );
    client_config
}

fn consumer_client_config(config: &KafkaLoadConfig, run_id: &str) -> ClientConfig {
    let mut client_config = base_client_config(config);
    client_config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "latest")
        .set("fetch.min.bytes", "1")
        .set("fetch.wait.max.ms", config.fetch_wait_max_ms.to_string())
        // librdkafka needs a group even for assign(); a fresh one per run means no committed
        // offsets or old members interfere. Without --consumer-group it never joins it.
        .set("group.id", format!("sluice-bench-{run_id}"));
    client_config
}

fn create_topic(config: &KafkaLoadConfig) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_client_config(config)
        .create()
        .context("creating admin client")?;
    let new_topic = NewTopic::new(&config.topic, config.partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(TOPIC_READY_TIMEOUT));
    // The admin future needs an executor; a single-threaded runtime is enough for one request.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = runtime
        .block_on(async {
            tokio::time::timeout(
                TOPIC_READY_TIMEOUT,
                admin.create_topics([&new_topic], &options),
            )
            .await
        })
        .map_err(|_| anyhow!("CreateTopics timed out after {TOPIC_READY_TIMEOUT:?}"))?
        .context("CreateTopics")?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => bail!("creating topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// Returns the topic's partition count once metadata shows every partition with a leader.
fn wait_for_topic_partitions(config: &KafkaLoadConfig) -> Result<i32> {
    let client: BaseConsumer = base_client_config(config)
        .create()
        .context("creating metadata client")?;
    let started = Instant::now();
    let mut last_problem = String::new();
    while started.elapsed() < TOPIC_READY_TIMEOUT {
        match client.fetch_metadata(Some(&config.topic), Duration::from_secs(5)) {
            Ok(metadata) => {
                if let Some(topic) = metadata.topics().iter().find(|t| t.name() == config.topic) {
                    let partitions = topic.partitions();
                    let all_led = partitions.iter().all(|p| p.leader() >= 0);
                    if topic.error().is_none() && !partitions.is_empty() && all_led {
                        return Ok(partitions.len() as i32);
                    }
                    last_problem = format!(
                        "topic error {:?}, {} partitions",
                        topic.error(),
                        partitions.len()
                    );
                }
            }
            Err(error) => last_problem = error.to_string(),
        }
        thread::sleep(Duration::from_millis(200));
    }
    bail!(
        "topic {} not ready within {TOPIC_READY_TIMEOUT:?} ({last_problem}); pass --create-topic?",
        config.topic
    )
}

fn start_consumers(
    config: &KafkaLoadConfig,
    partitions: i32,
    shared: &Arc<RunShared>,
) -> Result<Vec<JoinHandle<Result<consumer_worker::ConsumerOutcome>>>> {
    let run_id = format!("{:016x}", shared.run_id);
    (0..config.consumers)
        .map(|consumer_index| {
            let settings = ConsumerSettings {
                consumer_index,
                topic: config.topic.clone(),
                // Partition p goes to consumer p mod consumers.
                assigned_partitions: (0..partitions)
                    .filter(|p| *p as usize % config.consumers == consumer_index)
                    .collect(),
                consumer_group: config.consumer_group,
                partitions,
                group_assignment_timeout: CONSUMERS_READY_TIMEOUT,
            };
            let client_config = consumer_client_config(config, &run_id);
            let shared = Arc::clone(shared);
            thread::Builder::new()
                .name(format!("consumer-{consumer_index}"))
                .spawn(move || consumer_worker::run(client_config, settings, shared))
                .context("spawning consumer thread")
        })
        .collect()
}

fn wait_for_consumers(config: &KafkaLoadConfig, shared: &RunShared) -> Result<()> {
    let started = Instant::now();
    while shared.consumers_ready.load(Ordering::SeqCst) < config.consumers {
        if started.elapsed() > CONSUMERS_READY_TIMEOUT {
            shared.stop_consuming.store(true, Ordering::SeqCst);
            bail!("consumers not ready within {CONSUMERS_READY_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
    if config.consumer_group {
        // Members join one by one; give the last rebalance time to settle before producing.
        thread::sleep(Duration::from_secs(1));
    }
    Ok(())
}

/// Waits for producers to connect, so connection setup does not count as latency. A producer
/// that fails to set up still reports ready; its error is in the report.
fn wait_for_producers(config: &KafkaLoadConfig, shared: &RunShared) {
    let started = Instant::now();
    while shared.producers_ready.load(Ordering::SeqCst) < config.producers
        && started.elapsed() < PRODUCERS_READY_TIMEOUT
    {
        thread::sleep(Duration::from_millis(10));
    }
}

fn start_producers(
    config: &KafkaLoadConfig,
    partitions: i32,
    shared: &Arc<RunShared>,
) -> Result<Vec<JoinHandle<Result<producer_worker::ProducerOutcome>>>> {
    let producers = config.producers.max(1) as f64;
    (0..config.producers)
        .map(|producer_index| {
            let settings = ProducerSettings {
                producer_index,
                topic: config.topic.clone(),
                partitions,
                message_bytes: config.message_bytes,
                keys: config.keys,
                rate_msgs_per_sec: config.rate_msgs_per_sec as f64 / producers,
                flush_timeout: config.flush_timeout,
            };
            let client_config = producer_client_config(config);
            let shared = Arc::clone(shared);
            thread::Builder::new()
                .name(format!("producer-{producer_index}"))
                .spawn(move || producer_worker::run(client_config, settings, shared))
                .context("spawning producer thread")
        })
        .collect()
}

fn join_worker<T>(handle: JoinHandle<Result<T>>) -> Result<T> {
    handle
        .join()
        .map_err(|_| anyhow!("worker thread panicked"))?
}
