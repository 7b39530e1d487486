use std::sync::Arc;

use sluice_broker::replication::ClusterBroker;
use sluice_broker::Broker;

use crate::connection::ResponseMemory;
use crate::fetch_session::FetchSessions;
use crate::security::{KafkaSecurity, Principal};

/// Listener-level settings of the Kafka front end.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Host and port returned in Metadata and FindCoordinator (the listen address by default).
    pub advertised_host: String,
    pub advertised_port: i32,
    /// Largest request frame accepted (`socket.request.max.bytes`); larger closes the connection.
    pub request_bytes_max: usize,
    /// Bytes of request frames and of fetch responses waiting to be written that all
    /// connections together may hold (Kafka's `queued.max.request.bytes` for requests): readers
    /// wait when it is spent, fetches answer with less data.
    pub queued_request_bytes_max: usize,
    /// Most record bytes one Fetch response carries, whatever the request asks (Kafka's
    /// `fetch.max.bytes`); only a first batch larger than this is sent whole (KIP-74).
    pub fetch_bytes_max: usize,
    /// A connection that sends no request for this long is closed (`connections.max.idle.ms`).
    pub connection_idle_ms_max: u64,
    /// Connections the listener serves at once (Kafka's `max.connections`); one more is
    /// accepted and closed at once.
    pub connections_max: usize,
}

impl KafkaConfig {
    /// Kafka's `socket.request.max.bytes`.
    pub const REQUEST_BYTES_MAX_DEFAULT: usize = 100 << 20;
    /// Kafka's `queued.max.request.bytes` is unbounded by default; 512 MiB is ours.
    pub const QUEUED_REQUEST_BYTES_MAX_DEFAULT: usize = 512 << 20;
    /// Kafka's `fetch.max.bytes`: 55 MiB.
    pub const FETCH_BYTES_MAX_DEFAULT: usize = 57_671_680;
    /// Kafka's `connections.max.idle.ms`: 10 minutes.
    pub const CONNECTION_IDLE_MS_MAX_DEFAULT: u64 = 600_000;
    /// Kafka's `max.connections` is unlimited by default; ours is generous but finite.
    pub const CONNECTIONS_MAX_DEFAULT: usize = 10_000;

    /// Defaults for everything but where clients are told to connect.
    pub fn new(advertised_host: String, advertised_port: i32) -> KafkaConfig {
        KafkaConfig {
            advertised_host,
            advertised_port,
            request_bytes_max: Self::REQUEST_BYTES_MAX_DEFAULT,
            queued_request_bytes_max: Self::QUEUED_REQUEST_BYTES_MAX_DEFAULT,
            fetch_bytes_max: Self::FETCH_BYTES_MAX_DEFAULT,
            connection_idle_ms_max: Self::CONNECTION_IDLE_MS_MAX_DEFAULT,
            connections_max: Self::CONNECTIONS_MAX_DEFAULT,
        }
    }
}

/// What every request handler gets: the broker, the listener config and who is asking.
pub struct RequestContext {
    pub broker: Arc<Broker>,
    pub config: Arc<KafkaConfig>,
    pub client_id: String,
    pub client_host: String,
    /// Cluster mode (`--peers`): partitions are Raft groups and topics live in the metadata
    /// group; `None` on a single node.
    pub cluster: Option<Arc<ClusterBroker>>,
    /// The connection's share of the memory budget for responses (`None`: not accounted, for
    /// handlers called without a connection).
    pub(crate) response_memory: Option<ResponseMemory>,
    /// The listener's incremental fetch sessions (KIP-227).
    pub(crate) fetch_sessions: Arc<FetchSessions>,
    /// The listener's share sessions (KIP-932).
    pub(crate) share_sessions: Arc<crate::share_session::ShareSessions>,
    /// Tells this connection from the listener's others (0: handlers called without one).
    pub(crate) connection_id: u64,
    /// The listener's security settings.
    pub security: Arc<KafkaSecurity>,
    /// Who the connection acts as (`User:ANONYMOUS` until it authenticates).
    pub principal: Arc<Principal>,
    /// Until when the connection reads no request: a client over its quota is muted for its
    /// throttle time (KIP-219), as Kafka mutes the channel.
    pub(crate) muted_until: Arc<parking_lot::Mutex<Option<std::time::Instant>>>,
}

impl RequestContext {
    /// A copy for the same connection, to change the client id or the principal in.
    pub(crate) fn derive(&self) -> RequestContext {
        RequestContext {
            broker: Arc::clone(&self.broker),
            config: Arc::clone(&self.config),
            client_id: self.client_id.clone(),
            client_host: self.client_host.clone(),
            cluster: self.cluster.clone(),
            response_memory: self.response_memory.clone(),
            fetch_sessions: Arc::clone(&self.fetch_sessions),
            share_sessions: Arc::clone(&self.share_sessions),
            connection_id: self.connection_id,
            security: Arc::clone(&self.security),
            principal: Arc::clone(&self.principal),
            muted_until: Arc::clone(&self.muted_until),
        }
    }

    /// Whether this connection's principal may do `operation` on a resource.
    pub(crate) fn allowed(
        &self,
        operation: sluice_auth::Operation,
        resource_type: sluice_auth::ResourceType,
        name: &str,
    ) -> bool {
        self.security.authorizer.authorize(
            &self.principal.name,
            self.principal.super_user,
            &self.client_host,
            operation,
            resource_type,
            name,
        )
    }

    /// The user client quotas are matched against: the principal without its `User:` prefix.
    pub(crate) fn quota_user(&self) -> &str {
        self.principal
            .name
            .strip_prefix("User:")
            .unwrap_or(&self.principal.name)
    }

    /// Stops reading this connection for `throttle` (a throttled client, KIP-219); a longer
    /// mute already in place stays.
    pub(crate) fn mute_for(&self, throttle: std::time::Duration) {
        let until = std::time::Instant::now() + throttle;
        let mut muted = self.muted_until.lock();
        if muted.is_none_or(|at| at < until) {
            *muted = Some(until);
        }
    }
}
