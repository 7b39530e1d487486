//! How `consume` and `query` show a topic's message: a JSON object per line, a raw line, or a
//! table row.

use base64::Engine;
use clap::ValueEnum;
use serde::Serialize;
use sluice_http::model::{EncodedBytes, TopicMessage};

use super::output::{human_time_ms, shorten, table, Output};
use super::{CliError, CliResult};

/// Characters of a key or value shown in a table cell.
const CELL_CHARS: usize = 60;

/// Extra fields printed before the value in raw format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RawField {
    /// `partition:offset`
    Offset,
    /// The timestamp, ms since the epoch.
    Timestamp,
    /// `key=value` pairs, comma-separated.
    Headers,
    /// The key (empty when null).
    Key,
}

/// A message as one JSON object: `key`, `value` and header values are text where the bytes
/// are UTF-8; otherwise null, with the bytes in `key_base64` / `value_base64`.
#[derive(Debug, Serialize)]
pub struct MessageLine<'a> {
    partition: i32,
    offset: i64,
    timestamp_ms: i64,
    timestamp_type: &'a str,
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_base64: Option<&'a str>,
    value: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<&'a str>,
    headers: Vec<HeaderLine<'a>>,
    size_bytes: u64,
}

#[derive(Debug, Serialize)]
struct HeaderLine<'a> {
    key: &'a str,
    value: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<&'a str>,
}

/// The text, and the base64 only when there is no text.
fn text_or_base64(bytes: Option<&EncodedBytes>) -> (Option<&str>, Option<&str>) {
    match bytes {
        None => (None, None),
        Some(encoded) => match &encoded.text {
            Some(text) => (Some(text), None),
            None => (None, Some(&encoded.base64)),
        },
    }
}

pub fn message_line(message: &TopicMessage) -> MessageLine<'_> {
    let (key, key_base64) = text_or_base64(message.key.as_ref());
    let (value, value_base64) = text_or_base64(message.value.as_ref());
    MessageLine {
        partition: message.partition,
        offset: message.offset,
        timestamp_ms: message.timestamp_ms,
        timestamp_type: &message.timestamp_type,
        key,
        key_base64,
        value,
        value_base64,
        headers: message
            .headers
            .iter()
            .map(|header| {
                let (value, value_base64) = text_or_base64(header.value.as_ref());
                HeaderLine {
                    key: &header.key,
                    value,
                    value_base64,
                }
            })
            .collect(),
        size_bytes: message.size_bytes,
    }
}

/// The bytes themselves (the API sends base64 for every value).
pub fn raw_bytes(encoded: &EncodedBytes) -> CliResult<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(&encoded.base64)
        .map_err(|error| CliError::Protocol(format!("invalid base64 from the server: {error}")))
}

/// Text for a person: the text, or `<N bytes>` when not UTF-8, or `-` when null.
fn readable(bytes: Option<&EncodedBytes>) -> String {
    match bytes {
        None => "-".into(),
        Some(encoded) => match &encoded.text {
            Some(text) => text.clone(),
            None => format!("<{} bytes>", encoded.size),
        },
    }
}

/// One raw line: the chosen fields, tab-separated, then the value's bytes as they are.
pub fn write_raw(
    output: &mut Output,
    message: &TopicMessage,
    fields: &[RawField],
    separator: &str,
) -> CliResult<()> {
    for field in fields {
        match field {
            RawField::Offset => {
                output.bytes(format!("{}:{}", message.partition, message.offset).as_bytes())?
            }
            RawField::Timestamp => output.bytes(message.timestamp_ms.to_string().as_bytes())?,
            RawField::Headers => {
                let headers: Vec<String> = message
                    .headers
                    .iter()
                    .map(|h| format!("{}={}", h.key, readable(h.value.as_ref())))
                    .collect();
                output.bytes(headers.join(",").as_bytes())?;
            }
            RawField::Key => {
                if let Some(key) = &message.key {
                    output.bytes(&raw_bytes(key)?)?;
                }
            }
        }
        output.bytes(separator.as_bytes())?;
    }
    if let Some(value) = &message.value {
        output.bytes(&raw_bytes(value)?)?;
    }
    output.bytes(b"\n")
}

/// Messages as a table for people.
pub fn write_table(output: &mut Output, messages: &[TopicMessage]) -> CliResult<()> {
    let mut rows = table(
        &[
            "partition",
            "offset",
            "timestamp",
            "key",
            "value",
            "headers",
        ],
        &[0, 1],
    );
    for message in messages {
        rows.add_row(vec![
            message.partition.to_string(),
            message.offset.to_string(),
            human_time_ms(message.timestamp_ms),
            shorten(&readable(message.key.as_ref()), CELL_CHARS),
            shorten(&readable(message.value.as_ref()), CELL_CHARS),
            shorten(
                &message
                    .headers
                    .iter()
                    .map(|h| format!("{}={}", h.key, readable(h.value.as_ref())))
                    .collect::<Vec<_>>()
                    .join(","),
                CELL_CHARS,
            ),
        ]);
    }
    output.table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_http::model::MessageHeader;

    fn encoded(bytes: &[u8]) -> EncodedBytes {
        EncodedBytes {
            size: bytes.len() as u64,
            text: std::str::from_utf8(bytes).ok().map(str::to_string),
            base64: base64::engine::general_purpose::STANDARD.encode(bytes),
            hex: None,
        }
    }

    fn message(key: &[u8], value: &[u8]) -> TopicMessage {
        TopicMessage {
            partition: 2,
            offset: 7,
            timestamp_ms: 1000,
            timestamp_type: "create_time".into(),
            key: Some(encoded(key)),
            value: Some(encoded(value)),
            headers: vec![MessageHeader {
                key: "h".into(),
                value: Some(encoded(b"v")),
            }],
            size_bytes: (key.len() + value.len() + 2) as u64,
        }
    }

    #[test]
    fn json_has_text_for_utf8_and_base64_for_other_bytes() {
        let text = serde_json::to_value(message_line(&message(b"k", b"hello"))).unwrap();
        assert_eq!(text["partition"], 2);
        assert_eq!(text["offset"], 7);
        assert_eq!(text["key"], "k");
        assert_eq!(text["value"], "hello");
        assert_eq!(text["headers"][0]["value"], "v");
        assert!(text.get("value_base64").is_none());
        let binary = serde_json::to_value(message_line(&message(b"k", &[0xff, 0]))).unwrap();
        assert_eq!(binary["value"], serde_json::Value::Null);
        assert_eq!(binary["value_base64"], "/wA=");
    }
}
