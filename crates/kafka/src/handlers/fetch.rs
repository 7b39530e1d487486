//! Fetch with long polling: answer as soon as `min_bytes` are readable, or when `max_wait_ms`
//! passes. Readable means below the high watermark, i.e. durable under `fsync=batch`.
//! Sessions (KIP-227) are kept around this handler, by `crate::fetch_session`.
//!
//! Bounds: a response carries at most min(request `max_bytes`, broker `fetch.max.bytes`) of
//! records and each partition at most its `partition_max_bytes`, except that the first
//! partition with data always gets its first batch whole so consumers progress (KIP-74). The
//! records read are charged to the shared memory budget until the response is written; a fetch
//! reads only what the budget has room for, and one fetch per connection holds a response at a
//! time (as Kafka, which reads one request of a connection at a time).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use kafka_protocol::ResponseError;
use sluice_broker::{AbortedTransaction, BrokerError, IsolationLevel, Partition};

use crate::connection::ResponseHold;
use crate::error_codes::broker_error_code;
use crate::RequestContext;

/// Upper bound on how long one fetch may park the connection.
const WAIT_MS_MAX: i32 = 30_000;
/// How long a fetch that found no room in the memory budget waits before looking again.
const MEMORY_RETRY_MS: u64 = 10;

/// (partition index, fetch offset, partition max bytes, the partition if it exists)
type FetchTarget = (i32, i64, i32, Option<Arc<Partition>>);

/// A requested topic: its name (v0-12) or id (v13+), and whether it exists here.
struct FetchTopicTarget {
    name: TopicName,
    id: uuid::Uuid,
    exists: bool,
    partitions: Vec<FetchTarget>,
}

/// The response, and what it holds of the memory budget until it is written.
pub async fn fetch(
    ctx: &RequestContext,
    version: i16,
    request: FetchRequest,
) -> (FetchResponse, ResponseHold) {
    // Waits for this connection's previous fetch response to be written.
    let mut hold = match &ctx.response_memory {
        Some(memory) => memory.fetch_slot().await,
        None => ResponseHold::default(),
    };
    // Resolve partitions once; unknown ones are answered with an error on every pass.
    let targets: Vec<FetchTopicTarget> = request
        .topics
        .iter()
        .map(|topic| {
            // From v13 on topics are named by id.
            let found = if version >= 13 {
                ctx.broker.topic_by_id(topic.topic_id)
            } else {
                ctx.broker.topic(topic.topic.as_str())
            };
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let partition = found.as_ref().and_then(|t| t.partition(p.partition));
                    (
                        p.partition,
                        p.fetch_offset,
                        p.partition_max_bytes,
                        partition,
                    )
                })
                .collect();
            FetchTopicTarget {
                name: topic.topic.clone(),
                id: topic.topic_id,
                exists: found.is_some(),
                partitions,
            }
        })
        .collect();

    let deadline =
        Instant::now() + Duration::from_millis(request.max_wait_ms.clamp(0, WAIT_MS_MAX) as u64);
    let requested_bytes_max = if request.max_bytes <= 0 {
        usize::MAX
    } else {
        request.max_bytes as usize
    };
    let response_bytes_max = requested_bytes_max.min(ctx.config.fetch_bytes_max);
    let min_bytes = request.min_bytes.max(0) as usize;
    // isolation_level exists from v4 on, which is our minimum.
    let isolation = if request.isolation_level == 1 {
        IsolationLevel::ReadCommitted
    } else {
        IsolationLevel::ReadUncommitted
    };
    loop {
        // Register interest before reading, so an append landing in between still wakes us.
        let data_ready = ctx.broker.data_ready().notified();
        tokio::pin!(data_ready);
        data_ready.as_mut().enable();

        // What this pass may read: the response bound, or less when the budget is short.
        let (reserved, response_bytes_max) = match &ctx.response_memory {
            Some(memory) => match memory.try_reserve(response_bytes_max) {
                Some((permit, bytes)) => (Some(permit), bytes.min(response_bytes_max)),
                None => (None, 0),
            },
            None => (None, response_bytes_max),
        };
        let memory_short = response_bytes_max == 0;

        let mut bytes_total = 0usize;
        let mut any_error = false;
        // What this pass read, counted only if this pass answers (a long poll reads again).
        let mut fetched_from: Vec<(&Partition, bytes::Bytes)> = Vec::new();
        let mut responses = Vec::with_capacity(targets.len());
        for target in &targets {
            let topic_name = &target.name;
            let partitions = &target.partitions;
            let mut partition_responses = Vec::with_capacity(partitions.len());
            for (index, fetch_offset, partition_bytes_max, partition) in partitions {
                let Some(partition) = partition else {
                    any_error = true;
                    let code = if version >= 13 && !target.exists {
                        ResponseError::UnknownTopicId.code()
                    } else {
                        ResponseError::UnknownTopicOrPartition.code()
                    };
                    partition_responses.push(error_data(*index, code));
                    continue;
                };
                let budget = response_bytes_max.saturating_sub(bytes_total);
                let bytes_max = ((*partition_bytes_max).max(0) as usize).min(budget);
                if memory_short || (bytes_max == 0 && bytes_total > 0) {
                    partition_responses.push(partition_data(*index, partition));
                    continue;
                }
                match partition.fetch_isolated(*fetch_offset, bytes_max, isolation) {
                    // The log returns at least one batch, which only the first partition with
                    // data may send past its limit (KIP-74).
                    Ok(fetched) if bytes_total > 0 && fetched.records.len() > bytes_max => {
                        partition_responses.push(partition_data(*index, partition));
                    }
                    Ok(fetched) => {
                        bytes_total += fetched.records.len();
                        fetched_from.push((partition, fetched.records.clone()));
                        partition_responses.push(
                            PartitionData::default()
                                .with_partition_index(*index)
                                .with_high_watermark(fetched.high_watermark)
                                .with_last_stable_offset(fetched.last_stable_offset)
                                .with_log_start_offset(fetched.log_start_offset)
                                .with_aborted_transactions(Some(aborted_transactions(
                                    &fetched.aborted_transactions,
                                )))
                                .with_records(Some(fetched.records)),
                        );
                    }
                    Err(error) => {
                        any_error = true;
                        if !matches!(error, BrokerError::OffsetOutOfRange(_)) {
                            tracing::warn!(topic = topic_name.as_str(), partition = index, %error, "fetch failed");
                        }
                        let mut data = partition_data(*index, partition);
                        data.error_code = broker_error_code(&error);
                        partition_responses.push(data);
                    }
                }
            }
            responses.push(
                FetchableTopicResponse::default()
                    .with_topic(topic_name.clone())
                    .with_topic_id(target.id)
                    .with_partitions(partition_responses),
            );
        }

        let now = Instant::now();
        if bytes_total >= min_bytes || any_error || now >= deadline || targets.is_empty() {
            if let (Some(memory), Some(reserved)) = (&ctx.response_memory, reserved) {
                hold.memory = Some(memory.fit(reserved, bytes_total));
            }
            for (partition, records) in &fetched_from {
                partition.count_fetched(records);
            }
            return (FetchResponse::default().with_responses(responses), hold);
        }
        drop(reserved);
        if memory_short {
            // Memory is given back as responses are written, which wakes nothing here.
            let retry = Duration::from_millis(MEMORY_RETRY_MS).min(deadline - now);
            tokio::time::sleep(retry).await;
            continue;
        }
        if tokio::time::timeout(deadline - now, data_ready)
            .await
            .is_err()
        {
            // Timed out: one last pass picks up anything that arrived without a wake-up.
            continue;
        }
    }
}

/// A partition answered without data. Records are empty, never null: clients such as
/// kafka-python take the length of whatever they get.
fn partition_data(index: i32, partition: &Partition) -> PartitionData {
    PartitionData::default()
        .with_partition_index(index)
        .with_high_watermark(partition.high_watermark())
        .with_last_stable_offset(partition.last_stable_offset())
        .with_log_start_offset(partition.log_start_offset())
        .with_aborted_transactions(Some(Vec::new()))
        .with_records(Some(bytes::Bytes::new()))
}

pub(crate) fn aborted_transactions(
    aborted: &[AbortedTransaction],
) -> Vec<kafka_protocol::messages::fetch_response::AbortedTransaction> {
    aborted
        .iter()
        .map(|t| {
            kafka_protocol::messages::fetch_response::AbortedTransaction::default()
                .with_producer_id(kafka_protocol::messages::ProducerId(t.producer_id))
                .with_first_offset(t.first_offset)
        })
        .collect()
}

fn error_data(index: i32, error_code: i16) -> PartitionData {
    PartitionData::default()
        .with_partition_index(index)
        .with_error_code(error_code)
        .with_high_watermark(-1)
        .with_last_stable_offset(-1)
        .with_log_start_offset(-1)
        .with_records(Some(bytes::Bytes::new()))
}
