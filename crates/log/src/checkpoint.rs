//! Small files beside the segments (checkpoints such as the log start offset, or the vote of a
//! replicated partition), written so a crash leaves the old or the new contents, never a torn
//! mix: temporary file, fsync, rename, directory fsync. A leftover temporary file (its name ends
//! in `.tmp`) is removed by the next recovery of the partition directory.

use std::path::Path;

use crate::segment::{io_error, TEMPORARY_SUFFIX};
use crate::storage::Storage;
use crate::LogError;

/// Replaces `dir/name` with `contents` atomically and durably.
pub fn write_durably(
    storage: &dyn Storage,
    dir: &Path,
    name: &str,
    contents: &[u8],
) -> Result<(), LogError> {
    let path = dir.join(name);
    let temporary = dir.join(format!("{name}.{TEMPORARY_SUFFIX}"));
    let file = storage
        .create(&temporary)
        .map_err(|e| io_error(&temporary, e))?;
    file.write_all_at(contents, 0)
        .map_err(|e| io_error(&temporary, e))?;
    file.sync_all().map_err(|e| io_error(&temporary, e))?;
    storage
        .rename(&temporary, &path)
        .map_err(|e| io_error(&path, e))?;
    storage.sync_dir(dir).map_err(|e| io_error(dir, e))
}

/// The whole of `dir/name`; `Ok(None)` when it does not exist. A file bigger than `bytes_max`
/// is not ours: it is reported as an I/O error (InvalidData) rather than read into memory.
pub fn read_small(
    storage: &dyn Storage,
    dir: &Path,
    name: &str,
    bytes_max: u64,
) -> Result<Option<Vec<u8>>, LogError> {
    let path = dir.join(name);
    let file = match storage.open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(&path, e)),
    };
    let length = file.len().map_err(|e| io_error(&path, e))?;
    if length > bytes_max {
        return Err(io_error(
            &path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{length} bytes, more than the {bytes_max} expected"),
            ),
        ));
    }
    let mut bytes = vec![0; length as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| io_error(&path, e))?;
    Ok(Some(bytes))
}
