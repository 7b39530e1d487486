//! The web UI: static files (plain ES modules, no build step) embedded in the binary with
//! `rust-embed` and served without credentials; the page asks for credentials itself and calls
//! the API with HTTP basic. `GET /` is the page, `GET /ui/{path}` its scripts and styles.

use axum::extract::{Path, Request};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rust_embed::Embed;

use crate::error::ApiError;

/// Files under crates/http/ui (read from disk in debug builds, embedded in release builds).
#[derive(Embed)]
#[folder = "ui/"]
struct UiAssets;

/// The page never loads anything from elsewhere and never runs inline script: a message body
/// that slipped past the escaping still could not run.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The routes of the UI (no credentials needed).
pub(crate) fn router() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/ui/{*path}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

fn serve(path: &str, request_headers: &HeaderMap) -> Response {
    let Some(file) = UiAssets::get(path) else {
        return ApiError::NotFound(format!("no UI file '{path}'")).into_response();
    };
    let etag = format!("\"{}\"", hex_digest(&file.metadata.sha256_hash()));
    let unchanged = request_headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == etag));
    if unchanged {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    let mime = file.metadata.mimetype();
    let content_type = if mime.starts_with("text/") || mime == "application/javascript" {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            // Revalidate every time: the files change with the binary, and an ETag check is cheap.
            (header::CACHE_CONTROL, "no-cache".to_string()),
            (header::ETAG, etag),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            (
                header::CONTENT_SECURITY_POLICY,
                CONTENT_SECURITY_POLICY.to_string(),
            ),
        ],
        file.data,
    )
        .into_response()
}

fn hex_digest(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Drops the basic challenge from a 401 answering a script (`X-Requested-With` set, as the UI
/// sends): with the challenge a browser opens its own login dialog over the page's form.
/// Other clients (curl, the CLI) still get the challenge.
pub(crate) async fn omit_challenge_for_scripts(request: Request, next: Next) -> Response {
    let from_script = request.headers().contains_key("x-requested-with");
    let mut response = next.run(request).await;
    if from_script && response.status() == StatusCode::UNAUTHORIZED {
        response.headers_mut().remove(header::WWW_AUTHENTICATE);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request as HttpRequest;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn send(router: Router, request: HttpRequest<Body>) -> (Response, Vec<u8>) {
        let response = router.oneshot(request).await.expect("infallible");
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes().to_vec();
        (Response::from_parts(parts, Body::empty()), bytes)
    }

    fn get_request(uri: &str) -> HttpRequest<Body> {
        HttpRequest::get(uri).body(Body::empty()).expect("request")
    }

    #[tokio::test]
    async fn the_page_and_its_modules_are_served_without_credentials() {
        let (response, body) = send(router(), get_request("/")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let policy = response.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("ascii");
        assert!(policy.contains("script-src 'self'"), "{policy}");
        let html = String::from_utf8(body).expect("utf-8");
        assert!(html.contains(r#"<script type="module" src="/ui/app.js">"#));

        for (path, content_type) in [
            ("/ui/app.js", "text/javascript; charset=utf-8"),
            ("/ui/pages/messages.js", "text/javascript; charset=utf-8"),
            ("/ui/style.css", "text/css; charset=utf-8"),
        ] {
            let (response, body) = send(router(), get_request(path)).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                content_type,
                "{path}"
            );
            assert!(!body.is_empty(), "{path}");
        }
    }

    #[tokio::test]
    async fn an_unchanged_file_answers_304_and_an_unknown_one_404() {
        let (first, _) = send(router(), get_request("/ui/app.js")).await;
        let etag = first.headers()[header::ETAG].clone();
        let request = HttpRequest::get("/ui/app.js")
            .header(header::IF_NONE_MATCH, etag)
            .body(Body::empty())
            .expect("request");
        let (again, body) = send(router(), request).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert!(body.is_empty());

        let (missing, body) = send(router(), get_request("/ui/nothing.js")).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert!(String::from_utf8_lossy(&body).contains("not_found"));
        let (escape, _) = send(router(), get_request("/ui/../Cargo.toml")).await;
        assert_eq!(escape.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn a_401_keeps_its_basic_challenge_except_for_the_ui_scripts() {
        let refusing = || {
            Router::new()
                .route(
                    "/api/topics",
                    get(|| async { ApiError::Unauthorized("valid credentials required".into()) }),
                )
                .layer(axum::middleware::from_fn(omit_challenge_for_scripts))
        };
        let (plain, _) = send(refusing(), get_request("/api/topics")).await;
        assert_eq!(plain.status(), StatusCode::UNAUTHORIZED);
        assert!(plain.headers().contains_key(header::WWW_AUTHENTICATE));

        let from_ui = HttpRequest::get("/api/topics")
            .header("x-requested-with", "sluice-ui")
            .body(Body::empty())
            .expect("request");
        let (scripted, body) = send(refusing(), from_ui).await;
        assert_eq!(scripted.status(), StatusCode::UNAUTHORIZED);
        assert!(!scripted.headers().contains_key(header::WWW_AUTHENTICATE));
        assert!(String::from_utf8_lossy(&body).contains("unauthorized"));
    }
}
