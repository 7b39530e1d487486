//! The wire format between nodes, sans IO: what a frame holds and how it is encoded.
//!
//! A frame is a 4-byte big-endian length, a bincode (1.x) header and the body, raw: tokio-util's
//! `LengthDelimitedCodec` does the framing and enforces the size limit before a byte of the
//! payload is buffered. The body (a group's encoded request or response, an AppendEntries'
//! batches among them) is not serialized again: the sender writes it from its own buffer and
//! the receiver slices it out of the frame, so replicated data is not copied on its way
//! through the transport (it was copied three times per send before). A body may be sent in
//! parts (an AppendEntries' record batches follow its encoded request, see `network`); the
//! receiver sees one body. bincode because every openraft message already derives serde, both
//! ends run the same code (no schema evolution to negotiate yet), and it is compact and fast;
//! tonic would add protobuf codegen and one HTTP/2 stream per call, and defeat the write
//! coalescing below. The bincode decoder is bounded by the frame size, so a forged length
//! inside the payload cannot make it allocate more than the frame it came in.
//!
//! Every request names its Raft group; its body is the group's own bincode-encoded request,
//! decoded only by the group's dispatcher, so the connection code needs no type parameter.

use bincode::Options;
use bytes::{Bytes, BytesMut};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

use crate::{GroupId, NodeId};

/// Which RPC a request carries; the body's type follows from it and the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RpcKind {
    AppendEntries,
    Vote,
    InstallSnapshot,
    /// A client write forwarded to the group's leader (the metadata group's proposals).
    ClientWrite,
    /// A node asks to join the metadata group. Also accepted as the first frame of a one-shot
    /// connection from a node that is not a peer yet (see [`RpcKind::is_open`]).
    Join,
    /// A membership change of the metadata group (a join, a removal) forwarded by a member
    /// to the group's leader, which alone performs it.
    MembershipChange,
    /// A follower asks the metadata leader for a read index: the leader confirms its
    /// leadership with a majority and answers its commit index, which the follower then waits
    /// to apply (a linearizable read served by a follower).
    ReadIndex,
    /// The transaction coordinator asks a partition's leader to write a transaction marker
    /// (Kafka's WriteTxnMarkers between brokers); sent to [`crate::GroupId::Broker`].
    WriteTransactionMarker,
    /// A share group's coordinator asks a node to load the group's share partitions again
    /// from their stored states (an admin tool changed them); sent to
    /// [`crate::GroupId::Broker`].
    ForgetSharePartitions,
}

impl RpcKind {
    /// Whether a node that is not (yet) a peer may send this request, on a one-shot
    /// connection: only asking to join, which the leader then validates.
    pub fn is_open(self) -> bool {
        self == RpcKind::Join
    }
}

/// Why a node could not even hand a request to its group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RemoteFailure {
    #[error("the peer hosts no group {0:?}")]
    UnknownGroup(GroupId),
    #[error("the peer could not decode the request: {0}")]
    BadRequest(String),
    #[error("group does not serve {0:?}")]
    Unsupported(RpcKind),
    #[error("the peer could not encode its response: {0}")]
    BadResponse(String),
}

/// One frame's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireMessage {
    /// First frame of a connection, from the dialing node.
    Hello { node_id: NodeId },
    Request {
        request_id: u64,
        group: GroupId,
        kind: RpcKind,
        body: Bytes,
    },
    Response {
        request_id: u64,
        result: Result<Bytes, RemoteFailure>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("encoding failed: {0}")]
    Encode(String),
    #[error("undecodable payload: {0}")]
    Decode(String),
    #[error("frame of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
}

/// The bincode options both ends use; the limit bounds what a decoder may allocate.
fn wire_options(limit_bytes: usize) -> impl Options {
    bincode::DefaultOptions::new().with_limit(limit_bytes as u64)
}

/// Encodes any serde value the way bodies are encoded (bounded by `limit_bytes`).
pub fn encode_body<T: Serialize + ?Sized>(
    value: &T,
    limit_bytes: usize,
) -> Result<Bytes, FrameError> {
    wire_options(limit_bytes)
        .serialize(value)
        .map(Bytes::from)
        .map_err(|e| match *e {
            bincode::ErrorKind::SizeLimit => FrameError::TooLarge {
                size: bincode::DefaultOptions::new()
                    .serialized_size(value)
                    .map_or(usize::MAX, |n| n as usize),
                limit: limit_bytes,
            },
            other => FrameError::Encode(other.to_string()),
        })
}

pub fn decode_body<T: DeserializeOwned>(body: &[u8], limit_bytes: usize) -> Result<T, FrameError> {
    wire_options(limit_bytes)
        .deserialize(body)
        .map_err(|e| FrameError::Decode(e.to_string()))
}

/// Decodes a value from the start of `body`; returns it and the bytes it took (what follows
/// is raw, e.g. the record batches behind an AppendEntries).
pub fn decode_body_prefix<T: DeserializeOwned>(
    body: &[u8],
    limit_bytes: usize,
) -> Result<(T, usize), FrameError> {
    let mut rest = body;
    let value = wire_options(limit_bytes)
        .deserialize_from(&mut rest)
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    Ok((value, body.len() - rest.len()))
}

/// The codec both ends frame with.
pub fn codec(frame_bytes_max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(frame_bytes_max)
        .new_codec()
}

/// What precedes a frame's body. A [`WireMessage`] without its body: the body is the rest of
/// the frame (empty for a hello and a failed response).
#[derive(Debug, Serialize, Deserialize)]
enum WireHeader {
    Hello {
        node_id: NodeId,
    },
    Request {
        request_id: u64,
        group: GroupId,
        kind: RpcKind,
    },
    Response {
        request_id: u64,
        failure: Option<RemoteFailure>,
    },
}

/// A frame ready to be written: `head` (length prefix and header), then the body's parts as
/// they are, one after another (an AppendEntries' record batches are parts of their own, so
/// they are never copied into the encoded request).
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    pub head: Bytes,
    pub body: Vec<Bytes>,
}

impl EncodedFrame {
    pub fn len(&self) -> usize {
        self.head.len() + self.body_len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn body_len(&self) -> usize {
        self.body.iter().map(Bytes::len).sum()
    }

    /// The whole frame in one buffer (a copy of the body: for one-off frames).
    pub fn to_bytes(&self) -> Bytes {
        let mut frame = BytesMut::with_capacity(self.len());
        frame.extend_from_slice(&self.head);
        for part in &self.body {
            frame.extend_from_slice(part);
        }
        frame.freeze()
    }
}

/// Encodes `message` as a frame; the body is shared, not copied.
pub fn encode_frame(
    message: &WireMessage,
    frame_bytes_max: usize,
) -> Result<EncodedFrame, FrameError> {
    let (header, body) = match message {
        WireMessage::Hello { node_id } => (WireHeader::Hello { node_id: *node_id }, Vec::new()),
        WireMessage::Request {
            request_id,
            group,
            kind,
            body,
        } => (
            WireHeader::Request {
                request_id: *request_id,
                group: *group,
                kind: *kind,
            },
            vec![body.clone()],
        ),
        WireMessage::Response { request_id, result } => match result {
            Ok(body) => (
                WireHeader::Response {
                    request_id: *request_id,
                    failure: None,
                },
                vec![body.clone()],
            ),
            Err(failure) => (
                WireHeader::Response {
                    request_id: *request_id,
                    failure: Some(failure.clone()),
                },
                Vec::new(),
            ),
        },
    };
    encode_parts(&header, body, frame_bytes_max)
}

/// Encodes a request whose body is `body`'s parts in order; the receiver sees them as one
/// body. The parts are shared, not copied.
pub fn encode_request(
    request_id: u64,
    group: GroupId,
    kind: RpcKind,
    body: Vec<Bytes>,
    frame_bytes_max: usize,
) -> Result<EncodedFrame, FrameError> {
    let header = WireHeader::Request {
        request_id,
        group,
        kind,
    };
    encode_parts(&header, body, frame_bytes_max)
}

fn encode_parts(
    header: &WireHeader,
    body: Vec<Bytes>,
    frame_bytes_max: usize,
) -> Result<EncodedFrame, FrameError> {
    // The header goes straight behind a length placeholder, filled in once its size is known.
    let mut head = vec![0u8; 4];
    wire_options(frame_bytes_max)
        .serialize_into(&mut head, header)
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    let mut frame = EncodedFrame {
        head: Bytes::new(),
        body,
    };
    let size = head.len() - 4 + frame.body_len();
    if size > frame_bytes_max {
        return Err(FrameError::TooLarge {
            size,
            limit: frame_bytes_max,
        });
    }
    let length = u32::try_from(size).map_err(|_| FrameError::TooLarge {
        size,
        limit: u32::MAX as usize,
    })?;
    head[..4].copy_from_slice(&length.to_be_bytes());
    frame.head = Bytes::from(head);
    Ok(frame)
}

/// Decodes one frame's payload (the codec has already stripped and checked the length); the
/// body is a slice of `payload`.
pub fn decode_message(payload: Bytes, frame_bytes_max: usize) -> Result<WireMessage, FrameError> {
    let mut rest: &[u8] = &payload;
    let header: WireHeader = wire_options(frame_bytes_max)
        .deserialize_from(&mut rest)
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    let body = payload.slice(payload.len() - rest.len()..);
    let bodiless = |message: WireMessage| {
        if body.is_empty() {
            Ok(message)
        } else {
            Err(FrameError::Decode(format!(
                "{} bytes after a frame that has no body",
                body.len()
            )))
        }
    };
    match header {
        WireHeader::Hello { node_id } => bodiless(WireMessage::Hello { node_id }),
        WireHeader::Request {
            request_id,
            group,
            kind,
        } => Ok(WireMessage::Request {
            request_id,
            group,
            kind,
            body,
        }),
        WireHeader::Response {
            request_id,
            failure: None,
        } => Ok(WireMessage::Response {
            request_id,
            result: Ok(body),
        }),
        WireHeader::Response {
            request_id,
            failure: Some(failure),
        } => bodiless(WireMessage::Response {
            request_id,
            result: Err(failure),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::codec::Decoder;

    #[test]
    fn request_round_trips_through_the_codec() {
        let message = WireMessage::Request {
            request_id: 7,
            group: GroupId::Partition {
                topic_id: uuid::Uuid::from_u128(5),
                partition: 3,
            },
            kind: RpcKind::Vote,
            body: Bytes::from_static(b"abc"),
        };
        let frame = encode_frame(&message, 1024).unwrap();
        let mut buf = BytesMut::from(&frame.to_bytes()[..]);
        let payload = codec(1024).decode(&mut buf).unwrap().unwrap();
        assert_eq!(decode_message(payload.freeze(), 1024).unwrap(), message);
    }

    #[test]
    fn every_message_round_trips_and_the_body_is_not_copied() {
        let body = Bytes::from(vec![7u8; 1000]);
        let messages = [
            WireMessage::Hello { node_id: 3 },
            WireMessage::Response {
                request_id: 9,
                result: Ok(body.clone()),
            },
            WireMessage::Response {
                request_id: 10,
                result: Err(RemoteFailure::Unsupported(RpcKind::Join)),
            },
        ];
        for message in messages {
            let frame = encode_frame(&message, 4096).unwrap();
            let mut buf = BytesMut::from(&frame.to_bytes()[..]);
            let payload = codec(4096).decode(&mut buf).unwrap().unwrap();
            assert_eq!(decode_message(payload.freeze(), 4096).unwrap(), message);
        }
        let frame = encode_frame(
            &WireMessage::Response {
                request_id: 1,
                result: Ok(body.clone()),
            },
            4096,
        )
        .unwrap();
        assert_eq!(frame.body[0].as_ptr(), body.as_ptr());
    }

    #[test]
    fn a_request_in_parts_arrives_as_one_body_and_the_parts_are_not_copied() {
        let group = GroupId::Partition {
            topic_id: uuid::Uuid::from_u128(1),
            partition: 0,
        };
        let parts = vec![
            Bytes::from_static(b"head"),
            Bytes::from(vec![1u8; 100]),
            Bytes::new(),
            Bytes::from(vec![2u8; 50]),
        ];
        let frame = encode_request(4, group, RpcKind::AppendEntries, parts.clone(), 1024).unwrap();
        assert_eq!(frame.body[1].as_ptr(), parts[1].as_ptr());
        let mut buf = BytesMut::from(&frame.to_bytes()[..]);
        let payload = codec(1024).decode(&mut buf).unwrap().unwrap();
        let WireMessage::Request { body, .. } = decode_message(payload.freeze(), 1024).unwrap()
        else {
            panic!("not a request");
        };
        assert_eq!(body, parts.concat());
        // The limit counts every part.
        assert!(encode_request(4, group, RpcKind::AppendEntries, parts, 150).is_err());
    }

    #[test]
    fn a_prefix_decodes_and_reports_its_length() {
        let mut body = encode_body(&(7u32, "seven"), 64).unwrap().to_vec();
        let encoded = body.len();
        body.extend_from_slice(b"raw");
        let ((number, word), taken): ((u32, String), usize) =
            decode_body_prefix(&body, 64).unwrap();
        assert_eq!((number, word.as_str(), taken), (7, "seven", encoded));
        assert!(decode_body_prefix::<(u32, String)>(&body[..3], 64).is_err());
    }

    #[test]
    fn bytes_after_a_bodiless_frame_are_refused() {
        let frame = encode_frame(&WireMessage::Hello { node_id: 1 }, 64).unwrap();
        let mut payload = frame.head[4..].to_vec();
        payload.push(0);
        assert!(decode_message(Bytes::from(payload), 64).is_err());
    }

    #[test]
    fn oversized_frame_is_refused_before_buffering() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3][..]);
        assert!(codec(1024).decode(&mut buf).is_err());
    }

    #[test]
    fn a_forged_header_does_not_allocate_past_the_limit() {
        // A failed Response whose failure text claims u64::MAX bytes.
        let mut payload = vec![2u8, 1, 1, 1];
        payload.extend_from_slice(&[0xfd; 1]);
        payload.extend_from_slice(&[0xff; 8]);
        assert!(decode_message(Bytes::from(payload), 64).is_err());
    }

    #[test]
    fn encoding_refuses_a_frame_over_the_limit() {
        let message = WireMessage::Response {
            request_id: 1,
            result: Ok(Bytes::from(vec![0u8; 100])),
        };
        assert!(encode_frame(&message, 64).is_err());
    }
}
