//! `sluice consume`: read a topic from an offset, a time or the end, partition by partition
//! through `GET /api/topics/{name}/messages`, until the end or (with --follow) until stopped.
//! Reads only: no consumer group, no committed offsets.

use std::time::Duration;

use clap::{ArgGroup, Args, ValueEnum};
use sluice_http::model::{PartitionInfo, TopicMessages};

use super::api_client::{decode_value, ApiClient};
use super::message_view::{message_line, write_raw, RawField};
use super::output::Output;
use super::query::LIMIT_MAX;
use super::time_spec::parse_time_arg;
use super::{CliError, CliResult, ClientOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsumeFormat {
    /// The value's bytes, one message per line (with --with fields before it).
    Raw,
    /// One JSON object per message: partition, offset, timestamp, key, value, headers.
    Json,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("start").args(["offset", "beginning", "end", "time"])))]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub options: ClientOptions,
    /// The topic
    #[arg(long, short = 't')]
    pub topic: String,
    /// Only this partition [default: all]
    #[arg(long, short = 'p')]
    pub partition: Option<i32>,
    /// Start at this offset in each partition; negative counts back from the end (-10: the
    /// last ten)
    #[arg(long, short = 'o', allow_hyphen_values = true)]
    pub offset: Option<i64>,
    /// Start at each partition's first message (the default)
    #[arg(long)]
    pub beginning: bool,
    /// Start at the end: only messages produced from now on (use with --follow)
    #[arg(long)]
    pub end: bool,
    /// Start at the first message at or after this time: ms since the epoch, RFC 3339, or a
    /// time ago such as -15m
    #[arg(long, value_parser = parse_time_arg, allow_hyphen_values = true)]
    pub time: Option<i64>,
    /// Stop after this many messages
    #[arg(long, short = 'c', value_name = "N")]
    pub count: Option<u64>,
    /// Keep waiting for new messages at the end (until interrupted or --count is reached)
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// How messages are printed (--json means json)
    #[arg(long, value_enum, default_value_t = ConsumeFormat::Raw)]
    pub format: ConsumeFormat,
    /// In raw format, fields printed before the value (comma-separated, in this order)
    #[arg(long, value_enum, value_delimiter = ',', value_name = "FIELD,...")]
    pub with: Vec<RawField>,
    /// In raw format, what separates the --with fields from each other and from the value
    #[arg(long, default_value = "\t", value_name = "TEXT")]
    pub separator: String,
    /// How often --follow asks for new messages once at the end, in ms
    #[arg(long, default_value_t = 500, value_name = "MS")]
    pub poll_interval_ms: u64,
}

/// Where one partition is being read.
struct PartitionCursor {
    partition: i32,
    /// The next offset to read; none until the first answer when starting from a time.
    next_offset: Option<i64>,
    timestamp_ms: Option<i64>,
    at_end: bool,
}

pub fn run(client: &ApiClient, output: &mut Output, args: &ConsumeArgs) -> CliResult<()> {
    let json = output.json || args.format == ConsumeFormat::Json;
    let partitions: Vec<PartitionInfo> =
        client.get(&["api", "topics", &args.topic, "partitions"], &[])?;
    let chosen: Vec<&PartitionInfo> = match args.partition {
        Some(index) => {
            let partition = partitions
                .iter()
                .find(|p| p.partition == index)
                .ok_or_else(|| {
                    CliError::Usage(format!(
                        "topic '{}' has no partition {index} (it has {})",
                        args.topic,
                        partitions.len()
                    ))
                })?;
            vec![partition]
        }
        None => partitions.iter().collect(),
    };
    let mut cursors: Vec<PartitionCursor> = chosen
        .iter()
        .map(|p| PartitionCursor {
            partition: p.partition,
            next_offset: start_offset(args, p),
            timestamp_ms: args.time,
            at_end: false,
        })
        .collect();

    let mut remaining = args.count;
    let mut warned_compressed = false;
    loop {
        for cursor in cursors.iter_mut() {
            if remaining == Some(0) {
                break;
            }
            let limit = remaining.map_or(LIMIT_MAX, |r| r.min(u64::from(LIMIT_MAX)) as u32);
            let mut query = vec![
                ("partition", cursor.partition.to_string()),
                ("limit", limit.to_string()),
            ];
            match (cursor.next_offset, cursor.timestamp_ms) {
                (Some(offset), _) => query.push(("offset", offset.to_string())),
                (None, Some(timestamp)) => query.push(("timestamp_ms", timestamp.to_string())),
                (None, None) => {}
            }
            let value = client.get_value(&["api", "topics", &args.topic, "messages"], &query)?;
            let read: TopicMessages = decode_value(value)?;
            if read.skipped_compressed_batches > 0 && !warned_compressed {
                warned_compressed = true;
                eprintln!("note: compressed batches that do not decompress are passed over");
            }
            for message in &read.messages {
                if json {
                    output.json_line(&message_line(message))?;
                } else {
                    write_raw(output, message, &args.with, &args.separator)?;
                }
            }
            if let Some(left) = remaining.as_mut() {
                *left = left.saturating_sub(read.messages.len() as u64);
            }
            match read
                .positions
                .iter()
                .find(|p| p.partition == cursor.partition)
            {
                Some(position) => {
                    cursor.next_offset = Some(position.next_offset);
                    cursor.at_end = position.next_offset >= position.high_watermark;
                }
                None => {
                    return Err(CliError::Protocol(format!(
                        "no position for partition {} in the answer",
                        cursor.partition
                    )))
                }
            }
        }
        output.flush()?;
        if remaining == Some(0) {
            return Ok(());
        }
        if cursors.iter().all(|c| c.at_end) {
            if !args.follow {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(args.poll_interval_ms));
        }
    }
}

fn start_offset(args: &ConsumeArgs, partition: &PartitionInfo) -> Option<i64> {
    if args.end {
        return Some(partition.high_watermark);
    }
    match args.offset {
        Some(offset) if offset < 0 => {
            Some((partition.high_watermark + offset).max(partition.log_start_offset))
        }
        Some(offset) => Some(offset),
        None if args.time.is_some() => None,
        None => Some(partition.log_start_offset),
    }
}
