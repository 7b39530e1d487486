//! An AMQP queue: messages ready for delivery in publish order, the consumers it delivers to
//! (round robin, within each one's prefetch), and the rules that move messages out of it: acks,
//! TTL, max-length and dead-lettering. A durable queue keeps its persistent messages in a
//! [`QueueStore`]; everything else lives in memory only, as in RabbitMQ.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};

use amq_protocol_types::FieldTable;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::dead_letter::DeadLetterReason;
use super::message::{value_as_i64, value_as_str, Message};
use super::queue_store::QueueStore;
use super::session::Session;
use super::stream::{StreamQueue, StreamStart};
use super::{ConnectionId, VhostError, VirtualHost};
use crate::now_ms;

/// Delivery marks are written this many offsets ahead of the delivery that needed one.
const DELIVERY_MARK_WINDOW: u64 = 1024;
/// Flow control: a queue with consumers and more ready messages than this makes its
/// publishers wait before their next frame, and lets one through per message its consumers
/// take. Without it publishers outrun consumers and the backlog, and with it the latency,
/// grows without bound; a queue nobody consumes takes bursts at full speed (peak shaving).
const FLOW_HIGH: usize = 1000;

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
    pub fn from_arguments(queue: &str, args: &FieldTable) -> Result<QueueOptions, VhostError> {
        let invalid = |arg: &str, why: &str| {
            VhostError::PreconditionFailed(format!(
                "invalid arg '{arg}' for queue '{queue}' in vhost '/': {why}"
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

#[derive(Default)]
struct QueueState {
    ready: VecDeque<Entry>,
    ready_bytes: u64,
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
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        name: String,
        durable: bool,
        exclusive_owner: Option<ConnectionId>,
        auto_delete: bool,
        arguments: FieldTable,
        options: QueueOptions,
        store: Option<(QueueStore, Vec<super::queue_store::RecoveredMessage>)>,
        vhost: Weak<VirtualHost>,
    ) -> Arc<Queue> {
        let mut state = QueueState::default();
        let store = store.map(|(store, recovered)| {
            for m in recovered {
                let expires_at_ms = expiry(&options, &m.message, m.timestamp_ms);
                state.ready_bytes += m.message.body.len() as u64;
                state.ready.push_back(Entry {
                    seq: state.next_seq,
                    log_offset: Some(m.offset),
                    message: Arc::new(m.message),
                    redelivered: m.maybe_delivered,
                    expires_at_ms,
                });
                state.next_seq += 1;
                state.delivered_below =
                    state
                        .delivered_below
                        .max(if m.maybe_delivered { m.offset + 1 } else { 0 });
            }
            state.delivered_exact = state.delivered_below;
            store
        });
        let queue = Arc::new(Queue {
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
        });
        if let Some(vhost) = queue.vhost.upgrade() {
            vhost.memory_add(queue.state.lock().ready_bytes as i64);
        }
        queue
    }

    pub fn message_count(&self) -> u32 {
        self.state.lock().ready.len() as u32
    }
    pub fn consumer_count(&self) -> u32 {
        self.state.lock().consumers.len() as u32
    }
    pub fn unacked_count(&self) -> usize {
        self.state.lock().unacked_count
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
            if let Some(overflow @ (Overflow::RejectPublish | Overflow::RejectPublishDlx)) =
                self.options.overflow
            {
                if self.is_full(&state, 1, body) {
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
            state.ready_bytes += body;
            state.ready.push_back(Entry {
                seq,
                log_offset,
                message,
                redelivered: false,
                expires_at_ms,
            });
            self.memory_add(body as i64);
            // drop-head: the oldest ready messages make room.
            while self.is_full(&state, 0, 0) {
                let Some(oldest) = state.ready.pop_front() else {
                    break;
                };
                state.ready_bytes -= oldest.message.body.len() as u64;
                self.memory_add(-(oldest.message.body.len() as i64));
                self.settle_stored(&[&oldest]);
                dead.push((oldest.message.as_ref().clone(), DeadLetterReason::MaxLen));
            }
            Enqueued::Accepted(durable)
        };
        self.dead_letter_all(dead);
        self.dispatch();
        Ok(outcome)
    }

    fn is_full(&self, state: &QueueState, extra: u64, extra_bytes: u64) -> bool {
        self.options
            .max_length
            .is_some_and(|max| state.ready.len() as u64 + extra > max)
            || self
                .options
                .max_length_bytes
                .is_some_and(|max| state.ready_bytes + extra_bytes > max)
    }

    fn memory_add(&self, bytes: i64) {
        if let Some(vhost) = self.vhost.upgrade() {
            vhost.memory_add(bytes);
        }
    }

    fn settle_stored(&self, entries: &[&Entry]) {
        let Some(store) = &self.store else { return };
        let offsets: Vec<u64> = entries.iter().filter_map(|e| e.log_offset).collect();
        if let Err(error) = store.settle(&offsets) {
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
            if state.consumers.is_empty() || state.ready.is_empty() {
                return;
            }
            let now = now_ms();
            loop {
                self.take_expired_head(&mut state, now, &mut dead);
                if state.ready.is_empty() {
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
                let Some(entry) = self.take_front(&mut state) else {
                    break;
                };
                if let Some(offset) = entry.log_offset {
                    self.note_delivered(&mut state, offset);
                }
                if consumer.no_ack {
                    self.settle_stored(&[&entry]);
                    consumer.session.deliver(&consumer, self, entry, false);
                } else {
                    state.unacked_count += 1;
                    if let Some(offset) = entry.log_offset {
                        state.unacked_offsets.insert(offset);
                    }
                    consumer.unacked.fetch_add(1, Ordering::AcqRel);
                    consumer.session.deliver(&consumer, self, entry, true);
                }
            }
        }
        self.dead_letter_all(dead);
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
        state.ready.len() > FLOW_HIGH && !state.consumers.is_empty() && !state.deleted
    }

    /// Returns once the queue has room again. Waiting publishers are let through one per
    /// message the consumers take, in the order they started waiting, so no publisher is
    /// starved while the others refill the queue (the fairness RabbitMQ's credit flow gives).
    pub async fn until_uncongested(&self) {
        if self.is_congested() {
            self.drained.notified().await;
        }
    }

    fn take_front(&self, state: &mut QueueState) -> Option<Entry> {
        let entry = state.ready.pop_front()?;
        if state.ready.len() <= FLOW_HIGH {
            self.drained.notify_one();
        }
        let bytes = entry.message.body.len() as u64;
        state.ready_bytes -= bytes;
        self.memory_add(-(bytes as i64));
        Some(entry)
    }

    /// basic.get: the next live message, if any, and how many remain after it.
    pub(super) fn get(self: &Arc<Self>, track_unacked: bool) -> Option<(Entry, u32)> {
        let mut dead = Vec::new();
        let result = {
            let mut state = self.state.lock();
            self.take_expired_head(&mut state, now_ms(), &mut dead);
            self.take_front(&mut state).map(|entry| {
                if let Some(offset) = entry.log_offset {
                    self.note_delivered(&mut state, offset);
                }
                if track_unacked {
                    state.unacked_count += 1;
                    if let Some(offset) = entry.log_offset {
                        state.unacked_offsets.insert(offset);
                    }
                } else {
                    self.settle_stored(&[&entry]);
                }
                (entry, state.ready.len() as u32)
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
        {
            let mut state = self.state.lock();
            state.unacked_count = state.unacked_count.saturating_sub(entries.len());
            for entry in &entries {
                if let Some(offset) = entry.log_offset {
                    state.unacked_offsets.remove(&offset);
                }
            }
        }
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
                return;
            }
            for mut entry in entries {
                if let Some(offset) = entry.log_offset {
                    state.unacked_offsets.remove(&offset);
                }
                entry.redelivered = true;
                let bytes = entry.message.body.len() as u64;
                state.ready_bytes += bytes;
                self.memory_add(bytes as i64);
                let at = state.ready.partition_point(|e| e.seq < entry.seq);
                state.ready.insert(at, entry);
            }
        }
        self.dispatch();
    }

    pub(super) fn add_consumer(&self, consumer: Arc<Consumer>) -> Result<(), VhostError> {
        let mut state = self.state.lock();
        if state.deleted {
            return Err(VhostError::NotFound(format!(
                "no queue '{}' in vhost '/'",
                self.name
            )));
        }
        if state.consumers.iter().any(|c| c.exclusive) {
            return Err(VhostError::AccessRefused(format!(
                "queue '{}' in vhost '/' in exclusive use",
                self.name
            )));
        }
        if consumer.exclusive && !state.consumers.is_empty() {
            return Err(VhostError::AccessRefused(format!(
                "queue '{}' in vhost '/' in exclusive use",
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

    /// queue.purge: drops every ready message (not unacked ones), returns how many.
    pub(super) fn purge(&self) -> u32 {
        let mut state = self.state.lock();
        let purged: Vec<Entry> = state.ready.drain(..).collect();
        self.drained.notify_waiters();
        self.memory_add(-(state.ready_bytes as i64));
        state.ready_bytes = 0;
        self.settle_stored(&purged.iter().collect::<Vec<_>>());
        purged.len() as u32
    }

    /// Marks the queue deleted and returns its consumers (to be told) and message count.
    pub(super) fn mark_deleted(&self) -> (Vec<Arc<Consumer>>, u32) {
        let mut state = self.state.lock();
        state.deleted = true;
        self.drained.notify_waiters();
        let count = state.ready.len() as u32;
        self.memory_add(-(state.ready_bytes as i64));
        state.ready.clear();
        state.ready_bytes = 0;
        for consumer in &state.consumers {
            consumer.cancelled.store(true, Ordering::Release);
        }
        (std::mem::take(&mut state.consumers), count)
    }

    /// Dead-letters (or drops) expired messages at the head of the queue, as RabbitMQ does: a
    /// message behind a longer-lived one waits for it.
    pub(super) fn expire(self: &Arc<Self>, now: i64) {
        let mut dead = Vec::new();
        self.take_expired_head(&mut self.state.lock(), now, &mut dead);
        self.dead_letter_all(dead);
    }

    /// Takes the expired messages off the head of the queue, settled, for dead-lettering.
    /// Only the head: as in RabbitMQ, a message behind a longer-lived one waits for it.
    fn take_expired_head(
        &self,
        state: &mut QueueState,
        now: i64,
        dead: &mut Vec<(Message, DeadLetterReason)>,
    ) {
        while state
            .ready
            .front()
            .is_some_and(|e| e.expires_at_ms.is_some_and(|t| t < now))
        {
            if let Some(entry) = self.take_front(state) {
                self.settle_stored(&[&entry]);
                dead.push((entry.message.as_ref().clone(), DeadLetterReason::Expired));
            }
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

    /// Writes a settle-log snapshot when the log has grown enough, freeing disk.
    pub(super) fn maybe_snapshot(&self) {
        let Some(store) = &self.store else { return };
        if !store.wants_snapshot() {
            return;
        }
        // `upto` is read under the same lock as the live set: offsets are assigned under this
        // lock (`enqueue`), so every offset below it is either live here or already settled.
        // Read after the lock, a message enqueued in between would fall below `upto` without
        // being live, and recovery would drop it.
        let (live, delivered_below, upto) = {
            let state = self.state.lock();
            let mut live: Vec<u64> = state.ready.iter().filter_map(|e| e.log_offset).collect();
            live.extend(state.unacked_offsets.iter().copied());
            live.sort_unstable();
            (live, state.delivered_below, store.snapshot_upto())
        };
        if let Err(error) = store.snapshot(&live, delivered_below, upto) {
            tracing::warn!(queue = %self.name, %error, "could not snapshot the settle log");
        }
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
