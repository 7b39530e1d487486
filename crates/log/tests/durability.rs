//! What survives storage failures, on the simulated disk: failed fsyncs and writes take the
//! log offline, directory entries are synced, power cuts keep exactly the synced data, and a
//! corrupt stored batch is never served.

use std::path::PathBuf;

use sluice_log::{
    decode_records, Durability, LogConfig, LogError, PartitionLog, Record, RecordBatchBuilder,
    SimDisk,
};

fn dir() -> PathBuf {
    PathBuf::from("/partition-0")
}

fn config() -> LogConfig {
    LogConfig {
        durability: Durability::Batch,
        index_interval_bytes: 256,
        ..LogConfig::default()
    }
}

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes_max: 1024,
        ..config()
    }
}

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

fn open(disk: &SimDisk, config: LogConfig) -> PartitionLog {
    PartitionLog::open_with(disk.storage(), &dir(), config).expect("open on the simulated disk")
}

/// Appends and syncs one batch; returns the offsets it got.
fn append_synced(log: &PartitionLog, tag: &str, count: usize) -> (i64, i64) {
    let info = log
        .append(&mut batch(tag, count), 0, 1_000)
        .expect("append");
    log.sync(info.last_offset + 1).expect("sync");
    (info.base_offset, info.last_offset)
}

fn values_from(log: &PartitionLog, mut offset: i64) -> Vec<String> {
    let mut values = Vec::new();
    loop {
        let result = log.read(offset, 1 << 20).expect("read");
        if result.records.is_empty() {
            return values;
        }
        let records = decode_records(&result.records).expect("decode");
        offset = records.last().map_or(offset, |r| r.offset + 1);
        values.extend(
            records
                .into_iter()
                .map(|r| String::from_utf8(r.value.unwrap_or_default()).unwrap_or_default()),
        );
    }
}

fn expected(tags: &[(&str, usize)]) -> Vec<String> {
    tags.iter()
        .flat_map(|(tag, count)| (0..*count).map(move |i| format!("{tag}-{i}")))
        .collect()
}

#[test]
fn failed_fsync_poisons_log_until_reopen() {
    let disk = SimDisk::new(7);
    let log = open(&disk, config());
    append_synced(&log, "acked", 5);
    let durable_before = log.durable_offset();
    assert_eq!(log.high_watermark(), 5);

    let info = log.append(&mut batch("unacked", 3), 0, 1_000).unwrap();
    disk.fail_next_sync();
    assert!(matches!(
        log.sync(info.last_offset + 1),
        Err(LogError::Io { .. })
    ));
    assert!(log.is_offline());
    // Every later change is refused, and nothing past the last good sync becomes durable.
    assert!(matches!(
        log.sync(info.last_offset + 1),
        Err(LogError::Offline { .. })
    ));
    assert!(matches!(
        log.append(&mut batch("later", 1), 0, 1_000),
        Err(LogError::Offline { .. })
    ));
    assert!(matches!(log.flush(), Err(LogError::Offline { .. })));
    assert!(matches!(log.truncate_to(0), Err(LogError::Offline { .. })));
    assert_eq!(log.durable_offset(), durable_before);
    assert_eq!(log.high_watermark(), 5);
    // Already durable offsets stay answered, and reads still serve them.
    log.sync(5).expect("durable offsets stay durable");
    assert_eq!(values_from(&log, 0), expected(&[("acked", 5)]));

    drop(log);
    disk.power_cut();
    let log = open(&disk, config());
    assert!(!log.is_offline());
    assert_eq!(values_from(&log, 0), expected(&[("acked", 5)]));
    append_synced(&log, "after-restart", 2);
    assert_eq!(
        values_from(&log, 0),
        expected(&[("acked", 5), ("after-restart", 2)])
    );
}

/// The old behaviour: a sync that failed, then one that succeeded, marked the bytes of the
/// failed one durable although Linux had dropped them; after a power cut they were gone, and
/// recovery cut the log at the hole, losing acknowledged records written after it.
#[test]
fn sync_after_a_failed_sync_never_marks_the_lost_bytes_durable() {
    let disk = SimDisk::new(11);
    let log = open(&disk, config());
    append_synced(&log, "acked", 4);
    let lost = log.append(&mut batch("lost", 4), 0, 1_000).unwrap();
    disk.fail_next_sync();
    assert!(log.sync(lost.last_offset + 1).is_err());
    // A producer retrying (or the next group commit round) must not get an acknowledgement.
    let retried = log.append(&mut batch("retried", 4), 0, 1_000);
    assert!(retried.is_err(), "appends after a failed fsync must fail");
    assert!(log.sync(lost.last_offset + 1).is_err());
    assert_eq!(log.high_watermark(), 4);
    assert_eq!(log.durable_offset(), 4);

    drop(log);
    disk.power_cut();
    let log = open(&disk, config());
    assert_eq!(values_from(&log, 0), expected(&[("acked", 4)]));
}

#[test]
fn failed_write_takes_the_log_offline_and_writes_nothing_visible() {
    let disk = SimDisk::new(12);
    let log = open(&disk, config());
    append_synced(&log, "acked", 3);
    disk.fail_next_write();
    assert!(matches!(
        log.append(&mut batch("failed", 3), 0, 1_000),
        Err(LogError::Io { .. })
    ));
    assert_eq!(log.log_end_offset(), 3);
    assert!(matches!(
        log.append(&mut batch("next", 1), 0, 1_000),
        Err(LogError::Offline { .. })
    ));
    drop(log);
    disk.power_cut();
    let log = open(&disk, config());
    assert_eq!(values_from(&log, 0), expected(&[("acked", 3)]));
}

#[test]
fn full_disk_takes_the_log_offline_and_a_reopen_keeps_acknowledged_records() {
    let disk = SimDisk::new(13);
    let log = open(&disk, small_segments());
    append_synced(&log, "acked", 10);
    disk.set_space_bytes_max(Some(1_500));
    let mut tags = vec![("acked", 10)];
    let mut names = Vec::new();
    let error = loop {
        let tag = format!("fill{}", names.len());
        match log.append(&mut batch(&tag, 5), 0, 1_000) {
            Ok(info) => {
                log.sync(info.last_offset + 1).expect("sync");
                names.push(tag);
            }
            Err(error) => break error,
        }
    };
    assert!(matches!(error, LogError::Io { .. }), "{error}");
    assert!(log.is_offline());
    for name in &names {
        tags.push((name.as_str(), 5));
    }
    drop(log);
    disk.power_cut();
    disk.set_space_bytes_max(None);
    let log = open(&disk, small_segments());
    assert_eq!(values_from(&log, 0), expected(&tags));
}

#[test]
fn rolled_segments_survive_power_cut_because_their_directory_entries_are_synced() {
    let disk = SimDisk::new(21);
    let log = open(&disk, small_segments());
    let mut tags = Vec::new();
    let names: Vec<String> = (0..30).map(|i| format!("batch{i}")).collect();
    for name in &names {
        append_synced(&log, name, 4);
        tags.push((name.as_str(), 4));
    }
    assert!(log.segment_count() > 3, "the test needs rolls");
    drop(log);
    disk.power_cut();
    let log = open(&disk, small_segments());
    assert_eq!(values_from(&log, 0), expected(&tags));
    assert_eq!(log.high_watermark(), 120);
}

#[test]
fn new_partition_directory_survives_power_cut() {
    let disk = SimDisk::new(22);
    // Neither the topic directory nor the data directory exists yet.
    let nested = PathBuf::from("/data/topics/t-0");
    let log = PartitionLog::open_with(disk.storage(), &nested, config()).unwrap();
    append_synced(&log, "acked", 2);
    drop(log);
    disk.power_cut();
    let log = PartitionLog::open_with(disk.storage(), &nested, config()).unwrap();
    assert_eq!(values_from(&log, 0), expected(&[("acked", 2)]));
}

#[test]
fn retention_deletes_and_log_start_survive_power_cut() {
    let disk = SimDisk::new(23);
    let log = open(&disk, small_segments());
    let names: Vec<String> = (0..20).map(|i| format!("b{i}")).collect();
    for name in &names {
        append_synced(&log, name, 4);
    }
    assert_eq!(log.advance_log_start(70).unwrap(), 70);
    let deleted = log.enforce_retention(1_000).unwrap();
    assert!(deleted > 0);
    let start = log.log_start_offset();
    let segments = log.segment_count();
    drop(log);
    disk.power_cut();
    let log = open(&disk, small_segments());
    assert_eq!(log.log_start_offset(), start);
    assert_eq!(log.segment_count(), segments);
    assert_eq!(log.log_end_offset(), 80);
}

#[test]
fn corrupt_byte_in_rolled_segment_is_never_served() {
    let disk = SimDisk::new(31);
    let log = open(&disk, small_segments());
    let first = batch("first", 3);
    let mut offsets = Vec::new();
    for tag in ["first", "second", "third"] {
        offsets.push(append_synced(&log, tag, 3));
    }
    let names: Vec<String> = (0..20).map(|i| format!("later{i}")).collect();
    for name in &names {
        append_synced(&log, name, 3);
    }
    assert!(log.segment_count() > 2);
    // A byte inside the second batch's records, in the first (rolled) segment.
    let segment = dir().join("00000000000000000000.log");
    disk.flip_byte(&segment, first.len() as u64 + 70).unwrap();

    let error = log.read(offsets[1].0, 1 << 20).unwrap_err();
    match &error {
        LogError::CorruptStored { path, position, .. } => {
            assert_eq!(path, &segment);
            assert_eq!(*position, first.len() as u64);
        }
        other => panic!("expected CorruptStored, got {other}"),
    }
    // A read from before it stops before it; batches after it are still served.
    let head = decode_records(&log.read(0, 1 << 20).unwrap().records).unwrap();
    assert_eq!(head.len(), 3);
    assert_eq!(
        values_from(&log, offsets[2].0)[..3],
        expected(&[("third", 3)])
    );

    // After a crash (no clean shutdown) the log opens and still refuses the corrupt batch.
    drop(log);
    disk.power_cut();
    let log = open(&disk, small_segments());
    assert!(matches!(
        log.read(offsets[1].0, 1 << 20),
        Err(LogError::CorruptStored { .. })
    ));
    assert_eq!(log.log_end_offset(), 69);
}

#[test]
fn flush_leaves_a_clean_shutdown_marker_that_the_next_change_removes() {
    let disk = SimDisk::new(41);
    let marker = dir().join("clean-shutdown");
    let log = open(&disk, config());
    append_synced(&log, "a", 1);
    log.flush().unwrap();
    assert!(disk.exists(&marker));
    append_synced(&log, "b", 1);
    assert!(
        !disk.exists(&marker),
        "a change after flush removes the marker"
    );
    log.flush().unwrap();
    drop(log);
    let log = open(&disk, config());
    assert!(!disk.exists(&marker), "open removes the marker");
    assert_eq!(values_from(&log, 0), expected(&[("a", 1), ("b", 1)]));
}
