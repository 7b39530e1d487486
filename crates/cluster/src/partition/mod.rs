//! One Kafka partition as one Raft group: the partition's segmented log
//! ([`sluice_log::PartitionLog`]) **is** the group's Raft log, so data is written once.
//!
//! # Mapping
//!
//! - **One Raft entry = one record batch, or a group of them**, in the partition log, in index
//!   order with no gaps: entry `i + 1` starts right after entry `i`. A normal entry carries
//!   one Kafka record batch v2 exactly as the producer sent it ([`PartitionEntry`]); appending
//!   it assigns its base offset, as a non-replicated append does. openraft 0.9's leader waits
//!   for each append's flush before it takes the next proposal, so one entry per batch would
//!   cap a partition at one batch per fsync: batches proposed while earlier entries are in
//!   flight travel together as an **entry group** ([`PartitionEntry::group`]), a head control
//!   batch (type 103, one offset) that counts the batches after it. Recovery reads the heads
//!   to find entry boundaries again.
//! - The batch's **`partitionLeaderEpoch`** (outside the CRC) is the entry's **Raft term**
//!   (terms above `i32::MAX` are refused). openraft's default (advanced) mode names a leader
//!   by term *and* node id, and one term has at most one leader; the node is not in the batch,
//!   so each control batch carries its leader's node id (record header `raft.leader`, 8 bytes
//!   big endian) and the log keeps a term → leader map. A term's first entry is always a
//!   control batch (a new leader's blank entry) or already purged, in which case the last
//!   purged log id in the checkpoint names its leader: recovery rebuilds the map from both.
//! - **Blank and membership entries** are **control batches** (attributes' control bit, one
//!   record, key `version 0, type 100 | 101`, the membership as JSON in the value; see
//!   [`control`]). Consumers skip them, and they take one offset each, as Kafka's transaction
//!   markers do. DeleteRecords is a normal entry holding a control batch of type 102 (the
//!   new log start offset): each replica moves its log start when it applies the entry.
//! - **Raft index ↔ offset**: a checkpoint file `raft-log-start` holds the Raft index of the
//!   first batch Raft still needs (`first_index` at `first_offset`), the last purged log id and
//!   the terms that start below `first_offset`;
//!   memory holds the base offset of every entry from there to the log end, rebuilt from the
//!   batch headers when the partition opens. Terms come from the [`TermHistory`] (one entry per
//!   term), so that map is 8 bytes per entry Raft keeps, and Raft keeps only what its snapshot
//!   policy leaves unpurged (see below), not the partition's whole retention.
//! - **Purge is not retention.** openraft's `purge(upto)` only says Raft no longer needs those
//!   entries: the checkpoint moves, the batches stay readable for consumers until Kafka
//!   retention ([`PartitionLog::enforce_retention`]) deletes them. The log's retention floor is
//!   set to `first_offset`, so retention never deletes a batch Raft still needs.
//! - **High watermark**: the log runs under [`HighWatermarkPolicy::External`]. Applying entries
//!   moves it to the end of the last applied entry (the commit point); consumers never read
//!   past it. [`PartitionView::progress`] is a `watch` of it and of the last applied log id,
//!   for waking fetchers and answering `acks=all`; [`PartitionView::end_offset_for_epoch`]
//!   answers OffsetForLeaderEpoch from the term history.
//! - **Vote** and the **snapshot record** are small JSON files in the partition directory
//!   (`raft-vote`, `raft-snapshot`), each replaced durably (temporary file, fsync, rename,
//!   directory fsync) through the log's [`Storage`], so the simulated disk covers them. The
//!   **committed log id** (`raft-committed`) is a hint written in place without fsync (it moves
//!   with every commit; see `committed.rs`); on open it is lowered to what this replica's log
//!   holds, since a power cut may have taken unsynced entries it covered.
//! - **Applied state** after a restart: the snapshot record's last log id and membership (a
//!   snapshot is taken before openraft purges), then openraft re-applies the entries from
//!   there to the saved committed log id, and reads later membership control batches from the
//!   log itself.
//!
//! # Snapshot
//!
//! The state machine *is* the log up to the last applied entry, so a snapshot is "the log from
//! its start to offset `E`" where `E` ends the snapshot's last log id. Building one writes the
//! record (`raft-snapshot`: meta + `E`) and nothing else to disk; the data is read from the
//! segments each time it is asked for: `SLSNAP01 | start offset i64 | end offset i64 | the
//! batches [start, E)`, at most [`SNAPSHOT_BYTES_MAX`] of them (the newest that fit, found with
//! `PartitionLog::tail_start`: a follower rebuilt from a snapshot may keep less history than
//! the leader). openraft keeps only the meta of a built snapshot and asks for the data
//! (`get_current_snapshot`) when a follower needs it.
//!
//! Installing on a follower whose log lacks the snapshot's last entry replaces its log:
//! `truncate_fully_and_start_at(start)`, the batches appended with their own epochs at their
//! own offsets, synced; Raft's first index becomes `last + 1` at `E`. A follower that already
//! has the entry keeps its log. A marker file (`raft-snapshot-install`) brackets the
//! replacement: a crash inside it leaves a log that is neither the old one nor the leader's,
//! and [`open`] then refuses with [`PartitionRaftError::InterruptedSnapshotInstall`].
//!
//! # Cost
//!
//! Per entry: one batch write (entries of one `append` call and one term share one write),
//! fsyncs shared by group commit, 8 bytes of memory while Raft keeps the entry. With openraft's
//! default snapshot policy (a snapshot every 5,000 entries, 1,000 kept after it) that is
//! ~48 KiB per partition. Opening a partition reads the headers of the batches Raft keeps
//! (from `first_offset`); the term history below it is saved in `raft-log-start` (as Kafka's
//! leader-epoch checkpoint), so opening does not scan the whole retention. openraft hands
//! the state machine and each follower's replication entries read from the log store: the
//! stored batches of the latest entries stay in memory from their append (up to 16 MiB per
//! partition, 8 MiB of them once applied, 256 MiB for all partitions together; `tail_cache`),
//! so those reads are usually not copies out of the page cache. Replication reads at most [`REPLICATION_BYTES_MAX`] of
//! batches per AppendEntries.
//!
//! [`PartitionLog::enforce_retention`]: sluice_log::PartitionLog::enforce_retention
//! [`HighWatermarkPolicy::External`]: sluice_log::HighWatermarkPolicy::External
//! [`Storage`]: sluice_log::Storage

mod committed;
pub mod control;
mod log_store;
mod raft_index;
mod state_machine;
mod tail_cache;
pub mod term_history;

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use openraft::LogId;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sluice_log::{
    checkpoint, validate_batches, HighWatermarkPolicy, LogConfig, LogError, PartitionLog, Storage,
};
use tokio::sync::watch;

pub use log_store::{PartitionLogReader, PartitionLogStore, REPLICATION_BYTES_MAX};
pub use state_machine::{PartitionSnapshotBuilder, PartitionStateMachine};
pub use term_history::TermHistory;

use committed::CommittedFile;
use raft_index::RaftIndex;
use state_machine::SnapshotRecord;

use crate::{NodeAddress, NodeId};

openraft::declare_raft_types!(
    /// openraft's types for one partition's group.
    pub PartitionRaft:
        D = PartitionEntry,
        R = PartitionApplied,
        NodeId = NodeId,
        Node = NodeAddress,
        Entry = openraft::Entry<PartitionRaft>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Largest snapshot data built in memory (the newest batches that fit).
pub const SNAPSHOT_BYTES_MAX: u64 = 64 << 20;

/// A normal entry: one Kafka record batch v2, or an entry group (a head control batch and the
/// producer batches it counts, see [`PartitionEntry::group`]). Proposed as the producers sent
/// them (base offsets unassigned); read back from the log, it holds the stored batches
/// (offsets and epoch assigned).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionEntry {
    pub batch: Bytes,
    /// Whether this node checked the batches' CRCs since they were made ([`PartitionEntry::new`]
    /// and the constructors of the leader's own entries): the leader's append then skips the
    /// check. Never sent: a follower checks what it receives.
    #[serde(skip)]
    crc_checked: bool,
}

/// Equal when the bytes are: whether this node checked them is not part of the entry.
impl PartialEq for PartitionEntry {
    fn eq(&self, other: &Self) -> bool {
        self.batch == other.batch
    }
}

impl Eq for PartitionEntry {}

/// The record batches travel raw behind an AppendEntries (not copied by bincode).
impl crate::transport::BulkPayload for PartitionEntry {
    fn take_bulk(&mut self) -> Option<Bytes> {
        (!self.batch.is_empty()).then(|| std::mem::take(&mut self.batch))
    }

    fn restore_bulk(&mut self, bulk: Bytes) -> bool {
        if !self.batch.is_empty() {
            return false;
        }
        self.batch = bulk;
        true
    }

    fn bulk_len(&self) -> usize {
        self.batch.len()
    }
}

impl PartitionEntry {
    /// Checks a batch before it is proposed: exactly one whole batch with a good CRC, and not
    /// one of the control types reserved for Raft's own entries (it would read back as one).
    pub fn new(batch: Bytes) -> Result<PartitionEntry, PartitionRaftError> {
        let headers = validate_batches(&batch).map_err(PartitionRaftError::Log)?;
        let [header] = headers.as_slice() else {
            return Err(PartitionRaftError::InvalidEntry(format!(
                "an entry holds exactly one record batch, got {}",
                headers.len()
            )));
        };
        PartitionEntry::validated(batch, header)
    }

    /// [`PartitionEntry::new`] for a batch that `validate_batches` already checked (its
    /// `header`; the batch may have been re-stamped since, with a recomputed CRC): the CRC is
    /// not computed again, here or when the leader appends the entry.
    pub fn validated(
        batch: Bytes,
        header: &sluice_log::BatchHeader,
    ) -> Result<PartitionEntry, PartitionRaftError> {
        if header.total_bytes() != batch.len() {
            return Err(PartitionRaftError::InvalidEntry(format!(
                "an entry holds exactly one record batch: {} bytes, the batch has {}",
                batch.len(),
                header.total_bytes()
            )));
        }
        if control::is_reserved_control(header, &batch) {
            return Err(PartitionRaftError::InvalidEntry(
                "control batch of a type reserved for Raft entries".into(),
            ));
        }
        Ok(PartitionEntry {
            batch,
            crc_checked: true,
        })
    }

    /// An entry as it arrived or was read back, its CRCs not checked here.
    pub fn unchecked(batch: Bytes) -> PartitionEntry {
        PartitionEntry {
            batch,
            crc_checked: false,
        }
    }

    /// Whether this node checked the entry's CRCs since it was made.
    pub fn crc_checked(&self) -> bool {
        self.crc_checked
    }

    /// Several producer batches (entries made by [`PartitionEntry::new`]) as one entry, so
    /// they share one append, one fsync and one replication round: a head control batch
    /// ([`control::CONTROL_TYPE_ENTRY_GROUP`]) counting them, then the batches. One batch
    /// stays an ordinary entry. `leader` is the proposing leader (named in the head).
    pub fn group(mut entries: Vec<PartitionEntry>, leader: NodeId) -> PartitionEntry {
        if entries.len() == 1 {
            if let Some(entry) = entries.pop() {
                return entry;
            }
        }
        // More than u32::MAX batches cannot be in memory; a wrong count would be refused by
        // every replica's append.
        let count = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        let mut bytes = control::entry_group_batch(count, leader);
        bytes.reserve(entries.iter().map(|e| e.batch.len()).sum());
        for entry in &entries {
            bytes.extend_from_slice(&entry.batch);
        }
        PartitionEntry {
            batch: Bytes::from(bytes),
            // The head is built here.
            crc_checked: entries.iter().all(PartitionEntry::crc_checked),
        }
    }

    /// The entry that moves every replica's log start to `offset` when it applies (Kafka's
    /// DeleteRecords), proposed by `leader`.
    pub fn log_start(offset: i64, leader: NodeId) -> PartitionEntry {
        PartitionEntry {
            batch: control::log_start_batch(offset, leader),
            crc_checked: true,
        }
    }
}

/// What applying an entry answers its proposer: where the batch landed. `-1` offsets when the
/// entry is not in this replica's log (only when the state machine is driven apart from the
/// log, as openraft's storage test suite does).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionApplied {
    pub log_id: LogId<NodeId>,
    pub base_offset: i64,
    pub last_offset: i64,
}

/// The apply progress the broker waits on: consumers may read below `high_watermark`, and a
/// produce with `acks=all` is answered once its last offset is below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ApplyProgress {
    pub last_applied: Option<LogId<NodeId>>,
    pub high_watermark: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum PartitionRaftError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("invalid entry: {0}")]
    InvalidEntry(String),
    #[error("cannot encode a Raft entry: {0}")]
    Encode(String),
    #[error("cannot decode a stored Raft entry: {0}")]
    Decode(String),
    #[error("unreadable Raft file {path}: {reason}")]
    CorruptCheckpoint { path: PathBuf, reason: String },
    /// The log and the Raft checkpoint disagree (a bug, or files changed by hand).
    #[error("partition {dir}: the Raft log does not match the partition log: {reason}")]
    Inconsistent { dir: PathBuf, reason: String },
    /// A crash interrupted a snapshot install: the log is partly replaced. The replica must be
    /// emptied (its directory removed) and rebuilt from the leader.
    #[error("partition {dir}: a snapshot install was interrupted; remove the replica's directory so it is rebuilt from the leader")]
    InterruptedSnapshotInstall { dir: PathBuf },
    #[error("Raft term {0} does not fit a Kafka leader epoch (i32)")]
    TermTooLarge(u64),
}

/// What the broker keeps of a replicated partition once openraft owns its log store and state
/// machine (get it from either before `Raft::new`): the log, the apply progress and the term
/// history. Cheap to clone.
#[derive(Clone)]
pub struct PartitionView {
    shared: Arc<Shared>,
}

impl PartitionView {
    /// The partition log (consumers read it; they never see past the high watermark).
    pub fn log(&self) -> &Arc<PartitionLog> {
        &self.shared.log
    }

    /// The high watermark and last applied log id, updated after every apply: wake fetchers
    /// and answer `acks=all` from it.
    pub fn progress(&self) -> watch::Receiver<ApplyProgress> {
        self.shared.progress.subscribe()
    }

    /// Kafka's OffsetForLeaderEpoch over this replica's log (see
    /// [`TermHistory::end_offset_for`]).
    pub fn end_offset_for_epoch(&self, requested_epoch: i32) -> (i32, i64) {
        let index = self.shared.index.lock();
        index
            .terms()
            .end_offset_for(requested_epoch, self.shared.log.log_end_offset())
    }

    /// The term history, `(epoch, start offset)` oldest first.
    pub fn term_history(&self) -> Vec<(i32, i64)> {
        self.shared.index.lock().terms().entries().to_vec()
    }
}

/// What the log store and the state machine of one partition share.
pub(crate) struct Shared {
    log: Arc<PartitionLog>,
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    index: Mutex<RaftIndex>,
    /// The latest snapshot record (what `get_current_snapshot` serves).
    snapshot: Mutex<Option<SnapshotRecord>>,
    progress: watch::Sender<ApplyProgress>,
}

pub(crate) const VOTE_FILE: &str = "raft-vote";
pub(crate) const SNAPSHOT_FILE: &str = "raft-snapshot";
pub(crate) const LOG_START_FILE: &str = "raft-log-start";
/// Present while a snapshot install replaces the log.
pub(crate) const INSTALL_MARKER_FILE: &str = "raft-snapshot-install";
/// The Raft files are a few hundred bytes (a membership of many nodes: a few KiB).
const RAFT_FILE_BYTES_MAX: u64 = 1 << 20;

/// Opens a replicated partition: the log (creating the directory, recovering it) under the
/// external high watermark policy, then the Raft state kept beside it. Blocking (disk I/O).
pub fn open(
    storage: Arc<dyn Storage>,
    dir: &Path,
    config: LogConfig,
) -> Result<(PartitionLogStore, PartitionStateMachine, Arc<PartitionLog>), PartitionRaftError> {
    if checkpoint::read_small(
        storage.as_ref(),
        dir,
        INSTALL_MARKER_FILE,
        RAFT_FILE_BYTES_MAX,
    )?
    .is_some()
    {
        return Err(PartitionRaftError::InterruptedSnapshotInstall {
            dir: dir.to_path_buf(),
        });
    }
    let log = Arc::new(PartitionLog::open_with_policy(
        Arc::clone(&storage),
        dir,
        config,
        HighWatermarkPolicy::External,
    )?);
    let index = RaftIndex::recover(storage.as_ref(), dir, &log)?;
    log.set_retention_floor(index.first_offset());
    let vote = read_json(storage.as_ref(), dir, VOTE_FILE)?;
    let (committed_file, committed_hint) = CommittedFile::open(storage.as_ref(), dir)?;
    let committed = committed_hint.and_then(|hint| index.committed_within_log(hint));
    if committed != committed_hint {
        tracing::info!(dir = %dir.display(), hint = ?committed_hint, kept = ?committed, "committed log id hint past this replica's log: lowered");
    }
    let snapshot: Option<SnapshotRecord> = read_json(storage.as_ref(), dir, SNAPSHOT_FILE)?;
    let mut progress = ApplyProgress {
        last_applied: None,
        high_watermark: log.high_watermark(),
    };
    if let Some(record) = &snapshot {
        progress.last_applied = record.meta.last_log_id;
        progress.high_watermark = log.set_high_watermark(record.offset_end)?;
    }
    tracing::debug!(
        dir = %dir.display(),
        first_index = index.first_index(),
        next_index = index.next_index(),
        last_applied = ?progress.last_applied,
        high_watermark = progress.high_watermark,
        "opened replicated partition"
    );
    let shared = Arc::new(Shared {
        log: Arc::clone(&log),
        storage,
        dir: dir.to_path_buf(),
        index: Mutex::new(index),
        snapshot: Mutex::new(snapshot.clone()),
        progress: watch::Sender::new(progress),
    });
    let log_store = PartitionLogStore::new(Arc::clone(&shared), vote, committed, committed_file);
    let state_machine = PartitionStateMachine::new(shared, snapshot);
    Ok((log_store, state_machine, log))
}

fn read_json<T: serde::de::DeserializeOwned>(
    storage: &dyn Storage,
    dir: &Path,
    name: &str,
) -> Result<Option<T>, PartitionRaftError> {
    let Some(bytes) = checkpoint::read_small(storage, dir, name, RAFT_FILE_BYTES_MAX)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| PartitionRaftError::CorruptCheckpoint {
            path: dir.join(name),
            reason: e.to_string(),
        })
}

fn write_json<T: Serialize>(
    storage: &dyn Storage,
    dir: &Path,
    name: &str,
    value: &T,
) -> Result<(), PartitionRaftError> {
    let bytes = serde_json::to_vec(value).map_err(|e| PartitionRaftError::Encode(e.to_string()))?;
    checkpoint::write_durably(storage, dir, name, &bytes)?;
    Ok(())
}

/// A Raft term as a Kafka leader epoch.
fn term_to_epoch(term: u64) -> Result<i32, PartitionRaftError> {
    i32::try_from(term).map_err(|_| PartitionRaftError::TermTooLarge(term))
}

/// A log id: in openraft's default (advanced) mode the committed leader id is the term and the
/// leader's node id; the term is the batch's epoch, the node comes from the term's leaders.
fn log_id(term: u64, leader: NodeId, index: u64) -> LogId<NodeId> {
    LogId::new(openraft::CommittedLeaderId::new(term, leader), index)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
