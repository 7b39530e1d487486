//! DescribeConfigs, AlterConfigs, IncrementalAlterConfigs for topics (the settings listed in
//! `sluice_broker::topic::SUPPORTED_TOPIC_CONFIGS`), and read-only broker configs.

use std::collections::BTreeMap;

use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    incremental_alter_configs_response, AlterConfigsRequest, AlterConfigsResponse,
    DescribeConfigsRequest, DescribeConfigsResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_broker::{BrokerError, ConfigChange, ConfigEntry, ConfigSource};

use crate::error_codes::broker_error_code;
use crate::RequestContext;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const SOURCE_TOPIC_CONFIG: i8 = 1;
const SOURCE_STATIC_BROKER_CONFIG: i8 = 4;
const SOURCE_DEFAULT_CONFIG: i8 = 5;
const OPERATION_SET: i8 = 0;
const OPERATION_DELETE: i8 = 1;

pub async fn describe_configs(
    ctx: &RequestContext,
    version: i16,
    request: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            let entries = match resource.resource_type {
                RESOURCE_TOPIC => ctx
                    .broker
                    .describe_topic_configs(resource.resource_name.as_str()),
                RESOURCE_BROKER => {
                    let own_name = ctx.broker.node_id().to_string();
                    if resource.resource_name.is_empty()
                        || resource.resource_name.as_str() == own_name
                    {
                        Ok(broker_configs(ctx))
                    } else {
                        return result
                            .with_error_code(ResponseError::InvalidRequest.code())
                            .with_error_message(Some(StrBytes::from_string(format!(
                                "unknown broker {}",
                                resource.resource_name.as_str()
                            ))));
                    }
                }
                other => {
                    return result
                        .with_error_code(ResponseError::InvalidRequest.code())
                        .with_error_message(Some(StrBytes::from_string(format!(
                            "unsupported resource type {other}"
                        ))))
                }
            };
            match entries {
                Ok(entries) => {
                    let wanted = resource.configuration_keys.as_ref();
                    let configs = entries
                        .into_iter()
                        .filter(|entry| {
                            wanted.is_none_or(|keys| keys.iter().any(|k| k.as_str() == entry.name))
                        })
                        .map(|entry| {
                            let source = match (resource.resource_type, entry.source) {
                                (RESOURCE_BROKER, _) => SOURCE_STATIC_BROKER_CONFIG,
                                (_, ConfigSource::TopicOverride) => SOURCE_TOPIC_CONFIG,
                                (_, ConfigSource::Default) => SOURCE_DEFAULT_CONFIG,
                            };
                            let config = DescribeConfigsResourceResult::default()
                                .with_name(StrBytes::from_string(entry.name))
                                .with_value(Some(StrBytes::from_string(entry.value)))
                                .with_read_only(entry.read_only)
                                .with_config_source(source);
                            if version >= 3 {
                                config.with_documentation(None)
                            } else {
                                config
                            }
                        })
                        .collect();
                    result.with_configs(configs)
                }
                Err(error) => result
                    .with_error_code(broker_error_code(&error))
                    .with_error_message(Some(StrBytes::from_string(error.to_string()))),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// The broker settings a client may want to read (all static: set by flags or the config file).
fn broker_configs(ctx: &RequestContext) -> Vec<ConfigEntry> {
    let config = ctx.broker.config();
    let entry = |name: &str, value: String| ConfigEntry {
        name: name.to_string(),
        value,
        source: ConfigSource::Default,
        read_only: true,
    };
    vec![
        entry("broker.id", config.node_id.to_string()),
        entry(
            "auto.create.topics.enable",
            config.auto_create_topics.to_string(),
        ),
        entry("num.partitions", config.default_partitions.to_string()),
        entry(
            "message.max.bytes",
            config.log_defaults.batch_bytes_max.to_string(),
        ),
        entry(
            "log.retention.ms",
            config.log_defaults.retention_ms.to_string(),
        ),
        entry(
            "log.retention.bytes",
            config.log_defaults.retention_bytes.to_string(),
        ),
        entry(
            "log.segment.bytes",
            config.log_defaults.segment_bytes_max.to_string(),
        ),
        entry(
            "group.initial.rebalance.delay.ms",
            config.group.initial_rebalance_delay_ms.to_string(),
        ),
        entry("fsync", config.log_defaults.durability.to_string()),
    ]
}

fn alter_result(
    resource_type: i8,
    resource_name: StrBytes,
    outcome: Result<(), BrokerError>,
) -> AlterConfigsResourceResponse {
    let response = AlterConfigsResourceResponse::default()
        .with_resource_type(resource_type)
        .with_resource_name(resource_name);
    match outcome {
        Ok(()) => response,
        Err(error) => response
            .with_error_code(broker_error_code(&error))
            .with_error_message(Some(StrBytes::from_string(error.to_string()))),
    }
}

fn only_topics(resource_type: i8) -> Result<(), BrokerError> {
    if resource_type == RESOURCE_TOPIC {
        Ok(())
    } else {
        Err(BrokerError::InvalidConfig(format!(
            "only topic configs (resource type 2) can be altered, not resource type {resource_type}"
        )))
    }
}

pub async fn alter_configs(
    ctx: &RequestContext,
    _version: i16,
    request: AlterConfigsRequest,
) -> AlterConfigsResponse {
    let responses = request
        .resources
        .into_iter()
        .map(|resource| {
            let outcome = only_topics(resource.resource_type).and_then(|()| {
                let configs: BTreeMap<String, String> = resource
                    .configs
                    .iter()
                    .filter_map(|c| {
                        c.value
                            .as_ref()
                            .map(|v| (c.name.to_string(), v.to_string()))
                    })
                    .collect();
                ctx.broker.replace_topic_configs(
                    resource.resource_name.as_str(),
                    configs,
                    request.validate_only,
                )
            });
            alter_result(resource.resource_type, resource.resource_name, outcome)
        })
        .collect();
    AlterConfigsResponse::default().with_responses(responses)
}

pub async fn incremental_alter_configs(
    ctx: &RequestContext,
    _version: i16,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let responses = request
        .resources
        .into_iter()
        .map(|resource| {
            let outcome = only_topics(resource.resource_type).and_then(|()| {
                let changes = resource
                    .configs
                    .iter()
                    .map(|c| match (c.config_operation, &c.value) {
                        (OPERATION_SET, Some(value)) => {
                            Ok(ConfigChange::Set(c.name.to_string(), value.to_string()))
                        }
                        (OPERATION_DELETE, _) => Ok(ConfigChange::Delete(c.name.to_string())),
                        (operation, _) => Err(BrokerError::InvalidConfig(format!(
                            "operation {operation} on '{}' is not supported (only SET and DELETE)",
                            c.name.as_str()
                        ))),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                ctx.broker.change_topic_configs(
                    resource.resource_name.as_str(),
                    changes,
                    request.validate_only,
                )
            });
            let response = alter_result(resource.resource_type, resource.resource_name, outcome);
            incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                .with_error_code(response.error_code)
                .with_error_message(response.error_message)
                .with_resource_type(response.resource_type)
                .with_resource_name(response.resource_name)
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}
