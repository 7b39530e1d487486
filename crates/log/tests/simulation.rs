//! Seeded randomised simulation of one partition log on the simulated disk (in the spirit of
//! TigerBeetle's VOPR): appends of random batches, group-commit syncs, segment rolls, retention
//! and log-start moves, clean and unclean restarts, power cuts, and injected EIO on a write or
//! an fsync and ENOSPC. After every restart it checks:
//! - every acknowledged (synced) record is present exactly once at its offset with its bytes;
//! - everything a reader could see before (below the high watermark) survived the power cut;
//! - nothing that was not appended, or that fails its CRC, is ever served.
//!
//! `cargo test` runs a fixed set of seeds. `SLUICE_SIM_SEEDS=N` runs seeds 0..N (long mode);
//! `SLUICE_SIM_SEED=S` replays one seed, printing its steps.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice_log::{
    decode_records, Durability, LogConfig, LogError, PartitionLog, Record, RecordBatchBuilder,
    SimDisk, Storage,
};

#[path = "support/seeded.rs"]
mod seeded;

const SEEDS_DEFAULT: u64 = 16;
const STEPS_PER_SEED: usize = 400;

#[derive(Debug, Clone, PartialEq, Eq)]
struct StoredRecord {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

/// What the log must hold, by offset.
struct Model {
    /// Every record appended and not known lost, by offset.
    appended: BTreeMap<i64, StoredRecord>,
    /// Offsets below this were acknowledged by a successful sync.
    acked_end: i64,
}

struct Simulation {
    seed: u64,
    rng: StdRng,
    disk: SimDisk,
    dir: PathBuf,
    config: LogConfig,
    log: Option<PartitionLog>,
    model: Model,
    steps: Vec<String>,
    verbose: bool,
    now_ms: i64,
}

fn record_of(record: &Record) -> StoredRecord {
    StoredRecord {
        key: record.key.clone(),
        value: record.value.clone(),
    }
}

impl Simulation {
    fn new(seed: u64, verbose: bool) -> Simulation {
        let mut rng = StdRng::seed_from_u64(seed);
        let config = LogConfig {
            segment_bytes_max: rng.gen_range(600..6_000),
            index_interval_bytes: 256,
            retention_ms: -1,
            retention_bytes: -1,
            durability: Durability::Batch,
            ..LogConfig::default()
        };
        let disk = SimDisk::new(rng.gen());
        let dir = PathBuf::from("/data/topic-0");
        Simulation {
            seed,
            rng,
            disk,
            dir,
            config,
            log: None,
            model: Model {
                appended: BTreeMap::new(),
                acked_end: 0,
            },
            steps: Vec::new(),
            verbose,
            now_ms: 1_000_000,
        }
    }

    fn note(&mut self, step: String) {
        if self.verbose {
            eprintln!("seed {} step {}: {step}", self.seed, self.steps.len());
        }
        self.steps.push(step);
    }

    fn log(&self) -> &PartitionLog {
        self.log.as_ref().expect("the log is open between steps")
    }

    /// Opens the log; a storage failure during recovery (an injected fault still pending) is
    /// handled as the operator would: reboot (power cut) and open again.
    fn open(&mut self) {
        for _ in 0..3 {
            match PartitionLog::open_with(self.disk.storage(), &self.dir, self.config.clone()) {
                Ok(log) => {
                    self.log = Some(log);
                    return;
                }
                Err(error @ LogError::Io { .. }) => {
                    self.note(format!("open failed: {error}; power cut"));
                    self.disk.power_cut();
                    self.disk.set_space_bytes_max(None);
                }
                Err(error) => panic!("open failed: {error}"),
            }
        }
        panic!("open keeps failing without injected faults");
    }

    fn run(&mut self) {
        self.disk
            .create_dir_all(Path::new("/data"))
            .expect("create /data");
        self.disk.sync_dir(Path::new("/")).expect("sync /");
        self.open();
        for _ in 0..STEPS_PER_SEED {
            self.step();
            self.check_running_invariants();
        }
        self.power_cut_and_recover();
    }

    fn step(&mut self) {
        self.now_ms += self.rng.gen_range(0..50);
        match self.rng.gen_range(0..100) {
            0..=39 => self.append(),
            40..=59 => self.sync(),
            60..=67 => self.read_somewhere(),
            68..=70 => self.retention(),
            71..=72 => self.advance_log_start(),
            73..=76 => {
                self.note("inject: next fsync fails".into());
                self.disk.fail_next_sync();
            }
            77..=79 => {
                self.note("inject: next write fails".into());
                self.disk.fail_next_write();
            }
            80..=81 => {
                let used = self.log().size_bytes();
                let budget = used + self.rng.gen_range(0..2_000);
                self.note(format!("inject: disk full past {budget} bytes"));
                self.disk.set_space_bytes_max(Some(budget));
            }
            82..=89 => self.power_cut_and_recover(),
            90..=94 => self.kill_and_restart(),
            _ => self.clean_restart(),
        }
    }

    fn append(&mut self) {
        let count = self.rng.gen_range(1..6);
        let mut builder = RecordBatchBuilder::new();
        let mut records = Vec::new();
        for _ in 0..count {
            let value_bytes = self.rng.gen_range(0..400);
            let value: Vec<u8> = (0..value_bytes).map(|_| self.rng.gen()).collect();
            let key = self
                .rng
                .gen_bool(0.5)
                .then(|| format!("k{}", self.rng.gen_range(0..100)).into_bytes());
            let record = Record {
                timestamp: self.now_ms,
                key: key.clone(),
                value: Some(value.clone()),
                ..Default::default()
            };
            records.push(StoredRecord {
                key,
                value: Some(value),
            });
            builder.push(record);
        }
        let mut bytes = builder.build();
        let now_ms = self.now_ms;
        match self.log().append(&mut bytes, 0, now_ms) {
            Ok(info) => {
                self.note(format!(
                    "append {count} records at {}..={}",
                    info.base_offset, info.last_offset
                ));
                assert_eq!(info.record_count, count as i64);
                for (index, record) in records.into_iter().enumerate() {
                    let offset = info.base_offset + index as i64;
                    assert!(
                        !self.model.appended.contains_key(&offset),
                        "offset {offset} assigned twice"
                    );
                    self.model.appended.insert(offset, record);
                }
            }
            Err(error) => self.on_failure("append", error),
        }
    }

    fn sync(&mut self) {
        let offset_end = self.log().log_end_offset();
        match self.log().sync(offset_end) {
            Ok(()) => {
                self.note(format!("sync to {offset_end}: acknowledged"));
                self.model.acked_end = self.model.acked_end.max(offset_end);
            }
            Err(error) => self.on_failure("sync", error),
        }
    }

    fn retention(&mut self) {
        let retention_bytes = self.rng.gen_range(1_000..20_000);
        let mut config = self.config.clone();
        config.retention_bytes = retention_bytes;
        self.log().set_config(config);
        let now_ms = self.now_ms;
        let result = self.log().enforce_retention(now_ms);
        self.log().set_config(self.config.clone());
        match result {
            Ok(deleted) => self.note(format!(
                "retention to {retention_bytes} bytes deleted {deleted} segments, log start {}",
                self.log().log_start_offset()
            )),
            Err(error) => self.on_failure("retention", error),
        }
    }

    fn advance_log_start(&mut self) {
        let (start, high_watermark) = (self.log().log_start_offset(), self.log().high_watermark());
        if high_watermark <= start {
            return;
        }
        let offset = self.rng.gen_range(start..=high_watermark);
        match self.log().advance_log_start(offset) {
            Ok(now) => self.note(format!("advance log start to {offset}: {now}")),
            Err(error) => self.on_failure("advance log start", error),
        }
    }

    /// A storage error takes the log offline; the test then stands for the operator: the
    /// machine is rebooted (the page cache, which may still show bytes the disk lost, is gone)
    /// and the broker restarts.
    fn on_failure(&mut self, operation: &str, error: LogError) {
        self.note(format!("{operation} failed: {error}"));
        assert!(
            matches!(error, LogError::Io { .. } | LogError::Offline { .. }),
            "{operation}: unexpected error {error}"
        );
        assert!(
            self.log().is_offline(),
            "a failed {operation} must take the log offline"
        );
        let durable = self.log().durable_offset();
        let high_watermark = self.log().high_watermark();
        // Offline: refuses changes, never moves the durable offset.
        assert!(matches!(
            self.log().append(
                &mut RecordBatchBuilder::new().push(Record::default()).build(),
                0,
                0
            ),
            Err(LogError::Offline { .. })
        ));
        let log_end = self.log().log_end_offset();
        if log_end > durable {
            assert!(matches!(
                self.log().sync(log_end),
                Err(LogError::Offline { .. })
            ));
        }
        assert_eq!(self.log().durable_offset(), durable);
        assert_eq!(self.log().high_watermark(), high_watermark);
        self.power_cut_and_recover();
    }

    fn power_cut_and_recover(&mut self) {
        let high_watermark = self.log().high_watermark();
        let log_start = self.log().log_start_offset();
        self.note(format!(
            "power cut (high watermark {high_watermark}, acked {})",
            self.model.acked_end
        ));
        self.log = None;
        self.disk.power_cut();
        self.disk.set_space_bytes_max(None);
        self.open();
        self.check_recovered(high_watermark, log_start);
    }

    fn kill_and_restart(&mut self) {
        let high_watermark = self.log().high_watermark();
        let log_start = self.log().log_start_offset();
        self.note("kill -9 and restart (page cache kept)".into());
        self.log = None;
        self.disk.set_space_bytes_max(None);
        self.open();
        self.check_recovered(high_watermark, log_start);
    }

    fn clean_restart(&mut self) {
        let high_watermark = self.log().high_watermark();
        let log_start = self.log().log_start_offset();
        match self.log().flush() {
            Ok(()) => {
                self.note("clean shutdown and restart".into());
                self.model.acked_end = self.model.acked_end.max(self.log().log_end_offset());
                self.log = None;
                self.open();
                self.check_recovered(high_watermark, log_start);
            }
            Err(error) => self.on_failure("flush", error),
        }
    }

    fn check_running_invariants(&self) {
        let log = self.log();
        assert!(
            log.high_watermark() <= log.durable_offset(),
            "batch durability: HW passed the durable offset"
        );
        assert!(log.durable_offset() <= log.log_end_offset());
        assert!(log.log_start_offset() <= log.high_watermark());
        assert!(
            self.model.acked_end <= log.high_watermark(),
            "an acknowledged offset is not visible"
        );
    }

    /// After a restart: what was visible survived, acknowledged records are there exactly once
    /// with their bytes, nothing else is served.
    fn check_recovered(&mut self, high_watermark_before: i64, log_start_before: i64) {
        let log = self.log.take().expect("the log is open between steps");
        let log_end = log.log_end_offset();
        let log_start = log.log_start_offset();
        assert!(
            log_end >= high_watermark_before,
            "records below the high watermark ({high_watermark_before}) were lost: log end {log_end}"
        );
        assert!(
            log_end >= self.model.acked_end,
            "acknowledged records were lost: acked to {}, log end {log_end}",
            self.model.acked_end
        );
        assert_eq!(
            log_start, log_start_before,
            "log start moved across the restart"
        );
        assert_eq!(
            log.high_watermark(),
            log_end,
            "after recovery everything on disk is durable"
        );

        let mut offset = log_start;
        let mut expected_next = log_start;
        while offset < log_end {
            let read = match log.read(offset, self.rng.gen_range(1..20_000)) {
                Ok(read) => read,
                Err(error) => panic!("read at {offset} failed: {error}"),
            };
            assert!(
                !read.records.is_empty(),
                "read at {offset} below the log end {log_end} returned nothing"
            );
            let records = decode_records(&read.records).expect("served batches decode");
            for record in records
                .iter()
                .filter(|r| r.offset >= log_start && r.offset >= offset)
            {
                assert_eq!(
                    record.offset, expected_next,
                    "offsets are not served exactly once in order"
                );
                expected_next += 1;
                match self.model.appended.get(&record.offset) {
                    Some(stored) => assert_eq!(
                        stored,
                        &record_of(record),
                        "record at {} differs from what was appended",
                        record.offset
                    ),
                    None => panic!("record at {} was never appended", record.offset),
                }
            }
            offset = records.last().map_or(offset, |r| r.offset + 1);
        }
        assert_eq!(expected_next, log_end.max(log_start));
        // Records past the recovered end were lost (never acknowledged): their offsets are
        // assigned again.
        self.model.appended.retain(|offset, _| *offset < log_end);
        // Everything on disk after recovery is durable and visible.
        self.model.acked_end = self.model.acked_end.max(log_end);
        self.log = Some(log);
        self.note(format!("recovered: log {log_start}..{log_end}"));
    }

    fn read_somewhere(&mut self) {
        let log = self.log();
        let (start, high_watermark) = (log.log_start_offset(), log.high_watermark());
        if high_watermark <= start {
            return;
        }
        let offset = self.rng.gen_range(start..high_watermark);
        let bytes_max = self.rng.gen_range(1..10_000);
        let read = self
            .log()
            .read(offset, bytes_max)
            .unwrap_or_else(|e| panic!("read at {offset} failed: {e}"));
        assert!(!read.records.is_empty());
        let records = decode_records(&read.records).expect("served batches decode");
        for record in &records {
            assert!(
                record.offset < high_watermark,
                "read past the high watermark"
            );
            if record.offset >= start {
                assert_eq!(
                    self.model.appended.get(&record.offset),
                    Some(&record_of(record)),
                    "read at {offset}: record {} differs",
                    record.offset
                );
            }
        }
        self.note(format!("read at {offset}: {} records", records.len()));
    }
}

impl seeded::SeededRun for Simulation {
    fn run(&mut self) {
        Simulation::run(self);
    }
    fn steps(&self) -> &[String] {
        &self.steps
    }
}

#[test]
fn acknowledged_records_survive_power_cuts_and_storage_failures() {
    seeded::run_seeds(
        "simulation",
        "cargo test -p sluice-log --test simulation",
        SEEDS_DEFAULT,
        15,
        Simulation::new,
    );
}
