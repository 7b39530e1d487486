//! Cluster mode (`sluice serve --peers ...`): topics live in the metadata Raft group and each
//! partition is a Raft group over its replicas (see `sluice_cluster`). This module is the
//! broker side of it, protocol-neutral like the rest of the crate:
//!
//! - [`ClusterBroker`] follows [`ClusterMetadata`]: it opens the replicas assigned to this
//!   node (a [`sluice_log::PartitionLog`] under the external high watermark, which is the
//!   group's Raft log) and starts their groups; it stops the groups of deleted topics and
//!   deletes their data. Topic administration, auto-creation and producer-id blocks are
//!   proposals to the metadata group.
//! - [`Replica`] serves one partition: produce on the Raft leader only (one entry per record
//!   batch, or one entry for the batches that queued while earlier entries were in flight;
//!   answered once committed and applied: acks=1 waits for the majority too, stronger than
//!   Kafka), fetch and ListOffsets on the leader below the high
//!   watermark, OffsetForLeaderEpoch from the term history, the ISR from the leader's view of
//!   its followers.
//! - Idempotent producers: every replica records the committed batches' producer state as its
//!   high watermark advances, so a new leader de-duplicates retries sent across a failover;
//!   the leader checks and proposes a partition's idempotent batches one at a time.
//!
//! - Reassignment (AlterPartitionReassignments): the metadata group records a partition's
//!   target replicas beside its assignment; nodes in the target open the replica without
//!   initializing its group, and the partition's Raft leader adds them as learners, waits
//!   until they caught up, changes the voters (openraft's joint consensus) and records the
//!   target as the assignment, after which removed replicas stop and delete their data. The
//!   leader also brings back in line what a failed leader or a late cancel left behind
//!   (stray learners, voters the metadata does not show).
//! - Committed consumer offsets go through the metadata group: the coordinator of every group
//!   is the metadata leader, which checks the committer against the group's members (kept in
//!   memory by its local [`crate::GroupCoordinator`], as on one node) and answers OffsetCommit
//!   once the `CommitOffsets` command is committed by a majority; OffsetFetch is a
//!   linearizable read on the leader. A node that is not the leader answers NOT_COORDINATOR;
//!   a leader that cannot confirm it, COORDINATOR_LOAD_IN_PROGRESS (retried by clients).
//!   Kafka keeps offsets in `__consumer_offsets` partitions, whose leaders spread the
//!   coordinators over the brokers; here every commit is a metadata-group write (an fsync on a
//!   majority of nodes) and one node coordinates every group. That is simple and enough for
//!   the commit rates of a few hundred consumers; sharding the offsets over partition groups
//!   is the next step if it is not. Group membership is not replicated: after a coordinator
//!   move the members rejoin (UNKNOWN_MEMBER_ID), as with a moved Kafka coordinator.
//!
//! The single-node broker ([`Broker`]) is not involved in any of this: without `--peers`
//! nothing here runs.

mod broker_requests;
mod proposer;
mod replica;
mod share_states;
mod transactions;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use sluice_cluster::metadata::{
    place_replicas, ClusterMetadata, CommittedOffset, MetadataCommand, MetadataRejection,
    MetadataResponse, PartitionLeader, ReplicatedOffsets, TopicMetadata,
};
use sluice_cluster::node::ClusterNode;
use sluice_cluster::{partition, GroupId, NodeAddress, NodeId};
use tokio::sync::{watch, Notify};

pub use proposer::{BATCHES_PROPOSED_METRIC, ENTRIES_PROPOSED_METRIC};
pub use replica::{PartitionView, Replica, ISR_LAG_MAX};

use crate::group_coordinator::{OffsetAndMetadata, TopicPartition};
use crate::topic::validate_topic_name;
use crate::topic_config::TopicConfig;
use crate::ConfigEntry;
use crate::{Broker, BrokerError, GroupError};

/// Producer ids each node takes from the metadata group at a time.
const PRODUCER_ID_BLOCK: u32 = 1000;
/// How long an admin call waits for its effect to reach this node.
const ADMIN_WAIT_MAX: Duration = Duration::from_secs(10);
/// How long the other replicas of a new partition wait before they initialize its group, so
/// that the preferred replica's election comes first.
const PREFERRED_LEADER_HEAD_START: Duration = Duration::from_millis(500);
/// How long an offset commit or fetch waits for the metadata group before the client is sent
/// to find the coordinator again: far above a healthy commit, below clients' request timeouts.
const OFFSETS_WAIT_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("this node is not the partition's leader")]
    NotLeader,
    #[error("the partition has no leader yet")]
    LeaderNotAvailable,
    #[error("fewer in-sync replicas than min.insync.replicas")]
    NotEnoughReplicas,
    #[error("the client's leader epoch is older than the partition's")]
    FencedLeaderEpoch,
    #[error("the client's leader epoch is newer than this replica knows")]
    UnknownLeaderEpoch,
    #[error("timed out waiting for the cluster")]
    Timeout,
    #[error("Raft: {0}")]
    Raft(String),
}

impl From<sluice_log::LogError> for ReplicationError {
    fn from(error: sluice_log::LogError) -> Self {
        ReplicationError::Broker(error.into())
    }
}

impl From<sluice_cluster::node::ProposeError> for ReplicationError {
    fn from(error: sluice_cluster::node::ProposeError) -> Self {
        match error {
            sluice_cluster::node::ProposeError::Timeout { .. } => ReplicationError::Timeout,
            other => ReplicationError::Raft(other.to_string()),
        }
    }
}

/// A Kafka broker as the metadata group knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerEndpoint {
    pub node_id: NodeId,
    pub host: String,
    pub port: i32,
}

struct ProducerIdBlock {
    next: i64,
    remaining: u32,
}

pub struct ClusterBroker {
    node: Arc<ClusterNode>,
    broker: Arc<Broker>,
    default_replication_factor: u16,
    replicas: RwLock<HashMap<(uuid::Uuid, i32), Arc<Replica>>>,
    producer_ids: tokio::sync::Mutex<ProducerIdBlock>,
    stopped: watch::Sender<bool>,
    reconciled: Notify,
    /// A `ReportPartitionLeaders` proposal is on its way (at most one at a time).
    reporting_leaders: AtomicBool,
    /// Partitions whose membership this node (as their Raft leader) is changing right now.
    driving: Mutex<HashSet<(uuid::Uuid, i32)>>,
}

/// Why AlterPartitionReassignments refused a partition (Kafka's error for each is noted).
#[derive(Debug, thiserror::Error)]
pub enum ReassignmentError {
    /// UNKNOWN_TOPIC_OR_PARTITION.
    #[error("unknown topic or partition {0}")]
    UnknownTopicOrPartition(String),
    /// INVALID_REPLICA_ASSIGNMENT: empty, duplicates, unknown brokers.
    #[error("invalid replica assignment: {0}")]
    InvalidAssignment(String),
    /// NO_REASSIGNMENT_IN_PROGRESS: a cancel of nothing.
    #[error("no reassignment of {0} is in progress")]
    NoReassignmentInProgress(String),
    /// NO_REASSIGNMENT_IN_PROGRESS too: the move passed its point of no return (the voters
    /// are changing) and completes; as in Kafka, a completed move has nothing to cancel.
    #[error("the reassignment of {0} is completing (its voters are changing) and can no longer be cancelled")]
    Completing(String),
    #[error(transparent)]
    Replication(#[from] ReplicationError),
}

/// A reassignment in progress, as ListPartitionReassignments shows it (Kafka's terms):
/// `replicas` is the current set followed by the ones being added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionReassignment {
    pub topic: String,
    pub partition: i32,
    pub replicas: Vec<NodeId>,
    pub adding: Vec<NodeId>,
    pub removing: Vec<NodeId>,
}

/// How long one attempt at a membership change may take (a new replica catching up included)
/// before it is retried from the next metadata sample.
const MEMBERSHIP_CHANGE_WAIT_MAX: Duration = Duration::from_secs(120);

impl ClusterBroker {
    /// Starts following the cluster metadata (opening and starting this node's replicas).
    pub fn start(
        node: Arc<ClusterNode>,
        broker: Arc<Broker>,
        default_replication_factor: u16,
    ) -> Arc<ClusterBroker> {
        let cluster = Arc::new(ClusterBroker {
            node,
            broker,
            default_replication_factor: default_replication_factor.max(1),
            replicas: RwLock::new(HashMap::new()),
            producer_ids: tokio::sync::Mutex::new(ProducerIdBlock {
                next: 0,
                remaining: 0,
            }),
            stopped: watch::Sender::new(false),
            reconciled: Notify::new(),
            reporting_leaders: AtomicBool::new(false),
            driving: Mutex::new(HashSet::new()),
        });
        cluster.start_transactions();
        cluster.start_share_states();
        cluster.serve_broker_requests();
        cluster.start_log_cleaner();
        tokio::spawn(Arc::clone(&cluster).follow_metadata());
        cluster
    }

    pub fn node(&self) -> &Arc<ClusterNode> {
        &self.node
    }
    pub fn node_id(&self) -> NodeId {
        self.node.node_id()
    }
    pub fn metadata(&self) -> ClusterMetadata {
        self.node.metadata().borrow().clone()
    }

    /// Every registered broker with its Kafka address.
    pub fn brokers(&self) -> Vec<BrokerEndpoint> {
        self.node
            .metadata()
            .borrow()
            .brokers
            .iter()
            .filter_map(|(&node_id, address)| {
                let (host, port) = address.kafka_addr.rsplit_once(':')?;
                Some(BrokerEndpoint {
                    node_id,
                    host: host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_string(),
                    port: port.parse().ok()?,
                })
            })
            .collect()
    }

    /// The Kafka listener of a registered node, as `host:port` (how a node reaches another
    /// node's Kafka listener to forward a request).
    pub fn kafka_addr(&self, node_id: NodeId) -> Option<String> {
        let metadata = self.node.metadata();
        let address = metadata.borrow().brokers.get(&node_id)?.kafka_addr.clone();
        (!address.is_empty()).then_some(address)
    }

    /// The controller Kafka clients are shown: the metadata group's leader.
    pub fn controller(&self) -> Option<NodeId> {
        self.node.metadata_leader()
    }

    pub fn topic(&self, name: &str) -> Option<TopicMetadata> {
        self.node.metadata().borrow().topics.get(name).cloned()
    }

    /// The topic, after catching up with the metadata leader when this node does not know it
    /// yet: a topic created through another node is found here as soon as its creation was
    /// acknowledged, instead of being unknown until the change arrives. `None` when the
    /// leader's metadata has no such topic either (or no leader answered).
    pub async fn topic_caught_up(&self, name: &str) -> Option<TopicMetadata> {
        if let Some(topic) = self.topic(name) {
            return Some(topic);
        }
        if let Err(error) = self.node.catch_up().await {
            tracing::debug!(topic = name, %error, "could not catch up with the metadata leader");
        }
        self.topic(name)
    }

    /// Catches up with the metadata leader: what this node then reads from its applied
    /// metadata and committed offsets includes every change acknowledged before the call.
    pub async fn catch_up(&self) -> Result<(), ReplicationError> {
        self.node
            .catch_up()
            .await
            .map_err(|error| ReplicationError::Raft(error.to_string()))
    }

    pub fn replica(&self, topic_id: uuid::Uuid, partition: i32) -> Option<Arc<Replica>> {
        self.replicas.read().get(&(topic_id, partition)).cloned()
    }

    /// This partition as Metadata describes it: a replica here answers from its group; any
    /// other node from the leadership the partition's leader last reported through the
    /// metadata group (see `ClusterBroker::report_leaders`), as every Kafka broker's
    /// metadata cache knows every leader. That report may be stale by an election; a client
    /// sent to a deposed leader is answered NOT_LEADER_OR_FOLLOWER and asks again.
    pub fn partition_view(&self, topic: &TopicMetadata, partition: i32) -> PartitionView {
        if let Some(replica) = self.replica(topic.topic_id, partition) {
            let view = replica.view();
            if view.leader.is_some() {
                return view;
            }
        }
        let replicas = usize::try_from(partition)
            .ok()
            .and_then(|p| topic.assignments.get(p).cloned())
            .unwrap_or_default();
        match self
            .node
            .partition_leaders()
            .get(topic.topic_id, partition)
            .filter(|reported| replicas.contains(&reported.leader))
        {
            Some(reported) => PartitionView {
                leader: Some(reported.leader),
                leader_epoch: i32::try_from(reported.term).unwrap_or(i32::MAX),
                replicas,
                isr: reported.isr,
            },
            None => PartitionView {
                leader: None,
                leader_epoch: -1,
                replicas,
                isr: Vec::new(),
            },
        }
    }

    /// Reports, through the metadata group, the partitions this node leads whose leadership
    /// (term) or ISR differs from what the group last recorded. Called every ISR sample: one
    /// batched proposal at most in flight, and nothing when nothing changed, so 1,000 stable
    /// partitions cost nothing; a failed report is simply made again on the next call.
    fn report_leaders(self: &Arc<Self>, replicas: &[Arc<Replica>]) {
        let known = self.node.partition_leaders();
        let reports: Vec<PartitionLeader> = replicas
            .iter()
            .filter(|replica| replica.is_leader())
            .filter_map(|replica| {
                let (_, term) = replica.leader_and_term();
                let isr = replica.in_sync_replicas();
                let recorded = known.get(replica.topic_id(), replica.index());
                let current = recorded
                    .is_some_and(|r| r.term == term && r.leader == self.node_id() && r.isr == isr);
                (!current).then(|| PartitionLeader {
                    topic_id: replica.topic_id(),
                    partition: replica.index(),
                    leader: self.node_id(),
                    term,
                    isr,
                })
            })
            .collect();
        if reports.is_empty() || self.reporting_leaders.swap(true, Ordering::AcqRel) {
            return;
        }
        let cluster = Arc::clone(self);
        tokio::spawn(async move {
            let count = reports.len();
            match cluster
                .node
                .propose(MetadataCommand::ReportPartitionLeaders { reports })
                .await
            {
                Ok(_) => tracing::debug!(count, "reported partition leaders"),
                Err(error) => tracing::debug!(%error, "reporting partition leaders"),
            }
            cluster.reporting_leaders.store(false, Ordering::Release);
        });
    }

    /// Resolves a partition for a data request: unknown topic/partition, or its replica here
    /// (no replica here: not the leader, so the client refreshes its metadata).
    pub fn replica_for(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Arc<Replica>, ReplicationError> {
        let Some(meta) = self.topic(topic) else {
            return Err(BrokerError::UnknownTopicOrPartition(topic.to_string()).into());
        };
        if partition < 0 || partition as usize >= meta.assignments.len() {
            return Err(
                BrokerError::UnknownTopicOrPartition(format!("{topic}-{partition}")).into(),
            );
        }
        self.replica(meta.topic_id, partition)
            .ok_or(ReplicationError::NotLeader)
    }

    /// `min.insync.replicas` of a topic (1 unless set).
    pub fn min_insync_replicas(&self, topic: &str) -> usize {
        self.topic(topic)
            .and_then(|t| {
                t.configs
                    .get("min.insync.replicas")
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(1)
    }

    /// The topic, created (default partitions and replication factor, capped by the brokers
    /// there are) when auto-creation is on.
    pub async fn topic_or_auto_create(
        &self,
        name: &str,
    ) -> Result<TopicMetadata, ReplicationError> {
        if let Some(topic) = self.topic(name) {
            return Ok(topic);
        }
        if !self.broker.config().auto_create_topics || name.starts_with("__") {
            return Err(BrokerError::UnknownTopicOrPartition(name.to_string()).into());
        }
        let members = self
            .node
            .metadata_raft()
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .count()
            .max(1);
        let replication_factor = usize::from(self.default_replication_factor).min(members) as i16;
        match self
            .create_topic(name, -1, replication_factor, BTreeMap::new(), false)
            .await
        {
            Ok(()) | Err(ReplicationError::Broker(BrokerError::TopicAlreadyExists(_))) => {}
            Err(error) => return Err(error),
        }
        self.topic(name)
            .ok_or_else(|| BrokerError::UnknownTopicOrPartition(name.to_string()).into())
    }

    /// CreateTopics: `partition_count` / `replication_factor` -1 = the defaults.
    pub async fn create_topic(
        &self,
        name: &str,
        partition_count: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), ReplicationError> {
        validate_topic_name(name)?;
        // Validated as one node validates them.
        TopicConfig::new(configs.clone(), &self.broker.config().log_defaults)?;
        let partition_count = if partition_count == -1 {
            self.broker.config().default_partitions
        } else {
            partition_count
        };
        if partition_count < 1 {
            return Err(BrokerError::InvalidPartitions(
                "Number of partitions was set to an invalid non-positive value.".to_string(),
            )
            .into());
        }
        let replication_factor = match replication_factor {
            -1 => self.default_replication_factor,
            rf if rf >= 1 => rf as u16,
            _ => {
                return Err(BrokerError::InvalidReplicationFactor(
                    "Replication factor must be larger than 0, or -1 to use the default value."
                        .to_string(),
                )
                .into())
            }
        };
        if self.metadata().topics.contains_key(name) {
            return Err(BrokerError::TopicAlreadyExists(name.to_string()).into());
        }
        self.wait_for_registrations(usize::from(replication_factor))
            .await;
        let metadata = self.metadata();
        let brokers: Vec<NodeId> = metadata.brokers.keys().copied().collect();
        if usize::from(replication_factor) > brokers.len() {
            return Err(
                BrokerError::InvalidReplicationFactor(unreachable_replication_factor(
                    replication_factor.into(),
                    brokers.len(),
                ))
                .into(),
            );
        }
        // Spread the first replicas (preferred leaders) of different topics over the brokers.
        let start = name
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        let assignments = place_replicas(
            &brokers,
            0,
            partition_count as u32,
            replication_factor,
            start,
        )
        .map_err(|e| BrokerError::InvalidReplicationFactor(e.to_string()))?;
        if validate_only {
            return Ok(());
        }
        let topic_id = uuid::Uuid::new_v4();
        self.propose(MetadataCommand::CreateTopic {
            name: name.to_string(),
            topic_id,
            partition_count: partition_count as u32,
            replication_factor,
            assignments,
            configs,
        })
        .await?;
        self.wait_for_topic(name, partition_count, true).await;
        Ok(())
    }

    /// Right after a start, members of the cluster may not have registered their Kafka
    /// address yet: wait (bounded) until `count` brokers are known, if the cluster has that
    /// many members at all.
    async fn wait_for_registrations(&self, count: usize) {
        let members = self
            .node
            .metadata_raft()
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .count();
        if count > members {
            return;
        }
        let mut metadata = self.node.metadata();
        let _ = tokio::time::timeout(
            ADMIN_WAIT_MAX,
            metadata.wait_for(|m| m.brokers.len() >= count),
        )
        .await;
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), ReplicationError> {
        if self.topic(name).is_none() {
            return Err(BrokerError::UnknownTopicOrPartition(name.to_string()).into());
        }
        self.propose(MetadataCommand::DeleteTopic {
            name: name.to_string(),
        })
        .await?;
        let mut metadata = self.node.metadata();
        let _ = tokio::time::timeout(
            ADMIN_WAIT_MAX,
            metadata.wait_for(|m| !m.topics.contains_key(name)),
        )
        .await;
        Ok(())
    }

    /// CreatePartitions: grows the topic to `count` partitions.
    pub async fn create_partitions(
        &self,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<(), ReplicationError> {
        let metadata = self.metadata();
        let Some(topic) = metadata.topics.get(name) else {
            return Err(BrokerError::UnknownTopicOrPartition(name.to_string()).into());
        };
        let current = topic.assignments.len() as i32;
        if count <= current {
            return Err(BrokerError::InvalidPartitions(crate::broker::no_increase(
                name, current, count,
            ))
            .into());
        }
        let brokers: Vec<NodeId> = metadata.brokers.keys().copied().collect();
        let assignments = place_replicas(
            &brokers,
            current as u32,
            (count - current) as u32,
            topic.replication_factor,
            current as usize,
        )
        .map_err(|e| BrokerError::InvalidReplicationFactor(e.to_string()))?;
        if validate_only {
            return Ok(());
        }
        self.propose(MetadataCommand::CreatePartitions {
            name: name.to_string(),
            assignments,
        })
        .await?;
        self.wait_for_topic(name, count, true).await;
        Ok(())
    }

    /// DescribeConfigs of a topic: its overrides over the broker's defaults.
    pub fn describe_topic_configs(&self, name: &str) -> Result<Vec<ConfigEntry>, BrokerError> {
        let topic = self
            .topic(name)
            .ok_or_else(|| BrokerError::UnknownTopicOrPartition(name.to_string()))?;
        let defaults = &self.broker.config().log_defaults;
        Ok(TopicConfig::new(topic.configs, defaults)?.describe(defaults))
    }

    /// AlterConfigs: the topic's overrides become exactly `configs`.
    pub async fn replace_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), ReplicationError> {
        let Some(topic) = self.topic(name) else {
            return Err(BrokerError::UnknownTopicOrPartition(name.to_string()).into());
        };
        let delete = topic
            .configs
            .keys()
            .filter(|key| !configs.contains_key(*key))
            .cloned()
            .collect();
        self.alter_topic_configs(name, configs, delete, validate_only)
            .await
    }

    /// Changes a topic's configs through the metadata group.
    pub async fn alter_topic_configs(
        &self,
        name: &str,
        set: BTreeMap<String, String>,
        delete: Vec<String>,
        validate_only: bool,
    ) -> Result<(), ReplicationError> {
        let Some(topic) = self.topic(name) else {
            return Err(BrokerError::UnknownTopicOrPartition(name.to_string()).into());
        };
        let mut configs = topic.configs.clone();
        for key in &delete {
            configs.remove(key);
        }
        configs.extend(set.clone());
        TopicConfig::new(configs, &self.broker.config().log_defaults)?;
        if validate_only {
            return Ok(());
        }
        self.propose(MetadataCommand::AlterTopicConfigs {
            name: name.to_string(),
            set,
            delete,
        })
        .await?;
        Ok(())
    }

    /// A producer id from this node's block, taking a new block from the metadata group when
    /// it runs out (ids are unique across the cluster).
    pub async fn allocate_producer_id(&self) -> Result<i64, ReplicationError> {
        let mut block = self.producer_ids.lock().await;
        if block.remaining == 0 {
            let response = self
                .propose(MetadataCommand::AllocateProducerIdBlock {
                    node_id: self.node_id(),
                    block_size: PRODUCER_ID_BLOCK,
                })
                .await?;
            let MetadataResponse::ProducerIdBlock {
                first_producer_id,
                count,
            } = response
            else {
                return Err(ReplicationError::Raft(format!(
                    "unexpected answer to a producer id block request: {response:?}"
                )));
            };
            block.next = first_producer_id;
            block.remaining = count;
        }
        let id = block.next;
        block.next += 1;
        block.remaining -= 1;
        Ok(id)
    }

    /// OffsetCommit in a cluster: this node must be the metadata leader (the coordinator of
    /// every group). The committer is checked against the group's live members here, then the
    /// accepted offsets are committed through the metadata group; the answer comes once a
    /// majority has them, so a failover cannot lose or revert them. Results as
    /// [`crate::GroupCoordinator::commit_offsets`].
    pub async fn commit_offsets(
        &self,
        group_id: &str,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
        offsets: Vec<(TopicPartition, OffsetAndMetadata)>,
    ) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        if self.controller() != Some(self.node_id()) {
            return Err(GroupError::NotCoordinator);
        }
        let results = self.broker.group_coordinator().validate_commit(
            group_id,
            member_id,
            group_instance_id,
            generation_id,
            &offsets,
        )?;
        let accepted: Vec<CommittedOffset> = offsets
            .into_iter()
            .zip(&results)
            .filter(|(_, result)| result.is_ok())
            .map(|((partition, offset), _)| committed_offset(partition, offset))
            .collect();
        if accepted.is_empty() {
            return Ok(results);
        }
        let command = MetadataCommand::CommitOffsets {
            group: group_id.to_string(),
            offsets: accepted,
        };
        self.propose_as_coordinator(command).await?;
        Ok(results)
    }

    /// OffsetFetch in a cluster, as [`crate::GroupCoordinator::fetch_offsets`]: a
    /// linearizable read on the metadata leader, so it returns every acknowledged commit,
    /// also right after a failover.
    pub async fn fetch_offsets(
        &self,
        group_id: &str,
        partitions: Option<&[TopicPartition]>,
    ) -> Result<Vec<(TopicPartition, Option<OffsetAndMetadata>)>, GroupError> {
        let refused = match tokio::time::timeout(OFFSETS_WAIT_MAX, self.node.read_as_leader()).await
        {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => Some("leadership not confirmed in time".to_string()),
        };
        if let Some(reason) = refused {
            tracing::debug!(%reason, group = group_id, "offset fetch refused");
            // NOT_COORDINATOR only when another node leads. librdkafka does not retry an
            // OffsetFetch refused with it: the assignment it was fetching for then never
            // starts until the next rebalance, and none comes while this node stays the
            // coordinator (seen after cutting the metadata leader from the majority).
            // COORDINATOR_LOAD_IN_PROGRESS is retried, as for a loading Kafka coordinator.
            return Err(match self.controller() {
                Some(leader) if leader != self.node_id() => GroupError::NotCoordinator,
                _ => GroupError::CoordinatorLoadInProgress,
            });
        }
        let offsets = self.node.consumer_offsets();
        let convert = stored_offset;
        Ok(match partitions {
            Some(partitions) => partitions
                .iter()
                .map(|p| {
                    let found = offsets
                        .fetch(group_id, &p.topic, p.partition)
                        .map(|o| convert(o).1);
                    (p.clone(), found)
                })
                .collect(),
            None => offsets
                .group(group_id)
                .into_iter()
                .map(|o| {
                    let (partition, offset) = convert(o);
                    (partition, Some(offset))
                })
                .collect(),
        })
    }

    /// Committed offsets as applied on this node, without confirming leadership: for
    /// monitoring (lag, group listings), where a slightly stale answer is fine.
    pub fn applied_offsets(&self) -> &ReplicatedOffsets {
        self.node.consumer_offsets()
    }

    /// DeleteGroups in a cluster: the group must have no members on this coordinator (checked
    /// and marked by the local coordinator), then its offsets are deleted through the metadata
    /// group.
    pub async fn delete_group(&self, group_id: &str) -> Result<(), GroupError> {
        if self.controller() != Some(self.node_id()) {
            return Err(GroupError::NotCoordinator);
        }
        let local = self.broker.group_coordinator().delete_group(group_id).await;
        let known_locally = match local {
            Ok(()) => true,
            Err(GroupError::GroupIdNotFound) => false,
            Err(error) => return Err(error),
        };
        let response = self
            .propose_as_coordinator(MetadataCommand::DeleteGroupOffsets {
                group: group_id.to_string(),
                partitions: None,
            })
            .await?;
        match response {
            MetadataResponse::OffsetsDeleted { count: 0 } if !known_locally => {
                Err(GroupError::GroupIdNotFound)
            }
            _ => Ok(()),
        }
    }

    /// OffsetDelete in a cluster: checked by the local coordinator (membership lives on the
    /// metadata leader), then the allowed offsets are deleted through the metadata group.
    pub async fn delete_offsets(
        &self,
        group_id: &str,
        partitions: &[crate::group_coordinator::TopicPartition],
        subscribed_topics: impl Fn(&bytes::Bytes) -> Option<Vec<String>>,
    ) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        if self.controller() != Some(self.node_id()) {
            return Err(GroupError::NotCoordinator);
        }
        let coordinator = self.broker.group_coordinator();
        let live = coordinator.describe_group(group_id).state
            != crate::group_coordinator::GroupState::Dead;
        if !group_id.is_empty() && !live && !self.applied_offsets().has_offsets(group_id) {
            return Err(GroupError::GroupIdNotFound);
        }
        let results = coordinator.check_offset_deletion(group_id, partitions, subscribed_topics)?;
        let deleted: Vec<(String, i32)> = partitions
            .iter()
            .zip(&results)
            .filter(|(_, result)| result.is_ok())
            .map(|(partition, _)| (partition.topic.clone(), partition.partition))
            .collect();
        if !deleted.is_empty() {
            self.propose_as_coordinator(MetadataCommand::DeleteGroupOffsets {
                group: group_id.to_string(),
                partitions: Some(deleted),
            })
            .await?;
        }
        Ok(results)
    }

    /// A consumer-offsets write on the metadata leader, without forwarding (the caller's
    /// checks hold only on the coordinator). An unknown outcome is NOT_COORDINATOR too: the
    /// client was not answered, finds the coordinator again and retries.
    async fn propose_as_coordinator(
        &self,
        command: MetadataCommand,
    ) -> Result<MetadataResponse, GroupError> {
        match tokio::time::timeout(OFFSETS_WAIT_MAX, self.node.propose_as_leader(command)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => {
                tracing::debug!(%error, "consumer offsets write refused");
                Err(GroupError::NotCoordinator)
            }
            Err(_) => Err(GroupError::NotCoordinator),
        }
    }

    async fn propose(
        &self,
        command: MetadataCommand,
    ) -> Result<MetadataResponse, ReplicationError> {
        let response = self.node.propose(command).await?;
        match response {
            MetadataResponse::Rejected(rejection) => Err(match rejection {
                MetadataRejection::TopicExists(name) => BrokerError::TopicAlreadyExists(name),
                MetadataRejection::UnknownTopic(name) => BrokerError::UnknownTopicOrPartition(name),
                MetadataRejection::UnknownPartition { topic, partition } => {
                    BrokerError::UnknownTopicOrPartition(format!("{topic}-{partition}"))
                }
                MetadataRejection::InvalidAssignment(reason) => {
                    BrokerError::InvalidReplicationFactor(reason)
                }
                other => BrokerError::InvalidConfig(other.to_string()),
            }
            .into()),
            response => Ok(response),
        }
    }

    /// Waits (bounded) until this node knows the topic with `partitions` partitions and, if
    /// asked, a leader of each of them: clients that ask for metadata next then find leaders.
    async fn wait_for_topic(&self, name: &str, partitions: i32, leaders: bool) {
        let wait = async {
            let mut metadata = self.node.metadata();
            let _ = metadata
                .wait_for(|m| {
                    m.topics
                        .get(name)
                        .is_some_and(|t| t.assignments.len() as i32 >= partitions)
                })
                .await;
            if !leaders {
                return;
            }
            loop {
                let notified = self.reconciled.notified();
                let Some(topic) = self.topic(name) else {
                    return;
                };
                // Every partition, not only this node's: the others' leaders are known here
                // once they have reported themselves.
                let ready = (0..topic.assignments.len() as i32)
                    .all(|p| self.partition_view(&topic, p).leader.is_some());
                if ready {
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
            }
        };
        let _ = tokio::time::timeout(ADMIN_WAIT_MAX, wait).await;
    }

    /// AlterPartitionReassignments for one partition: records the target replicas (or, with
    /// `None`, cancels) in the metadata group. The partition's Raft leader then adds the new
    /// replicas as learners, waits until they caught up, changes the voters to the target and
    /// completes the move; replicas no longer assigned stop and delete their data. A cancel
    /// is refused once the leader has recorded that it is changing the voters (the move then
    /// completes, see [`MetadataCommand::BeginVoterChange`]).
    pub async fn reassign_partition(
        &self,
        topic: &str,
        partition: i32,
        target: Option<Vec<NodeId>>,
    ) -> Result<(), ReassignmentError> {
        let name = format!("{topic}-{partition}");
        let Ok(index) = u32::try_from(partition) else {
            return Err(ReassignmentError::UnknownTopicOrPartition(name));
        };
        let command = MetadataCommand::ReassignPartition {
            name: topic.to_string(),
            partition: index,
            target: target.clone(),
        };
        let response = self
            .node
            .propose(command)
            .await
            .map_err(ReplicationError::from)?;
        match response {
            MetadataResponse::Rejected(rejection) => Err(match rejection {
                MetadataRejection::UnknownTopic(_) | MetadataRejection::UnknownPartition { .. } => {
                    ReassignmentError::UnknownTopicOrPartition(name)
                }
                MetadataRejection::InvalidAssignment(reason) => {
                    ReassignmentError::InvalidAssignment(reason)
                }
                MetadataRejection::NoReassignment { .. } => {
                    ReassignmentError::NoReassignmentInProgress(name)
                }
                MetadataRejection::ReassignmentCompleting { .. } => {
                    ReassignmentError::Completing(name)
                }
                other => ReplicationError::Raft(other.to_string()).into(),
            }),
            _ => {
                // Read your writes: a ListPartitionReassignments sent here next sees it.
                let mut metadata = self.node.metadata();
                let applied = metadata.wait_for(|m| {
                    m.topics.get(topic).is_none_or(|t| {
                        let pending = t.reassignments.get(&index);
                        match &target {
                            None => pending.is_none(),
                            Some(target) => {
                                pending == Some(target)
                                    || t.assignments.get(index as usize) == Some(target)
                            }
                        }
                    })
                });
                let _ = tokio::time::timeout(ADMIN_WAIT_MAX, applied).await;
                Ok(())
            }
        }
    }

    /// Reassignments in progress, by topic and partition; `wanted` narrows them to the listed
    /// partitions of the listed topics (Kafka's ListPartitionReassignments).
    pub fn reassignments(
        &self,
        wanted: Option<&[(String, Vec<i32>)]>,
    ) -> Vec<PartitionReassignment> {
        let metadata = self.node.metadata().borrow().clone();
        let mut out = Vec::new();
        for topic in metadata.topics.values() {
            for (&partition, target) in &topic.reassignments {
                let index = partition as i32;
                if let Some(wanted) = wanted {
                    let listed = wanted
                        .iter()
                        .any(|(name, parts)| name == &topic.name && parts.contains(&index));
                    if !listed {
                        continue;
                    }
                }
                let current = topic
                    .assignments
                    .get(partition as usize)
                    .cloned()
                    .unwrap_or_default();
                let adding: Vec<NodeId> = target
                    .iter()
                    .filter(|id| !current.contains(id))
                    .copied()
                    .collect();
                let removing: Vec<NodeId> = current
                    .iter()
                    .filter(|id| !target.contains(id))
                    .copied()
                    .collect();
                let mut replicas = current;
                replicas.extend(adding.iter().copied());
                out.push(PartitionReassignment {
                    topic: topic.name.clone(),
                    partition: index,
                    replicas,
                    adding,
                    removing,
                });
            }
        }
        out
    }

    /// On every partition this node leads whose group membership differs from what the
    /// metadata wants (a reassignment, a learner left over from a cancel, voters the metadata
    /// does not know yet), starts one task that changes it.
    fn drive_membership_changes(self: &Arc<Self>, metadata: &ClusterMetadata) {
        let replicas: Vec<Arc<Replica>> = self.replicas.read().values().cloned().collect();
        for replica in replicas {
            if !replica.is_leader() {
                continue;
            }
            let Some(topic) = metadata.topics.get(replica.topic()) else {
                continue;
            };
            let partition = replica.index() as u32;
            let Some(assignment) = topic.assignments.get(partition as usize) else {
                continue;
            };
            let target = topic.reassignments.get(&partition).cloned();
            let (voters, learners, joint) = membership_of(&replica);
            let assigned: BTreeSet<NodeId> = assignment.iter().copied().collect();
            let needed = target.is_some() || !learners.is_empty() || (!joint && voters != assigned);
            if !needed {
                continue;
            }
            let key = (replica.topic_id(), replica.index());
            if !self.driving.lock().insert(key) {
                continue;
            }
            let cluster = Arc::clone(self);
            let assignment = assignment.clone();
            tokio::spawn(async move {
                let changing = cluster.change_membership(&replica, target, assignment);
                match tokio::time::timeout(MEMBERSHIP_CHANGE_WAIT_MAX, changing).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        tracing::warn!(topic = replica.topic(), partition = replica.index(), %error, "membership change failed; will retry")
                    }
                    Err(_) => {
                        tracing::warn!(
                            topic = replica.topic(),
                            partition = replica.index(),
                            "membership change timed out; will retry"
                        )
                    }
                }
                cluster.driving.lock().remove(&key);
            });
        }
    }

    /// One attempt, on the partition's leader, at bringing its group to `target` (a
    /// reassignment) or, with none, to the assignment; see [`Self::drive_membership_changes`].
    async fn change_membership(
        &self,
        replica: &Replica,
        target: Option<Vec<NodeId>>,
        assignment: Vec<NodeId>,
    ) -> Result<(), ReplicationError> {
        let raft = replica.raft();
        let raft_error = |e: String| ReplicationError::Raft(e);
        let (voters, learners, _) = membership_of(replica);
        let Some(target) = target else {
            if !learners.is_empty() {
                // Learners of a cancelled reassignment.
                tracing::info!(
                    topic = replica.topic(),
                    partition = replica.index(),
                    ?learners,
                    "removing learners"
                );
                raft.change_membership(openraft::ChangeMembers::RemoveNodes(learners), false)
                    .await
                    .map_err(|e| raft_error(e.to_string()))?;
            }
            let assigned: BTreeSet<NodeId> = assignment.iter().copied().collect();
            if voters != assigned {
                // The voters changed but the move was not recorded (its leader failed, or it
                // was cancelled too late): the metadata follows the group.
                self.complete_move(replica, voters.into_iter().collect())
                    .await?;
            }
            return Ok(());
        };
        let addresses = self.node.metadata().borrow().brokers.clone();
        let adding: Vec<NodeId> = target
            .iter()
            .filter(|id| !voters.contains(id))
            .copied()
            .collect();
        for &id in &adding {
            let cluster_addr = addresses
                .get(&id)
                .map(|a| a.cluster_addr.clone())
                .unwrap_or_default();
            tracing::info!(
                topic = replica.topic(),
                partition = replica.index(),
                node = id,
                "adding a learner"
            );
            raft.add_learner(
                id,
                NodeAddress {
                    cluster_addr,
                    kafka_addr: String::new(),
                },
                false,
            )
            .await
            .map_err(|e| raft_error(e.to_string()))?;
        }
        // Wait until the learners have what the leader had when they were added, checking
        // for a cancel meanwhile (the next round then removes them).
        let caught_up_to = raft.metrics().borrow().last_log_index.unwrap_or(0);
        let wanted = |cluster: &Self| {
            cluster
                .topic(replica.topic())
                .and_then(|t| t.reassignments.get(&(replica.index() as u32)).cloned())
                .as_ref()
                == Some(&target)
        };
        loop {
            if !wanted(self) {
                return Ok(());
            }
            let caught_up = {
                let metrics = raft.metrics();
                let metrics = metrics.borrow();
                let Some(replication) = metrics.replication.as_ref() else {
                    return Err(ReplicationError::NotLeader);
                };
                adding.iter().all(|id| {
                    replication
                        .get(id)
                        .and_then(|matched| matched.as_ref())
                        .is_some_and(|matched| matched.index >= caught_up_to)
                })
            };
            if caught_up {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let target_voters: BTreeSet<NodeId> = target.iter().copied().collect();
        if voters != target_voters {
            // The point of no return, recorded first: a cancel that loses this race is
            // refused, since once the voters change the replicas it would stop (and whose
            // data it would delete) may be voters.
            let began = self
                .node
                .propose(MetadataCommand::BeginVoterChange {
                    name: replica.topic().to_string(),
                    partition: replica.index() as u32,
                    target: target.clone(),
                })
                .await
                .map_err(ReplicationError::from)?;
            if let MetadataResponse::Rejected(_) = began {
                return Ok(()); // cancelled or changed meanwhile: the next round follows it
            }
            tracing::info!(
                topic = replica.topic(),
                partition = replica.index(),
                ?target,
                "changing the voters"
            );
            raft.change_membership(target_voters, false)
                .await
                .map_err(|e| raft_error(e.to_string()))?;
        }
        self.complete_move(replica, target).await
    }

    async fn complete_move(
        &self,
        replica: &Replica,
        replicas: Vec<NodeId>,
    ) -> Result<(), ReplicationError> {
        tracing::info!(
            topic = replica.topic(),
            partition = replica.index(),
            ?replicas,
            "reassignment complete"
        );
        self.propose(MetadataCommand::SetPartitionReplicas {
            name: replica.topic().to_string(),
            partition: replica.index() as u32,
            replicas,
        })
        .await
        .map(|_| ())
    }

    fn replica_dir(&self, topic_id: uuid::Uuid, partition: i32) -> PathBuf {
        self.broker
            .config()
            .data_dir
            .join("replicas")
            .join(format!("{topic_id}-{partition}"))
    }

    /// Follows the metadata: opens new replicas of this node, stops removed ones. Also keeps
    /// each replica's ISR sample and producer state current and wakes fetchers on commits.
    async fn follow_metadata(self: Arc<Self>) {
        let mut metadata = self.node.metadata();
        let mut stopped = self.stopped.subscribe();
        let mut tick = tokio::time::interval(replica::ISR_SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let retention_interval =
            Duration::from_millis(self.broker.config().retention_check_interval_ms.max(100));
        let mut retention_checked = tokio::time::Instant::now();
        loop {
            let current = metadata.borrow_and_update().clone();
            self.reconcile(&current).await;
            self.reconciled.notify_waiters();
            self.drive_membership_changes(&current);
            let mut retention_due = None;
            tokio::select! {
                changed = metadata.changed() => if changed.is_err() { return },
                _ = stopped.wait_for(|s| *s) => return,
                _ = tick.tick() => {
                    let replicas: Vec<Arc<Replica>> = self.replicas.read().values().cloned().collect();
                    for replica in &replicas {
                        replica.sample_in_sync();
                        if let Err(error) = replica.track_committed_producers() {
                            tracing::warn!(topic = replica.topic(), partition = replica.index(), %error, "reading producer state");
                        }
                        replica.release_followed_pages();
                    }
                    self.report_leaders(&replicas);
                    // Leadership moves without a metadata change: a new leader picks up a
                    // reassignment its predecessor did not finish.
                    {
                        let metadata = self.node.metadata();
                        let current = metadata.borrow();
                        self.drive_membership_changes(&current);
                    }
                    if retention_checked.elapsed() >= retention_interval {
                        retention_checked = tokio::time::Instant::now();
                        retention_due = Some(replicas);
                    }
                }
            }
            if let Some(replicas) = retention_due {
                let producer_expiration_ms = self.broker.config().producer_id_expiration_ms;
                Self::enforce_retention(replicas, producer_expiration_ms).await;
            }
        }
    }

    /// Retention on every replica, as on one node: the log's retention floor (the first
    /// entry Raft still needs) keeps it from deleting what followers may be sent. Idle
    /// idempotent producers are forgotten at the same time, as one node does.
    async fn enforce_retention(replicas: Vec<Arc<Replica>>, producer_expiration_ms: i64) {
        let deleted = tokio::task::spawn_blocking(move || {
            let now = crate::now_ms();
            let mut producers_expired = 0;
            for replica in replicas {
                producers_expired += replica.expire_producers(now, producer_expiration_ms);
                match replica.log().enforce_retention(now) {
                    Ok(0) => {}
                    Ok(segments) => tracing::info!(topic = replica.topic(), partition = replica.index(), segments, "retention deleted segments"),
                    Err(error) => tracing::warn!(topic = replica.topic(), partition = replica.index(), %error, "retention"),
                }
            }
            if producers_expired > 0 {
                tracing::info!(producers = producers_expired, "expired idle producer ids");
            }
        })
        .await;
        if let Err(error) = deleted {
            tracing::warn!(%error, "retention task");
        }
    }

    /// One compaction pass over every replica of a compacted topic on this node, as one node
    /// compacts its partitions: each replica cleans its own log, below its last stable offset
    /// and below the first batch its Raft log still holds (see `PartitionLog::clean`), as each
    /// Kafka broker cleans its own replica. Returns the records removed.
    pub fn compact_replicas(&self) -> u64 {
        let now = crate::now_ms();
        let replicas: Vec<Arc<Replica>> = self.replicas.read().values().cloned().collect();
        let mut removed = 0;
        for replica in replicas {
            let log = replica.log();
            if !log.config().compact {
                continue;
            }
            let stable = match replica.last_stable_offset() {
                Ok(stable) => stable,
                Err(error) => {
                    tracing::warn!(topic = replica.topic(), partition = replica.index(), %error, "reading producer state before compaction");
                    continue;
                }
            };
            removed +=
                crate::broker::compact_log(log, now, stable, replica.topic(), replica.index());
        }
        removed
    }

    fn start_log_cleaner(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let period = Duration::from_millis(self.broker.config().log_cleaner_backoff_ms.max(10));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(cluster) = weak.upgrade() else {
                    return;
                };
                if *cluster.stopped.borrow() {
                    return;
                }
                // One pass at a time: the next sleep starts after this one ends.
                let _ = tokio::task::spawn_blocking(move || cluster.compact_replicas()).await;
            }
        });
    }

    async fn reconcile(&self, metadata: &ClusterMetadata) {
        let node_id = self.node_id();
        let mut wanted: HashMap<(uuid::Uuid, i32), (&TopicMetadata, &Vec<NodeId>)> = HashMap::new();
        for topic in metadata.topics.values() {
            for (partition, replicas) in topic.assignments.iter().enumerate() {
                let adding_here = topic
                    .reassignments
                    .get(&(partition as u32))
                    .is_some_and(|target| target.contains(&node_id));
                if replicas.contains(&node_id) || adding_here {
                    wanted.insert((topic.topic_id, partition as i32), (topic, replicas));
                }
            }
        }
        let gone: Vec<(uuid::Uuid, i32)> = self
            .replicas
            .read()
            .keys()
            .filter(|key| !wanted.contains_key(key))
            .copied()
            .collect();
        for (topic_id, partition) in gone {
            self.remove_replica(topic_id, partition).await;
        }
        for ((topic_id, partition), (topic, replicas)) in wanted {
            if let Some(replica) = self.replica(topic_id, partition) {
                // Config changes (AlterConfigs) reach the open replicas' logs.
                let defaults = &self.broker.config().log_defaults;
                match TopicConfig::new(topic.configs.clone(), defaults)
                    .and_then(|c| Ok((c.log_config(defaults)?, c.timestamp_rules())))
                {
                    Ok((config, timestamps)) => {
                        if config != replica.log().config() {
                            replica.log().set_config(config)
                        }
                        replica.set_timestamp_rules(timestamps);
                    }
                    Err(error) => {
                        tracing::warn!(topic = %topic.name, %error, "invalid topic configs")
                    }
                }
                continue;
            }
            if let Err(error) = self
                .open_replica(topic, partition, replicas, metadata)
                .await
            {
                tracing::error!(topic = %topic.name, partition, %error, "cannot open the replica");
            }
        }
    }

    async fn open_replica(
        &self,
        topic: &TopicMetadata,
        partition: i32,
        replicas: &[NodeId],
        metadata: &ClusterMetadata,
    ) -> Result<(), ReplicationError> {
        let dir = self.replica_dir(topic.topic_id, partition);
        let storage = Arc::clone(&self.broker.config().storage);
        let topic_config =
            TopicConfig::new(topic.configs.clone(), &self.broker.config().log_defaults)?;
        let log_config = topic_config.log_config(&self.broker.config().log_defaults)?;
        let opening = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || {
                // A replica opened for the first time joins in the group's initialization.
                let fresh = storage.read_dir(&dir).is_err();
                partition::open(storage, &dir, log_config).map(|opened| (fresh, opened))
            })
        };
        let (fresh, (log_store, state_machine, _log)) = opening
            .await
            .map_err(|e| ReplicationError::Raft(format!("opening task: {e}")))?
            .map_err(|e| ReplicationError::Raft(e.to_string()))?;
        let terms = log_store.view();
        let progress = state_machine.progress();
        let group = GroupId::Partition {
            topic_id: topic.topic_id,
            partition,
        };
        let raft = self
            .node
            .start_group(group, log_store, state_machine)
            .await
            .map_err(|e| ReplicationError::Raft(e.to_string()))?;
        let initial_member =
            !topic.moved.contains(&(partition as u32)) && replicas.contains(&self.node_id());
        if fresh && initial_member {
            // Every replica initializes with the same membership, so whichever comes first,
            // they agree (as the metadata group's bootstrap); a restart finds its state and
            // does not initialize again. A replica added by a reassignment does not: the
            // leader adds it to the existing group, whose first entry it must not contradict.
            let members: BTreeMap<NodeId, NodeAddress> = replicas
                .iter()
                .map(|id| {
                    let cluster_addr = metadata
                        .brokers
                        .get(id)
                        .map(|a| a.cluster_addr.clone())
                        .unwrap_or_default();
                    (
                        *id,
                        NodeAddress {
                            cluster_addr,
                            kafka_addr: String::new(),
                        },
                    )
                })
                .collect();
            // Initializing starts an election at once. The preferred replica (the first;
            // placement spreads them over the nodes) goes first and wins, so a new topic's
            // leaders are spread as Kafka's are; the others follow a moment later, which only
            // matters when the preferred one is down (they then elect among themselves). Were
            // all to start together, the highest node id would win every tie.
            let head_start = if replicas.first() == Some(&self.node_id()) {
                Duration::ZERO
            } else {
                PREFERRED_LEADER_HEAD_START
            };
            let raft = raft.clone();
            let name = topic.name.clone();
            tokio::spawn(async move {
                tokio::time::sleep(head_start).await;
                match raft.initialize(members).await {
                    Ok(()) => {}
                    Err(openraft::error::RaftError::APIError(
                        openraft::error::InitializeError::NotAllowed(_),
                    )) => {}
                    Err(e) => {
                        tracing::warn!(topic = %name, partition, error = %e, "initializing the partition group")
                    }
                }
            });
        }
        let replica = Arc::new(Replica::new(
            topic.name.clone(),
            topic.topic_id,
            partition,
            self.node_id(),
            raft,
            terms,
        ));
        replica.set_timestamp_rules(topic_config.timestamp_rules());
        // Wake long-polling fetchers whenever the high watermark moves.
        let data_ready = Arc::clone(self.broker.data_ready());
        let mut progress = progress;
        tokio::spawn(async move {
            while progress.changed().await.is_ok() {
                data_ready.notify_waiters();
            }
        });
        tracing::info!(topic = %topic.name, partition, fresh, "replica opened");
        self.replicas
            .write()
            .insert((topic.topic_id, partition), replica);
        Ok(())
    }

    async fn remove_replica(&self, topic_id: uuid::Uuid, partition: i32) {
        let Some(replica) = self.replicas.write().remove(&(topic_id, partition)) else {
            return;
        };
        self.node
            .stop_group(GroupId::Partition {
                topic_id,
                partition,
            })
            .await;
        let dir = self.replica_dir(topic_id, partition);
        let storage = Arc::clone(&self.broker.config().storage);
        tracing::info!(
            topic = replica.topic(),
            partition,
            "replica removed: deleting its data"
        );
        drop(replica);
        let removed = tokio::task::spawn_blocking(move || storage.remove_dir_all(&dir)).await;
        if let Ok(Err(error)) = removed {
            tracing::warn!(%error, "deleting a removed replica's data");
        }
    }

    /// Stops every partition group, the metadata group and the transport.
    pub async fn shutdown(&self) {
        self.stopped.send_replace(true);
        self.node.shutdown().await;
        let replicas: Vec<Arc<Replica>> = self.replicas.write().drain().map(|(_, r)| r).collect();
        for replica in replicas {
            if let Err(error) = replica.log().flush() {
                tracing::warn!(topic = replica.topic(), %error, "flushing a replica on shutdown");
            }
        }
    }
}

/// A partition group's voters, learners, and whether a joint (in-between) config is in force.
fn membership_of(replica: &Replica) -> (BTreeSet<NodeId>, BTreeSet<NodeId>, bool) {
    let metrics = replica.raft().metrics();
    let metrics = metrics.borrow();
    let membership = metrics.membership_config.membership();
    (
        membership.voter_ids().collect(),
        membership.learner_ids().collect(),
        membership.get_joint_config().len() > 1,
    )
}

/// An offset as the metadata group stores it (consumer offsets and share states alike).
fn committed_offset(partition: TopicPartition, offset: OffsetAndMetadata) -> CommittedOffset {
    CommittedOffset {
        topic: partition.topic,
        partition: partition.partition,
        offset: offset.offset,
        leader_epoch: offset.leader_epoch,
        metadata: offset.metadata,
        commit_timestamp_ms: offset.commit_timestamp_ms,
    }
}

/// [`committed_offset`] the other way.
fn stored_offset(offset: CommittedOffset) -> (TopicPartition, OffsetAndMetadata) {
    (
        TopicPartition {
            topic: offset.topic,
            partition: offset.partition,
        },
        OffsetAndMetadata {
            offset: offset.offset,
            leader_epoch: offset.leader_epoch,
            metadata: offset.metadata,
            commit_timestamp_ms: offset.commit_timestamp_ms,
        },
    )
}

/// Kafka's refusal of a replication factor larger than the registered brokers.
pub fn unreachable_replication_factor(replication_factor: i32, brokers: usize) -> String {
    format!(
        "Unable to replicate the partition {replication_factor} time(s): The target replication \
         factor of {replication_factor} cannot be reached because only {brokers} broker(s) are \
         registered."
    )
}
