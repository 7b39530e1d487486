//! Transactions (KIP-98): AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit and EndTxn for
//! transactional producers, DescribeTransactions and ListTransactions for the admin tools, and
//! WriteTxnMarkers, by which `kafka-transactions abort` ends a hanging transaction (KIP-664).
//! The coordinator (`sluice_broker::transaction_coordinator`) holds the state; this module
//! translates. In a cluster the coordinator is the metadata group's leader; other nodes answer
//! NOT_COORDINATOR, and clients look the coordinator up again.

use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_transactions_response::{self, TopicData};
use kafka_protocol::messages::list_transactions_response;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, DescribeTransactionsRequest, DescribeTransactionsResponse,
    EndTxnRequest, EndTxnResponse, ListTransactionsRequest, ListTransactionsResponse, ProducerId,
    TopicName, TransactionalId, TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};
use kafka_protocol::messages::{WriteTxnMarkersRequest, WriteTxnMarkersResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_broker::group_coordinator::{OffsetAndMetadata, TopicPartition};
use sluice_broker::{BrokerError, PendingOffset, TransactionMetadata, TransactionalProducer};
use sluice_log::TransactionResult;

use crate::error_codes::{broker_error_code, group_error_code};
use crate::handlers::cluster::replication_error_code;
use crate::RequestContext;

/// How long WriteTxnMarkers waits for a marker to commit in a cluster.
const MARKER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// PRODUCER_FENCED exists from these versions on (KIP-588); older clients get
/// INVALID_PRODUCER_EPOCH for it, as Kafka answers them.
const PRODUCER_FENCED_VERSION_MIN: i16 = 2;

/// The error code of `error` for a client speaking `version`.
fn transaction_error_code(error: &BrokerError, version: i16) -> i16 {
    match error {
        BrokerError::ProducerFenced(_) if version < PRODUCER_FENCED_VERSION_MIN => {
            ResponseError::InvalidProducerEpoch.code()
        }
        error => broker_error_code(error),
    }
}

/// Whether `topic` has partition `index`: this node's topics, or in a cluster the metadata
/// group's.
fn partition_exists(ctx: &RequestContext, topic: &str, index: i32) -> bool {
    match &ctx.cluster {
        Some(cluster) => cluster
            .topic(topic)
            .is_some_and(|t| index >= 0 && (index as usize) < t.assignments.len()),
        None => ctx
            .broker
            .topic(topic)
            .and_then(|t| t.partition(index))
            .is_some(),
    }
}

pub async fn add_partitions_to_txn(
    ctx: &RequestContext,
    version: i16,
    request: AddPartitionsToTxnRequest,
) -> AddPartitionsToTxnResponse {
    if version <= 3 {
        let results = add_partitions(
            ctx,
            version,
            &request.v3_and_below_transactional_id,
            request.v3_and_below_producer_id.0,
            request.v3_and_below_producer_epoch,
            &request.v3_and_below_topics,
        )
        .await;
        return AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results);
    }
    // v4+: a batch of transactions (brokers verifying for each other); verify_only asks
    // whether the partitions are in the transaction without adding them.
    let mut transactions = Vec::with_capacity(request.transactions.len());
    for transaction in &request.transactions {
        let results = if transaction.verify_only {
            verify_partitions(ctx, transaction)
        } else {
            add_partitions(
                ctx,
                version,
                &transaction.transactional_id,
                transaction.producer_id.0,
                transaction.producer_epoch,
                &transaction.topics,
            )
            .await
        };
        transactions.push(
            AddPartitionsToTxnResult::default()
                .with_transactional_id(transaction.transactional_id.clone())
                .with_topic_results(results),
        );
    }
    AddPartitionsToTxnResponse::default().with_results_by_transaction(transactions)
}

fn partition_results(
    topics: &[AddPartitionsToTxnTopic],
    code_of: impl Fn(&str, i32) -> i16,
) -> Vec<AddPartitionsToTxnTopicResult> {
    topics
        .iter()
        .map(|topic| {
            AddPartitionsToTxnTopicResult::default()
                .with_name(topic.name.clone())
                .with_results_by_partition(
                    topic
                        .partitions
                        .iter()
                        .map(|&index| {
                            AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(index)
                                .with_partition_error_code(code_of(topic.name.as_str(), index))
                        })
                        .collect(),
                )
        })
        .collect()
}

async fn add_partitions(
    ctx: &RequestContext,
    version: i16,
    transactional_id: &TransactionalId,
    producer_id: i64,
    producer_epoch: i16,
    topics: &[AddPartitionsToTxnTopic],
) -> Vec<AddPartitionsToTxnTopicResult> {
    // As Kafka: unknown partitions fail the request; the others are not attempted.
    let exists = |topic: &str, index: i32| partition_exists(ctx, topic, index);
    if topics
        .iter()
        .any(|t| t.partitions.iter().any(|&p| !exists(t.name.as_str(), p)))
    {
        return partition_results(topics, |topic, index| {
            if exists(topic, index) {
                ResponseError::OperationNotAttempted.code()
            } else {
                ResponseError::UnknownTopicOrPartition.code()
            }
        });
    }
    let partitions: Vec<(String, i32)> = topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|&p| (t.name.to_string(), p)))
        .collect();
    let producer = TransactionalProducer {
        transactional_id,
        producer_id,
        producer_epoch,
    };
    let code = match ctx
        .broker
        .transaction_coordinator()
        .add_partitions(producer, &partitions)
        .await
    {
        Ok(()) => 0,
        Err(error) => {
            tracing::debug!(transactional_id = %transactional_id.as_str(), %error, "AddPartitionsToTxn refused");
            transaction_error_code(&error, version)
        }
    };
    partition_results(topics, |_, _| code)
}

/// verify_only: each partition is in the open transaction, or INVALID_TXN_STATE.
fn verify_partitions(
    ctx: &RequestContext,
    transaction: &kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTransaction,
) -> Vec<AddPartitionsToTxnTopicResult> {
    let described = ctx
        .broker
        .transaction_coordinator()
        .describe(&[transaction.transactional_id.to_string()]);
    let metadata = described.into_iter().next().and_then(|(_, m)| m);
    partition_results(&transaction.topics, |topic, index| match &metadata {
        Some(m)
            if m.producer_id == transaction.producer_id.0
                && m.producer_epoch == transaction.producer_epoch
                && m.partitions.contains(&(topic.to_string(), index)) =>
        {
            0
        }
        _ => ResponseError::InvalidTxnState.code(),
    })
}

pub async fn add_offsets_to_txn(
    ctx: &RequestContext,
    version: i16,
    request: AddOffsetsToTxnRequest,
) -> AddOffsetsToTxnResponse {
    let producer = TransactionalProducer {
        transactional_id: &request.transactional_id,
        producer_id: request.producer_id.0,
        producer_epoch: request.producer_epoch,
    };
    let code = match ctx
        .broker
        .transaction_coordinator()
        .add_offsets(producer, &request.group_id)
        .await
    {
        Ok(()) => 0,
        Err(error) => transaction_error_code(&error, version),
    };
    AddOffsetsToTxnResponse::default().with_error_code(code)
}

pub async fn txn_offset_commit(
    ctx: &RequestContext,
    version: i16,
    request: TxnOffsetCommitRequest,
) -> TxnOffsetCommitResponse {
    let respond = |code_of: &dyn Fn(&str, i32) -> i16| {
        let topics = request
            .topics
            .iter()
            .map(|topic| {
                TxnOffsetCommitResponseTopic::default()
                    .with_name(topic.name.clone())
                    .with_partitions(
                        topic
                            .partitions
                            .iter()
                            .map(|p| {
                                TxnOffsetCommitResponsePartition::default()
                                    .with_partition_index(p.partition_index)
                                    .with_error_code(code_of(
                                        topic.name.as_str(),
                                        p.partition_index,
                                    ))
                            })
                            .collect(),
                    )
            })
            .collect();
        TxnOffsetCommitResponse::default().with_topics(topics)
    };
    let exists = |topic: &str, index: i32| partition_exists(ctx, topic, index);
    let mut offsets = Vec::new();
    for topic in &request.topics {
        for partition in &topic.partitions {
            if exists(topic.name.as_str(), partition.partition_index) {
                offsets.push((
                    TopicPartition {
                        topic: topic.name.to_string(),
                        partition: partition.partition_index,
                    },
                    OffsetAndMetadata {
                        offset: partition.committed_offset,
                        leader_epoch: if version >= 2 {
                            partition.committed_leader_epoch
                        } else {
                            -1
                        },
                        metadata: partition
                            .committed_metadata
                            .as_ref()
                            .map(|m| m.to_string())
                            .unwrap_or_default(),
                        commit_timestamp_ms: 0,
                    },
                ));
            }
        }
    }
    // v3+ may name the member: a zombie of an older generation is refused as in OffsetCommit.
    let per_offset = if version >= 3 {
        ctx.broker
            .group_coordinator()
            .validate_transactional_commit(
                &request.group_id,
                &request.member_id,
                request.group_instance_id.as_deref(),
                request.generation_id,
                &offsets,
            )
    } else {
        ctx.broker
            .group_coordinator()
            .validate_transactional_commit(&request.group_id, "", None, -1, &offsets)
    };
    let per_offset = match per_offset {
        Ok(results) => results,
        Err(error) => {
            let code = group_error_code(&error);
            return respond(&|_, _| code);
        }
    };
    let mut refused = std::collections::HashMap::new();
    let mut pending = Vec::with_capacity(offsets.len());
    for ((partition, offset), result) in offsets.into_iter().zip(per_offset) {
        match result {
            Ok(()) => pending.push(PendingOffset {
                topic: partition.topic,
                partition: partition.partition,
                offset: offset.offset,
                leader_epoch: offset.leader_epoch,
                metadata: offset.metadata,
            }),
            Err(error) => {
                refused.insert(
                    (partition.topic, partition.partition),
                    group_error_code(&error),
                );
            }
        }
    }
    let producer = TransactionalProducer {
        transactional_id: &request.transactional_id,
        producer_id: request.producer_id.0,
        producer_epoch: request.producer_epoch,
    };
    let outcome = ctx
        .broker
        .transaction_coordinator()
        .add_pending_offsets(producer, &request.group_id, pending)
        .await;
    let code = match outcome {
        Ok(()) => 0,
        // The group coordinator's answer to a zombie is INVALID_PRODUCER_EPOCH at every version.
        Err(BrokerError::ProducerFenced(_)) => ResponseError::InvalidProducerEpoch.code(),
        Err(error) => broker_error_code(&error),
    };
    respond(&|topic, index| {
        if !exists(topic, index) {
            ResponseError::UnknownTopicOrPartition.code()
        } else {
            refused
                .get(&(topic.to_string(), index))
                .copied()
                .unwrap_or(code)
        }
    })
}

pub async fn end_txn(ctx: &RequestContext, version: i16, request: EndTxnRequest) -> EndTxnResponse {
    let result = if request.committed {
        TransactionResult::Commit
    } else {
        TransactionResult::Abort
    };
    let producer = TransactionalProducer {
        transactional_id: &request.transactional_id,
        producer_id: request.producer_id.0,
        producer_epoch: request.producer_epoch,
    };
    // v5 is transaction version 2: the transaction ends under the next epoch, which the
    // response gives the producer.
    match ctx
        .broker
        .transaction_coordinator()
        .end_transaction(&ctx.broker, producer, result, version >= 5)
        .await
    {
        Ok((producer_id, producer_epoch)) => EndTxnResponse::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(producer_epoch),
        Err(error) => {
            tracing::debug!(transactional_id = %request.transactional_id.as_str(), %error, "EndTxn refused");
            EndTxnResponse::default()
                .with_error_code(transaction_error_code(&error, version))
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
        }
    }
}

fn topic_data(metadata: &TransactionMetadata) -> Vec<TopicData> {
    let mut topics: Vec<TopicData> = Vec::new();
    for (topic, index) in &metadata.partitions {
        match topics.last_mut() {
            Some(last) if last.topic.as_str() == topic => last.partitions.push(*index),
            _ => topics.push(
                TopicData::default()
                    .with_topic(TopicName(StrBytes::from_string(topic.clone())))
                    .with_partitions(vec![*index]),
            ),
        }
    }
    topics
}

pub async fn describe_transactions(
    ctx: &RequestContext,
    _version: i16,
    request: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    let ids: Vec<String> = request
        .transactional_ids
        .iter()
        .map(|id| id.to_string())
        .collect();
    let coordinator = ctx.broker.transaction_coordinator();
    // In a cluster only the coordinator (the metadata leader) answers, from a linearizable
    // read; the admin client sends the request to the node FindCoordinator named.
    let serving = coordinator.check_serving().await;
    let described = coordinator.describe(&ids);
    let states = described
        .into_iter()
        .map(|(id, metadata)| {
            let state = describe_transactions_response::TransactionState::default()
                .with_transactional_id(TransactionalId(StrBytes::from_string(id)));
            if let Err(error) = &serving {
                return state
                    .with_error_code(broker_error_code(error))
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1)
                    .with_transaction_start_time_ms(-1);
            }
            match metadata {
                None => state
                    .with_error_code(ResponseError::TransactionalIdNotFound.code())
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1)
                    .with_transaction_start_time_ms(-1),
                Some(metadata) => state
                    .with_transaction_state(StrBytes::from_static_str(metadata.state.name()))
                    .with_transaction_timeout_ms(metadata.timeout_ms)
                    .with_transaction_start_time_ms(if metadata.started_ms > 0 {
                        metadata.started_ms
                    } else {
                        -1
                    })
                    .with_producer_id(ProducerId(metadata.producer_id))
                    .with_producer_epoch(metadata.producer_epoch)
                    .with_topics(topic_data(&metadata)),
            }
        })
        .collect();
    DescribeTransactionsResponse::default().with_transaction_states(states)
}

/// Kafka's state names, which ListTransactions filters by.
const STATE_NAMES: &[&str] = &[
    "Empty",
    "Ongoing",
    "PrepareCommit",
    "PrepareAbort",
    "CompleteCommit",
    "CompleteAbort",
    "Dead",
    "PrepareEpochFence",
];

pub async fn list_transactions(
    ctx: &RequestContext,
    version: i16,
    request: ListTransactionsRequest,
) -> ListTransactionsResponse {
    let unknown_state_filters: Vec<StrBytes> = request
        .state_filters
        .iter()
        .filter(|s| !STATE_NAMES.contains(&s.as_str()))
        .cloned()
        .collect();
    let pattern = match (version >= 2, request.transactional_id_pattern.as_deref()) {
        (true, Some(pattern)) if !pattern.is_empty() => {
            match regex::Regex::new(&format!("^(?:{pattern})$")) {
                Ok(regex) => Some(regex),
                Err(_) => {
                    return ListTransactionsResponse::default()
                        .with_error_code(ResponseError::InvalidRegularExpression.code())
                }
            }
        }
        _ => None,
    };
    let now = sluice_broker::now_ms();
    let coordinator = ctx.broker.transaction_coordinator();
    // The admin client asks every broker and merges the answers: in a cluster the coordinator
    // (the metadata leader) lists every transactional id and the other nodes none.
    let all = match coordinator.check_serving().await {
        Ok(()) => coordinator.list(),
        Err(_) => Vec::new(),
    };
    let states = all
        .into_iter()
        .filter(|t| {
            let m = &t.metadata;
            (request.state_filters.is_empty()
                || request.state_filters.iter().any(|s| s.as_str() == m.state.name()))
                && (request.producer_id_filters.is_empty()
                    || request.producer_id_filters.iter().any(|p| p.0 == m.producer_id))
                // v1: only transactions running longer than this many ms.
                && (version < 1
                    || request.duration_filter < 0
                    || (m.started_ms > 0 && now - m.started_ms > request.duration_filter))
                && pattern.as_ref().is_none_or(|r| r.is_match(&t.transactional_id))
        })
        .map(|t| {
            list_transactions_response::TransactionState::default()
                .with_transactional_id(TransactionalId(StrBytes::from_string(t.transactional_id)))
                .with_producer_id(ProducerId(t.metadata.producer_id))
                .with_transaction_state(StrBytes::from_static_str(t.metadata.state.name()))
        })
        .collect();
    ListTransactionsResponse::default()
        .with_unknown_state_filters(unknown_state_filters)
        .with_transaction_states(states)
}

/// WriteTxnMarkers: writes each marker to the partitions named, as a coordinator does. Kafka's
/// brokers send it to each other; its admin client sends it to abort a hanging transaction
/// (`kafka-transactions abort`, with the producer id and epoch DescribeProducers showed). A
/// marker of an epoch older than the partition knows for the producer is INVALID_PRODUCER_EPOCH,
/// as Kafka refuses it.
pub async fn write_txn_markers(
    ctx: &RequestContext,
    _version: i16,
    request: WriteTxnMarkersRequest,
) -> WriteTxnMarkersResponse {
    let mut markers = Vec::with_capacity(request.markers.len());
    for marker in request.markers {
        let result = if marker.transaction_result {
            TransactionResult::Commit
        } else {
            TransactionResult::Abort
        };
        let mut topics = Vec::with_capacity(marker.topics.len());
        for topic in marker.topics {
            let mut partitions = Vec::with_capacity(topic.partition_indexes.len());
            for index in topic.partition_indexes {
                let written = write_marker(
                    ctx,
                    topic.name.as_str(),
                    index,
                    (marker.producer_id.0, marker.producer_epoch),
                    result,
                    marker.coordinator_epoch,
                )
                .await;
                partitions.push(
                    WritableTxnMarkerPartitionResult::default()
                        .with_partition_index(index)
                        .with_error_code(written.err().unwrap_or(0)),
                );
            }
            topics.push(
                WritableTxnMarkerTopicResult::default()
                    .with_name(topic.name)
                    .with_partitions(partitions),
            );
        }
        markers.push(
            WritableTxnMarkerResult::default()
                .with_producer_id(marker.producer_id)
                .with_topics(topics),
        );
    }
    WriteTxnMarkersResponse::default().with_markers(markers)
}

/// One marker on one partition; the error code when it is not written.
async fn write_marker(
    ctx: &RequestContext,
    topic: &str,
    index: i32,
    (producer_id, producer_epoch): (i64, i16),
    result: TransactionResult,
    coordinator_epoch: i32,
) -> Result<(), i16> {
    if let Some(cluster) = &ctx.cluster {
        // The partition's leader writes it through the partition's Raft group.
        let replica = cluster
            .replica_for(topic, index)
            .map_err(|e| replication_error_code(&e))?;
        let producers = replica
            .active_producers()
            .map_err(|e| broker_error_code(&e))?;
        if producers
            .iter()
            .any(|p| p.producer_id == producer_id && p.epoch > producer_epoch)
        {
            return Err(ResponseError::InvalidProducerEpoch.code());
        }
        return replica
            .write_transaction_marker(
                producer_id,
                producer_epoch,
                result,
                coordinator_epoch,
                MARKER_TIMEOUT,
            )
            .await
            .map(|_| ())
            .map_err(|e| replication_error_code(&e));
    }
    let partition = ctx
        .broker
        .topic(topic)
        .and_then(|t| t.partition(index))
        .ok_or(ResponseError::UnknownTopicOrPartition.code())?;
    let newer_epoch = partition
        .active_producers()
        .iter()
        .any(|p| p.producer_id == producer_id && p.epoch > producer_epoch);
    if newer_epoch {
        return Err(ResponseError::InvalidProducerEpoch.code());
    }
    partition
        .write_transaction_marker(producer_id, producer_epoch, result, coordinator_epoch)
        .await
        .map(|_| ())
        .map_err(|error| broker_error_code(&error))
}
