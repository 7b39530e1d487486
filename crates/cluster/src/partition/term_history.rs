//! The partition's term history (Kafka's leader epoch cache): the first offset of every Raft
//! term (Kafka leader epoch) in the log, taken from the batches' `partitionLeaderEpoch`. It
//! gives each Raft entry its term without reading the disk, and answers Kafka's
//! OffsetForLeaderEpoch (KIP-101/279/320) so a consumer or an old-protocol follower can detect a
//! truncated log.
//!
//! Kept incrementally: rebuilt from the batch headers when the partition opens, one entry added
//! when a batch starts a new term, entries dropped by truncation. It holds one entry per term,
//! not per batch.

/// Kafka's "no epoch" / "no offset" answer (`UNDEFINED_EPOCH`, `UNDEFINED_EPOCH_OFFSET`).
pub const EPOCH_UNDEFINED: i32 = -1;
pub const OFFSET_UNDEFINED: i64 = -1;

/// `(epoch, start offset)` pairs, both strictly increasing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TermHistory {
    starts: Vec<(i32, i64)>,
}

impl TermHistory {
    pub fn new() -> TermHistory {
        TermHistory::default()
    }

    /// A history from saved `(epoch, start offset)` pairs (kept in order, as `on_batch` would).
    pub fn from_entries(entries: &[(i32, i64)]) -> TermHistory {
        let mut history = TermHistory::new();
        for &(epoch, start) in entries {
            history.on_batch(epoch, start);
        }
        history
    }

    /// Records a batch of `epoch` at `base_offset` (appended in offset order). Negative epochs
    /// (batches written outside Raft) are not terms and are skipped, as Kafka skips them. An
    /// epoch lower than the latest would mean terms went backwards in the log: ignored with a
    /// warning (Raft never writes one), so the history stays sorted.
    pub fn on_batch(&mut self, epoch: i32, base_offset: i64) {
        if epoch < 0 {
            return;
        }
        match self.starts.last() {
            Some(&(latest, _)) if latest == epoch => {}
            Some(&(latest, start)) if latest > epoch => {
                tracing::warn!(
                    epoch,
                    base_offset,
                    latest,
                    latest_start = start,
                    "batch epoch below the latest term: not recorded"
                );
            }
            _ => self.starts.push((epoch, base_offset)),
        }
    }

    /// Forgets terms that start at or after `offset` (the log was truncated there).
    pub fn truncate_from(&mut self, offset: i64) {
        let keep = self.starts.partition_point(|&(_, start)| start < offset);
        self.starts.truncate(keep);
    }

    pub fn clear(&mut self) {
        self.starts.clear();
    }

    /// The term of the batch at `offset`: the latest term starting at or before it.
    pub fn epoch_at(&self, offset: i64) -> Option<i32> {
        let after = self.starts.partition_point(|&(_, start)| start <= offset);
        after.checked_sub(1).map(|i| self.starts[i].0)
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.starts.last().map(|&(epoch, _)| epoch)
    }

    /// Every `(epoch, start offset)`, oldest first.
    pub fn entries(&self) -> &[(i32, i64)] {
        &self.starts
    }

    /// Kafka's OffsetForLeaderEpoch: the largest epoch `<=` `requested_epoch` and the end offset
    /// of that epoch, i.e. the start offset of the next larger epoch, or `log_end_offset` when
    /// `requested_epoch` is the latest. `(EPOCH_UNDEFINED, OFFSET_UNDEFINED)` when the requested
    /// epoch is undefined or newer than every epoch here. A requested epoch older than every
    /// epoch here answers itself with the first epoch's start offset (Kafka's behaviour).
    pub fn end_offset_for(&self, requested_epoch: i32, log_end_offset: i64) -> (i32, i64) {
        if requested_epoch == EPOCH_UNDEFINED {
            return (EPOCH_UNDEFINED, OFFSET_UNDEFINED);
        }
        if self.latest_epoch() == Some(requested_epoch) {
            return (requested_epoch, log_end_offset);
        }
        let higher = self
            .starts
            .partition_point(|&(epoch, _)| epoch <= requested_epoch);
        let Some(&(_, higher_start)) = self.starts.get(higher) else {
            return (EPOCH_UNDEFINED, OFFSET_UNDEFINED);
        };
        match higher.checked_sub(1) {
            Some(floor) => (self.starts[floor].0, higher_start),
            None => (requested_epoch, higher_start),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(pairs: &[(i32, i64)]) -> TermHistory {
        let mut history = TermHistory::new();
        for &(epoch, offset) in pairs {
            history.on_batch(epoch, offset);
        }
        history
    }

    #[test]
    fn records_one_entry_per_term() {
        let history = history(&[(1, 0), (1, 5), (1, 9), (3, 12), (3, 20), (4, 30)]);
        assert_eq!(history.entries(), &[(1, 0), (3, 12), (4, 30)]);
        assert_eq!(history.epoch_at(0), Some(1));
        assert_eq!(history.epoch_at(11), Some(1));
        assert_eq!(history.epoch_at(12), Some(3));
        assert_eq!(history.epoch_at(1000), Some(4));
        assert_eq!(TermHistory::new().epoch_at(0), None);
    }

    #[test]
    fn skips_non_raft_and_backwards_epochs() {
        let history = history(&[(-1, 0), (2, 4), (1, 8), (2, 9)]);
        assert_eq!(history.entries(), &[(2, 4)]);
        assert_eq!(history.epoch_at(0), None, "below the first term");
    }

    #[test]
    fn offset_for_leader_epoch_follows_kafka() {
        // Epochs 1 at 0, 3 at 12, 4 at 30; log end 40.
        let history = history(&[(1, 0), (3, 12), (4, 30)]);
        let end = 40;
        // The latest epoch ends at the log end.
        assert_eq!(history.end_offset_for(4, end), (4, 40));
        // An epoch in the history ends where the next one starts.
        assert_eq!(history.end_offset_for(1, end), (1, 12));
        assert_eq!(history.end_offset_for(3, end), (3, 30));
        // An epoch between two known ones: the largest known epoch below it, ending where the
        // next larger one starts (a follower of epoch 2 must truncate to 12).
        assert_eq!(history.end_offset_for(2, end), (1, 12));
        // Older than everything: the requested epoch, ending at the first start.
        assert_eq!(history.end_offset_for(0, end), (0, 0));
        // Newer than everything, or undefined: undefined.
        assert_eq!(history.end_offset_for(5, end), (-1, -1));
        assert_eq!(history.end_offset_for(-1, end), (-1, -1));
        assert_eq!(TermHistory::new().end_offset_for(0, 0), (-1, -1));
    }

    #[test]
    fn truncation_drops_terms_starting_at_or_after_the_cut() {
        let mut history = history(&[(1, 0), (3, 12), (4, 30)]);
        history.truncate_from(30);
        assert_eq!(history.entries(), &[(1, 0), (3, 12)]);
        assert_eq!(
            history.end_offset_for(3, 25),
            (3, 25),
            "3 is the latest again"
        );
        history.truncate_from(5);
        assert_eq!(history.entries(), &[(1, 0)]);
        // A new term after the truncation starts where it is appended.
        history.on_batch(5, 5);
        assert_eq!(history.end_offset_for(3, 9), (1, 5));
        history.truncate_from(0);
        assert!(history.entries().is_empty());
    }
}
