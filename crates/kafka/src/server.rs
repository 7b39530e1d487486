use std::net::SocketAddr;
use std::sync::Arc;

use sluice_broker::Broker;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::connection::{serve_connection, RequestMemory};
use crate::{KafkaConfig, RequestContext};

/// The Kafka listener: accepts connections and serves each on its own task.
pub struct KafkaServer {
    listener: TcpListener,
    broker: Arc<Broker>,
    config: Arc<KafkaConfig>,
    request_memory: Arc<RequestMemory>,
}

impl KafkaServer {
    pub async fn bind(
        address: SocketAddr,
        broker: Arc<Broker>,
        config: KafkaConfig,
    ) -> std::io::Result<KafkaServer> {
        let listener = TcpListener::bind(address).await?;
        let request_memory = Arc::new(RequestMemory::new(config.queued_request_bytes_max));
        Ok(KafkaServer {
            listener,
            broker,
            config: Arc::new(config),
            request_memory,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` turns true; open connections are dropped with the runtime.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let context = RequestContext {
                            broker: Arc::clone(&self.broker),
                            config: Arc::clone(&self.config),
                            client_id: String::new(),
                            client_host: peer.ip().to_string(),
                        };
                        tokio::spawn(serve_connection(
                            stream,
                            peer,
                            context,
                            Arc::clone(&self.request_memory),
                        ));
                    }
                    Err(error) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        return;
                    }
                }
            }
        }
    }
}
