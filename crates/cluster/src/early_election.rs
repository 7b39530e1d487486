//! Campaigning as soon as a dead leader's lease allows, not when the election timer fires.
//!
//! When a leader's process dies its kernel closes the node's connections, so the followers
//! hear of it within a round trip ([`LinkEvent::Down`]). openraft would still wait for its
//! election timer: the leader lease (`election_timeout_max`), then the node's own randomised
//! timeout, checked on a tick every 1.5 heartbeats: 0.55–0.8 s with our defaults, more when
//! two followers fire on the same tick and split the vote. Instead, the surviving voters of
//! every group the lost node led campaign in turn: the lowest id as soon as every voter's lease
//! on the dead leader has run out, the next one a step later if nobody has campaigned yet.
//!
//! Only the moment is chosen here. openraft's rules decide the vote, so a voter with a longer
//! log still refuses a shorter one (the timers then finish the job), and a leader that is alive
//! but cut off from one follower keeps the votes of the followers that still hear it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::{Raft, RaftTypeConfig, ServerState};
use tokio_util::sync::CancellationToken;

use crate::transport::{LinkEvent, Transport};
use crate::NodeId;

/// Past the lease, so that no voter still refuses on the dead leader's behalf.
const LEASE_MARGIN: Duration = Duration::from_millis(30);

/// What a group does when the connection to a peer drops.
pub type OnPeerLost = Arc<dyn Fn(NodeId) + Send + Sync>;

/// For `raft`: if `lost` leads it, campaign at this node's turn (see the module docs).
pub fn on_peer_lost<C>(raft: Raft<C>, transport: Transport, config: &openraft::Config) -> OnPeerLost
where
    C: RaftTypeConfig<NodeId = NodeId>,
{
    let lease = Duration::from_millis(config.election_timeout_max);
    // A vote round (two fsyncs of the vote and a round trip) fits well inside this.
    let step = Duration::from_millis(config.election_timeout_min);
    Arc::new(move |lost| campaign_if_led_by(&raft, &transport, lost, lease + LEASE_MARGIN, step))
}

fn campaign_if_led_by<C>(
    raft: &Raft<C>,
    transport: &Transport,
    lost: NodeId,
    first_turn: Duration,
    step: Duration,
) where
    C: RaftTypeConfig<NodeId = NodeId>,
{
    let (term, rank) = {
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        if metrics.current_leader != Some(lost) || metrics.state != ServerState::Follower {
            return;
        }
        let survivors: BTreeSet<NodeId> = metrics
            .membership_config
            .membership()
            .voter_ids()
            .filter(|id| *id != lost)
            .collect();
        let Some(rank) = survivors.iter().position(|id| *id == metrics.id) else {
            return; // a learner does not campaign
        };
        (metrics.current_term, rank)
    };
    let delay = first_turn + step * u32::try_from(rank).unwrap_or(u32::MAX);
    let raft = raft.clone();
    let transport = transport.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        if transport.is_connected(lost) {
            return; // back already: it may well be alive, leave it to the timers
        }
        let undecided = {
            let metrics = raft.metrics();
            let metrics = metrics.borrow();
            // A new term means someone campaigned (or won) already.
            metrics.state == ServerState::Follower
                && metrics.current_term == term
                && metrics.current_leader.is_none_or(|leader| leader == lost)
        };
        if undecided {
            tracing::debug!(lost, term, "leader's connection lost: campaigning");
            if let Err(error) = raft.trigger().elect().await {
                tracing::debug!(%error, "early election: group stopped");
            }
        }
    });
}

/// Calls `handlers()`'s entries for every peer whose connection drops, until `stop`.
pub async fn watch_links(
    transport: Transport,
    stop: CancellationToken,
    handlers: impl Fn() -> Vec<OnPeerLost> + Send + 'static,
) {
    let mut events = transport.link_events();
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = events.recv() => event,
        };
        match event {
            Ok(LinkEvent::Down(lost)) => {
                for handler in handlers() {
                    handler(lost);
                }
            }
            Ok(LinkEvent::Up(_)) => {}
            // Missed events only cost the timers' slower election.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}
