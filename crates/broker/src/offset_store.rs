//! Committed offsets in an internal log, like Kafka's `__consumer_offsets`.
//!
//! Every commit appends one record per partition: key = (group, topic, partition), value =
//! (offset, leader epoch, metadata, commit time); a null value is a tombstone (DeleteGroups,
//! offset expiry). On open the whole log is replayed into memory, last write winning. A commit is
//! acknowledged only after the group-commit `sync`, so an acknowledged offset survives a crash.
//!
//! Compaction runs while serving (and on open): when dead records outnumber live offsets in a
//! big enough log, the live offsets are appended again at the head and the log start moves past
//! the old records, so whole old segments are deleted (the offsets log uses small segments for
//! that). Commits wait only while the live set is appended. Tombstones in memory are dropped
//! once no commit older than them can still land, so deleted groups give their memory back.
use std::collections::{BTreeMap, HashMap};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Buf, BufMut};
use parking_lot::Mutex;
use sluice_log::{
    Durability, LogConfig, LogError, PartitionLog, Record, RecordBatchBuilder, Storage,
};

use crate::group_coordinator::{OffsetAndMetadata, TopicPartition};
use crate::{durable_fs, now_ms, BrokerError, GroupError};

/// Version of the binary key and value layouts below.
const RECORD_VERSION: u16 = 1;
/// Bytes of records per appended batch, well below any sane `batch_bytes_max`.
const BATCH_BYTES_TARGET: usize = 256 * 1024;
/// Bytes read per step while replaying.
const REPLAY_READ_BYTES: usize = 1 << 20;
/// Below this size the log is never compacted: replaying it is cheap anyway.
const COMPACTION_BYTES_MIN: u64 = 16 << 20;
/// Segment size of the offsets log: compaction frees whole segments, so they stay small
/// (Kafka's `offsets.topic.segment.bytes` is 100 MiB for the same reason).
const SEGMENT_BYTES_MAX: u64 = 4 << 20;

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
    /// Held while appending: one commit's batches are contiguous, and its first offset is
    /// registered in `unapplied` before any later append's.
    append_gate: Mutex<()>,
    /// First log offset (with a count) of every append not yet applied to `offsets`. A
    /// tombstone is needed in memory only while an older append may still be applied.
    unapplied: Mutex<BTreeMap<i64, usize>>,
}

/// An append registered in `unapplied` until dropped (after it was applied, or abandoned).
struct Unapplied<'a> {
    store: &'a OffsetStore,
    offset_first: i64,
}

impl Drop for Unapplied<'_> {
    fn drop(&mut self) {
        let mut unapplied = self.store.unapplied.lock();
        if let Some(count) = unapplied.get_mut(&self.offset_first) {
            *count -= 1;
            if *count == 0 {
                unapplied.remove(&self.offset_first);
            }
        }
    }
}

impl OffsetStore {
    /// Opens (creating) the offsets log in `dir` and replays it.
    pub(crate) fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        log_config: LogConfig,
    ) -> Result<OffsetStore, BrokerError> {
        // Compaction used to rewrite the log into a fresh directory; finish an interrupted one.
        recover_interrupted_compaction(storage.as_ref(), dir)?;
        // Retention must never delete committed offsets: expiry is done with tombstones.
        let config = internal_log_config(log_config, SEGMENT_BYTES_MAX);
        let sync_on_commit = config.durability == Durability::Batch;
        let log = PartitionLog::open_with(storage, dir, config)?;
        let (offsets, _) = replay(&log)?;
        let store = OffsetStore {
            log: Arc::new(log),
            sync_on_commit,
            offsets: Mutex::new(offsets),
            append_gate: Mutex::new(()),
            unapplied: Mutex::new(BTreeMap::new()),
        };
        store.compact_if_needed()?;
        // Not inside the macro: the two locks would be taken at once (and only when logging).
        let group_count = store.offsets.lock().len();
        let live_count = store.live_count();
        tracing::info!(
            groups = group_count,
            offsets = live_count,
            "loaded committed offsets"
        );
        Ok(store)
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
        let (log_offsets, _unapplied) = self.append_durably(records).await?;
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
        let (log_offsets, _unapplied) = self.append_durably(records).await?;
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
    /// each record's log offset, in order, with the registration to drop once applied.
    async fn append_durably(
        &self,
        records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<(Vec<i64>, Option<Unapplied<'_>>), GroupError> {
        let now = now_ms();
        let mut batches = Vec::new();
        let mut builder = RecordBatchBuilder::new();
        let mut builder_bytes = 0;
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
                batches.push(builder.build());
                builder = RecordBatchBuilder::new();
                builder_bytes = 0;
            }
        }
        let mut log_offsets = Vec::with_capacity(count);
        let mut unapplied = None;
        {
            let _gate = self.append_gate.lock();
            for mut batch in batches {
                let info = self.log.append(&mut batch, 0, now).map_err(storage_error)?;
                if unapplied.is_none() {
                    *self.unapplied.lock().entry(info.base_offset).or_insert(0) += 1;
                    unapplied = Some(Unapplied {
                        store: self,
                        offset_first: info.base_offset,
                    });
                }
                log_offsets.extend(info.base_offset..=info.last_offset);
            }
        }
        let offset_end = log_offsets.last().map_or(0, |last| last + 1);
        if self.sync_on_commit && offset_end > 0 {
            let log = Arc::clone(&self.log);
            tokio::task::spawn_blocking(move || log.sync(offset_end))
                .await
                .map_err(|e| GroupError::Storage(format!("offsets sync task failed: {e}")))?
                .map_err(storage_error)?;
        }
        Ok((log_offsets, unapplied))
    }

    fn live_count(&self) -> usize {
        self.offsets
            .lock()
            .values()
            .flat_map(HashMap::values)
            .filter(|cached| cached.value.is_some())
            .count()
    }

    /// Compacts (the log cleaner, see `PartitionLog::clean`) when the log is past
    /// `COMPACTION_BYTES_MIN` and its rolled segments are dirty enough. Commits go on
    /// meanwhile. Blocking (reads and writes the log): run it off the async workers.
    /// Returns whether it compacted.
    pub(crate) fn compact_if_needed(&self) -> Result<bool, BrokerError> {
        if self.log.size_bytes() < COMPACTION_BYTES_MIN {
            return Ok(false);
        }
        let bytes_before = self.log.size_bytes();
        let Some(stats) = self.log.clean(now_ms(), self.log.high_watermark())? else {
            return Ok(false);
        };
        tracing::info!(
            bytes_before,
            bytes = self.log.size_bytes(),
            records_removed = stats.records_removed,
            "compacted the consumer offsets log"
        );
        Ok(stats.segments > 0)
    }

    /// Drops tombstones that no unapplied append is older than, and groups left without
    /// entries: deleted groups and expired offsets give their memory back. Returns how many.
    pub(crate) fn prune_tombstones(&self) -> usize {
        let oldest_unapplied = self
            .unapplied
            .lock()
            .keys()
            .next()
            .copied()
            .unwrap_or(i64::MAX);
        let mut pruned = 0;
        self.offsets.lock().retain(|_, group| {
            group.retain(|_, cached| {
                let keep = cached.value.is_some() || cached.log_offset >= oldest_unapplied;
                pruned += usize::from(!keep);
                keep
            });
            !group.is_empty()
        });
        pruned
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
/// The config of an internal log (offsets, transaction state): keyed records compacted by
/// the log cleaner and never deleted by retention (entries are superseded or tombstoned
/// instead; a tombstone goes with the first pass over it, as nothing reads these logs but
/// their own replay), segments of at most `segment_bytes_max` so compaction frees space
/// soon, no key index (replayed whole on open, never queried by key).
pub(crate) fn internal_log_config(log_config: LogConfig, segment_bytes_max: u64) -> LogConfig {
    LogConfig {
        retention_ms: -1,
        retention_bytes: -1,
        segment_bytes_max: log_config.segment_bytes_max.min(segment_bytes_max),
        key_index: false,
        compact: true,
        delete_retention_ms: 0,
        min_cleanable_dirty_ratio: 0.5,
        min_compaction_lag_ms: 0,
        max_compaction_lag_ms: i64::MAX,
        ..log_config
    }
}

fn replay(log: &PartitionLog) -> Result<(HashMap<String, GroupOffsets>, u64), BrokerError> {
    let mut offsets = HashMap::new();
    let (_, record_count) = replay_range(log, log.log_start_offset(), &mut offsets)?;
    Ok((offsets, record_count))
}

/// Applies the records from `from` to the high watermark onto `offsets`; returns the offset
/// it stopped at and how many records it read.
fn replay_range(
    log: &PartitionLog,
    from: i64,
    offsets: &mut HashMap<String, GroupOffsets>,
) -> Result<(i64, u64), BrokerError> {
    let mut record_count = 0u64;
    let position = log.for_each_record(from, REPLAY_READ_BYTES, |record| {
        record_count += 1;
        let Some((group_id, partition)) = record.key.as_deref().and_then(decode_key) else {
            tracing::warn!(
                offset = record.offset,
                "skipping undecodable offsets-log key"
            );
            return;
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
    })?;
    Ok((position, record_count))
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
/// Each step's directory change is fsynced, so a second crash does not undo it.
fn recover_interrupted_compaction(storage: &dyn Storage, dir: &Path) -> Result<(), BrokerError> {
    let (compacting, old) = compaction_dirs(dir);
    let io = |context: &str, e: std::io::Error| BrokerError::storage_io(format!("{context}: {e}"));
    if durable_fs::exists(storage, &old) {
        if durable_fs::exists(storage, dir) {
            // Crashed after the swap: the new log is complete.
            durable_fs::remove_dir_all(storage, &old)
                .map_err(|e| io("removing the old offsets log", e))?;
        } else {
            // Crashed between the two renames: the old log is still the truth.
            durable_fs::rename(storage, &old, dir)
                .map_err(|e| io("restoring the offsets log", e))?;
        }
    }
    if durable_fs::exists(storage, &compacting) {
        durable_fs::remove_dir_all(storage, &compacting)
            .map_err(|e| io("removing a partial offsets compaction", e))?;
    }
    Ok(())
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

    fn real_disk() -> Arc<dyn Storage> {
        Arc::new(sluice_log::RealDisk)
    }

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
            let store = OffsetStore::open(real_disk(), &path, LogConfig::default()).unwrap();
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
        let store = OffsetStore::open(real_disk(), &path, LogConfig::default()).unwrap();
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
            let store = OffsetStore::open(real_disk(), &path, LogConfig::default()).unwrap();
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
        let store = OffsetStore::open(real_disk(), &path, LogConfig::default()).unwrap();
        // What is left: at most the segment the live copies start in, and the copies.
        assert!(
            store.log.size_bytes() < SEGMENT_BYTES_MAX + (1 << 20),
            "log was not compacted: {} bytes",
            store.log.size_bytes()
        );
        for p in 0..8 {
            assert_eq!(store.fetch("g", &tp("t", p)).map(|o| o.offset), Some(649));
        }
        drop(store);
        let store = OffsetStore::open(real_disk(), &path, LogConfig::default()).unwrap();
        assert_eq!(store.group_offsets("g").len(), 8);
    }

    #[tokio::test]
    async fn interrupted_compaction_keeps_the_old_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("consumer_offsets");
        {
            let store = OffsetStore::open(real_disk(), &path, LogConfig::default()).unwrap();
            store
                .commit("g", &[(tp("t", 0), committed(11))])
                .await
                .unwrap();
        }
        // Crash between the renames: the old log moved aside, a partial new one present.
        let (compacting, old) = compaction_dirs(&path);
        std::fs::rename(&path, &old).unwrap();
        std::fs::create_dir_all(&compacting).unwrap();
        let store = OffsetStore::open(real_disk(), &path, LogConfig::default()).unwrap();
        assert_eq!(store.fetch("g", &tp("t", 0)), Some(committed(11)));
        assert!(!old.exists() && !compacting.exists());
    }

    /// Overwrites of 8 keys with 4 KB of metadata each: `rounds` x 32 KB of log.
    async fn overwrite(store: &OffsetStore, group_id: &str, rounds: i64) {
        let metadata = "x".repeat(4000);
        for round in 0..rounds {
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
            store.commit(group_id, &offsets).await.unwrap();
        }
    }

    /// Compaction while commits keep arriving: the log shrinks, and every acknowledged offset
    /// (the live ones, and those committed during the compaction) survives it and a reopen,
    /// while a deleted group stays deleted. Before, the log only shrank on open.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_while_serving_keeps_every_acknowledged_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("consumer_offsets");
        let store = Arc::new(OffsetStore::open(real_disk(), &path, LogConfig::default()).unwrap());
        store
            .commit("deleted", &[(tp("d", 0), committed(1))])
            .await
            .unwrap();
        store.delete_group("deleted").await.unwrap();
        overwrite(&store, "g", 650).await;
        let size_before = store.log.size_bytes();
        assert!(size_before >= COMPACTION_BYTES_MIN);

        let committer = {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..200 {
                    store
                        .commit("live", &[(tp("l", i % 4), committed(i as i64))])
                        .await
                        .unwrap();
                }
            })
        };
        let compactor = Arc::clone(&store);
        let compacted = tokio::task::spawn_blocking(move || compactor.compact_if_needed())
            .await
            .unwrap()
            .unwrap();
        committer.await.unwrap();
        assert!(compacted);
        assert!(
            store.log.size_bytes() < SEGMENT_BYTES_MAX + (2 << 20),
            "{} bytes left of {size_before}",
            store.log.size_bytes()
        );
        // Nothing is left to compact.
        assert!(!store.compact_if_needed().unwrap());

        let check = |store: &OffsetStore| {
            for p in 0..8 {
                assert_eq!(store.fetch("g", &tp("t", p)).map(|o| o.offset), Some(649));
            }
            for p in 0..4 {
                assert_eq!(
                    store.fetch("live", &tp("l", p)).map(|o| o.offset),
                    Some(196 + p as i64)
                );
            }
            assert_eq!(store.fetch("deleted", &tp("d", 0)), None);
        };
        check(&store);
        drop(store);
        let store = OffsetStore::open(real_disk(), &path, LogConfig::default()).unwrap();
        check(&store);
        let mut groups = store.groups();
        groups.sort();
        assert_eq!(groups, vec!["g".to_string(), "live".to_string()]);
    }

    /// A deleted group's tombstones leave memory once no older commit can still land (before,
    /// every group ever deleted kept an entry per partition for the broker's life).
    #[tokio::test]
    async fn deleted_groups_free_their_memory() {
        let dir = tempfile::tempdir().unwrap();
        let store = OffsetStore::open(
            real_disk(),
            &dir.path().join("consumer_offsets"),
            LogConfig::default(),
        )
        .unwrap();
        for group in 0..100 {
            let group_id = format!("g{group}");
            store
                .commit(
                    &group_id,
                    &[(tp("t", 0), committed(1)), (tp("t", 1), committed(2))],
                )
                .await
                .unwrap();
            store.delete_group(&group_id).await.unwrap();
        }
        store
            .commit("kept", &[(tp("t", 0), committed(3))])
            .await
            .unwrap();
        assert_eq!(store.offsets.lock().len(), 101);
        assert_eq!(store.prune_tombstones(), 200);
        assert_eq!(store.offsets.lock().len(), 1);
        assert_eq!(store.fetch("kept", &tp("t", 0)), Some(committed(3)));
    }

    /// A tombstone stays while an older commit is appended but not yet applied: that commit
    /// must not bring the deleted offset back into memory when it lands.
    #[test]
    fn a_tombstone_outlives_older_unapplied_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = OffsetStore::open(
            real_disk(),
            &dir.path().join("consumer_offsets"),
            LogConfig::default(),
        )
        .unwrap();
        let mut cache = HashMap::new();
        apply(&mut cache, tp("t", 0), 10, None);
        store.offsets.lock().insert("g".into(), cache);
        let older = Unapplied {
            store: &store,
            offset_first: 9,
        };
        *store.unapplied.lock().entry(9).or_insert(0) += 1;
        assert_eq!(store.prune_tombstones(), 0);
        drop(older);
        assert_eq!(store.prune_tombstones(), 1);
    }
}
