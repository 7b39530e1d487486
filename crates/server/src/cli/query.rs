//! `sluice query`: find a topic's messages by key, message id, time or offset (one request to
//! `GET /api/topics/{name}/messages`).

use clap::{ArgGroup, Args};
use sluice_http::model::TopicMessages;

use super::api_client::{decode_value, ApiClient};
use super::message_view::{message_line, write_table};
use super::output::Output;
use super::time_spec::parse_time_arg;
use super::{CliResult, ClientOptions};

/// Most messages the API gives in one answer.
pub const LIMIT_MAX: u32 = 1000;

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("by").required(true).args(["key", "id", "time", "offset"])))]
pub struct QueryArgs {
    #[command(flatten)]
    pub options: ClientOptions,
    /// The topic
    #[arg(long, short = 't')]
    pub topic: String,
    /// Messages with this key
    #[arg(long, short = 'k')]
    pub key: Option<String>,
    /// The message with this id (AMQP message-id, or a Kafka header)
    #[arg(long)]
    pub id: Option<String>,
    /// Messages from this time on: ms since the epoch, RFC 3339, or a time ago such as -15m
    #[arg(long, value_parser = parse_time_arg, allow_hyphen_values = true)]
    pub time: Option<i64>,
    /// Messages from this offset on
    #[arg(long, short = 'o')]
    pub offset: Option<i64>,
    /// Only this partition [default: all]
    #[arg(long, short = 'p')]
    pub partition: Option<i32>,
    /// Most messages shown (1 to 1000)
    #[arg(long, short = 'n', default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(LIMIT_MAX)))]
    pub limit: u32,
}

pub fn run(client: &ApiClient, output: &mut Output, args: &QueryArgs) -> CliResult<()> {
    let mut query: Vec<(&str, String)> = vec![("limit", args.limit.to_string())];
    if let Some(partition) = args.partition {
        query.push(("partition", partition.to_string()));
    }
    if let Some(key) = &args.key {
        query.push(("key", key.clone()));
    }
    if let Some(id) = &args.id {
        query.push(("message_id", id.clone()));
    }
    if let Some(time) = args.time {
        query.push(("timestamp_ms", time.to_string()));
    }
    if let Some(offset) = args.offset {
        query.push(("offset", offset.to_string()));
    }
    let value = client.get_value(&["api", "topics", &args.topic, "messages"], &query)?;
    let found: TopicMessages = decode_value(value)?;
    if found.skipped_compressed_batches > 0 {
        eprintln!(
            "note: {} compressed batches were passed over (they do not decompress)",
            found.skipped_compressed_batches
        );
    }
    if output.json {
        for message in &found.messages {
            output.json_line(&message_line(message))?;
        }
        return Ok(());
    }
    if found.messages.is_empty() {
        eprintln!("no messages found");
        return Ok(());
    }
    write_table(output, &found.messages)
}
