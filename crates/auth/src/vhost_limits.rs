//! RabbitMQ's virtual host limits: `max-connections` and `max-queues` per vhost (what
//! `rabbitmqctl set_vhost_limits` sets), in `vhost_limits.json` in the data directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::persist::{read_json, write_json_atomically};
use crate::AuthError;

pub const VHOST_LIMITS_FILE: &str = "vhost_limits.json";
pub const MAX_CONNECTIONS: &str = "max-connections";
pub const MAX_QUEUES: &str = "max-queues";

#[derive(Debug, Default, Serialize, Deserialize)]
struct LimitsFile {
    /// vhost → limit name → value (a negative value is no limit, as RabbitMQ's -1).
    limits: BTreeMap<String, BTreeMap<String, i64>>,
}

#[derive(Debug)]
pub struct VhostLimits {
    path: Option<PathBuf>,
    limits: RwLock<BTreeMap<String, BTreeMap<String, i64>>>,
    write_lock: Mutex<()>,
}

impl VhostLimits {
    pub fn open(data_dir: &Path) -> Result<Arc<VhostLimits>, AuthError> {
        let path = data_dir.join(VHOST_LIMITS_FILE);
        let limits = read_json::<LimitsFile>(&path)?.unwrap_or_default().limits;
        Ok(Arc::new(VhostLimits {
            path: Some(path),
            limits: RwLock::new(limits),
            write_lock: Mutex::new(()),
        }))
    }

    pub fn in_memory() -> Arc<VhostLimits> {
        Arc::new(VhostLimits {
            path: None,
            limits: RwLock::new(BTreeMap::new()),
            write_lock: Mutex::new(()),
        })
    }

    /// The limit `name` of `vhost`, if one is set and not negative.
    pub fn limit(&self, vhost: &str, name: &str) -> Option<u64> {
        let value = *self.limits.read().get(vhost)?.get(name)?;
        u64::try_from(value).ok()
    }

    pub fn all(&self) -> BTreeMap<String, BTreeMap<String, i64>> {
        self.limits.read().clone()
    }

    /// Sets (Some) or clears (None) one limit.
    pub fn set(&self, vhost: &str, name: &str, value: Option<i64>) -> Result<(), AuthError> {
        if name != MAX_CONNECTIONS && name != MAX_QUEUES {
            return Err(AuthError::InvalidName(name.to_string()));
        }
        let _writer = self.write_lock.lock();
        let mut limits = self.limits.read().clone();
        match value {
            Some(value) => {
                limits
                    .entry(vhost.to_string())
                    .or_default()
                    .insert(name.to_string(), value);
            }
            None => {
                if let Some(of_vhost) = limits.get_mut(vhost) {
                    of_vhost.remove(name);
                    if of_vhost.is_empty() {
                        limits.remove(vhost);
                    }
                }
            }
        }
        if let Some(path) = &self.path {
            write_json_atomically(
                path,
                &LimitsFile {
                    limits: limits.clone(),
                },
            )?;
        }
        *self.limits.write() = limits;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_set_cleared_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let limits = VhostLimits::open(dir.path()).unwrap();
        assert_eq!(limits.limit("/", MAX_QUEUES), None);
        limits.set("/", MAX_QUEUES, Some(3)).unwrap();
        limits.set("/", MAX_CONNECTIONS, Some(-1)).unwrap();
        assert!(limits.set("/", "max-bogus", Some(1)).is_err());
        drop(limits);
        let limits = VhostLimits::open(dir.path()).unwrap();
        assert_eq!(limits.limit("/", MAX_QUEUES), Some(3));
        assert_eq!(
            limits.limit("/", MAX_CONNECTIONS),
            None,
            "negative: no limit"
        );
        limits.set("/", MAX_QUEUES, None).unwrap();
        assert_eq!(limits.limit("/", MAX_QUEUES), None);
    }
}
