//! ListOffsets: earliest (-2), latest (-1), max timestamp (-3) or the first offset at or after a
//! timestamp, which is how consumers replay from a point in time.

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::ResponseError;
use sluice_broker::{BrokerError, Partition};

use crate::error_codes::broker_error_code;
use crate::RequestContext;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

pub async fn list_offsets(
    ctx: &RequestContext,
    version: i16,
    request: ListOffsetsRequest,
) -> ListOffsetsResponse {
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
                    match offset_for(&partition, p.timestamp) {
                        Ok((offset, timestamp)) => {
                            // The leader epoch field exists from v4 on.
                            let leader_epoch = if version >= 4 { 0 } else { -1 };
                            response
                                .with_offset(offset)
                                .with_timestamp(timestamp)
                                .with_leader_epoch(leader_epoch)
                        }
                        Err(error) => response
                            .with_error_code(broker_error_code(&error))
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

/// (offset, timestamp); offset -1 when no record is at or after the timestamp.
fn offset_for(partition: &Partition, timestamp: i64) -> Result<(i64, i64), BrokerError> {
    let log = partition.log();
    match timestamp {
        LATEST => Ok((log.high_watermark(), -1)),
        EARLIEST => Ok((log.log_start_offset(), -1)),
        MAX_TIMESTAMP => {
            let high_watermark = log.high_watermark();
            let mut best: Option<(i64, i64)> = None;
            for header in log.batch_headers_from(log.log_start_offset())? {
                if header.base_offset >= high_watermark {
                    break;
                }
                if best.is_none_or(|(_, ts)| header.max_timestamp > ts) {
                    best = Some((header.last_offset(), header.max_timestamp));
                }
            }
            Ok(best.unwrap_or((-1, -1)))
        }
        timestamp if timestamp < 0 => Err(BrokerError::InvalidRecord(format!(
            "unsupported timestamp {timestamp}"
        ))),
        timestamp => Ok(log.offset_for_timestamp(timestamp)?.unwrap_or((-1, -1))),
    }
}
