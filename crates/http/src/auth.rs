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
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::AppState;

/// A user of the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUser {
    pub name: String,
    pub password: String,
    /// May call mutating endpoints (RabbitMQ's `administrator` tag).
    pub administrator: bool,
    /// Only from 127.0.0.0/8 or ::1 (guest).
    pub loopback_only: bool,
}

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
    let reading = matches!(*request.method(), Method::GET | Method::HEAD);
    if !reading && !user.administrator {
        return Err(ApiError::Forbidden(format!(
            "user '{}' is not an administrator: {} needs the administrator tag",
            user.name,
            request.method()
        )));
    }
    request.extensions_mut().insert(AuthenticatedUser {
        name: user.name.clone(),
        administrator: user.administrator,
    });
    Ok(next.run(request).await)
}

/// The user these credentials name, if the password matches and the peer may use it.
pub fn authenticate<'a>(
    users: &'a [HttpUser],
    authorization: Option<&str>,
    peer: Option<SocketAddr>,
) -> Result<&'a HttpUser, ApiError> {
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
    let user = users
        .iter()
        .find(|user| user.name == name)
        .ok_or_else(unauthorized)?;
    let password_matches: bool = user.password.as_bytes().ct_eq(password.as_bytes()).into();
    if !password_matches {
        return Err(unauthorized());
    }
    // A peer we cannot see is treated as remote.
    if user.loopback_only && !peer.is_some_and(|address| address.ip().is_loopback()) {
        return Err(ApiError::Unauthorized(format!(
            "user '{name}' may only connect from loopback"
        )));
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Vec<HttpUser> {
        vec![
            HttpUser {
                name: "guest".into(),
                password: "guest".into(),
                administrator: true,
                loopback_only: true,
            },
            HttpUser {
                name: "reader".into(),
                password: "pw:with:colons".into(),
                administrator: false,
                loopback_only: false,
            },
        ]
    }

    fn basic(credentials: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        )
    }

    #[test]
    fn guest_is_accepted_from_loopback_only() {
        let users = users();
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

    #[test]
    fn wrong_or_malformed_credentials_are_unauthorized() {
        let users = users();
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
        assert_eq!(ok.map(|u| u.name.as_str()), Ok("reader"));
    }
}
