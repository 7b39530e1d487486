//! The per-segment key index: records found by key and by `message-id` header without a scan,
//! kept on append, rebuilt by recovery when its file is missing, stale or damaged, removed
//! with its segment, and never answering past the high watermark.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use sluice_log::{
    Durability, LogConfig, PartitionLog, Record, RecordBatchBuilder, RecordLookup,
    MESSAGE_ID_HEADER,
};

fn small_segments() -> LogConfig {
    LogConfig {
        durability: Durability::Never,
        index_interval_bytes: 256,
        segment_bytes_max: 4096,
        ..LogConfig::default()
    }
}

/// Record `n` has key `user-{n % 7}`, message id `id-{n}` and value `v-{n}`.
fn record(n: u64) -> Record {
    Record {
        timestamp: 1_000 + n as i64,
        key: Some(format!("user-{}", n % 7).into_bytes()),
        value: Some(format!("v-{n}").into_bytes()),
        headers: vec![(
            MESSAGE_ID_HEADER.to_string(),
            Some(format!("id-{n}").into_bytes()),
        )],
        ..Default::default()
    }
}

/// Appends records `from..to` in batches of `per_batch`.
fn append_records(log: &PartitionLog, from: u64, to: u64, per_batch: u64) {
    let mut n = from;
    while n < to {
        let mut builder = RecordBatchBuilder::new();
        for m in n..(n + per_batch).min(to) {
            builder.push(record(m));
        }
        let mut bytes = builder.build();
        log.append(&mut bytes, 0, 1_000).unwrap();
        n += per_batch;
    }
}

fn offsets_by_key(log: &PartitionLog, key: &str) -> Vec<i64> {
    let found = log
        .find_records(RecordLookup::Key(key.as_bytes()), usize::MAX)
        .unwrap();
    assert!(found
        .records
        .iter()
        .all(|r| r.key.as_deref() == Some(key.as_bytes())));
    found.records.iter().map(|r| r.offset).collect()
}

fn value_by_id(log: &PartitionLog, id: &str) -> Vec<String> {
    log.find_records(RecordLookup::MessageId(id.as_bytes()), 10)
        .unwrap()
        .records
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap())
        .collect()
}

fn files_with_extension(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    files
}

fn expected_offsets(key_mod: u64, from: u64, to: u64) -> Vec<i64> {
    (from..to)
        .filter(|n| n % 7 == key_mod)
        .map(|n| n as i64)
        .collect()
}

#[test]
fn index_built_on_append_finds_keys_and_ids_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    append_records(&log, 0, 500, 5);
    assert!(log.segment_count() > 3, "rolled: {}", log.segment_count());
    // Found whether or not the background merges have written the tables yet.
    assert_eq!(offsets_by_key(&log, "user-3"), expected_offsets(3, 0, 500));
    assert_eq!(value_by_id(&log, "id-0"), ["v-0"]);
    // A flush waits for the merges: every rolled segment has its key index file.
    log.flush().unwrap();
    assert!(files_with_extension(dir.path(), "keyindex").len() >= log.segment_count() - 1);

    assert_eq!(offsets_by_key(&log, "user-3"), expected_offsets(3, 0, 500));
    assert_eq!(value_by_id(&log, "id-0"), ["v-0"]);
    assert_eq!(value_by_id(&log, "id-255"), ["v-255"]);
    assert_eq!(value_by_id(&log, "id-499"), ["v-499"]);
    assert!(value_by_id(&log, "id-500").is_empty());
    assert!(offsets_by_key(&log, "user-7").is_empty());
    // A key is not an id: the two are indexed apart.
    assert!(value_by_id(&log, "user-3").is_empty());

    let limited = log.find_records(RecordLookup::Key(b"user-3"), 4).unwrap();
    assert_eq!(limited.records.len(), 4);
    assert!(limited.truncated);
    assert_eq!(limited.records[0].offset, 3);
}

#[test]
fn lookups_never_answer_past_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        durability: Durability::Batch,
        ..small_segments()
    };
    let log = PartitionLog::open(dir.path(), config).unwrap();
    append_records(&log, 0, 10, 10);
    log.sync(10).unwrap();
    append_records(&log, 10, 20, 10);
    assert_eq!(log.high_watermark(), 10);
    assert_eq!(value_by_id(&log, "id-9"), ["v-9"]);
    assert!(value_by_id(&log, "id-15").is_empty(), "not yet durable");
    assert_eq!(offsets_by_key(&log, "user-1"), [1, 8]);
    log.sync(20).unwrap();
    assert_eq!(value_by_id(&log, "id-15"), ["v-15"]);
    assert_eq!(offsets_by_key(&log, "user-1"), [1, 8, 15]);
}

#[test]
fn recovery_rebuilds_deleted_stale_and_damaged_key_indexes() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
        append_records(&log, 0, 400, 4);
        log.flush().unwrap();
    }
    let files = files_with_extension(dir.path(), "keyindex");
    assert!(files.len() > 3);
    fs::remove_file(&files[0]).unwrap();
    fs::write(&files[1], b"SLKI garbage").unwrap();
    // Whole-looking but cut: the length no longer matches the entry count.
    let bytes = fs::read(&files[2]).unwrap();
    fs::write(&files[2], &bytes[..bytes.len() - 12]).unwrap();

    let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    assert_eq!(offsets_by_key(&log, "user-5"), expected_offsets(5, 0, 400));
    for n in [0, 77, 150, 399] {
        assert_eq!(value_by_id(&log, &format!("id-{n}")), [format!("v-{n}")]);
    }
    assert!(files[0].exists(), "rebuilt file written back");
    assert_eq!(fs::read(&files[2]).unwrap().len(), bytes.len());
}

#[test]
fn recovery_after_a_torn_tail_indexes_only_whole_batches() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
        append_records(&log, 0, 103, 5);
    }
    let active = files_with_extension(dir.path(), "log").pop().unwrap();
    // A torn write: the start of one more batch, then nothing.
    let mut builder = RecordBatchBuilder::new();
    builder.push(record(103));
    let torn = builder.build();
    let mut file = OpenOptions::new().append(true).open(&active).unwrap();
    file.write_all(&torn[..torn.len() / 2]).unwrap();
    drop(file);

    let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    assert_eq!(log.log_end_offset(), 103);
    assert_eq!(value_by_id(&log, "id-102"), ["v-102"]);
    assert!(value_by_id(&log, "id-103").is_empty());
    append_records(&log, 103, 110, 7);
    assert_eq!(value_by_id(&log, "id-103"), ["v-103"]);
    assert_eq!(offsets_by_key(&log, "user-2"), expected_offsets(2, 0, 110));
}

#[test]
fn retention_removes_key_index_files_with_their_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_bytes: 8192,
        ..small_segments()
    };
    let log = PartitionLog::open(dir.path(), config).unwrap();
    append_records(&log, 0, 600, 5);
    log.flush().unwrap();
    let before = files_with_extension(dir.path(), "keyindex").len();
    let deleted = log.enforce_retention(2_000).unwrap();
    assert!(deleted > 0);
    let logs = files_with_extension(dir.path(), "log");
    let key_indexes = files_with_extension(dir.path(), "keyindex");
    assert_eq!(key_indexes.len(), before - deleted);
    for key_index in &key_indexes {
        assert!(key_index.with_extension("log").exists(), "{key_index:?}");
    }
    assert!(logs.len() <= key_indexes.len() + 1);
    let start = log.log_start_offset() as u64;
    assert!(start > 0);
    assert!(value_by_id(&log, "id-0").is_empty());
    assert_eq!(
        offsets_by_key(&log, "user-4"),
        expected_offsets(4, start, 600)
    );
}

#[test]
fn truncation_drops_and_reindexes_the_cut_records() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    append_records(&log, 0, 300, 5);
    log.truncate_to(120).unwrap();
    assert_eq!(log.log_end_offset(), 120);
    assert!(value_by_id(&log, "id-120").is_empty());
    assert_eq!(offsets_by_key(&log, "user-6"), expected_offsets(6, 0, 120));
    append_records(&log, 120, 130, 10);
    assert_eq!(value_by_id(&log, "id-125"), ["v-125"]);
    drop(log);
    // The truncated segment's index file is rewritten or rebuilt, never trusted stale.
    let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    assert_eq!(offsets_by_key(&log, "user-6"), expected_offsets(6, 0, 130));
}

#[test]
fn batches_marked_compressed_that_do_not_decompress_are_stored_but_reported_unindexed() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    let mut builder = RecordBatchBuilder::new();
    builder.push(record(0));
    let mut batch = builder.build();
    batch[22] |= 0x04; // attributes: zstd, but the records are not zstd
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    log.append(&mut batch, 0, 1_000).unwrap();
    let found = log
        .find_records(RecordLookup::MessageId(b"id-0"), 10)
        .unwrap();
    assert!(found.records.is_empty());
    assert_eq!(found.batches_unindexed, 1);
}

#[test]
fn disabled_key_index_writes_no_files_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        key_index: false,
        ..small_segments()
    };
    let log = PartitionLog::open(dir.path(), config.clone()).unwrap();
    append_records(&log, 0, 200, 5);
    assert!(files_with_extension(dir.path(), "keyindex").is_empty());
    let found = log.find_records(RecordLookup::Key(b"user-1"), 10).unwrap();
    assert!(found.records.is_empty());
    assert_eq!(found.segments_unindexed, log.segment_count());

    // Turned on: new segments are indexed, older ones once recovery rebuilds them.
    log.set_config(LogConfig {
        key_index: true,
        ..config
    });
    append_records(&log, 200, 400, 5);
    let found = log
        .find_records(RecordLookup::Key(b"user-1"), 1000)
        .unwrap();
    assert!(found.segments_unindexed > 0);
    assert!(found.records.iter().all(|r| r.offset >= 200));
    drop(log);
    let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    assert_eq!(offsets_by_key(&log, "user-1"), expected_offsets(1, 0, 400));
}

#[test]
fn active_segment_spills_runs_to_disk_and_merges_them_when_rolled() {
    let dir = tempfile::tempdir().unwrap();
    let big_segments = LogConfig {
        segment_bytes_max: 1 << 30,
        ..small_segments()
    };
    let count = 140_000; // two entries each: past the 256 Ki entries kept in memory
    {
        let log = PartitionLog::open(dir.path(), big_segments.clone()).unwrap();
        append_records(&log, 0, count, 500);
        assert_eq!(files_with_extension(dir.path(), "keyruns").len(), 1);
        for n in [0, 1, 70_000, 139_999] {
            assert_eq!(value_by_id(&log, &format!("id-{n}")), [format!("v-{n}")]);
        }
        // A crash: no flush, no roll.
    }
    let log = PartitionLog::open(dir.path(), big_segments.clone()).unwrap();
    assert_eq!(value_by_id(&log, "id-12345"), ["v-12345"]);
    assert_eq!(
        offsets_by_key(&log, "user-3").len(),
        expected_offsets(3, 0, count).len()
    );
    log.set_config(small_segments());
    append_records(&log, count, count + 10, 10);
    // Before the merge has finished or after, the rolled segment answers.
    assert_eq!(value_by_id(&log, "id-777"), ["v-777"]);
    log.flush().unwrap();
    assert!(
        files_with_extension(dir.path(), "keyruns").is_empty(),
        "removed on roll"
    );
    let tables = files_with_extension(dir.path(), "keyindex");
    assert_eq!(tables.len(), 1);
    assert_eq!(fs::metadata(&tables[0]).unwrap().len(), 32 + 12 * 2 * count);
    for n in [0, 99_999, count + 5] {
        assert_eq!(value_by_id(&log, &format!("id-{n}")), [format!("v-{n}")]);
    }
}
