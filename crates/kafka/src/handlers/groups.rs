//! FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch,
//! ListGroups, DescribeGroups, DeleteGroups, OffsetDelete: translation to
//! [`sluice_broker::GroupCoordinator`].
//!
//! Versions handled: FindCoordinator 0-6, JoinGroup 0-9, SyncGroup 0-5, Heartbeat 0-4,
//! LeaveGroup 0-5, OffsetCommit 2-9, OffsetFetch 1-9, ListGroups 0-5, DescribeGroups 0-6,
//! DeleteGroups 0-2, OffsetDelete 0. Fields a version lacks are left at their defaults so encoding succeeds.

use bytes::Bytes;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, ConsumerProtocolSubscription, DeleteGroupsRequest, DeleteGroupsResponse,
    DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse,
    GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse,
    OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::ResponseError;
use sluice_broker::gauge_sampler::record_committed_lag;
use sluice_broker::group_coordinator::{
    GroupOverview, GroupProtocol, GroupState, JoinGroupParams, MemberIdentity, OffsetAndMetadata,
    SyncGroupParams, TopicPartition, GROUP_TYPE_CLASSIC,
};
use sluice_broker::{now_ms, GroupError};

use crate::error_codes::group_error_code;
use crate::RequestContext;

/// The "no error" code, which `ResponseError` has no variant for.
const ERROR_NONE: i16 = 0;
/// FindCoordinator key types: consumer group and transactional id.
const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;
/// Operations Kafka reports as allowed when no authorizer is configured: READ, DELETE, DESCRIBE.
pub(super) const GROUP_AUTHORIZED_OPERATIONS: i32 = (1 << 3) | (1 << 6) | (1 << 8);
/// DescribeGroups' "not requested" value for authorized_operations.
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

pub(super) fn str_bytes(text: impl Into<String>) -> StrBytes {
    StrBytes::from_string(text.into())
}

fn optional_string(text: &Option<StrBytes>) -> Option<String> {
    text.as_ref().map(|t| t.to_string())
}

fn code(error: &Result<(), GroupError>) -> i16 {
    match error {
        Ok(()) => ERROR_NONE,
        Err(error) => group_error_code(error),
    }
}

/// In a cluster, only the metadata leader coordinates groups: elsewhere group requests get
/// NOT_COORDINATOR and clients find the coordinator again.
pub(super) fn refused_here(ctx: &RequestContext) -> bool {
    ctx.cluster
        .as_ref()
        .is_some_and(|cluster| cluster.controller() != Some(cluster.node_id()))
}

fn not_coordinator() -> i16 {
    ResponseError::NotCoordinator.code()
}

pub async fn find_coordinator(
    ctx: &RequestContext,
    version: i16,
    request: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let mut node_id = BrokerId(ctx.broker.node_id());
    let mut host = str_bytes(ctx.config.advertised_host.clone());
    let mut port = ctx.config.advertised_port;
    // One node coordinates every group and transaction: this one, or in a cluster the
    // metadata group's leader (see `handlers::cluster::group_coordinator`).
    let mut supported = matches!(request.key_type, KEY_TYPE_GROUP | KEY_TYPE_TRANSACTION);
    let mut refusal = ResponseError::InvalidRequest.code();
    let mut refusal_message = format!("unknown key type {}", request.key_type);
    if let (Some(cluster), true) = (&ctx.cluster, supported) {
        match super::cluster::group_coordinator(cluster) {
            Some(endpoint) => {
                node_id = BrokerId(endpoint.node_id as i32);
                host = str_bytes(endpoint.host);
                port = endpoint.port;
            }
            None => {
                supported = false;
                refusal = ResponseError::CoordinatorNotAvailable.code();
                refusal_message = "the cluster has no metadata leader yet".into();
            }
        }
    }
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let coordinator = Coordinator::default().with_key(key);
                if supported {
                    coordinator
                        .with_node_id(node_id)
                        .with_host(host.clone())
                        .with_port(port)
                } else {
                    coordinator
                        .with_node_id(BrokerId(-1))
                        .with_error_code(refusal)
                        .with_error_message(Some(str_bytes(refusal_message.clone())))
                }
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    if !supported {
        let response = FindCoordinatorResponse::default()
            .with_error_code(refusal)
            .with_node_id(BrokerId(-1));
        return if version >= 1 {
            response.with_error_message(Some(str_bytes(refusal_message)))
        } else {
            response
        };
    }
    FindCoordinatorResponse::default()
        .with_node_id(node_id)
        .with_host(host)
        .with_port(port)
}

pub async fn join_group(
    ctx: &RequestContext,
    version: i16,
    request: JoinGroupRequest,
) -> JoinGroupResponse {
    let params = JoinGroupParams {
        group_id: request.group_id.to_string(),
        member_id: request.member_id.to_string(),
        group_instance_id: optional_string(&request.group_instance_id),
        client_id: ctx.client_id.clone(),
        // As Kafka shows it (Java's InetAddress.toString of an address without a host name).
        client_host: format!("/{}", ctx.client_host),
        session_timeout_ms: request.session_timeout_ms,
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        rebalance_timeout_ms: if version >= 1 {
            request.rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        },
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .into_iter()
            .map(|p| GroupProtocol {
                name: p.name.to_string(),
                metadata: p.metadata,
            })
            .collect(),
        require_known_member_id: version >= 4,
    };
    // protocol_name is nullable only from v7; older versions need a string.
    let protocol_name = |name: Option<String>| match name {
        Some(name) => Some(str_bytes(name)),
        None if version >= 7 => None,
        None => Some(StrBytes::new()),
    };
    if refused_here(ctx) {
        return JoinGroupResponse::default()
            .with_error_code(not_coordinator())
            .with_generation_id(-1)
            .with_protocol_name(protocol_name(None))
            .with_member_id(str_bytes(params.member_id));
    }
    match ctx.broker.group_coordinator().join_group(params).await {
        Ok(joined) => {
            let members = joined
                .members
                .into_iter()
                .map(|m| {
                    JoinGroupResponseMember::default()
                        .with_member_id(str_bytes(m.member_id))
                        .with_group_instance_id(if version >= 5 {
                            m.group_instance_id.map(str_bytes)
                        } else {
                            None
                        })
                        .with_metadata(m.metadata)
                })
                .collect();
            JoinGroupResponse::default()
                .with_generation_id(joined.generation_id)
                .with_protocol_type(if version >= 7 {
                    joined.protocol_type.map(str_bytes)
                } else {
                    None
                })
                .with_protocol_name(protocol_name(joined.protocol_name))
                .with_leader(str_bytes(joined.leader_id))
                .with_skip_assignment(version >= 9 && joined.skip_assignment)
                .with_member_id(str_bytes(joined.member_id))
                .with_members(members)
        }
        Err(failed) => JoinGroupResponse::default()
            .with_error_code(group_error_code(&failed.error))
            .with_generation_id(-1)
            .with_protocol_name(protocol_name(None))
            .with_member_id(str_bytes(failed.member_id)),
    }
}

pub async fn sync_group(
    ctx: &RequestContext,
    version: i16,
    request: SyncGroupRequest,
) -> SyncGroupResponse {
    let params = SyncGroupParams {
        group_id: request.group_id.to_string(),
        member_id: request.member_id.to_string(),
        group_instance_id: optional_string(&request.group_instance_id),
        generation_id: request.generation_id,
        protocol_type: optional_string(&request.protocol_type),
        protocol_name: optional_string(&request.protocol_name),
        assignments: request
            .assignments
            .into_iter()
            .map(|a| (a.member_id.to_string(), a.assignment))
            .collect(),
    };
    if refused_here(ctx) {
        return SyncGroupResponse::default()
            .with_error_code(not_coordinator())
            .with_assignment(Bytes::new());
    }
    match ctx.broker.group_coordinator().sync_group(params).await {
        Ok(synced) => {
            let response = SyncGroupResponse::default().with_assignment(synced.assignment);
            if version >= 5 {
                response
                    .with_protocol_type(synced.protocol_type.map(str_bytes))
                    .with_protocol_name(synced.protocol_name.map(str_bytes))
            } else {
                response
            }
        }
        Err(error) => SyncGroupResponse::default()
            .with_error_code(group_error_code(&error))
            .with_assignment(Bytes::new()),
    }
}

pub async fn heartbeat(
    ctx: &RequestContext,
    _version: i16,
    request: HeartbeatRequest,
) -> HeartbeatResponse {
    if refused_here(ctx) {
        return HeartbeatResponse::default().with_error_code(not_coordinator());
    }
    let result = ctx.broker.group_coordinator().heartbeat(
        &request.group_id,
        &request.member_id,
        request.group_instance_id.as_deref(),
        request.generation_id,
    );
    HeartbeatResponse::default().with_error_code(code(&result))
}

pub async fn leave_group(
    ctx: &RequestContext,
    version: i16,
    request: LeaveGroupRequest,
) -> LeaveGroupResponse {
    let identities: Vec<MemberIdentity> = if version >= 3 {
        request
            .members
            .iter()
            .map(|m| MemberIdentity {
                member_id: m.member_id.to_string(),
                group_instance_id: optional_string(&m.group_instance_id),
            })
            .collect()
    } else {
        vec![MemberIdentity {
            member_id: request.member_id.to_string(),
            group_instance_id: None,
        }]
    };
    let results = match ctx
        .broker
        .group_coordinator()
        .leave_group(&request.group_id, &identities)
    {
        Ok(results) => results,
        Err(error) => {
            return LeaveGroupResponse::default().with_error_code(group_error_code(&error))
        }
    };
    if version < 3 {
        // One member, so its error is the response's.
        let error_code = results.first().map(code).unwrap_or_default();
        return LeaveGroupResponse::default().with_error_code(error_code);
    }
    let members = identities
        .into_iter()
        .zip(&results)
        .map(|(identity, result)| {
            MemberResponse::default()
                .with_member_id(str_bytes(identity.member_id))
                .with_group_instance_id(identity.group_instance_id.map(str_bytes))
                .with_error_code(code(result))
        })
        .collect();
    LeaveGroupResponse::default().with_members(members)
}

pub async fn offset_commit(
    ctx: &RequestContext,
    version: i16,
    request: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let commit_timestamp_ms = now_ms();
    // Per (topic index, partition index) of the request: an error found here, or the offset.
    let mut errors: Vec<Vec<Option<i16>>> = Vec::with_capacity(request.topics.len());
    let mut offsets = Vec::new();
    let mut positions = Vec::new();
    for (topic_index, topic) in request.topics.iter().enumerate() {
        let partition_count = match &ctx.cluster {
            Some(cluster) => cluster
                .topic(&topic.name)
                .map(|t| t.assignments.len() as i32),
            None => ctx.broker.topic(&topic.name).map(|t| t.partition_count()),
        };
        let mut topic_errors = Vec::with_capacity(topic.partitions.len());
        for (partition_index, partition) in topic.partitions.iter().enumerate() {
            match partition_count {
                Some(count) if (0..count).contains(&partition.partition_index) => {
                    topic_errors.push(None);
                    positions.push((topic_index, partition_index));
                    offsets.push((
                        TopicPartition {
                            topic: topic.name.to_string(),
                            partition: partition.partition_index,
                        },
                        OffsetAndMetadata {
                            offset: partition.committed_offset,
                            leader_epoch: if version >= 6 {
                                partition.committed_leader_epoch
                            } else {
                                -1
                            },
                            metadata: optional_string(&partition.committed_metadata)
                                .unwrap_or_default(),
                            commit_timestamp_ms,
                        },
                    ));
                }
                _ => topic_errors.push(Some(ResponseError::UnknownTopicOrPartition.code())),
            }
        }
        errors.push(topic_errors);
    }
    if !offsets.is_empty() {
        let committed_offsets: Vec<(TopicPartition, i64)> = offsets
            .iter()
            .map(|(partition, offset)| (partition.clone(), offset.offset))
            .collect();
        let group_instance_id = if version >= 7 {
            request.group_instance_id.as_deref()
        } else {
            None
        };
        let committed = match &ctx.cluster {
            Some(cluster) => {
                cluster
                    .commit_offsets(
                        &request.group_id,
                        &request.member_id,
                        group_instance_id,
                        request.generation_id_or_member_epoch,
                        offsets,
                    )
                    .await
            }
            None => {
                ctx.broker
                    .group_coordinator()
                    .commit_offsets(
                        &request.group_id,
                        &request.member_id,
                        group_instance_id,
                        request.generation_id_or_member_epoch,
                        offsets,
                    )
                    .await
            }
        };
        if let Ok(results) = &committed {
            let stored: Vec<(TopicPartition, i64)> = committed_offsets
                .into_iter()
                .zip(results)
                .filter(|(_, result)| result.is_ok())
                .map(|(offset, _)| offset)
                .collect();
            record_committed_lag(&ctx.broker, &request.group_id, &stored);
        }
        for (position, (topic_index, partition_index)) in positions.into_iter().enumerate() {
            let error_code = match &committed {
                Ok(results) => results.get(position).map(code).unwrap_or_default(),
                Err(error) => group_error_code(error),
            };
            errors[topic_index][partition_index] = Some(error_code);
        }
    }
    let topics = request
        .topics
        .into_iter()
        .zip(errors)
        .map(|(topic, topic_errors)| {
            let partitions = topic
                .partitions
                .iter()
                .zip(topic_errors)
                .map(|(partition, error)| {
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(partition.partition_index)
                        .with_error_code(error.unwrap_or_default())
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// Topics and partitions an OffsetFetch asks for; `None` = every committed one.
type RequestedPartitions = Option<Vec<(TopicName, Vec<i32>)>>;
/// Committed offsets per topic, in request order; `None` where nothing is committed.
type FetchedOffsets = Vec<(TopicName, Vec<(i32, Option<OffsetAndMetadata>)>)>;

/// A group's committed offsets: the local coordinator's, or in a cluster the metadata group's
/// (a linearizable read on its leader; NOT_COORDINATOR elsewhere).
async fn committed_offsets(
    ctx: &RequestContext,
    group_id: &str,
    partitions: Option<&[TopicPartition]>,
) -> Result<Vec<(TopicPartition, Option<OffsetAndMetadata>)>, GroupError> {
    match &ctx.cluster {
        Some(cluster) => cluster.fetch_offsets(group_id, partitions).await,
        None => Ok(ctx
            .broker
            .group_coordinator()
            .fetch_offsets(group_id, partitions)),
    }
}

async fn fetch_group_offsets(
    ctx: &RequestContext,
    group_id: &str,
    requested: RequestedPartitions,
) -> Result<FetchedOffsets, GroupError> {
    let Some(topics) = requested else {
        let mut topics: FetchedOffsets = Vec::new();
        // Sorted by topic, so each topic's partitions are adjacent.
        for (partition, offset) in committed_offsets(ctx, group_id, None).await? {
            match topics.last_mut() {
                Some((name, partitions)) if name.as_str() == partition.topic => {
                    partitions.push((partition.partition, offset))
                }
                _ => topics.push((
                    TopicName(str_bytes(partition.topic)),
                    vec![(partition.partition, offset)],
                )),
            }
        }
        return Ok(topics);
    };
    let wanted: Vec<TopicPartition> = topics
        .iter()
        .flat_map(|(name, partitions)| {
            partitions.iter().map(|&partition| TopicPartition {
                topic: name.to_string(),
                partition,
            })
        })
        .collect();
    let mut fetched = committed_offsets(ctx, group_id, Some(&wanted))
        .await?
        .into_iter();
    Ok(topics
        .into_iter()
        .map(|(name, partitions)| {
            let offsets = partitions
                .iter()
                .map(|&partition| (partition, fetched.next().and_then(|(_, o)| o)))
                .collect();
            (name, offsets)
        })
        .collect())
}

/// (offset, leader epoch, metadata) as OffsetFetch reports them; -1 / "" when none is committed.
fn offset_fields(offset: Option<OffsetAndMetadata>) -> (i64, i32, StrBytes) {
    match offset {
        Some(o) => (o.offset, o.leader_epoch, str_bytes(o.metadata)),
        None => (-1, -1, StrBytes::new()),
    }
}

pub async fn offset_fetch(
    ctx: &RequestContext,
    version: i16,
    request: OffsetFetchRequest,
) -> OffsetFetchResponse {
    if version >= 8 {
        let mut groups = Vec::with_capacity(request.groups.len());
        for group in request.groups {
            let requested = group.topics.map(|topics| {
                topics
                    .into_iter()
                    .map(|t| (t.name, t.partition_indexes))
                    .collect()
            });
            let response = OffsetFetchResponseGroup::default().with_group_id(group.group_id);
            // v9: a member of a consumer-protocol group names itself and must be in step.
            if version >= 9 {
                let member_id = group.member_id.as_ref().map(|id| id.as_str());
                if let Err(error) = ctx.broker.group_coordinator().validate_offset_fetch(
                    &response.group_id,
                    member_id,
                    group.member_epoch,
                ) {
                    groups.push(response.with_error_code(group_error_code(&error)));
                    continue;
                }
            }
            let fetched = match fetch_group_offsets(ctx, &response.group_id, requested).await {
                Ok(fetched) => fetched,
                Err(error) => {
                    groups.push(response.with_error_code(group_error_code(&error)));
                    continue;
                }
            };
            let topics = fetched
                .into_iter()
                .map(|(name, partitions)| {
                    let partitions = partitions
                        .into_iter()
                        .map(|(index, offset)| {
                            let (offset, epoch, metadata) = offset_fields(offset);
                            OffsetFetchResponsePartitions::default()
                                .with_partition_index(index)
                                .with_committed_offset(offset)
                                .with_committed_leader_epoch(epoch)
                                .with_metadata(Some(metadata))
                        })
                        .collect();
                    OffsetFetchResponseTopics::default()
                        .with_name(name)
                        .with_partitions(partitions)
                })
                .collect();
            groups.push(response.with_topics(topics));
        }
        return OffsetFetchResponse::default().with_groups(groups);
    }
    // v1 has no null topic list; from v2 null means every committed partition.
    let requested: RequestedPartitions = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.name, t.partition_indexes))
            .collect()
    });
    let fetched = match fetch_group_offsets(ctx, &request.group_id, requested.clone()).await {
        Ok(fetched) => fetched,
        // From v2 the error is the response's; v1 has only per-partition codes.
        Err(error) if version >= 2 => {
            return OffsetFetchResponse::default().with_error_code(group_error_code(&error))
        }
        Err(error) => {
            let topics = requested
                .unwrap_or_default()
                .into_iter()
                .map(|(name, partitions)| {
                    let partitions = partitions
                        .into_iter()
                        .map(|index| {
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(index)
                                .with_committed_offset(-1)
                                .with_metadata(Some(StrBytes::new()))
                                .with_error_code(group_error_code(&error))
                        })
                        .collect();
                    OffsetFetchResponseTopic::default()
                        .with_name(name)
                        .with_partitions(partitions)
                })
                .collect();
            return OffsetFetchResponse::default().with_topics(topics);
        }
    };
    let topics = fetched
        .into_iter()
        .map(|(name, partitions)| {
            let partitions = partitions
                .into_iter()
                .map(|(index, offset)| {
                    let (offset, epoch, metadata) = offset_fields(offset);
                    OffsetFetchResponsePartition::default()
                        .with_partition_index(index)
                        .with_committed_offset(offset)
                        .with_committed_leader_epoch(if version >= 5 { epoch } else { -1 })
                        .with_metadata(Some(metadata))
                })
                .collect();
            OffsetFetchResponseTopic::default()
                .with_name(name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

pub async fn list_groups(
    ctx: &RequestContext,
    version: i16,
    request: ListGroupsRequest,
) -> ListGroupsResponse {
    let states: Vec<String> = if version >= 4 {
        request
            .states_filter
            .iter()
            .map(|s| s.to_lowercase())
            .collect()
    } else {
        vec![]
    };
    let types: Vec<String> = if version >= 5 {
        request
            .types_filter
            .iter()
            .map(|t| t.to_lowercase())
            .collect()
    } else {
        vec![]
    };
    let mut overviews = ctx.broker.group_coordinator().list_groups();
    if let Some(cluster) = &ctx.cluster {
        // Groups whose offsets were committed under another coordinator, or before a restart.
        for group_id in cluster.applied_offsets().groups() {
            if !overviews.iter().any(|g| g.group_id == group_id) {
                overviews.push(GroupOverview {
                    group_id,
                    protocol_type: String::new(),
                    state: GroupState::Empty.name(),
                    group_type: GROUP_TYPE_CLASSIC,
                });
            }
        }
        overviews.sort_by(|a, b| a.group_id.cmp(&b.group_id));
    }
    let groups = overviews
        .into_iter()
        .filter(|g| states.is_empty() || states.contains(&g.state.to_lowercase()))
        .filter(|g| types.is_empty() || types.iter().any(|t| t == g.group_type))
        .map(|g| {
            let listed = ListedGroup::default()
                .with_group_id(GroupId(str_bytes(g.group_id)))
                .with_protocol_type(str_bytes(g.protocol_type));
            let listed = if version >= 4 {
                listed.with_group_state(str_bytes(g.state))
            } else {
                listed
            };
            if version >= 5 {
                listed.with_group_type(str_bytes(g.group_type))
            } else {
                listed
            }
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

pub async fn describe_groups(
    ctx: &RequestContext,
    version: i16,
    request: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let coordinator = ctx.broker.group_coordinator();
    let authorized_operations = if version >= 3 && request.include_authorized_operations {
        GROUP_AUTHORIZED_OPERATIONS
    } else {
        AUTHORIZED_OPERATIONS_OMITTED
    };
    let groups = request
        .groups
        .into_iter()
        .map(|group_id| {
            let mut description = coordinator.describe_group(&group_id);
            // Kafka describes only classic groups here; ConsumerGroupDescribe the others.
            let other_kind =
                coordinator.is_consumer_group(&group_id) || coordinator.is_share_group(&group_id);
            if other_kind {
                description.state = GroupState::Dead;
                description.protocol_type.clear();
                description.protocol_name.clear();
                description.members.clear();
            }
            if description.state == GroupState::Dead
                && ctx
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.applied_offsets().has_offsets(&group_id))
            {
                description.state = GroupState::Empty;
            }
            let members = description
                .members
                .into_iter()
                .map(|m| {
                    DescribedGroupMember::default()
                        .with_member_id(str_bytes(m.member_id))
                        .with_group_instance_id(if version >= 4 {
                            m.group_instance_id.map(str_bytes)
                        } else {
                            None
                        })
                        .with_client_id(str_bytes(m.client_id))
                        .with_client_host(str_bytes(m.client_host))
                        .with_member_metadata(m.metadata)
                        .with_member_assignment(m.assignment)
                })
                .collect();
            // v6 (KIP-1043) names an unknown group as the error Kafka gives for it.
            let (error_code, error_message) =
                if version >= 6 && description.state == GroupState::Dead {
                    (
                        ResponseError::GroupIdNotFound.code(),
                        Some(str_bytes(if other_kind {
                            format!("Group {} is not a classic group.", group_id.as_str())
                        } else {
                            format!("Group {} not found.", group_id.as_str())
                        })),
                    )
                } else {
                    (ERROR_NONE, None)
                };
            DescribedGroup::default()
                .with_error_code(error_code)
                .with_error_message(error_message)
                .with_group_id(group_id)
                .with_group_state(str_bytes(description.state.name()))
                .with_protocol_type(str_bytes(description.protocol_type))
                .with_protocol_data(str_bytes(description.protocol_name))
                .with_members(members)
                .with_authorized_operations(authorized_operations)
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

pub async fn delete_groups(
    ctx: &RequestContext,
    _version: i16,
    request: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let coordinator = ctx.broker.group_coordinator();
    let mut results = Vec::with_capacity(request.groups_names.len());
    for group_id in request.groups_names {
        let result = match &ctx.cluster {
            Some(cluster) => cluster.delete_group(&group_id).await,
            None => coordinator.delete_group(&group_id).await,
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(group_id)
                .with_error_code(code(&result)),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}

/// OffsetDelete: removes a group's committed offsets of partitions its members do not
/// consume (Kafka's rules: see `GroupCoordinator::check_offset_deletion`).
pub async fn offset_delete(
    ctx: &RequestContext,
    _version: i16,
    request: OffsetDeleteRequest,
) -> OffsetDeleteResponse {
    let group_id = request.group_id.to_string();
    let partitions: Vec<TopicPartition> = request
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(|p| TopicPartition {
                topic: topic.name.to_string(),
                partition: p.partition_index,
            })
        })
        .collect();
    let deleted = match &ctx.cluster {
        Some(cluster) => {
            cluster
                .delete_offsets(&group_id, &partitions, subscribed_topics)
                .await
        }
        None => {
            ctx.broker
                .group_coordinator()
                .delete_offsets(&group_id, &partitions, subscribed_topics)
                .await
        }
    };
    let mut results = match deleted {
        Ok(results) => results.into_iter(),
        Err(error) => {
            return OffsetDeleteResponse::default().with_error_code(group_error_code(&error))
        }
    };
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .into_iter()
                .map(|p| {
                    let result = results.next().unwrap_or(Ok(()));
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code(&result))
                })
                .collect();
            OffsetDeleteResponseTopic::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetDeleteResponse::default().with_topics(topics)
}

/// The topics of a consumer-protocol subscription (a JoinGroup member's metadata); `None` when
/// the bytes are not one.
fn subscribed_topics(metadata: &Bytes) -> Option<Vec<String>> {
    let mut buf = metadata.clone();
    if buf.len() < 2 {
        return None;
    }
    let version = bytes::Buf::get_i16(&mut buf);
    if !(0..=3).contains(&version) {
        return None;
    }
    let subscription = ConsumerProtocolSubscription::decode(&mut buf, version).ok()?;
    Some(subscription.topics.iter().map(|t| t.to_string()).collect())
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::leave_group_request::MemberIdentity as LeaveMember;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::offset_fetch_request::{
        OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
    };
    use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
    use kafka_protocol::protocol::Encodable;
    use sluice_broker::{Broker, BrokerConfig, GroupConfig};

    use super::*;
    use crate::KafkaConfig;

    /// A single-node broker with a two-partition topic "events".
    pub(in crate::handlers) fn context(dir: &std::path::Path) -> RequestContext {
        let mut config = BrokerConfig::new(dir.to_path_buf());
        config.group = GroupConfig {
            initial_rebalance_delay_ms: 0,
            ..GroupConfig::default()
        };
        let broker = Broker::open(config).unwrap();
        broker
            .create_topic("events", 2, BTreeMap::new(), false)
            .unwrap();
        RequestContext {
            broker,
            config: Arc::new(KafkaConfig::new("localhost".into(), 9092)),
            client_id: "rdkafka".into(),
            client_host: "/127.0.0.1".into(),
            cluster: None,
            response_memory: None,
            fetch_sessions: Default::default(),
            share_sessions: Default::default(),
            connection_id: 0,
            security: Default::default(),
            principal: Default::default(),
            muted_until: Default::default(),
        }
    }

    pub(in crate::handlers) fn encodes<T: Encodable>(response: &T, version: i16) {
        let mut buf = bytes::BytesMut::new();
        if let Err(error) = response.encode(&mut buf, version) {
            panic!(
                "{} v{version} does not encode: {error}",
                std::any::type_name::<T>()
            );
        }
    }

    fn s(text: &str) -> StrBytes {
        str_bytes(text)
    }

    fn join_request(group: &str, member_id: &str) -> JoinGroupRequest {
        JoinGroupRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_member_id(s(member_id))
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(10_000)
            .with_protocol_type(s("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(s("range"))
                .with_metadata(Bytes::from("m"))])
    }

    /// Joins a one-member group at `version` and syncs it; returns (member id, generation).
    async fn join_and_sync(ctx: &RequestContext, group: &str, version: i16) -> (String, i32) {
        let mut response = join_group(ctx, version, join_request(group, "")).await;
        encodes(&response, version);
        if version >= 4 {
            assert_eq!(response.error_code, ResponseError::MemberIdRequired.code());
            let member_id = response.member_id.to_string();
            response = join_group(ctx, version, join_request(group, &member_id)).await;
            encodes(&response, version);
        }
        assert_eq!(response.error_code, 0, "join v{version}");
        assert_eq!(response.leader, response.member_id);
        assert_eq!(response.members.len(), 1);
        let member_id = response.member_id.to_string();
        let generation = response.generation_id;
        for sync_version in 0..=5 {
            let sync = sync_group(
                ctx,
                sync_version,
                SyncGroupRequest::default()
                    .with_group_id(GroupId(s(group)))
                    .with_generation_id(generation)
                    .with_member_id(s(&member_id))
                    .with_assignments(vec![SyncGroupRequestAssignment::default()
                        .with_member_id(s(&member_id))
                        .with_assignment(Bytes::from("a"))]),
            )
            .await;
            encodes(&sync, sync_version);
            assert_eq!(sync.error_code, 0);
            assert_eq!(sync.assignment, Bytes::from("a"));
        }
        (member_id, generation)
    }

    #[tokio::test]
    async fn find_coordinator_encodes_at_every_version() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        for version in 0..=6 {
            let request = if version >= 4 {
                FindCoordinatorRequest::default().with_coordinator_keys(vec![s("g1"), s("g2")])
            } else {
                FindCoordinatorRequest::default().with_key(s("g1"))
            };
            let response = find_coordinator(&ctx, version, request).await;
            encodes(&response, version);
            if version >= 4 {
                assert_eq!(response.coordinators.len(), 2);
                assert_eq!(response.coordinators[1].port, 9092);
            } else {
                assert_eq!(response.host.as_str(), "localhost");
                assert_eq!(response.error_code, 0);
            }
            let bad = find_coordinator(
                &ctx,
                version,
                FindCoordinatorRequest::default()
                    .with_key_type(7)
                    .with_key(s("x")),
            )
            .await;
            encodes(&bad, version);
        }
    }

    #[tokio::test]
    async fn group_membership_apis_encode_at_every_version() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        for version in 0..=9 {
            let group = format!("group-v{version}");
            let (member_id, generation) = join_and_sync(&ctx, &group, version).await;
            for heartbeat_version in 0..=4 {
                let request = HeartbeatRequest::default()
                    .with_group_id(GroupId(s(&group)))
                    .with_generation_id(generation)
                    .with_member_id(s(&member_id));
                let response = heartbeat(&ctx, heartbeat_version, request).await;
                encodes(&response, heartbeat_version);
                assert_eq!(response.error_code, 0);
            }
            let leave_version = version % 6;
            let request = if leave_version >= 3 {
                LeaveGroupRequest::default()
                    .with_group_id(GroupId(s(&group)))
                    .with_members(vec![LeaveMember::default().with_member_id(s(&member_id))])
            } else {
                LeaveGroupRequest::default()
                    .with_group_id(GroupId(s(&group)))
                    .with_member_id(s(&member_id))
            };
            let response = leave_group(&ctx, leave_version, request).await;
            encodes(&response, leave_version);
            assert_eq!(response.error_code, 0);
            if leave_version >= 3 {
                assert_eq!(response.members[0].error_code, 0);
            }
        }
        // Errors encode too (no generation, no protocol name).
        for version in 0..=9 {
            let response = join_group(&ctx, version, join_request("", "")).await;
            encodes(&response, version);
            assert_eq!(response.error_code, ResponseError::InvalidGroupId.code());
            let response = join_group(&ctx, version, join_request("other", "unknown-member")).await;
            assert_eq!(response.error_code, ResponseError::UnknownMemberId.code());
            encodes(&response, version);
        }
        for version in 0..=5 {
            let response = sync_group(
                &ctx,
                version,
                SyncGroupRequest::default().with_group_id(GroupId(s("nope"))),
            )
            .await;
            encodes(&response, version);
            assert_eq!(response.error_code, ResponseError::UnknownMemberId.code());
            let response = leave_group(&ctx, version, LeaveGroupRequest::default()).await;
            encodes(&response, version);
            assert_eq!(response.error_code, ResponseError::InvalidGroupId.code());
        }
    }

    #[tokio::test]
    async fn offset_commit_and_fetch_encode_at_every_version() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        for version in 2..=9 {
            let group = format!("commit-v{version}");
            let partition = |index: i32, offset: i64| {
                OffsetCommitRequestPartition::default()
                    .with_partition_index(index)
                    .with_committed_offset(offset)
                    .with_committed_leader_epoch(if version >= 6 { 5 } else { -1 })
                    .with_committed_metadata(Some(s("meta")))
            };
            let request = OffsetCommitRequest::default()
                .with_group_id(GroupId(s(&group)))
                .with_generation_id_or_member_epoch(-1)
                .with_topics(vec![
                    OffsetCommitRequestTopic::default()
                        .with_name(TopicName(s("events")))
                        .with_partitions(vec![partition(0, 42), partition(1, 7), partition(2, 1)]),
                    OffsetCommitRequestTopic::default()
                        .with_name(TopicName(s("missing")))
                        .with_partitions(vec![partition(0, 1)]),
                ]);
            let response = offset_commit(&ctx, version, request).await;
            encodes(&response, version);
            let codes: Vec<Vec<i16>> = response
                .topics
                .iter()
                .map(|t| t.partitions.iter().map(|p| p.error_code).collect())
                .collect();
            let unknown = ResponseError::UnknownTopicOrPartition.code();
            assert_eq!(codes, vec![vec![0, 0, unknown], vec![unknown]]);
        }
        for version in 1..=9 {
            let group = format!("commit-v{}", version.max(2));
            let response = if version >= 8 {
                let request = OffsetFetchRequest::default().with_groups(vec![
                    OffsetFetchRequestGroup::default()
                        .with_group_id(GroupId(s(&group)))
                        .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                            .with_name(TopicName(s("events")))
                            .with_partition_indexes(vec![0, 1])])),
                    OffsetFetchRequestGroup::default()
                        .with_group_id(GroupId(s(&group)))
                        .with_topics(None),
                ]);
                let response = offset_fetch(&ctx, version, request).await;
                let explicit = &response.groups[0].topics[0].partitions;
                assert_eq!(
                    (explicit[0].committed_offset, explicit[1].committed_offset),
                    (42, 7)
                );
                assert_eq!(response.groups[1].topics[0].partitions.len(), 2);
                response
            } else {
                let request = OffsetFetchRequest::default()
                    .with_group_id(GroupId(s(&group)))
                    .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                        .with_name(TopicName(s("events")))
                        .with_partition_indexes(vec![0, 1])]));
                let response = offset_fetch(&ctx, version, request).await;
                let partitions = &response.topics[0].partitions;
                assert_eq!(partitions[0].committed_offset, 42);
                assert_eq!(
                    partitions[0].metadata.as_ref().map(|m| m.as_str()),
                    Some("meta")
                );
                let epoch_expected = if version >= 5 && version.max(2) >= 6 {
                    5
                } else {
                    -1
                };
                assert_eq!(partitions[0].committed_leader_epoch, epoch_expected);
                response
            };
            encodes(&response, version);
        }
        // Unknown group: -1 and no error, as Kafka.
        let request = OffsetFetchRequest::default()
            .with_group_id(GroupId(s("nobody")))
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(TopicName(s("events")))
                .with_partition_indexes(vec![0])]));
        let response = offset_fetch(&ctx, 3, request).await;
        assert_eq!(response.topics[0].partitions[0].committed_offset, -1);
        assert_eq!(response.topics[0].partitions[0].error_code, 0);
    }

    #[tokio::test]
    async fn group_admin_apis_encode_at_every_version() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        let (member_id, _) = join_and_sync(&ctx, "live", 5).await;
        let commit = OffsetCommitRequest::default()
            .with_group_id(GroupId(s("idle")))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(s("events")))
                .with_partitions(vec![
                    OffsetCommitRequestPartition::default().with_committed_offset(3)
                ])]);
        offset_commit(&ctx, 8, commit).await;

        for version in 0..=5 {
            let request = ListGroupsRequest::default();
            let response = list_groups(&ctx, version, request).await;
            encodes(&response, version);
            let ids: Vec<&str> = response
                .groups
                .iter()
                .map(|g| g.group_id.as_str())
                .collect();
            assert_eq!(ids, vec!["idle", "live"]);
            if version >= 4 {
                let filtered = list_groups(
                    &ctx,
                    version,
                    ListGroupsRequest::default().with_states_filter(vec![s("stable")]),
                )
                .await;
                encodes(&filtered, version);
                assert_eq!(filtered.groups.len(), 1);
                assert_eq!(filtered.groups[0].group_state.as_str(), "Stable");
            }
            if version >= 5 {
                let filtered = list_groups(
                    &ctx,
                    version,
                    ListGroupsRequest::default().with_types_filter(vec![s("share")]),
                )
                .await;
                assert!(filtered.groups.is_empty());
            }
        }
        for version in 0..=5 {
            let request = DescribeGroupsRequest::default()
                .with_groups(vec![
                    GroupId(s("live")),
                    GroupId(s("idle")),
                    GroupId(s("nope")),
                ])
                .with_include_authorized_operations(version >= 3);
            let response = describe_groups(&ctx, version, request).await;
            encodes(&response, version);
            let states: Vec<&str> = response
                .groups
                .iter()
                .map(|g| g.group_state.as_str())
                .collect();
            assert_eq!(states, vec!["Stable", "Empty", "Dead"]);
            let live = &response.groups[0];
            assert_eq!(live.protocol_data.as_str(), "range");
            assert_eq!(live.members[0].member_id.as_str(), member_id);
            assert_eq!(live.members[0].client_id.as_str(), "rdkafka");
            assert_eq!(live.members[0].member_assignment, Bytes::from("a"));
        }
        for version in 0..=2 {
            let request = DeleteGroupsRequest::default()
                .with_groups_names(vec![GroupId(s("live")), GroupId(s("nope"))]);
            let response = delete_groups(&ctx, version, request).await;
            encodes(&response, version);
            let codes: Vec<i16> = response.results.iter().map(|r| r.error_code).collect();
            assert_eq!(
                codes,
                vec![
                    ResponseError::NonEmptyGroup.code(),
                    ResponseError::GroupIdNotFound.code()
                ]
            );
        }
        let response = delete_groups(
            &ctx,
            2,
            DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s("idle"))]),
        )
        .await;
        assert_eq!(response.results[0].error_code, 0);
    }
}
