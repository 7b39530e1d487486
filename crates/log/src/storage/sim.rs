//! A deterministic in-memory disk for tests: what survives a power cut is only what was synced.
//!
//! Model (one lock over everything, so it is deterministic for a single-threaded test):
//! - Each file (inode) has the bytes a reader sees (the page cache) and the bytes on the
//!   platter. Writes and truncations since the last fsync are kept in order; a successful
//!   `sync_data`/`sync_all` applies them to the platter.
//! - Directory entries (create, remove, rename) change the live namespace at once but reach the
//!   durable namespace only through `sync_dir` of their parent directory.
//! - [`SimDisk::power_cut`] drops every unsynced change: the namespace goes back to its durable
//!   entries (a file created or renamed into place without a directory fsync is gone or back
//!   to its old name), and each file goes back to its synced bytes, except that the last
//!   unsynced write may survive torn at a 512-byte sector boundary. Old handles fail after it.
//! - [`SimDisk::fail_next_sync`] fails the next file fsync with EIO the way Linux does: the
//!   dirty pages are forgotten (still readable, never written), so a later fsync succeeds
//!   without them ("fsyncgate"). [`SimDisk::fail_next_write`] fails the next write with EIO
//!   after writing a random whole-sector prefix of it.
//! - [`SimDisk::set_space_bytes_max`] makes writes that would grow the files past a budget
//!   fail with ENOSPC.
//!
//! Paths are used as given; the root (`/` or the empty path) always exists.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Storage, StorageFile};

const SECTOR_BYTES: u64 = 512;
const EIO: i32 = 5;
const ENOSPC: i32 = 28;

/// A simulated disk; clones share the same disk.
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<SimState>>,
}

/// Counters of what the code under test asked of the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimDiskCounters {
    pub writes: u64,
    pub file_syncs: u64,
    pub dir_syncs: u64,
    pub power_cuts: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Dir,
    File(u64),
}

enum Change {
    Write { position: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Default)]
struct Inode {
    /// What readers see.
    cached: Vec<u8>,
    /// What survives a power cut.
    durable: Vec<u8>,
    /// Changes since the last fsync, oldest first.
    unsynced: Vec<Change>,
}

struct SimState {
    rng: u64,
    /// Bumped by a power cut: handles from before it fail.
    generation: u64,
    next_inode: u64,
    inodes: HashMap<u64, Inode>,
    live: BTreeMap<PathBuf, Node>,
    durable: BTreeMap<PathBuf, Node>,
    fail_next_write: bool,
    fail_next_sync: bool,
    space_bytes_max: Option<u64>,
    /// `Some(n)`: the disk takes n more changes, then refuses every change with EIO (see
    /// [`SimDisk::crash_after`]).
    changes_left: Option<u64>,
    counters: SimDiskCounters,
}

struct SimFile {
    state: Arc<Mutex<SimState>>,
    inode: u64,
    generation: u64,
}

fn os_error(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", path.display()),
    )
}

fn is_root(path: &Path) -> bool {
    path.as_os_str().is_empty() || path == Path::new("/")
}

fn parent_of(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn apply(bytes: &mut Vec<u8>, change: &Change) {
    match change {
        Change::Write {
            position,
            bytes: written,
        } => {
            let start = *position as usize;
            let end = start + written.len();
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[start..end].copy_from_slice(written);
        }
        Change::SetLen(len) => bytes.resize(*len as usize, 0),
    }
}

impl SimState {
    fn random(&mut self) -> u64 {
        // splitmix64: small, seedable, good enough to pick tear points.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Bytes of a write of `length` bytes at `position` that reach the disk when it is torn:
    /// a whole number of sectors (by absolute position), possibly none, possibly all.
    fn torn_length(&mut self, position: u64, length: u64) -> u64 {
        let end = position + length;
        let mut cuts = vec![position];
        let mut boundary = (position / SECTOR_BYTES + 1) * SECTOR_BYTES;
        while boundary < end {
            cuts.push(boundary);
            boundary += SECTOR_BYTES;
        }
        cuts.push(end);
        let pick = (self.random() % cuts.len() as u64) as usize;
        cuts[pick] - position
    }

    /// Counts one change (a write, truncation, fsync or directory change) against
    /// `changes_left`; EIO, with nothing changed, once the disk is frozen.
    fn take_change(&mut self) -> io::Result<()> {
        match self.changes_left {
            Some(0) => Err(os_error(EIO)),
            Some(n) => {
                self.changes_left = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn dir_exists(&self, dir: &Path) -> bool {
        is_root(dir) || self.live.get(dir) == Some(&Node::Dir)
    }

    fn check_parent(&self, path: &Path) -> io::Result<()> {
        if self.dir_exists(&parent_of(path)) {
            Ok(())
        } else {
            Err(not_found(path))
        }
    }

    fn space_used(&self) -> u64 {
        self.live
            .values()
            .filter_map(|node| match node {
                Node::File(inode) => self.inodes.get(inode).map(|i| i.cached.len() as u64),
                Node::Dir => None,
            })
            .sum()
    }

    fn check_space(&self, inode: u64, new_len: u64) -> io::Result<()> {
        let Some(space_bytes_max) = self.space_bytes_max else {
            return Ok(());
        };
        let current = self.inodes.get(&inode).map_or(0, |i| i.cached.len() as u64);
        let growth = new_len.saturating_sub(current);
        if growth > 0 && self.space_used() + growth > space_bytes_max {
            return Err(os_error(ENOSPC));
        }
        Ok(())
    }

    fn inode(&mut self, inode: u64, generation: u64) -> io::Result<&mut Inode> {
        if generation != self.generation {
            return Err(io::Error::other(
                "stale handle: the disk lost power since it was opened",
            ));
        }
        self.inodes
            .get_mut(&inode)
            .ok_or_else(|| io::Error::other("unknown inode"))
    }

    fn record(&mut self, inode: u64, change: Change) {
        if let Some(inode) = self.inodes.get_mut(&inode) {
            apply(&mut inode.cached, &change);
            inode.unsynced.push(change);
        }
    }

    fn handle(state: &Arc<Mutex<SimState>>, inode: u64, generation: u64) -> Box<dyn StorageFile> {
        Box::new(SimFile {
            state: Arc::clone(state),
            inode,
            generation,
        })
    }
}

impl SimDisk {
    /// An empty disk; `seed` decides where power cuts tear writes.
    pub fn new(seed: u64) -> SimDisk {
        SimDisk {
            state: Arc::new(Mutex::new(SimState {
                rng: seed,
                generation: 0,
                next_inode: 1,
                inodes: HashMap::new(),
                live: BTreeMap::new(),
                durable: BTreeMap::new(),
                fail_next_write: false,
                fail_next_sync: false,
                space_bytes_max: None,
                changes_left: None,
                counters: SimDiskCounters::default(),
            })),
        }
    }

    /// This disk as the log's storage.
    pub fn storage(&self) -> Arc<dyn Storage> {
        Arc::new(self.clone())
    }

    /// The next file write fails with EIO (after writing a random whole-sector prefix).
    pub fn fail_next_write(&self) {
        self.state.lock().fail_next_write = true;
    }

    /// The next file fsync fails with EIO and its dirty data is forgotten, as on Linux.
    pub fn fail_next_sync(&self) {
        self.state.lock().fail_next_sync = true;
    }

    /// Writes that would grow the files' total size past this fail with ENOSPC (`None`: no
    /// limit).
    pub fn set_space_bytes_max(&self, space_bytes_max: Option<u64>) {
        self.state.lock().space_bytes_max = space_bytes_max;
    }

    /// The machine dies after `changes` more changes (writes, truncations, fsyncs, creates,
    /// removes, renames, directory fsyncs): every later one fails with EIO and changes
    /// nothing, so a [`SimDisk::power_cut`] next shows the disk as that crash point left it.
    /// Walking `changes` over 0, 1, 2, ... crashes an operation at each of its steps.
    pub fn crash_after(&self, changes: u64) {
        self.state.lock().changes_left = Some(changes);
    }

    pub fn counters(&self) -> SimDiskCounters {
        self.state.lock().counters
    }

    /// Loses power: everything not synced is gone (see the module documentation). Injected
    /// failures are cleared; the space budget stays. Handles opened before fail afterwards.
    pub fn power_cut(&self) {
        let mut state = self.state.lock();
        let state = &mut *state;
        state.generation += 1;
        state.counters.power_cuts += 1;
        state.fail_next_write = false;
        state.fail_next_sync = false;
        state.changes_left = None;
        let durable = std::mem::take(&mut state.durable);
        // An entry survives only if every directory above it does.
        let surviving: BTreeMap<PathBuf, Node> = durable
            .iter()
            .filter(|(path, _)| {
                path.ancestors()
                    .skip(1)
                    .all(|dir| is_root(dir) || durable.get(dir) == Some(&Node::Dir))
            })
            .map(|(path, node)| (path.clone(), *node))
            .collect();
        let referenced: Vec<u64> = surviving
            .values()
            .filter_map(|node| match node {
                Node::File(inode) => Some(*inode),
                Node::Dir => None,
            })
            .collect();
        state.inodes.retain(|inode, _| referenced.contains(inode));
        let mut inode_ids: Vec<u64> = state.inodes.keys().copied().collect();
        inode_ids.sort_unstable(); // deterministic tear choices
        for id in inode_ids {
            let last_write = match state.inodes.get_mut(&id) {
                Some(inode) => match inode.unsynced.pop() {
                    Some(Change::Write { position, bytes }) => Some((position, bytes)),
                    _ => None,
                },
                None => None,
            };
            let torn = last_write.and_then(|(position, bytes)| {
                let kept = state.torn_length(position, bytes.len() as u64) as usize;
                (kept > 0).then(|| Change::Write {
                    position,
                    bytes: bytes[..kept].to_vec(),
                })
            });
            if let Some(inode) = state.inodes.get_mut(&id) {
                let mut bytes = std::mem::take(&mut inode.durable);
                if let Some(torn) = &torn {
                    apply(&mut bytes, torn);
                }
                inode.unsynced.clear();
                inode.cached = bytes.clone();
                inode.durable = bytes;
            }
        }
        state.live = surviving.clone();
        state.durable = surviving;
    }

    /// Flips every bit of the byte at `position` of `path`, in the cache and on the platter
    /// (media corruption).
    pub fn flip_byte(&self, path: &Path, position: u64) -> io::Result<()> {
        let mut state = self.state.lock();
        let Some(Node::File(id)) = state.live.get(path).copied() else {
            return Err(not_found(path));
        };
        let inode = state.inodes.get_mut(&id).ok_or_else(|| not_found(path))?;
        let position = position as usize;
        for bytes in [&mut inode.cached, &mut inode.durable] {
            if let Some(byte) = bytes.get_mut(position) {
                *byte ^= 0xFF;
            }
        }
        Ok(())
    }

    /// Whether `path` exists now (not necessarily durably).
    pub fn exists(&self, path: &Path) -> bool {
        let state = self.state.lock();
        is_root(path) || state.live.contains_key(path)
    }
}

impl StorageFile for SimFile {
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize> {
        let mut state = self.state.lock();
        let inode = state.inode(self.inode, self.generation)?;
        let start = (position as usize).min(inode.cached.len());
        let length = buf.len().min(inode.cached.len() - start);
        buf[..length].copy_from_slice(&inode.cached[start..start + length]);
        Ok(length)
    }

    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        let mut state = self.state.lock();
        state.inode(self.inode, self.generation)?;
        state.take_change()?;
        state.counters.writes += 1;
        if std::mem::take(&mut state.fail_next_write) {
            let kept = state.torn_length(position, buf.len() as u64) as usize;
            if kept > 0 {
                state.record(
                    self.inode,
                    Change::Write {
                        position,
                        bytes: buf[..kept].to_vec(),
                    },
                );
            }
            return Err(os_error(EIO));
        }
        state.check_space(self.inode, position + buf.len() as u64)?;
        state.record(
            self.inode,
            Change::Write {
                position,
                bytes: buf.to_vec(),
            },
        );
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.state.lock();
        state.inode(self.inode, self.generation)?;
        state.take_change()?;
        state.check_space(self.inode, len)?;
        state.record(self.inode, Change::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = self.state.lock();
        state.inode(self.inode, self.generation)?;
        state.take_change()?;
        state.counters.file_syncs += 1;
        let fail = std::mem::take(&mut state.fail_next_sync);
        let inode = state.inode(self.inode, self.generation)?;
        let changes = std::mem::take(&mut inode.unsynced);
        if fail {
            // Linux marks the failed pages clean: readable now, lost at the next power cut.
            return Err(os_error(EIO));
        }
        for change in &changes {
            apply(&mut inode.durable, change);
        }
        Ok(())
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        let mut state = self.state.lock();
        Ok(state.inode(self.inode, self.generation)?.cached.len() as u64)
    }

    fn modified_ms(&self) -> Option<i64> {
        None
    }
}

impl Storage for SimDisk {
    /// Replays are deterministic only with every file operation in program order.
    fn allows_background_work(&self) -> bool {
        false
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<usize> {
        let mut state = self.state.lock();
        if state.dir_exists(dir) {
            return Ok(0);
        }
        let mut missing: Vec<&Path> = dir
            .ancestors()
            .take_while(|d| !state.dir_exists(d))
            .collect();
        missing.reverse();
        let created = missing.len();
        for path in missing {
            if state.live.contains_key(path) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} is a file", path.display()),
                ));
            }
            state.live.insert(path.to_path_buf(), Node::Dir);
        }
        Ok(created)
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let state = self.state.lock();
        match state.live.get(path) {
            Some(Node::File(inode)) => Ok(SimState::handle(&self.state, *inode, state.generation)),
            Some(Node::Dir) => Err(io::Error::other(format!(
                "{} is a directory",
                path.display()
            ))),
            None => Err(not_found(path)),
        }
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let mut state = self.state.lock();
        state.check_parent(path)?;
        state.take_change()?;
        let inode = match state.live.get(path).copied() {
            Some(Node::File(inode)) => {
                state.record(inode, Change::SetLen(0));
                inode
            }
            Some(Node::Dir) => {
                return Err(io::Error::other(format!(
                    "{} is a directory",
                    path.display()
                )))
            }
            None => {
                let inode = state.next_inode;
                state.next_inode += 1;
                state.inodes.insert(inode, Inode::default());
                state.live.insert(path.to_path_buf(), Node::File(inode));
                inode
            }
        };
        Ok(SimState::handle(&self.state, inode, state.generation))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        state.take_change()?;
        match state.live.get(path) {
            Some(Node::File(_)) => {
                state.live.remove(path);
                Ok(())
            }
            Some(Node::Dir) => Err(io::Error::other(format!(
                "{} is a directory",
                path.display()
            ))),
            None => Err(not_found(path)),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        state.check_parent(to)?;
        state.take_change()?;
        match state.live.get(from).copied() {
            Some(Node::File(inode)) => {
                if state.live.get(to) == Some(&Node::Dir) {
                    return Err(io::Error::other(format!("{} is a directory", to.display())));
                }
                state.live.remove(from);
                state.live.insert(to.to_path_buf(), Node::File(inode));
                Ok(())
            }
            Some(Node::Dir) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the simulated disk renames files only",
            )),
            None => Err(not_found(from)),
        }
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let state = self.state.lock();
        if !state.dir_exists(dir) {
            return Err(not_found(dir));
        }
        Ok(state
            .live
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| path.file_name().map(|name| name.to_os_string()))
            .collect())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        if !state.dir_exists(dir) {
            return Err(not_found(dir));
        }
        state.take_change()?;
        state.counters.dir_syncs += 1;
        let state = &mut *state;
        state.durable.retain(|path, _| path.parent() != Some(dir));
        for (path, node) in &state.live {
            if path.parent() == Some(dir) {
                state.durable.insert(path.clone(), *node);
            }
        }
        Ok(())
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        if state.live.get(dir) != Some(&Node::Dir) {
            return Err(not_found(dir));
        }
        state.live.retain(|path, _| !path.starts_with(dir));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(disk: &SimDisk, path: &str, bytes: &[u8]) -> Box<dyn StorageFile> {
        let file = disk.create(Path::new(path)).unwrap();
        file.write_all_at(bytes, 0).unwrap();
        file
    }

    fn contents(disk: &SimDisk, path: &str) -> Option<Vec<u8>> {
        let file = disk.open(Path::new(path)).ok()?;
        let mut bytes = vec![0; file.len().unwrap() as usize];
        file.read_exact_at(&mut bytes, 0).unwrap();
        Some(bytes)
    }

    #[test]
    fn power_cut_keeps_only_synced_files_and_entries() {
        let disk = SimDisk::new(1);
        disk.create_dir_all(Path::new("/d")).unwrap();
        disk.sync_dir(Path::new("/")).unwrap();
        let synced = write(&disk, "/d/synced", b"abc");
        synced.sync_data().unwrap();
        disk.sync_dir(Path::new("/d")).unwrap();
        let unsynced_entry = write(&disk, "/d/no-dir-sync", b"xyz");
        unsynced_entry.sync_data().unwrap();
        disk.power_cut();
        assert_eq!(contents(&disk, "/d/synced").unwrap(), b"abc");
        assert!(contents(&disk, "/d/no-dir-sync").is_none());
        assert!(synced.len().is_err(), "old handles are stale");
    }

    #[test]
    fn rename_without_dir_sync_is_undone() {
        let disk = SimDisk::new(2);
        disk.create_dir_all(Path::new("/d")).unwrap();
        disk.sync_dir(Path::new("/")).unwrap();
        write(&disk, "/d/a", b"old").sync_data().unwrap();
        disk.sync_dir(Path::new("/d")).unwrap();
        write(&disk, "/d/a.tmp", b"new").sync_data().unwrap();
        disk.rename(Path::new("/d/a.tmp"), Path::new("/d/a"))
            .unwrap();
        assert_eq!(contents(&disk, "/d/a").unwrap(), b"new");
        disk.power_cut();
        assert_eq!(contents(&disk, "/d/a").unwrap(), b"old");
    }

    #[test]
    fn failed_sync_forgets_dirty_data_and_next_sync_succeeds() {
        let disk = SimDisk::new(3);
        let file = write(&disk, "/f", b"first");
        file.sync_data().unwrap();
        disk.sync_dir(Path::new("/")).unwrap();
        file.write_all_at(b"second", 5).unwrap();
        disk.fail_next_sync();
        assert_eq!(file.sync_data().unwrap_err().raw_os_error(), Some(EIO));
        file.sync_data().unwrap();
        assert_eq!(contents(&disk, "/f").unwrap(), b"firstsecond");
        disk.power_cut();
        assert_eq!(contents(&disk, "/f").unwrap(), b"first");
    }

    #[test]
    fn power_cut_tears_the_last_write_at_a_sector_boundary() {
        for seed in 0..32 {
            let disk = SimDisk::new(seed);
            let file = write(&disk, "/f", &[]);
            file.sync_data().unwrap();
            disk.sync_dir(Path::new("/")).unwrap();
            file.write_all_at(&[7u8; 2000], 100).unwrap();
            disk.power_cut();
            let bytes = contents(&disk, "/f").unwrap();
            let len = bytes.len() as u64;
            assert!(
                len == 0 || len == 2100 || len.is_multiple_of(SECTOR_BYTES),
                "{len}"
            );
        }
    }

    #[test]
    fn writes_past_the_space_budget_fail_with_enospc() {
        let disk = SimDisk::new(4);
        disk.set_space_bytes_max(Some(10));
        let file = write(&disk, "/f", b"12345678");
        let error = file.write_all_at(b"abc", 8).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(ENOSPC));
        file.write_all_at(b"ab", 8).unwrap();
    }
}
