//! The metadata Raft group (KRaft in spirit): every node is a voter; the replicated state is
//! [`ClusterMetadata`], changed only by [`MetadataCommand`]s applied in log order.

mod log_store;
mod placement;
mod state_machine;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;

use serde::{Deserialize, Serialize};

pub use log_store::{MetadataLogStore, MetadataStoreError};
pub use placement::{place_replicas, PlacementError};
pub use state_machine::{
    MetadataStateMachine, PartitionLeaders, ReplicatedOffsets, ReplicatedSecurity,
    ReplicatedTransactions,
};

use crate::{NodeAddress, NodeId};

openraft::declare_raft_types!(
    /// The metadata group's openraft type config.
    pub MetadataRaft:
        D = MetadataCommand,
        R = MetadataResponse,
        NodeId = NodeId,
        Node = NodeAddress,
        Entry = openraft::Entry<MetadataRaft>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Topic configs (Kafka's `retention.ms`, `cleanup.policy`, ...), as given.
pub type TopicConfigs = BTreeMap<String, String>;

/// One topic as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMetadata {
    pub name: String,
    pub topic_id: uuid::Uuid,
    pub replication_factor: u16,
    /// Replicas of each partition, by partition index; the first is the preferred leader.
    pub assignments: Vec<Vec<NodeId>>,
    pub configs: TopicConfigs,
    /// Reassignments in progress (AlterPartitionReassignments): partition -> target replicas.
    /// `assignments` stays the current voter set until the partition's Raft leader has changed
    /// the group's membership and completed the move ([`MetadataCommand::SetPartitionReplicas`]).
    #[serde(default)]
    pub reassignments: BTreeMap<u32, Vec<NodeId>>,
    /// Partitions whose membership has changed since creation. A fresh replica of such a
    /// partition must not initialize the group with its assignment (only the replicas of a
    /// never-moved partition agree on that first membership); it waits for the leader instead.
    #[serde(default)]
    pub moved: BTreeSet<u32>,
    /// Reassignments past their point of no return: the partition's leader is changing the
    /// group's voters to this target ([`MetadataCommand::BeginVoterChange`]). Such a move can
    /// no longer be cancelled, and its target replicas keep running until it completes: once
    /// they may be voters, deleting one's data could lose acknowledged records.
    #[serde(default)]
    pub completing: BTreeMap<u32, Vec<NodeId>>,
}

impl TopicMetadata {
    /// The replicas a node of `partition` must run: the current ones plus those a
    /// reassignment in progress adds (or a completing one, see [`TopicMetadata::completing`]).
    pub fn replicas_to_run(&self, partition: u32) -> Vec<NodeId> {
        let mut replicas = self
            .assignments
            .get(partition as usize)
            .cloned()
            .unwrap_or_default();
        let targets = [
            self.reassignments.get(&partition),
            self.completing.get(&partition),
        ];
        for target in targets.into_iter().flatten() {
            for id in target {
                if !replicas.contains(id) {
                    replicas.push(*id);
                }
            }
        }
        replicas
    }
}

/// Everything the metadata group agrees on. Published on a `watch` after every apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMetadata {
    /// Registered brokers: where their transport and their Kafka listener are.
    pub brokers: BTreeMap<NodeId, NodeAddress>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicMetadata>,
    /// The first producer id of the next block handed out.
    pub next_producer_id: i64,
    /// Index of the last applied log entry (0 before any), so a reader can tell versions apart.
    /// Entries that change only consumer offsets do not republish the metadata, so a published
    /// copy may be behind the log by such entries.
    pub applied_index: u64,
}

impl ClusterMetadata {
    pub fn topic_by_id(&self, topic_id: uuid::Uuid) -> Option<&TopicMetadata> {
        self.topics.values().find(|t| t.topic_id == topic_id)
    }
}

/// Metadata commands are small: they travel inside the encoded AppendEntries.
impl crate::transport::BulkPayload for MetadataCommand {
    fn take_bulk(&mut self) -> Option<bytes::Bytes> {
        None
    }

    fn restore_bulk(&mut self, _bulk: bytes::Bytes) -> bool {
        false
    }

    fn bulk_len(&self) -> usize {
        0
    }
}

/// A change to the cluster metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataCommand {
    RegisterBroker {
        node_id: NodeId,
        address: NodeAddress,
    },
    CreateTopic {
        name: String,
        topic_id: uuid::Uuid,
        partition_count: u32,
        replication_factor: u16,
        /// Replicas per partition (see [`place_replicas`]); `partition_count` entries.
        assignments: Vec<Vec<NodeId>>,
        configs: TopicConfigs,
    },
    DeleteTopic {
        name: String,
    },
    /// Adds partitions: `assignments` holds the replicas of each new one.
    CreatePartitions {
        name: String,
        assignments: Vec<Vec<NodeId>>,
    },
    AlterTopicConfigs {
        name: String,
        set: TopicConfigs,
        delete: Vec<String>,
    },
    /// Hands out `block_size` producer ids to `node_id`.
    AllocateProducerIdBlock {
        node_id: NodeId,
        block_size: u32,
    },
    /// Starts (`Some(target)`) or cancels (`None`) the reassignment of one partition; every
    /// target replica must be a registered broker. Cancelling a partition with none in
    /// progress is rejected ([`MetadataRejection::NoReassignment`]), and so is cancelling one
    /// that is completing ([`MetadataRejection::ReassignmentCompleting`]).
    ReassignPartition {
        name: String,
        partition: u32,
        target: Option<Vec<NodeId>>,
    },
    /// The partition's leader is about to change the group's voters to `target`, the
    /// reassignment in progress: from here the move completes (see
    /// [`TopicMetadata::completing`]). Rejected ([`MetadataRejection::NoReassignment`]) when
    /// the reassignment in progress is no longer `target` (cancelled or changed meanwhile).
    BeginVoterChange {
        name: String,
        partition: u32,
        target: Vec<NodeId>,
    },
    /// A reassignment is done: the partition group's voters are now `replicas`. Sets the
    /// assignment, ends the completing move and a reassignment to `replicas`, and marks the
    /// partition moved; a newer target recorded meanwhile stays in progress.
    SetPartitionReplicas {
        name: String,
        partition: u32,
        replicas: Vec<NodeId>,
    },
    /// OffsetCommit of a consumer group (the coordinator, which is the metadata leader,
    /// validated the committer first). See [`ConsumerOffsets`].
    CommitOffsets {
        group: String,
        offsets: Vec<CommittedOffset>,
    },
    /// Removes committed offsets of a group: the listed partitions, or all (`None`) for
    /// DeleteGroups.
    DeleteGroupOffsets {
        group: String,
        partitions: Option<Vec<(String, i32)>>,
    },
    /// Partition leaders report their leadership (on election, and when their ISR changes),
    /// as KRaft's partition-change records: every node then names every partition's leader
    /// in Metadata, not only the partition's replicas. See [`PartitionLeaders`].
    ReportPartitionLeaders {
        reports: Vec<PartitionLeader>,
    },
    /// Removes a broker before its node leaves the metadata group. Rejected while any
    /// partition has (or is being moved to) a replica on it, as Kafka's UnregisterBroker.
    UnregisterBroker {
        node_id: NodeId,
    },
    /// A share group's share-partition states (KIP-932): each start offset, with the
    /// partition's in-flight record states encoded in `metadata`, as Kafka's
    /// `__share_group_state` holds them. Written by each partition's leader.
    CommitShareState {
        group: String,
        offsets: Vec<CommittedOffset>,
    },
    /// Removes share-partition states of a group: the listed partitions, or all (`None`).
    DeleteShareState {
        group: String,
        partitions: Option<Vec<(String, i32)>>,
    },
    /// The transaction coordinator (the metadata leader) records one transactional id's state
    /// (`None` forgets the id). See [`TransactionStates`].
    SaveTransactionState {
        transactional_id: String,
        state: Option<String>,
    },
    /// A new version of one security document (users, ACLs, quotas, vhost limits, as the
    /// auth crate encodes them): applied only if the latest version is still `base_version`
    /// (or this very change, re-proposed after a leader change, is); else rejected with
    /// [`MetadataRejection::StaleSecurityDocument`]. See [`ReplicatedSecurity`].
    ReplaceSecurityDocument {
        kind: String,
        base_version: u64,
        /// Random, to recognise this change if it is proposed again.
        change_id: u64,
        document: String,
    },
}

/// One security document as the metadata group holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityDocument {
    pub version: u64,
    pub change_id: u64,
    pub document: String,
}

/// The security documents by kind; kept apart from [`ClusterMetadata`] as the offsets are.
pub type SecurityDocuments = BTreeMap<String, SecurityDocument>;

/// A partition's leader as its leader last reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionLeader {
    pub topic_id: uuid::Uuid,
    pub partition: i32,
    pub leader: NodeId,
    /// The partition group's Raft term (Kafka's leader epoch).
    pub term: u64,
    pub isr: Vec<NodeId>,
}

/// One committed consumer offset, as OffsetCommit stores it and OffsetFetch returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// -1 when the client sent none.
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

/// Committed offsets of every group: group -> topic -> partition -> offset.
///
/// Replicated through the metadata group (the coordinator of every group is its leader), so an
/// acknowledged commit survives the coordinator's failure. Kept beside [`ClusterMetadata`]
/// rather than in it: commits are frequent, and every change of `ClusterMetadata` is cloned,
/// published and reconciled by every node.
pub type ConsumerOffsets = BTreeMap<String, BTreeMap<String, BTreeMap<i32, CommittedOffset>>>;

/// The transaction coordinator's state of every transactional id, in the coordinator's own
/// encoding (JSON): the metadata group keeps the values without reading them, as Kafka's
/// `__transaction_state` log does. Replicated, so an acknowledged transaction step survives
/// the coordinator's failure; kept apart from [`ClusterMetadata`] as the offsets are.
pub type TransactionStates = BTreeMap<String, String>;

/// What applying a command produced. Rejections are results, not errors: the command is in
/// the log either way and every node rejects it the same way.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum MetadataResponse {
    /// Membership and blank entries, and commands with nothing to return.
    #[default]
    Done,
    ProducerIdBlock {
        first_producer_id: i64,
        count: u32,
    },
    /// DeleteGroupOffsets: how many offsets it removed.
    OffsetsDeleted {
        count: u64,
    },
    /// ReplaceSecurityDocument: the version it committed.
    SecurityDocumentVersion {
        version: u64,
    },
    Rejected(MetadataRejection),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MetadataRejection {
    #[error("topic {0} already exists")]
    TopicExists(String),
    #[error("topic id {0} is already in use")]
    TopicIdInUse(uuid::Uuid),
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    #[error("topic {topic} has no partition {partition}")]
    UnknownPartition { topic: String, partition: u32 },
    #[error("invalid assignment: {0}")]
    InvalidAssignment(String),
    #[error("producer ids exhausted")]
    ProducerIdsExhausted,
    #[error("no reassignment of {topic}-{partition} is in progress")]
    NoReassignment { topic: String, partition: u32 },
    #[error("the reassignment of {topic}-{partition} is completing: the partition's voters are changing to {target:?}")]
    ReassignmentCompleting {
        topic: String,
        partition: u32,
        target: Vec<NodeId>,
    },
    #[error(
        "node {node_id} still hosts replicas of {}: reassign them to other brokers first",
        partitions.join(", ")
    )]
    BrokerHostsReplicas {
        node_id: NodeId,
        /// `topic-partition` of each, sorted.
        partitions: Vec<String>,
    },
    /// A node that is not in the metadata group's membership (it was removed) cannot
    /// register as a broker.
    #[error("node {0} is not a member of the metadata group")]
    NotAMember(NodeId),
    #[error("the {kind} document is at version {version}, not the one the change was made on")]
    StaleSecurityDocument { kind: String, version: u64 },
}

impl ClusterMetadata {
    /// `topic-partition` of every partition with a replica on `node_id`, or being moved there.
    pub fn partitions_hosted_by(&self, node_id: NodeId) -> Vec<String> {
        let mut hosted = Vec::new();
        for topic in self.topics.values() {
            for partition in 0..topic.assignments.len() as u32 {
                if topic.replicas_to_run(partition).contains(&node_id) {
                    hosted.push(format!("{}-{partition}", topic.name));
                }
            }
        }
        hosted
    }
}
