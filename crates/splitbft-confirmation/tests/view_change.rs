//! The Confirmation compartment in a view change (SPEC §4.2 (5) (7'), §4.4, §9 C4/C5):
//! on `Suspect(v)` it moves to `v + 1`, stops committing in older views (C4) and signs a
//! ViewChange carrying its stable checkpoint certificate and exactly the prepare
//! certificates it holds above it (C5); on a NewView signed by the new primary's
//! Preparation enclave with valid ViewChanges it enters the view — without recomputing
//! `O` (paper §4) — and commits an entry of `O` once `2f` Prepares of the new view arrive.
//!
//! Fixture: 4 replicas (f = 1), K = 4, L = 8; primary(0) = 0, primary(1) = 1.

#![allow(clippy::unwrap_used, reason = "test helpers: a failed setup step aborts the test")]

use splitbft_testkit::cluster::Fixture;
use std::sync::OnceLock;

use serde::Serialize;
use splitbft_confirmation::Confirmation;
use splitbft_types::boundary::{Compartment, Event, Input, Output, Stats};
use splitbft_types::cert::verify_signed;
use splitbft_types::counters::Counter;
use splitbft_types::crypto::{Purpose, SecretKey};
use splitbft_types::msg::{
    Checkpoint, CheckpointCert, Commit, Digest, Message, NewView, PrePrepare, Prepare, PreparedCert, Signed, ViewChange,
};
use splitbft_types::viewchange::{Depth, check_view_change, compute_o, null_digest};
use splitbft_types::{CompartmentKind, ReplicaId, Seq, View};

use CompartmentKind::{Confirmation as Conf, Execution, Preparation};

const K: u64 = 4;
const L: u64 = 8;

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        Fixture::new(17, 1, 1, 91, |c| {
            c.checkpoint_interval = K;
            c.log_window = L;
        })
    })
}

/// The initial state digest: Confirmation only compares it with seq-0 checkpoint
/// certificates, so any fixed digest stands for `Execution::genesis_digest`.
fn genesis() -> Digest {
    Digest::of(b"genesis state")
}

fn d(tag: &str) -> Digest {
    Digest::of(tag.as_bytes())
}

fn confirmation(me: u32) -> Confirmation {
    let s = &fixture().secrets;
    let secret = SecretKey::from_seed(s.enclave(ReplicaId(me), Conf).seed());
    Confirmation::new(s.config.clone(), ReplicaId(me), secret, genesis()).unwrap()
}

fn sign<T: Serialize>(r: u32, kind: CompartmentKind, purpose: Purpose, body: T) -> Signed<T> {
    fixture().sign(r, kind, purpose, body)
}

fn primary(view: View) -> u32 {
    fixture().secrets.config.primary(view).0
}

fn signed_pp(view: View, seq: Seq, digest: Digest) -> Signed<PrePrepare> {
    sign(primary(view), Preparation, Purpose::PrePrepare, PrePrepare { view, seq, digest })
}

fn signed_prepare(r: u32, view: View, seq: Seq, digest: Digest) -> Signed<Prepare> {
    sign(r, Preparation, Purpose::Prepare, Prepare { view, seq, digest, replica: ReplicaId(r) })
}

fn pp(view: View, seq: Seq, digest: Digest) -> Message {
    Message::PrePrepare(signed_pp(view, seq, digest))
}

fn prepare(r: u32, view: View, seq: Seq, digest: Digest) -> Message {
    Message::Prepare(signed_prepare(r, view, seq, digest))
}

fn checkpoint(r: u32, seq: Seq, state: Digest) -> Signed<Checkpoint> {
    sign(r, Execution, Purpose::Checkpoint, Checkpoint { seq, state, replica: ReplicaId(r) })
}

fn genesis_cert() -> CheckpointCert {
    CheckpointCert { seq: 0, state: genesis(), proof: Vec::new() }
}

/// A real prepare certificate (the primary's PrePrepare, `2f` backups' Prepares).
fn prepared(view: View, seq: Seq, digest: Digest) -> PreparedCert {
    let backups = (0..4).filter(|r| *r != primary(view)).take(2);
    PreparedCert {
        pre_prepare: signed_pp(view, seq, digest),
        prepares: backups.map(|r| signed_prepare(r, view, seq, digest)).collect(),
    }
}

fn vc(r: u32, view: View, stable: CheckpointCert, prepared: Vec<PreparedCert>) -> Signed<ViewChange> {
    sign(r, Conf, Purpose::ViewChange, ViewChange { view, replica: ReplicaId(r), stable, prepared })
}

/// A NewView signed by Preparation(primary(view)) carrying `o`.
fn new_view(view: View, view_changes: Vec<Signed<ViewChange>>, o: &[PrePrepare]) -> Signed<NewView> {
    let p = primary(view);
    let pre_prepares = o.iter().map(|body| sign(p, Preparation, Purpose::PrePrepare, *body)).collect();
    sign(p, Preparation, Purpose::NewView, NewView { view, view_changes, pre_prepares })
}

/// The NewView for view 1 after `a` was prepared at 1 in view 0: `O = [a]`.
fn new_view_1_with_a() -> Signed<NewView> {
    let vcs = vec![
        vc(0, 1, genesis_cert(), vec![prepared(0, 1, d("a"))]),
        vc(2, 1, genesis_cert(), vec![]),
        vc(3, 1, genesis_cert(), vec![]),
    ];
    let (_, o) = compute_o(1, &vcs);
    assert_eq!(o, vec![PrePrepare { view: 1, seq: 1, digest: d("a") }]);
    new_view(1, vcs, &o)
}

fn run(c: &mut Confirmation, input: Input) -> Vec<Output> {
    let mut out = Vec::new();
    c.handle(input, &mut out);
    out
}

fn feed(c: &mut Confirmation, msg: Message) -> Vec<Output> {
    run(c, Input::Message(msg))
}

fn feed_all(c: &mut Confirmation, msgs: impl IntoIterator<Item = Message>) -> Vec<Output> {
    msgs.into_iter().flat_map(|m| feed(c, m)).collect()
}

/// Commits among `out`, each checked to verify under the sender's Confirmation key.
fn commits(out: &[Output]) -> Vec<Commit> {
    let f = fixture();
    out.iter()
        .filter_map(|o| match o {
            Output::Send(Message::Commit(c)) => {
                assert_eq!(verify_signed(&f.secrets.config, &f.keys, c), Ok(c.body.replica));
                Some(c.body)
            }
            _ => None,
        })
        .collect()
}

fn view_changes(out: &[Output]) -> Vec<Signed<ViewChange>> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(Message::ViewChange(v)) => Some(v.clone()),
            _ => None,
        })
        .collect()
}

fn stats(c: &mut Confirmation) -> Stats {
    match run(c, Input::QueryStats).pop() {
        Some(Output::Stats(s)) => s,
        other => panic!("no stats: {other:?}"),
    }
}

/// Feeds the PrePrepare and the Prepares of replicas other than the primary and `me`
/// for `(view, seq, digest)`; returns the outputs.
fn certify(c: &mut Confirmation, me: u32, view: View, seq: Seq, digest: Digest) -> Vec<Output> {
    let voters: Vec<u32> = (0..4).filter(|r| *r != primary(view) && *r != me).take(2).collect();
    let mut out = feed(c, pp(view, seq, digest));
    out.extend(feed_all(c, voters.iter().map(|r| prepare(*r, view, seq, digest))));
    out
}

fn check_vc_full(v: &Signed<ViewChange>) {
    let f = fixture();
    assert_eq!(
        check_view_change(&f.secrets.config, &f.keys, v, genesis(), Depth::Full),
        Ok(v.body.replica),
        "a correct Confirmation's ViewChange must pass Preparation's full check (C5)"
    );
}

// ---------------------------------------------------------------- (5) Suspect, C4

/// SPEC §4.2 (5), §9 C4: after `Suspect(0)` the enclave sends a ViewChange for view 1 and
/// announces it; from then on no Commit of view 0 is sent, even when the rest of a view-0
/// prepare certificate arrives, or a whole new one.
#[test]
fn after_suspect_no_commit_is_sent_for_the_old_view() {
    let mut c = confirmation(2);
    // Half a certificate for `a` at 1 before the suspicion.
    assert!(commits(&feed_all(&mut c, [pp(0, 1, d("a")), prepare(1, 0, 1, d("a"))])).is_empty());
    let out = run(&mut c, Input::Suspect(0));
    let vcs = view_changes(&out);
    assert_eq!(vcs.len(), 1);
    assert_eq!((vcs[0].body.view, vcs[0].body.replica), (1, ReplicaId(2)));
    assert!(vcs[0].body.prepared.is_empty(), "nothing was prepared");
    assert!(out.contains(&Output::Event(Event::ViewChangeStarted { view: 1 })));
    check_vc_full(&vcs[0]);
    // The certificate completes afterwards: no Commit.
    assert!(commits(&feed(&mut c, prepare(3, 0, 1, d("a")))).is_empty());
    // A whole view-0 certificate for another slot: no Commit either.
    assert!(commits(&certify(&mut c, 2, 0, 2, d("b"))).is_empty());
    let s = stats(&mut c);
    assert_eq!(s.get(Counter::CommitsSent), 0);
    assert_eq!(s.view, 1);
    assert_eq!(s.get(Counter::ViewChangesSent), 1);
    assert_eq!((s.get(Counter::PrepareWrongView), s.get(Counter::PrePrepareWrongView)), (3, 1));
    // Nor once more Prepares of view 0 are replayed.
    assert!(commits(&feed_all(&mut c, (0..4).map(|r| prepare(r, 0, 1, d("a"))))).is_empty());
    assert_eq!(stats(&mut c).get(Counter::CommitsSent), 0);
}

/// SPEC §4.2 (5), §9 C5: the ViewChange carries the stable checkpoint certificate and
/// exactly the prepare certificates held above it — not the ones garbage-collected below
/// the checkpoint, not the incomplete ones — and passes Preparation's full check.
#[test]
fn the_view_change_carries_the_stable_checkpoint_and_the_prepared_certificates_above_it() {
    let mut c = confirmation(3);
    let digest = |s: Seq| d(&format!("batch {s}"));
    for s in 1..=6 {
        assert_eq!(commits(&certify(&mut c, 3, 0, s, digest(s))).len(), 1, "seq {s}");
    }
    // Seq 7: PrePrepare and one Prepare only. Seq 8: Prepares without the PrePrepare.
    feed_all(&mut c, [pp(0, 7, digest(7)), prepare(1, 0, 7, digest(7))]);
    feed_all(&mut c, [prepare(1, 0, 8, digest(8)), prepare(2, 0, 8, digest(8))]);
    // Checkpoint certificate for 4 (Execution enclaves 0, 1, 3).
    let state = d("state after 4");
    let mut out = Vec::new();
    for r in [0, 1, 3] {
        out.extend(feed(&mut c, Message::Checkpoint(checkpoint(r, 4, state))));
    }
    assert!(out.contains(&Output::Event(Event::Stable { seq: 4 })));

    let vcs = view_changes(&run(&mut c, Input::Suspect(0)));
    assert_eq!(vcs.len(), 1);
    let body = &vcs[0].body;
    assert_eq!((body.view, body.replica), (1, ReplicaId(3)));
    assert_eq!((body.stable.seq, body.stable.state), (4, state));
    assert_eq!(body.stable.proof.len(), 3);
    let held: Vec<(View, Seq, Digest)> = body
        .prepared
        .iter()
        .map(|p| (p.pre_prepare.body.view, p.pre_prepare.body.seq, p.pre_prepare.body.digest))
        .collect();
    assert_eq!(held, vec![(0, 5, digest(5)), (0, 6, digest(6))]);
    for cert in &body.prepared {
        assert_eq!(cert.pre_prepare, signed_pp(0, cert.pre_prepare.body.seq, cert.pre_prepare.body.digest));
        assert_eq!(cert.prepares.len(), 2);
    }
    check_vc_full(&vcs[0]);
}

/// SPEC §4.2 (5): repeated suspicion moves on to `v + 2`, each time with a fresh
/// ViewChange; a suspicion of a view already left is ignored.
#[test]
fn repeated_suspicion_moves_to_the_next_view_and_stale_suspicion_is_ignored() {
    let mut c = confirmation(1);
    assert_eq!(commits(&certify(&mut c, 1, 0, 1, d("a"))).len(), 1);
    let first = view_changes(&run(&mut c, Input::Suspect(0)));
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].body.view, 1);
    // Again for view 0 (a second timer, or f + 1 ViewChanges for view 1): already there.
    assert!(run(&mut c, Input::Suspect(0)).is_empty());
    assert_eq!(stats(&mut c).get(Counter::SuspectStale), 1);
    // The new primary does not deliver either: view 2.
    let out = run(&mut c, Input::Suspect(1));
    let second = view_changes(&out);
    assert_eq!(second.len(), 1);
    assert!(out.contains(&Output::Event(Event::ViewChangeStarted { view: 2 })));
    assert_eq!(second[0].body.view, 2);
    // Still reports what was prepared in view 0.
    assert_eq!(second[0].body.prepared, first[0].body.prepared);
    assert_eq!(second[0].body.prepared.len(), 1);
    check_vc_full(&second[0]);
    for stale in [0, 1] {
        assert!(run(&mut c, Input::Suspect(stale)).is_empty(), "Suspect({stale})");
    }
    let s = stats(&mut c);
    assert_eq!((s.view, s.get(Counter::ViewChangesSent), s.get(Counter::SuspectStale)), (2, 2, 3));
    // Jumping further: Suspect(5) moves to view 6.
    assert_eq!(view_changes(&run(&mut c, Input::Suspect(5)))[0].body.view, 6);
    // A NewView for view 1 is now old.
    assert!(feed(&mut c, Message::NewView(new_view_1_with_a())).is_empty());
    assert_eq!(stats(&mut c).get(Counter::NewViewOld), 1);
}

// ---------------------------------------------------------------- (7') NewView

/// SPEC §4.2 (7'): on a valid NewView the enclave enters the view; the PrePrepares of `O`
/// count as PrePrepares of the new view, so an entry of `O` commits once `2f` Prepares of
/// the new view arrive — whether they come after the NewView or before it.
#[test]
fn on_a_valid_new_view_it_enters_and_commits_entries_of_o_with_2f_prepares() {
    let mut c = confirmation(2);
    // `a` prepared and committed at 1 in view 0, then the view change.
    assert_eq!(commits(&certify(&mut c, 2, 0, 1, d("a"))).len(), 1);
    run(&mut c, Input::Suspect(0));
    let vcs = vec![
        vc(0, 1, genesis_cert(), vec![prepared(0, 1, d("a"))]),
        vc(2, 1, genesis_cert(), vec![prepared(0, 1, d("a"))]),
        vc(3, 1, genesis_cert(), vec![prepared(0, 3, d("c"))]),
    ];
    let (_, o) = compute_o(1, &vcs);
    assert_eq!(o.len(), 3);
    // Prepares for the null entry at 2 arrive before the NewView (from replicas 0 and 3
    // that entered view 1 first), with the primary's PrePrepare sent directly: stored, not
    // committed before the view is entered (C4).
    let early = [pp(1, 2, null_digest()), prepare(0, 1, 2, null_digest()), prepare(3, 1, 2, null_digest())];
    assert!(commits(&feed_all(&mut c, early)).is_empty());
    assert_eq!(stats(&mut c).get(Counter::CommitsSent), 1);

    let out = feed(&mut c, Message::NewView(new_view(1, vcs, &o)));
    assert!(out.contains(&Output::Event(Event::ViewEntered { view: 1 })), "{out:?}");
    // The early Prepares complete the null entry at once.
    assert_eq!(commits(&out), vec![Commit { view: 1, seq: 2, digest: null_digest(), replica: ReplicaId(2) }]);
    let s = stats(&mut c);
    assert_eq!((s.view, s.get(Counter::ViewsEntered)), (1, 1));

    // `a` at 1: one Prepare of view 1 is not enough, the second commits.
    assert!(commits(&feed(&mut c, prepare(0, 1, 1, d("a")))).is_empty());
    assert_eq!(
        commits(&feed(&mut c, prepare(3, 1, 1, d("a")))),
        vec![Commit { view: 1, seq: 1, digest: d("a"), replica: ReplicaId(2) }]
    );
    // View-0 Prepares never help in view 1.
    assert!(commits(&feed_all(&mut c, [prepare(1, 0, 3, d("c")), prepare(3, 0, 3, d("c"))])).is_empty());
    // `c` at 3 with Prepares of view 1 (the primary's own "Prepare" does not count).
    assert!(commits(&feed_all(&mut c, [prepare(1, 1, 3, d("c")), prepare(0, 1, 3, d("c"))])).is_empty());
    assert_eq!(commits(&feed(&mut c, prepare(3, 1, 3, d("c")))).len(), 1);
    // New PrePrepares of view 1 commit normally.
    assert_eq!(commits(&certify(&mut c, 2, 1, 4, d("d"))).len(), 1);
    assert_eq!(stats(&mut c).get(Counter::CommitsSent), 5);

    // The next ViewChange reports the view-1 certificates, not the view-0 one for `a`.
    let next = view_changes(&run(&mut c, Input::Suspect(1)));
    let held: Vec<(View, Seq)> =
        next[0].body.prepared.iter().map(|p| (p.pre_prepare.body.view, p.pre_prepare.body.seq)).collect();
    assert_eq!(held, vec![(1, 1), (1, 2), (1, 3), (1, 4)]);
    check_vc_full(&next[0]);
}

/// SPEC §4.2 (7'), §4.4: the NewView's checkpoint is adopted; entries of `O` at or below
/// it are ignored.
#[test]
fn a_new_view_moves_the_low_watermark_to_its_checkpoint() {
    let mut c = confirmation(3);
    run(&mut c, Input::Suspect(0));
    let state = d("state 4");
    let stable = CheckpointCert { seq: 4, state, proof: (0..3).map(|r| checkpoint(r, 4, state)).collect() };
    let vcs = vec![
        vc(0, 1, stable, vec![prepared(0, 5, d("five"))]),
        vc(2, 1, genesis_cert(), vec![]),
        vc(3, 1, genesis_cert(), vec![]),
    ];
    let (_, o) = compute_o(1, &vcs);
    let out = feed(&mut c, Message::NewView(new_view(1, vcs, &o)));
    assert!(out.contains(&Output::Event(Event::Stable { seq: 4 })));
    let s = stats(&mut c);
    assert_eq!((s.view, s.low_watermark), (1, 4));
    assert_eq!(commits(&feed_all(&mut c, [prepare(0, 1, 5, d("five")), prepare(2, 1, 5, d("five"))])).len(), 1);
    let vcs = view_changes(&run(&mut c, Input::Suspect(1)));
    assert_eq!(vcs[0].body.stable.seq, 4);
    check_vc_full(&vcs[0]);
}

/// SPEC §4.2 (7'), §9 L1: a NewView with a forged signature, or not from the new primary,
/// or without a valid quorum, is refused: the enclave stays between views and commits
/// nothing, even with Prepares of the new view.
#[test]
fn a_forged_new_view_is_refused() {
    let mut c = confirmation(2);
    run(&mut c, Input::Suspect(0));
    let mut flipped = new_view_1_with_a();
    flipped.sig.0[12] ^= 0x01;
    let by_backup = sign(3, Preparation, Purpose::NewView, new_view_1_with_a().body);
    let by_confirmation = sign(1, Conf, Purpose::NewView, new_view_1_with_a().body);
    let mut no_quorum = new_view_1_with_a().body;
    no_quorum.view_changes.pop();
    let no_quorum = sign(1, Preparation, Purpose::NewView, no_quorum);
    let mut forged_vc = new_view_1_with_a().body;
    forged_vc.view_changes[1].sig.0[0] ^= 0x01;
    let forged_vc = sign(1, Preparation, Purpose::NewView, forged_vc);
    let cases = [
        (Counter::NewViewBadSignature, flipped),
        (Counter::NewViewBadSignature, by_backup),
        (Counter::NewViewBadSignature, by_confirmation),
        (Counter::NewViewBadQuorum, no_quorum),
        (Counter::NewViewBadSignature, forged_vc),
    ];
    for (i, (counter, nv)) in cases.into_iter().enumerate() {
        let before = stats(&mut c).get(counter);
        assert!(feed(&mut c, Message::NewView(nv)).is_empty(), "case {i}");
        assert_eq!(stats(&mut c).get(counter), before + 1, "case {i}: {counter}");
    }
    // A PrePrepare of view 1 sent directly by the new primary and the Prepares of view 1
    // for `a` at 1: a whole certificate of view 1, but the view is not entered — no Commit
    // between the ViewChange and an accepted NewView (C4).
    let early = [pp(1, 1, d("a")), prepare(0, 1, 1, d("a")), prepare(3, 1, 1, d("a"))];
    assert!(commits(&feed_all(&mut c, early)).is_empty());
    let s = stats(&mut c);
    assert_eq!((s.get(Counter::ViewsEntered), s.get(Counter::CommitsSent)), (0, 0));
    // The genuine NewView then commits at once.
    let out = feed(&mut c, Message::NewView(new_view_1_with_a()));
    assert_eq!(commits(&out), vec![Commit { view: 1, seq: 1, digest: d("a"), replica: ReplicaId(2) }]);
    // A replay of it is old.
    assert!(feed(&mut c, Message::NewView(new_view_1_with_a())).is_empty());
    assert_eq!(stats(&mut c).get(Counter::NewViewOld), 1);
}

/// Paper §4, SPEC §4.2 (7'): Confirmation does not recompute `O`, so it enters a view whose
/// NewView carries a false `O` — but it commits the false digest only with `2f` Prepares,
/// which correct Preparation enclaves (that do check `O`) never send.
#[test]
fn a_new_view_with_a_wrong_o_is_entered_but_nothing_commits_without_prepares() {
    let mut c = confirmation(3);
    run(&mut c, Input::Suspect(0));
    let good = new_view_1_with_a();
    let false_o = [PrePrepare { view: 1, seq: 1, digest: d("false") }];
    let nv = new_view(1, good.body.view_changes.clone(), &false_o);
    let out = feed(&mut c, Message::NewView(nv));
    assert!(out.contains(&Output::Event(Event::ViewEntered { view: 1 })));
    assert!(commits(&out).is_empty());
    // Only the Byzantine primary's own Prepare: no certificate.
    assert!(commits(&feed(&mut c, prepare(1, 1, 1, d("false")))).is_empty());
    let s = stats(&mut c);
    assert_eq!((s.view, s.get(Counter::CommitsSent), s.get(Counter::PrepareFromPrimary)), (1, 0, 1));
}

/// The sealed records among `out`, and those the end of the crossing seals (SPEC §10).
fn sealed(c: &mut Confirmation, mut out: Vec<Output>) -> Vec<splitbft_types::durable::SealedState> {
    c.after_crossing(&mut out);
    out.iter()
        .filter_map(|o| match o {
            Output::Sealed(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

/// SPEC §10: a Confirmation restarted from its sealed state in the middle of a view change
/// tells its environment (which restarted with it, knowing nothing) the view it asked for
/// and sends the very ViewChange it signed before, byte for byte: its peers may have lost
/// theirs too (a whole-cluster restart), and a new signature would be a second message.
/// Once the view is entered, a restart resends nothing. (Simulator, `power-failure` n = 4
/// seed 5: without this every restarted broker believed in view 0 and nothing moved.)
#[test]
fn a_restart_in_the_middle_of_a_view_change_sends_the_same_view_change_again() {
    let s = &fixture().secrets;
    let me = ReplicaId(2);
    // What the environment hands back: the latest image and the deltas after it.
    let restore = |records: &[splitbft_types::durable::SealedState], counter: u64| {
        let image = records.iter().rposition(|r| r.kind == splitbft_types::durable::RecordKind::Image).unwrap();
        let secret = SecretKey::from_seed(s.enclave(me, Conf).seed());
        Confirmation::restore(s.config.clone(), me, secret, genesis(), &records[image..], counter).unwrap()
    };
    let mut c = confirmation(2);
    c.enable_durability(0);
    let certified = certify(&mut c, 2, 0, 1, d("a"));
    let mut records = sealed(&mut c, certified);
    let out = run(&mut c, Input::Suspect(0));
    records.extend(sealed(&mut c, out.clone()));
    let sent = view_changes(&out);
    assert_eq!(sent.len(), 1);
    let counter = records.last().unwrap().index + 1;

    let restored = restore(&records, counter);
    let told = restored.resumed();
    assert_eq!(
        told,
        vec![
            Output::Send(Message::ViewChange(sent[0].clone())),
            Output::Event(Event::Resumed { view: 1, entered: false, low: 0 })
        ]
    );
    assert_eq!(view_changes(&told)[0].body.prepared.len(), 1, "it carries the certificate it had");

    // Entered: a restart now reports the view and resends nothing.
    let mut c = restore(&records, counter);
    let entered = feed(&mut c, Message::NewView(new_view_1_with_a()));
    records.extend(sealed(&mut c, entered));
    let counter = records.last().unwrap().index + 1;
    assert_eq!(
        restore(&records, counter).resumed(),
        vec![Output::Event(Event::Resumed { view: 1, entered: true, low: 0 })]
    );
}

/// An image sealed before images carried the pending ViewChange (the same fields, without
/// the last one) still restores: a data directory of the previous version keeps working,
/// and its restart in the middle of a view change reports the view without resending.
#[test]
fn an_image_of_the_previous_format_still_restores() {
    use splitbft_types::durable::{RecordKind, StateSealer};
    let s = &fixture().secrets;
    let me = ReplicaId(2);
    let secret = SecretKey::from_seed(s.enclave(me, Conf).seed());
    let enclave = splitbft_types::EnclaveId { replica: me, kind: Conf };
    let mut sealer = StateSealer::new(&secret, s.config.cluster_id, enclave, 0);
    // (view, active, stable, prepared, fence): the previous `Image`, field by field.
    let old = (1u64, false, genesis_cert(), Vec::<PreparedCert>::new(), None::<Option<Seq>>);
    let record = sealer.seal(RecordKind::Image, &splitbft_types::codec::to_bytes(&old));
    let counter = record.index + 1;
    let c = Confirmation::restore(s.config.clone(), me, secret, genesis(), &[record], counter).unwrap();
    assert_eq!(c.resumed(), vec![Output::Event(Event::Resumed { view: 1, entered: false, low: 0 })]);
}
