//! Producing to a topic over HTTP (the CLI's `sluice produce`, the UI's test message): the
//! messages become uncompressed record batches appended as a Kafka produce with acks=all.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use base64::Engine;
use bytes::BytesMut;
use sluice_broker::replication::{ClusterBroker, ReplicationError};
use sluice_broker::{Acks, BrokerError, Partition};
use sluice_cluster::metadata::TopicMetadata;
use sluice_log::{LogConfig, Record, RecordBatchBuilder, BATCH_HEADER_BYTES};

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath};
use crate::kafka_forward::{self, ForwardError};
use crate::model::{
    ErrorBody, PayloadEncoding, ProduceMessage, ProduceRequest, ProduceResponse, ProducedOffset,
};
use crate::AppState;

/// Most messages in one request (the request body is bounded by axum's 2 MB limit as well).
const PRODUCE_COUNT_MAX: usize = 10_000;
/// Upper bound of a record's framing in a v2 batch beyond its key, value and header bytes:
/// length, attributes, timestamp and offset deltas, key and value lengths, header count.
const RECORD_FRAMING_BYTES_MAX: usize = 5 + 1 + 10 + 5 + 5 + 5 + 5;
/// And per header: its key and value lengths.
const HEADER_FRAMING_BYTES_MAX: usize = 5 + 5;
/// Cluster mode: how long a batch waits for its partition to have a reachable leader.
const LEADER_WAIT_MAX: Duration = Duration::from_secs(10);
/// Cluster mode: how long the leader may take to commit a batch (Kafka's request timeout).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Appends messages to a topic and answers once they are durable, with each one's partition
/// and offset. Messages for one partition keep their request order. Bad input (invalid
/// base64, a message over the topic's `max.message.bytes`) is refused before anything is
/// stored; a storage failure on one partition may leave other partitions' messages stored.
/// In cluster mode each partition's messages go through its leader (this node's replica, or
/// another node's Kafka listener) and are answered once a majority of replicas has them.
#[utoipa::path(post, path = "/api/topics/{name}/messages", tag = "messages", security(("basic" = [])),
    params(("name" = String, Path, description = "Topic name")),
    request_body = ProduceRequest,
    responses(
        (status = 200, description = "Stored and durable", body = ProduceResponse),
        (status = 400, description = "No messages or too many, invalid base64, a message too large", body = ErrorBody),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody),
        (status = 404, description = "No such topic or partition", body = ErrorBody)))]
pub async fn produce_messages(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    ApiJson(request): ApiJson<ProduceRequest>,
) -> ApiResult<Json<ProduceResponse>> {
    let count = request.messages.len();
    if !(1..=PRODUCE_COUNT_MAX).contains(&count) {
        return Err(ApiError::BadRequest(format!(
            "give 1 to {PRODUCE_COUNT_MAX} messages, got {count}"
        )));
    }
    if let Some(cluster) = state.context.cluster.clone() {
        if let Some(topic) = cluster.topic(&name) {
            return produce_replicated(cluster, topic, request.messages).await;
        }
    }
    let Some(topic) = state.context.broker.topic(&name) else {
        // Perhaps created through another node a moment ago: ask the metadata leader.
        if let Some(cluster) = state.context.cluster.clone() {
            if let Some(topic) = cluster.topic_caught_up(&name).await {
                return produce_replicated(cluster, topic, request.messages).await;
            }
        }
        return Err(ApiError::NotFound(format!("unknown topic '{name}'")));
    };
    let by_partition = place_messages(request.messages, topic.partition_count())?;

    let mut work = Vec::with_capacity(by_partition.len());
    for (index, records) in by_partition {
        let partition = topic.partition(index).ok_or_else(|| {
            ApiError::NotFound(format!("topic '{name}' has no partition {index}"))
        })?;
        let batch_bytes_max = partition.log().config().batch_bytes_max as usize;
        let batches = build_batches(records, batch_bytes_max)?;
        work.push((partition, batches));
    }

    let mut tasks = tokio::task::JoinSet::new();
    for (partition, batches) in work {
        tasks.spawn(async move {
            produce_in_order(partition, batches)
                .await
                .map_err(ApiError::from)
        });
    }
    collect_offsets(tasks, count).await
}

/// Decodes the messages and groups them by partition as a Kafka producer would: the given
/// partition, else the key's murmur2 partition, else one partition for all keyless messages
/// of the request (so they make one batch).
fn place_messages(
    messages: Vec<ProduceMessage>,
    partition_count: i32,
) -> ApiResult<BTreeMap<i32, Vec<(usize, Record)>>> {
    let partition_count = partition_count.max(1);
    let sticky_partition = (sluice_broker::now_ms().rem_euclid(i64::from(partition_count))) as i32;
    let now = sluice_broker::now_ms();
    let mut by_partition: BTreeMap<i32, Vec<(usize, Record)>> = BTreeMap::new();
    for (index, message) in messages.into_iter().enumerate() {
        let record = decode_message(index, &message, now)?;
        let partition = match (message.partition, &record.key) {
            (Some(partition), _) => partition,
            (None, Some(key)) => sluice_broker::kafka_partition_for_key(key, partition_count),
            (None, None) => sticky_partition,
        };
        by_partition
            .entry(partition)
            .or_default()
            .push((index, record));
    }
    Ok(by_partition)
}

/// Waits for every partition's task and puts each message's place at its request index; the
/// first failure, if any, is the answer.
async fn collect_offsets(
    mut tasks: tokio::task::JoinSet<ApiResult<Vec<(usize, ProducedOffset)>>>,
    count: usize,
) -> ApiResult<Json<ProduceResponse>> {
    let mut offsets = vec![
        ProducedOffset {
            partition: -1,
            offset: -1,
        };
        count
    ];
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(stored)) => {
                for (index, placed) in stored {
                    if let Some(slot) = offsets.get_mut(index) {
                        *slot = placed;
                    }
                }
            }
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(error) => {
                first_error.get_or_insert(ApiError::Internal(format!("produce task: {error}")));
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(Json(ProduceResponse { offsets })),
    }
}

/// Cluster mode: a replicated topic's messages, each partition's through its leader.
async fn produce_replicated(
    cluster: Arc<ClusterBroker>,
    topic: TopicMetadata,
    messages: Vec<ProduceMessage>,
) -> ApiResult<Json<ProduceResponse>> {
    let count = messages.len();
    let partition_count = i32::try_from(topic.assignments.len()).unwrap_or(i32::MAX);
    let by_partition = place_messages(messages, partition_count)?;
    // The leader checks the topic's limit again; this refuses early, before anything is sent.
    let batch_bytes_max = topic
        .configs
        .get("max.message.bytes")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(LogConfig::default().batch_bytes_max as usize);
    let mut work = Vec::with_capacity(by_partition.len());
    for (index, records) in by_partition {
        if !(0..partition_count).contains(&index) {
            return Err(ApiError::NotFound(format!(
                "topic '{}' has no partition {index}",
                topic.name
            )));
        }
        work.push((index, build_batches(records, batch_bytes_max)?));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (index, batches) in work {
        tasks.spawn(produce_through_leader(
            cluster.clone(),
            topic.name.clone(),
            index,
            batches,
        ));
    }
    collect_offsets(tasks, count).await
}

/// Why one attempt at a replicated batch failed.
enum AttemptFailed {
    /// Nothing stored; leadership is moving or unknown: look again and retry.
    Retry(String),
    Fail(ApiError),
}

/// A partition's batches one after the other through its leader, waiting out an election.
async fn produce_through_leader(
    cluster: Arc<ClusterBroker>,
    topic: String,
    partition: i32,
    batches: Vec<PendingBatch>,
) -> ApiResult<Vec<(usize, ProducedOffset)>> {
    let mut stored = Vec::new();
    for batch in batches {
        let records = batch.records.freeze();
        let deadline = tokio::time::Instant::now() + LEADER_WAIT_MAX;
        let base_offset = loop {
            match produce_once(&cluster, &topic, partition, records.clone()).await {
                Ok(base_offset) => break base_offset,
                Err(AttemptFailed::Retry(reason)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(topic, partition, reason, "HTTP produce: retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(AttemptFailed::Retry(reason)) => {
                    return Err(ApiError::NotReady(format!(
                        "partition {partition} of '{topic}' has no reachable leader: {reason}"
                    )))
                }
                Err(AttemptFailed::Fail(error)) => return Err(error),
            }
        };
        for (position, index) in batch.indices.into_iter().enumerate() {
            stored.push((
                index,
                ProducedOffset {
                    partition,
                    offset: base_offset + position as i64,
                },
            ));
        }
    }
    Ok(stored)
}

async fn produce_once(
    cluster: &ClusterBroker,
    topic: &str,
    partition: i32,
    records: bytes::Bytes,
) -> Result<i64, AttemptFailed> {
    let Some(meta) = cluster.topic(topic) else {
        return Err(AttemptFailed::Fail(ApiError::NotFound(format!(
            "unknown topic '{topic}'"
        ))));
    };
    match cluster.replica_for(topic, partition) {
        Ok(replica) if replica.is_leader() => {
            let min_insync = cluster.min_insync_replicas(topic);
            return replica
                .produce(records, min_insync, COMMIT_TIMEOUT)
                .await
                .map(|outcome| outcome.base_offset)
                .map_err(replication_failure);
        }
        Err(ReplicationError::Broker(error)) => return Err(AttemptFailed::Fail(error.into())),
        _ => {}
    }
    let view = cluster.partition_view(&meta, partition);
    let leader = match view.leader {
        Some(leader) if leader != cluster.node_id() => leader,
        _ => return Err(AttemptFailed::Retry("no leader elected yet".into())),
    };
    let Some(addr) = cluster.kafka_addr(leader) else {
        return Err(AttemptFailed::Retry(format!(
            "leader {leader} has no Kafka address yet"
        )));
    };
    kafka_forward::produce(&addr, topic, partition, records, COMMIT_TIMEOUT)
        .await
        .map_err(forward_failure)
}

fn replication_failure(error: ReplicationError) -> AttemptFailed {
    match error {
        ReplicationError::NotLeader
        | ReplicationError::LeaderNotAvailable
        | ReplicationError::NotEnoughReplicas => AttemptFailed::Retry(error.to_string()),
        ReplicationError::Broker(error) => AttemptFailed::Fail(error.into()),
        ReplicationError::FencedLeaderEpoch
        | ReplicationError::UnknownLeaderEpoch
        | ReplicationError::Timeout
        | ReplicationError::Raft(_) => AttemptFailed::Fail(ApiError::NotReady(error.to_string())),
    }
}

fn forward_failure(error: ForwardError) -> AttemptFailed {
    use kafka_protocol::ResponseError;
    if error.is_retriable() {
        return AttemptFailed::Retry(error.to_string());
    }
    let reason = error.to_string();
    AttemptFailed::Fail(match &error {
        ForwardError::Refused {
            error:
                ResponseError::MessageTooLarge
                | ResponseError::CorruptMessage
                | ResponseError::InvalidRecord
                | ResponseError::RecordListTooLarge,
            ..
        } => ApiError::BadRequest(reason),
        ForwardError::Refused {
            error: ResponseError::UnknownTopicOrPartition,
            ..
        } => ApiError::NotFound(reason),
        _ => ApiError::NotReady(reason),
    })
}

/// A batch ready to append, with the request index of each of its records.
struct PendingBatch {
    indices: Vec<usize>,
    records: BytesMut,
}

/// Appends a partition's batches one after the other (so they keep request order) and gives
/// each message's partition and offset.
async fn produce_in_order(
    partition: Arc<Partition>,
    batches: Vec<PendingBatch>,
) -> Result<Vec<(usize, ProducedOffset)>, BrokerError> {
    let mut stored = Vec::new();
    for batch in batches {
        let outcome = partition.produce(batch.records, Acks::All).await?;
        for (position, index) in batch.indices.into_iter().enumerate() {
            stored.push((
                index,
                ProducedOffset {
                    partition: partition.index(),
                    offset: outcome.base_offset + position as i64,
                },
            ));
        }
    }
    Ok(stored)
}

fn decode_message(index: usize, message: &ProduceMessage, now: i64) -> ApiResult<Record> {
    let decode = |what: &str, text: &str| -> ApiResult<Vec<u8>> {
        match message.encoding {
            PayloadEncoding::String => Ok(text.as_bytes().to_vec()),
            PayloadEncoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|error| {
                    ApiError::BadRequest(format!(
                        "message {index}: {what} is not valid base64: {error}"
                    ))
                }),
        }
    };
    let timestamp = message.timestamp_ms.unwrap_or(now);
    if timestamp < 0 {
        return Err(ApiError::BadRequest(format!(
            "message {index}: timestamp_ms must not be negative"
        )));
    }
    let mut headers = Vec::with_capacity(message.headers.len());
    for header in &message.headers {
        let value = match &header.value {
            Some(value) => Some(decode(&format!("header '{}'", header.key), value)?),
            None => None,
        };
        headers.push((header.key.clone(), value));
    }
    Ok(Record {
        offset: 0,
        timestamp,
        key: message
            .key
            .as_deref()
            .map(|key| decode("key", key))
            .transpose()?,
        value: message
            .value
            .as_deref()
            .map(|value| decode("value", value))
            .transpose()?,
        headers,
    })
}

fn record_bytes_max(record: &Record) -> usize {
    record.key.as_ref().map_or(0, Vec::len)
        + record.value.as_ref().map_or(0, Vec::len)
        + record
            .headers
            .iter()
            .map(|(key, value)| {
                key.len() + value.as_ref().map_or(0, Vec::len) + HEADER_FRAMING_BYTES_MAX
            })
            .sum::<usize>()
        + RECORD_FRAMING_BYTES_MAX
}

/// Packs records into batches no larger than the log accepts; a record that cannot fit even
/// alone is refused (before any batch is appended).
fn build_batches(
    records: Vec<(usize, Record)>,
    batch_bytes_max: usize,
) -> ApiResult<Vec<PendingBatch>> {
    let mut batches = Vec::new();
    let mut builder = RecordBatchBuilder::new();
    let mut indices = Vec::new();
    let mut bytes = BATCH_HEADER_BYTES;
    for (index, record) in records {
        let size = record_bytes_max(&record);
        if BATCH_HEADER_BYTES + size > batch_bytes_max {
            return Err(ApiError::BadRequest(format!(
                "message {index} takes up to {size} bytes in a batch, more than the topic's \
                 max.message.bytes ({batch_bytes_max})"
            )));
        }
        if !indices.is_empty() && bytes + size > batch_bytes_max {
            batches.push(PendingBatch {
                indices: std::mem::take(&mut indices),
                records: BytesMut::from(&builder.build()[..]),
            });
            builder = RecordBatchBuilder::new();
            bytes = BATCH_HEADER_BYTES;
        }
        builder.push(record);
        indices.push(index);
        bytes += size;
    }
    if !indices.is_empty() {
        batches.push(PendingBatch {
            indices,
            records: BytesMut::from(&builder.build()[..]),
        });
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(value_bytes: usize) -> Record {
        Record {
            value: Some(vec![b'x'; value_bytes]),
            ..Record::default()
        }
    }

    #[test]
    fn batches_stay_under_the_limit_and_keep_order() {
        let records: Vec<_> = (0..10).map(|i| (i, record(100))).collect();
        let limit = BATCH_HEADER_BYTES + 3 * record_bytes_max(&record(100));
        let batches = build_batches(records, limit).unwrap();
        assert_eq!(batches.len(), 4);
        let order: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        assert_eq!(order, (0..10).collect::<Vec<_>>());
        for batch in &batches {
            assert!(
                batch.records.len() <= limit,
                "{} > {limit}",
                batch.records.len()
            );
            let decoded = sluice_log::decode_records(&batch.records).unwrap();
            assert_eq!(decoded.len(), batch.indices.len());
        }
    }

    #[test]
    fn a_message_larger_than_the_limit_is_refused() {
        let error = build_batches(vec![(0, record(10)), (1, record(5000))], 1000)
            .err()
            .unwrap();
        assert!(matches!(error, ApiError::BadRequest(reason) if reason.contains("message 1")));
    }

    #[test]
    fn invalid_base64_is_a_bad_request_naming_the_message() {
        let message = ProduceMessage {
            key: None,
            value: Some("not base64!".into()),
            headers: vec![],
            partition: None,
            timestamp_ms: None,
            encoding: PayloadEncoding::Base64,
        };
        let error = decode_message(3, &message, 0).err().unwrap();
        assert!(matches!(error, ApiError::BadRequest(reason) if reason.contains("message 3")));
    }
}
