//! The process-wide metrics recorder (Prometheus text format) and the task that keeps its
//! sampled gauges fresh. The libraries record through the `metrics` facade only; this binary
//! decides where the numbers go. The recorder has no listener of its own: the HTTP front end
//! renders the returned handle on `GET /metrics`.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};
use sluice_broker::gauge_sampler::GaugeSampler;
use sluice_broker::vhost::VirtualHost;
use sluice_broker::Broker;

/// Bucket bounds of every histogram, in seconds: all of them are latencies, from a fast
/// fdatasync or fetch (50 µs) to a long poll or a stalled disk (10 s).
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// How often the sampled gauges (group lag, queue depths, disk, memory, alarms) are refreshed,
/// and the recorder's upkeep (draining histogram samples into buckets) runs.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// The recorder's configuration: latency buckets for every histogram.
pub fn metrics_builder() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new().set_buckets(LATENCY_BUCKETS_SECONDS)
}

/// Installs the Prometheus recorder as the global `metrics` recorder and returns the handle
/// that renders it. Call it once, before the broker opens: handles that the libraries cache
/// (per topic, per log) bind to the recorder installed when they are created.
pub fn install_metrics_recorder() -> Result<PrometheusHandle, BuildError> {
    metrics_builder()?.install_recorder()
}

/// Refreshes the sampled gauges every `SAMPLE_INTERVAL` until the runtime stops. Sampling
/// walks the data directory and reads /proc, so it runs on a blocking thread.
pub fn spawn_gauge_sampler(
    broker: Arc<Broker>,
    vhost: Arc<VirtualHost>,
    handle: PrometheusHandle,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let sampler = Arc::new(parking_lot::Mutex::new(GaugeSampler::new()));
        let mut interval = tokio::time::interval(SAMPLE_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let (broker, vhost, handle, sampler) = (
                Arc::clone(&broker),
                Arc::clone(&vhost),
                handle.clone(),
                Arc::clone(&sampler),
            );
            let sampled = tokio::task::spawn_blocking(move || {
                sampler.lock().sample(&broker, Some(&vhost));
                handle.run_upkeep();
            });
            if sampled.await.is_err() {
                tracing::error!("sampling the metrics gauges panicked");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exporter renders our bucket bounds, the smallest at 50 µs, for a histogram recorded
    /// through the facade.
    #[test]
    fn histograms_render_with_latency_buckets() {
        let recorder = metrics_builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!("sluice_log_fsync_duration_seconds").record(0.000_07);
        });
        let text = handle.render();
        assert!(
            text.contains("sluice_log_fsync_duration_seconds_bucket{le=\"0.00005\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("sluice_log_fsync_duration_seconds_bucket{le=\"0.0001\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sluice_log_fsync_duration_seconds_count 1"),
            "{text}"
        );
    }
}
