//! Requests that another node of a cluster must answer: a produce for a partition it leads, an
//! offset lookup on a partition leader, an offset commit or group deletion on the group
//! coordinator. Each goes to that node's Kafka listener as the Kafka request a client or
//! Kafka's own admin tools would send, so the node applies the checks it applies to every
//! client (leadership, `min.insync.replicas`, sizes, group membership) and answers with
//! Kafka's error codes.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    BrokerId, ConsumerGroupDescribeRequest, DeleteGroupsRequest, DescribeGroupsRequest, GroupId,
    ListOffsetsRequest, OffsetCommitRequest, ProduceRequest, RequestHeader, ResponseHeader,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::ResponseError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Produce v9: the last version without topic ids, which every Sluice node answers.
const PRODUCE_VERSION: i16 = 9;
/// ListOffsets v7: timestamps, leader epochs and MAX_TIMESTAMP's version range.
const LIST_OFFSETS_VERSION: i16 = 7;
/// OffsetCommit v8: the last version with topic names only.
const OFFSET_COMMIT_VERSION: i16 = 8;
const DELETE_GROUPS_VERSION: i16 = 2;
const DESCRIBE_GROUPS_VERSION: i16 = 5;
const CONSUMER_GROUP_DESCRIBE_VERSION: i16 = 0;
/// A response larger than this is not an answer to one of these small requests.
const RESPONSE_BYTES_MAX: usize = 1 << 20;
/// How long an offset lookup, commit or group deletion may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// ListOffsets' special timestamps.
pub const EARLIEST_TIMESTAMP: i64 = -2;
pub const LATEST_TIMESTAMP: i64 = -1;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Nothing was sent: asking again cannot duplicate the request.
    #[error("cannot reach the node at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    /// Sent, but the answer was lost: the request may or may not have taken effect.
    #[error("lost the connection to the node at {addr} before its answer: {reason}")]
    AnswerLost { addr: String, reason: String },
    #[error("the node at {addr} answered something other than the expected response: {reason}")]
    BadAnswer { addr: String, reason: String },
    /// The node refused the request with this Kafka error.
    #[error("the node refused the request: {error}{}", message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
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
                    | ResponseError::NotCoordinator
                    | ResponseError::CoordinatorNotAvailable
                    | ResponseError::CoordinatorLoadInProgress
            ),
        }
    }

    fn refused(code: i16, message: Option<&StrBytes>) -> Result<(), ForwardError> {
        match ResponseError::try_from_code(code) {
            None => Ok(()),
            Some(error) => Err(ForwardError::Refused {
                error,
                message: message.map(|m| m.to_string()),
            }),
        }
    }
}

/// Sends `request` to the Kafka listener `addr` on a connection of its own and decodes the
/// answer; `timeout` bounds the whole exchange.
async fn exchange<R: Request>(
    addr: &str,
    version: i16,
    request: &R,
    timeout: Duration,
) -> Result<R::Response, ForwardError> {
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
    let mut body = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("sluice-http")))
        .encode(&mut body, R::header_version(version))
        .and_then(|()| request.encode(&mut body, version))
        .map_err(|e| bad(format!("encoding the request: {e}")))?;
    let length = i32::try_from(body.len()).map_err(|_| bad("request too large".into()))?;

    let round_trip = async {
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
    // The node waits up to `timeout` (e.g. for a commit); the connection gets a little more.
    let mut answer = tokio::time::timeout(timeout + Duration::from_secs(1), round_trip)
        .await
        .map_err(|_| lost(format!("no answer within {timeout:?}")))??;
    ResponseHeader::decode(&mut answer, R::Response::header_version(version))
        .map_err(|e| bad(e.to_string()))?;
    let response = R::Response::decode(&mut answer, version).map_err(|e| bad(e.to_string()))?;
    if answer.has_remaining() {
        return Err(bad(format!(
            "{} bytes after the response",
            answer.remaining()
        )));
    }
    Ok(response)
}

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

fn group_id(group: &str) -> GroupId {
    GroupId(StrBytes::from_string(group.to_string()))
}

fn missing_group(addr: &str, group: &str) -> ForwardError {
    ForwardError::BadAnswer {
        addr: addr.to_string(),
        reason: format!("no answer for group '{group}'"),
    }
}

fn missing_partition(addr: &str, partition: i32) -> ForwardError {
    ForwardError::BadAnswer {
        addr: addr.to_string(),
        reason: format!("no answer for partition {partition}"),
    }
}

/// Sends `records` (whole record batches) to `partition` of `topic` at its leader's Kafka
/// listener `addr` with acks=all; the base offset the leader gave them.
pub async fn produce(
    addr: &str,
    topic: &str,
    partition: i32,
    records: Bytes,
    timeout: Duration,
) -> Result<i64, ForwardError> {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX))
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records))])]);
    let response = exchange(addr, PRODUCE_VERSION, &request, timeout).await?;
    let answer = response
        .responses
        .iter()
        .flat_map(|t| t.partition_responses.iter())
        .find(|p| p.index == partition)
        .ok_or_else(|| missing_partition(addr, partition))?;
    ForwardError::refused(answer.error_code, answer.error_message.as_ref())?;
    Ok(answer.base_offset)
}

/// ListOffsets on the partition's leader at `addr` (read_uncommitted, so `LATEST_TIMESTAMP`
/// gives the high watermark): the first offset whose timestamp is at least `timestamp`, or
/// `None` when no record is that recent.
pub async fn list_offset(
    addr: &str,
    topic: &str,
    partition: i32,
    timestamp: i64,
) -> Result<Option<i64>, ForwardError> {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_isolation_level(0)
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_current_leader_epoch(-1)
                .with_timestamp(timestamp)])]);
    let response = exchange(addr, LIST_OFFSETS_VERSION, &request, ADMIN_TIMEOUT).await?;
    let answer = response
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .find(|p| p.partition_index == partition)
        .ok_or_else(|| missing_partition(addr, partition))?;
    ForwardError::refused(answer.error_code, None)?;
    Ok((answer.offset >= 0).then_some(answer.offset))
}

/// An admin OffsetCommit (no member, generation -1, as `kafka-consumer-groups
/// --reset-offsets` sends it) to the group coordinator at `addr`, which refuses it while the
/// group has members. The first partition's refusal, if any.
pub async fn commit_offsets(
    addr: &str,
    group_id: &str,
    offsets: &[(String, i32, i64)],
) -> Result<(), ForwardError> {
    let mut topics: Vec<OffsetCommitRequestTopic> = Vec::new();
    for (topic, partition, offset) in offsets {
        let entry = OffsetCommitRequestPartition::default()
            .with_partition_index(*partition)
            .with_committed_offset(*offset)
            .with_committed_leader_epoch(-1)
            .with_committed_metadata(Some(StrBytes::from_static_str("")));
        match topics.iter_mut().find(|t| t.name.0.as_str() == topic) {
            Some(existing) => existing.partitions.push(entry),
            None => topics.push(
                OffsetCommitRequestTopic::default()
                    .with_name(topic_name(topic))
                    .with_partitions(vec![entry]),
            ),
        }
    }
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group_id.to_string())))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(StrBytes::from_static_str(""))
        .with_topics(topics);
    let response = exchange(addr, OFFSET_COMMIT_VERSION, &request, ADMIN_TIMEOUT).await?;
    for partition in response.topics.iter().flat_map(|t| t.partitions.iter()) {
        ForwardError::refused(partition.error_code, None)?;
    }
    Ok(())
}

/// A group's state and member count as its coordinator at `addr` describes it.
pub async fn describe_group(addr: &str, group_id: &str) -> Result<(String, usize), ForwardError> {
    let request = DescribeGroupsRequest::default().with_groups(vec![self::group_id(group_id)]);
    let response = exchange(addr, DESCRIBE_GROUPS_VERSION, &request, ADMIN_TIMEOUT).await?;
    let group = response
        .groups
        .iter()
        .find(|g| g.group_id.0.as_str() == group_id)
        .ok_or_else(|| missing_group(addr, group_id))?;
    ForwardError::refused(group.error_code, group.error_message.as_ref())?;
    if group.group_state.as_str() != "Dead" {
        return Ok((group.group_state.to_string(), group.members.len()));
    }
    // DescribeGroups knows only classic groups: a consumer-protocol group (KIP-848) is
    // described by ConsumerGroupDescribe.
    let request =
        ConsumerGroupDescribeRequest::default().with_group_ids(vec![self::group_id(group_id)]);
    let response = exchange(
        addr,
        CONSUMER_GROUP_DESCRIBE_VERSION,
        &request,
        ADMIN_TIMEOUT,
    )
    .await?;
    match response
        .groups
        .iter()
        .find(|g| g.group_id.0.as_str() == group_id)
    {
        Some(consumer_group) if consumer_group.error_code == 0 => Ok((
            consumer_group.group_state.to_string(),
            consumer_group.members.len(),
        )),
        _ => Ok((group.group_state.to_string(), group.members.len())),
    }
}

/// DeleteGroups for one group at its coordinator `addr`.
pub async fn delete_group(addr: &str, group_id: &str) -> Result<(), ForwardError> {
    let request = DeleteGroupsRequest::default().with_groups_names(vec![self::group_id(group_id)]);
    let response = exchange(addr, DELETE_GROUPS_VERSION, &request, ADMIN_TIMEOUT).await?;
    let result = response
        .results
        .iter()
        .find(|r| r.group_id.0.as_str() == group_id)
        .ok_or_else(|| missing_group(addr, group_id))?;
    ForwardError::refused(result.error_code, None)
}
