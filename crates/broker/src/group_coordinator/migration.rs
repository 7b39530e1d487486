//! Online migration between the classic and the consumer group protocols (KIP-848), as
//! Kafka's default `group.consumer.migration.policy=bidirectional` does it:
//!
//! - A ConsumerGroupHeartbeat joining a classic group with members (protocol type
//!   `consumer`) turns it into a consumer group: the classic members keep their assignments
//!   at the classic generation, now the group epoch, and stay on the classic protocol.
//! - In a consumer group, a classic member's JoinGroup is answered at once by the coordinator,
//!   which assigns (the member is told no leader); its SyncGroup gets what it holds; its
//!   Heartbeat is answered REBALANCE_IN_PROGRESS whenever its assignment must change, so it
//!   joins again; its LeaveGroup removes it.
//! - When the last member on the consumer protocol leaves (or is removed), the group goes back
//!   to the classic protocol and starts a rebalance there.
//!
//! The members' subscriptions and assignments are in the Kafka consumer protocol's own format
//! (ConsumerProtocolSubscription and -Assignment); the Kafka front end reads and writes them
//! through a [`ConsumerProtocolCodec`]. Without one nothing migrates: a group of one protocol
//! with members refuses the other as before.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use super::consumer_group::{ClassicMemberState, ClassicMembership, ConsumerGroup};
use super::group::{ClassicMemberHandover, Group};
use super::{
    GroupCoordinator, JoinGroupError, JoinGroupParams, JoinGroupResult, MemberIdentity,
    SyncGroupParams, SyncGroupResult, TopicPartition, GROUP_SIZE_MAX,
};
use crate::GroupError;

/// The protocol type of groups of Kafka consumers, the only one that migrates.
const CONSUMER_PROTOCOL_TYPE: &str = "consumer";

/// A member's subscription as the classic consumer protocol carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassicSubscription {
    pub topics: Vec<String>,
    /// What the member holds as it joins (cooperative clients; eager ones give all up first).
    pub owned_partitions: Vec<TopicPartition>,
}

/// Reads and writes the classic consumer protocol's embedded formats.
pub trait ConsumerProtocolCodec: Send + Sync {
    /// A JoinGroup protocol's metadata; `None` when it is not a consumer subscription.
    fn decode_subscription(&self, metadata: &[u8]) -> Option<ClassicSubscription>;
    /// A SyncGroup assignment; `None` when it is not a consumer assignment.
    fn decode_assignment(&self, assignment: &[u8]) -> Option<Vec<TopicPartition>>;
    /// `partitions` as an assignment, at the version of the member's `subscription`.
    fn encode_assignment(&self, partitions: &[TopicPartition], subscription: &[u8]) -> Bytes;
}

/// Every topic a group may subscribe to, with its partition count.
pub type TopicCatalog = Box<dyn Fn() -> BTreeMap<String, i32> + Send + Sync>;

pub(super) struct ProtocolMigration {
    codec: Arc<dyn ConsumerProtocolCodec>,
    topics: TopicCatalog,
}

impl GroupCoordinator {
    /// Lets groups move between the classic and the consumer protocol (see the module
    /// comment). Set once, by the Kafka front end; later calls change nothing.
    pub fn enable_protocol_migration(
        &self,
        codec: Arc<dyn ConsumerProtocolCodec>,
        topics: TopicCatalog,
    ) {
        let _ = self.migration.set(ProtocolMigration { codec, topics });
    }

    pub(super) fn migrates(&self) -> bool {
        self.migration.get().is_some()
    }

    /// JoinGroup of a classic member into the consumer group `group`.
    pub(super) fn classic_join_consumer_group(
        &self,
        group: &mut ConsumerGroup,
        params: JoinGroupParams,
    ) -> Result<JoinGroupResult, JoinGroupError> {
        let fail = |error: GroupError, member_id: &str| JoinGroupError {
            error,
            member_id: member_id.to_string(),
        };
        let Some(migration) = self.migration.get() else {
            return Err(fail(
                GroupError::InconsistentGroupProtocol,
                &params.member_id,
            ));
        };
        if params.protocol_type != CONSUMER_PROTOCOL_TYPE
            || !group.supports_classic_protocols(&params.protocols)
        {
            return Err(fail(
                GroupError::InconsistentGroupProtocol,
                &params.member_id,
            ));
        }
        let Some(first) = params.protocols.first() else {
            return Err(fail(
                GroupError::InconsistentGroupProtocol,
                &params.member_id,
            ));
        };
        let Some(subscription) = migration.codec.decode_subscription(&first.metadata) else {
            return Err(fail(
                GroupError::InconsistentGroupProtocol,
                &params.member_id,
            ));
        };
        let member_id = if params.member_id.is_empty() {
            let prefix = params
                .group_instance_id
                .as_deref()
                .unwrap_or(&params.client_id);
            let member_id = format!("{prefix}-{}", uuid::Uuid::new_v4());
            match &params.group_instance_id {
                // A static member's new incarnation replaces the old one.
                Some(instance_id) => {
                    let _ = group.classic_leave("", Some(instance_id));
                }
                // Nothing is reserved: the member comes back with the id.
                None if params.require_known_member_id => {
                    return Err(fail(GroupError::MemberIdRequired, &member_id));
                }
                None => {}
            }
            member_id
        } else {
            params.member_id.clone()
        };
        let protocol_name = first.name.clone();
        let state = ClassicMemberState {
            member_id: member_id.clone(),
            instance_id: params.group_instance_id.clone(),
            client_id: params.client_id.clone(),
            client_host: params.client_host.clone(),
            rebalance_timeout_ms: params.rebalance_timeout_ms,
            classic: ClassicMembership {
                session_timeout_ms: params.session_timeout_ms,
                protocols: params.protocols.clone(),
                step_deadline: None,
            },
            subscribed_topics: subscription.topics,
            partitions: subscription.owned_partitions,
        };
        let generation_id = group
            .classic_join(state, &(migration.topics)(), Instant::now())
            .map_err(|error| fail(error, &member_id))?;
        Ok(JoinGroupResult {
            generation_id,
            protocol_type: Some(CONSUMER_PROTOCOL_TYPE.to_string()),
            protocol_name: Some(protocol_name),
            // No leader: the coordinator assigns.
            leader_id: String::new(),
            member_id,
            members: Vec::new(),
            skip_assignment: false,
        })
    }

    /// SyncGroup of a classic member of the consumer group `group`: the assignments a
    /// client sends are ignored.
    pub(super) fn classic_sync_consumer_group(
        &self,
        group: &mut ConsumerGroup,
        params: &SyncGroupParams,
    ) -> Result<SyncGroupResult, GroupError> {
        let migration = self.migration.get().ok_or(GroupError::UnknownMemberId)?;
        let (partitions, classic) = group.classic_sync(
            &params.member_id,
            params.group_instance_id.as_deref(),
            params.generation_id,
            Instant::now(),
        )?;
        let first = classic
            .protocols
            .first()
            .ok_or(GroupError::InconsistentGroupProtocol)?;
        if params
            .protocol_type
            .as_deref()
            .is_some_and(|t| t != CONSUMER_PROTOCOL_TYPE)
            || params
                .protocol_name
                .as_deref()
                .is_some_and(|name| name != first.name)
        {
            return Err(GroupError::InconsistentGroupProtocol);
        }
        Ok(SyncGroupResult {
            protocol_type: Some(CONSUMER_PROTOCOL_TYPE.to_string()),
            protocol_name: Some(first.name.clone()),
            assignment: migration
                .codec
                .encode_assignment(&partitions, &first.metadata),
        })
    }

    /// LeaveGroup on the consumer group `group_id` (classic members, or an admin removing
    /// any member); the group goes back to the classic protocol if only classic members are
    /// left.
    pub(super) fn classic_leave_consumer_group(
        &self,
        groups: &mut HashMap<String, Group>,
        consumer_groups: &mut HashMap<String, ConsumerGroup>,
        group_id: &str,
        members: &[MemberIdentity],
    ) -> Vec<Result<(), GroupError>> {
        let Some(group) = consumer_groups.get_mut(group_id) else {
            return members
                .iter()
                .map(|_| Err(GroupError::UnknownMemberId))
                .collect();
        };
        let results = members
            .iter()
            .map(|identity| {
                group.classic_leave(&identity.member_id, identity.group_instance_id.as_deref())
            })
            .collect();
        self.maybe_downgrade(groups, consumer_groups, group_id);
        results
    }

    /// A ConsumerGroupHeartbeat joins the classic group `group_id`, which has members: it
    /// becomes a consumer group if it is a group of Kafka consumers whose members' formats
    /// this coordinator reads; else GROUP_ID_NOT_FOUND, as Kafka answers.
    pub(super) fn upgrade_classic_group(
        &self,
        groups: &mut HashMap<String, Group>,
        consumer_groups: &mut HashMap<String, ConsumerGroup>,
        group_id: &str,
    ) -> Result<(), GroupError> {
        let migration = self.migration.get().ok_or(GroupError::GroupIdNotFound)?;
        let group = groups.get(group_id).ok_or(GroupError::GroupIdNotFound)?;
        if group.protocol_type() != CONSUMER_PROTOCOL_TYPE || group.member_count() > GROUP_SIZE_MAX
        {
            return Err(GroupError::GroupIdNotFound);
        }
        let (generation_id, handed) = group.hand_over();
        let mut members = Vec::with_capacity(handed.len());
        for member in handed {
            let subscription = migration
                .codec
                .decode_subscription(&member.subscription)
                .ok_or(GroupError::GroupIdNotFound)?;
            // A member that never synced holds nothing.
            let assigned = if member.assignment.is_empty() {
                Vec::new()
            } else {
                migration
                    .codec
                    .decode_assignment(&member.assignment)
                    .ok_or(GroupError::GroupIdNotFound)?
            };
            members.push(ClassicMemberState {
                member_id: member.member_id,
                instance_id: member.instance_id,
                client_id: member.client_id,
                client_host: member.client_host,
                rebalance_timeout_ms: member.rebalance_timeout_ms,
                classic: ClassicMembership {
                    session_timeout_ms: member.session_timeout_ms,
                    protocols: member.protocols,
                    step_deadline: None,
                },
                subscribed_topics: subscription.topics,
                partitions: assigned,
            });
        }
        if let Some(mut group) = groups.remove(group_id) {
            group.close_after_hand_over();
        }
        tracing::info!(
            group = group_id,
            generation_id,
            members = members.len(),
            "classic group moves to the consumer protocol"
        );
        consumer_groups.insert(
            group_id.to_string(),
            ConsumerGroup::from_classic(
                group_id.to_string(),
                generation_id,
                members,
                &(migration.topics)(),
                Instant::now(),
            ),
        );
        Ok(())
    }

    /// Moves the consumer group `group_id` back to the classic protocol when members remain
    /// and all are classic ones; a rebalance starts there at once.
    pub(super) fn maybe_downgrade(
        &self,
        groups: &mut HashMap<String, Group>,
        consumer_groups: &mut HashMap<String, ConsumerGroup>,
        group_id: &str,
    ) {
        let Some(migration) = self.migration.get() else {
            return;
        };
        let Some(consumer_group) = consumer_groups.get(group_id) else {
            return;
        };
        if consumer_group.is_empty() || !consumer_group.all_classic() {
            return;
        }
        let generation_id = consumer_group.group_epoch();
        let members: Vec<ClassicMemberHandover> = consumer_group
            .export_classic()
            .into_iter()
            .map(|member| {
                let subscription = member
                    .classic
                    .protocols
                    .first()
                    .map(|p| p.metadata.clone())
                    .unwrap_or_default();
                ClassicMemberHandover {
                    member_id: member.member_id,
                    instance_id: member.instance_id,
                    client_id: member.client_id,
                    client_host: member.client_host,
                    session_timeout_ms: member.classic.session_timeout_ms,
                    rebalance_timeout_ms: member.rebalance_timeout_ms,
                    assignment: migration
                        .codec
                        .encode_assignment(&member.partitions, &subscription),
                    subscription,
                    protocols: member.classic.protocols,
                }
            })
            .collect();
        tracing::info!(
            group = group_id,
            generation_id,
            members = members.len(),
            "consumer group moves back to the classic protocol"
        );
        consumer_groups.remove(group_id);
        let mut group = Group::taken_over(
            group_id.to_string(),
            generation_id,
            members,
            Instant::now(),
            &self.config,
        );
        self.schedule_timer(&mut group);
        groups.insert(group_id.to_string(), group);
    }
}
