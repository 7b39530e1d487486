//! `sluice publish`: one AMQP message to an exchange through `POST /api/exchanges/{name}/publish`.

use std::io::Read;
use std::path::PathBuf;

use base64::Engine;
use clap::Args;
use sluice_http::model::{AmqpProperties, PayloadEncoding, PublishRequest, PublishResponse};

use super::api_client::{decode_value, ApiClient};
use super::output::Output;
use super::topic::parse_key_value;
use super::{CliError, CliResult, ClientOptions};

/// The default exchange's name in API paths.
const DEFAULT_EXCHANGE_PATH: &str = "amq.default";

#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub options: ClientOptions,
    /// The exchange [default: the default exchange, where the routing key names the queue]
    #[arg(long, short = 'e', default_value = "")]
    pub exchange: String,
    /// The routing key
    #[arg(long, short = 'r', default_value = "")]
    pub routing_key: String,
    /// The body [default: read from --file, or else from stdin]
    #[arg(long, short = 'b', conflicts_with = "file")]
    pub body: Option<String>,
    /// Read the body from this file
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// A header, `name=value` (repeatable; values are strings)
    #[arg(long = "header", short = 'H', value_name = "NAME=VALUE", value_parser = parse_key_value)]
    pub headers: Vec<(String, String)>,
    /// The message-id property
    #[arg(long)]
    pub message_id: Option<String>,
    /// The content-type property, e.g. application/json
    #[arg(long)]
    pub content_type: Option<String>,
    /// The correlation-id property
    #[arg(long)]
    pub correlation_id: Option<String>,
    /// Mark the message persistent (delivery mode 2)
    #[arg(long)]
    pub persistent: bool,
    /// The expiration property: a per-message TTL in ms
    #[arg(long, value_name = "MS")]
    pub expiration: Option<u64>,
}

pub fn run(client: &ApiClient, output: &mut Output, args: &PublishArgs) -> CliResult<()> {
    let body: Vec<u8> = match (&args.body, &args.file) {
        (Some(body), _) => body.clone().into_bytes(),
        (None, Some(path)) => {
            std::fs::read(path).map_err(CliError::io(format!("reading {}", path.display())))?
        }
        (None, None) => {
            let mut body = Vec::new();
            std::io::stdin()
                .read_to_end(&mut body)
                .map_err(CliError::io("reading stdin"))?;
            body
        }
    };
    let (payload, payload_encoding) = match String::from_utf8(body) {
        Ok(text) => (text, PayloadEncoding::String),
        Err(error) => (
            base64::engine::general_purpose::STANDARD.encode(error.as_bytes()),
            PayloadEncoding::Base64,
        ),
    };
    let headers = (!args.headers.is_empty()).then(|| {
        args.headers
            .iter()
            .map(|(name, value)| (name.clone(), serde_json::Value::String(value.clone())))
            .collect()
    });
    let request = PublishRequest {
        routing_key: args.routing_key.clone(),
        payload,
        payload_encoding,
        properties: AmqpProperties {
            content_type: args.content_type.clone(),
            headers,
            delivery_mode: args.persistent.then_some(2),
            correlation_id: args.correlation_id.clone(),
            expiration: args.expiration.map(|ms| ms.to_string()),
            message_id: args.message_id.clone(),
            ..AmqpProperties::default()
        },
    };
    let exchange = if args.exchange.is_empty() {
        DEFAULT_EXCHANGE_PATH
    } else {
        &args.exchange
    };
    let value = client.post(&["api", "exchanges", exchange, "publish"], &request)?;
    if output.json {
        return output.document(&value);
    }
    let published: PublishResponse = decode_value(value)?;
    if published.routed {
        output.line("published and routed")
    } else {
        // As rabbitmqadmin: not an error, but worth saying.
        output.line("published, but NOT routed: no queue is bound for this routing key")
    }
}
