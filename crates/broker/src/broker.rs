use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::sync::Arc;

use base64::Engine as _;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use crate::durable_fs;
use crate::producer_id::ProducerIdAllocator;
use crate::topic::validate_topic_name;
use crate::topic_config::{ConfigEntry, TopicConfig};
use crate::topic_store::{self, TopicRecord};
use crate::transaction_coordinator::{
    TransactionCoordinator, TransactionalAppend, TransactionalProducer,
};
use crate::{
    now_ms, BrokerConfig, BrokerError, ConnectionRegistry, GroupCoordinator, Partition, Topic,
    TrafficTotals,
};

/// A change to one topic config, as IncrementalAlterConfigs expresses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigChange {
    Set(String, String),
    Delete(String),
}

/// Every topic, by name and by id (Fetch v13+ names topics by id on every request).
#[derive(Default)]
struct TopicRegistry {
    by_name: BTreeMap<String, Arc<Topic>>,
    by_id: HashMap<uuid::Uuid, Arc<Topic>>,
}

impl TopicRegistry {
    fn insert(&mut self, topic: Arc<Topic>) {
        self.by_id.insert(topic.id(), Arc::clone(&topic));
        self.by_name.insert(topic.name().to_string(), topic);
    }

    fn remove(&mut self, name: &str) -> Option<Arc<Topic>> {
        let topic = self.by_name.remove(name)?;
        self.by_id.remove(&topic.id());
        Some(topic)
    }
}

/// The whole single-node broker: every topic, the group coordinator and producer ids.
pub struct Broker {
    config: BrokerConfig,
    cluster_id: String,
    topics: RwLock<TopicRegistry>,
    /// Serialises topic creation, deletion and reconfiguration (rare, and they touch disk).
    admin: Mutex<()>,
    /// Woken whenever any partition has new readable data; long-polling fetches wait on it.
    data_ready: Arc<Notify>,
    producer_ids: ProducerIdAllocator,
    groups: Arc<GroupCoordinator>,
    transactions: TransactionCoordinator,
    /// Client connections of every front end (for the HTTP API).
    connections: Arc<ConnectionRegistry>,
    started_at_ms: i64,
    /// Held for the broker's life: a second broker on the same data directory is refused.
    _data_dir_lock: fs::File,
}

fn storage_error(context: &str, error: impl std::fmt::Display) -> BrokerError {
    BrokerError::storage_io(format!("{context}: {error}"))
}

impl Broker {
    /// Opens the data directory, recovers every topic's logs and the offsets log, and starts
    /// background work (retention). Must be called inside a tokio runtime.
    pub fn open(config: BrokerConfig) -> Result<Arc<Broker>, BrokerError> {
        let data_dir = config.data_dir.clone();
        let storage = Arc::clone(&config.storage);
        let meta_dir = data_dir.join("meta");
        storage
            .create_dir_all_durable(&meta_dir)
            .map_err(|e| storage_error("creating the data directory", e))?;
        // The lock guards the process, not data: it is on the real disk whatever the storage
        // (there the directory exists by now; on a simulated disk it is made here).
        fs::create_dir_all(&meta_dir)
            .map_err(|e| storage_error("creating the data directory lock's directory", e))?;
        let lock_path = data_dir.join("meta").join("lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| storage_error("opening the data directory lock", e))?;
        lock.try_lock().map_err(|_| {
            BrokerError::storage_io(format!(
                "data directory {} is in use by another process",
                data_dir.display()
            ))
        })?;
        topic_store::clear_deleted(storage.as_ref(), &data_dir);

        let cluster_id_path = data_dir.join("meta").join("cluster_id");
        let stored_cluster_id = durable_fs::read(storage.as_ref(), &cluster_id_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_string());
        let cluster_id = match stored_cluster_id {
            Ok(id) if !id.is_empty() => id,
            _ => {
                // Kafka's form: the UUID's 16 bytes in URL-safe base64 without padding.
                let id = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(uuid::Uuid::new_v4().as_bytes());
                durable_fs::write_atomically(storage.as_ref(), &cluster_id_path, id.as_bytes())?;
                id
            }
        };

        let data_ready = Arc::new(Notify::new());
        let mut topics = TopicRegistry::default();
        for record in topic_store::load_all(storage.as_ref(), &data_dir)? {
            let topic = Self::open_topic(&config, &record, &data_ready)?;
            tracing::info!(topic = %record.name, partitions = record.partition_count, "recovered topic");
            topics.insert(topic);
        }
        let producer_ids =
            ProducerIdAllocator::open(Arc::clone(&storage), meta_dir.join("producer_id_block"))?;
        let groups = GroupCoordinator::open(
            Arc::clone(&storage),
            &data_dir.join("internal").join("consumer_offsets"),
            config.group.clone(),
            config.log_defaults.clone(),
        )?;
        let transactions = TransactionCoordinator::open(
            Arc::clone(&storage),
            &data_dir.join("internal").join("transaction_state"),
            config.log_defaults.clone(),
            config.transaction_max_timeout_ms,
        )?;
        let broker = Arc::new(Broker {
            config,
            cluster_id,
            topics: RwLock::new(topics),
            admin: Mutex::new(()),
            data_ready,
            producer_ids,
            groups,
            transactions,
            connections: Arc::new(ConnectionRegistry::default()),
            started_at_ms: now_ms(),
            _data_dir_lock: lock,
        });
        broker.start_retention();
        broker.start_log_cleaner();
        broker.start_transaction_timeouts();
        Ok(broker)
    }

    fn open_topic(
        config: &BrokerConfig,
        record: &TopicRecord,
        data_ready: &Arc<Notify>,
    ) -> Result<Arc<Topic>, BrokerError> {
        let topic_config = TopicConfig::new(record.configs.clone(), &config.log_defaults)?;
        let log_config = topic_config.log_config(&config.log_defaults)?;
        let mut partitions = Vec::with_capacity(record.partition_count as usize);
        for index in 0..record.partition_count {
            partitions.push(Partition::open(
                Arc::clone(&config.storage),
                &record.name,
                index,
                &topic_store::partition_dir(&config.data_dir, &record.name, index),
                log_config.clone(),
                topic_config.timestamp_rules(),
                Arc::clone(data_ready),
            )?);
        }
        Ok(Arc::new(Topic::new(
            record.name.clone(),
            record.id,
            partitions,
            topic_config,
        )))
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }
    pub fn node_id(&self) -> i32 {
        self.config.node_id
    }
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }
    /// The registry of client connections the front ends serve.
    pub fn connections(&self) -> &Arc<ConnectionRegistry> {
        &self.connections
    }

    /// When the broker opened, ms since the epoch.
    pub fn started_at_ms(&self) -> i64 {
        self.started_at_ms
    }

    /// Kafka records and bytes produced and fetched, over every partition that exists now.
    pub fn traffic(&self) -> TrafficTotals {
        self.topics()
            .iter()
            .flat_map(|topic| topic.partitions())
            .fold(TrafficTotals::default(), |sum, partition| {
                sum + partition.traffic()
            })
    }

    pub fn group_coordinator(&self) -> &Arc<GroupCoordinator> {
        &self.groups
    }
    pub(crate) fn groups(&self) -> &GroupCoordinator {
        &self.groups
    }
    pub fn transaction_coordinator(&self) -> &TransactionCoordinator {
        &self.transactions
    }
    /// Notified (notify_waiters) whenever new data becomes readable in any partition.
    pub fn data_ready(&self) -> &Arc<Notify> {
        &self.data_ready
    }

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().by_name.get(name).cloned()
    }

    /// The topic with this id (Fetch v13+ and Metadata name topics by id).
    pub fn topic_by_id(&self, id: uuid::Uuid) -> Option<Arc<Topic>> {
        if id.is_nil() {
            return None;
        }
        self.topics.read().by_id.get(&id).cloned()
    }

    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.topics.read().by_name.values().cloned().collect()
    }

    pub fn partition(&self, topic: &str, index: i32) -> Result<Arc<Partition>, BrokerError> {
        self.topic(topic)
            .and_then(|t| t.partition(index))
            .ok_or_else(|| BrokerError::UnknownTopicOrPartition(format!("{topic}-{index}")))
    }

    /// The topic, auto-created with the default partition count when the broker allows it.
    pub fn topic_or_auto_create(&self, name: &str) -> Result<Arc<Topic>, BrokerError> {
        if let Some(topic) = self.topic(name) {
            return Ok(topic);
        }
        if !self.config.auto_create_topics || name.starts_with("__") {
            return Err(BrokerError::UnknownTopicOrPartition(name.to_string()));
        }
        match self.create_topic(name, -1, BTreeMap::new(), false) {
            Ok(topic) => Ok(topic),
            // Raced with another creator: fine.
            Err(BrokerError::TopicAlreadyExists(_)) => self
                .topic(name)
                .ok_or_else(|| BrokerError::UnknownTopicOrPartition(name.to_string())),
            Err(error) => Err(error),
        }
    }

    /// Creates a topic (`partition_count` -1 = the default). With `validate_only` nothing is
    /// written, but every check runs.
    pub fn create_topic(
        &self,
        name: &str,
        partition_count: i32,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<Topic>, BrokerError> {
        validate_topic_name(name)?;
        let partition_count = if partition_count == -1 {
            self.config.default_partitions
        } else {
            partition_count
        };
        if !(1..=10_000).contains(&partition_count) {
            return Err(BrokerError::InvalidPartitions(if partition_count < 1 {
                "Number of partitions was set to an invalid non-positive value.".to_string()
            } else {
                format!("partition count must be at most 10000, got {partition_count}")
            }));
        }
        let topic_config = TopicConfig::new(configs.clone(), &self.config.log_defaults)?;
        let _admin = self.admin.lock();
        if self.topics.read().by_name.contains_key(name) {
            return Err(BrokerError::TopicAlreadyExists(name.to_string()));
        }
        let record = TopicRecord {
            name: name.to_string(),
            id: uuid::Uuid::new_v4(),
            partition_count,
            configs,
        };
        if validate_only {
            return Ok(Arc::new(Topic::new(
                name.to_string(),
                record.id,
                Vec::new(),
                topic_config,
            )));
        }
        topic_store::save(self.config.storage.as_ref(), &self.config.data_dir, &record)?;
        let topic = Self::open_topic(&self.config, &record, &self.data_ready)?;
        self.topics.write().insert(Arc::clone(&topic));
        tracing::info!(topic = name, partitions = partition_count, "created topic");
        Ok(topic)
    }

    pub fn delete_topic(&self, name: &str) -> Result<(), BrokerError> {
        let _admin = self.admin.lock();
        if self.topics.write().remove(name).is_none() {
            return Err(BrokerError::UnknownTopicOrPartition(name.to_string()));
        }
        topic_store::remove(self.config.storage.as_ref(), &self.config.data_dir, name)?;
        tracing::info!(topic = name, "deleted topic");
        // Its groups' offsets go in the background, as in Kafka: the deletion is done already.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let coordinator = Arc::clone(&self.groups);
            let topic = name.to_string();
            runtime.spawn(async move {
                if let Err(error) = coordinator.forget_topic(&topic).await {
                    tracing::warn!(topic, %error, "deleting the offsets of a deleted topic failed");
                }
            });
        }
        Ok(())
    }

    /// Grows a topic to `partition_count` partitions (Kafka never shrinks them).
    pub fn create_partitions(
        &self,
        name: &str,
        partition_count: i32,
        validate_only: bool,
    ) -> Result<(), BrokerError> {
        let _admin = self.admin.lock();
        let topic = self
            .topic(name)
            .ok_or_else(|| BrokerError::UnknownTopicOrPartition(name.to_string()))?;
        let current = topic.partition_count();
        if partition_count <= current {
            return Err(BrokerError::InvalidPartitions(no_increase(
                name,
                current,
                partition_count,
            )));
        }
        if partition_count > 10_000 {
            return Err(BrokerError::InvalidPartitions(format!(
                "partition count {partition_count} is over 10000"
            )));
        }
        if validate_only {
            return Ok(());
        }
        let topic_config = topic.config();
        let log_config = topic_config.log_config(&self.config.log_defaults)?;
        let record = TopicRecord {
            name: name.to_string(),
            id: topic.id(),
            partition_count,
            configs: topic_config.overrides().clone(),
        };
        let mut added = Vec::new();
        for index in current..partition_count {
            added.push(Partition::open(
                Arc::clone(&self.config.storage),
                name,
                index,
                &topic_store::partition_dir(&self.config.data_dir, name, index),
                log_config.clone(),
                topic_config.timestamp_rules(),
                Arc::clone(&self.data_ready),
            )?);
        }
        topic_store::save(self.config.storage.as_ref(), &self.config.data_dir, &record)?;
        topic.partitions.write().extend(added);
        Ok(())
    }

    pub fn describe_topic_configs(&self, name: &str) -> Result<Vec<ConfigEntry>, BrokerError> {
        let topic = self
            .topic(name)
            .ok_or_else(|| BrokerError::UnknownTopicOrPartition(name.to_string()))?;
        Ok(topic.config().describe(&self.config.log_defaults))
    }

    /// AlterConfigs: the topic's overrides become exactly `configs`.
    pub fn replace_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), BrokerError> {
        self.update_topic_configs(name, validate_only, |_| configs)
    }

    /// IncrementalAlterConfigs: set or delete single keys.
    pub fn change_topic_configs(
        &self,
        name: &str,
        changes: Vec<ConfigChange>,
        validate_only: bool,
    ) -> Result<(), BrokerError> {
        self.update_topic_configs(name, validate_only, |current| {
            let mut next = current.clone();
            for change in changes {
                match change {
                    ConfigChange::Set(key, value) => {
                        next.insert(key, value);
                    }
                    ConfigChange::Delete(key) => {
                        next.remove(&key);
                    }
                }
            }
            next
        })
    }

    fn update_topic_configs(
        &self,
        name: &str,
        validate_only: bool,
        update: impl FnOnce(&BTreeMap<String, String>) -> BTreeMap<String, String>,
    ) -> Result<(), BrokerError> {
        let _admin = self.admin.lock();
        let topic = self
            .topic(name)
            .ok_or_else(|| BrokerError::UnknownTopicOrPartition(name.to_string()))?;
        let overrides = update(topic.config().overrides());
        let topic_config = TopicConfig::new(overrides.clone(), &self.config.log_defaults)?;
        let log_config = topic_config.log_config(&self.config.log_defaults)?;
        if validate_only {
            return Ok(());
        }
        let record = TopicRecord {
            name: name.to_string(),
            id: topic.id(),
            partition_count: topic.partition_count(),
            configs: overrides,
        };
        topic_store::save(self.config.storage.as_ref(), &self.config.data_dir, &record)?;
        for partition in topic.partitions() {
            partition.set_config(log_config.clone(), topic_config.timestamp_rules());
        }
        *topic.config.write() = topic_config;
        Ok(())
    }

    /// InitProducerId: a new idempotent producer id, or for a transactional id its next epoch
    /// (only from the current one when the client claims an id and epoch: see
    /// `ProducerIdAllocator::allocate`).
    pub async fn init_producer_id(
        &self,
        transactional_id: Option<&str>,
        transaction_timeout_ms: i32,
        claimed: Option<(i64, i16)>,
    ) -> Result<(i64, i16), BrokerError> {
        match transactional_id {
            Some(transactional_id) => {
                self.transactions
                    .init_producer_id(self, transactional_id, transaction_timeout_ms, claimed)
                    .await
            }
            None => self.allocate_producer_id(),
        }
    }

    /// A new producer id, epoch 0.
    pub fn allocate_producer_id(&self) -> Result<(i64, i16), BrokerError> {
        self.producer_ids.allocate(None, None)
    }

    /// Refuses a produce whose batches are transactional unless the request names the
    /// transactional id whose open transaction holds the partition (see
    /// `TransactionCoordinator::verify_transactional_append`). The caller holds what it
    /// returns until the append is durable. With `add_to_transaction` (transaction version 2)
    /// the partition joins the producer's transaction first, as AddPartitionsToTxn would.
    pub async fn verify_transactional_produce(
        &self,
        transactional_id: Option<&str>,
        topic: &str,
        partition: i32,
        records: &[u8],
        add_to_transaction: bool,
    ) -> Result<Option<TransactionalAppend>, BrokerError> {
        // Produce validates every batch; only the first header is needed here (a producer's
        // request holds one batch per partition, of one producer).
        match sluice_log::BatchHeader::parse(records) {
            Ok(header) if header.is_transactional() => {
                let transactional_id = transactional_id.ok_or_else(|| {
                    BrokerError::TransactionalIdAuthorizationFailed(
                        "transactional records without a transactional id".into(),
                    )
                })?;
                let producer = TransactionalProducer {
                    transactional_id,
                    producer_id: header.producer_id,
                    producer_epoch: header.producer_epoch,
                };
                if add_to_transaction {
                    self.transactions
                        .add_partitions(producer, &[(topic.to_string(), partition)])
                        .await
                        .map_err(|error| match error {
                            // A produce answers an older epoch so, as the check below
                            // does; CONCURRENT_TRANSACTIONS (an ending transaction) is retried.
                            BrokerError::ProducerFenced(message) => {
                                BrokerError::InvalidProducerEpoch(message)
                            }
                            other => other,
                        })?;
                }
                self.transactions
                    .verify_transactional_append(producer, topic, partition)
                    .map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Completes transactions decided before a restart, then aborts open ones past their
    /// timeout on every tick, and compacts the transaction log when it is mostly dead. In a
    /// cluster only the metadata leader does this, on every tick: it may have just taken over
    /// transactions an earlier leader decided but did not complete.
    fn start_transaction_timeouts(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let period = std::time::Duration::from_millis(
            self.config.transaction_abort_check_interval_ms.max(10),
        );
        tokio::spawn(async move {
            if let Some(broker) = weak.upgrade() {
                if !broker.transactions.is_clustered() {
                    broker.transactions.complete_prepared(&broker).await;
                }
            }
            loop {
                tokio::time::sleep(period).await;
                let Some(broker) = weak.upgrade() else { return };
                if broker.transactions.is_clustered() {
                    if broker.transactions.check_serving().await.is_ok() {
                        broker.transactions.complete_prepared(&broker).await;
                        broker.transactions.abort_timed_out(&broker).await;
                    }
                    continue;
                }
                broker.transactions.abort_timed_out(&broker).await;
                if let Err(error) = broker.transactions.compact_if_needed() {
                    tracing::warn!(%error, "compacting the transaction log failed");
                }
            }
        });
    }

    /// Enforces retention on every partition now, and forgets idempotent producers idle for
    /// `producer_id_expiration_ms`; returns segments deleted per topic.
    pub fn enforce_retention(&self) -> HashMap<String, usize> {
        let now = now_ms();
        let mut deleted = HashMap::new();
        let mut producers_expired = 0;
        for topic in self.topics() {
            for partition in topic.partitions() {
                producers_expired +=
                    partition.expire_producers(now, self.config.producer_id_expiration_ms);
                match partition.log().enforce_retention(now) {
                    Ok(0) => {}
                    Ok(count) => *deleted.entry(topic.name().to_string()).or_insert(0) += count,
                    Err(error) => {
                        tracing::error!(topic = topic.name(), partition = partition.index(), %error, "retention failed")
                    }
                }
            }
        }
        if producers_expired > 0 {
            tracing::info!(producers = producers_expired, "expired idle producer ids");
        }
        deleted
    }

    fn start_retention(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let period =
            std::time::Duration::from_millis(self.config.retention_check_interval_ms.max(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(broker) = weak.upgrade() else { return };
                let result = tokio::task::spawn_blocking(move || broker.enforce_retention()).await;
                if let Ok(deleted) = result {
                    for (topic, count) in deleted {
                        tracing::info!(topic, segments = count, "retention deleted segments");
                    }
                }
            }
        });
    }

    /// One compaction pass over every partition of a compacted topic that is due (see
    /// `PartitionLog::clean`), below each partition's last stable offset so that open
    /// transactions are never cleaned; returns the records removed per topic.
    pub fn compact_logs(&self) -> HashMap<String, u64> {
        let now = now_ms();
        let mut removed = HashMap::new();
        for topic in self.topics() {
            for partition in topic.partitions() {
                let log = partition.log();
                if !log.config().compact {
                    continue;
                }
                let records_removed = compact_log(
                    log,
                    now,
                    partition.last_stable_offset(),
                    topic.name(),
                    partition.index(),
                );
                if records_removed > 0 {
                    *removed.entry(topic.name().to_string()).or_insert(0) += records_removed;
                }
            }
        }
        removed
    }

    fn start_log_cleaner(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let period = std::time::Duration::from_millis(self.config.log_cleaner_backoff_ms.max(10));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(broker) = weak.upgrade() else { return };
                // One pass at a time: the next sleep starts after this one ends.
                let _ = tokio::task::spawn_blocking(move || broker.compact_logs()).await;
            }
        });
    }

    /// Clean shutdown: everything written is fsynced.
    pub fn shutdown(&self) {
        for topic in self.topics() {
            for partition in topic.partitions() {
                if let Err(error) = partition.log().flush() {
                    tracing::error!(topic = topic.name(), partition = partition.index(), %error, "flush on shutdown failed");
                }
            }
        }
        self.groups.shutdown();
        if let Err(error) = self.transactions.flush() {
            tracing::error!(%error, "flushing the transaction log failed");
        }
        tracing::info!("broker flushed and stopped");
    }
}

/// Kafka's refusal of a CreatePartitions count that does not grow the topic.
pub(crate) fn no_increase(name: &str, current: i32, count: i32) -> String {
    if count == current {
        format!("Topic already has {current} partition(s).")
    } else {
        format!("The topic {name} currently has {current} partition(s); {count} would not be an increase.")
    }
}

/// One compaction pass over `log` below `end` if it is due; the records it removed (0 when
/// it was not due or failed, which is logged).
pub(crate) fn compact_log(
    log: &sluice_log::PartitionLog,
    now_ms: i64,
    end: i64,
    topic: &str,
    partition: i32,
) -> u64 {
    match log.clean(now_ms, end) {
        Ok(Some(stats)) => {
            metrics::counter!("sluice_log_cleaner_records_removed_total")
                .increment(stats.records_removed);
            stats.records_removed
        }
        Ok(None) => 0,
        Err(error) => {
            tracing::error!(topic, partition, %error, "log compaction failed");
            0
        }
    }
}
