//! Hostile input to a whole cluster (SPEC §1.1 last bullet, §5, §5.1): malformed frames,
//! unknown kinds and versions, bad signatures, bad client MACs, a client speaking for
//! another, malformed enclave inputs. Each is counted where it is refused, nothing panics,
//! and afterwards every replica still executes new requests.
//!
//! Runs on [`LocalCluster`]: the production broker core and compartments behind the byte
//! boundary, inline and deterministic.

#![allow(clippy::unwrap_used, reason = "test helpers: a failed setup step aborts the test")]

mod common;

use std::collections::BTreeSet;

use bytes::Bytes;
use common::{SealedClient, sealed_clients};
use proptest::prelude::*;
use serde::Serialize;
use splitbft_apps::kv::{KvOp, KvResult, KvStore};
use splitbft_broker::BrokerOptions;
use splitbft_broker::local::LocalCluster;
use splitbft_types::boundary::Input;
use splitbft_types::codec::{encode_message, to_bytes};
use splitbft_types::counters::Counter;
use splitbft_types::crypto::Purpose;
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::msg::{
    BatchMsg, Checkpoint, Commit, Digest, Mac, PrePrepare, Prepare, Reply, Request, Sig, Signed,
};
use splitbft_types::{ClientId, CompartmentKind, Message, ReplicaId, Timestamp};

use CompartmentKind::{Confirmation, Execution, Preparation};

const N: u32 = 4;
const CLIENTS: usize = 3;
const PRIMARY: ReplicaId = ReplicaId(0);

struct Harness {
    secrets: ClusterSecrets,
    keys: Vec<SealedClient>,
    cluster: LocalCluster,
}

impl Harness {
    /// Four replicas, three clients, K = 4, L = 8, batches of up to 5 requests.
    fn new() -> Harness {
        let mut secrets = ClusterSecrets::deterministic(7, 1, CLIENTS, 42);
        secrets.config.checkpoint_interval = 4;
        secrets.config.log_window = 8;
        let mut options = BrokerOptions::new(&secrets.config);
        options.batch_max = 5;
        let mut cluster = LocalCluster::new(&secrets, || Box::new(KvStore::new()), options);
        let keys = sealed_clients(&mut cluster, &secrets);
        Harness { secrets, keys, cluster }
    }

    fn sign<T: Serialize>(&self, r: u32, kind: CompartmentKind, purpose: Purpose, body: T) -> Signed<T> {
        let sig = self.secrets.enclave(ReplicaId(r), kind).sign(self.secrets.config.cluster_id, purpose, &body);
        Signed { body, sig }
    }

    fn request(&self, c: usize, t: Timestamp) -> Request {
        let op = KvOp::Put { key: format!("key-{c}").into_bytes(), value: t.to_le_bytes().to_vec() };
        self.keys[c].request(t, op.encode())
    }

    fn broker(&self, r: u32, counter: Counter) -> u64 {
        self.cluster.core(ReplicaId(r)).counters().get(counter)
    }

    fn enclave(&mut self, r: u32, kind: CompartmentKind, counter: Counter) -> u64 {
        self.cluster.stats(ReplicaId(r), kind).get(counter)
    }

    fn executed(&mut self) -> Vec<u64> {
        (0..N).map(|r| self.enclave(r, Execution, Counter::RequestsExecuted)).collect()
    }

    /// Lets the cluster run until quiet, firing batch timers a few times.
    fn settle(&mut self) {
        for _ in 0..4 {
            self.cluster.run(100_000);
            self.cluster.advance(20_000);
        }
        self.cluster.run(100_000);
    }

    /// Authentic replies for `(c, t)` received so far, by replica.
    fn replies_for(&mut self, c: usize, t: Timestamp) -> BTreeSet<ReplicaId> {
        let replies: Vec<Reply> = self.cluster.take_replies();
        replies
            .iter()
            .filter(|r| r.client == ClientId(c as u32) && r.timestamp == t)
            .map(|r| {
                self.keys[c].verify_reply(r).unwrap();
                assert!(matches!(KvResult::decode(&self.keys[c].open(r)).unwrap(), KvResult::Stored { .. }));
                r.replica
            })
            .collect()
    }

    /// A new request sent to `via` executes on every replica and is answered by all four.
    fn assert_live(&mut self, via: ReplicaId, c: usize, t: Timestamp) {
        self.settle();
        self.cluster.take_replies();
        let before = self.executed();
        let request = self.request(c, t);
        self.cluster.client_sends(via, &request);
        self.settle();
        let after = self.executed();
        for r in 0..N as usize {
            assert_eq!(after[r], before[r] + 1, "replica {r} did not execute ({c}, {t}): {before:?} -> {after:?}");
        }
        let from = self.replies_for(c, t);
        assert_eq!(from, (0..N).map(ReplicaId).collect(), "replies for ({c}, {t})");
    }

    fn inject(&mut self, from: u32, to: u32, frame: impl Into<Bytes>) {
        self.cluster.inject(ReplicaId(from), ReplicaId(to), frame.into());
    }
}

fn flip<T>(mut m: Signed<T>) -> Signed<T> {
    m.sig.0[21] ^= 0x10;
    m
}

fn frame(msg: &Message) -> Vec<u8> {
    encode_message(msg)
}

/// SPEC §3 "versioned, typed, length-delimited", §5: peer frames that do not decode (random
/// bytes, every truncation of real frames), that name an unknown kind or another wire
/// version, or that a peer must not send (a Reply) are counted by the broker and dropped.
#[test]
fn malformed_peer_frames_are_counted_and_the_cluster_stays_live() {
    let mut h = Harness::new();
    h.assert_live(PRIMARY, 0, 1);
    let prepare = frame(&Message::Prepare(h.sign(
        1,
        Preparation,
        Purpose::Prepare,
        Prepare { view: 0, seq: 2, digest: Digest::of(b"x"), replica: ReplicaId(1) },
    )));
    let batch_bytes = to_bytes(&vec![h.request(1, 1)]);
    let batch = frame(&Message::Batch(BatchMsg {
        pre_prepare: h.sign(
            0,
            Preparation,
            Purpose::PrePrepare,
            PrePrepare { view: 0, seq: 2, digest: Digest::of(&batch_bytes) },
        ),
        batch: batch_bytes,
    }));
    let mut malformed =
        vec![vec![], vec![1, 0xde, 0xad, 0xbe, 0xef], vec![1], vec![1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]];
    malformed.extend((0..prepare.len()).map(|cut| prepare[..cut].to_vec()));
    malformed.extend((0..batch.len()).map(|cut| batch[..cut].to_vec()));
    let mut extended = prepare.clone();
    extended.push(0);
    malformed.push(extended);
    let unknown_kind = [
        vec![1, 0xc8, 0x01],
        vec![1, splitbft_types::msg::MESSAGE_KINDS as u8],
        [vec![1, 0xc8, 0x01], prepare[2..].to_vec()].concat(),
    ];
    let bad_version = [[vec![2], prepare[1..].to_vec()].concat(), [vec![0], prepare[1..].to_vec()].concat(), vec![255]];
    let reply = frame(&Message::Reply(Reply {
        view: 0,
        client: ClientId(0),
        timestamp: 1,
        replica: ReplicaId(1),
        result: vec![],
        mac: Mac::default(),
    }));
    for to in [0, 2] {
        for f in &malformed {
            h.inject(1, to, f.clone());
        }
        for f in unknown_kind.iter().chain(&bad_version) {
            h.inject(3, to, f.clone());
        }
        h.inject(1, to, reply.clone());
    }
    h.settle();
    for to in [0, 2] {
        assert_eq!(h.broker(to, Counter::PeerMalformed), malformed.len() as u64, "replica {to}");
        assert_eq!(h.broker(to, Counter::PeerUnknownKind), unknown_kind.len() as u64, "replica {to}");
        assert_eq!(h.broker(to, Counter::PeerBadVersion), bad_version.len() as u64, "replica {to}");
        assert_eq!(h.broker(to, Counter::PeerUnexpectedReply), 1, "replica {to}");
    }
    h.assert_live(PRIMARY, 0, 2);
    h.assert_live(ReplicaId(2), 1, 1);
}

/// SPEC §9 L1: signatures are checked on receipt in the receiving compartment. Forged
/// PrePrepares, Prepares, Commits, Checkpoints and batch headers injected by a peer are
/// counted by the compartment that refuses them, and nobody stalls.
#[test]
fn bad_signatures_are_counted_by_the_receiving_compartments() {
    let mut h = Harness::new();
    h.assert_live(PRIMARY, 0, 1);
    let d = Digest::of(b"forged");
    let prepare =
        h.sign(1, Preparation, Purpose::Prepare, Prepare { view: 0, seq: 2, digest: d, replica: ReplicaId(1) });
    let impersonated =
        h.sign(3, Preparation, Purpose::Prepare, Prepare { view: 0, seq: 2, digest: d, replica: ReplicaId(1) });
    let commit = h.sign(1, Confirmation, Purpose::Commit, Commit { view: 0, seq: 2, digest: d, replica: ReplicaId(1) });
    let checkpoint = h.sign(1, Execution, Purpose::Checkpoint, Checkpoint { seq: 4, state: d, replica: ReplicaId(1) });
    // A PrePrepare for view 0 signed by replica 1, not by the primary.
    let pre_prepare = h.sign(1, Preparation, Purpose::PrePrepare, PrePrepare { view: 0, seq: 2, digest: d });
    // A batch whose header signature is forged (and whose bytes do not hash to its digest).
    let batch = BatchMsg {
        pre_prepare: flip(h.sign(0, Preparation, Purpose::PrePrepare, PrePrepare { view: 0, seq: 3, digest: d })),
        batch: vec![0],
    };
    for msg in [
        Message::Prepare(flip(prepare)),
        Message::Prepare(impersonated),
        Message::Commit(flip(commit)),
        Message::Checkpoint(flip(checkpoint)),
        Message::PrePrepare(pre_prepare),
        Message::Batch(batch),
    ] {
        h.inject(1, 2, frame(&msg));
    }
    h.settle();
    assert_eq!(h.enclave(2, Confirmation, Counter::PrepareBadSignature), 2);
    assert_eq!(h.enclave(2, Execution, Counter::CommitBadSignature), 1);
    for kind in CompartmentKind::ALL {
        assert_eq!(h.enclave(2, kind, Counter::CheckpointBadSignature), 1, "{kind}");
    }
    // A bare header is never prepared (SPEC §3 note); Confirmation checks its signature.
    assert_eq!(h.enclave(2, Preparation, Counter::PrePrepareWithoutBatch), 1);
    assert_eq!(h.enclave(2, Confirmation, Counter::PrePrepareBadSignature), 1);
    // The environment files a batch frame only if its bytes hash to the header's digest and
    // the header is the primary's (SPEC §11): junk reaches no compartment.
    assert_eq!(h.broker(2, Counter::BatchFramesUnverified), 1);
    assert_eq!(h.enclave(2, Execution, Counter::BatchWrongDigest), 0);
    for content in [&b"first"[..], &b"second"[..]] {
        let digest = Digest::of(content);
        let header = h.sign(1, Preparation, Purpose::PrePrepare, PrePrepare { view: 0, seq: 4, digest });
        h.inject(1, 2, frame(&Message::Batch(BatchMsg { pre_prepare: header, batch: content.to_vec() })));
    }
    h.settle();
    assert_eq!(h.broker(2, Counter::BatchFramesUnverified), 3);
    h.assert_live(PRIMARY, 0, 2);
    h.assert_live(ReplicaId(2), 2, 1);
}

/// SPEC §5, §6: an environment drops client requests whose signature fails (counted), at
/// the primary and at backups alike; the timestamp is not consumed.
/// A wrong MAC entry alone is settled by the signature (Aardvark's lesson): the request
/// executes everywhere, so a client cannot make a correct primary's batch fail at backups.
#[test]
fn bad_client_signatures_are_dropped_at_the_primary() {
    let mut h = Harness::new();
    let mut tampered = h.request(0, 1);
    tampered.op.push(0);
    h.cluster.client_sends(PRIMARY, &tampered);
    h.cluster.client_sends(ReplicaId(2), &tampered);
    let mut bad_sig = h.request(0, 1);
    bad_sig.sig.0[5] ^= 1;
    h.cluster.client_sends(PRIMARY, &bad_sig);
    h.settle();
    // The primary drops them after its round's signature check, backups on arrival (issue
    // 12: a backup neither forwards one nor starts a timer for it, so a faulty client
    // cannot force a view change).
    assert_eq!(h.broker(0, Counter::RequestsBadSignatureDropped), 2);
    assert_eq!(h.broker(2, Counter::ClientRequestsInadmissible), 1);
    assert_eq!(h.broker(2, Counter::RequestsForwarded), 0);
    assert_eq!(h.executed(), vec![0; N as usize]);
    assert!(h.cluster.take_replies().is_empty());
    // The genuine request with the same timestamp executes.
    h.assert_live(PRIMARY, 0, 1);
    // Every MAC entry wrong, the signature right: ordered and executed everywhere.
    let mut macs_wrong = h.request(1, 1);
    for r in 0..N as usize {
        macs_wrong.auth[r] = Mac::default();
    }
    let before = h.executed();
    h.cluster.client_sends(ReplicaId(3), &macs_wrong);
    h.settle();
    assert_eq!(h.executed(), before.iter().map(|e| e + 1).collect::<Vec<_>>());
    assert_eq!(h.replies_for(1, 1).len(), N as usize);
    for r in 0..N {
        assert_eq!(h.enclave(r, Preparation, Counter::RequestMacFailedSignatureOk), 1, "replica {r}");
    }
}

/// SPEC §5: a client connection may only send its own requests; other frames from clients
/// (undecodable, unknown kind, other version, non-requests) are counted and dropped.
#[test]
fn client_frames_that_lie_or_do_not_decode_are_counted() {
    let mut h = Harness::new();
    let theirs = Bytes::from(frame(&Message::Request(h.request(0, 1))));
    for r in [0, 1] {
        h.cluster.client_frame(ReplicaId(r), ClientId(1), theirs.clone());
        h.cluster.client_frame(ReplicaId(r), ClientId(2), Bytes::from_static(&[1, 0xff]));
        h.cluster.client_frame(ReplicaId(r), ClientId(2), Bytes::from_static(&[1, 0xc8, 0x01]));
        h.cluster.client_frame(ReplicaId(r), ClientId(2), Bytes::from_static(&[3, 0]));
        h.cluster.client_frame(ReplicaId(r), ClientId(2), theirs.slice(..theirs.len() - 1));
        let commit = h.sign(
            1,
            Confirmation,
            Purpose::Commit,
            Commit { view: 0, seq: 1, digest: Digest::of(b"c"), replica: ReplicaId(1) },
        );
        h.cluster.client_frame(ReplicaId(r), ClientId(2), Bytes::from(frame(&Message::Commit(commit))));
    }
    h.settle();
    for r in [0, 1] {
        assert_eq!(h.broker(r, Counter::ClientRequestWrongId), 1, "replica {r}");
        assert_eq!(h.broker(r, Counter::ClientMalformed), 2, "replica {r}");
        assert_eq!(h.broker(r, Counter::ClientUnknownKind), 1, "replica {r}");
        assert_eq!(h.broker(r, Counter::ClientBadVersion), 1, "replica {r}");
        assert_eq!(h.broker(r, Counter::ClientUnexpectedMessage), 1, "replica {r}");
    }
    assert_eq!(h.executed(), vec![0; N as usize]);
    // Client 0's own request with that timestamp was never consumed.
    h.assert_live(ReplicaId(1), 0, 1);
}

/// SPEC §5.1: both sides of the enclave boundary decode defensively. Bytes that are no
/// `Input`, and inputs a compartment does not take, are counted inside the compartment.
#[test]
fn malformed_enclave_inputs_are_counted_by_the_compartment() {
    let mut h = Harness::new();
    let junk: [&[u8]; 5] = [&[], &[0xff; 5], &[3], &[0, 200, 1], &[1, 0x80]];
    for r in 0..N {
        for kind in CompartmentKind::ALL {
            for j in junk {
                h.cluster.enclave_input(ReplicaId(r), kind, Bytes::copy_from_slice(j));
            }
        }
    }
    let garbage_order = Bytes::from(to_bytes(&Input::OrderBatch(vec![0xff, 0xff, 0xff])));
    h.cluster.enclave_input(PRIMARY, Preparation, garbage_order.clone());
    h.cluster.enclave_input(ReplicaId(1), Preparation, garbage_order.clone());
    h.cluster.enclave_input(ReplicaId(1), Confirmation, garbage_order.clone());
    h.cluster.enclave_input(ReplicaId(1), Execution, garbage_order);
    h.settle();
    for r in 0..N {
        for kind in CompartmentKind::ALL {
            assert_eq!(h.enclave(r, kind, Counter::MalformedInput), junk.len() as u64, "{kind} of r{r}");
        }
    }
    assert_eq!(h.enclave(0, Preparation, Counter::OrderBatchMalformed), 1);
    assert_eq!(h.enclave(1, Preparation, Counter::OrderBatchNotPrimary), 1);
    assert_eq!(h.enclave(1, Confirmation, Counter::UnexpectedInput), 1);
    assert_eq!(h.enclave(1, Execution, Counter::UnexpectedInput), 1);
    h.assert_live(PRIMARY, 0, 1);
    h.assert_live(ReplicaId(3), 1, 1);
}

/// SPEC §5: the broker builds batches from client frames; a frame that decodes as a
/// Request with a non-canonical (but accepted) kind varint must not break the batch of
/// honest requests nor the broker.
#[test]
fn request_frame_with_non_canonical_kind_does_not_break_batching() {
    let mut h = Harness::new();
    let real = frame(&Message::Request(h.request(0, 1)));
    let mut odd = vec![1, 0x80, 0x00];
    odd.extend_from_slice(&real[2..]);
    assert!(splitbft_types::codec::decode_message(&odd).is_ok(), "postcard accepts the non-canonical varint");
    h.cluster.client_frame(PRIMARY, ClientId(0), Bytes::from(odd));
    h.settle();
    h.assert_live(PRIMARY, 1, 1);
}

/// SPEC §1.1 liveness with one faulty replica, §3 "fetched by digest … integrity comes from
/// the digest": replica 3's broker sends replicas 1 and 2 two made-up batches (unsigned
/// headers, bytes matching their own digests) for each of the next sequence numbers, then
/// goes silent. The three correct replicas must still execute new requests.
#[test]
fn junk_batches_from_a_byzantine_peer_do_not_stall_correct_replicas() {
    let mut h = Harness::new();
    for seq in 1..=3 {
        for k in 0..2u8 {
            let bytes = vec![k; 8 + seq as usize];
            let pre_prepare =
                Signed { body: PrePrepare { view: 0, seq, digest: Digest::of(&bytes) }, sig: Sig([7; 64]) };
            let f = frame(&Message::Batch(BatchMsg { pre_prepare, batch: bytes }));
            h.inject(3, 1, f.clone());
            h.inject(3, 2, f);
        }
    }
    h.settle();
    h.cluster.down.insert(ReplicaId(3));
    for t in 1..=3 {
        let request = h.request(0, t);
        h.cluster.client_sends(PRIMARY, &request);
        h.settle();
    }
    for r in 0..3 {
        let s = h.cluster.stats(ReplicaId(r), Execution);
        assert_eq!(s.last_executed, 3, "replica {r} stalled: {s:?}");
    }
}

/// Frames for the property test: arbitrary bytes, bytes behind the right version byte,
/// bytes behind a known kind, and well-formed messages with made-up signatures.
fn hostile_frame() -> impl Strategy<Value = Vec<u8>> {
    let bytes = || proptest::collection::vec(any::<u8>(), 0..96);
    let sig = || (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(a, b)| Sig([a, b].concat().try_into().unwrap()));
    let digest = || any::<[u8; 32]>().prop_map(Digest);
    let vsd = || (0u64..3, 0u64..12, digest());
    let structured = prop_oneof![
        (vsd(), 0u32..6, sig()).prop_map(|((view, seq, digest), r, sig)| Message::Prepare(Signed {
            body: Prepare { view, seq, digest, replica: ReplicaId(r) },
            sig
        })),
        (vsd(), 0u32..6, sig()).prop_map(|((view, seq, digest), r, sig)| Message::Commit(Signed {
            body: Commit { view, seq, digest, replica: ReplicaId(r) },
            sig
        })),
        (0u64..16, digest(), 0u32..6, sig()).prop_map(|(seq, state, r, sig)| Message::Checkpoint(Signed {
            body: Checkpoint { seq, state, replica: ReplicaId(r) },
            sig
        })),
        (vsd(), sig()).prop_map(|((view, seq, digest), sig)| Message::PrePrepare(Signed {
            body: PrePrepare { view, seq, digest },
            sig
        })),
        // Bytes that (almost surely) do not hash to the header's digest; self-consistent
        // junk batches are the separate, ignored BUG test above.
        (vsd(), sig(), bytes()).prop_map(|((view, seq, digest), sig, batch)| Message::Batch(BatchMsg {
            pre_prepare: Signed { body: PrePrepare { view, seq, digest }, sig },
            batch
        })),
        (0u32..5, 0u64..4, bytes(), proptest::collection::vec(any::<[u8; 32]>().prop_map(Mac), 0..6), sig()).prop_map(
            |(c, t, op, auth, sig)| Message::Request(Request { client: ClientId(c), timestamp: t, op, auth, sig })
        ),
    ]
    .prop_map(|m| encode_message(&m));
    prop_oneof![
        bytes(),
        bytes().prop_map(|b| [vec![1], b].concat()),
        (0u8..8, bytes()).prop_map(|(k, b)| [vec![1, k], b].concat()),
        structured,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// SPEC §1.1 (the environment is untrusted), §5: whatever frames peers and clients
    /// send to every replica, nothing panics, and a subsequent request still executes on
    /// all four replicas.
    #[test]
    fn arbitrary_frames_never_panic_and_the_cluster_stays_live(
        peer in proptest::collection::vec((0u32..N, 0u32..N, hostile_frame()), 0..40),
        client in proptest::collection::vec((0u32..N, 0u32..CLIENTS as u32 + 1, hostile_frame()), 0..10),
    ) {
        let mut h = Harness::new();
        for to in 0..N {
            for from in (0..N).filter(|f| *f != to) {
                h.inject(from, to, vec![1, 0xc8, 0x01]);
            }
        }
        for (from, to, f) in peer {
            h.inject(from, to, f);
        }
        for (r, c, f) in client {
            h.cluster.client_frame(ReplicaId(r), ClientId(c), Bytes::from(f));
        }
        h.settle();
        h.assert_live(PRIMARY, 0, 10);
        h.assert_live(ReplicaId(3), 2, 10);
    }
}
