//! Per-API request metrics: `sluice_kafka_requests_total{api}`,
//! `sluice_kafka_request_duration_seconds{api}` (decode to response built, not counting the wait
//! behind earlier responses of the connection) and `sluice_kafka_request_errors_total{api,error}`
//! for every non-zero error code a response carries (per partition for produce, fetch and the
//! like), named as Kafka names them (`UNKNOWN_TOPIC_OR_PARTITION`).
//!
//! Each connection caches the handles of the APIs it uses, so a request costs two atomic adds
//! and no label formatting; errors are rare and registered as they happen. Requests at a
//! version we do not speak count under their API with error `UNSUPPORTED_VERSION`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use kafka_protocol::messages::{ApiKey, ResponseKind};
use kafka_protocol::ResponseError;
use metrics::{Counter, Histogram};

pub(crate) const REQUESTS_METRIC: &str = "sluice_kafka_requests_total";
pub(crate) const REQUEST_ERRORS_METRIC: &str = "sluice_kafka_request_errors_total";
pub(crate) const REQUEST_DURATION_METRIC: &str = "sluice_kafka_request_duration_seconds";

/// One API's handles.
pub(crate) struct ApiMetrics {
    api: String,
    requests: Counter,
    duration_seconds: Histogram,
}

impl ApiMetrics {
    /// Records a finished request: its duration, and the errors its response carries.
    pub(crate) fn finished(&self, started: Instant, response: Option<&ResponseKind>) {
        self.duration_seconds.record(started.elapsed());
        if let Some(response) = response {
            for_each_error_code(response, &mut |code| {
                if code != 0 {
                    metrics::counter!(
                        REQUEST_ERRORS_METRIC,
                        "api" => self.api.clone(),
                        "error" => error_name(code)
                    )
                    .increment(1);
                }
            });
        }
    }
}

/// A connection's cache of per-API handles.
#[derive(Default)]
pub(crate) struct RequestMetrics {
    by_api: HashMap<i16, Arc<ApiMetrics>>,
}

impl RequestMetrics {
    /// Counts a request of `api_key` and returns its API's handles for when it finishes.
    pub(crate) fn started(&mut self, api_key: ApiKey) -> Arc<ApiMetrics> {
        let metrics = self.by_api.entry(api_key as i16).or_insert_with(|| {
            let api = format!("{api_key:?}");
            Arc::new(ApiMetrics {
                requests: metrics::counter!(REQUESTS_METRIC, "api" => api.clone()),
                duration_seconds: metrics::histogram!(REQUEST_DURATION_METRIC, "api" => api.clone()),
                api,
            })
        });
        metrics.requests.increment(1);
        Arc::clone(metrics)
    }
}

/// Counts a request refused with UNSUPPORTED_VERSION (or closed for it). An API key the codec
/// does not know is labelled `unknown`: a client must not be able to mint label values.
pub(crate) fn unsupported_version(api_key_code: i16) {
    let api =
        ApiKey::try_from(api_key_code).map_or_else(|_| "unknown".into(), |k| format!("{k:?}"));
    metrics::counter!(REQUESTS_METRIC, "api" => api.clone()).increment(1);
    metrics::counter!(REQUEST_ERRORS_METRIC, "api" => api, "error" => "UNSUPPORTED_VERSION")
        .increment(1);
}

/// Kafka's own name of an error code (`UNKNOWN_TOPIC_OR_PARTITION`), from the codec's variant
/// name; `UNKNOWN_<code>` for a code the codec does not know.
pub(crate) fn error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        Some(ResponseError::Unknown(_)) | None => format!("UNKNOWN_{code}"),
        Some(error) => screaming_snake_case(&format!("{error:?}")),
    }
}

fn screaming_snake_case(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 8);
    for (index, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && index > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Calls `on_code` with every error code in `response` (zeros included) for the APIs whose
/// errors matter to an operator; responses of other APIs report none.
fn for_each_error_code(response: &ResponseKind, on_code: &mut dyn FnMut(i16)) {
    match response {
        ResponseKind::Produce(r) => r
            .responses
            .iter()
            .flat_map(|t| &t.partition_responses)
            .for_each(|p| on_code(p.error_code)),
        ResponseKind::Fetch(r) => {
            on_code(r.error_code);
            r.responses
                .iter()
                .flat_map(|t| &t.partitions)
                .for_each(|p| on_code(p.error_code));
        }
        ResponseKind::ListOffsets(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| on_code(p.error_code)),
        ResponseKind::Metadata(r) => r.topics.iter().for_each(|t| on_code(t.error_code)),
        ResponseKind::OffsetCommit(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| on_code(p.error_code)),
        ResponseKind::OffsetFetch(r) => {
            on_code(r.error_code);
            r.topics
                .iter()
                .flat_map(|t| &t.partitions)
                .for_each(|p| on_code(p.error_code));
            for group in &r.groups {
                on_code(group.error_code);
                group
                    .topics
                    .iter()
                    .flat_map(|t| &t.partitions)
                    .for_each(|p| on_code(p.error_code));
            }
        }
        ResponseKind::FindCoordinator(r) => {
            on_code(r.error_code);
            r.coordinators.iter().for_each(|c| on_code(c.error_code));
        }
        ResponseKind::JoinGroup(r) => on_code(r.error_code),
        ResponseKind::SyncGroup(r) => on_code(r.error_code),
        ResponseKind::Heartbeat(r) => on_code(r.error_code),
        ResponseKind::LeaveGroup(r) => on_code(r.error_code),
        ResponseKind::ListGroups(r) => on_code(r.error_code),
        ResponseKind::DescribeGroups(r) => r.groups.iter().for_each(|g| on_code(g.error_code)),
        ResponseKind::DeleteGroups(r) => r.results.iter().for_each(|g| on_code(g.error_code)),
        ResponseKind::CreateTopics(r) => r.topics.iter().for_each(|t| on_code(t.error_code)),
        ResponseKind::DeleteTopics(r) => r.responses.iter().for_each(|t| on_code(t.error_code)),
        ResponseKind::InitProducerId(r) => on_code(r.error_code),
        ResponseKind::ApiVersions(r) => on_code(r.error_code),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_are_kafkas() {
        assert_eq!(
            error_name(ResponseError::UnknownTopicOrPartition.code()),
            "UNKNOWN_TOPIC_OR_PARTITION"
        );
        assert_eq!(
            error_name(ResponseError::CorruptMessage.code()),
            "CORRUPT_MESSAGE"
        );
        assert_eq!(error_name(-29_000), "UNKNOWN_-29000");
    }
}
