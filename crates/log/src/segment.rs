//! One segment of a partition log: `N.log` (record batches starting at base offset N) plus its
//! in-memory offset and time indexes, persisted to `N.index` and `N.timeindex`, and its key
//! index (`N.keyindex`, see `key_index`).
//!
//! The log file handle is shared: appends write at the end with positional writes (serialised by
//! the partition's append lock), readers use positional reads and only trust bytes below the
//! published `size_bytes`, so neither needs the other's lock for I/O.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::batch::{verify_crc, BATCH_HEADER_BYTES};
use crate::key_index::{
    batch_keys, table_candidates, BatchKeys, KeyIndex, KeyIndexFileHeader, KeyIndexRuns,
    KEY_INDEX_SUFFIX, KEY_RUNS_SUFFIX,
};
use crate::offset_index::{OffsetIndex, OffsetIndexEntry};
use crate::storage::{Storage, StorageFile};
use crate::time_index::{TimeIndex, TimeIndexEntry};
use crate::{BatchHeader, LogError};

pub(crate) const LOG_SUFFIX: &str = "log";
pub(crate) const INDEX_SUFFIX: &str = "index";
pub(crate) const TIME_INDEX_SUFFIX: &str = "timeindex";
/// Index files being rewritten; leftovers from a crash are removed on open.
pub(crate) const TEMPORARY_SUFFIX: &str = "tmp";

/// `00000000000000000042.log`: 20 digits so names sort like offsets.
pub(crate) fn segment_path(dir: &Path, base_offset: i64, suffix: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{suffix}"))
}

pub(crate) fn io_error(path: &Path, source: io::Error) -> LogError {
    LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What the indexes need to know about the batches written so far.
#[derive(Debug)]
pub(crate) struct SegmentIndexes {
    pub offset_index: OffsetIndex,
    pub time_index: TimeIndex,
    /// Log bytes appended since the last index entry (Kafka's bytesSinceLastIndexEntry).
    pub bytes_since_entry: u64,
    pub timestamp_max: i64,
    pub relative_offset_of_timestamp_max: u32,
    pub key_index: KeyIndex,
}

impl SegmentIndexes {
    /// Empty indexes; `key_index` keeps a key index (a new or rebuilt active segment).
    pub fn new(key_index: Option<KeyIndexRuns>) -> SegmentIndexes {
        SegmentIndexes {
            offset_index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            bytes_since_entry: 0,
            timestamp_max: -1,
            relative_offset_of_timestamp_max: 0,
            key_index: key_index.map_or(KeyIndex::Disabled, KeyIndex::Memory),
        }
    }

    /// Adds one batch's keys to an in-memory key index.
    pub fn on_batch_keys(&mut self, segment_base: i64, base_offset: i64, keys: &BatchKeys) {
        if let KeyIndex::Memory(runs) = &mut self.key_index {
            if let Ok(relative_base) = u32::try_from(base_offset.wrapping_sub(segment_base)) {
                runs.push_batch(relative_base, keys);
            }
            if runs.is_broken() {
                self.key_index = KeyIndex::Incomplete;
            }
        }
    }

    /// Accounts for one batch written at `position`; adds index entries every `interval_bytes`.
    pub fn on_batch(
        &mut self,
        segment_base: i64,
        position: u64,
        header: &BatchHeader,
        interval_bytes: u64,
    ) {
        let relative_offset = u32::try_from(header.base_offset.wrapping_sub(segment_base)).ok();
        let position_u32 = u32::try_from(position).ok();
        if header.max_timestamp > self.timestamp_max {
            self.timestamp_max = header.max_timestamp;
            self.relative_offset_of_timestamp_max = relative_offset.unwrap_or(u32::MAX);
        }
        if self.bytes_since_entry > interval_bytes {
            if let (Some(relative_offset), Some(position)) = (relative_offset, position_u32) {
                self.offset_index.push(OffsetIndexEntry {
                    relative_offset,
                    position,
                });
                self.time_index.maybe_push(TimeIndexEntry {
                    timestamp: self.timestamp_max,
                    relative_offset: self.relative_offset_of_timestamp_max,
                });
            }
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += header.total_bytes() as u64;
    }
}

pub(crate) struct Segment {
    pub base_offset: i64,
    pub log_path: PathBuf,
    pub storage: Arc<dyn Storage>,
    pub file: Box<dyn StorageFile>,
    /// Bytes of whole batches in the file; readers never look past it.
    size_bytes: AtomicU64,
    /// Last offset + 1 (the base offset while empty).
    offset_end: AtomicI64,
    /// Largest batch max timestamp (-1 while empty).
    timestamp_max: AtomicI64,
    /// Start of the segment's age for `segment_ms_max` (-1 until the first append).
    roll_base_ms: AtomicI64,
    pub indexes: Mutex<SegmentIndexes>,
    /// Page-aligned position below which `release_pages_below` released the cached pages.
    pages_released_below: AtomicU64,
}

/// The page size fadvise works in (the smallest Linux has).
const PAGE_BYTES: u64 = 4096;

impl Segment {
    /// Creates a new empty segment file (replacing any stray file of that name).
    /// The caller makes the new directory entry durable (`sync_dir`).
    pub fn create(
        storage: &Arc<dyn Storage>,
        dir: &Path,
        base_offset: i64,
        key_index: bool,
    ) -> Result<Segment, LogError> {
        let log_path = segment_path(dir, base_offset, LOG_SUFFIX);
        let file = storage
            .create(&log_path)
            .map_err(|e| io_error(&log_path, e))?;
        Ok(Segment::from_parts(
            Arc::clone(storage),
            base_offset,
            log_path,
            file,
            0,
            base_offset,
            SegmentIndexes::new(key_index.then(|| key_index_runs(storage, dir, base_offset))),
            -1,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        storage: Arc<dyn Storage>,
        base_offset: i64,
        log_path: PathBuf,
        file: Box<dyn StorageFile>,
        size_bytes: u64,
        offset_end: i64,
        indexes: SegmentIndexes,
        roll_base_ms: i64,
    ) -> Segment {
        Segment {
            base_offset,
            log_path,
            storage,
            file,
            size_bytes: AtomicU64::new(size_bytes),
            offset_end: AtomicI64::new(offset_end.max(base_offset)),
            timestamp_max: AtomicI64::new(indexes.timestamp_max),
            roll_base_ms: AtomicI64::new(roll_base_ms),
            indexes: Mutex::new(indexes),
            pages_released_below: AtomicU64::new(0),
        }
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes.load(Ordering::Acquire)
    }
    pub fn offset_end(&self) -> i64 {
        self.offset_end.load(Ordering::Acquire)
    }
    pub fn timestamp_max(&self) -> i64 {
        self.timestamp_max.load(Ordering::Acquire)
    }
    pub fn roll_base_ms(&self) -> i64 {
        self.roll_base_ms.load(Ordering::Relaxed)
    }
    pub fn is_empty(&self) -> bool {
        self.size_bytes() == 0
    }

    /// Writes `chunks` (whole, validated batches with their offsets assigned) at the end of
    /// the file, one positional write each, in order: all of them or none (on failure the
    /// file is cut back, so it never ends in a partial batch). Returns where they start.
    /// Caller holds the partition's append lock.
    pub fn write_chunks(&self, chunks: &[&[u8]]) -> Result<u64, LogError> {
        let position = self.size_bytes();
        let mut at = position;
        for chunk in chunks {
            if let Err(source) = self.file.write_all_at(chunk, at) {
                if let Err(truncate_error) = self.file.set_len(position) {
                    tracing::error!(path = %self.log_path.display(), %truncate_error, "cannot cut back a failed write");
                }
                return Err(io_error(&self.log_path, source));
            }
            at += chunk.len() as u64;
        }
        Ok(position)
    }

    /// Publishes batches written at `position` by [`Segment::write_chunks`]: indexes, then size and
    /// offsets, so a reader that sees the new size finds whole batches.
    /// `keys` holds each batch's key index entries (empty when the log keeps no key index).
    pub fn on_written(
        &self,
        position: u64,
        headers: &[BatchHeader],
        keys: &[BatchKeys],
        interval_bytes: u64,
        now_ms: i64,
    ) {
        let mut indexes = self.indexes.lock();
        let mut batch_position = position;
        for (index, header) in headers.iter().enumerate() {
            indexes.on_batch(self.base_offset, batch_position, header, interval_bytes);
            if let Some(keys) = keys.get(index) {
                indexes.on_batch_keys(self.base_offset, header.base_offset, keys);
            }
            batch_position += header.total_bytes() as u64;
        }
        self.timestamp_max
            .store(indexes.timestamp_max, Ordering::Release);
        drop(indexes);
        if self.roll_base_ms() < 0 {
            self.roll_base_ms.store(now_ms, Ordering::Relaxed);
        }
        if let Some(last) = headers.last() {
            self.offset_end
                .store(last.last_offset() + 1, Ordering::Release);
        }
        self.size_bytes.store(batch_position, Ordering::Release);
    }

    /// Cuts the segment to `position` (a batch boundary) and rebuilds its indexes from the log.
    pub fn truncate_to(&self, position: u64, interval_bytes: u64) -> Result<(), LogError> {
        self.file
            .set_len(position)
            .map_err(|e| io_error(&self.log_path, e))?;
        self.file
            .sync_all()
            .map_err(|e| io_error(&self.log_path, e))?;
        let key_index = !matches!(self.indexes.lock().key_index, KeyIndex::Disabled);
        // The old index goes first: its spill file is the one the rebuild writes anew.
        self.indexes.lock().key_index = KeyIndex::Incomplete;
        let scan = scan_segment(self, 0, position, interval_bytes, key_index)?;
        self.size_bytes.store(position, Ordering::Release);
        // What is written past the cut next has not been released.
        self.pages_released_below
            .fetch_min(position / PAGE_BYTES * PAGE_BYTES, Ordering::AcqRel);
        self.offset_end
            .store(scan.offset_end.max(self.base_offset), Ordering::Release);
        self.timestamp_max
            .store(scan.indexes.timestamp_max, Ordering::Release);
        *self.indexes.lock() = scan.indexes;
        Ok(())
    }

    /// File position to start scanning from for `offset` (nearest index entry at or below).
    pub fn position_for_offset(&self, offset: i64) -> u64 {
        let relative = offset
            .saturating_sub(self.base_offset)
            .clamp(0, u32::MAX as i64) as u32;
        self.indexes.lock().offset_index.lookup(relative).position as u64
    }

    /// File position to start searching for the first batch with max timestamp >= `timestamp`.
    pub fn position_for_timestamp(&self, timestamp: i64) -> u64 {
        let indexes = self.indexes.lock();
        match indexes.time_index.lookup_below(timestamp) {
            Some(entry) => indexes.offset_index.lookup(entry.relative_offset).position as u64,
            None => 0,
        }
    }

    /// Advises the storage that the bytes below `position`, which the caller made durable, will
    /// not be read soon (from where the last call stopped). Whole pages only: the next append
    /// writes into the partial last page, and would have to read it back from the disk first.
    /// Only advice: a failure is logged.
    pub fn release_pages_below(&self, position: u64) {
        let start = self.pages_released_below.load(Ordering::Acquire);
        let end = position / PAGE_BYTES * PAGE_BYTES;
        if end <= start {
            return;
        }
        if let Err(error) = self.file.release_pages(start, end - start) {
            tracing::debug!(path = %self.log_path.display(), %error, "releasing cached pages");
        }
        self.pages_released_below.fetch_max(end, Ordering::AcqRel);
    }

    pub fn sync_data(&self) -> Result<(), LogError> {
        self.file
            .sync_data()
            .map_err(|e| io_error(&self.log_path, e))
    }

    /// Writes `N.index` and `N.timeindex` from memory. Each file is written to a temporary
    /// name and renamed, so an index file that exists is whole. `durable` (used when a segment
    /// is rolled, after which recovery trusts its indexes) fsyncs each file before the rename;
    /// the active segment's indexes are never trusted by recovery, so they need no fsync. The
    /// caller makes the renames durable (`sync_dir`), together with its other entries.
    pub fn write_index_files(&self, durable: bool) -> Result<(), LogError> {
        let (offset_bytes, time_bytes) = {
            let indexes = self.indexes.lock();
            (
                indexes.offset_index.to_bytes(),
                indexes.time_index.to_bytes(),
            )
        };
        let dir = self.dir();
        if matches!(self.indexes.lock().key_index, KeyIndex::Disabled) {
            // A file left from when the index was kept would go stale as the log changes.
            let path = segment_path(dir, self.base_offset, KEY_INDEX_SUFFIX);
            match self.storage.remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&path, e)),
            }
        }
        for (suffix, bytes) in [
            (INDEX_SUFFIX, offset_bytes),
            (TIME_INDEX_SUFFIX, time_bytes),
        ] {
            let path = segment_path(dir, self.base_offset, suffix);
            let temporary = path.with_extension(format!("{suffix}.{TEMPORARY_SUFFIX}"));
            let file = self
                .storage
                .create(&temporary)
                .map_err(|e| io_error(&temporary, e))?;
            file.write_all_at(&bytes, 0)
                .map_err(|e| io_error(&temporary, e))?;
            if durable {
                file.sync_data().map_err(|e| io_error(&temporary, e))?;
            }
            self.storage
                .rename(&temporary, &path)
                .map_err(|e| io_error(&path, e))?;
        }
        Ok(())
    }

    /// The partition directory holding this segment.
    pub(crate) fn dir(&self) -> &Path {
        self.log_path.parent().unwrap_or(Path::new("."))
    }

    /// Writes an in-memory key index to `N.keyindex` (temporary file, fsync, rename; the
    /// caller syncs the directory) for a segment being rolled or a rebuilt rolled segment.
    /// Returns its header for `key_index_written`; `None` when no index is kept.
    pub fn write_key_index_file(&self) -> Result<Option<KeyIndexFileHeader>, LogError> {
        let path = segment_path(self.dir(), self.base_offset, KEY_INDEX_SUFFIX);
        let temporary = path.with_extension(format!("{KEY_INDEX_SUFFIX}.{TEMPORARY_SUFFIX}"));
        // The merge takes a while for a big segment: readers of the segment (which need the
        // indexes lock) must not wait for it, so the entries leave the lock meanwhile and
        // lookups skip the segment. Callers hold the append lock, so nothing else changes it.
        let runs = {
            let mut indexes = self.indexes.lock();
            match std::mem::replace(&mut indexes.key_index, KeyIndex::Incomplete) {
                KeyIndex::Memory(runs) => runs,
                other => {
                    indexes.key_index = other;
                    return Ok(None);
                }
            }
        };
        let written = (|| {
            let file = self
                .storage
                .create(&temporary)
                .map_err(|e| io_error(&temporary, e))?;
            let header = runs.write_table(file.as_ref(), &temporary, self.size_bytes())?;
            file.sync_data().map_err(|e| io_error(&temporary, e))?;
            self.storage
                .rename(&temporary, &path)
                .map_err(|e| io_error(&path, e))?;
            Ok(header)
        })();
        self.indexes.lock().key_index = KeyIndex::Memory(runs);
        written.map(Some)
    }

    /// Freezes a rolled segment's in-memory key index for a background merge: lookups keep
    /// searching the returned runs until [`Segment::merge_key_index`] installs the table.
    /// `None` when the segment keeps no complete key index.
    pub fn seal_key_index(&self) -> Option<Arc<KeyIndexRuns>> {
        let mut indexes = self.indexes.lock();
        let KeyIndex::Memory(_) = &indexes.key_index else {
            return None;
        };
        let KeyIndex::Memory(runs) =
            std::mem::replace(&mut indexes.key_index, KeyIndex::Incomplete)
        else {
            return None;
        };
        let runs = Arc::new(runs);
        indexes.key_index = KeyIndex::Merging(Arc::clone(&runs));
        Some(runs)
    }

    /// Writes the sealed `runs` of this rolled segment to `N.keyindex` (temporary file,
    /// fsync, rename) without any partition lock, and installs it if the segment still waits
    /// for exactly these runs; otherwise (truncated, deleted or the index turned off since)
    /// the result is thrown away. Returns whether the table was installed; the caller syncs
    /// the directory (until then a crash only costs a rebuild). On an error the segment keeps
    /// answering from its runs, and recovery rebuilds the file.
    pub fn merge_key_index(&self, runs: &Arc<KeyIndexRuns>) -> Result<bool, LogError> {
        let path = segment_path(self.dir(), self.base_offset, KEY_INDEX_SUFFIX);
        let temporary = path.with_extension(format!("{KEY_INDEX_SUFFIX}.{TEMPORARY_SUFFIX}"));
        let still_wanted = || matches!(&self.indexes.lock().key_index, KeyIndex::Merging(current) if Arc::ptr_eq(current, runs));
        if !still_wanted() {
            return Ok(false);
        }
        let written = (|| {
            let file = self
                .storage
                .create(&temporary)
                .map_err(|e| io_error(&temporary, e))?;
            let header = runs.write_table(file.as_ref(), &temporary, self.size_bytes())?;
            file.sync_data().map_err(|e| io_error(&temporary, e))?;
            Ok(header)
        })();
        let discard_temporary = || {
            if let Err(error) = self.storage.remove_file(&temporary) {
                if error.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %temporary.display(), %error, "cannot remove a discarded key index (recovery removes it)");
                }
            }
        };
        let header = match written {
            Ok(header) => header,
            Err(error) => {
                discard_temporary();
                return Err(error);
            }
        };
        // The check and the rename happen under the indexes lock, which truncation and removal
        // take to replace the index: a table for bytes that changed is never installed.
        let mut indexes = self.indexes.lock();
        if !matches!(&indexes.key_index, KeyIndex::Merging(current) if Arc::ptr_eq(current, runs)) {
            drop(indexes);
            discard_temporary();
            return Ok(false);
        }
        if let Err(error) = self.storage.rename(&temporary, &path) {
            drop(indexes);
            discard_temporary();
            return Err(io_error(&path, error));
        }
        indexes.key_index = KeyIndex::OnDisk(header);
        // Under the lock too: a truncation right after would write a new spill at this path.
        // Lookups that still hold the runs read the old one through its open handle.
        if let Some(spill) = runs.spill_path() {
            if let Err(error) = self.storage.remove_file(spill) {
                tracing::warn!(path = %spill.display(), %error, "cannot remove spilled key index runs (recovery removes them)");
            }
        }
        Ok(true)
    }

    /// The segment's key index file was written (`header`): lookups read the file from now on,
    /// and the entries leave memory and the spill file.
    pub fn key_index_written(&self, header: KeyIndexFileHeader) {
        let mut indexes = self.indexes.lock();
        if let KeyIndex::Memory(runs) = &mut indexes.key_index {
            runs.remove_spill();
            indexes.key_index = KeyIndex::OnDisk(header);
        }
    }

    /// Relative offsets whose records may have key or id hash `hash`; `None` when the segment
    /// has no usable key index. Also returns how many compressed batches were left unindexed.
    pub fn key_candidates(&self, hash: u64) -> Result<Option<(Vec<u32>, u64)>, LogError> {
        let in_memory = {
            let indexes = self.indexes.lock();
            match &indexes.key_index {
                KeyIndex::Memory(runs) => {
                    let (found, spilled) = runs.candidates(hash);
                    Err(Ok((found, spilled, runs.skipped_batches)))
                }
                KeyIndex::OnDisk(header) => Ok(*header),
                KeyIndex::Merging(runs) => Err(Err(Arc::clone(runs))),
                KeyIndex::Disabled | KeyIndex::Incomplete => return Ok(None),
            }
        };
        let in_memory = match in_memory {
            Ok(header) => Ok(header),
            Err(Ok(active)) => Err(active),
            // Frozen runs: searched without the lock (the background merge shares them).
            Err(Err(runs)) => {
                return Ok(Some((runs.all_candidates(hash)?, runs.skipped_batches)));
            }
        };
        let header = match in_memory {
            Ok(header) => header,
            // Spilled runs are searched without the lock, which appends need.
            Err((mut found, spilled, skipped)) => {
                spilled.candidates(hash, &mut found)?;
                return Ok(Some((found, skipped)));
            }
        };
        let path = segment_path(self.dir(), self.base_offset, KEY_INDEX_SUFFIX);
        let file = match self.storage.open(&path) {
            Ok(file) => file,
            // Removed by retention or truncation since the segment list was read.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(&path, e)),
        };
        Ok(Some((
            table_candidates(file.as_ref(), &path, &header, hash)?,
            0,
        )))
    }

    /// Marks the key index on or off after a config change: turned off, lookups stop using it;
    /// turned on, an empty segment starts one, a segment with records waits for recovery.
    pub fn set_key_index(&self, enabled: bool) {
        let mut indexes = self.indexes.lock();
        match (&indexes.key_index, enabled) {
            (KeyIndex::Disabled, true) if self.is_empty() => {
                indexes.key_index =
                    KeyIndex::Memory(key_index_runs(&self.storage, self.dir(), self.base_offset))
            }
            (KeyIndex::Disabled, true) => indexes.key_index = KeyIndex::Incomplete,
            (_, false) => indexes.key_index = KeyIndex::Disabled,
            _ => {}
        }
    }

    /// Removes the segment's files (open handles stay readable until dropped). The caller makes
    /// the removal durable (`sync_dir`).
    pub fn remove_files(&self) -> Result<(), LogError> {
        self.remove_index_files()?;
        let path = &self.log_path;
        match self.storage.remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(path, e)),
        }
    }

    /// Removes the segment's index files, leaving its log (which compaction then replaces).
    /// The caller makes the removal durable (`sync_dir`).
    pub fn remove_index_files(&self) -> Result<(), LogError> {
        {
            // A background merge of this segment's key index must not install its table.
            let mut indexes = self.indexes.lock();
            if matches!(indexes.key_index, KeyIndex::Merging(_)) {
                indexes.key_index = KeyIndex::Incomplete;
            }
        }
        let dir = self.dir();
        for suffix in [
            INDEX_SUFFIX,
            TIME_INDEX_SUFFIX,
            KEY_INDEX_SUFFIX,
            KEY_RUNS_SUFFIX,
        ] {
            let path = segment_path(dir, self.base_offset, suffix);
            match self.storage.remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&path, e)),
            }
        }
        Ok(())
    }
}

/// Why a scan stopped before the end of the file: a torn, short or corrupt batch.
#[derive(Debug)]
pub(crate) struct ScanStop {
    pub position: u64,
    pub reason: String,
}

/// Result of scanning a segment's batches from some position.
pub(crate) struct SegmentScan {
    /// End of the last whole valid batch.
    pub valid_bytes: u64,
    /// Last offset + 1 of the last valid batch (the scan's start offset if none).
    pub offset_end: i64,
    pub first_batch: Option<BatchHeader>,
    pub indexes: SegmentIndexes,
    pub stop: Option<ScanStop>,
}

/// Scans batches of `segment` in [`from`, `end`), checking headers and offsets growing;
/// builds indexes from `from` (pass 0 for a full rebuild). Stops at the first invalid batch
/// rather than failing; I/O errors fail.
pub(crate) fn scan_segment(
    segment: &Segment,
    from: u64,
    end: u64,
    interval_bytes: u64,
    key_index: bool,
) -> Result<SegmentScan, LogError> {
    scan_file(
        segment.file.as_ref(),
        &segment.log_path,
        segment.base_offset,
        from,
        end,
        false,
        interval_bytes,
        SegmentIndexes::new(
            key_index.then(|| key_index_runs(&segment.storage, segment.dir(), segment.base_offset)),
        ),
    )
}

/// An empty key index for the segment at `base_offset` of `dir`, spilling to its `N.keyruns`.
pub(crate) fn key_index_runs(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    base_offset: i64,
) -> KeyIndexRuns {
    KeyIndexRuns::spilling_to(
        Arc::clone(storage),
        segment_path(dir, base_offset, KEY_RUNS_SUFFIX),
    )
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn scan_file(
    file: &dyn StorageFile,
    path: &Path,
    segment_base: i64,
    from: u64,
    end: u64,
    verify_crc: bool,
    interval_bytes: u64,
    indexes: SegmentIndexes,
) -> Result<SegmentScan, LogError> {
    let mut scan = SegmentScan {
        valid_bytes: from,
        offset_end: segment_base,
        first_batch: None,
        indexes,
        stop: None,
    };
    let mut reader = BatchReader::new(file, path, from, end, verify_crc);
    loop {
        match reader.next_batch() {
            Ok(None) => break,
            Ok(Some((position, header))) => {
                if header.base_offset < scan.offset_end {
                    scan.stop = Some(ScanStop {
                        position,
                        reason: format!(
                            "base offset {} below expected {}",
                            header.base_offset, scan.offset_end
                        ),
                    });
                    break;
                }
                scan.indexes
                    .on_batch(segment_base, position, &header, interval_bytes);
                if matches!(scan.indexes.key_index, KeyIndex::Memory(_)) {
                    let keys = match reader.fill(position, header.total_bytes()) {
                        Ok(batch) => batch_keys(&header, batch),
                        Err(BatchReadError::Log(error)) => return Err(error),
                        // next_batch checked the batch fits in the file.
                        Err(_) => BatchKeys::default(),
                    };
                    scan.indexes
                        .on_batch_keys(segment_base, header.base_offset, &keys);
                }
                scan.first_batch.get_or_insert(header);
                scan.offset_end = header.last_offset() + 1;
                scan.valid_bytes = position + header.total_bytes() as u64;
            }
            Err(
                BatchReadError::Invalid { position, reason }
                | BatchReadError::Checksum {
                    position, reason, ..
                },
            ) => {
                scan.stop = Some(ScanStop { position, reason });
                break;
            }
            Err(BatchReadError::Log(error)) => return Err(error),
        }
    }
    Ok(scan)
}

pub(crate) enum BatchReadError {
    /// The bytes at `position` are not a whole batch: torn, short or garbled header.
    Invalid {
        position: u64,
        reason: String,
    },
    /// A well-formed batch whose CRC does not match (only when verifying CRCs). The reader has
    /// moved past it, so a caller may go on to the next batch.
    Checksum {
        position: u64,
        header: BatchHeader,
        reason: String,
    },
    Log(LogError),
}

/// Walks batch headers of a log file with positional reads through a bounded buffer, so it can
/// share the file handle with concurrent appends and readers.
pub(crate) struct BatchReader<'a> {
    file: &'a dyn StorageFile,
    path: &'a Path,
    position: u64,
    end: u64,
    verify_crc: bool,
    buffer: Vec<u8>,
    buffer_start: u64,
    chunk_bytes: usize,
}

impl<'a> BatchReader<'a> {
    pub fn new(
        file: &'a dyn StorageFile,
        path: &'a Path,
        from: u64,
        end: u64,
        verify_crc: bool,
    ) -> BatchReader<'a> {
        BatchReader {
            file,
            path,
            position: from,
            end,
            verify_crc,
            buffer: Vec::new(),
            buffer_start: from,
            chunk_bytes: if verify_crc { 1 << 20 } else { 16 << 10 },
        }
    }

    /// The next batch's position and header, `None` at `end`.
    pub fn next_batch(&mut self) -> Result<Option<(u64, BatchHeader)>, BatchReadError> {
        let position = self.position;
        if position >= self.end {
            return Ok(None);
        }
        let available = self.end - position;
        let invalid = |reason: String| BatchReadError::Invalid { position, reason };
        if available < BATCH_HEADER_BYTES as u64 {
            return Err(invalid(format!(
                "{available} trailing bytes, shorter than a batch header"
            )));
        }
        let header_bytes = self.fill(position, BATCH_HEADER_BYTES)?;
        let header = BatchHeader::parse(header_bytes).map_err(|e| invalid(e.to_string()))?;
        header
            .check_shape(usize::try_from(available).unwrap_or(usize::MAX))
            .map_err(|e| invalid(e.to_string()))?;
        let total = header.total_bytes();
        if self.verify_crc {
            let batch = self.fill(position, total)?;
            if let Err(error) = verify_crc(&header, batch) {
                self.position = position + total as u64;
                return Err(BatchReadError::Checksum {
                    position,
                    header,
                    reason: error.to_string(),
                });
            }
        }
        self.position = position + total as u64;
        Ok(Some((position, header)))
    }

    /// Returns `length` bytes at `position`, reading a new chunk when they are not buffered.
    /// `length` is bounded by the caller (a header, or a batch that passed `check_shape`).
    fn fill(&mut self, position: u64, length: usize) -> Result<&[u8], BatchReadError> {
        let buffer_end = self.buffer_start + self.buffer.len() as u64;
        if position < self.buffer_start || position + length as u64 > buffer_end {
            let read_length =
                (length.max(self.chunk_bytes) as u64).min(self.end - position) as usize;
            self.buffer.resize(read_length, 0);
            self.buffer_start = position;
            if let Err(e) = self.file.read_exact_at(&mut self.buffer, position) {
                self.buffer.clear();
                return Err(if e.kind() == io::ErrorKind::UnexpectedEof {
                    BatchReadError::Invalid {
                        position,
                        reason: "file shorter than expected".into(),
                    }
                } else {
                    BatchReadError::Log(io_error(self.path, e))
                });
            }
        }
        let start = (position - self.buffer_start) as usize;
        Ok(&self.buffer[start..start + length])
    }
}
