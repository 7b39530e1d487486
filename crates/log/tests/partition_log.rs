//! Behaviour of one partition log on a real directory: offsets, reads, the high watermark,
//! group commit, recovery after torn or corrupt writes, indexes, retention and truncation.

use std::fs::{self, OpenOptions};
use std::path::Path;
use std::sync::Arc;

use sluice_log::{
    decode_records, validate_batches, Durability, LogConfig, LogError, PartitionLog, Record,
    RecordBatchBuilder,
};

fn config(durability: Durability) -> LogConfig {
    LogConfig {
        durability,
        index_interval_bytes: 256,
        ..LogConfig::default()
    }
}

fn small_segments(durability: Durability) -> LogConfig {
    LogConfig {
        segment_bytes_max: 2048,
        ..config(durability)
    }
}

/// One batch of `count` records whose values are `"{tag}-{i}"` and timestamps `timestamp + i`.
fn batch(tag: &str, count: usize, timestamp: i64) -> Vec<u8> {
    let mut builder = RecordBatchBuilder::new();
    for i in 0..count {
        builder.push(Record {
            timestamp: timestamp + i as i64,
            key: Some(format!("k{i}").into_bytes()),
            value: Some(format!("{tag}-{i}").into_bytes()),
            ..Default::default()
        });
    }
    builder.build()
}

fn append(log: &PartitionLog, tag: &str, count: usize, timestamp: i64) -> sluice_log::AppendInfo {
    let mut bytes = batch(tag, count, timestamp);
    log.append(&mut bytes, 3, timestamp).unwrap()
}

/// Every record from `offset` to the high watermark, reading in `bytes_max` chunks.
fn read_all(log: &PartitionLog, mut offset: i64, bytes_max: usize) -> Vec<Record> {
    let mut records = Vec::new();
    loop {
        let result = log.read(offset, bytes_max).unwrap();
        if result.records.is_empty() {
            return records;
        }
        let decoded = decode_records(&result.records).unwrap();
        let next = decoded.last().unwrap().offset + 1;
        records.extend(decoded.into_iter().filter(|r| r.offset >= offset));
        offset = next;
    }
}

fn values(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap())
        .collect()
}

fn last_log_file(dir: &Path) -> std::path::PathBuf {
    let mut logs: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.pop().unwrap()
}

#[test]
fn append_assigns_consecutive_offsets_and_reads_back_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_segments(Durability::Never)).unwrap();
    let mut expected = Vec::new();
    for b in 0..40 {
        let info = append(&log, &format!("b{b}"), 5, 1_000 + b);
        assert_eq!(info.base_offset, b * 5);
        assert_eq!(info.last_offset, b * 5 + 4);
        assert_eq!(info.record_count, 5);
        assert_eq!(info.batches[0].base_offset, b * 5);
        assert_eq!(info.batches[0].partition_leader_epoch, 3);
        expected.extend((0..5).map(|i| format!("b{b}-{i}")));
    }
    assert!(log.segment_count() >= 3, "small segments must roll");
    assert_eq!(log.log_end_offset(), 200);
    assert_eq!(log.high_watermark(), 200);

    for bytes_max in [1, 500, 3000, 1 << 20] {
        let records = read_all(&log, 0, bytes_max);
        assert_eq!(values(&records), expected, "bytes_max {bytes_max}");
        assert!(records
            .iter()
            .enumerate()
            .all(|(i, r)| r.offset == i as i64));
    }

    // Stored batches carry the assigned offsets and epoch, and a valid CRC.
    let result = log.read(0, 1 << 20).unwrap();
    let headers = sluice_log::validate_batches(&result.records).unwrap();
    assert_eq!(headers[1].base_offset, 5);
    assert_eq!(headers[1].partition_leader_epoch, 3);
}

/// A follower's copy: the batches its leader stored (offsets and epoch stamped) are written as
/// they are, in pieces, when they start at this log's end in the expected epoch, and the logs
/// then hold the same bytes; anything else is refused with nothing written.
#[test]
fn stamped_batches_are_written_as_they_are_only_at_the_log_end_in_their_epoch() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let leader = PartitionLog::open(leader_dir.path(), small_segments(Durability::Never)).unwrap();
    let follower =
        PartitionLog::open(follower_dir.path(), small_segments(Durability::Never)).unwrap();
    for b in 0..12 {
        append(&leader, &format!("b{b}"), 4, 1_000 + b);
    }
    let stored = leader.read(0, 1 << 20).unwrap().records;
    let headers = validate_batches(&stored).unwrap();
    // The batches in three pieces, as a follower receives them in entries.
    let cut = |n: usize| -> usize { headers[..n].iter().map(|h| h.total_bytes()).sum() };
    let pieces = [
        &stored[..cut(1)],
        &stored[cut(1)..cut(5)],
        &stored[cut(5)..],
    ];

    // Not this log's end, or not the epoch the batches carry: refused, nothing written.
    assert!(follower
        .append_stamped(&pieces[1..], 3, 2_000, true)
        .unwrap()
        .is_none());
    assert!(follower
        .append_stamped(&pieces, 4, 2_000, true)
        .unwrap()
        .is_none());
    assert_eq!(follower.log_end_offset(), 0);
    // A piece whose CRC does not match is an error, whatever its offsets.
    let mut corrupt = stored[..cut(1)].to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    assert!(matches!(
        follower.append_stamped(&[&corrupt], 3, 2_000, true),
        Err(LogError::CorruptBatch { .. })
    ));
    assert_eq!(follower.log_end_offset(), 0);

    let first = follower
        .append_stamped(&pieces[..1], 3, 2_000, true)
        .unwrap()
        .expect("stamped at the log end");
    assert_eq!((first.base_offset, first.last_offset), (0, 3));
    let rest = follower
        .append_stamped(&pieces[1..], 3, 2_000, true)
        .unwrap()
        .expect("stamped at the log end");
    assert_eq!((rest.base_offset, rest.last_offset), (4, 47));
    assert_eq!(rest.batches.len(), 11);
    assert_eq!(follower.log_end_offset(), 48);
    assert_eq!(follower.read(0, 1 << 20).unwrap().records, stored);
    assert_eq!(
        values(&read_all(&follower, 0, 700)),
        values(&read_all(&leader, 0, 700))
    );
    // The follower's own appends carry on after them.
    assert_eq!(append(&follower, "own", 2, 3_000).base_offset, 48);
}

#[test]
fn read_from_mid_batch_returns_the_containing_batch() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), config(Durability::Never)).unwrap();
    for b in 0..50 {
        append(&log, &format!("b{b}"), 10, 1_000);
    }
    for offset in [0, 7, 10, 255, 499] {
        let result = log.read(offset, 1).unwrap();
        let header = sluice_log::BatchHeader::parse(&result.records).unwrap();
        assert_eq!(header.base_offset, offset / 10 * 10, "offset {offset}");
        assert_eq!(
            result.records.len(),
            header.total_bytes(),
            "one whole batch even past bytes_max"
        );
    }
}

#[test]
fn read_respects_bytes_max_with_whole_batches() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), config(Durability::Never)).unwrap();
    for b in 0..20 {
        append(&log, &format!("b{b}"), 4, 1_000);
    }
    let one = log.read(0, 1).unwrap().records.len();
    let result = log.read(0, one * 3 + one / 2).unwrap();
    assert_eq!(result.records.len(), one * 3);
    assert_eq!(
        sluice_log::validate_batches(&result.records).unwrap().len(),
        3
    );
    assert_eq!(result.high_watermark, 80);
    assert_eq!(result.log_end_offset, 80);
    assert_eq!(result.log_start_offset, 0);
}

#[test]
fn read_outside_the_log_is_out_of_range_and_at_the_end_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), config(Durability::Never)).unwrap();
    append(&log, "a", 3, 1_000);
    assert!(log.read(3, 100).unwrap().records.is_empty());
    assert!(matches!(
        log.read(4, 100),
        Err(LogError::OffsetOutOfRange {
            offset: 4,
            start: 0,
            end: 3
        })
    ));
    assert!(matches!(
        log.read(-1, 100),
        Err(LogError::OffsetOutOfRange { .. })
    ));
}

#[test]
fn high_watermark_waits_for_sync_under_batch_durability() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), config(Durability::Batch)).unwrap();
    let info = append(&log, "a", 3, 1_000);
    assert_eq!(log.log_end_offset(), 3);
    assert_eq!(log.high_watermark(), 0);
    assert!(
        log.read(0, 1000).unwrap().records.is_empty(),
        "unsynced data is invisible"
    );
    log.sync(info.last_offset + 1).unwrap();
    assert_eq!(log.high_watermark(), 3);
    assert_eq!(log.durable_offset(), 3);
    assert_eq!(read_all(&log, 0, 1000).len(), 3);
    // Already durable: no new fdatasync.
    let syncs = log.sync_count();
    log.sync(3).unwrap();
    assert_eq!(log.sync_count(), syncs);
}

/// `sluice_log_fsync_duration_seconds` gets one sample per group-commit fdatasync, and none
/// for a sync that finds everything already durable.
#[test]
fn fsync_latency_is_recorded_once_per_group_commit() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let exported = recorder.handle();
    let fsync_count = || {
        let text = exported.render();
        text.lines()
            .find_map(|line| {
                line.strip_prefix(&format!("{}_count ", sluice_log::FSYNC_SECONDS_METRIC))
                    .and_then(|count| count.parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    let dir = tempfile::tempdir().unwrap();
    // The log registers its histogram when it opens, under the recorder present then.
    let log = metrics::with_local_recorder(&recorder, || {
        PartitionLog::open(dir.path(), config(Durability::Batch)).unwrap()
    });
    let info = append(&log, "a", 3, 1_000);
    log.sync(info.last_offset + 1).unwrap();
    assert_eq!(fsync_count(), 1);
    log.sync(info.last_offset + 1).unwrap();
    assert_eq!(
        fsync_count(),
        1,
        "nothing new to sync: no fdatasync, no sample"
    );
    let info = append(&log, "b", 2, 2_000);
    log.sync(info.last_offset + 1).unwrap();
    assert_eq!(fsync_count(), 2);
}

#[test]
fn high_watermark_follows_appends_under_never_and_interval() {
    for durability in [
        Durability::Never,
        Durability::Interval(std::time::Duration::from_millis(10)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path(), config(durability)).unwrap();
        append(&log, "a", 3, 1_000);
        assert_eq!(log.high_watermark(), 3);
        assert_eq!(log.durable_offset(), 0);
        log.sync(3).unwrap();
        assert_eq!(log.durable_offset(), 3);
    }
}

#[test]
fn group_commit_shares_fdatasyncs_and_offsets_stay_unique() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(
        PartitionLog::open(
            dir.path(),
            LogConfig {
                segment_bytes_max: 64 << 10,
                ..config(Durability::Batch)
            },
        )
        .unwrap(),
    );
    let threads = 8;
    let appends = 200;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut offsets = Vec::new();
                for a in 0..appends {
                    let mut bytes = batch(&format!("t{t}-a{a}"), 2, 1_000);
                    let info = log.append(&mut bytes, 0, 1_000).unwrap();
                    log.sync(info.last_offset + 1).unwrap();
                    assert!(
                        log.high_watermark() > info.last_offset,
                        "acknowledged data is visible"
                    );
                    offsets.push(info.base_offset);
                }
                offsets
            })
        })
        .collect();
    let mut offsets: Vec<i64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    offsets.sort();
    let expected: Vec<i64> = (0..(threads * appends) as i64).map(|i| i * 2).collect();
    assert_eq!(offsets, expected);
    assert_eq!(log.high_watermark(), (threads * appends * 2) as i64);
    assert!(
        log.segment_count() > 1,
        "syncs must stay correct across rolls"
    );
    // Each sync covers every append that landed before it started. Writers that loop straight
    // from their sync to the next append give it only about two each here (the broker's
    // GroupCommit, which queues waiters for one flusher, is where far fewer syncs than appends
    // is asserted); a sync per append would mean no sharing at all.
    let syncs = log.sync_count();
    assert!(
        syncs * 4 <= (threads * appends * 3) as u64,
        "{syncs} fdatasyncs for {} appends: group commit is not sharing them",
        threads * appends
    );
    assert_eq!(read_all(&log, 0, 64 << 10).len(), threads * appends * 2);
}

#[test]
fn recovery_truncates_torn_batch() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = PartitionLog::open(dir.path(), small_segments(Durability::Never)).unwrap();
        for b in 0..30 {
            append(&log, &format!("b{b}"), 3, 1_000);
        }
    }
    // Chop the last batch in half, as a crash mid-write would.
    let path = last_log_file(dir.path());
    let length = fs::metadata(&path).unwrap().len();
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(length - 20).unwrap();
    drop(file);

    let log = PartitionLog::open(dir.path(), small_segments(Durability::Never)).unwrap();
    assert_eq!(log.log_end_offset(), 87);
    assert_eq!(log.high_watermark(), 87);
    let records = read_all(&log, 0, 4096);
    assert_eq!(records.len(), 87);
    assert_eq!(values(&records).last().unwrap(), "b28-2");
    let info = append(&log, "after", 2, 2_000);
    assert_eq!(info.base_offset, 87);
    assert_eq!(
        values(&read_all(&log, 86, 4096)),
        ["b28-2", "after-0", "after-1"]
    );
}

#[test]
fn recovery_truncates_corrupt_batch_and_everything_after() {
    let dir = tempfile::tempdir().unwrap();
    let one_batch;
    {
        let log = PartitionLog::open(dir.path(), config(Durability::Never)).unwrap();
        one_batch = batch("b0", 3, 1_000).len() as u64;
        for b in 0..10 {
            append(&log, &format!("b{b}"), 3, 1_000);
        }
    }
    // Flip a value byte inside batch 6 (of 10): batches 6..9 must go.
    let path = last_log_file(dir.path());
    let mut bytes = fs::read(&path).unwrap();
    let position = (6 * one_batch + one_batch - 3) as usize;
    bytes[position] ^= 0xff;
    fs::write(&path, bytes).unwrap();

    let log = PartitionLog::open(dir.path(), config(Durability::Never)).unwrap();
    assert_eq!(log.log_end_offset(), 18);
    assert_eq!(fs::metadata(&path).unwrap().len(), 6 * one_batch);
    assert_eq!(read_all(&log, 0, 4096).len(), 18);
    assert_eq!(append(&log, "next", 1, 1_000).base_offset, 18);
}

#[test]
fn recovery_rebuilds_deleted_and_damaged_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let expected;
    {
        let log = PartitionLog::open(dir.path(), small_segments(Durability::Never)).unwrap();
        for b in 0..60 {
            append(&log, &format!("b{b}"), 4, 1_000 + b);
        }
        expected = values(&read_all(&log, 0, 1 << 20));
        log.flush().unwrap();
    }
    let mut damaged = 0;
    for entry in fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("index") if damaged % 2 == 0 => {
                fs::remove_file(&path).unwrap();
                damaged += 1;
            }
            Some("index") => {
                // Garbage of a whole-entry length that points nowhere sensible.
                fs::write(&path, [0xffu8; 16]).unwrap();
                damaged += 1;
            }
            Some("timeindex") if damaged % 3 == 0 => fs::write(&path, [1u8; 5]).unwrap(),
            _ => {}
        }
    }
    assert!(damaged > 2);
    fs::write(dir.path().join("stray.txt"), b"not a segment").unwrap();
    fs::write(dir.path().join("00000000000099999999.index"), b"orphan").unwrap();

    let log = PartitionLog::open(dir.path(), small_segments(Durability::Never)).unwrap();
    assert_eq!(log.log_end_offset(), 240);
    assert_eq!(values(&read_all(&log, 0, 1 << 20)), expected);
    for offset in [0, 1, 77, 150, 239] {
        let records = read_all(&log, offset, 700);
        assert_eq!(records.first().unwrap().offset, offset);
    }
    // Batch b holds timestamps 1000 + b + i: 1030 first appears at batch 27, record 3.
    assert_eq!(log.offset_for_timestamp(1_030).unwrap(), Some((111, 1_030)));
    assert!(!dir.path().join("00000000000099999999.index").exists());
    for entry in fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            assert!(
                path.with_extension("index").exists(),
                "index rewritten for {path:?}"
            );
        }
    }
}

#[test]
fn reopen_after_clean_shutdown_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = PartitionLog::open(dir.path(), small_segments(Durability::Batch)).unwrap();
        for b in 0..25 {
            append(&log, &format!("b{b}"), 2, 1_000);
        }
        log.flush().unwrap();
        assert_eq!(log.high_watermark(), 50);
    }
    let log = PartitionLog::open(dir.path(), small_segments(Durability::Batch)).unwrap();
    assert_eq!(
        (
            log.log_start_offset(),
            log.log_end_offset(),
            log.high_watermark()
        ),
        (0, 50, 50)
    );
    assert_eq!(read_all(&log, 0, 1000).len(), 50);
}

#[test]
fn empty_directory_and_empty_trailing_segment_open_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("topic-0");
    {
        let log = PartitionLog::open(&path, config(Durability::Never)).unwrap();
        assert_eq!(
            (
                log.log_start_offset(),
                log.log_end_offset(),
                log.high_watermark()
            ),
            (0, 0, 0)
        );
        assert!(log.read(0, 100).unwrap().records.is_empty());
        assert_eq!(log.offset_for_timestamp(0).unwrap(), None);
        append(&log, "a", 5, 1_000);
    }
    // A crash right after a roll leaves a zero-length newest segment.
    fs::write(path.join(format!("{:020}.log", 5)), b"").unwrap();
    let log = PartitionLog::open(&path, config(Durability::Never)).unwrap();
    assert_eq!(log.segment_count(), 2);
    assert_eq!(log.log_end_offset(), 5);
    assert_eq!(append(&log, "b", 1, 1_000).base_offset, 5);
    assert_eq!(values(&read_all(&log, 0, 1 << 20)).len(), 6);
}

/// A log that refuses batches over 400 bytes.
fn small_batch_log(dir: &Path) -> PartitionLog {
    PartitionLog::open(
        dir,
        LogConfig {
            batch_bytes_max: 400,
            ..config(Durability::Never)
        },
    )
    .unwrap()
}

#[test]
fn bad_appends_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = small_batch_log(dir.path());
    append(&log, "ok", 1, 1_000);
    let size = log.size_bytes();

    let mut corrupt = batch("good", 1, 1_000);
    let mut second = batch("bad", 1, 1_000);
    let last = second.len() - 1;
    second[last] ^= 1;
    corrupt.extend_from_slice(&second);
    assert!(matches!(
        log.append(&mut corrupt, 0, 1_000),
        Err(LogError::CorruptBatch { .. })
    ));

    let mut truncated = batch("t", 2, 1_000);
    truncated.pop();
    assert!(matches!(
        log.append(&mut truncated, 0, 1_000),
        Err(LogError::InvalidBatch(_))
    ));

    let mut large = batch("large", 40, 1_000);
    assert!(matches!(
        log.append(&mut large, 0, 1_000),
        Err(LogError::BatchTooLarge { .. })
    ));
    assert!(matches!(
        log.append(&mut [], 0, 1_000),
        Err(LogError::InvalidBatch(_))
    ));
    assert!(matches!(
        log.append(&mut [1, 2, 3], 0, 1_000),
        Err(LogError::InvalidBatch(_))
    ));

    assert_eq!(log.size_bytes(), size);
    assert_eq!(log.log_end_offset(), 1);
}

/// `append_verified` trusts the caller's CRC check, not the shapes or the size limit.
#[test]
fn verified_appends_still_refuse_bad_shapes_and_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let log = small_batch_log(dir.path());
    let mut truncated = batch("t", 2, 1_000);
    truncated.pop();
    assert!(matches!(
        log.append_verified(&mut truncated, 0, 1_000),
        Err(LogError::InvalidBatch(_))
    ));
    assert!(matches!(
        log.append_verified(&mut batch("large", 40, 1_000), 0, 1_000),
        Err(LogError::BatchTooLarge { .. })
    ));
    assert!(matches!(
        log.append_verified(&mut [], 0, 1_000),
        Err(LogError::InvalidBatch(_))
    ));
    assert_eq!(log.size_bytes(), 0);

    let mut good = batch("ok", 2, 1_000);
    good.extend_from_slice(&batch("ok2", 1, 2_000));
    let info = log.append_verified(&mut good, 4, 3_000).unwrap();
    assert_eq!((info.base_offset, info.last_offset), (0, 2));
    // What it wrote reads back whole, CRCs and all.
    let read = log.read(0, 1 << 20).unwrap();
    assert_eq!(validate_batches(&read.records).unwrap().len(), 2);
    assert_eq!(
        values(&read_all(&log, 0, 1 << 20)),
        ["ok-0", "ok-1", "ok2-0"]
    );
}

#[test]
fn multi_batch_append_is_one_write_with_consecutive_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), config(Durability::Never)).unwrap();
    let mut bytes = batch("x", 3, 5_000);
    bytes.extend_from_slice(&batch("y", 2, 7_000));
    let info = log.append(&mut bytes, 9, 8_000).unwrap();
    assert_eq!(
        (info.base_offset, info.last_offset, info.record_count),
        (0, 4, 5)
    );
    assert_eq!(info.max_timestamp, 7_001);
    assert_eq!(info.log_append_time_ms, 8_000);
    assert_eq!(
        info.batches
            .iter()
            .map(|b| b.base_offset)
            .collect::<Vec<_>>(),
        [0, 3]
    );
    assert_eq!(
        values(&read_all(&log, 0, 1 << 20)),
        ["x-0", "x-1", "x-2", "y-0", "y-1"]
    );
}

#[test]
fn offset_for_timestamp_finds_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_segments(Durability::Never)).unwrap();
    // Batch b covers timestamps 1000 + 10b .. 1000 + 10b + 4, offsets 5b .. 5b + 4.
    for b in 0..40 {
        append(&log, &format!("b{b}"), 5, 1_000 + 10 * b);
    }
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((0, 1_000)));
    assert_eq!(log.offset_for_timestamp(1_000).unwrap(), Some((0, 1_000)));
    assert_eq!(log.offset_for_timestamp(1_003).unwrap(), Some((3, 1_003)));
    assert_eq!(log.offset_for_timestamp(1_005).unwrap(), Some((5, 1_010)));
    assert_eq!(log.offset_for_timestamp(1_252).unwrap(), Some((127, 1_252)));
    assert_eq!(log.offset_for_timestamp(1_394).unwrap(), Some((199, 1_394)));
    assert_eq!(log.offset_for_timestamp(1_395).unwrap(), None);
}

#[test]
fn offset_for_timestamp_ignores_data_past_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), config(Durability::Batch)).unwrap();
    append(&log, "a", 2, 1_000);
    assert_eq!(log.offset_for_timestamp(0).unwrap(), None);
    log.sync(2).unwrap();
    assert_eq!(log.offset_for_timestamp(1_001).unwrap(), Some((1, 1_001)));
}

#[test]
fn retention_by_bytes_deletes_oldest_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(
        dir.path(),
        LogConfig {
            retention_ms: -1,
            ..small_segments(Durability::Never)
        },
    )
    .unwrap();
    for b in 0..60 {
        append(&log, &format!("b{b}"), 4, 1_000);
    }
    let segments = log.segment_count();
    let total = log.size_bytes();
    assert_eq!(log.enforce_retention(2_000).unwrap(), 0, "retention off");

    let retention_bytes = (total / 2) as i64;
    log.set_config(LogConfig {
        retention_bytes,
        ..log.config()
    });
    let deleted = log.enforce_retention(2_000).unwrap();
    assert!(deleted > 0);
    assert_eq!(log.segment_count(), segments - deleted);
    assert!(
        log.size_bytes() as i64 >= retention_bytes,
        "never below retention"
    );
    let start = log.log_start_offset();
    assert!(start > 0);
    assert!(matches!(
        log.read(start - 1, 100),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert_eq!(read_all(&log, start, 1 << 20).len() as i64, 240 - start);

    // Reopening derives the log start from the remaining files.
    drop(log);
    let log = PartitionLog::open(dir.path(), small_segments(Durability::Never)).unwrap();
    assert_eq!(log.log_start_offset(), start);
}

#[test]
fn retention_by_time_keeps_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(
        dir.path(),
        LogConfig {
            retention_ms: 1_000,
            ..small_segments(Durability::Never)
        },
    )
    .unwrap();
    for b in 0..60 {
        append(&log, &format!("b{b}"), 4, 10_000 + b * 100);
    }
    let segments = log.segment_count();
    assert!(segments > 2);
    assert_eq!(log.enforce_retention(10_000).unwrap(), 0, "nothing old yet");
    // Everything is old now, but the active segment stays.
    assert_eq!(log.enforce_retention(1_000_000).unwrap(), segments - 1);
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.log_end_offset(), 240);
    assert_eq!(append(&log, "new", 1, 1_000_000).base_offset, 240);
}

#[test]
fn truncate_to_removes_batches_at_and_after_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_segments(Durability::Never)).unwrap();
    for b in 0..50 {
        append(&log, &format!("b{b}"), 4, 1_000 + b);
    }
    let segments = log.segment_count();
    log.truncate_to(500).unwrap(); // past the end: nothing
    assert_eq!(log.log_end_offset(), 200);

    log.truncate_to(122).unwrap(); // mid-batch: the containing batch goes too
    assert_eq!(log.log_end_offset(), 120);
    assert_eq!(log.high_watermark(), 120);
    assert!(log.segment_count() < segments);
    assert_eq!(read_all(&log, 0, 1 << 20).len(), 120);
    assert_eq!(
        log.offset_for_timestamp(1_033).unwrap(),
        None,
        "newest kept timestamp is 1032"
    );
    assert_eq!(append(&log, "new", 2, 5_000).base_offset, 120);
    assert_eq!(
        values(&read_all(&log, 119, 1 << 20)),
        ["b29-3", "new-0", "new-1"]
    );
    assert_eq!(
        log.batch_headers_from(110)
            .unwrap()
            .iter()
            .map(|h| h.base_offset)
            .collect::<Vec<_>>(),
        [108, 112, 116, 120]
    );

    drop(log);
    let log = PartitionLog::open(dir.path(), small_segments(Durability::Never)).unwrap();
    assert_eq!(log.log_end_offset(), 122);
    log.truncate_to(0).unwrap();
    assert_eq!(
        (
            log.log_start_offset(),
            log.log_end_offset(),
            log.segment_count()
        ),
        (0, 0, 1)
    );
    assert_eq!(append(&log, "again", 1, 1).base_offset, 0);
}

#[test]
fn batch_headers_from_covers_every_batch_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_segments(Durability::Batch)).unwrap();
    for b in 0..30 {
        let mut builder = RecordBatchBuilder::new();
        builder.producer(77, 1, b * 3);
        for i in 0..3 {
            builder.push(Record {
                timestamp: 1_000,
                value: Some(vec![i; 10]),
                ..Default::default()
            });
        }
        log.append(&mut builder.build(), 0, 1_000).unwrap();
    }
    // Not yet synced: headers still cover the whole log end.
    let headers = log.batch_headers_from(0).unwrap();
    assert_eq!(headers.len(), 30);
    assert!(headers
        .iter()
        .enumerate()
        .all(|(i, h)| h.base_offset == 3 * i as i64 && h.producer_id == 77));
    assert_eq!(headers.last().unwrap().last_sequence(), 89);
    assert_eq!(
        log.batch_headers_from(46)
            .unwrap()
            .first()
            .unwrap()
            .base_offset,
        45
    );
}

#[test]
fn delete_removes_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    let log = PartitionLog::open(&path, config(Durability::Never)).unwrap();
    append(&log, "a", 1, 1);
    log.delete().unwrap();
    assert!(!path.exists());
}

#[test]
fn loaded_indexes_match_rebuilt_ones() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = PartitionLog::open(dir.path(), small_segments(Durability::Never)).unwrap();
        for b in 0..80 {
            append(
                &log,
                &format!("b{b}"),
                1 + (b as usize % 7),
                1_000 + (b * 37) % 500,
            );
        }
        log.flush().unwrap();
    }
    let index_files = |dir: &Path| {
        let mut files: Vec<(std::path::PathBuf, Vec<u8>)> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "index" || e == "timeindex")
            })
            .map(|p| (p.clone(), fs::read(&p).unwrap()))
            .collect();
        files.sort();
        files
    };
    drop(PartitionLog::open(dir.path(), small_segments(Durability::Never)).unwrap());
    let loaded = index_files(dir.path());
    assert!(
        loaded.iter().any(|(_, bytes)| !bytes.is_empty()),
        "indexes have entries"
    );
    for (path, _) in &loaded {
        fs::remove_file(path).unwrap();
    }
    drop(PartitionLog::open(dir.path(), small_segments(Durability::Never)).unwrap());
    assert_eq!(index_files(dir.path()), loaded);
}

mod model {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// Batches of (record count, value length) in one append call.
        Append(Vec<(usize, usize)>),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => proptest::collection::vec((1usize..12, 0usize..200), 1..4).prop_map(Op::Append),
            1 => Just(Op::Reopen),
        ]
    }

    fn model_config() -> LogConfig {
        LogConfig {
            segment_bytes_max: 1500,
            index_interval_bytes: 100,
            ..LogConfig::default()
        }
    }

    fn check(log: &PartitionLog, expected: &[Vec<u8>]) -> Result<(), TestCaseError> {
        prop_assert_eq!(log.log_end_offset(), expected.len() as i64);
        let records = read_all(log, 0, 700);
        prop_assert_eq!(records.len(), expected.len());
        for (i, record) in records.iter().enumerate() {
            prop_assert_eq!(record.offset, i as i64);
            prop_assert_eq!(record.value.as_ref(), Some(&expected[i]));
        }
        if !expected.is_empty() {
            let middle = expected.len() as i64 / 2;
            prop_assert_eq!(
                read_all(log, middle, 300).first().map(|r| r.offset),
                Some(middle)
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        #[test]
        fn reads_return_exactly_what_was_appended(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let mut log = PartitionLog::open(dir.path(), model_config()).unwrap();
            let mut expected: Vec<Vec<u8>> = Vec::new();
            for op in ops {
                match op {
                    Op::Append(batches) => {
                        let mut bytes = Vec::new();
                        for (count, value_bytes) in batches {
                            let mut builder = RecordBatchBuilder::new();
                            for _ in 0..count {
                                let value = vec![(expected.len() % 251) as u8; value_bytes];
                                expected.push(value.clone());
                                builder.push(Record { timestamp: expected.len() as i64, value: Some(value), ..Default::default() });
                            }
                            bytes.extend_from_slice(&builder.build());
                        }
                        let info = log.append(&mut bytes, 1, 0).unwrap();
                        log.sync(info.last_offset + 1).unwrap();
                        prop_assert_eq!(info.last_offset + 1, expected.len() as i64);
                    }
                    Op::Reopen => {
                        drop(log);
                        log = PartitionLog::open(dir.path(), model_config()).unwrap();
                        check(&log, &expected)?;
                    }
                }
            }
            check(&log, &expected)?;
        }
    }
}

#[test]
fn advance_log_start_hides_records_below_it_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), config(Durability::Never)).unwrap();
    for b in 0..10 {
        append(&log, &format!("b{b}"), 4, 1_000 + b);
    }
    // Mid-batch, as DeleteRecords may ask: the start is exact even though reads are whole batches.
    assert_eq!(log.advance_log_start(10).unwrap(), 10);
    assert_eq!(log.log_start_offset(), 10);
    assert!(matches!(
        log.read(9, 1 << 20),
        Err(LogError::OffsetOutOfRange {
            offset: 9,
            start: 10,
            ..
        })
    ));
    let records = read_all(&log, 10, 1 << 20);
    assert_eq!(records.first().map(|r| r.offset), Some(10));
    assert_eq!(records.len(), 30);
    // A lower offset never moves the start back.
    assert_eq!(log.advance_log_start(5).unwrap(), 10);
    assert_eq!(log.log_start_offset(), 10);
    // Timestamp lookups never answer below the start.
    assert_eq!(
        log.offset_for_timestamp(0).unwrap().map(|(o, _)| o),
        Some(10)
    );

    drop(log);
    let log = PartitionLog::open(dir.path(), config(Durability::Never)).unwrap();
    assert_eq!(log.log_start_offset(), 10, "the start is durable");
    assert!(matches!(
        log.read(9, 1 << 20),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert_eq!(read_all(&log, 10, 1 << 20).len(), 30);
    assert_eq!(append(&log, "after", 1, 2_000).base_offset, 40);
}

#[test]
fn advance_log_start_past_the_high_watermark_is_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), config(Durability::Batch)).unwrap();
    append(&log, "a", 4, 1_000);
    // Appended but not yet synced: the high watermark is still 0.
    assert_eq!(log.high_watermark(), 0);
    assert!(matches!(
        log.advance_log_start(1),
        Err(LogError::OffsetOutOfRange { offset: 1, .. })
    ));
    assert!(matches!(
        log.advance_log_start(-1),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert_eq!(log.log_start_offset(), 0);
    log.sync(4).unwrap();
    // Up to the high watermark itself: the log is then empty for readers.
    assert_eq!(log.advance_log_start(4).unwrap(), 4);
    assert!(log.read(4, 1 << 20).unwrap().records.is_empty());
    append(&log, "b", 2, 1_001);
    log.sync(6).unwrap();
    assert_eq!(values(&read_all(&log, 4, 1 << 20)), ["b-0", "b-1"]);
}

#[test]
fn retention_deletes_segments_wholly_below_the_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let retention_off = LogConfig {
        retention_ms: -1,
        retention_bytes: -1,
        ..small_segments(Durability::Never)
    };
    let log = PartitionLog::open(dir.path(), retention_off.clone()).unwrap();
    for b in 0..60 {
        append(&log, &format!("b{b}"), 4, 1_000);
    }
    let segments = log.segment_count();
    assert!(segments > 2);
    assert_eq!(log.enforce_retention(2_000).unwrap(), 0, "retention off");

    assert_eq!(log.advance_log_start(122).unwrap(), 122);
    let deleted = log.enforce_retention(2_000).unwrap();
    assert!(deleted > 0);
    assert_eq!(log.segment_count(), segments - deleted);
    // The segment holding the start is kept, and the start is not lowered to its base.
    assert_eq!(log.log_start_offset(), 122);
    assert_eq!(read_all(&log, 122, 1 << 20).len(), 240 - 122);

    drop(log);
    let log = PartitionLog::open(dir.path(), retention_off).unwrap();
    assert_eq!(log.log_start_offset(), 122);
    assert_eq!(read_all(&log, 122, 1 << 20).len(), 240 - 122);
}

#[test]
fn recovery_clamps_the_log_start_checkpoint_to_the_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), config(Durability::Never)).unwrap();
    for b in 0..5 {
        append(&log, &format!("b{b}"), 4, 1_000);
    }
    assert_eq!(log.advance_log_start(8).unwrap(), 8);
    drop(log);

    // A checkpoint past the log end (its tail lost) is clamped to the end.
    fs::write(dir.path().join("log-start-offset"), "0\n1000\n").unwrap();
    let log = PartitionLog::open(dir.path(), config(Durability::Never)).unwrap();
    assert_eq!(log.log_start_offset(), 20);
    drop(log);

    // An unreadable checkpoint falls back to the first segment; an unfinished one is removed.
    fs::write(dir.path().join("log-start-offset"), "garbage").unwrap();
    fs::write(dir.path().join("log-start-offset.tmp"), "0\n3\n").unwrap();
    let log = PartitionLog::open(dir.path(), config(Durability::Never)).unwrap();
    assert_eq!(log.log_start_offset(), 0);
    assert!(!dir.path().join("log-start-offset.tmp").exists());
    assert_eq!(read_all(&log, 0, 1 << 20).len(), 20);
}
