//! Users and AMQP permissions, as RabbitMQ's management API has them: `/api/users` and
//! `/api/permissions/{vhost}/{user}`. Administrators only, reads included (the list shows who
//! may log in). Passwords go into the store as salted keys and never come back out.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use sluice_auth::{AuthError, VhostPermissions};

use crate::auth::AuthenticatedUser;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath};
use crate::model::{PermissionInfo, PutPermissionsRequest, PutUserRequest, UserInfo};
use crate::AppState;

fn administrator(user: &AuthenticatedUser) -> ApiResult<()> {
    if user.administrator {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "user '{}' is not an administrator",
            user.name
        )))
    }
}

pub(super) fn store_error(error: AuthError) -> ApiError {
    match error {
        AuthError::NoSuchUser(_)
        | AuthError::NoPermissions(..)
        | AuthError::NoSuchCredential(_) => ApiError::NotFound(error.to_string()),
        AuthError::UserExists(_) => ApiError::Conflict(error.to_string()),
        AuthError::InvalidName(_) => ApiError::BadRequest(error.to_string()),
        AuthError::Io(..) | AuthError::Corrupt(..) => ApiError::Internal(error.to_string()),
        AuthError::Replication(_) => ApiError::NotReady(error.to_string()),
    }
}

fn user_info(user: &sluice_auth::User) -> UserInfo {
    UserInfo {
        name: user.name.clone(),
        tags: user.tags.join(","),
        loopback_only: user.loopback_only,
        scram_mechanisms: user
            .credentials
            .iter()
            .map(|c| c.mechanism.name().to_string())
            .collect(),
    }
}

fn parse_tags(tags: &str) -> Vec<String> {
    tags.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

#[utoipa::path(get, path = "/api/users", tag = "users", security(("basic" = [])),
    responses(
        (status = 200, description = "Every user", body = Vec<UserInfo>),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody)))]
pub async fn list_users(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<AuthenticatedUser>,
) -> ApiResult<Json<Vec<UserInfo>>> {
    administrator(&caller)?;
    Ok(Json(
        state.context.users.list().iter().map(user_info).collect(),
    ))
}

#[utoipa::path(get, path = "/api/users/{name}", tag = "users", security(("basic" = [])),
    params(("name" = String, Path, description = "User name")),
    responses(
        (status = 200, description = "The user", body = UserInfo),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody)))]
pub async fn get_user(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<AuthenticatedUser>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<UserInfo>> {
    administrator(&caller)?;
    let user = state
        .context
        .users
        .get(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no user '{name}'")))?;
    Ok(Json(user_info(&user)))
}

#[utoipa::path(put, path = "/api/users/{name}", tag = "users", security(("basic" = [])),
    params(("name" = String, Path, description = "User name")),
    request_body = PutUserRequest,
    responses(
        (status = 201, description = "Created"),
        (status = 204, description = "Updated"),
        (status = 400, description = "Invalid name, or a new user without a password", body = ErrorBody),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody)))]
pub async fn put_user(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    ApiJson(request): ApiJson<PutUserRequest>,
) -> ApiResult<StatusCode> {
    let users = &state.context.users;
    let tags = request.tags.as_deref().map(parse_tags);
    if users.get(&name).is_none() {
        let password = request
            .password
            .ok_or_else(|| ApiError::BadRequest("a new user needs a password".into()))?;
        users
            .add(&name, &password, tags.unwrap_or_default())
            .await
            .map_err(store_error)?;
        tracing::info!(user = %name, "user created through the HTTP API");
        return Ok(StatusCode::CREATED);
    }
    if let Some(password) = request.password {
        users
            .set_password(&name, &password)
            .await
            .map_err(store_error)?;
    }
    if let Some(tags) = tags {
        users.set_tags(&name, tags).await.map_err(store_error)?;
    }
    tracing::info!(user = %name, "user changed through the HTTP API");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/api/users/{name}", tag = "users", security(("basic" = [])),
    params(("name" = String, Path, description = "User name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody)))]
pub async fn delete_user(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    state
        .context
        .users
        .delete(&name)
        .await
        .map_err(store_error)?;
    tracing::info!(user = %name, "user deleted through the HTTP API");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/permissions", tag = "users", security(("basic" = [])),
    responses(
        (status = 200, description = "Every user's permissions on every virtual host", body = Vec<PermissionInfo>),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody)))]
pub async fn list_permissions(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<AuthenticatedUser>,
) -> ApiResult<Json<Vec<PermissionInfo>>> {
    administrator(&caller)?;
    let mut all = Vec::new();
    for user in state.context.users.list() {
        for (vhost, permissions) in &user.permissions {
            all.push(PermissionInfo {
                user: user.name.clone(),
                vhost: vhost.clone(),
                configure: permissions.configure.as_str().to_string(),
                write: permissions.write.as_str().to_string(),
                read: permissions.read.as_str().to_string(),
            });
        }
    }
    Ok(Json(all))
}

#[utoipa::path(put, path = "/api/permissions/{vhost}/{user}", tag = "users", security(("basic" = [])),
    params(("vhost" = String, Path, description = "Virtual host (`%2F` for `/`)"),
           ("user" = String, Path, description = "User name")),
    request_body = PutPermissionsRequest,
    responses(
        (status = 204, description = "Set"),
        (status = 400, description = "A pattern is not a regular expression", body = ErrorBody),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody)))]
pub async fn put_permissions(
    State(state): State<Arc<AppState>>,
    ApiPath((vhost, user)): ApiPath<(String, String)>,
    ApiJson(request): ApiJson<PutPermissionsRequest>,
) -> ApiResult<StatusCode> {
    let permissions = VhostPermissions::new(&request.configure, &request.write, &request.read)
        .map_err(|error| ApiError::BadRequest(format!("invalid pattern: {error}")))?;
    state
        .context
        .users
        .set_permissions(&user, &vhost, permissions)
        .await
        .map_err(store_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/api/permissions/{vhost}/{user}", tag = "users", security(("basic" = [])),
    params(("vhost" = String, Path, description = "Virtual host (`%2F` for `/`)"),
           ("user" = String, Path, description = "User name")),
    responses(
        (status = 204, description = "Cleared"),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody),
        (status = 404, description = "No such user or no permissions there", body = ErrorBody)))]
pub async fn delete_permissions(
    State(state): State<Arc<AppState>>,
    ApiPath((vhost, user)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    state
        .context
        .users
        .clear_permissions(&user, &vhost)
        .await
        .map_err(store_error)?;
    Ok(StatusCode::NO_CONTENT)
}

use crate::model::ErrorBody;
