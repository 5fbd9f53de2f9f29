//! The Preparation compartment in a view change (SPEC §4.1 (6) (7), §4.4 (7'), §9 P3/C5):
//! it stores ViewChanges whose certificates verify (C5); at primary(v') it builds the
//! NewView from `2f + 1` of them, with `O` computed exactly as PBFT, and enters `v'`; every
//! other Preparation enclave recomputes `O`, and only if it matches enters `v'` and
//! prepares the PrePrepares of `O` (P3). Everything else is counted and dropped.
//!
//! Fixture: 4 replicas (f = 1), K = 4, L = 8; primary(0) = 0, primary(1) = 1.

#![allow(clippy::unwrap_used, reason = "test helpers: a failed setup step aborts the test")]

use splitbft_testkit::cluster::Fixture;
use std::sync::OnceLock;

use serde::Serialize;
use splitbft_preparation::Preparation;
use splitbft_types::boundary::{Compartment, Event, Input, Output, Stats};
use splitbft_types::cert::verify_signed;
use splitbft_types::codec::to_bytes;
use splitbft_types::counters::Counter;
use splitbft_types::crypto::Purpose;
use splitbft_types::msg::{
    BatchMsg, Checkpoint, CheckpointCert, Digest, Message, NewView, PrePrepare, Prepare, PreparedCert, Signed,
    ViewChange,
};
use splitbft_types::viewchange::{Depth, check_new_view, compute_o, null_digest};
use splitbft_types::{CompartmentKind, ReplicaId, Seq, View};

use CompartmentKind::{Confirmation, Execution, Preparation as Prep};

const K: u64 = 4;
const L: u64 = 8;

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        Fixture::new(13, 1, 1, 57, |c| {
            c.checkpoint_interval = K;
            c.log_window = L;
        })
    })
}

/// The initial state digest: Preparation only compares it with seq-0 checkpoint
/// certificates, so any fixed digest stands for `Execution::genesis_digest`.
fn genesis() -> Digest {
    Digest::of(b"genesis state")
}

fn d(tag: &str) -> Digest {
    fixture().tagged_digest(tag)
}

fn bm(view: View, seq: Seq, tag: &str) -> Message {
    fixture().tagged_batch_msg(view, seq, tag)
}

fn preparation(me: u32) -> Preparation {
    Preparation::new(fixture().secrets.config.clone(), ReplicaId(me), fixture().secret(me, Prep), genesis()).unwrap()
}

fn sign<T: Serialize>(r: u32, kind: CompartmentKind, purpose: Purpose, body: T) -> Signed<T> {
    fixture().sign(r, kind, purpose, body)
}

fn primary(view: View) -> u32 {
    fixture().secrets.config.primary(view).0
}

fn pp(view: View, seq: Seq, digest: Digest) -> Signed<PrePrepare> {
    fixture().pre_prepare(view, seq, digest)
}

/// A real prepare certificate: the primary's PrePrepare and `2f` backups' Prepares.
fn prepared(view: View, seq: Seq, digest: Digest) -> PreparedCert {
    let backups = (0..4).filter(|r| *r != primary(view)).take(2);
    PreparedCert {
        pre_prepare: pp(view, seq, digest),
        prepares: backups
            .map(|r| sign(r, Prep, Purpose::Prepare, Prepare { view, seq, digest, replica: ReplicaId(r) }))
            .collect(),
    }
}

fn genesis_cert() -> CheckpointCert {
    CheckpointCert { seq: 0, state: genesis(), proof: Vec::new() }
}

fn checkpoint_cert(seq: Seq, state: Digest) -> CheckpointCert {
    let proof = (0..3)
        .map(|r| sign(r, Execution, Purpose::Checkpoint, Checkpoint { seq, state, replica: ReplicaId(r) }))
        .collect();
    CheckpointCert { seq, state, proof }
}

/// A ViewChange signed by Confirmation(`r`).
fn vc(r: u32, view: View, stable: CheckpointCert, prepared: Vec<PreparedCert>) -> Signed<ViewChange> {
    sign(r, Confirmation, Purpose::ViewChange, ViewChange { view, replica: ReplicaId(r), stable, prepared })
}

/// The quorum for view 1 used throughout: replica 2 prepared `a` at 1 and `b` at 3 in
/// view 0; replicas 0 and 3 prepared nothing (or only `a`).
fn quorum_view_1() -> Vec<Signed<ViewChange>> {
    vec![
        vc(0, 1, genesis_cert(), vec![prepared(0, 1, d("a"))]),
        vc(2, 1, genesis_cert(), vec![prepared(0, 1, d("a")), prepared(0, 3, d("b"))]),
        vc(3, 1, genesis_cert(), vec![]),
    ]
}

/// The `O` that [`quorum_view_1`] implies.
fn o_view_1() -> Vec<PrePrepare> {
    vec![
        PrePrepare { view: 1, seq: 1, digest: d("a") },
        PrePrepare { view: 1, seq: 2, digest: null_digest() },
        PrePrepare { view: 1, seq: 3, digest: d("b") },
    ]
}

/// A NewView signed by Preparation(primary(view)) with `o` signed by the same enclave.
fn new_view(view: View, view_changes: Vec<Signed<ViewChange>>, o: &[PrePrepare]) -> Signed<NewView> {
    let p = primary(view);
    let pre_prepares = o.iter().map(|body| sign(p, Prep, Purpose::PrePrepare, *body)).collect();
    sign(p, Prep, Purpose::NewView, NewView { view, view_changes, pre_prepares })
}

fn good_new_view_1() -> Signed<NewView> {
    new_view(1, quorum_view_1(), &o_view_1())
}

fn feed(p: &mut Preparation, msg: Message) -> Vec<Output> {
    let mut out = Vec::new();
    p.handle(Input::Message(msg), &mut out);
    out
}

fn stats(p: &mut Preparation) -> Stats {
    let mut out = Vec::new();
    p.handle(Input::QueryStats, &mut out);
    match out.pop() {
        Some(Output::Stats(s)) => s,
        other => panic!("no stats: {other:?}"),
    }
}

/// Prepares among `out`, each checked to verify under its sender's Preparation key.
fn prepares(out: &[Output]) -> Vec<Prepare> {
    let f = fixture();
    out.iter()
        .filter_map(|o| match o {
            Output::Send(Message::Prepare(p)) => {
                assert_eq!(verify_signed(&f.secrets.config, &f.keys, p), Ok(p.body.replica));
                Some(p.body)
            }
            _ => None,
        })
        .collect()
}

fn new_views(out: &[Output]) -> Vec<Signed<NewView>> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(Message::NewView(nv)) => Some(nv.clone()),
            _ => None,
        })
        .collect()
}

fn entered(out: &[Output]) -> Vec<View> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(Event::ViewEntered { view }) => Some(*view),
            _ => None,
        })
        .collect()
}

fn prepare_of(r: u32, pp: PrePrepare) -> Prepare {
    Prepare { view: pp.view, seq: pp.seq, digest: pp.digest, replica: ReplicaId(r) }
}

// ---------------------------------------------------------------- (6) at the new primary

/// SPEC §4.1 (6): the primary of view 1 stores valid ViewChanges, and on the `2f + 1`-th
/// signs a NewView whose `O` re-proposes what was prepared in view 0 (carried by a
/// ViewChange), fills the gap with the null batch, and enters view 1 itself — as primary
/// it sends no Prepares. Later ViewChanges for view 1 change nothing.
#[test]
fn the_new_primary_builds_a_new_view_from_a_quorum_and_enters_the_view() {
    let f = fixture();
    let mut p = preparation(1);
    // In view 0, replica 1 is a backup: it prepared `a` at 1 like everyone.
    assert_eq!(prepares(&feed(&mut p, bm(0, 1, "a"))).len(), 1);
    let quorum = quorum_view_1();
    for vc in &quorum[..2] {
        let out = feed(&mut p, Message::ViewChange(vc.clone()));
        assert!(out.is_empty(), "2f ViewChanges are not a quorum: {out:?}");
    }
    assert_eq!(stats(&mut p).view, 0);
    let out = feed(&mut p, Message::ViewChange(quorum[2].clone()));
    let nvs = new_views(&out);
    assert_eq!(nvs.len(), 1, "{out:?}");
    assert_eq!(entered(&out), vec![1]);
    assert!(prepares(&out).is_empty(), "the primary does not prepare");
    let nv = &nvs[0];
    assert_eq!(nv.body.view, 1);
    assert_eq!(nv.body.view_changes.len(), 3);
    // The NewView passes the very check every other Preparation enclave applies.
    let accepted = check_new_view(&f.secrets.config, &f.keys, nv, genesis(), Depth::Full).unwrap();
    assert_eq!(accepted.stable, genesis_cert());
    let o: Vec<PrePrepare> = nv.body.pre_prepares.iter().map(|pp| pp.body).collect();
    assert_eq!(o, o_view_1(), "a (prepared in view 0) re-proposed at 1, null at 2, b at 3");
    assert_eq!(compute_o(1, &nv.body.view_changes).1, o);
    let s = stats(&mut p);
    assert_eq!((s.view, s.get(Counter::NewViewsSent), s.get(Counter::ViewsEntered)), (1, 1, 1));
    assert_eq!(s.get(Counter::ViewChangesAccepted), 3);

    // A fourth ViewChange for view 1 (its own Confirmation's, late) is old news.
    let out = feed(&mut p, Message::ViewChange(vc(1, 1, genesis_cert(), vec![])));
    assert!(out.is_empty());
    assert_eq!(stats(&mut p).get(Counter::ViewChangeOld), 1);
    assert_eq!(stats(&mut p).get(Counter::NewViewsSent), 1);

    // As primary of view 1 it orders after the end of O.
    let request = f.clients[0].request(1, b"op".to_vec());
    let mut out = Vec::new();
    p.handle(Input::OrderBatch(to_bytes(&vec![request])), &mut out);
    let ordered: Vec<PrePrepare> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send(Message::Batch(b)) => Some(b.pre_prepare.body),
            _ => None,
        })
        .collect();
    assert_eq!(ordered.len(), 1, "{out:?}");
    assert_eq!((ordered[0].view, ordered[0].seq), (1, 4));
}

/// SPEC §4.1 (6): the NewView's checkpoint is the highest stable one among the
/// ViewChanges, and the new primary adopts it (7').
#[test]
fn the_new_primary_adopts_the_highest_checkpoint_of_the_quorum() {
    let mut p = preparation(1);
    let stable = checkpoint_cert(4, d("state 4"));
    let vcs = [
        vc(0, 1, genesis_cert(), vec![prepared(0, 2, d("below")), prepared(0, 5, d("five"))]),
        vc(2, 1, stable.clone(), vec![]),
        vc(3, 1, genesis_cert(), vec![]),
    ];
    let mut out = Vec::new();
    for v in vcs {
        out.extend(feed(&mut p, Message::ViewChange(v)));
    }
    let nv = new_views(&out).pop().unwrap();
    assert_eq!(
        nv.body.pre_prepares.iter().map(|pp| pp.body).collect::<Vec<_>>(),
        vec![PrePrepare { view: 1, seq: 5, digest: d("five") }]
    );
    assert!(out.contains(&Output::Event(Event::Stable { seq: 4 })), "{out:?}");
    let s = stats(&mut p);
    assert_eq!((s.view, s.low_watermark), (1, 4));
}

/// SPEC §9 C5, L1: ViewChanges whose signature or certificates do not verify are
/// counted by reason and never count towards the quorum; one with a bad signature does not
/// block a later valid ViewChange of the same replica. (Certificates are checked once a
/// quorum for the view is there: each case completes one.)
#[test]
fn forged_or_incomplete_view_changes_are_refused_and_do_not_count() {
    let quorum = quorum_view_1();
    let two_of_quorum = || {
        let mut p = preparation(1);
        feed(&mut p, Message::ViewChange(quorum[0].clone()));
        feed(&mut p, Message::ViewChange(quorum[1].clone()));
        p
    };

    // Replica 3's ViewChange, broken in every way a Byzantine Confirmation or environment
    // could try.
    let mut forged_sig = quorum[2].clone();
    forged_sig.sig.0[10] ^= 0x01;
    let by_preparation = sign(
        3,
        Prep,
        Purpose::ViewChange,
        ViewChange { view: 1, replica: ReplicaId(3), stable: genesis_cert(), prepared: vec![] },
    );
    let mut incomplete = prepared(0, 1, d("a"));
    incomplete.prepares.truncate(1);
    let mut forged_prepare = prepared(0, 1, d("a"));
    forged_prepare.prepares[0].sig.0[2] ^= 0x01;
    let cases = [
        (Counter::ViewChangeBadSignature, forged_sig),
        (Counter::ViewChangeBadSignature, by_preparation),
        (Counter::ViewChangeBadCertificate, vc(3, 1, genesis_cert(), vec![incomplete])),
        (Counter::ViewChangeBadSignature, vc(3, 1, genesis_cert(), vec![forged_prepare])),
        (Counter::ViewChangeBadPrepared, vc(3, 1, genesis_cert(), vec![prepared(1, 1, d("a"))])),
        (Counter::ViewChangeBadPrepared, vc(3, 1, genesis_cert(), vec![prepared(0, L + 1, d("far"))])),
        (
            Counter::ViewChangeBadPrepared,
            vc(3, 1, genesis_cert(), vec![prepared(0, 2, d("x")), prepared(0, 1, d("y"))]),
        ),
        (Counter::ViewChangeBadCheckpoint, vc(3, 1, CheckpointCert { seq: 4, state: d("s"), proof: vec![] }, vec![])),
        (Counter::ViewChangeBadCheckpoint, vc(3, 1, CheckpointCert { seq: 0, state: d("s"), proof: vec![] }, vec![])),
    ];
    for (i, (counter, bad)) in cases.iter().enumerate() {
        let mut p = two_of_quorum();
        let out = feed(&mut p, Message::ViewChange(bad.clone()));
        assert!(out.is_empty(), "case {i} produced {out:?}");
        let s = stats(&mut p);
        assert_eq!(s.get(*counter), 1, "case {i}: {counter}");
        assert_eq!((s.view, s.get(Counter::NewViewsSent)), (0, 0), "case {i}");
    }
    let mut p = two_of_quorum();
    for bad in [cases[0].1.clone(), cases[1].1.clone()] {
        assert!(feed(&mut p, Message::ViewChange(bad)).is_empty());
    }
    // An unknown sender.
    let unknown = sign(
        3,
        Confirmation,
        Purpose::ViewChange,
        ViewChange { view: 1, replica: ReplicaId(7), stable: genesis_cert(), prepared: vec![] },
    );
    assert!(feed(&mut p, Message::ViewChange(unknown)).is_empty());
    assert_eq!(stats(&mut p).get(Counter::ViewChangeUnknownReplica), 1);

    // The genuine ViewChange of replica 3 still completes the quorum.
    let out = feed(&mut p, Message::ViewChange(quorum[2].clone()));
    assert_eq!(new_views(&out).len(), 1);
    assert_eq!(stats(&mut p).view, 1);
}

/// SPEC §4.1 (6): a ViewChange is stored only for a view above the current one; at a
/// backup it is stored without building anything.
#[test]
fn view_changes_for_old_views_are_ignored_and_backups_build_no_new_view() {
    let mut backup = preparation(2);
    for v in quorum_view_1() {
        assert!(feed(&mut backup, Message::ViewChange(v)).is_empty());
    }
    let s = stats(&mut backup);
    assert_eq!((s.view, s.get(Counter::ViewChangesAccepted), s.get(Counter::NewViewsSent)), (0, 3, 0));
    // A ViewChange "for view 0" is never news.
    assert!(feed(&mut backup, Message::ViewChange(vc(1, 0, genesis_cert(), vec![]))).is_empty());
    assert_eq!(stats(&mut backup).get(Counter::ViewChangeOld), 1);
}

// ---------------------------------------------------------------- (7) at the backups

/// SPEC §4.1 (7), §9 P3: a backup that accepts a valid NewView enters the view and sends a
/// Prepare of the new view for every PrePrepare in `O` — including the re-proposed `a`
/// it had prepared in view 0 and the null batch — then prepares new PrePrepares of the
/// view normally, and no conflicting digest for a slot of `O`.
#[test]
fn a_backup_accepts_a_good_new_view_and_prepares_every_entry_of_o() {
    let mut p = preparation(2);
    assert_eq!(prepares(&feed(&mut p, bm(0, 1, "a"))).len(), 1);
    let out = feed(&mut p, Message::NewView(good_new_view_1()));
    assert_eq!(entered(&out), vec![1]);
    let expected: Vec<Prepare> = o_view_1().into_iter().map(|pp| prepare_of(2, pp)).collect();
    assert_eq!(prepares(&out), expected);
    let s = stats(&mut p);
    assert_eq!((s.view, s.get(Counter::ViewsEntered)), (1, 1));

    // New work in view 1 continues after O.
    assert_eq!(
        prepares(&feed(&mut p, bm(1, 4, "c"))),
        vec![Prepare { view: 1, seq: 4, digest: d("c"), replica: ReplicaId(2) }]
    );
    // The new primary cannot replace an entry of O (P1 in the new view).
    assert!(feed(&mut p, bm(1, 1, "evil")).is_empty());
    assert!(feed(&mut p, bm(1, 2, "evil")).is_empty());
    assert!(feed(&mut p, bm(1, 3, "b")).is_empty());
    let s = stats(&mut p);
    assert_eq!((s.get(Counter::PrePrepareConflicting), s.get(Counter::PrePrepareDuplicate)), (2, 1));
}

/// SPEC §4.1 (7): a NewView whose `O` differs from the one its ViewChanges imply — the
/// prepared digest swapped for another, an entry missing, an extra entry — is refused
/// (`new_view_wrong_o`): the backup stays in view 0 and sends nothing. The genuine
/// NewView is still accepted afterwards.
#[test]
fn a_backup_refuses_a_new_view_with_a_wrong_o() {
    let good = o_view_1();
    let mut swapped = good.clone();
    swapped[0].digest = d("another batch");
    let mut null_to_batch = good.clone();
    null_to_batch[1].digest = d("smuggled");
    let missing = vec![good[1], good[2]];
    let mut extra = good.clone();
    extra.push(PrePrepare { view: 1, seq: 4, digest: d("extra") });
    for (i, o) in [swapped, null_to_batch, missing, extra].iter().enumerate() {
        let mut q = preparation(3);
        let out = feed(&mut q, Message::NewView(new_view(1, quorum_view_1(), o)));
        assert!(out.is_empty(), "case {i}: {out:?}");
        let s = stats(&mut q);
        assert_eq!(s.get(Counter::NewViewWrongO), 1);
        assert_eq!(s.view, 0, "case {i}");
        // Primary 1 proved itself faulty for view 1 here: its NewViews for view 1 are
        // dropped after one signature check, even a good one (the view change moves on).
        assert!(feed(&mut q, Message::NewView(good_new_view_1())).is_empty());
        assert_eq!(stats(&mut q).get(Counter::NewViewSenderRefused), 1);
    }
    let mut p = preparation(3);
    // Still in view 0: a PrePrepare of view 0 is prepared, one of view 1 is not.
    assert_eq!(prepares(&feed(&mut p, bm(0, 5, "v0"))).len(), 1);
    assert!(feed(&mut p, bm(1, 5, "v1")).is_empty());
    // The genuine NewView.
    let out = feed(&mut p, Message::NewView(good_new_view_1()));
    assert_eq!(entered(&out), vec![1]);
    assert_eq!(prepares(&out).len(), 3);
}

/// SPEC §4.1 (7), §9 L1: NewViews with a forged signature, from a non-primary, without a
/// quorum, or with a refused ViewChange inside are counted and dropped.
#[test]
fn a_backup_refuses_forged_new_views() {
    let mut flipped = good_new_view_1();
    flipped.sig.0[33] ^= 0x01;
    let by_backup = sign(3, Prep, Purpose::NewView, good_new_view_1().body);
    let two = quorum_view_1()[..2].to_vec();
    let (_, o_two) = compute_o(1, &two);
    let mut incomplete = prepared(0, 1, d("a"));
    incomplete.prepares.truncate(1);
    let mut with_fake = quorum_view_1();
    with_fake[2] = vc(3, 1, genesis_cert(), vec![incomplete]);
    let (_, o_fake) = compute_o(1, &with_fake);
    let mut bad_pp = good_new_view_1();
    bad_pp.body.pre_prepares[0].sig.0[0] ^= 0x01;
    let bad_pp = sign(1, Prep, Purpose::NewView, bad_pp.body);
    let cases = [
        (Counter::NewViewBadSignature, flipped),
        (Counter::NewViewBadSignature, by_backup),
        (Counter::NewViewBadQuorum, new_view(1, two, &o_two)),
        (Counter::NewViewBadCertificate, new_view(1, with_fake, &o_fake)),
        (Counter::NewViewBadSignature, bad_pp),
    ];
    // A fresh enclave per case: a refused NewView signed by the primary makes later ones
    // it signs for that view cost one signature check only (see the resend test below).
    for (i, (counter, nv)) in cases.into_iter().enumerate() {
        let mut p = preparation(2);
        assert!(feed(&mut p, Message::NewView(nv)).is_empty(), "case {i}");
        assert_eq!(stats(&mut p).get(counter), 1, "case {i}: {counter}");
        assert_eq!(stats(&mut p).view, 0);
    }
}

/// SPEC §4.1 (7): NewViews for the current or an older view are ignored; after entering
/// view 1, PrePrepares of view 0 are refused (P3: nothing more is prepared in view 0).
#[test]
fn old_new_views_and_old_pre_prepares_are_ignored_after_entering_a_view() {
    let mut p = preparation(3);
    feed(&mut p, Message::NewView(good_new_view_1()));
    assert_eq!(stats(&mut p).view, 1);
    // The same NewView again (a replay), and one "for view 0".
    assert!(feed(&mut p, Message::NewView(good_new_view_1())).is_empty());
    let view_0 = new_view(0, (1..4).map(|r| vc(r, 0, genesis_cert(), vec![])).collect(), &[]);
    assert!(feed(&mut p, Message::NewView(view_0)).is_empty());
    assert_eq!(stats(&mut p).get(Counter::NewViewOld), 2);
    // ViewChanges for view 1 are now old.
    assert!(feed(&mut p, Message::ViewChange(vc(0, 1, genesis_cert(), vec![]))).is_empty());
    assert_eq!(stats(&mut p).get(Counter::ViewChangeOld), 1);

    // The old primary keeps sending PrePrepares of view 0, directly or with a batch.
    assert!(feed(&mut p, bm(0, 4, "late")).is_empty());
    let batch = BatchMsg { pre_prepare: pp(0, 5, d("later")), batch: Vec::new() };
    assert!(feed(&mut p, Message::Batch(batch)).is_empty());
    let s = stats(&mut p);
    assert_eq!((s.get(Counter::PrePrepareWrongView), s.view), (2, 1));

    // A NewView for view 2 moves it on; then view 1's is old.
    let vcs2: Vec<_> = [0, 1, 3].iter().map(|r| vc(*r, 2, genesis_cert(), vec![prepared(1, 1, d("a"))])).collect();
    let (_, o2) = compute_o(2, &vcs2);
    let out = feed(&mut p, Message::NewView(new_view(2, vcs2, &o2)));
    assert_eq!(entered(&out), vec![2]);
    assert_eq!(prepares(&out), vec![prepare_of(3, PrePrepare { view: 2, seq: 1, digest: d("a") })]);
    assert!(feed(&mut p, Message::NewView(good_new_view_1())).is_empty());
    assert!(feed(&mut p, bm(1, 4, "c")).is_empty());
    let s = stats(&mut p);
    assert_eq!((s.view, s.get(Counter::NewViewOld), s.get(Counter::PrePrepareWrongView)), (2, 3, 3));
}

/// SPEC §4.4 (7'): a backup adopts the NewView's checkpoint: its low watermark moves and
/// only entries of `O` above it are prepared.
#[test]
fn a_backup_adopts_the_new_views_checkpoint() {
    let mut p = preparation(3);
    let vcs = vec![
        vc(0, 1, checkpoint_cert(4, d("state 4")), vec![prepared(0, 6, d("six"))]),
        vc(2, 1, genesis_cert(), vec![prepared(0, 3, d("three"))]),
        vc(3, 1, genesis_cert(), vec![]),
    ];
    let (_, o) = compute_o(1, &vcs);
    let out = feed(&mut p, Message::NewView(new_view(1, vcs, &o)));
    assert!(out.contains(&Output::Event(Event::Stable { seq: 4 })), "{out:?}");
    assert_eq!(
        prepares(&out).iter().map(|p| (p.seq, p.digest)).collect::<Vec<_>>(),
        vec![(5, null_digest()), (6, d("six"))]
    );
    let s = stats(&mut p);
    assert_eq!((s.view, s.low_watermark), (1, 4));
    assert!(feed(&mut p, bm(1, 4, "at h")).is_empty());
    assert_eq!(stats(&mut p).get(Counter::PrePrepareOutsideWindow), 1);
}

/// Issue 11 finding (7), SPEC §4 (bounded work): a faulty Confirmation sends ViewChanges for
/// ever higher views, each carrying certificates that cost `O(L·(2f+1))` verifications (here
/// a broken one). On 106ccbb every Preparation checked each in full on receipt; now a
/// ViewChange costs one signature check on receipt, and its certificates are checked once,
/// only when a quorum for its view is there at that view's primary.
#[test]
fn a_flood_of_view_changes_for_ever_higher_views_costs_one_check_each() {
    let mut p = preparation(1);
    let mut incomplete = prepared(0, 1, d("a"));
    incomplete.prepares.truncate(1);
    for view in 2..=101 {
        assert!(feed(&mut p, Message::ViewChange(vc(3, view, genesis_cert(), vec![incomplete.clone()]))).is_empty());
    }
    let s = stats(&mut p);
    assert_eq!(s.get(Counter::ViewChangesAccepted), 100);
    assert_eq!((s.get(Counter::ViewChangeFullChecks), s.get(Counter::ViewChangeBadCertificate)), (0, 0));
    // Replica 3 floods view 5 (primary 1) too, with two genuine ViewChanges beside it: the
    // quorum triggers the full check, which refuses replica 3's, once; its later ones for
    // views up to 5 are dropped unread.
    let mut p = preparation(1);
    feed(&mut p, Message::ViewChange(vc(0, 5, genesis_cert(), vec![])));
    feed(&mut p, Message::ViewChange(vc(2, 5, genesis_cert(), vec![])));
    assert!(feed(&mut p, Message::ViewChange(vc(3, 5, genesis_cert(), vec![incomplete.clone()]))).is_empty());
    for view in 3..=5 {
        feed(&mut p, Message::ViewChange(vc(3, view, genesis_cert(), vec![incomplete.clone()])));
    }
    let s = stats(&mut p);
    assert_eq!((s.get(Counter::ViewChangeFullChecks), s.get(Counter::ViewChangeBadCertificate)), (3, 1));
    assert_eq!(s.get(Counter::ViewChangeSenderRefused), 3);
    // The genuine quorum still moves the view: replica 1's own ViewChange completes it.
    let out = feed(&mut p, Message::ViewChange(vc(1, 5, genesis_cert(), vec![])));
    assert_eq!(new_views(&out).len(), 1);
    assert_eq!(stats(&mut p).view, 5);
}

/// Issue 11 finding (7), bounded work at the backups: a faulty new primary that resends a
/// NewView whose checks fail costs each Preparation one full check, not one per copy; a
/// correct later primary's NewView is still accepted.
#[test]
fn a_faulty_primary_resending_a_bad_new_view_costs_one_full_check() {
    let mut p = preparation(3);
    let mut quorum = quorum_view_1();
    let mut incomplete = prepared(0, 1, d("a"));
    incomplete.prepares.truncate(1);
    quorum[2] = vc(3, 1, genesis_cert(), vec![incomplete]);
    let bad = new_view(1, quorum, &o_view_1());
    for _ in 0..5 {
        assert!(feed(&mut p, Message::NewView(bad.clone())).is_empty());
    }
    let s = stats(&mut p);
    assert_eq!((s.get(Counter::NewViewBadCertificate), s.get(Counter::NewViewSenderRefused)), (1, 4));
    // A forged signature never counts against the primary it names.
    let mut forged = good_new_view_1();
    forged.sig.0[0] ^= 1;
    let mut q = preparation(3);
    assert!(feed(&mut q, Message::NewView(forged)).is_empty());
    assert_eq!(entered(&feed(&mut q, Message::NewView(good_new_view_1()))), vec![1]);
    // View 2's primary is another replica: its good NewView is accepted by `p`.
    let vcs2: Vec<_> = [0, 1, 3].iter().map(|r| vc(*r, 2, genesis_cert(), vec![])).collect();
    let (_, o2) = compute_o(2, &vcs2);
    assert_eq!(entered(&feed(&mut p, Message::NewView(new_view(2, vcs2, &o2)))), vec![2]);
}
