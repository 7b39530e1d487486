//! The metadata group's storage: openraft's own storage suite, on a real and a simulated disk,
//! and durability across power cuts.

use std::path::Path;
use std::sync::Arc;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, StorageError, Vote};
use sluice_cluster::metadata::{
    MetadataCommand, MetadataLogStore, MetadataRaft, MetadataStateMachine, MetadataStoreError,
};
use sluice_cluster::{NodeAddress, NodeId};
use sluice_log::{RealDisk, SimDisk, Storage};

struct RealDiskBuilder;

impl StoreBuilder<MetadataRaft, MetadataLogStore, MetadataStateMachine, tempfile::TempDir>
    for RealDiskBuilder
{
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, MetadataLogStore, MetadataStateMachine), StorageError<NodeId>>
    {
        let dir = tempfile::tempdir()
            .map_err(|e| openraft::StorageIOError::write(openraft::AnyError::new(&e)))?;
        let storage: Arc<dyn Storage> = Arc::new(RealDisk);
        let (log, machine) = open(&storage, dir.path())
            .map_err(|e| openraft::StorageIOError::write(openraft::AnyError::new(&e)))?;
        Ok((dir, log, machine))
    }
}

struct SimDiskBuilder;

impl StoreBuilder<MetadataRaft, MetadataLogStore, MetadataStateMachine, ()> for SimDiskBuilder {
    async fn build(
        &self,
    ) -> Result<((), MetadataLogStore, MetadataStateMachine), StorageError<NodeId>> {
        let storage = SimDisk::new(1).storage();
        let (log, machine) = open(&storage, Path::new("/meta"))
            .map_err(|e| openraft::StorageIOError::write(openraft::AnyError::new(&e)))?;
        Ok(((), log, machine))
    }
}

fn open(
    storage: &Arc<dyn Storage>,
    dir: &Path,
) -> Result<(MetadataLogStore, MetadataStateMachine), MetadataStoreError> {
    Ok((
        MetadataLogStore::open(storage.clone(), dir)?,
        MetadataStateMachine::open(storage.clone(), dir)?,
    ))
}

#[test]
fn openraft_storage_suite_passes_on_real_disk() {
    if let Err(e) = Suite::test_all(RealDiskBuilder) {
        panic!("storage suite failed: {e}");
    }
}

#[test]
fn openraft_storage_suite_passes_on_sim_disk() {
    if let Err(e) = Suite::test_all(SimDiskBuilder) {
        panic!("storage suite failed: {e}");
    }
}

fn entry(term: u64, index: u64, command: MetadataCommand) -> Entry<MetadataRaft> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(command),
    }
}

fn register(node_id: NodeId) -> MetadataCommand {
    MetadataCommand::RegisterBroker {
        node_id,
        address: NodeAddress {
            cluster_addr: format!("10.0.0.{node_id}:9093"),
            kafka_addr: format!("10.0.0.{node_id}:9092"),
        },
    }
}

async fn append(log: &mut MetadataLogStore, entries: Vec<Entry<MetadataRaft>>) {
    // `LogFlushed` cannot be built outside openraft; `blocking_append` builds one and waits.
    use openraft::storage::RaftLogStorageExt;
    log.blocking_append(entries).await.unwrap();
}

#[tokio::test]
async fn acknowledged_entries_and_vote_survive_a_power_cut() {
    let disk = SimDisk::new(7);
    let storage = disk.storage();
    let dir = Path::new("/node/metadata");
    {
        let (mut log, _machine) = open(&storage, dir).unwrap();
        append(
            &mut log,
            (1..=3).map(|i| entry(1, i, register(i))).collect(),
        )
        .await;
        log.save_vote(&Vote::new(2, 3)).await.unwrap();
        log.save_committed(Some(LogId::new(CommittedLeaderId::new(1, 1), 2)))
            .await
            .unwrap();
    }
    disk.power_cut();
    let (mut log, _machine) = open(&storage, dir).unwrap();
    let entries = log.try_get_log_entries(0..10).await.unwrap();
    assert_eq!(
        entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 3)));
    assert_eq!(
        log.read_committed().await.unwrap().map(|id| id.index),
        Some(2)
    );
}

#[tokio::test]
async fn corrupt_tail_is_cut_and_appends_continue() {
    let disk = SimDisk::new(9);
    let storage = disk.storage();
    let dir = Path::new("/node/metadata");
    {
        let (mut log, _machine) = open(&storage, dir).unwrap();
        append(
            &mut log,
            (1..=3).map(|i| entry(1, i, register(i))).collect(),
        )
        .await;
    }
    // Damage the last record's payload: its CRC no longer matches.
    let log_path = dir.join("log");
    let len = storage.open(&log_path).unwrap().len().unwrap();
    disk.flip_byte(&log_path, len - 1).unwrap();
    let (mut log, _machine) = open(&storage, dir).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id.map(|id| id.index), Some(2));
    append(&mut log, vec![entry(2, 3, register(9))]).await;
    drop(log);
    let (mut log, _machine) = open(&storage, dir).unwrap();
    let entries = log.try_get_log_entries(3..4).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].log_id.leader_id.term, 2);
}

#[tokio::test]
async fn snapshot_restores_the_state_machine_after_restart() {
    use openraft::RaftSnapshotBuilder;
    let disk = SimDisk::new(11);
    let storage = disk.storage();
    let dir = Path::new("/node/metadata");
    {
        let (_log, mut machine) = open(&storage, dir).unwrap();
        machine
            .apply(
                (1..=2)
                    .map(|i| entry(1, i, register(i)))
                    .collect::<Vec<_>>(),
            )
            .await
            .unwrap();
        let mut builder = machine.get_snapshot_builder().await;
        builder.build_snapshot().await.unwrap();
    }
    disk.power_cut();
    let (_log, mut machine) = open(&storage, dir).unwrap();
    let (applied, _) = machine.applied_state().await.unwrap();
    assert_eq!(applied.map(|id| id.index), Some(2));
    let metadata = machine.subscribe().borrow().clone();
    assert_eq!(
        metadata.brokers.keys().copied().collect::<Vec<_>>(),
        vec![1, 2]
    );
}
