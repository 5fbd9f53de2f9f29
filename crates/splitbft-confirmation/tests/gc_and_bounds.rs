//! Confirmation: garbage collection on a checkpoint certificate (SPEC §4.4 (9)), memory
//! bounded by `L` whatever Byzantine peers send (SPEC §4 preamble), and the C1/C2
//! invariants (SPEC §9) under arbitrary interleavings of valid and invalid messages.

#![allow(clippy::unwrap_used, reason = "test helpers: a failed setup step aborts the test")]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use proptest::prelude::*;
use serde::Serialize;
use splitbft_confirmation::Confirmation;
use splitbft_testkit::cluster::Fixture;
use splitbft_types::boundary::{Compartment, Event, Input, Output, Stats};
use splitbft_types::counters::Counter;
use splitbft_types::crypto::{Purpose, SecretKey};
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::msg::{Checkpoint, Commit, Digest, Message, PrePrepare, Prepare, Signed};
use splitbft_types::{CompartmentKind, ReplicaId, Seq, View};

use CompartmentKind::{Execution, Preparation};

const K: u64 = 4;
const L: u64 = 8;
/// Log entries Confirmation may hold: one slot per sequence number in the window, one
/// pending checkpoint slot per multiple of `K` in it, and each replica's latest Checkpoint
/// beyond the window (n = 4).
const MAX_ENTRIES: u64 = L + L / K + 4;

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        Fixture::new(3, 1, 1, 23, |c| {
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

fn pp(view: View, seq: Seq, digest: Digest) -> Message {
    let primary = secrets().config.primary(view).0;
    Message::PrePrepare(sign(primary, Preparation, Purpose::PrePrepare, PrePrepare { view, seq, digest }))
}

fn prepare(r: u32, view: View, seq: Seq, digest: Digest) -> Message {
    Message::Prepare(sign(r, Preparation, Purpose::Prepare, Prepare { view, seq, digest, replica: ReplicaId(r) }))
}

fn checkpoint(r: u32, seq: Seq, state: Digest) -> Message {
    Message::Checkpoint(sign(r, Execution, Purpose::Checkpoint, Checkpoint { seq, state, replica: ReplicaId(r) }))
}

fn d(tag: &str) -> Digest {
    Digest::of(tag.as_bytes())
}

fn confirmation(me: u32) -> Confirmation {
    let s = secrets();
    let secret = SecretKey::from_seed(s.enclave(ReplicaId(me), CompartmentKind::Confirmation).seed());
    Confirmation::new(s.config.clone(), ReplicaId(me), secret, Digest::of(b"genesis")).unwrap()
}

fn feed(c: &mut Confirmation, msg: Message) -> Vec<Output> {
    let mut out = Vec::new();
    c.handle(Input::Message(msg), &mut out);
    out
}

fn commits(out: &[Output]) -> Vec<Commit> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(Message::Commit(c)) => Some(c.body),
            _ => None,
        })
        .collect()
}

fn stats(c: &mut Confirmation) -> Stats {
    let mut out = Vec::new();
    c.handle(Input::QueryStats, &mut out);
    match out.pop() {
        Some(Output::Stats(s)) => s,
        other => panic!("no stats: {other:?}"),
    }
}

/// Runs `(v = 0, s)` through a full prepare certificate for digest `digest`.
fn commit_slot(c: &mut Confirmation, seq: Seq, digest: Digest) -> Vec<Commit> {
    let mut all = Vec::new();
    for msg in [pp(0, seq, digest), prepare(1, 0, seq, digest), prepare(2, 0, seq, digest)] {
        all.extend(commits(&feed(c, msg)));
    }
    all
}

/// SPEC §4.4 (9): on `2f + 1` Checkpoints for `(s, D)` signed by distinct Execution
/// enclaves, `h = s`, log entries `<= s` are dropped and later messages `<= s` are refused.
/// Fewer, forged, misplaced or disagreeing Checkpoints do not move `h`.
#[test]
fn checkpoint_certificate_moves_the_low_watermark_and_collects_the_log() {
    let mut c = confirmation(1);
    for seq in 1..=6 {
        assert_eq!(commit_slot(&mut c, seq, d("a")).len(), 1);
    }
    assert_eq!(stats(&mut c).log_entries, 6);

    let state = d("state@4");
    assert!(feed(&mut c, checkpoint(0, 4, state)).is_empty());
    assert!(feed(&mut c, checkpoint(1, 4, state)).is_empty());
    // Not a certificate: forged, from a Confirmation key, another digest, duplicate.
    let mut forged = checkpoint(2, 4, state);
    if let Message::Checkpoint(cp) = &mut forged {
        cp.sig.0[3] ^= 1;
    }
    assert!(feed(&mut c, forged).is_empty());
    let wrong_kind = sign(
        2,
        CompartmentKind::Confirmation,
        Purpose::Checkpoint,
        Checkpoint { seq: 4, state, replica: ReplicaId(2) },
    );
    assert!(feed(&mut c, Message::Checkpoint(wrong_kind)).is_empty());
    assert!(feed(&mut c, checkpoint(2, 4, d("other"))).is_empty());
    assert!(feed(&mut c, checkpoint(0, 4, state)).is_empty());
    // Not at a multiple of K.
    assert!(feed(&mut c, checkpoint(0, 6, state)).is_empty());
    let s = stats(&mut c);
    assert_eq!(s.low_watermark, 0);
    assert_eq!(s.get(Counter::CheckpointBadSignature), 2);
    assert_eq!(s.get(Counter::CheckpointDuplicate), 1);
    assert_eq!(s.get(Counter::CheckpointNotAtInterval), 1);
    assert_eq!(s.log_entries, 6 + 1, "six slots plus one pending checkpoint slot");

    // The third matching Checkpoint completes the certificate.
    let out = feed(&mut c, checkpoint(3, 4, state));
    assert_eq!(out, vec![Output::Event(Event::Stable { seq: 4 })]);
    let s = stats(&mut c);
    assert_eq!(s.low_watermark, 4);
    assert_eq!(s.get(Counter::CheckpointsStable), 1);
    assert_eq!(s.log_entries, 2, "slots 5 and 6 remain");

    // Messages for s <= h are refused and counted, and allocate nothing.
    for seq in [1, 3, 4] {
        assert!(commits(&feed(&mut c, pp(0, seq, d("z")))).is_empty());
        assert!(commits(&feed(&mut c, prepare(2, 0, seq, d("z")))).is_empty());
    }
    assert!(feed(&mut c, checkpoint(0, 4, state)).is_empty());
    let s = stats(&mut c);
    assert_eq!(s.get(Counter::PrePrepareOutsideWindow), 3);
    assert_eq!(s.get(Counter::PrepareOutsideWindow), 3);
    assert_eq!(s.get(Counter::CheckpointOutsideWindow), 1);
    assert_eq!(s.log_entries, 2);

    // The window moved: h + L = 12 commits, 13 does not.
    assert_eq!(commit_slot(&mut c, 12, d("a")).len(), 1);
    assert!(commit_slot(&mut c, 13, d("a")).is_empty());
    // A later certificate moves h again and drops everything up to it.
    for r in 0..3 {
        feed(&mut c, checkpoint(r, 12, d("state@12")));
    }
    let s = stats(&mut c);
    assert_eq!(s.low_watermark, 12);
    assert_eq!(s.log_entries, 0);
}

/// SPEC §4 preamble: a flood of validly signed but conflicting messages does not grow
/// memory. A Byzantine backup (replica 3) signs Prepares for every sequence number, many
/// digests and views, in and out of the window; a Byzantine primary equivocates on every
/// slot; a Byzantine Execution enclave signs Checkpoints for every multiple of `K` with
/// many digests. `log_entries` stays within `L + L / K`, before and after a GC.
#[test]
fn byzantine_flood_keeps_the_log_bounded() {
    let mut c = confirmation(1);
    let flood = |c: &mut Confirmation, low: Seq| {
        let mut max = 0;
        for seq in (low..=low + 3 * L).chain([0, u64::MAX]) {
            for k in 0..3 {
                let digest = Digest::of(&[seq.to_le_bytes(), [k; 8]].concat());
                for view in [0, 1, 7] {
                    let mut msgs = vec![prepare(3, view, seq, digest)];
                    if view == 0 {
                        msgs.push(pp(0, seq, digest));
                    }
                    if seq % K == 0 {
                        msgs.push(checkpoint(3, seq, digest));
                    }
                    for msg in msgs {
                        let out = feed(c, msg);
                        assert!(commits(&out).is_empty(), "one Byzantine backup cannot make a certificate");
                        max = max.max(stats(c).log_entries);
                    }
                }
            }
        }
        max
    };
    let max = flood(&mut c, 0);
    assert!(max <= MAX_ENTRIES, "log grew to {max} > {MAX_ENTRIES}");
    let s = stats(&mut c);
    assert!(
        s.get(Counter::PrepareDuplicate) > 0
            && s.get(Counter::PrePrepareConflicting) > 0
            && s.get(Counter::CheckpointDuplicate) > 0
    );

    // The correct replicas move the checkpoint to L; the flood starts over in the new window.
    for r in 0..3 {
        feed(&mut c, checkpoint(r, L, d("state")));
    }
    assert_eq!(stats(&mut c).low_watermark, L);
    assert!(stats(&mut c).log_entries <= MAX_ENTRIES);
    let max = flood(&mut c, L);
    assert!(max <= MAX_ENTRIES, "log grew to {max} > {MAX_ENTRIES} after GC");
}

/// What a test step feeds: an index into [`pool`].
#[derive(Clone, Debug)]
struct Entry {
    msg: Message,
    /// Validly signed by the enclave it claims.
    valid: bool,
}

/// Every message the property test picks from: for `s` in 1..=3 and digests a, b, the
/// primary's PrePrepare (view 0 and view 1), every replica's Prepare (view 0), and forged
/// copies of both.
fn pool() -> &'static [Entry] {
    static POOL: OnceLock<Vec<Entry>> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut pool = Vec::new();
        for seq in 1..=3 {
            for digest in [d("a"), d("b")] {
                pool.push(Entry { msg: pp(0, seq, digest), valid: true });
                pool.push(Entry { msg: pp(1, seq, digest), valid: true });
                let mut forged = pp(0, seq, digest);
                if let Message::PrePrepare(p) = &mut forged {
                    p.sig.0[9] ^= 4;
                }
                pool.push(Entry { msg: forged, valid: false });
                for r in 0..4 {
                    pool.push(Entry { msg: prepare(r, 0, seq, digest), valid: true });
                    let mut forged = prepare(r, 0, seq, digest);
                    if let Message::Prepare(p) = &mut forged {
                        p.sig.0[40] ^= 2;
                    }
                    pool.push(Entry { msg: forged, valid: false });
                }
            }
        }
        pool
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// SPEC §9 C1 and C2 as checkers over arbitrary interleavings (duplicates, forgeries,
    /// equivocation, wrong views): at most one Commit per `(v, s)`, and each Commit follows
    /// a validly signed PrePrepare of primary(v) and `2f` validly signed Prepares from
    /// distinct backups, all for its `(v, s, d)`.
    #[test]
    fn at_most_one_commit_per_slot_and_only_with_a_certificate(
        picks in proptest::collection::vec(0usize..1000, 0..60),
        me in 0u32..4,
    ) {
        let pool = pool();
        let mut c = confirmation(me);
        let mut fed: Vec<&Entry> = Vec::new();
        let mut committed: BTreeMap<(View, Seq), Digest> = BTreeMap::new();
        for pick in picks {
            let entry = &pool[pick % pool.len()];
            fed.push(entry);
            for commit in commits(&feed(&mut c, entry.msg.clone())) {
                prop_assert_eq!(commit.replica, ReplicaId(me));
                let key = (commit.view, commit.seq);
                prop_assert!(committed.insert(key, commit.digest).is_none(), "C1: second Commit for {:?}", key);
                let same = |v: View, s: Seq, dg: Digest| (v, s, dg) == (commit.view, commit.seq, commit.digest);
                let has_pp = fed.iter().any(|e| e.valid && matches!(e.msg, Message::PrePrepare(p) if same(p.body.view, p.body.seq, p.body.digest)));
                let voters: BTreeSet<ReplicaId> = fed
                    .iter()
                    .filter(|e| e.valid)
                    .filter_map(|e| match e.msg {
                        Message::Prepare(p) if same(p.body.view, p.body.seq, p.body.digest) => Some(p.body.replica),
                        _ => None,
                    })
                    .filter(|r| *r != secrets().config.primary(commit.view))
                    .collect();
                prop_assert!(has_pp, "C2: Commit {:?} without a PrePrepare", commit);
                prop_assert!(voters.len() >= 2, "C2: Commit {:?} with Prepares from {:?}", commit, voters);
            }
        }
        prop_assert_eq!(stats(&mut c).get(Counter::CommitsSent), committed.len() as u64);
    }
}
