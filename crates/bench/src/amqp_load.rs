//! The `amqp` subcommand: deletes and re-declares a durable queue, starts consumers (basic.qos
//! prefetch, basic.consume with manual acks), runs paced or unpaced publishers in confirm mode
//! for a fixed time, waits for the outstanding confirms, drains, and reports.
//!
//! Every publisher and consumer has its own connection and channel. The workers are tasks on a
//! small tokio runtime; lapin runs each connection's socket I/O on a thread of its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::amqp_consumer::{self, ConsumerOutcome, ConsumerSettings};
use crate::amqp_publisher::{self, PublisherOutcome, PublisherSettings};
use crate::disk_probe::{self, DiskProbeConfig};
use crate::payload_header::SEQUENCED_HEADER_BYTES;
use crate::progress::{self, ProgressCounts};
use crate::report::{
    latency_histogram_us, AmqpErrorCounts, AmqpReport, AmqpRunSettings, LatencySummary,
};
use crate::run_state::{new_run_id, FirstError, RunClock};
use crate::seq_set::SeqSet;

/// How long a connection may take from TCP connect to an open channel.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long closing a connection may take at the end of a run.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
const WORKERS_READY_TIMEOUT: Duration = Duration::from_secs(30);
const RUNTIME_WORKER_THREADS: usize = 2;

#[derive(Debug, Clone)]
pub struct AmqpLoadConfig {
    pub url: String,
    pub queue: String,
    pub publishers: usize,
    pub consumers: usize,
    pub message_bytes: usize,
    /// delivery_mode 2 (persistent) or 1 (transient).
    pub persistent: bool,
    pub duration: Duration,
    /// Total across publishers; 0 is unlimited.
    pub rate_msgs_per_sec: u64,
    /// Unconfirmed publishes each publisher may have outstanding.
    pub max_in_flight: usize,
    pub prefetch: u16,
    /// Acknowledge every message (1) or every Nth with `multiple`.
    pub ack_every: u16,
    /// How long publishers may wait for outstanding confirms after the run.
    pub confirm_timeout: Duration,
    /// How long consumers may take to catch up with every confirmed message.
    pub drain_timeout: Duration,
    pub disk_probe: Option<DiskProbeConfig>,
    pub show_progress: bool,
    pub label: Option<String>,
}

/// Counters and signals shared by every publisher and consumer task.
pub struct AmqpShared {
    pub clock: RunClock,
    /// Written into every payload so consumers tell this run's messages from anything else.
    pub run_id: u64,
    pub publishers_ready: AtomicUsize,
    pub consumers_ready: AtomicUsize,
    /// Publishers wait for this to turn true, so connection setup is not measured.
    pub start_publishing: watch::Sender<bool>,
    pub stop_publishing: AtomicBool,
    pub stop_consuming: watch::Sender<bool>,
    pub published_msgs: AtomicU64,
    pub confirmed_msgs: AtomicU64,
    pub nacked_msgs: AtomicU64,
    pub last_confirmed_ns: AtomicU64,
    /// This run's deliveries, duplicates included.
    pub consumed_msgs: AtomicU64,
    /// This run's deliveries of a sequence number the consumer had not seen before.
    pub consumed_first_msgs: AtomicU64,
    pub consumed_bytes: AtomicU64,
    pub foreign_msgs: AtomicU64,
    pub last_consumed_ns: AtomicU64,
    pub publish_errors: AtomicU64,
    pub confirm_errors: AtomicU64,
    pub consume_errors: AtomicU64,
    pub ack_errors: AtomicU64,
    pub client_errors: AtomicU64,
    pub first_error: FirstError,
}

impl AmqpShared {
    fn new() -> Self {
        Self {
            clock: RunClock::start(),
            run_id: new_run_id(),
            publishers_ready: AtomicUsize::new(0),
            consumers_ready: AtomicUsize::new(0),
            start_publishing: watch::Sender::new(false),
            stop_publishing: AtomicBool::new(false),
            stop_consuming: watch::Sender::new(false),
            published_msgs: AtomicU64::new(0),
            confirmed_msgs: AtomicU64::new(0),
            nacked_msgs: AtomicU64::new(0),
            last_confirmed_ns: AtomicU64::new(0),
            consumed_msgs: AtomicU64::new(0),
            consumed_first_msgs: AtomicU64::new(0),
            consumed_bytes: AtomicU64::new(0),
            foreign_msgs: AtomicU64::new(0),
            last_consumed_ns: AtomicU64::new(0),
            publish_errors: AtomicU64::new(0),
            confirm_errors: AtomicU64::new(0),
            consume_errors: AtomicU64::new(0),
            ack_errors: AtomicU64::new(0),
            client_errors: AtomicU64::new(0),
            first_error: FirstError::default(),
        }
    }

    /// Counts one error of `counter`'s kind and keeps the first message.
    pub fn record_error(&self, counter: &AtomicU64, message: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.first_error.record(message);
    }

    fn error_counts(&self) -> AmqpErrorCounts {
        AmqpErrorCounts {
            publish_errors: self.publish_errors.load(Ordering::Relaxed),
            confirm_errors: self.confirm_errors.load(Ordering::Relaxed),
            consume_errors: self.consume_errors.load(Ordering::Relaxed),
            ack_errors: self.ack_errors.load(Ordering::Relaxed),
            client_errors: self.client_errors.load(Ordering::Relaxed),
            first_error: self.first_error.get(),
        }
    }
}

pub fn run(config: &AmqpLoadConfig) -> Result<AmqpReport> {
    ensure!(
        config.message_bytes >= SEQUENCED_HEADER_BYTES,
        "--size must be at least {SEQUENCED_HEADER_BYTES} (send time, run id, publisher, sequence)"
    );
    ensure!(config.publishers > 0, "need at least one publisher");
    ensure!(
        config.max_in_flight > 0,
        "--max-in-flight must be at least 1"
    );
    ensure!(config.ack_every > 0, "--ack-every must be at least 1");
    ensure!(
        config.prefetch == 0 || config.ack_every <= config.prefetch,
        "--ack-every above --prefetch would stall: the broker stops delivering at the prefetch"
    );

    // Probe first, while the broker is idle, so the report compares against the same disk state.
    let disk_probe = config
        .disk_probe
        .as_ref()
        .map(disk_probe::run)
        .transpose()
        .context("disk probe")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RUNTIME_WORKER_THREADS)
        .thread_name("amqp-bench")
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let (admin_connection, admin_channel) = runtime.block_on(prepare_queue(config))?;

    let shared = Arc::new(AmqpShared::new());
    let consumer_handles = start_consumers(&runtime, config, &shared);
    wait_until_ready(&shared.consumers_ready, config.consumers, "consumers")?;
    let publisher_handles = start_publishers(&runtime, config, &shared);
    wait_until_ready(&shared.publishers_ready, config.publishers, "publishers")?;

    let publish_started = Instant::now();
    let publish_started_ns = shared.clock.now_ns();
    shared.start_publishing.send_replace(true);
    progress::show_rates(
        config.duration,
        publish_started,
        config.show_progress,
        "confirmed",
        || ProgressCounts {
            acked_msgs: shared.confirmed_msgs.load(Ordering::Relaxed),
            consumed_msgs: shared.consumed_msgs.load(Ordering::Relaxed),
            errors: shared.error_counts().total(),
        },
    );
    shared.stop_publishing.store(true, Ordering::SeqCst);
    let publish_stopped_ns = shared.clock.now_ns();

    // Each publisher returns once its confirms are in or the confirm timeout has passed.
    let mut confirm_latency_us = latency_histogram_us();
    let mut confirmed_by_publisher = vec![SeqSet::default(); config.publishers];
    for (index, outcome) in join_all(&runtime, &shared, publisher_handles, "publisher") {
        let PublisherOutcome {
            confirm_latency_us: latencies,
            confirmed,
        } = outcome;
        confirm_latency_us.add(&latencies)?;
        confirmed_by_publisher[index] = confirmed;
    }
    let published_msgs = shared.published_msgs.load(Ordering::SeqCst);
    let confirmed_msgs = shared.confirmed_msgs.load(Ordering::SeqCst);
    let nacked_msgs = shared.nacked_msgs.load(Ordering::SeqCst);
    let last_confirmed_ns = shared.last_confirmed_ns.load(Ordering::SeqCst);

    // Give consumers until the drain timeout to receive everything confirmed.
    let drain_started = Instant::now();
    while config.consumers > 0
        && shared.consumed_first_msgs.load(Ordering::SeqCst) < confirmed_msgs
        && drain_started.elapsed() < config.drain_timeout
    {
        thread::sleep(Duration::from_millis(10));
    }
    shared.stop_consuming.send_replace(true);

    let mut end_to_end_latency_us = latency_histogram_us();
    let mut seen_by_publisher = vec![SeqSet::default(); config.publishers];
    let mut seen_by_another_consumer = 0;
    for (_, outcome) in join_all(&runtime, &shared, consumer_handles, "consumer") {
        end_to_end_latency_us.add(&outcome.end_to_end_latency_us)?;
        for (all, seen) in seen_by_publisher.iter_mut().zip(&outcome.seen_by_publisher) {
            seen_by_another_consumer += all.merge(seen);
        }
    }
    // Deliveries a consumer had already seen itself, plus the ones another consumer also got.
    let duplicate_msgs = shared.consumed_msgs.load(Ordering::SeqCst)
        - shared.consumed_first_msgs.load(Ordering::SeqCst)
        + seen_by_another_consumer;
    let (missing_msgs, unconfirmed_delivered_msgs) = if config.consumers > 0 {
        confirmed_by_publisher.iter().zip(&seen_by_publisher).fold(
            (0, 0),
            |(missing, unconfirmed), (confirmed, seen)| {
                (
                    missing + confirmed.count_missing_from(seen),
                    unconfirmed + seen.count_missing_from(confirmed),
                )
            },
        )
    } else {
        (0, 0)
    };

    let left_in_queue = runtime.block_on(async {
        let left = queue_message_count(&admin_channel, &config.queue).await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, admin_connection.close(200, "OK".into())).await;
        left
    });
    runtime.shutdown_timeout(Duration::from_secs(1));

    let consumed_msgs = shared.consumed_msgs.load(Ordering::SeqCst);
    let last_consumed_ns = shared.last_consumed_ns.load(Ordering::SeqCst);
    let secs_since_start = |ns: u64| ns.saturating_sub(publish_started_ns) as f64 / 1e9;
    Ok(AmqpReport {
        settings: AmqpRunSettings {
            url: mask_password(&config.url),
            queue: config.queue.clone(),
            publishers: config.publishers,
            consumers: config.consumers,
            message_bytes: config.message_bytes,
            persistent: config.persistent,
            max_in_flight: config.max_in_flight,
            prefetch: config.prefetch,
            ack_every: config.ack_every,
            rate_msgs_per_sec: config.rate_msgs_per_sec,
            duration_secs: config.duration.as_secs(),
            label: config.label.clone(),
        },
        disk_probe,
        published_msgs,
        publish_secs: secs_since_start(publish_stopped_ns),
        confirmed_msgs,
        confirm_secs: secs_since_start(last_confirmed_ns),
        nacked_msgs,
        unconfirmed_msgs: published_msgs
            .saturating_sub(confirmed_msgs + nacked_msgs)
            .saturating_sub(shared.publish_errors.load(Ordering::SeqCst)),
        confirm: LatencySummary::from_histogram(&confirm_latency_us),
        consumed_msgs,
        consumed_bytes: shared.consumed_bytes.load(Ordering::SeqCst),
        consume_secs: secs_since_start(last_consumed_ns),
        end_to_end: LatencySummary::from_histogram(&end_to_end_latency_us),
        duplicate_msgs,
        missing_msgs,
        unconfirmed_delivered_msgs,
        foreign_msgs: shared.foreign_msgs.load(Ordering::SeqCst),
        left_in_queue,
        errors: shared.error_counts(),
    })
}

/// Opens a connection named `name` (shown in the broker's connection list).
pub async fn connect(url: &str, name: String) -> Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, properties))
        .await
        .map_err(|_| {
            anyhow!(
                "no AMQP handshake with {} within {CONNECT_TIMEOUT:?}",
                mask_password(url)
            )
        })?
        .with_context(|| format!("connecting to {}", mask_password(url)))
}

/// Deletes the queue (so every run starts from an empty one with the same settings) and declares
/// it durable again. Returns the admin connection, kept for the end-of-run queue count.
async fn prepare_queue(config: &AmqpLoadConfig) -> Result<(Connection, Channel)> {
    let connection = connect(&config.url, "sluice-bench-admin".to_string()).await?;
    let mut channel = connection
        .create_channel()
        .await
        .context("opening the admin channel")?;
    if channel
        .queue_delete(config.queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .is_err()
    {
        // A broker may answer deleting a missing queue with a channel error (RabbitMQ answers
        // delete-ok); the channel is closed then, so open another.
        channel = connection
            .create_channel()
            .await
            .context("reopening the admin channel")?;
    }
    let queue = channel
        .queue_declare(
            config.queue.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("declaring durable queue {}", config.queue))?;
    if queue.message_count() > 0 {
        channel
            .queue_purge(config.queue.as_str().into(), QueuePurgeOptions::default())
            .await
            .with_context(|| format!("purging queue {}", config.queue))?;
    }
    Ok((connection, channel))
}

/// Ready messages in the queue, from a passive declare; `None` if the broker did not say.
async fn queue_message_count(channel: &Channel, queue: &str) -> Option<u32> {
    let declare = channel.queue_declare(
        queue.into(),
        QueueDeclareOptions::durable().passive(),
        FieldTable::default(),
    );
    match tokio::time::timeout(CLOSE_TIMEOUT, declare).await {
        Ok(Ok(queue)) => Some(queue.message_count()),
        _ => None,
    }
}

fn start_consumers(
    runtime: &Runtime,
    config: &AmqpLoadConfig,
    shared: &Arc<AmqpShared>,
) -> Vec<JoinHandle<Result<ConsumerOutcome>>> {
    (0..config.consumers)
        .map(|index| {
            let settings = ConsumerSettings {
                index,
                url: config.url.clone(),
                queue: config.queue.clone(),
                prefetch: config.prefetch,
                ack_every: config.ack_every,
                publishers: config.publishers,
            };
            runtime.spawn(amqp_consumer::run(settings, Arc::clone(shared)))
        })
        .collect()
}

fn start_publishers(
    runtime: &Runtime,
    config: &AmqpLoadConfig,
    shared: &Arc<AmqpShared>,
) -> Vec<JoinHandle<Result<PublisherOutcome>>> {
    let publishers = config.publishers as f64;
    (0..config.publishers)
        .map(|index| {
            let settings = PublisherSettings {
                index,
                url: config.url.clone(),
                queue: config.queue.clone(),
                message_bytes: config.message_bytes,
                persistent: config.persistent,
                max_in_flight: config.max_in_flight,
                rate_msgs_per_sec: config.rate_msgs_per_sec as f64 / publishers,
                confirm_timeout: config.confirm_timeout,
            };
            runtime.spawn(amqp_publisher::run(settings, Arc::clone(shared)))
        })
        .collect()
}

/// Waits until `expected` workers have connected (a worker whose setup failed counts too; its
/// error surfaces when it is joined). A worker that takes longer fails the run.
fn wait_until_ready(ready: &AtomicUsize, expected: usize, what: &str) -> Result<()> {
    let started = Instant::now();
    while ready.load(Ordering::SeqCst) < expected {
        if started.elapsed() > WORKERS_READY_TIMEOUT {
            bail!("{what} not connected within {WORKERS_READY_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Joins workers in order; a failed worker is counted as a client error and left out.
fn join_all<T>(
    runtime: &Runtime,
    shared: &AmqpShared,
    handles: Vec<JoinHandle<Result<T>>>,
    what: &str,
) -> Vec<(usize, T)> {
    runtime.block_on(async {
        let mut outcomes = Vec::with_capacity(handles.len());
        for (index, handle) in handles.into_iter().enumerate() {
            match handle.await {
                Ok(Ok(outcome)) => outcomes.push((index, outcome)),
                Ok(Err(error)) => {
                    shared.record_error(&shared.client_errors, format!("{what} {index}: {error:#}"))
                }
                Err(error) => shared.record_error(
                    &shared.client_errors,
                    format!("{what} {index} panicked: {error}"),
                ),
            }
        }
        outcomes
    })
}

/// Polls `future` once. lapin queues a request's frames on the first poll and the rest of the
/// future only waits for the I/O thread to have written them, so this starts a publish or an ack
/// without waiting for the socket: the caller keeps the future to finish it later, or drops it.
pub async fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *future).poll(cx))).await
}

/// `amqp://user:secret@host/` becomes `amqp://user:***@host/`, for reports and errors.
pub fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_masked() {
        assert_eq!(
            mask_password("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            mask_password("amqp://127.0.0.1:5672/%2f"),
            "amqp://127.0.0.1:5672/%2f"
        );
        assert_eq!(mask_password("amqp://user@host"), "amqp://user@host");
    }
}
