use std::sync::Arc;

use sluice_broker::Broker;

/// Listener-level settings of the Kafka front end.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Host and port returned in Metadata and FindCoordinator (the listen address by default).
    pub advertised_host: String,
    pub advertised_port: i32,
    /// Largest request frame accepted (`socket.request.max.bytes`); larger closes the connection.
    pub request_bytes_max: usize,
    /// Bytes of request frames all connections together may hold while their requests are in
    /// progress (Kafka's `queued.max.request.bytes`); readers wait when it is spent.
    pub queued_request_bytes_max: usize,
}

/// What every request handler gets: the broker, the listener config and who is asking.
pub struct RequestContext {
    pub broker: Arc<Broker>,
    pub config: Arc<KafkaConfig>,
    pub client_id: String,
    pub client_host: String,
}
