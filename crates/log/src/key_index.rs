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
//! - The active segment collects entries in memory (an unsorted tail of 16 Ki entries, then
//!   sorted runs of that size); at 256 Ki entries (3 MiB) they are merged into one sorted run
//!   appended to `N.keyruns` without an fsync, so memory per partition stays bounded whatever
//!   the segment size. A lookup scans the tail, binary-searches each run in memory and each
//!   spilled run in the file (about 20 positional reads each, from the page cache). The spill
//!   file is removed once the rolled segment's table is in place, and by recovery, which
//!   rebuilds the active segment's index from the log.
//! - `N.keyindex` holds one sorted table, a streaming merge of the spilled and in-memory runs
//!   written after the segment rolls, off the append path (`key_index_merge`: fsynced, renamed
//!   into place, then trusted by recovery). Until it is in place the rolled segment answers
//!   from its frozen runs. Then rolled segments keep nothing in memory: a lookup
//!   binary-searches the file with positional reads (about 25 reads of 12 bytes for ten
//!   million entries, from the page cache once warm).
//!
//! File layout (big endian): header `b"SLKI"` | version u32 (1) | entry count u64 | log bytes
//! u64 (size of the `.log` it indexes) | CRC-32C of the entries u32 | reserved u32; then
//! `entry count` entries of hash u64 | relative offset u32, sorted by (hash, offset). Recovery
//! trusts a rolled segment's file when the header is well formed, the length matches the count
//! and `log bytes` equals the segment's size; otherwise (missing, stale after a truncation,
//! torn) it is rebuilt from the log. The active segment's index is always rebuilt during the
//! recovery scan of its tail, so appends never fsync it.
//!
//! Compressed batches (gzip, snappy, lz4, zstd) are decompressed when they are appended, in
//! the producer's thread before the append lock (like the CRC check), and their records
//! indexed like any others; recovery's rebuilds do the same. So a lookup needs no scan of
//! compressed batches, at the cost of one decompression per compressed batch on produce. A
//! batch that does not decompress (garbage, or past the bound of `compression`) is not
//! indexed; lookups report how many such batches the active segment holds.
//!
//! When a segment rolls, its table is merged off the append path (`key_index_merge`): until
//! it is in place the segment answers from its frozen runs (`KeyIndex::Merging`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::batch::visit_record_keys;
use crate::storage::{Storage, StorageFile};
use crate::{BatchHeader, LogError, Record};

pub(crate) const KEY_INDEX_SUFFIX: &str = "keyindex";
/// The active segment's spilled runs; removed when it is rolled, and by recovery.
pub(crate) const KEY_RUNS_SUFFIX: &str = "keyruns";

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
/// Unsorted entries collected before they are sorted into a run (a lookup scans them).
const TAIL_ENTRIES_MAX: usize = 16 * 1024;
/// Entries read per positional read while collecting the matches of a hash from a file.
const SCAN_CHUNK_ENTRIES: usize = 256;
/// In-memory entries of the active segment before they spill to `N.keyruns` (3 MiB).
const SPILL_ENTRIES: usize = 256 * 1024;
/// Entries buffered per write of a `.keyindex` table.
const WRITE_CHUNK_ENTRIES: usize = 64 * 1024;

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
    /// The batch is compressed and does not decompress (garbage, or past the bound): its
    /// records are not indexed.
    pub skipped: bool,
}

/// The index entries of one whole batch (`batch` exactly its bytes). Control batches have no
/// user records; a compressed batch is decompressed (outside the append lock, like the CRC
/// check) and marked skipped when it cannot be; a record that does not parse ends the batch's
/// entries (the batch passed its CRC, so that is a producer's malformed batch).
pub(crate) fn batch_keys(header: &BatchHeader, batch: &[u8]) -> BatchKeys {
    let mut keys = BatchKeys::default();
    if header.is_control() {
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
    match visited {
        Ok(()) => {}
        // Nothing of it was read: counted, so lookups can say what they could not search.
        Err(error @ (LogError::Decompression { .. } | LogError::DecompressedTooLarge { .. })) => {
            tracing::debug!(%error, base_offset = header.base_offset, "compressed batch not indexed");
            keys.skipped = true;
        }
        Err(error) => {
            tracing::debug!(%error, base_offset = header.base_offset, "batch records not indexed past a malformed record");
        }
    }
    keys
}

/// Where the active segment's index spills its sorted runs (`N.keyruns`, entries only): memory
/// holds at most `SPILL_ENTRIES` entries per segment, the page cache the rest.
pub(crate) struct SpillFile {
    storage: Arc<dyn Storage>,
    path: PathBuf,
    file: Option<Box<dyn StorageFile>>,
    /// (first entry, entry count) of each spilled run, in the order written.
    runs: Vec<(u64, u64)>,
    entries: u64,
}

impl std::fmt::Debug for SpillFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpillFile")
            .field("path", &self.path)
            .field("runs", &self.runs.len())
            .field("entries", &self.entries)
            .finish()
    }
}

/// The spilled runs of an active segment at one moment, searched without holding its lock.
pub(crate) struct SpilledRuns {
    storage: Arc<dyn Storage>,
    path: PathBuf,
    runs: Vec<(u64, u64)>,
}

impl SpilledRuns {
    pub fn candidates(&self, hash: u64, found: &mut Vec<u32>) -> Result<(), LogError> {
        if self.runs.is_empty() {
            return Ok(());
        }
        let file = match self.storage.open(&self.path) {
            Ok(file) => file,
            // Rolled or truncated since: the caller's segment snapshot is stale.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(LogError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        for &(first, count) in &self.runs {
            found.extend(file_candidates(
                file.as_ref(),
                &self.path,
                first * ENTRY_BYTES as u64,
                count,
                hash,
            )?);
        }
        Ok(())
    }
}

/// The active segment's entries: in one buffer, sorted runs of `TAIL_ENTRIES_MAX` followed by
/// an unsorted tail; past `SPILL_ENTRIES` they are merged into one run and spilled to disk.
/// The buffers are reused, so appends allocate nothing once they have grown.
#[derive(Debug, Default)]
pub(crate) struct KeyIndexRuns {
    /// `memory[..sorted_end]` is sorted runs of `TAIL_ENTRIES_MAX` entries; the rest is the tail.
    memory: Vec<KeyIndexEntry>,
    sorted_end: usize,
    /// Encoded entries of one spill.
    spill_bytes: Vec<u8>,
    /// Compressed batches that did not decompress, whose records are not indexed.
    pub skipped_batches: u64,
    spill: Option<SpillFile>,
    /// A spill write failed: the index misses entries (see `is_broken`).
    broken: bool,
}

impl KeyIndexRuns {
    /// Entries that spill to `path` past the memory bound (a segment's `N.keyruns`).
    pub fn spilling_to(storage: Arc<dyn Storage>, path: PathBuf) -> KeyIndexRuns {
        KeyIndexRuns {
            spill: Some(SpillFile {
                storage,
                path,
                file: None,
                runs: Vec::new(),
                entries: 0,
            }),
            ..KeyIndexRuns::default()
        }
    }

    /// A spill failed, so entries are missing: the segment's index must not be used.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    pub fn push(&mut self, entry: KeyIndexEntry) {
        self.memory.push(entry);
        if self.memory.len() - self.sorted_end < TAIL_ENTRIES_MAX {
            return;
        }
        self.memory[self.sorted_end..].sort_unstable();
        self.sorted_end = self.memory.len();
        if self.memory.len() >= SPILL_ENTRIES && self.spill.is_some() {
            if let Err(error) = self.spill_memory() {
                tracing::warn!(%error, "cannot spill key index entries: the segment's key index is dropped until the log is reopened");
                self.broken = true;
            }
        }
    }

    /// Calls `emit` with every in-memory entry in order (a merge of the sorted runs and the
    /// sorted tail).
    fn merge_memory(&self, mut emit: impl FnMut(&KeyIndexEntry)) {
        let mut tail = self.memory[self.sorted_end..].to_vec();
        tail.sort_unstable();
        let mut runs: Vec<&[KeyIndexEntry]> = self.memory[..self.sorted_end]
            .chunks(TAIL_ENTRIES_MAX)
            .collect();
        runs.push(&tail);
        let mut heap: BinaryHeap<Reverse<(KeyIndexEntry, usize)>> = runs
            .iter()
            .enumerate()
            .filter_map(|(index, run)| run.first().map(|e| Reverse((*e, index))))
            .collect();
        let mut positions = vec![0usize; runs.len()];
        while let Some(Reverse((entry, index))) = heap.pop() {
            emit(&entry);
            positions[index] += 1;
            if let Some(next) = runs[index].get(positions[index]) {
                heap.push(Reverse((*next, index)));
            }
        }
    }

    /// Writes the in-memory entries as one sorted run at the end of the spill file (no fsync:
    /// recovery rebuilds an active segment's index from the log).
    fn spill_memory(&mut self) -> Result<(), LogError> {
        let mut bytes = std::mem::take(&mut self.spill_bytes);
        bytes.clear();
        self.merge_memory(|entry| encode_entry(entry, &mut bytes));
        let written = self.write_spill(&bytes);
        self.spill_bytes = bytes;
        written?;
        self.memory.clear();
        self.sorted_end = 0;
        Ok(())
    }

    fn write_spill(&mut self, bytes: &[u8]) -> Result<(), LogError> {
        let Some(spill) = self.spill.as_mut() else {
            return Ok(());
        };
        let io = |source| LogError::Io {
            path: spill.path.clone(),
            source,
        };
        if spill.file.is_none() {
            spill.file = Some(spill.storage.create(&spill.path).map_err(io)?);
        }
        let Some(file) = spill.file.as_ref() else {
            return Ok(());
        };
        file.write_all_at(bytes, spill.entries * ENTRY_BYTES as u64)
            .map_err(io)?;
        let count = (bytes.len() / ENTRY_BYTES) as u64;
        spill.runs.push((spill.entries, count));
        spill.entries += count;
        Ok(())
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

    /// Relative offsets of the in-memory entries with `hash`, unsorted; the spilled runs to
    /// search (outside the segment's lock) for the rest.
    pub fn candidates(&self, hash: u64) -> (Vec<u32>, SpilledRuns) {
        let mut found = Vec::new();
        for run in self.memory[..self.sorted_end].chunks(TAIL_ENTRIES_MAX) {
            let start = run.partition_point(|e| e.hash < hash);
            found.extend(
                run[start..]
                    .iter()
                    .take_while(|e| e.hash == hash)
                    .map(|e| e.relative_offset),
            );
        }
        found.extend(
            self.memory[self.sorted_end..]
                .iter()
                .filter(|e| e.hash == hash)
                .map(|e| e.relative_offset),
        );
        let spilled = match &self.spill {
            Some(spill) => SpilledRuns {
                storage: Arc::clone(&spill.storage),
                path: spill.path.clone(),
                runs: spill.runs.clone(),
            },
            None => SpilledRuns {
                storage: Arc::new(crate::RealDisk),
                path: PathBuf::new(),
                runs: Vec::new(),
            },
        };
        (found, spilled)
    }

    /// Writes the `.keyindex` table for a segment of `log_bytes` into `out`: a streaming
    /// merge of the spilled runs and the in-memory entries, a bounded buffer per run.
    pub fn write_table(
        &self,
        out: &dyn StorageFile,
        out_path: &Path,
        log_bytes: u64,
    ) -> Result<KeyIndexFileHeader, LogError> {
        let out_io = |source| LogError::Io {
            path: out_path.to_path_buf(),
            source,
        };
        let mut sources: Vec<RunCursor> = Vec::new();
        if let Some(spill) = &self.spill {
            if let Some(file) = &spill.file {
                for &(first, count) in &spill.runs {
                    sources.push(RunCursor::on_file(file.as_ref(), &spill.path, first, count));
                }
            }
        }
        let mut in_memory = Vec::with_capacity(self.memory.len());
        self.merge_memory(|entry| in_memory.push(*entry));
        sources.push(RunCursor::in_memory(in_memory));
        let mut heap = BinaryHeap::new();
        for (index, source) in sources.iter_mut().enumerate() {
            if let Some(entry) = source.next()? {
                heap.push(Reverse((entry, index)));
            }
        }
        let mut buffer = Vec::with_capacity(WRITE_CHUNK_ENTRIES * ENTRY_BYTES);
        let mut position = HEADER_BYTES as u64;
        let mut crc = 0u32;
        let mut entry_count = 0u64;
        while let Some(Reverse((entry, index))) = heap.pop() {
            encode_entry(&entry, &mut buffer);
            entry_count += 1;
            if buffer.len() >= WRITE_CHUNK_ENTRIES * ENTRY_BYTES {
                crc = crc32c::crc32c_append(crc, &buffer);
                out.write_all_at(&buffer, position).map_err(out_io)?;
                position += buffer.len() as u64;
                buffer.clear();
            }
            if let Some(next) = sources[index].next()? {
                heap.push(Reverse((next, index)));
            }
        }
        crc = crc32c::crc32c_append(crc, &buffer);
        out.write_all_at(&buffer, position).map_err(out_io)?;
        let header = KeyIndexFileHeader {
            entry_count,
            entries_crc: crc,
        };
        out.write_all_at(&header.to_bytes(log_bytes), 0)
            .map_err(out_io)?;
        Ok(header)
    }

    /// Relative offsets of every entry with `hash`, in memory and in the spilled runs, read
    /// through the spill file's open handle (a rolled segment's frozen runs, searched while
    /// its table is merged; the handle stays readable after the file is removed).
    pub fn all_candidates(&self, hash: u64) -> Result<Vec<u32>, LogError> {
        let (mut found, _) = self.candidates(hash);
        if let Some(SpillFile {
            file: Some(file),
            path,
            runs,
            ..
        }) = &self.spill
        {
            for &(first, count) in runs {
                found.extend(file_candidates(
                    file.as_ref(),
                    path,
                    first * ENTRY_BYTES as u64,
                    count,
                    hash,
                )?);
            }
        }
        Ok(found)
    }

    /// The spill file, if one was written (its runs are part of the index).
    pub fn spill_path(&self) -> Option<&Path> {
        self.spill
            .as_ref()
            .filter(|spill| spill.file.is_some())
            .map(|spill| spill.path.as_path())
    }

    /// Removes the spill file (the segment was rolled and its table written).
    pub fn remove_spill(&mut self) {
        if let Some(spill) = self.spill.take() {
            if spill.file.is_some() {
                if let Err(error) = spill.storage.remove_file(&spill.path) {
                    tracing::warn!(path = %spill.path.display(), %error, "cannot remove spilled key index runs (recovery removes them)");
                }
            }
        }
    }
}

/// Reads one sorted run in bounded chunks.
struct RunCursor<'a> {
    file: Option<(&'a dyn StorageFile, &'a Path)>,
    /// Next entry to read from the file, and entries of the run left there.
    next_entry: u64,
    left: u64,
    buffer: Vec<KeyIndexEntry>,
    position: usize,
}

impl<'a> RunCursor<'a> {
    fn on_file(file: &'a dyn StorageFile, path: &'a Path, first: u64, count: u64) -> Self {
        RunCursor {
            file: Some((file, path)),
            next_entry: first,
            left: count,
            buffer: Vec::new(),
            position: 0,
        }
    }

    fn in_memory(entries: Vec<KeyIndexEntry>) -> Self {
        RunCursor {
            file: None,
            next_entry: 0,
            left: 0,
            buffer: entries,
            position: 0,
        }
    }

    fn next(&mut self) -> Result<Option<KeyIndexEntry>, LogError> {
        if self.position == self.buffer.len() {
            let Some((file, path)) = self.file else {
                return Ok(None);
            };
            if self.left == 0 {
                return Ok(None);
            }
            let count = self.left.min(SCAN_CHUNK_ENTRIES as u64 * 16) as usize;
            let mut bytes = vec![0u8; count * ENTRY_BYTES];
            file.read_exact_at(&mut bytes, self.next_entry * ENTRY_BYTES as u64)
                .map_err(|source| LogError::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
            self.buffer.clear();
            self.buffer
                .extend(bytes.chunks_exact(ENTRY_BYTES).map(decode_entry));
            self.position = 0;
            self.next_entry += count as u64;
            self.left -= count as u64;
        }
        let entry = self.buffer[self.position];
        self.position += 1;
        Ok(Some(entry))
    }
}

fn encode_entry(entry: &KeyIndexEntry, out: &mut Vec<u8>) {
    out.extend_from_slice(&entry.hash.to_be_bytes());
    out.extend_from_slice(&entry.relative_offset.to_be_bytes());
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
    fn to_bytes(self, log_bytes: u64) -> [u8; HEADER_BYTES] {
        let mut header = [0u8; HEADER_BYTES];
        header[..4].copy_from_slice(MAGIC);
        header[4..8].copy_from_slice(&VERSION.to_be_bytes());
        header[8..16].copy_from_slice(&self.entry_count.to_be_bytes());
        header[16..24].copy_from_slice(&log_bytes.to_be_bytes());
        header[24..28].copy_from_slice(&self.entries_crc.to_be_bytes());
        header
    }

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

/// Relative offsets of every entry with `hash` in the sorted run of `entry_count` entries
/// starting at byte `start` of `file`, by binary search with positional reads.
pub(crate) fn file_candidates(
    file: &dyn StorageFile,
    path: &Path,
    start: u64,
    entry_count: u64,
    hash: u64,
) -> Result<Vec<u32>, LogError> {
    let io = |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    };
    let entry_at = |index: u64| -> Result<KeyIndexEntry, LogError> {
        let mut chunk = [0u8; ENTRY_BYTES];
        file.read_exact_at(&mut chunk, start + index * ENTRY_BYTES as u64)
            .map_err(io)?;
        Ok(decode_entry(&chunk))
    };
    // First index whose hash is >= `hash`.
    let (mut low, mut high) = (0u64, entry_count);
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
    while index < entry_count {
        let count = (entry_count - index).min(SCAN_CHUNK_ENTRIES as u64) as usize;
        let bytes = &mut chunk[..count * ENTRY_BYTES];
        file.read_exact_at(bytes, start + index * ENTRY_BYTES as u64)
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

/// Entries with `hash` in a `.keyindex` file whose header was checked.
pub(crate) fn table_candidates(
    file: &dyn StorageFile,
    path: &Path,
    header: &KeyIndexFileHeader,
    hash: u64,
) -> Result<Vec<u32>, LogError> {
    file_candidates(file, path, HEADER_BYTES as u64, header.entry_count, hash)
}

/// The key index of one segment.
#[derive(Debug)]
pub(crate) enum KeyIndex {
    /// Not kept (`LogConfig::key_index` off).
    Disabled,
    /// The active segment's entries, in memory.
    Memory(KeyIndexRuns),
    /// A rolled segment's entries, in its `.keyindex` file (checked when loaded).
    OnDisk(KeyIndexFileHeader),
    /// A rolled segment whose `.keyindex` is being merged in the background: lookups search
    /// its frozen runs (memory and `N.keyruns`), shared with the merge. The merge installs
    /// its table only while this same `Arc` is still here, so a truncation, retention or
    /// config change during the merge (which replaces it) discards the result.
    Merging(Arc<KeyIndexRuns>),
    /// Indexing was turned on while this segment already held unindexed records: lookups skip
    /// it until recovery rebuilds it.
    Incomplete,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RecordBatchBuilder;

    #[test]
    fn runs_spill_past_the_memory_bound_and_merge_into_one_table() {
        let disk = crate::SimDisk::new(1);
        let storage = disk.storage();
        let dir = Path::new("/data");
        storage.create_dir_all(dir).unwrap();
        let mut runs = KeyIndexRuns::spilling_to(Arc::clone(&storage), dir.join("0.keyruns"));
        let total = (SPILL_ENTRIES * 2 + 1000) as u32;
        for offset in 0..total {
            runs.push(KeyIndexEntry {
                hash: (offset % 1009) as u64,
                relative_offset: offset,
            });
        }
        assert_eq!(runs.spill.as_ref().unwrap().runs.len(), 2, "spilled twice");
        assert!(runs.memory.len() < SPILL_ENTRIES);
        let expected: Vec<u32> = (0..total).filter(|o| o % 1009 == 5).collect();
        let (mut found, spilled) = runs.candidates(5);
        spilled.candidates(5, &mut found).unwrap();
        found.sort_unstable();
        assert_eq!(found, expected);

        let path = dir.join("0.keyindex");
        let out = storage.create(&path).unwrap();
        let header = runs.write_table(out.as_ref(), &path, 4321).unwrap();
        assert_eq!(header.entry_count, total as u64);
        assert_eq!(
            KeyIndexFileHeader::read(out.as_ref(), 4321).unwrap(),
            header
        );
        assert!(
            KeyIndexFileHeader::read(out.as_ref(), 4322).is_err(),
            "stale"
        );
        let mut found = table_candidates(out.as_ref(), &path, &header, 5).unwrap();
        assert!(found.windows(2).all(|w| w[0] < w[1]), "sorted by offset");
        found.sort_unstable();
        assert_eq!(found, expected);
        let mut entries = vec![0u8; total as usize * ENTRY_BYTES];
        out.read_exact_at(&mut entries, HEADER_BYTES as u64)
            .unwrap();
        assert_eq!(crc32c::crc32c(&entries), header.entries_crc);
        let table: Vec<KeyIndexEntry> = entries
            .chunks_exact(ENTRY_BYTES)
            .map(decode_entry)
            .collect();
        assert!(table.windows(2).all(|w| w[0] <= w[1]));

        runs.remove_spill();
        assert!(!disk.exists(&dir.join("0.keyruns")));
        out.set_len(HEADER_BYTES as u64 + 5).unwrap();
        assert!(
            KeyIndexFileHeader::read(out.as_ref(), 4321).is_err(),
            "torn"
        );
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
