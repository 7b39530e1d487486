use std::path::PathBuf;

/// Errors from the storage layer. Client-caused ones (`CorruptBatch`, `BatchTooLarge`,
/// `InvalidBatch`) are mapped by the protocol layer to the protocol's own error codes.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("record batch CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    CorruptBatch { stored: u32, computed: u32 },
    #[error("record batch of {size} bytes exceeds the limit of {limit} bytes")]
    BatchTooLarge { size: usize, limit: usize },
    #[error("invalid record batch: {0}")]
    InvalidBatch(String),
    #[error("offset {offset} is out of range [{start}, {end}]")]
    OffsetOutOfRange { offset: i64, start: i64, end: i64 },
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}
