//! The Preparation compartment at a backup (SPEC §4.1 handler (2), §4.4 (9), §9 P1/P2/L1):
//! on a PrePrepare with its batch from primary(v_p) in `v_p` with `s` in the window and no
//! other digest accepted for `(v_p, s)`, whose batch hashes to the digest and whose every
//! request authenticates for this enclave, it signs exactly one Prepare; everything else
//! is counted and dropped.

#![allow(clippy::unwrap_used, reason = "test helpers: a failed setup step aborts the test")]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use bytes::Bytes;
use proptest::prelude::*;
use serde::Serialize;
use splitbft_preparation::Preparation;
use splitbft_testkit::cluster::Fixture;
use splitbft_types::boundary::{Compartment, Event, Input, Output, Stats};
use splitbft_types::cert::verify_signed;
use splitbft_types::codec::to_bytes;
use splitbft_types::counters::Counter;
use splitbft_types::crypto::{ClientKeys, Purpose};
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::msg::{BatchMsg, Checkpoint, Commit, Digest, Message, PrePrepare, Prepare, Request, Signed};
use splitbft_types::{ClientId, CompartmentKind, ReplicaId, Seq, View};

use CompartmentKind::{Execution, Preparation as Prep};

const K: u64 = 4;
const L: u64 = 8;

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        Fixture::new(5, 1, 2, 31, |c| {
            c.checkpoint_interval = K;
            c.log_window = L;
        })
    })
}

fn secrets() -> &'static ClusterSecrets {
    &fixture().secrets
}

fn sign<T: Serialize>(r: u32, kind: CompartmentKind, purpose: Purpose, body: T) -> Signed<T> {
    fixture().sign(r, kind, purpose, body)
}

/// A PrePrepare signed by Preparation(primary(view)).
fn pp(view: View, seq: Seq, digest: Digest) -> Signed<PrePrepare> {
    fixture().pre_prepare(view, seq, digest)
}

fn checkpoint(r: u32, seq: Seq, state: Digest) -> Message {
    Message::Checkpoint(sign(r, Execution, Purpose::Checkpoint, Checkpoint { seq, state, replica: ReplicaId(r) }))
}

fn client(c: u32) -> ClientKeys {
    fixture().clients[c as usize].clone()
}

fn batch(tag: &str) -> Vec<u8> {
    fixture().tagged_batch(tag)
}

fn d(tag: &str) -> Digest {
    fixture().tagged_digest(tag)
}

fn bm(view: View, seq: Seq, tag: &str) -> Message {
    fixture().tagged_batch_msg(view, seq, tag)
}

/// A signed header (possibly forged) with the bytes of batch `tag`.
fn with_batch(pre_prepare: Signed<PrePrepare>, tag: &str) -> Message {
    Message::Batch(BatchMsg { pre_prepare, batch: batch(tag) })
}

fn preparation(me: u32) -> Preparation {
    Preparation::new(secrets().config.clone(), ReplicaId(me), fixture().secret(me, Prep), Digest::of(b"genesis"))
        .unwrap()
}

fn feed(p: &mut Preparation, msg: Message) -> Vec<Output> {
    let mut out = Vec::new();
    p.handle(Input::Message(msg), &mut out);
    out
}

/// The Prepares among `out`, checking that each is signed by this replica's Preparation
/// enclave (so other compartments will accept it).
fn prepares(out: &[Output]) -> Vec<Prepare> {
    let s = secrets();
    let keys = &fixture().keys;
    out.iter()
        .filter_map(|o| match o {
            Output::Send(Message::Prepare(p)) => {
                assert_eq!(verify_signed(&s.config, keys, p), Ok(p.body.replica));
                Some(p.body)
            }
            _ => None,
        })
        .collect()
}

fn stats(p: &mut Preparation) -> Stats {
    let mut out = Vec::new();
    p.handle(Input::QueryStats, &mut out);
    match out.pop() {
        Some(Output::Stats(s)) => s,
        other => panic!("no stats: {other:?}"),
    }
}

/// SPEC §4.1 (2): one valid PrePrepare → one Prepare `(v, s, d, i)`; the same PrePrepare
/// again (directly or inside a Batch) → nothing more.
#[test]
fn backup_sends_exactly_one_prepare_per_valid_pre_prepare() {
    let mut p = preparation(2);
    let out = feed(&mut p, bm(0, 1, "a"));
    assert_eq!(prepares(&out), vec![Prepare { view: 0, seq: 1, digest: d("a"), replica: ReplicaId(2) }]);
    assert_eq!(out.len(), 1);
    assert!(feed(&mut p, bm(0, 1, "a")).is_empty());
    assert!(feed(&mut p, Message::PrePrepare(pp(0, 1, d("a")))).is_empty());
    let s = stats(&mut p);
    assert_eq!(s.get(Counter::PreparesSent), 1);
    assert_eq!(s.get(Counter::PrePrepareDuplicate), 1);
    assert_eq!(s.log_entries, 1);
}

/// SPEC §9 P1: never two digests for one `(v, s)`, even when the primary equivocates
/// with two validly signed PrePrepares.
#[test]
fn backup_never_prepares_two_digests_for_one_slot() {
    let mut p = preparation(1);
    assert_eq!(prepares(&feed(&mut p, bm(0, 3, "a"))).len(), 1);
    assert!(feed(&mut p, bm(0, 3, "b")).is_empty());
    assert!(feed(&mut p, bm(0, 3, "c")).is_empty());
    assert_eq!(stats(&mut p).get(Counter::PrePrepareConflicting), 2);
    assert_eq!(stats(&mut p).get(Counter::PreparesSent), 1);
}

/// SPEC §9 L1, §3: a PrePrepare is accepted only under Preparation(primary(v))'s key. A
/// forged one is counted and does not occupy the slot: the genuine one still prepares.
#[test]
fn backup_rejects_pre_prepares_not_signed_by_the_primary() {
    let mut p = preparation(2);
    let body = PrePrepare { view: 0, seq: 1, digest: d("a") };
    let by_backup = sign(1, Prep, Purpose::PrePrepare, body);
    let by_primary_confirmation = sign(0, CompartmentKind::Confirmation, Purpose::PrePrepare, body);
    let wrong_purpose = sign(0, Prep, Purpose::Prepare, body);
    let mut flipped = pp(0, 1, d("a"));
    flipped.sig.0[17] ^= 0x80;
    for forged in [by_backup, by_primary_confirmation, wrong_purpose, flipped] {
        assert!(feed(&mut p, with_batch(forged, "a")).is_empty());
    }
    assert_eq!(stats(&mut p).get(Counter::PrePrepareBadSignature), 4);
    assert_eq!(stats(&mut p).get(Counter::PreparesSent), 0);
    assert_eq!(stats(&mut p).log_entries, 0);
    assert_eq!(prepares(&feed(&mut p, bm(0, 1, "a"))).len(), 1);
}

/// SPEC §4.1 (2): only PrePrepares of `v_p` (= 0: view change is not implemented).
#[test]
fn backup_rejects_pre_prepares_of_another_view() {
    let mut p = preparation(2);
    for view in [1, 2, 4, u64::MAX] {
        assert!(feed(&mut p, bm(view, 1, "a")).is_empty(), "view {view}");
    }
    assert_eq!(stats(&mut p).get(Counter::PrePrepareWrongView), 4);
    assert_eq!(stats(&mut p).get(Counter::PreparesSent), 0);
}

/// SPEC §4.1 (2): `s` must be in `(h, h + L]`; tested at 0, `h + L` and `h + L + 1`.
#[test]
fn backup_rejects_pre_prepares_outside_the_window() {
    let mut p = preparation(3);
    for seq in [0, L + 1, 10 * L, u64::MAX] {
        assert!(feed(&mut p, bm(0, seq, "a")).is_empty(), "seq {seq}");
    }
    assert_eq!(stats(&mut p).get(Counter::PrePrepareOutsideWindow), 4);
    assert_eq!(stats(&mut p).log_entries, 0);
    assert_eq!(prepares(&feed(&mut p, bm(0, L, "a"))).len(), 1);
    assert_eq!(prepares(&feed(&mut p, bm(0, 1, "a"))).len(), 1);
}

/// SPEC §3: the primary sends only the PrePrepare, never a Prepare, even for its own
/// PrePrepare coming back from the network.
#[test]
fn primary_does_not_prepare() {
    let mut p = preparation(0);
    assert!(feed(&mut p, bm(0, 1, "a")).is_empty());
    assert_eq!(stats(&mut p).get(Counter::PrePrepareOwn), 1);
    assert_eq!(stats(&mut p).get(Counter::PreparesSent), 0);
}

/// SPEC §4.4 (9): a checkpoint certificate moves `h`, drops accepted digests `<= h` and
/// refuses later PrePrepares `<= h`; the window now ends at `h + L`.
#[test]
fn backup_collects_garbage_on_a_checkpoint_certificate() {
    let mut p = preparation(1);
    for seq in 1..=6 {
        assert_eq!(prepares(&feed(&mut p, bm(0, seq, "a"))).len(), 1);
    }
    assert_eq!(stats(&mut p).log_entries, 6);
    assert!(feed(&mut p, checkpoint(0, 4, d("st"))).is_empty());
    assert!(feed(&mut p, checkpoint(3, 4, d("st"))).is_empty());
    assert_eq!(stats(&mut p).low_watermark, 0);
    assert_eq!(feed(&mut p, checkpoint(2, 4, d("st"))), vec![Output::Event(Event::Stable { seq: 4 })]);
    let s = stats(&mut p);
    assert_eq!(s.low_watermark, 4);
    assert_eq!(s.log_entries, 2);
    // Old slots are closed (no fresh Prepare for a new digest at s <= h).
    for seq in 1..=4 {
        assert!(feed(&mut p, bm(0, seq, "b")).is_empty());
    }
    assert_eq!(stats(&mut p).get(Counter::PrePrepareOutsideWindow), 4);
    // P1 still holds for slots above h.
    assert!(feed(&mut p, bm(0, 5, "b")).is_empty());
    assert_eq!(prepares(&feed(&mut p, bm(0, 4 + L, "a"))).len(), 1);
    assert!(feed(&mut p, bm(0, 5 + L, "a")).is_empty());
}

/// Inputs Preparation has no business with, and bytes that do not decode, are counted.
#[test]
fn unexpected_and_malformed_inputs_are_counted() {
    let mut p = preparation(1);
    let prepare = sign(2, Prep, Purpose::Prepare, Prepare { view: 0, seq: 1, digest: d("a"), replica: ReplicaId(2) });
    let commit = sign(
        2,
        CompartmentKind::Confirmation,
        Purpose::Commit,
        Commit { view: 0, seq: 1, digest: d("a"), replica: ReplicaId(2) },
    );
    assert!(feed(&mut p, Message::Prepare(prepare)).is_empty());
    assert!(feed(&mut p, Message::Commit(commit)).is_empty());
    let mut out = Vec::new();
    p.handle_encoded(&[Bytes::from_static(&[]), Bytes::from_static(&[7, 7, 7]), Bytes::from_static(&[0, 1])], &mut out);
    assert!(out.is_empty());
    let s = stats(&mut p);
    assert_eq!(s.get(Counter::UnexpectedInput), 2);
    assert_eq!(s.get(Counter::MalformedInput), 3);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// SPEC §9 P1/P2 over arbitrary streams of PrePrepares (equivocating, forged, other
    /// views, in and out of the window): at most one Prepare per `(v, s)`, and each one
    /// matches a validly signed PrePrepare of primary(v) in view 0 with `s` in the window
    /// — the first such PrePrepare for that slot.
    #[test]
    fn at_most_one_prepare_per_slot_matching_the_first_valid_pre_prepare(
        steps in proptest::collection::vec((0u64..2, 0u64..=L + 1, 0u8..3, any::<bool>()), 0..40),
        me in 1u32..4,
    ) {
        let mut p = preparation(me);
        let mut first: BTreeMap<(View, Seq), Digest> = BTreeMap::new();
        let mut prepared: BTreeMap<(View, Seq), Digest> = BTreeMap::new();
        for (view, seq, k, forge) in steps {
            let tag = format!("t{k}");
            let digest = d(&tag);
            let mut header = pp(view, seq, digest);
            if forge {
                header.sig.0[0] ^= 1;
            }
            let msg = with_batch(header, &tag);
            let acceptable = !forge && view == 0 && (1..=L).contains(&seq);
            if acceptable {
                first.entry((view, seq)).or_insert(digest);
            }
            for prep in prepares(&feed(&mut p, msg)) {
                prop_assert_eq!(prep.replica, ReplicaId(me));
                let key = (prep.view, prep.seq);
                prop_assert!(prepared.insert(key, prep.digest).is_none(), "P1: second Prepare for {:?}", key);
                prop_assert_eq!(Some(&prep.digest), first.get(&key), "P2");
            }
        }
        prop_assert_eq!(prepared, first);
    }
}

/// A batch of `requests` signed as primary(view)'s PrePrepare for `seq`.
fn signed_batch(view: View, seq: Seq, requests: &[Request]) -> Message {
    let batch = to_bytes(&requests.to_vec());
    Message::Batch(BatchMsg { pre_prepare: pp(view, seq, Digest::of(&batch)), batch })
}

/// Issue 11 finding (3), SPEC §3 note: a backup never prepares a digest whose batch it has
/// not checked. On 106ccbb a bare PrePrepare header was prepared, so a faulty primary could
/// get a digest committed whose batch no correct replica held (a permanent halt).
#[test]
fn a_header_without_its_batch_is_never_prepared() {
    let mut p = preparation(2);
    assert!(prepares(&feed(&mut p, Message::PrePrepare(pp(0, 1, d("a"))))).is_empty());
    assert_eq!(stats(&mut p).get(Counter::PrePrepareWithoutBatch), 1);
    // Bytes that do not hash to the header's digest are no batch either, and do not close
    // the slot (any environment could have altered them): the genuine batch still prepares.
    assert!(feed(&mut p, with_batch(pp(0, 1, d("a")), "b")).is_empty());
    assert_eq!(stats(&mut p).get(Counter::BatchDigestMismatch), 1);
    assert_eq!(prepares(&feed(&mut p, bm(0, 1, "a"))).len(), 1);
}

/// Issue 11 finding (1), SPEC §4.1 (2), §6: a faulty Execution enclave knows client 0's
/// session key and seals an op with it; a faulty primary orders it. The op opens under the
/// session key (on 106ccbb that was all Execution checked, and backups prepared on the
/// header alone), but neither its MAC entries nor its signature verify: no correct backup
/// prepares the batch, so it can never gather a prepare certificate.
#[test]
fn a_batch_with_a_request_the_client_did_not_send_is_refused() {
    use splitbft_types::msg::{Mac, Sig};
    use splitbft_types::session::{Direction, SessionKey, SessionOp};
    let n = secrets().config.n();
    // What a faulty Execution can build: an op sealed under the real session key.
    let session = SessionKey::new([7; 32]);
    let cluster = secrets().config.cluster_id;
    let ciphertext = session.seal(cluster, ClientId(0), 9, Direction::Request, 1, b"PUT k forged").unwrap();
    let op = to_bytes(&SessionOp::Sealed { epoch: 1, ciphertext });
    let genuine = client(0).request(9, b"PUT k genuine".to_vec());
    let forgeries = [
        Request { client: ClientId(0), timestamp: 9, op: op.clone(), auth: vec![Mac::default(); n], sig: Sig([0; 64]) },
        // The genuine request's authenticator and signature do not cover another op.
        Request { op: op.clone(), ..genuine.clone() },
        // Nor another client.
        Request { client: ClientId(1), ..genuine.clone() },
    ];
    for (i, forged) in forgeries.into_iter().enumerate() {
        let mut p = preparation(1 + i as u32 % 3);
        let seq = 1;
        let msg = signed_batch(0, seq, &[client(1).request(1, b"x".to_vec()), forged]);
        assert!(prepares(&feed(&mut p, msg.clone())).is_empty(), "forgery {i} prepared");
        let s = stats(&mut p);
        assert_eq!(
            (s.get(Counter::BatchesRefusedPrimaryFaulty), s.get(Counter::RequestBadAuthenticator)),
            (1, 1),
            "{i}"
        );
        // The primary signed it: the slot is decided, a resend costs no second check.
        assert!(feed(&mut p, msg).is_empty());
        assert_eq!(stats(&mut p).get(Counter::PrePrepareDuplicate), 1);
        assert_eq!(stats(&mut p).get(Counter::PreparesSent), 0);
    }
}

/// Issue 11 finding (2), SPEC §6: the signature and every MAC cover the timestamp, so a
/// faulty primary cannot re-order a pending Register (or any request) at another `t`. On
/// 106ccbb the Register's own signature covered only its body, and a Register re-timed at
/// `t = u64::MAX` executed and slid the client's window past everything it would send.
#[test]
fn a_re_timed_request_is_refused() {
    use splitbft_types::session::ClientSession;
    let mut rng = <rand_chacha::ChaCha20Rng as rand_chacha::rand_core::SeedableRng>::seed_from_u64(3);
    let (_, register) = ClientSession::register(&mut rng, &secrets().config, ClientId(0), 1, [9; 32]).unwrap();
    let genuine = client(0).request(5, register);
    for t in [6, 1 << 40, u64::MAX] {
        let mut p = preparation(3);
        let retimed = Request { timestamp: t, ..genuine.clone() };
        assert!(prepares(&feed(&mut p, signed_batch(0, 1, &[retimed]))).is_empty(), "t = {t}");
        assert_eq!(stats(&mut p).get(Counter::BatchesRefusedPrimaryFaulty), 1);
    }
    let mut p = preparation(3);
    assert_eq!(prepares(&feed(&mut p, signed_batch(0, 1, &[genuine]))).len(), 1);
}

/// SPEC §6 (Aardvark's lesson): a request whose MAC entry for this enclave is wrong still
/// authenticates by its signature, so a client that sends MACs valid for some enclaves and
/// not others cannot make a correct primary's batch fail at correct backups.
#[test]
fn a_bad_mac_entry_is_settled_by_the_signature() {
    use splitbft_types::msg::Mac;
    let me = 2;
    let mut req = client(1).request(4, b"op".to_vec());
    req.auth[me as usize] = Mac([1; 32]);
    let mut p = preparation(me);
    assert_eq!(prepares(&feed(&mut p, signed_batch(0, 1, std::slice::from_ref(&req)))).len(), 1);
    assert_eq!(stats(&mut p).get(Counter::RequestMacFailedSignatureOk), 1);
    // Both wrong: refused.
    req.sig.0[3] ^= 1;
    let mut p = preparation(me);
    assert!(prepares(&feed(&mut p, signed_batch(0, 1, &[req]))).is_empty());
    assert_eq!(stats(&mut p).get(Counter::RequestBadAuthenticator), 1);
}
