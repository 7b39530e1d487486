//! One AMQP connection: the handshake (start / tune / open with PLAIN or AMQPLAIN auth), then
//! frames routed to channels. Two tasks: this one reads frames and acts on them in order (it
//! pauses between frames, never inside one, under a resource alarm), and a writer that owns
//! the socket's write half and sends heartbeats when idle.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use amq_protocol::protocol::{connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use bytes::Bytes;
use sluice_auth::{Access, VhostPermissions};
use sluice_broker::vhost::Session;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};

use crate::channel::Channel;
use crate::codec::{
    decode_method, heartbeat_frame, method_frame, read_frame, FrameError, MethodError, RawFrame,
    FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, PROTOCOL_HEADER,
};
use crate::reply::*;
use crate::server::ServerContext;

/// Frames for the writer; an empty chunk asks it to flush and close the socket. Counts the bytes
/// waiting, so that deliveries pause while the client (or its network) does not keep up.
#[derive(Clone)]
pub(crate) struct Outbound {
    sender: mpsc::UnboundedSender<Bytes>,
    pub backlog: Arc<WriteBacklog>,
}

impl Outbound {
    pub fn send(&self, frame: Bytes) {
        self.backlog.queued.fetch_add(frame.len(), Ordering::AcqRel);
        let _ = self.sender.send(frame);
    }
}

/// Deliveries stop (consumers get no credit) while more than this waits for the socket...
const BACKLOG_HIGH: usize = 4 << 20;
/// ...and resume once the writer has brought it under this.
const BACKLOG_LOW: usize = 1 << 20;

/// Bytes queued for one connection's socket, and the sessions that found it full.
#[derive(Default)]
pub(crate) struct WriteBacklog {
    queued: AtomicUsize,
    waiting: parking_lot::Mutex<Vec<Weak<Session>>>,
}

impl WriteBacklog {
    /// Whether `session` may hand over more deliveries. If not, it is woken (redispatched)
    /// when the writer catches up. Registered before the second look, so no wake-up is lost.
    pub fn has_room(&self, session: &Weak<Session>) -> bool {
        if self.queued.load(Ordering::Acquire) <= BACKLOG_HIGH {
            return true;
        }
        {
            let mut waiting = self.waiting.lock();
            if !waiting.iter().any(|w| w.ptr_eq(session)) {
                waiting.push(Weak::clone(session));
            }
        }
        self.queued.load(Ordering::Acquire) <= BACKLOG_HIGH
    }

    fn written(&self, bytes: usize) {
        let before = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                Some(q.saturating_sub(bytes))
            })
            .unwrap_or(0);
        let left = before.saturating_sub(bytes);
        if left > BACKLOG_LOW {
            return;
        }
        let waiting = std::mem::take(&mut *self.waiting.lock());
        for session in waiting.iter().filter_map(Weak::upgrade) {
            session.redispatch();
        }
    }
}

/// Frame size limit before connection.tune-ok (the spec's frame-min-size is 4096; we allow more
/// so large client-properties tables pass).
const HANDSHAKE_FRAME_MAX: u32 = 131_072;
/// How long a closing connection keeps reading, and discarding, what the peer still sends: for
/// its close-ok after we sent connection.close, then until it closes the socket. Closing
/// while the peer is still writing (a burst of publishes in flight when it sent
/// connection.close) would reset the connection, and the peer would get EPIPE instead of its
/// close-ok. RabbitMQ waits for the socket's end too, up to its heartbeat timeout (at most
/// 30 s); a few seconds is plenty for what was already in flight.
const CLOSE_LINGER_MAX: Duration = Duration::from_secs(5);
/// Graceful shutdown: how long a connection waits for the confirms of publishes it already
/// read (their group commit), then for the client's close-ok. Together under the server's
/// drain bound, so a shutdown always finishes.
const SHUTDOWN_CONFIRMS_MAX: Duration = Duration::from_secs(3);
const SHUTDOWN_CLOSE_OK_MAX: Duration = Duration::from_secs(2);
/// Type, channel and size: what must be buffered for a frame to be under way.
const FRAME_HEADER_BYTES: usize = 7;
/// The longest a publisher waits for one congested queue before it goes on.
const FLOW_WAIT_MAX: Duration = Duration::from_millis(500);

/// Serves one connection until it closes, or until `shutdown` turns true: then it reads no
/// further frame, answers the confirms of publishes already read, and closes the connection
/// with 320 CONNECTION_FORCED as RabbitMQ does on shutdown.
/// The socket's halves: TCP, or TLS over TCP.
pub(crate) type ReadHalf = Box<dyn AsyncRead + Unpin + Send>;
pub(crate) type WriteHalf = Box<dyn AsyncWrite + Unpin + Send>;

pub(crate) async fn serve_connection(
    read_half: ReadHalf,
    mut write_half: WriteHalf,
    peer: SocketAddr,
    certified: Option<String>,
    context: Arc<ServerContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let id = context.next_connection_id.fetch_add(1, Ordering::Relaxed);
    // Listed by the HTTP API while the connection lives; its channels carry `id`.
    let registered = context
        .vhosts
        .default_vhost()
        .broker()
        .connections()
        .register(sluice_broker::Protocol::Amqp, peer, Some(id));
    let reader = BufReader::with_capacity(64 << 10, read_half);
    // From the protocol header to connection.open: a socket that connects and never gets
    // there is closed, rather than holding a task and a socket forever (RabbitMQ's
    // handshake_timeout).
    let handshake_deadline = tokio::time::Instant::now() + context.config.handshake_timeout;

    // Protocol header: anything else gets ours back and the socket closed (AMQP 0-9-1 §4.2.2).
    let mut header = [0u8; 8];
    let mut reader = reader;
    match tokio::time::timeout_at(handshake_deadline, reader.read_exact(&mut header)).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => return,
        Err(_) => {
            tracing::info!(%peer, "AMQP handshake timeout: no protocol header, closing");
            return;
        }
    }
    if &header != PROTOCOL_HEADER {
        tracing::debug!(%peer, ?header, "AMQP: bad protocol header");
        let _ = write_half.write_all(PROTOCOL_HEADER).await;
        let _ = write_half.shutdown().await;
        return;
    }

    let (sender, out_receiver) = mpsc::unbounded_channel::<Bytes>();
    let out = Outbound {
        sender,
        backlog: Arc::new(WriteBacklog::default()),
    };
    let heartbeat_s = Arc::new(AtomicU32::new(0));
    let writer = tokio::spawn(write_loop(
        write_half,
        out_receiver,
        Arc::clone(&heartbeat_s),
        Arc::clone(&out.backlog),
    ));
    let frame_max = Arc::new(AtomicU32::new(HANDSHAKE_FRAME_MAX));

    let mut connection = Connection {
        shutdown: shutdown.clone(),
        id,
        peer,
        context: Arc::clone(&context),
        out: out.clone(),
        reader,
        frame_max,
        heartbeat_s,
        channel_max: context.config.channel_max,
        user: String::new(),
        certified,
        vhost: Arc::clone(context.vhosts.default_vhost()),
        permissions: None,
        permissions_generation: 0,
        counted: false,
        client_name: None,
        channels: HashMap::new(),
        blocked_capable: false,
        cancel_notify: false,
        has_published: false,
        notified_blocked: false,
        congested: Vec::new(),
        linger_until: None,
    };
    let handshake = tokio::select! {
        biased;
        () = shutdown_requested(&mut shutdown) => Ok(Err(None)),
        handshake = tokio::time::timeout_at(handshake_deadline, connection.handshake()) => handshake,
    };
    match handshake {
        Ok(Ok(())) => {
            tracing::debug!(%peer, id, user = %connection.user, "AMQP connection open");
            registered.set_user(&connection.user);
            if let Some(name) = &connection.client_name {
                registered.set_client(name);
            }
            connection.run().await;
        }
        Ok(Err(Some(error))) => connection.close_with(error).await,
        Ok(Err(None)) => {}
        Err(_) => {
            tracing::info!(%peer, "AMQP handshake timeout: closing");
        }
    }
    connection.cleanup();
    // The writer sends what is queued (a close-ok, say), then shuts its half of the socket.
    out.send(Bytes::new());
    if let Some(deadline) = connection.linger_until {
        connection.discard_until_eof(deadline).await;
    }
    drop(connection);
    drop(out);
    let _ = writer.await;
}

async fn write_loop(
    mut socket: WriteHalf,
    mut frames: mpsc::UnboundedReceiver<Bytes>,
    heartbeat_s: Arc<AtomicU32>,
    backlog: Arc<WriteBacklog>,
) {
    let mut batch = Vec::with_capacity(64);
    loop {
        let heartbeat = heartbeat_s.load(Ordering::Acquire);
        let received = if heartbeat > 0 {
            let idle = Duration::from_millis(u64::from(heartbeat) * 500);
            match tokio::time::timeout(idle, frames.recv_many(&mut batch, 256)).await {
                Ok(n) => n,
                Err(_) => {
                    if socket.write_all(&heartbeat_frame()).await.is_err() {
                        return;
                    }
                    continue;
                }
            }
        } else {
            frames.recv_many(&mut batch, 256).await
        };
        if received == 0 {
            let _ = socket.shutdown().await;
            return;
        }
        let mut close = false;
        let mut bufs: Vec<std::io::IoSlice<'_>> = Vec::with_capacity(batch.len());
        for chunk in &batch {
            if chunk.is_empty() {
                close = true;
                break;
            }
            bufs.push(std::io::IoSlice::new(chunk));
        }
        if write_all_vectored(&mut socket, &mut bufs).await.is_err() {
            return;
        }
        backlog.written(batch.iter().map(Bytes::len).sum());
        batch.clear();
        if close {
            let _ = socket.shutdown().await;
            return;
        }
    }
}

async fn write_all_vectored(
    socket: &mut WriteHalf,
    mut bufs: &mut [std::io::IoSlice<'_>],
) -> std::io::Result<()> {
    while !bufs.is_empty() {
        let n = socket.write_vectored(bufs).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

pub(crate) struct Connection {
    pub id: u64,
    peer: SocketAddr,
    pub context: Arc<ServerContext>,
    pub out: Outbound,
    reader: BufReader<ReadHalf>,
    frame_max: Arc<AtomicU32>,
    heartbeat_s: Arc<AtomicU32>,
    channel_max: u16,
    pub user: String,
    /// The common name of the client's verified TLS certificate (the user of EXTERNAL).
    certified: Option<String>,
    /// The virtual host opened (connection.open).
    /// The vhost opened by connection.open (`/` until then).
    pub vhost: Arc<sluice_broker::vhost::VirtualHost>,
    /// The user's permissions on that virtual host, as of `permissions_generation` of the
    /// user store.
    pub permissions: Option<VhostPermissions>,
    permissions_generation: u64,
    /// Counted in the server's open connections (past connection.open).
    counted: bool,
    /// The client's connection_name (or product) property, shown by the HTTP API.
    client_name: Option<String>,
    channels: HashMap<u16, Channel>,
    /// Client capabilities from start-ok.
    blocked_capable: bool,
    pub cancel_notify: bool,
    pub has_published: bool,
    notified_blocked: bool,
    /// Queues this connection just published into whose consumers are behind: it waits for
    /// them before reading on (flow control, as RabbitMQ's credit flow slows publishers).
    pub congested: Vec<Arc<sluice_broker::vhost::Queue>>,
    /// Set once connection.close or close-ok was sent: what the peer still sends is read and
    /// discarded until it closes the socket, or until then (see `CLOSE_LINGER_MAX`).
    linger_until: Option<tokio::time::Instant>,
    /// Turns true when the broker shuts down.
    shutdown: watch::Receiver<bool>,
}

/// Outcome of the handshake: Err(None) means the peer went away; Err(Some) is a close to send.
type HandshakeResult = Result<(), Option<AmqpError>>;

impl Connection {
    pub fn frame_max(&self) -> u32 {
        self.frame_max.load(Ordering::Acquire)
    }

    pub fn send(&self, frame: Bytes) {
        self.out.send(frame);
    }

    /// Whether another frame is already (at least partly) read: the client is mid-burst.
    pub fn frame_buffered(&self) -> bool {
        !self.reader.buffer().is_empty()
    }

    /// The next frame; a silent peer (two heartbeat intervals without a frame) is gone.
    async fn read_frame(&mut self) -> Result<RawFrame, FrameError> {
        let frame_max = self.frame_max.load(Ordering::Acquire);
        let heartbeat = self.heartbeat_s.load(Ordering::Acquire);
        // A frame already buffered needs no timer (one per frame showed up under load).
        let buffered = self.reader.buffer().len() >= FRAME_HEADER_BYTES;
        let read = read_frame(&mut self.reader, frame_max);
        if heartbeat == 0 || buffered {
            return read.await;
        }
        match tokio::time::timeout(Duration::from_secs(2 * u64::from(heartbeat)), read).await {
            Ok(frame) => frame,
            Err(_) => Err(FrameError::Closed),
        }
    }

    async fn next_method(&mut self) -> Result<AMQPClass, Option<AmqpError>> {
        loop {
            let frame = match self.read_frame().await {
                Ok(frame) => frame,
                Err(FrameError::Frame(text)) => {
                    return Err(Some(AmqpError::connection(FRAME_ERROR, text)))
                }
                Err(_) => return Err(None),
            };
            match frame.kind {
                FRAME_HEARTBEAT => continue,
                FRAME_METHOD if frame.channel == 0 => {
                    return decode_method(&frame.payload).map_err(|e| Some(method_error(e)));
                }
                _ => {
                    return Err(Some(AmqpError::connection(
                        UNEXPECTED_FRAME,
                        format!("type {}, channel {}: only connection methods are expected during the handshake", frame.kind, frame.channel),
                    )))
                }
            }
        }
    }

    async fn handshake(&mut self) -> HandshakeResult {
        let mut capabilities = FieldTable::default();
        for capability in [
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "authentication_failure_close",
            "per_consumer_qos",
        ] {
            capabilities.insert(capability.into(), AMQPValue::Boolean(true));
        }
        let mut server_properties = FieldTable::default();
        server_properties.insert("product".into(), long_string("Sluice"));
        server_properties.insert("version".into(), long_string(env!("CARGO_PKG_VERSION")));
        server_properties.insert("platform".into(), long_string("Rust"));
        server_properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
        self.send(method_frame(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties,
                // EXTERNAL where a verified client certificate names the user.
                mechanisms: if self.certified.is_some() {
                    "PLAIN AMQPLAIN EXTERNAL".into()
                } else {
                    "PLAIN AMQPLAIN".into()
                },
                locales: "en_US".into(),
            })),
        ));
        let start_ok = match self.next_method().await? {
            AMQPClass::Connection(connection::AMQPMethod::StartOk(start_ok)) => start_ok,
            _ => {
                return Err(Some(
                    AmqpError::connection(COMMAND_INVALID, "expected connection.start-ok")
                        .on(10, 11),
                ))
            }
        };
        // The name the HTTP API lists: the client's own connection name, else its product.
        self.client_name = ["connection_name", "product"].iter().find_map(|key| {
            start_ok
                .client_properties
                .inner()
                .get(*key)
                .and_then(sluice_broker::vhost::message::value_as_str)
                .map(|name| name.chars().take(255).collect())
        });
        if let Some(AMQPValue::FieldTable(caps)) =
            start_ok.client_properties.inner().get("capabilities")
        {
            let has = |name: &str| matches!(caps.inner().get(name), Some(AMQPValue::Boolean(true)));
            self.blocked_capable = has("connection.blocked");
            self.cancel_notify = has("consumer_cancel_notify");
        }
        let mechanism = start_ok.mechanism.as_str().to_string();
        let store = Arc::clone(&self.context.config.user_store);
        let loopback = self.peer.ip().is_loopback();
        let authenticated = if mechanism == "EXTERNAL" {
            self.certified
                .as_deref()
                .and_then(|name| store.certified(name, loopback))
        } else {
            let Some((user, password)) = credentials(&mechanism, start_ok.response.as_bytes())
            else {
                tracing::warn!(peer = %self.peer, %mechanism, "AMQP login refused: malformed response or unknown mechanism");
                tokio::time::sleep(FAILED_LOGIN_DELAY).await;
                return Err(Some(access_refused(&mechanism)));
            };
            store.verify_password(&user, &password, loopback)
        };
        let Some(authenticated) = authenticated else {
            tracing::warn!(peer = %self.peer, %mechanism, "AMQP login refused");
            // Slows password guessing, as RabbitMQ's delay before closing.
            tokio::time::sleep(FAILED_LOGIN_DELAY).await;
            return Err(Some(access_refused(&mechanism)));
        };
        self.user = authenticated.name;

        let context = Arc::clone(&self.context);
        let config = &context.config;
        self.send(method_frame(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                channel_max: config.channel_max,
                frame_max: config.frame_max,
                heartbeat: config.heartbeat_s,
            })),
        ));
        let tune_ok = match self.next_method().await? {
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(tune_ok)) => tune_ok,
            _ => {
                return Err(Some(
                    AmqpError::connection(COMMAND_INVALID, "expected connection.tune-ok")
                        .on(10, 31),
                ))
            }
        };
        if tune_ok.frame_max != 0 {
            if tune_ok.frame_max < 4096 || tune_ok.frame_max > config.frame_max {
                return Err(Some(
                    AmqpError::connection(
                        NOT_ALLOWED,
                        format!(
                            "negotiated frame_max = {} is outside 4096..={}",
                            tune_ok.frame_max, config.frame_max
                        ),
                    )
                    .on(10, 31),
                ));
            }
            self.frame_max.store(tune_ok.frame_max, Ordering::Release);
        } else {
            self.frame_max.store(config.frame_max, Ordering::Release);
        }
        if tune_ok.channel_max != 0 {
            self.channel_max = tune_ok.channel_max.min(config.channel_max);
        }
        self.heartbeat_s
            .store(u32::from(tune_ok.heartbeat), Ordering::Release);

        let open = match self.next_method().await? {
            AMQPClass::Connection(connection::AMQPMethod::Open(open)) => open,
            _ => {
                return Err(Some(
                    AmqpError::connection(COMMAND_INVALID, "expected connection.open").on(10, 40),
                ))
            }
        };
        let vhost_name = open.virtual_host.as_str();
        let Some(vhost) = self.context.vhosts.get(vhost_name) else {
            tracing::warn!(peer = %self.peer, user = %self.user, vhost = vhost_name, "AMQP: connection.open of a vhost that does not exist");
            return Err(Some(
                AmqpError::connection(NOT_ALLOWED, format!("vhost {vhost_name} not found"))
                    .on(10, 40),
            ));
        };
        let generation = store.generation();
        let Some(permissions) = store.permissions(&self.user, vhost_name) else {
            tracing::warn!(peer = %self.peer, user = %self.user, vhost = vhost_name, "AMQP: no permissions on the vhost");
            return Err(Some(
                AmqpError::connection(
                    NOT_ALLOWED,
                    format!(
                        "access to vhost '{vhost_name}' refused for user '{}'",
                        self.user
                    ),
                )
                .on(10, 40),
            ));
        };
        let max = self
            .context
            .config
            .vhost_limits
            .limit(vhost_name, sluice_auth::vhost_limits::MAX_CONNECTIONS);
        if !vhost.try_count_connection(max) {
            let max = max.unwrap_or_default();
            tracing::warn!(peer = %self.peer, user = %self.user, vhost = vhost_name, max, "AMQP: the vhost's connection limit is reached");
            return Err(Some(
                AmqpError::connection(
                    NOT_ALLOWED,
                    format!(
                        "access to vhost '{vhost_name}' refused for user '{}': connection limit ({max}) is reached",
                        self.user
                    ),
                )
                .on(10, 40),
            ));
        }
        self.counted = true;
        self.vhost = vhost;
        self.permissions = Some(permissions);
        self.permissions_generation = generation;
        self.send(method_frame(
            0,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
        ));
        Ok(())
    }

    async fn run(&mut self) {
        let mut blocked = self.vhost.blocked();
        let mut deleted = self.vhost.deleted();
        loop {
            let alarm = blocked.borrow().clone();
            self.notify_blocked(alarm.as_deref());
            // Under a resource alarm, a connection that publishes is not read from (TCP
            // back-pressure does the rest), as RabbitMQ does.
            if alarm.is_some() && self.has_published {
                let mut shutdown = self.shutdown.clone();
                let deletion = tokio::select! {
                    () = shutdown_requested(&mut shutdown) => {
                        self.close_for_shutdown().await;
                        return;
                    }
                    () = vhost_deleted(&mut deleted) => true,
                    changed = blocked.changed() => if changed.is_err() {
                        return;
                    } else {
                        false
                    },
                };
                if deletion {
                    self.close_for_vhost_deletion().await;
                    return;
                }
                continue;
            }
            // Shutdown is looked at between frames; a frame under way is cut off (the
            // connection is closing anyway, and a publish without its body is not confirmed).
            let mut shutdown = self.shutdown.clone();
            let read = tokio::select! {
                biased;
                () = shutdown_requested(&mut shutdown) => Wake::Shutdown,
                () = vhost_deleted(&mut deleted) => Wake::VhostDeleted,
                read = self.read_frame() => Wake::Frame(read),
            };
            let read = match read {
                Wake::Frame(read) => read,
                Wake::Shutdown => {
                    self.close_for_shutdown().await;
                    return;
                }
                Wake::VhostDeleted => {
                    self.close_for_vhost_deletion().await;
                    return;
                }
            };
            let frame = match read {
                Ok(frame) => frame,
                Err(FrameError::Frame(text)) => {
                    self.close_with(AmqpError::connection(FRAME_ERROR, text))
                        .await;
                    return;
                }
                Err(FrameError::Closed) | Err(FrameError::Io(_)) => return,
            };
            let mut result = self.handle_frame(frame).await;
            if !self.frame_buffered() {
                // The burst is over: acks gathered on any channel are applied now.
                result = result.and_then(|open| self.flush_acks().map(|()| open));
            }
            for queue in std::mem::take(&mut self.congested) {
                // Bounded, so a stuck consumer slows a publisher without stopping it.
                let _ = tokio::time::timeout(FLOW_WAIT_MAX, queue.until_uncongested()).await;
            }
            match result {
                Ok(true) => {}
                Ok(false) => return,
                Err(error) => {
                    self.close_with(error).await;
                    return;
                }
            }
        }
    }

    fn notify_blocked(&mut self, alarm: Option<&str>) {
        if !self.blocked_capable || alarm.is_some() == self.notified_blocked {
            return;
        }
        // As RabbitMQ: only a connection that publishes is blocked, and told so.
        if alarm.is_some() && !self.has_published {
            return;
        }
        self.notified_blocked = alarm.is_some();
        let method = match alarm {
            Some(reason) => connection::AMQPMethod::Blocked(connection::Blocked {
                reason: reason.into(),
            }),
            None => connection::AMQPMethod::Unblocked(connection::Unblocked {}),
        };
        self.send(method_frame(0, AMQPClass::Connection(method)));
    }

    /// Ok(false): the connection is done (closed cleanly).
    async fn handle_frame(&mut self, frame: RawFrame) -> Result<bool, AmqpError> {
        if frame.kind == FRAME_HEARTBEAT {
            if frame.channel != 0 {
                return Err(AmqpError::connection(
                    UNEXPECTED_FRAME,
                    "heartbeat frame on a non-zero channel",
                ));
            }
            return Ok(true);
        }
        if frame.channel == 0 {
            if frame.kind != FRAME_METHOD {
                return Err(AmqpError::connection(
                    UNEXPECTED_FRAME,
                    "content frame on channel 0",
                ));
            }
            let method = decode_method(&frame.payload).map_err(method_error)?;
            if !matches!(method, AMQPClass::Connection(_)) {
                return Err(AmqpError::connection(
                    CHANNEL_ERROR,
                    "expected a connection method on channel 0",
                )
                .on(method.get_amqp_class_id(), method.get_amqp_method_id()));
            }
            return self.handle_connection_method(method);
        }
        if frame.channel > self.channel_max {
            return Err(AmqpError::connection(
                NOT_ALLOWED,
                format!(
                    "channel {} is above the negotiated channel_max ({})",
                    frame.channel, self.channel_max
                ),
            ));
        }
        let channel_id = frame.channel;
        if !self.channels.contains_key(&channel_id) {
            if frame.kind != FRAME_METHOD {
                return Err(AmqpError::connection(
                    CHANNEL_ERROR,
                    "expected 'channel.open'",
                ));
            }
            let method = decode_method(&frame.payload).map_err(method_error)?;
            return match method {
                AMQPClass::Channel(amq_protocol::protocol::channel::AMQPMethod::Open(_)) => {
                    let channel = Channel::open(self, channel_id);
                    self.channels.insert(channel_id, channel);
                    Ok(true)
                }
                _ => Err(
                    AmqpError::connection(CHANNEL_ERROR, "expected 'channel.open'")
                        .on(method.get_amqp_class_id(), method.get_amqp_method_id()),
                ),
            };
        }
        let Some(mut channel) = self.channels.remove(&channel_id) else {
            return Ok(true);
        };
        let result = match frame.kind {
            FRAME_METHOD => match decode_method(&frame.payload) {
                Ok(method) => channel.handle_method(self, method).await,
                Err(error) => Err(method_error(error)),
            },
            FRAME_HEADER => channel.handle_header(self, &frame.payload),
            FRAME_BODY => channel.handle_body(self, frame.payload.freeze()).await,
            _ => Ok(()),
        };
        match result {
            Ok(()) => {
                if !channel.is_finished() {
                    self.channels.insert(channel_id, channel);
                }
                Ok(true)
            }
            Err(error) if error.hard => {
                self.channels.insert(channel_id, channel);
                Err(error)
            }
            Err(error) => {
                tracing::debug!(channel = channel_id, code = error.code, text = %error.text, "AMQP channel error");
                channel.close_with(self, &error);
                self.channels.insert(channel_id, channel);
                Ok(true)
            }
        }
    }

    fn handle_connection_method(&mut self, method: AMQPClass) -> Result<bool, AmqpError> {
        match method {
            AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
                self.cleanup();
                self.send(method_frame(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                ));
                self.linger_until = Some(tokio::time::Instant::now() + CLOSE_LINGER_MAX);
                Ok(false)
            }
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => Ok(false),
            AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(_)) => {
                self.send(method_frame(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                        connection::UpdateSecretOk {},
                    )),
                ));
                Ok(true)
            }
            other => Err(
                AmqpError::connection(COMMAND_INVALID, "unimplemented method")
                    .on(other.get_amqp_class_id(), other.get_amqp_method_id()),
            ),
        }
    }

    fn flush_acks(&mut self) -> Result<(), AmqpError> {
        let mut failed = Vec::new();
        for (id, channel) in self.channels.iter_mut() {
            if let Err(error) = channel.flush_acks() {
                failed.push((*id, error));
            }
        }
        for (id, error) in failed {
            if error.hard {
                return Err(error);
            }
            if let Some(mut channel) = self.channels.remove(&id) {
                channel.close_with(self, &error);
                self.channels.insert(id, channel);
            }
        }
        Ok(())
    }

    /// Graceful shutdown: every publish already read gets its confirm (basic.ack once durable,
    /// basic.nack if its store failed; bounded), then connection.close 320 CONNECTION_FORCED
    /// and a bounded wait for close-ok.
    async fn close_for_shutdown(&mut self) {
        self.close_forced("broker forced connection closure with reason 'shutdown'")
            .await;
    }

    /// The vhost was deleted: as a shutdown, with RabbitMQ's reason.
    async fn close_for_vhost_deletion(&mut self) {
        let text = format!("vhost '{}' is deleted", self.vhost.vhost_name());
        tracing::info!(peer = %self.peer, vhost = self.vhost.vhost_name(), "closing a connection: its vhost was deleted");
        self.close_forced(&text).await;
    }

    async fn close_forced(&mut self, text: &str) {
        let confirm_loops: Vec<_> = self
            .channels
            .values_mut()
            .filter_map(Channel::finish_confirms)
            .collect();
        let answered = async {
            for confirm_loop in confirm_loops {
                let _ = confirm_loop.await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_CONFIRMS_MAX, answered)
            .await
            .is_err()
        {
            tracing::warn!(peer = %self.peer, "shutdown: confirms still pending after {SHUTDOWN_CONFIRMS_MAX:?}; closing anyway");
        }
        let error = AmqpError::connection(CONNECTION_FORCED, text.to_string());
        self.close_within(error, SHUTDOWN_CLOSE_OK_MAX).await;
    }

    /// connection.close with the error, then wait (briefly) for close-ok.
    pub(crate) async fn close_with(&mut self, error: AmqpError) {
        self.close_within(error, CLOSE_LINGER_MAX).await;
    }

    async fn close_within(&mut self, error: AmqpError, close_ok_wait_max: Duration) {
        tracing::debug!(peer = %self.peer, code = error.code, text = %error.text, "AMQP connection error");
        self.cleanup();
        self.send(method_frame(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: error.code,
                reply_text: ShortString::from(error.reply_text()),
                class_id: error.class_id,
                method_id: error.method_id,
            })),
        ));
        let deadline = tokio::time::Instant::now() + close_ok_wait_max;
        self.linger_until = Some(deadline);
        // Everything but close-ok is ignored now (AMQP 0-9-1 §2.2.4).
        while let Ok(Ok(frame)) = tokio::time::timeout_at(deadline, self.read_frame()).await {
            if frame.kind == FRAME_METHOD && frame.channel == 0 {
                if let Ok(AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) =
                    decode_method(&frame.payload)
                {
                    break;
                }
            }
        }
    }

    /// Reads and drops whatever the peer still sends until it closes the socket (or the
    /// deadline passes), so that closing does not reset a connection it is still writing to.
    async fn discard_until_eof(&mut self, deadline: tokio::time::Instant) {
        let mut sink = vec![0u8; 16 << 10];
        while let Ok(Ok(read)) =
            tokio::time::timeout_at(deadline, self.reader.read(&mut sink)).await
        {
            if read == 0 {
                return;
            }
        }
        tracing::debug!(peer = %self.peer, "AMQP peer did not close its end after connection.close");
    }

    /// Channels close (unacked deliveries requeued), exclusive queues go.
    fn cleanup(&mut self) {
        if std::mem::take(&mut self.counted) {
            self.vhost.uncount_connection();
        }
        for (_, mut channel) in self.channels.drain() {
            channel.release();
        }
        self.vhost.connection_closed(self.id);
    }
}

/// What woke a connection waiting for its next frame.
enum Wake<T> {
    Shutdown,
    VhostDeleted,
    Frame(T),
}

/// Resolves once the vhost is deleted; never, if that cannot happen any more.
async fn vhost_deleted(deleted: &mut watch::Receiver<bool>) {
    if deleted.wait_for(|gone| *gone).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resolves once `shutdown` turns true; never, if its sender is gone without turning it.
pub(crate) async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// How long a failed login waits before its connection.close.
const FAILED_LOGIN_DELAY: Duration = Duration::from_millis(100);

impl Connection {
    /// RabbitMQ's permission check: `access` to the exchange or queue `name`, refused with 403
    /// and the text of the reference (Debian's RabbitMQ 3.10, which does not name the kind of
    /// access). Permissions are read again whenever the user store changed, so a grant or a
    /// revocation applies to open connections too, as in RabbitMQ.
    pub(crate) fn check_access(
        &mut self,
        access: Access,
        kind: &str,
        name: &str,
    ) -> Result<(), AmqpError> {
        let store = &self.context.config.user_store;
        let generation = store.generation();
        if generation != self.permissions_generation {
            self.permissions = store.permissions(&self.user, self.vhost.vhost_name());
            self.permissions_generation = generation;
        }
        if self
            .permissions
            .as_ref()
            .is_some_and(|permissions| permissions.allows(access, name))
        {
            return Ok(());
        }
        let shown = if name.is_empty() { "amq.default" } else { name };
        tracing::debug!(user = %self.user, access = access.name(), kind, name = shown, "AMQP access refused");
        Err(AmqpError::channel(
            ACCESS_REFUSED,
            format!(
                "access to {kind} '{shown}' in vhost '{}' refused for user '{}'",
                self.vhost.vhost_name(),
                self.user
            ),
        ))
    }
}

fn access_refused(mechanism: &str) -> AmqpError {
    AmqpError::connection(
        ACCESS_REFUSED,
        format!("Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."),
    )
}

/// The user name and password of a PLAIN ("\0user\0password") or AMQPLAIN (a table with LOGIN
/// and PASSWORD, without its length prefix) response.
fn credentials(mechanism: &str, response: &[u8]) -> Option<(String, String)> {
    match mechanism {
        "PLAIN" => {
            let mut parts = response.split(|b| *b == 0);
            let _authzid = parts.next()?;
            let user = std::str::from_utf8(parts.next()?).ok()?.to_string();
            let password = std::str::from_utf8(parts.next()?).ok()?.to_string();
            Some((user, password))
        }
        "AMQPLAIN" => {
            let mut framed = (response.len() as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(response);
            // The response is the client's to shape: bound its nesting before the recursive parser.
            sluice_broker::vhost::field_table::scan_field_table(
                &framed,
                sluice_broker::vhost::field_table::FIELD_TABLE_DEPTH_MAX,
            )
            .ok()?;
            let (_, table) = amq_protocol::types::parsing::parse_field_table(&framed[..]).ok()?;
            let get = |key: &str| match table.inner().get(key)? {
                AMQPValue::LongString(s) => {
                    Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
                _ => None,
            };
            Some((get("LOGIN")?, get("PASSWORD")?))
        }
        _ => None,
    }
}

pub(crate) fn method_error(error: MethodError) -> AmqpError {
    match error {
        MethodError::Unknown(class_id, method_id) => AmqpError::connection(
            NOT_IMPLEMENTED,
            format!("unknown method {class_id}.{method_id}"),
        )
        .on(class_id, method_id),
        MethodError::TooDeep(class_id, method_id) => AmqpError::connection(
            FRAME_ERROR,
            format!(
                "method {class_id}.{method_id}: field table nested deeper than {} levels",
                sluice_broker::vhost::field_table::FIELD_TABLE_DEPTH_MAX
            ),
        )
        .on(class_id, method_id),
        MethodError::Syntax(class_id, method_id) => AmqpError::connection(
            FRAME_ERROR,
            format!("cannot decode the arguments of method {class_id}.{method_id}"),
        )
        .on(class_id, method_id),
    }
}
