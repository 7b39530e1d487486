//! The SASL mechanisms Kafka clients use (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), checked
//! against the user store. One `SaslExchange` per authentication; its messages are the tokens
//! SaslAuthenticate carries.

use crate::scram::{ScramError, ScramMechanism, ScramServer, ScramStep};
use crate::users::{Authenticated, UserStore};

/// The mechanisms offered, in SaslHandshake's answer.
pub const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

#[derive(Debug)]
pub enum SaslExchange {
    Plain { done: bool },
    Scram(ScramServer),
}

/// What one step gives.
#[derive(Debug, PartialEq, Eq)]
pub enum SaslStep {
    /// Send this to the client and expect another token.
    Continue(Vec<u8>),
    /// Authenticated; send this (possibly empty) last token.
    Authenticated { user: Authenticated, reply: Vec<u8> },
}

/// Why authentication failed: for the log only. Clients hear one text for every failure.
#[derive(Debug, thiserror::Error)]
pub enum SaslError {
    #[error("malformed PLAIN message")]
    MalformedPlain,
    #[error("authorization id differs from the user name")]
    AuthorizationId,
    #[error("wrong password, unknown user or a user not allowed from this address")]
    BadCredentials,
    #[error("the exchange had already ended")]
    AlreadyDone,
    #[error(transparent)]
    Scram(#[from] ScramError),
}

impl SaslExchange {
    pub fn start(mechanism: &str) -> Option<SaslExchange> {
        if mechanism == "PLAIN" {
            return Some(SaslExchange::Plain { done: false });
        }
        ScramMechanism::from_name(mechanism).map(|m| SaslExchange::Scram(ScramServer::new(m)))
    }

    pub fn mechanism(&self) -> &'static str {
        match self {
            SaslExchange::Plain { .. } => "PLAIN",
            SaslExchange::Scram(server) => server.mechanism().name(),
        }
    }

    pub fn step(
        &mut self,
        token: &[u8],
        users: &UserStore,
        peer_is_loopback: bool,
    ) -> Result<SaslStep, SaslError> {
        match self {
            SaslExchange::Plain { done } => {
                if std::mem::replace(done, true) {
                    return Err(SaslError::AlreadyDone);
                }
                let (authzid, user, password) = parse_plain(token)?;
                if !authzid.is_empty() && authzid != user {
                    return Err(SaslError::AuthorizationId);
                }
                let user = users
                    .verify_password(user, password, peer_is_loopback)
                    .ok_or(SaslError::BadCredentials)?;
                Ok(SaslStep::Authenticated {
                    user,
                    reply: Vec::new(),
                })
            }
            SaslExchange::Scram(server) => {
                let mechanism = server.mechanism();
                match server.step(
                    token,
                    |name| users.scram_credential(name, mechanism),
                    |name| users.decoy_salt(name),
                )? {
                    ScramStep::Continue(reply) => Ok(SaslStep::Continue(reply)),
                    ScramStep::Authenticated { user, server_final } => {
                        // The proof was right; the user must still be allowed from here.
                        let user = users
                            .certified(&user, peer_is_loopback)
                            .ok_or(SaslError::BadCredentials)?;
                        Ok(SaslStep::Authenticated {
                            user,
                            reply: server_final,
                        })
                    }
                }
            }
        }
    }
}

/// PLAIN (RFC 4616): [authzid] NUL authcid NUL passwd, UTF-8.
pub fn parse_plain(token: &[u8]) -> Result<(&str, &str, &str), SaslError> {
    let text = std::str::from_utf8(token).map_err(|_| SaslError::MalformedPlain)?;
    let mut parts = text.split('\0');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(authzid), Some(user), Some(password), None) if !user.is_empty() => {
            Ok((authzid, user, password))
        }
        _ => Err(SaslError::MalformedPlain),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn plain_checks_the_store() {
        let users = UserStore::in_memory();
        users.add("alice", "pw", vec![]).await.unwrap();
        let mut exchange = SaslExchange::start("PLAIN").unwrap();
        assert!(matches!(
            exchange.step(b"\0alice\0pw", &users, false),
            Ok(SaslStep::Authenticated { .. })
        ));
        for token in [
            &b"\0alice\0bad"[..],
            b"alice\0pw",
            b"bob\0alice\0pw",
            b"\0\0pw",
        ] {
            let mut exchange = SaslExchange::start("PLAIN").unwrap();
            assert!(exchange.step(token, &users, false).is_err(), "{token:?}");
        }
        let mut guest = SaslExchange::start("PLAIN").unwrap();
        assert!(guest.step(b"\0guest\0guest", &users, false).is_err());
        assert!(SaslExchange::start("GSSAPI").is_none());
    }
}
