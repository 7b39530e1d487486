//! The topology of the virtual host: exchanges, bindings, queues and streams, and routing a
//! publish through them. Held under the vhost's topology lock; the durable part is snapshotted
//! from here for the definitions saver.

use std::collections::HashMap;
use std::sync::Arc;

use amq_protocol_types::FieldTable;

use super::definitions::{Definitions, QueueDefinition};
use super::exchange::Binding;
use super::{Destination, Exchange, ExchangeKind, Queue, StreamQueue, VhostError};

pub(super) const BUILTIN_EXCHANGES: &[(&str, ExchangeKind)] = &[
    ("", ExchangeKind::Direct),
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

/// Where a publish goes.
#[derive(Default)]
pub(super) struct Targets {
    pub(super) queues: Vec<Arc<Queue>>,
    pub(super) streams: Vec<Arc<StreamQueue>>,
}

pub(super) struct Topology {
    /// The virtual host's name, for error texts.
    pub(super) vhost_name: String,
    pub(super) exchanges: HashMap<String, Exchange>,
    /// By source exchange.
    pub(super) bindings: HashMap<String, Vec<Binding>>,
    pub(super) queues: HashMap<String, Arc<Queue>>,
    /// Stream queues: Kafka topics bound into the AMQP topology.
    pub(super) streams: HashMap<String, Arc<StreamQueue>>,
    /// Durable queues' store directories.
    pub(super) queue_dirs: HashMap<String, String>,
}

impl Topology {
    fn vhost_name(&self) -> &str {
        &self.vhost_name
    }

    /// Refuses a publish to an exchange that does not exist or is internal.
    pub(super) fn publishable(&self, exchange: &str) -> Result<(), VhostError> {
        let vhost_name = self.vhost_name();
        match self.exchanges.get(exchange) {
            None => Err(VhostError::NotFound(format!(
                "no exchange '{exchange}' in vhost '{vhost_name}'"
            ))),
            Some(e) if e.internal => Err(VhostError::AccessRefused(format!(
                "cannot publish to internal exchange '{exchange}' in vhost '{vhost_name}'"
            ))),
            Some(_) => Ok(()),
        }
    }

    /// The queues and streams a message published to `exchange` with these routing key and
    /// headers reaches (following exchange-to-exchange bindings).
    pub(super) fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&FieldTable>,
    ) -> Targets {
        let mut targets = Targets::default();
        let add = |name: &str, targets: &mut Targets| {
            if let Some(queue) = self.queues.get(name) {
                if !targets.queues.iter().any(|q| Arc::ptr_eq(q, queue)) {
                    targets.queues.push(Arc::clone(queue));
                }
            } else if let Some(stream) = self.streams.get(name) {
                if !targets.streams.iter().any(|s| Arc::ptr_eq(s, stream)) {
                    targets.streams.push(Arc::clone(stream));
                }
            }
        };
        if exchange.is_empty() {
            add(routing_key, &mut targets);
            return targets;
        }
        let mut pending = vec![exchange.to_string()];
        let mut seen = vec![exchange.to_string()];
        while let Some(source) = pending.pop() {
            let Some(kind) = self.exchanges.get(&source).map(|e| e.kind) else {
                continue;
            };
            for binding in self.bindings.get(&source).into_iter().flatten() {
                if !binding.matches(kind, routing_key, headers) {
                    continue;
                }
                match &binding.destination {
                    Destination::Queue(name) => add(name, &mut targets),
                    Destination::Exchange(name) => {
                        if !seen.contains(name) {
                            seen.push(name.clone());
                            pending.push(name.clone());
                        }
                    }
                }
            }
        }
        targets
    }

    /// The durable definitions as they are now (taken under the topology lock).
    pub(super) fn durable_definitions(&self) -> Definitions {
        Definitions {
            exchanges: self
                .exchanges
                .values()
                .filter(|e| e.durable && !BUILTIN_EXCHANGES.iter().any(|(n, _)| *n == e.name))
                .cloned()
                .collect(),
            queues: self
                .queues
                .values()
                .filter_map(|q| {
                    self.queue_dirs.get(&q.name).map(|dir| QueueDefinition {
                        name: q.name.clone(),
                        auto_delete: q.auto_delete,
                        arguments: q.arguments.clone(),
                        dir: dir.clone(),
                    })
                })
                .collect(),
            streams: self.streams.keys().cloned().collect(),
            bindings: self
                .bindings
                .values()
                .flatten()
                .filter(|b| {
                    let source_durable = self.exchanges.get(&b.source).is_some_and(|e| e.durable);
                    let destination_durable = match &b.destination {
                        Destination::Queue(q) => {
                            self.queue_dirs.contains_key(q) || self.streams.contains_key(q)
                        }
                        Destination::Exchange(e) => {
                            self.exchanges.get(e).is_some_and(|e| e.durable)
                        }
                    };
                    source_durable && destination_durable
                })
                .cloned()
                .collect(),
        }
    }
}

pub(super) fn remove_auto_delete_exchanges(topology: &mut Topology, emptied: Vec<String>) {
    for source in emptied {
        if topology
            .exchanges
            .get(&source)
            .is_some_and(|e| e.auto_delete)
        {
            topology.exchanges.remove(&source);
            topology.bindings.remove(&source);
        }
    }
}
