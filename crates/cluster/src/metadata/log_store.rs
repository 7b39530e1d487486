//! The metadata group's Raft log: one append-only file plus a small state file, on any
//! [`sluice_log::Storage`] (so simulations can run it on `SimDisk`).
//!
//! - `log`: records `[len u32 LE][crc32c u32 LE][bincode entry]`. Appends are fsynced before
//!   openraft is told they are durable. On open, the first torn or corrupt record and everything
//!   after it are cut off (they were never acknowledged).
//! - `raft_state.json`: vote, committed log id and last purged log id, replaced atomically
//!   (write a temporary file, fsync, rename, fsync the directory).
//!
//! Metadata changes are rare and small, so every entry is also kept in memory; purging (after a
//! snapshot) rewrites the file without the purged prefix. The file I/O is synchronous on the
//! calling task: a metadata write costs one fsync, which is what consensus waits for anyway.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bincode::Options;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, RaftLogId, RaftLogReader, StorageError, StorageIOError, Vote,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sluice_log::{Storage, StorageFile};

use super::MetadataRaft;
use crate::NodeId;

const LOG_FILE: &str = "log";
const STATE_FILE: &str = "raft_state.json";
const RECORD_HEADER_BYTES: u64 = 8;
/// A metadata entry larger than this is refused on write and treated as corruption on read.
const ENTRY_BYTES_MAX: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum MetadataStoreError {
    #[error("metadata store I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("metadata store file {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PersistedRaftState {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
}

struct LogInner {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    file: Box<dyn StorageFile>,
    file_len: u64,
    /// Entries after `state.last_purged`, with the file offset of their record.
    entries: BTreeMap<u64, (u64, Entry<MetadataRaft>)>,
    state: PersistedRaftState,
}

/// The metadata group's `RaftLogStorage`; clones share the same log (one is the reader).
#[derive(Clone)]
pub struct MetadataLogStore {
    inner: Arc<Mutex<LogInner>>,
}

fn entry_codec() -> impl Options {
    bincode::DefaultOptions::new().with_limit(ENTRY_BYTES_MAX)
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> MetadataStoreError + '_ {
    move |source| MetadataStoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The whole file, or `None` when it does not exist.
pub(super) fn read_file_if_exists(
    storage: &dyn Storage,
    path: &Path,
) -> io::Result<Option<Vec<u8>>> {
    let file = match storage.open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = usize::try_from(file.len()?).map_err(|_| io::Error::other("file too large"))?;
    let mut data = vec![0; len];
    file.read_exact_at(&mut data, 0)?;
    Ok(Some(data))
}

/// Replaces `dir/name` with `data` so that a crash leaves either the old or the new content.
pub(super) fn write_file_atomically(
    storage: &dyn Storage,
    dir: &Path,
    name: &str,
    data: &[u8],
) -> io::Result<()> {
    let temporary = dir.join(format!("{name}.tmp"));
    let file = storage.create(&temporary)?;
    file.write_all_at(data, 0)?;
    file.sync_all()?;
    drop(file);
    storage.rename(&temporary, &dir.join(name))?;
    storage.sync_dir(dir)
}

impl MetadataLogStore {
    /// Opens (or creates) the log in `dir`, cutting off a torn tail.
    pub fn open(storage: Arc<dyn Storage>, dir: &Path) -> Result<Self, MetadataStoreError> {
        storage.create_dir_all_durable(dir).map_err(io_error(dir))?;
        let state_path = dir.join(STATE_FILE);
        let state = match read_file_if_exists(storage.as_ref(), &state_path)
            .map_err(io_error(&state_path))?
        {
            Some(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| MetadataStoreError::Corrupt {
                    path: state_path.clone(),
                    reason: e.to_string(),
                })?
            }
            None => PersistedRaftState::default(),
        };
        let log_path = dir.join(LOG_FILE);
        let file = match storage.open(&log_path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let file = storage.create(&log_path).map_err(io_error(&log_path))?;
                storage.sync_dir(dir).map_err(io_error(dir))?;
                file
            }
            Err(e) => return Err(io_error(&log_path)(e)),
        };
        let mut inner = LogInner {
            storage,
            dir: dir.to_path_buf(),
            file,
            file_len: 0,
            entries: BTreeMap::new(),
            state,
        };
        inner.load(&log_path)?;
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
        })
    }
}

impl LogInner {
    fn load(&mut self, log_path: &Path) -> Result<(), MetadataStoreError> {
        let len = self.file.len().map_err(io_error(log_path))?;
        let last_purged_index = self.state.last_purged.map(|id| id.index);
        let mut position = 0u64;
        let mut header = [0u8; RECORD_HEADER_BYTES as usize];
        while position + RECORD_HEADER_BYTES <= len {
            self.file
                .read_exact_at(&mut header, position)
                .map_err(io_error(log_path))?;
            let payload_len = u64::from(u32::from_le_bytes([
                header[0], header[1], header[2], header[3],
            ]));
            let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            let end = position + RECORD_HEADER_BYTES + payload_len;
            if payload_len > ENTRY_BYTES_MAX || end > len {
                break;
            }
            let mut payload = vec![0; payload_len as usize];
            self.file
                .read_exact_at(&mut payload, position + RECORD_HEADER_BYTES)
                .map_err(io_error(log_path))?;
            if crc32c::crc32c(&payload) != crc {
                break;
            }
            let Ok(entry) = entry_codec().deserialize::<Entry<MetadataRaft>>(&payload) else {
                break;
            };
            let index = entry.get_log_id().index;
            let expected = self.entries.keys().next_back().map(|last| last + 1);
            if expected.is_some_and(|expected| expected != index) {
                return Err(MetadataStoreError::Corrupt {
                    path: log_path.to_path_buf(),
                    reason: format!("entry {index} follows entry {:?}", expected.map(|e| e - 1)),
                });
            }
            // Records up to the purge point survive until the next rewrite; skip them.
            if last_purged_index.is_none_or(|purged| index > purged) {
                self.entries.insert(index, (position, entry));
            }
            position = end;
        }
        if position < len {
            tracing::warn!(path = %log_path.display(), position, len, "metadata log: cutting off a torn tail");
            self.file.set_len(position).map_err(io_error(log_path))?;
            self.file.sync_data().map_err(io_error(log_path))?;
        }
        self.file_len = position;
        Ok(())
    }

    fn save_state(&self) -> io::Result<()> {
        let bytes = serde_json::to_vec(&self.state).map_err(io::Error::other)?;
        write_file_atomically(self.storage.as_ref(), &self.dir, STATE_FILE, &bytes)
    }

    fn append(&mut self, entries: Vec<Entry<MetadataRaft>>) -> io::Result<()> {
        let mut buffer = Vec::new();
        let mut placed = Vec::with_capacity(entries.len());
        for entry in entries {
            let payload = entry_codec().serialize(&entry).map_err(io::Error::other)?;
            let offset = self.file_len + buffer.len() as u64;
            let payload_len = u32::try_from(payload.len())
                .map_err(|_| io::Error::other("metadata entry too large"))?;
            buffer.extend_from_slice(&payload_len.to_le_bytes());
            buffer.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
            buffer.extend_from_slice(&payload);
            placed.push((offset, entry));
        }
        self.file.write_all_at(&buffer, self.file_len)?;
        self.file.sync_data()?;
        self.file_len += buffer.len() as u64;
        for (offset, entry) in placed {
            self.entries
                .insert(entry.get_log_id().index, (offset, entry));
        }
        Ok(())
    }

    /// Removes entries from `index` on.
    fn truncate(&mut self, index: u64) -> io::Result<()> {
        let Some((&first_removed, &(offset, _))) = self.entries.range(index..).next() else {
            return Ok(());
        };
        self.file.set_len(offset)?;
        self.file.sync_data()?;
        self.file_len = offset;
        self.entries.split_off(&first_removed);
        Ok(())
    }

    fn purge(&mut self, log_id: LogId<NodeId>) -> io::Result<()> {
        self.state.last_purged = Some(log_id);
        self.save_state()?;
        self.entries = self.entries.split_off(&(log_id.index + 1));
        // Keep the file from growing forever: rewrite it once the dead prefix dominates.
        let live_offset = self
            .entries
            .values()
            .next()
            .map_or(self.file_len, |(offset, _)| *offset);
        if live_offset > 0 && live_offset * 2 >= self.file_len {
            self.rewrite()?;
        }
        Ok(())
    }

    fn rewrite(&mut self) -> io::Result<()> {
        let entries: Vec<_> = std::mem::take(&mut self.entries)
            .into_values()
            .map(|(_, entry)| entry)
            .collect();
        let temporary = self.dir.join(format!("{LOG_FILE}.tmp"));
        let file = self.storage.create(&temporary)?;
        let old_file = std::mem::replace(&mut self.file, file);
        self.file_len = 0;
        if let Err(e) = self.append(entries) {
            self.file = old_file;
            return Err(e);
        }
        self.storage.rename(&temporary, &self.dir.join(LOG_FILE))?;
        self.storage.sync_dir(&self.dir)
    }

    fn last_log_id(&self) -> Option<LogId<NodeId>> {
        self.entries
            .values()
            .next_back()
            .map(|(_, entry)| *entry.get_log_id())
            .or(self.state.last_purged)
    }
}

impl RaftLogReader<MetadataRaft> for MetadataLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<MetadataRaft>>, StorageError<NodeId>> {
        let inner = self.inner.lock();
        Ok(inner
            .entries
            .range(range)
            .map(|(_, (_, entry))| entry.clone())
            .collect())
    }
}

impl RaftLogStorage<MetadataRaft> for MetadataLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<MetadataRaft>, StorageError<NodeId>> {
        let inner = self.inner.lock();
        Ok(LogState {
            last_purged_log_id: inner.state.last_purged,
            last_log_id: inner.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.inner.lock();
        inner.state.vote = Some(*vote);
        inner
            .save_state()
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.inner.lock().state.vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.inner.lock();
        inner.state.committed = committed;
        inner
            .save_state()
            .map_err(|e| StorageIOError::write(AnyError::new(&e)).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.inner.lock().state.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<MetadataRaft>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<MetadataRaft>> + Send,
        I::IntoIter: Send,
    {
        let result = self.inner.lock().append(entries.into_iter().collect());
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let error = StorageIOError::write_logs(AnyError::new(&e));
                callback.log_io_completed(Err(e));
                Err(error.into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.inner
            .lock()
            .truncate(log_id.index)
            .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.inner
            .lock()
            .purge(log_id)
            .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)).into())
    }
}
