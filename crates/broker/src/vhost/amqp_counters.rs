//! The AMQP message counters of a virtual host, registered once when it opens so that
//! publishing, delivering and settling add to them without a registry lookup.

use metrics::Counter;

pub(crate) struct AmqpCounters {
    /// Publishes accepted by an existing exchange, whether or not any queue took them.
    pub(crate) published: Counter,
    /// Every delivery, redeliveries included (basic.deliver and basic.get-ok).
    pub(crate) delivered: Counter,
    pub(crate) redelivered: Counter,
    pub(crate) acked: Counter,
    pub(crate) dead_lettered: Counter,
}

impl AmqpCounters {
    pub(crate) fn register() -> AmqpCounters {
        AmqpCounters {
            published: metrics::counter!("sluice_amqp_messages_published_total"),
            delivered: metrics::counter!("sluice_amqp_messages_delivered_total"),
            redelivered: metrics::counter!("sluice_amqp_messages_redelivered_total"),
            acked: metrics::counter!("sluice_amqp_messages_acked_total"),
            dead_lettered: metrics::counter!("sluice_amqp_messages_dead_lettered_total"),
        }
    }

    pub(crate) fn delivered(&self, redelivered: bool) {
        self.delivered.increment(1);
        if redelivered {
            self.redelivered.increment(1);
        }
    }
}
