//! One AMQP channel's view of the broker: its consumers, the deliveries it has not settled
//! (by delivery tag), its prefetch limits and its transaction. The protocol front end owns the
//! socket; it gives the session a [`DeliverySink`] and forwards the client's methods.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::dead_letter::DeadLetterReason;
use super::message::Message;
use super::queue::{Consumer, ConsumerSource, Entry, Queue};
use super::stream::StreamStart;
use super::{ConnectionId, PublishOutcome, VhostError, VirtualHost};
use amq_protocol_types::FieldTable;
use tokio::sync::Notify;

/// A delivery on its way to the client.
pub struct Delivery<'a> {
    pub consumer_tag: &'a str,
    pub delivery_tag: u64,
    pub redelivered: bool,
    pub message: &'a Message,
}

/// Where a session's deliveries go: the connection's outgoing frames. Called with queue and
/// session locks held, so it must only queue the frames, never block or call back in.
pub trait DeliverySink: Send + Sync {
    fn deliver(&self, channel: u16, delivery: Delivery<'_>);
    /// Whether more deliveries may be handed over now. A sink that says no must have the
    /// session's consumers redispatched (`Session::redispatch`) once it has room again.
    fn writable(&self) -> bool {
        true
    }
    /// The broker ended a consumer (its queue was deleted): basic.cancel to the client.
    fn consumer_cancelled(&self, channel: u16, consumer_tag: &str);
}

/// Bytes held for the broker outside any queue (a message body being received), counted in the
/// vhost's memory alarm until dropped.
pub struct MemoryCharge {
    vhost: Arc<VirtualHost>,
    bytes: u64,
}

impl Drop for MemoryCharge {
    fn drop(&mut self) {
        self.vhost.memory_add(-(self.bytes as i64));
    }
}

/// What a tx.commit did.
#[derive(Default)]
pub struct Committed {
    /// Mandatory publishes that reached no queue: they go back with basic.return.
    pub returned: Vec<Message>,
    /// Resolve when the committed messages are on disk.
    pub durable: Vec<crate::DurableWait>,
}

/// A message taken with basic.get.
pub struct Got {
    pub delivery_tag: u64,
    pub redelivered: bool,
    pub message: Arc<Message>,
    /// Messages left ready in the queue.
    pub remaining: u32,
}

struct Unacked {
    /// The queue message; None for a stream delivery, whose ack only returns credit.
    source: Option<(Arc<Queue>, Entry)>,
    consumer: Option<Arc<Consumer>>,
}

/// What happens to a settled delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    Ack,
    /// nack/reject with requeue.
    Requeue,
    /// nack/reject without requeue: dead-lettered if the queue says so, else dropped.
    Discard,
}

/// Buffered work of a transaction (tx.select), applied at tx.commit.
#[derive(Default)]
struct Transaction {
    /// (mandatory, message); the message names its exchange and routing key.
    publishes: Vec<(bool, Message)>,
    /// Bodies of `publishes`, in the vhost's memory count until commit or rollback.
    publish_bytes: u64,
    settles: Vec<(u64, bool, Settle)>,
}

#[derive(Default)]
struct SessionState {
    next_tag: u64,
    unacked: BTreeMap<u64, Unacked>,
    consumers: HashMap<String, Arc<Consumer>>,
    transaction: Option<Transaction>,
    closed: bool,
}

pub struct Session {
    pub connection: ConnectionId,
    pub channel: u16,
    pub user: String,
    vhost: Arc<VirtualHost>,
    sink: Arc<dyn DeliverySink>,
    /// basic.qos global=true: unacked deliveries across the channel's consumers (0 = no limit).
    global_prefetch: AtomicU32,
    global_unacked: AtomicU32,
    /// basic.qos global=false: the limit each consumer started afterwards gets.
    consumer_prefetch: AtomicU32,

    state: Mutex<SessionState>,
}

impl Session {
    pub fn new(
        vhost: Arc<VirtualHost>,
        connection: ConnectionId,
        channel: u16,
        user: String,
        sink: Arc<dyn DeliverySink>,
    ) -> Arc<Session> {
        let session = Arc::new(Session {
            connection,
            channel,
            user,
            vhost,
            sink,
            global_prefetch: AtomicU32::new(0),
            global_unacked: AtomicU32::new(0),
            consumer_prefetch: AtomicU32::new(0),

            state: Mutex::new(SessionState {
                next_tag: 1,
                ..SessionState::default()
            }),
        });
        session.vhost.register_session(&session);
        session
    }

    /// The channel as the HTTP API lists it.
    pub fn summary(&self) -> super::ChannelSummary {
        let state = self.state.lock();
        super::ChannelSummary {
            connection: self.connection,
            channel: self.channel,
            user: self.user.clone(),
            consumers: state.consumers.len() as u64,
            unacked: state.unacked.len() as u64,
            prefetch_count: self.consumer_prefetch.load(Ordering::Acquire),
            global_prefetch_count: self.global_prefetch.load(Ordering::Acquire),
            in_transaction: state.transaction.is_some(),
            closed: state.closed,
        }
    }

    pub fn vhost(&self) -> &Arc<VirtualHost> {
        &self.vhost
    }

    /// Counts `bytes` in the memory alarm until the returned charge is dropped: a body being
    /// assembled from content frames (its size is announced, and reserved, up front).
    pub fn charge_memory(&self, bytes: u64) -> MemoryCharge {
        self.vhost.memory_add(bytes as i64);
        MemoryCharge {
            vhost: Arc::clone(&self.vhost),
            bytes,
        }
    }

    pub(super) fn has_credit(&self) -> bool {
        let limit = self.global_prefetch.load(Ordering::Acquire);
        limit == 0 || self.global_unacked.load(Ordering::Acquire) < limit
    }

    /// Whether the connection's socket can take more deliveries now (see `DeliverySink`).
    pub(super) fn can_write(&self) -> bool {
        self.sink.writable()
    }

    /// basic.qos. As RabbitMQ reads it: global=false limits each consumer started from now on,
    /// global=true limits the channel's consumers together.
    pub fn qos(&self, prefetch_count: u16, global: bool) {
        if global {
            self.global_prefetch
                .store(u32::from(prefetch_count), Ordering::Release);
        } else {
            // RabbitMQ's reading: a per-consumer limit replaces a channel-wide one.
            self.consumer_prefetch
                .store(u32::from(prefetch_count), Ordering::Release);
            self.global_prefetch.store(0, Ordering::Release);
        }
        self.redispatch();
    }

    /// Assigns the next delivery tag and hands the delivery to the sink in one step (state lock
    /// held), so tags reach the client in order.
    fn hand_over(
        &self,
        state: &mut SessionState,
        consumer: &Consumer,
        message: &Message,
        redelivered: bool,
    ) -> u64 {
        let tag = state.next_tag;
        state.next_tag += 1;
        self.vhost.counters.delivered(redelivered);
        self.sink.deliver(
            self.channel,
            Delivery {
                consumer_tag: &consumer.tag,
                delivery_tag: tag,
                redelivered,
                message,
            },
        );
        tag
    }

    /// Called by a queue's dispatch (queue lock held); `track` keeps the delivery unacked.
    pub(super) fn deliver(
        &self,
        consumer: &Arc<Consumer>,
        queue: &Arc<Queue>,
        entry: Entry,
        track: bool,
    ) {
        let mut state = self.state.lock();
        let tag = self.hand_over(&mut state, consumer, &entry.message, entry.redelivered);
        if track {
            self.global_unacked.fetch_add(1, Ordering::AcqRel);
            state.unacked.insert(
                tag,
                Unacked {
                    source: Some((Arc::clone(queue), entry)),
                    consumer: Some(Arc::clone(consumer)),
                },
            );
        }
    }

    /// A record of a stream (Kafka topic) for a stream consumer.
    pub(super) fn deliver_stream(&self, consumer: &Arc<Consumer>, message: Message) {
        let mut state = self.state.lock();
        let tag = self.hand_over(&mut state, consumer, &message, false);
        if !consumer.no_ack {
            consumer.unacked.fetch_add(1, Ordering::AcqRel);
            self.global_unacked.fetch_add(1, Ordering::AcqRel);
            state.unacked.insert(
                tag,
                Unacked {
                    source: None,
                    consumer: Some(Arc::clone(consumer)),
                },
            );
        }
    }

    /// basic.consume. The caller sends consume-ok and then calls [`Session::start_consumer`],
    /// so the client sees consume-ok before the first delivery.
    pub fn consume(
        self: &Arc<Self>,
        queue: &str,
        tag: String,
        no_ack: bool,
        exclusive: bool,
        arguments: &FieldTable,
    ) -> Result<Arc<Consumer>, VhostError> {
        let source = match self.vhost.stream(queue) {
            Some(stream) => ConsumerSource::Stream(stream, StreamStart::from_arguments(arguments)?),
            None => ConsumerSource::Queue(self.vhost.queue_for(queue, self.connection)?),
        };
        // Lock order is queue before session (a queue's dispatch delivers into sessions), so
        // the session lock is not held while the consumer joins its queue. Methods of one
        // channel arrive one at a time, so the tag cannot be taken in between.
        if self.state.lock().consumers.contains_key(&tag) {
            return Err(VhostError::NotAllowed(format!(
                "attempt to reuse consumer tag '{tag}'"
            )));
        }
        let consumer = Arc::new(Consumer {
            tag: tag.clone(),
            source,
            session: Arc::clone(self),
            no_ack,
            exclusive,
            prefetch: self.consumer_prefetch.load(Ordering::Acquire),
            unacked: AtomicU32::new(0),
            cancelled: AtomicBool::new(false),
            credit: Notify::new(),
        });
        if let ConsumerSource::Queue(queue) = &consumer.source {
            queue.add_consumer(Arc::clone(&consumer))?;
        }
        self.state
            .lock()
            .consumers
            .insert(tag, Arc::clone(&consumer));
        Ok(consumer)
    }

    pub fn start_consumer(&self, consumer: &Arc<Consumer>) {
        match &consumer.source {
            ConsumerSource::Queue(queue) => queue.dispatch(),
            ConsumerSource::Stream(stream, start) => {
                stream.start_consumer(Arc::clone(consumer), *start)
            }
        }
    }

    /// basic.cancel; false when there is no such consumer.
    pub fn cancel(&self, tag: &str) -> bool {
        let consumer = self.state.lock().consumers.remove(tag);
        match consumer {
            Some(consumer) => {
                self.stop_consumer(&consumer);
                true
            }
            None => false,
        }
    }

    fn stop_consumer(&self, consumer: &Arc<Consumer>) {
        consumer.cancelled.store(true, Ordering::Release);
        match &consumer.source {
            ConsumerSource::Queue(queue) => {
                if queue.remove_consumer(consumer) {
                    self.vhost.auto_delete_queue(queue);
                }
            }
            ConsumerSource::Stream(..) => consumer.credit.notify_one(),
        }
    }

    /// The broker ended this consumer (its queue was deleted, its stream failed).
    pub(super) fn consumer_gone(&self, consumer: &Arc<Consumer>) {
        consumer.cancelled.store(true, Ordering::Release);
        let removed = self.state.lock().consumers.remove(&consumer.tag);
        if removed.is_some() {
            self.sink.consumer_cancelled(self.channel, &consumer.tag);
        }
    }

    /// basic.get: the next message of `queue` with its delivery tag and the remaining count.
    pub fn get(&self, queue: &str, no_ack: bool) -> Result<Option<Got>, VhostError> {
        let queue = self.vhost.queue_for(queue, self.connection)?;
        let Some((entry, remaining)) = queue.get(!no_ack) else {
            return Ok(None);
        };
        let mut state = self.state.lock();
        let tag = state.next_tag;
        state.next_tag += 1;
        self.vhost.counters.delivered(entry.redelivered);
        let result = Got {
            delivery_tag: tag,
            redelivered: entry.redelivered,
            message: Arc::clone(&entry.message),
            remaining,
        };
        if !no_ack {
            state.unacked.insert(
                tag,
                Unacked {
                    source: Some((queue, entry)),
                    consumer: None,
                },
            );
        }
        Ok(Some(result))
    }

    /// basic.ack / nack / reject. `delivery_tag` 0 with `multiple` means every outstanding one.
    /// An unknown tag is a channel error (PRECONDITION_FAILED), as in RabbitMQ.
    pub fn settle(&self, delivery_tag: u64, multiple: bool, how: Settle) -> Result<(), VhostError> {
        {
            let mut state = self.state.lock();
            if let Some(tx) = state.transaction.as_mut() {
                tx.settles.push((delivery_tag, multiple, how));
                // Unknown tags are still an error now, not at commit.
                if !multiple && delivery_tag != 0 && !state.unacked.contains_key(&delivery_tag) {
                    return Err(unknown_tag(delivery_tag));
                }
                return Ok(());
            }
        }
        self.settle_now(delivery_tag, multiple, how)
    }

    /// Acks several single delivery tags at once (a client acking every message sends them in
    /// bursts): one pass over the locks and one redispatch instead of one each. The tags are
    /// taken in order; an unknown one is an error after the ones before it are acked, exactly
    /// as separate basic.ack methods would be.
    pub fn ack_each(&self, tags: &[u64]) -> Result<(), VhostError> {
        if self.in_transaction() {
            return tags
                .iter()
                .try_for_each(|tag| self.settle(*tag, false, Settle::Ack));
        }
        let mut unknown = None;
        let taken: Vec<Unacked> = {
            let mut state = self.state.lock();
            let mut taken = Vec::with_capacity(tags.len());
            for tag in tags {
                match state.unacked.remove(tag) {
                    Some(unacked) => taken.push(unacked),
                    None => {
                        unknown = Some(*tag);
                        break;
                    }
                }
            }
            taken
        };
        self.release(taken, Settle::Ack);
        match unknown {
            Some(tag) => Err(unknown_tag(tag)),
            None => Ok(()),
        }
    }

    fn settle_now(&self, delivery_tag: u64, multiple: bool, how: Settle) -> Result<(), VhostError> {
        let taken: Vec<Unacked> = {
            let mut state = self.state.lock();
            if multiple {
                let keep = if delivery_tag == 0 {
                    BTreeMap::new()
                } else {
                    state.unacked.split_off(&(delivery_tag + 1))
                };
                let taken = std::mem::replace(&mut state.unacked, keep);
                if taken.is_empty() && delivery_tag != 0 {
                    return Err(unknown_tag(delivery_tag));
                }
                taken.into_values().collect()
            } else {
                match state.unacked.remove(&delivery_tag) {
                    Some(u) => vec![u],
                    None => return Err(unknown_tag(delivery_tag)),
                }
            }
        };
        self.release(taken, how);
        Ok(())
    }

    /// Returns credit for settled deliveries and applies `how` to them, queue by queue.
    fn release(&self, taken: Vec<Unacked>, how: Settle) {
        if how == Settle::Ack {
            self.vhost.counters.acked.increment(taken.len() as u64);
        }
        let mut by_queue: Vec<(Arc<Queue>, Vec<Entry>)> = Vec::new();
        for unacked in taken {
            if let Some(consumer) = &unacked.consumer {
                consumer.unacked.fetch_sub(1, Ordering::AcqRel);
                self.global_unacked.fetch_sub(1, Ordering::AcqRel);
            }
            let Some((queue, entry)) = unacked.source else {
                continue;
            };
            match by_queue.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &queue)) {
                Some((_, entries)) => entries.push(entry),
                None => by_queue.push((queue, vec![entry])),
            }
        }
        for (queue, entries) in by_queue {
            match how {
                Settle::Ack => queue.settle(entries, None),
                Settle::Discard => queue.settle(entries, Some(DeadLetterReason::Rejected)),
                Settle::Requeue => queue.requeue(entries),
            }
        }
        // Credit came back: this channel's consumers may take more (a requeue has already
        // dispatched to every consumer of its queue).
        self.redispatch();
    }

    /// basic.recover: every unacked delivery of this channel is redelivered.
    pub fn recover(&self) {
        let taken: Vec<Unacked> = std::mem::take(&mut self.state.lock().unacked)
            .into_values()
            .collect();
        self.release(taken, Settle::Requeue);
    }

    /// After credit is freed anywhere on the channel, every queue it consumes may deliver.
    pub fn redispatch(&self) {
        let consumers: Vec<Arc<Consumer>> = self.state.lock().consumers.values().cloned().collect();
        for consumer in consumers {
            match &consumer.source {
                ConsumerSource::Queue(queue) => queue.dispatch(),
                ConsumerSource::Stream(..) => consumer.credit.notify_one(),
            }
        }
    }

    pub fn tx_select(&self) {
        let mut state = self.state.lock();
        if state.transaction.is_none() {
            state.transaction = Some(Transaction::default());
        }
    }

    pub fn in_transaction(&self) -> bool {
        self.state.lock().transaction.is_some()
    }

    /// Publishes (outside a transaction) or buffers the publish (inside one).
    pub fn publish(
        &self,
        mandatory: bool,
        message: Message,
    ) -> Result<Option<PublishOutcome>, VhostError> {
        if self.in_transaction() {
            // Unknown exchanges are refused at publish time, as RabbitMQ does (checked before
            // the session lock: the topology lock is never taken under it).
            self.vhost.check_publishable(&message.exchange)?;
            if let Some(tx) = self.state.lock().transaction.as_mut() {
                let bytes = message.body.len() as u64;
                tx.publishes.push((mandatory, message));
                tx.publish_bytes += bytes;
                self.vhost.memory_add(bytes as i64);
                return Ok(None);
            }
        }
        self.vhost.publish(message).map(Some)
    }

    /// tx.commit: the buffered publishes, then the buffered settles. Returns the mandatory
    /// publishes that routed nowhere (for basic.return) and the waits for durability.
    pub fn tx_commit(&self) -> Result<Committed, VhostError> {
        let tx = {
            let mut state = self.state.lock();
            match state.transaction.as_mut() {
                Some(tx) => std::mem::take(tx),
                None => {
                    return Err(VhostError::PreconditionFailed(
                        "channel is not transactional".into(),
                    ))
                }
            }
        };
        // From here the publishes are the queues' to count.
        self.vhost.memory_add(-(tx.publish_bytes as i64));
        let mut committed = Committed::default();
        for (mandatory, message) in tx.publishes {
            let returned = mandatory.then(|| message.clone());
            let outcome = self.vhost.publish(message)?;
            if !outcome.routed {
                committed.returned.extend(returned);
            }
            committed.durable.extend(outcome.durable);
        }
        for (tag, multiple, how) in tx.settles {
            // A tag settled twice in one transaction is already gone: not an error at commit.
            let _ = self.settle_now(tag, multiple, how);
        }
        Ok(committed)
    }

    pub fn tx_rollback(&self) -> Result<(), VhostError> {
        let mut state = self.state.lock();
        match state.transaction.as_mut() {
            Some(tx) => {
                self.vhost.memory_add(-(tx.publish_bytes as i64));
                *tx = Transaction::default();
                Ok(())
            }
            None => Err(VhostError::PreconditionFailed(
                "channel is not transactional".into(),
            )),
        }
    }

    /// The channel (or its connection) closed: consumers end and every unacked delivery goes
    /// back to its queue, marked redelivered.
    pub fn close(&self) {
        let (consumers, unacked) = {
            let mut state = self.state.lock();
            if state.closed {
                return;
            }
            state.closed = true;
            if let Some(tx) = state.transaction.take() {
                self.vhost.memory_add(-(tx.publish_bytes as i64));
            }
            (
                std::mem::take(&mut state.consumers),
                std::mem::take(&mut state.unacked),
            )
        };
        for consumer in consumers.values() {
            consumer.cancelled.store(true, Ordering::Release);
        }
        self.release(unacked.into_values().collect(), Settle::Requeue);
        for consumer in consumers.into_values() {
            self.stop_consumer(&consumer);
        }
    }
}

fn unknown_tag(tag: u64) -> VhostError {
    VhostError::PreconditionFailed(format!("unknown delivery tag {tag}"))
}
