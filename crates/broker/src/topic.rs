use std::sync::Arc;

use parking_lot::RwLock;

use crate::topic_config::TopicConfig;
use crate::{BrokerError, Partition};

/// A named, partitioned stream. Partitions only ever grow (CreatePartitions).
pub struct Topic {
    name: String,
    id: uuid::Uuid,
    pub(crate) partitions: RwLock<Vec<Arc<Partition>>>,
    pub(crate) config: RwLock<TopicConfig>,
}

impl Topic {
    pub(crate) fn new(
        name: String,
        id: uuid::Uuid,
        partitions: Vec<Arc<Partition>>,
        config: TopicConfig,
    ) -> Self {
        Topic {
            name,
            id,
            partitions: RwLock::new(partitions),
            config: RwLock::new(config),
        }
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn id(&self) -> uuid::Uuid {
        self.id
    }
    pub fn partition_count(&self) -> i32 {
        self.partitions.read().len() as i32
    }
    pub fn partition(&self, index: i32) -> Option<Arc<Partition>> {
        if index < 0 {
            return None;
        }
        self.partitions.read().get(index as usize).cloned()
    }
    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions.read().clone()
    }
    pub fn config(&self) -> TopicConfig {
        self.config.read().clone()
    }
    /// The partition Kafka's default partitioner picks for a record key (murmur2), so a key
    /// lands where a Kafka client would have put it.
    pub fn partition_for_key(&self, key: &[u8]) -> i32 {
        kafka_partition_for_key(key, self.partition_count())
    }
    /// Internal topics (names starting with `__`) are hidden from auto-creation.
    pub fn is_internal(&self) -> bool {
        self.name.starts_with("__")
    }
}

/// The partition of `partition_count` Kafka's default partitioner picks for a record key
/// (murmur2, as the Java client).
pub fn kafka_partition_for_key(key: &[u8], partition_count: i32) -> i32 {
    let count = partition_count.max(1) as u32;
    ((crate::vhost::stream::murmur2(key) & 0x7fff_ffff) % count) as i32
}

/// Kafka's topic-name rules: 1..=249 chars of [a-zA-Z0-9._-], not "." or "..".
pub fn validate_topic_name(name: &str) -> Result<(), BrokerError> {
    if name.is_empty() || name.len() > 249 || name == "." || name == ".." {
        return Err(BrokerError::InvalidTopic(format!(
            "invalid topic name '{name}'"
        )));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
    {
        return Err(BrokerError::InvalidTopic(format!(
            "topic name '{name}' has characters other than ASCII alphanumerics, '.', '_' and '-'"
        )));
    }
    Ok(())
}
