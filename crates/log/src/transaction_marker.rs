//! Transaction markers: the control batch a transaction coordinator writes to each partition of
//! a transaction when it ends. Its one record has Kafka's control key (version 0, type 0 for
//! abort or 1 for commit) and value (version 0, the coordinator epoch). Consumers in
//! `read_committed` drop an aborted transaction's batches up to its abort marker.

use crate::batch::{decode_batch_records, BatchHeader, Record, RecordBatchBuilder};
use crate::LogError;

const CONTROL_KEY_VERSION: i16 = 0;
const CONTROL_TYPE_ABORT: i16 = 0;
const CONTROL_TYPE_COMMIT: i16 = 1;
const MARKER_VALUE_VERSION: i16 = 0;

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionResult {
    Commit,
    Abort,
}

/// The marker batch ending `producer_id`'s transaction at `epoch` (base offset 0: the log
/// assigns the real one).
pub fn transaction_marker(
    result: TransactionResult,
    producer_id: i64,
    producer_epoch: i16,
    coordinator_epoch: i32,
    timestamp_ms: i64,
) -> Vec<u8> {
    let control_type = match result {
        TransactionResult::Commit => CONTROL_TYPE_COMMIT,
        TransactionResult::Abort => CONTROL_TYPE_ABORT,
    };
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&CONTROL_KEY_VERSION.to_be_bytes());
    key.extend_from_slice(&control_type.to_be_bytes());
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&MARKER_VALUE_VERSION.to_be_bytes());
    value.extend_from_slice(&coordinator_epoch.to_be_bytes());
    let mut builder = RecordBatchBuilder::new();
    builder
        .control()
        .transactional()
        .producer(producer_id, producer_epoch, -1)
        .push(Record {
            timestamp: timestamp_ms,
            key: Some(key),
            value: Some(value),
            ..Record::default()
        });
    builder.build()
}

/// The result a transaction marker batch records; `None` for any other batch (data, or a
/// control batch that is not a transaction marker, such as a consensus entry).
/// `batch` is exactly one whole batch.
pub fn transaction_marker_result(
    header: &BatchHeader,
    batch: &[u8],
) -> Result<Option<TransactionResult>, LogError> {
    if !header.is_control() || !header.is_transactional() || header.record_count != 1 {
        return Ok(None);
    }
    let mut records = Vec::with_capacity(1);
    decode_batch_records(header, batch, &mut records)?;
    let Some(key) = records.first().and_then(|r| r.key.as_deref()) else {
        return Ok(None);
    };
    let (Some(version), Some(control_type)) = (key.get(0..2), key.get(2..4)) else {
        return Ok(None);
    };
    if i16::from_be_bytes([version[0], version[1]]) != CONTROL_KEY_VERSION {
        return Ok(None);
    }
    Ok(
        match i16::from_be_bytes([control_type[0], control_type[1]]) {
            CONTROL_TYPE_COMMIT => Some(TransactionResult::Commit),
            CONTROL_TYPE_ABORT => Some(TransactionResult::Abort),
            _ => None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate_batches;

    #[test]
    fn a_marker_is_a_transactional_control_batch_that_reads_back_its_result() {
        for result in [TransactionResult::Commit, TransactionResult::Abort] {
            let batch = transaction_marker(result, 42, 3, 0, 1_000);
            let headers = validate_batches(&batch).expect("valid batch");
            let header = headers[0];
            assert!(header.is_control() && header.is_transactional());
            assert_eq!((header.producer_id, header.producer_epoch), (42, 3));
            assert_eq!(header.base_sequence, -1);
            assert_eq!(
                transaction_marker_result(&header, &batch).expect("decodes"),
                Some(result)
            );
        }
    }

    #[test]
    fn data_and_other_control_batches_are_not_markers() {
        let mut builder = RecordBatchBuilder::new();
        builder.control().push(Record::default());
        let blank = builder.build();
        let header = validate_batches(&blank).expect("valid")[0];
        assert_eq!(transaction_marker_result(&header, &blank).ok(), Some(None));
        let mut builder = RecordBatchBuilder::new();
        builder
            .transactional()
            .producer(1, 0, 0)
            .push(Record::default());
        let data = builder.build();
        let header = validate_batches(&data).expect("valid")[0];
        assert_eq!(transaction_marker_result(&header, &data).ok(), Some(None));
    }
}
