//! A group moving between the classic and the consumer protocol while it has members, through
//! the coordinator's public API, with a plain-text stand-in for the consumer protocol's
//! formats (the Kafka front end's codec has its own tests).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use super::tests::{config, open};
use super::*;

const GROUP: &str = "migrating";

/// Subscriptions are `topics|owned`, assignments `owned`; partitions are `topic:index`,
/// comma-separated.
struct TextCodec;

fn parse(text: &str) -> Vec<TopicPartition> {
    text.split(',')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (topic, index) = p.split_once(':')?;
            Some(TopicPartition {
                topic: topic.to_string(),
                partition: index.parse().ok()?,
            })
        })
        .collect()
}

fn show(partitions: &[TopicPartition]) -> String {
    partitions
        .iter()
        .map(|p| format!("{}:{}", p.topic, p.partition))
        .collect::<Vec<_>>()
        .join(",")
}

impl ConsumerProtocolCodec for TextCodec {
    fn decode_subscription(&self, metadata: &[u8]) -> Option<ClassicSubscription> {
        let text = std::str::from_utf8(metadata).ok()?;
        let (topics, owned) = text.split_once('|')?;
        Some(ClassicSubscription {
            topics: topics.split(',').map(str::to_string).collect(),
            owned_partitions: parse(owned),
        })
    }

    fn decode_assignment(&self, assignment: &[u8]) -> Option<Vec<TopicPartition>> {
        Some(parse(std::str::from_utf8(assignment).ok()?))
    }

    fn encode_assignment(&self, partitions: &[TopicPartition], _subscription: &[u8]) -> Bytes {
        Bytes::from(show(partitions))
    }
}

fn catalog() -> BTreeMap<String, i32> {
    [("t".to_string(), 4)].into_iter().collect()
}

fn classic_join(member_id: &str, owned: &str) -> JoinGroupParams {
    JoinGroupParams {
        group_id: GROUP.to_string(),
        member_id: member_id.to_string(),
        group_instance_id: None,
        client_id: "classic".to_string(),
        client_host: "/127.0.0.1".to_string(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 1_000,
        protocol_type: "consumer".to_string(),
        protocols: vec![GroupProtocol {
            name: "range".to_string(),
            metadata: Bytes::from(format!("t|{owned}")),
        }],
        require_known_member_id: false,
    }
}

fn sync(member_id: &str, generation_id: i32, assignment: Option<&str>) -> SyncGroupParams {
    SyncGroupParams {
        group_id: GROUP.to_string(),
        member_id: member_id.to_string(),
        group_instance_id: None,
        generation_id,
        protocol_type: Some("consumer".to_string()),
        protocol_name: Some("range".to_string()),
        assignments: assignment
            .map(|a| vec![(member_id.to_string(), Bytes::from(a.to_string()))])
            .unwrap_or_default(),
    }
}

fn modern(
    member_id: &str,
    epoch: i32,
    owned: Option<Vec<TopicPartition>>,
) -> ConsumerHeartbeatParams {
    ConsumerHeartbeatParams {
        group_id: GROUP.to_string(),
        member_id: member_id.to_string(),
        member_epoch: epoch,
        rebalance_timeout_ms: if epoch == 0 { 30_000 } else { -1 },
        subscribed_topic_names: (epoch == 0).then(|| vec!["t".to_string()]),
        owned_partitions: owned,
        client_id: "modern".into(),
        client_host: "/127.0.0.1".into(),
        ..ConsumerHeartbeatParams::default()
    }
}

#[tokio::test]
async fn a_live_group_moves_to_the_consumer_protocol_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, config());
    coordinator.enable_protocol_migration(Arc::new(TextCodec), Box::new(catalog));

    // A classic group of one member holding all four partitions, generation 1.
    let joined = coordinator.join_group(classic_join("", "")).await.unwrap();
    let a = joined.member_id.clone();
    assert_eq!(
        (joined.generation_id, joined.leader_id.as_str()),
        (1, a.as_str())
    );
    coordinator
        .sync_group(sync(&a, 1, Some("t:0,t:1,t:2,t:3")))
        .await
        .unwrap();

    // A consumer-protocol member joins: the group becomes a consumer group at epoch 1, the
    // new member moves it to 2 and waits for the partitions the classic member still holds.
    let b = coordinator
        .consumer_group_heartbeat(modern("b", 0, Some(Vec::new())), &catalog())
        .unwrap();
    assert_eq!(
        (b.member_epoch, b.assignment.clone()),
        (2, Some(Vec::new()))
    );
    assert!(coordinator.is_consumer_group(GROUP));
    // The classic member is told to join again; a commit with its generation still counts.
    assert_eq!(
        coordinator.heartbeat(GROUP, &a, None, 1),
        Err(GroupError::RebalanceInProgress)
    );
    assert!(coordinator.validate_commit(GROUP, &a, None, 1, &[]).is_ok());
    assert_eq!(
        coordinator.heartbeat(GROUP, &a, None, 0),
        Err(GroupError::IllegalGeneration)
    );
    // An eager client gave everything up before joining: it is answered at once, with no
    // leader, and its SyncGroup gets its half from the coordinator.
    let rejoined = coordinator.join_group(classic_join(&a, "")).await.unwrap();
    assert_eq!(rejoined.generation_id, 2);
    assert_eq!(rejoined.leader_id, "");
    assert!(rejoined.members.is_empty());
    let synced = coordinator
        .sync_group(sync(&a, 2, Some("t:0,t:1,t:2,t:3")))
        .await
        .unwrap();
    let mine = parse(std::str::from_utf8(&synced.assignment).unwrap());
    assert_eq!(mine.len(), 2);
    assert_eq!(coordinator.heartbeat(GROUP, &a, None, 2), Ok(()));
    // The consumer-protocol member now gets the other half.
    let b = coordinator
        .consumer_group_heartbeat(modern("b", 2, Some(Vec::new())), &catalog())
        .unwrap();
    let theirs = b.assignment.clone().unwrap();
    assert_eq!(theirs.len(), 2);
    assert!(theirs.iter().all(|p| !mine.contains(p)));
    let described = coordinator.describe_consumer_group(GROUP).unwrap();
    assert_eq!(described.state, ConsumerGroupState::Stable);
    let classic: Vec<bool> = described.members.iter().map(|m| m.is_classic).collect();
    assert_eq!(classic.iter().filter(|c| **c).count(), 1);
    // A classic member commits with its generation: ILLEGAL_GENERATION otherwise.
    assert!(coordinator.validate_commit(GROUP, &a, None, 2, &[]).is_ok());
    assert_eq!(
        coordinator.validate_commit(GROUP, &a, None, 1, &[]),
        Err(GroupError::IllegalGeneration)
    );

    // The consumer-protocol member leaves: the group is classic again, at generation 3 (the
    // leave moved the epoch), rebalancing; the classic member joins and leads it alone.
    coordinator
        .consumer_group_heartbeat(modern("b", -1, None), &catalog())
        .unwrap();
    assert!(!coordinator.is_consumer_group(GROUP));
    assert_eq!(
        coordinator.heartbeat(GROUP, &a, None, 3),
        Err(GroupError::RebalanceInProgress)
    );
    let classic_again = coordinator.join_group(classic_join(&a, "")).await.unwrap();
    assert_eq!(classic_again.generation_id, 4);
    assert_eq!(classic_again.leader_id, a);
    let synced = coordinator
        .sync_group(sync(&a, 4, Some("t:0,t:1,t:2,t:3")))
        .await
        .unwrap();
    assert_eq!(&synced.assignment[..], b"t:0,t:1,t:2,t:3");
    assert_eq!(coordinator.heartbeat(GROUP, &a, None, 4), Ok(()));
}

#[tokio::test]
async fn without_a_codec_a_live_group_keeps_its_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, config());
    let joined = coordinator.join_group(classic_join("", "")).await.unwrap();
    coordinator
        .sync_group(sync(&joined.member_id, 1, Some("t:0")))
        .await
        .unwrap();
    assert_eq!(
        coordinator.consumer_group_heartbeat(modern("b", 0, Some(Vec::new())), &catalog()),
        Err(GroupError::GroupIdNotFound)
    );
    assert!(!coordinator.is_consumer_group(GROUP));
}

#[tokio::test]
async fn a_classic_group_of_another_protocol_type_does_not_move() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, config());
    coordinator.enable_protocol_migration(Arc::new(TextCodec), Box::new(catalog));
    let joined = coordinator
        .join_group(JoinGroupParams {
            protocol_type: "connect".to_string(),
            ..classic_join("", "")
        })
        .await
        .unwrap();
    coordinator
        .sync_group(SyncGroupParams {
            protocol_type: Some("connect".to_string()),
            ..sync(&joined.member_id, 1, Some("t:0"))
        })
        .await
        .unwrap();
    assert_eq!(
        coordinator.consumer_group_heartbeat(modern("b", 0, Some(Vec::new())), &catalog()),
        Err(GroupError::GroupIdNotFound)
    );
    // And a classic member of another protocol type cannot join a consumer group.
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, config());
    coordinator.enable_protocol_migration(Arc::new(TextCodec), Box::new(catalog));
    coordinator
        .consumer_group_heartbeat(modern("b", 0, Some(Vec::new())), &catalog())
        .unwrap();
    let refused = coordinator
        .join_group(JoinGroupParams {
            protocol_type: "connect".to_string(),
            ..classic_join("", "")
        })
        .await;
    assert_eq!(
        refused.map_err(|e| e.error),
        Err(GroupError::InconsistentGroupProtocol)
    );
}

/// A classic group of one member holding all four partitions, with a consumer-protocol
/// member "b" joined: a consumer group at epoch 2.
async fn migrated(coordinator: &GroupCoordinator, first: JoinGroupParams) -> String {
    let joined = coordinator.join_group(first).await.unwrap();
    let a = joined.member_id.clone();
    coordinator
        .sync_group(sync(&a, 1, Some("t:0,t:1,t:2,t:3")))
        .await
        .unwrap();
    coordinator
        .consumer_group_heartbeat(modern("b", 0, Some(Vec::new())), &catalog())
        .unwrap();
    assert!(coordinator.is_consumer_group(GROUP));
    a
}

#[tokio::test(start_paused = true)]
async fn a_classic_member_that_does_not_join_again_in_time_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, config());
    coordinator.enable_protocol_migration(Arc::new(TextCodec), Box::new(catalog));
    let a = migrated(&coordinator, classic_join("", "")).await;
    // Told to join again, it keeps heartbeating but never does: after its rebalance timeout
    // (1 s) it is removed, and its partitions go to the other member.
    assert_eq!(
        coordinator.heartbeat(GROUP, &a, None, 1),
        Err(GroupError::RebalanceInProgress)
    );
    tokio::time::advance(std::time::Duration::from_millis(600)).await;
    assert_eq!(
        coordinator.heartbeat(GROUP, &a, None, 1),
        Err(GroupError::RebalanceInProgress)
    );
    tokio::time::advance(std::time::Duration::from_millis(600)).await;
    coordinator.expire_sessions();
    assert_eq!(
        coordinator.heartbeat(GROUP, &a, None, 1),
        Err(GroupError::UnknownMemberId)
    );
    let described = coordinator.describe_consumer_group(GROUP).unwrap();
    assert_eq!(described.members.len(), 1);
    assert_eq!(described.members[0].target_assignment.len(), 4);
}

#[tokio::test]
async fn a_static_member_moving_to_the_consumer_protocol_replaces_its_classic_self() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, config());
    coordinator.enable_protocol_migration(Arc::new(TextCodec), Box::new(catalog));
    let a = migrated(
        &coordinator,
        JoinGroupParams {
            group_instance_id: Some("instance-a".to_string()),
            ..classic_join("", "")
        },
    )
    .await;
    let replaced = coordinator
        .consumer_group_heartbeat(
            ConsumerHeartbeatParams {
                instance_id: Some("instance-a".to_string()),
                ..modern("a2", 0, Some(Vec::new()))
            },
            &catalog(),
        )
        .unwrap();
    assert_eq!(replaced.member_id, "a2");
    assert_eq!(
        coordinator.heartbeat(GROUP, &a, None, 1),
        Err(GroupError::UnknownMemberId)
    );
    let described = coordinator.describe_consumer_group(GROUP).unwrap();
    let mut members: Vec<&str> = described
        .members
        .iter()
        .map(|m| m.member_id.as_str())
        .collect();
    members.sort();
    assert_eq!(members, ["a2", "b"]);
}
