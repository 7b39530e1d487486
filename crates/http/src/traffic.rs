//! Rates from counters: a task samples the broker's and every queue's totals every
//! `SAMPLE_PERIOD`, and the API reports the change over the last period per second.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_broker::vhost::{QueueStats, QueueSummary};
use sluice_broker::TrafficTotals;

use crate::model::{QueueMessageStats, TrafficStats};
use crate::AppState;

const SAMPLE_PERIOD: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct TrafficSampler {
    state: Mutex<SamplerState>,
}

#[derive(Default)]
struct SamplerState {
    last: Option<(Instant, TrafficTotals)>,
    rates: TrafficRates,
    /// By vhost and queue name.
    queues: HashMap<(String, String), QueueSample>,
}

#[derive(Default, Clone, Copy)]
struct TrafficRates {
    messages_in: f64,
    bytes_in: f64,
    messages_out: f64,
    bytes_out: f64,
}

struct QueueSample {
    at: Instant,
    stats: QueueStats,
    publish: f64,
    deliver: f64,
    ack: f64,
}

/// Counters only grow, except when an object they were summed over is deleted: a drop
/// counts as no traffic, never as a negative rate.
fn per_second(now: u64, before: u64, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        return 0.0;
    }
    now.saturating_sub(before) as f64 / seconds
}

fn totals(state: &AppState) -> TrafficTotals {
    state
        .context
        .vhosts
        .list()
        .iter()
        .fold(state.context.broker.traffic(), |sum, vhost| {
            sum + vhost.traffic()
        })
}

impl TrafficSampler {
    pub fn stats(&self, state: &AppState) -> TrafficStats {
        let now = totals(state);
        let rates = self.state.lock().rates;
        TrafficStats {
            messages_in_per_sec: rates.messages_in,
            bytes_in_per_sec: rates.bytes_in,
            messages_out_per_sec: rates.messages_out,
            bytes_out_per_sec: rates.bytes_out,
            messages_in_total: now.messages_in,
            bytes_in_total: now.bytes_in,
            messages_out_total: now.messages_out,
            bytes_out_total: now.bytes_out,
        }
    }

    pub fn queue_stats(&self, vhost: &str, name: &str, stats: QueueStats) -> QueueMessageStats {
        let state = self.state.lock();
        let (publish, deliver, ack) = state
            .queues
            .get(&(vhost.to_string(), name.to_string()))
            .map_or((0.0, 0.0, 0.0), |s| (s.publish, s.deliver, s.ack));
        QueueMessageStats {
            publish_total: stats.published_total,
            deliver_total: stats.delivered_total,
            ack_total: stats.acked_total,
            publish_per_sec: publish,
            deliver_per_sec: deliver,
            ack_per_sec: ack,
        }
    }

    fn sample(&self, app: &AppState) {
        let at = Instant::now();
        let now = totals(app);
        let mut queues: Vec<((String, String), QueueStats)> = Vec::new();
        for vhost in app.context.vhosts.list() {
            queues.extend(
                vhost
                    .queues()
                    .into_iter()
                    .filter_map(|(name, queue)| match queue {
                        QueueSummary::Classic(queue) => {
                            Some(((vhost.vhost_name().to_string(), name), queue.stats()))
                        }
                        QueueSummary::Stream(_) => None,
                    }),
            );
        }
        let mut state = self.state.lock();
        if let Some((before_at, before)) = state.last {
            let seconds = at.duration_since(before_at).as_secs_f64();
            state.rates = TrafficRates {
                messages_in: per_second(now.messages_in, before.messages_in, seconds),
                bytes_in: per_second(now.bytes_in, before.bytes_in, seconds),
                messages_out: per_second(now.messages_out, before.messages_out, seconds),
                bytes_out: per_second(now.bytes_out, before.bytes_out, seconds),
            };
        }
        state.last = Some((at, now));
        let mut next = HashMap::with_capacity(queues.len());
        for (name, stats) in queues {
            let sample = match state.queues.get(&name) {
                Some(before) => {
                    let seconds = at.duration_since(before.at).as_secs_f64();
                    QueueSample {
                        at,
                        stats,
                        publish: per_second(
                            stats.published_total,
                            before.stats.published_total,
                            seconds,
                        ),
                        deliver: per_second(
                            stats.delivered_total,
                            before.stats.delivered_total,
                            seconds,
                        ),
                        ack: per_second(stats.acked_total, before.stats.acked_total, seconds),
                    }
                }
                None => QueueSample {
                    at,
                    stats,
                    publish: 0.0,
                    deliver: 0.0,
                    ack: 0.0,
                },
            };
            next.insert(name, sample);
        }
        state.queues = next;
    }
}

pub fn start(app: Weak<AppState>) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(SAMPLE_PERIOD);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(app) = app.upgrade() else { return };
            app.traffic.sample(&app);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_that_went_down_is_no_traffic() {
        assert_eq!(per_second(100, 50, 5.0), 10.0);
        assert_eq!(per_second(10, 50, 5.0), 0.0);
        assert_eq!(per_second(10, 0, 0.0), 0.0);
    }
}
