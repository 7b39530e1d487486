//! openraft's two ends of the transport, generic over any type config whose types are serde:
//! the client (`RaftNetworkFactory`/`RaftNetwork`) and the server (a dispatcher calling `Raft`).
//!
//! An AppendEntries travels as its bincode encoding with each entry's bulk bytes (a
//! partition entry's record batches, see [`BulkPayload`]) taken out, followed by those bytes
//! raw: bincode would copy every replicated batch once on each end (about a tenth of a
//! replica's CPU at 1 KiB per record); this way the sender writes them from the buffers the log
//! keeps and the receiver slices them out of the frame.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
use openraft::{EntryPayload, Raft, RaftTypeConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::frame::{decode_body, decode_body_prefix, encode_body, FrameError};
use super::{CallError, GroupDispatcher, RemoteFailure, RpcKind, Transport};
use crate::{GroupId, NodeId};

/// A group's application data whose bulk bytes may travel beside an encoded AppendEntries
/// instead of inside it.
pub trait BulkPayload {
    /// Moves the bulk bytes out, leaving the payload without them; None if it has none.
    fn take_bulk(&mut self) -> Option<Bytes>;
    /// Puts back bytes [`BulkPayload::take_bulk`] took; false if this payload takes none (or
    /// already has them): the request is then malformed.
    fn restore_bulk(&mut self, bulk: Bytes) -> bool;
    /// How many bulk bytes [`BulkPayload::take_bulk`] would move out.
    fn bulk_len(&self) -> usize;
}

/// Encoded size of an entry apart from its bulk bytes, about: what a budget counts for it.
const ENTRY_OVERHEAD_BYTES: usize = 64;

/// How many of `entries`, from the first, fit in `budget` bytes, and their bytes; one at
/// least, whatever its size, so a large entry still goes.
fn entries_within_budget<C>(entries: &[openraft::Entry<C>], budget: usize) -> (usize, usize)
where
    C: RaftTypeConfig<Entry = openraft::Entry<C>>,
    C::D: BulkPayload,
{
    let mut bytes = 0usize;
    for (count, entry) in entries.iter().enumerate() {
        let bulk = match &entry.payload {
            EntryPayload::Normal(data) => data.bulk_len(),
            _ => 0,
        };
        let with_entry = bytes.saturating_add(bulk + ENTRY_OVERHEAD_BYTES);
        if count > 0 && with_entry > budget {
            return (count, bytes);
        }
        bytes = with_entry;
    }
    (entries.len(), bytes)
}

/// Bytes counted as out to a peer until the call ends, answered or dropped.
struct PeerBytesOut {
    in_flight: Arc<AtomicUsize>,
    bytes: usize,
}

impl PeerBytesOut {
    fn new(in_flight: &Arc<AtomicUsize>, bytes: usize) -> Self {
        in_flight.fetch_add(bytes, Ordering::AcqRel);
        Self {
            in_flight: Arc::clone(in_flight),
            bytes,
        }
    }
}

impl Drop for PeerBytesOut {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Where a run of raw bytes behind an encoded AppendEntries belongs: entry `entry` of the
/// request, `len` bytes. Spans follow each other in order.
#[derive(Debug, Serialize, Deserialize)]
struct BulkSpan {
    entry: u32,
    len: u32,
}

/// An AppendEntries as body parts: the request (bulk bytes taken out) and its spans, encoded,
/// then each entry's bulk bytes as they are.
fn encode_append_entries<C>(
    mut rpc: AppendEntriesRequest<C>,
    limit: usize,
) -> Result<Vec<Bytes>, FrameError>
where
    C: RaftTypeConfig<Entry = openraft::Entry<C>>,
    C::D: BulkPayload,
{
    let mut spans = Vec::new();
    let mut parts = vec![Bytes::new()];
    for (position, entry) in rpc.entries.iter_mut().enumerate() {
        let EntryPayload::Normal(data) = &mut entry.payload else {
            continue;
        };
        let Some(bulk) = data.take_bulk() else {
            continue;
        };
        let too_large = || FrameError::TooLarge {
            size: bulk.len(),
            limit,
        };
        spans.push(BulkSpan {
            entry: u32::try_from(position).map_err(|_| too_large())?,
            len: u32::try_from(bulk.len()).map_err(|_| too_large())?,
        });
        parts.push(bulk);
    }
    parts[0] = encode_body(&(&rpc, &spans), limit)?;
    Ok(parts)
}

/// The AppendEntries [`encode_append_entries`] sent; the bulk bytes are slices of `body`.
fn decode_append_entries<C>(
    body: &Bytes,
    limit: usize,
) -> Result<AppendEntriesRequest<C>, FrameError>
where
    C: RaftTypeConfig<Entry = openraft::Entry<C>>,
    C::D: BulkPayload,
{
    let ((mut rpc, spans), mut at): ((AppendEntriesRequest<C>, Vec<BulkSpan>), usize) =
        decode_body_prefix(body, limit)?;
    for span in spans {
        let end = at
            .checked_add(span.len as usize)
            .filter(|&end| end <= body.len())
            .ok_or_else(|| {
                FrameError::Decode(format!(
                    "entry {} claims {} bytes past the end of the request",
                    span.entry, span.len
                ))
            })?;
        let restored = match rpc.entries.get_mut(span.entry as usize) {
            Some(entry) => match &mut entry.payload {
                EntryPayload::Normal(data) => data.restore_bulk(body.slice(at..end)),
                _ => false,
            },
            None => false,
        };
        if !restored {
            return Err(FrameError::Decode(format!(
                "entry {} of {} takes no bulk bytes",
                span.entry,
                rpc.entries.len()
            )));
        }
        at = end;
    }
    if at != body.len() {
        return Err(FrameError::Decode(format!(
            "{} bytes after the request's entries",
            body.len() - at
        )));
    }
    Ok(rpc)
}

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
        C: RaftTypeConfig<NodeId = NodeId, Entry = openraft::Entry<C>>,
        C::D: BulkPayload,
        C::SnapshotData:
            tokio::io::AsyncRead + tokio::io::AsyncWrite + tokio::io::AsyncSeek + Unpin,
    {
        let limit = self.config().frame_bytes_max;
        self.register_dispatcher(group, std::sync::Arc::new(RaftDispatcher::new(raft, limit)));
    }
}

impl<C> RaftNetworkFactory<C> for GroupNetworkFactory<C>
where
    C: RaftTypeConfig<NodeId = NodeId, Entry = openraft::Entry<C>>,
    C::D: BulkPayload,
{
    type Network = GroupNetwork<C>;

    async fn new_client(&mut self, target: NodeId, _node: &C::Node) -> Self::Network {
        let config = self.transport.config();
        GroupNetwork {
            transport: self.transport.clone(),
            group: self.group,
            target,
            last_entries: 0,
            budget: AppendEntriesBudget::new(
                config.append_entries_bytes_min,
                config.append_entries_bytes_max,
            ),
            awaiting_answer: false,
            peer_in_flight: self.transport.append_entries_in_flight(target),
            _config: PhantomData,
        }
    }
}

/// How many bytes an AppendEntries to one peer may carry. openraft gives each call one
/// heartbeat interval, then drops it and sends the same entries again: a call too large for the
/// link, the peer's disk or a busy machine is sent over and over. A fixed size is either too
/// small for a fast peer (one call at a time per peer, so a partition's replication is at most
/// this many bytes per round trip, fsync included) or too large for a slow one; this one
/// follows the round trips measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AppendEntriesBudget {
    bytes: usize,
    min: usize,
    max: usize,
}

impl AppendEntriesBudget {
    /// Starts at a quarter of `max` (1 MiB of the default 4), within `[min, max]`.
    pub(crate) fn new(min: usize, max: usize) -> Self {
        let max = max.max(min);
        Self {
            bytes: (max / 4).clamp(min, max),
            min,
            max,
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// A call that was not answered in time: half as much next time.
    pub(crate) fn unanswered(&mut self) {
        self.bytes = (self.bytes / 2).max(self.min);
    }

    /// A call of `sent` bytes answered after `elapsed` of its `deadline`: a quarter less after
    /// a slow answer (over half the deadline); a quarter more after a quick one (under a
    /// quarter) that used at least half the budget (a heartbeat says nothing about large ones).
    pub(crate) fn answered(&mut self, sent: usize, elapsed: Duration, deadline: Duration) {
        if elapsed > deadline / 2 {
            self.bytes = (self.bytes - self.bytes / 4).max(self.min);
        } else if elapsed < deadline / 4 && sent.saturating_mul(2) >= self.bytes {
            self.bytes = (self.bytes + self.bytes / 4).min(self.max);
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
    budget: AppendEntriesBudget,
    /// Set while an AppendEntries is out: still set at the next one means openraft dropped
    /// the call at its deadline.
    awaiting_answer: bool,
    /// AppendEntries bytes out to the peer now, every group's together.
    peer_in_flight: Arc<AtomicUsize>,
    _config: PhantomData<fn() -> C>,
}

impl<C> GroupNetwork<C>
where
    C: RaftTypeConfig<NodeId = NodeId>,
{
    /// Sends `request`, encoded by `encode` into body parts, and decodes the response.
    async fn send<Req, Resp, E>(
        &self,
        kind: RpcKind,
        action: RPCTypes,
        request: Req,
        encode: impl FnOnce(Req, usize) -> Result<Vec<Bytes>, FrameError>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, C::Node, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let timeout = option.hard_ttl();
        let config = self.transport.config();
        let limit = config.frame_bytes_max;
        let body = encode(request, limit)
            .map_err(|e| self.rpc_error(super::encode_error(e), action, timeout))?;
        let response = self
            .transport
            .call_with_parts(self.target, self.group, kind, body, Some(timeout))
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
    C: RaftTypeConfig<NodeId = NodeId, Entry = openraft::Entry<C>>,
    C::D: BulkPayload,
{
    /// Sends the entries that fit the budget, and what the other groups' calls to the same
    /// peer leave of its share (the first entry whatever its size). When some are left out,
    /// a success answers `PartialSuccess` with the last one sent, and openraft sends the rest
    /// next: without a round trip lost to a refusal, and with every call as full as the
    /// budget allows.
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, C::Node, RaftError<NodeId>>> {
        if self.awaiting_answer {
            self.budget.unanswered();
        }
        let config = self.transport.config();
        let peer_room = config
            .append_entries_peer_bytes_max
            .saturating_sub(self.peer_in_flight.load(Ordering::Acquire));
        let allowed = self
            .budget
            .bytes()
            .min(peer_room.max(config.append_entries_bytes_min));
        let (keep, bytes) = entries_within_budget(&rpc.entries, allowed);
        let _out = PeerBytesOut::new(&self.peer_in_flight, bytes);
        let partial = (keep < rpc.entries.len()).then(|| {
            rpc.entries.truncate(keep);
            rpc.entries.last().map(|entry| entry.log_id)
        });
        self.last_entries = rpc.entries.len() as u64;
        let mut sent = 0;
        let encode = |rpc, limit| {
            let parts = encode_append_entries(rpc, limit)?;
            sent = parts.iter().map(Bytes::len).sum();
            Ok(parts)
        };
        self.awaiting_answer = true;
        let started = Instant::now();
        let result = self
            .send(
                RpcKind::AppendEntries,
                RPCTypes::AppendEntries,
                rpc,
                encode,
                &option,
            )
            .await;
        self.awaiting_answer = false;
        let elapsed = started.elapsed();
        match &result {
            Ok(_) | Err(RPCError::RemoteError(_)) => {
                self.budget.answered(sent, elapsed, option.hard_ttl())
            }
            Err(RPCError::Timeout(_)) => self.budget.unanswered(),
            Err(_) => {}
        }
        tracing::debug!(
            group = ?self.group,
            target = self.target,
            entries = self.last_entries,
            left_out = partial.is_some(),
            sent,
            elapsed_us = elapsed.as_micros() as u64,
            budget = self.budget.bytes(),
            "AppendEntries answered"
        );
        match (result, partial) {
            (Ok(AppendEntriesResponse::Success), Some(last_sent)) => {
                Ok(AppendEntriesResponse::PartialSuccess(last_sent))
            }
            (result, _) => result,
        }
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
            rpc,
            encode_whole,
            &option,
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, C::Node, RaftError<NodeId>>> {
        self.send(RpcKind::Vote, RPCTypes::Vote, rpc, encode_whole, &option)
            .await
    }
}

/// A request as one body part.
fn encode_whole<Req: Serialize>(request: Req, limit: usize) -> Result<Vec<Bytes>, FrameError> {
    Ok(vec![encode_body(&request, limit)?])
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
    C: RaftTypeConfig<NodeId = NodeId, Entry = openraft::Entry<C>>,
    C::D: BulkPayload,
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
                    let request: AppendEntriesRequest<C> = decode_append_entries(&body, limit)
                        .map_err(|e| RemoteFailure::BadRequest(e.to_string()))?;
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use openraft::{CommittedLeaderId, Entry, LogId, Membership, Vote};

    use super::*;
    use crate::metadata::{MetadataCommand, MetadataRaft};
    use crate::partition::{PartitionEntry, PartitionRaft};

    const LIMIT: usize = 1 << 20;

    const MIB: usize = 1024 * 1024;
    const DEADLINE: Duration = Duration::from_millis(100);

    #[test]
    fn the_budget_grows_after_quick_full_answers_up_to_its_max() {
        let mut budget = AppendEntriesBudget::new(MIB / 4, 8 * MIB);
        assert_eq!(budget.bytes(), 2 * MIB);
        budget.answered(2 * MIB, Duration::from_millis(10), DEADLINE);
        assert_eq!(budget.bytes(), 2 * MIB + MIB / 2);
        for _ in 0..20 {
            budget.answered(budget.bytes(), Duration::from_millis(10), DEADLINE);
        }
        assert_eq!(budget.bytes(), 8 * MIB);
    }

    #[test]
    fn heartbeats_and_middling_answers_leave_the_budget_alone() {
        let mut budget = AppendEntriesBudget::new(MIB / 4, 8 * MIB);
        // A heartbeat: quick, but it used nothing of the budget.
        budget.answered(100, Duration::from_millis(1), DEADLINE);
        // A full call answered between a quarter and half of the deadline.
        budget.answered(2 * MIB, Duration::from_millis(40), DEADLINE);
        assert_eq!(budget.bytes(), 2 * MIB);
    }

    #[test]
    fn the_budget_shrinks_after_slow_or_missing_answers_down_to_its_min() {
        let mut budget = AppendEntriesBudget::new(MIB / 4, 8 * MIB);
        budget.answered(2 * MIB, Duration::from_millis(60), DEADLINE);
        assert_eq!(budget.bytes(), 3 * MIB / 2);
        budget.unanswered();
        assert_eq!(budget.bytes(), 3 * MIB / 4);
        for _ in 0..10 {
            budget.unanswered();
        }
        assert_eq!(budget.bytes(), MIB / 4);
        // Bounds given the wrong way round still leave a usable budget.
        assert_eq!(AppendEntriesBudget::new(MIB, MIB / 2).bytes(), MIB);
    }

    fn id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(3, 1), index)
    }

    fn request(payloads: Vec<EntryPayload<PartitionRaft>>) -> AppendEntriesRequest<PartitionRaft> {
        AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(id(9)),
            leader_commit: Some(id(8)),
            entries: payloads
                .into_iter()
                .zip(10..)
                .map(|(payload, index)| Entry {
                    log_id: id(index),
                    payload,
                })
                .collect(),
        }
    }

    fn normal(bytes: &[u8]) -> EntryPayload<PartitionRaft> {
        EntryPayload::Normal(PartitionEntry::unchecked(Bytes::copy_from_slice(bytes)))
    }

    /// An AppendEntries of the metadata group, with one command.
    fn metadata_request() -> AppendEntriesRequest<MetadataRaft> {
        AppendEntriesRequest {
            vote: Vote::new_committed(2, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: vec![Entry {
                log_id: id(1),
                payload: EntryPayload::Normal(MetadataCommand::DeleteTopic { name: "t".into() }),
            }],
        }
    }

    /// What the receiver gets: the parts one after another, in one buffer.
    fn received(parts: &[Bytes]) -> Bytes {
        Bytes::from(parts.concat())
    }

    #[test]
    fn a_call_takes_the_entries_that_fit_its_budget_and_one_at_least() {
        let entries = request(vec![
            normal(&[1; 1000]),
            EntryPayload::Blank,
            normal(&[2; 1000]),
            normal(&[3; 1000]),
        ])
        .entries;
        let per_entry = 1000 + ENTRY_OVERHEAD_BYTES;
        let all = 3 * per_entry + ENTRY_OVERHEAD_BYTES;
        assert_eq!(entries_within_budget(&entries, 10 * per_entry), (4, all));
        // The blank entry counts its overhead only.
        assert_eq!(
            entries_within_budget(&entries, 2 * per_entry),
            (2, per_entry + ENTRY_OVERHEAD_BYTES)
        );
        assert_eq!(
            entries_within_budget(&entries, 2 * per_entry + ENTRY_OVERHEAD_BYTES),
            (3, 2 * per_entry + ENTRY_OVERHEAD_BYTES)
        );
        // The first goes whatever its size.
        assert_eq!(entries_within_budget(&entries, 10), (1, per_entry));
        assert_eq!(entries_within_budget::<PartitionRaft>(&[], 10), (0, 0));
    }

    /// A peer that answers every AppendEntries with success and keeps how many entries each
    /// one carried.
    struct CountingFollower {
        received: Arc<parking_lot::Mutex<Vec<usize>>>,
        /// When set, each call waits for a permit before it is answered.
        gate: Option<Arc<tokio::sync::Semaphore>>,
    }

    impl GroupDispatcher for CountingFollower {
        fn dispatch(
            &self,
            _kind: RpcKind,
            body: Bytes,
        ) -> BoxFuture<'static, Result<Bytes, RemoteFailure>> {
            let received = Arc::clone(&self.received);
            let gate = self.gate.clone();
            Box::pin(async move {
                if let Some(gate) = gate {
                    gate.acquire()
                        .await
                        .map_err(|e| RemoteFailure::BadResponse(e.to_string()))?
                        .forget();
                }
                let request: AppendEntriesRequest<PartitionRaft> =
                    decode_append_entries(&body, LIMIT)
                        .map_err(|e| RemoteFailure::BadRequest(e.to_string()))?;
                received.lock().push(request.entries.len());
                let answer: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
                    Ok(AppendEntriesResponse::Success);
                encode_response(&answer, LIMIT)
            })
        }
    }

    async fn transport(node_id: NodeId, budget: usize) -> Transport {
        transport_with(node_id, budget, budget, usize::MAX).await
    }

    async fn transport_with(node_id: NodeId, min: usize, max: usize, peer: usize) -> Transport {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = crate::transport::TransportConfig::new(node_id);
        config.append_entries_bytes_min = min;
        config.append_entries_bytes_max = max;
        config.append_entries_peer_bytes_max = peer;
        Transport::start(config, listener, &[]).unwrap()
    }

    async fn connect(leader: &Transport, follower: &Transport) {
        leader.add_peer(2, follower.local_addr());
        follower.add_peer(1, leader.local_addr());
        for _ in 0..500 {
            if leader.is_connected(2) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never connected");
    }

    fn group(n: u128) -> GroupId {
        GroupId::Partition {
            topic_id: uuid::Uuid::from_u128(n),
            partition: 0,
        }
    }

    #[tokio::test]
    async fn a_call_takes_only_what_the_other_groups_calls_to_the_peer_leave() {
        let per_entry = 1000 + ENTRY_OVERHEAD_BYTES;
        // Each group's budget starts at 2.5 entries; 3 entries to the peer at once in all.
        let leader = transport_with(1, per_entry, 10 * per_entry, 3 * per_entry).await;
        let follower = transport(2, MIB).await;
        connect(&leader, &follower).await;
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let received = Arc::new(parking_lot::Mutex::new(Vec::new()));
        for (n, gate) in [(1, Some(Arc::clone(&gate))), (2, None)] {
            follower.register_dispatcher(
                group(n),
                Arc::new(CountingFollower {
                    received: Arc::clone(&received),
                    gate,
                }),
            );
        }
        let node = crate::NodeAddress::default();
        let mut held = leader
            .network::<PartitionRaft>(group(1))
            .new_client(2, &node)
            .await;
        let mut other = leader
            .network::<PartitionRaft>(group(2))
            .new_client(2, &node)
            .await;
        let option = RPCOption::new(Duration::from_secs(5));
        let four = || {
            request(vec![
                normal(&[1; 1000]),
                normal(&[2; 1000]),
                normal(&[3; 1000]),
                normal(&[4; 1000]),
            ])
        };
        // Group 1's call (two entries, its budget) waits at the peer.
        let held_call = {
            let option = option.clone();
            let request = four();
            tokio::spawn(async move { held.append_entries(request, option).await })
        };
        while leader.append_entries_in_flight(2).load(Ordering::Acquire) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Group 2 gets what is left of the peer's share: one entry.
        let answer = other.append_entries(four(), option.clone()).await.unwrap();
        assert_eq!(answer, AppendEntriesResponse::PartialSuccess(Some(id(10))));
        gate.add_permits(1);
        let answer = held_call.await.unwrap().unwrap();
        assert_eq!(answer, AppendEntriesResponse::PartialSuccess(Some(id(11))));
        assert_eq!(
            leader.append_entries_in_flight(2).load(Ordering::Acquire),
            0
        );
        // With nothing else out, group 2 gets its whole budget again.
        let answer = other.append_entries(four(), option).await.unwrap();
        assert_eq!(answer, AppendEntriesResponse::PartialSuccess(Some(id(11))));
        assert_eq!(*received.lock(), vec![1, 2, 2]);
    }

    #[tokio::test]
    async fn entries_over_the_budget_wait_for_the_next_call_and_the_answer_says_how_far_it_got() {
        let per_entry = 1000 + ENTRY_OVERHEAD_BYTES;
        let leader = transport(1, 2 * per_entry + per_entry / 2).await;
        let follower = transport(2, MIB).await;
        connect(&leader, &follower).await;
        let received = Arc::new(parking_lot::Mutex::new(Vec::new()));
        follower.register_dispatcher(
            group(7),
            Arc::new(CountingFollower {
                received: Arc::clone(&received),
                gate: None,
            }),
        );
        let mut network = leader
            .network::<PartitionRaft>(group(7))
            .new_client(2, &crate::NodeAddress::default())
            .await;
        let option = RPCOption::new(Duration::from_secs(5));
        let four = request(vec![
            normal(&[1; 1000]),
            normal(&[2; 1000]),
            normal(&[3; 1000]),
            normal(&[4; 1000]),
        ]);
        let answer = network.append_entries(four, option.clone()).await.unwrap();
        // Two fit: the answer names the last one sent (indexes start at 10).
        assert_eq!(answer, AppendEntriesResponse::PartialSuccess(Some(id(11))));
        let two = request(vec![normal(&[3; 1000]), normal(&[4; 1000])]);
        let answer = network.append_entries(two, option.clone()).await.unwrap();
        assert_eq!(answer, AppendEntriesResponse::Success);
        // One entry larger than the budget still goes, alone and whole.
        let large = request(vec![normal(&[5; 4000]), normal(&[6; 10])]);
        let answer = network.append_entries(large, option).await.unwrap();
        assert_eq!(answer, AppendEntriesResponse::PartialSuccess(Some(id(10))));
        assert_eq!(*received.lock(), vec![2, 2, 1]);
    }

    #[test]
    fn append_entries_round_trip_with_their_batches_raw_and_not_copied() {
        let membership = Membership::new(vec![BTreeSet::from([1, 2, 3])], None);
        let sent = request(vec![
            normal(&[1; 300]),
            EntryPayload::Blank,
            normal(&[2; 40]),
            EntryPayload::Membership(membership),
            normal(&[3; 5]),
        ]);
        let batches: Vec<Bytes> = sent
            .entries
            .iter()
            .filter_map(|entry| match &entry.payload {
                EntryPayload::Normal(data) => Some(data.batch.clone()),
                _ => None,
            })
            .collect();
        let parts = encode_append_entries(sent.clone(), LIMIT).unwrap();
        // The head, then each batch as its own part: the very buffers the entries held.
        assert_eq!(parts.len(), 4);
        for (part, batch) in parts[1..].iter().zip(&batches) {
            assert_eq!(part.as_ptr(), batch.as_ptr());
        }
        assert!(
            parts[0].len() < 200,
            "the head holds no batch: {}",
            parts[0].len()
        );
        let body = received(&parts);
        let decoded: AppendEntriesRequest<PartitionRaft> =
            decode_append_entries(&body, LIMIT).unwrap();
        assert_eq!(format!("{decoded:?}"), format!("{sent:?}"));
        // The receiver's batches are slices of the frame, not copies.
        let EntryPayload::Normal(first) = &decoded.entries[0].payload else {
            panic!("not a normal entry");
        };
        let body_range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
        assert!(body_range.contains(&(first.batch.as_ptr() as usize)));
    }

    #[test]
    fn heartbeats_and_metadata_entries_travel_whole() {
        let heartbeat = request(Vec::new());
        let parts = encode_append_entries(heartbeat.clone(), LIMIT).unwrap();
        assert_eq!(parts.len(), 1);
        let decoded: AppendEntriesRequest<PartitionRaft> =
            decode_append_entries(&received(&parts), LIMIT).unwrap();
        assert_eq!(format!("{decoded:?}"), format!("{heartbeat:?}"));

        let metadata = metadata_request();
        let parts = encode_append_entries(metadata.clone(), LIMIT).unwrap();
        assert_eq!(parts.len(), 1);
        let decoded: AppendEntriesRequest<MetadataRaft> =
            decode_append_entries(&received(&parts), LIMIT).unwrap();
        assert_eq!(format!("{decoded:?}"), format!("{metadata:?}"));
    }

    /// A head claiming `spans` for `rpc`, followed by `raw`.
    fn forged(
        rpc: &AppendEntriesRequest<PartitionRaft>,
        spans: Vec<BulkSpan>,
        raw: &[u8],
    ) -> Bytes {
        let mut body = encode_body(&(rpc, &spans), LIMIT).unwrap().to_vec();
        body.extend_from_slice(raw);
        Bytes::from(body)
    }

    #[test]
    fn malformed_bulk_spans_are_refused() {
        let bodiless = request(vec![
            EntryPayload::Normal(PartitionEntry::unchecked(Bytes::new())),
            EntryPayload::Blank,
        ]);
        let cases = [
            // Past the end of the frame.
            forged(&bodiless, vec![BulkSpan { entry: 0, len: 10 }], &[0; 4]),
            // Into a blank entry, and into an entry that does not exist.
            forged(&bodiless, vec![BulkSpan { entry: 1, len: 4 }], &[0; 4]),
            forged(&bodiless, vec![BulkSpan { entry: 7, len: 4 }], &[0; 4]),
            // Twice into the same entry.
            forged(
                &bodiless,
                vec![BulkSpan { entry: 0, len: 2 }, BulkSpan { entry: 0, len: 2 }],
                &[0; 4],
            ),
            // Bytes no span claims.
            forged(&bodiless, vec![BulkSpan { entry: 0, len: 2 }], &[0; 4]),
        ];
        for body in cases {
            assert!(decode_append_entries::<PartitionRaft>(&body, LIMIT).is_err());
        }
        assert!(decode_append_entries::<PartitionRaft>(
            &forged(&bodiless, vec![BulkSpan { entry: 0, len: 4 }], &[0; 4]),
            LIMIT
        )
        .is_ok());
        // Metadata commands never take bulk bytes.
        let metadata = metadata_request();
        let mut body = encode_body(&(&metadata, vec![BulkSpan { entry: 0, len: 1 }]), LIMIT)
            .unwrap()
            .to_vec();
        body.push(0);
        assert!(decode_append_entries::<MetadataRaft>(&Bytes::from(body), LIMIT).is_err());
    }
}
