//! Who may do what, for every front end: the user store (salted SCRAM keys, tags, AMQP
//! permissions), the SASL exchanges, Kafka ACLs and the authorizer, and TLS settings. It keeps
//! its state in small files of the data directory and knows nothing of sockets or protocols
//! beyond the mechanisms' own message formats.

pub mod acl;
pub mod permissions;
mod persist;
pub mod quotas;
pub mod replication;
pub mod sasl;
pub mod scram;
pub mod tls;
pub mod users;
pub mod vhost_limits;

pub use acl::{AclBinding, AclFilter, AclStore, Authorizer, Operation, ResourceType};
pub use permissions::{Access, VhostPermissions};
pub use quotas::QuotaStore;
pub use replication::{
    CommitError, CommitFuture, DocumentKind, DocumentReplicator, ReplicatedDocument,
    ReplicationMark,
};
pub use sasl::{SaslExchange, SaslStep};
pub use tls::{ReloadingTls, TlsFiles};
pub use users::{Authenticated, User, UserStore};
pub use vhost_limits::VhostLimits;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("{0} is not valid: {1}")]
    Corrupt(String, String),
    #[error("user '{0}' already exists")]
    UserExists(String),
    #[error("no user '{0}'")]
    NoSuchUser(String),
    #[error("user '{0}' has no such SCRAM credential")]
    NoSuchCredential(String),
    #[error("user '{0}' has no permissions on vhost '{1}'")]
    NoPermissions(String, String),
    #[error("invalid user name '{0}'")]
    InvalidName(String),
    /// A change the cluster's metadata group did not commit.
    #[error("the change was not replicated: {0}")]
    Replication(String),
}
