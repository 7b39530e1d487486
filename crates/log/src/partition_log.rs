//! The partition log (Kafka's UnifiedLog): segments, offsets, the high watermark and group commit.
//!
//! Locking, outermost first:
//! - `cleaner_lock` serialises the changes to rolled segments: compaction (which rewrites
//!   them for seconds without blocking appends), retention and truncation.
//! - `sync_lock` serialises fsyncs. A caller that finds its offsets already durable returns at
//!   once, so one fdatasync covers every append that landed before it started (group commit).
//! - `append_lock` serialises appends, rolls, truncation and retention. It is held for the one
//!   positional write of an append, never during the group-commit fdatasync.
//! - `segments` (RwLock) guards the segment list; readers hold it only to snapshot handles.
//!
//! Readers do positional I/O on shared file handles without any lock, bounded by the high
//! watermark and sizes they loaded (which only grow, except under truncation).
//!
//! A failed write, fsync, roll or directory change takes the log offline for good ("fsyncgate": after a failed
//! fsync Linux may drop the dirty pages and report success next time, so a later successful
//! sync proves nothing about earlier bytes). Offline, every append, sync and other change fails
//! with `LogError::Offline`, and the durable offset and high watermark never move again; reads
//! still serve what was durable before. Reopening the log (a restart) recovers it from what is
//! really on disk.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::{Mutex, RwLock};

use crate::batch::verify_crc;
use crate::batch::{
    assign_base_offset, decode_batch_records, validate_batches_with_limit, BATCH_HEADER_BYTES,
    BATCH_LENGTH_MIN,
};
use crate::cleaner::{clean_segment, CleanStats, CleanedSegment, OffsetMap, ProducerScan};
use crate::key_index::KeyIndex;
use crate::key_index::{batch_keys, BatchKeys, RecordLookup};
use crate::key_index_merge::KeyIndexMerges;
use crate::recovery::{
    load_key_index, read_log_start_checkpoint, recover, remove_clean_shutdown_marker, sync_dir,
    write_clean_shutdown_marker, write_log_start_checkpoint,
};
use crate::segment::{io_error, scan_file, BatchReadError, BatchReader, Segment, SegmentIndexes};
use crate::storage::{RealDisk, Storage};
use crate::Record;
use crate::{BatchHeader, Durability, LogConfig, LogError};

/// What an append stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    pub record_count: i64,
    /// Largest record timestamp in the appended batches (or `now_ms` for LogAppendTime).
    pub max_timestamp: i64,
    /// `now_ms` as passed to append (Kafka's log_append_time).
    pub log_append_time_ms: i64,
    /// Headers of the appended batches, with their assigned base offsets.
    pub batches: Vec<BatchHeader>,
}

/// The bytes of one append: batches the log stamps, or batches that carry their offsets.
enum AppendBytes<'a> {
    /// One buffer whose batches get their base offsets and leader epoch written in place.
    Stamp(&'a mut [u8]),
    /// Batches already stamped as the log would stamp them, in pieces written in order.
    Stamped(&'a [&'a [u8]]),
}

impl AppendBytes<'_> {
    fn chunks(&self) -> Vec<&[u8]> {
        match self {
            AppendBytes::Stamp(batches) => vec![&**batches],
            AppendBytes::Stamped(chunks) => chunks.to_vec(),
        }
    }
}

/// What a read returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadResult {
    /// Whole batches, starting with the batch that contains the requested offset. Never extends
    /// past the high watermark. Holds at least one whole batch when any is readable, even if that
    /// batch is bigger than `bytes_max` (as Kafka does, so a consumer can always make progress).
    pub records: bytes::Bytes,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
}

/// Who moves the high watermark (the offset readers never pass).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HighWatermarkPolicy {
    /// The log itself: on append (`fsync = never | interval`) or once synced (`fsync = batch`).
    #[default]
    Durable,
    /// Only [`PartitionLog::set_high_watermark`]: a replicated partition, whose high watermark
    /// is the consensus commit point (data durable here is not yet committed). Opens at the log
    /// start: nothing is visible until the owner says so.
    External,
}

/// One partition's log: a directory of segments named by base offset
/// (`00000000000000000000.log`, `.index`, `.timeindex`). Thread-safe: appends are serialised
/// internally, reads run concurrently with appends, `sync` is a group commit.
pub struct PartitionLog {
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    config: RwLock<LogConfig>,
    /// Sorted by base offset; the last is the active segment. Changed only under `append_lock`.
    segments: RwLock<Vec<Arc<Segment>>>,
    append_lock: Mutex<AppendState>,
    sync_lock: Mutex<()>,
    log_start_offset: AtomicI64,
    log_end_offset: AtomicI64,
    high_watermark: AtomicI64,
    /// Everything below this has been fdatasynced.
    durable_offset: AtomicI64,
    sync_count: AtomicU64,
    /// `sluice_log_fsync_duration_seconds`, registered once at open: the group commit's
    /// fdatasync is timed without a registry lookup.
    fsync_seconds: metrics::Histogram,
    /// Set once, by the first failed write, fsync or roll: why the log is offline.
    offline_cause: OnceLock<String>,
    high_watermark_policy: HighWatermarkPolicy,
    /// Retention keeps every segment holding offsets at or past this (a consensus log still
    /// needs them). `i64::MAX`: no floor.
    retention_floor: AtomicI64,

    /// Rolled segments' key indexes being merged off the append path (`key_index_merge`).
    key_index_merges: Arc<KeyIndexMerges>,
    /// See the locking order in the module documentation.
    cleaner_lock: Mutex<()>,
    /// Compaction has cleaned the log below this (a segment boundary). Not persisted: after a
    /// restart the first pass cleans everything once more.
    first_dirty_offset: AtomicI64,
}

#[derive(Default)]
struct AppendState {
    /// Bumped by `truncate_to`, so a group commit that raced a truncation does not mark
    /// re-appended (unsynced) offsets durable.
    truncations: u64,
    /// `flush` left the clean shutdown marker; the next change removes it.
    clean_shutdown_marker: bool,
}

/// What `PartitionLog::find_records` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FoundRecords {
    /// Matching records below the high watermark and at or above the log start, in offset
    /// order, at most the limit asked for.
    pub records: Vec<Record>,
    /// More matches exist than the limit allowed.
    pub truncated: bool,
    /// Segments searched without a usable key index (indexing turned on while they held
    /// records; rebuilt at the next open), whose records may be missing from the answer.
    pub segments_unindexed: usize,
    /// Compressed batches in the active segment that did not decompress (garbage, or past
    /// the bound of `compression`), whose records are not indexed (see `key_index`).
    pub batches_unindexed: u64,
}

/// How a read of one segment ended.
enum SegmentReadEnd {
    /// Reached the segment's end with budget left: continue in the next segment.
    Continue,
    Done,
}

/// What bounds a read.
#[derive(Clone, Copy)]
enum ReadLimit {
    /// Consumers: never past the high watermark.
    HighWatermark,
    /// Replication: everything written.
    LogEnd,
    /// `read_committed` consumers: never past this offset (the last stable offset), nor the
    /// high watermark.
    Below(i64),
}

/// Histogram of the group commit's fdatasync (one per `sync` round, shared by its callers).
pub const FSYNC_SECONDS_METRIC: &str = "sluice_log_fsync_duration_seconds";

/// Segments a read looks at beyond the first, at most: the rest can be fetched next time.
const READ_SEGMENTS_MAX: usize = 32;

impl PartitionLog {
    /// Opens (creating if missing) the partition directory and recovers it: validates the tail
    /// of the active segment, truncates a torn or corrupt batch, rebuilds missing/bad indexes.
    pub fn open(dir: &Path, config: LogConfig) -> Result<PartitionLog, LogError> {
        PartitionLog::open_with(Arc::new(RealDisk), dir, config)
    }

    /// [`PartitionLog::open`] on the given storage (the simulated disk in tests).
    pub fn open_with(
        storage: Arc<dyn Storage>,
        dir: &Path,
        config: LogConfig,
    ) -> Result<PartitionLog, LogError> {
        PartitionLog::open_with_policy(storage, dir, config, HighWatermarkPolicy::Durable)
    }

    /// [`PartitionLog::open_with`] choosing who moves the high watermark.
    pub fn open_with_policy(
        storage: Arc<dyn Storage>,
        dir: &Path,
        config: LogConfig,
        high_watermark_policy: HighWatermarkPolicy,
    ) -> Result<PartitionLog, LogError> {
        validate_config(&config)?;
        let segments: Vec<Arc<Segment>> = recover(&storage, dir, &config)?
            .into_iter()
            .map(Arc::new)
            .collect();
        let first_base_offset = segments.first().map_or(0, |s| s.base_offset);
        let log_end_offset = segments.last().map_or(0, |s| s.offset_end());
        // The checkpoint may lag retention (segments deleted since) or lead a tail that
        // recovery cut: clamp it to what the segments hold.
        let log_start_offset = read_log_start_checkpoint(storage.as_ref(), dir)
            .map_or(first_base_offset, |c| {
                c.min(log_end_offset).max(first_base_offset)
            });
        tracing::debug!(dir = %dir.display(), segments = segments.len(), log_start_offset, log_end_offset, "opened partition log");
        Ok(PartitionLog {
            dir: dir.to_path_buf(),
            storage,
            config: RwLock::new(config),
            segments: RwLock::new(segments),
            append_lock: Mutex::new(AppendState::default()),
            sync_lock: Mutex::new(()),
            log_start_offset: AtomicI64::new(log_start_offset),
            log_end_offset: AtomicI64::new(log_end_offset),
            // Whatever survived on disk is durable; whether it is committed is the owner's to
            // say under the external policy.
            high_watermark: AtomicI64::new(match high_watermark_policy {
                HighWatermarkPolicy::Durable => log_end_offset,
                HighWatermarkPolicy::External => log_start_offset,
            }),
            durable_offset: AtomicI64::new(log_end_offset),
            sync_count: AtomicU64::new(0),
            fsync_seconds: metrics::histogram!(FSYNC_SECONDS_METRIC),
            offline_cause: OnceLock::new(),
            high_watermark_policy,
            retention_floor: AtomicI64::new(i64::MAX),

            key_index_merges: Arc::default(),
            cleaner_lock: Mutex::new(()),
            first_dirty_offset: AtomicI64::new(0),
        })
    }

    /// Whether a storage failure took the log offline (see the module documentation).
    pub fn is_offline(&self) -> bool {
        self.offline_cause.get().is_some()
    }

    fn check_online(&self) -> Result<(), LogError> {
        match self.offline_cause.get() {
            None => Ok(()),
            Some(cause) => Err(LogError::Offline {
                dir: self.dir.clone(),
                cause: cause.clone(),
            }),
        }
    }

    /// Takes the log offline after `error` from a write, fsync or roll, and returns it.
    fn go_offline(&self, error: LogError) -> LogError {
        if self.offline_cause.set(error.to_string()).is_ok() {
            tracing::error!(
                dir = %self.dir.display(),
                %error,
                durable_offset = self.durable_offset(),
                "storage failure: the partition log is offline and refuses writes until it is reopened (restart the broker once the disk is fixed)"
            );
        }
        error
    }

    /// Before the first change after `flush`: the directory no longer matches a clean shutdown.
    fn clear_clean_shutdown_marker(&self, state: &mut AppendState) -> Result<(), LogError> {
        if state.clean_shutdown_marker {
            remove_clean_shutdown_marker(self.storage.as_ref(), &self.dir)?;
            state.clean_shutdown_marker = false;
        }
        Ok(())
    }

    /// Validates (CRC, sizes), assigns offsets (rewrites baseOffset, sets partitionLeaderEpoch)
    /// and writes the batches (one write). Rolls the segment first when size/age demand it.
    /// With `Durability::Batch` the data is not yet durable nor visible to readers: call `sync`.
    pub fn append(
        &self,
        batches: &mut [u8],
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        self.append_batches(batches, leader_epoch, now_ms, true)
    }

    /// [`append`](Self::append) for batches whose CRCs the caller checked
    /// ([`validate_batches`](crate::validate_batches)) and has not changed since, or built
    /// itself: sizes and shapes are still checked, the CRC is not computed a second time (at
    /// 1 KiB per record it is a few percent of a produce).
    pub fn append_verified(
        &self,
        batches: &mut [u8],
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        self.append_batches(batches, leader_epoch, now_ms, false)
    }

    /// Appends batches that already carry the offsets and leader epoch the log would give
    /// them (a follower's copy of what its leader stored), written as they are, `chunks` in
    /// order, without copying them into one buffer first. `None`, with nothing written, when
    /// they do not start at the log end or do not carry `leader_epoch`: the caller appends
    /// them with [`append`](Self::append), which stamps them. `check_crc` as `append` (true)
    /// or `append_verified` (false).
    pub fn append_stamped(
        &self,
        chunks: &[&[u8]],
        leader_epoch: i32,
        now_ms: i64,
        check_crc: bool,
    ) -> Result<Option<AppendInfo>, LogError> {
        self.append_chunks(
            AppendBytes::Stamped(chunks),
            leader_epoch,
            now_ms,
            check_crc,
        )
    }

    fn append_batches(
        &self,
        batches: &mut [u8],
        leader_epoch: i32,
        now_ms: i64,
        check_crc: bool,
    ) -> Result<AppendInfo, LogError> {
        self.append_chunks(AppendBytes::Stamp(batches), leader_epoch, now_ms, check_crc)?
            .ok_or_else(|| LogError::InvalidBatch("batches to stamp were refused".into()))
    }

    fn append_chunks(
        &self,
        mut bytes: AppendBytes<'_>,
        leader_epoch: i32,
        now_ms: i64,
        check_crc: bool,
    ) -> Result<Option<AppendInfo>, LogError> {
        let (
            batch_bytes_max,
            segment_bytes_max,
            segment_ms_max,
            interval_bytes,
            durability,
            key_index,
        ) = {
            let config = self.config.read();
            (
                config.batch_bytes_max as usize,
                config.segment_bytes_max,
                config.segment_ms_max,
                config.index_interval_bytes as u64,
                config.durability,
                config.key_index,
            )
        };
        let chunks = bytes.chunks();
        let total_bytes: usize = chunks.iter().map(|chunk| chunk.len()).sum();
        if total_bytes == 0 {
            return Err(LogError::InvalidBatch("append of no batches".into()));
        }
        if total_bytes > u32::MAX as usize {
            return Err(LogError::BatchTooLarge {
                size: total_bytes,
                limit: u32::MAX as usize,
            });
        }
        // CRC work happens before taking the lock so concurrent producers checksum in parallel.
        // So is decoding the keys to index: only offsets are assigned under the lock.
        let mut headers = Vec::new();
        let mut keys: Vec<BatchKeys> = Vec::new();
        for chunk in chunks {
            let chunk_headers = validate_batches_with_limit(chunk, batch_bytes_max, check_crc)?;
            if key_index {
                let mut position = 0;
                for header in &chunk_headers {
                    let batch = &chunk[position..position + header.total_bytes()];
                    position += header.total_bytes();
                    keys.push(batch_keys(header, batch));
                }
            }
            headers.extend(chunk_headers);
        }

        let mut state = self.append_lock.lock();
        self.check_online()?;
        let base_offset = self.log_end_offset.load(Ordering::Acquire);
        let mut next_offset = base_offset;
        let mut position = 0;
        for header in &mut headers {
            match &mut bytes {
                AppendBytes::Stamp(batches) => {
                    assign_base_offset(&mut batches[position..], next_offset, leader_epoch);
                    header.base_offset = next_offset;
                    header.partition_leader_epoch = leader_epoch;
                }
                AppendBytes::Stamped(_) => {
                    if header.base_offset != next_offset
                        || header.partition_leader_epoch != leader_epoch
                    {
                        return Ok(None);
                    }
                }
            }
            next_offset = next_offset
                .checked_add(header.offset_count())
                .ok_or_else(|| LogError::InvalidBatch("offsets overflow i64".into()))?;
            position += header.total_bytes();
        }
        let last_offset = next_offset - 1;
        self.clear_clean_shutdown_marker(&mut state)
            .map_err(|e| self.go_offline(e))?;

        let active = self
            .roll_if_needed(
                total_bytes as u64,
                last_offset,
                segment_bytes_max,
                segment_ms_max,
                now_ms,
                key_index,
            )
            .map_err(|e| self.go_offline(e))?;
        let write_position = active
            .write_chunks(&bytes.chunks())
            .map_err(|e| self.go_offline(e))?;
        active.on_written(write_position, &headers, &keys, interval_bytes, now_ms);
        debug_assert_eq!(active.offset_end(), next_offset);
        self.log_end_offset.store(next_offset, Ordering::Release);
        if self.high_watermark_on_append(durability) {
            self.high_watermark.store(next_offset, Ordering::Release);
        }
        drop(state);

        let record_count = headers.iter().map(|h| h.record_count as i64).sum();
        let max_timestamp = headers
            .iter()
            .map(|h| {
                if h.is_log_append_time() {
                    now_ms
                } else {
                    h.max_timestamp
                }
            })
            .max()
            .unwrap_or(-1);
        Ok(Some(AppendInfo {
            base_offset,
            last_offset,
            record_count,
            max_timestamp,
            log_append_time_ms: now_ms,
            batches: headers,
        }))
    }

    /// Returns the segment to append to, rolling a new one when the active segment would grow
    /// past its size limit, is too old, or the offsets would not fit its u32 relative offsets.
    /// Caller holds `append_lock`.
    fn roll_if_needed(
        &self,
        append_bytes: u64,
        last_offset: i64,
        segment_bytes_max: u64,
        segment_ms_max: i64,
        now_ms: i64,
        key_index: bool,
    ) -> Result<Arc<Segment>, LogError> {
        let active = self.active_segment();
        if active.is_empty() {
            return Ok(active);
        }
        // Index positions are u32, so a segment never passes 4 GiB.
        let too_big = active.size_bytes() + append_bytes > segment_bytes_max.min(u32::MAX as u64);
        let too_old = active.roll_base_ms() >= 0
            && now_ms.saturating_sub(active.roll_base_ms()) > segment_ms_max;
        let offsets_overflow = last_offset - active.base_offset > u32::MAX as i64;
        if !(too_big || too_old || offsets_overflow) {
            return Ok(active);
        }
        // The rolled segment is made durable now, so it never needs syncing again.
        active.sync_data()?;
        active.write_index_files(true)?;
        let log_end_offset = self.log_end_offset.load(Ordering::Acquire);
        let segment = Arc::new(Segment::create(
            &self.storage,
            &self.dir,
            log_end_offset,
            key_index,
        )?);
        // One directory fsync covers the new segment and the rolled one's index renames.
        sync_dir(self.storage.as_ref(), &self.dir)?;
        tracing::debug!(segment = %segment.log_path.display(), too_big, too_old, "rolled segment");
        self.segments.write().push(Arc::clone(&segment));
        self.mark_durable(log_end_offset);
        // The key index table is merged off the append path; lookups search the frozen runs
        // until it is in place.
        if let Some(runs) = active.seal_key_index() {
            self.key_index_merges
                .schedule(&self.storage, self.dir.clone(), active, runs);
        }
        Ok(segment)
    }

    fn active_segment(&self) -> Arc<Segment> {
        let segments = self.segments.read();
        // The list is never empty: recovery creates a segment and nothing removes the last one.
        Arc::clone(&segments[segments.len() - 1])
    }

    /// Everything below `offset` is on disk. Caller holds `append_lock` (or is the only user)
    /// and has checked the log is online since the fsync it relies on.
    fn mark_durable(&self, offset: i64) {
        let offset = offset.min(self.log_end_offset.load(Ordering::Acquire));
        self.durable_offset.fetch_max(offset, Ordering::AcqRel);
        if self.high_watermark_policy == HighWatermarkPolicy::Durable
            && self.config.read().durability == Durability::Batch
        {
            self.high_watermark.fetch_max(offset, Ordering::AcqRel);
        }
    }

    /// Whether appended data is visible at once (not waiting for a sync or for the owner).
    fn high_watermark_on_append(&self, durability: Durability) -> bool {
        self.high_watermark_policy == HighWatermarkPolicy::Durable
            && durability != Durability::Batch
    }

    pub fn high_watermark_policy(&self) -> HighWatermarkPolicy {
        self.high_watermark_policy
    }

    /// Under [`HighWatermarkPolicy::External`]: moves the high watermark to `offset` (the
    /// consensus commit point), capped at the log end, and returns it. It never moves back here
    /// (a commit point only grows; truncation and [`PartitionLog::truncate_fully_and_start_at`]
    /// lower it themselves). Under the durable policy it is `InvalidConfig`.
    pub fn set_high_watermark(&self, offset: i64) -> Result<i64, LogError> {
        if self.high_watermark_policy != HighWatermarkPolicy::External {
            return Err(LogError::InvalidConfig(
                "the high watermark of this log follows durability, it cannot be set".into(),
            ));
        }
        // Under the append lock so it cannot interleave with a truncation lowering the end.
        let _state = self.append_lock.lock();
        let capped = offset.min(self.log_end_offset.load(Ordering::Acquire));
        let previous = self.high_watermark.fetch_max(capped, Ordering::AcqRel);
        Ok(previous.max(capped))
    }

    /// Retention never deletes a segment holding offsets at or past `offset` (`i64::MAX`: no
    /// floor). A consensus log sets it to the first offset it still needs.
    pub fn set_retention_floor(&self, offset: i64) {
        self.retention_floor.store(offset, Ordering::Release);
    }

    /// Blocks until everything below `offset_end` (exclusive) is fdatasync'ed. Group commit:
    /// concurrent callers share one fdatasync. Advances the high watermark under `Batch`.
    /// Offsets that were already durable succeed even offline; others then fail with
    /// `Offline`, and a failed fdatasync takes the log offline.
    pub fn sync(&self, offset_end: i64) -> Result<(), LogError> {
        let _sync = self.sync_lock.lock();
        loop {
            let durable = self.durable_offset.load(Ordering::Acquire);
            if durable >= offset_end {
                return Ok(());
            }
            self.check_online()?;
            // Read the end and the active segment together: anything below the end lives in
            // this segment or in older ones, which were synced when they were rolled.
            let (target, active, truncations) = {
                let state = self.append_lock.lock();
                (
                    self.log_end_offset.load(Ordering::Acquire),
                    self.active_segment(),
                    state.truncations,
                )
            };
            if target <= durable {
                return Ok(()); // asked past the log end: all there is is durable
            }
            let started = Instant::now();
            let synced = active.sync_data();
            self.fsync_seconds.record(started.elapsed());
            self.sync_count.fetch_add(1, Ordering::Relaxed);
            // A roll's failed fsync of this same segment (under the append lock) may have
            // dropped pages that this fsync then reported clean: check after taking the lock.
            let state = self.append_lock.lock();
            synced.map_err(|e| self.go_offline(e))?;
            self.check_online()?;
            if state.truncations == truncations {
                self.mark_durable(target);
            }
        }
    }

    /// Advises the OS that the batches below `offset` (as far as they are durable) will not be
    /// read soon, so their pages leave the page cache now instead of evicting pages that will
    /// be read. For a replica's copy of what another node leads: only a failover reads it
    /// back. Each call releases from where the last one stopped.
    pub fn release_pages_below(&self, offset: i64) {
        let offset = offset.min(self.durable_offset());
        let segments: Vec<Arc<Segment>> = {
            let segments = self.segments.read();
            let containing = segments.partition_point(|s| s.base_offset < offset);
            segments[..containing]
                .iter()
                .rev()
                .take(2)
                .cloned()
                .collect()
        };
        // The segment holding `offset` and, after a roll, the end of the one before it (older
        // ones were released whole when their successor was).
        for segment in segments {
            let position = if segment.offset_end() <= offset {
                segment.size_bytes()
            } else {
                segment.position_for_offset(offset)
            };
            segment.release_pages_below(position);
        }
    }

    /// How many group-commit fdatasyncs `sync` has issued (for tests and metrics).
    pub fn sync_count(&self) -> u64 {
        self.sync_count.load(Ordering::Relaxed)
    }

    /// Offsets below this are fdatasynced.
    pub fn durable_offset(&self) -> i64 {
        self.durable_offset.load(Ordering::Acquire)
    }

    /// Number of segments (for metrics and tests).
    pub fn segment_count(&self) -> usize {
        self.segments.read().len()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads whole batches from the one containing `offset`, up to `bytes_max` (see ReadResult).
    /// `offset` outside [log_start_offset, log_end_offset] gives `OffsetOutOfRange`; an offset at
    /// or past the high watermark gives empty records.
    pub fn read(&self, offset: i64, bytes_max: usize) -> Result<ReadResult, LogError> {
        self.read_below(offset, bytes_max, ReadLimit::HighWatermark)
    }

    /// [`PartitionLog::read`] that also stops at `end` (a `read_committed` consumer's last
    /// stable offset), which must lie on a batch boundary.
    pub fn read_to(&self, offset: i64, bytes_max: usize, end: i64) -> Result<ReadResult, LogError> {
        self.read_below(offset, bytes_max, ReadLimit::Below(end))
    }

    /// [`PartitionLog::read`] up to the log end instead of the high watermark, and from the
    /// first segment instead of the log start: batches not yet committed (or synced), or hidden
    /// from consumers by DeleteRecords, for the consensus layer replicating them. Never for
    /// consumers.
    pub fn read_uncommitted(&self, offset: i64, bytes_max: usize) -> Result<ReadResult, LogError> {
        self.read_below(offset, bytes_max, ReadLimit::LogEnd)
    }

    fn read_below(
        &self,
        offset: i64,
        bytes_max: usize,
        limit: ReadLimit,
    ) -> Result<ReadResult, LogError> {
        let (mut result, views, start_position, read_end) = {
            let segments = self.segments.read();
            // The limit before sizes: sizes published before it cover every batch below it
            // (the log end is stored after the write that reached it).
            let high_watermark = self.high_watermark.load(Ordering::Acquire);
            let read_end = match limit {
                ReadLimit::HighWatermark => high_watermark,
                ReadLimit::LogEnd => self.log_end_offset.load(Ordering::Acquire),
                ReadLimit::Below(end) => end.min(high_watermark),
            };
            let result = ReadResult {
                records: bytes::Bytes::new(),
                high_watermark,
                log_start_offset: self.log_start_offset.load(Ordering::Acquire),
                log_end_offset: self.log_end_offset.load(Ordering::Acquire),
            };
            // Replication may still need batches below a log start moved by DeleteRecords,
            // as long as their segment is there.
            let readable_start = match limit {
                ReadLimit::HighWatermark | ReadLimit::Below(_) => result.log_start_offset,
                ReadLimit::LogEnd => segments[0].base_offset,
            };
            if offset < readable_start || offset > result.log_end_offset {
                return Err(LogError::OffsetOutOfRange {
                    offset,
                    start: readable_start,
                    end: result.log_end_offset,
                });
            }
            if offset >= read_end {
                return Ok(result);
            }
            let mut first = segments
                .partition_point(|s| s.base_offset <= offset)
                .saturating_sub(1);
            // Compaction can leave a segment ending before the next one starts: an offset in
            // that gap is read from the next segment (it has no batch in this one).
            while first + 1 < segments.len() && segments[first].offset_end() <= offset {
                first += 1;
            }
            let start_position = if segments[first].base_offset <= offset {
                segments[first].position_for_offset(offset)
            } else {
                0
            };
            let mut views = Vec::new();
            let mut bytes_seen = 0u64;
            for segment in segments[first..].iter().take(READ_SEGMENTS_MAX) {
                let size_bytes = segment.size_bytes();
                bytes_seen += size_bytes;
                views.push((Arc::clone(segment), size_bytes));
                if segment.offset_end() >= read_end
                    || bytes_seen >= (bytes_max as u64).saturating_add(start_position)
                {
                    break;
                }
            }
            (result, views, start_position, read_end)
        };

        let mut records = Vec::new();
        for (index, (segment, size_bytes)) in views.iter().enumerate() {
            let from = if index == 0 { start_position } else { 0 };
            let end = read_segment(
                segment,
                *size_bytes,
                from,
                offset,
                read_end,
                bytes_max,
                &mut records,
            )?;
            if let SegmentReadEnd::Done = end {
                break;
            }
        }
        result.records = bytes::Bytes::from(records);
        Ok(result)
    }

    /// Calls `apply` with every record from `from` up to the high watermark, in offset order,
    /// reading about `bytes_per_read` at a time (internal logs replayed on open). Returns the
    /// offset after the last record applied.
    pub fn for_each_record(
        &self,
        from: i64,
        bytes_per_read: usize,
        mut apply: impl FnMut(crate::Record),
    ) -> Result<i64, LogError> {
        let mut position = from;
        let end = self.high_watermark();
        while position < end {
            let read = self.read(position, bytes_per_read)?;
            if read.records.is_empty() {
                break;
            }
            // Past every batch read, even one left without records at or past `position`
            // (compaction) or holding none (a marker).
            let mut next = crate::offset_after_batches(&read.records)?.unwrap_or(position);
            for record in crate::decode_records(&read.records)? {
                // A read starts at the batch containing `position`, which may begin before it.
                if record.offset < position {
                    continue;
                }
                next = next.max(record.offset + 1);
                apply(record);
            }
            if next <= position {
                break; // no progress: never spin on a log that does not advance
            }
            position = next;
        }
        Ok(position)
    }

    /// The first offset whose batch max timestamp is >= `timestamp_ms`, with that timestamp;
    /// `None` if there is none below the high watermark.
    ///
    /// For uncompressed CreateTime batches the records are decoded and the first record with a
    /// timestamp >= `timestamp_ms` is returned (as Kafka does); otherwise the batch's base offset
    /// with its max timestamp. An answer below the log start is raised to it (as Kafka does).
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<(i64, i64)>, LogError> {
        let high_watermark = self.high_watermark.load(Ordering::Acquire);
        let log_start_offset = self.log_start_offset();
        let segments: Vec<Arc<Segment>> = self.segments.read().clone();
        for segment in segments {
            if segment.base_offset >= high_watermark {
                break;
            }
            if segment.offset_end() <= log_start_offset {
                continue;
            }
            // The time index lets whole segments be skipped.
            if segment.timestamp_max() < timestamp_ms {
                continue;
            }
            let from = segment.position_for_timestamp(timestamp_ms);
            let mut reader = BatchReader::new(
                segment.file.as_ref(),
                &segment.log_path,
                from,
                segment.size_bytes(),
                false,
            );
            while let Some((position, header)) = next_stored_batch(&segment, &mut reader)? {
                if header.base_offset >= high_watermark {
                    return Ok(None);
                }
                if header.last_offset() < log_start_offset {
                    continue;
                }
                if header.max_timestamp >= timestamp_ms {
                    return first_record_at_or_after(
                        &segment,
                        position,
                        &header,
                        timestamp_ms,
                        high_watermark,
                    )
                    .map(|(offset, timestamp)| Some((offset.max(log_start_offset), timestamp)));
                }
            }
        }
        Ok(None)
    }

    /// The records whose key (or `message-id` header) is exactly `lookup`'s, through the
    /// segments' key indexes (no scan): each candidate's batch is read, CRC-checked and decoded
    /// to compare the real key, so hash collisions never give a wrong answer. Only offsets in
    /// [log start, high watermark) are returned, oldest first, at most `limit`.
    pub fn find_records(
        &self,
        lookup: RecordLookup<'_>,
        limit: usize,
    ) -> Result<FoundRecords, LogError> {
        let hash = lookup.hash();
        let segments: Vec<Arc<Segment>> = self.segments.read().clone();
        // After the segment snapshot: offsets below it were in these segments.
        let high_watermark = self.high_watermark();
        let log_start_offset = self.log_start_offset();
        let mut found = FoundRecords::default();
        for segment in segments {
            if segment.base_offset >= high_watermark {
                break;
            }
            if segment.offset_end() <= log_start_offset {
                continue;
            }
            let Some((relative_offsets, unindexed)) = segment.key_candidates(hash)? else {
                found.segments_unindexed += 1;
                continue;
            };
            found.batches_unindexed += unindexed;
            let mut offsets: Vec<i64> = relative_offsets
                .into_iter()
                .map(|relative| segment.base_offset + relative as i64)
                .filter(|offset| (log_start_offset..high_watermark).contains(offset))
                .collect();
            offsets.sort_unstable();
            offsets.dedup();
            let mut batch: Option<(BatchHeader, Vec<Record>)> = None;
            for offset in offsets {
                let holds = |b: &Option<(BatchHeader, Vec<Record>)>| {
                    b.as_ref().is_some_and(|(header, _)| {
                        header.base_offset <= offset && offset <= header.last_offset()
                    })
                };
                if !holds(&batch) {
                    batch = read_batch_records(&segment, offset)?;
                }
                let Some((_, records)) = &batch else { continue };
                let Some(record) = records.iter().find(|r| r.offset == offset) else {
                    continue;
                };
                if !lookup.matches(record) {
                    continue;
                }
                if found.records.len() == limit {
                    found.truncated = true;
                    return Ok(found);
                }
                found.records.push(record.clone());
            }
        }
        Ok(found)
    }

    /// The base offset of the oldest segment still on disk: at or below the log start, which
    /// `advance_log_start` may have moved past batches that are still stored.
    pub fn first_stored_offset(&self) -> i64 {
        self.segments.read().first().map_or(0, |s| s.base_offset)
    }

    /// Offsets below this are gone for readers: deleted by retention or by `advance_log_start`.
    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset.load(Ordering::Acquire)
    }

    /// Whether [`PartitionLog::advance_log_start`] to `offset` would move the log start;
    /// `OffsetOutOfRange` unless `offset` lies in `[0, high watermark]`. For a caller that must
    /// refuse before doing anything else (a replicated log proposes the move first).
    pub fn log_start_would_advance(&self, offset: i64) -> Result<bool, LogError> {
        let log_start_offset = self.log_start_offset();
        let high_watermark = self.high_watermark();
        if offset < 0 || offset > high_watermark {
            return Err(LogError::OffsetOutOfRange {
                offset,
                start: log_start_offset,
                end: high_watermark,
            });
        }
        Ok(offset > log_start_offset)
    }

    /// Moves the log start forward to `offset` (Kafka's DeleteRecords) and returns the log start
    /// afterwards, unchanged when `offset` is not past it. Reads below the new start fail with
    /// `OffsetOutOfRange`; retention deletes segments that lie wholly below it. The new start is
    /// durable (checkpointed) before it is visible, so a restart never brings the records back.
    /// `offset` must lie in `[0, high watermark]`, else `OffsetOutOfRange`.
    pub fn advance_log_start(&self, offset: i64) -> Result<i64, LogError> {
        // Serialised with truncation and retention, which also move these offsets.
        let mut state = self.append_lock.lock();
        self.check_online()?;
        self.clear_clean_shutdown_marker(&mut state)
            .map_err(|e| self.go_offline(e))?;
        if !self.log_start_would_advance(offset)? {
            return Ok(self.log_start_offset());
        }
        write_log_start_checkpoint(self.storage.as_ref(), &self.dir, offset)
            .map_err(|e| self.go_offline(e))?;
        self.log_start_offset.store(offset, Ordering::Release);
        tracing::info!(dir = %self.dir.display(), log_start_offset = offset, "advanced log start");
        Ok(offset)
    }
    /// Next offset to be assigned.
    pub fn log_end_offset(&self) -> i64 {
        self.log_end_offset.load(Ordering::Acquire)
    }
    /// Readers never see offsets at or past this.
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.load(Ordering::Acquire)
    }
    pub fn size_bytes(&self) -> u64 {
        self.segments.read().iter().map(|s| s.size_bytes()).sum()
    }

    /// Deletes whole segments past retention (never the active one). Returns how many.
    ///
    /// Oldest first, as Kafka: a segment goes while the log would still hold at least
    /// `retention_bytes` without it, or when its newest batch is older than `retention_ms`.
    /// Segments wholly below the log start (see `advance_log_start`) go regardless. Segments
    /// holding offsets at or past the high watermark are kept.
    pub fn enforce_retention(&self, now_ms: i64) -> Result<usize, LogError> {
        let (retention_bytes, retention_ms) = {
            let config = self.config.read();
            (config.retention_bytes, config.retention_ms)
        };
        let _cleaning = self.cleaner_lock.lock();
        let mut state = self.append_lock.lock();
        // Offline, the directory is left as it is for recovery.
        self.check_online()?;
        let segments: Vec<Arc<Segment>> = self.segments.read().clone();
        let high_watermark = self
            .high_watermark()
            .min(self.retention_floor.load(Ordering::Acquire));
        let log_start_offset = self.log_start_offset();
        let mut total_bytes: u64 = segments.iter().map(|s| s.size_bytes()).sum();
        let mut delete_count = 0;
        for segment in &segments[..segments.len() - 1] {
            if segment.offset_end() > high_watermark {
                break;
            }
            let over_size = retention_bytes >= 0
                && total_bytes - segment.size_bytes() >= retention_bytes as u64;
            let too_old =
                retention_ms >= 0 && segment.timestamp_max() < now_ms.saturating_sub(retention_ms);
            let below_log_start = segment.offset_end() <= log_start_offset;
            if !(over_size || too_old || below_log_start) {
                break;
            }
            total_bytes -= segment.size_bytes();
            delete_count += 1;
        }
        if delete_count == 0 {
            return Ok(0);
        }
        self.clear_clean_shutdown_marker(&mut state)
            .map_err(|e| self.go_offline(e))?;
        let removed: Vec<Arc<Segment>> = {
            let mut segments = self.segments.write();
            let removed = segments.drain(..delete_count).collect();
            self.log_start_offset
                .fetch_max(segments[0].base_offset, Ordering::AcqRel);
            removed
        };
        let delete = || -> Result<(), LogError> {
            for segment in &removed {
                tracing::info!(segment = %segment.log_path.display(), offset_end = segment.offset_end(), "retention deletes segment");
                segment.remove_files()?;
            }
            // Deleted segments coming back after a crash would move the log start backwards.
            sync_dir(self.storage.as_ref(), &self.dir)
        };
        delete().map_err(|e| self.go_offline(e))?;
        Ok(delete_count)
    }

    /// One compaction pass (`cleanup.policy=compact`, see `cleaner`) over the rolled segments
    /// that end at or below `end` (the owner's last stable offset; never past the high
    /// watermark) and are older than `min.compaction.lag.ms`, when the bytes not cleaned yet
    /// reach `min.cleanable.dirty.ratio` of them (or wait past `max.compaction.lag.ms`).
    /// `None`: nothing was due. Appends go on meanwhile; retention and truncation wait.
    ///
    /// A segment's copy replaces it in this order, so a crash at any point leaves either the
    /// old or the new log file whole, and indexes rebuilt from whichever it is: copy written
    /// and fsynced; the old indexes removed (directory fsync); the copy renamed over the log
    /// file (directory fsync); new indexes written.
    pub fn clean(&self, now_ms: i64, end: i64) -> Result<Option<CleanStats>, LogError> {
        let config = self.config.read().clone();
        if !config.compact {
            return Ok(None);
        }
        let _cleaning = self.cleaner_lock.lock();
        self.check_online()?;
        let segments: Vec<Arc<Segment>> = self.segments.read().clone();
        // A replicated log's batches from the retention floor on are Raft entries, which
        // followers may still need as they were written: only those below it are cleaned.
        let end = end
            .min(self.high_watermark())
            .min(self.retention_floor.load(Ordering::Acquire));
        // A replicated log stays contiguous (a batch left without records stays, empty): a
        // Raft snapshot carries the batches below the floor to a follower, which appends
        // them at their own offsets one after the other.
        let keep_every_batch = self.high_watermark_policy == HighWatermarkPolicy::External;
        let lag_floor = now_ms.saturating_sub(config.min_compaction_lag_ms);
        let cleanable: Vec<Arc<Segment>> = segments[..segments.len() - 1]
            .iter()
            .take_while(|s| s.offset_end() <= end && s.timestamp_max() <= lag_floor)
            .cloned()
            .collect();
        let Some(clean_end) = segments.get(cleanable.len()).map(|s| s.base_offset) else {
            return Ok(None);
        };
        let first_dirty = self.first_dirty_offset.load(Ordering::Acquire);
        let total_bytes: u64 = cleanable.iter().map(|s| s.size_bytes()).sum();
        let dirty: Vec<&Arc<Segment>> = cleanable
            .iter()
            .filter(|s| s.base_offset >= first_dirty)
            .collect();
        if dirty.is_empty() {
            return Ok(None);
        }
        let dirty_bytes: u64 = dirty.iter().map(|s| s.size_bytes()).sum();
        let overdue = dirty.iter().any(|s| {
            s.roll_base_ms() >= 0
                && now_ms.saturating_sub(s.roll_base_ms()) > config.max_compaction_lag_ms
        });
        let ratio = dirty_bytes as f64 / total_bytes.max(1) as f64;
        if ratio < config.min_cleanable_dirty_ratio && !overdue {
            return Ok(None);
        }
        // A rolled segment's key index merge must not land on a file being replaced.
        self.key_index_merges.wait_idle();
        let producers = ProducerScan::from_segments(&segments)?;
        let map = OffsetMap::build(&cleanable, &producers)?;
        let tombstone_horizon = now_ms.saturating_sub(config.delete_retention_ms);
        let mut stats = CleanStats {
            clean_end,
            ..CleanStats::default()
        };
        for segment in &cleanable {
            let remove_tombstones = segment.timestamp_max() < tombstone_horizon;
            let Some(cleaned) = clean_segment(
                &self.storage,
                segment,
                &map,
                &producers,
                remove_tombstones,
                keep_every_batch,
            )?
            else {
                continue;
            };
            stats.segments += 1;
            stats.bytes_before += segment.size_bytes();
            stats.bytes_after += cleaned.size_bytes;
            stats.records_removed += cleaned.records_removed;
            if cleaned.size_bytes == 0 && !Arc::ptr_eq(segment, &segments[0]) {
                // Nothing left: the segment goes (the first stays, it holds the log start).
                let _ = self.storage.remove_file(&cleaned.path);
                self.remove_cleaned_out(segment)?;
            } else {
                self.install_cleaned(segment, cleaned, &config)?;
            }
        }
        self.first_dirty_offset
            .fetch_max(clean_end, Ordering::AcqRel);
        if stats.segments > 0 {
            tracing::info!(dir = %self.dir.display(), segments = stats.segments, bytes_before = stats.bytes_before, bytes_after = stats.bytes_after, records_removed = stats.records_removed, clean_end, "compacted log");
        }
        Ok(Some(stats))
    }

    /// Removes a rolled segment compaction left without batches: its offsets are a gap that
    /// reads pass over to the next segment. Caller holds `cleaner_lock`.
    fn remove_cleaned_out(&self, old: &Arc<Segment>) -> Result<(), LogError> {
        {
            let mut state = self.append_lock.lock();
            self.check_online()?;
            self.clear_clean_shutdown_marker(&mut state)
                .map_err(|e| self.go_offline(e))?;
            self.segments.write().retain(|s| !Arc::ptr_eq(s, old));
        }
        let remove = || -> Result<(), LogError> {
            old.remove_files()?;
            // Durable before the next segment is cleaned: a tombstone removed there must
            // never outlive the values it deleted here.
            sync_dir(self.storage.as_ref(), &self.dir)
        };
        remove().map_err(|e| self.go_offline(e))
    }

    /// Replaces `old` with its cleaned copy (see `clean` for the order). Caller holds
    /// `cleaner_lock`.
    fn install_cleaned(
        &self,
        old: &Arc<Segment>,
        cleaned: CleanedSegment,
        config: &LogConfig,
    ) -> Result<(), LogError> {
        let discard = |error: LogError| {
            let _ = self.storage.remove_file(&cleaned.path);
            error
        };
        // Checked as a reader would: the copy must be whole batches with growing offsets.
        let scan = cleaned
            .file
            .sync_data()
            .map_err(|e| io_error(&cleaned.path, e))
            .and_then(|()| {
                scan_file(
                    cleaned.file.as_ref(),
                    &cleaned.path,
                    old.base_offset,
                    0,
                    cleaned.size_bytes,
                    true,
                    config.index_interval_bytes as u64,
                    SegmentIndexes::new(None),
                )
            })
            .map_err(discard)?;
        if let Some(stop) = scan.stop {
            return Err(discard(LogError::InvalidBatch(format!(
                "cleaned copy of {} is invalid at {}: {}",
                old.log_path.display(),
                stop.position,
                stop.reason
            ))));
        }
        {
            let mut state = self.append_lock.lock();
            self.check_online().map_err(discard)?;
            if !self.segments.read().iter().any(|s| Arc::ptr_eq(s, old)) {
                return Err(discard(LogError::InvalidConfig(
                    "segment removed while being cleaned".into(),
                )));
            }
            self.clear_clean_shutdown_marker(&mut state)
                .map_err(|e| self.go_offline(e))?;
        }
        let CleanedSegment { path, file, .. } = cleaned;
        let mut indexes = scan.indexes;
        // Rebuilt below, once the segment is in place.
        indexes.key_index = if config.key_index {
            KeyIndex::Incomplete
        } else {
            KeyIndex::Disabled
        };
        // Half done, memory and disk disagree: offline until recovery reads the disk again.
        let swap = || -> Result<Arc<Segment>, LogError> {
            old.remove_index_files()?;
            sync_dir(self.storage.as_ref(), &self.dir)?;
            self.storage
                .rename(&path, &old.log_path)
                .map_err(|e| io_error(&old.log_path, e))?;
            sync_dir(self.storage.as_ref(), &self.dir)?;
            let segment = Segment::from_parts(
                Arc::clone(&self.storage),
                old.base_offset,
                old.log_path.clone(),
                file,
                scan.valid_bytes,
                scan.offset_end,
                indexes,
                old.roll_base_ms(),
            );
            segment.write_index_files(true)?;
            sync_dir(self.storage.as_ref(), &self.dir)?;
            Ok(Arc::new(segment))
        };
        let segment = swap().map_err(|e| self.go_offline(e))?;
        if let Some(slot) = self
            .segments
            .write()
            .iter_mut()
            .find(|s| Arc::ptr_eq(s, old))
        {
            *slot = Arc::clone(&segment);
        }
        if config.key_index {
            load_key_index(
                self.storage.as_ref(),
                &self.dir,
                &segment,
                config.index_interval_bytes as u64,
            )?;
        }
        Ok(())
    }

    /// Removes every batch at or after `offset` (for replication; also used by tests).
    ///
    /// The cut falls on a batch boundary: a batch containing `offset` is removed whole, so the
    /// new log end may be below `offset`. An offset below the log start empties the log (the
    /// log start stays).
    pub fn truncate_to(&self, offset: i64) -> Result<(), LogError> {
        let interval_bytes = self.config.read().index_interval_bytes as u64;
        let _cleaning = self.cleaner_lock.lock();
        let mut state = self.append_lock.lock();
        self.check_online()?;
        if offset >= self.log_end_offset() {
            return Ok(());
        }
        self.clear_clean_shutdown_marker(&mut state)
            .map_err(|e| self.go_offline(e))?;
        let offset = offset.max(self.log_start_offset());
        let segments: Vec<Arc<Segment>> = self.segments.read().clone();
        let keep = segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1);
        let segment = Arc::clone(&segments[keep]);

        let size_bytes = segment.size_bytes();
        let mut reader = BatchReader::new(
            segment.file.as_ref(),
            &segment.log_path,
            segment.position_for_offset(offset),
            size_bytes,
            false,
        );
        let (cut_position, cut_offset) = loop {
            match reader.next_batch() {
                Ok(None) => break (size_bytes, offset),
                Ok(Some((position, header))) if header.last_offset() >= offset => {
                    break (position, header.base_offset.min(offset))
                }
                Ok(Some(_)) => {}
                Err(
                    BatchReadError::Invalid { position, .. }
                    | BatchReadError::Checksum { position, .. },
                ) => break (position, offset),
                Err(BatchReadError::Log(error)) => return Err(error),
            }
        };
        // Readers must stop seeing the removed offsets before their bytes go.
        state.truncations += 1;
        self.high_watermark.fetch_min(cut_offset, Ordering::AcqRel);
        self.durable_offset.fetch_min(cut_offset, Ordering::AcqRel);
        self.log_end_offset.fetch_min(cut_offset, Ordering::AcqRel);

        let removed: Vec<Arc<Segment>> = self.segments.write().drain(keep + 1..).collect();
        // Half done, memory and disk disagree: offline until recovery reads the disk again.
        let cut = || -> Result<(), LogError> {
            for removed in &removed {
                removed.remove_files()?;
            }
            // The later segments must be gone for good before the kept one is cut, or a crash
            // could bring them back after a gap.
            sync_dir(self.storage.as_ref(), &self.dir)?;
            segment.truncate_to(cut_position, interval_bytes)?;
            segment.write_index_files(false)?;
            sync_dir(self.storage.as_ref(), &self.dir)
        };
        cut().map_err(|e| self.go_offline(e))?;

        let log_end_offset = segment.offset_end();
        self.log_end_offset.store(log_end_offset, Ordering::Release);
        self.high_watermark
            .fetch_min(log_end_offset, Ordering::AcqRel);
        self.durable_offset
            .fetch_min(log_end_offset, Ordering::AcqRel);
        tracing::info!(dir = %self.dir.display(), offset, log_end_offset, removed_segments = removed.len(), "truncated log");
        Ok(())
    }

    /// Empties the log and restarts it at `offset` (Kafka's truncateFullyAndStartAt): every
    /// segment goes, the log start and end become `offset` (durably checkpointed), the high
    /// watermark too. For a replica replacing its log with a leader's snapshot.
    pub fn truncate_fully_and_start_at(&self, offset: i64) -> Result<(), LogError> {
        if offset < 0 {
            return Err(LogError::OffsetOutOfRange {
                offset,
                start: self.log_start_offset(),
                end: self.log_end_offset(),
            });
        }
        let _cleaning = self.cleaner_lock.lock();
        let _sync = self.sync_lock.lock();
        let mut state = self.append_lock.lock();
        self.check_online()?;
        self.clear_clean_shutdown_marker(&mut state)
            .map_err(|e| self.go_offline(e))?;
        state.truncations += 1;
        // Readers stop at once; the bytes go after.
        self.high_watermark.store(offset, Ordering::Release);
        self.durable_offset.store(offset, Ordering::Release);
        self.log_end_offset.store(offset, Ordering::Release);
        self.log_start_offset.store(offset, Ordering::Release);
        let removed: Vec<Arc<Segment>> = self.segments.read().clone();
        let reset = || -> Result<Arc<Segment>, LogError> {
            for segment in &removed {
                segment.remove_files()?;
            }
            let segment = Segment::create(
                &self.storage,
                &self.dir,
                offset,
                self.config.read().key_index,
            )?;
            segment.write_index_files(false)?;
            sync_dir(self.storage.as_ref(), &self.dir)?;
            write_log_start_checkpoint(self.storage.as_ref(), &self.dir, offset)?;
            Ok(Arc::new(segment))
        };
        match reset() {
            Ok(segment) => {
                *self.segments.write() = vec![segment];
                tracing::info!(dir = %self.dir.display(), offset, removed_segments = removed.len(), "truncated log fully");
                Ok(())
            }
            // The old list stays (reads are bounded by the new, empty range): only a reopen
            // can tell what is on disk now.
            Err(error) => Err(self.go_offline(error)),
        }
    }

    pub fn set_config(&self, config: LogConfig) {
        if let Err(error) = validate_config(&config) {
            tracing::warn!(%error, "ignoring invalid log config");
            return;
        }
        let _state = self.append_lock.lock();
        let durability = config.durability;
        if config.key_index != self.config.read().key_index {
            for segment in self.segments.read().iter() {
                segment.set_key_index(config.key_index);
            }
        }
        *self.config.write() = config;
        if self.high_watermark_on_append(durability) {
            // Unsynced data is visible under the new policy.
            self.high_watermark
                .fetch_max(self.log_end_offset(), Ordering::AcqRel);
        }
    }

    pub fn config(&self) -> LogConfig {
        self.config.read().clone()
    }

    /// Headers of every batch from the one containing `offset` to the log end (used to rebuild
    /// producer state on start).
    pub fn batch_headers_from(&self, offset: i64) -> Result<Vec<BatchHeader>, LogError> {
        let mut headers = Vec::new();
        self.for_each_batch_header_from(offset, |header| headers.push(*header))?;
        Ok(headers)
    }

    /// Calls `visit` with the header of every batch from the one containing `offset` to the log
    /// end, in order, without collecting them (a recovery scan of millions of batches).
    pub fn for_each_batch_header_from(
        &self,
        offset: i64,
        mut visit: impl FnMut(&BatchHeader),
    ) -> Result<(), LogError> {
        let segments: Vec<Arc<Segment>> = {
            let segments = self.segments.read();
            let first = segments
                .partition_point(|s| s.base_offset <= offset)
                .saturating_sub(1);
            segments[first..].to_vec()
        };
        for (index, segment) in segments.iter().enumerate() {
            let from = if index == 0 {
                segment.position_for_offset(offset)
            } else {
                0
            };
            let mut reader = BatchReader::new(
                segment.file.as_ref(),
                &segment.log_path,
                from,
                segment.size_bytes(),
                false,
            );
            while let Some((_, header)) = next_stored_batch(segment, &mut reader)? {
                if header.last_offset() >= offset {
                    visit(&header);
                }
            }
        }
        Ok(())
    }

    /// The oldest batch boundary `start` such that the batches from `start` up to `offset_end`
    /// total at most `bytes_max` bytes: where the newest batches that fit a budget begin (a
    /// bounded snapshot of a replicated partition). Never below the batch holding the log
    /// start. Reads only the headers of the segment where the budget runs out.
    pub fn tail_start(&self, offset_end: i64, bytes_max: u64) -> Result<i64, LogError> {
        let offset_end = offset_end.min(self.log_end_offset());
        let log_start = self.log_start_offset();
        let segments: Vec<Arc<Segment>> = self.segments.read().clone();
        let mut budget = bytes_max;
        let mut start = offset_end.max(log_start);
        for segment in segments.iter().rev() {
            if segment.base_offset >= offset_end {
                continue;
            }
            let end_position = batch_position_at(segment, offset_end)?;
            let from_position = if segment.base_offset < log_start {
                batch_position_at(segment, log_start)?
            } else {
                0
            };
            let bytes = end_position.saturating_sub(from_position);
            if bytes <= budget && segment.base_offset >= log_start {
                budget -= bytes;
                start = segment.base_offset;
                continue;
            }
            // The budget (or the log start) ends inside this segment: the first batch from
            // which the rest fits.
            let mut reader = BatchReader::new(
                segment.file.as_ref(),
                &segment.log_path,
                from_position,
                end_position,
                false,
            );
            while let Some((position, header)) = next_stored_batch(segment, &mut reader)? {
                if end_position - position <= budget {
                    return Ok(header.base_offset.min(start));
                }
            }
            return Ok(start);
        }
        Ok(start)
    }

    /// fsyncs all segments and indexes and leaves the clean shutdown marker, which the next
    /// change (or open) removes. Also used while running (a flush is a sync of everything).
    pub fn flush(&self) -> Result<(), LogError> {
        // Before the locks (merges take none of them): a clean restart then finds every
        // rolled segment's key index table instead of rebuilding it.
        self.key_index_merges.wait_idle();
        let _sync = self.sync_lock.lock();
        let mut state = self.append_lock.lock();
        self.check_online()?;
        // Rolled segments were synced with their indexes written when they were rolled.
        let active = self.active_segment();
        let flushed = active
            .sync_data()
            .and_then(|()| active.write_index_files(true))
            .and_then(|()| write_clean_shutdown_marker(self.storage.as_ref(), &self.dir))
            .and_then(|()| sync_dir(self.storage.as_ref(), &self.dir));
        flushed.map_err(|e| self.go_offline(e))?;
        state.clean_shutdown_marker = true;
        self.mark_durable(self.log_end_offset());
        Ok(())
    }

    /// Deletes the partition directory (and makes its removal durable).
    pub fn delete(self) -> Result<(), LogError> {
        let dir = self.dir.clone();
        let storage = Arc::clone(&self.storage);
        // Dropping waits for merges still running, which would write into the directory.
        drop(self);
        storage
            .remove_dir_all(&dir)
            .map_err(|e| io_error(&dir, e))?;
        match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) => sync_dir(storage.as_ref(), parent),
            None => Ok(()),
        }
    }
}

impl Drop for PartitionLog {
    /// A merge outliving its log could race a reopen of the same directory (recovery removing
    /// the files it writes): a closed log has no work left running.
    fn drop(&mut self) {
        self.key_index_merges.wait_idle();
    }
}

fn validate_config(config: &LogConfig) -> Result<(), LogError> {
    if config.segment_bytes_max < BATCH_HEADER_BYTES as u64 {
        return Err(LogError::InvalidConfig(format!(
            "segment_bytes_max {} is too small",
            config.segment_bytes_max
        )));
    }
    if config.batch_bytes_max < BATCH_HEADER_BYTES as u32 {
        return Err(LogError::InvalidConfig(format!(
            "batch_bytes_max {} is too small",
            config.batch_bytes_max
        )));
    }
    if config.segment_ms_max <= 0 {
        return Err(LogError::InvalidConfig(format!(
            "segment_ms_max {} must be positive",
            config.segment_ms_max
        )));
    }
    Ok(())
}

/// Next batch of a segment whose bytes were validated when written or recovered: a bad header
/// now means the file changed under us, which is reported rather than served.
pub(crate) fn next_stored_batch(
    segment: &Segment,
    reader: &mut BatchReader<'_>,
) -> Result<Option<(u64, BatchHeader)>, LogError> {
    match reader.next_batch() {
        Ok(found) => Ok(found),
        Err(
            BatchReadError::Invalid { position, reason }
            | BatchReadError::Checksum {
                position, reason, ..
            },
        ) => Err(corrupt_stored(segment, position, reason)),
        Err(BatchReadError::Log(error)) => Err(error),
    }
}

/// File position of the batch of `segment` holding `offset` (its size when none does).
fn batch_position_at(segment: &Segment, offset: i64) -> Result<u64, LogError> {
    let size_bytes = segment.size_bytes();
    let mut reader = BatchReader::new(
        segment.file.as_ref(),
        &segment.log_path,
        segment.position_for_offset(offset),
        size_bytes,
        false,
    );
    while let Some((position, header)) = next_stored_batch(segment, &mut reader)? {
        if header.last_offset() >= offset {
            return Ok(position);
        }
    }
    Ok(size_bytes)
}

/// A stored batch failed its checks: logged loudly (media corruption) and never served.
pub(crate) fn corrupt_stored(segment: &Segment, position: u64, reason: String) -> LogError {
    tracing::error!(
        segment = %segment.log_path.display(),
        position,
        %reason,
        "corrupt batch on disk: not served"
    );
    LogError::CorruptStored {
        path: segment.log_path.clone(),
        position,
        reason,
    }
}

/// Appends to `records` whole batches of `segment` from the one containing `offset`, below the
/// high watermark, within `bytes_max` (but at least one batch when `records` is empty).
fn read_segment(
    segment: &Segment,
    size_bytes: u64,
    from: u64,
    offset: i64,
    high_watermark: i64,
    bytes_max: usize,
    records: &mut Vec<u8>,
) -> Result<SegmentReadEnd, LogError> {
    // Walk headers from the index entry to the batch holding `offset` (a few KiB at most).
    let mut reader = BatchReader::new(
        segment.file.as_ref(),
        &segment.log_path,
        from,
        size_bytes,
        false,
    );
    let (position, first) = loop {
        match next_stored_batch(segment, &mut reader)? {
            None => return Ok(SegmentReadEnd::Continue),
            Some((position, header)) if header.last_offset() >= offset => break (position, header),
            Some(_) => {}
        }
    };
    if first.base_offset >= high_watermark {
        return Ok(SegmentReadEnd::Done);
    }
    let budget = if records.is_empty() {
        bytes_max.max(first.total_bytes())
    } else {
        bytes_max.saturating_sub(records.len())
    };
    if first.total_bytes() > budget {
        return Ok(SegmentReadEnd::Done);
    }
    // One read for everything that can fit; the tail past the last whole batch is dropped.
    let read_bytes = (budget as u64).min(size_bytes - position) as usize;
    let start = records.len();
    if let Err(error) = segment
        .file
        .read_exact_appending(records, read_bytes, position)
    {
        return Err(io_error(&segment.log_path, error));
    }
    // Every batch served is CRC-checked (hardware CRC-32C: far cheaper than the copy). A bad
    // first batch is an error for the reader; a bad later one ends the read before it, so the
    // next read starts there and reports it.
    let mut kept = 0;
    loop {
        let batch_position = position + kept as u64;
        let header = match BatchHeader::parse(&records[start + kept..]) {
            Ok(header) => header,
            Err(_) if kept == 0 && start == 0 => {
                records.truncate(start);
                return Err(corrupt_stored(
                    segment,
                    batch_position,
                    "unreadable batch header".into(),
                ));
            }
            Err(_) => break,
        };
        let total = header.total_bytes();
        if header.base_offset >= high_watermark {
            break;
        }
        if header.batch_length < BATCH_LENGTH_MIN || kept + total > read_bytes {
            if kept == 0 && start == 0 {
                records.truncate(start);
                return Err(corrupt_stored(
                    segment,
                    batch_position,
                    format!("batch length {} does not fit", header.batch_length),
                ));
            }
            break;
        }
        if let Err(error) = verify_crc(&header, &records[start + kept..start + kept + total]) {
            if start == 0 && kept == 0 {
                records.truncate(start);
                return Err(corrupt_stored(segment, batch_position, error.to_string()));
            }
            tracing::error!(segment = %segment.log_path.display(), position = batch_position, %error, "corrupt batch on disk: read stops before it");
            break;
        }
        kept += total;
    }
    records.truncate(start + kept);
    let exhausted = position + kept as u64 == size_bytes;
    Ok(if exhausted && records.len() < bytes_max {
        SegmentReadEnd::Continue
    } else {
        SegmentReadEnd::Done
    })
}

/// The batch of `segment` holding `offset`, CRC-checked and decoded (decompressed if need
/// be); `None` if no batch holds it (truncated since).
fn read_batch_records(
    segment: &Segment,
    offset: i64,
) -> Result<Option<(BatchHeader, Vec<Record>)>, LogError> {
    let mut reader = BatchReader::new(
        segment.file.as_ref(),
        &segment.log_path,
        segment.position_for_offset(offset),
        segment.size_bytes(),
        false,
    );
    let (position, header) = loop {
        match next_stored_batch(segment, &mut reader)? {
            None => return Ok(None),
            Some((position, header)) if header.last_offset() >= offset => break (position, header),
            Some(_) => {}
        }
    };
    if header.base_offset > offset {
        return Ok(None);
    }
    // The header passed check_shape, so the length is bounded.
    let mut batch = vec![0u8; header.total_bytes()];
    segment
        .file
        .read_exact_at(&mut batch, position)
        .map_err(|e| io_error(&segment.log_path, e))?;
    verify_crc(&header, &batch)
        .map_err(|error| corrupt_stored(segment, position, error.to_string()))?;
    let mut records = Vec::new();
    decode_batch_records(&header, &batch, &mut records)?;
    Ok(Some((header, records)))
}

/// The first record at or after `timestamp_ms` in a batch whose max timestamp reaches it.
fn first_record_at_or_after(
    segment: &Segment,
    position: u64,
    header: &BatchHeader,
    timestamp_ms: i64,
    high_watermark: i64,
) -> Result<(i64, i64), LogError> {
    let batch_answer = (header.base_offset, header.max_timestamp);
    // Every record of a LogAppendTime batch has the batch's timestamp.
    if header.is_log_append_time() {
        return Ok(batch_answer);
    }
    // The header passed check_shape, so the length is bounded.
    let mut batch = vec![0u8; header.total_bytes()];
    segment
        .file
        .read_exact_at(&mut batch, position)
        .map_err(|e| io_error(&segment.log_path, e))?;
    verify_crc(header, &batch)
        .map_err(|error| corrupt_stored(segment, position, error.to_string()))?;
    let mut records = Vec::new();
    decode_batch_records(header, &batch, &mut records)?;
    Ok(records
        .iter()
        .find(|r| r.timestamp >= timestamp_ms && r.offset < high_watermark)
        .map_or(batch_answer, |r| (r.offset, r.timestamp)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_index::{KeyIndex, KeyIndexEntry};
    use crate::RecordBatchBuilder;

    #[test]
    fn key_lookup_verifies_candidates_so_hash_collisions_never_answer() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            durability: Durability::Never,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(dir.path(), config).unwrap();
        let mut builder = RecordBatchBuilder::new();
        for key in ["a", "b", "c"] {
            builder.push(Record {
                key: Some(key.as_bytes().to_vec()),
                ..Default::default()
            });
        }
        let mut batch = builder.build();
        log.append(&mut batch, 0, 0).unwrap();
        // A colliding entry: "ghost" hashes to offsets holding "b" and "c".
        let ghost = RecordLookup::Key(b"ghost");
        if let KeyIndex::Memory(runs) = &mut log.active_segment().indexes.lock().key_index {
            for relative_offset in [1, 2] {
                runs.push(KeyIndexEntry {
                    hash: ghost.hash(),
                    relative_offset,
                });
            }
        }
        assert!(log.find_records(ghost, 10).unwrap().records.is_empty());
        let found = log.find_records(RecordLookup::Key(b"b"), 10).unwrap();
        assert_eq!(found.records.len(), 1);
        assert_eq!(found.records[0].offset, 1);
    }
}
