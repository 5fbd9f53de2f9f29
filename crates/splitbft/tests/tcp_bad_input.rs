//! Bad input over real TCP (SPEC §5, §11): strangers that skip or fail the transport
//! handshake, and authenticated peers and clients sending oversize frames, malformed frames
//! and unknown message kinds, are rejected with a counter, never a panic, and the replica
//! keeps serving.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures_util::StreamExt;
use splitbft::demo::LocalTcpCluster;
use splitbft_apps::kv::{KvOp, KvResult};
use splitbft_client::ClientOptions;
use splitbft_enclave::Backend;
use splitbft_transport::{HandshakeError, Identity, MAX_HANDSHAKE_FRAME, initiate};
use splitbft_types::codec::WIRE_VERSION;
use splitbft_types::counters::Counter;
use splitbft_types::crypto::SecretKey;
use splitbft_types::wire::{Hello, MAX_FRAME_BYTES};
use splitbft_types::{ClientId, ReplicaId};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

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

/// A connection that completed the transport handshake (SPEC §11) as `me`, to replica
/// `to`: its raw write half, for sending whatever bytes a test wants.
async fn authenticated(
    cluster: &LocalTcpCluster,
    to: usize,
    me: Identity<'_>,
) -> Result<FramedWrite<tokio::net::tcp::OwnedWriteHalf, LengthDelimitedCodec>, HandshakeError> {
    let stream = TcpStream::connect(cluster.addresses[to]).await.unwrap();
    let (read, write) = stream.into_split();
    let mut reader = FramedRead::new(read, LengthDelimitedCodec::new());
    let mut writer = FramedWrite::new(write, LengthDelimitedCodec::new());
    let config = &cluster.secrets.config;
    initiate(&mut reader, &mut writer, config.cluster_id, &config.transport_keys[to], me).await?;
    // Keep the read half open: dropping it would not close the socket, but the replica may
    // write to it (a client's replies).
    tokio::spawn(async move { while reader.next().await.is_some() {} });
    Ok(writer)
}

async fn send_raw(writer: &mut FramedWrite<tokio::net::tcp::OwnedWriteHalf, LengthDelimitedCodec>, bytes: &[u8]) {
    writer.get_mut().write_all(bytes).await.unwrap();
    writer.get_mut().flush().await.unwrap();
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
    // Replica 2 stops (f = 1: the others keep serving), so this test can speak with its
    // transport key without the real replica 2 replacing the connection (one per identity).
    let mut cluster = cluster;
    cluster.nodes[2].take().unwrap().shutdown().await;
    let target = cluster.addresses[1];
    let peer_hello = frame(&Hello::Replica(ReplicaId(2)).encode());
    let client_hello = frame(&Hello::Client(ClientId(0)).encode());

    // Strangers (SPEC §11): before the handshake nothing but the handshake is read.
    // 1. A length prefix beyond the handshake's frame limit.
    send(target, &((MAX_HANDSHAKE_FRAME as u32) + 1).to_be_bytes()).await;
    // 2. The hellos that used to be taken on trust, and one after a bogus first message.
    send(target, &peer_hello).await;
    send(target, &client_hello).await;
    let mut bogus = frame(&[0x55; 32]);
    bogus.extend(client_hello.clone());
    send(target, &bogus).await;
    // 3. Replica 2's transport key claiming to be replica 3; client 0 with a wrong key.
    let secrets = &cluster.secrets;
    // (The initiator's side completes; the replica refuses the introduction and closes.)
    let claim = authenticated(&cluster, 1, Identity::Replica(ReplicaId(3), &secrets.transport[2])).await;
    drop(claim.unwrap());
    let wrong = SecretKey::from_seed([9; 32]);
    drop(authenticated(&cluster, 1, Identity::Client(ClientId(0), &wrong)).await.unwrap());
    // A replica that is not the one dialed is noticed by the initiator.
    let stream = TcpStream::connect(target).await.unwrap();
    let (read, write) = stream.into_split();
    let (mut reader, mut writer) =
        (FramedRead::new(read, LengthDelimitedCodec::new()), FramedWrite::new(write, LengthDelimitedCodec::new()));
    let me = Identity::Replica(ReplicaId(2), &secrets.transport[2]);
    let other = secrets.config.transport_keys[3];
    let result = initiate(&mut reader, &mut writer, secrets.config.cluster_id, &other, me).await;
    assert!(matches!(result, Err(HandshakeError::WrongResponder)), "{result:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Authenticated peers and clients still get typed errors for bad frames (SPEC §5).
    // 4. A length prefix beyond the frame limit.
    let mut peer = authenticated(&cluster, 1, Identity::Replica(ReplicaId(2), &secrets.transport[2])).await.unwrap();
    send_raw(&mut peer, &((MAX_FRAME_BYTES as u32) + 1).to_be_bytes()).await;
    // 5. Garbage, an unknown kind, a wrong version.
    let mut peer = authenticated(&cluster, 1, Identity::Replica(ReplicaId(2), &secrets.transport[2])).await.unwrap();
    let mut junk = frame(&[WIRE_VERSION, 0x03, 0xde, 0xad]);
    junk.extend(frame(&[WIRE_VERSION, 100]));
    junk.extend(frame(&[7, 0]));
    junk.extend(frame(&[]));
    send_raw(&mut peer, &junk).await;
    // 6. A client sending something other than a request.
    let client_key = SecretKey::from_seed(secrets.clients[0].seed());
    let mut client = authenticated(&cluster, 1, Identity::Client(ClientId(0), &client_key)).await.unwrap();
    send_raw(&mut client, &frame(&[WIRE_VERSION, 6, 1, 2, 3])).await;
    drop((peer, client));

    let report = cluster.nodes[1].as_ref().unwrap().report().await.unwrap();
    let count = |name| report.broker_counter(name);
    assert_eq!(count(Counter::HandshakeFramesOversize), 1, "{:?}", report.broker);
    // The two bare hellos are not Noise messages; nor is a hello after a first message.
    assert_eq!(count(Counter::HandshakeNoiseErrors), 3, "{:?}", report.broker);
    assert_eq!(count(Counter::HandshakeUnprovenReplicas), 1, "{:?}", report.broker);
    assert_eq!(count(Counter::HandshakeUnprovenClients), 1, "{:?}", report.broker);
    // No stranger's hello reached the core: no client route, no resend for them.
    assert_eq!(count(Counter::ClientMalformed), 1, "{:?}", report.broker);
    assert_eq!(count(Counter::FramesOversize), 1, "{:?}", report.broker);
    assert_eq!(count(Counter::PeerUnknownKind), 1, "{:?}", report.broker);
    assert_eq!(count(Counter::PeerBadVersion), 1, "{:?}", report.broker);
    assert!(count(Counter::PeerMalformed) >= 2, "{:?}", report.broker);
    assert_eq!(count(Counter::ClientMalformed), 1, "{:?}", report.broker);

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
