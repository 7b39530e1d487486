//! Hands a partition leader's batches to Raft, grouping those that arrive while earlier
//! entries are in flight into one entry.
//!
//! openraft 0.9's leader appends one proposal at a time and waits for that append's fsync
//! before it takes the next, so one entry per producer batch caps a partition at one batch
//! per fsync, however many producers are waiting. The proposer keeps at most
//! [`ENTRIES_IN_FLIGHT`] entries proposed and not yet applied; batches submitted meanwhile
//! queue here and go out together as one [`PartitionEntry::group`] (one append, one fsync and
//! one replication round for all of them). A lone batch is proposed at once, as before.

use std::sync::Arc;

use openraft::error::ClientWriteError;
use openraft::{Raft, ServerState};
use sluice_cluster::partition::{PartitionEntry, PartitionRaft};
use sluice_cluster::NodeId;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Entries proposed and not yet applied, at most: enough to keep the leader's appends and
/// the followers' replication busy at once.
pub const ENTRIES_IN_FLIGHT: usize = 4;
/// Batch bytes one grouped entry holds at most (a larger batch travels alone): about what one
/// AppendEntries carries. Larger groups mean fewer of openraft's one-entry-per-fsync appends
/// but less pipelining: 4 MiB groups (and 2 MiB ones) were slower than 1 MiB on one partition
/// of 1 KiB messages (1 MB producer batches) in alternated runs, with more CPU per message.
pub const GROUP_BYTES_MAX: usize = 1 << 20;
/// Batches one grouped entry holds at most.
pub const GROUP_BATCHES_MAX: usize = 1024;

/// Counter of entries this node proposed to partition groups as their leader.
pub const ENTRIES_PROPOSED_METRIC: &str = "sluice_raft_entries_proposed_total";
/// Counter of producer batches in those entries (above the entries: batches were grouped).
pub const BATCHES_PROPOSED_METRIC: &str = "sluice_raft_batches_proposed_total";

/// Why a submitted batch was not committed.
#[derive(Debug, Clone)]
pub enum ProposalFailure {
    /// This node lost (or never had) the leadership, or the group stopped.
    NotLeader,
    Raft(String),
}

/// Resolves to the batch's base offset once its entry is committed and applied.
pub type ProposedBatch = oneshot::Receiver<Result<i64, ProposalFailure>>;

struct Submission {
    entry: PartitionEntry,
    /// Offsets the batch takes (`lastOffsetDelta + 1`).
    offsets: i64,
    /// The leader's term the batch was checked in, if its validity depends on the term.
    term: Option<u64>,
    reply: oneshot::Sender<Result<i64, ProposalFailure>>,
}

/// One partition leader's proposer; stops when dropped.
pub struct EntryProposer {
    submissions: mpsc::UnboundedSender<Submission>,
}

impl EntryProposer {
    /// Starts the proposing task (needs a Tokio runtime). `leader` is this node.
    pub fn start(raft: Raft<PartitionRaft>, leader: NodeId) -> EntryProposer {
        let (submissions, queue) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, leader, queue));
        EntryProposer { submissions }
    }

    /// Queues one batch (checked by [`PartitionEntry::new`]) taking `offsets` offsets.
    /// Batches are proposed in the order submitted. A batch checked against this leader's
    /// state of `term` (an idempotent producer's sequence) fails with `NotLeader` instead
    /// of being proposed in a later term, whose state was built without it.
    pub fn submit(&self, entry: PartitionEntry, offsets: i64, term: Option<u64>) -> ProposedBatch {
        let (reply, receiver) = oneshot::channel();
        let submission = Submission {
            entry,
            offsets,
            term,
            reply,
        };
        if let Err(mpsc::error::SendError(submission)) = self.submissions.send(submission) {
            let _ = submission.reply.send(Err(ProposalFailure::NotLeader));
        }
        receiver
    }
}

async fn run(
    raft: Raft<PartitionRaft>,
    leader: NodeId,
    mut queue: mpsc::UnboundedReceiver<Submission>,
) {
    let in_flight = Arc::new(Semaphore::new(ENTRIES_IN_FLIGHT));
    let mut carried: Option<Submission> = None;
    loop {
        // Waiting for a free slot first lets submissions pile up into the next group.
        let Ok(slot) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(submission) => submission,
            None => match queue.recv().await {
                Some(submission) => submission,
                None => return,
            },
        };
        let (group, next) = take_group(first, &mut queue);
        carried = next;
        // A batch checked in an earlier term may wait here while this node loses the
        // leadership and wins it again: proposed now, it would follow a producer state the
        // new term rebuilt without it, and the producer's next batch would look out of order.
        // (The metrics trail Raft's core by one of its loop turns; an election takes longer.)
        let current_term = {
            let metrics = raft.metrics();
            let metrics = metrics.borrow();
            if metrics.state == ServerState::Leader {
                Some(metrics.current_term)
            } else {
                None
            }
        };
        let mut replies = Vec::with_capacity(group.len());
        let mut entries = Vec::with_capacity(group.len());
        for submission in group {
            if submission.term.is_some() && submission.term != current_term {
                let _ = submission.reply.send(Err(ProposalFailure::NotLeader));
                continue;
            }
            replies.push((submission.offsets, submission.reply));
            entries.push(submission.entry);
        }
        if entries.is_empty() {
            continue;
        }
        let grouped = entries.len() > 1;
        let batches = entries.len() as u64;
        let proposal = match raft
            .client_write_ff(PartitionEntry::group(entries, leader))
            .await
        {
            Ok(proposal) => {
                metrics::counter!(ENTRIES_PROPOSED_METRIC).increment(1);
                metrics::counter!(BATCHES_PROPOSED_METRIC).increment(batches);
                proposal
            }
            Err(_) => {
                // The group stopped: so does this proposer, once the replica goes.
                answer_all(replies, Err(ProposalFailure::NotLeader));
                continue;
            }
        };
        tokio::spawn(async move {
            let applied = match proposal.await {
                Ok(Ok(response)) => Ok(response.data.base_offset),
                Ok(Err(ClientWriteError::ForwardToLeader(_))) | Err(_) => {
                    Err(ProposalFailure::NotLeader)
                }
                Ok(Err(error)) => Err(ProposalFailure::Raft(error.to_string())),
            };
            drop(slot);
            match applied {
                Ok(base_offset) => {
                    // A group's head batch takes the entry's first offset; the batches follow
                    // it back to back, as the log assigned them.
                    let mut next = if grouped {
                        base_offset + 1
                    } else {
                        base_offset
                    };
                    for (offsets, reply) in replies {
                        let _ = reply.send(Ok(next));
                        next += offsets;
                    }
                }
                Err(failure) => answer_all(replies, Err(failure)),
            }
        });
    }
}

/// `first` and the submissions waiting behind it, up to [`GROUP_BYTES_MAX`] of batches
/// (`first` whatever its size) and [`GROUP_BATCHES_MAX`] batches; also the first one left
/// out, if it was taken from the queue.
fn take_group(
    first: Submission,
    queue: &mut mpsc::UnboundedReceiver<Submission>,
) -> (Vec<Submission>, Option<Submission>) {
    let mut bytes = first.entry.batch.len();
    let mut group = vec![first];
    while group.len() < GROUP_BATCHES_MAX {
        let Ok(next) = queue.try_recv() else {
            break;
        };
        if bytes + next.entry.batch.len() > GROUP_BYTES_MAX {
            return (group, Some(next));
        }
        bytes += next.entry.batch.len();
        group.push(next);
    }
    (group, None)
}

fn answer_all(
    replies: Vec<(i64, oneshot::Sender<Result<i64, ProposalFailure>>)>,
    answer: Result<i64, ProposalFailure>,
) {
    for (_, reply) in replies {
        let _ = reply.send(answer.clone());
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io;
    use std::time::Duration;

    use bytes::Bytes;
    use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError};
    use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
    use openraft::raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest,
        InstallSnapshotResponse, VoteRequest, VoteResponse,
    };
    use openraft::{CommittedLeaderId, Config, LogId, Vote};
    use sluice_cluster::partition;
    use sluice_cluster::NodeAddress;
    use sluice_log::{LogConfig, RealDisk, Record, RecordBatchBuilder};

    use super::*;

    /// A one-node group never calls its network.
    struct NoPeers;

    type Refused<E> = RPCError<NodeId, NodeAddress, E>;

    fn refused<E: std::error::Error>() -> Refused<E> {
        RPCError::Network(NetworkError::new(&io::Error::other("no peers")))
    }

    impl RaftNetworkFactory<PartitionRaft> for NoPeers {
        type Network = NoPeers;

        async fn new_client(&mut self, _target: NodeId, _node: &NodeAddress) -> NoPeers {
            NoPeers
        }
    }

    impl RaftNetwork<PartitionRaft> for NoPeers {
        async fn append_entries(
            &mut self,
            _rpc: AppendEntriesRequest<PartitionRaft>,
            _option: RPCOption,
        ) -> Result<AppendEntriesResponse<NodeId>, Refused<RaftError<NodeId>>> {
            Err(refused())
        }

        async fn install_snapshot(
            &mut self,
            _rpc: InstallSnapshotRequest<PartitionRaft>,
            _option: RPCOption,
        ) -> Result<InstallSnapshotResponse<NodeId>, Refused<RaftError<NodeId, InstallSnapshotError>>>
        {
            Err(refused())
        }

        async fn vote(
            &mut self,
            _rpc: VoteRequest<NodeId>,
            _option: RPCOption,
        ) -> Result<VoteResponse<NodeId>, Refused<RaftError<NodeId>>> {
            Err(refused())
        }
    }

    fn entry(value: &str) -> PartitionEntry {
        let mut builder = RecordBatchBuilder::new();
        builder.push(Record {
            timestamp: 1_700_000_000_000,
            value: Some(value.as_bytes().to_vec()),
            ..Default::default()
        });
        PartitionEntry::new(Bytes::from(builder.build())).expect("valid batch")
    }

    fn submission(value_bytes: usize) -> Submission {
        Submission {
            entry: entry(&"x".repeat(value_bytes)),
            offsets: 1,
            term: None,
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn a_group_takes_the_waiting_batches_up_to_its_bounds() {
        // Ten batches of about 300 KiB wait behind a first one.
        let fill = || {
            let (sender, queue) = mpsc::unbounded_channel();
            for _ in 0..10 {
                let _ = sender.send(submission(300 << 10));
            }
            queue
        };
        let mut queue = fill();
        let (group, carried) = take_group(submission(300 << 10), &mut queue);
        assert_eq!(group.len(), 3, "3 × 300 KiB and their headers fit 1 MiB");
        assert!(carried.is_some());
        let (group, carried) = take_group(carried.unwrap(), &mut queue);
        assert_eq!(group.len(), 3, "the carried one heads the next group");
        assert!(carried.is_some());

        // A batch larger than the bound still goes, alone.
        let mut queue = fill();
        let (group, carried) = take_group(submission(2 << 20), &mut queue);
        assert_eq!(group.len(), 1);
        assert!(carried.is_some());

        // Small batches: at most GROUP_BATCHES_MAX of them.
        let (sender, mut queue) = mpsc::unbounded_channel();
        for _ in 0..GROUP_BATCHES_MAX + 5 {
            let _ = sender.send(submission(10));
        }
        let (group, carried) = take_group(submission(10), &mut queue);
        assert_eq!(group.len(), GROUP_BATCHES_MAX);
        assert!(carried.is_none(), "the rest stay queued");

        // Nothing waiting: the first goes alone and nothing is carried.
        let (_sender, mut empty) = mpsc::unbounded_channel();
        let (group, carried) = take_group(submission(10), &mut empty);
        assert_eq!(group.len(), 1);
        assert!(carried.is_none());
    }

    async fn leader_in_term_above(raft: &Raft<PartitionRaft>, above: u64) -> u64 {
        let mut metrics = raft.metrics();
        let leading = tokio::time::timeout(
            Duration::from_secs(10),
            metrics.wait_for(|m| m.state == ServerState::Leader && m.current_term > above),
        )
        .await
        .expect("leader in time")
        .expect("raft alive");
        leading.current_term
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_checked_in_an_earlier_term_is_not_proposed_in_a_later_one() {
        let dir = tempfile::tempdir().unwrap();
        let (log_store, state_machine, _log) = partition::open(
            Arc::new(RealDisk),
            &dir.path().join("t-0"),
            LogConfig::default(),
        )
        .unwrap();
        let config = Arc::new(Config::default().validate().unwrap());
        let raft = Raft::new(1, config, NoPeers, log_store, state_machine)
            .await
            .unwrap();
        let node = NodeAddress {
            cluster_addr: "127.0.0.1:9093".into(),
            kafka_addr: "127.0.0.1:9092".into(),
        };
        raft.initialize(BTreeMap::from([(1, node)])).await.unwrap();
        let first_term = leader_in_term_above(&raft, 0).await;
        let proposer = EntryProposer::start(raft.clone(), 1);

        let checked_now = proposer.submit(entry("a"), 1, Some(first_term));
        assert!(checked_now.await.unwrap().is_ok());

        // The node loses its term to a candidate with a longer log (it votes for it and
        // steps down), hears nothing from it and wins the next term.
        let candidate = Vote::new(first_term + 1, 2);
        let longer = LogId::new(CommittedLeaderId::new(first_term + 1, 2), 1_000);
        // Refused while the leader's lease lasts (an election timeout).
        let mut granted = false;
        for _ in 0..100 {
            let answer = raft
                .vote(VoteRequest::new(candidate, Some(longer)))
                .await
                .unwrap();
            if answer.vote_granted {
                granted = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(granted);
        let second_term = leader_in_term_above(&raft, first_term + 1).await;

        let checked_before = proposer.submit(entry("b"), 1, Some(first_term));
        assert!(matches!(
            checked_before.await.unwrap(),
            Err(ProposalFailure::NotLeader)
        ));
        let checked_again = proposer.submit(entry("b"), 1, Some(second_term));
        let unchecked = proposer.submit(entry("c"), 1, None);
        let first = checked_again.await.unwrap().ok().unwrap();
        assert_eq!(unchecked.await.unwrap().ok(), Some(first + 1));
        raft.shutdown().await.unwrap();
    }
}
