//! Which sequence numbers of one publisher have been seen: a growable bitset, so a run can count
//! duplicates and gaps exactly without a hash set of every message.

/// Sequence numbers above this are treated as corrupt rather than grown into (2^32 bits is
/// 512 MiB; a run publishes far fewer per publisher).
pub const SEQUENCE_MAX: u64 = 1 << 32;

#[derive(Debug, Clone, Default)]
pub struct SeqSet {
    words: Vec<u64>,
}

impl SeqSet {
    /// Adds `sequence`; returns false if it was already present. `sequence` must be below
    /// [`SEQUENCE_MAX`].
    pub fn insert(&mut self, sequence: u64) -> bool {
        debug_assert!(sequence < SEQUENCE_MAX);
        let word = (sequence / 64) as usize;
        let bit = 1u64 << (sequence % 64);
        if word >= self.words.len() {
            self.words.resize((word + 1).next_power_of_two(), 0);
        }
        let fresh = self.words[word] & bit == 0;
        self.words[word] |= bit;
        fresh
    }

    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Adds every member of `other`; returns how many were already present.
    pub fn merge(&mut self, other: &SeqSet) -> u64 {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        let mut overlap = 0;
        for (mine, theirs) in self.words.iter_mut().zip(&other.words) {
            overlap += u64::from((*mine & theirs).count_ones());
            *mine |= theirs;
        }
        overlap
    }

    /// How many members of `self` are not in `other`.
    pub fn count_missing_from(&self, other: &SeqSet) -> u64 {
        self.words
            .iter()
            .enumerate()
            .map(|(i, mine)| {
                let theirs = other.words.get(i).copied().unwrap_or(0);
                u64::from((mine & !theirs).count_ones())
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_reports_duplicates() {
        let mut set = SeqSet::default();
        assert!(set.insert(0));
        assert!(set.insert(1000));
        assert!(!set.insert(1000));
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn merge_counts_overlap_and_missing_counts_the_difference() {
        let mut a = SeqSet::default();
        let mut b = SeqSet::default();
        for sequence in 0..100 {
            a.insert(sequence);
        }
        for sequence in 90..300 {
            b.insert(sequence);
        }
        assert_eq!(a.count_missing_from(&b), 90);
        assert_eq!(b.count_missing_from(&a), 200);
        assert_eq!(a.merge(&b), 10);
        assert_eq!(a.len(), 300);
        assert_eq!(SeqSet::default().count_missing_from(&a), 0);
    }
}
