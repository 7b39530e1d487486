use std::path::Path;
use std::sync::{Arc, Weak};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use sluice_log::{
    batch::BATCH_HEADER_BYTES, stamp_log_append_time, transaction_marker,
    transaction_marker_result, validate_batches, BatchHeader, Durability, LogConfig, PartitionLog,
    Storage, TransactionResult,
};
use tokio::sync::Notify;

use crate::group_commit::{DurableWait, GroupCommit};
use crate::partition_appender::PartitionAppender;
use crate::producer_state::{AbortedTransaction, ActiveProducer, ProducerStateTable};
use crate::timestamps::{TimestampPolicy, TimestampRules};
use crate::traffic::{TrafficCounters, TrafficTotals};
use crate::{now_ms, BrokerError, StorageFailure};

/// How much durability a producer waits for before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// Fire and forget (acks=0): no response is awaited.
    None,
    /// acks=1: the leader stored it (with `fsync=batch`, synced to disk).
    Leader,
    /// acks=all: every in-sync replica stored it. On one node this equals `Leader`.
    All,
}

/// The answer to a produce on one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceOutcome {
    pub base_offset: i64,
    /// The broker's timestamp for LogAppendTime topics, -1 otherwise (Kafka's convention).
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
}

/// The answer to a fetch on one partition.
#[derive(Debug, Clone, Default)]
pub struct FetchedPartition {
    pub records: Bytes,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
    /// Below this no transaction is open (the high watermark when none is).
    pub last_stable_offset: i64,
    /// For `read_committed` fetches: the aborted transactions overlapping what was read.
    pub aborted_transactions: Vec<AbortedTransaction>,
}

/// Which records a consumer may read (Kafka's `isolation.level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsolationLevel {
    /// Everything below the high watermark, open and aborted transactions included.
    ReadUncommitted,
    /// Only below the last stable offset, with the aborted transactions to drop.
    ReadCommitted,
}

/// Records in a run of whole record batches, from each batch header's record count. The
/// batches come from our own log (CRC-checked on read), so a short tail simply ends the count.
fn record_count_of_batches(mut records: &[u8]) -> u64 {
    let mut count = 0u64;
    while records.len() >= BATCH_HEADER_BYTES {
        let Ok(header) = BatchHeader::parse(records) else {
            break;
        };
        count += header.record_count.max(0) as u64;
        match records.get(header.total_bytes()..) {
            Some(rest) => records = rest,
            None => break,
        }
    }
    count
}

/// A fetch of `log` from `offset`, at most about `bytes_max`, at `isolation`: `ReadCommitted`
/// stops at `last_stable_offset` and names the aborted transactions overlapping the batches
/// read (`aborted_between(from, to)`, asked only then, so the producer state is not locked
/// across the read). A partition of one node and a cluster replica alike.
pub(crate) fn read_isolated(
    log: &PartitionLog,
    last_stable_offset: i64,
    offset: i64,
    bytes_max: usize,
    isolation: IsolationLevel,
    aborted_between: impl FnOnce(i64, i64) -> Vec<AbortedTransaction>,
) -> Result<FetchedPartition, BrokerError> {
    let read = match isolation {
        IsolationLevel::ReadUncommitted => log.read(offset, bytes_max)?,
        IsolationLevel::ReadCommitted => log.read_to(offset, bytes_max, last_stable_offset)?,
    };
    let aborted_transactions =
        if isolation == IsolationLevel::ReadCommitted && !read.records.is_empty() {
            aborted_between(offset, last_stable_offset)
        } else {
            Vec::new()
        };
    Ok(FetchedPartition {
        records: read.records,
        high_watermark: read.high_watermark,
        log_start_offset: read.log_start_offset,
        log_end_offset: read.log_end_offset,
        last_stable_offset: last_stable_offset.min(read.high_watermark),
        aborted_transactions,
    })
}

/// What the transaction marker `header` (a stored transactional control batch) records.
pub(crate) fn stored_marker_result(
    log: &PartitionLog,
    header: &BatchHeader,
) -> Result<Option<TransactionResult>, BrokerError> {
    let read = log.read_uncommitted(header.base_offset, header.total_bytes())?;
    let Some(batch) = read.records.get(..header.total_bytes()) else {
        return Ok(None);
    };
    Ok(transaction_marker_result(header, batch)?)
}

/// DeleteRecords' offset for "everything below the high watermark".
const DELETE_TO_HIGH_WATERMARK: i64 = -1;

/// The offset a DeleteRecords request deletes below: the one given, or for -1 the high
/// watermark of `log`.
pub(crate) fn delete_records_target(log: &PartitionLog, offset: i64) -> i64 {
    if offset == DELETE_TO_HIGH_WATERMARK {
        log.high_watermark()
    } else {
        offset
    }
}

/// One partition of a topic: its log, the idempotent-producer state guarding appends, and the
/// notification that wakes long-polling fetchers when new data becomes readable. Produces are
/// written by the partition's appender thread (see `partition_appender`), so no async worker
/// blocks on a write or a segment roll.
pub struct Partition {
    topic: String,
    index: i32,
    log: Arc<PartitionLog>,
    /// Checked and recorded by the appender, which alone appends sequenced batches.
    producers: Arc<Mutex<ProducerStateTable>>,
    appender: Arc<PartitionAppender>,
    group_commit: Arc<GroupCommit>,
    timestamps: TimestampPolicy,
    traffic: TopicTraffic,
}

/// The per-topic traffic counters, looked up once when the partition opens so that a produce
/// or fetch adds to them without formatting labels or touching the registry. Every partition
/// of a topic holds handles to the same four counters.
struct TopicTraffic {
    /// This partition's own totals, for the HTTP API's rates.
    totals: TrafficCounters,
    records_produced: metrics::Counter,
    bytes_produced: metrics::Counter,
    records_fetched: metrics::Counter,
    bytes_fetched: metrics::Counter,
}

impl TopicTraffic {
    fn register(topic: &str) -> TopicTraffic {
        let label = [("topic", topic.to_string())];
        TopicTraffic {
            totals: TrafficCounters::default(),
            records_produced: metrics::counter!("sluice_topic_records_produced_total", &label),
            bytes_produced: metrics::counter!("sluice_topic_bytes_produced_total", &label),
            records_fetched: metrics::counter!("sluice_topic_records_fetched_total", &label),
            bytes_fetched: metrics::counter!("sluice_topic_bytes_fetched_total", &label),
        }
    }

    fn record_in(&self, records: u64, bytes: u64) {
        self.totals.record_in(records, bytes);
        self.records_produced.increment(records);
        self.bytes_produced.increment(bytes);
    }

    fn record_out(&self, records: u64, bytes: u64) {
        self.totals.record_out(records, bytes);
        self.records_fetched.increment(records);
        self.bytes_fetched.increment(bytes);
    }
}

impl Partition {
    pub(crate) fn open(
        storage: Arc<dyn Storage>,
        topic: &str,
        index: i32,
        dir: &Path,
        config: LogConfig,
        timestamps: TimestampRules,
        data_ready: Arc<Notify>,
    ) -> Result<Arc<Partition>, BrokerError> {
        let log = PartitionLog::open_with(storage, dir, config)?;
        Partition::with_log(topic, index, log, timestamps, data_ready)
    }

    fn with_log(
        topic: &str,
        index: i32,
        log: PartitionLog,
        timestamps: TimestampRules,
        data_ready: Arc<Notify>,
    ) -> Result<Arc<Partition>, BrokerError> {
        let log = Arc::new(log);
        let mut producers = ProducerStateTable::default();
        let now = now_ms();
        for header in log.batch_headers_from(log.log_start_offset())? {
            // The batch's timestamp stands in for its append time (Kafka does the same).
            let append_ms = header.max_timestamp.min(now);
            if header.is_control() && header.is_transactional() {
                if let Some(result) = stored_marker_result(&log, &header)? {
                    producers.record_marker(&header, result, append_ms);
                }
                continue;
            }
            producers.record(&header, append_ms);
        }
        let group_commit = GroupCommit::new(Arc::clone(&log), data_ready);
        let producers = Arc::new(Mutex::new(producers));
        let appender = PartitionAppender::new(
            Arc::clone(&log),
            Arc::clone(&producers),
            Arc::clone(&group_commit),
        );
        let partition = Arc::new(Partition {
            topic: topic.to_string(),
            index,
            log,
            producers,
            appender,
            group_commit,
            timestamps: TimestampPolicy::new(timestamps),
            traffic: TopicTraffic::register(topic),
        });
        partition.start_interval_flusher();
        Ok(partition)
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
    pub fn index(&self) -> i32 {
        self.index
    }
    pub fn log(&self) -> &Arc<PartitionLog> {
        &self.log
    }
    pub fn high_watermark(&self) -> i64 {
        self.log.high_watermark()
    }
    pub fn log_start_offset(&self) -> i64 {
        self.log.log_start_offset()
    }
    pub fn log_end_offset(&self) -> i64 {
        self.log.log_end_offset()
    }

    /// The offset below which no transaction is open, capped by the high watermark.
    pub fn last_stable_offset(&self) -> i64 {
        self.producers
            .lock()
            .last_stable_offset(self.log.high_watermark())
    }

    /// The idempotent producers this partition remembers (DescribeProducers).
    pub fn active_producers(&self) -> Vec<ActiveProducer> {
        self.producers.lock().active()
    }

    pub(crate) fn set_config(&self, config: LogConfig, timestamps: TimestampRules) {
        self.log.set_config(config);
        self.timestamps.set(timestamps);
    }

    /// Appends the producer's record batches and, as `acks` asks, waits until they are durable.
    pub async fn produce(
        &self,
        mut records: BytesMut,
        acks: Acks,
    ) -> Result<ProduceOutcome, BrokerError> {
        let headers = validate_batches(&records)?;
        if headers.is_empty() {
            return Err(BrokerError::InvalidRecord(
                "produce request without record batches".into(),
            ));
        }
        // Markers are the coordinator's to write: a client's would end others' transactions.
        if headers.iter().any(BatchHeader::is_control) {
            return Err(BrokerError::InvalidRecord(
                "control batches are not accepted from producers".into(),
            ));
        }
        if self.log.config().compact {
            if let Some(offset_delta) = sluice_log::first_keyless_record(&records)? {
                // Kafka's answer (INVALID_RECORD) and wording.
                return Err(BrokerError::InvalidRecord(format!(
                    "Compacted topic cannot accept message without key in topic partition \
                     {}-{} (record {offset_delta} of the request).",
                    self.topic, self.index
                )));
            }
        }
        let now = now_ms();
        let rules = self.timestamps.rules();
        rules.check(&headers, now)?;
        let log_append_time = rules.log_append_time;
        if log_append_time {
            stamp_log_append_time(&mut records, now)?;
        }
        let record_count: u64 = headers.iter().map(|h| h.record_count.max(0) as u64).sum();
        let bytes = records.len() as u64;
        // Queued now, in the caller's first poll, so appends keep request order; the blocking
        // write (and a roll's fsyncs) happens on the partition's appender thread.
        let appended = self.appender.submit(records, headers, now);
        let ((offset_first, _offset_end), durable) = match appended.await {
            Ok(result) => result?,
            Err(_) => {
                return Err(BrokerError::Storage(StorageFailure::unwritten(
                    "the partition appender stopped",
                )))
            }
        };
        self.traffic.record_in(record_count, bytes);
        // acks=0 does not wait; the appender has the data synced all the same.
        if acks != Acks::None {
            match durable.await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(BrokerError::Storage(StorageFailure::unwritten(
                        "the group commit stopped",
                    )))
                }
            }
        }
        Ok(ProduceOutcome {
            base_offset: offset_first,
            log_append_time_ms: if log_append_time { now } else { -1 },
            log_start_offset: self.log.log_start_offset(),
        })
    }

    /// Writes the marker ending `producer_id`'s transaction on this partition and waits until
    /// it is durable (the coordinator completes a transaction only then).
    pub async fn write_transaction_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        result: TransactionResult,
        coordinator_epoch: i32,
    ) -> Result<i64, BrokerError> {
        let now = now_ms();
        let marker =
            transaction_marker(result, producer_id, producer_epoch, coordinator_epoch, now);
        let records = BytesMut::from(&marker[..]);
        let headers = validate_batches(&records)?;
        let appended = self.appender.submit(records, headers, now);
        let stopped =
            || BrokerError::Storage(StorageFailure::unwritten("the partition appender stopped"));
        let ((offset, _), durable) = appended.await.map_err(|_| stopped())??;
        durable.await.map_err(|_| stopped())??;
        Ok(offset)
    }

    /// Appends batches the broker built itself (AMQP publishes crossing into a topic: no
    /// producer id, so no sequence checks). Synchronous, so publishes keep their order; the
    /// receiver resolves once the batches are durable and readable.
    pub fn append_unsequenced(&self, mut records: BytesMut) -> Result<DurableWait, BrokerError> {
        let now = now_ms();
        if self.timestamps.rules().log_append_time {
            stamp_log_append_time(&mut records, now)?;
        }
        let info = self.log.append(&mut records, 0, now)?;
        self.traffic
            .record_in(info.record_count.max(0) as u64, records.len() as u64);
        Ok(self.group_commit.durable(info.last_offset + 1))
    }

    /// Deletes every record below `offset` (Kafka's DeleteRecords; -1 means the high
    /// watermark) by advancing the log start durably. Returns the new log start (Kafka's low
    /// watermark). Offsets past the high watermark, or negative, are out of range.
    pub async fn delete_records(&self, offset: i64) -> Result<i64, BrokerError> {
        let offset = delete_records_target(&self.log, offset);
        // The checkpoint is fsynced: keep it off the async workers.
        let log = Arc::clone(&self.log);
        match tokio::task::spawn_blocking(move || log.advance_log_start(offset)).await {
            Ok(result) => result.map_err(BrokerError::from),
            Err(error) => Err(BrokerError::storage_io(format!(
                "delete records task failed: {error}"
            ))),
        }
    }

    /// Forgets idempotent producers that have not appended for `expiration_ms`
    /// (`producer.id.expiration.ms`); returns how many.
    pub fn expire_producers(&self, now_ms: i64, expiration_ms: i64) -> usize {
        let mut producers = self.producers.lock();
        producers.forget_aborted_below(self.log.log_start_offset());
        producers.expire(now_ms, expiration_ms)
    }

    /// Records and bytes produced to and fetched from this partition since it was opened.
    pub fn traffic(&self) -> TrafficTotals {
        self.traffic.totals.totals()
    }

    /// Idempotent producers this partition remembers.
    pub fn producer_count(&self) -> usize {
        self.producers.lock().producer_count()
    }

    /// Whole batches from `offset` on, at most about `bytes_max` (at least one batch).
    pub fn fetch(&self, offset: i64, bytes_max: usize) -> Result<FetchedPartition, BrokerError> {
        self.fetch_isolated(offset, bytes_max, IsolationLevel::ReadUncommitted)
    }

    /// [`Partition::fetch`] at an isolation level: `ReadCommitted` stops at the last stable
    /// offset and names the aborted transactions overlapping the batches read.
    pub fn fetch_isolated(
        &self,
        offset: i64,
        bytes_max: usize,
        isolation: IsolationLevel,
    ) -> Result<FetchedPartition, BrokerError> {
        read_isolated(
            &self.log,
            self.last_stable_offset(),
            offset,
            bytes_max,
            isolation,
            |from, to| self.producers.lock().aborted_between(from, to),
        )
    }

    /// Counts `records` (whole batches this partition returned from `fetch`) as delivered to a
    /// consumer. Callers count only what they send: a long-polling fetch reads the same batches
    /// again on each pass. A first batch that starts before the fetch offset counts whole.
    pub fn count_fetched(&self, records: &[u8]) {
        if records.is_empty() {
            return;
        }
        self.traffic
            .record_out(record_count_of_batches(records), records.len() as u64);
    }

    /// Counts records read out of the topic one by one (an AMQP stream consumer), with their
    /// value bytes.
    pub fn count_fetched_records(&self, records: u64, bytes: u64) {
        if records > 0 {
            self.traffic.record_out(records, bytes);
        }
    }

    /// For `fsync=interval:<ms>` topics a task syncs the log on that period; it ends when the
    /// partition is dropped.
    fn start_interval_flusher(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak: Weak<Partition> = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                let period = match weak.upgrade() {
                    Some(p) => match p.log.config().durability {
                        Durability::Interval(period) => period,
                        _ => std::time::Duration::from_millis(1000),
                    },
                    None => return,
                };
                tokio::time::sleep(period).await;
                let Some(partition) = weak.upgrade() else {
                    return;
                };
                if !matches!(partition.log.config().durability, Durability::Interval(_)) {
                    continue;
                }
                let log = Arc::clone(&partition.log);
                drop(partition);
                let offset_end = log.log_end_offset();
                let result = tokio::task::spawn_blocking(move || log.sync(offset_end)).await;
                if let Ok(Err(error)) = result {
                    tracing::error!(%error, "interval flush failed");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};

    use sluice_log::{Record, RecordBatchBuilder};

    use super::*;
    use crate::{Broker, BrokerConfig};

    fn records(count: usize) -> BytesMut {
        let mut builder = RecordBatchBuilder::new();
        for i in 0..count {
            builder.push(Record {
                timestamp: 1_000 + i as i64,
                value: Some(format!("v{i}").into_bytes()),
                ..Record::default()
            });
        }
        BytesMut::from(&builder.build()[..])
    }

    #[tokio::test]
    async fn traffic_counts_records_and_bytes_produced_and_fetched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = Broker::open(BrokerConfig::new(dir.path().to_path_buf())).expect("broker");
        let topic = broker
            .create_topic("t", 2, BTreeMap::new(), false)
            .expect("topic");
        let partition = topic.partition(0).expect("partition 0");
        let batch = records(5);
        let batch_bytes = batch.len() as u64;
        partition.produce(batch, Acks::All).await.expect("produce");
        partition
            .produce(records(3), Acks::All)
            .await
            .expect("produce");
        let produced = partition.traffic();
        assert_eq!(produced.messages_in, 8);
        assert!(produced.bytes_in > batch_bytes);
        assert_eq!((produced.messages_out, produced.bytes_out), (0, 0));

        let fetched = partition.fetch(0, 1 << 20).expect("fetch");
        assert_eq!(
            partition.traffic().messages_out,
            0,
            "a read counts only once the front end sends it"
        );
        partition.count_fetched(&fetched.records);
        let traffic = partition.traffic();
        assert_eq!(traffic.messages_out, 8);
        assert_eq!(traffic.bytes_out, fetched.records.len() as u64);
        assert_eq!(broker.traffic(), traffic, "the broker sums its partitions");
    }

    #[tokio::test]
    async fn delete_records_moves_the_log_start_and_refuses_offsets_past_the_high_watermark() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = Broker::open(BrokerConfig::new(dir.path().to_path_buf())).expect("broker");
        let topic = broker
            .create_topic("t", 1, BTreeMap::new(), false)
            .expect("topic");
        let partition = topic.partition(0).expect("partition 0");
        partition
            .produce(records(5), Acks::All)
            .await
            .expect("produce");

        assert_eq!(partition.delete_records(2).await.expect("delete"), 2);
        assert!(matches!(
            partition.fetch(1, 1 << 20),
            Err(BrokerError::OffsetOutOfRange(_))
        ));
        assert!(matches!(
            partition.delete_records(6).await,
            Err(BrokerError::OffsetOutOfRange(_))
        ));
        assert!(matches!(
            partition.delete_records(-2).await,
            Err(BrokerError::OffsetOutOfRange(_))
        ));
        // -1: up to the high watermark.
        assert_eq!(partition.delete_records(-1).await.expect("delete all"), 5);
        assert_eq!(partition.log_start_offset(), 5);
        let outcome = partition
            .produce(records(1), Acks::All)
            .await
            .expect("produce");
        assert_eq!((outcome.base_offset, outcome.log_start_offset), (5, 5));
    }

    fn idempotent_records(producer_id: i64, base_sequence: i32) -> BytesMut {
        let mut builder = RecordBatchBuilder::new();
        builder
            .producer(producer_id, 0, base_sequence)
            .push(Record {
                timestamp: 1_000,
                value: Some(b"v".to_vec()),
                ..Record::default()
            });
        BytesMut::from(&builder.build()[..])
    }

    /// A disk whose writes block until the test opens the gate (or 5 s pass).
    struct GatedDisk {
        gate: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
        timed_out: Arc<AtomicBool>,
    }

    struct GatedFile {
        file: Box<dyn sluice_log::StorageFile>,
        gate: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
        timed_out: Arc<AtomicBool>,
    }

    impl sluice_log::StorageFile for GatedFile {
        fn read_at(&self, buf: &mut [u8], position: u64) -> std::io::Result<usize> {
            self.file.read_at(buf, position)
        }
        fn write_all_at(&self, buf: &[u8], position: u64) -> std::io::Result<()> {
            let (open, changed) = &*self.gate;
            let guard = open.lock().expect("gate lock");
            let (guard, timeout) = changed
                .wait_timeout_while(guard, std::time::Duration::from_secs(5), |open| !*open)
                .expect("gate lock");
            drop(guard);
            if timeout.timed_out() {
                self.timed_out.store(true, Ordering::SeqCst);
            }
            self.file.write_all_at(buf, position)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.file.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.file.sync_data()
        }
        fn sync_all(&self) -> std::io::Result<()> {
            self.file.sync_all()
        }
        fn len(&self) -> std::io::Result<u64> {
            self.file.len()
        }
        fn modified_ms(&self) -> Option<i64> {
            self.file.modified_ms()
        }
    }

    impl sluice_log::Storage for GatedDisk {
        fn create_dir_all(&self, dir: &Path) -> std::io::Result<usize> {
            sluice_log::RealDisk.create_dir_all(dir)
        }
        fn open(&self, path: &Path) -> std::io::Result<Box<dyn sluice_log::StorageFile>> {
            Ok(Box::new(GatedFile {
                file: sluice_log::RealDisk.open(path)?,
                gate: Arc::clone(&self.gate),
                timed_out: Arc::clone(&self.timed_out),
            }))
        }
        fn create(&self, path: &Path) -> std::io::Result<Box<dyn sluice_log::StorageFile>> {
            Ok(Box::new(GatedFile {
                file: sluice_log::RealDisk.create(path)?,
                gate: Arc::clone(&self.gate),
                timed_out: Arc::clone(&self.timed_out),
            }))
        }
        fn remove_file(&self, path: &Path) -> std::io::Result<()> {
            sluice_log::RealDisk.remove_file(path)
        }
        fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
            sluice_log::RealDisk.rename(from, to)
        }
        fn read_dir(&self, dir: &Path) -> std::io::Result<Vec<std::ffi::OsString>> {
            sluice_log::RealDisk.read_dir(dir)
        }
        fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
            sluice_log::RealDisk.sync_dir(dir)
        }
        fn remove_dir_all(&self, dir: &Path) -> std::io::Result<()> {
            sluice_log::RealDisk.remove_dir_all(dir)
        }
    }

    /// A produce's write runs on the appender thread: while the disk holds it, the async
    /// worker (the only one here) keeps running other tasks, which is what opens the gate.
    /// With the write on the worker, the gate would only open by its 5 s timeout.
    #[tokio::test(flavor = "current_thread")]
    async fn a_blocked_log_write_does_not_block_the_async_worker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let gate = Arc::new((std::sync::Mutex::new(true), std::sync::Condvar::new()));
        let timed_out = Arc::new(AtomicBool::new(false));
        let disk = Arc::new(GatedDisk {
            gate: Arc::clone(&gate),
            timed_out: Arc::clone(&timed_out),
        });
        let log = PartitionLog::open_with(disk, dir.path(), LogConfig::default()).expect("log");
        let partition = Partition::with_log(
            "t",
            0,
            log,
            TimestampRules::default(),
            Arc::new(Notify::new()),
        )
        .expect("partition");
        *gate.0.lock().expect("gate lock") = false;
        let opener = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move {
                *gate.0.lock().expect("gate lock") = true;
                gate.1.notify_all();
            }
        });
        let outcome = partition
            .produce(records(3), Acks::All)
            .await
            .expect("produce");
        opener.await.expect("opener");
        assert_eq!(outcome.base_offset, 0);
        assert!(
            !timed_out.load(Ordering::SeqCst),
            "the write blocked the async worker until the gate timed out"
        );
    }

    /// Produces started in order (as a connection starts pipelined requests: one first poll
    /// each) are appended in that order, so consecutive idempotent sequences all succeed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipelined_idempotent_produces_are_appended_in_start_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = Broker::open(BrokerConfig::new(dir.path().to_path_buf())).expect("broker");
        let topic = broker
            .create_topic("t", 1, BTreeMap::new(), false)
            .expect("topic");
        let partition = topic.partition(0).expect("partition 0");
        let mut started = Vec::new();
        for sequence in 0..200 {
            let partition = Arc::clone(&partition);
            let mut produce = Box::pin(async move {
                partition
                    .produce(idempotent_records(7, sequence), Acks::All)
                    .await
            });
            let mut first_poll = std::task::Context::from_waker(std::task::Waker::noop());
            let _ = std::future::Future::poll(produce.as_mut(), &mut first_poll);
            started.push(produce);
        }
        for (sequence, produce) in started.into_iter().enumerate() {
            let outcome = produce.await.expect("in-order sequence accepted");
            assert_eq!(outcome.base_offset, sequence as i64);
        }
    }

    /// `producer.id.expiration.ms`: an idle producer's state is dropped on the housekeeping
    /// tick, and the producer is then accepted as a new one (any sequence, as Kafka).
    #[tokio::test]
    async fn idle_producer_ids_expire_and_are_then_accepted_as_new() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = BrokerConfig::new(dir.path().to_path_buf());
        config.producer_id_expiration_ms = 60_000;
        let broker = Broker::open(config).expect("broker");
        let topic = broker
            .create_topic("t", 1, BTreeMap::new(), false)
            .expect("topic");
        let partition = topic.partition(0).expect("partition 0");
        for producer_id in 0..3 {
            partition
                .produce(idempotent_records(producer_id, 0), Acks::All)
                .await
                .expect("produce");
        }
        assert_eq!(partition.producer_count(), 3);
        // Not idle long enough: the sequence is still checked.
        broker.enforce_retention();
        assert_eq!(partition.producer_count(), 3);
        assert!(matches!(
            partition.produce(idempotent_records(0, 7), Acks::All).await,
            Err(BrokerError::OutOfOrderSequence(_))
        ));

        assert_eq!(partition.expire_producers(now_ms() + 60_000, 60_000), 3);
        assert_eq!(partition.producer_count(), 0);
        let outcome = partition
            .produce(idempotent_records(0, 7), Acks::All)
            .await
            .expect("an expired producer is accepted as a new one");
        assert_eq!(outcome.base_offset, 3);
        assert_eq!(partition.producer_count(), 1);
    }
}
