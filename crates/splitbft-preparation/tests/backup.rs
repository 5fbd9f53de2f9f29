//! The Preparation compartment at a backup (SPEC §4.1 handler (2), §4.4 (9), §9 P1/P2/L1):
//! on a PrePrepare from primary(v_p) in `v_p` with `s` in the window and no other digest
//! accepted for `(v_p, s)`, it signs exactly one Prepare; everything else is counted and
//! dropped.

#![allow(clippy::unwrap_used, reason = "test helpers: a failed setup step aborts the test")]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use bytes::Bytes;
use proptest::prelude::*;
use serde::Serialize;
use splitbft_preparation::Preparation;
use splitbft_types::boundary::{Compartment, Event, Input, Output, Stats};
use splitbft_types::cert::verify_signed;
use splitbft_types::crypto::{Purpose, SecretKey};
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::msg::{BatchMsg, Checkpoint, Commit, Digest, Message, PrePrepare, Prepare, Signed};
use splitbft_types::{CompartmentKind, ReplicaId, Seq, View};

use CompartmentKind::{Execution, Preparation as Prep};

const K: u64 = 4;
const L: u64 = 8;

fn secrets() -> &'static ClusterSecrets {
    static SECRETS: OnceLock<ClusterSecrets> = OnceLock::new();
    SECRETS.get_or_init(|| {
        let mut s = ClusterSecrets::deterministic(5, 1, 2, 31);
        s.config.checkpoint_interval = K;
        s.config.log_window = L;
        s
    })
}

fn sign<T: Serialize>(r: u32, kind: CompartmentKind, purpose: Purpose, body: T) -> Signed<T> {
    let s = secrets();
    Signed { sig: s.enclave(ReplicaId(r), kind).sign(s.config.cluster_id, purpose, &body), body }
}

/// A PrePrepare signed by Preparation(primary(view)).
fn pp(view: View, seq: Seq, digest: Digest) -> Signed<PrePrepare> {
    let primary = secrets().config.primary(view).0;
    sign(primary, Prep, Purpose::PrePrepare, PrePrepare { view, seq, digest })
}

fn checkpoint(r: u32, seq: Seq, state: Digest) -> Message {
    Message::Checkpoint(sign(r, Execution, Purpose::Checkpoint, Checkpoint { seq, state, replica: ReplicaId(r) }))
}

fn d(tag: &str) -> Digest {
    Digest::of(tag.as_bytes())
}

fn preparation(me: u32) -> Preparation {
    let s = secrets();
    let secret = SecretKey::from_seed(s.enclave(ReplicaId(me), Prep).seed());
    Preparation::new(s.config.clone(), ReplicaId(me), secret, Digest::of(b"genesis")).unwrap()
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
    let keys = s.config.validate().unwrap();
    out.iter()
        .filter_map(|o| match o {
            Output::Send(Message::Prepare(p)) => {
                assert_eq!(verify_signed(&s.config, &keys, p), Ok(p.body.replica));
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
    let out = feed(&mut p, Message::PrePrepare(pp(0, 1, d("a"))));
    assert_eq!(prepares(&out), vec![Prepare { view: 0, seq: 1, digest: d("a"), replica: ReplicaId(2) }]);
    assert_eq!(out.len(), 1);
    assert!(feed(&mut p, Message::PrePrepare(pp(0, 1, d("a")))).is_empty());
    let batch = BatchMsg { pre_prepare: pp(0, 1, d("a")), batch: b"ignored by Preparation".to_vec() };
    assert!(feed(&mut p, Message::Batch(batch)).is_empty());
    // The Batch path prepares a new slot just like a bare PrePrepare.
    let batch = BatchMsg { pre_prepare: pp(0, 2, d("b")), batch: Vec::new() };
    assert_eq!(
        prepares(&feed(&mut p, Message::Batch(batch))),
        vec![Prepare { view: 0, seq: 2, digest: d("b"), replica: ReplicaId(2) }]
    );
    let s = stats(&mut p);
    assert_eq!(s.get("prepares_sent"), 2);
    assert_eq!(s.get("pre_prepare_duplicate"), 2);
    assert_eq!(s.log_entries, 2);
}

/// SPEC §9 P1: never two digests for one `(v, s)`, even when the primary equivocates
/// with two validly signed PrePrepares.
#[test]
fn backup_never_prepares_two_digests_for_one_slot() {
    let mut p = preparation(1);
    assert_eq!(prepares(&feed(&mut p, Message::PrePrepare(pp(0, 3, d("a"))))).len(), 1);
    assert!(feed(&mut p, Message::PrePrepare(pp(0, 3, d("b")))).is_empty());
    let batch = BatchMsg { pre_prepare: pp(0, 3, d("c")), batch: Vec::new() };
    assert!(feed(&mut p, Message::Batch(batch)).is_empty());
    assert_eq!(stats(&mut p).get("pre_prepare_conflicting"), 2);
    assert_eq!(stats(&mut p).get("prepares_sent"), 1);
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
        assert!(feed(&mut p, Message::PrePrepare(forged)).is_empty());
    }
    assert_eq!(stats(&mut p).get("pre_prepare_bad_signature"), 4);
    assert_eq!(stats(&mut p).get("prepares_sent"), 0);
    assert_eq!(stats(&mut p).log_entries, 0);
    assert_eq!(prepares(&feed(&mut p, Message::PrePrepare(pp(0, 1, d("a"))))).len(), 1);
}

/// SPEC §4.1 (2): only PrePrepares of `v_p` (= 0: view change is not implemented).
#[test]
fn backup_rejects_pre_prepares_of_another_view() {
    let mut p = preparation(2);
    for view in [1, 2, 4, u64::MAX] {
        assert!(feed(&mut p, Message::PrePrepare(pp(view, 1, d("a")))).is_empty(), "view {view}");
    }
    assert_eq!(stats(&mut p).get("pre_prepare_wrong_view"), 4);
    assert_eq!(stats(&mut p).get("prepares_sent"), 0);
}

/// SPEC §4.1 (2): `s` must be in `(h, h + L]`; tested at 0, `h + L` and `h + L + 1`.
#[test]
fn backup_rejects_pre_prepares_outside_the_window() {
    let mut p = preparation(3);
    for seq in [0, L + 1, 10 * L, u64::MAX] {
        assert!(feed(&mut p, Message::PrePrepare(pp(0, seq, d("a")))).is_empty(), "seq {seq}");
    }
    assert_eq!(stats(&mut p).get("pre_prepare_outside_window"), 4);
    assert_eq!(stats(&mut p).log_entries, 0);
    assert_eq!(prepares(&feed(&mut p, Message::PrePrepare(pp(0, L, d("a"))))).len(), 1);
    assert_eq!(prepares(&feed(&mut p, Message::PrePrepare(pp(0, 1, d("a"))))).len(), 1);
}

/// SPEC §3: the primary sends only the PrePrepare, never a Prepare, even for its own
/// PrePrepare coming back from the network.
#[test]
fn primary_does_not_prepare() {
    let mut p = preparation(0);
    assert!(feed(&mut p, Message::PrePrepare(pp(0, 1, d("a")))).is_empty());
    assert_eq!(stats(&mut p).get("pre_prepare_own"), 1);
    assert_eq!(stats(&mut p).get("prepares_sent"), 0);
}

/// SPEC §4.4 (9): a checkpoint certificate moves `h`, drops accepted digests `<= h` and
/// refuses later PrePrepares `<= h`; the window now ends at `h + L`.
#[test]
fn backup_collects_garbage_on_a_checkpoint_certificate() {
    let mut p = preparation(1);
    for seq in 1..=6 {
        assert_eq!(prepares(&feed(&mut p, Message::PrePrepare(pp(0, seq, d("a"))))).len(), 1);
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
        assert!(feed(&mut p, Message::PrePrepare(pp(0, seq, d("b")))).is_empty());
    }
    assert_eq!(stats(&mut p).get("pre_prepare_outside_window"), 4);
    // P1 still holds for slots above h.
    assert!(feed(&mut p, Message::PrePrepare(pp(0, 5, d("b")))).is_empty());
    assert_eq!(prepares(&feed(&mut p, Message::PrePrepare(pp(0, 4 + L, d("a"))))).len(), 1);
    assert!(feed(&mut p, Message::PrePrepare(pp(0, 5 + L, d("a")))).is_empty());
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
    assert_eq!(s.get("unexpected_input"), 2);
    assert_eq!(s.get("malformed_input"), 3);
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
            let digest = Digest([k; 32]);
            let mut msg = pp(view, seq, digest);
            if forge {
                msg.sig.0[0] ^= 1;
            }
            let acceptable = !forge && view == 0 && (1..=L).contains(&seq);
            if acceptable {
                first.entry((view, seq)).or_insert(digest);
            }
            for prep in prepares(&feed(&mut p, Message::PrePrepare(msg))) {
                prop_assert_eq!(prep.replica, ReplicaId(me));
                let key = (prep.view, prep.seq);
                prop_assert!(prepared.insert(key, prep.digest).is_none(), "P1: second Prepare for {:?}", key);
                prop_assert_eq!(Some(&prep.digest), first.get(&key), "P2");
            }
        }
        prop_assert_eq!(prepared, first);
    }
}
