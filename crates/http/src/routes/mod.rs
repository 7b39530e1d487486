//! The router: every endpoint registered with its OpenAPI description (utoipa-axum's
//! `routes!` takes path and method from each handler's `#[utoipa::path]`).

mod amqp;
mod groups;
mod messages;
mod produce;
mod queue_messages;
mod system;
mod topics;
mod users;
mod vhost_limits;
mod vhosts;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::Router;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::{auth, request_metrics, AppState};

/// Request bytes beyond a message body: properties, headers, JSON syntax.
const BODY_OVERHEAD_BYTES: usize = 1 << 20;
/// An oversized body up to this size is read to its end before it is refused (see
/// [`refuse_oversized_bodies`]); a larger one is refused at once.
const REFUSED_BODY_DRAIN_BYTES_MAX: u64 = 64 << 20;
/// How long reading a refused body to its end may take.
const REFUSED_BODY_DRAIN_TIME_MAX: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice HTTP API",
        description = "Operate a Sluice broker: topics, consumer groups, AMQP exchanges and queues, messages. \
            HTTP basic authentication with the broker's users; mutations need an administrator. \
            Errors are `{\"error\": kind, \"reason\": text}`."
    ),
    modifiers(&BasicAuth),
    tags(
        (name = "system", description = "Health, readiness, overview, metrics"),
        (name = "topics", description = "Kafka topics and partitions"),
        (name = "messages", description = "Reading a topic's messages"),
        (name = "groups", description = "Kafka consumer groups"),
        (name = "amqp", description = "AMQP exchanges, queues, bindings, connections, channels"),
        (name = "users", description = "Users (every protocol's) and their AMQP permissions"),
    )
)]
struct ApiDoc;

struct BasicAuth;

impl Modify for BasicAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
    }
}

pub(crate) fn router(state: Arc<AppState>) -> (Router, utoipa::openapi::OpenApi) {
    let protected = OpenApiRouter::new()
        .routes(routes!(system::ready))
        .routes(routes!(system::overview))
        .routes(routes!(system::cluster))
        .routes(routes!(system::remove_cluster_node))
        .routes(routes!(topics::list_topics, topics::create_topic))
        .routes(routes!(topics::get_topic, topics::delete_topic))
        .routes(routes!(topics::get_configs, topics::put_configs))
        .routes(routes!(topics::partitions))
        .routes(routes!(messages::topic_messages, produce::produce_messages))
        .routes(routes!(groups::list_groups))
        .routes(routes!(groups::describe_group, groups::delete_group))
        .routes(routes!(groups::reset_offsets))
        .routes(routes!(amqp::list_exchanges, amqp::declare_exchange))
        .routes(routes!(amqp::get_exchange, amqp::delete_exchange))
        .routes(routes!(queue_messages::publish))
        .routes(routes!(amqp::list_queues, amqp::declare_queue))
        .routes(routes!(amqp::get_queue, amqp::delete_queue))
        .routes(routes!(amqp::purge_queue))
        .routes(routes!(queue_messages::get_messages))
        .routes(routes!(queue_messages::move_messages))
        .routes(routes!(amqp::list_bindings))
        .routes(routes!(amqp::list_connections))
        .routes(routes!(amqp::list_channels))
        .routes(routes!(users::list_users))
        .routes(routes!(
            users::get_user,
            users::put_user,
            users::delete_user
        ))
        .routes(routes!(users::list_permissions))
        .routes(routes!(users::put_permissions, users::delete_permissions))
        .routes(routes!(vhosts::list_vhosts))
        .routes(routes!(
            vhosts::get_vhost,
            vhosts::put_vhost,
            vhosts::delete_vhost
        ))
        .routes(routes!(vhost_limits::list_vhost_limits))
        .routes(routes!(
            vhost_limits::put_vhost_limit,
            vhost_limits::delete_vhost_limit
        ))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            auth::require_user,
        ));
    let public = OpenApiRouter::new()
        .routes(routes!(system::health))
        .routes(routes!(system::metrics))
        .routes(routes!(system::openapi_json));
    let (router, document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(protected)
        .merge(public)
        .split_for_parts();
    if let Ok(json) = serde_json::to_value(&document) {
        let _ = state.openapi.set(json);
    }
    // Room for the largest message body, base64-encoded, in a publish request.
    let body_bytes_max = state
        .context
        .vhosts
        .default_vhost()
        .config()
        .message_bytes_max as usize
        / 3
        * 4
        + BODY_OVERHEAD_BYTES;
    let router = router
        .layer(DefaultBodyLimit::max(body_bytes_max))
        .layer(middleware::from_fn(move |request, next| {
            refuse_oversized_bodies(request, next, body_bytes_max)
        }))
        .layer(middleware::from_fn(request_metrics::record))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("method not allowed on this endpoint".into())
        })
        .with_state(state);
    (router, document)
}

/// A request whose Content-Length is over the body limit is answered 400 at once, but only
/// after its body was read to the end: closing a connection with unread bytes makes the TCP
/// stack reset it, and a client still sending would then lose the answer. Bodies without a
/// length are refused by the extractors, as they read them.
async fn refuse_oversized_bodies(
    request: axum::extract::Request,
    next: middleware::Next,
    body_bytes_max: usize,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use http_body_util::BodyExt;

    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let Some(declared) = declared.filter(|length| *length > body_bytes_max as u64) else {
        return next.run(request).await;
    };
    if declared <= REFUSED_BODY_DRAIN_BYTES_MAX {
        let mut body = request.into_body();
        let _ = tokio::time::timeout(REFUSED_BODY_DRAIN_TIME_MAX, async {
            while let Some(Ok(_)) = body.frame().await {}
        })
        .await;
    }
    ApiError::BadRequest(format!(
        "the request body ({declared} bytes) is larger than the largest this broker accepts \
         ({body_bytes_max} bytes)"
    ))
    .into_response()
}
