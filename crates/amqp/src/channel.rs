//! One AMQP channel: methods translated into session and virtual-host calls, content frames
//! assembled into messages, publisher confirms sent in order as messages become durable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use amq_protocol::protocol::{access, basic, channel, confirm, exchange, queue, tx, AMQPClass};
use amq_protocol::types::ShortString;
use bytes::{Bytes, BytesMut};
use sluice_broker::vhost::{
    Delivery, DeliverySink, Destination, Got, Message, PublishOutcome, Session, Settle,
};
use tokio::sync::{mpsc, oneshot};

use crate::codec::{decode_content_header, encode_content, method_frame};
use crate::connection::{Connection, Outbound};
use crate::properties::{fit_short_string, from_amqp, to_amqp};
use crate::reply::*;

/// Writes a channel's deliveries as frames onto the connection's outgoing queue.
struct FrameSink {
    out: Outbound,
    frame_max: u32,
    cancel_notify: bool,
    /// The session this sink serves (set once it exists), for write back-pressure wake-ups.
    session: std::sync::OnceLock<std::sync::Weak<Session>>,
}

impl DeliverySink for FrameSink {
    fn deliver(&self, channel: u16, delivery: Delivery<'_>) {
        let message = delivery.message;
        let mut frames = Vec::with_capacity(message.body.len() + 128);
        encode_content(
            &mut frames,
            channel,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: fit_short_string(delivery.consumer_tag, "consumer-tag"),
                delivery_tag: delivery.delivery_tag,
                redelivered: delivery.redelivered,
                exchange: fit_short_string(&message.exchange, "exchange"),
                routing_key: fit_short_string(&message.routing_key, "routing-key"),
            })),
            to_amqp(&message.properties),
            &message.body,
            self.frame_max,
        );
        self.out.send(Bytes::from(frames));
    }

    fn writable(&self) -> bool {
        match self.session.get() {
            Some(session) => self.out.backlog.has_room(session),
            None => true,
        }
    }

    fn consumer_cancelled(&self, channel: u16, consumer_tag: &str) {
        if self.cancel_notify {
            self.out.send(method_frame(
                channel,
                AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                    consumer_tag: consumer_tag.into(),
                    nowait: true,
                })),
            ));
        }
    }
}

/// A publish whose content frames are still arriving.
struct PendingPublish {
    publish: basic::Publish,
    properties: Option<sluice_broker::vhost::MessageProperties>,
    body_size: u64,
    body: BytesMut,
}

/// One published message waiting for its confirm.
struct ConfirmItem {
    tag: u64,
    waits: Vec<oneshot::Receiver<Result<(), String>>>,
    nack: bool,
}

struct Confirms {
    next_tag: u64,
    sender: mpsc::UnboundedSender<ConfirmItem>,
}

pub(crate) struct Channel {
    id: u16,
    session: Arc<Session>,
    /// We sent channel.close and wait for close-ok; everything else is dropped meanwhile.
    closing: bool,
    finished: bool,
    /// Stops the confirm task from writing on a closed channel.
    closed_flag: Arc<AtomicBool>,
    pending: Option<PendingPublish>,
    confirms: Option<Confirms>,
    last_queue: String,
    /// Single basic.acks read in one burst, applied together (`flush_acks`).
    pending_acks: Vec<u64>,
}

impl Channel {
    pub fn open(connection: &Connection, id: u16) -> Channel {
        let sink = Arc::new(FrameSink {
            out: connection.out.clone(),
            frame_max: connection.frame_max(),
            cancel_notify: connection.cancel_notify,
            session: std::sync::OnceLock::new(),
        });
        let session = Session::new(
            Arc::clone(&connection.context.vhost),
            connection.id,
            id,
            connection.user.clone(),
            Arc::clone(&sink) as Arc<dyn DeliverySink>,
        );
        let _ = sink.session.set(Arc::downgrade(&session));
        connection.send(method_frame(
            id,
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
        ));
        Channel {
            id,
            session,
            closing: false,
            finished: false,
            closed_flag: Arc::new(AtomicBool::new(false)),
            pending: None,
            confirms: None,
            last_queue: String::new(),
            pending_acks: Vec::new(),
        }
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    fn reply(&self, connection: &Connection, method: AMQPClass) {
        connection.send(method_frame(self.id, method));
    }

    /// Ends the channel's consumers and requeues its unacked deliveries.
    pub fn release(&mut self) {
        // Acks the client sent before it closed still count.
        let _ = self.flush_acks();
        self.closed_flag.store(true, Ordering::Release);
        self.confirms = None;
        self.pending = None;
        self.session.close();
    }

    /// channel.close with the error; the channel lingers until the client's close-ok.
    pub fn close_with(&mut self, connection: &Connection, error: &AmqpError) {
        self.release();
        self.closing = true;
        self.reply(
            connection,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: error.code,
                reply_text: ShortString::from(error.reply_text()),
                class_id: error.class_id,
                method_id: error.method_id,
            })),
        );
    }

    fn queue_name(&self, name: &ShortString) -> Result<String, AmqpError> {
        if !name.as_str().is_empty() {
            return Ok(name.as_str().to_string());
        }
        if self.last_queue.is_empty() {
            return Err(AmqpError::channel(
                NOT_FOUND,
                "no previously declared queue",
            ));
        }
        Ok(self.last_queue.clone())
    }

    pub async fn handle_method(
        &mut self,
        connection: &mut Connection,
        method: AMQPClass,
    ) -> Result<(), AmqpError> {
        let (class_id, method_id) = (method.get_amqp_class_id(), method.get_amqp_method_id());
        if self.closing {
            match method {
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => self.finished = true,
                AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                    self.reply(
                        connection,
                        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                    );
                    self.finished = true;
                }
                _ => {}
            }
            return Ok(());
        }
        // Anything but another single ack applies the gathered acks first, keeping the order.
        let single_ack = matches!(&method, AMQPClass::Basic(basic::AMQPMethod::Ack(a)) if !a.multiple && a.delivery_tag != 0);
        if !single_ack {
            self.flush_acks()?;
        }
        if self.pending.is_some() {
            return Err(AmqpError::connection(
                UNEXPECTED_FRAME,
                "expected content header for class 60, got non content header frame instead",
            )
            .on(class_id, method_id));
        }
        self.dispatch_method(connection, method).await.map_err(|e| {
            if e.class_id == 0 {
                e.on(class_id, method_id)
            } else {
                e
            }
        })
    }

    /// Applies the single acks gathered from one burst of frames, in one call.
    pub fn flush_acks(&mut self) -> Result<(), AmqpError> {
        if self.pending_acks.is_empty() {
            return Ok(());
        }
        let tags = std::mem::take(&mut self.pending_acks);
        self.session
            .ack_each(&tags)
            .map_err(|e| AmqpError::from(e).on(60, 80))
    }

    async fn dispatch_method(
        &mut self,
        connection: &mut Connection,
        method: AMQPClass,
    ) -> Result<(), AmqpError> {
        let vhost = Arc::clone(self.session.vhost());
        let conn_id = connection.id;
        match method {
            AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                self.release();
                self.reply(
                    connection,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                );
                self.finished = true;
            }
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => {}
            AMQPClass::Channel(channel::AMQPMethod::Open(_)) => {
                return Err(AmqpError::connection(
                    CHANNEL_ERROR,
                    "second 'channel.open' seen",
                ));
            }
            AMQPClass::Channel(channel::AMQPMethod::Flow(flow)) => {
                // As RabbitMQ: a client pauses deliveries with basic.qos, not channel.flow.
                if !flow.active {
                    return Err(AmqpError::connection(NOT_IMPLEMENTED, "active=false"));
                }
                self.reply(
                    connection,
                    AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                        active: flow.active,
                    })),
                );
            }
            AMQPClass::Channel(channel::AMQPMethod::FlowOk(_)) => {}
            AMQPClass::Access(access::AMQPMethod::Request(_)) => {
                self.reply(
                    connection,
                    AMQPClass::Access(access::AMQPMethod::RequestOk(access::RequestOk {})),
                );
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(d)) => {
                vhost.declare_exchange(
                    d.exchange.as_str(),
                    d.kind.as_str(),
                    d.passive,
                    d.durable,
                    d.auto_delete,
                    d.internal,
                    d.arguments,
                )?;
                if !d.nowait {
                    self.reply(
                        connection,
                        AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(
                            exchange::DeclareOk {},
                        )),
                    );
                }
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Delete(d)) => {
                vhost.delete_exchange(d.exchange.as_str(), d.if_unused)?;
                if !d.nowait {
                    self.reply(
                        connection,
                        AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
                    );
                }
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Bind(b)) => {
                let destination = Destination::Exchange(b.destination.as_str().to_string());
                vhost.bind(
                    b.source.as_str(),
                    destination,
                    b.routing_key.as_str(),
                    b.arguments,
                    conn_id,
                )?;
                if !b.nowait {
                    self.reply(
                        connection,
                        AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
                    );
                }
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Unbind(b)) => {
                let destination = Destination::Exchange(b.destination.as_str().to_string());
                vhost.unbind(
                    b.source.as_str(),
                    destination,
                    b.routing_key.as_str(),
                    b.arguments,
                    conn_id,
                )?;
                if !b.nowait {
                    self.reply(
                        connection,
                        AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})),
                    );
                }
            }
            AMQPClass::Queue(queue::AMQPMethod::Declare(d)) => {
                let (name, messages, consumers) = vhost.declare_queue(
                    d.queue.as_str(),
                    d.passive,
                    d.durable,
                    d.exclusive,
                    d.auto_delete,
                    d.arguments,
                    conn_id,
                )?;
                self.last_queue = name.clone();
                if !d.nowait {
                    self.reply(
                        connection,
                        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                            queue: name.into(),
                            message_count: messages,
                            consumer_count: consumers,
                        })),
                    );
                }
            }
            AMQPClass::Queue(queue::AMQPMethod::Bind(b)) => {
                let name = self.queue_name(&b.queue)?;
                vhost.bind(
                    b.exchange.as_str(),
                    Destination::Queue(name),
                    b.routing_key.as_str(),
                    b.arguments,
                    conn_id,
                )?;
                if !b.nowait {
                    self.reply(
                        connection,
                        AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
                    );
                }
            }
            AMQPClass::Queue(queue::AMQPMethod::Unbind(b)) => {
                let name = self.queue_name(&b.queue)?;
                vhost.unbind(
                    b.exchange.as_str(),
                    Destination::Queue(name),
                    b.routing_key.as_str(),
                    b.arguments,
                    conn_id,
                )?;
                self.reply(
                    connection,
                    AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
                );
            }
            AMQPClass::Queue(queue::AMQPMethod::Purge(p)) => {
                let name = self.queue_name(&p.queue)?;
                let count = vhost.purge_queue(&name, conn_id)?;
                if !p.nowait {
                    self.reply(
                        connection,
                        AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                            message_count: count,
                        })),
                    );
                }
            }
            AMQPClass::Queue(queue::AMQPMethod::Delete(d)) => {
                let name = self.queue_name(&d.queue)?;
                let count = vhost.delete_queue(&name, d.if_unused, d.if_empty, conn_id)?;
                if !d.nowait {
                    self.reply(
                        connection,
                        AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                            message_count: count,
                        })),
                    );
                }
            }
            AMQPClass::Basic(basic::AMQPMethod::Qos(q)) => {
                self.session.qos(q.prefetch_count, q.global);
                self.reply(
                    connection,
                    AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
                );
            }
            AMQPClass::Basic(basic::AMQPMethod::Consume(c)) => {
                let name = self.queue_name(&c.queue)?;
                let tag = if c.consumer_tag.as_str().is_empty() {
                    format!("amq.ctag-{}", uuid::Uuid::new_v4().simple())
                } else {
                    c.consumer_tag.as_str().to_string()
                };
                let consumer = self.session.consume(
                    &name,
                    tag.clone(),
                    c.no_ack,
                    c.exclusive,
                    &c.arguments,
                )?;
                if !c.nowait {
                    self.reply(
                        connection,
                        AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                            consumer_tag: tag.into(),
                        })),
                    );
                }
                self.session.start_consumer(&consumer);
            }
            AMQPClass::Basic(basic::AMQPMethod::Cancel(c)) => {
                self.session.cancel(c.consumer_tag.as_str());
                if !c.nowait {
                    self.reply(
                        connection,
                        AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                            consumer_tag: c.consumer_tag,
                        })),
                    );
                }
            }
            AMQPClass::Basic(basic::AMQPMethod::Publish(p)) => {
                self.pending = Some(PendingPublish {
                    publish: p,
                    properties: None,
                    body_size: 0,
                    body: BytesMut::new(),
                });
            }
            AMQPClass::Basic(basic::AMQPMethod::Get(g)) => {
                let name = self.queue_name(&g.queue)?;
                match self.session.get(&name, g.no_ack)? {
                    Some(Got {
                        delivery_tag: tag,
                        redelivered,
                        message,
                        remaining,
                    }) => {
                        let mut frames = Vec::with_capacity(message.body.len() + 128);
                        encode_content(
                            &mut frames,
                            self.id,
                            AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                                delivery_tag: tag,
                                redelivered,
                                exchange: fit_short_string(&message.exchange, "exchange"),
                                routing_key: fit_short_string(&message.routing_key, "routing-key"),
                                message_count: remaining,
                            })),
                            to_amqp(&message.properties),
                            &message.body,
                            connection.frame_max(),
                        );
                        connection.send(Bytes::from(frames));
                    }
                    None => self.reply(
                        connection,
                        AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
                    ),
                }
            }
            AMQPClass::Basic(basic::AMQPMethod::Ack(a)) if !a.multiple && a.delivery_tag != 0 => {
                // Gathered while more frames are already buffered; see `flush_acks`.
                self.pending_acks.push(a.delivery_tag);
                if !connection.frame_buffered() {
                    self.flush_acks()?;
                }
            }
            AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => {
                self.session
                    .settle(a.delivery_tag, a.multiple, Settle::Ack)?;
            }
            AMQPClass::Basic(basic::AMQPMethod::Nack(n)) => {
                let how = if n.requeue {
                    Settle::Requeue
                } else {
                    Settle::Discard
                };
                self.session.settle(n.delivery_tag, n.multiple, how)?;
            }
            AMQPClass::Basic(basic::AMQPMethod::Reject(r)) => {
                let how = if r.requeue {
                    Settle::Requeue
                } else {
                    Settle::Discard
                };
                self.session.settle(r.delivery_tag, false, how)?;
            }
            AMQPClass::Basic(basic::AMQPMethod::Recover(r)) => {
                if !r.requeue {
                    return Err(AmqpError::connection(NOT_IMPLEMENTED, "requeue=false"));
                }
                self.session.recover();
                self.reply(
                    connection,
                    AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                );
            }
            AMQPClass::Basic(basic::AMQPMethod::RecoverAsync(r)) => {
                if !r.requeue {
                    return Err(AmqpError::connection(NOT_IMPLEMENTED, "requeue=false"));
                }
                self.session.recover();
            }
            AMQPClass::Confirm(confirm::AMQPMethod::Select(s)) => {
                if self.session.in_transaction() {
                    return Err(AmqpError::channel(
                        PRECONDITION_FAILED,
                        "cannot switch from tx to confirm mode",
                    ));
                }
                if self.confirms.is_none() {
                    let (sender, items) = mpsc::unbounded_channel();
                    tokio::spawn(confirm_loop(
                        self.id,
                        items,
                        connection.out.clone(),
                        Arc::clone(&self.closed_flag),
                    ));
                    self.confirms = Some(Confirms {
                        next_tag: 1,
                        sender,
                    });
                }
                if !s.nowait {
                    self.reply(
                        connection,
                        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                    );
                }
            }
            AMQPClass::Tx(tx::AMQPMethod::Select(_)) => {
                if self.confirms.is_some() {
                    return Err(AmqpError::channel(
                        PRECONDITION_FAILED,
                        "cannot switch from confirm to tx mode",
                    ));
                }
                self.session.tx_select();
                self.reply(
                    connection,
                    AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
                );
            }
            AMQPClass::Tx(tx::AMQPMethod::Commit(_)) => {
                let committed = self.session.tx_commit()?;
                for message in &committed.returned {
                    self.send_return(connection, message);
                }
                for wait in committed.durable {
                    if !matches!(wait.await, Ok(Ok(()))) {
                        return Err(AmqpError::connection(
                            INTERNAL_ERROR,
                            "could not store a message of the transaction",
                        ));
                    }
                }
                self.reply(
                    connection,
                    AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
                );
            }
            AMQPClass::Tx(tx::AMQPMethod::Rollback(_)) => {
                self.session.tx_rollback()?;
                self.reply(
                    connection,
                    AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
                );
            }
            other => {
                return Err(
                    AmqpError::connection(COMMAND_INVALID, "unimplemented method")
                        .on(other.get_amqp_class_id(), other.get_amqp_method_id()),
                );
            }
        }
        Ok(())
    }

    pub fn handle_header(
        &mut self,
        connection: &mut Connection,
        payload: &[u8],
    ) -> Result<(), AmqpError> {
        if self.closing {
            return Ok(());
        }
        let Some(pending) = self.pending.as_mut() else {
            return Err(AmqpError::connection(
                UNEXPECTED_FRAME,
                "content header without a publish",
            ));
        };
        if pending.properties.is_some() {
            return Err(AmqpError::connection(
                UNEXPECTED_FRAME,
                "second content header for one publish",
            ));
        }
        let header = match decode_content_header(payload) {
            Ok(header) => header,
            Err(error) => {
                return Err(AmqpError::connection(FRAME_ERROR, error.to_string()).on(60, 40))
            }
        };
        if header.class_id != 60 {
            return Err(AmqpError::connection(
                UNEXPECTED_FRAME,
                format!(
                    "expected content header for class 60, got one for class {}",
                    header.class_id
                ),
            )
            .on(60, 40));
        }
        let max = connection.context.config.message_bytes_max;
        if header.body_size > max {
            self.pending = None;
            return Err(AmqpError::channel(
                PRECONDITION_FAILED,
                format!(
                    "message size {} is larger than configured max size {max}",
                    header.body_size
                ),
            )
            .on(60, 40));
        }
        pending.body_size = header.body_size;
        pending.body.reserve(header.body_size as usize);
        pending.properties = Some(from_amqp(&header.properties));
        if header.body_size == 0 {
            return self.complete_publish(connection);
        }
        Ok(())
    }

    pub async fn handle_body(
        &mut self,
        connection: &mut Connection,
        body: Bytes,
    ) -> Result<(), AmqpError> {
        if self.closing {
            return Ok(());
        }
        let Some(pending) = self.pending.as_mut() else {
            return Err(AmqpError::connection(
                UNEXPECTED_FRAME,
                "content body without a publish",
            ));
        };
        if pending.properties.is_none() {
            return Err(AmqpError::connection(
                UNEXPECTED_FRAME,
                "content body before the content header",
            ));
        }
        if pending.body.len() as u64 + body.len() as u64 > pending.body_size {
            return Err(AmqpError::connection(
                FRAME_ERROR,
                "content body longer than its header said",
            ));
        }
        pending.body.extend_from_slice(&body);
        if pending.body.len() as u64 == pending.body_size {
            return self.complete_publish(connection);
        }
        Ok(())
    }

    fn complete_publish(&mut self, connection: &mut Connection) -> Result<(), AmqpError> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        let properties = pending.properties.unwrap_or_default();
        if let Some(user_id) = &properties.user_id {
            if *user_id != connection.user {
                return Err(AmqpError::channel(
                    PRECONDITION_FAILED,
                    format!(
                        "user_id property set to '{user_id}' but authenticated user was '{}'",
                        connection.user
                    ),
                )
                .on(60, 40));
            }
        }
        connection.has_published = true;
        let message = Message {
            exchange: pending.publish.exchange.as_str().to_string(),
            routing_key: pending.publish.routing_key.as_str().to_string(),
            properties,
            body: pending.body.freeze(),
        };
        let returned = pending.publish.mandatory.then(|| message.clone());
        let outcome = self
            .session
            .publish(pending.publish.mandatory, message)
            .map_err(|e| AmqpError::from(e).on(60, 40))?;
        let Some(PublishOutcome {
            routed,
            rejected,
            durable,
            congested,
        }) = outcome
        else {
            return Ok(()); // buffered in the transaction
        };
        connection.congested.extend(congested);
        if !routed {
            if let Some(message) = &returned {
                self.send_return(connection, message);
            }
        }
        if let Some(confirms) = self.confirms.as_mut() {
            let tag = confirms.next_tag;
            confirms.next_tag += 1;
            let _ = confirms.sender.send(ConfirmItem {
                tag,
                waits: durable,
                nack: rejected,
            });
        }
        Ok(())
    }

    /// basic.return of a mandatory publish that reached no queue, under the exchange and
    /// routing key it was published with.
    fn send_return(&self, connection: &Connection, message: &Message) {
        let mut frames = Vec::with_capacity(message.body.len() + 128);
        encode_content(
            &mut frames,
            self.id,
            AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                reply_code: NO_ROUTE,
                reply_text: "NO_ROUTE".into(),
                exchange: fit_short_string(&message.exchange, "exchange"),
                routing_key: fit_short_string(&message.routing_key, "routing-key"),
            })),
            to_amqp(&message.properties),
            &message.body,
            connection.frame_max(),
        );
        connection.send(Bytes::from(frames));
    }
}

/// Whether an item's stores have all answered: Some(true) stored, Some(false) failed, None
/// still waiting (answered receivers are dropped from the list).
fn poll_ready(item: &mut ConfirmItem) -> Option<bool> {
    if item.nack {
        return Some(false);
    }
    let mut failed = false;
    item.waits.retain_mut(|wait| match wait.try_recv() {
        Ok(Ok(())) => false,
        Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => {
            failed = true;
            false
        }
        Err(oneshot::error::TryRecvError::Empty) => true,
    });
    if failed {
        item.nack = true;
        return Some(false);
    }
    item.waits.is_empty().then_some(true)
}

/// Sends basic.ack / basic.nack in publish order. Consecutive confirms that are ready together
/// go out as one ack with multiple=true, as RabbitMQ does under load.
async fn confirm_loop(
    channel: u16,
    mut items: mpsc::UnboundedReceiver<ConfirmItem>,
    out: Outbound,
    closed: Arc<AtomicBool>,
) {
    let send = |method: basic::AMQPMethod| {
        if !closed.load(Ordering::Acquire) {
            out.send(method_frame(channel, AMQPClass::Basic(method)));
        }
    };
    let mut carried: Option<ConfirmItem> = None;
    loop {
        let mut item = match carried.take() {
            Some(item) => item,
            None => match items.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        let mut stored = !item.nack;
        for wait in std::mem::take(&mut item.waits) {
            if !matches!(wait.await, Ok(Ok(()))) {
                stored = false;
            }
        }
        if !stored {
            send(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: item.tag,
                multiple: false,
                requeue: false,
            }));
            continue;
        }
        let mut last = item.tag;
        let mut multiple = false;
        while let Ok(mut next) = items.try_recv() {
            match poll_ready(&mut next) {
                Some(true) => {
                    last = next.tag;
                    multiple = true;
                }
                Some(false) | None => {
                    carried = Some(next);
                    break;
                }
            }
        }
        send(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: last,
            multiple,
        }));
    }
}
