//! The transaction coordinator's state in an internal log, like Kafka's `__transaction_state`:
//! every change of a transactional id's state appends one record (key = the transactional id,
//! value = its state as JSON, null when the id expires) and waits for the fsync before the
//! coordinator answers. On open the log is replayed, last write winning.
//!
//! The log is rewritten when dead records outnumber live ones in a big enough log: the live
//! states are appended again and the log start moves past the old records, so old segments go.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use sluice_log::{Durability, LogConfig, PartitionLog, Record, RecordBatchBuilder, Storage};

use crate::offset_store::internal_log_config;
use crate::transaction_coordinator::TransactionMetadata;
use crate::{now_ms, BrokerError};

/// Bytes read per step while replaying.
const REPLAY_READ_BYTES: usize = 1 << 20;
/// Segments stay small, so compaction frees space soon.
const SEGMENT_BYTES_MAX: u64 = 4 << 20;
/// Below this size the log is never compacted: replaying it is cheap anyway.
const COMPACTION_BYTES_MIN: u64 = 8 << 20;

pub(crate) struct TransactionLog {
    log: Arc<PartitionLog>,
    sync_on_write: bool,
    /// Records appended since the last compaction, against which live states are measured.
    records_total: Mutex<u64>,
}

impl TransactionLog {
    /// Opens (or creates) the log in `dir` and replays it.
    pub(crate) fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        log_config: LogConfig,
    ) -> Result<(TransactionLog, HashMap<String, TransactionMetadata>), BrokerError> {
        let config = internal_log_config(log_config, SEGMENT_BYTES_MAX);
        let sync_on_write = config.durability == Durability::Batch;
        let log = PartitionLog::open_with(storage, dir, config)?;
        let (states, records_total) = replay(&log)?;
        Ok((
            TransactionLog {
                log: Arc::new(log),
                sync_on_write,
                records_total: Mutex::new(records_total),
            },
            states,
        ))
    }

    /// Durably records `state` (`None`: forgotten) for `transactional_id`.
    pub(crate) async fn write(
        &self,
        transactional_id: &str,
        state: Option<&TransactionMetadata>,
    ) -> Result<(), BrokerError> {
        let value = match state {
            Some(state) => Some(serde_json::to_vec(state).map_err(|e| {
                BrokerError::storage_io(format!("encoding transaction state: {e}"))
            })?),
            None => None,
        };
        let mut builder = RecordBatchBuilder::new();
        let now = now_ms();
        builder.push(Record {
            key: Some(transactional_id.as_bytes().to_vec()),
            value,
            timestamp: now,
            ..Record::default()
        });
        let mut batch = builder.build();
        let info = self.log.append(&mut batch, 0, now)?;
        *self.records_total.lock() += 1;
        if self.sync_on_write {
            let log = Arc::clone(&self.log);
            let offset_end = info.last_offset + 1;
            tokio::task::spawn_blocking(move || log.sync(offset_end))
                .await
                .map_err(|e| BrokerError::storage_io(format!("transaction log sync: {e}")))??;
        }
        Ok(())
    }

    /// Rewrites the live `states` at the head and drops everything before them, when the log
    /// is big and mostly dead records. The caller holds every write back meanwhile.
    pub(crate) fn compact_if_needed(
        &self,
        states: &HashMap<String, TransactionMetadata>,
    ) -> Result<bool, BrokerError> {
        let records_total = *self.records_total.lock();
        if self.log.size_bytes() < COMPACTION_BYTES_MIN || records_total < 2 * states.len() as u64 {
            return Ok(false);
        }
        let live_from = self.log.log_end_offset();
        let now = now_ms();
        for (transactional_id, state) in states {
            let value = serde_json::to_vec(state)
                .map_err(|e| BrokerError::storage_io(format!("encoding transaction state: {e}")))?;
            let mut builder = RecordBatchBuilder::new();
            builder.push(Record {
                key: Some(transactional_id.as_bytes().to_vec()),
                value: Some(value),
                timestamp: now,
                ..Record::default()
            });
            self.log.append(&mut builder.build(), 0, now)?;
        }
        self.log.sync(self.log.log_end_offset())?;
        self.log.advance_log_start(live_from)?;
        self.log.enforce_retention(now)?;
        *self.records_total.lock() = states.len() as u64;
        Ok(true)
    }

    pub(crate) fn flush(&self) -> Result<(), BrokerError> {
        Ok(self.log.flush()?)
    }
}

/// Every transactional id's last state, and how many records the log holds.
fn replay(log: &PartitionLog) -> Result<(HashMap<String, TransactionMetadata>, u64), BrokerError> {
    let mut states = HashMap::new();
    let mut records_total = 0u64;
    log.for_each_record(log.log_start_offset(), REPLAY_READ_BYTES, |record| {
        records_total += 1;
        let Some(key) = record.key.and_then(|k| String::from_utf8(k).ok()) else {
            tracing::warn!(offset = record.offset, "skipping undecodable transaction-log key");
            return;
        };
        match record.value {
            None => {
                states.remove(&key);
            }
            Some(value) => match serde_json::from_slice::<TransactionMetadata>(&value) {
                Ok(state) => {
                    states.insert(key, state);
                }
                Err(error) => {
                    tracing::warn!(offset = record.offset, %error, "skipping undecodable transaction state")
                }
            },
        }
    })?;
    Ok((states, records_total))
}
