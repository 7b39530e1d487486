//! The node's virtual hosts: `/` always, and any others created through the HTTP API. Each
//! has its own exchanges, queues, bindings and data directory; they share the node's resource
//! alarms. The list is kept in `amqp/vhosts.json`; another vhost's data is in
//! `vhosts/<dir>/amqp/`, under a directory name never reused, so a vhost deleted and created
//! again starts empty even while the old one's files are being removed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::{amqp_dir, NodeResources, VhostConfig, VhostError, VirtualHost, DEFAULT_VHOST};
use crate::durable_fs;

const REGISTRY_FILE: &str = "vhosts.json";
const VHOSTS_DIR: &str = "vhosts";
/// How long a deletion waits for the vhost's connections to close before removing its files.
const DELETE_CONNECTIONS_WAIT: Duration = Duration::from_secs(3);
/// AMQP names (short strings) are at most this long.
const NAME_BYTES_MAX: usize = 255;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RegistryFile {
    /// The vhosts besides `/`, by name.
    vhosts: Vec<RegisteredVhost>,
    /// The number in the next vhost's directory name.
    next_dir: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RegisteredVhost {
    name: String,
    dir: String,
}

/// Whether `create` made the vhost or found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New,
    Existing,
}

pub struct VirtualHosts {
    broker: Arc<crate::Broker>,
    /// The default vhost's settings; another vhost differs only in its data directory.
    config: VhostConfig,
    resources: Arc<NodeResources>,
    default: Arc<VirtualHost>,
    others: RwLock<BTreeMap<String, Arc<VirtualHost>>>,
    /// What is on disk; held while a vhost is created or deleted, so those are serialized.
    file: Mutex<RegistryFile>,
}

impl VirtualHosts {
    /// Opens `/` and every vhost in the registry, and removes the files of vhosts it no
    /// longer lists (deleted around a crash). Housekeeping is not started: see `start`.
    pub fn open(
        config: VhostConfig,
        broker: Arc<crate::Broker>,
    ) -> Result<Arc<VirtualHosts>, VhostError> {
        let resources = NodeResources::new(&config);
        let default = VirtualHost::open_named(
            DEFAULT_VHOST,
            config.clone(),
            Arc::clone(&broker),
            Arc::clone(&resources),
        )?;
        let storage = Arc::clone(&broker.config().storage);
        let path = amqp_dir(&config.data_dir).join(REGISTRY_FILE);
        let file: RegistryFile =
            durable_fs::read_json(storage.as_ref(), &path, "vhost list")?.unwrap_or_default();
        let mut others = BTreeMap::new();
        for registered in &file.vhosts {
            let vhost = VirtualHost::open_named(
                &registered.name,
                vhost_config(&config, &registered.dir),
                Arc::clone(&broker),
                Arc::clone(&resources),
            )?;
            tracing::info!(vhost = %registered.name, "opened virtual host");
            others.insert(registered.name.clone(), vhost);
        }
        let root = config.data_dir.join(VHOSTS_DIR);
        if let Ok(entries) = storage.read_dir(&root) {
            for entry in entries {
                let name = entry.to_string_lossy();
                if !file.vhosts.iter().any(|v| v.dir == name) {
                    let _ = durable_fs::remove_dir_all(storage.as_ref(), &root.join(&entry));
                }
            }
        }
        Ok(Arc::new(VirtualHosts {
            broker,
            config,
            resources,
            default,
            others: RwLock::new(others),
            file: Mutex::new(file),
        }))
    }

    /// Starts every vhost's housekeeping.
    pub fn start(&self) {
        for vhost in self.list() {
            vhost.start_housekeeping();
        }
    }

    /// The default vhost, `/`.
    pub fn default_vhost(&self) -> &Arc<VirtualHost> {
        &self.default
    }

    pub fn get(&self, name: &str) -> Option<Arc<VirtualHost>> {
        if name == DEFAULT_VHOST {
            return Some(Arc::clone(&self.default));
        }
        self.others.read().get(name).cloned()
    }

    /// Every vhost, `/` first, then by name.
    pub fn list(&self) -> Vec<Arc<VirtualHost>> {
        let mut all = vec![Arc::clone(&self.default)];
        all.extend(self.others.read().values().cloned());
        all
    }

    /// Creates the vhost `name` (nothing happens if it exists, as RabbitMQ's add_vhost).
    pub fn create(&self, name: &str) -> Result<(Arc<VirtualHost>, Created), VhostError> {
        check_name(name)?;
        let mut file = self.file.lock();
        if let Some(existing) = self.get(name) {
            return Ok((existing, Created::Existing));
        }
        let dir = format!("v{}", file.next_dir);
        let mut next = file.clone();
        next.next_dir += 1;
        next.vhosts.push(RegisteredVhost {
            name: name.to_string(),
            dir: dir.clone(),
        });
        let vhost = VirtualHost::open_named(
            name,
            vhost_config(&self.config, &dir),
            Arc::clone(&self.broker),
            Arc::clone(&self.resources),
        )?;
        self.save(&next)?;
        *file = next;
        self.others
            .write()
            .insert(name.to_string(), Arc::clone(&vhost));
        vhost.start_housekeeping();
        tracing::info!(vhost = %name, "created virtual host");
        Ok((vhost, Created::New))
    }

    /// Deletes the vhost `name` with everything in it: its connections are closed (320
    /// CONNECTION_FORCED), and its queues, messages and definitions removed from disk.
    pub async fn delete(&self, name: &str) -> Result<(), VhostError> {
        if name == DEFAULT_VHOST {
            return Err(VhostError::NotAllowed(
                "the default virtual host '/' cannot be deleted".into(),
            ));
        }
        let (vhost, dir) = {
            let mut file = self.file.lock();
            let Some(vhost) = self.others.read().get(name).cloned() else {
                return Err(VhostError::NotFound(format!("no vhost '{name}'")));
            };
            let mut next = file.clone();
            let Some(position) = next.vhosts.iter().position(|v| v.name == name) else {
                return Err(VhostError::NotFound(format!("no vhost '{name}'")));
            };
            let removed = next.vhosts.remove(position);
            // Unlisted first: a crash from here on leaves files that the next start removes.
            self.save(&next)?;
            *file = next;
            self.others.write().remove(name);
            (vhost, removed.dir)
        };
        vhost.mark_deleted();
        let deadline = tokio::time::Instant::now() + DELETE_CONNECTIONS_WAIT;
        while vhost.connection_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(vhost);
        let storage = Arc::clone(&self.broker.config().storage);
        let path = self.config.data_dir.join(VHOSTS_DIR).join(dir);
        let removed = tokio::task::spawn_blocking(move || remove_files(storage.as_ref(), &path))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        if let Err(error) = removed {
            // Unlisted already: the next start removes what is left.
            tracing::warn!(vhost = %name, %error, "could not remove a deleted vhost's files yet");
        }
        tracing::info!(vhost = %name, "deleted virtual host");
        Ok(())
    }

    /// Flushes every vhost's state for a clean stop.
    pub fn shutdown(&self) {
        for vhost in self.list() {
            vhost.shutdown();
        }
    }

    fn save(&self, file: &RegistryFile) -> Result<(), VhostError> {
        let json = serde_json::to_vec_pretty(file)
            .map_err(|e| VhostError::Internal(format!("encoding the vhost list: {e}")))?;
        let path = amqp_dir(&self.config.data_dir).join(REGISTRY_FILE);
        durable_fs::write_atomically(self.broker.config().storage.as_ref(), &path, &json)?;
        Ok(())
    }
}

fn vhost_config(default: &VhostConfig, dir: &str) -> VhostConfig {
    VhostConfig {
        data_dir: default.data_dir.join(VHOSTS_DIR).join(dir),
        ..default.clone()
    }
}

/// A few attempts: a queue of the deleted vhost may still be finishing a write.
fn remove_files(storage: &dyn sluice_log::Storage, path: &Path) -> std::io::Result<()> {
    let mut attempt = 0;
    loop {
        match durable_fs::remove_dir_all(storage, path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if attempt >= 4 => return Err(e),
            Err(_) => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// RabbitMQ accepts any name that is a short string; so do we, but for control characters,
/// which no client could show.
fn check_name(name: &str) -> Result<(), VhostError> {
    if name.is_empty() {
        return Err(VhostError::PreconditionFailed(
            "a vhost name cannot be empty".into(),
        ));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(VhostError::PreconditionFailed(format!(
            "a vhost name is at most {NAME_BYTES_MAX} bytes"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(VhostError::PreconditionFailed(
            "a vhost name cannot contain control characters".into(),
        ));
    }
    Ok(())
}
