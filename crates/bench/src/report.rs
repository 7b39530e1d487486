//! Latency histograms and the end-of-run summary (human text and one JSON line).

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Highest latency a histogram tracks: 60 s in microseconds. Larger values saturate.
const LATENCY_US_MAX: u64 = 60_000_000;

/// A latency histogram in microseconds with 3 significant digits.
pub fn latency_histogram_us() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("static histogram bounds are valid")
}

/// Percentiles of one latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct LatencySummary {
    pub samples: u64,
    pub latency_us_p50: u64,
    pub latency_us_p99: u64,
    pub latency_us_p999: u64,
    pub latency_us_max: u64,
    pub latency_us_mean: f64,
}

impl LatencySummary {
    pub fn from_histogram(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        Self {
            samples: histogram.len(),
            latency_us_p50: histogram.value_at_quantile(0.50),
            latency_us_p99: histogram.value_at_quantile(0.99),
            latency_us_p999: histogram.value_at_quantile(0.999),
            latency_us_max: histogram.max(),
            latency_us_mean: histogram.mean(),
        }
    }

    /// One line in milliseconds, the unit people compare broker latency in.
    pub fn to_ms_line(self) -> String {
        if self.samples == 0 {
            return "no samples".to_string();
        }
        format!(
            "p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms  (mean {:.3} ms, {} samples)",
            us_to_ms(self.latency_us_p50),
            us_to_ms(self.latency_us_p99),
            us_to_ms(self.latency_us_p999),
            us_to_ms(self.latency_us_max),
            self.latency_us_mean / 1000.0,
            self.samples
        )
    }

    pub fn to_json(self) -> Value {
        json!({
            "samples": self.samples,
            "latency_ms_p50": round3(us_to_ms(self.latency_us_p50)),
            "latency_ms_p99": round3(us_to_ms(self.latency_us_p99)),
            "latency_ms_p999": round3(us_to_ms(self.latency_us_p999)),
            "latency_ms_max": round3(us_to_ms(self.latency_us_max)),
            "latency_ms_mean": round3(self.latency_us_mean / 1000.0),
        })
    }
}

fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

/// Result of `disk-probe`.
#[derive(Debug, Clone)]
pub struct DiskProbeReport {
    pub dir: String,
    pub append_count: u64,
    pub append_bytes: u64,
    pub append_fdatasync: LatencySummary,
    pub append_ops_per_sec: f64,
    pub sequential_bytes: u64,
    pub sequential_write_bytes: u64,
    /// Write throughput including the final fdatasync; `None` when skipped.
    pub sequential_mb_per_sec: Option<f64>,
}

impl DiskProbeReport {
    pub fn print_text(&self) {
        println!("disk probe ({})", self.dir);
        println!(
            "  append {} B + fdatasync x{}: p50 {} us  p99 {} us  p99.9 {} us  max {} us  ({:.0} ops/s)",
            self.append_bytes,
            self.append_count,
            self.append_fdatasync.latency_us_p50,
            self.append_fdatasync.latency_us_p99,
            self.append_fdatasync.latency_us_p999,
            self.append_fdatasync.latency_us_max,
            self.append_ops_per_sec
        );
        if let Some(mb_per_sec) = self.sequential_mb_per_sec {
            println!(
                "  sequential write {} MiB in {} KiB writes + fdatasync: {:.0} MB/s",
                self.sequential_bytes >> 20,
                self.sequential_write_bytes >> 10,
                mb_per_sec
            );
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "dir": self.dir,
            "append_count": self.append_count,
            "append_bytes": self.append_bytes,
            "fdatasync_us_p50": self.append_fdatasync.latency_us_p50,
            "fdatasync_us_p99": self.append_fdatasync.latency_us_p99,
            "fdatasync_us_p999": self.append_fdatasync.latency_us_p999,
            "fdatasync_us_max": self.append_fdatasync.latency_us_max,
            "append_ops_per_sec": round1(self.append_ops_per_sec),
            "sequential_bytes": self.sequential_bytes,
            "sequential_mb_per_sec": self.sequential_mb_per_sec.map(round1),
        })
    }
}

/// Settings echoed into the Kafka report so a JSON line is self-describing.
#[derive(Debug, Clone)]
pub struct KafkaRunSettings {
    pub bootstrap: String,
    pub topic: String,
    pub partitions: i32,
    pub producers: usize,
    pub consumers: usize,
    pub message_bytes: usize,
    pub acks: String,
    pub rate_msgs_per_sec: u64,
    pub duration_secs: u64,
    pub linger_ms: u64,
    pub batch_bytes: u64,
    pub compression: String,
    pub idempotence: bool,
    pub consumer_group: bool,
}

/// Error counts by source; `first_error` keeps one example for the reader.
#[derive(Debug, Clone, Default)]
pub struct ErrorCounts {
    pub send_errors: u64,
    pub delivery_errors: u64,
    pub consume_errors: u64,
    pub client_errors: u64,
    pub first_error: Option<String>,
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.by_source().iter().map(|(_, count)| count).sum()
    }

    fn by_source(&self) -> [(&'static str, u64); 4] {
        [
            ("send", self.send_errors),
            ("delivery", self.delivery_errors),
            ("consume", self.consume_errors),
            ("client", self.client_errors),
        ]
    }
}

/// Result of `kafka`.
#[derive(Debug, Clone)]
pub struct KafkaReport {
    pub settings: KafkaRunSettings,
    pub disk_probe: Option<DiskProbeReport>,
    /// Messages acknowledged by the broker (for acks=0: handed to the socket).
    pub produced_msgs: u64,
    /// From the first send until the last acknowledgement.
    pub produce_secs: f64,
    pub produce_ack: LatencySummary,
    pub consumed_msgs: u64,
    pub consumed_bytes: u64,
    /// From the first send until the last message was consumed.
    pub consume_secs: f64,
    pub end_to_end: LatencySummary,
    /// Messages read that another run or client produced; not counted as consumed.
    pub foreign_msgs: u64,
    /// Acknowledged messages the consumers did not see before the drain timeout.
    pub missing_msgs: u64,
    pub errors: ErrorCounts,
}

impl KafkaReport {
    fn produce_msgs_per_sec(&self) -> f64 {
        per_sec(self.produced_msgs as f64, self.produce_secs)
    }

    fn produce_mb_per_sec(&self) -> f64 {
        let bytes = self.produced_msgs as f64 * self.settings.message_bytes as f64;
        per_sec(bytes, self.produce_secs) / 1e6
    }

    fn consume_msgs_per_sec(&self) -> f64 {
        per_sec(self.consumed_msgs as f64, self.consume_secs)
    }

    fn consume_mb_per_sec(&self) -> f64 {
        per_sec(self.consumed_bytes as f64, self.consume_secs) / 1e6
    }

    pub fn print_text(&self) {
        let s = &self.settings;
        if let Some(disk_probe) = &self.disk_probe {
            disk_probe.print_text();
        }
        println!(
            "kafka {} topic {} ({} partitions): {} producers, {} consumers{}, {} B messages, acks={}{}, rate {}, {} s, linger {} ms, batch {} B, compression {}",
            s.bootstrap,
            s.topic,
            s.partitions,
            s.producers,
            s.consumers,
            if s.consumer_group { " (group)" } else { " (assign)" },
            s.message_bytes,
            s.acks,
            if s.idempotence { " (idempotent)" } else { "" },
            if s.rate_msgs_per_sec == 0 {
                "unlimited".to_string()
            } else {
                format!("{} msgs/s", s.rate_msgs_per_sec)
            },
            s.duration_secs,
            s.linger_ms,
            s.batch_bytes,
            s.compression
        );
        println!(
            "{}",
            rate_line(
                "produced",
                self.produced_msgs,
                self.produce_secs,
                self.produce_mb_per_sec()
            )
        );
        println!("  produce->ack   {}", self.produce_ack.to_ms_line());
        if s.consumers > 0 {
            println!(
                "{}  (missing {}, foreign {})",
                rate_line(
                    "consumed",
                    self.consumed_msgs,
                    self.consume_secs,
                    self.consume_mb_per_sec()
                ),
                self.missing_msgs,
                self.foreign_msgs
            );
            println!("  end-to-end     {}", self.end_to_end.to_ms_line());
        }
        print_errors(&self.errors.by_source(), self.errors.first_error.as_deref());
    }

    pub fn to_json(&self) -> Value {
        let s = &self.settings;
        json!({
            "bootstrap": s.bootstrap,
            "topic": s.topic,
            "partitions": s.partitions,
            "producers": s.producers,
            "consumers": s.consumers,
            "consumer_group": s.consumer_group,
            "message_bytes": s.message_bytes,
            "acks": s.acks,
            "rate_msgs_per_sec": s.rate_msgs_per_sec,
            "duration_secs": s.duration_secs,
            "linger_ms": s.linger_ms,
            "batch_bytes": s.batch_bytes,
            "compression": s.compression,
            "idempotence": s.idempotence,
            "produced_msgs": self.produced_msgs,
            "produce_secs": round3(self.produce_secs),
            "produce_msgs_per_sec": round1(self.produce_msgs_per_sec()),
            "produce_mb_per_sec": round1(self.produce_mb_per_sec()),
            "produce_ack": self.produce_ack.to_json(),
            "consumed_msgs": self.consumed_msgs,
            "consume_secs": round3(self.consume_secs),
            "consume_msgs_per_sec": round1(self.consume_msgs_per_sec()),
            "consume_mb_per_sec": round1(self.consume_mb_per_sec()),
            "end_to_end": self.end_to_end.to_json(),
            "missing_msgs": self.missing_msgs,
            "foreign_msgs": self.foreign_msgs,
            "errors": errors_json(&self.errors.by_source(), self.errors.first_error.as_deref()),
            "disk_probe": self.disk_probe.as_ref().map(DiskProbeReport::to_json),
        })
    }
}

/// `  label   N msgs in S s: R msgs/s M MB/s`, the throughput line of every load report.
fn rate_line(label: &str, msgs: u64, secs: f64, mb_per_sec: f64) -> String {
    format!(
        "  {label:<10} {msgs:>12} msgs in {secs:.2} s: {:>12.0} msgs/s {mb_per_sec:>9.1} MB/s",
        per_sec(msgs as f64, secs)
    )
}

fn print_errors(by_source: &[(&str, u64)], first_error: Option<&str>) {
    let total: u64 = by_source.iter().map(|(_, count)| count).sum();
    let sources: Vec<String> = by_source
        .iter()
        .map(|(source, count)| format!("{source} {count}"))
        .collect();
    println!("  errors {total} ({})", sources.join(", "));
    if let Some(first_error) = first_error {
        println!("  first error: {first_error}");
    }
}

fn errors_json(by_source: &[(&str, u64)], first_error: Option<&str>) -> Value {
    let mut errors = serde_json::Map::new();
    let total: u64 = by_source.iter().map(|(_, count)| count).sum();
    errors.insert("total".to_string(), json!(total));
    for (source, count) in by_source {
        errors.insert((*source).to_string(), json!(count));
    }
    errors.insert("first".to_string(), json!(first_error));
    Value::Object(errors)
}

fn per_sec(amount: f64, secs: f64) -> f64 {
    if secs > 0.0 {
        amount / secs
    } else {
        0.0
    }
}

/// Settings echoed into the AMQP report so a JSON line is self-describing.
#[derive(Debug, Clone)]
pub struct AmqpRunSettings {
    /// The broker URL with any password masked.
    pub url: String,
    pub queue: String,
    pub publishers: usize,
    pub consumers: usize,
    pub message_bytes: usize,
    /// delivery_mode 2 (persistent) or 1 (transient).
    pub persistent: bool,
    pub max_in_flight: usize,
    pub prefetch: u16,
    pub ack_every: u16,
    pub rate_msgs_per_sec: u64,
    pub duration_secs: u64,
    /// Free text from --label, to tell runs apart in collected JSON lines.
    pub label: Option<String>,
}

/// Error counts of an AMQP run by source; `first_error` keeps one example.
#[derive(Debug, Clone, Default)]
pub struct AmqpErrorCounts {
    /// basic.publish could not be sent (channel or connection closed).
    pub publish_errors: u64,
    /// The confirm never came: the channel closed first.
    pub confirm_errors: u64,
    pub consume_errors: u64,
    pub ack_errors: u64,
    /// Connection, channel or setup failures of a worker.
    pub client_errors: u64,
    pub first_error: Option<String>,
}

impl AmqpErrorCounts {
    pub fn total(&self) -> u64 {
        self.by_source().iter().map(|(_, count)| count).sum()
    }

    fn by_source(&self) -> [(&'static str, u64); 5] {
        [
            ("publish", self.publish_errors),
            ("confirm", self.confirm_errors),
            ("consume", self.consume_errors),
            ("ack", self.ack_errors),
            ("client", self.client_errors),
        ]
    }
}

/// Result of `amqp`.
#[derive(Debug, Clone)]
pub struct AmqpReport {
    pub settings: AmqpRunSettings,
    pub disk_probe: Option<DiskProbeReport>,
    /// basic.publish calls handed to the client library.
    pub published_msgs: u64,
    /// From the first publish until publishers stopped.
    pub publish_secs: f64,
    /// Publishes the broker confirmed with basic.ack.
    pub confirmed_msgs: u64,
    /// From the first publish until the last confirm.
    pub confirm_secs: f64,
    /// Publishes the broker refused with basic.nack.
    pub nacked_msgs: u64,
    /// Publishes neither confirmed nor nacked by the end of the confirm timeout.
    pub unconfirmed_msgs: u64,
    pub confirm: LatencySummary,
    /// Deliveries of this run's messages, duplicates included.
    pub consumed_msgs: u64,
    pub consumed_bytes: u64,
    /// From the first publish until the last delivery.
    pub consume_secs: f64,
    pub end_to_end: LatencySummary,
    /// Deliveries of a sequence number already delivered (to any consumer).
    pub duplicate_msgs: u64,
    /// Confirmed messages no consumer received before the drain timeout.
    pub missing_msgs: u64,
    /// Delivered messages whose publish was not confirmed (nacked or still unconfirmed).
    pub unconfirmed_delivered_msgs: u64,
    /// Deliveries that were not this run's messages (acked and otherwise ignored).
    pub foreign_msgs: u64,
    /// Ready messages in the queue after the consumers closed, if the broker said.
    pub left_in_queue: Option<u32>,
    pub errors: AmqpErrorCounts,
}

impl AmqpReport {
    fn bytes(&self, msgs: u64) -> f64 {
        msgs as f64 * self.settings.message_bytes as f64
    }

    fn publish_msgs_per_sec(&self) -> f64 {
        per_sec(self.published_msgs as f64, self.publish_secs)
    }

    fn publish_mb_per_sec(&self) -> f64 {
        per_sec(self.bytes(self.published_msgs), self.publish_secs) / 1e6
    }

    fn confirm_msgs_per_sec(&self) -> f64 {
        per_sec(self.confirmed_msgs as f64, self.confirm_secs)
    }

    fn confirm_mb_per_sec(&self) -> f64 {
        per_sec(self.bytes(self.confirmed_msgs), self.confirm_secs) / 1e6
    }

    fn consume_msgs_per_sec(&self) -> f64 {
        per_sec(self.consumed_msgs as f64, self.consume_secs)
    }

    fn consume_mb_per_sec(&self) -> f64 {
        per_sec(self.consumed_bytes as f64, self.consume_secs) / 1e6
    }

    pub fn print_text(&self) {
        let s = &self.settings;
        if let Some(disk_probe) = &self.disk_probe {
            disk_probe.print_text();
        }
        println!(
            "amqp {} queue {}: {} publishers (confirms, max {} in flight each), {} consumers (prefetch {}, ack every {}), {} B {} messages, rate {}, {} s",
            s.url,
            s.queue,
            s.publishers,
            s.max_in_flight,
            s.consumers,
            s.prefetch,
            s.ack_every,
            s.message_bytes,
            if s.persistent { "persistent" } else { "transient" },
            if s.rate_msgs_per_sec == 0 {
                "unlimited".to_string()
            } else {
                format!("{} msgs/s", s.rate_msgs_per_sec)
            },
            s.duration_secs,
        );
        println!(
            "{}",
            rate_line(
                "published",
                self.published_msgs,
                self.publish_secs,
                self.publish_mb_per_sec()
            )
        );
        println!(
            "{}  (nacked {}, unconfirmed {})",
            rate_line(
                "confirmed",
                self.confirmed_msgs,
                self.confirm_secs,
                self.confirm_mb_per_sec()
            ),
            self.nacked_msgs,
            self.unconfirmed_msgs
        );
        println!("  publish->confirm {}", self.confirm.to_ms_line());
        if s.consumers > 0 {
            println!(
                "{}  (missing {}, duplicates {}, unconfirmed delivered {}, foreign {})",
                rate_line(
                    "consumed",
                    self.consumed_msgs,
                    self.consume_secs,
                    self.consume_mb_per_sec()
                ),
                self.missing_msgs,
                self.duplicate_msgs,
                self.unconfirmed_delivered_msgs,
                self.foreign_msgs
            );
            println!("  end-to-end       {}", self.end_to_end.to_ms_line());
        }
        if let Some(left_in_queue) = self.left_in_queue {
            println!("  left in queue {left_in_queue}");
        }
        print_errors(&self.errors.by_source(), self.errors.first_error.as_deref());
    }

    pub fn to_json(&self) -> Value {
        let s = &self.settings;
        json!({
            "label": s.label,
            "url": s.url,
            "queue": s.queue,
            "publishers": s.publishers,
            "consumers": s.consumers,
            "message_bytes": s.message_bytes,
            "persistent": s.persistent,
            "max_in_flight": s.max_in_flight,
            "prefetch": s.prefetch,
            "ack_every": s.ack_every,
            "rate_msgs_per_sec": s.rate_msgs_per_sec,
            "duration_secs": s.duration_secs,
            "published_msgs": self.published_msgs,
            "publish_secs": round3(self.publish_secs),
            "publish_msgs_per_sec": round1(self.publish_msgs_per_sec()),
            "publish_mb_per_sec": round1(self.publish_mb_per_sec()),
            "confirmed_msgs": self.confirmed_msgs,
            "confirm_secs": round3(self.confirm_secs),
            "confirm_msgs_per_sec": round1(self.confirm_msgs_per_sec()),
            "confirm_mb_per_sec": round1(self.confirm_mb_per_sec()),
            "nacked_msgs": self.nacked_msgs,
            "unconfirmed_msgs": self.unconfirmed_msgs,
            "confirm": self.confirm.to_json(),
            "consumed_msgs": self.consumed_msgs,
            "consume_secs": round3(self.consume_secs),
            "consume_msgs_per_sec": round1(self.consume_msgs_per_sec()),
            "consume_mb_per_sec": round1(self.consume_mb_per_sec()),
            "end_to_end": self.end_to_end.to_json(),
            "duplicate_msgs": self.duplicate_msgs,
            "missing_msgs": self.missing_msgs,
            "unconfirmed_delivered_msgs": self.unconfirmed_delivered_msgs,
            "foreign_msgs": self.foreign_msgs,
            "left_in_queue": self.left_in_queue,
            "errors": errors_json(&self.errors.by_source(), self.errors.first_error.as_deref()),
            "disk_probe": self.disk_probe.as_ref().map(DiskProbeReport::to_json),
        })
    }
}
