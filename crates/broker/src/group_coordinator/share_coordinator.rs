//! Share groups on the coordinator (KIP-932): membership (ShareGroupHeartbeat), the share
//! partitions' record states (ShareFetch, ShareAcknowledge) and their stored start offsets.
//! On one node the group coordinator and every partition leader are the same process, so the
//! share partitions live here, beside the membership that releases a leaving member's locks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_log::BatchHeader;
use tokio::time::Instant;

use super::group_configs::{
    parse_auto_offset_reset, GroupConfigEntry, ShareAutoOffsetReset, SHARE_AUTO_OFFSET_RESET,
    SHARE_HEARTBEAT_INTERVAL_MS, SHARE_ISOLATION_LEVEL, SHARE_RECORD_LOCK_DURATION_MS,
    SHARE_SESSION_TIMEOUT_MS,
};
use super::share_group::{
    ShareGroup, ShareGroupDescription, ShareGroupTiming, ShareHeartbeatParams, ShareHeartbeatResult,
};
use super::share_partition::{
    AcknowledgeType, AcquiredRange, BatchSpan, ShareLimits, SharePartition,
};
use super::share_store::ShareLog;
use super::{GroupCoordinator, OffsetAndMetadata, TopicPartition};
use crate::{now_ms, GroupError, IsolationLevel};

/// One share partition and the order its state is stored in.
pub(crate) struct SharePartitionSlot {
    state: parking_lot::Mutex<SharePartition>,
    /// The leadership it was loaded under (see [`ShareLog::leadership`]).
    leadership: u64,
    /// What was stored last; held while storing, so stores land in order.
    stored: tokio::sync::Mutex<StoredShare>,
}

/// The start offset and the state version a share partition was stored at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StoredShare {
    start_offset: i64,
    version: u64,
}

/// What one ShareFetch got from one partition.
#[derive(Debug, Clone, Default)]
pub struct ShareFetched {
    /// Whole batches of the log holding the acquired records (and maybe others around
    /// them, which the client skips).
    pub records: Bytes,
    pub acquired: Vec<AcquiredRange>,
}

/// One acknowledgement batch of a ShareFetch or ShareAcknowledge.
#[derive(Debug, Clone)]
pub struct AcknowledgementBatch {
    pub first_offset: i64,
    pub last_offset: i64,
    pub types: Vec<AcknowledgeType>,
}

type SharePartitionKey = (String, TopicPartition);

/// How many reads of the log one share fetch makes at most when they find only records that
/// are not delivered.
const PASSES_OVER_UNDELIVERED_MAX: usize = 16;

impl GroupCoordinator {
    fn share_timing(&self, group_id: &str) -> ShareGroupTiming {
        let configs = &self.group_configs;
        ShareGroupTiming {
            heartbeat_interval_ms: configs
                .int_value(group_id, SHARE_HEARTBEAT_INTERVAL_MS)
                .unwrap_or(self.config.share_heartbeat_interval_ms as i64)
                as i32,
            session_timeout_ms: configs
                .int_value(group_id, SHARE_SESSION_TIMEOUT_MS)
                .unwrap_or(self.config.share_session_timeout_ms as i64)
                as i32,
        }
    }

    pub(crate) fn share_limits(&self, group_id: &str) -> ShareLimits {
        let lock_ms = self
            .group_configs
            .int_value(group_id, SHARE_RECORD_LOCK_DURATION_MS)
            .unwrap_or(self.config.share_record_lock_duration_ms as i64);
        ShareLimits {
            lock_duration: Duration::from_millis(lock_ms.max(0) as u64),
            delivery_count_limit: self.config.share_delivery_count_limit,
            in_flight_max: self.config.share_partition_max_record_locks,
        }
    }

    /// Which records `group_id` gets (the group config `share.isolation.level`).
    fn share_isolation(&self, group_id: &str) -> IsolationLevel {
        match self.group_configs.value(group_id, SHARE_ISOLATION_LEVEL) {
            Some(level) if level == "read_committed" => IsolationLevel::ReadCommitted,
            _ => IsolationLevel::ReadUncommitted,
        }
    }

    /// How long acquired records stay locked for `group_id` (ShareFetch tells clients).
    pub fn share_lock_duration_ms(&self, group_id: &str) -> i32 {
        self.share_limits(group_id).lock_duration.as_millis() as i32
    }

    /// ShareGroupHeartbeat: joins, leaves or keeps a member alive; returns its epoch and, when
    /// it changed, its assignment. `topics` holds every topic with its partition count.
    pub fn share_group_heartbeat(
        &self,
        params: ShareHeartbeatParams,
        topics: &BTreeMap<String, i32>,
    ) -> Result<ShareHeartbeatResult, GroupError> {
        let invalid = |text: &str| Err(GroupError::InvalidRequest(text.to_string()));
        if params.group_id.is_empty() {
            return invalid("GroupId can't be empty.");
        }
        if params.member_id.is_empty() {
            return invalid("MemberId can't be empty.");
        }
        if params.rack_id.as_deref() == Some("") {
            return invalid("RackId can't be empty.");
        }
        match params.member_epoch {
            0 if params
                .subscribed_topic_names
                .as_ref()
                .is_none_or(|names| names.is_empty()) =>
            {
                return invalid("SubscribedTopicNames must be set in first request.");
            }
            epoch if epoch < super::LEAVE_GROUP_MEMBER_EPOCH => {
                return invalid(&format!("MemberEpoch is invalid: {epoch}."));
            }
            _ => {}
        }
        let joining = params.member_epoch == 0;
        let leaving = params.member_epoch == super::LEAVE_GROUP_MEMBER_EPOCH;
        let timing = self.share_timing(&params.group_id);
        let group_id = params.group_id.clone();
        let member_id = params.member_id.clone();
        let result = {
            let mut groups = self.groups.lock();
            match groups.get(&group_id) {
                Some(group) if !group.is_idle() => return Err(GroupError::GroupIdNotFound),
                _ => {}
            }
            let mut consumer_groups = self.consumer_groups.lock();
            if consumer_groups
                .get(&group_id)
                .is_some_and(|g| !g.is_empty())
            {
                return Err(GroupError::GroupIdNotFound);
            }
            // A group id with committed offsets belongs to a consumer group.
            if self.offsets.has_offsets(&group_id) {
                return Err(GroupError::GroupIdNotFound);
            }
            if joining {
                groups.remove(&group_id);
                consumer_groups.remove(&group_id);
            }
            let mut share_groups = self.share_groups.lock();
            let group = match share_groups.get_mut(&group_id) {
                Some(group) => group,
                None if !joining => return Err(GroupError::UnknownMemberId),
                None => share_groups
                    .entry(group_id.clone())
                    .or_insert_with(|| ShareGroup::new(group_id.clone())),
            };
            group.heartbeat(params, topics, Instant::now(), timing)?
        };
        if leaving {
            self.release_share_member(&group_id, &member_id);
        }
        Ok(result)
    }

    pub fn describe_share_group(
        &self,
        group_id: &str,
    ) -> Result<ShareGroupDescription, GroupError> {
        if let Some(group) = self.share_groups.lock().get(group_id) {
            return Ok(group.describe());
        }
        // Known only by its stored state (e.g. after a restart): empty.
        if self.share_store().has_offsets(group_id) {
            return Ok(ShareGroup::new(group_id.to_string()).describe());
        }
        Err(GroupError::GroupIdNotFound)
    }

    /// Whether `group_id` is a share group (live, or known by its stored start offsets).
    pub fn is_share_group(&self, group_id: &str) -> bool {
        self.share_groups.lock().contains_key(group_id) || self.share_store().has_offsets(group_id)
    }

    /// Whether `member_id` is a member of share group `group_id` now.
    pub fn is_share_member(&self, group_id: &str, member_id: &str) -> bool {
        self.share_groups
            .lock()
            .get(group_id)
            .is_some_and(|g| g.is_member(member_id))
    }

    fn share_partition(
        &self,
        group_id: &str,
        partition: &TopicPartition,
    ) -> Option<Arc<SharePartitionSlot>> {
        self.share_partitions
            .lock()
            .get(&(group_id.to_string(), partition.clone()))
            .cloned()
    }

    /// The share partition of `group_id` on `partition`, created at the stored start offset
    /// or else where `share.auto.offset.reset` says. A new start offset is stored at once, so
    /// that a restart does not move it (e.g. to a later `latest`).
    pub async fn initialize_share_partition(
        &self,
        group_id: &str,
        partition: &dyn ShareLog,
    ) -> Result<(), GroupError> {
        let key = TopicPartition {
            topic: partition.topic().to_string(),
            partition: partition.index(),
        };
        let leadership = partition.leadership();
        match self.share_partition(group_id, &key) {
            Some(slot) if slot.leadership == leadership => return Ok(()),
            // Loaded under an earlier leadership of this node: another leader may have moved
            // it on since, so it is loaded again from what is stored.
            Some(_) => {
                self.share_partitions
                    .lock()
                    .retain(|(group, partition), slot| {
                        group != group_id || *partition != key || slot.leadership == leadership
                    });
            }
            None => {}
        }
        let store = self.share_store();
        store.catch_up().await?;
        // A negative stored offset was set by AlterShareGroupOffsets to mean "not set".
        let stored = store
            .fetch(group_id, &key)
            .filter(|stored| stored.offset >= 0);
        let state = match &stored {
            Some(stored) => {
                let mut state = SharePartition::restore(stored.offset, &stored.metadata);
                state.move_past(partition.log_start_offset());
                state
            }
            None => SharePartition::new(self.initial_share_offset(group_id, partition)),
        };
        let stored_at = StoredShare {
            start_offset: stored.as_ref().map_or(-1, |s| s.offset),
            version: state.version(),
        };
        let slot = {
            let mut partitions = self.share_partitions.lock();
            let slot = partitions
                .entry((group_id.to_string(), key.clone()))
                .or_insert_with(|| {
                    Arc::new(SharePartitionSlot {
                        state: parking_lot::Mutex::new(state),
                        leadership,
                        stored: tokio::sync::Mutex::new(stored_at),
                    })
                });
            Arc::clone(slot)
        };
        if stored.is_none() {
            self.store_share_state(group_id, &key, &slot).await?;
        }
        Ok(())
    }

    fn initial_share_offset(&self, group_id: &str, partition: &dyn ShareLog) -> i64 {
        let reset = self
            .group_configs
            .value(group_id, SHARE_AUTO_OFFSET_RESET)
            .and_then(|v| parse_auto_offset_reset(&v))
            .unwrap_or(ShareAutoOffsetReset::Latest);
        match reset {
            ShareAutoOffsetReset::Earliest => partition.log_start_offset(),
            ShareAutoOffsetReset::Latest => partition.high_watermark(),
            ShareAutoOffsetReset::ByDuration(duration) => {
                let since = now_ms().saturating_sub(duration.as_millis() as i64);
                match partition.log().offset_for_timestamp(since) {
                    Ok(Some((offset, _))) => offset.min(partition.high_watermark()),
                    _ => partition.high_watermark(),
                }
            }
        }
    }

    /// Stores the share partition's start offset and in-flight states if they changed since
    /// they were stored.
    async fn store_share_state(
        &self,
        group_id: &str,
        key: &TopicPartition,
        slot: &SharePartitionSlot,
    ) -> Result<(), GroupError> {
        let mut stored = slot.stored.lock().await;
        let (now, encoded) = {
            let state = slot.state.lock();
            let now = StoredShare {
                start_offset: state.start_offset(),
                version: state.version(),
            };
            if now == *stored {
                return Ok(());
            }
            (now, state.encode())
        };
        let offset = OffsetAndMetadata {
            offset: now.start_offset,
            leader_epoch: -1,
            metadata: encoded,
            commit_timestamp_ms: now_ms(),
        };
        self.share_store()
            .commit(group_id, &[(key.clone(), offset)])
            .await?;
        *stored = now;
        Ok(())
    }

    /// ShareFetch on one partition: acquires for `member_id` up to `records_max` records
    /// within `bytes_max` of the log. Empty when nothing is there to hand out.
    pub fn share_fetch(
        &self,
        group_id: &str,
        member_id: &str,
        partition: &dyn ShareLog,
        records_max: usize,
        bytes_max: usize,
    ) -> Result<ShareFetched, GroupError> {
        // A read holding only what is not delivered (control records, aborted data) moves the
        // end offset past it: read on, a bounded number of times, rather than answer nothing.
        for _ in 0..PASSES_OVER_UNDELIVERED_MAX {
            if let Some(fetched) =
                self.share_fetch_once(group_id, member_id, partition, records_max, bytes_max)?
            {
                return Ok(fetched);
            }
        }
        Ok(ShareFetched::default())
    }

    /// One read of the log for [`Self::share_fetch`]; `None` when it acquired nothing but moved
    /// past records that are not delivered, so that reading again may find some.
    fn share_fetch_once(
        &self,
        group_id: &str,
        member_id: &str,
        partition: &dyn ShareLog,
        records_max: usize,
        bytes_max: usize,
    ) -> Result<Option<ShareFetched>, GroupError> {
        let key = TopicPartition {
            topic: partition.topic().to_string(),
            partition: partition.index(),
        };
        let Some(slot) = self.share_partition(group_id, &key) else {
            return Err(GroupError::UnknownTopicOrPartition);
        };
        let limits = self.share_limits(group_id);
        let now = Instant::now();
        let mut state = slot.state.lock();
        state.expire_locks(now, &limits);
        state.move_past(partition.log_start_offset());
        let Some(from) = state.next_read_offset(&limits) else {
            return Ok(Some(ShareFetched::default()));
        };
        let isolation = self.share_isolation(group_id);
        let readable_end = match isolation {
            IsolationLevel::ReadUncommitted => partition.high_watermark(),
            IsolationLevel::ReadCommitted => partition.last_stable_offset(),
        };
        if from >= readable_end {
            return Ok(Some(ShareFetched::default()));
        }
        let fetched = partition
            .fetch_isolated(from, bytes_max.max(1), isolation)
            .map_err(GroupError::Storage)?;
        let aborted = &fetched.aborted_transactions;
        let mut spans = Vec::new();
        let mut at = 0usize;
        let records = fetched.records;
        while at < records.len() {
            let Ok(header) = BatchHeader::parse(&records[at..]) else {
                break;
            };
            let end = at + header.total_bytes();
            if end > records.len() {
                break;
            }
            spans.push((
                at..end,
                BatchSpan {
                    base_offset: header.base_offset,
                    last_offset: header.last_offset(),
                    is_control: header.is_control(),
                    // Aborted transactions are only listed for read_committed.
                    is_aborted: header.is_transactional()
                        && !header.is_control()
                        && aborted.iter().any(|t| {
                            t.producer_id == header.producer_id
                                && (t.first_offset..=t.last_offset).contains(&header.base_offset)
                        }),
                },
            ));
            at = end;
        }
        let batches: Vec<BatchSpan> = spans.iter().map(|(_, span)| *span).collect();
        let acquired = state.acquire(member_id, &batches, records_max, now, &limits);
        let passed_over = acquired.is_empty()
            && state
                .next_read_offset(&limits)
                .is_some_and(|next| next > from && next < readable_end);
        drop(state);
        if passed_over {
            return Ok(None);
        }
        let (Some(first), Some(last)) = (acquired.first(), acquired.last()) else {
            return Ok(Some(ShareFetched::default()));
        };
        // Only the batches holding acquired records go out.
        let (first, last) = (first.first_offset, last.last_offset);
        let held: Vec<&std::ops::Range<usize>> = spans
            .iter()
            .filter(|(_, s)| s.last_offset >= first && s.base_offset <= last)
            .map(|(range, _)| range)
            .collect();
        let records = match (held.first(), held.last()) {
            (Some(a), Some(b)) => records.slice(a.start..b.end),
            _ => Bytes::new(),
        };
        partition.count_fetched(&records);
        Ok(Some(ShareFetched { records, acquired }))
    }

    /// Whether a fetch of these partitions could hand something out without new data: a
    /// record is available again, or a lock runs out by `deadline`.
    pub fn share_wait_hint(
        &self,
        group_id: &str,
        partitions: &[TopicPartition],
    ) -> Option<Instant> {
        let mut earliest: Option<Instant> = None;
        for key in partitions {
            let Some(slot) = self.share_partition(group_id, key) else {
                continue;
            };
            let state = slot.state.lock();
            if state.has_available() {
                return Some(Instant::now());
            }
            if let Some(deadline) = state.next_lock_deadline() {
                earliest = Some(earliest.map_or(deadline, |e| e.min(deadline)));
            }
        }
        earliest
    }

    /// ShareAcknowledge (or a ShareFetch's acknowledgements) on one partition: each batch is
    /// applied whole or not at all; the first refusal is the answer. Returns once the moved
    /// start offset is stored.
    pub async fn share_acknowledge(
        &self,
        group_id: &str,
        member_id: &str,
        partition: &TopicPartition,
        batches: &[AcknowledgementBatch],
    ) -> Result<(), GroupError> {
        let Some(slot) = self.share_partition(group_id, partition) else {
            return Err(GroupError::InvalidRecordState);
        };
        let limits = self.share_limits(group_id);
        let mut outcome = Ok(());
        {
            let mut state = slot.state.lock();
            state.expire_locks(Instant::now(), &limits);
            for batch in batches {
                let applied = state.acknowledge(
                    member_id,
                    batch.first_offset,
                    batch.last_offset,
                    &batch.types,
                    &limits,
                );
                if let Err(error) = applied {
                    if outcome.is_ok() {
                        outcome = Err(error);
                    }
                }
            }
        }
        self.store_share_state(group_id, partition, &slot).await?;
        outcome
    }

    /// Gives back every record `member_id` holds in `group_id` (its share session closed, it
    /// left, or its session timed out).
    pub fn release_share_member(&self, group_id: &str, member_id: &str) {
        let slots: Vec<Arc<SharePartitionSlot>> = self
            .share_partitions
            .lock()
            .iter()
            .filter(|((group, _), _)| group == group_id)
            .map(|(_, slot)| Arc::clone(slot))
            .collect();
        for slot in slots {
            slot.state.lock().release_member(member_id);
        }
    }

    /// The stored start offset of each share partition of `group_id`, sorted; the live one
    /// where it is ahead.
    pub fn share_group_offsets(&self, group_id: &str) -> Vec<(TopicPartition, i64)> {
        let mut offsets: BTreeMap<TopicPartition, i64> = self
            .share_store()
            .group_offsets(group_id)
            .into_iter()
            .map(|(partition, offset)| (partition, offset.offset))
            .collect();
        for ((group, partition), slot) in self.share_partitions.lock().iter() {
            if group == group_id {
                let start = slot.state.lock().start_offset();
                offsets.insert(partition.clone(), start);
            }
        }
        offsets.into_iter().collect()
    }

    /// Refuses an admin change of `group_id`'s start offsets unless it is a share group
    /// without members.
    fn check_share_offsets_alterable(&self, group_id: &str) -> Result<(), GroupError> {
        if group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        if !self.is_share_group(group_id) {
            return Err(GroupError::GroupIdNotFound);
        }
        if self
            .share_groups
            .lock()
            .get(group_id)
            .is_some_and(|group| !group.is_empty())
        {
            return Err(GroupError::NonEmptyGroup);
        }
        Ok(())
    }

    /// AlterShareGroupOffsets: sets the start offset of each given share partition of an
    /// empty share group. The records from the new start offset on are delivered again,
    /// whatever their state was; a share partition already loaded starts over there at once.
    /// As in Kafka the offsets are not checked against the log: one past its end waits for
    /// records there, and a negative one means "not set", so `share.auto.offset.reset`
    /// places the partition when the group next reads it.
    pub async fn alter_share_group_offsets(
        &self,
        group_id: &str,
        offsets: &[(TopicPartition, i64)],
    ) -> Result<(), GroupError> {
        self.check_share_offsets_alterable(group_id)?;
        let slots: Vec<(Arc<SharePartitionSlot>, i64)> = offsets
            .iter()
            .filter_map(|(partition, offset)| {
                self.share_partition(group_id, partition)
                    .map(|slot| (slot, *offset))
            })
            .collect();
        // Held across the store so that no acknowledgement stores an older start after it.
        let mut stored = Vec::with_capacity(slots.len());
        for (slot, _) in &slots {
            stored.push(slot.stored.lock().await);
        }
        let now = now_ms();
        let records: Vec<(TopicPartition, OffsetAndMetadata)> = offsets
            .iter()
            .map(|(partition, offset)| {
                (
                    partition.clone(),
                    OffsetAndMetadata {
                        offset: *offset,
                        leader_epoch: -1,
                        metadata: String::new(),
                        commit_timestamp_ms: now,
                    },
                )
            })
            .collect();
        let store = self.share_store();
        store.commit(group_id, &records).await?;
        let altered: Vec<TopicPartition> = offsets.iter().map(|(p, _)| p.clone()).collect();
        store.reload_elsewhere(group_id, Some(&altered)).await;
        for ((slot, offset), stored) in slots.iter().zip(stored.iter_mut()) {
            let state = SharePartition::new((*offset).max(0));
            **stored = StoredShare {
                start_offset: *offset,
                version: state.version(),
            };
            *slot.state.lock() = state;
        }
        drop(stored);
        // An unset start offset is placed again when the partition is next read.
        self.share_partitions
            .lock()
            .retain(|(group, partition), _| {
                group != group_id
                    || !offsets
                        .iter()
                        .any(|(altered, offset)| altered == partition && *offset < 0)
            });
        Ok(())
    }

    /// DeleteShareGroupOffsets: forgets the start offsets (and in-flight states) of an empty
    /// share group on every partition of `topics`; the group reads them again from where
    /// `share.auto.offset.reset` says, as if it never had. Returns the topics the group had
    /// state for.
    pub async fn delete_share_group_offsets(
        &self,
        group_id: &str,
        topics: &[String],
    ) -> Result<Vec<String>, GroupError> {
        self.check_share_offsets_alterable(group_id)?;
        let mut partitions: Vec<TopicPartition> = self
            .share_store()
            .group_offsets(group_id)
            .into_iter()
            .map(|(partition, _)| partition)
            .filter(|partition| topics.contains(&partition.topic))
            .collect();
        {
            let mut loaded = self.share_partitions.lock();
            loaded.retain(|(group, partition), _| {
                let dropped = group == group_id && topics.contains(&partition.topic);
                if dropped && !partitions.contains(partition) {
                    partitions.push(partition.clone());
                }
                !dropped
            });
        }
        let store = self.share_store();
        store.delete(group_id, &partitions).await?;
        store.reload_elsewhere(group_id, Some(&partitions)).await;
        // The group stays, empty, even when no stored state names it any more.
        self.share_groups
            .lock()
            .entry(group_id.to_string())
            .or_insert_with(|| ShareGroup::new(group_id.to_string()));
        let mut deleted: Vec<String> = partitions.into_iter().map(|p| p.topic).collect();
        deleted.sort();
        deleted.dedup();
        Ok(deleted)
    }

    /// Drops the loaded share partitions of `group_id` (those of `partitions`, or all), so the
    /// next fetch loads them from the stored states (changed by an admin request elsewhere).
    pub fn forget_loaded_share_partitions(
        &self,
        group_id: &str,
        partitions: Option<&[TopicPartition]>,
    ) {
        self.share_partitions
            .lock()
            .retain(|(group, partition), _| {
                group != group_id || partitions.is_some_and(|p| !p.contains(partition))
            });
    }

    /// Every share group, live or only stored.
    pub(crate) fn share_group_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.share_store().groups();
        ids.extend(self.share_groups.lock().keys().cloned());
        ids.sort();
        ids.dedup();
        ids
    }

    /// DeleteGroups of a share group: only an empty one; its share state and configs go.
    pub(crate) async fn delete_share_group(&self, group_id: &str) -> Result<(), GroupError> {
        {
            let mut share_groups = self.share_groups.lock();
            if let Some(group) = share_groups.get_mut(group_id) {
                if !group.is_empty() {
                    return Err(GroupError::NonEmptyGroup);
                }
                group.mark_deleted();
                share_groups.remove(group_id);
            }
        }
        self.share_partitions
            .lock()
            .retain(|(group, _), _| group != group_id);
        let store = self.share_store();
        store.delete_group(group_id).await?;
        store.reload_elsewhere(group_id, None).await;
        self.group_configs.forget(group_id)?;
        Ok(())
    }

    pub(crate) fn expire_share_sessions(&self, now: Instant) {
        let expired: Vec<(String, Vec<String>)> = self
            .share_groups
            .lock()
            .iter_mut()
            .map(|(id, group)| (id.clone(), group.expire_sessions(now)))
            .filter(|(_, members)| !members.is_empty())
            .collect();
        for (group_id, members) in expired {
            for member_id in members {
                self.release_share_member(&group_id, &member_id);
            }
        }
    }

    /// Every group that has a config of its own.
    pub fn groups_with_configs(&self) -> Vec<String> {
        self.group_configs.groups()
    }

    /// Every config of a group (DescribeConfigs on a GROUP resource).
    pub fn describe_group_configs(&self, group_id: &str) -> Vec<GroupConfigEntry> {
        self.group_configs.describe(group_id, &self.config)
    }

    /// IncrementalAlterConfigs on a GROUP resource: `None` deletes an override.
    pub fn alter_group_configs(
        &self,
        group_id: &str,
        changes: &[(String, Option<String>)],
        validate_only: bool,
    ) -> Result<(), GroupError> {
        if group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        self.group_configs
            .alter(group_id, changes, &self.config, validate_only)
    }
}

pub(crate) type SharePartitions = BTreeMap<SharePartitionKey, Arc<SharePartitionSlot>>;
