//! The broker's one log directory (Kafka's `log.dirs` entry): where it is and how full its
//! file system is, for DescribeLogDirs.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Size and free space of the file system holding a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    pub total_bytes: u64,
    /// Bytes an unprivileged process may still write (statvfs `f_bavail`).
    pub usable_bytes: u64,
}

/// `dir` as an absolute path (how Kafka names log dirs), without resolving symlinks.
pub fn absolute_log_dir(dir: &Path) -> PathBuf {
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// statvfs(3) of the file system holding `dir`; `None` when it cannot be queried.
pub fn disk_space(dir: &Path) -> Option<DiskSpace> {
    let path = CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and `stats` points to
    // writable memory of the right type, which statvfs fills completely when it returns 0.
    let status = unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) };
    if status != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised `stats`.
    let stats = unsafe { stats.assume_init() };
    // The field types differ by platform (u32 or u64).
    #[allow(clippy::unnecessary_cast)]
    let fragment_bytes = stats.f_frsize as u64;
    #[allow(clippy::unnecessary_cast)]
    Some(DiskSpace {
        total_bytes: (stats.f_blocks as u64).saturating_mul(fragment_bytes),
        usable_bytes: (stats.f_bavail as u64).saturating_mul(fragment_bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_space_of_an_existing_dir_is_known_and_consistent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let space = disk_space(dir.path()).expect("statvfs of a temp dir");
        assert!(space.total_bytes > 0);
        assert!(space.usable_bytes <= space.total_bytes);
        assert!(disk_space(&dir.path().join("missing")).is_none());
    }

    #[test]
    fn absolute_log_dir_anchors_relative_paths_at_the_working_dir() {
        let absolute = absolute_log_dir(Path::new("data"));
        assert!(absolute.is_absolute());
        assert!(absolute.ends_with("data"));
    }
}
