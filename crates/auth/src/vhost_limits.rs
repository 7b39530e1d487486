//! RabbitMQ's virtual host limits: `max-connections` and `max-queues` per vhost (what
//! `rabbitmqctl set_vhost_limits` sets), in `vhost_limits.json` in the data directory.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::replication::{Document, DocumentKind, ReplicatedDocument};
use crate::AuthError;

pub const VHOST_LIMITS_FILE: &str = "vhost_limits.json";
pub const MAX_CONNECTIONS: &str = "max-connections";
pub const MAX_QUEUES: &str = "max-queues";

/// The document kept in `vhost_limits.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Limits {
    /// vhost → limit name → value (a negative value is no limit, as RabbitMQ's -1).
    limits: BTreeMap<String, BTreeMap<String, i64>>,
}

pub struct VhostLimits {
    document: Document<Limits>,
}

impl std::fmt::Debug for VhostLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostLimits")
            .field("limits", &self.document.get().limits)
            .finish()
    }
}

impl VhostLimits {
    pub fn open(data_dir: &Path) -> Result<Arc<VhostLimits>, AuthError> {
        let path = data_dir.join(VHOST_LIMITS_FILE);
        let document = Document::open(
            DocumentKind::VhostLimits,
            Some(path),
            Limits::default,
            false,
        )?;
        Ok(Arc::new(VhostLimits { document }))
    }

    pub fn in_memory() -> Arc<VhostLimits> {
        let document = Document::open(DocumentKind::VhostLimits, None, Limits::default, false)
            .unwrap_or_else(|_| unreachable!("a store in memory reads and writes no file"));
        Arc::new(VhostLimits { document })
    }

    /// The store as the cluster replicates it.
    pub fn replicated(&self) -> &dyn ReplicatedDocument {
        &self.document
    }

    /// The limit `name` of `vhost`, if one is set and not negative.
    pub fn limit(&self, vhost: &str, name: &str) -> Option<u64> {
        let value = *self.document.get().limits.get(vhost)?.get(name)?;
        u64::try_from(value).ok()
    }

    pub fn all(&self) -> BTreeMap<String, BTreeMap<String, i64>> {
        self.document.get().limits.clone()
    }

    /// Removes every limit of `vhost` (it was deleted).
    pub async fn forget_vhost(&self, vhost: &str) -> Result<(), AuthError> {
        if !self.document.get().limits.contains_key(vhost) {
            return Ok(());
        }
        self.document
            .change(|document: &mut Limits| {
                document.limits.remove(vhost);
                Ok::<_, AuthError>(())
            })
            .await
    }

    /// Sets (Some) or clears (None) one limit.
    pub async fn set(&self, vhost: &str, name: &str, value: Option<i64>) -> Result<(), AuthError> {
        if name != MAX_CONNECTIONS && name != MAX_QUEUES {
            return Err(AuthError::InvalidName(name.to_string()));
        }
        self.document
            .change(|document: &mut Limits| {
                match value {
                    Some(value) => {
                        document
                            .limits
                            .entry(vhost.to_string())
                            .or_default()
                            .insert(name.to_string(), value);
                    }
                    None => {
                        if let Some(of_vhost) = document.limits.get_mut(vhost) {
                            of_vhost.remove(name);
                            if of_vhost.is_empty() {
                                document.limits.remove(vhost);
                            }
                        }
                    }
                }
                Ok::<_, AuthError>(())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limits_are_set_cleared_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let limits = VhostLimits::open(dir.path()).unwrap();
        assert_eq!(limits.limit("/", MAX_QUEUES), None);
        limits.set("/", MAX_QUEUES, Some(3)).await.unwrap();
        limits.set("/", MAX_CONNECTIONS, Some(-1)).await.unwrap();
        assert!(limits.set("/", "max-bogus", Some(1)).await.is_err());
        drop(limits);
        let limits = VhostLimits::open(dir.path()).unwrap();
        assert_eq!(limits.limit("/", MAX_QUEUES), Some(3));
        assert_eq!(
            limits.limit("/", MAX_CONNECTIONS),
            None,
            "negative: no limit"
        );
        limits.set("/", MAX_QUEUES, None).await.unwrap();
        assert_eq!(limits.limit("/", MAX_QUEUES), None);
    }
}
