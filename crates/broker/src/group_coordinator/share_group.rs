//! One share group (KIP-932, "queues for Kafka"): its members and which partitions each may
//! fetch from. Unlike a consumer group, a partition may be assigned to several members at
//! once: records, not partitions, are handed out exclusively, by the share partitions'
//! acquisition locks (see [`super::share_partition`]). So there is no reconciliation: a
//! member gets its new assignment, with the new epoch, on its next heartbeat.
//!
//! Synchronous, like the other group kinds: the coordinator calls it under its lock.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use super::{TopicPartition, GROUP_SIZE_MAX};
use crate::GroupError;

/// The only assignor share groups have in Kafka 4.1.
pub const SHARE_ASSIGNOR_SIMPLE: &str = "simple";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareGroupState {
    Empty,
    Stable,
    Dead,
}

impl ShareGroupState {
    pub fn name(self) -> &'static str {
        match self {
            ShareGroupState::Empty => "Empty",
            ShareGroupState::Stable => "Stable",
            ShareGroupState::Dead => "Dead",
        }
    }
}

/// A ShareGroupHeartbeat, protocol-neutral: `None` fields are "unchanged", as on the wire.
#[derive(Debug, Clone, Default)]
pub struct ShareHeartbeatParams {
    pub group_id: String,
    pub member_id: String,
    pub member_epoch: i32,
    pub rack_id: Option<String>,
    pub subscribed_topic_names: Option<Vec<String>>,
    pub client_id: String,
    pub client_host: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareHeartbeatResult {
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: i32,
    /// The member's whole assignment when it changed (or on joining); `None` when unchanged.
    pub assignment: Option<Vec<TopicPartition>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareGroupDescription {
    pub group_id: String,
    pub state: ShareGroupState,
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    pub assignor_name: String,
    pub members: Vec<ShareMemberDescription>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareMemberDescription {
    pub member_id: String,
    pub rack_id: Option<String>,
    pub member_epoch: i32,
    pub client_id: String,
    pub client_host: String,
    pub subscribed_topic_names: Vec<String>,
    pub assignment: Vec<TopicPartition>,
}

struct Member {
    rack_id: Option<String>,
    client_id: String,
    client_host: String,
    member_epoch: i32,
    subscribed_topic_names: Vec<String>,
    assigned: Vec<TopicPartition>,
    session_deadline: Instant,
}

pub(crate) struct ShareGroup {
    group_id: String,
    group_epoch: i32,
    assignment_epoch: i32,
    members: BTreeMap<String, Member>,
    /// The target assignment of the group epoch `assignment_epoch`, per member.
    target: BTreeMap<String, Vec<TopicPartition>>,
    /// Partition counts of the subscribed topics the target was computed from.
    subscribed_partition_counts: BTreeMap<String, i32>,
    deleted: bool,
}

/// What a heartbeat's timing comes from: the broker config or the group's own configs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShareGroupTiming {
    pub heartbeat_interval_ms: i32,
    pub session_timeout_ms: i32,
}

impl ShareGroup {
    pub(crate) fn new(group_id: String) -> ShareGroup {
        ShareGroup {
            group_id,
            group_epoch: 0,
            assignment_epoch: 0,
            members: BTreeMap::new(),
            target: BTreeMap::new(),
            subscribed_partition_counts: BTreeMap::new(),
            deleted: false,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub(crate) fn state(&self) -> ShareGroupState {
        if self.deleted {
            ShareGroupState::Dead
        } else if self.members.is_empty() {
            ShareGroupState::Empty
        } else {
            ShareGroupState::Stable
        }
    }

    pub(crate) fn is_member(&self, member_id: &str) -> bool {
        self.members.contains_key(member_id)
    }

    pub(crate) fn heartbeat(
        &mut self,
        params: ShareHeartbeatParams,
        topics: &BTreeMap<String, i32>,
        now: Instant,
        timing: ShareGroupTiming,
    ) -> Result<ShareHeartbeatResult, GroupError> {
        let session = Duration::from_millis(timing.session_timeout_ms.max(0) as u64);
        if params.member_epoch == super::LEAVE_GROUP_MEMBER_EPOCH {
            if self.members.remove(&params.member_id).is_none() {
                return Err(GroupError::UnknownMemberId);
            }
            self.bump_epoch(topics);
            return Ok(ShareHeartbeatResult {
                member_id: params.member_id,
                member_epoch: super::LEAVE_GROUP_MEMBER_EPOCH,
                heartbeat_interval_ms: 0,
                assignment: None,
            });
        }
        let joining = params.member_epoch == 0;
        if joining {
            if !self.members.contains_key(&params.member_id) && self.members.len() >= GROUP_SIZE_MAX
            {
                return Err(GroupError::GroupMaxSizeReached);
            }
            let subscribed = params.subscribed_topic_names.clone().unwrap_or_default();
            let changed = self
                .members
                .get(&params.member_id)
                .is_none_or(|m| m.subscribed_topic_names != subscribed);
            // A member that rejoins (epoch 0) starts again from nothing.
            self.members.insert(
                params.member_id.clone(),
                Member {
                    rack_id: params.rack_id.clone(),
                    client_id: params.client_id.clone(),
                    client_host: params.client_host.clone(),
                    member_epoch: 0,
                    subscribed_topic_names: subscribed,
                    assigned: Vec::new(),
                    session_deadline: now + session,
                },
            );
            if changed {
                self.bump_epoch(topics);
            }
        } else {
            let Some(member) = self.members.get_mut(&params.member_id) else {
                return Err(GroupError::UnknownMemberId);
            };
            if params.member_epoch != member.member_epoch {
                return Err(GroupError::FencedMemberEpoch);
            }
            member.session_deadline = now + session;
            if let Some(rack) = params.rack_id {
                member.rack_id = Some(rack);
            }
            let resubscribed = params
                .subscribed_topic_names
                .filter(|names| *names != member.subscribed_topic_names);
            if let Some(names) = resubscribed {
                member.subscribed_topic_names = names;
                self.bump_epoch(topics);
            }
        }
        if self.subscription_metadata_changed(topics) {
            self.bump_epoch(topics);
        }
        let Some(member) = self.members.get_mut(&params.member_id) else {
            return Err(GroupError::UnknownMemberId);
        };
        let mut assignment = None;
        if member.member_epoch != self.assignment_epoch || joining {
            member.member_epoch = self.assignment_epoch;
            let target = self
                .target
                .get(&params.member_id)
                .cloned()
                .unwrap_or_default();
            if target != member.assigned || joining {
                member.assigned = target.clone();
                assignment = Some(target);
            }
        }
        Ok(ShareHeartbeatResult {
            member_id: params.member_id,
            member_epoch: member.member_epoch,
            heartbeat_interval_ms: timing.heartbeat_interval_ms,
            assignment,
        })
    }

    fn subscription_metadata_changed(&self, topics: &BTreeMap<String, i32>) -> bool {
        self.subscribed_counts(topics) != self.subscribed_partition_counts
    }

    fn subscribed_counts(&self, topics: &BTreeMap<String, i32>) -> BTreeMap<String, i32> {
        self.members
            .values()
            .flat_map(|m| m.subscribed_topic_names.iter())
            .filter_map(|topic| topics.get(topic).map(|count| (topic.clone(), *count)))
            .collect()
    }

    /// A new group epoch, and its target assignment computed at once.
    fn bump_epoch(&mut self, topics: &BTreeMap<String, i32>) {
        self.group_epoch += 1;
        self.subscribed_partition_counts = self.subscribed_counts(topics);
        // An empty group gets no assignment (as in Kafka, its assignment epoch stays).
        if self.members.is_empty() {
            self.target.clear();
            return;
        }
        self.target = self.assign();
        self.assignment_epoch = self.group_epoch;
    }

    /// Kafka's simple share assignor, per topic: with at least as many partitions as
    /// subscribers, the partitions are spread round-robin; with fewer, every subscriber still
    /// gets one, so several share a partition.
    fn assign(&self) -> BTreeMap<String, Vec<TopicPartition>> {
        let mut subscribers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (member_id, member) in &self.members {
            for topic in &member.subscribed_topic_names {
                subscribers
                    .entry(topic.as_str())
                    .or_default()
                    .push(member_id.as_str());
            }
        }
        let mut target: BTreeMap<String, BTreeSet<TopicPartition>> = self
            .members
            .keys()
            .map(|id| (id.clone(), BTreeSet::new()))
            .collect();
        for (topic, members) in subscribers {
            let Some(&count) = self.subscribed_partition_counts.get(topic) else {
                continue;
            };
            if count <= 0 || members.is_empty() {
                continue;
            }
            let partition = |p: i32| TopicPartition {
                topic: topic.to_string(),
                partition: p,
            };
            if count as usize >= members.len() {
                for p in 0..count {
                    let member = members[p as usize % members.len()];
                    target
                        .entry(member.to_string())
                        .or_default()
                        .insert(partition(p));
                }
            } else {
                for (i, member) in members.iter().enumerate() {
                    let p = (i % count as usize) as i32;
                    target
                        .entry(member.to_string())
                        .or_default()
                        .insert(partition(p));
                }
            }
        }
        target
            .into_iter()
            .map(|(id, partitions)| (id, partitions.into_iter().collect()))
            .collect()
    }

    /// Removes members whose session timed out; the ones returned.
    pub(crate) fn expire_sessions(&mut self, now: Instant) -> Vec<String> {
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.session_deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        if !expired.is_empty() {
            for id in &expired {
                tracing::info!(group = %self.group_id, member = %id, "share group member's session timed out");
                self.members.remove(id);
            }
            // The topics as last seen; a later heartbeat notices any change.
            let topics = self.subscribed_partition_counts.clone();
            self.bump_epoch(&topics);
        }
        expired
    }

    pub(crate) fn mark_deleted(&mut self) {
        self.deleted = true;
    }

    pub(crate) fn describe(&self) -> ShareGroupDescription {
        ShareGroupDescription {
            group_id: self.group_id.clone(),
            state: self.state(),
            group_epoch: self.group_epoch,
            assignment_epoch: self.assignment_epoch,
            assignor_name: SHARE_ASSIGNOR_SIMPLE.to_string(),
            members: self
                .members
                .iter()
                .map(|(id, m)| ShareMemberDescription {
                    member_id: id.clone(),
                    rack_id: m.rack_id.clone(),
                    member_epoch: m.member_epoch,
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    subscribed_topic_names: m.subscribed_topic_names.clone(),
                    assignment: m.assigned.clone(),
                })
                .collect(),
        }
    }
}
