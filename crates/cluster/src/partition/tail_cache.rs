//! The stored batches of the entries not applied yet, kept in memory from the append that
//! wrote them: the leader's replication to each follower and every replica's apply would
//! otherwise read each batch back from the page cache (a copy per reader).

use std::collections::VecDeque;

use bytes::Bytes;

/// Bytes of batches kept at most per partition (a follower far behind reads from the log).
const TAIL_BYTES_MAX: usize = 4 << 20;
/// Bytes of applied batches kept: the slower follower of a majority is often sent an entry
/// after it applied (once the faster one acknowledged it). An idle partition keeps this much.
const APPLIED_BYTES_KEPT: usize = 1 << 20;

/// Entries `first_index ..` as stored (offsets and epoch assigned), consecutive.
#[derive(Default)]
pub(crate) struct TailCache {
    first_index: u64,
    batches: VecDeque<Bytes>,
    bytes: usize,
}

impl TailCache {
    /// Keeps the stored batch of entry `index`; an entry that does not follow the kept ones
    /// starts over from it.
    pub fn push(&mut self, index: u64, batch: Bytes) {
        if self.first_index + self.batches.len() as u64 != index {
            self.clear();
        }
        if self.batches.is_empty() {
            self.first_index = index;
        }
        self.bytes += batch.len();
        self.batches.push_back(batch);
        while self.bytes > TAIL_BYTES_MAX {
            self.pop_front();
        }
    }

    pub fn get(&self, index: u64) -> Option<&Bytes> {
        let position = index.checked_sub(self.first_index)?;
        self.batches.get(usize::try_from(position).ok()?)
    }

    /// Forgets entries `index ..` (truncated by Raft).
    pub fn truncate_from(&mut self, index: u64) {
        while !self.batches.is_empty() && self.first_index + self.batches.len() as u64 > index {
            if let Some(batch) = self.batches.pop_back() {
                self.bytes -= batch.len();
            }
        }
    }

    /// Entries `..= index` are applied: forgets the oldest of them beyond
    /// [`APPLIED_BYTES_KEPT`].
    pub fn applied_through(&mut self, index: u64) {
        let applied = index
            .checked_sub(self.first_index)
            .map_or(0, |n| (n as usize + 1).min(self.batches.len()));
        let mut applied_bytes: usize = self.batches.iter().take(applied).map(Bytes::len).sum();
        let mut left = applied;
        while left > 0 && applied_bytes > APPLIED_BYTES_KEPT {
            if let Some(front) = self.batches.front() {
                applied_bytes -= front.len();
            }
            self.pop_front();
            left -= 1;
        }
    }

    /// Forgets entries `..= index` (purged).
    pub fn trim_through(&mut self, index: u64) {
        while !self.batches.is_empty() && self.first_index <= index {
            self.pop_front();
        }
    }

    pub fn clear(&mut self) {
        self.batches.clear();
        self.bytes = 0;
    }

    fn pop_front(&mut self) {
        if let Some(batch) = self.batches.pop_front() {
            self.bytes -= batch.len();
            self.first_index += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: u8) -> Bytes {
        Bytes::from(vec![n; 10])
    }

    #[test]
    fn keeps_consecutive_entries_and_forgets_on_truncate_trim_and_gaps() {
        let mut tail = TailCache::default();
        for index in 5..10 {
            tail.push(index, batch(index as u8));
        }
        assert_eq!(tail.get(4), None);
        assert_eq!(tail.get(7), Some(&batch(7)));
        tail.truncate_from(8);
        assert_eq!(tail.get(8), None);
        tail.push(8, batch(80));
        assert_eq!(tail.get(8), Some(&batch(80)));
        tail.trim_through(6);
        assert_eq!(tail.get(6), None);
        assert_eq!(tail.get(7), Some(&batch(7)));
        // A gap (entries written elsewhere, e.g. after a snapshot install) starts over.
        tail.push(20, batch(20));
        assert_eq!(tail.get(7), None);
        assert_eq!(tail.get(20), Some(&batch(20)));
        assert_eq!(tail.bytes, 10);
    }

    #[test]
    fn applied_entries_are_kept_up_to_their_bound() {
        let mut tail = TailCache::default();
        let quarter = Bytes::from(vec![0u8; APPLIED_BYTES_KEPT / 4]);
        for index in 0..10 {
            tail.push(index, quarter.clone());
        }
        tail.applied_through(7);
        // Four quarters of the eight applied stay, and the two not applied.
        assert_eq!(tail.get(3), None);
        assert!(tail.get(4).is_some() && tail.get(9).is_some());
        tail.applied_through(100);
        assert_eq!(tail.get(5), None);
        assert!(tail.get(6).is_some());
    }

    #[test]
    fn stays_under_its_byte_bound() {
        let mut tail = TailCache::default();
        let big = Bytes::from(vec![0u8; TAIL_BYTES_MAX / 3]);
        for index in 0..20 {
            tail.push(index, big.clone());
        }
        assert!(tail.bytes <= TAIL_BYTES_MAX);
        assert_eq!(tail.get(19).map(Bytes::len), Some(TAIL_BYTES_MAX / 3));
        assert_eq!(tail.get(0), None);
    }
}
