//! Read-only views of the virtual host for the HTTP API: its exchanges, queues, bindings,
//! channels, alarms and traffic. Each takes the topology lock briefly and returns copies.

use std::sync::{Arc, Weak};

use super::{Binding, Exchange, Queue, Session, StreamQueue, VhostConfig, VirtualHost};
use crate::TrafficTotals;

/// One AMQP channel (a session) as the HTTP API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSummary {
    pub connection: super::ConnectionId,
    pub channel: u16,
    pub user: String,
    pub consumers: u64,
    pub unacked: u64,
    pub prefetch_count: u32,
    pub global_prefetch_count: u32,
    pub in_transaction: bool,
    pub closed: bool,
}

/// A queue or a stream queue, for listings.
#[derive(Clone)]
pub enum QueueSummary {
    Classic(Arc<Queue>),
    Stream(Arc<StreamQueue>),
}

impl VirtualHost {
    /// The name clients give in connection.open (`/` is the default virtual host).
    pub fn vhost_name(&self) -> &str {
        &self.name
    }

    pub fn broker(&self) -> &Arc<crate::Broker> {
        &self.broker
    }

    pub fn config(&self) -> &VhostConfig {
        &self.config
    }

    /// Every exchange, sorted by name (the default exchange is `""`).
    pub fn exchanges(&self) -> Vec<Exchange> {
        let mut exchanges: Vec<Exchange> =
            self.topology.read().exchanges.values().cloned().collect();
        exchanges.sort_by(|a, b| a.name.cmp(&b.name));
        exchanges
    }

    pub fn exchange(&self, name: &str) -> Option<Exchange> {
        self.topology.read().exchanges.get(name).cloned()
    }

    /// Every queue and stream queue, sorted by name.
    pub fn queues(&self) -> Vec<(String, QueueSummary)> {
        let topology = self.topology.read();
        let mut queues: Vec<(String, QueueSummary)> = topology
            .queues
            .iter()
            .map(|(name, queue)| (name.clone(), QueueSummary::Classic(Arc::clone(queue))))
            .chain(
                topology
                    .streams
                    .iter()
                    .map(|(name, stream)| (name.clone(), QueueSummary::Stream(Arc::clone(stream)))),
            )
            .collect();
        queues.sort_by(|a, b| a.0.cmp(&b.0));
        queues
    }

    pub fn queue(&self, name: &str) -> Option<QueueSummary> {
        let topology = self.topology.read();
        if let Some(queue) = topology.queues.get(name) {
            return Some(QueueSummary::Classic(Arc::clone(queue)));
        }
        topology
            .streams
            .get(name)
            .map(|stream| QueueSummary::Stream(Arc::clone(stream)))
    }

    /// Every binding, by source exchange, then destination and routing key.
    pub fn bindings(&self) -> Vec<Binding> {
        let mut bindings: Vec<Binding> = self
            .topology
            .read()
            .bindings
            .values()
            .flatten()
            .cloned()
            .collect();
        bindings.sort_by(|a, b| {
            (&a.source, &a.destination, &a.routing_key).cmp(&(
                &b.source,
                &b.destination,
                &b.routing_key,
            ))
        });
        bindings
    }

    /// Why publishers are blocked now (`low on memory`, `low on disk`), if they are.
    pub fn alarm(&self) -> Option<String> {
        self.resources.alarm()
    }

    /// Messages published into the vhost (in), and delivered from its queues (out, summed over
    /// the queues that exist now).
    pub fn traffic(&self) -> TrafficTotals {
        let (messages_out, bytes_out) = self
            .topology
            .read()
            .queues
            .values()
            .map(|queue| queue.stats())
            .fold((0, 0), |(messages, bytes), stats| {
                (
                    messages + stats.delivered_total,
                    bytes + stats.delivered_bytes_total,
                )
            });
        let published = self.traffic.totals();
        TrafficTotals {
            messages_out,
            bytes_out,
            ..published
        }
    }

    pub(super) fn register_session(&self, session: &Arc<Session>) {
        let mut sessions = self.sessions.lock();
        // Pruned here too, so channels opened and closed in a loop do not pile up.
        if sessions.len() >= 64 && sessions.len().is_power_of_two() {
            sessions.retain(|weak| weak.strong_count() > 0);
        }
        sessions.push(Arc::downgrade(session));
    }

    /// Every open channel, by connection and channel number.
    pub fn channels(&self) -> Vec<ChannelSummary> {
        let live: Vec<Arc<Session>> = {
            let mut sessions = self.sessions.lock();
            sessions.retain(|weak| weak.strong_count() > 0);
            sessions.iter().filter_map(Weak::upgrade).collect()
        };
        let mut channels: Vec<ChannelSummary> = live
            .iter()
            .map(|session| session.summary())
            .filter(|summary| !summary.closed)
            .collect();
        channels.sort_by_key(|c| (c.connection, c.channel));
        channels
    }
}
