//! One consumer thread: reads the topic from the end offsets at start and records end-to-end
//! latency from the send timestamp each producer writes into the payload header.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;

use crate::kafka_load::RunShared;
use crate::payload_header::PayloadHeader;
use crate::report::latency_histogram_us;

const POLL_TIMEOUT: Duration = Duration::from_millis(50);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub consumer_index: usize,
    pub topic: String,
    /// Partitions this consumer reads when assigning directly; ignored in group mode.
    pub assigned_partitions: Vec<i32>,
    /// Subscribe through the group coordinator instead of assigning partitions directly.
    pub consumer_group: bool,
    /// Partition count of the topic, to know when a group member can expect no assignment.
    pub partitions: i32,
    pub group_assignment_timeout: Duration,
}

pub struct ConsumerOutcome {
    pub end_to_end_latency_us: Histogram<u64>,
}

struct ErrorCountingContext {
    shared: Arc<RunShared>,
}

impl ClientContext for ErrorCountingContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.shared.record_client_error(&error, reason);
    }
}

impl ConsumerContext for ErrorCountingContext {}

type LoadConsumer = BaseConsumer<ErrorCountingContext>;

/// Runs the consumer until `stop_consuming` is set. Marks itself ready (even when setup fails, so
/// the run never waits on a dead consumer) once it reads from the offsets producers will append at.
pub fn run(
    client_config: ClientConfig,
    settings: ConsumerSettings,
    shared: Arc<RunShared>,
) -> Result<ConsumerOutcome> {
    let setup = set_up(client_config, &settings, &shared);
    shared.consumers_ready.fetch_add(1, Ordering::SeqCst);
    let consumer = setup?;

    let mut end_to_end_latency_us = latency_histogram_us();
    while !shared.stop_consuming.load(Ordering::Relaxed) {
        match consumer.poll(POLL_TIMEOUT) {
            None => {}
            Some(Ok(message)) => {
                let consumed_ns = shared.clock.now_ns();
                let payload = message.payload().unwrap_or_default();
                match PayloadHeader::read_from(payload) {
                    Some(header) if header.run_id == shared.run_id => {
                        end_to_end_latency_us
                            .saturating_record(consumed_ns.saturating_sub(header.sent_ns) / 1000);
                    }
                    _ => {
                        shared.foreign_msgs.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
                shared.consumed_msgs.fetch_add(1, Ordering::Relaxed);
                shared
                    .consumed_bytes
                    .fetch_add(payload.len() as u64, Ordering::Relaxed);
                shared
                    .last_consumed_ns
                    .fetch_max(consumed_ns, Ordering::Relaxed);
            }
            Some(Err(error)) => {
                shared.consume_errors.fetch_add(1, Ordering::Relaxed);
                shared.record_first_error(format!("consume: {error}"));
            }
        }
    }
    Ok(ConsumerOutcome {
        end_to_end_latency_us,
    })
}

fn set_up(
    client_config: ClientConfig,
    settings: &ConsumerSettings,
    shared: &Arc<RunShared>,
) -> Result<LoadConsumer> {
    let consumer: LoadConsumer = client_config
        .create_with_context(ErrorCountingContext {
            shared: Arc::clone(shared),
        })
        .context("creating consumer")?;

    if settings.consumer_group {
        consumer
            .subscribe(&[&settings.topic])
            .context("subscribing")?;
        wait_for_group_assignment(&consumer, settings)?;
    } else {
        // Start at the current end offsets, read before any producer starts, so the run sees
        // every message it produces and nothing older.
        let mut assignment = TopicPartitionList::new();
        for &partition in &settings.assigned_partitions {
            let (_, offset_high) = consumer
                .fetch_watermarks(&settings.topic, partition, METADATA_TIMEOUT)
                .with_context(|| format!("fetching end offset of partition {partition}"))?;
            assignment.add_partition_offset(
                &settings.topic,
                partition,
                Offset::Offset(offset_high),
            )?;
        }
        consumer
            .assign(&assignment)
            .context("assigning partitions")?;
        // Let the fetchers start so the first messages do not wait on connection setup. Anything
        // read here was written by someone else before the run started.
        let _ = consumer.poll(Duration::from_millis(100));
    }
    Ok(consumer)
}

fn wait_for_group_assignment(consumer: &LoadConsumer, settings: &ConsumerSettings) -> Result<()> {
    // A member beyond the partition count gets nothing, so it has nothing to wait for.
    if settings.consumer_index >= settings.partitions as usize {
        return Ok(());
    }
    let started = Instant::now();
    loop {
        // Messages cannot arrive yet: producers start after every consumer is ready.
        let _ = consumer.poll(Duration::from_millis(100));
        if consumer
            .assignment()
            .map(|a| a.count() > 0)
            .unwrap_or(false)
        {
            return Ok(());
        }
        if started.elapsed() > settings.group_assignment_timeout {
            bail!(
                "consumer {} got no group assignment within {:?}",
                settings.consumer_index,
                settings.group_assignment_timeout
            );
        }
    }
}
