//! Share groups: membership and the share partitions' record states.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::share_group::{ShareGroup, ShareGroupTiming, ShareHeartbeatParams};
use super::share_partition::{
    AcknowledgeType, AcquiredRange, BatchSpan, ShareLimits, SharePartition,
};
use super::TopicPartition;
use crate::GroupError;

const TIMING: ShareGroupTiming = ShareGroupTiming {
    heartbeat_interval_ms: 5000,
    session_timeout_ms: 45000,
};

fn limits() -> ShareLimits {
    ShareLimits {
        lock_duration: Duration::from_secs(30),
        delivery_count_limit: 3,
        in_flight_max: 100,
    }
}

fn batch(base: i64, last: i64) -> BatchSpan {
    BatchSpan {
        base_offset: base,
        last_offset: last,
        is_control: false,
        is_aborted: false,
    }
}

fn range(first: i64, last: i64, count: i16) -> AcquiredRange {
    AcquiredRange {
        first_offset: first,
        last_offset: last,
        delivery_count: count,
    }
}

fn join(member: &str, topics: &[&str]) -> ShareHeartbeatParams {
    ShareHeartbeatParams {
        group_id: "g".into(),
        member_id: member.into(),
        member_epoch: 0,
        subscribed_topic_names: Some(topics.iter().map(|t| t.to_string()).collect()),
        ..Default::default()
    }
}

fn tp(topic: &str, partition: i32) -> TopicPartition {
    TopicPartition {
        topic: topic.into(),
        partition,
    }
}

#[test]
fn records_go_to_one_member_at_a_time_and_the_start_offset_moves_over_what_is_done() {
    let now = Instant::now();
    let mut partition = SharePartition::new(0);
    let first = partition.acquire("a", &[batch(0, 4)], 3, now, &limits());
    assert_eq!(first, vec![range(0, 2, 1)]);
    // b gets what a does not hold.
    assert_eq!(partition.next_read_offset(&limits()), Some(3));
    let second = partition.acquire("b", &[batch(0, 4)], 10, now, &limits());
    assert_eq!(second, vec![range(3, 4, 1)]);
    // b cannot acknowledge a's records.
    assert_eq!(
        partition.acknowledge("b", 0, 0, &[AcknowledgeType::Accept], &limits()),
        Err(GroupError::InvalidRecordState)
    );
    partition
        .acknowledge("a", 1, 2, &[AcknowledgeType::Accept], &limits())
        .unwrap();
    assert_eq!(partition.start_offset(), 0);
    partition
        .acknowledge("a", 0, 0, &[AcknowledgeType::Reject], &limits())
        .unwrap();
    assert_eq!(partition.start_offset(), 3);
}

#[test]
fn a_released_record_comes_back_with_its_delivery_count_until_the_limit_archives_it() {
    let now = Instant::now();
    let mut partition = SharePartition::new(10);
    for delivery in 1..=3 {
        let acquired = partition.acquire("a", &[batch(10, 11)], 10, now, &limits());
        let expected = if delivery == 1 {
            vec![range(10, 11, 1)]
        } else {
            vec![range(10, 10, delivery)]
        };
        assert_eq!(acquired, expected, "delivery {delivery}");
        if delivery == 1 {
            partition
                .acknowledge("a", 11, 11, &[AcknowledgeType::Accept], &limits())
                .unwrap();
        }
        partition
            .acknowledge("a", 10, 10, &[AcknowledgeType::Release], &limits())
            .unwrap();
    }
    // The third release reached the limit (3): archived, and the start offset passed it.
    assert_eq!(partition.start_offset(), 12);
    assert!(partition
        .acquire("a", &[batch(10, 11)], 10, now, &limits())
        .is_empty());
}

#[test]
fn an_expired_lock_makes_the_record_available_to_another_member() {
    let now = Instant::now();
    let mut partition = SharePartition::new(0);
    partition.acquire("a", &[batch(0, 1)], 10, now, &limits());
    let later = now + Duration::from_secs(31);
    partition.expire_locks(later, &limits());
    assert_eq!(
        partition.acquire("b", &[batch(0, 1)], 10, later, &limits()),
        vec![range(0, 1, 2)]
    );
    assert_eq!(
        partition.acknowledge("a", 0, 1, &[AcknowledgeType::Accept], &limits()),
        Err(GroupError::InvalidRecordState)
    );
}

#[test]
fn per_offset_types_gaps_and_control_records() {
    let now = Instant::now();
    let mut partition = SharePartition::new(0);
    let control = BatchSpan {
        base_offset: 3,
        last_offset: 3,
        is_control: true,
        is_aborted: false,
    };
    // Offset 2 is missing from the log (compacted away).
    let acquired = partition.acquire(
        "a",
        &[batch(0, 1), control, batch(4, 5)],
        10,
        now,
        &limits(),
    );
    assert_eq!(acquired, vec![range(0, 1, 1), range(4, 5, 1)]);
    use AcknowledgeType::*;
    // A per-offset batch over the gap and the control record.
    assert_eq!(
        partition.acknowledge("a", 0, 3, &[Accept, Accept, Gap], &limits()),
        Err(GroupError::InvalidRequest(
            "Invalid acknowledgement batch".into()
        ))
    );
    partition
        .acknowledge("a", 0, 2, &[Accept, Accept, Gap], &limits())
        .unwrap();
    assert_eq!(partition.start_offset(), 4);
    partition
        .acknowledge("a", 4, 5, &[Accept, Release], &limits())
        .unwrap();
    assert_eq!(partition.start_offset(), 5);
    // 5 was released (delivered twice); closing a's session leaves its count as it was.
    assert_eq!(
        partition.acquire("a", &[batch(4, 5)], 10, now, &limits()),
        vec![range(5, 5, 2)]
    );
    partition.release_member("a");
    assert_eq!(
        partition.acquire("b", &[batch(4, 5)], 10, now, &limits()),
        vec![range(5, 5, 2)]
    );
}

#[test]
fn in_flight_records_are_bounded() {
    let now = Instant::now();
    let mut partition = SharePartition::new(0);
    let small = ShareLimits {
        in_flight_max: 3,
        ..limits()
    };
    assert_eq!(
        partition.acquire("a", &[batch(0, 9)], 10, now, &small),
        vec![range(0, 2, 1)]
    );
    assert_eq!(partition.next_read_offset(&small), None);
    partition
        .acknowledge("a", 0, 0, &[AcknowledgeType::Accept], &small)
        .unwrap();
    assert_eq!(partition.next_read_offset(&small), Some(3));
}

#[test]
fn members_share_partitions_when_they_outnumber_them_and_spread_otherwise() {
    let now = Instant::now();
    let topics = BTreeMap::from([("one".to_string(), 1), ("four".to_string(), 4)]);
    let mut group = ShareGroup::new("g".into());
    let a = group
        .heartbeat(join("a", &["one", "four"]), &topics, now, TIMING)
        .unwrap();
    assert_eq!(a.member_epoch, 1);
    assert_eq!(
        a.assignment.unwrap(),
        vec![
            tp("four", 0),
            tp("four", 1),
            tp("four", 2),
            tp("four", 3),
            tp("one", 0)
        ]
    );
    let b = group
        .heartbeat(join("b", &["one", "four"]), &topics, now, TIMING)
        .unwrap();
    assert_eq!(b.member_epoch, 2);
    assert_eq!(
        b.assignment.unwrap(),
        vec![tp("four", 1), tp("four", 3), tp("one", 0)]
    );
    // a learns its new epoch and assignment on its next heartbeat.
    let mut again = join("a", &[]);
    again.member_epoch = 1;
    again.subscribed_topic_names = None;
    let a = group
        .heartbeat(again.clone(), &topics, now, TIMING)
        .unwrap();
    assert_eq!(a.member_epoch, 2);
    assert_eq!(
        a.assignment.unwrap(),
        vec![tp("four", 0), tp("four", 2), tp("one", 0)]
    );
    // An old epoch is fenced.
    assert_eq!(
        group.heartbeat(again, &topics, now, TIMING),
        Err(GroupError::FencedMemberEpoch)
    );
    // Neither heartbeats again: both sessions run out.
    let expired = group.expire_sessions(now + Duration::from_secs(46));
    assert_eq!(expired, vec!["a".to_string(), "b".to_string()]);
    assert!(group.is_empty());
}

#[test]
fn the_stored_state_keeps_acknowledgements_and_delivery_counts_but_not_locks() {
    use AcknowledgeType::{Accept, Reject, Release};
    let now = Instant::now();
    let mut partition = SharePartition::new(0);
    assert_eq!(
        partition.acquire("a", &[batch(0, 5)], 10, now, &limits()),
        vec![range(0, 5, 1)]
    );
    let before = partition.version();
    partition
        .acknowledge("a", 0, 3, &[Accept, Release, Reject, Accept], &limits())
        .unwrap();
    assert!(partition.version() > before);
    assert_eq!(partition.start_offset(), 1);
    // From offset 1: released once, rejected, accepted, two still locked (stored without
    // the delivery they are in).
    let encoded = partition.encode();
    assert_eq!(encoded, "v1:1.a.1,1.x.0,1.k.0,2.a.0,");

    let mut restored = SharePartition::restore(1, &encoded);
    assert_eq!(restored.start_offset(), 1);
    assert_eq!(restored.version(), 0);
    assert_eq!(restored.next_read_offset(&limits()), Some(1));
    assert_eq!(
        restored.acquire("b", &[batch(0, 5), batch(6, 6)], 10, now, &limits()),
        vec![range(1, 1, 2), range(4, 6, 1)]
    );
    // Offsets 2 and 3 are done: no one may acknowledge them again.
    assert_eq!(
        restored.acknowledge("b", 2, 3, &[Accept], &limits()),
        Err(GroupError::InvalidRecordState)
    );

    // Only the start offset (as AlterShareGroupOffsets stores it), or a state this version
    // cannot read: everything from the start offset on is new.
    for stored in [
        "",
        "v2:1.a.1,",
        "v1:1.q.1,",
        "v1:-1.a.1,",
        "v1:99999999999.a.0,",
    ] {
        let mut fresh = SharePartition::restore(7, stored);
        assert_eq!(fresh.start_offset(), 7, "{stored}");
        assert_eq!(
            fresh.acquire("b", &[batch(7, 8)], 10, now, &limits()),
            vec![range(7, 8, 1)],
            "{stored}"
        );
    }
}

#[test]
fn aborted_data_is_archived_without_a_delivery() {
    let now = Instant::now();
    let mut partition = SharePartition::new(0);
    let aborted = BatchSpan {
        base_offset: 0,
        last_offset: 2,
        is_control: false,
        is_aborted: true,
    };
    let marker = BatchSpan {
        base_offset: 3,
        last_offset: 3,
        is_control: true,
        is_aborted: false,
    };
    // Only aborted data and its marker: nothing acquired, the start offset moves past them.
    assert!(partition
        .acquire("a", &[aborted, marker], 10, now, &limits())
        .is_empty());
    assert_eq!(partition.start_offset(), 4);
    assert_eq!(partition.next_read_offset(&limits()), Some(4));
    assert_eq!(
        partition.acquire("a", &[batch(4, 4)], 10, now, &limits()),
        vec![range(4, 4, 1)]
    );
}
