//! One group on Kafka's consumer rebalance protocol (KIP-848). The coordinator, not a member,
//! computes the target assignment whenever the group epoch moves (a member joins, leaves or
//! changes its subscription, or a subscribed topic gains partitions). Each member then
//! reconciles towards its target one heartbeat at a time: it first gives up what it must
//! revoke, and only then gets partitions, each once no other member holds it any more. So no
//! partition ever has two owners, and there is no group-wide barrier as in the classic
//! protocol.
//!
//! Synchronous, like [`super::group::Group`]: the coordinator calls it under its lock.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use regex::Regex;
use tokio::time::Instant;

use super::{GroupProtocol, TopicPartition, GROUP_SIZE_MAX};
use crate::{GroupConfig, GroupError};

/// The server-side assignors this coordinator runs (`group.consumer.assignors`); the first is
/// the default, as in Kafka.
pub const ASSIGNOR_UNIFORM: &str = "uniform";
pub const ASSIGNOR_RANGE: &str = "range";
/// The member epoch of a heartbeat that leaves the group.
pub const LEAVE_GROUP_MEMBER_EPOCH: i32 = -1;
/// The member epoch of a static member's heartbeat that leaves to restart: its assignment is
/// kept for its instance id until its session times out.
pub const LEAVE_GROUP_STATIC_MEMBER_EPOCH: i32 = -2;

/// Kafka's consumer group states, with the names ConsumerGroupDescribe and ListGroups use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerGroupState {
    Empty,
    /// The group epoch moved and the target assignment is not computed yet.
    Assigning,
    /// Some member has not reached its target assignment yet.
    Reconciling,
    Stable,
    Dead,
}

impl ConsumerGroupState {
    pub fn name(self) -> &'static str {
        match self {
            ConsumerGroupState::Empty => "Empty",
            ConsumerGroupState::Assigning => "Assigning",
            ConsumerGroupState::Reconciling => "Reconciling",
            ConsumerGroupState::Stable => "Stable",
            ConsumerGroupState::Dead => "Dead",
        }
    }
}

/// A ConsumerGroupHeartbeat, protocol-neutral: `None` fields are "unchanged since the last
/// heartbeat", as on the wire.
#[derive(Debug, Clone, Default)]
pub struct ConsumerHeartbeatParams {
    pub group_id: String,
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    /// -1 when unchanged.
    pub rebalance_timeout_ms: i32,
    pub subscribed_topic_names: Option<Vec<String>>,
    pub subscribed_topic_regex: Option<String>,
    pub server_assignor: Option<String>,
    /// The partitions the member owns now; unknown topics already dropped by the caller.
    pub owned_partitions: Option<Vec<TopicPartition>>,
    pub client_id: String,
    pub client_host: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerHeartbeatResult {
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: i32,
    /// The member's whole assignment when it changed (or on joining); `None` when unchanged.
    pub assignment: Option<Vec<TopicPartition>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerGroupDescription {
    pub group_id: String,
    pub state: ConsumerGroupState,
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    pub assignor_name: String,
    pub members: Vec<ConsumerMemberDescription>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerMemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub member_epoch: i32,
    pub client_id: String,
    pub client_host: String,
    pub subscribed_topic_names: Vec<String>,
    pub subscribed_topic_regex: Option<String>,
    pub assignment: Vec<TopicPartition>,
    pub target_assignment: Vec<TopicPartition>,
    /// On the classic protocol (the group moved to the consumer protocol with it).
    pub is_classic: bool,
}

/// Where a member is on its way to its target assignment (Kafka's `MemberState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MemberState {
    Stable,
    /// It must first give up `pending_revocation`; its epoch stays until it has.
    UnrevokedPartitions,
    /// It has the target epoch, but some target partitions are still held by other members.
    UnreleasedPartitions,
}

/// What a member on the classic protocol (JoinGroup, SyncGroup, Heartbeat) keeps beside its
/// consumer-group state: the group moved to the consumer protocol while it was a member, or
/// it joined a group already there (KIP-848's online migration).
#[derive(Debug, Clone)]
pub(super) struct ClassicMembership {
    pub session_timeout_ms: i32,
    /// As its last JoinGroup sent them; the first is the one it is answered with.
    pub protocols: Vec<GroupProtocol>,
    /// Told to join again (or answered a JoinGroup), it must join (or sync) by then, or it
    /// is removed: Kafka's join and sync timeouts of a classic member, its rebalance timeout.
    pub step_deadline: Option<Instant>,
}

/// A classic member as the coordinator hands it over, with its subscription decoded (see
/// [`super::ConsumerProtocolCodec`]).
#[derive(Debug, Clone)]
pub(super) struct ClassicMemberState {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub classic: ClassicMembership,
    pub subscribed_topics: Vec<String>,
    /// Its current assignment (a group it moves from), what it says it owns (a JoinGroup),
    /// or its target assignment (a group it moves back to).
    pub partitions: Vec<TopicPartition>,
}

struct Member {
    instance_id: Option<String>,
    rack_id: Option<String>,
    client_id: String,
    client_host: String,
    member_epoch: i32,
    previous_member_epoch: i32,
    state: MemberState,
    rebalance_timeout_ms: i32,
    subscribed_topic_names: Vec<String>,
    /// As the member sent it, and compiled.
    subscribed_topic_regex: Option<(String, Regex)>,
    server_assignor: Option<String>,
    assigned: BTreeSet<TopicPartition>,
    pending_revocation: BTreeSet<TopicPartition>,
    session_deadline: Instant,
    /// While partitions wait for revocation: past it the member is removed (fenced).
    revocation_deadline: Option<Instant>,
    /// Set for a member on the classic protocol.
    classic: Option<ClassicMembership>,
}

impl Member {
    /// A member that holds nothing yet, at `member_epoch`; the callers set what they know.
    fn new(
        instance_id: Option<String>,
        member_epoch: i32,
        previous_member_epoch: i32,
        rebalance_timeout_ms: i32,
        session_deadline: Instant,
    ) -> Member {
        Member {
            instance_id,
            rack_id: None,
            client_id: String::new(),
            client_host: String::new(),
            member_epoch,
            previous_member_epoch,
            state: MemberState::Stable,
            rebalance_timeout_ms,
            subscribed_topic_names: Vec::new(),
            subscribed_topic_regex: None,
            server_assignor: None,
            assigned: BTreeSet::new(),
            pending_revocation: BTreeSet::new(),
            session_deadline,
            revocation_deadline: None,
            classic: None,
        }
    }

    fn subscribes_to(&self, topic: &str) -> bool {
        self.subscribed_topic_names.iter().any(|t| t == topic)
            || self
                .subscribed_topic_regex
                .as_ref()
                .is_some_and(|(_, regex)| regex.is_match(topic))
    }

    fn left_for_restart(&self) -> bool {
        self.member_epoch == LEAVE_GROUP_STATIC_MEMBER_EPOCH
    }
}

pub(super) struct ConsumerGroup {
    group_id: String,
    group_epoch: i32,
    assignment_epoch: i32,
    members: BTreeMap<String, Member>,
    target: HashMap<String, BTreeSet<TopicPartition>>,
    /// Partition counts of the topics some member subscribes to, as of the last heartbeat: a
    /// change (a new topic matching a regex, more partitions) moves the group epoch.
    subscribed_partitions: BTreeMap<String, i32>,
    assignor: &'static str,
}

/// A regex subscription compiled as Kafka's RE2J matches it: the whole topic name.
pub fn compile_subscription_regex(pattern: &str) -> Result<Regex, GroupError> {
    Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|error| GroupError::InvalidRegularExpression(error.to_string()))
}

impl ConsumerGroup {
    pub(super) fn new(group_id: String) -> ConsumerGroup {
        ConsumerGroup {
            group_id,
            group_epoch: 0,
            assignment_epoch: 0,
            members: BTreeMap::new(),
            target: HashMap::new(),
            subscribed_partitions: BTreeMap::new(),
            assignor: ASSIGNOR_UNIFORM,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub(super) fn state(&self) -> ConsumerGroupState {
        if self.members.is_empty() {
            ConsumerGroupState::Empty
        } else if self.group_epoch > self.assignment_epoch {
            ConsumerGroupState::Assigning
        } else if self.members.values().any(|m| {
            !m.left_for_restart()
                && (m.member_epoch != self.assignment_epoch || m.state != MemberState::Stable)
        }) {
            ConsumerGroupState::Reconciling
        } else {
            ConsumerGroupState::Stable
        }
    }

    /// Topics some member subscribes to (OffsetDelete keeps their offsets).
    pub(super) fn subscribed_topics(&self) -> HashSet<String> {
        self.subscribed_partitions.keys().cloned().collect()
    }

    /// One heartbeat: join, leave, or report and learn the member's assignment. `topics` is
    /// every topic with its partition count; `params` was checked for well-formedness.
    pub(super) fn heartbeat(
        &mut self,
        params: ConsumerHeartbeatParams,
        topics: &BTreeMap<String, i32>,
        now: Instant,
        config: &GroupConfig,
    ) -> Result<ConsumerHeartbeatResult, GroupError> {
        if params.member_epoch < 0 {
            return self.leave(&params.member_id, params.member_epoch);
        }
        let session_deadline = now + Duration::from_millis(config.consumer_session_timeout_ms);
        let regex = match params.subscribed_topic_regex.as_deref() {
            Some("") => Some(None),
            Some(pattern) => Some(Some((
                pattern.to_string(),
                compile_subscription_regex(pattern)?,
            ))),
            None => None,
        };
        let joining = params.member_epoch == 0;
        let mut epoch_moves = false;
        if joining {
            epoch_moves = self.join(&params, session_deadline)?;
        } else {
            let member = self
                .members
                .get(&params.member_id)
                .filter(|m| !m.left_for_restart())
                .ok_or(GroupError::UnknownMemberId)?;
            let owns_no_more_than_assigned = params
                .owned_partitions
                .as_ref()
                .is_some_and(|owned| owned.iter().all(|p| member.assigned.contains(p)));
            // One epoch behind is a member whose last response was lost, unless it claims
            // partitions it no longer has.
            let in_step = params.member_epoch == member.member_epoch
                || (params.member_epoch == member.previous_member_epoch
                    && owns_no_more_than_assigned);
            if !in_step {
                return Err(GroupError::FencedMemberEpoch);
            }
        }
        let Some(member) = self.members.get_mut(&params.member_id) else {
            return Err(GroupError::UnknownMemberId);
        };
        let before = (member.member_epoch, member.assigned.clone());
        if let Some(names) = params.subscribed_topic_names {
            let mut names: Vec<String> = names;
            names.sort();
            names.dedup();
            if names != member.subscribed_topic_names {
                member.subscribed_topic_names = names;
                epoch_moves = true;
            }
        }
        if let Some(regex) = regex {
            let old = member.subscribed_topic_regex.as_ref().map(|(p, _)| p);
            if old != regex.as_ref().map(|(p, _)| p) {
                member.subscribed_topic_regex = regex;
                epoch_moves = true;
            }
        }
        if let Some(assignor) = params.server_assignor {
            if member.server_assignor.as_deref() != Some(assignor.as_str()) {
                member.server_assignor = Some(assignor);
                epoch_moves = true;
            }
        }
        if params.rebalance_timeout_ms >= 0 {
            member.rebalance_timeout_ms = params.rebalance_timeout_ms;
        }
        if params.rack_id.is_some() {
            member.rack_id = params.rack_id;
        }
        member.client_id = params.client_id;
        member.client_host = params.client_host;
        member.session_deadline = session_deadline;

        self.move_epoch_if(epoch_moves, topics);
        let owned: Option<BTreeSet<TopicPartition>> = if joining {
            Some(BTreeSet::new())
        } else {
            params
                .owned_partitions
                .map(|owned| owned.into_iter().collect())
        };
        self.reconcile(&params.member_id, owned.as_ref(), now);
        let member = self
            .members
            .get(&params.member_id)
            .ok_or(GroupError::UnknownMemberId)?;
        let changed = before != (member.member_epoch, member.assigned.clone());
        let out_of_step = owned
            .as_ref()
            .is_some_and(|owned| *owned != member.assigned);
        Ok(ConsumerHeartbeatResult {
            member_id: params.member_id,
            member_epoch: member.member_epoch,
            heartbeat_interval_ms: config.consumer_heartbeat_interval_ms as i32,
            assignment: (joining || changed || out_of_step)
                .then(|| member.assigned.iter().cloned().collect()),
        })
    }

    /// A heartbeat with member epoch 0: a new member, a static member back from a restart, or
    /// a member rejoining after it was fenced. Returns whether the group epoch must move.
    fn join(
        &mut self,
        params: &ConsumerHeartbeatParams,
        session_deadline: Instant,
    ) -> Result<bool, GroupError> {
        if let Some(instance_id) = &params.instance_id {
            let holder = self
                .members
                .iter()
                .find(|(id, m)| {
                    m.instance_id.as_deref() == Some(instance_id.as_str())
                        && **id != params.member_id
                })
                .map(|(id, m)| (id.clone(), m.left_for_restart(), m.classic.is_some()));
            match holder {
                // The instance moved to the consumer protocol: its classic incarnation goes.
                Some((old_id, false, true)) => self.remove_member(&old_id),
                Some((_, false, false)) => return Err(GroupError::UnreleasedInstanceId),
                Some((old_id, true, _)) => {
                    // The restarted instance takes its old place: same assignment, same
                    // epoch, no rebalance.
                    if let Some(mut member) = self.members.remove(&old_id) {
                        member.member_epoch = member.previous_member_epoch;
                        member.session_deadline = session_deadline;
                        self.members.insert(params.member_id.clone(), member);
                    }
                    if let Some(target) = self.target.remove(&old_id) {
                        self.target.insert(params.member_id.clone(), target);
                    }
                    return Ok(false);
                }
                None => {}
            }
        }
        if let Some(member) = self.members.get_mut(&params.member_id) {
            // Rejoining with the id it had (after FENCED_MEMBER_EPOCH, or a retried join):
            // it owns nothing now, and gets its assignment again.
            if member.left_for_restart() {
                member.member_epoch = member.previous_member_epoch;
            }
            member.session_deadline = session_deadline;
            return Ok(false);
        }
        if self.members.len() >= GROUP_SIZE_MAX {
            return Err(GroupError::GroupMaxSizeReached);
        }
        self.members.insert(
            params.member_id.clone(),
            Member::new(
                params.instance_id.clone(),
                0,
                -1,
                params.rebalance_timeout_ms.max(0),
                session_deadline,
            ),
        );
        Ok(true)
    }

    fn leave(
        &mut self,
        member_id: &str,
        member_epoch: i32,
    ) -> Result<ConsumerHeartbeatResult, GroupError> {
        let member = self
            .members
            .get_mut(member_id)
            .ok_or(GroupError::UnknownMemberId)?;
        if member_epoch == LEAVE_GROUP_STATIC_MEMBER_EPOCH && member.instance_id.is_some() {
            if !member.left_for_restart() {
                member.previous_member_epoch = member.member_epoch;
                member.member_epoch = LEAVE_GROUP_STATIC_MEMBER_EPOCH;
            }
        } else {
            self.remove_member(member_id);
        }
        Ok(ConsumerHeartbeatResult {
            member_id: member_id.to_string(),
            member_epoch,
            heartbeat_interval_ms: 0,
            assignment: None,
        })
    }

    fn remove_member(&mut self, member_id: &str) {
        if self.members.remove(member_id).is_some() {
            self.target.remove(member_id);
            self.group_epoch += 1;
            self.compute_target_assignment();
        }
    }

    /// Removes members whose session or revocation time ran out; returns whether any was.
    pub(super) fn expire_sessions(&mut self, now: Instant) -> bool {
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| {
                m.session_deadline <= now
                    || m.revocation_deadline.is_some_and(|d| d <= now)
                    || m.classic
                        .as_ref()
                        .and_then(|c| c.step_deadline)
                        .is_some_and(|d| d <= now)
            })
            .map(|(id, _)| id.clone())
            .collect();
        let any = !expired.is_empty();
        for member_id in expired {
            tracing::info!(group = %self.group_id, member = %member_id,
                "consumer group member expired; its partitions are reassigned");
            self.remove_member(&member_id);
        }
        any
    }

    /// OffsetCommit and TxnOffsetCommit: a member commits with its current epoch; with no
    /// members, anyone may (an admin tool: negative epoch).
    pub(super) fn validate_offset_commit(
        &self,
        member_id: &str,
        member_epoch: i32,
    ) -> Result<(), GroupError> {
        if member_epoch < 0 && self.members.is_empty() {
            return Ok(());
        }
        let member = self
            .members
            .get(member_id)
            .ok_or(GroupError::UnknownMemberId)?;
        if member_epoch != member.member_epoch {
            // A classic member commits with its generation, as it would in a classic group.
            return Err(if member.classic.is_some() {
                GroupError::IllegalGeneration
            } else {
                GroupError::StaleMemberEpoch
            });
        }
        Ok(())
    }

    /// OffsetFetch v9 from a member: it must be in step, or it would restart from offsets
    /// another member is still moving.
    pub(super) fn validate_offset_fetch(
        &self,
        member_id: &str,
        member_epoch: i32,
    ) -> Result<(), GroupError> {
        if member_epoch < 0 && member_id.is_empty() {
            return Ok(());
        }
        self.validate_offset_commit(member_id, member_epoch)
    }

    pub(super) fn describe(&self) -> ConsumerGroupDescription {
        let sorted = |set: Option<&BTreeSet<TopicPartition>>| -> Vec<TopicPartition> {
            set.map(|s| s.iter().cloned().collect()).unwrap_or_default()
        };
        ConsumerGroupDescription {
            group_id: self.group_id.clone(),
            state: self.state(),
            group_epoch: self.group_epoch,
            assignment_epoch: self.assignment_epoch,
            assignor_name: self.assignor.to_string(),
            members: self
                .members
                .iter()
                .map(|(member_id, m)| ConsumerMemberDescription {
                    member_id: member_id.clone(),
                    instance_id: m.instance_id.clone(),
                    rack_id: m.rack_id.clone(),
                    member_epoch: m.member_epoch,
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    subscribed_topic_names: m.subscribed_topic_names.clone(),
                    subscribed_topic_regex: m
                        .subscribed_topic_regex
                        .as_ref()
                        .map(|(pattern, _)| pattern.clone()),
                    assignment: sorted(Some(&m.assigned)),
                    target_assignment: sorted(self.target.get(member_id)),
                    is_classic: m.classic.is_some(),
                })
                .collect(),
        }
    }

    /// A classic group's members moved to the consumer protocol (KIP-848's upgrade): the
    /// group epoch is the classic generation, and every member is in step with it, holding
    /// what it was assigned.
    pub(super) fn from_classic(
        group_id: String,
        generation_id: i32,
        members: Vec<ClassicMemberState>,
        topics: &BTreeMap<String, i32>,
        now: Instant,
    ) -> ConsumerGroup {
        let mut group = ConsumerGroup::new(group_id);
        group.group_epoch = generation_id;
        group.assignment_epoch = generation_id;
        for state in members {
            let mut subscribed = state.subscribed_topics;
            subscribed.sort();
            subscribed.dedup();
            let assigned: BTreeSet<TopicPartition> = state.partitions.into_iter().collect();
            let session_deadline =
                now + Duration::from_millis(state.classic.session_timeout_ms.max(0) as u64);
            group
                .target
                .insert(state.member_id.clone(), assigned.clone());
            group.members.insert(
                state.member_id,
                Member {
                    client_id: state.client_id,
                    client_host: state.client_host,
                    subscribed_topic_names: subscribed,
                    assigned,
                    classic: Some(state.classic),
                    ..Member::new(
                        state.instance_id,
                        generation_id,
                        generation_id,
                        state.rebalance_timeout_ms,
                        session_deadline,
                    )
                },
            );
        }
        group.subscribed_partitions = group.subscribed_partition_counts(topics);
        group
    }

    /// Whether every member is on the classic protocol (then the group moves back to it).
    pub(super) fn all_classic(&self) -> bool {
        self.members.values().all(|m| m.classic.is_some())
    }

    /// The group's classic members with their target assignments, for the move back to the
    /// classic protocol.
    pub(super) fn export_classic(&self) -> Vec<ClassicMemberState> {
        self.members
            .iter()
            .filter_map(|(member_id, m)| {
                Some(ClassicMemberState {
                    member_id: member_id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    classic: m.classic.clone()?,
                    subscribed_topics: m.subscribed_topic_names.clone(),
                    partitions: self
                        .target
                        .get(member_id)
                        .map(|t| t.iter().cloned().collect())
                        .unwrap_or_default(),
                })
            })
            .collect()
    }

    pub(super) fn group_epoch(&self) -> i32 {
        self.group_epoch
    }

    /// Whether a classic member asking with `protocols` shares a protocol name with every
    /// classic member already here (Kafka's check before a classic member joins).
    pub(super) fn supports_classic_protocols(&self, protocols: &[GroupProtocol]) -> bool {
        self.members
            .values()
            .filter_map(|m| m.classic.as_ref())
            .all(|classic| {
                protocols
                    .iter()
                    .any(|p| classic.protocols.iter().any(|q| q.name == p.name))
            })
    }

    /// JoinGroup from a member on the classic protocol. The coordinator, not a leader,
    /// assigns: the member's partitions move towards its target as a consumer-protocol
    /// member's do, with what it says it owns (its subscription's owned partitions; none
    /// from an eager client, which gave everything up before joining). Answered at once with
    /// the member's epoch as the generation.
    pub(super) fn classic_join(
        &mut self,
        state: ClassicMemberState,
        topics: &BTreeMap<String, i32>,
        now: Instant,
    ) -> Result<i32, GroupError> {
        let member_id = state.member_id.clone();
        let session_deadline =
            now + Duration::from_millis(state.classic.session_timeout_ms.max(0) as u64);
        let mut subscribed = state.subscribed_topics;
        subscribed.sort();
        subscribed.dedup();
        let mut epoch_moves = false;
        match self.members.get_mut(&member_id) {
            Some(member) => {
                if member.subscribed_topic_names != subscribed {
                    member.subscribed_topic_names = subscribed;
                    epoch_moves = true;
                }
                member.rebalance_timeout_ms = state.rebalance_timeout_ms;
                member.client_id = state.client_id;
                member.client_host = state.client_host;
                member.session_deadline = session_deadline;
                member.classic = Some(state.classic);
            }
            None => {
                if self.members.len() >= GROUP_SIZE_MAX {
                    return Err(GroupError::GroupMaxSizeReached);
                }
                self.members.insert(
                    member_id.clone(),
                    Member {
                        client_id: state.client_id,
                        client_host: state.client_host,
                        subscribed_topic_names: subscribed,
                        classic: Some(state.classic),
                        ..Member::new(
                            state.instance_id,
                            0,
                            -1,
                            state.rebalance_timeout_ms,
                            session_deadline,
                        )
                    },
                );
                epoch_moves = true;
            }
        }
        self.move_epoch_if(epoch_moves, topics);
        // It owns at most what it was given.
        let owned: BTreeSet<TopicPartition> = match self.members.get(&member_id) {
            Some(member) => state
                .partitions
                .into_iter()
                .filter(|p| member.assigned.contains(p) || member.pending_revocation.contains(p))
                .collect(),
            None => BTreeSet::new(),
        };
        let target = self.target.get(&member_id).cloned().unwrap_or_default();
        if let Some(member) = self.members.get_mut(&member_id) {
            // What it gave up before joining is no longer its; a member in step takes it
            // back below (it is still its target).
            member.assigned.retain(|p| owned.contains(p));
            if member.state == MemberState::Stable && !target.is_subset(&member.assigned) {
                member.state = MemberState::UnreleasedPartitions;
            }
        }
        self.reconcile(&member_id, Some(&owned), now);
        let member = self
            .members
            .get_mut(&member_id)
            .ok_or(GroupError::UnknownMemberId)?;
        // Its SyncGroup is due within its rebalance timeout.
        let deadline = now + Duration::from_millis(member.rebalance_timeout_ms.max(0) as u64);
        if let Some(classic) = member.classic.as_mut() {
            classic.step_deadline = Some(deadline);
        }
        Ok(member.member_epoch)
    }

    /// A classic member answered REBALANCE_IN_PROGRESS must join again within its rebalance
    /// timeout (counted from the first such answer).
    fn expect_rejoin(&mut self, member_id: &str, now: Instant) {
        if let Some(member) = self.members.get_mut(member_id) {
            let deadline = now + Duration::from_millis(member.rebalance_timeout_ms.max(0) as u64);
            if let Some(classic) = member.classic.as_mut() {
                classic.step_deadline.get_or_insert(deadline);
            }
        }
    }

    /// The classic member `member_id`, checked as SyncGroup and Heartbeat check it.
    fn classic_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation_id: i32,
    ) -> Result<&Member, GroupError> {
        let member = self
            .members
            .get(member_id)
            .filter(|m| m.classic.is_some())
            .ok_or(GroupError::UnknownMemberId)?;
        if instance_id.is_some() && member.instance_id.as_deref() != instance_id {
            return Err(GroupError::FencedInstanceId);
        }
        if generation_id != member.member_epoch {
            return Err(GroupError::IllegalGeneration);
        }
        Ok(member)
    }

    /// SyncGroup from a classic member: its assignment (what it holds now, without
    /// partitions still to be given up by others) and the protocol metadata it joined with,
    /// whose version the assignment is encoded at. REBALANCE_IN_PROGRESS when the group
    /// moved on since its JoinGroup.
    pub(super) fn classic_sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation_id: i32,
        now: Instant,
    ) -> Result<(Vec<TopicPartition>, ClassicMembership), GroupError> {
        let member = self.classic_member(member_id, instance_id, generation_id)?;
        if self.group_epoch > member.member_epoch
            && member.state != MemberState::UnrevokedPartitions
        {
            self.expect_rejoin(member_id, now);
            return Err(GroupError::RebalanceInProgress);
        }
        let assigned = member.assigned.iter().cloned().collect();
        let member = self
            .members
            .get_mut(member_id)
            .ok_or(GroupError::UnknownMemberId)?;
        let classic = member.classic.as_mut().ok_or(GroupError::UnknownMemberId)?;
        classic.step_deadline = None;
        Ok((assigned, classic.clone()))
    }

    /// Heartbeat from a classic member: keeps its session; REBALANCE_IN_PROGRESS tells it to
    /// join again when its assignment must change (the group epoch moved, it must give up
    /// partitions, or partitions it waits for are free now).
    pub(super) fn classic_heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation_id: i32,
        now: Instant,
    ) -> Result<(), GroupError> {
        let member = self.classic_member(member_id, instance_id, generation_id)?;
        let session_timeout_ms = member
            .classic
            .as_ref()
            .map_or(0, |c| c.session_timeout_ms.max(0));
        let rejoin = member.member_epoch < self.group_epoch
            || member.state == MemberState::UnrevokedPartitions
            || (member.state == MemberState::UnreleasedPartitions
                && self.has_free_target_partitions(member_id));
        if let Some(member) = self.members.get_mut(member_id) {
            member.session_deadline = now + Duration::from_millis(session_timeout_ms as u64);
        }
        if rejoin {
            self.expect_rejoin(member_id, now);
            Err(GroupError::RebalanceInProgress)
        } else {
            Ok(())
        }
    }

    /// Whether a partition of `member_id`'s target that it does not hold is held by no one.
    fn has_free_target_partitions(&self, member_id: &str) -> bool {
        let (Some(target), Some(member)) =
            (self.target.get(member_id), self.members.get(member_id))
        else {
            return false;
        };
        target.difference(&member.assigned).any(|partition| {
            !self.members.iter().any(|(id, m)| {
                id != member_id
                    && (m.assigned.contains(partition) || m.pending_revocation.contains(partition))
            })
        })
    }

    /// LeaveGroup (from a classic member, or an admin removing any member): the member is
    /// removed and its partitions reassigned.
    pub(super) fn classic_leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<(), GroupError> {
        let member_id = match (instance_id, member_id.is_empty()) {
            (Some(instance_id), true) => self
                .members
                .iter()
                .find(|(_, m)| m.instance_id.as_deref() == Some(instance_id))
                .map(|(id, _)| id.clone())
                .ok_or(GroupError::UnknownMemberId)?,
            _ => {
                let member = self
                    .members
                    .get(member_id)
                    .ok_or(GroupError::UnknownMemberId)?;
                if instance_id.is_some() && member.instance_id.as_deref() != instance_id {
                    return Err(GroupError::FencedInstanceId);
                }
                member_id.to_string()
            }
        };
        self.remove_member(&member_id);
        Ok(())
    }

    /// Moves the group epoch and assigns again when `members_changed`, or when the
    /// subscribed topics' partitions changed since the last look.
    fn move_epoch_if(&mut self, members_changed: bool, topics: &BTreeMap<String, i32>) {
        let subscribed = self.subscribed_partition_counts(topics);
        let topics_changed = subscribed != self.subscribed_partitions;
        if topics_changed {
            self.subscribed_partitions = subscribed;
        }
        if members_changed || topics_changed {
            self.group_epoch += 1;
            self.compute_target_assignment();
        }
    }

    fn subscribed_partition_counts(&self, topics: &BTreeMap<String, i32>) -> BTreeMap<String, i32> {
        topics
            .iter()
            .filter(|(topic, _)| self.members.values().any(|m| m.subscribes_to(topic)))
            .map(|(topic, count)| (topic.clone(), *count))
            .collect()
    }

    /// Runs the assignor over the members' subscriptions; the assignment epoch catches up
    /// with the group epoch.
    fn compute_target_assignment(&mut self) {
        // The first member (by id) that names an assignor picks it; Kafka lets the most
        // popular one win, which is the same for a group of one configuration.
        self.assignor = match self
            .members
            .values()
            .find_map(|m| m.server_assignor.as_deref())
        {
            Some(ASSIGNOR_RANGE) => ASSIGNOR_RANGE,
            _ => ASSIGNOR_UNIFORM,
        };
        let subscriptions: BTreeMap<&str, BTreeSet<&str>> = self
            .members
            .iter()
            .map(|(id, m)| {
                let topics = self
                    .subscribed_partitions
                    .keys()
                    .filter(|t| m.subscribes_to(t))
                    .map(String::as_str)
                    .collect();
                (id.as_str(), topics)
            })
            .collect();
        let target = match self.assignor {
            ASSIGNOR_RANGE => assign_range(&subscriptions, &self.subscribed_partitions),
            _ => assign_uniform(&subscriptions, &self.subscribed_partitions, &self.target),
        };
        self.target = target;
        self.assignment_epoch = self.group_epoch;
    }

    /// Moves one member towards its target: revoke first, then take what is free.
    fn reconcile(
        &mut self,
        member_id: &str,
        owned: Option<&BTreeSet<TopicPartition>>,
        now: Instant,
    ) {
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let assignment_epoch = self.assignment_epoch;
        let Some(member) = self.members.get_mut(member_id) else {
            return;
        };
        if member.state == MemberState::UnrevokedPartitions {
            match owned {
                Some(owned) if owned.is_disjoint(&member.pending_revocation) => {
                    member.pending_revocation.clear();
                    member.revocation_deadline = None;
                }
                // Still holds partitions it must give up (or did not say).
                _ => return,
            }
        }
        if member.member_epoch == assignment_epoch && member.state == MemberState::Stable {
            return;
        }
        let revoked: BTreeSet<TopicPartition> =
            member.assigned.difference(&target).cloned().collect();
        if !revoked.is_empty() {
            member.assigned.retain(|p| target.contains(p));
            member.pending_revocation = revoked;
            member.state = MemberState::UnrevokedPartitions;
            member.revocation_deadline =
                Some(now + Duration::from_millis(member.rebalance_timeout_ms.max(0) as u64));
            return;
        }
        // Only a member that may take partitions needs to know who holds what: a steady
        // member's heartbeat does not scan the group.
        let held_by_others: HashSet<&TopicPartition> = self
            .members
            .iter()
            .filter(|(id, _)| id.as_str() != member_id)
            .flat_map(|(_, m)| m.assigned.iter().chain(&m.pending_revocation))
            .collect();
        let Some(member) = self.members.get(member_id) else {
            return;
        };
        let (free, unreleased): (Vec<TopicPartition>, Vec<TopicPartition>) = target
            .difference(&member.assigned)
            .cloned()
            .partition(|partition| !held_by_others.contains(partition));
        let Some(member) = self.members.get_mut(member_id) else {
            return;
        };
        member.assigned.extend(free);
        if member.member_epoch != assignment_epoch {
            member.previous_member_epoch = member.member_epoch;
            member.member_epoch = assignment_epoch;
        }
        member.state = if !unreleased.is_empty() {
            MemberState::UnreleasedPartitions
        } else {
            MemberState::Stable
        };
    }
}

/// Every partition of `topics`, in order.
fn partitions_of<'a>(
    topics: impl Iterator<Item = &'a str>,
    counts: &BTreeMap<String, i32>,
) -> Vec<TopicPartition> {
    topics
        .flat_map(|topic| {
            let count = counts.get(topic).copied().unwrap_or(0);
            (0..count).map(move |partition| TopicPartition {
                topic: topic.to_string(),
                partition,
            })
        })
        .collect()
}

/// Kafka's uniform assignor in spirit: every partition of a subscribed topic goes to one of
/// its subscribers, the counts differ by at most one wherever subscriptions allow, and a
/// partition stays with its previous owner unless balance requires a move (so a rebalance
/// revokes as little as possible).
fn assign_uniform(
    subscriptions: &BTreeMap<&str, BTreeSet<&str>>,
    counts: &BTreeMap<String, i32>,
    previous: &HashMap<String, BTreeSet<TopicPartition>>,
) -> HashMap<String, BTreeSet<TopicPartition>> {
    let mut target: BTreeMap<&str, BTreeSet<TopicPartition>> = subscriptions
        .keys()
        .map(|member| (*member, BTreeSet::new()))
        .collect();
    let mut owner: HashMap<TopicPartition, &str> = HashMap::new();
    for (member, topics) in subscriptions {
        for partition in previous.get(*member).into_iter().flatten() {
            let exists = counts
                .get(&partition.topic)
                .is_some_and(|count| partition.partition < *count);
            if exists && topics.contains(partition.topic.as_str()) && !owner.contains_key(partition)
            {
                owner.insert(partition.clone(), member);
                target.entry(member).or_default().insert(partition.clone());
            }
        }
    }
    let all_topics: BTreeSet<&str> = subscriptions.values().flatten().copied().collect();
    for partition in partitions_of(all_topics.into_iter(), counts) {
        if owner.contains_key(&partition) {
            continue;
        }
        let least_loaded = subscriptions
            .iter()
            .filter(|(_, topics)| topics.contains(partition.topic.as_str()))
            .map(|(member, _)| *member)
            .min_by_key(|member| (target.get(member).map_or(0, BTreeSet::len), *member));
        if let Some(member) = least_loaded {
            owner.insert(partition.clone(), member);
            target.entry(member).or_default().insert(partition);
        }
    }
    // Balance: move a partition from a member to a fellow subscriber holding at least two
    // fewer. Each move lowers the sum of squared counts, so this ends.
    loop {
        let mut moved = None;
        'search: for (from, partitions) in &target {
            for partition in partitions {
                let receiver = subscriptions
                    .iter()
                    .filter(|(member, topics)| {
                        **member != *from
                            && topics.contains(partition.topic.as_str())
                            && target.get(*member).map_or(0, BTreeSet::len) + 1 < partitions.len()
                    })
                    .map(|(member, _)| *member)
                    .min_by_key(|member| (target.get(member).map_or(0, BTreeSet::len), *member));
                if let Some(to) = receiver {
                    moved = Some((*from, to, partition.clone()));
                    break 'search;
                }
            }
        }
        let Some((from, to, partition)) = moved else {
            break;
        };
        if let Some(partitions) = target.get_mut(from) {
            partitions.remove(&partition);
        }
        target.entry(to).or_default().insert(partition);
    }
    target
        .into_iter()
        .map(|(member, partitions)| (member.to_string(), partitions))
        .collect()
}

/// Kafka's range assignor: each topic's partitions in contiguous ranges over its subscribers
/// sorted by member id, the first ones taking one more when they do not divide evenly.
fn assign_range(
    subscriptions: &BTreeMap<&str, BTreeSet<&str>>,
    counts: &BTreeMap<String, i32>,
) -> HashMap<String, BTreeSet<TopicPartition>> {
    let mut target: HashMap<String, BTreeSet<TopicPartition>> = subscriptions
        .keys()
        .map(|member| (member.to_string(), BTreeSet::new()))
        .collect();
    for (topic, count) in counts {
        let subscribers: Vec<&str> = subscriptions
            .iter()
            .filter(|(_, topics)| topics.contains(topic.as_str()))
            .map(|(member, _)| *member)
            .collect();
        if subscribers.is_empty() {
            continue;
        }
        let per_member = *count as usize / subscribers.len();
        let extra = *count as usize % subscribers.len();
        let mut next = 0;
        for (index, member) in subscribers.iter().enumerate() {
            let take = per_member + usize::from(index < extra);
            let partitions = target.entry(member.to_string()).or_default();
            for partition in next..next + take {
                partitions.insert(TopicPartition {
                    topic: topic.clone(),
                    partition: partition as i32,
                });
            }
            next += take;
        }
    }
    target
}

#[cfg(test)]
pub(super) mod tests_support {
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    use super::TopicPartition;

    /// The uniform assignor on plain inputs: (member, subscribed topics) pairs.
    pub fn assign_uniform_for_test(
        subscriptions: &[(&str, &[&str])],
        counts: &BTreeMap<String, i32>,
        previous: &HashMap<String, BTreeSet<TopicPartition>>,
    ) -> HashMap<String, BTreeSet<TopicPartition>> {
        let subscriptions = subscriptions
            .iter()
            .map(|(member, topics)| (*member, topics.iter().copied().collect()))
            .collect();
        super::assign_uniform(&subscriptions, counts, previous)
    }
}
