//! CreateTopics, DeleteTopics, CreatePartitions. Sluice is one node, so a replication factor
//! other than 1 (or -1, "the default") is refused, and assignments may only name this node.

use std::collections::BTreeMap;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_broker::{BrokerError, ConfigSource};

use crate::error_codes::broker_error_code;
use crate::RequestContext;
use sluice_broker::replication::unreachable_replication_factor;

pub async fn create_topics(
    ctx: &RequestContext,
    version: i16,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let broker = &ctx.broker;
    let node_id = broker.node_id();
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let result = CreatableTopicResult::default().with_name(topic.name.clone());
            let outcome = (|| {
                if topic.replication_factor < -1 || topic.replication_factor == 0 {
                    return Err(BrokerError::InvalidReplicationFactor(
                        "Replication factor must be larger than 0, or -1 to use the default \
                         value."
                            .to_string(),
                    ));
                }
                if topic.replication_factor > 1 {
                    return Err(BrokerError::InvalidReplicationFactor(
                        unreachable_replication_factor(topic.replication_factor.into(), 1),
                    ));
                }
                let mut partition_count = topic.num_partitions;
                if !topic.assignments.is_empty() {
                    if topic
                        .assignments
                        .iter()
                        .any(|a| a.broker_ids.iter().any(|id| id.0 != node_id))
                    {
                        return Err(BrokerError::InvalidReplicationFactor(
                            "assignments may only name this broker".into(),
                        ));
                    }
                    partition_count = topic.assignments.len() as i32;
                }
                let mut configs = BTreeMap::new();
                for config in &topic.configs {
                    if let Some(value) = &config.value {
                        configs.insert(config.name.to_string(), value.to_string());
                    }
                }
                broker.create_topic(
                    topic.name.as_str(),
                    partition_count,
                    configs,
                    request.validate_only,
                )
            })();
            match outcome {
                Ok(created) => {
                    let mut result = result
                        .with_topic_id(created.id())
                        .with_num_partitions(if request.validate_only {
                            if topic.num_partitions == -1 {
                                broker.config().default_partitions
                            } else {
                                topic.num_partitions
                            }
                        } else {
                            created.partition_count()
                        })
                        .with_replication_factor(1);
                    if version >= 5 {
                        let configs = created
                            .config()
                            .describe(&broker.config().log_defaults)
                            .into_iter()
                            .map(|entry| {
                                CreatableTopicConfigs::default()
                                    .with_name(StrBytes::from_string(entry.name))
                                    .with_value(Some(StrBytes::from_string(entry.value)))
                                    .with_config_source(match entry.source {
                                        ConfigSource::TopicOverride => 1,
                                        ConfigSource::GroupOverride => 8,
                                        ConfigSource::StaticBroker => 4,
                                        ConfigSource::Default => 5,
                                    })
                            })
                            .collect();
                        result = result.with_configs(Some(configs));
                    }
                    result
                }
                Err(error) => result
                    .with_error_code(broker_error_code(&error))
                    .with_error_message(Some(StrBytes::from_string(error.to_string())))
                    .with_num_partitions(-1)
                    .with_replication_factor(-1),
            }
        })
        .collect();
    CreateTopicsResponse::default().with_topics(topics)
}

pub async fn delete_topics(
    ctx: &RequestContext,
    version: i16,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let broker = &ctx.broker;
    // v0-5 name topics in `topic_names`; v6 uses `topics` with a name or a topic id.
    let mut targets: Vec<(Option<String>, uuid::Uuid)> = request
        .topic_names
        .iter()
        .map(|n| (Some(n.to_string()), uuid::Uuid::nil()))
        .collect();
    targets.extend(
        request
            .topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.to_string()), t.topic_id)),
    );
    let responses = targets
        .into_iter()
        .map(|(name, topic_id)| {
            let name = name.or_else(|| {
                broker
                    .topics()
                    .into_iter()
                    .find(|t| t.id() == topic_id)
                    .map(|t| t.name().to_string())
            });
            let Some(name) = name else {
                return DeletableTopicResult::default()
                    .with_topic_id(topic_id)
                    .with_error_code(kafka_protocol::ResponseError::UnknownTopicId.code());
            };
            let id = broker.topic(&name).map(|t| t.id()).unwrap_or(topic_id);
            let result = DeletableTopicResult::default()
                .with_name(Some(TopicName(StrBytes::from_string(name.clone()))))
                .with_topic_id(if version >= 6 { id } else { uuid::Uuid::nil() });
            match broker.delete_topic(&name) {
                Ok(()) => result,
                Err(error) => {
                    let result = result.with_error_code(broker_error_code(&error));
                    if version >= 5 {
                        result.with_error_message(Some(StrBytes::from_string(error.to_string())))
                    } else {
                        result
                    }
                }
            }
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}

pub async fn create_partitions(
    ctx: &RequestContext,
    _version: i16,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let results = request
        .topics
        .into_iter()
        .map(|topic| {
            let result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
            match ctx.broker.create_partitions(
                topic.name.as_str(),
                topic.count,
                request.validate_only,
            ) {
                Ok(()) => result,
                Err(error) => result
                    .with_error_code(broker_error_code(&error))
                    .with_error_message(Some(StrBytes::from_string(error.to_string()))),
            }
        })
        .collect();
    CreatePartitionsResponse::default().with_results(results)
}
