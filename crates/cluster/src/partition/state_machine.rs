//! openraft's `RaftStateMachine`: applying an entry commits its batch (the high watermark moves
//! past it); the snapshot is the log itself (see the module documentation of `partition`).

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use sluice_log::{validate_batches, BatchHeader, LogError};
use tokio::sync::watch;

use super::{
    control, now_ms, write_json, ApplyProgress, PartitionApplied, PartitionRaft,
    PartitionRaftError, PartitionView, Shared, TermHistory, INSTALL_MARKER_FILE,
    SNAPSHOT_BYTES_MAX, SNAPSHOT_FILE,
};
use crate::{NodeAddress, NodeId};

/// First bytes of a partition snapshot's data.
const SNAPSHOT_MAGIC: &[u8; 8] = b"SLSNAP01";
const SNAPSHOT_HEADER_BYTES: usize = 24;
const READ_CHUNK_BYTES: usize = 1 << 20;

/// `raft-snapshot`: the latest snapshot's meta and the end offset of its last entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotRecord {
    pub meta: SnapshotMeta<NodeId, NodeAddress>,
    pub offset_end: i64,
}

/// The partition's state machine: the last applied log id, the last membership, and through
/// the shared log the high watermark.
pub struct PartitionStateMachine {
    shared: Arc<Shared>,
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, NodeAddress>,
}

/// Builds a snapshot of the state as it was when openraft asked for the builder.
pub struct PartitionSnapshotBuilder {
    shared: Arc<Shared>,
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, NodeAddress>,
}

fn sm_failure(error: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(AnyError::new(&error)).into()
}

fn snapshot_read_failure(error: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_snapshot(None, AnyError::new(&error)).into()
}

fn snapshot_write_failure(error: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, AnyError::new(&error)).into()
}

impl PartitionStateMachine {
    pub(crate) fn new(shared: Arc<Shared>, snapshot: Option<SnapshotRecord>) -> Self {
        let (last_applied, last_membership) = match snapshot {
            Some(record) => (record.meta.last_log_id, record.meta.last_membership),
            None => (None, StoredMembership::default()),
        };
        PartitionStateMachine {
            shared,
            last_applied,
            last_membership,
        }
    }

    /// The high watermark and last applied log id, updated after every apply: wake fetchers
    /// and answer `acks=all` from it.
    pub fn progress(&self) -> watch::Receiver<ApplyProgress> {
        self.shared.progress.subscribe()
    }

    pub fn view(&self) -> PartitionView {
        PartitionView {
            shared: Arc::clone(&self.shared),
        }
    }

    fn publish(&self, high_watermark: i64) {
        self.shared.progress.send_replace(ApplyProgress {
            last_applied: self.last_applied,
            high_watermark,
        });
    }

    /// Replaces the log with the snapshot's batches unless it already holds the snapshot's
    /// last entry. Returns the snapshot's end offset.
    fn install(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeAddress>,
        data: &[u8],
    ) -> Result<i64, PartitionRaftError> {
        let (start, end, batches) = parse_snapshot(data)?;
        let shared = &self.shared;
        let Some(last) = meta.last_log_id else {
            return Err(PartitionRaftError::Decode(
                "snapshot without a last log id".into(),
            ));
        };
        let mut index = shared.index.lock();
        if index.log_id_at(last.index) == Some(last) {
            tracing::info!(dir = %shared.dir.display(), %last, "snapshot install: the log already holds it");
            return Ok(end);
        }
        let headers = validate_batches(batches)?;
        check_contiguous(&headers, start, end)?;
        write_json(
            shared.storage.as_ref(),
            &shared.dir,
            INSTALL_MARKER_FILE,
            &meta,
        )?;
        shared.log.truncate_fully_and_start_at(start)?;
        let mut terms = TermHistory::new();
        let mut leaders = std::collections::BTreeMap::new();
        let mut position = 0;
        let mut run_start = 0;
        // One append per run of batches of the same epoch: the log stamps one epoch per call.
        while run_start < headers.len() {
            let epoch = headers[run_start].partition_leader_epoch;
            let run_end = headers[run_start..]
                .iter()
                .position(|h| h.partition_leader_epoch != epoch)
                .map_or(headers.len(), |n| run_start + n);
            let run_bytes: usize = headers[run_start..run_end]
                .iter()
                .map(BatchHeader::total_bytes)
                .sum();
            let mut run = batches[position..position + run_bytes].to_vec();
            let appended = shared.log.append(&mut run, epoch, now_ms())?;
            if appended.base_offset != headers[run_start].base_offset {
                return Err(PartitionRaftError::Inconsistent {
                    dir: shared.dir.clone(),
                    reason: format!(
                        "snapshot batch at {} landed at {}",
                        headers[run_start].base_offset, appended.base_offset
                    ),
                });
            }
            let mut batch_position = position;
            for header in &headers[run_start..run_end] {
                terms.on_batch(header.partition_leader_epoch, header.base_offset);
                let batch = &batches[batch_position..batch_position + header.total_bytes()];
                if let (Some(leader), Ok(term)) = (
                    super::control::control_leader(header, batch),
                    u64::try_from(header.partition_leader_epoch),
                ) {
                    leaders.entry(term).or_insert(leader);
                }
                batch_position += header.total_bytes();
            }
            position += run_bytes;
            run_start = run_end;
        }
        shared.log.sync(end)?;
        index.reset_after_install(last, end, terms, leaders);
        index.save(shared.storage.as_ref(), &shared.dir)?;
        shared.log.set_retention_floor(index.first_offset());
        shared
            .storage
            .remove_file(&shared.dir.join(INSTALL_MARKER_FILE))
            .and_then(|()| shared.storage.sync_dir(&shared.dir))
            .map_err(|e| {
                PartitionRaftError::Log(sluice_log::LogError::Io {
                    path: shared.dir.join(INSTALL_MARKER_FILE),
                    source: e,
                })
            })?;
        tracing::info!(dir = %shared.dir.display(), %last, start, end, batches = headers.len(), "installed snapshot: log replaced");
        Ok(end)
    }
}

/// `(start offset, end offset, batches)` of snapshot data.
fn parse_snapshot(data: &[u8]) -> Result<(i64, i64, &[u8]), PartitionRaftError> {
    let bad = |reason: &str| PartitionRaftError::Decode(format!("snapshot data: {reason}"));
    if data.len() < SNAPSHOT_HEADER_BYTES || &data[..8] != SNAPSHOT_MAGIC {
        return Err(bad("missing header"));
    }
    let mut field = [0u8; 8];
    field.copy_from_slice(&data[8..16]);
    let start = i64::from_be_bytes(field);
    field.copy_from_slice(&data[16..24]);
    let end = i64::from_be_bytes(field);
    if start < 0 || end < start {
        return Err(bad("bad offsets"));
    }
    Ok((start, end, &data[SNAPSHOT_HEADER_BYTES..]))
}

fn check_contiguous(
    headers: &[BatchHeader],
    start: i64,
    end: i64,
) -> Result<(), PartitionRaftError> {
    let mut next = start;
    for header in headers {
        if header.base_offset != next {
            return Err(PartitionRaftError::Decode(format!(
                "snapshot batch at {} where {next} was expected",
                header.base_offset
            )));
        }
        next = header.last_offset() + 1;
    }
    if next != end {
        return Err(PartitionRaftError::Decode(format!(
            "snapshot batches end at {next}, not at {end}"
        )));
    }
    Ok(())
}

/// Snapshot data for the log up to `offset_end`: the newest batches from the log start that
/// fit [`SNAPSHOT_BYTES_MAX`].
fn snapshot_data(shared: &Shared, offset_end: i64) -> Result<Vec<u8>, PartitionRaftError> {
    let log = &shared.log;
    let start = log.tail_start(offset_end, SNAPSHOT_BYTES_MAX)?;
    // The state machine can only be ahead of the log when driven apart from it (openraft's
    // storage tests): the data is what the log holds.
    let end = offset_end.min(log.log_end_offset()).max(start);
    let mut data = Vec::with_capacity(SNAPSHOT_HEADER_BYTES);
    data.extend_from_slice(SNAPSHOT_MAGIC);
    data.extend_from_slice(&start.to_be_bytes());
    data.extend_from_slice(&end.to_be_bytes());
    let mut offset = start;
    while offset < end {
        let read = log.read_uncommitted(offset, READ_CHUNK_BYTES)?;
        if read.records.is_empty() {
            break;
        }
        let mut position = 0;
        while position < read.records.len() {
            let header = BatchHeader::parse(&read.records[position..])?;
            if header.base_offset >= end {
                break;
            }
            let total = header.total_bytes();
            // Reads return whole, CRC-checked batches; anything else is a broken invariant.
            let batch = read
                .records
                .get(position..position + total)
                .ok_or_else(|| PartitionRaftError::Inconsistent {
                    dir: shared.dir.clone(),
                    reason: format!("short batch at offset {}", header.base_offset),
                })?;
            data.extend_from_slice(batch);
            offset = header.last_offset() + 1;
            position += total;
        }
        if position < read.records.len() {
            break;
        }
    }
    if offset < end {
        return Err(PartitionRaftError::Inconsistent {
            dir: shared.dir.clone(),
            reason: format!("snapshot data ends at {offset}, below {end}"),
        });
    }
    Ok(data)
}

impl RaftSnapshotBuilder<PartitionRaft> for PartitionSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<PartitionRaft>, StorageError<NodeId>> {
        let shared = &self.shared;
        let offset_end = match self.last_applied {
            Some(applied) => shared
                .index
                .lock()
                .offset_end_through(applied.index, shared.log.log_end_offset()),
            None => shared.log.log_start_offset(),
        };
        let snapshot_id = match self.last_applied {
            Some(applied) => format!("{}-{}-{}", applied.leader_id.term, applied.index, now_ms()),
            None => format!("none-{}", now_ms()),
        };
        let record = SnapshotRecord {
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.last_membership.clone(),
                snapshot_id,
            },
            offset_end,
        };
        write_json(shared.storage.as_ref(), &shared.dir, SNAPSHOT_FILE, &record)
            .map_err(snapshot_write_failure)?;
        *shared.snapshot.lock() = Some(record.clone());
        tracing::debug!(dir = %shared.dir.display(), last = ?record.meta.last_log_id, offset_end, "built snapshot");
        // No data: openraft 0.9 keeps only the meta of a built snapshot (its state machine
        // worker answers the core with `snap.meta`) and calls `get_current_snapshot` when a
        // follower needs the data. Reading up to SNAPSHOT_BYTES_MAX here, every 5,000 entries,
        // was the largest CPU cost of a partition taking small produce requests.
        Ok(Snapshot {
            meta: record.meta,
            snapshot: Box::new(Cursor::new(Vec::new())),
        })
    }
}

impl RaftStateMachine<PartitionRaft> for PartitionStateMachine {
    type SnapshotBuilder = PartitionSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeAddress>), StorageError<NodeId>>
    {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<PartitionApplied>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<PartitionRaft>> + Send,
        I::IntoIter: Send,
    {
        let shared = Arc::clone(&self.shared);
        let mut responses = Vec::new();
        let mut high_watermark = None;
        // The furthest log start a DeleteRecords entry of these asks for.
        let mut log_start = None;
        {
            let index = shared.index.lock();
            let log_end = shared.log.log_end_offset();
            for entry in entries {
                let offsets = index.offsets_of(entry.log_id.index, log_end).or_else(|| {
                    // Read back from the log, a normal entry's batches carry their offsets.
                    match &entry.payload {
                        EntryPayload::Normal(normal) => stored_offsets(&normal.batch),
                        _ => None,
                    }
                });
                if let Some((_, end)) = offsets {
                    high_watermark = Some(end);
                }
                if let EntryPayload::Normal(normal) = &entry.payload {
                    if let Some(offset) = BatchHeader::parse(&normal.batch)
                        .ok()
                        .and_then(|header| control::log_start_request(&header, &normal.batch))
                    {
                        log_start = log_start.max(Some(offset));
                    }
                }
                if let EntryPayload::Membership(membership) = &entry.payload {
                    self.last_membership =
                        StoredMembership::new(Some(entry.log_id), membership.clone());
                }
                self.last_applied = Some(entry.log_id);
                let (base_offset, last_offset) = offsets.map_or((-1, -1), |(b, e)| (b, e - 1));
                responses.push(PartitionApplied {
                    log_id: entry.log_id,
                    base_offset,
                    last_offset,
                });
            }
        }
        let high_watermark = match high_watermark {
            Some(end) => shared.log.set_high_watermark(end).map_err(sm_failure)?,
            None => shared.log.high_watermark(),
        };
        if let Some(applied) = self.last_applied {
            shared.index.lock().tail.applied_through(applied.index);
        }
        if let Some(offset) = log_start {
            // Below the high watermark the entry itself moved (the offset was at or below the
            // leader's high watermark when proposed); durable before it is visible.
            match shared.log.advance_log_start(offset.min(high_watermark)) {
                Ok(_) => {}
                // Checked by the leader; a bad offset must not stop the group.
                Err(error @ LogError::OffsetOutOfRange { .. }) => {
                    tracing::warn!(%error, "ignored a log start entry")
                }
                Err(error) => return Err(sm_failure(error)),
            }
        }
        self.publish(high_watermark);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        PartitionSnapshotBuilder {
            shared: Arc::clone(&self.shared),
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeAddress>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let offset_end = self
            .install(meta, snapshot.get_ref())
            .map_err(snapshot_write_failure)?;
        let record = SnapshotRecord {
            meta: meta.clone(),
            offset_end,
        };
        let shared = Arc::clone(&self.shared);
        write_json(shared.storage.as_ref(), &shared.dir, SNAPSHOT_FILE, &record)
            .map_err(snapshot_write_failure)?;
        *shared.snapshot.lock() = Some(record);
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        let high_watermark = shared
            .log
            .set_high_watermark(offset_end)
            .map_err(sm_failure)?;
        self.publish(high_watermark);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<PartitionRaft>>, StorageError<NodeId>> {
        let Some(record) = self.shared.snapshot.lock().clone() else {
            return Ok(None);
        };
        let data = snapshot_data(&self.shared, record.offset_end).map_err(snapshot_read_failure)?;
        Ok(Some(Snapshot {
            meta: record.meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// `[base, end)` offsets of an entry's stored batches (offsets and epoch assigned); `None` for
/// batches as proposed.
fn stored_offsets(bytes: &[u8]) -> Option<(i64, i64)> {
    let headers = control::entry_headers(bytes).ok()?;
    if headers.iter().any(|h| h.partition_leader_epoch < 0) {
        return None;
    }
    Some((
        headers.first()?.base_offset,
        headers.last()?.last_offset() + 1,
    ))
}
