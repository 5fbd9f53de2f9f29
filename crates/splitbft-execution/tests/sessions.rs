//! Client sessions in the Execution compartment (SPEC §6, §4.3 (4)), driven only through
//! ordered requests — no fixture shortcut: a Register installs `K_c` at one sequence
//! number on every replica; only a higher epoch replaces it; ops that do not authenticate
//! under `K_c` (corrupted, forged, sessionless) are identical no-ops with an error reply
//! that leave the timestamp unused.

#![allow(clippy::unwrap_used, reason = "test helpers: a failed setup step aborts the test")]

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use serde::Serialize;
use splitbft_apps::kv::{KvOp, KvResult, KvStore};
use splitbft_execution::Execution;
use splitbft_testkit::cluster::Fixture;
use splitbft_types::boundary::{Compartment, Event, Input, Output};
use splitbft_types::codec::{from_bytes, to_bytes};
use splitbft_types::crypto::Purpose;
use splitbft_types::msg::{BatchMsg, Checkpoint, Commit, Digest, Message, PrePrepare, Reply, Request, Signed};
use splitbft_types::session::{ClientSession, Opened, Refusal, SessionOp, open_reply_body};
use splitbft_types::{ClientId, CompartmentKind, ReplicaId, Seq, Timestamp};

/// Checkpoint interval of the fixture: small, so snapshots happen.
const K: u64 = 2;

struct Cluster {
    fx: Fixture,
    replicas: Vec<Execution>,
    seq: Seq,
}

/// Replica `r`'s Execution enclave with the KV store, from its genesis.
fn execution(fx: &Fixture, r: u32) -> Execution {
    let s = &fx.secrets;
    let secret = fx.secret(r, CompartmentKind::Execution);
    Execution::new(s.config.clone(), ReplicaId(r), secret, s.execution_group_secret(), Box::new(KvStore::new()))
        .unwrap()
}

impl Cluster {
    fn new(confidential: bool) -> Cluster {
        let fx = Fixture::new(31, 1, 2, 8, |c| {
            c.confidential = confidential;
            c.checkpoint_interval = K;
            // A wide window: the fixture delivers no checkpoint certificates to its own replicas.
            c.log_window = 32 * K;
        });
        let replicas = (0..4).map(|r| execution(&fx, r)).collect();
        Cluster { fx, replicas, seq: 0 }
    }

    fn sign<T: Serialize>(&self, r: u32, kind: CompartmentKind, purpose: Purpose, body: T) -> Signed<T> {
        self.fx.sign(r, kind, purpose, body)
    }

    /// Orders `requests` at the next sequence number on every replica; returns each
    /// replica's replies.
    fn order(&mut self, requests: &[Request]) -> Vec<Vec<Reply>> {
        self.order_full(requests).into_iter().map(|(replies, _)| replies).collect()
    }

    /// [`Cluster::order`], also returning every replica's other outputs.
    fn order_full(&mut self, requests: &[Request]) -> Vec<(Vec<Reply>, Vec<Output>)> {
        self.seq += 1;
        let seq = self.seq;
        let bytes = to_bytes(requests);
        let digest = Digest::of(&bytes);
        let pp = self.sign(0, CompartmentKind::Preparation, Purpose::PrePrepare, PrePrepare { view: 0, seq, digest });
        let batch = BatchMsg { pre_prepare: pp, batch: bytes };
        let commits: Vec<_> = (0..3)
            .map(|r| {
                let body = Commit { view: 0, seq, digest, replica: ReplicaId(r) };
                self.sign(r, CompartmentKind::Confirmation, Purpose::Commit, body)
            })
            .collect();
        let mut all = Vec::new();
        for e in &mut self.replicas {
            let mut out = Vec::new();
            e.handle(Input::Message(Message::Batch(batch.clone())), &mut out);
            for c in &commits {
                e.handle(Input::Message(Message::Commit(*c)), &mut out);
            }
            assert_eq!(e.last_executed(), seq);
            let (replies, rest): (Vec<_>, Vec<_>) =
                out.into_iter().partition(|o| matches!(o, Output::Send(Message::Reply(_))));
            let replies = replies
                .into_iter()
                .filter_map(|o| match o {
                    Output::Send(Message::Reply(r)) => Some(r),
                    _ => None,
                })
                .collect();
            all.push((replies, rest));
        }
        all
    }

    fn register(&self, c: u32, epoch: u64, key: [u8; 32]) -> (ClientSession, Vec<u8>) {
        let mut rng = ChaCha20Rng::seed_from_u64(epoch);
        ClientSession::register(&mut rng, &self.fx.secrets.config, ClientId(c), epoch, key).unwrap()
    }

    fn request(&self, c: u32, t: Timestamp, op: Vec<u8>) -> Request {
        self.fx.clients[c as usize].request(t, op)
    }

    fn digests(&self) -> Vec<Digest> {
        self.replicas.iter().map(Execution::state_digest).collect()
    }

    fn assert_agree(&self) {
        let d = self.digests();
        assert!(d.iter().all(|x| *x == d[0]), "state digests differ: {d:?}");
    }
}

fn put(key: &str, value: &str) -> Vec<u8> {
    KvOp::Put { key: key.as_bytes().to_vec(), value: value.as_bytes().to_vec() }.encode()
}

fn get(key: &str) -> Vec<u8> {
    KvOp::Get { key: key.as_bytes().to_vec() }.encode()
}

/// Every replica's reply, opened as the client reads it; all must agree.
fn agreed(session: Option<&ClientSession>, replies: &[Vec<Reply>]) -> Opened {
    let opened: Vec<Opened> = replies
        .iter()
        .map(|rs| {
            assert_eq!(rs.len(), 1, "one reply per replica");
            let r = &rs[0];
            open_reply_body(session, r.client, r.timestamp, r.replica, &r.result).unwrap()
        })
        .collect();
    assert!(opened.iter().all(|o| *o == opened[0]), "replicas answered differently: {opened:?}");
    opened[0].clone()
}

fn value(opened: Opened) -> Option<Vec<u8>> {
    let Opened::Result(bytes) = opened else { panic!("expected a result, got {opened:?}") };
    match KvResult::decode(&bytes).unwrap() {
        KvResult::Value(v) => v,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn register_then_sealed_ops_execute_and_results_leave_encrypted() {
    let mut cl = Cluster::new(true);
    let (s0, reg) = cl.register(0, 5, [1; 32]);
    let replies = cl.order(&[cl.request(0, 1, reg)]);
    assert_eq!(agreed(None, &replies), Opened::Registered { epoch: 5 });
    assert!(cl.replicas.iter().all(|e| e.session_epoch(ClientId(0)) == Some(5)));

    let op = s0.seal_op(2, &put("secret-key", "distinctive-value")).unwrap();
    assert!(!op.windows(11).any(|w| w == b"distinctive"), "the op leaves the client encrypted");
    cl.order(&[cl.request(0, 2, op)]);
    let replies = cl.order(&[cl.request(0, 3, s0.seal_op(3, &get("secret-key")).unwrap())]);
    for r in replies.iter().flatten() {
        assert!(!r.result.windows(11).any(|w| w == b"distinctive"), "the result leaves Execution encrypted");
    }
    assert_eq!(value(agreed(Some(&s0), &replies)), Some(b"distinctive-value".to_vec()));
    cl.assert_agree();
}

/// Corrupted ciphertext → the same no-op everywhere (equal state digests), an error reply,
/// and the timestamp stays free for the genuine request.
#[test]
fn corrupted_ciphertext_is_the_same_no_op_on_every_execution_enclave() {
    let mut cl = Cluster::new(true);
    let (s0, reg) = cl.register(0, 1, [2; 32]);
    cl.order(&[cl.request(0, 1, reg)]);
    let before = cl.digests();

    let genuine = s0.seal_op(2, &put("k", "v")).unwrap();
    let SessionOp::Sealed { epoch, mut ciphertext } = from_bytes::<SessionOp>(&genuine).unwrap() else {
        panic!("confidential ops are sealed")
    };
    ciphertext[0] ^= 0x01;
    let corrupted = to_bytes(&SessionOp::Sealed { epoch, ciphertext });
    let replies = cl.order(&[cl.request(0, 2, corrupted), cl.request(0, 3, b"\xffjunk".to_vec())]);
    for rs in &replies {
        let got: Vec<Opened> = rs
            .iter()
            .map(|r| open_reply_body(Some(&s0), r.client, r.timestamp, r.replica, &r.result).unwrap())
            .collect();
        assert_eq!(got, vec![Opened::Refused(Refusal::NotAuthentic), Opened::Refused(Refusal::Malformed)]);
    }
    cl.assert_agree();
    assert_eq!(cl.digests(), before, "a no-op changes no state (nor the dedup window)");

    // The genuine request with the same timestamp still executes.
    let replies = cl.order(&[cl.request(0, 2, genuine)]);
    assert!(matches!(agreed(Some(&s0), &replies), Opened::Result(_)));
    assert_ne!(cl.digests(), before);
    cl.assert_agree();
}

/// A replayed Register (same or lower epoch) cannot change the key; nor can another
/// client's signature or another client's sealed key.
#[test]
fn replayed_register_cannot_change_a_key() {
    let mut cl = Cluster::new(true);
    let (s0, reg5) = cl.register(0, 5, [3; 32]);
    cl.order(&[cl.request(0, 1, reg5.clone())]);

    // Exact replay under a fresh timestamp, an older epoch with another key, and the same
    // epoch with another key.
    let (_, reg3) = cl.register(0, 3, [4; 32]);
    let (_, reg5b) = cl.register(0, 5, [5; 32]);
    for (t, op) in [(2, reg5), (3, reg3), (4, reg5b)] {
        let replies = cl.order(&[cl.request(0, t, op)]);
        assert_eq!(agreed(None, &replies), Opened::Refused(Refusal::StaleEpoch));
    }
    // Client 1 re-signs client 0's Register body: the signature is client 0's key's only.
    let (_, reg9) = cl.register(0, 9, [6; 32]);
    let replies = cl.order(&[cl.request(1, 1, reg9)]);
    assert_eq!(agreed(None, &replies), Opened::Refused(Refusal::BadRegister));
    assert_eq!(cl.replicas[0].session_epoch(ClientId(1)), None);

    // The original key still works.
    cl.order(&[cl.request(0, 5, s0.seal_op(5, &put("a", "b")).unwrap())]);
    let replies = cl.order(&[cl.request(0, 6, s0.seal_op(6, &get("a")).unwrap())]);
    assert_eq!(value(agreed(Some(&s0), &replies)), Some(b"b".to_vec()));
    assert!(cl.replicas.iter().all(|e| e.session_epoch(ClientId(0)) == Some(5)));

    // A higher epoch does replace it.
    let (s0b, reg7) = cl.register(0, 7, [7; 32]);
    assert_eq!(agreed(None, &cl.order(&[cl.request(0, 7, reg7)])), Opened::Registered { epoch: 7 });
    let replies = cl.order(&[cl.request(0, 8, s0.seal_op(8, &get("a")).unwrap())]);
    assert_eq!(agreed(None, &replies), Opened::Refused(Refusal::StaleSession));
    let replies = cl.order(&[cl.request(0, 8, s0b.seal_op(8, &get("a")).unwrap())]);
    assert_eq!(value(agreed(Some(&s0b), &replies)), Some(b"b".to_vec()));
    cl.assert_agree();
}

#[test]
fn a_client_without_session_gets_a_clear_error() {
    let mut cl = Cluster::new(true);
    let (s0, _) = cl.register(0, 1, [8; 32]);
    let replies = cl.order(&[cl.request(0, 1, s0.seal_op(1, &put("k", "v")).unwrap())]);
    let refusal = agreed(None, &replies);
    assert_eq!(refusal, Opened::Refused(Refusal::NoSession));
    assert!(Refusal::NoSession.is_final());
    assert_eq!(Refusal::NoSession.to_string(), "no session registered for this client");
    cl.assert_agree();
}

/// `confidential = false`: ops in clear but still authenticated under `K_c` (GMAC), so the
/// validity rule is unchanged; results in clear.
#[test]
fn without_confidentiality_ops_are_still_authenticated() {
    let mut cl = Cluster::new(false);
    let (s0, reg) = cl.register(0, 1, [9; 32]);
    cl.order(&[cl.request(0, 1, reg)]);
    let op = s0.seal_op(2, &put("k", "plain")).unwrap();
    assert!(op.windows(5).any(|w| w == b"plain"));
    let SessionOp::Authenticated { epoch, tag, .. } = from_bytes::<SessionOp>(&op).unwrap() else {
        panic!("non-confidential ops are tagged")
    };
    let forged = to_bytes(&SessionOp::Authenticated { epoch, op: put("k", "forged"), tag });
    let replies = cl.order(&[cl.request(0, 2, forged)]);
    assert_eq!(agreed(Some(&s0), &replies), Opened::Refused(Refusal::NotAuthentic));
    cl.order(&[cl.request(0, 2, op)]);
    let replies = cl.order(&[cl.request(0, 3, s0.seal_op(3, &get("k")).unwrap())]);
    assert_eq!(value(agreed(Some(&s0), &replies)), Some(b"plain".to_vec()));
    cl.assert_agree();
}

/// SPEC §6 + §4.3: sessions are checkpointed state, so a replica that catches up by state
/// transfer knows them; the snapshot leaves Execution sealed (neither the session key nor
/// the value in clear) and restores only after decryption and the certified digest.
#[test]
fn sessions_survive_state_transfer_and_snapshots_leave_sealed() {
    let mut cl = Cluster::new(true);
    let key = [0x5a; 32];
    let (s0, reg) = cl.register(0, 3, key);
    cl.order(&[cl.request(0, 1, reg)]);
    let outs = cl.order_full(&[cl.request(0, 2, s0.seal_op(2, &put("k", "snapshot-secret-value")).unwrap())]);
    let seq = cl.seq;
    assert_eq!(seq % K, 0, "the second batch ends a checkpoint interval");
    let (_, out0) = &outs[0];
    let (digest, sealed) = out0
        .iter()
        .find_map(|o| match o {
            Output::Event(Event::Snapshot { seq: s, digest, bytes }) if *s == seq => Some((*digest, bytes.clone())),
            _ => None,
        })
        .expect("a snapshot at the checkpoint");
    assert!(!sealed.windows(32).any(|w| w == key), "the session key leaves Execution sealed");
    assert!(!sealed.windows(15).any(|w| w == b"snapshot-secret"), "the state leaves Execution sealed");
    assert_ne!(Digest::of(&sealed), digest, "the certified digest is the plaintext's, not the ciphertext's");

    // A fresh replica 3 learns the checkpoint certificate, asks for state, restores it.
    let me = ReplicaId(3);
    let mut fresh = execution(&cl.fx, me.0);
    let mut out = Vec::new();
    for r in 0..3 {
        let cp = cl.sign(
            r,
            CompartmentKind::Execution,
            Purpose::Checkpoint,
            Checkpoint { seq, state: digest, replica: ReplicaId(r) },
        );
        fresh.handle(Input::Message(Message::Checkpoint(cp)), &mut out);
    }
    assert!(out.iter().any(|o| matches!(o, Output::Event(Event::StateNeeded { .. }))));
    let mut out = Vec::new();
    fresh.handle(Input::RestoreState { seq, bytes: sealed }, &mut out);
    assert!(out.iter().any(|o| matches!(o, Output::Event(Event::StateRestored { .. }))), "{out:?}");
    assert_eq!(fresh.session_epoch(ClientId(0)), Some(3), "the session came with the state");
    assert_eq!(fresh.state_digest(), cl.replicas[0].state_digest());

    // It serves the client under the restored session.
    cl.replicas[3] = fresh;
    let replies = cl.order(&[cl.request(0, 3, s0.seal_op(3, &get("k")).unwrap())]);
    assert_eq!(value(agreed(Some(&s0), &replies)), Some(b"snapshot-secret-value".to_vec()));
    cl.assert_agree();
}

/// `WrongMode` is final for a client, so only an op that authenticates under the session
/// key can get it; a forger copying the envelope kind gets the non-final `NotAuthentic`.
#[test]
fn only_an_authentic_op_can_be_refused_for_the_wrong_mode() {
    let mut cl = Cluster::new(true);
    let (s0, reg) = cl.register(0, 1, [4; 32]);
    cl.order(&[cl.request(0, 1, reg)]);
    // The client's own op in the other mode (it authenticates under K_c).
    let plain = ClientSession::installed(
        &{
            let mut c = cl.fx.secrets.config.clone();
            c.confidential = false;
            c
        },
        ClientId(0),
        1,
        [4; 32],
    );
    let wrong_mode = plain.seal_op(3, &put("k", "v")).unwrap();
    let forged = to_bytes(&SessionOp::Authenticated { epoch: 1, op: put("k", "forged"), tag: [0; 16] });
    let replies = cl.order(&[cl.request(0, 2, forged), cl.request(0, 3, wrong_mode)]);
    for rs in &replies {
        let got: Vec<Opened> = rs
            .iter()
            .map(|r| open_reply_body(Some(&s0), r.client, r.timestamp, r.replica, &r.result).unwrap())
            .collect();
        assert_eq!(got, vec![Opened::Refused(Refusal::NotAuthentic), Opened::Refused(Refusal::WrongMode)]);
    }
    assert!(!Refusal::NotAuthentic.is_final() && Refusal::WrongMode.is_final());
    cl.assert_agree();
}
