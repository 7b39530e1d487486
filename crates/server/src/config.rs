//! Configuration: command-line flags, each also settable through a `SLUICE_*` environment
//! variable, over an optional TOML file (same names, with `_` for `-`), over built-in defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use sluice_amqp::AmqpConfig;
use sluice_auth::TlsFiles;
use sluice_broker::vhost::VhostConfig;
use sluice_broker::{BrokerConfig, GroupConfig};
use sluice_cluster::peers::PeerList;
use sluice_kafka::{KafkaConfig, SecurityProtocol};
use sluice_log::{Durability, LogConfig};

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: a durable message broker speaking Kafka and AMQP 0-9-1"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at startup: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker.
    Serve(ServeArgs),
    /// Users of every protocol: add, delete, passwd, list, permissions.
    User(crate::cli::user::UserArgs),
    #[command(flatten)]
    Client(crate::cli::ClientCommand),
}

/// Every flag can also be given as an environment variable (shown) or in the TOML file
/// named by --config; flags win over the environment, which wins over the file.
#[derive(Debug, Args, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct ServeArgs {
    /// TOML file with any of these settings (keys like `data_dir`, `kafka_listen`).
    #[arg(long, env = "SLUICE_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Directory holding all topics, offsets and metadata [default: ./data]
    #[arg(long, env = "SLUICE_DATA_DIR", value_name = "PATH")]
    pub data_dir: Option<PathBuf>,

    /// Kafka listeners, comma-separated, in Kafka's syntax: `PLAINTEXT://127.0.0.1:9092,
    /// SASL_SSL://0.0.0.0:9094` (also `SSL://`, `SASL_PLAINTEXT://`); a bare `HOST:PORT` is
    /// PLAINTEXT. The first is the one Metadata advertises to other nodes
    /// [default: 127.0.0.1:9092]
    #[arg(
        long,
        env = "SLUICE_KAFKA_LISTEN",
        value_name = "[PROTOCOL://]HOST:PORT,..."
    )]
    pub kafka_listen: Option<String>,

    /// Host name given to Kafka clients in Metadata [default: the listen address's IP]
    #[arg(long, env = "SLUICE_ADVERTISED_HOST", value_name = "HOST")]
    pub advertised_host: Option<String>,

    /// Create topics on first use (produce or metadata request) [default: true]
    #[arg(long, env = "SLUICE_AUTO_CREATE_TOPICS", value_name = "BOOL")]
    pub auto_create_topics: Option<bool>,

    /// Partition count of auto-created topics (Kafka's num.partitions) [default: 1]
    #[arg(long, env = "SLUICE_DEFAULT_PARTITIONS", value_name = "N")]
    pub default_partitions: Option<i32>,

    /// Keep a per-segment hash index of record keys and message-id headers in every topic, so
    /// messages are found by key or id without a scan; topics override it with
    /// `message.key.index.enable` [default: true]
    #[arg(long, env = "SLUICE_MESSAGE_KEY_INDEX", value_name = "BOOL")]
    pub message_key_index: Option<bool>,

    /// Largest record batch accepted (Kafka's message.max.bytes) [default: 1048588]
    #[arg(long, env = "SLUICE_MESSAGE_MAX_BYTES", value_name = "BYTES")]
    pub message_max_bytes: Option<u32>,

    /// Largest request frame accepted (socket.request.max.bytes) [default: 104857600]
    #[arg(long, env = "SLUICE_REQUEST_MAX_BYTES", value_name = "BYTES")]
    pub request_max_bytes: Option<usize>,

    /// Bytes of requests all connections may hold in progress at once; reading waits beyond
    /// it (queued.max.request.bytes) [default: 536870912]
    #[arg(long, env = "SLUICE_QUEUED_MAX_REQUEST_BYTES", value_name = "BYTES")]
    pub queued_max_request_bytes: Option<usize>,

    /// Most record bytes in one Fetch response, whatever the client asks; a first batch
    /// larger than this is still sent (fetch.max.bytes) [default: 57671680]
    #[arg(long, env = "SLUICE_FETCH_MAX_BYTES", value_name = "BYTES")]
    pub fetch_max_bytes: Option<usize>,

    /// Close a Kafka connection that sends no request for this long (connections.max.idle.ms)
    /// [default: 600000]
    #[arg(long, env = "SLUICE_CONNECTIONS_MAX_IDLE_MS", value_name = "MS")]
    pub connections_max_idle_ms: Option<u64>,

    /// Kafka connections served at once; one more is accepted and closed at once with a
    /// warning (max.connections) [default: 10000]
    #[arg(long, env = "SLUICE_KAFKA_MAX_CONNECTIONS", value_name = "N")]
    pub kafka_max_connections: Option<usize>,

    /// Forget an idempotent producer's sequence state after this long without a write
    /// (producer.id.expiration.ms) [default: 86400000]
    #[arg(long, env = "SLUICE_PRODUCER_ID_EXPIRATION_MS", value_name = "MS")]
    pub producer_id_expiration_ms: Option<i64>,

    /// Default durability: `batch` (group-committed fdatasync before acknowledging),
    /// `interval:<ms>` or `never`; topics override it with their `fsync` config [default: batch]
    #[arg(long, env = "SLUICE_FSYNC", value_name = "POLICY")]
    pub fsync: Option<String>,

    /// Segment size before rolling (log.segment.bytes) [default: 1073741824]
    #[arg(long, env = "SLUICE_SEGMENT_BYTES", value_name = "BYTES")]
    pub segment_bytes: Option<u64>,

    /// Segment age before rolling (log.roll.ms) [default: 604800000]
    #[arg(long, env = "SLUICE_SEGMENT_MS", value_name = "MS")]
    pub segment_ms: Option<i64>,

    /// Delete segments older than this; -1 keeps them (log.retention.ms) [default: 604800000]
    #[arg(long, env = "SLUICE_RETENTION_MS", value_name = "MS")]
    pub retention_ms: Option<i64>,

    /// Delete old segments while a partition is bigger; -1 = no limit [default: -1]
    #[arg(long, env = "SLUICE_RETENTION_BYTES", value_name = "BYTES")]
    pub retention_bytes: Option<i64>,

    /// How often retention runs [default: 300000]
    #[arg(long, env = "SLUICE_RETENTION_CHECK_INTERVAL_MS", value_name = "MS")]
    pub retention_check_interval_ms: Option<u64>,

    /// How often the log cleaner looks for compacted topics' partitions due for a pass
    /// (Kafka's log.cleaner.backoff.ms) [default: 15000]
    #[arg(long, env = "SLUICE_LOG_CLEANER_BACKOFF_MS", value_name = "MS")]
    pub log_cleaner_backoff_ms: Option<u64>,

    /// Wait before the first rebalance of a new group completes [default: 3000]
    #[arg(
        long,
        env = "SLUICE_GROUP_INITIAL_REBALANCE_DELAY_MS",
        value_name = "MS"
    )]
    pub group_initial_rebalance_delay_ms: Option<u64>,

    /// Smallest consumer session timeout accepted [default: 6000]
    #[arg(long, env = "SLUICE_GROUP_MIN_SESSION_TIMEOUT_MS", value_name = "MS")]
    pub group_min_session_timeout_ms: Option<i32>,

    /// Largest consumer session timeout accepted [default: 1800000]
    #[arg(long, env = "SLUICE_GROUP_MAX_SESSION_TIMEOUT_MS", value_name = "MS")]
    pub group_max_session_timeout_ms: Option<i32>,

    /// How often members of a consumer-protocol group (KIP-848) heartbeat
    /// (Kafka's group.consumer.heartbeat.interval.ms) [default: 5000]
    #[arg(
        long,
        env = "SLUICE_GROUP_CONSUMER_HEARTBEAT_INTERVAL_MS",
        value_name = "MS"
    )]
    pub group_consumer_heartbeat_interval_ms: Option<u64>,

    /// How long a silent member of a consumer-protocol group keeps its partitions
    /// (Kafka's group.consumer.session.timeout.ms) [default: 45000]
    #[arg(
        long,
        env = "SLUICE_GROUP_CONSUMER_SESSION_TIMEOUT_MS",
        value_name = "MS"
    )]
    pub group_consumer_session_timeout_ms: Option<u64>,

    /// AMQP 0-9-1 listeners, comma-separated, or `off`
    /// [default: 127.0.0.1:5672,[::1]:5672]
    #[arg(long, env = "SLUICE_AMQP_LISTEN", value_name = "HOST:PORT,...")]
    pub amqp_listen: Option<String>,

    /// More users as `name:password`, comma-separated, for AMQP and the HTTP API; they may
    /// connect from anywhere. `name:password:administrator` also lets the user change things
    /// through the HTTP API (others may only read). guest:guest always exists, is an
    /// administrator and may connect from loopback only, as in RabbitMQ; naming guest here
    /// changes its password
    #[arg(long, env = "SLUICE_AMQP_USERS", value_name = "USER:PASSWORD,...")]
    pub amqp_users: Option<String>,

    /// Heartbeat interval proposed to AMQP clients, seconds; 0 turns it off [default: 60]
    #[arg(long, env = "SLUICE_AMQP_HEARTBEAT", value_name = "SECONDS")]
    pub amqp_heartbeat: Option<u16>,

    /// Largest AMQP frame (connection.tune frame_max) [default: 131072]
    #[arg(long, env = "SLUICE_AMQP_FRAME_MAX", value_name = "BYTES")]
    pub amqp_frame_max: Option<u32>,

    /// Largest AMQP message body [default: 16777216]
    #[arg(long, env = "SLUICE_AMQP_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    pub amqp_max_message_bytes: Option<u32>,

    /// An AMQP connection that has not completed its handshake (protocol header to
    /// connection.open) this long after connecting is closed, as RabbitMQ's
    /// `handshake_timeout` [default: 10000]
    #[arg(long, env = "SLUICE_AMQP_HANDSHAKE_TIMEOUT_MS", value_name = "MS")]
    pub amqp_handshake_timeout_ms: Option<u64>,

    /// AMQP connections each listener serves at once; one more is accepted and closed at once
    /// with a warning [default: 10000]
    #[arg(long, env = "SLUICE_AMQP_MAX_CONNECTIONS", value_name = "N")]
    pub amqp_max_connections: Option<usize>,

    /// AMQP publishers are blocked (connection.blocked) while queued messages hold more memory
    /// than this [default: 40% of the machine's memory, as RabbitMQ's watermark]
    #[arg(long, env = "SLUICE_MEMORY_HIGH_WATERMARK_BYTES", value_name = "BYTES")]
    pub memory_high_watermark_bytes: Option<u64>,

    /// AMQP publishers are blocked while the data directory's disk has less free space
    /// [default: 52428800, RabbitMQ's 50 MB]
    #[arg(long, env = "SLUICE_DISK_FREE_LIMIT_BYTES", value_name = "BYTES")]
    pub disk_free_limit_bytes: Option<u64>,

    /// This node's id in a cluster (Kafka's broker.id); with --peers [default: 0]
    #[arg(long, env = "SLUICE_NODE_ID", value_name = "ID")]
    pub node_id: Option<u64>,

    /// Address of the node-to-node (Raft) transport; must be this node's address in --peers
    #[arg(long, env = "SLUICE_CLUSTER_LISTEN", value_name = "HOST:PORT")]
    pub cluster_listen: Option<SocketAddr>,

    /// Every member of the cluster, this node included, as ID@HOST:PORT (their
    /// --cluster-listen), comma-separated; the same list on every node. Without it the broker
    /// runs as one node, unreplicated
    #[arg(long, env = "SLUICE_PEERS", value_name = "ID@HOST:PORT,...")]
    pub peers: Option<String>,

    /// Join a running cluster instead of --peers: the --cluster-listen address of any running
    /// member (comma-separated for several). Needs --node-id and --cluster-listen. A node
    /// restarted later needs neither --join nor --peers: its data directory remembers
    #[arg(long, env = "SLUICE_JOIN", value_name = "HOST:PORT,...")]
    pub join: Option<String>,

    /// How long a joining node (--join) keeps asking while no member answers before it gives
    /// up and exits; 0 asks forever. A learner still catching up is answered, so a long
    /// catch-up does not count [default: 300]
    #[arg(long, env = "SLUICE_JOIN_TIMEOUT_SECS", value_name = "SECONDS")]
    pub join_timeout_secs: Option<u64>,

    /// Replication factor of topics created without one (CreateTopics with -1, auto-created
    /// topics) in a cluster (Kafka's default.replication.factor) [default: 1]
    #[arg(long, env = "SLUICE_DEFAULT_REPLICATION_FACTOR", value_name = "N")]
    pub default_replication_factor: Option<u16>,

    /// PEM certificate chain this node presents to the others (server and client: extended
    /// key usages serverAuth and clientAuth, naming the --cluster-listen IP). With
    /// --cluster-tls-key and --cluster-tls-ca, every node-to-node connection is mutual TLS
    #[arg(long, env = "SLUICE_CLUSTER_TLS_CERT", value_name = "FILE")]
    pub cluster_tls_cert: Option<PathBuf>,

    /// PEM private key of --cluster-tls-cert
    #[arg(long, env = "SLUICE_CLUSTER_TLS_KEY", value_name = "FILE")]
    pub cluster_tls_key: Option<PathBuf>,

    /// PEM CA certificates the other nodes' certificates are verified against
    #[arg(long, env = "SLUICE_CLUSTER_TLS_CA", value_name = "FILE")]
    pub cluster_tls_ca: Option<PathBuf>,
    /// HTTP API listener (JSON API, /metrics), or `off` [default: 127.0.0.1:8080]
    #[arg(long, env = "SLUICE_HTTP_LISTEN", value_name = "HOST:PORT")]
    pub http_listen: Option<String>,

    /// PEM certificate chain of every TLS listener (Kafka SSL/SASL_SSL, --amqps-listen)
    #[arg(long, env = "SLUICE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert
    #[arg(long, env = "SLUICE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates that client certificates are verified against; without it no
    /// client certificate is asked for
    #[arg(long, env = "SLUICE_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// Client certificates: `none`, `requested` (verified if sent) or `required` (Kafka's
    /// ssl.client.auth) [default: requested with --tls-client-ca, else none]
    #[arg(long, env = "SLUICE_TLS_CLIENT_AUTH", value_name = "MODE")]
    pub tls_client_auth: Option<String>,

    /// SASL mechanisms offered on SASL listeners, comma-separated
    /// [default: PLAIN,SCRAM-SHA-256,SCRAM-SHA-512]
    #[arg(long, env = "SLUICE_SASL_MECHANISMS", value_name = "MECHANISM,...")]
    pub sasl_mechanisms: Option<String>,

    /// A Kafka SASL session lasts this long before the client must re-authenticate (Kafka's
    /// connections.max.reauth.ms, KIP-368); 0: forever [default: 0]
    #[arg(long, env = "SLUICE_KAFKA_REAUTH_MS", value_name = "MS")]
    pub kafka_reauth_ms: Option<u64>,

    /// Kafka's allow.everyone.if.no.acl.found: a resource no ACL names is open to every
    /// principal. Turn it off on a secured broker [default: true]
    #[arg(
        long,
        env = "SLUICE_ALLOW_EVERYONE_IF_NO_ACL_FOUND",
        value_name = "BOOL"
    )]
    pub allow_everyone_if_no_acl_found: Option<bool>,

    /// Kafka's super.users: principals allowed everything, `;`-separated
    /// (`User:admin;User:ops`). Users tagged administrator are super users too
    #[arg(long, env = "SLUICE_SUPER_USERS", value_name = "PRINCIPAL;...")]
    pub super_users: Option<String>,

    /// AMQP 0-9-1 over TLS listeners (amqps, port 5671 by convention), comma-separated
    #[arg(long, env = "SLUICE_AMQPS_LISTEN", value_name = "HOST:PORT,...")]
    pub amqps_listen: Option<String>,

    /// The HTTP API over TLS (with --tls-cert), beside --http-listen or instead of it
    #[arg(long, env = "SLUICE_HTTPS_LISTEN", value_name = "HOST:PORT")]
    pub https_listen: Option<SocketAddr>,

    /// Let a Kafka listener on a wildcard (0.0.0.0, ::) or public address start without
    /// authentication (PLAINTEXT, or SSL without required client certificates) [default: false]
    #[arg(long, env = "SLUICE_ALLOW_UNAUTHENTICATED", value_name = "BOOL")]
    pub allow_unauthenticated: Option<bool>,

    /// Log filter in tracing's EnvFilter syntax, e.g. `info` or `sluice_kafka=debug` [default: info]
    #[arg(long, env = "SLUICE_LOG", value_name = "FILTER")]
    pub log: Option<String>,

    /// Log line format on stderr: `text` for people, `json` (one object per line) for log
    /// shippers [default: text]
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// How the server writes its log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The resolved settings of one broker process.
pub struct ServeConfig {
    pub broker: BrokerConfig,
    pub amqp: AmqpConfig,
    /// Empty: AMQP is off.
    pub amqp_listen: Vec<SocketAddr>,
    /// The listeners are the built-in default: one that cannot bind (no IPv6) is skipped.
    pub amqp_listen_is_default: bool,
    pub vhost: VhostConfig,
    pub kafka: KafkaConfig,
    /// Every Kafka listener, the first being `kafka_listen`.
    pub kafka_listeners: Vec<KafkaListener>,
    pub security: SecuritySettings,
    /// `None`: one node, unreplicated (no --peers).
    pub cluster: Option<ClusterSettings>,
    /// None: the HTTP API is off.
    pub http_listen: Option<SocketAddr>,
    /// Users named by --amqp-users, put into the user store at start.
    pub declared_users: Vec<DeclaredUser>,
    pub log_filter: String,
    pub log_format: LogFormat,
}

/// A user of `--amqp-users`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredUser {
    pub name: String,
    pub password: String,
    pub administrator: bool,
    pub loopback_only: bool,
}

/// One `--kafka-listen` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KafkaListener {
    pub address: SocketAddr,
    pub protocol: SecurityProtocol,
}

/// TLS, SASL, ACL and listener-safety settings.
#[derive(Debug, Clone)]
pub struct SecuritySettings {
    pub tls: Option<TlsFiles>,
    pub sasl_mechanisms: Vec<String>,
    pub kafka_reauth_ms: u64,
    pub allow_everyone_if_no_acl_found: bool,
    pub super_users: Vec<String>,
    pub amqps_listen: Vec<SocketAddr>,
    pub https_listen: Option<SocketAddr>,
}

/// `--kafka-listen`: `[PROTOCOL://]HOST:PORT,...`.
pub fn parse_kafka_listeners(list: &str) -> anyhow::Result<Vec<KafkaListener>> {
    let listeners = list
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let (protocol, address) = match item.split_once("://") {
                Some((name, address)) => (
                    SecurityProtocol::from_name(name).with_context(|| {
                        format!(
                            "unknown security protocol '{name}' in --kafka-listen (PLAINTEXT, \
                             SSL, SASL_PLAINTEXT or SASL_SSL)"
                        )
                    })?,
                    address,
                ),
                None => (SecurityProtocol::Plaintext, item),
            };
            let address = address
                .parse::<SocketAddr>()
                .with_context(|| format!("invalid --kafka-listen address '{address}'"))?;
            Ok(KafkaListener { address, protocol })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!listeners.is_empty(), "--kafka-listen names no listener");
    let mut addresses: Vec<SocketAddr> = listeners.iter().map(|l| l.address).collect();
    addresses.sort();
    addresses.dedup();
    anyhow::ensure!(
        addresses.len() == listeners.len(),
        "--kafka-listen names one address twice"
    );
    Ok(listeners)
}

/// Whether an unauthenticated listener on this address is refused without
/// --allow-unauthenticated: a wildcard or a publicly routable address. Loopback stays open as
/// it always was; a specific private, link-local or unique-local address starts with a
/// warning, because a cluster's nodes bind exactly such addresses with the fixed flags of
/// `sluice serve --peers ... --kafka-listen 10.0.0.1:9092`.
pub fn needs_authentication(address: &SocketAddr) -> bool {
    match address.ip() {
        std::net::IpAddr::V4(ip) => !(ip.is_loopback() || ip.is_private() || ip.is_link_local()),
        std::net::IpAddr::V6(ip) => {
            let unique_local = (ip.segments()[0] & 0xfe00) == 0xfc00;
            let link_local = (ip.segments()[0] & 0xffc0) == 0xfe80;
            !(ip.is_loopback() || unique_local || link_local)
        }
    }
}

/// `--node-id --cluster-listen --peers --default-replication-factor`.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub node_id: u64,
    pub cluster_listen: SocketAddr,
    pub peers: Vec<(u64, SocketAddr)>,
    /// `--join`: members to join through; empty with `--peers`, or for a restart from the
    /// stored membership (neither flag).
    pub join: Vec<SocketAddr>,
    /// `--join-timeout-secs`: `None` asks forever.
    pub join_timeout: Option<Duration>,
    /// The Kafka address other nodes give clients for this one (`host:port`).
    pub kafka_advertised: String,
    pub default_replication_factor: u16,
    /// `--cluster-tls-cert/-key/-ca`: mutual TLS between nodes (client certificates required).
    pub tls: Option<TlsFiles>,
}
/// `--join 10.0.0.1:9093,10.0.0.2:9093`: members' cluster addresses.
fn parse_join_list(list: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let addresses = list
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.parse::<SocketAddr>()
                .with_context(|| format!("invalid --join address '{item}': not IP:PORT"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!addresses.is_empty(), "--join needs at least one address");
    Ok(addresses)
}

/// The tag that makes a user an administrator of the HTTP API (RabbitMQ's tag name).
const ADMINISTRATOR_TAG: &str = "administrator";

macro_rules! merge {
    ($flags:ident, $file:ident, $($field:ident),+) => {
        $( if $flags.$field.is_none() { $flags.$field = $file.$field.take(); } )+
    };
}

impl ServeArgs {
    fn security_settings(&self, listeners: &[KafkaListener]) -> anyhow::Result<SecuritySettings> {
        let client_auth = match self.tls_client_auth.as_deref() {
            None => None,
            Some("none") => Some(false),
            Some("requested") => Some(false),
            Some("required") => Some(true),
            Some(other) => anyhow::bail!(
                "--tls-client-auth must be none, requested or required, not '{other}'"
            ),
        };
        let client_ca = match self.tls_client_auth.as_deref() {
            Some("none") => None,
            _ => self.tls_client_ca.clone(),
        };
        anyhow::ensure!(
            client_auth != Some(true) || client_ca.is_some(),
            "--tls-client-auth required needs --tls-client-ca"
        );
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(certificate), Some(private_key)) => Some(TlsFiles {
                certificate: certificate.clone(),
                private_key: private_key.clone(),
                client_ca,
                client_certificate_required: client_auth.unwrap_or(false),
            }),
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        };
        let amqps_listen = match self.amqps_listen.as_deref().map(str::trim) {
            None | Some("") | Some("off") => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|a| {
                    a.trim()
                        .parse::<SocketAddr>()
                        .with_context(|| format!("invalid --amqps-listen address '{a}'"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
        };
        let needs_tls = listeners.iter().any(|l| l.protocol.uses_tls())
            || !amqps_listen.is_empty()
            || self.https_listen.is_some();
        anyhow::ensure!(
            !needs_tls || tls.is_some(),
            "a TLS listener (SSL://, SASL_SSL://, --amqps-listen, --https-listen) needs --tls-cert and --tls-key"
        );
        let sasl_mechanisms: Vec<String> = match &self.sasl_mechanisms {
            None => sluice_auth::sasl::MECHANISMS
                .iter()
                .map(|m| m.to_string())
                .collect(),
            Some(list) => list
                .split(',')
                .map(|m| m.trim().to_ascii_uppercase())
                .filter(|m| !m.is_empty())
                .collect(),
        };
        for mechanism in &sasl_mechanisms {
            anyhow::ensure!(
                sluice_auth::sasl::MECHANISMS.contains(&mechanism.as_str()),
                "unknown SASL mechanism '{mechanism}' (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)"
            );
        }
        anyhow::ensure!(!sasl_mechanisms.is_empty(), "--sasl-mechanisms names none");
        let allow_unauthenticated = self.allow_unauthenticated.unwrap_or(false);
        for listener in listeners {
            let authenticated = listener.protocol.uses_sasl()
                || (listener.protocol.uses_tls()
                    && tls.as_ref().is_some_and(|t| t.client_certificate_required));
            if authenticated {
                continue;
            }
            let address = listener.address;
            anyhow::ensure!(
                allow_unauthenticated || !needs_authentication(&address),
                "the Kafka listener {}://{address} would let anyone in without authentication: \
                 use SASL_PLAINTEXT:// or SASL_SSL:// (or SSL:// with --tls-client-auth required), \
                 or pass --allow-unauthenticated true to accept that",
                listener.protocol.name()
            );
        }
        Ok(SecuritySettings {
            tls,
            sasl_mechanisms,
            kafka_reauth_ms: self.kafka_reauth_ms.unwrap_or(0),
            allow_everyone_if_no_acl_found: self.allow_everyone_if_no_acl_found.unwrap_or(true),
            super_users: self
                .super_users
                .as_deref()
                .unwrap_or("")
                .split(';')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect(),
            amqps_listen,
            https_listen: self.https_listen,
        })
    }

    /// Flags/env first, then the TOML file, then defaults.
    pub fn resolve(mut self) -> anyhow::Result<ServeConfig> {
        if let Some(path) = self.config.clone() {
            let mut file = load_file(&path)?;
            merge!(
                self,
                file,
                data_dir,
                kafka_listen,
                advertised_host,
                auto_create_topics,
                default_partitions,
                message_max_bytes,
                message_key_index,
                request_max_bytes,
                queued_max_request_bytes,
                fetch_max_bytes,
                connections_max_idle_ms,
                kafka_max_connections,
                producer_id_expiration_ms,
                fsync,
                segment_bytes,
                segment_ms,
                retention_ms,
                retention_bytes,
                retention_check_interval_ms,
                log_cleaner_backoff_ms,
                group_initial_rebalance_delay_ms,
                group_min_session_timeout_ms,
                group_max_session_timeout_ms,
                group_consumer_heartbeat_interval_ms,
                group_consumer_session_timeout_ms,
                amqp_listen,
                amqp_users,
                amqp_heartbeat,
                amqp_frame_max,
                amqp_max_message_bytes,
                amqp_handshake_timeout_ms,
                amqp_max_connections,
                memory_high_watermark_bytes,
                disk_free_limit_bytes,
                node_id,
                cluster_listen,
                peers,
                join,
                join_timeout_secs,
                default_replication_factor,
                cluster_tls_cert,
                cluster_tls_key,
                cluster_tls_ca,
                http_listen,
                tls_cert,
                tls_key,
                tls_client_ca,
                tls_client_auth,
                sasl_mechanisms,
                kafka_reauth_ms,
                allow_everyone_if_no_acl_found,
                super_users,
                amqps_listen,
                https_listen,
                allow_unauthenticated,
                log,
                log_format
            );
        }
        let defaults = LogConfig::default();
        let durability = match &self.fsync {
            Some(text) => {
                Durability::parse(text).with_context(|| format!("invalid --fsync '{text}'"))?
            }
            None => Durability::Batch,
        };
        let log_defaults = LogConfig {
            segment_bytes_max: self.segment_bytes.unwrap_or(defaults.segment_bytes_max),
            segment_ms_max: self.segment_ms.unwrap_or(defaults.segment_ms_max),
            retention_bytes: self.retention_bytes.unwrap_or(defaults.retention_bytes),
            retention_ms: self.retention_ms.unwrap_or(defaults.retention_ms),
            index_interval_bytes: defaults.index_interval_bytes,
            batch_bytes_max: self.message_max_bytes.unwrap_or(defaults.batch_bytes_max),
            durability,
            key_index: self.message_key_index.unwrap_or(defaults.key_index),
            ..defaults
        };
        let group_defaults = GroupConfig::default();
        let group = GroupConfig {
            initial_rebalance_delay_ms: self
                .group_initial_rebalance_delay_ms
                .unwrap_or(group_defaults.initial_rebalance_delay_ms),
            session_timeout_ms_min: self
                .group_min_session_timeout_ms
                .unwrap_or(group_defaults.session_timeout_ms_min),
            session_timeout_ms_max: self
                .group_max_session_timeout_ms
                .unwrap_or(group_defaults.session_timeout_ms_max),
            consumer_heartbeat_interval_ms: self
                .group_consumer_heartbeat_interval_ms
                .unwrap_or(group_defaults.consumer_heartbeat_interval_ms),
            consumer_session_timeout_ms: self
                .group_consumer_session_timeout_ms
                .unwrap_or(group_defaults.consumer_session_timeout_ms),
            ..group_defaults
        };
        let default_partitions = self.default_partitions.unwrap_or(1);
        anyhow::ensure!(
            default_partitions >= 1,
            "--default-partitions must be at least 1"
        );
        let kafka_listeners = match self.kafka_listen.as_deref() {
            Some(list) => parse_kafka_listeners(list)?,
            None => vec![KafkaListener {
                address: SocketAddr::from(([127, 0, 0, 1], 9092)),
                protocol: SecurityProtocol::Plaintext,
            }],
        };
        let kafka_listen = kafka_listeners[0].address;
        let security = self.security_settings(&kafka_listeners)?;
        let mut broker =
            BrokerConfig::new(self.data_dir.unwrap_or_else(|| PathBuf::from("./data")));
        broker.auto_create_topics = self.auto_create_topics.unwrap_or(true);
        broker.default_partitions = default_partitions;
        broker.log_defaults = log_defaults;
        broker.group = group;
        if let Some(interval) = self.retention_check_interval_ms {
            broker.retention_check_interval_ms = interval;
        }
        if let Some(backoff) = self.log_cleaner_backoff_ms {
            broker.log_cleaner_backoff_ms = backoff;
        }
        if let Some(expiration_ms) = self.producer_id_expiration_ms {
            anyhow::ensure!(
                expiration_ms >= 1,
                "--producer-id-expiration-ms must be at least 1"
            );
            broker.producer_id_expiration_ms = expiration_ms;
        }
        let advertised_host = self.advertised_host.unwrap_or_else(|| {
            if kafka_listen.ip().is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                kafka_listen.ip().to_string()
            }
        });
        let request_bytes_max = self
            .request_max_bytes
            .unwrap_or(KafkaConfig::REQUEST_BYTES_MAX_DEFAULT);
        let queued_request_bytes_max = self
            .queued_max_request_bytes
            .unwrap_or(KafkaConfig::QUEUED_REQUEST_BYTES_MAX_DEFAULT);
        anyhow::ensure!(
            queued_request_bytes_max >= request_bytes_max,
            "--queued-max-request-bytes ({queued_request_bytes_max}) must be at least \
             --request-max-bytes ({request_bytes_max}), or a largest request could never be read"
        );
        let fetch_bytes_max = self
            .fetch_max_bytes
            .unwrap_or(KafkaConfig::FETCH_BYTES_MAX_DEFAULT);
        anyhow::ensure!(
            fetch_bytes_max >= 1024,
            "--fetch-max-bytes must be at least 1024"
        );
        anyhow::ensure!(
            self.connections_max_idle_ms != Some(0) && self.kafka_max_connections != Some(0),
            "--connections-max-idle-ms and --kafka-max-connections must be at least 1"
        );
        let kafka = KafkaConfig {
            request_bytes_max,
            queued_request_bytes_max,
            fetch_bytes_max,
            connection_idle_ms_max: self
                .connections_max_idle_ms
                .unwrap_or(KafkaConfig::CONNECTION_IDLE_MS_MAX_DEFAULT),
            connections_max: self
                .kafka_max_connections
                .unwrap_or(KafkaConfig::CONNECTIONS_MAX_DEFAULT),
            ..KafkaConfig::new(advertised_host, kafka_listen.port() as i32)
        };
        let (amqp_listen, amqp_listen_is_default) = match self.amqp_listen.as_deref().map(str::trim)
        {
            None => (
                vec![
                    SocketAddr::from(([127, 0, 0, 1], 5672)),
                    SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 5672)),
                ],
                true,
            ),
            Some("off") | Some("") => (Vec::new(), false),
            Some(list) => (
                list.split(',')
                    .map(|a| {
                        a.trim()
                            .parse::<SocketAddr>()
                            .with_context(|| format!("invalid --amqp-listen address '{a}'"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?,
                false,
            ),
        };
        let mut amqp = AmqpConfig::default();
        let mut declared_users: Vec<DeclaredUser> = Vec::new();
        if let Some(users) = &self.amqp_users {
            for entry in users.split(',').filter(|u| !u.trim().is_empty()) {
                let entry = entry.trim();
                // A trailing `:administrator` is the tag, not the end of the password.
                let (entry, administrator) = match entry.rsplit_once(':') {
                    Some((rest, ADMINISTRATOR_TAG)) if rest.contains(':') => (rest, true),
                    _ => (entry, false),
                };
                let (name, password) = entry.split_once(':').with_context(|| {
                    format!("--amqp-users entry '{entry}' is not name:password[:administrator]")
                })?;
                declared_users.retain(|u| u.name != name);
                declared_users.push(DeclaredUser {
                    name: name.to_string(),
                    password: password.to_string(),
                    // Naming guest changes its password; it stays an administrator limited
                    // to loopback.
                    administrator: administrator || name == "guest",
                    loopback_only: name == "guest",
                });
            }
        }
        let http_listen = match self.http_listen.as_deref().map(str::trim) {
            None => Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            Some("off") | Some("") => None,
            Some(address) => Some(
                address
                    .parse::<SocketAddr>()
                    .with_context(|| format!("invalid --http-listen address '{address}'"))?,
            ),
        };
        if let Some(heartbeat) = self.amqp_heartbeat {
            amqp.heartbeat_s = heartbeat;
        }
        if let Some(frame_max) = self.amqp_frame_max {
            anyhow::ensure!(frame_max >= 4096, "--amqp-frame-max must be at least 4096");
            amqp.frame_max = frame_max;
        }
        if let Some(bytes) = self.amqp_max_message_bytes {
            amqp.message_bytes_max = u64::from(bytes);
        }
        if let Some(ms) = self.amqp_handshake_timeout_ms {
            amqp.handshake_timeout = Duration::from_millis(ms);
        }
        if let Some(connections) = self.amqp_max_connections {
            anyhow::ensure!(
                connections >= 1,
                "--amqp-max-connections must be at least 1"
            );
            amqp.connections_max_per_listener = connections;
        }
        let vhost = VhostConfig {
            data_dir: broker.data_dir.clone(),
            message_bytes_max: amqp.message_bytes_max.min(u64::from(u32::MAX)) as u32,
            memory_high_watermark_bytes: self
                .memory_high_watermark_bytes
                .unwrap_or_else(|| total_memory_bytes() / 10 * 4),
            disk_free_limit_bytes: self.disk_free_limit_bytes.unwrap_or(50_000_000),
        };
        let default_replication_factor = self.default_replication_factor.unwrap_or(1);
        anyhow::ensure!(
            default_replication_factor >= 1,
            "--default-replication-factor must be at least 1"
        );
        let cluster = match (&self.peers, &self.join, self.cluster_listen) {
            (None, None, None) => None,
            (Some(_), Some(_), _) => anyhow::bail!("--peers and --join exclude each other"),
            (peers, join, cluster_listen) => {
                let node_id = self.node_id.context(
                    "cluster mode (--peers, --join or --cluster-listen) needs --node-id",
                )?;
                let cluster_listen = cluster_listen
                    .context("cluster mode (--peers or --join) needs --cluster-listen")?;
                let peers = match peers {
                    Some(list) => {
                        let peers: PeerList = list
                            .parse()
                            .with_context(|| format!("invalid --peers '{list}'"))?;
                        peers
                            .validate_for(node_id, Some(cluster_listen))
                            .with_context(|| format!("invalid --peers '{list}'"))?;
                        peers.to_vec()
                    }
                    None => Vec::new(),
                };
                let join = match join {
                    Some(list) => parse_join_list(list)?,
                    None => Vec::new(),
                };
                broker.node_id = i32::try_from(node_id)
                    .context("--node-id must fit a Kafka broker id (0 to 2147483647)")?;
                Some(ClusterSettings {
                    node_id,
                    cluster_listen,
                    peers,
                    join,
                    join_timeout: match self.join_timeout_secs.unwrap_or(300) {
                        0 => None,
                        secs => Some(Duration::from_secs(secs)),
                    },
                    kafka_advertised: format!(
                        "{}:{}",
                        kafka.advertised_host, kafka.advertised_port
                    ),
                    default_replication_factor,
                    tls: match (
                        &self.cluster_tls_cert,
                        &self.cluster_tls_key,
                        &self.cluster_tls_ca,
                    ) {
                        (Some(certificate), Some(private_key), Some(ca)) => Some(TlsFiles {
                            certificate: certificate.clone(),
                            private_key: private_key.clone(),
                            client_ca: Some(ca.clone()),
                            client_certificate_required: true,
                        }),
                        (None, None, None) => None,
                        _ => anyhow::bail!(
                            "--cluster-tls-cert, --cluster-tls-key and --cluster-tls-ca go together"
                        ),
                    },
                })
            }
        };
        Ok(ServeConfig {
            cluster,
            amqp,
            amqp_listen,
            amqp_listen_is_default,
            vhost,
            broker,
            kafka,
            kafka_listeners,
            security,
            http_listen,
            declared_users,
            log_filter: self.log.unwrap_or_else(|| "info,openraft=warn".into()),
            log_format: self.log_format.unwrap_or_default(),
        })
    }
}

/// Physical memory, from /proc/meminfo (4 GiB when it cannot be read).
fn total_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(4 << 30)
}

fn load_file(path: &Path) -> anyhow::Result<ServeArgs> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster_serve_args(flags: &[&str]) -> ServeArgs {
        serve_args(flags).unwrap_or_else(|error| panic!("{error}"))
    }

    fn serve_args(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let cli = Cli::try_parse_from([&["sluice", "serve"], args].concat())?;
        match cli.command {
            Command::Serve(serve) => Ok(serve),
            Command::Client(_) | Command::User(_) => unreachable!("parsed from `sluice serve`"),
        }
    }

    #[test]
    fn cluster_flags_resolve_to_cluster_settings() {
        let args = cluster_serve_args(&[
            "--node-id",
            "2",
            "--cluster-listen",
            "10.0.0.2:9093",
            "--peers",
            "1@10.0.0.1:9093,2@10.0.0.2:9093,3@10.0.0.3:9093",
            "--kafka-listen",
            "10.0.0.2:9092",
            "--default-replication-factor",
            "3",
        ]);
        let config = args.resolve().unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.node_id, 2);
        assert_eq!(cluster.peers.len(), 3);
        assert_eq!(cluster.kafka_advertised, "10.0.0.2:9092");
        assert_eq!(cluster.default_replication_factor, 3);
        assert_eq!(config.broker.node_id, 2);
    }

    #[test]
    fn no_peers_is_one_node() {
        let config = cluster_serve_args(&[]).resolve().unwrap();
        assert!(config.cluster.is_none());
        assert_eq!(config.broker.node_id, 0);
    }

    #[test]
    fn a_peer_list_without_this_node_or_its_address_is_refused() {
        let missing = cluster_serve_args(&[
            "--node-id",
            "4",
            "--cluster-listen",
            "10.0.0.4:9093",
            "--peers",
            "1@10.0.0.1:9093,2@10.0.0.2:9093",
        ]);
        assert!(missing.resolve().is_err());
        let wrong_address = cluster_serve_args(&[
            "--node-id",
            "1",
            "--cluster-listen",
            "10.0.0.9:9093",
            "--peers",
            "1@10.0.0.1:9093,2@10.0.0.2:9093",
        ]);
        assert!(wrong_address.resolve().is_err());
        let no_listen = cluster_serve_args(&["--node-id", "1", "--peers", "1@10.0.0.1:9093"]);
        assert!(no_listen.resolve().is_err());
    }

    #[test]
    fn join_and_restart_flags_resolve() {
        let join = cluster_serve_args(&[
            "--node-id",
            "4",
            "--cluster-listen",
            "10.0.0.4:9093",
            "--join",
            "10.0.0.1:9093, 10.0.0.2:9093",
        ])
        .resolve()
        .unwrap()
        .cluster
        .unwrap();
        assert!(join.peers.is_empty());
        assert_eq!(join.join.len(), 2);
        let restart = cluster_serve_args(&["--node-id", "4", "--cluster-listen", "10.0.0.4:9093"])
            .resolve()
            .unwrap()
            .cluster
            .unwrap();
        assert!(restart.peers.is_empty() && restart.join.is_empty());
        let both = cluster_serve_args(&[
            "--node-id",
            "4",
            "--cluster-listen",
            "10.0.0.4:9093",
            "--join",
            "10.0.0.1:9093",
            "--peers",
            "4@10.0.0.4:9093",
        ]);
        assert!(both.resolve().is_err());
        let bad = cluster_serve_args(&[
            "--node-id",
            "4",
            "--cluster-listen",
            "10.0.0.4:9093",
            "--join",
            "host:9093",
        ]);
        assert!(bad.resolve().is_err());
        let no_listen = cluster_serve_args(&["--node-id", "4", "--join", "10.0.0.1:9093"]);
        assert!(no_listen.resolve().is_err());
    }

    #[test]
    fn cluster_settings_come_from_the_toml_file_too() {
        let dir = tempfile_dir();
        let path = dir.join("sluice.toml");
        std::fs::write(
            &path,
            "node_id = 1\ncluster_listen = \"127.0.0.1:9093\"\npeers = \"1@127.0.0.1:9093\"\n\
             default_replication_factor = 1\n",
        )
        .unwrap();
        let config = cluster_serve_args(&["--config", path.to_str().unwrap()])
            .resolve()
            .unwrap();
        assert_eq!(config.cluster.unwrap().node_id, 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn log_format_defaults_to_text_and_takes_json() {
        assert_eq!(
            serve_args(&[]).unwrap().resolve().unwrap().log_format,
            LogFormat::Text
        );
        let json = serve_args(&["--log-format", "json"]).unwrap();
        assert_eq!(json.resolve().unwrap().log_format, LogFormat::Json);
        assert!(serve_args(&["--log-format", "xml"]).is_err());
    }

    #[test]
    fn log_format_comes_from_the_config_file_unless_a_flag_overrides_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sluice.toml");
        std::fs::write(&file, "log_format = \"json\"\n").unwrap();
        let path = file.to_str().unwrap();
        let from_file = serve_args(&["--config", path]).unwrap();
        assert_eq!(from_file.resolve().unwrap().log_format, LogFormat::Json);
        let overridden = serve_args(&["--config", path, "--log-format", "text"]).unwrap();
        assert_eq!(overridden.resolve().unwrap().log_format, LogFormat::Text);
    }

    #[test]
    fn http_listen_defaults_to_loopback_and_off_turns_it_off() {
        let config = ServeArgs::default().resolve().expect("defaults");
        assert_eq!(
            config.http_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 8080)))
        );
        let off = ServeArgs {
            http_listen: Some("off".into()),
            ..ServeArgs::default()
        };
        assert_eq!(off.resolve().expect("off").http_listen, None);
        let bad = ServeArgs {
            http_listen: Some("nowhere".into()),
            ..ServeArgs::default()
        };
        assert!(bad.resolve().is_err());
    }

    #[test]
    fn http_listen_comes_from_the_config_file_and_flags_win() {
        let path = std::env::temp_dir().join(format!(
            "sluice-config-test-{}-{:?}.toml",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, "http_listen = \"127.0.0.1:18181\"\n").expect("write config");
        let from_file = ServeArgs {
            config: Some(path.clone()),
            ..ServeArgs::default()
        }
        .resolve()
        .expect("config file");
        let flag_wins = ServeArgs {
            config: Some(path.clone()),
            http_listen: Some("127.0.0.1:18182".into()),
            ..ServeArgs::default()
        }
        .resolve()
        .expect("flag and file");
        let _ = std::fs::remove_file(&path);
        assert_eq!(from_file.http_listen, "127.0.0.1:18181".parse().ok());
        assert_eq!(flag_wins.http_listen, "127.0.0.1:18182".parse().ok());
    }

    #[test]
    fn the_administrator_tag_is_the_last_field() {
        let config = ServeArgs {
            amqp_users: Some("ops:se:cret:administrator,reader:pw,odd:administrator".into()),
            ..ServeArgs::default()
        }
        .resolve()
        .expect("users");
        let find = |name: &str| {
            config
                .declared_users
                .iter()
                .find(|u| u.name == name)
                .cloned()
                .expect("user")
        };
        let ops = find("ops");
        assert_eq!(
            (ops.password.as_str(), ops.administrator),
            ("se:cret", true)
        );
        let reader = find("reader");
        assert_eq!(
            (reader.password.as_str(), reader.administrator),
            ("pw", false)
        );
        // With only two fields the second is the password, even if it reads "administrator".
        let odd = find("odd");
        assert_eq!(
            (odd.password.as_str(), odd.administrator),
            ("administrator", false)
        );
    }

    #[test]
    fn kafka_listeners_take_kafka_syntax_and_refuse_open_public_ones() {
        let listeners = parse_kafka_listeners(
            "PLAINTEXT://127.0.0.1:9092, SASL_SSL://0.0.0.0:9094,127.0.0.1:9095",
        )
        .expect("listeners");
        assert_eq!(listeners[0].protocol, SecurityProtocol::Plaintext);
        assert_eq!(listeners[1].protocol, SecurityProtocol::SaslSsl);
        assert_eq!(listeners[2].protocol, SecurityProtocol::Plaintext);
        assert!(parse_kafka_listeners("GOPHER://127.0.0.1:1").is_err());
        assert!(parse_kafka_listeners("127.0.0.1:1,PLAINTEXT://127.0.0.1:1").is_err());
        let open = |listen: &str, allow: Option<bool>| {
            ServeArgs {
                kafka_listen: Some(listen.into()),
                allow_unauthenticated: allow,
                ..ServeArgs::default()
            }
            .resolve()
        };
        assert!(open("0.0.0.0:9092", None).is_err());
        assert!(open("PLAINTEXT://[::]:9092", None).is_err());
        assert!(open("0.0.0.0:9092", Some(true)).is_ok());
        assert!(open("SASL_PLAINTEXT://0.0.0.0:9092", None).is_ok());
        assert!(
            open("10.0.0.1:9092", None).is_ok(),
            "a cluster node's private address"
        );
        assert!(
            open("SSL://0.0.0.0:9092", None).is_err(),
            "TLS needs --tls-cert"
        );
    }
}
