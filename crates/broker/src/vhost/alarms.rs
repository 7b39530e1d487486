//! Resource alarms: publishers are blocked (connection.blocked) while messages held in memory
//! exceed the high watermark or the data directory's disk runs short of free space.

use std::sync::atomic::Ordering;

use tokio::sync::watch;

use super::VirtualHost;

/// The resource alarms that block publishers, as RabbitMQ's memory and disk alarms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceAlarms {
    pub memory: bool,
    pub disk: bool,
}

impl VirtualHost {
    pub(crate) fn memory_add(&self, bytes: i64) {
        let now = self.memory_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        let over = now > self.config.memory_high_watermark_bytes as i64;
        if over != self.memory_blocked.load(Ordering::Acquire) {
            self.memory_blocked.store(over, Ordering::Release);
            self.update_alarm();
        }
    }

    pub fn memory_bytes(&self) -> i64 {
        self.memory_bytes.load(Ordering::Acquire)
    }

    /// Which resource alarms hold now: messages in memory over the high watermark, and free
    /// disk under the limit (looked up now, with statvfs).
    pub fn alarms(&self) -> ResourceAlarms {
        ResourceAlarms {
            memory: self.memory_blocked.load(Ordering::Acquire),
            disk: self.disk_low(),
        }
    }

    fn disk_low(&self) -> bool {
        crate::disk_space(&self.config.data_dir)
            .is_some_and(|space| space.usable_bytes < self.config.disk_free_limit_bytes)
    }

    pub(super) fn update_alarm(&self) {
        let disk_low = self.disk_low();
        let reason = if self.memory_blocked.load(Ordering::Acquire) {
            Some("low on memory".to_string())
        } else if disk_low {
            Some("low on disk".to_string())
        } else {
            None
        };
        self.blocked.send_if_modified(|current| {
            if *current != reason {
                if let Some(why) = &reason {
                    tracing::warn!(reason = %why, "resource alarm: blocking publishers");
                } else {
                    tracing::info!("resource alarm cleared: unblocking publishers");
                }
                *current = reason;
                true
            } else {
                false
            }
        });
    }

    /// Why publishers are blocked now (None: they are not); changes are signalled.
    pub fn blocked(&self) -> watch::Receiver<Option<String>> {
        self.blocked.subscribe()
    }
}
