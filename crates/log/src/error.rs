use std::path::PathBuf;

/// Errors from the storage layer. Client-caused ones (`CorruptBatch`, `BatchTooLarge`,
/// `InvalidBatch`) are mapped by the protocol layer to the protocol's own error codes;
/// `Io` and `Offline` are storage failures (Kafka: KAFKA_STORAGE_ERROR); `CorruptStored` is
/// data damaged on disk (Kafka: CORRUPT_MESSAGE for that partition).
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
    /// An earlier write, fsync or roll failed: the log refuses changes until it is reopened.
    #[error("log directory {dir} is offline after a storage failure ({cause}); restart to recover it from disk")]
    Offline { dir: PathBuf, cause: String },
    /// A compressed batch's payload does not decode with its codec (truncated, garbage, or
    /// an unknown codec).
    #[error("cannot decompress a {codec} record batch: {reason}")]
    Decompression { codec: &'static str, reason: String },
    /// A compressed batch would decompress past the bound (see `compression`): refused
    /// rather than let a small batch take the broker's memory.
    #[error("a {codec} record batch decompresses past the limit of {limit} bytes")]
    DecompressedTooLarge { codec: &'static str, limit: usize },
    /// A stored batch failed its CRC or header checks when read: it is never served.
    #[error("corrupt batch on disk in {path} at byte {position}: {reason}")]
    CorruptStored {
        path: PathBuf,
        position: u64,
        reason: String,
    },
}
