//! Frames on the wire. The method and property codecs are amq-protocol's; the framing around
//! them is read here by hand because the size must be checked against the negotiated frame_max
//! before the payload is read (amq-protocol's frame parser would buffer whatever length a
//! client claims).

use amq_protocol::frame::{gen_frame, AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, parse_class, AMQPClass};
use bytes::{BufMut, Bytes, BytesMut};
use sluice_broker::vhost::field_table::{scan_field_table, FieldTableError, FIELD_TABLE_DEPTH_MAX};
use tokio::io::{AsyncRead, AsyncReadExt};

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
/// Frame header (type, channel, size) plus the frame-end octet.
pub const FRAME_OVERHEAD: usize = 8;
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// A frame as read, payload not yet decoded.
pub struct RawFrame {
    pub kind: u8,
    pub channel: u16,
    pub payload: BytesMut,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// 501 FRAME_ERROR.
    #[error("{0}")]
    Frame(String),
}

/// Reads one frame. A size above `frame_max` or a wrong frame-end octet is a FRAME_ERROR.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    frame_max: u32,
) -> Result<RawFrame, FrameError> {
    let mut header = [0u8; 7];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let kind = header[0];
    let channel = u16::from_be_bytes([header[1], header[2]]);
    let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]);
    if !matches!(
        kind,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(FrameError::Frame(format!("type {kind}: unknown_frame")));
    }
    if size as u64 + FRAME_OVERHEAD as u64 > frame_max as u64 {
        return Err(FrameError::Frame(format!(
            "frame_too_large: payload of {size} bytes, the negotiated limit is {}",
            frame_max.saturating_sub(FRAME_OVERHEAD as u32)
        )));
    }
    let mut payload = BytesMut::zeroed(size as usize + 1);
    reader
        .read_exact(&mut payload)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => FrameError::Closed,
            _ => FrameError::Io(e),
        })?;
    if payload[size as usize] != FRAME_END {
        return Err(FrameError::Frame(format!(
            "type {kind}: frame end octet {:#04x} is not 0xce",
            payload[size as usize]
        )));
    }
    payload.truncate(size as usize);
    Ok(RawFrame {
        kind,
        channel,
        payload,
    })
}

/// Why a method payload did not decode.
pub enum MethodError {
    /// Class/method ids we do not know: 540 NOT_IMPLEMENTED.
    Unknown(u16, u16),
    /// Known method, bad arguments: 502 SYNTAX_ERROR.
    Syntax(u16, u16),
    /// A field table nested deeper than `FIELD_TABLE_DEPTH_MAX`, refused before parsing.
    TooDeep(u16, u16),
}

/// The fields before the arguments table of a method that carries one (client to server).
#[derive(Clone, Copy)]
enum Field {
    Short,
    ShortString,
    Bits,
}

fn fields_before_table(class_id: u16, method_id: u16) -> Option<&'static [Field]> {
    use Field::*;
    Some(match (class_id, method_id) {
        // connection.start-ok: client-properties come first.
        (10, 11) => &[],
        // exchange.declare: ticket, exchange, type, flags.
        (40, 10) => &[Short, ShortString, ShortString, Bits],
        // exchange.bind / unbind: ticket, destination, source, routing key, no-wait.
        (40, 30) | (40, 40) => &[Short, ShortString, ShortString, ShortString, Bits],
        // queue.declare: ticket, queue, flags.
        (50, 10) => &[Short, ShortString, Bits],
        // queue.bind: ticket, queue, exchange, routing key, no-wait.
        (50, 20) => &[Short, ShortString, ShortString, ShortString, Bits],
        // queue.unbind: ticket, queue, exchange, routing key.
        (50, 50) => &[Short, ShortString, ShortString, ShortString],
        // basic.consume: ticket, queue, consumer tag, flags.
        (60, 20) => &[Short, ShortString, ShortString, Bits],
        _ => return None,
    })
}

/// Whether the field table at `at` in `payload` is nested too deep. Anything malformed is left
/// for amq-protocol's parser to refuse.
fn table_too_deep(payload: &[u8], at: usize) -> bool {
    payload.get(at..).is_some_and(|table| {
        scan_field_table(table, FIELD_TABLE_DEPTH_MAX) == Err(FieldTableError::TooDeep)
    })
}

/// Checks the nesting of the method's arguments table, if it has one, before it is parsed.
fn check_method_table(payload: &[u8], class_id: u16, method_id: u16) -> Result<(), MethodError> {
    let Some(fields) = fields_before_table(class_id, method_id) else {
        return Ok(());
    };
    let mut at = 4;
    for field in fields {
        at += match field {
            Field::Short => 2,
            Field::Bits => 1,
            Field::ShortString => match payload.get(at) {
                Some(&length) => 1 + usize::from(length),
                None => return Ok(()),
            },
        };
    }
    if table_too_deep(payload, at) {
        return Err(MethodError::TooDeep(class_id, method_id));
    }
    Ok(())
}

pub fn decode_method(payload: &[u8]) -> Result<AMQPClass, MethodError> {
    let ids = |p: &[u8]| {
        if p.len() >= 4 {
            (
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            )
        } else {
            (0, 0)
        }
    };
    let (class_id, method_id) = ids(payload);
    check_method_table(payload, class_id, method_id)?;
    match parse_class(payload) {
        // Trailing bytes after a whole method are tolerated, as RabbitMQ does.
        Ok((_, class)) => Ok(class),
        Err(_) => {
            if known_method(class_id, method_id) {
                Err(MethodError::Syntax(class_id, method_id))
            } else {
                Err(MethodError::Unknown(class_id, method_id))
            }
        }
    }
}

fn known_method(class_id: u16, method_id: u16) -> bool {
    match class_id {
        10 => matches!(
            method_id,
            10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51 | 60 | 61 | 70 | 71
        ),
        20 => matches!(method_id, 10 | 11 | 20 | 21 | 40 | 41),
        30 => matches!(method_id, 10 | 11),
        40 => matches!(method_id, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 51),
        50 => matches!(method_id, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51),
        60 => matches!(
            method_id,
            10 | 11
                | 20
                | 21
                | 30
                | 31
                | 40
                | 50
                | 60
                | 70
                | 71
                | 72
                | 80
                | 90
                | 100
                | 110
                | 111
                | 120
        ),
        85 => matches!(method_id, 10 | 11),
        90 => matches!(method_id, 10 | 11 | 20 | 21 | 30 | 31),
        _ => false,
    }
}

/// Why a content header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ContentHeaderError {
    #[error("cannot decode the content header")]
    Malformed,
    #[error("the headers property is a {0}")]
    TooDeep(FieldTableError),
}

pub fn decode_content_header(payload: &[u8]) -> Result<AMQPContentHeader, ContentHeaderError> {
    if headers_too_deep(payload) {
        return Err(ContentHeaderError::TooDeep(FieldTableError::TooDeep));
    }
    amq_protocol::frame::parsing::parse_content_header(payload)
        .map(|(_, header)| header)
        .map_err(|_| ContentHeaderError::Malformed)
}

/// Whether a content header's `headers` property is nested too deep: class, weight and body
/// size (12 bytes), the property flags (bit 15 content-type, 14 content-encoding, 13 headers),
/// then the two short strings that precede the table when present.
fn headers_too_deep(payload: &[u8]) -> bool {
    let Some(&[high, low]) = payload.get(12..14) else {
        return false;
    };
    let flags = u16::from_be_bytes([high, low]);
    if flags & (1 << 13) == 0 {
        return false;
    }
    let mut at = 14;
    if flags & 1 != 0 {
        // More flag words follow (none are defined for class 60); skip them.
        while let Some(&[high, low]) = payload.get(at..at + 2) {
            at += 2;
            if u16::from_be_bytes([high, low]) & 1 == 0 {
                break;
            }
        }
    }
    for bit in [15, 14] {
        if flags & (1 << bit) != 0 {
            match payload.get(at) {
                Some(&length) => at += 1 + usize::from(length),
                None => return false,
            }
        }
    }
    table_too_deep(payload, at)
}

/// Appends an encoded frame to `out`.
pub fn encode_frame(out: &mut Vec<u8>, frame: &AMQPFrame) {
    match cookie_factory::gen_simple(gen_frame(frame), Vec::with_capacity(64)) {
        Ok(written) => out.extend_from_slice(&written),
        // Only a value out of the codec's range gets here (a >255-byte short string, say).
        Err(error) => tracing::error!(%error, "could not encode an AMQP frame"),
    }
}

pub fn method_frame(channel: u16, method: AMQPClass) -> Bytes {
    let mut out = Vec::with_capacity(64);
    encode_frame(&mut out, &AMQPFrame::Method(channel, method));
    Bytes::from(out)
}

/// A content-bearing method (deliver, get-ok, return) with its header and body frames, the body
/// split so that no frame exceeds `frame_max`.
pub fn encode_content(
    out: &mut Vec<u8>,
    channel: u16,
    method: AMQPClass,
    properties: basic::AMQPProperties,
    body: &[u8],
    frame_max: u32,
) {
    encode_frame(out, &AMQPFrame::Method(channel, method));
    encode_frame(
        out,
        &AMQPFrame::Header(
            channel,
            AMQPContentHeader {
                class_id: 60,
                body_size: body.len() as u64,
                properties,
            },
        ),
    );
    let chunk = (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1);
    for piece in body.chunks(chunk) {
        // Written by hand to avoid copying the body into a Vec for AMQPFrame::Body.
        out.reserve(piece.len() + FRAME_OVERHEAD);
        out.put_u8(FRAME_BODY);
        out.put_u16(channel);
        out.put_u32(piece.len() as u32);
        out.put_slice(piece);
        out.put_u8(FRAME_END);
    }
}

pub fn heartbeat_frame() -> Bytes {
    Bytes::from_static(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END])
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::{connection, exchange, queue};
    use amq_protocol::types::{AMQPValue, FieldTable};

    fn nested(depth: usize) -> FieldTable {
        let mut table = FieldTable::default();
        table.insert("leaf".into(), AMQPValue::Boolean(true));
        for _ in 1..depth {
            let mut outer = FieldTable::default();
            outer.insert("t".into(), AMQPValue::FieldTable(table));
            table = outer;
        }
        table
    }

    fn payload(method: AMQPClass) -> Vec<u8> {
        let frame = method_frame(1, method);
        frame[7..frame.len() - 1].to_vec()
    }

    fn methods(table: FieldTable) -> Vec<AMQPClass> {
        vec![
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: table.clone(),
                mechanism: "PLAIN".into(),
                response: "\0guest\0guest".into(),
                locale: "en_US".into(),
            })),
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: "ex".into(),
                kind: "topic".into(),
                durable: true,
                arguments: table.clone(),
                ..Default::default()
            })),
            AMQPClass::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
                destination: "d".into(),
                source: "s".into(),
                routing_key: "rk".into(),
                arguments: table.clone(),
                ..Default::default()
            })),
            AMQPClass::Exchange(exchange::AMQPMethod::Unbind(exchange::Unbind {
                destination: "d".into(),
                source: "s".into(),
                routing_key: "rk".into(),
                arguments: table.clone(),
                ..Default::default()
            })),
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "q".into(),
                arguments: table.clone(),
                ..Default::default()
            })),
            AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: "q".into(),
                exchange: "ex".into(),
                routing_key: "rk".into(),
                arguments: table.clone(),
                ..Default::default()
            })),
            AMQPClass::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
                queue: "q".into(),
                exchange: "ex".into(),
                routing_key: "rk".into(),
                arguments: table.clone(),
            })),
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: "q".into(),
                consumer_tag: "tag".into(),
                arguments: table,
                ..Default::default()
            })),
        ]
    }

    #[test]
    fn every_method_with_a_table_is_refused_when_nested_too_deep() {
        for method in methods(nested(FIELD_TABLE_DEPTH_MAX)) {
            let bytes = payload(method.clone());
            assert!(decode_method(&bytes).ok() == Some(method));
        }
        for method in methods(nested(FIELD_TABLE_DEPTH_MAX + 1)) {
            let (class_id, method_id) = (method.get_amqp_class_id(), method.get_amqp_method_id());
            let bytes = payload(method);
            assert!(
                matches!(decode_method(&bytes), Err(MethodError::TooDeep(c, m)) if (c, m) == (class_id, method_id)),
                "{class_id}.{method_id}"
            );
        }
    }

    #[test]
    fn content_headers_nested_too_deep_are_refused() {
        let header = |depth: usize| {
            let properties = basic::AMQPProperties::default()
                .with_content_type("text/plain".into())
                .with_content_encoding("gzip".into())
                .with_headers(nested(depth))
                .with_message_id("id".into());
            let mut out = Vec::new();
            encode_frame(
                &mut out,
                &AMQPFrame::Header(
                    1,
                    AMQPContentHeader {
                        class_id: 60,
                        body_size: 3,
                        properties,
                    },
                ),
            );
            out[7..out.len() - 1].to_vec()
        };
        assert!(decode_content_header(&header(FIELD_TABLE_DEPTH_MAX)).is_ok());
        assert!(matches!(
            decode_content_header(&header(FIELD_TABLE_DEPTH_MAX + 1)),
            Err(ContentHeaderError::TooDeep(_))
        ));
    }
}
