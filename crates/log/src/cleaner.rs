//! Log compaction (Kafka's log cleaner, `cleanup.policy=compact`): the rolled segments below an
//! end the owner gives (the last stable offset) keep only the last record of each key.
//!
//! One pass, driven by [`crate::PartitionLog::clean`]:
//! 1. The batch headers from the first cleanable segment to the log end tell which
//!    transactional batches were aborted (their markers may lie past the cleanable range) and
//!    which batch is each producer's last.
//! 2. An offset map: every key of the cleanable segments and the offset of its last record
//!    (aborted records do not count).
//! 3. Each cleanable segment is copied into `N.log.cleaned.tmp` keeping only the records the
//!    map points at. Batches keep their base offset, lastOffsetDelta, timestamps and producer
//!    fields, so offsets never move and consumers see gaps, as on Kafka. A batch left empty is
//!    dropped, unless it is its producer's last one: it stays without records, so a restarted
//!    broker still knows the producer's last sequence. Markers stay, aborted batches go,
//!    tombstones (null values) go once their segment is older than `delete.retention.ms`.
//! 4. The partition log swaps the copy in (see `PartitionLog::clean` for the crash order).
//!
//! The map holds whole keys: exact, but its memory grows with the distinct keys of the
//! cleanable range (Kafka bounds it with a fixed buffer of key hashes and cleans in rounds).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use crate::batch::{rebuild_batch, verify_crc, visit_raw_records};
use crate::segment::{io_error, segment_path, BatchReader, Segment};
use crate::storage::{Storage, StorageFile};
use crate::transaction_marker::{transaction_marker_result, TransactionResult};
use crate::{BatchHeader, LogError};

/// A segment's cleaned copy is written under this suffix; it ends in `.tmp`, so recovery
/// removes one left by a crash.
pub(crate) const CLEANED_SUFFIX: &str = "log.cleaned.tmp";

/// Output is written in chunks of about this many bytes.
const WRITE_CHUNK_BYTES: usize = 1 << 20;

/// What one cleaning pass did (for logs and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanStats {
    /// Segments rewritten.
    pub segments: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub records_removed: u64,
    /// The offset below which the log is now clean (the end of the cleaned range).
    pub clean_end: i64,
}

/// What the batch headers from the cleanable range to the log end say about producers.
#[derive(Debug, Default)]
pub(crate) struct ProducerScan {
    /// Base offsets of data batches of aborted transactions.
    aborted: HashSet<i64>,
    /// Base offsets of transactional data batches with no marker yet: kept as they are.
    undecided: HashSet<i64>,
    /// Per producer id, the base offset of its last data batch.
    last_batch: HashMap<i64, i64>,
}

impl ProducerScan {
    pub fn from_segments(segments: &[Arc<Segment>]) -> Result<ProducerScan, LogError> {
        let mut scan = ProducerScan::default();
        let mut open: HashMap<i64, Vec<i64>> = HashMap::new();
        for segment in segments {
            for_each_batch(segment, |header, read| {
                if header.producer_id < 0 {
                    return Ok(());
                }
                if header.is_control() {
                    if header.is_transactional() {
                        let batch = read()?;
                        match transaction_marker_result(header, &batch)? {
                            Some(TransactionResult::Abort) => scan
                                .aborted
                                .extend(open.remove(&header.producer_id).unwrap_or_default()),
                            Some(TransactionResult::Commit) => {
                                open.remove(&header.producer_id);
                            }
                            None => {}
                        }
                    }
                    return Ok(());
                }
                scan.last_batch
                    .insert(header.producer_id, header.base_offset);
                if header.is_transactional() {
                    open.entry(header.producer_id)
                        .or_default()
                        .push(header.base_offset);
                }
                Ok(())
            })?;
        }
        scan.undecided = open.into_values().flatten().collect();
        Ok(scan)
    }

    /// Whether the data batch at `base_offset` takes part in compaction (not aborted, not in
    /// a transaction still open).
    fn is_decided_data(&self, header: &BatchHeader) -> bool {
        !header.is_control()
            && !self.aborted.contains(&header.base_offset)
            && !self.undecided.contains(&header.base_offset)
    }
}

/// Every key of `segments` and the offset of its last record.
pub(crate) struct OffsetMap {
    latest: HashMap<Vec<u8>, i64>,
}

impl OffsetMap {
    pub fn build(
        segments: &[Arc<Segment>],
        producers: &ProducerScan,
    ) -> Result<OffsetMap, LogError> {
        let mut latest: HashMap<Vec<u8>, i64> = HashMap::new();
        for segment in segments {
            for_each_batch(segment, |header, read| {
                if !producers.is_decided_data(header) {
                    return Ok(());
                }
                let batch = read()?;
                visit_raw_records(header, &batch, |record| {
                    if let Some(key) = record.key {
                        let offset = header.base_offset + record.offset_delta as i64;
                        match latest.get_mut(key) {
                            Some(last) => *last = offset.max(*last),
                            None => {
                                latest.insert(key.to_vec(), offset);
                            }
                        }
                    }
                })
            })?;
        }
        Ok(OffsetMap { latest })
    }

    fn is_latest(&self, key: &[u8], offset: i64) -> bool {
        self.latest.get(key) == Some(&offset)
    }
}

/// A segment's cleaned copy, written and not yet synced.
pub(crate) struct CleanedSegment {
    pub path: PathBuf,
    pub file: Box<dyn StorageFile>,
    pub size_bytes: u64,
    pub records_removed: u64,
}

/// Writes the cleaned copy of `segment`; `None` when cleaning would not change it.
/// `remove_tombstones`: the segment is past `delete.retention.ms`. `keep_every_batch`: a
/// batch left without records stays, empty, instead of being dropped (a replicated log, whose
/// batches must follow each other without gaps).
pub(crate) fn clean_segment(
    storage: &Arc<dyn Storage>,
    segment: &Segment,
    map: &OffsetMap,
    producers: &ProducerScan,
    remove_tombstones: bool,
    keep_every_batch: bool,
) -> Result<Option<CleanedSegment>, LogError> {
    // A first pass decides; only a segment that changes is copied.
    let mut changes = false;
    for_each_batch(segment, |header, read| {
        if !changes
            && producers.aborted.contains(&header.base_offset)
            && !(keep_every_batch && header.record_count == 0)
        {
            changes = true;
        } else if !changes && producers.is_decided_data(header) {
            let batch = read()?;
            visit_raw_records(header, &batch, |record| {
                changes |= !keeps(map, header, &record, remove_tombstones);
            })?;
        }
        Ok(())
    })?;
    if !changes {
        return Ok(None);
    }

    let path = segment_path(segment.dir(), segment.base_offset, CLEANED_SUFFIX);
    let file = storage.create(&path).map_err(|e| io_error(&path, e))?;
    let mut out: Vec<u8> = Vec::with_capacity(WRITE_CHUNK_BYTES);
    let mut written = 0u64;
    let mut records_removed = 0u64;
    let mut kept: Vec<u8> = Vec::new();
    let copied = for_each_batch(segment, |header, read| {
        let batch = read()?;
        if producers.aborted.contains(&header.base_offset) {
            records_removed += header.record_count.max(0) as u64;
            if keep_every_batch {
                out.extend_from_slice(&rebuild_batch(&batch, &[], 0)?);
            }
        } else if !producers.is_decided_data(header) {
            out.extend_from_slice(&batch);
        } else {
            kept.clear();
            let mut kept_count = 0i32;
            visit_raw_records(header, &batch, |record| {
                if keeps(map, header, &record, remove_tombstones) {
                    kept.extend_from_slice(record.bytes);
                    kept_count += 1;
                }
            })?;
            records_removed += (header.record_count - kept_count).max(0) as u64;
            let producers_last = header.producer_id >= 0
                && producers.last_batch.get(&header.producer_id) == Some(&header.base_offset);
            if kept_count == header.record_count {
                out.extend_from_slice(&batch);
            } else if kept_count > 0 || producers_last || keep_every_batch {
                out.extend_from_slice(&rebuild_batch(&batch, &kept, kept_count)?);
            }
        }
        if out.len() >= WRITE_CHUNK_BYTES {
            file.write_all_at(&out, written)
                .map_err(|e| io_error(&path, e))?;
            written += out.len() as u64;
            out.clear();
        }
        Ok(())
    });
    let finished = copied.and_then(|()| {
        file.write_all_at(&out, written)
            .map_err(|e| io_error(&path, e))
    });
    if let Err(error) = finished {
        let _ = storage.remove_file(&path);
        return Err(error);
    }
    written += out.len() as u64;
    Ok(Some(CleanedSegment {
        path,
        file,
        size_bytes: written,
        records_removed,
    }))
}

/// Whether a record of a decided data batch survives cleaning.
fn keeps(
    map: &OffsetMap,
    header: &BatchHeader,
    record: &crate::batch::RawRecord<'_>,
    remove_tombstones: bool,
) -> bool {
    let Some(key) = record.key else {
        // Compacted topics refuse keyless records; any from before the policy changed stay.
        return true;
    };
    let offset = header.base_offset + record.offset_delta as i64;
    map.is_latest(key, offset) && !(record.tombstone && remove_tombstones)
}

/// Calls `visit` with each batch header of `segment` and a reader of the whole batch (CRC
/// checked: the cleaner never copies a corrupt batch, it stops with the error).
fn for_each_batch(
    segment: &Segment,
    mut visit: impl FnMut(
        &BatchHeader,
        &mut dyn FnMut() -> Result<Vec<u8>, LogError>,
    ) -> Result<(), LogError>,
) -> Result<(), LogError> {
    let mut reader = BatchReader::new(
        segment.file.as_ref(),
        &segment.log_path,
        0,
        segment.size_bytes(),
        false,
    );
    while let Some((position, header)) =
        crate::partition_log::next_stored_batch(segment, &mut reader)?
    {
        let mut read = || -> Result<Vec<u8>, LogError> {
            let mut batch = vec![0u8; header.total_bytes()];
            segment
                .file
                .read_exact_at(&mut batch, position)
                .map_err(|e| io_error(&segment.log_path, e))?;
            verify_crc(&header, &batch).map_err(|error| {
                crate::partition_log::corrupt_stored(segment, position, error.to_string())
            })?;
            Ok(batch)
        };
        visit(&header, &mut read)?;
    }
    Ok(())
}
