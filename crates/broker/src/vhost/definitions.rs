//! The durable part of the topology (exchanges, queues and bindings that survive a restart),
//! saved as one JSON file replaced atomically on every change. Declares are rare next to
//! publishes, so rewriting the whole file keeps recovery trivial.

use std::path::Path;

use amq_protocol_types::FieldTable;
use serde::{Deserialize, Serialize};

use super::exchange::{Binding, Exchange};
use super::VhostError;
use crate::topic_store::write_atomically;

const DEFINITIONS_FILE: &str = "definitions.json";

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Definitions {
    pub exchanges: Vec<Exchange>,
    pub queues: Vec<QueueDefinition>,
    /// Stream queues (Kafka topics declared over AMQP).
    #[serde(default)]
    pub streams: Vec<String>,
    pub bindings: Vec<Binding>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct QueueDefinition {
    pub name: String,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    /// The queue's store directory under `amqp/queues/`.
    pub dir: String,
}

impl Definitions {
    pub fn load(amqp_dir: &Path) -> Result<Definitions, VhostError> {
        let path = amqp_dir.join(DEFINITIONS_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| VhostError::Storage(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Definitions::default()),
            Err(e) => Err(VhostError::Storage(format!("{}: {e}", path.display()))),
        }
    }

    pub fn save(&self, amqp_dir: &Path) -> Result<(), VhostError> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| VhostError::Storage(format!("definitions: {e}")))?;
        write_atomically(&amqp_dir.join(DEFINITIONS_FILE), &json)?;
        Ok(())
    }
}
