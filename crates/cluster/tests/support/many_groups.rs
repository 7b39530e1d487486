//! Three nodes in one process hosting many idle Raft groups (the metadata type config on a
//! simulated disk, standing in for partitions), for the coalescing test and measurement.
//! Included by `tests/many_groups.rs` and `examples/heartbeat_coalescing.rs` with `#[path]`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::Raft;
use sluice_cluster::metadata::{MetadataLogStore, MetadataRaft, MetadataStateMachine};
use sluice_cluster::node::{ClusterConfig, ClusterNode, RaftTimings};
use sluice_cluster::transport::{TransportConfig, TransportStats};
use sluice_cluster::{GroupId, NodeAddress, NodeId};
use sluice_log::SimDisk;
use tokio::net::TcpListener;
use tokio::time::Instant;

pub struct ManyGroups {
    pub nodes: Vec<Arc<ClusterNode>>,
    /// `rafts[node][group]`.
    pub rafts: Vec<Vec<Raft<MetadataRaft>>>,
}

pub fn group_id(index: usize) -> GroupId {
    GroupId::Partition {
        topic_id: uuid::Uuid::from_u128(index as u128 + 1),
        partition: 0,
    }
}

/// Starts 3 nodes with `groups` groups over all of them; leadership is spread by initializing
/// group g on node g mod 3.
pub async fn start(groups: usize, coalesce_writes: bool, timings: RaftTimings) -> ManyGroups {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let mut listeners = Vec::new();
    for node_id in 1..=3u64 {
        listeners.push((node_id, TcpListener::bind("127.0.0.1:0").await.unwrap()));
    }
    let addrs: Vec<_> = listeners
        .iter()
        .map(|(id, l)| (*id, l.local_addr().unwrap()))
        .collect();
    let mut nodes = Vec::new();
    for (node_id, listener) in listeners {
        let disk = SimDisk::new(node_id);
        let mut config = ClusterConfig::new(
            node_id,
            addrs[(node_id - 1) as usize].1,
            addrs.clone(),
            String::new(),
            PathBuf::from(format!("/node-{node_id}")),
            disk.storage(),
        );
        config.timings = timings;
        let mut transport = TransportConfig::new(node_id);
        transport.coalesce_writes = coalesce_writes;
        config.transport = Some(transport);
        nodes.push(
            ClusterNode::start_with_listener(config, listener)
                .await
                .unwrap(),
        );
    }
    let mut rafts: Vec<Vec<_>> = (0..3).map(|_| Vec::with_capacity(groups)).collect();
    for group in 0..groups {
        for (n, node) in nodes.iter().enumerate() {
            // A disk per group: the simulated disk's directory sync scans every file it holds,
            // which thousands of groups on one disk would turn quadratic.
            let disk = SimDisk::new((group * 3 + n) as u64);
            let dir = PathBuf::from("/group");
            let storage = disk.storage();
            let log = MetadataLogStore::open(storage.clone(), &dir).unwrap();
            let machine = MetadataStateMachine::open(storage, &dir).unwrap();
            let raft = node
                .start_group::<MetadataRaft, _, _>(group_id(group), log, machine)
                .await
                .unwrap();
            rafts[n].push(raft);
        }
    }
    let members: BTreeMap<NodeId, NodeAddress> = addrs
        .iter()
        .map(|(id, addr)| {
            let node = NodeAddress {
                cluster_addr: addr.to_string(),
                kafka_addr: String::new(),
            };
            (*id, node)
        })
        .collect();
    let initializing = (0..groups).map(|group| rafts[group % 3][group].initialize(members.clone()));
    for result in futures::future::join_all(initializing).await {
        result.unwrap();
    }
    ManyGroups { nodes, rafts }
}

impl ManyGroups {
    /// Waits until every group has a leader all three replicas agree on.
    pub async fn wait_all_led(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let groups = self.rafts[0].len();
        for group in 0..groups {
            loop {
                let leaders: Vec<_> = self
                    .rafts
                    .iter()
                    .map(|rafts| rafts[group].metrics().borrow().current_leader)
                    .collect();
                if leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0]) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "group {group} has no agreed leader: {leaders:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Sum of the three transports' counters.
    pub fn stats(&self) -> TransportStats {
        let mut total = TransportStats::default();
        for node in &self.nodes {
            let s = node.transport().stats();
            total.frames_sent += s.frames_sent;
            total.writes += s.writes;
            total.bytes_sent += s.bytes_sent;
            total.frames_received += s.frames_received;
            total.bad_connections += s.bad_connections;
        }
        total
    }

    /// The highest term of any group on any node (an election raises it).
    pub fn max_term(&self) -> u64 {
        self.rafts
            .iter()
            .flatten()
            .map(|raft| raft.metrics().borrow().current_term)
            .max()
            .unwrap_or(0)
    }

    pub async fn shutdown(self) {
        for node in &self.nodes {
            node.shutdown().await;
        }
    }
}

/// What a measurement window saw.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub seconds: f64,
    pub frames: u64,
    pub writes: u64,
    pub bytes: u64,
}

impl Window {
    pub fn frames_per_second(&self) -> f64 {
        self.frames as f64 / self.seconds
    }

    pub fn writes_per_second(&self) -> f64 {
        self.writes as f64 / self.seconds
    }
}

pub async fn measure(cluster: &ManyGroups, duration: Duration) -> Window {
    let before = cluster.stats();
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    let after = cluster.stats();
    Window {
        seconds: started.elapsed().as_secs_f64(),
        frames: after.frames_sent - before.frames_sent,
        writes: after.writes - before.writes,
        bytes: after.bytes_sent - before.bytes_sent,
    }
}
