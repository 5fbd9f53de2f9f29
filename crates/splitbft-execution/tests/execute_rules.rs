//! The Execution compartment (SPEC §4.3 handlers (4) (8), §4.4 (9), §9 C3/E1/E2/L1):
//! a batch executes only with a commit certificate (`2f + 1` Commits for one `(v, s, d)`
//! from distinct Confirmation enclaves) and bytes whose SHA-256 is `d`, strictly in
//! sequence order, each `(client, t)` at most once; malformed certified batches are no-ops
//! on every replica alike; every `K` executed sequence numbers a Checkpoint carries the
//! state digest; a checkpoint certificate garbage-collects; memory stays bounded.
//!
//! Fixture: a 4-replica cluster with K = 4, L = 8, two clients, the KV store.

#![allow(clippy::unwrap_used, reason = "test helpers: a failed setup step aborts the test")]

use splitbft_testkit::cluster::Fixture;
use std::sync::OnceLock;

use proptest::prelude::*;

use serde::Serialize;
use splitbft_apps::kv::{KvOp, KvStore};
use splitbft_apps::ledger::{BLOCK_ENTRIES, Block, Ledger};
use splitbft_execution::{Execution, RecordSealer};
use splitbft_types::boundary::{Compartment, Event, Input, Output, Stats};
use splitbft_types::codec::{from_bytes, to_bytes};
use splitbft_types::counters::Counter;
use splitbft_types::crypto::Purpose;
use splitbft_types::msg::{BatchMsg, Checkpoint, Commit, Digest, Message, Reply, Request, Signed};
use splitbft_types::session::{Opened, ReplyBody};
use splitbft_types::{Application, ClientId, CompartmentKind, ReplicaId, Seq, Timestamp, View};

const K: u64 = 4;
const L: u64 = 8;
const CLIENTS: usize = 2;

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        Fixture::new(9, 1, CLIENTS, 41, |c| {
            c.checkpoint_interval = K;
            c.log_window = L;
        })
    })
}

fn execution(me: u32) -> Execution {
    execution_with(me, Box::new(KvStore::new()))
}

fn execution_with(me: u32, app: Box<dyn Application>) -> Execution {
    let s = &fixture().secrets;
    let secret = fixture().secret(me, CompartmentKind::Execution);
    let mut e = Execution::new(s.config.clone(), ReplicaId(me), secret, s.execution_group_secret(), app).unwrap();
    for c in 0..CLIENTS as u32 {
        assert!(e.install_session(ClientId(c), 1, Fixture::session_key(c)));
    }
    e
}

fn opened(r: &Reply) -> Opened {
    fixture().opened(r)
}

/// The sealing key of replica `me`'s Execution enclave, re-derived as an auditor would.
fn sealer(me: u32) -> RecordSealer {
    let s = &fixture().secrets;
    RecordSealer::new(s.enclave(ReplicaId(me), CompartmentKind::Execution), s.config.cluster_id, ReplicaId(me))
}

fn persisted(out: &[Output]) -> Vec<(u64, Vec<u8>)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Persist { height, sealed } => Some((*height, sealed.clone())),
            _ => None,
        })
        .collect()
}

fn sign<T: Serialize>(r: u32, kind: CompartmentKind, purpose: Purpose, body: T) -> Signed<T> {
    fixture().sign(r, kind, purpose, body)
}

/// A KV Put by client `c` at timestamp `t`, authenticated like a real client's.
fn put(c: u32, t: Timestamp) -> Request {
    let op = KvOp::Put { key: format!("k{c}").into_bytes(), value: t.to_le_bytes().to_vec() };
    fixture().sealed_request(c, t, &op.encode())
}

/// A batch message for `(view 0, seq)` over raw bytes, its header signed by primary 0.
fn raw_batch(seq: Seq, bytes: Vec<u8>) -> BatchMsg {
    fixture().batch_msg(0, seq, bytes)
}

fn batch(seq: Seq, requests: &[Request]) -> BatchMsg {
    raw_batch(seq, to_bytes(requests))
}

fn commit(r: u32, view: View, seq: Seq, digest: Digest) -> Message {
    Message::Commit(fixture().commit(r, view, seq, digest))
}

fn checkpoint(r: u32, seq: Seq, state: Digest) -> Message {
    Message::Checkpoint(fixture().checkpoint(r, seq, state))
}

fn feed(e: &mut Execution, msg: Message) -> Vec<Output> {
    let mut out = Vec::new();
    e.handle(Input::Message(msg), &mut out);
    out
}

fn feed_all(e: &mut Execution, msgs: impl IntoIterator<Item = Message>) -> Vec<Output> {
    msgs.into_iter().flat_map(|m| feed(e, m)).collect()
}

/// Delivers `b` and the Commits of Confirmation enclaves 0, 1, 2 for its digest.
fn certify_and_deliver(e: &mut Execution, b: &BatchMsg) -> Vec<Output> {
    let (seq, digest) = (b.pre_prepare.body.seq, b.pre_prepare.body.digest);
    let mut out = feed(e, Message::Batch(b.clone()));
    out.extend(feed_all(e, (0..3).map(|r| commit(r, 0, seq, digest))));
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

fn checkpoints(out: &[Output]) -> Vec<Signed<Checkpoint>> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(Message::Checkpoint(c)) => Some(*c),
            _ => None,
        })
        .collect()
}

fn stats(e: &mut Execution) -> Stats {
    let mut out = Vec::new();
    e.handle(Input::QueryStats, &mut out);
    match out.pop() {
        Some(Output::Stats(s)) => s,
        other => panic!("no stats: {other:?}"),
    }
}

fn d(tag: &str) -> Digest {
    Digest::of(tag.as_bytes())
}

// ---------------------------------------------------------------- (4) commit certificate

/// SPEC §4.3 (4), C3/E1: the batch alone, or with `2f` Commits, executes nothing; the
/// `2f + 1`-th Commit executes it. Replies carry this replica's id and a MAC the client
/// accepts.
#[test]
fn executes_only_with_2f_plus_1_commits_and_the_batch() {
    let mut e = execution(1);
    let b = batch(1, &[put(0, 1), put(1, 1)]);
    let digest = b.pre_prepare.body.digest;
    assert!(feed(&mut e, Message::Batch(b)).is_empty());
    assert!(
        feed_all(&mut e, [commit(0, 0, 1, digest), commit(3, 0, 1, digest)]).is_empty(),
        "2f Commits are not enough"
    );
    assert_eq!(stats(&mut e).last_executed, 0);
    let out = feed(&mut e, commit(2, 0, 1, digest));
    assert_eq!(executed(&out), vec![(1, 2)]);
    let rs = replies(&out);
    assert_eq!(
        rs.iter().map(|r| (r.client, r.timestamp, r.replica)).collect::<Vec<_>>(),
        vec![(ClientId(0), 1, ReplicaId(1)), (ClientId(1), 1, ReplicaId(1))]
    );
    for r in &rs {
        fixture().clients[r.client.0 as usize].verify_reply(r).unwrap();
    }
    let s = stats(&mut e);
    assert_eq!((s.last_executed, s.get(Counter::RequestsExecuted), s.get(Counter::BatchesExecuted)), (1, 2, 1));
    // More Commits after the certificate change nothing.
    assert!(feed(&mut e, commit(1, 0, 1, digest)).is_empty());
    assert_eq!(stats(&mut e).get(Counter::CommitLate), 1);
}

/// The certificate may come before the batch: it executes when the batch arrives.
#[test]
fn executes_when_the_batch_arrives_after_the_certificate() {
    let mut e = execution(2);
    let b = batch(1, &[put(0, 1)]);
    let digest = b.pre_prepare.body.digest;
    let out = feed_all(&mut e, (1..4).map(|r| commit(r, 0, 1, digest)));
    // Nothing executes yet; Execution asks the environment for the missing batch.
    assert_eq!(out, vec![Output::Event(Event::MissingBatch { seq: 1, digest })]);
    assert_eq!(executed(&feed(&mut e, Message::Batch(b))), vec![(1, 1)]);
}

/// SPEC §3: Execution checks that the batch hashes to the certified `d`. Bytes that do not
/// hash to their header's digest are refused; bytes for another digest never execute under
/// this certificate; the genuine batch still does.
#[test]
fn batch_whose_bytes_do_not_match_the_certified_digest_is_not_executed() {
    let mut e = execution(1);
    let real = batch(1, &[put(0, 1)]);
    let digest = real.pre_prepare.body.digest;
    // Header names the certified digest, bytes are something else.
    let lying = BatchMsg { pre_prepare: real.pre_prepare, batch: to_bytes(&vec![put(0, 2)]) };
    assert!(feed(&mut e, Message::Batch(lying)).is_empty());
    assert_eq!(stats(&mut e).get(Counter::BatchWrongDigest), 1);
    // Self-consistent, but another digest than the one certified.
    let other = batch(1, &[put(1, 1)]);
    assert!(feed(&mut e, Message::Batch(other)).is_empty());
    let out = feed_all(&mut e, (0..3).map(|r| commit(r, 0, 1, digest)));
    assert_eq!(out, vec![Output::Event(Event::MissingBatch { seq: 1, digest })]);
    assert_eq!(stats(&mut e).last_executed, 0);
    let out = feed(&mut e, Message::Batch(real));
    assert_eq!(executed(&out), vec![(1, 1)]);
    assert_eq!(replies(&out).iter().map(|r| (r.client, r.timestamp)).collect::<Vec<_>>(), vec![(ClientId(0), 1)]);
}

/// SPEC §9 L1: forged Commits (flipped byte, impersonation, wrong compartment or purpose),
/// a second Commit of one replica, Commits of an unknown replica or another view, and
/// Commits for another digest do not count toward the certificate.
#[test]
fn forged_duplicate_and_mismatched_commits_are_not_counted() {
    let mut e = execution(1);
    let b = batch(1, &[put(0, 1)]);
    let digest = b.pre_prepare.body.digest;
    feed(&mut e, Message::Batch(b));
    let body = Commit { view: 0, seq: 1, digest, replica: ReplicaId(2) };
    let mut flipped = commit(2, 0, 1, digest);
    if let Message::Commit(c) = &mut flipped {
        c.sig.0[33] ^= 8;
    }
    let bad = [
        commit(0, 0, 1, digest),
        commit(0, 0, 1, digest),
        flipped,
        Message::Commit(sign(3, CompartmentKind::Confirmation, Purpose::Commit, body)),
        Message::Commit(sign(2, CompartmentKind::Preparation, Purpose::Commit, body)),
        Message::Commit(sign(2, CompartmentKind::Confirmation, Purpose::Prepare, body)),
        Message::Commit(sign(
            3,
            CompartmentKind::Confirmation,
            Purpose::Commit,
            Commit { replica: ReplicaId(4), ..body },
        )),
        commit(1, 1, 1, digest),
        commit(3, 0, 1, d("other")),
    ];
    assert!(feed_all(&mut e, bad).is_empty());
    let s = stats(&mut e);
    assert_eq!(s.last_executed, 0);
    assert_eq!(s.get(Counter::CommitDuplicate), 1);
    assert_eq!(s.get(Counter::CommitBadSignature), 4);
    assert_eq!(s.get(Counter::CommitUnknownReplica), 1);
    assert_eq!(s.get(Counter::CommitWrongView), 1);
    // Valid: replica 0 (d), replica 3 (other). One more genuine vote for d: 2 of 3.
    assert!(feed(&mut e, commit(1, 0, 1, digest)).is_empty(), "2 Commits for d plus 1 for another digest");
    // The genuine Commit of replica 2 completes it.
    assert_eq!(executed(&feed(&mut e, commit(2, 0, 1, digest))), vec![(1, 1)]);
}

// ---------------------------------------------------------------- sequence order

/// SPEC §4.3 (4): strictly in `s` order. Seq 2 certified first waits; certifying seq 1
/// executes 1 then 2, replies in that order.
#[test]
fn executes_strictly_in_sequence_order() {
    let mut e = execution(3);
    let b1 = batch(1, &[put(0, 1)]);
    let b2 = batch(2, &[put(0, 2)]);
    let b3 = batch(3, &[put(0, 3)]);
    assert!(certify_and_deliver(&mut e, &b2).is_empty());
    assert!(feed(&mut e, Message::Batch(b3.clone())).is_empty());
    assert_eq!(stats(&mut e).last_executed, 0);
    let out = certify_and_deliver(&mut e, &b1);
    assert_eq!(executed(&out), vec![(1, 1), (2, 1)]);
    assert_eq!(replies(&out).iter().map(|r| r.timestamp).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(stats(&mut e).last_executed, 2);
    // Seq 3 has its batch but no certificate yet.
    let digest = b3.pre_prepare.body.digest;
    assert_eq!(executed(&feed_all(&mut e, (0..3).map(|r| commit(r, 0, 3, digest)))), vec![(3, 1)]);
}

// ---------------------------------------------------------------- at most once

/// SPEC §4.3: each `(client, t)` executes at most once, even if a (faulty) primary puts it
/// in two batches or twice in one; the repeats are no-ops without a reply.
#[test]
fn each_client_timestamp_executes_at_most_once() {
    let mut e = execution(1);
    let out = certify_and_deliver(&mut e, &batch(1, &[put(0, 1), put(0, 1)]));
    assert_eq!(executed(&out), vec![(1, 2)]);
    assert_eq!(replies(&out).len(), 1);
    let out = certify_and_deliver(&mut e, &batch(2, &[put(1, 7), put(0, 1), put(0, 2)]));
    assert_eq!(executed(&out), vec![(2, 3)]);
    assert_eq!(replies(&out).iter().map(|r| (r.client.0, r.timestamp)).collect::<Vec<_>>(), vec![(1, 7), (0, 2)]);
    let s = stats(&mut e);
    assert_eq!(s.get(Counter::RequestDuplicateNoop), 2);
    assert_eq!(s.get(Counter::RequestsExecuted), 3);
}

/// SPEC §4.3: a client may have `W = 64` requests outstanding, so all 64 execute even when
/// ordered newest first across several batches; afterwards none executes again.
#[test]
fn sixty_four_outstanding_timestamps_out_of_order_all_execute() {
    assert_eq!(fixture().secrets.config.client_window, 64);
    let mut e = execution(2);
    let mut ts = Vec::new();
    for (i, chunk) in (1..=64u64).rev().collect::<Vec<_>>().chunks(16).enumerate() {
        let requests: Vec<Request> = chunk.iter().map(|&t| put(0, t)).collect();
        let out = certify_and_deliver(&mut e, &batch(i as u64 + 1, &requests));
        ts.extend(replies(&out).iter().map(|r| r.timestamp));
    }
    assert_eq!(ts, (1..=64).rev().collect::<Vec<_>>());
    let out = certify_and_deliver(&mut e, &batch(5, &[put(0, 1), put(0, 33), put(0, 64), put(0, 65)]));
    assert_eq!(replies(&out).iter().map(|r| r.timestamp).collect::<Vec<_>>(), vec![65]);
    assert_eq!(stats(&mut e).get(Counter::RequestDuplicateNoop), 3);
}

// ---------------------------------------------------------------- no-ops, determinism

/// SPEC §4.3: a certified batch that does not decode executes as a no-op (counted),
/// consumes its sequence number, and leaves every replica in the same state; the next
/// batch executes normally. Ops that do not decode as KV ops and requests of unknown
/// clients are per-request no-ops, also identical everywhere.
#[test]
fn malformed_certified_batches_are_identical_no_ops() {
    let mut bad_client = put(0, 3);
    bad_client.client = ClientId(CLIENTS as u32);
    let junk_op = fixture().clients[1].request(1, b"\xffnot a kv op".to_vec());
    let inputs = [
        raw_batch(1, b"\x05 definitely not a Vec<Request>".to_vec()),
        raw_batch(2, Vec::new()),
        batch(3, &[put(0, 1), bad_client, junk_op]),
        raw_batch(4, [to_bytes(&vec![put(1, 2)]), vec![0]].concat()),
    ];
    let mut results = Vec::new();
    for me in [1, 2] {
        let mut e = execution(me);
        let mut out = Vec::new();
        for b in &inputs {
            out.extend(certify_and_deliver(&mut e, b));
        }
        assert_eq!(executed(&out), vec![(1, 0), (2, 0), (3, 3), (4, 0)]);
        let s = stats(&mut e);
        assert_eq!(s.get(Counter::BatchMalformedNoop), 3);
        assert_eq!(s.get(Counter::RequestUnknownClientNoop), 1);
        assert_eq!(s.last_executed, 4);
        let rs: Vec<(ClientId, u64, Vec<u8>)> =
            replies(&out).into_iter().map(|r| (r.client, r.timestamp, to_bytes(&opened(&r)))).collect();
        assert_eq!(rs.len(), 2, "a reply for the Put and an error reply for the junk op");
        let state = checkpoints(&out).iter().map(|c| c.body.state).collect::<Vec<_>>();
        assert_eq!(state.len(), 1);
        results.push((e.app_digest(), rs, state));
    }
    assert_eq!(results[0], results[1]);
}

// ---------------------------------------------------------------- (8) checkpoints

/// SPEC §4.3 (8), E2: after executing `s` with `s % K == 0` (and only then) Execution
/// signs a Checkpoint `(s, D)`; replicas with the same history sign the same `D`; `D`
/// follows the state.
#[test]
fn checkpoint_every_k_with_equal_state_digests_across_replicas() {
    let genesis = Execution::genesis_digest(&fixture().secrets.config, &KvStore::new());
    let mut per_replica = Vec::new();
    for me in [0, 3] {
        let mut e = execution(me);
        // Seq 4 certified first: no checkpoint before 1..=3 executed (E2).
        assert!(certify_and_deliver(&mut e, &batch(4, &[put(1, 4)])).is_empty());
        let mut cps = Vec::new();
        for seq in (1..=3).chain(5..=9) {
            let out = certify_and_deliver(&mut e, &batch(seq, &[put(seq as u32 % 2, seq)]));
            let here = checkpoints(&out);
            for cp in &here {
                assert_eq!(
                    splitbft_types::cert::verify_signed(&fixture().secrets.config, &fixture().keys, cp),
                    Ok(ReplicaId(me))
                );
                // The Checkpoint follows the Executed event of its own sequence number.
                let pos_cp = out.iter().position(|o| matches!(o, Output::Send(Message::Checkpoint(_)))).unwrap();
                let pos_ex = out
                    .iter()
                    .position(|o| matches!(o, Output::Event(Event::Executed { seq, .. }) if *seq == cp.body.seq))
                    .unwrap();
                assert!(pos_ex < pos_cp);
            }
            cps.extend(here.iter().map(|c| (c.body.seq, c.body.state)));
        }
        assert_eq!(cps.iter().map(|c| c.0).collect::<Vec<_>>(), vec![4, 8]);
        assert_ne!(cps[0].1, genesis);
        assert_ne!(cps[0].1, cps[1].1);
        per_replica.push(cps);
    }
    assert_eq!(per_replica[0], per_replica[1]);

    // Another history (one different value) gives another digest at the same seq.
    let mut e = execution(0);
    let mut cps = Vec::new();
    for seq in 1..=4 {
        let t = if seq == 2 { 99 } else { seq };
        cps.extend(checkpoints(&certify_and_deliver(&mut e, &batch(seq, &[put(seq as u32 % 2, t)]))));
    }
    assert_eq!(cps.len(), 1);
    assert_ne!(cps[0].body.state, per_replica[0][0].1);
}

// ---------------------------------------------------------------- (9) garbage collection

/// SPEC §4.4 (9): on a checkpoint certificate for `(s, D)` `h = s`, older snapshots and log
/// entries are dropped, and Commits and batches for `s' <= s` are refused and counted; a
/// certificate ahead of `s_e` is noted (state transfer is a later issue).
#[test]
fn checkpoint_certificate_collects_the_log_and_refuses_old_messages() {
    let mut e = execution(1);
    let mut own = Vec::new();
    for seq in 1..=4 {
        own.extend(checkpoints(&certify_and_deliver(&mut e, &batch(seq, &[put(0, seq)]))));
    }
    assert_eq!(own.len(), 1);
    let state = own[0].body.state;
    // Two more batches waiting for certificates.
    feed_all(&mut e, [Message::Batch(batch(5, &[put(0, 5)])), Message::Batch(batch(6, &[put(0, 6)]))]);
    assert!(feed(&mut e, Message::Checkpoint(own[0])).is_empty());
    assert!(feed(&mut e, checkpoint(3, 4, d("a faulty replica's digest"))).is_empty());
    assert!(feed(&mut e, checkpoint(0, 4, state)).is_empty());
    let before = stats(&mut e);
    assert_eq!(before.low_watermark, 0);
    let out = feed(&mut e, checkpoint(2, 4, state));
    assert_eq!(out, vec![Output::Event(Event::Stable { seq: 4 })]);
    let after = stats(&mut e);
    assert_eq!(after.low_watermark, 4);
    assert!(after.log_entries < before.log_entries, "{} -> {}", before.log_entries, after.log_entries);
    assert_eq!(after.log_entries, 3, "the snapshot at 4 and the slots 5, 6");

    // Old messages are refused.
    let old = batch(3, &[put(1, 1)]);
    let digest = old.pre_prepare.body.digest;
    assert!(feed(&mut e, Message::Batch(old)).is_empty());
    assert!(feed(&mut e, commit(0, 0, 4, digest)).is_empty());
    assert!(feed(&mut e, checkpoint(3, 4, state)).is_empty());
    // The window is now (4, 12].
    let far = batch(4 + L + 1, &[put(1, 1)]);
    assert!(feed(&mut e, Message::Batch(far.clone())).is_empty());
    assert!(feed(&mut e, commit(0, 0, 4 + L + 1, far.pre_prepare.body.digest)).is_empty());
    let s = stats(&mut e);
    assert_eq!(s.get(Counter::BatchLate), 1);
    assert_eq!(s.get(Counter::CommitLate), 1);
    assert_eq!(s.get(Counter::CheckpointOutsideWindow), 1);
    assert_eq!(s.get(Counter::BatchOutsideWindow), 1);
    assert_eq!(s.get(Counter::CommitOutsideWindow), 1);
    assert_eq!(s.log_entries, 3);

    // A certificate ahead of what this replica executed.
    for r in [0, 2, 3] {
        feed(&mut e, checkpoint(r, 12, d("state@12")));
    }
    let s = stats(&mut e);
    assert_eq!((s.low_watermark, s.last_executed), (12, 4));
    assert_eq!(s.get(Counter::BehindStableCheckpoint), 1);
}

/// SPEC §4 preamble: whatever Byzantine peers send, Execution holds at most one slot per
/// sequence number in the window (each with at most `n` Commits and
/// `MAX_BATCH_CANDIDATES` batches), its snapshots since the stable checkpoint and one
/// pending Checkpoint slot per multiple of `K` in the window.
#[test]
fn byzantine_flood_keeps_the_log_bounded() {
    let bound = L + (L / K + 1) + L / K;
    let mut e = execution(1);
    let mut max = 0;
    for seq in (0..=3 * L).chain([u64::MAX]) {
        for k in 0..4u8 {
            let junk = raw_batch(seq, vec![k; 10 + k as usize]);
            let msgs = [
                Message::Batch(junk.clone()),
                commit(3, 0, seq, junk.pre_prepare.body.digest),
                commit(3, 0, seq, Digest([k; 32])),
                checkpoint(3, seq - seq % K, Digest([k; 32])),
            ];
            for msg in msgs {
                feed(&mut e, msg);
                max = max.max(stats(&mut e).log_entries);
            }
        }
    }
    assert!(max <= bound, "log grew to {max} > {bound}");
    let s = stats(&mut e);
    assert_eq!(s.last_executed, 0);
    assert!(s.get(Counter::BatchTooManyCandidates) > 0 && s.get(Counter::CommitDuplicate) > 0);
}

/// SPEC §1.1 (liveness with at most `f` faulty replicas), §3 ("its integrity comes from the
/// digest, not from who delivered it"): a Byzantine *non-primary* replica's broker sends
/// every correct replica two self-consistent junk batches per sequence number (bytes whose
/// SHA-256 is the digest in an unsigned header). The genuine batch must still execute once
/// it is certified.
#[test]
fn junk_batches_from_a_byzantine_peer_do_not_block_the_certified_batch() {
    let mut e = execution(1);
    for junk in [&b"junk one"[..], &b"junk two"[..]] {
        let mut b = raw_batch(1, junk.to_vec());
        // Not signed by the primary: a Byzantine broker made it up.
        b.pre_prepare.sig = splitbft_types::msg::Sig([0; 64]);
        feed(&mut e, Message::Batch(b));
    }
    let out = certify_and_deliver(&mut e, &batch(1, &[put(0, 1)]));
    assert_eq!(executed(&out), vec![(1, 1)], "the certified genuine batch was dropped");
    assert_eq!(stats(&mut e).get(Counter::BatchTooManyCandidates), 0);
}

/// Inputs Execution has no business with, and bytes that do not decode, are counted.
#[test]
fn the_ledger_persists_one_sealed_block_per_five_executed_requests() {
    // SPEC §7: batches of 3, 4, 1, 7 and 5 requests (20 in all, plus one duplicate that
    // executes as a no-op and is no entry) close blocks after requests 5, 10, 15 and 20.
    let sizes = [3usize, 4, 1, 7, 5];
    let mut ledger0 = execution_with(0, Box::new(Ledger::new()));
    let mut ledger1 = execution_with(1, Box::new(Ledger::new()));
    let mut kv = execution(0);
    let (mut t, mut seq) = (0u64, 0u64);
    let mut all: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut ops = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let mut requests: Vec<Request> = (0..*size)
            .map(|_| {
                t += 1;
                put((t % 2) as u32, t)
            })
            .collect();
        // Blocks record what the application executed: the op in clear, inside the sealed
        // block (SPEC §6, §7).
        ops.extend(
            (t + 1 - *size as u64..=t).map(|t| {
                KvOp::Put { key: format!("k{}", t % 2).into_bytes(), value: t.to_le_bytes().to_vec() }.encode()
            }),
        );
        if i == 2 {
            requests.push(put((t % 2) as u32, t)); // already executed: a no-op
        }
        seq += 1;
        let b = batch(seq, &requests);
        let out0 = certify_and_deliver(&mut ledger0, &b);
        let out1 = certify_and_deliver(&mut ledger1, &b);
        assert!(persisted(&certify_and_deliver(&mut kv, &b)).is_empty(), "the KV store persists nothing");
        let done = ops.len();
        let expected = done / BLOCK_ENTRIES - (done - size) / BLOCK_ENTRIES;
        let (p0, p1) = (persisted(&out0), persisted(&out1));
        assert_eq!(p0.len(), expected, "batch {i}");
        assert_eq!(p1.len(), expected, "batch {i}");
        for ((h0, s0), (h1, s1)) in p0.iter().zip(&p1) {
            assert_eq!(h0, h1);
            assert_ne!(s0, s1, "each replica seals under its own key");
            assert_eq!(sealer(0).open(*h0, s0).unwrap(), sealer(1).open(*h1, s1).unwrap(), "the same block");
            assert!(sealer(1).open(*h0, s0).is_err(), "replica 1's key does not open replica 0's block");
        }
        all.extend(p0);
    }
    assert_eq!(stats(&mut ledger0).get(Counter::RecordsSealed), 4);
    assert_eq!(all.iter().map(|(h, _)| *h).collect::<Vec<_>>(), [0, 1, 2, 3]);
    let mut prev = Digest::default();
    for (chunk, (height, sealed)) in ops.chunks(BLOCK_ENTRIES).zip(&all) {
        let block = Block::decode(&sealer(0).open(*height, sealed).unwrap()).unwrap();
        assert_eq!(block.height, *height);
        assert_eq!(block.prev_hash, prev);
        assert_eq!(block.entries.iter().map(|e| e.op.clone()).collect::<Vec<_>>(), chunk);
        prev = block.hash();
    }
}

#[test]
fn unexpected_and_malformed_inputs_are_counted() {
    let mut e = execution(1);
    let mut out = Vec::new();
    e.handle(Input::OrderBatch(to_bytes(&vec![put(0, 1)])), &mut out);
    e.handle(Input::Message(Message::PrePrepare(batch(1, &[put(0, 1)]).pre_prepare)), &mut out);
    e.handle(Input::Message(Message::Request(put(0, 1))), &mut out);
    assert!(out.is_empty(), "a retransmitted request that never executed gets no reply");
    let mut encoded = Vec::new();
    e.handle_encoded(&[bytes::Bytes::from_static(b""), bytes::Bytes::from_static(&[0, 2, 0])], &mut encoded);
    assert!(encoded.is_empty());
    let s = stats(&mut e);
    assert_eq!(s.get(Counter::UnexpectedInput), 2);
    assert_eq!(s.get(Counter::RetransmissionNotExecuted), 1);
    assert_eq!(s.get(Counter::MalformedInput), 2);
}

/// What a replica did, as far as clients and peers can see: replies `(client, t, result)`,
/// checkpoints `(s, D)` and executed `(s, requests)`.
type Observed = (Vec<(ClientId, u64, Vec<u8>)>, Vec<(Seq, Digest)>, Vec<(Seq, u32)>);

/// One batch of the determinism property: requests `(client, t)` (client 2 is unknown to
/// the cluster) or arbitrary bytes.
#[derive(Clone, Debug)]
enum Spec {
    Requests(Vec<(u32, u64)>),
    Garbage(Vec<u8>),
}

fn spec() -> impl Strategy<Value = Spec> {
    prop_oneof![
        3 => proptest::collection::vec((0u32..3, 1u64..12), 0..5).prop_map(Spec::Requests),
        1 => proptest::collection::vec(any::<u8>(), 0..24).prop_map(Spec::Garbage),
    ]
}

fn spec_batch(seq: Seq, spec: &Spec) -> BatchMsg {
    match spec {
        Spec::Garbage(bytes) => raw_batch(seq, bytes.clone()),
        Spec::Requests(reqs) => {
            let requests: Vec<Request> = reqs
                .iter()
                .map(
                    |&(c, t)| {
                        if (c as usize) < CLIENTS { put(c, t) } else { Request { client: ClientId(c), ..put(0, t) } }
                    },
                )
                .collect();
            batch(seq, &requests)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// S1 within Execution, and SPEC §4.3's "identically on every correct Execution
    /// enclave": two replicas given the same certified batches — one in order, the other in
    /// any order with certificates before or after the bytes — execute the same requests
    /// (each `(client, t)` at most once), reply the same results and sign the same
    /// checkpoint digests.
    #[test]
    fn replicas_with_the_same_certified_batches_agree_whatever_the_delivery_order(
        specs in proptest::collection::vec(spec(), 1..=8),
        order in Just((1..=8u64).collect::<Vec<_>>()).prop_shuffle(),
        commits_first in any::<bool>(),
    ) {
        let n = specs.len() as u64;
        let batches: Vec<BatchMsg> = specs.iter().enumerate().map(|(i, s)| spec_batch(i as u64 + 1, s)).collect();
        let mut a = execution(1);
        let mut out_a = Vec::new();
        for b in &batches {
            out_a.extend(certify_and_deliver(&mut a, b));
        }
        let mut b = execution(2);
        let mut out_b = Vec::new();
        for seq in order.into_iter().filter(|s| *s <= n) {
            let msg = &batches[seq as usize - 1];
            let digest = msg.pre_prepare.body.digest;
            let commits: Vec<Message> = (1..4).map(|r| commit(r, 0, seq, digest)).collect();
            if commits_first {
                out_b.extend(feed_all(&mut b, commits));
                out_b.extend(feed(&mut b, Message::Batch(msg.clone())));
            } else {
                out_b.extend(feed(&mut b, Message::Batch(msg.clone())));
                out_b.extend(feed_all(&mut b, commits));
            }
        }
        let key = |out: &[Output]| -> Observed {
            (
                replies(out).into_iter().map(|r| (r.client, r.timestamp, to_bytes(&opened(&r)))).collect(),
                checkpoints(out).iter().map(|c| (c.body.seq, c.body.state)).collect(),
                executed(out),
            )
        };
        let (ka, kb) = (key(&out_a), key(&out_b));
        prop_assert_eq!(&ka, &kb);
        prop_assert_eq!(ka.2.iter().map(|e| e.0).collect::<Vec<_>>(), (1..=n).collect::<Vec<_>>());
        let mut seen = std::collections::BTreeSet::new();
        for (c, t, _) in &ka.0 {
            prop_assert!(seen.insert((*c, *t)), "({:?}, {}) executed twice", c, t);
        }
        let (sa, sb) = (stats(&mut a), stats(&mut b));
        prop_assert_eq!(a.app_digest(), b.app_digest());
        prop_assert_eq!((sa.last_executed, sb.last_executed), (n, n));
    }
}

/// SPEC §11: a client's cached results are bounded in bytes as well as by `W`, since every
/// client's cache is in every snapshot: after 20 results of 32 KiB only the newest that fit
/// REPLY_CACHE_BYTES_PER_CLIENT are kept; a retransmission of one of them is answered with
/// its result, one of an evicted one with `Evicted` (it executed, the result is gone), so that
/// the client learns it at once instead of waiting out its deadline.
#[test]
fn cached_results_are_bounded_in_bytes() {
    use splitbft_apps::kv::MAX_VALUE_BYTES;
    use splitbft_types::limits::REPLY_CACHE_BYTES_PER_CLIENT;
    let request = |t: Timestamp, op: KvOp| fixture().sealed_request(0, t, &op.encode());
    let mut requests = vec![request(1, KvOp::Put { key: b"big".to_vec(), value: vec![7; MAX_VALUE_BYTES] })];
    requests.extend((2..=21).map(|t| request(t, KvOp::Get { key: b"big".to_vec() })));
    let mut e = execution(1);
    let out = certify_and_deliver(&mut e, &batch(1, &requests));
    assert_eq!(replies(&out).len(), 21);
    let kept = REPLY_CACHE_BYTES_PER_CLIENT / (MAX_VALUE_BYTES + 64);
    assert_eq!(kept, 7);
    for t in 2..=21u64 {
        let resent = replies(&feed(&mut e, Message::Request(requests[t as usize - 1].clone())));
        assert_eq!(resent.len(), 1, "timestamp {t}");
        let body = from_bytes::<ReplyBody>(&resent[0].result).unwrap();
        let cached = t > 21 - kept as u64;
        assert_eq!(body == ReplyBody::Evicted, !cached, "timestamp {t}: {body:?}");
        if cached {
            assert!(matches!(body, ReplyBody::Sealed(_)), "timestamp {t}: the result again, sealed anew");
        }
    }
    let s = stats(&mut e);
    assert_eq!(s.get(Counter::RepliesResent), kept as u64);
    assert_eq!(s.get(Counter::RetransmissionNotCached), 20 - kept as u64);
}
