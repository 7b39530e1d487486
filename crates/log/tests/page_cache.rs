//! `release_pages_below` on the real disk: the synced batches below the offset leave the page
//! cache (mincore shows their pages not resident), the log still reads them back, and without
//! it they stay cached. Linux only: fadvise and mincore are what is being tested.
#![cfg(target_os = "linux")]

use std::path::Path;

use sluice_log::{
    cached_pages, decode_records, Durability, LogConfig, PartitionLog, Record, RecordBatchBuilder,
};

const BATCHES: usize = 64;
const RECORD_BYTES: usize = 16 << 10;

fn config() -> LogConfig {
    LogConfig {
        durability: Durability::Batch,
        ..LogConfig::default()
    }
}

fn batch(i: usize) -> Vec<u8> {
    let mut builder = RecordBatchBuilder::new();
    builder.push(Record {
        timestamp: 1_000 + i as i64,
        value: Some(vec![i as u8; RECORD_BYTES]),
        ..Default::default()
    });
    builder.build()
}

/// Appends about 1 MiB; returns the log end.
fn fill(log: &PartitionLog) -> i64 {
    for i in 0..BATCHES {
        log.append(&mut batch(i), 0, 1_000).expect("append");
    }
    log.log_end_offset()
}

fn resident_pages(path: &Path) -> (usize, usize) {
    cached_pages(path).expect("mincore")
}

fn segment_file(dir: &Path) -> std::path::PathBuf {
    dir.join("00000000000000000000.log")
}

#[test]
fn released_pages_leave_the_page_cache_and_read_back_unchanged() {
    // Under the target directory: a tmpfs (often /tmp) cannot drop the pages of its files.
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let released_dir = root.path().join("released");
    let kept_dir = root.path().join("kept");

    let released = PartitionLog::open(&released_dir, config()).expect("open");
    let end = fill(&released);
    // Nothing past the durable end is released.
    released.release_pages_below(end);
    let (resident, pages) = resident_pages(&segment_file(&released_dir));
    assert!(pages >= 256, "the segment holds about 1 MiB: {pages} pages");
    assert!(
        resident * 10 >= pages * 9,
        "unsynced pages were released: {resident} of {pages} left"
    );
    released.sync(end).expect("sync");
    released.release_pages_below(end);
    let kept = PartitionLog::open(&kept_dir, config()).expect("open");
    kept.sync(fill(&kept)).expect("sync");

    // The last page, partly written, stays: the next append writes into it.
    let (resident, pages) = resident_pages(&segment_file(&released_dir));
    assert!(
        resident <= 1,
        "{resident} of {pages} pages still cached after the release"
    );
    let (resident, pages) = resident_pages(&segment_file(&kept_dir));
    assert!(
        resident * 10 >= pages * 9,
        "without a release the pages stay cached: only {resident} of {pages}"
    );

    // A second release starts where the first stopped, including the page it left.
    let end = fill(&released);
    released.sync(end).expect("sync");
    released.release_pages_below(end);
    let (resident, pages) = resident_pages(&segment_file(&released_dir));
    assert!(
        resident <= 1,
        "{resident} of {pages} pages still cached after the second release"
    );

    let mut offset = 0;
    while offset < end {
        let read = released.read(offset, 1 << 20).expect("read");
        let records = decode_records(&read.records).expect("decode");
        assert!(!records.is_empty(), "nothing read at {offset}");
        for record in records {
            let i = (record.offset as usize) % BATCHES;
            assert_eq!(
                record.value,
                Some(vec![i as u8; RECORD_BYTES]),
                "offset {}",
                record.offset
            );
            offset = record.offset + 1;
        }
    }
    assert_eq!(offset, end);
}
