//! Membership changes of the metadata group: a node joins a running cluster, a node is removed.
//!
//! Join: the new node, not a peer of anyone yet, sends [`JoinRequest`] on a one-shot connection
//! (`RpcKind::Join`) to any member, which forwards it to the metadata leader
//! (`RpcKind::MembershipChange`). The leader adds the node as a learner and answers at once
//! with the members' transport addresses, so the new node can reach them (and accept them:
//! the transport refuses a Hello from a stranger). The new node asks again; the leader now
//! waits (bounded) until the learner has caught up, then makes it a voter. Asking again is
//! harmless at every step, so a node that restarts half-way simply asks again.
//!
//! Every node follows the membership in its transport ([`ClusterNode::spawn_peer_tracking`]):
//! the membership entries carry each node's cluster address, so a joined node becomes a peer
//! of all, and a removed one is no longer dialled nor accepted.
//!
//! Remove: the leader first unregisters the broker through the metadata group, which refuses
//! while a partition has a replica on it (as Kafka's UnregisterBroker), then removes it from
//! the membership.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{ClusterError, ClusterNode, LeaderOnlyError};
use crate::metadata::{MetadataCommand, MetadataRejection, MetadataResponse};
use crate::transport::{call_once, CallError, RpcKind};
use crate::{GroupId, NodeAddress, NodeId};

/// How long the leader waits, in one request, for a learner to catch up before promoting it;
/// the joining node asks again if it is not there yet.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);
/// A member's forwarded call to the leader: a catch-up wait plus two membership commits.
const LEADER_CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a member keeps looking for a leader that performs the change.
const ON_LEADER_DEADLINE: Duration = Duration::from_secs(30);
/// The joining node's one-shot call: the member's search for a leader and the leader's work.
const JOIN_CALL_TIMEOUT: Duration = Duration::from_secs(40);
/// Between attempts of a joining node whose member did not answer.
const JOIN_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// A node asks to join the metadata group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub node_id: NodeId,
    /// Where the node's transport listens (`--cluster-listen`).
    pub cluster_addr: String,
}

/// The leader's answer to a join: the members' transport addresses (the new node included)
/// and whether the new node is a voter yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinProgress {
    pub members: BTreeMap<NodeId, String>,
    pub voter: bool,
}

/// A membership change, as a member forwards it to the metadata leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipRequest {
    Join(JoinRequest),
    Remove { node_id: NodeId },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipReply {
    Join(JoinProgress),
    Removed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MembershipError {
    #[error("node id {node_id} is already used by the node at {cluster_addr}")]
    IdInUse {
        node_id: NodeId,
        cluster_addr: String,
    },
    #[error("cluster address {cluster_addr} is already used by node {node_id}")]
    AddressInUse {
        node_id: NodeId,
        cluster_addr: String,
    },
    #[error("`{0}` is not an IP:PORT address other nodes can dial")]
    BadAddress(String),
    #[error("node {0} is neither a member nor a registered broker")]
    UnknownNode(NodeId),
    #[error("{0}")]
    Rejected(MetadataRejection),
    #[error("node {0} is the metadata group's last voter")]
    LastVoter(NodeId),
    /// The node asked is not the leader (any more); the caller looks for the leader again.
    #[error("not the metadata leader")]
    NotLeader,
    #[error("no metadata leader performed the change within {timeout:?} (last: {last_error})")]
    Timeout {
        timeout: Duration,
        last_error: String,
    },
    #[error("the metadata group did not make the change: {0}")]
    Raft(String),
}

impl MembershipError {
    /// A refusal that asking again will not change (as opposed to a leader not found yet).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            MembershipError::IdInUse { .. }
                | MembershipError::AddressInUse { .. }
                | MembershipError::BadAddress(_)
                | MembershipError::UnknownNode(_)
                | MembershipError::Rejected(_)
                | MembershipError::LastVoter(_)
        )
    }
}

fn write_error(error: RaftError<NodeId, ClientWriteError<NodeId, NodeAddress>>) -> MembershipError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => MembershipError::NotLeader,
        other => MembershipError::Raft(other.to_string()),
    }
}

impl ClusterNode {
    /// The metadata group's members (voters and learners) with their transport addresses, as
    /// this node knows them.
    pub fn metadata_members(&self) -> BTreeMap<NodeId, String> {
        self.metadata_raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(&id, node)| (id, node.cluster_addr.clone()))
            .collect()
    }

    /// The metadata group's voters as this node knows them.
    pub fn metadata_voters(&self) -> BTreeSet<NodeId> {
        self.metadata_raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// Removes `node_id` from the metadata group and the broker list (through the metadata
    /// leader). Refused while any partition has a replica on it: reassign those first. The
    /// removed node should be stopped afterwards; the others stop dialling it.
    pub async fn remove_node(&self, node_id: NodeId) -> Result<(), MembershipError> {
        match self
            .on_leader(MembershipRequest::Remove { node_id })
            .await?
        {
            MembershipReply::Removed => Ok(()),
            MembershipReply::Join(_) => Err(MembershipError::Raft("unexpected reply".into())),
        }
    }

    /// Has the metadata leader perform `request`: here if this node leads, else forwarded.
    pub(super) async fn on_leader(
        &self,
        request: MembershipRequest,
    ) -> Result<MembershipReply, MembershipError> {
        let deadline = Instant::now() + ON_LEADER_DEADLINE;
        let mut last_error = String::from("no leader known");
        let mut attempted = false;
        loop {
            attempted |= self.metadata_leader().is_some();
            match self.metadata_leader() {
                Some(leader) if leader == self.node_id => {
                    match self.change_as_leader(request.clone()).await {
                        Err(MembershipError::NotLeader) => last_error = "leadership moved".into(),
                        other => return other,
                    }
                }
                Some(leader) => {
                    let forwarded: Result<Result<MembershipReply, MembershipError>, CallError> =
                        self.transport
                            .request(
                                leader,
                                GroupId::Metadata,
                                RpcKind::MembershipChange,
                                &request,
                                Some(LEADER_CALL_TIMEOUT),
                            )
                            .await;
                    match forwarded {
                        Ok(Err(MembershipError::NotLeader)) => {
                            last_error = format!("node {leader} is not the leader")
                        }
                        Ok(reply) => return reply,
                        Err(e) => last_error = e.to_string(),
                    }
                }
                None => {}
            }
            // A removal may have happened although its answer was lost (the leader drops its
            // connection to a removed node, which may be the one asking).
            if let MembershipRequest::Remove { node_id } = request {
                let gone = !self.metadata_members().contains_key(&node_id)
                    && !self.metadata.borrow().brokers.contains_key(&node_id);
                if gone && attempted {
                    return Ok(MembershipReply::Removed);
                }
            }
            if Instant::now() >= deadline {
                return Err(MembershipError::Timeout {
                    timeout: ON_LEADER_DEADLINE,
                    last_error,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Performs `request` if this node is the metadata leader; `NotLeader` otherwise.
    pub(super) async fn change_as_leader(
        &self,
        request: MembershipRequest,
    ) -> Result<MembershipReply, MembershipError> {
        if self.metadata_leader() != Some(self.node_id) {
            return Err(MembershipError::NotLeader);
        }
        match request {
            MembershipRequest::Join(join) => self.admit(join).await.map(MembershipReply::Join),
            MembershipRequest::Remove { node_id } => {
                self.remove_as_leader(node_id).await?;
                Ok(MembershipReply::Removed)
            }
        }
    }

    fn join_progress(&self, node_id: NodeId) -> JoinProgress {
        JoinProgress {
            members: self.metadata_members(),
            voter: self.metadata_voters().contains(&node_id),
        }
    }

    /// One step of a join, on the leader: add as a learner, or promote a caught-up learner.
    async fn admit(&self, join: JoinRequest) -> Result<JoinProgress, MembershipError> {
        let id = join.node_id;
        let addr: SocketAddr = join
            .cluster_addr
            .parse()
            .ok()
            .filter(|a: &SocketAddr| !a.ip().is_unspecified() && a.port() != 0)
            .ok_or_else(|| MembershipError::BadAddress(join.cluster_addr.clone()))?;
        let members = self.metadata_members();
        if let Some(known) = members.get(&id) {
            if *known != join.cluster_addr {
                return Err(MembershipError::IdInUse {
                    node_id: id,
                    cluster_addr: known.clone(),
                });
            }
        }
        if let Some((&other, _)) = members
            .iter()
            .find(|(&other, a)| other != id && **a == join.cluster_addr)
        {
            return Err(MembershipError::AddressInUse {
                node_id: other,
                cluster_addr: join.cluster_addr,
            });
        }
        if self.metadata_voters().contains(&id) {
            return Ok(self.join_progress(id));
        }
        // Replication to the learner starts as soon as it is added: reach it already.
        self.transport.add_peer(id, addr);
        if !members.contains_key(&id) {
            tracing::info!(node_id = id, cluster_addr = %addr, "join: adding a learner");
            self.metadata_raft
                .add_learner(
                    id,
                    NodeAddress {
                        cluster_addr: join.cluster_addr,
                        kafka_addr: String::new(),
                    },
                    false,
                )
                .await
                .map_err(write_error)?;
            return Ok(self.join_progress(id));
        }
        // A learner already: promote it once it has what the leader has now.
        let caught_up_to = self
            .metadata_raft
            .metrics()
            .borrow()
            .last_log_index
            .unwrap_or(0);
        let deadline = Instant::now() + CATCH_UP_WAIT;
        loop {
            let matched = {
                let metrics = self.metadata_raft.metrics();
                let metrics = metrics.borrow();
                let Some(replication) = metrics.replication.as_ref() else {
                    return Err(MembershipError::NotLeader);
                };
                replication
                    .get(&id)
                    .and_then(|m| m.as_ref())
                    .map(|m| m.index)
            };
            if matched.is_some_and(|index| index >= caught_up_to) {
                break;
            }
            if Instant::now() >= deadline {
                tracing::info!(
                    node_id = id,
                    ?matched,
                    caught_up_to,
                    "join: learner still catching up"
                );
                return Ok(self.join_progress(id));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(node_id = id, "join: promoting the learner to voter");
        self.metadata_raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(write_error)?;
        Ok(self.join_progress(id))
    }

    async fn remove_as_leader(&self, node_id: NodeId) -> Result<(), MembershipError> {
        let members = self.metadata_members();
        let voters = self.metadata_voters();
        let registered = self.metadata.borrow().brokers.contains_key(&node_id);
        if !members.contains_key(&node_id) && !registered {
            return Err(MembershipError::UnknownNode(node_id));
        }
        if voters.contains(&node_id) && voters.len() == 1 {
            return Err(MembershipError::LastVoter(node_id));
        }
        // The broker goes first: the state machine refuses while replicas are on it, and once
        // it is unregistered no new topic or reassignment can place a replica there.
        match self
            .propose_as_leader(MetadataCommand::UnregisterBroker { node_id })
            .await
        {
            Ok(MetadataResponse::Rejected(rejection)) => {
                return Err(MembershipError::Rejected(rejection))
            }
            Ok(_) => {}
            Err(LeaderOnlyError::NotLeader(_)) => return Err(MembershipError::NotLeader),
            Err(LeaderOnlyError::Fatal(e)) => return Err(MembershipError::Raft(e)),
        }
        if members.contains_key(&node_id) {
            let ids = BTreeSet::from([node_id]);
            let change = if voters.contains(&node_id) {
                ChangeMembers::RemoveVoters(ids)
            } else {
                ChangeMembers::RemoveNodes(ids)
            };
            tracing::info!(node_id, "removing a node from the metadata group");
            self.metadata_raft
                .change_membership(change, false)
                .await
                .map_err(write_error)?;
        }
        Ok(())
    }

    /// Joins the cluster through any of `addresses` (members' cluster addresses), returning
    /// once this node is a voter of the metadata group. Retries while no member or leader
    /// answers, for up to `timeout` since the last answer (`None`: forever); a refusal (id or
    /// address in use) is an error.
    pub(super) async fn join_cluster(
        &self,
        addresses: &[SocketAddr],
        timeout: Option<Duration>,
    ) -> Result<(), ClusterError> {
        let request = JoinRequest {
            node_id: self.node_id,
            cluster_addr: self.address.cluster_addr.clone(),
        };
        let frame_bytes_max = self.transport.config().frame_bytes_max;
        let tls = self.transport.config().tls.clone();
        let mut attempt = 0usize;
        let mut last_answer = Instant::now();
        loop {
            let Some(&addr) = addresses.get(attempt % addresses.len().max(1)) else {
                return Err(ClusterError::JoinRefused("no --join address".into()));
            };
            let call_timeout = timeout.map_or(JOIN_CALL_TIMEOUT, |t| t.min(JOIN_CALL_TIMEOUT));
            let answer: Result<Result<JoinProgress, MembershipError>, CallError> = tokio::select! {
                _ = self.shutdown.cancelled() => return Err(ClusterError::Raft("shut down while joining".into())),
                answer = call_once(addr, GroupId::Metadata, RpcKind::Join, &request, call_timeout, frame_bytes_max, tls.as_ref()) => answer,
            };
            let last_error = match answer {
                Ok(Ok(progress)) => {
                    last_answer = Instant::now();
                    for (&id, member) in &progress.members {
                        if let Ok(member) = member.parse() {
                            self.transport.add_peer(id, member);
                        }
                    }
                    if progress.voter {
                        tracing::info!(node_id = self.node_id, via = %addr, "joined the metadata group as a voter");
                        return Ok(());
                    }
                    tracing::info!(node_id = self.node_id, via = %addr, "join: a learner, catching up");
                    continue;
                }
                Ok(Err(refusal)) if refusal.is_refusal() => {
                    return Err(ClusterError::JoinRefused(refusal.to_string()))
                }
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            tracing::warn!(via = %addr, error = %last_error, "join: retrying");
            if let Some(after) = timeout.filter(|t| last_answer.elapsed() >= *t) {
                return Err(ClusterError::JoinTimedOut { after, last_error });
            }
            attempt += 1;
            tokio::time::sleep(JOIN_RETRY_PAUSE).await;
        }
    }

    /// Keeps the transport's peers equal to the metadata group's members: a node that joined
    /// is dialled (or accepted), one that was removed is dropped. `initial` are the peers the
    /// transport started with (`--peers`), dropped too if the membership no longer has them.
    pub(super) fn spawn_peer_tracking(self: &Arc<Self>, initial: BTreeSet<NodeId>) {
        let node = Arc::clone(self);
        tokio::spawn(async move {
            let mut metrics = node.metadata_raft.metrics();
            let mut tracked = initial;
            let mut seen = None;
            loop {
                let members = {
                    let current = metrics.borrow_and_update();
                    let config = &current.membership_config;
                    if seen == Some(*config.log_id()) {
                        None
                    } else {
                        seen = Some(*config.log_id());
                        Some(
                            config
                                .membership()
                                .nodes()
                                .map(|(&id, n)| (id, n.cluster_addr.clone()))
                                .collect::<BTreeMap<_, _>>(),
                        )
                    }
                };
                if let Some(members) = members.filter(|m| !m.is_empty()) {
                    for (&id, addr) in &members {
                        match addr.parse() {
                            Ok(addr) => node.transport.add_peer(id, addr),
                            Err(_) => {
                                tracing::warn!(node_id = id, addr, "member address is not IP:PORT")
                            }
                        }
                    }
                    for gone in tracked.iter().filter(|id| !members.contains_key(id)) {
                        if node.transport.remove_peer(*gone) {
                            tracing::info!(
                                node_id = gone,
                                "node left the metadata group: no longer a peer"
                            );
                        }
                    }
                    tracked = members
                        .into_keys()
                        .filter(|&id| id != node.node_id)
                        .collect();
                }
                tokio::select! {
                    _ = node.shutdown.cancelled() => return,
                    changed = metrics.changed() => if changed.is_err() { return },
                }
            }
        });
    }
}
