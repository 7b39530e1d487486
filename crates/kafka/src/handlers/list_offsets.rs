//! ListOffsets: earliest (-2), latest (-1), max timestamp (-3) or the first offset at or after a
//! timestamp, which is how consumers replay from a point in time.

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::ResponseError;
use sluice_log::{LogError, PartitionLog};

use crate::error_codes::broker_error_code;
use crate::RequestContext;

pub(crate) const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
/// KIP-1005: the start of the local log; without tiered storage, the log start offset.
const EARLIEST_LOCAL: i64 = -4;
/// KIP-1005: the end of the tiered log; without tiered storage, none (offset -1).
const LATEST_TIERED: i64 = -5;

/// Whether `version` knows `timestamp`: EARLIEST_LOCAL came with v8 and LATEST_TIERED with
/// v9; Kafka answers UNSUPPORTED_VERSION for them at older versions.
pub(crate) fn timestamp_supported(version: i16, timestamp: i64) -> bool {
    match timestamp {
        EARLIEST_LOCAL => version >= 8,
        LATEST_TIERED => version >= 9,
        timestamp => timestamp >= MAX_TIMESTAMP,
    }
}

pub async fn list_offsets(
    ctx: &RequestContext,
    version: i16,
    request: ListOffsetsRequest,
) -> ListOffsetsResponse {
    // read_committed (v2+): the latest offset is the last stable offset.
    let read_committed = version >= 2 && request.isolation_level == 1;
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let found = ctx.broker.topic(topic.name.as_str());
            let partitions = topic
                .partitions
                .into_iter()
                .map(|p| {
                    let response = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index);
                    let Some(partition) =
                        found.as_ref().and_then(|t| t.partition(p.partition_index))
                    else {
                        return response
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            .with_offset(-1)
                            .with_timestamp(-1);
                    };
                    if !timestamp_supported(version, p.timestamp) {
                        return response
                            .with_error_code(ResponseError::UnsupportedVersion.code())
                            .with_offset(-1)
                            .with_timestamp(-1);
                    }
                    let found = if read_committed && p.timestamp == LATEST {
                        Ok((partition.last_stable_offset(), -1))
                    } else {
                        offset_in_log(partition.log(), p.timestamp)
                    };
                    match found {
                        Ok((offset, timestamp)) => {
                            // The leader epoch field exists from v4 on; none for no offset.
                            let leader_epoch = if version >= 4 && offset >= 0 { 0 } else { -1 };
                            response
                                .with_offset(offset)
                                .with_timestamp(timestamp)
                                .with_leader_epoch(leader_epoch)
                        }
                        Err(error) => response
                            .with_error_code(broker_error_code(&error.into()))
                            .with_offset(-1)
                            .with_timestamp(-1),
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

/// (offset, timestamp) for one of the timestamps ListOffsets takes; offset -1
/// when no record is at or after the timestamp. Single node and cluster alike.
pub(crate) fn offset_in_log(log: &PartitionLog, timestamp: i64) -> Result<(i64, i64), LogError> {
    let high_watermark = log.high_watermark();
    match timestamp {
        LATEST => Ok((high_watermark, -1)),
        EARLIEST | EARLIEST_LOCAL => Ok((log.log_start_offset(), -1)),
        LATEST_TIERED => Ok((-1, -1)),
        MAX_TIMESTAMP => {
            // Kafka's answer: the first record holding the largest timestamp, which is the
            // first record at or after that timestamp.
            let mut max_timestamp: Option<i64> = None;
            for header in log.batch_headers_from(log.log_start_offset())? {
                if header.base_offset >= high_watermark {
                    break;
                }
                if max_timestamp.is_none_or(|ts| header.max_timestamp > ts) {
                    max_timestamp = Some(header.max_timestamp);
                }
            }
            match max_timestamp {
                Some(timestamp) => offset_in_log(log, timestamp.max(0)),
                None => Ok((-1, -1)),
            }
        }
        timestamp => Ok(log
            .offset_for_timestamp(timestamp.max(0))?
            .filter(|(offset, _)| *offset < high_watermark)
            .unwrap_or((-1, -1))),
    }
}
