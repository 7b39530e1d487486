//! AlterPartitionReassignments and ListPartitionReassignments in cluster mode: the target
//! replicas go to the metadata group, and each partition's Raft leader moves its group there
//! with openraft membership changes (see `ClusterBroker::reassign_partition`). Any node
//! accepts the request (the metadata write is forwarded to the metadata leader), so
//! NOT_CONTROLLER is never needed; a metadata group without a leader answers
//! REQUEST_TIMED_OUT.

use std::time::Duration;

use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_broker::replication::{ClusterBroker, ReassignmentError, ReplicationError};
use sluice_cluster::NodeId;

fn reassignment_error_code(error: &ReassignmentError) -> i16 {
    match error {
        ReassignmentError::UnknownTopicOrPartition(_) => ResponseError::UnknownTopicOrPartition,
        ReassignmentError::InvalidAssignment(_) => ResponseError::InvalidReplicaAssignment,
        ReassignmentError::NoReassignmentInProgress(_) | ReassignmentError::Completing(_) => {
            ResponseError::NoReassignmentInProgress
        }
        ReassignmentError::Replication(ReplicationError::Timeout) => ResponseError::RequestTimedOut,
        ReassignmentError::Replication(_) => ResponseError::UnknownServerError,
    }
    .code()
}

/// Broker ids as node ids: a negative id names no broker.
fn node_ids(replicas: &[BrokerId]) -> Result<Vec<NodeId>, ReassignmentError> {
    replicas
        .iter()
        .map(|id| {
            NodeId::try_from(id.0)
                .map_err(|_| ReassignmentError::InvalidAssignment(format!("broker id {}", id.0)))
        })
        .collect()
}

fn broker_ids(nodes: &[NodeId]) -> Vec<BrokerId> {
    nodes
        .iter()
        .map(|&id| BrokerId(i32::try_from(id).unwrap_or(i32::MAX)))
        .collect()
}

pub async fn alter_partition_reassignments(
    cluster: &ClusterBroker,
    request: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    let allow_replication_factor_change = request.allow_replication_factor_change;
    // `timeout_ms` bounds the whole request, as Kafka's controller does: what is not recorded
    // by then is answered REQUEST_TIMED_OUT (it may still take effect, as in Kafka).
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0));
    let mut responses = Vec::new();
    for topic in request.topics {
        let current = cluster.topic(topic.name.as_str());
        let mut partitions = Vec::new();
        for partition in topic.partitions {
            let target = match partition.replicas.as_deref().map(node_ids).transpose() {
                Ok(target) => target,
                Err(error) => {
                    partitions.push(partition_response(partition.partition_index, Err(error)));
                    continue;
                }
            };
            // KIP-860 (v1): a move that would change the partition's replica count is
            // refused when the client disallows it, as `kafka-reassign-partitions
            // --disallow-replication-factor-change` asks.
            let replicas_now = current.as_ref().and_then(|t| {
                usize::try_from(partition.partition_index)
                    .ok()
                    .and_then(|p| t.assignments.get(p))
                    .map(Vec::len)
            });
            if let (false, Some(target), Some(now)) =
                (allow_replication_factor_change, &target, replicas_now)
            {
                if target.len() != now {
                    partitions.push(
                        ReassignablePartitionResponse::default()
                            .with_partition_index(partition.partition_index)
                            .with_error_code(ResponseError::InvalidReplicationFactor.code())
                            .with_error_message(Some(StrBytes::from_string(format!(
                                "the replication factor would change from {now} to {}, which the request disallows",
                                target.len()
                            )))),
                    );
                    continue;
                }
            }
            let reassigning =
                cluster.reassign_partition(topic.name.as_str(), partition.partition_index, target);
            let outcome = tokio::time::timeout_at(deadline, reassigning)
                .await
                .unwrap_or(Err(ReassignmentError::Replication(
                    ReplicationError::Timeout,
                )));
            partitions.push(partition_response(partition.partition_index, outcome));
        }
        responses.push(
            ReassignableTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    AlterPartitionReassignmentsResponse::default()
        .with_allow_replication_factor_change(allow_replication_factor_change)
        .with_responses(responses)
}

fn partition_response(
    index: i32,
    outcome: Result<(), ReassignmentError>,
) -> ReassignablePartitionResponse {
    let response = ReassignablePartitionResponse::default().with_partition_index(index);
    match outcome {
        Ok(()) => response,
        Err(error) => response
            .with_error_code(reassignment_error_code(&error))
            .with_error_message(Some(StrBytes::from_string(error.to_string()))),
    }
}

pub async fn list_partition_reassignments(
    cluster: &ClusterBroker,
    request: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    let wanted: Option<Vec<(String, Vec<i32>)>> = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.name.as_str().to_string(), t.partition_indexes))
            .collect()
    });
    let mut topics: Vec<OngoingTopicReassignment> = Vec::new();
    for ongoing in cluster.reassignments(wanted.as_deref()) {
        let partition = OngoingPartitionReassignment::default()
            .with_partition_index(ongoing.partition)
            .with_replicas(broker_ids(&ongoing.replicas))
            .with_adding_replicas(broker_ids(&ongoing.adding))
            .with_removing_replicas(broker_ids(&ongoing.removing));
        match topics.last_mut() {
            Some(last) if last.name.as_str() == ongoing.topic => last.partitions.push(partition),
            _ => topics.push(
                OngoingTopicReassignment::default()
                    .with_name(TopicName(StrBytes::from_string(ongoing.topic)))
                    .with_partitions(vec![partition]),
            ),
        }
    }
    ListPartitionReassignmentsResponse::default().with_topics(topics)
}
