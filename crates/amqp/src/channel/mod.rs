//! One AMQP channel: methods translated into session and virtual-host calls (one module per
//! AMQP class), content frames assembled into messages, publisher confirms sent in order as
//! messages become durable.

mod basic_class;
mod channel_class;
mod confirm_class;
mod exchange_class;
mod queue_class;
mod tx_class;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use amq_protocol::protocol::{basic, channel, AMQPClass};
use amq_protocol::types::ShortString;
use bytes::{Bytes, BytesMut};
use sluice_broker::vhost::{Delivery, DeliverySink, Message, PublishOutcome, Session};

use crate::codec::{decode_content_header, encode_content, method_frame};
use crate::connection::{Connection, Outbound};
use crate::properties::{fit_short_string, from_amqp, to_amqp};
use crate::reply::*;
use confirm_class::{ConfirmItem, Confirms};

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
    /// The body's announced size, in the memory alarm while it is being received.
    memory: Option<sluice_broker::vhost::MemoryCharge>,
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
    _counted: OpenChannel,
}

/// Counts the channel in `sluice_amqp_channels` for as long as it lives.
struct OpenChannel(metrics::Gauge);

impl OpenChannel {
    fn new() -> OpenChannel {
        let open = metrics::gauge!("sluice_amqp_channels");
        open.increment(1.0);
        OpenChannel(open)
    }
}

impl Drop for OpenChannel {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
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
            Arc::clone(&connection.vhost),
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
            _counted: OpenChannel::new(),
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

    /// One method, handed to its class's module.
    async fn dispatch_method(
        &mut self,
        connection: &mut Connection,
        method: AMQPClass,
    ) -> Result<(), AmqpError> {
        match method {
            AMQPClass::Channel(method) => self.channel_method(connection, method),
            AMQPClass::Access(method) => self.access_method(connection, method),
            AMQPClass::Exchange(method) => self.exchange_method(connection, method).await,
            AMQPClass::Queue(method) => self.queue_method(connection, method).await,
            AMQPClass::Basic(method) => self.basic_method(connection, method),
            AMQPClass::Confirm(method) => self.confirm_method(connection, method),
            AMQPClass::Tx(method) => self.tx_method(connection, method).await,
            other => Err(unimplemented().on(other.get_amqp_class_id(), other.get_amqp_method_id())),
        }
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
        pending.memory = Some(self.session.charge_memory(header.body_size));
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

/// A method of a known class that a client may not send (or we do not implement): 503,
/// completed with the class and method ids by `handle_method`.
fn unimplemented() -> AmqpError {
    AmqpError::connection(COMMAND_INVALID, "unimplemented method")
}
