//! The housekeeping task: TTL expiry, settle-log writes and snapshots, resource alarms.

use std::sync::Arc;
use std::time::Duration;

use super::VirtualHost;

impl VirtualHost {
    /// Starts the housekeeping task (TTL expiry, settle-log snapshots, resource alarms).
    pub fn start_housekeeping(self: &Arc<Self>) {
        // A disk already short of space blocks publishers from the start.
        self.update_alarm();
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = 0u64;
            let mut interval = tokio::time::interval(Duration::from_millis(20));
            // A slow disk delays the next tick instead of bunching the missed ones.
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(vhost) = weak.upgrade() else { return };
                if vhost.is_deleted() {
                    return;
                }
                ticks += 1;
                // Settle writes, snapshots (with their fsyncs), reading stored heads to expire
                // them and the free-space check are file I/O: never on an async worker.
                let tick = tokio::task::spawn_blocking(move || vhost.housekeeping_tick(ticks));
                if tick.await.is_err() {
                    tracing::error!("a housekeeping tick panicked");
                }
            }
        });
    }

    fn housekeeping_tick(&self, ticks: u64) {
        let now = crate::now_ms();
        for queue in self.all_queues() {
            queue.expire(now);
            queue.write_pending_settles();
            if ticks.is_multiple_of(50) {
                queue.maybe_snapshot();
            }
        }
        if ticks.is_multiple_of(25) {
            self.update_alarm();
        }
    }
}
