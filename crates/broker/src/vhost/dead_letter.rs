//! Dead-lettering: how a message that leaves a queue by rejection, expiry or overflow is
//! rewritten (the `x-death` history RabbitMQ writes) before it is republished to the queue's
//! dead-letter exchange.

use amq_protocol_types::{AMQPValue, FieldArray, FieldTable, LongString};

use super::message::{value_as_str, Message};
use super::{Queue, VirtualHost};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    Rejected,
    Expired,
    MaxLen,
}

impl DeadLetterReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Rejected => "rejected",
            DeadLetterReason::Expired => "expired",
            DeadLetterReason::MaxLen => "maxlen",
        }
    }
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// Records the death in the message's headers as RabbitMQ does: one `x-death` entry per
/// (queue, reason), newest first, with a count; `x-first-death-*` once. A per-message TTL is
/// removed (kept as `original-expiration`) so the message does not expire again on arrival.
pub fn record_death(message: &mut Message, queue: &str, reason: DeadLetterReason, now_s: u64) {
    let mut headers = message.properties.headers.take().unwrap_or_default();
    let mut deaths: Vec<AMQPValue> = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(array)) => array.as_slice().to_vec(),
        _ => Vec::new(),
    };
    let same = |entry: &AMQPValue| match entry {
        AMQPValue::FieldTable(t) => {
            t.inner().get("queue").and_then(value_as_str) == Some(queue)
                && t.inner().get("reason").and_then(value_as_str) == Some(reason.as_str())
        }
        _ => false,
    };
    let existing = deaths.iter().position(same).map(|i| deaths.remove(i));
    let mut entry = match existing {
        Some(AMQPValue::FieldTable(t)) => t,
        _ => FieldTable::default(),
    };
    let count = match entry.inner().get("count") {
        Some(v) => super::message::value_as_i64(v).unwrap_or(0) + 1,
        None => 1,
    };
    entry.insert("count".into(), AMQPValue::LongLongInt(count));
    entry.insert("reason".into(), long_string(reason.as_str()));
    entry.insert("queue".into(), long_string(queue));
    entry.insert("time".into(), AMQPValue::Timestamp(now_s));
    entry.insert("exchange".into(), long_string(&message.exchange));
    let mut keys = vec![long_string(&message.routing_key)];
    for cc in ["CC", "BCC"] {
        if let Some(AMQPValue::FieldArray(more)) = headers.inner().get(cc) {
            keys.extend(more.as_slice().iter().cloned());
        }
    }
    entry.insert(
        "routing-keys".into(),
        AMQPValue::FieldArray(FieldArray::from(keys)),
    );
    if let Some(expiration) = message.properties.expiration.take() {
        entry.insert("original-expiration".into(), long_string(&expiration));
    }
    deaths.insert(0, AMQPValue::FieldTable(entry));
    if !headers.contains_key("x-first-death-reason") {
        headers.insert("x-first-death-reason".into(), long_string(reason.as_str()));
        headers.insert("x-first-death-queue".into(), long_string(queue));
        headers.insert(
            "x-first-death-exchange".into(),
            long_string(&message.exchange),
        );
    }
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(deaths)),
    );
    message.properties.headers = Some(headers);
}

impl VirtualHost {
    /// Republishes a message that died in `queue` to the queue's dead-letter exchange, if it
    /// has one (else the message is dropped, as in RabbitMQ).
    pub(crate) fn dead_letter(
        &self,
        queue: &Queue,
        mut message: Message,
        reason: DeadLetterReason,
    ) {
        let Some(dlx) = queue.options.dead_letter_exchange.clone() else {
            return;
        };
        record_death(
            &mut message,
            &queue.name,
            reason,
            (crate::now_ms() / 1000) as u64,
        );
        let routing_key = queue
            .options
            .dead_letter_routing_key
            .clone()
            .unwrap_or_else(|| message.routing_key.clone());
        message.exchange = dlx.clone();
        message.routing_key = routing_key.clone();
        let targets = {
            let topology = self.topology.read();
            if !topology.exchanges.contains_key(&dlx) {
                return;
            }
            let mut targets =
                topology.route(&dlx, &routing_key, message.properties.headers.as_ref());
            // A message expiring around a cycle back into its own queue is dropped, as in RabbitMQ.
            if reason != DeadLetterReason::Rejected {
                targets.queues.retain(|q| q.name != queue.name);
            }
            targets
        };
        // Counted once per message republished to its dead-letter exchange, routed or not.
        self.counters.dead_lettered.increment(1);
        // Durability of dead-lettered copies is the group commit's, not awaited by anyone.
        drop(self.deliver_to(targets, message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_death_in_the_same_queue_counts_up() {
        let mut message = Message {
            exchange: "ex".into(),
            routing_key: "rk".into(),
            properties: Default::default(),
            body: bytes::Bytes::new(),
        };
        message.properties.expiration = Some("100".into());
        record_death(&mut message, "q", DeadLetterReason::Expired, 10);
        assert_eq!(message.properties.expiration, None);
        record_death(&mut message, "q", DeadLetterReason::Expired, 11);
        let headers = message.properties.headers.unwrap();
        let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
            panic!("no x-death")
        };
        assert_eq!(deaths.as_slice().len(), 1);
        let AMQPValue::FieldTable(entry) = &deaths.as_slice()[0] else {
            panic!()
        };
        assert_eq!(entry.inner().get("count"), Some(&AMQPValue::LongLongInt(2)));
        assert_eq!(
            entry.inner().get("original-expiration"),
            Some(&long_string("100"))
        );
        assert_eq!(
            headers.inner().get("x-first-death-reason"),
            Some(&long_string("expired"))
        );
    }
}
