//! The classic consumer protocol's embedded formats: what a Kafka consumer puts in its
//! JoinGroup metadata (ConsumerProtocolSubscription) and reads from its SyncGroup assignment
//! (ConsumerProtocolAssignment), each a version (i16) followed by the message. The group
//! coordinator needs them to move a group between the classic and the consumer protocol.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment;
use kafka_protocol::messages::{ConsumerProtocolAssignment, ConsumerProtocolSubscription};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sluice_broker::group_coordinator::{
    ClassicSubscription, ConsumerProtocolCodec, TopicPartition,
};

/// The newest version of both formats this codec writes and reads. A newer one is read as
/// this one, as Kafka's clients do: later versions only add fields at the end.
const VERSION_MAX: i16 = 3;

pub struct KafkaConsumerProtocol;

/// The version prefix of `bytes`, and the message after it.
fn versioned(bytes: &[u8]) -> Option<(i16, Bytes)> {
    let mut buf = Bytes::copy_from_slice(bytes);
    if buf.len() < 2 {
        return None;
    }
    let version = buf.get_i16();
    (version >= 0).then_some((version.min(VERSION_MAX), buf))
}

/// Each (topic, partition indexes) as its partitions, in order.
fn flatten<'a>(topics: impl Iterator<Item = (&'a str, &'a [i32])>) -> Vec<TopicPartition> {
    topics
        .flat_map(|(topic, partitions)| {
            partitions.iter().map(move |&partition| TopicPartition {
                topic: topic.to_string(),
                partition,
            })
        })
        .collect()
}

impl ConsumerProtocolCodec for KafkaConsumerProtocol {
    fn decode_subscription(&self, metadata: &[u8]) -> Option<ClassicSubscription> {
        let (version, mut buf) = versioned(metadata)?;
        let subscription = ConsumerProtocolSubscription::decode(&mut buf, version).ok()?;
        Some(ClassicSubscription {
            topics: subscription.topics.iter().map(|t| t.to_string()).collect(),
            owned_partitions: flatten(
                subscription
                    .owned_partitions
                    .iter()
                    .map(|t| (t.topic.as_str(), &t.partitions[..])),
            ),
        })
    }

    fn decode_assignment(&self, assignment: &[u8]) -> Option<Vec<TopicPartition>> {
        let (version, mut buf) = versioned(assignment)?;
        let assignment = ConsumerProtocolAssignment::decode(&mut buf, version).ok()?;
        Some(flatten(
            assignment
                .assigned_partitions
                .iter()
                .map(|t| (t.topic.as_str(), &t.partitions[..])),
        ))
    }

    fn encode_assignment(&self, partitions: &[TopicPartition], subscription: &[u8]) -> Bytes {
        let version = versioned(subscription).map_or(0, |(version, _)| version);
        let mut topics: Vec<consumer_protocol_assignment::TopicPartition> = Vec::new();
        for partition in partitions {
            match topics.last_mut() {
                Some(last) if last.topic.as_str() == partition.topic => {
                    last.partitions.push(partition.partition)
                }
                _ => topics.push(
                    consumer_protocol_assignment::TopicPartition::default()
                        .with_topic(StrBytes::from_string(partition.topic.clone()).into())
                        .with_partitions(vec![partition.partition]),
                ),
            }
        }
        let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(topics);
        let mut buf = BytesMut::new();
        buf.put_i16(version);
        // Only this codec's own message at a version it supports: encoding cannot fail.
        if assignment.encode(&mut buf, version).is_err() {
            return Bytes::new();
        }
        buf.freeze()
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::consumer_protocol_subscription;

    use super::*;

    fn tp(topic: &str, partition: i32) -> TopicPartition {
        TopicPartition {
            topic: topic.to_string(),
            partition,
        }
    }

    #[test]
    fn subscriptions_and_assignments_round_trip_at_the_members_version() {
        for version in 0..=VERSION_MAX {
            let subscription = ConsumerProtocolSubscription::default()
                .with_topics(vec![
                    StrBytes::from_static_str("a"),
                    StrBytes::from_static_str("b"),
                ])
                .with_owned_partitions(vec![
                    consumer_protocol_subscription::TopicPartition::default()
                        .with_topic(StrBytes::from_static_str("a").into())
                        .with_partitions(vec![0, 2]),
                ]);
            let mut metadata = BytesMut::new();
            metadata.put_i16(version);
            subscription.encode(&mut metadata, version).unwrap();
            let decoded = KafkaConsumerProtocol
                .decode_subscription(&metadata)
                .unwrap();
            assert_eq!(decoded.topics, ["a", "b"]);
            let owned = if version >= 1 {
                vec![tp("a", 0), tp("a", 2)]
            } else {
                Vec::new()
            };
            assert_eq!(decoded.owned_partitions, owned);
            let partitions = vec![tp("a", 1), tp("a", 3), tp("b", 0)];
            let assignment = KafkaConsumerProtocol.encode_assignment(&partitions, &metadata);
            assert_eq!(&assignment[..2], &version.to_be_bytes());
            assert_eq!(
                KafkaConsumerProtocol.decode_assignment(&assignment),
                Some(partitions)
            );
        }
        assert_eq!(KafkaConsumerProtocol.decode_subscription(b"\x00"), None);
        assert_eq!(
            KafkaConsumerProtocol.decode_assignment(b"\x00\x00\xff"),
            None
        );
    }
}
