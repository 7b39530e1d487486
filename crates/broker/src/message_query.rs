//! Finding messages in a topic for people (the HTTP API, the UI's message browser, `sluice
//! query`): by key and by message id through the logs' key indexes (no scan), by offset range
//! and by timestamp through the offset and time indexes. Every answer stops at the high
//! watermark, as a consumer's fetch does, and is bounded by a result limit.

use std::sync::Arc;

use sluice_log::{decode_records, BatchHeader, LogError, PartitionLog, Record, RecordLookup};

use crate::{Broker, BrokerError, Partition};

/// The most messages one query returns, whatever the caller asks.
pub const QUERY_LIMIT_MAX: usize = 10_000;

/// Bytes read from the log per step of an offset-range or timestamp query.
const READ_BYTES_STEP: usize = 1 << 20;

/// What to look for in a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageQuery {
    /// Records whose key is exactly these bytes, in every partition (the producer's partitioner
    /// is not known, so no partition is assumed).
    Key(Vec<u8>),
    /// Records whose `message-id` header (the AMQP `message-id` property, or a Kafka header of
    /// that name) is exactly this, in every partition.
    MessageId(String),
    /// Records of one partition with offsets in `from..=to_max`.
    OffsetRange {
        partition: i32,
        from: i64,
        to_max: i64,
    },
    /// Records from the first one with a timestamp at or after `from_ms` on (Kafka's
    /// offsets-for-times, then a read: later records may carry earlier producer timestamps),
    /// in one partition or, with `partition: None`, in every partition (merged by timestamp).
    Timestamp {
        partition: Option<i32>,
        from_ms: i64,
    },
}

/// One message found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundMessage {
    pub partition: i32,
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Bytes of key, value, header names and header values.
    pub size_bytes: usize,
}

/// What a query found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageQueryResult {
    /// Key and id queries: by partition, then offset. Offset ranges: by offset. Timestamp
    /// queries: by timestamp, then partition and offset.
    pub messages: Vec<FoundMessage>,
    /// More messages matched than the limit allowed.
    pub truncated: bool,
    /// Key and id queries: segments searched without a usable key index (see
    /// `sluice_log::FoundRecords`); their messages may be missing from the answer.
    pub segments_unindexed: usize,
    /// Compressed batches whose records could not be decoded (a garbage payload, or one past
    /// the decompression bound), so their messages are missing from the answer. Batches that
    /// decode (gzip, snappy, lz4, zstd) are searched and shown like any others.
    pub batches_compressed: u64,
}

impl FoundMessage {
    fn new(partition: i32, record: Record) -> FoundMessage {
        let size_bytes = record.key.as_ref().map_or(0, Vec::len)
            + record.value.as_ref().map_or(0, Vec::len)
            + record
                .headers
                .iter()
                .map(|(name, value)| name.len() + value.as_ref().map_or(0, Vec::len))
                .sum::<usize>();
        FoundMessage {
            partition,
            offset: record.offset,
            timestamp: record.timestamp,
            key: record.key,
            value: record.value,
            headers: record.headers,
            size_bytes,
        }
    }
}

impl Broker {
    /// Finds messages of `topic` (at most `limit`, itself capped at [`QUERY_LIMIT_MAX`]).
    /// Blocking disk reads: call it from a blocking context (`spawn_blocking`).
    pub fn query_messages(
        &self,
        topic: &str,
        query: &MessageQuery,
        limit: usize,
    ) -> Result<MessageQueryResult, BrokerError> {
        let topic = self
            .topic(topic)
            .ok_or_else(|| BrokerError::UnknownTopicOrPartition(topic.to_string()))?;
        let limit = limit.min(QUERY_LIMIT_MAX);
        let partition = |index: i32| {
            topic.partition(index).ok_or_else(|| {
                BrokerError::UnknownTopicOrPartition(format!("{}-{index}", topic.name()))
            })
        };
        match query {
            MessageQuery::Key(key) => {
                find_indexed(&topic.partitions(), RecordLookup::Key(key), limit)
            }
            MessageQuery::MessageId(id) => find_indexed(
                &topic.partitions(),
                RecordLookup::MessageId(id.as_bytes()),
                limit,
            ),
            MessageQuery::OffsetRange {
                partition: index,
                from,
                to_max,
            } => {
                let mut result = MessageQueryResult::default();
                let partition = partition(*index)?;
                read_range(&partition, *from, *to_max, limit, &mut result)?;
                Ok(result)
            }
            MessageQuery::Timestamp {
                partition: index,
                from_ms,
            } => {
                let partitions = match index {
                    Some(index) => vec![partition(*index)?],
                    None => topic.partitions(),
                };
                let mut result = MessageQueryResult::default();
                for partition in &partitions {
                    let Some((offset, _)) = partition.log().offset_for_timestamp(*from_ms)? else {
                        continue;
                    };
                    read_range(partition, offset, i64::MAX, limit, &mut result)?;
                }
                result
                    .messages
                    .sort_by_key(|m| (m.timestamp, m.partition, m.offset));
                if result.messages.len() > limit {
                    result.messages.truncate(limit);
                    result.truncated = true;
                }
                Ok(result)
            }
        }
    }
}

/// Key or id lookups in every partition through the key indexes.
fn find_indexed(
    partitions: &[Arc<Partition>],
    lookup: RecordLookup<'_>,
    limit: usize,
) -> Result<MessageQueryResult, BrokerError> {
    let logs: Vec<(i32, &PartitionLog)> = partitions
        .iter()
        .map(|partition| (partition.index(), partition.log().as_ref()))
        .collect();
    find_in_logs(&logs, lookup, limit)
}

/// A key or message-id query over the given partition logs (index, log), as
/// [`Broker::query_messages`] answers it for a topic: for the replicas of a replicated topic
/// that this node holds. Blocking disk reads.
pub fn query_partition_logs(
    logs: &[(i32, &PartitionLog)],
    query: &MessageQuery,
    limit: usize,
) -> Result<MessageQueryResult, BrokerError> {
    let limit = limit.min(QUERY_LIMIT_MAX);
    match query {
        MessageQuery::Key(key) => find_in_logs(logs, RecordLookup::Key(key), limit),
        MessageQuery::MessageId(id) => {
            find_in_logs(logs, RecordLookup::MessageId(id.as_bytes()), limit)
        }
        _ => Err(BrokerError::InvalidRecord(
            "only key and message id queries run over partition logs".into(),
        )),
    }
}

fn find_in_logs(
    logs: &[(i32, &PartitionLog)],
    lookup: RecordLookup<'_>,
    limit: usize,
) -> Result<MessageQueryResult, BrokerError> {
    let mut result = MessageQueryResult::default();
    for &(index, log) in logs {
        // Once the limit is reached, a lookup with no room left still says whether more match.
        let left = limit - result.messages.len();
        let found = log.find_records(lookup, left)?;
        result.truncated |= found.truncated;
        result.segments_unindexed += found.segments_unindexed;
        result.batches_compressed += found.batches_unindexed;
        result.messages.extend(
            found
                .records
                .into_iter()
                .map(|record| FoundMessage::new(index, record)),
        );
        if result.truncated {
            break;
        }
    }
    Ok(result)
}

/// Appends to `result` the records of `partition` in `from..=to_max`, below the high watermark,
/// until `result` holds `limit` records from this partition.
fn read_range(
    partition: &Partition,
    from: i64,
    to_max: i64,
    limit: usize,
    result: &mut MessageQueryResult,
) -> Result<(), BrokerError> {
    let log = partition.log();
    let mut offset = from.max(log.log_start_offset());
    let mut taken = 0;
    while offset <= to_max && offset < log.high_watermark() {
        let read = log.read(offset, READ_BYTES_STEP)?;
        if read.records.is_empty() {
            break;
        }
        let mut position = 0;
        let bytes = &read.records[..];
        while position < bytes.len() {
            let header = BatchHeader::parse(&bytes[position..])?;
            let batch_end = (position + header.total_bytes()).min(bytes.len());
            let batch = &bytes[position..batch_end];
            position = batch_end;
            offset = offset.max(header.last_offset() + 1);
            if header.is_control() {
                continue;
            }
            let records = match decode_records(batch) {
                Ok(records) => records,
                // A compressed payload that does not decode (garbage, or past the bound of
                // `sluice_log::compression`): counted, and the query goes on past it.
                Err(
                    error
                    @ (LogError::Decompression { .. } | LogError::DecompressedTooLarge { .. }),
                ) => {
                    tracing::debug!(%error, base_offset = header.base_offset, "compressed batch not shown");
                    result.batches_compressed += 1;
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            for record in records {
                if record.offset < from || record.offset > to_max {
                    continue;
                }
                if record.offset >= read.high_watermark {
                    return Ok(());
                }
                if taken == limit {
                    result.truncated = true;
                    return Ok(());
                }
                result
                    .messages
                    .push(FoundMessage::new(partition.index(), record));
                taken += 1;
            }
        }
    }
    Ok(())
}
