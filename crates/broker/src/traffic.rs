//! Message and byte counters of what came in (produced, published) and went out (fetched,
//! delivered), for the rates the HTTP API reports. Relaxed atomics: totals, not ordering.

use std::sync::atomic::{AtomicU64, Ordering};

/// Totals since the process started (of the objects that still exist).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficTotals {
    pub messages_in: u64,
    pub bytes_in: u64,
    pub messages_out: u64,
    pub bytes_out: u64,
}

impl std::ops::Add for TrafficTotals {
    type Output = TrafficTotals;
    fn add(self, other: TrafficTotals) -> TrafficTotals {
        TrafficTotals {
            messages_in: self.messages_in + other.messages_in,
            bytes_in: self.bytes_in + other.bytes_in,
            messages_out: self.messages_out + other.messages_out,
            bytes_out: self.bytes_out + other.bytes_out,
        }
    }
}

#[derive(Debug, Default)]
pub struct TrafficCounters {
    messages_in: AtomicU64,
    bytes_in: AtomicU64,
    messages_out: AtomicU64,
    bytes_out: AtomicU64,
}

impl TrafficCounters {
    pub fn record_in(&self, messages: u64, bytes: u64) {
        self.messages_in.fetch_add(messages, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn record_out(&self, messages: u64, bytes: u64) {
        self.messages_out.fetch_add(messages, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn totals(&self) -> TrafficTotals {
        TrafficTotals {
            messages_in: self.messages_in.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            messages_out: self.messages_out.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
        }
    }
}
