//! Opening a partition directory after a clean shutdown or a crash (Kafka's LogLoader).
//!
//! The last (active) segment is scanned batch by batch with CRC checks and cut at the first torn,
//! short or corrupt batch: its tail may hold a write that was in flight. Older segments were
//! fsynced when they were rolled (before the next segment existed), so a crash cannot tear
//! them; their indexes are checked and rebuilt from the log when missing or inconsistent.
//!
//! Clean shutdown marker: `PartitionLog::flush` leaves a `clean-shutdown` file; recovery removes
//! it. Without one (a crash), every rolled segment is also CRC-checked and each corrupt batch is
//! logged with its file and position. Rolled segments are never cut for a bad CRC (that would
//! drop the good batches after it): reads verify CRCs and refuse to serve a corrupt batch. The
//! marker only saves that diagnostic scan; correctness never depends on it.
//!
//! Key indexes (`N.keyindex`): the active segment's is rebuilt by the scan of its tail; a rolled
//! segment's file is trusted when its header matches the segment, else rebuilt from the log.
//!
//! Every directory change recovery makes (removed leftovers, rewritten indexes, a created first
//! segment, the removed marker) is made durable with one directory fsync before the log opens.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use crate::batch::BATCH_HEADER_BYTES;
use crate::key_index::{KeyIndex, KeyIndexFileHeader, KEY_INDEX_SUFFIX, KEY_RUNS_SUFFIX};
use crate::offset_index::OffsetIndex;
use crate::segment::TEMPORARY_SUFFIX;
use crate::segment::{
    io_error, key_index_runs, scan_file, segment_path, BatchReadError, BatchReader, Segment,
    SegmentIndexes, SegmentScan, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX,
};
use crate::storage::{Storage, StorageFile};
use crate::time_index::TimeIndex;
use crate::{BatchHeader, LogConfig, LogError};

/// Marks a partition directory whose log was flushed and not written since.
pub(crate) const CLEAN_SHUTDOWN_MARKER: &str = "clean-shutdown";

/// Loads every segment of `dir` (creating the directory and a first empty segment if needed).
/// Returned segments are sorted by base offset; the last is the active one.
pub(crate) fn recover(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    config: &LogConfig,
) -> Result<Vec<Segment>, LogError> {
    storage
        .create_dir_all_durable(dir)
        .map_err(|e| io_error(dir, e))?;
    let (base_offsets, clean_shutdown) = list_segments(storage.as_ref(), dir)?;
    if clean_shutdown {
        let marker = dir.join(CLEAN_SHUTDOWN_MARKER);
        storage
            .remove_file(&marker)
            .map_err(|e| io_error(&marker, e))?;
    }
    let interval_bytes = config.index_interval_bytes as u64;
    let mut segments = Vec::with_capacity(base_offsets.len());
    let last_base = base_offsets.last().copied();
    for base_offset in base_offsets {
        let segment = if Some(base_offset) == last_base {
            recover_active_segment(storage, dir, base_offset, interval_bytes, config.key_index)?
        } else {
            let segment =
                load_rolled_segment(storage, dir, base_offset, interval_bytes, !clean_shutdown)?;
            if config.key_index {
                load_key_index(storage.as_ref(), dir, &segment, interval_bytes)?;
            }
            segment
        };
        if let Some(previous) = segments.last() {
            let previous: &Segment = previous;
            if previous.offset_end() > segment.base_offset {
                tracing::warn!(
                    segment = %segment.log_path.display(),
                    previous_offset_end = previous.offset_end(),
                    "segment overlaps the previous one"
                );
            }
        }
        segments.push(segment);
    }
    if segments.is_empty() {
        let segment = Segment::create(storage, dir, 0, config.key_index)?;
        segment.write_index_files(false)?;
        segments.push(segment);
    }
    sync_dir(storage.as_ref(), dir)?;
    Ok(segments)
}

/// Base offsets of every `N.log`, and whether the clean shutdown marker is there; removes
/// index files whose log is gone and unfinished temporary files.
fn list_segments(storage: &dyn Storage, dir: &Path) -> Result<(Vec<i64>, bool), LogError> {
    let mut logs = BTreeSet::new();
    let mut indexes = Vec::new();
    let mut clean_shutdown = false;
    for name in storage.read_dir(dir).map_err(|e| io_error(dir, e))? {
        // Spilled key index runs belong to an active segment, whose index is rebuilt.
        if name.to_str().is_some_and(|n| {
            n.ends_with(&format!(".{TEMPORARY_SUFFIX}"))
                || n.ends_with(&format!(".{KEY_RUNS_SUFFIX}"))
        }) {
            let path = dir.join(&name);
            tracing::debug!(path = %path.display(), "removing unfinished index file");
            storage.remove_file(&path).map_err(|e| io_error(&path, e))?;
            continue;
        }
        if name == LOG_START_CHECKPOINT {
            continue;
        }
        if name == CLEAN_SHUTDOWN_MARKER {
            clean_shutdown = true;
            continue;
        }
        let Some((base_offset, suffix)) = name.to_str().and_then(parse_segment_file_name) else {
            tracing::debug!(file = ?name, dir = %dir.display(), "ignoring stray file in partition directory");
            continue;
        };
        if suffix == LOG_SUFFIX {
            logs.insert(base_offset);
        } else {
            indexes.push((base_offset, suffix));
        }
    }
    for (base_offset, suffix) in indexes {
        if !logs.contains(&base_offset) {
            let path = segment_path(dir, base_offset, suffix);
            tracing::warn!(path = %path.display(), "removing index without a log segment");
            storage.remove_file(&path).map_err(|e| io_error(&path, e))?;
        }
    }
    Ok((logs.into_iter().collect(), clean_shutdown))
}

fn parse_segment_file_name(name: &str) -> Option<(i64, &'static str)> {
    let (stem, suffix) = name.split_once('.')?;
    let suffix = [
        LOG_SUFFIX,
        INDEX_SUFFIX,
        TIME_INDEX_SUFFIX,
        KEY_INDEX_SUFFIX,
    ]
    .into_iter()
    .find(|s| *s == suffix)?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, suffix))
}

type OpenedLog = (Box<dyn StorageFile>, u64, i64, std::path::PathBuf);

fn open_log(storage: &dyn Storage, dir: &Path, base_offset: i64) -> Result<OpenedLog, LogError> {
    let path = segment_path(dir, base_offset, LOG_SUFFIX);
    let file = storage.open(&path).map_err(|e| io_error(&path, e))?;
    let len = file.len().map_err(|e| io_error(&path, e))?;
    let modified_ms = file.modified_ms().unwrap_or(-1);
    Ok((file, len, modified_ms, path))
}

/// Segment age for `segment_ms_max`: the first batch's timestamp like Kafka, but never later
/// than the file's last modification (client timestamps can be anything).
fn roll_base_ms(first_batch: Option<&BatchHeader>, modified_ms: i64) -> i64 {
    match first_batch {
        Some(header) if header.max_timestamp >= 0 && modified_ms >= 0 => {
            header.max_timestamp.min(modified_ms)
        }
        Some(_) => modified_ms,
        None => -1,
    }
}

/// Scans the whole active segment with CRC checks and cuts it at the first bad batch.
fn recover_active_segment(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    base_offset: i64,
    interval_bytes: u64,
    key_index: bool,
) -> Result<Segment, LogError> {
    let (file, file_bytes, modified_ms, path) = open_log(storage.as_ref(), dir, base_offset)?;
    let scan = scan_file(
        file.as_ref(),
        &path,
        base_offset,
        0,
        file_bytes,
        true,
        interval_bytes,
        SegmentIndexes::new(key_index.then(|| key_index_runs(storage, dir, base_offset))),
    )?;
    if let Some(stop) = &scan.stop {
        tracing::warn!(
            segment = %path.display(),
            position = stop.position,
            reason = %stop.reason,
            cut_bytes = file_bytes - scan.valid_bytes,
            valid_bytes = scan.valid_bytes,
            offset_end = scan.offset_end,
            "recovery truncates torn or corrupt tail of the active segment"
        );
        file.set_len(scan.valid_bytes)
            .map_err(|e| io_error(&path, e))?;
    }
    // The open log calls everything it found durable, but after a process crash the tail may
    // still be only in the page cache: make it so before serving it.
    file.sync_all().map_err(|e| io_error(&path, e))?;
    let roll_base = roll_base_ms(scan.first_batch.as_ref(), modified_ms);
    let segment = Segment::from_parts(
        Arc::clone(storage),
        base_offset,
        path,
        file,
        scan.valid_bytes,
        scan.offset_end,
        scan.indexes,
        roll_base,
    );
    segment.write_index_files(false)?;
    Ok(segment)
}

/// Loads a rolled segment, trusting its log and reusing its index files when they check out.
/// `check_crcs` (after an unclean shutdown) also reports every batch whose CRC fails.
fn load_rolled_segment(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    base_offset: i64,
    interval_bytes: u64,
    check_crcs: bool,
) -> Result<Segment, LogError> {
    let (file, file_bytes, modified_ms, path) = open_log(storage.as_ref(), dir, base_offset)?;
    let file_ref = file.as_ref();
    let loaded = load_indexes(
        storage.as_ref(),
        dir,
        base_offset,
        file_ref,
        &path,
        file_bytes,
        interval_bytes,
    )?;
    let (mut scan, rebuilt) = match loaded {
        Some(scan) => (scan, false),
        None => {
            tracing::info!(segment = %path.display(), "rebuilding indexes from the log");
            (
                scan_file(
                    file_ref,
                    &path,
                    base_offset,
                    0,
                    file_bytes,
                    false,
                    interval_bytes,
                    SegmentIndexes::new(None),
                )?,
                true,
            )
        }
    };
    if let Some(stop) = &scan.stop {
        // A rolled segment was fsynced whole, so a bad header here is corruption rather than a
        // torn write, and it hides where the batches after it start. Serve the segment up to
        // it, but leave the bytes on disk for the operator: cutting them would make the loss
        // permanent.
        tracing::error!(segment = %path.display(), position = stop.position, reason = %stop.reason, valid_bytes = scan.valid_bytes, file_bytes, "corrupt batch header in a rolled segment: the batches after it are not served");
    }
    if check_crcs {
        report_corrupt_batches(file_ref, &path, scan.valid_bytes)?;
    }
    // The segment's age only matters if truncation makes it active again.
    let first_batch = first_batch_header(file_ref, &path, scan.valid_bytes);
    let roll_base = roll_base_ms(first_batch.as_ref(), modified_ms);
    let must_write_indexes = rebuilt || scan.stop.is_some();
    // Its key index, if kept, is loaded or rebuilt next (`load_key_index`); until then the
    // index writes below must leave its file alone.
    scan.indexes.key_index = KeyIndex::Incomplete;
    let segment = Segment::from_parts(
        Arc::clone(storage),
        base_offset,
        path,
        file,
        scan.valid_bytes,
        scan.offset_end,
        scan.indexes,
        roll_base,
    );
    if must_write_indexes {
        segment.write_index_files(true)?;
    }
    Ok(segment)
}

/// Uses a rolled segment's `.keyindex` when its header matches the segment, else rebuilds it
/// from the log and writes it (durably, as the other indexes of a rolled segment).
pub(crate) fn load_key_index(
    storage: &dyn Storage,
    dir: &Path,
    segment: &Segment,
    interval_bytes: u64,
) -> Result<(), LogError> {
    let path = segment_path(dir, segment.base_offset, KEY_INDEX_SUFFIX);
    let header = storage
        .open(&path)
        .ok()
        .and_then(|file| KeyIndexFileHeader::read(file.as_ref(), segment.size_bytes()).ok());
    if let Some(header) = header {
        segment.indexes.lock().key_index = KeyIndex::OnDisk(header);
        return Ok(());
    }
    tracing::info!(segment = %segment.log_path.display(), "rebuilding key index from the log");
    let scan = scan_file(
        segment.file.as_ref(),
        &segment.log_path,
        segment.base_offset,
        0,
        segment.size_bytes(),
        false,
        interval_bytes,
        SegmentIndexes::new(Some(key_index_runs(
            &segment.storage,
            dir,
            segment.base_offset,
        ))),
    )?;
    segment.indexes.lock().key_index = scan.indexes.key_index;
    if let Some(header) = segment.write_key_index_file()? {
        segment.key_index_written(header);
    }
    Ok(())
}

/// Logs every batch of a rolled segment whose CRC fails (reads refuse to serve them); keeps
/// going past them, since their headers still say where the next batch starts.
fn report_corrupt_batches(file: &dyn StorageFile, path: &Path, end: u64) -> Result<(), LogError> {
    let mut reader = BatchReader::new(file, path, 0, end, true);
    loop {
        match reader.next_batch() {
            Ok(Some(_)) => {}
            Ok(None) | Err(BatchReadError::Invalid { .. }) => return Ok(()),
            Err(BatchReadError::Checksum {
                position,
                header,
                reason,
            }) => {
                tracing::error!(
                    segment = %path.display(),
                    position,
                    base_offset = header.base_offset,
                    last_offset = header.last_offset(),
                    %reason,
                    "corrupt batch in a rolled segment: reads of it will fail"
                );
            }
            Err(BatchReadError::Log(error)) => return Err(error),
        }
    }
}

fn first_batch_header(file: &dyn StorageFile, path: &Path, end: u64) -> Option<BatchHeader> {
    BatchReader::new(file, path, 0, end, false)
        .next_batch()
        .ok()
        .flatten()
        .map(|(_, header)| header)
}

/// Reads and checks both index files, then scans the log from the last offset-index entry to
/// the end to find the segment's end (extending the indexes over that tail). `None` means the
/// index files cannot be trusted and must be rebuilt.
fn load_indexes(
    storage: &dyn Storage,
    dir: &Path,
    base_offset: i64,
    file: &dyn StorageFile,
    path: &Path,
    file_bytes: u64,
    interval_bytes: u64,
) -> Result<Option<SegmentScan>, LogError> {
    // Bounds on the index files: one entry per batch at most.
    let batches_max = file_bytes / BATCH_HEADER_BYTES as u64 + 1;
    let Some(offset_bytes) = read_small_file(
        storage,
        &segment_path(dir, base_offset, INDEX_SUFFIX),
        batches_max * 8,
    ) else {
        return Ok(None);
    };
    let Some(time_bytes) = read_small_file(
        storage,
        &segment_path(dir, base_offset, TIME_INDEX_SUFFIX),
        batches_max * 12,
    ) else {
        return Ok(None);
    };
    let Ok(offset_index) = OffsetIndex::from_bytes(&offset_bytes, file_bytes) else {
        return Ok(None);
    };
    let Ok(time_index) = TimeIndex::from_bytes(&time_bytes, u32::MAX as u64) else {
        return Ok(None);
    };

    // Resume where the index left off: Kafka's indexing state right after adding that entry.
    let (resume_position, resume_relative) = match offset_index.last() {
        Some(entry) => (entry.position as u64, entry.relative_offset),
        None => (0, 0),
    };
    let mut indexes = SegmentIndexes {
        offset_index,
        time_index,
        bytes_since_entry: 0,
        timestamp_max: -1,
        relative_offset_of_timestamp_max: 0,
        key_index: KeyIndex::Disabled,
    };
    if let Some(entry) = indexes.time_index.last() {
        indexes.timestamp_max = entry.timestamp;
        indexes.relative_offset_of_timestamp_max = entry.relative_offset;
    }
    if resume_position > 0 {
        // The entry must point at the batch it names.
        let mut reader = BatchReader::new(file, path, resume_position, file_bytes, false);
        match reader.next_batch() {
            Ok(Some((_, header))) if header.base_offset == base_offset + resume_relative as i64 => {
            }
            _ => return Ok(None),
        }
    }
    let scan = scan_file(
        file,
        path,
        base_offset,
        resume_position,
        file_bytes,
        false,
        interval_bytes,
        indexes,
    )?;
    if scan.stop.is_some() {
        return Ok(None);
    }
    if let Some(entry) = scan.indexes.time_index.last() {
        if entry.relative_offset as i64 >= scan.offset_end - base_offset {
            return Ok(None);
        }
    }
    Ok(Some(scan))
}

/// Reads a whole file if it exists and is no bigger than `bytes_max`.
fn read_small_file(storage: &dyn Storage, path: &Path, bytes_max: u64) -> Option<Vec<u8>> {
    let file = storage.open(path).ok()?;
    let length = file.len().ok()?;
    if length > bytes_max {
        return None;
    }
    let mut bytes = vec![0; length as usize];
    file.read_exact_at(&mut bytes, 0).ok()?;
    Some(bytes)
}

/// Makes created, removed and renamed files of `dir` durable (their directory entries).
pub(crate) fn sync_dir(storage: &dyn Storage, dir: &Path) -> Result<(), LogError> {
    storage.sync_dir(dir).map_err(|e| io_error(dir, e))
}

/// The partition's log start offset as last advanced by `PartitionLog::advance_log_start`
/// (Kafka's log-start-offset checkpoint, kept per partition). Segments alone cannot say it: the
/// start may fall inside the first segment.
const LOG_START_CHECKPOINT: &str = "log-start-offset";
const LOG_START_CHECKPOINT_VERSION: &str = "0";

/// Reads the log start checkpoint; `None` when there is none or it cannot be parsed (then the
/// start falls back to the first segment, which only ever exposes more, never loses data).
pub(crate) fn read_log_start_checkpoint(storage: &dyn Storage, dir: &Path) -> Option<i64> {
    let path = dir.join(LOG_START_CHECKPOINT);
    // Version line and one offset: a few dozen bytes; anything bigger is not ours.
    let bytes = read_small_file(storage, &path, 64)?;
    let parsed = std::str::from_utf8(&bytes).ok().and_then(|text| {
        let mut lines = text.lines();
        if lines.next()? != LOG_START_CHECKPOINT_VERSION {
            return None;
        }
        let offset: i64 = lines.next()?.trim().parse().ok()?;
        (offset >= 0).then_some(offset)
    });
    if parsed.is_none() {
        tracing::warn!(path = %path.display(), "ignoring unreadable log start checkpoint");
    }
    parsed
}

/// Writes the log start checkpoint atomically and durably: temporary file, fsync, rename,
/// directory fsync. A crash leaves the old or the new value, never a torn one (a leftover
/// temporary file is removed by the next recovery).
pub(crate) fn write_log_start_checkpoint(
    storage: &dyn Storage,
    dir: &Path,
    offset: i64,
) -> Result<(), LogError> {
    crate::checkpoint::write_durably(
        storage,
        dir,
        LOG_START_CHECKPOINT,
        format!("{LOG_START_CHECKPOINT_VERSION}\n{offset}\n").as_bytes(),
    )
}

/// Leaves the clean shutdown marker; the caller syncs the directory. Empty, so it needs no
/// fsync of its own.
pub(crate) fn write_clean_shutdown_marker(
    storage: &dyn Storage,
    dir: &Path,
) -> Result<(), LogError> {
    let path = dir.join(CLEAN_SHUTDOWN_MARKER);
    storage.create(&path).map_err(|e| io_error(&path, e))?;
    Ok(())
}

/// Removes the clean shutdown marker (after a flush, before the log changes again). Not made
/// durable: a marker that survives a crash only skips the diagnostic CRC scan of rolled
/// segments, which reads check anyway.
pub(crate) fn remove_clean_shutdown_marker(
    storage: &dyn Storage,
    dir: &Path,
) -> Result<(), LogError> {
    let path = dir.join(CLEAN_SHUTDOWN_MARKER);
    match storage.remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(&path, e)),
    }
}
