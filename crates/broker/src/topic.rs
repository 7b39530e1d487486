use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;
use sluice_log::{Durability, LogConfig};

use crate::{BrokerError, Partition};

/// Where a config value comes from (DescribeConfigs reports it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    TopicOverride,
    /// A broker setting fixed when the process started (flag, environment or config file).
    StaticBroker,
    Default,
}

/// The type of a config's value (Kafka's `ConfigDef.Type`, which DescribeConfigs reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Boolean,
    String,
    Int,
    Short,
    Long,
    Double,
    List,
    Class,
    Password,
}

/// One topic config as DescribeConfigs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    pub value: String,
    pub source: ConfigSource,
    pub read_only: bool,
    pub config_type: ConfigType,
    pub documentation: &'static str,
}

/// The topic-level settings Sluice supports, with Kafka's names. `fsync` is Sluice's own:
/// `batch` (group commit before acknowledging), `interval:<ms>` or `never`.
pub const SUPPORTED_TOPIC_CONFIGS: &[&str] = &[
    "cleanup.policy",
    "fsync",
    "index.interval.bytes",
    "max.message.bytes",
    "message.key.index.enable",
    "message.timestamp.type",
    "min.insync.replicas",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.ms",
];

/// Type and one-line documentation of each of `SUPPORTED_TOPIC_CONFIGS`.
fn topic_config_schema(name: &str) -> (ConfigType, &'static str) {
    match name {
        "cleanup.policy" => (
            ConfigType::List,
            "Retention policy for old segments; only 'delete' is supported.",
        ),
        "fsync" => (
            ConfigType::String,
            "Sluice durability: 'batch' (group-committed fdatasync before acknowledging), \
             'interval:<ms>' or 'never'.",
        ),
        "index.interval.bytes" => (
            ConfigType::Int,
            "Bytes of log between two offset index entries.",
        ),
        "max.message.bytes" => (
            ConfigType::Int,
            "Largest record batch accepted for this topic.",
        ),
        "message.key.index.enable" => (
            ConfigType::Boolean,
            "Sluice: keep a per-segment hash index of record keys and message-id headers, so \
             messages are found by key or id without scanning the topic.",
        ),
        "message.timestamp.type" => (
            ConfigType::String,
            "CreateTime (the producer's timestamp) or LogAppendTime (the broker's clock).",
        ),
        "min.insync.replicas" => (
            ConfigType::Int,
            "Replicas that must acknowledge an acks=all write; a single node always has one.",
        ),
        "retention.bytes" => (
            ConfigType::Long,
            "Largest size of a partition before old segments are deleted; -1 for no limit.",
        ),
        "retention.ms" => (
            ConfigType::Long,
            "Age after which a segment is deleted; -1 keeps segments forever.",
        ),
        "segment.bytes" => (
            ConfigType::Int,
            "Segment size at which a new segment is rolled.",
        ),
        "segment.ms" => (
            ConfigType::Long,
            "Segment age at which a new segment is rolled.",
        ),
        _ => (ConfigType::String, ""),
    }
}

/// A topic's overrides of the broker defaults, validated on every change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicConfig {
    overrides: BTreeMap<String, String>,
}

impl TopicConfig {
    pub fn new(
        overrides: BTreeMap<String, String>,
        defaults: &LogConfig,
    ) -> Result<Self, BrokerError> {
        let config = TopicConfig { overrides };
        config.log_config(defaults)?;
        for key in config.overrides.keys() {
            if !SUPPORTED_TOPIC_CONFIGS.contains(&key.as_str()) {
                return Err(BrokerError::InvalidConfig(format!(
                    "unknown or unsupported topic config '{key}'"
                )));
            }
        }
        Ok(config)
    }

    pub fn overrides(&self) -> &BTreeMap<String, String> {
        &self.overrides
    }

    /// `message.timestamp.type=LogAppendTime`: the broker stamps batches with its own clock.
    pub fn log_append_time(&self) -> bool {
        self.overrides
            .get("message.timestamp.type")
            .map(|v| v == "LogAppendTime")
            .unwrap_or(false)
    }

    /// The topic's log settings: defaults with this topic's overrides applied.
    pub fn log_config(&self, defaults: &LogConfig) -> Result<LogConfig, BrokerError> {
        let mut config = defaults.clone();
        for (key, value) in &self.overrides {
            let invalid =
                || BrokerError::InvalidConfig(format!("invalid value '{value}' for '{key}'"));
            match key.as_str() {
                "retention.ms" => config.retention_ms = value.parse().map_err(|_| invalid())?,
                "retention.bytes" => {
                    config.retention_bytes = value.parse().map_err(|_| invalid())?
                }
                "segment.bytes" => {
                    config.segment_bytes_max = value.parse().map_err(|_| invalid())?;
                    if config.segment_bytes_max < 14 {
                        return Err(invalid());
                    }
                }
                "segment.ms" => {
                    config.segment_ms_max = value.parse().map_err(|_| invalid())?;
                    if config.segment_ms_max < 1 {
                        return Err(invalid());
                    }
                }
                "max.message.bytes" => {
                    config.batch_bytes_max = value.parse().map_err(|_| invalid())?;
                }
                "index.interval.bytes" => {
                    config.index_interval_bytes = value.parse().map_err(|_| invalid())?;
                }
                "fsync" => config.durability = Durability::parse(value).map_err(|_| invalid())?,
                "message.key.index.enable" => {
                    config.key_index = value.parse().map_err(|_| invalid())?
                }
                "cleanup.policy" if value != "delete" => {
                    return Err(BrokerError::InvalidConfig(format!(
                        "cleanup.policy '{value}' is not supported (only 'delete')"
                    )));
                }
                "message.timestamp.type" if value != "CreateTime" && value != "LogAppendTime" => {
                    return Err(invalid());
                }
                "min.insync.replicas" => {
                    let replicas: i32 = value.parse().map_err(|_| invalid())?;
                    if replicas < 1 {
                        return Err(invalid());
                    }
                }
                _ => {}
            }
        }
        Ok(config)
    }

    /// Every supported config with its effective value.
    pub fn describe(&self, defaults: &LogConfig) -> Vec<ConfigEntry> {
        let effective = self
            .log_config(defaults)
            .unwrap_or_else(|_| defaults.clone());
        SUPPORTED_TOPIC_CONFIGS
            .iter()
            .map(|&name| {
                let default_value = match name {
                    "cleanup.policy" => "delete".to_string(),
                    "fsync" => effective.durability.to_string(),
                    "index.interval.bytes" => effective.index_interval_bytes.to_string(),
                    "max.message.bytes" => effective.batch_bytes_max.to_string(),
                    "message.key.index.enable" => effective.key_index.to_string(),
                    "message.timestamp.type" => "CreateTime".to_string(),
                    "min.insync.replicas" => "1".to_string(),
                    "retention.bytes" => effective.retention_bytes.to_string(),
                    "retention.ms" => effective.retention_ms.to_string(),
                    "segment.bytes" => effective.segment_bytes_max.to_string(),
                    "segment.ms" => effective.segment_ms_max.to_string(),
                    _ => String::new(),
                };
                let (config_type, documentation) = topic_config_schema(name);
                let (value, source) = match self.overrides.get(name) {
                    Some(value) => (value.clone(), ConfigSource::TopicOverride),
                    None => (default_value, ConfigSource::Default),
                };
                ConfigEntry {
                    name: name.to_string(),
                    value,
                    source,
                    read_only: false,
                    config_type,
                    documentation,
                }
            })
            .collect()
    }
}

/// A named, partitioned stream. Partitions only ever grow (CreatePartitions).
pub struct Topic {
    name: String,
    id: uuid::Uuid,
    pub(crate) partitions: RwLock<Vec<Arc<Partition>>>,
    pub(crate) config: RwLock<TopicConfig>,
}

impl Topic {
    pub(crate) fn new(
        name: String,
        id: uuid::Uuid,
        partitions: Vec<Arc<Partition>>,
        config: TopicConfig,
    ) -> Self {
        Topic {
            name,
            id,
            partitions: RwLock::new(partitions),
            config: RwLock::new(config),
        }
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn id(&self) -> uuid::Uuid {
        self.id
    }
    pub fn partition_count(&self) -> i32 {
        self.partitions.read().len() as i32
    }
    pub fn partition(&self, index: i32) -> Option<Arc<Partition>> {
        if index < 0 {
            return None;
        }
        self.partitions.read().get(index as usize).cloned()
    }
    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions.read().clone()
    }
    pub fn config(&self) -> TopicConfig {
        self.config.read().clone()
    }
    /// The partition Kafka's default partitioner picks for a record key (murmur2), so a key
    /// lands where a Kafka client would have put it.
    pub fn partition_for_key(&self, key: &[u8]) -> i32 {
        kafka_partition_for_key(key, self.partition_count())
    }
    /// Internal topics (names starting with `__`) are hidden from auto-creation.
    pub fn is_internal(&self) -> bool {
        self.name.starts_with("__")
    }
}

/// The partition of `partition_count` Kafka's default partitioner picks for a record key
/// (murmur2, as the Java client).
pub fn kafka_partition_for_key(key: &[u8], partition_count: i32) -> i32 {
    let count = partition_count.max(1) as u32;
    ((crate::vhost::stream::murmur2(key) & 0x7fff_ffff) % count) as i32
}

/// Kafka's topic-name rules: 1..=249 chars of [a-zA-Z0-9._-], not "." or "..".
pub fn validate_topic_name(name: &str) -> Result<(), BrokerError> {
    if name.is_empty() || name.len() > 249 || name == "." || name == ".." {
        return Err(BrokerError::InvalidTopic(format!(
            "invalid topic name '{name}'"
        )));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
    {
        return Err(BrokerError::InvalidTopic(format!(
            "topic name '{name}' has characters other than ASCII alphanumerics, '.', '_' and '-'"
        )));
    }
    Ok(())
}
