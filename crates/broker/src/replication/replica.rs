//! One replica of a replicated partition on this node: its Raft group, its log (the group's
//! Raft log), the idempotent-producer state rebuilt from committed batches, and the leader's
//! view of which voters are caught up (the ISR).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use openraft::error::ClientWriteError;
use openraft::{Raft, ServerState};
use parking_lot::Mutex;
use sluice_cluster::partition::{
    self as raft_partition, ApplyProgress, PartitionEntry, PartitionRaft,
};
use sluice_cluster::NodeId;
use sluice_log::{
    stamp_log_append_time, transaction_marker, validate_batches, BatchHeader, PartitionLog,
    TransactionResult,
};

use crate::group_coordinator::ShareLog;
use crate::producer_state::ActiveProducer;
use crate::timestamps::{TimestampPolicy, TimestampRules};
use tokio::sync::watch;

use super::proposer::{EntryProposer, ProposalFailure, ProposedBatch};
use super::ReplicationError;
use crate::partition::{
    delete_records_target, read_isolated, stored_marker_result, IsolationLevel,
};
use crate::producer_state::{ProducerStateTable, SequenceCheck};
use crate::{now_ms, BrokerError, FetchedPartition, ProduceOutcome};

/// A voter that matched the leader's log end within this long is in sync (Kafka's
/// `replica.lag.time.max.ms` is 30 s; a shorter window lets `min.insync.replicas` notice a dead
/// replica sooner).
pub const ISR_LAG_MAX: Duration = Duration::from_secs(10);
/// How often the leader samples its followers' progress.
pub const ISR_SAMPLE_INTERVAL: Duration = Duration::from_millis(250);
/// How long a new leader waits for its first entry of the term to apply before it can check
/// idempotent producers' sequences (everything before it is then committed and known).
const TERM_APPLY_WAIT_MAX: Duration = Duration::from_secs(5);

/// Committed batches' producer state: `offset_tracked` is where the next read of the log
/// starts (the end of the last batch recorded).
struct CommittedProducers {
    table: ProducerStateTable,
    offset_tracked: i64,
}

/// What an idempotent request's sequence check decided.
enum Proposal {
    /// Proposed by the leader of `term`.
    Proposed {
        proposals: Vec<ProposedBatch>,
        term: u64,
    },
    /// A retry of a committed batch: acknowledge with its offset.
    Duplicate { offset_first: i64 },
    /// A retry of a batch the leader of `term` proposed, not committed yet.
    InFlightDuplicate { term: u64 },
}

/// The leader's producer state including the batches it proposed in `term` that may not be
/// committed yet: a producer's next batch is checked against this, so its requests in flight
/// (librdkafka keeps up to 5) are proposed back to back instead of one per commit round trip.
/// Batches proposed but not committed are recorded at offset -1.
struct ProposedProducers {
    term: u64,
    table: ProducerStateTable,
}

/// The leader's sampling of its followers: when each last matched the leader's log end as it
/// was one sample earlier.
#[derive(Default)]
struct InSyncTracker {
    last_log_index_before: Option<u64>,
    term: u64,
    caught_up_at: BTreeMap<NodeId, Instant>,
}

/// What Metadata says about one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionView {
    pub leader: Option<NodeId>,
    /// The Raft term: Kafka's leader epoch.
    pub leader_epoch: i32,
    pub replicas: Vec<NodeId>,
    pub isr: Vec<NodeId>,
}

pub struct Replica {
    pub(super) topic: String,
    pub(super) topic_id: uuid::Uuid,
    pub(super) index: i32,
    node_id: NodeId,
    raft: Raft<PartitionRaft>,
    /// Hands produced batches to Raft, grouped while earlier entries are in flight.
    proposer: EntryProposer,
    log: Arc<PartitionLog>,
    terms: raft_partition::PartitionView,
    progress: watch::Receiver<ApplyProgress>,
    producers: Mutex<CommittedProducers>,
    /// Idempotent batches of this partition are checked and proposed one at a time, so a
    /// sequence is checked against every batch proposed before it.
    sequenced: tokio::sync::Mutex<()>,
    proposed: Mutex<ProposedProducers>,
    /// `message.timestamp.type=LogAppendTime`: the leader stamps batches before proposing, so
    /// every replica stores the same timestamp.
    timestamps: TimestampPolicy,
    in_sync: Mutex<InSyncTracker>,
}

impl Replica {
    pub(super) fn new(
        topic: String,
        topic_id: uuid::Uuid,
        index: i32,
        node_id: NodeId,
        raft: Raft<PartitionRaft>,
        terms: raft_partition::PartitionView,
    ) -> Replica {
        let log = Arc::clone(terms.log());
        let progress = terms.progress();
        let offset_tracked = log.log_start_offset();
        Replica {
            topic,
            topic_id,
            index,
            node_id,
            proposer: EntryProposer::start(raft.clone(), node_id),
            raft,
            log,
            terms,
            progress,
            producers: Mutex::new(CommittedProducers {
                table: ProducerStateTable::default(),
                offset_tracked,
            }),
            sequenced: tokio::sync::Mutex::new(()),
            proposed: Mutex::new(ProposedProducers {
                term: 0,
                table: ProducerStateTable::default(),
            }),
            timestamps: TimestampPolicy::new(TimestampRules::default()),
            in_sync: Mutex::new(InSyncTracker::default()),
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
    /// The idempotent producers of the committed log (DescribeProducers on the leader).
    pub fn active_producers(&self) -> Result<Vec<ActiveProducer>, BrokerError> {
        self.track_committed_producers()?;
        Ok(self.producers.lock().table.active())
    }

    pub fn set_timestamp_rules(&self, rules: TimestampRules) {
        self.timestamps.set(rules);
    }
    pub fn index(&self) -> i32 {
        self.index
    }
    pub fn topic_id(&self) -> uuid::Uuid {
        self.topic_id
    }
    pub fn raft(&self) -> &Raft<PartitionRaft> {
        &self.raft
    }
    pub fn log(&self) -> &Arc<PartitionLog> {
        &self.log
    }
    pub fn progress(&self) -> watch::Receiver<ApplyProgress> {
        self.progress.clone()
    }

    /// The current leader and term as this replica knows them.
    pub fn leader_and_term(&self) -> (Option<NodeId>, u64) {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        (metrics.current_leader, metrics.current_term)
    }

    pub fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics.state == ServerState::Leader && metrics.current_leader == Some(self.node_id)
    }

    fn voters(&self) -> Vec<NodeId> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics.membership_config.membership().voter_ids().collect()
    }

    /// Leader, epoch, replicas (the voters), and the ISR: on the leader the voters caught up
    /// within [`ISR_LAG_MAX`]; a follower cannot see the others' progress and reports every
    /// voter while it knows a leader (only itself otherwise).
    pub fn view(&self) -> PartitionView {
        let (leader, term) = self.leader_and_term();
        let replicas = self.voters();
        let isr = if self.is_leader() {
            self.in_sync_replicas()
        } else if leader.is_some() {
            replicas.clone()
        } else {
            vec![self.node_id]
        };
        PartitionView {
            leader,
            leader_epoch: i32::try_from(term).unwrap_or(i32::MAX),
            replicas,
            isr,
        }
    }

    /// On the leader: itself and the voters that matched its log end within [`ISR_LAG_MAX`].
    pub fn in_sync_replicas(&self) -> Vec<NodeId> {
        let now = Instant::now();
        let mut tracker = self.in_sync.lock();
        {
            // Followers that hold everything committed are in sync now (between samples, and
            // right after an election, before the first sample).
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            if let (Some(committed), Some(replication)) =
                (metrics.last_applied, metrics.replication.as_ref())
            {
                for (&follower, matched) in replication {
                    if matched.is_some_and(|m| m.index >= committed.index) {
                        tracker.caught_up_at.insert(follower, now);
                    }
                }
            }
        }
        let mut isr: BTreeSet<NodeId> = tracker
            .caught_up_at
            .iter()
            .filter(|(_, at)| now.duration_since(**at) <= ISR_LAG_MAX)
            .map(|(&id, _)| id)
            .collect();
        isr.insert(self.node_id);
        let voters: BTreeSet<NodeId> = self.voters().into_iter().collect();
        isr.intersection(&voters).copied().collect()
    }

    /// One ISR sample (called every [`ISR_SAMPLE_INTERVAL`]): a follower whose matched index
    /// reaches the leader's last log index of the previous sample is caught up now.
    pub(super) fn sample_in_sync(&self) {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let mut tracker = self.in_sync.lock();
        if metrics.state != ServerState::Leader {
            *tracker = InSyncTracker::default();
            return;
        }
        if tracker.term != metrics.current_term {
            *tracker = InSyncTracker {
                term: metrics.current_term,
                ..InSyncTracker::default()
            };
        }
        let now = Instant::now();
        if let (Some(before), Some(replication)) =
            (tracker.last_log_index_before, metrics.replication.as_ref())
        {
            for (&follower, matched) in replication {
                if matched.is_some_and(|m| m.index >= before) {
                    tracker.caught_up_at.insert(follower, now);
                }
            }
        }
        tracker.last_log_index_before = metrics.last_log_index;
    }

    /// Records committed batches in the producer state, from where it stopped up to the high
    /// watermark (every replica does this, so a new leader already knows the sequences).
    pub(super) fn track_committed_producers(&self) -> Result<(), BrokerError> {
        let mut producers = self.producers.lock();
        let high_watermark = self.log.high_watermark();
        let log_start = self.log.log_start_offset();
        if producers.offset_tracked < log_start
            || producers.offset_tracked > self.log.log_end_offset()
        {
            // Retention or a snapshot install replaced what we read: start over.
            producers.table = ProducerStateTable::default();
            producers.offset_tracked = log_start;
        }
        if producers.offset_tracked >= high_watermark {
            return Ok(());
        }
        let headers = self.log.batch_headers_from(producers.offset_tracked)?;
        for header in headers {
            let end = header.base_offset + i64::from(header.last_offset_delta) + 1;
            if end > high_watermark {
                break;
            }
            let append_ms = header.max_timestamp.min(now_ms());
            if header.is_control() && header.is_transactional() {
                if let Some(result) = stored_marker_result(&self.log, &header)? {
                    producers.table.record_marker(&header, result, append_ms);
                }
            } else {
                producers.table.record(&header, append_ms);
            }
            producers.offset_tracked = end;
        }
        Ok(())
    }

    /// On a follower, advises the OS to drop the cached pages of the log below what the
    /// producer state has read (`PartitionLog::release_pages_below`): only a failover reads a
    /// follower's copy again, and kept cached it would evict the pages of the partitions this
    /// node leads, which consumers read. The leader keeps its pages for its consumers.
    pub(super) fn release_followed_pages(&self) {
        if self.is_leader() {
            return;
        }
        let tracked = self.producers.lock().offset_tracked;
        self.log.release_pages_below(tracked);
    }

    /// The offset below which no transaction is open in the committed log, capped by the high
    /// watermark: where `read_committed` consumers stop.
    pub fn last_stable_offset(&self) -> Result<i64, BrokerError> {
        self.track_committed_producers()?;
        Ok(self
            .producers
            .lock()
            .table
            .last_stable_offset(self.log.high_watermark()))
    }

    /// Forgets idempotent producers whose last batch's timestamp is `expiration_ms`
    /// (`producer.id.expiration.ms`) old, as one node does; each replica goes by its own clock,
    /// as each Kafka broker does. Returns how many the committed state forgot.
    pub fn expire_producers(&self, now_ms: i64, expiration_ms: i64) -> usize {
        let expired = self.producers.lock().table.expire(now_ms, expiration_ms);
        self.proposed.lock().table.expire(now_ms, expiration_ms);
        expired
    }

    fn check_epoch(&self, current_leader_epoch: i32, term: u64) -> Result<(), ReplicationError> {
        if current_leader_epoch < 0 {
            return Ok(());
        }
        let current_leader_epoch = current_leader_epoch as u64;
        if current_leader_epoch < term {
            return Err(ReplicationError::FencedLeaderEpoch);
        }
        if current_leader_epoch > term {
            return Err(ReplicationError::UnknownLeaderEpoch);
        }
        Ok(())
    }

    /// Leader only: the epoch check a consumer's `current_leader_epoch` asks for.
    pub fn check_leader(&self, current_leader_epoch: i32) -> Result<(), ReplicationError> {
        let (_, term) = self.leader_and_term();
        if !self.is_leader() {
            // A fenced epoch is reported before "not the leader", as Kafka does.
            if current_leader_epoch >= 0 && (current_leader_epoch as u64) < term {
                return Err(ReplicationError::FencedLeaderEpoch);
            }
            return Err(ReplicationError::NotLeader);
        }
        self.check_epoch(current_leader_epoch, term)
    }

    /// Fetch on the leader: whole batches from `offset`, never past the high watermark;
    /// `ReadCommitted` stops at the last stable offset and names the aborted transactions
    /// overlapping what was read, as on one node.
    pub fn fetch(
        &self,
        offset: i64,
        bytes_max: usize,
        current_leader_epoch: i32,
        isolation: IsolationLevel,
    ) -> Result<FetchedPartition, ReplicationError> {
        self.check_leader(current_leader_epoch)?;
        Ok(read_isolated(
            &self.log,
            self.last_stable_offset()?,
            offset,
            bytes_max,
            isolation,
            |from, to| self.producers.lock().table.aborted_between(from, to),
        )?)
    }

    /// Writes the marker ending `producer_id`'s transaction on this partition (the leader
    /// only) and answers once it is committed by a majority. The leader's speculative producer
    /// state records it at once, so a fenced epoch's next batch is refused even before the
    /// marker commits.
    pub async fn write_transaction_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        result: TransactionResult,
        coordinator_epoch: i32,
        timeout: Duration,
    ) -> Result<i64, ReplicationError> {
        if !self.is_leader() {
            return Err(ReplicationError::NotLeader);
        }
        let write = async {
            let (proposals, term) = {
                // In line with the sequenced batches: none of this producer is checked
                // against a state that lacks the marker.
                let _one_at_a_time = self.sequenced.lock().await;
                let term = self.wait_for_term_applied().await?;
                if !self.is_leader() {
                    return Err(ReplicationError::NotLeader);
                }
                let now = now_ms();
                let marker = Bytes::from(transaction_marker(
                    result,
                    producer_id,
                    producer_epoch,
                    coordinator_epoch,
                    now,
                ));
                let headers = validate_batches(&marker).map_err(BrokerError::from)?;
                let entries = entries_of(&marker, &headers)?;
                {
                    let mut proposed = self.proposed.lock();
                    if proposed.term == term {
                        for header in &headers {
                            proposed.table.record_marker(header, result, now);
                        }
                    }
                }
                (self.submit_all(entries, Some(term)), term)
            };
            let committed = self.committed(proposals).await;
            if committed.is_err() {
                self.forget_proposed(term);
            }
            self.track_committed_producers()?;
            committed
        };
        tokio::time::timeout(timeout, write)
            .await
            .map_err(|_| ReplicationError::Timeout)?
    }

    /// OffsetForLeaderEpoch from the term history: `(epoch, end offset)`.
    pub fn end_offset_for_epoch(
        &self,
        requested_epoch: i32,
        current_leader_epoch: i32,
    ) -> Result<(i32, i64), ReplicationError> {
        self.check_leader(current_leader_epoch)?;
        Ok(self.terms.end_offset_for_epoch(requested_epoch))
    }

    /// Proposes the producer's batches (one Raft entry each) on the leader and answers once
    /// they are committed and applied, whatever `acks` (see the module docs).
    pub async fn produce(
        &self,
        records: Bytes,
        min_insync_replicas: usize,
        timeout: Duration,
    ) -> Result<ProduceOutcome, ReplicationError> {
        let headers = validate_batches(&records).map_err(BrokerError::from)?;
        if headers.is_empty() {
            return Err(BrokerError::InvalidRecord(
                "produce request without record batches".into(),
            )
            .into());
        }
        // Markers are the coordinator's to write: a client's would end others' transactions.
        if headers.iter().any(BatchHeader::is_control) {
            return Err(BrokerError::InvalidRecord(
                "control batches are not accepted from producers".into(),
            )
            .into());
        }
        if self.log.config().compact {
            if let Some(offset_delta) =
                sluice_log::first_keyless_record(&records).map_err(BrokerError::from)?
            {
                // Kafka's answer (INVALID_RECORD) and wording, as on one node.
                return Err(BrokerError::InvalidRecord(format!(
                    "Compacted topic cannot accept message without key in topic partition \
                     {}-{} (record {offset_delta} of the request).",
                    self.topic, self.index
                ))
                .into());
            }
        }
        if !self.is_leader() {
            return Err(ReplicationError::NotLeader);
        }
        if min_insync_replicas > 1 {
            // A new leader knows who is caught up once its first entry of the term commits.
            self.wait_for_term_applied().await?;
            if self.in_sync_replicas().len() < min_insync_replicas {
                return Err(ReplicationError::NotEnoughReplicas);
            }
        }
        let timestamps = self.timestamps.rules();
        timestamps.check(&headers, now_ms())?;
        let mut log_append_time_ms = -1;
        let records = if timestamps.log_append_time {
            // Only on the leader, once the request is accepted; validated above, since
            // stamping recomputes the CRCs.
            let now = now_ms();
            let mut stamped = BytesMut::from(records);
            stamp_log_append_time(&mut stamped, now).map_err(BrokerError::from)?;
            log_append_time_ms = now;
            stamped.freeze()
        } else {
            records
        };
        let sequenced = headers
            .iter()
            .any(|h| h.producer_id >= 0 && h.base_sequence >= 0);
        let write = async {
            if !sequenced {
                let entries = entries_of(&records, &headers)?;
                return self.committed(self.submit_all(entries, None)).await;
            }
            let (proposals, term) = match self.check_and_propose(&records, &headers).await? {
                Proposal::Proposed { proposals, term } => (proposals, term),
                Proposal::Duplicate { offset_first } => return Ok(offset_first),
                Proposal::InFlightDuplicate { term } => {
                    return self.committed_duplicate(&headers[0], term).await
                }
            };
            let committed = self.committed(proposals).await;
            if committed.is_err() {
                self.forget_proposed(term);
            }
            self.track_committed_producers()?;
            committed
        };
        let base_offset = tokio::time::timeout(timeout, write)
            .await
            .map_err(|_| ReplicationError::Timeout)??;
        Ok(ProduceOutcome {
            base_offset,
            log_append_time_ms,
            log_start_offset: self.log.log_start_offset(),
        })
    }

    /// Kafka's DeleteRecords on the leader: commits an entry that moves every replica's log
    /// start to `offset` (-1: the high watermark) as it applies, and answers this replica's
    /// log start once it has. `offset` past the high watermark is OFFSET_OUT_OF_RANGE.
    pub async fn delete_records(
        &self,
        offset: i64,
        timeout: Duration,
    ) -> Result<i64, ReplicationError> {
        if !self.is_leader() {
            return Err(ReplicationError::NotLeader);
        }
        let delete = async {
            // The high watermark covers every earlier term's entries once this term's first
            // entry applied.
            self.wait_for_term_applied().await?;
            let offset = delete_records_target(&self.log, offset);
            if !self.log.log_start_would_advance(offset)? {
                return Ok(self.log.log_start_offset());
            }
            match self
                .raft
                .client_write(PartitionEntry::log_start(offset, self.node_id))
                .await
            {
                Ok(_) => Ok(self.log.log_start_offset()),
                Err(openraft::error::RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                    Err(ReplicationError::NotLeader)
                }
                Err(e) => Err(ReplicationError::Raft(e.to_string())),
            }
        };
        tokio::time::timeout(timeout, delete)
            .await
            .map_err(|_| ReplicationError::Timeout)?
    }

    /// Checks an idempotent request's sequences against everything proposed before it and, if
    /// they follow, proposes its batches; Raft keeps them in the order proposed.
    async fn check_and_propose(
        &self,
        records: &Bytes,
        headers: &[BatchHeader],
    ) -> Result<Proposal, ReplicationError> {
        let _one_at_a_time = self.sequenced.lock().await;
        let term = self.wait_for_term_applied().await?;
        // Leadership may have gone while this request waited behind an earlier one of the
        // same producer (which then failed with NOT_LEADER): checking its sequence against
        // a table that lacks that batch would answer OUT_OF_ORDER_SEQUENCE_NUMBER, and
        // librdkafka bumps its producer epoch on that (re-sending in-flight messages as a
        // new epoch, which can duplicate them). A follower answers NOT_LEADER, as Kafka's
        // leader check at append does, and the client just retries at the new leader.
        if !self.is_leader() {
            return Err(ReplicationError::NotLeader);
        }
        self.track_committed_producers()?;
        // Before anything is recorded: a batch that is no valid entry fails the request alone.
        let entries = entries_of(records, headers)?;
        {
            let mut proposed = self.proposed.lock();
            if proposed.term != term {
                // Everything of earlier terms is committed (or gone) once the term's first
                // entry applied: the committed state is the whole truth.
                let committed = self.producers.lock();
                proposed.table = committed.table.clone();
                proposed.term = term;
                tracing::debug!(
                    topic = %self.topic,
                    partition = self.index,
                    term,
                    offset_tracked = committed.offset_tracked,
                    "producer state of the term taken from the committed log"
                );
            }
            let mut duplicate = None;
            for header in headers {
                match proposed.table.check(header) {
                    Ok(SequenceCheck::Duplicate { offset_first }) => duplicate = Some(offset_first),
                    Ok(SequenceCheck::Append) => {}
                    Err(error) => {
                        // The client's view and ours differ: the one line that says why.
                        tracing::debug!(
                            topic = %self.topic,
                            partition = self.index,
                            term,
                            %error,
                            "refused an idempotent batch"
                        );
                        return Err(error.into());
                    }
                }
            }
            match duplicate {
                Some(_) if headers.len() > 1 => {
                    return Err(BrokerError::InvalidRecord(
                        "a retried idempotent batch must be sent alone".into(),
                    )
                    .into())
                }
                Some(offset_first) if offset_first >= 0 => {
                    return Ok(Proposal::Duplicate { offset_first })
                }
                Some(_) => return Ok(Proposal::InFlightDuplicate { term }),
                None => {}
            }
            let now = now_ms();
            for header in headers {
                let unassigned = BatchHeader {
                    base_offset: -1,
                    ..*header
                };
                // The batch's own timestamp, as the committed state replays it.
                proposed
                    .table
                    .record(&unassigned, header.max_timestamp.min(now));
            }
        }
        Ok(Proposal::Proposed {
            proposals: self.submit_all(entries, Some(term)),
            term,
        })
    }

    /// Only a lost leadership fails a proposal: the next term rebuilds the proposed state from
    /// the committed one. A proposal of an earlier term that fails late (it waited in the
    /// proposer while this node lost the leadership and won it again) leaves the current
    /// term's state alone: rebuilt from the committed log, that state would lack the batches
    /// this term has proposed and not committed yet, and refuse their producers' next
    /// batches as out of order.
    fn forget_proposed(&self, term: u64) {
        let mut proposed = self.proposed.lock();
        if proposed.term == term {
            proposed.term = 0;
        }
    }

    /// A retry of a batch that the leader of `term` proposed and has not committed yet: answers
    /// with its offset once it commits, or `NotLeader` once the term is over (the proposal may
    /// have failed with it; the client asks the next term, which knows).
    async fn committed_duplicate(
        &self,
        header: &BatchHeader,
        term: u64,
    ) -> Result<i64, ReplicationError> {
        let mut progress = self.progress.clone();
        loop {
            if !self.is_leader() || self.leader_and_term().1 != term {
                return Err(ReplicationError::NotLeader);
            }
            self.track_committed_producers()?;
            let check = self.producers.lock().table.check(header);
            if let Ok(SequenceCheck::Duplicate { offset_first }) = check {
                return Ok(offset_first);
            }
            progress
                .changed()
                .await
                .map_err(|_| ReplicationError::NotLeader)?;
        }
    }

    /// A new leader's first entry of its term commits everything before it: once it is
    /// applied, the committed producer state is complete.
    async fn wait_for_term_applied(&self) -> Result<u64, ReplicationError> {
        let (_, term) = self.leader_and_term();
        let mut progress = self.progress.clone();
        let applied_in_term =
            |p: &ApplyProgress| p.last_applied.is_some_and(|id| id.leader_id.term >= term);
        tokio::time::timeout(TERM_APPLY_WAIT_MAX, progress.wait_for(applied_in_term))
            .await
            .map_err(|_| ReplicationError::Timeout)?
            .map_err(|_| ReplicationError::NotLeader)?;
        Ok(term)
    }

    /// Hands the entries to the proposer in order, without waiting for any to commit; with
    /// `term`, they are proposed in that term or fail.
    fn submit_all(
        &self,
        entries: Vec<(PartitionEntry, i64)>,
        term: Option<u64>,
    ) -> Vec<ProposedBatch> {
        entries
            .into_iter()
            .map(|(entry, offsets)| self.proposer.submit(entry, offsets, term))
            .collect()
    }

    /// Waits for proposed batches to be committed and applied: the first one's base offset.
    async fn committed(&self, proposals: Vec<ProposedBatch>) -> Result<i64, ReplicationError> {
        let mut base_offset = None;
        for proposal in proposals {
            let offset = match proposal.await {
                Ok(Ok(offset)) => offset,
                Ok(Err(ProposalFailure::Raft(reason))) => {
                    return Err(ReplicationError::Raft(reason))
                }
                // Lost leadership, or the group stopped with the proposal pending.
                Ok(Err(ProposalFailure::NotLeader)) | Err(_) => {
                    return Err(ReplicationError::NotLeader)
                }
            };
            base_offset.get_or_insert(offset);
        }
        base_offset.ok_or_else(|| BrokerError::InvalidRecord("no batches".into()).into())
    }
}

/// A share partition on the partition's leader reads the leader's replica.
impl ShareLog for Replica {
    fn topic(&self) -> &str {
        &self.topic
    }
    fn index(&self) -> i32 {
        self.index
    }
    fn log(&self) -> &Arc<PartitionLog> {
        &self.log
    }
    fn high_watermark(&self) -> i64 {
        self.log.high_watermark()
    }
    fn log_start_offset(&self) -> i64 {
        self.log.log_start_offset()
    }
    fn last_stable_offset(&self) -> i64 {
        Replica::last_stable_offset(self).unwrap_or_else(|error| {
            tracing::warn!(topic = %self.topic, partition = self.index, %error, "reading the producer state failed");
            // Nothing past what is known stable is delivered.
            self.log.log_start_offset()
        })
    }
    fn fetch_isolated(
        &self,
        offset: i64,
        bytes_max: usize,
        isolation: IsolationLevel,
    ) -> Result<FetchedPartition, String> {
        self.fetch(offset, bytes_max, -1, isolation)
            .map_err(|e| e.to_string())
    }
    fn count_fetched(&self, _records: &[u8]) {}
    fn leadership(&self) -> u64 {
        self.leader_and_term().1
    }
}

/// The Raft entries of a request's batches with the offsets each takes; a batch that is not a
/// valid entry fails the request before any is proposed. `headers` are `validate_batches`' for
/// `records`, so no CRC is computed again.
fn entries_of(
    records: &Bytes,
    headers: &[BatchHeader],
) -> Result<Vec<(PartitionEntry, i64)>, ReplicationError> {
    let mut entries = Vec::with_capacity(headers.len());
    let mut position = 0usize;
    for header in headers {
        let length = header.total_bytes();
        let batch = records.slice(position..position + length);
        position += length;
        let entry = PartitionEntry::validated(batch, header)
            .map_err(|e| BrokerError::InvalidRecord(e.to_string()))?;
        entries.push((entry, i64::from(header.last_offset_delta) + 1));
    }
    Ok(entries)
}
