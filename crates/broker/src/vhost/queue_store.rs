//! A durable queue on disk: its persistent messages in one partition log, and what happened to
//! them in a second, the settle log. A message is in the queue until a settle record (ack,
//! reject, expiry, dead-lettering, purge...) names its offset. Settle records are written, not
//! fsynced: as in RabbitMQ, a settle lost to a power cut means a redelivery, never a loss.
//!
//! Settle-log records (the value of one record each):
//! - `A` + offsets (u64 BE...): these messages left the queue;
//! - `R` + pairs (start, end) (u64 BE...): every message in these offset ranges left the queue
//!   (a purge, without one offset per message);
//! - `D` + u64: every message below this offset may have been delivered (redelivered on restart);
//! - `S` + upto (u64) + pairs (start, end): a snapshot: below `upto`, exactly these offset
//!   ranges were still in the queue. The settle log's start is moved to its latest snapshot.
//!
//! Start-up reads the index, not the data: the live offsets are the message log's offset range
//! (it has no gaps: one message per offset) minus what the settle log names, so a backlog of
//! millions of messages is recovered without reading the log at all (only a queue with `x-max-length-bytes`, which needs exact body sizes, reads
//! its records once). Bodies are read on delivery, in batches ([`QueueStore::read_messages`]).
//!
//! Disk is reclaimed as messages are settled: the queue moves the message log's start to its
//! oldest live message ([`QueueStore::reclaim`]) and whole segments below it are deleted, with
//! or without a settle-log snapshot.

use std::path::Path;
use std::sync::Arc;

use sluice_log::{
    decode_records, Durability, LogConfig, PartitionLog, Record, RecordBatchBuilder, Storage,
};
use tokio::sync::Notify;

use super::message::Message;
use crate::group_commit::{DurableWait, GroupCommit};
use crate::{now_ms, BrokerError, StorageFailure};

const MESSAGES_DIR: &str = "messages";
/// Pending appends are written without waiting for the flusher beyond this many bytes.
const PENDING_BYTES_MAX: usize = 1 << 20;
/// Size of one written batch of pending appends.
const APPEND_BATCH_BYTES: usize = 256 << 10;

#[derive(Default)]
struct PendingAppends {
    /// The offset the next message gets: the log's end plus what is pending.
    next_offset: u64,
    records: Vec<Record>,
    bytes: usize,
}

fn record_bytes(record: &Record) -> usize {
    record.value.as_ref().map_or(0, Vec::len) + record.key.as_ref().map_or(0, Vec::len) + 64
}

/// Writes the pending appends, in order, as batches of about `APPEND_BATCH_BYTES`. On failure
/// they stay pending (their offsets are promised to in-memory entries) and are retried.
fn write_pending_appends(
    pending: &parking_lot::Mutex<PendingAppends>,
    log: &PartitionLog,
) -> Result<(), BrokerError> {
    let mut pending = pending.lock();
    while !pending.records.is_empty() {
        let mut bytes = 0;
        let count = pending
            .records
            .iter()
            .take_while(|record| {
                let size = record_bytes(record);
                let fits = bytes == 0 || bytes + size <= APPEND_BATCH_BYTES;
                if fits {
                    bytes += size;
                }
                fits
            })
            .count();
        let mut batch = RecordBatchBuilder::new();
        for record in pending.records.drain(..count) {
            batch.push(record);
        }
        if let Err(error) = log.append(&mut batch.build(), 0, now_ms()) {
            pending.records.splice(0..0, batch.into_records());
            return Err(error.into());
        }
        pending.bytes = pending.bytes.saturating_sub(bytes);
    }
    Ok(())
}

const SETTLES_DIR: &str = "settles";
/// Segment size of a queue's message log: disk comes back a segment at a time.
const MESSAGE_SEGMENT_BYTES: u64 = 64 << 20;
const READ_CHUNK_BYTES: usize = 4 << 20;
/// Snapshot the settle log when it has grown this much since the last snapshot.
const SETTLE_LOG_SNAPSHOT_BYTES: u64 = 16 << 20;
/// Settled offsets gathered before they are written without waiting for housekeeping.
const SETTLES_PER_RECORD: usize = 4096;

pub struct QueueStore {
    messages: Arc<PartitionLog>,
    /// Persistent messages given offsets but not yet written: the group commit's flusher
    /// writes them as one batch right before its fdatasync, so a burst of publishes costs one
    /// write and one checksum instead of one each.
    pending: Arc<parking_lot::Mutex<PendingAppends>>,
    settles: PartitionLog,
    /// Settled offsets not yet written: written when many gather, and by the vhost's
    /// housekeeping every few milliseconds. One write per ack would cost a syscall each.
    pending_settles: parking_lot::Mutex<Vec<u64>>,
    group_commit: Arc<GroupCommit>,
    settle_bytes_at_snapshot: parking_lot::Mutex<u64>,
}

/// Consecutive live messages found in the store when the queue was opened: offsets
/// `offset_first..offset_first + count`. Their bodies stay on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredRun {
    pub offset_first: u64,
    pub count: u64,
    /// Sum of the body sizes; 0 unless the store was opened with `body_sizes`.
    pub body_bytes: u64,
    pub maybe_delivered: bool,
}

/// Offset ranges `[start, end)`, sorted and not touching.
type Ranges = Vec<(u64, u64)>;

/// Sorts and merges overlapping or touching ranges.
pub(super) fn normalize_ranges(mut ranges: Ranges) -> Ranges {
    ranges.retain(|(s, e)| s < e);
    ranges.sort_unstable();
    let mut merged: Ranges = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some((_, last_end)) if start <= *last_end => *last_end = (*last_end).max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

/// `ranges` without the offsets in `remove` (both normalized).
fn subtract(ranges: &[(u64, u64)], remove: &[(u64, u64)]) -> Ranges {
    let mut out = Vec::new();
    let mut r = 0;
    for &(start, end) in ranges {
        let mut start = start;
        while r < remove.len() && remove[r].1 <= start {
            r += 1;
        }
        let mut i = r;
        while start < end {
            match remove.get(i) {
                Some(&(rs, re)) if rs < end => {
                    if rs > start {
                        out.push((start, rs));
                    }
                    start = start.max(re);
                    i += 1;
                }
                _ => {
                    out.push((start, end));
                    break;
                }
            }
        }
    }
    out
}

/// The offsets in both (normalized) range lists.
fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Ranges {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        let start = a[i].0.max(b[j].0);
        let end = a[i].1.min(b[j].1);
        if start < end {
            out.push((start, end));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

fn words(body: &[u8]) -> Vec<u64> {
    body.chunks_exact(8)
        .map(|c| {
            let mut word = [0u8; 8];
            word.copy_from_slice(c);
            u64::from_be_bytes(word)
        })
        .collect()
}

impl QueueStore {
    /// Opens (or creates) the store and recovers its live messages. `body_sizes` also reads
    /// every live record once to sum body sizes (for `x-max-length-bytes`).
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        message_bytes_max: u32,
        body_sizes: bool,
    ) -> Result<(QueueStore, Vec<RecoveredRun>), BrokerError> {
        QueueStore::open_with_segment_bytes(
            storage,
            dir,
            message_bytes_max,
            body_sizes,
            MESSAGE_SEGMENT_BYTES,
        )
    }

    fn open_with_segment_bytes(
        storage: Arc<dyn Storage>,
        dir: &Path,
        message_bytes_max: u32,
        body_sizes: bool,
        segment_bytes_max: u64,
    ) -> Result<(QueueStore, Vec<RecoveredRun>), BrokerError> {
        let messages_config = LogConfig {
            // Small segments: a segment goes as soon as all its messages are settled.
            segment_bytes_max,
            // Bodies are read sequentially in batches of up to `APPEND_BATCH_BYTES`: a sparse
            // index keeps the in-memory index of a huge backlog small.
            index_interval_bytes: 64 << 10,
            retention_bytes: -1,
            retention_ms: -1,
            batch_bytes_max: message_bytes_max.saturating_add(64 << 10),
            durability: Durability::Batch,
            // Queues are consumed in order, never queried by key.
            key_index: false,
            ..LogConfig::default()
        };
        let settles_config = LogConfig {
            segment_bytes_max: 8 << 20,
            retention_bytes: -1,
            retention_ms: -1,
            durability: Durability::Never,
            key_index: false,
            ..LogConfig::default()
        };
        let messages = Arc::new(PartitionLog::open_with(
            Arc::clone(&storage),
            &dir.join(MESSAGES_DIR),
            messages_config,
        )?);
        let settles = PartitionLog::open_with(storage, &dir.join(SETTLES_DIR), settles_config)?;
        let pending = Arc::new(parking_lot::Mutex::new(PendingAppends {
            next_offset: messages.log_end_offset() as u64,
            ..PendingAppends::default()
        }));
        let group_commit = {
            let pending = Arc::downgrade(&pending);
            let log = Arc::downgrade(&messages);
            GroupCommit::with_before_sync(
                Arc::clone(&messages),
                Arc::new(Notify::new()),
                Box::new(move || match (pending.upgrade(), log.upgrade()) {
                    (Some(pending), Some(log)) => write_pending_appends(&pending, &log),
                    _ => Ok(()),
                }),
            )
        };
        let store = QueueStore {
            messages,
            pending,
            settles,
            pending_settles: parking_lot::Mutex::new(Vec::new()),
            group_commit,
            settle_bytes_at_snapshot: parking_lot::Mutex::new(0),
        };
        let recovered = store.recover(body_sizes)?;
        *store.settle_bytes_at_snapshot.lock() = store.settles.size_bytes();
        Ok((store, recovered))
    }

    fn recover(&self, body_sizes: bool) -> Result<Vec<RecoveredRun>, BrokerError> {
        let mut snapshot: Option<(u64, Ranges)> = None;
        let mut settled: Ranges = Vec::new();
        let mut delivered_below = 0u64;
        for record in read_all(&self.settles)? {
            let Some(value) = record.value else { continue };
            let Some((&kind, body)) = value.split_first() else {
                continue;
            };
            let words = words(body);
            match kind {
                b'A' => settled.extend(words.into_iter().map(|o| (o, o.saturating_add(1)))),
                b'R' => settled.extend(words.chunks_exact(2).map(|r| (r[0], r[1]))),
                // The last mark wins: a clean shutdown replaces the window marks with the exact one.
                b'D' => delivered_below = words.first().copied().unwrap_or(0),
                b'S' => {
                    let upto = words.first().copied().unwrap_or(0);
                    let ranges = words[1.min(words.len())..]
                        .chunks_exact(2)
                        .map(|r| (r[0], r[1]))
                        .collect();
                    snapshot = Some((upto, normalize_ranges(ranges)));
                    settled.clear();
                }
                _ => {}
            }
        }
        // Every offset in the log: only `write_pending_appends` writes to it, a message per
        // offset, so its offsets have no gaps and nothing needs to be read to list them.
        let log_start = self.messages.log_start_offset().max(0) as u64;
        let end = self.messages.high_watermark().max(0) as u64;
        let stored: Ranges = vec![(log_start, end)];
        let mut live = normalize_ranges(stored);
        if let Some((upto, ranges)) = snapshot {
            // Below `upto` only what the snapshot names is live; above it, everything stored.
            let mut kept = intersect(&live, &ranges);
            kept.extend(intersect(&live, &[(upto, u64::MAX)]));
            live = normalize_ranges(kept);
        }
        let live = subtract(&live, &normalize_ranges(settled));
        let mut runs: Vec<RecoveredRun> = Vec::new();
        for (start, end) in live {
            // Split at the delivery mark: messages below it come back redelivered.
            let cut = delivered_below.clamp(start, end);
            for (first, end, maybe_delivered) in [(start, cut, true), (cut, end, false)] {
                if first < end {
                    runs.push(RecoveredRun {
                        offset_first: first,
                        count: end - first,
                        body_bytes: 0,
                        maybe_delivered,
                    });
                }
            }
        }
        if body_sizes {
            self.sum_body_sizes(&mut runs)?;
        }
        Ok(runs)
    }

    /// Reads the live records once and sums their body sizes into their runs.
    fn sum_body_sizes(&self, runs: &mut [RecoveredRun]) -> Result<(), BrokerError> {
        let mut index = 0;
        let Some(first) = runs.first() else {
            return Ok(());
        };
        let mut offset = first.offset_first as i64;
        let end = self.messages.high_watermark();
        while offset < end && index < runs.len() {
            let read = self.messages.read(offset, READ_CHUNK_BYTES)?;
            let records = decode_records(&read.records)?;
            let Some(next) = records.last().map(|r| r.offset + 1) else {
                break;
            };
            for record in records {
                let record_offset = record.offset.max(0) as u64;
                while index < runs.len()
                    && runs[index].offset_first + runs[index].count <= record_offset
                {
                    index += 1;
                }
                if let Some(run) = runs.get_mut(index) {
                    if run.offset_first <= record_offset {
                        run.body_bytes += record.value.as_ref().map_or(0, Vec::len) as u64;
                    }
                }
            }
            if next <= offset {
                break;
            }
            offset = next;
        }
        Ok(())
    }

    /// The stored messages from `offset` on, decoded, with their record timestamps: whole
    /// batches of about `bytes_max` in one read. Empty when `offset` is not yet readable
    /// (appended but not yet written and synced).
    pub fn read_messages(
        &self,
        offset: u64,
        bytes_max: usize,
    ) -> Result<Vec<(u64, Message, i64)>, BrokerError> {
        let read = self.messages.read(offset as i64, bytes_max)?;
        Ok(decode_records(&read.records)?
            .into_iter()
            .filter(|r| r.offset >= offset as i64)
            .map(|record| {
                let offset = record.offset as u64;
                let timestamp_ms = record.timestamp;
                (offset, Message::from_record(record), timestamp_ms)
            })
            .collect())
    }

    /// Writes a persistent message; the receiver resolves once it is fsynced.
    pub fn append(&self, message: &Message) -> Result<(u64, DurableWait), BrokerError> {
        // An offline log never writes again until a restart: refuse now (the publisher gets a
        // nack) rather than hold the message in memory and in pending appends for ever.
        if self.messages.is_offline() {
            return Err(BrokerError::Storage(StorageFailure::offline(format!(
                "queue log {} is offline after a storage failure; restart to recover it",
                self.messages.dir().display()
            ))));
        }
        let record = message.to_record(false);
        let size = record_bytes(&record);
        let (offset, full) = {
            let mut pending = self.pending.lock();
            let offset = pending.next_offset;
            pending.next_offset += 1;
            pending.records.push(record);
            pending.bytes += size;
            (offset, pending.bytes >= PENDING_BYTES_MAX)
        };
        if full {
            write_pending_appends(&self.pending, &self.messages)?;
        }
        let durable = self.group_commit.durable(offset as i64 + 1);
        Ok((offset, durable))
    }

    /// Records that these messages left the queue (written within a housekeeping tick).
    pub fn settle(&self, offsets: &[u64]) -> Result<(), BrokerError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let full = {
            let mut pending = self.pending_settles.lock();
            pending.extend_from_slice(offsets);
            pending.len() >= SETTLES_PER_RECORD
        };
        if full {
            self.write_pending_settles()?;
        }
        Ok(())
    }

    /// Records that every message in these offset ranges left the queue (written now).
    pub fn settle_ranges(&self, ranges: &[(u64, u64)]) -> Result<(), BrokerError> {
        if ranges.is_empty() {
            return Ok(());
        }
        let mut value = Vec::with_capacity(1 + ranges.len() * 16);
        value.push(b'R');
        for (start, end) in ranges {
            value.extend_from_slice(&start.to_be_bytes());
            value.extend_from_slice(&end.to_be_bytes());
        }
        self.write_settle_record(value)
    }

    pub fn write_pending_settles(&self) -> Result<(), BrokerError> {
        let offsets = std::mem::take(&mut *self.pending_settles.lock());
        if offsets.is_empty() {
            return Ok(());
        }
        let mut value = Vec::with_capacity(1 + offsets.len() * 8);
        value.push(b'A');
        for offset in offsets {
            value.extend_from_slice(&offset.to_be_bytes());
        }
        self.write_settle_record(value)
    }

    pub fn mark_delivered_below(&self, offset: u64) -> Result<(), BrokerError> {
        let mut value = vec![b'D'];
        value.extend_from_slice(&offset.to_be_bytes());
        self.write_settle_record(value)
    }

    fn write_settle_record(&self, value: Vec<u8>) -> Result<(), BrokerError> {
        let mut batch = RecordBatchBuilder::new();
        batch.push(Record {
            value: Some(value),
            timestamp: now_ms(),
            ..Record::default()
        });
        self.settles.append(&mut batch.build(), 0, now_ms())?;
        Ok(())
    }

    /// Whether the settle log has grown enough to be worth a snapshot.
    pub fn wants_snapshot(&self) -> bool {
        self.settles.size_bytes()
            > *self.settle_bytes_at_snapshot.lock() + SETTLE_LOG_SNAPSHOT_BYTES
    }

    /// The `upto` of a snapshot taken now: the durable end of the message log. Call it under
    /// the lock that orders `append`s and collect the live set under the same lock, so every
    /// offset below it is live or settled (see [`QueueStore::snapshot`]). The durable end, not
    /// the written or assigned one: an offset that a power cut can take back may be given to
    /// another message after the restart, which the snapshot would then wrongly cover.
    pub fn snapshot_upto(&self) -> u64 {
        self.messages.high_watermark().max(0) as u64
    }

    /// Records which offsets below `upto` are still in the queue (`live`: normalized ranges,
    /// which must include every message below `upto` still ready or unacked, with `upto` from
    /// [`QueueStore::snapshot_upto`] taken together with them) and drops the settle records
    /// before it. Offsets at or above `upto` are left to the settle records that follow.
    pub fn snapshot(
        &self,
        live: &[(u64, u64)],
        delivered_below: u64,
        upto: u64,
    ) -> Result<(), BrokerError> {
        self.write_pending_settles()?;
        let ranges = intersect(live, &[(0, upto)]);
        let mut value = Vec::with_capacity(9 + ranges.len() * 16);
        value.push(b'S');
        value.extend_from_slice(&upto.to_be_bytes());
        for (start, end) in &ranges {
            value.extend_from_slice(&start.to_be_bytes());
            value.extend_from_slice(&end.to_be_bytes());
        }
        let mut batch = RecordBatchBuilder::new();
        batch.push(Record {
            value: Some(value),
            timestamp: now_ms(),
            ..Record::default()
        });
        let info = self.settles.append(&mut batch.build(), 0, now_ms())?;
        self.mark_delivered_below(delivered_below)?;
        self.settles.flush()?;
        self.settles.advance_log_start(info.base_offset)?;
        self.settles.enforce_retention(now_ms())?;
        *self.settle_bytes_at_snapshot.lock() = self.settles.size_bytes();
        Ok(())
    }

    /// Frees the disk of settled messages: moves the message log's start to `oldest_live`
    /// (the oldest message still ready or unacked, or [`QueueStore::snapshot_upto`] taken
    /// together with the live set when there is none) and deletes the segments wholly below
    /// it. Recovery never looks below the log start, so no settle record is needed for them.
    /// Does nothing unless that frees at least `offsets_min` offsets or empties the log.
    pub fn reclaim(&self, oldest_live: u64, offsets_min: u64) -> Result<(), BrokerError> {
        let high_watermark = self.messages.high_watermark();
        let start = (oldest_live as i64).min(high_watermark);
        let log_start = self.messages.log_start_offset();
        if start <= log_start
            || (start < high_watermark && ((start - log_start) as u64) < offsets_min)
        {
            return Ok(());
        }
        self.messages.advance_log_start(start)?;
        self.messages.enforce_retention(now_ms())?;
        Ok(())
    }

    /// Bytes of the message log on disk.
    #[cfg(test)]
    pub fn message_log_bytes(&self) -> u64 {
        self.messages.size_bytes()
    }

    pub fn flush(&self) -> Result<(), BrokerError> {
        write_pending_appends(&self.pending, &self.messages)?;
        self.write_pending_settles()?;
        self.settles.flush()?;
        self.messages.flush()?;
        Ok(())
    }
}

fn read_all(log: &PartitionLog) -> Result<Vec<Record>, BrokerError> {
    let mut records = Vec::new();
    let mut offset = log.log_start_offset();
    let end = log.high_watermark();
    while offset < end {
        let read = log.read(offset, READ_CHUNK_BYTES)?;
        if read.records.is_empty() {
            break;
        }
        let batch_records = decode_records(&read.records)?;
        let Some(last) = batch_records.last() else {
            break;
        };
        let next = last.offset + 1;
        records.extend(batch_records.into_iter().filter(|r| r.offset >= offset));
        if next <= offset {
            break;
        }
        offset = next;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn message(n: u64) -> Message {
        Message {
            exchange: String::new(),
            routing_key: "q".into(),
            properties: crate::vhost::MessageProperties {
                delivery_mode: Some(2),
                ..Default::default()
            },
            body: Bytes::from(format!("m{n}")),
        }
    }

    /// The recovered messages' bodies (read from the log, as a delivery would) and marks.
    fn bodies(store: &QueueStore, recovered: &[RecoveredRun]) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        for run in recovered {
            let messages = store.read_messages(run.offset_first, 1 << 20).unwrap();
            for (_, message, _) in messages.into_iter().take(run.count as usize) {
                out.push((
                    String::from_utf8_lossy(&message.body).into_owned(),
                    run.maybe_delivered,
                ));
            }
        }
        out
    }

    #[tokio::test]
    async fn reopen_recovers_unsettled_messages_with_delivery_marks() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, recovered) =
                QueueStore::open(Arc::new(sluice_log::RealDisk), dir.path(), 1 << 20, false)
                    .unwrap();
            assert!(recovered.is_empty());
            for n in 0..6 {
                let (offset, durable) = store.append(&message(n)).unwrap();
                assert_eq!(offset, n);
                durable.await.unwrap().unwrap();
            }
            store.settle(&[0, 2]).unwrap();
            store.mark_delivered_below(4).unwrap();
            store.flush().unwrap();
        }
        let (store, recovered) =
            QueueStore::open(Arc::new(sluice_log::RealDisk), dir.path(), 1 << 20, false).unwrap();
        assert_eq!(
            bodies(&store, &recovered),
            vec![
                ("m1".into(), true),
                ("m3".into(), true),
                ("m4".into(), false),
                ("m5".into(), false)
            ]
        );
        // A snapshot keeps exactly the live set; settles after it still count.
        store.snapshot(&[(3, 6)], 4, store.snapshot_upto()).unwrap();
        store.settle(&[4]).unwrap();
        store.write_pending_settles().unwrap();
        drop(store);
        let (store, recovered) =
            QueueStore::open(Arc::new(sluice_log::RealDisk), dir.path(), 1 << 20, false).unwrap();
        assert_eq!(
            bodies(&store, &recovered),
            vec![("m3".into(), true), ("m5".into(), false)]
        );
    }

    /// The queue collects its live set and the snapshot's `upto` together; a message that
    /// becomes durable after that (the gap before `snapshot` runs) is above `upto` and must
    /// survive. Reading `upto` from the log end inside `snapshot` lost it.
    #[tokio::test]
    async fn message_made_durable_while_a_snapshot_is_taken_survives_recovery() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) =
                QueueStore::open(Arc::new(sluice_log::RealDisk), dir.path(), 1 << 20, false)
                    .unwrap();
            let (_, durable) = store.append(&message(0)).unwrap();
            durable.await.unwrap().unwrap();
            // Under the queue lock: the live set and `upto`.
            let live = [(0, 1)];
            let upto = store.snapshot_upto();
            // The gap: another publish is appended and made durable.
            let (offset, durable) = store.append(&message(1)).unwrap();
            assert_eq!(offset, 1);
            durable.await.unwrap().unwrap();
            store.snapshot(&live, 0, upto).unwrap();
            store.flush().unwrap();
        }
        let (store, recovered) =
            QueueStore::open(Arc::new(sluice_log::RealDisk), dir.path(), 1 << 20, false).unwrap();
        assert_eq!(
            bodies(&store, &recovered),
            vec![("m0".into(), false), ("m1".into(), false)]
        );
    }

    #[tokio::test]
    async fn settles_not_yet_written_are_undone_by_a_crash_never_losing_a_message() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) =
                QueueStore::open(Arc::new(sluice_log::RealDisk), dir.path(), 1 << 20, false)
                    .unwrap();
            let (_, durable) = store.append(&message(0)).unwrap();
            durable.await.unwrap().unwrap();
            store.settle(&[0]).unwrap();
            // Dropped without a housekeeping tick or flush: as if killed.
            std::mem::forget(store);
        }
        let (store, recovered) =
            QueueStore::open(Arc::new(sluice_log::RealDisk), dir.path(), 1 << 20, false).unwrap();
        assert_eq!(bodies(&store, &recovered), vec![("m0".into(), false)]);
    }

    #[test]
    fn offset_ranges_subtract_and_intersect() {
        let live = normalize_ranges(vec![(5, 9), (0, 3), (3, 4), (20, 30)]);
        assert_eq!(live, vec![(0, 4), (5, 9), (20, 30)]);
        let settled = normalize_ranges(vec![(1, 2), (6, 22), (29, 40)]);
        assert_eq!(
            subtract(&live, &settled),
            vec![(0, 1), (2, 4), (5, 6), (22, 29)]
        );
        assert_eq!(
            intersect(&live, &[(2, 6), (25, 100)]),
            vec![(2, 4), (5, 6), (25, 30)]
        );
        assert_eq!(subtract(&live, &[]), live);
    }

    /// Start-up reads batch headers and the settle log, not bodies: a purge of a whole run is
    /// one range record, and body sizes are summed only when asked for.
    #[tokio::test]
    async fn recovery_gives_runs_of_live_offsets_split_at_the_delivery_mark() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) =
                QueueStore::open(Arc::new(sluice_log::RealDisk), dir.path(), 1 << 20, false)
                    .unwrap();
            for n in 0..10 {
                let (_, durable) = store.append(&message(n)).unwrap();
                durable.await.unwrap().unwrap();
            }
            store.settle(&[2]).unwrap();
            store.settle_ranges(&[(5, 7)]).unwrap();
            store.mark_delivered_below(4).unwrap();
            store.flush().unwrap();
        }
        let (store, recovered) =
            QueueStore::open(Arc::new(sluice_log::RealDisk), dir.path(), 1 << 20, true).unwrap();
        let run = |offset_first, count, maybe_delivered| RecoveredRun {
            offset_first,
            count,
            // "mN" bodies are two bytes each.
            body_bytes: 2 * count,
            maybe_delivered,
        };
        assert_eq!(
            recovered,
            vec![
                run(0, 2, true),
                run(3, 1, true),
                run(4, 1, false),
                run(7, 3, false)
            ]
        );
        assert_eq!(
            bodies(&store, &recovered[3..]),
            vec![
                ("m7".into(), false),
                ("m8".into(), false),
                ("m9".into(), false)
            ]
        );
    }

    /// A segment whose messages are all settled is deleted by `reclaim` alone, without a
    /// settle-log snapshot, and recovery starts at the oldest live message.
    #[tokio::test]
    async fn reclaim_deletes_settled_segments_without_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let body = Bytes::from(vec![7u8; 4096]);
        {
            let (store, _) = QueueStore::open_with_segment_bytes(
                Arc::new(sluice_log::RealDisk),
                dir.path(),
                1 << 20,
                false,
                64 << 10,
            )
            .unwrap();
            for _ in 0..200 {
                let mut m = message(0);
                m.body = body.clone();
                let (_, durable) = store.append(&m).unwrap();
                durable.await.unwrap().unwrap();
            }
            let before = store.message_log_bytes();
            assert!(before > 800 << 10, "{before}");
            store.reclaim(150, 1).unwrap();
            let after = store.message_log_bytes();
            assert!(after < 300 << 10, "{before} -> {after}");
            assert!(!store.wants_snapshot());
        }
        let (_store, recovered) = QueueStore::open_with_segment_bytes(
            Arc::new(sluice_log::RealDisk),
            dir.path(),
            1 << 20,
            false,
            64 << 10,
        )
        .unwrap();
        assert_eq!(
            recovered,
            vec![RecoveredRun {
                offset_first: 150,
                count: 50,
                body_bytes: 0,
                maybe_delivered: false
            }]
        );
    }
}
