//! The queueing model behind AMQP: one virtual host (`/`) of exchanges, queues and bindings.
//! Durable definitions are saved in `amqp/definitions.json`; each durable queue keeps its
//! persistent messages in its own logs under `amqp/queues/`.
//!
//! Modules: `topology` (exchanges, bindings, queues; routing), declarations and publishing
//! here, `definitions` + `definitions_saver` (durable definitions, written outside the
//! topology lock), `alarms` (connection.blocked), `housekeeping` (the periodic task),
//! `dead_letter`, and the queue, store, session and stream modules.
//!
//! Lock order: topology, then a queue's state, then a session's state (a queue's dispatch
//! delivers into sessions), then the delivery sink. Nothing takes a lock to the left of one it
//! holds: sessions release theirs before calling into queues, queues before dead-lettering.

mod alarms;
mod amqp_counters;
mod dead_letter;
mod definitions;
mod definitions_saver;
pub mod exchange;
pub mod field_table;
mod housekeeping;
mod inspect;
pub mod message;
pub mod queue;
mod queue_store;
mod registry;
pub mod session;
pub(crate) mod stream;
mod topology;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use amq_protocol_types::FieldTable;
use parking_lot::RwLock;
use tokio::sync::{oneshot, watch};

pub use alarms::{NodeResources, ResourceAlarms};
pub use dead_letter::DeadLetterReason;
pub use exchange::{Binding, Destination, Exchange, ExchangeKind};
pub use inspect::{ChannelSummary, QueueSummary};
pub use message::{Message, MessageProperties};
pub use queue::QueueStats;
pub use queue::{Consumer, Enqueued, Queue, QueueOptions};
pub use registry::{Created, VirtualHosts};
pub use session::{Committed, Delivery, DeliverySink, Got, MemoryCharge, Session, Settle};
pub use stream::{StreamQueue, StreamStart};

use definitions::Definitions;
use definitions_saver::DefinitionsSaver;
use queue_store::QueueStore;
use topology::{remove_auto_delete_exchanges, Targets, Topology, BUILTIN_EXCHANGES};

use crate::{DurableWait, StorageFailure};

pub type ConnectionId = u64;

/// The virtual host that always exists, and the one AMQP clients open by default.
pub const DEFAULT_VHOST: &str = "/";

/// What went wrong, in the terms AMQP's reply codes distinguish.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum VhostError {
    #[error("NOT_FOUND - {0}")]
    NotFound(String),
    #[error("ACCESS_REFUSED - {0}")]
    AccessRefused(String),
    #[error("RESOURCE_LOCKED - {0}")]
    ResourceLocked(String),
    #[error("PRECONDITION_FAILED - {0}")]
    PreconditionFailed(String),
    #[error("NOT_ALLOWED - {0}")]
    NotAllowed(String),
    /// A connection-level error in AMQP (503).
    #[error("COMMAND_INVALID - {0}")]
    CommandInvalid(String),
    /// The disk failed, or a queue's log is offline after a storage failure.
    #[error("INTERNAL_ERROR - {0}")]
    Storage(StorageFailure),
    /// Any other failure of the broker core underneath (AMQP has no finer code for it).
    #[error("INTERNAL_ERROR - {0}")]
    Internal(String),
}

impl From<crate::BrokerError> for VhostError {
    fn from(error: crate::BrokerError) -> Self {
        match error {
            crate::BrokerError::Storage(failure) => VhostError::Storage(failure),
            other => VhostError::Internal(other.to_string()),
        }
    }
}

impl VhostError {
    /// This error as the answer to a publisher waiting for its message to be stored (which
    /// gets basic.nack for any of them).
    fn as_store_failure(&self) -> crate::BrokerError {
        match self {
            VhostError::Storage(failure) => crate::BrokerError::Storage(failure.clone()),
            other => crate::BrokerError::Storage(StorageFailure::unwritten(other.to_string())),
        }
    }
}

#[derive(Debug, Clone)]
pub struct VhostConfig {
    pub data_dir: PathBuf,
    /// Largest message body accepted.
    pub message_bytes_max: u32,
    /// Publishers are blocked while messages held in memory exceed this.
    pub memory_high_watermark_bytes: u64,
    /// Publishers are blocked while the data directory's disk has less free space than this.
    pub disk_free_limit_bytes: u64,
}

/// What a publish did.
pub struct PublishOutcome {
    /// At least one queue took the message.
    pub routed: bool,
    /// A queue refused it (x-overflow reject-publish): a confirm-mode publisher gets a nack.
    pub rejected: bool,
    /// Resolve when the message is on disk in every durable queue it went to.
    pub durable: Vec<DurableWait>,
    /// Queues whose consumers are falling behind: the publisher should wait for them
    /// (`Queue::until_uncongested`) before it publishes more.
    pub congested: Vec<Arc<Queue>>,
}

pub struct VirtualHost {
    /// As clients name it in connection.open (`/` is the default).
    name: String,
    config: VhostConfig,
    broker: Arc<crate::Broker>,
    topology: RwLock<Topology>,
    resources: Arc<NodeResources>,
    /// Turns true when the virtual host is deleted: its connections close.
    deleted: watch::Sender<bool>,
    /// AMQP connections open on it, for its `max-connections`.
    connections_open: AtomicU64,
    definitions: Arc<DefinitionsSaver>,
    counters: amqp_counters::AmqpCounters,
    weak_self: Weak<VirtualHost>,
    /// Messages published into the vhost (each counted once, however many queues it reached).
    traffic: crate::TrafficCounters,
    /// Every channel's session, for the HTTP API's channel list; dead ones are pruned there.
    sessions: parking_lot::Mutex<Vec<Weak<Session>>>,
}

impl VirtualHost {
    /// Opens the default virtual host (`/`) with resources of its own: loads durable
    /// definitions and recovers durable queues.
    pub fn open(
        config: VhostConfig,
        broker: Arc<crate::Broker>,
    ) -> Result<Arc<VirtualHost>, VhostError> {
        let resources = NodeResources::new(&config);
        VirtualHost::open_named(DEFAULT_VHOST, config, broker, resources)
    }

    /// Opens the virtual host `name`, its data in `config.data_dir`, sharing the node's
    /// resource alarms with the others.
    pub fn open_named(
        name: &str,
        config: VhostConfig,
        broker: Arc<crate::Broker>,
        resources: Arc<NodeResources>,
    ) -> Result<Arc<VirtualHost>, VhostError> {
        let dir = amqp_dir(&config.data_dir);
        let storage = Arc::clone(&broker.config().storage);
        storage
            .create_dir_all_durable(&dir.join("queues"))
            .map_err(|e| VhostError::from(crate::durable_fs::error(&dir, e)))?;
        let definitions = Definitions::load(storage.as_ref(), &dir)?;
        let (deleted, _) = watch::channel(false);
        let vhost = Arc::new_cyclic(|weak| VirtualHost {
            name: name.to_string(),
            config,
            broker,
            topology: RwLock::new(Topology {
                vhost_name: name.to_string(),
                exchanges: HashMap::new(),
                bindings: HashMap::new(),
                queues: HashMap::new(),
                streams: HashMap::new(),
                queue_dirs: HashMap::new(),
            }),
            resources,
            deleted,
            connections_open: AtomicU64::new(0),
            definitions: DefinitionsSaver::new(Arc::clone(&storage), dir.clone()),
            counters: amqp_counters::AmqpCounters::register(),
            weak_self: weak.clone(),
            traffic: crate::TrafficCounters::default(),
            sessions: parking_lot::Mutex::new(Vec::new()),
        });
        {
            let mut topology = vhost.topology.write();
            for (name, kind) in BUILTIN_EXCHANGES {
                topology.exchanges.insert(
                    name.to_string(),
                    Exchange {
                        name: name.to_string(),
                        kind: *kind,
                        durable: true,
                        auto_delete: false,
                        internal: false,
                        arguments: FieldTable::default(),
                    },
                );
            }
            for exchange in definitions.exchanges {
                topology.exchanges.insert(exchange.name.clone(), exchange);
            }
            for name in definitions.streams {
                match StreamQueue::open(Arc::clone(&vhost.broker), &name) {
                    Ok(stream) => {
                        topology.streams.insert(name, stream);
                    }
                    Err(error) => tracing::warn!(stream = %name, %error, "stream queue dropped"),
                }
            }
            for q in definitions.queues {
                let options = QueueOptions::from_arguments(&vhost.name, &q.name, &q.arguments)
                    .unwrap_or_default();
                let store = QueueStore::open(
                    Arc::clone(&storage),
                    &dir.join("queues").join(&q.dir),
                    vhost.config.message_bytes_max,
                    options.max_length_bytes.is_some(),
                )?;
                let messages: u64 = store.1.iter().map(|run| run.count).sum();
                tracing::info!(queue = %q.name, messages, "recovered queue");
                let queue = Queue::new(
                    q.name.clone(),
                    true,
                    None,
                    q.auto_delete,
                    q.arguments,
                    options,
                    Some(store),
                    Weak::clone(&vhost.weak_self),
                );
                topology.queue_dirs.insert(q.name.clone(), q.dir);
                topology.queues.insert(q.name, queue);
            }
            for binding in definitions.bindings {
                topology
                    .bindings
                    .entry(binding.source.clone())
                    .or_default()
                    .push(binding);
            }
        }
        remove_orphan_queue_dirs(storage.as_ref(), &dir, &vhost.topology.read().queue_dirs);
        Ok(vhost)
    }

    /// Counts an AMQP connection opened on the virtual host unless it already has `max` (its
    /// `max-connections`); true if it was counted. `uncount_connection` uncounts it.
    pub fn try_count_connection(&self, max: Option<u64>) -> bool {
        self.connections_open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (max.is_none_or(|max| open < max)).then_some(open + 1)
            })
            .is_ok()
    }

    pub fn uncount_connection(&self) {
        self.connections_open.fetch_sub(1, Ordering::AcqRel);
    }

    /// AMQP connections open on the virtual host.
    pub fn connection_count(&self) -> u64 {
        self.connections_open.load(Ordering::Acquire)
    }

    /// Marks the virtual host deleted: every connection on it closes (`deleted()` turns true)
    /// and every queue is deleted, so the messages it held in memory no longer count against
    /// the node's memory alarm. Its files are the registry's to remove.
    pub fn mark_deleted(&self) {
        self.deleted.send_replace(true);
        for queue in self.all_queues() {
            retire(&queue);
        }
    }

    /// Turns true when the virtual host is deleted.
    pub fn deleted(&self) -> watch::Receiver<bool> {
        self.deleted.subscribe()
    }

    pub fn is_deleted(&self) -> bool {
        *self.deleted.borrow()
    }

    /// Every classic queue of the virtual host (not its streams, which are topics).
    pub fn classic_queues(&self) -> Vec<Arc<Queue>> {
        self.all_queues()
    }

    fn all_queues(&self) -> Vec<Arc<Queue>> {
        self.topology.read().queues.values().cloned().collect()
    }

    /// Finishes the definitions write in progress and flushes every queue's logs (clean
    /// shutdown).
    pub fn shutdown(&self) {
        self.definitions.wait_idle();
        for queue in self.all_queues() {
            queue.flush();
        }
    }

    // ---- exchanges ----

    #[allow(clippy::too_many_arguments)]
    pub fn declare_exchange(
        &self,
        name: &str,
        kind: &str,
        passive: bool,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Result<(), VhostError> {
        let vhost_name = self.vhost_name();
        let mut topology = self.topology.write();
        if let Some(existing) = topology.exchanges.get(name) {
            if passive {
                return Ok(());
            }
            let mismatch = |arg: &str,
                            received: &dyn std::fmt::Display,
                            current: &dyn std::fmt::Display| {
                VhostError::PreconditionFailed(format!(
                    "inequivalent arg '{arg}' for exchange '{name}' in vhost '{vhost_name}': received '{received}' but current is '{current}'"
                ))
            };
            if existing.kind.as_str() != kind {
                return Err(mismatch("type", &kind, &existing.kind.as_str()));
            }
            if existing.durable != durable {
                return Err(mismatch("durable", &durable, &existing.durable));
            }
            if existing.auto_delete != auto_delete {
                return Err(mismatch("auto_delete", &auto_delete, &existing.auto_delete));
            }
            if existing.internal != internal {
                return Err(mismatch("internal", &internal, &existing.internal));
            }
            return Ok(());
        }
        if passive {
            return Err(VhostError::NotFound(format!(
                "no exchange '{name}' in vhost '{vhost_name}'"
            )));
        }
        if name.starts_with("amq.") {
            return Err(VhostError::AccessRefused(format!(
                "exchange name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        let Some(kind) = ExchangeKind::parse(kind) else {
            return Err(VhostError::CommandInvalid(format!(
                "unknown exchange type '{kind}'"
            )));
        };
        let exchange = Exchange {
            name: name.to_string(),
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
        };
        topology.exchanges.insert(name.to_string(), exchange);
        if durable {
            self.save(&topology);
        }
        Ok(())
    }

    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), VhostError> {
        let vhost_name = self.vhost_name();
        let mut topology = self.topology.write();
        if BUILTIN_EXCHANGES.iter().any(|(n, _)| *n == name) {
            return Err(VhostError::AccessRefused(format!(
                "operation not permitted on the default exchange or amq.* exchanges ('{name}')"
            )));
        }
        let Some(exchange) = topology.exchanges.get(name) else {
            // Deleting what is not there succeeds, as in RabbitMQ.
            return Ok(());
        };
        let durable = exchange.durable;
        let used = topology.bindings.get(name).is_some_and(|b| !b.is_empty());
        if if_unused && used {
            return Err(VhostError::PreconditionFailed(format!(
                "exchange '{name}' in vhost '{vhost_name}' in use"
            )));
        }
        topology.exchanges.remove(name);
        topology.bindings.remove(name);
        for bindings in topology.bindings.values_mut() {
            bindings.retain(|b| b.destination != Destination::Exchange(name.to_string()));
        }
        if durable {
            self.save(&topology);
        }
        Ok(())
    }

    // ---- queues ----

    /// queue.declare; returns (name, message count, consumer count). An empty name gets a
    /// server-named queue.
    #[allow(clippy::too_many_arguments)]
    pub fn declare_queue(
        &self,
        name: &str,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: FieldTable,
        connection: ConnectionId,
    ) -> Result<(String, u32, u32), VhostError> {
        let vhost_name = self.vhost_name();
        let mut topology = self.topology.write();
        let wants_stream = arguments
            .inner()
            .get("x-queue-type")
            .and_then(message::value_as_str)
            == Some("stream");
        if topology.streams.contains_key(name) {
            if !passive && !wants_stream {
                return Err(VhostError::PreconditionFailed(format!(
                    "inequivalent arg 'x-queue-type' for queue '{name}' in vhost '{vhost_name}': received none but current is the value 'stream' of type 'longstr'"
                )));
            }
            return Ok((name.to_string(), 0, 0));
        }
        if let Some(existing) = topology.queues.get(name) {
            check_exclusive(existing, connection)?;
            if !passive {
                if existing.durable != durable {
                    return Err(VhostError::PreconditionFailed(format!(
                        "inequivalent arg 'durable' for queue '{name}' in vhost '{vhost_name}': received '{durable}' but current is '{}'",
                        existing.durable
                    )));
                }
                if existing.auto_delete != auto_delete {
                    return Err(VhostError::PreconditionFailed(format!(
                        "inequivalent arg 'auto_delete' for queue '{name}' in vhost '{vhost_name}': received '{auto_delete}' but current is '{}'",
                        existing.auto_delete
                    )));
                }
                if existing.exclusive_owner.is_some() != exclusive {
                    return Err(VhostError::PreconditionFailed(format!(
                        "inequivalent arg 'exclusive' for queue '{name}' in vhost '{vhost_name}': received '{exclusive}' but current is '{}'",
                        existing.exclusive_owner.is_some()
                    )));
                }
                for arg in queue::EQUIVALENT_ARGUMENTS {
                    let ours = existing.arguments.inner().get(*arg);
                    let theirs = arguments.inner().get(*arg);
                    let same = match (ours, theirs) {
                        (Some(a), Some(b)) => values_equivalent(a, b),
                        (None, None) => true,
                        _ => false,
                    };
                    if !same {
                        return Err(VhostError::PreconditionFailed(format!(
                            "inequivalent arg '{arg}' for queue '{name}' in vhost '{vhost_name}': received {} but current is {}",
                            describe(theirs),
                            describe(ours)
                        )));
                    }
                }
            }
            return Ok((
                name.to_string(),
                existing.message_count(),
                existing.consumer_count(),
            ));
        }
        if passive {
            return Err(VhostError::NotFound(format!(
                "no queue '{name}' in vhost '{vhost_name}'"
            )));
        }
        if name.starts_with("amq.") {
            return Err(VhostError::AccessRefused(format!(
                "queue name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        let name = if name.is_empty() {
            format!("amq.gen-{}", server_name_suffix())
        } else {
            name.to_string()
        };
        let options = QueueOptions::from_arguments(&self.name, &name, &arguments)?;
        // Dead-lettered messages carry it as their routing key, an AMQP short string. Checked
        // here, not in `from_arguments`, so a queue declared before the check still recovers.
        if options
            .dead_letter_routing_key
            .as_ref()
            .is_some_and(|key| key.len() > message::SHORT_STRING_BYTES_MAX)
        {
            return Err(VhostError::PreconditionFailed(format!(
                "invalid arg 'x-dead-letter-routing-key' for queue '{name}' in vhost '{vhost_name}': longer than {} bytes",
                message::SHORT_STRING_BYTES_MAX
            )));
        }
        if wants_stream {
            // RabbitMQ's rules for streams: durable, shared, never auto-deleted.
            if !durable || exclusive || auto_delete {
                let property = if !durable {
                    "non-durable"
                } else if exclusive {
                    "exclusive"
                } else {
                    "auto-delete"
                };
                return Err(VhostError::PreconditionFailed(format!(
                    "invalid property '{property}' for queue '{name}' in vhost '{vhost_name}'"
                )));
            }
            // A stream queue is the Kafka topic of its name, and topics have one namespace:
            // a stream in another vhost would be readable from every vhost through Kafka.
            if self.name != DEFAULT_VHOST {
                return Err(VhostError::PreconditionFailed(format!(
                    "invalid arg 'x-queue-type' for queue '{name}' in vhost '{vhost_name}': stream queues are Kafka topics, which exist only in the default virtual host '/'"
                )));
            }
            let stream = StreamQueue::open(Arc::clone(&self.broker), &name)?;
            topology.streams.insert(name.clone(), stream);
            self.save(&topology);
            return Ok((name, 0, 0));
        }
        if let Some(kind) = arguments
            .inner()
            .get("x-queue-type")
            .and_then(message::value_as_str)
        {
            if kind != "classic" {
                return Err(VhostError::PreconditionFailed(format!(
                    "invalid arg 'x-queue-type' for queue '{name}' in vhost '{vhost_name}': queue type '{kind}' is not supported"
                )));
            }
        }
        // Exclusive queues die with their connection, so they are never stored.
        let persistent = durable && !exclusive;
        let store = if persistent {
            let dir = format!("q-{}", uuid::Uuid::new_v4().simple());
            let store = QueueStore::open(
                Arc::clone(&self.broker.config().storage),
                &amqp_dir(&self.config.data_dir).join("queues").join(&dir),
                self.config.message_bytes_max,
                false,
            )?;
            topology.queue_dirs.insert(name.clone(), dir);
            Some(store)
        } else {
            None
        };
        let queue = Queue::new(
            name.clone(),
            durable,
            exclusive.then_some(connection),
            auto_delete,
            arguments,
            options,
            store,
            Weak::clone(&self.weak_self),
        );
        topology.queues.insert(name.clone(), queue);
        // Every queue is bound to the default exchange by its name (implicitly: see route()).
        if persistent {
            self.save(&topology);
        }
        Ok((name, 0, 0))
    }

    /// The queue `name`, if `connection` may use it.
    /// The stream queue `name`, if it is one.
    pub fn stream(&self, name: &str) -> Option<Arc<StreamQueue>> {
        self.topology.read().streams.get(name).cloned()
    }

    pub fn queue_for(
        &self,
        name: &str,
        connection: ConnectionId,
    ) -> Result<Arc<Queue>, VhostError> {
        let vhost_name = self.vhost_name();
        let topology = self.topology.read();
        if topology.streams.contains_key(name) {
            return Err(VhostError::PreconditionFailed(format!(
                "queue '{name}' in vhost '{vhost_name}' is a stream: consume it with basic.consume"
            )));
        }
        let queue = topology.queues.get(name).ok_or_else(|| {
            VhostError::NotFound(format!("no queue '{name}' in vhost '{vhost_name}'"))
        })?;
        check_exclusive(queue, connection)?;
        Ok(Arc::clone(queue))
    }

    pub fn purge_queue(&self, name: &str, connection: ConnectionId) -> Result<u32, VhostError> {
        Ok(self.queue_for(name, connection)?.purge())
    }

    /// queue.delete; returns the number of messages deleted.
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        connection: ConnectionId,
    ) -> Result<u32, VhostError> {
        let vhost_name = self.vhost_name();
        {
            // A stream queue goes from the AMQP topology; its Kafka topic and data stay.
            let mut topology = self.topology.write();
            if topology.streams.remove(name).is_some() {
                let target = Destination::Queue(name.to_string());
                for bindings in topology.bindings.values_mut() {
                    bindings.retain(|b| b.destination != target);
                }
                self.save(&topology);
                return Ok(0);
            }
        }
        let queue = {
            let topology = self.topology.read();
            let Some(queue) = topology.queues.get(name) else {
                // RabbitMQ answers delete-ok for a queue that is already gone.
                return Ok(0);
            };
            check_exclusive(queue, connection)?;
            if if_unused && queue.consumer_count() > 0 {
                return Err(VhostError::PreconditionFailed(format!(
                    "queue '{name}' in vhost '{vhost_name}' in use"
                )));
            }
            if if_empty && (queue.message_count() > 0 || queue.unacked_count() > 0) {
                return Err(VhostError::PreconditionFailed(format!(
                    "queue '{name}' in vhost '{vhost_name}' not empty"
                )));
            }
            Arc::clone(queue)
        };
        Ok(self.remove_queue(&queue))
    }

    fn remove_queue(&self, queue: &Arc<Queue>) -> u32 {
        {
            let mut topology = self.topology.write();
            match topology.queues.get(&queue.name) {
                Some(q) if Arc::ptr_eq(q, queue) => {}
                _ => return 0,
            }
            topology.queues.remove(&queue.name);
            let target = Destination::Queue(queue.name.clone());
            let mut emptied = Vec::new();
            for (source, bindings) in topology.bindings.iter_mut() {
                let before = bindings.len();
                bindings.retain(|b| b.destination != target);
                if before != bindings.len() && bindings.is_empty() {
                    emptied.push(source.clone());
                }
            }
            remove_auto_delete_exchanges(&mut topology, emptied);
            // The queue's files go only once the definitions without it are on disk.
            if let Some(dir) = topology.queue_dirs.remove(&queue.name) {
                let path = amqp_dir(&self.config.data_dir).join("queues").join(dir);
                let storage = Arc::clone(&self.broker.config().storage);
                let remove_files: definitions_saver::AfterSaved = Box::new(move || {
                    if let Err(error) = crate::durable_fs::remove_dir_all(storage.as_ref(), &path) {
                        tracing::warn!(path = %path.display(), %error, "could not remove queue directory");
                    }
                });
                self.definitions
                    .submit_then(topology.durable_definitions(), Some(remove_files));
            }
        }
        retire(queue)
    }

    pub(crate) fn auto_delete_queue(&self, queue: &Arc<Queue>) {
        self.remove_queue(queue);
    }

    /// The connection is gone: its exclusive queues go with it.
    pub fn connection_closed(&self, connection: ConnectionId) {
        let exclusive: Vec<Arc<Queue>> = self
            .topology
            .read()
            .queues
            .values()
            .filter(|q| q.exclusive_owner == Some(connection))
            .cloned()
            .collect();
        for queue in exclusive {
            self.remove_queue(&queue);
        }
    }

    // ---- bindings ----

    pub fn bind(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: FieldTable,
        connection: ConnectionId,
    ) -> Result<(), VhostError> {
        let mut topology = self.topology.write();
        let durable = self.check_binding(&topology, source, &destination, connection)?;
        let binding = Binding {
            source: source.to_string(),
            destination,
            routing_key: routing_key.to_string(),
            arguments,
        };
        let bindings = topology.bindings.entry(source.to_string()).or_default();
        if !bindings.contains(&binding) {
            bindings.push(binding);
            if durable {
                self.save(&topology);
            }
        }
        Ok(())
    }

    pub fn unbind(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: FieldTable,
        connection: ConnectionId,
    ) -> Result<(), VhostError> {
        let mut topology = self.topology.write();
        let durable = self.check_binding(&topology, source, &destination, connection)?;
        let Some(bindings) = topology.bindings.get_mut(source) else {
            return Ok(());
        };
        let before = bindings.len();
        bindings.retain(|b| {
            !(b.destination == destination
                && b.routing_key == routing_key
                && b.arguments == arguments)
        });
        let changed = before != bindings.len();
        if changed && bindings.is_empty() {
            remove_auto_delete_exchanges(&mut topology, vec![source.to_string()]);
        }
        if changed && durable {
            self.save(&topology);
        }
        Ok(())
    }

    /// Checks both ends exist (and may be used); returns whether the binding is durable.
    fn check_binding(
        &self,
        topology: &Topology,
        source: &str,
        destination: &Destination,
        connection: ConnectionId,
    ) -> Result<bool, VhostError> {
        let vhost_name = self.vhost_name();
        let destination_durable = match destination {
            Destination::Queue(name) if topology.streams.contains_key(name) => true,
            Destination::Queue(name) => {
                let queue = topology.queues.get(name).ok_or_else(|| {
                    VhostError::NotFound(format!("no queue '{name}' in vhost '{vhost_name}'"))
                })?;
                check_exclusive(queue, connection)?;
                queue.durable && queue.exclusive_owner.is_none()
            }
            Destination::Exchange(name) => {
                topology
                    .exchanges
                    .get(name)
                    .ok_or_else(|| {
                        VhostError::NotFound(format!(
                            "no exchange '{name}' in vhost '{vhost_name}'"
                        ))
                    })?
                    .durable
            }
        };
        if source.is_empty() {
            return Err(VhostError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        let source_exchange = topology.exchanges.get(source).ok_or_else(|| {
            VhostError::NotFound(format!("no exchange '{source}' in vhost '{vhost_name}'"))
        })?;
        Ok(destination_durable && source_exchange.durable)
    }

    // ---- publishing ----

    /// Refuses a publish to an exchange that does not exist (or is internal).
    pub fn check_publishable(&self, exchange: &str) -> Result<(), VhostError> {
        self.topology.read().publishable(exchange)
    }

    /// Routes the message from its exchange by its routing key (and headers) and stores it in
    /// every queue and stream it reaches.
    pub fn publish(&self, message: Message) -> Result<PublishOutcome, VhostError> {
        let targets = {
            let topology = self.topology.read();
            topology.publishable(&message.exchange)?;
            topology.route(
                &message.exchange,
                &message.routing_key,
                message.properties.headers.as_ref(),
            )
        };
        // Counted once accepted (routed or not); a publish to a missing exchange is not.
        self.counters.published.increment(1);
        Ok(self.deliver_to(targets, message))
    }

    fn deliver_to(&self, targets: Targets, message: Message) -> PublishOutcome {
        self.traffic.record_in(1, message.body.len() as u64);
        let mut outcome = PublishOutcome {
            routed: !targets.queues.is_empty() || !targets.streams.is_empty(),
            rejected: false,
            durable: Vec::new(),
            congested: Vec::new(),
        };
        let failed = |error: &VhostError| {
            let (sender, receiver) = oneshot::channel();
            let _ = sender.send(Err(error.as_store_failure()));
            receiver
        };
        for stream in &targets.streams {
            match stream.publish(&message) {
                Ok(durable) => outcome.durable.push(durable),
                Err(error) => {
                    tracing::warn!(stream = %stream.name, %error, "could not append a message to a stream");
                    outcome.durable.push(failed(&error));
                }
            }
        }
        let message = Arc::new(message);
        for queue in targets.queues {
            match queue.enqueue(Arc::clone(&message)) {
                Ok(Enqueued::Accepted(Some(durable))) => outcome.durable.push(durable),
                Ok(Enqueued::Accepted(None)) => {}
                Ok(Enqueued::Rejected) => outcome.rejected = true,
                Err(error) => {
                    tracing::warn!(queue = %queue.name, %error, "could not store a message");
                    outcome.durable.push(failed(&error));
                }
            }
            if queue.is_congested() {
                outcome.congested.push(queue);
            }
        }
        outcome
    }
}

fn amqp_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("amqp")
}

fn check_exclusive(queue: &Queue, connection: ConnectionId) -> Result<(), VhostError> {
    let vhost_name = queue.vhost_name();
    match queue.exclusive_owner {
        Some(owner) if owner != connection => Err(VhostError::ResourceLocked(format!(
            "cannot obtain exclusive access to locked queue '{}' in vhost '{vhost_name}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
            queue.name
        ))),
        _ => Ok(()),
    }
}

fn values_equivalent(a: &amq_protocol_types::AMQPValue, b: &amq_protocol_types::AMQPValue) -> bool {
    if let (Some(x), Some(y)) = (message::value_as_i64(a), message::value_as_i64(b)) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (message::value_as_str(a), message::value_as_str(b)) {
        return x == y;
    }
    a == b
}

fn describe(value: Option<&amq_protocol_types::AMQPValue>) -> String {
    match value {
        None => "none".into(),
        Some(v) => match (message::value_as_i64(v), message::value_as_str(v)) {
            (Some(n), _) => format!("the value '{n}' of type 'long'"),
            (_, Some(s)) => format!("the value '{s}' of type 'longstr'"),
            _ => format!("{v:?}"),
        },
    }
}

fn server_name_suffix() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::thread_rng().gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Marks a queue deleted, empties it and tells its consumers' sessions; answers how many
/// messages it held.
fn retire(queue: &Queue) -> u32 {
    let (consumers, count) = queue.mark_deleted();
    for consumer in consumers {
        consumer.session.consumer_gone(&consumer);
    }
    count
}

fn remove_orphan_queue_dirs(
    storage: &dyn sluice_log::Storage,
    dir: &Path,
    known: &HashMap<String, String>,
) {
    let queues = dir.join("queues");
    let Ok(entries) = storage.read_dir(&queues) else {
        return;
    };
    for entry in entries {
        let name = entry.to_string_lossy().into_owned();
        if !known.values().any(|d| *d == name) {
            // A queue deleted (or declared) around a crash: its definition is what counts.
            let _ = crate::durable_fs::remove_dir_all(storage, &queues.join(entry));
        }
    }
}
