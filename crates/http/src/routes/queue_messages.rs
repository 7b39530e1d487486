//! Messages of AMQP queues: get (peek with requeue, or take), publish a test message, and move
//! messages (e.g. out of a dead-letter queue back to where they came from).

use std::sync::Arc;

use amq_protocol_types::{AMQPValue, FieldTable};
use axum::extract::{Extension, State};
use axum::Json;
use base64::Engine;
use bytes::Bytes;
use sluice_broker::vhost::message::value_as_str;
use sluice_broker::vhost::{
    Delivery, DeliverySink, Message, MessageProperties, Session, Settle, VirtualHost,
};
use sluice_broker::DurableWait;

use super::amqp::{check_name, exchange_name, vhost_or_404};
use crate::auth::AuthenticatedUser;
use crate::encoded::encode;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::field_value::{json_to_table, table_to_json};
use crate::model::{
    AmqpProperties, ErrorBody, GetAckMode, GetMessagesRequest, MoveMessagesRequest,
    MoveMessagesResponse, PayloadEncoding, PublishRequest, PublishResponse, QueueMessage,
    VhostQuery,
};
use crate::AppState;

const GET_COUNT_MAX: u32 = 1000;
const MOVE_COUNT_MAX: u32 = 100_000;

/// The API's sessions only use basic.get, which returns messages directly: nothing is ever
/// pushed to them.
struct NoDeliveries;

impl DeliverySink for NoDeliveries {
    fn deliver(&self, _channel: u16, _delivery: Delivery<'_>) {}
    fn consumer_cancelled(&self, _channel: u16, _consumer_tag: &str) {}
}

/// A session closed however the request ends (also when the client goes away mid-request),
/// so messages it took and did not ack go back to their queue.
struct ApiSession(Arc<Session>);

impl ApiSession {
    fn open(vhost: &Arc<VirtualHost>, state: &AppState, user: &str) -> ApiSession {
        ApiSession(Session::new(
            Arc::clone(vhost),
            state.session_connection_id(),
            1,
            user.to_string(),
            Arc::new(NoDeliveries),
        ))
    }
}

impl Drop for ApiSession {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Whether every wait resolved to durable.
async fn all_durable(waits: Vec<DurableWait>) -> Result<(), String> {
    for wait in waits {
        match wait.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(error.to_string()),
            Err(_) => return Err("the store stopped before the message was durable".into()),
        }
    }
    Ok(())
}

fn short_string(value: &Option<String>, what: &str) -> ApiResult<()> {
    if value.as_ref().is_some_and(|v| v.len() > 255) {
        return Err(ApiError::BadRequest(format!(
            "property {what} longer than 255 bytes"
        )));
    }
    Ok(())
}

fn properties_from_json(
    properties: &AmqpProperties,
    user: &AuthenticatedUser,
) -> ApiResult<MessageProperties> {
    for (value, what) in [
        (&properties.content_type, "content_type"),
        (&properties.content_encoding, "content_encoding"),
        (&properties.correlation_id, "correlation_id"),
        (&properties.reply_to, "reply_to"),
        (&properties.expiration, "expiration"),
        (&properties.message_id, "message_id"),
        (&properties.kind, "type"),
        (&properties.user_id, "user_id"),
        (&properties.app_id, "app_id"),
    ] {
        short_string(value, what)?;
    }
    if let Some(expiration) = &properties.expiration {
        if expiration.parse::<u64>().is_err() {
            return Err(ApiError::BadRequest(format!(
                "expiration must be milliseconds as a non-negative integer, got '{expiration}'"
            )));
        }
    }
    // As AMQP's publish: user_id, when given, must be the authenticated user.
    if let Some(user_id) = &properties.user_id {
        if *user_id != user.name {
            return Err(ApiError::BadRequest(format!(
                "user_id property set to '{user_id}' but the authenticated user is '{}'",
                user.name
            )));
        }
    }
    if properties
        .delivery_mode
        .is_some_and(|mode| !(1..=2).contains(&mode))
    {
        return Err(ApiError::BadRequest(
            "delivery_mode must be 1 (transient) or 2 (persistent)".into(),
        ));
    }
    Ok(MessageProperties {
        content_type: properties.content_type.clone(),
        content_encoding: properties.content_encoding.clone(),
        headers: properties.headers.as_ref().map(json_to_table).transpose()?,
        delivery_mode: properties.delivery_mode,
        priority: properties.priority,
        correlation_id: properties.correlation_id.clone(),
        reply_to: properties.reply_to.clone(),
        expiration: properties.expiration.clone(),
        message_id: properties.message_id.clone(),
        timestamp: properties.timestamp,
        kind: properties.kind.clone(),
        user_id: properties.user_id.clone(),
        app_id: properties.app_id.clone(),
        cluster_id: None,
    })
}

fn properties_to_json(properties: &MessageProperties) -> AmqpProperties {
    AmqpProperties {
        content_type: properties.content_type.clone(),
        content_encoding: properties.content_encoding.clone(),
        headers: properties
            .headers
            .as_ref()
            .map(|table| match table_to_json(table) {
                serde_json::Value::Object(object) => object,
                _ => serde_json::Map::new(),
            }),
        delivery_mode: properties.delivery_mode,
        priority: properties.priority,
        correlation_id: properties.correlation_id.clone(),
        reply_to: properties.reply_to.clone(),
        expiration: properties.expiration.clone(),
        message_id: properties.message_id.clone(),
        timestamp: properties.timestamp,
        kind: properties.kind.clone(),
        user_id: properties.user_id.clone(),
        app_id: properties.app_id.clone(),
    }
}

/// Publishes one message to an exchange (`amq.default`: the default exchange, where the
/// routing key names the queue) and waits until it is stored.
#[utoipa::path(post, path = "/api/exchanges/{name}/publish", tag = "amqp", security(("basic" = [])),
    params(("name" = String, Path, description = "Exchange name (`amq.default` for the default exchange)"), VhostQuery),
    request_body = PublishRequest,
    responses(
        (status = 200, description = "Published; `routed` says whether a queue took it", body = PublishResponse),
        (status = 400, description = "Invalid payload or properties", body = ErrorBody),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 403, description = "Not an administrator, or an internal exchange", body = ErrorBody),
        (status = 404, description = "No such exchange", body = ErrorBody)))]
pub async fn publish(
    State(state): State<Arc<AppState>>,
    Extension(user): Extension<AuthenticatedUser>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<VhostQuery>,
    ApiJson(request): ApiJson<PublishRequest>,
) -> ApiResult<Json<PublishResponse>> {
    let exchange = exchange_name(&name).to_string();
    check_name(&exchange, "exchange")?;
    if request.routing_key.len() > 255 {
        return Err(ApiError::BadRequest(
            "routing key longer than 255 bytes".into(),
        ));
    }
    let body = match request.payload_encoding {
        PayloadEncoding::String => request.payload.into_bytes(),
        PayloadEncoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(request.payload.as_bytes())
            .map_err(|error| ApiError::BadRequest(format!("payload is not base64: {error}")))?,
    };
    let vhost = vhost_or_404(&state, query.vhost.as_deref())?;
    let body_max = vhost.config().message_bytes_max as usize;
    if body.len() > body_max {
        return Err(ApiError::BadRequest(format!(
            "payload of {} bytes is over the largest message body ({body_max} bytes)",
            body.len()
        )));
    }
    let message = Message {
        exchange,
        routing_key: request.routing_key,
        properties: properties_from_json(&request.properties, &user)?,
        body: Bytes::from(body),
    };
    let outcome = vhost.publish(message)?;
    let routed = outcome.routed && !outcome.rejected;
    all_durable(outcome.durable)
        .await
        .map_err(|reason| ApiError::Internal(format!("the message was not stored: {reason}")))?;
    Ok(Json(PublishResponse { routed }))
}

/// Takes up to `count` messages from a queue. `ack_mode: requeue` (the default) puts them back
/// afterwards, marked redelivered, as RabbitMQ's "Get messages"; `ack` removes them.
#[utoipa::path(post, path = "/api/queues/{name}/get", tag = "amqp", security(("basic" = [])),
    params(("name" = String, Path, description = "Queue name"), VhostQuery),
    request_body = GetMessagesRequest,
    responses(
        (status = 200, description = "The messages, oldest first", body = Vec<QueueMessage>),
        (status = 400, description = "Invalid count, or a stream queue", body = ErrorBody),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody),
        (status = 404, description = "No such queue", body = ErrorBody),
        (status = 409, description = "Exclusive to a connection", body = ErrorBody)))]
pub async fn get_messages(
    State(state): State<Arc<AppState>>,
    Extension(user): Extension<AuthenticatedUser>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<VhostQuery>,
    ApiJson(request): ApiJson<GetMessagesRequest>,
) -> ApiResult<Json<Vec<QueueMessage>>> {
    let count = request.count.unwrap_or(1);
    if !(1..=GET_COUNT_MAX).contains(&count) {
        return Err(ApiError::BadRequest(format!(
            "count must be between 1 and {GET_COUNT_MAX}, got {count}"
        )));
    }
    let vhost = vhost_or_404(&state, query.vhost.as_deref())?;
    let session = ApiSession::open(&vhost, &state, &user.name);
    let no_ack = request.ack_mode == GetAckMode::Ack;
    let mut messages = Vec::new();
    for _ in 0..count {
        let Some(got) = session.0.get(&name, no_ack)? else {
            break;
        };
        messages.push(QueueMessage {
            payload: encode(&got.message.body, false),
            exchange: got.message.exchange.clone(),
            routing_key: got.message.routing_key.clone(),
            redelivered: got.redelivered,
            message_count: u64::from(got.remaining),
            properties: properties_to_json(&got.message.properties),
        });
    }
    // Requeue mode: closing the session (on drop) puts every message back where it was.
    drop(session);
    Ok(Json(messages))
}

/// Where a dead-lettered message came from: the exchange and first routing key of its most
/// recent `x-death` entry.
fn original_destination(message: &Message) -> Option<(String, String)> {
    let headers: &FieldTable = message.properties.headers.as_ref()?;
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(latest) = deaths.as_slice().first()? else {
        return None;
    };
    let exchange = value_as_str(latest.inner().get("exchange")?)?.to_string();
    let routing_key = match latest.inner().get("routing-keys") {
        Some(AMQPValue::FieldArray(keys)) => keys
            .as_slice()
            .first()
            .and_then(value_as_str)
            .unwrap_or_default()
            .to_string(),
        _ => message.routing_key.clone(),
    };
    Some((exchange, routing_key))
}

/// Moves messages out of a queue: each is published to its original exchange with its
/// original routing key (from `x-death`, as a dead-letter queue's messages carry), or to
/// `exchange`, and removed from the queue once stored there. Messages with no origin, or
/// that route nowhere, stay in the queue.
#[utoipa::path(post, path = "/api/queues/{name}/move", tag = "amqp", security(("basic" = [])),
    params(("name" = String, Path, description = "Queue name"), VhostQuery),
    request_body = MoveMessagesRequest,
    responses(
        (status = 200, description = "How many moved and how many stayed", body = MoveMessagesResponse),
        (status = 400, description = "Invalid count, or a stream queue", body = ErrorBody),
        (status = 401, description = "No or wrong credentials", body = ErrorBody),
        (status = 403, description = "Not an administrator, or an internal target exchange", body = ErrorBody),
        (status = 404, description = "No such queue or target exchange", body = ErrorBody),
        (status = 409, description = "Exclusive to a connection", body = ErrorBody)))]
pub async fn move_messages(
    State(state): State<Arc<AppState>>,
    Extension(user): Extension<AuthenticatedUser>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<VhostQuery>,
    ApiJson(request): ApiJson<MoveMessagesRequest>,
) -> ApiResult<Json<MoveMessagesResponse>> {
    if request
        .count
        .is_some_and(|c| !(1..=MOVE_COUNT_MAX).contains(&c))
    {
        return Err(ApiError::BadRequest(format!(
            "count must be between 1 and {MOVE_COUNT_MAX}"
        )));
    }
    if request.routing_key.as_ref().is_some_and(|k| k.len() > 255) {
        return Err(ApiError::BadRequest(
            "routing key longer than 255 bytes".into(),
        ));
    }
    if request.routing_key.is_some() && request.exchange.is_none() {
        return Err(ApiError::BadRequest("routing_key needs exchange".into()));
    }
    let vhost = vhost_or_404(&state, query.vhost.as_deref())?;
    let target = request
        .exchange
        .as_deref()
        .map(|exchange| exchange_name(exchange).to_string());
    if let Some(exchange) = &target {
        check_name(exchange, "exchange")?;
        vhost.check_publishable(exchange)?;
    }
    let session = ApiSession::open(&vhost, &state, &user.name);
    // Bounded by what is in the queue now, so messages routed back into it are not moved
    // again and again.
    let in_queue = match vhost.queue(&name) {
        Some(sluice_broker::vhost::QueueSummary::Classic(queue)) => queue.message_count(),
        Some(sluice_broker::vhost::QueueSummary::Stream(_)) => {
            return Err(ApiError::BadRequest(format!(
                "queue '{name}' is a stream: its messages are a topic's records"
            )))
        }
        None => return Err(ApiError::NotFound(format!("no queue '{name}'"))),
    };
    let count = request.count.unwrap_or(MOVE_COUNT_MAX).min(in_queue);
    let mut moved = Vec::new();
    let mut skipped = 0u64;
    for _ in 0..count {
        let Some(got) = session.0.get(&name, false)? else {
            break;
        };
        let destination = match &target {
            Some(exchange) => Some((
                exchange.clone(),
                request
                    .routing_key
                    .clone()
                    .unwrap_or_else(|| got.message.routing_key.clone()),
            )),
            None => original_destination(&got.message),
        };
        let Some((exchange, routing_key)) = destination else {
            skipped += 1;
            continue;
        };
        let message = Message {
            exchange,
            routing_key,
            properties: got.message.properties.clone(),
            body: got.message.body.clone(),
        };
        match vhost.publish(message) {
            Ok(outcome) if outcome.routed && !outcome.rejected => {
                moved.push((got.delivery_tag, outcome.durable));
            }
            // Routed nowhere, refused, or its exchange is gone: it stays.
            Ok(_) | Err(_) => skipped += 1,
        }
    }
    let mut moved_count = 0u64;
    for (tag, durable) in moved {
        match all_durable(durable).await {
            Ok(()) => {
                session.0.settle(tag, false, Settle::Ack)?;
                moved_count += 1;
            }
            Err(reason) => {
                tracing::warn!(queue = %name, %reason, "a moved message was not stored: it stays");
                skipped += 1;
            }
        }
    }
    // The skipped ones go back to the queue when the session closes.
    drop(session);
    Ok(Json(MoveMessagesResponse {
        moved: moved_count,
        skipped,
    }))
}
