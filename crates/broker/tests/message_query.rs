//! `Broker::query_messages`: by key and by message id through the key indexes (every
//! partition, AMQP publishes included), by offset range and by timestamp, bounded by the limit
//! and never past the high watermark.

use std::collections::BTreeMap;
use std::sync::Arc;

use amq_protocol_types::{AMQPValue, FieldTable};
use bytes::{Bytes, BytesMut};
use sluice_broker::vhost::{Message, MessageProperties, VhostConfig, VirtualHost};
use sluice_broker::{Acks, Broker, BrokerConfig, MessageQuery};
use sluice_log::{Record, RecordBatchBuilder};

fn open_broker(dir: &std::path::Path) -> Arc<Broker> {
    Broker::open(BrokerConfig::new(dir.to_path_buf())).unwrap()
}

/// Produces to `partition` one batch of records `(key, message id, value, timestamp)`.
async fn produce(
    broker: &Broker,
    topic: &str,
    partition: i32,
    records: &[(&str, &str, &str, i64)],
) {
    let mut builder = RecordBatchBuilder::new();
    for (key, id, value, timestamp) in records {
        builder.push(Record {
            timestamp: *timestamp,
            key: Some(key.as_bytes().to_vec()),
            value: Some(value.as_bytes().to_vec()),
            headers: vec![("message-id".into(), Some(id.as_bytes().to_vec()))],
            ..Default::default()
        });
    }
    let batch = BytesMut::from(&builder.build()[..]);
    broker
        .partition(topic, partition)
        .unwrap()
        .produce(batch, Acks::All)
        .await
        .unwrap();
}

fn values(result: &sluice_broker::MessageQueryResult) -> Vec<(i32, i64, String)> {
    result
        .messages
        .iter()
        .map(|m| {
            (
                m.partition,
                m.offset,
                String::from_utf8(m.value.clone().unwrap()).unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn key_and_id_queries_search_every_partition() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open_broker(dir.path());
    broker
        .create_topic("orders", 3, BTreeMap::new(), false)
        .unwrap();
    produce(
        &broker,
        "orders",
        0,
        &[("alice", "m-1", "a0", 10), ("bob", "m-2", "b0", 11)],
    )
    .await;
    produce(&broker, "orders", 2, &[("alice", "m-3", "a2", 12)]).await;
    produce(&broker, "orders", 1, &[("carol", "m-4", "c1", 13)]).await;

    let by_key = broker
        .query_messages("orders", &MessageQuery::Key(b"alice".to_vec()), 100)
        .unwrap();
    assert_eq!(
        values(&by_key),
        [(0, 0, "a0".to_string()), (2, 0, "a2".to_string())]
    );
    assert!(!by_key.truncated);
    let message = &by_key.messages[0];
    assert_eq!(message.key.as_deref(), Some(&b"alice"[..]));
    assert_eq!(message.timestamp, 10);
    assert_eq!(
        message.headers,
        [("message-id".to_string(), Some(b"m-1".to_vec()))]
    );
    assert_eq!(message.size_bytes, 5 + 2 + "message-id".len() + 3);

    let by_id = broker
        .query_messages("orders", &MessageQuery::MessageId("m-4".into()), 100)
        .unwrap();
    assert_eq!(values(&by_id), [(1, 0, "c1".to_string())]);
    let limited = broker
        .query_messages("orders", &MessageQuery::Key(b"alice".to_vec()), 1)
        .unwrap();
    assert_eq!(limited.messages.len(), 1);
    assert!(limited.truncated);
    assert!(broker
        .query_messages("orders", &MessageQuery::Key(b"nobody".to_vec()), 10)
        .unwrap()
        .messages
        .is_empty());
    assert!(broker
        .query_messages("missing", &MessageQuery::Key(b"alice".to_vec()), 10)
        .is_err());
}

#[tokio::test]
async fn offset_range_and_timestamp_queries_stay_below_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open_broker(dir.path());
    broker
        .create_topic("events", 2, BTreeMap::new(), false)
        .unwrap();
    let records: Vec<(String, String, String, i64)> = (0..20)
        .map(|n| {
            (
                format!("k{n}"),
                format!("id{n}"),
                format!("v{n}"),
                1_000 + n,
            )
        })
        .collect();
    let borrowed: Vec<(&str, &str, &str, i64)> = records
        .iter()
        .map(|(k, i, v, t)| (k.as_str(), i.as_str(), v.as_str(), *t))
        .collect();
    produce(&broker, "events", 0, &borrowed[..10]).await;
    produce(&broker, "events", 0, &borrowed[10..]).await;
    produce(&broker, "events", 1, &[("x", "idx", "late", 1_005)]).await;

    let range = broker
        .query_messages(
            "events",
            &MessageQuery::OffsetRange {
                partition: 0,
                from: 8,
                to_max: 11,
            },
            100,
        )
        .unwrap();
    assert_eq!(
        range.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
        [8, 9, 10, 11]
    );
    let past_end = broker
        .query_messages(
            "events",
            &MessageQuery::OffsetRange {
                partition: 0,
                from: 18,
                to_max: 1_000,
            },
            100,
        )
        .unwrap();
    assert_eq!(past_end.messages.len(), 2, "stops at the high watermark");
    let limited = broker
        .query_messages(
            "events",
            &MessageQuery::OffsetRange {
                partition: 0,
                from: 0,
                to_max: 100,
            },
            3,
        )
        .unwrap();
    assert_eq!(limited.messages.len(), 3);
    assert!(limited.truncated);

    let since = broker
        .query_messages(
            "events",
            &MessageQuery::Timestamp {
                partition: None,
                from_ms: 1_015,
            },
            100,
        )
        .unwrap();
    assert_eq!(
        since
            .messages
            .iter()
            .map(|m| (m.partition, m.offset))
            .collect::<Vec<_>>(),
        [(0, 15), (0, 16), (0, 17), (0, 18), (0, 19)]
    );
    let one_partition = broker
        .query_messages(
            "events",
            &MessageQuery::Timestamp {
                partition: Some(1),
                from_ms: 0,
            },
            100,
        )
        .unwrap();
    assert_eq!(values(&one_partition), [(1, 0, "late".to_string())]);
    assert!(broker
        .query_messages(
            "events",
            &MessageQuery::OffsetRange {
                partition: 7,
                from: 0,
                to_max: 1
            },
            1
        )
        .is_err());
}

#[tokio::test]
async fn amqp_publishes_into_a_topic_are_found_by_their_message_id() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open_broker(dir.path());
    let vhost = VirtualHost::open(
        VhostConfig {
            data_dir: dir.path().to_path_buf(),
            message_bytes_max: 1 << 20,
            memory_high_watermark_bytes: 1 << 30,
            disk_free_limit_bytes: 0,
        },
        Arc::clone(&broker),
    )
    .unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    vhost
        .declare_queue("payments", false, true, false, false, arguments, 1)
        .unwrap();
    for n in 0..3 {
        let outcome = vhost
            .publish(Message {
                exchange: String::new(),
                routing_key: "payments".into(),
                properties: MessageProperties {
                    message_id: Some(format!("pay-{n}")),
                    ..Default::default()
                },
                body: Bytes::from(format!("body-{n}")),
            })
            .unwrap();
        for durable in outcome.durable {
            durable.await.unwrap().unwrap();
        }
    }
    let found = broker
        .query_messages("payments", &MessageQuery::MessageId("pay-1".into()), 10)
        .unwrap();
    assert_eq!(values(&found), [(0, 1, "body-1".to_string())]);
    // The routing key is the record key.
    let by_key = broker
        .query_messages("payments", &MessageQuery::Key(b"payments".to_vec()), 10)
        .unwrap();
    assert_eq!(by_key.messages.len(), 3);
}

/// Produces one batch compressed with `codec` (1 gzip, 2 snappy, 3 lz4, 4 zstd) of records
/// `(key, message id, value)`.
async fn produce_compressed(
    broker: &Broker,
    topic: &str,
    codec: u8,
    records: &[(String, String, String)],
) {
    let mut builder = RecordBatchBuilder::new();
    for (key, id, value) in records {
        builder.push(Record {
            timestamp: 100,
            key: Some(key.as_bytes().to_vec()),
            value: Some(value.as_bytes().to_vec()),
            headers: vec![("message-id".into(), Some(id.as_bytes().to_vec()))],
            ..Default::default()
        });
    }
    let batch = BytesMut::from(&builder.build_compressed(codec).unwrap()[..]);
    broker
        .partition(topic, 0)
        .unwrap()
        .produce(batch, Acks::All)
        .await
        .unwrap();
}

#[tokio::test]
async fn compressed_batches_of_every_codec_are_found_by_key_id_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open_broker(dir.path());
    broker
        .create_topic("packed", 1, BTreeMap::new(), false)
        .unwrap();
    let codecs = [(1u8, "gzip"), (2, "snappy"), (3, "lz4"), (4, "zstd")];
    for (codec, name) in codecs {
        let records: Vec<(String, String, String)> = (0..5)
            .map(|n| {
                (
                    format!("{name}-key"),
                    format!("{name}-id-{n}"),
                    format!("{name}-value-{n}"),
                )
            })
            .collect();
        produce_compressed(&broker, "packed", codec, &records).await;
    }
    for (index, (_, name)) in codecs.iter().enumerate() {
        let base = index as i64 * 5;
        let by_key = broker
            .query_messages(
                "packed",
                &MessageQuery::Key(format!("{name}-key").into_bytes()),
                100,
            )
            .unwrap();
        assert_eq!(by_key.batches_compressed, 0);
        assert_eq!(
            values(&by_key),
            (0..5)
                .map(|n| (0, base + n, format!("{name}-value-{n}")))
                .collect::<Vec<_>>()
        );
        let by_id = broker
            .query_messages(
                "packed",
                &MessageQuery::MessageId(format!("{name}-id-3")),
                100,
            )
            .unwrap();
        assert_eq!(values(&by_id), [(0, base + 3, format!("{name}-value-3"))]);
    }
    let range = broker
        .query_messages(
            "packed",
            &MessageQuery::OffsetRange {
                partition: 0,
                from: 3,
                to_max: 11,
            },
            100,
        )
        .unwrap();
    assert_eq!(range.batches_compressed, 0);
    assert_eq!(
        range.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
        (3..=11).collect::<Vec<_>>()
    );
    assert_eq!(
        range.messages[3].value.as_deref(),
        Some(&b"snappy-value-1"[..])
    );
}

#[tokio::test]
async fn a_garbage_compressed_batch_is_counted_and_passed_over() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open_broker(dir.path());
    broker
        .create_topic("packed", 1, BTreeMap::new(), false)
        .unwrap();
    let mut builder = RecordBatchBuilder::new();
    builder.push(Record {
        key: Some(b"k".to_vec()),
        value: Some(b"v".to_vec()),
        ..Default::default()
    });
    // lz4 in the attributes, but the records section is not lz4; the CRC is valid.
    let mut batch = builder.build();
    batch[22] |= 0x03;
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    broker
        .partition("packed", 0)
        .unwrap()
        .produce(BytesMut::from(&batch[..]), Acks::All)
        .await
        .unwrap();
    produce_compressed(
        &broker,
        "packed",
        4,
        &[("k".into(), "good".into(), "after".into())],
    )
    .await;
    let range = broker
        .query_messages(
            "packed",
            &MessageQuery::OffsetRange {
                partition: 0,
                from: 0,
                to_max: 10,
            },
            100,
        )
        .unwrap();
    assert_eq!(range.batches_compressed, 1);
    assert_eq!(values(&range), [(0, 1, "after".to_string())]);
    let by_key = broker
        .query_messages("packed", &MessageQuery::Key(b"k".to_vec()), 100)
        .unwrap();
    assert_eq!(values(&by_key), [(0, 1, "after".to_string())]);
    assert_eq!(by_key.batches_compressed, 1);
}
