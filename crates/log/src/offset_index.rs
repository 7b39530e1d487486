//! Sparse offset index of one segment: (offset relative to the segment base, file position),
//! one entry every `index_interval_bytes` of log. Kept in memory; written to `N.index` as
//! big-endian u32 pairs on roll, flush and after recovery, and rebuilt from the log when the
//! file is missing or does not match it.

use crate::LogError;

const ENTRY_BYTES: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetIndexEntry {
    pub relative_offset: u32,
    pub position: u32,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct OffsetIndex {
    entries: Vec<OffsetIndexEntry>,
}

impl OffsetIndex {
    /// Appends an entry; entries must grow in both offset and position.
    pub fn push(&mut self, entry: OffsetIndexEntry) {
        if let Some(last) = self.entries.last() {
            debug_assert!(
                entry.relative_offset > last.relative_offset && entry.position > last.position
            );
            if entry.relative_offset <= last.relative_offset || entry.position <= last.position {
                return;
            }
        }
        self.entries.push(entry);
    }

    /// The nearest entry at or below `relative_offset` (the segment start when there is none).
    pub fn lookup(&self, relative_offset: u32) -> OffsetIndexEntry {
        let count = self
            .entries
            .partition_point(|e| e.relative_offset <= relative_offset);
        match count {
            0 => OffsetIndexEntry {
                relative_offset: 0,
                position: 0,
            },
            n => self.entries[n - 1],
        }
    }

    pub fn last(&self) -> Option<OffsetIndexEntry> {
        self.entries.last().copied()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * ENTRY_BYTES);
        for entry in &self.entries {
            out.extend_from_slice(&entry.relative_offset.to_be_bytes());
            out.extend_from_slice(&entry.position.to_be_bytes());
        }
        out
    }

    /// Parses an index file, checking it is well formed against the segment's size: whole
    /// entries, strictly growing, positions inside the log. Whether the last entry really points
    /// at a batch is checked by recovery, which can read the log.
    pub fn from_bytes(bytes: &[u8], log_bytes: u64) -> Result<OffsetIndex, LogError> {
        if !bytes.len().is_multiple_of(ENTRY_BYTES) {
            return Err(LogError::InvalidBatch(format!(
                "offset index of {} bytes is not whole entries",
                bytes.len()
            )));
        }
        let mut index = OffsetIndex {
            entries: Vec::with_capacity(bytes.len() / ENTRY_BYTES),
        };
        for chunk in bytes.chunks_exact(ENTRY_BYTES) {
            let entry = OffsetIndexEntry {
                relative_offset: u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
                position: u32::from_be_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]),
            };
            let grows = index.entries.last().is_none_or(|last| {
                entry.relative_offset > last.relative_offset && entry.position > last.position
            });
            if !grows || entry.position as u64 >= log_bytes || entry.position == 0 {
                return Err(LogError::InvalidBatch(format!(
                    "offset index entry {entry:?} out of order or bounds"
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

    fn entry(relative_offset: u32, position: u32) -> OffsetIndexEntry {
        OffsetIndexEntry {
            relative_offset,
            position,
        }
    }

    #[test]
    fn lookup_finds_nearest_entry_at_or_below() {
        let mut index = OffsetIndex::default();
        index.push(entry(10, 4100));
        index.push(entry(20, 8200));
        assert_eq!(index.lookup(0), entry(0, 0));
        assert_eq!(index.lookup(9), entry(0, 0));
        assert_eq!(index.lookup(10), entry(10, 4100));
        assert_eq!(index.lookup(19), entry(10, 4100));
        assert_eq!(index.lookup(500), entry(20, 8200));
    }

    #[test]
    fn bytes_roundtrip_and_reject_bad_files() {
        let mut index = OffsetIndex::default();
        index.push(entry(10, 4100));
        index.push(entry(20, 8200));
        let bytes = index.to_bytes();
        assert_eq!(OffsetIndex::from_bytes(&bytes, 9000).unwrap().len(), 2);
        assert!(OffsetIndex::from_bytes(&bytes[..7], 9000).is_err());
        assert!(OffsetIndex::from_bytes(&bytes, 8200).is_err());
        let mut swapped = bytes[8..].to_vec();
        swapped.extend_from_slice(&bytes[..8]);
        assert!(OffsetIndex::from_bytes(&swapped, 9000).is_err());
    }
}
