//! One producer thread: a `BaseProducer` that this thread both feeds and polls, so delivery
//! callbacks (and their produce->ack latencies) are handled without a second thread.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig,
};
use rdkafka::ClientContext;

use crate::kafka_load::RunShared;
use crate::payload_header::PayloadHeader;
use crate::report::latency_histogram_us;

/// Messages sent between polls when the queue has room; polling serves delivery callbacks.
const SENDS_PER_POLL: u64 = 256;
/// Upper bound on one paced burst, so a stalled thread does not flood the queue in one go.
const PACED_BURST_MSGS_MAX: u64 = 1024;
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct ProducerSettings {
    pub producer_index: usize,
    pub topic: String,
    pub partitions: i32,
    pub message_bytes: usize,
    /// Every message gets a distinct key.
    pub keys: bool,
    /// This producer's share of the total rate; 0 means as fast as the broker takes them.
    pub rate_msgs_per_sec: f64,
    pub flush_timeout: Duration,
}

pub struct ProducerOutcome {
    pub ack_latency_us: Histogram<u64>,
}

/// Receives delivery reports: the opaque is the send time in nanoseconds on the run clock.
struct DeliveryContext {
    shared: Arc<RunShared>,
    ack_latency_us: Mutex<Histogram<u64>>,
}

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.shared.record_client_error(&error, reason);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, delivery_result: &DeliveryResult<'_>, sent_ns: usize) {
        match delivery_result {
            Ok(_) => {
                let acked_ns = self.shared.clock.now_ns();
                let latency_us = acked_ns.saturating_sub(sent_ns as u64) / 1000;
                self.ack_latency_us
                    .lock()
                    .expect("ack histogram lock poisoned")
                    .saturating_record(latency_us);
                self.shared.acked_msgs.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .last_acked_ns
                    .fetch_max(acked_ns, Ordering::Relaxed);
            }
            Err((error, _)) => {
                self.shared.delivery_errors.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .record_first_error(format!("delivery failed: {error}"));
            }
        }
    }
}

/// Runs one producer from `start_producing` until `stop_producing`, then flushes. Reports ready
/// (even when setup fails, so the run never waits on a dead producer) once connected.
pub fn run(
    client_config: ClientConfig,
    settings: ProducerSettings,
    shared: Arc<RunShared>,
) -> Result<ProducerOutcome> {
    let setup = set_up(client_config, &settings, &shared);
    shared.producers_ready.fetch_add(1, Ordering::SeqCst);
    let producer = setup?;
    while !shared.start_producing.load(Ordering::SeqCst) {
        if shared.stop_producing.load(Ordering::SeqCst) {
            break;
        }
        thread::sleep(Duration::from_millis(1));
    }

    // Random bytes would defeat compression entirely; a fixed pattern behind the timestamp is
    // what most load generators send.
    let mut key = Vec::new();
    let mut payload: Vec<u8> = (0..settings.message_bytes)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();

    let started = Instant::now();
    let mut sent_msgs: u64 = 0;
    let partitions = settings.partitions.max(1) as u64;
    // Spread producers over partitions so one producer per partition does not all hit partition 0.
    let partition_offset = settings.producer_index as u64;

    while !shared.stop_producing.load(Ordering::Relaxed) {
        let burst_msgs = if settings.rate_msgs_per_sec > 0.0 {
            let due_msgs = (started.elapsed().as_secs_f64() * settings.rate_msgs_per_sec) as u64;
            if sent_msgs >= due_msgs {
                producer.poll(Duration::ZERO);
                let next_due_secs = (sent_msgs + 1) as f64 / settings.rate_msgs_per_sec;
                let wait = Duration::from_secs_f64(next_due_secs)
                    .saturating_sub(started.elapsed())
                    .min(Duration::from_millis(1));
                thread::sleep(wait);
                continue;
            }
            (due_msgs - sent_msgs).min(PACED_BURST_MSGS_MAX)
        } else {
            SENDS_PER_POLL
        };

        for _ in 0..burst_msgs {
            let partition = ((sent_msgs + partition_offset) % partitions) as i32;
            if settings.keys {
                key.clear();
                key.extend_from_slice(
                    format!("p{}-{sent_msgs}", settings.producer_index).as_bytes(),
                );
            }
            if !send_one(&producer, &settings, &shared, &mut payload, &key, partition) {
                break;
            }
            sent_msgs += 1;
        }
        producer.poll(Duration::ZERO);
    }

    if let Err(error) = producer.flush(settings.flush_timeout) {
        shared.record_first_error(format!("producer flush: {error}"));
    }
    // Messages still queued after the flush timeout are purged; their delivery reports then
    // count them as delivery errors, keeping the run bounded in time.
    if producer.in_flight_count() > 0 {
        producer.purge(PurgeConfig::default().queue().inflight());
        let _ = producer.flush(Duration::from_millis(500));
    }
    let context = producer.context();
    let ack_latency_us = context
        .ack_latency_us
        .lock()
        .expect("ack histogram lock poisoned")
        .clone();
    Ok(ProducerOutcome { ack_latency_us })
}

fn set_up(
    client_config: ClientConfig,
    settings: &ProducerSettings,
    shared: &Arc<RunShared>,
) -> Result<BaseProducer<DeliveryContext>> {
    let context = DeliveryContext {
        shared: Arc::clone(shared),
        ack_latency_us: Mutex::new(latency_histogram_us()),
    };
    let producer: BaseProducer<DeliveryContext> = client_config
        .create_with_context(context)
        .context("creating producer")?;
    // Fetching metadata opens the connection to the partition leaders ahead of the first send.
    producer
        .client()
        .fetch_metadata(Some(&settings.topic), METADATA_TIMEOUT)
        .context("fetching topic metadata")?;
    Ok(producer)
}

/// How long a producer whose local queue is full sleeps before it serves delivery reports
/// and tries again.
const QUEUE_FULL_SLEEP: Duration = Duration::from_micros(200);

/// Serves the delivery reports already waiting (they free room), then sleeps briefly. Not
/// `poll` with a timeout: rdkafka's poll keeps polling until its deadline and rounds the time
/// left down to whole milliseconds, so its last millisecond (all of a 1 ms poll) is a busy
/// loop. That spin took a core from the brokers whenever the queue was full, most against the
/// slower cluster, where it doubled the benchmark's CPU per message.
fn wait_for_room(producer: &BaseProducer<DeliveryContext>) {
    producer.poll(Duration::ZERO);
    thread::sleep(QUEUE_FULL_SLEEP);
    producer.poll(Duration::ZERO);
}

/// Sends one message, waiting on a full local queue. Returns false when the run is stopping or
/// the message could not be queued.
fn send_one(
    producer: &BaseProducer<DeliveryContext>,
    settings: &ProducerSettings,
    shared: &RunShared,
    payload: &mut [u8],
    key: &[u8],
    partition: i32,
) -> bool {
    loop {
        let sent_ns = shared.clock.now_ns();
        PayloadHeader {
            sent_ns,
            run_id: shared.run_id,
        }
        .write_to(payload);
        // librdkafka copies the payload, so the buffer can be reused for the next message.
        let mut record =
            BaseRecord::<[u8], [u8], usize>::with_opaque_to(&settings.topic, sent_ns as usize)
                .payload(payload)
                .partition(partition);
        if settings.keys {
            record = record.key(key);
        }
        match producer.send(record) {
            Ok(()) => return true,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                // The local queue is the in-flight bound: wait for acknowledgements to drain it.
                wait_for_room(producer);
                if shared.stop_producing.load(Ordering::Relaxed) {
                    return false;
                }
            }
            Err((error, _)) => {
                shared.send_errors.fetch_add(1, Ordering::Relaxed);
                shared.record_first_error(format!("send: {error}"));
                producer.poll(Duration::from_millis(1));
                return false;
            }
        }
    }
}
