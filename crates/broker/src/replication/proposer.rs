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
use openraft::Raft;
use sluice_cluster::partition::{PartitionEntry, PartitionRaft};
use sluice_cluster::NodeId;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Entries proposed and not yet applied, at most: enough to keep the leader's appends and
/// the followers' replication busy at once.
pub const ENTRIES_IN_FLIGHT: usize = 4;
/// Batch bytes one grouped entry holds at most (a larger batch travels alone), under the bytes
/// one AppendEntries carries.
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
    /// Batches are proposed in the order submitted.
    pub fn submit(&self, entry: PartitionEntry, offsets: i64) -> ProposedBatch {
        let (reply, receiver) = oneshot::channel();
        let submission = Submission {
            entry,
            offsets,
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
        let mut bytes = first.entry.batch.len();
        let mut group = vec![first];
        while group.len() < GROUP_BATCHES_MAX {
            let Ok(next) = queue.try_recv() else {
                break;
            };
            if bytes + next.entry.batch.len() > GROUP_BYTES_MAX {
                carried = Some(next);
                break;
            }
            bytes += next.entry.batch.len();
            group.push(next);
        }
        let mut replies = Vec::with_capacity(group.len());
        let mut entries = Vec::with_capacity(group.len());
        for submission in group {
            replies.push((submission.offsets, submission.reply));
            entries.push(submission.entry);
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

fn answer_all(
    replies: Vec<(i64, oneshot::Sender<Result<i64, ProposalFailure>>)>,
    answer: Result<i64, ProposalFailure>,
) {
    for (_, reply) in replies {
        let _ = reply.send(answer.clone());
    }
}
