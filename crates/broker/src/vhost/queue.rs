//! An AMQP queue: messages ready for delivery in publish order, the consumers it delivers to
//! (round robin, within each one's prefetch), and the rules that move messages out of it: acks,
//! TTL, max-length and dead-lettering. A durable queue keeps its persistent messages in a
//! `QueueStore`; everything else lives in memory only, as in RabbitMQ.
//!
//! Memory holds a small index entry per message, never a backlog's bodies: a persistent
//! message of a durable queue keeps its body in memory only while the queue's in-memory bodies
//! stay under `READY_MEMORY_BYTES_MAX`; past that it is a position in a `StoredRun` (offsets
//! in the message log, no body), and runs of consecutive messages share one entry. The head of
//! the queue is read back from the log when it is delivered, through a read-ahead of whole
//! batches (`READ_AHEAD_BYTES` per read), so a drain costs one read per batch, not per message.
//! Recovered messages have an unknown expiry until they reach the head (which is the only place
//! RabbitMQ expires messages anyway): start-up does not read their records.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use amq_protocol_types::FieldTable;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::dead_letter::DeadLetterReason;
use super::message::{value_as_i64, value_as_str, Message};
use super::queue_store::{normalize_ranges, QueueStore};
use super::session::Session;
use super::stream::{StreamQueue, StreamStart};
use super::{ConnectionId, VhostError, VirtualHost, DEFAULT_VHOST};
use crate::now_ms;

/// Delivery marks are written this many offsets ahead of the delivery that needed one.
const DELIVERY_MARK_WINDOW: u64 = 1024;
/// Flow control: a queue with consumers and more ready messages than this makes its
/// publishers wait before their next frame, and lets one through per message its consumers
/// take. Without it publishers outrun consumers and the backlog, and with it the latency,
/// grows without bound; a queue nobody consumes takes bursts at full speed (peak shaving).
const FLOW_HIGH: u64 = 1000;
/// Bodies of persistent messages a durable queue keeps in memory, ready for delivery; the rest
/// of its backlog is read back from its log.
pub const READY_MEMORY_BYTES_MAX: u64 = 8 << 20;
/// Bytes of log read (and decoded) ahead of a queue's consumers in one go.
const READ_AHEAD_BYTES: usize = 1 << 20;
/// The message log's start is moved (a checkpoint write) once the oldest live message is this
/// many offsets past it, or the queue is empty: a segment holds tens of thousands of messages.
const RECLAIM_OFFSETS_MIN: u64 = 10_000;
/// Bytes read to learn the expiry of a queue's head when nobody consumes (one batch at least).
const HEAD_PEEK_BYTES: usize = 16 << 10;

/// What a full queue (x-max-length / x-max-length-bytes) does with one more message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    DropHead,
    RejectPublish,
    RejectPublishDlx,
}

/// The queue arguments Sluice acts on, validated at declare time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueOptions {
    pub message_ttl_ms: Option<i64>,
    pub dead_letter_exchange: Option<String>,
    pub dead_letter_routing_key: Option<String>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Option<Overflow>,
}

/// Arguments whose values must agree when an existing queue is declared again (RabbitMQ's list).
pub const EQUIVALENT_ARGUMENTS: &[&str] = &[
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-message-ttl",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
];

impl QueueOptions {
    pub fn from_arguments(
        vhost_name: &str,
        queue: &str,
        args: &FieldTable,
    ) -> Result<QueueOptions, VhostError> {
        let invalid = |arg: &str, why: &str| {
            VhostError::PreconditionFailed(format!(
                "invalid arg '{arg}' for queue '{queue}' in vhost '{vhost_name}': {why}"
            ))
        };
        let non_negative = |arg: &str| -> Result<Option<i64>, VhostError> {
            match args.inner().get(arg) {
                None => Ok(None),
                Some(v) => match value_as_i64(v) {
                    Some(n) if n >= 0 => Ok(Some(n)),
                    Some(n) => Err(invalid(arg, &format!("{{value_negative,{n}}}"))),
                    None => Err(invalid(arg, "{unacceptable_type,longstr}")),
                },
            }
        };
        let text = |arg: &str| -> Result<Option<String>, VhostError> {
            match args.inner().get(arg) {
                None => Ok(None),
                Some(v) => value_as_str(v)
                    .map(|s| Some(s.to_string()))
                    .ok_or_else(|| invalid(arg, "{unacceptable_type}")),
            }
        };
        let overflow = match text("x-overflow")?.as_deref() {
            None => None,
            Some("drop-head") => Some(Overflow::DropHead),
            Some("reject-publish") => Some(Overflow::RejectPublish),
            Some("reject-publish-dlx") => Some(Overflow::RejectPublishDlx),
            Some(other) => {
                return Err(invalid(
                    "x-overflow",
                    &format!("{{unknown_overflow_value,<<\"{other}\">>}}"),
                ))
            }
        };
        Ok(QueueOptions {
            message_ttl_ms: non_negative("x-message-ttl")?,
            dead_letter_exchange: text("x-dead-letter-exchange")?,
            dead_letter_routing_key: text("x-dead-letter-routing-key")?,
            max_length: non_negative("x-max-length")?.map(|n| n as u64),
            max_length_bytes: non_negative("x-max-length-bytes")?.map(|n| n as u64),
            overflow,
        })
    }
}

/// One message in a queue.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Position in the queue: requeued messages go back to where they were.
    pub seq: u64,
    /// Where a persistent message of a durable queue is stored.
    pub log_offset: Option<u64>,
    pub message: Arc<Message>,
    pub redelivered: bool,
    pub expires_at_ms: Option<i64>,
}

/// What a consumer reads: a queue, or a Kafka topic through a stream queue.
pub enum ConsumerSource {
    Queue(Arc<Queue>),
    Stream(Arc<StreamQueue>, StreamStart),
}

/// A basic.consume on a queue.
pub struct Consumer {
    pub tag: String,
    pub source: ConsumerSource,
    pub session: Arc<Session>,
    pub no_ack: bool,
    pub exclusive: bool,
    /// basic.qos prefetch-count (global=false) when the consumer started; 0 = unlimited.
    pub prefetch: u32,
    pub unacked: AtomicU32,
    pub cancelled: AtomicBool,
    /// Wakes a stream consumer's reader when credit comes back or the consumer ends.
    pub credit: Notify,
}

impl Consumer {
    pub(super) fn has_credit(&self) -> bool {
        // No prefetch limits a no-ack consumer, but every consumer stops while its
        // connection's socket is backed up.
        !self.cancelled.load(Ordering::Acquire)
            && (self.no_ack
                || ((self.prefetch == 0 || self.unacked.load(Ordering::Acquire) < self.prefetch)
                    && self.session.has_credit()))
            && self.session.can_write()
    }
}

/// When the messages of a [`StoredRun`] expire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunExpiry {
    Never,
    At(i64),
    /// Recovered from disk: computed from the record when the message reaches the head.
    Unknown,
}

impl RunExpiry {
    fn from_expires_at(expires_at_ms: Option<i64>) -> RunExpiry {
        expires_at_ms.map_or(RunExpiry::Never, RunExpiry::At)
    }
}

/// Persistent messages whose bodies are only in the queue's log: consecutive positions and log
/// offsets, alike in their redelivered flag and expiry (same millisecond), so a burst of
/// millions of messages is a handful of these.
#[derive(Debug, Clone)]
struct StoredRun {
    seq_first: u64,
    offset_first: u64,
    count: u64,
    /// Sum of the bodies' counted sizes (see `Queue::counted_bytes`).
    body_bytes: u64,
    redelivered: bool,
    expiry: RunExpiry,
}

/// A ready message, or several only on disk.
enum Ready {
    InMemory(Entry),
    OnDisk(StoredRun),
}

impl Ready {
    fn seq(&self) -> u64 {
        match self {
            Ready::InMemory(entry) => entry.seq,
            Ready::OnDisk(run) => run.seq_first,
        }
    }
}

/// Messages decoded ahead of the head of the queue, in offset order.
#[derive(Default)]
struct ReadAhead {
    messages: VecDeque<(u64, Message, i64)>,
    bytes: u64,
}

impl ReadAhead {
    fn clear(&mut self) {
        self.messages.clear();
        self.bytes = 0;
    }

    /// The message at `offset` and its record timestamp, reading a batch from the log when it
    /// is not in hand. None when the log cannot serve it yet (not yet written and synced).
    fn take(
        &mut self,
        store: &QueueStore,
        offset: u64,
        read_bytes: usize,
    ) -> Result<Option<(Message, i64)>, crate::BrokerError> {
        while self.messages.front().is_some_and(|(o, _, _)| *o < offset) {
            self.pop_front();
        }
        if self.messages.front().is_none_or(|(o, _, _)| *o != offset) {
            self.clear();
            for (o, message, timestamp) in store.read_messages(offset, read_bytes)? {
                self.bytes += message.body.len() as u64;
                self.messages.push_back((o, message, timestamp));
            }
        }
        if self.messages.front().is_some_and(|(o, _, _)| *o == offset) {
            Ok(self.pop_front())
        } else {
            Ok(None)
        }
    }

    fn pop_front(&mut self) -> Option<(Message, i64)> {
        let (_, message, timestamp) = self.messages.pop_front()?;
        self.bytes -= message.body.len() as u64;
        Some((message, timestamp))
    }
}

#[derive(Default)]
struct QueueState {
    ready: VecDeque<Ready>,
    /// Messages in `ready` (a stored run counts all its messages).
    ready_count: u64,
    /// Counted body bytes of the ready messages (for x-max-length-bytes).
    ready_bytes: u64,
    /// Bodies of the in-memory ready entries.
    ready_memory_bytes: u64,
    read_ahead: ReadAhead,
    /// The head is on disk but could not be read yet: housekeeping retries the dispatch.
    head_unreadable: bool,
    /// Log offsets of persistent messages delivered and not yet settled.
    unacked_offsets: BTreeSet<u64>,
    unacked_count: usize,
    consumers: Vec<Arc<Consumer>>,
    next_consumer: usize,
    next_seq: u64,
    /// Every stored message below this offset may have been delivered (the mark on disk).
    delivered_below: u64,
    /// One past the highest stored offset actually delivered.
    delivered_exact: u64,
    /// auto-delete queues go when the last of their consumers does, once they had one.
    had_consumer: bool,
    deleted: bool,
}

pub struct Queue {
    pub name: String,
    pub durable: bool,
    pub exclusive_owner: Option<ConnectionId>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    pub options: QueueOptions,
    store: Option<QueueStore>,
    state: Mutex<QueueState>,
    vhost: Weak<VirtualHost>,
    /// One permit per message taken while the backlog is at or under `FLOW_HIGH`.
    drained: Notify,
    counters: QueueCounters,
}

/// A queue's message counts since it was opened (for rates in the HTTP API).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub published_total: u64,
    pub delivered_total: u64,
    pub delivered_bytes_total: u64,
    /// Acknowledged, or rejected without requeue.
    pub acked_total: u64,
}

#[derive(Debug, Default)]
struct QueueCounters {
    published: AtomicU64,
    delivered: AtomicU64,
    delivered_bytes: AtomicU64,
    acked: AtomicU64,
}

impl QueueCounters {
    fn delivered(&self, entry: &Entry) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.delivered_bytes
            .fetch_add(entry.message.body.len() as u64, Ordering::Relaxed);
    }
}

/// What publishing into one queue gave.
pub enum Enqueued {
    /// In the queue; for a persistent message in a durable queue, the receiver says when it is
    /// on disk.
    Accepted(Option<crate::DurableWait>),
    /// The queue is full and refuses publishes (x-overflow reject-publish).
    Rejected,
}

impl Queue {
    /// The name of the virtual host the queue is in (for error texts).
    pub(super) fn vhost_name(&self) -> String {
        self.vhost.upgrade().map_or_else(
            || DEFAULT_VHOST.to_string(),
            |vhost| vhost.vhost_name().to_string(),
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        name: String,
        durable: bool,
        exclusive_owner: Option<ConnectionId>,
        auto_delete: bool,
        arguments: FieldTable,
        options: QueueOptions,
        store: Option<(QueueStore, Vec<super::queue_store::RecoveredRun>)>,
        vhost: Weak<VirtualHost>,
    ) -> Arc<Queue> {
        let mut state = QueueState::default();
        let count_bytes = options.max_length_bytes.is_some();
        let store = store.map(|(store, recovered)| {
            for run in recovered {
                state.ready_count += run.count;
                if count_bytes {
                    state.ready_bytes += run.body_bytes;
                }
                state.ready.push_back(Ready::OnDisk(StoredRun {
                    seq_first: state.next_seq,
                    offset_first: run.offset_first,
                    count: run.count,
                    body_bytes: if count_bytes { run.body_bytes } else { 0 },
                    redelivered: run.maybe_delivered,
                    expiry: RunExpiry::Unknown,
                }));
                state.next_seq += run.count;
                if run.maybe_delivered {
                    state.delivered_below = state.delivered_below.max(run.offset_first + run.count);
                }
            }
            state.delivered_exact = state.delivered_below;
            store
        });
        Arc::new(Queue {
            name,
            durable,
            exclusive_owner,
            auto_delete,
            arguments,
            options,
            store,
            state: Mutex::new(state),
            vhost,
            drained: Notify::new(),
            counters: QueueCounters::default(),
        })
    }

    pub fn message_count(&self) -> u32 {
        self.state.lock().ready_count.min(u64::from(u32::MAX)) as u32
    }
    pub fn consumer_count(&self) -> u32 {
        self.state.lock().consumers.len() as u32
    }
    pub fn unacked_count(&self) -> usize {
        self.state.lock().unacked_count
    }
    pub fn stats(&self) -> QueueStats {
        QueueStats {
            published_total: self.counters.published.load(Ordering::Relaxed),
            delivered_total: self.counters.delivered.load(Ordering::Relaxed),
            delivered_bytes_total: self.counters.delivered_bytes.load(Ordering::Relaxed),
            acked_total: self.counters.acked.load(Ordering::Relaxed),
        }
    }

    pub fn is_deleted(&self) -> bool {
        self.state.lock().deleted
    }

    /// Adds a message; dispatches to waiting consumers afterwards.
    pub(super) fn enqueue(self: &Arc<Self>, message: Arc<Message>) -> Result<Enqueued, VhostError> {
        let mut dead = Vec::new();
        let outcome = {
            let mut state = self.state.lock();
            if state.deleted {
                return Ok(Enqueued::Accepted(None));
            }
            let body = message.body.len() as u64;
            let counted = self.counted_bytes(body);
            if let Some(overflow @ (Overflow::RejectPublish | Overflow::RejectPublishDlx)) =
                self.options.overflow
            {
                if self.is_full(&state, 1, counted) {
                    if overflow == Overflow::RejectPublishDlx {
                        dead.push((message.as_ref().clone(), DeadLetterReason::MaxLen));
                    }
                    drop(state);
                    self.dead_letter_all(dead);
                    return Ok(Enqueued::Rejected);
                }
            }
            let (log_offset, durable) = match &self.store {
                Some(store) if message.is_persistent() => {
                    let (offset, durable) = store.append(&message)?;
                    (Some(offset), Some(durable))
                }
                _ => (None, None),
            };
            let expires_at_ms = expiry(&self.options, &message, now_ms());
            let seq = state.next_seq;
            state.next_seq += 1;
            state.ready_count += 1;
            state.ready_bytes += counted;
            match log_offset {
                // The body is in the log (or on its way there): only its position stays here.
                Some(offset) if state.ready_memory_bytes + body > READY_MEMORY_BYTES_MAX => {
                    push_stored(
                        &mut state,
                        seq,
                        offset,
                        counted,
                        RunExpiry::from_expires_at(expires_at_ms),
                    );
                }
                _ => {
                    state.ready_memory_bytes += body;
                    self.memory_add(body as i64);
                    state.ready.push_back(Ready::InMemory(Entry {
                        seq,
                        log_offset,
                        message,
                        redelivered: false,
                        expires_at_ms,
                    }));
                }
            }
            // drop-head: the oldest ready messages make room.
            while self.is_full(&state, 0, 0) {
                let read_bytes = read_bytes(&state);
                let Some(oldest) = self.take_front(&mut state, read_bytes) else {
                    break;
                };
                self.settle_stored(&[&oldest]);
                dead.push((oldest.message.as_ref().clone(), DeadLetterReason::MaxLen));
            }
            self.counters.published.fetch_add(1, Ordering::Relaxed);
            Enqueued::Accepted(durable)
        };
        self.dead_letter_all(dead);
        self.dispatch();
        Ok(outcome)
    }

    /// A body's size as `ready_bytes` counts it: only a queue with x-max-length-bytes needs
    /// (and, after a restart, reads) exact sizes.
    fn counted_bytes(&self, body_bytes: u64) -> u64 {
        if self.options.max_length_bytes.is_some() {
            body_bytes
        } else {
            0
        }
    }

    fn is_full(&self, state: &QueueState, extra: u64, extra_bytes: u64) -> bool {
        self.options
            .max_length
            .is_some_and(|max| state.ready_count + extra > max)
            || self
                .options
                .max_length_bytes
                .is_some_and(|max| state.ready_bytes + extra_bytes > max)
    }

    fn memory_add(&self, bytes: i64) {
        if bytes == 0 {
            return;
        }
        if let Some(vhost) = self.vhost.upgrade() {
            vhost.memory_add(bytes);
        }
    }

    fn settle_stored(&self, entries: &[&Entry]) {
        let offsets: Vec<u64> = entries.iter().filter_map(|e| e.log_offset).collect();
        self.settle_offsets(&offsets);
    }

    fn settle_offsets(&self, offsets: &[u64]) {
        let Some(store) = &self.store else { return };
        if let Err(error) = store.settle(offsets) {
            // The message stays in the store and comes back after a restart: a redelivery,
            // never a loss.
            tracing::warn!(queue = %self.name, %error, "could not record settled messages");
        }
    }

    /// Hands ready messages to consumers with credit, round robin, until one or the other runs
    /// out. Expired messages met on the way are dead-lettered.
    pub fn dispatch(self: &Arc<Self>) {
        let mut dead = Vec::new();
        {
            let mut state = self.state.lock();
            if state.consumers.is_empty() || state.ready_count == 0 {
                return;
            }
            let now = now_ms();
            loop {
                self.take_expired_head(&mut state, now, &mut dead);
                if state.ready_count == 0 {
                    break;
                }
                let count = state.consumers.len();
                let Some(index) = (0..count)
                    .map(|i| (state.next_consumer + i) % count)
                    .find(|&i| state.consumers[i].has_credit())
                else {
                    break;
                };
                state.next_consumer = (index + 1) % count;
                let consumer = Arc::clone(&state.consumers[index]);
                let Some(entry) = self.take_front(&mut state, READ_AHEAD_BYTES) else {
                    break;
                };
                if let Some(offset) = entry.log_offset {
                    self.note_delivered(&mut state, offset);
                }
                self.counters.delivered(&entry);
                if consumer.no_ack {
                    self.settle_stored(&[&entry]);
                    consumer.session.deliver(&consumer, self, entry, false);
                } else {
                    self.track_unacked(&mut state, &entry);
                    consumer.unacked.fetch_add(1, Ordering::AcqRel);
                    consumer.session.deliver(&consumer, self, entry, true);
                }
            }
        }
        self.dead_letter_all(dead);
    }

    /// An unacked delivery keeps its body in memory (and in the memory count) until settled.
    fn track_unacked(&self, state: &mut QueueState, entry: &Entry) {
        state.unacked_count += 1;
        if let Some(offset) = entry.log_offset {
            state.unacked_offsets.insert(offset);
        }
        self.memory_add(entry.message.body.len() as i64);
    }

    /// Records that the stored message at `offset` is being delivered. The mark on disk is
    /// written before the delivery leaves (so a crash brings it back redelivered) and a window
    /// ahead, so one write covers many deliveries; a clean shutdown writes the exact mark.
    fn note_delivered(&self, state: &mut QueueState, offset: u64) {
        state.delivered_exact = state.delivered_exact.max(offset + 1);
        if offset < state.delivered_below {
            return;
        }
        state.delivered_below = offset + DELIVERY_MARK_WINDOW;
        if let Some(store) = &self.store {
            if let Err(error) = store.mark_delivered_below(state.delivered_below) {
                tracing::warn!(queue = %self.name, %error, "could not record a delivery mark");
            }
        }
    }

    /// Whether publishers should wait (see `FLOW_HIGH`).
    pub fn is_congested(&self) -> bool {
        let state = self.state.lock();
        state.ready_count > FLOW_HIGH && !state.consumers.is_empty() && !state.deleted
    }

    /// Returns once the queue has room again. Waiting publishers are let through one per
    /// message the consumers take, in the order they started waiting, so no publisher is
    /// starved while the others refill the queue (the fairness RabbitMQ's credit flow gives).
    pub async fn until_uncongested(&self) {
        if self.is_congested() {
            self.drained.notified().await;
        }
    }

    /// Makes the head of the queue an in-memory entry, reading it from the log (with up to
    /// `read_bytes` read ahead) when it is only on disk. False when it cannot be read now: not
    /// yet written and synced (a consumer caught up with the publishers), or a failed read;
    /// housekeeping then retries the dispatch.
    ///
    /// The read happens under the queue lock: publishers to this queue wait for it, which
    /// costs one read per `read_bytes` of messages.
    fn load_head(&self, state: &mut QueueState, read_bytes: usize) -> bool {
        let Some(Ready::OnDisk(run)) = state.ready.front() else {
            return true;
        };
        let offset = run.offset_first;
        let Some(store) = &self.store else {
            return false;
        };
        let cached_before = state.read_ahead.bytes;
        let taken = state.read_ahead.take(store, offset, read_bytes);
        self.memory_add(state.read_ahead.bytes as i64 - cached_before as i64);
        let (message, timestamp_ms) = match taken {
            Ok(Some(found)) => found,
            Ok(None) => {
                state.head_unreadable = true;
                return false;
            }
            Err(error) => {
                if !state.head_unreadable {
                    tracing::error!(queue = %self.name, offset, %error, "could not read a message from the queue's log; delivery waits");
                }
                state.head_unreadable = true;
                return false;
            }
        };
        state.head_unreadable = false;
        let counted = self.counted_bytes(message.body.len() as u64);
        let Some(Ready::OnDisk(run)) = state.ready.front_mut() else {
            return false;
        };
        let expires_at_ms = match run.expiry {
            RunExpiry::Never => None,
            RunExpiry::At(at) => Some(at),
            RunExpiry::Unknown => expiry(&self.options, &message, timestamp_ms),
        };
        let entry = Entry {
            seq: run.seq_first,
            log_offset: Some(offset),
            message: Arc::new(message),
            redelivered: run.redelivered,
            expires_at_ms,
        };
        run.seq_first += 1;
        run.offset_first += 1;
        run.count -= 1;
        run.body_bytes = run.body_bytes.saturating_sub(counted);
        if run.count == 0 {
            state.ready.pop_front();
        }
        let body = entry.message.body.len() as u64;
        state.ready_memory_bytes += body;
        self.memory_add(body as i64);
        state.ready.push_front(Ready::InMemory(entry));
        true
    }

    fn take_front(&self, state: &mut QueueState, read_bytes: usize) -> Option<Entry> {
        if !self.load_head(state, read_bytes) {
            return None;
        }
        if !matches!(state.ready.front(), Some(Ready::InMemory(_))) {
            return None;
        }
        let Some(Ready::InMemory(entry)) = state.ready.pop_front() else {
            return None;
        };
        state.ready_count -= 1;
        if state.ready_count <= FLOW_HIGH {
            self.drained.notify_one();
        }
        let bytes = entry.message.body.len() as u64;
        state.ready_bytes = state.ready_bytes.saturating_sub(self.counted_bytes(bytes));
        state.ready_memory_bytes -= bytes;
        self.memory_add(-(bytes as i64));
        Some(entry)
    }

    /// basic.get: the next live message, if any, and how many remain after it.
    pub(super) fn get(self: &Arc<Self>, track_unacked: bool) -> Option<(Entry, u32)> {
        let mut dead = Vec::new();
        let result = {
            let mut state = self.state.lock();
            self.take_expired_head(&mut state, now_ms(), &mut dead);
            let read_bytes = read_bytes(&state);
            self.take_front(&mut state, read_bytes).map(|entry| {
                if let Some(offset) = entry.log_offset {
                    self.note_delivered(&mut state, offset);
                }
                self.counters.delivered(&entry);
                if track_unacked {
                    self.track_unacked(&mut state, &entry);
                } else {
                    self.settle_stored(&[&entry]);
                }
                (entry, state.ready_count.min(u64::from(u32::MAX)) as u32)
            })
        };
        self.dead_letter_all(dead);
        result
    }

    /// Acked (or rejected without requeue) deliveries leave the queue for good.
    pub(super) fn settle(
        self: &Arc<Self>,
        entries: Vec<Entry>,
        dead_letter: Option<DeadLetterReason>,
    ) {
        self.counters
            .acked
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        {
            let mut state = self.state.lock();
            state.unacked_count = state.unacked_count.saturating_sub(entries.len());
            for entry in &entries {
                if let Some(offset) = entry.log_offset {
                    state.unacked_offsets.remove(&offset);
                }
            }
        }
        self.memory_add(-(held_bytes(&entries) as i64));
        self.settle_stored(&entries.iter().collect::<Vec<_>>());
        if let Some(reason) = dead_letter {
            self.dead_letter_all(
                entries
                    .into_iter()
                    .map(|e| (e.message.as_ref().clone(), reason))
                    .collect(),
            );
        }
    }

    /// Unacked deliveries go back to where they were, marked redelivered.
    pub(super) fn requeue(self: &Arc<Self>, entries: Vec<Entry>) {
        {
            let mut state = self.state.lock();
            state.unacked_count = state.unacked_count.saturating_sub(entries.len());
            if state.deleted {
                self.memory_add(-(held_bytes(&entries) as i64));
                return;
            }
            for mut entry in entries {
                if let Some(offset) = entry.log_offset {
                    state.unacked_offsets.remove(&offset);
                }
                entry.redelivered = true;
                // Already in the memory count while unacked.
                let bytes = entry.message.body.len() as u64;
                state.ready_count += 1;
                state.ready_bytes += self.counted_bytes(bytes);
                state.ready_memory_bytes += bytes;
                // A requeued message was taken from the head, so it never falls inside a run.
                let at = state.ready.partition_point(|r| r.seq() < entry.seq);
                state.ready.insert(at, Ready::InMemory(entry));
            }
        }
        self.dispatch();
    }

    pub(super) fn add_consumer(&self, consumer: Arc<Consumer>) -> Result<(), VhostError> {
        let vhost_name = self.vhost_name();
        let mut state = self.state.lock();
        if state.deleted {
            return Err(VhostError::NotFound(format!(
                "no queue '{}' in vhost '{vhost_name}'",
                self.name
            )));
        }
        if state.consumers.iter().any(|c| c.exclusive) {
            return Err(VhostError::AccessRefused(format!(
                "queue '{}' in vhost '{vhost_name}' in exclusive use",
                self.name
            )));
        }
        if consumer.exclusive && !state.consumers.is_empty() {
            return Err(VhostError::AccessRefused(format!(
                "queue '{}' in vhost '{vhost_name}' in exclusive use",
                self.name
            )));
        }
        state.had_consumer = true;
        state.consumers.push(consumer);
        Ok(())
    }

    /// Removes a consumer; returns whether an auto-delete queue should now go.
    pub(super) fn remove_consumer(&self, consumer: &Arc<Consumer>) -> bool {
        consumer.cancelled.store(true, Ordering::Release);
        let mut state = self.state.lock();
        state.consumers.retain(|c| !Arc::ptr_eq(c, consumer));
        self.drained.notify_waiters();
        self.auto_delete && state.had_consumer && state.consumers.is_empty() && !state.deleted
    }

    /// Empties `ready` (and the read-ahead); returns the stored offsets and ranges it held.
    fn clear_ready(&self, state: &mut QueueState) -> (Vec<u64>, Vec<(u64, u64)>) {
        let mut offsets = Vec::new();
        let mut ranges = Vec::new();
        for item in state.ready.drain(..) {
            match item {
                Ready::InMemory(entry) => offsets.extend(entry.log_offset),
                Ready::OnDisk(run) => ranges.push((run.offset_first, run.offset_first + run.count)),
            }
        }
        self.drained.notify_waiters();
        self.memory_add(-((state.ready_memory_bytes + state.read_ahead.bytes) as i64));
        state.read_ahead.clear();
        state.ready_memory_bytes = 0;
        state.ready_bytes = 0;
        state.ready_count = 0;
        state.head_unreadable = false;
        (offsets, ranges)
    }

    /// queue.purge: drops every ready message (not unacked ones), returns how many.
    pub(super) fn purge(&self) -> u32 {
        let mut state = self.state.lock();
        let count = state.ready_count;
        let (offsets, ranges) = self.clear_ready(&mut state);
        self.settle_offsets(&offsets);
        if let Some(store) = &self.store {
            if let Err(error) = store.settle_ranges(&ranges) {
                tracing::warn!(queue = %self.name, %error, "could not record settled messages");
            }
        }
        count.min(u64::from(u32::MAX)) as u32
    }

    /// Marks the queue deleted and returns its consumers (to be told) and message count.
    pub(super) fn mark_deleted(&self) -> (Vec<Arc<Consumer>>, u32) {
        let mut state = self.state.lock();
        state.deleted = true;
        let count = state.ready_count.min(u64::from(u32::MAX)) as u32;
        self.clear_ready(&mut state);
        for consumer in &state.consumers {
            consumer.cancelled.store(true, Ordering::Release);
        }
        (std::mem::take(&mut state.consumers), count)
    }

    /// Dead-letters (or drops) expired messages at the head of the queue, as RabbitMQ does: a
    /// message behind a longer-lived one waits for it. Also retries a dispatch that waited for
    /// its head to become readable.
    pub(super) fn expire(self: &Arc<Self>, now: i64) {
        let mut dead = Vec::new();
        let retry = {
            let mut state = self.state.lock();
            self.take_expired_head(&mut state, now, &mut dead);
            state.head_unreadable && !state.consumers.is_empty()
        };
        self.dead_letter_all(dead);
        if retry {
            self.dispatch();
        }
    }

    /// Takes the expired messages off the head of the queue, settled, for dead-lettering.
    /// Only the head: as in RabbitMQ, a message behind a longer-lived one waits for it. A head
    /// on disk whose expiry is unknown (recovered) is read to learn it.
    fn take_expired_head(
        &self,
        state: &mut QueueState,
        now: i64,
        dead: &mut Vec<(Message, DeadLetterReason)>,
    ) {
        loop {
            let on_disk_may_expire = match state.ready.front() {
                Some(Ready::OnDisk(run)) => match run.expiry {
                    RunExpiry::Never => false,
                    RunExpiry::At(at) => at < now,
                    RunExpiry::Unknown => true,
                },
                _ => false,
            };
            if on_disk_may_expire {
                let read_bytes = read_bytes(state);
                if !self.load_head(state, read_bytes) {
                    return;
                }
            }
            let expired = matches!(
                state.ready.front(),
                Some(Ready::InMemory(e)) if e.expires_at_ms.is_some_and(|t| t < now)
            );
            if !expired {
                return;
            }
            let Some(entry) = self.take_front(state, HEAD_PEEK_BYTES) else {
                return;
            };
            self.settle_stored(&[&entry]);
            dead.push((entry.message.as_ref().clone(), DeadLetterReason::Expired));
        }
    }

    fn dead_letter_all(&self, dead: Vec<(Message, DeadLetterReason)>) {
        if dead.is_empty() {
            return;
        }
        let Some(vhost) = self.vhost.upgrade() else {
            return;
        };
        for (message, reason) in dead {
            vhost.dead_letter(self, message, reason);
        }
    }

    /// Frees the disk of settled messages (see [`QueueStore::reclaim`]) and writes a settle-log
    /// snapshot when that log has grown enough. Runs every second from housekeeping.
    pub(super) fn maybe_snapshot(&self) {
        if let Some(snapshot) = self.begin_snapshot() {
            snapshot.write(false);
        }
    }

    /// The first half of a settle-log snapshot (and of reclaiming settled segments): the live
    /// set and `upto`, read together under the queue lock. The housekeeping tick writes it at
    /// once; the simulation publishes between the two halves, where reading `upto` after the
    /// lock once made recovery drop a confirmed message.
    pub fn begin_snapshot(&self) -> Option<QueueSnapshot<'_>> {
        let store = self.store.as_ref()?;
        // `upto` is read under the same lock as the live set: offsets are assigned under this
        // lock (`enqueue`), so every offset below it is either live here or already settled.
        // Read after the lock, a message enqueued in between would fall below `upto` without
        // being live, and recovery would drop it (or reclaim would delete it).
        let (live, delivered_below, upto) = {
            let state = self.state.lock();
            let mut live: Vec<(u64, u64)> = Vec::with_capacity(state.ready.len());
            for item in &state.ready {
                match item {
                    Ready::InMemory(entry) => {
                        live.extend(entry.log_offset.map(|o| (o, o + 1)));
                    }
                    Ready::OnDisk(run) => {
                        live.push((run.offset_first, run.offset_first + run.count));
                    }
                }
            }
            live.extend(state.unacked_offsets.iter().map(|&o| (o, o + 1)));
            (live, state.delivered_below, store.snapshot_upto())
        };
        Some(QueueSnapshot {
            queue: self,
            store,
            live: normalize_ranges(live),
            delivered_below,
            upto,
        })
    }

    /// Writes settles gathered since the last housekeeping tick.
    pub(super) fn write_pending_settles(&self) {
        if let Some(store) = &self.store {
            if let Err(error) = store.write_pending_settles() {
                tracing::warn!(queue = %self.name, %error, "could not record settled messages");
            }
        }
    }

    pub(super) fn flush(&self) {
        if let Some(store) = &self.store {
            let exact = self.state.lock().delivered_exact;
            if let Err(error) = store
                .mark_delivered_below(exact)
                .and_then(|()| store.flush())
            {
                tracing::warn!(queue = %self.name, %error, "could not flush the queue store");
            }
        }
    }
}

/// Appends a stored message to the tail run when it continues it, else starts a run.
fn push_stored(state: &mut QueueState, seq: u64, offset: u64, counted: u64, expiry: RunExpiry) {
    if let Some(Ready::OnDisk(run)) = state.ready.back_mut() {
        if run.seq_first + run.count == seq
            && run.offset_first + run.count == offset
            && !run.redelivered
            && run.expiry == expiry
        {
            run.count += 1;
            run.body_bytes += counted;
            return;
        }
    }
    state.ready.push_back(Ready::OnDisk(StoredRun {
        seq_first: seq,
        offset_first: offset,
        count: 1,
        body_bytes: counted,
        redelivered: false,
        expiry,
    }));
}

/// How far to read ahead: a batch or so for a peek, more when consumers will take the rest.
fn read_bytes(state: &QueueState) -> usize {
    if state.consumers.is_empty() {
        HEAD_PEEK_BYTES
    } else {
        READ_AHEAD_BYTES
    }
}

/// Bodies the entries hold in memory.
fn held_bytes(entries: &[Entry]) -> u64 {
    entries.iter().map(|e| e.message.body.len() as u64).sum()
}

/// A snapshot's live set and `upto`, taken together under the queue lock (see
/// [`Queue::begin_snapshot`]).
pub struct QueueSnapshot<'a> {
    queue: &'a Queue,
    store: &'a QueueStore,
    live: Vec<(u64, u64)>,
    delivered_below: u64,
    upto: u64,
}

impl QueueSnapshot<'_> {
    /// Frees whole segments below the oldest live message and, when the settle log has grown
    /// enough (or `force`), replaces it with a snapshot of the live set.
    pub fn write(self, force: bool) {
        let name = &self.queue.name;
        let oldest_live = self.live.first().map_or(self.upto, |(start, _)| *start);
        if let Err(error) = self.store.reclaim(oldest_live, RECLAIM_OFFSETS_MIN) {
            tracing::warn!(queue = %name, %error, "could not free the disk of settled messages");
        }
        if force || self.store.wants_snapshot() {
            if let Err(error) = self
                .store
                .snapshot(&self.live, self.delivered_below, self.upto)
            {
                tracing::warn!(queue = %name, %error, "could not snapshot the settle log");
            }
        }
    }
}

fn expiry(options: &QueueOptions, message: &Message, enqueued_ms: i64) -> Option<i64> {
    let per_message = message
        .expiration_ms()
        .map(|t| t.min(i64::MAX as u64) as i64);
    let ttl = match (options.message_ttl_ms, per_message) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }?;
    Some(enqueued_ms.saturating_add(ttl))
}
