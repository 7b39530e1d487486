//! Merging a rolled segment's key index into its `N.keyindex` off the append path.
//!
//! With a 1 GiB segment of ~16 M entries the streaming merge of the spilled runs and its fsync
//! take seconds; done under the append lock at roll time, they stalled the partition's
//! producers for that long. Now a roll only freezes the segment's runs
//! (`Segment::seal_key_index`, lookups keep searching them) and hands the merge to one
//! process-wide worker thread, which writes, fsyncs and installs the table
//! (`Segment::merge_key_index`) and then syncs the directory. Installing checks that the
//! segment still waits for the same runs, so a truncation, deletion or config change during
//! the merge discards it. A crash at any point leaves no `N.keyindex` (or a stale one whose
//! header does not match) and recovery rebuilds it from the log, as before.
//!
//! One worker serialises merges across partitions: they are disk-bound, rare (one per rolled
//! segment) and bounded in memory (the frozen runs they read already exist). On a storage that
//! allows no background work (the deterministic simulated disk) the merge runs inline.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};

use parking_lot::{Condvar, Mutex};

use crate::key_index::KeyIndexRuns;
use crate::recovery::sync_dir;
use crate::segment::Segment;
use crate::storage::Storage;

type MergeJob = Box<dyn FnOnce() + Send>;

/// The merges one partition log has scheduled and not yet finished.
#[derive(Default)]
pub(crate) struct KeyIndexMerges {
    pending: Mutex<usize>,
    idle: Condvar,
}

/// Counts a merge as finished even if it panics, so `wait_idle` never hangs.
struct PendingMerge(Arc<KeyIndexMerges>);

impl Drop for PendingMerge {
    fn drop(&mut self) {
        let mut pending = self.0.pending.lock();
        *pending = pending.saturating_sub(1);
        if *pending == 0 {
            self.0.idle.notify_all();
        }
    }
}

impl KeyIndexMerges {
    /// Merges `runs` (sealed from rolled `segment` of `dir`) in the background, or inline when
    /// `storage` allows no background work or the worker cannot be had.
    pub fn schedule(
        self: &Arc<Self>,
        storage: &Arc<dyn Storage>,
        dir: PathBuf,
        segment: Arc<Segment>,
        runs: Arc<KeyIndexRuns>,
    ) {
        *self.pending.lock() += 1;
        let pending = PendingMerge(Arc::clone(self));
        let storage_for_job = Arc::clone(storage);
        let job: MergeJob = Box::new(move || {
            let _pending = pending;
            merge(storage_for_job.as_ref(), &dir, &segment, &runs);
        });
        if !storage.allows_background_work() {
            job();
            return;
        }
        match worker() {
            Some(sender) => {
                if let Err(mpsc::SendError(job)) = sender.send(job) {
                    tracing::warn!("key index merge worker is gone: merging inline");
                    job();
                }
            }
            None => job(),
        }
    }

    /// Blocks until every merge scheduled so far has finished (a flush or a delete, so a clean
    /// restart finds the tables and a deleted directory gets no late files).
    pub fn wait_idle(&self) {
        let mut pending = self.pending.lock();
        while *pending > 0 {
            self.idle.wait(&mut pending);
        }
    }
}

fn merge(
    storage: &dyn Storage,
    dir: &std::path::Path,
    segment: &Segment,
    runs: &Arc<KeyIndexRuns>,
) {
    match segment.merge_key_index(runs) {
        Ok(true) => {
            // Until this, a crash only costs a rebuild of the table by recovery.
            if let Err(error) = sync_dir(storage, dir) {
                tracing::warn!(segment = %segment.log_path.display(), %error, "cannot sync the directory after writing a key index (recovery rebuilds it if lost)");
            }
            tracing::debug!(segment = %segment.log_path.display(), "key index merged");
        }
        Ok(false) => {
            tracing::debug!(segment = %segment.log_path.display(), "segment changed during its key index merge: result discarded");
        }
        Err(error) => {
            tracing::warn!(segment = %segment.log_path.display(), %error, "cannot write the key index: lookups keep using its runs until recovery rebuilds it");
        }
    }
}

/// The process-wide merge worker, started on first use; `None` if no thread can be spawned.
fn worker() -> Option<&'static mpsc::Sender<MergeJob>> {
    static WORKER: OnceLock<Option<mpsc::Sender<MergeJob>>> = OnceLock::new();
    WORKER
        .get_or_init(|| {
            let (sender, receiver) = mpsc::channel::<MergeJob>();
            let spawned = std::thread::Builder::new()
                .name("key-index-merge".into())
                .spawn(move || {
                    while let Ok(job) = receiver.recv() {
                        job();
                    }
                });
            match spawned {
                Ok(_) => Some(sender),
                Err(error) => {
                    tracing::warn!(%error, "cannot start the key index merge worker: merges run inline");
                    None
                }
            }
        })
        .as_ref()
}
