//! One consumer group's membership state machine (Kafka's `GroupMetadata` and the rebalance
//! rules of its `GroupCoordinator`). Synchronous: the coordinator calls it under its lock and
//! turns [`Group::take_rebalance_timer`] into a tokio task. Waiting JoinGroup/SyncGroup requests
//! are oneshot senders completed here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{
    GroupDescription, GroupProtocol, JoinGroupError, JoinGroupParams, JoinGroupResult,
    JoinedMember, MemberDescription, MemberIdentity, SyncGroupParams, SyncGroupResult,
    GROUP_SIZE_MAX,
};
use crate::{GroupConfig, GroupError};

/// Kafka's group states, with the names DescribeGroups and ListGroups report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupState {
    /// No members; may still hold committed offsets.
    Empty,
    /// Waiting for every member to (re)join before the next generation.
    PreparingRebalance,
    /// The generation is formed; waiting for the leader's assignments in SyncGroup.
    CompletingRebalance,
    Stable,
    /// Deleted or unknown.
    Dead,
    /// A consumer-protocol group (KIP-848) whose target assignment is being computed.
    Assigning,
    /// A consumer-protocol group whose members are moving to their target assignments.
    Reconciling,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
            GroupState::Assigning => "Assigning",
            GroupState::Reconciling => "Reconciling",
        }
    }
}

type JoinSender = oneshot::Sender<Result<JoinGroupResult, GroupError>>;
type SyncSender = oneshot::Sender<Result<SyncGroupResult, GroupError>>;

/// What a JoinGroup gets: an answer now, or a receiver completed when the rebalance completes.
pub(super) enum JoinStep {
    Done(Result<JoinGroupResult, JoinGroupError>),
    Wait(
        String,
        oneshot::Receiver<Result<JoinGroupResult, GroupError>>,
    ),
}

pub(super) enum SyncStep {
    Done(Result<SyncGroupResult, GroupError>),
    Wait(oneshot::Receiver<Result<SyncGroupResult, GroupError>>),
}

/// A timer the coordinator must start: when it fires, [`Group::on_rebalance_timer`] runs if
/// the group is still in the same rebalance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RebalanceTimer {
    pub rebalance_id: u64,
    pub delay_ms: u64,
    /// For the initial delayed join: how much longer it may still be extended.
    pub remaining_ms: u64,
}

/// A classic member as it moves between the classic and the consumer protocol, in the
/// classic protocol's terms (its metadata and assignment as the client encoded them).
#[derive(Debug, Clone)]
pub(super) struct ClassicMemberHandover {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocols: Vec<GroupProtocol>,
    /// The metadata of the group's selected protocol.
    pub subscription: Bytes,
    pub assignment: Bytes,
}

pub(super) struct MemberMetadata {
    member_id: String,
    group_instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    protocols: Vec<GroupProtocol>,
    assignment: Bytes,
    awaiting_join: Option<JoinSender>,
    awaiting_sync: Option<SyncSender>,
    session_deadline: Instant,
}

impl MemberMetadata {
    fn metadata_for(&self, protocol_name: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|p| p.name == protocol_name)
            .map(|p| p.metadata.clone())
            .unwrap_or_default()
    }

    fn touch_session(&mut self, now: Instant) {
        self.session_deadline = now + Duration::from_millis(self.session_timeout_ms.max(0) as u64);
    }

    fn same_protocols(&self, protocols: &[GroupProtocol]) -> bool {
        self.protocols == protocols
    }
}

pub(super) struct Group {
    group_id: String,
    state: GroupState,
    generation_id: i32,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    leader_id: Option<String>,
    /// Ordered so the leader's member list and leader succession are deterministic.
    members: BTreeMap<String, MemberMetadata>,
    /// Member ids handed out with MEMBER_ID_REQUIRED that have not joined yet, with the
    /// deadline after which they are forgotten.
    pending_members: HashMap<String, Instant>,
    /// group.instance.id -> member id of its current incarnation (static membership).
    static_members: HashMap<String, String>,
    /// Bumped by every rebalance so stale timers do nothing.
    rebalance_id: u64,
    /// The current rebalance is the first of an empty group, held open for
    /// `initial_rebalance_delay_ms` so members starting together land in one generation.
    initial_delay: bool,
    new_member_added: bool,
    rebalance_timer: Option<RebalanceTimer>,
}

impl Group {
    pub(super) fn new(group_id: String) -> Group {
        Group {
            group_id,
            state: GroupState::Empty,
            generation_id: 0,
            protocol_type: None,
            protocol_name: None,
            leader_id: None,
            members: BTreeMap::new(),
            pending_members: HashMap::new(),
            static_members: HashMap::new(),
            rebalance_id: 0,
            initial_delay: false,
            new_member_added: false,
            rebalance_timer: None,
        }
    }

    pub(super) fn group_id(&self) -> &str {
        &self.group_id
    }

    pub(super) fn state(&self) -> GroupState {
        self.state
    }

    pub(super) fn protocol_type(&self) -> &str {
        self.protocol_type.as_deref().unwrap_or("")
    }

    /// No members and nobody about to join: the group object can be dropped.
    pub(super) fn is_idle(&self) -> bool {
        self.state == GroupState::Empty
            && self.members.is_empty()
            && self.pending_members.is_empty()
    }

    pub(super) fn take_rebalance_timer(&mut self) -> Option<RebalanceTimer> {
        self.rebalance_timer.take()
    }

    pub(super) fn join(
        &mut self,
        params: JoinGroupParams,
        now: Instant,
        config: &GroupConfig,
    ) -> JoinStep {
        let fail = |error: GroupError, member_id: &str| {
            JoinStep::Done(Err(JoinGroupError {
                error,
                member_id: member_id.to_string(),
            }))
        };
        if self.state == GroupState::Dead {
            return fail(GroupError::CoordinatorNotAvailable, &params.member_id);
        }
        if !self.supports_protocols(&params.protocol_type, &params.protocols) {
            return fail(GroupError::InconsistentGroupProtocol, &params.member_id);
        }
        if params.member_id.is_empty() {
            return self.join_unknown_member(params, now, config);
        }
        if let Some(instance_id) = &params.group_instance_id {
            if self
                .static_members
                .get(instance_id)
                .is_some_and(|id| *id != params.member_id)
            {
                return fail(GroupError::FencedInstanceId, &params.member_id);
            }
        }
        let Some(member) = self.members.get(&params.member_id) else {
            if self.pending_members.contains_key(&params.member_id) {
                let member_id = params.member_id.clone();
                return self.add_member_and_rebalance(member_id, params, now, config);
            }
            return fail(GroupError::UnknownMemberId, &params.member_id);
        };
        let unchanged = member.same_protocols(&params.protocols);
        let is_leader = self.leader_id.as_deref() == Some(params.member_id.as_str());
        match self.state {
            GroupState::PreparingRebalance => self.update_member_and_rebalance(params, now, config),
            // The member lost the JoinGroup response of this generation: send it again.
            GroupState::CompletingRebalance if unchanged => {
                JoinStep::Done(Ok(self.join_result(&params.member_id)))
            }
            // A follower rejoining with unchanged metadata gets the current generation.
            GroupState::Stable if !is_leader && unchanged => {
                JoinStep::Done(Ok(self.join_result(&params.member_id)))
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.update_member_and_rebalance(params, now, config)
            }
            // (Assigning and Reconciling are the consumer protocol's: never a classic group's.)
            GroupState::Empty
            | GroupState::Dead
            | GroupState::Assigning
            | GroupState::Reconciling => fail(GroupError::UnknownMemberId, &params.member_id),
        }
    }

    fn join_unknown_member(
        &mut self,
        params: JoinGroupParams,
        now: Instant,
        config: &GroupConfig,
    ) -> JoinStep {
        // As Kafka: a static member's id starts with its instance id, a dynamic one's with its
        // client id.
        let prefix = params
            .group_instance_id
            .as_deref()
            .unwrap_or(&params.client_id);
        let new_member_id = format!("{prefix}-{}", uuid::Uuid::new_v4());
        if let Some(instance_id) = params.group_instance_id.clone() {
            if let Some(old_member_id) = self.static_members.get(&instance_id).cloned() {
                if self.state == GroupState::Stable && self.keeps_protocol(&params.protocols) {
                    // KIP-345: a static member back within its session takes its place and
                    // its assignment, without a rebalance.
                    return self.replace_static_member(&old_member_id, new_member_id, params, now);
                }
                // A restarted static member replaces its previous incarnation, which is fenced.
                let was_leader = self.leader_id.as_deref() == Some(old_member_id.as_str());
                self.remove_member(&old_member_id, GroupError::FencedInstanceId);
                if was_leader || self.leader_id.is_none() {
                    self.leader_id = Some(new_member_id.clone());
                }
            } else if self.is_full() {
                return JoinStep::Done(Err(JoinGroupError {
                    error: GroupError::GroupMaxSizeReached,
                    member_id: String::new(),
                }));
            }
            // Static members skip MEMBER_ID_REQUIRED, as in Kafka: the instance id identifies them.
            return self.add_member_and_rebalance(new_member_id, params, now, config);
        }
        if self.is_full() {
            return JoinStep::Done(Err(JoinGroupError {
                error: GroupError::GroupMaxSizeReached,
                member_id: String::new(),
            }));
        }
        if params.require_known_member_id {
            // The client must come back with this id; until then it is only reserved.
            let deadline = now + Duration::from_millis(params.session_timeout_ms.max(0) as u64);
            self.pending_members.insert(new_member_id.clone(), deadline);
            return JoinStep::Done(Err(JoinGroupError {
                error: GroupError::MemberIdRequired,
                member_id: new_member_id,
            }));
        }
        self.add_member_and_rebalance(new_member_id, params, now, config)
    }

    /// Whether a member offering `protocols` leaves the group's selected protocol in place
    /// (Kafka's test before it lets a static member back without a rebalance).
    fn keeps_protocol(&self, protocols: &[GroupProtocol]) -> bool {
        self.protocol_name
            .as_ref()
            .is_some_and(|selected| protocols.iter().any(|p| &p.name == selected))
    }

    /// A static member's new incarnation replaces the old one in a stable group: the old id is
    /// fenced, the new one keeps its assignment and the generation stays.
    fn replace_static_member(
        &mut self,
        old_member_id: &str,
        new_member_id: String,
        params: JoinGroupParams,
        now: Instant,
    ) -> JoinStep {
        let Some(mut member) = self.members.remove(old_member_id) else {
            return JoinStep::Done(Err(JoinGroupError {
                error: GroupError::UnknownMemberId,
                member_id: String::new(),
            }));
        };
        if let Some(sender) = member.awaiting_join.take() {
            let _ = sender.send(Err(GroupError::FencedInstanceId));
        }
        if let Some(sender) = member.awaiting_sync.take() {
            let _ = sender.send(Err(GroupError::FencedInstanceId));
        }
        member.member_id = new_member_id.clone();
        member.protocols = params.protocols;
        member.client_id = params.client_id;
        member.client_host = params.client_host;
        member.session_timeout_ms = params.session_timeout_ms;
        member.rebalance_timeout_ms = params.rebalance_timeout_ms;
        member.touch_session(now);
        let was_leader = self.leader_id.as_deref() == Some(old_member_id);
        if was_leader {
            self.leader_id = Some(new_member_id.clone());
        }
        if let Some(instance_id) = params.group_instance_id {
            self.static_members
                .insert(instance_id, new_member_id.clone());
        }
        self.members.insert(new_member_id.clone(), member);
        let mut result = self.join_result(&new_member_id);
        result.skip_assignment = was_leader;
        JoinStep::Done(Ok(result))
    }

    fn is_full(&self) -> bool {
        self.members.len() + self.pending_members.len() >= GROUP_SIZE_MAX
    }

    fn add_member_and_rebalance(
        &mut self,
        member_id: String,
        params: JoinGroupParams,
        now: Instant,
        config: &GroupConfig,
    ) -> JoinStep {
        let (sender, receiver) = oneshot::channel();
        let mut member = MemberMetadata {
            member_id: member_id.clone(),
            group_instance_id: params.group_instance_id.clone(),
            client_id: params.client_id,
            client_host: params.client_host,
            session_timeout_ms: params.session_timeout_ms,
            rebalance_timeout_ms: params.rebalance_timeout_ms,
            protocols: params.protocols,
            assignment: Bytes::new(),
            awaiting_join: Some(sender),
            awaiting_sync: None,
            session_deadline: now,
        };
        member.touch_session(now);
        if self.members.is_empty() {
            self.protocol_type = Some(params.protocol_type);
        }
        if self.leader_id.is_none() {
            self.leader_id = Some(member_id.clone());
        }
        if let Some(instance_id) = params.group_instance_id {
            self.static_members.insert(instance_id, member_id.clone());
        }
        self.pending_members.remove(&member_id);
        if self.state == GroupState::PreparingRebalance && self.initial_delay {
            self.new_member_added = true;
        }
        self.members.insert(member_id.clone(), member);
        self.maybe_prepare_rebalance(now, config);
        self.try_complete_join(now);
        JoinStep::Wait(member_id, receiver)
    }

    fn update_member_and_rebalance(
        &mut self,
        params: JoinGroupParams,
        now: Instant,
        config: &GroupConfig,
    ) -> JoinStep {
        let (sender, receiver) = oneshot::channel();
        let member_id = params.member_id.clone();
        if let Some(member) = self.members.get_mut(&member_id) {
            member.protocols = params.protocols;
            member.session_timeout_ms = params.session_timeout_ms;
            member.rebalance_timeout_ms = params.rebalance_timeout_ms;
            member.client_id = params.client_id;
            member.client_host = params.client_host;
            // A retried JoinGroup replaces the previous one, whose receiver then sees a rebalance.
            member.awaiting_join = Some(sender);
            member.touch_session(now);
        }
        self.maybe_prepare_rebalance(now, config);
        self.try_complete_join(now);
        JoinStep::Wait(member_id, receiver)
    }

    /// Kafka's `supportsProtocols`: the first member defines the protocol type; later ones
    /// must share it and at least one protocol every member supports.
    fn supports_protocols(&self, protocol_type: &str, protocols: &[GroupProtocol]) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        if self.members.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        self.candidate_protocols()
            .iter()
            .any(|name| protocols.iter().any(|p| &p.name == name))
    }

    /// Protocols every current member supports, in the order of the leader's preference.
    fn candidate_protocols(&self) -> Vec<String> {
        let Some(first) = self.leader().or_else(|| self.members.values().next()) else {
            return Vec::new();
        };
        first
            .protocols
            .iter()
            .map(|p| p.name.clone())
            .filter(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|p| &p.name == name))
            })
            .collect()
    }

    /// Kafka's `selectProtocol`: each member votes for its most preferred candidate; ties go
    /// to the leader's preference order.
    fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidate_protocols();
        let mut votes = vec![0usize; candidates.len()];
        for member in self.members.values() {
            if let Some(choice) = member
                .protocols
                .iter()
                .find_map(|p| candidates.iter().position(|c| *c == p.name))
            {
                votes[choice] += 1;
            }
        }
        let best = votes.iter().copied().max()?;
        candidates
            .into_iter()
            .zip(votes)
            .find(|(_, v)| *v == best)
            .map(|(name, _)| name)
    }

    fn leader(&self) -> Option<&MemberMetadata> {
        self.members.get(self.leader_id.as_deref()?)
    }

    fn maybe_prepare_rebalance(&mut self, now: Instant, config: &GroupConfig) {
        if matches!(
            self.state,
            GroupState::Empty | GroupState::Stable | GroupState::CompletingRebalance
        ) {
            self.prepare_rebalance(now, config);
        }
    }

    fn prepare_rebalance(&mut self, _now: Instant, config: &GroupConfig) {
        if self.state == GroupState::CompletingRebalance {
            // Assignments of the aborted generation are void; members waiting in SyncGroup rejoin.
            for member in self.members.values_mut() {
                member.assignment = Bytes::new();
                if let Some(sender) = member.awaiting_sync.take() {
                    let _ = sender.send(Err(GroupError::RebalanceInProgress));
                }
            }
        }
        let rebalance_timeout_ms = self
            .members
            .values()
            .map(|m| m.rebalance_timeout_ms.max(0) as u64)
            .max()
            .unwrap_or(0);
        self.initial_delay =
            self.state == GroupState::Empty && config.initial_rebalance_delay_ms > 0;
        self.new_member_added = false;
        self.rebalance_id += 1;
        self.state = GroupState::PreparingRebalance;
        self.rebalance_timer = Some(if self.initial_delay {
            RebalanceTimer {
                rebalance_id: self.rebalance_id,
                delay_ms: config.initial_rebalance_delay_ms,
                remaining_ms: rebalance_timeout_ms
                    .saturating_sub(config.initial_rebalance_delay_ms),
            }
        } else {
            RebalanceTimer {
                rebalance_id: self.rebalance_id,
                delay_ms: rebalance_timeout_ms,
                remaining_ms: 0,
            }
        });
    }

    fn all_members_joined(&self) -> bool {
        self.pending_members.is_empty() && self.members.values().all(|m| m.awaiting_join.is_some())
    }

    fn try_complete_join(&mut self, now: Instant) {
        if self.state == GroupState::PreparingRebalance
            && !self.initial_delay
            && self.all_members_joined()
        {
            self.complete_join(now);
        }
    }

    /// A rebalance timer fired. Returns a follow-up timer when the initial delay is extended.
    pub(super) fn on_rebalance_timer(
        &mut self,
        timer: RebalanceTimer,
        now: Instant,
        config: &GroupConfig,
    ) {
        if self.state != GroupState::PreparingRebalance || self.rebalance_id != timer.rebalance_id {
            return;
        }
        if self.initial_delay && self.new_member_added && timer.remaining_ms > 0 {
            // Members are still arriving: wait another delay, up to the rebalance timeout.
            self.new_member_added = false;
            let delay_ms = config.initial_rebalance_delay_ms.min(timer.remaining_ms);
            self.rebalance_timer = Some(RebalanceTimer {
                rebalance_id: timer.rebalance_id,
                delay_ms,
                remaining_ms: timer.remaining_ms - delay_ms,
            });
            return;
        }
        self.complete_join(now);
    }

    /// Forms the next generation from the members that rejoined (Kafka's `onCompleteJoin`).
    fn complete_join(&mut self, now: Instant) {
        // Members that did not rejoin within the rebalance timeout are out.
        let missing: Vec<String> = self
            .members
            .values()
            .filter(|m| m.awaiting_join.is_none())
            .map(|m| m.member_id.clone())
            .collect();
        for member_id in missing {
            tracing::info!(group = %self.group_id, member = %member_id, "member did not rejoin in time");
            self.remove_member(&member_id, GroupError::UnknownMemberId);
        }
        self.initial_delay = false;
        self.new_member_added = false;
        self.rebalance_timer = None;
        self.generation_id = self.generation_id.wrapping_add(1).max(1);
        if self.members.is_empty() {
            self.protocol_name = None;
            self.leader_id = None;
            self.state = GroupState::Empty;
            return;
        }
        if self.leader().is_none() {
            self.leader_id = self.members.keys().next().cloned();
        }
        self.protocol_name = self.select_protocol();
        self.state = GroupState::CompletingRebalance;
        tracing::debug!(group = %self.group_id, generation = self.generation_id, members = self.members.len(), "rebalance completed");
        let member_ids: Vec<String> = self.members.keys().cloned().collect();
        for member_id in member_ids {
            let result = self.join_result(&member_id);
            if let Some(member) = self.members.get_mut(&member_id) {
                member.touch_session(now);
                if let Some(sender) = member.awaiting_join.take() {
                    let _ = sender.send(Ok(result));
                }
            }
        }
    }

    /// The JoinGroup response of the current generation for `member_id`: only the leader gets
    /// the member list (with each member's metadata for the chosen protocol).
    fn join_result(&self, member_id: &str) -> JoinGroupResult {
        let protocol_name = self.protocol_name.clone().unwrap_or_default();
        let leader_id = self.leader_id.clone().unwrap_or_default();
        let members = if leader_id == member_id {
            self.members
                .values()
                .map(|m| JoinedMember {
                    member_id: m.member_id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    metadata: m.metadata_for(&protocol_name),
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinGroupResult {
            generation_id: self.generation_id,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader_id,
            member_id: member_id.to_string(),
            members,
            skip_assignment: false,
        }
    }

    /// Checks that `member_id` is a current member, not fenced by its static instance id.
    fn validate_member(
        &self,
        member_id: &str,
        group_instance_id: Option<&str>,
    ) -> Result<(), GroupError> {
        if let Some(instance_id) = group_instance_id {
            if let Some(current) = self.static_members.get(instance_id) {
                if current != member_id {
                    return Err(GroupError::FencedInstanceId);
                }
            }
        }
        if !self.members.contains_key(member_id) {
            return Err(GroupError::UnknownMemberId);
        }
        Ok(())
    }

    pub(super) fn sync(&mut self, params: SyncGroupParams, now: Instant) -> SyncStep {
        let error = |e| SyncStep::Done(Err(e));
        match self.state {
            GroupState::Dead => return error(GroupError::CoordinatorNotAvailable),
            GroupState::Empty => return error(GroupError::UnknownMemberId),
            _ => {}
        }
        if let Err(e) = self.validate_member(&params.member_id, params.group_instance_id.as_deref())
        {
            return error(e);
        }
        if params.generation_id != self.generation_id {
            return error(GroupError::IllegalGeneration);
        }
        let mismatched = |requested: &Option<String>, actual: &Option<String>| {
            requested
                .as_ref()
                .is_some_and(|r| actual.as_ref() != Some(r))
        };
        if mismatched(&params.protocol_type, &self.protocol_type)
            || mismatched(&params.protocol_name, &self.protocol_name)
        {
            return error(GroupError::InconsistentGroupProtocol);
        }
        match self.state {
            GroupState::PreparingRebalance => error(GroupError::RebalanceInProgress),
            GroupState::CompletingRebalance => {
                let (sender, receiver) = oneshot::channel();
                if let Some(member) = self.members.get_mut(&params.member_id) {
                    member.awaiting_sync = Some(sender);
                    member.touch_session(now);
                }
                if self.leader_id.as_deref() == Some(params.member_id.as_str()) {
                    self.set_assignments_and_propagate(params.assignments);
                }
                SyncStep::Wait(receiver)
            }
            GroupState::Stable => {
                let assignment = self
                    .members
                    .get(&params.member_id)
                    .map(|m| m.assignment.clone())
                    .unwrap_or_default();
                SyncStep::Done(Ok(self.sync_result(assignment)))
            }
            GroupState::Empty
            | GroupState::Dead
            | GroupState::Assigning
            | GroupState::Reconciling => error(GroupError::UnknownMemberId),
        }
    }

    /// Stores the leader's assignments (members it left out get an empty one), answers every
    /// waiting SyncGroup and makes the group Stable.
    fn set_assignments_and_propagate(&mut self, assignments: Vec<(String, Bytes)>) {
        let mut by_member: HashMap<String, Bytes> = assignments.into_iter().collect();
        let result = self.sync_result(Bytes::new());
        for member in self.members.values_mut() {
            member.assignment = by_member.remove(&member.member_id).unwrap_or_default();
            if let Some(sender) = member.awaiting_sync.take() {
                let _ = sender.send(Ok(SyncGroupResult {
                    assignment: member.assignment.clone(),
                    ..result.clone()
                }));
            }
        }
        self.state = GroupState::Stable;
    }

    fn sync_result(&self, assignment: Bytes) -> SyncGroupResult {
        SyncGroupResult {
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            assignment,
        }
    }

    pub(super) fn heartbeat(
        &mut self,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
        now: Instant,
    ) -> Result<(), GroupError> {
        match self.state {
            GroupState::Dead => return Err(GroupError::CoordinatorNotAvailable),
            GroupState::Empty => return Err(GroupError::UnknownMemberId),
            _ => {}
        }
        self.validate_member(member_id, group_instance_id)?;
        if generation_id != self.generation_id {
            return Err(GroupError::IllegalGeneration);
        }
        if let Some(member) = self.members.get_mut(member_id) {
            member.touch_session(now);
        }
        match self.state {
            GroupState::PreparingRebalance => Err(GroupError::RebalanceInProgress),
            _ => Ok(()),
        }
    }

    /// Validates an offset commit by a group member (Kafka's `validateOffsetCommit`).
    /// `generation_id < 0` with no member id is a "simple" commit, allowed only while empty.
    pub(super) fn validate_offset_commit(
        &mut self,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
        now: Instant,
    ) -> Result<(), GroupError> {
        if self.state == GroupState::Dead {
            return Err(GroupError::CoordinatorNotAvailable);
        }
        if generation_id >= 0 || !member_id.is_empty() || group_instance_id.is_some() {
            self.validate_member(member_id, group_instance_id)?;
            if generation_id != self.generation_id {
                return Err(GroupError::IllegalGeneration);
            }
            // The member has the new generation but not its assignment yet.
            if self.state == GroupState::CompletingRebalance {
                return Err(GroupError::RebalanceInProgress);
            }
            if let Some(member) = self.members.get_mut(member_id) {
                member.touch_session(now);
            }
            Ok(())
        } else if self.state != GroupState::Empty {
            // Only members may commit for a group that has members.
            Err(GroupError::UnknownMemberId)
        } else {
            Ok(())
        }
    }

    /// LeaveGroup for each identity (v3+ may identify a static member by instance id only).
    pub(super) fn leave(
        &mut self,
        members: &[MemberIdentity],
        now: Instant,
        config: &GroupConfig,
    ) -> Vec<Result<(), GroupError>> {
        members
            .iter()
            .map(|identity| self.leave_one(identity, now, config))
            .collect()
    }

    fn leave_one(
        &mut self,
        identity: &MemberIdentity,
        now: Instant,
        config: &GroupConfig,
    ) -> Result<(), GroupError> {
        if self.state == GroupState::Dead {
            return Err(GroupError::CoordinatorNotAvailable);
        }
        let member_id = match (&identity.group_instance_id, identity.member_id.is_empty()) {
            (Some(instance_id), true) => self
                .static_members
                .get(instance_id)
                .cloned()
                .ok_or(GroupError::UnknownMemberId)?,
            _ => identity.member_id.clone(),
        };
        if self.pending_members.remove(&member_id).is_some() {
            self.try_complete_join(now);
            return Ok(());
        }
        self.validate_member(&member_id, identity.group_instance_id.as_deref())?;
        tracing::debug!(group = %self.group_id, member = %member_id, "member left");
        self.remove_member_and_update_group(&member_id, now, config);
        Ok(())
    }

    /// Removes members whose session expired (those waiting in JoinGroup or SyncGroup are kept:
    /// the pending request itself shows they are alive) and forgets stale pending member ids.
    pub(super) fn expire_sessions(&mut self, now: Instant, config: &GroupConfig) {
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| {
                m.session_deadline <= now && m.awaiting_join.is_none() && m.awaiting_sync.is_none()
            })
            .map(|m| m.member_id.clone())
            .collect();
        for member_id in expired {
            tracing::info!(group = %self.group_id, member = %member_id, "member session expired");
            self.remove_member_and_update_group(&member_id, now, config);
        }
        let pending_before = self.pending_members.len();
        self.pending_members.retain(|_, deadline| *deadline > now);
        if self.pending_members.len() != pending_before {
            self.try_complete_join(now);
        }
    }

    fn remove_member_and_update_group(
        &mut self,
        member_id: &str,
        now: Instant,
        config: &GroupConfig,
    ) {
        self.remove_member(member_id, GroupError::UnknownMemberId);
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now, config);
                self.try_complete_join(now);
            }
            GroupState::PreparingRebalance => self.try_complete_join(now),
            GroupState::Empty
            | GroupState::Dead
            | GroupState::Assigning
            | GroupState::Reconciling => {}
        }
    }

    /// Drops a member, answering its waiting requests with `error`; picks a new leader if needed.
    fn remove_member(&mut self, member_id: &str, error: GroupError) {
        let Some(mut member) = self.members.remove(member_id) else {
            return;
        };
        if let Some(sender) = member.awaiting_join.take() {
            let _ = sender.send(Err(error.clone()));
        }
        if let Some(sender) = member.awaiting_sync.take() {
            let _ = sender.send(Err(error));
        }
        if let Some(instance_id) = &member.group_instance_id {
            if self.static_members.get(instance_id).map(String::as_str) == Some(member_id) {
                self.static_members.remove(instance_id);
            }
        }
        if self.leader_id.as_deref() == Some(member_id) {
            self.leader_id = self.members.keys().next().cloned();
        }
    }

    /// The members as the move to the consumer protocol takes them: each with the metadata
    /// of the selected protocol (its subscription) and its assignment, and the generation.
    pub(super) fn hand_over(&self) -> (i32, Vec<ClassicMemberHandover>) {
        let protocol_name = self.protocol_name.clone().unwrap_or_default();
        let members = self
            .members
            .values()
            .map(|member| ClassicMemberHandover {
                member_id: member.member_id.clone(),
                instance_id: member.group_instance_id.clone(),
                client_id: member.client_id.clone(),
                client_host: member.client_host.clone(),
                session_timeout_ms: member.session_timeout_ms,
                rebalance_timeout_ms: member.rebalance_timeout_ms,
                protocols: member.protocols.clone(),
                subscription: member.metadata_for(&protocol_name),
                assignment: member.assignment.clone(),
            })
            .collect();
        (self.generation_id, members)
    }

    /// The group moved to the consumer protocol: requests still waiting are answered
    /// REBALANCE_IN_PROGRESS, so the members join again, into the consumer group.
    pub(super) fn close_after_hand_over(&mut self) {
        for member in self.members.values_mut() {
            if let Some(sender) = member.awaiting_join.take() {
                let _ = sender.send(Err(GroupError::RebalanceInProgress));
            }
            if let Some(sender) = member.awaiting_sync.take() {
                let _ = sender.send(Err(GroupError::RebalanceInProgress));
            }
        }
        self.state = GroupState::Dead;
    }

    pub(super) fn member_count(&self) -> usize {
        self.members.len()
    }

    /// A consumer group whose last consumer-protocol member left, back on the classic
    /// protocol: its members keep their assignments at generation `generation_id`, and a
    /// rebalance starts at once, so they join again (their heartbeats are answered
    /// REBALANCE_IN_PROGRESS, or ILLEGAL_GENERATION for a member a generation behind).
    pub(super) fn taken_over(
        group_id: String,
        generation_id: i32,
        members: Vec<ClassicMemberHandover>,
        now: Instant,
        config: &GroupConfig,
    ) -> Group {
        let mut group = Group::new(group_id);
        group.generation_id = generation_id;
        group.protocol_type = Some("consumer".to_string());
        for handed in members {
            if let Some(instance_id) = &handed.instance_id {
                group
                    .static_members
                    .insert(instance_id.clone(), handed.member_id.clone());
            }
            let mut member = MemberMetadata {
                member_id: handed.member_id.clone(),
                group_instance_id: handed.instance_id,
                client_id: handed.client_id,
                client_host: handed.client_host,
                session_timeout_ms: handed.session_timeout_ms,
                rebalance_timeout_ms: handed.rebalance_timeout_ms,
                protocols: handed.protocols,
                assignment: handed.assignment,
                awaiting_join: None,
                awaiting_sync: None,
                session_deadline: now,
            };
            member.touch_session(now);
            group.members.insert(handed.member_id, member);
        }
        group.leader_id = group.members.keys().next().cloned();
        group.protocol_name = group.select_protocol();
        group.state = GroupState::Stable;
        group.prepare_rebalance(now, config);
        group
    }

    /// Marks the group deleted, failing anything still waiting.
    pub(super) fn mark_dead(&mut self) {
        let member_ids: Vec<String> = self.members.keys().cloned().collect();
        for member_id in member_ids {
            self.remove_member(&member_id, GroupError::CoordinatorNotAvailable);
        }
        self.state = GroupState::Dead;
    }

    /// The topics the members consume, read from their metadata for the selected protocol;
    /// `None` when any member's cannot be read, or no protocol is selected yet.
    pub(super) fn subscribed_topics(
        &self,
        topics_of: impl Fn(&Bytes) -> Option<Vec<String>>,
    ) -> Option<HashSet<String>> {
        let protocol_name = self.protocol_name.as_deref()?;
        let mut topics = HashSet::new();
        for member in self.members.values() {
            topics.extend(topics_of(&member.metadata_for(protocol_name))?);
        }
        Some(topics)
    }

    pub(super) fn describe(&self) -> GroupDescription {
        // As Kafka: member metadata and assignments are only meaningful once Stable.
        let stable = self.state == GroupState::Stable;
        let protocol_name = if stable {
            self.protocol_name.clone().unwrap_or_default()
        } else {
            String::new()
        };
        GroupDescription {
            group_id: self.group_id.clone(),
            state: self.state,
            protocol_type: self.protocol_type().to_string(),
            protocol_name: protocol_name.clone(),
            members: self
                .members
                .values()
                .map(|m| MemberDescription {
                    member_id: m.member_id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: if stable {
                        m.metadata_for(&protocol_name)
                    } else {
                        Bytes::new()
                    },
                    assignment: if stable {
                        m.assignment.clone()
                    } else {
                        Bytes::new()
                    },
                    assigned_partitions: None,
                })
                .collect(),
        }
    }
}
