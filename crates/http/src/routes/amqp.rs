//! AMQP topology: exchanges, queues, bindings, connections and channels.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use sluice_broker::vhost::{Destination, Exchange, QueueSummary, VhostError, VirtualHost};
use sluice_broker::Protocol;

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::field_value::{json_to_table, table_to_json};
use crate::model::{
    BindingInfo, ChannelInfo, ConnectionInfo, DeclareExchangeRequest, DeclareQueueRequest,
    DeleteExchangeQuery, DeleteQueueQuery, ErrorBody, ExchangeInfo, PurgeResponse, QueueInfo,
    VhostQuery,
};
use crate::AppState;

/// The default exchange's name in paths (a path segment cannot be empty), as in RabbitMQ.
pub const DEFAULT_EXCHANGE_ALIAS: &str = "amq.default";

pub fn exchange_name(path_name: &str) -> &str {
    if path_name == DEFAULT_EXCHANGE_ALIAS {
        ""
    } else {
        path_name
    }
}

/// The vhost a route acts on: `vhost` if given (404 if there is none of that name), else `/`.
pub fn vhost_or_404(state: &AppState, vhost: Option<&str>) -> ApiResult<Arc<VirtualHost>> {
    let name = vhost.unwrap_or(sluice_broker::vhost::DEFAULT_VHOST);
    state
        .context
        .vhosts
        .get(name)
        .ok_or_else(|| ApiError::NotFound(format!("no vhost '{name}'")))
}

/// The vhosts a listing covers: the one asked for, or all of them.
fn listed_vhosts(state: &AppState, vhost: Option<&str>) -> ApiResult<Vec<Arc<VirtualHost>>> {
    match vhost {
        Some(_) => Ok(vec![vhost_or_404(state, vhost)?]),
        None => Ok(state.context.vhosts.list()),
    }
}

fn exchange_info(vhost: &VirtualHost, exchange: &Exchange) -> ExchangeInfo {
    ExchangeInfo {
        vhost: vhost.vhost_name().to_string(),
        name: exchange.name.clone(),
        kind: exchange.kind.as_str().to_string(),
        durable: exchange.durable,
        auto_delete: exchange.auto_delete,
        internal: exchange.internal,
        arguments: table_to_json(&exchange.arguments),
    }
}

/// Every exchange (the default exchange is named `""`).
#[utoipa::path(get, path = "/api/exchanges", tag = "amqp", security(("basic" = [])),
    params(VhostQuery),
    responses(
        (status = 200, description = "Exchanges, by name", body = Vec<ExchangeInfo>),
        (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
pub async fn list_exchanges(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<VhostQuery>,
) -> ApiResult<Json<Vec<ExchangeInfo>>> {
    let mut exchanges = Vec::new();
    for vhost in listed_vhosts(&state, query.vhost.as_deref())? {
        exchanges.extend(vhost.exchanges().iter().map(|e| exchange_info(&vhost, e)));
    }
    Ok(Json(exchanges))
}

/// Declares an exchange (as exchange.declare; redeclaring with other properties is 400).
#[utoipa::path(post, path = "/api/exchanges", tag = "amqp", security(("basic" = [])),
    params(VhostQuery),
    request_body = DeclareExchangeRequest,
    responses(
        (status = 201, description = "Declared (or already there with these properties)", body = ExchangeInfo),
        (status = 400, description = "Invalid name, type or arguments, or inequivalent to the existing one", body = ErrorBody),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 403, description = "Not an administrator, or a reserved name", body = ErrorBody)))]
pub async fn declare_exchange(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<VhostQuery>,
    ApiJson(request): ApiJson<DeclareExchangeRequest>,
) -> ApiResult<(StatusCode, Json<ExchangeInfo>)> {
    check_name(&request.name, "exchange")?;
    if request.name.is_empty() || request.name == DEFAULT_EXCHANGE_ALIAS {
        return Err(ApiError::Forbidden(
            "the default exchange cannot be declared".into(),
        ));
    }
    let arguments = json_to_table(&request.arguments)?;
    let vhost = vhost_or_404(&state, query.vhost.as_deref())?;
    vhost.declare_exchange(
        &request.name,
        &request.kind,
        false,
        request.durable,
        request.auto_delete,
        request.internal,
        arguments,
    )?;
    let exchange = vhost.exchange(&request.name).ok_or_else(|| {
        ApiError::Conflict(format!("exchange '{}' was deleted meanwhile", request.name))
    })?;
    Ok((StatusCode::CREATED, Json(exchange_info(&vhost, &exchange))))
}

/// AMQP names are short strings: at most 255 bytes.
pub fn check_name(name: &str, what: &str) -> ApiResult<()> {
    if name.len() > 255 {
        return Err(ApiError::BadRequest(format!(
            "{what} name longer than 255 bytes"
        )));
    }
    Ok(())
}

/// One exchange (`amq.default` names the default exchange).
#[utoipa::path(get, path = "/api/exchanges/{name}", tag = "amqp", security(("basic" = [])),
    params(("name" = String, Path, description = "Exchange name (`amq.default` for the default exchange)"), VhostQuery),
    responses(
        (status = 200, description = "The exchange", body = ExchangeInfo),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 404, description = "No such exchange", body = ErrorBody)))]
pub async fn get_exchange(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<VhostQuery>,
) -> ApiResult<Json<ExchangeInfo>> {
    let vhost = vhost_or_404(&state, query.vhost.as_deref())?;
    let exchange = vhost
        .exchange(exchange_name(&name))
        .ok_or_else(|| ApiError::NotFound(format!("no exchange '{name}'")))?;
    Ok(Json(exchange_info(&vhost, &exchange)))
}

/// Deletes an exchange and its bindings (`if_unused`: 409 while it has bindings).
#[utoipa::path(delete, path = "/api/exchanges/{name}", tag = "amqp", security(("basic" = [])),
    params(("name" = String, Path, description = "Exchange name"), DeleteExchangeQuery),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 403, description = "Not an administrator, or a built-in exchange", body = ErrorBody),
        (status = 404, description = "No such exchange", body = ErrorBody),
        (status = 409, description = "if_unused and the exchange has bindings", body = ErrorBody)))]
pub async fn delete_exchange(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<DeleteExchangeQuery>,
) -> ApiResult<StatusCode> {
    let vhost = vhost_or_404(&state, query.vhost.as_deref())?;
    let name = exchange_name(&name);
    if vhost.exchange(name).is_none() {
        return Err(ApiError::NotFound(format!("no exchange '{name}'")));
    }
    match vhost.delete_exchange(name, query.if_unused.unwrap_or(false)) {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(VhostError::PreconditionFailed(reason)) => Err(ApiError::Conflict(reason)),
        Err(error) => Err(error.into()),
    }
}

fn queue_info(
    state: &AppState,
    vhost: &VirtualHost,
    name: &str,
    queue: &QueueSummary,
) -> QueueInfo {
    let vhost_name = vhost.vhost_name().to_string();
    match queue {
        QueueSummary::Classic(queue) => {
            let ready = u64::from(queue.message_count());
            let unacked = queue.unacked_count() as u64;
            QueueInfo {
                vhost: vhost_name,
                name: name.to_string(),
                kind: "classic".into(),
                durable: queue.durable,
                exclusive: queue.exclusive_owner.is_some(),
                auto_delete: queue.auto_delete,
                arguments: table_to_json(&queue.arguments),
                messages_ready: ready,
                messages_unacked: unacked,
                messages: ready + unacked,
                consumers: u64::from(queue.consumer_count()),
                message_stats: state
                    .traffic
                    .queue_stats(vhost.vhost_name(), name, queue.stats()),
            }
        }
        QueueSummary::Stream(_) => {
            // A stream is its topic: its messages are the topic's, and nothing is unacked.
            let messages: i64 = state
                .context
                .broker
                .topic(name)
                .map(|topic| {
                    topic
                        .partitions()
                        .iter()
                        .map(|p| (p.high_watermark() - p.log_start_offset()).max(0))
                        .sum()
                })
                .unwrap_or(0);
            let mut arguments = serde_json::Map::new();
            arguments.insert("x-queue-type".into(), "stream".into());
            QueueInfo {
                vhost: vhost_name,
                name: name.to_string(),
                kind: "stream".into(),
                durable: true,
                exclusive: false,
                auto_delete: false,
                arguments: serde_json::Value::Object(arguments),
                messages_ready: messages as u64,
                messages_unacked: 0,
                messages: messages as u64,
                consumers: 0,
                message_stats: Default::default(),
            }
        }
    }
}

/// Every queue with its ready, unacked and consumer counts and message rates.
#[utoipa::path(get, path = "/api/queues", tag = "amqp", security(("basic" = [])),
    params(VhostQuery),
    responses(
        (status = 200, description = "Queues, by name", body = Vec<QueueInfo>),
        (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
pub async fn list_queues(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<VhostQuery>,
) -> ApiResult<Json<Vec<QueueInfo>>> {
    let mut queues = Vec::new();
    for vhost in listed_vhosts(&state, query.vhost.as_deref())? {
        queues.extend(
            vhost
                .queues()
                .iter()
                .map(|(name, queue)| queue_info(&state, &vhost, name, queue)),
        );
    }
    Ok(Json(queues))
}

/// Declares a queue (as queue.declare; `x-queue-type: stream` makes it the topic of that
/// name). Redeclaring with other properties or arguments is 400.
#[utoipa::path(post, path = "/api/queues", tag = "amqp", security(("basic" = [])),
    params(VhostQuery),
    request_body = DeclareQueueRequest,
    responses(
        (status = 201, description = "Declared (or already there with these properties)", body = QueueInfo),
        (status = 400, description = "Invalid name or arguments, or inequivalent to the existing one", body = ErrorBody),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 403, description = "Not an administrator, or a reserved name", body = ErrorBody)))]
pub async fn declare_queue(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<VhostQuery>,
    ApiJson(request): ApiJson<DeclareQueueRequest>,
) -> ApiResult<(StatusCode, Json<QueueInfo>)> {
    check_name(&request.name, "queue")?;
    if request.name.is_empty() {
        return Err(ApiError::BadRequest("a queue name is required".into()));
    }
    let arguments = json_to_table(&request.arguments)?;
    let vhost = vhost_or_404(&state, query.vhost.as_deref())?;
    let (name, _, _) = vhost.declare_queue(
        &request.name,
        false,
        request.durable,
        false,
        request.auto_delete,
        arguments,
        state.session_connection_id(),
    )?;
    let queue = vhost
        .queue(&name)
        .ok_or_else(|| ApiError::Conflict(format!("queue '{name}' was deleted meanwhile")))?;
    Ok((
        StatusCode::CREATED,
        Json(queue_info(&state, &vhost, &name, &queue)),
    ))
}

fn queue_or_404(vhost: &VirtualHost, name: &str) -> ApiResult<QueueSummary> {
    vhost
        .queue(name)
        .ok_or_else(|| ApiError::NotFound(format!("no queue '{name}'")))
}

/// One queue.
#[utoipa::path(get, path = "/api/queues/{name}", tag = "amqp", security(("basic" = [])),
    params(("name" = String, Path, description = "Queue name"), VhostQuery),
    responses(
        (status = 200, description = "The queue", body = QueueInfo),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 404, description = "No such queue", body = ErrorBody)))]
pub async fn get_queue(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<VhostQuery>,
) -> ApiResult<Json<QueueInfo>> {
    let vhost = vhost_or_404(&state, query.vhost.as_deref())?;
    let queue = queue_or_404(&vhost, &name)?;
    Ok(Json(queue_info(&state, &vhost, &name, &queue)))
}

/// Deletes a queue and its messages (a stream queue leaves its topic and data).
#[utoipa::path(delete, path = "/api/queues/{name}", tag = "amqp", security(("basic" = [])),
    params(("name" = String, Path, description = "Queue name"), DeleteQueueQuery),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody),
        (status = 404, description = "No such queue", body = ErrorBody),
        (status = 409, description = "if_unused / if_empty not met, or exclusive to a connection", body = ErrorBody)))]
pub async fn delete_queue(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<DeleteQueueQuery>,
) -> ApiResult<StatusCode> {
    let vhost = vhost_or_404(&state, query.vhost.as_deref())?;
    queue_or_404(&vhost, &name)?;
    match vhost.delete_queue(
        &name,
        query.if_unused.unwrap_or(false),
        query.if_empty.unwrap_or(false),
        state.session_connection_id(),
    ) {
        Ok(_) => Ok(StatusCode::NO_CONTENT),
        Err(VhostError::PreconditionFailed(reason)) => Err(ApiError::Conflict(reason)),
        Err(error) => Err(error.into()),
    }
}

/// Removes every ready message of a queue (unacked ones stay with their consumers).
#[utoipa::path(post, path = "/api/queues/{name}/purge", tag = "amqp", security(("basic" = [])),
    params(("name" = String, Path, description = "Queue name"), VhostQuery),
    responses(
        (status = 200, description = "Purged", body = PurgeResponse),
        (status = 400, description = "A stream queue (purge the topic's records instead)", body = ErrorBody),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody),
        (status = 404, description = "No such queue", body = ErrorBody),
        (status = 409, description = "Exclusive to a connection", body = ErrorBody)))]
pub async fn purge_queue(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<VhostQuery>,
) -> ApiResult<Json<PurgeResponse>> {
    let vhost = vhost_or_404(&state, query.vhost.as_deref())?;
    let purged = vhost.purge_queue(&name, state.session_connection_id())?;
    Ok(Json(PurgeResponse {
        messages_purged: u64::from(purged),
    }))
}

/// Every binding (exchange to queue, exchange to exchange).
#[utoipa::path(get, path = "/api/bindings", tag = "amqp", security(("basic" = [])),
    params(VhostQuery),
    responses(
        (status = 200, description = "Bindings, by source", body = Vec<BindingInfo>),
        (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
pub async fn list_bindings(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<VhostQuery>,
) -> ApiResult<Json<Vec<BindingInfo>>> {
    let mut bindings = Vec::new();
    for vhost in listed_vhosts(&state, query.vhost.as_deref())? {
        bindings.extend(vhost.bindings().into_iter().map(|binding| {
            let (destination, destination_type) = match binding.destination {
                Destination::Queue(name) => (name, "queue"),
                Destination::Exchange(name) => (name, "exchange"),
            };
            BindingInfo {
                vhost: vhost.vhost_name().to_string(),
                source: binding.source,
                destination,
                destination_type: destination_type.into(),
                routing_key: binding.routing_key,
                arguments: table_to_json(&binding.arguments),
            }
        }));
    }
    Ok(Json(bindings))
}

/// Every client connection, Kafka and AMQP.
#[utoipa::path(get, path = "/api/connections", tag = "amqp", security(("basic" = [])),
    responses(
        (status = 200, description = "Connections, oldest first", body = Vec<ConnectionInfo>),
        (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
pub async fn list_connections(State(state): State<Arc<AppState>>) -> Json<Vec<ConnectionInfo>> {
    let mut channels: HashMap<u64, u64> = HashMap::new();
    for vhost in state.context.vhosts.list() {
        for channel in vhost.channels() {
            *channels.entry(channel.connection).or_default() += 1;
        }
    }
    Json(
        state
            .context
            .broker
            .connections()
            .list()
            .into_iter()
            .map(|connection| ConnectionInfo {
                id: connection.id,
                protocol: connection.protocol.name().to_string(),
                peer: connection.peer.to_string(),
                user: connection.user,
                client: connection.client,
                connected_at_ms: connection.connected_at_ms,
                channels: match (connection.protocol, connection.protocol_id) {
                    (Protocol::Amqp, Some(id)) => channels.get(&id).copied().unwrap_or(0),
                    _ => 0,
                },
            })
            .collect(),
    )
}

/// Every open AMQP channel of a client connection.
#[utoipa::path(get, path = "/api/channels", tag = "amqp", security(("basic" = [])),
    params(VhostQuery),
    responses(
        (status = 200, description = "Channels, by connection and number", body = Vec<ChannelInfo>),
        (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
pub async fn list_channels(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<VhostQuery>,
) -> ApiResult<Json<Vec<ChannelInfo>>> {
    // AMQP connection ids to the API's connection ids; channels of no registered connection
    // (the API's own short-lived sessions) are not listed.
    let ids: HashMap<u64, u64> = state
        .context
        .broker
        .connections()
        .list()
        .into_iter()
        .filter(|c| c.protocol == Protocol::Amqp)
        .filter_map(|c| c.protocol_id.map(|amqp_id| (amqp_id, c.id)))
        .collect();
    let mut channels = Vec::new();
    for vhost in listed_vhosts(&state, query.vhost.as_deref())? {
        channels.extend(vhost.channels().into_iter().filter_map(|channel| {
            Some(ChannelInfo {
                vhost: vhost.vhost_name().to_string(),
                connection: *ids.get(&channel.connection)?,
                channel: channel.channel,
                user: channel.user,
                consumers: channel.consumers,
                messages_unacked: channel.unacked,
                prefetch_count: channel.prefetch_count,
                global_prefetch_count: channel.global_prefetch_count,
                in_transaction: channel.in_transaction,
            })
        }));
    }
    Ok(Json(channels))
}
