//! Per-group configs (KIP-848/KIP-932's dynamic group configs: IncrementalAlterConfigs and
//! DescribeConfigs on resource type GROUP). Each group's overrides are kept in one JSON file,
//! rewritten atomically on every change; a group without overrides has the broker's values.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use sluice_log::Storage;

use crate::{durable_fs, BrokerError, GroupConfig, GroupError};

pub const SHARE_AUTO_OFFSET_RESET: &str = "share.auto.offset.reset";
pub const SHARE_RECORD_LOCK_DURATION_MS: &str = "share.record.lock.duration.ms";
pub const SHARE_SESSION_TIMEOUT_MS: &str = "share.session.timeout.ms";
pub const SHARE_HEARTBEAT_INTERVAL_MS: &str = "share.heartbeat.interval.ms";
pub const SHARE_ISOLATION_LEVEL: &str = "share.isolation.level";
pub const CONSUMER_SESSION_TIMEOUT_MS: &str = "consumer.session.timeout.ms";
pub const CONSUMER_HEARTBEAT_INTERVAL_MS: &str = "consumer.heartbeat.interval.ms";
pub const STREAMS_SESSION_TIMEOUT_MS: &str = "streams.session.timeout.ms";
pub const STREAMS_HEARTBEAT_INTERVAL_MS: &str = "streams.heartbeat.interval.ms";
pub const STREAMS_NUM_STANDBY_REPLICAS: &str = "streams.num.standby.replicas";

/// One group config as DescribeConfigs lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfigEntry {
    pub name: &'static str,
    pub value: String,
    /// Set for this group (else the broker's value).
    pub is_override: bool,
    /// INT or STRING, as DescribeConfigs v3+ reports the type.
    pub is_int: bool,
    pub documentation: &'static str,
}

/// Where a share partition without a stored start offset begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareAutoOffsetReset {
    Earliest,
    Latest,
    /// The first record written at most this long ago.
    ByDuration(std::time::Duration),
}

struct Definition {
    name: &'static str,
    documentation: &'static str,
    kind: Kind,
}

enum Kind {
    /// An int between the bounds, with the broker's value as default.
    Int {
        default: fn(&GroupConfig) -> i64,
        min: fn(&GroupConfig) -> i64,
        max: fn(&GroupConfig) -> i64,
        /// The broker configs holding the bounds, which Kafka's refusals name.
        min_name: &'static str,
        max_name: &'static str,
    },
    Text {
        default: &'static str,
        valid: fn(&str) -> bool,
        valid_text: &'static str,
    },
}

const DEFINITIONS: &[Definition] = &[
    Definition {
        name: CONSUMER_HEARTBEAT_INTERVAL_MS,
        documentation: "The heartbeat interval given to the members of a consumer group.",
        kind: Kind::Int {
            default: |c| c.consumer_heartbeat_interval_ms as i64,
            min: |_| 5000,
            max: |_| 15000,
            min_name: "group.consumer.min.heartbeat.interval.ms",
            max_name: "group.consumer.max.heartbeat.interval.ms",
        },
    },
    Definition {
        name: CONSUMER_SESSION_TIMEOUT_MS,
        documentation:
            "The timeout to detect client failures when using the consumer group protocol.",
        kind: Kind::Int {
            default: |c| c.consumer_session_timeout_ms as i64,
            min: |_| 45000,
            max: |_| 60000,
            min_name: "group.consumer.min.session.timeout.ms",
            max_name: "group.consumer.max.session.timeout.ms",
        },
    },
    Definition {
        name: SHARE_AUTO_OFFSET_RESET,
        documentation: "The strategy to initialize the share-partition start offset.",
        kind: Kind::Text {
            default: "latest",
            valid: |v| parse_auto_offset_reset(v).is_some(),
            valid_text: "[latest, earliest, by_duration:PnDTnHnMn.nS]",
        },
    },
    Definition {
        name: SHARE_HEARTBEAT_INTERVAL_MS,
        documentation: "The heartbeat interval given to the members of a share group.",
        kind: Kind::Int {
            default: |c| c.share_heartbeat_interval_ms as i64,
            min: |_| 5000,
            max: |_| 15000,
            min_name: "group.share.min.heartbeat.interval.ms",
            max_name: "group.share.max.heartbeat.interval.ms",
        },
    },
    Definition {
        name: SHARE_ISOLATION_LEVEL,
        documentation: "Controls how to read records written transactionally.",
        kind: Kind::Text {
            default: "read_uncommitted",
            valid: |v| v == "read_uncommitted" || v == "read_committed",
            valid_text: "[read_committed, read_uncommitted]",
        },
    },
    Definition {
        name: SHARE_RECORD_LOCK_DURATION_MS,
        documentation: "The record acquisition lock duration in milliseconds for share groups.",
        kind: Kind::Int {
            default: |c| c.share_record_lock_duration_ms as i64,
            min: |_| 15000,
            max: |_| 60000,
            min_name: "group.share.min.record.lock.duration.ms",
            max_name: "group.share.max.record.lock.duration.ms",
        },
    },
    Definition {
        name: SHARE_SESSION_TIMEOUT_MS,
        documentation: "The timeout to detect client failures when using the share group protocol.",
        kind: Kind::Int {
            default: |c| c.share_session_timeout_ms as i64,
            min: |_| 45000,
            max: |_| 60000,
            min_name: "group.share.min.session.timeout.ms",
            max_name: "group.share.max.session.timeout.ms",
        },
    },
    Definition {
        name: STREAMS_HEARTBEAT_INTERVAL_MS,
        documentation: "The heartbeat interval given to the members of a streams group.",
        kind: Kind::Int {
            default: |_| 5000,
            min: |_| 5000,
            max: |_| 15000,
            min_name: "group.streams.min.heartbeat.interval.ms",
            max_name: "group.streams.max.heartbeat.interval.ms",
        },
    },
    Definition {
        name: STREAMS_NUM_STANDBY_REPLICAS,
        documentation: "The number of standby replicas for each task.",
        kind: Kind::Int {
            default: |_| 0,
            min: |_| 0,
            max: |_| 2,
            min_name: "",
            max_name: "group.streams.max.standby.replicas",
        },
    },
    Definition {
        name: STREAMS_SESSION_TIMEOUT_MS,
        documentation:
            "The timeout to detect client failures when using the streams group protocol.",
        kind: Kind::Int {
            default: |_| 45000,
            min: |_| 45000,
            max: |_| 60000,
            min_name: "group.streams.min.session.timeout.ms",
            max_name: "group.streams.max.session.timeout.ms",
        },
    },
];

/// `latest`, `earliest` or `by_duration:` and an ISO-8601 duration of days, hours, minutes
/// and seconds (`PnDTnHnMn.nS`), as Kafka's share.auto.offset.reset.
pub fn parse_auto_offset_reset(value: &str) -> Option<ShareAutoOffsetReset> {
    match value {
        "latest" => return Some(ShareAutoOffsetReset::Latest),
        "earliest" => return Some(ShareAutoOffsetReset::Earliest),
        _ => {}
    }
    let text = value.strip_prefix("by_duration:")?;
    parse_iso_duration(text).map(ShareAutoOffsetReset::ByDuration)
}

fn parse_iso_duration(text: &str) -> Option<std::time::Duration> {
    let rest = text.strip_prefix('P')?;
    let (days, time) = match rest.split_once('T') {
        Some((days, time)) => (days, Some(time)),
        None => (rest, None),
    };
    let mut seconds = 0f64;
    if !days.is_empty() {
        seconds += days.strip_suffix('D')?.parse::<u32>().ok()? as f64 * 86400.0;
    }
    if let Some(mut time) = time {
        if time.is_empty() {
            return None;
        }
        for (unit, factor) in [('H', 3600.0), ('M', 60.0), ('S', 1.0)] {
            if let Some(at) = time.find(unit) {
                let number: f64 = time[..at].parse().ok()?;
                if number < 0.0 || !number.is_finite() {
                    return None;
                }
                seconds += number * factor;
                time = &time[at + 1..];
            }
        }
        if !time.is_empty() {
            return None;
        }
    } else if days.is_empty() {
        return None;
    }
    Some(std::time::Duration::from_secs_f64(seconds))
}

/// Every group's overrides, durable.
pub(crate) struct GroupConfigs {
    storage: Arc<dyn Storage>,
    path: PathBuf,
    overrides: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
}

impl GroupConfigs {
    pub(crate) fn open(storage: Arc<dyn Storage>, path: PathBuf) -> Result<Self, BrokerError> {
        let overrides = durable_fs::read_json(storage.as_ref(), &path, "group config list")?
            .unwrap_or_default();
        Ok(GroupConfigs {
            storage,
            path,
            overrides: Mutex::new(overrides),
        })
    }

    /// Every group that has a config set.
    pub(crate) fn groups(&self) -> Vec<String> {
        self.overrides.lock().keys().cloned().collect()
    }

    pub(crate) fn value(&self, group_id: &str, name: &str) -> Option<String> {
        self.overrides.lock().get(group_id)?.get(name).cloned()
    }

    pub(crate) fn int_value(&self, group_id: &str, name: &str) -> Option<i64> {
        self.value(group_id, name)?.parse().ok()
    }

    /// Every config of the group, sorted by name.
    pub(crate) fn describe(&self, group_id: &str, broker: &GroupConfig) -> Vec<GroupConfigEntry> {
        let overrides = self.overrides.lock();
        let set = overrides.get(group_id);
        DEFINITIONS
            .iter()
            .map(|d| {
                let own = set.and_then(|s| s.get(d.name));
                let (default, is_int) = match &d.kind {
                    Kind::Int { default, .. } => (default(broker).to_string(), true),
                    Kind::Text { default, .. } => (default.to_string(), false),
                };
                GroupConfigEntry {
                    name: d.name,
                    value: own.cloned().unwrap_or(default),
                    is_override: own.is_some(),
                    is_int,
                    documentation: d.documentation,
                }
            })
            .collect()
    }

    /// Checks a whole change (set: `Some`, delete: `None`) against the definitions and the
    /// group's resulting values; applies and stores it unless `validate_only`.
    pub(crate) fn alter(
        &self,
        group_id: &str,
        changes: &[(String, Option<String>)],
        broker: &GroupConfig,
        validate_only: bool,
    ) -> Result<(), GroupError> {
        let mut overrides = self.overrides.lock();
        let mut next = overrides.get(group_id).cloned().unwrap_or_default();
        for (name, value) in changes {
            let Some(definition) = DEFINITIONS.iter().find(|d| d.name == name) else {
                // Deleting what cannot be set is no error, as in Kafka.
                if value.is_none() {
                    continue;
                }
                return Err(GroupError::InvalidConfig(format!(
                    "Unknown group config name: {name}"
                )));
            };
            match value {
                None => {
                    next.remove(name);
                }
                Some(value) => {
                    check(definition, value, broker)?;
                    next.insert(name.clone(), value.clone());
                }
            }
        }
        let int = |name: &str| {
            next.get(name)
                .and_then(|v| v.parse::<i64>().ok())
                .or_else(|| {
                    DEFINITIONS
                        .iter()
                        .find(|d| d.name == name)
                        .and_then(|d| match &d.kind {
                            Kind::Int { default, .. } => Some(default(broker)),
                            Kind::Text { .. } => None,
                        })
                })
        };
        for (heartbeat, session) in [
            (CONSUMER_HEARTBEAT_INTERVAL_MS, CONSUMER_SESSION_TIMEOUT_MS),
            (SHARE_HEARTBEAT_INTERVAL_MS, SHARE_SESSION_TIMEOUT_MS),
            (STREAMS_HEARTBEAT_INTERVAL_MS, STREAMS_SESSION_TIMEOUT_MS),
        ] {
            if int(heartbeat) >= int(session) {
                return Err(GroupError::InvalidConfig(format!(
                    "{heartbeat} must be less than {session}"
                )));
            }
        }
        if validate_only {
            return Ok(());
        }
        let mut all = overrides.clone();
        if next.is_empty() {
            all.remove(group_id);
        } else {
            all.insert(group_id.to_string(), next);
        }
        let bytes = serde_json::to_vec(&all).map_err(|e| GroupError::Storage(e.to_string()))?;
        durable_fs::write_atomically(self.storage.as_ref(), &self.path, &bytes)
            .map_err(|e| GroupError::Storage(e.to_string()))?;
        *overrides = all;
        Ok(())
    }

    /// A deleted group's configs go with it.
    pub(crate) fn forget(&self, group_id: &str) -> Result<(), GroupError> {
        let mut overrides = self.overrides.lock();
        if !overrides.contains_key(group_id) {
            return Ok(());
        }
        let mut all = overrides.clone();
        all.remove(group_id);
        let bytes = serde_json::to_vec(&all).map_err(|e| GroupError::Storage(e.to_string()))?;
        durable_fs::write_atomically(self.storage.as_ref(), &self.path, &bytes)
            .map_err(|e| GroupError::Storage(e.to_string()))?;
        *overrides = all;
        Ok(())
    }
}

fn check(definition: &Definition, value: &str, broker: &GroupConfig) -> Result<(), GroupError> {
    let name = definition.name;
    match &definition.kind {
        Kind::Int {
            min,
            max,
            min_name,
            max_name,
            ..
        } => {
            let Ok(number) = value.trim().parse::<i64>() else {
                return Err(GroupError::InvalidConfig(format!(
                    "Invalid value {value} for configuration {name}: Not a number of type INT"
                )));
            };
            let (min, max) = (min(broker), max(broker));
            if number < min {
                return Err(GroupError::InvalidConfig(if min_name.is_empty() {
                    format!("Invalid value {value} for configuration {name}: Value must be at least {min}")
                } else {
                    format!("{name} must be greater than or equal to {min_name}")
                }));
            }
            if number > max {
                return Err(GroupError::InvalidConfig(format!(
                    "{name} must be less than or equal to {max_name}"
                )));
            }
        }
        Kind::Text { .. } if name == SHARE_AUTO_OFFSET_RESET => {
            if parse_auto_offset_reset(value).is_none() {
                return Err(GroupError::InvalidConfig(format!(
                    "Invalid value {value} for configuration {name}: Invalid value `{value}` for \
                     configuration {name}. The value must be either 'earliest', 'latest' or of \
                     the format 'by_duration:<PnDTnHnMn.nS>'."
                )));
            }
        }
        Kind::Text {
            valid, valid_text, ..
        } => {
            if !valid(value) {
                return Err(GroupError::InvalidConfig(format!(
                    "Invalid value {value} for configuration {name}: String must be one of: {}",
                    valid_text.trim_matches(['[', ']'])
                )));
            }
        }
    }
    Ok(())
}
