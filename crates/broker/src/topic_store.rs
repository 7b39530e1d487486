//! Durable topic metadata: `<data_dir>/topics/<name>/topic.json` beside the partition
//! directories `<data_dir>/topics/<name>/<partition>/`. Written atomically (temp file, fsync,
//! rename, fsync of the directory) so a crash leaves either the old or the new version.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::BrokerError;

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
    BrokerError::Storage(format!("{}: {error}", path.display()))
}

/// Writes `contents` to `path` atomically and durably.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), BrokerError> {
    let dir = path
        .parent()
        .ok_or_else(|| storage_error(path, "no parent directory"))?;
    fs::create_dir_all(dir).map_err(|e| storage_error(dir, e))?;
    let temp = path.with_extension("tmp");
    let mut file = fs::File::create(&temp).map_err(|e| storage_error(&temp, e))?;
    file.write_all(contents)
        .map_err(|e| storage_error(&temp, e))?;
    file.sync_all().map_err(|e| storage_error(&temp, e))?;
    fs::rename(&temp, path).map_err(|e| storage_error(path, e))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| storage_error(dir, e))?;
    Ok(())
}

pub fn save(data_dir: &Path, record: &TopicRecord) -> Result<(), BrokerError> {
    let path = topic_dir(data_dir, &record.name).join(TOPIC_FILE);
    let json = serde_json::to_vec_pretty(record).map_err(|e| storage_error(&path, e))?;
    write_atomically(&path, &json)
}

/// Every topic found on disk. A directory without a readable topic.json is skipped with a
/// warning (for example a topic whose creation crashed half-way).
pub fn load_all(data_dir: &Path) -> Result<Vec<TopicRecord>, BrokerError> {
    let dir = topics_dir(data_dir);
    fs::create_dir_all(&dir).map_err(|e| storage_error(&dir, e))?;
    let mut records = Vec::new();
    for entry in fs::read_dir(&dir).map_err(|e| storage_error(&dir, e))? {
        let entry = entry.map_err(|e| storage_error(&dir, e))?;
        let path = entry.path().join(TOPIC_FILE);
        match fs::read(&path) {
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

/// Removes a topic's directory: first renamed aside (atomic), then deleted.
pub fn remove(data_dir: &Path, name: &str) -> Result<(), BrokerError> {
    let dir = topic_dir(data_dir, name);
    let graveyard = data_dir.join("deleted");
    fs::create_dir_all(&graveyard).map_err(|e| storage_error(&graveyard, e))?;
    let target = graveyard.join(format!("{name}-{}", uuid::Uuid::new_v4()));
    fs::rename(&dir, &target).map_err(|e| storage_error(&dir, e))?;
    fs::remove_dir_all(&target).map_err(|e| storage_error(&target, e))?;
    Ok(())
}

/// Finishes deletions a crash interrupted.
pub fn clear_deleted(data_dir: &Path) {
    let graveyard = data_dir.join("deleted");
    if graveyard.exists() {
        if let Err(error) = fs::remove_dir_all(&graveyard) {
            tracing::warn!(path = %graveyard.display(), %error, "could not clear deleted topics");
        }
    }
}
