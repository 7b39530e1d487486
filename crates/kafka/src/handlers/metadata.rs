//! Metadata: the one broker, every (or every requested) topic with its partitions, auto-creating
//! requested topics when both the client and the broker allow it. DescribeCluster: the same
//! brokers, controller and cluster id without topics (single node and cluster alike).
//! DescribeTopicPartitions (KIP-966): the same partitions, a page at a time.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_topic_partitions_response::{
    Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, DescribeTopicPartitionsRequest,
    DescribeTopicPartitionsResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_broker::{BrokerError, Topic};

use crate::error_codes::broker_error_code;
use crate::RequestContext;

/// DescribeCluster's endpoint type for brokers; 2 (controllers) is asked of a controller's
/// listener, which a Sluice node does not expose apart from its Kafka one.
const ENDPOINT_TYPE_BROKERS: i8 = 1;
/// Cluster operations Kafka reports as allowed when no authorizer is configured (KIP-430), as
/// bits of their ACL operation codes: CREATE (5), ALTER (7), DESCRIBE (8), CLUSTER_ACTION (9),
/// DESCRIBE_CONFIGS (10), ALTER_CONFIGS (11), IDEMPOTENT_WRITE (12).
const CLUSTER_AUTHORIZED_OPERATIONS: i32 =
    (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12);
/// Topic operations likewise: READ (3), WRITE (4), CREATE (5), DELETE (6), ALTER (7),
/// DESCRIBE (8), DESCRIBE_CONFIGS (10), ALTER_CONFIGS (11).
pub(crate) const TOPIC_AUTHORIZED_OPERATIONS: i32 =
    (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 11);
/// The "not requested" value of the authorized-operations fields.
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

/// KIP-430: the operations the client may perform on the cluster and on each topic, where
/// the request asks for them (no authorizer: all of them, as Kafka lists them).
pub(crate) fn with_authorized_operations(
    mut response: MetadataResponse,
    include_cluster: bool,
    include_topics: bool,
) -> MetadataResponse {
    for topic in &mut response.topics {
        topic.topic_authorized_operations = if include_topics && topic.error_code == 0 {
            TOPIC_AUTHORIZED_OPERATIONS
        } else {
            AUTHORIZED_OPERATIONS_OMITTED
        };
    }
    response.with_cluster_authorized_operations(if include_cluster {
        CLUSTER_AUTHORIZED_OPERATIONS
    } else {
        AUTHORIZED_OPERATIONS_OMITTED
    })
}

pub async fn describe_cluster(
    ctx: &RequestContext,
    version: i16,
    request: DescribeClusterRequest,
) -> DescribeClusterResponse {
    if version >= 1 && request.endpoint_type != ENDPOINT_TYPE_BROKERS {
        return DescribeClusterResponse::default()
            .with_endpoint_type(request.endpoint_type)
            .with_error_code(ResponseError::UnsupportedEndpointType.code())
            .with_error_message(Some(StrBytes::from_static_str(
                "The request was sent to an endpoint of type BROKER, but we wanted an endpoint \
                 of type CONTROLLER",
            )));
    }
    let no_topics = MetadataRequest::default().with_topics(Some(Vec::new()));
    let metadata = match &ctx.cluster {
        Some(cluster) => super::cluster::metadata(ctx, cluster, 12, no_topics).await,
        None => metadata(ctx, 12, no_topics).await,
    };
    let brokers = metadata
        .brokers
        .into_iter()
        .map(|b| {
            DescribeClusterBroker::default()
                .with_broker_id(b.node_id)
                .with_host(b.host)
                .with_port(b.port)
                .with_rack(b.rack)
        })
        .collect();
    DescribeClusterResponse::default()
        .with_endpoint_type(ENDPOINT_TYPE_BROKERS)
        .with_cluster_id(metadata.cluster_id.unwrap_or_default())
        .with_controller_id(metadata.controller_id)
        .with_brokers(brokers)
        .with_cluster_authorized_operations(if request.include_cluster_authorized_operations {
            CLUSTER_AUTHORIZED_OPERATIONS
        } else {
            AUTHORIZED_OPERATIONS_OMITTED
        })
}

/// Kafka's `max.request.partition.size.limit`: the most partitions one page holds.
const PARTITIONS_PER_PAGE_MAX: i32 = 2000;

pub async fn describe_topic_partitions(
    ctx: &RequestContext,
    _version: i16,
    request: DescribeTopicPartitionsRequest,
) -> DescribeTopicPartitionsResponse {
    let requested = (!request.topics.is_empty()).then(|| {
        request
            .topics
            .iter()
            .map(|t| MetadataRequestTopic::default().with_name(Some(t.name.clone())))
            .collect()
    });
    let metadata_request = MetadataRequest::default()
        .with_topics(requested)
        .with_allow_auto_topic_creation(false);
    let metadata = match &ctx.cluster {
        Some(cluster) => super::cluster::metadata(ctx, cluster, 12, metadata_request).await,
        None => metadata(ctx, 12, metadata_request).await,
    };
    let mut topics = metadata.topics;
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    let limit = match request.response_partition_limit {
        limit if limit > 0 => limit.min(PARTITIONS_PER_PAGE_MAX),
        _ => PARTITIONS_PER_PAGE_MAX,
    } as usize;
    let (cursor_topic, cursor_partition) = match &request.cursor {
        Some(cursor) => (Some(cursor.topic_name.clone()), cursor.partition_index),
        None => (None, 0),
    };
    let mut page = Vec::new();
    let mut partitions_in_page = 0;
    let mut next_cursor = None;
    for topic in topics {
        let name = topic.name.clone().unwrap_or_default();
        if cursor_topic.as_ref().is_some_and(|cursor| name < *cursor) {
            continue;
        }
        let first = if cursor_topic.as_ref() == Some(&name) {
            cursor_partition
        } else {
            0
        };
        if partitions_in_page >= limit {
            next_cursor = Some(
                Cursor::default()
                    .with_topic_name(name)
                    .with_partition_index(first),
            );
            break;
        }
        let mut partitions: Vec<_> = topic
            .partitions
            .into_iter()
            .filter(|p| p.partition_index >= first)
            .collect();
        partitions.sort_by_key(|p| p.partition_index);
        if partitions_in_page + partitions.len() > limit {
            let rest = partitions.split_off(limit - partitions_in_page);
            next_cursor = rest.first().map(|p| {
                Cursor::default()
                    .with_topic_name(name.clone())
                    .with_partition_index(p.partition_index)
            });
        }
        partitions_in_page += partitions.len();
        let partitions = partitions
            .into_iter()
            .map(|p| {
                DescribeTopicPartitionsResponsePartition::default()
                    .with_error_code(p.error_code)
                    .with_partition_index(p.partition_index)
                    .with_leader_id(p.leader_id)
                    .with_leader_epoch(p.leader_epoch)
                    .with_replica_nodes(p.replica_nodes)
                    .with_isr_nodes(p.isr_nodes)
                    // No eligible leader replicas (KIP-966) beyond the ISR: Raft elects.
                    .with_eligible_leader_replicas(Some(Vec::new()))
                    .with_last_known_elr(Some(Vec::new()))
                    .with_offline_replicas(p.offline_replicas)
            })
            .collect();
        let found = topic.error_code == 0;
        page.push(
            DescribeTopicPartitionsResponseTopic::default()
                .with_error_code(topic.error_code)
                .with_name(topic.name)
                .with_topic_id(topic.topic_id)
                .with_is_internal(topic.is_internal)
                .with_partitions(partitions)
                .with_topic_authorized_operations(if found {
                    TOPIC_AUTHORIZED_OPERATIONS
                } else {
                    AUTHORIZED_OPERATIONS_OMITTED
                }),
        );
        if next_cursor.is_some() {
            break;
        }
    }
    DescribeTopicPartitionsResponse::default()
        .with_topics(page)
        .with_next_cursor(next_cursor)
}

pub async fn metadata(
    ctx: &RequestContext,
    version: i16,
    request: MetadataRequest,
) -> MetadataResponse {
    let broker = &ctx.broker;
    let node_id = BrokerId(broker.node_id());
    let include_cluster_operations = request.include_cluster_authorized_operations;
    let include_topic_operations = request.include_topic_authorized_operations;
    // v0: an empty list means all topics; v1+: null means all, empty means none.
    let all_topics = match &request.topics {
        None => true,
        Some(topics) => topics.is_empty() && version == 0,
    };
    // Auto-creation through Metadata is on for v0-3 and asked for explicitly from v4.
    let allow_auto_create = version < 4 || request.allow_auto_topic_creation;

    let mut topics = Vec::new();
    if all_topics {
        for topic in broker.topics() {
            if !topic.is_internal() {
                topics.push(describe_topic(&topic, node_id));
            }
        }
    } else {
        for requested in request.topics.unwrap_or_default() {
            // The Java client asks by id with an empty name (not a null one).
            let requested_name = requested.name.as_ref().filter(|name| !name.is_empty());
            let name = match (requested_name, requested.topic_id.is_nil()) {
                (Some(name), _) => name.to_string(),
                (None, false) => match broker
                    .topics()
                    .into_iter()
                    .find(|t| t.id() == requested.topic_id)
                {
                    Some(topic) => topic.name().to_string(),
                    None => {
                        topics.push(
                            MetadataResponseTopic::default()
                                .with_topic_id(requested.topic_id)
                                .with_error_code(ResponseError::UnknownTopicId.code()),
                        );
                        continue;
                    }
                },
                (None, true) => {
                    topics.push(
                        MetadataResponseTopic::default()
                            .with_error_code(ResponseError::InvalidTopicException.code()),
                    );
                    continue;
                }
            };
            let found = if allow_auto_create {
                broker.topic_or_auto_create(&name)
            } else {
                broker
                    .topic(&name)
                    .ok_or_else(|| BrokerError::UnknownTopicOrPartition(name.clone()))
            };
            match found {
                Ok(topic) => topics.push(describe_topic(&topic, node_id)),
                Err(error) => topics.push(
                    MetadataResponseTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string(name))))
                        .with_error_code(broker_error_code(&error)),
                ),
            }
        }
    }

    let response = MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(node_id)
            .with_host(StrBytes::from_string(ctx.config.advertised_host.clone()))
            .with_port(ctx.config.advertised_port)])
        .with_cluster_id(Some(StrBytes::from_string(broker.cluster_id().to_string())))
        .with_controller_id(node_id)
        .with_topics(topics);
    with_authorized_operations(
        response,
        include_cluster_operations,
        include_topic_operations,
    )
}

fn describe_topic(topic: &Topic, node_id: BrokerId) -> MetadataResponseTopic {
    let partitions = (0..topic.partition_count())
        .map(|index| {
            MetadataResponsePartition::default()
                .with_partition_index(index)
                .with_leader_id(node_id)
                .with_leader_epoch(0)
                .with_replica_nodes(vec![node_id])
                .with_isr_nodes(vec![node_id])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(
            topic.name().to_string(),
        ))))
        .with_topic_id(topic.id())
        .with_is_internal(topic.is_internal())
        .with_partitions(partitions)
}
