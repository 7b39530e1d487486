//! The transaction coordinator (Kafka's, KIP-98): transactional ids, their producer id and
//! epoch, and each open transaction's partitions and pending consumer offsets. Every state
//! change is written to the transaction log (`transaction_log`) before it is answered, so the
//! coordinator survives a restart: a transaction caught between its decision and its markers
//! is completed on open, and an open one is aborted once its timeout passes.
//!
//! Ending a transaction: the decision is logged (PrepareCommit/PrepareAbort), a marker is
//! written durably to each of its partitions, a commit's offsets are stored in the offsets log,
//! and then the completion is logged. Requests for one transactional id are served one at a
//! time; different ids proceed in parallel.
//!
//! In a cluster the same coordinator runs on the metadata group's leader (see
//! [`ClusterTransactionBackend`]): each state change is committed through the metadata group
//! instead of the local log, producer ids come from the cluster's blocks, markers go to each
//! partition's Raft leader, and a commit's offsets are committed through the metadata group.
//! A new leader takes over every transaction where the old one left it: it completes those
//! whose decision was committed and aborts open ones at their timeout.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, OnceLock, Weak};

use futures::future::BoxFuture;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sluice_log::{LogConfig, Storage, TransactionResult};

use crate::group_coordinator::{OffsetAndMetadata, TopicPartition};
use crate::transaction_log::TransactionLog;
use crate::{now_ms, Broker, BrokerError};

/// Transactions completed, by result (`commit`, `abort`; timeouts and fenced instances abort).
pub const TRANSACTIONS_COMPLETED_METRIC: &str = "sluice_kafka_transactions_completed_total";

/// The coordinator epoch written in markers: one coordinator per node, never moved.
const COORDINATOR_EPOCH: i32 = 0;

/// A transactional id's state, named as Kafka's tools print it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransactionState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TransactionState {
    pub fn name(self) -> &'static str {
        match self {
            TransactionState::Empty => "Empty",
            TransactionState::Ongoing => "Ongoing",
            TransactionState::PrepareCommit => "PrepareCommit",
            TransactionState::PrepareAbort => "PrepareAbort",
            TransactionState::CompleteCommit => "CompleteCommit",
            TransactionState::CompleteAbort => "CompleteAbort",
        }
    }
}

/// One offset a transaction commits for a group when it commits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
}

/// What the transaction log keeps for one transactional id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionMetadata {
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// The id and epoch before the last InitProducerId, so a client retrying that call with
    /// them (KIP-360) gets the same answer instead of being fenced.
    pub previous: Option<(i64, i16)>,
    pub timeout_ms: i32,
    pub state: TransactionState,
    /// Partitions of the open (or ending) transaction.
    pub partitions: BTreeSet<(String, i32)>,
    /// Offsets to commit per group when the transaction commits.
    pub pending_offsets: BTreeMap<String, Vec<PendingOffset>>,
    /// When the open transaction started (0 when none is open).
    pub started_ms: i64,
    pub updated_ms: i64,
}

impl TransactionMetadata {
    fn check_producer(&self, producer_id: i64, producer_epoch: i16) -> Result<(), BrokerError> {
        if self.producer_id != producer_id {
            return Err(BrokerError::InvalidProducerIdMapping(format!(
                "the transactional id belongs to producer {}, not {producer_id}",
                self.producer_id
            )));
        }
        if self.producer_epoch != producer_epoch {
            return Err(BrokerError::ProducerFenced(format!(
                "producer {producer_id} epoch {producer_epoch} is not the current epoch {}",
                self.producer_epoch
            )));
        }
        Ok(())
    }

    fn check_not_ending(&self) -> Result<(), BrokerError> {
        match self.state {
            TransactionState::PrepareCommit | TransactionState::PrepareAbort => Err(
                BrokerError::ConcurrentTransactions("the transaction is being completed".into()),
            ),
            _ => Ok(()),
        }
    }

    /// Opens a transaction if none is open.
    fn begin(&mut self, now: i64) {
        if self.state != TransactionState::Ongoing {
            self.state = TransactionState::Ongoing;
            self.started_ms = now;
            self.partitions.clear();
            self.pending_offsets.clear();
        }
        self.updated_ms = now;
    }
}

/// The locks of one transactional id.
#[derive(Debug, Clone, Default)]
struct IdLocks {
    /// Held across a request's writes (markers included): one request at a time.
    requests: Arc<tokio::sync::Mutex<()>>,
    /// Shared by its produces until their appends are durable, exclusive while markers are
    /// written, so no batch lands after its transaction's marker.
    appends: Arc<tokio::sync::RwLock<()>>,
}

/// Who sends a transactional request: the transactional id and the producer id and epoch the
/// client holds for it.
#[derive(Debug, Clone, Copy)]
pub struct TransactionalProducer<'a> {
    pub transactional_id: &'a str,
    pub producer_id: i64,
    pub producer_epoch: i16,
}

/// Held by a verified transactional produce until its appends are durable: the transaction's
/// markers are written only after it is dropped.
#[derive(Debug)]
pub struct TransactionalAppend {
    _held: tokio::sync::OwnedRwLockReadGuard<()>,
}

/// One transactional id as DescribeTransactions and ListTransactions report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionDescription {
    pub transactional_id: String,
    pub metadata: TransactionMetadata,
}

/// A marker the coordinator writes to each partition of a transaction it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransactionMarker {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub result: TransactionResult,
    pub coordinator_epoch: i32,
}

/// What the coordinator needs from a cluster (implemented by
/// [`crate::replication::ClusterBroker`]). Only the metadata group's leader coordinates.
pub trait ClusterTransactionBackend: Send + Sync {
    /// Ok once this node is confirmed as the metadata leader and has applied every committed
    /// change (a linearizable read); NOT_COORDINATOR otherwise.
    fn serving(&self) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// One transactional id's state as committed through the metadata group.
    fn state(&self, transactional_id: &str) -> Option<TransactionMetadata>;
    /// Every transactional id's state.
    fn states(&self) -> Vec<(String, TransactionMetadata)>;
    /// Commits a state change through the metadata group (as its leader only).
    fn save<'a>(
        &'a self,
        transactional_id: &'a str,
        metadata: &'a TransactionMetadata,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;
    /// A fresh producer id from the cluster's blocks.
    fn allocate_producer_id(&self) -> BoxFuture<'_, Result<i64, BrokerError>>;
    /// Writes `marker` to the partition through its Raft leader, wherever that is; answers
    /// once a majority of its replicas has it. A partition deleted meanwhile is done.
    fn write_marker<'a>(
        &'a self,
        topic: &'a str,
        partition: i32,
        marker: TransactionMarker,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;
    /// Commits a transaction's offsets of one group through the metadata group.
    fn store_offsets<'a>(
        &'a self,
        group_id: &'a str,
        offsets: Vec<(TopicPartition, OffsetAndMetadata)>,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;
}

pub struct TransactionCoordinator {
    log: TransactionLog,
    states: Mutex<HashMap<String, TransactionMetadata>>,
    id_locks: Mutex<HashMap<String, IdLocks>>,
    max_timeout_ms: i32,
    /// Set once in cluster mode: the states then live in the metadata group, not in `log`.
    cluster: OnceLock<Weak<dyn ClusterTransactionBackend>>,
}

impl TransactionCoordinator {
    pub(crate) fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        log_config: LogConfig,
        max_timeout_ms: i32,
    ) -> Result<TransactionCoordinator, BrokerError> {
        let (log, states) = TransactionLog::open(storage, dir, log_config)?;
        if !states.is_empty() {
            tracing::info!(
                transactional_ids = states.len(),
                "loaded transaction states"
            );
        }
        Ok(TransactionCoordinator {
            log,
            states: Mutex::new(states),
            id_locks: Mutex::new(HashMap::new()),
            max_timeout_ms,
            cluster: OnceLock::new(),
        })
    }

    /// Cluster mode: from now on the states live in the metadata group and this node serves
    /// transactional requests only while it leads that group.
    pub fn use_cluster(&self, backend: Weak<dyn ClusterTransactionBackend>) {
        if self.cluster.set(backend).is_err() {
            tracing::warn!("the transaction coordinator was given a cluster twice");
        }
    }

    fn cluster(&self) -> Option<Arc<dyn ClusterTransactionBackend>> {
        self.cluster.get().and_then(Weak::upgrade)
    }

    pub fn is_clustered(&self) -> bool {
        self.cluster.get().is_some()
    }

    /// Whether this node coordinates transactions now: always on one node; in a cluster while
    /// it leads the metadata group (NOT_COORDINATOR otherwise).
    pub async fn check_serving(&self) -> Result<(), BrokerError> {
        match (self.cluster.get(), self.cluster()) {
            (None, _) => Ok(()),
            (Some(_), Some(cluster)) => cluster.serving().await,
            (Some(_), None) => Err(BrokerError::NotCoordinator(
                "the node is shutting down".into(),
            )),
        }
    }

    async fn allocate_producer_id(&self, broker: &Broker) -> Result<(i64, i16), BrokerError> {
        match self.cluster() {
            Some(cluster) => Ok((cluster.allocate_producer_id().await?, 0)),
            None => broker.allocate_producer_id(),
        }
    }

    /// The epoch after `current`, or a fresh producer id once the epoch space is spent.
    async fn next_epoch(
        &self,
        broker: &Broker,
        current: (i64, i16),
    ) -> Result<(i64, i16), BrokerError> {
        if current.1 >= i16::MAX - 1 {
            self.allocate_producer_id(broker).await
        } else {
            Ok((current.0, current.1 + 1))
        }
    }

    fn locks(&self, transactional_id: &str) -> IdLocks {
        self.id_locks
            .lock()
            .entry(transactional_id.to_string())
            .or_default()
            .clone()
    }

    fn id_lock(&self, transactional_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks(transactional_id).requests
    }

    fn append_gate(&self, transactional_id: &str) -> Arc<tokio::sync::RwLock<()>> {
        self.locks(transactional_id).appends
    }

    fn state(&self, transactional_id: &str) -> Option<TransactionMetadata> {
        if let Some(cluster) = self.cluster() {
            return cluster.state(transactional_id);
        }
        self.states.lock().get(transactional_id).cloned()
    }

    fn all_states(&self) -> Vec<(String, TransactionMetadata)> {
        if let Some(cluster) = self.cluster() {
            return cluster.states();
        }
        self.states
            .lock()
            .iter()
            .map(|(id, metadata)| (id.clone(), metadata.clone()))
            .collect()
    }

    /// Logs `metadata` durably (in a cluster: commits it through the metadata group), then
    /// makes it the current state.
    async fn save(
        &self,
        transactional_id: &str,
        metadata: TransactionMetadata,
    ) -> Result<(), BrokerError> {
        if let Some(cluster) = self.cluster() {
            return cluster.save(transactional_id, &metadata).await;
        }
        self.log.write(transactional_id, Some(&metadata)).await?;
        self.states
            .lock()
            .insert(transactional_id.to_string(), metadata);
        Ok(())
    }

    /// InitProducerId with a transactional id: the id's producer id with a new epoch, which
    /// fences every older instance; an open transaction of the old instance is aborted first.
    pub(crate) async fn init_producer_id(
        &self,
        broker: &Broker,
        transactional_id: &str,
        timeout_ms: i32,
        claimed: Option<(i64, i16)>,
    ) -> Result<(i64, i16), BrokerError> {
        if timeout_ms <= 0 || timeout_ms > self.max_timeout_ms {
            return Err(BrokerError::InvalidTransactionTimeout(
                "The transaction timeout is larger than the maximum value allowed by the broker \
                 (as configured by transaction.max.timeout.ms)."
                    .into(),
            ));
        }
        self.check_serving().await?;
        let lock = self.id_lock(transactional_id);
        let _held = lock.lock().await;
        let now = now_ms();
        let Some(mut metadata) = self.state(transactional_id) else {
            let (producer_id, _) = self.allocate_producer_id(broker).await?;
            let metadata = TransactionMetadata {
                producer_id,
                producer_epoch: 0,
                previous: None,
                timeout_ms,
                state: TransactionState::Empty,
                partitions: BTreeSet::new(),
                pending_offsets: BTreeMap::new(),
                started_ms: 0,
                updated_ms: now,
            };
            self.save(transactional_id, metadata).await?;
            return Ok((producer_id, 0));
        };
        if let Some(claimed) = claimed {
            let current = (metadata.producer_id, metadata.producer_epoch);
            if metadata.previous == Some(claimed) && metadata.state == TransactionState::Empty {
                // A retry of the call that bumped the epoch.
                return Ok(current);
            }
            if claimed != current {
                return Err(BrokerError::ProducerFenced(format!(
                    "transactional id {transactional_id}: producer {} epoch {} is not the current producer {} epoch {}",
                    claimed.0, claimed.1, current.0, current.1
                )));
            }
        }
        if matches!(
            metadata.state,
            TransactionState::Ongoing | TransactionState::PrepareAbort
        ) {
            // The old instance's transaction is aborted under a new epoch, which also fences
            // its late writes on every partition.
            metadata = self
                .abort_fenced(broker, transactional_id, metadata)
                .await?;
        } else if metadata.state == TransactionState::PrepareCommit {
            metadata = self
                .complete(
                    broker,
                    transactional_id,
                    metadata,
                    TransactionResult::Commit,
                )
                .await?;
        }
        let previous = (metadata.producer_id, metadata.producer_epoch);
        let (producer_id, producer_epoch) = self.next_epoch(broker, previous).await?;
        metadata.producer_id = producer_id;
        metadata.producer_epoch = producer_epoch;
        metadata.previous = Some(previous);
        metadata.timeout_ms = timeout_ms;
        metadata.state = TransactionState::Empty;
        metadata.partitions.clear();
        metadata.pending_offsets.clear();
        metadata.started_ms = 0;
        metadata.updated_ms = now;
        self.save(transactional_id, metadata).await?;
        Ok((producer_id, producer_epoch))
    }

    /// Whether a transactional batch of `producer_id` at `producer_epoch`, sent under
    /// `transactional_id`, may be appended to `topic`-`partition`: only inside that id's open
    /// transaction, after AddPartitionsToTxn named the partition (as Kafka verifies since
    /// KIP-890). Without this a batch no marker will ever end would hold the partition's last
    /// stable offset forever.
    pub fn verify_transactional_append(
        &self,
        producer: TransactionalProducer<'_>,
        topic: &str,
        partition: i32,
    ) -> Result<TransactionalAppend, BrokerError> {
        let TransactionalProducer {
            transactional_id,
            producer_id,
            producer_epoch,
        } = producer;
        // Taken before the check: markers written after it wait for this append.
        let held = self
            .append_gate(transactional_id)
            .try_read_owned()
            .map_err(|_| {
                BrokerError::InvalidTxnState(format!(
                    "the transaction of {transactional_id} is ending"
                ))
            })?;
        let metadata = self
            .state(transactional_id)
            .filter(|m| m.producer_id == producer_id)
            .ok_or_else(|| {
                BrokerError::InvalidProducerIdMapping(format!(
                    "producer {producer_id} does not hold transactional id {transactional_id}"
                ))
            })?;
        if producer_epoch < metadata.producer_epoch {
            return Err(BrokerError::InvalidProducerEpoch(format!(
                "producer {producer_id} epoch {producer_epoch} is older than the current epoch {}",
                metadata.producer_epoch
            )));
        }
        let added = metadata.state == TransactionState::Ongoing
            && producer_epoch == metadata.producer_epoch
            && metadata
                .partitions
                .contains(&(topic.to_string(), partition));
        if added {
            Ok(TransactionalAppend { _held: held })
        } else {
            Err(BrokerError::InvalidTxnState(format!(
                "{topic}-{partition} is not part of an ongoing transaction of {transactional_id}"
            )))
        }
    }

    /// The metadata of the producer's transactional id if the producer holds it.
    fn held_by(
        &self,
        producer: TransactionalProducer<'_>,
    ) -> Result<TransactionMetadata, BrokerError> {
        let metadata = self.state(producer.transactional_id).ok_or_else(|| {
            BrokerError::InvalidProducerIdMapping(format!(
                "unknown transactional id {}",
                producer.transactional_id
            ))
        })?;
        metadata.check_producer(producer.producer_id, producer.producer_epoch)?;
        Ok(metadata)
    }

    /// [`Self::held_by`], when the transaction is not ending either.
    fn checked(
        &self,
        producer: TransactionalProducer<'_>,
    ) -> Result<TransactionMetadata, BrokerError> {
        let metadata = self.held_by(producer)?;
        metadata.check_not_ending()?;
        Ok(metadata)
    }

    /// AddPartitionsToTxn: the partitions join the open transaction (which opens if needed).
    /// The caller checked that they exist.
    pub async fn add_partitions(
        &self,
        producer: TransactionalProducer<'_>,
        partitions: &[(String, i32)],
    ) -> Result<(), BrokerError> {
        self.check_serving().await?;
        let transactional_id = producer.transactional_id;
        let lock = self.id_lock(transactional_id);
        let _held = lock.lock().await;
        let mut metadata = self.checked(producer)?;
        if metadata.state == TransactionState::Ongoing
            && partitions.iter().all(|p| metadata.partitions.contains(p))
        {
            return Ok(());
        }
        metadata.begin(now_ms());
        metadata.partitions.extend(partitions.iter().cloned());
        self.save(transactional_id, metadata).await
    }

    /// AddOffsetsToTxn: the group's offsets will be committed with the transaction.
    pub async fn add_offsets(
        &self,
        producer: TransactionalProducer<'_>,
        group_id: &str,
    ) -> Result<(), BrokerError> {
        self.check_serving().await?;
        let transactional_id = producer.transactional_id;
        let lock = self.id_lock(transactional_id);
        let _held = lock.lock().await;
        let mut metadata = self.checked(producer)?;
        if metadata.state == TransactionState::Ongoing
            && metadata.pending_offsets.contains_key(group_id)
        {
            return Ok(());
        }
        metadata.begin(now_ms());
        metadata
            .pending_offsets
            .entry(group_id.to_string())
            .or_default();
        self.save(transactional_id, metadata).await
    }

    /// TxnOffsetCommit: offsets kept with the transaction, stored for the group when (and
    /// only if) it commits. The caller validated the group membership and the metadata sizes.
    pub async fn add_pending_offsets(
        &self,
        producer: TransactionalProducer<'_>,
        group_id: &str,
        offsets: Vec<PendingOffset>,
    ) -> Result<(), BrokerError> {
        self.check_serving().await?;
        let transactional_id = producer.transactional_id;
        let lock = self.id_lock(transactional_id);
        let _held = lock.lock().await;
        let mut metadata = self.checked(producer)?;
        metadata.begin(now_ms());
        let pending = metadata
            .pending_offsets
            .entry(group_id.to_string())
            .or_default();
        for offset in offsets {
            pending.retain(|p| !(p.topic == offset.topic && p.partition == offset.partition));
            pending.push(offset);
        }
        self.save(transactional_id, metadata).await
    }

    /// EndTxn: commits or aborts the open transaction; returns the producer id and epoch the
    /// producer goes on with. A retry of a completed EndTxn with the same result succeeds
    /// again.
    ///
    /// With `bump_epoch` (EndTxn v5, transaction version 2) every transaction ends under the
    /// next epoch: its markers carry it, so the old epoch's late writes are fenced on every
    /// partition, and the producer continues with it (a fresh producer id once the epoch space
    /// is spent). An abort then also succeeds without an open transaction (the producer's
    /// first send may never have reached the broker), moving the epoch on all the same.
    pub async fn end_transaction(
        &self,
        broker: &Broker,
        producer: TransactionalProducer<'_>,
        result: TransactionResult,
        bump_epoch: bool,
    ) -> Result<(i64, i16), BrokerError> {
        self.check_serving().await?;
        let transactional_id = producer.transactional_id;
        let lock = self.id_lock(transactional_id);
        let _held = lock.lock().await;
        let (prepared, completed) = match result {
            TransactionResult::Commit => (
                TransactionState::PrepareCommit,
                TransactionState::CompleteCommit,
            ),
            TransactionResult::Abort => (
                TransactionState::PrepareAbort,
                TransactionState::CompleteAbort,
            ),
        };
        if bump_epoch {
            // A retry of the EndTxn that bumped the epoch: it finishes (if its markers failed)
            // or answers again.
            if let Some(metadata) = self.state(transactional_id).filter(|m| {
                m.previous == Some((producer.producer_id, producer.producer_epoch))
                    && (m.state == prepared || m.state == completed)
            }) {
                let metadata = if metadata.state == prepared {
                    self.complete(broker, transactional_id, metadata, result)
                        .await?
                } else {
                    metadata
                };
                return Ok((metadata.producer_id, metadata.producer_epoch));
            }
        }
        let mut metadata = self.held_by(producer)?;
        let wrong_state = |state: TransactionState| {
            BrokerError::InvalidTxnState(format!(
                "cannot {} a transaction in state {}",
                match result {
                    TransactionResult::Commit => "commit",
                    TransactionResult::Abort => "abort",
                },
                state.name()
            ))
        };
        let current = (metadata.producer_id, metadata.producer_epoch);
        match (metadata.state, result) {
            (TransactionState::Ongoing, _) if bump_epoch => {
                let next = self.next_epoch(broker, current).await?;
                metadata.previous = Some(current);
                if next.0 == current.0 {
                    // Saved with the decision: the markers go out under the new epoch.
                    metadata.producer_epoch = next.1;
                    let metadata = self
                        .complete(broker, transactional_id, metadata, result)
                        .await?;
                    return Ok((metadata.producer_id, metadata.producer_epoch));
                }
                // The epoch space is spent: the markers keep the old epoch, and the producer
                // goes on under a fresh id.
                let mut metadata = self
                    .complete(broker, transactional_id, metadata, result)
                    .await?;
                (metadata.producer_id, metadata.producer_epoch) = next;
                self.save(transactional_id, metadata).await?;
                Ok(next)
            }
            (TransactionState::Ongoing, _)
            | (TransactionState::PrepareCommit, TransactionResult::Commit)
            | (TransactionState::PrepareAbort, TransactionResult::Abort) => {
                self.complete(broker, transactional_id, metadata, result)
                    .await?;
                Ok(current)
            }
            (
                TransactionState::Empty
                | TransactionState::CompleteCommit
                | TransactionState::CompleteAbort,
                TransactionResult::Abort,
            ) if bump_epoch => {
                let next = self.next_epoch(broker, current).await?;
                metadata.previous = Some(current);
                (metadata.producer_id, metadata.producer_epoch) = next;
                metadata.state = TransactionState::CompleteAbort;
                metadata.updated_ms = now_ms();
                self.save(transactional_id, metadata).await?;
                Ok(next)
            }
            (TransactionState::CompleteCommit, TransactionResult::Commit)
            | (TransactionState::CompleteAbort, TransactionResult::Abort)
                if !bump_epoch =>
            {
                Ok(current)
            }
            (state, _) => Err(wrong_state(state)),
        }
    }

    /// Logs the decision, writes the markers, stores a commit's offsets and logs completion.
    async fn complete(
        &self,
        broker: &Broker,
        transactional_id: &str,
        mut metadata: TransactionMetadata,
        result: TransactionResult,
    ) -> Result<TransactionMetadata, BrokerError> {
        let prepared = match result {
            TransactionResult::Commit => TransactionState::PrepareCommit,
            TransactionResult::Abort => TransactionState::PrepareAbort,
        };
        if metadata.state != prepared {
            metadata.state = prepared;
            metadata.updated_ms = now_ms();
            self.save(transactional_id, metadata.clone()).await?;
        }
        // Appends of this transaction still in flight finish first; later ones are refused.
        let _no_appends = self.append_gate(transactional_id).write_owned().await;
        let marker = TransactionMarker {
            producer_id: metadata.producer_id,
            producer_epoch: metadata.producer_epoch,
            result,
            coordinator_epoch: COORDINATOR_EPOCH,
        };
        let cluster = self.cluster();
        let markers = metadata.partitions.iter().map(|(topic, index)| {
            let cluster = cluster.clone();
            let partition = broker.topic(topic).and_then(|t| t.partition(*index));
            async move {
                if let Some(cluster) = cluster {
                    return cluster.write_marker(topic, *index, marker).await;
                }
                // A partition deleted meanwhile has nothing left to mark.
                let Some(partition) = partition else {
                    return Ok(());
                };
                partition
                    .write_transaction_marker(
                        marker.producer_id,
                        marker.producer_epoch,
                        marker.result,
                        marker.coordinator_epoch,
                    )
                    .await
                    .map(|_| ())
            }
        });
        for written in futures::future::join_all(markers).await {
            written?;
        }
        if result == TransactionResult::Commit {
            for (group_id, offsets) in &metadata.pending_offsets {
                if offsets.is_empty() {
                    continue;
                }
                let offsets: Vec<(TopicPartition, OffsetAndMetadata)> = offsets
                    .iter()
                    .map(|o| {
                        (
                            TopicPartition {
                                topic: o.topic.clone(),
                                partition: o.partition,
                            },
                            OffsetAndMetadata {
                                offset: o.offset,
                                leader_epoch: o.leader_epoch,
                                metadata: o.metadata.clone(),
                                commit_timestamp_ms: now_ms(),
                            },
                        )
                    })
                    .collect();
                match &cluster {
                    Some(cluster) => cluster.store_offsets(group_id, offsets).await?,
                    None => broker
                        .groups()
                        .store_transactional_offsets(group_id, &offsets)
                        .await
                        .map_err(|e| BrokerError::storage_io(format!("storing offsets: {e}")))?,
                }
            }
        }
        metadata.state = match result {
            TransactionResult::Commit => TransactionState::CompleteCommit,
            TransactionResult::Abort => TransactionState::CompleteAbort,
        };
        let result_label = match result {
            TransactionResult::Commit => "commit",
            TransactionResult::Abort => "abort",
        };
        metrics::counter!(TRANSACTIONS_COMPLETED_METRIC, "result" => result_label).increment(1);
        metadata.partitions.clear();
        metadata.pending_offsets.clear();
        metadata.started_ms = 0;
        metadata.updated_ms = now_ms();
        self.save(transactional_id, metadata.clone()).await?;
        Ok(metadata)
    }

    /// Aborts the open transaction under the next epoch (the old instance is fenced).
    async fn abort_fenced(
        &self,
        broker: &Broker,
        transactional_id: &str,
        mut metadata: TransactionMetadata,
    ) -> Result<TransactionMetadata, BrokerError> {
        if metadata.state == TransactionState::Ongoing {
            let previous = (metadata.producer_id, metadata.producer_epoch);
            let (producer_id, producer_epoch) = self.next_epoch(broker, previous).await?;
            if producer_id != metadata.producer_id {
                // The epoch space is spent: the markers go out under the old epoch.
                metadata.previous = Some(previous);
            } else {
                metadata.producer_epoch = producer_epoch;
                metadata.previous = Some(previous);
            }
        }
        self.complete(broker, transactional_id, metadata, TransactionResult::Abort)
            .await
    }

    /// Aborts every open transaction past its timeout; returns how many.
    pub(crate) async fn abort_timed_out(&self, broker: &Broker) -> usize {
        let now = now_ms();
        let expired: Vec<String> = self
            .all_states()
            .into_iter()
            .filter(|(_, m)| {
                m.state == TransactionState::Ongoing
                    && now.saturating_sub(m.started_ms) > i64::from(m.timeout_ms)
            })
            .map(|(id, _)| id)
            .collect();
        let mut aborted = 0;
        for transactional_id in expired {
            let lock = self.id_lock(&transactional_id);
            let _held = lock.lock().await;
            let Some(metadata) = self.state(&transactional_id) else {
                continue;
            };
            let still_expired = metadata.state == TransactionState::Ongoing
                && now_ms().saturating_sub(metadata.started_ms) > i64::from(metadata.timeout_ms);
            if !still_expired {
                continue;
            }
            match self.abort_fenced(broker, &transactional_id, metadata).await {
                Ok(_) => {
                    aborted += 1;
                    tracing::info!(transactional_id, "aborted a transaction past its timeout");
                }
                Err(error) => {
                    tracing::warn!(transactional_id, %error, "aborting a timed-out transaction failed")
                }
            }
        }
        aborted
    }

    /// Completes the transactions whose decision was logged before a restart (in a cluster:
    /// by an earlier leader, or by an EndTxn whose markers could not all be written yet).
    pub(crate) async fn complete_prepared(&self, broker: &Broker) {
        let is_prepared = |m: &TransactionMetadata| {
            matches!(
                m.state,
                TransactionState::PrepareCommit | TransactionState::PrepareAbort
            )
        };
        let prepared: Vec<String> = self
            .all_states()
            .into_iter()
            .filter(|(_, m)| is_prepared(m))
            .map(|(id, _)| id)
            .collect();
        for transactional_id in prepared {
            let lock = self.id_lock(&transactional_id);
            let _held = lock.lock().await;
            // Read again under the lock: a request may have completed it meanwhile.
            let Some(metadata) = self.state(&transactional_id).filter(|m| is_prepared(m)) else {
                continue;
            };
            let result = match metadata.state {
                TransactionState::PrepareCommit => TransactionResult::Commit,
                _ => TransactionResult::Abort,
            };
            if let Err(error) = self
                .complete(broker, &transactional_id, metadata, result)
                .await
            {
                tracing::warn!(transactional_id, %error, "completing a prepared transaction failed");
            }
        }
    }

    /// Compacts the transaction log when it is mostly dead records.
    pub(crate) fn compact_if_needed(&self) -> Result<bool, BrokerError> {
        self.log.compact_if_needed()
    }

    /// The transactional ids asked for, `None` for those unknown here.
    pub fn describe(
        &self,
        transactional_ids: &[String],
    ) -> Vec<(String, Option<TransactionMetadata>)> {
        transactional_ids
            .iter()
            .map(|id| (id.clone(), self.state(id)))
            .collect()
    }

    /// Every transactional id, sorted.
    pub fn list(&self) -> Vec<TransactionDescription> {
        let mut all: Vec<TransactionDescription> = self
            .all_states()
            .into_iter()
            .map(|(transactional_id, metadata)| TransactionDescription {
                transactional_id,
                metadata,
            })
            .collect();
        all.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        all
    }

    pub(crate) fn flush(&self) -> Result<(), BrokerError> {
        self.log.flush()
    }
}
