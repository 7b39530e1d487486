//! SASL on a connection (KIP-43, KIP-152, KIP-368): until a SASL listener's client has
//! authenticated, only ApiVersions, SaslHandshake and SaslAuthenticate are served; anything
//! else closes the connection, as Kafka does. A failed authentication is answered after the
//! listener's delay and closes the connection. With re-authentication on, a session ends after
//! `reauthentication_ms` unless the client authenticates again, as the same principal.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, RequestKind, ResponseKind, SaslAuthenticateRequest, SaslAuthenticateResponse,
    SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_auth::{SaslExchange, SaslStep};

use crate::security::{KafkaSecurity, Principal};

enum GateState {
    /// Nothing to do: authenticated, or not a SASL listener.
    Open,
    /// A SASL listener's connection that has not sent SaslHandshake yet.
    AwaitingHandshake,
    /// Handshake done; SaslAuthenticate tokens go to this exchange.
    Authenticating(SaslExchange),
}

pub(crate) struct SaslGate {
    required: bool,
    state: GateState,
    peer: SocketAddr,
    /// The principal of the first authentication: a re-authentication must keep it.
    authenticated_as: Option<Principal>,
    /// The mechanism of the first authentication: a re-authentication must keep it too.
    mechanism: Option<&'static str>,
    /// When the session ends (re-authentication on).
    expires: Option<Instant>,
}

/// What handling a SASL request gives the connection.
pub(crate) struct SaslOutcome {
    pub response: ResponseKind,
    /// The connection now acts as this principal.
    pub principal: Option<Principal>,
    /// Answer after the failed-authentication delay, then close.
    pub failed: bool,
    /// Close after answering (a protocol violation, answered at once).
    pub close: bool,
}

impl SaslGate {
    pub(crate) fn new(security: &KafkaSecurity, peer: SocketAddr) -> SaslGate {
        let required = security.protocol.uses_sasl();
        SaslGate {
            required,
            state: if required {
                GateState::AwaitingHandshake
            } else {
                GateState::Open
            },
            peer,
            authenticated_as: None,
            mechanism: None,
            expires: None,
        }
    }

    /// Whether a request of this API may be served now; the reason to close if not.
    pub(crate) fn admit(&self, api_key: i16) -> Result<(), &'static str> {
        if api_key == ApiKey::ApiVersions as i16
            || api_key == ApiKey::SaslHandshake as i16
            || api_key == ApiKey::SaslAuthenticate as i16
        {
            return Ok(());
        }
        match self.state {
            GateState::AwaitingHandshake => Err("a request before SASL authentication"),
            GateState::Authenticating(_) if self.authenticated_as.is_none() => {
                Err("a request during SASL authentication")
            }
            _ if self.expires.is_some_and(|at| Instant::now() >= at) => {
                Err("the SASL session expired without re-authentication")
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn is_sasl_request(api_key: ApiKey) -> bool {
        matches!(api_key, ApiKey::SaslHandshake | ApiKey::SaslAuthenticate)
    }

    pub(crate) fn handle(
        &mut self,
        security: &KafkaSecurity,
        version: i16,
        request: RequestKind,
    ) -> SaslOutcome {
        match request {
            RequestKind::SaslHandshake(r) => self.handshake(security, r),
            RequestKind::SaslAuthenticate(r) => self.authenticate(security, version, r),
            _ => unreachable!("only SASL requests reach the gate"),
        }
    }

    fn handshake(
        &mut self,
        security: &KafkaSecurity,
        request: SaslHandshakeRequest,
    ) -> SaslOutcome {
        let mechanisms: Vec<StrBytes> = security
            .sasl_mechanisms
            .iter()
            .map(|m| StrBytes::from_string(m.clone()))
            .collect();
        let reply = |code: i16| {
            ResponseKind::SaslHandshake(
                SaslHandshakeResponse::default()
                    .with_error_code(code)
                    .with_mechanisms(mechanisms.clone()),
            )
        };
        let may_start = match self.state {
            GateState::AwaitingHandshake => true,
            // KIP-368: an authenticated client starts again with a handshake.
            GateState::Open => self.required && security.reauthentication_ms > 0,
            GateState::Authenticating(_) => false,
        };
        if !may_start {
            return SaslOutcome {
                response: reply(ResponseError::IllegalSaslState.code()),
                principal: None,
                failed: false,
                close: self.required,
            };
        }
        let mechanism = request.mechanism.as_str();
        if self.mechanism.is_some_and(|first| first != mechanism) {
            // KIP-368: re-authentication keeps the mechanism (Kafka closes the connection).
            tracing::warn!(peer = %self.peer, mechanism, "SASL re-authentication with another mechanism");
            return SaslOutcome {
                response: reply(ResponseError::IllegalSaslState.code()),
                principal: None,
                failed: false,
                close: true,
            };
        }
        let exchange = security
            .sasl_mechanisms
            .iter()
            .any(|m| m == mechanism)
            .then(|| SaslExchange::start(mechanism))
            .flatten();
        match exchange {
            Some(exchange) => {
                self.state = GateState::Authenticating(exchange);
                SaslOutcome {
                    response: reply(0),
                    principal: None,
                    failed: false,
                    close: false,
                }
            }
            None => {
                tracing::warn!(peer = %self.peer, mechanism, "SASL mechanism not enabled");
                SaslOutcome {
                    response: reply(ResponseError::UnsupportedSaslMechanism.code()),
                    principal: None,
                    failed: false,
                    close: true,
                }
            }
        }
    }

    fn authenticate(
        &mut self,
        security: &KafkaSecurity,
        version: i16,
        request: SaslAuthenticateRequest,
    ) -> SaslOutcome {
        let GateState::Authenticating(exchange) = &mut self.state else {
            return SaslOutcome {
                response: ResponseKind::SaslAuthenticate(
                    SaslAuthenticateResponse::default()
                        .with_error_code(ResponseError::IllegalSaslState.code())
                        .with_error_message(Some(StrBytes::from_static_str(
                            "SaslAuthenticate before SaslHandshake",
                        ))),
                ),
                principal: None,
                failed: false,
                close: true,
            };
        };
        let mechanism = exchange.mechanism();
        let failure = |reason: String, peer: SocketAddr| {
            tracing::warn!(%peer, mechanism, %reason, "Kafka SASL authentication failed");
            SaslOutcome {
                response: ResponseKind::SaslAuthenticate(
                    SaslAuthenticateResponse::default()
                        .with_error_code(ResponseError::SaslAuthenticationFailed.code())
                        .with_error_message(Some(StrBytes::from_string(format!(
                            "Authentication failed during authentication due to invalid \
                             credentials with SASL mechanism {mechanism}"
                        )))),
                ),
                principal: None,
                failed: true,
                close: true,
            }
        };
        let loopback = self.peer.ip().is_loopback();
        match exchange.step(&request.auth_bytes, &security.users, loopback) {
            Ok(SaslStep::Continue(reply)) => SaslOutcome {
                response: ResponseKind::SaslAuthenticate(
                    SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(reply)),
                ),
                principal: None,
                failed: false,
                close: false,
            },
            Ok(SaslStep::Authenticated { user, reply }) => {
                let principal = Principal::user(&user);
                if let Some(first) = &self.authenticated_as {
                    if first.name != principal.name {
                        return failure(
                            format!(
                                "re-authenticated as {} instead of {}",
                                principal.name, first.name
                            ),
                            self.peer,
                        );
                    }
                }
                self.state = GateState::Open;
                self.authenticated_as = Some(principal.clone());
                self.mechanism = Some(mechanism);
                let lifetime_ms = security.reauthentication_ms;
                // Sessions end only where the client can learn when (v1 carries the lifetime).
                self.expires = (lifetime_ms > 0 && version >= 1)
                    .then(|| Instant::now() + Duration::from_millis(lifetime_ms));
                tracing::debug!(peer = %self.peer, principal = %principal.name, mechanism, "Kafka SASL authentication");
                SaslOutcome {
                    response: ResponseKind::SaslAuthenticate(
                        SaslAuthenticateResponse::default()
                            .with_auth_bytes(Bytes::from(reply))
                            .with_session_lifetime_ms(if version >= 1 {
                                lifetime_ms as i64
                            } else {
                                0
                            }),
                    ),
                    principal: Some(principal),
                    failed: false,
                    close: false,
                }
            }
            Err(error) => failure(error.to_string(), self.peer),
        }
    }
}
