//! Answers to requests at a version the codec knows but Sluice does not advertise (for example
//! Produce v13, which names topics by id): the API's own response shape with every error code
//! set to UNSUPPORTED_VERSION, as Kafka's `getErrorResponse` does. APIs Sluice does not
//! implement at all have no response we could shape, so their connection is closed instead.

use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;

pub fn unsupported_version_response(request: RequestKind, version: i16) -> Option<ResponseKind> {
    let code = ResponseError::UnsupportedVersion.code();
    let response = match request {
        RequestKind::Produce(r) => ResponseKind::Produce(
            ProduceResponse::default().with_responses(
                r.topic_data
                    .into_iter()
                    .map(|t| {
                        produce_response::TopicProduceResponse::default()
                            .with_name(t.name)
                            .with_topic_id(t.topic_id)
                            .with_partition_responses(
                                t.partition_data
                                    .iter()
                                    .map(|p| {
                                        produce_response::PartitionProduceResponse::default()
                                            .with_index(p.index)
                                            .with_error_code(code)
                                            .with_base_offset(-1)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        RequestKind::Fetch(r) => ResponseKind::Fetch(
            FetchResponse::default().with_error_code(code).with_responses(
                r.topics
                    .into_iter()
                    .map(|t| {
                        fetch_response::FetchableTopicResponse::default()
                            .with_topic(t.topic)
                            .with_topic_id(t.topic_id)
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        fetch_response::PartitionData::default()
                                            .with_partition_index(p.partition)
                                            .with_error_code(code)
                                            .with_high_watermark(-1)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        RequestKind::ListOffsets(r) => ResponseKind::ListOffsets(
            ListOffsetsResponse::default().with_topics(
                r.topics
                    .into_iter()
                    .map(|t| {
                        list_offsets_response::ListOffsetsTopicResponse::default().with_name(t.name).with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    list_offsets_response::ListOffsetsPartitionResponse::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(code)
                                })
                                .collect(),
                        )
                    })
                    .collect(),
            ),
        ),
        RequestKind::Metadata(_) => ResponseKind::Metadata(MetadataResponse::default().with_error_code(code)),
        RequestKind::OffsetCommit(r) => ResponseKind::OffsetCommit(
            OffsetCommitResponse::default().with_topics(
                r.topics
                    .into_iter()
                    .map(|t| {
                        offset_commit_response::OffsetCommitResponseTopic::default()
                            .with_name(t.name)
                            .with_topic_id(t.topic_id)
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        offset_commit_response::OffsetCommitResponsePartition::default()
                                            .with_partition_index(p.partition_index)
                                            .with_error_code(code)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        RequestKind::OffsetFetch(r) => ResponseKind::OffsetFetch(
            OffsetFetchResponse::default().with_error_code(if version < 8 { code } else { 0 }).with_groups(
                r.groups
                    .into_iter()
                    .map(|g| offset_fetch_response::OffsetFetchResponseGroup::default().with_group_id(g.group_id).with_error_code(code))
                    .collect(),
            ),
        ),
        RequestKind::FindCoordinator(r) => ResponseKind::FindCoordinator(
            // The top-level error exists up to v3, the per-key list from v4.
            FindCoordinatorResponse::default().with_error_code(if version < 4 { code } else { 0 }).with_coordinators(
                r.coordinator_keys
                    .into_iter()
                    .map(|key| find_coordinator_response::Coordinator::default().with_key(key).with_error_code(code))
                    .collect(),
            ),
        ),
        RequestKind::DescribeGroups(r) => ResponseKind::DescribeGroups(
            DescribeGroupsResponse::default().with_groups(
                r.groups
                    .into_iter()
                    .map(|g| describe_groups_response::DescribedGroup::default().with_group_id(g).with_error_code(code))
                    .collect(),
            ),
        ),
        RequestKind::ListGroups(_) => ResponseKind::ListGroups(ListGroupsResponse::default().with_error_code(code)),
        RequestKind::InitProducerId(_) => ResponseKind::InitProducerId(
            InitProducerIdResponse::default()
                .with_error_code(code)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        ),
        RequestKind::AlterPartitionReassignments(_) => ResponseKind::AlterPartitionReassignments(
            AlterPartitionReassignmentsResponse::default().with_error_code(code),
        ),
        // Transactions of KIP-890's version 2 (EndTxn v5, AddOffsetsToTxn v4, TxnOffsetCommit v5).
        RequestKind::AddOffsetsToTxn(_) => ResponseKind::AddOffsetsToTxn(AddOffsetsToTxnResponse::default().with_error_code(code)),
        RequestKind::EndTxn(_) => ResponseKind::EndTxn(EndTxnResponse::default().with_error_code(code)),
        RequestKind::TxnOffsetCommit(r) => ResponseKind::TxnOffsetCommit(
            TxnOffsetCommitResponse::default().with_topics(
                r.topics
                    .into_iter()
                    .map(|t| {
                        txn_offset_commit_response::TxnOffsetCommitResponseTopic::default().with_name(t.name).with_partitions(
                            t.partitions
                                .into_iter()
                                .map(|p| txn_offset_commit_response::TxnOffsetCommitResponsePartition::default().with_partition_index(p.partition_index).with_error_code(code))
                                .collect(),
                        )
                    })
                    .collect(),
            ),
        ),
        _ => return None,
    };
    Some(response)
}
