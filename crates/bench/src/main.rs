//! `sluice-bench`: load generators for the Kafka protocol (through librdkafka) and AMQP 0-9-1
//! (through lapin), so they are real clients, and a disk probe that measures the fdatasync floor
//! of the machine it runs on.

mod amqp_consumer;
mod amqp_drain;
mod amqp_load;
mod amqp_publisher;
mod consumer_worker;
mod disk_probe;
mod kafka_load;
mod payload_header;
mod producer_worker;
mod progress;
mod report;
mod run_state;
mod seq_set;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::amqp_load::AmqpLoadConfig;
use crate::disk_probe::DiskProbeConfig;
use crate::kafka_load::KafkaLoadConfig;

#[derive(Parser)]
#[command(name = "sluice-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Append + fdatasync latency and sequential write throughput of a directory's disk.
    DiskProbe {
        #[command(flatten)]
        probe: DiskProbeArgs,
        /// Print the result as one JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Produce and consume through a Kafka-protocol broker and report throughput and latency.
    Kafka(Box<KafkaArgs>),
    /// Publish (with confirms) and consume (with manual acks) through an AMQP 0-9-1 broker and
    /// report throughput, confirm latency and end-to-end latency.
    Amqp(Box<AmqpArgs>),
    /// Consume an existing AMQP queue until it is empty (a backlog published before, e.g.
    /// before a broker restart) and report the rate. Declares and deletes nothing.
    AmqpDrain(Box<AmqpDrainArgs>),
}

#[derive(Args)]
struct AmqpDrainArgs {
    /// Broker URL; the vhost is URL-encoded (%2f is "/").
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    url: String,
    /// The queue to drain (it must exist).
    #[arg(long, default_value = "sluice-bench")]
    queue: String,
    /// basic.qos prefetch count (0 is unlimited).
    #[arg(long, default_value_t = 1000)]
    prefetch: u16,
    /// Acknowledge every Nth delivery with multiple=true.
    #[arg(long, default_value_t = 100)]
    ack_every: u16,
    /// The queue counts as drained once no delivery came for this many seconds.
    #[arg(long, default_value_t = 3)]
    idle_secs: u64,
}

#[derive(Args)]
struct DiskProbeArgs {
    /// Directory to probe (use the broker's data directory).
    #[arg(long)]
    dir: PathBuf,
    /// Number of append + fdatasync operations.
    #[arg(long = "count", default_value_t = 2000)]
    append_count: u64,
    /// Bytes per append.
    #[arg(long = "bytes", default_value_t = 4096)]
    append_bytes: usize,
    /// Total MiB for the sequential write test; 0 skips it.
    #[arg(long = "seq-mib", default_value_t = 512)]
    sequential_mib: u64,
    /// KiB per write in the sequential write test.
    #[arg(long = "seq-write-kib", default_value_t = 1024)]
    sequential_write_kib: usize,
}

impl LoadDiskProbeArgs {
    fn to_config(&self, dir: Option<PathBuf>) -> Option<DiskProbeConfig> {
        dir.map(|dir| {
            DiskProbeArgs {
                dir,
                append_count: self.append_count,
                append_bytes: 4096,
                sequential_mib: self.sequential_mib,
                sequential_write_kib: 1024,
            }
            .to_config()
        })
    }
}

impl DiskProbeArgs {
    fn to_config(&self) -> DiskProbeConfig {
        DiskProbeConfig {
            dir: self.dir.clone(),
            append_count: self.append_count,
            append_bytes: self.append_bytes,
            sequential_bytes: self.sequential_mib << 20,
            sequential_write_bytes: self.sequential_write_kib << 10,
        }
    }
}

#[derive(Args)]
struct KafkaArgs {
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[arg(long, default_value = "sluice-bench")]
    topic: String,
    /// Producer threads, each with its own client and connection.
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Consumer threads; partition p goes to consumer p mod consumers.
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Payload size; the first 16 bytes carry the send timestamp and run id.
    #[arg(long, default_value_t = 100)]
    message_bytes: usize,
    /// Give every message a distinct key (`p<producer>-<n>`), as keyed producers do: what the
    /// broker's key index costs shows with it
    #[arg(long)]
    keys: bool,
    /// Partitions for --create-topic; an existing topic's own count is used for sending.
    #[arg(long, default_value_t = 1)]
    partitions: i32,
    /// Producer acks: 0 (none), 1 (leader), all (every in-sync replica).
    #[arg(long, default_value = "1", value_parser = ["0", "1", "all", "-1"])]
    acks: String,
    /// How long producers send.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Total messages per second across producers; 0 is as fast as possible.
    #[arg(long = "rate", default_value_t = 0)]
    rate_msgs_per_sec: u64,
    /// Create the topic first with --partitions partitions (an existing topic is fine).
    #[arg(long)]
    create_topic: bool,
    /// Producer linger.ms: how long a batch waits for more messages.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// Producer batch.size in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    batch_bytes: u64,
    /// Messages each producer may have queued or in flight (queue.buffering.max.messages).
    #[arg(long, default_value_t = 1_000_000)]
    queue_msgs_max: u64,
    /// KiB of messages each producer may have queued or in flight
    /// (queue.buffering.max.kbytes); whichever bound is reached first holds the producer back.
    /// 64 MiB, like the Java client's buffer.memory (32 MiB) rather than librdkafka's 1 GiB: a
    /// gigabyte of queued 1 KiB messages made the acknowledgement latency seconds of client
    /// queueing, and a slower broker could not drain it within the flush timeout.
    #[arg(long, default_value_t = 64 * 1024)]
    queue_kib_max: u64,
    /// Idempotent producers (enable.idempotence, the Java client's default): acks=all and at
    /// most 5 requests in flight per connection, each batch sequence-checked by the broker.
    #[arg(long)]
    idempotence: bool,
    /// Producer compression.codec (zstd is not built in).
    #[arg(long, default_value = "none", value_parser = ["none", "gzip", "snappy", "lz4"])]
    compression: String,
    /// Consumer fetch.wait.max.ms: how long the broker may hold an empty fetch.
    #[arg(long, default_value_t = 100)]
    fetch_wait_max_ms: u64,
    /// Consume through a consumer group (subscribe) instead of assigning partitions directly.
    #[arg(long)]
    consumer_group: bool,
    /// How long producers may take to get outstanding messages acknowledged after the run.
    #[arg(long, default_value_t = 10)]
    flush_timeout_secs: u64,
    /// How long consumers may take to catch up after producers finish.
    #[arg(long, default_value_t = 5)]
    drain_timeout_secs: u64,
    /// Run the disk probe in this directory first and include it in the report.
    #[arg(long)]
    disk_probe_dir: Option<PathBuf>,
    #[command(flatten)]
    disk_probe: LoadDiskProbeArgs,
    /// Print the summary as one JSON line.
    #[arg(long)]
    json: bool,
    /// Hide the progress bar (it is hidden anyway when stderr is not a terminal).
    #[arg(long)]
    no_progress: bool,
}

#[derive(Args)]
struct AmqpArgs {
    /// Broker URL; the vhost is URL-encoded (%2f is "/").
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    url: String,
    /// Durable queue, deleted and declared again at the start of the run.
    #[arg(long, default_value = "sluice-bench")]
    queue: String,
    /// Publishers, each with its own connection and channel in confirm mode.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Consumers, each with its own connection and channel; 0 only publishes.
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Body size; the first 28 bytes carry the publish time, run id, publisher and sequence.
    #[arg(long = "size", visible_alias = "message-bytes", default_value_t = 100)]
    message_bytes: usize,
    /// Publish with delivery_mode 1 instead of 2 (persistent).
    #[arg(long)]
    transient: bool,
    /// How long publishers publish.
    #[arg(long = "secs", visible_alias = "duration-secs", default_value_t = 10)]
    duration_secs: u64,
    /// Total messages per second across publishers, for latency runs; unset is as fast as the
    /// in-flight window allows.
    #[arg(long = "rate")]
    rate_msgs_per_sec: Option<u64>,
    /// Unconfirmed publishes each publisher may have outstanding.
    #[arg(long, default_value_t = 1000)]
    max_in_flight: usize,
    /// basic.qos prefetch count of each consumer (0 is unlimited).
    #[arg(long, default_value_t = 100)]
    prefetch: u16,
    /// Acknowledge every message (1) or every Nth delivery with multiple=true.
    #[arg(long, default_value_t = 1)]
    ack_every: u16,
    /// How long publishers may wait for outstanding confirms after the run.
    #[arg(long, default_value_t = 10)]
    confirm_timeout_secs: u64,
    /// How long consumers may take to receive every confirmed message after the run.
    #[arg(long, default_value_t = 10)]
    drain_timeout_secs: u64,
    /// Run the disk probe in this directory first and include it in the report.
    #[arg(long)]
    disk_probe_dir: Option<PathBuf>,
    #[command(flatten)]
    disk_probe: LoadDiskProbeArgs,
    /// Print the summary as one JSON line.
    #[arg(long)]
    json: bool,
    /// Also append the summary as one JSON line to this file.
    #[arg(long)]
    json_append: Option<PathBuf>,
    /// Free text recorded in the JSON summary, to tell runs apart.
    #[arg(long)]
    label: Option<String>,
    /// Hide the progress bar (it is hidden anyway when stderr is not a terminal).
    #[arg(long)]
    no_progress: bool,
}

/// Disk probe sizes when run before a load (the directory comes from --disk-probe-dir).
#[derive(Args)]
struct LoadDiskProbeArgs {
    /// Append + fdatasync operations in the disk probe.
    #[arg(long = "disk-probe-count", default_value_t = 2000)]
    append_count: u64,
    /// MiB written in the disk probe's sequential test; 0 skips it.
    #[arg(long = "disk-probe-seq-mib", default_value_t = 512)]
    sequential_mib: u64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::DiskProbe { probe, json } => {
            let report = disk_probe::run(&probe.to_config())?;
            if json {
                println!("{}", report.to_json());
            } else {
                report.print_text();
            }
        }
        Command::Kafka(args) => {
            let disk_probe = args.disk_probe.to_config(args.disk_probe_dir.clone());
            let config = KafkaLoadConfig {
                bootstrap: args.bootstrap,
                topic: args.topic,
                producers: args.producers,
                consumers: args.consumers,
                message_bytes: args.message_bytes,
                keys: args.keys,
                partitions: args.partitions,
                acks: args.acks,
                duration: Duration::from_secs(args.duration_secs),
                rate_msgs_per_sec: args.rate_msgs_per_sec,
                create_topic: args.create_topic,
                linger_ms: args.linger_ms,
                batch_bytes: args.batch_bytes,
                queue_msgs_max: args.queue_msgs_max,
                queue_kib_max: args.queue_kib_max,
                compression: args.compression,
                idempotence: args.idempotence,
                fetch_wait_max_ms: args.fetch_wait_max_ms,
                consumer_group: args.consumer_group,
                flush_timeout: Duration::from_secs(args.flush_timeout_secs),
                drain_timeout: Duration::from_secs(args.drain_timeout_secs),
                disk_probe,
                show_progress: !args.no_progress,
            };
            let report = kafka_load::run(&config)?;
            if args.json {
                println!("{}", report.to_json());
            } else {
                report.print_text();
            }
        }
        Command::AmqpDrain(args) => {
            amqp_drain::run(&amqp_drain::AmqpDrainConfig {
                url: args.url,
                queue: args.queue,
                prefetch: args.prefetch,
                ack_every: args.ack_every,
                idle_timeout: Duration::from_secs(args.idle_secs),
            })?
            .print_text();
        }
        Command::Amqp(args) => {
            let config = AmqpLoadConfig {
                url: args.url,
                queue: args.queue,
                publishers: args.publishers,
                consumers: args.consumers,
                message_bytes: args.message_bytes,
                persistent: !args.transient,
                duration: Duration::from_secs(args.duration_secs),
                rate_msgs_per_sec: args.rate_msgs_per_sec.unwrap_or(0),
                max_in_flight: args.max_in_flight,
                prefetch: args.prefetch,
                ack_every: args.ack_every,
                confirm_timeout: Duration::from_secs(args.confirm_timeout_secs),
                drain_timeout: Duration::from_secs(args.drain_timeout_secs),
                disk_probe: args.disk_probe.to_config(args.disk_probe_dir),
                show_progress: !args.no_progress,
                label: args.label,
            };
            let report = amqp_load::run(&config)?;
            if let Some(path) = &args.json_append {
                append_line(path, &report.to_json().to_string())?;
            }
            if args.json {
                println!("{}", report.to_json());
            } else {
                report.print_text();
            }
        }
    }
    Ok(())
}

fn append_line(path: &std::path::Path, line: &str) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(file, "{line}").with_context(|| format!("appending to {}", path.display()))
}
