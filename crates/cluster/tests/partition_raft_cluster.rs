//! Three replicas of one partition in one process, over a channel-free in-memory network:
//! replication writes the same batches at the same offsets everywhere, the high watermark
//! follows the commit (not the leader's durable end), and a leader change continues the log
//! with the new term as the batches' leader epoch.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{Config, Raft};
use parking_lot::Mutex;
use sluice_cluster::partition::{self, ApplyProgress, PartitionEntry, PartitionRaft};
use sluice_cluster::{NodeAddress, NodeId};
use sluice_log::{
    validate_batches, BatchHeader, LogConfig, PartitionLog, RealDisk, Record, RecordBatchBuilder,
};
use tokio::sync::watch;

/// Routes RPCs to the replicas' `Raft` handles; a node in `isolated` neither sends nor receives.
#[derive(Clone, Default)]
struct Router {
    nodes: Arc<Mutex<BTreeMap<NodeId, Raft<PartitionRaft>>>>,
    isolated: Arc<Mutex<BTreeSet<NodeId>>>,
}

struct Connection {
    router: Router,
    source: NodeId,
    target: NodeId,
}

impl Router {
    /// The target's handle, or `None` when the two cannot talk.
    fn target(&self, source: NodeId, target: NodeId) -> Option<Raft<PartitionRaft>> {
        let isolated = self.isolated.lock();
        if isolated.contains(&source) || isolated.contains(&target) {
            return None;
        }
        self.nodes.lock().get(&target).cloned()
    }
}

fn unreachable<E: std::error::Error>() -> RPCError<NodeId, NodeAddress, E> {
    RPCError::Network(NetworkError::new(&io::Error::other("partitioned")))
}

struct NetworkFactory {
    router: Router,
    source: NodeId,
}

impl RaftNetworkFactory<PartitionRaft> for NetworkFactory {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, _node: &NodeAddress) -> Connection {
        Connection {
            router: self.router.clone(),
            source: self.source,
            target,
        }
    }
}

impl RaftNetwork<PartitionRaft> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<PartitionRaft>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeAddress, RaftError<NodeId>>>
    {
        let Some(raft) = self.router.target(self.source, self.target) else {
            return Err(unreachable());
        };
        raft.append_entries(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<PartitionRaft>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeAddress, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let Some(raft) = self.router.target(self.source, self.target) else {
            return Err(unreachable());
        };
        raft.install_snapshot(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeAddress, RaftError<NodeId>>> {
        let Some(raft) = self.router.target(self.source, self.target) else {
            return Err(unreachable());
        };
        raft.vote(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

struct Replica {
    raft: Raft<PartitionRaft>,
    log: Arc<PartitionLog>,
    progress: watch::Receiver<ApplyProgress>,
}

fn address(id: NodeId) -> NodeAddress {
    NodeAddress {
        cluster_addr: format!("127.0.0.{id}:9093"),
        kafka_addr: format!("127.0.0.{id}:9092"),
    }
}

fn batch(tag: &str, records: usize) -> PartitionEntry {
    let mut builder = RecordBatchBuilder::new();
    for n in 0..records {
        builder.push(Record {
            timestamp: 1_700_000_000_000,
            value: Some(format!("{tag}-{n}").into_bytes()),
            ..Default::default()
        });
    }
    PartitionEntry::new(Bytes::from(builder.build())).expect("valid batch")
}

async fn start(
    router: &Router,
    dir: &std::path::Path,
    ids: &[NodeId],
) -> BTreeMap<NodeId, Replica> {
    start_with(router, dir, ids, Config::default()).await
}

async fn start_with(
    router: &Router,
    dir: &std::path::Path,
    ids: &[NodeId],
    config: Config,
) -> BTreeMap<NodeId, Replica> {
    let config = Arc::new(
        Config {
            cluster_name: "t-0".into(),
            heartbeat_interval: 50,
            election_timeout_min: 200,
            election_timeout_max: 400,
            ..config
        }
        .validate()
        .expect("valid config"),
    );
    let mut replicas = BTreeMap::new();
    for &id in ids {
        let (log_store, state_machine, log) = partition::open(
            Arc::new(RealDisk),
            &dir.join(format!("node-{id}/t-0")),
            LogConfig::default(),
        )
        .expect("open partition");
        let progress = state_machine.progress();
        let network = NetworkFactory {
            router: router.clone(),
            source: id,
        };
        let raft = Raft::new(id, Arc::clone(&config), network, log_store, state_machine)
            .await
            .expect("start raft");
        router.nodes.lock().insert(id, raft.clone());
        replicas.insert(
            id,
            Replica {
                raft,
                log,
                progress,
            },
        );
    }
    replicas
}

async fn wait_for_leader(
    replicas: &BTreeMap<NodeId, Replica>,
    among: &[NodeId],
    above_term: u64,
) -> NodeId {
    for _ in 0..200 {
        for &id in among {
            let metrics = replicas[&id].raft.metrics().borrow().clone();
            if metrics.current_leader == Some(id) && metrics.current_term > above_term {
                return id;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no leader elected among {among:?}");
}

async fn wait_for_high_watermark(replica: &Replica, at_least: i64) {
    let mut progress = replica.progress.clone();
    tokio::time::timeout(
        Duration::from_secs(10),
        progress.wait_for(|p| p.high_watermark >= at_least),
    )
    .await
    .expect("high watermark reached in time")
    .expect("state machine alive");
}

/// What a consumer of `replica` reads from offset 0.
fn consumer_view(replica: &Replica) -> Bytes {
    replica.log.read(0, 16 << 20).expect("read").records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_agree_on_offsets_and_the_high_watermark_follows_commit() {
    let dir = tempfile::tempdir().unwrap();
    let router = Router::default();
    let ids = [1, 2, 3];
    let replicas = start(&router, dir.path(), &ids).await;
    let members: BTreeMap<NodeId, NodeAddress> = ids.iter().map(|&id| (id, address(id))).collect();
    replicas[&1].raft.initialize(members).await.unwrap();
    let leader = wait_for_leader(&replicas, &ids, 0).await;
    let first_term = replicas[&leader].raft.metrics().borrow().current_term;

    // A produce with acks=all: answered once committed, with where the batch landed.
    let written = replicas[&leader]
        .raft
        .client_write(batch("a", 3))
        .await
        .unwrap();
    let first = written.data;
    assert_eq!(first.last_offset - first.base_offset, 2);
    let written = replicas[&leader]
        .raft
        .client_write(batch("b", 2))
        .await
        .unwrap();
    let second = written.data;
    assert_eq!(second.base_offset, first.last_offset + 1);
    for replica in replicas.values() {
        wait_for_high_watermark(replica, second.last_offset + 1).await;
    }
    let view = consumer_view(&replicas[&leader]);
    for replica in replicas.values() {
        assert_eq!(
            consumer_view(replica),
            view,
            "every replica serves the same bytes"
        );
    }
    // initialize() writes the first membership at term 0; the data carries the leader's term.
    let epochs: BTreeSet<i32> = validate_batches(&view)
        .unwrap()
        .iter()
        .filter(|h| !h.is_control())
        .map(|h| h.partition_leader_epoch)
        .collect();
    assert_eq!(epochs, BTreeSet::from([first_term as i32]));

    // Cut the leader off from both followers: it still writes and fsyncs what it is asked to,
    // but nothing commits, so consumers of it see nothing new.
    router.isolated.lock().insert(leader);
    let high_watermark = replicas[&leader].log.high_watermark();
    let stranded = tokio::time::timeout(
        Duration::from_millis(300),
        replicas[&leader].raft.client_write(batch("stranded", 4)),
    )
    .await;
    assert!(
        stranded.is_err(),
        "a write without a majority was acknowledged"
    );
    assert!(replicas[&leader].log.log_end_offset() > high_watermark);
    assert_eq!(replicas[&leader].log.high_watermark(), high_watermark);

    // The other two elect a new leader of a later term, which continues at the same offsets.
    let rest: Vec<NodeId> = ids.iter().copied().filter(|&id| id != leader).collect();
    let new_leader = wait_for_leader(&replicas, &rest, first_term).await;
    let new_term = replicas[&new_leader].raft.metrics().borrow().current_term;
    let written = replicas[&new_leader]
        .raft
        .client_write(batch("c", 1))
        .await
        .unwrap();
    let third = written.data;
    assert!(third.base_offset > second.last_offset);
    let headers: Vec<BatchHeader> = validate_batches(&consumer_view(&replicas[&new_leader]))
        .unwrap()
        .into_iter()
        .filter(|h| !h.is_control())
        .collect();
    assert_eq!(
        headers
            .last()
            .map(|h| (h.base_offset, h.partition_leader_epoch)),
        Some((third.base_offset, new_term as i32)),
        "the new term is the batch's leader epoch"
    );

    // The old leader rejoins: its uncommitted batch is truncated away and it converges.
    router.isolated.lock().clear();
    for replica in replicas.values() {
        wait_for_high_watermark(replica, third.last_offset + 1).await;
    }
    let view = consumer_view(&replicas[&new_leader]);
    for (id, replica) in &replicas {
        assert_eq!(consumer_view(replica), view, "replica {id} diverged");
    }
    let values: Vec<String> = sluice_log::decode_records(&view)
        .unwrap()
        .into_iter()
        .filter_map(|r| r.value.map(|v| String::from_utf8_lossy(&v).into_owned()))
        .filter(|v| !v.is_empty())
        .collect();
    assert!(
        values.iter().all(|v| !v.starts_with("stranded")),
        "an uncommitted batch survived: {values:?}"
    );

    for replica in replicas.values() {
        replica.raft.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_purge_point_gets_the_leaders_log_through_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let router = Router::default();
    let ids = [1, 2, 3];
    // Keep nothing after a snapshot, so the purge passes the lagging follower at once.
    let config = Config {
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Default::default()
    };
    let replicas = start_with(&router, dir.path(), &ids, config).await;
    let members: BTreeMap<NodeId, NodeAddress> = ids.iter().map(|&id| (id, address(id))).collect();
    replicas[&1].raft.initialize(members).await.unwrap();
    let leader = wait_for_leader(&replicas, &ids, 0).await;
    let lagging = ids.iter().copied().find(|&id| id != leader).unwrap();
    replicas[&leader]
        .raft
        .client_write(batch("before", 2))
        .await
        .unwrap();
    wait_for_high_watermark(&replicas[&lagging], 1).await;

    router.isolated.lock().insert(lagging);
    let mut last = None;
    for n in 0..20 {
        last = Some(
            replicas[&leader]
                .raft
                .client_write(batch(&format!("while-away-{n}"), 3))
                .await
                .unwrap(),
        );
    }
    let last = last.unwrap();
    replicas[&leader].raft.trigger().snapshot().await.unwrap();
    let mut metrics = replicas[&leader].raft.metrics();
    tokio::time::timeout(
        Duration::from_secs(10),
        metrics.wait_for(|m| m.purged.is_some_and(|p| p.index >= last.log_id.index)),
    )
    .await
    .expect("leader purged in time")
    .unwrap();

    router.isolated.lock().clear();
    let end = last.data.last_offset + 1;
    wait_for_high_watermark(&replicas[&lagging], end).await;
    // The entries it missed are purged on the leader: only a snapshot can bring them.
    let mut lagging_metrics = replicas[&lagging].raft.metrics();
    tokio::time::timeout(
        Duration::from_secs(10),
        lagging_metrics.wait_for(|m| m.snapshot.is_some_and(|s| s.index >= last.log_id.index)),
    )
    .await
    .expect("the follower installed the leader's snapshot")
    .unwrap();
    assert_eq!(
        consumer_view(&replicas[&lagging]),
        consumer_view(&replicas[&leader]),
        "the snapshot gave the follower the leader's batches at the leader's offsets"
    );
    // Replication continues normally after the install.
    let after = replicas[&leader]
        .raft
        .client_write(batch("after", 1))
        .await
        .unwrap();
    wait_for_high_watermark(&replicas[&lagging], after.data.last_offset + 1).await;
    assert_eq!(
        consumer_view(&replicas[&lagging]),
        consumer_view(&replicas[&leader])
    );
    for replica in replicas.values() {
        replica.raft.shutdown().await.unwrap();
    }
}
