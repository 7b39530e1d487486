//! Broker errors as Kafka error codes.

use kafka_protocol::ResponseError;
use sluice_broker::{BrokerError, GroupError};

pub fn broker_error_code(error: &BrokerError) -> i16 {
    match error {
        BrokerError::UnknownTopicOrPartition(_) => ResponseError::UnknownTopicOrPartition,
        BrokerError::TopicAlreadyExists(_) => ResponseError::TopicAlreadyExists,
        BrokerError::InvalidTopic(_) => ResponseError::InvalidTopicException,
        BrokerError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        BrokerError::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
        BrokerError::InvalidConfig(_) => ResponseError::InvalidConfig,
        BrokerError::CorruptMessage(_) => ResponseError::CorruptMessage,
        BrokerError::MessageTooLarge(_) => ResponseError::MessageTooLarge,
        BrokerError::InvalidRecord(_) => ResponseError::InvalidRecord,
        BrokerError::InvalidTimestamp(_) => ResponseError::InvalidTimestamp,
        BrokerError::OffsetOutOfRange(_) => ResponseError::OffsetOutOfRange,
        BrokerError::OutOfOrderSequence(_) => ResponseError::OutOfOrderSequenceNumber,
        BrokerError::InvalidProducerEpoch(_) => ResponseError::InvalidProducerEpoch,
        BrokerError::UnknownProducerId(_) => ResponseError::UnknownProducerId,
        BrokerError::ProducerFenced(_) => ResponseError::ProducerFenced,
        BrokerError::InvalidTransactionTimeout(_) => ResponseError::InvalidTransactionTimeout,
        BrokerError::ConcurrentTransactions(_) => ResponseError::ConcurrentTransactions,
        BrokerError::InvalidTxnState(_) => ResponseError::InvalidTxnState,
        BrokerError::InvalidProducerIdMapping(_) => ResponseError::InvalidProducerIdMapping,
        BrokerError::TransactionalIdNotFound(_) => ResponseError::TransactionalIdNotFound,
        BrokerError::TransactionalIdAuthorizationFailed(_) => {
            ResponseError::TransactionalIdAuthorizationFailed
        }
        BrokerError::NotCoordinator(_) => ResponseError::NotCoordinator,
        BrokerError::CoordinatorNotAvailable(_) => ResponseError::CoordinatorNotAvailable,
        BrokerError::Storage(_) => ResponseError::KafkaStorageError,
    }
    .code()
}

pub fn group_error_code(error: &GroupError) -> i16 {
    match error {
        GroupError::UnknownMemberId => ResponseError::UnknownMemberId,
        GroupError::IllegalGeneration => ResponseError::IllegalGeneration,
        GroupError::RebalanceInProgress => ResponseError::RebalanceInProgress,
        GroupError::MemberIdRequired => ResponseError::MemberIdRequired,
        GroupError::InconsistentGroupProtocol => ResponseError::InconsistentGroupProtocol,
        GroupError::InvalidSessionTimeout => ResponseError::InvalidSessionTimeout,
        GroupError::InvalidGroupId => ResponseError::InvalidGroupId,
        GroupError::GroupIdNotFound => ResponseError::GroupIdNotFound,
        GroupError::NotCoordinator => ResponseError::NotCoordinator,
        GroupError::NonEmptyGroup => ResponseError::NonEmptyGroup,
        GroupError::FencedInstanceId => ResponseError::FencedInstanceId,
        GroupError::CoordinatorNotAvailable => ResponseError::CoordinatorNotAvailable,
        GroupError::CoordinatorLoadInProgress => ResponseError::CoordinatorLoadInProgress,
        GroupError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
        GroupError::OffsetMetadataTooLarge => ResponseError::OffsetMetadataTooLarge,
        GroupError::GroupMaxSizeReached => ResponseError::GroupMaxSizeReached,
        GroupError::GroupSubscribedToTopic => ResponseError::GroupSubscribedToTopic,
        GroupError::FencedMemberEpoch => ResponseError::FencedMemberEpoch,
        GroupError::StaleMemberEpoch => ResponseError::StaleMemberEpoch,
        GroupError::UnreleasedInstanceId => ResponseError::UnreleasedInstanceId,
        GroupError::UnsupportedAssignor(_) => ResponseError::UnsupportedAssignor,
        GroupError::InvalidRegularExpression(_) => ResponseError::InvalidRegularExpression,
        GroupError::InvalidRequest(_) => ResponseError::InvalidRequest,
        GroupError::InvalidRecordState => ResponseError::InvalidRecordState,
        GroupError::InvalidConfig(_) => ResponseError::InvalidConfig,
        GroupError::Storage(_) => ResponseError::KafkaStorageError,
    }
    .code()
}

#[cfg(test)]
mod tests {
    use sluice_broker::StorageFailure;

    use super::*;

    /// A failed fsync (and the offline log after it) is KAFKA_STORAGE_ERROR, matched on the
    /// variant: the detail text plays no part.
    #[test]
    fn storage_failures_are_kafka_storage_errors_whatever_their_text() {
        let code = ResponseError::KafkaStorageError.code();
        for failure in [
            StorageFailure::io("fdatasync failed: EIO"),
            StorageFailure::offline(""),
            StorageFailure::unwritten("message too large"),
        ] {
            assert_eq!(broker_error_code(&BrokerError::Storage(failure)), code);
        }
    }
}
