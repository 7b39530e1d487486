//! Entry points for the fuzz targets in `fuzz/` and for the corpus replay tests, which run them
//! over `fuzz/corpus/` on the stable toolchain. Each takes arbitrary bytes and must neither
//! panic nor allocate beyond what the bytes justify; errors are the expected outcome.

use std::path::Path;

use crate::{decode_records, validate_batches, BatchHeader, LogConfig, PartitionLog, SimDisk};

/// Record-batch parsing as a produce request meets it: header, shape, CRC, then the records.
pub fn record_batches(data: &[u8]) {
    let _ = BatchHeader::parse(data);
    if let Ok(headers) = validate_batches(data) {
        let mut position = 0;
        for header in headers {
            let end = position + header.total_bytes();
            // validate_batches vouched for the lengths.
            assert!(end <= data.len(), "validated batch runs past its buffer");
            let _ = decode_records(&data[position..end]);
            position = end;
        }
    }
}

/// Recovery over arbitrary bytes as the active segment (on the simulated disk, so a run costs
/// no file system calls): opening must cut whatever is not whole, valid batches, and everything
/// it then serves must be valid.
pub fn recovery(data: &[u8]) {
    let disk = SimDisk::new(0);
    let storage = disk.storage();
    let dir = Path::new("/fuzz/partition-0");
    let written = storage.create_dir_all(dir).and_then(|_| {
        let file = storage.create(&dir.join("00000000000000000000.log"))?;
        file.write_all_at(data, 0)?;
        file.sync_data()
    });
    if written.is_err() {
        return;
    }
    let Ok(log) = PartitionLog::open_with(storage, dir, LogConfig::default()) else {
        return;
    };
    let mut offset = log.log_start_offset();
    while offset < log.high_watermark() {
        let Ok(read) = log.read(offset, 1 << 20) else {
            break;
        };
        if read.records.is_empty() {
            break;
        }
        let headers = validate_batches(&read.records).expect("recovery served an invalid batch");
        let next = headers.last().map_or(offset, |h| h.last_offset() + 1);
        assert!(next > offset, "reads make progress");
        offset = next;
    }
}
