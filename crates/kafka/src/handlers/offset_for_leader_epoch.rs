//! OffsetForLeaderEpoch (KIP-320): the end offset of a leader epoch, so a consumer can tell
//! whether the log it read was truncated. One node has a single epoch, 0, which ends at the
//! log end; a cluster answers from each partition's term history (see `cluster`).

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use kafka_protocol::ResponseError;

use crate::RequestContext;

pub async fn offset_for_leader_epoch(
    ctx: &RequestContext,
    _version: i16,
    request: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    if let Some(cluster) = &ctx.cluster {
        return super::cluster::offset_for_leader_epoch(cluster, request).await;
    }
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let found = ctx.broker.topic(topic.topic.as_str());
            let partitions = topic
                .partitions
                .into_iter()
                .map(|p| {
                    let result = EpochEndOffset::default().with_partition(p.partition);
                    let Some(partition) = found.as_ref().and_then(|t| t.partition(p.partition))
                    else {
                        return result
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            .with_leader_epoch(-1)
                            .with_end_offset(-1);
                    };
                    if p.current_leader_epoch > 0 {
                        return result
                            .with_error_code(ResponseError::UnknownLeaderEpoch.code())
                            .with_leader_epoch(-1)
                            .with_end_offset(-1);
                    }
                    // Epoch 0 is the only one and the latest: it ends at the log end. Anything
                    // newer is undefined.
                    if p.leader_epoch == 0 {
                        result
                            .with_leader_epoch(0)
                            .with_end_offset(partition.log_end_offset())
                    } else {
                        result.with_leader_epoch(-1).with_end_offset(-1)
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic)
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
