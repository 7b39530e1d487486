//! What every load run shares between its workers: one clock, a run id, and the first error.

use std::sync::Mutex;
use std::time::Instant;

/// A monotonic clock shared by producers and consumers in this process, so end-to-end latency
/// needs no clock synchronisation.
pub struct RunClock {
    epoch: Instant,
}

impl RunClock {
    pub fn start() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// Unique enough to tell runs apart: wall-clock nanoseconds mixed with the process id.
pub fn new_run_id() -> u64 {
    let unix_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    unix_ns ^ (u64::from(std::process::id()) << 48)
}

/// Keeps the first error of a run as an example for the report.
#[derive(Default)]
pub struct FirstError(Mutex<Option<String>>);

impl FirstError {
    pub fn record(&self, message: String) {
        let mut first_error = self.0.lock().expect("error lock poisoned");
        if first_error.is_none() {
            *first_error = Some(message);
        }
    }

    pub fn get(&self) -> Option<String> {
        self.0.lock().expect("error lock poisoned").clone()
    }
}
