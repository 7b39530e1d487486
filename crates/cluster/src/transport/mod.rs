//! Node-to-node transport: **one TCP connection per node pair** carries the Raft RPCs of every
//! group, each request tagged with its [`GroupId`].
//!
//! - The node with the lower id dials, the other accepts; both send requests and responses on
//!   that one connection. The dialer's first frame is `Hello { node_id }`.
//! - Each peer has one bounded outbound queue of encoded frames. The connection's writer drains
//!   whatever is queued into one buffer and writes it at once (**write coalescing**): the
//!   heartbeats of a thousand partitions between two nodes leave in a handful of syscalls.
//! - Requests carry ids; responses are matched to their callers through a pending map; each call
//!   has a timeout (openraft's `RPCOption` TTL, or the configured default).
//! - Memory is bounded under overload: a peer's queue holds at most `queue_bytes_max` bytes
//!   (beyond that a call fails as unreachable, and openraft backs off); a request whose caller
//!   has given up (openraft drops an AppendEntries after one heartbeat interval and sends it
//!   again) is not written at all; and each connection runs at most `incoming_bytes_max` bytes
//!   of requests at once, after which it stops reading and TCP pushes back on the sender.
//! - The dialer reconnects with exponential backoff. While a peer is disconnected, calls fail at
//!   once as unreachable, and openraft backs off.
//! - A bad frame (oversized, undecodable) closes the connection; a request for a group this node
//!   does not host, or with an undecodable body, is answered with a [`RemoteFailure`].
//! - A node that is not a peer yet (one joining the cluster) cannot say Hello: it opens a
//!   one-shot connection whose first frame is an open request ([`RpcKind::is_open`]), gets one
//!   response and closes it ([`call_once`]).

pub mod frame;
mod network;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::StreamExt;
use parking_lot::{Mutex, RwLock};
use rustls_pki_types::CertificateDer;
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot, Semaphore};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

pub use frame::{EncodedFrame, RemoteFailure, RpcKind, WireMessage};
pub use network::{BulkPayload, GroupNetwork, GroupNetworkFactory, RaftDispatcher};

use crate::{GroupId, NodeId};

/// Serves the requests addressed to one group on this node. Object safe, so groups of any
/// type config live in one table; the body is the group's own encoding.
pub trait GroupDispatcher: Send + Sync + 'static {
    fn dispatch(
        &self,
        kind: RpcKind,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, RemoteFailure>>;
}

/// Mutual TLS between nodes: every connection, dialed or accepted, is TLS, and each side
/// presents a certificate the other verifies against the cluster's CA (a dialer also checks
/// the listener's certificate names the address it dialed). Functions, so that renewed
/// certificate files are picked up for the next connection.
#[derive(Clone)]
pub struct TransportTls {
    pub acceptor: Arc<dyn Fn() -> tokio_rustls::TlsAcceptor + Send + Sync>,
    pub connector: Arc<dyn Fn() -> tokio_rustls::TlsConnector + Send + Sync>,
}

impl std::fmt::Debug for TransportTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TransportTls")
    }
}

/// One direction of a connection, plain TCP or TLS.
type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// The halves of an accepted connection, after the TLS handshake when there is TLS, with
/// the certificate the peer presented.
async fn secure_accepted(
    tls: Option<&TransportTls>,
    stream: TcpStream,
    handshake_timeout: Duration,
) -> std::io::Result<(ReadHalf, WriteHalf, Option<CertificateDer<'static>>)> {
    let _ = stream.set_nodelay(true);
    match tls {
        None => {
            let (read, write) = stream.into_split();
            Ok((Box::new(read), Box::new(write), None))
        }
        Some(tls) => {
            let accepted = tokio::time::timeout(handshake_timeout, (tls.acceptor)().accept(stream))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??;
            let certificate = accepted
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|certificate| certificate.clone().into_owned());
            let (read, write) = tokio::io::split(accepted);
            Ok((Box::new(read), Box::new(write), certificate))
        }
    }
}

/// Whether a peer's certificate names `addr`'s IP: a node may only speak as the node whose
/// address its certificate carries (as a dialer only accepts the listener it meant to reach).
fn certificate_names(certificate: &CertificateDer<'_>, addr: SocketAddr) -> bool {
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    webpki::EndEntityCert::try_from(certificate)
        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
}

/// Connects to `addr`, with TLS when there is TLS (the certificate must name `addr`'s IP).
async fn secure_dial(
    tls: Option<&TransportTls>,
    addr: SocketAddr,
    connect_timeout: Duration,
) -> std::io::Result<(ReadHalf, WriteHalf)> {
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
    let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out())??;
    stream.set_nodelay(true)?;
    match tls {
        None => {
            let (read, write) = stream.into_split();
            Ok((Box::new(read), Box::new(write)))
        }
        Some(tls) => {
            let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
            let connected =
                tokio::time::timeout(connect_timeout, (tls.connector)().connect(name, stream))
                    .await
                    .map_err(|_| timed_out())??;
            let (read, write) = tokio::io::split(connected);
            Ok((Box::new(read), Box::new(write)))
        }
    }
}

#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub node_id: NodeId,
    /// Largest frame accepted or sent (snapshot chunks must fit).
    pub frame_bytes_max: usize,
    /// Timeout of calls that bring none of their own.
    pub request_timeout: Duration,
    /// Frames waiting for the writer, per peer; a full queue fails the call as unreachable.
    pub queue_frames_max: usize,
    /// Bytes waiting for the writer, per peer; a request that would go beyond fails as
    /// unreachable (a frame larger than this still goes when the queue is empty).
    pub queue_bytes_max: usize,
    /// Bytes of a connection's requests being served at once; beyond, reading pauses.
    pub incoming_bytes_max: usize,
    /// The bytes an AppendEntries to one peer may carry (the entries beyond wait for the next
    /// call; one entry goes whatever its size) move between these bounds with the round trips
    /// measured, so that it is answered within openraft's one-heartbeat deadline (see
    /// `network::AppendEntriesBudget`). A partition's replication reads at most
    /// [`crate::partition::REPLICATION_BYTES_MAX`] per call: a larger max adds nothing.
    pub append_entries_bytes_min: usize,
    pub append_entries_bytes_max: usize,
    /// AppendEntries bytes out to one peer at once, all groups together: each group's call
    /// takes what is left (`append_entries_bytes_min` at least, one entry at least), so many
    /// busy partitions do not queue more on one connection than it delivers within the
    /// deadline.
    pub append_entries_peer_bytes_max: usize,
    /// Bytes gathered into one write at most.
    pub write_batch_bytes_max: usize,
    /// Off only to measure what coalescing saves: one write per frame.
    pub coalesce_writes: bool,
    pub reconnect_backoff_min: Duration,
    pub reconnect_backoff_max: Duration,
    /// How long an accepted connection may take to say who it is.
    pub hello_timeout: Duration,
    /// None: plain TCP (a cluster on one trusted network, or loopback).
    pub tls: Option<TransportTls>,
}

impl TransportConfig {
    pub fn new(node_id: NodeId) -> Self {
        Self {
            node_id,
            frame_bytes_max: 16 * 1024 * 1024,
            request_timeout: Duration::from_secs(2),
            queue_frames_max: 64 * 1024,
            queue_bytes_max: 64 * 1024 * 1024,
            incoming_bytes_max: 64 * 1024 * 1024,
            append_entries_bytes_min: 256 * 1024,
            append_entries_bytes_max: crate::partition::REPLICATION_BYTES_MAX,
            append_entries_peer_bytes_max: 2 * crate::partition::REPLICATION_BYTES_MAX,
            write_batch_bytes_max: 1024 * 1024,
            coalesce_writes: true,
            reconnect_backoff_min: Duration::from_millis(20),
            reconnect_backoff_max: Duration::from_millis(500),
            hello_timeout: Duration::from_secs(5),
            tls: None,
        }
    }
}

/// A peer connection came up or went down (see [`Transport::link_events`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEvent {
    Up(NodeId),
    Down(NodeId),
}

/// Counters of what the transport did, for tests and measurements.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TransportStats {
    pub frames_sent: u64,
    /// `write` syscalls on peer sockets.
    pub writes: u64,
    pub bytes_sent: u64,
    pub frames_received: u64,
    /// Connections closed because of a bad frame or handshake.
    pub bad_connections: u64,
}

#[derive(Default)]
struct StatCounters {
    frames_sent: AtomicU64,
    writes: AtomicU64,
    bytes_sent: AtomicU64,
    frames_received: AtomicU64,
    bad_connections: AtomicU64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("node {0} is not a known peer")]
    UnknownPeer(NodeId),
    #[error("node {0} is unreachable")]
    Unreachable(NodeId),
    #[error("no response from node {target} within {timeout:?}")]
    Timeout { target: NodeId, timeout: Duration },
    #[error("node {target} refused the request: {failure}")]
    Remote {
        target: NodeId,
        failure: RemoteFailure,
    },
    #[error("could not encode or decode: {0}")]
    Codec(String),
    #[error("cannot reach {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    /// The request does not fit in a frame (Raft should send fewer entries).
    #[error("request of {size} bytes exceeds the {limit}-byte frame limit")]
    TooLarge { size: usize, limit: usize },
}

fn encode_error(error: frame::FrameError) -> CallError {
    match error {
        frame::FrameError::TooLarge { size, limit } => CallError::TooLarge { size, limit },
        other => CallError::Codec(other.to_string()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read the listener's address: {0}")]
    LocalAddr(std::io::Error),
}

type PendingReply = oneshot::Sender<Result<Bytes, RemoteFailure>>;
type FrameReader = FramedRead<ReadHalf, LengthDelimitedCodec>;

/// An encoded frame in a peer's queue; a request's id lets the writer skip it once its caller
/// has given up.
struct QueuedFrame {
    frame: EncodedFrame,
    request_id: Option<u64>,
}

struct PeerLink {
    peer_id: NodeId,
    addr: SocketAddr,
    queue_tx: mpsc::Sender<QueuedFrame>,
    /// Bytes in `queue_tx` not yet taken by the writer.
    queued_bytes: AtomicUsize,
    pending: Mutex<HashMap<u64, PendingReply>>,
    next_request_id: AtomicU64,
    connected: AtomicBool,
    /// Connections the peer dialed, handed over by the accept loop.
    incoming_tx: mpsc::Sender<(FrameReader, WriteHalf)>,
    /// Ends this link's task and connection: the peer was removed or replaced, or the
    /// transport shuts down (a child of its token).
    stop: CancellationToken,
}

struct TransportInner {
    config: TransportConfig,
    local_addr: SocketAddr,
    peers: RwLock<HashMap<NodeId, Arc<PeerLink>>>,
    groups: RwLock<HashMap<GroupId, Arc<dyn GroupDispatcher>>>,
    stats: StatCounters,
    link_events: broadcast::Sender<LinkEvent>,
    /// AppendEntries bytes out to each peer now, all groups together.
    append_entries_in_flight: Mutex<HashMap<NodeId, Arc<AtomicUsize>>>,
    shutdown: CancellationToken,
    /// Ends (dropping the listener) after `shutdown` fires.
    accept_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The node's end of every peer connection. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<TransportInner>,
}

impl Transport {
    /// Binds `listen` and starts serving `peers` (more with [`Transport::add_peer`]).
    pub async fn bind(
        config: TransportConfig,
        listen: SocketAddr,
        peers: &[(NodeId, SocketAddr)],
    ) -> Result<Self, TransportError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| TransportError::Bind {
                addr: listen,
                source,
            })?;
        Self::start(config, listener, peers)
    }

    /// Starts serving on an already bound listener (tests bind port 0 first to learn it).
    /// `peers` are known before the first connection is accepted, so a peer that dials early
    /// is not turned away.
    pub fn start(
        config: TransportConfig,
        listener: TcpListener,
        peers: &[(NodeId, SocketAddr)],
    ) -> Result<Self, TransportError> {
        let local_addr = listener.local_addr().map_err(TransportError::LocalAddr)?;
        let inner = Arc::new(TransportInner {
            config,
            local_addr,
            peers: RwLock::new(HashMap::new()),
            groups: RwLock::new(HashMap::new()),
            stats: StatCounters::default(),
            link_events: broadcast::Sender::new(256),
            shutdown: CancellationToken::new(),
            accept_task: Mutex::new(None),
            append_entries_in_flight: Mutex::new(HashMap::new()),
        });
        let transport = Self { inner };
        for &(peer_id, addr) in peers {
            transport.add_peer(peer_id, addr);
        }
        let accept_task = tokio::spawn(accept_loop(transport.inner.clone(), listener));
        *transport.inner.accept_task.lock() = Some(accept_task);
        Ok(transport)
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.config.node_id
    }

    /// The count of AppendEntries bytes out to `peer` now, shared by every group's client.
    pub(crate) fn append_entries_in_flight(&self, peer: NodeId) -> Arc<AtomicUsize> {
        Arc::clone(
            self.inner
                .append_entries_in_flight
                .lock()
                .entry(peer)
                .or_default(),
        )
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    pub fn config(&self) -> &TransportConfig {
        &self.inner.config
    }

    /// Adds a peer (idempotent for the same address); the lower id of the pair dials.
    pub fn add_peer(&self, peer_id: NodeId, addr: SocketAddr) {
        if peer_id == self.inner.config.node_id {
            return;
        }
        let mut peers = self.inner.peers.write();
        if peers.get(&peer_id).is_some_and(|p| p.addr == addr) {
            return;
        }
        let (queue_tx, queue_rx) = mpsc::channel(self.inner.config.queue_frames_max);
        let (incoming_tx, incoming_rx) = mpsc::channel(4);
        let link = Arc::new(PeerLink {
            peer_id,
            addr,
            queue_tx,
            queued_bytes: AtomicUsize::new(0),
            pending: Mutex::new(HashMap::new()),
            next_request_id: AtomicU64::new(1),
            connected: AtomicBool::new(false),
            incoming_tx,
            stop: self.inner.shutdown.child_token(),
        });
        if let Some(replaced) = peers.insert(peer_id, link.clone()) {
            replaced.stop.cancel();
        }
        tokio::spawn(peer_loop(self.inner.clone(), link, queue_rx, incoming_rx));
    }

    /// Every later connection and disconnection of a peer. A peer's process that dies has its
    /// connections closed by its kernel, so `Down` comes within a round trip of a crash.
    pub fn link_events(&self) -> broadcast::Receiver<LinkEvent> {
        self.inner.link_events.subscribe()
    }

    /// Forgets a peer: its connection closes, it is no longer dialled, and its Hello is
    /// refused from now on. False if it was not a peer.
    pub fn remove_peer(&self, peer_id: NodeId) -> bool {
        let removed = self.inner.peers.write().remove(&peer_id);
        match removed {
            Some(link) => {
                link.stop.cancel();
                true
            }
            None => false,
        }
    }

    /// The peers this transport serves (dials or accepts), sorted by id.
    pub fn peers(&self) -> Vec<(NodeId, SocketAddr)> {
        let mut peers: Vec<_> = self
            .inner
            .peers
            .read()
            .values()
            .map(|link| (link.peer_id, link.addr))
            .collect();
        peers.sort_unstable();
        peers
    }

    pub fn is_connected(&self, peer_id: NodeId) -> bool {
        self.inner
            .peers
            .read()
            .get(&peer_id)
            .is_some_and(|p| p.connected.load(Ordering::Acquire))
    }

    /// Routes requests for `group` to `dispatcher`, replacing any earlier one.
    pub fn register_dispatcher(&self, group: GroupId, dispatcher: Arc<dyn GroupDispatcher>) {
        self.inner.groups.write().insert(group, dispatcher);
    }

    pub fn unregister_group(&self, group: GroupId) {
        self.inner.groups.write().remove(&group);
    }

    pub fn stats(&self) -> TransportStats {
        let s = &self.inner.stats;
        TransportStats {
            frames_sent: s.frames_sent.load(Ordering::Relaxed),
            writes: s.writes.load(Ordering::Relaxed),
            bytes_sent: s.bytes_sent.load(Ordering::Relaxed),
            frames_received: s.frames_received.load(Ordering::Relaxed),
            bad_connections: s.bad_connections.load(Ordering::Relaxed),
        }
    }

    /// Closes every connection (pending calls fail) and the listener; once this returns the
    /// listen address can be bound again.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        let accept_task = self.inner.accept_task.lock().take();
        if let Some(accept_task) = accept_task {
            let _ = accept_task.await;
        }
    }

    /// Sends one request and waits for its response body.
    pub async fn call(
        &self,
        target: NodeId,
        group: GroupId,
        kind: RpcKind,
        body: Bytes,
        timeout: Option<Duration>,
    ) -> Result<Bytes, CallError> {
        self.call_with_parts(target, group, kind, vec![body], timeout)
            .await
    }

    /// [`Transport::call`] with a body sent as `parts`, one after another (the receiver sees
    /// one body); the parts are written as they are, not copied into one buffer.
    pub async fn call_with_parts(
        &self,
        target: NodeId,
        group: GroupId,
        kind: RpcKind,
        body: Vec<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<Bytes, CallError> {
        let link = self
            .inner
            .peers
            .read()
            .get(&target)
            .cloned()
            .ok_or(CallError::UnknownPeer(target))?;
        if !link.connected.load(Ordering::Acquire) || self.inner.shutdown.is_cancelled() {
            return Err(CallError::Unreachable(target));
        }
        let request_id = link.next_request_id.fetch_add(1, Ordering::Relaxed);
        let frame = frame::encode_request(
            request_id,
            group,
            kind,
            body,
            self.inner.config.frame_bytes_max,
        )
        .map_err(encode_error)?;
        let size = frame.len();
        let queued = link.queued_bytes.fetch_add(size, Ordering::AcqRel);
        if queued > 0 && queued + size > self.inner.config.queue_bytes_max {
            link.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            tracing::debug!(peer = target, queued, "cluster transport: queue full");
            return Err(CallError::Unreachable(target));
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        link.pending.lock().insert(request_id, reply_tx);
        // Forgets the call however it ends, also when the caller drops this future (openraft
        // times AppendEntries out itself): the writer then skips the frame if still queued.
        let _pending = PendingGuard {
            link: &link,
            request_id,
        };
        let queued = QueuedFrame {
            frame,
            request_id: Some(request_id),
        };
        if link.queue_tx.try_send(queued).is_err() {
            link.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            return Err(CallError::Unreachable(target));
        }
        let timeout = timeout.unwrap_or(self.inner.config.request_timeout);
        match tokio::time::timeout(timeout, reply_rx).await {
            Ok(Ok(Ok(body))) => Ok(body),
            Ok(Ok(Err(failure))) => Err(CallError::Remote { target, failure }),
            // The connection dropped and its pending calls were failed.
            Ok(Err(_)) => Err(CallError::Unreachable(target)),
            Err(_) => Err(CallError::Timeout { target, timeout }),
        }
    }

    /// [`Transport::call`] with serde request and response bodies.
    pub async fn request<Req, Resp>(
        &self,
        target: NodeId,
        group: GroupId,
        kind: RpcKind,
        request: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp, CallError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let limit = self.inner.config.frame_bytes_max;
        let body = frame::encode_body(request, limit).map_err(encode_error)?;
        let response = self.call(target, group, kind, body, timeout).await?;
        frame::decode_body(&response, limit).map_err(|e| CallError::Codec(e.to_string()))
    }
}

struct PendingGuard<'a> {
    link: &'a PeerLink,
    request_id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.link.pending.lock().remove(&self.request_id);
    }
}

async fn accept_loop(inner: Arc<TransportInner>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, remote)) => {
                tokio::spawn(handshake(inner.clone(), stream, remote));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster transport: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reads the dialer's Hello and hands the connection to that peer's link.
async fn handshake(inner: Arc<TransportInner>, stream: TcpStream, remote: SocketAddr) {
    let (read, write, certificate) = match secure_accepted(
        inner.config.tls.as_ref(),
        stream,
        inner.config.hello_timeout,
    )
    .await
    {
        Ok(halves) => halves,
        Err(error) => {
            tracing::warn!(%remote, %error, "cluster transport: TLS handshake failed");
            inner.stats.bad_connections.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let mut reader = FramedRead::new(read, frame::codec(inner.config.frame_bytes_max));
    let first = tokio::time::timeout(inner.config.hello_timeout, reader.next()).await;
    let peer_id = match first {
        Ok(Some(Ok(payload))) => {
            match frame::decode_message(payload.freeze(), inner.config.frame_bytes_max) {
                Ok(WireMessage::Hello { node_id }) => node_id,
                Ok(WireMessage::Request {
                    request_id,
                    group,
                    kind,
                    body,
                }) if kind.is_open() => {
                    serve_once(&inner, write, request_id, group, kind, body).await;
                    return;
                }
                Ok(other) => {
                    tracing::warn!(%remote, ?other, "cluster transport: first frame is not a hello");
                    inner.stats.bad_connections.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    tracing::warn!(%remote, error = %e, "cluster transport: bad hello");
                    inner.stats.bad_connections.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        Ok(Some(Err(e))) => {
            tracing::warn!(%remote, error = %e, "cluster transport: bad frame in handshake");
            inner.stats.bad_connections.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Ok(None) | Err(_) => return,
    };
    let link = inner.peers.read().get(&peer_id).cloned();
    if let (Some(certificate), Some(link)) = (&certificate, &link) {
        if !certificate_names(certificate, link.addr) {
            tracing::warn!(%remote, peer_id, peer_addr = %link.addr, "cluster transport: the peer's certificate does not name the address of the node it claims to be");
            inner.stats.bad_connections.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    match link {
        Some(link) if peer_id < inner.config.node_id => {
            let _ = link.incoming_tx.send((reader, write)).await;
        }
        _ => {
            tracing::warn!(%remote, peer_id, "cluster transport: hello from a node that should not dial us");
            inner.stats.bad_connections.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Answers the one request of a one-shot connection, then closes it.
async fn serve_once(
    inner: &TransportInner,
    mut write: WriteHalf,
    request_id: u64,
    group: GroupId,
    kind: RpcKind,
    body: Bytes,
) {
    let dispatcher = inner.groups.read().get(&group).cloned();
    let result = match dispatcher {
        Some(dispatcher) => dispatcher.dispatch(kind, body).await,
        None => Err(RemoteFailure::UnknownGroup(group)),
    };
    let limit = inner.config.frame_bytes_max;
    let frame =
        frame::encode_frame(&WireMessage::Response { request_id, result }, limit).or_else(|e| {
            let result = Err(RemoteFailure::BadResponse(e.to_string()));
            frame::encode_frame(&WireMessage::Response { request_id, result }, limit)
        });
    match frame {
        Ok(frame) => {
            if let Err(e) = write.write_all(&frame.to_bytes()).await {
                tracing::debug!(error = %e, "cluster transport: one-shot response not sent");
            }
            let _ = write.shutdown().await;
        }
        Err(e) => tracing::warn!(error = %e, "cluster transport: one-shot response not encodable"),
    }
}

/// Sends one open request ([`RpcKind::is_open`]) to the node listening on `addr` over a
/// connection of its own, without being its peer, and waits for the response.
pub async fn call_once<Req, Resp>(
    addr: SocketAddr,
    group: GroupId,
    kind: RpcKind,
    request: &Req,
    timeout: Duration,
    frame_bytes_max: usize,
    tls: Option<&TransportTls>,
) -> Result<Resp, CallError>
where
    Req: Serialize + ?Sized,
    Resp: DeserializeOwned,
{
    let connect_error = |reason: String| CallError::Connect { addr, reason };
    let body = frame::encode_body(request, frame_bytes_max).map_err(encode_error)?;
    let request = frame::encode_frame(
        &WireMessage::Request {
            request_id: 1,
            group,
            kind,
            body,
        },
        frame_bytes_max,
    )
    .map_err(encode_error)?;
    let exchange = async {
        let (read, mut write) = secure_dial(tls, addr, timeout)
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        write
            .write_all(&request.to_bytes())
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        write
            .flush()
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        let mut reader = FramedRead::new(read, frame::codec(frame_bytes_max));
        match reader.next().await {
            Some(Ok(payload)) => match frame::decode_message(payload.freeze(), frame_bytes_max) {
                Ok(WireMessage::Response { result, .. }) => Ok(result),
                Ok(other) => Err(CallError::Codec(format!("unexpected frame {other:?}"))),
                Err(e) => Err(CallError::Codec(e.to_string())),
            },
            Some(Err(e)) => Err(connect_error(e.to_string())),
            None => Err(connect_error("closed without answering".into())),
        }
    };
    let result = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| connect_error(format!("no answer within {timeout:?}")))??;
    let body = result.map_err(|failure| connect_error(failure.to_string()))?;
    frame::decode_body(&body, frame_bytes_max).map_err(|e| CallError::Codec(e.to_string()))
}

/// Owns one peer's outbound queue for the transport's life: connects (or waits to be
/// connected), runs a session until the connection fails, and starts over.
async fn peer_loop(
    inner: Arc<TransportInner>,
    link: Arc<PeerLink>,
    mut queue_rx: mpsc::Receiver<QueuedFrame>,
    mut incoming_rx: mpsc::Receiver<(FrameReader, WriteHalf)>,
) {
    let dials = inner.config.node_id < link.peer_id;
    let mut backoff = inner.config.reconnect_backoff_min;
    let mut next_connection = None;
    loop {
        let connection = match next_connection.take() {
            Some(connection) => connection,
            None if dials => {
                tokio::select! {
                    _ = link.stop.cancelled() => return,
                    dialed = dial(&inner, link.addr) => match dialed {
                        Ok(connection) => {
                            backoff = inner.config.reconnect_backoff_min;
                            connection
                        }
                        Err(e) => {
                            tracing::debug!(peer = link.peer_id, error = %e, "cluster transport: dial failed");
                            tokio::select! {
                                _ = link.stop.cancelled() => return,
                                _ = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(inner.config.reconnect_backoff_max);
                            continue;
                        }
                    },
                }
            }
            None => tokio::select! {
                _ = link.stop.cancelled() => return,
                incoming = incoming_rx.recv() => match incoming {
                    Some(connection) => connection,
                    None => return,
                },
            },
        };
        tracing::debug!(peer = link.peer_id, "cluster transport: connected");
        link.connected.store(true, Ordering::Release);
        let _ = inner.link_events.send(LinkEvent::Up(link.peer_id));
        let ended = run_session(&inner, &link, connection, &mut queue_rx, &mut incoming_rx).await;
        link.connected.store(false, Ordering::Release);
        if !matches!(ended, SessionEnd::Shutdown) {
            let _ = inner.link_events.send(LinkEvent::Down(link.peer_id));
        }
        // Calls in flight on the dead connection fail now rather than at their timeout, and
        // queued frames are dropped: Raft resends what still matters.
        link.pending.lock().clear();
        while let Ok(frame) = queue_rx.try_recv() {
            link.queued_bytes
                .fetch_sub(frame.frame.len(), Ordering::AcqRel);
        }
        match ended {
            SessionEnd::Replaced(connection) => next_connection = Some(connection),
            SessionEnd::Failed => {}
            SessionEnd::Shutdown => return,
        }
    }
}

async fn dial(
    inner: &TransportInner,
    addr: SocketAddr,
) -> std::io::Result<(FrameReader, WriteHalf)> {
    let (read, mut write) =
        secure_dial(inner.config.tls.as_ref(), addr, inner.config.hello_timeout).await?;
    let hello = frame::encode_frame(
        &WireMessage::Hello {
            node_id: inner.config.node_id,
        },
        inner.config.frame_bytes_max,
    )
    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    write.write_all(&hello.to_bytes()).await?;
    write.flush().await?;
    Ok((
        FramedRead::new(read, frame::codec(inner.config.frame_bytes_max)),
        write,
    ))
}

enum SessionEnd {
    Failed,
    Replaced((FrameReader, WriteHalf)),
    Shutdown,
}

async fn run_session(
    inner: &Arc<TransportInner>,
    link: &Arc<PeerLink>,
    (reader, mut writer): (FrameReader, WriteHalf),
    queue_rx: &mut mpsc::Receiver<QueuedFrame>,
    incoming_rx: &mut mpsc::Receiver<(FrameReader, WriteHalf)>,
) -> SessionEnd {
    let session_end = CancellationToken::new();
    let reader_task = tokio::spawn(read_frames(
        inner.clone(),
        link.clone(),
        reader,
        session_end.clone(),
    ));
    let mut buffer = BytesMut::with_capacity(64 * 1024);
    let end = loop {
        tokio::select! {
            _ = link.stop.cancelled() => break SessionEnd::Shutdown,
            _ = session_end.cancelled() => break SessionEnd::Failed,
            incoming = incoming_rx.recv() => match incoming {
                // The peer dialed again (it restarted, or lost this connection first).
                Some(connection) => break SessionEnd::Replaced(connection),
                None => break SessionEnd::Shutdown,
            },
            frame = queue_rx.recv() => {
                let Some(frame) = frame else { break SessionEnd::Shutdown };
                if let Err(e) = write_frames(inner, link, &mut writer, &mut buffer, frame, queue_rx).await {
                    tracing::debug!(peer = link.peer_id, error = %e, "cluster transport: write failed");
                    break SessionEnd::Failed;
                }
            }
        }
    };
    session_end.cancel();
    reader_task.abort();
    end
}

/// Writes `first` and, when coalescing, every frame already queued behind it: heads and small
/// bodies gathered in one buffer, a large body written from its own (no copy of replicated
/// data), in order.
async fn write_frames(
    inner: &TransportInner,
    link: &PeerLink,
    writer: &mut WriteHalf,
    buffer: &mut BytesMut,
    first: QueuedFrame,
    queue_rx: &mut mpsc::Receiver<QueuedFrame>,
) -> std::io::Result<()> {
    let stats = &inner.stats;
    // Taken off the queue: no longer counted against it; dropped if its caller gave up.
    let wanted = |queued: &QueuedFrame| {
        link.queued_bytes
            .fetch_sub(queued.frame.len(), Ordering::AcqRel);
        queued
            .request_id
            .is_none_or(|id| link.pending.lock().contains_key(&id))
    };
    if !inner.config.coalesce_writes {
        if !wanted(&first) {
            return Ok(());
        }
        stats.frames_sent.fetch_add(1, Ordering::Relaxed);
        write_counted(stats, writer, &first.frame.head).await?;
        for part in &first.frame.body {
            write_counted(stats, writer, part).await?;
        }
        // TLS holds records back until flushed; plain TCP's flush does nothing.
        return writer.flush().await;
    }
    buffer.clear();
    let mut frames = 0;
    let mut batched = 0;
    if wanted(&first) {
        batched += first.frame.len();
        gather(stats, writer, buffer, &first.frame).await?;
        frames += 1;
    }
    // Let the tasks that are about to send (other groups' heartbeats, responses) queue first.
    tokio::task::yield_now().await;
    while batched < inner.config.write_batch_bytes_max {
        match queue_rx.try_recv() {
            Ok(queued) => {
                if wanted(&queued) {
                    batched += queued.frame.len();
                    gather(stats, writer, buffer, &queued.frame).await?;
                    frames += 1;
                }
            }
            Err(_) => break,
        }
    }
    if frames == 0 {
        return Ok(());
    }
    stats.frames_sent.fetch_add(frames, Ordering::Relaxed);
    write_counted(stats, writer, buffer).await?;
    buffer.clear();
    writer.flush().await
}

/// Bodies from this size on are written from their own buffer rather than copied into the
/// write buffer: one more `write` costs less than copying them.
const DIRECT_BODY_BYTES: usize = 16 * 1024;

/// Adds `frame` to the write buffer; a large part of its body is written from its own buffer,
/// after what is buffered.
async fn gather(
    stats: &StatCounters,
    writer: &mut WriteHalf,
    buffer: &mut BytesMut,
    frame: &EncodedFrame,
) -> std::io::Result<()> {
    buffer.extend_from_slice(&frame.head);
    for part in &frame.body {
        if part.len() < DIRECT_BODY_BYTES {
            buffer.extend_from_slice(part);
            continue;
        }
        write_counted(stats, writer, buffer).await?;
        buffer.clear();
        write_counted(stats, writer, part).await?;
    }
    Ok(())
}

/// `write_all`, counting each `write` call.
async fn write_counted(
    stats: &StatCounters,
    writer: &mut WriteHalf,
    mut data: &[u8],
) -> std::io::Result<()> {
    while data.has_remaining() {
        let written = writer.write(data).await?;
        stats.writes.fetch_add(1, Ordering::Relaxed);
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        stats
            .bytes_sent
            .fetch_add(written as u64, Ordering::Relaxed);
        data = &data[written..];
    }
    Ok(())
}

async fn read_frames(
    inner: Arc<TransportInner>,
    link: Arc<PeerLink>,
    mut reader: FrameReader,
    session_end: CancellationToken,
) {
    let limit = inner.config.frame_bytes_max;
    let budget = inner.config.incoming_bytes_max.clamp(1, u32::MAX as usize);
    let serving = Arc::new(Semaphore::new(budget));
    while let Some(next) = reader.next().await {
        let payload = match next {
            Ok(payload) => payload,
            // The codec reports an oversized length as InvalidData; anything else is the
            // connection failing, not the peer misbehaving.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                tracing::warn!(peer = link.peer_id, error = %e, "cluster transport: bad frame, closing");
                inner.stats.bad_connections.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Err(e) => {
                tracing::debug!(peer = link.peer_id, error = %e, "cluster transport: connection lost");
                break;
            }
        };
        inner.stats.frames_received.fetch_add(1, Ordering::Relaxed);
        let payload_len = payload.len();
        match frame::decode_message(payload.freeze(), limit) {
            Ok(WireMessage::Request {
                request_id,
                group,
                kind,
                body,
            }) => {
                let dispatcher = inner.groups.read().get(&group).cloned();
                // Requests past the budget wait here, unread ones stay in the socket.
                let cost = u32::try_from(payload_len.clamp(1, budget)).unwrap_or(u32::MAX);
                let permit = tokio::select! {
                    _ = session_end.cancelled() => break,
                    permit = serving.clone().acquire_many_owned(cost) => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                };
                let link = link.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let result = match dispatcher {
                        Some(dispatcher) => dispatcher.dispatch(kind, body).await,
                        None => Err(RemoteFailure::UnknownGroup(group)),
                    };
                    let response = WireMessage::Response { request_id, result };
                    let frame = match frame::encode_frame(&response, limit) {
                        Ok(frame) => frame,
                        Err(e) => {
                            let failure = RemoteFailure::BadResponse(e.to_string());
                            let response = WireMessage::Response {
                                request_id,
                                result: Err(failure),
                            };
                            match frame::encode_frame(&response, limit) {
                                Ok(frame) => frame,
                                Err(_) => return,
                            }
                        }
                    };
                    // Responses are small and never refused; a closed queue means the
                    // connection is gone, and the caller times out.
                    let size = frame.len();
                    link.queued_bytes.fetch_add(size, Ordering::AcqRel);
                    let queued = QueuedFrame {
                        frame,
                        request_id: None,
                    };
                    if link.queue_tx.send(queued).await.is_err() {
                        link.queued_bytes.fetch_sub(size, Ordering::AcqRel);
                    }
                });
            }
            Ok(WireMessage::Response { request_id, result }) => {
                if let Some(reply) = link.pending.lock().remove(&request_id) {
                    let _ = reply.send(result);
                }
            }
            Ok(WireMessage::Hello { .. }) => {
                tracing::warn!(
                    peer = link.peer_id,
                    "cluster transport: hello mid-connection, closing"
                );
                inner.stats.bad_connections.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Err(e) => {
                tracing::warn!(peer = link.peer_id, error = %e, "cluster transport: undecodable frame, closing");
                inner.stats.bad_connections.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
    session_end.cancel();
}
