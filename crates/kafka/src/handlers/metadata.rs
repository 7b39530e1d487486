//! Metadata: the one broker, every (or every requested) topic with its partitions, auto-creating
//! requested topics when both the client and the broker allow it.

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_broker::{BrokerError, Topic};

use crate::error_codes::broker_error_code;
use crate::RequestContext;

pub async fn metadata(
    ctx: &RequestContext,
    version: i16,
    request: MetadataRequest,
) -> MetadataResponse {
    let broker = &ctx.broker;
    let node_id = BrokerId(broker.node_id());
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
            let name = match (&requested.name, requested.topic_id.is_nil()) {
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

    MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(node_id)
            .with_host(StrBytes::from_string(ctx.config.advertised_host.clone()))
            .with_port(ctx.config.advertised_port)])
        .with_cluster_id(Some(StrBytes::from_string(broker.cluster_id().to_string())))
        .with_controller_id(node_id)
        .with_topics(topics)
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
