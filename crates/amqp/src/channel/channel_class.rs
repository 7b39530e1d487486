//! The channel class: close, close-ok, a second open, flow; and access.request (AMQP 0-8,
//! answered as RabbitMQ does).

use amq_protocol::protocol::{access, channel, AMQPClass};

use super::{unimplemented, Channel};
use crate::connection::Connection;
use crate::reply::*;

impl Channel {
    pub(super) fn channel_method(
        &mut self,
        connection: &mut Connection,
        method: channel::AMQPMethod,
    ) -> Result<(), AmqpError> {
        match method {
            channel::AMQPMethod::Close(_) => {
                self.release();
                self.reply(
                    connection,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                );
                self.finished = true;
            }
            channel::AMQPMethod::CloseOk(_) => {}
            channel::AMQPMethod::Open(_) => {
                return Err(AmqpError::connection(
                    CHANNEL_ERROR,
                    "second 'channel.open' seen",
                ));
            }
            channel::AMQPMethod::Flow(flow) => {
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
            channel::AMQPMethod::FlowOk(_) => {}
            _ => return Err(unimplemented()),
        }
        Ok(())
    }
}

impl Channel {
    pub(super) fn access_method(
        &mut self,
        connection: &mut Connection,
        method: access::AMQPMethod,
    ) -> Result<(), AmqpError> {
        match method {
            access::AMQPMethod::Request(_) => {
                self.reply(
                    connection,
                    AMQPClass::Access(access::AMQPMethod::RequestOk(access::RequestOk {})),
                );
            }
            _ => return Err(unimplemented()),
        }
        Ok(())
    }
}
