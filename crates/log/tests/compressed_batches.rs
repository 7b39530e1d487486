//! Batches a producer compressed (gzip, snappy, lz4, zstd) are decoded for lookups: their
//! records are indexed by key and message id when appended, found in the active segment, in
//! rolled ones and after a restart, and decode on read. A payload that does not decompress is
//! an error for the reader and an unindexed batch for lookups, never a panic.

use sluice_log::{
    decode_records, Durability, LogConfig, LogError, PartitionLog, Record, RecordBatchBuilder,
    RecordLookup, MESSAGE_ID_HEADER,
};

const CODECS: [(u8, &str); 4] = [(1, "gzip"), (2, "snappy"), (3, "lz4"), (4, "zstd")];

fn config() -> LogConfig {
    LogConfig {
        durability: Durability::Never,
        index_interval_bytes: 256,
        segment_bytes_max: 4096,
        ..LogConfig::default()
    }
}

fn record(codec: &str, n: u64) -> Record {
    Record {
        timestamp: 1_000 + n as i64,
        key: Some(format!("{codec}-key-{}", n % 3).into_bytes()),
        value: Some(format!("{codec}-value-{n}").repeat(4).into_bytes()),
        headers: vec![(
            MESSAGE_ID_HEADER.to_string(),
            Some(format!("{codec}-id-{n}").into_bytes()),
        )],
        ..Default::default()
    }
}

fn compressed_batch(codec: u8, name: &str, from: u64, to: u64) -> Vec<u8> {
    let mut builder = RecordBatchBuilder::new();
    for n in from..to {
        builder.push(record(name, n));
    }
    builder.build_compressed(codec).unwrap()
}

fn values_by_id(log: &PartitionLog, id: &str) -> Vec<String> {
    log.find_records(RecordLookup::MessageId(id.as_bytes()), 10)
        .unwrap()
        .records
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap())
        .collect()
}

fn offsets_by_key(log: &PartitionLog, key: &str) -> Vec<i64> {
    let found = log
        .find_records(RecordLookup::Key(key.as_bytes()), usize::MAX)
        .unwrap();
    assert_eq!(found.batches_unindexed, 0);
    found.records.iter().map(|r| r.offset).collect()
}

#[test]
fn compressed_batches_of_every_codec_are_found_by_key_and_id_and_decode_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), config()).unwrap();
    // Per codec: 30 batches of 10 records, so segments roll between them.
    let mut offsets = std::collections::BTreeMap::new();
    for (codec, name) in CODECS {
        for batch in 0..30 {
            let mut bytes = compressed_batch(codec, name, batch * 10, batch * 10 + 10);
            let info = log.append(&mut bytes, 0, 1_000).unwrap();
            assert_eq!(info.batches[0].compression(), codec);
            offsets.insert((name, batch), info.base_offset);
        }
    }
    assert!(log.segment_count() > 4, "rolled: {}", log.segment_count());

    let check = |log: &PartitionLog| {
        for (_, name) in CODECS {
            let base = offsets[&(name, 0)];
            assert_eq!(
                values_by_id(log, &format!("{name}-id-123")),
                [format!("{name}-value-123").repeat(4)],
            );
            let by_key = offsets_by_key(log, &format!("{name}-key-1"));
            let expected: Vec<i64> = (0..300).filter(|n| n % 3 == 1).map(|n| base + n).collect();
            assert_eq!(by_key, expected, "{name}");
            // The batch read back by offset decodes to its records.
            let read = log.read(base + 42, 1).unwrap();
            let records = decode_records(&read.records).unwrap();
            assert_eq!(records.len(), 10);
            assert_eq!(records[2].offset, base + 42);
            assert_eq!(
                records[2].key.as_deref(),
                Some(format!("{name}-key-0").as_bytes())
            );
        }
    };
    check(&log);
    log.flush().unwrap(); // every rolled segment's table merged
    check(&log);
    drop(log);
    // Recovery rebuilds the active segment's index, decompressing again.
    let log = PartitionLog::open(dir.path(), config()).unwrap();
    check(&log);
}

/// `batch`'s header (codec in its attributes) with `payload` as its records section and a valid
/// CRC (a producer can send exactly that: the CRC covers whatever it compressed).
fn with_payload(batch: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = batch[..sluice_log::BATCH_HEADER_BYTES].to_vec();
    out.extend_from_slice(payload);
    let length = (out.len() - 12) as i32;
    out[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c(&out[21..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    out
}

/// CRC-32C (Castagnoli), bitwise: the tests need no dependency for it.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn garbage_or_cut_compressed_payloads_are_clean_errors_and_counted_unindexed() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(
        dir.path(),
        LogConfig {
            segment_bytes_max: 1 << 30,
            ..config()
        },
    )
    .unwrap();
    let mut good = compressed_batch(3, "lz4", 0, 10);
    log.append(&mut good, 0, 1_000).unwrap();
    for (codec, name) in CODECS {
        let whole = compressed_batch(codec, name, 0, 10);
        let payload = &whole[sluice_log::BATCH_HEADER_BYTES..];
        let cut = &payload[..payload.len() / 2];
        for bad_payload in [cut, &b"definitely not compressed at all"[..]] {
            let mut bad = with_payload(&whole, bad_payload);
            let info = log.append(&mut bad, 0, 1_000).unwrap();
            let read = log.read(info.base_offset, 1).unwrap();
            match decode_records(&read.records) {
                Err(LogError::Decompression { codec: c, .. }) => assert_eq!(c, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }
    let found = log
        .find_records(RecordLookup::MessageId(b"lz4-id-3"), 10)
        .unwrap();
    assert_eq!(found.records.len(), 1, "the good batch is still found");
    assert_eq!(found.batches_unindexed, 8, "the bad batches are counted");
}

#[test]
fn a_compressed_batch_decompressing_past_the_bound_is_refused() {
    // 65 MiB of zeros: past 64 x 1 MiB, in a batch of a few KiB.
    let mut builder = RecordBatchBuilder::new();
    builder.push(Record {
        key: Some(b"bomb".to_vec()),
        value: Some(vec![0u8; 65 << 20]),
        ..Default::default()
    });
    let mut bomb = builder.build_compressed(4).unwrap();
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), config()).unwrap();
    let info = log.append(&mut bomb, 0, 1_000).unwrap();
    let read = log.read(info.base_offset, 1).unwrap();
    assert!(matches!(
        decode_records(&read.records),
        Err(LogError::DecompressedTooLarge { codec: "zstd", .. })
    ));
    let found = log.find_records(RecordLookup::Key(b"bomb"), 10).unwrap();
    assert!(found.records.is_empty());
    assert_eq!(found.batches_unindexed, 1);
}
