//! The wire format between nodes, sans IO: what a frame holds and how it is encoded.
//!
//! A frame is a 4-byte big-endian length followed by a bincode (1.x) payload: tokio-util's
//! `LengthDelimitedCodec` does the framing and enforces the size limit before a byte of the
//! payload is buffered. bincode because every openraft message already derives serde, both
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
use tokio_util::codec::{Encoder, LengthDelimitedCodec};

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

/// The codec both ends frame with.
pub fn codec(frame_bytes_max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(frame_bytes_max)
        .new_codec()
}

/// Encodes `message` as a complete frame (length prefix included), ready to be appended to a
/// connection's write buffer.
pub fn encode_frame(message: &WireMessage, frame_bytes_max: usize) -> Result<Bytes, FrameError> {
    let payload = encode_body(message, frame_bytes_max)?;
    if payload.len() > frame_bytes_max {
        return Err(FrameError::TooLarge {
            size: payload.len(),
            limit: frame_bytes_max,
        });
    }
    let mut frame = BytesMut::with_capacity(4 + payload.len());
    codec(frame_bytes_max)
        .encode(payload, &mut frame)
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    Ok(frame.freeze())
}

/// Decodes one frame's payload (the codec has already stripped and checked the length).
pub fn decode_message(payload: &[u8], frame_bytes_max: usize) -> Result<WireMessage, FrameError> {
    decode_body(payload, frame_bytes_max)
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
        let mut buf = BytesMut::from(&frame[..]);
        let payload = codec(1024).decode(&mut buf).unwrap().unwrap();
        assert_eq!(decode_message(&payload, 1024).unwrap(), message);
    }

    #[test]
    fn oversized_frame_is_refused_before_buffering() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3][..]);
        assert!(codec(1024).decode(&mut buf).is_err());
    }

    #[test]
    fn forged_inner_length_does_not_allocate_past_the_limit() {
        // A Request whose body claims u64::MAX bytes.
        let mut payload = encode_body(&WireMessage::Hello { node_id: 1 }, 64)
            .unwrap()
            .to_vec();
        payload[0] = 1; // variant Request
        payload.truncate(1);
        payload.extend_from_slice(&[0xff; 32]);
        assert!(decode_message(&payload, 64).is_err());
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
