//! The metadata state machine: [`ClusterMetadata`] in memory, published on a `watch` after
//! every apply, and persisted only as snapshots (`snapshot.json`: the snapshot's meta and the
//! metadata as JSON). After a restart it starts from the last snapshot and openraft re-applies
//! the committed entries after it from the log.
//!
//! Committed consumer offsets ([`ConsumerOffsets`]) are applied here too but kept apart from
//! the published metadata (see [`ReplicatedOffsets`]); they are part of every snapshot.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use sluice_log::Storage;
use tokio::sync::watch;

use super::log_store::{read_file_if_exists, write_file_atomically, MetadataStoreError};
use super::{
    ClusterMetadata, CommittedOffset, ConsumerOffsets, MetadataCommand, MetadataRaft,
    MetadataRejection, MetadataResponse, PartitionLeader, SecurityDocument, SecurityDocuments,
    TopicMetadata, TransactionStates,
};
use crate::{NodeAddress, NodeId};

const SNAPSHOT_FILE: &str = "snapshot.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, NodeAddress>,
    metadata: ClusterMetadata,
    /// Absent in snapshots written before offsets were replicated.
    #[serde(default)]
    consumer_offsets: ConsumerOffsets,
    /// Absent in snapshots written before leaders were reported.
    #[serde(default)]
    partition_leaders: Vec<PartitionLeader>,
    /// Absent in snapshots written before transactions were replicated.
    #[serde(default)]
    transactions: TransactionStates,
    /// Absent in snapshots written before share groups were replicated.
    #[serde(default)]
    share_states: ConsumerOffsets,
    /// Absent in snapshots written before security documents were replicated.
    #[serde(default)]
    security: SecurityDocuments,
}

/// What a snapshot sent to a lagging follower carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotPayload {
    metadata: ClusterMetadata,
    consumer_offsets: ConsumerOffsets,
    #[serde(default)]
    partition_leaders: Vec<PartitionLeader>,
    #[serde(default)]
    transactions: TransactionStates,
    #[serde(default)]
    share_states: ConsumerOffsets,
    #[serde(default)]
    security: SecurityDocuments,
}

/// A read handle on the partition leaders as reported through the metadata group and applied
/// on this node. Kept apart from the published [`ClusterMetadata`] like the offsets: leader
/// and ISR changes need not make every node reconcile its replicas. A report only replaces one
/// of an older or equal term, so a late report of a deposed leader cannot win.
#[derive(Clone, Default)]
pub struct PartitionLeaders {
    leaders: Arc<RwLock<BTreeMap<(uuid::Uuid, i32), PartitionLeader>>>,
}

impl PartitionLeaders {
    /// The last reported leader of one partition.
    pub fn get(&self, topic_id: uuid::Uuid, partition: i32) -> Option<PartitionLeader> {
        self.leaders.read().get(&(topic_id, partition)).cloned()
    }

    fn apply(&self, reports: &[PartitionLeader]) {
        let mut leaders = self.leaders.write();
        for report in reports {
            let key = (report.topic_id, report.partition);
            if leaders
                .get(&key)
                .is_none_or(|known| known.term <= report.term)
            {
                leaders.insert(key, report.clone());
            }
        }
    }

    /// Drops the leaders of topics that no longer exist.
    fn retain_topics(&self, metadata: &ClusterMetadata) {
        let live: std::collections::HashSet<uuid::Uuid> =
            metadata.topics.values().map(|t| t.topic_id).collect();
        self.leaders
            .write()
            .retain(|(topic_id, _), _| live.contains(topic_id));
    }

    fn to_vec(&self) -> Vec<PartitionLeader> {
        self.leaders.read().values().cloned().collect()
    }

    fn replace(&self, reports: Vec<PartitionLeader>) {
        let mut leaders = self.leaders.write();
        leaders.clear();
        for report in reports {
            leaders.insert((report.topic_id, report.partition), report);
        }
    }
}

/// A read handle on the committed consumer offsets as applied on this node. On the metadata
/// leader, after `Raft::ensure_linearizable`, it holds every acknowledged commit.
#[derive(Clone, Default)]
pub struct ReplicatedOffsets {
    offsets: Arc<RwLock<ConsumerOffsets>>,
}

impl ReplicatedOffsets {
    /// The committed offset of one partition.
    pub fn fetch(&self, group: &str, topic: &str, partition: i32) -> Option<CommittedOffset> {
        self.offsets
            .read()
            .get(group)
            .and_then(|topics| topics.get(topic))
            .and_then(|partitions| partitions.get(&partition))
            .cloned()
    }

    /// Every committed offset of a group, sorted by topic and partition.
    pub fn group(&self, group: &str) -> Vec<CommittedOffset> {
        self.offsets
            .read()
            .get(group)
            .map(|topics| {
                topics
                    .values()
                    .flat_map(|partitions| partitions.values().cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Groups with at least one committed offset, sorted.
    pub fn groups(&self) -> Vec<String> {
        self.offsets.read().keys().cloned().collect()
    }

    pub fn has_offsets(&self, group: &str) -> bool {
        self.offsets.read().contains_key(group)
    }
}

/// A read handle on the transaction coordinator's states as applied on this node. On the
/// metadata leader, after `Raft::ensure_linearizable`, it holds every acknowledged change.
#[derive(Clone, Default)]
pub struct ReplicatedTransactions {
    states: Arc<RwLock<TransactionStates>>,
}

impl ReplicatedTransactions {
    /// One transactional id's encoded state.
    pub fn get(&self, transactional_id: &str) -> Option<String> {
        self.states.read().get(transactional_id).cloned()
    }

    /// Every transactional id with its encoded state, sorted by id.
    pub fn all(&self) -> Vec<(String, String)> {
        self.states
            .read()
            .iter()
            .map(|(id, state)| (id.clone(), state.clone()))
            .collect()
    }

    fn apply(&self, transactional_id: &str, state: Option<&String>) {
        let mut states = self.states.write();
        match state {
            Some(state) => {
                states.insert(transactional_id.to_string(), state.clone());
            }
            None => {
                states.remove(transactional_id);
            }
        }
    }
}

/// The security documents as applied on this node, published on a `watch`: every node
/// installs each new version into its stores (see the auth crate's `ReplicatedDocument`).
#[derive(Clone)]
pub struct ReplicatedSecurity {
    documents: Arc<watch::Sender<SecurityDocuments>>,
}

impl Default for ReplicatedSecurity {
    fn default() -> Self {
        ReplicatedSecurity {
            documents: Arc::new(watch::channel(SecurityDocuments::new()).0),
        }
    }
}

impl ReplicatedSecurity {
    /// The documents as of the last apply, and every change after it.
    pub fn subscribe(&self) -> watch::Receiver<SecurityDocuments> {
        self.documents.subscribe()
    }

    pub fn get(&self, kind: &str) -> Option<SecurityDocument> {
        self.documents.borrow().get(kind).cloned()
    }

    fn all(&self) -> SecurityDocuments {
        self.documents.borrow().clone()
    }

    fn replace(&self, documents: SecurityDocuments) {
        self.documents.send_replace(documents);
    }

    /// Compare-and-set: the next version if `base_version` is the latest (0: none yet), the
    /// same answer again for a change already applied (a proposal retried across a leader
    /// change may be committed twice).
    fn apply(
        &self,
        kind: String,
        base_version: u64,
        change_id: u64,
        document: String,
    ) -> MetadataResponse {
        let mut response = MetadataResponse::Done;
        self.documents.send_if_modified(|documents| {
            let current = documents.get(&kind);
            let version = current.map_or(0, |d| d.version);
            if let Some(current) = current.filter(|d| d.change_id == change_id) {
                response = MetadataResponse::SecurityDocumentVersion {
                    version: current.version,
                };
                return false;
            }
            if version != base_version {
                response = MetadataResponse::Rejected(MetadataRejection::StaleSecurityDocument {
                    kind: kind.clone(),
                    version,
                });
                return false;
            }
            let version = version + 1;
            documents.insert(
                kind.clone(),
                SecurityDocument {
                    version,
                    change_id,
                    document: document.clone(),
                },
            );
            response = MetadataResponse::SecurityDocumentVersion { version };
            true
        });
        response
    }
}

struct MachineState {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, NodeAddress>,
    metadata: ClusterMetadata,
    snapshot: Option<StoredSnapshot>,
    snapshots_built: u64,
}

/// The metadata group's `RaftStateMachine`; clones share one state (one is the snapshot builder).
#[derive(Clone)]
pub struct MetadataStateMachine {
    state: Arc<Mutex<MachineState>>,
    published: Arc<watch::Sender<ClusterMetadata>>,
    /// Written only while `state` is locked, so a snapshot sees both at one log position.
    offsets: ReplicatedOffsets,
    /// Written only while `state` is locked, as `offsets`.
    leaders: PartitionLeaders,
    /// Written only while `state` is locked, as `offsets`.
    transactions: ReplicatedTransactions,
    /// Share groups' share-partition states; written only while `state` is locked.
    share_states: ReplicatedOffsets,
    /// Written only while `state` is locked, as `offsets`.
    security: ReplicatedSecurity,
    storage: Arc<dyn Storage>,
    dir: PathBuf,
}

impl MetadataStateMachine {
    /// Opens the state machine in `dir`, restoring the last snapshot if there is one.
    pub fn open(storage: Arc<dyn Storage>, dir: &Path) -> Result<Self, MetadataStoreError> {
        storage
            .create_dir_all_durable(dir)
            .map_err(|source| MetadataStoreError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        let path = dir.join(SNAPSHOT_FILE);
        let snapshot: Option<StoredSnapshot> =
            match read_file_if_exists(storage.as_ref(), &path) {
                Ok(Some(bytes)) => Some(serde_json::from_slice(&bytes).map_err(|e| {
                    MetadataStoreError::Corrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    }
                })?),
                Ok(None) => None,
                Err(source) => return Err(MetadataStoreError::Io { path, source }),
            };
        let offsets = ReplicatedOffsets::default();
        let leaders = PartitionLeaders::default();
        let transactions = ReplicatedTransactions::default();
        let share_states = ReplicatedOffsets::default();
        let security = ReplicatedSecurity::default();
        if let Some(stored) = &snapshot {
            security.replace(stored.security.clone());
            *share_states.offsets.write() = stored.share_states.clone();
            *offsets.offsets.write() = stored.consumer_offsets.clone();
            leaders.replace(stored.partition_leaders.clone());
            *transactions.states.write() = stored.transactions.clone();
        }
        let state = match &snapshot {
            Some(stored) => MachineState {
                last_applied: stored.meta.last_log_id,
                last_membership: stored.meta.last_membership.clone(),
                metadata: stored.metadata.clone(),
                snapshot: snapshot.clone(),
                snapshots_built: 0,
            },
            None => MachineState {
                last_applied: None,
                last_membership: StoredMembership::default(),
                metadata: ClusterMetadata::default(),
                snapshot: None,
                snapshots_built: 0,
            },
        };
        let (published, _) = watch::channel(state.metadata.clone());
        Ok(Self {
            state: Arc::new(Mutex::new(state)),
            published: Arc::new(published),
            offsets,
            leaders,
            transactions,
            share_states,
            security,
            storage,
            dir: dir.to_path_buf(),
        })
    }

    /// The metadata as of the last apply, and every change after it.
    pub fn subscribe(&self) -> watch::Receiver<ClusterMetadata> {
        self.published.subscribe()
    }

    /// The committed consumer offsets as applied here.
    pub fn consumer_offsets(&self) -> ReplicatedOffsets {
        self.offsets.clone()
    }

    /// The partition leaders as reported and applied here.
    pub fn partition_leaders(&self) -> PartitionLeaders {
        self.leaders.clone()
    }

    /// The transaction coordinator's states as applied here.
    pub fn transactions(&self) -> ReplicatedTransactions {
        self.transactions.clone()
    }

    /// The share groups' share-partition states as applied here.
    pub fn share_states(&self) -> ReplicatedOffsets {
        self.share_states.clone()
    }

    /// The security documents as applied here.
    pub fn security(&self) -> ReplicatedSecurity {
        self.security.clone()
    }

    fn persist(&self, snapshot: &StoredSnapshot) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(snapshot).map_err(std::io::Error::other)?;
        write_file_atomically(self.storage.as_ref(), &self.dir, SNAPSHOT_FILE, &bytes)
    }
}

/// Applies one command to `metadata`, deterministically (every replica must agree).
pub(super) fn apply_command(
    metadata: &mut ClusterMetadata,
    command: MetadataCommand,
) -> MetadataResponse {
    use MetadataRejection as Reject;
    let rejected = |r| MetadataResponse::Rejected(r);
    match command {
        MetadataCommand::RegisterBroker { node_id, address } => {
            metadata.brokers.insert(node_id, address);
            MetadataResponse::Done
        }
        MetadataCommand::UnregisterBroker { node_id } => {
            let hosted = metadata.partitions_hosted_by(node_id);
            if !hosted.is_empty() {
                return rejected(Reject::BrokerHostsReplicas {
                    node_id,
                    partitions: hosted,
                });
            }
            metadata.brokers.remove(&node_id);
            MetadataResponse::Done
        }
        MetadataCommand::CreateTopic {
            name,
            topic_id,
            partition_count,
            replication_factor,
            assignments,
            configs,
        } => {
            if metadata.topics.contains_key(&name) {
                return rejected(Reject::TopicExists(name));
            }
            if metadata.topic_by_id(topic_id).is_some() {
                return rejected(Reject::TopicIdInUse(topic_id));
            }
            if assignments.len() != partition_count as usize {
                return rejected(Reject::InvalidAssignment(format!(
                    "{} assignments for {partition_count} partitions",
                    assignments.len()
                )));
            }
            if let Err(reason) = check_assignments(&assignments, Some(replication_factor)) {
                return rejected(Reject::InvalidAssignment(reason));
            }
            metadata.topics.insert(
                name.clone(),
                TopicMetadata {
                    name,
                    topic_id,
                    replication_factor,
                    assignments,
                    configs,
                    reassignments: BTreeMap::new(),
                    moved: Default::default(),
                    completing: BTreeMap::new(),
                },
            );
            MetadataResponse::Done
        }
        MetadataCommand::DeleteTopic { name } => match metadata.topics.remove(&name) {
            Some(_) => MetadataResponse::Done,
            None => rejected(Reject::UnknownTopic(name)),
        },
        MetadataCommand::CreatePartitions { name, assignments } => {
            let Some(topic) = metadata.topics.get_mut(&name) else {
                return rejected(Reject::UnknownTopic(name));
            };
            if let Err(reason) = check_assignments(&assignments, None) {
                return rejected(Reject::InvalidAssignment(reason));
            }
            topic.assignments.extend(assignments);
            MetadataResponse::Done
        }
        MetadataCommand::AlterTopicConfigs { name, set, delete } => {
            let Some(topic) = metadata.topics.get_mut(&name) else {
                return rejected(Reject::UnknownTopic(name));
            };
            for key in delete {
                topic.configs.remove(&key);
            }
            topic.configs.extend(set);
            MetadataResponse::Done
        }
        MetadataCommand::AllocateProducerIdBlock {
            node_id: _,
            block_size,
        } => {
            let first_producer_id = metadata.next_producer_id;
            match first_producer_id.checked_add(i64::from(block_size)) {
                Some(next) => {
                    metadata.next_producer_id = next;
                    MetadataResponse::ProducerIdBlock {
                        first_producer_id,
                        count: block_size,
                    }
                }
                None => rejected(Reject::ProducerIdsExhausted),
            }
        }
        // Applied by `apply_offsets_command` / `PartitionLeaders`; never reach here from `apply`.
        MetadataCommand::CommitOffsets { .. }
        | MetadataCommand::DeleteGroupOffsets { .. }
        | MetadataCommand::ReportPartitionLeaders { .. }
        | MetadataCommand::CommitShareState { .. }
        | MetadataCommand::DeleteShareState { .. }
        | MetadataCommand::SaveTransactionState { .. }
        | MetadataCommand::ReplaceSecurityDocument { .. } => MetadataResponse::Done,
        MetadataCommand::ReassignPartition {
            name,
            partition,
            target,
        } => {
            let Some(topic) = metadata.topics.get_mut(&name) else {
                return rejected(Reject::UnknownTopic(name));
            };
            if partition as usize >= topic.assignments.len() {
                return rejected(Reject::UnknownPartition {
                    topic: name,
                    partition,
                });
            }
            let Some(target) = target else {
                if let Some(completing) = topic.completing.get(&partition) {
                    return rejected(Reject::ReassignmentCompleting {
                        topic: name,
                        partition,
                        target: completing.clone(),
                    });
                }
                return match topic.reassignments.remove(&partition) {
                    Some(_) => MetadataResponse::Done,
                    None => rejected(Reject::NoReassignment {
                        topic: name,
                        partition,
                    }),
                };
            };
            if let Err(reason) = check_assignments(std::slice::from_ref(&target), None) {
                return rejected(Reject::InvalidAssignment(reason));
            }
            if let Some(unknown) = target.iter().find(|id| !metadata.brokers.contains_key(id)) {
                return rejected(Reject::InvalidAssignment(format!(
                    "broker {unknown} is not registered"
                )));
            }
            if topic.completing.contains_key(&partition) {
                // The completing move finishes first; this target follows it (unless it is
                // where that move ends, see SetPartitionReplicas).
                topic.reassignments.insert(partition, target);
            } else if topic.assignments[partition as usize] == target {
                // Already there: a reassignment to the current replicas ends any in progress.
                topic.reassignments.remove(&partition);
            } else {
                topic.reassignments.insert(partition, target);
            }
            MetadataResponse::Done
        }
        MetadataCommand::BeginVoterChange {
            name,
            partition,
            target,
        } => {
            let Some(topic) = metadata.topics.get_mut(&name) else {
                return rejected(Reject::UnknownTopic(name));
            };
            if topic.reassignments.get(&partition) != Some(&target) {
                return rejected(Reject::NoReassignment {
                    topic: name,
                    partition,
                });
            }
            topic.completing.insert(partition, target);
            MetadataResponse::Done
        }
        MetadataCommand::SetPartitionReplicas {
            name,
            partition,
            replicas,
        } => {
            let Some(topic) = metadata.topics.get_mut(&name) else {
                return rejected(Reject::UnknownTopic(name));
            };
            if let Err(reason) = check_assignments(std::slice::from_ref(&replicas), None) {
                return rejected(Reject::InvalidAssignment(reason));
            }
            match topic.assignments.get_mut(partition as usize) {
                Some(current) => {
                    if topic.reassignments.get(&partition) == Some(&replicas) {
                        topic.reassignments.remove(&partition);
                    }
                    topic.completing.remove(&partition);
                    *current = replicas;
                    topic.moved.insert(partition);
                    MetadataResponse::Done
                }
                None => rejected(Reject::UnknownPartition {
                    topic: name,
                    partition,
                }),
            }
        }
    }
}

/// Applies a consumer-offsets or share-state command to `offsets` (the map it names); `None`
/// for any other command.
pub(super) fn apply_offsets_command(
    offsets: &mut ConsumerOffsets,
    command: &MetadataCommand,
) -> Option<MetadataResponse> {
    match command {
        MetadataCommand::CommitOffsets {
            group,
            offsets: committed,
        }
        | MetadataCommand::CommitShareState {
            group,
            offsets: committed,
        } => {
            let topics = offsets.entry(group.clone()).or_default();
            for offset in committed {
                topics
                    .entry(offset.topic.clone())
                    .or_default()
                    .insert(offset.partition, offset.clone());
            }
            Some(MetadataResponse::Done)
        }
        MetadataCommand::DeleteGroupOffsets { group, partitions }
        | MetadataCommand::DeleteShareState { group, partitions } => {
            let removed = match partitions {
                None => offsets.remove(group).map_or(0, |topics| {
                    topics.values().map(BTreeMap::len).sum::<usize>()
                }),
                Some(partitions) => {
                    let mut removed = 0;
                    if let Some(topics) = offsets.get_mut(group) {
                        for (topic, partition) in partitions {
                            if let Some(by_partition) = topics.get_mut(topic) {
                                removed += usize::from(by_partition.remove(partition).is_some());
                                if by_partition.is_empty() {
                                    topics.remove(topic);
                                }
                            }
                        }
                        if topics.is_empty() {
                            offsets.remove(group);
                        }
                    }
                    removed
                }
            };
            Some(MetadataResponse::OffsetsDeleted {
                count: removed as u64,
            })
        }
        _ => None,
    }
}

/// Whether `node_id` is a voter or learner of the metadata group as of the last applied
/// membership (any node, before one is known: only state-machine tests apply without one).
fn is_member(membership: &StoredMembership<NodeId, NodeAddress>, node_id: NodeId) -> bool {
    let membership = membership.membership();
    membership.nodes().next().is_none() || membership.get_node(&node_id).is_some()
}

fn check_assignments(
    assignments: &[Vec<NodeId>],
    replication_factor: Option<u16>,
) -> Result<(), String> {
    for (partition, replicas) in assignments.iter().enumerate() {
        if replicas.is_empty() {
            return Err(format!("partition {partition} has no replicas"));
        }
        if replication_factor.is_some_and(|rf| replicas.len() != usize::from(rf)) {
            return Err(format!(
                "partition {partition} has {} replicas",
                replicas.len()
            ));
        }
        let mut unique = replicas.clone();
        unique.sort_unstable();
        unique.dedup();
        if unique.len() != replicas.len() {
            return Err(format!("partition {partition} lists a broker twice"));
        }
    }
    Ok(())
}

impl RaftSnapshotBuilder<MetadataRaft> for MetadataStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<MetadataRaft>, StorageError<NodeId>> {
        let stored = {
            let mut state = self.state.lock();
            state.snapshots_built += 1;
            let snapshot_id = match state.last_applied {
                Some(id) => format!("{}-{}-{}", id.leader_id, id.index, state.snapshots_built),
                None => format!("none-{}", state.snapshots_built),
            };
            StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: state.last_applied,
                    last_membership: state.last_membership.clone(),
                    snapshot_id,
                },
                metadata: state.metadata.clone(),
                consumer_offsets: self.offsets.offsets.read().clone(),
                partition_leaders: self.leaders.to_vec(),
                transactions: self.transactions.states.read().clone(),
                share_states: self.share_states.offsets.read().clone(),
                security: self.security.all(),
            }
        };
        let data = serde_json::to_vec(&SnapshotPayload {
            metadata: stored.metadata.clone(),
            consumer_offsets: stored.consumer_offsets.clone(),
            partition_leaders: stored.partition_leaders.clone(),
            transactions: stored.transactions.clone(),
            share_states: stored.share_states.clone(),
            security: stored.security.clone(),
        })
        .map_err(|e| {
            StorageIOError::write_snapshot(Some(stored.meta.signature()), AnyError::new(&e))
        })?;
        self.persist(&stored).map_err(|e| {
            StorageIOError::write_snapshot(Some(stored.meta.signature()), AnyError::new(&e))
        })?;
        let meta = stored.meta.clone();
        self.state.lock().snapshot = Some(stored);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<MetadataRaft> for MetadataStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeAddress>), StorageError<NodeId>>
    {
        let state = self.state.lock();
        Ok((state.last_applied, state.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<MetadataResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<MetadataRaft>> + Send,
        I::IntoIter: Send,
    {
        let mut responses = Vec::new();
        // Offset commits alone do not republish the metadata: every node reconciles on each
        // publication, and commits are frequent.
        let mut metadata_changed = false;
        let metadata = {
            let mut state = self.state.lock();
            for entry in entries {
                state.last_applied = Some(entry.log_id);
                state.metadata.applied_index = entry.log_id.index;
                let response = match entry.payload {
                    EntryPayload::Blank => MetadataResponse::Done,
                    EntryPayload::Normal(MetadataCommand::ReportPartitionLeaders { reports }) => {
                        self.leaders.apply(&reports);
                        MetadataResponse::Done
                    }
                    EntryPayload::Normal(
                        command @ (MetadataCommand::CommitShareState { .. }
                        | MetadataCommand::DeleteShareState { .. }),
                    ) => {
                        let mut share_states = self.share_states.offsets.write();
                        apply_offsets_command(&mut share_states, &command)
                            .unwrap_or(MetadataResponse::Done)
                    }
                    EntryPayload::Normal(MetadataCommand::ReplaceSecurityDocument {
                        kind,
                        base_version,
                        change_id,
                        document,
                    }) => self.security.apply(kind, base_version, change_id, document),
                    EntryPayload::Normal(MetadataCommand::SaveTransactionState {
                        transactional_id,
                        state,
                    }) => {
                        self.transactions.apply(&transactional_id, state.as_ref());
                        MetadataResponse::Done
                    }
                    EntryPayload::Normal(MetadataCommand::RegisterBroker { node_id, .. })
                        if !is_member(&state.last_membership, node_id) =>
                    {
                        MetadataResponse::Rejected(MetadataRejection::NotAMember(node_id))
                    }
                    EntryPayload::Normal(command) => {
                        let mut offsets = self.offsets.offsets.write();
                        match apply_offsets_command(&mut offsets, &command) {
                            Some(response) => response,
                            None => {
                                metadata_changed = true;
                                apply_command(&mut state.metadata, command)
                            }
                        }
                    }
                    EntryPayload::Membership(membership) => {
                        metadata_changed = true;
                        state.last_membership =
                            StoredMembership::new(Some(entry.log_id), membership);
                        MetadataResponse::Done
                    }
                };
                responses.push(response);
            }
            if metadata_changed {
                self.leaders.retain_topics(&state.metadata);
            }
            metadata_changed.then(|| state.metadata.clone())
        };
        if let Some(metadata) = metadata {
            self.published.send_replace(metadata);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeAddress>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let SnapshotPayload {
            metadata,
            consumer_offsets,
            partition_leaders,
            transactions,
            share_states,
            security,
        } = serde_json::from_slice(snapshot.get_ref()).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), AnyError::new(&e))
        })?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            metadata: metadata.clone(),
            consumer_offsets: consumer_offsets.clone(),
            partition_leaders: partition_leaders.clone(),
            transactions: transactions.clone(),
            share_states: share_states.clone(),
            security: security.clone(),
        };
        self.persist(&stored).map_err(|e| {
            StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e))
        })?;
        {
            let mut state = self.state.lock();
            state.last_applied = meta.last_log_id;
            state.last_membership = meta.last_membership.clone();
            state.metadata = metadata.clone();
            *self.offsets.offsets.write() = consumer_offsets;
            self.leaders.replace(partition_leaders);
            *self.transactions.states.write() = transactions;
            *self.share_states.offsets.write() = share_states;
            self.security.replace(security);
            state.snapshot = Some(stored);
        }
        self.published.send_replace(metadata);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<MetadataRaft>>, StorageError<NodeId>> {
        let Some(stored) = self.state.lock().snapshot.clone() else {
            return Ok(None);
        };
        let data = serde_json::to_vec(&SnapshotPayload {
            metadata: stored.metadata,
            consumer_offsets: stored.consumer_offsets,
            partition_leaders: stored.partition_leaders,
            transactions: stored.transactions,
            share_states: stored.share_states,
            security: stored.security,
        })
        .map_err(|e| {
            StorageIOError::read_snapshot(Some(stored.meta.signature()), AnyError::new(&e))
        })?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_report_of_an_older_term_does_not_replace_a_newer_one() {
        let topic_id = uuid::Uuid::from_u128(7);
        let report = |leader, term| PartitionLeader {
            topic_id,
            partition: 0,
            leader,
            term,
            isr: vec![leader],
        };
        let leaders = PartitionLeaders::default();
        leaders.apply(&[report(1, 3)]);
        leaders.apply(&[report(2, 5)]);
        // A deposed leader's report committed late loses to the newer term.
        leaders.apply(&[report(1, 4)]);
        assert_eq!(leaders.get(topic_id, 0), Some(report(2, 5)));
        // Same term: the ISR may change.
        let mut wider = report(2, 5);
        wider.isr = vec![2, 3];
        leaders.apply(std::slice::from_ref(&wider));
        assert_eq!(leaders.get(topic_id, 0), Some(wider));
        // Deleting the topic forgets its leaders.
        leaders.retain_topics(&ClusterMetadata::default());
        assert_eq!(leaders.get(topic_id, 0), None);
    }

    #[test]
    fn commands_change_metadata_and_rejections_leave_it_alone() {
        let mut metadata = ClusterMetadata::default();
        let topic_id = uuid::Uuid::from_u128(1);
        let create = MetadataCommand::CreateTopic {
            name: "t".into(),
            topic_id,
            partition_count: 2,
            replication_factor: 2,
            assignments: vec![vec![1, 2], vec![2, 1]],
            configs: [("retention.ms".to_string(), "1000".to_string())].into(),
        };
        assert_eq!(
            apply_command(&mut metadata, create.clone()),
            MetadataResponse::Done
        );
        assert_eq!(
            apply_command(&mut metadata, create),
            MetadataResponse::Rejected(MetadataRejection::TopicExists("t".into()))
        );
        let bad = MetadataCommand::SetPartitionReplicas {
            name: "t".into(),
            partition: 0,
            replicas: vec![3, 3],
        };
        assert!(matches!(
            apply_command(&mut metadata, bad),
            MetadataResponse::Rejected(_)
        ));
        let first = apply_command(
            &mut metadata,
            MetadataCommand::AllocateProducerIdBlock {
                node_id: 1,
                block_size: 1000,
            },
        );
        let second = apply_command(
            &mut metadata,
            MetadataCommand::AllocateProducerIdBlock {
                node_id: 2,
                block_size: 1000,
            },
        );
        assert_eq!(
            (first, second),
            (
                MetadataResponse::ProducerIdBlock {
                    first_producer_id: 0,
                    count: 1000
                },
                MetadataResponse::ProducerIdBlock {
                    first_producer_id: 1000,
                    count: 1000
                }
            )
        );
        let add = MetadataCommand::CreatePartitions {
            name: "t".into(),
            assignments: vec![vec![1, 2]],
        };
        assert_eq!(apply_command(&mut metadata, add), MetadataResponse::Done);
        assert_eq!(metadata.topics["t"].assignments.len(), 3);
    }

    /// Metadata with brokers `1..=brokers` registered and a topic "t" of `assignments`.
    fn metadata_with_topic(brokers: NodeId, assignments: Vec<Vec<NodeId>>) -> ClusterMetadata {
        let mut metadata = ClusterMetadata::default();
        for node_id in 1..=brokers {
            let address = NodeAddress {
                cluster_addr: format!("n{node_id}:9093"),
                kafka_addr: format!("n{node_id}:9092"),
            };
            apply_command(
                &mut metadata,
                MetadataCommand::RegisterBroker { node_id, address },
            );
        }
        let create = MetadataCommand::CreateTopic {
            name: "t".into(),
            topic_id: uuid::Uuid::from_u128(7),
            partition_count: assignments.len() as u32,
            replication_factor: assignments.first().map_or(0, |a| a.len() as u16),
            assignments,
            configs: BTreeMap::new(),
        };
        assert_eq!(apply_command(&mut metadata, create), MetadataResponse::Done);
        metadata
    }

    #[test]
    fn a_reassignment_is_recorded_listed_cancelled_and_completed() {
        let mut metadata = metadata_with_topic(4, vec![vec![1, 2, 3]]);
        let reassign =
            |partition, target: Option<Vec<NodeId>>| MetadataCommand::ReassignPartition {
                name: "t".into(),
                partition,
                target,
            };
        // Refusals: unknown partition, unregistered broker, duplicates, cancel of nothing.
        assert!(matches!(
            apply_command(&mut metadata, reassign(1, Some(vec![2, 3, 4]))),
            MetadataResponse::Rejected(MetadataRejection::UnknownPartition { .. })
        ));
        assert!(matches!(
            apply_command(&mut metadata, reassign(0, Some(vec![2, 3, 9]))),
            MetadataResponse::Rejected(MetadataRejection::InvalidAssignment(_))
        ));
        assert!(matches!(
            apply_command(&mut metadata, reassign(0, Some(vec![2, 2, 4]))),
            MetadataResponse::Rejected(MetadataRejection::InvalidAssignment(_))
        ));
        assert!(matches!(
            apply_command(&mut metadata, reassign(0, None)),
            MetadataResponse::Rejected(MetadataRejection::NoReassignment { .. })
        ));
        // Recorded beside the current assignment, which stays until the move completes; the
        // added node runs the replica meanwhile.
        assert_eq!(
            apply_command(&mut metadata, reassign(0, Some(vec![2, 3, 4]))),
            MetadataResponse::Done
        );
        let topic = &metadata.topics["t"];
        assert_eq!(topic.assignments[0], vec![1, 2, 3]);
        assert_eq!(topic.reassignments[&0], vec![2, 3, 4]);
        assert_eq!(topic.replicas_to_run(0), vec![1, 2, 3, 4]);
        // Cancelled, then started again and completed.
        assert_eq!(
            apply_command(&mut metadata, reassign(0, None)),
            MetadataResponse::Done
        );
        assert!(metadata.topics["t"].reassignments.is_empty());
        apply_command(&mut metadata, reassign(0, Some(vec![2, 3, 4])));
        let complete = MetadataCommand::SetPartitionReplicas {
            name: "t".into(),
            partition: 0,
            replicas: vec![2, 3, 4],
        };
        assert_eq!(
            apply_command(&mut metadata, complete),
            MetadataResponse::Done
        );
        let topic = &metadata.topics["t"];
        assert_eq!(topic.assignments[0], vec![2, 3, 4]);
        assert!(topic.reassignments.is_empty());
        assert!(topic.moved.contains(&0));
    }

    #[test]
    fn a_reassignment_past_its_voter_change_cannot_be_cancelled() {
        let mut metadata = metadata_with_topic(5, vec![vec![1, 2, 3]]);
        let reassign = |target: Option<Vec<NodeId>>| MetadataCommand::ReassignPartition {
            name: "t".into(),
            partition: 0,
            target,
        };
        let begin = |target: Vec<NodeId>| MetadataCommand::BeginVoterChange {
            name: "t".into(),
            partition: 0,
            target,
        };
        // No voter change for a move that is not (or no longer) in progress.
        assert!(matches!(
            apply_command(&mut metadata, begin(vec![2, 3, 4])),
            MetadataResponse::Rejected(MetadataRejection::NoReassignment { .. })
        ));
        apply_command(&mut metadata, reassign(Some(vec![2, 3, 4])));
        assert!(matches!(
            apply_command(&mut metadata, begin(vec![2, 3, 5])),
            MetadataResponse::Rejected(MetadataRejection::NoReassignment { .. })
        ));
        assert_eq!(
            apply_command(&mut metadata, begin(vec![2, 3, 4])),
            MetadataResponse::Done
        );
        // Past the point of no return a cancel is refused, and every replica keeps running.
        assert!(matches!(
            apply_command(&mut metadata, reassign(None)),
            MetadataResponse::Rejected(MetadataRejection::ReassignmentCompleting { .. })
        ));
        assert_eq!(metadata.topics["t"].replicas_to_run(0), vec![1, 2, 3, 4]);
        // A new target meanwhile follows the completing move, even back to the old replicas.
        apply_command(&mut metadata, reassign(Some(vec![1, 2, 3])));
        assert_eq!(metadata.topics["t"].replicas_to_run(0), vec![1, 2, 3, 4]);
        apply_command(
            &mut metadata,
            MetadataCommand::SetPartitionReplicas {
                name: "t".into(),
                partition: 0,
                replicas: vec![2, 3, 4],
            },
        );
        let topic = &metadata.topics["t"];
        assert_eq!(topic.assignments[0], vec![2, 3, 4]);
        assert!(topic.completing.is_empty());
        assert_eq!(topic.reassignments[&0], vec![1, 2, 3]);
        // That one can be cancelled before its own voter change.
        assert_eq!(
            apply_command(&mut metadata, reassign(None)),
            MetadataResponse::Done
        );
        assert_eq!(metadata.topics["t"].replicas_to_run(0), vec![2, 3, 4]);
    }

    #[test]
    fn a_broker_with_replicas_or_a_move_to_it_cannot_be_unregistered() {
        let mut metadata = metadata_with_topic(4, vec![vec![1, 2], vec![2, 3]]);
        let unregister = |node_id| MetadataCommand::UnregisterBroker { node_id };
        assert_eq!(
            apply_command(&mut metadata, unregister(2)),
            MetadataResponse::Rejected(MetadataRejection::BrokerHostsReplicas {
                node_id: 2,
                partitions: vec!["t-0".into(), "t-1".into()],
            })
        );
        // A move to node 4 in progress counts as a replica there.
        let reassign = MetadataCommand::ReassignPartition {
            name: "t".into(),
            partition: 1,
            target: Some(vec![2, 4]),
        };
        apply_command(&mut metadata, reassign);
        assert!(matches!(
            apply_command(&mut metadata, unregister(4)),
            MetadataResponse::Rejected(MetadataRejection::BrokerHostsReplicas { .. })
        ));
        assert_eq!(metadata.brokers.len(), 4);
        let cancel = MetadataCommand::ReassignPartition {
            name: "t".into(),
            partition: 1,
            target: None,
        };
        apply_command(&mut metadata, cancel);
        assert_eq!(
            apply_command(&mut metadata, unregister(4)),
            MetadataResponse::Done
        );
        assert_eq!(
            metadata.brokers.keys().copied().collect::<Vec<_>>(),
            [1, 2, 3]
        );
    }

    #[tokio::test]
    async fn only_members_of_the_metadata_group_can_register() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(sluice_log::RealDisk);
        let mut machine = MetadataStateMachine::open(storage, dir.path()).unwrap();
        let node = |id: NodeId| NodeAddress {
            cluster_addr: format!("n{id}:9093"),
            kafka_addr: String::new(),
        };
        let membership = openraft::Membership::new(
            vec![[1, 2].into_iter().collect()],
            [(1, node(1)), (2, node(2))]
                .into_iter()
                .collect::<BTreeMap<_, _>>(),
        );
        let register = |id| MetadataCommand::RegisterBroker {
            node_id: id,
            address: node(id),
        };
        let responses = machine
            .apply([
                Entry {
                    log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), 1),
                    payload: EntryPayload::Membership(membership),
                },
                entry(2, register(2)),
                entry(3, register(3)),
            ])
            .await
            .unwrap();
        assert_eq!(responses[1], MetadataResponse::Done);
        assert_eq!(
            responses[2],
            MetadataResponse::Rejected(MetadataRejection::NotAMember(3))
        );
        assert_eq!(
            machine
                .subscribe()
                .borrow()
                .brokers
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            [2]
        );
    }

    fn committed(topic: &str, partition: i32, offset: i64) -> CommittedOffset {
        CommittedOffset {
            topic: topic.into(),
            partition,
            offset,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms: 1,
        }
    }

    fn entry(index: u64, command: MetadataCommand) -> Entry<MetadataRaft> {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(command),
        }
    }

    #[tokio::test]
    async fn offsets_are_applied_without_republishing_and_kept_in_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(sluice_log::RealDisk);
        let mut machine = MetadataStateMachine::open(storage.clone(), dir.path()).unwrap();
        let mut published = machine.subscribe();
        published.borrow_and_update();
        let commit = |index, offsets| {
            entry(
                index,
                MetadataCommand::CommitOffsets {
                    group: "g".into(),
                    offsets,
                },
            )
        };
        machine
            .apply([
                commit(1, vec![committed("t", 0, 5), committed("t", 1, 7)]),
                commit(2, vec![committed("t", 0, 9)]),
                commit(3, vec![committed("u", 0, 1)]),
            ])
            .await
            .unwrap();
        assert!(
            !published.has_changed().unwrap(),
            "offsets republished the metadata"
        );
        let offsets = machine.consumer_offsets();
        assert_eq!(offsets.fetch("g", "t", 0).map(|o| o.offset), Some(9));
        assert_eq!(offsets.group("g").len(), 3);
        let deleted = machine
            .apply([entry(
                4,
                MetadataCommand::DeleteGroupOffsets {
                    group: "g".into(),
                    partitions: Some(vec![("u".into(), 0), ("u".into(), 5)]),
                },
            )])
            .await
            .unwrap();
        assert_eq!(deleted, vec![MetadataResponse::OffsetsDeleted { count: 1 }]);
        assert_eq!(offsets.group("g").len(), 2);

        // A snapshot carries them: to a restarted node and to a follower that installs it.
        let snapshot = machine.build_snapshot().await.unwrap();
        let reopened = MetadataStateMachine::open(storage.clone(), dir.path()).unwrap();
        assert_eq!(
            reopened
                .consumer_offsets()
                .fetch("g", "t", 0)
                .map(|o| o.offset),
            Some(9)
        );
        let other_dir = tempfile::tempdir().unwrap();
        let mut follower = MetadataStateMachine::open(storage, other_dir.path()).unwrap();
        follower
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(follower.consumer_offsets().group("g"), offsets.group("g"));
        let all = follower
            .apply([entry(
                5,
                MetadataCommand::DeleteGroupOffsets {
                    group: "g".into(),
                    partitions: None,
                },
            )])
            .await
            .unwrap();
        assert_eq!(all, vec![MetadataResponse::OffsetsDeleted { count: 2 }]);
        assert!(!follower.consumer_offsets().has_offsets("g"));
    }

    #[tokio::test]
    async fn security_documents_are_compared_and_set_and_kept_in_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(sluice_log::RealDisk);
        let mut machine = MetadataStateMachine::open(storage.clone(), dir.path()).unwrap();
        let mut published = machine.subscribe();
        published.borrow_and_update();
        let replace = |index, base_version, change_id, document: &str| {
            entry(
                index,
                MetadataCommand::ReplaceSecurityDocument {
                    kind: "users".into(),
                    base_version,
                    change_id,
                    document: document.into(),
                },
            )
        };
        let responses = machine
            .apply([
                replace(1, 0, 10, "first"),
                // The same change again (a retried proposal): the same answer, no new version.
                replace(2, 0, 10, "first"),
                // Made on version 0 by another node: stale.
                replace(3, 0, 11, "lost"),
                replace(4, 1, 12, "second"),
            ])
            .await
            .unwrap();
        assert_eq!(
            responses,
            vec![
                MetadataResponse::SecurityDocumentVersion { version: 1 },
                MetadataResponse::SecurityDocumentVersion { version: 1 },
                MetadataResponse::Rejected(MetadataRejection::StaleSecurityDocument {
                    kind: "users".into(),
                    version: 1
                }),
                MetadataResponse::SecurityDocumentVersion { version: 2 },
            ]
        );
        assert!(
            !published.has_changed().unwrap(),
            "the metadata is not republished"
        );
        let users = machine.security().get("users").unwrap();
        assert_eq!((users.version, users.document.as_str()), (2, "second"));

        let snapshot = machine.build_snapshot().await.unwrap();
        let reopened = MetadataStateMachine::open(storage.clone(), dir.path()).unwrap();
        assert_eq!(reopened.security().get("users"), Some(users.clone()));
        let other_dir = tempfile::tempdir().unwrap();
        let mut follower = MetadataStateMachine::open(storage, other_dir.path()).unwrap();
        let installed = follower.security().subscribe();
        follower
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert!(installed.has_changed().unwrap());
        assert_eq!(follower.security().get("users"), Some(users));
    }

    #[tokio::test]
    async fn transaction_states_are_applied_without_republishing_and_kept_in_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(sluice_log::RealDisk);
        let mut machine = MetadataStateMachine::open(storage.clone(), dir.path()).unwrap();
        let mut published = machine.subscribe();
        published.borrow_and_update();
        let save = |index, id: &str, state: Option<&str>| {
            entry(
                index,
                MetadataCommand::SaveTransactionState {
                    transactional_id: id.into(),
                    state: state.map(str::to_string),
                },
            )
        };
        machine
            .apply([
                save(1, "a", Some("one")),
                save(2, "b", Some("two")),
                save(3, "a", Some("three")),
                save(4, "b", None),
            ])
            .await
            .unwrap();
        assert!(!published.has_changed().unwrap());
        let states = machine.transactions();
        assert_eq!(states.all(), vec![("a".to_string(), "three".to_string())]);

        let snapshot = machine.build_snapshot().await.unwrap();
        let reopened = MetadataStateMachine::open(storage.clone(), dir.path()).unwrap();
        assert_eq!(reopened.transactions().get("a").as_deref(), Some("three"));
        let other_dir = tempfile::tempdir().unwrap();
        let mut follower = MetadataStateMachine::open(storage, other_dir.path()).unwrap();
        follower
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(follower.transactions().all(), states.all());
    }
}
