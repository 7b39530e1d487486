//! HTTP produce in cluster mode when a partition's leader is another node: the batch goes to
//! that node's Kafka listener as a Kafka Produce (acks=all), exactly as a Kafka client would
//! send it, so the leader applies the checks it applies to every client (leadership,
//! `min.insync.replicas`, sizes) and answers with Kafka's error codes.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Produce v9: the last version without topic ids, which every Sluice node answers.
const PRODUCE_VERSION: i16 = 9;
/// A response larger than this is not a Produce answer to one batch.
const RESPONSE_BYTES_MAX: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Nothing was sent: asking again cannot duplicate the batch.
    #[error("cannot reach the leader at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    /// Sent, but the answer was lost: the batch may or may not be stored.
    #[error("lost the connection to the leader at {addr} before its answer: {reason}")]
    AnswerLost { addr: String, reason: String },
    #[error("the leader at {addr} answered something other than a produce response: {reason}")]
    BadAnswer { addr: String, reason: String },
    /// The leader refused the batch with this Kafka error.
    #[error("the leader refused the batch: {error}{}", message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Refused {
        error: ResponseError,
        message: Option<String>,
    },
}

impl ForwardError {
    /// Refused before anything was stored, because leadership moved or is moving: asking
    /// again (after a fresh look at the leader) cannot duplicate the batch.
    pub fn is_retriable(&self) -> bool {
        match self {
            ForwardError::Unreachable { .. } => true,
            ForwardError::AnswerLost { .. } | ForwardError::BadAnswer { .. } => false,
            ForwardError::Refused { error, .. } => matches!(
                error,
                ResponseError::NotLeaderOrFollower
                    | ResponseError::LeaderNotAvailable
                    | ResponseError::NotEnoughReplicas
            ),
        }
    }
}

/// Sends `records` (whole record batches) to `partition` of `topic` at the Kafka listener
/// `addr` with acks=all; the base offset the leader gave them.
pub async fn produce(
    addr: &str,
    topic: &str,
    partition: i32,
    records: Bytes,
    timeout: Duration,
) -> Result<i64, ForwardError> {
    let unreachable = |reason: String| ForwardError::Unreachable {
        addr: addr.to_string(),
        reason,
    };
    let lost = |reason: String| ForwardError::AnswerLost {
        addr: addr.to_string(),
        reason,
    };
    let bad = |reason: String| ForwardError::BadAnswer {
        addr: addr.to_string(),
        reason,
    };
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX))
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records))])]);
    let mut body = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(PRODUCE_VERSION)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("sluice-http")))
        .encode(
            &mut body,
            ApiKey::Produce.request_header_version(PRODUCE_VERSION),
        )
        .and_then(|()| request.encode(&mut body, PRODUCE_VERSION))
        .map_err(|e| bad(format!("encoding the request: {e}")))?;
    let length = i32::try_from(body.len()).map_err(|_| bad("request too large".into()))?;

    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let mut frame = BytesMut::with_capacity(4 + body.len());
        frame.put_i32(length);
        frame.extend_from_slice(&body);
        stream
            .write_all(&frame)
            .await
            .map_err(|e| lost(e.to_string()))?;
        let size = stream.read_i32().await.map_err(|e| lost(e.to_string()))?;
        let size = usize::try_from(size)
            .ok()
            .filter(|s| *s <= RESPONSE_BYTES_MAX)
            .ok_or_else(|| bad(format!("a response of {size} bytes")))?;
        let mut answer = vec![0u8; size];
        stream
            .read_exact(&mut answer)
            .await
            .map_err(|e| lost(e.to_string()))?;
        Ok::<_, ForwardError>(Bytes::from(answer))
    };
    // The leader waits up to `timeout` for the commit; the connection gets a little more.
    let mut answer = tokio::time::timeout(timeout + Duration::from_secs(1), exchange)
        .await
        .map_err(|_| lost(format!("no answer within {timeout:?}")))??;
    ResponseHeader::decode(
        &mut answer,
        ApiKey::Produce.response_header_version(PRODUCE_VERSION),
    )
    .map_err(|e| bad(e.to_string()))?;
    let response =
        ProduceResponse::decode(&mut answer, PRODUCE_VERSION).map_err(|e| bad(e.to_string()))?;
    if answer.has_remaining() {
        return Err(bad(format!(
            "{} bytes after the response",
            answer.remaining()
        )));
    }
    let partition_response = response
        .responses
        .iter()
        .flat_map(|t| t.partition_responses.iter())
        .find(|p| p.index == partition)
        .ok_or_else(|| bad(format!("no answer for partition {partition}")))?;
    match ResponseError::try_from_code(partition_response.error_code) {
        None => Ok(partition_response.base_offset),
        Some(error) => Err(ForwardError::Refused {
            error,
            message: partition_response
                .error_message
                .as_ref()
                .map(|m| m.to_string()),
        }),
    }
}
