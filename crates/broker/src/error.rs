use sluice_log::LogError;

/// What kind of storage failure a [`StorageFailure`] is, for callers that react differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageFailureKind {
    /// One file operation failed (open, read, write, fsync, rename...).
    Io,
    /// The log is offline after an earlier failed write or fsync: it refuses writes until a
    /// restart recovers it from what is really on disk.
    Offline,
    /// The data waited for was never written: its log was closed, deleted or truncated.
    Unwritten,
}

/// A storage failure, typed so front ends map it without reading the text (Kafka:
/// KAFKA_STORAGE_ERROR; AMQP: basic.nack of the affected publishes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct StorageFailure {
    pub kind: StorageFailureKind,
    pub detail: String,
}

impl StorageFailure {
    pub fn io(detail: impl Into<String>) -> Self {
        StorageFailure {
            kind: StorageFailureKind::Io,
            detail: detail.into(),
        }
    }
    pub fn offline(detail: impl Into<String>) -> Self {
        StorageFailure {
            kind: StorageFailureKind::Offline,
            detail: detail.into(),
        }
    }
    pub fn unwritten(detail: impl Into<String>) -> Self {
        StorageFailure {
            kind: StorageFailureKind::Unwritten,
            detail: detail.into(),
        }
    }
    pub fn is_offline(&self) -> bool {
        self.kind == StorageFailureKind::Offline
    }
}

/// Errors of topic/partition operations. Each maps to one protocol error code in the front ends.
/// Cloneable, so one failed fsync can answer every producer waiting on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    #[error("unknown topic or partition: {0}")]
    UnknownTopicOrPartition(String),
    /// The topic's name; the text is Kafka's.
    #[error("Topic '{0}' already exists.")]
    TopicAlreadyExists(String),
    #[error("invalid topic name: {0}")]
    InvalidTopic(String),
    /// Kafka's text, which admin tools print as it is.
    #[error("{0}")]
    InvalidPartitions(String),
    /// Kafka's text, which admin tools print as it is.
    #[error("{0}")]
    InvalidReplicationFactor(String),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("corrupt message: {0}")]
    CorruptMessage(String),
    #[error("message too large: {0}")]
    MessageTooLarge(String),
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    /// A CreateTime timestamp outside the topic's window (INVALID_TIMESTAMP).
    #[error("invalid timestamp: {0}")]
    InvalidTimestamp(String),
    #[error("offset out of range: {0}")]
    OffsetOutOfRange(String),
    #[error("out of order sequence number: {0}")]
    OutOfOrderSequence(String),
    #[error("invalid producer epoch: {0}")]
    InvalidProducerEpoch(String),
    #[error("unknown producer id: {0}")]
    UnknownProducerId(String),
    /// A newer instance holds this transactional id (Kafka's PRODUCER_FENCED).
    #[error("producer fenced: {0}")]
    ProducerFenced(String),
    /// `transaction.timeout.ms` above `transaction.max.timeout.ms` (or not positive).
    #[error("{0}")]
    InvalidTransactionTimeout(String),
    /// The transaction is ending; the client retries.
    #[error("concurrent transactions: {0}")]
    ConcurrentTransactions(String),
    /// The request does not fit the transaction's state (EndTxn without a transaction, …).
    #[error("invalid transaction state: {0}")]
    InvalidTxnState(String),
    /// The transactional id is unknown here, or held by another producer id.
    #[error("invalid producer id mapping: {0}")]
    InvalidProducerIdMapping(String),
    #[error("transactional id not found: {0}")]
    TransactionalIdNotFound(String),
    /// Kafka's answer to transactional records sent without a transactional id.
    #[error("transactional id authorization failed: {0}")]
    TransactionalIdAuthorizationFailed(String),
    /// In a cluster: this node does not coordinate transactions (it is not the metadata
    /// leader); the client looks the coordinator up again.
    #[error("not the coordinator: {0}")]
    NotCoordinator(String),
    /// In a cluster: the coordinator could not reach what it needs (the metadata group, a
    /// partition's leader) in time; the client retries.
    #[error("coordinator not available: {0}")]
    CoordinatorNotAvailable(String),
    #[error("storage error: {0}")]
    Storage(StorageFailure),
}

impl BrokerError {
    /// A failed file operation, described by `detail`.
    pub fn storage_io(detail: impl Into<String>) -> Self {
        BrokerError::Storage(StorageFailure::io(detail))
    }

    /// Whether this is a log refusing writes after a storage failure.
    pub fn is_offline(&self) -> bool {
        matches!(self, BrokerError::Storage(failure) if failure.is_offline())
    }
}

impl From<LogError> for BrokerError {
    fn from(error: LogError) -> Self {
        match error {
            LogError::CorruptBatch { .. } => BrokerError::CorruptMessage(error.to_string()),
            LogError::BatchTooLarge { .. } => BrokerError::MessageTooLarge(error.to_string()),
            LogError::InvalidBatch(_)
            | LogError::Decompression { .. }
            | LogError::DecompressedTooLarge { .. } => {
                BrokerError::InvalidRecord(error.to_string())
            }
            LogError::OffsetOutOfRange { .. } => BrokerError::OffsetOutOfRange(error.to_string()),
            LogError::InvalidConfig(_) => BrokerError::InvalidConfig(error.to_string()),
            LogError::Io { .. } => BrokerError::storage_io(error.to_string()),
            LogError::Offline { .. } => {
                BrokerError::Storage(StorageFailure::offline(error.to_string()))
            }
            // Damaged on disk: the reader gets an error for that partition, never the bytes.
            LogError::CorruptStored { .. } => BrokerError::CorruptMessage(error.to_string()),
        }
    }
}

/// Errors of consumer-group operations (Kafka's group error codes, protocol-neutral).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("unknown member id")]
    UnknownMemberId,
    #[error("illegal generation")]
    IllegalGeneration,
    #[error("rebalance in progress")]
    RebalanceInProgress,
    #[error("member id required")]
    MemberIdRequired,
    #[error("inconsistent group protocol")]
    InconsistentGroupProtocol,
    #[error("invalid session timeout")]
    InvalidSessionTimeout,
    #[error("invalid group id")]
    InvalidGroupId,
    #[error("group id not found")]
    GroupIdNotFound,
    #[error("group is not empty")]
    NonEmptyGroup,
    #[error("fenced instance id")]
    FencedInstanceId,
    #[error("coordinator not available")]
    CoordinatorNotAvailable,
    /// In a cluster: this node may still coordinate groups but cannot confirm it right now
    /// (cut off from the majority, or just elected): retry here.
    #[error("the coordinator is loading")]
    CoordinatorLoadInProgress,
    /// In a cluster: this node does not coordinate groups (it is not the metadata leader, or
    /// stopped being it), so the client must find the coordinator again.
    #[error("not the coordinator")]
    NotCoordinator,
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    #[error("offset metadata too large")]
    OffsetMetadataTooLarge,
    #[error("group max size reached")]
    GroupMaxSizeReached,
    /// OffsetDelete of a topic the group's members consume.
    #[error("the group is subscribed to the topic")]
    GroupSubscribedToTopic,
    /// KIP-848: a heartbeat from a member epoch the group has moved past.
    #[error("the member epoch is fenced")]
    FencedMemberEpoch,
    /// KIP-848: a commit or offset fetch with a member epoch other than the member's.
    #[error("the member epoch is stale")]
    StaleMemberEpoch,
    /// KIP-848: a static member joined while another member still holds its instance id.
    #[error("the instance id is still used by another member")]
    UnreleasedInstanceId,
    #[error("unsupported assignor {0}")]
    UnsupportedAssignor(String),
    #[error("invalid regular expression: {0}")]
    InvalidRegularExpression(String),
    /// A request whose fields contradict each other (Kafka's INVALID_REQUEST, with its text).
    #[error("{0}")]
    InvalidRequest(String),
    /// KIP-932: an acknowledgement of a record the member does not hold.
    #[error("the record state is invalid")]
    InvalidRecordState,
    /// A group config change Kafka refuses (INVALID_CONFIG), with its text.
    #[error("{0}")]
    InvalidConfig(String),
    #[error("storage error: {0}")]
    Storage(String),
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn offline_log_is_a_storage_error_and_corrupt_stored_data_a_corrupt_message() {
        let offline = LogError::Offline {
            dir: PathBuf::from("/data/t-0"),
            cause: "fsync failed".into(),
        };
        let error = BrokerError::from(offline);
        assert!(error.is_offline(), "{error:?}");
        let corrupt = LogError::CorruptStored {
            path: PathBuf::from("/data/t-0/00000000000000000000.log"),
            position: 4096,
            reason: "crc mismatch".into(),
        };
        assert!(matches!(
            BrokerError::from(corrupt),
            BrokerError::CorruptMessage(_)
        ));
    }
}
