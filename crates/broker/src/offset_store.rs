//! Committed offsets in an internal log, like Kafka's `__consumer_offsets`.
//!
//! Every commit appends one record per partition: key = (group, topic, partition), value =
//! (offset, leader epoch, metadata, commit time); a null value is a tombstone (DeleteGroups,
//! offset expiry). On open the whole log is replayed into memory, last write winning. A commit is
//! acknowledged only after the group-commit `sync`, so an acknowledged offset survives a crash.
//!
//! Compaction is a rewrite on open: when the log holds far more records than live offsets, the
//! live ones are written to a fresh log that replaces the old directory (crash-safe renames).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Buf, BufMut};
use parking_lot::Mutex;
use sluice_log::{
    decode_records, Durability, LogConfig, LogError, PartitionLog, Record, RecordBatchBuilder,
};

use crate::group_coordinator::{OffsetAndMetadata, TopicPartition};
use crate::{now_ms, BrokerError, GroupError};

/// Version of the binary key and value layouts below.
const RECORD_VERSION: u16 = 1;
/// Bytes of records per appended batch, well below any sane `batch_bytes_max`.
const BATCH_BYTES_TARGET: usize = 256 * 1024;
/// Bytes read per step while replaying.
const REPLAY_READ_BYTES: usize = 1 << 20;
/// Below this size the log is never rewritten: replaying it is cheap anyway.
const COMPACTION_BYTES_MIN: u64 = 16 << 20;

/// One cached offset with the log offset of the record that set it, so that commits whose
/// syncs finish out of order still leave the newest value in memory.
#[derive(Debug, Clone)]
struct CachedOffset {
    log_offset: i64,
    /// `None` after a tombstone (kept so a late, older commit cannot resurrect the key).
    value: Option<OffsetAndMetadata>,
}

type GroupOffsets = HashMap<TopicPartition, CachedOffset>;

pub(crate) struct OffsetStore {
    log: Arc<PartitionLog>,
    /// Whether `sync` must run before acknowledging (fsync=batch); other policies make the
    /// write visible on append and flush on their own schedule.
    sync_on_commit: bool,
    offsets: Mutex<HashMap<String, GroupOffsets>>,
}

impl OffsetStore {
    /// Opens (creating) the offsets log in `dir` and replays it.
    pub(crate) fn open(dir: &Path, log_config: LogConfig) -> Result<OffsetStore, BrokerError> {
        recover_interrupted_compaction(dir)?;
        // Retention must never delete committed offsets: expiry is done with tombstones.
        let config = LogConfig {
            retention_ms: -1,
            retention_bytes: -1,
            ..log_config
        };
        let sync_on_commit = config.durability == Durability::Batch;
        let mut log = PartitionLog::open(dir, config.clone())?;
        let (mut offsets, record_count) = replay(&log)?;
        let live_count: usize = offsets.values().map(HashMap::len).sum();
        if log.size_bytes() >= COMPACTION_BYTES_MIN && record_count > 2 * live_count as u64 {
            tracing::info!(
                record_count,
                live_count,
                "compacting the consumer offsets log"
            );
            drop(log);
            log = compact(dir, &config, &offsets)?;
            (offsets, _) = replay(&log)?;
        }
        tracing::info!(
            groups = offsets.len(),
            offsets = live_count,
            "loaded committed offsets"
        );
        Ok(OffsetStore {
            log: Arc::new(log),
            sync_on_commit,
            offsets: Mutex::new(offsets),
        })
    }

    /// Durably stores `offsets` for `group_id`; returns once they survive a crash.
    pub(crate) async fn commit(
        &self,
        group_id: &str,
        offsets: &[(TopicPartition, OffsetAndMetadata)],
    ) -> Result<(), GroupError> {
        let records = offsets
            .iter()
            .map(|(partition, offset)| {
                Ok((
                    encode_key(group_id, partition)?,
                    Some(encode_value(offset)?),
                ))
            })
            .collect::<Result<Vec<_>, GroupError>>()?;
        let log_offsets = self.append_durably(records).await?;
        let mut cache = self.offsets.lock();
        let group = cache.entry(group_id.to_string()).or_default();
        for ((partition, offset), log_offset) in offsets.iter().zip(log_offsets) {
            apply(group, partition.clone(), log_offset, Some(offset.clone()));
        }
        Ok(())
    }

    /// Durably removes the given committed offsets of `group_id` (tombstones).
    pub(crate) async fn delete(
        &self,
        group_id: &str,
        partitions: &[TopicPartition],
    ) -> Result<(), GroupError> {
        if partitions.is_empty() {
            return Ok(());
        }
        let records = partitions
            .iter()
            .map(|partition| Ok((encode_key(group_id, partition)?, None)))
            .collect::<Result<Vec<_>, GroupError>>()?;
        let log_offsets = self.append_durably(records).await?;
        let mut cache = self.offsets.lock();
        if let Some(group) = cache.get_mut(group_id) {
            for (partition, log_offset) in partitions.iter().zip(log_offsets) {
                apply(group, partition.clone(), log_offset, None);
            }
        }
        Ok(())
    }

    /// Durably removes every committed offset of `group_id`; returns how many there were.
    pub(crate) async fn delete_group(&self, group_id: &str) -> Result<usize, GroupError> {
        let partitions: Vec<TopicPartition> = self
            .group_offsets(group_id)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        self.delete(group_id, &partitions).await?;
        Ok(partitions.len())
    }

    pub(crate) fn fetch(
        &self,
        group_id: &str,
        partition: &TopicPartition,
    ) -> Option<OffsetAndMetadata> {
        self.offsets
            .lock()
            .get(group_id)?
            .get(partition)?
            .value
            .clone()
    }

    /// Every committed offset of `group_id`, sorted by topic and partition.
    pub(crate) fn group_offsets(&self, group_id: &str) -> Vec<(TopicPartition, OffsetAndMetadata)> {
        let cache = self.offsets.lock();
        let mut offsets: Vec<_> = cache
            .get(group_id)
            .map(|group| {
                group
                    .iter()
                    .filter_map(|(partition, cached)| {
                        Some((partition.clone(), cached.value.clone()?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        offsets.sort_by(|a, b| a.0.cmp(&b.0));
        offsets
    }

    pub(crate) fn has_offsets(&self, group_id: &str) -> bool {
        self.offsets
            .lock()
            .get(group_id)
            .is_some_and(|group| group.values().any(|cached| cached.value.is_some()))
    }

    /// Groups that have at least one committed offset.
    pub(crate) fn groups(&self) -> Vec<String> {
        self.offsets
            .lock()
            .iter()
            .filter(|(_, group)| group.values().any(|cached| cached.value.is_some()))
            .map(|(group_id, _)| group_id.clone())
            .collect()
    }

    /// Offsets committed before `commit_before_ms` by groups for which `is_expirable` is true.
    pub(crate) fn expired(
        &self,
        commit_before_ms: i64,
        is_expirable: impl Fn(&str) -> bool,
    ) -> Vec<(String, Vec<TopicPartition>)> {
        let cache = self.offsets.lock();
        cache
            .iter()
            .filter(|(group_id, _)| is_expirable(group_id))
            .filter_map(|(group_id, group)| {
                let partitions: Vec<TopicPartition> = group
                    .iter()
                    .filter(|(_, cached)| {
                        cached
                            .value
                            .as_ref()
                            .is_some_and(|v| v.commit_timestamp_ms < commit_before_ms)
                    })
                    .map(|(partition, _)| partition.clone())
                    .collect();
                (!partitions.is_empty()).then(|| (group_id.clone(), partitions))
            })
            .collect()
    }

    /// fsyncs the log (clean shutdown).
    pub(crate) fn flush(&self) -> Result<(), LogError> {
        self.log.flush()
    }

    /// Appends the records in as few batches as fit, waits for them to be durable and returns
    /// each record's log offset, in order.
    async fn append_durably(
        &self,
        records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<Vec<i64>, GroupError> {
        let now = now_ms();
        let mut log_offsets = Vec::with_capacity(records.len());
        let mut builder = RecordBatchBuilder::new();
        let mut builder_bytes = 0;
        let mut offset_end = 0;
        let count = records.len();
        for (index, (key, value)) in records.into_iter().enumerate() {
            builder_bytes += key.len() + value.as_ref().map_or(0, Vec::len) + 16;
            builder.push(Record {
                key: Some(key),
                value,
                timestamp: now,
                ..Record::default()
            });
            if builder_bytes >= BATCH_BYTES_TARGET || index + 1 == count {
                let mut batch = builder.build();
                let info = self.log.append(&mut batch, 0, now).map_err(storage_error)?;
                log_offsets.extend(info.base_offset..=info.last_offset);
                offset_end = info.last_offset + 1;
                builder = RecordBatchBuilder::new();
                builder_bytes = 0;
            }
        }
        if self.sync_on_commit && offset_end > 0 {
            let log = Arc::clone(&self.log);
            tokio::task::spawn_blocking(move || log.sync(offset_end))
                .await
                .map_err(|e| GroupError::Storage(format!("offsets sync task failed: {e}")))?
                .map_err(storage_error)?;
        }
        Ok(log_offsets)
    }
}

fn storage_error(error: LogError) -> GroupError {
    GroupError::Storage(format!("consumer offsets log: {error}"))
}

fn apply(
    group: &mut GroupOffsets,
    partition: TopicPartition,
    log_offset: i64,
    value: Option<OffsetAndMetadata>,
) {
    match group.get_mut(&partition) {
        Some(cached) if cached.log_offset > log_offset => {}
        Some(cached) => *cached = CachedOffset { log_offset, value },
        None => {
            group.insert(partition, CachedOffset { log_offset, value });
        }
    }
}

/// Reads the whole log into memory; returns the live offsets and how many records were read.
fn replay(log: &PartitionLog) -> Result<(HashMap<String, GroupOffsets>, u64), BrokerError> {
    let mut offsets: HashMap<String, GroupOffsets> = HashMap::new();
    let mut record_count = 0u64;
    let mut position = log.log_start_offset();
    let end = log.high_watermark();
    while position < end {
        let read = log.read(position, REPLAY_READ_BYTES)?;
        if read.records.is_empty() {
            break;
        }
        let mut next = position;
        for record in decode_records(&read.records)? {
            // A read starts at the batch containing `position`, which may begin before it.
            if record.offset < position {
                continue;
            }
            next = record.offset + 1;
            record_count += 1;
            let Some((group_id, partition)) = record.key.as_deref().and_then(decode_key) else {
                tracing::warn!(
                    offset = record.offset,
                    "skipping undecodable offsets-log key"
                );
                continue;
            };
            match record.value.as_deref() {
                None => {
                    if let Some(group) = offsets.get_mut(&group_id) {
                        group.remove(&partition);
                        if group.is_empty() {
                            offsets.remove(&group_id);
                        }
                    }
                }
                Some(bytes) => match decode_value(bytes) {
                    Some(value) => {
                        let cached = CachedOffset {
                            log_offset: record.offset,
                            value: Some(value),
                        };
                        offsets
                            .entry(group_id)
                            .or_default()
                            .insert(partition, cached);
                    }
                    None => tracing::warn!(
                        offset = record.offset,
                        "skipping undecodable offsets-log value"
                    ),
                },
            }
        }
        if next <= position {
            break; // no progress: never spin on a log that does not advance
        }
        position = next;
    }
    Ok((offsets, record_count))
}

fn compaction_dirs(dir: &Path) -> (PathBuf, PathBuf) {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (
        dir.with_file_name(format!("{name}.compacting")),
        dir.with_file_name(format!("{name}.old")),
    )
}

/// Finishes or rolls back a compaction that a crash interrupted. The steps are: write
/// `<dir>.compacting`, rename `<dir>` to `<dir>.old`, rename `.compacting` to `<dir>`, remove `.old`.
fn recover_interrupted_compaction(dir: &Path) -> Result<(), BrokerError> {
    let (compacting, old) = compaction_dirs(dir);
    let io = |context: &str, e: std::io::Error| BrokerError::Storage(format!("{context}: {e}"));
    if old.exists() {
        if dir.exists() {
            // Crashed after the swap: the new log is complete.
            fs::remove_dir_all(&old).map_err(|e| io("removing the old offsets log", e))?;
        } else {
            // Crashed between the two renames: the old log is still the truth.
            fs::rename(&old, dir).map_err(|e| io("restoring the offsets log", e))?;
        }
    }
    if compacting.exists() {
        fs::remove_dir_all(&compacting)
            .map_err(|e| io("removing a partial offsets compaction", e))?;
    }
    Ok(())
}

/// Writes the live offsets to a fresh log and swaps it in for the one in `dir`.
fn compact(
    dir: &Path,
    config: &LogConfig,
    offsets: &HashMap<String, GroupOffsets>,
) -> Result<PartitionLog, BrokerError> {
    let (compacting, old) = compaction_dirs(dir);
    let io = |context: &str, e: std::io::Error| BrokerError::Storage(format!("{context}: {e}"));
    {
        let fresh = PartitionLog::open(&compacting, config.clone())?;
        let now = now_ms();
        let mut builder = RecordBatchBuilder::new();
        let mut builder_bytes = 0;
        for (group_id, group) in offsets {
            for (partition, cached) in group {
                let Some(value) = &cached.value else { continue };
                let (Ok(key), Ok(value)) = (encode_key(group_id, partition), encode_value(value))
                else {
                    continue;
                };
                builder_bytes += key.len() + value.len() + 16;
                builder.push(Record {
                    key: Some(key),
                    value: Some(value),
                    timestamp: now,
                    ..Record::default()
                });
                if builder_bytes >= BATCH_BYTES_TARGET {
                    fresh.append(&mut builder.build(), 0, now)?;
                    builder = RecordBatchBuilder::new();
                    builder_bytes = 0;
                }
            }
        }
        if !builder.is_empty() {
            fresh.append(&mut builder.build(), 0, now)?;
        }
        fresh.flush()?;
    }
    fs::rename(dir, &old).map_err(|e| io("moving the old offsets log aside", e))?;
    fs::rename(&compacting, dir).map_err(|e| io("installing the compacted offsets log", e))?;
    if let Some(parent) = dir.parent() {
        fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("syncing the internal directory", e))?;
    }
    fs::remove_dir_all(&old).map_err(|e| io("removing the old offsets log", e))?;
    Ok(PartitionLog::open(dir, config.clone())?)
}

fn put_str(buf: &mut Vec<u8>, text: &str) -> Result<(), GroupError> {
    let len = u16::try_from(text.len()).map_err(|_| GroupError::InvalidGroupId)?;
    buf.put_u16(len);
    buf.put_slice(text.as_bytes());
    Ok(())
}

fn get_str(buf: &mut &[u8]) -> Option<String> {
    if buf.remaining() < 2 {
        return None;
    }
    let len = buf.get_u16() as usize;
    if buf.remaining() < len {
        return None;
    }
    let text = std::str::from_utf8(&buf[..len]).ok()?.to_string();
    buf.advance(len);
    Some(text)
}

/// Key: version u16, group, topic (u16 length + UTF-8 each), partition i32.
fn encode_key(group_id: &str, partition: &TopicPartition) -> Result<Vec<u8>, GroupError> {
    let mut buf = Vec::with_capacity(10 + group_id.len() + partition.topic.len());
    buf.put_u16(RECORD_VERSION);
    put_str(&mut buf, group_id)?;
    put_str(&mut buf, &partition.topic).map_err(|_| GroupError::UnknownTopicOrPartition)?;
    buf.put_i32(partition.partition);
    Ok(buf)
}

fn decode_key(mut buf: &[u8]) -> Option<(String, TopicPartition)> {
    if buf.remaining() < 2 || buf.get_u16() != RECORD_VERSION {
        return None;
    }
    let group_id = get_str(&mut buf)?;
    let topic = get_str(&mut buf)?;
    if buf.remaining() != 4 {
        return None;
    }
    Some((
        group_id,
        TopicPartition {
            topic,
            partition: buf.get_i32(),
        },
    ))
}

/// Value: version u16, offset i64, leader epoch i32, commit time i64, metadata (u16 length).
fn encode_value(offset: &OffsetAndMetadata) -> Result<Vec<u8>, GroupError> {
    let mut buf = Vec::with_capacity(24 + offset.metadata.len());
    buf.put_u16(RECORD_VERSION);
    buf.put_i64(offset.offset);
    buf.put_i32(offset.leader_epoch);
    buf.put_i64(offset.commit_timestamp_ms);
    put_str(&mut buf, &offset.metadata).map_err(|_| GroupError::OffsetMetadataTooLarge)?;
    Ok(buf)
}

fn decode_value(mut buf: &[u8]) -> Option<OffsetAndMetadata> {
    if buf.remaining() < 22 || buf.get_u16() != RECORD_VERSION {
        return None;
    }
    let offset = buf.get_i64();
    let leader_epoch = buf.get_i32();
    let commit_timestamp_ms = buf.get_i64();
    let metadata = get_str(&mut buf)?;
    Some(OffsetAndMetadata {
        offset,
        leader_epoch,
        metadata,
        commit_timestamp_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(topic: &str, partition: i32) -> TopicPartition {
        TopicPartition {
            topic: topic.to_string(),
            partition,
        }
    }

    fn committed(offset: i64) -> OffsetAndMetadata {
        OffsetAndMetadata {
            offset,
            leader_epoch: 3,
            metadata: "m".into(),
            commit_timestamp_ms: 1000,
        }
    }

    #[test]
    fn key_and_value_round_trip() {
        let key = encode_key("group", &tp("topic", 7)).unwrap();
        assert_eq!(
            decode_key(&key),
            Some(("group".to_string(), tp("topic", 7)))
        );
        let value = encode_value(&committed(42)).unwrap();
        assert_eq!(decode_value(&value), Some(committed(42)));
        assert_eq!(decode_key(&key[..key.len() - 1]), None);
        assert_eq!(decode_value(&value[..value.len() - 1]), None);
    }

    #[tokio::test]
    async fn committed_offsets_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("consumer_offsets");
        {
            let store = OffsetStore::open(&path, LogConfig::default()).unwrap();
            store
                .commit(
                    "g1",
                    &[(tp("a", 0), committed(5)), (tp("a", 1), committed(6))],
                )
                .await
                .unwrap();
            store
                .commit("g1", &[(tp("a", 0), committed(9))])
                .await
                .unwrap();
            store
                .commit("g2", &[(tp("b", 0), committed(1))])
                .await
                .unwrap();
            store.delete_group("g2").await.unwrap();
        }
        let store = OffsetStore::open(&path, LogConfig::default()).unwrap();
        assert_eq!(store.fetch("g1", &tp("a", 0)), Some(committed(9)));
        assert_eq!(store.fetch("g1", &tp("a", 1)), Some(committed(6)));
        assert_eq!(store.fetch("g2", &tp("b", 0)), None);
        assert!(!store.has_offsets("g2"));
        assert_eq!(store.groups(), vec!["g1".to_string()]);
    }

    #[tokio::test]
    async fn compaction_keeps_the_latest_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("consumer_offsets");
        let metadata = "x".repeat(4000);
        {
            let store = OffsetStore::open(&path, LogConfig::default()).unwrap();
            // ~20 MiB of overwrites of 8 keys: past the compaction threshold.
            for round in 0..650 {
                let offsets: Vec<_> = (0..8)
                    .map(|p| {
                        (
                            tp("t", p),
                            OffsetAndMetadata {
                                metadata: metadata.clone(),
                                ..committed(round)
                            },
                        )
                    })
                    .collect();
                store.commit("g", &offsets).await.unwrap();
            }
            assert!(store.log.size_bytes() >= COMPACTION_BYTES_MIN);
        }
        let store = OffsetStore::open(&path, LogConfig::default()).unwrap();
        assert!(store.log.size_bytes() < 1 << 20, "log was not compacted");
        for p in 0..8 {
            assert_eq!(store.fetch("g", &tp("t", p)).map(|o| o.offset), Some(649));
        }
        drop(store);
        let store = OffsetStore::open(&path, LogConfig::default()).unwrap();
        assert_eq!(store.group_offsets("g").len(), 8);
    }

    #[tokio::test]
    async fn interrupted_compaction_keeps_the_old_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("consumer_offsets");
        {
            let store = OffsetStore::open(&path, LogConfig::default()).unwrap();
            store
                .commit("g", &[(tp("t", 0), committed(11))])
                .await
                .unwrap();
        }
        // Crash between the renames: the old log moved aside, a partial new one present.
        let (compacting, old) = compaction_dirs(&path);
        fs::rename(&path, &old).unwrap();
        fs::create_dir_all(&compacting).unwrap();
        let store = OffsetStore::open(&path, LogConfig::default()).unwrap();
        assert_eq!(store.fetch("g", &tp("t", 0)), Some(committed(11)));
        assert!(!old.exists() && !compacting.exists());
    }
}
