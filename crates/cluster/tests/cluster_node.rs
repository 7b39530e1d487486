//! Three in-process nodes over real TCP on 127.0.0.1: the metadata group elects, forwards,
//! fails over and survives restarts.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice_cluster::metadata::{ClusterMetadata, MetadataCommand, MetadataResponse};
use sluice_cluster::node::{ClusterConfig, ClusterError, ClusterNode};
use sluice_cluster::NodeId;
use sluice_log::RealDisk;
use tokio::net::TcpListener;
use tokio::time::Instant;

struct Cluster {
    addrs: Vec<(NodeId, SocketAddr)>,
    nodes: Vec<Option<Arc<ClusterNode>>>,
    dir: tempfile::TempDir,
}

fn config(node_id: NodeId, addrs: &[(NodeId, SocketAddr)], data: &Path) -> ClusterConfig {
    let own = addrs
        .iter()
        .find(|(id, _)| *id == node_id)
        .map(|(_, a)| *a)
        .unwrap();
    ClusterConfig::new(
        node_id,
        own,
        addrs.to_vec(),
        format!("127.0.0.1:{}", 19090 + node_id),
        data.join(format!("node-{node_id}")),
        Arc::new(RealDisk),
    )
}

impl Cluster {
    async fn start(size: u64) -> Self {
        let mut listeners = Vec::new();
        for node_id in 1..=size {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listeners.push((node_id, listener));
        }
        let addrs: Vec<_> = listeners
            .iter()
            .map(|(id, l)| (*id, l.local_addr().unwrap()))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for (node_id, listener) in listeners {
            let node =
                ClusterNode::start_with_listener(config(node_id, &addrs, dir.path()), listener)
                    .await
                    .unwrap();
            nodes.push(Some(node));
        }
        Self { addrs, nodes, dir }
    }

    fn node(&self, node_id: NodeId) -> &Arc<ClusterNode> {
        self.nodes[(node_id - 1) as usize].as_ref().unwrap()
    }

    fn running(&self) -> impl Iterator<Item = &Arc<ClusterNode>> {
        self.nodes.iter().flatten()
    }

    async fn stop(&mut self, node_id: NodeId) {
        if let Some(node) = self.nodes[(node_id - 1) as usize].take() {
            node.shutdown().await;
        }
    }

    async fn restart(&mut self, node_id: NodeId) {
        let node = ClusterNode::start(config(node_id, &self.addrs, self.dir.path()))
            .await
            .unwrap();
        self.nodes[(node_id - 1) as usize] = Some(node);
    }

    /// The leader every running node agrees on.
    async fn agreed_leader(&self, within: Duration) -> NodeId {
        let deadline = Instant::now() + within;
        loop {
            let leaders: Vec<_> = self.running().map(|n| n.metadata_leader()).collect();
            if let Some(Some(leader)) = leaders.first() {
                let is_running = self.running().any(|n| n.node_id() == *leader);
                if is_running && leaders.iter().all(|l| *l == Some(*leader)) {
                    return *leader;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {within:?}: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until every running node's metadata satisfies `check`.
    async fn wait_metadata(&self, within: Duration, check: impl Fn(&ClusterMetadata) -> bool) {
        let deadline = Instant::now() + within;
        for node in self.running() {
            let mut rx = node.metadata();
            loop {
                if check(&rx.borrow_and_update()) {
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                assert!(
                    !left.is_zero(),
                    "node {} metadata never matched: {:?}",
                    node.node_id(),
                    *rx.borrow()
                );
                let _ = tokio::time::timeout(left, rx.changed()).await;
            }
        }
    }

    async fn shutdown(mut self) {
        for node_id in 1..=self.nodes.len() as u64 {
            self.stop(node_id).await;
        }
    }
}

fn create_topic(name: &str, n: u128) -> MetadataCommand {
    MetadataCommand::CreateTopic {
        name: name.into(),
        topic_id: uuid::Uuid::from_u128(n),
        partition_count: 3,
        replication_factor: 3,
        assignments: vec![vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2]],
        configs: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_a_leader_and_every_broker_registers() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.agreed_leader(Duration::from_secs(5)).await;
    assert!((1..=3).contains(&leader));
    cluster
        .wait_metadata(Duration::from_secs(5), |m| {
            m.brokers.len() == 3
                && m.brokers
                    .iter()
                    .all(|(id, a)| a.kafka_addr == format!("127.0.0.1:{}", 19090 + id))
        })
        .await;
    for node in cluster.running() {
        let brokers = node.metadata().borrow().brokers.clone();
        assert_eq!(
            brokers[&node.node_id()].cluster_addr,
            node.transport().local_addr().to_string()
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposal_on_a_follower_is_forwarded_and_applied_on_all() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.agreed_leader(Duration::from_secs(5)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let response = cluster
        .node(follower)
        .propose(create_topic("orders", 1))
        .await
        .unwrap();
    assert_eq!(response, MetadataResponse::Done);
    cluster
        .wait_metadata(Duration::from_secs(5), |m| m.topics.contains_key("orders"))
        .await;
    // Responses come back through the forwarding: a second create is rejected, and producer-id
    // blocks do not overlap whoever asks.
    let again = cluster
        .node(follower)
        .propose(create_topic("orders", 2))
        .await
        .unwrap();
    assert!(matches!(again, MetadataResponse::Rejected(_)), "{again:?}");
    let allocate = |node_id| MetadataCommand::AllocateProducerIdBlock {
        node_id,
        block_size: 1000,
    };
    let first = cluster
        .node(follower)
        .propose(allocate(follower))
        .await
        .unwrap();
    let second = cluster
        .node(leader)
        .propose(allocate(leader))
        .await
        .unwrap();
    let start = |r: MetadataResponse| match r {
        MetadataResponse::ProducerIdBlock {
            first_producer_id, ..
        } => first_producer_id,
        other => panic!("{other:?}"),
    };
    assert_eq!((start(first) - start(second)).abs(), 1000);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_catches_up_sees_every_acknowledged_change() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.agreed_leader(Duration::from_secs(5)).await;
    for n in 0..20u128 {
        let name = format!("topic-{n}");
        let response = cluster
            .node(leader)
            .propose(create_topic(&name, n + 1))
            .await
            .unwrap();
        assert_eq!(response, MetadataResponse::Done);
        // Followers apply at the next heartbeat; after catching up they already have it.
        for node in cluster.running() {
            node.catch_up().await.unwrap();
            assert!(
                node.metadata().borrow().topics.contains_key(&name),
                "node {} does not know {name} after catching up",
                node.node_id()
            );
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_shutdown_elects_a_new_leader_and_commands_still_apply() {
    let mut cluster = Cluster::start(3).await;
    let old_leader = cluster.agreed_leader(Duration::from_secs(5)).await;
    cluster
        .wait_metadata(Duration::from_secs(5), |m| m.brokers.len() == 3)
        .await;
    let stopped_at = Instant::now();
    cluster.stop(old_leader).await;
    let new_leader = cluster.agreed_leader(Duration::from_secs(2)).await;
    let failover = stopped_at.elapsed();
    assert_ne!(new_leader, old_leader);
    println!("metadata failover took {failover:?}");
    let survivor = cluster.running().next().unwrap().clone();
    let response = survivor
        .propose(create_topic("after-failover", 3))
        .await
        .unwrap();
    assert_eq!(response, MetadataResponse::Done);
    cluster
        .wait_metadata(Duration::from_secs(5), |m| {
            m.topics.contains_key("after-failover")
        })
        .await;
    cluster.shutdown().await;
}

/// With the election timers switched off, only the early campaign (the survivors noticing
/// that the leader's connection dropped) can replace a leader whose process is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survivors_campaign_as_soon_as_the_leaders_connection_drops() {
    let mut cluster = Cluster::start(3).await;
    let old_leader = cluster.agreed_leader(Duration::from_secs(5)).await;
    cluster
        .wait_metadata(Duration::from_secs(5), |m| m.brokers.len() == 3)
        .await;
    for node in cluster.running() {
        node.metadata_raft().runtime_config().elect(false);
    }
    cluster.stop(old_leader).await;
    let new_leader = cluster.agreed_leader(Duration::from_secs(5)).await;
    assert_ne!(new_leader, old_leader);
    let survivor = cluster.running().next().unwrap().clone();
    let response = survivor
        .propose(create_topic("after-early-election", 1))
        .await
        .unwrap();
    assert_eq!(response, MetadataResponse::Done);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_nodes_keep_their_metadata_and_do_not_reinitialize() {
    let mut cluster = Cluster::start(3).await;
    cluster.agreed_leader(Duration::from_secs(5)).await;
    cluster
        .node(1)
        .propose(create_topic("kept", 4))
        .await
        .unwrap();
    cluster
        .wait_metadata(Duration::from_secs(5), |m| {
            m.topics.contains_key("kept") && m.brokers.len() == 3
        })
        .await;
    for node_id in 1..=3 {
        cluster.stop(node_id).await;
    }
    // Alone, node 3 cannot reach a quorum: what it shows comes from its own disk.
    cluster.restart(3).await;
    cluster
        .wait_metadata(Duration::from_secs(5), |m| m.topics.contains_key("kept"))
        .await;
    cluster.restart(1).await;
    cluster.restart(2).await;
    cluster.agreed_leader(Duration::from_secs(5)).await;
    cluster
        .node(2)
        .propose(create_topic("later", 5))
        .await
        .unwrap();
    cluster
        .wait_metadata(Duration::from_secs(5), |m| {
            m.topics.contains_key("kept") && m.topics.contains_key("later") && m.brokers.len() == 3
        })
        .await;
    cluster.shutdown().await;
}

/// Starts node `node_id` listening on `listen`, joining through `join` (no peer list).
async fn start_joining(
    cluster: &Cluster,
    node_id: NodeId,
    listen: SocketAddr,
    join: Vec<SocketAddr>,
) -> Result<Arc<ClusterNode>, ClusterError> {
    let mut config = ClusterConfig::new(
        node_id,
        listen,
        Vec::new(),
        format!("127.0.0.1:{}", 19090 + node_id),
        cluster.dir.path().join(format!("node-{node_id}")),
        Arc::new(RealDisk),
    );
    config.join = join;
    ClusterNode::start(config).await
}

/// A node joins through a list whose first address is dead, becomes a voter and a broker on
/// every node, and commands it proposes apply everywhere. Restarted without --join (its data
/// directory remembers) and then with it again, it is still a voter and nothing is added
/// twice. A fresh node with neither a peer list nor --join refuses to start, and one whose
/// --join addresses never answer gives up after its join timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_node_restarts_with_or_without_join() {
    let cluster = Cluster::start(3).await;
    cluster.agreed_leader(Duration::from_secs(5)).await;
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let listen = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let own = listen.local_addr().unwrap();
    drop(listen);
    let join = vec![dead_addr, cluster.addrs[2].1];

    let joined = start_joining(&cluster, 4, own, join.clone()).await.unwrap();
    assert_eq!(joined.metadata_voters(), [1, 2, 3, 4].into());
    let all = |m: &ClusterMetadata| m.brokers.len() == 4;
    cluster.wait_metadata(Duration::from_secs(5), all).await;
    for node in cluster.running() {
        let deadline = Instant::now() + Duration::from_secs(5);
        while node.metadata_voters() != [1, 2, 3, 4].into() {
            assert!(
                Instant::now() < deadline,
                "node {} never saw 4 join",
                node.node_id()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(node.metadata_members()[&4], own.to_string());
    }
    joined.propose(create_topic("from-4", 9)).await.unwrap();
    cluster
        .wait_metadata(Duration::from_secs(5), |m| m.topics.contains_key("from-4"))
        .await;

    // Restart without --join: the stored membership is enough.
    joined.shutdown().await;
    let restarted = start_joining(&cluster, 4, own, Vec::new()).await.unwrap();
    let mut metadata = restarted.metadata();
    tokio::time::timeout(
        Duration::from_secs(5),
        metadata.wait_for(|m| m.topics.contains_key("from-4") && m.brokers.len() == 4),
    )
    .await
    .unwrap()
    .unwrap();
    restarted.propose(create_topic("again", 10)).await.unwrap();
    restarted.shutdown().await;
    // And with --join again: it is a voter already, nothing to do.
    let rejoined = start_joining(&cluster, 4, own, join).await.unwrap();
    assert_eq!(rejoined.metadata_voters(), [1, 2, 3, 4].into());
    rejoined.propose(create_topic("thrice", 11)).await.unwrap();
    assert_eq!(cluster.node(1).metadata_members().len(), 4);
    rejoined.shutdown().await;

    let fresh = start_joining(&cluster, 5, "127.0.0.1:0".parse().unwrap(), Vec::new()).await;
    assert!(
        matches!(fresh, Err(ClusterError::NothingToStartFrom)),
        "{:?}",
        fresh.err()
    );

    // Only dead addresses: no member answers, and joining gives up after its timeout.
    let listen = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let own = listen.local_addr().unwrap();
    drop(listen);
    let mut config = ClusterConfig::new(
        6,
        own,
        Vec::new(),
        "127.0.0.1:19096".into(),
        cluster.dir.path().join("node-6"),
        Arc::new(RealDisk),
    );
    config.join = vec![dead_addr];
    config.join_timeout = Some(Duration::from_secs(1));
    let started = Instant::now();
    let lonely = ClusterNode::start(config).await;
    assert!(
        matches!(lonely, Err(ClusterError::JoinTimedOut { .. })),
        "{:?}",
        lonely.err()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    cluster.shutdown().await;
}
