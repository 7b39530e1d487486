use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_broker::replication::ClusterBroker;
use sluice_broker::Broker;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::connection::{
    serve_connection_until, serve_tls_connection_until, shutdown_requested, RequestMemory,
};
use crate::consumer_protocol::KafkaConsumerProtocol;
use crate::fetch_session::FetchSessions;
use crate::security::{KafkaSecurity, Principal};
use crate::{KafkaConfig, RequestContext};

/// At most one warning per this period about connections refused over the limit.
const REFUSED_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// The Kafka listener: accepts connections and serves each on its own task.
pub struct KafkaServer {
    listener: TcpListener,
    broker: Arc<Broker>,
    config: Arc<KafkaConfig>,
    request_memory: Arc<RequestMemory>,
    fetch_sessions: Arc<FetchSessions>,
    share_sessions: Arc<crate::share_session::ShareSessions>,
    cluster: Option<Arc<ClusterBroker>>,
    /// One permit per connection being served (`connections_max`).
    connections: Arc<Semaphore>,
    security: Arc<KafkaSecurity>,
}

impl KafkaServer {
    pub async fn bind(
        address: SocketAddr,
        broker: Arc<Broker>,
        config: KafkaConfig,
    ) -> std::io::Result<KafkaServer> {
        let listener = TcpListener::bind(address).await?;
        let request_memory = Arc::new(RequestMemory::new(config.queued_request_bytes_max));
        let connections = Arc::new(Semaphore::new(
            config.connections_max.min(Semaphore::MAX_PERMITS),
        ));
        Ok(KafkaServer {
            listener,
            broker,
            config: Arc::new(config),
            request_memory,
            fetch_sessions: Arc::default(),
            share_sessions: Arc::default(),
            cluster: None,
            connections,
            security: Arc::default(),
        })
    }

    /// The listener's security protocol, TLS, users and authorizer.
    pub fn with_security(mut self, security: KafkaSecurity) -> KafkaServer {
        self.security = Arc::new(security);
        self
    }

    /// Cluster mode: partitions are Raft groups, topics live in the metadata group.
    pub fn with_cluster(mut self, cluster: Arc<ClusterBroker>) -> KafkaServer {
        self.cluster = Some(cluster);
        self
    }

    /// Lets the group coordinator move groups between the classic and the consumer protocol:
    /// it reads the classic consumer protocol's formats through this crate.
    fn enable_protocol_migration(&self) {
        let broker = Arc::downgrade(&self.broker);
        let cluster = self.cluster.clone();
        let topics = move || -> BTreeMap<String, i32> {
            match (&cluster, broker.upgrade()) {
                (Some(cluster), _) => cluster
                    .metadata()
                    .topics
                    .values()
                    .map(|t| (t.name.clone(), t.assignments.len() as i32))
                    .collect(),
                (None, Some(broker)) => broker
                    .topics()
                    .iter()
                    .filter(|t| !t.is_internal())
                    .map(|t| (t.name().to_string(), t.partition_count()))
                    .collect(),
                (None, None) => BTreeMap::new(),
            }
        };
        self.broker
            .group_coordinator()
            .enable_protocol_migration(Arc::new(KafkaConsumerProtocol), Box::new(topics));
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` turns true, then drains: the listener closes (new connections
    /// are refused), each connection answers the requests it already read and closes, and
    /// this returns once every connection is closed. The caller bounds how long it waits.
    ///
    /// A connection over `connections_max` is accepted and closed at once, with a warning
    /// (Kafka instead stops accepting until one closes; closing lets the client see it now).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        self.enable_protocol_migration();
        // Every connection task holds a clone; `recv` gives None once the last one ended.
        let (alive, mut all_closed) = mpsc::channel::<()>(1);
        let mut refused_since_warning = 0u64;
        let mut last_warning: Option<Instant> = None;
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let Ok(connection) = Arc::clone(&self.connections).try_acquire_owned()
                        else {
                            drop(stream);
                            refused_since_warning += 1;
                            if last_warning.is_none_or(|at| at.elapsed() >= REFUSED_WARN_INTERVAL) {
                                tracing::warn!(
                                    %peer,
                                    refused = refused_since_warning,
                                    connections_max = self.config.connections_max,
                                    "kafka connection limit reached: closing new connections"
                                );
                                refused_since_warning = 0;
                                last_warning = Some(Instant::now());
                            }
                            continue;
                        };
                        let context = RequestContext {
                            broker: Arc::clone(&self.broker),
                            config: Arc::clone(&self.config),
                            client_id: String::new(),
                            client_host: peer.ip().to_string(),
                            cluster: self.cluster.clone(),
                            response_memory: None,
                            fetch_sessions: Arc::clone(&self.fetch_sessions),
                            share_sessions: Arc::clone(&self.share_sessions),
                            connection_id: 0,
                            security: Arc::clone(&self.security),
                            principal: Default::default(),
                            muted_until: Default::default(),
                        };
                        let request_memory = Arc::clone(&self.request_memory);
                        let shutdown = shutdown.clone();
                        let alive = alive.clone();
                        // Listed by the HTTP API while the connection is served.
                        let registered = self.broker.connections().register(
                            sluice_broker::Protocol::Kafka,
                            peer,
                            None,
                        );
                        let tls = self.security.tls.as_ref().map(|tls| tls.acceptor());
                        tokio::spawn(async move {
                            match tls {
                                None => {
                                    serve_connection_until(
                                        stream, peer, context, request_memory, shutdown,
                                    )
                                    .await
                                }
                                Some(acceptor) => {
                                    serve_tls(acceptor, stream, peer, context, request_memory, shutdown)
                                        .await
                                }
                            }
                            drop(registered);
                            drop(connection);
                            drop(alive);
                        });
                    }
                    Err(error) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
                () = shutdown_requested(&mut shutdown) => break,
            }
        }
        drop(self.listener);
        drop(alive);
        let _ = all_closed.recv().await;
        tracing::info!("kafka listener drained: every connection is closed");
    }
}

/// A TLS handshake must finish within this.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Completes the TLS handshake, names the connection by its client certificate if it sent
/// one (Kafka's SSL principal), then serves it. A failed handshake only closes this connection.
async fn serve_tls(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    mut context: RequestContext,
    request_memory: Arc<RequestMemory>,
    shutdown: watch::Receiver<bool>,
) {
    let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::warn!(%peer, %error, "Kafka TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "Kafka TLS handshake timed out");
            return;
        }
    };
    let certificate = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| sluice_auth::tls::subject_distinguished_name(leaf));
    if let Some(subject) = certificate {
        // On SASL_SSL the SASL exchange names the principal instead.
        if !context.security.protocol.uses_sasl() {
            context.principal = Arc::new(Principal::certificate(&subject));
        }
    }
    serve_tls_connection_until(stream, peer, context, request_memory, shutdown).await
}
