//! The node-to-node transport over real TCP on 127.0.0.1: calls, timeouts, reconnects, and
//! what a bad peer can and cannot do to a node.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use sluice_cluster::transport::frame::{self, WireMessage};
use sluice_cluster::transport::{
    CallError, GroupDispatcher, RemoteFailure, RpcKind, Transport, TransportConfig,
};
use sluice_cluster::{GroupId, NodeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Answers with the request body; a body of "hang" is never answered.
struct Echo;

impl GroupDispatcher for Echo {
    fn dispatch(
        &self,
        _kind: RpcKind,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, RemoteFailure>> {
        Box::pin(async move {
            if body.as_ref() == b"hang" {
                futures::future::pending::<()>().await;
            }
            Ok(body)
        })
    }
}

fn partition(n: u128) -> GroupId {
    GroupId::Partition {
        topic_id: uuid::Uuid::from_u128(n),
        partition: 0,
    }
}

async fn transport(node_id: NodeId, listen: SocketAddr) -> Transport {
    let listener = TcpListener::bind(listen).await.unwrap();
    let mut config = TransportConfig::new(node_id);
    config.request_timeout = Duration::from_millis(500);
    config.frame_bytes_max = 64 * 1024;
    Transport::start(config, listener, &[]).unwrap()
}

async fn connected_pair() -> (Transport, Transport) {
    let one = transport(1, "127.0.0.1:0".parse().unwrap()).await;
    let two = transport(2, "127.0.0.1:0".parse().unwrap()).await;
    one.add_peer(2, two.local_addr());
    two.add_peer(1, one.local_addr());
    wait_connected(&one, 2).await;
    wait_connected(&two, 1).await;
    (one, two)
}

async fn wait_connected(transport: &Transport, peer: NodeId) {
    for _ in 0..200 {
        if transport.is_connected(peer) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("node {} never connected to {peer}", transport.node_id());
}

#[tokio::test]
async fn calls_flow_both_ways_over_one_connection_and_unknown_groups_are_refused() {
    let (one, two) = connected_pair().await;
    one.register_dispatcher(partition(1), Arc::new(Echo));
    two.register_dispatcher(partition(1), Arc::new(Echo));
    let reply = one
        .call(
            2,
            partition(1),
            RpcKind::Vote,
            Bytes::from_static(b"ping"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(reply.as_ref(), b"ping");
    // The acceptor's requests travel on the connection the dialer opened.
    let reply = two
        .call(
            1,
            partition(1),
            RpcKind::Vote,
            Bytes::from_static(b"pong"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(reply.as_ref(), b"pong");
    let refused = one
        .call(
            2,
            partition(2),
            RpcKind::Vote,
            Bytes::from_static(b"x"),
            None,
        )
        .await;
    assert_eq!(
        refused,
        Err(CallError::Remote {
            target: 2,
            failure: RemoteFailure::UnknownGroup(partition(2))
        })
    );
}

#[tokio::test]
async fn a_call_without_answer_times_out_and_others_still_complete() {
    let (one, two) = connected_pair().await;
    two.register_dispatcher(partition(1), Arc::new(Echo));
    let hanging = one.call(
        2,
        partition(1),
        RpcKind::AppendEntries,
        Bytes::from_static(b"hang"),
        Some(Duration::from_millis(200)),
    );
    let answered = one.call(
        2,
        partition(1),
        RpcKind::AppendEntries,
        Bytes::from_static(b"ok"),
        None,
    );
    let (hanging, answered) = tokio::join!(hanging, answered);
    assert!(
        matches!(hanging, Err(CallError::Timeout { target: 2, .. })),
        "{hanging:?}"
    );
    assert_eq!(answered.unwrap().as_ref(), b"ok");
}

#[tokio::test]
async fn dialer_reconnects_after_the_peer_restarts() {
    let (one, two) = connected_pair().await;
    let two_addr = two.local_addr();
    two.shutdown().await;
    // Calls fail fast while the peer is away.
    let mut failed_fast = false;
    for _ in 0..100 {
        if let Err(CallError::Unreachable(2)) = one
            .call(
                2,
                partition(1),
                RpcKind::Vote,
                Bytes::from_static(b"x"),
                None,
            )
            .await
        {
            failed_fast = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        failed_fast,
        "calls to a stopped peer must fail as unreachable"
    );
    let two = transport(2, two_addr).await;
    two.add_peer(1, one.local_addr());
    two.register_dispatcher(partition(1), Arc::new(Echo));
    wait_connected(&one, 2).await;
    let reply = one
        .call(
            2,
            partition(1),
            RpcKind::Vote,
            Bytes::from_static(b"back"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(reply.as_ref(), b"back");
}

/// Reads until the server closes the connection; fails if it stays open.
async fn assert_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept a bad connection open");
}

#[tokio::test]
async fn bad_frames_close_the_connection_and_the_server_keeps_serving() {
    let server = transport(2, "127.0.0.1:0".parse().unwrap()).await;
    // Node 1 is "known" so that the test can speak for it.
    server.add_peer(1, "127.0.0.1:9".parse().unwrap());
    server.register_dispatcher(partition(1), Arc::new(Echo));
    let addr = server.local_addr();
    let limit = 64 * 1024;

    // Garbage instead of a hello.
    let mut garbage = TcpStream::connect(addr).await.unwrap();
    garbage
        .write_all(b"\x00\x00\x00\x05hello world, not bincode")
        .await
        .unwrap();
    assert_closed(&mut garbage).await;

    // A length over the frame limit.
    let mut oversized = TcpStream::connect(addr).await.unwrap();
    oversized
        .write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 0])
        .await
        .unwrap();
    assert_closed(&mut oversized).await;

    // A hello from a node that must not dial (higher id) is refused.
    let mut wrong_dialer = TcpStream::connect(addr).await.unwrap();
    let hello3 = frame::encode_frame(&WireMessage::Hello { node_id: 3 }, limit).unwrap();
    wrong_dialer.write_all(&hello3.to_bytes()).await.unwrap();
    assert_closed(&mut wrong_dialer).await;

    // A proper peer connection: an unknown group is answered, then garbage closes it.
    let mut peer = TcpStream::connect(addr).await.unwrap();
    let hello1 = frame::encode_frame(&WireMessage::Hello { node_id: 1 }, limit).unwrap();
    let request = frame::encode_frame(
        &WireMessage::Request {
            request_id: 42,
            group: partition(99),
            kind: RpcKind::AppendEntries,
            body: Bytes::new(),
        },
        limit,
    )
    .unwrap();
    peer.write_all(&[hello1.to_bytes(), request.to_bytes()].concat())
        .await
        .unwrap();
    let mut len = [0u8; 4];
    peer.read_exact(&mut len).await.unwrap();
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    peer.read_exact(&mut payload).await.unwrap();
    assert_eq!(
        frame::decode_message(Bytes::from(payload), limit).unwrap(),
        WireMessage::Response {
            request_id: 42,
            result: Err(RemoteFailure::UnknownGroup(partition(99)))
        }
    );
    peer.write_all(b"\x00\x00\x00\x03\xff\xff\xff")
        .await
        .unwrap();
    assert_closed(&mut peer).await;
    assert!(server.stats().bad_connections >= 4, "{:?}", server.stats());

    // The server still serves a well-behaved peer.
    let client = transport(1, "127.0.0.1:0".parse().unwrap()).await;
    client.add_peer(2, addr);
    wait_connected(&client, 2).await;
    let reply = client
        .call(
            2,
            partition(1),
            RpcKind::Vote,
            Bytes::from_static(b"still here"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(reply.as_ref(), b"still here");
}

#[tokio::test]
async fn concurrent_calls_share_writes() {
    let (one, two) = connected_pair().await;
    two.register_dispatcher(partition(1), Arc::new(Echo));
    let before = one.stats();
    let calls = (0..500u32).map(|i| {
        let one = one.clone();
        async move {
            one.call(
                2,
                partition(1),
                RpcKind::AppendEntries,
                Bytes::from(i.to_be_bytes().to_vec()),
                None,
            )
            .await
        }
    });
    let replies = futures::future::join_all(calls).await;
    for (i, reply) in replies.into_iter().enumerate() {
        assert_eq!(reply.unwrap().as_ref(), (i as u32).to_be_bytes());
    }
    let after = one.stats();
    let frames = after.frames_sent - before.frames_sent;
    let writes = after.writes - before.writes;
    assert_eq!(frames, 500);
    assert!(writes * 5 <= frames, "{frames} frames took {writes} writes");
}

#[tokio::test]
async fn an_oversized_request_is_refused_before_it_is_sent() {
    let (one, _two) = connected_pair().await;
    let body = Bytes::from(vec![0u8; 128 * 1024]); // the test transports allow 64 KiB
    let result = one
        .call(2, partition(1), RpcKind::AppendEntries, body, None)
        .await;
    assert!(
        matches!(result, Err(CallError::TooLarge { .. })),
        "{result:?}"
    );
    assert_eq!(one.stats().frames_sent, 0);
}

/// A listener for node 2 that accepts node 1's connection and reads nothing until `silent`
/// has passed, then counts the frames it gets (the hello included) by size for `reading`.
/// A peer that accepts one connection, reads nothing until `start_reading` completes, then
/// records the size of every frame it gets for `reading`.
async fn slow_peer(
    start_reading: impl std::future::Future<Output = ()> + Send + 'static,
    reading: Duration,
) -> (SocketAddr, tokio::task::JoinHandle<Vec<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reader = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        start_reading.await;
        let mut frames = tokio_util::codec::FramedRead::new(stream, frame::codec(4 << 20));
        let mut sizes = Vec::new();
        let deadline = tokio::time::Instant::now() + reading;
        while let Ok(Some(Ok(payload))) =
            tokio::time::timeout_at(deadline, futures::StreamExt::next(&mut frames)).await
        {
            sizes.push(payload.len());
        }
        sizes
    });
    (addr, reader)
}

fn bounded_transport_config() -> TransportConfig {
    let mut config = TransportConfig::new(1);
    config.frame_bytes_max = 1 << 20;
    config.queue_bytes_max = 2 << 20;
    config
}

#[tokio::test]
async fn a_peer_that_stops_reading_fills_a_bounded_queue_and_later_calls_fail_at_once() {
    let (addr, _reader) =
        slow_peer(tokio::time::sleep(Duration::from_secs(30)), Duration::ZERO).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let one = Transport::start(bounded_transport_config(), listener, &[(2, addr)]).unwrap();
    wait_connected(&one, 2).await;
    // 50 MB: more than the socket buffers and the 2 MiB queue together.
    let calls = (0..100).map(|_| {
        one.call(
            2,
            partition(1),
            RpcKind::AppendEntries,
            Bytes::from(vec![7u8; 512 * 1024]),
            Some(Duration::from_secs(2)),
        )
    });
    let started = tokio::time::Instant::now();
    let outcomes = futures::future::join_all(calls).await;
    let refused = outcomes
        .iter()
        .filter(|o| matches!(o, Err(CallError::Unreachable(2))))
        .count();
    assert!(refused > 0, "no call was refused: the queue is unbounded");
    assert!(
        outcomes.iter().all(|o| matches!(
            o,
            Err(CallError::Unreachable(2) | CallError::Timeout { .. })
        )),
        "{outcomes:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    one.shutdown().await;
}

#[tokio::test]
async fn a_request_whose_caller_gave_up_is_never_written() {
    // The peer reads only once every small call has given up: were it to start earlier, a
    // small request still awaited could rightly be written.
    let (all_small_calls_gave_up, gate) = tokio::sync::oneshot::channel::<()>();
    let (addr, reader) = slow_peer(
        async move {
            let _ = gate.await;
        },
        Duration::from_secs(3),
    )
    .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = bounded_transport_config();
    config.queue_bytes_max = 64 << 20;
    let one = Transport::start(config, listener, &[(2, addr)]).unwrap();
    wait_connected(&one, 2).await;
    // Big requests whose callers wait fill the socket buffers and block the writer...
    let big: Vec<_> = (0..16)
        .map(|_| {
            let one = one.clone();
            tokio::spawn(async move {
                one.call(
                    2,
                    partition(1),
                    RpcKind::AppendEntries,
                    Bytes::from(vec![7u8; 900 * 1024]),
                    Some(Duration::from_secs(10)),
                )
                .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...so these small ones wait in the queue until their callers give up, as openraft gives
    // up on an AppendEntries after one heartbeat interval.
    for _ in 0..20 {
        let outcome = one
            .call(
                2,
                partition(1),
                RpcKind::AppendEntries,
                Bytes::from_static(b"small"),
                Some(Duration::from_millis(20)),
            )
            .await;
        assert!(
            matches!(outcome, Err(CallError::Timeout { .. })),
            "{outcome:?}"
        );
    }
    let _ = all_small_calls_gave_up.send(());
    let sizes = reader.await.unwrap();
    let big_received = sizes.iter().filter(|s| **s > 100 * 1024).count();
    let small_received = sizes.iter().filter(|s| **s < 1024).count() - 1; // less the hello
    assert_eq!(big_received, 16, "{sizes:?}");
    // At most what the writer had already gathered into the write that blocked (one or two);
    // all 20 without the check.
    assert!(
        small_received <= 2,
        "requests nobody waits for were sent: {sizes:?}"
    );
    for call in big {
        call.abort();
    }
    one.shutdown().await;
}

/// A node that is not a peer gets an answer to an open request (a join) on a one-shot
/// connection, but a closed one (a vote) as a first frame is refused. A removed peer's
/// connection closes, it is not dialled again, and its calls fail as an unknown peer.
#[tokio::test]
async fn strangers_may_only_ask_to_join_and_removed_peers_are_dropped() {
    let (one, two) = connected_pair().await;
    one.register_dispatcher(GroupId::Metadata, Arc::new(Echo));
    let limit = 64 * 1024;
    let answer: String = sluice_cluster::transport::call_once(
        one.local_addr(),
        GroupId::Metadata,
        RpcKind::Join,
        &"let me in".to_string(),
        Duration::from_secs(2),
        limit,
        None,
    )
    .await
    .unwrap();
    assert_eq!(answer, "let me in");
    let before = one.stats().bad_connections;
    let closed: Result<String, CallError> = sluice_cluster::transport::call_once(
        one.local_addr(),
        GroupId::Metadata,
        RpcKind::Vote,
        &"a vote".to_string(),
        Duration::from_secs(2),
        limit,
        None,
    )
    .await;
    assert!(
        matches!(closed, Err(CallError::Connect { .. })),
        "{closed:?}"
    );
    assert_eq!(one.stats().bad_connections, before + 1);

    assert!(one.remove_peer(2));
    assert!(!one.remove_peer(2));
    assert!(one.peers().is_empty());
    // Node 2 loses the connection and, redialled by nobody, stays disconnected.
    for _ in 0..200 {
        if !two.is_connected(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!two.is_connected(1));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!two.is_connected(1));
    let call = one
        .call(
            2,
            partition(1),
            RpcKind::Vote,
            Bytes::from_static(b"x"),
            None,
        )
        .await;
    assert_eq!(call, Err(CallError::UnknownPeer(2)));
    one.shutdown().await;
    two.shutdown().await;
}
