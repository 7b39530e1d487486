//! Per-segment hash index of record keys and message ids (RocketMQ keeps a hash index file per
//! commit log for the same job): "the records with key K" and "the record with message id X"
//! without scanning the log.
//!
//! An entry is `(hash, relative offset)`: the 64-bit xxh3 hash of a record's key, or of the
//! value of its `message-id` header (the header AMQP publishes carry their `message-id`
//! property in, and the one a Kafka producer sets), hashed with a different seed per kind so a
//! key and an id with the same bytes are different entries. Null and empty keys are not indexed.
//! A hash only names candidates: every lookup reads the candidate's batch (CRC-checked) and
//! compares the real key or id, so hash collisions and a damaged index file can cost a read or
//! a miss, never a wrong answer.
//!
//! Where entries live:
//! - The active segment keeps its entries in memory as sorted runs merged like a binary counter
//!   (a run is merged into the one before it while that one is no bigger), so an append costs
//!   amortised O(log n) and a lookup is a binary search in each of O(log n) runs. Memory: 12
//!   bytes per indexed record of the active segment only.
//! - `N.keyindex` holds one sorted table, written when the segment is rolled (fsynced with the
//!   other indexes, then trusted by recovery), on flush and after recovery. Rolled segments keep
//!   nothing in memory: a lookup binary-searches the file with positional reads (about 25 reads
//!   of 12 bytes for ten million entries, from the page cache once warm).
//!
//! File layout (big endian): header `b"SLKI"` | version u32 (1) | entry count u64 | log bytes
//! u64 (size of the `.log` it indexes) | CRC-32C of the entries u32 | reserved u32; then
//! `entry count` entries of hash u64 | relative offset u32, sorted by (hash, offset). Recovery
//! trusts a rolled segment's file when the header is well formed, the length matches the count
//! and `log bytes` equals the segment's size; otherwise (missing, stale after a truncation,
//! torn) it is rebuilt from the log. The active segment's index is always rebuilt during the
//! recovery scan of its tail, so appends never fsync or even write it.
//!
//! Compressed batches are not decoded by this crate (no codecs), so their records are not
//! indexed; lookups report how many such batches were appended to indexed segments.

use std::path::Path;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::batch::visit_record_keys;
use crate::storage::StorageFile;
use crate::{BatchHeader, LogError, Record};

pub(crate) const KEY_INDEX_SUFFIX: &str = "keyindex";

/// The record header holding a message's id (AMQP's `message-id` property crosses into Kafka
/// records under this name).
pub const MESSAGE_ID_HEADER: &str = "message-id";

const MAGIC: &[u8; 4] = b"SLKI";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 32;
const ENTRY_BYTES: usize = 12;
// Seeds are part of the file format: changing one invalidates every `.keyindex` file.
const KEY_SEED: u64 = 0x6b65_7973;
const MESSAGE_ID_SEED: u64 = 0x6d_7367_6964;
/// Unsorted entries collected before they are sorted into a run.
const TAIL_ENTRIES_MAX: usize = 1024;
/// Entries read per positional read while collecting the matches of a hash from a file.
const SCAN_CHUNK_ENTRIES: usize = 256;

/// What to look a record up by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordLookup<'a> {
    /// The record key (exact bytes).
    Key(&'a [u8]),
    /// The value of the `message-id` record header (exact bytes).
    MessageId(&'a [u8]),
}

impl RecordLookup<'_> {
    pub(crate) fn hash(&self) -> u64 {
        match self {
            RecordLookup::Key(key) => key_hash(key),
            RecordLookup::MessageId(id) => message_id_hash(id),
        }
    }

    /// Whether `record` really has this key or id (the index only knows hashes).
    pub(crate) fn matches(&self, record: &Record) -> bool {
        match self {
            RecordLookup::Key(key) => record.key.as_deref() == Some(*key),
            RecordLookup::MessageId(id) => record
                .headers
                .iter()
                .find(|(name, _)| name == MESSAGE_ID_HEADER)
                .is_some_and(|(_, value)| value.as_deref() == Some(*id)),
        }
    }
}

fn key_hash(key: &[u8]) -> u64 {
    xxh3_64_with_seed(key, KEY_SEED)
}

fn message_id_hash(id: &[u8]) -> u64 {
    xxh3_64_with_seed(id, MESSAGE_ID_SEED)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct KeyIndexEntry {
    pub hash: u64,
    pub relative_offset: u32,
}

/// Index entries of one batch, relative to the batch's base offset (computed before the
/// offsets are assigned, outside the append lock).
#[derive(Debug, Default, Clone)]
pub(crate) struct BatchKeys {
    /// (hash, offset delta within the batch)
    pub entries: Vec<(u64, u32)>,
    /// The batch is compressed: its records are not indexed.
    pub skipped: bool,
}

/// The index entries of one whole batch (`batch` exactly its bytes). Control batches have no
/// user records; a compressed batch is marked skipped; a record that does not parse ends the
/// batch's entries (the batch passed its CRC, so that is a producer's malformed batch).
pub(crate) fn batch_keys(header: &BatchHeader, batch: &[u8]) -> BatchKeys {
    let mut keys = BatchKeys::default();
    if header.is_control() {
        return keys;
    }
    if header.compression() != 0 {
        keys.skipped = true;
        return keys;
    }
    let visited = visit_record_keys(
        header,
        batch,
        MESSAGE_ID_HEADER.as_bytes(),
        |offset_delta, key, message_id| {
            let Ok(delta) = u32::try_from(offset_delta) else {
                return;
            };
            if let Some(key) = key.filter(|k| !k.is_empty()) {
                keys.entries.push((key_hash(key), delta));
            }
            if let Some(id) = message_id {
                keys.entries.push((message_id_hash(id), delta));
            }
        },
    );
    if let Err(error) = visited {
        tracing::debug!(%error, base_offset = header.base_offset, "batch records not indexed past a malformed record");
    }
    keys
}

/// The active segment's entries: sorted runs, each no bigger than the one before it, plus a
/// small unsorted tail.
#[derive(Debug, Default, Clone)]
pub(crate) struct KeyIndexRuns {
    runs: Vec<Vec<KeyIndexEntry>>,
    tail: Vec<KeyIndexEntry>,
    len: usize,
    /// Compressed batches whose records are not indexed.
    pub skipped_batches: u64,
}

impl KeyIndexRuns {
    pub fn push(&mut self, entry: KeyIndexEntry) {
        self.tail.push(entry);
        self.len += 1;
        if self.tail.len() >= TAIL_ENTRIES_MAX {
            let mut run = std::mem::take(&mut self.tail);
            run.sort_unstable();
            self.runs.push(run);
            while self.runs.len() >= 2
                && self.runs[self.runs.len() - 2].len() <= self.runs[self.runs.len() - 1].len()
            {
                let (Some(newer), Some(older)) = (self.runs.pop(), self.runs.pop()) else {
                    break;
                };
                self.runs.push(merge(&older, &newer));
            }
        }
    }

    pub fn push_batch(&mut self, relative_base: u32, keys: &BatchKeys) {
        if keys.skipped {
            self.skipped_batches += 1;
        }
        for &(hash, delta) in &keys.entries {
            if let Some(relative_offset) = relative_base.checked_add(delta) {
                self.push(KeyIndexEntry {
                    hash,
                    relative_offset,
                });
            }
        }
    }

    /// Relative offsets of every entry with `hash`, unsorted.
    pub fn candidates(&self, hash: u64) -> Vec<u32> {
        let mut found = Vec::new();
        for run in &self.runs {
            let start = run.partition_point(|e| e.hash < hash);
            found.extend(
                run[start..]
                    .iter()
                    .take_while(|e| e.hash == hash)
                    .map(|e| e.relative_offset),
            );
        }
        found.extend(
            self.tail
                .iter()
                .filter(|e| e.hash == hash)
                .map(|e| e.relative_offset),
        );
        found
    }

    fn sorted_entries(&self) -> Vec<KeyIndexEntry> {
        let mut all = Vec::with_capacity(self.len);
        for run in &self.runs {
            all.extend_from_slice(run);
        }
        all.extend_from_slice(&self.tail);
        // Runs are sorted: the standard sort is a merge sort that finds and merges them.
        all.sort();
        all
    }

    /// The `.keyindex` file contents for a segment of `log_bytes`.
    pub fn to_bytes(&self, log_bytes: u64) -> Vec<u8> {
        let entries = self.sorted_entries();
        let mut out = Vec::with_capacity(HEADER_BYTES + entries.len() * ENTRY_BYTES);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&(entries.len() as u64).to_be_bytes());
        out.extend_from_slice(&log_bytes.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes()); // CRC, patched below
        out.extend_from_slice(&0u32.to_be_bytes());
        for entry in &entries {
            out.extend_from_slice(&entry.hash.to_be_bytes());
            out.extend_from_slice(&entry.relative_offset.to_be_bytes());
        }
        let crc = crc32c::crc32c(&out[HEADER_BYTES..]);
        out[24..28].copy_from_slice(&crc.to_be_bytes());
        out
    }

    /// Parses a whole `.keyindex` file, checking its CRC (for tests and small files).
    #[cfg(test)]
    pub fn from_bytes(bytes: &[u8], log_bytes: u64) -> Result<KeyIndexRuns, LogError> {
        let header = KeyIndexFileHeader::parse(bytes, bytes.len() as u64, log_bytes)?;
        let entries = &bytes[HEADER_BYTES..];
        if crc32c::crc32c(entries) != header.entries_crc {
            return Err(bad("key index entries fail their CRC".into()));
        }
        let mut runs = KeyIndexRuns::default();
        for chunk in entries.chunks_exact(ENTRY_BYTES) {
            runs.push(decode_entry(chunk));
        }
        Ok(runs)
    }
}

fn merge(older: &[KeyIndexEntry], newer: &[KeyIndexEntry]) -> Vec<KeyIndexEntry> {
    let mut merged = Vec::with_capacity(older.len() + newer.len());
    let (mut i, mut j) = (0, 0);
    while i < older.len() && j < newer.len() {
        if older[i] <= newer[j] {
            merged.push(older[i]);
            i += 1;
        } else {
            merged.push(newer[j]);
            j += 1;
        }
    }
    merged.extend_from_slice(&older[i..]);
    merged.extend_from_slice(&newer[j..]);
    merged
}

fn decode_entry(chunk: &[u8]) -> KeyIndexEntry {
    let mut hash = [0u8; 8];
    hash.copy_from_slice(&chunk[..8]);
    KeyIndexEntry {
        hash: u64::from_be_bytes(hash),
        relative_offset: u32::from_be_bytes([chunk[8], chunk[9], chunk[10], chunk[11]]),
    }
}

fn bad(reason: String) -> LogError {
    LogError::InvalidBatch(reason)
}

/// The checked header of a `.keyindex` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyIndexFileHeader {
    pub entry_count: u64,
    pub entries_crc: u32,
}

impl KeyIndexFileHeader {
    /// Checks magic, version, that `file_bytes` is exactly the header and `entry count`
    /// entries, and that the file indexes a log of `log_bytes`.
    pub fn parse(
        bytes: &[u8],
        file_bytes: u64,
        log_bytes: u64,
    ) -> Result<KeyIndexFileHeader, LogError> {
        let Some(header) = bytes.get(..HEADER_BYTES) else {
            return Err(bad("key index shorter than its header".into()));
        };
        if &header[..4] != MAGIC || header[4..8] != VERSION.to_be_bytes() {
            return Err(bad("key index has a bad magic or version".into()));
        }
        let field = |range: std::ops::Range<usize>| {
            let mut value = [0u8; 8];
            value.copy_from_slice(&header[range]);
            u64::from_be_bytes(value)
        };
        let entry_count = field(8..16);
        let indexed_log_bytes = field(16..24);
        let entries_crc = u32::from_be_bytes([header[24], header[25], header[26], header[27]]);
        let expected_bytes = entry_count
            .checked_mul(ENTRY_BYTES as u64)
            .and_then(|b| b.checked_add(HEADER_BYTES as u64));
        if expected_bytes != Some(file_bytes) {
            return Err(bad(format!(
                "key index of {file_bytes} bytes does not hold {entry_count} entries"
            )));
        }
        if indexed_log_bytes != log_bytes {
            return Err(bad(format!(
                "key index covers {indexed_log_bytes} log bytes, the segment has {log_bytes}"
            )));
        }
        Ok(KeyIndexFileHeader {
            entry_count,
            entries_crc,
        })
    }

    /// Reads and checks the header of an open `.keyindex` file.
    pub fn read(file: &dyn StorageFile, log_bytes: u64) -> Result<KeyIndexFileHeader, LogError> {
        let file_bytes = file.len().map_err(|e| bad(e.to_string()))?;
        let mut header = [0u8; HEADER_BYTES];
        if file_bytes < HEADER_BYTES as u64 {
            return Err(bad("key index shorter than its header".into()));
        }
        file.read_exact_at(&mut header, 0)
            .map_err(|e| bad(e.to_string()))?;
        KeyIndexFileHeader::parse(&header, file_bytes, log_bytes)
    }
}

/// Relative offsets of every entry with `hash` in a `.keyindex` file, by binary search with
/// positional reads.
pub(crate) fn file_candidates(
    file: &dyn StorageFile,
    path: &Path,
    header: &KeyIndexFileHeader,
    hash: u64,
) -> Result<Vec<u32>, LogError> {
    let io = |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    };
    let entry_at = |index: u64| -> Result<KeyIndexEntry, LogError> {
        let mut chunk = [0u8; ENTRY_BYTES];
        file.read_exact_at(&mut chunk, HEADER_BYTES as u64 + index * ENTRY_BYTES as u64)
            .map_err(io)?;
        Ok(decode_entry(&chunk))
    };
    // First index whose hash is >= `hash`.
    let (mut low, mut high) = (0u64, header.entry_count);
    while low < high {
        let middle = low + (high - low) / 2;
        if entry_at(middle)?.hash < hash {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    let mut found = Vec::new();
    let mut chunk = vec![0u8; SCAN_CHUNK_ENTRIES * ENTRY_BYTES];
    let mut index = low;
    while index < header.entry_count {
        let count = (header.entry_count - index).min(SCAN_CHUNK_ENTRIES as u64) as usize;
        let bytes = &mut chunk[..count * ENTRY_BYTES];
        file.read_exact_at(bytes, HEADER_BYTES as u64 + index * ENTRY_BYTES as u64)
            .map_err(io)?;
        for entry in bytes.chunks_exact(ENTRY_BYTES).map(decode_entry) {
            if entry.hash != hash {
                return Ok(found);
            }
            found.push(entry.relative_offset);
        }
        index += count as u64;
    }
    Ok(found)
}

/// The key index of one segment.
#[derive(Debug, Clone)]
pub(crate) enum KeyIndex {
    /// Not kept (`LogConfig::key_index` off).
    Disabled,
    /// The active segment's entries, in memory.
    Memory(KeyIndexRuns),
    /// A rolled segment's entries, in its `.keyindex` file (checked when loaded).
    OnDisk(KeyIndexFileHeader),
    /// Indexing was turned on while this segment already held unindexed records: lookups skip
    /// it until recovery rebuilds it.
    Incomplete,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RecordBatchBuilder;

    #[test]
    fn runs_find_every_entry_of_a_hash_and_roundtrip_through_bytes() {
        let mut runs = KeyIndexRuns::default();
        for offset in 0..10_000u32 {
            runs.push(KeyIndexEntry {
                hash: (offset % 97) as u64,
                relative_offset: offset,
            });
        }
        assert!(runs.runs.len() <= 16, "runs merge: {}", runs.runs.len());
        let mut found = runs.candidates(5);
        found.sort_unstable();
        let expected: Vec<u32> = (0..10_000).filter(|o| o % 97 == 5).collect();
        assert_eq!(found, expected);
        let bytes = runs.to_bytes(1234);
        let parsed = KeyIndexRuns::from_bytes(&bytes, 1234).unwrap();
        let mut found = parsed.candidates(5);
        found.sort_unstable();
        assert_eq!(found, expected);
        assert!(KeyIndexRuns::from_bytes(&bytes, 1235).is_err(), "stale");
        assert!(KeyIndexRuns::from_bytes(&bytes[..bytes.len() - 1], 1234).is_err());
        let mut flipped = bytes.clone();
        flipped[HEADER_BYTES + 3] ^= 1;
        assert!(KeyIndexRuns::from_bytes(&flipped, 1234).is_err());
    }

    #[test]
    fn batch_keys_index_keys_and_message_ids_but_not_empty_keys() {
        let mut builder = RecordBatchBuilder::new();
        for (key, id) in [
            (Some(b"k".to_vec()), None),
            (Some(Vec::new()), Some(b"id-1".to_vec())),
            (None, None),
        ] {
            builder.push(Record {
                key,
                headers: id
                    .map(|id| vec![(MESSAGE_ID_HEADER.to_string(), Some(id))])
                    .unwrap_or_default(),
                ..Default::default()
            });
        }
        let batch = builder.build();
        let header = BatchHeader::parse(&batch).unwrap();
        let keys = batch_keys(&header, &batch);
        assert_eq!(
            keys.entries,
            vec![(key_hash(b"k"), 0), (message_id_hash(b"id-1"), 1)]
        );
        assert_ne!(key_hash(b"same"), message_id_hash(b"same"));
    }
}
