//! The JSON shapes of the API, request and response, each described for the OpenAPI document.
//! These are the stable contract the CLI and the web UI are built on: add fields, do not rename.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Every error answer: a short machine-readable kind and a human-readable reason.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// `bad_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`,
    /// `method_not_allowed`, `not_ready` or `internal`.
    pub error: String,
    pub reason: String,
}

// ---- health, readiness, overview ----

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok` while the process answers.
    pub status: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReadinessCheck {
    /// `storage` or `listeners`.
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    pub checks: Vec<ReadinessCheck>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeInfo {
    pub node_id: i32,
    /// The host Kafka clients are given in Metadata.
    pub host: String,
    pub kafka_port: i32,
    /// This node answered the request.
    pub is_self: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ListenerInfo {
    /// `kafka`, `amqp` or `http`.
    pub protocol: String,
    pub address: String,
}

/// Rates are averaged over the last sampling period (about 5 s); totals count since start.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct TrafficStats {
    pub messages_in_per_sec: f64,
    pub bytes_in_per_sec: f64,
    pub messages_out_per_sec: f64,
    pub bytes_out_per_sec: f64,
    pub messages_in_total: u64,
    pub bytes_in_total: u64,
    pub messages_out_total: u64,
    pub bytes_out_total: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DiskStats {
    pub data_dir: String,
    /// Bytes of every file under the data directory.
    pub data_dir_bytes: u64,
    /// Free bytes of the file system holding it (usable by the broker), null if unknown.
    pub free_bytes: Option<u64>,
    pub total_bytes: Option<u64>,
    /// Below this free space AMQP publishers are blocked.
    pub free_limit_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MemoryStats {
    /// Resident set size of the process, null if unknown.
    pub rss_bytes: Option<u64>,
    /// Bytes of AMQP messages held in memory (what the memory alarm counts).
    pub queued_message_bytes: i64,
    pub high_watermark_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ConnectionCounts {
    pub kafka: u64,
    pub amqp: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Alarm {
    /// `memory` or `disk`.
    pub kind: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ObjectCounts {
    pub topics: u64,
    pub partitions: u64,
    pub groups: u64,
    pub exchanges: u64,
    pub queues: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Overview {
    pub version: String,
    pub uptime_ms: u64,
    pub node_id: i32,
    pub cluster_id: String,
    pub nodes: Vec<NodeInfo>,
    pub listeners: Vec<ListenerInfo>,
    pub traffic: TrafficStats,
    pub disk: DiskStats,
    pub memory: MemoryStats,
    pub connections: ConnectionCounts,
    pub alarms: Vec<Alarm>,
    pub counts: ObjectCounts,
}

// ---- topics ----

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TopicSummary {
    pub name: String,
    pub id: String,
    pub partitions: i32,
    pub internal: bool,
    /// Sum over partitions of high watermark minus log start.
    pub messages: i64,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PartitionInfo {
    pub partition: i32,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
    pub high_watermark: i64,
    pub size_bytes: u64,
    pub segments: u64,
    /// Node id of the leader (this node on a single node); -1 while a cluster partition has
    /// no known leader.
    pub leader: i32,
    /// The leader's epoch (the partition group's Raft term in a cluster; 0 on a single node).
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    /// In-sync replicas.
    pub isr: Vec<i32>,
}

// ---- cluster ----

/// One node of the cluster, as the metadata group registered it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterNodeInfo {
    pub node_id: i32,
    /// The node-to-node transport (`--cluster-listen`); absent on a single node.
    pub cluster_address: Option<String>,
    /// Where Kafka clients reach it (Metadata's broker address).
    pub kafka_address: String,
    /// The node answering this request.
    pub is_self: bool,
    pub is_metadata_leader: bool,
    /// This node has an open transport connection to it (always true for itself). A killed
    /// node's connection closes within a round trip; a paused process keeps its connections
    /// open, so this is a liveness hint, not proof.
    pub connected: bool,
}

/// The cluster as this node sees it. On a single node: that node alone, leading itself.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterInfo {
    /// Whether this node runs in cluster mode (`--peers`).
    pub clustered: bool,
    pub node_id: i32,
    /// The metadata Raft group's leader (Kafka's controller) as this node knows it.
    pub metadata_leader: Option<i32>,
    pub nodes: Vec<ClusterNodeInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TopicDetail {
    pub name: String,
    pub id: String,
    pub internal: bool,
    pub partitions: Vec<PartitionInfo>,
    /// The topic's own overrides; `GET /api/topics/{name}/configs` has every value.
    pub configs: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTopicRequest {
    pub name: String,
    /// Partition count; the broker's default when absent.
    #[serde(default)]
    pub partitions: Option<i32>,
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TopicConfigEntry {
    pub name: String,
    pub value: String,
    /// `topic_override`, `static_broker` or `default`.
    pub source: String,
    pub read_only: bool,
    /// Kafka's config type: `boolean`, `string`, `int`, `long`, ...
    #[serde(rename = "type")]
    pub config_type: String,
    pub documentation: String,
}

/// Changes to a topic's config overrides. By default the keys given are set (a `null` value
/// removes the override); with `replace` the overrides become exactly the non-null keys given.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlterTopicConfigsRequest {
    pub configs: BTreeMap<String, Option<String>>,
    #[serde(default)]
    pub replace: bool,
}

// ---- messages ----

/// Bytes shown three ways: `text` when they are valid UTF-8 (else null), `base64` always,
/// `hex` when asked for with `hex=true`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EncodedBytes {
    pub size: u64,
    pub text: Option<String>,
    pub base64: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hex: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MessageHeader {
    pub key: String,
    pub value: Option<EncodedBytes>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TopicMessage {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
    /// `create_time` or `log_append_time`.
    pub timestamp_type: String,
    pub key: Option<EncodedBytes>,
    pub value: Option<EncodedBytes>,
    pub headers: Vec<MessageHeader>,
    /// Key, value and header bytes.
    pub size_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct MessagesQuery {
    /// One partition; every partition when absent.
    pub partition: Option<i32>,
    /// First offset (inclusive); the log start when absent.
    pub offset: Option<i64>,
    /// Last offset (exclusive); the high watermark when absent.
    pub end_offset: Option<i64>,
    /// Start at the first message with a timestamp at or after this (ms since the epoch),
    /// instead of `offset`.
    pub timestamp_ms: Option<i64>,
    /// Most messages returned (per request, over all partitions): 1 to 1000, default 100.
    pub limit: Option<u32>,
    /// Also show keys, values and headers in hex.
    pub hex: Option<bool>,
    /// Messages whose key is exactly this (UTF-8), found through the per-segment key index.
    pub key: Option<String>,
    /// Messages whose `message-id` header (the AMQP message-id property, or a Kafka header of
    /// that name) is exactly this, found through the key index.
    pub message_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PartitionPosition {
    pub partition: i32,
    /// Where a next request continues (`offset=` for this partition).
    pub next_offset: i64,
    pub high_watermark: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TopicMessages {
    pub topic: String,
    pub messages: Vec<TopicMessage>,
    pub positions: Vec<PartitionPosition>,
    /// Compressed batches passed over because they do not decode (a garbage payload, or one
    /// past the decompression bound); batches compressed with gzip, snappy, lz4 or zstd are
    /// shown like any others.
    pub skipped_compressed_batches: u64,
    /// Cluster mode: partitions of the topic with no replica on this node, so not in this
    /// answer; ask a node that holds one (`GET /api/topics/{name}/partitions` names them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions_elsewhere: Vec<i32>,
}

/// A header of a message to produce; `value` null is a header without a value.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProduceHeader {
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
}

/// One message to produce. `encoding` says how `key`, `value` and header values are written
/// (`string`: the text itself; `base64`: the bytes in standard base64).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProduceMessage {
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub headers: Vec<ProduceHeader>,
    /// The partition; when absent, the hash of the key (as Kafka's default partitioner), or
    /// for messages without a key one partition picked per request (as its sticky partitioner).
    #[serde(default)]
    pub partition: Option<i32>,
    /// The record's create time (ms since the epoch); now when absent.
    #[serde(default)]
    pub timestamp_ms: Option<i64>,
    #[serde(default)]
    pub encoding: PayloadEncoding,
}

/// Messages to append to a topic: 1 to 10000, acknowledged once durable (as acks=all).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProduceRequest {
    pub messages: Vec<ProduceMessage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProducedOffset {
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProduceResponse {
    /// Where each message was stored, in request order.
    pub offsets: Vec<ProducedOffset>,
}

// ---- consumer groups ----

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupSummary {
    pub group_id: String,
    /// `Empty`, `PreparingRebalance`, `CompletingRebalance`, `Stable` or `Dead`.
    pub state: String,
    pub protocol_type: String,
    /// The assignor in use while Stable (e.g. `range`), else empty.
    pub protocol: String,
    pub members: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TopicPartitionRef {
    pub topic: String,
    pub partition: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// Decoded from the consumer protocol's assignment; empty for other protocols.
    pub assignments: Vec<TopicPartitionRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupPartitionOffset {
    pub topic: String,
    pub partition: i32,
    /// Null when the group never committed for this partition.
    pub committed_offset: Option<i64>,
    pub log_end_offset: i64,
    pub high_watermark: i64,
    /// High watermark minus committed offset (null without a commit).
    pub lag: Option<i64>,
    /// The member assigned this partition, if any.
    pub member_id: Option<String>,
    pub metadata: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupDetail {
    pub group_id: String,
    pub state: String,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<GroupMember>,
    pub offsets: Vec<GroupPartitionOffset>,
    /// Sum of the known lags.
    pub total_lag: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResetStrategy {
    /// Each partition's log start.
    Earliest,
    /// Each partition's high watermark.
    Latest,
    /// The first offset at or after `timestamp_ms` (the high watermark if none).
    Timestamp,
    /// `offset`, clamped to the partition's log start and high watermark.
    Offset,
    /// The committed offset plus `shift` (negative goes back), clamped likewise.
    Shift,
}

/// As `kafka-consumer-groups --reset-offsets`: refused (409) while the group has members.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetOffsetsRequest {
    /// Only this topic; every topic the group has committed offsets for when absent.
    #[serde(default)]
    pub topic: Option<String>,
    /// Only these partitions of `topic`; all of them when absent.
    #[serde(default)]
    pub partitions: Option<Vec<i32>>,
    pub strategy: ResetStrategy,
    #[serde(default)]
    pub timestamp_ms: Option<i64>,
    #[serde(default)]
    pub offset: Option<i64>,
    #[serde(default)]
    pub shift: Option<i64>,
    /// Only compute and return the plan.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OffsetResetPlan {
    pub topic: String,
    pub partition: i32,
    pub previous_offset: Option<i64>,
    pub new_offset: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ResetOffsetsResponse {
    pub group_id: String,
    pub dry_run: bool,
    pub partitions: Vec<OffsetResetPlan>,
}

// ---- AMQP ----

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExchangeInfo {
    /// The default exchange is `""` (in paths: `amq.default`).
    pub name: String,
    /// The virtual host it is in (`/` by default).
    pub vhost: String,
    /// `direct`, `fanout`, `topic` or `headers`.
    #[serde(rename = "type")]
    pub kind: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    #[schema(value_type = Object)]
    pub arguments: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeclareExchangeRequest {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default = "default_true")]
    pub durable: bool,
    #[serde(default)]
    pub auto_delete: bool,
    #[serde(default)]
    pub internal: bool,
    /// AMQP arguments; JSON strings, numbers, booleans, arrays and objects map to field values.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub arguments: serde_json::Map<String, serde_json::Value>,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct QueueMessageStats {
    pub publish_total: u64,
    pub deliver_total: u64,
    pub ack_total: u64,
    pub publish_per_sec: f64,
    pub deliver_per_sec: f64,
    pub ack_per_sec: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueInfo {
    pub name: String,
    /// The virtual host it is in (`/` by default).
    pub vhost: String,
    /// `classic`, or `stream` for a queue that is a Kafka topic.
    #[serde(rename = "type")]
    pub kind: String,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    #[schema(value_type = Object)]
    pub arguments: serde_json::Value,
    pub messages_ready: u64,
    pub messages_unacked: u64,
    pub messages: u64,
    pub consumers: u64,
    pub message_stats: QueueMessageStats,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeclareQueueRequest {
    pub name: String,
    #[serde(default = "default_true")]
    pub durable: bool,
    #[serde(default)]
    pub auto_delete: bool,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub arguments: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQueueQuery {
    /// The virtual host (`/` if not given).
    pub vhost: Option<String>,
    /// Refuse (409) if the queue has consumers.
    pub if_unused: Option<bool>,
    /// Refuse (409) if the queue has messages.
    pub if_empty: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteExchangeQuery {
    /// The virtual host (`/` if not given).
    pub vhost: Option<String>,
    /// Refuse (409) if the exchange has bindings.
    pub if_unused: Option<bool>,
}

/// Which virtual host an AMQP route acts on; listings without it cover every vhost.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VhostQuery {
    /// The virtual host (`/` if not given).
    pub vhost: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VhostInfo {
    pub name: String,
    pub queues: u64,
    pub exchanges: u64,
    /// AMQP connections open on it.
    pub connections: u64,
    /// Ready and unacked messages of its classic queues.
    pub messages: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PurgeResponse {
    pub messages_purged: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BindingInfo {
    /// The virtual host it is in (`/` by default).
    pub vhost: String,
    pub source: String,
    pub destination: String,
    /// `queue` or `exchange`.
    pub destination_type: String,
    pub routing_key: String,
    #[schema(value_type = Object)]
    pub arguments: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConnectionInfo {
    pub id: u64,
    /// `kafka` or `amqp`.
    pub protocol: String,
    pub peer: String,
    /// The authenticated user (AMQP), or null.
    pub user: Option<String>,
    /// The client's name (Kafka client id, AMQP `connection_name`), or null.
    pub client: Option<String>,
    pub connected_at_ms: i64,
    pub channels: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChannelInfo {
    /// The virtual host it is in (`/` by default).
    pub vhost: String,
    /// The AMQP connection's id (as in `/api/connections`).
    pub connection: u64,
    pub channel: u16,
    pub user: String,
    pub consumers: u64,
    pub messages_unacked: u64,
    /// basic.qos prefetch per consumer (0: none).
    pub prefetch_count: u32,
    /// basic.qos prefetch for the whole channel (0: none).
    pub global_prefetch_count: u32,
    pub in_transaction: bool,
}

/// AMQP basic properties in JSON. `headers` values: strings, numbers, booleans, null, arrays
/// and objects.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AmqpProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub headers: Option<serde_json::Map<String, serde_json::Value>>,
    /// 1 transient, 2 persistent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_mode: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "type")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PayloadEncoding {
    /// The payload is the text itself.
    #[default]
    String,
    Base64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    #[serde(default)]
    pub routing_key: String,
    pub payload: String,
    #[serde(default)]
    pub payload_encoding: PayloadEncoding,
    #[serde(default)]
    pub properties: AmqpProperties,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PublishResponse {
    /// At least one queue took the message.
    pub routed: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GetAckMode {
    /// Peek: the messages go back to the queue (marked redelivered), as RabbitMQ's UI.
    #[default]
    Requeue,
    /// Take them: they leave the queue.
    Ack,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GetMessagesRequest {
    /// 1 to 1000, default 1.
    #[serde(default)]
    pub count: Option<u32>,
    #[serde(default)]
    pub ack_mode: GetAckMode,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueMessage {
    pub payload: EncodedBytes,
    pub exchange: String,
    pub routing_key: String,
    pub redelivered: bool,
    /// Messages left ready in the queue after this one was taken.
    pub message_count: u64,
    pub properties: AmqpProperties,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveMessagesRequest {
    /// Publish to this exchange (`""`/`amq.default` is the default exchange) instead of each
    /// message's original exchange from its `x-death` header.
    #[serde(default)]
    pub exchange: Option<String>,
    /// With `exchange`: the routing key to use (each message's own when absent).
    #[serde(default)]
    pub routing_key: Option<String>,
    /// Most messages moved: 1 to 100000, default all (at most 100000).
    #[serde(default)]
    pub count: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MoveMessagesResponse {
    pub moved: u64,
    /// Left in the source queue: no `x-death` to find their origin, or they routed nowhere.
    pub skipped: u64,
}

// ---- users and permissions ----

/// A user as the API shows it: never a password or a key.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserInfo {
    pub name: String,
    /// Comma-separated, as RabbitMQ shows them (`administrator`, `monitoring`, ...).
    pub tags: String,
    /// Accepted only from loopback (guest).
    pub loopback_only: bool,
    /// The SCRAM credentials the user has (Kafka SASL).
    pub scram_mechanisms: Vec<String>,
}

/// Creates a user (a password is needed) or changes one.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PutUserRequest {
    pub password: Option<String>,
    /// Comma-separated tags; absent leaves them as they are.
    pub tags: Option<String>,
}

/// A user's AMQP permissions on a virtual host.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PermissionInfo {
    pub user: String,
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// Regular expressions matched against exchange and queue names, as RabbitMQ's.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PutPermissionsRequest {
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// A vhost's limits (`max-connections`, `max-queues`), as RabbitMQ lists them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VhostLimitInfo {
    pub vhost: String,
    pub value: BTreeMap<String, i64>,
}

/// One limit's value; negative means no limit.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PutVhostLimitRequest {
    pub value: i64,
}
