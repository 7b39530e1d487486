//! The `sluice` binary: `sluice serve` parses configuration, opens the broker, serves the Kafka
//! protocol and shuts down cleanly on SIGTERM or Ctrl-C; the other subcommands are the client
//! (src/cli), which talks to a running broker's HTTP API.
//!
//! Graceful shutdown, bounded so that it always finishes: the listeners stop accepting; Kafka
//! connections answer the requests they already read (acks once durable) and close; AMQP
//! connections answer their pending confirms and get connection.close 320 CONNECTION_FORCED
//! (`DRAIN_MAX` for all of that); then the virtual host and the broker flush and close their
//! logs, which writes the clean-shutdown markers.

// The flags' doc comments are clap's --help text, written for a terminal (`[::1]:5672`,
// `KEY<SEPARATOR>VALUE`), not rustdoc markup.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

mod cli;
mod config;
mod metrics_recorder;
mod security_replication;

// glibc's malloc showed up as a quarter of the broker's CPU under AMQP load (many small,
// short-lived allocations across threads); mimalloc handles that pattern far better.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use sluice_amqp::{AmqpConfig, AmqpServer};
use sluice_auth::{AclStore, Authorizer, QuotaStore, ReloadingTls, UserStore, VhostLimits};
use sluice_broker::replication::ClusterBroker;
use sluice_broker::vhost::VirtualHosts;
use sluice_broker::Broker;
use sluice_cluster::node::{ClusterConfig, ClusterNode};
use sluice_cluster::transport::{TransportConfig, TransportTls};
use sluice_http::model::{ListenerInfo, NodeInfo};
use sluice_http::{HttpApi, HttpContext, HttpServer};
use sluice_kafka::{KafkaSecurity, KafkaServer};
use tokio::signal::unix::{signal, SignalKind};

use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::{Cli, Command, LogFormat};
use crate::metrics_recorder::{install_metrics_recorder, spawn_gauge_sampler};

/// How long connections get to drain on shutdown before the logs are closed regardless.
const DRAIN_MAX: std::time::Duration = std::time::Duration::from_secs(8);
/// Blocking tasks (appenders, group commits) still running when the runtime stops are waited
/// for this long at most.
/// The partition groups, the metadata group and the transport get this long to stop.
const CLUSTER_STOP_MAX: std::time::Duration = std::time::Duration::from_secs(5);
const RUNTIME_STOP_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// Turns transparent huge pages off for this process. mimalloc asks the kernel for them
/// (`MADV_HUGEPAGE` on its arenas), so the first touch of a freed and purged 2 MiB region made
/// the kernel zero a whole huge page: on a 3-node cluster with 8 partitions that was a quarter
/// of the brokers' CPU (`clear_page_erms` under socket reads), 3-4x the CPU per message and
/// half the throughput. The kernel checks the flag at each fault, so setting it before the
/// broker's buffers exist covers them all.
fn disable_transparent_huge_pages() -> std::io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and touches no memory of ours.
    let status = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if status == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn main() -> ExitCode {
    let parsed = Cli::parse();
    match parsed.command {
        Command::Serve(args) => match run_serve(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                // As `main() -> anyhow::Result` would print it: the error and its causes.
                eprintln!("Error: {error:?}");
                ExitCode::FAILURE
            }
        },
        Command::User(args) => cli::user::run(args),
        Command::Client(command) => {
            if let Ok(filter) = std::env::var("SLUICE_LOG") {
                // Off unless asked for: the client's output is for people and scripts.
                if let Ok(filter) = tracing_subscriber::EnvFilter::try_new(filter) {
                    tracing_subscriber::fmt()
                        .with_env_filter(filter)
                        .with_writer(std::io::stderr)
                        .init();
                }
            }
            cli::run(command)
        }
    }
}

fn run_serve(args: config::ServeArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    init_logging(&config.log_filter, config.log_format)?;
    if let Err(error) = disable_transparent_huge_pages() {
        // An old kernel or a sandbox may refuse it: the broker works, with more CPU per message.
        tracing::warn!(%error, "transparent huge pages stay on");
    }
    // Before the broker opens: the handles it caches bind to the recorder present then.
    let metrics_handle = install_metrics_recorder().context("installing the metrics recorder")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sluice")
        .build()
        .context("starting the async runtime")?;
    let served = runtime.block_on(serve(config, metrics_handle));
    runtime.shutdown_timeout(RUNTIME_STOP_MAX);
    served
}

/// Log lines go to stderr, as text or as one JSON object per line.
fn init_logging(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("invalid log filter '{filter}'"))?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    Ok(())
}

/// `metrics_handle` renders what the libraries record; the HTTP front end serves it on `/metrics`.
async fn serve(
    config: config::ServeConfig,
    metrics_handle: PrometheusHandle,
) -> anyhow::Result<()> {
    let data_dir = config.broker.data_dir.clone();
    let broker = Broker::open(config.broker)
        .with_context(|| format!("opening data directory {}", data_dir.display()))?;
    let advertised = (
        config.kafka.advertised_host.clone(),
        config.kafka.advertised_port,
    );
    let users = UserStore::open(&data_dir).context("opening the user store")?;
    for user in &config.declared_users {
        users
            .declare(
                &user.name,
                &user.password,
                declared_tags(user),
                user.loopback_only,
            )
            .await
            .with_context(|| format!("declaring user '{}'", user.name))?;
    }
    let acls = AclStore::open(&data_dir).context("opening the ACL store")?;
    let quotas = QuotaStore::open(&data_dir).context("opening the quota store")?;
    let vhost_limits = VhostLimits::open(&data_dir).context("opening the vhost limits")?;
    let authorizer = Authorizer::new(
        acls,
        config.security.super_users.clone(),
        config.security.allow_everyone_if_no_acl_found,
    );
    let tls = match &config.security.tls {
        Some(files) => Some(ReloadingTls::load(files.clone()).context("loading the TLS files")?),
        None => None,
    };
    let cluster = match &config.cluster {
        Some(settings) => Some(start_cluster(settings, &broker).await?),
        None => None,
    };
    if let Some(cluster) = &cluster {
        security_replication::start(
            cluster.node().clone(),
            security_replication::SecurityStores {
                users: users.clone(),
                acls: authorizer.store().clone(),
                quotas: quotas.clone(),
                vhost_limits: vhost_limits.clone(),
            },
            config
                .declared_users
                .iter()
                .map(|user| {
                    (
                        user.name.clone(),
                        user.password.clone(),
                        declared_tags(user),
                        user.loopback_only,
                    )
                })
                .collect(),
        );
    }
    let mut kafka_servers = Vec::new();
    for listener in &config.kafka_listeners {
        let mut kafka_config = config.kafka.clone();
        // Each listener advertises itself to the clients that reach it.
        kafka_config.advertised_port = listener.address.port() as i32;
        let security = KafkaSecurity {
            protocol: listener.protocol,
            tls: listener.protocol.uses_tls().then(|| tls.clone()).flatten(),
            users: users.clone(),
            authorizer: authorizer.clone(),
            quotas: quotas.clone(),
            sasl_mechanisms: config.security.sasl_mechanisms.clone(),
            reauthentication_ms: config.security.kafka_reauth_ms,
            ..KafkaSecurity::default()
        };
        let kafka = KafkaServer::bind(listener.address, broker.clone(), kafka_config)
            .await
            .with_context(|| format!("binding the Kafka listener on {}", listener.address))?
            .with_security(security);
        let kafka = match &cluster {
            Some(cluster) => kafka.with_cluster(cluster.clone()),
            None => kafka,
        };
        if !listener.protocol.uses_sasl() && config::needs_authentication(&listener.address) {
            tracing::warn!(listener = %listener.address, protocol = listener.protocol.name(), "a Kafka listener without authentication on a non-loopback address (--allow-unauthenticated)");
        } else if !listener.protocol.uses_sasl() && !listener.address.ip().is_loopback() {
            tracing::warn!(listener = %listener.address, protocol = listener.protocol.name(), "a Kafka listener without authentication on a private address: anyone on that network gets in");
        }
        kafka_servers.push(kafka);
    }
    let kafka_address = kafka_servers[0].local_addr()?;
    let disk_free_limit_bytes = config.vhost.disk_free_limit_bytes;
    let memory_high_watermark_bytes = config.vhost.memory_high_watermark_bytes;
    let vhosts = VirtualHosts::open(config.vhost, broker.clone())
        .context("opening the AMQP virtual hosts")?;
    vhosts.start();
    let gauge_sampler = spawn_gauge_sampler(broker.clone(), vhosts.clone(), metrics_handle.clone());
    let mut amqp_config = config.amqp;
    amqp_config.user_store = users.clone();
    amqp_config.vhost_limits = vhost_limits.clone();
    let mut amqp = bind_amqp(
        &config.amqp_listen,
        config.amqp_listen_is_default,
        &vhosts,
        amqp_config.clone(),
    )
    .await?;
    if !config.security.amqps_listen.is_empty() {
        let tls = tls
            .clone()
            .context("--amqps-listen needs --tls-cert and --tls-key")?;
        let server = match amqp.as_mut() {
            Some(server) => server,
            None => amqp.insert(
                AmqpServer::bind(&[], vhosts.clone(), amqp_config)
                    .await
                    .context("starting the AMQP server")?,
            ),
        };
        server
            .bind_tls(&config.security.amqps_listen, tls)
            .await
            .context("binding the amqps listeners")?;
    }
    let amqp_addresses: Vec<String> = amqp
        .as_ref()
        .map(|a| a.local_addrs().iter().map(|a| a.to_string()).collect())
        .unwrap_or_default();
    let http = match config.http_listen {
        Some(address) => {
            let mut listeners = vec![ListenerInfo {
                protocol: "kafka".into(),
                address: kafka_address.to_string(),
            }];
            listeners.extend(amqp_addresses.iter().map(|a| ListenerInfo {
                protocol: "amqp".into(),
                address: a.clone(),
            }));
            let api = HttpApi::new(HttpContext {
                broker: broker.clone(),
                vhosts: vhosts.clone(),
                users: users.clone(),
                vhost_limits: vhost_limits.clone(),
                metrics: Some(metrics_handle),
                node: NodeInfo {
                    node_id: broker.node_id(),
                    host: advertised.0,
                    kafka_port: advertised.1,
                    is_self: true,
                },
                listeners,
                disk_free_limit_bytes,
                memory_high_watermark_bytes,
                cluster: cluster.clone(),
            });
            let server = HttpServer::bind(address, api.clone())
                .await
                .with_context(|| format!("binding the HTTP listener on {address}"))?;
            let https = match (config.security.https_listen, &tls) {
                (Some(address), Some(tls)) => Some(
                    HttpServer::bind_tls(address, api.clone(), tls.clone())
                        .await
                        .with_context(|| format!("binding the HTTPS listener on {address}"))?,
                ),
                _ => None,
            };
            Some((server, api, https))
        }
        None => None,
    };
    let http_address = match &http {
        Some((server, _, _)) => server.local_addr()?.to_string(),
        None => "off".to_string(),
    };
    let data_dir_shown = std::fs::canonicalize(&data_dir).unwrap_or(data_dir);
    tracing::info!(
        kafka = %kafka_address,
        amqp = %if amqp_addresses.is_empty() { "off".to_string() } else { amqp_addresses.join(",") },
        http = %http_address,
        data_dir = %data_dir_shown.display(),
        "sluice is serving"
    );

    let (shutdown_sender, shutdown) = tokio::sync::watch::channel(false);
    let amqp_task = amqp.map(|amqp| tokio::spawn(amqp.run(shutdown.clone())));
    let http_api = http.as_ref().map(|(_, api, _)| api.clone());
    let http_task = http.map(|(server, api, https)| {
        api.start_sampling();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let https = https.map(|https| {
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    if let Err(error) = https.run(shutdown).await {
                        tracing::error!(%error, "the HTTPS listener failed");
                    }
                })
            });
            if let Err(error) = server.run(shutdown).await {
                tracing::error!(%error, "the HTTP listener failed");
            }
            if let Some(https) = https {
                let _ = https.await;
            }
        })
    });
    let kafka_tasks: Vec<_> = kafka_servers
        .into_iter()
        .map(|kafka| tokio::spawn(kafka.run(shutdown.clone())))
        .collect();
    if let Some(api) = &http_api {
        api.set_serving(true);
    }
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
    }
    if let Some(api) = &http_api {
        api.set_serving(false);
    }
    let _ = shutdown_sender.send(true);
    gauge_sampler.abort();
    let drained = async {
        for task in kafka_tasks {
            let _ = task.await;
        }
        if let Some(task) = amqp_task {
            let _ = task.await;
        }
        if let Some(task) = http_task {
            let _ = task.await;
        }
    };
    if tokio::time::timeout(DRAIN_MAX, drained).await.is_err() {
        tracing::warn!(
            "connections still open {DRAIN_MAX:?} after the shutdown signal: closing the logs anyway"
        );
    }
    if let Some(cluster) = cluster {
        if tokio::time::timeout(CLUSTER_STOP_MAX, cluster.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("the cluster layer did not stop within {CLUSTER_STOP_MAX:?}");
        }
    }
    tokio::task::spawn_blocking(move || {
        vhosts.shutdown();
        broker.shutdown()
    })
    .await
    .context("flushing on shutdown")?;
    Ok(())
}

/// Starts this node's cluster layer: the transport, the metadata group (bootstrapped from
/// --peers, joined through --join, or restarted from the data directory) and the replicas
/// assigned to it.
async fn start_cluster(
    settings: &config::ClusterSettings,
    broker: &std::sync::Arc<Broker>,
) -> anyhow::Result<std::sync::Arc<ClusterBroker>> {
    let mut cluster_config = ClusterConfig::new(
        settings.node_id,
        settings.cluster_listen,
        settings.peers.clone(),
        settings.kafka_advertised.clone(),
        broker.config().data_dir.clone(),
        broker.config().storage.clone(),
    );
    cluster_config.join = settings.join.clone();
    cluster_config.join_timeout = settings.join_timeout;
    if let Some(files) = &settings.tls {
        let tls = ReloadingTls::load(files.clone()).context("loading the cluster TLS files")?;
        let mut transport = TransportConfig::new(settings.node_id);
        let acceptor = tls.clone();
        transport.tls = Some(TransportTls {
            acceptor: std::sync::Arc::new(move || acceptor.acceptor()),
            connector: std::sync::Arc::new(move || {
                tls.connector()
                    .unwrap_or_else(|| unreachable!("the cluster's TLS files name a CA"))
            }),
        });
        cluster_config.transport = Some(transport);
    }
    let node = ClusterNode::start(cluster_config)
        .await
        .with_context(|| format!("starting the cluster node on {}", settings.cluster_listen))?;
    tracing::info!(
        node_id = settings.node_id,
        cluster = %settings.cluster_listen,
        peers = settings.peers.len(),
        "cluster node started"
    );
    Ok(ClusterBroker::start(
        node,
        broker.clone(),
        settings.default_replication_factor,
    ))
}

/// The tags of a user declared with `--amqp-users`.
fn declared_tags(user: &config::DeclaredUser) -> Vec<String> {
    if user.administrator {
        vec![sluice_auth::users::ADMINISTRATOR_TAG.to_string()]
    } else {
        Vec::new()
    }
}

/// Binds the AMQP listeners. Of the default pair, one that cannot bind (a machine without IPv6)
/// is skipped with a warning; an address the user gave must bind.
async fn bind_amqp(
    addresses: &[std::net::SocketAddr],
    is_default: bool,
    vhosts: &std::sync::Arc<VirtualHosts>,
    config: AmqpConfig,
) -> anyhow::Result<Option<AmqpServer>> {
    if addresses.is_empty() {
        return Ok(None);
    }
    let mut usable = Vec::new();
    for address in addresses {
        match std::net::TcpListener::bind(address) {
            Ok(probe) => {
                drop(probe);
                usable.push(*address);
            }
            Err(error) if is_default && address.is_ipv6() => {
                tracing::warn!(%address, %error, "AMQP listener skipped");
            }
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("binding the AMQP listener on {address}"))
            }
        }
    }
    let server = AmqpServer::bind(&usable, vhosts.clone(), config)
        .await
        .with_context(|| format!("binding the AMQP listeners on {usable:?}"))?;
    Ok(Some(server))
}
