//! The durable part of the topology (exchanges, queues and bindings that survive a restart),
//! saved as one JSON file replaced atomically on every change. Declares are rare next to
//! publishes, so rewriting the whole file keeps recovery trivial.

use std::path::Path;

use amq_protocol_types::FieldTable;
use serde::{Deserialize, Serialize};
use sluice_log::Storage;

use super::exchange::{Binding, Exchange};
use super::VhostError;
use crate::durable_fs;

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
    pub fn load(storage: &dyn Storage, amqp_dir: &Path) -> Result<Definitions, VhostError> {
        let path = amqp_dir.join(DEFINITIONS_FILE);
        Ok(durable_fs::read_json(storage, &path, "definitions document")?.unwrap_or_default())
    }

    /// Replaces the file atomically and durably (the rename is fsynced in its directory).
    pub fn save(&self, storage: &dyn Storage, amqp_dir: &Path) -> Result<(), VhostError> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| VhostError::Internal(format!("definitions: {e}")))?;
        durable_fs::write_atomically(storage, &amqp_dir.join(DEFINITIONS_FILE), &json)?;
        Ok(())
    }
}
