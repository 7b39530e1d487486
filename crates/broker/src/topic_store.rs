//! Durable topic metadata: `<data_dir>/topics/<name>/topic.json` beside the partition
//! directories `<data_dir>/topics/<name>/<partition>/`. Written atomically (temp file, fsync,
//! rename, fsync of the directory) so a crash leaves either the old or the new version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sluice_log::Storage;

use crate::{durable_fs, BrokerError};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopicRecord {
    pub name: String,
    pub id: uuid::Uuid,
    pub partition_count: i32,
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

const TOPIC_FILE: &str = "topic.json";

pub fn topics_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("topics")
}

pub fn topic_dir(data_dir: &Path, name: &str) -> PathBuf {
    topics_dir(data_dir).join(name)
}

pub fn partition_dir(data_dir: &Path, name: &str, partition: i32) -> PathBuf {
    topic_dir(data_dir, name).join(partition.to_string())
}

fn storage_error(path: &Path, error: impl std::fmt::Display) -> BrokerError {
    durable_fs::error(path, error)
}

pub fn save(
    storage: &dyn Storage,
    data_dir: &Path,
    record: &TopicRecord,
) -> Result<(), BrokerError> {
    let path = topic_dir(data_dir, &record.name).join(TOPIC_FILE);
    let json = serde_json::to_vec_pretty(record).map_err(|e| storage_error(&path, e))?;
    durable_fs::write_atomically(storage, &path, &json)
}

/// Every topic found on disk. A directory without a readable topic.json is skipped with a
/// warning (for example a topic whose creation crashed half-way).
pub fn load_all(storage: &dyn Storage, data_dir: &Path) -> Result<Vec<TopicRecord>, BrokerError> {
    let dir = topics_dir(data_dir);
    storage
        .create_dir_all_durable(&dir)
        .map_err(|e| storage_error(&dir, e))?;
    let mut records = Vec::new();
    for name in storage.read_dir(&dir).map_err(|e| storage_error(&dir, e))? {
        let path = dir.join(name).join(TOPIC_FILE);
        match durable_fs::read(storage, &path) {
            Ok(bytes) => match serde_json::from_slice::<TopicRecord>(&bytes) {
                Ok(record) => records.push(record),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "skipping unreadable topic metadata")
                }
            },
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "skipping directory without topic metadata")
            }
        }
    }
    records.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(records)
}

/// Removes a topic's directory: first renamed aside into `deleted/` (atomic, and durable once
/// both directories are fsynced, so a restart never brings the topic back), then deleted.
pub fn remove(storage: &dyn Storage, data_dir: &Path, name: &str) -> Result<(), BrokerError> {
    let dir = topic_dir(data_dir, name);
    let graveyard = data_dir.join("deleted");
    storage
        .create_dir_all_durable(&graveyard)
        .map_err(|e| storage_error(&graveyard, e))?;
    let target = graveyard.join(format!("{name}-{}", uuid::Uuid::new_v4()));
    durable_fs::rename(storage, &dir, &target).map_err(|e| storage_error(&dir, e))?;
    durable_fs::remove_dir_all(storage, &target).map_err(|e| storage_error(&target, e))?;
    Ok(())
}

/// Finishes deletions a crash interrupted.
pub fn clear_deleted(storage: &dyn Storage, data_dir: &Path) {
    let graveyard = data_dir.join("deleted");
    if durable_fs::exists(storage, &graveyard) {
        if let Err(error) = durable_fs::remove_dir_all(storage, &graveyard) {
            tracing::warn!(path = %graveyard.display(), %error, "could not clear deleted topics");
        }
    }
}
