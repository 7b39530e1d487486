//! openraft's `RaftLogStorage` over the partition log.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, LogState, RaftLogReader, StorageError, StorageIOError,
    Vote,
};
use sluice_log::{AppendInfo, BatchHeader, PartitionLog};
use tokio::sync::mpsc;

use super::committed::CommittedFile;
use super::raft_index::RaftIndex;
use super::{
    control, log_id, now_ms, term_to_epoch, write_json, PartitionRaft, PartitionRaftError,
    PartitionView, Shared, VOTE_FILE,
};
use crate::NodeId;

/// Bytes read from the segments per step when reconstructing entries.
const READ_CHUNK_BYTES: usize = 1 << 20;
/// A stored entry larger than this is taken for a broken log (a producer batch is at most the
/// transport's message limit, an entry group is cut near 4 MiB).
const ENTRY_BYTES_MAX: usize = 1 << 30;

/// Batch bytes replication reads for one AppendEntries at most (one entry even if larger):
/// the transport's largest budget for a call, which sends those of them its current budget
/// allows. Below it, a partition whose producers send 1 MB batches replicated one batch per
/// round trip (the follower's fsync included) whatever the budget said.
pub const REPLICATION_BYTES_MAX: usize = 4 << 20;

/// The partition's Raft log (and vote). Clones of its reader serve replication concurrently.
pub struct PartitionLogStore {
    shared: Arc<Shared>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    committed_file: CommittedFile,
    /// Appended offsets waiting for their fsync; started with the first append (it needs a
    /// Tokio runtime).
    flusher: Option<mpsc::UnboundedSender<FlushRequest>>,
}

/// Reads entries (for replication and apply) while the log store appends.
#[derive(Clone)]
pub struct PartitionLogReader {
    shared: Arc<Shared>,
}

struct FlushRequest {
    offset_end: i64,
    callback: LogFlushed<PartitionRaft>,
}

fn io_failure(error: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::new(&error)).into()
}

fn read_failure(error: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(AnyError::new(&error)).into()
}

impl PartitionLogStore {
    pub(crate) fn new(
        shared: Arc<Shared>,
        vote: Option<Vote<NodeId>>,
        committed: Option<LogId<NodeId>>,
        committed_file: CommittedFile,
    ) -> PartitionLogStore {
        PartitionLogStore {
            shared,
            vote,
            committed,
            committed_file,
            flusher: None,
        }
    }

    pub fn view(&self) -> PartitionView {
        PartitionView {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Writes the entries' batches (stamping terms, assigning offsets) without waiting for the
    /// fsync; returns the log end after them. `append` is this plus a group-committed fsync
    /// before its callback. Public so tests can show what an unsynced append loses.
    pub fn write_entries(
        &mut self,
        entries: Vec<Entry<PartitionRaft>>,
    ) -> Result<i64, PartitionRaftError> {
        let shared = &self.shared;
        let mut index = shared.index.lock();
        // Entries Raft already purged are covered by the snapshot: there is nothing to store.
        let mut entries = entries;
        if let Some(purged) = index.last_purged() {
            entries.retain(|entry| entry.log_id.index > purged.index);
        }
        let Some(first) = entries.first() else {
            return Ok(shared.log.log_end_offset());
        };
        if index.anchor_for_append(first.log_id.index, shared.log.log_end_offset()) {
            index.save(shared.storage.as_ref(), &shared.dir)?;
            shared.log.set_retention_floor(index.first_offset());
        }
        if first.log_id.index != index.next_index() {
            return Err(PartitionRaftError::Inconsistent {
                dir: shared.dir.clone(),
                reason: format!(
                    "append at index {} but the next index is {}",
                    first.log_id.index,
                    index.next_index()
                ),
            });
        }
        for entry in &entries {
            let leader = entry.log_id.leader_id;
            if let Err(known) = index.record_leader(leader.term, leader.node_id) {
                return Err(PartitionRaftError::Inconsistent {
                    dir: shared.dir.clone(),
                    reason: format!(
                        "entry {} names leader {} of term {}, which node {known} leads",
                        entry.log_id.index, leader.node_id, leader.term
                    ),
                });
            }
        }
        let now_ms = now_ms();
        // One write per run of entries of the same term (usually all of them).
        let mut position = 0;
        while position < entries.len() {
            let term = entries[position].log_id.leader_id.term;
            let epoch = term_to_epoch(term)?;
            let run_end = entries[position..]
                .iter()
                .position(|e| e.log_id.leader_id.term != term)
                .map_or(entries.len(), |n| position + n);
            // The leader checked its own entries' CRCs when they were made; a follower checks
            // what it received (and what the transport carried).
            let checked = entries[position..run_end]
                .iter()
                .all(|entry| match &entry.payload {
                    EntryPayload::Normal(entry) => entry.crc_checked(),
                    EntryPayload::Blank | EntryPayload::Membership(_) => true,
                });
            // A follower receives the batches as its leader stored them, offsets and term
            // included: they are written as they are, without a copy (the slices keep the
            // request they came in alive while the tail cache holds them).
            if let Some((appended, written)) =
                append_stamped(shared, &entries[position..run_end], epoch, now_ms, checked)?
            {
                record_run(&mut index, epoch, &appended, written)?;
                position = run_end;
                continue;
            }
            // A lone entry whose bytes nothing else holds (an entry group, built by the
            // proposer for this append) is stamped where it is; anything else is copied once,
            // straight into the buffer the log stamps and writes (at 100 B per record this
            // copy is most of the append's own CPU).
            let (mut batches, spans) = match take_unique_batch(&mut entries[position..run_end]) {
                Some(batches) => {
                    let count = control::entry_batch_count(&batches)?;
                    let span = (entries[position].log_id.index, count, 0..batches.len());
                    (batches, vec![span])
                }
                None => copy_run(&entries[position..run_end])?,
            };
            let appended = if checked {
                shared.log.append_verified(&mut batches, epoch, now_ms)?
            } else {
                shared.log.append(&mut batches, epoch, now_ms)?
            };
            // The buffer now holds the batches as stored (stamping keeps their lengths): keep
            // each entry's for replication and apply.
            let stored = batches.freeze();
            let written = spans
                .into_iter()
                .map(|(index, batch_count, span)| WrittenEntry {
                    index,
                    batch_count,
                    bytes: stored.slice(span),
                })
                .collect();
            record_run(&mut index, epoch, &appended, written)?;
            position = run_end;
        }
        Ok(shared.log.log_end_offset())
    }

    fn flusher(&mut self) -> &mpsc::UnboundedSender<FlushRequest> {
        let log = Arc::clone(&self.shared.log);
        self.flusher.get_or_insert_with(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(run_flusher(log, receiver));
            sender
        })
    }
}

/// An entry's Raft index, its batch count and its bytes' span in a run's buffer.
type EntrySpan = (u64, usize, std::ops::Range<usize>);

/// The batch bytes of a run of one normal entry, taken out of it, when no other handle shares
/// them (so they can be stamped in place).
fn take_unique_batch(run: &mut [Entry<PartitionRaft>]) -> Option<BytesMut> {
    let [entry] = run else {
        return None;
    };
    let EntryPayload::Normal(payload) = &mut entry.payload else {
        return None;
    };
    match std::mem::take(&mut payload.batch).try_into_mut() {
        Ok(batches) => Some(batches),
        Err(shared) => {
            payload.batch = shared;
            None
        }
    }
}

/// A run's batches copied into one buffer (sized up front), with each entry's span; the
/// batches of each entry (1, or an entry group's head and members) are counted before anything
/// is written: the index must not drift from the log.
fn copy_run(
    run: &[Entry<PartitionRaft>],
) -> Result<(BytesMut, Vec<EntrySpan>), PartitionRaftError> {
    let run_bytes: usize = run
        .iter()
        .map(|entry| control::payload_len_hint(&entry.payload))
        .sum();
    let mut batches = Vec::with_capacity(run_bytes);
    let mut spans = Vec::with_capacity(run.len());
    for entry in run {
        let start = batches.len();
        control::encode_payload_into(&entry.payload, entry.log_id.leader_id.node_id, &mut batches)?;
        let count = control::entry_batch_count(&batches[start..])?;
        spans.push((entry.log_id.index, count, start..batches.len()));
    }
    // One handle to a fresh Vec: the conversion keeps the allocation.
    Ok((BytesMut::from(Bytes::from(batches)), spans))
}

/// An entry of a run just written: its Raft index, how many batches it holds and its bytes as
/// stored.
struct WrittenEntry {
    index: u64,
    batch_count: usize,
    bytes: Bytes,
}

/// Checks that a run's append wrote exactly the batches its entries hold, then records each
/// entry: its first offset in the index, its bytes in the tail cache.
fn record_run(
    index: &mut RaftIndex,
    epoch: i32,
    appended: &AppendInfo,
    written: Vec<WrittenEntry>,
) -> Result<(), PartitionRaftError> {
    let batch_count: usize = written.iter().map(|entry| entry.batch_count).sum();
    if appended.batches.len() != batch_count {
        return Err(PartitionRaftError::InvalidEntry(format!(
            "{} entries of {batch_count} batches wrote {} batches",
            written.len(),
            appended.batches.len()
        )));
    }
    // Each entry holds one batch at least (`entry_batch_count`): its first is its offset.
    let mut first_batch = 0;
    for entry in written {
        if let Some(header) = appended.batches.get(first_batch) {
            index.push(header.base_offset, epoch);
        }
        index.tail.push(entry.index, entry.bytes);
        first_batch += entry.batch_count;
    }
    Ok(())
}

/// Appends a run of entries of one term whose batches already carry the offsets and term the
/// log would stamp (see [`PartitionLog::append_stamped`]), as they are; `None`, with nothing
/// written, when any is a control entry this node encodes itself or the batches are not
/// stamped for this place in the log.
fn append_stamped(
    shared: &Shared,
    entries: &[Entry<PartitionRaft>],
    epoch: i32,
    now_ms: i64,
    crc_checked: bool,
) -> Result<Option<(AppendInfo, Vec<WrittenEntry>)>, PartitionRaftError> {
    // A leader's own entries (not stamped yet) go to the copy at once, before any work on
    // their batches: only a follower's start at the log end with the term's epoch.
    let stamped_here = match entries.first().map(|entry| &entry.payload) {
        Some(EntryPayload::Normal(data)) => BatchHeader::parse(&data.batch).is_ok_and(|header| {
            header.base_offset == shared.log.log_end_offset()
                && header.partition_leader_epoch == epoch
        }),
        _ => false,
    };
    if !stamped_here {
        return Ok(None);
    }
    let mut written = Vec::with_capacity(entries.len());
    for entry in entries {
        let EntryPayload::Normal(data) = &entry.payload else {
            return Ok(None);
        };
        written.push(WrittenEntry {
            index: entry.log_id.index,
            batch_count: control::entry_batch_count(&data.batch)?,
            bytes: data.batch.clone(),
        });
    }
    let chunks: Vec<&[u8]> = written.iter().map(|entry| &entry.bytes[..]).collect();
    let appended = shared
        .log
        .append_stamped(&chunks, epoch, now_ms, !crc_checked)?;
    Ok(appended.map(|appended| (appended, written)))
}

/// Completes append callbacks in order once their offsets are fsynced. Requests that queue up
/// during one fsync share the next (group commit on top of the log's own). A failed fsync
/// fails every waiting callback; the log is then offline and never reports those bytes synced.
async fn run_flusher(log: Arc<PartitionLog>, mut requests: mpsc::UnboundedReceiver<FlushRequest>) {
    while let Some(first) = requests.recv().await {
        let mut waiting = vec![first];
        while let Ok(next) = requests.try_recv() {
            waiting.push(next);
        }
        let offset_end = waiting.iter().map(|r| r.offset_end).max().unwrap_or(0);
        let sync_log = Arc::clone(&log);
        let failure = match tokio::task::spawn_blocking(move || sync_log.sync(offset_end)).await {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(error) => Some(format!("fsync task failed: {error}")),
        };
        for request in waiting {
            request.callback.log_io_completed(match &failure {
                None => Ok(()),
                Some(reason) => Err(io::Error::other(reason.clone())),
            });
        }
    }
}

impl PartitionLogReader {
    /// The entries in `range`, stopping before the one that would take their batches past
    /// `bytes_max` (the first is always included).
    fn entries(
        &self,
        range: impl RangeBounds<u64>,
        bytes_max: usize,
    ) -> Result<Vec<Entry<PartitionRaft>>, PartitionRaftError> {
        let log = &self.shared.log;
        let (start, spans, leaders, cached, mut bytes) = {
            let index = self.shared.index.lock();
            let start = match range.start_bound() {
                Bound::Included(&i) => i,
                Bound::Excluded(&i) => i.saturating_add(1),
                Bound::Unbounded => 0,
            }
            .max(index.first_index());
            let end = match range.end_bound() {
                Bound::Included(&i) => i.saturating_add(1),
                Bound::Excluded(&i) => i,
                Bound::Unbounded => u64::MAX,
            }
            .min(index.next_index());
            if start >= end {
                return Ok(Vec::new());
            }
            // Entries still in memory from their append need no read; the rest, if the byte
            // bound leaves room, come from the log.
            let mut cached = Vec::new();
            let mut bytes = 0usize;
            let mut full = false;
            while start + (cached.len() as u64) < end {
                let Some(batch) = index.tail.get(start + cached.len() as u64) else {
                    break;
                };
                if !cached.is_empty() && bytes.saturating_add(batch.len()) > bytes_max {
                    full = true;
                    break;
                }
                bytes += batch.len();
                cached.push(batch.clone());
            }
            // `[base, end)` offsets of each entry left to read.
            let mut spans = Vec::new();
            if !full {
                let log_end = log.log_end_offset();
                for entry_index in start + cached.len() as u64..end {
                    match index.offsets_of(entry_index, log_end) {
                        Some(span) => spans.push(span),
                        None => break,
                    }
                }
            }
            if cached.is_empty() && spans.is_empty() {
                return Ok(Vec::new());
            }
            (start, spans, index.leaders().clone(), cached, bytes)
        };
        let mut entries = Vec::with_capacity(cached.len() + spans.len().min(4096));
        let mut next = start;
        for batch in cached {
            let header = BatchHeader::parse(&batch)?;
            entries.push(self.entry(next, &header, batch, &leaders)?);
            next += 1;
        }
        let inconsistent = |reason: String| PartitionRaftError::Inconsistent {
            dir: self.shared.dir.clone(),
            reason,
        };
        let mut spans = spans.into_iter().peekable();
        let mut chunk = READ_CHUNK_BYTES;
        'read: while let Some(&(first_base, _)) = spans.peek() {
            let records = log.read_uncommitted(first_base, chunk)?.records;
            let mut position = 0;
            while let Some(&(base, stop)) = spans.peek() {
                let found = entry_in_read(&records, position, base, stop, |reason| {
                    inconsistent(format!("entry {next} {reason}"))
                })?;
                let Some((header, at)) = found else {
                    if position > 0 {
                        // The entry continues past this read: read again from it.
                        continue 'read;
                    }
                    if log.log_end_offset() < stop {
                        // Truncated under us: what was read is all there is.
                        break 'read;
                    }
                    // One entry larger than a read.
                    if chunk >= ENTRY_BYTES_MAX {
                        return Err(inconsistent(format!(
                            "entry {next} at offset {base} is over {ENTRY_BYTES_MAX} bytes"
                        )));
                    }
                    chunk = chunk.saturating_mul(2);
                    continue 'read;
                };
                let total = at - position;
                if !entries.is_empty() && bytes.saturating_add(total) > bytes_max {
                    break 'read;
                }
                bytes += total;
                entries.push(self.entry(next, &header, records.slice(position..at), &leaders)?);
                next += 1;
                position = at;
                spans.next();
            }
        }
        Ok(entries)
    }

    /// Entry `index` from its stored bytes (one whole batch or an entry group; `header` is
    /// the first batch's).
    fn entry(
        &self,
        index: u64,
        header: &BatchHeader,
        batch: Bytes,
        leaders: &BTreeMap<u64, NodeId>,
    ) -> Result<Entry<PartitionRaft>, PartitionRaftError> {
        let term = u64::try_from(header.partition_leader_epoch).map_err(|_| {
            PartitionRaftError::Decode(format!(
                "batch at {} has no Raft term (epoch {})",
                header.base_offset, header.partition_leader_epoch
            ))
        })?;
        let leader = *leaders
            .get(&term)
            .ok_or_else(|| PartitionRaftError::Inconsistent {
                dir: self.shared.dir.clone(),
                reason: format!("no leader known for term {term}"),
            })?;
        Ok(Entry {
            log_id: log_id(term, leader, index),
            payload: control::decode_payload(header, batch)?,
        })
    }
}

/// Entry `[base, stop)` in `records` (whole batches read from the log) from position `from`:
/// its first batch's header and the position after its last batch, or `None` when the read
/// ends before the entry does. Batches that do not line up with the entry are `mismatch`.
fn entry_in_read(
    records: &[u8],
    from: usize,
    base: i64,
    stop: i64,
    mismatch: impl Fn(String) -> PartitionRaftError,
) -> Result<Option<(BatchHeader, usize)>, PartitionRaftError> {
    let mut at = from;
    let mut first = None;
    while at < records.len() {
        let header = BatchHeader::parse(&records[at..])?;
        let total = header.total_bytes();
        if at + total > records.len() {
            return Ok(None);
        }
        if first.is_none() && header.base_offset != base {
            return Err(mismatch(format!(
                "expected at offset {base}, found a batch at {}",
                header.base_offset
            )));
        }
        at += total;
        let batch_end = header.last_offset() + 1;
        let head = *first.get_or_insert(header);
        if batch_end == stop {
            return Ok(Some((head, at)));
        }
        if batch_end > stop {
            return Err(mismatch(format!(
                "ends at offset {stop}, a batch ends at {batch_end}"
            )));
        }
    }
    Ok(None)
}

impl RaftLogReader<PartitionRaft> for PartitionLogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<PartitionRaft>>, StorageError<NodeId>> {
        self.entries(range, usize::MAX).map_err(read_failure)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<PartitionRaft>>, StorageError<NodeId>> {
        self.entries(start..end, REPLICATION_BYTES_MAX)
            .map_err(read_failure)
    }
}

impl RaftLogReader<PartitionRaft> for PartitionLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<PartitionRaft>>, StorageError<NodeId>> {
        PartitionLogReader {
            shared: Arc::clone(&self.shared),
        }
        .entries(range, usize::MAX)
        .map_err(read_failure)
    }
}

impl RaftLogStorage<PartitionRaft> for PartitionLogStore {
    type LogReader = PartitionLogReader;

    async fn get_log_state(&mut self) -> Result<LogState<PartitionRaft>, StorageError<NodeId>> {
        let index = self.shared.index.lock();
        Ok(LogState {
            last_purged_log_id: index.last_purged(),
            last_log_id: index.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        PartitionLogReader {
            shared: Arc::clone(&self.shared),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        write_json(
            self.shared.storage.as_ref(),
            &self.shared.dir,
            VOTE_FILE,
            vote,
        )
        .map_err(|e| StorageError::from(StorageIOError::write_vote(AnyError::new(&e))))?;
        self.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        if committed == self.committed {
            return Ok(());
        }
        self.committed_file.write(committed).map_err(io_failure)?;
        self.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<PartitionRaft>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<PartitionRaft>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<PartitionRaft>> = entries.into_iter().collect();
        let offset_end = self.write_entries(entries).map_err(io_failure)?;
        let request = FlushRequest {
            offset_end,
            callback,
        };
        if let Err(mpsc::error::SendError(request)) = self.flusher().send(request) {
            // The flusher is gone only if its runtime is shutting down.
            request
                .callback
                .log_io_completed(Err(io::Error::other("log flusher stopped")));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let shared = &self.shared;
        let mut index = shared.index.lock();
        if log_id.index < index.first_index() {
            return Err(io_failure(PartitionRaftError::Inconsistent {
                dir: shared.dir.clone(),
                reason: format!(
                    "truncation at {} below Raft's first kept entry {}",
                    log_id.index,
                    index.first_index()
                ),
            }));
        }
        let Some(offset) = index.offset_of(log_id.index) else {
            return Ok(()); // nothing at or after it
        };
        shared
            .log
            .truncate_to(offset)
            .map_err(|e| io_failure(PartitionRaftError::Log(e)))?;
        index.truncate_from(log_id.index);
        tracing::debug!(dir = %shared.dir.display(), index = log_id.index, offset, "truncated Raft log");
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let shared = &self.shared;
        let mut index = shared.index.lock();
        let before = index.checkpoint();
        index.purge_upto(log_id, shared.log.log_end_offset());
        if index.checkpoint() != before {
            index
                .save(shared.storage.as_ref(), &shared.dir)
                .map_err(io_failure)?;
            shared.log.set_retention_floor(index.first_offset());
        }
        Ok(())
    }
}
