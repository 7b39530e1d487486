//! Share groups' share-partition states in a cluster ([`ReplicatedShareStates`] for
//! [`ClusterBroker`]): each partition's leader, which serves its share partitions, commits
//! their states through the metadata group (forwarded to its leader), as Kafka's share
//! coordinator writes `__share_group_state`. A new partition leader loads them from there.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sluice_cluster::metadata::MetadataCommand;
use sluice_cluster::transport::RpcKind;
use sluice_cluster::{GroupId, NodeId};

use super::broker_requests::ForgetSharePartitions;

use super::{committed_offset, stored_offset, ClusterBroker};
use crate::group_coordinator::{
    OffsetAndMetadata, ReplicatedShareStates, ShareLog, TopicPartition,
};
use crate::GroupError;

/// How long the coordinator waits for each node to hear of changed share states.
const RELOAD_WAIT_MAX: Duration = Duration::from_secs(5);

impl ClusterBroker {
    /// Makes the broker's share groups keep their share-partition states in the metadata group.
    pub(super) fn start_share_states(self: &Arc<Self>) {
        let as_store: Arc<dyn ReplicatedShareStates> = Arc::clone(self) as _;
        self.broker
            .group_coordinator()
            .use_replicated_share_states(Arc::downgrade(&as_store));
    }

    /// The replica a share fetch or acknowledgement of `topic_id`-`partition` reads: this
    /// node's, while it leads the partition.
    pub fn share_log(
        &self,
        topic_id: uuid::Uuid,
        partition: i32,
    ) -> Result<(String, Arc<dyn ShareLog>), super::ReplicationError> {
        let topic = self
            .metadata()
            .topic_by_id(topic_id)
            .cloned()
            .ok_or_else(|| {
                crate::BrokerError::UnknownTopicOrPartition(format!("topic id {topic_id}"))
            })?;
        let replica = self.replica_for(&topic.name, partition)?;
        replica.check_leader(-1)?;
        Ok((topic.name, replica))
    }

    async fn propose_share_command(&self, command: MetadataCommand) -> Result<(), GroupError> {
        self.node
            .propose(command)
            .await
            .map(|_| ())
            .map_err(|error| {
                tracing::debug!(%error, "share state not committed");
                GroupError::CoordinatorNotAvailable
            })
    }
}

impl ReplicatedShareStates for ClusterBroker {
    fn fetch(&self, group_id: &str, partition: &TopicPartition) -> Option<OffsetAndMetadata> {
        self.node
            .share_states()
            .fetch(group_id, &partition.topic, partition.partition)
            .map(|offset| stored_offset(offset).1)
    }

    fn group_offsets(&self, group_id: &str) -> Vec<(TopicPartition, OffsetAndMetadata)> {
        self.node
            .share_states()
            .group(group_id)
            .into_iter()
            .map(stored_offset)
            .collect()
    }

    fn groups(&self) -> Vec<String> {
        self.node.share_states().groups()
    }

    fn commit<'a>(
        &'a self,
        group_id: &'a str,
        offsets: &'a [(TopicPartition, OffsetAndMetadata)],
    ) -> BoxFuture<'a, Result<(), GroupError>> {
        Box::pin(async move {
            let offsets = offsets
                .iter()
                .map(|(partition, offset)| committed_offset(partition.clone(), offset.clone()))
                .collect();
            self.propose_share_command(MetadataCommand::CommitShareState {
                group: group_id.to_string(),
                offsets,
            })
            .await
        })
    }

    fn delete<'a>(
        &'a self,
        group_id: &'a str,
        partitions: Option<&'a [TopicPartition]>,
    ) -> BoxFuture<'a, Result<(), GroupError>> {
        Box::pin(async move {
            if partitions.is_some_and(|p| p.is_empty()) {
                return Ok(());
            }
            self.propose_share_command(MetadataCommand::DeleteShareState {
                group: group_id.to_string(),
                partitions: partitions.map(|partitions| {
                    partitions
                        .iter()
                        .map(|p| (p.topic.clone(), p.partition))
                        .collect()
                }),
            })
            .await
        })
    }

    fn catch_up(&self) -> BoxFuture<'_, Result<(), GroupError>> {
        Box::pin(async move {
            self.node.catch_up().await.map_err(|error| {
                tracing::debug!(%error, "share states not caught up");
                GroupError::CoordinatorLoadInProgress
            })
        })
    }

    fn reload_elsewhere<'a>(
        &'a self,
        group_id: &'a str,
        partitions: Option<&'a [TopicPartition]>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let request = ForgetSharePartitions {
                group_id: group_id.to_string(),
                partitions: partitions.map(|partitions| {
                    partitions
                        .iter()
                        .map(|p| (p.topic.clone(), p.partition))
                        .collect()
                }),
            };
            let others: Vec<NodeId> = self
                .brokers()
                .into_iter()
                .map(|b| b.node_id)
                .filter(|&id| id != self.node_id())
                .collect();
            let calls = others.into_iter().map(|node_id| {
                let request = &request;
                async move {
                    let answer: Result<(), _> = self
                        .node
                        .transport()
                        .request(
                            node_id,
                            GroupId::Broker,
                            RpcKind::ForgetSharePartitions,
                            request,
                            Some(RELOAD_WAIT_MAX),
                        )
                        .await;
                    if let Err(error) = answer {
                        tracing::warn!(node_id, %error, group_id, "a node did not hear of changed share states");
                    }
                }
            });
            futures::future::join_all(calls).await;
        })
    }
}
