//! Requests one node's broker serves for another over the cluster transport
//! ([`GroupId::Broker`]): a transaction coordinator's markers for the partitions this node
//! leads, and a share group's coordinator telling partition leaders to load share partitions
//! again after AlterShareGroupOffsets or DeleteShareGroupOffsets changed their stored states.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sluice_cluster::transport::frame::{decode_body, encode_body};
use sluice_cluster::transport::{GroupDispatcher, RemoteFailure, RpcKind};
use sluice_cluster::GroupId;
use sluice_log::TransactionResult;

use super::transactions::{MarkerAnswer, MarkerRequest, MARKER_WAIT_MAX};
use super::ClusterBroker;
use crate::group_coordinator::TopicPartition;

/// Largest request or answer (they are small).
pub(super) const FRAME_BYTES_MAX: usize = 1 << 20;

/// Share partitions a node must load again from the stored states.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ForgetSharePartitions {
    pub(super) group_id: String,
    /// `(topic, partition)`; `None`: every share partition of the group.
    pub(super) partitions: Option<Vec<(String, i32)>>,
}

impl ClusterBroker {
    /// Serves other nodes' requests to this node's broker.
    pub(super) fn serve_broker_requests(self: &Arc<Self>) {
        self.node.transport().register_dispatcher(
            GroupId::Broker,
            Arc::new(BrokerRequests {
                cluster: Arc::downgrade(self),
            }),
        );
    }
}

struct BrokerRequests {
    cluster: Weak<ClusterBroker>,
}

impl GroupDispatcher for BrokerRequests {
    fn dispatch(
        &self,
        kind: RpcKind,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, RemoteFailure>> {
        let cluster = self.cluster.clone();
        Box::pin(async move {
            let bad_request = |e: sluice_cluster::transport::frame::FrameError| {
                RemoteFailure::BadRequest(e.to_string())
            };
            let bad_response = |e: sluice_cluster::transport::frame::FrameError| {
                RemoteFailure::BadResponse(e.to_string())
            };
            match kind {
                RpcKind::WriteTransactionMarker => {
                    let request: MarkerRequest =
                        decode_body(&body, FRAME_BYTES_MAX).map_err(bad_request)?;
                    let answer: MarkerAnswer = match cluster
                        .upgrade()
                        .and_then(|cluster| cluster.replica(request.topic_id, request.partition))
                    {
                        None => Err("no replica of the partition on this node".into()),
                        Some(replica) => replica
                            .write_transaction_marker(
                                request.producer_id,
                                request.producer_epoch,
                                if request.commit {
                                    TransactionResult::Commit
                                } else {
                                    TransactionResult::Abort
                                },
                                request.coordinator_epoch,
                                MARKER_WAIT_MAX,
                            )
                            .await
                            .map_err(|e| e.to_string()),
                    };
                    encode_body(&answer, FRAME_BYTES_MAX).map_err(bad_response)
                }
                RpcKind::ForgetSharePartitions => {
                    let request: ForgetSharePartitions =
                        decode_body(&body, FRAME_BYTES_MAX).map_err(bad_request)?;
                    if let Some(cluster) = cluster.upgrade() {
                        // The coordinator committed the change before it asked: apply it here
                        // first, or a fetch right after would load the old state again.
                        if let Err(error) = cluster.node.catch_up().await {
                            tracing::warn!(%error, "changed share states not applied here yet");
                        }
                        let partitions: Option<Vec<TopicPartition>> =
                            request.partitions.map(|partitions| {
                                partitions
                                    .into_iter()
                                    .map(|(topic, partition)| TopicPartition { topic, partition })
                                    .collect()
                            });
                        cluster
                            .broker
                            .group_coordinator()
                            .forget_loaded_share_partitions(
                                &request.group_id,
                                partitions.as_deref(),
                            );
                    }
                    encode_body(&(), FRAME_BYTES_MAX).map_err(bad_response)
                }
                other => Err(RemoteFailure::Unsupported(other)),
            }
        })
    }
}
