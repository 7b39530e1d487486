//! Sluice's HTTP API: JSON over the broker for operators, the CLI and the web UI, plus
//! `/metrics` (Prometheus text) and `/api/openapi.json`. A front end only: every handler
//! translates to calls on [`Broker`], its [`GroupCoordinator`](sluice_broker::GroupCoordinator)
//! and the AMQP [`VirtualHosts`]; nothing here touches storage.
//!
//! Routes are registered through `utoipa-axum`, which takes each route's path and method from
//! the handler's `#[utoipa::path]`, so the served OpenAPI document cannot drift from the router.
//! See docs/http-api.md for the endpoints and their JSON shapes.

pub mod auth;
mod encoded;
mod error;
mod extract;
mod field_value;
mod kafka_forward;
pub mod model;
mod request_metrics;
mod routes;
mod tls_listener;
mod traffic;
mod ui;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use sluice_broker::vhost::VirtualHosts;
use sluice_broker::Broker;
use tokio::sync::watch;

pub use error::ApiError;

/// Everything the API serves from, given by the binary.
pub struct HttpContext {
    pub broker: Arc<Broker>,
    /// The AMQP virtual hosts.
    pub vhosts: Arc<VirtualHosts>,
    /// Who may log in: the one user store of every protocol.
    pub users: std::sync::Arc<sluice_auth::UserStore>,
    /// RabbitMQ's vhost limits (max-connections, max-queues).
    pub vhost_limits: std::sync::Arc<sluice_auth::VhostLimits>,
    /// Renders `/metrics`; without one `/metrics` answers an empty exposition.
    pub metrics: Option<PrometheusHandle>,
    /// This node, as Kafka clients see it.
    pub node: model::NodeInfo,
    /// Every listener of the process (shown by the overview).
    pub listeners: Vec<model::ListenerInfo>,
    pub disk_free_limit_bytes: u64,
    pub memory_high_watermark_bytes: u64,
    /// This node's cluster layer in cluster mode (`--peers`).
    pub cluster: Option<Arc<sluice_broker::replication::ClusterBroker>>,
}

/// The router's shared state.
pub struct AppState {
    pub(crate) context: HttpContext,
    started_at: Instant,
    /// The protocol listeners are accepting (readiness).
    serving: AtomicBool,
    pub(crate) traffic: traffic::TrafficSampler,
    /// Connection ids for the AMQP sessions HTTP requests open (get, move): counted down from
    /// the top so they never meet the AMQP listener's, which count up from 1.
    next_session_connection: AtomicU64,
    /// Built with the router, served at `/api/openapi.json`.
    openapi: std::sync::OnceLock<serde_json::Value>,
}

impl AppState {
    pub(crate) fn session_connection_id(&self) -> u64 {
        self.next_session_connection.fetch_sub(1, Ordering::Relaxed)
    }
}

/// The API: build it once, take its router, mark it serving once the listeners are up.
#[derive(Clone)]
pub struct HttpApi {
    state: Arc<AppState>,
}

impl HttpApi {
    pub fn new(context: HttpContext) -> HttpApi {
        HttpApi {
            state: Arc::new(AppState {
                context,
                started_at: Instant::now(),
                serving: AtomicBool::new(false),
                traffic: traffic::TrafficSampler::default(),
                next_session_connection: AtomicU64::new(u64::MAX),
                openapi: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Readiness follows this: true once every protocol listener accepts, false at shutdown.
    pub fn set_serving(&self, serving: bool) {
        self.state.serving.store(serving, Ordering::Release);
    }

    /// The axum router of every endpoint (auth applied) and of the web UI at `/`.
    pub fn router(&self) -> Router {
        routes::router(Arc::clone(&self.state))
            .0
            .merge(ui::router())
            .layer(axum::middleware::from_fn(ui::omit_challenge_for_scripts))
    }

    /// The OpenAPI document the router serves at `/api/openapi.json`.
    pub fn openapi(&self) -> utoipa::openapi::OpenApi {
        routes::router(Arc::clone(&self.state)).1
    }

    /// Samples traffic counters every few seconds for the rates the API reports; the task ends
    /// when the API is dropped.
    pub fn start_sampling(&self) {
        traffic::start(Arc::downgrade(&self.state));
    }
}

/// A bound HTTP listener.
pub struct HttpServer {
    listener: tokio::net::TcpListener,
    api: HttpApi,
    /// HTTPS: the listener's TLS settings.
    tls: Option<Arc<sluice_auth::ReloadingTls>>,
}

impl HttpServer {
    pub async fn bind(address: SocketAddr, api: HttpApi) -> std::io::Result<HttpServer> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        Ok(HttpServer {
            listener,
            api,
            tls: None,
        })
    }

    /// The same API over TLS (HTTPS).
    pub async fn bind_tls(
        address: SocketAddr,
        api: HttpApi,
        tls: Arc<sluice_auth::ReloadingTls>,
    ) -> std::io::Result<HttpServer> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        Ok(HttpServer {
            listener,
            api,
            tls: Some(tls),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` turns true; requests in progress then finish.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
        if let Some(tls) = self.tls {
            let service = self
                .api
                .router()
                .layer(axum::middleware::map_request(tls_listener::peer_address))
                .into_make_service_with_connect_info::<tls_listener::TlsPeer>();
            return axum::serve(tls_listener::TlsListener::new(self.listener, tls), service)
                .with_graceful_shutdown(async move {
                    let _ = shutdown.wait_for(|stop| *stop).await;
                })
                .await;
        }
        let service = self
            .api
            .router()
            .into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(self.listener, service)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            })
            .await
    }
}
