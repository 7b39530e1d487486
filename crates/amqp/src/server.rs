use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_auth::{ReloadingTls, UserStore, VhostLimits};
use sluice_broker::vhost::VirtualHosts;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::connection::{serve_connection, shutdown_requested};

#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// The users, their passwords' keys and their permissions.
    pub user_store: Arc<UserStore>,
    /// Each vhost's `max-connections` and `max-queues`.
    pub vhost_limits: Arc<VhostLimits>,
    /// Largest frame we accept and propose in connection.tune.
    pub frame_max: u32,
    pub channel_max: u16,
    /// Heartbeat interval proposed in connection.tune, seconds (0 = off).
    pub heartbeat_s: u16,
    /// Largest message body accepted (406 PRECONDITION_FAILED beyond).
    pub message_bytes_max: u64,
    /// A connection that has not completed its handshake (protocol header to connection.open)
    /// this long after connecting is closed (RabbitMQ's `handshake_timeout`, also 10 s).
    pub handshake_timeout: std::time::Duration,
    /// Connections each listener serves at once; one more is accepted and closed at once
    /// (RabbitMQ's `connection_max`, there unlimited by default).
    pub connections_max_per_listener: usize,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            user_store: UserStore::in_memory(),
            vhost_limits: VhostLimits::in_memory(),
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat_s: 60,
            message_bytes_max: 16 << 20,
            handshake_timeout: std::time::Duration::from_secs(10),
            connections_max_per_listener: 10_000,
        }
    }
}

pub(crate) struct ServerContext {
    pub vhosts: Arc<VirtualHosts>,
    pub config: AmqpConfig,
    pub next_connection_id: AtomicU64,
}

/// At most one warning per this period about connections refused over the limit.
const REFUSED_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// The AMQP listeners: accept connections and serve each on its own task.
pub struct AmqpServer {
    /// Each listener with its TLS settings (amqps) or None (plain AMQP).
    listeners: Vec<(TcpListener, Option<Arc<ReloadingTls>>)>,
    context: Arc<ServerContext>,
}

impl AmqpServer {
    pub async fn bind(
        addresses: &[SocketAddr],
        vhosts: Arc<VirtualHosts>,
        config: AmqpConfig,
    ) -> std::io::Result<AmqpServer> {
        let mut listeners = Vec::new();
        for address in addresses {
            listeners.push((TcpListener::bind(address).await?, None));
        }
        Ok(AmqpServer {
            listeners,
            context: Arc::new(ServerContext {
                vhosts,
                config,
                next_connection_id: AtomicU64::new(1),
            }),
        })
    }

    /// Adds AMQP-over-TLS listeners (amqps).
    pub async fn bind_tls(
        &mut self,
        addresses: &[SocketAddr],
        tls: Arc<ReloadingTls>,
    ) -> std::io::Result<()> {
        for address in addresses {
            self.listeners
                .push((TcpListener::bind(address).await?, Some(Arc::clone(&tls))));
        }
        Ok(())
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter(|(_, tls)| tls.is_none())
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    pub fn tls_local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter(|(_, tls)| tls.is_some())
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// Serves until `shutdown` turns true, then drains: the listeners close, each connection
    /// answers its pending confirms and is closed with 320 CONNECTION_FORCED, and this returns
    /// once every connection is gone. The caller bounds how long it waits.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        // Every connection task holds a clone; `recv` gives None once the last one ended.
        let (alive, mut all_closed) = mpsc::channel::<()>(1);
        let mut tasks = Vec::new();
        for (listener, tls) in self.listeners {
            let context = Arc::clone(&self.context);
            let mut shutdown = shutdown.clone();
            let alive = alive.clone();
            let connections_max = context.config.connections_max_per_listener;
            // One permit per connection this listener serves.
            let connections = Arc::new(Semaphore::new(connections_max.min(Semaphore::MAX_PERMITS)));
            tasks.push(tokio::spawn(async move {
                let mut refused_since_warning = 0u64;
                let mut last_warning: Option<Instant> = None;
                loop {
                    tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok((stream, peer)) => {
                                let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                                    drop(stream);
                                    refused_since_warning += 1;
                                    if last_warning.is_none_or(|at| at.elapsed() >= REFUSED_WARN_INTERVAL) {
                                        tracing::warn!(
                                            %peer,
                                            refused = refused_since_warning,
                                            connections_max,
                                            "AMQP connection limit of this listener reached: closing new connections"
                                        );
                                        refused_since_warning = 0;
                                        last_warning = Some(Instant::now());
                                    }
                                    continue;
                                };
                                let _ = stream.set_nodelay(true);
                                let context = Arc::clone(&context);
                                let shutdown = shutdown.clone();
                                let acceptor = tls.as_ref().map(|tls| tls.acceptor());
                                let alive = alive.clone();
                                tokio::spawn(async move {
                                    match acceptor {
                                        None => {
                                            let (read, write) = stream.into_split();
                                            serve_connection(Box::new(read), Box::new(write), peer, None, context, shutdown).await;
                                        }
                                        Some(acceptor) => {
                                            if let Some((read, write, certified)) = tls_handshake(acceptor, stream, peer).await {
                                                serve_connection(read, write, peer, certified, context, shutdown).await;
                                            }
                                        }
                                    }
                                    drop(permit);
                                    drop(alive);
                                });
                            }
                            Err(error) => {
                                tracing::warn!(%error, "AMQP accept failed");
                                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            }
                        },
                        () = shutdown_requested(&mut shutdown) => return,
                    }
                }
            }));
        }
        drop(alive);
        for task in tasks {
            let _ = task.await;
        }
        let _ = all_closed.recv().await;
        tracing::info!("AMQP listeners drained: every connection is closed");
    }
}

/// A TLS handshake must finish within this.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Completes an amqps handshake: the two halves, and the common name of a verified client
/// certificate (the user of EXTERNAL). A failed handshake only closes this connection.
async fn tls_handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) -> Option<(
    crate::connection::ReadHalf,
    crate::connection::WriteHalf,
    Option<String>,
)> {
    let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::warn!(%peer, %error, "AMQP TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::warn!(%peer, "AMQP TLS handshake timed out");
            return None;
        }
    };
    let certified = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| sluice_auth::tls::subject_common_name(leaf));
    let (read, write) = tokio::io::split(stream);
    Some((Box::new(read), Box::new(write), certified))
}
