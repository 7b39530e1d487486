//! The log's only way to the disk: a small file-system interface, so the same code runs on the
//! real disk ([`RealDisk`], positional I/O over `std::fs`) and, in tests, on a simulated disk
//! ([`SimDisk`]) that loses unsynced writes at a power cut, tears the last write, and fails a
//! write or an fsync on demand.
//!
//! The interface is what the log needs and no more: files are read and written at positions
//! (one shared handle serves concurrent readers and the single appender), and directory entries
//! become durable only through [`Storage::sync_dir`].

use std::ffi::OsString;
use std::io;
use std::path::Path;

mod real;
mod sim;

#[cfg(target_os = "linux")]
pub use real::cached_pages;
pub use real::RealDisk;
pub use sim::SimDisk;

/// An open file, shared by readers and the appender (all I/O is positional).
#[allow(clippy::len_without_is_empty)] // a file's length is a size, not a collection's
pub trait StorageFile: Send + Sync {
    /// Reads up to `buf.len()` bytes at `position`; 0 at the end of the file.
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `position` (extending the file as needed).
    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the file's data (and its size) durable: fdatasync.
    fn sync_data(&self) -> io::Result<()>;
    /// Makes the file's data and metadata durable: fsync.
    fn sync_all(&self) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    /// Last modification time in ms since the epoch, when the storage knows it.
    fn modified_ms(&self) -> Option<i64>;
    /// Advises that `len` bytes from `position` (already durable) will not be read soon, so
    /// their cached pages can be freed now rather than evicting pages that will be. Only
    /// advice: the content is unchanged, and a storage without a page cache ignores it.
    fn release_pages(&self, _position: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }

    /// Appends `len` bytes read from `position` to `buf`; `UnexpectedEof` when the file is
    /// shorter. On an error `buf` is as it was.
    fn read_exact_appending(&self, buf: &mut Vec<u8>, len: usize, position: u64) -> io::Result<()> {
        let start = buf.len();
        buf.resize(start + len, 0);
        let read = self.read_exact_at(&mut buf[start..], position);
        if read.is_err() {
            buf.truncate(start);
        }
        read
    }

    /// Fills `buf` from `position`; `UnexpectedEof` when the file is shorter.
    fn read_exact_at(&self, mut buf: &mut [u8], mut position: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, position) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "failed to fill whole buffer",
                    ))
                }
                Ok(n) => {
                    buf = &mut buf[n..];
                    position += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A file system: where partition directories, segments, indexes and checkpoints live.
pub trait Storage: Send + Sync {
    /// Creates `dir` and missing parents; returns how many directories it created (0: `dir`
    /// existed; n: `dir` and its n-1 nearest ancestors), so the caller can sync their parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<usize>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    /// Creates a file for reading and writing, truncating it if it exists.
    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Atomically replaces `to` with `from` (durable only after `sync_dir` of the directory).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Names of the entries of `dir`.
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<OsString>>;
    /// Makes `dir`'s entries durable: created, removed and renamed files of that directory.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;

    /// Whether the log may do deferrable work (merging a rolled segment's key index) on a
    /// background thread. A deterministic simulated disk says no: seeded replays need every
    /// file operation in program order, so that work then runs inline.
    fn allows_background_work(&self) -> bool {
        true
    }

    /// Creates `dir` and its missing parents, and fsyncs the parent of each one created
    /// (innermost first), so the new directories survive a power cut.
    fn create_dir_all_durable(&self, dir: &Path) -> io::Result<()> {
        let created = self.create_dir_all(dir)?;
        for created_dir in dir.ancestors().take(created) {
            let parent = match created_dir.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => Path::new("."),
            };
            self.sync_dir(parent)?;
        }
        Ok(())
    }
}
