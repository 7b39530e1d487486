//! DeleteRecords: moves a partition's log start forward, so every record below the requested
//! offset (-1: the high watermark) is gone for readers at once and for the disk at the next
//! retention pass. One node means no followers to wait for: the answer is immediate.

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use kafka_protocol::ResponseError;

use crate::error_codes::broker_error_code;
use crate::RequestContext;

pub async fn delete_records(
    ctx: &RequestContext,
    _version: i16,
    request: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let found = ctx.broker.topic(topic.name.as_str());
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let result =
                DeleteRecordsPartitionResult::default().with_partition_index(p.partition_index);
            let Some(partition) = found.as_ref().and_then(|t| t.partition(p.partition_index))
            else {
                partitions.push(
                    result
                        .with_low_watermark(-1)
                        .with_error_code(ResponseError::UnknownTopicOrPartition.code()),
                );
                continue;
            };
            partitions.push(match partition.delete_records(p.offset).await {
                Ok(log_start_offset) => result.with_low_watermark(log_start_offset),
                Err(error) => {
                    tracing::debug!(topic = topic.name.as_str(), partition = p.partition_index, offset = p.offset, %error, "delete records refused");
                    result
                        .with_low_watermark(-1)
                        .with_error_code(broker_error_code(&error))
                }
            });
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}
