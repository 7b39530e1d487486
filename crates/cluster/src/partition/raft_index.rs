//! Raft index ↔ offset for the entries Raft still keeps, and the checkpoint that anchors it.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use openraft::LogId;
use serde::{Deserialize, Serialize};
use sluice_log::{PartitionLog, Storage};

use super::tail_cache::TailCache;
use super::{
    control, log_id, read_json, write_json, PartitionRaftError, TermHistory, LOG_START_FILE,
};
use crate::NodeId;

/// `raft-log-start`: where Raft's log begins inside the partition log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LogStartCheckpoint {
    /// Raft index of the batch at `first_offset` (or of the next entry, when none is kept).
    pub first_index: u64,
    pub first_offset: i64,
    pub last_purged: Option<LogId<NodeId>>,
    /// The term history below `first_offset` (Kafka's leader-epoch checkpoint), so opening
    /// reads only the headers of the batches Raft keeps.
    #[serde(default)]
    pub terms_before: Vec<(i32, i64)>,
}

/// Entries `first_index ..` are the batches at `offsets[0] ..`, consecutive to the log end.
pub(crate) struct RaftIndex {
    first_index: u64,
    first_offset: i64,
    /// Base offset of entry `first_index + k`: 8 bytes per entry Raft keeps.
    offsets: VecDeque<i64>,
    last_purged: Option<LogId<NodeId>>,
    terms: TermHistory,
    /// The leader of every term of the kept entries (one per term).
    leaders: BTreeMap<u64, NodeId>,
    /// The stored batches of the latest entries, until they are applied.
    pub tail: TailCache,
}

impl RaftIndex {
    /// Rebuilds the index from the checkpoint and the batch headers of `log`.
    pub fn recover(
        storage: &dyn Storage,
        dir: &Path,
        log: &PartitionLog,
    ) -> Result<RaftIndex, PartitionRaftError> {
        let log_end = log.log_end_offset();
        // Without a checkpoint Raft never purged: its log is every stored batch, including
        // those DeleteRecords hid below the log start.
        let checkpoint: LogStartCheckpoint =
            read_json(storage, dir, LOG_START_FILE)?.unwrap_or(LogStartCheckpoint {
                first_index: 0,
                first_offset: log.first_stored_offset(),
                last_purged: None,
                terms_before: Vec::new(),
            });
        let inconsistent = |reason: String| PartitionRaftError::Inconsistent {
            dir: dir.to_path_buf(),
            reason,
        };
        // A purge past the durable end, then a crash: the entries up to there are gone anyway.
        let first_offset = checkpoint.first_offset.min(log_end);
        let mut index = RaftIndex {
            first_index: checkpoint.first_index,
            first_offset,
            offsets: VecDeque::new(),
            last_purged: checkpoint.last_purged,
            terms: TermHistory::from_entries(&checkpoint.terms_before),
            leaders: BTreeMap::new(),
            tail: TailCache::default(),
        };
        if let Some(purged) = checkpoint.last_purged {
            index
                .leaders
                .insert(purged.leader_id.term, purged.leader_id.node_id);
        }
        let mut misaligned = None;
        let mut controls = Vec::new();
        // From Raft's first entry even if DeleteRecords moved the log start past it; a segment
        // deleted under it shows as a misaligned first batch.
        log.for_each_batch_header_from(first_offset, |header| {
            if header.is_control() && header.base_offset >= first_offset {
                controls.push(header.base_offset);
            }
            index
                .terms
                .on_batch(header.partition_leader_epoch, header.base_offset);
            if header.base_offset >= first_offset {
                if index.offsets.is_empty() && header.base_offset != first_offset {
                    misaligned.get_or_insert(header.base_offset);
                }
                index.offsets.push_back(header.base_offset);
            } else if header.last_offset() >= first_offset {
                misaligned.get_or_insert(header.base_offset);
            }
        })?;
        if let Some(base_offset) = misaligned {
            return Err(inconsistent(format!(
                "Raft's first entry offset {first_offset} is not a batch boundary (batch at {base_offset})"
            )));
        }
        // Leaders from the control batches (one or two per term), and the heads of entry
        // groups (at most one per entry Raft keeps).
        let mut groups = BTreeMap::new();
        for offset in controls {
            let read = log.read_uncommitted(offset, 1)?;
            let Ok(header) = sluice_log::BatchHeader::parse(&read.records) else {
                continue;
            };
            let batch = read.records.get(..header.total_bytes()).unwrap_or_default();
            if let (Some(leader), Ok(term)) = (
                control::control_leader(&header, batch),
                u64::try_from(header.partition_leader_epoch),
            ) {
                index.leaders.entry(term).or_insert(leader);
            }
            if let Some(count) = control::entry_group_count(&header, batch) {
                groups.insert(offset, count as usize);
            }
        }
        if !groups.is_empty() {
            // A group's members are not entries of their own.
            let batches = std::mem::take(&mut index.offsets);
            let mut batches = batches.into_iter();
            while let Some(offset) = batches.next() {
                index.offsets.push_back(offset);
                let members = groups.get(&offset).copied().unwrap_or(0);
                if batches.by_ref().take(members).count() < members {
                    // A crash tore the group's write: the entry was never flushed, so this
                    // replica never acknowledged it. Cut it off and index what is left.
                    tracing::info!(dir = %dir.display(), offset, "dropped a partly written entry group");
                    log.truncate_to(offset)?;
                    if log.log_end_offset() > offset {
                        return Err(inconsistent(format!(
                            "cannot cut the partly written entry group at offset {offset}"
                        )));
                    }
                    return RaftIndex::recover(storage, dir, log);
                }
            }
        }
        for &(epoch, start) in index.terms.entries() {
            let covers_kept = index.offsets.back().is_some_and(|&last| start <= last)
                && index
                    .terms
                    .entries()
                    .iter()
                    .find(|&&(_, next_start)| next_start > start)
                    .is_none_or(|&(_, next_start)| next_start > first_offset);
            let known = u64::try_from(epoch).is_ok_and(|t| index.leaders.contains_key(&t));
            if covers_kept && !known {
                return Err(inconsistent(format!(
                    "no leader known for term {epoch} (starting at offset {start})"
                )));
            }
        }
        Ok(index)
    }

    pub fn checkpoint(&self) -> LogStartCheckpoint {
        LogStartCheckpoint {
            first_index: self.first_index,
            first_offset: self.first_offset,
            last_purged: self.last_purged,
            terms_before: self
                .terms
                .entries()
                .iter()
                .copied()
                .filter(|&(_, start)| start < self.first_offset)
                .collect(),
        }
    }

    pub fn save(&self, storage: &dyn Storage, dir: &Path) -> Result<(), PartitionRaftError> {
        write_json(storage, dir, LOG_START_FILE, &self.checkpoint())
    }

    pub fn first_index(&self) -> u64 {
        self.first_index
    }

    pub fn first_offset(&self) -> i64 {
        self.first_offset
    }

    /// The index the next appended entry must have.
    pub fn next_index(&self) -> u64 {
        self.first_index + self.offsets.len() as u64
    }

    pub fn last_purged(&self) -> Option<LogId<NodeId>> {
        self.last_purged
    }

    pub fn terms(&self) -> &TermHistory {
        &self.terms
    }

    /// Base offset of entry `index`, if Raft keeps it.
    pub fn offset_of(&self, index: u64) -> Option<i64> {
        let position = index.checked_sub(self.first_index)?;
        self.offsets.get(usize::try_from(position).ok()?).copied()
    }

    /// `[base offset, end offset)` of entry `index`, if Raft keeps it.
    pub fn offsets_of(&self, index: u64, log_end: i64) -> Option<(i64, i64)> {
        let base = self.offset_of(index)?;
        let end = self.offset_of(index + 1).unwrap_or(log_end);
        Some((base, end))
    }

    /// The log id of entry `index`, if Raft keeps it.
    pub fn log_id_at(&self, index: u64) -> Option<LogId<NodeId>> {
        let offset = self.offset_of(index)?;
        let term = u64::try_from(self.terms.epoch_at(offset)?).ok()?;
        Some(log_id(term, *self.leaders.get(&term)?, index))
    }

    /// `hint` (a committed log id read back after a restart) as far as this log holds it: the
    /// log id at `min(hint, last)` when it agrees with the hint's prefix, else none.
    pub fn committed_within_log(&self, hint: LogId<NodeId>) -> Option<LogId<NodeId>> {
        if hint.index < self.first_index {
            return Some(hint); // purged, hence applied: nothing to check it against
        }
        let last = self.next_index().checked_sub(1)?;
        let index = hint.index.min(last);
        let kept = self.log_id_at(index)?;
        // Terms only grow along the log: an entry of a later term than the hint's is not known
        // to be committed.
        (kept.leader_id <= hint.leader_id).then_some(kept)
    }

    /// The leader of every known term (for building log ids outside the lock).
    pub fn leaders(&self) -> &BTreeMap<u64, NodeId> {
        &self.leaders
    }

    /// Records that `leader` leads `term`; a different leader for a known term is refused
    /// (openraft elects at most one per term).
    pub fn record_leader(&mut self, term: u64, leader: NodeId) -> Result<(), NodeId> {
        match self.leaders.insert(term, leader) {
            Some(known) if known != leader => {
                self.leaders.insert(term, known);
                Err(known)
            }
            _ => Ok(()),
        }
    }

    /// The last entry's log id, or the last purged one when Raft keeps none.
    pub fn last_log_id(&self) -> Option<LogId<NodeId>> {
        match self.next_index().checked_sub(1) {
            Some(last) if !self.offsets.is_empty() => self.log_id_at(last),
            _ => self.last_purged,
        }
    }

    /// The end offset of the entries up to `index` (inclusive) as far as this log can say:
    /// exact for kept entries, `first_offset` for purged ones (everything below it was
    /// applied before it was purged), `log_end` for entries past the log end.
    pub fn offset_end_through(&self, index: u64, log_end: i64) -> i64 {
        if index < self.first_index {
            return self.first_offset;
        }
        match self.offsets_of(index, log_end) {
            Some((_, end)) => end,
            None => log_end,
        }
    }

    /// The first append to a Raft log that never held an entry fixes where it starts (openraft
    /// starts at index 0, its storage tests anywhere) at the log end. Returns whether the
    /// checkpoint changed (and must be saved before the append).
    pub fn anchor_for_append(&mut self, index: u64, log_end: i64) -> bool {
        if !self.offsets.is_empty()
            || self.last_purged.is_some()
            || (self.first_index == index && self.first_offset == log_end)
        {
            return false;
        }
        self.first_index = index;
        self.first_offset = log_end;
        true
    }

    pub fn push(&mut self, base_offset: i64, epoch: i32) {
        self.terms.on_batch(epoch, base_offset);
        self.offsets.push_back(base_offset);
    }

    /// Forgets entries `index ..`; returns the offset they started at, if any was kept.
    pub fn truncate_from(&mut self, index: u64) -> Option<i64> {
        self.tail.truncate_from(index);
        let offset = self.offset_of(index)?;
        let keep = (index - self.first_index) as usize;
        self.offsets.truncate(keep);
        self.terms.truncate_from(offset);
        let latest = self
            .terms
            .latest_epoch()
            .and_then(|e| u64::try_from(e).ok());
        let purged = self.last_purged.map(|p| p.leader_id.term);
        self.leaders
            .retain(|&term, _| Some(term) <= latest || Some(term) == purged);
        Some(offset)
    }

    /// Raft no longer needs entries `..= upto.index`.
    pub fn purge_upto(&mut self, upto: LogId<NodeId>, log_end: i64) {
        if self
            .last_purged
            .is_some_and(|purged| purged.index >= upto.index)
        {
            return;
        }
        let next_index = self.next_index();
        if upto.index + 1 >= next_index {
            self.offsets.clear();
            self.first_index = upto.index + 1;
            self.first_offset = log_end;
        } else if upto.index >= self.first_index {
            let drop = (upto.index + 1 - self.first_index) as usize;
            self.offsets.drain(..drop);
            self.first_index = upto.index + 1;
            self.first_offset = self.offsets.front().copied().unwrap_or(log_end);
        }
        self.last_purged = Some(upto);
        self.tail.trim_through(upto.index);
    }

    /// After a snapshot install replaced the log: Raft keeps nothing up to `last`, the next
    /// entry goes at `log_end`; the terms are the installed batches'.
    pub fn reset_after_install(
        &mut self,
        last: LogId<NodeId>,
        log_end: i64,
        terms: TermHistory,
        leaders: BTreeMap<u64, NodeId>,
    ) {
        self.leaders = leaders;
        self.leaders
            .insert(last.leader_id.term, last.leader_id.node_id);
        self.offsets.clear();
        self.tail.clear();
        self.first_index = last.index + 1;
        self.first_offset = log_end;
        if self
            .last_purged
            .is_none_or(|purged| purged.index < last.index)
        {
            self.last_purged = Some(last);
        }
        self.terms = terms;
    }
}
