//! The partition log as a Raft log: recovery, truncation, durability of acknowledged appends on
//! a simulated disk, the high watermark following apply, and snapshots.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogReader, RaftSnapshotBuilder,
    Vote,
};
use sluice_cluster::partition::{
    self, PartitionEntry, PartitionLogStore, PartitionRaft, PartitionStateMachine,
};
use sluice_cluster::{NodeAddress, NodeId};
use sluice_log::{
    BatchHeader, LogConfig, PartitionLog, RealDisk, Record, RecordBatchBuilder, SimDisk, Storage,
};

/// The leader of each term in these tests: node `term % 3 + 1`, so a log id that lost its
/// leader's node id would not compare equal.
fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, leader_of(term)), index)
}

fn leader_of(term: u64) -> NodeId {
    term % 3 + 1
}

/// A producer's batch of `records` records whose values name `tag`.
fn producer_batch(tag: &str, records: usize) -> Bytes {
    let mut builder = RecordBatchBuilder::new();
    for n in 0..records {
        builder.push(Record {
            offset: 0,
            timestamp: 1_700_000_000_000 + n as i64,
            key: None,
            value: Some(format!("{tag}-{n}").into_bytes()),
            headers: Vec::new(),
        });
    }
    Bytes::from(builder.build())
}

fn normal(term: u64, index: u64, tag: &str, records: usize) -> Entry<PartitionRaft> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(
            PartitionEntry::new(producer_batch(tag, records)).expect("valid batch"),
        ),
    }
}

fn blank(term: u64, index: u64) -> Entry<PartitionRaft> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Blank,
    }
}

fn membership(term: u64, index: u64, voters: &[NodeId]) -> Entry<PartitionRaft> {
    let voters: BTreeSet<NodeId> = voters.iter().copied().collect();
    let nodes: std::collections::BTreeMap<NodeId, NodeAddress> = voters
        .iter()
        .map(|&id| {
            (
                id,
                NodeAddress {
                    cluster_addr: format!("127.0.0.{id}:9093"),
                    kafka_addr: format!("127.0.0.{id}:9092"),
                },
            )
        })
        .collect();
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)),
    }
}

fn open(
    storage: Arc<dyn Storage>,
    dir: &Path,
) -> (PartitionLogStore, PartitionStateMachine, Arc<PartitionLog>) {
    partition::open(storage, dir, LogConfig::default()).expect("open partition")
}

/// The records of a normal entry's batch, as a consumer would decode them.
fn values(entry: &Entry<PartitionRaft>) -> Vec<String> {
    match &entry.payload {
        EntryPayload::Normal(normal) => sluice_log::decode_records(&normal.batch)
            .expect("decodable")
            .into_iter()
            .map(|r| String::from_utf8(r.value.unwrap_or_default()).unwrap_or_default())
            .collect(),
        _ => Vec::new(),
    }
}

fn base_offset(entry: &Entry<PartitionRaft>) -> Option<i64> {
    match &entry.payload {
        EntryPayload::Normal(normal) => BatchHeader::parse(&normal.batch)
            .ok()
            .map(|h| h.base_offset),
        _ => None,
    }
}

/// Term 1: blank, membership; term 2: blank, batches of 3 and 2 records. As openraft writes
/// them, every term starts with its leader's blank entry. Offsets: 0, 1, 2, 3..=5, 6..=7.
fn five_entries() -> Vec<Entry<PartitionRaft>> {
    vec![
        blank(1, 0),
        membership(1, 1, &[1, 2, 3]),
        blank(2, 2),
        normal(2, 3, "a", 3),
        normal(2, 4, "b", 2),
    ]
}

#[tokio::test]
async fn entries_read_back_as_appended_with_offsets_and_terms() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _sm, log) = open(Arc::new(RealDisk), dir.path());
    store.blocking_append(five_entries()).await.unwrap();

    let entries = store.try_get_log_entries(0..5).await.unwrap();
    let ids: Vec<LogId<NodeId>> = entries.iter().map(|e| e.log_id).collect();
    assert_eq!(
        ids,
        vec![
            log_id(1, 0),
            log_id(1, 1),
            log_id(2, 2),
            log_id(2, 3),
            log_id(2, 4)
        ]
    );
    assert!(matches!(entries[0].payload, EntryPayload::Blank));
    match &entries[1].payload {
        EntryPayload::Membership(m) => assert_eq!(
            m,
            match &five_entries()[1].payload {
                EntryPayload::Membership(m) => m,
                _ => unreachable!(),
            }
        ),
        other => panic!("expected membership, got {other:?}"),
    }
    // Control batches take one offset each; the batches follow at 3 and 6.
    assert_eq!(
        entries.iter().map(base_offset).collect::<Vec<_>>(),
        vec![None, None, None, Some(3), Some(6)]
    );
    assert_eq!(values(&entries[3]), vec!["a-0", "a-1", "a-2"]);
    assert_eq!(log.log_end_offset(), 8);
    // Every batch carries its term as its leader epoch.
    let epochs: Vec<i32> = log
        .batch_headers_from(0)
        .unwrap()
        .iter()
        .map(|h| h.partition_leader_epoch)
        .collect();
    assert_eq!(epochs, vec![1, 1, 2, 2, 2]);
    // Blank and membership are control batches (consumers skip them).
    let control: Vec<bool> = log
        .batch_headers_from(0)
        .unwrap()
        .iter()
        .map(|h| h.is_control())
        .collect();
    assert_eq!(control, vec![true, true, true, false, false]);
    assert_eq!(store.view().term_history(), vec![(1, 0), (2, 2)]);
    assert_eq!(store.view().end_offset_for_epoch(1), (1, 2));
    assert_eq!(store.view().end_offset_for_epoch(2), (2, 8));
}

#[tokio::test]
async fn high_watermark_follows_apply_not_durability() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, mut sm, log) = open(Arc::new(RealDisk), dir.path());
    let mut progress = sm.progress();
    store.blocking_append(five_entries()).await.unwrap();
    // Durable but not committed: consumers see nothing.
    assert_eq!(log.durable_offset(), 8);
    assert_eq!(log.high_watermark(), 0);
    assert!(log.read(0, 1 << 20).unwrap().records.is_empty());

    let committed = store.try_get_log_entries(0..4).await.unwrap();
    let applied = sm.apply(committed).await.unwrap();
    let offsets: Vec<(i64, i64)> = applied
        .iter()
        .map(|a| (a.base_offset, a.last_offset))
        .collect();
    assert_eq!(offsets, vec![(0, 0), (1, 1), (2, 2), (3, 5)]);
    assert_eq!(log.high_watermark(), 6);
    assert!(progress.has_changed().unwrap());
    let seen = *progress.borrow_and_update();
    assert_eq!(seen.high_watermark, 6);
    assert_eq!(seen.last_applied, Some(log_id(2, 3)));
    // A consumer reads up to the high watermark, not the durable end.
    let read = log.read(0, 1 << 20).unwrap();
    let headers = sluice_log::validate_batches(&read.records).unwrap();
    assert_eq!(headers.last().map(|h| h.last_offset()), Some(5));
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(2, 3)));
}

#[tokio::test]
async fn restart_recovers_log_state_vote_committed_and_applied() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t-0");
    let before = {
        let (mut store, mut sm, _log) = open(Arc::new(RealDisk), &path);
        store.blocking_append(five_entries()).await.unwrap();
        store.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        store.save_committed(Some(log_id(2, 3))).await.unwrap();
        let committed = store.try_get_log_entries(0..3).await.unwrap();
        sm.apply(committed).await.unwrap();
        // The snapshot record is what survives of the applied state.
        let snapshot = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(2, 2)));
        store.purge(log_id(1, 1)).await.unwrap();
        store.try_get_log_entries(0..5).await.unwrap()
    };

    let (mut store, mut sm, log) = open(Arc::new(RealDisk), &path);
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1)));
    assert_eq!(state.last_log_id, Some(log_id(2, 4)));
    assert_eq!(
        store.read_vote().await.unwrap(),
        Some(Vote::new_committed(2, 1))
    );
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(2, 3)));
    assert_eq!(store.try_get_log_entries(0..5).await.unwrap(), before);
    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(2, 2)));
    assert_eq!(membership.log_id(), &Some(log_id(1, 1)));
    // Applied through entry 2 (offset 2): the high watermark is back at 3.
    assert_eq!(log.high_watermark(), 3);
    assert_eq!(sm.progress().borrow().high_watermark, 3);
    // Purge is not retention: the purged batches stay readable for consumers.
    assert_eq!(log.log_start_offset(), 0);
    assert_eq!(store.view().term_history(), vec![(1, 0), (2, 2)]);
    // Appends continue at the next index and offset.
    store
        .blocking_append([blank(3, 5), normal(3, 6, "d", 1)])
        .await
        .unwrap();
    let last = store.try_get_log_entries(6..7).await.unwrap();
    assert_eq!(base_offset(&last[0]), Some(9));
}

#[tokio::test]
async fn truncate_then_reappend_gives_matching_offsets_and_terms() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t-0");
    let (mut store, _sm, log) = open(Arc::new(RealDisk), &path);
    store.blocking_append(five_entries()).await.unwrap();
    // A new leader of term 3 overwrites entries 3 and 4.
    store.truncate(log_id(2, 3)).await.unwrap();
    assert_eq!(log.log_end_offset(), 3, "entries 3.. started at offset 3");
    assert_eq!(
        store.get_log_state().await.unwrap().last_log_id,
        Some(log_id(2, 2))
    );
    store
        .blocking_append([blank(3, 3), normal(3, 4, "x", 2)])
        .await
        .unwrap();
    let entries = store.try_get_log_entries(2..5).await.unwrap();
    assert_eq!(
        entries.iter().map(|e| e.log_id).collect::<Vec<_>>(),
        vec![log_id(2, 2), log_id(3, 3), log_id(3, 4)]
    );
    assert_eq!(
        entries.iter().map(base_offset).collect::<Vec<_>>(),
        vec![None, None, Some(4)]
    );
    assert_eq!(values(&entries[2]), vec!["x-0", "x-1"]);
    assert_eq!(log.log_end_offset(), 6);
    // Epoch 2 now ends where term 3 begins.
    assert_eq!(store.view().term_history(), vec![(1, 0), (2, 2), (3, 3)]);
    assert_eq!(store.view().end_offset_for_epoch(2), (2, 3));
    drop((store, log));

    // The same after a restart.
    let (mut store, _sm, _log) = open(Arc::new(RealDisk), &path);
    assert_eq!(store.try_get_log_entries(2..5).await.unwrap(), entries);
    assert_eq!(store.view().term_history(), vec![(1, 0), (2, 2), (3, 3)]);
}

#[tokio::test]
async fn power_cut_loses_only_entries_not_acknowledged() {
    let path = Path::new("/data/t-0");
    let mut seeds_losing_unacknowledged = 0;
    for seed in 0..16 {
        let disk = SimDisk::new(seed);
        let (acknowledged, unacknowledged) = {
            let (mut store, _sm, _log) = open(disk.storage(), path);
            store.blocking_append(five_entries()).await.unwrap();
            store.save_vote(&Vote::new(2, 1)).await.unwrap();
            // Written, callback not yet run: no promise was made about these.
            store
                .write_entries(vec![
                    normal(2, 5, "unsynced", 50),
                    normal(2, 6, "unsynced", 50),
                ])
                .unwrap();
            let all = store.try_get_log_entries(0..).await.unwrap();
            assert_eq!(all.len(), 7);
            (all[..5].to_vec(), all[5..].to_vec())
        };
        disk.power_cut();

        let (mut store, _sm, log) = open(disk.storage(), path);
        let recovered = store.try_get_log_entries(0..).await.unwrap();
        assert_eq!(
            recovered[..5],
            acknowledged,
            "seed {seed}: an acknowledged entry was lost"
        );
        // Unsynced bytes may survive (the disk wrote them anyway), but only as whole entries.
        let survivors = &recovered[5..];
        assert_eq!(survivors, &unacknowledged[..survivors.len()], "seed {seed}");
        if survivors.is_empty() {
            seeds_losing_unacknowledged += 1;
        }
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
        // The log continues where the recovered entries end.
        let next = recovered.len() as u64;
        let end = log.log_end_offset();
        store
            .blocking_append([normal(2, next, "again", 1)])
            .await
            .unwrap();
        let appended = store.try_get_log_entries(next..next + 1).await.unwrap();
        assert_eq!(base_offset(&appended[0]), Some(end), "seed {seed}");
    }
    assert!(
        seeds_losing_unacknowledged > 0,
        "the simulated power cut never lost unsynced entries: the test proves nothing"
    );
}

#[tokio::test]
async fn failed_fsync_never_reports_success() {
    let disk = SimDisk::new(11);
    let path = Path::new("/data/t-0");
    {
        let (mut store, _sm, log) = open(disk.storage(), path);
        store
            .blocking_append(five_entries()[..2].to_vec())
            .await
            .unwrap();
        disk.fail_next_sync();
        let failed = store.blocking_append([normal(1, 2, "unsynced", 3)]).await;
        assert!(failed.is_err(), "a failed fsync was reported as success");
        assert!(log.is_offline());
        // Offline: later appends fail too, they are never acknowledged.
        assert!(store
            .blocking_append([normal(1, 3, "later", 1)])
            .await
            .is_err());
    }
    disk.power_cut();
    let (mut store, _sm, _log) = open(disk.storage(), path);
    let entries = store.try_get_log_entries(0..).await.unwrap();
    assert_eq!(
        entries.iter().map(|e| e.log_id).collect::<Vec<_>>(),
        vec![log_id(1, 0), log_id(1, 1)],
        "only what was acknowledged is there"
    );
}

#[tokio::test]
async fn vote_survives_a_power_cut_once_saved() {
    let disk = SimDisk::new(3);
    let path = Path::new("/data/t-0");
    {
        let (mut store, _sm, _log) = open(disk.storage(), path);
        store.save_vote(&Vote::new(5, 2)).await.unwrap();
    }
    disk.power_cut();
    let (mut store, _sm, _log) = open(disk.storage(), path);
    assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(5, 2)));
}

#[tokio::test]
async fn committed_hint_never_passes_the_recovered_log() {
    let path = Path::new("/data/t-0");
    for seed in 0..8 {
        let disk = SimDisk::new(seed);
        {
            let (mut store, _sm, _log) = open(disk.storage(), path);
            store
                .blocking_append(five_entries()[..3].to_vec())
                .await
                .unwrap();
            // A follower may learn that entries are committed before its own copy is synced.
            store.write_entries(five_entries()[3..].to_vec()).unwrap();
            store.save_committed(Some(log_id(2, 4))).await.unwrap();
        }
        disk.power_cut();
        let (mut store, _sm, _log) = open(disk.storage(), path);
        let last = store.get_log_state().await.unwrap().last_log_id;
        let committed = store.read_committed().await.unwrap();
        assert!(
            committed <= last,
            "seed {seed}: committed {committed:?} past the log {last:?}"
        );
        if let Some(committed) = committed {
            // openraft re-applies up to it at start: every entry must be there.
            let entries = store
                .try_get_log_entries(0..=committed.index)
                .await
                .unwrap();
            assert_eq!(entries.len() as u64, committed.index + 1, "seed {seed}");
        }
    }
}

#[tokio::test]
async fn snapshot_install_gives_the_follower_the_leaders_batches_at_the_same_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let (mut leader, mut leader_sm, leader_log) = open(Arc::new(RealDisk), &dir.path().join("l"));
    leader.blocking_append(five_entries()).await.unwrap();
    let committed = leader.try_get_log_entries(0..5).await.unwrap();
    leader_sm.apply(committed).await.unwrap();
    let snapshot = leader_sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    // The leader no longer keeps the entries for Raft; a follower far behind needs the snapshot.
    leader.purge(log_id(2, 4)).await.unwrap();
    leader
        .blocking_append([blank(3, 5), normal(3, 6, "after", 2)])
        .await
        .unwrap();

    // The follower has a stale, conflicting log.
    let (mut follower, mut follower_sm, follower_log) =
        open(Arc::new(RealDisk), &dir.path().join("f"));
    follower
        .blocking_append([blank(1, 0), normal(1, 1, "stale", 7)])
        .await
        .unwrap();
    let current = leader_sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snapshot.meta);
    let mut receiving = follower_sm.begin_receiving_snapshot().await.unwrap();
    *receiving = *current.snapshot;
    follower_sm
        .install_snapshot(&current.meta, receiving)
        .await
        .unwrap();
    follower.purge(log_id(2, 4)).await.unwrap();

    assert_eq!(
        follower_sm.applied_state().await.unwrap().0,
        Some(log_id(2, 4))
    );
    // Consumers of the follower see the leader's batches at the leader's offsets.
    assert_eq!(follower_log.high_watermark(), 8);
    assert_eq!(
        follower_log.read(0, 1 << 20).unwrap().records,
        leader_log.read(0, 1 << 20).unwrap().records
    );
    assert_eq!(follower.view().term_history(), vec![(1, 0), (2, 2)]);
    // Replication continues after the snapshot, at the same offset as on the leader.
    let next = leader.try_get_log_entries(5..7).await.unwrap();
    follower.blocking_append(next.clone()).await.unwrap();
    assert_eq!(
        follower.try_get_log_entries(5..7).await.unwrap(),
        next,
        "same entry, same offset"
    );
}

#[test]
fn entry_refuses_more_than_one_batch_and_reserved_control_batches() {
    let mut two = producer_batch("a", 1).to_vec();
    two.extend_from_slice(&producer_batch("b", 1));
    assert!(PartitionEntry::new(Bytes::from(two)).is_err());
    let mut corrupt = producer_batch("a", 2).to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xFF;
    assert!(PartitionEntry::new(Bytes::from(corrupt)).is_err());
    let payload: EntryPayload<PartitionRaft> = EntryPayload::Blank;
    let control = partition::control::encode_payload(&payload, 1).unwrap();
    assert!(PartitionEntry::new(Bytes::from(control)).is_err());
    // A producer cannot move the log start by sending DeleteRecords' control batch.
    let log_start = PartitionEntry::log_start(3, 1).batch;
    assert!(PartitionEntry::new(log_start).is_err());
}

#[test]
fn only_entries_made_here_count_as_crc_checked() {
    let batch = producer_batch("a", 2);
    let made = PartitionEntry::new(batch.clone()).unwrap();
    assert!(made.crc_checked());
    let header = sluice_log::validate_batches(&batch).unwrap()[0];
    assert!(PartitionEntry::validated(batch.clone(), &header)
        .unwrap()
        .crc_checked());
    assert!(PartitionEntry::log_start(3, 1).crc_checked());
    // What arrives or is read back is not, and the flag is not sent.
    let arrived = PartitionEntry::unchecked(batch.clone());
    assert!(!arrived.crc_checked());
    let decoded: PartitionEntry =
        serde_json::from_slice(&serde_json::to_vec(&made).unwrap()).unwrap();
    assert!(!decoded.crc_checked());
    assert_eq!(decoded, made, "equal bytes are equal entries");
    // A group is checked only when all its members are.
    let two = || PartitionEntry::new(producer_batch("b", 1)).unwrap();
    assert!(PartitionEntry::group(vec![made.clone(), two()], 1).crc_checked());
    assert!(!PartitionEntry::group(vec![arrived, two()], 1).crc_checked());
    // `validated` still refuses a header that is not the batch's, and reserved controls.
    let mut two_batches = batch.to_vec();
    two_batches.extend_from_slice(&batch);
    assert!(PartitionEntry::validated(Bytes::from(two_batches), &header).is_err());
    let blank = partition::control::encode_payload(&EntryPayload::Blank, 1).unwrap();
    let blank_header = sluice_log::validate_batches(&blank).unwrap()[0];
    assert!(PartitionEntry::validated(Bytes::from(blank), &blank_header).is_err());
}

/// A follower's append checks what it received: a batch damaged on the way is refused and
/// nothing is written.
#[tokio::test]
async fn a_received_entry_with_a_bad_crc_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _sm, log) = open(Arc::new(RealDisk), dir.path());
    store.blocking_append(vec![blank(2, 0)]).await.unwrap();
    let end = log.log_end_offset();
    let mut damaged = producer_batch("a", 2).to_vec();
    let last = damaged.len() - 1;
    damaged[last] ^= 0xFF;
    let received = Entry {
        log_id: log_id(2, 1),
        payload: EntryPayload::Normal(PartitionEntry::unchecked(Bytes::from(damaged))),
    };
    assert!(store.write_entries(vec![received]).is_err());
    assert_eq!(log.log_end_offset(), end);
    // The same batch undamaged is stored.
    let intact = Entry {
        log_id: log_id(2, 1),
        payload: EntryPayload::Normal(PartitionEntry::unchecked(producer_batch("a", 2))),
    };
    store.blocking_append(vec![intact]).await.unwrap();
    assert_eq!(log.log_end_offset(), end + 2);
}

#[tokio::test]
async fn a_log_start_entry_hides_the_records_below_it_and_raft_keeps_them_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t-0");
    let mut entries = five_entries();
    entries.push(Entry {
        log_id: log_id(2, 5),
        payload: EntryPayload::Normal(PartitionEntry::log_start(6, 3)),
    });
    {
        let (mut store, mut sm, log) = open(Arc::new(RealDisk), &path);
        store.blocking_append(entries).await.unwrap();
        let committed = store.try_get_log_entries(0..6).await.unwrap();
        let applied = sm.apply(committed).await.unwrap();
        // The entry takes an offset of its own, as any control batch.
        assert_eq!(applied[5].base_offset, 8);
        assert_eq!(log.log_start_offset(), 6);
        assert!(log.read(3, 1 << 20).is_err());
        let read = log.read(6, 1 << 20).unwrap();
        let headers = sluice_log::validate_batches(&read.records).unwrap();
        assert_eq!(headers[0].base_offset, 6);
    }
    // Raft's log still starts at the first stored batch: nothing was purged.
    let (store, _sm, log) = open(Arc::new(RealDisk), &path);
    assert_eq!(log.log_start_offset(), 6);
    let mut store = store;
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(2, 5)));
    let all = store.try_get_log_entries(0..6).await.unwrap();
    assert_eq!(base_offset(&all[3]), Some(3));
}

#[tokio::test]
async fn interrupted_snapshot_install_refuses_to_open() {
    let disk = SimDisk::new(5);
    let leader_dir = Path::new("/data/leader");
    let follower_dir = Path::new("/data/follower");
    let (mut leader, mut leader_sm, _) = open(disk.storage(), leader_dir);
    leader.blocking_append(five_entries()).await.unwrap();
    let committed = leader.try_get_log_entries(0..5).await.unwrap();
    leader_sm.apply(committed).await.unwrap();
    leader_sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    // The data is read when a follower needs it, as openraft asks for it.
    let snapshot = leader_sm.get_current_snapshot().await.unwrap().unwrap();
    {
        let (mut follower, mut follower_sm, _) = open(disk.storage(), follower_dir);
        follower.blocking_append([blank(1, 0)]).await.unwrap();
        // The disk fills up while the follower's log is being replaced: room for the install
        // marker, not for the leader's batches.
        let marker_bytes = serde_json::to_vec(&snapshot.meta).unwrap().len() as u64;
        disk.set_space_bytes_max(Some(
            bytes_used(&disk.storage(), Path::new("/data")) + marker_bytes + 64,
        ));
        let mut receiving = follower_sm.begin_receiving_snapshot().await.unwrap();
        *receiving = *snapshot.snapshot;
        assert!(follower_sm
            .install_snapshot(&snapshot.meta, receiving)
            .await
            .is_err());
    }
    disk.power_cut();
    // Half replaced, the log is neither the old one nor the leader's: the replica must be
    // rebuilt rather than serve it.
    assert!(matches!(
        partition::open(disk.storage(), follower_dir, LogConfig::default()),
        Err(partition::PartitionRaftError::InterruptedSnapshotInstall { .. })
    ));
}

/// Bytes in every file under `dir`.
fn bytes_used(storage: &Arc<dyn Storage>, dir: &Path) -> u64 {
    let mut total = 0;
    for name in storage.read_dir(dir).unwrap() {
        let path = dir.join(name);
        match storage.open(&path) {
            Ok(file) => total += file.len().unwrap(),
            Err(_) => total += bytes_used(storage, &path),
        }
    }
    total
}

#[tokio::test]
async fn replication_reads_stop_at_the_byte_budget_but_always_give_one_entry() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        batch_bytes_max: 8 << 20,
        ..LogConfig::default()
    };
    let (mut store, _sm, _log) =
        partition::open(Arc::new(RealDisk), dir.path(), config).expect("open partition");
    // Batches of a third of the bound: a read takes two or three of them, not all eight; the
    // ninth is larger than the bound.
    let batch_bytes = |index: u64| {
        if index == 9 {
            partition::REPLICATION_BYTES_MAX + (64 << 10)
        } else {
            partition::REPLICATION_BYTES_MAX / 3
        }
    };
    let big = |index: u64| Entry {
        log_id: log_id(2, index),
        payload: EntryPayload::Normal(PartitionEntry::new(big_batch(batch_bytes(index))).unwrap()),
    };
    let mut entries = vec![blank(2, 0)];
    entries.extend((1..=9).map(big));
    store.blocking_append(entries).await.unwrap();
    let mut reader = store.get_log_reader().await;
    let limited = reader.limited_get_log_entries(0, 10).await.unwrap();
    let bytes: usize = limited
        .iter()
        .map(|e| match &e.payload {
            EntryPayload::Normal(normal) => normal.batch.len(),
            _ => 0,
        })
        .sum();
    assert!((3..5).contains(&limited.len()), "{} entries", limited.len());
    assert!(bytes <= partition::REPLICATION_BYTES_MAX, "{bytes} bytes");
    // An entry larger than the bound still goes, alone.
    let alone = reader.limited_get_log_entries(9, 10).await.unwrap();
    assert_eq!(alone.len(), 1);
    assert_eq!(alone[0].log_id, log_id(2, 9));
    // Reads that are not replication get the whole range.
    assert_eq!(reader.try_get_log_entries(0..10).await.unwrap().len(), 10);
}

fn big_batch(bytes: usize) -> Bytes {
    let mut builder = RecordBatchBuilder::new();
    builder.push(Record {
        offset: 0,
        timestamp: 1_700_000_000_000,
        key: None,
        value: Some(vec![7u8; bytes]),
        headers: Vec::new(),
    });
    Bytes::from(builder.build())
}

/// Entry 5 of three producer batches grouped (2, 1 and 4 records), entry 6 one batch.
fn grouped_entries() -> Vec<Entry<PartitionRaft>> {
    let group = PartitionEntry::group(
        vec![
            PartitionEntry::new(producer_batch("g1", 2)).unwrap(),
            PartitionEntry::new(producer_batch("g2", 1)).unwrap(),
            PartitionEntry::new(producer_batch("g3", 4)).unwrap(),
        ],
        leader_of(2),
    );
    vec![
        Entry {
            log_id: log_id(2, 5),
            payload: EntryPayload::Normal(group),
        },
        normal(2, 6, "after", 1),
    ]
}

/// The producers' records of an entry (an entry group's head record left out).
fn produced_values(entry: &Entry<PartitionRaft>) -> Vec<String> {
    values(entry)
        .into_iter()
        .filter(|v| v.contains('-'))
        .collect()
}

#[tokio::test]
async fn an_entry_group_is_one_entry_before_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let (mut store, mut sm, log) = open(Arc::new(RealDisk), dir.path());
        store.blocking_append(five_entries()).await.unwrap();
        store.blocking_append(grouped_entries()).await.unwrap();
        // The head takes offset 8; the batches follow at 9, 11 and 12; the next entry at 16.
        assert_eq!(log.log_end_offset(), 17);
        let entries = store.try_get_log_entries(0..).await.unwrap();
        assert_eq!(entries.len(), 7);
        assert_eq!(
            entries.iter().map(base_offset).collect::<Vec<_>>(),
            vec![None, None, None, Some(3), Some(6), Some(8), Some(16)]
        );
        assert_eq!(
            produced_values(&entries[5]),
            vec!["g1-0", "g1-1", "g2-0", "g3-0", "g3-1", "g3-2", "g3-3"]
        );
        let applied = sm.apply(entries.clone()).await.unwrap();
        assert_eq!(
            (applied[5].base_offset, applied[5].last_offset),
            (8, 15),
            "the group's entry spans its head and every batch"
        );
        assert_eq!(log.high_watermark(), 17);
        // Consumers see the producers' batches; the head is a control batch they skip.
        let control: Vec<(i64, bool)> = log
            .batch_headers_from(8)
            .unwrap()
            .iter()
            .map(|h| (h.base_offset, h.is_control()))
            .collect();
        assert_eq!(
            control,
            vec![(8, true), (9, false), (11, false), (12, false), (16, false)]
        );
        entries
    };
    // Recovery finds the entry boundaries from the head, and reads from the log (no cache).
    let (mut store, _sm, _log) = open(Arc::new(RealDisk), dir.path());
    assert_eq!(store.try_get_log_entries(0..).await.unwrap(), before);
    let range = store.try_get_log_entries(5..6).await.unwrap();
    assert_eq!(range, before[5..6]);
    // Appending continues after the group's last entry.
    store
        .blocking_append([normal(2, 7, "next", 1)])
        .await
        .unwrap();
    let next = store.try_get_log_entries(7..8).await.unwrap();
    assert_eq!(base_offset(&next[0]), Some(17));
}

/// The address of a normal entry's bytes.
fn batch_address(entry: &Entry<PartitionRaft>) -> *const u8 {
    match &entry.payload {
        EntryPayload::Normal(normal) => normal.batch.as_ptr(),
        _ => std::ptr::null(),
    }
}

#[tokio::test]
async fn a_lone_entry_nothing_else_holds_is_stamped_in_place_and_a_shared_one_is_copied() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _sm, log) = open(Arc::new(RealDisk), dir.path());
    store.blocking_append(five_entries()).await.unwrap();
    // An entry group's bytes are built for its append and held by nothing else.
    let mut entries = grouped_entries();
    let single = entries.pop().unwrap();
    let group_address = batch_address(&entries[0]);
    store.write_entries(entries).unwrap();
    // A producer's batch still held elsewhere (its request, here a clone) must not change.
    let EntryPayload::Normal(held) = &single.payload else {
        unreachable!("a normal entry")
    };
    let held = held.batch.clone();
    let held_before = held.to_vec();
    let single_address = held.as_ptr();
    store.write_entries(vec![single]).unwrap();
    assert_eq!(log.log_end_offset(), 17);

    let stored = store.try_get_log_entries(5..7).await.unwrap();
    assert_eq!(batch_address(&stored[0]), group_address, "stamped in place");
    assert_eq!(base_offset(&stored[0]), Some(8));
    assert_eq!(
        produced_values(&stored[0]),
        vec!["g1-0", "g1-1", "g2-0", "g3-0", "g3-1", "g3-2", "g3-3"]
    );
    assert_ne!(batch_address(&stored[1]), single_address, "copied");
    assert_eq!(base_offset(&stored[1]), Some(16));
    assert_eq!(
        held.to_vec(),
        held_before,
        "the shared bytes are left as they were"
    );
    // The log holds what the cache does.
    let (mut reopened, _sm, _log) = {
        drop(store);
        open(Arc::new(RealDisk), dir.path())
    };
    assert_eq!(reopened.try_get_log_entries(5..7).await.unwrap(), stored);
}

#[tokio::test]
async fn a_torn_entry_group_is_cut_off_at_recovery() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut store, _sm, log) = open(Arc::new(RealDisk), dir.path());
        store.blocking_append(five_entries()).await.unwrap();
        store.write_entries(grouped_entries()).unwrap();
        // As if a crash kept the head and the first two batches of the group's write only.
        log.truncate_to(12).unwrap();
        assert_eq!(log.log_end_offset(), 12);
    }
    let (mut store, _sm, log) = open(Arc::new(RealDisk), dir.path());
    assert_eq!(log.log_end_offset(), 8, "the partly written group is gone");
    let entries = store.try_get_log_entries(0..).await.unwrap();
    assert_eq!(entries, five_entries_as_stored(&mut store).await);
    // Raft appends entry 5 again (from the leader), at the same offset.
    store.blocking_append(grouped_entries()).await.unwrap();
    let again = store.try_get_log_entries(5..7).await.unwrap();
    assert_eq!(
        again.iter().map(base_offset).collect::<Vec<_>>(),
        vec![Some(8), Some(16)]
    );
}

async fn five_entries_as_stored(store: &mut PartitionLogStore) -> Vec<Entry<PartitionRaft>> {
    let entries = store.try_get_log_entries(0..5).await.unwrap();
    assert_eq!(entries.len(), 5);
    entries
}

#[test]
fn an_entry_group_head_cannot_be_proposed_as_data() {
    let group = PartitionEntry::group(
        vec![
            PartitionEntry::new(producer_batch("a", 1)).unwrap(),
            PartitionEntry::new(producer_batch("b", 1)).unwrap(),
        ],
        1,
    );
    assert!(PartitionEntry::new(group.batch.clone()).is_err());
    let header = BatchHeader::parse(&group.batch).unwrap();
    let head = group.batch.slice(..header.total_bytes());
    assert!(PartitionEntry::new(head).is_err());
    // A single batch stays an ordinary entry.
    let one = PartitionEntry::group(
        vec![PartitionEntry::new(producer_batch("c", 1)).unwrap()],
        1,
    );
    assert_eq!(one.batch, producer_batch("c", 1));
}

#[tokio::test]
async fn entry_groups_larger_than_one_read_come_back_whole_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let group = |index: u64, batch_bytes: usize| Entry {
        log_id: log_id(2, index),
        payload: EntryPayload::Normal(PartitionEntry::group(
            (0..3)
                .map(|_| PartitionEntry::new(big_batch(batch_bytes)).unwrap())
                .collect(),
            leader_of(2),
        )),
    };
    // Groups of ~900 KiB straddle the 1 MiB reads; one of ~1.5 MiB is larger than a read.
    let appended = vec![
        blank(2, 0),
        group(1, 300 << 10),
        group(2, 300 << 10),
        group(3, 500 << 10),
        group(4, 300 << 10),
        normal(2, 5, "last", 2),
    ];
    {
        let (mut store, _sm, _log) = open(Arc::new(RealDisk), dir.path());
        store.blocking_append(appended.clone()).await.unwrap();
    }
    let (mut store, _sm, _log) = open(Arc::new(RealDisk), dir.path());
    let read = store.try_get_log_entries(0..).await.unwrap();
    assert_eq!(read.len(), 6);
    for (got, sent) in read.iter().zip(&appended) {
        let batches = |entry: &Entry<PartitionRaft>| match &entry.payload {
            EntryPayload::Normal(normal) => {
                sluice_log::validate_batches(&normal.batch).unwrap().len()
            }
            _ => 1,
        };
        assert_eq!(got.log_id, sent.log_id);
        assert_eq!(batches(got), batches(sent), "entry {}", got.log_id.index);
    }
    assert_eq!(produced_values(&read[5]), vec!["last-0", "last-1"]);
}
