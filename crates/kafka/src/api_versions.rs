//! The APIs and versions Sluice implements. ApiVersions advertises exactly this table, and the
//! connection refuses anything outside it, so the two can never disagree.

use kafka_protocol::messages::ApiKey;

/// (api, min version, max version) for every implemented Kafka API.
pub(crate) const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    // v10 adds leader hints to errors (left empty), v11 TRANSACTION_ABORTABLE, v12 adds a
    // transactional batch's partition to its transaction (transaction version 2).
    (ApiKey::Produce, 3, 12),
    (ApiKey::Fetch, 4, 17),
    (ApiKey::ListOffsets, 1, 10),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::AlterReplicaLogDirs, 1, 2),
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::AlterPartitionReassignments, 0, 1),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::DescribeTopicPartitions, 0, 0),
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    (ApiKey::ConsumerGroupDescribe, 0, 1),
    // Share groups (KIP-932), as Kafka 4.1 has them; single node only (see
    // handlers::share_groups).
    (ApiKey::ShareGroupHeartbeat, 1, 1),
    (ApiKey::ShareGroupDescribe, 1, 1),
    (ApiKey::ShareFetch, 1, 1),
    (ApiKey::ShareAcknowledge, 1, 1),
    (ApiKey::DescribeShareGroupOffsets, 0, 0),
    (ApiKey::AlterShareGroupOffsets, 0, 0),
    (ApiKey::DeleteShareGroupOffsets, 0, 0),
    (ApiKey::ListConfigResources, 0, 1),
    // Transactions, version 2 (KIP-890 part 2, the "transaction.version" feature 2 that
    // ApiVersions finalizes on a single node): EndTxn v5 bumps the epoch on every
    // transaction, TxnOffsetCommit v5 and Produce v12 add to the transaction themselves.
    // AddOffsetsToTxn v4 and AddPartitionsToTxn v5 only add the TRANSACTION_ABORTABLE error.
    (ApiKey::AddPartitionsToTxn, 0, 5),
    (ApiKey::AddOffsetsToTxn, 0, 4),
    (ApiKey::EndTxn, 0, 5),
    (ApiKey::TxnOffsetCommit, 0, 5),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 2),
    (ApiKey::WriteTxnMarkers, 1, 1),
    // Security. SaslHandshake v0 (raw SASL tokens after it) is gone since Kafka 4.0.
    (ApiKey::SaslHandshake, 1, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::AlterUserScramCredentials, 0, 0),
    (ApiKey::DescribeClientQuotas, 0, 1),
    (ApiKey::AlterClientQuotas, 0, 1),
];

/// The feature transactions are versioned by (KIP-1022); Kafka's clients use version 2's
/// requests only where the broker finalizes it.
pub const TRANSACTION_VERSION_FEATURE: &str = "transaction.version";
/// The transaction version a single node runs.
pub const TRANSACTION_VERSION: i16 = 2;
/// The epoch of the finalized features: they never change while a node runs. Clients adopt
/// features whose epoch is newer than what they saw (starting below 0).
pub const FINALIZED_FEATURES_EPOCH: i64 = 1;

/// Every supported API as (api key, min version, max version).
pub fn supported_api_versions() -> impl Iterator<Item = (i16, i16, i16)> {
    SUPPORTED
        .iter()
        .map(|&(key, min, max)| (key as i16, min, max))
}

/// The supported version range of `api_key`, if the API is implemented at all.
pub fn version_range(api_key: i16) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(key, _, _)| *key as i16 == api_key)
        .map(|&(_, min, max)| (min, max))
}

pub fn is_supported(api_key: i16, version: i16) -> bool {
    version_range(api_key).is_some_and(|(min, max)| (min..=max).contains(&version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_advertised_range_is_one_the_codec_can_decode() {
        for &(key, min, max) in SUPPORTED {
            let codec = key.valid_versions();
            assert!(
                min >= codec.min && max <= codec.max,
                "{key:?} {min}..={max} vs {codec:?}"
            );
        }
    }
}
