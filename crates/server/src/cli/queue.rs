//! `sluice queue list|purge|get|move`.

use std::time::Duration;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sluice_http::model::{
    GetAckMode, GetMessagesRequest, MoveMessagesRequest, MoveMessagesResponse, PurgeResponse,
    QueueInfo, QueueMessage,
};

use super::api_client::{decode_value, ApiClient};
use super::output::{shorten, table, Output};
use super::{CliResult, ClientOptions};

/// Characters of a payload shown in a table cell.
const PAYLOAD_CHARS: usize = 60;

#[derive(Debug, Args)]
pub struct QueueArgs {
    #[command(flatten)]
    pub options: ClientOptions,
    /// The AMQP virtual host [default: `/`; list: every vhost]
    #[arg(long, global = true, value_name = "VHOST")]
    pub vhost: Option<String>,
    #[command(subcommand)]
    pub command: QueueCommand,
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Queues with their ready and unacknowledged messages and consumers.
    List,
    /// Drop a queue's ready messages.
    Purge { queue: String },
    /// Show messages of a queue; they stay in it unless --ack.
    Get {
        queue: String,
        /// How many messages (1 to 1000)
        #[arg(long, short = 'c', default_value_t = 1,
              value_parser = clap::value_parser!(u32).range(1..=1000))]
        count: u32,
        /// Take the messages out of the queue instead of putting them back
        #[arg(long)]
        ack: bool,
    },
    /// Move messages to another exchange; by default each goes back to where it was
    /// dead-lettered from (its x-death header)
    Move {
        queue: String,
        /// Publish to this exchange instead (`amq.default` or "" is the default exchange)
        #[arg(long, value_name = "EXCHANGE")]
        to_exchange: Option<String>,
        /// With --to-exchange, this routing key instead of each message's own
        #[arg(long, requires = "to_exchange")]
        routing_key: Option<String>,
        /// Move at most this many (1 to 100000) [default: all, at most 100000]
        #[arg(long, short = 'c', value_parser = clap::value_parser!(u32).range(1..=100_000))]
        count: Option<u32>,
    },
}

pub fn run(client: &ApiClient, output: &mut Output, args: &QueueArgs) -> CliResult<()> {
    let vhost: Vec<(&str, String)> = args
        .vhost
        .iter()
        .map(|vhost| ("vhost", vhost.clone()))
        .collect();
    match &args.command {
        QueueCommand::List => list(client, output, &vhost),
        QueueCommand::Purge { queue } => {
            let value = client.post_empty_with_query(&["api", "queues", queue, "purge"], &vhost)?;
            if output.json {
                return output.document(&value);
            }
            let purged: PurgeResponse = decode_value(value)?;
            output.line(&format!(
                "purged {} messages from queue {queue}",
                purged.messages_purged
            ))
        }
        QueueCommand::Get { queue, count, ack } => {
            let request = GetMessagesRequest {
                count: Some(*count),
                ack_mode: if *ack {
                    GetAckMode::Ack
                } else {
                    GetAckMode::Requeue
                },
            };
            let value =
                client.post_with_query(&["api", "queues", queue, "get"], &vhost, &request)?;
            if output.json {
                return output.document(&value);
            }
            let messages: Vec<QueueMessage> = decode_value(value)?;
            get_table(output, &messages)
        }
        QueueCommand::Move {
            queue,
            to_exchange,
            routing_key,
            count,
        } => {
            let request = MoveMessagesRequest {
                exchange: to_exchange.clone(),
                routing_key: routing_key.clone(),
                count: *count,
            };
            // One request that can take a while: a spinner on a terminal says it is working.
            let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
                .with_style(
                    ProgressStyle::with_template("{spinner} moving messages of {msg} ({elapsed})")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
            spinner.set_message(queue.clone());
            spinner.enable_steady_tick(Duration::from_millis(120));
            let moved = client.post_with_query(&["api", "queues", queue, "move"], &vhost, &request);
            spinner.finish_and_clear();
            let value = moved?;
            if output.json {
                return output.document(&value);
            }
            let moved: MoveMessagesResponse = decode_value(value)?;
            output.line(&format!(
                "moved {} messages from queue {queue}; {} left in it (no x-death origin, or routed nowhere)",
                moved.moved, moved.skipped
            ))
        }
    }
}

fn list(client: &ApiClient, output: &mut Output, vhost: &[(&str, String)]) -> CliResult<()> {
    let value = client.get_value(&["api", "queues"], vhost)?;
    if output.json {
        return output.document(&value);
    }
    let queues: Vec<QueueInfo> = decode_value(value)?;
    let mut rows = table(
        &[
            "name",
            "type",
            "ready",
            "unacked",
            "messages",
            "consumers",
            "durable",
            "vhost",
        ],
        &[2, 3, 4, 5],
    );
    for queue in queues {
        rows.add_row(vec![
            queue.name,
            queue.kind,
            queue.messages_ready.to_string(),
            queue.messages_unacked.to_string(),
            queue.messages.to_string(),
            queue.consumers.to_string(),
            queue.durable.to_string(),
            queue.vhost,
        ]);
    }
    output.table(&rows)
}

fn get_table(output: &mut Output, messages: &[QueueMessage]) -> CliResult<()> {
    if messages.is_empty() {
        eprintln!("the queue has no ready messages");
        return Ok(());
    }
    let mut rows = table(
        &[
            "payload",
            "exchange",
            "routing key",
            "redelivered",
            "remaining",
            "properties",
        ],
        &[4],
    );
    for message in messages {
        let payload = match &message.payload.text {
            Some(text) => text.clone(),
            None => format!("<{} bytes>", message.payload.size),
        };
        rows.add_row(vec![
            shorten(&payload, PAYLOAD_CHARS),
            if message.exchange.is_empty() {
                "(default)".to_string()
            } else {
                message.exchange.clone()
            },
            message.routing_key.clone(),
            message.redelivered.to_string(),
            message.message_count.to_string(),
            shorten(
                &serde_json::to_string(&message.properties).unwrap_or_default(),
                PAYLOAD_CHARS,
            ),
        ]);
    }
    output.table(&rows)
}
