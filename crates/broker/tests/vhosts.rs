//! Several virtual hosts on one node: each its own namespace of queues and messages, kept
//! across a restart; a deleted one takes its files with it and comes back empty.

use std::sync::Arc;

use amq_protocol_types::{AMQPValue, FieldTable};
use bytes::Bytes;
use sluice_broker::vhost::{
    Created, Message, MessageProperties, QueueSummary, VhostConfig, VhostError, VirtualHost,
    VirtualHosts,
};
use sluice_broker::{Broker, BrokerConfig};

fn open(dir: &std::path::Path) -> Arc<VirtualHosts> {
    let broker = Broker::open(BrokerConfig::new(dir.to_path_buf())).unwrap();
    let vhosts = VirtualHosts::open(
        VhostConfig {
            data_dir: dir.to_path_buf(),
            message_bytes_max: 1 << 20,
            memory_high_watermark_bytes: 1 << 30,
            disk_free_limit_bytes: 0,
        },
        broker,
    )
    .unwrap();
    vhosts.start();
    vhosts
}

async fn declare_and_publish(vhost: &VirtualHost, queue: &str, bodies: &[&str]) {
    vhost
        .declare_queue(queue, false, true, false, false, FieldTable::default(), 1)
        .unwrap();
    vhost.definitions_saved().await.unwrap();
    for body in bodies {
        let outcome = vhost
            .publish(Message {
                exchange: String::new(),
                routing_key: queue.to_string(),
                properties: MessageProperties {
                    delivery_mode: Some(2),
                    ..Default::default()
                },
                body: Bytes::from(body.to_string()),
            })
            .unwrap();
        assert!(outcome.routed);
        for durable in outcome.durable {
            durable.await.unwrap().unwrap();
        }
    }
}

fn depth(vhost: &VirtualHost, queue: &str) -> Option<u32> {
    match vhost.queue(queue)? {
        QueueSummary::Classic(queue) => Some(queue.message_count()),
        QueueSummary::Stream(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhosts_are_separate_namespaces_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let vhosts = open(dir.path());
        let (a, created) = vhosts.create("a").unwrap();
        assert_eq!(created, Created::New);
        assert_eq!(vhosts.create("a").unwrap().1, Created::Existing);
        let (b, _) = vhosts.create("b/with slash").unwrap();
        declare_and_publish(&a, "q", &["a1", "a2"]).await;
        declare_and_publish(&b, "q", &["b1"]).await;
        declare_and_publish(vhosts.default_vhost(), "q", &[]).await;
        assert_eq!(depth(&a, "q"), Some(2));
        assert_eq!(depth(&b, "q"), Some(1));
        assert_eq!(depth(vhosts.default_vhost(), "q"), Some(0));
        assert!(a.queue("only-in-b").is_none());
        vhosts.shutdown();
    }
    let vhosts = open(dir.path());
    let names: Vec<String> = vhosts
        .list()
        .iter()
        .map(|v| v.vhost_name().to_string())
        .collect();
    assert_eq!(names, ["/", "a", "b/with slash"]);
    assert_eq!(depth(&vhosts.get("a").unwrap(), "q"), Some(2));
    assert_eq!(depth(&vhosts.get("b/with slash").unwrap(), "q"), Some(1));
    assert_eq!(depth(vhosts.default_vhost(), "q"), Some(0));
    vhosts.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_vhost_takes_its_messages_and_comes_back_empty() {
    let dir = tempfile::tempdir().unwrap();
    let vhosts = open(dir.path());
    let (a, _) = vhosts.create("a").unwrap();
    declare_and_publish(&a, "q", &["m1"]).await;
    let mut deleted = a.deleted();
    vhosts.delete("a").await.unwrap();
    assert!(
        *deleted.borrow_and_update(),
        "connections on it are told to close"
    );
    assert!(vhosts.get("a").is_none());
    assert!(matches!(
        vhosts.delete("a").await,
        Err(VhostError::NotFound(_))
    ));
    drop(a);
    let (again, created) = vhosts.create("a").unwrap();
    assert_eq!(created, Created::New);
    assert!(
        again.queue("q").is_none(),
        "a new vhost of the same name is empty"
    );
    vhosts.shutdown();
    drop((again, vhosts));
    // Only the new vhost's directory is left.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("vhosts"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    let reopened = open(dir.path());
    assert!(reopened.get("a").unwrap().queue("q").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_vhost_gives_back_the_memory_its_messages_held() {
    let dir = tempfile::tempdir().unwrap();
    let vhosts = open(dir.path());
    let (a, _) = vhosts.create("a").unwrap();
    a.declare_queue(
        "transient",
        false,
        false,
        false,
        false,
        FieldTable::default(),
        1,
    )
    .unwrap();
    for _ in 0..10 {
        let outcome = a
            .publish(Message {
                exchange: String::new(),
                routing_key: "transient".into(),
                properties: MessageProperties::default(),
                body: Bytes::from(vec![7u8; 10_000]),
            })
            .unwrap();
        assert!(outcome.routed);
    }
    // The memory alarm is the node's: the default vhost sees the other's messages.
    assert!(vhosts.default_vhost().memory_bytes() >= 100_000);
    vhosts.delete("a").await.unwrap();
    assert_eq!(vhosts.default_vhost().memory_bytes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_vhost_stays_and_names_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let vhosts = open(dir.path());
    assert!(matches!(
        vhosts.delete("/").await,
        Err(VhostError::NotAllowed(_))
    ));
    assert!(vhosts.create("").is_err());
    assert!(vhosts.create(&"x".repeat(256)).is_err());
    assert!(vhosts.create("tab\there").is_err());
    assert_eq!(vhosts.create("/").unwrap().1, Created::Existing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_queues_exist_only_in_the_default_vhost() {
    let dir = tempfile::tempdir().unwrap();
    let vhosts = open(dir.path());
    let (a, _) = vhosts.create("a").unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    let refused = a.declare_queue("s", false, true, false, false, arguments.clone(), 1);
    match refused {
        Err(VhostError::PreconditionFailed(text)) => {
            assert!(text.contains("in vhost 'a'"), "{text}")
        }
        other => panic!("expected PRECONDITION_FAILED, got {:?}", other.map(|_| ())),
    }
    assert!(vhosts
        .default_vhost()
        .declare_queue("s", false, true, false, false, arguments, 1)
        .is_ok());
}
