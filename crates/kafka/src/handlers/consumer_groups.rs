//! ConsumerGroupHeartbeat and ConsumerGroupDescribe (KIP-848, the consumer rebalance
//! protocol): translation to [`sluice_broker::GroupCoordinator`]. The wire names topics by id
//! in assignments; the coordinator works with names, so ids are mapped here.
//!
//! Versions handled: ConsumerGroupHeartbeat 0-1 (from v1 members name themselves),
//! ConsumerGroupDescribe 0-1.

use std::collections::{BTreeMap, HashMap};

use kafka_protocol::messages::consumer_group_describe_response::{self, DescribedGroup, Member};
use kafka_protocol::messages::consumer_group_heartbeat_response::{self, Assignment};
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatRequest,
    ConsumerGroupHeartbeatResponse, TopicName,
};
use kafka_protocol::ResponseError;
use sluice_broker::group_coordinator::{ConsumerHeartbeatParams, GroupState, TopicPartition};
use sluice_broker::GroupError;
use uuid::Uuid;

use super::groups::{refused_here, str_bytes, GROUP_AUTHORIZED_OPERATIONS};
use crate::error_codes::group_error_code;
use crate::RequestContext;

/// DescribeGroups' "not requested" value for authorized_operations.
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;
/// ConsumerGroupDescribe v1's member types: on the classic protocol (in a group that moved to
/// the consumer protocol with it) or on the consumer protocol.
const MEMBER_TYPE_CLASSIC: i8 = 0;
const MEMBER_TYPE_CONSUMER: i8 = 1;

/// Every topic clients may subscribe to, with its id and partition count.
pub(super) fn topic_catalog(ctx: &RequestContext) -> BTreeMap<String, (Uuid, i32)> {
    match &ctx.cluster {
        Some(cluster) => cluster
            .metadata()
            .topics
            .values()
            .map(|t| (t.name.clone(), (t.topic_id, t.assignments.len() as i32)))
            .collect(),
        None => ctx
            .broker
            .topics()
            .iter()
            .filter(|t| !t.is_internal())
            .map(|t| (t.name().to_string(), (t.id(), t.partition_count())))
            .collect(),
    }
}

/// Partitions grouped by topic, in order, as (topic, partition indexes).
pub(super) fn by_topic(partitions: &[TopicPartition]) -> Vec<(&str, Vec<i32>)> {
    let mut grouped: Vec<(&str, Vec<i32>)> = Vec::new();
    for partition in partitions {
        match grouped.last_mut() {
            Some((topic, indexes)) if *topic == partition.topic => {
                indexes.push(partition.partition)
            }
            _ => grouped.push((&partition.topic, vec![partition.partition])),
        }
    }
    grouped
}

fn error_message(error: &GroupError, group_id: &str) -> String {
    match error {
        GroupError::GroupIdNotFound => format!("Group {group_id} is not a consumer group."),
        GroupError::UnknownMemberId => {
            format!("The member is not a member of group {group_id}.")
        }
        other => other.to_string(),
    }
}

pub async fn consumer_group_heartbeat(
    ctx: &RequestContext,
    _version: i16,
    request: ConsumerGroupHeartbeatRequest,
) -> ConsumerGroupHeartbeatResponse {
    if refused_here(ctx) {
        return ConsumerGroupHeartbeatResponse::default()
            .with_error_code(ResponseError::NotCoordinator.code());
    }
    let catalog = topic_catalog(ctx);
    let names_by_id: HashMap<Uuid, &str> = catalog
        .iter()
        .map(|(name, (id, _))| (*id, name.as_str()))
        .collect();
    // Partitions of topics this broker no longer knows are not owned by anyone any more.
    let owned_partitions = request.topic_partitions.map(|topics| {
        topics
            .iter()
            .filter_map(|t| {
                names_by_id
                    .get(&t.topic_id)
                    .map(|name| (*name, &t.partitions))
            })
            .flat_map(|(name, partitions)| {
                partitions.iter().map(move |&partition| TopicPartition {
                    topic: name.to_string(),
                    partition,
                })
            })
            .collect()
    });
    let group_id = request.group_id.to_string();
    let params = ConsumerHeartbeatParams {
        group_id: group_id.clone(),
        member_id: request.member_id.to_string(),
        member_epoch: request.member_epoch,
        instance_id: request.instance_id.map(|id| id.to_string()),
        rack_id: request.rack_id.map(|id| id.to_string()),
        rebalance_timeout_ms: request.rebalance_timeout_ms,
        subscribed_topic_names: request
            .subscribed_topic_names
            .map(|names| names.into_iter().map(|n| n.to_string()).collect()),
        subscribed_topic_regex: request.subscribed_topic_regex.map(|r| r.to_string()),
        server_assignor: request.server_assignor.map(|a| a.to_string()),
        owned_partitions,
        client_id: ctx.client_id.clone(),
        // As Kafka shows a member's address: Java's InetAddress without a host name.
        client_host: format!("/{}", ctx.client_host),
    };
    let partition_counts: BTreeMap<String, i32> = catalog
        .iter()
        .map(|(name, (_, count))| (name.clone(), *count))
        .collect();
    let result = ctx
        .broker
        .group_coordinator()
        .consumer_group_heartbeat(params, &partition_counts);
    match result {
        Ok(result) => {
            let assignment = result.assignment.map(|partitions| {
                let topic_partitions = by_topic(&partitions)
                    .into_iter()
                    .filter_map(|(topic, indexes)| {
                        let (topic_id, _) = catalog.get(topic)?;
                        Some(
                            consumer_group_heartbeat_response::TopicPartitions::default()
                                .with_topic_id(*topic_id)
                                .with_partitions(indexes),
                        )
                    })
                    .collect();
                Assignment::default().with_topic_partitions(topic_partitions)
            });
            ConsumerGroupHeartbeatResponse::default()
                .with_member_id(Some(str_bytes(result.member_id)))
                .with_member_epoch(result.member_epoch)
                .with_heartbeat_interval_ms(result.heartbeat_interval_ms)
                .with_assignment(assignment)
        }
        Err(error) => ConsumerGroupHeartbeatResponse::default()
            .with_error_code(group_error_code(&error))
            .with_error_message(Some(str_bytes(error_message(&error, &group_id)))),
    }
}

pub async fn consumer_group_describe(
    ctx: &RequestContext,
    version: i16,
    request: ConsumerGroupDescribeRequest,
) -> ConsumerGroupDescribeResponse {
    let refused = refused_here(ctx);
    let catalog = topic_catalog(ctx);
    let coordinator = ctx.broker.group_coordinator();
    let assignment = |partitions: &[TopicPartition]| {
        let topic_partitions = by_topic(partitions)
            .into_iter()
            .map(|(topic, indexes)| {
                let topic_id = catalog.get(topic).map(|(id, _)| *id).unwrap_or_default();
                consumer_group_describe_response::TopicPartitions::default()
                    .with_topic_id(topic_id)
                    .with_topic_name(TopicName(str_bytes(topic)))
                    .with_partitions(indexes)
            })
            .collect();
        consumer_group_describe_response::Assignment::default()
            .with_topic_partitions(topic_partitions)
    };
    let groups = request
        .group_ids
        .into_iter()
        .map(|group_id| {
            if refused {
                return DescribedGroup::default()
                    .with_group_id(group_id)
                    .with_error_code(ResponseError::NotCoordinator.code());
            }
            let description = match coordinator.describe_consumer_group(&group_id) {
                Ok(description) => description,
                Err(error) => {
                    let message = if coordinator.describe_group(&group_id).state == GroupState::Dead
                    {
                        format!("Group {} not found.", group_id.as_str())
                    } else {
                        error_message(&error, &group_id)
                    };
                    return DescribedGroup::default()
                        .with_group_id(group_id)
                        .with_error_code(group_error_code(&error))
                        .with_error_message(Some(str_bytes(message)));
                }
            };
            let members = description
                .members
                .into_iter()
                .map(|m| {
                    let member = Member::default()
                        .with_member_id(str_bytes(m.member_id))
                        .with_instance_id(m.instance_id.map(str_bytes))
                        .with_rack_id(m.rack_id.map(str_bytes))
                        .with_member_epoch(m.member_epoch)
                        .with_client_id(str_bytes(m.client_id))
                        .with_client_host(str_bytes(m.client_host))
                        .with_subscribed_topic_names(
                            m.subscribed_topic_names
                                .into_iter()
                                .map(|t| TopicName(str_bytes(t)))
                                .collect(),
                        )
                        .with_subscribed_topic_regex(m.subscribed_topic_regex.map(str_bytes))
                        .with_assignment(assignment(&m.assignment))
                        .with_target_assignment(assignment(&m.target_assignment));
                    if version >= 1 {
                        member.with_member_type(if m.is_classic {
                            MEMBER_TYPE_CLASSIC
                        } else {
                            MEMBER_TYPE_CONSUMER
                        })
                    } else {
                        member
                    }
                })
                .collect();
            DescribedGroup::default()
                .with_group_id(group_id)
                .with_group_state(str_bytes(description.state.name()))
                .with_group_epoch(description.group_epoch)
                .with_assignment_epoch(description.assignment_epoch)
                .with_assignor_name(str_bytes(description.assignor_name))
                .with_members(members)
                .with_authorized_operations(if request.include_authorized_operations {
                    GROUP_AUTHORIZED_OPERATIONS
                } else {
                    AUTHORIZED_OPERATIONS_OMITTED
                })
        })
        .collect();
    ConsumerGroupDescribeResponse::default().with_groups(groups)
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::consumer_group_heartbeat_request;
    use kafka_protocol::messages::GroupId;
    use kafka_protocol::protocol::StrBytes;

    use super::*;
    use crate::handlers::groups::tests::{context, encodes};

    #[tokio::test]
    async fn heartbeats_map_topic_ids_and_every_version_encodes() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        let topic_id = ctx.broker.topic("events").unwrap().id();
        for version in 0..=1 {
            let group = format!("g{version}");
            let join = ConsumerGroupHeartbeatRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(group.clone())))
                .with_member_id(StrBytes::from_static_str(if version == 0 {
                    ""
                } else {
                    "m"
                }))
                .with_rebalance_timeout_ms(30_000)
                .with_subscribed_topic_names(Some(vec![TopicName(str_bytes("events"))]))
                .with_topic_partitions(Some(vec![]));
            let joined = consumer_group_heartbeat(&ctx, version, join).await;
            assert_eq!(joined.error_code, 0, "{joined:?}");
            assert_eq!(joined.member_epoch, 1);
            let assignment = joined.assignment.clone().unwrap();
            assert_eq!(assignment.topic_partitions[0].topic_id, topic_id);
            assert_eq!(assignment.topic_partitions[0].partitions, vec![0, 1]);
            encodes(&joined, version);
            // Owned partitions of an unknown topic id are ignored, not an error.
            let member_id = joined.member_id.clone().unwrap();
            let steady = ConsumerGroupHeartbeatRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(group.clone())))
                .with_member_id(member_id)
                .with_member_epoch(1)
                .with_topic_partitions(Some(vec![
                    consumer_group_heartbeat_request::TopicPartitions::default()
                        .with_topic_id(topic_id)
                        .with_partitions(vec![0, 1]),
                    consumer_group_heartbeat_request::TopicPartitions::default()
                        .with_topic_id(Uuid::new_v4())
                        .with_partitions(vec![0]),
                ]));
            let steady = consumer_group_heartbeat(&ctx, version, steady).await;
            assert_eq!((steady.error_code, steady.assignment), (0, None));
            let described = consumer_group_describe(
                &ctx,
                version,
                ConsumerGroupDescribeRequest::default().with_group_ids(vec![
                    GroupId(StrBytes::from_string(group)),
                    GroupId(str_bytes("none")),
                ]),
            )
            .await;
            assert_eq!(described.groups[0].group_state.as_str(), "Stable");
            let member = &described.groups[0].members[0];
            assert_eq!(
                member.assignment.topic_partitions[0].topic_name.as_str(),
                "events"
            );
            assert_eq!(
                described.groups[1].error_code,
                ResponseError::GroupIdNotFound.code()
            );
            encodes(&described, version);
        }
        let refused = consumer_group_heartbeat(
            &ctx,
            1,
            ConsumerGroupHeartbeatRequest::default()
                .with_group_id(GroupId(str_bytes("g1")))
                .with_member_id(str_bytes("m"))
                .with_member_epoch(9),
        )
        .await;
        assert_eq!(refused.error_code, ResponseError::FencedMemberEpoch.code());
        assert!(refused.error_message.is_some());
        encodes(&refused, 1);
    }
}
