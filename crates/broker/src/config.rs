use std::path::PathBuf;
use std::sync::Arc;

use sluice_log::{LogConfig, RealDisk, Storage};

/// Consumer-group timing, as Kafka's `group.*` broker settings.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Delay before the first rebalance of an empty group completes, so that members starting
    /// together join one generation (`group.initial.rebalance.delay.ms`, Kafka default 3000).
    pub initial_rebalance_delay_ms: u64,
    pub session_timeout_ms_min: i32,
    pub session_timeout_ms_max: i32,
    /// How long committed offsets of an empty group are kept (`offsets.retention.minutes`).
    pub offsets_retention_ms: i64,
    /// KIP-848 groups: how often members heartbeat, and how long a silent member keeps its
    /// partitions (`group.consumer.heartbeat.interval.ms`, `group.consumer.session.timeout.ms`).
    pub consumer_heartbeat_interval_ms: u64,
    pub consumer_session_timeout_ms: u64,
    /// Share groups (KIP-932): `group.share.heartbeat.interval.ms`,
    /// `group.share.session.timeout.ms`, `group.share.record.lock.duration.ms`,
    /// `group.share.delivery.count.limit`, `group.share.partition.max.record.locks`.
    pub share_heartbeat_interval_ms: u64,
    pub share_session_timeout_ms: u64,
    pub share_record_lock_duration_ms: u64,
    pub share_delivery_count_limit: i16,
    pub share_partition_max_record_locks: i64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            initial_rebalance_delay_ms: 3000,
            session_timeout_ms_min: 6000,
            session_timeout_ms_max: 1_800_000,
            offsets_retention_ms: 7 * 24 * 3600 * 1000,
            consumer_heartbeat_interval_ms: 5000,
            consumer_session_timeout_ms: 45_000,
            share_heartbeat_interval_ms: 5000,
            share_session_timeout_ms: 45_000,
            share_record_lock_duration_ms: 30_000,
            share_delivery_count_limit: 5,
            share_partition_max_record_locks: 2000,
        }
    }
}

/// Everything the broker core needs to know; the server fills it from flags, env and TOML.
#[derive(Clone)]
pub struct BrokerConfig {
    pub data_dir: PathBuf,
    pub node_id: i32,
    /// Create topics on first produce/fetch/metadata request (`auto.create.topics.enable`).
    pub auto_create_topics: bool,
    /// Partition count of auto-created topics (`num.partitions`).
    pub default_partitions: i32,
    /// Defaults for every topic's log; topics override them with their own configs.
    pub log_defaults: LogConfig,
    pub group: GroupConfig,
    /// How often retention is enforced (`log.retention.check.interval.ms`); idle producer ids
    /// are expired on the same tick.
    pub retention_check_interval_ms: u64,
    /// How often compacted topics' partitions are checked for a cleaning pass
    /// (`log.cleaner.backoff.ms`, Kafka default 15 s).
    pub log_cleaner_backoff_ms: u64,
    /// Idempotent-producer state of a producer that has not appended for this long is dropped
    /// (`producer.id.expiration.ms`, Kafka default one day).
    pub producer_id_expiration_ms: i64,
    /// Largest `transaction.timeout.ms` a transactional producer may ask for
    /// (`transaction.max.timeout.ms`, Kafka default 15 minutes).
    pub transaction_max_timeout_ms: i32,
    /// How often open transactions past their timeout are aborted
    /// (`transaction.abort.timed.out.transaction.cleanup.interval.ms`; Kafka's is 10 s).
    pub transaction_abort_check_interval_ms: u64,
    /// Where every log and metadata file of the broker lives: the real disk, or in tests a
    /// simulated one (`sluice_log::SimDisk`). The data directory's lock file is always on the
    /// real disk (it guards the process, not data).
    pub storage: Arc<dyn Storage>,
}

impl std::fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("data_dir", &self.data_dir)
            .field("node_id", &self.node_id)
            .field("auto_create_topics", &self.auto_create_topics)
            .field("default_partitions", &self.default_partitions)
            .field("log_defaults", &self.log_defaults)
            .field("group", &self.group)
            .field(
                "retention_check_interval_ms",
                &self.retention_check_interval_ms,
            )
            .field("producer_id_expiration_ms", &self.producer_id_expiration_ms)
            .field(
                "transaction_max_timeout_ms",
                &self.transaction_max_timeout_ms,
            )
            .finish_non_exhaustive()
    }
}

impl BrokerConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        BrokerConfig {
            data_dir,
            node_id: 0,
            auto_create_topics: true,
            default_partitions: 1,
            log_defaults: LogConfig::default(),
            group: GroupConfig::default(),
            retention_check_interval_ms: 300_000,
            log_cleaner_backoff_ms: 15_000,
            producer_id_expiration_ms: 86_400_000,
            transaction_max_timeout_ms: 900_000,
            transaction_abort_check_interval_ms: 1_000,
            storage: Arc::new(RealDisk),
        }
    }
}
