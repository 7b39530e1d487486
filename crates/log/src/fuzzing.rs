//! Entry points for the fuzz targets in `fuzz/` and for the corpus replay tests, which run them
//! over `fuzz/corpus/` on the stable toolchain. Each takes arbitrary bytes and must neither
//! panic nor allocate beyond what the bytes justify; errors are the expected outcome.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{decode_records, validate_batches, BatchHeader, LogConfig, PartitionLog};

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

/// Recovery over arbitrary bytes as the active segment: opening must cut whatever is not whole,
/// valid batches, and everything it then serves must be valid.
pub fn recovery(data: &[u8], scratch: &Path) {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let dir = scratch.join(format!(
        "recovery-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    if std::fs::create_dir_all(&dir).is_err()
        || std::fs::write(dir.join("00000000000000000000.log"), data).is_err()
    {
        return;
    }
    if let Ok(log) = PartitionLog::open(&dir, LogConfig::default()) {
        let mut offset = log.log_start_offset();
        while offset < log.high_watermark() {
            let Ok(read) = log.read(offset, 1 << 20) else {
                break;
            };
            if read.records.is_empty() {
                break;
            }
            let headers =
                validate_batches(&read.records).expect("recovery served an invalid batch");
            let last = headers.last().map_or(offset, |h| h.last_offset() + 1);
            assert!(last > offset, "reads make progress");
            offset = last;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
