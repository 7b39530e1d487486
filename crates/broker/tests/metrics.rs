//! The broker's metrics move with the traffic that should move them: per-topic counters for
//! Kafka produces and AMQP publishes into streams, the AMQP message counters, and the sampled
//! gauges (group lag, queue depths). Each test records into its own Prometheus recorder,
//! installed before the broker opens, as the server installs its recorder.

use std::collections::BTreeMap;
use std::sync::Arc;

use amq_protocol_types::{AMQPValue, FieldTable};
use bytes::{Bytes, BytesMut};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sluice_broker::gauge_sampler::GaugeSampler;
use sluice_broker::group_coordinator::{OffsetAndMetadata, TopicPartition};
use sluice_broker::vhost::{
    Delivery, DeliverySink, Destination, Message, MessageProperties, Session, Settle, VhostConfig,
    VirtualHost,
};
use sluice_broker::{Acks, Broker, BrokerConfig};
use sluice_log::{Record, RecordBatchBuilder};

struct DiscardingSink;

impl DeliverySink for DiscardingSink {
    fn deliver(&self, _channel: u16, _delivery: Delivery<'_>) {}
    fn consumer_cancelled(&self, _channel: u16, _consumer_tag: &str) {}
}

/// The value of the series `name{labels}` (labels in any order) in the Prometheus text the
/// recorder renders; for a histogram ask for `<name>_count`.
fn value(handle: &PrometheusHandle, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut wanted: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    wanted.sort();
    handle.render().lines().find_map(|line| {
        if line.starts_with('#') {
            return None;
        }
        let (series, value) = line.rsplit_once(' ')?;
        let (series_name, label_text) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        if series_name != name {
            return None;
        }
        let mut have: Vec<(String, String)> = label_text
            .split(',')
            .filter(|l| !l.is_empty())
            .filter_map(|l| {
                let (k, v) = l.split_once('=')?;
                Some((k.to_string(), v.trim_matches('"').to_string()))
            })
            .collect();
        have.sort();
        (have == wanted).then(|| value.parse().ok()).flatten()
    })
}

fn counter(handle: &PrometheusHandle, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(handle, name, labels).unwrap_or(0.0)
}

fn gauge(handle: &PrometheusHandle, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    value(handle, name, labels)
}

fn open(dir: &std::path::Path) -> (Arc<Broker>, Arc<VirtualHost>) {
    let broker = Broker::open(BrokerConfig::new(dir.to_path_buf())).unwrap();
    let vhost = VirtualHost::open(
        VhostConfig {
            data_dir: dir.to_path_buf(),
            message_bytes_max: 1 << 20,
            memory_high_watermark_bytes: 1 << 30,
            disk_free_limit_bytes: 0,
        },
        Arc::clone(&broker),
    )
    .unwrap();
    (broker, vhost)
}

fn batch(values: &[&str]) -> BytesMut {
    let mut builder = RecordBatchBuilder::new();
    for value in values {
        builder.push(Record {
            value: Some(value.as_bytes().to_vec()),
            timestamp: 1,
            ..Record::default()
        });
    }
    BytesMut::from(&builder.build()[..])
}

fn message(routing_key: &str, body: &str) -> Message {
    Message {
        exchange: String::new(),
        routing_key: routing_key.to_string(),
        properties: MessageProperties {
            delivery_mode: Some(2),
            ..Default::default()
        },
        body: Bytes::from(body.to_string()),
    }
}

async fn publish(vhost: &VirtualHost, message: Message) {
    let outcome = vhost.publish(message).unwrap();
    assert!(outcome.routed);
    for durable in outcome.durable {
        durable.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn topic_counters_count_kafka_produces_amqp_stream_publishes_and_fetches() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let exported = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);
    let dir = tempfile::tempdir().unwrap();
    let (broker, vhost) = open(dir.path());

    let topic = broker
        .create_topic("orders", 1, BTreeMap::new(), false)
        .unwrap();
    let partition = topic.partition(0).unwrap();
    let records = batch(&["a", "bb", "ccc"]);
    let batch_bytes = records.len() as f64;
    partition.produce(records, Acks::All).await.unwrap();
    let orders = [("topic", "orders")];
    assert_eq!(
        counter(&exported, "sluice_topic_records_produced_total", &orders),
        3.0
    );
    assert_eq!(
        counter(&exported, "sluice_topic_bytes_produced_total", &orders),
        batch_bytes
    );

    // A refused produce (no batches) counts nothing.
    assert!(partition.produce(BytesMut::new(), Acks::All).await.is_err());
    assert_eq!(
        counter(&exported, "sluice_topic_records_produced_total", &orders),
        3.0
    );

    let fetched = partition.fetch(0, 1 << 20).unwrap();
    partition.count_fetched(&fetched.records);
    assert_eq!(
        counter(&exported, "sluice_topic_records_fetched_total", &orders),
        3.0
    );
    assert_eq!(
        counter(&exported, "sluice_topic_bytes_fetched_total", &orders),
        batch_bytes
    );

    // An AMQP stream is a topic: publishes into it count as records produced to it.
    let mut stream_args = FieldTable::default();
    stream_args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    vhost
        .declare_queue("events", false, true, false, false, stream_args, 1)
        .unwrap();
    publish(&vhost, message("events", "one")).await;
    publish(&vhost, message("events", "two")).await;
    let events = [("topic", "events")];
    assert_eq!(
        counter(&exported, "sluice_topic_records_produced_total", &events),
        2.0
    );
    assert!(counter(&exported, "sluice_topic_bytes_produced_total", &events) > 0.0);
    // A publish to an exchange that does not exist is refused, not counted.
    assert!(vhost
        .publish(Message {
            exchange: "no-such-exchange".into(),
            ..message("events", "lost")
        })
        .is_err());
    assert_eq!(
        counter(&exported, "sluice_amqp_messages_published_total", &[]),
        2.0
    );
}

#[tokio::test]
async fn amqp_counters_follow_deliveries_acks_redeliveries_and_dead_letters() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let exported = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);
    let dir = tempfile::tempdir().unwrap();
    let (broker, vhost) = open(dir.path());
    vhost
        .declare_exchange(
            "dlx",
            "fanout",
            false,
            true,
            false,
            false,
            FieldTable::default(),
        )
        .unwrap();
    vhost
        .declare_queue("dead", false, true, false, false, FieldTable::default(), 1)
        .unwrap();
    vhost
        .bind(
            "dlx",
            Destination::Queue("dead".into()),
            "",
            FieldTable::default(),
            1,
        )
        .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("dlx".into()),
    );
    vhost
        .declare_queue("work", false, true, false, false, args, 1)
        .unwrap();
    for body in ["first", "second", "third"] {
        publish(&vhost, message("work", body)).await;
    }
    let session = Session::new(
        Arc::clone(&vhost),
        1,
        1,
        "guest".into(),
        Arc::new(DiscardingSink),
    );

    let got = session.get("work", false).unwrap().unwrap();
    session
        .settle(got.delivery_tag, false, Settle::Requeue)
        .unwrap();
    let again = session.get("work", false).unwrap().unwrap();
    assert!(again.redelivered);
    session
        .settle(again.delivery_tag, false, Settle::Ack)
        .unwrap();
    let poison = session.get("work", false).unwrap().unwrap();
    session
        .settle(poison.delivery_tag, false, Settle::Discard)
        .unwrap();
    let unacked = session.get("work", false).unwrap().unwrap();

    assert_eq!(
        counter(&exported, "sluice_amqp_messages_published_total", &[]),
        3.0
    );
    assert_eq!(
        counter(&exported, "sluice_amqp_messages_delivered_total", &[]),
        4.0
    );
    assert_eq!(
        counter(&exported, "sluice_amqp_messages_redelivered_total", &[]),
        1.0
    );
    assert_eq!(
        counter(&exported, "sluice_amqp_messages_acked_total", &[]),
        1.0
    );
    assert_eq!(
        counter(&exported, "sluice_amqp_messages_dead_lettered_total", &[]),
        1.0
    );

    let mut sampler = GaugeSampler::new();
    sampler.sample(&broker, std::slice::from_ref(&vhost));
    let work = [("vhost", "/"), ("queue", "work")];
    let dead = [("vhost", "/"), ("queue", "dead")];
    assert_eq!(
        gauge(&exported, "sluice_queue_messages_ready", &work),
        Some(0.0)
    );
    assert_eq!(
        gauge(&exported, "sluice_queue_messages_unacked", &work),
        Some(1.0)
    );
    assert_eq!(
        gauge(&exported, "sluice_queue_messages_ready", &dead),
        Some(1.0)
    );
    assert_eq!(gauge(&exported, "sluice_queue_consumers", &dead), Some(0.0));
    assert_eq!(
        gauge(&exported, "sluice_alarm", &[("kind", "memory")]),
        Some(0.0)
    );
    assert!(gauge(&exported, "sluice_disk_used_bytes", &[]).is_some_and(|b| b > 0.0));
    assert!(gauge(&exported, "sluice_disk_free_bytes", &[]).is_some_and(|b| b > 0.0));
    assert!(gauge(&exported, "sluice_process_resident_memory_bytes", &[]).is_some_and(|b| b > 0.0));

    // A deleted queue's gauges drop to zero instead of keeping their last depth.
    session
        .settle(unacked.delivery_tag, false, Settle::Ack)
        .unwrap();
    vhost.delete_queue("dead", false, false, 1).unwrap();
    sampler.sample(&broker, std::slice::from_ref(&vhost));
    assert_eq!(
        gauge(&exported, "sluice_queue_messages_ready", &dead),
        Some(0.0)
    );
}

#[tokio::test]
async fn group_lag_is_the_end_of_the_partition_minus_the_committed_offset() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let exported = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);
    let dir = tempfile::tempdir().unwrap();
    let (broker, _vhost) = open(dir.path());
    let topic = broker.create_topic("t", 1, BTreeMap::new(), false).unwrap();
    topic
        .partition(0)
        .unwrap()
        .produce(batch(&["1", "2", "3", "4", "5"]), Acks::All)
        .await
        .unwrap();
    let committed = |offset| OffsetAndMetadata {
        offset,
        leader_epoch: -1,
        metadata: String::new(),
        commit_timestamp_ms: 0,
    };
    let tp = TopicPartition {
        topic: "t".into(),
        partition: 0,
    };
    let coordinator = broker.group_coordinator();
    coordinator
        .commit_offsets("readers", "", None, -1, vec![(tp.clone(), committed(2))])
        .await
        .unwrap();
    let mut sampler = GaugeSampler::new();
    sampler.sample(&broker, &[]);
    let labels = [("group", "readers"), ("topic", "t"), ("partition", "0")];
    assert_eq!(gauge(&exported, "sluice_group_lag", &labels), Some(3.0));
    assert_eq!(
        gauge(&exported, "sluice_group_members", &[("group", "readers")]),
        Some(0.0)
    );

    // The commit path refreshes the lag at once, without waiting for a sample.
    sluice_broker::gauge_sampler::record_committed_lag(&broker, "readers", &[(tp, 5)]);
    assert_eq!(gauge(&exported, "sluice_group_lag", &labels), Some(0.0));

    coordinator
        .commit_offsets(
            "readers",
            "",
            None,
            -1,
            vec![(
                TopicPartition {
                    topic: "t".into(),
                    partition: 0,
                },
                committed(1),
            )],
        )
        .await
        .unwrap();
    sampler.sample(&broker, &[]);
    assert_eq!(gauge(&exported, "sluice_group_lag", &labels), Some(4.0));
    // A deleted group's lag drops to zero.
    coordinator.delete_group("readers").await.unwrap();
    sampler.sample(&broker, &[]);
    assert_eq!(gauge(&exported, "sluice_group_lag", &labels), Some(0.0));
}
