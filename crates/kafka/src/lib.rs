//! Kafka wire-protocol front end. Frames and codecs come from the `kafka-protocol` crate; this
//! crate owns the connections and translates each request into calls on the protocol-neutral
//! [`sluice_broker::Broker`]. It holds no storage logic.

mod api_versions;
mod authorization;
mod connection;
mod consumer_protocol;
mod context;
mod error_codes;
mod fetch_session;
pub mod fuzzing;
mod handlers;
mod mutation_quota;
mod request_metrics;
mod response_buffer;
mod sasl_gate;
pub mod security;
mod server;
mod share_session;
mod throttle;
mod unsupported_version;

pub use api_versions::supported_api_versions;
pub use context::{KafkaConfig, RequestContext};
pub use security::{KafkaSecurity, Principal, SecurityProtocol};
pub use server::KafkaServer;
