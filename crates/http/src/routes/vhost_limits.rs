//! RabbitMQ's vhost limits through its management API's paths: `GET /api/vhost-limits`,
//! `PUT/DELETE /api/vhost-limits/{vhost}/{name}` with `max-connections` or `max-queues`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath};
use crate::model::{ErrorBody, PutVhostLimitRequest, VhostLimitInfo};
use crate::AppState;

#[utoipa::path(get, path = "/api/vhost-limits", tag = "users", security(("basic" = [])),
    responses(
        (status = 200, description = "Every limit set, by vhost", body = Vec<VhostLimitInfo>),
        (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
pub async fn list_vhost_limits(State(state): State<Arc<AppState>>) -> Json<Vec<VhostLimitInfo>> {
    Json(
        state
            .context
            .vhost_limits
            .all()
            .into_iter()
            .map(|(vhost, value)| VhostLimitInfo { vhost, value })
            .collect(),
    )
}

#[utoipa::path(put, path = "/api/vhost-limits/{vhost}/{name}", tag = "users", security(("basic" = [])),
    params(("vhost" = String, Path, description = "Virtual host (`%2F` for `/`)"),
           ("name" = String, Path, description = "`max-connections` or `max-queues`")),
    request_body = PutVhostLimitRequest,
    responses(
        (status = 204, description = "Set"),
        (status = 400, description = "Unknown limit", body = ErrorBody),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody)))]
pub async fn put_vhost_limit(
    State(state): State<Arc<AppState>>,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
    ApiJson(request): ApiJson<PutVhostLimitRequest>,
) -> ApiResult<StatusCode> {
    state
        .context
        .vhost_limits
        .set(&vhost, &name, Some(request.value))
        .await
        .map_err(|error| ApiError::BadRequest(format!("{error}: not a vhost limit")))?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/api/vhost-limits/{vhost}/{name}", tag = "users", security(("basic" = [])),
    params(("vhost" = String, Path, description = "Virtual host (`%2F` for `/`)"),
           ("name" = String, Path, description = "`max-connections` or `max-queues`")),
    responses(
        (status = 204, description = "Cleared"),
        (status = 400, description = "Unknown limit", body = ErrorBody),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody)))]
pub async fn delete_vhost_limit(
    State(state): State<Arc<AppState>>,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    state
        .context
        .vhost_limits
        .set(&vhost, &name, None)
        .await
        .map_err(|error| ApiError::BadRequest(format!("{error}: not a vhost limit")))?;
    Ok(StatusCode::NO_CONTENT)
}
