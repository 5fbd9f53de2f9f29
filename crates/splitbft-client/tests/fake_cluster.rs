//! The client against a fake cluster: four TCP listeners that check request MACs with the
//! Preparation enclaves' keys and answer with replies MAC'd by the Execution enclaves'
//! keys, some of them Byzantine in scripted ways.
//!
//! "Ordering" is faked by a sequencer: a request that reaches any non-silent fake is
//! executed once, after `exec_delay`, and every fake then answers it according to its mode.

#![allow(clippy::unwrap_used, reason = "test harness helpers: a failed setup step aborts the test")]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use splitbft_client::{Client, ClientError, ClientOptions, verify_attestation};
use splitbft_types::attest::{AttestationError, CodeIdentity, SoftwareAttestation, SoftwarePlatform};
use splitbft_types::codec::{decode_message, encode_message, to_bytes};
use splitbft_types::config::{Keyring, ProtocolConfig};
use splitbft_types::crypto::{MacKey, SecretKey, reply_mac, verify_request_mac};
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::msg::{Mac, Reply, Request};
use splitbft_types::session::Refusal;
use splitbft_types::session::{Admission, GroupSecret, ReplyBody, Sessions};
use splitbft_types::wire::Hello;
use splitbft_types::{ClientId, CompartmentKind, EnclaveId, Message, ReplicaId, Timestamp};

const CLUSTER: u64 = 42;
const CLIENT: ClientId = ClientId(0);
/// The session the fake Execution holds for the client (installed, see `Cluster::client`).
const SESSION_EPOCH: u64 = 1;
const SESSION_KEY: [u8; 32] = [0x42; 32];

/// How a fake replica behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Orders what it receives and replies correctly.
    Honest,
    /// Neither orders nor replies (a dead or censoring primary).
    Silent,
    /// Replies with a wrong result of its own, correctly MAC'd.
    Wrong,
    /// Replies with the right result and a garbage MAC.
    BadMac,
    /// Replies correctly, plus a reply claiming to come from replica `.0` (MAC'd with its own key).
    Forge(u32),
    /// Sends every kind of junk, then its correct reply twice.
    Junk,
    /// Answers that the request executed but its result left the cache
    /// (`ReplyBody::Evicted`, correctly MAC'd).
    Evicted,
}

#[derive(Clone, Copy, Debug)]
struct Spec {
    mode: Mode,
    /// Delay before this fake's replies go out.
    delay: Duration,
    /// No listener at this replica's address.
    down: bool,
}

fn spec(mode: Mode) -> Spec {
    Spec { mode, delay: Duration::ZERO, down: false }
}

fn late(mode: Mode, millis: u64) -> Spec {
    Spec { delay: Duration::from_millis(millis), ..spec(mode) }
}

fn down() -> Spec {
    Spec { down: true, ..spec(Mode::Silent) }
}

fn honest_result(op: &[u8]) -> Vec<u8> {
    [b"ok:".as_slice(), op].concat()
}

struct Fake {
    index: u32,
    spec: Spec,
    request_key: MacKey,
    reply_key: MacKey,
    /// Timestamps of requests with a valid MAC, in arrival order.
    received: Mutex<Vec<Timestamp>>,
    bad_request_macs: AtomicU64,
    hellos: AtomicU64,
}

/// The fake ordering: each timestamp is executed once, `exec_delay` after it first arrives.
/// Execution's session rules are the real ones (`Sessions`, SPEC §6).
struct Sequencer {
    config: ProtocolConfig,
    /// Each fake replica's transport secret: the real handshake runs (SPEC §11).
    transport: Vec<splitbft_types::keys::TransportSecret>,
    keys: Keyring,
    group: GroupSecret,
    sessions: Mutex<Sessions>,
    /// Plaintext answer per executed timestamp.
    answers: Mutex<HashMap<Timestamp, ReplyBody>>,
    view: u64,
    exec_delay: Duration,
    ordered: Mutex<HashSet<Timestamp>>,
    /// (currently executing, most ever executing at once).
    in_flight: Mutex<(usize, usize)>,
    executed: broadcast::Sender<Request>,
}

impl Sequencer {
    fn order(self: &Arc<Self>, request: Request) {
        if !self.ordered.lock().unwrap().insert(request.timestamp) {
            return;
        }
        {
            let mut in_flight = self.in_flight.lock().unwrap();
            in_flight.0 += 1;
            in_flight.1 = in_flight.1.max(in_flight.0);
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(this.exec_delay).await;
            let answer = match this.sessions.lock().unwrap().admit(&this.config, &this.keys, &this.group, &request) {
                Admission::Execute(op) => ReplyBody::Plain(honest_result(&op)),
                Admission::Registered { epoch } => ReplyBody::Registered { epoch },
                Admission::Refused(r) => ReplyBody::Refused(r),
            };
            this.answers.lock().unwrap().insert(request.timestamp, answer);
            // Leaves the in-flight set before any reply exists, so the client cannot have
            // started a new request while this one still counts.
            this.in_flight.lock().unwrap().0 -= 1;
            let _ = this.executed.send(request);
        });
    }

    /// The result field replica `replica` sends for `request`: the plaintext answer sealed
    /// with that replica's nonce, or `wrong` sealed the same way.
    fn result(&self, request: &Request, replica: u32, wrong: Option<Vec<u8>>) -> Vec<u8> {
        let answer = self.answers.lock().unwrap().get(&request.timestamp).cloned();
        let answer = wrong.map(ReplyBody::Plain).or(answer).expect("replies follow execution");
        let sessions = self.sessions.lock().unwrap();
        to_bytes(&sessions.reply_body(&self.config, request.client, request.timestamp, ReplicaId(replica), answer))
    }

    fn max_in_flight(&self) -> usize {
        self.in_flight.lock().unwrap().1
    }
}

struct Cluster {
    secrets: ClusterSecrets,
    addrs: Vec<SocketAddr>,
    fakes: Vec<Arc<Fake>>,
    sequencer: Arc<Sequencer>,
}

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

impl Cluster {
    async fn start(specs: [Spec; 4], exec_delay: Duration, view: u64) -> Cluster {
        let secrets = ClusterSecrets::deterministic(CLUSTER, 1, 1, 7);
        let client_pk = secrets.clients[0].public();
        let (executed, _) = broadcast::channel(1024);
        let keys = secrets.config.validate().unwrap();
        let mut sessions = Sessions::new(1);
        assert!(sessions.install(CLIENT, SESSION_EPOCH, SESSION_KEY));
        let sequencer = Arc::new(Sequencer {
            config: secrets.config.clone(),
            transport: secrets.transport.clone(),
            keys,
            group: secrets.execution_group_secret(),
            sessions: Mutex::new(sessions),
            answers: Mutex::default(),
            view,
            exec_delay,
            ordered: Mutex::default(),
            in_flight: Mutex::default(),
            executed,
        });
        let mut addrs = Vec::new();
        let mut fakes = Vec::new();
        for (i, spec) in specs.into_iter().enumerate() {
            let key = |kind| {
                let enclave = EnclaveId { replica: ReplicaId(i as u32), kind };
                secrets.enclave(enclave.replica, kind).mac_key(&client_pk, CLUSTER, CLIENT, enclave)
            };
            let fake = Arc::new(Fake {
                index: i as u32,
                spec,
                request_key: key(CompartmentKind::Preparation),
                reply_key: key(CompartmentKind::Execution),
                received: Mutex::default(),
                bad_request_macs: AtomicU64::new(0),
                hellos: AtomicU64::new(0),
            });
            let addr = if spec.down {
                free_addr()
            } else {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                tokio::spawn(serve(listener, Arc::clone(&fake), Arc::clone(&sequencer)));
                addr
            };
            addrs.push(addr);
            fakes.push(fake);
        }
        Cluster { secrets, addrs, fakes, sequencer }
    }

    /// Brings up a replica that was down, at its configured address.
    async fn revive(&self, index: usize, mode: Mode) -> Arc<Fake> {
        let listener = TcpListener::bind(self.addrs[index]).await.unwrap();
        let old = &self.fakes[index];
        let fake = Arc::new(Fake {
            index: old.index,
            spec: spec(mode),
            request_key: old.request_key.clone(),
            reply_key: old.reply_key.clone(),
            received: Mutex::default(),
            bad_request_macs: AtomicU64::new(0),
            hellos: AtomicU64::new(0),
        });
        tokio::spawn(serve(listener, Arc::clone(&fake), Arc::clone(&self.sequencer)));
        fake
    }

    /// A connected client whose session is the one the fake Execution already holds.
    async fn client(&self, options: ClientOptions) -> Client {
        let client = self.unregistered_client(options).await;
        client.resume_session(SESSION_EPOCH, SESSION_KEY);
        client
    }

    async fn unregistered_client(&self, options: ClientOptions) -> Client {
        let client = self.try_client(options).await.expect("connect");
        // Replies are only sent on connections the fakes have registered; wait for them.
        for fake in self.fakes.iter().filter(|f| !f.spec.down) {
            wait_until(|| fake.hellos.load(Ordering::SeqCst) >= 1).await;
        }
        client
    }

    async fn try_client(&self, options: ClientOptions) -> Result<Client, ClientError> {
        let secret = SecretKey::from_seed(self.secrets.clients[0].seed());
        Client::connect(self.secrets.config.clone(), self.addrs.clone(), CLIENT, secret, options).await
    }

    fn received(&self, index: usize) -> Vec<Timestamp> {
        self.fakes[index].received.lock().unwrap().clone()
    }

    fn assert_request_macs_valid(&self) {
        for fake in &self.fakes {
            assert_eq!(fake.bad_request_macs.load(Ordering::SeqCst), 0, "replica {} saw a bad request MAC", fake.index);
        }
    }
}

async fn wait_until(mut condition: impl FnMut() -> bool) {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(3);
    while !condition() {
        assert!(tokio::time::Instant::now() < give_up, "condition not reached in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn serve(listener: TcpListener, fake: Arc<Fake>, sequencer: Arc<Sequencer>) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(handle(stream, Arc::clone(&fake), Arc::clone(&sequencer)));
    }
}

async fn handle(stream: TcpStream, fake: Arc<Fake>, sequencer: Arc<Sequencer>) {
    let (read, write) = stream.into_split();
    let mut reader = FramedRead::new(read, LengthDelimitedCodec::new());
    let mut writer = FramedWrite::new(write, LengthDelimitedCodec::new());
    let transport = &sequencer.transport[fake.index as usize];
    let Ok((hello, session)) =
        splitbft_transport::respond(&mut reader, &mut writer, &sequencer.config, transport).await
    else {
        return;
    };
    let (mut reader, mut writer) = session.secure(reader, writer, splitbft_types::wire::MAX_FRAME_BYTES);
    if hello != Hello::Client(CLIENT) {
        // Counted as a protocol violation by the client; the tests assert there are none.
        fake.bad_request_macs.fetch_add(1, Ordering::SeqCst);
        return;
    }
    let mut executed = sequencer.executed.subscribe();
    fake.hellos.fetch_add(1, Ordering::SeqCst);

    let (out, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            if writer.send(Bytes::from(frame)).await.is_err() {
                break;
            }
        }
    });
    let replier = Arc::clone(&fake);
    let sequencer_for_replies = Arc::clone(&sequencer);
    let view = sequencer.view;
    tokio::spawn(async move {
        loop {
            let request = match executed.recv().await {
                Ok(request) => request,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let frames = replies(&replier, &sequencer_for_replies, &request, view);
            let out = out.clone();
            let delay = replier.spec.delay;
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                for frame in frames {
                    let _ = out.send(frame);
                }
            });
        }
    });

    while let Some(Ok(frame)) = reader.next().await {
        let Ok(Message::Request(request)) = decode_message(&frame) else {
            fake.bad_request_macs.fetch_add(1, Ordering::SeqCst);
            continue;
        };
        let mac_ok = request
            .auth
            .get(fake.index as usize)
            .is_some_and(|mac| verify_request_mac(&fake.request_key, CLUSTER, &request, mac).is_ok());
        if !mac_ok || request.client != CLIENT {
            fake.bad_request_macs.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        fake.received.lock().unwrap().push(request.timestamp);
        if fake.spec.mode != Mode::Silent {
            sequencer.order(request);
        }
    }
}

fn reply_frame(
    fake: &Fake,
    sequencer: &Sequencer,
    request: &Request,
    view: u64,
    edit: impl FnOnce(&mut Reply),
) -> Vec<u8> {
    let mut reply = Reply {
        view,
        client: request.client,
        timestamp: request.timestamp,
        replica: ReplicaId(fake.index),
        result: sequencer.result(request, fake.index, None),
        mac: Mac::default(),
    };
    edit(&mut reply);
    reply.mac = reply_mac(&fake.reply_key, CLUSTER, &reply);
    encode_message(&Message::Reply(reply))
}

fn replies(fake: &Fake, sq: &Sequencer, request: &Request, view: u64) -> Vec<Vec<u8>> {
    let honest = reply_frame(fake, sq, request, view, |_| ());
    match fake.spec.mode {
        Mode::Honest => vec![honest],
        Mode::Silent => vec![],
        // Each wrong replica lies differently: two identical lies would be f + 1 = 2 faults.
        Mode::Wrong => {
            let wrong = sq.result(request, fake.index, Some(vec![b'!', fake.index as u8]));
            vec![reply_frame(fake, sq, request, view, |r| r.result = wrong)]
        }
        Mode::BadMac => {
            let Ok(Message::Reply(mut reply)) = decode_message(&honest) else { unreachable!() };
            reply.mac = Mac([7; 32]);
            vec![encode_message(&Message::Reply(reply))]
        }
        Mode::Forge(as_replica) => {
            vec![honest, reply_frame(fake, sq, request, view, |r| r.replica = ReplicaId(as_replica))]
        }
        Mode::Evicted => {
            vec![reply_frame(fake, sq, request, view, |r| r.result = to_bytes(&ReplyBody::Evicted))]
        }
        Mode::Junk => vec![
            vec![0xff, 0, 1],
            encode_message(&Message::Request(request.clone())),
            reply_frame(fake, sq, request, view, |r| r.client = ClientId(9)),
            reply_frame(fake, sq, request, view, |r| r.replica = ReplicaId(99)),
            reply_frame(fake, sq, request, view, |r| r.timestamp += 1_000_000_000),
            honest.clone(),
            honest,
        ],
    }
}

fn options() -> ClientOptions {
    ClientOptions {
        retransmit_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(4),
        ..ClientOptions::default()
    }
}

/// The request is still undecided after 150 ms, then completes with the honest result.
async fn assert_waits_then_completes(client: &Client, op: &[u8]) {
    let task = {
        let client = client.clone();
        let op = op.to_vec();
        tokio::spawn(async move { client.invoke(op).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!task.is_finished(), "accepted a result without f + 1 matching authentic replies");
    assert_eq!(task.await.unwrap().unwrap(), honest_result(op));
}

#[tokio::test]
async fn accepts_f_plus_one_matching_replies_and_sends_to_primary_first() {
    let honest = spec(Mode::Honest);
    let cluster = Cluster::start([honest; 4], Duration::ZERO, 0).await;
    let client = cluster.client(options()).await;
    for i in 0..3u8 {
        assert_eq!(client.invoke(vec![i]).await.unwrap(), honest_result(&[i]));
    }
    let at_primary = cluster.received(0);
    assert_eq!(at_primary.len(), 3);
    assert!(at_primary.windows(2).all(|w| w[0] < w[1]), "timestamps strictly increase");
    for backup in 1..4 {
        assert!(cluster.received(backup).is_empty(), "backup {backup} got a request before any retransmission");
    }
    let stats = client.stats();
    assert_eq!((stats.requests_sent, stats.completed, stats.retransmissions), (3, 3, 0));
    assert_eq!(client.view(), 0);
    cluster.assert_request_macs_valid();
}

#[tokio::test]
async fn one_matching_reply_against_two_conflicting_ones_is_not_enough() {
    let specs = [spec(Mode::Honest), spec(Mode::Wrong), spec(Mode::Wrong), late(Mode::Honest, 400)];
    let cluster = Cluster::start(specs, Duration::ZERO, 0).await;
    let client = cluster.client(options()).await;
    assert_waits_then_completes(&client, b"x").await;
    assert_eq!(client.stats().rejected_total(), 0);
}

/// `f + 1` matching `Evicted` answers (the request executed, its result left the replicas'
/// caches) end the request at once with `ResultEvicted` instead of after its deadline; one
/// such answer is a vote like any other and does not.
#[tokio::test]
async fn f_plus_one_evicted_answers_end_the_request_at_once() {
    let specs = [spec(Mode::Evicted), spec(Mode::Evicted), late(Mode::Honest, 3_000), late(Mode::Honest, 3_000)];
    let cluster = Cluster::start(specs, Duration::ZERO, 0).await;
    let client = cluster.client(options()).await;
    let started = tokio::time::Instant::now();
    match client.invoke(b"e".to_vec()).await {
        Err(ClientError::ResultEvicted { timestamp }) => assert_eq!(cluster.received(0), [timestamp]),
        other => panic!("expected ResultEvicted, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(1), "waited {:?}", started.elapsed());
    assert_eq!(client.stats().timeouts, 0);

    let specs = [spec(Mode::Evicted), spec(Mode::Honest), late(Mode::Honest, 400), spec(Mode::Silent)];
    let cluster = Cluster::start(specs, Duration::ZERO, 0).await;
    let client = cluster.client(options()).await;
    assert_waits_then_completes(&client, b"f").await;
}

#[tokio::test]
async fn replies_with_bad_macs_are_ignored_and_counted() {
    let specs = [spec(Mode::Honest), spec(Mode::BadMac), spec(Mode::BadMac), late(Mode::Honest, 400)];
    let cluster = Cluster::start(specs, Duration::ZERO, 0).await;
    let client = cluster.client(options()).await;
    assert_waits_then_completes(&client, b"y").await;
    assert_eq!(client.stats().rejected_bad_mac, 2);
}

#[tokio::test]
async fn a_reply_forged_for_another_replica_fails_its_mac_and_blocks_nothing() {
    // Replica 0's connection also claims to be replica 3; replica 3's real reply still counts.
    let specs = [spec(Mode::Forge(3)), spec(Mode::Wrong), spec(Mode::Wrong), late(Mode::Honest, 400)];
    let cluster = Cluster::start(specs, Duration::ZERO, 0).await;
    let client = cluster.client(options()).await;
    assert_waits_then_completes(&client, b"z").await;
    let stats = client.stats();
    assert_eq!(stats.rejected_bad_mac, 1);
    assert_eq!(stats.rejected_duplicate, 0);
}

#[tokio::test]
async fn junk_from_a_replica_is_counted_by_reason() {
    let specs = [spec(Mode::Junk), spec(Mode::Wrong), spec(Mode::Wrong), late(Mode::Honest, 300)];
    let cluster = Cluster::start(specs, Duration::ZERO, 0).await;
    let client = cluster.client(options()).await;
    assert_eq!(client.invoke(b"j".to_vec()).await.unwrap(), honest_result(b"j"));
    // Replica 0's junk precedes its honest reply on the same connection, so it is all in.
    let stats = client.stats();
    assert_eq!(stats.rejected_undecodable, 2, "{stats:?}");
    assert_eq!(stats.rejected_wrong_client, 1, "{stats:?}");
    assert_eq!(stats.rejected_bad_replica, 1, "{stats:?}");
    // The result is sealed for its timestamp (nonce and associated data, SPEC §6): a reply
    // moved to another timestamp fails decryption before the timestamp lookup.
    assert_eq!(stats.rejected_bad_ciphertext, 1, "{stats:?}");
    assert_eq!(stats.rejected_unknown_timestamp, 0, "{stats:?}");
    assert_eq!(stats.rejected_duplicate, 1, "{stats:?}");
    assert_eq!(stats.rejected_bad_mac, 0, "{stats:?}");
}

#[tokio::test]
async fn retransmits_to_every_replica_when_the_primary_is_silent() {
    let honest = spec(Mode::Honest);
    let cluster = Cluster::start([spec(Mode::Silent), honest, honest, honest], Duration::ZERO, 0).await;
    let options = ClientOptions { retransmit_timeout: Duration::from_millis(100), ..options() };
    let client = cluster.client(options).await;
    assert_eq!(client.invoke(b"r".to_vec()).await.unwrap(), honest_result(b"r"));
    let stats = client.stats();
    assert_eq!(stats.retransmissions, 1, "{stats:?}");
    let timestamp = cluster.received(0)[0];
    assert_eq!(cluster.received(0), vec![timestamp, timestamp], "same timestamp on retransmission");
    for backup in 1..4 {
        assert_eq!(cluster.received(backup), vec![timestamp]);
    }
    cluster.assert_request_macs_valid();
}

#[tokio::test]
async fn times_out_without_a_quorum() {
    let silent = spec(Mode::Silent);
    let cluster = Cluster::start([silent; 4], Duration::ZERO, 0).await;
    let options = ClientOptions {
        retransmit_timeout: Duration::from_millis(50),
        request_timeout: Duration::from_millis(300),
        ..options()
    };
    let client = cluster.client(options).await;
    match client.invoke(b"t".to_vec()).await {
        Err(ClientError::Timeout { timestamp }) => assert_eq!(cluster.received(1)[0], timestamp),
        other => panic!("expected a timeout, got {other:?}"),
    }
    let stats = client.stats();
    assert!(stats.retransmissions >= 2, "{stats:?}");
    assert_eq!(stats.timeouts, 1);
}

#[tokio::test]
async fn works_with_the_primary_down_and_reconnects_when_it_returns() {
    let honest = spec(Mode::Honest);
    let cluster = Cluster::start([down(), honest, honest, honest], Duration::ZERO, 0).await;
    let client = cluster.client(options()).await;
    assert!(client.stats().connection_errors >= 1);
    // The primary is known to be unreachable, so the request goes to everyone at once.
    let started = tokio::time::Instant::now();
    assert_eq!(client.invoke(b"d".to_vec()).await.unwrap(), honest_result(b"d"));
    assert!(started.elapsed() < Duration::from_secs(1), "waited for a retransmission");
    assert_eq!(client.stats().retransmissions, 0);

    let revived = cluster.revive(0, Mode::Honest).await;
    wait_until(|| revived.hellos.load(Ordering::SeqCst) == 1).await;
    wait_until(|| client.stats().connections == 4).await;
    assert_eq!(client.invoke(b"e".to_vec()).await.unwrap(), honest_result(b"e"));
    assert_eq!(revived.received.lock().unwrap().len(), 1, "the revived primary gets the request");
    assert_eq!(cluster.received(1).len(), 1, "backups only got the first request");
}

#[tokio::test]
async fn connect_needs_f_plus_one_reachable_replicas() {
    let cluster = Cluster::start([down(), down(), down(), spec(Mode::Honest)], Duration::ZERO, 0).await;
    assert!(matches!(cluster.try_client(options()).await, Err(ClientError::NoReplicaReachable)));
}

#[tokio::test]
async fn outstanding_limit_is_respected() {
    let honest = spec(Mode::Honest);
    let cluster = Cluster::start([honest; 4], Duration::from_millis(60), 0).await;
    let client = cluster.client(ClientOptions { outstanding: 3, ..options() }).await;
    let tasks: Vec<_> = (0..10u8)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { (i, client.invoke(vec![i]).await) })
        })
        .collect();
    for task in tasks {
        let (i, result) = task.await.unwrap();
        assert_eq!(result.unwrap(), honest_result(&[i]));
    }
    assert_eq!(cluster.sequencer.max_in_flight(), 3);
    let at_primary = cluster.received(0);
    assert_eq!(at_primary.len(), 10);
    assert_eq!(at_primary.iter().collect::<HashSet<_>>().len(), 10, "distinct timestamps");
    cluster.assert_request_macs_valid();
}

#[tokio::test]
async fn follows_the_view_of_accepted_results() {
    let honest = spec(Mode::Honest);
    let cluster = Cluster::start([honest; 4], Duration::ZERO, 5).await;
    let client = cluster.client(options()).await;
    client.invoke(b"a".to_vec()).await.unwrap();
    assert_eq!(client.view(), 5);
    client.invoke(b"b".to_vec()).await.unwrap();
    // primary(5) = 5 mod 4 = 1.
    assert_eq!(cluster.received(0).len(), 1);
    assert_eq!(cluster.received(1).len(), 1);
    assert!(cluster.received(2).is_empty() && cluster.received(3).is_empty());
}

#[tokio::test]
async fn oversized_ops_and_bad_options_are_refused() {
    let honest = spec(Mode::Honest);
    let cluster = Cluster::start([honest; 4], Duration::ZERO, 0).await;
    let client = cluster.client(options()).await;
    let max = cluster.secrets.config.max_op_bytes as usize;
    match client.invoke(vec![0; max + 1]).await {
        Err(ClientError::OpTooLarge { len, max: limit }) => {
            assert_eq!((len, limit), (max + 1, max))
        }
        other => panic!("expected OpTooLarge, got {other:?}"),
    }
    assert_eq!(client.stats().requests_sent, 0);
    assert_eq!(client.invoke(vec![0; max]).await.unwrap(), honest_result(&vec![0; max]));
    assert_eq!(cluster.received(0).len(), 1);

    let window = cluster.secrets.config.client_window as usize;
    for outstanding in [0, window + 1] {
        let bad = ClientOptions { outstanding, ..options() };
        assert!(matches!(cluster.try_client(bad).await, Err(ClientError::Config(_))));
    }
    let ok = ClientOptions { outstanding: window, ..options() };
    assert!(cluster.try_client(ok).await.is_ok());
}

#[tokio::test]
async fn close_fails_waiting_and_later_requests() {
    let silent = spec(Mode::Silent);
    let cluster = Cluster::start([silent; 4], Duration::ZERO, 0).await;
    let client = cluster.client(options()).await;
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move { client.invoke(b"c".to_vec()).await })
    };
    wait_until(|| cluster.received(0).len() == 1).await;
    let other = client.clone();
    client.close().await;
    assert!(matches!(waiting.await.unwrap(), Err(ClientError::Closed)));
    assert!(matches!(other.invoke(b"d".to_vec()).await, Err(ClientError::Closed)));
}

/// SPEC §6: the client registers only after every Execution enclave's software-attestation
/// report checks out; a wrong measurement or a bad signature is a typed refusal and nothing
/// is sent. After registering, ops complete under the new session.
#[tokio::test]
async fn registers_only_after_attestation_and_refuses_bad_reports() {
    let honest = spec(Mode::Honest);
    let cluster = Cluster::start([honest; 4], Duration::ZERO, 0).await;
    let platform = SoftwarePlatform::new(CLUSTER, SecretKey::from_seed([3; 32]));
    let verifier = SoftwareAttestation::new(CLUSTER, platform.public());
    let code = CodeIdentity { crate_name: "splitbft-execution", version: "1", build: "test" };
    let config = &cluster.secrets.config;

    let patched = cluster.secrets.execution_reports(&platform, CodeIdentity { build: "patched", ..code }.measurement());
    let mut expected = cluster.secrets.execution_reports(&platform, code.measurement());
    let mut wrong_code = expected.clone();
    wrong_code.reports[1] = patched.reports[1].clone();
    assert!(matches!(
        verify_attestation(config, &verifier, &wrong_code),
        Err(ClientError::Attestation(AttestationError::WrongMeasurement { .. }))
    ));
    let mut bad_sig = expected.clone();
    bad_sig.reports[3].evidence[10] ^= 0x20;
    assert!(matches!(
        verify_attestation(config, &verifier, &bad_sig),
        Err(ClientError::Attestation(AttestationError::BadEvidence))
    ));
    let attested = verify_attestation(config, &verifier, &expected).unwrap();
    assert_eq!(attested.platform(), "software attestation");

    let client = cluster.unregistered_client(options()).await;
    assert!(matches!(client.invoke(b"early".to_vec()).await, Err(ClientError::NoSession)));
    assert!(cluster.received(0).is_empty(), "nothing is sent without a session");
    let epoch = client.register(attested).await.unwrap();
    assert!(epoch > SESSION_EPOCH);
    assert_eq!(client.invoke(b"after".to_vec()).await.unwrap(), honest_result(b"after"));
    // A second registration takes a higher epoch.
    expected.reports.truncate(4);
    let again = client.register(verify_attestation(config, &verifier, &expected).unwrap()).await.unwrap();
    assert!(again > epoch);
    assert_eq!(client.invoke(b"again".to_vec()).await.unwrap(), honest_result(b"again"));
    cluster.assert_request_macs_valid();
}

/// A client whose session the cluster does not know gets the cluster's typed refusal.
#[tokio::test]
async fn a_session_the_cluster_does_not_hold_is_a_clear_error() {
    let honest = spec(Mode::Honest);
    let cluster = Cluster::start([honest; 4], Duration::ZERO, 0).await;
    let client = cluster.unregistered_client(options()).await;
    client.resume_session(SESSION_EPOCH + 1, [9; 32]);
    match client.invoke(b"x".to_vec()).await {
        // Sealed for an epoch the cluster does not hold: a refusal a forger could provoke, so
        // the client waits for its genuine request, which can never execute: it times out.
        Err(ClientError::Timeout { .. }) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(client.stats().ignored_refusals >= 3, "{:?}", client.stats());
    assert!(Refusal::NoSession.is_final() && !Refusal::StaleSession.is_final());
}
