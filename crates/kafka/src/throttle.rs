//! Who waits out a throttle (KIP-219). From the response versions listed here on, a client
//! backs off by itself when a response carries throttle_time_ms, so the broker answers at once
//! and only mutes the connection. Before them, and for APIs whose clients never back off, the
//! broker holds the response for the throttle time instead. The versions are Kafka's
//! (`AbstractResponse::shouldClientThrottle` of each response, Kafka 4.1).

use kafka_protocol::messages::ApiKey;

/// True when a client reading this response version backs off by itself.
pub(crate) fn client_backs_off(api_key: ApiKey, version: i16) -> bool {
    match first_version_backing_off(api_key) {
        Some(first) => version >= first,
        None => false,
    }
}

/// The first response version whose client backs off by itself; None when none does.
fn first_version_backing_off(api_key: ApiKey) -> Option<i16> {
    use ApiKey::*;
    Some(match api_key {
        IncrementalAlterConfigs
        | OffsetDelete
        | DescribeUserScramCredentials
        | AlterUserScramCredentials
        | DescribeTopicPartitions
        | ElectLeaders
        | AlterPartitionReassignments
        | ListPartitionReassignments
        | BrokerRegistration
        | BrokerHeartbeat
        | UnregisterBroker => 0,
        DeleteRecords
        | InitProducerId
        | AddPartitionsToTxn
        | AddOffsetsToTxn
        | EndTxn
        | TxnOffsetCommit
        | DescribeAcls
        | CreateAcls
        | DeleteAcls
        | AlterConfigs
        | CreatePartitions
        | DeleteGroups
        | DescribeLogDirs
        | AlterReplicaLogDirs
        | CreateDelegationToken
        | RenewDelegationToken
        | ExpireDelegationToken
        | DescribeDelegationToken => 1,
        FindCoordinator | Heartbeat | LeaveGroup | SyncGroup | DescribeGroups | ListGroups
        | ApiVersions | DeleteTopics | DescribeConfigs => 2,
        ListOffsets | JoinGroup | CreateTopics => 3,
        OffsetCommit | OffsetFetch => 4,
        Produce | Metadata => 6,
        Fetch => 8,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_versions_and_apis_without_client_back_off_are_held_by_the_broker() {
        assert!(!client_backs_off(ApiKey::ApiVersions, 0));
        assert!(!client_backs_off(ApiKey::ApiVersions, 1));
        assert!(client_backs_off(ApiKey::ApiVersions, 2));
        assert!(!client_backs_off(ApiKey::Produce, 5));
        assert!(client_backs_off(ApiKey::Produce, 6));
        assert!(!client_backs_off(ApiKey::Fetch, 7));
        assert!(client_backs_off(ApiKey::Fetch, 8));
        assert!(client_backs_off(ApiKey::Metadata, 12));
        assert!(client_backs_off(ApiKey::ElectLeaders, 0));
        // Kafka's clients never back off on these: the broker holds them at every version.
        assert!(!client_backs_off(ApiKey::DescribeClientQuotas, 1));
        assert!(!client_backs_off(ApiKey::ConsumerGroupHeartbeat, 0));
        assert!(!client_backs_off(ApiKey::SaslAuthenticate, 2));
    }
}
