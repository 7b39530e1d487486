//! Kafka topics seen from AMQP: a queue declared with `x-queue-type: stream` is the Kafka topic
//! of the same name (created if missing). Messages routed to it are appended to the topic, one
//! record each, so Kafka consumers read them; AMQP consumers of it read the topic from an
//! offset they choose (`x-stream-offset`), as RabbitMQ stream consumers do, and acks only
//! return credit: nothing is removed, retention is the topic's.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol_types::{AMQPValue, FieldTable};
use bytes::BytesMut;
use sluice_log::{decode_data_records, offset_after_batches, RecordBatchBuilder};

use super::message::{value_as_str, Message};
use super::queue::Consumer;
use super::VhostError;
use crate::{Broker, BrokerError};

/// Bytes read from a partition at a time by a stream consumer.
const FETCH_BYTES: usize = 1 << 20;
/// A caught-up consumer looks again at least this often (it is also woken by new data).
const IDLE_POLL: Duration = Duration::from_millis(200);

pub struct StreamQueue {
    pub name: String,
    broker: Arc<Broker>,
}

/// Where a stream consumer starts (the `x-stream-offset` consume argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStart {
    First,
    Last,
    Next,
    Offset(i64),
    /// Milliseconds since the epoch.
    Timestamp(i64),
}

impl StreamStart {
    pub fn from_arguments(arguments: &FieldTable) -> Result<StreamStart, VhostError> {
        let Some(value) = arguments.inner().get("x-stream-offset") else {
            return Ok(StreamStart::Next);
        };
        if let AMQPValue::Timestamp(seconds) = value {
            return Ok(StreamStart::Timestamp(
                (*seconds as i64).saturating_mul(1000),
            ));
        }
        if let Some(offset) = super::message::value_as_i64(value) {
            return Ok(StreamStart::Offset(offset.max(0)));
        }
        match value_as_str(value) {
            Some("first") => Ok(StreamStart::First),
            Some("last") => Ok(StreamStart::Last),
            Some("next") => Ok(StreamStart::Next),
            _ => Err(VhostError::PreconditionFailed(format!(
                "invalid x-stream-offset {value:?}: use first, last, next, an offset or a timestamp"
            ))),
        }
    }
}

impl StreamQueue {
    /// The stream queue over topic `name`, creating the topic if it does not exist.
    pub fn open(broker: Arc<Broker>, name: &str) -> Result<Arc<StreamQueue>, VhostError> {
        match broker.create_topic(name, -1, Default::default(), false) {
            Ok(_) | Err(BrokerError::TopicAlreadyExists(_)) => {}
            Err(error) => {
                return Err(VhostError::PreconditionFailed(format!(
                    "cannot use topic '{name}' as a stream: {error}"
                )))
            }
        }
        Ok(Arc::new(StreamQueue {
            name: name.to_string(),
            broker,
        }))
    }

    fn topic(&self) -> Result<Arc<crate::Topic>, VhostError> {
        self.broker
            .topic(&self.name)
            .ok_or_else(|| VhostError::NotFound(format!("topic '{}' no longer exists", self.name)))
    }

    /// Appends the message to its partition (chosen from the routing key as Kafka's default
    /// partitioner chooses from a record key); the receiver says when it is durable.
    pub fn publish(&self, message: &Message) -> Result<crate::DurableWait, VhostError> {
        let topic = self.topic()?;
        let count = topic.partition_count().max(1) as u32;
        let key = message.routing_key.as_bytes();
        let index = if key.is_empty() {
            rand::random::<u32>() % count
        } else {
            (murmur2(key) & 0x7fff_ffff) % count
        };
        let partition = topic.partition(index as i32).ok_or_else(|| {
            VhostError::NotFound(format!("partition {index} of topic '{}'", self.name))
        })?;
        let mut batch = RecordBatchBuilder::new();
        batch.push(message.to_record(true));
        let records = BytesMut::from(&batch.build()[..]);
        Ok(partition.append_unsequenced(records)?)
    }

    /// Feeds `consumer` from the topic until it is cancelled.
    pub fn start_consumer(self: &Arc<Self>, consumer: Arc<Consumer>, start: StreamStart) {
        let stream = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(error) = stream.feed(&consumer, start).await {
                tracing::warn!(stream = %stream.name, consumer = %consumer.tag, %error, "stream consumer stopped");
                consumer.session.consumer_gone(&consumer);
            }
        });
    }

    async fn feed(&self, consumer: &Arc<Consumer>, start: StreamStart) -> Result<(), VhostError> {
        let topic = self.topic()?;
        let partitions = topic.partitions();
        let mut positions = Vec::with_capacity(partitions.len());
        for partition in &partitions {
            let log = partition.log();
            positions.push(match start {
                StreamStart::First => partition.log_start_offset(),
                StreamStart::Next => partition.high_watermark(),
                StreamStart::Last => {
                    (partition.high_watermark() - 1).max(partition.log_start_offset())
                }
                StreamStart::Offset(offset) => {
                    offset.clamp(partition.log_start_offset(), partition.high_watermark())
                }
                StreamStart::Timestamp(ms) => log
                    .offset_for_timestamp(ms)
                    .map_err(BrokerError::from)?
                    .map_or(partition.high_watermark(), |(offset, _)| offset),
            });
        }
        let data_ready = Arc::clone(self.broker.data_ready());
        loop {
            if consumer.cancelled.load(Ordering::Acquire) {
                return Ok(());
            }
            // Registered before looking, so data arriving meanwhile still wakes us.
            let new_data = data_ready.notified();
            let credit = consumer.credit.notified();
            tokio::pin!(new_data, credit);
            new_data.as_mut().enable();
            credit.as_mut().enable();
            let mut progressed = false;
            let mut out_of_credit = false;
            for (index, partition) in partitions.iter().enumerate() {
                if partition.high_watermark() <= positions[index] {
                    continue;
                }
                let fetched = match partition.fetch(positions[index], FETCH_BYTES) {
                    Ok(fetched) => fetched,
                    Err(BrokerError::OffsetOutOfRange(_)) => {
                        // Retention went past us: continue from the oldest record kept.
                        positions[index] = partition.log_start_offset();
                        continue;
                    }
                    Err(error) => return Err(error.into()),
                };
                let records = match decode_data_records(&fetched.records) {
                    Ok(records) => records,
                    Err(error) => {
                        return Err(VhostError::PreconditionFailed(format!(
                            "cannot read topic '{}' partition {index} at {}: {error}",
                            self.name, positions[index]
                        )))
                    }
                };
                let (mut delivered_records, mut delivered_bytes) = (0u64, 0u64);
                for record in records {
                    if record.offset < positions[index] {
                        continue;
                    }
                    if !consumer.has_credit() {
                        out_of_credit = true;
                        break;
                    }
                    delivered_records += 1;
                    delivered_bytes += record.value.as_ref().map_or(0, |v| v.len() as u64);
                    let offset = record.offset;
                    let mut message = Message::from_record(record);
                    let headers = message
                        .properties
                        .headers
                        .get_or_insert_with(FieldTable::default);
                    headers.insert("x-stream-offset".into(), AMQPValue::LongLongInt(offset));
                    headers.insert(
                        "x-stream-partition".into(),
                        AMQPValue::LongInt(index as i32),
                    );
                    consumer.session.deliver_stream(consumer, message);
                    positions[index] = offset + 1;
                    progressed = true;
                }
                partition.count_fetched_records(delivered_records, delivered_bytes);
                if out_of_credit {
                    break;
                }
                // Every record read was delivered: go on past the batches read, which may end
                // in markers or in offsets compaction emptied, so the next fetch moves on.
                if let Ok(Some(end)) = offset_after_batches(&fetched.records) {
                    if end > positions[index] {
                        positions[index] = end;
                        progressed = true;
                    }
                }
            }
            if progressed && !out_of_credit {
                continue;
            }
            tokio::select! {
                _ = &mut new_data, if !out_of_credit => {}
                _ = &mut credit => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
        }
    }
}

/// Kafka's murmur2 (the Java client's default partitioner hash), so that a routing key and the
/// same Kafka record key land in the same partition.
pub(crate) fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h = SEED ^ length as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Values from Kafka's own partitioner tests (Utils.murmur2).
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58897971
        );
        assert_eq!(murmur2(b"abc") as i32, 479470107);
    }
}
