//! The queue class: declare, bind, unbind, purge, delete.

use std::sync::Arc;

use amq_protocol::protocol::{queue, AMQPClass};
use sluice_auth::Access;
use sluice_broker::vhost::Destination;

use super::{unimplemented, Channel};
use crate::connection::Connection;
use crate::reply::*;

impl Channel {
    pub(super) async fn queue_method(
        &mut self,
        connection: &mut Connection,
        method: queue::AMQPMethod,
    ) -> Result<(), AmqpError> {
        let vhost = Arc::clone(self.session.vhost());
        let conn_id = connection.id;
        match method {
            queue::AMQPMethod::Declare(d) => {
                if !d.passive {
                    // A server-named queue is checked as RabbitMQ checks it: as amq.gen-*.
                    let name = match d.queue.as_str() {
                        "" => "amq.gen-",
                        name => name,
                    };
                    connection.check_access(Access::Configure, "queue", name)?;
                    check_queue_limit(connection, &vhost, d.queue.as_str())?;
                }
                let (name, messages, consumers) = vhost.declare_queue(
                    d.queue.as_str(),
                    d.passive,
                    d.durable,
                    d.exclusive,
                    d.auto_delete,
                    d.arguments,
                    conn_id,
                )?;
                vhost.definitions_saved().await?;
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
            queue::AMQPMethod::Bind(b) => {
                let name = self.queue_name(&b.queue)?;
                connection.check_access(Access::Write, "queue", &name)?;
                refuse_default_exchange(b.exchange.as_str())?;
                connection.check_access(Access::Read, "exchange", b.exchange.as_str())?;
                vhost.bind(
                    b.exchange.as_str(),
                    Destination::Queue(name),
                    b.routing_key.as_str(),
                    b.arguments,
                    conn_id,
                )?;
                vhost.definitions_saved().await?;
                if !b.nowait {
                    self.reply(
                        connection,
                        AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
                    );
                }
            }
            queue::AMQPMethod::Unbind(b) => {
                let name = self.queue_name(&b.queue)?;
                connection.check_access(Access::Write, "queue", &name)?;
                refuse_default_exchange(b.exchange.as_str())?;
                connection.check_access(Access::Read, "exchange", b.exchange.as_str())?;
                vhost.unbind(
                    b.exchange.as_str(),
                    Destination::Queue(name),
                    b.routing_key.as_str(),
                    b.arguments,
                    conn_id,
                )?;
                vhost.definitions_saved().await?;
                self.reply(
                    connection,
                    AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
                );
            }
            queue::AMQPMethod::Purge(p) => {
                let name = self.queue_name(&p.queue)?;
                connection.check_access(Access::Read, "queue", &name)?;
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
            queue::AMQPMethod::Delete(d) => {
                let name = self.queue_name(&d.queue)?;
                connection.check_access(Access::Configure, "queue", &name)?;
                let count = vhost.delete_queue(&name, d.if_unused, d.if_empty, conn_id)?;
                vhost.definitions_saved().await?;
                if !d.nowait {
                    self.reply(
                        connection,
                        AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                            message_count: count,
                        })),
                    );
                }
            }
            _ => return Err(unimplemented()),
        }
        Ok(())
    }
}

/// RabbitMQ refuses bindings to the default exchange before it checks read access to it.
fn refuse_default_exchange(exchange: &str) -> Result<(), AmqpError> {
    if exchange.is_empty() || exchange == "amq.default" {
        return Err(AmqpError::channel(
            ACCESS_REFUSED,
            "operation not permitted on the default exchange",
        ));
    }
    Ok(())
}

/// The vhost's `max-queues`: a new queue beyond it is refused as RabbitMQ refuses it.
fn check_queue_limit(
    connection: &Connection,
    vhost: &sluice_broker::vhost::VirtualHost,
    name: &str,
) -> Result<(), AmqpError> {
    let Some(max) = connection
        .context
        .config
        .vhost_limits
        .limit(vhost.vhost_name(), sluice_auth::vhost_limits::MAX_QUEUES)
    else {
        return Ok(());
    };
    if !name.is_empty() && vhost.queue(name).is_some() {
        return Ok(());
    }
    if (vhost.queues().len() as u64) < max {
        return Ok(());
    }
    // A server-named queue is refused under a name it would have had, as RabbitMQ names it.
    let generated;
    let name = if name.is_empty() {
        generated = format!(
            "amq.gen-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..22]
        );
        &generated
    } else {
        name
    };
    Err(AmqpError::channel(
        PRECONDITION_FAILED,
        format!(
            "cannot declare queue '{name}': queue limit in vhost '{}' ({max}) is reached",
            vhost.vhost_name()
        ),
    ))
}
