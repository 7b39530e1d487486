//! openraft's two ends of the transport, generic over any type config whose types are serde:
//! the client (`RaftNetworkFactory`/`RaftNetwork`) and the server (a dispatcher calling `Raft`).

use std::marker::PhantomData;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{Raft, RaftTypeConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::frame::{decode_body, encode_body};
use super::{CallError, GroupDispatcher, RemoteFailure, RpcKind, Transport};
use crate::{GroupId, NodeId};

/// Creates the clients one group's Raft uses to reach its peers over the shared connections.
pub struct GroupNetworkFactory<C> {
    transport: Transport,
    group: GroupId,
    _config: PhantomData<fn() -> C>,
}

impl<C> GroupNetworkFactory<C> {
    pub fn new(transport: Transport, group: GroupId) -> Self {
        Self {
            transport,
            group,
            _config: PhantomData,
        }
    }
}

impl Transport {
    /// The network factory for `group`'s Raft (client side).
    pub fn network<C>(&self, group: GroupId) -> GroupNetworkFactory<C>
    where
        C: RaftTypeConfig<NodeId = NodeId>,
    {
        GroupNetworkFactory::new(self.clone(), group)
    }

    /// Serves `group`'s incoming RPCs with `raft` (server side).
    pub fn register_group<C>(&self, group: GroupId, raft: Raft<C>)
    where
        C: RaftTypeConfig<NodeId = NodeId>,
        C::SnapshotData:
            tokio::io::AsyncRead + tokio::io::AsyncWrite + tokio::io::AsyncSeek + Unpin,
    {
        let limit = self.config().frame_bytes_max;
        self.register_dispatcher(group, std::sync::Arc::new(RaftDispatcher::new(raft, limit)));
    }
}

impl<C> RaftNetworkFactory<C> for GroupNetworkFactory<C>
where
    C: RaftTypeConfig<NodeId = NodeId>,
{
    type Network = GroupNetwork<C>;

    async fn new_client(&mut self, target: NodeId, _node: &C::Node) -> Self::Network {
        GroupNetwork {
            transport: self.transport.clone(),
            group: self.group,
            target,
            last_entries: 0,
            _config: PhantomData,
        }
    }
}

/// One group's client to one peer.
pub struct GroupNetwork<C> {
    transport: Transport,
    group: GroupId,
    target: NodeId,
    /// Entries in the AppendEntries being sent, for a too-large hint.
    last_entries: u64,
    _config: PhantomData<fn() -> C>,
}

impl<C> GroupNetwork<C>
where
    C: RaftTypeConfig<NodeId = NodeId>,
{
    async fn send<Req, Resp, E>(
        &self,
        kind: RpcKind,
        action: RPCTypes,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, C::Node, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let timeout = option.hard_ttl();
        let config = self.transport.config();
        let limit = config.frame_bytes_max;
        let body = encode_body(request, limit)
            .map_err(|e| self.rpc_error(super::encode_error(e), action, timeout))?;
        // openraft gives an AppendEntries one heartbeat interval: a big one would time out and
        // be sent again and again. Fewer entries next time, in proportion.
        let budget = config.append_entries_bytes_max;
        if action == RPCTypes::AppendEntries && self.last_entries > 1 && body.len() > budget {
            let hint = (u128::from(self.last_entries) * budget as u128 / body.len() as u128)
                .clamp(1, u128::from(self.last_entries - 1));
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(u64::try_from(hint).unwrap_or(1)),
            ));
        }
        let response = self
            .transport
            .call(self.target, self.group, kind, body, Some(timeout))
            .await
            .map_err(|e| self.rpc_error(e, action, timeout))?;
        let result: Result<Resp, RaftError<NodeId, E>> = decode_body(&response, limit)
            .map_err(|e| self.rpc_error(CallError::Codec(e.to_string()), action, timeout))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    fn rpc_error<E: std::error::Error>(
        &self,
        error: CallError,
        action: RPCTypes,
        timeout: Duration,
    ) -> RPCError<NodeId, C::Node, RaftError<NodeId, E>> {
        match error {
            CallError::Timeout { .. } => RPCError::Timeout(Timeout {
                action,
                id: self.transport.node_id(),
                target: self.target,
                timeout,
            }),
            CallError::UnknownPeer(_) | CallError::Unreachable(_) | CallError::Connect { .. } => {
                RPCError::Unreachable(Unreachable::new(&error))
            }
            // Half the entries next time; openraft keeps halving down to one.
            CallError::TooLarge { .. } if action == RPCTypes::AppendEntries => {
                RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(
                    (self.last_entries / 2).max(1),
                ))
            }
            CallError::TooLarge { .. } | CallError::Remote { .. } | CallError::Codec(_) => {
                RPCError::Network(NetworkError::new(&error))
            }
        }
    }
}

impl<C> RaftNetwork<C> for GroupNetwork<C>
where
    C: RaftTypeConfig<NodeId = NodeId>,
{
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, C::Node, RaftError<NodeId>>> {
        self.last_entries = rpc.entries.len() as u64;
        self.send(
            RpcKind::AppendEntries,
            RPCTypes::AppendEntries,
            &rpc,
            &option,
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, C::Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.send(
            RpcKind::InstallSnapshot,
            RPCTypes::InstallSnapshot,
            &rpc,
            &option,
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, C::Node, RaftError<NodeId>>> {
        self.send(RpcKind::Vote, RPCTypes::Vote, &rpc, &option)
            .await
    }
}

/// Decodes a group's requests and calls its `Raft`. `ClientWrite` is not served here: its
/// response type depends on the group's responder; [`crate::node`] serves it for the
/// metadata group.
pub struct RaftDispatcher<C: RaftTypeConfig> {
    raft: Raft<C>,
    frame_bytes_max: usize,
}

impl<C: RaftTypeConfig> RaftDispatcher<C> {
    pub fn new(raft: Raft<C>, frame_bytes_max: usize) -> Self {
        Self {
            raft,
            frame_bytes_max,
        }
    }

    pub fn raft(&self) -> &Raft<C> {
        &self.raft
    }
}

fn decode_request<T: DeserializeOwned>(body: &[u8], limit: usize) -> Result<T, RemoteFailure> {
    decode_body(body, limit).map_err(|e| RemoteFailure::BadRequest(e.to_string()))
}

fn encode_response<T: Serialize>(value: &T, limit: usize) -> Result<Bytes, RemoteFailure> {
    encode_body(value, limit).map_err(|e| RemoteFailure::BadResponse(e.to_string()))
}

impl<C> GroupDispatcher for RaftDispatcher<C>
where
    C: RaftTypeConfig<NodeId = NodeId>,
    C::SnapshotData: tokio::io::AsyncRead + tokio::io::AsyncWrite + tokio::io::AsyncSeek + Unpin,
{
    fn dispatch(
        &self,
        kind: RpcKind,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, RemoteFailure>> {
        let raft = self.raft.clone();
        let limit = self.frame_bytes_max;
        Box::pin(async move {
            match kind {
                RpcKind::AppendEntries => {
                    let request: AppendEntriesRequest<C> = decode_request(&body, limit)?;
                    encode_response(&raft.append_entries(request).await, limit)
                }
                RpcKind::Vote => {
                    let request: VoteRequest<NodeId> = decode_request(&body, limit)?;
                    encode_response(&raft.vote(request).await, limit)
                }
                RpcKind::InstallSnapshot => {
                    let request: InstallSnapshotRequest<C> = decode_request(&body, limit)?;
                    encode_response(&raft.install_snapshot(request).await, limit)
                }
                RpcKind::ClientWrite
                | RpcKind::Join
                | RpcKind::MembershipChange
                | RpcKind::ReadIndex
                | RpcKind::WriteTransactionMarker
                | RpcKind::ForgetSharePartitions => Err(RemoteFailure::Unsupported(kind)),
            }
        })
    }
}
