//! DeleteRecords: moves a partition's log start forward, so every record below the requested
//! offset (-1: the high watermark) is gone for readers at once and for the disk at the next
//! retention pass. One node means no followers to wait for: the answer is immediate.

use std::fmt::Display;
use std::future::Future;

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse, TopicName};
use sluice_broker::BrokerError;

use crate::error_codes::broker_error_code;
use crate::RequestContext;

pub async fn delete_records(
    ctx: &RequestContext,
    _version: i16,
    request: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    respond(
        request,
        |topic, index, offset| {
            let partition = ctx
                .broker
                .topic(topic.as_str())
                .and_then(|t| t.partition(index));
            async move {
                match partition {
                    Some(partition) => partition.delete_records(offset).await,
                    None => Err(BrokerError::UnknownTopicOrPartition(format!(
                        "{}-{index}",
                        topic.as_str()
                    ))),
                }
            }
        },
        broker_error_code,
    )
    .await
}

/// The DeleteRecords response, one partition after the other: `delete(topic, partition,
/// offset)` answers the partition's new log start (Kafka's low watermark) or the error that
/// `error_code` turns into the partition's error code. Shared by one node and the cluster.
pub(crate) async fn respond<F, Fut, E>(
    request: DeleteRecordsRequest,
    delete: F,
    error_code: fn(&E) -> i16,
) -> DeleteRecordsResponse
where
    F: Fn(TopicName, i32, i64) -> Fut,
    Fut: Future<Output = Result<i64, E>>,
    E: Display,
{
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let result =
                DeleteRecordsPartitionResult::default().with_partition_index(p.partition_index);
            partitions.push(
                match delete(topic.name.clone(), p.partition_index, p.offset).await {
                    Ok(log_start_offset) => result.with_low_watermark(log_start_offset),
                    Err(error) => {
                        tracing::debug!(topic = topic.name.as_str(), partition = p.partition_index, offset = p.offset, %error, "delete records refused");
                        result
                            .with_low_watermark(-1)
                            .with_error_code(error_code(&error))
                    }
                },
            );
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}
