//! A cluster node: the transport, the metadata group, and the partition groups it hosts.
//!
//! Bootstrap is static: every node is started with the same `--peers` list and initializes the
//! metadata group with all of them as voters. The membership entries are identical, so the
//! nodes agree whoever initializes first; a node that already has state (a restart, or an
//! append from a leader that came first) skips initialization, which openraft would refuse
//! anyway rather than overwrite anything.
//!
//! A node started with `--join` instead joins a running cluster (node/membership.rs); a
//! restarted node needs neither: its stored membership names the others.
//!
//! Membership carries each node's transport address only (`kafka_addr` empty): it must be the
//! same on every node, and a node learns the others' Kafka addresses later, when each registers
//! itself through the metadata group ([`MetadataCommand::RegisterBroker`]).

mod membership;

pub use membership::{
    JoinProgress, JoinRequest, MembershipError, MembershipReply, MembershipRequest,
};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{Raft, RaftTypeConfig};
use parking_lot::Mutex;
use sluice_log::Storage;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::early_election::{self, OnPeerLost};
use crate::metadata::{
    ClusterMetadata, MetadataCommand, MetadataLogStore, MetadataRaft, MetadataResponse,
    MetadataStateMachine, MetadataStoreError, PartitionLeaders, ReplicatedOffsets,
    ReplicatedSecurity, ReplicatedTransactions,
};
use crate::peers::{Peer, PeerList, PeerListError};
use crate::transport::frame::{decode_body, encode_body};
use crate::transport::{
    GroupDispatcher, RaftDispatcher, RemoteFailure, RpcKind, Transport, TransportConfig,
    TransportError,
};
use crate::{GroupId, NodeAddress, NodeId};

/// Raft timers shared by the metadata group and the partition groups.
///
/// Defaults aim at failover under a second on a LAN. openraft 0.9 lets a follower that saw a
/// leader campaign only after its *leader lease* (= `election_timeout_max`) plus its own
/// randomised election timeout, checked on a tick every 1.5 heartbeats. With heartbeats every
/// 100 ms and timeouts of 200–300 ms, a dead leader is replaced 500–600 ms after its last
/// heartbeat, plus at most one tick (150 ms) and a vote round trip: about 0.55–0.8 s. Five
/// heartbeats must go missing before anyone campaigns, so a late heartbeat or two (a busy core)
/// does not depose a healthy leader; after a split vote, candidates retry after 200–300 ms.
/// Between two nodes, the heartbeats of all their groups share one connection and leave in
/// coalesced writes, so the 100 ms interval stays cheap with thousands of partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTimings {
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// A group takes a snapshot every this many entries (openraft's default, 5,000) and then
    /// keeps `entries_kept_after_snapshot` of them (1,000) for followers a little behind. A
    /// partition's batches below what its Raft log keeps are no longer Raft entries: only
    /// those are compacted (see `sluice_log::PartitionLog::clean`).
    pub snapshot_entries: u64,
    pub entries_kept_after_snapshot: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(200),
            election_timeout_max: Duration::from_millis(300),
            snapshot_entries: 5_000,
            entries_kept_after_snapshot: 1_000,
        }
    }
}

impl RaftTimings {
    /// openraft's config with these timers.
    pub fn raft_config(
        &self,
        cluster_name: &str,
    ) -> Result<openraft::Config, Box<openraft::ConfigError>> {
        openraft::Config {
            cluster_name: cluster_name.to_string(),
            heartbeat_interval: self.heartbeat_interval.as_millis() as u64,
            election_timeout_min: self.election_timeout_min.as_millis() as u64,
            election_timeout_max: self.election_timeout_max.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_entries),
            max_in_snapshot_log_to_keep: self.entries_kept_after_snapshot,
            ..Default::default()
        }
        .validate()
        .map_err(Box::new)
    }
}

/// How a node is started (`sluice serve --node-id --cluster-listen --peers --kafka-listen`).
#[derive(Clone)]
pub struct ClusterConfig {
    pub node_id: NodeId,
    /// Where the node-to-node transport listens.
    pub cluster_listen: SocketAddr,
    /// Every member, this node included (see [`PeerList`]), for a static bootstrap. Empty
    /// with `join`, or for a restart that relies on the stored membership.
    pub peers: Vec<(NodeId, SocketAddr)>,
    /// Cluster addresses of running members to join through (`--join`); empty for a static
    /// bootstrap. Ignored once this node is a voter (a restart).
    pub join: Vec<SocketAddr>,
    /// How long joining keeps asking while no member answers; `None`: forever.
    pub join_timeout: Option<Duration>,
    /// The Kafka address clients are told to use for this node.
    pub kafka_addr: String,
    /// The metadata group keeps its log and snapshot in `data_dir/metadata`.
    pub data_dir: PathBuf,
    pub storage: Arc<dyn Storage>,
    pub timings: RaftTimings,
    /// How long [`ClusterNode::propose`] keeps looking for a leader.
    pub propose_timeout: Duration,
    pub transport: Option<TransportConfig>,
}

impl ClusterConfig {
    pub fn new(
        node_id: NodeId,
        cluster_listen: SocketAddr,
        peers: Vec<(NodeId, SocketAddr)>,
        kafka_addr: String,
        data_dir: PathBuf,
        storage: Arc<dyn Storage>,
    ) -> Self {
        Self {
            node_id,
            cluster_listen,
            peers,
            join: Vec::new(),
            join_timeout: None,
            kafka_addr,
            data_dir,
            storage,
            timings: RaftTimings::default(),
            propose_timeout: Duration::from_secs(5),
            transport: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("invalid peer list: {0}")]
    Peers(#[from] PeerListError),
    #[error(transparent)]
    MetadataStore(#[from] MetadataStoreError),
    #[error("invalid Raft timings: {0}")]
    RaftConfig(#[from] Box<openraft::ConfigError>),
    #[error("Raft stopped: {0}")]
    Raft(String),
    #[error("group {0:?} is already running on this node")]
    GroupExists(GroupId),
    #[error("the cluster refused to let this node join: {0}")]
    JoinRefused(String),
    #[error("no member answered the request to join within {after:?}: {last_error}")]
    JoinTimedOut { after: Duration, last_error: String },
    #[error("no peer list, no address to join and no stored cluster state: nothing to start from")]
    NothingToStartFrom,
    #[error("cannot join with cluster address {0}: other nodes need an address they can dial")]
    UndialableAddress(SocketAddr),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("no metadata leader accepted the command within {timeout:?} (last: {last_error})")]
    Timeout {
        timeout: Duration,
        last_error: String,
    },
    #[error("the metadata group stopped: {0}")]
    Fatal(String),
}

/// Why a leader-only read or write ([`ClusterNode::read_as_leader`],
/// [`ClusterNode::propose_as_leader`]) did not happen, or may not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaderOnlyError {
    /// Not the leader, or leadership was lost before the write committed (its outcome is then
    /// unknown: it may still commit under the next leader).
    #[error("not the metadata leader: {0}")]
    NotLeader(String),
    #[error("the metadata group stopped: {0}")]
    Fatal(String),
}

type GroupStopper = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

/// A running cluster node. Dropping it does not stop it: call [`ClusterNode::shutdown`].
pub struct ClusterNode {
    node_id: NodeId,
    address: NodeAddress,
    transport: Transport,
    raft_config: Arc<openraft::Config>,
    metadata_raft: Raft<MetadataRaft>,
    metadata: watch::Receiver<ClusterMetadata>,
    consumer_offsets: ReplicatedOffsets,
    transactions: ReplicatedTransactions,
    security: ReplicatedSecurity,
    share_states: ReplicatedOffsets,
    partition_leaders: PartitionLeaders,
    groups: Mutex<HashMap<GroupId, GroupStopper>>,
    /// Every group's early campaign when a peer's connection drops (see [`early_election`]).
    on_peer_lost: Mutex<HashMap<GroupId, OnPeerLost>>,
    propose_timeout: Duration,
    shutdown: CancellationToken,
}

/// The forwarded-write response, as it crosses the wire.
type ForwardedWrite = Result<
    ClientWriteResponse<MetadataRaft>,
    RaftError<NodeId, ClientWriteError<NodeId, NodeAddress>>,
>;

/// The metadata leader's answer to [`RpcKind::ReadIndex`]: the index to apply before reading
/// (`None` when nothing was ever committed), or why it could not answer.
type ReadIndexAnswer = Result<Option<u64>, String>;

/// How long [`ClusterNode::catch_up`] tries to reach a metadata leader.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(5);

/// The metadata group's dispatcher: the Raft RPCs, plus proposals forwarded by followers and
/// membership changes (which need the node, set once it is built).
struct MetadataDispatcher {
    raft_rpcs: RaftDispatcher<MetadataRaft>,
    frame_bytes_max: usize,
    node: Arc<OnceLock<Weak<ClusterNode>>>,
}

impl GroupDispatcher for MetadataDispatcher {
    fn dispatch(
        &self,
        kind: RpcKind,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, RemoteFailure>> {
        let limit = self.frame_bytes_max;
        match kind {
            RpcKind::ClientWrite => {}
            RpcKind::ReadIndex => {
                let raft = self.raft_rpcs.raft().clone();
                return Box::pin(async move {
                    let answer: ReadIndexAnswer = match raft.ensure_linearizable().await {
                        Ok(read_log_id) => Ok(read_log_id.map(|log_id| log_id.index)),
                        Err(e) => Err(e.to_string()),
                    };
                    encode_body(&answer, limit)
                        .map_err(|e| RemoteFailure::BadResponse(e.to_string()))
                });
            }
            RpcKind::Join | RpcKind::MembershipChange => {
                let node = self.node.get().and_then(Weak::upgrade);
                return Box::pin(async move {
                    let Some(node) = node else {
                        return Err(RemoteFailure::Unsupported(kind));
                    };
                    if kind == RpcKind::Join {
                        // From a node that is not a member yet: find the leader for it.
                        let join: JoinRequest = decode_body(&body, limit)
                            .map_err(|e| RemoteFailure::BadRequest(e.to_string()))?;
                        let reply = node.on_leader(MembershipRequest::Join(join)).await;
                        let progress: Result<JoinProgress, MembershipError> = match reply {
                            Ok(MembershipReply::Join(progress)) => Ok(progress),
                            Ok(MembershipReply::Removed) => {
                                Err(MembershipError::Raft("unexpected reply".into()))
                            }
                            Err(e) => Err(e),
                        };
                        encode_body(&progress, limit)
                    } else {
                        let request: MembershipRequest = decode_body(&body, limit)
                            .map_err(|e| RemoteFailure::BadRequest(e.to_string()))?;
                        encode_body(&node.change_as_leader(request).await, limit)
                    }
                    .map_err(|e| RemoteFailure::BadResponse(e.to_string()))
                });
            }
            _ => return self.raft_rpcs.dispatch(kind, body),
        }
        let raft = self.raft_rpcs.raft().clone();
        Box::pin(async move {
            let command: MetadataCommand =
                decode_body(&body, limit).map_err(|e| RemoteFailure::BadRequest(e.to_string()))?;
            let result: ForwardedWrite = raft.client_write(command).await;
            encode_body(&result, limit).map_err(|e| RemoteFailure::BadResponse(e.to_string()))
        })
    }
}

impl ClusterNode {
    /// Binds `cluster_listen` and starts the node; it registers its addresses in the
    /// background (retrying until a metadata leader accepts).
    pub async fn start(config: ClusterConfig) -> Result<Arc<Self>, ClusterError> {
        let listener = tokio::net::TcpListener::bind(config.cluster_listen)
            .await
            .map_err(|source| TransportError::Bind {
                addr: config.cluster_listen,
                source,
            })?;
        Self::start_with_listener(config, listener).await
    }

    /// Starts the node on an already bound listener (tests bind port 0 to learn the address).
    pub async fn start_with_listener(
        config: ClusterConfig,
        listener: tokio::net::TcpListener,
    ) -> Result<Arc<Self>, ClusterError> {
        let node_id = config.node_id;
        if !config.peers.is_empty() {
            let peers = PeerList::new(
                config
                    .peers
                    .iter()
                    .map(|&(node_id, cluster_addr)| Peer {
                        node_id,
                        cluster_addr,
                    })
                    .collect(),
            )?;
            peers.validate_for(node_id, None)?;
        }

        let transport_config = config
            .transport
            .clone()
            .unwrap_or_else(|| TransportConfig::new(node_id));
        let frame_bytes_max = transport_config.frame_bytes_max;
        let transport = Transport::start(
            TransportConfig {
                node_id,
                ..transport_config
            },
            listener,
            &config.peers,
        )?;
        let address = NodeAddress {
            cluster_addr: transport.local_addr().to_string(),
            kafka_addr: config.kafka_addr.clone(),
        };

        let raft_config = Arc::new(config.timings.raft_config("sluice-metadata")?);
        let dir = config.data_dir.join("metadata");
        let log_store = MetadataLogStore::open(config.storage.clone(), &dir)?;
        let state_machine = MetadataStateMachine::open(config.storage.clone(), &dir)?;
        let metadata = state_machine.subscribe();
        let consumer_offsets = state_machine.consumer_offsets();
        let partition_leaders = state_machine.partition_leaders();
        let transactions = state_machine.transactions();
        let share_states = state_machine.share_states();
        let security = state_machine.security();
        let metadata_raft = Raft::new(
            node_id,
            raft_config.clone(),
            transport.network::<MetadataRaft>(GroupId::Metadata),
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let dispatcher_node = Arc::new(OnceLock::new());
        transport.register_dispatcher(
            GroupId::Metadata,
            Arc::new(MetadataDispatcher {
                raft_rpcs: RaftDispatcher::new(metadata_raft.clone(), frame_bytes_max),
                frame_bytes_max,
                node: Arc::clone(&dispatcher_node),
            }),
        );

        let node = Self {
            node_id,
            address,
            transport,
            raft_config,
            metadata_raft,
            metadata,
            consumer_offsets,
            partition_leaders,
            transactions,
            share_states,
            security,
            groups: Mutex::new(HashMap::new()),
            on_peer_lost: Mutex::new(HashMap::new()),
            propose_timeout: config.propose_timeout,
            shutdown: CancellationToken::new(),
        };
        let initialized = node
            .metadata_raft
            .is_initialized()
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let is_voter = node.metadata_voters().contains(&node_id);
        // A learner that restarts asks to join again; a voter never needs to.
        let joining = !config.join.is_empty() && !is_voter;
        if joining {
            let own = node.transport.local_addr();
            if own.ip().is_unspecified() {
                node.shutdown().await;
                return Err(ClusterError::UndialableAddress(own));
            }
        } else if !config.peers.is_empty() {
            node.bootstrap_metadata_group(&config.peers).await?;
        } else if !initialized {
            node.shutdown().await;
            return Err(ClusterError::NothingToStartFrom);
        }
        let metadata_on_lost = early_election::on_peer_lost(
            node.metadata_raft.clone(),
            node.transport.clone(),
            &node.raft_config,
        );
        node.on_peer_lost
            .lock()
            .insert(GroupId::Metadata, metadata_on_lost);
        let node = Arc::new(node);
        let _ = dispatcher_node.set(Arc::downgrade(&node));
        node.spawn_peer_tracking(
            config
                .peers
                .iter()
                .map(|&(id, _)| id)
                .collect::<BTreeSet<_>>(),
        );
        if joining {
            if let Err(e) = node.join_cluster(&config.join, config.join_timeout).await {
                node.shutdown().await;
                return Err(e);
            }
        } else if !config.join.is_empty() {
            // A voter by its own state may have been removed while it was away: the others
            // refuse it, and it would campaign unheard forever. Asking to join settles it
            // (a voter is answered at once; a removed node is added back as a learner and
            // catches up). In the background, since when the whole cluster restarts no member
            // can answer until the voters, this one among them, have elected a leader.
            // Like the registration task, it holds the node until it is done or shut down.
            let node = Arc::clone(&node);
            let join = config.join.clone();
            tokio::spawn(async move {
                if let Err(error) = node.join_cluster(&join, None).await {
                    tracing::warn!(%error, "asking the cluster whether this node is still a member failed");
                }
            });
        }
        node.spawn_registration();
        let weak = Arc::downgrade(&node);
        tokio::spawn(early_election::watch_links(
            node.transport.clone(),
            node.shutdown.clone(),
            move || match weak.upgrade() {
                Some(node) => node.on_peer_lost.lock().values().cloned().collect(),
                None => Vec::new(),
            },
        ));
        Ok(node)
    }

    async fn bootstrap_metadata_group(
        &self,
        peers: &[(NodeId, SocketAddr)],
    ) -> Result<(), ClusterError> {
        let initialized = self
            .metadata_raft
            .is_initialized()
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        if initialized {
            tracing::info!(
                node_id = self.node_id,
                "metadata group: restarting from stored state"
            );
            return Ok(());
        }
        let members: BTreeMap<NodeId, NodeAddress> = peers
            .iter()
            .map(|&(node_id, addr)| {
                let node = NodeAddress {
                    cluster_addr: addr.to_string(),
                    kafka_addr: String::new(),
                };
                (node_id, node)
            })
            .collect();
        match self.metadata_raft.initialize(members).await {
            Ok(()) => tracing::info!(node_id = self.node_id, "metadata group: initialized"),
            // Another node's entries reached us first: we are part of the group already.
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                tracing::info!(
                    node_id = self.node_id,
                    "metadata group: already initialized by a peer"
                )
            }
            Err(e) => return Err(ClusterError::Raft(e.to_string())),
        }
        Ok(())
    }

    /// Registers this node's addresses through the metadata group, retrying until a leader
    /// accepts; ends at shutdown.
    fn spawn_registration(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let node = self.clone();
        tokio::spawn(async move {
            let command = MetadataCommand::RegisterBroker {
                node_id: node.node_id,
                address: node.address.clone(),
            };
            loop {
                if node.metadata.borrow().brokers.get(&node.node_id) == Some(&node.address) {
                    return;
                }
                tokio::select! {
                    _ = node.shutdown.cancelled() => return,
                    result = node.propose(command.clone()) => match result {
                        Ok(MetadataResponse::Rejected(rejection)) => {
                            tracing::warn!(node_id = node.node_id, %rejection, "broker registration refused");
                            return;
                        }
                        Ok(_) => {
                            tracing::info!(node_id = node.node_id, address = %node.address, "registered with the metadata group");
                            return;
                        }
                        Err(e) => tracing::debug!(error = %e, "broker registration: retrying"),
                    },
                }
            }
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// This node's transport (actual listen address) and Kafka address.
    pub fn address(&self) -> &NodeAddress {
        &self.address
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The Raft config every group of this node uses.
    pub fn raft_config(&self) -> Arc<openraft::Config> {
        self.raft_config.clone()
    }

    pub fn metadata_raft(&self) -> &Raft<MetadataRaft> {
        &self.metadata_raft
    }

    /// The metadata as of the last applied command, and every later change.
    pub fn metadata(&self) -> watch::Receiver<ClusterMetadata> {
        self.metadata.clone()
    }

    /// Committed consumer offsets as applied on this node (may lag the leader; see
    /// [`ClusterNode::read_as_leader`]).
    pub fn consumer_offsets(&self) -> &ReplicatedOffsets {
        &self.consumer_offsets
    }

    /// The transaction coordinator's states as applied on this node (may lag the leader; see
    /// [`ClusterNode::read_as_leader`]).
    pub fn transactions(&self) -> &ReplicatedTransactions {
        &self.transactions
    }

    /// Share groups' share-partition states as applied on this node (may lag the leader).
    pub fn share_states(&self) -> &ReplicatedOffsets {
        &self.share_states
    }

    /// The security documents as applied on this node (may lag the leader).
    pub fn security(&self) -> &ReplicatedSecurity {
        &self.security
    }

    /// Partition leaders as their leaders reported them through the metadata group, applied
    /// on this node (may lag; a client sent to a deposed leader is told NOT_LEADER).
    pub fn partition_leaders(&self) -> &PartitionLeaders {
        &self.partition_leaders
    }

    /// Confirms with a majority that this node is still the metadata leader and waits until
    /// everything committed before now is applied here, so a read of the applied state that
    /// follows sees every acknowledged write (a linearizable read). `NotLeader` otherwise.
    pub async fn read_as_leader(&self) -> Result<(), LeaderOnlyError> {
        match self.metadata_raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(e)) => Err(LeaderOnlyError::NotLeader(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(LeaderOnlyError::Fatal(e.to_string())),
        }
    }

    /// Waits until this node has applied every metadata change committed before the call (a
    /// linearizable read on any node): the leader confirms its leadership and names its
    /// commit index, which this node then applies. For a request that names something this
    /// node does not know yet, such as a topic just created through another node, so that it
    /// is not refused while the metadata is still on its way.
    pub async fn catch_up(&self) -> Result<(), ProposeError> {
        let deadline = Instant::now() + CATCH_UP_DEADLINE;
        let mut last_error = String::from("no leader known");
        let read_index = loop {
            match self.metadata_leader() {
                Some(leader) if leader == self.node_id => match self.read_as_leader().await {
                    // The leader's read already waited for its own apply.
                    Ok(()) => return Ok(()),
                    Err(LeaderOnlyError::Fatal(e)) => return Err(ProposeError::Fatal(e)),
                    Err(LeaderOnlyError::NotLeader(e)) => last_error = e,
                },
                Some(leader) => {
                    let answer: Result<ReadIndexAnswer, _> = self
                        .transport
                        .request(
                            leader,
                            GroupId::Metadata,
                            RpcKind::ReadIndex,
                            &(),
                            Some(deadline.saturating_duration_since(Instant::now())),
                        )
                        .await;
                    match answer {
                        Ok(Ok(read_index)) => break read_index,
                        Ok(Err(e)) => last_error = format!("node {leader}: {e}"),
                        Err(e) => last_error = e.to_string(),
                    }
                }
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(ProposeError::Timeout {
                    timeout: CATCH_UP_DEADLINE,
                    last_error,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let Some(read_index) = read_index else {
            return Ok(());
        };
        let mut metrics = self.metadata_raft.metrics();
        let applied = tokio::time::timeout_at(deadline, async {
            loop {
                let last_applied = metrics.borrow_and_update().last_applied;
                if last_applied.is_some_and(|log_id| log_id.index >= read_index) {
                    return true;
                }
                if metrics.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await;
        match applied {
            Ok(true) => Ok(()),
            Ok(false) => Err(ProposeError::Fatal("the metadata group stopped".into())),
            Err(_) => Err(ProposeError::Timeout {
                timeout: CATCH_UP_DEADLINE,
                last_error: format!("index {read_index} not applied here yet"),
            }),
        }
    }

    /// Commits `command` only if this node is the metadata leader (no forwarding): for writes
    /// whose validity depends on state only the leader keeps, such as a consumer group's
    /// members. Answers once committed by a majority and applied here.
    pub async fn propose_as_leader(
        &self,
        command: MetadataCommand,
    ) -> Result<MetadataResponse, LeaderOnlyError> {
        if self.metadata_leader() != Some(self.node_id) {
            return Err(LeaderOnlyError::NotLeader(
                "this node is not the metadata leader".into(),
            ));
        }
        match self.metadata_raft.client_write(command).await {
            Ok(response) => Ok(response.data),
            Err(RaftError::APIError(e)) => Err(LeaderOnlyError::NotLeader(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(LeaderOnlyError::Fatal(e.to_string())),
        }
    }

    /// The metadata group's leader as this node knows it.
    pub fn metadata_leader(&self) -> Option<NodeId> {
        self.metadata_raft.metrics().borrow().current_leader
    }

    /// Commits `command` through the metadata group and returns what applying it produced.
    /// On a follower the command is forwarded to the leader. A command whose outcome is unknown
    /// (a leader failed mid-way) is retried, so it may be applied twice: commands are written
    /// to make that harmless (a second CreateTopic is rejected, a second producer-id block is
    /// merely skipped).
    pub async fn propose(
        &self,
        command: MetadataCommand,
    ) -> Result<MetadataResponse, ProposeError> {
        let deadline = Instant::now() + self.propose_timeout;
        let mut metrics = self.metadata_raft.metrics();
        let mut hint: Option<NodeId> = None;
        let mut last_error = String::from("no leader known");
        loop {
            let leader = hint.take().or(metrics.borrow_and_update().current_leader);
            match leader {
                Some(leader) if leader == self.node_id => {
                    match self.metadata_raft.client_write(command.clone()).await {
                        Ok(response) => return Ok(response.data),
                        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                            hint = forward.leader_id.filter(|&id| id != self.node_id);
                            last_error = "leadership moved".into();
                        }
                        Err(RaftError::APIError(e)) => last_error = e.to_string(),
                        Err(RaftError::Fatal(e)) => return Err(ProposeError::Fatal(e.to_string())),
                    }
                }
                Some(leader) => {
                    let forwarded: Result<ForwardedWrite, _> = self
                        .transport
                        .request(
                            leader,
                            GroupId::Metadata,
                            RpcKind::ClientWrite,
                            &command,
                            None,
                        )
                        .await;
                    match forwarded {
                        Ok(Ok(response)) => return Ok(response.data),
                        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(
                            forward,
                        )))) => {
                            hint = forward.leader_id.filter(|&id| id != leader);
                            last_error = format!("node {leader} is not the leader");
                        }
                        Ok(Err(e)) => last_error = format!("node {leader}: {e}"),
                        Err(e) => last_error = e.to_string(),
                    }
                }
                None => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ProposeError::Timeout {
                    timeout: self.propose_timeout,
                    last_error,
                });
            }
            if hint.is_none() {
                // Wait for news of a leader, but not long: a forwarded call may have failed
                // while the metrics stayed the same.
                let pause = (deadline - now).min(Duration::from_millis(50));
                let _ = tokio::time::timeout(pause, metrics.changed()).await;
            }
        }
    }

    /// Starts a Raft group on this node (a partition's replica), reachable through the transport.
    pub async fn start_group<C, LS, SM>(
        &self,
        group: GroupId,
        log_store: LS,
        state_machine: SM,
    ) -> Result<Raft<C>, ClusterError>
    where
        C: RaftTypeConfig<NodeId = NodeId, Entry = openraft::Entry<C>>,
        C::D: crate::transport::BulkPayload,
        C::SnapshotData:
            tokio::io::AsyncRead + tokio::io::AsyncWrite + tokio::io::AsyncSeek + Unpin,
        LS: RaftLogStorage<C>,
        SM: RaftStateMachine<C>,
    {
        if group == GroupId::Metadata || self.groups.lock().contains_key(&group) {
            return Err(ClusterError::GroupExists(group));
        }
        let raft = Raft::new(
            self.node_id,
            self.raft_config.clone(),
            self.transport.network::<C>(group),
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
        self.transport.register_group(group, raft.clone());
        self.on_peer_lost.lock().insert(
            group,
            early_election::on_peer_lost(raft.clone(), self.transport.clone(), &self.raft_config),
        );
        let stopping = raft.clone();
        let stopper: GroupStopper = Box::new(move || {
            Box::pin(async move {
                if let Err(e) = stopping.shutdown().await {
                    tracing::warn!(error = %e, "group shutdown");
                }
            })
        });
        self.groups.lock().insert(group, stopper);
        Ok(raft)
    }

    /// Stops a group started with [`ClusterNode::start_group`]; false if it was not running.
    pub async fn stop_group(&self, group: GroupId) -> bool {
        let stopper = self.groups.lock().remove(&group);
        self.on_peer_lost.lock().remove(&group);
        self.transport.unregister_group(group);
        match stopper {
            Some(stop) => {
                stop().await;
                true
            }
            None => false,
        }
    }

    /// Stops every group, the metadata group and the transport.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.on_peer_lost.lock().clear();
        let stoppers: Vec<(GroupId, GroupStopper)> = self.groups.lock().drain().collect();
        for (group, stop) in stoppers {
            self.transport.unregister_group(group);
            stop().await;
        }
        self.transport.unregister_group(GroupId::Metadata);
        if let Err(e) = self.metadata_raft.shutdown().await {
            tracing::warn!(error = %e, "metadata group shutdown");
        }
        self.transport.shutdown().await;
    }
}
