//! The real disk: `std::fs` with positional I/O (pread/pwrite), fdatasync and directory fsync.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::UNIX_EPOCH;

use super::{Storage, StorageFile};

/// The operating system's file system (the default storage).
#[derive(Debug, Clone, Copy, Default)]
pub struct RealDisk;

/// Bytes one `pwrite` carries at most: a longer write is made in pieces of this size. Linux
/// sizes the page-cache folios a buffered write allocates by the length of the call (up to
/// 2 MiB), and on a VM whose balloon reports free 2 MiB blocks to the host (this one: 4 KiB
/// pages, `page_reporting_order` 9) large folios were often memory the host took back, faulted
/// in again on first touch: copying 1 MiB producer batches into them was 23% of all the CPU of
/// a single-node run (`copy_folio_from_iter_atomic`), 4% in 64 KiB calls; one partition of
/// 1 KiB messages went from 344-430k to 475-513k msgs/s with 128 KiB calls (32 KiB and 256 KiB
/// did worse). Eight calls per MiB instead of one cost little anywhere.
const WRITE_CALL_BYTES_MAX: usize = 128 << 10;

impl StorageFile for File {
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, position)
    }
    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, position)
    }
    /// Reads into the vector's spare capacity: zeroing it first (what `resize` does) cost a
    /// tenth of a cluster leader's CPU, every read of the log being a fetch or a replication.
    fn read_exact_appending(
        &self,
        buf: &mut Vec<u8>,
        len: usize,
        mut position: u64,
    ) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let start = buf.len();
        let end = start + len;
        buf.reserve(len);
        let read = loop {
            if buf.len() == end {
                break Ok(());
            }
            let Ok(offset) = libc::off_t::try_from(position) else {
                break Err(io::ErrorKind::InvalidInput.into());
            };
            let wanted = end - buf.len();
            let spare = &mut buf.spare_capacity_mut()[..wanted];
            // SAFETY: pread writes at most `spare.len()` bytes into the vector's own spare
            // capacity, and reads no memory of ours.
            let read = unsafe {
                libc::pread(
                    self.as_raw_fd(),
                    spare.as_mut_ptr().cast(),
                    spare.len(),
                    offset,
                )
            };
            match usize::try_from(read) {
                Ok(0) => break Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(read) => {
                    // SAFETY: pread initialised these `read` bytes, the next after `buf.len()`.
                    unsafe { buf.set_len(buf.len() + read) };
                    position += read as u64;
                }
                Err(_) => {
                    let error = io::Error::last_os_error();
                    if error.kind() != io::ErrorKind::Interrupted {
                        break Err(error);
                    }
                }
            }
        };
        if read.is_err() {
            buf.truncate(start);
        }
        read
    }
    fn write_all_at(&self, buf: &[u8], mut position: u64) -> io::Result<()> {
        for piece in buf.chunks(WRITE_CALL_BYTES_MAX) {
            FileExt::write_all_at(self, piece, position)?;
            position += piece.len() as u64;
        }
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }
    fn sync_all(&self) -> io::Result<()> {
        File::sync_all(self)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    #[cfg(target_os = "linux")]
    fn release_pages(&self, position: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (libc::off_t::try_from(position), libc::off_t::try_from(len))
        else {
            return Ok(()); // past what the call can name: keep the pages
        };
        // SAFETY: the descriptor is this open file's; fadvise reads no memory of ours.
        let error = unsafe {
            libc::posix_fadvise(self.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED)
        };
        match error {
            0 => Ok(()),
            error => Err(io::Error::from_raw_os_error(error)),
        }
    }
    fn modified_ms(&self) -> Option<i64> {
        self.metadata()
            .ok()?
            .modified()
            .ok()?
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_millis() as i64)
    }
}

impl Storage for RealDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<usize> {
        let missing = dir
            .ancestors()
            .take_while(|d| !d.as_os_str().is_empty() && !d.is_dir())
            .count();
        if missing > 0 {
            fs::create_dir_all(dir)?;
        }
        Ok(missing)
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Box::new(file))
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Box::new(file))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        fs::read_dir(dir)?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect()
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::remove_dir_all(dir)
    }
}

/// How many of the file's pages are in the page cache, and how many it has (mincore over a
/// read-only mapping of it): shows what `StorageFile::release_pages` left cached.
#[cfg(target_os = "linux")]
pub fn cached_pages(path: &Path) -> io::Result<(usize, usize)> {
    use std::os::fd::AsRawFd;
    let file = File::open(path)?;
    let len = usize::try_from(file.metadata()?.len()).map_err(io::Error::other)?;
    // SAFETY: sysconf reads no memory of ours.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let pages = len.div_ceil(page);
    if pages == 0 {
        return Ok((0, 0));
    }
    let mut residency = vec![0u8; pages];
    // SAFETY: a private read-only mapping of `len` bytes of an open file, unmapped before
    // returning; mincore writes one byte per page of it into `residency`, which has `pages`.
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        );
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let status = libc::mincore(map, len, residency.as_mut_ptr());
        let error = io::Error::last_os_error();
        libc::munmap(map, len);
        if status != 0 {
            return Err(error);
        }
    }
    Ok((residency.iter().filter(|&&r| r & 1 == 1).count(), pages))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_appended_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        fs::write(&path, b"0123456789").unwrap();
        let file = File::open(&path).unwrap();
        let mut buf = b"ab".to_vec();
        file.read_exact_appending(&mut buf, 4, 3).unwrap();
        assert_eq!(buf, b"ab3456");
        // Past the end: an error, and nothing of the short read is kept.
        let error = file.read_exact_appending(&mut buf, 5, 8).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(buf, b"ab3456");
        file.read_exact_appending(&mut buf, 0, 10).unwrap();
        assert_eq!(buf, b"ab3456");
    }

    #[test]
    fn a_write_longer_than_one_call_lands_whole_where_it_was_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let bytes: Vec<u8> = (0..2 * WRITE_CALL_BYTES_MAX + 7)
            .map(|i| (i % 251) as u8)
            .collect();
        StorageFile::write_all_at(&file, b"head", 0).unwrap();
        StorageFile::write_all_at(&file, &bytes, 4).unwrap();
        let written = fs::read(&path).unwrap();
        assert_eq!(&written[..4], b"head");
        assert_eq!(&written[4..], &bytes[..]);
    }
}
