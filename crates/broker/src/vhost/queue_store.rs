//! A durable queue on disk: its persistent messages in one partition log, and what happened to
//! them in a second, the settle log. A message is in the queue until a settle record (ack,
//! reject, expiry, dead-lettering, purge...) names its offset. Settle records are written, not
//! fsynced: as in RabbitMQ, a settle lost to a power cut means a redelivery, never a loss.
//!
//! Settle-log records (the value of one record each):
//! - `A` + offsets (u64 BE...): these messages left the queue;
//! - `D` + u64: every message below this offset may have been delivered (redelivered on restart);
//! - `S` + upto (u64) + pairs (start, end): a snapshot: below `upto`, exactly these offset
//!   ranges were still in the queue. The settle log's start is moved to its latest snapshot.

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

/// A message found in the store when the queue was opened.
pub struct RecoveredMessage {
    pub offset: u64,
    pub message: Message,
    pub maybe_delivered: bool,
    pub timestamp_ms: i64,
}

impl QueueStore {
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        message_bytes_max: u32,
    ) -> Result<(QueueStore, Vec<RecoveredMessage>), BrokerError> {
        let messages_config = LogConfig {
            segment_bytes_max: 64 << 20,
            retention_bytes: -1,
            retention_ms: -1,
            batch_bytes_max: message_bytes_max.saturating_add(64 << 10),
            durability: Durability::Batch,
            ..LogConfig::default()
        };
        let settles_config = LogConfig {
            segment_bytes_max: 8 << 20,
            retention_bytes: -1,
            retention_ms: -1,
            durability: Durability::Never,
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
        let recovered = store.recover()?;
        *store.settle_bytes_at_snapshot.lock() = store.settles.size_bytes();
        Ok((store, recovered))
    }

    fn recover(&self) -> Result<Vec<RecoveredMessage>, BrokerError> {
        let mut snapshot: Option<(u64, Vec<(u64, u64)>)> = None;
        let mut settled = std::collections::HashSet::new();
        let mut delivered_below = 0u64;
        for record in read_all(&self.settles)? {
            let Some(value) = record.value else { continue };
            let Some((&kind, body)) = value.split_first() else {
                continue;
            };
            let words: Vec<u64> = body
                .chunks_exact(8)
                .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
                .collect();
            match kind {
                b'A' => settled.extend(words),
                // The last mark wins: a clean shutdown replaces the window marks with the exact one.
                b'D' => delivered_below = words.first().copied().unwrap_or(0),
                b'S' => {
                    let upto = words.first().copied().unwrap_or(0);
                    let ranges = words[1.min(words.len())..]
                        .chunks_exact(2)
                        .map(|r| (r[0], r[1]))
                        .collect();
                    snapshot = Some((upto, ranges));
                    settled.clear();
                }
                _ => {}
            }
        }
        let mut recovered = Vec::new();
        for record in read_all(&self.messages)? {
            let offset = record.offset as u64;
            let in_snapshot = match &snapshot {
                Some((upto, ranges)) if offset < *upto => {
                    ranges.iter().any(|(s, e)| (*s..*e).contains(&offset))
                }
                _ => true,
            };
            if !in_snapshot || settled.contains(&offset) {
                continue;
            }
            let timestamp_ms = record.timestamp;
            recovered.push(RecoveredMessage {
                offset,
                maybe_delivered: offset < delivered_below,
                timestamp_ms,
                message: Message::from_record(record),
            });
        }
        Ok(recovered)
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

    /// Records which offsets below `upto` are still in the queue (sorted `live` offsets, which
    /// must include every message below `upto` still ready or unacked, with `upto` from
    /// [`QueueStore::snapshot_upto`] taken together with them), drops the settle records before
    /// it and the message segments below the oldest live message. Offsets at or above `upto`
    /// are left to the settle records that follow.
    pub fn snapshot(
        &self,
        live: &[u64],
        delivered_below: u64,
        upto: u64,
    ) -> Result<(), BrokerError> {
        self.write_pending_settles()?;
        let live: Vec<u64> = live.iter().copied().filter(|&o| o < upto).collect();
        let live = &live[..];
        let mut value = vec![b'S'];
        value.extend_from_slice(&upto.to_be_bytes());
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for &offset in live {
            match ranges.last_mut() {
                Some((_, end)) if *end == offset => *end += 1,
                _ => ranges.push((offset, offset + 1)),
            }
        }
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
        let oldest_live = live.first().copied().unwrap_or(upto) as i64;
        let start = oldest_live.min(self.messages.high_watermark());
        self.messages.advance_log_start(start)?;
        self.messages.enforce_retention(now_ms())?;
        *self.settle_bytes_at_snapshot.lock() = self.settles.size_bytes();
        Ok(())
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

    fn bodies(recovered: &[RecoveredMessage]) -> Vec<(String, bool)> {
        recovered
            .iter()
            .map(|m| {
                (
                    String::from_utf8_lossy(&m.message.body).into_owned(),
                    m.maybe_delivered,
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn reopen_recovers_unsettled_messages_with_delivery_marks() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, recovered) =
                QueueStore::open(Arc::new(sluice_log::RealDisk), dir.path(), 1 << 20).unwrap();
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
            QueueStore::open(Arc::new(sluice_log::RealDisk), dir.path(), 1 << 20).unwrap();
        assert_eq!(
            bodies(&recovered),
            vec![
                ("m1".into(), true),
                ("m3".into(), true),
                ("m4".into(), false),
                ("m5".into(), false)
            ]
        );
        // A snapshot keeps exactly the live set; settles after it still count.
        store
            .snapshot(&[3, 4, 5], 4, store.snapshot_upto())
            .unwrap();
        store.settle(&[4]).unwrap();
        store.write_pending_settles().unwrap();
        drop(store);
        let (_store, recovered) =
            QueueStore::open(Arc::new(sluice_log::RealDisk), dir.path(), 1 << 20).unwrap();
        assert_eq!(
            bodies(&recovered),
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
                QueueStore::open(Arc::new(sluice_log::RealDisk), dir.path(), 1 << 20).unwrap();
            let (_, durable) = store.append(&message(0)).unwrap();
            durable.await.unwrap().unwrap();
            // Under the queue lock: the live set and `upto`.
            let live = [0];
            let upto = store.snapshot_upto();
            // The gap: another publish is appended and made durable.
            let (offset, durable) = store.append(&message(1)).unwrap();
            assert_eq!(offset, 1);
            durable.await.unwrap().unwrap();
            store.snapshot(&live, 0, upto).unwrap();
            store.flush().unwrap();
        }
        let (_store, recovered) =
            QueueStore::open(Arc::new(sluice_log::RealDisk), dir.path(), 1 << 20).unwrap();
        assert_eq!(
            bodies(&recovered),
            vec![("m0".into(), false), ("m1".into(), false)]
        );
    }

    #[tokio::test]
    async fn settles_not_yet_written_are_undone_by_a_crash_never_losing_a_message() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) =
                QueueStore::open(Arc::new(sluice_log::RealDisk), dir.path(), 1 << 20).unwrap();
            let (_, durable) = store.append(&message(0)).unwrap();
            durable.await.unwrap().unwrap();
            store.settle(&[0]).unwrap();
            // Dropped without a housekeeping tick or flush: as if killed.
            std::mem::forget(store);
        }
        let (_store, recovered) =
            QueueStore::open(Arc::new(sluice_log::RealDisk), dir.path(), 1 << 20).unwrap();
        assert_eq!(bodies(&recovered), vec![("m0".into(), false)]);
    }
}
