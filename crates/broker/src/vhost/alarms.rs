//! Resource alarms: publishers are blocked (connection.blocked) while messages held in memory
//! exceed the high watermark or the data directory's disk runs short of free space. As in
//! RabbitMQ the alarms are the node's: every virtual host shares one `NodeResources`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use super::{VhostConfig, VirtualHost};

/// The resource alarms that block publishers, as RabbitMQ's memory and disk alarms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceAlarms {
    pub memory: bool,
    pub disk: bool,
}

/// Messages held in memory by every virtual host of the node, and the alarm they raise.
pub struct NodeResources {
    data_dir: PathBuf,
    memory_high_watermark_bytes: u64,
    disk_free_limit_bytes: u64,
    memory_bytes: AtomicI64,
    memory_blocked: AtomicBool,
    blocked: watch::Sender<Option<String>>,
}

impl NodeResources {
    pub fn new(config: &VhostConfig) -> Arc<NodeResources> {
        let (blocked, _) = watch::channel(None);
        Arc::new(NodeResources {
            data_dir: config.data_dir.clone(),
            memory_high_watermark_bytes: config.memory_high_watermark_bytes,
            disk_free_limit_bytes: config.disk_free_limit_bytes,
            memory_bytes: AtomicI64::new(0),
            memory_blocked: AtomicBool::new(false),
            blocked,
        })
    }

    fn memory_add(&self, bytes: i64) {
        let now = self.memory_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        let over = now > self.memory_high_watermark_bytes as i64;
        if over != self.memory_blocked.load(Ordering::Acquire) {
            self.memory_blocked.store(over, Ordering::Release);
            self.update_alarm();
        }
    }

    fn disk_low(&self) -> bool {
        crate::disk_space(&self.data_dir)
            .is_some_and(|space| space.usable_bytes < self.disk_free_limit_bytes)
    }

    pub(super) fn alarm(&self) -> Option<String> {
        self.blocked.borrow().clone()
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
}

impl VirtualHost {
    pub(crate) fn memory_add(&self, bytes: i64) {
        self.resources.memory_add(bytes);
    }

    /// Message bytes held in memory by every virtual host of the node.
    pub fn memory_bytes(&self) -> i64 {
        self.resources.memory_bytes.load(Ordering::Acquire)
    }

    /// Which resource alarms hold now: messages in memory over the high watermark, and free
    /// disk under the limit (looked up now, with statvfs).
    pub fn alarms(&self) -> ResourceAlarms {
        ResourceAlarms {
            memory: self.resources.memory_blocked.load(Ordering::Acquire),
            disk: self.resources.disk_low(),
        }
    }

    pub(super) fn update_alarm(&self) {
        self.resources.update_alarm();
    }

    /// Why publishers are blocked now (None: they are not); changes are signalled.
    pub fn blocked(&self) -> watch::Receiver<Option<String>> {
        self.resources.blocked.subscribe()
    }

    /// The node's resources this virtual host shares with the others.
    pub fn resources(&self) -> &Arc<NodeResources> {
        &self.resources
    }
}
