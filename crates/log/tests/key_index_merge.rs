//! A rolled segment's key index is merged off the append path: appends go on while a merge is
//! slow, lookups answer from the frozen runs meanwhile, and a truncation or deletion during the
//! merge discards its result. The slow step is injected: a storage whose fsync of a key index
//! table being written blocks until the test opens a gate.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use sluice_log::{
    Durability, LogConfig, PartitionLog, RealDisk, Record, RecordBatchBuilder, RecordLookup,
    Storage, StorageFile, MESSAGE_ID_HEADER,
};

/// Held shut, a key index table's fsync waits; `merges_waiting` counts the waits begun.
#[derive(Default)]
struct Gate {
    state: Mutex<(bool, usize)>,
    changed: Condvar,
}

impl Gate {
    fn wait_open(&self) {
        let mut state = self.state.lock().unwrap();
        state.1 += 1;
        self.changed.notify_all();
        while !state.0 {
            state = self.changed.wait(state).unwrap();
        }
    }
    fn open(&self) {
        self.state.lock().unwrap().0 = true;
        self.changed.notify_all();
    }
    /// Waits until `count` merges are blocked at the gate.
    fn wait_for_merges(&self, count: usize) {
        let state = self.state.lock().unwrap();
        let (_state, timeout) = self
            .changed
            .wait_timeout_while(state, Duration::from_secs(10), |s| s.1 < count)
            .unwrap();
        assert!(!timeout.timed_out(), "no merge reached the gate");
    }
}

struct SlowMergeDisk {
    gate: Arc<Gate>,
}

struct GatedFile {
    inner: Box<dyn StorageFile>,
    gate: Option<Arc<Gate>>,
}

impl StorageFile for GatedFile {
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize> {
        self.inner.read_at(buf, position)
    }
    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, position)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        if let Some(gate) = &self.gate {
            gate.wait_open();
        }
        self.inner.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.inner.sync_all()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn modified_ms(&self) -> Option<i64> {
        self.inner.modified_ms()
    }
}

impl Storage for SlowMergeDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<usize> {
        RealDisk.create_dir_all(dir)
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        RealDisk.open(path)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let is_table = path.to_string_lossy().ends_with(".keyindex.tmp");
        Ok(Box::new(GatedFile {
            inner: RealDisk.create(path)?,
            gate: is_table.then(|| Arc::clone(&self.gate)),
        }))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        RealDisk.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealDisk.rename(from, to)
    }
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        RealDisk.read_dir(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        RealDisk.sync_dir(dir)
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        RealDisk.remove_dir_all(dir)
    }
}

fn config() -> LogConfig {
    LogConfig {
        durability: Durability::Never,
        index_interval_bytes: 256,
        segment_bytes_max: 4096,
        ..LogConfig::default()
    }
}

fn append_records(log: &PartitionLog, from: u64, to: u64) {
    for n in from..to {
        let mut batch = RecordBatchBuilder::new()
            .push(Record {
                key: Some(format!("user-{}", n % 7).into_bytes()),
                value: Some(format!("v-{n}").into_bytes()),
                headers: vec![(
                    MESSAGE_ID_HEADER.to_string(),
                    Some(format!("id-{n}").into_bytes()),
                )],
                ..Default::default()
            })
            .build();
        log.append(&mut batch, 0, 1_000).unwrap();
    }
}

fn offset_of_id(log: &PartitionLog, id: &str) -> Vec<i64> {
    log.find_records(RecordLookup::MessageId(id.as_bytes()), 10)
        .unwrap()
        .records
        .iter()
        .map(|r| r.offset)
        .collect()
}

fn files_with_extension(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    files
}

fn open_slow(dir: &Path) -> (Arc<PartitionLog>, Arc<Gate>) {
    let gate = Arc::new(Gate::default());
    let storage = Arc::new(SlowMergeDisk {
        gate: Arc::clone(&gate),
    });
    let log = PartitionLog::open_with(storage, dir, config()).unwrap();
    (Arc::new(log), gate)
}

#[test]
fn appends_complete_while_a_rolled_segments_key_index_merge_is_stuck() {
    let dir = tempfile::tempdir().unwrap();
    let (log, gate) = open_slow(dir.path());
    // Appends on another thread: with the merge under the append lock (the old roll) they
    // would wait for the gate, which only opens after they are done.
    let (done, appended) = mpsc::channel();
    let appender = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            append_records(&log, 0, 300);
            done.send(log.segment_count()).unwrap();
        })
    };
    let segments = appended
        .recv_timeout(Duration::from_secs(20))
        .expect("appends blocked behind a key index merge");
    assert!(segments > 3, "rolled: {segments}");
    gate.wait_for_merges(1);
    assert!(
        files_with_extension(dir.path(), "keyindex").is_empty(),
        "no table is in place while the first merge waits"
    );
    // Lookups answer from the frozen runs meanwhile.
    assert_eq!(offset_of_id(&log, "id-0"), [0]);
    assert_eq!(offset_of_id(&log, "id-150"), [150]);
    let by_key = log
        .find_records(RecordLookup::Key(b"user-3"), usize::MAX)
        .unwrap();
    assert_eq!(
        by_key.records.len(),
        (0..300).filter(|n| n % 7 == 3).count()
    );

    gate.open();
    appender.join().unwrap();
    log.flush().unwrap();
    assert_eq!(
        files_with_extension(dir.path(), "keyindex").len(),
        log.segment_count() - 1
    );
    assert!(files_with_extension(dir.path(), "keyruns").len() <= 1);
    assert_eq!(offset_of_id(&log, "id-150"), [150]);
}

#[test]
fn truncation_during_a_merge_discards_the_stale_table() {
    let dir = tempfile::tempdir().unwrap();
    let (log, gate) = open_slow(dir.path());
    append_records(&log, 0, 60);
    assert!(log.segment_count() >= 2);
    gate.wait_for_merges(1);
    // Cut into the first (rolled, merging) segment: it becomes the active one again.
    log.truncate_to(10).unwrap();
    assert_eq!(log.segment_count(), 1);
    gate.open();
    log.flush().unwrap();
    assert!(
        files_with_extension(dir.path(), "keyindex").is_empty(),
        "a table of the bytes before the cut was installed"
    );
    assert_eq!(offset_of_id(&log, "id-5"), [5]);
    assert!(offset_of_id(&log, "id-20").is_empty());
    append_records(&log, 10, 30);
    assert_eq!(offset_of_id(&log, "id-20"), [20]);
    drop(Arc::into_inner(log).unwrap());
    let log = PartitionLog::open(dir.path(), config()).unwrap();
    assert_eq!(offset_of_id(&log, "id-25"), [25]);
    assert_eq!(offset_of_id(&log, "id-5"), [5]);
}

#[test]
fn retention_during_a_merge_leaves_no_table_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (log, gate) = open_slow(dir.path());
    append_records(&log, 0, 60);
    gate.wait_for_merges(1);
    log.advance_log_start(log.high_watermark()).unwrap();
    let deleted = log.enforce_retention(2_000).unwrap();
    assert!(deleted >= 1);
    gate.open();
    log.flush().unwrap();
    for table in files_with_extension(dir.path(), "keyindex") {
        assert!(
            table.with_extension("log").exists(),
            "{table:?} outlived its segment"
        );
    }
    assert!(files_with_extension(dir.path(), "tmp").is_empty());
}
