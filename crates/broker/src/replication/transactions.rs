//! The transaction coordinator in a cluster ([`ClusterTransactionBackend`] for
//! [`ClusterBroker`]): the metadata group's leader coordinates every transactional id, as it
//! coordinates every consumer group.
//!
//! - A state change is a `SaveTransactionState` command committed through the metadata group
//!   (as Kafka writes `__transaction_state`), so a new leader continues every transaction where
//!   the old one left it.
//! - A marker goes to the partition's Raft leader: this node's replica, or another node's over
//!   the cluster transport ([`RpcKind::WriteTransactionMarker`], Kafka's WriteTxnMarkers
//!   between brokers). It is committed like any batch, so every replica records the
//!   transaction's end as its high watermark passes the marker.
//! - A commit's offsets are committed through the metadata group, as OffsetCommit's are.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sluice_cluster::metadata::MetadataCommand;
use sluice_cluster::transport::RpcKind;
use sluice_cluster::GroupId;
use sluice_log::TransactionResult;

use super::{committed_offset, ClusterBroker, ReplicationError};
use crate::group_coordinator::{OffsetAndMetadata, TopicPartition};
use crate::transaction_coordinator::{
    ClusterTransactionBackend, TransactionMarker, TransactionMetadata,
};
use crate::BrokerError;

/// How long the coordinator keeps trying to write one marker (leaders move during elections)
/// before it answers COORDINATOR_NOT_AVAILABLE; the transaction stays decided and is
/// completed by a retried EndTxn or the next tick.
pub(super) const MARKER_WAIT_MAX: Duration = Duration::from_secs(30);
/// How long one state change may wait for the metadata group.
const SAVE_WAIT_MAX: Duration = Duration::from_secs(10);
/// Pause between attempts at a marker while the partition has no reachable leader.
const MARKER_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// A marker for a partition another node leads, sent over the cluster transport.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct MarkerRequest {
    pub(super) topic_id: uuid::Uuid,
    pub(super) partition: i32,
    pub(super) producer_id: i64,
    pub(super) producer_epoch: i16,
    pub(super) commit: bool,
    pub(super) coordinator_epoch: i32,
}

/// The partition leader's answer: the marker's offset, or why it was not written.
pub(super) type MarkerAnswer = Result<i64, String>;

impl ClusterBroker {
    /// Makes the broker's transaction coordinator a cluster's.
    pub(super) fn start_transactions(self: &Arc<Self>) {
        let as_backend: Arc<dyn ClusterTransactionBackend> = Arc::clone(self) as _;
        self.broker
            .transaction_coordinator()
            .use_cluster(Arc::downgrade(&as_backend));
    }

    async fn write_marker_once(
        &self,
        topic: &str,
        partition: i32,
        marker: TransactionMarker,
        timeout: Duration,
    ) -> Result<(), String> {
        let Some(meta) = self.topic(topic) else {
            // Deleted meanwhile: nothing left to mark.
            return Ok(());
        };
        if partition < 0 || partition as usize >= meta.assignments.len() {
            return Ok(());
        }
        let view = self.partition_view(&meta, partition);
        match view.leader {
            None => Err("the partition has no leader".into()),
            Some(leader) if leader == self.node_id() => {
                let replica = self
                    .replica(meta.topic_id, partition)
                    .ok_or_else(|| "no replica of the partition on this node".to_string())?;
                replica
                    .write_transaction_marker(
                        marker.producer_id,
                        marker.producer_epoch,
                        marker.result,
                        marker.coordinator_epoch,
                        timeout,
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Some(leader) => {
                let request = MarkerRequest {
                    topic_id: meta.topic_id,
                    partition,
                    producer_id: marker.producer_id,
                    producer_epoch: marker.producer_epoch,
                    commit: marker.result == TransactionResult::Commit,
                    coordinator_epoch: marker.coordinator_epoch,
                };
                let answer: MarkerAnswer = self
                    .node
                    .transport()
                    .request(
                        leader,
                        GroupId::Broker,
                        RpcKind::WriteTransactionMarker,
                        &request,
                        Some(timeout),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                answer
                    .map(|_| ())
                    .map_err(|e| format!("node {leader}: {e}"))
            }
        }
    }
}

impl ClusterTransactionBackend for ClusterBroker {
    fn serving(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            if self.controller() != Some(self.node_id()) {
                return Err(BrokerError::NotCoordinator(
                    "this node is not the metadata leader".into(),
                ));
            }
            match tokio::time::timeout(SAVE_WAIT_MAX, self.node.read_as_leader()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(BrokerError::NotCoordinator(error.to_string())),
                Err(_) => Err(BrokerError::NotCoordinator(
                    "could not confirm the metadata leadership in time".into(),
                )),
            }
        })
    }

    fn state(&self, transactional_id: &str) -> Option<TransactionMetadata> {
        let encoded = self.node.transactions().get(transactional_id)?;
        decode_state(transactional_id, &encoded)
    }

    fn states(&self) -> Vec<(String, TransactionMetadata)> {
        self.node
            .transactions()
            .all()
            .into_iter()
            .filter_map(|(id, encoded)| {
                let metadata = decode_state(&id, &encoded)?;
                Some((id, metadata))
            })
            .collect()
    }

    fn save<'a>(
        &'a self,
        transactional_id: &'a str,
        metadata: &'a TransactionMetadata,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let state = serde_json::to_string(metadata).map_err(|e| {
                BrokerError::CoordinatorNotAvailable(format!("encoding the state: {e}"))
            })?;
            let command = MetadataCommand::SaveTransactionState {
                transactional_id: transactional_id.to_string(),
                state: Some(state),
            };
            match tokio::time::timeout(SAVE_WAIT_MAX, self.node.propose_as_leader(command)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err(BrokerError::NotCoordinator(error.to_string())),
                Err(_) => Err(BrokerError::CoordinatorNotAvailable(
                    "the metadata group did not commit the transaction's state in time".into(),
                )),
            }
        })
    }

    fn allocate_producer_id(&self) -> BoxFuture<'_, Result<i64, BrokerError>> {
        Box::pin(async move {
            ClusterBroker::allocate_producer_id(self)
                .await
                .map_err(|error| match error {
                    ReplicationError::Broker(error) => error,
                    other => BrokerError::CoordinatorNotAvailable(other.to_string()),
                })
        })
    }

    fn write_marker<'a>(
        &'a self,
        topic: &'a str,
        partition: i32,
        marker: TransactionMarker,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let deadline = Instant::now() + MARKER_WAIT_MAX;
            loop {
                let remaining = deadline.saturating_duration_since(Instant::now());
                let last_error = match self
                    .write_marker_once(topic, partition, marker, remaining)
                    .await
                {
                    Ok(_) => return Ok(()),
                    Err(error) => error,
                };
                if Instant::now() + MARKER_RETRY_PAUSE >= deadline {
                    return Err(BrokerError::CoordinatorNotAvailable(format!(
                        "writing the transaction marker to {topic}-{partition}: {last_error}"
                    )));
                }
                tracing::debug!(topic, partition, error = %last_error, "transaction marker not written yet");
                tokio::time::sleep(MARKER_RETRY_PAUSE).await;
            }
        })
    }

    fn store_offsets<'a>(
        &'a self,
        group_id: &'a str,
        offsets: Vec<(TopicPartition, OffsetAndMetadata)>,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let offsets = offsets
                .into_iter()
                .map(|(partition, offset)| committed_offset(partition, offset))
                .collect();
            let command = MetadataCommand::CommitOffsets {
                group: group_id.to_string(),
                offsets,
            };
            match tokio::time::timeout(SAVE_WAIT_MAX, self.node.propose_as_leader(command)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err(BrokerError::NotCoordinator(error.to_string())),
                Err(_) => Err(BrokerError::CoordinatorNotAvailable(
                    "the metadata group did not commit the transaction's offsets in time".into(),
                )),
            }
        })
    }
}

fn decode_state(transactional_id: &str, encoded: &str) -> Option<TransactionMetadata> {
    match serde_json::from_str(encoded) {
        Ok(metadata) => Some(metadata),
        Err(error) => {
            // Written by this code only; a state this version cannot read is reported, and
            // the id reads as unknown rather than failing every request.
            tracing::error!(transactional_id, %error, "unreadable replicated transaction state");
            None
        }
    }
}
