//! The queueing model driven directly (below the AMQP front end): sessions, prefetch, settles,
//! dead-lettering, flow control and recovery, with a sink that records deliveries.

use std::sync::Arc;

use amq_protocol_types::{AMQPValue, FieldTable};
use bytes::Bytes;
use parking_lot::Mutex;
use sluice_broker::vhost::{
    Delivery, DeliverySink, Destination, Message, MessageProperties, Session, Settle, VhostConfig,
    VhostError, VirtualHost,
};
use sluice_broker::{Broker, BrokerConfig};

#[derive(Default)]
struct RecordingSink {
    deliveries: Mutex<Vec<(u64, bool, Bytes)>>,
}

impl DeliverySink for RecordingSink {
    fn deliver(&self, _channel: u16, delivery: Delivery<'_>) {
        self.deliveries.lock().push((
            delivery.delivery_tag,
            delivery.redelivered,
            delivery.message.body.clone(),
        ));
    }
    fn consumer_cancelled(&self, _channel: u16, _consumer_tag: &str) {}
}

fn open(dir: &std::path::Path) -> Arc<VirtualHost> {
    let broker = Broker::open(BrokerConfig::new(dir.to_path_buf())).unwrap();
    VirtualHost::open(
        VhostConfig {
            data_dir: dir.to_path_buf(),
            message_bytes_max: 1 << 20,
            memory_high_watermark_bytes: 1 << 30,
            disk_free_limit_bytes: 0,
        },
        broker,
    )
    .unwrap()
}

fn persistent(body: &str) -> Message {
    Message {
        exchange: String::new(),
        routing_key: String::new(),
        properties: MessageProperties {
            delivery_mode: Some(2),
            ..Default::default()
        },
        body: Bytes::from(body.to_string()),
    }
}

fn session(vhost: &Arc<VirtualHost>, connection: u64) -> (Arc<Session>, Arc<RecordingSink>) {
    let sink = Arc::new(RecordingSink::default());
    let session = Session::new(
        Arc::clone(vhost),
        connection,
        1,
        "guest".into(),
        sink.clone(),
    );
    (session, sink)
}

async fn publish_confirmed(vhost: &VirtualHost, queue: &str, body: &str) {
    let message = Message {
        routing_key: queue.to_string(),
        ..persistent(body)
    };
    let outcome = vhost.publish(message).unwrap();
    assert!(outcome.routed);
    for durable in outcome.durable {
        durable.await.unwrap().unwrap();
    }
}

fn bodies(sink: &RecordingSink) -> Vec<String> {
    sink.deliveries
        .lock()
        .iter()
        .map(|(_, _, b)| String::from_utf8_lossy(b).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_limits_deliveries_and_acks_free_credit() {
    let dir = tempfile::tempdir().unwrap();
    let vhost = open(dir.path());
    vhost
        .declare_queue("q", false, true, false, false, FieldTable::default(), 1)
        .unwrap();
    for n in 0..5 {
        publish_confirmed(&vhost, "q", &format!("m{n}")).await;
    }
    let (session, sink) = session(&vhost, 1);
    session.qos(2, false);
    let consumer = session
        .consume("q", "c".into(), false, false, &FieldTable::default())
        .unwrap();
    session.start_consumer(&consumer);
    assert_eq!(bodies(&sink), ["m0", "m1"]);
    session.settle(1, false, Settle::Ack).unwrap();
    assert_eq!(bodies(&sink), ["m0", "m1", "m2"]);
    // Unknown tags are a precondition failure, as in RabbitMQ.
    assert!(matches!(
        session.settle(99, false, Settle::Ack),
        Err(VhostError::PreconditionFailed(_))
    ));
    // A requeued delivery comes back first, flagged redelivered.
    session.settle(2, false, Settle::Requeue).unwrap();
    let deliveries = sink.deliveries.lock().clone();
    let (_, redelivered, body) = deliveries.last().unwrap();
    assert_eq!((&body[..], *redelivered), (&b"m1"[..], true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_messages_are_dead_lettered_with_x_death() {
    let dir = tempfile::tempdir().unwrap();
    let vhost = open(dir.path());
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
    publish_confirmed(&vhost, "work", "poison").await;
    let (session, _sink) = session(&vhost, 1);
    let got = session.get("work", false).unwrap().unwrap();
    session
        .settle(got.delivery_tag, false, Settle::Discard)
        .unwrap();
    let dead = session.get("dead", true).unwrap().unwrap();
    assert_eq!(&dead.message.body[..], b"poison");
    assert_eq!(dead.message.exchange, "dlx");
    let headers = dead.message.properties.headers.as_ref().unwrap();
    assert!(headers.contains_key("x-death"));
    assert_eq!(
        headers.inner().get("x-first-death-reason"),
        Some(&AMQPValue::LongString("rejected".into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumed_queue_past_its_backlog_limit_is_congested() {
    let dir = tempfile::tempdir().unwrap();
    let vhost = open(dir.path());
    vhost
        .declare_queue("q", false, false, false, false, FieldTable::default(), 1)
        .unwrap();
    let transient = |n: usize| Message {
        routing_key: "q".into(),
        body: Bytes::from(format!("m{n}")),
        ..persistent("")
    };
    // Nobody consumes: a burst is absorbed at full speed (peak shaving).
    for n in 0..3000 {
        let outcome = vhost.publish(transient(n)).unwrap();
        assert!(outcome.congested.is_empty());
    }
    // A consumer that takes nothing more (prefetch 1, never acks): publishers must wait.
    let (session, _sink) = session(&vhost, 1);
    session.qos(1, false);
    let consumer = session
        .consume("q", "c".into(), false, false, &FieldTable::default())
        .unwrap();
    session.start_consumer(&consumer);
    let outcome = vhost.publish(transient(0)).unwrap();
    assert_eq!(outcome.congested.len(), 1);
    let queue = Arc::clone(&outcome.congested[0]);
    let waiting = tokio::spawn(async move { queue.until_uncongested().await });
    vhost.purge_queue("q", 1).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("a purge ends the congestion")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_queue_recovers_its_unsettled_persistent_messages() {
    let dir = tempfile::tempdir().unwrap();
    {
        let vhost = open(dir.path());
        vhost
            .declare_queue("q", false, true, false, false, FieldTable::default(), 1)
            .unwrap();
        for n in 0..4 {
            publish_confirmed(&vhost, "q", &format!("m{n}")).await;
        }
        let (session, _sink) = session(&vhost, 1);
        let first = session.get("q", false).unwrap().unwrap();
        session
            .settle(first.delivery_tag, false, Settle::Ack)
            .unwrap();
        let second = session.get("q", false).unwrap().unwrap();
        assert_eq!(&second.message.body[..], b"m1");
        vhost.shutdown(); // m1 stays unacked
    }
    let vhost = open(dir.path());
    let (session, _sink) = session(&vhost, 2);
    let mut recovered = Vec::new();
    while let Some(got) = session.get("q", true).unwrap() {
        recovered.push((
            String::from_utf8_lossy(&got.message.body).into_owned(),
            got.redelivered,
        ));
    }
    assert_eq!(
        recovered,
        [
            ("m1".into(), true),
            ("m2".into(), false),
            ("m3".into(), false)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_get_dead_letters_the_expired_messages_it_passes() {
    let dir = tempfile::tempdir().unwrap();
    let vhost = open(dir.path()); // no housekeeping: only basic.get meets the expiry
    vhost
        .declare_exchange(
            "dlx",
            "fanout",
            false,
            false,
            false,
            false,
            FieldTable::default(),
        )
        .unwrap();
    vhost
        .declare_queue("dead", false, false, false, false, FieldTable::default(), 1)
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
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(1));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("dlx".into()),
    );
    vhost
        .declare_queue("short", false, false, false, false, args, 1)
        .unwrap();
    vhost
        .publish(Message {
            routing_key: "short".into(),
            ..persistent("stale")
        })
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let (session, _sink) = session(&vhost, 1);
    assert!(session.get("short", true).unwrap().is_none());
    let dead = session.get("dead", true).unwrap().expect("dead-lettered");
    assert_eq!(&dead.message.body[..], b"stale");
}
