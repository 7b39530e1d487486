//! `sluice_connections{protocol}` (open now) and `sluice_connections_opened_total{protocol}`,
//! kept by a guard each protocol front end holds for as long as a client connection lives.

/// Counts one open connection of `protocol` until dropped.
#[derive(Debug)]
pub struct OpenConnection {
    open: metrics::Gauge,
}

impl OpenConnection {
    /// `protocol` is a label value: `kafka` or `amqp`.
    pub fn new(protocol: &'static str) -> OpenConnection {
        metrics::counter!("sluice_connections_opened_total", "protocol" => protocol).increment(1);
        let open = metrics::gauge!("sluice_connections", "protocol" => protocol);
        open.increment(1.0);
        OpenConnection { open }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}
