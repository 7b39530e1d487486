//! The consumer rebalance protocol (KIP-848), driven through the coordinator's public API:
//! members reconcile one heartbeat at a time and no partition ever has two owners.

use std::collections::{BTreeMap, BTreeSet};

use super::tests::open;
use super::*;

const GROUP: &str = "cg";

fn topics(list: &[(&str, i32)]) -> BTreeMap<String, i32> {
    list.iter().map(|(t, n)| (t.to_string(), *n)).collect()
}

fn tp(topic: &str, partition: i32) -> TopicPartition {
    TopicPartition {
        topic: topic.to_string(),
        partition,
    }
}

fn join(member_id: &str, subscribed: &[&str]) -> ConsumerHeartbeatParams {
    ConsumerHeartbeatParams {
        group_id: GROUP.to_string(),
        member_id: member_id.to_string(),
        member_epoch: 0,
        rebalance_timeout_ms: 30_000,
        subscribed_topic_names: Some(subscribed.iter().map(|t| t.to_string()).collect()),
        owned_partitions: Some(Vec::new()),
        client_id: "client".into(),
        client_host: "/127.0.0.1".into(),
        ..ConsumerHeartbeatParams::default()
    }
}

fn beat(member_id: &str, epoch: i32, owned: Option<&[TopicPartition]>) -> ConsumerHeartbeatParams {
    ConsumerHeartbeatParams {
        group_id: GROUP.to_string(),
        member_id: member_id.to_string(),
        member_epoch: epoch,
        rebalance_timeout_ms: -1,
        owned_partitions: owned.map(<[TopicPartition]>::to_vec),
        client_id: "client".into(),
        client_host: "/127.0.0.1".into(),
        ..ConsumerHeartbeatParams::default()
    }
}

/// A member as its client sees itself: epoch and owned partitions, updated from responses.
struct Client {
    id: String,
    epoch: i32,
    owned: Vec<TopicPartition>,
}

impl Client {
    fn joined(
        coordinator: &GroupCoordinator,
        id: &str,
        subscribed: &[&str],
        catalog: &BTreeMap<String, i32>,
    ) -> Client {
        let result = coordinator
            .consumer_group_heartbeat(join(id, subscribed), catalog)
            .unwrap();
        Client {
            id: result.member_id,
            epoch: result.member_epoch,
            owned: result
                .assignment
                .expect("a join is answered with the assignment"),
        }
    }

    /// One heartbeat reporting what it owns; adopts the answer as a real client does (it
    /// revokes and takes partitions at once).
    fn beat(&mut self, coordinator: &GroupCoordinator, catalog: &BTreeMap<String, i32>) {
        let result = coordinator
            .consumer_group_heartbeat(beat(&self.id, self.epoch, Some(&self.owned)), catalog)
            .unwrap();
        self.epoch = result.member_epoch;
        if let Some(assignment) = result.assignment {
            self.owned = assignment;
        }
    }
}

fn assert_no_partition_owned_twice(clients: &[&Client]) {
    let mut seen = BTreeSet::new();
    for client in clients {
        for partition in &client.owned {
            assert!(seen.insert(partition.clone()), "{partition:?} owned twice");
        }
    }
}

#[tokio::test]
async fn a_lone_member_gets_every_partition_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, GroupConfig::default());
    let catalog = topics(&[("a", 2), ("other", 3)]);
    let client = Client::joined(&coordinator, "m1", &["a"], &catalog);
    assert_eq!(client.epoch, 1);
    assert_eq!(client.owned, vec![tp("a", 0), tp("a", 1)]);
    let description = coordinator.describe_consumer_group(GROUP).unwrap();
    assert_eq!(description.state, ConsumerGroupState::Stable);
    assert_eq!(
        (description.group_epoch, description.assignment_epoch),
        (1, 1)
    );
    assert_eq!(description.assignor_name, ASSIGNOR_UNIFORM);
    assert_eq!(description.members[0].assignment, client.owned);
    // The classic shape the HTTP API shows: state, and the partitions the coordinator knows.
    let classic_shape = coordinator.describe_group(GROUP);
    assert_eq!(classic_shape.state, GroupState::Stable);
    assert_eq!(
        classic_shape.members[0].assigned_partitions.as_ref(),
        Some(&client.owned)
    );
    // The next heartbeat changes nothing and carries no assignment.
    let result = coordinator
        .consumer_group_heartbeat(beat("m1", 1, Some(&client.owned)), &catalog)
        .unwrap();
    assert_eq!((result.member_epoch, result.assignment), (1, None));
    assert_eq!(result.heartbeat_interval_ms, 5000);
}

#[tokio::test]
async fn a_second_member_gets_partitions_only_after_the_first_revoked_them() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, GroupConfig::default());
    let catalog = topics(&[("a", 4)]);
    let mut first = Client::joined(&coordinator, "m1", &["a"], &catalog);
    let mut second = Client::joined(&coordinator, "m2", &["a"], &catalog);
    // The target gives m2 half, but m1 still holds it: m2 gets the new epoch and nothing.
    assert_eq!(second.epoch, 2);
    assert!(second.owned.is_empty());
    assert_eq!(
        coordinator.describe_consumer_group(GROUP).unwrap().state,
        ConsumerGroupState::Reconciling
    );
    // m1 learns it must give up two partitions; its epoch stays until it has.
    let stale = first.owned.clone();
    first.beat(&coordinator, &catalog);
    assert_eq!(first.epoch, 1);
    assert_eq!(first.owned.len(), 2);
    assert_no_partition_owned_twice(&[&first, &second]);
    // m2 asks again before m1 reported the revocation: still nothing.
    second.beat(&coordinator, &catalog);
    assert!(second.owned.is_empty());
    // A heartbeat still claiming the revoked partitions keeps m1 waiting.
    let waiting = coordinator
        .consumer_group_heartbeat(beat("m1", 1, Some(&stale)), &catalog)
        .unwrap();
    assert_eq!(waiting.member_epoch, 1);
    // m1 reports the smaller set: it moves to epoch 2, and m2 can take the rest.
    first.beat(&coordinator, &catalog);
    assert_eq!(first.epoch, 2);
    second.beat(&coordinator, &catalog);
    assert_eq!(second.owned.len(), 2);
    assert_no_partition_owned_twice(&[&first, &second]);
    let all: BTreeSet<_> = first.owned.iter().chain(&second.owned).cloned().collect();
    assert_eq!(all.len(), 4);
    assert_eq!(
        coordinator.describe_consumer_group(GROUP).unwrap().state,
        ConsumerGroupState::Stable
    );
}

#[tokio::test]
async fn a_leaving_member_hands_its_partitions_to_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, GroupConfig::default());
    let catalog = topics(&[("a", 3)]);
    let mut first = Client::joined(&coordinator, "m1", &["a"], &catalog);
    let mut second = Client::joined(&coordinator, "m2", &["a"], &catalog);
    for _ in 0..3 {
        first.beat(&coordinator, &catalog);
        second.beat(&coordinator, &catalog);
    }
    assert_eq!(first.owned.len() + second.owned.len(), 3);
    let left = coordinator
        .consumer_group_heartbeat(beat("m2", LEAVE_GROUP_MEMBER_EPOCH, None), &catalog)
        .unwrap();
    assert_eq!(left.member_epoch, LEAVE_GROUP_MEMBER_EPOCH);
    first.beat(&coordinator, &catalog);
    assert_eq!(first.owned, vec![tp("a", 0), tp("a", 1), tp("a", 2)]);
    // Gone for good: its next heartbeat is from an unknown member.
    assert_eq!(
        coordinator.consumer_group_heartbeat(beat("m2", second.epoch, None), &catalog),
        Err(GroupError::UnknownMemberId)
    );
}

#[tokio::test]
async fn epochs_other_than_the_members_are_fenced_except_after_a_lost_response() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, GroupConfig::default());
    let catalog = topics(&[("a", 2)]);
    let mut first = Client::joined(&coordinator, "m1", &["a"], &catalog);
    assert_eq!(
        coordinator.consumer_group_heartbeat(beat("m1", 7, None), &catalog),
        Err(GroupError::FencedMemberEpoch)
    );
    // m2 joins and leaves: m1 ends at epoch 3 with everything, never having seen epoch 2's
    // answer... or 3's: a member one epoch behind that owns no more than it has is answered.
    let _second = Client::joined(&coordinator, "m2", &["b"], &catalog);
    first.beat(&coordinator, &catalog);
    assert_eq!(first.epoch, 2);
    coordinator
        .consumer_group_heartbeat(beat("m2", LEAVE_GROUP_MEMBER_EPOCH, None), &catalog)
        .unwrap();
    let lost = coordinator
        .consumer_group_heartbeat(beat("m1", 2, Some(&first.owned)), &catalog)
        .unwrap();
    assert_eq!(lost.member_epoch, 3);
    let behind = coordinator
        .consumer_group_heartbeat(beat("m1", 2, Some(&first.owned)), &catalog)
        .unwrap();
    assert_eq!(behind.member_epoch, 3);
    // Two behind, or one behind without saying what it owns: fenced.
    assert_eq!(
        coordinator.consumer_group_heartbeat(beat("m1", 1, Some(&[])), &catalog),
        Err(GroupError::FencedMemberEpoch)
    );
    assert_eq!(
        coordinator.consumer_group_heartbeat(beat("m1", 2, None), &catalog),
        Err(GroupError::FencedMemberEpoch)
    );
    // A fenced member rejoins with epoch 0 and gets its assignment again.
    let rejoined = Client::joined(&coordinator, "m1", &["a"], &catalog);
    assert_eq!((rejoined.epoch, rejoined.owned.len()), (3, 2));
}

#[tokio::test]
async fn a_static_member_restarting_gets_its_assignment_back_without_a_rebalance() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, GroupConfig::default());
    let catalog = topics(&[("a", 2)]);
    let static_join = |member_id: &str| ConsumerHeartbeatParams {
        instance_id: Some("instance-1".into()),
        ..join(member_id, &["a"])
    };
    let first = coordinator
        .consumer_group_heartbeat(static_join("m1"), &catalog)
        .unwrap();
    let other = Client::joined(&coordinator, "m2", &["a"], &catalog);
    let mut first = Client {
        id: first.member_id,
        epoch: first.member_epoch,
        owned: first.assignment.unwrap(),
    };
    let mut other = other;
    for _ in 0..3 {
        first.beat(&coordinator, &catalog);
        other.beat(&coordinator, &catalog);
    }
    let epoch_before = coordinator
        .describe_consumer_group(GROUP)
        .unwrap()
        .group_epoch;
    // The same instance may not join twice while it is in the group.
    assert_eq!(
        coordinator.consumer_group_heartbeat(static_join("m1-again"), &catalog),
        Err(GroupError::UnreleasedInstanceId)
    );
    let left = coordinator
        .consumer_group_heartbeat(
            ConsumerHeartbeatParams {
                instance_id: Some("instance-1".into()),
                ..beat("m1", LEAVE_GROUP_STATIC_MEMBER_EPOCH, None)
            },
            &catalog,
        )
        .unwrap();
    assert_eq!(left.member_epoch, LEAVE_GROUP_STATIC_MEMBER_EPOCH);
    let back = coordinator
        .consumer_group_heartbeat(static_join("m1-restarted"), &catalog)
        .unwrap();
    assert_eq!(back.member_epoch, first.epoch);
    assert_eq!(back.assignment.unwrap(), first.owned);
    let description = coordinator.describe_consumer_group(GROUP).unwrap();
    assert_eq!(description.group_epoch, epoch_before);
    assert!(description
        .members
        .iter()
        .any(|m| m.member_id == "m1-restarted"));
    assert!(!description.members.iter().any(|m| m.member_id == "m1"));
}

#[tokio::test(start_paused = true)]
async fn a_silent_member_is_removed_after_the_session_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(
        &dir,
        GroupConfig {
            consumer_session_timeout_ms: 1000,
            ..GroupConfig::default()
        },
    );
    let catalog = topics(&[("a", 2)]);
    let mut first = Client::joined(&coordinator, "m1", &["a"], &catalog);
    let _silent = Client::joined(&coordinator, "m2", &["a"], &catalog);
    first.beat(&coordinator, &catalog);
    first.beat(&coordinator, &catalog);
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    first.beat(&coordinator, &catalog);
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    first.beat(&coordinator, &catalog);
    let description = coordinator.describe_consumer_group(GROUP).unwrap();
    assert_eq!(description.members.len(), 1, "{description:?}");
    assert_eq!(first.owned.len(), 2);
}

#[tokio::test]
async fn commits_and_fetches_need_the_members_current_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, GroupConfig::default());
    let catalog = topics(&[("a", 1)]);
    let offsets = vec![(
        tp("a", 0),
        OffsetAndMetadata {
            offset: 5,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms: 0,
        },
    )];
    let client = Client::joined(&coordinator, "m1", &["a"], &catalog);
    assert!(coordinator
        .commit_offsets(GROUP, "m1", None, client.epoch, offsets.clone())
        .await
        .is_ok());
    assert_eq!(
        coordinator
            .commit_offsets(GROUP, "m1", None, client.epoch - 1, offsets.clone())
            .await,
        Err(GroupError::StaleMemberEpoch)
    );
    assert_eq!(
        coordinator
            .commit_offsets(GROUP, "nobody", None, 1, offsets.clone())
            .await,
        Err(GroupError::UnknownMemberId)
    );
    // An admin tool may not commit while the group has members, but may once it is empty.
    assert_eq!(
        coordinator
            .commit_offsets(GROUP, "", None, -1, offsets.clone())
            .await,
        Err(GroupError::UnknownMemberId)
    );
    assert_eq!(
        coordinator.validate_offset_fetch(GROUP, Some("m1"), client.epoch + 1),
        Err(GroupError::StaleMemberEpoch)
    );
    assert_eq!(
        coordinator.validate_offset_fetch(GROUP, Some("m1"), client.epoch),
        Ok(())
    );
    assert_eq!(coordinator.validate_offset_fetch(GROUP, None, -1), Ok(()));
    coordinator
        .consumer_group_heartbeat(beat("m1", LEAVE_GROUP_MEMBER_EPOCH, None), &catalog)
        .unwrap();
    assert!(coordinator
        .commit_offsets(GROUP, "", None, -1, offsets)
        .await
        .is_ok());
    // Empty but kept for its offsets, listed and described as a consumer group.
    let listed = coordinator.list_groups();
    assert_eq!(
        (
            listed[0].group_type,
            listed[0].state,
            listed[0].protocol_type.as_str()
        ),
        (GROUP_TYPE_CONSUMER, "Empty", "consumer")
    );
    assert_eq!(
        coordinator.describe_consumer_group(GROUP).unwrap().state,
        ConsumerGroupState::Empty
    );
    let classic_shape = coordinator.describe_group(GROUP);
    assert_eq!(
        (classic_shape.state, classic_shape.protocol_type.as_str()),
        (GroupState::Empty, "consumer")
    );
    coordinator.delete_group(GROUP).await.unwrap();
    assert_eq!(
        coordinator.describe_consumer_group(GROUP),
        Err(GroupError::GroupIdNotFound)
    );
}

/// Without the Kafka front end's codec (see `migration_tests.rs` for the migration).
#[tokio::test]
async fn the_two_protocols_do_not_share_a_live_group() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, GroupConfig::default());
    let catalog = topics(&[("a", 1)]);
    Client::joined(&coordinator, "m1", &["a"], &catalog);
    let classic = JoinGroupParams {
        group_id: GROUP.to_string(),
        member_id: String::new(),
        group_instance_id: None,
        client_id: "c".into(),
        client_host: "h".into(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 1_000,
        protocol_type: "consumer".into(),
        protocols: vec![GroupProtocol {
            name: "range".into(),
            metadata: bytes::Bytes::new(),
        }],
        require_known_member_id: false,
    };
    let refused = coordinator.join_group(classic.clone()).await.unwrap_err();
    assert_eq!(refused.error, GroupError::InconsistentGroupProtocol);
    // And the other way round: a classic group with members is no consumer group.
    let classic_group = JoinGroupParams {
        group_id: "classic".into(),
        ..classic
    };
    coordinator.join_group(classic_group).await.unwrap();
    assert_eq!(
        coordinator.consumer_group_heartbeat(
            ConsumerHeartbeatParams {
                group_id: "classic".into(),
                ..join("m9", &["a"])
            },
            &catalog
        ),
        Err(GroupError::GroupIdNotFound)
    );
}

#[tokio::test]
async fn a_regex_subscription_follows_new_topics() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, GroupConfig::default());
    let before = topics(&[("orders-eu", 1), ("payments", 1)]);
    let mut client = {
        let result = coordinator
            .consumer_group_heartbeat(
                ConsumerHeartbeatParams {
                    subscribed_topic_names: None,
                    subscribed_topic_regex: Some("orders-.*".into()),
                    ..join("m1", &[])
                },
                &before,
            )
            .unwrap();
        Client {
            id: result.member_id,
            epoch: result.member_epoch,
            owned: result.assignment.unwrap(),
        }
    };
    assert_eq!(client.owned, vec![tp("orders-eu", 0)]);
    let after = topics(&[("orders-eu", 1), ("orders-us", 2), ("payments", 1)]);
    client.beat(&coordinator, &after);
    assert_eq!(client.epoch, 2);
    assert_eq!(
        client.owned,
        vec![tp("orders-eu", 0), tp("orders-us", 0), tp("orders-us", 1)]
    );
    let description = coordinator.describe_consumer_group(GROUP).unwrap();
    assert_eq!(
        description.members[0].subscribed_topic_regex.as_deref(),
        Some("orders-.*")
    );
    assert!(matches!(
        coordinator.consumer_group_heartbeat(
            ConsumerHeartbeatParams {
                subscribed_topic_regex: Some("(".into()),
                ..join("m2", &[])
            },
            &after
        ),
        Err(GroupError::InvalidRegularExpression(_))
    ));
}

#[tokio::test]
async fn the_range_assignor_gives_contiguous_ranges_and_uniform_balances() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, GroupConfig::default());
    let catalog = topics(&[("a", 5)]);
    let ranged = |id: &str| ConsumerHeartbeatParams {
        server_assignor: Some(ASSIGNOR_RANGE.into()),
        ..join(id, &["a"])
    };
    coordinator
        .consumer_group_heartbeat(ranged("m1"), &catalog)
        .unwrap();
    coordinator
        .consumer_group_heartbeat(ranged("m2"), &catalog)
        .unwrap();
    let description = coordinator.describe_consumer_group(GROUP).unwrap();
    assert_eq!(description.assignor_name, ASSIGNOR_RANGE);
    let targets: Vec<Vec<TopicPartition>> = description
        .members
        .iter()
        .map(|m| m.target_assignment.clone())
        .collect();
    assert_eq!(
        targets,
        vec![
            vec![tp("a", 0), tp("a", 1), tp("a", 2)],
            vec![tp("a", 3), tp("a", 4)]
        ]
    );
    assert_eq!(
        coordinator.consumer_group_heartbeat(
            ConsumerHeartbeatParams {
                server_assignor: Some("sticky".into()),
                ..join("m3", &["a"])
            },
            &catalog
        ),
        Err(GroupError::UnsupportedAssignor("sticky".into()))
    );
}

#[test]
fn the_uniform_assignor_balances_uneven_subscriptions_and_keeps_what_it_can() {
    use super::consumer_group::tests_support::assign_uniform_for_test as assign;
    let counts = topics(&[("a", 4), ("b", 2)]);
    // m1 reads a and b, m2 only b: m2 gets b, m1 the rest would be 4/2 unbalanced; the
    // assignor evens out where subscriptions allow.
    let first = assign(
        &[("m1", &["a", "b"]), ("m2", &["b"])],
        &counts,
        &Default::default(),
    );
    assert_eq!(first["m1"].len() + first["m2"].len(), 6);
    assert_eq!(first["m2"].len(), 2);
    // Adding m3 on a moves the fewest partitions: m1 keeps two of its four.
    let second = assign(
        &[("m1", &["a", "b"]), ("m2", &["b"]), ("m3", &["a"])],
        &counts,
        &first,
    );
    assert_eq!(second["m1"].len(), 2, "{second:?}");
    assert_eq!(second["m3"].len(), 2, "{second:?}");
    assert!(second["m1"].is_subset(&first["m1"]));
}

#[tokio::test]
async fn malformed_heartbeats_are_invalid_requests() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, GroupConfig::default());
    let catalog = topics(&[("a", 1)]);
    let invalid = |params| {
        matches!(
            coordinator.consumer_group_heartbeat(params, &catalog),
            Err(GroupError::InvalidRequest(_))
        )
    };
    assert!(invalid(ConsumerHeartbeatParams {
        group_id: String::new(),
        ..join("m1", &["a"])
    }));
    assert!(invalid(ConsumerHeartbeatParams {
        rebalance_timeout_ms: -1,
        ..join("m1", &["a"])
    }));
    assert!(invalid(ConsumerHeartbeatParams {
        subscribed_topic_names: None,
        ..join("m1", &["a"])
    }));
    assert!(invalid(ConsumerHeartbeatParams {
        owned_partitions: Some(vec![tp("a", 0)]),
        ..join("m1", &["a"])
    }));
    assert!(invalid(beat("", 3, None)));
    assert!(invalid(beat("m1", LEAVE_GROUP_STATIC_MEMBER_EPOCH, None)));
    // v0: an empty member id on joining is named by the coordinator.
    let named = coordinator
        .consumer_group_heartbeat(join("", &["a"]), &catalog)
        .unwrap();
    assert!(!named.member_id.is_empty());
}
