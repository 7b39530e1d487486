//! The rebalance state machine and committed offsets, driven through the public API.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_log::LogConfig;

use super::*;

const GROUP: &str = "g";

pub(super) fn config() -> GroupConfig {
    GroupConfig {
        initial_rebalance_delay_ms: 0,
        session_timeout_ms_min: 10,
        session_timeout_ms_max: 60_000,
        offsets_retention_ms: 7 * 24 * 3600 * 1000,
        ..GroupConfig::default()
    }
}

pub(super) fn open(dir: &tempfile::TempDir, config: GroupConfig) -> Arc<GroupCoordinator> {
    GroupCoordinator::open(
        Arc::new(sluice_log::RealDisk),
        &dir.path().join("consumer_offsets"),
        config,
        LogConfig::default(),
    )
    .unwrap()
}

fn params(member_id: &str, protocols: &[&str]) -> JoinGroupParams {
    JoinGroupParams {
        group_id: GROUP.to_string(),
        member_id: member_id.to_string(),
        group_instance_id: None,
        client_id: "client".to_string(),
        client_host: "/127.0.0.1".to_string(),
        session_timeout_ms: 10_000,
        // Short, so the test of a member missing the rebalance is quick; every other
        // rebalance completes early because all members rejoin.
        rebalance_timeout_ms: 1_000,
        protocol_type: "consumer".to_string(),
        protocols: protocols
            .iter()
            .map(|name| GroupProtocol {
                name: name.to_string(),
                metadata: Bytes::from(format!("meta-{name}")),
            })
            .collect(),
        require_known_member_id: true,
    }
}

/// The KIP-394 dance: the first JoinGroup only reserves a member id.
async fn member_id(coordinator: &GroupCoordinator, params: &JoinGroupParams) -> String {
    let error = coordinator
        .join_group(JoinGroupParams {
            member_id: String::new(),
            ..params.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(error.error, GroupError::MemberIdRequired);
    assert!(error.member_id.starts_with("client-"));
    error.member_id
}

fn spawn_join(
    coordinator: &Arc<GroupCoordinator>,
    params: JoinGroupParams,
) -> tokio::task::JoinHandle<Result<JoinGroupResult, JoinGroupError>> {
    let coordinator = Arc::clone(coordinator);
    tokio::spawn(async move { coordinator.join_group(params).await })
}

fn spawn_sync(
    coordinator: &Arc<GroupCoordinator>,
    member_id: &str,
    generation_id: i32,
    assignments: Vec<(String, Bytes)>,
) -> tokio::task::JoinHandle<Result<SyncGroupResult, GroupError>> {
    let coordinator = Arc::clone(coordinator);
    let params = sync_params(member_id, generation_id, assignments);
    tokio::spawn(async move { coordinator.sync_group(params).await })
}

fn sync_params(
    member_id: &str,
    generation_id: i32,
    assignments: Vec<(String, Bytes)>,
) -> SyncGroupParams {
    SyncGroupParams {
        group_id: GROUP.to_string(),
        member_id: member_id.to_string(),
        group_instance_id: None,
        generation_id,
        protocol_type: Some("consumer".to_string()),
        protocol_name: None,
        assignments,
    }
}

/// Joins `count` members one after another into a Stable group; returns (member ids, generation).
async fn stable_group(coordinator: &Arc<GroupCoordinator>, count: usize) -> (Vec<String>, i32) {
    let mut members: Vec<String> = Vec::new();
    let mut generation = 0;
    for _ in 0..count {
        let new_id = member_id(coordinator, &params("", &["range"])).await;
        let mut joins = vec![spawn_join(coordinator, params(&new_id, &["range"]))];
        tokio::time::sleep(Duration::from_millis(20)).await;
        for id in &members {
            assert_eq!(
                coordinator.heartbeat(GROUP, id, None, generation),
                Err(GroupError::RebalanceInProgress),
                "existing members learn about the rebalance from their heartbeat"
            );
            joins.push(spawn_join(coordinator, params(id, &["range"])));
        }
        members.push(new_id);
        let mut results = Vec::new();
        for join in joins {
            results.push(join.await.unwrap().unwrap());
        }
        generation = results[0].generation_id;
        assert!(results.iter().all(|r| r.generation_id == generation));
        let leader = results[0].leader_id.clone();
        let leader_result = results.iter().find(|r| r.member_id == leader).unwrap();
        assert_eq!(leader_result.members.len(), members.len());
        let assignments = members
            .iter()
            .map(|id| (id.clone(), Bytes::from(format!("assigned-{id}"))))
            .collect();
        let mut syncs: Vec<_> = members
            .iter()
            .filter(|id| **id != leader)
            .map(|id| spawn_sync(coordinator, id, generation, vec![]))
            .collect();
        syncs.push(spawn_sync(coordinator, &leader, generation, assignments));
        for sync in syncs {
            sync.await.unwrap().unwrap();
        }
    }
    (members, generation)
}

#[tokio::test]
async fn first_member_joins_after_member_id_required_and_leads() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, config());
    let id = member_id(&coordinator, &params("", &["range"])).await;
    let joined = coordinator
        .join_group(params(&id, &["range"]))
        .await
        .unwrap();
    assert_eq!(joined.generation_id, 1);
    assert_eq!(joined.leader_id, id);
    assert_eq!(joined.member_id, id);
    assert_eq!(joined.protocol_name.as_deref(), Some("range"));
    assert_eq!(joined.protocol_type.as_deref(), Some("consumer"));
    assert_eq!(
        joined.members,
        vec![JoinedMember {
            member_id: id.clone(),
            group_instance_id: None,
            metadata: Bytes::from("meta-range")
        }]
    );
    assert_eq!(
        coordinator.describe_group(GROUP).state,
        GroupState::CompletingRebalance
    );

    let synced = coordinator
        .sync_group(sync_params(&id, 1, vec![(id.clone(), Bytes::from("a"))]))
        .await
        .unwrap();
    assert_eq!(synced.assignment, Bytes::from("a"));
    assert_eq!(synced.protocol_name.as_deref(), Some("range"));
    assert_eq!(coordinator.heartbeat(GROUP, &id, None, 1), Ok(()));
    let description = coordinator.describe_group(GROUP);
    assert_eq!(description.state, GroupState::Stable);
    assert_eq!(description.protocol_name, "range");
    assert_eq!(description.members[0].assignment, Bytes::from("a"));
    assert_eq!(description.members[0].metadata, Bytes::from("meta-range"));
}

#[tokio::test]
async fn old_join_versions_get_a_member_id_without_the_extra_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, config());
    let joined = coordinator
        .join_group(JoinGroupParams {
            require_known_member_id: false,
            ..params("", &["range"])
        })
        .await
        .unwrap();
    assert_eq!(joined.generation_id, 1);
    assert!(joined.member_id.starts_with("client-"));
}

#[tokio::test]
async fn second_member_rebalances_both_into_the_next_generation() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, config());
    let (members, generation) = stable_group(&coordinator, 2).await;
    assert_eq!(generation, 2);
    let description = coordinator.describe_group(GROUP);
    assert_eq!(description.state, GroupState::Stable);
    assert_eq!(description.members.len(), 2);
    for member in &description.members {
        assert_eq!(
            member.assignment,
            Bytes::from(format!("assigned-{}", member.member_id))
        );
    }
    for id in &members {
        assert_eq!(coordinator.heartbeat(GROUP, id, None, generation), Ok(()));
        // A Stable member asking again for its assignment gets it at once.
        let again = coordinator
            .sync_group(sync_params(id, generation, vec![]))
            .await
            .unwrap();
        assert_eq!(again.assignment, Bytes::from(format!("assigned-{id}")));
    }
}

// Paused time: "still waiting after 30 ms" is then a fact about the coordinator, not about how
// busy the machine is (the clock only moves when every task is idle).
#[tokio::test(start_paused = true)]
async fn follower_sync_waits_for_the_leaders_assignments() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, config());
    let a = member_id(&coordinator, &params("", &["range"])).await;
    let b = member_id(&coordinator, &params("", &["range"])).await;
    // With two reserved ids the rebalance waits for both to join.
    let join_a = spawn_join(&coordinator, params(&a, &["range"]));
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(
        !join_a.is_finished(),
        "join must wait for the pending member"
    );
    let join_b = spawn_join(&coordinator, params(&b, &["range"]));
    let (ra, rb) = (
        join_a.await.unwrap().unwrap(),
        join_b.await.unwrap().unwrap(),
    );
    assert_eq!(ra.generation_id, 1);
    assert_eq!(rb.generation_id, 1);
    let (leader, follower) = if ra.leader_id == a { (a, b) } else { (b, a) };
    let follower_sync = spawn_sync(&coordinator, &follower, 1, vec![]);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(
        !follower_sync.is_finished(),
        "follower must wait for the leader"
    );
    let leader_sync = coordinator
        .sync_group(sync_params(
            &leader,
            1,
            vec![
                (leader.clone(), Bytes::from("L")),
                (follower.clone(), Bytes::from("F")),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(leader_sync.assignment, Bytes::from("L"));
    assert_eq!(
        follower_sync.await.unwrap().unwrap().assignment,
        Bytes::from("F")
    );
}

#[tokio::test]
async fn leaving_member_triggers_rebalance_of_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, config());
    let (members, generation) = stable_group(&coordinator, 3).await;
    assert_eq!(generation, 3);
    let results = coordinator
        .leave_group(
            GROUP,
            &[MemberIdentity {
                member_id: members[2].clone(),
                group_instance_id: None,
            }],
        )
        .unwrap();
    assert_eq!(results, vec![Ok(())]);
    assert_eq!(
        coordinator.describe_group(GROUP).state,
        GroupState::PreparingRebalance
    );
    assert_eq!(
        coordinator.heartbeat(GROUP, &members[0], None, generation),
        Err(GroupError::RebalanceInProgress)
    );
    assert_eq!(
        coordinator.heartbeat(GROUP, &members[2], None, generation),
        Err(GroupError::UnknownMemberId)
    );
    let join0 = spawn_join(&coordinator, params(&members[0], &["range"]));
    let join1 = spawn_join(&coordinator, params(&members[1], &["range"]));
    let (r0, r1) = (join0.await.unwrap().unwrap(), join1.await.unwrap().unwrap());
    assert_eq!(r0.generation_id, generation + 1);
    assert_eq!(r1.generation_id, generation + 1);
    let leader = if r0.leader_id == members[0] { &r0 } else { &r1 };
    assert_eq!(leader.members.len(), 2);
    // Leaving twice, or leaving an unknown group, is an unknown member.
    let again = coordinator
        .leave_group(
            GROUP,
            &[MemberIdentity {
                member_id: members[2].clone(),
                group_instance_id: None,
            }],
        )
        .unwrap();
    assert_eq!(again, vec![Err(GroupError::UnknownMemberId)]);
    let unknown = coordinator.leave_group(
        "nope",
        &[MemberIdentity {
            member_id: "x".into(),
            group_instance_id: None,
        }],
    );
    assert_eq!(unknown, Ok(vec![Err(GroupError::UnknownMemberId)]));
}

#[tokio::test]
async fn last_member_leaving_empties_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, config());
    let (members, generation) = stable_group(&coordinator, 1).await;
    coordinator
        .leave_group(
            GROUP,
            &[MemberIdentity {
                member_id: members[0].clone(),
                group_instance_id: None,
            }],
        )
        .unwrap();
    let description = coordinator.describe_group(GROUP);
    assert_eq!(description.state, GroupState::Empty);
    assert!(description.members.is_empty());
    // The next member starts a new generation.
    let id = member_id(&coordinator, &params("", &["range"])).await;
    let joined = coordinator
        .join_group(params(&id, &["range"]))
        .await
        .unwrap();
    assert!(joined.generation_id > generation);
}

#[tokio::test]
async fn expired_session_removes_member_and_rebalances() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, config());
    let short = |id: &str| JoinGroupParams {
        session_timeout_ms: 200,
        ..params(id, &["range"])
    };
    let a = member_id(&coordinator, &short("")).await;
    let b = member_id(&coordinator, &short("")).await;
    let join_a = spawn_join(&coordinator, short(&a));
    let join_b = spawn_join(&coordinator, short(&b));
    let (ra, _) = (
        join_a.await.unwrap().unwrap(),
        join_b.await.unwrap().unwrap(),
    );
    let sync_b = spawn_sync(&coordinator, &b, 1, vec![]);
    let leader = ra.leader_id.clone();
    coordinator
        .sync_group(sync_params(&leader, 1, vec![]))
        .await
        .unwrap();
    sync_b.await.unwrap().unwrap();

    // Only `a` keeps heartbeating; `b` goes silent.
    let mut saw_rebalance = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        match coordinator.heartbeat(GROUP, &a, None, 1) {
            Ok(()) => {}
            Err(GroupError::RebalanceInProgress) => {
                saw_rebalance = true;
                break;
            }
            Err(other) => panic!("unexpected heartbeat error {other:?}"),
        }
    }
    assert!(saw_rebalance, "b's session expiry should start a rebalance");
    let rejoined = coordinator.join_group(short(&a)).await.unwrap();
    assert_eq!(rejoined.generation_id, 2);
    assert_eq!(rejoined.members.len(), 1);
    assert_eq!(
        coordinator.heartbeat(GROUP, &b, None, 1),
        Err(GroupError::UnknownMemberId)
    );
}

#[tokio::test]
async fn member_that_misses_the_rebalance_timeout_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, config());
    let (members, generation) = stable_group(&coordinator, 2).await;
    // A third member joins; only the first old member rejoins, the second stays silent
    // (its session of 10 s outlives the rebalance timeout of 1 s).
    let c = member_id(&coordinator, &params("", &["range"])).await;
    let started = Instant::now();
    let join_c = spawn_join(&coordinator, params(&c, &["range"]));
    let join_a = spawn_join(&coordinator, params(&members[0], &["range"]));
    let (rc, ra) = (
        join_c.await.unwrap().unwrap(),
        join_a.await.unwrap().unwrap(),
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the join waits for the rebalance timeout"
    );
    assert_eq!(rc.generation_id, generation + 1);
    assert_eq!(ra.generation_id, generation + 1);
    let leader = if ra.leader_id == members[0] { &ra } else { &rc };
    let ids: Vec<&str> = leader
        .members
        .iter()
        .map(|m| m.member_id.as_str())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(!ids.contains(&members[1].as_str()));
    assert_eq!(
        coordinator.heartbeat(GROUP, &members[1], None, generation),
        Err(GroupError::UnknownMemberId)
    );
}

#[tokio::test]
async fn initial_delay_puts_members_starting_together_in_one_generation() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(
        &dir,
        GroupConfig {
            initial_rebalance_delay_ms: 200,
            ..config()
        },
    );
    let old = |id: &str| JoinGroupParams {
        require_known_member_id: false,
        ..params(id, &["range"])
    };
    let join_a = spawn_join(&coordinator, old(""));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let join_b = spawn_join(&coordinator, old(""));
    let (ra, rb) = (
        join_a.await.unwrap().unwrap(),
        join_b.await.unwrap().unwrap(),
    );
    assert_eq!(ra.generation_id, 1);
    assert_eq!(rb.generation_id, 1);
    assert_eq!(ra.leader_id, rb.leader_id);
    let leader = if ra.leader_id == ra.member_id { ra } else { rb };
    assert_eq!(leader.members.len(), 2);
}

#[tokio::test]
async fn join_rejects_invalid_requests() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, config());
    let error = |p| {
        let coordinator = Arc::clone(&coordinator);
        async move { coordinator.join_group(p).await.unwrap_err().error }
    };
    assert_eq!(
        error(JoinGroupParams {
            group_id: String::new(),
            ..params("", &["range"])
        })
        .await,
        GroupError::InvalidGroupId
    );
    assert_eq!(
        error(JoinGroupParams {
            session_timeout_ms: 5,
            ..params("", &["range"])
        })
        .await,
        GroupError::InvalidSessionTimeout
    );
    assert_eq!(
        error(JoinGroupParams {
            session_timeout_ms: 60_001,
            ..params("", &["range"])
        })
        .await,
        GroupError::InvalidSessionTimeout
    );
    assert_eq!(
        error(params("", &[])).await,
        GroupError::InconsistentGroupProtocol
    );
    assert_eq!(
        error(params("made-up-id", &["range"])).await,
        GroupError::UnknownMemberId
    );

    stable_group(&coordinator, 1).await;
    assert_eq!(
        error(JoinGroupParams {
            protocol_type: "connect".into(),
            ..params("", &["range"])
        })
        .await,
        GroupError::InconsistentGroupProtocol
    );
    assert_eq!(
        error(params("", &["roundrobin"])).await,
        GroupError::InconsistentGroupProtocol
    );
    assert_eq!(
        error(params("made-up-id", &["range"])).await,
        GroupError::UnknownMemberId
    );
}

#[tokio::test]
async fn sync_and_heartbeat_reject_stale_or_unknown_members() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, config());
    assert_eq!(
        coordinator.heartbeat("nope", "x", None, 1),
        Err(GroupError::UnknownMemberId)
    );
    assert_eq!(
        coordinator
            .sync_group(SyncGroupParams {
                group_id: "nope".into(),
                ..sync_params("x", 1, vec![])
            })
            .await,
        Err(GroupError::UnknownMemberId)
    );
    assert_eq!(
        coordinator.heartbeat("", "x", None, 1),
        Err(GroupError::InvalidGroupId)
    );

    let (members, generation) = stable_group(&coordinator, 1).await;
    let id = &members[0];
    assert_eq!(
        coordinator.heartbeat(GROUP, id, None, generation + 1),
        Err(GroupError::IllegalGeneration)
    );
    assert_eq!(
        coordinator.heartbeat(GROUP, "stranger", None, generation),
        Err(GroupError::UnknownMemberId)
    );
    assert_eq!(
        coordinator
            .sync_group(sync_params(id, generation - 1, vec![]))
            .await,
        Err(GroupError::IllegalGeneration)
    );
    assert_eq!(
        coordinator
            .sync_group(sync_params("stranger", generation, vec![]))
            .await,
        Err(GroupError::UnknownMemberId)
    );
    assert_eq!(
        coordinator
            .sync_group(SyncGroupParams {
                protocol_name: Some("roundrobin".into()),
                ..sync_params(id, generation, vec![])
            })
            .await,
        Err(GroupError::InconsistentGroupProtocol)
    );

    // A new member starts a rebalance: the old generation can no longer sync.
    let newcomer = member_id(&coordinator, &params("", &["range"])).await;
    let _join = spawn_join(&coordinator, params(&newcomer, &["range"]));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        coordinator
            .sync_group(sync_params(id, generation, vec![]))
            .await,
        Err(GroupError::RebalanceInProgress)
    );
}

#[tokio::test]
async fn new_rebalance_aborts_pending_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, config());
    let a = member_id(&coordinator, &params("", &["range"])).await;
    let b = member_id(&coordinator, &params("", &["range"])).await;
    let join_a = spawn_join(&coordinator, params(&a, &["range"]));
    let join_b = spawn_join(&coordinator, params(&b, &["range"]));
    let (ra, _) = (
        join_a.await.unwrap().unwrap(),
        join_b.await.unwrap().unwrap(),
    );
    let follower = if ra.leader_id == a {
        b.clone()
    } else {
        a.clone()
    };
    let follower_sync = spawn_sync(&coordinator, &follower, 1, vec![]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The leader leaves before sending assignments.
    coordinator
        .leave_group(
            GROUP,
            &[MemberIdentity {
                member_id: ra.leader_id.clone(),
                group_instance_id: None,
            }],
        )
        .unwrap();
    assert_eq!(
        follower_sync.await.unwrap(),
        Err(GroupError::RebalanceInProgress)
    );
}

#[tokio::test]
async fn protocol_is_one_every_member_supports() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, config());
    let a = member_id(&coordinator, &params("", &["cooperative-sticky", "range"])).await;
    let b = member_id(&coordinator, &params("", &["range"])).await;
    let join_a = spawn_join(&coordinator, params(&a, &["cooperative-sticky", "range"]));
    let join_b = spawn_join(&coordinator, params(&b, &["range"]));
    let (ra, rb) = (
        join_a.await.unwrap().unwrap(),
        join_b.await.unwrap().unwrap(),
    );
    assert_eq!(ra.protocol_name.as_deref(), Some("range"));
    assert_eq!(rb.protocol_name.as_deref(), Some("range"));
    let leader = if ra.leader_id == a { ra } else { rb };
    assert!(leader.members.iter().all(|m| m.metadata == "meta-range"));
}

#[tokio::test]
async fn group_size_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, config());
    for _ in 0..GROUP_SIZE_MAX {
        member_id(&coordinator, &params("", &["range"])).await;
    }
    let error = coordinator
        .join_group(params("", &["range"]))
        .await
        .unwrap_err();
    assert_eq!(error.error, GroupError::GroupMaxSizeReached);
}

#[tokio::test]
async fn static_member_restart_fences_its_old_member_id() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, config());
    let with_instance = |id: &str, protocol: &str| JoinGroupParams {
        group_instance_id: Some("instance-1".into()),
        ..params(id, &[protocol])
    };
    // Static members need no MEMBER_ID_REQUIRED round trip.
    let first = coordinator
        .join_group(with_instance("", "range"))
        .await
        .unwrap();
    assert!(first.member_id.starts_with("instance-1-"));
    coordinator
        .sync_group(sync_params(
            &first.member_id,
            1,
            vec![(first.member_id.clone(), Bytes::from_static(b"mine"))],
        ))
        .await
        .unwrap();

    // KIP-345: back with the same protocol while the group is stable, it takes its old place
    // and assignment in the same generation; a leader is told not to assign again.
    let second = coordinator
        .join_group(with_instance("", "range"))
        .await
        .unwrap();
    assert_ne!(second.member_id, first.member_id);
    assert_eq!(second.generation_id, 1);
    assert_eq!(second.leader_id, second.member_id);
    assert!(second.skip_assignment);
    let synced = coordinator
        .sync_group(sync_params(&second.member_id, 1, vec![]))
        .await
        .unwrap();
    assert_eq!(synced.assignment, Bytes::from_static(b"mine"));
    assert_eq!(
        coordinator.heartbeat(GROUP, &first.member_id, Some("instance-1"), 1),
        Err(GroupError::FencedInstanceId)
    );

    // Back with a protocol the group's members do not share: refused, as Kafka refuses it.
    let third = coordinator
        .join_group(with_instance("", "roundrobin"))
        .await
        .unwrap_err();
    assert_eq!(third.error, GroupError::InconsistentGroupProtocol);
}

fn offset(value: i64, metadata: &str) -> OffsetAndMetadata {
    OffsetAndMetadata {
        offset: value,
        leader_epoch: 4,
        metadata: metadata.to_string(),
        commit_timestamp_ms: now_ms(),
    }
}

fn tp(topic: &str, partition: i32) -> TopicPartition {
    TopicPartition {
        topic: topic.to_string(),
        partition,
    }
}

#[tokio::test]
async fn offset_commit_is_validated_against_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, config());
    // No live group: a simple (standalone) commit works, a generation-bound one does not.
    assert_eq!(
        coordinator
            .commit_offsets("solo", "", None, -1, vec![(tp("t", 0), offset(5, ""))])
            .await,
        Ok(vec![Ok(())])
    );
    assert_eq!(
        coordinator
            .commit_offsets("solo", "m", None, 3, vec![(tp("t", 0), offset(6, ""))])
            .await,
        Err(GroupError::IllegalGeneration)
    );

    // A two-member group in CompletingRebalance: members must wait for their assignment.
    let a = member_id(&coordinator, &params("", &["range"])).await;
    let b = member_id(&coordinator, &params("", &["range"])).await;
    let join_a = spawn_join(&coordinator, params(&a, &["range"]));
    let join_b = spawn_join(&coordinator, params(&b, &["range"]));
    let (ra, _) = (
        join_a.await.unwrap().unwrap(),
        join_b.await.unwrap().unwrap(),
    );
    let commit = |member: &str, generation: i32| {
        let coordinator = Arc::clone(&coordinator);
        let member = member.to_string();
        async move {
            coordinator
                .commit_offsets(
                    GROUP,
                    &member,
                    None,
                    generation,
                    vec![(tp("t", 0), offset(7, "x"))],
                )
                .await
        }
    };
    assert_eq!(commit(&a, 1).await, Err(GroupError::RebalanceInProgress));
    let follower = if ra.leader_id == a {
        b.clone()
    } else {
        a.clone()
    };
    let follower_sync = spawn_sync(&coordinator, &follower, 1, vec![]);
    coordinator
        .sync_group(sync_params(&ra.leader_id, 1, vec![]))
        .await
        .unwrap();
    follower_sync.await.unwrap().unwrap();

    assert_eq!(commit(&a, 1).await, Ok(vec![Ok(())]));
    assert_eq!(commit(&a, 2).await, Err(GroupError::IllegalGeneration));
    assert_eq!(
        commit("stranger", 1).await,
        Err(GroupError::UnknownMemberId)
    );
    assert_eq!(
        commit("", -1).await,
        Err(GroupError::UnknownMemberId),
        "simple commits are for empty groups only"
    );

    let too_large = "m".repeat(OFFSET_METADATA_BYTES_MAX + 1);
    let results = coordinator
        .commit_offsets(
            GROUP,
            &a,
            None,
            1,
            vec![
                (tp("t", 1), offset(1, &too_large)),
                (tp("t", 2), offset(2, "ok")),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        results,
        vec![Err(GroupError::OffsetMetadataTooLarge), Ok(())]
    );
    let fetched = coordinator.fetch_offsets(GROUP, Some(&[tp("t", 1), tp("t", 2)]));
    assert_eq!(fetched[0].1, None);
    assert_eq!(fetched[1].1.as_ref().map(|o| o.offset), Some(2));

    // Commits are still allowed while a rebalance is being prepared (onPartitionsRevoked).
    let newcomer = member_id(&coordinator, &params("", &["range"])).await;
    let _join = spawn_join(&coordinator, params(&newcomer, &["range"]));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(commit(&a, 1).await, Ok(vec![Ok(())]));
}

#[tokio::test]
async fn committed_offsets_survive_coordinator_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let coordinator = open(&dir, config());
        let (members, generation) = stable_group(&coordinator, 1).await;
        coordinator
            .commit_offsets(
                GROUP,
                &members[0],
                None,
                generation,
                vec![
                    (tp("t", 0), offset(10, "meta")),
                    (tp("t", 1), offset(20, "")),
                ],
            )
            .await
            .unwrap();
        coordinator
            .commit_offsets(
                GROUP,
                &members[0],
                None,
                generation,
                vec![(tp("t", 0), offset(11, "newer"))],
            )
            .await
            .unwrap();
        coordinator.shutdown();
    }
    let coordinator = open(&dir, config());
    let all = coordinator.fetch_offsets(GROUP, None);
    let summary: Vec<(TopicPartition, i64, String, i32)> = all
        .into_iter()
        .map(|(p, o)| {
            let o = o.unwrap();
            (p, o.offset, o.metadata, o.leader_epoch)
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (tp("t", 0), 11, "newer".to_string(), 4),
            (tp("t", 1), 20, String::new(), 4)
        ]
    );
    assert_eq!(
        coordinator.fetch_offsets(GROUP, Some(&[tp("t", 9)])),
        vec![(tp("t", 9), None)]
    );
    // Membership is not persisted: the old member must rejoin.
    assert_eq!(
        coordinator.heartbeat(GROUP, "anyone", None, 1),
        Err(GroupError::UnknownMemberId)
    );
    let listed = coordinator.list_groups();
    assert_eq!(
        listed,
        vec![GroupOverview {
            group_id: GROUP.into(),
            protocol_type: String::new(),
            state: GroupState::Empty.name(),
            group_type: super::GROUP_TYPE_CLASSIC
        }]
    );
}

#[tokio::test]
async fn delete_group_removes_offsets_durably_and_refuses_live_groups() {
    let dir = tempfile::tempdir().unwrap();
    {
        let coordinator = open(&dir, config());
        assert_eq!(
            coordinator.delete_group("unknown").await,
            Err(GroupError::GroupIdNotFound)
        );
        coordinator
            .commit_offsets(
                "standalone",
                "",
                None,
                -1,
                vec![(tp("t", 0), offset(3, ""))],
            )
            .await
            .unwrap();
        coordinator
            .commit_offsets("kept", "", None, -1, vec![(tp("t", 0), offset(4, ""))])
            .await
            .unwrap();
        let (members, generation) = stable_group(&coordinator, 1).await;
        coordinator
            .commit_offsets(
                GROUP,
                &members[0],
                None,
                generation,
                vec![(tp("t", 0), offset(5, ""))],
            )
            .await
            .unwrap();
        assert_eq!(
            coordinator.delete_group(GROUP).await,
            Err(GroupError::NonEmptyGroup)
        );
        coordinator
            .leave_group(
                GROUP,
                &[MemberIdentity {
                    member_id: members[0].clone(),
                    group_instance_id: None,
                }],
            )
            .unwrap();
        assert_eq!(coordinator.delete_group(GROUP).await, Ok(()));
        assert_eq!(coordinator.delete_group("standalone").await, Ok(()));
        assert_eq!(
            coordinator.delete_group("standalone").await,
            Err(GroupError::GroupIdNotFound)
        );
        assert_eq!(coordinator.describe_group(GROUP).state, GroupState::Dead);
    }
    let coordinator = open(&dir, config());
    assert_eq!(coordinator.fetch_offsets(GROUP, None), vec![]);
    assert_eq!(coordinator.fetch_offsets("standalone", None), vec![]);
    assert_eq!(coordinator.fetch_offsets("kept", None).len(), 1);
    let listed: Vec<String> = coordinator
        .list_groups()
        .into_iter()
        .map(|g| g.group_id)
        .collect();
    assert_eq!(listed, vec!["kept".to_string()]);
}

#[tokio::test]
async fn list_and_describe_report_states_and_members() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = open(&dir, config());
    assert_eq!(coordinator.describe_group("nope").state, GroupState::Dead);
    let (members, _) = stable_group(&coordinator, 2).await;
    let listed = coordinator.list_groups();
    assert_eq!(
        listed,
        vec![GroupOverview {
            group_id: GROUP.into(),
            protocol_type: "consumer".into(),
            state: GroupState::Stable.name(),
            group_type: super::GROUP_TYPE_CLASSIC
        }]
    );
    let description = coordinator.describe_group(GROUP);
    assert_eq!(description.protocol_type, "consumer");
    let mut described: Vec<String> = description
        .members
        .iter()
        .map(|m| m.member_id.clone())
        .collect();
    described.sort();
    let mut expected = members.clone();
    expected.sort();
    assert_eq!(described, expected);
    assert!(description
        .members
        .iter()
        .all(|m| m.client_id == "client" && m.client_host == "/127.0.0.1"));
}

/// A DeleteGroups abandoned while its tombstones are being synced (the client went away) must
/// not leave a Dead group behind: before, every later join got COORDINATOR_NOT_AVAILABLE
/// until a restart, and the group's memory was never freed.
#[test]
fn an_abandoned_delete_group_leaves_no_dead_group() {
    // One blocking thread, which the test occupies, so the delete's sync cannot finish before
    // the delete is abandoned.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(1)
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let coordinator = open(&dir, config());
        let (members, generation) = stable_group(&coordinator, 1).await;
        coordinator
            .commit_offsets(
                GROUP,
                &members[0],
                None,
                generation,
                vec![(tp("t", 0), offset(5, ""))],
            )
            .await
            .unwrap();
        coordinator
            .leave_group(
                GROUP,
                &[MemberIdentity {
                    member_id: members[0].clone(),
                    group_instance_id: None,
                }],
            )
            .unwrap();
        assert!(coordinator.groups.lock().get(GROUP).is_some());
        let (release, released) = std::sync::mpsc::channel::<()>();
        let blocker = tokio::task::spawn_blocking(move || {
            let _ = released.recv();
        });
        // Polled once (the tombstones are appended, their sync is queued), then dropped.
        let abandoned = tokio::time::timeout(Duration::ZERO, coordinator.delete_group(GROUP)).await;
        assert!(abandoned.is_err(), "the delete finished in its first poll");
        release.send(()).unwrap();
        blocker.await.unwrap();
        assert!(coordinator.groups.lock().get(GROUP).is_none());
        let (members, _) = stable_group(&coordinator, 1).await;
        assert_eq!(members.len(), 1);
    });
}
