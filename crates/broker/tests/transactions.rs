//! The transaction coordinator through the broker's API on a simulated disk: what a
//! transaction acknowledged survives a power cut (its state, its markers, the offsets it
//! committed, the open transaction holding the last stable offset); a new instance aborts the
//! open transaction and fences the old epoch; timeouts abort; bad requests get Kafka's errors.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::BytesMut;
use sluice_broker::group_coordinator::TopicPartition;
use sluice_broker::{
    Acks, Broker, BrokerConfig, BrokerError, IsolationLevel, PendingOffset, TransactionState,
    TransactionalProducer,
};
use sluice_log::{decode_records, Record, RecordBatchBuilder, SimDisk, TransactionResult};

const TIMEOUT_MS: i32 = 60_000;

fn producer(
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
) -> TransactionalProducer<'_> {
    TransactionalProducer {
        transactional_id,
        producer_id,
        producer_epoch,
    }
}

/// A broker with topic `t` (one partition) and `transactional_id` initialised: its producer
/// id and epoch.
async fn broker_with_producer(
    dir: &Path,
    disk: &SimDisk,
    transactional_id: &str,
    timeout_ms: i32,
    configure: impl FnOnce(&mut BrokerConfig),
) -> (Arc<Broker>, i64, i16) {
    let broker = open_broker(dir, disk, configure);
    broker
        .create_topic("t", 1, BTreeMap::new(), false)
        .expect("topic");
    let (producer_id, epoch) = broker
        .init_producer_id(Some(transactional_id), timeout_ms, None)
        .await
        .expect("init");
    (broker, producer_id, epoch)
}

fn open_broker(
    dir: &Path,
    disk: &SimDisk,
    configure: impl FnOnce(&mut BrokerConfig),
) -> Arc<Broker> {
    let mut config = BrokerConfig::new(dir.to_path_buf());
    config.storage = disk.storage();
    configure(&mut config);
    Broker::open(config).expect("broker opens on the simulated disk")
}

fn transactional_batch(producer_id: i64, epoch: i16, sequence: i32, values: &[&str]) -> BytesMut {
    let mut builder = RecordBatchBuilder::new();
    builder
        .transactional()
        .producer(producer_id, epoch, sequence);
    for value in values {
        builder.push(Record {
            value: Some(value.as_bytes().to_vec()),
            timestamp: 1,
            ..Record::default()
        });
    }
    BytesMut::from(&builder.build()[..])
}

/// Values a consumer at `isolation` reads from offset 0, with aborted transactions dropped as
/// a Kafka client drops them (control batches are skipped by `decode_records`' caller here:
/// markers have no value).
fn read(broker: &Broker, isolation: IsolationLevel) -> Vec<String> {
    let partition = broker.partition("t", 0).expect("partition");
    let fetched = partition
        .fetch_isolated(0, 1 << 20, isolation)
        .expect("fetch");
    let aborted = fetched.aborted_transactions;
    let mut values = Vec::new();
    let mut position = 0;
    let bytes = &fetched.records[..];
    while position < bytes.len() {
        let header = sluice_log::BatchHeader::parse(&bytes[position..]).expect("header");
        let batch = &bytes[position..position + header.total_bytes()];
        position += header.total_bytes();
        let dropped = aborted.iter().any(|t| {
            t.producer_id == header.producer_id
                && (t.first_offset..=t.last_offset).contains(&header.base_offset)
        });
        if header.is_control() || dropped {
            continue;
        }
        for record in decode_records(batch).expect("records") {
            values.push(String::from_utf8(record.value.expect("value")).expect("utf-8"));
        }
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_transaction_and_an_open_one_survive_a_power_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SimDisk::new(21);
    let (producer_id, open_offset) = {
        let (broker, producer_id, epoch) =
            broker_with_producer(dir.path(), &disk, "tx", TIMEOUT_MS, |_| {}).await;
        assert_eq!(epoch, 0);
        let partitions = [("t".to_string(), 0)];
        broker
            .transaction_coordinator()
            .add_partitions(producer("tx", producer_id, 0), &partitions)
            .await
            .expect("add partitions");
        let partition = broker.partition("t", 0).expect("partition");
        partition
            .produce(
                transactional_batch(producer_id, 0, 0, &["a", "b"]),
                Acks::All,
            )
            .await
            .expect("produce");
        broker
            .transaction_coordinator()
            .add_offsets(producer("tx", producer_id, 0), "g")
            .await
            .expect("add offsets");
        let offset = PendingOffset {
            topic: "t".into(),
            partition: 0,
            offset: 42,
            leader_epoch: -1,
            metadata: "m".into(),
        };
        broker
            .transaction_coordinator()
            .add_pending_offsets(producer("tx", producer_id, 0), "g", vec![offset])
            .await
            .expect("txn offset commit");
        broker
            .transaction_coordinator()
            .end_transaction(
                &broker,
                producer("tx", producer_id, 0),
                TransactionResult::Commit,
                false,
            )
            .await
            .expect("commit");
        // A retried EndTxn of the same result succeeds again.
        broker
            .transaction_coordinator()
            .end_transaction(
                &broker,
                producer("tx", producer_id, 0),
                TransactionResult::Commit,
                false,
            )
            .await
            .expect("commit retried");

        broker
            .transaction_coordinator()
            .add_partitions(producer("tx", producer_id, 0), &partitions)
            .await
            .expect("add partitions");
        let open = partition
            .produce(transactional_batch(producer_id, 0, 2, &["open"]), Acks::All)
            .await
            .expect("produce");
        assert_eq!(partition.last_stable_offset(), open.base_offset);
        disk.power_cut();
        (producer_id, open.base_offset)
    };

    let broker = open_broker(dir.path(), &disk, |_| {});
    let partition = broker.partition("t", 0).expect("partition");
    assert_eq!(open_offset, 3, "a, b and the commit marker come first");
    assert_eq!(partition.last_stable_offset(), open_offset);
    assert_eq!(read(&broker, IsolationLevel::ReadCommitted), ["a", "b"]);
    let committed = broker.group_coordinator().fetch_offsets(
        "g",
        Some(&[TopicPartition {
            topic: "t".into(),
            partition: 0,
        }]),
    );
    assert_eq!(committed[0].1.as_ref().map(|o| o.offset), Some(42));
    let described = broker
        .transaction_coordinator()
        .describe(&["tx".to_string()]);
    let state = described[0].1.as_ref().expect("known after the power cut");
    assert_eq!(state.state, TransactionState::Ongoing);
    assert_eq!((state.producer_id, state.producer_epoch), (producer_id, 0));

    // The next instance aborts what was open under epoch 1 and gets epoch 2.
    let (next_id, next_epoch) = broker
        .init_producer_id(Some("tx"), TIMEOUT_MS, None)
        .await
        .expect("init");
    assert_eq!((next_id, next_epoch), (producer_id, 2));
    assert_eq!(partition.last_stable_offset(), partition.high_watermark());
    assert_eq!(read(&broker, IsolationLevel::ReadCommitted), ["a", "b"]);
    assert_eq!(
        read(&broker, IsolationLevel::ReadUncommitted),
        ["a", "b", "open"]
    );
    // The zombie's late write is fenced by the abort marker's epoch.
    let late = partition
        .produce(transactional_batch(producer_id, 0, 3, &["late"]), Acks::All)
        .await;
    assert!(
        matches!(late, Err(BrokerError::InvalidProducerEpoch(_))),
        "{late:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_past_its_timeout_is_aborted_and_its_producer_fenced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SimDisk::new(22);
    let (broker, producer_id, epoch) =
        broker_with_producer(dir.path(), &disk, "slow", 100, |config| {
            config.transaction_abort_check_interval_ms = 20;
        })
        .await;
    broker
        .transaction_coordinator()
        .add_partitions(
            producer("slow", producer_id, epoch),
            &[("t".to_string(), 0)],
        )
        .await
        .expect("add partitions");
    let partition = broker.partition("t", 0).expect("partition");
    partition
        .produce(
            transactional_batch(producer_id, epoch, 0, &["x"]),
            Acks::All,
        )
        .await
        .expect("produce");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while partition.last_stable_offset() == 0 {
        assert!(std::time::Instant::now() < deadline, "never aborted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(partition.last_stable_offset(), 2);
    assert!(read(&broker, IsolationLevel::ReadCommitted).is_empty());
    // The completion is logged just after the markers are written.
    let state = loop {
        let described = broker
            .transaction_coordinator()
            .describe(&["slow".to_string()]);
        let state = described[0].1.clone().expect("known");
        if state.state != TransactionState::PrepareAbort {
            break state;
        }
        assert!(std::time::Instant::now() < deadline, "never completed");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    assert_eq!(state.state, TransactionState::CompleteAbort);
    assert_eq!(state.producer_epoch, epoch + 1);
    let commit = broker
        .transaction_coordinator()
        .end_transaction(
            &broker,
            producer("slow", producer_id, epoch),
            TransactionResult::Commit,
            false,
        )
        .await;
    assert!(
        matches!(commit, Err(BrokerError::ProducerFenced(_))),
        "{commit:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_do_not_fit_the_transaction_get_kafkas_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SimDisk::new(23);
    let broker = open_broker(dir.path(), &disk, |_| {});
    let over = broker.init_producer_id(Some("tx"), 900_001, None).await;
    assert!(
        matches!(over, Err(BrokerError::InvalidTransactionTimeout(_))),
        "{over:?}"
    );
    let unknown = broker
        .transaction_coordinator()
        .add_offsets(producer("nobody", 1, 0), "g")
        .await;
    assert!(
        matches!(unknown, Err(BrokerError::InvalidProducerIdMapping(_))),
        "{unknown:?}"
    );
    let (producer_id, epoch) = broker
        .init_producer_id(Some("tx"), TIMEOUT_MS, None)
        .await
        .expect("init");
    let wrong_id = broker
        .transaction_coordinator()
        .add_offsets(producer("tx", producer_id + 1, epoch), "g")
        .await;
    assert!(
        matches!(wrong_id, Err(BrokerError::InvalidProducerIdMapping(_))),
        "{wrong_id:?}"
    );
    let (_, bumped) = broker
        .init_producer_id(Some("tx"), TIMEOUT_MS, Some((producer_id, epoch)))
        .await
        .expect("re-init");
    let stale = broker
        .transaction_coordinator()
        .add_offsets(producer("tx", producer_id, epoch), "g")
        .await;
    assert!(
        matches!(stale, Err(BrokerError::ProducerFenced(_))),
        "{stale:?}"
    );
    // A transactional batch outside an open transaction holding its partition is refused.
    let batch = transactional_batch(producer_id, bumped, 0, &["x"]);
    let outside = broker
        .verify_transactional_produce(Some("tx"), "t", 0, &batch, false)
        .await;
    assert!(
        matches!(outside, Err(BrokerError::InvalidTxnState(_))),
        "{outside:?}"
    );
    let unnamed = broker
        .verify_transactional_produce(None, "t", 0, &batch, false)
        .await;
    assert!(
        matches!(
            unnamed,
            Err(BrokerError::TransactionalIdAuthorizationFailed(_))
        ),
        "{unnamed:?}"
    );
    let other = broker
        .verify_transactional_produce(Some("other"), "t", 0, &batch, false)
        .await;
    assert!(
        matches!(other, Err(BrokerError::InvalidProducerIdMapping(_))),
        "{other:?}"
    );
    // Nothing is open: there is nothing to commit.
    let empty = broker
        .transaction_coordinator()
        .end_transaction(
            &broker,
            producer("tx", producer_id, bumped),
            TransactionResult::Commit,
            false,
        )
        .await;
    assert!(
        matches!(empty, Err(BrokerError::InvalidTxnState(_))),
        "{empty:?}"
    );
    // A client retrying the InitProducerId that bumped the epoch (KIP-360) gets the same answer.
    let retried = broker
        .init_producer_id(Some("tx"), TIMEOUT_MS, Some((producer_id, epoch)))
        .await
        .expect("retried init");
    assert_eq!(retried, (producer_id, bumped));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markers_wait_for_the_transactions_appends_in_flight() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SimDisk::new(24);
    let (broker, producer_id, epoch) =
        broker_with_producer(dir.path(), &disk, "tx", TIMEOUT_MS, |_| {}).await;
    broker
        .transaction_coordinator()
        .add_partitions(producer("tx", producer_id, epoch), &[("t".to_string(), 0)])
        .await
        .expect("add partitions");
    let batch = transactional_batch(producer_id, epoch, 0, &["in flight"]);
    let in_flight = broker
        .verify_transactional_produce(Some("tx"), "t", 0, &batch, false)
        .await
        .expect("verified")
        .expect("transactional");
    let ending = {
        let broker = Arc::clone(&broker);
        tokio::spawn(async move {
            broker
                .transaction_coordinator()
                .end_transaction(
                    &broker,
                    producer("tx", producer_id, epoch),
                    TransactionResult::Commit,
                    false,
                )
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        !ending.is_finished(),
        "the marker waits for the append in flight"
    );
    // Meanwhile a new append of the ending transaction is refused.
    let late = broker
        .verify_transactional_produce(Some("tx"), "t", 0, &batch, false)
        .await;
    assert!(
        matches!(late, Err(BrokerError::InvalidTxnState(_))),
        "{late:?}"
    );
    broker
        .partition("t", 0)
        .expect("partition")
        .produce(batch, Acks::All)
        .await
        .expect("produce");
    drop(in_flight);
    ending.await.expect("joined").expect("committed");
    assert_eq!(read(&broker, IsolationLevel::ReadCommitted), ["in flight"]);
}

/// Transaction version 2 (KIP-890 part 2): a produce adds its partition to the transaction,
/// every EndTxn ends it under the next epoch (in the markers too, so the old epoch's late
/// writes are fenced), a retried EndTxn answers the same, and an abort without an open
/// transaction moves the epoch on all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_version_2_bumps_the_epoch_on_every_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SimDisk::new(25);
    let (broker, producer_id, epoch) =
        broker_with_producer(dir.path(), &disk, "tx", TIMEOUT_MS, |_| {}).await;
    let partition = broker.partition("t", 0).expect("partition");
    // No AddPartitionsToTxn: the produce itself adds the partition.
    let batch = transactional_batch(producer_id, epoch, 0, &["first"]);
    let held = broker
        .verify_transactional_produce(Some("tx"), "t", 0, &batch, true)
        .await
        .expect("added and verified");
    partition.produce(batch, Acks::All).await.expect("produce");
    drop(held);
    let end = |epoch: i16, result: TransactionResult| {
        let broker = Arc::clone(&broker);
        async move {
            broker
                .transaction_coordinator()
                .end_transaction(&broker, producer("tx", producer_id, epoch), result, true)
                .await
        }
    };
    let committed = end(epoch, TransactionResult::Commit).await.expect("commit");
    assert_eq!(committed, (producer_id, epoch + 1));
    // The retry of that EndTxn gets the same answer; the old epoch can do nothing else.
    assert_eq!(
        end(epoch, TransactionResult::Commit).await.expect("retry"),
        committed
    );
    assert!(matches!(
        end(epoch, TransactionResult::Abort).await,
        Err(BrokerError::ProducerFenced(_))
    ));
    let late = transactional_batch(producer_id, epoch, 1, &["late"]);
    let refused = broker
        .verify_transactional_produce(Some("tx"), "t", 0, &late, true)
        .await;
    assert!(
        matches!(refused, Err(BrokerError::InvalidProducerEpoch(_))),
        "{refused:?}"
    );
    assert!(matches!(
        partition.produce(late, Acks::All).await,
        Err(BrokerError::InvalidProducerEpoch(_))
    ));
    // The next transaction starts at sequence 0 under the new epoch, and is aborted.
    let batch = transactional_batch(producer_id, epoch + 1, 0, &["second"]);
    let held = broker
        .verify_transactional_produce(Some("tx"), "t", 0, &batch, true)
        .await
        .expect("second transaction");
    partition.produce(batch, Acks::All).await.expect("produce");
    drop(held);
    assert_eq!(
        end(epoch + 1, TransactionResult::Abort)
            .await
            .expect("abort"),
        (producer_id, epoch + 2)
    );
    // Nothing open: an abort still succeeds and moves the epoch on; a commit does not.
    assert!(matches!(
        end(epoch + 2, TransactionResult::Commit).await,
        Err(BrokerError::InvalidTxnState(_))
    ));
    assert_eq!(
        end(epoch + 2, TransactionResult::Abort)
            .await
            .expect("empty abort"),
        (producer_id, epoch + 3)
    );
    assert_eq!(read(&broker, IsolationLevel::ReadCommitted), ["first"]);
    assert_eq!(
        read(&broker, IsolationLevel::ReadUncommitted),
        ["first", "second"]
    );
}
