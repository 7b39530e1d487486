//! `sluice produce`: messages from stdin or a file, one per line by default, sent in batches
//! to `POST /api/topics/{name}/messages` (each batch durable before the next is sent).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use base64::Engine;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use sluice_http::model::{PayloadEncoding, ProduceHeader, ProduceMessage, ProduceResponse};

use super::api_client::{decode_value, ApiClient};
use super::output::{table, Output};
use super::topic::parse_key_value;
use super::{CliError, CliResult, ClientOptions};

/// A request's body stays under this (the API refuses bodies over 2 MB).
const REQUEST_BODY_BYTES_TARGET: usize = 1 << 20;
/// The API takes at most this many messages per request.
const BATCH_MESSAGES_MAX: usize = 10_000;

#[derive(Debug, Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub options: ClientOptions,
    /// The topic
    #[arg(long, short = 't')]
    pub topic: String,
    /// Read from this file [default: stdin; `-` is stdin too]
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Produce to this partition [default: by key, as Kafka's partitioner; without a key, one
    /// partition per batch]
    #[arg(long, short = 'p')]
    pub partition: Option<i32>,
    /// Give every message this key
    #[arg(long, short = 'k', conflicts_with = "key_separator")]
    pub key: Option<String>,
    /// Each line is KEY<SEPARATOR>VALUE, split at the first separator (a line without it has
    /// no key)
    #[arg(long, short = 'K', value_name = "SEPARATOR")]
    pub key_separator: Option<String>,
    /// A header on every message, `name=value` (repeatable)
    #[arg(long = "header", short = 'H', value_name = "NAME=VALUE", value_parser = parse_key_value)]
    pub headers: Vec<(String, String)>,
    /// The whole input is one message (not one per line)
    #[arg(long, conflicts_with = "key_separator")]
    pub single: bool,
    /// Messages per request
    #[arg(long, default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=BATCH_MESSAGES_MAX as i64))]
    pub batch_size: u32,
    /// No progress bar (it is only drawn on a terminal anyway)
    #[arg(long)]
    pub no_progress: bool,
}

/// What was stored where, for the summary.
#[derive(Default)]
struct PartitionTally {
    messages: u64,
    offset_first: i64,
    offset_last: i64,
}

struct Producer<'a> {
    client: &'a ApiClient,
    args: &'a ProduceArgs,
    /// The pending request's messages, each already JSON.
    pending: Vec<Vec<u8>>,
    pending_bytes: usize,
    sent: u64,
    tally: BTreeMap<i32, PartitionTally>,
    progress: ProgressBar,
}

pub fn run(client: &ApiClient, output: &mut Output, args: &ProduceArgs) -> CliResult<()> {
    let (mut input, total_bytes): (Box<dyn BufRead>, Option<u64>) = match &args.file {
        Some(path) if path.as_os_str() != "-" => {
            let file =
                File::open(path).map_err(CliError::io(format!("opening {}", path.display())))?;
            let length = file.metadata().ok().map(|m| m.len());
            (Box::new(BufReader::with_capacity(1 << 16, file)), length)
        }
        _ => (
            Box::new(BufReader::with_capacity(1 << 16, std::io::stdin())),
            None,
        ),
    };
    let mut producer = Producer {
        client,
        args,
        pending: Vec::new(),
        pending_bytes: 0,
        sent: 0,
        tally: BTreeMap::new(),
        progress: progress_bar(total_bytes, args.no_progress),
    };
    let outcome = producer.read_and_send(&mut input);
    producer.progress.finish_and_clear();
    if let Err(error) = outcome {
        if producer.sent > 0 {
            eprintln!(
                "{} messages were stored before the failure (see the summary below)",
                producer.sent
            );
            producer.summary(output)?;
        }
        return Err(error);
    }
    producer.summary(output)
}

fn progress_bar(total_bytes: Option<u64>, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    // The draw target draws only when stderr is a terminal.
    let bar = match total_bytes {
        Some(total) => ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
            .with_style(
                ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {msg} ({bytes_per_sec}, {eta} left)",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            ),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template("{spinner} {bytes} read {msg} ({bytes_per_sec})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.set_message("0 messages");
    bar
}

impl Producer<'_> {
    fn read_and_send(&mut self, input: &mut dyn BufRead) -> CliResult<()> {
        if self.args.single {
            let mut whole = Vec::new();
            input
                .read_to_end(&mut whole)
                .map_err(CliError::io("reading the input"))?;
            self.progress.inc(whole.len() as u64);
            self.push(None, whole)?;
            return self.send();
        }
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = input
                .read_until(b'\n', &mut line)
                .map_err(CliError::io("reading the input"))?;
            if read == 0 {
                break;
            }
            self.progress.inc(read as u64);
            if line.last() == Some(&b'\n') {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
            }
            let (key, value) = match &self.args.key_separator {
                Some(separator) => split_key(&line, separator.as_bytes()),
                None => (None, line.clone()),
            };
            self.push(key, value)?;
        }
        self.send()
    }

    fn push(&mut self, line_key: Option<Vec<u8>>, value: Vec<u8>) -> CliResult<()> {
        let key = line_key.or_else(|| self.args.key.as_ref().map(|k| k.as_bytes().to_vec()));
        let message = encode_message(key, value, &self.args.headers, self.args.partition);
        let json = serde_json::to_vec(&message)
            .map_err(|error| CliError::Usage(format!("encoding a message: {error}")))?;
        if !self.pending.is_empty()
            && self.pending_bytes + json.len() + 1 > REQUEST_BODY_BYTES_TARGET
        {
            self.send()?;
        }
        self.pending_bytes += json.len() + 1;
        self.pending.push(json);
        if self.pending.len() >= self.args.batch_size as usize {
            self.send()?;
        }
        Ok(())
    }

    fn send(&mut self) -> CliResult<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut body = Vec::with_capacity(self.pending_bytes + 16);
        body.extend_from_slice(b"{\"messages\":[");
        for (index, message) in self.pending.iter().enumerate() {
            if index > 0 {
                body.push(b',');
            }
            body.extend_from_slice(message);
        }
        body.extend_from_slice(b"]}");
        let answer = self
            .client
            .post_encoded(&["api", "topics", &self.args.topic, "messages"], &body)?;
        let stored: ProduceResponse = decode_value(answer)?;
        for placed in &stored.offsets {
            let tally = self
                .tally
                .entry(placed.partition)
                .or_insert(PartitionTally {
                    messages: 0,
                    offset_first: placed.offset,
                    offset_last: placed.offset,
                });
            tally.messages += 1;
            tally.offset_first = tally.offset_first.min(placed.offset);
            tally.offset_last = tally.offset_last.max(placed.offset);
        }
        self.sent += self.pending.len() as u64;
        self.pending.clear();
        self.pending_bytes = 0;
        self.progress.set_message(format!("{} messages", self.sent));
        Ok(())
    }

    fn summary(&self, output: &mut Output) -> CliResult<()> {
        if output.json {
            let partitions: Vec<_> = self
                .tally
                .iter()
                .map(|(partition, tally)| {
                    json!({"partition": partition, "messages": tally.messages,
                           "offset_first": tally.offset_first, "offset_last": tally.offset_last})
                })
                .collect();
            return output.document(&json!({
                "topic": self.args.topic,
                "messages": self.sent,
                "partitions": partitions,
            }));
        }
        output.line(&format!(
            "produced {} messages to topic {}",
            self.sent, self.args.topic
        ))?;
        if self.tally.is_empty() {
            return Ok(());
        }
        let mut rows = table(
            &["partition", "messages", "first offset", "last offset"],
            &[0, 1, 2, 3],
        );
        for (partition, tally) in &self.tally {
            rows.add_row(vec![
                partition.to_string(),
                tally.messages.to_string(),
                tally.offset_first.to_string(),
                tally.offset_last.to_string(),
            ]);
        }
        output.table(&rows)
    }
}

/// Splits a line at the first `separator`: the key before, the value after. A line without
/// the separator is all value, with no key.
fn split_key(line: &[u8], separator: &[u8]) -> (Option<Vec<u8>>, Vec<u8>) {
    if separator.is_empty() {
        return (None, line.to_vec());
    }
    match line
        .windows(separator.len())
        .position(|window| window == separator)
    {
        Some(at) => (
            Some(line[..at].to_vec()),
            line[at + separator.len()..].to_vec(),
        ),
        None => (None, line.to_vec()),
    }
}

/// A message for the API: text when the key and value are UTF-8, else base64 (which then
/// covers the header values as well).
fn encode_message(
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: &[(String, String)],
    partition: Option<i32>,
) -> ProduceMessage {
    let text = key
        .as_deref()
        .is_none_or(|k| std::str::from_utf8(k).is_ok())
        && std::str::from_utf8(&value).is_ok();
    let encode = |bytes: &[u8]| -> String {
        if text {
            String::from_utf8_lossy(bytes).into_owned()
        } else {
            base64::engine::general_purpose::STANDARD.encode(bytes)
        }
    };
    ProduceMessage {
        key: key.as_deref().map(encode),
        value: Some(encode(&value)),
        headers: headers
            .iter()
            .map(|(name, value)| ProduceHeader {
                key: name.clone(),
                value: Some(encode(value.as_bytes())),
            })
            .collect(),
        partition,
        timestamp_ms: None,
        encoding: if text {
            PayloadEncoding::String
        } else {
            PayloadEncoding::Base64
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_splits_at_the_first_separator() {
        assert_eq!(
            split_key(b"k1::a::b", b"::"),
            (Some(b"k1".to_vec()), b"a::b".to_vec())
        );
        assert_eq!(split_key(b"no key", b"::"), (None, b"no key".to_vec()));
        assert_eq!(split_key(b"::v", b"::"), (Some(Vec::new()), b"v".to_vec()));
    }

    #[test]
    fn non_utf8_messages_go_as_base64_with_their_headers() {
        let text = encode_message(
            Some(b"k".to_vec()),
            b"v".to_vec(),
            &[("h".into(), "x".into())],
            None,
        );
        assert_eq!(text.encoding, PayloadEncoding::String);
        assert_eq!(text.value.as_deref(), Some("v"));
        let binary = encode_message(None, vec![0xff], &[("h".into(), "x".into())], Some(1));
        assert_eq!(binary.encoding, PayloadEncoding::Base64);
        assert_eq!(binary.value.as_deref(), Some("/w=="));
        assert_eq!(binary.headers[0].value.as_deref(), Some("eA=="));
        assert_eq!(binary.partition, Some(1));
    }
}
