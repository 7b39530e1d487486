//! Kafka ACLs applied to requests before their handlers see them, with the errors Kafka gives.
//!
//! A request naming several resources is split: the resources the principal may not touch are
//! taken out of the request, the handler serves the rest, and a patch adds the refused ones
//! back to the response with TOPIC_AUTHORIZATION_FAILED (or the group's, transactional id's
//! or cluster's error). A request about one resource that is refused is answered here.
//! Handlers thus stay free of authorization, and a principal allowed everything (a super
//! user, or no ACL at all with `allow.everyone.if.no.acl.found`) costs one check.

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_auth::acl::CLUSTER_RESOURCE_NAME;
use sluice_auth::{Operation, ResourceType};

use crate::RequestContext;

/// Adds what was refused to the handler's response.
pub(crate) type Patch = Box<dyn FnOnce(&mut ResponseKind) + Send>;

/// The request to serve (with refused resources taken out) and the patch for its response,
/// or the whole answer when nothing may be served. Both sides are as large as a request or a
/// response is; one verdict is made per request, moved once.
pub(crate) type Verdict = Result<(RequestKind, Option<Patch>), ResponseKind>;

const TOPIC_DENIED: i16 = ResponseError::TopicAuthorizationFailed.code();
const GROUP_DENIED: i16 = ResponseError::GroupAuthorizationFailed.code();
const CLUSTER_DENIED: i16 = ResponseError::ClusterAuthorizationFailed.code();
const TRANSACTIONAL_ID_DENIED: i16 = ResponseError::TransactionalIdAuthorizationFailed.code();

fn topic(context: &RequestContext, operation: Operation, name: &str) -> bool {
    context.allowed(operation, ResourceType::Topic, name)
}

fn group(context: &RequestContext, operation: Operation, name: &str) -> bool {
    context.allowed(operation, ResourceType::Group, name)
}

fn cluster(context: &RequestContext, operation: Operation) -> bool {
    context.allowed(operation, ResourceType::Cluster, CLUSTER_RESOURCE_NAME)
}

fn transactional_id(context: &RequestContext, operation: Operation, name: &str) -> bool {
    context.allowed(operation, ResourceType::TransactionalId, name)
}

/// Splits `items` into (allowed, refused).
fn split<T>(items: Vec<T>, mut allowed: impl FnMut(&T) -> bool) -> (Vec<T>, Vec<T>) {
    items.into_iter().partition(|item| allowed(item))
}

fn patch<F: FnOnce(&mut ResponseKind) + Send + 'static>(refused: bool, f: F) -> Option<Patch> {
    refused.then(|| Box::new(f) as Patch)
}

/// A topic's name from its id, for requests that name topics by id (Fetch v13+).
fn topic_name_by_id(context: &RequestContext, id: uuid::Uuid) -> Option<String> {
    match &context.cluster {
        Some(cluster) => cluster
            .metadata()
            .topics
            .values()
            .find(|t| t.topic_id == id)
            .map(|t| t.name.clone()),
        None => context.broker.topic_by_id(id).map(|t| t.name().to_string()),
    }
}

/// Whether the principal may do everything: nothing to check per resource.
fn unrestricted(context: &RequestContext) -> bool {
    let authorizer = &context.security.authorizer;
    context.principal.super_user
        || authorizer.is_super_user(&context.principal.name)
        || authorizer.allows_everyone()
}

#[allow(clippy::result_large_err)]
pub(crate) fn authorize(context: &RequestContext, version: i16, request: RequestKind) -> Verdict {
    if unrestricted(context) {
        return Ok((request, None));
    }
    match request {
        RequestKind::Produce(mut r) => {
            if let Some(id) = &r.transactional_id {
                if !transactional_id(context, Operation::Write, id.as_str()) {
                    return Err(ResponseKind::Produce(produce_refused(r.topic_data, TRANSACTIONAL_ID_DENIED)));
                }
            }
            let (allowed, refused) = split(std::mem::take(&mut r.topic_data), |t| {
                topic(context, Operation::Write, t.name.as_str())
            });
            r.topic_data = allowed;
            let refused_any = !refused.is_empty();
            Ok((
                RequestKind::Produce(r),
                patch(refused_any, move |response| {
                    if let ResponseKind::Produce(response) = response {
                        response
                            .responses
                            .extend(produce_refused(refused, TOPIC_DENIED).responses);
                    }
                }),
            ))
        }
        RequestKind::Fetch(mut r) => {
            let (allowed, refused) = split(std::mem::take(&mut r.topics), |t| {
                let name = if t.topic_id.is_nil() {
                    Some(t.topic.to_string())
                } else {
                    topic_name_by_id(context, t.topic_id)
                };
                // An unknown id is the handler's to answer (UNKNOWN_TOPIC_ID).
                name.is_none_or(|name| topic(context, Operation::Read, &name))
            });
            r.topics = allowed;
            let refused_any = !refused.is_empty();
            Ok((
                RequestKind::Fetch(r),
                patch(refused_any, move |response| {
                    if let ResponseKind::Fetch(response) = response {
                        response.responses.extend(refused.into_iter().map(|t| {
                            fetch_response::FetchableTopicResponse::default()
                                .with_topic(t.topic)
                                .with_topic_id(t.topic_id)
                                .with_partitions(
                                    t.partitions
                                        .iter()
                                        .map(|p| {
                                            fetch_response::PartitionData::default()
                                                .with_partition_index(p.partition)
                                                .with_error_code(TOPIC_DENIED)
                                                .with_high_watermark(-1)
                                                .with_last_stable_offset(-1)
                                                .with_log_start_offset(-1)
                                        })
                                        .collect(),
                                )
                        }));
                    }
                }),
            ))
        }
        RequestKind::ListOffsets(mut r) => {
            let (allowed, refused) = split(std::mem::take(&mut r.topics), |t| {
                topic(context, Operation::Describe, t.name.as_str())
            });
            r.topics = allowed;
            let refused_any = !refused.is_empty();
            Ok((
                RequestKind::ListOffsets(r),
                patch(refused_any, move |response| {
                    if let ResponseKind::ListOffsets(response) = response {
                        response.topics.extend(refused.into_iter().map(|t| {
                            list_offsets_response::ListOffsetsTopicResponse::default()
                                .with_name(t.name)
                                .with_partitions(
                                    t.partitions
                                        .iter()
                                        .map(|p| {
                                            list_offsets_response::ListOffsetsPartitionResponse::default()
                                                .with_partition_index(p.partition_index)
                                                .with_error_code(TOPIC_DENIED)
                                                .with_timestamp(-1)
                                                .with_offset(-1)
                                        })
                                        .collect(),
                                )
                        }));
                    }
                }),
            ))
        }
        RequestKind::Metadata(mut r) => {
            let patch = metadata(context, &mut r);
            Ok((RequestKind::Metadata(r), patch))
        }
        RequestKind::CreateTopics(mut r) => {
            let cluster_create = cluster(context, Operation::Create);
            let (allowed, refused) = split(std::mem::take(&mut r.topics), |t| {
                cluster_create || topic(context, Operation::Create, t.name.as_str())
            });
            r.topics = allowed;
            let refused_any = !refused.is_empty();
            Ok((
                RequestKind::CreateTopics(r),
                patch(refused_any, move |response| {
                    if let ResponseKind::CreateTopics(response) = response {
                        response.topics.extend(refused.into_iter().map(|t| {
                            create_topics_response::CreatableTopicResult::default()
                                .with_name(t.name)
                                .with_error_code(TOPIC_DENIED)
                                .with_num_partitions(-1)
                                .with_replication_factor(-1)
                        }));
                    }
                }),
            ))
        }
        RequestKind::DeleteTopics(mut r) => {
            let (names, refused_names) = split(std::mem::take(&mut r.topic_names), |name| {
                topic(context, Operation::Delete, name.as_str())
            });
            r.topic_names = names;
            let (states, refused_states) = split(std::mem::take(&mut r.topics), |t| {
                let name = t
                    .name
                    .as_ref()
                    .map(|n| n.to_string())
                    .or_else(|| topic_name_by_id(context, t.topic_id));
                name.is_none_or(|name| topic(context, Operation::Delete, &name))
            });
            r.topics = states;
            let refused_any = !refused_names.is_empty() || !refused_states.is_empty();
            Ok((
                RequestKind::DeleteTopics(r),
                patch(refused_any, move |response| {
                    if let ResponseKind::DeleteTopics(response) = response {
                        let refused = refused_names
                            .into_iter()
                            .map(|name| (Some(name), uuid::Uuid::nil()))
                            .chain(refused_states.into_iter().map(|t| (t.name, t.topic_id)));
                        response.responses.extend(refused.map(|(name, id)| {
                            delete_topics_response::DeletableTopicResult::default()
                                .with_name(name)
                                .with_topic_id(id)
                                .with_error_code(TOPIC_DENIED)
                        }));
                    }
                }),
            ))
        }
        RequestKind::CreatePartitions(mut r) => {
            let (allowed, refused) = split(std::mem::take(&mut r.topics), |t| {
                topic(context, Operation::Alter, t.name.as_str())
            });
            r.topics = allowed;
            let refused_any = !refused.is_empty();
            Ok((
                RequestKind::CreatePartitions(r),
                patch(refused_any, move |response| {
                    if let ResponseKind::CreatePartitions(response) = response {
                        response.results.extend(refused.into_iter().map(|t| {
                            create_partitions_response::CreatePartitionsTopicResult::default()
                                .with_name(t.name)
                                .with_error_code(TOPIC_DENIED)
                        }));
                    }
                }),
            ))
        }
        RequestKind::DeleteRecords(mut r) => {
            let (allowed, refused) = split(std::mem::take(&mut r.topics), |t| {
                topic(context, Operation::Delete, t.name.as_str())
            });
            r.topics = allowed;
            let refused_any = !refused.is_empty();
            Ok((
                RequestKind::DeleteRecords(r),
                patch(refused_any, move |response| {
                    if let ResponseKind::DeleteRecords(response) = response {
                        response.topics.extend(refused.into_iter().map(|t| {
                            delete_records_response::DeleteRecordsTopicResult::default()
                                .with_name(t.name)
                                .with_partitions(
                                    t.partitions
                                        .iter()
                                        .map(|p| {
                                            delete_records_response::DeleteRecordsPartitionResult::default()
                                                .with_partition_index(p.partition_index)
                                                .with_low_watermark(-1)
                                                .with_error_code(TOPIC_DENIED)
                                        })
                                        .collect(),
                                )
                        }));
                    }
                }),
            ))
        }
        RequestKind::DescribeConfigs(mut r) => {
            let (allowed, refused) = split(std::mem::take(&mut r.resources), |c| {
                config_allowed(context, c.resource_type, c.resource_name.as_str(), false)
            });
            r.resources = allowed;
            let refused_any = !refused.is_empty();
            Ok((
                RequestKind::DescribeConfigs(r),
                patch(refused_any, move |response| {
                    if let ResponseKind::DescribeConfigs(response) = response {
                        response.results.extend(refused.into_iter().map(|c| {
                            describe_configs_response::DescribeConfigsResult::default()
                                .with_error_code(config_denied_code(c.resource_type))
                                .with_resource_type(c.resource_type)
                                .with_resource_name(c.resource_name)
                        }));
                    }
                }),
            ))
        }
        RequestKind::AlterConfigs(mut r) => {
            let (allowed, refused) = split(std::mem::take(&mut r.resources), |c| {
                config_allowed(context, c.resource_type, c.resource_name.as_str(), true)
            });
            r.resources = allowed;
            let refused_any = !refused.is_empty();
            Ok((
                RequestKind::AlterConfigs(r),
                patch(refused_any, move |response| {
                    if let ResponseKind::AlterConfigs(response) = response {
                        response.responses.extend(refused.into_iter().map(|c| {
                            alter_configs_response::AlterConfigsResourceResponse::default()
                                .with_error_code(config_denied_code(c.resource_type))
                                .with_resource_type(c.resource_type)
                                .with_resource_name(c.resource_name)
                        }));
                    }
                }),
            ))
        }
        RequestKind::IncrementalAlterConfigs(mut r) => {
            let (allowed, refused) = split(std::mem::take(&mut r.resources), |c| {
                config_allowed(context, c.resource_type, c.resource_name.as_str(), true)
            });
            r.resources = allowed;
            let refused_any = !refused.is_empty();
            Ok((
                RequestKind::IncrementalAlterConfigs(r),
                patch(refused_any, move |response| {
                    if let ResponseKind::IncrementalAlterConfigs(response) = response {
                        response.responses.extend(refused.into_iter().map(|c| {
                            incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                                .with_error_code(config_denied_code(c.resource_type))
                                .with_resource_type(c.resource_type)
                                .with_resource_name(c.resource_name)
                        }));
                    }
                }),
            ))
        }
        // The classic group protocol: READ on the group.
        RequestKind::JoinGroup(r) if !group(context, Operation::Read, r.group_id.as_str()) => {
            Err(ResponseKind::JoinGroup(
                JoinGroupResponse::default()
                    .with_error_code(GROUP_DENIED)
                    .with_generation_id(-1)
                    .with_protocol_name(if version >= 7 { None } else { Some(StrBytes::default()) }),
            ))
        }
        RequestKind::SyncGroup(r) if !group(context, Operation::Read, r.group_id.as_str()) => {
            Err(ResponseKind::SyncGroup(SyncGroupResponse::default().with_error_code(GROUP_DENIED)))
        }
        RequestKind::Heartbeat(r) if !group(context, Operation::Read, r.group_id.as_str()) => {
            Err(ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(GROUP_DENIED)))
        }
        RequestKind::LeaveGroup(r) if !group(context, Operation::Read, r.group_id.as_str()) => {
            Err(ResponseKind::LeaveGroup(LeaveGroupResponse::default().with_error_code(GROUP_DENIED)))
        }
        RequestKind::OffsetDelete(r) if !group(context, Operation::Delete, r.group_id.as_str()) => {
            Err(ResponseKind::OffsetDelete(OffsetDeleteResponse::default().with_error_code(GROUP_DENIED)))
        }
        RequestKind::ConsumerGroupHeartbeat(r)
            if !group(context, Operation::Read, r.group_id.as_str()) =>
        {
            Err(ResponseKind::ConsumerGroupHeartbeat(
                ConsumerGroupHeartbeatResponse::default().with_error_code(GROUP_DENIED),
            ))
        }
        RequestKind::ShareGroupHeartbeat(r)
            if !group(context, Operation::Read, r.group_id.as_str()) =>
        {
            Err(ResponseKind::ShareGroupHeartbeat(
                ShareGroupHeartbeatResponse::default().with_error_code(GROUP_DENIED),
            ))
        }
        RequestKind::ShareFetch(r)
            if !r
                .group_id
                .as_ref()
                .is_none_or(|g| group(context, Operation::Read, g.as_str())) =>
        {
            Err(ResponseKind::ShareFetch(ShareFetchResponse::default().with_error_code(GROUP_DENIED)))
        }
        RequestKind::ShareAcknowledge(r)
            if !r
                .group_id
                .as_ref()
                .is_none_or(|g| group(context, Operation::Read, g.as_str())) =>
        {
            Err(ResponseKind::ShareAcknowledge(
                ShareAcknowledgeResponse::default().with_error_code(GROUP_DENIED),
            ))
        }
        RequestKind::OffsetCommit(mut r) => {
            let group_allowed = group(context, Operation::Read, r.group_id.as_str());
            let (allowed, refused) = split(std::mem::take(&mut r.topics), |t| {
                group_allowed && topic(context, Operation::Read, t.name.as_str())
            });
            r.topics = allowed;
            let code = if group_allowed { TOPIC_DENIED } else { GROUP_DENIED };
            let refused_any = !refused.is_empty();
            Ok((
                RequestKind::OffsetCommit(r),
                patch(refused_any, move |response| {
                    if let ResponseKind::OffsetCommit(response) = response {
                        response.topics.extend(refused.into_iter().map(|t| {
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
                        }));
                    }
                }),
            ))
        }
        RequestKind::OffsetFetch(mut r) => {
            if version < 8 {
                if !group(context, Operation::Describe, r.group_id.as_str()) {
                    return Err(ResponseKind::OffsetFetch(
                        OffsetFetchResponse::default().with_error_code(GROUP_DENIED),
                    ));
                }
                return Ok((RequestKind::OffsetFetch(r), None));
            }
            let (allowed, refused) = split(std::mem::take(&mut r.groups), |g| {
                group(context, Operation::Describe, g.group_id.as_str())
            });
            r.groups = allowed;
            let refused_any = !refused.is_empty();
            Ok((
                RequestKind::OffsetFetch(r),
                patch(refused_any, move |response| {
                    if let ResponseKind::OffsetFetch(response) = response {
                        response.groups.extend(refused.into_iter().map(|g| {
                            offset_fetch_response::OffsetFetchResponseGroup::default()
                                .with_group_id(g.group_id)
                                .with_error_code(GROUP_DENIED)
                        }));
                    }
                }),
            ))
        }
        RequestKind::DescribeGroups(mut r) => {
            let (allowed, refused) = split(std::mem::take(&mut r.groups), |g| {
                group(context, Operation::Describe, g.as_str())
            });
            r.groups = allowed;
            let refused_any = !refused.is_empty();
            Ok((
                RequestKind::DescribeGroups(r),
                patch(refused_any, move |response| {
                    if let ResponseKind::DescribeGroups(response) = response {
                        response.groups.extend(refused.into_iter().map(|g| {
                            describe_groups_response::DescribedGroup::default()
                                .with_group_id(g)
                                .with_error_code(GROUP_DENIED)
                        }));
                    }
                }),
            ))
        }
        RequestKind::DeleteGroups(mut r) => {
            let (allowed, refused) = split(std::mem::take(&mut r.groups_names), |g| {
                group(context, Operation::Delete, g.as_str())
            });
            r.groups_names = allowed;
            let refused_any = !refused.is_empty();
            Ok((
                RequestKind::DeleteGroups(r),
                patch(refused_any, move |response| {
                    if let ResponseKind::DeleteGroups(response) = response {
                        response.results.extend(refused.into_iter().map(|g| {
                            delete_groups_response::DeletableGroupResult::default()
                                .with_group_id(g)
                                .with_error_code(GROUP_DENIED)
                        }));
                    }
                }),
            ))
        }
        RequestKind::ListGroups(r) => {
            // Groups the principal may not describe are left out (CLUSTER DESCRIBE sees all).
            if cluster(context, Operation::Describe) {
                return Ok((RequestKind::ListGroups(r), None));
            }
            let principal = context.principal.name.clone();
            let host = context.client_host.clone();
            let authorizer = context.security.authorizer.clone();
            Ok((
                RequestKind::ListGroups(r),
                Some(Box::new(move |response| {
                    if let ResponseKind::ListGroups(response) = response {
                        response.groups.retain(|g| {
                            authorizer.authorize(
                                &principal,
                                false,
                                &host,
                                Operation::Describe,
                                ResourceType::Group,
                                g.group_id.as_str(),
                            )
                        });
                    }
                })),
            ))
        }
        RequestKind::FindCoordinator(r) => {
            let key_type = r.key_type;
            let allowed = |key: &str| match key_type {
                1 => transactional_id(context, Operation::Describe, key),
                _ => group(context, Operation::Describe, key),
            };
            let code = if r.key_type == 1 { TRANSACTIONAL_ID_DENIED } else { GROUP_DENIED };
            if version < 4 {
                if !allowed(r.key.as_str()) {
                    return Err(ResponseKind::FindCoordinator(
                        FindCoordinatorResponse::default()
                            .with_error_code(code)
                            .with_node_id(BrokerId(-1))
                            .with_port(-1),
                    ));
                }
                return Ok((RequestKind::FindCoordinator(r), None));
            }
            let mut r = r;
            let (keys, refused) = split(std::mem::take(&mut r.coordinator_keys), |k| allowed(k.as_str()));
            r.coordinator_keys = keys;
            let refused_any = !refused.is_empty();
            Ok((
                RequestKind::FindCoordinator(r),
                patch(refused_any, move |response| {
                    if let ResponseKind::FindCoordinator(response) = response {
                        response.coordinators.extend(refused.into_iter().map(|key| {
                            find_coordinator_response::Coordinator::default()
                                .with_key(key)
                                .with_node_id(BrokerId(-1))
                                .with_port(-1)
                                .with_error_code(code)
                        }));
                    }
                }),
            ))
        }
        RequestKind::InitProducerId(r) => {
            let allowed = match &r.transactional_id {
                Some(id) => transactional_id(context, Operation::Write, id.as_str()),
                // An idempotent producer: IDEMPOTENT_WRITE on the cluster, or WRITE on some
                // topic (Kafka 3's rule, KIP-679).
                None => {
                    cluster(context, Operation::IdempotentWrite)
                        || context.security.authorizer.allows_any(
                            &context.principal.name,
                            &context.client_host,
                            Operation::Write,
                            ResourceType::Topic,
                        )
                }
            };
            if allowed {
                return Ok((RequestKind::InitProducerId(r), None));
            }
            let code = if r.transactional_id.is_some() { TRANSACTIONAL_ID_DENIED } else { CLUSTER_DENIED };
            Err(ResponseKind::InitProducerId(
                InitProducerIdResponse::default()
                    .with_error_code(code)
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1),
            ))
        }
        RequestKind::EndTxn(r) if !transactional_id(context, Operation::Write, r.transactional_id.as_str()) => {
            Err(ResponseKind::EndTxn(EndTxnResponse::default().with_error_code(TRANSACTIONAL_ID_DENIED)))
        }
        RequestKind::AddOffsetsToTxn(r) => {
            let code = if !transactional_id(context, Operation::Write, r.transactional_id.as_str()) {
                TRANSACTIONAL_ID_DENIED
            } else if !group(context, Operation::Read, r.group_id.as_str()) {
                GROUP_DENIED
            } else {
                return Ok((RequestKind::AddOffsetsToTxn(r), None));
            };
            Err(ResponseKind::AddOffsetsToTxn(AddOffsetsToTxnResponse::default().with_error_code(code)))
        }
        RequestKind::TxnOffsetCommit(r) => {
            let code = if !transactional_id(context, Operation::Write, r.transactional_id.as_str()) {
                TRANSACTIONAL_ID_DENIED
            } else if !group(context, Operation::Read, r.group_id.as_str()) {
                GROUP_DENIED
            } else if r.topics.iter().any(|t| !topic(context, Operation::Read, t.name.as_str())) {
                TOPIC_DENIED
            } else {
                return Ok((RequestKind::TxnOffsetCommit(r), None));
            };
            Err(ResponseKind::TxnOffsetCommit(TxnOffsetCommitResponse::default().with_topics(
                r.topics
                    .into_iter()
                    .map(|t| {
                        txn_offset_commit_response::TxnOffsetCommitResponseTopic::default()
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        txn_offset_commit_response::TxnOffsetCommitResponsePartition::default()
                                            .with_partition_index(p.partition_index)
                                            .with_error_code(code)
                                    })
                                    .collect(),
                            )
                            .with_name(t.name)
                    })
                    .collect(),
            )))
        }
        RequestKind::AddPartitionsToTxn(r) => add_partitions_to_txn(context, version, r),
        RequestKind::WriteTxnMarkers(r) if !cluster(context, Operation::ClusterAction) => {
            Err(ResponseKind::WriteTxnMarkers(WriteTxnMarkersResponse::default().with_markers(
                r.markers
                    .into_iter()
                    .map(|m| {
                        write_txn_markers_response::WritableTxnMarkerResult::default()
                            .with_producer_id(m.producer_id)
                            .with_topics(
                                m.topics
                                    .into_iter()
                                    .map(|t| {
                                        write_txn_markers_response::WritableTxnMarkerTopicResult::default()
                                            .with_partitions(
                                                t.partition_indexes
                                                    .iter()
                                                    .map(|p| {
                                                        write_txn_markers_response::WritableTxnMarkerPartitionResult::default()
                                                            .with_partition_index(*p)
                                                            .with_error_code(CLUSTER_DENIED)
                                                    })
                                                    .collect(),
                                            )
                                            .with_name(t.name)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            )))
        }
        // Cluster administration.
        RequestKind::ElectLeaders(_) if !cluster(context, Operation::Alter) => Err(
            ResponseKind::ElectLeaders(ElectLeadersResponse::default().with_error_code(CLUSTER_DENIED)),
        ),
        RequestKind::AlterPartitionReassignments(_) if !cluster(context, Operation::Alter) => {
            Err(ResponseKind::AlterPartitionReassignments(
                AlterPartitionReassignmentsResponse::default().with_error_code(CLUSTER_DENIED),
            ))
        }
        RequestKind::ListPartitionReassignments(_) if !cluster(context, Operation::Describe) => {
            Err(ResponseKind::ListPartitionReassignments(
                ListPartitionReassignmentsResponse::default().with_error_code(CLUSTER_DENIED),
            ))
        }
        RequestKind::DescribeLogDirs(_) if !cluster(context, Operation::Describe) => Err(
            ResponseKind::DescribeLogDirs(DescribeLogDirsResponse::default().with_error_code(CLUSTER_DENIED)),
        ),
        RequestKind::AlterReplicaLogDirs(r) if !cluster(context, Operation::Alter) => {
            Err(ResponseKind::AlterReplicaLogDirs(AlterReplicaLogDirsResponse::default().with_results(
                r.dirs
                    .into_iter()
                    .flat_map(|d| d.topics)
                    .map(|t| {
                        alter_replica_log_dirs_response::AlterReplicaLogDirTopicResult::default()
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        alter_replica_log_dirs_response::AlterReplicaLogDirPartitionResult::default()
                                            .with_partition_index(*p)
                                            .with_error_code(CLUSTER_DENIED)
                                    })
                                    .collect(),
                            )
                            .with_topic_name(t.name)
                    })
                    .collect(),
            )))
        }
        RequestKind::DescribeProducers(mut r) => {
            let (allowed, refused) = split(std::mem::take(&mut r.topics), |t| {
                topic(context, Operation::Read, t.name.as_str())
            });
            r.topics = allowed;
            let refused_any = !refused.is_empty();
            Ok((
                RequestKind::DescribeProducers(r),
                patch(refused_any, move |response| {
                    if let ResponseKind::DescribeProducers(response) = response {
                        response.topics.extend(refused.into_iter().map(|t| {
                            describe_producers_response::TopicResponse::default()
                                .with_partitions(
                                    t.partition_indexes
                                        .iter()
                                        .map(|p| {
                                            describe_producers_response::PartitionResponse::default()
                                                .with_partition_index(*p)
                                                .with_error_code(TOPIC_DENIED)
                                        })
                                        .collect(),
                                )
                                .with_name(t.name)
                        }));
                    }
                }),
            ))
        }
        RequestKind::OffsetForLeaderEpoch(mut r) => {
            let (allowed, refused) = split(std::mem::take(&mut r.topics), |t| {
                topic(context, Operation::Describe, t.topic.as_str())
            });
            r.topics = allowed;
            let refused_any = !refused.is_empty();
            Ok((
                RequestKind::OffsetForLeaderEpoch(r),
                patch(refused_any, move |response| {
                    if let ResponseKind::OffsetForLeaderEpoch(response) = response {
                        response.topics.extend(refused.into_iter().map(|t| {
                            offset_for_leader_epoch_response::OffsetForLeaderTopicResult::default()
                                .with_partitions(
                                    t.partitions
                                        .iter()
                                        .map(|p| {
                                            offset_for_leader_epoch_response::EpochEndOffset::default()
                                                .with_partition(p.partition)
                                                .with_error_code(TOPIC_DENIED)
                                                .with_leader_epoch(-1)
                                                .with_end_offset(-1)
                                        })
                                        .collect(),
                                )
                                .with_topic(t.topic)
                        }));
                    }
                }),
            ))
        }
        RequestKind::DescribeTopicPartitions(mut r) => {
            let (allowed, refused) = split(std::mem::take(&mut r.topics), |t| {
                topic(context, Operation::Describe, t.name.as_str())
            });
            r.topics = allowed;
            let refused_any = !refused.is_empty();
            Ok((
                RequestKind::DescribeTopicPartitions(r),
                patch(refused_any, move |response| {
                    if let ResponseKind::DescribeTopicPartitions(response) = response {
                        response.topics.extend(refused.into_iter().map(|t| {
                            describe_topic_partitions_response::DescribeTopicPartitionsResponseTopic::default()
                                .with_name(Some(t.name))
                                .with_error_code(TOPIC_DENIED)
                        }));
                    }
                }),
            ))
        }
        request => Ok((request, None)),
    }
}

fn produce_refused(topics: Vec<produce_request::TopicProduceData>, code: i16) -> ProduceResponse {
    ProduceResponse::default().with_responses(
        topics
            .into_iter()
            .map(|t| {
                produce_response::TopicProduceResponse::default()
                    .with_partition_responses(
                        t.partition_data
                            .iter()
                            .map(|p| {
                                produce_response::PartitionProduceResponse::default()
                                    .with_index(p.index)
                                    .with_error_code(code)
                                    .with_base_offset(-1)
                                    .with_log_append_time_ms(-1)
                                    .with_log_start_offset(-1)
                            })
                            .collect(),
                    )
                    .with_topic_id(t.topic_id)
                    .with_name(t.name)
            })
            .collect(),
    )
}

/// Metadata: named topics the principal may not describe are answered
/// TOPIC_AUTHORIZATION_FAILED; a request for all topics leaves them out. Auto-creation needs
/// CREATE on the cluster or the topic.
fn metadata(context: &RequestContext, request: &mut MetadataRequest) -> Option<Patch> {
    let cluster_create = cluster(context, Operation::Create);
    let auto_create = request.allow_auto_topic_creation;
    match &mut request.topics {
        Some(topics) => {
            // Refused: topics the principal may not describe, and (as Kafka) topics that do
            // not exist and would be auto-created for a principal without CREATE.
            let (allowed, refused) = split(std::mem::take(topics), |t| {
                let name = t
                    .name
                    .as_ref()
                    .map(|n| n.to_string())
                    .or_else(|| topic_name_by_id(context, t.topic_id));
                name.is_none_or(|name| {
                    topic(context, Operation::Describe, &name)
                        && (!auto_create
                            || cluster_create
                            || topic_exists(context, &name)
                            || topic(context, Operation::Create, &name))
                })
            });
            *topics = allowed;
            patch(!refused.is_empty(), move |response| {
                if let ResponseKind::Metadata(response) = response {
                    response.topics.extend(refused.into_iter().map(|t| {
                        metadata_response::MetadataResponseTopic::default()
                            .with_name(t.name)
                            .with_topic_id(t.topic_id)
                            .with_error_code(TOPIC_DENIED)
                    }));
                }
            })
        }
        None => {
            let principal = context.principal.name.clone();
            let host = context.client_host.clone();
            let authorizer = context.security.authorizer.clone();
            Some(Box::new(move |response| {
                if let ResponseKind::Metadata(response) = response {
                    response.topics.retain(|t| {
                        t.name.as_ref().is_some_and(|name| {
                            authorizer.authorize(
                                &principal,
                                false,
                                &host,
                                Operation::Describe,
                                ResourceType::Topic,
                                name.as_str(),
                            )
                        })
                    });
                }
            }))
        }
    }
}

fn topic_exists(context: &RequestContext, name: &str) -> bool {
    match &context.cluster {
        Some(cluster) => cluster.metadata().topics.values().any(|t| t.name == name),
        None => context.broker.topic(name).is_some(),
    }
}

/// DescribeConfigs and (Incremental)AlterConfigs: topics need DESCRIBE_CONFIGS or
/// ALTER_CONFIGS on the topic, brokers the same on the cluster.
fn config_allowed(context: &RequestContext, resource_type: i8, name: &str, alter: bool) -> bool {
    let operation = if alter {
        Operation::AlterConfigs
    } else {
        Operation::DescribeConfigs
    };
    match resource_type {
        2 => topic(context, operation, name),
        3 => group(context, operation, name),
        _ => cluster(context, operation),
    }
}

fn config_denied_code(resource_type: i8) -> i16 {
    match resource_type {
        2 => TOPIC_DENIED,
        3 => GROUP_DENIED,
        _ => CLUSTER_DENIED,
    }
}

/// AddPartitionsToTxn: WRITE on the transactional id, then on each topic; when any is refused
/// nothing is added (the others get OPERATION_NOT_ATTEMPTED), as Kafka answers.
#[allow(clippy::result_large_err)]
fn add_partitions_to_txn(
    context: &RequestContext,
    version: i16,
    request: AddPartitionsToTxnRequest,
) -> Verdict {
    let not_attempted = ResponseError::OperationNotAttempted.code();
    let results = |topics: &[add_partitions_to_txn_request::AddPartitionsToTxnTopic],
                   id_ok: bool| {
        let any_topic_refused = topics
            .iter()
            .any(|t| !topic(context, Operation::Write, t.name.as_str()));
        let refused = !id_ok || any_topic_refused;
        let results: Vec<add_partitions_to_txn_response::AddPartitionsToTxnTopicResult> = topics
            .iter()
            .map(|t| {
                let code = if !id_ok {
                    TRANSACTIONAL_ID_DENIED
                } else if !topic(context, Operation::Write, t.name.as_str()) {
                    TOPIC_DENIED
                } else {
                    not_attempted
                };
                add_partitions_to_txn_response::AddPartitionsToTxnTopicResult::default()
                    .with_name(t.name.clone())
                    .with_results_by_partition(
                        t.partitions
                            .iter()
                            .map(|p| {
                                add_partitions_to_txn_response::AddPartitionsToTxnPartitionResult::default()
                                    .with_partition_index(*p)
                                    .with_partition_error_code(code)
                            })
                            .collect(),
                    )
            })
            .collect();
        (refused, results)
    };
    if version < 4 {
        let id_ok = transactional_id(
            context,
            Operation::Write,
            request.v3_and_below_transactional_id.as_str(),
        );
        let (refused, topic_results) = results(&request.v3_and_below_topics, id_ok);
        if refused {
            return Err(ResponseKind::AddPartitionsToTxn(
                AddPartitionsToTxnResponse::default()
                    .with_results_by_topic_v3_and_below(topic_results),
            ));
        }
        return Ok((RequestKind::AddPartitionsToTxn(request), None));
    }
    // v4+ (sent by brokers, not clients): CLUSTER_ACTION on the cluster.
    if !cluster(context, Operation::ClusterAction) {
        return Err(ResponseKind::AddPartitionsToTxn(
            AddPartitionsToTxnResponse::default().with_error_code(CLUSTER_DENIED),
        ));
    }
    Ok((RequestKind::AddPartitionsToTxn(request), None))
}
