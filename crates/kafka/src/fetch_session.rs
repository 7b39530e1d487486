//! Incremental fetch sessions (KIP-227). A consumer fetching many partitions names them all
//! once; later requests name only the partitions whose fetch position changed (and those to
//! forget), and responses carry only the partitions with news: records, an error, or a moved
//! high watermark, last stable offset or log start offset.
//!
//! The session layer sits around the fetch handlers: [`FetchSessions::open`] turns a request
//! into the full request the handler serves, and [`SessionFetch::finish`] turns the full
//! response into what the session owes the client. Sessions live per listener, in memory; a
//! broker restart forgets them and clients start again with FETCH_SESSION_ID_NOT_FOUND.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::FetchableTopicResponse;
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use kafka_protocol::ResponseError;
use parking_lot::Mutex;

/// Kafka's `max.incremental.fetch.session.cache.slots`.
const SESSIONS_MAX: usize = 1000;
/// A session unused this long may be evicted to make room for a new one.
const SESSION_IDLE_EVICTABLE: Duration = Duration::from_secs(120);
/// Sessions exist from Fetch v7 on.
const FIRST_SESSION_VERSION: i16 = 7;
/// A session id of 0 with epoch 0 asks for a new session; epoch -1 asks for none.
const INITIAL_EPOCH: i32 = 0;
const FINAL_EPOCH: i32 = -1;

/// A partition as the session knows it: named by topic name (v7-12) or id (v13+).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PartitionKey {
    topic: TopicName,
    topic_id: uuid::Uuid,
    partition: i32,
}

#[derive(Debug, Clone)]
struct CachedPartition {
    request: FetchPartition,
    /// What the client last heard, so an unchanged partition can be left out (-1: nothing yet).
    high_watermark: i64,
    last_stable_offset: i64,
    log_start_offset: i64,
}

#[derive(Debug)]
struct Session {
    /// The epoch the next incremental request must carry.
    next_epoch: i32,
    /// In the order the client added them (the order of the full request).
    order: Vec<PartitionKey>,
    partitions: HashMap<PartitionKey, CachedPartition>,
    last_used: Instant,
}

/// The sessions of one Kafka listener.
#[derive(Debug, Default)]
pub struct FetchSessions {
    sessions: Mutex<HashMap<i32, Session>>,
}

/// A fetch in a session (or in none): what to answer once the full fetch is done.
#[derive(Debug)]
pub struct SessionFetch {
    /// 0 for a sessionless fetch, which answers every partition.
    session_id: i32,
    /// A full fetch (new session or none) answers every partition; an incremental one only
    /// those with news.
    incremental: bool,
}

fn key(topic: &FetchTopic, partition: i32) -> PartitionKey {
    PartitionKey {
        topic: topic.topic.clone(),
        topic_id: topic.topic_id,
        partition,
    }
}

fn next_epoch(epoch: i32) -> i32 {
    if epoch == i32::MAX {
        1
    } else {
        epoch + 1
    }
}

impl FetchSessions {
    /// The full request to serve and how to answer it, or the error response KIP-227 gives
    /// for an unknown session or a wrong epoch.
    pub fn open(
        &self,
        version: i16,
        mut request: FetchRequest,
    ) -> Result<(FetchRequest, SessionFetch), FetchResponse> {
        let sessionless = SessionFetch {
            session_id: 0,
            incremental: false,
        };
        if version < FIRST_SESSION_VERSION {
            return Ok((request, sessionless));
        }
        let mut sessions = self.sessions.lock();
        let now = Instant::now();
        match (request.session_id, request.session_epoch) {
            (id, FINAL_EPOCH) => {
                // A full fetch that wants no session, closing the one it names.
                sessions.remove(&id);
                Ok((request, sessionless))
            }
            (0, INITIAL_EPOCH) => {
                let Some(id) = new_session_id(&mut sessions, now) else {
                    return Ok((request, sessionless));
                };
                let mut session = Session {
                    next_epoch: 1,
                    order: Vec::new(),
                    partitions: HashMap::new(),
                    last_used: now,
                };
                for topic in &request.topics {
                    for partition in &topic.partitions {
                        session.upsert(key(topic, partition.partition), partition.clone());
                    }
                }
                sessions.insert(id, session);
                Ok((
                    request,
                    SessionFetch {
                        session_id: id,
                        incremental: false,
                    },
                ))
            }
            (0, _) => Err(error_response(ResponseError::FetchSessionIdNotFound, 0)),
            (id, epoch) => {
                let Some(session) = sessions.get_mut(&id) else {
                    return Err(error_response(ResponseError::FetchSessionIdNotFound, 0));
                };
                if epoch != session.next_epoch {
                    return Err(error_response(ResponseError::InvalidFetchSessionEpoch, 0));
                }
                session.next_epoch = next_epoch(epoch);
                session.last_used = now;
                for topic in &request.topics {
                    for partition in &topic.partitions {
                        session.upsert(key(topic, partition.partition), partition.clone());
                    }
                }
                for forgotten in &request.forgotten_topics_data {
                    for &partition in &forgotten.partitions {
                        session.remove(&PartitionKey {
                            topic: forgotten.topic.clone(),
                            topic_id: forgotten.topic_id,
                            partition,
                        });
                    }
                }
                request.topics = session.full_topics();
                request.forgotten_topics_data.clear();
                Ok((
                    request,
                    SessionFetch {
                        session_id: id,
                        incremental: true,
                    },
                ))
            }
        }
    }

    /// The response the client gets: the session id, and in an incremental fetch only the
    /// partitions with news. Every partition's offsets are remembered for the next one.
    pub fn finish(&self, fetch: SessionFetch, mut response: FetchResponse) -> FetchResponse {
        response.session_id = fetch.session_id;
        if fetch.session_id == 0 || response.error_code != 0 {
            return response;
        }
        let mut sessions = self.sessions.lock();
        let Some(session) = sessions.get_mut(&fetch.session_id) else {
            return response;
        };
        for topic in &mut response.responses {
            let FetchableTopicResponse {
                topic: name,
                topic_id,
                partitions,
                ..
            } = topic;
            partitions.retain(|data| {
                let key = PartitionKey {
                    topic: name.clone(),
                    topic_id: *topic_id,
                    partition: data.partition_index,
                };
                let Some(cached) = session.partitions.get_mut(&key) else {
                    return true;
                };
                let news = data.error_code != 0
                    || data.records.as_ref().is_some_and(|r| !r.is_empty())
                    || data.high_watermark != cached.high_watermark
                    || data.last_stable_offset != cached.last_stable_offset
                    || data.log_start_offset != cached.log_start_offset;
                cached.high_watermark = data.high_watermark;
                cached.last_stable_offset = data.last_stable_offset;
                cached.log_start_offset = data.log_start_offset;
                !fetch.incremental || news
            });
        }
        if fetch.incremental {
            response
                .responses
                .retain(|topic| !topic.partitions.is_empty());
        }
        response
    }

    #[cfg(test)]
    fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }
}

impl Session {
    fn upsert(&mut self, key: PartitionKey, request: FetchPartition) {
        match self.partitions.get_mut(&key) {
            Some(cached) => cached.request = request,
            None => {
                self.order.push(key.clone());
                self.partitions.insert(
                    key,
                    CachedPartition {
                        request,
                        high_watermark: -1,
                        last_stable_offset: -1,
                        log_start_offset: -1,
                    },
                );
            }
        }
    }

    fn remove(&mut self, key: &PartitionKey) {
        if self.partitions.remove(key).is_some() {
            self.order.retain(|k| k != key);
        }
    }

    /// Every partition of the session as the topics of a full request, in the session's
    /// order (partitions of one topic together, as clients send them).
    fn full_topics(&self) -> Vec<FetchTopic> {
        let mut topics: Vec<FetchTopic> = Vec::new();
        for key in &self.order {
            let Some(cached) = self.partitions.get(key) else {
                continue;
            };
            let same_topic = |t: &FetchTopic| t.topic == key.topic && t.topic_id == key.topic_id;
            match topics.iter_mut().find(|t| same_topic(t)) {
                Some(topic) => topic.partitions.push(cached.request.clone()),
                None => topics.push(
                    FetchTopic::default()
                        .with_topic(key.topic.clone())
                        .with_topic_id(key.topic_id)
                        .with_partitions(vec![cached.request.clone()]),
                ),
            }
        }
        topics
    }
}

/// A free session id, evicting the least recently used idle session when the cache is full;
/// `None` when it is full of active sessions (the client then fetches without one).
fn new_session_id(sessions: &mut HashMap<i32, Session>, now: Instant) -> Option<i32> {
    if sessions.len() >= SESSIONS_MAX {
        let idle = sessions
            .iter()
            .filter(|(_, s)| now.duration_since(s.last_used) >= SESSION_IDLE_EVICTABLE)
            .min_by_key(|(_, s)| s.last_used)
            .map(|(&id, _)| id)?;
        sessions.remove(&idle);
    }
    loop {
        let id = (rand_u32() & 0x7fff_ffff) as i32;
        if id != 0 && !sessions.contains_key(&id) {
            return Some(id);
        }
    }
}

fn rand_u32() -> u32 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

fn error_response(error: ResponseError, session_id: i32) -> FetchResponse {
    FetchResponse::default()
        .with_error_code(error.code())
        .with_session_id(session_id)
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::fetch_request::ForgottenTopic;
    use kafka_protocol::messages::fetch_response::PartitionData;
    use kafka_protocol::protocol::StrBytes;

    use super::*;

    fn topic(name: &'static str, partitions: &[(i32, i64)]) -> FetchTopic {
        FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str(name)))
            .with_partitions(
                partitions
                    .iter()
                    .map(|&(p, offset)| {
                        FetchPartition::default()
                            .with_partition(p)
                            .with_fetch_offset(offset)
                    })
                    .collect(),
            )
    }

    fn request(id: i32, epoch: i32, topics: Vec<FetchTopic>) -> FetchRequest {
        FetchRequest::default()
            .with_session_id(id)
            .with_session_epoch(epoch)
            .with_topics(topics)
    }

    /// A response to `full` with `records` bytes for the named partitions, and every high
    /// watermark at `high_watermark`.
    fn response(full: &FetchRequest, with_records: &[i32], high_watermark: i64) -> FetchResponse {
        FetchResponse::default().with_responses(
            full.topics
                .iter()
                .map(|t| {
                    FetchableTopicResponse::default()
                        .with_topic(t.topic.clone())
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    let records = if with_records.contains(&p.partition) {
                                        bytes::Bytes::from_static(b"batch")
                                    } else {
                                        bytes::Bytes::new()
                                    };
                                    PartitionData::default()
                                        .with_partition_index(p.partition)
                                        .with_high_watermark(high_watermark)
                                        .with_last_stable_offset(high_watermark)
                                        .with_records(Some(records))
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
    }

    fn answered(response: &FetchResponse) -> Vec<(String, i32)> {
        response
            .responses
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.topic.to_string(), p.partition_index))
            })
            .collect()
    }

    #[test]
    fn an_incremental_fetch_names_only_changes_and_answers_only_news() {
        let sessions = FetchSessions::default();
        let first = request(
            0,
            0,
            vec![topic("a", &[(0, 0), (1, 0)]), topic("b", &[(0, 5)])],
        );
        let (full, fetch) = sessions.open(12, first).expect("new session");
        assert_eq!(full.topics.len(), 2);
        let answer = sessions.finish(fetch, response(&full, &[], 10));
        let id = answer.session_id;
        assert_ne!(id, 0);
        assert_eq!(
            answer_count(&answer),
            3,
            "a new session answers every partition"
        );

        // Epoch 1 moves a-1 and forgets b-0: the full request is a-0 (as cached) and a-1.
        let next = request(id, 1, vec![topic("a", &[(1, 7)])]).with_forgotten_topics_data(vec![
            ForgottenTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("b")))
                .with_partitions(vec![0]),
        ]);
        let (full, fetch) = sessions.open(12, next).expect("incremental");
        let offsets: Vec<(i32, i64)> = full.topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition, p.fetch_offset))
            .collect();
        assert_eq!(full.topics.len(), 1);
        assert_eq!(offsets, vec![(0, 0), (1, 7)]);
        // Only a-1 has records; nothing else changed, so only a-1 is answered.
        let answer = sessions.finish(fetch, response(&full, &[1], 10));
        assert_eq!(answered(&answer), vec![("a".to_string(), 1)]);
        assert_eq!(answer.session_id, id);

        // A moved high watermark is news too.
        let (full, fetch) = sessions.open(12, request(id, 2, vec![])).expect("epoch 2");
        let answer = sessions.finish(fetch, response(&full, &[], 11));
        assert_eq!(answered(&answer), vec![("a".into(), 0), ("a".into(), 1)]);
    }

    #[test]
    fn unknown_sessions_and_wrong_epochs_are_refused_and_final_epoch_closes() {
        let sessions = FetchSessions::default();
        let refused = sessions
            .open(12, request(77, 1, vec![]))
            .expect_err("unknown");
        assert_eq!(
            refused.error_code,
            ResponseError::FetchSessionIdNotFound.code()
        );
        let (full, fetch) = sessions
            .open(12, request(0, 0, vec![topic("a", &[(0, 0)])]))
            .expect("new");
        let id = sessions.finish(fetch, response(&full, &[], 0)).session_id;
        let refused = sessions
            .open(12, request(id, 5, vec![]))
            .expect_err("epoch");
        assert_eq!(
            refused.error_code,
            ResponseError::InvalidFetchSessionEpoch.code()
        );
        let (_, fetch) = sessions
            .open(12, request(id, FINAL_EPOCH, vec![topic("a", &[(0, 0)])]))
            .expect("final");
        assert_eq!(fetch.session_id, 0);
        assert_eq!(sessions.session_count(), 0);
        // Before v7 there are no sessions at all.
        let (_, fetch) = sessions.open(6, request(0, 0, vec![])).expect("old");
        assert_eq!(fetch.session_id, 0);
    }

    fn answer_count(response: &FetchResponse) -> usize {
        response.responses.iter().map(|t| t.partitions.len()).sum()
    }
}
