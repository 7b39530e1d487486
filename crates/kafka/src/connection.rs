//! One client connection: length-prefixed frames in, responses out, in request order (Kafka
//! processes one request per connection at a time, and clients rely on that ordering).

use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable};
use kafka_protocol::ResponseError;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;

use crate::api_versions::is_supported;
use crate::handlers;
use crate::RequestContext;

/// api key + api version + correlation id: the smallest possible request.
const REQUEST_HEADER_BYTES_MIN: usize = 8;

/// Why a connection is closed instead of answered.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("frame of {0} bytes is outside the accepted range")]
    FrameSize(i64),
    #[error("unsupported API key {api_key} version {api_version}")]
    Unsupported { api_key: i16, api_version: i16 },
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("could not encode the response: {0}")]
    Encode(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub async fn serve_connection(stream: TcpStream, peer: SocketAddr, mut context: RequestContext) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%peer, %error, "could not set TCP_NODELAY");
    }
    let (read_half, write_half) = stream.into_split();
    let mut reader = BufReader::with_capacity(256 * 1024, read_half);
    let mut writer = BufWriter::with_capacity(256 * 1024, write_half);
    tracing::debug!(%peer, "kafka connection opened");
    let result = async {
        loop {
            let size = match reader.read_i32().await {
                Ok(size) => size,
                Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(error) => return Err(ConnectionError::Io(error)),
            };
            if size < REQUEST_HEADER_BYTES_MIN as i32 || size as usize > context.config.request_bytes_max {
                return Err(ConnectionError::FrameSize(size as i64));
            }
            let mut frame = BytesMut::zeroed(size as usize);
            reader.read_exact(&mut frame).await?;
            if let Some(response) = handle_frame(&mut context, frame.freeze()).await? {
                writer.write_all(&response).await?;
                writer.flush().await?;
            }
        }
    }
    .await;
    match result {
        Ok(()) => tracing::debug!(%peer, "kafka connection closed by client"),
        Err(ConnectionError::Io(error)) => tracing::debug!(%peer, %error, "kafka connection I/O error"),
        Err(error) => tracing::warn!(%peer, %error, "closing kafka connection"),
    }
}

/// Decodes one request, runs it and encodes the framed response (`None` for acks=0 produce).
async fn handle_frame(context: &mut RequestContext, mut frame: Bytes) -> Result<Option<Bytes>, ConnectionError> {
    let api_key_code = (&frame[0..2]).get_i16();
    let api_version = (&frame[2..4]).get_i16();
    let correlation_id = (&frame[4..8]).get_i32();

    if !is_supported(api_key_code, api_version) {
        if api_key_code == ApiKey::ApiVersions as i16 {
            // KIP-511: answer in v0 format so the client can retry at a version we speak.
            let response = ResponseKind::ApiVersions(api_versions_response(ResponseError::UnsupportedVersion.code()));
            return encode_response(correlation_id, ApiKey::ApiVersions, 0, &response).map(Some);
        }
        return Err(ConnectionError::Unsupported { api_key: api_key_code, api_version });
    }
    // Supported implies the key is known to the codec.
    let api_key = ApiKey::try_from(api_key_code)
        .map_err(|_| ConnectionError::Unsupported { api_key: api_key_code, api_version })?;
    let header = RequestHeader::decode(&mut frame, api_key.request_header_version(api_version))
        .map_err(|e| ConnectionError::Malformed(e.to_string()))?;
    if let Some(client_id) = &header.client_id {
        if context.client_id.as_str() != client_id.as_str() {
            context.client_id = client_id.to_string();
        }
    }
    let request = RequestKind::decode(api_key, &mut frame, api_version)
        .map_err(|e| ConnectionError::Malformed(format!("{api_key:?} v{api_version}: {e}")))?;
    if frame.has_remaining() {
        tracing::debug!(?api_key, api_version, trailing = frame.remaining(), "request has trailing bytes");
    }
    let Some(response) = dispatch(context, api_version, request).await else {
        return Ok(None);
    };
    encode_response(correlation_id, api_key, api_version, &response).map(Some)
}

fn encode_response(
    correlation_id: i32,
    api_key: ApiKey,
    api_version: i16,
    response: &ResponseKind,
) -> Result<Bytes, ConnectionError> {
    let mut buffer = BytesMut::with_capacity(256);
    buffer.put_i32(0); // size, patched below
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header
        .encode(&mut buffer, api_key.response_header_version(api_version))
        .map_err(|e| ConnectionError::Encode(e.to_string()))?;
    response
        .encode(&mut buffer, api_version)
        .map_err(|e| ConnectionError::Encode(format!("{api_key:?} v{api_version}: {e}")))?;
    let size = (buffer.len() - 4) as i32;
    buffer[0..4].copy_from_slice(&size.to_be_bytes());
    Ok(buffer.freeze())
}

pub(crate) fn api_versions_response(error_code: i16) -> ApiVersionsResponse {
    let api_keys = crate::supported_api_versions()
        .map(|(api_key, min_version, max_version)| {
            kafka_protocol::messages::api_versions_response::ApiVersion::default()
                .with_api_key(api_key)
                .with_min_version(min_version)
                .with_max_version(max_version)
        })
        .collect();
    ApiVersionsResponse::default().with_error_code(error_code).with_api_keys(api_keys)
}

/// Routes a decoded request to its handler. `None` means "send no response" (acks=0 produce).
async fn dispatch(context: &RequestContext, version: i16, request: RequestKind) -> Option<ResponseKind> {
    use handlers::*;
    let response = match request {
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(api_versions_response(0)),
        RequestKind::Metadata(r) => ResponseKind::Metadata(metadata::metadata(context, version, r).await),
        RequestKind::Produce(r) => return produce::produce(context, version, r).await.map(ResponseKind::Produce),
        RequestKind::Fetch(r) => ResponseKind::Fetch(fetch::fetch(context, version, r).await),
        RequestKind::ListOffsets(r) => ResponseKind::ListOffsets(list_offsets::list_offsets(context, version, r).await),
        RequestKind::CreateTopics(r) => ResponseKind::CreateTopics(topics::create_topics(context, version, r).await),
        RequestKind::DeleteTopics(r) => ResponseKind::DeleteTopics(topics::delete_topics(context, version, r).await),
        RequestKind::CreatePartitions(r) => {
            ResponseKind::CreatePartitions(topics::create_partitions(context, version, r).await)
        }
        RequestKind::DescribeConfigs(r) => {
            ResponseKind::DescribeConfigs(configs::describe_configs(context, version, r).await)
        }
        RequestKind::AlterConfigs(r) => ResponseKind::AlterConfigs(configs::alter_configs(context, version, r).await),
        RequestKind::IncrementalAlterConfigs(r) => {
            ResponseKind::IncrementalAlterConfigs(configs::incremental_alter_configs(context, version, r).await)
        }
        RequestKind::InitProducerId(r) => {
            ResponseKind::InitProducerId(producer_id::init_producer_id(context, version, r).await)
        }
        RequestKind::FindCoordinator(r) => {
            ResponseKind::FindCoordinator(groups::find_coordinator(context, version, r).await)
        }
        RequestKind::JoinGroup(r) => ResponseKind::JoinGroup(groups::join_group(context, version, r).await),
        RequestKind::SyncGroup(r) => ResponseKind::SyncGroup(groups::sync_group(context, version, r).await),
        RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(groups::heartbeat(context, version, r).await),
        RequestKind::LeaveGroup(r) => ResponseKind::LeaveGroup(groups::leave_group(context, version, r).await),
        RequestKind::OffsetCommit(r) => ResponseKind::OffsetCommit(groups::offset_commit(context, version, r).await),
        RequestKind::OffsetFetch(r) => ResponseKind::OffsetFetch(groups::offset_fetch(context, version, r).await),
        RequestKind::ListGroups(r) => ResponseKind::ListGroups(groups::list_groups(context, version, r).await),
        RequestKind::DescribeGroups(r) => {
            ResponseKind::DescribeGroups(groups::describe_groups(context, version, r).await)
        }
        RequestKind::DeleteGroups(r) => ResponseKind::DeleteGroups(groups::delete_groups(context, version, r).await),
        // is_supported() admitted only the APIs above.
        _ => return None,
    };
    Some(response)
}
