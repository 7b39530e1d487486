//! The process-wide metrics recorder (Prometheus text format) and the task that keeps its
//! sampled gauges fresh. The libraries record through the `metrics` facade only; this binary
//! decides where the numbers go. The recorder has no listener of its own: the HTTP front end
//! renders the returned handle on `GET /metrics`.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};
use sluice_broker::gauge_sampler::GaugeSampler;
use sluice_broker::vhost::VirtualHosts;
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
    let handle = metrics_builder()?.install_recorder()?;
    describe_metrics();
    Ok(handle)
}

/// `# HELP` text and units for every metric, and a zero for the unlabelled or fixed-label
/// gauges and counters, so a scrape right after start shows them before any traffic.
fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "sluice_kafka_requests_total",
        "Kafka requests received, by API"
    );
    describe_counter!(
        "sluice_kafka_request_errors_total",
        "Error codes in Kafka responses (one per partition or group that failed), by API and Kafka error name"
    );
    describe_histogram!(
        "sluice_kafka_request_duration_seconds",
        Unit::Seconds,
        "Kafka request handling time, from decode to response built, by API"
    );
    describe_histogram!(
        "sluice_produce_durable_seconds",
        Unit::Seconds,
        "Kafka produce requests (acks 1 and all) from arrival to acknowledgement, after the fsync under fsync=batch"
    );
    describe_histogram!(
        sluice_log::FSYNC_SECONDS_METRIC,
        Unit::Seconds,
        "fdatasync of a partition log's group commit"
    );
    describe_counter!(
        "sluice_topic_records_produced_total",
        "Records appended to a topic (Kafka produce and AMQP publishes into streams)"
    );
    describe_counter!(
        "sluice_topic_bytes_produced_total",
        Unit::Bytes,
        "Record-batch bytes appended to a topic"
    );
    describe_counter!(
        "sluice_topic_records_fetched_total",
        "Records sent to consumers of a topic (Kafka fetch, AMQP stream consumers)"
    );
    describe_counter!(
        "sluice_topic_bytes_fetched_total",
        Unit::Bytes,
        "Bytes sent to consumers of a topic"
    );
    describe_gauge!(
        "sluice_group_lag",
        "Records between a consumer group's committed offset and the partition's high watermark"
    );
    describe_gauge!("sluice_group_members", "Members of a consumer group");
    describe_gauge!(
        "sluice_queue_messages_ready",
        "Messages ready for delivery in an AMQP queue"
    );
    describe_gauge!(
        "sluice_queue_messages_unacked",
        "Messages delivered and not yet acknowledged from an AMQP queue"
    );
    describe_gauge!("sluice_queue_consumers", "Consumers of an AMQP queue");
    describe_counter!(
        "sluice_amqp_messages_published_total",
        "basic.publish accepted by an existing exchange, routed or not"
    );
    describe_counter!("sluice_amqp_messages_delivered_total", "Messages delivered to AMQP clients (basic.deliver and basic.get-ok), redeliveries included");
    describe_counter!(
        "sluice_amqp_messages_acked_total",
        "Deliveries acknowledged by AMQP clients"
    );
    describe_counter!(
        "sluice_amqp_messages_redelivered_total",
        "Deliveries flagged redelivered"
    );
    describe_counter!(
        "sluice_amqp_messages_dead_lettered_total",
        "Messages republished to their queue's dead-letter exchange"
    );
    describe_gauge!("sluice_amqp_channels", "Open AMQP channels");
    describe_gauge!("sluice_connections", "Open client connections, by protocol");
    describe_counter!(
        "sluice_connections_opened_total",
        "Client connections accepted, by protocol"
    );
    describe_gauge!(
        "sluice_disk_free_bytes",
        Unit::Bytes,
        "Free space an unprivileged process may use on the data directory's file system"
    );
    describe_gauge!(
        "sluice_disk_used_bytes",
        Unit::Bytes,
        "Bytes of the files under the data directory"
    );
    describe_gauge!(
        "sluice_alarm",
        "Resource alarm blocking AMQP publishers (1) or not (0), by kind: memory, disk"
    );
    describe_gauge!(
        "sluice_process_resident_memory_bytes",
        Unit::Bytes,
        "Resident set size of the broker process"
    );
    describe_counter!(
        sluice_broker::replication::ENTRIES_PROPOSED_METRIC,
        "Raft entries this node proposed to replicated partitions as their leader"
    );
    describe_counter!(
        sluice_broker::replication::BATCHES_PROPOSED_METRIC,
        "Record batches in those entries: batches that queued while earlier entries were in flight share one entry"
    );
    metrics::counter!(sluice_broker::replication::ENTRIES_PROPOSED_METRIC).increment(0);
    metrics::counter!(sluice_broker::replication::BATCHES_PROPOSED_METRIC).increment(0);
    for protocol in ["kafka", "amqp"] {
        metrics::gauge!("sluice_connections", "protocol" => protocol).increment(0.0);
        metrics::counter!("sluice_connections_opened_total", "protocol" => protocol).increment(0);
    }
    metrics::gauge!("sluice_amqp_channels").increment(0.0);
}

/// Refreshes the sampled gauges every `SAMPLE_INTERVAL` until the runtime stops. Sampling
/// walks the data directory and reads /proc, so it runs on a blocking thread.
pub fn spawn_gauge_sampler(
    broker: Arc<Broker>,
    vhosts: Arc<VirtualHosts>,
    handle: PrometheusHandle,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let sampler = Arc::new(parking_lot::Mutex::new(GaugeSampler::new()));
        let mut interval = tokio::time::interval(SAMPLE_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let (broker, vhosts, handle, sampler) = (
                Arc::clone(&broker),
                Arc::clone(&vhosts),
                handle.clone(),
                Arc::clone(&sampler),
            );
            let sampled = tokio::task::spawn_blocking(move || {
                sampler.lock().sample(&broker, &vhosts.list());
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

    /// A scrape before any traffic already shows the connection gauges at zero, with help.
    #[test]
    fn connection_gauges_are_described_and_zero_before_traffic() {
        let recorder = metrics_builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, describe_metrics);
        let text = handle.render();
        for line in [
            "# HELP sluice_connections Open client connections, by protocol",
            "sluice_connections{protocol=\"amqp\"} 0",
            "sluice_connections{protocol=\"kafka\"} 0",
            "sluice_connections_opened_total{protocol=\"kafka\"} 0",
            "sluice_amqp_channels 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in:\n{text}"
            );
        }
    }

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
