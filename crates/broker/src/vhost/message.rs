//! The protocol-neutral message of the queueing model (AMQP's basic content) and its form in the
//! log: a record-batch v2 record whose key is the routing key, whose value is the body and whose
//! headers carry the properties. Queues and Kafka topics share this encoding, which is what lets a
//! message cross from one protocol to the other (see the README's "Kafka and AMQP" section).

use amq_protocol_types::{AMQPValue, FieldTable, LongString};
use bytes::Bytes;
use sluice_log::Record;

use crate::now_ms;

/// AMQP's basic properties. Header values keep AMQP's field-table types.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MessageProperties {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub headers: Option<FieldTable>,
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub expiration: Option<String>,
    pub message_id: Option<String>,
    pub timestamp: Option<u64>,
    pub kind: Option<String>,
    pub user_id: Option<String>,
    pub app_id: Option<String>,
    pub cluster_id: Option<String>,
}

/// delivery_mode 2: the publisher asked for the message to be written to disk.
pub const DELIVERY_MODE_PERSISTENT: u8 = 2;

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The exchange it was published to ("" for the default exchange).
    pub exchange: String,
    pub routing_key: String,
    pub properties: MessageProperties,
    pub body: Bytes,
}

impl Message {
    pub fn is_persistent(&self) -> bool {
        self.properties.delivery_mode == Some(DELIVERY_MODE_PERSISTENT)
    }

    /// The per-message TTL (`expiration`, milliseconds as a decimal string), if valid.
    pub fn expiration_ms(&self) -> Option<u64> {
        self.properties
            .expiration
            .as_deref()
            .and_then(|e| e.parse().ok())
    }

    /// What the message costs in memory, for the memory watermark.
    pub fn size_bytes(&self) -> u64 {
        (self.body.len() + self.routing_key.len() + self.exchange.len() + 64) as u64
    }

    pub fn header(&self, name: &str) -> Option<&AMQPValue> {
        self.properties.headers.as_ref()?.inner().get(name)
    }
}

// Record header names for properties. `amqp.headers` holds the whole field table in AMQP's own
// binary encoding, so AMQP consumers get every header back with its type; string-like headers
// are also written as plain Kafka headers for Kafka consumers.
const H_EXCHANGE: &str = "amqp.exchange";
const H_HEADERS: &str = "amqp.headers";
const H_CONTENT_TYPE: &str = "content-type";
const H_CONTENT_ENCODING: &str = "content-encoding";
const H_DELIVERY_MODE: &str = "amqp.delivery-mode";
const H_PRIORITY: &str = "amqp.priority";
const H_CORRELATION_ID: &str = "correlation-id";
const H_REPLY_TO: &str = "reply-to";
const H_EXPIRATION: &str = "amqp.expiration";
const H_MESSAGE_ID: &str = "message-id";
const H_TIMESTAMP: &str = "amqp.timestamp";
const H_TYPE: &str = "amqp.type";
const H_USER_ID: &str = "amqp.user-id";
const H_APP_ID: &str = "amqp.app-id";
const H_CLUSTER_ID: &str = "amqp.cluster-id";

/// The longest AMQP short string (names, exchange, routing key, most properties).
pub const SHORT_STRING_BYTES_MAX: usize = 255;

/// A header a Kafka producer can set to choose the AMQP routing key of a record it writes
/// (otherwise the record key is used); also added to AMQP deliveries of Kafka records.
pub const HEADER_KAFKA_KEY: &str = "x-kafka-key";

impl Message {
    /// The log record for this message. `for_kafka` also flattens string-like application
    /// headers into plain Kafka headers (only worth the bytes where Kafka clients read it).
    pub fn to_record(&self, for_kafka: bool) -> Record {
        let p = &self.properties;
        let mut headers: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        let mut put = |name: &str, value: &Option<String>| {
            if let Some(v) = value {
                headers.push((name.to_string(), Some(v.clone().into_bytes())));
            }
        };
        put(H_CONTENT_TYPE, &p.content_type);
        put(H_CONTENT_ENCODING, &p.content_encoding);
        put(H_CORRELATION_ID, &p.correlation_id);
        put(H_REPLY_TO, &p.reply_to);
        put(H_EXPIRATION, &p.expiration);
        put(H_MESSAGE_ID, &p.message_id);
        put(H_TYPE, &p.kind);
        put(H_USER_ID, &p.user_id);
        put(H_APP_ID, &p.app_id);
        put(H_CLUSTER_ID, &p.cluster_id);
        put(H_DELIVERY_MODE, &p.delivery_mode.map(|m| m.to_string()));
        put(H_PRIORITY, &p.priority.map(|m| m.to_string()));
        put(H_TIMESTAMP, &p.timestamp.map(|m| m.to_string()));
        if !self.exchange.is_empty() {
            headers.push((H_EXCHANGE.into(), Some(self.exchange.clone().into_bytes())));
        }
        if let Some(table) = &p.headers {
            if for_kafka {
                for (name, value) in table {
                    if let Some(text) = value_as_bytes(value) {
                        headers.push((name.as_str().to_string(), Some(text)));
                    }
                }
            }
            headers.push((H_HEADERS.into(), Some(encode_field_table(table))));
        }
        let timestamp = p
            .timestamp
            .and_then(|t| i64::try_from(t).ok())
            .map_or_else(now_ms, |t| t.saturating_mul(1000));
        Record {
            offset: 0,
            timestamp,
            key: Some(self.routing_key.clone().into_bytes()),
            value: Some(self.body.to_vec()),
            headers,
        }
    }

    /// The message a record holds: ours (written by `to_record`) or a Kafka producer's. For the
    /// latter the routing key is the record key and every header becomes a long-string header.
    ///
    /// AMQP carries names, the exchange, the routing key and most properties as short strings
    /// of at most 255 bytes, which Kafka does not bound. So that no delivery is a malformed
    /// frame: a header whose name is longer is left out (a debug line says so); a property
    /// header (`content-type`, `message-id`, `amqp.type`, ...) or `amqp.exchange` whose value is
    /// longer does not become the property but stays an ordinary long-string header of the
    /// same name; a longer key gives an empty routing key (the key stays in `x-kafka-key`).
    pub fn from_record(record: Record) -> Message {
        let mut p = MessageProperties::default();
        let mut exchange = String::new();
        let mut plain_headers = FieldTable::default();
        // Property values too long for their short string, kept as long-string headers.
        let mut oversized = Vec::new();
        let mut amqp_headers = None;
        let text =
            |v: &Option<Vec<u8>>| v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
        for (name, value) in &record.headers {
            if name.len() > SHORT_STRING_BYTES_MAX {
                tracing::debug!(
                    header_bytes = name.len(),
                    "a record header's name is longer than an AMQP short string: left out of the AMQP headers"
                );
                continue;
            }
            let is_property = matches!(
                name.as_str(),
                H_EXCHANGE
                    | H_CONTENT_TYPE
                    | H_CONTENT_ENCODING
                    | H_CORRELATION_ID
                    | H_REPLY_TO
                    | H_EXPIRATION
                    | H_MESSAGE_ID
                    | H_TYPE
                    | H_USER_ID
                    | H_APP_ID
                    | H_CLUSTER_ID
            );
            if is_property && text(value).is_some_and(|t| t.len() > SHORT_STRING_BYTES_MAX) {
                let value =
                    AMQPValue::LongString(LongString::from(value.clone().unwrap_or_default()));
                oversized.push((name.as_str().into(), value.clone()));
                plain_headers.insert(name.as_str().into(), value);
                continue;
            }
            match name.as_str() {
                H_EXCHANGE => exchange = text(value).unwrap_or_default(),
                H_HEADERS => {
                    amqp_headers = value.as_deref().and_then(decode_field_table);
                }
                H_CONTENT_TYPE => p.content_type = text(value),
                H_CONTENT_ENCODING => p.content_encoding = text(value),
                H_CORRELATION_ID => p.correlation_id = text(value),
                H_REPLY_TO => p.reply_to = text(value),
                H_EXPIRATION => p.expiration = text(value),
                H_MESSAGE_ID => p.message_id = text(value),
                H_TYPE => p.kind = text(value),
                H_USER_ID => p.user_id = text(value),
                H_APP_ID => p.app_id = text(value),
                H_CLUSTER_ID => p.cluster_id = text(value),
                H_DELIVERY_MODE => p.delivery_mode = text(value).and_then(|v| v.parse().ok()),
                H_PRIORITY => p.priority = text(value).and_then(|v| v.parse().ok()),
                H_TIMESTAMP => p.timestamp = text(value).and_then(|v| v.parse().ok()),
                other => {
                    plain_headers.insert(
                        other.into(),
                        AMQPValue::LongString(LongString::from(value.clone().unwrap_or_default())),
                    );
                }
            }
        }
        let foreign = amqp_headers.is_none()
            && !record
                .headers
                .iter()
                .any(|(n, _)| n == H_EXCHANGE || n == H_DELIVERY_MODE);
        let key = record.key.unwrap_or_default();
        if foreign {
            // A Kafka producer's record: keep its key as a header, since a routing key is text.
            if !key.is_empty() && !plain_headers.contains_key(HEADER_KAFKA_KEY) {
                plain_headers.insert(
                    HEADER_KAFKA_KEY.into(),
                    AMQPValue::LongString(LongString::from(key.clone())),
                );
            }
            if p.timestamp.is_none() && record.timestamp >= 0 {
                p.timestamp = Some((record.timestamp / 1000) as u64);
            }
        }
        p.headers = match amqp_headers {
            Some(mut table) => {
                for (name, value) in oversized {
                    table.insert(name, value);
                }
                Some(table)
            }
            None if !plain_headers.inner().is_empty() => Some(plain_headers),
            None => None,
        };
        let mut routing_key = String::from_utf8_lossy(&key).into_owned();
        if routing_key.len() > SHORT_STRING_BYTES_MAX {
            routing_key.clear();
        }
        Message {
            exchange,
            routing_key,
            properties: p,
            body: Bytes::from(record.value.unwrap_or_default()),
        }
    }
}

/// A header value as Kafka header bytes: strings as they are, numbers and booleans as text;
/// tables and arrays have no natural byte form and stay only in `amqp.headers`.
fn value_as_bytes(value: &AMQPValue) -> Option<Vec<u8>> {
    Some(match value {
        AMQPValue::LongString(s) => s.as_bytes().to_vec(),
        AMQPValue::ShortString(s) => s.as_str().as_bytes().to_vec(),
        AMQPValue::ByteArray(b) => b.as_slice().to_vec(),
        AMQPValue::Boolean(b) => b.to_string().into_bytes(),
        AMQPValue::ShortShortInt(v) => v.to_string().into_bytes(),
        AMQPValue::ShortShortUInt(v) => v.to_string().into_bytes(),
        AMQPValue::ShortInt(v) => v.to_string().into_bytes(),
        AMQPValue::ShortUInt(v) => v.to_string().into_bytes(),
        AMQPValue::LongInt(v) => v.to_string().into_bytes(),
        AMQPValue::LongUInt(v) => v.to_string().into_bytes(),
        AMQPValue::LongLongInt(v) => v.to_string().into_bytes(),
        AMQPValue::Timestamp(v) => v.to_string().into_bytes(),
        AMQPValue::Float(v) => v.to_string().into_bytes(),
        AMQPValue::Double(v) => v.to_string().into_bytes(),
        _ => return None,
    })
}

pub fn encode_field_table(table: &FieldTable) -> Vec<u8> {
    let gen = amq_protocol_types::generation::gen_field_table(table);
    cookie_factory::gen_simple(gen, Vec::new()).unwrap_or_default()
}

/// The field table `bytes` start with; None if it is malformed or nested too deep (see
/// [`super::field_table`]: amq-protocol's parser would recurse into a stack overflow).
pub fn decode_field_table(bytes: &[u8]) -> Option<FieldTable> {
    super::field_table::scan_field_table(bytes, super::field_table::FIELD_TABLE_DEPTH_MAX).ok()?;
    amq_protocol_types::parsing::parse_field_table(bytes)
        .ok()
        .map(|(_, table)| table)
}

/// A header's value as text, for string-typed arguments and headers.
pub fn value_as_str(value: &AMQPValue) -> Option<&str> {
    match value {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// A header's value as an integer, for numeric arguments (x-max-length, x-message-ttl...).
pub fn value_as_i64(value: &AMQPValue) -> Option<i64> {
    Some(match value {
        AMQPValue::ShortShortInt(v) => i64::from(*v),
        AMQPValue::ShortShortUInt(v) => i64::from(*v),
        AMQPValue::ShortInt(v) => i64::from(*v),
        AMQPValue::ShortUInt(v) => i64::from(*v),
        AMQPValue::LongInt(v) => i64::from(*v),
        AMQPValue::LongUInt(v) => i64::from(*v),
        AMQPValue::LongLongInt(v) => *v,
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok()?,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol_types::FieldArray;

    #[test]
    fn amqp_message_survives_the_record_round_trip() {
        let mut headers = FieldTable::default();
        headers.insert("s".into(), AMQPValue::LongString("text".into()));
        headers.insert("n".into(), AMQPValue::LongInt(-7));
        headers.insert(
            "a".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Boolean(true)])),
        );
        let message = Message {
            exchange: "ex".into(),
            routing_key: "rk".into(),
            properties: MessageProperties {
                content_type: Some("text/plain".into()),
                delivery_mode: Some(2),
                priority: Some(3),
                timestamp: Some(1_700_000_000),
                message_id: Some("m-1".into()),
                headers: Some(headers),
                ..Default::default()
            },
            body: Bytes::from_static(b"hello"),
        };
        let record = message.to_record(true);
        assert!(record
            .headers
            .iter()
            .any(|(n, v)| n == "s" && v.as_deref() == Some(&b"text"[..])));
        assert_eq!(Message::from_record(record), message);
    }

    /// Kafka bounds none of what AMQP carries in 255-byte short strings.
    #[test]
    fn kafka_record_with_oversized_names_and_values_fits_amqp_short_strings() {
        let long = "v".repeat(300);
        let record = Record {
            offset: 0,
            timestamp: 1_700_000_000_123,
            key: Some("k".repeat(300).into_bytes()),
            value: Some(b"body".to_vec()),
            headers: vec![
                ("n".repeat(300), Some(b"dropped".to_vec())),
                ("content-type".into(), Some(long.clone().into_bytes())),
                ("message-id".into(), Some(b"short-id".to_vec())),
                ("amqp.exchange".into(), Some(long.clone().into_bytes())),
                ("amqp.type".into(), Some(long.clone().into_bytes())),
                // 100 invalid bytes become 300 bytes of replacement characters.
                ("reply-to".into(), Some(vec![0xff; 100])),
            ],
        };
        let message = Message::from_record(record);
        assert_eq!(message.routing_key, "");
        assert_eq!(message.exchange, "");
        let p = &message.properties;
        assert_eq!(p.content_type, None);
        assert_eq!(p.kind, None);
        assert_eq!(p.reply_to, None);
        assert_eq!(p.message_id.as_deref(), Some("short-id"));
        let headers = p.headers.as_ref().unwrap().inner();
        assert!(headers
            .keys()
            .all(|k| k.as_str().len() <= SHORT_STRING_BYTES_MAX));
        for name in ["content-type", "amqp.exchange", "amqp.type"] {
            assert_eq!(
                headers.get(name),
                Some(&AMQPValue::LongString(long.clone().into())),
                "{name}"
            );
        }
        assert!(headers.contains_key("reply-to"));
    }

    #[test]
    fn kafka_record_becomes_a_message_with_its_key_and_headers() {
        let record = Record {
            offset: 5,
            timestamp: 1_700_000_000_123,
            key: Some(b"user-1".to_vec()),
            value: Some(b"{}".to_vec()),
            headers: vec![("trace".into(), Some(b"abc".to_vec()))],
        };
        let message = Message::from_record(record);
        assert_eq!(message.routing_key, "user-1");
        assert_eq!(&message.body[..], b"{}");
        let headers = message.properties.headers.unwrap();
        assert_eq!(
            headers.inner().get("trace"),
            Some(&AMQPValue::LongString("abc".into()))
        );
        assert_eq!(
            headers.inner().get(HEADER_KAFKA_KEY),
            Some(&AMQPValue::LongString("user-1".into()))
        );
        assert_eq!(message.properties.timestamp, Some(1_700_000_000));
    }
}
