//! Bad input over real TCP (SPEC §5, §11): strangers that skip or fail the transport
//! handshake, and authenticated peers and clients sending oversize frames, malformed frames
//! and unknown message kinds, are rejected with a counter, never a panic, and the replica
//! keeps serving.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use splitbft::demo::LocalTcpCluster;
use splitbft_apps::kv::{KvOp, KvResult};
use splitbft_client::ClientOptions;
use splitbft_enclave::Backend;
use splitbft_transport::{HandshakeError, Identity, MAX_HANDSHAKE_FRAME, SecureWrite, initiate};
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
/// `to`: its write half, sealing whatever frames a test wants (with no frame limit of its
/// own, so that it can send oversize ones).
async fn authenticated(
    cluster: &LocalTcpCluster,
    to: usize,
    me: Identity<'_>,
) -> Result<SecureWrite<tokio::net::tcp::OwnedWriteHalf>, HandshakeError> {
    let stream = TcpStream::connect(cluster.addresses[to]).await.unwrap();
    let (read, write) = stream.into_split();
    let mut reader = FramedRead::new(read, LengthDelimitedCodec::new());
    let mut writer = FramedWrite::new(write, LengthDelimitedCodec::new());
    let config = &cluster.secrets.config;
    let session = initiate(&mut reader, &mut writer, config.cluster_id, &config.transport_keys[to], me).await?;
    let mut reader = reader.map_decoder(|_| session.decoder(MAX_FRAME_BYTES));
    // Keep the read half open: dropping it would not close the socket, but the replica may
    // write to it (a client's replies).
    tokio::spawn(async move { while reader.next().await.is_some() {} });
    Ok(writer.map_encoder(|_| session.encoder(usize::MAX)))
}

/// Seals and sends `frames`, then gives the replica time to read them.
async fn send_sealed(writer: &mut SecureWrite<tokio::net::tcp::OwnedWriteHalf>, frames: &[&[u8]]) {
    for frame in frames {
        writer.send(bytes::Bytes::copy_from_slice(frame)).await.unwrap();
    }
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
    // 4. A frame one byte beyond the frame limit (refused at its first record).
    let mut peer = authenticated(&cluster, 1, Identity::Replica(ReplicaId(2), &secrets.transport[2])).await.unwrap();
    let _ = peer.send(bytes::Bytes::from(vec![0u8; MAX_FRAME_BYTES + 1])).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // 5. Garbage, an unknown kind, a wrong version.
    let mut peer = authenticated(&cluster, 1, Identity::Replica(ReplicaId(2), &secrets.transport[2])).await.unwrap();
    send_sealed(&mut peer, &[&[WIRE_VERSION, 0x03, 0xde, 0xad], &[WIRE_VERSION, 100], &[7, 0], &[]]).await;
    // 6. A client sending something other than a request.
    let client_key = SecretKey::from_seed(secrets.clients[0].seed());
    let mut client = authenticated(&cluster, 1, Identity::Client(ClientId(0), &client_key)).await.unwrap();
    send_sealed(&mut client, &[&[WIRE_VERSION, 6, 1, 2, 3]]).await;
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

/// What the man in the middle does to one connection once its handshake is through.
#[derive(Clone, Copy, Debug)]
enum Tamper {
    /// Sends a well-formed client frame of its own before the client's bytes.
    Inject,
    /// Flips one byte of what the client sends first.
    Flip,
}

/// A man in the middle (SPEC §11) in front of `target`: it relays each connection's
/// handshake untouched (the two handshake messages the initiator sends are length-prefixed
/// frames), then tampers as `attacks` says for the first connections in order and relays
/// later ones untouched. Returns its address and how many tampered connections the replica
/// closed.
async fn man_in_the_middle(
    target: std::net::SocketAddr,
    attacks: Vec<Tamper>,
) -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let closed = std::sync::Arc::new(AtomicUsize::new(0));
    let closed_by_replica = std::sync::Arc::clone(&closed);
    tokio::spawn(async move {
        let mut attacks = attacks.into_iter();
        while let Ok((client, _)) = listener.accept().await {
            let Ok(replica) = TcpStream::connect(target).await else { continue };
            let attack = attacks.next();
            let closed = std::sync::Arc::clone(&closed_by_replica);
            tokio::spawn(async move {
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_replica, mut to_replica) = replica.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_replica, &mut to_client).await;
                    // The replica ended the connection it was tampered on.
                    if attack.is_some() {
                        closed.fetch_add(1, Ordering::SeqCst);
                    }
                });
                // The initiator's two handshake messages (`-> e` and `-> s, se`), relayed as they are.
                for _ in 0..2 {
                    let mut len = [0u8; 4];
                    if from_client.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut message = vec![0u8; u32::from_be_bytes(len) as usize];
                    if from_client.read_exact(&mut message).await.is_err() {
                        return;
                    }
                    let _ = to_replica.write_all(&[&len[..], &message].concat()).await;
                }
                match attack {
                    Some(Tamper::Inject) => {
                        // What a client's malformed frame looked like on the wire before SPEC §11.
                        let _ = to_replica.write_all(&frame(&[WIRE_VERSION, 6, 1, 2, 3])).await;
                    }
                    Some(Tamper::Flip) => {
                        let mut first = vec![0u8; 32];
                        if from_client.read_exact(&mut first).await.is_err() {
                            return;
                        }
                        first[12] ^= 0x01;
                        let _ = to_replica.write_all(&first).await;
                    }
                    None => {}
                }
                let _ = tokio::io::copy(&mut from_client, &mut to_replica).await;
            });
        }
    });
    (address, closed)
}

/// SPEC §11: frames after the handshake are encrypted and authenticated. A man in the
/// middle between a genuine client and the primary injects a frame on one connection and
/// flips a byte on the next: the replica delivers neither, counts both and closes both
/// connections, and the client (reconnecting through the same relay) completes every op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_man_in_the_middle_can_neither_inject_nor_alter_frames() {
    let mut cluster = LocalTcpCluster::start(
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
    let primary = cluster.addresses[0];
    let (relay, closed) = man_in_the_middle(primary, vec![Tamper::Inject, Tamper::Flip]).await;
    cluster.addresses[0] = relay;
    let client = cluster.client(0, ClientOptions::default()).await.unwrap();
    cluster.addresses[0] = primary;
    for i in 0..10u8 {
        let put = KvOp::Put { key: vec![i], value: vec![i; 10] };
        let result = tokio::time::timeout(Duration::from_secs(20), client.invoke(put.encode())).await;
        assert!(matches!(KvResult::decode(&result.unwrap().unwrap()), Ok(KvResult::Stored { .. })));
    }
    let report = cluster.nodes[0].as_ref().unwrap().report().await.unwrap();
    // Nothing the relay sent on its own or altered reached the core as client 0's.
    assert_eq!(report.broker_counter(Counter::ClientMalformed), 0, "{:?}", report.broker);
    assert_eq!(report.broker_counter(Counter::FramesUnauthenticated), 2, "{:?}", report.broker);
    assert_eq!(closed.load(std::sync::atomic::Ordering::SeqCst), 2);
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

/// SPEC §11: a replica whose size limits disagree refuses to start, naming the two limits;
/// with the defaults (n = 4 and n = 7) it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_limits_disagree_refuses_to_start() {
    use splitbft_broker::{NodeConfig, NodeError, spawn_node};
    use splitbft_enclave::ReplicaSecrets;
    use splitbft_types::keys::ClusterSecrets;
    use splitbft_types::{CompartmentKind, ProtocolConfig};
    async fn start(secrets: &ClusterSecrets, protocol: ProtocolConfig, frame: usize) -> Result<(), NodeError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addresses = vec![listener.local_addr().unwrap(); protocol.n()];
        let me = ReplicaId(0);
        let mut config = NodeConfig::new(protocol, me, addresses, Backend::Inline, secrets.transport[0].clone());
        config.max_frame_bytes = frame;
        let keys = ReplicaSecrets {
            keys: CompartmentKind::ALL.map(|k| SecretKey::from_seed(secrets.enclave(me, k).seed())),
            execution_group: secrets.execution_group_secret(),
        };
        let node = spawn_node(config, listener, keys, splitbft::AppKind::Kv.build().unwrap()).await?;
        node.shutdown().await;
        Ok(())
    }
    for f in [1, 2] {
        let secrets = ClusterSecrets::deterministic(9, f, 10, 1);
        start(&secrets, secrets.config.clone(), MAX_FRAME_BYTES).await.unwrap();
        // Batches of B largest requests no longer fit a 4 MiB frame.
        let Err(NodeError::Limits(e)) = start(&secrets, secrets.config.clone(), 4 << 20).await else { panic!() };
        assert_eq!((e.what, e.within), ("a batch (max_batch largest requests)", "the frame limit"), "{e}");
        // An op limit below the KV store's largest op (a CAS with two values).
        let mut small = secrets.config.clone();
        small.max_op_bytes = 60 * 1024;
        let Err(NodeError::Limits(e)) = start(&secrets, small, MAX_FRAME_BYTES).await else { panic!() };
        assert_eq!(e.within, "max_op_bytes", "{e}");
    }
    // So many clients that their reply caches and the store's largest state do not fit
    // state transfer: refused before anything starts, for `replica` and `demo` alike.
    let mut many = ClusterSecrets::deterministic(9, 1, 1, 1).config;
    many.clients = vec![many.clients[0]; 3000];
    let e = splitbft::AppKind::Kv.check_limits(&many, MAX_FRAME_BYTES).unwrap_err().to_string();
    assert!(e.contains("the Execution snapshot") && e.contains("the state-transfer limit"), "{e}");
    splitbft::AppKind::Ledger
        .check_limits(&ClusterSecrets::deterministic(9, 2, 1000, 1).config, MAX_FRAME_BYTES)
        .unwrap();
}
