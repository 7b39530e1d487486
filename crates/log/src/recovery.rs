//! Opening a partition directory after a clean shutdown or a crash (Kafka's LogLoader).
//!
//! The last (active) segment is scanned batch by batch with CRC checks and cut at the first torn,
//! short or corrupt batch: its tail may hold a write that was in flight. Older segments were
//! fsynced when they were rolled, so they are trusted; only their indexes are checked and
//! rebuilt from the log when missing or inconsistent. Stray files are ignored.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::Path;
use std::time::UNIX_EPOCH;

use crate::batch::BATCH_HEADER_BYTES;
use crate::offset_index::OffsetIndex;
use crate::segment::TEMPORARY_SUFFIX;
use crate::segment::{
    io_error, scan_file, segment_path, BatchReader, Segment, SegmentIndexes, SegmentScan,
    INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX,
};
use crate::time_index::TimeIndex;
use crate::{BatchHeader, LogConfig, LogError};

/// Loads every segment of `dir` (creating the directory and a first empty segment if needed).
/// Returned segments are sorted by base offset; the last is the active one.
pub(crate) fn recover(dir: &Path, config: &LogConfig) -> Result<Vec<Segment>, LogError> {
    fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let base_offsets = list_segments(dir)?;
    let interval_bytes = config.index_interval_bytes as u64;
    let mut segments = Vec::with_capacity(base_offsets.len());
    let last_base = base_offsets.last().copied();
    for base_offset in base_offsets {
        let segment = if Some(base_offset) == last_base {
            recover_active_segment(dir, base_offset, interval_bytes)?
        } else {
            load_rolled_segment(dir, base_offset, interval_bytes)?
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
        let segment = Segment::create(dir, 0)?;
        segment.write_index_files(false)?;
        segments.push(segment);
        sync_dir(dir)?;
    }
    Ok(segments)
}

/// Base offsets of every `N.log`; removes index files whose log is gone.
fn list_segments(dir: &Path) -> Result<Vec<i64>, LogError> {
    let mut logs = BTreeSet::new();
    let mut indexes = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        let name = entry.file_name();
        if name
            .to_str()
            .is_some_and(|n| n.ends_with(&format!(".{TEMPORARY_SUFFIX}")))
        {
            let path = entry.path();
            tracing::debug!(path = %path.display(), "removing unfinished index file");
            fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
            continue;
        }
        if name == LOG_START_CHECKPOINT {
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
            fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
        }
    }
    Ok(logs.into_iter().collect())
}

fn parse_segment_file_name(name: &str) -> Option<(i64, &'static str)> {
    let (stem, suffix) = name.split_once('.')?;
    let suffix = [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX]
        .into_iter()
        .find(|s| *s == suffix)?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, suffix))
}

fn open_log(
    dir: &Path,
    base_offset: i64,
) -> Result<(File, u64, i64, std::path::PathBuf), LogError> {
    let path = segment_path(dir, base_offset, LOG_SUFFIX);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| io_error(&path, e))?;
    let metadata = file.metadata().map_err(|e| io_error(&path, e))?;
    let modified_ms = metadata
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(-1, |d| d.as_millis() as i64);
    Ok((file, metadata.len(), modified_ms, path))
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
    dir: &Path,
    base_offset: i64,
    interval_bytes: u64,
) -> Result<Segment, LogError> {
    let (file, file_bytes, modified_ms, path) = open_log(dir, base_offset)?;
    let scan = scan_file(
        &file,
        &path,
        base_offset,
        0,
        file_bytes,
        true,
        interval_bytes,
        SegmentIndexes::new(),
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
        file.sync_all().map_err(|e| io_error(&path, e))?;
    }
    let roll_base = roll_base_ms(scan.first_batch.as_ref(), modified_ms);
    let segment = Segment::from_parts(
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
fn load_rolled_segment(
    dir: &Path,
    base_offset: i64,
    interval_bytes: u64,
) -> Result<Segment, LogError> {
    let (file, file_bytes, modified_ms, path) = open_log(dir, base_offset)?;
    let (scan, rebuilt) =
        match load_indexes(dir, base_offset, &file, &path, file_bytes, interval_bytes)? {
            Some(scan) => (scan, false),
            None => {
                tracing::info!(segment = %path.display(), "rebuilding indexes from the log");
                (
                    scan_file(
                        &file,
                        &path,
                        base_offset,
                        0,
                        file_bytes,
                        false,
                        interval_bytes,
                        SegmentIndexes::new(),
                    )?,
                    true,
                )
            }
        };
    if let Some(stop) = &scan.stop {
        // A rolled segment was fsynced whole, so a bad batch here is corruption rather than a
        // torn write. Never serve it: cut the segment there.
        tracing::warn!(segment = %path.display(), position = stop.position, reason = %stop.reason, valid_bytes = scan.valid_bytes, "truncating corrupt rolled segment");
        file.set_len(scan.valid_bytes)
            .map_err(|e| io_error(&path, e))?;
    }
    // The segment's age only matters if truncation makes it active again.
    let first_batch = first_batch_header(&file, &path, scan.valid_bytes);
    let roll_base = roll_base_ms(first_batch.as_ref(), modified_ms);
    let must_write_indexes = rebuilt || scan.stop.is_some();
    let segment = Segment::from_parts(
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

fn first_batch_header(file: &File, path: &Path, end: u64) -> Option<BatchHeader> {
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
    dir: &Path,
    base_offset: i64,
    file: &File,
    path: &Path,
    file_bytes: u64,
    interval_bytes: u64,
) -> Result<Option<SegmentScan>, LogError> {
    // Bounds on the index files: one entry per batch at most.
    let batches_max = file_bytes / BATCH_HEADER_BYTES as u64 + 1;
    let Some(offset_bytes) = read_small_file(
        &segment_path(dir, base_offset, INDEX_SUFFIX),
        batches_max * 8,
    ) else {
        return Ok(None);
    };
    let Some(time_bytes) = read_small_file(
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
fn read_small_file(path: &Path, bytes_max: u64) -> Option<Vec<u8>> {
    let file = File::open(path).ok()?;
    let length = file.metadata().ok()?.len();
    if length > bytes_max {
        return None;
    }
    let mut bytes = Vec::with_capacity(length as usize);
    file.take(bytes_max).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// Makes created/removed segment files durable (their directory entries).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

/// The partition's log start offset as last advanced by `PartitionLog::advance_log_start`
/// (Kafka's log-start-offset checkpoint, kept per partition). Segments alone cannot say it: the
/// start may fall inside the first segment.
const LOG_START_CHECKPOINT: &str = "log-start-offset";
const LOG_START_CHECKPOINT_VERSION: &str = "0";

/// Reads the log start checkpoint; `None` when there is none or it cannot be parsed (then the
/// start falls back to the first segment, which only ever exposes more, never loses data).
pub(crate) fn read_log_start_checkpoint(dir: &Path) -> Option<i64> {
    let path = dir.join(LOG_START_CHECKPOINT);
    // Version line and one offset: a few dozen bytes; anything bigger is not ours.
    let bytes = read_small_file(&path, 64)?;
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
pub(crate) fn write_log_start_checkpoint(dir: &Path, offset: i64) -> Result<(), LogError> {
    use std::io::Write;
    let path = dir.join(LOG_START_CHECKPOINT);
    let temporary = dir.join(format!("{LOG_START_CHECKPOINT}.{TEMPORARY_SUFFIX}"));
    let mut file = File::create(&temporary).map_err(|e| io_error(&temporary, e))?;
    file.write_all(format!("{LOG_START_CHECKPOINT_VERSION}\n{offset}\n").as_bytes())
        .map_err(|e| io_error(&temporary, e))?;
    file.sync_all().map_err(|e| io_error(&temporary, e))?;
    fs::rename(&temporary, &path).map_err(|e| io_error(&path, e))?;
    sync_dir(dir)
}
