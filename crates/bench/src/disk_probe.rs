//! Measures what the disk under the broker's data directory can do, so broker figures can be
//! judged against it: the latency of one small append plus fdatasync (the floor for a durable
//! acknowledgement) and sequential write throughput (the ceiling for the log).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};

use crate::report::{latency_histogram_us, DiskProbeReport, LatencySummary};

#[derive(Debug, Clone)]
pub struct DiskProbeConfig {
    pub dir: PathBuf,
    pub append_count: u64,
    pub append_bytes: usize,
    /// Total bytes for the sequential test; 0 skips it.
    pub sequential_bytes: u64,
    pub sequential_write_bytes: usize,
}

/// Removes the probe file even when a write fails half way.
struct ProbeFile {
    path: PathBuf,
}

impl ProbeFile {
    fn create(dir: &Path, label: &str) -> Result<(Self, File)> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let path = dir.join(format!(
            ".sluice-bench-{label}-{}-{nanos}",
            std::process::id()
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("creating probe file {}", path.display()))?;
        Ok((Self { path }, file))
    }
}

impl Drop for ProbeFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

pub fn run(config: &DiskProbeConfig) -> Result<DiskProbeReport> {
    ensure!(config.append_count > 0, "--count must be at least 1");
    ensure!(config.append_bytes > 0, "--bytes must be at least 1");
    ensure!(
        config.sequential_write_bytes > 0,
        "--seq-write-kib must be at least 1"
    );

    let (append_fdatasync, append_ops_per_sec) = probe_append_fdatasync(config)?;
    let sequential_mb_per_sec = if config.sequential_bytes > 0 {
        Some(probe_sequential_write(config)?)
    } else {
        None
    };
    Ok(DiskProbeReport {
        dir: config.dir.display().to_string(),
        append_count: config.append_count,
        append_bytes: config.append_bytes as u64,
        append_fdatasync,
        append_ops_per_sec,
        sequential_bytes: config.sequential_bytes,
        sequential_write_bytes: config.sequential_write_bytes as u64,
        sequential_mb_per_sec,
    })
}

/// Appends `append_bytes` then fdatasyncs, `append_count` times. The file grows on every append,
/// as a log segment does, so each fdatasync also commits the new file size.
fn probe_append_fdatasync(config: &DiskProbeConfig) -> Result<(LatencySummary, f64)> {
    let (_probe, mut file) = ProbeFile::create(&config.dir, "append")?;
    let block = vec![0xA5u8; config.append_bytes];
    let mut histogram = latency_histogram_us();
    let started = Instant::now();
    for _ in 0..config.append_count {
        let op_started = Instant::now();
        file.write_all(&block).context("append to probe file")?;
        // `sync_data` is fdatasync(2) on Linux.
        file.sync_data().context("fdatasync probe file")?;
        histogram.saturating_record(op_started.elapsed().as_micros() as u64);
    }
    let ops_per_sec = config.append_count as f64 / started.elapsed().as_secs_f64();
    Ok((LatencySummary::from_histogram(&histogram), ops_per_sec))
}

/// Writes `sequential_bytes` in `sequential_write_bytes` chunks and one final fdatasync, so the
/// figure is what reaches the device rather than the page cache.
fn probe_sequential_write(config: &DiskProbeConfig) -> Result<f64> {
    let (_probe, mut file) = ProbeFile::create(&config.dir, "sequential")?;
    let chunk: Vec<u8> = (0..config.sequential_write_bytes)
        .map(|i| (i % 251) as u8)
        .collect();
    let started = Instant::now();
    let mut written_bytes = 0u64;
    while written_bytes < config.sequential_bytes {
        let remaining_bytes = config.sequential_bytes - written_bytes;
        let len = chunk.len().min(remaining_bytes as usize);
        file.write_all(&chunk[..len])
            .context("sequential write to probe file")?;
        written_bytes += len as u64;
    }
    file.sync_data().context("fdatasync probe file")?;
    let secs = started.elapsed().as_secs_f64();
    Ok(written_bytes as f64 / secs / 1e6)
}
