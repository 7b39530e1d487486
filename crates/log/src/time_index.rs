//! Sparse time index of one segment: (largest batch max timestamp so far, offset of that batch
//! relative to the segment base). An entry is added at offset-index points when the segment's
//! max timestamp has grown, so timestamps and offsets both increase. Written to `N.timeindex`
//! as big-endian (i64, u32) next to the offset index and rebuilt the same way.

use crate::LogError;

const ENTRY_BYTES: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeIndexEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct TimeIndex {
    entries: Vec<TimeIndexEntry>,
}

impl TimeIndex {
    /// Appends an entry if it raises the max timestamp (and does not move offsets backwards).
    pub fn maybe_push(&mut self, entry: TimeIndexEntry) {
        if let Some(last) = self.entries.last() {
            if entry.timestamp <= last.timestamp || entry.relative_offset <= last.relative_offset {
                return;
            }
        }
        self.entries.push(entry);
    }

    /// The last entry whose timestamp is below `timestamp`: every batch up to and including the
    /// one at its offset has max timestamp < `timestamp`, so a search may start there.
    pub fn lookup_below(&self, timestamp: i64) -> Option<TimeIndexEntry> {
        let count = self.entries.partition_point(|e| e.timestamp < timestamp);
        count.checked_sub(1).map(|n| self.entries[n])
    }

    pub fn last(&self) -> Option<TimeIndexEntry> {
        self.entries.last().copied()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * ENTRY_BYTES);
        for entry in &self.entries {
            out.extend_from_slice(&entry.timestamp.to_be_bytes());
            out.extend_from_slice(&entry.relative_offset.to_be_bytes());
        }
        out
    }

    /// Parses a time index file: whole entries, both fields strictly growing, offsets below
    /// `relative_offset_end` (the segment's next offset, relative).
    pub fn from_bytes(bytes: &[u8], relative_offset_end: u64) -> Result<TimeIndex, LogError> {
        if !bytes.len().is_multiple_of(ENTRY_BYTES) {
            return Err(LogError::InvalidBatch(format!(
                "time index of {} bytes is not whole entries",
                bytes.len()
            )));
        }
        let mut index = TimeIndex {
            entries: Vec::with_capacity(bytes.len() / ENTRY_BYTES),
        };
        for chunk in bytes.chunks_exact(ENTRY_BYTES) {
            let mut timestamp = [0u8; 8];
            timestamp.copy_from_slice(&chunk[..8]);
            let entry = TimeIndexEntry {
                timestamp: i64::from_be_bytes(timestamp),
                relative_offset: u32::from_be_bytes([chunk[8], chunk[9], chunk[10], chunk[11]]),
            };
            let grows = index.entries.last().is_none_or(|last| {
                entry.timestamp > last.timestamp && entry.relative_offset > last.relative_offset
            });
            if !grows || entry.relative_offset as u64 >= relative_offset_end {
                return Err(LogError::InvalidBatch(format!(
                    "time index entry {entry:?} out of order or bounds"
                )));
            }
            index.entries.push(entry);
        }
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_below_and_roundtrip() {
        let mut index = TimeIndex::default();
        index.maybe_push(TimeIndexEntry {
            timestamp: 100,
            relative_offset: 5,
        });
        index.maybe_push(TimeIndexEntry {
            timestamp: 90,
            relative_offset: 9,
        }); // not a new max
        index.maybe_push(TimeIndexEntry {
            timestamp: 200,
            relative_offset: 12,
        });
        assert_eq!(index.lookup_below(100), None);
        assert_eq!(index.lookup_below(101).unwrap().relative_offset, 5);
        assert_eq!(index.lookup_below(i64::MAX).unwrap().relative_offset, 12);
        let parsed = TimeIndex::from_bytes(&index.to_bytes(), 13).unwrap();
        assert_eq!(parsed.last(), index.last());
        assert!(TimeIndex::from_bytes(&index.to_bytes(), 12).is_err());
        assert!(TimeIndex::from_bytes(&index.to_bytes()[..11], 13).is_err());
    }
}
