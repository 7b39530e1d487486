use std::time::Duration;

use crate::LogError;

/// When appended data is forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Group commit: every append is followed by a shared fdatasync before it is acknowledged.
    /// The high watermark only advances over synced data.
    Batch,
    /// A background flusher syncs at this interval; the high watermark advances on append.
    Interval(Duration),
    /// Never fsync explicitly (the OS decides); the high watermark advances on append.
    Never,
}

impl Durability {
    /// Parses `batch`, `never` or `interval:<ms>`.
    pub fn parse(text: &str) -> Result<Durability, LogError> {
        let text = text.trim();
        match text {
            "batch" => Ok(Durability::Batch),
            "never" => Ok(Durability::Never),
            _ => {
                let interval_ms = text
                    .strip_prefix("interval:")
                    .and_then(|ms| ms.trim().parse::<u64>().ok())
                    .filter(|ms| *ms > 0)
                    .ok_or_else(|| {
                        LogError::InvalidConfig(format!(
                            "fsync must be batch, never or interval:<ms> with ms > 0, got {text:?}"
                        ))
                    })?;
                Ok(Durability::Interval(Duration::from_millis(interval_ms)))
            }
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Durability::Batch => write!(f, "batch"),
            Durability::Interval(d) => write!(f, "interval:{}", d.as_millis()),
            Durability::Never => write!(f, "never"),
        }
    }
}

/// Per-partition storage settings (a topic's configs, translated).
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// Roll the active segment when it would grow past this (Kafka `segment.bytes`, default 1 GiB).
    pub segment_bytes_max: u64,
    /// Roll the active segment when its first batch is older than this (Kafka `segment.ms`, 7 days).
    pub segment_ms_max: i64,
    /// Delete whole old segments while the partition is bigger than this (`retention.bytes`, -1 = off).
    pub retention_bytes: i64,
    /// Delete whole segments whose newest batch is older than this (`retention.ms`, 7 days, -1 = off).
    pub retention_ms: i64,
    /// One offset/time index entry every this many bytes of log (`index.interval.bytes`, 4096).
    pub index_interval_bytes: u32,
    /// Largest single append accepted (`message.max.bytes`, default 1 MiB + batch overhead).
    pub batch_bytes_max: u32,
    pub durability: Durability,
    /// Keep a per-segment hash index of record keys and `message-id` headers (`N.keyindex`) for
    /// `PartitionLog::find_records` (topic config `message.key.index.enable`, default on).
    pub key_index: bool,
    /// `cleanup.policy` includes `compact`: [`crate::PartitionLog::clean`] keeps the last
    /// record of each key.
    pub compact: bool,
    /// Tombstones (records with a null value) are removed by compaction once their segment's
    /// newest record is older than this (`delete.retention.ms`, 1 day).
    pub delete_retention_ms: i64,
    /// Compact when the bytes not cleaned yet reach this share of the cleanable bytes
    /// (`min.cleanable.dirty.ratio`, 0.5).
    pub min_cleanable_dirty_ratio: f64,
    /// Records younger than this are not compacted (`min.compaction.lag.ms`, 0).
    pub min_compaction_lag_ms: i64,
    /// Compact regardless of the ratio once uncleaned records are older than this
    /// (`max.compaction.lag.ms`, unbounded).
    pub max_compaction_lag_ms: i64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes_max: 1 << 30,
            segment_ms_max: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            retention_ms: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            batch_bytes_max: 1_048_588,
            durability: Durability::Batch,
            key_index: true,
            compact: false,
            delete_retention_ms: 24 * 3600 * 1000,
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_parses_and_displays() {
        for text in ["batch", "never", "interval:250"] {
            assert_eq!(Durability::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(
            Durability::parse("interval:5").unwrap(),
            Durability::Interval(Duration::from_millis(5))
        );
        for bad in [
            "",
            "always",
            "interval:",
            "interval:0",
            "interval:-3",
            "interval:x",
        ] {
            assert!(
                matches!(Durability::parse(bad), Err(LogError::InvalidConfig(_))),
                "{bad}"
            );
        }
    }
}
