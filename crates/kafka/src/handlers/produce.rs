//! Produce: each partition's batches go to the broker, which validates, de-duplicates, appends
//! and (for acks 1/all) waits for the group-committed fsync. Partitions of one request are
//! appended in request order but wait for durability concurrently.

use bytes::BytesMut;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_broker::{Acks, BrokerError};

use crate::error_codes::broker_error_code;
use crate::RequestContext;

/// Histogram of a produce request's arrival to its acknowledgement (acks 1 and all; with
/// `fsync=batch`, that is after the group-committed fdatasync).
pub(crate) const PRODUCE_DURABLE_METRIC: &str = "sluice_produce_durable_seconds";

/// `None` for acks=0: the client expects no response.
pub async fn produce(
    ctx: &RequestContext,
    version: i16,
    request: ProduceRequest,
) -> Option<ProduceResponse> {
    // The request's frame was read just before this first poll: close enough to its arrival.
    let arrived = std::time::Instant::now();
    let acks = match request.acks {
        0 => Some(Acks::None),
        1 => Some(Acks::Leader),
        -1 => Some(Acks::All),
        _ => None,
    };
    let transactional_id = request.transactional_id.as_ref().map(|t| t.to_string());
    let transactional_id = &transactional_id;
    let mut topic_futures = Vec::with_capacity(request.topic_data.len());
    for topic_data in request.topic_data {
        let name = topic_data.name.clone();
        let topic = ctx.broker.topic_or_auto_create(name.as_str());
        let mut partition_futures = Vec::with_capacity(topic_data.partition_data.len());
        for partition_data in topic_data.partition_data {
            let index = partition_data.index;
            let topic = topic.as_ref().map_err(broker_error_code).cloned();
            partition_futures.push(async move {
                let Some(acks) = acks else {
                    return error_response(index, ResponseError::InvalidRequiredAcks.code(), None);
                };
                let topic = match topic {
                    Ok(topic) => topic,
                    Err(code) => return error_response(index, code, None),
                };
                let Some(partition) = topic.partition(index) else {
                    return error_response(
                        index,
                        ResponseError::UnknownTopicOrPartition.code(),
                        None,
                    );
                };
                let Some(records) = partition_data.records else {
                    return error_response(
                        index,
                        ResponseError::CorruptMessage.code(),
                        Some("no records".into()),
                    );
                };
                // Held until the append is durable: the transaction's markers come after it.
                // v12 (transaction version 2) adds the partition to the transaction itself.
                let _transactional = match ctx
                    .broker
                    .verify_transactional_produce(
                        transactional_id.as_deref(),
                        topic.name(),
                        index,
                        &records,
                        version >= 12,
                    )
                    .await
                {
                    Ok(held) => held,
                    Err(error) => {
                        log_produce_error(&error, topic.name(), index);
                        return error_response(
                            index,
                            broker_error_code(&error),
                            Some(error.to_string()),
                        );
                    }
                };
                match partition.produce(BytesMut::from(records), acks).await {
                    Ok(outcome) => PartitionProduceResponse::default()
                        .with_index(index)
                        .with_base_offset(outcome.base_offset)
                        .with_log_append_time_ms(outcome.log_append_time_ms)
                        .with_log_start_offset(outcome.log_start_offset),
                    Err(error) => {
                        log_produce_error(&error, topic.name(), index);
                        error_response(index, broker_error_code(&error), Some(error.to_string()))
                    }
                }
            });
        }
        topic_futures.push(async move {
            TopicProduceResponse::default()
                .with_name(name)
                .with_partition_responses(futures::future::join_all(partition_futures).await)
        });
    }
    let responses = futures::future::join_all(topic_futures).await;
    if acks == Some(Acks::None) {
        return None;
    }
    metrics::histogram!(PRODUCE_DURABLE_METRIC).record(arrived.elapsed());
    let mut response = ProduceResponse::default().with_responses(responses);
    if version < 8 {
        for topic in &mut response.responses {
            for partition in &mut topic.partition_responses {
                partition.error_message = None;
            }
        }
    }
    Some(response)
}

fn error_response(
    index: i32,
    error_code: i16,
    message: Option<String>,
) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(error_code)
        .with_base_offset(-1)
        .with_log_append_time_ms(-1)
        .with_log_start_offset(-1)
        .with_error_message(message.map(StrBytes::from_string))
}

fn log_produce_error(error: &BrokerError, topic: &str, partition: i32) {
    match error {
        BrokerError::Storage(_) => tracing::error!(topic, partition, %error, "produce failed"),
        _ => tracing::debug!(topic, partition, %error, "produce refused"),
    }
}
