//! The progress bar shown while producers run: elapsed time and the current rates.

use std::thread;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

const PROGRESS_TICK: Duration = Duration::from_millis(250);

/// What the progress bar shows at each tick.
pub struct ProgressCounts {
    /// Messages the broker has acknowledged so far.
    pub acked_msgs: u64,
    pub consumed_msgs: u64,
    pub errors: u64,
}

/// Blocks until `duration` has passed since `started`, showing the acknowledged and consumed
/// rates (hidden when `visible` is false or stderr is not a terminal). `acked_label` names the
/// acknowledgement ("produced", "confirmed").
pub fn show_rates(
    duration: Duration,
    started: Instant,
    visible: bool,
    acked_label: &str,
    mut counts: impl FnMut() -> ProgressCounts,
) {
    let duration_ms = duration.as_millis() as u64;
    let progress = if visible {
        ProgressBar::new(duration_ms)
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {msg}")
            .expect("static progress template is valid"),
    );
    let mut last_tick = Instant::now();
    let mut last_acked_msgs = 0;
    let mut last_consumed_msgs = 0;
    while started.elapsed() < duration {
        let remaining = duration.saturating_sub(started.elapsed());
        thread::sleep(PROGRESS_TICK.min(remaining));
        let tick_secs = last_tick.elapsed().as_secs_f64();
        last_tick = Instant::now();
        let now = counts();
        let acked_msgs_per_sec = now.acked_msgs.saturating_sub(last_acked_msgs) as f64 / tick_secs;
        let consumed_msgs_per_sec =
            now.consumed_msgs.saturating_sub(last_consumed_msgs) as f64 / tick_secs;
        last_acked_msgs = now.acked_msgs;
        last_consumed_msgs = now.consumed_msgs;
        progress.set_position(started.elapsed().as_millis() as u64);
        progress.set_message(format!(
            "{acked_label} {acked_msgs_per_sec:>10.0} msgs/s  consumed {consumed_msgs_per_sec:>10.0} msgs/s  errors {}",
            now.errors
        ));
    }
    progress.finish_and_clear();
}
