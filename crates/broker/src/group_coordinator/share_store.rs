//! Where share groups' share-partition states are stored, and what a share partition reads.
//!
//! On one node the states are in the node's own share-state log (an [`OffsetStore`]) and the
//! share partitions read the node's partitions. In a cluster (KIP-932 as Kafka splits it) each
//! share partition lives on its partition's Raft leader and reads that replica, and the states
//! are committed through the metadata group ([`ReplicatedShareStates`]), so a new leader loads
//! a share partition where the old one left it.

use std::sync::{Arc, Weak};

use futures::future::BoxFuture;
use sluice_log::PartitionLog;

use super::{OffsetAndMetadata, TopicPartition};
use crate::offset_store::OffsetStore;
use crate::{FetchedPartition, GroupError, IsolationLevel, Partition};

/// What a share partition reads: a partition of this node, or a cluster partition's replica on
/// its leader.
pub trait ShareLog: Send + Sync {
    fn topic(&self) -> &str;
    fn index(&self) -> i32;
    fn log(&self) -> &Arc<PartitionLog>;
    fn high_watermark(&self) -> i64;
    fn log_start_offset(&self) -> i64;
    fn last_stable_offset(&self) -> i64;
    fn fetch_isolated(
        &self,
        offset: i64,
        bytes_max: usize,
        isolation: IsolationLevel,
    ) -> Result<FetchedPartition, String>;
    /// Counts records handed to a consumer (the topic's traffic counters, where kept).
    fn count_fetched(&self, records: &[u8]);
    /// The leadership this node serves the partition under (0 on one node). A share partition
    /// loaded under another one is loaded again from the stored state: meanwhile another
    /// leader may have moved it on.
    fn leadership(&self) -> u64;
}

impl ShareLog for Partition {
    fn topic(&self) -> &str {
        Partition::topic(self)
    }
    fn index(&self) -> i32 {
        Partition::index(self)
    }
    fn log(&self) -> &Arc<PartitionLog> {
        Partition::log(self)
    }
    fn high_watermark(&self) -> i64 {
        Partition::high_watermark(self)
    }
    fn log_start_offset(&self) -> i64 {
        Partition::log_start_offset(self)
    }
    fn last_stable_offset(&self) -> i64 {
        Partition::last_stable_offset(self)
    }
    fn fetch_isolated(
        &self,
        offset: i64,
        bytes_max: usize,
        isolation: IsolationLevel,
    ) -> Result<FetchedPartition, String> {
        Partition::fetch_isolated(self, offset, bytes_max, isolation).map_err(|e| e.to_string())
    }
    fn count_fetched(&self, records: &[u8]) {
        Partition::count_fetched(self, records)
    }
    fn leadership(&self) -> u64 {
        0
    }
}

/// The share-partition states of a cluster, committed through its metadata group
/// (implemented by [`crate::replication::ClusterBroker`]).
pub trait ReplicatedShareStates: Send + Sync {
    fn fetch(&self, group_id: &str, partition: &TopicPartition) -> Option<OffsetAndMetadata>;
    fn group_offsets(&self, group_id: &str) -> Vec<(TopicPartition, OffsetAndMetadata)>;
    fn groups(&self) -> Vec<String>;
    fn commit<'a>(
        &'a self,
        group_id: &'a str,
        offsets: &'a [(TopicPartition, OffsetAndMetadata)],
    ) -> BoxFuture<'a, Result<(), GroupError>>;
    /// Removes the listed partitions' states, or all of the group's (`None`).
    fn delete<'a>(
        &'a self,
        group_id: &'a str,
        partitions: Option<&'a [TopicPartition]>,
    ) -> BoxFuture<'a, Result<(), GroupError>>;
    /// Tells the other nodes (the partitions' leaders) to load these share partitions (or all
    /// of the group's) again from the stored states, which an admin request just changed.
    /// Best effort: a node that does not hear it loads them again after its next election.
    fn reload_elsewhere<'a>(
        &'a self,
        group_id: &'a str,
        partitions: Option<&'a [TopicPartition]>,
    ) -> BoxFuture<'a, ()>;
    /// Waits until this node applied every state committed before the call (a new partition
    /// leader loads what its predecessor committed last).
    fn catch_up(&self) -> BoxFuture<'_, Result<(), GroupError>>;
}

/// The share-state store in use: the node's own log, or the cluster's metadata group.
pub(crate) enum ShareStore<'a> {
    Local(&'a OffsetStore),
    Replicated(Arc<dyn ReplicatedShareStates>),
}

impl ShareStore<'_> {
    pub(crate) fn choose<'a>(
        local: &'a OffsetStore,
        replicated: Option<&Weak<dyn ReplicatedShareStates>>,
    ) -> ShareStore<'a> {
        match replicated.and_then(Weak::upgrade) {
            Some(replicated) => ShareStore::Replicated(replicated),
            None => ShareStore::Local(local),
        }
    }

    pub(crate) fn fetch(
        &self,
        group_id: &str,
        partition: &TopicPartition,
    ) -> Option<OffsetAndMetadata> {
        match self {
            ShareStore::Local(store) => store.fetch(group_id, partition),
            ShareStore::Replicated(store) => store.fetch(group_id, partition),
        }
    }

    pub(crate) fn group_offsets(&self, group_id: &str) -> Vec<(TopicPartition, OffsetAndMetadata)> {
        match self {
            ShareStore::Local(store) => store.group_offsets(group_id),
            ShareStore::Replicated(store) => store.group_offsets(group_id),
        }
    }

    pub(crate) fn groups(&self) -> Vec<String> {
        match self {
            ShareStore::Local(store) => store.groups(),
            ShareStore::Replicated(store) => store.groups(),
        }
    }

    pub(crate) fn has_offsets(&self, group_id: &str) -> bool {
        match self {
            ShareStore::Local(store) => store.has_offsets(group_id),
            ShareStore::Replicated(store) => !store.group_offsets(group_id).is_empty(),
        }
    }

    pub(crate) async fn commit(
        &self,
        group_id: &str,
        offsets: &[(TopicPartition, OffsetAndMetadata)],
    ) -> Result<(), GroupError> {
        match self {
            ShareStore::Local(store) => store.commit(group_id, offsets).await,
            ShareStore::Replicated(store) => store.commit(group_id, offsets).await,
        }
    }

    pub(crate) async fn delete(
        &self,
        group_id: &str,
        partitions: &[TopicPartition],
    ) -> Result<(), GroupError> {
        match self {
            ShareStore::Local(store) => store.delete(group_id, partitions).await,
            ShareStore::Replicated(store) => store.delete(group_id, Some(partitions)).await,
        }
    }

    pub(crate) async fn delete_group(&self, group_id: &str) -> Result<(), GroupError> {
        match self {
            ShareStore::Local(store) => store.delete_group(group_id).await.map(|_| ()),
            ShareStore::Replicated(store) => store.delete(group_id, None).await,
        }
    }

    /// Before a share partition is loaded: every committed state is applied here (a node's
    /// own log always is).
    pub(crate) async fn catch_up(&self) -> Result<(), GroupError> {
        match self {
            ShareStore::Local(_) => Ok(()),
            ShareStore::Replicated(store) => store.catch_up().await,
        }
    }

    /// After an admin change of stored states: share partitions loaded on other nodes are
    /// loaded again (one node has no others).
    pub(crate) async fn reload_elsewhere(
        &self,
        group_id: &str,
        partitions: Option<&[TopicPartition]>,
    ) {
        if let ShareStore::Replicated(store) = self {
            store.reload_elsewhere(group_id, partitions).await;
        }
    }
}
