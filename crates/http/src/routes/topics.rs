//! Topics: list, create, delete, configs and partitions.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use sluice_broker::replication::ClusterBroker;
use sluice_broker::{ConfigChange, ConfigSource, ConfigType, Partition, Topic};

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath};
use crate::model::{
    AlterTopicConfigsRequest, CreateTopicRequest, ErrorBody, PartitionInfo, TopicConfigEntry,
    TopicDetail, TopicSummary,
};
use crate::AppState;

fn topic_or_404(state: &AppState, name: &str) -> ApiResult<Arc<Topic>> {
    state
        .context
        .broker
        .topic(name)
        .ok_or_else(|| ApiError::NotFound(format!("unknown topic '{name}'")))
}

fn partition_info(state: &AppState, partition: &Partition) -> PartitionInfo {
    let node = state.context.broker.node_id();
    PartitionInfo {
        partition: partition.index(),
        log_start_offset: partition.log_start_offset(),
        log_end_offset: partition.log_end_offset(),
        high_watermark: partition.high_watermark(),
        size_bytes: partition.log().size_bytes(),
        segments: partition.log().segment_count() as u64,
        leader: node,
        leader_epoch: 0,
        replicas: vec![node],
        isr: vec![node],
    }
}

/// A replicated topic's partitions: leader, epoch, replicas and ISR as Metadata reports them;
/// offsets and sizes from this node's replica, or -1 and 0 where this node holds none.
fn cluster_partitions(
    cluster: &ClusterBroker,
    topic: &sluice_cluster::metadata::TopicMetadata,
) -> Vec<PartitionInfo> {
    let ids = |nodes: Vec<u64>| -> Vec<i32> {
        nodes
            .into_iter()
            .map(|id| i32::try_from(id).unwrap_or(-1))
            .collect()
    };
    (0..topic.assignments.len() as i32)
        .map(|index| {
            let view = cluster.partition_view(topic, index);
            let log = cluster
                .replica(topic.topic_id, index)
                .map(|r| Arc::clone(r.log()));
            PartitionInfo {
                partition: index,
                log_start_offset: log.as_ref().map_or(-1, |l| l.log_start_offset()),
                log_end_offset: log.as_ref().map_or(-1, |l| l.log_end_offset()),
                high_watermark: log.as_ref().map_or(-1, |l| l.high_watermark()),
                size_bytes: log.as_ref().map_or(0, |l| l.size_bytes()),
                segments: log.as_ref().map_or(0, |l| l.segment_count() as u64),
                leader: view
                    .leader
                    .and_then(|id| i32::try_from(id).ok())
                    .unwrap_or(-1),
                leader_epoch: view.leader_epoch,
                replicas: ids(view.replicas),
                isr: ids(view.isr),
            }
        })
        .collect()
}

fn detail(state: &AppState, topic: &Topic) -> TopicDetail {
    TopicDetail {
        name: topic.name().to_string(),
        id: topic.id().to_string(),
        internal: topic.is_internal(),
        partitions: topic
            .partitions()
            .iter()
            .map(|p| partition_info(state, p))
            .collect(),
        configs: topic.config().overrides().clone(),
    }
}

/// Every topic with its partition count, message count and size.
#[utoipa::path(get, path = "/api/topics", tag = "topics", security(("basic" = [])),
    responses(
        (status = 200, description = "Topics, by name", body = Vec<TopicSummary>),
        (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
pub async fn list_topics(State(state): State<Arc<AppState>>) -> Json<Vec<TopicSummary>> {
    let topics = state
        .context
        .broker
        .topics()
        .iter()
        .map(|topic| {
            let partitions = topic.partitions();
            TopicSummary {
                name: topic.name().to_string(),
                id: topic.id().to_string(),
                partitions: topic.partition_count(),
                internal: topic.is_internal(),
                messages: partitions
                    .iter()
                    .map(|p| (p.high_watermark() - p.log_start_offset()).max(0))
                    .sum(),
                size_bytes: partitions.iter().map(|p| p.log().size_bytes()).sum(),
            }
        })
        .collect();
    Json(topics)
}

/// Creates a topic (as CreateTopics): invalid names, counts or configs are 400 with the reason.
#[utoipa::path(post, path = "/api/topics", tag = "topics", security(("basic" = [])),
    request_body = CreateTopicRequest,
    responses(
        (status = 201, description = "Created", body = TopicDetail),
        (status = 400, description = "Invalid name, partition count or config", body = ErrorBody),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody),
        (status = 409, description = "The topic exists", body = ErrorBody)))]
pub async fn create_topic(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<CreateTopicRequest>,
) -> ApiResult<(StatusCode, Json<TopicDetail>)> {
    let broker = Arc::clone(&state.context.broker);
    // Creation writes and fsyncs files.
    let topic = tokio::task::spawn_blocking(move || {
        broker.create_topic(
            &request.name,
            request.partitions.unwrap_or(-1),
            request.configs,
            false,
        )
    })
    .await
    .map_err(|error| ApiError::Internal(format!("create topic task: {error}")))??;
    Ok((StatusCode::CREATED, Json(detail(&state, &topic))))
}

/// One topic with its partitions and config overrides.
#[utoipa::path(get, path = "/api/topics/{name}", tag = "topics", security(("basic" = [])),
    params(("name" = String, Path, description = "Topic name")),
    responses(
        (status = 200, description = "The topic", body = TopicDetail),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 404, description = "No such topic", body = ErrorBody)))]
pub async fn get_topic(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<TopicDetail>> {
    let topic = topic_or_404(&state, &name)?;
    Ok(Json(detail(&state, &topic)))
}

/// Deletes a topic and its data.
#[utoipa::path(delete, path = "/api/topics/{name}", tag = "topics", security(("basic" = [])),
    params(("name" = String, Path, description = "Topic name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody),
        (status = 404, description = "No such topic", body = ErrorBody)))]
pub async fn delete_topic(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let broker = Arc::clone(&state.context.broker);
    tokio::task::spawn_blocking(move || broker.delete_topic(&name))
        .await
        .map_err(|error| ApiError::Internal(format!("delete topic task: {error}")))??;
    Ok(StatusCode::NO_CONTENT)
}

fn config_entries(state: &AppState, name: &str) -> ApiResult<Vec<TopicConfigEntry>> {
    let entries = state.context.broker.describe_topic_configs(name)?;
    Ok(entries
        .into_iter()
        .map(|entry| TopicConfigEntry {
            name: entry.name,
            value: entry.value,
            source: match entry.source {
                ConfigSource::TopicOverride => "topic_override",
                ConfigSource::GroupOverride => "group_override",
                ConfigSource::StaticBroker => "static_broker",
                ConfigSource::Default => "default",
            }
            .into(),
            read_only: entry.read_only,
            config_type: config_type_name(entry.config_type).into(),
            documentation: entry.documentation.to_string(),
        })
        .collect())
}

fn config_type_name(kind: ConfigType) -> &'static str {
    match kind {
        ConfigType::Boolean => "boolean",
        ConfigType::String => "string",
        ConfigType::Int => "int",
        ConfigType::Short => "short",
        ConfigType::Long => "long",
        ConfigType::Double => "double",
        ConfigType::List => "list",
        ConfigType::Class => "class",
        ConfigType::Password => "password",
    }
}

/// Every supported config of the topic with its value and where it comes from.
#[utoipa::path(get, path = "/api/topics/{name}/configs", tag = "topics", security(("basic" = [])),
    params(("name" = String, Path, description = "Topic name")),
    responses(
        (status = 200, description = "Configs, by name", body = Vec<TopicConfigEntry>),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 404, description = "No such topic", body = ErrorBody)))]
pub async fn get_configs(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Vec<TopicConfigEntry>>> {
    Ok(Json(config_entries(&state, &name)?))
}

/// Changes config overrides (as IncrementalAlterConfigs, or AlterConfigs with `replace`);
/// answers the configs after the change. An invalid config is 400 with the reason.
#[utoipa::path(put, path = "/api/topics/{name}/configs", tag = "topics", security(("basic" = [])),
    params(("name" = String, Path, description = "Topic name")),
    request_body = AlterTopicConfigsRequest,
    responses(
        (status = 200, description = "The configs after the change", body = Vec<TopicConfigEntry>),
        (status = 400, description = "Unknown key or invalid value", body = ErrorBody),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody),
        (status = 404, description = "No such topic", body = ErrorBody)))]
pub async fn put_configs(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    ApiJson(request): ApiJson<AlterTopicConfigsRequest>,
) -> ApiResult<Json<Vec<TopicConfigEntry>>> {
    topic_or_404(&state, &name)?;
    let broker = Arc::clone(&state.context.broker);
    let topic = name.clone();
    tokio::task::spawn_blocking(move || {
        if request.replace {
            let configs: BTreeMap<String, String> = request
                .configs
                .into_iter()
                .filter_map(|(key, value)| value.map(|value| (key, value)))
                .collect();
            broker.replace_topic_configs(&topic, configs, false)
        } else {
            let changes = request
                .configs
                .into_iter()
                .map(|(key, value)| match value {
                    Some(value) => ConfigChange::Set(key, value),
                    None => ConfigChange::Delete(key),
                })
                .collect();
            broker.change_topic_configs(&topic, changes, false)
        }
    })
    .await
    .map_err(|error| ApiError::Internal(format!("alter configs task: {error}")))??;
    Ok(Json(config_entries(&state, &name)?))
}

/// Each partition's log start, log end, high watermark, size on disk, leader, leader epoch,
/// replicas and ISR. In cluster mode a replicated topic's leaders are the cluster's (any node
/// answers); offsets and sizes are this node's replica's, -1 and 0 where it holds none.
#[utoipa::path(get, path = "/api/topics/{name}/partitions", tag = "topics", security(("basic" = [])),
    params(("name" = String, Path, description = "Topic name")),
    responses(
        (status = 200, description = "Partitions, by index", body = Vec<PartitionInfo>),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 404, description = "No such topic", body = ErrorBody)))]
pub async fn partitions(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Vec<PartitionInfo>>> {
    if let Some(cluster) = &state.context.cluster {
        if let Some(topic) = cluster.topic(&name) {
            return Ok(Json(cluster_partitions(cluster, &topic)));
        }
        if state.context.broker.topic(&name).is_none() {
            if let Some(topic) = cluster.topic_caught_up(&name).await {
                return Ok(Json(cluster_partitions(cluster, &topic)));
            }
        }
    }
    let topic = topic_or_404(&state, &name)?;
    Ok(Json(
        topic
            .partitions()
            .iter()
            .map(|p| partition_info(&state, p))
            .collect(),
    ))
}
