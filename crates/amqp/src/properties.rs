//! AMQP basic properties ⇄ the broker's protocol-neutral message properties.

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::ShortString;
use sluice_broker::vhost::message::SHORT_STRING_BYTES_MAX;
use sluice_broker::vhost::MessageProperties;

/// A required short-string field of a method we send (exchange, routing key, consumer tag),
/// cut to 255 bytes at a character boundary if longer. The broker keeps these within the limit
/// where they enter (see `Message::from_record`); this is the last guard: amq-protocol would
/// write a wrong length byte, a malformed frame.
pub fn fit_short_string(value: &str, field: &'static str) -> ShortString {
    if value.len() <= SHORT_STRING_BYTES_MAX {
        return value.into();
    }
    tracing::warn!(
        field,
        bytes = value.len(),
        "AMQP short string over 255 bytes: cut"
    );
    let mut cut = SHORT_STRING_BYTES_MAX;
    while !value.is_char_boundary(cut) {
        cut -= 1;
    }
    value[..cut].into()
}

/// An optional short-string property, left out (with a log line) if too long to encode.
fn optional_short_string(value: &str, property: &'static str) -> Option<ShortString> {
    if value.len() > SHORT_STRING_BYTES_MAX {
        tracing::warn!(
            property,
            bytes = value.len(),
            "AMQP property over 255 bytes: left out"
        );
        return None;
    }
    Some(value.into())
}

fn text(value: &Option<ShortString>) -> Option<String> {
    value.as_ref().map(|s| s.as_str().to_string())
}

pub fn from_amqp(p: &AMQPProperties) -> MessageProperties {
    MessageProperties {
        content_type: text(p.content_type()),
        content_encoding: text(p.content_encoding()),
        headers: p.headers().clone(),
        delivery_mode: *p.delivery_mode(),
        priority: *p.priority(),
        correlation_id: text(p.correlation_id()),
        reply_to: text(p.reply_to()),
        expiration: text(p.expiration()),
        message_id: text(p.message_id()),
        timestamp: *p.timestamp(),
        kind: text(p.kind()),
        user_id: text(p.user_id()),
        app_id: text(p.app_id()),
        cluster_id: text(p.cluster_id()),
    }
}

pub fn to_amqp(p: &MessageProperties) -> AMQPProperties {
    let mut out = AMQPProperties::default();
    let short = |value: &Option<String>, property| {
        value
            .as_deref()
            .and_then(|v| optional_short_string(v, property))
    };
    if let Some(v) = short(&p.content_type, "content-type") {
        out = out.with_content_type(v);
    }
    if let Some(v) = short(&p.content_encoding, "content-encoding") {
        out = out.with_content_encoding(v);
    }
    if let Some(v) = &p.headers {
        out = out.with_headers(v.clone());
    }
    if let Some(v) = p.delivery_mode {
        out = out.with_delivery_mode(v);
    }
    if let Some(v) = p.priority {
        out = out.with_priority(v);
    }
    if let Some(v) = short(&p.correlation_id, "correlation-id") {
        out = out.with_correlation_id(v);
    }
    if let Some(v) = short(&p.reply_to, "reply-to") {
        out = out.with_reply_to(v);
    }
    if let Some(v) = short(&p.expiration, "expiration") {
        out = out.with_expiration(v);
    }
    if let Some(v) = short(&p.message_id, "message-id") {
        out = out.with_message_id(v);
    }
    if let Some(v) = p.timestamp {
        out = out.with_timestamp(v);
    }
    if let Some(v) = short(&p.kind, "type") {
        out = out.with_type(v);
    }
    if let Some(v) = short(&p.user_id, "user-id") {
        out = out.with_user_id(v);
    }
    if let Some(v) = short(&p.app_id, "app-id") {
        out = out.with_app_id(v);
    }
    if let Some(v) = short(&p.cluster_id, "cluster-id") {
        out = out.with_cluster_id(v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_round_trip() {
        let p = MessageProperties {
            content_type: Some("application/json".into()),
            delivery_mode: Some(2),
            timestamp: Some(42),
            kind: Some("order".into()),
            ..Default::default()
        };
        assert_eq!(from_amqp(&to_amqp(&p)), p);
    }

    #[test]
    fn nothing_over_255_bytes_reaches_a_short_string() {
        let long = "é".repeat(200);
        let p = MessageProperties {
            content_type: Some(long.clone()),
            message_id: Some(long.clone()),
            app_id: Some("app".into()),
            ..Default::default()
        };
        let amqp = to_amqp(&p);
        assert_eq!(amqp.content_type(), &None);
        assert_eq!(amqp.message_id(), &None);
        assert_eq!(amqp.app_id().as_ref().map(|s| s.as_str()), Some("app"));
        let cut = fit_short_string(&long, "routing_key");
        assert_eq!(cut.as_str().len(), 254);
        assert!(long.starts_with(cut.as_str()));
    }
}
