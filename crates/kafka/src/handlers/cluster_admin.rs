//! Replica and log-dir administration on a one-node cluster: DescribeLogDirs,
//! AlterReplicaLogDirs, ElectLeaders, AlterPartitionReassignments, ListPartitionReassignments.
//!
//! Sluice has one log dir (the data dir) and every partition has exactly one replica, led by
//! this node. So moving a replica to the log dir it is in, electing the leader it has, or
//! "reassigning" it to this node succeed without doing anything; anything else is refused with
//! the error Kafka gives for it.

use std::path::Path;

use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::alter_replica_log_dirs_response::{
    AlterReplicaLogDirPartitionResult, AlterReplicaLogDirTopicResult,
};
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse,
    AlterReplicaLogDirsRequest, AlterReplicaLogDirsResponse, DescribeLogDirsRequest,
    DescribeLogDirsResponse, ElectLeadersRequest, ElectLeadersResponse,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_broker::{absolute_log_dir, disk_space, Topic};

use crate::RequestContext;

const ELECTION_PREFERRED: i8 = 0;
const ELECTION_UNCLEAN: i8 = 1;

fn message(text: String) -> Option<StrBytes> {
    Some(StrBytes::from_string(text))
}

pub async fn describe_log_dirs(
    ctx: &RequestContext,
    version: i16,
    request: DescribeLogDirsRequest,
) -> DescribeLogDirsResponse {
    let broker = &ctx.broker;
    let log_dir = absolute_log_dir(&broker.config().data_dir);
    // None asks for every partition; a listed topic or partition this broker lacks is left out.
    let wanted: Vec<(std::sync::Arc<Topic>, Option<Vec<i32>>)> = match request.topics {
        None => broker.topics().into_iter().map(|t| (t, None)).collect(),
        Some(topics) => topics
            .into_iter()
            .filter_map(|t| Some((broker.topic(t.topic.as_str())?, Some(t.partitions))))
            .collect(),
    };
    let topics = wanted
        .into_iter()
        .map(|(topic, indexes)| {
            let partitions = match indexes {
                None => topic.partitions(),
                Some(indexes) => indexes
                    .into_iter()
                    .filter_map(|index| topic.partition(index))
                    .collect(),
            };
            let partitions = partitions
                .iter()
                .map(|p| {
                    DescribeLogDirsPartition::default()
                        .with_partition_index(p.index())
                        .with_partition_size(
                            i64::try_from(p.log().size_bytes()).unwrap_or(i64::MAX),
                        )
                        .with_offset_lag(0)
                        .with_is_future_key(false)
                })
                .collect();
            DescribeLogDirsTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.name().to_string())))
                .with_partitions(partitions)
        })
        .filter(|t| !t.partitions.is_empty())
        .collect();
    let mut result = DescribeLogDirsResult::default()
        .with_log_dir(StrBytes::from_string(log_dir.display().to_string()))
        .with_topics(topics);
    if version >= 4 {
        let space = disk_space(&log_dir);
        let bytes = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        result = result
            .with_total_bytes(space.map_or(-1, |s| bytes(s.total_bytes)))
            .with_usable_bytes(space.map_or(-1, |s| bytes(s.usable_bytes)));
    }
    DescribeLogDirsResponse::default().with_results(vec![result])
}

/// Whether `requested` names the broker's log dir (as given, or after resolving symlinks).
fn is_log_dir(requested: &Path, log_dir: &Path) -> bool {
    if absolute_log_dir(requested) == log_dir {
        return true;
    }
    match (requested.canonicalize(), log_dir.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

pub async fn alter_replica_log_dirs(
    ctx: &RequestContext,
    _version: i16,
    request: AlterReplicaLogDirsRequest,
) -> AlterReplicaLogDirsResponse {
    let broker = &ctx.broker;
    let log_dir = absolute_log_dir(&broker.config().data_dir);
    let mut results = Vec::new();
    for dir in request.dirs {
        let known_dir = is_log_dir(Path::new(dir.path.as_str()), &log_dir);
        for topic in dir.topics {
            let found = broker.topic(topic.name.as_str());
            let partitions = topic
                .partitions
                .iter()
                .map(|&index| {
                    let error = if !known_dir {
                        ResponseError::LogDirNotFound.code()
                    } else if found.as_ref().and_then(|t| t.partition(index)).is_none() {
                        ResponseError::UnknownTopicOrPartition.code()
                    } else {
                        0 // already there: the only log dir
                    };
                    AlterReplicaLogDirPartitionResult::default()
                        .with_partition_index(index)
                        .with_error_code(error)
                })
                .collect();
            results.push(
                AlterReplicaLogDirTopicResult::default()
                    .with_topic_name(topic.name)
                    .with_partitions(partitions),
            );
        }
    }
    AlterReplicaLogDirsResponse::default().with_results(results)
}

pub async fn elect_leaders(
    ctx: &RequestContext,
    version: i16,
    request: ElectLeadersRequest,
) -> ElectLeadersResponse {
    let broker = &ctx.broker;
    // v0 has no election type: it always asks for the preferred leader.
    let election_type = if version >= 1 {
        request.election_type
    } else {
        ELECTION_PREFERRED
    };
    if election_type != ELECTION_PREFERRED && election_type != ELECTION_UNCLEAN {
        // Only reachable from v1, which has the top-level error code.
        return ElectLeadersResponse::default()
            .with_error_code(ResponseError::InvalidRequest.code());
    }
    // Without a list Kafka elects everywhere and reports only partitions whose leader changed:
    // here none does.
    let Some(topics) = request.topic_partitions else {
        return ElectLeadersResponse::default();
    };
    let results = topics
        .into_iter()
        .map(|topic| {
            let found = broker.topic(topic.topic.as_str());
            let partition_result = topic
                .partitions
                .iter()
                .map(|&index| {
                    let result = PartitionResult::default().with_partition_id(index);
                    if found.as_ref().and_then(|t| t.partition(index)).is_none() {
                        result
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            .with_error_message(message(format!(
                                "unknown partition {}-{index}",
                                topic.topic.as_str()
                            )))
                    } else {
                        result
                            .with_error_code(ResponseError::ElectionNotNeeded.code())
                            .with_error_message(message(format!(
                                "node {} already leads {}-{index}, its only replica",
                                broker.node_id(),
                                topic.topic.as_str()
                            )))
                    }
                })
                .collect();
            ReplicaElectionResult::default()
                .with_topic(topic.topic)
                .with_partition_result(partition_result)
        })
        .collect();
    ElectLeadersResponse::default().with_replica_election_results(results)
}

pub async fn alter_partition_reassignments(
    ctx: &RequestContext,
    _version: i16,
    request: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    let broker = &ctx.broker;
    let node_id = broker.node_id();
    let responses = request
        .topics
        .into_iter()
        .map(|topic| {
            let found = broker.topic(topic.name.as_str());
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let response =
                        ReassignablePartitionResponse::default().with_partition_index(p.partition_index);
                    let (error, text) = if found
                        .as_ref()
                        .and_then(|t| t.partition(p.partition_index))
                        .is_none()
                    {
                        (
                            ResponseError::UnknownTopicOrPartition,
                            format!("unknown partition {}-{}", topic.name.as_str(), p.partition_index),
                        )
                    } else {
                        match p.replicas.as_deref() {
                            // Cancelling: nothing is ever in progress.
                            None => (
                                ResponseError::NoReassignmentInProgress,
                                "no reassignment is in progress".to_string(),
                            ),
                            // One replica stays one replica: no replication factor change.
                            Some([only]) if only.0 == node_id => return response,
                            Some(replicas) => (
                                ResponseError::InvalidReplicaAssignment,
                                format!(
                                    "replicas {:?}: this one-node cluster only has broker {node_id}",
                                    replicas.iter().map(|r| r.0).collect::<Vec<_>>()
                                ),
                            ),
                        }
                    };
                    response
                        .with_error_code(error.code())
                        .with_error_message(message(text))
                })
                .collect();
            ReassignableTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    AlterPartitionReassignmentsResponse::default()
        .with_allow_replication_factor_change(request.allow_replication_factor_change)
        .with_responses(responses)
}

pub async fn list_partition_reassignments(
    _ctx: &RequestContext,
    _version: i16,
    _request: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    // Reassignments complete at once (or are refused), so none is ever ongoing.
    ListPartitionReassignmentsResponse::default()
}
