//! The appender of one partition: idempotent produces are checked against the producer state
//! and written to the log on a blocking thread, never on the async workers, because a write
//! can block on the disk and a segment roll fsyncs the rolled segment and the directory.
//!
//! Order: `submit` queues the append at once (a produce calls it in its first poll, which the
//! Kafka connection runs in request order), and one drainer at a time takes the queue in FIFO
//! order, so a connection's pipelined appends reach the log in arrival order. Like the group
//! commit, the drainer is a `spawn_blocking` task that lives while there is work.
//!
//! The producer-state lock is held only to check a batch's sequence and to record it after
//! the write, never across the write or a roll's fsyncs. That is safe because this drainer is
//! the only writer of sequenced batches to the partition: nothing can check or record the same
//! producer between the check and the record (housekeeping's expiry may drop an entry in
//! between, and the record then simply re-creates it).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;
use parking_lot::Mutex;
use sluice_log::{transaction_marker_result, BatchHeader, PartitionLog};
use tokio::sync::oneshot;

use crate::group_commit::{DurableWait, GroupCommit};
use crate::producer_state::{ProducerStateTable, SequenceCheck};
use crate::BrokerError;

/// Offsets an append (or the retried batch it duplicates) covers: first, and one past the last.
pub(crate) type AppendedRange = (i64, i64);

struct AppendJob {
    records: BytesMut,
    /// The batches' headers as validated by the caller (before offsets are assigned).
    headers: Vec<BatchHeader>,
    now_ms: i64,
    reply: oneshot::Sender<Result<(AppendedRange, DurableWait), BrokerError>>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<AppendJob>,
    /// A drainer is running (and looks at the queue again before it stops).
    draining: bool,
}

pub(crate) struct PartitionAppender {
    log: Arc<PartitionLog>,
    producers: Arc<Mutex<ProducerStateTable>>,
    group_commit: Arc<GroupCommit>,
    queue: Mutex<Queue>,
}

impl PartitionAppender {
    pub(crate) fn new(
        log: Arc<PartitionLog>,
        producers: Arc<Mutex<ProducerStateTable>>,
        group_commit: Arc<GroupCommit>,
    ) -> Arc<PartitionAppender> {
        Arc::new(PartitionAppender {
            log,
            producers,
            group_commit,
            queue: Mutex::new(Queue::default()),
        })
    }

    /// Queues the append behind every earlier one; the receiver gets the offsets it covers.
    /// `headers` are `validate_batches`' for `records`: their CRCs are not checked again.
    /// Outside a tokio runtime the append runs here (tests and tools only).
    pub(crate) fn submit(
        self: &Arc<Self>,
        records: BytesMut,
        headers: Vec<BatchHeader>,
        now_ms: i64,
    ) -> oneshot::Receiver<Result<(AppendedRange, DurableWait), BrokerError>> {
        let (reply, receiver) = oneshot::channel();
        let job = AppendJob {
            records,
            headers,
            now_ms,
            reply,
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.run(job);
            self.group_commit.flush_here();
            return receiver;
        };
        let start_drainer = {
            let mut queue = self.queue.lock();
            queue.jobs.push_back(job);
            !std::mem::replace(&mut queue.draining, true)
        };
        if start_drainer {
            let this = Arc::clone(self);
            runtime.spawn_blocking(move || this.drain());
        }
        receiver
    }

    fn drain(&self) {
        loop {
            let job = {
                let mut queue = self.queue.lock();
                match queue.jobs.pop_front() {
                    Some(job) => job,
                    None => {
                        queue.draining = false;
                        break;
                    }
                }
            };
            self.run(job);
        }
        // The burst's waiters are registered: sync for them here, on this thread.
        self.group_commit.flush_here();
    }

    fn run(&self, job: AppendJob) {
        let AppendJob {
            mut records,
            headers,
            now_ms,
            reply,
        } = job;
        let result = self
            .append(&mut records, &headers, now_ms)
            // Under `fsync=batch` a sync is always queued (acks=0 included); it runs when the
            // current burst of appends is done.
            .map(|range| (range, self.group_commit.register(range.1)));
        let _ = reply.send(result);
    }

    /// The idempotence check, the write, then the producer-state record.
    fn append(
        &self,
        records: &mut BytesMut,
        headers: &[BatchHeader],
        now_ms: i64,
    ) -> Result<AppendedRange, BrokerError> {
        let mut duplicate = None;
        {
            let producers = self.producers.lock();
            for header in headers {
                match producers.check(header)? {
                    SequenceCheck::Append => {}
                    SequenceCheck::Duplicate { offset_first } => duplicate = Some(offset_first),
                }
            }
        }
        match duplicate {
            // Clients send one batch per partition; a retried one is answered, not stored.
            Some(offset_first) if headers.len() == 1 => {
                return Ok((
                    offset_first,
                    offset_first + headers[0].last_offset_delta as i64 + 1,
                ))
            }
            Some(_) => {
                return Err(BrokerError::InvalidRecord(
                    "a retried idempotent batch must be sent alone".into(),
                ))
            }
            None => {}
        }
        let info = self.log.append_verified(records, 0, now_ms)?;
        // The coordinator appends each transaction marker alone.
        let marker = match info.batches.as_slice() {
            [batch] if batch.is_control() => transaction_marker_result(batch, &records[..])?,
            _ => None,
        };
        let mut producers = self.producers.lock();
        for batch in &info.batches {
            match marker {
                Some(result) => producers.record_marker(batch, result, now_ms),
                None => producers.record(batch, now_ms),
            }
        }
        Ok((info.base_offset, info.last_offset + 1))
    }
}
