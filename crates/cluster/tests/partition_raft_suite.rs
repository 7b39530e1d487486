//! openraft's own storage test suite against the partition log on a real disk.

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use sluice_cluster::partition::{self, PartitionLogStore, PartitionRaft, PartitionStateMachine};
use sluice_cluster::NodeId;
use sluice_log::{LogConfig, RealDisk};

struct TempDirBuilder;

impl StoreBuilder<PartitionRaft, PartitionLogStore, PartitionStateMachine, tempfile::TempDir>
    for TempDirBuilder
{
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, PartitionLogStore, PartitionStateMachine), StorageError<NodeId>>
    {
        let dir = tempfile::tempdir().map_err(|e| {
            StorageError::from(openraft::StorageIOError::write(openraft::AnyError::new(&e)))
        })?;
        let (log_store, state_machine, _log) = partition::open(
            Arc::new(RealDisk),
            &dir.path().join("topic-0"),
            LogConfig::default(),
        )
        .map_err(|e| {
            StorageError::from(openraft::StorageIOError::write(openraft::AnyError::new(&e)))
        })?;
        Ok((dir, log_store, state_machine))
    }
}

#[test]
fn openraft_storage_suite_passes_on_the_partition_log() {
    if let Err(error) = Suite::test_all(TempDirBuilder) {
        panic!("openraft storage suite failed: {error}");
    }
}
