use sluice_log::LogError;

/// Errors of topic/partition operations. Each maps to one protocol error code in the front ends.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("unknown topic or partition: {0}")]
    UnknownTopicOrPartition(String),
    #[error("topic already exists: {0}")]
    TopicAlreadyExists(String),
    #[error("invalid topic name: {0}")]
    InvalidTopic(String),
    #[error("invalid partition count: {0}")]
    InvalidPartitions(String),
    #[error("invalid replication factor: {0}")]
    InvalidReplicationFactor(String),
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("corrupt message: {0}")]
    CorruptMessage(String),
    #[error("message too large: {0}")]
    MessageTooLarge(String),
    #[error("invalid record: {0}")]
    InvalidRecord(String),
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
    #[error("storage error: {0}")]
    Storage(String),
}

impl From<LogError> for BrokerError {
    fn from(error: LogError) -> Self {
        match error {
            LogError::CorruptBatch { .. } => BrokerError::CorruptMessage(error.to_string()),
            LogError::BatchTooLarge { .. } => BrokerError::MessageTooLarge(error.to_string()),
            LogError::InvalidBatch(_) => BrokerError::InvalidRecord(error.to_string()),
            LogError::OffsetOutOfRange { .. } => BrokerError::OffsetOutOfRange(error.to_string()),
            LogError::InvalidConfig(_) => BrokerError::InvalidConfig(error.to_string()),
            LogError::Io { .. } | LogError::Offline { .. } => {
                BrokerError::Storage(error.to_string())
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
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    #[error("offset metadata too large")]
    OffsetMetadataTooLarge,
    #[error("group max size reached")]
    GroupMaxSizeReached,
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
        assert!(matches!(
            BrokerError::from(offline),
            BrokerError::Storage(_)
        ));
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
