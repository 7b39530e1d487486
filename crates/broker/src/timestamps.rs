//! A topic's timestamp rules as a partition applies them to every produced batch: Kafka's
//! `message.timestamp.type` and the CreateTime window of `message.timestamp.before.max.ms` and
//! `message.timestamp.after.max.ms` (KIP-937).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use sluice_log::BatchHeader;

use crate::BrokerError;

/// What a topic's configs say about timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampRules {
    /// The broker stamps batches with its own clock (LogAppendTime); no window applies.
    pub log_append_time: bool,
    /// How far before the broker's clock a CreateTime timestamp may be.
    pub before_max_ms: i64,
    /// How far after the broker's clock a CreateTime timestamp may be.
    pub after_max_ms: i64,
}

impl Default for TimestampRules {
    /// Kafka 4's defaults: CreateTime, any age, at most one hour ahead.
    fn default() -> Self {
        TimestampRules {
            log_append_time: false,
            before_max_ms: i64::MAX,
            after_max_ms: 3_600_000,
        }
    }
}

impl TimestampRules {
    /// Refuses a request whose CreateTime batches fall outside the window around `now`, as
    /// Kafka does with INVALID_TIMESTAMP. A batch's largest timestamp bounds it above; its
    /// first record's timestamp is taken as its earliest (records rarely go back in time
    /// within one batch, and reading every record of a compressed batch would cost a
    /// decompression per request).
    pub fn check(&self, headers: &[BatchHeader], now_ms: i64) -> Result<(), BrokerError> {
        if self.log_append_time {
            return Ok(());
        }
        for header in headers {
            let (earliest, latest) = (header.base_timestamp, header.max_timestamp);
            if latest > now_ms.saturating_add(self.after_max_ms) {
                return Err(BrokerError::InvalidTimestamp(format!(
                    "timestamp {latest} of a record is more than message.timestamp.after.max.ms \
                     ({} ms) after the broker's clock ({now_ms})",
                    self.after_max_ms
                )));
            }
            // -1 is "no timestamp" (a v2 batch from a client that set none).
            if earliest >= 0 && earliest < now_ms.saturating_sub(self.before_max_ms) {
                return Err(BrokerError::InvalidTimestamp(format!(
                    "timestamp {earliest} of a record is more than \
                     message.timestamp.before.max.ms ({} ms) before the broker's clock \
                     ({now_ms})",
                    self.before_max_ms
                )));
            }
        }
        Ok(())
    }
}

/// A partition's current rules; AlterConfigs changes them while producers run.
#[derive(Debug)]
pub struct TimestampPolicy {
    log_append_time: AtomicBool,
    before_max_ms: AtomicI64,
    after_max_ms: AtomicI64,
}

impl TimestampPolicy {
    pub fn new(rules: TimestampRules) -> Self {
        TimestampPolicy {
            log_append_time: AtomicBool::new(rules.log_append_time),
            before_max_ms: AtomicI64::new(rules.before_max_ms),
            after_max_ms: AtomicI64::new(rules.after_max_ms),
        }
    }

    pub fn set(&self, rules: TimestampRules) {
        self.log_append_time
            .store(rules.log_append_time, Ordering::Relaxed);
        self.before_max_ms
            .store(rules.before_max_ms, Ordering::Relaxed);
        self.after_max_ms
            .store(rules.after_max_ms, Ordering::Relaxed);
    }

    pub fn rules(&self) -> TimestampRules {
        TimestampRules {
            log_append_time: self.log_append_time.load(Ordering::Relaxed),
            before_max_ms: self.before_max_ms.load(Ordering::Relaxed),
            after_max_ms: self.after_max_ms.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(first: i64, max: i64) -> BatchHeader {
        BatchHeader {
            base_timestamp: first,
            max_timestamp: max,
            ..BatchHeader::default()
        }
    }

    #[test]
    fn create_time_batches_must_fall_in_the_window() {
        let now = 10_000_000;
        let rules = TimestampRules {
            before_max_ms: 60_000,
            ..TimestampRules::default()
        };
        assert!(rules
            .check(&[batch(now - 60_000, now + 3_600_000)], now)
            .is_ok());
        assert!(rules.check(&[batch(now, now + 3_600_001)], now).is_err());
        assert!(rules.check(&[batch(now - 60_001, now)], now).is_err());
        assert!(rules.check(&[batch(-1, -1)], now).is_ok());
        let appended = TimestampRules {
            log_append_time: true,
            ..rules
        };
        assert!(appended.check(&[batch(0, i64::MAX)], now).is_ok());
    }
}
