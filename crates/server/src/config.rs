//! Configuration: command-line flags, each also settable through a `SLUICE_*` environment
//! variable, over an optional TOML file (same names, with `_` for `-`), over built-in defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use sluice_broker::{BrokerConfig, GroupConfig};
use sluice_kafka::KafkaConfig;
use sluice_log::{Durability, LogConfig};

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: a durable message broker speaking the Kafka protocol"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker.
    Serve(ServeArgs),
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

    /// Address of the Kafka listener [default: 127.0.0.1:9092]
    #[arg(long, env = "SLUICE_KAFKA_LISTEN", value_name = "HOST:PORT")]
    pub kafka_listen: Option<SocketAddr>,

    /// Host name given to Kafka clients in Metadata [default: the listen address's IP]
    #[arg(long, env = "SLUICE_ADVERTISED_HOST", value_name = "HOST")]
    pub advertised_host: Option<String>,

    /// Create topics on first use (produce or metadata request) [default: true]
    #[arg(long, env = "SLUICE_AUTO_CREATE_TOPICS", value_name = "BOOL")]
    pub auto_create_topics: Option<bool>,

    /// Partition count of auto-created topics (Kafka's num.partitions) [default: 1]
    #[arg(long, env = "SLUICE_DEFAULT_PARTITIONS", value_name = "N")]
    pub default_partitions: Option<i32>,

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

    /// Log filter in tracing's EnvFilter syntax, e.g. `info` or `sluice_kafka=debug` [default: info]
    #[arg(long, env = "SLUICE_LOG", value_name = "FILTER")]
    pub log: Option<String>,
}

/// The resolved settings of one broker process.
pub struct ServeConfig {
    pub broker: BrokerConfig,
    pub kafka: KafkaConfig,
    pub kafka_listen: SocketAddr,
    pub log_filter: String,
}

macro_rules! merge {
    ($flags:ident, $file:ident, $($field:ident),+) => {
        $( if $flags.$field.is_none() { $flags.$field = $file.$field.take(); } )+
    };
}

impl ServeArgs {
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
                request_max_bytes,
                queued_max_request_bytes,
                fsync,
                segment_bytes,
                segment_ms,
                retention_ms,
                retention_bytes,
                retention_check_interval_ms,
                group_initial_rebalance_delay_ms,
                group_min_session_timeout_ms,
                group_max_session_timeout_ms,
                log
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
            ..group_defaults
        };
        let default_partitions = self.default_partitions.unwrap_or(1);
        anyhow::ensure!(
            default_partitions >= 1,
            "--default-partitions must be at least 1"
        );
        let mut broker =
            BrokerConfig::new(self.data_dir.unwrap_or_else(|| PathBuf::from("./data")));
        broker.auto_create_topics = self.auto_create_topics.unwrap_or(true);
        broker.default_partitions = default_partitions;
        broker.log_defaults = log_defaults;
        broker.group = group;
        if let Some(interval) = self.retention_check_interval_ms {
            broker.retention_check_interval_ms = interval;
        }
        let kafka_listen = self
            .kafka_listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9092)));
        let advertised_host = self.advertised_host.unwrap_or_else(|| {
            if kafka_listen.ip().is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                kafka_listen.ip().to_string()
            }
        });
        let request_bytes_max = self.request_max_bytes.unwrap_or(100 * 1024 * 1024);
        let queued_request_bytes_max = self.queued_max_request_bytes.unwrap_or(512 * 1024 * 1024);
        anyhow::ensure!(
            queued_request_bytes_max >= request_bytes_max,
            "--queued-max-request-bytes ({queued_request_bytes_max}) must be at least \
             --request-max-bytes ({request_bytes_max}), or a largest request could never be read"
        );
        let kafka = KafkaConfig {
            advertised_host,
            advertised_port: kafka_listen.port() as i32,
            request_bytes_max,
            queued_request_bytes_max,
        };
        Ok(ServeConfig {
            broker,
            kafka,
            kafka_listen,
            log_filter: self.log.unwrap_or_else(|| "info".into()),
        })
    }
}

fn load_file(path: &Path) -> anyhow::Result<ServeArgs> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}
