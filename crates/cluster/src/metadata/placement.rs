//! Replica placement as Kafka does it without racks (`assignReplicasToBrokersRackUnaware`):
//! partition p's first replica is broker (start + p) mod n; the followers follow at a shift that
//! grows by one every n partitions, so the leaders and the follower pairs both spread evenly.

use crate::NodeId;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("replication factor must be at least 1")]
    ZeroReplicationFactor,
    #[error("replication factor {replication_factor} exceeds the {brokers} registered brokers")]
    NotEnoughBrokers {
        replication_factor: u16,
        brokers: usize,
    },
}

/// Replicas for `partition_count` partitions, numbered from `first_partition` (new partitions
/// of an existing topic continue the pattern). `start` rotates the pattern (Kafka picks it at
/// random so that topics do not all lead on the same broker).
pub fn place_replicas(
    brokers: &[NodeId],
    first_partition: u32,
    partition_count: u32,
    replication_factor: u16,
    start: usize,
) -> Result<Vec<Vec<NodeId>>, PlacementError> {
    if replication_factor == 0 {
        return Err(PlacementError::ZeroReplicationFactor);
    }
    let mut sorted = brokers.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let n = sorted.len();
    if usize::from(replication_factor) > n {
        return Err(PlacementError::NotEnoughBrokers {
            replication_factor,
            brokers: n,
        });
    }
    let mut assignments = Vec::with_capacity(partition_count as usize);
    for offset in 0..partition_count {
        let partition = (first_partition + offset) as usize;
        let first = (start + partition) % n;
        let shift = start + partition / n;
        let mut replicas = Vec::with_capacity(usize::from(replication_factor));
        replicas.push(sorted[first]);
        for j in 0..usize::from(replication_factor) - 1 {
            let index = (first + 1 + (shift + j) % (n - 1)) % n;
            replicas.push(sorted[index]);
        }
        assignments.push(replicas);
    }
    Ok(assignments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaders_and_replicas_spread_round_robin() {
        let placed = place_replicas(&[3, 1, 2], 0, 6, 2, 0).unwrap();
        assert_eq!(
            placed,
            vec![
                vec![1, 2],
                vec![2, 3],
                vec![3, 1],
                vec![1, 3],
                vec![2, 1],
                vec![3, 2]
            ]
        );
        for replicas in &placed {
            let mut unique = replicas.clone();
            unique.dedup();
            assert_eq!(
                unique.len(),
                replicas.len(),
                "a broker twice in {replicas:?}"
            );
        }
    }

    #[test]
    fn refuses_more_replicas_than_brokers() {
        assert_eq!(
            place_replicas(&[1, 2], 0, 1, 3, 0),
            Err(PlacementError::NotEnoughBrokers {
                replication_factor: 3,
                brokers: 2
            })
        );
        assert_eq!(
            place_replicas(&[1], 0, 1, 0, 0),
            Err(PlacementError::ZeroReplicationFactor)
        );
    }

    #[test]
    fn single_broker_single_replica() {
        assert_eq!(
            place_replicas(&[7], 0, 2, 1, 5).unwrap(),
            vec![vec![7], vec![7]]
        );
    }
}
