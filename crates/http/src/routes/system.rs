//! Liveness, readiness, the overview, `/metrics` and the OpenAPI document.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sluice_broker::Protocol;

use crate::error::{ApiError, ApiResult};
use crate::extract::ApiPath;
use crate::model::{
    Alarm, ClusterInfo, ClusterNodeInfo, ConnectionCounts, DiskStats, ErrorBody, Health,
    MemoryStats, ObjectCounts, Overview, Readiness, ReadinessCheck,
};
use crate::AppState;

/// Liveness: 200 while the process answers. No credentials needed.
#[utoipa::path(get, path = "/api/health", tag = "system",
    responses((status = 200, description = "The process is alive", body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Readiness: storage open and writable, protocol listeners accepting. 503 when not ready.
#[utoipa::path(get, path = "/api/ready", tag = "system", security(("basic" = [])),
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready (the body says which check failed)", body = Readiness),
        (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let broker = &state.context.broker;
    let offline: Vec<String> = broker
        .topics()
        .iter()
        .flat_map(|topic| topic.partitions())
        .filter(|partition| partition.log().is_offline())
        .map(|partition| format!("{}-{}", partition.topic(), partition.index()))
        .collect();
    let data_dir = &broker.config().data_dir;
    let storage = match (sluice_broker::disk_space(data_dir), offline.is_empty()) {
        (None, _) => ReadinessCheck {
            name: "storage".into(),
            ok: false,
            detail: format!("data directory {} cannot be examined", data_dir.display()),
        },
        (Some(_), false) => ReadinessCheck {
            name: "storage".into(),
            ok: false,
            detail: format!("partition logs offline: {}", offline.join(", ")),
        },
        (Some(_), true) => ReadinessCheck {
            name: "storage".into(),
            ok: true,
            detail: format!("data directory {} open", data_dir.display()),
        },
    };
    let serving = state.serving.load(Ordering::Acquire);
    let listeners = ReadinessCheck {
        name: "listeners".into(),
        ok: serving,
        detail: if serving {
            state
                .context
                .listeners
                .iter()
                .map(|l| format!("{} on {}", l.protocol, l.address))
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            "the protocol listeners are not accepting".into()
        },
    };
    let checks = vec![storage, listeners];
    let ready = checks.iter().all(|check| check.ok);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(Readiness { ready, checks })).into_response()
}

/// Version, uptime, nodes, rates, disk, memory, connections, alarms and object counts.
#[utoipa::path(get, path = "/api/overview", tag = "system", security(("basic" = [])),
    responses(
        (status = 200, description = "The broker at a glance", body = Overview),
        (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
pub async fn overview(State(state): State<Arc<AppState>>) -> ApiResult<Json<Overview>> {
    let context = &state.context;
    let broker = Arc::clone(&context.broker);
    let data_dir = broker.config().data_dir.clone();
    // Walking the data directory touches the file system: off the async workers.
    let data_dir_bytes = tokio::task::spawn_blocking(move || directory_bytes(&data_dir))
        .await
        .map_err(|error| ApiError::Internal(format!("measuring the data directory: {error}")))?;
    let space = sluice_broker::disk_space(&broker.config().data_dir);
    let topics = broker.topics();
    let mut alarms = Vec::new();
    if let Some(reason) = context.vhosts.default_vhost().alarm() {
        let kind = if reason.contains("disk") {
            "disk"
        } else {
            "memory"
        };
        alarms.push(Alarm {
            kind: kind.into(),
            detail: reason,
        });
    }
    let registry = broker.connections();
    let vhosts = context.vhosts.list();
    Ok(Json(Overview {
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_ms: state.started_at.elapsed().as_millis() as u64,
        node_id: broker.node_id(),
        cluster_id: broker.cluster_id().to_string(),
        nodes: vec![context.node.clone()],
        listeners: context.listeners.clone(),
        traffic: state.traffic.stats(&state),
        disk: DiskStats {
            data_dir: sluice_broker::absolute_log_dir(&broker.config().data_dir)
                .display()
                .to_string(),
            data_dir_bytes,
            free_bytes: space.map(|s| s.usable_bytes),
            total_bytes: space.map(|s| s.total_bytes),
            free_limit_bytes: context.disk_free_limit_bytes,
        },
        memory: MemoryStats {
            rss_bytes: resident_set_bytes(),
            queued_message_bytes: context.vhosts.default_vhost().memory_bytes(),
            high_watermark_bytes: context.memory_high_watermark_bytes,
        },
        connections: ConnectionCounts {
            kafka: registry.count(Protocol::Kafka),
            amqp: registry.count(Protocol::Amqp),
        },
        alarms,
        counts: ObjectCounts {
            topics: topics.len() as u64,
            partitions: topics
                .iter()
                .map(|t| t.partition_count().max(0) as u64)
                .sum(),
            groups: broker.group_coordinator().list_groups().len() as u64,
            exchanges: vhosts.iter().map(|v| v.exchanges().len() as u64).sum(),
            queues: vhosts.iter().map(|v| v.queues().len() as u64).sum(),
        },
    }))
}

/// Prometheus text exposition. No credentials needed (as Prometheus scrapes).
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let body = state
        .context
        .metrics
        .as_ref()
        .map(|handle| handle.render())
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// This document. No credentials needed.
#[utoipa::path(get, path = "/api/openapi.json", tag = "system",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = Object)))]
pub async fn openapi_json(State(state): State<Arc<AppState>>) -> Response {
    match state.openapi.get() {
        Some(document) => Json(document.clone()).into_response(),
        None => ApiError::Internal("the OpenAPI document was not built".into()).into_response(),
    }
}

/// Bytes of every regular file under `dir` (symlinks not followed); unreadable parts count 0.
fn directory_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => pending.push(entry.path()),
                Ok(kind) if kind.is_file() => {
                    total += entry.metadata().map(|m| m.len()).unwrap_or(0);
                }
                _ => {}
            }
        }
    }
    total
}

/// VmRSS from /proc/self/status.
fn resident_set_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_bytes_adds_files_in_subdirectories() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a"), [0u8; 100]).expect("write");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("sub").join("b"), [0u8; 23]).expect("write");
        assert_eq!(directory_bytes(dir.path()), 123);
        assert!(resident_set_bytes().is_some_and(|rss| rss > 0));
    }
}

/// The cluster's nodes (id, transport and Kafka addresses, whether this node is connected to
/// each) and which one leads the metadata group, as this node knows them. A single node
/// answers with itself alone.
#[utoipa::path(get, path = "/api/cluster", tag = "system", security(("basic" = [])),
    responses(
        (status = 200, description = "The cluster as this node sees it", body = ClusterInfo),
        (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
pub async fn cluster(State(state): State<Arc<AppState>>) -> Json<ClusterInfo> {
    let own = &state.context.node;
    let Some(cluster) = &state.context.cluster else {
        return Json(ClusterInfo {
            clustered: false,
            node_id: own.node_id,
            metadata_leader: Some(own.node_id),
            nodes: vec![ClusterNodeInfo {
                node_id: own.node_id,
                cluster_address: None,
                kafka_address: format!("{}:{}", own.host, own.kafka_port),
                is_self: true,
                is_metadata_leader: true,
                connected: true,
            }],
        });
    };
    let leader = cluster.controller();
    let self_id = cluster.node_id();
    let transport = cluster.node().transport();
    let nodes = cluster
        .metadata()
        .brokers
        .iter()
        .map(|(&id, address)| ClusterNodeInfo {
            node_id: i32::try_from(id).unwrap_or(-1),
            cluster_address: Some(address.cluster_addr.clone()),
            kafka_address: address.kafka_addr.clone(),
            is_self: id == self_id,
            is_metadata_leader: leader == Some(id),
            connected: id == self_id || transport.is_connected(id),
        })
        .collect();
    Json(ClusterInfo {
        clustered: true,
        node_id: i32::try_from(self_id).unwrap_or(-1),
        metadata_leader: leader.and_then(|id| i32::try_from(id).ok()),
        nodes,
    })
}

/// Removes a node from the cluster: from the metadata Raft group and the broker list. Refused
/// (409) while any partition has a replica on the node: reassign those first
/// (AlterPartitionReassignments). Stop the node's process afterwards; the others stop
/// dialling it.
#[utoipa::path(delete, path = "/api/cluster/nodes/{id}", tag = "system", security(("basic" = [])),
    params(("id" = u64, Path, description = "Node id (--node-id)")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Not a cluster", body = ErrorBody),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody),
        (status = 404, description = "No such node", body = ErrorBody),
        (status = 409, description = "The node still hosts partition replicas, or is the last voter", body = ErrorBody),
        (status = 503, description = "No metadata leader performed the change in time", body = ErrorBody)))]
pub async fn remove_cluster_node(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<u64>,
) -> ApiResult<StatusCode> {
    use sluice_cluster::node::MembershipError;
    let Some(cluster) = &state.context.cluster else {
        return Err(ApiError::BadRequest(
            "this node is not part of a cluster".into(),
        ));
    };
    match cluster.node().remove_node(id).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(e @ MembershipError::UnknownNode(_)) => Err(ApiError::NotFound(e.to_string())),
        Err(e @ (MembershipError::Rejected(_) | MembershipError::LastVoter(_))) => {
            Err(ApiError::Conflict(e.to_string()))
        }
        Err(e) => Err(ApiError::NotReady(e.to_string())),
    }
}
