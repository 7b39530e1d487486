//! The whole broker (Kafka partitions, AMQP queues, metadata) on a simulated disk: a failed
//! fsync takes the affected log offline and its writers get a typed storage error (Kafka:
//! KAFKA_STORAGE_ERROR; AMQP confirms: basic.nack), other logs keep working, and what was
//! acknowledged, including the directory entries of new topics, queues and definitions,
//! survives a power cut.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use amq_protocol_types::FieldTable;
use bytes::{Bytes, BytesMut};
use sluice_broker::vhost::{Message, MessageProperties, Session, VhostConfig, VirtualHost};
use sluice_broker::{Acks, Broker, BrokerConfig, BrokerError, DurableWait};
use sluice_log::{decode_records, Record, RecordBatchBuilder, SimDisk};

struct NoDeliveries;

impl sluice_broker::vhost::DeliverySink for NoDeliveries {
    fn deliver(&self, _channel: u16, _delivery: sluice_broker::vhost::Delivery<'_>) {}
    fn consumer_cancelled(&self, _channel: u16, _consumer_tag: &str) {}
}

fn open_broker(dir: &Path, disk: &SimDisk) -> Arc<Broker> {
    let mut config = BrokerConfig::new(dir.to_path_buf());
    config.storage = disk.storage();
    Broker::open(config).expect("broker opens on the simulated disk")
}

fn open_both(dir: &Path, disk: &SimDisk) -> (Arc<Broker>, Arc<VirtualHost>) {
    let broker = open_broker(dir, disk);
    let vhost = VirtualHost::open(
        VhostConfig {
            data_dir: dir.to_path_buf(),
            message_bytes_max: 1 << 20,
            memory_high_watermark_bytes: 1 << 30,
            disk_free_limit_bytes: 0,
        },
        Arc::clone(&broker),
    )
    .expect("vhost opens on the simulated disk");
    (broker, vhost)
}

fn open_vhost(dir: &Path, disk: &SimDisk) -> Arc<VirtualHost> {
    open_both(dir, disk).1
}

fn persistent(queue: &str, body: &str) -> Message {
    Message {
        exchange: String::new(),
        routing_key: queue.to_string(),
        properties: MessageProperties {
            delivery_mode: Some(2),
            ..Default::default()
        },
        body: Bytes::from(body.to_string()),
    }
}

/// The publisher's confirm: `Ok` is basic.ack, `Err` basic.nack (as the AMQP front end's
/// confirm loop decides it).
async fn confirm(waits: Vec<DurableWait>) -> Result<(), BrokerError> {
    for wait in waits {
        match wait.await {
            Ok(result) => result?,
            Err(_) => panic!("a durability wait was dropped unanswered"),
        }
    }
    Ok(())
}

async fn publish(vhost: &VirtualHost, queue: &str, body: &str) -> Result<(), BrokerError> {
    let outcome = vhost
        .publish(persistent(queue, body))
        .expect("publish routes");
    assert!(outcome.routed);
    confirm(outcome.durable).await
}

fn drain(vhost: &Arc<VirtualHost>, queue: &str) -> Vec<String> {
    let session = Session::new(
        Arc::clone(vhost),
        99,
        1,
        "guest".into(),
        Arc::new(NoDeliveries),
    );
    let mut bodies = Vec::new();
    while let Some(got) = session.get(queue, true).expect("basic.get") {
        bodies.push(String::from_utf8_lossy(&got.message.body).into_owned());
    }
    session.close();
    bodies
}

fn records(value: &str) -> BytesMut {
    let mut builder = RecordBatchBuilder::new();
    builder.push(Record {
        timestamp: 1_000,
        value: Some(value.as_bytes().to_vec()),
        ..Record::default()
    });
    BytesMut::from(&builder.build()[..])
}

fn values(broker: &Broker, topic: &str, partition: i32) -> Vec<String> {
    let partition = broker.partition(topic, partition).expect("partition");
    let fetched = partition
        .fetch(partition.log_start_offset(), 1 << 20)
        .expect("fetch");
    decode_records(&fetched.records)
        .expect("decodable")
        .into_iter()
        .map(|r| String::from_utf8_lossy(&r.value.unwrap_or_default()).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_mode_publishes_are_nacked_once_the_queue_log_is_offline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SimDisk::new(7);
    {
        let vhost = open_vhost(dir.path(), &disk);
        vhost
            .declare_queue("q", false, true, false, false, FieldTable::default(), 1)
            .expect("declare");
        publish(&vhost, "q", "m0").await.expect("m0 confirmed");
        publish(&vhost, "q", "m1").await.expect("m1 confirmed");

        disk.fail_next_sync();
        let failed = publish(&vhost, "q", "m2").await;
        assert!(
            matches!(failed, Err(BrokerError::Storage(_))),
            "the publish whose fsync failed is nacked, got {failed:?}"
        );
        // The log is offline: every later publish to it is nacked at once, not acked by a
        // later fsync that succeeds without the lost pages.
        for n in 3..6 {
            let later = publish(&vhost, "q", &format!("m{n}")).await;
            assert!(
                matches!(&later, Err(error) if error.is_offline()),
                "publish to an offline queue log must be nacked, got {later:?}"
            );
        }
        // What was confirmed before is still served; the refused publishes are not queued.
        let served = drain(&vhost, "q");
        assert_eq!(&served[..2], ["m0", "m1"]);
        assert!(served
            .iter()
            .all(|b| !["m3", "m4", "m5"].contains(&b.as_str())));
        disk.power_cut();
    }
    // A restart recovers the log from what is really on disk; it takes writes again.
    let vhost = open_vhost(dir.path(), &disk);
    publish(&vhost, "q", "after")
        .await
        .expect("recovered log takes writes");
    let served = drain(&vhost, "q");
    assert_eq!(
        served,
        ["m0", "m1", "after"],
        "confirmed messages survive, nacked ones do not"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_after_a_failed_fsync_is_a_storage_error_and_other_partitions_still_take_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SimDisk::new(11);
    {
        let broker = open_broker(dir.path(), &disk);
        broker
            .create_topic("t", 2, BTreeMap::new(), false)
            .expect("topic");
        let p0 = broker.partition("t", 0).expect("p0");
        let p1 = broker.partition("t", 1).expect("p1");
        let acked = p0.produce(records("a0"), Acks::All).await.expect("a0");
        assert_eq!(acked.base_offset, 0);

        disk.fail_next_sync();
        let failed = p0.produce(records("a1"), Acks::All).await;
        assert!(
            matches!(failed, Err(BrokerError::Storage(_))),
            "KAFKA_STORAGE_ERROR for the produce whose fsync failed, got {failed:?}"
        );
        let later = p0.produce(records("a2"), Acks::All).await;
        assert!(
            matches!(&later, Err(error) if error.is_offline()),
            "the offline partition refuses writes, got {later:?}"
        );
        // The high watermark never exposed the batch whose fsync failed.
        assert_eq!(p0.high_watermark(), 1);
        assert_eq!(values(&broker, "t", 0), ["a0"]);

        let other = p1
            .produce(records("b0"), Acks::All)
            .await
            .expect("p1 is unaffected");
        assert_eq!(other.base_offset, 0);
        disk.power_cut();
    }
    let broker = open_broker(dir.path(), &disk);
    assert_eq!(values(&broker, "t", 0), ["a0"]);
    assert_eq!(values(&broker, "t", 1), ["b0"]);
    let p0 = broker.partition("t", 0).expect("p0");
    let outcome = p0
        .produce(records("a3"), Acks::All)
        .await
        .expect("recovered");
    assert_eq!(outcome.base_offset, 1);
}

/// Topic metadata, partition directories, queue directories, definitions, the cluster id and
/// producer-id blocks are created in new directories or replaced by rename: each is durable
/// only once its parent directory is fsynced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_topics_queues_and_metadata_survive_a_power_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SimDisk::new(13);
    let (cluster_id, producer_id) = {
        let (broker, vhost) = open_both(dir.path(), &disk);
        broker
            .create_topic("t", 1, BTreeMap::new(), false)
            .expect("topic");
        broker
            .partition("t", 0)
            .expect("p0")
            .produce(records("v"), Acks::All)
            .await
            .expect("acked");
        let (producer_id, _) = broker.allocate_producer_id().expect("producer id");
        vhost
            .declare_queue("q", false, true, false, false, FieldTable::default(), 1)
            .expect("declare");
        publish(&vhost, "q", "m").await.expect("confirmed");
        vhost
            .declare_queue("gone", false, true, false, false, FieldTable::default(), 1)
            .expect("declare");
        publish(&vhost, "gone", "x").await.expect("confirmed");
        vhost.delete_queue("gone", false, false, 1).expect("delete");
        // As the AMQP front end does before delete-ok: the definitions are written off the
        // topology lock, and a change is durable once they are saved.
        vhost.definitions_saved().await.expect("definitions saved");
        let cluster_id = broker.cluster_id().to_string();
        disk.power_cut();
        (cluster_id, producer_id)
    };
    let (broker, vhost) = open_both(dir.path(), &disk);
    assert_eq!(broker.cluster_id(), cluster_id);
    assert_eq!(values(&broker, "t", 0), ["v"]);
    let (next_producer_id, _) = broker.allocate_producer_id().expect("producer id");
    assert!(
        next_producer_id > producer_id,
        "producer ids are never reused"
    );
    assert_eq!(drain(&vhost, "q"), ["m"]);
    assert!(
        vhost.queue_for("gone", 1).is_err(),
        "a deleted queue stays deleted"
    );
    let queues_dir = dir.path().join("amqp").join("queues");
    let queue_dirs = sluice_log::Storage::read_dir(&disk, &queues_dir).expect("queues dir");
    assert_eq!(
        queue_dirs.len(),
        1,
        "only q's directory is left: {queue_dirs:?}"
    );
}
