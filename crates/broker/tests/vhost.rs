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

const BIG_BODY_BYTES: usize = 8 << 10;

/// A body of `BIG_BODY_BYTES` that starts with its number.
fn big_body(n: usize) -> String {
    format!("{n:06}{}", "x".repeat(BIG_BODY_BYTES - 6))
}

/// Publishes `count` persistent big bodies to `queue` and waits until all are on disk.
async fn publish_many(vhost: &VirtualHost, queue: &str, first: usize, count: usize) {
    let mut durable = Vec::new();
    for n in first..first + count {
        let outcome = vhost
            .publish(Message {
                routing_key: queue.to_string(),
                ..persistent(&big_body(n))
            })
            .unwrap();
        durable.extend(outcome.durable);
    }
    for d in durable {
        d.await.unwrap().unwrap();
    }
}

fn number(body: &[u8]) -> usize {
    String::from_utf8_lossy(&body[..6]).parse().unwrap()
}

/// Peak shaving: a durable queue given more persistent messages than its in-memory budget
/// keeps only their positions in memory (the memory alarm's count stays under the budget),
/// and after a restart holds none of their bodies until they are delivered, in order, with
/// requeued ones back at their place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_queue_backlog_larger_than_its_memory_budget_stays_on_disk() {
    let budget = sluice_broker::vhost::queue::READY_MEMORY_BYTES_MAX as i64;
    let total = 3000; // 24 MiB of bodies
    let dir = tempfile::tempdir().unwrap();
    {
        let vhost = open(dir.path());
        vhost
            .declare_queue("q", false, true, false, false, FieldTable::default(), 1)
            .unwrap();
        publish_many(&vhost, "q", 0, total).await;
        assert!(
            vhost.memory_bytes() <= budget,
            "{} bytes held for a {budget}-byte budget",
            vhost.memory_bytes()
        );
        // The head is served from memory, the rest read back from the log, in order.
        let (session, _sink) = session(&vhost, 1);
        for n in 0..1500 {
            let got = session.get("q", true).unwrap().unwrap();
            assert_eq!(number(&got.message.body), n);
        }
        vhost.shutdown();
    }
    let vhost = open(dir.path());
    assert_eq!(vhost.memory_bytes(), 0, "recovery must not load bodies");
    let (session, _sink) = session(&vhost, 2);
    let first: Vec<_> = (0..3)
        .map(|_| session.get("q", false).unwrap().unwrap())
        .collect();
    let numbers: Vec<usize> = first.iter().map(|g| number(&g.message.body)).collect();
    assert_eq!(numbers, [1500, 1501, 1502]);
    // Unacked bodies are held, and counted, until settled.
    assert!(vhost.memory_bytes() >= 3 * BIG_BODY_BYTES as i64);
    session
        .settle(first[1].delivery_tag, false, Settle::Requeue)
        .unwrap();
    let again = session.get("q", true).unwrap().unwrap();
    assert_eq!(
        (number(&again.message.body), again.redelivered),
        (1501, true)
    );
    for n in 1503..total {
        let got = session.get("q", true).unwrap().unwrap();
        assert_eq!((number(&got.message.body), got.redelivered), (n, false));
    }
    assert!(session.get("q", true).unwrap().is_none());
    session.close(); // 1500 and 1502 go back
    let back: Vec<(usize, bool)> = (0..2)
        .map(|_| {
            let got = session_get(&vhost, "q");
            (number(&got.message.body), got.redelivered)
        })
        .collect();
    assert_eq!(back, [(1500, true), (1502, true)]);
    assert_eq!(vhost.memory_bytes(), 0, "every held body was let go");
}

fn session_get(vhost: &Arc<VirtualHost>, queue: &str) -> sluice_broker::vhost::Got {
    let (session, _sink) = session(vhost, 9);
    session.get(queue, true).unwrap().unwrap()
}

/// Expiry of messages whose bodies are on disk: known at publish (x-message-ttl), and after a
/// restart, where it is learned from the record when the message reaches the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_backlog_expires_and_is_dead_lettered_before_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let declare = |vhost: &VirtualHost| {
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
        for name in ["ttl-live", "ttl-restart"] {
            let mut args = FieldTable::default();
            args.insert("x-message-ttl".into(), AMQPValue::LongInt(300));
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString("dlx".into()),
            );
            vhost
                .declare_queue(name, false, true, false, false, args, 1)
                .unwrap();
        }
    };
    let count = 1500; // 12 MiB: past the in-memory budget
    {
        let vhost = open(dir.path());
        declare(&vhost);
        publish_many(&vhost, "ttl-live", 0, count).await;
        publish_many(&vhost, "ttl-restart", 0, count).await;
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        let (session, _sink) = session(&vhost, 1);
        assert!(session.get("ttl-live", true).unwrap().is_none());
        vhost.shutdown();
        // "ttl-restart" is left to expire while the broker is down.
    }
    let vhost = open(dir.path());
    let (session, _sink) = session(&vhost, 2);
    assert!(session.get("ttl-restart", true).unwrap().is_none());
    let mut dead = Vec::new();
    while let Some(got) = session.get("dead", true).unwrap() {
        dead.push(number(&got.message.body));
    }
    let expected: Vec<usize> = (0..count).chain(0..count).collect();
    assert_eq!(dead, expected);
}

/// x-max-length-bytes needs exact body sizes of a stored backlog, also after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_length_bytes_counts_a_recovered_stored_backlog_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 2560 * BIG_BODY_BYTES; // 20 MiB
    let declare = |vhost: &VirtualHost| {
        let mut args = FieldTable::default();
        args.insert(
            "x-max-length-bytes".into(),
            AMQPValue::LongLongInt(limit as i64),
        );
        vhost
            .declare_queue("capped", false, true, false, false, args, 1)
            .unwrap();
    };
    {
        let vhost = open(dir.path());
        declare(&vhost);
        publish_many(&vhost, "capped", 0, 3000).await;
        vhost.shutdown();
    }
    let vhost = open(dir.path());
    declare(&vhost);
    publish_many(&vhost, "capped", 3000, 1).await;
    let (session, _sink) = session(&vhost, 2);
    let mut numbers = Vec::new();
    while let Some(got) = session.get("capped", true).unwrap() {
        numbers.push(number(&got.message.body));
    }
    assert_eq!(numbers, (441..3001).collect::<Vec<_>>());
}

/// A purge of a stored backlog is one range settle record, and it holds after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purged_stored_backlog_stays_purged_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let vhost = open(dir.path());
        vhost
            .declare_queue("q", false, true, false, false, FieldTable::default(), 1)
            .unwrap();
        publish_many(&vhost, "q", 0, 1500).await;
        assert_eq!(vhost.purge_queue("q", 1).unwrap(), 1500);
        assert_eq!(vhost.memory_bytes(), 0);
        publish_many(&vhost, "q", 1500, 1).await;
        vhost.shutdown();
    }
    let vhost = open(dir.path());
    let got = session_get(&vhost, "q");
    assert_eq!(number(&got.message.body), 1500);
    assert!(session(&vhost, 3).0.get("q", true).unwrap().is_none());
}

/// The memory alarm counts what publishers make the broker hold outside queues: uncommitted
/// transaction publishes and a body being received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_buffers_and_bodies_being_received_count_in_the_memory_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let vhost = open(dir.path());
    vhost
        .declare_queue("q", false, false, false, false, FieldTable::default(), 1)
        .unwrap();
    let (session, _sink) = session(&vhost, 1);
    session.tx_select();
    let body = "b".repeat(100_000);
    for _ in 0..3 {
        session
            .publish(
                false,
                Message {
                    routing_key: "q".into(),
                    ..persistent(&body)
                },
            )
            .unwrap();
    }
    assert_eq!(vhost.memory_bytes(), 300_000);
    session.tx_rollback().unwrap();
    assert_eq!(vhost.memory_bytes(), 0);
    session
        .publish(
            false,
            Message {
                routing_key: "q".into(),
                ..persistent(&body)
            },
        )
        .unwrap();
    session.tx_commit().unwrap();
    // Now the queue's (a non-durable queue keeps bodies in memory).
    assert_eq!(vhost.memory_bytes(), 100_000);
    let receiving = session.charge_memory(5_000_000);
    assert_eq!(vhost.memory_bytes(), 5_100_000);
    drop(receiving);
    assert_eq!(vhost.memory_bytes(), 100_000);
}

/// The read-only views the HTTP API lists: exchanges, queues, bindings, channels, and the
/// counters its rates come from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspection_views_list_topology_channels_and_count_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let vhost = open(dir.path());
    vhost
        .declare_queue("q", false, true, false, false, FieldTable::default(), 1)
        .unwrap();
    vhost
        .declare_exchange(
            "ex",
            "direct",
            false,
            true,
            false,
            false,
            FieldTable::default(),
        )
        .unwrap();
    vhost
        .bind(
            "ex",
            Destination::Queue("q".into()),
            "k",
            FieldTable::default(),
            1,
        )
        .unwrap();
    let names: Vec<String> = vhost.exchanges().into_iter().map(|e| e.name).collect();
    assert!(names.contains(&"ex".to_string()) && names.contains(&String::new()));
    let bindings = vhost.bindings();
    assert_eq!(bindings.len(), 1);
    assert_eq!(bindings[0].destination, Destination::Queue("q".into()));
    assert_eq!(vhost.queues().len(), 1);

    for n in 0..3 {
        publish_confirmed(&vhost, "q", &format!("m{n}")).await;
    }
    let (session, _sink) = session(&vhost, 7);
    let got = session.get("q", false).unwrap().unwrap();
    session
        .settle(got.delivery_tag, false, Settle::Ack)
        .unwrap();
    session.get("q", false).unwrap().unwrap();

    let Some(sluice_broker::vhost::QueueSummary::Classic(queue)) = vhost.queue("q") else {
        panic!("q is a classic queue");
    };
    let stats = queue.stats();
    assert_eq!(
        (
            stats.published_total,
            stats.delivered_total,
            stats.acked_total
        ),
        (3, 2, 1)
    );
    assert_eq!(stats.delivered_bytes_total, 4);
    let traffic = vhost.traffic();
    assert_eq!((traffic.messages_in, traffic.bytes_in), (3, 6));
    assert_eq!((traffic.messages_out, traffic.bytes_out), (2, 4));

    let channels = vhost.channels();
    assert_eq!(channels.len(), 1);
    assert_eq!((channels[0].connection, channels[0].unacked), (7, 1));
    session.close();
    assert!(
        vhost.channels().is_empty(),
        "a closed channel is not listed"
    );
    assert_eq!(
        queue.message_count(),
        2,
        "the unacked get went back at close"
    );
}
