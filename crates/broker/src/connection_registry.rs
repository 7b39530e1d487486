//! The client connections every front end is serving, for the HTTP API's connection list and
//! counts. A front end registers a connection when it accepts it and holds the returned
//! [`RegisteredConnection`]; dropping it (however the connection ends) removes the entry.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::connection_count::OpenConnection;
use crate::now_ms;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Kafka,
    Amqp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Kafka => "kafka",
            Protocol::Amqp => "amqp",
        }
    }
}

/// One live connection as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSummary {
    pub id: u64,
    pub protocol: Protocol,
    pub peer: SocketAddr,
    /// The authenticated user, once known (AMQP).
    pub user: Option<String>,
    /// The client's own name (Kafka client id, AMQP connection_name), once known.
    pub client: Option<String>,
    pub connected_at_ms: i64,
    /// The front end's own id for it (the AMQP connection id sessions carry), if any.
    pub protocol_id: Option<u64>,
}

#[derive(Debug, Default)]
pub struct ConnectionRegistry {
    next_id: AtomicU64,
    live: Mutex<BTreeMap<u64, ConnectionSummary>>,
}

impl ConnectionRegistry {
    pub fn register(
        self: &Arc<Self>,
        protocol: Protocol,
        peer: SocketAddr,
        protocol_id: Option<u64>,
    ) -> RegisteredConnection {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.live.lock().insert(
            id,
            ConnectionSummary {
                id,
                protocol,
                peer,
                user: None,
                client: None,
                connected_at_ms: now_ms(),
                protocol_id,
            },
        );
        RegisteredConnection {
            registry: Arc::clone(self),
            id,
            _counted: OpenConnection::new(protocol.name()),
        }
    }

    /// Every live connection, oldest first.
    pub fn list(&self) -> Vec<ConnectionSummary> {
        self.live.lock().values().cloned().collect()
    }

    pub fn count(&self, protocol: Protocol) -> u64 {
        self.live
            .lock()
            .values()
            .filter(|c| c.protocol == protocol)
            .count() as u64
    }
}

/// A registered connection; unregistered when dropped.
#[derive(Debug)]
pub struct RegisteredConnection {
    registry: Arc<ConnectionRegistry>,
    id: u64,
    /// The Prometheus side of the same fact (`sluice_connections{protocol}`).
    _counted: OpenConnection,
}

impl RegisteredConnection {
    pub fn set_user(&self, user: &str) {
        if let Some(entry) = self.registry.live.lock().get_mut(&self.id) {
            entry.user = Some(user.to_string());
        }
    }

    pub fn set_client(&self, client: &str) {
        if let Some(entry) = self.registry.live.lock().get_mut(&self.id) {
            if entry.client.as_deref() != Some(client) {
                entry.client = Some(client.to_string());
            }
        }
    }
}

impl Drop for RegisteredConnection {
    fn drop(&mut self) {
        self.registry.live.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_listed_until_its_registration_is_dropped() {
        let registry = Arc::new(ConnectionRegistry::default());
        let peer: SocketAddr = "127.0.0.1:40000".parse().expect("address");
        let kafka = registry.register(Protocol::Kafka, peer, None);
        let amqp = registry.register(Protocol::Amqp, peer, Some(7));
        amqp.set_user("guest");
        kafka.set_client("rdkafka");
        assert_eq!(registry.count(Protocol::Kafka), 1);
        assert_eq!(registry.count(Protocol::Amqp), 1);
        let listed = registry.list();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].client.as_deref(), Some("rdkafka"));
        assert_eq!(listed[1].user.as_deref(), Some("guest"));
        assert_eq!(listed[1].protocol_id, Some(7));
        drop(kafka);
        assert_eq!(registry.count(Protocol::Kafka), 0);
        assert_eq!(registry.list().len(), 1);
    }
}
