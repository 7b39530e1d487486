//! The connection's limits: fetch response size, response memory, idle connections, the
//! connection count, and InitProducerId fencing answers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sluice_broker::{Acks, Broker, BrokerConfig};
use sluice_log::{Record, RecordBatchBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::{KafkaConfig, KafkaServer, RequestContext};

const TOPIC: &str = "big";

fn broker(dir: &std::path::Path) -> Arc<Broker> {
    let mut config = BrokerConfig::new(dir.to_path_buf());
    config.group.initial_rebalance_delay_ms = 0;
    Broker::open(config).expect("broker opens")
}

fn context(broker: &Arc<Broker>, config: KafkaConfig) -> RequestContext {
    RequestContext {
        broker: Arc::clone(broker),
        config: Arc::new(config),
        client_id: String::new(),
        client_host: "127.0.0.1".into(),
        cluster: None,
        response_memory: None,
        fetch_sessions: Default::default(),
        share_sessions: Default::default(),
        connection_id: 0,
        security: Default::default(),
        principal: Default::default(),
        muted_until: Default::default(),
    }
}

fn config(configure: impl FnOnce(&mut KafkaConfig)) -> KafkaConfig {
    let mut config = KafkaConfig::new("127.0.0.1".into(), 9092);
    configure(&mut config);
    config
}

/// `batches` batches of `records` records of `value_bytes` bytes into each partition.
async fn fill(
    broker: &Arc<Broker>,
    partitions: i32,
    batches: usize,
    records: usize,
    value_bytes: usize,
) {
    let topic = broker
        .create_topic(TOPIC, partitions, BTreeMap::new(), false)
        .expect("topic");
    for partition in topic.partitions() {
        for _ in 0..batches {
            let mut builder = RecordBatchBuilder::new();
            for _ in 0..records {
                builder.push(Record {
                    value: Some(vec![7u8; value_bytes]),
                    timestamp: 1,
                    ..Record::default()
                });
            }
            partition
                .produce(BytesMut::from(&builder.build()[..]), Acks::All)
                .await
                .expect("produce");
        }
    }
}

fn framed(api_key: ApiKey, version: i16, correlation_id: i32, request: &RequestKind) -> Bytes {
    let mut body = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("test")))
        .encode(&mut body, api_key.request_header_version(version))
        .expect("header encodes");
    request.encode(&mut body, version).expect("request encodes");
    let mut frame = BytesMut::new();
    frame.put_i32(body.len() as i32);
    frame.extend_from_slice(&body);
    frame.freeze()
}

const FETCH_VERSION: i16 = 12;

/// A fetch of every partition from offset 0 asking for everything (i32::MAX everywhere).
fn greedy_fetch(partitions: i32) -> RequestKind {
    RequestKind::Fetch(
        FetchRequest::default()
            .with_max_wait_ms(0)
            .with_max_bytes(i32::MAX)
            .with_topics(vec![fetch_request::FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str(TOPIC)))
                .with_partitions(
                    (0..partitions)
                        .map(|p| {
                            fetch_request::FetchPartition::default()
                                .with_partition(p)
                                .with_partition_max_bytes(i32::MAX)
                        })
                        .collect(),
                )]),
    )
}

fn decode_fetch(frame: &[u8]) -> FetchResponse {
    let mut body = Bytes::copy_from_slice(frame);
    ResponseHeader::decode(
        &mut body,
        ApiKey::Fetch.response_header_version(FETCH_VERSION),
    )
    .expect("header");
    FetchResponse::decode(&mut body, FETCH_VERSION).expect("fetch response")
}

/// Record bytes per partition of a fetch response.
fn record_bytes(response: &FetchResponse) -> Vec<usize> {
    response
        .responses
        .iter()
        .flat_map(|t| &t.partitions)
        .map(|p| {
            assert_eq!(p.error_code, 0, "{p:?}");
            p.records.as_ref().map_or(0, Bytes::len)
        })
        .collect()
}

async fn fetch_once(context: RequestContext, request: RequestKind) -> FetchResponse {
    let mut context = Arc::new(context);
    let frame = framed(ApiKey::Fetch, FETCH_VERSION, 1, &request);
    let response = start_request(
        &mut context,
        &mut RequestMetrics::default(),
        &mut super::tests::test_gate(),
        frame.slice(4..),
    )
    .expect("starts")
    .0
    .await
    .expect("answered")
    .expect("a response");
    decode_fetch(&response.bytes()[4..])
}

/// A fetch asking for i32::MAX bytes over partitions holding far more than `fetch_bytes_max`
/// gets at most `fetch_bytes_max` (before this bound it got every byte of every partition).
#[tokio::test]
async fn a_fetch_never_carries_more_than_fetch_max_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = broker(dir.path());
    // 3 partitions x 40 batches x ~4 KiB.
    fill(&broker, 3, 40, 4, 1000).await;
    let fetch_bytes_max = 64 * 1024;
    let response = fetch_once(
        context(&broker, config(|c| c.fetch_bytes_max = fetch_bytes_max)),
        greedy_fetch(3),
    )
    .await;
    let per_partition = record_bytes(&response);
    let total: usize = per_partition.iter().sum();
    assert!(total <= fetch_bytes_max, "{total} bytes: {per_partition:?}");
    assert!(
        total > fetch_bytes_max / 2,
        "{total} bytes: {per_partition:?}"
    );
}

/// Each partition stays within its `partition_max_bytes`, and with every bound smaller than
/// one batch the first partition still gets one whole batch (KIP-74) and no other any.
#[tokio::test]
async fn partition_max_bytes_holds_and_only_the_first_batch_may_exceed_a_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = broker(dir.path());
    fill(&broker, 3, 40, 4, 1000).await;
    let RequestKind::Fetch(mut request) = greedy_fetch(3) else {
        unreachable!()
    };
    for partition in &mut request.topics[0].partitions {
        partition.partition_max_bytes = 10_000;
    }
    let response = fetch_once(
        context(&broker, config(|_| {})),
        RequestKind::Fetch(request),
    )
    .await;
    let per_partition = record_bytes(&response);
    assert!(
        per_partition
            .iter()
            .all(|&bytes| bytes > 0 && bytes <= 10_000),
        "{per_partition:?}"
    );

    let response = fetch_once(
        context(&broker, config(|c| c.fetch_bytes_max = 1024)),
        greedy_fetch(3),
    )
    .await;
    let per_partition = record_bytes(&response);
    assert!(
        per_partition[0] > 1024 && per_partition[0] < 8192,
        "{per_partition:?}"
    );
    assert_eq!(&per_partition[1..], &[0, 0]);
}

async fn read_frame(client: &mut TcpStream) -> Vec<u8> {
    let size = client.read_i32().await.expect("response size");
    let mut body = vec![0u8; size as usize];
    client.read_exact(&mut body).await.expect("response body");
    body
}

/// Pipelined fetches whose responses are not read: the response waiting to be written counts
/// in the shared budget, and only one fetch of the connection holds a response at a time (on
/// the old code every response was built at once and none was counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_fetch_responses_are_counted_and_bounded_per_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = broker(dir.path());
    // 16 batches of 512 KiB: 8 MiB, more than socket buffers absorb.
    fill(&broker, 1, 16, 64, 8 * 1024).await;
    let fetch_bytes_max = 4 << 20;
    let budget_kib = 64 * 1024;
    let memory = Arc::new(RequestMemory::new(budget_kib * 1024));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let server_context = context(&broker, config(|c| c.fetch_bytes_max = fetch_bytes_max));
    let server_memory = Arc::clone(&memory);
    tokio::spawn(async move {
        let (stream, peer) = listener.accept().await.expect("accept");
        serve_connection(stream, peer, server_context, server_memory).await;
    });
    let mut client = TcpStream::connect(address).await.expect("connect");
    let pipelined = 8;
    for correlation_id in 0..pipelined {
        client
            .write_all(&framed(
                ApiKey::Fetch,
                FETCH_VERSION,
                correlation_id,
                &greedy_fetch(1),
            ))
            .await
            .expect("send");
    }
    let held_kib = || budget_kib - memory.kib_available();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while held_kib() < 3 * 1024 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the response was never counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // It stays counted while it waits to be written: one response (at most fetch_bytes_max)
    // plus the small frames of the waiting fetches.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = held_kib();
    assert!(
        held >= 3 * 1024,
        "{held} KiB: the unwritten response is not counted"
    );
    assert!(
        held <= fetch_bytes_max / 1024 + pipelined as usize + 16,
        "{held} KiB held"
    );

    for _ in 0..pipelined {
        let response = decode_fetch(&read_frame(&mut client).await);
        let bytes: usize = record_bytes(&response).iter().sum();
        assert!(bytes > 3 << 20 && bytes <= fetch_bytes_max, "{bytes}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while memory.kib_available() != budget_kib {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} KiB never given back",
            held_kib()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn serve(
    broker: &Arc<Broker>,
    config: KafkaConfig,
) -> (std::net::SocketAddr, tokio::sync::watch::Sender<bool>) {
    let server = KafkaServer::bind(
        "127.0.0.1:0".parse().expect("address"),
        Arc::clone(broker),
        config,
    )
    .await
    .expect("bind");
    let address = server.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(server.run(stopped));
    (address, stop)
}

fn api_versions(correlation_id: i32) -> Bytes {
    framed(
        ApiKey::ApiVersions,
        0,
        correlation_id,
        &RequestKind::ApiVersions(ApiVersionsRequest::default()),
    )
}

/// True when the server closed the connection within `within`.
async fn closed_within(client: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(within, client.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// `connections.max.idle.ms`: a silent connection is closed; one with a request in progress
/// (a long poll longer than the idle time) is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_but_not_while_a_request_is_in_progress() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = broker(dir.path());
    fill(&broker, 1, 1, 1, 10).await;
    let (address, _stop) = serve(&broker, config(|c| c.connection_idle_ms_max = 300)).await;

    let mut silent = TcpStream::connect(address).await.expect("connect");
    assert!(closed_within(&mut silent, Duration::from_secs(10)).await);

    let mut polling = TcpStream::connect(address).await.expect("connect");
    let RequestKind::Fetch(request) = greedy_fetch(1) else {
        unreachable!()
    };
    let mut request = request.with_max_wait_ms(1_000).with_min_bytes(1 << 20);
    request.topics[0].partitions[0].fetch_offset = 1; // the log end: waits for data
    polling
        .write_all(&framed(
            ApiKey::Fetch,
            FETCH_VERSION,
            5,
            &RequestKind::Fetch(request),
        ))
        .await
        .expect("send");
    let response = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut polling))
        .await
        .expect("the long poll is answered");
    assert_eq!(&response[..4], &5i32.to_be_bytes());
    assert!(closed_within(&mut polling, Duration::from_secs(10)).await);
}

/// A connection over the listener's limit is closed at once; a slot freed is usable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = broker(dir.path());
    let (address, _stop) = serve(&broker, config(|c| c.connections_max = 2)).await;
    let mut open = Vec::new();
    for correlation_id in 0..2 {
        let mut client = TcpStream::connect(address).await.expect("connect");
        client
            .write_all(&api_versions(correlation_id))
            .await
            .expect("send");
        read_frame(&mut client).await;
        open.push(client);
    }
    let mut refused = TcpStream::connect(address).await.expect("connect");
    assert!(closed_within(&mut refused, Duration::from_secs(10)).await);

    drop(open.pop());
    // The server notices the close and frees the slot; retry until it has.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut client = TcpStream::connect(address).await.expect("connect");
        let _ = client.write_all(&api_versions(9)).await;
        let answered = tokio::time::timeout(Duration::from_secs(2), client.read_i32()).await;
        if matches!(answered, Ok(Ok(_))) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the freed slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn init_producer_id(
    context: &mut Arc<RequestContext>,
    version: i16,
    claimed: (i64, i16),
) -> InitProducerIdResponse {
    let request = RequestKind::InitProducerId(
        InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str("tx"))))
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(claimed.0))
            .with_producer_epoch(claimed.1),
    );
    let frame = framed(ApiKey::InitProducerId, version, 3, &request);
    let response = start_request(
        context,
        &mut RequestMetrics::default(),
        &mut super::tests::test_gate(),
        frame.slice(4..),
    )
    .expect("starts")
    .0
    .await
    .expect("answered")
    .expect("a response");
    let mut body = response.bytes().slice(4..);
    ResponseHeader::decode(
        &mut body,
        ApiKey::InitProducerId.response_header_version(version),
    )
    .expect("header");
    let decoded = InitProducerIdResponse::decode(&mut body, version).expect("body");
    assert!(!body.has_remaining());
    decoded
}

/// KIP-360 / KIP-588: a claimed epoch that is not the current one is fenced, with
/// PRODUCER_FENCED from v4 and INVALID_PRODUCER_EPOCH before.
#[tokio::test]
async fn init_producer_id_with_a_stale_epoch_is_fenced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = broker(dir.path());
    let mut context = Arc::new(context(&broker, config(|_| {})));
    let first = init_producer_id(&mut context, 4, (-1, -1)).await;
    assert_eq!(first.error_code, 0);
    let current = (first.producer_id.0, first.producer_epoch);
    let bumped = init_producer_id(&mut context, 4, current).await;
    assert_eq!(
        (bumped.error_code, bumped.producer_epoch),
        (0, current.1 + 1)
    );
    let guessed = (current.0, current.1 + 7);
    let fenced = init_producer_id(&mut context, 4, guessed).await;
    assert_eq!(fenced.error_code, ResponseError::ProducerFenced.code());
    let fenced = init_producer_id(&mut context, 3, guessed).await;
    assert_eq!(
        fenced.error_code,
        ResponseError::InvalidProducerEpoch.code()
    );
    let half = init_producer_id(&mut context, 4, (current.0, -1)).await;
    assert_eq!(half.error_code, ResponseError::InvalidRequest.code());
}
