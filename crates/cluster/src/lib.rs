//! The cluster layer: consensus comes from `openraft`, this crate only adapts it.
//!
//! - One **metadata** Raft group over all nodes (brokers, topics, assignments, configs,
//!   producer-id blocks, group coordinators), as Kafka's KRaft controller quorum.
//! - One Raft group **per replicated partition** over its replicas. The partition's segmented
//!   log is that group's Raft log, so data is written once.
//! - One multiplexed connection per node pair carries the traffic of every group.
//!
//! Nothing here knows Kafka or AMQP: the broker drives it.
//!
//! Modules: [`transport`] (the multiplexed connections and openraft's network on top),
//! [`metadata`] (the metadata group's type config, commands, state machine and storage),
//! [`node`] ([`node::ClusterNode`]: a running node; joining a running cluster and removing a
//! node are membership changes of the metadata group) and [`peers`] (`--peers` parsing).

pub mod partition;

use serde::{Deserialize, Serialize};

/// A node's id, as given by `--node-id` (Kafka's broker id).
pub type NodeId = u64;

/// What every node knows about another: where its Raft transport and its Kafka listener are.
/// This is openraft's `Node` type for every group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeAddress {
    /// `--cluster-listen`: the node-to-node transport.
    pub cluster_addr: String,
    /// The address Kafka clients are told to use for this node (Metadata's broker list).
    pub kafka_addr: String,
}

impl std::fmt::Display for NodeAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cluster={} kafka={}", self.cluster_addr, self.kafka_addr)
    }
}

/// Which Raft group a message between nodes belongs to: the transport multiplexes them all
/// over one connection per node pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum GroupId {
    Metadata,
    Partition {
        topic_id: uuid::Uuid,
        partition: i32,
    },
    /// No Raft group: requests one node's broker serves for another, such as the transaction
    /// coordinator's markers for the partitions this node leads.
    Broker,
}

pub mod early_election;
pub mod metadata;
pub mod node;
pub mod peers;
pub mod transport;
