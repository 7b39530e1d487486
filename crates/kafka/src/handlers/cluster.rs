//! The data and admin requests in cluster mode (`sluice serve --peers`): partitions are Raft
//! groups ([`sluice_broker::replication`]). Produce, Fetch, ListOffsets, DeleteRecords and
//! OffsetForLeaderEpoch are served by a partition's leader only (others answer
//! NOT_LEADER_OR_FOLLOWER, as Kafka without follower fetching); Metadata lists every broker
//! and each partition's Raft leader, term (leader epoch), voters and in-sync voters; topic
//! administration goes through the metadata group.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteRecordsRequest, DeleteRecordsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    MetadataRequest, MetadataResponse, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse,
    ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_broker::replication::{ClusterBroker, Replica, ReplicationError};
use sluice_broker::{BrokerError, IsolationLevel};
use sluice_cluster::metadata::TopicMetadata;

use crate::error_codes::broker_error_code;
use crate::handlers::fetch::aborted_transactions;
use crate::handlers::list_offsets;
use crate::RequestContext;

/// Upper bound on how long one fetch may park the connection.
const WAIT_MS_MAX: i32 = 30_000;

pub fn replication_error_code(error: &ReplicationError) -> i16 {
    match error {
        ReplicationError::Broker(error) => broker_error_code(error),
        ReplicationError::NotLeader => ResponseError::NotLeaderOrFollower.code(),
        ReplicationError::LeaderNotAvailable => ResponseError::LeaderNotAvailable.code(),
        ReplicationError::NotEnoughReplicas => ResponseError::NotEnoughReplicas.code(),
        ReplicationError::FencedLeaderEpoch => ResponseError::FencedLeaderEpoch.code(),
        ReplicationError::UnknownLeaderEpoch => ResponseError::UnknownLeaderEpoch.code(),
        ReplicationError::Timeout => ResponseError::RequestTimedOut.code(),
        ReplicationError::Raft(_) => ResponseError::NotLeaderOrFollower.code(),
    }
}

fn message(error: &ReplicationError) -> Option<StrBytes> {
    Some(StrBytes::from_string(error.to_string()))
}

pub async fn produce(
    ctx: &RequestContext,
    cluster: &Arc<ClusterBroker>,
    version: i16,
    request: ProduceRequest,
) -> Option<ProduceResponse> {
    if !(-1..=1).contains(&request.acks) {
        let responses = request
            .topic_data
            .into_iter()
            .map(|t| {
                TopicProduceResponse::default()
                    .with_name(t.name)
                    .with_partition_responses(
                        t.partition_data
                            .iter()
                            .map(|p| {
                                produce_error(
                                    p.index,
                                    ResponseError::InvalidRequiredAcks.code(),
                                    None,
                                )
                            })
                            .collect(),
                    )
            })
            .collect();
        return Some(ProduceResponse::default().with_responses(responses));
    }
    let timeout = Duration::from_millis(request.timeout_ms.clamp(1, 300_000) as u64);
    let acks_all = request.acks == -1;
    let has_transactional_id = request.transactional_id.is_some();
    let mut topic_futures = Vec::with_capacity(request.topic_data.len());
    for topic_data in request.topic_data {
        let name = topic_data.name.clone();
        let topic = cluster.topic_or_auto_create(name.as_str()).await;
        let min_insync = if acks_all {
            cluster.min_insync_replicas(name.as_str())
        } else {
            1
        };
        let mut partition_futures = Vec::with_capacity(topic_data.partition_data.len());
        for partition_data in topic_data.partition_data {
            let index = partition_data.index;
            let replica = match &topic {
                Ok(_) => cluster.replica_for(name.as_str(), index),
                Err(error) => Err(ReplicationError::Broker(
                    BrokerError::UnknownTopicOrPartition(error.to_string()),
                )),
            };
            let topic_error = topic.as_ref().err().map(replication_error_code);
            partition_futures.push(async move {
                if let Some(code) = topic_error {
                    return produce_error(index, code, None);
                }
                let replica = match replica {
                    Ok(replica) => replica,
                    Err(error) => {
                        return produce_error(index, replication_error_code(&error), message(&error))
                    }
                };
                let Some(records) = partition_data.records else {
                    return produce_error(
                        index,
                        ResponseError::CorruptMessage.code(),
                        Some("no records".into()),
                    );
                };
                // As Kafka: transactional batches only from a producer naming its
                // transactional id.
                if !has_transactional_id
                    && sluice_log::BatchHeader::parse(&records).is_ok_and(|h| h.is_transactional())
                {
                    return produce_error(
                        index,
                        ResponseError::TransactionalIdAuthorizationFailed.code(),
                        Some("transactional records need the producer's transactional id".into()),
                    );
                }
                match replica.produce(records, min_insync, timeout).await {
                    Ok(outcome) => PartitionProduceResponse::default()
                        .with_index(index)
                        .with_base_offset(outcome.base_offset)
                        .with_log_append_time_ms(outcome.log_append_time_ms)
                        .with_log_start_offset(outcome.log_start_offset),
                    Err(error) => {
                        tracing::debug!(topic = replica.topic(), partition = index, %error, "produce refused");
                        produce_error(index, replication_error_code(&error), message(&error))
                    }
                }
            });
        }
        topic_futures.push(async move {
            TopicProduceResponse::default()
                .with_name(name)
                .with_partition_responses(futures::future::join_all(partition_futures).await)
        });
    }
    let responses = futures::future::join_all(topic_futures).await;
    if request.acks == 0 {
        return None;
    }
    let _ = ctx;
    let mut response = ProduceResponse::default().with_responses(responses);
    if version < 8 {
        for topic in &mut response.responses {
            for partition in &mut topic.partition_responses {
                partition.error_message = None;
            }
        }
    }
    Some(response)
}

fn produce_error(
    index: i32,
    error_code: i16,
    message: Option<StrBytes>,
) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(error_code)
        .with_base_offset(-1)
        .with_log_append_time_ms(-1)
        .with_log_start_offset(-1)
        .with_error_message(message)
}

pub async fn metadata(
    ctx: &RequestContext,
    cluster: &Arc<ClusterBroker>,
    version: i16,
    request: MetadataRequest,
) -> MetadataResponse {
    let include_cluster_operations = request.include_cluster_authorized_operations;
    let include_topic_operations = request.include_topic_authorized_operations;
    let all_topics = match &request.topics {
        None => true,
        Some(topics) => topics.is_empty() && version == 0,
    };
    let allow_auto_create = version < 4 || request.allow_auto_topic_creation;
    let mut topics = Vec::new();
    if all_topics {
        for topic in cluster.metadata().topics.values() {
            topics.push(describe_topic(cluster, topic));
        }
    } else {
        for requested in request.topics.unwrap_or_default() {
            // The Java client asks by id with an empty name (not a null one).
            let requested_name = requested.name.as_ref().filter(|name| !name.is_empty());
            let name = match (requested_name, requested.topic_id.is_nil()) {
                (Some(name), _) => name.to_string(),
                (None, false) => match cluster.metadata().topic_by_id(requested.topic_id) {
                    Some(topic) => topic.name.clone(),
                    None => {
                        topics.push(
                            MetadataResponseTopic::default()
                                .with_topic_id(requested.topic_id)
                                .with_error_code(ResponseError::UnknownTopicId.code()),
                        );
                        continue;
                    }
                },
                (None, true) => {
                    topics.push(
                        MetadataResponseTopic::default()
                            .with_error_code(ResponseError::InvalidTopicException.code()),
                    );
                    continue;
                }
            };
            let found = if allow_auto_create {
                cluster.topic_or_auto_create(&name).await
            } else {
                cluster.topic(&name).ok_or_else(|| {
                    ReplicationError::Broker(BrokerError::UnknownTopicOrPartition(name.clone()))
                })
            };
            match found {
                Ok(topic) => topics.push(describe_topic(cluster, &topic)),
                Err(error) => topics.push(
                    MetadataResponseTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string(name))))
                        .with_error_code(replication_error_code(&error)),
                ),
            }
        }
    }
    let mut known = cluster.brokers();
    // Until this node's registration is applied, it still names itself, so clients always
    // have a broker to talk to.
    if !known.iter().any(|b| b.node_id == cluster.node_id()) {
        known.push(sluice_broker::replication::BrokerEndpoint {
            node_id: cluster.node_id(),
            host: ctx.config.advertised_host.clone(),
            port: ctx.config.advertised_port,
        });
    }
    // Any node takes admin requests (it forwards them to the metadata leader), so while no
    // leader is known (or it has not registered yet) this node names itself: clients such as
    // librdkafka hold admin requests while the controller is unknown.
    let controller = cluster
        .controller()
        .filter(|leader| known.iter().any(|b| b.node_id == *leader))
        .unwrap_or_else(|| cluster.node_id());
    let brokers = known
        .into_iter()
        .map(|b| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.node_id as i32))
                .with_host(StrBytes::from_string(b.host))
                .with_port(b.port)
        })
        .collect();
    let controller = controller as i32;
    let response = MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(StrBytes::from_string(cluster_id(cluster))))
        .with_controller_id(BrokerId(controller))
        .with_topics(topics);
    super::metadata::with_authorized_operations(
        response,
        include_cluster_operations,
        include_topic_operations,
    )
}

/// The cluster's id: the same on every node (the metadata group's first member list is).
fn cluster_id(_cluster: &ClusterBroker) -> String {
    "sluice-cluster".to_string()
}

fn describe_topic(cluster: &ClusterBroker, topic: &TopicMetadata) -> MetadataResponseTopic {
    let partitions = (0..topic.assignments.len() as i32)
        .map(|index| {
            let view = cluster.partition_view(topic, index);
            let ids = |nodes: &[u64]| {
                nodes
                    .iter()
                    .map(|&n| BrokerId(n as i32))
                    .collect::<Vec<_>>()
            };
            MetadataResponsePartition::default()
                .with_partition_index(index)
                .with_error_code(if view.leader.is_some() {
                    0
                } else {
                    ResponseError::LeaderNotAvailable.code()
                })
                .with_leader_id(BrokerId(view.leader.map_or(-1, |l| l as i32)))
                .with_leader_epoch(view.leader_epoch)
                .with_replica_nodes(ids(&view.replicas))
                .with_isr_nodes(ids(&view.isr))
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(topic.name.clone()))))
        .with_topic_id(topic.topic_id)
        .with_is_internal(false)
        .with_partitions(partitions)
}

/// Fetch: each partition from its leader (this node or NOT_LEADER_OR_FOLLOWER), below the
/// high watermark, long-polling until `min_bytes` or `max_wait_ms`.
pub async fn fetch(
    ctx: &RequestContext,
    cluster: &Arc<ClusterBroker>,
    version: i16,
    request: FetchRequest,
) -> FetchResponse {
    let deadline =
        Instant::now() + Duration::from_millis(request.max_wait_ms.clamp(0, WAIT_MS_MAX) as u64);
    let response_bytes_max = if request.max_bytes <= 0 {
        ctx.config.fetch_bytes_max
    } else {
        (request.max_bytes as usize).min(ctx.config.fetch_bytes_max)
    };
    let min_bytes = request.min_bytes.max(0) as usize;
    let isolation = if request.isolation_level == 1 {
        IsolationLevel::ReadCommitted
    } else {
        IsolationLevel::ReadUncommitted
    };
    loop {
        let data_ready = ctx.broker.data_ready().notified();
        tokio::pin!(data_ready);
        data_ready.as_mut().enable();
        let mut bytes_total = 0usize;
        let mut any_error = false;
        let mut responses = Vec::with_capacity(request.topics.len());
        for topic in &request.topics {
            let meta = if version >= 13 {
                cluster.metadata().topic_by_id(topic.topic_id).cloned()
            } else {
                cluster.topic(topic.topic.as_str())
            };
            let mut partitions = Vec::with_capacity(topic.partitions.len());
            for p in &topic.partitions {
                let replica = match &meta {
                    None => Err(if version >= 13 {
                        ResponseError::UnknownTopicId.code()
                    } else {
                        ResponseError::UnknownTopicOrPartition.code()
                    }),
                    Some(meta) => cluster
                        .replica_for(&meta.name, p.partition)
                        .map_err(|e| replication_error_code(&e)),
                };
                let replica = match replica {
                    Ok(replica) => replica,
                    Err(code) => {
                        any_error = true;
                        partitions.push(fetch_error(p.partition, code));
                        continue;
                    }
                };
                let budget = response_bytes_max.saturating_sub(bytes_total);
                let bytes_max = (p.partition_max_bytes.max(0) as usize).min(budget);
                if bytes_max == 0 && bytes_total > 0 {
                    partitions.push(empty_fetch(p.partition, &replica));
                    continue;
                }
                match replica.fetch(p.fetch_offset, bytes_max, p.current_leader_epoch, isolation) {
                    Ok(fetched) if bytes_total > 0 && fetched.records.len() > bytes_max => {
                        partitions.push(empty_fetch(p.partition, &replica));
                    }
                    Ok(fetched) => {
                        bytes_total += fetched.records.len();
                        partitions.push(
                            PartitionData::default()
                                .with_partition_index(p.partition)
                                .with_high_watermark(fetched.high_watermark)
                                .with_last_stable_offset(fetched.last_stable_offset)
                                .with_log_start_offset(fetched.log_start_offset)
                                .with_aborted_transactions(Some(aborted_transactions(
                                    &fetched.aborted_transactions,
                                )))
                                .with_records(Some(fetched.records)),
                        );
                    }
                    Err(error) => {
                        any_error = true;
                        partitions.push(fetch_error(p.partition, replication_error_code(&error)));
                    }
                }
            }
            responses.push(
                FetchableTopicResponse::default()
                    .with_topic(topic.topic.clone())
                    .with_topic_id(topic.topic_id)
                    .with_partitions(partitions),
            );
        }
        let now = Instant::now();
        if bytes_total >= min_bytes || any_error || now >= deadline || request.topics.is_empty() {
            return FetchResponse::default().with_responses(responses);
        }
        if tokio::time::timeout(deadline - now, data_ready)
            .await
            .is_err()
        {
            continue;
        }
    }
}

fn empty_fetch(index: i32, replica: &Replica) -> PartitionData {
    let log = replica.log();
    PartitionData::default()
        .with_partition_index(index)
        .with_high_watermark(log.high_watermark())
        .with_last_stable_offset(
            replica
                .last_stable_offset()
                .unwrap_or_else(|_| log.high_watermark()),
        )
        .with_log_start_offset(log.log_start_offset())
        .with_aborted_transactions(Some(Vec::new()))
        .with_records(Some(bytes::Bytes::new()))
}

fn fetch_error(index: i32, error_code: i16) -> PartitionData {
    PartitionData::default()
        .with_partition_index(index)
        .with_error_code(error_code)
        .with_high_watermark(-1)
        .with_last_stable_offset(-1)
        .with_log_start_offset(-1)
        .with_records(Some(bytes::Bytes::new()))
}

pub async fn list_offsets(
    _ctx: &RequestContext,
    cluster: &Arc<ClusterBroker>,
    version: i16,
    request: ListOffsetsRequest,
) -> ListOffsetsResponse {
    // read_committed (v2+): the latest offset is the last stable offset.
    let read_committed = version >= 2 && request.isolation_level == 1;
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .into_iter()
                .map(|p| {
                    let response = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index);
                    if !list_offsets::timestamp_supported(version, p.timestamp) {
                        return response
                            .with_error_code(ResponseError::UnsupportedVersion.code())
                            .with_offset(-1)
                            .with_timestamp(-1);
                    }
                    let answer = cluster
                        .replica_for(topic.name.as_str(), p.partition_index)
                        .and_then(|replica| {
                            replica.check_leader(p.current_leader_epoch)?;
                            let (_, term) = replica.leader_and_term();
                            let log = replica.log();
                            let (offset, timestamp) =
                                if read_committed && p.timestamp == list_offsets::LATEST {
                                    (replica.last_stable_offset()?, -1)
                                } else {
                                    list_offsets::offset_in_log(log, p.timestamp)?
                                };
                            Ok((offset, timestamp, i32::try_from(term).unwrap_or(i32::MAX)))
                        });
                    match answer {
                        Ok((offset, timestamp, epoch)) => response
                            .with_offset(offset)
                            .with_timestamp(timestamp)
                            .with_leader_epoch(if version >= 4 && offset >= 0 {
                                epoch
                            } else {
                                -1
                            }),
                        Err(error) => response
                            .with_error_code(replication_error_code(&error))
                            .with_offset(-1)
                            .with_timestamp(-1),
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

/// DeleteRecords on each partition's leader (others answer NOT_LEADER_OR_FOLLOWER): one Raft
/// entry moves every replica's log start; answered once it is committed and applied on the
/// leader, within the request's timeout.
pub async fn delete_records(
    cluster: &Arc<ClusterBroker>,
    request: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let timeout = Duration::from_millis(request.timeout_ms.clamp(0, WAIT_MS_MAX) as u64);
    super::delete_records::respond(
        request,
        |topic, index, offset| {
            let replica = cluster.replica_for(topic.as_str(), index);
            async move { replica?.delete_records(offset, timeout).await }
        },
        replication_error_code,
    )
    .await
}

pub async fn offset_for_leader_epoch(
    cluster: &Arc<ClusterBroker>,
    request: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .into_iter()
                .map(|p| {
                    let answer = cluster
                        .replica_for(topic.topic.as_str(), p.partition)
                        .and_then(|r| {
                            r.end_offset_for_epoch(p.leader_epoch, p.current_leader_epoch)
                        });
                    let result = EpochEndOffset::default().with_partition(p.partition);
                    match answer {
                        Ok((epoch, end_offset)) => {
                            result.with_leader_epoch(epoch).with_end_offset(end_offset)
                        }
                        Err(error) => result
                            .with_error_code(replication_error_code(&error))
                            .with_leader_epoch(-1)
                            .with_end_offset(-1),
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

pub async fn create_topics(
    cluster: &Arc<ClusterBroker>,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let result = CreatableTopicResult::default().with_name(topic.name.clone());
        let configs: BTreeMap<String, String> = topic
            .configs
            .iter()
            .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
            .collect();
        let outcome = if !topic.assignments.is_empty() {
            Err(ReplicationError::Broker(
                BrokerError::InvalidReplicationFactor(
                    "manual replica assignments are not supported in a cluster yet".into(),
                ),
            ))
        } else {
            cluster
                .create_topic(
                    topic.name.as_str(),
                    topic.num_partitions,
                    topic.replication_factor,
                    configs,
                    request.validate_only,
                )
                .await
        };
        results.push(match outcome {
            Ok(()) => {
                let created = cluster.topic(topic.name.as_str());
                result
                    .with_topic_id(created.as_ref().map_or(uuid::Uuid::nil(), |t| t.topic_id))
                    .with_num_partitions(
                        created
                            .as_ref()
                            .map_or(topic.num_partitions, |t| t.assignments.len() as i32),
                    )
                    .with_replication_factor(
                        created
                            .as_ref()
                            .map_or(topic.replication_factor, |t| t.replication_factor as i16),
                    )
            }
            Err(error) => result
                .with_error_code(replication_error_code(&error))
                .with_error_message(message(&error))
                .with_num_partitions(-1)
                .with_replication_factor(-1),
        });
    }
    CreateTopicsResponse::default().with_topics(results)
}

pub async fn delete_topics(
    cluster: &Arc<ClusterBroker>,
    version: i16,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let mut targets: Vec<(Option<String>, uuid::Uuid)> = request
        .topic_names
        .iter()
        .map(|n| (Some(n.to_string()), uuid::Uuid::nil()))
        .collect();
    targets.extend(
        request
            .topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.to_string()), t.topic_id)),
    );
    let mut responses = Vec::with_capacity(targets.len());
    for (name, topic_id) in targets {
        let name = name.or_else(|| {
            cluster
                .metadata()
                .topic_by_id(topic_id)
                .map(|t| t.name.clone())
        });
        let Some(name) = name else {
            responses.push(
                DeletableTopicResult::default()
                    .with_topic_id(topic_id)
                    .with_error_code(ResponseError::UnknownTopicId.code()),
            );
            continue;
        };
        let id = cluster.topic(&name).map_or(topic_id, |t| t.topic_id);
        let result = DeletableTopicResult::default()
            .with_name(Some(TopicName(StrBytes::from_string(name.clone()))))
            .with_topic_id(if version >= 6 { id } else { uuid::Uuid::nil() });
        responses.push(match cluster.delete_topic(&name).await {
            Ok(()) => result,
            Err(error) => {
                let result = result.with_error_code(replication_error_code(&error));
                if version >= 5 {
                    result.with_error_message(message(&error))
                } else {
                    result
                }
            }
        });
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

pub async fn create_partitions(
    cluster: &Arc<ClusterBroker>,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
        results.push(
            match cluster
                .create_partitions(topic.name.as_str(), topic.count, request.validate_only)
                .await
            {
                Ok(()) => result,
                Err(error) => result
                    .with_error_code(replication_error_code(&error))
                    .with_error_message(message(&error)),
            },
        );
    }
    CreatePartitionsResponse::default().with_results(results)
}

/// InitProducerId without a transactional id in a cluster: ids come from this node's block
/// of the metadata group's producer-id space. A re-initialising client (KIP-360) gets a fresh
/// id at epoch 0. A transactional id's producer id and epoch come from the transaction
/// coordinator (`handlers::producer_id`).
pub async fn init_producer_id(
    cluster: &Arc<ClusterBroker>,
) -> kafka_protocol::messages::InitProducerIdResponse {
    use kafka_protocol::messages::{InitProducerIdResponse, ProducerId};
    match cluster.allocate_producer_id().await {
        Ok(id) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Err(error) => InitProducerIdResponse::default()
            .with_error_code(match error {
                ReplicationError::Timeout | ReplicationError::Raft(_) => {
                    ResponseError::CoordinatorNotAvailable.code()
                }
                other => replication_error_code(&other),
            })
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    }
}

/// The node that coordinates every consumer group in a cluster: the metadata group's leader,
/// so the coordinator moves when that node fails. Committed offsets are replicated through
/// the metadata group (see `ClusterBroker::commit_offsets`), so the new coordinator has them;
/// group membership lives in the coordinator's memory and members rejoin after a move.
pub fn group_coordinator(
    cluster: &Arc<ClusterBroker>,
) -> Option<sluice_broker::replication::BrokerEndpoint> {
    let leader = cluster.controller()?;
    cluster.brokers().into_iter().find(|b| b.node_id == leader)
}
