//! Consumer groups: list, describe with lag, delete, reset offsets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use bytes::{Buf, Bytes};
use kafka_protocol::messages::ConsumerProtocolAssignment;
use kafka_protocol::protocol::Decodable;
use kafka_protocol::ResponseError;
use sluice_broker::group_coordinator::{
    GroupDescription, MemberDescription, OffsetAndMetadata, TopicPartition,
};
use sluice_broker::replication::ClusterBroker;
use sluice_broker::{now_ms, BrokerError, GroupError};
use sluice_cluster::metadata::TopicMetadata;
use sluice_log::PartitionLog;

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath};
use crate::kafka_forward::{self, ForwardError};
use crate::model::{
    ErrorBody, GroupDetail, GroupMember, GroupPartitionOffset, GroupSummary, OffsetResetPlan,
    ResetOffsetsRequest, ResetOffsetsResponse, ResetStrategy, TopicPartitionRef,
};
use crate::AppState;

/// Every group with members or committed offsets.
#[utoipa::path(get, path = "/api/groups", tag = "groups", security(("basic" = [])),
    responses(
        (status = 200, description = "Groups, by id", body = Vec<GroupSummary>),
        (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
pub async fn list_groups(State(state): State<Arc<AppState>>) -> Json<Vec<GroupSummary>> {
    let coordinator = state.context.broker.group_coordinator();
    let mut groups: Vec<GroupSummary> = coordinator
        .list_groups()
        .into_iter()
        .map(|overview| {
            let description = coordinator.describe_group(&overview.group_id);
            GroupSummary {
                group_id: overview.group_id,
                state: description.state.name().to_string(),
                protocol_type: description.protocol_type,
                protocol: description.protocol_name,
                members: description.members.len() as u64,
            }
        })
        .collect();
    // In a cluster the members are known to the coordinator (the metadata leader) only;
    // every node has the committed offsets, so groups with commits are listed everywhere.
    if let Some(cluster) = &state.context.cluster {
        for group_id in cluster.applied_offsets().groups() {
            if groups.iter().any(|g| g.group_id == group_id) {
                continue;
            }
            groups.push(GroupSummary {
                group_id,
                state: offsets_only_state(&state).into(),
                protocol_type: String::new(),
                protocol: String::new(),
                members: 0,
            });
        }
        groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
    }
    Json(groups)
}

/// The state shown for a group this node knows only by its committed offsets: Empty on the
/// coordinator (it would know its members), else Unknown (ask the coordinator).
fn offsets_only_state(state: &AppState) -> &'static str {
    match &state.context.cluster {
        Some(cluster) if cluster.controller() != Some(cluster.node_id()) => "Unknown",
        _ => "Empty",
    }
}

/// The committed offsets of a group: this node's applied copy in a cluster, else the local
/// coordinator's.
fn committed_offsets(
    state: &AppState,
    group_id: &str,
) -> BTreeMap<(String, i32), Option<OffsetAndMetadata>> {
    if let Some(cluster) = &state.context.cluster {
        return cluster
            .applied_offsets()
            .group(group_id)
            .into_iter()
            .map(|c| {
                let offset = OffsetAndMetadata {
                    offset: c.offset,
                    leader_epoch: c.leader_epoch,
                    metadata: c.metadata,
                    commit_timestamp_ms: c.commit_timestamp_ms,
                };
                ((c.topic, c.partition), Some(offset))
            })
            .collect();
    }
    state
        .context
        .broker
        .group_coordinator()
        .fetch_offsets(group_id, None)
        .into_iter()
        .map(|(tp, offset)| ((tp.topic, tp.partition), offset))
        .collect()
}

/// Log end and high watermark of a partition as this node has them: the local partition, or
/// in a cluster this node's replica; (-1, -1) when it has neither.
fn partition_ends(state: &AppState, topic: &str, partition: i32) -> (i64, i64) {
    if let Ok(p) = state.context.broker.partition(topic, partition) {
        return (p.log_end_offset(), p.high_watermark());
    }
    state
        .context
        .cluster
        .as_ref()
        .and_then(|cluster| cluster.replica_for(topic, partition).ok())
        .map_or((-1, -1), |replica| {
            let log = replica.log();
            (log.log_end_offset(), log.high_watermark())
        })
}

/// The consumer protocol's assignment bytes as topic-partitions (empty if not that protocol).
fn decode_assignment(assignment: &Bytes) -> Vec<TopicPartitionRef> {
    let mut buf = assignment.clone();
    if buf.remaining() < 2 {
        return Vec::new();
    }
    let version = buf.get_i16();
    // The consumer protocol's versions; others are not ours to guess.
    if !(0..=3).contains(&version) {
        return Vec::new();
    }
    match ConsumerProtocolAssignment::decode(&mut buf, version) {
        Ok(decoded) => decoded
            .assigned_partitions
            .into_iter()
            .flat_map(|topic| {
                let name = topic.topic.to_string();
                topic
                    .partitions
                    .into_iter()
                    .map(move |partition| TopicPartitionRef {
                        topic: name.clone(),
                        partition,
                    })
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn member(description: &MemberDescription) -> GroupMember {
    let assignments = match &description.assigned_partitions {
        Some(partitions) => partitions
            .iter()
            .map(|p| TopicPartitionRef {
                topic: p.topic.clone(),
                partition: p.partition,
            })
            .collect(),
        None if description.assignment.is_empty() => Vec::new(),
        None => decode_assignment(&description.assignment),
    };
    GroupMember {
        member_id: description.member_id.clone(),
        group_instance_id: description.group_instance_id.clone(),
        client_id: description.client_id.clone(),
        client_host: description.client_host.clone(),
        assignments,
    }
}

/// The group, or 404 when it has neither members nor offsets.
fn group_or_404(state: &AppState, group_id: &str) -> ApiResult<GroupDescription> {
    let description = state
        .context
        .broker
        .group_coordinator()
        .describe_group(group_id);
    if description.state == sluice_broker::group_coordinator::GroupState::Dead {
        return Err(ApiError::NotFound(format!("unknown group '{group_id}'")));
    }
    Ok(description)
}

/// A group as this node can describe it: its coordinator's view, or in a cluster a group this
/// node knows only by its committed offsets (state and members from [`offsets_only_state`]).
fn group_view_or_404(state: &AppState, group_id: &str) -> ApiResult<(String, GroupDescription)> {
    match group_or_404(state, group_id) {
        Ok(description) => Ok((description.state.name().to_string(), description)),
        Err(not_found) => {
            let known = state
                .context
                .cluster
                .as_ref()
                .is_some_and(|cluster| cluster.applied_offsets().has_offsets(group_id));
            if !known {
                return Err(not_found);
            }
            Ok((
                offsets_only_state(state).to_string(),
                GroupDescription {
                    group_id: group_id.to_string(),
                    state: sluice_broker::group_coordinator::GroupState::Empty,
                    protocol_type: String::new(),
                    protocol_name: String::new(),
                    members: Vec::new(),
                },
            ))
        }
    }
}

/// Members with their assignments, and per partition the committed offset, log end and lag.
#[utoipa::path(get, path = "/api/groups/{group}", tag = "groups", security(("basic" = [])),
    params(("group" = String, Path, description = "Group id")),
    responses(
        (status = 200, description = "The group", body = GroupDetail),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody)))]
pub async fn describe_group(
    State(state): State<Arc<AppState>>,
    ApiPath(group_id): ApiPath<String>,
) -> ApiResult<Json<GroupDetail>> {
    let (state_name, description) = group_view_or_404(&state, &group_id)?;
    let members: Vec<GroupMember> = description.members.iter().map(member).collect();
    let mut owners: BTreeMap<(String, i32), String> = BTreeMap::new();
    for member in &members {
        for assigned in &member.assignments {
            owners.insert(
                (assigned.topic.clone(), assigned.partition),
                member.member_id.clone(),
            );
        }
    }
    let mut committed = committed_offsets(&state, &group_id);
    for key in owners.keys() {
        committed.entry(key.clone()).or_insert(None);
    }
    let offsets: Vec<GroupPartitionOffset> = committed
        .into_iter()
        .map(|((topic, partition), offset)| {
            let (log_end_offset, high_watermark) = partition_ends(&state, &topic, partition);
            let committed_offset = offset.as_ref().map(|o| o.offset);
            GroupPartitionOffset {
                lag: committed_offset
                    .filter(|_| high_watermark >= 0)
                    .map(|c| (high_watermark - c).max(0)),
                member_id: owners.get(&(topic.clone(), partition)).cloned(),
                metadata: offset.map(|o| o.metadata),
                topic,
                partition,
                committed_offset,
                log_end_offset,
                high_watermark,
            }
        })
        .collect();
    Ok(Json(GroupDetail {
        total_lag: offsets.iter().filter_map(|o| o.lag).sum(),
        group_id,
        state: state_name,
        protocol_type: description.protocol_type,
        protocol: description.protocol_name,
        members,
        offsets,
    }))
}

/// Deletes a group without members and its committed offsets (409 while it has members).
#[utoipa::path(delete, path = "/api/groups/{group}", tag = "groups", security(("basic" = [])),
    params(("group" = String, Path, description = "Group id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody),
        (status = 409, description = "The group has members", body = ErrorBody)))]
pub async fn delete_group(
    State(state): State<Arc<AppState>>,
    ApiPath(group_id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    match &state.context.cluster {
        // The offsets are the metadata group's: the coordinator deletes them there.
        Some(cluster) => match coordinator(cluster)? {
            Coordinator::ThisNode => cluster
                .delete_group(&group_id)
                .await
                .map_err(|error| coordinator_refusal(&group_id, error))?,
            Coordinator::Remote(addr) => kafka_forward::delete_group(&addr, &group_id)
                .await
                .map_err(|error| forward_refusal(&group_id, error))?,
        },
        None => {
            state
                .context
                .broker
                .group_coordinator()
                .delete_group(&group_id)
                .await?
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Moves the group's committed offsets (to earliest, latest, a timestamp, an offset or by a
/// shift), as `kafka-consumer-groups --reset-offsets`; refused with 409 while the group has
/// members. With `dry_run` only the plan is returned.
#[utoipa::path(post, path = "/api/groups/{group}/reset-offsets", tag = "groups", security(("basic" = [])),
    params(("group" = String, Path, description = "Group id")),
    request_body = ResetOffsetsRequest,
    responses(
        (status = 200, description = "The offsets before and after (the plan with dry_run)", body = ResetOffsetsResponse),
        (status = 400, description = "Missing or invalid parameter", body = ErrorBody),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody),
        (status = 404, description = "No such topic or partition, or a group without offsets and no topic named", body = ErrorBody),
        (status = 409, description = "The group has members", body = ErrorBody)))]
pub async fn reset_offsets(
    State(state): State<Arc<AppState>>,
    ApiPath(group_id): ApiPath<String>,
    ApiJson(request): ApiJson<ResetOffsetsRequest>,
) -> ApiResult<Json<ResetOffsetsResponse>> {
    if group_id.is_empty() {
        return Err(ApiError::BadRequest("empty group id".into()));
    }
    if let Some(cluster) = state.context.cluster.clone() {
        return reset_offsets_in_cluster(&state, &cluster, group_id, request).await;
    }
    let coordinator = Arc::clone(state.context.broker.group_coordinator());
    let description = coordinator.describe_group(&group_id);
    if !description.members.is_empty() {
        return Err(has_members(
            &group_id,
            description.members.len(),
            description.state.name(),
        ));
    }
    let target = ResetTarget::from_request(&request)?;
    let broker = Arc::clone(&state.context.broker);
    let committed: BTreeMap<TopicPartition, i64> = coordinator
        .fetch_offsets(&group_id, None)
        .into_iter()
        .filter_map(|(tp, offset)| offset.map(|o| (tp, o.offset)))
        .collect();
    let named_count = request
        .topic
        .as_deref()
        .map(|name| broker.topic(name).map(|topic| topic.partition_count()));
    let selected: Vec<TopicPartition> = select_partitions(
        &request,
        &group_id,
        named_count,
        committed.keys().map(|tp| (tp.topic.clone(), tp.partition)),
        |topic, partition| broker.partition(topic, partition).is_ok(),
    )?
    .into_iter()
    .map(|(topic, partition)| TopicPartition { topic, partition })
    .collect();
    // Timestamp lookups read the time index: off the async workers.
    let plan = tokio::task::spawn_blocking(move || {
        selected
            .into_iter()
            .map(|tp| {
                let partition = broker.partition(&tp.topic, tp.partition)?;
                let previous = committed.get(&tp).copied();
                let new_offset = target.offset_for(partition.log(), previous)?;
                Ok(OffsetResetPlan {
                    topic: tp.topic,
                    partition: tp.partition,
                    previous_offset: previous,
                    new_offset,
                })
            })
            .collect::<Result<Vec<_>, BrokerError>>()
    })
    .await
    .map_err(|error| ApiError::Internal(format!("reset offsets task: {error}")))??;
    if !request.dry_run && !plan.is_empty() {
        let offsets = planned_offsets(&plan);
        // As an admin tool: no member id and generation -1, which the coordinator refuses
        // for a group that gained members since the check above.
        let results = coordinator
            .commit_offsets(&group_id, "", None, -1, offsets)
            .await?;
        if let Some(Err(error)) = results.into_iter().find(|r| r.is_err()) {
            return Err(error.into());
        }
    }
    Ok(Json(ResetOffsetsResponse {
        group_id,
        dry_run: request.dry_run,
        partitions: plan,
    }))
}

/// The partitions a reset covers: the named topic's (those listed, or all), else every
/// partition the group has offsets for that still exists. `named_count` is the named topic's
/// partition count (`Some(None)`: no such topic).
fn select_partitions(
    request: &ResetOffsetsRequest,
    group_id: &str,
    named_count: Option<Option<i32>>,
    committed: impl Iterator<Item = (String, i32)>,
    exists: impl Fn(&str, i32) -> bool,
) -> ApiResult<Vec<(String, i32)>> {
    match (&request.topic, named_count) {
        (Some(topic), Some(count)) => {
            let count =
                count.ok_or_else(|| ApiError::NotFound(format!("unknown topic '{topic}'")))?;
            let indexes: Vec<i32> = match &request.partitions {
                Some(list) => list.clone(),
                None => (0..count).collect(),
            };
            if let Some(index) = indexes.iter().find(|&&i| i < 0 || i >= count) {
                return Err(ApiError::NotFound(format!(
                    "topic '{topic}' has no partition {index}"
                )));
            }
            Ok(indexes.into_iter().map(|i| (topic.clone(), i)).collect())
        }
        (Some(topic), None) => Err(ApiError::Internal(format!(
            "no partition count looked up for '{topic}'"
        ))),
        (None, _) if request.partitions.is_some() => {
            Err(ApiError::BadRequest("partitions need a topic".into()))
        }
        (None, _) => {
            let committed: Vec<(String, i32)> = committed.collect();
            if committed.is_empty() {
                return Err(ApiError::NotFound(format!(
                    "group '{group_id}' has no committed offsets: name a topic to reset"
                )));
            }
            // Only partitions that still exist.
            Ok(committed
                .into_iter()
                .filter(|(topic, partition)| exists(topic, *partition))
                .collect())
        }
    }
}

/// A reset plan as the offsets an admin commit stores (no leader epoch, no metadata).
fn planned_offsets(plan: &[OffsetResetPlan]) -> Vec<(TopicPartition, OffsetAndMetadata)> {
    let now = now_ms();
    plan.iter()
        .map(|p| {
            (
                TopicPartition {
                    topic: p.topic.clone(),
                    partition: p.partition,
                },
                OffsetAndMetadata {
                    offset: p.new_offset,
                    leader_epoch: -1,
                    metadata: String::new(),
                    commit_timestamp_ms: now,
                },
            )
        })
        .collect()
}

fn has_members(group_id: &str, members: usize, state: &str) -> ApiError {
    ApiError::Conflict(format!(
        "group '{group_id}' has {members} active members ({state}): offsets can only be reset while it has none"
    ))
}

/// Where a cluster's group changes are made: at the group coordinator, which is the metadata
/// leader (see `sluice_broker::replication`).
enum Coordinator {
    ThisNode,
    /// Another node, reached through its Kafka listener as Kafka's admin tools reach it.
    Remote(String),
}

fn coordinator(cluster: &ClusterBroker) -> ApiResult<Coordinator> {
    let leader = cluster.controller().ok_or_else(|| {
        ApiError::NotReady("no group coordinator: the metadata group has no leader".into())
    })?;
    if leader == cluster.node_id() {
        return Ok(Coordinator::ThisNode);
    }
    cluster
        .kafka_addr(leader)
        .map(Coordinator::Remote)
        .ok_or_else(|| {
            ApiError::NotReady(format!(
                "the group coordinator (node {leader}) has no Kafka address yet"
            ))
        })
}

/// A group change the coordinator refused. A coordinator that moved or is loading gives 503:
/// asking again finds the new one.
fn coordinator_refusal(group_id: &str, error: GroupError) -> ApiError {
    match error {
        GroupError::UnknownMemberId
        | GroupError::IllegalGeneration
        | GroupError::RebalanceInProgress => ApiError::Conflict(format!(
            "group '{group_id}' has active members: offsets can only be reset while it has none ({error})"
        )),
        GroupError::NotCoordinator
        | GroupError::CoordinatorNotAvailable
        | GroupError::CoordinatorLoadInProgress => {
            ApiError::NotReady(format!("the group coordinator moved, try again: {error}"))
        }
        other => other.into(),
    }
}

/// As [`coordinator_refusal`], for a change forwarded to a coordinator on another node.
fn forward_refusal(group_id: &str, error: ForwardError) -> ApiError {
    let group_error = match &error {
        ForwardError::Refused { error: code, .. } => match code {
            ResponseError::GroupIdNotFound => Some(GroupError::GroupIdNotFound),
            ResponseError::NonEmptyGroup => Some(GroupError::NonEmptyGroup),
            ResponseError::UnknownMemberId => Some(GroupError::UnknownMemberId),
            ResponseError::IllegalGeneration => Some(GroupError::IllegalGeneration),
            ResponseError::RebalanceInProgress => Some(GroupError::RebalanceInProgress),
            ResponseError::InvalidGroupId => Some(GroupError::InvalidGroupId),
            ResponseError::UnknownTopicOrPartition => Some(GroupError::UnknownTopicOrPartition),
            ResponseError::NotCoordinator => Some(GroupError::NotCoordinator),
            ResponseError::CoordinatorNotAvailable => Some(GroupError::CoordinatorNotAvailable),
            ResponseError::CoordinatorLoadInProgress => Some(GroupError::CoordinatorLoadInProgress),
            _ => None,
        },
        _ => None,
    };
    match group_error {
        Some(group_error) => coordinator_refusal(group_id, group_error),
        None => ApiError::NotReady(error.to_string()),
    }
}

/// Reset-offsets in a cluster: the committed offsets as the coordinator has them, new
/// offsets from each partition's leader (its replica here, or ListOffsets to it), and the
/// commit made by the coordinator, which refuses it if the group gained members meanwhile.
async fn reset_offsets_in_cluster(
    state: &AppState,
    cluster: &Arc<ClusterBroker>,
    group_id: String,
    request: ResetOffsetsRequest,
) -> ApiResult<Json<ResetOffsetsResponse>> {
    let target = ResetTarget::from_request(&request)?;
    let coordinator = coordinator(cluster)?;
    let committed: BTreeMap<(String, i32), i64> = match &coordinator {
        Coordinator::ThisNode => {
            let description = state
                .context
                .broker
                .group_coordinator()
                .describe_group(&group_id);
            if !description.members.is_empty() {
                return Err(has_members(
                    &group_id,
                    description.members.len(),
                    description.state.name(),
                ));
            }
            cluster
                .fetch_offsets(&group_id, None)
                .await
                .map_err(|error| coordinator_refusal(&group_id, error))?
                .into_iter()
                .filter_map(|(tp, offset)| offset.map(|o| ((tp.topic, tp.partition), o.offset)))
                .collect()
        }
        Coordinator::Remote(addr) => {
            let (group_state, members) = kafka_forward::describe_group(addr, &group_id)
                .await
                .map_err(|error| forward_refusal(&group_id, error))?;
            if members > 0 {
                return Err(has_members(&group_id, members, &group_state));
            }
            // Linearizable: every commit acknowledged before this request is applied here.
            cluster
                .catch_up()
                .await
                .map_err(|error| ApiError::NotReady(error.to_string()))?;
            cluster
                .applied_offsets()
                .group(&group_id)
                .into_iter()
                .map(|c| ((c.topic, c.partition), c.offset))
                .collect()
        }
    };
    let partition_count = |topic: &TopicMetadata| topic.assignments.len() as i32;
    let named_count = match &request.topic {
        Some(name) => Some(
            cluster
                .topic_caught_up(name)
                .await
                .map(|t| partition_count(&t)),
        ),
        None => None,
    };
    let selected = select_partitions(
        &request,
        &group_id,
        named_count,
        committed.keys().cloned(),
        |topic, partition| {
            cluster
                .topic(topic)
                .is_some_and(|meta| partition < partition_count(&meta))
        },
    )?;
    let mut plan = Vec::with_capacity(selected.len());
    for (topic, partition) in selected {
        let previous = committed.get(&(topic.clone(), partition)).copied();
        let new_offset = leader_offset_for(cluster, target, &topic, partition, previous).await?;
        plan.push(OffsetResetPlan {
            topic,
            partition,
            previous_offset: previous,
            new_offset,
        });
    }
    if !request.dry_run && !plan.is_empty() {
        match &coordinator {
            Coordinator::ThisNode => {
                let results = cluster
                    .commit_offsets(&group_id, "", None, -1, planned_offsets(&plan))
                    .await
                    .map_err(|error| coordinator_refusal(&group_id, error))?;
                if let Some(Err(error)) = results.into_iter().find(|r| r.is_err()) {
                    return Err(coordinator_refusal(&group_id, error));
                }
            }
            Coordinator::Remote(addr) => {
                let offsets: Vec<(String, i32, i64)> = plan
                    .iter()
                    .map(|p| (p.topic.clone(), p.partition, p.new_offset))
                    .collect();
                kafka_forward::commit_offsets(addr, &group_id, &offsets)
                    .await
                    .map_err(|error| forward_refusal(&group_id, error))?;
            }
        }
    }
    Ok(Json(ResetOffsetsResponse {
        group_id,
        dry_run: request.dry_run,
        partitions: plan,
    }))
}

/// How long a reset waits for a partition leader it can ask (an election, a leader report
/// still on its way to this node).
const LEADER_WAIT_MAX: Duration = Duration::from_secs(10);

/// The reset target's offset as the partition's leader has it: from this node's replica when
/// it leads, else by ListOffsets to the leader (a follower's high watermark may lag). Waits up
/// to [`LEADER_WAIT_MAX`] while no leader is known or the one asked has just lost leadership.
async fn leader_offset_for(
    cluster: &ClusterBroker,
    target: ResetTarget,
    topic: &str,
    partition: i32,
    previous: Option<i64>,
) -> ApiResult<i64> {
    let deadline = tokio::time::Instant::now() + LEADER_WAIT_MAX;
    loop {
        let reason = match leader_offset_once(cluster, target, topic, partition, previous).await {
            Ok(offset) => return Ok(offset),
            Err(LookupFailed::Fail(error)) => return Err(error),
            Err(LookupFailed::Retry(reason)) => reason,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::NotReady(format!(
                "partition {partition} of '{topic}': {reason}, try again"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

enum LookupFailed {
    /// Nothing to ask yet, or the node asked does not lead (anymore).
    Retry(String),
    Fail(ApiError),
}

async fn leader_offset_once(
    cluster: &ClusterBroker,
    target: ResetTarget,
    topic: &str,
    partition: i32,
    previous: Option<i64>,
) -> Result<i64, LookupFailed> {
    if let Ok(replica) = cluster.replica_for(topic, partition) {
        if replica.is_leader() {
            let log = Arc::clone(replica.log());
            // Timestamp lookups read the time index: off the async workers.
            return tokio::task::spawn_blocking(move || target.offset_for(&log, previous))
                .await
                .map_err(|error| ApiError::Internal(format!("reset offsets task: {error}")))
                .and_then(|offset| offset.map_err(ApiError::from))
                .map_err(LookupFailed::Fail);
        }
    }
    let meta = cluster.topic(topic).ok_or_else(|| {
        LookupFailed::Fail(ApiError::NotFound(format!("unknown topic '{topic}'")))
    })?;
    let leader = cluster
        .partition_view(&meta, partition)
        .leader
        .ok_or_else(|| LookupFailed::Retry("no leader elected".into()))?;
    let addr = cluster
        .kafka_addr(leader)
        .ok_or_else(|| LookupFailed::Retry(format!("leader {leader} has no Kafka address yet")))?;
    let lookup = |timestamp: i64| {
        let addr = addr.clone();
        async move {
            kafka_forward::list_offset(&addr, topic, partition, timestamp)
                .await
                .map_err(|error| {
                    if error.is_retriable() {
                        LookupFailed::Retry(error.to_string())
                    } else {
                        LookupFailed::Fail(ApiError::NotReady(error.to_string()))
                    }
                })
        }
    };
    let start = lookup(kafka_forward::EARLIEST_TIMESTAMP)
        .await?
        .unwrap_or(0);
    let end = lookup(kafka_forward::LATEST_TIMESTAMP)
        .await?
        .unwrap_or(start);
    let at_timestamp = match target {
        ResetTarget::Timestamp(timestamp) => lookup(timestamp).await?,
        _ => None,
    };
    Ok(target.offset_within(start, end, at_timestamp, previous))
}

#[derive(Debug, Clone, Copy)]
enum ResetTarget {
    Earliest,
    Latest,
    Timestamp(i64),
    Offset(i64),
    Shift(i64),
}

impl ResetTarget {
    fn from_request(request: &ResetOffsetsRequest) -> ApiResult<ResetTarget> {
        let missing = |field: &str| {
            ApiError::BadRequest(format!("strategy {:?} needs '{field}'", request.strategy))
        };
        Ok(match request.strategy {
            ResetStrategy::Earliest => ResetTarget::Earliest,
            ResetStrategy::Latest => ResetTarget::Latest,
            ResetStrategy::Timestamp => ResetTarget::Timestamp(
                request
                    .timestamp_ms
                    .ok_or_else(|| missing("timestamp_ms"))?,
            ),
            ResetStrategy::Offset => {
                ResetTarget::Offset(request.offset.ok_or_else(|| missing("offset"))?)
            }
            ResetStrategy::Shift => {
                ResetTarget::Shift(request.shift.ok_or_else(|| missing("shift"))?)
            }
        })
    }

    /// The new offset for one partition of this node, always within [log start, high
    /// watermark] as Kafka's tool clamps it.
    fn offset_for(self, log: &PartitionLog, previous: Option<i64>) -> Result<i64, BrokerError> {
        let at_timestamp = match self {
            ResetTarget::Timestamp(timestamp) => log
                .offset_for_timestamp(timestamp)?
                .map(|(offset, _)| offset),
            _ => None,
        };
        Ok(self.offset_within(
            log.log_start_offset(),
            log.high_watermark(),
            at_timestamp,
            previous,
        ))
    }

    /// The new offset given the partition's log start and high watermark, the first offset at
    /// or after the target's timestamp (`None`: nothing that recent), and the committed offset.
    fn offset_within(
        self,
        start: i64,
        end: i64,
        at_timestamp: Option<i64>,
        previous: Option<i64>,
    ) -> i64 {
        let wanted = match self {
            ResetTarget::Earliest => start,
            ResetTarget::Latest => end,
            ResetTarget::Timestamp(_) => at_timestamp.unwrap_or(end),
            ResetTarget::Offset(offset) => offset,
            // Without a committed offset the shift starts from the log start.
            ResetTarget::Shift(shift) => previous.unwrap_or(start).saturating_add(shift),
        };
        wanted.clamp(start, end.max(start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::{Encodable, StrBytes};

    #[test]
    fn reset_targets_stay_between_log_start_and_high_watermark() {
        let (start, end) = (10, 50);
        let within = |target: ResetTarget, at: Option<i64>, previous: Option<i64>| {
            target.offset_within(start, end, at, previous)
        };
        assert_eq!(within(ResetTarget::Earliest, None, Some(30)), 10);
        assert_eq!(within(ResetTarget::Latest, None, Some(30)), 50);
        assert_eq!(within(ResetTarget::Timestamp(7), Some(42), None), 42);
        // Nothing that recent: the end, as Kafka's tool resets to.
        assert_eq!(within(ResetTarget::Timestamp(7), None, None), 50);
        assert_eq!(within(ResetTarget::Offset(3), None, None), 10);
        assert_eq!(within(ResetTarget::Offset(99), None, None), 50);
        assert_eq!(within(ResetTarget::Shift(-5), None, Some(30)), 25);
        assert_eq!(within(ResetTarget::Shift(-5), None, None), 10);
        assert_eq!(within(ResetTarget::Shift(i64::MAX), None, Some(30)), 50);
        // An empty log (end before start after a deletion): the start.
        assert_eq!(ResetTarget::Latest.offset_within(10, 5, None, None), 10);
    }

    #[test]
    fn consumer_protocol_assignments_decode_and_garbage_gives_none() {
        let mut assignment = ConsumerProtocolAssignment::default();
        let mut topic = AssignedTopic::default();
        topic.topic = TopicName(StrBytes::from_static_str("orders"));
        topic.partitions = vec![0, 2];
        assignment.assigned_partitions = vec![topic];
        let mut bytes = bytes::BytesMut::new();
        bytes.extend_from_slice(&1i16.to_be_bytes());
        assignment.encode(&mut bytes, 1).expect("encode");
        let decoded = decode_assignment(&bytes.freeze());
        let pairs: Vec<(String, i32)> = decoded
            .into_iter()
            .map(|t| (t.topic, t.partition))
            .collect();
        assert_eq!(pairs, vec![("orders".into(), 0), ("orders".into(), 2)]);
        assert!(decode_assignment(&Bytes::from_static(&[0, 1, 0xff, 0xff, 0xff])).is_empty());
        assert!(decode_assignment(&Bytes::from_static(&[0x7f, 0x7f])).is_empty());
    }
}
