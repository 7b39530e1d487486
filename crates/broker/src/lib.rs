//! The broker core: topics and partitions over the log, idempotent-producer state, consumer
//! groups and committed offsets. Protocol-neutral: front ends (kafka, later amqp/http) translate
//! their requests into calls on [`Broker`] and map [`BrokerError`] / [`GroupError`] to their codes.

mod broker;
mod config;
pub mod connection_count;
mod connection_registry;
mod durable_fs;
mod error;
pub mod gauge_sampler;
mod group_commit;
pub mod group_coordinator;
mod log_dir;
mod message_query;
mod offset_store;
mod partition;
mod partition_appender;
mod producer_id;
mod producer_state;
pub use producer_state::ActiveProducer;
pub mod replication;
mod timestamps;
mod topic;
mod topic_config;
mod topic_store;
mod traffic;
pub mod transaction_coordinator;
mod transaction_log;
pub mod vhost;

pub use broker::{Broker, ConfigChange};
pub use config::{BrokerConfig, GroupConfig};
pub use connection_registry::{
    ConnectionRegistry, ConnectionSummary, Protocol, RegisteredConnection,
};
pub use error::{BrokerError, GroupError, StorageFailure, StorageFailureKind};
pub use group_commit::DurableWait;
pub use group_coordinator::GroupCoordinator;
pub use log_dir::{absolute_log_dir, disk_space, DiskSpace};
pub use message_query::{
    query_partition_logs, FoundMessage, MessageQuery, MessageQueryResult, QUERY_LIMIT_MAX,
};
pub use partition::{Acks, FetchedPartition, IsolationLevel, Partition, ProduceOutcome};
pub use producer_state::AbortedTransaction;
pub use topic::{kafka_partition_for_key, Topic};
pub use topic_config::{
    topic_config_names, ConfigEntry, ConfigSource, ConfigSynonym, ConfigType, TopicConfig,
};
pub use traffic::{TrafficCounters, TrafficTotals};
pub use transaction_coordinator::{
    PendingOffset, TransactionCoordinator, TransactionMetadata, TransactionState,
    TransactionalAppend, TransactionalProducer,
};

/// Milliseconds since the Unix epoch (the timestamp unit of Kafka and of our batches).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
