//! What a replicated partition needs of its log: a high watermark set by consensus, reads past
//! it for replication, a retention floor, a full reset to a leader's offsets, control batches.

use std::path::Path;
use std::sync::Arc;

use sluice_log::{
    decode_records, validate_batches, Durability, HighWatermarkPolicy, LogConfig, LogError,
    PartitionLog, RealDisk, Record, RecordBatchBuilder,
};

fn batch(tag: &str, count: usize) -> Vec<u8> {
    let mut builder = RecordBatchBuilder::new();
    for i in 0..count {
        builder.push(Record {
            timestamp: 1_000 + i as i64,
            value: Some(format!("{tag}-{i}").into_bytes()),
            ..Default::default()
        });
    }
    builder.build()
}

fn open_external(dir: &Path, config: LogConfig) -> PartitionLog {
    PartitionLog::open_with_policy(
        Arc::new(RealDisk),
        dir,
        config,
        HighWatermarkPolicy::External,
    )
    .unwrap()
}

#[test]
fn external_high_watermark_moves_only_when_set() {
    let dir = tempfile::tempdir().unwrap();
    for durability in [Durability::Batch, Durability::Never] {
        let path = dir.path().join(durability.to_string());
        let log = open_external(
            &path,
            LogConfig {
                durability,
                ..LogConfig::default()
            },
        );
        let info = log.append(&mut batch("a", 3), 1, 1_000).unwrap();
        log.sync(info.last_offset + 1).unwrap();
        log.flush().unwrap();
        assert_eq!(log.durable_offset(), 3);
        assert_eq!(
            log.high_watermark(),
            0,
            "{durability}: durable is not committed"
        );
        assert!(log.read(0, 1 << 20).unwrap().records.is_empty());
        // Replication reads past it.
        let uncommitted = log.read_uncommitted(0, 1 << 20).unwrap();
        assert_eq!(decode_records(&uncommitted.records).unwrap().len(), 3);

        assert_eq!(log.set_high_watermark(2).unwrap(), 2);
        assert_eq!(log.read(0, 1 << 20).unwrap().high_watermark, 2);
        // Never backwards, never past the log end.
        assert_eq!(log.set_high_watermark(1).unwrap(), 2);
        assert_eq!(log.set_high_watermark(100).unwrap(), 3);
        drop(log);
        // Reopened, nothing is visible until the owner says so again.
        let log = open_external(&path, LogConfig::default());
        assert_eq!(log.high_watermark(), 0);
        assert_eq!(log.log_end_offset(), 3);
    }
}

#[test]
fn durable_high_watermark_cannot_be_set() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    assert!(matches!(
        log.set_high_watermark(0),
        Err(LogError::InvalidConfig(_))
    ));
}

#[test]
fn retention_keeps_segments_at_or_past_the_floor() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_external(
        dir.path(),
        LogConfig {
            segment_bytes_max: 200,
            retention_bytes: 0,
            durability: Durability::Never,
            ..LogConfig::default()
        },
    );
    for n in 0..6 {
        log.append(&mut batch(&format!("b{n}"), 2), 1, 1_000)
            .unwrap();
    }
    let segments = log.segment_count();
    assert!(segments >= 3, "{segments} segments");
    log.set_high_watermark(log.log_end_offset()).unwrap();
    // Raft still needs offsets from 4 on: the segments holding them stay.
    log.set_retention_floor(4);
    log.enforce_retention(1_000).unwrap();
    assert!(log.log_start_offset() <= 4);
    assert!(log.read(4, 1 << 20).is_ok());
    log.set_retention_floor(i64::MAX);
    log.enforce_retention(1_000).unwrap();
    assert!(log.log_start_offset() > 4);
}

#[test]
fn truncate_fully_and_start_at_restarts_the_log_at_an_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_external(dir.path(), LogConfig::default());
    log.append(&mut batch("old", 5), 1, 1_000).unwrap();
    log.truncate_fully_and_start_at(40).unwrap();
    assert_eq!(
        (
            log.log_start_offset(),
            log.log_end_offset(),
            log.high_watermark()
        ),
        (40, 40, 40)
    );
    let info = log.append(&mut batch("new", 2), 2, 1_000).unwrap();
    assert_eq!(info.base_offset, 40);
    log.sync(42).unwrap();
    drop(log);
    let log = open_external(dir.path(), LogConfig::default());
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (40, 42));
    assert!(matches!(
        log.read_uncommitted(0, 1 << 20),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    let records = decode_records(&log.read_uncommitted(40, 1 << 20).unwrap().records).unwrap();
    assert_eq!(records[0].value.as_deref(), Some(&b"new-0"[..]));
}

#[test]
fn control_batches_are_marked_and_valid() {
    let mut builder = RecordBatchBuilder::new();
    builder.control().push(Record {
        key: Some(vec![0, 0, 0, 100]),
        ..Default::default()
    });
    let bytes = builder.build();
    let headers = validate_batches(&bytes).unwrap();
    assert!(headers[0].is_control());
    assert!(!validate_batches(&batch("a", 1)).unwrap()[0].is_control());
}

#[test]
fn tail_start_finds_the_newest_batches_that_fit_a_budget() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_external(
        dir.path(),
        LogConfig {
            segment_bytes_max: 400,
            index_interval_bytes: 64,
            durability: Durability::Never,
            ..LogConfig::default()
        },
    );
    let mut batches = Vec::new(); // (base offset, bytes)
    for n in 0..20 {
        let mut bytes = batch(&format!("b{n}"), 1 + n % 3);
        let size = bytes.len() as u64;
        let info = log.append(&mut bytes, 1, 1_000).unwrap();
        batches.push((info.base_offset, size));
    }
    assert!(log.segment_count() > 3);
    let log_end = log.log_end_offset();
    // Brute force: the oldest batch from which the bytes up to `end` (at most the log end) fit.
    let expected = |end: i64, budget: u64| {
        let end = end.min(log_end);
        let mut start = end;
        let mut total = 0;
        for &(base, size) in batches.iter().rev().filter(|(base, _)| *base < end) {
            if total + size > budget {
                break;
            }
            total += size;
            start = base;
        }
        start
    };
    let end_offsets = [batches[19].0 + 3, batches[12].0, batches[5].0, batches[0].0];
    for end in end_offsets {
        for budget in [0, 60, 100, 250, 400, 1_000, 100_000] {
            assert_eq!(
                log.tail_start(end, budget).unwrap(),
                expected(end, budget),
                "end {end}, budget {budget}"
            );
        }
    }
    // Never below the batch holding the log start.
    log.set_high_watermark(log.log_end_offset()).unwrap();
    log.advance_log_start(batches[7].0 + 1).unwrap();
    assert_eq!(
        log.tail_start(log.log_end_offset(), u64::MAX).unwrap(),
        batches[7].0
    );
}
