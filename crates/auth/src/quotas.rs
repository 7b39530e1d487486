//! Kafka's client quotas (KIP-55, KIP-257, KIP-546): byte rates per user and client id, stored
//! in `quotas.json`, matched with Kafka's precedence, and the throttle a client has earned
//! when its recent rate is above its quota (Kafka's formula over a window of 11 one-second
//! samples); the controller mutation rate (KIP-599) with Kafka's token bucket.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::replication::{Document, DocumentKind, ReplicatedDocument};
use crate::AuthError;

pub const QUOTAS_FILE: &str = "quotas.json";
pub const PRODUCER_BYTE_RATE: &str = "producer_byte_rate";
pub const CONSUMER_BYTE_RATE: &str = "consumer_byte_rate";
pub const REQUEST_PERCENTAGE: &str = "request_percentage";
pub const CONTROLLER_MUTATION_RATE: &str = "controller_mutation_rate";
/// The keys AlterClientQuotas accepts for users and client ids.
pub const KEYS: [&str; 4] = [
    PRODUCER_BYTE_RATE,
    CONSUMER_BYTE_RATE,
    REQUEST_PERCENTAGE,
    CONTROLLER_MUTATION_RATE,
];
pub const USER: &str = "user";
pub const CLIENT_ID: &str = "client-id";

/// Kafka's quota.window.num and quota.window.size.seconds.
const SAMPLES: usize = 11;
const SAMPLE_LENGTH: Duration = Duration::from_secs(1);
/// The longest throttle given at once (Kafka caps it at the window's length).
const THROTTLE_MAX: Duration = Duration::from_secs(11);

/// One component of an entity: a named user or client id, or the default one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EntityName {
    Default,
    Named(String),
}

/// What a quota is set on: a user, a client id, or both; a missing component is absent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QuotaEntity {
    pub user: Option<EntityName>,
    pub client_id: Option<EntityName>,
}

/// DescribeClientQuotas' component filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentFilter {
    /// The component has exactly this name.
    Exact(String, String),
    /// The component is the default.
    Default(String),
    /// The component is present with any name (not the default).
    Specified(String),
}

impl ComponentFilter {
    fn entity_type(&self) -> &str {
        match self {
            ComponentFilter::Exact(t, _)
            | ComponentFilter::Default(t)
            | ComponentFilter::Specified(t) => t,
        }
    }
}

/// The document kept in `quotas.json`: entities with their quotas, as a list of pairs (JSON
/// object keys cannot be entities).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Quotas {
    #[serde(with = "crate::replication::map_as_list")]
    quotas: BTreeMap<QuotaEntity, BTreeMap<String, f64>>,
}

/// A sliding window of per-second totals.
#[derive(Debug)]
struct Rate {
    samples: VecDeque<(Instant, f64)>,
}

impl Rate {
    fn record(&mut self, now: Instant, amount: f64) {
        match self.samples.back_mut() {
            Some((start, total)) if now.duration_since(*start) < SAMPLE_LENGTH => *total += amount,
            _ => self.samples.push_back((now, amount)),
        }
        while self.samples.len() > SAMPLES {
            self.samples.pop_front();
        }
    }

    /// Units per second over the window: at least (samples - 1) sample lengths, as Kafka's
    /// Rate, so a first burst is not measured over a few milliseconds.
    fn per_second(&self, now: Instant) -> (f64, Duration) {
        let total: f64 = self.samples.iter().map(|(_, amount)| amount).sum();
        let oldest = self.samples.front().map_or(now, |(start, _)| *start);
        let window = now
            .duration_since(oldest)
            .max(SAMPLE_LENGTH * (SAMPLES as u32 - 1));
        (total / window.as_secs_f64(), window)
    }
}

/// The rate measured for each entity and quota key.
type Rates = HashMap<(QuotaEntity, &'static str), Rate>;

/// The quotas and the rates measured against them.
pub struct QuotaStore {
    document: Document<Quotas>,
    /// No quota at all (as of document revision `empty_revision`): recording costs nothing.
    empty: AtomicBool,
    empty_revision: AtomicU64,
    /// The measured rates, and the document revision they were measured under: a change of
    /// the quotas starts them again.
    rates: Mutex<(u64, Rates)>,
    /// The controller-mutation token buckets, likewise.
    buckets: Mutex<(u64, HashMap<QuotaEntity, TokenBucket>)>,
}

/// Kafka's token bucket for `controller_mutation_rate` (KIP-599): it holds up to a window's
/// worth of mutations (rate x 11 s), refills at the rate, and may go below zero by the last
/// request admitted while it still had tokens.
#[derive(Debug)]
struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

/// The `controller_mutation_rate` that applies to a client, with its bucket in the store:
/// partitions created (CreateTopics, CreatePartitions) or deleted (DeleteTopics) per second.
pub struct MutationQuota<'a> {
    store: &'a QuotaStore,
    entity: QuotaEntity,
    rate: f64,
}

impl MutationQuota<'_> {
    /// Runs `f` on the bucket, refilled up to now.
    fn bucket<R>(&self, f: impl FnOnce(&mut TokenBucket) -> R) -> R {
        let now = Instant::now();
        let burst = self.rate * (SAMPLES as f64) * SAMPLE_LENGTH.as_secs_f64();
        let revision = self.store.document.revision();
        let mut buckets = self.store.buckets.lock();
        if buckets.0 != revision {
            *buckets = (revision, HashMap::new());
        }
        let bucket = buckets
            .1
            .entry(self.entity.clone())
            .or_insert_with(|| TokenBucket {
                tokens: burst,
                updated: now,
            });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(burst);
        bucket.updated = now;
        f(bucket)
    }

    /// The bucket is empty: a strict request (CreateTopics v6+, CreatePartitions v3+,
    /// DeleteTopics v5+) gets THROTTLING_QUOTA_EXCEEDED for its further topics.
    pub fn exceeded(&self) -> bool {
        self.bucket(|bucket| bucket.tokens < 0.0)
    }

    /// Takes `mutations` (partitions) from the bucket; it may go below zero.
    pub fn record(&self, mutations: f64) {
        self.bucket(|bucket| bucket.tokens -= mutations);
    }

    /// How long until the bucket is back at zero (zero when it is not below).
    pub fn throttle_time(&self) -> Duration {
        self.bucket(|bucket| {
            if bucket.tokens >= 0.0 || self.rate <= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-bucket.tokens / self.rate).min(THROTTLE_MAX)
            }
        })
    }
}

impl std::fmt::Debug for QuotaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuotaStore")
            .field("entities", &self.document.get().quotas.len())
            .finish_non_exhaustive()
    }
}

impl QuotaStore {
    pub fn open(data_dir: &Path) -> Result<Arc<QuotaStore>, AuthError> {
        let path = data_dir.join(QUOTAS_FILE);
        let document = Document::open(DocumentKind::Quotas, Some(path), Quotas::default, false)?;
        Ok(Arc::new(QuotaStore::with(document)))
    }

    pub fn in_memory() -> Arc<QuotaStore> {
        let document = Document::open(DocumentKind::Quotas, None, Quotas::default, false)
            .unwrap_or_else(|_| unreachable!("a store in memory reads and writes no file"));
        Arc::new(QuotaStore::with(document))
    }

    fn with(document: Document<Quotas>) -> Self {
        QuotaStore {
            empty: AtomicBool::new(document.get().quotas.is_empty()),
            empty_revision: AtomicU64::new(document.revision()),
            rates: Mutex::new((document.revision(), HashMap::new())),
            buckets: Mutex::new((document.revision(), HashMap::new())),
            document,
        }
    }

    /// The store as the cluster replicates it.
    pub fn replicated(&self) -> &dyn ReplicatedDocument {
        &self.document
    }

    pub fn is_empty(&self) -> bool {
        let revision = self.document.revision();
        if self.empty_revision.load(Ordering::Acquire) == revision {
            return self.empty.load(Ordering::Acquire);
        }
        // Changed here or installed from the cluster since.
        let empty = self.document.get().quotas.is_empty();
        self.empty.store(empty, Ordering::Release);
        self.empty_revision.store(revision, Ordering::Release);
        empty
    }

    /// DescribeClientQuotas: entities matching every filter (and, when strict, having no
    /// other component), with their quotas.
    pub fn describe(
        &self,
        filters: &[ComponentFilter],
        strict: bool,
    ) -> Vec<(QuotaEntity, BTreeMap<String, f64>)> {
        self.document
            .get()
            .quotas
            .iter()
            .filter(|(entity, _)| {
                let component = |entity_type: &str| match entity_type {
                    USER => entity.user.as_ref(),
                    CLIENT_ID => entity.client_id.as_ref(),
                    _ => None,
                };
                let all_match =
                    filters
                        .iter()
                        .all(|filter| match (filter, component(filter.entity_type())) {
                            (ComponentFilter::Exact(_, name), Some(EntityName::Named(n))) => {
                                n == name
                            }
                            (ComponentFilter::Default(_), Some(EntityName::Default)) => true,
                            (ComponentFilter::Specified(_), Some(EntityName::Named(_))) => true,
                            _ => false,
                        });
                let filtered =
                    |entity_type: &str| filters.iter().any(|f| f.entity_type() == entity_type);
                let nothing_else = (entity.user.is_none() || filtered(USER))
                    && (entity.client_id.is_none() || filtered(CLIENT_ID));
                all_match && (!strict || nothing_else)
            })
            .map(|(entity, quotas)| (entity.clone(), quotas.clone()))
            .collect()
    }

    /// AlterClientQuotas for one entity: each (key, value, remove) set or removed. Checked
    /// first, applied only if every operation is valid, and not at all when `validate_only`.
    pub async fn alter(
        &self,
        entity: &QuotaEntity,
        operations: &[(String, f64, bool)],
        validate_only: bool,
    ) -> Result<(), QuotaError> {
        if entity.user.is_none() && entity.client_id.is_none() {
            return Err(QuotaError::Invalid(
                "the entity names no user and no client id".into(),
            ));
        }
        for (key, value, remove) in operations {
            if !KEYS.contains(&key.as_str()) {
                return Err(QuotaError::Invalid(format!(
                    "Invalid configuration key {key}"
                )));
            }
            if !remove && (!value.is_finite() || *value <= 0.0) {
                return Err(QuotaError::Invalid(format!(
                    "Invalid value {value} for configuration key {key}: it must be positive"
                )));
            }
        }
        if validate_only {
            return Ok(());
        }
        self.document
            .change(|document: &mut Quotas| {
                let quotas = document.quotas.entry(entity.clone()).or_default();
                for (key, value, remove) in operations {
                    if *remove {
                        quotas.remove(key);
                    } else {
                        quotas.insert(key.clone(), *value);
                    }
                }
                if quotas.is_empty() {
                    document.quotas.remove(entity);
                }
                Ok::<_, QuotaError>(())
            })
            .await
    }

    /// The quota `key` that applies to a client, and the entity it is set on, in Kafka's order
    /// of precedence (user and client id, then user, then defaults, then client id alone).
    pub fn applicable(&self, user: &str, client_id: &str, key: &str) -> Option<(QuotaEntity, f64)> {
        let named = |name: &str| Some(EntityName::Named(name.to_string()));
        let default = || Some(EntityName::Default);
        let order = [
            (named(user), named(client_id)),
            (named(user), default()),
            (named(user), None),
            (default(), named(client_id)),
            (default(), default()),
            (default(), None),
            (None, named(client_id)),
            (None, default()),
        ];
        let document = self.document.get();
        order.into_iter().find_map(|(user, client_id)| {
            let entity = QuotaEntity { user, client_id };
            let value = *document.quotas.get(&entity)?.get(key)?;
            Some((entity, value))
        })
    }

    /// The `controller_mutation_rate` of a client, if one applies.
    pub fn controller_mutation(&self, user: &str, client_id: &str) -> Option<MutationQuota<'_>> {
        if self.is_empty() {
            return None;
        }
        let (entity, rate) = self.applicable(user, client_id, CONTROLLER_MUTATION_RATE)?;
        Some(MutationQuota {
            store: self,
            entity,
            rate,
        })
    }

    /// Records `amount` (bytes) of `key` for a client and answers how long it must now be
    /// throttled (zero when under its quota or without one).
    pub fn record(&self, user: &str, client_id: &str, key: &'static str, amount: f64) -> Duration {
        if self.is_empty() {
            return Duration::ZERO;
        }
        let Some((entity, quota)) = self.applicable(user, client_id, key) else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        let revision = self.document.revision();
        let mut rates = self.rates.lock();
        if rates.0 != revision {
            *rates = (revision, HashMap::new());
        }
        let rate = rates.1.entry((entity, key)).or_insert_with(|| Rate {
            samples: VecDeque::new(),
        });
        rate.record(now, amount);
        let (observed, window) = rate.per_second(now);
        if observed <= quota {
            return Duration::ZERO;
        }
        // Kafka's ClientQuotaManager: the time at the quota that brings the rate back to it.
        window.mul_f64((observed - quota) / quota).min(THROTTLE_MAX)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(AuthError),
}

impl From<AuthError> for QuotaError {
    fn from(error: AuthError) -> Self {
        QuotaError::Store(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(user: Option<EntityName>, client_id: Option<EntityName>) -> QuotaEntity {
        QuotaEntity { user, client_id }
    }

    fn named(name: &str) -> Option<EntityName> {
        Some(EntityName::Named(name.into()))
    }

    #[tokio::test]
    async fn precedence_is_kafkas() {
        let store = QuotaStore::in_memory();
        let set = async |e: QuotaEntity, v: f64| {
            store
                .alter(&e, &[(PRODUCER_BYTE_RATE.into(), v, false)], false)
                .await
                .unwrap()
        };
        set(entity(None, Some(EntityName::Default)), 8.0).await;
        assert_eq!(
            store.applicable("u", "c", PRODUCER_BYTE_RATE).unwrap().1,
            8.0
        );
        set(entity(None, named("c")), 7.0).await;
        assert_eq!(
            store.applicable("u", "c", PRODUCER_BYTE_RATE).unwrap().1,
            7.0
        );
        set(entity(Some(EntityName::Default), None), 6.0).await;
        assert_eq!(
            store.applicable("u", "c", PRODUCER_BYTE_RATE).unwrap().1,
            6.0
        );
        set(entity(named("u"), None), 3.0).await;
        assert_eq!(
            store.applicable("u", "c", PRODUCER_BYTE_RATE).unwrap().1,
            3.0
        );
        set(entity(named("u"), named("c")), 1.0).await;
        assert_eq!(
            store.applicable("u", "c", PRODUCER_BYTE_RATE).unwrap().1,
            1.0
        );
        assert_eq!(
            store.applicable("v", "d", PRODUCER_BYTE_RATE).unwrap().1,
            6.0
        );
        assert!(store.applicable("u", "c", CONSUMER_BYTE_RATE).is_none());
    }

    #[tokio::test]
    async fn a_client_over_its_quota_is_throttled_in_proportion() {
        let store = QuotaStore::in_memory();
        store
            .alter(
                &entity(named("u"), None),
                &[(PRODUCER_BYTE_RATE.into(), 1000.0, false)],
                false,
            )
            .await
            .unwrap();
        assert_eq!(
            store.record("u", "c", PRODUCER_BYTE_RATE, 5000.0),
            Duration::ZERO
        );
        // 20,000 bytes over the 10 s minimum window: 2,000 B/s, twice the quota: 10 s.
        let throttle = store.record("u", "c", PRODUCER_BYTE_RATE, 15000.0);
        assert!(
            throttle >= Duration::from_secs(9) && throttle <= THROTTLE_MAX,
            "{throttle:?}"
        );
        assert_eq!(
            store.record("other", "c", PRODUCER_BYTE_RATE, 1e9),
            Duration::ZERO
        );
    }

    #[tokio::test]
    async fn describe_filters_and_alter_validates() {
        let store = QuotaStore::in_memory();
        store
            .alter(
                &entity(named("u"), named("c")),
                &[(CONSUMER_BYTE_RATE.into(), 5.0, false)],
                false,
            )
            .await
            .unwrap();
        store
            .alter(
                &entity(named("u"), None),
                &[(PRODUCER_BYTE_RATE.into(), 9.0, false)],
                false,
            )
            .await
            .unwrap();
        let exact_user = [ComponentFilter::Exact(USER.into(), "u".into())];
        assert_eq!(store.describe(&exact_user, false).len(), 2);
        assert_eq!(store.describe(&exact_user, true).len(), 1);
        assert_eq!(
            store
                .describe(&[ComponentFilter::Specified(CLIENT_ID.into())], false)
                .len(),
            1
        );
        assert!(store
            .alter(
                &entity(named("u"), None),
                &[("bogus".into(), 1.0, false)],
                false
            )
            .await
            .is_err());
        assert!(store
            .alter(
                &entity(named("u"), None),
                &[(PRODUCER_BYTE_RATE.into(), -1.0, false)],
                false
            )
            .await
            .is_err());
        store
            .alter(
                &entity(named("u"), None),
                &[(PRODUCER_BYTE_RATE.into(), 0.0, true)],
                false,
            )
            .await
            .unwrap();
        assert_eq!(store.describe(&exact_user, true).len(), 0);
    }

    #[tokio::test]
    async fn the_mutation_bucket_admits_a_window_then_refuses_until_refilled() {
        let store = QuotaStore::in_memory();
        assert!(store.controller_mutation("u", "c").is_none());
        store
            .alter(
                &entity(named("u"), None),
                &[(CONTROLLER_MUTATION_RATE.into(), 1.0, false)],
                false,
            )
            .await
            .unwrap();
        let quota = store.controller_mutation("u", "c").unwrap();
        // A burst of 11 s at one partition per second fits; the request that empties the
        // bucket is admitted whole (20 partitions), the next is refused.
        assert!(!quota.exceeded());
        quota.record(20.0);
        assert!(quota.exceeded());
        let throttle = quota.throttle_time();
        assert!(
            throttle > Duration::from_secs(8) && throttle <= Duration::from_secs(9),
            "{throttle:?}"
        );
        assert!(store.controller_mutation("other", "c").is_none());
    }
}
