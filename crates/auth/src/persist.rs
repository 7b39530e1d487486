//! Small JSON files written whole: a temporary file, fsync, rename over the old one, fsync of
//! the directory. A crash leaves the old file or the new one, never a mix.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::AuthError;

pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, AuthError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(AuthError::Io(path.display().to_string(), error)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|error| AuthError::Corrupt(path.display().to_string(), error.to_string()))
}

pub(crate) fn write_json_atomically<T: Serialize>(path: &Path, value: &T) -> Result<(), AuthError> {
    let io = |error| AuthError::Io(path.display().to_string(), error);
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|error| AuthError::Corrupt(path.display().to_string(), error.to_string()))?;
    let temporary = path.with_extension("json.tmp");
    {
        // Stored keys are secrets: readable by the broker's user only.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&temporary, path).map_err(io)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(io)?;
    }
    Ok(())
}
