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
        self.send_errors + self.delivery_errors + self.consume_errors + self.client_errors
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
            "kafka {} topic {} ({} partitions): {} producers, {} consumers{}, {} B messages, acks={}, rate {}, {} s, linger {} ms, batch {} B, compression {}",
            s.bootstrap,
            s.topic,
            s.partitions,
            s.producers,
            s.consumers,
            if s.consumer_group { " (group)" } else { " (assign)" },
            s.message_bytes,
            s.acks,
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
            "  produced   {:>12} msgs in {:.2} s: {:>12.0} msgs/s {:>9.1} MB/s",
            self.produced_msgs,
            self.produce_secs,
            self.produce_msgs_per_sec(),
            self.produce_mb_per_sec()
        );
        println!("  produce->ack   {}", self.produce_ack.to_ms_line());
        if s.consumers > 0 {
            println!(
                "  consumed   {:>12} msgs in {:.2} s: {:>12.0} msgs/s {:>9.1} MB/s  (missing {}, foreign {})",
                self.consumed_msgs,
                self.consume_secs,
                self.consume_msgs_per_sec(),
                self.consume_mb_per_sec(),
                self.missing_msgs,
                self.foreign_msgs
            );
            println!("  end-to-end     {}", self.end_to_end.to_ms_line());
        }
        let e = &self.errors;
        println!(
            "  errors {} (send {}, delivery {}, consume {}, client {})",
            e.total(),
            e.send_errors,
            e.delivery_errors,
            e.consume_errors,
            e.client_errors
        );
        if let Some(first_error) = &e.first_error {
            println!("  first error: {first_error}");
        }
    }

    pub fn to_json(&self) -> Value {
        let s = &self.settings;
        let e = &self.errors;
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
            "errors": {
                "total": e.total(),
                "send": e.send_errors,
                "delivery": e.delivery_errors,
                "consume": e.consume_errors,
                "client": e.client_errors,
                "first": e.first_error,
            },
            "disk_probe": self.disk_probe.as_ref().map(DiskProbeReport::to_json),
        })
    }
}

fn per_sec(amount: f64, secs: f64) -> f64 {
    if secs > 0.0 {
        amount / secs
    } else {
        0.0
    }
}
