//! AMQP virtual hosts, at RabbitMQ's management paths: `GET /api/vhosts`, and
//! `GET/PUT/DELETE /api/vhosts/{name}` (`%2F` for `/`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use sluice_broker::vhost::{Created, QueueSummary, VirtualHost};

use crate::error::{ApiError, ApiResult};
use crate::extract::ApiPath;
use crate::model::{ErrorBody, VhostInfo};
use crate::AppState;

fn vhost_info(vhost: &VirtualHost) -> VhostInfo {
    let queues = vhost.queues();
    let messages = queues
        .iter()
        .map(|(_, queue)| match queue {
            QueueSummary::Classic(queue) => {
                u64::from(queue.message_count()) + queue.unacked_count() as u64
            }
            QueueSummary::Stream(_) => 0,
        })
        .sum();
    VhostInfo {
        name: vhost.vhost_name().to_string(),
        queues: queues.len() as u64,
        exchanges: vhost.exchanges().len() as u64,
        connections: vhost.connection_count(),
        messages,
    }
}

/// Every virtual host, `/` first.
#[utoipa::path(get, path = "/api/vhosts", tag = "amqp", security(("basic" = [])),
    responses(
        (status = 200, description = "Virtual hosts", body = Vec<VhostInfo>),
        (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
pub async fn list_vhosts(State(state): State<Arc<AppState>>) -> Json<Vec<VhostInfo>> {
    Json(
        state
            .context
            .vhosts
            .list()
            .iter()
            .map(|vhost| vhost_info(vhost))
            .collect(),
    )
}

#[utoipa::path(get, path = "/api/vhosts/{name}", tag = "amqp", security(("basic" = [])),
    params(("name" = String, Path, description = "Virtual host (`%2F` for `/`)")),
    responses(
        (status = 200, description = "The virtual host", body = VhostInfo),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 404, description = "No such virtual host", body = ErrorBody)))]
pub async fn get_vhost(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<VhostInfo>> {
    let vhost = state
        .context
        .vhosts
        .get(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no vhost '{name}'")))?;
    Ok(Json(vhost_info(&vhost)))
}

/// Creates a virtual host (nothing happens if it exists). Nobody has permissions on a new
/// vhost: grant them with `PUT /api/permissions/{vhost}/{user}`.
#[utoipa::path(put, path = "/api/vhosts/{name}", tag = "amqp", security(("basic" = [])),
    params(("name" = String, Path, description = "Virtual host (`%2F` for `/`)")),
    responses(
        (status = 201, description = "Created"),
        (status = 204, description = "Already there"),
        (status = 400, description = "Not a valid vhost name", body = ErrorBody),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody)))]
pub async fn put_vhost(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let vhosts = Arc::clone(&state.context.vhosts);
    let created = tokio::task::spawn_blocking(move || vhosts.create(&name))
        .await
        .map_err(|error| ApiError::Internal(format!("creating the vhost: {error}")))??;
    Ok(match created.1 {
        Created::New => StatusCode::CREATED,
        Created::Existing => StatusCode::NO_CONTENT,
    })
}

/// Deletes a virtual host with its exchanges, queues and messages; its AMQP connections are
/// closed (320 CONNECTION_FORCED), and on a single node its permissions and limits go too.
/// `/` cannot be deleted.
#[utoipa::path(delete, path = "/api/vhosts/{name}", tag = "amqp", security(("basic" = [])),
    params(("name" = String, Path, description = "Virtual host")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "The default vhost", body = ErrorBody),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody),
        (status = 404, description = "No such virtual host", body = ErrorBody)))]
pub async fn delete_vhost(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    state.context.vhosts.delete(&name).await?;
    // Permissions and limits are the cluster's, vhosts each node's: in a cluster another
    // node may still have a vhost of this name, so they stay.
    if state.context.cluster.is_none() {
        state
            .context
            .users
            .forget_vhost(&name)
            .await
            .map_err(super::users::store_error)?;
        state
            .context
            .vhost_limits
            .forget_vhost(&name)
            .await
            .map_err(super::users::store_error)?;
    }
    tracing::info!(vhost = %name, "vhost deleted through the HTTP API");
    Ok(StatusCode::NO_CONTENT)
}
