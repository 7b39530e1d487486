//! Directory-entry durability for the broker's own files (topic metadata, definitions,
//! producer-id blocks, queue and offsets-log directories), over the same storage interface as
//! the logs. A created, renamed or removed entry survives a power cut only once its parent
//! directory is fsynced; every helper here does that before it returns.

use std::io;
use std::path::{Path, PathBuf};

use sluice_log::Storage;

use crate::BrokerError;

/// A storage error naming the path it happened on.
pub(crate) fn error(path: &Path, error: impl std::fmt::Display) -> BrokerError {
    BrokerError::storage_io(format!("{}: {error}", path.display()))
}

/// The directory holding `path` (`.` for a bare relative name).
fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes `contents` to `path` so that a crash leaves either the old or the new file: a
/// temporary file is written and fsynced, renamed over `path`, and the directory fsynced.
pub(crate) fn write_atomically(
    storage: &dyn Storage,
    path: &Path,
    contents: &[u8],
) -> Result<(), BrokerError> {
    let dir = parent_of(path);
    storage
        .create_dir_all_durable(&dir)
        .map_err(|e| error(&dir, e))?;
    let temp = path.with_extension("tmp");
    let file = storage.create(&temp).map_err(|e| error(&temp, e))?;
    file.write_all_at(contents, 0)
        .map_err(|e| error(&temp, e))?;
    file.sync_all().map_err(|e| error(&temp, e))?;
    drop(file);
    storage.rename(&temp, path).map_err(|e| error(path, e))?;
    storage.sync_dir(&dir).map_err(|e| error(&dir, e))?;
    Ok(())
}

/// The whole contents of the file at `path`.
pub(crate) fn read(storage: &dyn Storage, path: &Path) -> io::Result<Vec<u8>> {
    let file = storage.open(path)?;
    let len = usize::try_from(file.len()?).map_err(io::Error::other)?;
    let mut contents = vec![0; len];
    file.read_exact_at(&mut contents, 0)?;
    Ok(contents)
}

/// The JSON document at `path`, or None if there is no such file. `what` names the document in
/// the error when the file is not one (e.g. "vhost list").
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
    storage: &dyn Storage,
    path: &Path,
    what: &str,
) -> Result<Option<T>, BrokerError> {
    match read(storage, path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| error(path, format!("not a {what}: {e}"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(error(path, e)),
    }
}

/// Whether `path` names an entry of its parent directory.
pub(crate) fn exists(storage: &dyn Storage, path: &Path) -> bool {
    let Some(name) = path.file_name() else {
        return true; // the root
    };
    storage
        .read_dir(&parent_of(path))
        .is_ok_and(|names| names.iter().any(|n| n == name))
}

/// Renames `from` to `to` (files or, on the real disk, directories) and fsyncs both parents.
pub(crate) fn rename(storage: &dyn Storage, from: &Path, to: &Path) -> io::Result<()> {
    storage.rename(from, to)?;
    let (source, target) = (parent_of(from), parent_of(to));
    storage.sync_dir(&target)?;
    if source != target {
        storage.sync_dir(&source)?;
    }
    Ok(())
}

/// Removes `dir` with everything in it and fsyncs its parent, so it stays gone.
pub(crate) fn remove_dir_all(storage: &dyn Storage, dir: &Path) -> io::Result<()> {
    storage.remove_dir_all(dir)?;
    storage.sync_dir(&parent_of(dir))
}

#[cfg(test)]
mod tests {
    use sluice_log::SimDisk;

    use super::*;

    #[test]
    fn an_atomic_write_into_new_directories_survives_a_power_cut() {
        let disk = SimDisk::new(1);
        let path = Path::new("/data/meta/sub/file.json");
        write_atomically(&disk, path, b"v1").expect("write");
        disk.power_cut();
        assert_eq!(read(&disk, path).expect("survived"), b"v1");
        write_atomically(&disk, path, b"v2").expect("rewrite");
        disk.power_cut();
        assert_eq!(read(&disk, path).expect("survived"), b"v2");
        assert!(!exists(&disk, &path.with_extension("tmp")));
    }

    #[test]
    fn created_directories_survive_a_power_cut() {
        let disk = SimDisk::new(2);
        disk.create_dir_all_durable(Path::new("/a/b/c"))
            .expect("create");
        disk.power_cut();
        assert!(exists(&disk, Path::new("/a/b/c")));
    }

    #[test]
    fn a_removed_directory_stays_removed_after_a_power_cut() {
        let disk = SimDisk::new(3);
        write_atomically(&disk, Path::new("/d/q/file"), b"x").expect("write");
        remove_dir_all(&disk, Path::new("/d/q")).expect("remove");
        disk.power_cut();
        assert!(!exists(&disk, Path::new("/d/q")));
        assert!(exists(&disk, Path::new("/d")));
    }

    #[test]
    fn a_renamed_file_is_durable_under_its_new_name() {
        let disk = SimDisk::new(4);
        write_atomically(&disk, Path::new("/x/a"), b"x").expect("write");
        disk.create_dir_all_durable(Path::new("/y")).expect("dir");
        rename(&disk, Path::new("/x/a"), Path::new("/y/b")).expect("rename");
        disk.power_cut();
        assert!(!exists(&disk, Path::new("/x/a")));
        assert_eq!(read(&disk, Path::new("/y/b")).expect("moved"), b"x");
    }

    #[test]
    fn a_json_document_reads_back_and_a_missing_one_is_none() {
        let disk = SimDisk::new(5);
        let path = Path::new("/j/list.json");
        assert_eq!(
            read_json::<Vec<u32>>(&disk, path, "list").expect("read"),
            None
        );
        write_atomically(&disk, path, b"[1,2]").expect("write");
        let list: Option<Vec<u32>> = read_json(&disk, path, "list").expect("read");
        assert_eq!(list, Some(vec![1, 2]));
    }

    #[test]
    fn a_file_that_is_not_the_document_names_it_in_the_error() {
        let disk = SimDisk::new(6);
        let path = Path::new("/j/vhosts.json");
        write_atomically(&disk, path, b"{ not json").expect("write");
        let error = read_json::<Vec<u32>>(&disk, path, "vhost list").expect_err("garbage");
        let message = error.to_string();
        assert!(message.contains("/j/vhosts.json"), "{message}");
        assert!(message.contains("not a vhost list:"), "{message}");
    }
}
