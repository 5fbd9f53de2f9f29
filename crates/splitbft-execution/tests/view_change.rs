//! The Execution compartment across view changes and state transfer (SPEC §4.3 state
//! transfer, §4.2/§4.4 (7'), §4.3 (4) deduplication, §9 C3/E1/E2): an enclave behind a
//! certified checkpoint asks for the snapshot, restores only bytes whose digest is the
//! certified `D`, and then executes on from the log; an accepted NewView's null entries
//! execute without bytes, missing batches are asked for, and a request ordered again in
//! the new view executes once, with its cached reply resent on retransmission.
//!
//! Fixture: 4 replicas (f = 1), K = 4, L = 8, two clients, the KV store.

#![allow(clippy::unwrap_used, reason = "test helpers: a failed setup step aborts the test")]

use splitbft_testkit::cluster::Fixture;
use std::sync::OnceLock;

use serde::Serialize;
use splitbft_apps::kv::{KvOp, KvStore};
use splitbft_execution::Execution;
use splitbft_types::boundary::{Compartment, Event, Input, Output, Stats};
use splitbft_types::codec::to_bytes;
use splitbft_types::counters::Counter;
use splitbft_types::crypto::Purpose;
use splitbft_types::msg::{
    BatchMsg, Checkpoint, CheckpointCert, Digest, Message, NewView, PrePrepare, Prepare, PreparedCert, Reply, Request,
    Signed, ViewChange,
};
use splitbft_types::session::Opened;
use splitbft_types::viewchange::{compute_o, null_digest};
use splitbft_types::{ClientId, CompartmentKind, ReplicaId, Seq, Timestamp, View};

use CompartmentKind::{Confirmation, Execution as Exec, Preparation};

const K: u64 = 4;
const L: u64 = 8;
const CLIENTS: usize = 2;

/// The genesis state digest of the fixture's KV store.
fn genesis() -> Digest {
    static GENESIS: OnceLock<Digest> = OnceLock::new();
    *GENESIS.get_or_init(|| Execution::genesis_digest(&fixture().secrets.config, &KvStore::new()))
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        Fixture::new(23, 1, CLIENTS, 67, |c| {
            c.checkpoint_interval = K;
            c.log_window = L;
        })
    })
}

fn execution(me: u32) -> Execution {
    let s = &fixture().secrets;
    let secret = fixture().secret(me, Exec);
    let app = Box::new(KvStore::new());
    let mut e = Execution::new(s.config.clone(), ReplicaId(me), secret, s.execution_group_secret(), app).unwrap();
    for c in 0..CLIENTS as u32 {
        assert!(e.install_session(ClientId(c), 1, Fixture::session_key(c)));
    }
    e
}

fn opened(r: &Reply) -> Opened {
    fixture().opened(r)
}

fn sign<T: Serialize>(r: u32, kind: CompartmentKind, purpose: Purpose, body: T) -> Signed<T> {
    fixture().sign(r, kind, purpose, body)
}

fn primary(view: View) -> u32 {
    fixture().secrets.config.primary(view).0
}

/// A KV Put by client `c` at timestamp `t` (the value names `tag`).
fn put(c: u32, t: Timestamp, tag: &str) -> Request {
    let op = KvOp::Put { key: format!("k{c}").into_bytes(), value: tag.as_bytes().to_vec() };
    fixture().sealed_request(c, t, &op.encode())
}

/// The batch of `requests` proposed at `(view, seq)`, its header signed by primary(view).
fn batch(view: View, seq: Seq, requests: &[Request]) -> BatchMsg {
    fixture().batch_msg(view, seq, to_bytes(requests))
}

fn commit(r: u32, view: View, seq: Seq, digest: Digest) -> Message {
    Message::Commit(fixture().commit(r, view, seq, digest))
}

/// Commits of Confirmation enclaves 0, 1, 2 (a commit certificate).
fn certificate(view: View, seq: Seq, digest: Digest) -> Vec<Message> {
    (0..3).map(|r| commit(r, view, seq, digest)).collect()
}

fn checkpoint(r: u32, seq: Seq, state: Digest) -> Signed<Checkpoint> {
    fixture().checkpoint(r, seq, state)
}

fn run(e: &mut Execution, input: Input) -> Vec<Output> {
    let mut out = Vec::new();
    e.handle(input, &mut out);
    out
}

fn feed(e: &mut Execution, msg: Message) -> Vec<Output> {
    run(e, Input::Message(msg))
}

fn feed_all(e: &mut Execution, msgs: impl IntoIterator<Item = Message>) -> Vec<Output> {
    msgs.into_iter().flat_map(|m| feed(e, m)).collect()
}

/// Delivers the batch and a commit certificate for it in the batch's view.
fn certify_and_deliver(e: &mut Execution, b: &BatchMsg) -> Vec<Output> {
    let pp = b.pre_prepare.body;
    let mut out = feed(e, Message::Batch(b.clone()));
    out.extend(feed_all(e, certificate(pp.view, pp.seq, pp.digest)));
    out
}

fn executed(out: &[Output]) -> Vec<(Seq, u32)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(Event::Executed { seq, requests, .. }) => Some((*seq, *requests)),
            _ => None,
        })
        .collect()
}

fn replies(out: &[Output]) -> Vec<Reply> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(Message::Reply(r)) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn events(out: &[Output]) -> Vec<Event> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// The snapshot taken for checkpoint `seq` among `out`: `(digest, bytes)`.
fn snapshot(out: &[Output], seq: Seq) -> (Digest, Vec<u8>) {
    out.iter()
        .find_map(|o| match o {
            Output::Event(Event::Snapshot { seq: s, digest, bytes }) if *s == seq => Some((*digest, bytes.clone())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no snapshot for {seq}"))
}

fn own_checkpoints(out: &[Output]) -> Vec<Checkpoint> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(Message::Checkpoint(c)) => Some(c.body),
            _ => None,
        })
        .collect()
}

fn stats(e: &mut Execution) -> Stats {
    match run(e, Input::QueryStats).pop() {
        Some(Output::Stats(s)) => s,
        other => panic!("no stats: {other:?}"),
    }
}

/// Batch `s` of the shared history: one Put by client `s % 2` at timestamp `s`.
fn history(s: Seq) -> BatchMsg {
    batch(0, s, &[put((s % 2) as u32, s, &format!("v{s}"))])
}

fn genesis_cert() -> CheckpointCert {
    CheckpointCert { seq: 0, state: genesis(), proof: Vec::new() }
}

/// A real prepare certificate for `(view, seq, digest)`.
fn prepared(view: View, seq: Seq, digest: Digest) -> PreparedCert {
    let backups = (0..4).filter(|r| *r != primary(view)).take(2);
    PreparedCert {
        pre_prepare: sign(primary(view), Preparation, Purpose::PrePrepare, PrePrepare { view, seq, digest }),
        prepares: backups
            .map(|r| sign(r, Preparation, Purpose::Prepare, Prepare { view, seq, digest, replica: ReplicaId(r) }))
            .collect(),
    }
}

fn vc(r: u32, view: View, stable: CheckpointCert, prepared: Vec<PreparedCert>) -> Signed<ViewChange> {
    sign(r, Confirmation, Purpose::ViewChange, ViewChange { view, replica: ReplicaId(r), stable, prepared })
}

/// A valid NewView for `view` from ViewChanges of replicas 0, 2, 3 where replica 0
/// reports `prepared`; `O` computed as PBFT does.
fn new_view(view: View, stable: CheckpointCert, prepared: Vec<PreparedCert>) -> Signed<NewView> {
    let vcs =
        vec![vc(0, view, stable, prepared), vc(2, view, genesis_cert(), vec![]), vc(3, view, genesis_cert(), vec![])];
    let (_, o) = compute_o(view, &vcs);
    let p = primary(view);
    let pre_prepares = o.iter().map(|body| sign(p, Preparation, Purpose::PrePrepare, *body)).collect();
    sign(p, Preparation, Purpose::NewView, NewView { view, view_changes: vcs, pre_prepares })
}

// ---------------------------------------------------------------- state transfer

/// A source Execution enclave (replica 0) that executed the history up to `upto`; returns
/// it with every output it produced.
fn source(upto: Seq) -> (Execution, Vec<Output>) {
    let mut e = execution(0);
    let mut out = Vec::new();
    for s in 1..=upto {
        out.extend(certify_and_deliver(&mut e, &history(s)));
    }
    assert_eq!(stats(&mut e).last_executed, upto);
    (e, out)
}

/// SPEC §4.3 state transfer: a fresh Execution enclave receives a checkpoint certificate
/// for `(8, D)` from other replicas' Execution enclaves, where `D` is the real state after
/// the history; it asks for the snapshot; wrong bytes (one byte flipped, or the snapshot
/// of another checkpoint) are refused and change nothing; the certified bytes are
/// restored, and execution goes on from 9 — already-certified seq 9 at once, then more,
/// with checkpoints equal to the source's (the dedup windows came with the state).
#[test]
fn state_transfer_restores_only_the_certified_snapshot_and_execution_continues() {
    let (mut src, src_out) = source(8);
    let (d4, bytes4) = snapshot(&src_out, 4);
    let (d8, bytes8) = snapshot(&src_out, 8);
    assert_eq!(own_checkpoints(&src_out).iter().map(|c| (c.seq, c.state)).collect::<Vec<_>>(), vec![(4, d4), (8, d8)]);

    let mut e = execution(3);
    let genesis_app = e.app_digest();
    // Checkpoints of Execution enclaves 0 (the source's own), 1 and 2: a certificate.
    let src_cp = src_out
        .iter()
        .find_map(|o| match o {
            Output::Send(Message::Checkpoint(c)) if c.body.seq == 8 => Some(*c),
            _ => None,
        })
        .unwrap();
    assert!(feed(&mut e, Message::Checkpoint(src_cp)).is_empty());
    assert!(feed(&mut e, Message::Checkpoint(checkpoint(1, 8, d8))).is_empty());
    let out = feed(&mut e, Message::Checkpoint(checkpoint(2, 8, d8)));
    assert_eq!(events(&out), vec![Event::Stable { seq: 8 }, Event::StateNeeded { seq: 8, digest: d8 }]);
    let s = stats(&mut e);
    assert_eq!((s.low_watermark, s.last_executed, s.get(Counter::BehindStableCheckpoint)), (8, 0, 1));

    // The source collects the same certificate (its own Checkpoint included) and, being
    // up to date, asks for nothing.
    let out = feed_all(&mut src, [src_cp, checkpoint(1, 8, d8), checkpoint(2, 8, d8)].map(Message::Checkpoint));
    assert_eq!(events(&out), vec![Event::Stable { seq: 8 }]);

    // Seq 9 is certified while the state is being fetched: it waits.
    let b9 = history(9);
    assert!(executed(&certify_and_deliver(&mut e, &b9)).is_empty());
    assert_eq!(executed(&certify_and_deliver(&mut src, &b9)), vec![(9, 1)]);

    // Wrong bytes: one byte flipped anywhere, the other checkpoint's snapshot, nothing.
    let mut flipped = bytes8.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    let mut flipped_first = bytes8.clone();
    flipped_first[0] ^= 0x80;
    // Snapshots leave Execution sealed (SPEC §6): tampered or misplaced ciphertext fails
    // authentication before any digest check.
    for (i, bad) in [flipped, flipped_first, bytes4.clone(), Vec::new()].into_iter().enumerate() {
        let out = run(&mut e, Input::RestoreState { seq: 8, bytes: bad });
        assert_eq!(events(&out), vec![Event::StateRejected { seq: 8 }], "case {i}");
        let s = stats(&mut e);
        assert_eq!(s.get(Counter::RestoreNotAuthentic), i as u64 + 1);
        assert_eq!((s.last_executed, e.app_digest()), (0, genesis_app), "case {i}: state changed");
    }
    // Authentic ciphertext of other bytes (only a holder of the group key can make it):
    // decrypts, then fails the certified digest.
    let group = fixture().secrets.execution_group_secret();
    let plain4 = group.open_state(fixture().secrets.config.cluster_id, 4, &d4, &bytes4).unwrap();
    assert_eq!(Digest::of(&plain4), d4, "the sealed snapshot decrypts to the certified state");
    let resealed = group.seal_state(fixture().secrets.config.cluster_id, 8, &d8, &plain4);
    let out = run(&mut e, Input::RestoreState { seq: 8, bytes: resealed });
    assert_eq!(events(&out), vec![Event::StateRejected { seq: 8 }]);
    assert_eq!(stats(&mut e).get(Counter::RestoreWrongDigest), 1);
    // The right bytes offered for another checkpoint than the certified one.
    assert!(run(&mut e, Input::RestoreState { seq: 4, bytes: bytes4 }).is_empty());
    assert_eq!(stats(&mut e).get(Counter::RestoreNotNeeded), 1);
    assert_eq!(stats(&mut e).last_executed, 0);

    // The certified snapshot: restored, then seq 9 executes at once.
    let out = run(&mut e, Input::RestoreState { seq: 8, bytes: bytes8.clone() });
    let evs = events(&out);
    // It offers the restored snapshot to its environment (to serve peers), then resumes.
    assert_eq!(
        evs[..2],
        [Event::Snapshot { seq: 8, digest: d8, bytes: bytes8.clone() }, Event::StateRestored { seq: 8 }],
        "{evs:?}"
    );
    assert_eq!(executed(&out), vec![(9, 1)]);
    let s = stats(&mut e);
    assert_eq!(s.last_executed, 9);
    assert_eq!(e.app_digest(), src.app_digest());
    assert_eq!(s.get(Counter::StatesRestored), 1);
    // Offered again: not needed any more.
    assert!(run(&mut e, Input::RestoreState { seq: 8, bytes: bytes8 }).is_empty());

    // Both go on to the next checkpoint with the same state digest.
    let (mut mine, mut theirs) = (Vec::new(), Vec::new());
    for s in 10..=12 {
        mine.extend(certify_and_deliver(&mut e, &history(s)));
        theirs.extend(certify_and_deliver(&mut src, &history(s)));
    }
    assert_eq!(executed(&mine), vec![(10, 1), (11, 1), (12, 1)]);
    let (a, b) = (own_checkpoints(&mine), own_checkpoints(&theirs));
    assert_eq!(a.len(), 1);
    assert_eq!((a[0].seq, a[0].state, a[0].replica), (12, b[0].state, ReplicaId(3)));
    assert_eq!(e.app_digest(), src.app_digest());
    // The restored dedup windows refuse a request executed before the checkpoint.
    let replay = batch(0, 13, &[put(1, 3, "v3")]);
    let out = certify_and_deliver(&mut e, &replay);
    assert_eq!(executed(&out), vec![(13, 1)]);
    assert!(replies(&out).is_empty(), "(client 1, t 3) executed at seq 3, before the snapshot");
    assert_eq!(stats(&mut e).get(Counter::RequestDuplicateNoop), 1);
}

/// SPEC §1.1 liveness, §4.3, §5 (retransmission), and PBFT (Castro & Liskov), where the
/// last reply to each client is part of the replicated state that checkpoints cover: a
/// replica that caught up by state transfer can still answer a retransmitted request
/// executed before the checkpoint. Otherwise, with one faulty replica and two correct ones that caught up
/// by state transfer (n = 4), only one correct replica can answer: the client never gets
/// `f + 1` matching replies.
#[test]
fn after_state_transfer_a_retransmission_still_gets_its_reply() {
    let (_, src_out) = source(8);
    let (d8, bytes8) = snapshot(&src_out, 8);
    let mut e = execution(3);
    feed_all(&mut e, (0..3).map(|r| Message::Checkpoint(checkpoint(r, 8, d8))));
    assert_eq!(
        events(&run(&mut e, Input::RestoreState { seq: 8, bytes: bytes8.clone() })),
        vec![Event::Snapshot { seq: 8, digest: d8, bytes: bytes8 }, Event::StateRestored { seq: 8 }]
    );
    // Client 1's latest request: executed at seq 7 on the source, before the snapshot.
    let last = put(1, 7, "v7");
    let out = feed(&mut e, Message::Request(last));
    let resent = replies(&out);
    assert_eq!(resent.len(), 1, "no reply for a request the restored state executed: {:?}", stats(&mut e));
    assert_eq!((resent[0].client, resent[0].timestamp, resent[0].replica), (ClientId(1), 7, ReplicaId(3)));
    fixture().clients[1].verify_reply(&resent[0]).unwrap();
}

/// SPEC §4.3, §4.4 (7'): a NewView whose checkpoint is ahead of the last executed
/// sequence number makes the enclave adopt it and ask for its state.
#[test]
fn a_new_view_with_a_checkpoint_ahead_asks_for_state() {
    let (_, src_out) = source(8);
    let (d8, bytes8) = snapshot(&src_out, 8);
    let stable = CheckpointCert { seq: 8, state: d8, proof: (0..3).map(|r| checkpoint(r, 8, d8)).collect() };
    let mut e = execution(2);
    let out = feed(&mut e, Message::NewView(new_view(1, stable, vec![])));
    let evs = events(&out);
    assert!(evs.contains(&Event::StateNeeded { seq: 8, digest: d8 }), "{evs:?}");
    assert!(evs.contains(&Event::ViewEntered { view: 1 }), "{evs:?}");
    let s = stats(&mut e);
    assert_eq!((s.view, s.low_watermark, s.last_executed), (1, 8, 0));
    let out = run(&mut e, Input::RestoreState { seq: 8, bytes: bytes8.clone() });
    assert_eq!(
        events(&out),
        vec![Event::Snapshot { seq: 8, digest: d8, bytes: bytes8 }, Event::StateRestored { seq: 8 }]
    );
    assert_eq!(stats(&mut e).last_executed, 8);
}

// ---------------------------------------------------------------- NewView (7')

/// SPEC §4.1 (6), §4.3: a null entry of `O` needs no bytes: it executes as an empty batch
/// on its commit certificate of the new view. A re-proposed batch the enclave lacks is
/// asked for (`MissingBatch`) and executes once it arrives — even as a batch of the old
/// view, whose digest is what was certified.
#[test]
fn null_entries_execute_without_bytes_and_missing_batches_are_asked_for() {
    let mut e = execution(1);
    let b2 = history(2);
    let d2 = b2.pre_prepare.body.digest;
    let nv = new_view(1, genesis_cert(), vec![prepared(0, 2, d2)]);
    let o: Vec<(Seq, Digest)> = nv.body.pre_prepares.iter().map(|pp| (pp.body.seq, pp.body.digest)).collect();
    assert_eq!(o, vec![(1, null_digest()), (2, d2)]);
    let out = feed(&mut e, Message::NewView(nv));
    let evs = events(&out);
    assert!(evs.contains(&Event::MissingBatch { seq: 2, digest: d2 }), "{evs:?}");
    assert!(!evs.iter().any(|e| matches!(e, Event::MissingBatch { seq: 1, .. })), "null needs no bytes: {evs:?}");
    assert!(evs.contains(&Event::ViewEntered { view: 1 }));
    assert_eq!(stats(&mut e).view, 1);

    // The null entry commits in view 1 and executes with no Batch message at all.
    let out = feed_all(&mut e, certificate(1, 1, null_digest()));
    assert_eq!(executed(&out), vec![(1, 0)]);
    assert!(replies(&out).is_empty());
    // Seq 2 commits before its bytes arrive: it waits, then executes on the old-view batch.
    assert!(executed(&feed_all(&mut e, certificate(1, 2, d2))).is_empty());
    let out = feed(&mut e, Message::Batch(b2));
    assert_eq!(executed(&out), vec![(2, 1)]);
    assert_eq!(replies(&out).len(), 1);
    let s = stats(&mut e);
    assert_eq!((s.last_executed, s.get(Counter::RequestsExecuted), s.get(Counter::BatchesExecuted)), (2, 1, 2));
}

/// SPEC §4.3: a re-proposed batch already held from the old view is not asked for again.
#[test]
fn a_re_proposed_batch_already_held_is_not_asked_for() {
    let mut e = execution(3);
    let b1 = history(1);
    let d1 = b1.pre_prepare.body.digest;
    // Prepared but not committed in view 0: the bytes are here, two Commits only.
    feed(&mut e, Message::Batch(b1));
    assert!(executed(&feed_all(&mut e, [commit(0, 0, 1, d1), commit(1, 0, 1, d1)])).is_empty());
    let out = feed(&mut e, Message::NewView(new_view(1, genesis_cert(), vec![prepared(0, 1, d1)])));
    assert!(!events(&out).iter().any(|e| matches!(e, Event::MissingBatch { .. })), "{out:?}");
    // The view-0 Commits no longer count: the third view-0 Commit is refused...
    assert!(executed(&feed(&mut e, commit(2, 0, 1, d1))).is_empty());
    assert_eq!(stats(&mut e).get(Counter::CommitWrongView), 1);
    // ... and a commit certificate of view 1 executes it.
    assert_eq!(executed(&feed_all(&mut e, certificate(1, 1, d1))), vec![(1, 1)]);
}

/// SPEC §4.3 (4) "at most once per (client, t)": a request executed in view 0 and ordered
/// again in view 1 (in a new batch with another request) executes once — on the replica
/// that executed it in view 0 and on one that only executes it in view 1 alike; both end
/// in the same state. A retransmitted request gets the cached reply again.
#[test]
fn a_request_re_proposed_in_the_new_view_executes_once_and_retransmissions_get_the_cached_reply() {
    let r = put(0, 1, "once");
    let other = put(1, 1, "other");
    let b1 = batch(0, 1, std::slice::from_ref(&r));
    let d1 = b1.pre_prepare.body.digest;
    // Replica 1 executed seq 1 in view 0; replica 2 got the batch but not the certificate.
    let mut ahead = execution(1);
    let mut behind = execution(2);
    let first = certify_and_deliver(&mut ahead, &b1);
    assert_eq!(executed(&first), vec![(1, 1)]);
    let original = replies(&first);
    assert_eq!(original.len(), 1);
    feed(&mut behind, Message::Batch(b1));

    let nv = new_view(1, genesis_cert(), vec![prepared(0, 1, d1)]);
    // The new primary also orders `r` again (the client retransmitted it) next to `other`.
    let b2 = batch(1, 2, &[r.clone(), other.clone()]);
    let mut outs = Vec::new();
    for e in [&mut ahead, &mut behind] {
        let mut out = feed(e, Message::NewView(nv.clone()));
        out.extend(feed_all(e, certificate(1, 1, d1)));
        out.extend(certify_and_deliver(e, &b2));
        outs.push(out);
    }
    // `ahead` executed seq 1 already: only seq 2 runs, and `r` in it is a no-op.
    assert_eq!(executed(&outs[0]), vec![(2, 2)]);
    assert_eq!(replies(&outs[0]).iter().map(|x| (x.client, x.timestamp)).collect::<Vec<_>>(), vec![(ClientId(1), 1)]);
    // `behind` executes `r` at seq 1 in view 1, then only `other`.
    assert_eq!(executed(&outs[1]), vec![(1, 1), (2, 2)]);
    let behind_replies: Vec<(ClientId, Timestamp, View)> =
        replies(&outs[1]).iter().map(|x| (x.client, x.timestamp, x.view)).collect();
    assert_eq!(behind_replies, vec![(ClientId(0), 1, 1), (ClientId(1), 1, 1)]);
    let (a, b) = (stats(&mut ahead), stats(&mut behind));
    for s in [&a, &b] {
        assert_eq!(
            (s.last_executed, s.get(Counter::RequestsExecuted), s.get(Counter::RequestDuplicateNoop)),
            (2, 2, 1)
        );
    }
    assert_eq!(ahead.app_digest(), behind.app_digest());

    // The client retransmits `r`: the cached result again, in a reply MACed anew for the
    // current view.
    let out = feed(&mut ahead, Message::Request(r.clone()));
    let key = |x: &Reply| (x.client, x.timestamp, x.replica, x.result.clone());
    assert_eq!(replies(&out).iter().map(key).collect::<Vec<_>>(), original.iter().map(key).collect::<Vec<_>>());
    fixture().clients[0].verify_reply(&replies(&out)[0]).unwrap();
    let out = feed(&mut behind, Message::Request(r));
    assert_eq!(replies(&out).len(), 1);
    assert_eq!(opened(&replies(&out)[0]), opened(&original[0]));
    assert_ne!(replies(&out)[0].result, original[0].result, "each replica encrypts with its own nonce");
    // A request never executed gets nothing from the cache.
    assert!(feed(&mut ahead, Message::Request(put(0, 9, "never"))).is_empty());
    let s = stats(&mut ahead);
    assert_eq!((s.get(Counter::RepliesResent), s.get(Counter::RetransmissionNotExecuted)), (1, 1));
}

/// SPEC §4.2 (7'): NewViews for the current or an older view are ignored; a forged one is
/// refused and the view stays.
#[test]
fn old_and_forged_new_views_are_refused() {
    let mut e = execution(1);
    let mut forged = new_view(1, genesis_cert(), vec![]);
    forged.sig.0[4] ^= 0x01;
    assert!(feed(&mut e, Message::NewView(forged)).is_empty());
    assert_eq!(stats(&mut e).get(Counter::NewViewBadSignature), 1);
    assert_eq!(stats(&mut e).view, 0);
    feed(&mut e, Message::NewView(new_view(2, genesis_cert(), vec![])));
    assert_eq!(stats(&mut e).view, 2);
    assert!(feed(&mut e, Message::NewView(new_view(1, genesis_cert(), vec![]))).is_empty());
    assert!(feed(&mut e, Message::NewView(new_view(2, genesis_cert(), vec![]))).is_empty());
    let s = stats(&mut e);
    assert_eq!((s.view, s.get(Counter::NewViewOld), s.get(Counter::ViewsEntered)), (2, 2, 1));
}
