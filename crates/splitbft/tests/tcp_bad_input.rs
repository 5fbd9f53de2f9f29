//! Bad input over real TCP (SPEC §5): oversize frames, bad hellos, malformed frames and
//! unknown message kinds are rejected with a counter, never a panic, and the replica keeps
//! serving.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use splitbft::demo::LocalTcpCluster;
use splitbft_apps::kv::{KvOp, KvResult};
use splitbft_client::ClientOptions;
use splitbft_enclave::Backend;
use splitbft_types::codec::WIRE_VERSION;
use splitbft_types::counters::Counter;
use splitbft_types::wire::{Hello, MAX_FRAME_BYTES};
use splitbft_types::{ClientId, ReplicaId};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

async fn send(addr: std::net::SocketAddr, bytes: &[u8]) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream.flush().await.unwrap();
    // Give the replica time to read before the connection closes.
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_connections_are_counted_and_the_replica_keeps_serving() {
    let cluster = LocalTcpCluster::start(
        splitbft::demo::Protocol::Splitbft,
        splitbft::AppKind::Kv,
        4,
        1,
        200,
        10,
        Backend::Inline,
    )
    .await
    .unwrap();
    let target = cluster.addresses[1];
    let peer_hello = frame(&Hello::Replica(ReplicaId(2)).encode());
    let client_hello = frame(&Hello::Client(ClientId(0)).encode());

    // 1. A length prefix beyond the frame limit.
    let mut oversize = peer_hello.clone();
    oversize.extend_from_slice(&((MAX_FRAME_BYTES as u32) + 1).to_be_bytes());
    send(target, &oversize).await;
    // 2. A hello that is not a hello, and one naming a replica that does not exist.
    send(target, &frame(b"\x01\xff\xff\xff\xff\x0f")).await;
    send(target, &frame(&Hello::Replica(ReplicaId(9)).encode())).await;
    // 3. Garbage, an unknown kind, a wrong version after a valid peer hello.
    let mut junk = peer_hello.clone();
    junk.extend(frame(&[WIRE_VERSION, 0x03, 0xde, 0xad]));
    junk.extend(frame(&[WIRE_VERSION, 100]));
    junk.extend(frame(&[7, 0]));
    junk.extend(frame(&[]));
    send(target, &junk).await;
    // 4. A client sending something other than a request.
    let mut not_request = client_hello.clone();
    not_request.extend(frame(&[WIRE_VERSION, 6, 1, 2, 3]));
    send(target, &not_request).await;

    let report = cluster.nodes[1].as_ref().unwrap().report().await.unwrap();
    assert_eq!(report.broker_counter(Counter::FramesOversize), 1, "{:?}", report.broker);
    assert_eq!(report.broker_counter(Counter::ConnectionsBadHello), 2, "{:?}", report.broker);
    assert_eq!(report.broker_counter(Counter::PeerUnknownKind), 1, "{:?}", report.broker);
    assert_eq!(report.broker_counter(Counter::PeerBadVersion), 1, "{:?}", report.broker);
    assert!(report.broker_counter(Counter::PeerMalformed) >= 2, "{:?}", report.broker);
    assert_eq!(report.broker_counter(Counter::ClientMalformed), 1, "{:?}", report.broker);

    // The cluster, including the attacked replica, still orders and executes.
    let client = cluster.client(0, ClientOptions::default()).await.unwrap();
    for i in 0..20u8 {
        let put = KvOp::Put { key: vec![i], value: vec![i; 10] };
        assert!(matches!(KvResult::decode(&client.invoke(put.encode()).await.unwrap()), Ok(KvResult::Stored { .. })));
    }
    let got = client.invoke(KvOp::Get { key: vec![7] }.encode()).await.unwrap();
    assert_eq!(KvResult::decode(&got).unwrap(), KvResult::Value(Some(vec![7; 10])));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let report = cluster.nodes[1].as_ref().unwrap().report().await.unwrap();
    // 20 puts, the get, and the client's session Register (SPEC §6).
    assert_eq!(report.broker_counter(Counter::RequestsExecuted), 22, "{:?}", report.broker);
    cluster.shutdown().await;
}

/// The PBFT baseline (SPEC §8) serves the same client over the same broker and network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pbft_baseline_serves_clients() {
    use splitbft::demo::Protocol;
    let cluster =
        LocalTcpCluster::start(Protocol::Pbft, splitbft::AppKind::Kv, 4, 1, 200, 10, Backend::Inline).await.unwrap();
    let client = cluster.client(0, ClientOptions::default()).await.unwrap();
    for i in 0..10u8 {
        let put = KvOp::Put { key: vec![i], value: vec![i; 3] };
        assert!(matches!(KvResult::decode(&client.invoke(put.encode()).await.unwrap()), Ok(KvResult::Stored { .. })));
    }
    let got = client.invoke(KvOp::Get { key: vec![9] }.encode()).await.unwrap();
    assert_eq!(KvResult::decode(&got).unwrap(), KvResult::Value(Some(vec![9; 3])));
    assert!(
        LocalTcpCluster::start(Protocol::Pbft, splitbft::AppKind::Kv, 4, 1, 200, 10, Backend::Thread).await.is_err()
    );
    cluster.shutdown().await;
}
