//! The AMQP 0-9-1 front end: reads frames, drives the connection and channel state machines
//! and translates methods into calls on the broker's virtual host ([`sluice_broker::vhost`]).
//! Frames and method codecs come from `amq-protocol`; no storage logic lives here.

mod channel;
mod codec;
mod connection;
pub mod fuzzing;
mod properties;
mod reply;
mod server;

pub use server::{AmqpConfig, AmqpServer};
