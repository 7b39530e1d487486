//! Three in-process nodes on 127.0.0.1 (real TCP between them), each a `Broker` with its
//! `ClusterBroker`: an RF=3 topic is created through the metadata group, acks=all produce on
//! the Raft leader, NOT_LEADER on a follower, the leader is stopped and another takes over
//! within seconds, every acknowledged batch is still there at the same offsets on every
//! replica, and an idempotent retry sent to the new leader is not written twice. Committed
//! consumer offsets survive the coordinator (the metadata leader). With four nodes and RF=3,
//! the node without a replica names the partition's leader and follows a leader change.
//! Transactions are coordinated by the metadata leader: their markers reach partitions led
//! elsewhere, read_committed stops at the last stable offset, and a new coordinator continues
//! a transaction the old one left open.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::raft::VoteRequest;
use openraft::{CommittedLeaderId, LogId, Vote};
use sluice_broker::group_coordinator::{OffsetAndMetadata, TopicPartition};
use sluice_broker::replication::{ClusterBroker, ReassignmentError, Replica, ReplicationError};
use sluice_broker::{
    Broker, BrokerConfig, BrokerError, GroupError, IsolationLevel, TransactionState,
    TransactionalProducer,
};
use sluice_cluster::node::{ClusterConfig, ClusterNode, MembershipError, RaftTimings};
use sluice_cluster::NodeId;
use sluice_log::{validate_batches, RealDisk, Record, RecordBatchBuilder, TransactionResult};
use tokio::net::TcpListener;

const TOPIC: &str = "replicated";
const TIMEOUT: Duration = Duration::from_secs(10);

struct Node {
    cluster: Arc<ClusterBroker>,
    broker: Arc<Broker>,
}

struct Cluster {
    addrs: Vec<(NodeId, SocketAddr)>,
    nodes: BTreeMap<NodeId, Node>,
    dir: tempfile::TempDir,
    timings: RaftTimings,
}

impl Cluster {
    async fn start() -> Cluster {
        Cluster::start_nodes(3).await
    }

    async fn start_nodes(count: NodeId) -> Cluster {
        Cluster::start_with(count, RaftTimings::default()).await
    }

    async fn start_with(count: NodeId, timings: RaftTimings) -> Cluster {
        let mut listeners = Vec::new();
        for node_id in 1..=count {
            listeners.push((node_id, TcpListener::bind("127.0.0.1:0").await.unwrap()));
        }
        let addrs: Vec<_> = listeners
            .iter()
            .map(|(id, l)| (*id, l.local_addr().unwrap()))
            .collect();
        let mut cluster = Cluster {
            addrs,
            nodes: BTreeMap::new(),
            // Under the target directory: on a tmpfs (often /tmp) pages cannot be released.
            dir: tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap(),
            timings,
        };
        for (node_id, listener) in listeners {
            cluster.start_node(node_id, Some(listener)).await;
        }
        cluster
    }

    async fn start_node(&mut self, node_id: NodeId, listener: Option<TcpListener>) {
        let data = self.dir.path().join(format!("node-{node_id}"));
        let mut broker_config = BrokerConfig::new(data.clone());
        broker_config.node_id = node_id as i32;
        // A node stopped in this process holds its directory's lock until the last task of
        // that instance drops its broker (seen in CI on a loaded machine): wait for it.
        let deadline = Instant::now() + TIMEOUT;
        let broker = loop {
            match Broker::open(broker_config.clone()) {
                Ok(broker) => break broker,
                Err(error) if Instant::now() < deadline && error.to_string().contains("in use") => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("opening node {node_id}'s broker: {error}"),
            }
        };
        let own = self.addrs.iter().find(|(id, _)| *id == node_id).unwrap().1;
        let mut config = ClusterConfig::new(
            node_id,
            own,
            self.addrs.clone(),
            format!("127.0.0.1:{}", 29090 + node_id),
            data,
            Arc::new(RealDisk),
        );
        config.timings = self.timings;
        let node = match listener {
            Some(listener) => ClusterNode::start_with_listener(config, listener).await,
            None => ClusterNode::start(config).await,
        }
        .unwrap();
        let cluster = ClusterBroker::start(node, Arc::clone(&broker), 3);
        self.nodes.insert(node_id, Node { cluster, broker });
    }

    /// Starts node `node_id` with `--join` through node `via` instead of a peer list.
    async fn join_node(&mut self, node_id: NodeId, via: NodeId) -> Result<(), String> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let own = listener.local_addr().unwrap();
        // Its own directory even for an id in use (a would-be impostor has its own disk).
        let data = self
            .dir
            .path()
            .join(format!("joined-{node_id}-{}", own.port()));
        let mut broker_config = BrokerConfig::new(data.clone());
        broker_config.node_id = node_id as i32;
        let broker = Broker::open(broker_config).unwrap();
        let mut config = ClusterConfig::new(
            node_id,
            own,
            Vec::new(),
            format!("127.0.0.1:{}", 29090 + node_id),
            data,
            Arc::new(RealDisk),
        );
        config.join = vec![self.addrs.iter().find(|(id, _)| *id == via).unwrap().1];
        let node = match ClusterNode::start_with_listener(config, listener).await {
            Ok(node) => node,
            Err(e) => {
                broker.shutdown();
                return Err(e.to_string());
            }
        };
        self.addrs.push((node_id, own));
        let cluster = ClusterBroker::start(node, Arc::clone(&broker), 3);
        self.nodes.insert(node_id, Node { cluster, broker });
        Ok(())
    }

    /// Stops a node: its groups, its transport (so peers see it gone) and its broker.
    async fn stop(&mut self, node_id: NodeId) {
        let node = self.nodes.remove(&node_id).unwrap();
        node.cluster.shutdown().await;
        node.broker.shutdown();
    }

    /// Brokers register in the background: waits until node 1 knows `count` of them.
    async fn wait_for_brokers(&self, count: usize) {
        let first = &self.nodes[&1].cluster;
        let deadline = Instant::now() + TIMEOUT;
        while first.brokers().len() < count {
            assert!(Instant::now() < deadline, "brokers did not register");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Creates [`TOPIC`] with `partitions` partitions, RF=3, through node 1 once all three
    /// brokers registered.
    async fn create_topic(&self, partitions: i32) {
        self.wait_for_brokers(3).await;
        self.nodes[&1]
            .cluster
            .create_topic(TOPIC, partitions, 3, BTreeMap::new(), false)
            .await
            .unwrap();
    }

    fn replica(&self, node_id: NodeId) -> Arc<Replica> {
        let cluster = &self.nodes[&node_id].cluster;
        cluster.replica_for(TOPIC, 0).unwrap()
    }

    /// Waits until every running node's replica agrees on one leader among the running nodes
    /// (nodes without a replica of the partition have no say).
    async fn leader(&self) -> NodeId {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let views: Vec<Option<NodeId>> = self
                .nodes
                .values()
                .filter_map(|n| n.cluster.replica_for(TOPIC, 0).ok())
                .map(|r| r.leader_and_term().0)
                .collect();
            if let Some(Some(leader)) = views.first() {
                if views.iter().all(|v| *v == Some(*leader))
                    && self.nodes.contains_key(leader)
                    && self.replica(*leader).is_leader()
                {
                    return *leader;
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader: {views:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn batch(producer_id: i64, sequence: i32, values: &[&str]) -> Bytes {
    let mut builder = RecordBatchBuilder::new();
    for value in values {
        builder.push(Record {
            timestamp: 1_000,
            value: Some(value.as_bytes().to_vec()),
            ..Record::default()
        });
    }
    if producer_id >= 0 {
        builder.producer(producer_id, 0, sequence);
    }
    Bytes::from(builder.build())
}

/// The data batches (not Raft's control batches) of a replica's log below its high
/// watermark: (base offset, first value).
fn data_batches(replica: &Replica) -> Vec<(i64, Vec<u8>)> {
    let log = replica.log();
    let read = log.read(log.log_start_offset(), 64 << 20).unwrap();
    let mut out = Vec::new();
    let headers = validate_batches(&read.records).unwrap();
    let mut position = 0usize;
    for header in headers {
        let length = 12 + header.batch_length as usize;
        let bytes = &read.records[position..position + length];
        position += length;
        if header.attributes & 0x20 != 0 {
            continue;
        }
        let records = sluice_log::decode_records(bytes).unwrap();
        out.push((header.base_offset, records[0].value.clone().unwrap()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_batches_survive_the_leader_and_retries_are_not_duplicated() {
    let mut cluster = Cluster::start().await;
    let first = cluster.nodes[&1].cluster.clone();
    cluster.wait_for_brokers(3).await;
    // More replicas than brokers is refused, as Kafka does.
    let too_many = first
        .create_topic("too-many", 1, 4, BTreeMap::new(), false)
        .await;
    assert!(
        matches!(
            too_many,
            Err(ReplicationError::Broker(
                BrokerError::InvalidReplicationFactor(_)
            ))
        ),
        "{too_many:?}"
    );
    first
        .create_topic(TOPIC, 1, 3, BTreeMap::new(), false)
        .await
        .unwrap();
    let topic = first.topic(TOPIC).unwrap();
    assert_eq!(topic.assignments[0].len(), 3);
    // The leader may be node 1 (the preferred replica goes first): its handles go before it
    // is stopped, so that it can be restarted on the same data directory.
    drop(first);

    let leader = cluster.leader().await;
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    let refused = cluster
        .replica(follower)
        .produce(batch(-1, -1, &["nope"]), 1, TIMEOUT)
        .await;
    assert!(
        matches!(refused, Err(ReplicationError::NotLeader)),
        "{refused:?}"
    );

    // Acknowledged writes: plain and idempotent (producer 7, sequences 0, 1, 2).
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let value = format!("plain-{i}");
        let outcome = cluster
            .replica(leader)
            .produce(batch(-1, -1, &[&value]), 2, TIMEOUT)
            .await
            .unwrap();
        acknowledged.push((outcome.base_offset, value.into_bytes()));
    }
    let mut idempotent = Vec::new();
    for sequence in 0..3 {
        let value = format!("idem-{sequence}");
        let sent = batch(7, sequence, &[&value]);
        let outcome = cluster
            .replica(leader)
            .produce(sent.clone(), 2, TIMEOUT)
            .await
            .unwrap();
        acknowledged.push((outcome.base_offset, value.into_bytes()));
        idempotent.push((sent, outcome.base_offset));
    }
    // A retry on the same leader is answered with the original offset.
    let (last_sent, last_offset) = idempotent.last().cloned().unwrap();
    let retried = cluster
        .replica(leader)
        .produce(last_sent.clone(), 1, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(retried.base_offset, last_offset);

    // The leader goes away: another is elected within seconds.
    let stopped_at = Instant::now();
    cluster.stop(leader).await;
    let new_leader = cluster.leader().await;
    let failover = stopped_at.elapsed();
    assert_ne!(new_leader, leader);
    assert!(
        failover < Duration::from_secs(3),
        "failover took {failover:?}"
    );
    println!("failover took {failover:?}");

    // Two of three voters are left: min.insync.replicas=3 refuses, 2 accepts (below).
    let refused = cluster
        .replica(new_leader)
        .produce(batch(-1, -1, &["needs-three"]), 3, TIMEOUT)
        .await;
    assert!(
        matches!(refused, Err(ReplicationError::NotEnoughReplicas)),
        "{refused:?}"
    );
    // OffsetForLeaderEpoch (KIP-320): the old leader's term ends where the new term starts,
    // at or after every batch acknowledged under it; a stale current epoch is fenced.
    let (old_term, new_term) = {
        let replica = cluster.replica(new_leader);
        let new_term = replica.leader_and_term().1 as i32;
        let old_term = cluster.nodes[&new_leader]
            .cluster
            .replica_for(TOPIC, 0)
            .unwrap()
            .log()
            .read(acknowledged.last().unwrap().0, 1 << 20)
            .map(|r| validate_batches(&r.records).unwrap()[0].partition_leader_epoch)
            .unwrap();
        (old_term, new_term)
    };
    assert!(old_term < new_term, "{old_term} < {new_term}");
    let (epoch, end_offset) = cluster
        .replica(new_leader)
        .end_offset_for_epoch(old_term, new_term)
        .unwrap();
    assert_eq!(epoch, old_term);
    assert!(end_offset > acknowledged.last().unwrap().0, "{end_offset}");
    let fenced = cluster
        .replica(new_leader)
        .end_offset_for_epoch(old_term, old_term);
    assert!(
        matches!(fenced, Err(ReplicationError::FencedLeaderEpoch)),
        "{fenced:?}"
    );

    // The producer retries its last batch on the new leader (its ack was "lost"): the new
    // leader knows the sequence from the replicated log and answers with the original offset.
    let retried = cluster
        .replica(new_leader)
        .produce(last_sent, 1, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(retried.base_offset, last_offset, "retry across failover");
    // The next sequence is accepted, a gap is refused.
    let next = cluster
        .replica(new_leader)
        .produce(batch(7, 3, &["idem-3"]), 1, TIMEOUT)
        .await
        .unwrap();
    acknowledged.push((next.base_offset, b"idem-3".to_vec()));
    let gap = cluster
        .replica(new_leader)
        .produce(batch(7, 9, &["gap"]), 1, TIMEOUT)
        .await;
    assert!(
        matches!(
            gap,
            Err(ReplicationError::Broker(BrokerError::OutOfOrderSequence(_)))
        ),
        "{gap:?}"
    );

    // The stopped node comes back and catches up: every replica holds every acknowledged
    // batch exactly once, at the offset it was acknowledged with.
    cluster.start_node(leader, None).await;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let logs: Vec<Vec<(i64, Vec<u8>)>> = (1..=3)
            .map(|n| {
                cluster.nodes[&n]
                    .cluster
                    .replica_for(TOPIC, 0)
                    .map(|r| data_batches(&r))
                    .unwrap_or_default()
            })
            .collect();
        if logs.iter().all(|l| l.len() == acknowledged.len()) {
            for log in &logs {
                assert_eq!(log, &acknowledged, "a replica's log differs from the acks");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not converge: {:?}",
            logs.iter().map(Vec::len).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for node_id in [1, 2, 3] {
        cluster.stop(node_id).await;
    }
}

/// Waits until every running node names the same running node as metadata leader (the
/// coordinator of every consumer group).
async fn metadata_leader(cluster: &Cluster) -> NodeId {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let views: Vec<Option<NodeId>> = cluster
            .nodes
            .values()
            .map(|n| n.cluster.controller())
            .collect();
        if let Some(Some(leader)) = views.first() {
            if views.iter().all(|v| *v == Some(*leader)) && cluster.nodes.contains_key(leader) {
                return *leader;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no agreed metadata leader: {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn offset(value: i64, metadata: &str) -> OffsetAndMetadata {
    OffsetAndMetadata {
        offset: value,
        leader_epoch: 3,
        metadata: metadata.to_string(),
        commit_timestamp_ms: 1_000,
    }
}

fn partition(index: i32) -> TopicPartition {
    TopicPartition {
        topic: TOPIC.to_string(),
        partition: index,
    }
}

/// Offsets a node returns for partitions 0 and 1 of the group.
async fn fetched(node: &ClusterBroker, group: &str) -> Vec<Option<i64>> {
    node.fetch_offsets(group, Some(&[partition(0), partition(1)]))
        .await
        .unwrap()
        .into_iter()
        .map(|(_, o)| o.map(|o| o.offset))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn committed_offsets_survive_the_coordinator() {
    let mut cluster = Cluster::start().await;
    let first = cluster.nodes[&1].cluster.clone();
    cluster.create_topic(2).await;

    let coordinator = metadata_leader(&cluster).await;
    let other = (1..=3).find(|&n| n != coordinator).unwrap();
    let leader_cluster = cluster.nodes[&coordinator].cluster.clone();
    let commits = vec![
        (partition(0), offset(10, "a")),
        (partition(1), offset(20, "b")),
    ];
    let results = leader_cluster
        .commit_offsets("readers", "", None, -1, commits)
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    // The committer is still checked against the group: a generation no one knows is refused.
    let stale = leader_cluster
        .commit_offsets("readers", "m", None, 5, vec![(partition(0), offset(1, ""))])
        .await;
    assert_eq!(stale, Err(GroupError::IllegalGeneration));
    // Other nodes do not coordinate: clients are sent to find the coordinator again.
    let elsewhere = cluster.nodes[&other].cluster.clone();
    assert_eq!(
        elsewhere
            .commit_offsets(
                "readers",
                "",
                None,
                -1,
                vec![(partition(0), offset(99, ""))]
            )
            .await,
        Err(GroupError::NotCoordinator)
    );
    assert_eq!(
        elsewhere.fetch_offsets("readers", None).await,
        Err(GroupError::NotCoordinator)
    );
    assert_eq!(
        fetched(&leader_cluster, "readers").await,
        vec![Some(10), Some(20)]
    );

    // The coordinator dies: the next metadata leader has every acknowledged commit. (Its
    // handles go first, so it can be restarted on the same data directory.)
    drop((first, leader_cluster, elsewhere));
    cluster.stop(coordinator).await;
    let new_coordinator = metadata_leader(&cluster).await;
    assert_ne!(new_coordinator, coordinator);
    let successor = cluster.nodes[&new_coordinator].cluster.clone();
    let all = successor.fetch_offsets("readers", None).await.unwrap();
    assert_eq!(
        all,
        vec![
            (partition(0), Some(offset(10, "a"))),
            (partition(1), Some(offset(20, "b")))
        ]
    );
    // Commits continue from there.
    successor
        .commit_offsets(
            "readers",
            "",
            None,
            -1,
            vec![(partition(0), offset(15, "c"))],
        )
        .await
        .unwrap();
    assert_eq!(
        fetched(&successor, "readers").await,
        vec![Some(15), Some(20)]
    );

    // The old coordinator comes back and catches up from the metadata log.
    cluster.start_node(coordinator, None).await;
    let restarted = cluster.nodes[&coordinator].cluster.clone();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let applied = restarted.applied_offsets().fetch("readers", TOPIC, 0);
        if applied.as_ref().map(|o| o.offset) == Some(15) {
            break;
        }
        assert!(Instant::now() < deadline, "not caught up: {applied:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // DeleteGroups removes the replicated offsets.
    let coordinator = metadata_leader(&cluster).await;
    let leader_cluster = cluster.nodes[&coordinator].cluster.clone();
    leader_cluster.delete_group("readers").await.unwrap();
    assert_eq!(fetched(&leader_cluster, "readers").await, vec![None, None]);
    assert_eq!(
        leader_cluster.delete_group("readers").await,
        Err(GroupError::GroupIdNotFound)
    );
    // A leader cut off from the majority cannot confirm that it still coordinates: a
    // retriable COORDINATOR_LOAD_IN_PROGRESS, not NOT_COORDINATOR (on which librdkafka gives
    // up an assignment's OffsetFetch and consumes nothing until the next rebalance).
    for node_id in [1, 2, 3] {
        if node_id != coordinator {
            cluster.stop(node_id).await;
        }
    }
    assert_eq!(
        leader_cluster.fetch_offsets("readers", None).await,
        Err(GroupError::CoordinatorLoadInProgress)
    );
    drop(leader_cluster);
    cluster.stop(coordinator).await;
}

/// The leader the running replicas of partition 0 agree on, with its term.
async fn agreed_replica_leader(cluster: &Cluster, replicas: &[NodeId]) -> (NodeId, u64) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let views: Vec<(Option<NodeId>, u64)> = replicas
            .iter()
            .filter_map(|id| cluster.nodes.get(id))
            .map(|n| n.cluster.replica_for(TOPIC, 0).unwrap().leader_and_term())
            .collect();
        if let Some(&(Some(leader), term)) = views.first() {
            if views.iter().all(|v| *v == (Some(leader), term))
                && cluster.nodes.contains_key(&leader)
                && cluster.replica(leader).is_leader()
            {
                return (leader, term);
            }
        }
        assert!(Instant::now() < deadline, "no agreed leader: {views:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_without_a_replica_names_the_leader_and_follows_a_change() {
    let mut cluster = Cluster::start_nodes(4).await;
    let first = cluster.nodes[&1].cluster.clone();
    let deadline = Instant::now() + TIMEOUT;
    while first.brokers().len() < 4 {
        assert!(Instant::now() < deadline, "brokers did not register");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first
        .create_topic(TOPIC, 1, 3, BTreeMap::new(), false)
        .await
        .unwrap();
    let topic = first.topic(TOPIC).unwrap();
    let replicas = topic.assignments[0].clone();
    let outsider = (1..=4).find(|n| !replicas.contains(n)).unwrap();
    let outsider_cluster = cluster.nodes[&outsider].cluster.clone();
    assert!(matches!(
        outsider_cluster.replica_for(TOPIC, 0),
        Err(ReplicationError::NotLeader)
    ));

    let (leader, term) = agreed_replica_leader(&cluster, &replicas).await;
    // The outsider learns the leader from the leader's report through the metadata group.
    let view = wait_for_view(&outsider_cluster, |v| v.leader == Some(leader)).await;
    assert_eq!(view.leader_epoch, term as i32);
    assert_eq!(view.replicas, replicas);
    assert!(view.isr.contains(&leader), "{view:?}");

    cluster.stop(leader).await;
    let (new_leader, new_term) = agreed_replica_leader(&cluster, &replicas).await;
    assert_ne!(new_leader, leader);
    assert!(new_term > term);
    let view = wait_for_view(&outsider_cluster, |v| v.leader == Some(new_leader)).await;
    assert_eq!(view.leader_epoch, new_term as i32);
    // A topic created through the outsider is answered only once it can name every leader.
    outsider_cluster
        .create_topic("from-outsider", 4, 3, BTreeMap::new(), false)
        .await
        .unwrap();
    let created = outsider_cluster.topic("from-outsider").unwrap();
    for partition in 0..4 {
        let view = outsider_cluster.partition_view(&created, partition);
        assert!(view.leader.is_some(), "partition {partition}: {view:?}");
    }
}

/// Polls a node's Metadata view of partition 0 until `wanted` holds (within [`TIMEOUT`]).
async fn wait_for_view(
    node: &ClusterBroker,
    wanted: impl Fn(&sluice_broker::replication::PartitionView) -> bool,
) -> sluice_broker::replication::PartitionView {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let topic = node.topic(TOPIC).unwrap();
        let view = node.partition_view(&topic, 0);
        if wanted(&view) {
            return view;
        }
        assert!(Instant::now() < deadline, "view never matched: {view:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A partition of RF=3 on a 4-node cluster moves from three nodes to another three
/// (AlterPartitionReassignments) while a producer keeps writing with acks=all; the node that
/// left is stopped and every acknowledged batch is read back from the new replica set.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reassignment_moves_a_partition_while_producing() {
    let mut cluster = Cluster::start_nodes(4).await;
    let first = cluster.nodes[&1].cluster.clone();
    let deadline = Instant::now() + TIMEOUT;
    while first.brokers().len() < 4 {
        assert!(Instant::now() < deadline, "brokers did not register");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first
        .create_topic(TOPIC, 1, 3, BTreeMap::new(), false)
        .await
        .unwrap();
    let original = first.topic(TOPIC).unwrap().assignments[0].clone();
    let leaving = original[0];
    let joining = (1..=4).find(|n| !original.contains(n)).unwrap();
    let target: Vec<NodeId> = original[1..].iter().copied().chain([joining]).collect();

    // Refusals as Kafka: unknown partition, unknown broker, duplicates, cancel of nothing.
    let unknown = first
        .reassign_partition(TOPIC, 5, Some(target.clone()))
        .await;
    assert!(
        matches!(unknown, Err(ReassignmentError::UnknownTopicOrPartition(_))),
        "{unknown:?}"
    );
    let stranger = first
        .reassign_partition(TOPIC, 0, Some(vec![1, 2, 9]))
        .await;
    assert!(
        matches!(stranger, Err(ReassignmentError::InvalidAssignment(_))),
        "{stranger:?}"
    );
    let twice = first
        .reassign_partition(TOPIC, 0, Some(vec![2, 2, 3]))
        .await;
    assert!(
        matches!(twice, Err(ReassignmentError::InvalidAssignment(_))),
        "{twice:?}"
    );
    let nothing = first.reassign_partition(TOPIC, 0, None).await;
    assert!(
        matches!(nothing, Err(ReassignmentError::NoReassignmentInProgress(_))),
        "{nothing:?}"
    );

    // A producer writes acks=all throughout, following the leader.
    let producing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let nodes: Vec<Arc<ClusterBroker>> =
            cluster.nodes.values().map(|n| n.cluster.clone()).collect();
        let producing = Arc::clone(&producing);
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut i = 0;
            while producing.load(std::sync::atomic::Ordering::Relaxed) {
                let leader = nodes
                    .iter()
                    .find_map(|n| n.replica_for(TOPIC, 0).ok().filter(|r| r.is_leader()));
                let Some(leader) = leader else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let value = format!("moving-{i}");
                let outcome = leader
                    .produce(batch(-1, -1, &[&value]), 2, Duration::from_secs(2))
                    .await;
                if let Ok(outcome) = outcome {
                    acknowledged.push((outcome.base_offset, value.into_bytes()));
                    i += 1;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            acknowledged
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    first
        .reassign_partition(TOPIC, 0, Some(target.clone()))
        .await
        .unwrap();
    // Listed while in progress (it can also finish before the listing on a fast machine).
    let listed = first.reassignments(None);
    if let Some(ongoing) = listed.first() {
        assert_eq!(ongoing.adding, vec![joining]);
        assert_eq!(ongoing.removing, vec![leaving]);
    }
    // The move completes: the metadata assignment becomes the target, the group's voters
    // are the target, and the node that left deletes its replica.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let assignment = first.topic(TOPIC).unwrap().assignments[0].clone();
        let leaving_gone = cluster.nodes[&leaving]
            .cluster
            .replica_for(TOPIC, 0)
            .is_err();
        if assignment == target && leaving_gone && first.reassignments(None).is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reassignment did not complete: {assignment:?}, leaving replica gone: {leaving_gone}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    producing.store(false, std::sync::atomic::Ordering::Relaxed);
    let acknowledged = writer.await.unwrap();
    assert!(
        acknowledged.len() > 20,
        "only {} acknowledged",
        acknowledged.len()
    );
    println!(
        "{} batches acknowledged across the move",
        acknowledged.len()
    );

    cluster.stop(leaving).await;
    // Every acknowledged batch is on every replica of the new set, at its acknowledged offset.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let logs: Vec<Vec<(i64, Vec<u8>)>> = target
            .iter()
            .map(|n| {
                cluster.nodes[n]
                    .cluster
                    .replica_for(TOPIC, 0)
                    .map(|r| data_batches(&r))
                    .unwrap_or_default()
            })
            .collect();
        // A batch whose answer was lost (its leader stepped down as it left the group) may
        // be there too: acknowledged ones must be, at their offsets, and the replicas agree.
        let has_every_ack =
            |log: &Vec<(i64, Vec<u8>)>| acknowledged.iter().all(|ack| log.contains(ack));
        if logs.iter().all(has_every_ack) && logs.iter().all(|l| l == &logs[0]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new replicas did not converge: {:?} of {}",
            logs.iter().map(Vec::len).collect::<Vec<_>>(),
            acknowledged.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The new set still takes writes without the node that left.
    let leader = cluster.leader().await;
    assert!(target.contains(&leader));
    cluster
        .replica(leader)
        .produce(batch(-1, -1, &["after"]), 2, TIMEOUT)
        .await
        .unwrap();
    for node_id in target {
        cluster.stop(node_id).await;
    }
}

/// A reassignment to a node that is down cannot finish: it is listed as in progress until it
/// is cancelled, the cancel leaves the replicas as they were and the leader drops the learner
/// it had added; the partition keeps taking writes throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stuck_reassignment_is_cancelled() {
    let mut cluster = Cluster::start_nodes(4).await;
    let first = cluster.nodes[&1].cluster.clone();
    let deadline = Instant::now() + TIMEOUT;
    while first.brokers().len() < 4 {
        assert!(Instant::now() < deadline, "brokers did not register");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first
        .create_topic(TOPIC, 1, 3, BTreeMap::new(), false)
        .await
        .unwrap();
    let original = first.topic(TOPIC).unwrap().assignments[0].clone();
    let joining = (1..=4).find(|n| !original.contains(n)).unwrap();
    let target: Vec<NodeId> = original[1..].iter().copied().chain([joining]).collect();
    let leader = cluster.leader().await;
    cluster.stop(joining).await;
    let alive = *original.iter().find(|&&n| n != joining).unwrap();
    let admin = cluster.nodes[&alive].cluster.clone();

    admin
        .reassign_partition(TOPIC, 0, Some(target.clone()))
        .await
        .unwrap();
    // The leader adds the learner, which never catches up: the move stays listed.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let learners = cluster
            .replica(leader)
            .raft()
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .learner_ids()
            .collect::<Vec<_>>();
        if learners == vec![joining] {
            break;
        }
        assert!(Instant::now() < deadline, "no learner added: {learners:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let listed = admin.reassignments(None);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].adding, vec![joining]);
    assert_eq!(listed[0].removing, vec![original[0]]);
    cluster
        .replica(leader)
        .produce(batch(-1, -1, &["during"]), 2, TIMEOUT)
        .await
        .unwrap();

    admin.reassign_partition(TOPIC, 0, None).await.unwrap();
    assert!(admin.reassignments(None).is_empty());
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let membership = cluster
            .replica(leader)
            .raft()
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        let learners: Vec<NodeId> = membership.learner_ids().collect();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let mut expected = original.clone();
        expected.sort_unstable();
        if learners.is_empty() && voters == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the learner stayed after the cancel: voters {voters:?}, learners {learners:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(admin.topic(TOPIC).unwrap().assignments[0], original);
    cluster
        .replica(leader)
        .produce(batch(-1, -1, &["after"]), 2, TIMEOUT)
        .await
        .unwrap();
    for node_id in original {
        cluster.stop(node_id).await;
    }
}

/// Waits until the reassignment of partition 0 to `target` is done on every running node.
async fn wait_moved(cluster: &Cluster, target: &[NodeId]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = cluster.nodes.values().all(|n| {
            n.cluster
                .topic(TOPIC)
                .is_some_and(|t| t.assignments[0] == target && t.reassignments.is_empty())
        });
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the move to {target:?} did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fourth node joins a running three-node cluster with `--join`: it becomes a voter of the
/// metadata group and a registered broker on every node, a partition replica is moved onto it
/// and acks=all writes work there. Its removal is refused while it hosts that replica, and
/// accepted once the replica is moved off; the others then drop it (membership, brokers,
/// transport peers) and the metadata group keeps committing. A second node asking to join
/// with an id in use (at another address) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_joins_takes_a_replica_and_is_removed_after_moving_it_off() {
    let mut cluster = Cluster::start().await;
    let first = cluster.nodes[&1].cluster.clone();
    first
        .create_topic(TOPIC, 1, 3, BTreeMap::new(), false)
        .await
        .unwrap();
    cluster.leader().await;

    cluster.join_node(4, 2).await.unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let every_node_knows = cluster.nodes.values().all(|n| {
            let node = n.cluster.node();
            node.metadata_voters() == [1, 2, 3, 4].into()
                && n.cluster.brokers().len() == 4
                && node
                    .transport()
                    .peers()
                    .iter()
                    .any(|(id, _)| *id == 4 || node.node_id() == 4)
        });
        if every_node_knows {
            break;
        }
        assert!(Instant::now() < deadline, "node 4 did not join everywhere");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let joined = cluster.nodes[&4].cluster.node().clone();
    assert_eq!(joined.metadata().borrow().brokers.len(), 4);
    // The joined node takes part in commits: with it, proposals through it apply everywhere.
    let extra = "after-join";
    cluster.nodes[&4]
        .cluster
        .create_topic(extra, 1, 1, BTreeMap::new(), false)
        .await
        .unwrap();

    // Same id, another address: refused with a clear error.
    let refused = cluster.join_node(4, 1).await.unwrap_err();
    assert!(refused.contains("node id 4 is already used"), "{refused}");

    // Move a replica onto the new node, then write acks=all.
    let original = first.topic(TOPIC).unwrap().assignments[0].clone();
    let target: Vec<NodeId> = original[1..].iter().copied().chain([4]).collect();
    first
        .reassign_partition(TOPIC, 0, Some(target.clone()))
        .await
        .unwrap();
    wait_moved(&cluster, &target).await;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let leader = cluster.nodes.values().find_map(|n| {
            n.cluster
                .replica_for(TOPIC, 0)
                .ok()
                .filter(|r| r.is_leader())
        });
        if let Some(leader) = leader {
            if leader
                .produce(batch(-1, -1, &["on-the-new-node"]), 3, TIMEOUT)
                .await
                .is_ok()
            {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no acks=all write after the move"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + TIMEOUT;
    while !data_batches(&cluster.replica(4))
        .iter()
        .any(|(_, v)| v == b"on-the-new-node")
    {
        assert!(
            Instant::now() < deadline,
            "the new replica did not get the write"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Refused while it hosts a replica, through any node.
    let refusal = cluster.nodes[&3]
        .cluster
        .node()
        .remove_node(4)
        .await
        .unwrap_err();
    assert!(
        matches!(refusal, MembershipError::Rejected(_)),
        "{refusal:?}"
    );
    assert!(
        refusal.to_string().contains(&format!("{TOPIC}-0")),
        "{refusal}"
    );
    assert!(first.node().metadata_voters().contains(&4));

    // Moved back off, it can go.
    first
        .reassign_partition(TOPIC, 0, Some(original.clone()))
        .await
        .unwrap();
    wait_moved(&cluster, &original).await;
    // The extra topic has its one replica somewhere: move it off node 4 if it is there.
    let extra_replicas = first.topic(extra).unwrap().assignments[0].clone();
    if extra_replicas == vec![4] {
        first
            .reassign_partition(extra, 0, Some(vec![1]))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while first.topic(extra).unwrap().assignments[0] != vec![1] {
            assert!(Instant::now() < deadline, "the extra topic did not move");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    cluster.nodes[&2]
        .cluster
        .node()
        .remove_node(4)
        .await
        .unwrap();
    cluster.stop(4).await;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let gone_everywhere = cluster.nodes.values().all(|n| {
            let node = n.cluster.node();
            node.metadata_voters() == [1, 2, 3].into()
                && !node.metadata_members().contains_key(&4)
                && n.cluster.brokers().len() == 3
                && !node.transport().peers().iter().any(|(id, _)| *id == 4)
        });
        if gone_everywhere {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 4 was not removed everywhere"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Removing it again: unknown.
    let again = first.node().remove_node(4).await.unwrap_err();
    assert_eq!(again, MembershipError::UnknownNode(4));
    // The metadata group still commits, and the partition still takes acks=all writes.
    first
        .create_topic("after-removal", 1, 3, BTreeMap::new(), false)
        .await
        .unwrap();
    let leader = cluster.leader().await;
    cluster
        .replica(leader)
        .produce(batch(-1, -1, &["after-removal"]), 3, TIMEOUT)
        .await
        .unwrap();
    for node_id in [1, 2, 3] {
        cluster.stop(node_id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotent_producers_requests_in_flight_are_proposed_back_to_back() {
    let cluster = Cluster::start().await;
    let first = cluster.nodes[&1].cluster.clone();
    cluster.wait_for_brokers(3).await;
    first
        .create_topic(TOPIC, 1, 3, BTreeMap::new(), false)
        .await
        .unwrap();
    let leader = cluster.leader().await;
    let replica = cluster.replica(leader);
    let sent: Vec<Bytes> = (0..5)
        .map(|i| {
            batch(
                11,
                i * 2,
                &[&format!("in-flight-{i}a"), &format!("in-flight-{i}b")],
            )
        })
        .collect();
    // Five requests in flight at once, started in order as one connection's are: each is
    // checked against the ones proposed before it, not only against committed batches.
    let produce = |bytes: &Bytes| replica.produce(bytes.clone(), 2, TIMEOUT);
    let (a, b, c, d, e) = tokio::join!(
        produce(&sent[0]),
        produce(&sent[1]),
        produce(&sent[2]),
        produce(&sent[3]),
        produce(&sent[4])
    );
    let offsets: Vec<i64> = [a, b, c, d, e]
        .into_iter()
        .map(|outcome| outcome.unwrap().base_offset)
        .collect();
    for pair in offsets.windows(2) {
        assert!(pair[1] > pair[0], "offsets out of order: {offsets:?}");
    }
    // A retry started while its original is still in flight gets the original's offset.
    let next = batch(11, 10, &["retried-in-flight"]);
    let (original, retry) = tokio::join!(produce(&next), produce(&next));
    let (original, retry) = (original.unwrap(), retry.unwrap());
    assert_eq!(original.base_offset, retry.base_offset);
    // A committed retry too, and a gap is still refused.
    let again = produce(&sent[4]).await.unwrap();
    assert_eq!(again.base_offset, offsets[4]);
    let gap = produce(&batch(11, 20, &["gap"])).await;
    assert!(
        matches!(
            gap,
            Err(ReplicationError::Broker(BrokerError::OutOfOrderSequence(_)))
        ),
        "{gap:?}"
    );
    // Each batch is in the log once.
    let values: Vec<Vec<u8>> = data_batches(&replica)
        .into_iter()
        .map(|(_, value)| value)
        .collect();
    assert_eq!(values.len(), 6, "{values:?}");

    // producer.id.expiration.ms after its last batch's timestamp (1,000 here) the producer is
    // forgotten, on every replica: its next batch is accepted at any sequence, as Kafka
    // accepts an unknown producer (KIP-360).
    let expiration_ms = 86_400_000;
    let expired_at = 1_000 + expiration_ms;
    assert_eq!(replica.expire_producers(expired_at - 1, expiration_ms), 0);
    for node in 1..=3 {
        // A follower knows the producer once it has read the committed batches.
        let deadline = Instant::now() + TIMEOUT;
        while cluster
            .replica(node)
            .expire_producers(expired_at, expiration_ms)
            == 0
        {
            assert!(
                Instant::now() < deadline,
                "node {node} never knew producer 11"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    produce(&batch(11, 40, &["after-expiry"])).await.unwrap();
}

/// A retry of a batch in flight waits for the term that proposed it, and no longer: when the
/// leader loses that term and leads the next one, the retry answers NOT_LEADER (the proposal
/// may have failed with its term; only the next term's own state can tell), and the client's
/// next retry, checked in the new term, gets the batch's offset. The batch is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_in_flight_gives_up_when_the_term_that_proposed_its_batch_ends() {
    let mut cluster = Cluster::start().await;
    cluster.create_topic(1).await;
    let leader = cluster.leader().await;
    let followers: Vec<NodeId> = [1, 2, 3].into_iter().filter(|&n| n != leader).collect();
    let replica = cluster.replica(leader);
    // Without its followers the leader keeps its term but commits nothing.
    for &follower in &followers {
        cluster.stop(follower).await;
    }
    let proposed_in = replica.leader_and_term().1;
    let pending = batch(31, 0, &["pending"]);
    let log_end = replica.log().log_end_offset();
    let original = tokio::spawn({
        let (replica, pending) = (Arc::clone(&replica), pending.clone());
        async move { replica.produce(pending, 1, TIMEOUT).await }
    });
    let deadline = Instant::now() + TIMEOUT;
    while replica.log().log_end_offset() == log_end {
        assert!(Instant::now() < deadline, "the batch was never proposed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let retry = tokio::spawn({
        let (replica, pending) = (Arc::clone(&replica), pending.clone());
        async move { replica.produce(pending, 1, TIMEOUT).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!retry.is_finished(), "the retry did not wait for its batch");

    // The leader votes for a candidate with a longer log (once its lease is over) and steps
    // down; with one follower back, only the leader's log is long enough to win, so it leads
    // the next term and commits the batch there.
    let candidate = Vote::new(proposed_in + 1, followers[0]);
    let longer = LogId::new(
        CommittedLeaderId::new(proposed_in + 1, followers[0]),
        1_000_000,
    );
    let deadline = Instant::now() + TIMEOUT;
    while !replica
        .raft()
        .vote(VoteRequest::new(candidate, Some(longer)))
        .await
        .unwrap()
        .vote_granted
    {
        assert!(
            Instant::now() < deadline,
            "the leader never gave up its term"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.start_node(followers[0], None).await;
    let deadline = Instant::now() + TIMEOUT;
    while !(replica.is_leader() && replica.leader_and_term().1 > proposed_in + 1) {
        assert!(
            Instant::now() < deadline,
            "the old leader did not lead again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let retried = tokio::time::timeout(TIMEOUT, retry).await.unwrap().unwrap();
    assert!(
        matches!(retried, Err(ReplicationError::NotLeader)),
        "{retried:?}"
    );
    // The original waited on its own proposal, which Raft answers: the entry committed in the
    // new term, so it has the offset (a NOT_LEADER would be as right, had the entry been lost).
    let original = tokio::time::timeout(TIMEOUT, original)
        .await
        .unwrap()
        .unwrap();
    match original {
        Ok(outcome) => assert_eq!(outcome.base_offset, log_end),
        Err(ReplicationError::NotLeader) => {}
        Err(other) => panic!("original: {other:?}"),
    }
    // The client's next retry is checked against the new term's state: the batch committed.
    let again = replica.produce(pending, 1, TIMEOUT).await.unwrap();
    assert_eq!(again.base_offset, log_end);
    let stored: Vec<(i64, Vec<u8>)> = data_batches(&replica);
    assert_eq!(stored, vec![(log_end, b"pending".to_vec())]);
    for node_id in [leader, followers[0]] {
        cluster.stop(node_id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_append_time_is_stamped_by_the_leader_for_every_replica() {
    let cluster = Cluster::start().await;
    let first = cluster.nodes[&1].cluster.clone();
    cluster.wait_for_brokers(3).await;
    // message.timestamp.type=LogAppendTime: the leader stamps the batch before proposing it,
    // so every replica stores the same broker timestamp.
    let configs = BTreeMap::from([(
        "message.timestamp.type".to_string(),
        "LogAppendTime".to_string(),
    )]);
    first
        .create_topic(TOPIC, 1, 3, configs, false)
        .await
        .unwrap();
    let stamped_leader = cluster.replica(cluster.leader().await);
    let outcome = stamped_leader
        .produce(batch(-1, -1, &["stamped"]), 1, TIMEOUT)
        .await
        .unwrap();
    assert!(outcome.log_append_time_ms > 1_000, "{outcome:?}");
    for node in 1..=3 {
        let replica = cluster.replica(node);
        let deadline = Instant::now() + TIMEOUT;
        let header = loop {
            // Out of range until the batch has reached this replica.
            if let Ok(read) = replica.log().read(outcome.base_offset, 1 << 20) {
                if let Some(header) = validate_batches(&read.records)
                    .unwrap()
                    .into_iter()
                    .find(|h| h.base_offset == outcome.base_offset)
                {
                    break header;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {node} lacks the stamped batch"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_ne!(
            header.attributes & 0x08,
            0,
            "node {node}: not LogAppendTime"
        );
        assert_eq!(
            header.max_timestamp, outcome.log_append_time_ms,
            "node {node}"
        );
    }
}

/// A follower's copy leaves the page cache once it is durable and its producers are tracked
/// (only a failover reads it back); the leader's stays cached for its consumers.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_release_the_pages_of_their_copy_and_the_leader_keeps_its_own() {
    let cluster = Cluster::start().await;
    cluster.wait_for_brokers(3).await;
    cluster.nodes[&1]
        .cluster
        .create_topic(TOPIC, 1, 3, BTreeMap::new(), false)
        .await
        .unwrap();
    let leader = cluster.leader().await;
    let value = "x".repeat(16 << 10);
    let mut end = 0;
    for _ in 0..64 {
        // About 1 MiB in all.
        let outcome = cluster
            .replica(leader)
            .produce(batch(-1, -1, &[&value]), 1, TIMEOUT)
            .await
            .unwrap();
        end = outcome.base_offset + 1;
    }
    let cached = |node: NodeId| {
        let replica = cluster.replica(node);
        let segment = replica.log().dir().join("00000000000000000000.log");
        sluice_log::cached_pages(&segment).expect("mincore")
    };
    let deadline = Instant::now() + TIMEOUT;
    for node in (1..=3).filter(|&node| node != leader) {
        // Released on the next producer-state tick once the follower has it all durable; the
        // partly written last page stays.
        while (cluster.replica(node).log().durable_offset() < end || cached(node).0 > 1)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (resident, pages) = cached(node);
        assert!(
            pages >= 256,
            "node {node}'s segment holds about 1 MiB: {pages} pages"
        );
        assert!(
            resident <= 1,
            "follower {node} kept {resident} of {pages} pages cached"
        );
    }
    let (resident, pages) = cached(leader);
    assert!(
        resident * 10 >= pages * 9,
        "the leader kept only {resident} of {pages} pages cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_records_moves_every_replicas_log_start_and_survives_a_restart() {
    let mut cluster = Cluster::start().await;
    cluster.create_topic(1).await;
    let leader = cluster.leader().await;
    let replica = cluster.replica(leader);
    let mut bases = Vec::new();
    for i in 0..5 {
        let values = [format!("m{i}-a"), format!("m{i}-b")];
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        let outcome = replica
            .produce(batch(-1, -1, &values), 1, TIMEOUT)
            .await
            .unwrap();
        bases.push(outcome.base_offset);
    }
    let follower = (1..=3).find(|n| *n != leader).unwrap();
    assert!(matches!(
        cluster
            .replica(follower)
            .delete_records(bases[2], TIMEOUT)
            .await,
        Err(ReplicationError::NotLeader)
    ));
    let high_watermark = replica.log().high_watermark();
    assert!(matches!(
        replica.delete_records(high_watermark + 1, TIMEOUT).await,
        Err(ReplicationError::Broker(_))
    ));
    assert_eq!(
        replica.delete_records(bases[2], TIMEOUT).await.unwrap(),
        bases[2]
    );
    // Every replica moves its log start as the entry applies; reads below it are refused.
    for node in 1..=3 {
        let deadline = Instant::now() + TIMEOUT;
        while cluster.replica(node).log().log_start_offset() < bases[2] {
            assert!(Instant::now() < deadline, "node {node} kept its log start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(cluster.replica(node).log().read(bases[1], 1 << 20).is_err());
    }
    let first_values: Vec<Vec<u8>> = data_batches(&replica).into_iter().map(|b| b.1).collect();
    assert_eq!(first_values[0], b"m2-a");
    // Asking again, or for less, changes nothing.
    assert_eq!(
        replica.delete_records(bases[1], TIMEOUT).await.unwrap(),
        bases[2]
    );

    // A restarted follower keeps the log start it applied.
    cluster.stop(follower).await;
    cluster.start_node(follower, None).await;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Ok(restarted) = cluster.nodes[&follower].cluster.replica_for(TOPIC, 0) {
            if restarted.log().log_start_offset() >= bases[2] {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the restarted follower lost its log start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // -1 deletes everything below the high watermark; producing goes on after it.
    let leader = cluster.leader().await;
    let replica = cluster.replica(leader);
    let high_watermark = replica.log().high_watermark();
    let log_start = replica.delete_records(-1, TIMEOUT).await.unwrap();
    assert!(
        log_start >= high_watermark,
        "{log_start} < {high_watermark}"
    );
    let after = replica
        .produce(batch(-1, -1, &["after"]), 1, TIMEOUT)
        .await
        .unwrap();
    assert!(after.base_offset >= log_start);
    assert_eq!(
        data_batches(&replica),
        vec![(after.base_offset, b"after".to_vec())]
    );
}

fn transactional_batch(producer_id: i64, epoch: i16, sequence: i32, values: &[&str]) -> Bytes {
    let mut builder = RecordBatchBuilder::new();
    for value in values {
        builder.push(Record {
            timestamp: 1_000,
            value: Some(value.as_bytes().to_vec()),
            ..Record::default()
        });
    }
    builder
        .producer(producer_id, epoch, sequence)
        .transactional();
    Bytes::from(builder.build())
}

fn txn<'a>(id: &'a str, (producer_id, producer_epoch): (i64, i16)) -> TransactionalProducer<'a> {
    TransactionalProducer {
        transactional_id: id,
        producer_id,
        producer_epoch,
    }
}

/// Waits until the partition's leader reports `expected` as its last stable offset.
async fn wait_for_last_stable_offset(cluster: &Cluster, expected: i64) -> Arc<Replica> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let leader = cluster.leader().await;
        let replica = cluster.replica(leader);
        let stable = replica.last_stable_offset().unwrap();
        if stable == expected {
            return replica;
        }
        assert!(
            Instant::now() < deadline,
            "last stable offset {stable}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactions_are_coordinated_by_the_metadata_leader_and_survive_it() {
    let mut cluster = Cluster::start().await;
    cluster.create_topic(1).await;
    let coordinator = metadata_leader(&cluster).await;
    let other = (1..=3).find(|&n| n != coordinator).unwrap();
    // Other nodes do not coordinate: the client looks the coordinator up again.
    let refused = cluster.nodes[&other]
        .broker
        .init_producer_id(Some("tx"), 60_000, None)
        .await;
    assert!(
        matches!(refused, Err(BrokerError::NotCoordinator(_))),
        "{refused:?}"
    );
    let broker = cluster.nodes[&coordinator].broker.clone();
    let ids = broker
        .init_producer_id(Some("tx"), 60_000, None)
        .await
        .unwrap();
    let coordinator_of = broker.transaction_coordinator();
    let partitions = vec![(TOPIC.to_string(), 0)];
    coordinator_of
        .add_partitions(txn("tx", ids), &partitions)
        .await
        .unwrap();

    // A committed transaction: the marker is written through the partition's leader (on
    // this node or another), and read_committed reads past it.
    let leader = cluster.leader().await;
    let replica = cluster.replica(leader);
    let first = replica
        .produce(
            transactional_batch(ids.0, ids.1, 0, &["a", "b"]),
            2,
            TIMEOUT,
        )
        .await
        .unwrap()
        .base_offset;
    assert_eq!(replica.last_stable_offset().unwrap(), first);
    let read = replica
        .fetch(first, 1 << 20, -1, IsolationLevel::ReadCommitted)
        .unwrap();
    assert!(read.records.is_empty(), "read past an open transaction");
    coordinator_of
        .end_transaction(&broker, txn("tx", ids), TransactionResult::Commit, false)
        .await
        .unwrap();
    // Two records and the marker.
    let replica = wait_for_last_stable_offset(&cluster, first + 3).await;
    let read = replica
        .fetch(first, 1 << 20, -1, IsolationLevel::ReadCommitted)
        .unwrap();
    assert!(!read.records.is_empty());
    assert!(read.aborted_transactions.is_empty());

    // A second transaction is left open when the coordinator dies.
    coordinator_of
        .add_partitions(txn("tx", ids), &partitions)
        .await
        .unwrap();
    let open = replica
        .produce(transactional_batch(ids.0, ids.1, 2, &["c"]), 2, TIMEOUT)
        .await
        .unwrap()
        .base_offset;
    drop((broker, replica));
    cluster.stop(coordinator).await;
    let successor = metadata_leader(&cluster).await;
    assert_ne!(successor, coordinator);
    let broker = cluster.nodes[&successor].broker.clone();
    // As a request would: confirmed as the leader, with every committed state applied.
    let deadline = Instant::now() + TIMEOUT;
    while broker
        .transaction_coordinator()
        .check_serving()
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the successor does not coordinate"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let described = broker
        .transaction_coordinator()
        .describe(&["tx".to_string()]);
    let state = described[0]
        .1
        .clone()
        .expect("the new coordinator knows the id");
    assert_eq!(state.state, TransactionState::Ongoing);
    assert_eq!(state.partitions.len(), 1);
    // The open transaction holds the last stable offset on the (possibly new) leader.
    wait_for_last_stable_offset(&cluster, open).await;
    // The producer aborts it through the new coordinator: the aborted batch is named to
    // read_committed consumers, and the last stable offset moves past the marker.
    broker
        .transaction_coordinator()
        .end_transaction(&broker, txn("tx", ids), TransactionResult::Abort, false)
        .await
        .unwrap();
    let replica = wait_for_last_stable_offset(&cluster, open + 2).await;
    let read = replica
        .fetch(open, 1 << 20, -1, IsolationLevel::ReadCommitted)
        .unwrap();
    assert_eq!(
        read.aborted_transactions.len(),
        1,
        "{:?}",
        read.aborted_transactions
    );
    assert_eq!(read.aborted_transactions[0].first_offset, open);
    // A new instance fences the old one, whose late batch is refused on the partition.
    let fenced = broker
        .init_producer_id(Some("tx"), 60_000, None)
        .await
        .unwrap();
    assert_eq!(fenced, (ids.0, ids.1 + 1));
    drop((broker, replica));
    for node_id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
        cluster.stop(node_id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_coordinator_aborts_a_transaction_past_its_timeout_on_a_cluster() {
    let mut cluster = Cluster::start().await;
    cluster.create_topic(1).await;
    let coordinator = metadata_leader(&cluster).await;
    let broker = cluster.nodes[&coordinator].broker.clone();
    let ids = broker
        .init_producer_id(Some("slow"), 300, None)
        .await
        .unwrap();
    broker
        .transaction_coordinator()
        .add_partitions(txn("slow", ids), &[(TOPIC.to_string(), 0)])
        .await
        .unwrap();
    let leader = cluster.leader().await;
    let open = cluster
        .replica(leader)
        .produce(transactional_batch(ids.0, ids.1, 0, &["late"]), 2, TIMEOUT)
        .await
        .unwrap()
        .base_offset;
    // The coordinator's tick (every second) aborts it under the next epoch: the abort marker
    // follows the batch, and the producer's old epoch is fenced.
    let replica = wait_for_last_stable_offset(&cluster, open + 2).await;
    let read = replica
        .fetch(open, 1 << 20, -1, IsolationLevel::ReadCommitted)
        .unwrap();
    assert_eq!(read.aborted_transactions.len(), 1);
    // The completion is committed just after the markers.
    let deadline = Instant::now() + TIMEOUT;
    let state = loop {
        let state = broker
            .transaction_coordinator()
            .describe(&["slow".to_string()])[0]
            .1
            .clone()
            .unwrap();
        if state.state == TransactionState::CompleteAbort {
            break state;
        }
        assert!(Instant::now() < deadline, "still {:?}", state.state);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(state.producer_epoch, ids.1 + 1);
    let fenced = replica
        .produce(
            transactional_batch(ids.0, ids.1, 1, &["zombie"]),
            2,
            TIMEOUT,
        )
        .await;
    assert!(
        matches!(
            fenced,
            Err(ReplicationError::Broker(BrokerError::InvalidProducerEpoch(
                _
            )))
        ),
        "{fenced:?}"
    );
    drop((broker, replica));
    for node_id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
        cluster.stop(node_id).await;
    }
}

/// Every data record below the high watermark of a replica's log: (offset, key, value).
fn keyed_records(replica: &Replica) -> Vec<(i64, Vec<u8>, Vec<u8>)> {
    let log = replica.log();
    let read = log.read(log.log_start_offset(), 256 << 20).unwrap();
    let headers = validate_batches(&read.records).unwrap();
    let mut out = Vec::new();
    let mut position = 0usize;
    let mut expected_base = None;
    for header in headers {
        let bytes = &read.records[position..position + header.total_bytes()];
        position += header.total_bytes();
        // Batches follow each other without gaps, compacted or not: a snapshot must be
        // appendable batch after batch.
        if let Some(expected) = expected_base {
            assert_eq!(header.base_offset, expected, "a gap in the replicated log");
        }
        expected_base = Some(header.base_offset + i64::from(header.last_offset_delta) + 1);
        if header.is_control() {
            continue;
        }
        for record in sluice_log::decode_records(bytes).unwrap() {
            out.push((
                record.offset,
                record.key.unwrap_or_default(),
                record.value.unwrap_or_default(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_compacted_topic_is_cleaned_below_the_raft_log_and_a_lagging_replica_gets_it_by_snapshot()
{
    // Snapshots every 20 entries, 5 kept: most of the log soon lies below what Raft holds.
    let timings = RaftTimings {
        snapshot_entries: 20,
        entries_kept_after_snapshot: 5,
        ..RaftTimings::default()
    };
    let mut cluster = Cluster::start_with(3, timings).await;
    cluster.wait_for_brokers(3).await;
    let configs = BTreeMap::from([
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("min.cleanable.dirty.ratio".to_string(), "0.01".to_string()),
        ("segment.bytes".to_string(), (1 << 20).to_string()),
    ]);
    cluster.nodes[&1]
        .cluster
        .create_topic(TOPIC, 1, 3, configs, false)
        .await
        .unwrap();
    let leader = cluster.leader().await;
    // A keyless record is refused, as on one node.
    let keyless = cluster
        .replica(leader)
        .produce(batch(-1, -1, &["no key"]), 1, TIMEOUT)
        .await;
    assert!(
        matches!(
            keyless,
            Err(ReplicationError::Broker(BrokerError::InvalidRecord(_)))
        ),
        "{keyless:?}"
    );
    // One follower is down while the log is written and cleaned.
    let lagging = (1..=3).find(|&n| n != leader).unwrap();
    cluster.stop(lagging).await;
    let replica = cluster.replica(leader);
    let value = vec![b'x'; 10 << 10];
    let mut last_value = BTreeMap::new();
    for i in 0..300 {
        let key = format!("k{}", i % 5);
        let mut builder = RecordBatchBuilder::new();
        let mut this_value = format!("v{i}-").into_bytes();
        this_value.extend_from_slice(&value);
        builder.push(Record {
            timestamp: 1_000,
            key: Some(key.clone().into_bytes()),
            value: Some(this_value.clone()),
            ..Record::default()
        });
        replica
            .produce(Bytes::from(builder.build()), 2, TIMEOUT)
            .await
            .unwrap();
        last_value.insert(key.into_bytes(), this_value);
    }
    // Each node cleans its own replica: wait for the leader's (a follower may clean first).
    let deadline = Instant::now() + TIMEOUT;
    let records = loop {
        for node in cluster.nodes.values() {
            node.cluster.compact_replicas();
        }
        let records = keyed_records(&replica);
        if records.len() < 300 {
            break records;
        }
        assert!(
            Instant::now() < deadline,
            "the leader's log was not compacted: {} records left",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut latest = BTreeMap::new();
    for (_, key, value) in &records {
        latest.insert(key.clone(), value.clone());
    }
    assert_eq!(latest, last_value, "the last value of every key stays");

    // The lagging follower comes back: the leader no longer holds the entries it lacks, so it
    // is sent a snapshot of the compacted log and ends with the same records.
    drop(replica);
    cluster.start_node(lagging, None).await;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let leader_records = keyed_records(&cluster.replica(leader));
        let follower = cluster.nodes[&lagging].cluster.replica_for(TOPIC, 0);
        if let Ok(follower) = follower {
            if follower.log().high_watermark() == cluster.replica(leader).log().high_watermark()
                && keyed_records(&follower) == leader_records
            {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the lagging replica did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for node_id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
        cluster.stop(node_id).await;
    }
}
