//! Storage layer: one [`PartitionLog`] per partition, a directory of segments holding Kafka
//! record-batch v2 bytes. Knows nothing of sockets or protocols beyond the on-disk batch format.
//!
//! CONTRACT (the broker is written against exactly this API; keep the signatures):
//!
//! ```text
//! Durability::parse("batch" | "never" | "interval:<ms>") -> Result<Durability, LogError>
//! LogConfig::default()
//! PartitionLog::open(dir, LogConfig) -> Result<PartitionLog, LogError>   // creates dir, recovers
//! PartitionLog::open_with(Arc<dyn Storage>, dir, LogConfig) -> Result<PartitionLog, LogError>  // same, on given storage
//! PartitionLog::append(&self, batches: &mut [u8], leader_epoch: i32, now_ms: i64) -> Result<AppendInfo, LogError>
//! PartitionLog::sync(&self, offset_end: i64) -> Result<(), LogError>     // blocking group commit
//! PartitionLog::read(&self, offset: i64, bytes_max: usize) -> Result<ReadResult, LogError>
//! PartitionLog::offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<(i64, i64)>, LogError>
//! PartitionLog::{log_start_offset, log_end_offset, high_watermark, size_bytes}(&self) -> i64/u64
//! PartitionLog::enforce_retention(&self, now_ms: i64) -> Result<usize, LogError>
//! PartitionLog::truncate_to(&self, offset: i64) -> Result<(), LogError>
//! PartitionLog::advance_log_start(&self, offset: i64) -> Result<i64, LogError>  // DeleteRecords; durable
//! PartitionLog::set_config(&self, LogConfig)
//! PartitionLog::batch_headers_from(&self, offset: i64) -> Result<Vec<BatchHeader>, LogError>
//! PartitionLog::find_records(&self, RecordLookup::{Key, MessageId}, limit) -> Result<FoundRecords, LogError>  // key index
//! PartitionLog::clean(&self, now_ms: i64, end: i64) -> Result<Option<CleanStats>, LogError>  // compaction pass
//! PartitionLog::flush(&self) -> Result<(), LogError>   // fsync everything (clean shutdown marker)
//! PartitionLog::delete(self) -> Result<(), LogError>   // remove the directory
//! PartitionLog::is_offline(&self) -> bool
//! // Replicated partitions (the consensus layer owns the high watermark):
//! PartitionLog::open_with_policy(Arc<dyn Storage>, dir, LogConfig, HighWatermarkPolicy) -> Result<PartitionLog, LogError>
//! PartitionLog::set_high_watermark(&self, offset: i64) -> Result<i64, LogError>   // External only; capped at the log end
//! PartitionLog::set_retention_floor(&self, offset: i64)   // retention keeps segments at or past it
//! PartitionLog::read_uncommitted(&self, offset: i64, bytes_max: usize) -> Result<ReadResult, LogError>  // up to the log end
//! PartitionLog::truncate_fully_and_start_at(&self, offset: i64) -> Result<(), LogError>
//! PartitionLog::for_each_batch_header_from(&self, offset: i64, FnMut(&BatchHeader)) -> Result<(), LogError>
//! PartitionLog::tail_start(&self, offset_end: i64, bytes_max: u64) -> Result<i64, LogError>
//! checkpoint::{write_durably, read_small}   // small files beside the segments, replaced atomically
//! RecordBatchBuilder::control(&mut self)    // a control batch (consumers skip it)
//! batch::{BatchHeader, validate_batches, RecordBatchBuilder, decode_records, Record}
//! storage::{Storage, StorageFile, RealDisk, SimDisk}   // the disk interface; SimDisk for tests
//! ```
//!
//! Failure contract:
//! - A failed write, fdatasync, roll or directory change takes that log offline: every later
//!   append, sync (of offsets not yet durable), flush, truncation, retention and log-start
//!   change returns
//!   `LogError::Offline`; the durable offset and high watermark never move again. Reads keep
//!   serving what was durable. Reopening (a restart) recovers from what is really on disk.
//! - Reads CRC-check every batch they return: a corrupt first batch is
//!   `LogError::CorruptStored { path, position, .. }` (logged with file and position), a corrupt
//!   later batch ends the read before it.
//! - Every created, removed or renamed file is made durable with a directory fsync (a new
//!   partition directory: its parent too) before the log relies on it.

pub mod batch;
pub mod checkpoint;
mod cleaner;
pub mod compression;
mod config;
mod error;
pub mod fuzzing;
mod key_index;
mod key_index_merge;
mod offset_index;
mod partition_log;
mod recovery;
mod segment;
pub mod storage;
mod time_index;
pub mod transaction_marker;

pub use batch::{
    decode_data_records, decode_records, first_keyless_record, offset_after_batches,
    stamp_log_append_time, validate_batches, BatchHeader, Record, RecordBatchBuilder,
    BATCH_HEADER_BYTES,
};
pub use cleaner::CleanStats;
pub use config::{Durability, LogConfig};
pub use error::LogError;
pub use key_index::{RecordLookup, MESSAGE_ID_HEADER};
pub use partition_log::{
    AppendInfo, FoundRecords, HighWatermarkPolicy, PartitionLog, ReadResult, FSYNC_SECONDS_METRIC,
};
#[cfg(target_os = "linux")]
pub use storage::cached_pages;
pub use storage::{RealDisk, SimDisk, Storage, StorageFile};
pub use transaction_marker::{transaction_marker, transaction_marker_result, TransactionResult};
