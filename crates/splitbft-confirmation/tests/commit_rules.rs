//! The Confirmation compartment (SPEC §4.2 handler (3), §9 C1/C2/L1): it signs one Commit
//! for `(v, s)` exactly when it holds a prepare certificate — the PrePrepare of
//! Preparation(primary(v)) plus `2f` Prepares with the same `(v, s, d)` from distinct
//! Preparation enclaves other than the primary's (SPEC §3) — and never otherwise.

#![allow(clippy::unwrap_used, reason = "test helpers: a failed setup step aborts the test")]

use bytes::Bytes;
use serde::Serialize;
use splitbft_confirmation::Confirmation;
use splitbft_testkit::cluster::Fixture;
use splitbft_types::boundary::{Compartment, Input, Output, Stats};
use splitbft_types::cert::verify_signed;
use splitbft_types::counters::Counter;
use splitbft_types::crypto::Purpose;
use splitbft_types::msg::{BatchMsg, Commit, Digest, Message, PrePrepare, Prepare, Signed};
use splitbft_types::{CompartmentKind, ReplicaId, Seq, View};

use CompartmentKind::Preparation;

const K: u64 = 4;
const L: u64 = 8;

struct Harness {
    fx: Fixture,
    conf: Confirmation,
}

impl Harness {
    /// The Confirmation enclave of replica `me` in a 4-replica cluster with K = 4, L = 8.
    fn new(me: u32) -> Harness {
        let fx = Fixture::new(3, 1, 1, 17, |c| {
            c.checkpoint_interval = K;
            c.log_window = L;
        });
        let secret = fx.secret(me, CompartmentKind::Confirmation);
        // Confirmation never compares the genesis state digest with anything.
        let conf = Confirmation::new(fx.secrets.config.clone(), ReplicaId(me), secret, Digest::of(b"genesis")).unwrap();
        Harness { fx, conf }
    }

    fn sign<T: Serialize>(&self, r: u32, kind: CompartmentKind, purpose: Purpose, body: T) -> Signed<T> {
        self.fx.sign(r, kind, purpose, body)
    }

    fn pp(&self, view: View, seq: Seq, digest: Digest) -> Message {
        let primary = self.fx.secrets.config.primary(view).0;
        Message::PrePrepare(self.sign(primary, Preparation, Purpose::PrePrepare, PrePrepare { view, seq, digest }))
    }

    fn prepare(&self, r: u32, view: View, seq: Seq, digest: Digest) -> Message {
        Message::Prepare(self.sign(
            r,
            Preparation,
            Purpose::Prepare,
            Prepare { view, seq, digest, replica: ReplicaId(r) },
        ))
    }

    /// Feeds one message; returns the Commits it produced (checking their signatures).
    fn feed(&mut self, msg: Message) -> Vec<Commit> {
        let mut out = Vec::new();
        self.conf.handle(Input::Message(msg), &mut out);
        out.into_iter()
            .filter_map(|o| match o {
                Output::Send(Message::Commit(c)) => {
                    assert_eq!(verify_signed(&self.fx.secrets.config, &self.fx.keys, &c), Ok(c.body.replica));
                    Some(c.body)
                }
                _ => None,
            })
            .collect()
    }

    fn feed_all(&mut self, msgs: impl IntoIterator<Item = Message>) -> Vec<Commit> {
        msgs.into_iter().flat_map(|m| self.feed(m)).collect()
    }

    fn stats(&mut self) -> Stats {
        let mut out = Vec::new();
        self.conf.handle(Input::QueryStats, &mut out);
        match out.pop() {
            Some(Output::Stats(s)) => s,
            other => panic!("no stats: {other:?}"),
        }
    }

    fn counter(&mut self, counter: Counter) -> u64 {
        self.stats().get(counter)
    }
}

fn d(tag: &str) -> Digest {
    Digest::of(tag.as_bytes())
}

fn flip_sig(msg: Message) -> Message {
    match msg {
        Message::Prepare(mut p) => {
            p.sig.0[5] ^= 0x20;
            Message::Prepare(p)
        }
        Message::PrePrepare(mut p) => {
            p.sig.0[50] ^= 0x01;
            Message::PrePrepare(p)
        }
        other => other,
    }
}

/// Every permutation of `items` (Heap's algorithm).
fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    fn go<T: Clone>(k: usize, a: &mut Vec<T>, out: &mut Vec<Vec<T>>) {
        if k <= 1 {
            out.push(a.clone());
            return;
        }
        for i in 0..k {
            go(k - 1, a, out);
            let j = if k.is_multiple_of(2) { i } else { 0 };
            a.swap(j, k - 1);
        }
    }
    let mut out = Vec::new();
    go(items.len(), &mut items.to_vec(), &mut out);
    out
}

/// SPEC §4.2 (3): PrePrepare + `2f` Prepares → exactly one Commit for `(v, s, d)` signed by
/// this Confirmation enclave; later Prepares and repeated PrePrepares add nothing.
#[test]
fn commits_exactly_once_after_pre_prepare_and_2f_prepares() {
    let mut h = Harness::new(1);
    assert!(h.feed(h.pp(0, 1, d("a"))).is_empty());
    assert!(h.feed(h.prepare(1, 0, 1, d("a"))).is_empty(), "PrePrepare + 1 Prepare is not a certificate");
    let commits = h.feed(h.prepare(2, 0, 1, d("a")));
    assert_eq!(commits, vec![Commit { view: 0, seq: 1, digest: d("a"), replica: ReplicaId(1) }]);
    // Nothing more for the same slot, whatever arrives afterwards.
    assert!(h.feed(h.prepare(3, 0, 1, d("a"))).is_empty());
    assert!(h.feed(h.prepare(2, 0, 1, d("a"))).is_empty());
    assert!(h.feed(h.pp(0, 1, d("a"))).is_empty());
    let batch = BatchMsg {
        pre_prepare: match h.pp(0, 1, d("a")) {
            Message::PrePrepare(p) => p,
            _ => unreachable!(),
        },
        batch: Vec::new(),
    };
    assert!(h.feed(Message::Batch(batch)).is_empty());
    let s = h.stats();
    assert_eq!(s.get(Counter::CommitsSent), 1);
    assert_eq!(s.get(Counter::PrepareLate), 2);
    assert_eq!(s.get(Counter::PrePrepareDuplicate), 2);
}

/// The order of arrival does not matter: for every permutation of the PrePrepare and the
/// three backups' Prepares (Prepares may overtake the PrePrepare), exactly one Commit is
/// sent, at the first moment a certificate is complete.
#[test]
fn commits_once_in_every_arrival_order() {
    let proto = Harness::new(2);
    let msgs = vec![
        proto.pp(0, 5, d("a")),
        proto.prepare(1, 0, 5, d("a")),
        proto.prepare(2, 0, 5, d("a")),
        proto.prepare(3, 0, 5, d("a")),
    ];
    let orders = permutations(&msgs);
    assert_eq!(orders.len(), 24);
    for order in orders {
        let mut h = Harness::new(2);
        let (mut have_pp, mut prepares, mut sent) = (false, 0, 0);
        for msg in order {
            match &msg {
                Message::PrePrepare(_) => have_pp = true,
                _ => prepares += 1,
            }
            let commits = h.feed(msg);
            let complete = have_pp && prepares >= 2;
            let expected = usize::from(complete && sent == 0);
            assert_eq!(commits.len(), expected, "pp={have_pp} prepares={prepares}");
            sent += commits.len();
            for c in commits {
                assert_eq!((c.view, c.seq, c.digest, c.replica), (0, 5, d("a"), ReplicaId(2)));
            }
        }
        assert_eq!(sent, 1);
    }
}

/// SPEC §9 L1: a Prepare whose signature does not verify under the claimed sender's
/// Preparation key is not counted, and does not block the real Prepare of that sender.
#[test]
fn forged_prepare_signatures_do_not_count() {
    let mut h = Harness::new(1);
    h.feed(h.pp(0, 1, d("a")));
    h.feed(h.prepare(1, 0, 1, d("a")));
    // One byte flipped.
    assert!(h.feed(flip_sig(h.prepare(2, 0, 1, d("a")))).is_empty());
    // Claims replica 2, signed by replica 3's Preparation enclave.
    let body = Prepare { view: 0, seq: 1, digest: d("a"), replica: ReplicaId(2) };
    assert!(h.feed(Message::Prepare(h.sign(3, Preparation, Purpose::Prepare, body))).is_empty());
    // Signed by replica 2's Confirmation enclave instead of its Preparation enclave.
    let wrong_kind = h.sign(2, CompartmentKind::Confirmation, Purpose::Prepare, body);
    assert!(h.feed(Message::Prepare(wrong_kind)).is_empty());
    // A Commit signature of the same body replayed as a Prepare.
    assert!(h.feed(Message::Prepare(h.sign(2, Preparation, Purpose::Commit, body))).is_empty());
    assert_eq!(h.counter(Counter::PrepareBadSignature), 4);
    assert_eq!(h.counter(Counter::CommitsSent), 0);
    // The genuine Prepare of replica 2 still completes the certificate.
    assert_eq!(h.feed(h.prepare(2, 0, 1, d("a"))).len(), 1);
}

/// A forged PrePrepare (not signed by Preparation(primary(v))) is not stored: Prepares
/// alone never make a certificate, and the real PrePrepare still counts afterwards.
#[test]
fn forged_pre_prepare_is_not_stored() {
    let mut h = Harness::new(1);
    h.feed_all([h.prepare(1, 0, 1, d("a")), h.prepare(2, 0, 1, d("a")), h.prepare(3, 0, 1, d("a"))]);
    assert!(h.feed(flip_sig(h.pp(0, 1, d("a")))).is_empty());
    let by_backup = h.sign(2, Preparation, Purpose::PrePrepare, PrePrepare { view: 0, seq: 1, digest: d("a") });
    assert!(h.feed(Message::PrePrepare(by_backup)).is_empty());
    assert_eq!(h.counter(Counter::PrePrepareBadSignature), 2);
    assert_eq!(h.counter(Counter::CommitsSent), 0);
    assert_eq!(h.feed(h.pp(0, 1, d("a"))).len(), 1);
}

/// Two Prepares from the same replica are one vote (SPEC §3 "distinct"), even when the
/// second is a separately signed message or names another digest.
#[test]
fn duplicate_prepares_from_one_replica_count_once() {
    let mut h = Harness::new(1);
    h.feed(h.pp(0, 1, d("a")));
    assert!(
        h.feed_all([h.prepare(3, 0, 1, d("a")), h.prepare(3, 0, 1, d("a")), h.prepare(3, 0, 1, d("a"))]).is_empty()
    );
    assert_eq!(h.counter(Counter::PrepareDuplicate), 2);
    // A Byzantine replica 2 first votes for another digest: its later vote for `a` is a duplicate.
    assert!(h.feed_all([h.prepare(2, 0, 1, d("b")), h.prepare(2, 0, 1, d("a"))]).is_empty());
    assert_eq!(h.counter(Counter::PrepareDuplicate), 3);
    assert_eq!(h.counter(Counter::CommitsSent), 0);
    assert_eq!(h.feed(h.prepare(1, 0, 1, d("a"))).len(), 1);
}

/// Prepares for another digest than the PrePrepare's are no certificate (SPEC §3 "same
/// `(v, s, d)`"), whether they arrive before or after the PrePrepare.
#[test]
fn prepares_with_another_digest_do_not_make_a_certificate() {
    let mut h = Harness::new(1);
    h.feed_all([h.prepare(1, 0, 1, d("b")), h.prepare(2, 0, 1, d("b")), h.prepare(3, 0, 1, d("b"))]);
    assert!(h.feed(h.pp(0, 1, d("a"))).is_empty());
    let mut h = Harness::new(1);
    h.feed(h.pp(0, 2, d("a")));
    assert!(
        h.feed_all([h.prepare(1, 0, 2, d("b")), h.prepare(2, 0, 2, d("b")), h.prepare(3, 0, 2, d("c"))]).is_empty()
    );
    assert_eq!(h.counter(Counter::CommitsSent), 0);
}

/// Messages of another view than `v_c = 0` are refused and counted (view change is not
/// implemented: the view stays 0).
#[test]
fn prepares_and_pre_prepares_of_a_wrong_view_are_refused() {
    let mut h = Harness::new(2);
    // View 1: primary 1; its PrePrepare and the other backups' Prepares are well signed.
    let msgs = [h.pp(1, 1, d("a")), h.prepare(0, 1, 1, d("a")), h.prepare(2, 1, 1, d("a")), h.prepare(3, 1, 1, d("a"))];
    assert!(h.feed_all(msgs).is_empty());
    let s = h.stats();
    assert_eq!(s.get(Counter::PrePrepareWrongView), 1);
    assert_eq!(s.get(Counter::PrepareWrongView), 3);
    // View-1 Prepares do not help a view-0 PrePrepare either.
    assert!(h.feed(h.pp(0, 1, d("a"))).is_empty());
    assert!(h.feed(h.prepare(1, 0, 1, d("a"))).is_empty());
    assert_eq!(h.counter(Counter::CommitsSent), 0);
}

/// SPEC §3: the primary sends only the PrePrepare; a Prepare from it is no vote.
#[test]
fn prepare_from_the_primary_is_refused() {
    let mut h = Harness::new(1);
    h.feed_all([h.pp(0, 1, d("a")), h.prepare(1, 0, 1, d("a"))]);
    assert!(h.feed(h.prepare(0, 0, 1, d("a"))).is_empty());
    assert_eq!(h.counter(Counter::PrepareFromPrimary), 1);
    assert_eq!(h.counter(Counter::CommitsSent), 0);
    // A replica id outside 0..n.
    let body = Prepare { view: 0, seq: 1, digest: d("a"), replica: ReplicaId(4) };
    assert!(h.feed(Message::Prepare(h.sign(1, Preparation, Purpose::Prepare, body))).is_empty());
    assert_eq!(h.counter(Counter::PrepareUnknownReplica), 1);
    assert_eq!(h.feed(h.prepare(3, 0, 1, d("a"))).len(), 1);
}

/// SPEC §4.2 (3): only `s` in `(h, h + L]` commits: 0 and `h + L + 1` are refused,
/// `h + L` is accepted.
#[test]
fn sequence_numbers_outside_the_window_never_commit() {
    let mut h = Harness::new(1);
    for seq in [0, L + 1, L + 100, u64::MAX] {
        let msgs = [
            h.pp(0, seq, d("a")),
            h.prepare(1, 0, seq, d("a")),
            h.prepare(2, 0, seq, d("a")),
            h.prepare(3, 0, seq, d("a")),
        ];
        assert!(h.feed_all(msgs).is_empty(), "seq {seq}");
    }
    let s = h.stats();
    assert_eq!(s.get(Counter::PrePrepareOutsideWindow), 4);
    assert_eq!(s.get(Counter::PrepareOutsideWindow), 12);
    assert_eq!(s.get(Counter::CommitsSent), 0);
    assert_eq!(s.log_entries, 0, "refused messages must not allocate slots");
    let at_bound = [h.pp(0, L, d("a")), h.prepare(1, 0, L, d("a")), h.prepare(2, 0, L, d("a"))];
    assert_eq!(h.feed_all(at_bound).len(), 1, "s = h + L is inside the window");
}

/// SPEC §9 C1: an equivocating primary signs two PrePrepares for one `(v, s)`: the second
/// is ignored and counted, and at most one Commit is ever sent for `(v, s)`, even when a
/// full set of Prepares for the second digest arrives.
#[test]
fn conflicting_pre_prepare_is_ignored_and_at_most_one_commit_per_slot() {
    let mut h = Harness::new(1);
    h.feed(h.pp(0, 1, d("a")));
    assert!(h.feed(h.pp(0, 1, d("b"))).is_empty());
    assert_eq!(h.counter(Counter::PrePrepareConflicting), 1);
    let mut commits = h.feed_all([h.prepare(2, 0, 1, d("b")), h.prepare(3, 0, 1, d("b"))]);
    assert!(commits.is_empty(), "Prepares for the rejected digest must not commit");
    // Replicas 2 and 3 voted for `b`, so replica 1's vote for `a` is the only one: no
    // certificate for either digest.
    commits.extend(h.feed(h.prepare(1, 0, 1, d("a"))));
    assert!(commits.is_empty());

    // Second run: the certificate for `a` completes first; `b` never commits afterwards.
    let mut h = Harness::new(1);
    let mut all = h.feed_all([h.pp(0, 2, d("a")), h.prepare(1, 0, 2, d("a")), h.prepare(2, 0, 2, d("a"))]);
    all.extend(h.feed_all([h.pp(0, 2, d("b")), h.prepare(3, 0, 2, d("b"))]));
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].digest, d("a"));
    assert_eq!(h.counter(Counter::CommitsSent), 1);
}

/// Inputs a Confirmation enclave has no business with, and bytes that do not decode,
/// are counted and dropped (SPEC §5.1: decode defensively).
#[test]
fn unexpected_and_malformed_inputs_are_counted() {
    let mut h = Harness::new(1);
    let mut out = Vec::new();
    h.conf.handle(Input::OrderBatch(vec![1, 2, 3]), &mut out);
    let commit = h.sign(
        2,
        CompartmentKind::Confirmation,
        Purpose::Commit,
        Commit { view: 0, seq: 1, digest: d("a"), replica: ReplicaId(2) },
    );
    h.conf.handle(Input::Message(Message::Commit(commit)), &mut out);
    assert!(out.is_empty());
    let mut encoded = Vec::new();
    let junk = [Bytes::from_static(&[]), Bytes::from_static(&[0xff; 9]), Bytes::from_static(&[0, 3, 1])];
    h.conf.handle_encoded(&junk, &mut encoded);
    assert!(encoded.is_empty());
    let s = h.stats();
    assert_eq!(s.get(Counter::UnexpectedInput), 2);
    assert_eq!(s.get(Counter::MalformedInput), 3);
}

/// SPEC §10 recovery fence at n = 4 (f = 1): a Confirmation restarted without fresh state
/// signs no Commit and no ViewChange, even on a complete prepare certificate, until it has
/// `2f + 1` Execution statements for its query and a stable checkpoint at or above
/// `H = max checkpoint + L`; then it commits again, above `H`.
#[test]
fn a_fenced_confirmation_signs_no_commit_or_view_change_until_it_recovered() {
    use splitbft_types::msg::Checkpoint;
    use splitbft_types::recovery::{RecoveryQuery, RecoveryStatement};
    let mut h = Harness::new(2);
    h.conf.fence(0);
    let certificate = |h: &Harness, seq: Seq, tag: &str| {
        vec![h.pp(0, seq, d(tag)), h.prepare(1, 0, seq, d(tag)), h.prepare(3, 0, seq, d(tag))]
    };
    let msgs = certificate(&h, 1, "x");
    assert!(h.feed_all(msgs).is_empty(), "committed behind the fence");
    let mut out = Vec::new();
    h.conf.handle(Input::Suspect(0), &mut out);
    assert!(!out.iter().any(|o| matches!(o, Output::Send(Message::ViewChange(_)))), "ViewChange behind the fence");
    out.clear();
    h.conf.handle(Input::BeginRecovery { nonce: 7 }, &mut out);
    let Some(Output::Send(Message::RecoveryQuery(query))) = out.pop() else { panic!("no query") };
    let statement = |h: &Harness, r: u32, query: RecoveryQuery, checkpoint: Seq| {
        let body = RecoveryStatement { query, replica: ReplicaId(r), checkpoint, view: 0 };
        Message::RecoveryStatement(h.sign(r, CompartmentKind::Execution, Purpose::RecoveryStatement, body))
    };
    let checkpoints = |h: &Harness, seq: Seq| {
        (0..3u32)
            .map(|r| {
                let body = Checkpoint { seq, state: d("state"), replica: ReplicaId(r) };
                Message::Checkpoint(h.sign(r, CompartmentKind::Execution, Purpose::Checkpoint, body))
            })
            .collect::<Vec<_>>()
    };
    // 2f + 1 = 3 statements, highest checkpoint K: H = K + L.
    let msgs = vec![statement(&h, 0, query, 0), statement(&h, 1, query, K), statement(&h, 3, query, 0)];
    h.feed_all(msgs);
    assert!(h.stats().recovering);
    let msgs = checkpoints(&h, L);
    h.feed_all(msgs);
    assert!(h.stats().recovering, "a stable checkpoint below H = K + L lifted the fence");
    let msgs = certificate(&h, L + 1, "y");
    assert!(h.feed_all(msgs).is_empty(), "committed at or below H");
    let msgs = checkpoints(&h, K + L);
    h.feed_all(msgs);
    assert!(!h.stats().recovering);
    assert_eq!(h.counter(Counter::RecoveriesCompleted), 1);
    let msgs = certificate(&h, K + L + 1, "z");
    assert_eq!(h.feed_all(msgs).len(), 1, "recovered: commits above H");
}
