//! Frames on the wire. The method and property codecs are amq-protocol's; the framing around
//! them is read here by hand because the size must be checked against the negotiated frame_max
//! before the payload is read (amq-protocol's frame parser would buffer whatever length a
//! client claims).

use amq_protocol::frame::{gen_frame, AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, parse_class, AMQPClass};
use bytes::{BufMut, Bytes, BytesMut};
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
    match parse_class(payload) {
        // Trailing bytes after a whole method are tolerated, as RabbitMQ does.
        Ok((_, class)) => Ok(class),
        Err(_) => {
            let (class_id, method_id) = ids(payload);
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

pub fn decode_content_header(payload: &[u8]) -> Option<AMQPContentHeader> {
    amq_protocol::frame::parsing::parse_content_header(payload)
        .ok()
        .map(|(_, header)| header)
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
