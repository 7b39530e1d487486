//! HTTP basic authentication against the broker's users (the same users as AMQP). Reads need
//! any valid user; anything but GET/HEAD needs an administrator. `guest` is accepted only from
//! a loopback peer, as on the AMQP side.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::connect_info::MockConnectInfo;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use sluice_auth::{Authenticated, UserStore};

use crate::error::ApiError;
use crate::AppState;

/// The user a request authenticated as; handlers may read it from the request extensions.
#[derive(Debug, Clone)]
pub struct AuthenticatedUser {
    pub name: String,
    pub administrator: bool,
}

/// Checks `Authorization: Basic ...` and, for mutations, the administrator tag.
pub async fn require_user(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    // The socket's peer, or the one a test set in place of a socket.
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| *address)
        .or_else(|| {
            request
                .extensions()
                .get::<MockConnectInfo<SocketAddr>>()
                .map(|MockConnectInfo(address)| *address)
        });
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let user = authenticate(&state.context.users, header, peer)?;
    let user = AuthenticatedUser {
        administrator: user.is_administrator(),
        name: user.name,
    };
    let reading = matches!(*request.method(), Method::GET | Method::HEAD);
    if !reading && !user.administrator {
        return Err(ApiError::Forbidden(format!(
            "user '{}' is not an administrator: {} needs the administrator tag",
            user.name,
            request.method()
        )));
    }
    request.extensions_mut().insert(user);
    Ok(next.run(request).await)
}

/// The user these credentials name, if the password matches and the peer may use it. Every
/// failure reads the same, so the answer does not tell whether the user exists.
pub fn authenticate(
    users: &UserStore,
    authorization: Option<&str>,
    peer: Option<SocketAddr>,
) -> Result<Authenticated, ApiError> {
    let unauthorized = || ApiError::Unauthorized("valid credentials required".into());
    let encoded = authorization
        .and_then(|value| {
            let (scheme, rest) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("basic").then_some(rest.trim())
        })
        .ok_or_else(unauthorized)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| unauthorized())?;
    let decoded = String::from_utf8(decoded).map_err(|_| unauthorized())?;
    let (name, password) = decoded.split_once(':').ok_or_else(unauthorized)?;
    // A peer we cannot see is treated as remote.
    let loopback = peer.is_some_and(|address| address.ip().is_loopback());
    users
        .verify_password(name, password, loopback)
        .ok_or_else(|| {
            tracing::warn!(?peer, "HTTP API login refused");
            unauthorized()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn users() -> std::sync::Arc<UserStore> {
        let users = UserStore::in_memory();
        users
            .declare("reader", "pw:with:colons", Vec::new(), false)
            .await
            .expect("declared");
        users
    }

    fn basic(credentials: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        )
    }

    #[tokio::test]
    async fn guest_is_accepted_from_loopback_only() {
        let users = users().await;
        let loopback: SocketAddr = "127.0.0.1:5000".parse().expect("address");
        let remote: SocketAddr = "192.0.2.7:5000".parse().expect("address");
        let header = basic("guest:guest");
        assert!(authenticate(&users, Some(&header), Some(loopback)).is_ok());
        assert!(matches!(
            authenticate(&users, Some(&header), Some(remote)),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(authenticate(&users, Some(&header), None).is_err());
    }

    #[tokio::test]
    async fn wrong_or_malformed_credentials_are_unauthorized() {
        let users = users().await;
        let remote: SocketAddr = "192.0.2.7:5000".parse().expect("address");
        for header in [
            basic("reader:wrong"),
            basic("nobody:pw"),
            basic("no-colon"),
            "Basic !!!notbase64".to_string(),
            "Bearer abc".to_string(),
        ] {
            assert!(
                matches!(
                    authenticate(&users, Some(&header), Some(remote)),
                    Err(ApiError::Unauthorized(_))
                ),
                "{header}"
            );
        }
        assert!(authenticate(&users, None, Some(remote)).is_err());
        let ok = authenticate(&users, Some(&basic("reader:pw:with:colons")), Some(remote));
        assert_eq!(ok.map(|u| u.name).ok().as_deref(), Some("reader"));
    }
}
