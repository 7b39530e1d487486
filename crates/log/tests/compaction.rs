//! Log compaction (`PartitionLog::clean`): the last record of each key survives at its offset,
//! tombstones go after `delete.retention.ms`, aborted transactions go and markers stay, a
//! producer's last batch stays (emptied) for its sequence, compressed batches are rebuilt with
//! their codec, the dirty ratio and the given end are honoured, and a crash at every step of a
//! pass leaves a log that reads as before or after it.

use std::collections::BTreeMap;
use std::path::Path;

use sluice_log::{
    decode_records, transaction_marker, validate_batches, BatchHeader, Durability, LogConfig,
    PartitionLog, Record, RecordBatchBuilder, RecordLookup, SimDisk, TransactionResult,
};

fn compacted() -> LogConfig {
    LogConfig {
        durability: Durability::Never,
        index_interval_bytes: 128,
        segment_bytes_max: 1024,
        compact: true,
        min_cleanable_dirty_ratio: 0.0,
        ..LogConfig::default()
    }
}

fn record(key: &str, value: Option<&str>, timestamp: i64) -> Record {
    Record {
        timestamp,
        key: Some(key.as_bytes().to_vec()),
        value: value.map(|v| v.as_bytes().to_vec()),
        ..Default::default()
    }
}

/// Appends one batch of `(key, value)` records (a `None` value is a tombstone).
fn append(log: &PartitionLog, records: &[(&str, Option<&str>)], timestamp: i64) -> i64 {
    let mut builder = RecordBatchBuilder::new();
    for (key, value) in records {
        builder.push(record(key, *value, timestamp));
    }
    let mut bytes = builder.build();
    log.append(&mut bytes, 0, timestamp).unwrap().base_offset
}

/// Every batch header and every record from the log start to the high watermark.
fn read_everything(log: &PartitionLog) -> (Vec<BatchHeader>, Vec<Record>) {
    let mut headers = Vec::new();
    let mut records = Vec::new();
    let mut offset = log.log_start_offset();
    loop {
        let result = log.read(offset, 1 << 20).unwrap();
        if result.records.is_empty() {
            return (headers, records);
        }
        let batches = validate_batches(&result.records).unwrap();
        offset = batches.last().unwrap().last_offset() + 1;
        records.extend(
            decode_records(&result.records)
                .unwrap()
                .into_iter()
                .filter(|r| r.offset >= log.log_start_offset()),
        );
        headers.extend(batches);
    }
}

/// (offset, key, value) of every data record.
fn contents(log: &PartitionLog) -> Vec<(i64, String, Option<String>)> {
    let (headers, records) = read_everything(log);
    let control: Vec<(i64, i64)> = headers
        .iter()
        .filter(|h| h.is_control())
        .map(|h| (h.base_offset, h.last_offset()))
        .collect();
    records
        .into_iter()
        .filter(|r| !control.iter().any(|(a, b)| (*a..=*b).contains(&r.offset)))
        .map(|r| {
            (
                r.offset,
                String::from_utf8(r.key.unwrap_or_default()).unwrap(),
                r.value.map(|v| String::from_utf8(v).unwrap()),
            )
        })
        .collect()
}

/// The last (offset, value) of each key.
fn latest(contents: &[(i64, String, Option<String>)]) -> BTreeMap<String, (i64, Option<String>)> {
    let mut latest = BTreeMap::new();
    for (offset, key, value) in contents {
        latest.insert(key.clone(), (*offset, value.clone()));
    }
    latest
}

/// Ten rounds over five keys, enough to roll several 1 KiB segments.
fn fill(log: &PartitionLog) {
    for round in 0..10 {
        for key in 0..5 {
            let value = format!("value-{round}-{key}-{}", "x".repeat(40));
            append(log, &[(&format!("key-{key}"), Some(&value))], 1_000 + round);
        }
    }
}

#[test]
fn compaction_keeps_the_last_record_of_each_key_at_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), compacted()).unwrap();
    fill(&log);
    assert!(log.segment_count() > 3, "{} segments", log.segment_count());
    let before = contents(&log);
    let end = log.log_end_offset();
    let bytes_before = log.size_bytes();
    let segments_before = log.segment_count();

    let stats = log.clean(10_000, end).unwrap().expect("a pass was due");
    assert!(stats.segments > 0 && stats.records_removed > 0, "{stats:?}");
    let after = contents(&log);
    assert_eq!(
        latest(&after),
        latest(&before),
        "every key's last record stays"
    );
    assert!(log.size_bytes() < bytes_before);
    // Segments left without records are gone, except the first (it holds the log start).
    assert!(
        log.segment_count() < segments_before,
        "{} segments of {segments_before}",
        log.segment_count()
    );
    // Only the active segment may hold a key twice: the cleaned ones hold each key's last.
    let active_base = stats.clean_end;
    let cleaned: Vec<_> = after.iter().filter(|(o, _, _)| *o < active_base).collect();
    for (offset, key, _) in &cleaned {
        assert!(
            !after
                .iter()
                .any(|(o, k, _)| k == key && o > offset && *o < active_base),
            "{key} at {offset} is not its last record below {active_base}"
        );
    }
    // Offsets never move and the log's bounds stay.
    assert!(after.iter().all(|r| before.contains(r)));
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(log.log_start_offset(), 0);
    // A read from an offset that compaction emptied starts at the next record.
    let gap = (0..end)
        .find(|o| !after.iter().any(|(x, _, _)| x == o))
        .expect("some offset was removed");
    let result = log.read(gap, 1 << 20).unwrap();
    let first = decode_records(&result.records).unwrap()[0].offset;
    assert!(first > gap);

    // Nothing dirty: no second pass.
    assert_eq!(log.clean(10_000, end).unwrap(), None);
    // The cleaned log reopens the same (indexes were rebuilt).
    drop(log);
    let log = PartitionLog::open(dir.path(), compacted()).unwrap();
    assert_eq!(contents(&log), after);
}

#[test]
fn compaction_stops_at_the_given_end_and_waits_for_the_dirty_ratio() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(
        dir.path(),
        LogConfig {
            min_cleanable_dirty_ratio: 0.5,
            ..compacted()
        },
    )
    .unwrap();
    fill(&log);
    let before = contents(&log);
    // Nothing ends below offset 1: nothing to clean.
    assert_eq!(log.clean(10_000, 1).unwrap(), None);
    let stats = log.clean(10_000, 20).unwrap().unwrap();
    assert!(stats.clean_end <= 20);
    let after = contents(&log);
    assert!(
        after
            .iter()
            .filter(|(o, _, _)| *o >= stats.clean_end)
            .eq(before.iter().filter(|(o, _, _)| *o >= stats.clean_end)),
        "records past the end are untouched"
    );
    // Cleaned bytes below the end, a little dirty past it: under the ratio, no pass yet.
    let dirty_small = log.clean(10_000, stats.clean_end + 1).unwrap();
    assert_eq!(dirty_small, None);
    // The whole log: mostly dirty, so it is due.
    assert!(log.clean(10_000, log.log_end_offset()).unwrap().is_some());
    // Not compacted topics are never cleaned.
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = PartitionLog::open(
        plain_dir.path(),
        LogConfig {
            compact: false,
            ..compacted()
        },
    )
    .unwrap();
    fill(&plain);
    assert_eq!(plain.clean(10_000, plain.log_end_offset()).unwrap(), None);
}

#[test]
fn tombstones_stay_for_delete_retention_then_go() {
    for (delete_retention_ms, tombstone_stays) in [(1_000_000, true), (0, false)] {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(
            dir.path(),
            LogConfig {
                delete_retention_ms,
                ..compacted()
            },
        )
        .unwrap();
        fill(&log);
        append(&log, &[("key-0", None)], 2_000);
        // Roll past the tombstone so it can be cleaned.
        for n in 0..20 {
            append(&log, &[("other", Some(&"y".repeat(100)))], 2_000 + n);
        }
        log.clean(10_000, log.log_end_offset()).unwrap().unwrap();
        let after = contents(&log);
        assert!(
            !after.iter().any(|(_, k, v)| k == "key-0" && v.is_some()),
            "the deleted key's values are gone"
        );
        let tombstone = after.iter().any(|(_, k, v)| k == "key-0" && v.is_none());
        assert_eq!(
            tombstone, tombstone_stays,
            "delete.retention.ms {delete_retention_ms}"
        );
        assert!(after.iter().any(|(_, k, _)| k == "key-4"));
    }
}

#[test]
fn aborted_transactions_go_markers_and_committed_records_stay() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), compacted()).unwrap();
    append(&log, &[("k", Some("plain"))], 1_000);
    // Producer 7 commits "committed", producer 8 then writes "aborted" and aborts.
    let transactional = |producer_id: i64, value: &str| {
        let mut builder = RecordBatchBuilder::new();
        builder
            .producer(producer_id, 0, 0)
            .transactional()
            .push(record("k", Some(value), 1_000));
        builder.build()
    };
    log.append(&mut transactional(7, "committed"), 0, 1_000)
        .unwrap();
    log.append(
        &mut transaction_marker(TransactionResult::Commit, 7, 0, 0, 1_000),
        0,
        1_000,
    )
    .unwrap();
    let aborted = log
        .append(&mut transactional(8, "aborted"), 0, 1_000)
        .unwrap();
    log.append(
        &mut transaction_marker(TransactionResult::Abort, 8, 0, 0, 1_000),
        0,
        1_000,
    )
    .unwrap();
    for n in 0..20 {
        append(&log, &[("other", Some(&"y".repeat(100)))], 1_000 + n);
    }
    log.clean(10_000, log.log_end_offset()).unwrap().unwrap();

    let (headers, _) = read_everything(&log);
    let after = contents(&log);
    let k: Vec<_> = after.iter().filter(|(_, key, _)| key == "k").collect();
    assert_eq!(k.len(), 1, "{k:?}");
    assert_eq!(k[0].2.as_deref(), Some("committed"));
    assert!(!headers
        .iter()
        .any(|h| h.base_offset == aborted.base_offset && h.record_count > 0 && !h.is_control()));
    assert_eq!(
        headers.iter().filter(|h| h.is_control()).count(),
        2,
        "both markers stay"
    );
}

#[test]
fn a_producers_last_batch_stays_without_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), compacted()).unwrap();
    let mut builder = RecordBatchBuilder::new();
    builder
        .producer(42, 3, 17)
        .push(record("k", Some("old"), 1_000));
    builder.push(record("j", Some("old"), 1_000));
    let mut bytes = builder.build_compressed(4).unwrap();
    let idempotent = log.append(&mut bytes, 0, 1_000).unwrap();
    append(&log, &[("k", Some("new")), ("j", Some("new"))], 1_000);
    for n in 0..20 {
        append(&log, &[("other", Some(&"y".repeat(100)))], 1_000 + n);
    }
    log.clean(10_000, log.log_end_offset()).unwrap().unwrap();
    let headers = log.batch_headers_from(0).unwrap();
    let kept = headers
        .iter()
        .find(|h| h.producer_id == 42)
        .expect("the producer's last batch stays");
    assert_eq!(kept.base_offset, idempotent.base_offset);
    assert_eq!(kept.record_count, 0);
    assert_eq!(
        (
            kept.producer_epoch,
            kept.base_sequence,
            kept.last_sequence()
        ),
        (3, 17, 18)
    );
    assert_eq!(kept.compression(), 0);
    let after = contents(&log);
    assert!(after.contains(&(idempotent.base_offset + 2, "k".into(), Some("new".into()))));
}

#[test]
fn compressed_batches_keep_their_codec_when_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), compacted()).unwrap();
    for codec in 1..=4u8 {
        let mut builder = RecordBatchBuilder::new();
        builder.push(record(&format!("c{codec}"), Some("stale"), 1_000));
        builder.push(record(&format!("keep{codec}"), Some("kept"), 1_000));
        let mut bytes = builder.build_compressed(codec).unwrap();
        log.append(&mut bytes, 0, 1_000).unwrap();
        append(&log, &[(&format!("c{codec}"), Some("fresh"))], 1_000);
    }
    for n in 0..20 {
        append(&log, &[("other", Some(&"y".repeat(100)))], 1_000 + n);
    }
    log.clean(10_000, log.log_end_offset()).unwrap().unwrap();
    let (headers, _) = read_everything(&log);
    let after = contents(&log);
    for codec in 1..=4u8 {
        assert!(headers
            .iter()
            .any(|h| h.compression() == codec && h.record_count == 1));
        let key = format!("keep{codec}");
        assert!(after
            .iter()
            .any(|(_, k, v)| *k == key && v.as_deref() == Some("kept")));
        let key = format!("c{codec}");
        let values: Vec<_> = after.iter().filter(|(_, k, _)| *k == key).collect();
        assert_eq!(values.len(), 1);
        assert_eq!(values[0].2.as_deref(), Some("fresh"));
    }
}

/// A crash (the disk refuses every change after the n-th, then loses power) at each step of a
/// compaction pass: the reopened log holds every key's last record at its offset, every
/// record it serves is one that was written there, and a later pass finishes the job.
#[test]
fn a_crash_at_every_step_of_a_pass_loses_nothing() {
    let dir = Path::new("/partition");
    let config = LogConfig {
        durability: Durability::Batch,
        ..compacted()
    };
    let mut steps = 0;
    for crash_after in 0.. {
        let disk = SimDisk::new(crash_after);
        let log = PartitionLog::open_with(disk.storage(), dir, config.clone()).unwrap();
        fill(&log);
        log.sync(log.log_end_offset()).unwrap();
        let before = contents(&log);
        let changes_before = disk.counters();
        disk.crash_after(crash_after);
        let finished = log.clean(10_000, log.log_end_offset());
        let counters = disk.counters();
        drop(log);
        disk.power_cut();

        let log = PartitionLog::open_with(disk.storage(), dir, config.clone()).unwrap();
        let after = contents(&log);
        assert_eq!(
            latest(&after),
            latest(&before),
            "crash after {crash_after} changes"
        );
        assert!(
            after.iter().all(|r| before.contains(r)),
            "crash after {crash_after}: a record that was never written"
        );
        log.clean(10_000, log.log_end_offset()).unwrap();
        assert_eq!(latest(&contents(&log)), latest(&before));
        if finished.is_ok() {
            // The pass ran to its end before the crash point: every step was crashed once.
            steps = crash_after;
            assert!(counters.writes + counters.file_syncs > changes_before.writes);
            break;
        }
    }
    assert!(steps > 5, "a pass takes {steps} changes");
}

#[test]
fn message_query_by_key_finds_only_what_compaction_kept() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), compacted()).unwrap();
    fill(&log);
    let lookup = |log: &PartitionLog| {
        let found = log.find_records(RecordLookup::Key(b"key-3"), 100).unwrap();
        assert_eq!(found.segments_unindexed, 0);
        found
            .records
            .into_iter()
            .map(|r| String::from_utf8(r.value.unwrap()).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(lookup(&log).len(), 10);
    log.clean(10_000, log.log_end_offset()).unwrap().unwrap();
    let kept = lookup(&log);
    // The cleaned segments keep the last of them; the active one may hold a newer one.
    assert!(kept.len() <= 2, "{kept:?}");
    assert!(kept.last().unwrap().starts_with("value-9-3-"));
    drop(log);
    let log = PartitionLog::open(dir.path(), compacted()).unwrap();
    assert_eq!(lookup(&log), kept);
}

#[test]
fn a_replay_goes_past_a_batch_compaction_emptied_at_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), compacted()).unwrap();
    // One batch of ten keys; the last five are written again later, so the cleaned batch
    // keeps offsets 0-4 and still spans 0-9.
    let keys: Vec<String> = (0..10).map(|k| format!("k{k}")).collect();
    let first: Vec<(&str, Option<&str>)> = keys.iter().map(|k| (k.as_str(), Some("old"))).collect();
    append(&log, &first, 1_000);
    for key in &keys[5..] {
        append(&log, &[(key, Some(&"new".repeat(100)))], 1_000);
    }
    for n in 0..20 {
        append(&log, &[("other", Some(&"y".repeat(100)))], 1_000 + n);
    }
    log.clean(10_000, log.log_end_offset()).unwrap().unwrap();
    // One batch per read: the read at 5 returns only the first batch, with nothing past 4.
    let mut seen = Vec::new();
    let end = log
        .for_each_record(5, 1, |record| seen.push(record.offset))
        .unwrap();
    assert_eq!(end, log.high_watermark());
    assert_eq!(seen.first(), Some(&10), "{seen:?}");
}
