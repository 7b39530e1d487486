//! Kafka's controller mutation quota (KIP-599): partitions created by CreateTopics and
//! CreatePartitions and deleted by DeleteTopics count against a client's
//! `controller_mutation_rate`, in a token bucket (`sluice_auth::quotas::MutationQuota`).
//!
//! Under a quota the request is served one topic at a time, so each topic sees what the ones
//! before it took, as Kafka's controller does. A request of a version that knows the error
//! (CreateTopics v6+, CreatePartitions v3+, DeleteTopics v5+) gets THROTTLING_QUOTA_EXCEEDED
//! for every topic met while the bucket is empty; an older one is served whole (Kafka's
//! permissive quota). Either way the response carries the time until the bucket is back at
//! zero as throttle_time_ms, and the connection is not read for that long.

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreatePartitionsResponse, CreateTopicsResponse, DeleteTopicsResponse, RequestKind,
    ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_auth::quotas::{MutationQuota, CONTROLLER_MUTATION_RATE};

use crate::connection::{dispatch_authorized, ResponseHold};
use crate::RequestContext;

const THROTTLED: ResponseError = ResponseError::ThrottlingQuotaExceeded;

fn throttled_message() -> Option<StrBytes> {
    Some(StrBytes::from_static_str(
        "The throttling quota has been exceeded.",
    ))
}

/// Serves a topic mutation under the client's `controller_mutation_rate`; gives the request
/// back when it is no mutation or no such quota applies.
pub(crate) async fn serve_under_quota(
    context: &RequestContext,
    version: i16,
    request: RequestKind,
    hold: &mut ResponseHold,
) -> Result<Option<ResponseKind>, RequestKind> {
    if !matches!(
        request,
        RequestKind::CreateTopics(_)
            | RequestKind::DeleteTopics(_)
            | RequestKind::CreatePartitions(_)
    ) {
        return Err(request);
    }
    let Some(quota) = context
        .security
        .quotas
        .controller_mutation(context.quota_user(), &context.client_id)
    else {
        return Err(request);
    };
    let response = match request {
        RequestKind::CreateTopics(mut request) => {
            let strict = version >= 6;
            let mut results = Vec::with_capacity(request.topics.len());
            for topic in std::mem::take(&mut request.topics) {
                if strict && quota.exceeded() {
                    results.push(
                        CreatableTopicResult::default()
                            .with_name(topic.name.clone())
                            .with_error_code(THROTTLED.code())
                            .with_error_message(throttled_message())
                            .with_num_partitions(-1)
                            .with_replication_factor(-1),
                    );
                    continue;
                }
                let single = request.clone().with_topics(vec![topic]);
                if let Some(ResponseKind::CreateTopics(response)) =
                    dispatch_authorized(context, version, RequestKind::CreateTopics(single), hold)
                        .await
                {
                    for result in response.topics {
                        if result.error_code == 0 && !request.validate_only {
                            quota.record(f64::from(result.num_partitions.max(0)));
                        }
                        results.push(result);
                    }
                }
            }
            ResponseKind::CreateTopics(
                CreateTopicsResponse::default()
                    .with_topics(results)
                    .with_throttle_time_ms(throttle_ms(context, &quota)),
            )
        }
        RequestKind::DeleteTopics(mut request) => {
            let strict = version >= 5;
            // v0-5 name topics in `topic_names`, v6 in `topics` (by name or id).
            let mut targets: Vec<DeleteTopicState> = std::mem::take(&mut request.topic_names)
                .into_iter()
                .map(|name| DeleteTopicState::default().with_name(Some(name)))
                .collect();
            targets.extend(std::mem::take(&mut request.topics));
            let by_name = version < 6;
            let mut results = Vec::with_capacity(targets.len());
            for target in targets {
                if strict && quota.exceeded() {
                    results.push(
                        DeletableTopicResult::default()
                            .with_name(target.name.clone())
                            .with_topic_id(target.topic_id)
                            .with_error_code(THROTTLED.code())
                            .with_error_message(throttled_message()),
                    );
                    continue;
                }
                let partitions = partition_count(context, target.name.as_ref(), target.topic_id);
                let single = if by_name {
                    let name = target.name.clone().unwrap_or_default();
                    request.clone().with_topic_names(vec![name])
                } else {
                    request.clone().with_topics(vec![target])
                };
                if let Some(ResponseKind::DeleteTopics(response)) =
                    dispatch_authorized(context, version, RequestKind::DeleteTopics(single), hold)
                        .await
                {
                    for result in response.responses {
                        if result.error_code == 0 {
                            quota.record(f64::from(partitions.unwrap_or(0)));
                        }
                        results.push(result);
                    }
                }
            }
            ResponseKind::DeleteTopics(
                DeleteTopicsResponse::default()
                    .with_responses(results)
                    .with_throttle_time_ms(throttle_ms(context, &quota)),
            )
        }
        RequestKind::CreatePartitions(mut request) => {
            let strict = version >= 3;
            let mut results = Vec::with_capacity(request.topics.len());
            for topic in std::mem::take(&mut request.topics) {
                if strict && quota.exceeded() {
                    results.push(
                        CreatePartitionsTopicResult::default()
                            .with_name(topic.name.clone())
                            .with_error_code(THROTTLED.code())
                            .with_error_message(throttled_message()),
                    );
                    continue;
                }
                let before = partition_count(context, Some(&topic.name), uuid::Uuid::nil());
                let added = before.map_or(0, |before| (topic.count - before).max(0));
                let single = request.clone().with_topics(vec![topic]);
                if let Some(ResponseKind::CreatePartitions(response)) = dispatch_authorized(
                    context,
                    version,
                    RequestKind::CreatePartitions(single),
                    hold,
                )
                .await
                {
                    for result in response.results {
                        if result.error_code == 0 && !request.validate_only {
                            quota.record(f64::from(added));
                        }
                        results.push(result);
                    }
                }
            }
            ResponseKind::CreatePartitions(
                CreatePartitionsResponse::default()
                    .with_results(results)
                    .with_throttle_time_ms(throttle_ms(context, &quota)),
            )
        }
        other => return Err(other),
    };
    Ok(Some(response))
}

/// The throttle the bucket calls for, in milliseconds; the connection is muted for it.
fn throttle_ms(context: &RequestContext, quota: &MutationQuota<'_>) -> i32 {
    let throttle = quota.throttle_time();
    if throttle.is_zero() {
        return 0;
    }
    metrics::counter!("sluice_kafka_throttled_responses_total", "quota" => CONTROLLER_MUTATION_RATE)
        .increment(1);
    context.mute_for(throttle);
    i32::try_from(throttle.as_millis()).unwrap_or(i32::MAX)
}

/// Partitions of a topic now, by name or id (in a cluster, as its metadata has it).
fn partition_count(
    context: &RequestContext,
    name: Option<&TopicName>,
    topic_id: uuid::Uuid,
) -> Option<i32> {
    match &context.cluster {
        Some(cluster) => {
            let metadata = cluster.metadata();
            let topic = match name {
                Some(name) => metadata.topics.get(name.as_str()),
                None => metadata.topic_by_id(topic_id),
            }?;
            i32::try_from(topic.assignments.len()).ok()
        }
        None => {
            let topic = match name {
                Some(name) => context.broker.topic(name.as_str()),
                None => context.broker.topic_by_id(topic_id),
            }?;
            Some(topic.partition_count())
        }
    }
}
