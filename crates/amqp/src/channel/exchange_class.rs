//! The exchange class: declare, delete, bind, unbind (exchange-to-exchange bindings).

use std::sync::Arc;

use amq_protocol::protocol::{exchange, AMQPClass};
use sluice_auth::Access;
use sluice_broker::vhost::Destination;

use super::{unimplemented, Channel};
use crate::connection::Connection;
use crate::reply::*;

impl Channel {
    pub(super) async fn exchange_method(
        &mut self,
        connection: &mut Connection,
        method: exchange::AMQPMethod,
    ) -> Result<(), AmqpError> {
        let vhost = Arc::clone(self.session.vhost());
        let conn_id = connection.id;
        match method {
            exchange::AMQPMethod::Declare(d) => {
                if !d.passive {
                    connection.check_access(Access::Configure, "exchange", d.exchange.as_str())?;
                }
                vhost.declare_exchange(
                    d.exchange.as_str(),
                    d.kind.as_str(),
                    d.passive,
                    d.durable,
                    d.auto_delete,
                    d.internal,
                    d.arguments,
                )?;
                vhost.definitions_saved().await?;
                if !d.nowait {
                    self.reply(
                        connection,
                        AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(
                            exchange::DeclareOk {},
                        )),
                    );
                }
            }
            exchange::AMQPMethod::Delete(d) => {
                connection.check_access(Access::Configure, "exchange", d.exchange.as_str())?;
                vhost.delete_exchange(d.exchange.as_str(), d.if_unused)?;
                vhost.definitions_saved().await?;
                if !d.nowait {
                    self.reply(
                        connection,
                        AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
                    );
                }
            }
            exchange::AMQPMethod::Bind(b) => {
                connection.check_access(Access::Write, "exchange", b.destination.as_str())?;
                connection.check_access(Access::Read, "exchange", b.source.as_str())?;
                let destination = Destination::Exchange(b.destination.as_str().to_string());
                vhost.bind(
                    b.source.as_str(),
                    destination,
                    b.routing_key.as_str(),
                    b.arguments,
                    conn_id,
                )?;
                vhost.definitions_saved().await?;
                if !b.nowait {
                    self.reply(
                        connection,
                        AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
                    );
                }
            }
            exchange::AMQPMethod::Unbind(b) => {
                connection.check_access(Access::Write, "exchange", b.destination.as_str())?;
                connection.check_access(Access::Read, "exchange", b.source.as_str())?;
                let destination = Destination::Exchange(b.destination.as_str().to_string());
                vhost.unbind(
                    b.source.as_str(),
                    destination,
                    b.routing_key.as_str(),
                    b.arguments,
                    conn_id,
                )?;
                vhost.definitions_saved().await?;
                if !b.nowait {
                    self.reply(
                        connection,
                        AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})),
                    );
                }
            }
            _ => return Err(unimplemented()),
        }
        Ok(())
    }
}
