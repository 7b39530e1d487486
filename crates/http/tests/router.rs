//! The router in process (no socket): authentication, the JSON error shape, and the OpenAPI
//! document covering every route.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use base64::Engine;
use http_body_util::BodyExt;
use sluice_auth::UserStore;
use sluice_broker::vhost::{VhostConfig, VirtualHosts};
use sluice_broker::{Broker, BrokerConfig};
use sluice_http::model::NodeInfo;
use sluice_http::{HttpApi, HttpContext};
use tower::ServiceExt;

fn users() -> Arc<UserStore> {
    let users = UserStore::in_memory();
    // In memory the change completes at once: no runtime needed.
    futures::executor::block_on(users.declare("reader", "pw", Vec::new(), false))
        .expect("declared");
    users
}

fn api(dir: &std::path::Path) -> HttpApi {
    let broker = Broker::open(BrokerConfig::new(dir.to_path_buf())).expect("broker");
    let vhosts = VirtualHosts::open(
        VhostConfig {
            data_dir: dir.to_path_buf(),
            message_bytes_max: 1 << 20,
            memory_high_watermark_bytes: 1 << 30,
            disk_free_limit_bytes: 0,
        },
        Arc::clone(&broker),
    )
    .expect("vhosts");
    HttpApi::new(HttpContext {
        broker,
        vhosts,
        users: users(),
        vhost_limits: sluice_auth::VhostLimits::in_memory(),
        metrics: None,
        node: NodeInfo {
            node_id: 0,
            host: "127.0.0.1".into(),
            kafka_port: 9092,
            is_self: true,
        },
        listeners: Vec::new(),
        disk_free_limit_bytes: 0,
        memory_high_watermark_bytes: 1 << 30,
        cluster: None,
    })
}

fn from(router: Router, peer: &str) -> Router {
    router.layer(MockConnectInfo(
        peer.parse::<SocketAddr>().expect("address"),
    ))
}

fn request(method: &str, path: &str, credentials: Option<&str>, body: &str) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(credentials) = credentials {
        let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
        builder = builder.header(header::AUTHORIZATION, format!("Basic {encoded}"));
    }
    builder.body(Body::from(body.to_string())).expect("request")
}

async fn call(router: &Router, request: Request<Body>) -> (StatusCode, serde_json::Value) {
    let response = router.clone().oneshot(request).await.expect("response");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_works_from_loopback_only_and_readers_cannot_mutate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = api(dir.path());
    let local = from(api.router(), "127.0.0.1:40000");
    let remote = from(api.router(), "192.0.2.10:40000");

    let (status, _) = call(
        &local,
        request("GET", "/api/topics", Some("guest:guest"), ""),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let response = remote
        .clone()
        .oneshot(request("GET", "/api/topics", Some("guest:guest"), ""))
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));

    let (status, _) = call(
        &remote,
        request("GET", "/api/topics", Some("reader:pw"), ""),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = call(
        &remote,
        request("POST", "/api/topics", Some("reader:pw"), r#"{"name":"t"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "forbidden");
    let (status, _) = call(
        &local,
        request(
            "POST",
            "/api/topics",
            Some("guest:guest"),
            r#"{"name":"t"}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    // Public endpoints need no credentials, from anywhere.
    for path in ["/api/health", "/metrics", "/api/openapi.json"] {
        let (status, _) = call(&remote, request("GET", path, None, "")).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_a_json_400_never_a_server_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let local = from(api(dir.path()).router(), "127.0.0.1:40000");
    for (method, path, body) in [
        ("POST", "/api/topics", "{"),
        ("POST", "/api/topics", r#"{"name": 5}"#),
        ("POST", "/api/topics", r#"{"name": "x", "unknown": true}"#),
        ("GET", "/api/topics/x/messages?offset=minus", ""),
        (
            "POST",
            "/api/groups/g/reset-offsets",
            r#"{"strategy": "back"}"#,
        ),
        (
            "POST",
            "/api/exchanges",
            r#"{"name": "e", "type": "direct", "arguments": {"k": [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]}}"#,
        ),
    ] {
        let (status, body) = call(&local, request(method, path, Some("guest:guest"), body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {body}");
        assert_eq!(body["error"], "bad_request", "{method} {path}");
        assert!(body["reason"].as_str().is_some_and(|r| !r.is_empty()));
    }
    let (status, body) = call(&local, request("GET", "/api/nope", None, "")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
}

#[test]
fn the_openapi_document_describes_every_route_with_its_security() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _guard = runtime.enter();
    let dir = tempfile::tempdir().expect("tempdir");
    let document = api(dir.path()).openapi();
    let json = serde_json::to_value(&document).expect("json");
    let paths = json["paths"].as_object().expect("paths");
    let mut operations = Vec::new();
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("path item") {
            operations.push(format!("{} {path}", method.to_uppercase()));
            let public = ["/api/health", "/metrics", "/api/openapi.json"].contains(&path.as_str());
            assert_eq!(
                operation.get("security").is_none(),
                public,
                "{method} {path}: security declared iff credentials are needed"
            );
            assert!(operation["responses"]
                .as_object()
                .is_some_and(|r| !r.is_empty()));
        }
    }
    operations.sort();
    assert_eq!(operations.len(), 49, "{operations:#?}");
    assert!(operations.contains(&"PUT /api/users/{name}".to_string()));
    assert!(operations.contains(&"PUT /api/vhosts/{name}".to_string()));
    assert!(operations.contains(&"PUT /api/permissions/{vhost}/{user}".to_string()));
    assert!(operations.contains(&"GET /api/cluster".to_string()));
    assert!(operations.contains(&"DELETE /api/cluster/nodes/{id}".to_string()));
    assert!(json["components"]["securitySchemes"]["basic"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_is_its_own_cluster_and_partition_leader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = api(dir.path());
    let local = from(api.router(), "127.0.0.1:40000");
    let (status, body) = call(
        &local,
        request("GET", "/api/cluster", Some("guest:guest"), ""),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["clustered"], false);
    assert_eq!(body["metadata_leader"], 0);
    assert_eq!(body["nodes"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["nodes"][0]["kafka_address"], "127.0.0.1:9092");
    assert_eq!(body["nodes"][0]["is_metadata_leader"], true);
    assert_eq!(body["nodes"][0]["connected"], true);
    // Nothing to remove a node from.
    let (status, body) = call(
        &local,
        request("DELETE", "/api/cluster/nodes/3", Some("guest:guest"), ""),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, _) = call(
        &local,
        request(
            "POST",
            "/api/topics",
            Some("guest:guest"),
            r#"{"name":"t","partitions":2}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = call(
        &local,
        request("GET", "/api/topics/t/partitions", Some("guest:guest"), ""),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for partition in body.as_array().expect("partitions") {
        assert_eq!(partition["leader"], 0);
        assert_eq!(partition["leader_epoch"], 0);
        assert_eq!(partition["replicas"], serde_json::json!([0]));
        assert_eq!(partition["isr"], serde_json::json!([0]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_managed_by_administrators_and_log_in_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = api(dir.path());
    let local = from(api.router(), "127.0.0.1:40000");
    let remote = from(api.router(), "192.0.2.9:40000");
    let (status, _) = call(
        &local,
        request(
            "PUT",
            "/api/users/dave",
            Some("guest:guest"),
            r#"{"password": "d-pw", "tags": "monitoring"}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    // A new user logs in from anywhere, and may read but not manage users.
    let (status, _) = call(
        &remote,
        request("GET", "/api/overview", Some("dave:d-pw"), ""),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&remote, request("GET", "/api/users", Some("dave:d-pw"), "")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = call(
        &local,
        request("GET", "/api/users/dave", Some("guest:guest"), ""),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["tags"], "monitoring");
    assert!(body.get("password").is_none());
    let (status, _) = call(
        &local,
        request(
            "PUT",
            "/api/permissions/%2F/dave",
            Some("guest:guest"),
            r#"{"configure": "(", "write": "", "read": ""}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(
        &local,
        request(
            "PUT",
            "/api/permissions/%2F/dave",
            Some("guest:guest"),
            r#"{"configure": "^app-", "write": ".*", "read": ".*"}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = call(
        &local,
        request("GET", "/api/permissions", Some("guest:guest"), ""),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body
        .as_array()
        .expect("list")
        .iter()
        .any(|p| p["user"] == "dave" && p["vhost"] == "/" && p["configure"] == "^app-"));
    let (status, _) = call(
        &local,
        request("DELETE", "/api/users/dave", Some("guest:guest"), ""),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(
        &remote,
        request("GET", "/api/overview", Some("dave:d-pw"), ""),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
