//! The basic class: qos, consume, cancel, publish (its content frames are assembled in
//! `mod.rs`), get, ack, nack, reject, recover.

use amq_protocol::protocol::{basic, AMQPClass};
use bytes::{Bytes, BytesMut};
use sluice_auth::Access;
use sluice_broker::vhost::{Got, Settle};

use super::{unimplemented, Channel, PendingPublish};
use crate::codec::encode_content;
use crate::connection::Connection;
use crate::properties::{fit_short_string, to_amqp};
use crate::reply::*;

impl Channel {
    pub(super) fn basic_method(
        &mut self,
        connection: &mut Connection,
        method: basic::AMQPMethod,
    ) -> Result<(), AmqpError> {
        match method {
            basic::AMQPMethod::Qos(q) => {
                self.session.qos(q.prefetch_count, q.global);
                self.reply(
                    connection,
                    AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
                );
            }
            basic::AMQPMethod::Consume(c) => {
                let name = self.queue_name(&c.queue)?;
                connection.check_access(Access::Read, "queue", &name)?;
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
            basic::AMQPMethod::Cancel(c) => {
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
            basic::AMQPMethod::Publish(p) => {
                connection.check_access(Access::Write, "exchange", p.exchange.as_str())?;
                self.pending = Some(PendingPublish {
                    publish: p,
                    properties: None,
                    body_size: 0,
                    body: BytesMut::new(),
                    memory: None,
                });
            }
            basic::AMQPMethod::Get(g) => {
                let name = self.queue_name(&g.queue)?;
                connection.check_access(Access::Read, "queue", &name)?;
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
            basic::AMQPMethod::Ack(a) if !a.multiple && a.delivery_tag != 0 => {
                // Gathered while more frames are already buffered; see `flush_acks`.
                self.pending_acks.push(a.delivery_tag);
                if !connection.frame_buffered() {
                    self.flush_acks()?;
                }
            }
            basic::AMQPMethod::Ack(a) => {
                self.session
                    .settle(a.delivery_tag, a.multiple, Settle::Ack)?;
            }
            basic::AMQPMethod::Nack(n) => {
                let how = if n.requeue {
                    Settle::Requeue
                } else {
                    Settle::Discard
                };
                self.session.settle(n.delivery_tag, n.multiple, how)?;
            }
            basic::AMQPMethod::Reject(r) => {
                let how = if r.requeue {
                    Settle::Requeue
                } else {
                    Settle::Discard
                };
                self.session.settle(r.delivery_tag, false, how)?;
            }
            basic::AMQPMethod::Recover(r) => {
                if !r.requeue {
                    return Err(AmqpError::connection(NOT_IMPLEMENTED, "requeue=false"));
                }
                self.session.recover();
                self.reply(
                    connection,
                    AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                );
            }
            basic::AMQPMethod::RecoverAsync(r) => {
                if !r.requeue {
                    return Err(AmqpError::connection(NOT_IMPLEMENTED, "requeue=false"));
                }
                self.session.recover();
            }
            _ => return Err(unimplemented()),
        }
        Ok(())
    }
}
