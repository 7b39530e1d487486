//! Group commit for one partition under `fsync=batch`: producers waiting for durability queue
//! here, and a single flusher (a blocking thread that lives while there is work) syncs the log
//! once for everyone queued, then answers all of them. This replaces one blocking task and one
//! mutex hand-off per produce request with one wake-up per waiter and one fdatasync per round.

use std::sync::Arc;

use parking_lot::Mutex;
use sluice_log::{Durability, PartitionLog};
use tokio::sync::{oneshot, Notify};

use crate::{BrokerError, StorageFailure};

/// Resolves once the data it waits for is durable, or with the storage failure that stopped
/// it (typed, so the front ends answer KAFKA_STORAGE_ERROR / basic.nack by matching).
pub type DurableWait = oneshot::Receiver<Result<(), BrokerError>>;

type Waiter = (i64, oneshot::Sender<Result<(), BrokerError>>);

#[derive(Default)]
struct Queue {
    waiters: Vec<Waiter>,
    /// A flusher thread is running (and will look at the queue again before it stops).
    flushing: bool,
}

/// Work a flusher does before each fdatasync (writing appends that were gathered in memory).
pub type BeforeSync = Box<dyn Fn() -> Result<(), BrokerError> + Send + Sync>;

pub struct GroupCommit {
    log: Arc<PartitionLog>,
    data_ready: Arc<Notify>,
    queue: Mutex<Queue>,
    before_sync: Option<BeforeSync>,
}

impl GroupCommit {
    pub fn new(log: Arc<PartitionLog>, data_ready: Arc<Notify>) -> Arc<GroupCommit> {
        Arc::new(GroupCommit {
            log,
            data_ready,
            queue: Mutex::new(Queue::default()),
            before_sync: None,
        })
    }

    /// A group commit whose flusher first runs `before_sync` each round, so that appends
    /// gathered meanwhile reach the log in one write and are covered by the same fdatasync.
    pub fn with_before_sync(
        log: Arc<PartitionLog>,
        data_ready: Arc<Notify>,
        before_sync: BeforeSync,
    ) -> Arc<GroupCommit> {
        Arc::new(GroupCommit {
            log,
            data_ready,
            queue: Mutex::new(Queue::default()),
            before_sync: Some(before_sync),
        })
    }

    /// Resolves once every offset below `offset_end` is fdatasynced. Dropping the returned
    /// future (acks=0) still gets the data synced: the flusher does not need the waiter.
    pub fn durable(self: &Arc<Self>, offset_end: i64) -> DurableWait {
        let wait = self.register(offset_end);
        let start_flusher = {
            let mut queue = self.queue.lock();
            !queue.waiters.is_empty() && !std::mem::replace(&mut queue.flushing, true)
        };
        if start_flusher {
            let this = Arc::clone(self);
            tokio::task::spawn_blocking(move || this.flush_while_waited_for());
        }
        wait
    }

    /// Like [`durable`](Self::durable), but starts no flusher: for a caller already on a
    /// blocking thread (the partition appender), which then calls [`flush_here`](Self::flush_here),
    /// so a produce costs one thread hand-off, not one to append and another to sync.
    pub(crate) fn register(&self, offset_end: i64) -> DurableWait {
        let (sender, receiver) = oneshot::channel();
        if self.log.config().durability != Durability::Batch {
            // Only `fsync=batch` holds data back until synced: under the other policies it is
            // readable once written, and as durable as the policy makes it.
            self.data_ready.notify_waiters();
            let _ = sender.send(Ok(()));
        } else if self.log.durable_offset() >= offset_end {
            let _ = sender.send(Ok(()));
        } else {
            self.queue.lock().waiters.push((offset_end, sender));
        }
        receiver
    }

    /// Runs the flusher on the calling (blocking) thread until no waiter is left, unless a
    /// flusher is running already (it answers the waiters registered meanwhile).
    pub(crate) fn flush_here(&self) {
        {
            let mut queue = self.queue.lock();
            if queue.waiters.is_empty() || queue.flushing {
                return;
            }
            queue.flushing = true;
        }
        self.flush_while_waited_for();
    }

    /// One fdatasync per round covers everything appended before it started; waiters for data
    /// appended during it stay queued for the next round.
    fn flush_while_waited_for(&self) {
        loop {
            let waiters = {
                let mut queue = self.queue.lock();
                if queue.waiters.is_empty() {
                    queue.flushing = false;
                    return;
                }
                std::mem::take(&mut queue.waiters)
            };
            let prepared = match &self.before_sync {
                Some(before_sync) => before_sync(),
                None => Ok(()),
            };
            let offset_end = self.log.log_end_offset();
            let result =
                prepared.and_then(|()| self.log.sync(offset_end).map_err(BrokerError::from));
            self.data_ready.notify_waiters();
            let durable = self.log.durable_offset();
            let mut still_waiting = Vec::new();
            for (wanted, sender) in waiters {
                match &result {
                    Err(error) => {
                        let _ = sender.send(Err(error.clone()));
                    }
                    Ok(()) if wanted <= durable => {
                        let _ = sender.send(Ok(()));
                    }
                    // Everything appended before the waiter registered was written by now, so
                    // offsets past the log's end will never come (the queue behind the log was
                    // deleted, or the log truncated): waiting again would spin this thread.
                    Ok(()) if wanted > offset_end => {
                        let _ = sender.send(Err(BrokerError::Storage(StorageFailure::unwritten(
                            "the data was not written: its log was closed or truncated",
                        ))));
                    }
                    Ok(()) => still_waiting.push((wanted, sender)),
                }
            }
            if !still_waiting.is_empty() {
                self.queue.lock().waiters.extend(still_waiting);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use sluice_log::{LogConfig, Record, RecordBatchBuilder};

    use super::*;

    fn batch() -> Vec<u8> {
        let mut builder = RecordBatchBuilder::new();
        builder.push(Record {
            value: Some(b"v".to_vec()),
            ..Record::default()
        });
        builder.build()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_waiters_share_fdatasyncs_and_all_become_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Arc::new(PartitionLog::open(dir.path(), LogConfig::default()).expect("open"));
        let commit = GroupCommit::new(Arc::clone(&log), Arc::new(Notify::new()));
        let mut waits = Vec::new();
        for _ in 0..200 {
            let info = log.append(&mut batch(), 0, 0).expect("append");
            waits.push(commit.durable(info.last_offset + 1));
        }
        for wait in waits {
            wait.await.expect("answered").expect("synced");
        }
        assert_eq!(log.durable_offset(), 200);
        assert_eq!(log.high_watermark(), 200);
        // 200 appends made while the first sync runs are covered by a handful of syncs, not
        // one each.
        assert!(
            log.sync_count() <= 20,
            "{} fdatasyncs for 200 waiters: group commit is not sharing them",
            log.sync_count()
        );
    }

    #[tokio::test]
    async fn already_durable_data_is_answered_without_a_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Arc::new(PartitionLog::open(dir.path(), LogConfig::default()).expect("open"));
        let commit = GroupCommit::new(Arc::clone(&log), Arc::new(Notify::new()));
        let info = log.append(&mut batch(), 0, 0).expect("append");
        log.sync(info.last_offset + 1).expect("sync");
        let syncs = log.sync_count();
        commit
            .durable(info.last_offset + 1)
            .await
            .expect("answered")
            .expect("synced");
        assert_eq!(log.sync_count(), syncs);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiter_for_data_that_never_comes_gets_an_error_not_a_spinning_flusher() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Arc::new(PartitionLog::open(dir.path(), LogConfig::default()).expect("open"));
        log.append(&mut batch(), 0, 0).expect("append");
        let commit = GroupCommit::new(Arc::clone(&log), Arc::new(Notify::new()));
        // Offset 5 was promised (as pending queue appends are) but is never written.
        let never = commit.durable(5);
        let result = tokio::time::timeout(std::time::Duration::from_secs(5), never)
            .await
            .expect("answered, not left to spin")
            .expect("sender kept");
        assert!(
            matches!(&result, Err(BrokerError::Storage(failure)) if failure.kind == crate::StorageFailureKind::Unwritten),
            "{result:?}"
        );
        assert_eq!(log.durable_offset(), 1);
    }
}
