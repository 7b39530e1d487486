//! A listener's security: its protocol (Kafka's PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL), its
//! TLS settings, the SASL mechanisms it offers, and who a connection is once it authenticated.
//! What a principal may do is the authorizer's (`sluice_auth::Authorizer`), checked per
//! request in `authorization`.

use std::sync::Arc;
use std::time::Duration;

use sluice_auth::acl::ANONYMOUS;
use sluice_auth::{Authenticated, Authorizer, QuotaStore, ReloadingTls, UserStore};

/// Kafka's security protocols, as `--kafka-listen` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn from_name(name: &str) -> Option<SecurityProtocol> {
        Some(match name.to_ascii_uppercase().as_str() {
            "PLAINTEXT" => SecurityProtocol::Plaintext,
            "SSL" => SecurityProtocol::Ssl,
            "SASL_PLAINTEXT" => SecurityProtocol::SaslPlaintext,
            "SASL_SSL" => SecurityProtocol::SaslSsl,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// Everything a listener needs to know about security.
#[derive(Debug, Clone)]
pub struct KafkaSecurity {
    pub protocol: SecurityProtocol,
    /// Present exactly when the protocol uses TLS.
    pub tls: Option<Arc<ReloadingTls>>,
    pub users: Arc<UserStore>,
    pub authorizer: Authorizer,
    /// Client quotas (byte rates per user and client id).
    pub quotas: Arc<QuotaStore>,
    /// Offered in SaslHandshake, in this order.
    pub sasl_mechanisms: Vec<String>,
    /// Kafka's `connections.max.reauth.ms` (KIP-368): a SASL session lasts this long and must
    /// re-authenticate to go on; 0: sessions do not expire.
    pub reauthentication_ms: u64,
    /// Kafka's `connection.failed.authentication.delay.ms`: a failed authentication is
    /// answered this much later, which slows password guessing.
    pub failed_authentication_delay: Duration,
}

impl Default for KafkaSecurity {
    /// PLAINTEXT, no users beyond the default, everything allowed unless an ACL says otherwise.
    fn default() -> Self {
        KafkaSecurity {
            protocol: SecurityProtocol::Plaintext,
            tls: None,
            users: UserStore::in_memory(),
            authorizer: Authorizer::open_by_default(),
            quotas: QuotaStore::in_memory(),
            sasl_mechanisms: sluice_auth::sasl::MECHANISMS
                .iter()
                .map(|m| m.to_string())
                .collect(),
            reauthentication_ms: 0,
            failed_authentication_delay: Duration::from_millis(100),
        }
    }
}

/// Who a connection acts as, in Kafka's principal form (`User:name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    /// An administrator-tagged user: allowed everything, as Kafka's `super.users`.
    pub super_user: bool,
}

impl Default for Principal {
    fn default() -> Self {
        Principal {
            name: ANONYMOUS.to_string(),
            super_user: false,
        }
    }
}

impl Principal {
    pub fn user(user: &Authenticated) -> Principal {
        Principal {
            name: format!("User:{}", user.name),
            super_user: user.is_administrator(),
        }
    }

    /// A TLS client certificate's subject (Kafka's default SSL principal).
    pub fn certificate(distinguished_name: &str) -> Principal {
        Principal {
            name: format!("User:{distinguished_name}"),
            super_user: false,
        }
    }
}
