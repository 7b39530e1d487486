//! DescribeProducers (KIP-664): the idempotent producers each partition's leader remembers, as
//! `kafka-transactions describe-producers` shows them, with the first offset of each one's open
//! transaction.

use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{DescribeProducersRequest, DescribeProducersResponse, ProducerId};
use kafka_protocol::protocol::StrBytes;
use sluice_broker::replication::ReplicationError;
use sluice_broker::{ActiveProducer, BrokerError};

use crate::handlers::cluster::replication_error_code;
use crate::RequestContext;

pub async fn describe_producers(
    ctx: &RequestContext,
    _version: i16,
    request: DescribeProducersRequest,
) -> DescribeProducersResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partition_indexes
                .iter()
                .map(|&index| {
                    let response = PartitionResponse::default().with_partition_index(index);
                    match active_producers(ctx, topic.name.as_str(), index) {
                        Ok(producers) => response.with_active_producers(
                            producers.into_iter().map(producer_state).collect(),
                        ),
                        Err(error) => response
                            .with_error_code(replication_error_code(&error))
                            .with_error_message(Some(StrBytes::from_string(error.to_string()))),
                    }
                })
                .collect();
            TopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    DescribeProducersResponse::default().with_topics(topics)
}

fn active_producers(
    ctx: &RequestContext,
    topic: &str,
    partition: i32,
) -> Result<Vec<ActiveProducer>, ReplicationError> {
    match &ctx.cluster {
        Some(cluster) => {
            let replica = cluster.replica_for(topic, partition)?;
            if !replica.is_leader() {
                return Err(ReplicationError::NotLeader);
            }
            Ok(replica.active_producers()?)
        }
        None => ctx
            .broker
            .topic(topic)
            .and_then(|t| t.partition(partition))
            .map(|p| p.active_producers())
            .ok_or_else(|| {
                BrokerError::UnknownTopicOrPartition(format!("{topic}-{partition}")).into()
            }),
    }
}

fn producer_state(producer: ActiveProducer) -> ProducerState {
    ProducerState::default()
        .with_producer_id(ProducerId(producer.producer_id))
        .with_producer_epoch(i32::from(producer.epoch))
        .with_last_sequence(producer.last_sequence)
        .with_last_timestamp(producer.last_timestamp)
        .with_coordinator_epoch(if producer.transaction_first_offset.is_some() {
            0
        } else {
            -1
        })
        .with_current_txn_start_offset(producer.transaction_first_offset.unwrap_or(-1))
}
