//! Share groups (KIP-932): ShareGroupHeartbeat, ShareGroupDescribe, ShareFetch,
//! ShareAcknowledge and the share-group offsets APIs (DescribeShareGroupOffsets,
//! AlterShareGroupOffsets, DeleteShareGroupOffsets), translated to the group coordinator's share
//! operations. Topics are named by id on the wire and by name in the coordinator.
//!
//! Single node only: in a cluster, membership lives on the coordinator node while records are
//! served by each partition's leader, and the share state would have to follow leadership.
//! Until it does, a cluster answers these APIs with UNSUPPORTED_VERSION, as Kafka does where
//! share groups are not enabled.
//!
//! Versions handled: ShareGroupHeartbeat, ShareGroupDescribe, ShareFetch and ShareAcknowledge
//! v1 (Kafka 4.1's), the three offsets APIs v0.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use kafka_protocol::messages::alter_share_group_offsets_response::{
    AlterShareGroupOffsetsResponsePartition, AlterShareGroupOffsetsResponseTopic,
};
use kafka_protocol::messages::delete_share_group_offsets_response::DeleteShareGroupOffsetsResponseTopic;
use kafka_protocol::messages::describe_share_group_offsets_response::{
    DescribeShareGroupOffsetsResponseGroup, DescribeShareGroupOffsetsResponsePartition,
    DescribeShareGroupOffsetsResponseTopic,
};
use kafka_protocol::messages::share_fetch_response::{
    AcquiredRecords, LeaderIdAndEpoch, PartitionData, ShareFetchableTopicResponse,
};
use kafka_protocol::messages::share_group_describe_response::{self, DescribedGroup, Member};
use kafka_protocol::messages::share_group_heartbeat_response::{self, Assignment};
use kafka_protocol::messages::{
    share_acknowledge_response, AlterShareGroupOffsetsRequest, AlterShareGroupOffsetsResponse,
    DeleteShareGroupOffsetsRequest, DeleteShareGroupOffsetsResponse,
    DescribeShareGroupOffsetsRequest, DescribeShareGroupOffsetsResponse, ShareAcknowledgeRequest,
    ShareAcknowledgeResponse, ShareFetchRequest, ShareFetchResponse, ShareGroupDescribeRequest,
    ShareGroupDescribeResponse, ShareGroupHeartbeatRequest, ShareGroupHeartbeatResponse, TopicName,
};
use kafka_protocol::ResponseError;
use sluice_broker::group_coordinator::{
    AcknowledgeType, AcknowledgementBatch, ShareHeartbeatParams, ShareLog, TopicPartition,
};
use sluice_broker::replication::ReplicationError;
use sluice_broker::{GroupCoordinator, GroupError};
use std::sync::Arc;
use uuid::Uuid;

use super::consumer_groups::{by_topic, topic_catalog};
use super::groups::{refused_here, str_bytes, GROUP_AUTHORIZED_OPERATIONS};
use crate::error_codes::group_error_code;
use crate::handlers::cluster::replication_error_code;
use crate::share_session::{SessionPartition, SessionStep};
use crate::RequestContext;

/// ShareGroupDescribe's "not requested" value for authorized_operations.
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;
/// Upper bound on how long one ShareFetch may park the connection.
const WAIT_MS_MAX: i32 = 30_000;
/// Records per ShareFetch when the request leaves it open (the client's `max.poll.records`).
const RECORDS_MAX_DEFAULT: usize = 500;

/// The share partition log of `topic`-`index` here: this node's partition or, in a cluster,
/// its replica while this node leads it (share partitions live on their partition's leader).
fn local_share_log(ctx: &RequestContext, topic: &str, index: i32) -> Option<Arc<dyn ShareLog>> {
    match &ctx.cluster {
        Some(cluster) => {
            let topic_id = cluster.topic(topic)?.topic_id;
            cluster.share_log(topic_id, index).ok().map(|(_, log)| log)
        }
        None => {
            let partition = ctx.broker.topic(topic)?.partition(index)?;
            Some(partition as Arc<dyn ShareLog>)
        }
    }
}

fn not_a_share_group(group_id: &str) -> String {
    format!("Group {group_id} is not a share group.")
}

fn error_message(error: &GroupError, group_id: &str) -> String {
    match error {
        GroupError::GroupIdNotFound => not_a_share_group(group_id),
        GroupError::UnknownMemberId => {
            format!("Member is not a member of group {group_id}.")
        }
        other => other.to_string(),
    }
}

pub async fn share_group_heartbeat(
    ctx: &RequestContext,
    _version: i16,
    request: ShareGroupHeartbeatRequest,
) -> ShareGroupHeartbeatResponse {
    if refused_here(ctx) {
        return ShareGroupHeartbeatResponse::default()
            .with_error_code(ResponseError::NotCoordinator.code());
    }
    let catalog = topic_catalog(ctx);
    let group_id = request.group_id.to_string();
    let params = ShareHeartbeatParams {
        group_id: group_id.clone(),
        member_id: request.member_id.to_string(),
        member_epoch: request.member_epoch,
        rack_id: request.rack_id.map(|id| id.to_string()),
        subscribed_topic_names: request
            .subscribed_topic_names
            .map(|names| names.into_iter().map(|n| n.to_string()).collect()),
        client_id: ctx.client_id.clone(),
        client_host: format!("/{}", ctx.client_host),
    };
    let partition_counts: BTreeMap<String, i32> = catalog
        .iter()
        .map(|(name, (_, count))| (name.clone(), *count))
        .collect();
    let coordinator = ctx.broker.group_coordinator();
    let result = match coordinator.share_group_heartbeat(params, &partition_counts) {
        Ok(result) => result,
        Err(error) => {
            return ShareGroupHeartbeatResponse::default()
                .with_error_code(group_error_code(&error))
                .with_error_message(Some(str_bytes(error_message(&error, &group_id))))
        }
    };
    // The start offsets of newly assigned partitions are fixed now, as Kafka initializes
    // share state on assignment: records written from here on are delivered. In a cluster
    // that happens here for the partitions this node leads, and on its leader's first
    // ShareFetch for the others.
    for partition in result.assignment.iter().flatten() {
        let Some(found) = local_share_log(ctx, &partition.topic, partition.partition) else {
            continue;
        };
        if let Err(error) = coordinator
            .initialize_share_partition(&group_id, found.as_ref())
            .await
        {
            return ShareGroupHeartbeatResponse::default()
                .with_error_code(group_error_code(&error))
                .with_error_message(Some(str_bytes(error.to_string())));
        }
    }
    let assignment = result.assignment.map(|partitions| {
        let topic_partitions = by_topic(&partitions)
            .into_iter()
            .filter_map(|(topic, indexes)| {
                let (topic_id, _) = catalog.get(topic)?;
                Some(
                    share_group_heartbeat_response::TopicPartitions::default()
                        .with_topic_id(*topic_id)
                        .with_partitions(indexes),
                )
            })
            .collect();
        Assignment::default().with_topic_partitions(topic_partitions)
    });
    ShareGroupHeartbeatResponse::default()
        .with_member_id(Some(str_bytes(result.member_id)))
        .with_member_epoch(result.member_epoch)
        .with_heartbeat_interval_ms(result.heartbeat_interval_ms)
        .with_assignment(assignment)
}

pub async fn share_group_describe(
    ctx: &RequestContext,
    _version: i16,
    request: ShareGroupDescribeRequest,
) -> ShareGroupDescribeResponse {
    let catalog = topic_catalog(ctx);
    let coordinator = ctx.broker.group_coordinator();
    let assignment = |partitions: &[TopicPartition]| {
        let topic_partitions = by_topic(partitions)
            .into_iter()
            .map(|(topic, indexes)| {
                let topic_id = catalog.get(topic).map(|(id, _)| *id).unwrap_or_default();
                share_group_describe_response::TopicPartitions::default()
                    .with_topic_id(topic_id)
                    .with_topic_name(TopicName(str_bytes(topic)))
                    .with_partitions(indexes)
            })
            .collect();
        share_group_describe_response::Assignment::default().with_topic_partitions(topic_partitions)
    };
    let groups = request
        .group_ids
        .into_iter()
        .map(|group_id| {
            if refused_here(ctx) {
                return DescribedGroup::default()
                    .with_group_id(group_id)
                    .with_error_code(ResponseError::NotCoordinator.code());
            }
            let description = match coordinator.describe_share_group(&group_id) {
                Ok(description) => description,
                Err(error) => {
                    let message = no_share_group_message(coordinator, &group_id);
                    return DescribedGroup::default()
                        .with_group_id(group_id)
                        .with_error_code(group_error_code(&error))
                        .with_error_message(Some(str_bytes(message)));
                }
            };
            let members = description
                .members
                .into_iter()
                .map(|m| {
                    Member::default()
                        .with_member_id(str_bytes(m.member_id))
                        .with_rack_id(m.rack_id.map(str_bytes))
                        .with_member_epoch(m.member_epoch)
                        .with_client_id(str_bytes(m.client_id))
                        .with_client_host(str_bytes(m.client_host))
                        .with_subscribed_topic_names(
                            m.subscribed_topic_names
                                .into_iter()
                                .map(|t| TopicName(str_bytes(t)))
                                .collect(),
                        )
                        .with_assignment(assignment(&m.assignment))
                })
                .collect();
            DescribedGroup::default()
                .with_group_id(group_id)
                .with_group_state(str_bytes(description.state.name()))
                .with_group_epoch(description.group_epoch)
                .with_assignment_epoch(description.assignment_epoch)
                .with_assignor_name(str_bytes(description.assignor_name))
                .with_members(members)
                .with_authorized_operations(if request.include_authorized_operations {
                    GROUP_AUTHORIZED_OPERATIONS
                } else {
                    AUTHORIZED_OPERATIONS_OMITTED
                })
        })
        .collect();
    ShareGroupDescribeResponse::default().with_groups(groups)
}

/// One acknowledgement batch from the wire; INVALID_REQUEST for an unknown type.
fn acknowledgement_batch(
    first_offset: i64,
    last_offset: i64,
    types: &[i8],
) -> Result<AcknowledgementBatch, GroupError> {
    let types = types
        .iter()
        .map(|&code| {
            AcknowledgeType::from_wire(code).ok_or_else(|| {
                GroupError::InvalidRequest(format!("Invalid acknowledge type: {code}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AcknowledgementBatch {
        first_offset,
        last_offset,
        types,
    })
}

/// A partition named by topic id: its name and its log here, or the error code for it (in a
/// cluster NOT_LEADER_OR_FOLLOWER where this node does not lead it).
fn resolve(
    ctx: &RequestContext,
    topic_id: Uuid,
    index: i32,
) -> Result<(String, Arc<dyn ShareLog>), i16> {
    if let Some(cluster) = &ctx.cluster {
        return cluster
            .share_log(topic_id, index)
            .map_err(|error| match error {
                ReplicationError::Broker(sluice_broker::BrokerError::UnknownTopicOrPartition(
                    _,
                )) if cluster.metadata().topic_by_id(topic_id).is_none() => {
                    ResponseError::UnknownTopicId.code()
                }
                other => replication_error_code(&other),
            });
    }
    let topic = ctx
        .broker
        .topic_by_id(topic_id)
        .ok_or(ResponseError::UnknownTopicId.code())?;
    let partition = topic
        .partition(index)
        .ok_or(ResponseError::UnknownTopicOrPartition.code())?;
    Ok((topic.name().to_string(), partition))
}

/// An acknowledgement batch as on the wire: first offset, last offset, types.
type WireBatch = (i64, i64, Vec<i8>);

/// Applies acknowledgements per partition; the error code of each (0 when all applied).
async fn acknowledge(
    ctx: &RequestContext,
    group_id: &str,
    member_id: &str,
    acknowledgements: Vec<(SessionPartition, Vec<WireBatch>)>,
) -> Vec<(SessionPartition, i16, Option<String>)> {
    let coordinator = ctx.broker.group_coordinator();
    let mut results = Vec::with_capacity(acknowledgements.len());
    for ((topic_id, index), batches) in acknowledgements {
        let outcome = async {
            let (topic, _) = resolve(ctx, topic_id, index).map_err(|code| (code, None))?;
            let batches = batches
                .iter()
                .map(|(first, last, types)| acknowledgement_batch(*first, *last, types))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| (group_error_code(&e), Some(e.to_string())))?;
            let partition = TopicPartition {
                topic,
                partition: index,
            };
            coordinator
                .share_acknowledge(group_id, member_id, &partition, &batches)
                .await
                .map_err(|e| (group_error_code(&e), Some(e.to_string())))
        }
        .await;
        let (code, message) = match outcome {
            Ok(()) => (0, None),
            Err((code, message)) => (code, message),
        };
        results.push(((topic_id, index), code, message));
    }
    results
}

fn leader(ctx: &RequestContext) -> LeaderIdAndEpoch {
    LeaderIdAndEpoch::default()
        .with_leader_id(ctx.broker.node_id())
        .with_leader_epoch(0)
}

pub async fn share_fetch(
    ctx: &RequestContext,
    _version: i16,
    request: ShareFetchRequest,
) -> ShareFetchResponse {
    let fail = |error: ResponseError, message: Option<String>| {
        ShareFetchResponse::default()
            .with_error_code(error.code())
            .with_error_message(message.map(str_bytes))
    };
    let (Some(group_id), Some(member_id)) = (&request.group_id, &request.member_id) else {
        return fail(
            ResponseError::InvalidRequest,
            Some("A share fetch names its group and member.".to_string()),
        );
    };
    let (group_id, member_id) = (group_id.to_string(), member_id.to_string());
    let mut added: Vec<SessionPartition> = Vec::new();
    let mut acknowledgements = Vec::new();
    for topic in &request.topics {
        for partition in &topic.partitions {
            added.push((topic.topic_id, partition.partition_index));
            if !partition.acknowledgement_batches.is_empty() {
                let batches = partition
                    .acknowledgement_batches
                    .iter()
                    .map(|b| (b.first_offset, b.last_offset, b.acknowledge_types.clone()))
                    .collect();
                acknowledgements.push(((topic.topic_id, partition.partition_index), batches));
            }
        }
    }
    if request.share_session_epoch == crate::share_session::INITIAL_EPOCH
        && !acknowledgements.is_empty()
    {
        return fail(
            ResponseError::InvalidRequest,
            Some("Acknowledge data present on initial fetch request".to_string()),
        );
    }
    let forgotten: Vec<SessionPartition> = request
        .forgotten_topics_data
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (t.topic_id, *p)))
        .collect();
    let step = match ctx.share_sessions.fetch(
        ctx.connection_id,
        &group_id,
        &member_id,
        request.share_session_epoch,
        &added,
        &forgotten,
    ) {
        Ok(step) => step,
        Err(error) => return fail(error, None),
    };
    let coordinator = ctx.broker.group_coordinator();
    let acknowledged = acknowledge(ctx, &group_id, &member_id, acknowledgements).await;
    let mut answers: BTreeMap<SessionPartition, PartitionData> = BTreeMap::new();
    let mut order: Vec<SessionPartition> = Vec::new();
    let leader = leader(ctx);
    for (key, code, message) in acknowledged {
        let data = slot(&mut answers, &mut order, key, &leader);
        data.acknowledge_error_code = code;
        data.acknowledge_error_message = message.map(str_bytes);
    }
    let partitions = match step {
        SessionStep::Close(_) => {
            coordinator.release_share_member(&group_id, &member_id);
            Vec::new()
        }
        SessionStep::Fetch(partitions) => partitions,
    };
    let mut targets: Vec<(SessionPartition, TopicPartition, Arc<dyn ShareLog>)> = Vec::new();
    for key in partitions {
        match resolve(ctx, key.0, key.1) {
            Ok((topic, partition)) => {
                if let Err(error) = coordinator
                    .initialize_share_partition(&group_id, partition.as_ref())
                    .await
                {
                    let data = slot(&mut answers, &mut order, key, &leader);
                    data.error_code = group_error_code(&error);
                    data.error_message = Some(str_bytes(error.to_string()));
                    continue;
                }
                targets.push((
                    key,
                    TopicPartition {
                        topic,
                        partition: key.1,
                    },
                    partition,
                ));
            }
            Err(code) => {
                slot(&mut answers, &mut order, key, &leader).error_code = code;
            }
        }
    }
    let records_max = match request.max_records {
        n if n > 0 => n as usize,
        _ => RECORDS_MAX_DEFAULT,
    };
    let bytes_max = match request.max_bytes {
        n if n > 0 => (n as usize).min(ctx.config.fetch_bytes_max),
        _ => ctx.config.fetch_bytes_max,
    };
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(request.max_wait_ms.clamp(0, WAIT_MS_MAX) as u64);
    let keys: Vec<TopicPartition> = targets.iter().map(|(_, tp, _)| tp.clone()).collect();
    while !targets.is_empty() {
        let data_ready = ctx.broker.data_ready().notified();
        tokio::pin!(data_ready);
        data_ready.as_mut().enable();
        let mut records_left = records_max;
        let mut bytes_left = bytes_max;
        let mut got_any = false;
        for (key, _, partition) in &targets {
            if records_left == 0 || bytes_left == 0 {
                break;
            }
            match coordinator.share_fetch(
                &group_id,
                &member_id,
                partition.as_ref(),
                records_left,
                bytes_left,
            ) {
                Ok(fetched) if fetched.acquired.is_empty() => {}
                Ok(fetched) => {
                    got_any = true;
                    let count: i64 = fetched
                        .acquired
                        .iter()
                        .map(|r| r.last_offset - r.first_offset + 1)
                        .sum();
                    records_left = records_left.saturating_sub(count as usize);
                    bytes_left = bytes_left.saturating_sub(fetched.records.len());
                    let data = slot(&mut answers, &mut order, *key, &leader);
                    data.records = Some(fetched.records);
                    data.acquired_records = fetched
                        .acquired
                        .iter()
                        .map(|r| {
                            AcquiredRecords::default()
                                .with_first_offset(r.first_offset)
                                .with_last_offset(r.last_offset)
                                .with_delivery_count(r.delivery_count)
                        })
                        .collect();
                }
                Err(error) => {
                    got_any = true;
                    let data = slot(&mut answers, &mut order, *key, &leader);
                    data.error_code = group_error_code(&error);
                    data.error_message = Some(str_bytes(error.to_string()));
                }
            }
        }
        let now = tokio::time::Instant::now();
        if got_any || now >= deadline {
            break;
        }
        // Wake for new data, for a lock that runs out, or at the deadline.
        let wake = coordinator
            .share_wait_hint(&group_id, &keys)
            .map_or(deadline, |at| {
                at.max(now + Duration::from_millis(1)).min(deadline)
            });
        let _ = tokio::time::timeout_at(wake, data_ready).await;
    }
    let mut by_topic: Vec<(Uuid, Vec<PartitionData>)> = Vec::new();
    for key in order {
        let Some(data) = answers.remove(&key) else {
            continue;
        };
        match by_topic.iter_mut().find(|(id, _)| *id == key.0) {
            Some((_, partitions)) => partitions.push(data),
            None => by_topic.push((key.0, vec![data])),
        }
    }
    ShareFetchResponse::default()
        .with_acquisition_lock_timeout_ms(coordinator.share_lock_duration_ms(&group_id))
        .with_responses(
            by_topic
                .into_iter()
                .map(|(topic_id, partitions)| {
                    ShareFetchableTopicResponse::default()
                        .with_topic_id(topic_id)
                        .with_partitions(partitions)
                })
                .collect(),
        )
}

/// The response entry of `key`, created (in request order) on first use.
fn slot<'a>(
    answers: &'a mut BTreeMap<SessionPartition, PartitionData>,
    order: &mut Vec<SessionPartition>,
    key: SessionPartition,
    leader: &LeaderIdAndEpoch,
) -> &'a mut PartitionData {
    if !answers.contains_key(&key) {
        order.push(key);
    }
    answers.entry(key).or_insert_with(|| {
        PartitionData::default()
            .with_partition_index(key.1)
            .with_current_leader(leader.clone())
            .with_records(Some(bytes::Bytes::new()))
    })
}

pub async fn share_acknowledge(
    ctx: &RequestContext,
    _version: i16,
    request: ShareAcknowledgeRequest,
) -> ShareAcknowledgeResponse {
    let fail = |error: ResponseError, message: Option<String>| {
        ShareAcknowledgeResponse::default()
            .with_error_code(error.code())
            .with_error_message(message.map(str_bytes))
    };
    let (Some(group_id), Some(member_id)) = (&request.group_id, &request.member_id) else {
        return fail(
            ResponseError::InvalidRequest,
            Some("A share acknowledgement names its group and member.".to_string()),
        );
    };
    let (group_id, member_id) = (group_id.to_string(), member_id.to_string());
    let step =
        match ctx
            .share_sessions
            .acknowledge(&group_id, &member_id, request.share_session_epoch)
        {
            Ok(step) => step,
            Err(error) => return fail(error, None),
        };
    let acknowledgements = request
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(move |p| {
                let batches = p
                    .acknowledgement_batches
                    .iter()
                    .map(|b| (b.first_offset, b.last_offset, b.acknowledge_types.clone()))
                    .collect();
                ((topic.topic_id, p.partition_index), batches)
            })
        })
        .collect();
    let acknowledged = acknowledge(ctx, &group_id, &member_id, acknowledgements).await;
    if matches!(step, SessionStep::Close(_)) {
        ctx.broker
            .group_coordinator()
            .release_share_member(&group_id, &member_id);
    }
    let mut by_topic: Vec<(Uuid, Vec<share_acknowledge_response::PartitionData>)> = Vec::new();
    for ((topic_id, index), code, message) in acknowledged {
        let data = share_acknowledge_response::PartitionData::default()
            .with_partition_index(index)
            .with_error_code(code)
            .with_error_message(message.map(str_bytes))
            .with_current_leader(
                share_acknowledge_response::LeaderIdAndEpoch::default()
                    .with_leader_id(ctx.broker.node_id())
                    .with_leader_epoch(0),
            );
        match by_topic.iter_mut().find(|(id, _)| *id == topic_id) {
            Some((_, partitions)) => partitions.push(data),
            None => by_topic.push((topic_id, vec![data])),
        }
    }
    ShareAcknowledgeResponse::default().with_responses(
        by_topic
            .into_iter()
            .map(|(topic_id, partitions)| {
                share_acknowledge_response::ShareAcknowledgeTopicResponse::default()
                    .with_topic_id(topic_id)
                    .with_partitions(partitions)
            })
            .collect(),
    )
}

/// Kafka's message for UNKNOWN_TOPIC_OR_PARTITION on a partition it does not know.
const NOT_HOSTED: &str = "This server does not host this topic-partition.";

pub async fn describe_share_group_offsets(
    ctx: &RequestContext,
    _version: i16,
    request: DescribeShareGroupOffsetsRequest,
) -> DescribeShareGroupOffsetsResponse {
    let catalog = topic_catalog(ctx);
    let coordinator = ctx.broker.group_coordinator();
    let groups = request
        .groups
        .into_iter()
        .map(|group| {
            let group_id = group.group_id.to_string();
            let answer = DescribeShareGroupOffsetsResponseGroup::default()
                .with_group_id(group.group_id.clone());
            if refused_here(ctx) {
                return answer.with_error_code(ResponseError::NotCoordinator.code());
            }
            if !coordinator.is_share_group(&group_id) {
                let message = no_share_group_message(coordinator, &group_id);
                return answer
                    .with_error_code(ResponseError::GroupIdNotFound.code())
                    .with_error_message(Some(str_bytes(message)));
            }
            let offsets: HashMap<TopicPartition, i64> = coordinator
                .share_group_offsets(&group_id)
                .into_iter()
                .collect();
            let wanted: Vec<(String, Vec<i32>)> = match group.topics {
                Some(topics) => topics
                    .into_iter()
                    .map(|t| (t.topic_name.to_string(), t.partitions))
                    .collect(),
                None => {
                    let mut all: BTreeMap<String, Vec<i32>> = BTreeMap::new();
                    for partition in offsets.keys() {
                        all.entry(partition.topic.clone())
                            .or_default()
                            .push(partition.partition);
                    }
                    all.into_iter()
                        .map(|(topic, mut partitions)| {
                            partitions.sort_unstable();
                            (topic, partitions)
                        })
                        .collect()
                }
            };
            let topics = wanted
                .into_iter()
                .map(|(topic, partitions)| {
                    let topic_id = catalog.get(&topic).map(|(id, _)| *id);
                    let partitions = partitions
                        .into_iter()
                        .map(|index| {
                            let data = DescribeShareGroupOffsetsResponsePartition::default()
                                .with_partition_index(index)
                                .with_leader_epoch(0);
                            if topic_id.is_none() {
                                return data.with_start_offset(-1).with_error_code(
                                    ResponseError::UnknownTopicOrPartition.code(),
                                );
                            }
                            let key = TopicPartition {
                                topic: topic.clone(),
                                partition: index,
                            };
                            data.with_start_offset(offsets.get(&key).copied().unwrap_or(-1))
                        })
                        .collect();
                    DescribeShareGroupOffsetsResponseTopic::default()
                        .with_topic_name(TopicName(str_bytes(&topic)))
                        .with_topic_id(topic_id.unwrap_or_default())
                        .with_partitions(partitions)
                })
                .collect();
            answer.with_topics(topics)
        })
        .collect();
    DescribeShareGroupOffsetsResponse::default().with_groups(groups)
}

pub async fn alter_share_group_offsets(
    ctx: &RequestContext,
    _version: i16,
    request: AlterShareGroupOffsetsRequest,
) -> AlterShareGroupOffsetsResponse {
    let group_id = request.group_id.to_string();
    let refused = |code: i16, message: String| {
        AlterShareGroupOffsetsResponse::default()
            .with_error_code(code)
            .with_error_message(Some(str_bytes(message)))
    };
    if refused_here(ctx) {
        return refused(
            ResponseError::NotCoordinator.code(),
            "This node is not the group coordinator.".to_string(),
        );
    }
    if request.topics.is_empty() {
        return AlterShareGroupOffsetsResponse::default();
    }
    let catalog = topic_catalog(ctx);
    // Partitions of unknown topics (or past a topic's last partition) are refused one by
    // one; the rest go to the coordinator together.
    let mut offsets = Vec::new();
    let mut responses = Vec::new();
    for topic in &request.topics {
        let name = topic.topic_name.to_string();
        let known = catalog.get(&name).copied();
        let partitions = topic
            .partitions
            .iter()
            .map(|p| {
                let answer = AlterShareGroupOffsetsResponsePartition::default()
                    .with_partition_index(p.partition_index);
                match known {
                    Some((_, count)) if (0..count).contains(&p.partition_index) => {
                        offsets.push((
                            TopicPartition {
                                topic: name.clone(),
                                partition: p.partition_index,
                            },
                            p.start_offset,
                        ));
                        answer
                    }
                    _ => answer
                        .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                        .with_error_message(Some(str_bytes(NOT_HOSTED))),
                }
            })
            .collect();
        responses.push(
            AlterShareGroupOffsetsResponseTopic::default()
                .with_topic_name(topic.topic_name.clone())
                .with_topic_id(known.map(|(id, _)| id).unwrap_or_default())
                .with_partitions(partitions),
        );
    }
    let coordinator = ctx.broker.group_coordinator();
    match coordinator
        .alter_share_group_offsets(&group_id, &offsets)
        .await
    {
        Ok(()) => AlterShareGroupOffsetsResponse::default().with_responses(responses),
        // On every partition too: Kafka 4.1's admin client reads only the partitions' errors
        // (its broker drops the top-level one, KAFKA-19440), so a refusal there would pass for
        // success.
        Err(error) => {
            let code = group_error_code(&error);
            let message = share_offsets_error_message(ctx, &error, &group_id);
            for partition in responses.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
                if partition.error_code == 0 {
                    partition.error_code = code;
                    partition.error_message = Some(str_bytes(&message));
                }
            }
            AlterShareGroupOffsetsResponse::default()
                .with_error_code(code)
                .with_error_message(Some(str_bytes(message)))
                .with_responses(responses)
        }
    }
}

/// The messages of a refused AlterShareGroupOffsets or DeleteShareGroupOffsets, Kafka's.
fn share_offsets_error_message(ctx: &RequestContext, error: &GroupError, group_id: &str) -> String {
    match error {
        GroupError::NonEmptyGroup => "The group is not empty.".to_string(),
        GroupError::GroupIdNotFound if !group_exists(ctx.broker.group_coordinator(), group_id) => {
            format!("Group {group_id} not found.")
        }
        other => error_message(other, group_id),
    }
}

/// Whether `group_id` is a group of any type.
fn group_exists(coordinator: &GroupCoordinator, group_id: &str) -> bool {
    coordinator
        .list_groups()
        .iter()
        .any(|g| g.group_id == group_id)
}

/// Kafka's message for a share-group request on `group_id` that is no share group: another
/// type of group, or none.
fn no_share_group_message(coordinator: &GroupCoordinator, group_id: &str) -> String {
    if group_exists(coordinator, group_id) {
        not_a_share_group(group_id)
    } else {
        format!("Group {group_id} not found.")
    }
}

pub async fn delete_share_group_offsets(
    ctx: &RequestContext,
    _version: i16,
    request: DeleteShareGroupOffsetsRequest,
) -> DeleteShareGroupOffsetsResponse {
    let group_id = request.group_id.to_string();
    let refused = |code: i16, message: String| {
        DeleteShareGroupOffsetsResponse::default()
            .with_error_code(code)
            .with_error_message(Some(str_bytes(message)))
    };
    if refused_here(ctx) {
        return refused(
            ResponseError::NotCoordinator.code(),
            "This node is not the group coordinator.".to_string(),
        );
    }
    if request.topics.is_empty() {
        return DeleteShareGroupOffsetsResponse::default();
    }
    let catalog = topic_catalog(ctx);
    let topics: Vec<String> = request
        .topics
        .iter()
        .map(|t| t.topic_name.to_string())
        .filter(|name| catalog.contains_key(name))
        .collect();
    let coordinator = ctx.broker.group_coordinator();
    let deleted = match coordinator
        .delete_share_group_offsets(&group_id, &topics)
        .await
    {
        Ok(deleted) => deleted,
        Err(error) => {
            let message = share_offsets_error_message(ctx, &error, &group_id);
            return refused(group_error_code(&error), message);
        }
    };
    let responses = request
        .topics
        .iter()
        .map(|topic| {
            let name = topic.topic_name.to_string();
            let answer = DeleteShareGroupOffsetsResponseTopic::default()
                .with_topic_name(topic.topic_name.clone());
            let unknown = |message: &str| {
                answer
                    .clone()
                    .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                    .with_error_message(Some(str_bytes(message)))
            };
            match catalog.get(&name) {
                Some((id, _)) if deleted.contains(&name) => answer.with_topic_id(*id),
                Some(_) => unknown("There is no offset information to delete."),
                None => unknown(NOT_HOSTED),
            }
        })
        .collect();
    DeleteShareGroupOffsetsResponse::default().with_responses(responses)
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use kafka_protocol::messages::share_acknowledge_request::{
        self, AcknowledgePartition, AcknowledgeTopic,
    };
    use kafka_protocol::messages::share_fetch_request::{self, FetchPartition, FetchTopic};
    use kafka_protocol::messages::GroupId;
    use sluice_broker::Acks;
    use sluice_log::{Record, RecordBatchBuilder};

    use super::*;
    use crate::handlers::groups::tests::{context, encodes};

    const ACCEPT: i8 = 1;
    const RELEASE: i8 = 2;

    async fn produce(ctx: &RequestContext, count: usize) {
        let partition = ctx.broker.topic("events").unwrap().partition(0).unwrap();
        let mut builder = RecordBatchBuilder::new();
        for i in 0..count {
            builder.push(Record {
                value: Some(format!("v{i}").into_bytes()),
                timestamp: 1,
                ..Record::default()
            });
        }
        partition
            .produce(BytesMut::from(&builder.build()[..]), Acks::All)
            .await
            .unwrap();
    }

    fn fetch_request(
        member: &str,
        epoch: i32,
        topic_id: Uuid,
        acks: Vec<share_fetch_request::AcknowledgementBatch>,
    ) -> ShareFetchRequest {
        ShareFetchRequest::default()
            .with_group_id(Some(GroupId(str_bytes("sg"))))
            .with_member_id(Some(str_bytes(member)))
            .with_share_session_epoch(epoch)
            .with_max_wait_ms(10)
            .with_max_records(100)
            .with_max_bytes(1 << 20)
            .with_topics(vec![FetchTopic::default()
                .with_topic_id(topic_id)
                .with_partitions(vec![FetchPartition::default()
                    .with_partition_index(0)
                    .with_acknowledgement_batches(acks)])])
    }

    fn acquired(response: &ShareFetchResponse) -> Vec<(i64, i64, i16)> {
        response
            .responses
            .iter()
            .flat_map(|t| t.partitions.iter())
            .flat_map(|p| p.acquired_records.iter())
            .map(|r| (r.first_offset, r.last_offset, r.delivery_count))
            .collect()
    }

    #[tokio::test]
    async fn a_member_fetches_acknowledges_and_released_records_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        let topic_id = ctx.broker.topic("events").unwrap().id();
        let coordinator = ctx.broker.group_coordinator();
        coordinator
            .alter_group_configs(
                "sg",
                &[("share.auto.offset.reset".into(), Some("earliest".into()))],
                false,
            )
            .unwrap();
        produce(&ctx, 3).await;
        let joined = share_group_heartbeat(
            &ctx,
            1,
            ShareGroupHeartbeatRequest::default()
                .with_group_id(GroupId(str_bytes("sg")))
                .with_member_id(str_bytes("m1"))
                .with_subscribed_topic_names(Some(vec![TopicName(str_bytes("events"))])),
        )
        .await;
        assert_eq!(joined.error_code, 0, "{joined:?}");
        assert_eq!(joined.member_epoch, 1);
        let assignment = joined.assignment.clone().unwrap();
        assert_eq!(assignment.topic_partitions[0].partitions, vec![0, 1]);
        encodes(&joined, 1);

        let first = share_fetch(&ctx, 1, fetch_request("m1", 0, topic_id, vec![])).await;
        assert_eq!(first.error_code, 0, "{first:?}");
        assert_eq!(acquired(&first), vec![(0, 2, 1)]);
        assert_eq!(first.acquisition_lock_timeout_ms, 30_000);
        encodes(&first, 1);

        // Accept 0 and 2, release 1 (per-offset types), in the next fetch.
        let acks = vec![share_fetch_request::AcknowledgementBatch::default()
            .with_first_offset(0)
            .with_last_offset(2)
            .with_acknowledge_types(vec![ACCEPT, RELEASE, ACCEPT])];
        let second = share_fetch(&ctx, 1, fetch_request("m1", 1, topic_id, acks)).await;
        let partition = &second.responses[0].partitions[0];
        assert_eq!(partition.acknowledge_error_code, 0, "{second:?}");
        assert_eq!(acquired(&second), vec![(1, 1, 2)]);

        // A wrong epoch, and an acknowledgement of a record another member holds.
        let stale = share_fetch(&ctx, 1, fetch_request("m1", 1, topic_id, vec![])).await;
        assert_eq!(
            stale.error_code,
            ResponseError::InvalidShareSessionEpoch.code()
        );
        let other = share_acknowledge(
            &ctx,
            1,
            ShareAcknowledgeRequest::default()
                .with_group_id(Some(GroupId(str_bytes("sg"))))
                .with_member_id(Some(str_bytes("m2")))
                .with_share_session_epoch(1),
        )
        .await;
        assert_eq!(other.error_code, ResponseError::ShareSessionNotFound.code());

        // Closing the session accepts what it names and releases the rest.
        let closed = share_acknowledge(
            &ctx,
            1,
            ShareAcknowledgeRequest::default()
                .with_group_id(Some(GroupId(str_bytes("sg"))))
                .with_member_id(Some(str_bytes("m1")))
                .with_share_session_epoch(-1)
                .with_topics(vec![AcknowledgeTopic::default()
                    .with_topic_id(topic_id)
                    .with_partitions(vec![AcknowledgePartition::default()
                        .with_partition_index(0)
                        .with_acknowledgement_batches(vec![
                            share_acknowledge_request::AcknowledgementBatch::default()
                                .with_first_offset(1)
                                .with_last_offset(1)
                                .with_acknowledge_types(vec![ACCEPT]),
                        ])])]),
        )
        .await;
        assert_eq!(closed.error_code, 0, "{closed:?}");
        assert_eq!(closed.responses[0].partitions[0].error_code, 0);
        encodes(&closed, 1);

        let offsets = describe_share_group_offsets(
            &ctx,
            0,
            DescribeShareGroupOffsetsRequest::default().with_groups(vec![
                kafka_protocol::messages::describe_share_group_offsets_request::DescribeShareGroupOffsetsRequestGroup::default()
                    .with_group_id(GroupId(str_bytes("sg")))
                    .with_topics(None),
            ]),
        )
        .await;
        assert_eq!(offsets.groups[0].error_code, 0, "{offsets:?}");
        let partitions: Vec<(i32, i64)> = offsets.groups[0].topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.start_offset))
            .collect();
        assert_eq!(partitions, vec![(0, 3), (1, 0)]);
        encodes(&offsets, 0);

        let described = share_group_describe(
            &ctx,
            1,
            ShareGroupDescribeRequest::default()
                .with_group_ids(vec![GroupId(str_bytes("sg")), GroupId(str_bytes("none"))]),
        )
        .await;
        assert_eq!(described.groups[0].group_state.as_str(), "Stable");
        assert_eq!(described.groups[0].members[0].member_id.as_str(), "m1");
        assert_eq!(
            described.groups[1].error_code,
            ResponseError::GroupIdNotFound.code()
        );
        encodes(&described, 1);
    }

    async fn heartbeat(ctx: &RequestContext, member: &str, epoch: i32) {
        let request = ShareGroupHeartbeatRequest::default()
            .with_group_id(GroupId(str_bytes("sg")))
            .with_member_id(str_bytes(member))
            .with_member_epoch(epoch)
            .with_subscribed_topic_names(
                (epoch == 0).then(|| vec![TopicName(str_bytes("events"))]),
            );
        let answer = share_group_heartbeat(ctx, 1, request).await;
        assert_eq!(answer.error_code, 0, "{answer:?}");
    }

    fn alter_request(
        group: &str,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> AlterShareGroupOffsetsRequest {
        use kafka_protocol::messages::alter_share_group_offsets_request::{
            AlterShareGroupOffsetsRequestPartition, AlterShareGroupOffsetsRequestTopic,
        };
        AlterShareGroupOffsetsRequest::default()
            .with_group_id(GroupId(str_bytes(group)))
            .with_topics(vec![AlterShareGroupOffsetsRequestTopic::default()
                .with_topic_name(TopicName(str_bytes(topic)))
                .with_partitions(vec![
                    AlterShareGroupOffsetsRequestPartition::default()
                        .with_partition_index(partition)
                        .with_start_offset(offset),
                ])])
    }

    fn delete_request(topics: &[&str]) -> DeleteShareGroupOffsetsRequest {
        use kafka_protocol::messages::delete_share_group_offsets_request::DeleteShareGroupOffsetsRequestTopic;
        DeleteShareGroupOffsetsRequest::default()
            .with_group_id(GroupId(str_bytes("sg")))
            .with_topics(
                topics
                    .iter()
                    .map(|t| {
                        DeleteShareGroupOffsetsRequestTopic::default()
                            .with_topic_name(TopicName(str_bytes(*t)))
                    })
                    .collect(),
            )
    }

    async fn stored_starts(ctx: &RequestContext) -> Vec<(String, i32, i64)> {
        let described = describe_share_group_offsets(
            ctx,
            0,
            DescribeShareGroupOffsetsRequest::default().with_groups(vec![
                kafka_protocol::messages::describe_share_group_offsets_request::DescribeShareGroupOffsetsRequestGroup::default()
                    .with_group_id(GroupId(str_bytes("sg")))
                    .with_topics(None),
            ]),
        )
        .await;
        assert_eq!(described.groups[0].error_code, 0, "{described:?}");
        described.groups[0]
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.topic_name.to_string(), p.partition_index, p.start_offset))
            })
            .collect()
    }

    #[tokio::test]
    async fn share_group_offsets_are_altered_and_deleted_only_while_the_group_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        let topic_id = ctx.broker.topic("events").unwrap().id();
        ctx.broker
            .group_coordinator()
            .alter_group_configs(
                "sg",
                &[("share.auto.offset.reset".into(), Some("earliest".into()))],
                false,
            )
            .unwrap();
        produce(&ctx, 3).await;
        heartbeat(&ctx, "m1", 0).await;
        let fetched = share_fetch(&ctx, 1, fetch_request("m1", 0, topic_id, vec![])).await;
        assert_eq!(acquired(&fetched), vec![(0, 2, 1)]);

        // A member is in the group: refused, at the top and on each partition.
        let busy = alter_share_group_offsets(&ctx, 0, alter_request("sg", "events", 0, 1)).await;
        assert_eq!(busy.error_code, ResponseError::NonEmptyGroup.code());
        assert_eq!(
            busy.error_message.as_deref(),
            Some("The group is not empty.")
        );
        assert_eq!(
            busy.responses[0].partitions[0].error_code,
            ResponseError::NonEmptyGroup.code()
        );
        encodes(&busy, 0);
        let busy = delete_share_group_offsets(&ctx, 0, delete_request(&["events"])).await;
        assert_eq!(busy.error_code, ResponseError::NonEmptyGroup.code());
        let missing =
            alter_share_group_offsets(&ctx, 0, alter_request("nobody", "events", 0, 1)).await;
        assert_eq!(missing.error_code, ResponseError::GroupIdNotFound.code());
        assert_eq!(
            missing.error_message.as_deref(),
            Some("Group nobody not found.")
        );

        // Once it is empty: offset 1 on partition 0 (the in-flight records start over there);
        // unknown topics and partitions are refused one by one.
        heartbeat(&ctx, "m1", -1).await;
        let altered = alter_share_group_offsets(&ctx, 0, alter_request("sg", "events", 0, 1)).await;
        assert_eq!(altered.error_code, 0, "{altered:?}");
        assert_eq!(altered.responses[0].topic_id, topic_id);
        assert_eq!(altered.responses[0].partitions[0].error_code, 0);
        encodes(&altered, 0);
        for (topic, partition) in [("nope", 0), ("events", 5)] {
            let refused =
                alter_share_group_offsets(&ctx, 0, alter_request("sg", topic, partition, 0)).await;
            assert_eq!(
                refused.responses[0].partitions[0].error_code,
                ResponseError::UnknownTopicOrPartition.code(),
                "{refused:?}"
            );
        }
        assert_eq!(
            stored_starts(&ctx).await,
            vec![("events".to_string(), 0, 1), ("events".to_string(), 1, 0)]
        );
        heartbeat(&ctx, "m2", 0).await;
        let again = share_fetch(&ctx, 1, fetch_request("m2", 0, topic_id, vec![])).await;
        assert_eq!(acquired(&again), vec![(1, 2, 1)]);
        heartbeat(&ctx, "m2", -1).await;

        // Deleting forgets the topic's state; a second time there is nothing to delete.
        let deleted =
            delete_share_group_offsets(&ctx, 0, delete_request(&["events", "nope"])).await;
        assert_eq!(deleted.error_code, 0, "{deleted:?}");
        assert_eq!(deleted.responses[0].error_code, 0);
        assert_eq!(deleted.responses[0].topic_id, topic_id);
        assert_eq!(
            deleted.responses[1].error_code,
            ResponseError::UnknownTopicOrPartition.code()
        );
        encodes(&deleted, 0);
        assert_eq!(stored_starts(&ctx).await, vec![]);
        let twice = delete_share_group_offsets(&ctx, 0, delete_request(&["events"])).await;
        assert_eq!(
            twice.responses[0].error_message.as_deref(),
            Some("There is no offset information to delete.")
        );
    }

    #[tokio::test]
    async fn a_deleted_topics_share_state_goes_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        let topic_id = ctx.broker.topic("events").unwrap().id();
        heartbeat(&ctx, "m1", 0).await;
        share_fetch(&ctx, 1, fetch_request("m1", 0, topic_id, vec![])).await;
        heartbeat(&ctx, "m1", -1).await;
        assert!(!stored_starts(&ctx).await.is_empty());

        ctx.broker.delete_topic("events").unwrap();
        // The coordinator forgets it in the background.
        for _ in 0..100 {
            if ctx
                .broker
                .group_coordinator()
                .share_group_offsets("sg")
                .is_empty()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the deleted topic's share state is still there");
    }
}
