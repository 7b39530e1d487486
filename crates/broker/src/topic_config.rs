//! Topic configs: every standard Kafka topic config, typed and validated as Kafka's `ConfigDef`
//! validates it, plus Sluice's own two. Each entry's documentation says what it does here,
//! where that differs from Kafka (README, "Topic configs").

use std::collections::BTreeMap;

use sluice_log::{Durability, LogConfig};

use crate::timestamps::TimestampRules;
use crate::BrokerError;

/// Where a config value comes from (DescribeConfigs reports it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    TopicOverride,
    /// Set for one group (IncrementalAlterConfigs on a GROUP resource).
    GroupOverride,
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
    /// Where the value could come from, most specific first (the topic's override, then the
    /// broker setting), as Kafka lists them.
    pub synonyms: Vec<ConfigSynonym>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSynonym {
    pub name: String,
    pub value: String,
    pub source: ConfigSource,
}

/// Which values a config takes (Kafka's validators, with their messages).
#[derive(Debug, Clone, Copy)]
enum Valid {
    Any,
    AtLeast(i64),
    Between(i64, i64),
    /// `compression.gzip.level`: a range, or one special value.
    BetweenOrEqual(i64, i64, i64),
    DoubleBetween(f64, f64),
    OneOf(&'static [&'static str]),
    /// A comma list whose items are each one of these.
    ListOf(&'static [&'static str]),
    /// `*`, or a list of `partition:broker` pairs.
    ThrottledReplicas,
    /// Only `false`: the feature does not exist here (Kafka refuses it when disabled too).
    OnlyFalse(&'static str),
}

/// Where a config's default comes from.
#[derive(Debug, Clone, Copy)]
enum DefaultValue {
    /// Kafka's documented default, which Sluice cannot be configured to change.
    Fixed(&'static str),
    /// A broker setting (`sluice serve` flag); Kafka's default is the second field.
    Broker(fn(&LogConfig) -> String, &'static str),
}

/// The broker config a topic config falls back to, as DescribeConfigs lists it in synonyms.
#[derive(Debug, Clone, Copy)]
enum BrokerSynonym {
    None,
    /// Listed with its value (Kafka's default, or Sluice's flag).
    Shown(&'static str),
    /// Null by default in Kafka (its value comes from a further fallback such as
    /// `log.retention.hours`, which Kafka does not list): listed only when a Sluice flag set it.
    Unset(&'static str),
}

struct TopicConfigSpec {
    name: &'static str,
    synonym: BrokerSynonym,
    config_type: ConfigType,
    default: DefaultValue,
    valid: Valid,
    documentation: &'static str,
}

const COMPRESSION_TYPES: &[&str] = &["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"];

/// Every topic config, by name. Kafka 4.1's list, Sluice's `fsync` and
/// `message.key.index.enable`; none of Kafka's removed ones (`message.format.version`).
const TOPIC_CONFIGS: &[TopicConfigSpec] = &[
    TopicConfigSpec {
        name: "cleanup.policy",
        synonym: BrokerSynonym::Shown("log.cleanup.policy"),
        config_type: ConfigType::List,
        default: DefaultValue::Fixed("delete"),
        valid: Valid::ListOf(&["compact", "delete"]),
        documentation: "'delete' removes whole segments by retention.ms and retention.bytes; \
                        'compact' keeps the last record of each key (records need keys); both \
                        may be given; an empty list keeps everything. Compaction runs on one \
                        node; a cluster refuses 'compact' for now.",
    },
    TopicConfigSpec {
        name: "compression.gzip.level",
        synonym: BrokerSynonym::Shown("compression.gzip.level"),
        config_type: ConfigType::Int,
        default: DefaultValue::Fixed("-1"),
        valid: Valid::BetweenOrEqual(1, 9, -1),
        documentation: "Accepted; Sluice keeps batches as the producer compressed them.",
    },
    TopicConfigSpec {
        name: "compression.lz4.level",
        synonym: BrokerSynonym::Shown("compression.lz4.level"),
        config_type: ConfigType::Int,
        default: DefaultValue::Fixed("9"),
        valid: Valid::Between(1, 17),
        documentation: "Accepted; Sluice keeps batches as the producer compressed them.",
    },
    TopicConfigSpec {
        name: "compression.type",
        synonym: BrokerSynonym::Shown("compression.type"),
        config_type: ConfigType::String,
        default: DefaultValue::Fixed("producer"),
        valid: Valid::OneOf(COMPRESSION_TYPES),
        documentation: "Accepted; Sluice always keeps batches as the producer compressed them \
                        ('producer'), never recompresses.",
    },
    TopicConfigSpec {
        name: "compression.zstd.level",
        synonym: BrokerSynonym::Shown("compression.zstd.level"),
        config_type: ConfigType::Int,
        default: DefaultValue::Fixed("3"),
        valid: Valid::Between(-131072, 22),
        documentation: "Accepted; Sluice keeps batches as the producer compressed them.",
    },
    TopicConfigSpec {
        name: "delete.retention.ms",
        synonym: BrokerSynonym::Shown("log.cleaner.delete.retention.ms"),
        config_type: ConfigType::Long,
        default: DefaultValue::Fixed("86400000"),
        valid: Valid::AtLeast(0),
        documentation: "Compaction removes a tombstone (a null value) once the newest record of \
                        its segment is older than this.",
    },
    TopicConfigSpec {
        name: "file.delete.delay.ms",
        synonym: BrokerSynonym::Shown("log.segment.delete.delay.ms"),
        config_type: ConfigType::Long,
        default: DefaultValue::Fixed("60000"),
        valid: Valid::AtLeast(0),
        documentation: "Accepted; Sluice removes a deleted segment's files once no reader \
                        holds them.",
    },
    TopicConfigSpec {
        name: "flush.messages",
        synonym: BrokerSynonym::Shown("log.flush.interval.messages"),
        config_type: ConfigType::Long,
        default: DefaultValue::Fixed("9223372036854775807"),
        valid: Valid::AtLeast(1),
        documentation: "Accepted; on Sluice the 'fsync' config decides when data is synced.",
    },
    TopicConfigSpec {
        name: "flush.ms",
        synonym: BrokerSynonym::Unset("log.flush.interval.ms"),
        config_type: ConfigType::Long,
        default: DefaultValue::Fixed("9223372036854775807"),
        valid: Valid::AtLeast(0),
        documentation: "Accepted; on Sluice the 'fsync' config decides when data is synced.",
    },
    TopicConfigSpec {
        name: "follower.replication.throttled.replicas",
        synonym: BrokerSynonym::None,
        config_type: ConfigType::List,
        default: DefaultValue::Fixed(""),
        valid: Valid::ThrottledReplicas,
        documentation: "Accepted; Sluice does not throttle replication.",
    },
    TopicConfigSpec {
        name: "fsync",
        synonym: BrokerSynonym::None,
        config_type: ConfigType::String,
        default: DefaultValue::Broker(|c| c.durability.to_string(), "batch"),
        valid: Valid::Any,
        documentation: "Sluice durability: 'batch' (group-committed fdatasync before \
                        acknowledging), 'interval:<ms>' or 'never'.",
    },
    TopicConfigSpec {
        name: "index.interval.bytes",
        synonym: BrokerSynonym::Shown("log.index.interval.bytes"),
        config_type: ConfigType::Int,
        default: DefaultValue::Broker(|c| c.index_interval_bytes.to_string(), "4096"),
        valid: Valid::AtLeast(0),
        documentation: "Bytes of log between two offset index entries.",
    },
    TopicConfigSpec {
        name: "leader.replication.throttled.replicas",
        synonym: BrokerSynonym::None,
        config_type: ConfigType::List,
        default: DefaultValue::Fixed(""),
        valid: Valid::ThrottledReplicas,
        documentation: "Accepted; Sluice does not throttle replication.",
    },
    TopicConfigSpec {
        name: "local.retention.bytes",
        synonym: BrokerSynonym::Shown("log.local.retention.bytes"),
        config_type: ConfigType::Long,
        default: DefaultValue::Fixed("-2"),
        valid: Valid::AtLeast(-2),
        documentation: "A tiered-storage setting: accepted, no effect (no tiered storage).",
    },
    TopicConfigSpec {
        name: "local.retention.ms",
        synonym: BrokerSynonym::Shown("log.local.retention.ms"),
        config_type: ConfigType::Long,
        default: DefaultValue::Fixed("-2"),
        valid: Valid::AtLeast(-2),
        documentation: "A tiered-storage setting: accepted, no effect (no tiered storage).",
    },
    TopicConfigSpec {
        name: "max.compaction.lag.ms",
        synonym: BrokerSynonym::Shown("log.cleaner.max.compaction.lag.ms"),
        config_type: ConfigType::Long,
        default: DefaultValue::Fixed("9223372036854775807"),
        valid: Valid::AtLeast(1),
        documentation: "Compaction runs regardless of min.cleanable.dirty.ratio once a segment \
                        not yet cleaned was started longer ago than this.",
    },
    TopicConfigSpec {
        name: "max.message.bytes",
        synonym: BrokerSynonym::Shown("message.max.bytes"),
        config_type: ConfigType::Int,
        default: DefaultValue::Broker(|c| c.batch_bytes_max.to_string(), "1048588"),
        valid: Valid::AtLeast(0),
        documentation: "Largest record batch accepted for this topic.",
    },
    TopicConfigSpec {
        name: "message.key.index.enable",
        synonym: BrokerSynonym::None,
        config_type: ConfigType::Boolean,
        default: DefaultValue::Broker(|c| c.key_index.to_string(), "true"),
        valid: Valid::Any,
        documentation: "Sluice: keep a per-segment hash index of record keys and message-id \
                        headers, so messages are found by key or id without scanning the topic.",
    },
    TopicConfigSpec {
        name: "message.timestamp.after.max.ms",
        synonym: BrokerSynonym::Shown("log.message.timestamp.after.max.ms"),
        config_type: ConfigType::Long,
        default: DefaultValue::Fixed("3600000"),
        valid: Valid::AtLeast(0),
        documentation: "How far past the broker's clock a CreateTime timestamp may be; a batch \
                        with a later record is refused with INVALID_TIMESTAMP.",
    },
    TopicConfigSpec {
        name: "message.timestamp.before.max.ms",
        synonym: BrokerSynonym::Shown("log.message.timestamp.before.max.ms"),
        config_type: ConfigType::Long,
        default: DefaultValue::Fixed("9223372036854775807"),
        valid: Valid::AtLeast(0),
        documentation: "How far before the broker's clock a CreateTime timestamp may be; a \
                        batch with an earlier record is refused with INVALID_TIMESTAMP.",
    },
    TopicConfigSpec {
        name: "message.timestamp.type",
        synonym: BrokerSynonym::Shown("log.message.timestamp.type"),
        config_type: ConfigType::String,
        default: DefaultValue::Fixed("CreateTime"),
        valid: Valid::OneOf(&["CreateTime", "LogAppendTime"]),
        documentation: "CreateTime (the producer's timestamp) or LogAppendTime (the broker's \
                        clock).",
    },
    TopicConfigSpec {
        name: "min.cleanable.dirty.ratio",
        synonym: BrokerSynonym::Shown("log.cleaner.min.cleanable.ratio"),
        config_type: ConfigType::Double,
        default: DefaultValue::Fixed("0.5"),
        valid: Valid::DoubleBetween(0.0, 1.0),
        documentation: "Compaction runs when the bytes not cleaned yet reach this share of the \
                        rolled segments below the last stable offset.",
    },
    TopicConfigSpec {
        name: "min.compaction.lag.ms",
        synonym: BrokerSynonym::Shown("log.cleaner.min.compaction.lag.ms"),
        config_type: ConfigType::Long,
        default: DefaultValue::Fixed("0"),
        valid: Valid::AtLeast(0),
        documentation: "Segments holding records younger than this are not compacted yet.",
    },
    TopicConfigSpec {
        name: "min.insync.replicas",
        synonym: BrokerSynonym::Shown("min.insync.replicas"),
        config_type: ConfigType::Int,
        default: DefaultValue::Fixed("1"),
        valid: Valid::AtLeast(1),
        documentation: "Caught-up voters an acks=all write needs, or NOT_ENOUGH_REPLICAS; a \
                        single node always has one.",
    },
    TopicConfigSpec {
        name: "preallocate",
        synonym: BrokerSynonym::Shown("log.preallocate"),
        config_type: ConfigType::Boolean,
        default: DefaultValue::Fixed("false"),
        valid: Valid::Any,
        documentation: "Accepted; Sluice grows segment files as it writes them.",
    },
    TopicConfigSpec {
        name: "remote.log.copy.disable",
        synonym: BrokerSynonym::None,
        config_type: ConfigType::Boolean,
        default: DefaultValue::Fixed("false"),
        valid: Valid::Any,
        documentation: "A tiered-storage setting: accepted, no effect (no tiered storage).",
    },
    TopicConfigSpec {
        name: "remote.log.delete.on.disable",
        synonym: BrokerSynonym::None,
        config_type: ConfigType::Boolean,
        default: DefaultValue::Fixed("false"),
        valid: Valid::Any,
        documentation: "A tiered-storage setting: accepted, no effect (no tiered storage).",
    },
    TopicConfigSpec {
        name: "remote.storage.enable",
        synonym: BrokerSynonym::None,
        config_type: ConfigType::Boolean,
        default: DefaultValue::Fixed("false"),
        valid: Valid::OnlyFalse(
            "Tiered Storage functionality is disabled in the broker. Topic cannot be \
             configured with remote log storage.",
        ),
        documentation: "Only 'false': Sluice has no tiered storage.",
    },
    TopicConfigSpec {
        name: "retention.bytes",
        synonym: BrokerSynonym::Shown("log.retention.bytes"),
        config_type: ConfigType::Long,
        default: DefaultValue::Broker(|c| c.retention_bytes.to_string(), "-1"),
        valid: Valid::Any,
        documentation: "Largest size of a partition before old segments are deleted; -1 for no \
                        limit.",
    },
    TopicConfigSpec {
        name: "retention.ms",
        synonym: BrokerSynonym::Unset("log.retention.ms"),
        config_type: ConfigType::Long,
        default: DefaultValue::Broker(|c| c.retention_ms.to_string(), "604800000"),
        valid: Valid::AtLeast(-1),
        documentation: "Age after which a segment is deleted; -1 keeps segments forever.",
    },
    TopicConfigSpec {
        name: "segment.bytes",
        synonym: BrokerSynonym::Shown("log.segment.bytes"),
        config_type: ConfigType::Int,
        default: DefaultValue::Broker(|c| c.segment_bytes_max.to_string(), "1073741824"),
        valid: Valid::AtLeast(1024 * 1024),
        documentation: "Segment size at which a new segment is rolled.",
    },
    TopicConfigSpec {
        name: "segment.index.bytes",
        synonym: BrokerSynonym::Shown("log.index.size.max.bytes"),
        config_type: ConfigType::Int,
        default: DefaultValue::Fixed("10485760"),
        valid: Valid::AtLeast(4),
        documentation: "Accepted; Sluice's offset index grows with its segment.",
    },
    TopicConfigSpec {
        name: "segment.jitter.ms",
        synonym: BrokerSynonym::Unset("log.roll.jitter.ms"),
        config_type: ConfigType::Long,
        default: DefaultValue::Fixed("0"),
        valid: Valid::AtLeast(0),
        documentation: "Accepted; Sluice rolls segments at segment.ms exactly.",
    },
    TopicConfigSpec {
        name: "segment.ms",
        synonym: BrokerSynonym::Unset("log.roll.ms"),
        config_type: ConfigType::Long,
        default: DefaultValue::Broker(|c| c.segment_ms_max.to_string(), "604800000"),
        valid: Valid::AtLeast(1),
        documentation: "Segment age at which a new segment is rolled.",
    },
    TopicConfigSpec {
        name: "unclean.leader.election.enable",
        synonym: BrokerSynonym::Shown("unclean.leader.election.enable"),
        config_type: ConfigType::Boolean,
        default: DefaultValue::Fixed("false"),
        valid: Valid::Any,
        documentation: "Accepted; Raft never elects a replica that lacks committed entries.",
    },
];

/// The names of every topic config (Kafka's, with Sluice's `fsync` and
/// `message.key.index.enable`), sorted.
pub fn topic_config_names() -> impl Iterator<Item = &'static str> {
    TOPIC_CONFIGS.iter().map(|spec| spec.name)
}

fn spec(name: &str) -> Option<&'static TopicConfigSpec> {
    TOPIC_CONFIGS.iter().find(|spec| spec.name == name)
}

/// Kafka's message for a value its validator refuses.
fn invalid(name: &str, value: &str, why: impl std::fmt::Display) -> BrokerError {
    BrokerError::InvalidConfig(format!(
        "Invalid value {value} for configuration {name}: {why}"
    ))
}

/// Parses and validates one value as Kafka's `ConfigDef` does (values are trimmed first).
fn validate(spec: &TopicConfigSpec, raw: &str) -> Result<(), BrokerError> {
    let value = raw.trim();
    let name = spec.name;
    let number = match spec.config_type {
        ConfigType::Int | ConfigType::Short => Some(
            value
                .parse::<i32>()
                .map_err(|_| invalid(name, value, "Not a number of type INT"))? as i64,
        ),
        ConfigType::Long => Some(
            value
                .parse::<i64>()
                .map_err(|_| invalid(name, value, "Not a number of type LONG"))?,
        ),
        ConfigType::Boolean => {
            if !value.eq_ignore_ascii_case("true") && !value.eq_ignore_ascii_case("false") {
                return Err(invalid(
                    name,
                    value,
                    "Expected value to be either true or false",
                ));
            }
            None
        }
        _ => None,
    };
    match spec.valid {
        Valid::Any => {}
        Valid::AtLeast(min) => {
            if number.is_some_and(|n| n < min) {
                return Err(invalid(
                    name,
                    value,
                    format!("Value must be at least {min}"),
                ));
            }
        }
        Valid::Between(min, max) => match number {
            Some(n) if n < min => {
                return Err(invalid(
                    name,
                    value,
                    format!("Value must be at least {min}"),
                ))
            }
            Some(n) if n > max => {
                return Err(invalid(
                    name,
                    value,
                    format!("Value must be no more than {max}"),
                ))
            }
            _ => {}
        },
        Valid::BetweenOrEqual(min, max, special) => {
            if number.is_some_and(|n| n != special && !(min..=max).contains(&n)) {
                return Err(invalid(
                    name,
                    value,
                    format!("Value must be between {min} and {max} or equal to {special}"),
                ));
            }
        }
        Valid::DoubleBetween(min, max) => {
            let n: f64 = value
                .parse()
                .map_err(|_| invalid(name, value, "Not a number of type DOUBLE"))?;
            if n.is_nan() || n < min {
                return Err(invalid(
                    name,
                    value,
                    format!("Value must be at least {min}"),
                ));
            }
            if n > max {
                return Err(invalid(
                    name,
                    value,
                    format!("Value must be no more than {max}"),
                ));
            }
        }
        Valid::OneOf(allowed) => {
            if !allowed.contains(&value) {
                return Err(invalid(
                    name,
                    value,
                    format!("String must be one of: {}", allowed.join(", ")),
                ));
            }
        }
        Valid::ListOf(allowed) => {
            for item in list_items(value) {
                if !allowed.contains(&item) {
                    return Err(invalid(
                        name,
                        value,
                        format!("Invalid value {item}; must be one of {allowed:?}"),
                    ));
                }
            }
        }
        Valid::ThrottledReplicas => {
            let pair = |item: &str| {
                item.split_once(':').is_some_and(|(partition, broker)| {
                    partition.trim().parse::<u32>().is_ok() && broker.trim().parse::<u32>().is_ok()
                })
            };
            let items: Vec<&str> = list_items(value).collect();
            if !(items == ["*"] || items.iter().all(|item| pair(item))) {
                return Err(invalid(
                    name,
                    &format!("[{value}]"),
                    format!(
                        "{name} must be the literal '*' or a list of replicas in the following \
                         format: [partitionId]:[brokerId],[partitionId]:[brokerId],..."
                    ),
                ));
            }
        }
        Valid::OnlyFalse(message) => {
            if value.eq_ignore_ascii_case("true") {
                return Err(BrokerError::InvalidConfig(message.to_string()));
            }
        }
    }
    Ok(())
}

/// The items of a Kafka list value: comma-separated, trimmed, empty ones dropped.
fn list_items(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
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
        for (key, value) in &overrides {
            let spec = spec(key).ok_or_else(|| {
                BrokerError::InvalidConfig(format!("Unknown topic config name: {key}"))
            })?;
            validate(spec, value)?;
        }
        let config = TopicConfig { overrides };
        let log = config.log_config(defaults)?;
        if log.min_compaction_lag_ms > log.max_compaction_lag_ms {
            // Kafka's wording.
            return Err(BrokerError::InvalidConfig(format!(
                "conflict topic config setting min.compaction.lag.ms ({}) > \
                 max.compaction.lag.ms ({})",
                log.min_compaction_lag_ms, log.max_compaction_lag_ms
            )));
        }
        Ok(config)
    }

    pub fn overrides(&self) -> &BTreeMap<String, String> {
        &self.overrides
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.overrides.get(name).map(|value| value.trim())
    }

    /// `cleanup.policy` includes `compact`.
    pub fn compacts(&self) -> bool {
        self.value("cleanup.policy")
            .is_some_and(|policy| list_items(policy).any(|item| item == "compact"))
    }

    /// `message.timestamp.type=LogAppendTime`: the broker stamps batches with its own clock.
    pub fn log_append_time(&self) -> bool {
        self.value("message.timestamp.type") == Some("LogAppendTime")
    }

    /// What the partitions do with produced timestamps.
    pub fn timestamp_rules(&self) -> TimestampRules {
        let defaults = TimestampRules::default();
        let get = |name, default| {
            self.value(name)
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        TimestampRules {
            log_append_time: self.log_append_time(),
            before_max_ms: get("message.timestamp.before.max.ms", defaults.before_max_ms),
            after_max_ms: get("message.timestamp.after.max.ms", defaults.after_max_ms),
        }
    }

    /// The topic's log settings: defaults with this topic's overrides applied.
    pub fn log_config(&self, defaults: &LogConfig) -> Result<LogConfig, BrokerError> {
        let mut config = defaults.clone();
        for (key, value) in &self.overrides {
            let value = value.trim();
            let invalid =
                || BrokerError::InvalidConfig(format!("invalid value '{value}' for '{key}'"));
            match key.as_str() {
                "retention.ms" => config.retention_ms = value.parse().map_err(|_| invalid())?,
                "retention.bytes" => {
                    config.retention_bytes = value.parse().map_err(|_| invalid())?
                }
                "segment.bytes" => {
                    config.segment_bytes_max = value.parse().map_err(|_| invalid())?
                }
                "segment.ms" => config.segment_ms_max = value.parse().map_err(|_| invalid())?,
                "max.message.bytes" => {
                    config.batch_bytes_max = value.parse().map_err(|_| invalid())?;
                }
                "index.interval.bytes" => {
                    config.index_interval_bytes = value.parse().map_err(|_| invalid())?;
                }
                "fsync" => config.durability = Durability::parse(value).map_err(|_| invalid())?,
                "message.key.index.enable" => {
                    config.key_index = value.to_ascii_lowercase().parse().map_err(|_| invalid())?
                }
                "cleanup.policy" => {
                    config.compact = list_items(value).any(|item| item == "compact")
                }
                "delete.retention.ms" => {
                    config.delete_retention_ms = value.parse().map_err(|_| invalid())?
                }
                "min.cleanable.dirty.ratio" => {
                    config.min_cleanable_dirty_ratio = value.parse().map_err(|_| invalid())?
                }
                "min.compaction.lag.ms" => {
                    config.min_compaction_lag_ms = value.parse().map_err(|_| invalid())?
                }
                "max.compaction.lag.ms" => {
                    config.max_compaction_lag_ms = value.parse().map_err(|_| invalid())?
                }
                _ => {}
            }
        }
        // Without 'delete' in the policy nothing is removed by age or size.
        if let Some(policy) = self.value("cleanup.policy") {
            if !list_items(policy).any(|item| item == "delete") {
                config.retention_ms = -1;
                config.retention_bytes = -1;
            }
        }
        Ok(config)
    }

    /// Every topic config with its value: the override, else the broker's setting, else
    /// Kafka's default.
    pub fn describe(&self, defaults: &LogConfig) -> Vec<ConfigEntry> {
        TOPIC_CONFIGS
            .iter()
            .map(|spec| {
                let (broker_value, broker_source) = match spec.default {
                    DefaultValue::Fixed(value) => (value.to_string(), ConfigSource::Default),
                    DefaultValue::Broker(from_broker, kafka_default) => {
                        let value = from_broker(defaults);
                        let source = if value == kafka_default {
                            ConfigSource::Default
                        } else {
                            ConfigSource::StaticBroker
                        };
                        (value, source)
                    }
                };
                let mut synonyms = Vec::new();
                if let Some(value) = self.overrides.get(spec.name) {
                    synonyms.push(ConfigSynonym {
                        name: spec.name.to_string(),
                        value: value.clone(),
                        source: ConfigSource::TopicOverride,
                    });
                }
                let broker_synonym = match spec.synonym {
                    BrokerSynonym::Shown(name) => Some(name),
                    BrokerSynonym::Unset(name) if broker_source == ConfigSource::StaticBroker => {
                        Some(name)
                    }
                    _ => None,
                };
                if let Some(name) = broker_synonym {
                    synonyms.push(ConfigSynonym {
                        name: name.to_string(),
                        value: broker_value.clone(),
                        source: broker_source,
                    });
                }
                let (value, source) = match self.overrides.get(spec.name) {
                    Some(value) => (value.clone(), ConfigSource::TopicOverride),
                    None => (broker_value, broker_source),
                };
                ConfigEntry {
                    name: spec.name.to_string(),
                    value,
                    source,
                    read_only: false,
                    config_type: spec.config_type,
                    documentation: spec.documentation,
                    synonyms,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, value: &str) -> Result<TopicConfig, BrokerError> {
        TopicConfig::new(
            BTreeMap::from([(name.to_string(), value.to_string())]),
            &LogConfig::default(),
        )
    }

    #[test]
    fn values_are_validated_as_kafka_validates_them() {
        for (name, value) in [
            ("segment.bytes", "1048576"),
            ("retention.ms", " 100"),
            ("retention.bytes", "-5"),
            ("max.message.bytes", "0"),
            ("compression.type", "zstd"),
            ("compression.gzip.level", "-1"),
            ("compression.zstd.level", "-131072"),
            ("cleanup.policy", "delete"),
            ("cleanup.policy", ""),
            ("follower.replication.throttled.replicas", "*"),
            ("leader.replication.throttled.replicas", "0:1, 1:2"),
            ("unclean.leader.election.enable", "TRUE"),
            ("min.cleanable.dirty.ratio", "0.25"),
            ("remote.storage.enable", "false"),
        ] {
            assert!(check(name, value).is_ok(), "{name}={value} refused");
        }
        for (name, value, message) in [
            ("segment.bytes", "1048575", "Value must be at least 1048576"),
            ("retention.ms", "-2", "Value must be at least -1"),
            ("retention.ms", "soon", "Not a number of type LONG"),
            ("flush.messages", "0", "Value must be at least 1"),
            ("compression.type", "brotli", "String must be one of"),
            (
                "compression.gzip.level",
                "0",
                "between 1 and 9 or equal to -1",
            ),
            ("compression.lz4.level", "18", "no more than 17"),
            ("min.cleanable.dirty.ratio", "1.5", "no more than 1"),
            ("preallocate", "yes", "either true or false"),
            (
                "follower.replication.throttled.replicas",
                "bogus",
                "literal '*'",
            ),
            ("remote.storage.enable", "true", "Tiered Storage"),
            ("message.format.version", "3.0", "Unknown topic config name"),
            ("cleanup.policy", "shred", "must be one of"),
            ("min.compaction.lag.ms", "-1", "at least 0"),
        ] {
            let error = check(name, value).expect_err(name).to_string();
            assert!(error.contains(message), "{name}={value}: {error}");
        }
    }

    #[test]
    fn describe_names_every_config_with_its_source() {
        let defaults = LogConfig {
            retention_ms: 1000,
            ..LogConfig::default()
        };
        let config = check("segment.ms", "5000").expect("valid");
        let entries = config.describe(&defaults);
        assert_eq!(entries.len(), TOPIC_CONFIGS.len());
        let entry = |name: &str| {
            entries
                .iter()
                .find(|e| e.name == name)
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        assert_eq!(entry("segment.ms").value, "5000");
        assert_eq!(entry("segment.ms").source, ConfigSource::TopicOverride);
        assert_eq!(entry("retention.ms").value, "1000");
        assert_eq!(entry("retention.ms").source, ConfigSource::StaticBroker);
        assert_eq!(entry("compression.type").value, "producer");
        assert_eq!(entry("compression.type").source, ConfigSource::Default);
        let names: Vec<_> = topic_config_names().collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted, "the table is kept sorted by name");
    }

    #[test]
    fn compaction_settings_reach_the_log() {
        let config = TopicConfig::new(
            BTreeMap::from([
                ("cleanup.policy".to_string(), "compact, delete".to_string()),
                ("delete.retention.ms".to_string(), "5".to_string()),
                ("min.cleanable.dirty.ratio".to_string(), "0.1".to_string()),
                ("min.compaction.lag.ms".to_string(), "7".to_string()),
                ("max.compaction.lag.ms".to_string(), "9".to_string()),
            ]),
            &LogConfig::default(),
        )
        .expect("valid");
        assert!(config.compacts());
        let log = config.log_config(&LogConfig::default()).expect("valid");
        assert!(log.compact);
        assert_eq!(log.retention_ms, LogConfig::default().retention_ms);
        assert_eq!(
            (
                log.delete_retention_ms,
                log.min_compaction_lag_ms,
                log.max_compaction_lag_ms
            ),
            (5, 7, 9)
        );
        assert_eq!(log.min_cleanable_dirty_ratio, 0.1);
        let compact_only = check("cleanup.policy", "compact")
            .and_then(|c| c.log_config(&LogConfig::default()))
            .expect("valid");
        assert!(compact_only.compact);
        assert_eq!(
            (compact_only.retention_ms, compact_only.retention_bytes),
            (-1, -1)
        );
        let conflict = TopicConfig::new(
            BTreeMap::from([
                ("min.compaction.lag.ms".to_string(), "10".to_string()),
                ("max.compaction.lag.ms".to_string(), "9".to_string()),
            ]),
            &LogConfig::default(),
        )
        .expect_err("min above max");
        assert!(conflict
            .to_string()
            .contains("conflict topic config setting"));
    }

    #[test]
    fn a_policy_without_delete_keeps_everything() {
        let log = check("cleanup.policy", "")
            .and_then(|c| c.log_config(&LogConfig::default()))
            .expect("valid");
        assert_eq!((log.retention_ms, log.retention_bytes), (-1, -1));
    }
}
