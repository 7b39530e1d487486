//! The stored batches of the entries not applied yet, kept in memory from the append that
//! wrote them: the leader's replication to each follower and every replica's apply would
//! otherwise read each batch back from the page cache (a copy per reader).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

/// Bytes of batches kept at most per partition (a follower far behind reads from the log):
/// the entries in flight (a leader proposes up to 4 entries, each a group of up to 1 MiB or
/// one larger batch).
const TAIL_BYTES_MAX: usize = 16 << 20;
/// Bytes of applied batches kept: the slower follower of a majority is often sent an entry
/// after it applied (once the faster one acknowledged it). An idle partition keeps this much.
/// Keeping 24 MiB (and 40 MiB per partition, 512 MiB per process) showed no gain on one
/// partition or, with transparent huge pages off, on eight; with them on it doubled the CPU
/// per message (more live buffers, more freshly touched huge pages to zero).
const APPLIED_BYTES_KEPT: usize = 8 << 20;
/// Bytes the tail caches of all partitions of the process keep together at most: a thousand
/// busy partitions would otherwise hold 16 GiB. Over it, a cache keeps its newest entry only,
/// and applied entries are dropped; readers then read from the log (the page cache).
const ALL_TAILS_BYTES_MAX: usize = 256 << 20;

/// What a set of tail caches holds together, and their bound.
pub(crate) struct TailBudget {
    bytes: AtomicUsize,
    max: usize,
}

impl TailBudget {
    fn over(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) > self.max
    }
}

/// The budget of every partition's tail cache in the process.
static PROCESS_BUDGET: TailBudget = TailBudget {
    bytes: AtomicUsize::new(0),
    max: ALL_TAILS_BYTES_MAX,
};

/// Entries `first_index ..` as stored (offsets and epoch assigned), consecutive.
pub(crate) struct TailCache {
    budget: &'static TailBudget,
    first_index: u64,
    batches: VecDeque<Bytes>,
    bytes: usize,
    /// Entries below this index are applied; `applied_bytes` is what the kept ones of them
    /// hold (kept up to date so an apply does not sum the whole cache).
    applied_end: u64,
    applied_bytes: usize,
}

impl Default for TailCache {
    fn default() -> TailCache {
        TailCache::within(&PROCESS_BUDGET)
    }
}

impl TailCache {
    fn within(budget: &'static TailBudget) -> TailCache {
        TailCache {
            budget,
            first_index: 0,
            batches: VecDeque::new(),
            bytes: 0,
            applied_end: 0,
            applied_bytes: 0,
        }
    }

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
        self.budget.bytes.fetch_add(batch.len(), Ordering::Relaxed);
        self.batches.push_back(batch);
        while self.bytes > TAIL_BYTES_MAX || (self.budget.over() && self.batches.len() > 1) {
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
            let last = self.first_index + self.batches.len() as u64 - 1;
            if let Some(batch) = self.batches.pop_back() {
                self.forget(last, batch.len());
            }
        }
        self.applied_end = self.applied_end.min(index);
    }

    /// Entries `..= index` are applied: forgets the oldest of them beyond
    /// [`APPLIED_BYTES_KEPT`] (all of them while the caches are over their common budget).
    pub fn applied_through(&mut self, index: u64) {
        let end = self.first_index + self.batches.len() as u64;
        let mut next = self.applied_end.max(self.first_index);
        while next <= index && next < end {
            if let Some(batch) = self.get(next) {
                self.applied_bytes += batch.len();
            }
            next += 1;
        }
        self.applied_end = self.applied_end.max(next);
        let kept = if self.budget.over() {
            0
        } else {
            APPLIED_BYTES_KEPT
        };
        while self.applied_bytes > kept && self.first_index < self.applied_end {
            self.pop_front();
        }
    }

    /// Forgets entries `..= index` (purged).
    pub fn trim_through(&mut self, index: u64) {
        while !self.batches.is_empty() && self.first_index <= index {
            self.pop_front();
        }
    }

    pub fn clear(&mut self) {
        self.budget.bytes.fetch_sub(self.bytes, Ordering::Relaxed);
        self.batches.clear();
        self.bytes = 0;
        self.applied_end = 0;
        self.applied_bytes = 0;
    }

    fn pop_front(&mut self) {
        if let Some(batch) = self.batches.pop_front() {
            let index = self.first_index;
            self.first_index += 1;
            self.forget(index, batch.len());
        }
    }

    /// Accounts for entry `index` of `len` bytes leaving the cache.
    fn forget(&mut self, index: u64, len: usize) {
        self.bytes -= len;
        self.budget.bytes.fetch_sub(len, Ordering::Relaxed);
        if index < self.applied_end {
            self.applied_bytes = self.applied_bytes.saturating_sub(len);
        }
    }
}

impl Drop for TailCache {
    fn drop(&mut self) {
        self.budget.bytes.fetch_sub(self.bytes, Ordering::Relaxed);
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

    #[test]
    fn all_caches_together_stay_under_their_common_budget() {
        let budget: &'static TailBudget = Box::leak(Box::new(TailBudget {
            bytes: AtomicUsize::new(0),
            max: 64 << 20,
        }));
        // Clones of one buffer: the accounting counts them, the test does not allocate them.
        let mib = Bytes::from(vec![0u8; 1 << 20]);
        let mut caches: Vec<TailCache> = (0..20).map(|_| TailCache::within(budget)).collect();
        for cache in &mut caches {
            for index in 0..4 {
                cache.push(index, mib.clone());
            }
        }
        // 16 caches fill the 64 MiB; each later one keeps its newest entry only.
        assert_eq!(budget.bytes.load(Ordering::Relaxed), (64 + 4) << 20);
        let last = caches.last().unwrap();
        assert_eq!(last.bytes, 1 << 20);
        assert!(last.get(3).is_some() && last.get(2).is_none());
        // Over the budget, applied entries go at once.
        caches[0].applied_through(3);
        assert_eq!(caches[0].bytes, 0);
        assert_eq!(budget.bytes.load(Ordering::Relaxed), 64 << 20);
        drop(caches);
        assert_eq!(budget.bytes.load(Ordering::Relaxed), 0);
    }
}
