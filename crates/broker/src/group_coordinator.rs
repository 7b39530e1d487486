//! Consumer groups: Kafka's classic rebalance protocol (JoinGroup/SyncGroup/Heartbeat/LeaveGroup)
//! and committed offsets (stored through the `offset_store` module).
//!
//! Protocol-neutral: plain Rust types in, [`GroupError`] out. Group membership lives in memory
//! only (after a restart members get UNKNOWN_MEMBER_ID and rejoin, as with a moved Kafka
//! coordinator); committed offsets are durable. One mutex guards every group: each operation is
//! a short, non-blocking state change, and waiting (JoinGroup, SyncGroup) happens on oneshot
//! channels outside it.

mod consumer_group;
#[cfg(test)]
mod consumer_group_tests;
mod group;
pub mod group_configs;
mod migration;
#[cfg(test)]
mod migration_tests;
mod share_coordinator;
mod share_group;
mod share_partition;
mod share_store;
#[cfg(test)]
mod share_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use sluice_log::{LogConfig, Storage};
use tokio::time::Instant;

use self::consumer_group::{compile_subscription_regex, ConsumerGroup};
pub use self::consumer_group::{
    ConsumerGroupDescription, ConsumerGroupState, ConsumerHeartbeatParams, ConsumerHeartbeatResult,
    ConsumerMemberDescription, ASSIGNOR_RANGE, ASSIGNOR_UNIFORM, LEAVE_GROUP_MEMBER_EPOCH,
    LEAVE_GROUP_STATIC_MEMBER_EPOCH,
};
pub use self::group::GroupState;
use self::group::{Group, JoinStep, SyncStep};
pub use self::group_configs::GroupConfigEntry;
use self::group_configs::GroupConfigs;
pub use self::migration::{ClassicSubscription, ConsumerProtocolCodec, TopicCatalog};
use self::share_coordinator::SharePartitions;
pub use self::share_coordinator::{AcknowledgementBatch, ShareFetched};
use self::share_group::ShareGroup;
pub use self::share_group::{
    ShareGroupDescription, ShareGroupState, ShareHeartbeatParams, ShareHeartbeatResult,
    ShareMemberDescription, SHARE_ASSIGNOR_SIMPLE,
};
pub use self::share_partition::{AcknowledgeType, AcquiredRange};
use self::share_store::ShareStore;
pub use self::share_store::{ReplicatedShareStates, ShareLog};
use crate::offset_store::OffsetStore;
use crate::{now_ms, BrokerError, GroupConfig, GroupError};

/// OFFSET_METADATA_TOO_LARGE per offset, in order.
fn metadata_checks(offsets: &[(TopicPartition, OffsetAndMetadata)]) -> Vec<Result<(), GroupError>> {
    offsets
        .iter()
        .map(|(_, offset)| {
            if offset.metadata.len() > OFFSET_METADATA_BYTES_MAX {
                Err(GroupError::OffsetMetadataTooLarge)
            } else {
                Ok(())
            }
        })
        .collect()
}

/// Removes a group from the table when dropped, if it is still Dead (see `delete_group`).
struct RemoveDeadGroup<'a> {
    groups: &'a Mutex<HashMap<String, Group>>,
    group_id: &'a str,
}

impl Drop for RemoveDeadGroup<'_> {
    fn drop(&mut self) {
        let mut groups = self.groups.lock();
        if groups
            .get(self.group_id)
            .is_some_and(|g| g.state() == GroupState::Dead)
        {
            groups.remove(self.group_id);
        }
    }
}

/// Members (joined or holding a MEMBER_ID_REQUIRED id) per group (`group.max.size`).
pub const GROUP_SIZE_MAX: usize = 1000;
/// Longest commit metadata string (`offset.metadata.max.bytes`).
pub const OFFSET_METADATA_BYTES_MAX: usize = 4096;
/// Protocols one member may offer, and their total metadata bytes: far above what any client
/// sends, low enough that 1000 members cannot exhaust memory.
pub const MEMBER_PROTOCOLS_MAX: usize = 64;
pub const MEMBER_METADATA_BYTES_MAX: usize = 1 << 20;
/// How often member sessions are checked.
const SESSION_SWEEP_MS_MAX: u64 = 250;
/// How often offsets of empty groups are checked for expiry, and the offsets log for
/// compaction.
const OFFSET_EXPIRY_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

/// A committed offset as OffsetCommit stores it and OffsetFetch returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetAndMetadata {
    pub offset: i64,
    /// -1 when the client did not send one.
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

/// One assignment protocol a member supports (e.g. "range", "cooperative-sticky").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupProtocol {
    pub name: String,
    pub metadata: Bytes,
}

#[derive(Debug, Clone)]
pub struct JoinGroupParams {
    pub group_id: String,
    /// Empty for a member joining for the first time.
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<GroupProtocol>,
    /// JoinGroup v4+: a new member first gets MEMBER_ID_REQUIRED with its id (KIP-394).
    pub require_known_member_id: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    /// The member's metadata for the selected protocol.
    pub metadata: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinGroupResult {
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader_id: String,
    pub member_id: String,
    /// Every member for the leader (which computes the assignment); empty for the others.
    pub members: Vec<JoinedMember>,
    /// KIP-345: a static leader that rejoined a stable group must not assign again (JoinGroup
    /// v9's `skip_assignment`); its SyncGroup gets the assignment it had.
    pub skip_assignment: bool,
}

/// A failed JoinGroup still carries a member id: the generated one for MEMBER_ID_REQUIRED,
/// otherwise the one the request sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinGroupError {
    pub error: GroupError,
    pub member_id: String,
}

#[derive(Debug, Clone)]
pub struct SyncGroupParams {
    pub group_id: String,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub generation_id: i32,
    /// SyncGroup v5 checks them against the group's when present.
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    /// The leader's assignment per member id; empty from followers.
    pub assignments: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncGroupResult {
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberIdentity {
    pub member_id: String,
    pub group_instance_id: Option<String>,
}

/// ListGroups' group types: the classic protocol's groups and KIP-848's.
pub const GROUP_TYPE_CLASSIC: &str = "classic";
pub const GROUP_TYPE_CONSUMER: &str = "consumer";
pub const GROUP_TYPE_SHARE: &str = "share";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOverview {
    pub group_id: String,
    pub protocol_type: String,
    /// Kafka's state name (a classic [`GroupState`] or a [`ConsumerGroupState`]).
    pub state: &'static str,
    /// [`GROUP_TYPE_CLASSIC`] or [`GROUP_TYPE_CONSUMER`].
    pub group_type: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    pub state: GroupState,
    pub protocol_type: String,
    /// The selected protocol while Stable, else empty.
    pub protocol_name: String,
    pub members: Vec<MemberDescription>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
    /// The member's partitions when the coordinator knows them (consumer-protocol groups);
    /// classic groups' are inside `assignment`, in the client's format.
    pub assigned_partitions: Option<Vec<TopicPartition>>,
}

pub struct GroupCoordinator {
    config: GroupConfig,
    groups: Mutex<HashMap<String, Group>>,
    /// Groups on the consumer protocol (KIP-848). A group id is in at most one of the two
    /// maps; when both locks are needed, `groups` is taken first.
    consumer_groups: Mutex<HashMap<String, ConsumerGroup>>,
    /// Share groups (KIP-932); taken after the other two maps when several are needed.
    share_groups: Mutex<HashMap<String, ShareGroup>>,
    /// The share partitions' record states, per (group, partition).
    share_partitions: Mutex<SharePartitions>,
    /// The share partitions' start offsets, as Kafka's `__share_group_state`.
    share_state: OffsetStore,
    /// In a cluster: the share partitions' states live in the metadata group instead.
    replicated_share_states: std::sync::OnceLock<Weak<dyn ReplicatedShareStates>>,
    group_configs: GroupConfigs,
    offsets: OffsetStore,
    /// Set by the Kafka front end: groups may move between the classic and the consumer
    /// protocol.
    migration: std::sync::OnceLock<migration::ProtocolMigration>,
    /// For the timer tasks it spawns; they stop once the coordinator is gone.
    this: Weak<GroupCoordinator>,
    closed: AtomicBool,
}

impl GroupCoordinator {
    /// Opens the offsets log in `dir`, replays it and starts the session sweeper. Must be
    /// called inside a tokio runtime.
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        config: GroupConfig,
        log_config: LogConfig,
    ) -> Result<Arc<GroupCoordinator>, BrokerError> {
        // Beside the offsets log: the share groups' state and the groups' configs.
        let share_state = OffsetStore::open(
            Arc::clone(&storage),
            &dir.with_file_name("share_group_state"),
            log_config.clone(),
        )?;
        let group_configs = GroupConfigs::open(
            Arc::clone(&storage),
            dir.with_file_name("group_configs.json"),
        )?;
        let offsets = OffsetStore::open(storage, dir, log_config)?;
        let coordinator = Arc::new_cyclic(|this| GroupCoordinator {
            config,
            groups: Mutex::new(HashMap::new()),
            consumer_groups: Mutex::new(HashMap::new()),
            share_groups: Mutex::new(HashMap::new()),
            share_partitions: Mutex::new(BTreeMap::new()),
            share_state,
            replicated_share_states: std::sync::OnceLock::new(),
            group_configs,
            offsets,
            migration: std::sync::OnceLock::new(),
            this: this.clone(),
            closed: AtomicBool::new(false),
        });
        coordinator.start_sweeper();
        Ok(coordinator)
    }

    /// Cluster mode: share-partition states are committed through the metadata group.
    pub fn use_replicated_share_states(&self, states: Weak<dyn ReplicatedShareStates>) {
        if self.replicated_share_states.set(states).is_err() {
            tracing::warn!("the share-state store was replaced twice");
        }
    }

    /// Where share-partition states are stored now.
    fn share_store(&self) -> ShareStore<'_> {
        ShareStore::choose(&self.share_state, self.replicated_share_states.get())
    }

    /// Stops background work and fsyncs the offsets log.
    pub fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        if let Err(error) = self.offsets.flush() {
            tracing::error!(%error, "flushing the consumer offsets log failed");
        }
        if let Err(error) = self.share_state.flush() {
            tracing::error!(%error, "flushing the share group state log failed");
        }
    }

    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// JoinGroup: waits until the rebalance completes (all members rejoined, or the rebalance
    /// timeout passed) and returns this member's view of the new generation.
    pub async fn join_group(
        &self,
        params: JoinGroupParams,
    ) -> Result<JoinGroupResult, JoinGroupError> {
        let fail = |error: GroupError| JoinGroupError {
            error,
            member_id: params.member_id.clone(),
        };
        if params.group_id.is_empty() {
            return Err(fail(GroupError::InvalidGroupId));
        }
        if params.session_timeout_ms < self.config.session_timeout_ms_min
            || params.session_timeout_ms > self.config.session_timeout_ms_max
        {
            return Err(fail(GroupError::InvalidSessionTimeout));
        }
        let metadata_bytes: usize = params
            .protocols
            .iter()
            .map(|p| p.name.len() + p.metadata.len())
            .sum();
        if params.protocols.len() > MEMBER_PROTOCOLS_MAX
            || metadata_bytes > MEMBER_METADATA_BYTES_MAX
        {
            // Kafka has no dedicated code; no real client comes near these bounds.
            return Err(fail(GroupError::InconsistentGroupProtocol));
        }
        let step = {
            let mut groups = self.groups.lock();
            if self.is_share_group(&params.group_id) {
                return Err(fail(GroupError::InconsistentGroupProtocol));
            }
            {
                let mut consumer_groups = self.consumer_groups.lock();
                match consumer_groups.get_mut(&params.group_id) {
                    // A classic member of a consumer group: the coordinator assigns.
                    Some(group) if !group.is_empty() && self.migrates() => {
                        return self.classic_join_consumer_group(group, params);
                    }
                    // A group of the other protocol with members: Kafka's answer when it does
                    // not convert groups between protocols.
                    Some(group) if !group.is_empty() => {
                        return Err(fail(GroupError::InconsistentGroupProtocol))
                    }
                    // An empty one holds only offsets: it becomes a classic group.
                    Some(_) => {
                        consumer_groups.remove(&params.group_id);
                    }
                    None => {}
                }
            }
            let group = match groups.get_mut(&params.group_id) {
                Some(group) => group,
                // Only a new member may create a group.
                None if !params.member_id.is_empty() => {
                    return Err(fail(GroupError::UnknownMemberId))
                }
                None => groups
                    .entry(params.group_id.clone())
                    .or_insert_with(|| Group::new(params.group_id.clone())),
            };
            let step = group.join(params, Instant::now(), &self.config);
            self.schedule_timer(group);
            step
        };
        match step {
            JoinStep::Done(result) => result,
            JoinStep::Wait(member_id, receiver) => match receiver.await {
                Ok(result) => result.map_err(|error| JoinGroupError { error, member_id }),
                // Replaced by a retried JoinGroup of the same member.
                Err(_) => Err(JoinGroupError {
                    error: GroupError::RebalanceInProgress,
                    member_id,
                }),
            },
        }
    }

    /// SyncGroup: the leader's call stores the assignments; every member's call (the leader's
    /// included) returns its own assignment once the leader's has arrived.
    pub async fn sync_group(&self, params: SyncGroupParams) -> Result<SyncGroupResult, GroupError> {
        if params.group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        let step = {
            let mut groups = self.groups.lock();
            let Some(group) = groups.get_mut(&params.group_id) else {
                return match self.consumer_groups.lock().get_mut(&params.group_id) {
                    Some(group) => self.classic_sync_consumer_group(group, &params),
                    None => Err(GroupError::UnknownMemberId),
                };
            };
            let step = group.sync(params, Instant::now());
            self.schedule_timer(group);
            step
        };
        match step {
            SyncStep::Done(result) => result,
            SyncStep::Wait(receiver) => receiver
                .await
                .unwrap_or(Err(GroupError::RebalanceInProgress)),
        }
    }

    pub fn heartbeat(
        &self,
        group_id: &str,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
    ) -> Result<(), GroupError> {
        if group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        let mut groups = self.groups.lock();
        let Some(group) = groups.get_mut(group_id) else {
            // A classic member of a consumer group.
            return match self.consumer_groups.lock().get_mut(group_id) {
                Some(group) => group.classic_heartbeat(
                    member_id,
                    group_instance_id,
                    generation_id,
                    Instant::now(),
                ),
                None => Err(GroupError::UnknownMemberId),
            };
        };
        group.heartbeat(member_id, group_instance_id, generation_id, Instant::now())
    }

    /// ConsumerGroupHeartbeat (KIP-848): joins, leaves, or reports the member's partitions
    /// and returns its epoch and, when it changed, its assignment. `topics` holds every topic
    /// with its partition count, for the subscriptions.
    pub fn consumer_group_heartbeat(
        &self,
        mut params: ConsumerHeartbeatParams,
        topics: &BTreeMap<String, i32>,
    ) -> Result<ConsumerHeartbeatResult, GroupError> {
        let invalid = |text: &str| Err(GroupError::InvalidRequest(text.to_string()));
        if params.group_id.is_empty() {
            return invalid("GroupId can't be empty.");
        }
        if params.instance_id.as_deref() == Some("") {
            return invalid("InstanceId can't be empty.");
        }
        if params.rack_id.as_deref() == Some("") {
            return invalid("RackId can't be empty.");
        }
        match params.member_epoch {
            0 => {
                if params.rebalance_timeout_ms == -1 {
                    return invalid("RebalanceTimeoutMs must be provided in first request.");
                }
                if params.subscribed_topic_names.is_none()
                    && params.subscribed_topic_regex.is_none()
                {
                    return invalid(
                        "SubscribedTopicNames or SubscribedTopicRegex must be set in first request.",
                    );
                }
                if params
                    .owned_partitions
                    .as_ref()
                    .is_some_and(|p| !p.is_empty())
                {
                    return invalid("TopicPartitions must be empty when (re-)joining.");
                }
                // ConsumerGroupHeartbeat v0: the coordinator names new members.
                if params.member_id.is_empty() {
                    params.member_id = uuid::Uuid::new_v4().to_string();
                }
            }
            LEAVE_GROUP_STATIC_MEMBER_EPOCH if params.instance_id.is_none() => {
                return invalid("InstanceId can't be null.");
            }
            epoch if epoch < LEAVE_GROUP_STATIC_MEMBER_EPOCH => {
                return invalid(&format!("MemberEpoch is invalid: {epoch}."));
            }
            _ if params.member_id.is_empty() => return invalid("MemberId can't be empty."),
            _ => {}
        }
        if let Some(assignor) = &params.server_assignor {
            if assignor != ASSIGNOR_UNIFORM && assignor != ASSIGNOR_RANGE {
                return Err(GroupError::UnsupportedAssignor(assignor.clone()));
            }
        }
        if let Some(pattern) = params.subscribed_topic_regex.as_deref() {
            compile_subscription_regex(pattern)?;
        }
        let joining = params.member_epoch == 0;
        let mut groups = self.groups.lock();
        if self.is_share_group(&params.group_id) {
            return Err(GroupError::GroupIdNotFound);
        }
        let mut consumer_groups = self.consumer_groups.lock();
        match groups.get(&params.group_id) {
            // A classic group with members moves to the consumer protocol (KIP-848's online
            // upgrade) when its first consumer-protocol member joins.
            Some(group) if !group.is_idle() && joining && self.migrates() => {
                self.upgrade_classic_group(&mut groups, &mut consumer_groups, &params.group_id)?;
            }
            Some(group) if !group.is_idle() => {
                return Err(GroupError::GroupIdNotFound);
            }
            // An empty classic group holds only offsets: it becomes a consumer group.
            Some(_) if joining => {
                groups.remove(&params.group_id);
            }
            _ => {}
        }
        let leaving = params.member_epoch < 0;
        let group_id = params.group_id.clone();
        let group = match consumer_groups.get_mut(&params.group_id) {
            Some(group) => group,
            // Membership is not kept across a restart (or a move of the coordinator): the
            // member rejoins, as after UNKNOWN_MEMBER_ID anywhere.
            None if !joining => return Err(GroupError::UnknownMemberId),
            None => consumer_groups
                .entry(params.group_id.clone())
                .or_insert_with(|| ConsumerGroup::new(params.group_id.clone())),
        };
        let result = group.heartbeat(params, topics, Instant::now(), &self.config);
        if leaving {
            self.maybe_downgrade(&mut groups, &mut consumer_groups, &group_id);
        }
        result
    }

    /// ConsumerGroupDescribe: GROUP_ID_NOT_FOUND unless `group_id` is a consumer group.
    pub fn describe_consumer_group(
        &self,
        group_id: &str,
    ) -> Result<ConsumerGroupDescription, GroupError> {
        match self.consumer_groups.lock().get(group_id) {
            Some(group) => Ok(group.describe()),
            None => Err(GroupError::GroupIdNotFound),
        }
    }

    /// Whether `group_id` is a group of the consumer protocol (KIP-848).
    pub fn is_consumer_group(&self, group_id: &str) -> bool {
        self.consumer_groups.lock().contains_key(group_id)
    }

    /// OffsetFetch v9 names the fetching member: one of a consumer group must be in step.
    pub fn validate_offset_fetch(
        &self,
        group_id: &str,
        member_id: Option<&str>,
        member_epoch: i32,
    ) -> Result<(), GroupError> {
        let Some(member_id) = member_id else {
            return Ok(());
        };
        match self.consumer_groups.lock().get(group_id) {
            Some(group) => group.validate_offset_fetch(member_id, member_epoch),
            None => Ok(()),
        }
    }

    /// LeaveGroup: one result per identity, in order; the outer error is for the whole group.
    pub fn leave_group(
        &self,
        group_id: &str,
        members: &[MemberIdentity],
    ) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        if group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        let mut groups = self.groups.lock();
        let Some(group) = groups.get_mut(group_id) else {
            let mut consumer_groups = self.consumer_groups.lock();
            return Ok(self.classic_leave_consumer_group(
                &mut groups,
                &mut consumer_groups,
                group_id,
                members,
            ));
        };
        let results = group.leave(members, Instant::now(), &self.config);
        self.schedule_timer(group);
        Ok(results)
    }

    /// OffsetCommit: validates the committer against the group, then stores the offsets
    /// durably. Returns one result per offset, in order (OFFSET_METADATA_TOO_LARGE is per
    /// partition); the outer error applies to every partition. The caller checks that topics
    /// and partitions exist.
    pub async fn commit_offsets(
        &self,
        group_id: &str,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
        offsets: Vec<(TopicPartition, OffsetAndMetadata)>,
    ) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        let results = self.validate_commit(
            group_id,
            member_id,
            group_instance_id,
            generation_id,
            &offsets,
        )?;
        let accepted: Vec<(TopicPartition, OffsetAndMetadata)> = offsets
            .into_iter()
            .zip(&results)
            .filter(|(_, result)| result.is_ok())
            .map(|(offset, _)| offset)
            .collect();
        if !accepted.is_empty() {
            self.offsets.commit(group_id, &accepted).await?;
        }
        Ok(results)
    }

    /// A committed transaction's offsets (TxnOffsetCommit, checked when they were sent),
    /// stored durably without a membership check: the transaction decided them.
    pub(crate) async fn store_transactional_offsets(
        &self,
        group_id: &str,
        offsets: &[(TopicPartition, OffsetAndMetadata)],
    ) -> Result<(), GroupError> {
        self.offsets.commit(group_id, offsets).await
    }

    /// OffsetCommit's checks without the write: the committer against the group (the outer
    /// error), and each offset's metadata size (one result per offset, in order). Cluster mode
    /// stores the accepted offsets through the metadata group instead of the local store.
    pub fn validate_commit(
        &self,
        group_id: &str,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
        offsets: &[(TopicPartition, OffsetAndMetadata)],
    ) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        let consumer_group = self
            .consumer_groups
            .lock()
            .get(group_id)
            .map(|group| group.validate_offset_commit(member_id, generation_id));
        if let Some(result) = consumer_group {
            result?;
        } else {
            let mut groups = self.groups.lock();
            match groups.get_mut(group_id) {
                Some(group) => group.validate_offset_commit(
                    member_id,
                    group_instance_id,
                    generation_id,
                    Instant::now(),
                )?,
                // No live group: a standalone consumer or admin tool commits (generation -1).
                None if generation_id < 0 => {}
                // A member of a generation this coordinator does not know (e.g. before a restart).
                None => return Err(GroupError::IllegalGeneration),
            }
        }
        Ok(metadata_checks(offsets))
    }

    /// TxnOffsetCommit's checks: as Kafka, the committer is checked against the group only
    /// when the request names one (member id, generation or instance id; a producer given
    /// only a group id names none); each offset's metadata size either way.
    pub fn validate_transactional_commit(
        &self,
        group_id: &str,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
        offsets: &[(TopicPartition, OffsetAndMetadata)],
    ) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        if generation_id < 0 && member_id.is_empty() && group_instance_id.is_none() {
            return Ok(metadata_checks(offsets));
        }
        self.validate_commit(
            group_id,
            member_id,
            group_instance_id,
            generation_id,
            offsets,
        )
    }

    /// OffsetFetch: the committed offset of each partition (`None` if never committed), or of
    /// every partition the group committed when `partitions` is `None`. An unknown group has
    /// no offsets (not an error, as in Kafka).
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        partitions: Option<&[TopicPartition]>,
    ) -> Vec<(TopicPartition, Option<OffsetAndMetadata>)> {
        match partitions {
            Some(partitions) => partitions
                .iter()
                .map(|p| (p.clone(), self.offsets.fetch(group_id, p)))
                .collect(),
            None => self
                .offsets
                .group_offsets(group_id)
                .into_iter()
                .map(|(p, o)| (p, Some(o)))
                .collect(),
        }
    }

    /// Every group with members or committed offsets, sorted by id.
    pub fn list_groups(&self) -> Vec<GroupOverview> {
        let mut overviews: HashMap<String, GroupOverview> = HashMap::new();
        for group_id in self.offsets.groups() {
            overviews.insert(
                group_id.clone(),
                GroupOverview {
                    group_id,
                    protocol_type: String::new(),
                    state: GroupState::Empty.name(),
                    group_type: GROUP_TYPE_CLASSIC,
                },
            );
        }
        for (group_id, group) in self.groups.lock().iter() {
            if group.is_idle() && !overviews.contains_key(group_id) {
                continue; // created by a failed join, holds nothing
            }
            overviews.insert(
                group_id.clone(),
                GroupOverview {
                    group_id: group_id.clone(),
                    protocol_type: group.protocol_type().to_string(),
                    state: group.state().name(),
                    group_type: GROUP_TYPE_CLASSIC,
                },
            );
        }
        for (group_id, group) in self.consumer_groups.lock().iter() {
            if group.is_empty() && !overviews.contains_key(group_id) {
                continue;
            }
            overviews.insert(
                group_id.clone(),
                GroupOverview {
                    group_id: group_id.clone(),
                    protocol_type: GROUP_TYPE_CONSUMER.to_string(),
                    state: group.state().name(),
                    group_type: GROUP_TYPE_CONSUMER,
                },
            );
        }
        for group_id in self.share_group_ids() {
            let state = match self.share_groups.lock().get(&group_id) {
                Some(group) => group.state(),
                None => ShareGroupState::Empty,
            };
            overviews.insert(
                group_id.clone(),
                GroupOverview {
                    group_id,
                    protocol_type: GROUP_TYPE_SHARE.to_string(),
                    state: state.name(),
                    group_type: GROUP_TYPE_SHARE,
                },
            );
        }
        let mut overviews: Vec<GroupOverview> = overviews.into_values().collect();
        overviews.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        overviews
    }

    /// Any group in the classic shape (state, members, their partitions), for the HTTP API
    /// and the gauges; an unknown group is reported as Dead, as Kafka does. Kafka's
    /// DescribeGroups answers consumer-protocol groups as unknown: it checks
    /// [`Self::is_consumer_group`] first.
    pub fn describe_group(&self, group_id: &str) -> GroupDescription {
        if let Some(group) = self.groups.lock().get(group_id) {
            return group.describe();
        }
        if let Some(group) = self.consumer_groups.lock().get(group_id) {
            let description = group.describe();
            return GroupDescription {
                group_id: description.group_id,
                state: match description.state {
                    ConsumerGroupState::Empty => GroupState::Empty,
                    ConsumerGroupState::Assigning => GroupState::Assigning,
                    ConsumerGroupState::Reconciling => GroupState::Reconciling,
                    ConsumerGroupState::Stable => GroupState::Stable,
                    ConsumerGroupState::Dead => GroupState::Dead,
                },
                protocol_type: GROUP_TYPE_CONSUMER.to_string(),
                protocol_name: description.assignor_name,
                members: description
                    .members
                    .into_iter()
                    .map(|m| MemberDescription {
                        member_id: m.member_id,
                        group_instance_id: m.instance_id,
                        client_id: m.client_id,
                        client_host: m.client_host,
                        metadata: Bytes::new(),
                        assignment: Bytes::new(),
                        assigned_partitions: Some(m.assignment),
                    })
                    .collect(),
            };
        }
        if let Ok(description) = self.describe_share_group(group_id) {
            return GroupDescription {
                group_id: description.group_id,
                state: match description.state {
                    ShareGroupState::Empty => GroupState::Empty,
                    ShareGroupState::Stable => GroupState::Stable,
                    ShareGroupState::Dead => GroupState::Dead,
                },
                protocol_type: GROUP_TYPE_SHARE.to_string(),
                protocol_name: description.assignor_name,
                members: description
                    .members
                    .into_iter()
                    .map(|m| MemberDescription {
                        member_id: m.member_id,
                        group_instance_id: None,
                        client_id: m.client_id,
                        client_host: m.client_host,
                        metadata: Bytes::new(),
                        assignment: Bytes::new(),
                        assigned_partitions: Some(m.assignment),
                    })
                    .collect(),
            };
        }
        let state = if self.offsets.has_offsets(group_id) || self.is_share_group(group_id) {
            GroupState::Empty
        } else {
            GroupState::Dead
        };
        GroupDescription {
            group_id: group_id.to_string(),
            state,
            protocol_type: String::new(),
            protocol_name: String::new(),
            members: Vec::new(),
        }
    }

    /// DeleteGroups: only a group without members; its committed offsets are removed durably.
    pub async fn delete_group(&self, group_id: &str) -> Result<(), GroupError> {
        if group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        if self.is_share_group(group_id) {
            return self.delete_share_group(group_id).await;
        }
        let had_consumer_group = {
            let mut consumer_groups = self.consumer_groups.lock();
            match consumer_groups.get_mut(group_id) {
                Some(group) if !group.is_empty() => return Err(GroupError::NonEmptyGroup),
                Some(_) => {
                    consumer_groups.remove(group_id);
                    true
                }
                None => false,
            }
        };
        let had_group = had_consumer_group || {
            let mut groups = self.groups.lock();
            match groups.get_mut(group_id) {
                Some(group) if group.state() == GroupState::Dead => {
                    return Err(GroupError::GroupIdNotFound)
                }
                Some(group) if group.state() != GroupState::Empty => {
                    return Err(GroupError::NonEmptyGroup)
                }
                Some(group) => {
                    // Dead first, so a join racing with the offset deletion is refused.
                    group.mark_dead();
                    true
                }
                None => false,
            }
        };
        // Removed however this ends, also when the request is abandoned while the tombstones
        // are synced: a Dead group left behind would refuse every join until a restart.
        let _remove_dead = had_group.then(|| RemoveDeadGroup {
            groups: &self.groups,
            group_id,
        });
        let deleted = self.offsets.delete_group(group_id).await;
        match deleted? {
            0 if !had_group => Err(GroupError::GroupIdNotFound),
            _ => Ok(()),
        }
    }

    /// OffsetDelete's checks without the write: which of `partitions` may lose their committed
    /// offsets. A group with members keeps the offsets of topics they consume
    /// (GROUP_SUBSCRIBED_TO_TOPIC) and, unless it is a consumer group, refuses everything
    /// (NON_EMPTY_GROUP). `subscribed_topics` reads the topics out of a member's metadata (the
    /// protocol's business); `None` when it cannot tell, which keeps every offset. Whether the
    /// group exists at all is the caller's to check, with the offsets it holds.
    pub fn check_offset_deletion(
        &self,
        group_id: &str,
        partitions: &[TopicPartition],
        subscribed_topics: impl Fn(&Bytes) -> Option<Vec<String>>,
    ) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        if group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        if let Some(group) = self.consumer_groups.lock().get(group_id) {
            let kept = if group.is_empty() {
                HashSet::new()
            } else {
                group.subscribed_topics()
            };
            return Ok(partitions
                .iter()
                .map(|partition| match kept.contains(&partition.topic) {
                    false => Ok(()),
                    true => Err(GroupError::GroupSubscribedToTopic),
                })
                .collect());
        }
        let kept: Option<HashSet<String>> = match self.groups.lock().get(group_id) {
            Some(group) if group.state() == GroupState::Dead => {
                return Err(GroupError::GroupIdNotFound)
            }
            None => Some(HashSet::new()),
            Some(group) if group.state() == GroupState::Empty => Some(HashSet::new()),
            Some(group) if group.protocol_type() != "consumer" => {
                return Err(GroupError::NonEmptyGroup)
            }
            Some(group) => group.subscribed_topics(subscribed_topics),
        };
        Ok(partitions
            .iter()
            .map(|partition| match &kept {
                Some(topics) if !topics.contains(&partition.topic) => Ok(()),
                _ => Err(GroupError::GroupSubscribedToTopic),
            })
            .collect())
    }

    /// OffsetDelete: durably removes the committed offsets of `partitions` that
    /// [`Self::check_offset_deletion`] allows; one result per partition, in order. A group
    /// neither live nor holding offsets is GROUP_ID_NOT_FOUND.
    pub async fn delete_offsets(
        &self,
        group_id: &str,
        partitions: &[TopicPartition],
        subscribed_topics: impl Fn(&Bytes) -> Option<Vec<String>>,
    ) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        let live = self
            .groups
            .lock()
            .get(group_id)
            .is_some_and(|group| !group.is_idle())
            || self
                .consumer_groups
                .lock()
                .get(group_id)
                .is_some_and(|group| !group.is_empty());
        if !group_id.is_empty() && !live && !self.offsets.has_offsets(group_id) {
            return Err(GroupError::GroupIdNotFound);
        }
        let results = self.check_offset_deletion(group_id, partitions, subscribed_topics)?;
        let deleted: Vec<TopicPartition> = partitions
            .iter()
            .zip(&results)
            .filter(|(_, result)| result.is_ok())
            .map(|(partition, _)| partition.clone())
            .collect();
        self.offsets.delete(group_id, &deleted).await?;
        Ok(results)
    }

    /// A deleted topic's committed offsets and share-group states go, as Kafka deletes them:
    /// a topic created again under the same name starts with none.
    pub async fn forget_topic(&self, topic: &str) -> Result<(), GroupError> {
        self.share_partitions
            .lock()
            .retain(|(_, partition), _| partition.topic != topic);
        for store in [&self.offsets, &self.share_state] {
            for group_id in store.groups() {
                let partitions: Vec<TopicPartition> = store
                    .group_offsets(&group_id)
                    .into_iter()
                    .map(|(partition, _)| partition)
                    .filter(|partition| partition.topic == topic)
                    .collect();
                store.delete(&group_id, &partitions).await?;
            }
        }
        Ok(())
    }

    /// Starts a tokio task for the rebalance timer the last operation on `group` asked for.
    fn schedule_timer(&self, group: &mut Group) {
        let Some(mut timer) = group.take_rebalance_timer() else {
            return;
        };
        let weak = self.this.clone();
        let group_id = group.group_id().to_string();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(timer.delay_ms)).await;
                let Some(coordinator) = weak.upgrade() else {
                    return;
                };
                if coordinator.closed.load(Ordering::Acquire) {
                    return;
                }
                let next = {
                    let mut groups = coordinator.groups.lock();
                    let Some(group) = groups.get_mut(&group_id) else {
                        return;
                    };
                    group.on_rebalance_timer(timer, Instant::now(), &coordinator.config);
                    group.take_rebalance_timer()
                };
                match next {
                    Some(next) => timer = next,
                    None => return,
                }
            }
        });
    }

    fn start_sweeper(&self) {
        let weak = self.this.clone();
        let interval_ms =
            (self.config.session_timeout_ms_min.max(1) as u64 / 4).clamp(10, SESSION_SWEEP_MS_MAX);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_offset_expiry = Instant::now();
            loop {
                ticker.tick().await;
                let Some(coordinator) = weak.upgrade() else {
                    return;
                };
                if coordinator.closed.load(Ordering::Acquire) {
                    return;
                }
                coordinator.expire_sessions();
                if last_offset_expiry.elapsed() >= OFFSET_EXPIRY_INTERVAL {
                    last_offset_expiry = Instant::now();
                    coordinator.expire_offsets().await;
                    coordinator.compact_offsets().await;
                }
            }
        });
    }

    /// Removes members whose session timed out (which starts a rebalance) and drops group
    /// objects that hold nothing.
    fn expire_sessions(&self) {
        let now = Instant::now();
        let mut groups = self.groups.lock();
        for group in groups.values_mut() {
            group.expire_sessions(now, &self.config);
            self.schedule_timer(group);
        }
        groups.retain(|group_id, group| !group.is_idle() || self.offsets.has_offsets(group_id));
        let mut consumer_groups = self.consumer_groups.lock();
        let mut shrunk = Vec::new();
        for (group_id, group) in consumer_groups.iter_mut() {
            if group.expire_sessions(now) {
                shrunk.push(group_id.clone());
            }
        }
        // A group left with classic members only goes back to the classic protocol.
        for group_id in shrunk {
            self.maybe_downgrade(&mut groups, &mut consumer_groups, &group_id);
        }
        drop(groups);
        consumer_groups
            .retain(|group_id, group| !group.is_empty() || self.offsets.has_offsets(group_id));
        drop(consumer_groups);
        self.expire_share_sessions(now);
    }

    /// The offsets log's housekeeping: drops tombstones from memory and compacts the log when
    /// superseded records dominate it (off the async workers: it reads and writes the log).
    async fn compact_offsets(self: Arc<Self>) {
        let pruned = self.offsets.prune_tombstones() + self.share_state.prune_tombstones();
        if pruned > 0 {
            tracing::debug!(pruned, "dropped deleted offsets from memory");
        }
        let result = tokio::task::spawn_blocking(move || {
            self.offsets.compact_if_needed()?;
            self.share_state.compact_if_needed()
        })
        .await;
        match result {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(%error, "compacting the consumer offsets log failed"),
            Err(error) => tracing::error!(%error, "consumer offsets compaction task failed"),
        }
    }

    /// Deletes offsets of groups without members once older than `offsets_retention_ms`.
    async fn expire_offsets(&self) {
        if self.config.offsets_retention_ms < 0 {
            return;
        }
        let commit_before_ms = now_ms().saturating_sub(self.config.offsets_retention_ms);
        let expired = {
            let groups = self.groups.lock();
            let consumer_groups = self.consumer_groups.lock();
            self.offsets.expired(commit_before_ms, |group_id| {
                groups
                    .get(group_id)
                    .is_none_or(|g| g.state() == GroupState::Empty)
                    && consumer_groups.get(group_id).is_none_or(|g| g.is_empty())
            })
        };
        for (group_id, partitions) in expired {
            tracing::info!(group = %group_id, partitions = partitions.len(), "expiring committed offsets");
            if let Err(error) = self.offsets.delete(&group_id, &partitions).await {
                tracing::warn!(group = %group_id, %error, "expiring committed offsets failed");
            }
        }
    }
}
