//! Reading a topic's messages by partition and offset range, or from a timestamp.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use sluice_broker::{query_partition_logs, BrokerError, MessageQuery};
use sluice_log::{decode_records, BatchHeader, LogError, PartitionLog};

use crate::encoded::encode;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, ApiQuery};
use crate::model::{
    ErrorBody, MessageHeader, MessagesQuery, PartitionPosition, TopicMessage, TopicMessages,
};
use crate::AppState;

const LIMIT_DEFAULT: u32 = 100;
const LIMIT_MAX: u32 = 1000;
/// Bytes read from a partition log per step.
const READ_BYTES: usize = 1 << 20;
/// A response stops growing past this many message bytes (a few huge messages are enough).
const RESPONSE_BYTES_MAX: u64 = 16 << 20;

/// Messages of a topic: from `offset` (or the first at or after `timestamp_ms`) up to
/// `end_offset` or the high watermark, in one or every partition, at most `limit`.
#[utoipa::path(get, path = "/api/topics/{name}/messages", tag = "messages", security(("basic" = [])),
    params(("name" = String, Path, description = "Topic name"), MessagesQuery),
    responses(
        (status = 200, description = "Messages, by partition then offset", body = TopicMessages),
        (status = 400, description = "Invalid range or limit, or a key / message id query mixed with offsets", body = ErrorBody),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 404, description = "No such topic or partition", body = ErrorBody)))]
pub async fn topic_messages(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(mut query): ApiQuery<MessagesQuery>,
) -> ApiResult<Json<TopicMessages>> {
    let limit = query.limit.unwrap_or(LIMIT_DEFAULT);
    if !(1..=LIMIT_MAX).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {LIMIT_MAX}, got {limit}"
        )));
    }
    let lookup = match (query.key.take(), query.message_id.take()) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "give either key or message_id, not both".into(),
            ))
        }
        (Some(key), None) => Some(MessageQuery::Key(key.into_bytes())),
        (None, Some(id)) => Some(MessageQuery::MessageId(id)),
        (None, None) => None,
    };
    if let Some(lookup) = lookup {
        if query.offset.is_some() || query.end_offset.is_some() || query.timestamp_ms.is_some() {
            return Err(ApiError::BadRequest(
                "a key or message_id query takes no offset, end_offset or timestamp_ms".into(),
            ));
        }
        return indexed_lookup(state, name, lookup, &query, limit).await;
    }
    if query.offset.is_some_and(|o| o < 0) || query.end_offset.is_some_and(|o| o < 0) {
        return Err(ApiError::BadRequest("offsets must not be negative".into()));
    }
    if query.offset.is_some() && query.timestamp_ms.is_some() {
        return Err(ApiError::BadRequest(
            "give either offset or timestamp_ms, not both".into(),
        ));
    }
    let TopicLogs {
        logs,
        elsewhere,
        log_append_time: _,
    } = topic_logs(&state, &name, query.partition).await?;
    // Reads touch the disk: off the async workers.
    let read = tokio::task::spawn_blocking(move || {
        let mut reader = MessageReader {
            limit: limit as usize,
            with_hex: query.hex.unwrap_or(false),
            messages: Vec::new(),
            bytes: 0,
            skipped_compressed_batches: 0,
        };
        let mut positions = Vec::new();
        for (index, log) in &logs {
            positions.push(reader.read_partition(*index, log, &query)?);
        }
        Ok::<_, ApiError>((reader, positions))
    })
    .await
    .map_err(|error| ApiError::Internal(format!("read messages task: {error}")))?;
    let (reader, positions) = read?;
    Ok(Json(TopicMessages {
        topic: name,
        messages: reader.messages,
        positions,
        skipped_compressed_batches: reader.skipped_compressed_batches,
        partitions_elsewhere: elsewhere,
    }))
}

/// What a read of a topic covers: the partition logs this node holds, with their indexes.
struct TopicLogs {
    logs: Vec<(i32, Arc<PartitionLog>)>,
    /// Partitions of a replicated topic with no replica on this node.
    elsewhere: Vec<i32>,
    log_append_time: bool,
}

/// The logs of `name` (one partition or all): a local topic's partitions or, in cluster mode,
/// this node's replicas of a replicated topic. A replica serves what it has applied (its high
/// watermark), which is committed data, at most a heartbeat behind the leader's.
async fn topic_logs(state: &AppState, name: &str, partition: Option<i32>) -> ApiResult<TopicLogs> {
    let unknown_partition =
        |index: i32| ApiError::NotFound(format!("topic '{name}' has no partition {index}"));
    if let Some(topic) = state.context.broker.topic(name) {
        let partitions = match partition {
            Some(index) => vec![topic
                .partition(index)
                .ok_or_else(|| unknown_partition(index))?],
            None => topic.partitions(),
        };
        return Ok(TopicLogs {
            logs: partitions
                .iter()
                .map(|p| (p.index(), Arc::clone(p.log())))
                .collect(),
            elsewhere: Vec::new(),
            log_append_time: topic.config().log_append_time(),
        });
    }
    let unknown = || ApiError::NotFound(format!("unknown topic '{name}'"));
    let cluster = state.context.cluster.as_ref().ok_or_else(unknown)?;
    let topic = cluster.topic_caught_up(name).await.ok_or_else(unknown)?;
    let count = topic.assignments.len() as i32;
    let indexes = match partition {
        Some(index) if (0..count).contains(&index) => vec![index],
        Some(index) => return Err(unknown_partition(index)),
        None => (0..count).collect(),
    };
    let mut logs = Vec::new();
    let mut elsewhere = Vec::new();
    for index in indexes {
        match cluster.replica(topic.topic_id, index) {
            Some(replica) => logs.push((index, Arc::clone(replica.log()))),
            None => elsewhere.push(index),
        }
    }
    Ok(TopicLogs {
        logs,
        elsewhere,
        log_append_time: topic
            .configs
            .get("message.timestamp.type")
            .is_some_and(|t| t == "LogAppendTime"),
    })
}

/// Messages by key or message id, through the per-segment key index (no scan of the topic).
async fn indexed_lookup(
    state: Arc<AppState>,
    name: String,
    lookup: MessageQuery,
    query: &MessagesQuery,
    limit: u32,
) -> ApiResult<Json<TopicMessages>> {
    let TopicLogs {
        logs,
        elsewhere,
        log_append_time,
    } = topic_logs(&state, &name, query.partition).await?;
    // Index lookups and the batch reads that verify them touch the disk.
    let found = tokio::task::spawn_blocking(move || {
        let logs: Vec<(i32, &PartitionLog)> = logs
            .iter()
            .map(|(index, log)| (*index, log.as_ref()))
            .collect();
        query_partition_logs(&logs, &lookup, limit as usize)
    })
    .await
    .map_err(|error| ApiError::Internal(format!("query messages task: {error}")))??;
    let with_hex = query.hex.unwrap_or(false);
    let messages = found
        .messages
        .into_iter()
        .filter(|m| query.partition.is_none_or(|p| p == m.partition))
        .map(|m| {
            let record = sluice_log::Record {
                offset: m.offset,
                timestamp: m.timestamp,
                key: m.key,
                value: m.value,
                headers: m.headers,
            };
            topic_message(m.partition, log_append_time, record, with_hex)
        })
        .collect();
    Ok(Json(TopicMessages {
        topic: name,
        messages,
        positions: Vec::new(),
        skipped_compressed_batches: found.batches_compressed,
        partitions_elsewhere: elsewhere,
    }))
}

/// One record as the API shows it.
fn topic_message(
    partition: i32,
    log_append_time: bool,
    record: sluice_log::Record,
    with_hex: bool,
) -> TopicMessage {
    let size_bytes = record.key.as_ref().map_or(0, Vec::len)
        + record.value.as_ref().map_or(0, Vec::len)
        + record
            .headers
            .iter()
            .map(|(key, value)| key.len() + value.as_ref().map_or(0, Vec::len))
            .sum::<usize>();
    TopicMessage {
        partition,
        offset: record.offset,
        timestamp_ms: record.timestamp,
        timestamp_type: if log_append_time {
            "log_append_time"
        } else {
            "create_time"
        }
        .into(),
        key: record.key.as_deref().map(|k| encode(k, with_hex)),
        value: record.value.as_deref().map(|v| encode(v, with_hex)),
        headers: record
            .headers
            .iter()
            .map(|(key, value)| MessageHeader {
                key: key.clone(),
                value: value.as_deref().map(|v| encode(v, with_hex)),
            })
            .collect(),
        size_bytes: size_bytes as u64,
    }
}

struct MessageReader {
    limit: usize,
    with_hex: bool,
    messages: Vec<TopicMessage>,
    bytes: u64,
    skipped_compressed_batches: u64,
}

impl MessageReader {
    fn full(&self) -> bool {
        self.messages.len() >= self.limit || self.bytes >= RESPONSE_BYTES_MAX
    }

    fn read_partition(
        &mut self,
        index: i32,
        log: &PartitionLog,
        query: &MessagesQuery,
    ) -> ApiResult<PartitionPosition> {
        let high_watermark = log.high_watermark();
        let log_start = log.log_start_offset();
        let start = match query.timestamp_ms {
            Some(timestamp) => log
                .offset_for_timestamp(timestamp)
                .map_err(BrokerError::from)?
                .map_or(high_watermark, |(offset, _)| offset),
            None => query.offset.unwrap_or(log_start),
        }
        .max(log_start);
        let end = query
            .end_offset
            .unwrap_or(high_watermark)
            .min(high_watermark);
        let mut next = start;
        while next < end && !self.full() {
            let read = log.read(next, READ_BYTES).map_err(BrokerError::from)?;
            if read.records.is_empty() {
                break;
            }
            let mut rest: &[u8] = &read.records;
            let before = next;
            while !rest.is_empty() && next < end && !self.full() {
                let header = BatchHeader::parse(rest).map_err(BrokerError::from)?;
                let batch = rest.get(..header.total_bytes()).ok_or_else(|| {
                    ApiError::Internal("a batch read from the log is cut short".into())
                })?;
                rest = &rest[batch.len()..];
                if header.is_control() {
                    next = next.max(header.last_offset() + 1);
                    continue;
                }
                let records = match decode_records(batch) {
                    Ok(records) => records,
                    // A compressed payload that does not decode (garbage, or past the bound
                    // of `sluice_log::compression`): counted and passed over.
                    Err(LogError::Decompression { .. } | LogError::DecompressedTooLarge { .. }) => {
                        self.skipped_compressed_batches += 1;
                        next = next.max(header.last_offset() + 1);
                        continue;
                    }
                    Err(error) => return Err(BrokerError::from(error).into()),
                };
                for record in records {
                    if record.offset < next || record.offset >= end {
                        continue;
                    }
                    if self.full() {
                        break;
                    }
                    next = record.offset + 1;
                    self.push(index, &header, record);
                }
                if !self.full() {
                    next = next.max((header.last_offset() + 1).min(end));
                }
            }
            if next == before {
                break; // nothing readable at this offset: do not spin
            }
        }
        Ok(PartitionPosition {
            partition: index,
            next_offset: next,
            high_watermark,
        })
    }

    fn push(&mut self, partition: i32, header: &BatchHeader, record: sluice_log::Record) {
        let message = topic_message(
            partition,
            header.is_log_append_time(),
            record,
            self.with_hex,
        );
        self.bytes += message.size_bytes;
        self.messages.push(message);
    }
}
