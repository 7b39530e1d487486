//! DescribeConfigs, AlterConfigs, IncrementalAlterConfigs for topics (the settings listed in
//! `sluice_broker::topic_config_names`), and read-only broker configs.

use std::collections::BTreeMap;

use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{
    incremental_alter_configs_response, AlterConfigsRequest, AlterConfigsResponse,
    DescribeConfigsRequest, DescribeConfigsResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_broker::{
    BrokerError, ConfigChange, ConfigEntry, ConfigSource, ConfigSynonym, ConfigType,
};

use crate::error_codes::broker_error_code;
use crate::RequestContext;
use sluice_broker::replication::ReplicationError;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const RESOURCE_GROUP: i8 = 32;
const SOURCE_TOPIC_CONFIG: i8 = 1;
const SOURCE_STATIC_BROKER_CONFIG: i8 = 4;
const SOURCE_DEFAULT_CONFIG: i8 = 5;
const SOURCE_GROUP_CONFIG: i8 = 8;
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
                RESOURCE_TOPIC => match &ctx.cluster {
                    Some(cluster) => {
                        cluster.describe_topic_configs(resource.resource_name.as_str())
                    }
                    None => ctx
                        .broker
                        .describe_topic_configs(resource.resource_name.as_str()),
                },
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
                RESOURCE_GROUP if ctx.cluster.is_none() => {
                    Ok(group_configs(ctx, resource.resource_name.as_str()))
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
                            let synonyms = if version >= 1 && request.include_synonyms {
                                entry
                                    .synonyms
                                    .into_iter()
                                    .map(|synonym| {
                                        DescribeConfigsSynonym::default()
                                            .with_name(StrBytes::from_string(synonym.name))
                                            .with_value(Some(StrBytes::from_string(synonym.value)))
                                            .with_source(source_code(synonym.source))
                                    })
                                    .collect()
                            } else {
                                Vec::new()
                            };
                            let config = DescribeConfigsResourceResult::default()
                                .with_name(StrBytes::from_string(entry.name))
                                .with_value(Some(StrBytes::from_string(entry.value)))
                                .with_read_only(entry.read_only)
                                .with_config_source(source_code(entry.source))
                                .with_synonyms(synonyms);
                            if version >= 3 {
                                let documentation = (request.include_documentation
                                    && !entry.documentation.is_empty())
                                .then(|| StrBytes::from_static_str(entry.documentation));
                                config
                                    .with_config_type(config_type_code(entry.config_type))
                                    .with_documentation(documentation)
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

/// Kafka's `ConfigSource` codes.
fn source_code(source: ConfigSource) -> i8 {
    match source {
        ConfigSource::TopicOverride => SOURCE_TOPIC_CONFIG,
        ConfigSource::GroupOverride => SOURCE_GROUP_CONFIG,
        ConfigSource::StaticBroker => SOURCE_STATIC_BROKER_CONFIG,
        ConfigSource::Default => SOURCE_DEFAULT_CONFIG,
    }
}

/// Kafka's `ConfigType` codes (DescribeConfigs v3+).
fn config_type_code(config_type: ConfigType) -> i8 {
    match config_type {
        ConfigType::Boolean => 1,
        ConfigType::String => 2,
        ConfigType::Int => 3,
        ConfigType::Short => 4,
        ConfigType::Long => 5,
        ConfigType::Double => 6,
        ConfigType::List => 7,
        ConfigType::Class => 8,
        ConfigType::Password => 9,
    }
}

/// The broker settings a client may want to read, all fixed when the process started.
fn broker_configs(ctx: &RequestContext) -> Vec<ConfigEntry> {
    let config = ctx.broker.config();
    let entry = |name: &str, value: String, config_type: ConfigType, documentation| ConfigEntry {
        synonyms: vec![ConfigSynonym {
            name: name.to_string(),
            value: value.clone(),
            source: ConfigSource::StaticBroker,
        }],
        name: name.to_string(),
        value,
        source: ConfigSource::StaticBroker,
        read_only: true,
        config_type,
        documentation,
    };
    let log_dir = sluice_broker::absolute_log_dir(&config.data_dir);
    vec![
        entry(
            "broker.id",
            config.node_id.to_string(),
            ConfigType::Int,
            "The broker's node id.",
        ),
        // Reported as Kafka 3.x reports an unset advertised.listeners (a per-broker dynamic
        // config there), which clients such as kafka-python check for.
        ConfigEntry {
            source: ConfigSource::Default,
            read_only: false,
            ..entry(
                "advertised.listeners",
                format!(
                    "PLAINTEXT://{}:{}",
                    ctx.config.advertised_host, ctx.config.advertised_port
                ),
                ConfigType::String,
                "The listener given to clients in Metadata.",
            )
        },
        entry(
            "log.dirs",
            log_dir.display().to_string(),
            ConfigType::String,
            "The directory holding all topics, offsets and metadata.",
        ),
        entry(
            "auto.create.topics.enable",
            config.auto_create_topics.to_string(),
            ConfigType::Boolean,
            "Create topics on first use.",
        ),
        entry(
            "num.partitions",
            config.default_partitions.to_string(),
            ConfigType::Int,
            "Partition count of auto-created topics.",
        ),
        entry(
            "message.max.bytes",
            config.log_defaults.batch_bytes_max.to_string(),
            ConfigType::Int,
            "Largest record batch accepted.",
        ),
        entry(
            "log.retention.ms",
            config.log_defaults.retention_ms.to_string(),
            ConfigType::Long,
            "Default age after which a segment is deleted; -1 keeps segments forever.",
        ),
        entry(
            "log.retention.bytes",
            config.log_defaults.retention_bytes.to_string(),
            ConfigType::Long,
            "Default partition size above which old segments are deleted; -1 for no limit.",
        ),
        entry(
            "log.segment.bytes",
            config.log_defaults.segment_bytes_max.to_string(),
            ConfigType::Int,
            "Default segment size at which a new segment is rolled.",
        ),
        entry(
            "group.initial.rebalance.delay.ms",
            config.group.initial_rebalance_delay_ms.to_string(),
            ConfigType::Int,
            "Wait before the first rebalance of a new group completes.",
        ),
        entry(
            "fsync",
            config.log_defaults.durability.to_string(),
            ConfigType::String,
            "Default durability: 'batch', 'interval:<ms>' or 'never'.",
        ),
    ]
}

/// ListConfigResources (KIP-1142): v0 lists client-metrics resources (Sluice has none); v1 the
/// resources of the asked types (all when none is named) that configs can be described for.
pub async fn list_config_resources(
    ctx: &RequestContext,
    version: i16,
    request: kafka_protocol::messages::ListConfigResourcesRequest,
) -> kafka_protocol::messages::ListConfigResourcesResponse {
    use kafka_protocol::messages::list_config_resources_response::ConfigResource;
    const RESOURCE_BROKER_LOGGER: i8 = 8;
    const RESOURCE_CLIENT_METRICS: i8 = 16;
    let response = kafka_protocol::messages::ListConfigResourcesResponse::default();
    if version == 0 {
        return response;
    }
    let known = [
        RESOURCE_TOPIC,
        RESOURCE_BROKER,
        RESOURCE_BROKER_LOGGER,
        RESOURCE_CLIENT_METRICS,
        RESOURCE_GROUP,
    ];
    if request.resource_types.iter().any(|t| !known.contains(t)) {
        return response.with_error_code(ResponseError::UnsupportedVersion.code());
    }
    let wanted =
        |kind: i8| request.resource_types.is_empty() || request.resource_types.contains(&kind);
    let resource = |kind: i8, name: String| {
        ConfigResource::default()
            .with_resource_type(kind)
            .with_resource_name(StrBytes::from_string(name))
    };
    let mut resources = Vec::new();
    if wanted(RESOURCE_TOPIC) {
        let mut names: Vec<String> = match &ctx.cluster {
            Some(cluster) => cluster
                .metadata()
                .topics
                .values()
                .map(|t| t.name.clone())
                .collect(),
            None => ctx
                .broker
                .topics()
                .iter()
                .map(|t| t.name().to_string())
                .collect(),
        };
        names.sort();
        resources.extend(names.into_iter().map(|n| resource(RESOURCE_TOPIC, n)));
    }
    for kind in [RESOURCE_BROKER, RESOURCE_BROKER_LOGGER] {
        if wanted(kind) {
            resources.push(resource(kind, ctx.broker.node_id().to_string()));
        }
    }
    if wanted(RESOURCE_GROUP) {
        let coordinator = ctx.broker.group_coordinator();
        let mut groups: Vec<String> = coordinator
            .list_groups()
            .into_iter()
            .map(|g| g.group_id)
            .chain(coordinator.groups_with_configs())
            .collect();
        groups.sort();
        groups.dedup();
        resources.extend(groups.into_iter().map(|g| resource(RESOURCE_GROUP, g)));
    }
    response.with_config_resources(resources)
}

/// A group's configs: its own values, else the broker's.
fn group_configs(ctx: &RequestContext, group_id: &str) -> Vec<ConfigEntry> {
    ctx.broker
        .group_coordinator()
        .describe_group_configs(group_id)
        .into_iter()
        .map(|entry| ConfigEntry {
            name: entry.name.to_string(),
            value: entry.value.clone(),
            source: if entry.is_override {
                ConfigSource::GroupOverride
            } else {
                ConfigSource::Default
            },
            read_only: false,
            config_type: if entry.is_int {
                ConfigType::Int
            } else {
                ConfigType::String
            },
            documentation: entry.documentation,
            synonyms: vec![ConfigSynonym {
                name: entry.name.to_string(),
                value: entry.value,
                source: if entry.is_override {
                    ConfigSource::GroupOverride
                } else {
                    ConfigSource::Default
                },
            }],
        })
        .collect()
}

/// IncrementalAlterConfigs on a GROUP resource (single node).
fn alter_group_configs(
    ctx: &RequestContext,
    resource: &kafka_protocol::messages::incremental_alter_configs_request::AlterConfigsResource,
    validate_only: bool,
) -> incremental_alter_configs_response::AlterConfigsResourceResponse {
    let response = incremental_alter_configs_response::AlterConfigsResourceResponse::default()
        .with_resource_type(resource.resource_type)
        .with_resource_name(resource.resource_name.clone());
    let mut changes = Vec::with_capacity(resource.configs.len());
    for c in &resource.configs {
        match (c.config_operation, &c.value) {
            (OPERATION_SET, Some(value)) => {
                changes.push((c.name.to_string(), Some(value.to_string())))
            }
            (OPERATION_DELETE, _) => changes.push((c.name.to_string(), None)),
            (operation, _) => {
                return response
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(StrBytes::from_string(format!(
                        "operation {operation} on '{}' is not supported for groups",
                        c.name.as_str()
                    ))))
            }
        }
    }
    match ctx.broker.group_coordinator().alter_group_configs(
        resource.resource_name.as_str(),
        &changes,
        validate_only,
    ) {
        Ok(()) => response,
        Err(error) => response
            .with_error_code(crate::error_codes::group_error_code(&error))
            .with_error_message(Some(StrBytes::from_string(error.to_string()))),
    }
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

fn cluster_alter_result(
    resource_type: i8,
    resource_name: StrBytes,
    outcome: Result<(), ReplicationError>,
) -> AlterConfigsResourceResponse {
    let response = AlterConfigsResourceResponse::default()
        .with_resource_type(resource_type)
        .with_resource_name(resource_name);
    match outcome {
        Ok(()) => response,
        Err(error) => response
            .with_error_code(super::cluster::replication_error_code(&error))
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
    if let Some(cluster) = &ctx.cluster {
        let mut responses = Vec::with_capacity(request.resources.len());
        for resource in request.resources {
            let configs: BTreeMap<String, String> = resource
                .configs
                .iter()
                .filter_map(|c| {
                    c.value
                        .as_ref()
                        .map(|v| (c.name.to_string(), v.to_string()))
                })
                .collect();
            let outcome = match only_topics(resource.resource_type) {
                Err(error) => Err(error.into()),
                Ok(()) => {
                    cluster
                        .replace_topic_configs(
                            resource.resource_name.as_str(),
                            configs,
                            request.validate_only,
                        )
                        .await
                }
            };
            responses.push(cluster_alter_result(
                resource.resource_type,
                resource.resource_name,
                outcome,
            ));
        }
        return AlterConfigsResponse::default().with_responses(responses);
    }
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
    if let Some(cluster) = &ctx.cluster {
        let mut responses = Vec::with_capacity(request.resources.len());
        for resource in request.resources {
            let mut set = BTreeMap::new();
            let mut delete = Vec::new();
            let mut refused = None;
            for c in &resource.configs {
                match (c.config_operation, &c.value) {
                    (OPERATION_SET, Some(value)) => {
                        set.insert(c.name.to_string(), value.to_string());
                    }
                    (OPERATION_DELETE, _) => delete.push(c.name.to_string()),
                    (operation, _) => {
                        refused = Some(BrokerError::InvalidConfig(format!(
                            "operation {operation} on '{}' is not supported (only SET and DELETE)",
                            c.name.as_str()
                        )))
                    }
                }
            }
            let checked =
                only_topics(resource.resource_type).and_then(|()| refused.map_or(Ok(()), Err));
            let outcome = match checked {
                Err(error) => Err(error.into()),
                Ok(()) => {
                    cluster
                        .alter_topic_configs(
                            resource.resource_name.as_str(),
                            set,
                            delete,
                            request.validate_only,
                        )
                        .await
                }
            };
            let response =
                cluster_alter_result(resource.resource_type, resource.resource_name, outcome);
            responses.push(
                incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                    .with_error_code(response.error_code)
                    .with_error_message(response.error_message)
                    .with_resource_type(response.resource_type)
                    .with_resource_name(response.resource_name),
            );
        }
        return IncrementalAlterConfigsResponse::default().with_responses(responses);
    }
    let responses = request
        .resources
        .into_iter()
        .map(|resource| {
            if resource.resource_type == RESOURCE_GROUP {
                return alter_group_configs(ctx, &resource, request.validate_only);
            }
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
