//! The transaction coordinator's state in an internal log, like Kafka's `__transaction_state`:
//! every change of a transactional id's state appends one record (key = the transactional id,
//! value = its state as JSON, null when the id expires) and waits for the fsync before the
//! coordinator answers. On open the log is replayed, last write winning.
//!
//! The log cleaner compacts it (keeping each id's last state, see `PartitionLog::clean`) once
//! it is big enough and its rolled segments are mostly superseded records.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

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
        let states = replay(&log)?;
        Ok((
            TransactionLog {
                log: Arc::new(log),
                sync_on_write,
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
        if self.sync_on_write {
            let log = Arc::clone(&self.log);
            let offset_end = info.last_offset + 1;
            tokio::task::spawn_blocking(move || log.sync(offset_end))
                .await
                .map_err(|e| BrokerError::storage_io(format!("transaction log sync: {e}")))??;
        }
        Ok(())
    }

    /// Compacts (the log cleaner, see `PartitionLog::clean`) when the log is past
    /// `COMPACTION_BYTES_MIN` and its rolled segments are dirty enough; transactions go on
    /// meanwhile. Returns whether it compacted.
    pub(crate) fn compact_if_needed(&self) -> Result<bool, BrokerError> {
        if self.log.size_bytes() < COMPACTION_BYTES_MIN {
            return Ok(false);
        }
        let cleaned = self.log.clean(now_ms(), self.log.high_watermark())?;
        Ok(cleaned.is_some_and(|stats| stats.segments > 0))
    }

    pub(crate) fn flush(&self) -> Result<(), BrokerError> {
        Ok(self.log.flush()?)
    }
}

/// Every transactional id's last state.
fn replay(log: &PartitionLog) -> Result<HashMap<String, TransactionMetadata>, BrokerError> {
    let mut states = HashMap::new();
    log.for_each_record(log.log_start_offset(), REPLAY_READ_BYTES, |record| {
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
    Ok(states)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transaction_coordinator::TransactionState;
    use std::collections::{BTreeMap, BTreeSet};

    fn state(epoch: i16) -> TransactionMetadata {
        TransactionMetadata {
            producer_id: 7,
            producer_epoch: epoch,
            previous: None,
            timeout_ms: 60_000,
            state: TransactionState::Ongoing,
            // About 4 KB of JSON, so a few thousand writes pass the compaction threshold.
            partitions: (0..200)
                .map(|p| ("topic".to_string(), p))
                .collect::<BTreeSet<_>>(),
            pending_offsets: BTreeMap::new(),
            started_ms: 1,
            updated_ms: 2,
        }
    }

    #[tokio::test]
    async fn the_cleaner_keeps_each_ids_last_state() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            durability: Durability::Never,
            ..LogConfig::default()
        };
        let (log, _) =
            TransactionLog::open(Arc::new(sluice_log::RealDisk), dir.path(), config.clone())
                .unwrap();
        for epoch in 0..3000 {
            log.write(&format!("id-{}", epoch % 3), Some(&state(epoch)))
                .await
                .unwrap();
        }
        log.write("forgotten", Some(&state(1))).await.unwrap();
        log.write("forgotten", None).await.unwrap();
        let size_before = log.log.size_bytes();
        assert!(size_before >= COMPACTION_BYTES_MIN);
        assert!(log.compact_if_needed().unwrap());
        assert!(
            log.log.size_bytes() < SEGMENT_BYTES_MAX + (1 << 20),
            "{} bytes left of {size_before}",
            log.log.size_bytes()
        );
        drop(log);
        let (_, states) =
            TransactionLog::open(Arc::new(sluice_log::RealDisk), dir.path(), config).unwrap();
        assert_eq!(states.len(), 3, "{:?}", states.keys());
        for id in 0..3 {
            assert_eq!(states[&format!("id-{id}")].producer_epoch, 2997 + id as i16);
        }
    }
}
