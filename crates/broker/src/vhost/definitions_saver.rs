//! Writes the durable definitions off the topology lock and off the async workers.
//!
//! A topology change takes a snapshot of the durable definitions under the topology lock and
//! hands it to `submit`, which numbers it (so numbers follow the order of the changes) and
//! keeps only the newest unwritten one. One writer at a time (a `spawn_blocking` task that
//! lives while there is work) serialises and writes the newest snapshot, so an older snapshot
//! never overwrites a newer one, and a burst of declares costs a few writes, not one each.
//!
//! A client is answered (declare-ok, bind-ok, ...) only once `saved` resolves: every snapshot
//! submitted before the call is on disk, or the write's error is returned.

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use sluice_log::Storage;
use tokio::sync::oneshot;

use super::definitions::Definitions;
use super::topology::Topology;
use super::{VhostError, VirtualHost};

type Waiter = (u64, oneshot::Sender<Result<(), VhostError>>);
/// Work that may only happen once a snapshot is on disk (removing a deleted queue's files).
pub(crate) type AfterSaved = Box<dyn FnOnce() + Send>;

struct SaverState {
    /// The newest snapshot not yet written, with its number; older ones are superseded.
    pending: Option<(u64, Definitions)>,
    /// Number of the last snapshot submitted.
    submitted: u64,
    /// Number of the last snapshot written (or whose write failed), and how that went.
    written: u64,
    written_result: Result<(), VhostError>,
    writing: bool,
    waiters: Vec<Waiter>,
    after_saved: Vec<(u64, AfterSaved)>,
}

pub(crate) struct DefinitionsSaver {
    storage: Arc<dyn Storage>,
    amqp_dir: PathBuf,
    state: Mutex<SaverState>,
    idle: Condvar,
}

impl DefinitionsSaver {
    pub(crate) fn new(storage: Arc<dyn Storage>, amqp_dir: PathBuf) -> Arc<DefinitionsSaver> {
        Arc::new(DefinitionsSaver {
            storage,
            amqp_dir,
            state: Mutex::new(SaverState {
                pending: None,
                submitted: 0,
                written: 0,
                written_result: Ok(()),
                writing: false,
                waiters: Vec::new(),
                after_saved: Vec::new(),
            }),
            idle: Condvar::new(),
        })
    }

    /// Queues `definitions` to be written. Call it under the topology lock, so that snapshots
    /// are numbered in the order of the changes they reflect. Outside a tokio runtime the
    /// write happens here.
    pub(crate) fn submit(self: &Arc<Self>, definitions: Definitions) {
        self.submit_then(definitions, None);
    }

    /// [`submit`](Self::submit), and run `after_saved` on the writer once this snapshot (or a
    /// newer one) is on disk; never if the write fails (start-up cleans up what it leaves).
    pub(crate) fn submit_then(
        self: &Arc<Self>,
        definitions: Definitions,
        after_saved: Option<AfterSaved>,
    ) {
        let start_writer = {
            let mut state = self.state.lock();
            state.submitted += 1;
            let number = state.submitted;
            state.pending = Some((number, definitions));
            if let Some(after_saved) = after_saved {
                state.after_saved.push((number, after_saved));
            }
            !std::mem::replace(&mut state.writing, true)
        };
        if start_writer {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let this = Arc::clone(self);
                    runtime.spawn_blocking(move || this.write_pending());
                }
                Err(_) => self.write_pending(),
            }
        }
    }

    /// Resolves once every snapshot submitted before this call is written (or failed to be).
    pub(crate) fn saved(&self) -> oneshot::Receiver<Result<(), VhostError>> {
        let (sender, receiver) = oneshot::channel();
        let mut state = self.state.lock();
        if state.written >= state.submitted {
            let _ = sender.send(state.written_result.clone());
        } else {
            let wanted = state.submitted;
            state.waiters.push((wanted, sender));
        }
        receiver
    }

    /// Blocks until no write is pending or running (clean shutdown).
    pub(crate) fn wait_idle(&self) {
        let mut state = self.state.lock();
        while state.writing {
            self.idle.wait(&mut state);
        }
    }

    fn write_pending(&self) {
        loop {
            let (number, definitions) = {
                let mut state = self.state.lock();
                match state.pending.take() {
                    Some(pending) => pending,
                    None => {
                        state.writing = false;
                        self.idle.notify_all();
                        return;
                    }
                }
            };
            let result = definitions.save(self.storage.as_ref(), &self.amqp_dir);
            if let Err(error) = &result {
                tracing::error!(%error, "could not save the AMQP definitions");
            }
            let mut state = self.state.lock();
            state.written = number;
            state.written_result = result.clone();
            let (answered, waiting): (Vec<Waiter>, Vec<Waiter>) =
                std::mem::take(&mut state.waiters)
                    .into_iter()
                    .partition(|(wanted, _)| *wanted <= number);
            state.waiters = waiting;
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut state.after_saved)
                .into_iter()
                .partition(|(after, _)| *after <= number);
            state.after_saved = later;
            drop(state);
            if result.is_ok() {
                for (_, after_saved) in due {
                    after_saved();
                }
            }
            for (_, sender) in answered {
                let _ = sender.send(result.clone());
            }
        }
    }
}

impl VirtualHost {
    /// Snapshots the durable definitions (under the topology lock the caller holds) and
    /// queues them for the definitions saver, which writes them outside the lock.
    pub(super) fn save(&self, topology: &Topology) {
        // A deleted vhost's files are being removed: nothing may write them back.
        if self.is_deleted() {
            return;
        }
        self.definitions.submit(topology.durable_definitions());
    }

    /// Resolves once every definitions change made before the call is on disk: a client is
    /// answered (declare-ok, bind-ok, ...) only after this.
    pub async fn definitions_saved(&self) -> Result<(), VhostError> {
        match self.definitions.saved().await {
            Ok(result) => result,
            Err(_) => Err(VhostError::Storage(crate::StorageFailure::unwritten(
                "the definitions saver stopped",
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use amq_protocol_types::FieldTable;

    use super::*;
    use crate::vhost::{Exchange, ExchangeKind};

    fn definitions(exchanges: usize) -> Definitions {
        Definitions {
            exchanges: (0..exchanges)
                .map(|i| Exchange {
                    name: format!("x{i}"),
                    kind: ExchangeKind::Fanout,
                    durable: true,
                    auto_delete: false,
                    internal: false,
                    arguments: FieldTable::default(),
                })
                .collect(),
            ..Definitions::default()
        }
    }

    /// Snapshots submitted in order from several threads (as under the topology lock) end
    /// with the newest on disk, never an older one written last; bursts share writes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_newest_snapshot_wins_and_every_waiter_is_answered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let saver = DefinitionsSaver::new(Arc::new(sluice_log::RealDisk), dir.path().to_path_buf());
        let topology_lock = Arc::new(Mutex::new(0usize));
        let mut threads = Vec::new();
        for _ in 0..4 {
            let saver = Arc::clone(&saver);
            let topology_lock = Arc::clone(&topology_lock);
            threads.push(std::thread::spawn(move || {
                let mut waits = Vec::new();
                for _ in 0..50 {
                    let mut exchanges = topology_lock.lock();
                    *exchanges += 1;
                    saver.submit(definitions(*exchanges));
                    drop(exchanges);
                    waits.push(saver.saved());
                }
                waits
            }));
        }
        for thread in threads {
            for wait in thread.join().expect("thread") {
                wait.await.expect("answered").expect("saved");
            }
        }
        saver.wait_idle();
        let loaded = Definitions::load(&sluice_log::RealDisk, dir.path()).expect("load");
        assert_eq!(loaded.exchanges.len(), 200);
    }
}
