//! SPEC §10 for Preparation: a restarted enclave restored from its sealed state never
//! prepares a second digest for a slot it prepared before (P1 across restarts); without
//! the state it would; a rolled-back or altered state is refused.

#![allow(clippy::unwrap_used, reason = "test helpers: a failed setup step aborts the test")]

use std::sync::OnceLock;

use bytes::Bytes;
use splitbft_preparation::Preparation;
use splitbft_testkit::cluster::Fixture;
use splitbft_types::boundary::{Compartment, Input, Output, Stats};
use splitbft_types::codec::{from_bytes, to_bytes};
use splitbft_types::counters::Counter;
use splitbft_types::crypto::{Purpose, SecretKey};
use splitbft_types::durable::{RecordKind, RestoreError, SealedState};
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::msg::{Checkpoint, Digest, Message};
use splitbft_types::recovery::{RecoveryQuery, RecoveryStatement};
use splitbft_types::{CompartmentKind, EnclaveId, ReplicaId, Seq, View};

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| Fixture::new(5, 2, 1, 31, |_| {}))
}

fn secrets() -> &'static ClusterSecrets {
    &fixture().secrets
}

fn d(tag: &str) -> Digest {
    fixture().tagged_digest(tag)
}

fn pp(view: View, seq: Seq, tag: &str) -> Message {
    fixture().tagged_batch_msg(view, seq, tag)
}

fn secret(me: u32) -> SecretKey {
    fixture().secret(me, CompartmentKind::Preparation)
}

fn fresh(me: u32) -> Preparation {
    Preparation::new(secrets().config.clone(), ReplicaId(me), secret(me), Digest::of(b"genesis")).unwrap()
}

fn restore(me: u32, records: &[SealedState], counter: u64) -> Result<Preparation, RestoreError> {
    Preparation::restore(secrets().config.clone(), ReplicaId(me), secret(me), Digest::of(b"genesis"), records, counter)
}

/// One boundary crossing; returns (Prepares sent as `(s, d)`, sealed records).
fn cross(p: &mut Preparation, msgs: Vec<Message>) -> (Vec<(Seq, Digest)>, Vec<SealedState>) {
    let inputs: Vec<Bytes> = msgs.into_iter().map(|m| Bytes::from(to_bytes(&Input::Message(m)))).collect();
    let mut out = Vec::new();
    p.handle_encoded(&inputs, &mut out);
    let (mut prepares, mut sealed) = (Vec::new(), Vec::new());
    for o in out {
        match from_bytes::<Output>(&o).unwrap() {
            Output::Send(Message::Prepare(p)) => prepares.push((p.body.seq, p.body.digest)),
            Output::Sealed(s) => sealed.push(s),
            _ => {}
        }
    }
    (prepares, sealed)
}

#[test]
fn a_restored_backup_does_not_prepare_a_second_digest_and_a_stateless_one_would() {
    // n = 7 (f = 2): replica 3 is a backup in view 0.
    let mut p = fresh(3);
    p.enable_durability(0);
    let (prepared, mut log) = cross(&mut p, vec![pp(0, 1, "a")]);
    assert_eq!(prepared, vec![(1, d("a"))]);
    assert_eq!(log.len(), 1, "one record per crossing");
    assert_eq!(log[0].kind, RecordKind::Image, "the first record is an image");
    let (prepared, sealed) = cross(&mut p, vec![pp(0, 2, "b"), pp(0, 3, "c")]);
    assert_eq!(prepared.len(), 2);
    assert_eq!(sealed.len(), 1);
    assert_eq!(sealed[0].kind, RecordKind::Delta);
    log.extend(sealed);
    // A crossing that changes nothing seals nothing.
    assert!(cross(&mut p, vec![pp(0, 2, "b")]).1.is_empty());

    // The host restarts the enclave from its sealed state: conflicting PrePrepares for the
    // slots it prepared get no Prepare; a new slot does.
    let mut restored = restore(3, &log, 0).unwrap();
    for (seq, tag) in [(1, "x"), (2, "y"), (3, "z")] {
        assert!(cross(&mut restored, vec![pp(0, seq, tag)]).0.is_empty(), "equivocated at {seq}");
    }
    let (prepared, sealed) = cross(&mut restored, vec![pp(0, 4, "d")]);
    assert_eq!(prepared, vec![(4, d("d"))]);
    assert_eq!(sealed[0].index, 2, "the record sequence continues");

    // Without the state (the failure SPEC §10 removes) the same enclave would equivocate.
    let mut stateless = fresh(3);
    assert_eq!(cross(&mut stateless, vec![pp(0, 1, "x")]).0, vec![(1, d("x"))]);
}

#[test]
fn rolled_back_altered_or_foreign_state_is_refused() {
    let mut p = fresh(1);
    p.enable_durability(4);
    let (_, log) = cross(&mut p, vec![pp(0, 1, "a")]);
    assert_eq!((log[0].index, log[0].epoch), (4, 5), "the records go on from the counter");
    let end = log.last().unwrap().index + 1;
    assert!(restore(1, &log, end).is_ok());
    assert!(
        matches!(restore(1, &log, end + 1), Err(RestoreError::RolledBack { end: e, counter }) if e == end && counter == end + 1)
    );
    let mut altered = log.clone();
    altered[0].sealed[3] ^= 1;
    assert!(matches!(restore(1, &altered, 0), Err(RestoreError::Unauthentic { index: 4 })));
    assert!(matches!(restore(2, &log, 0), Err(RestoreError::Unauthentic { index: 4 })), "another replica's");
    assert!(matches!(restore(1, &[], 0), Err(RestoreError::NoImage)));
}

/// `2f + 1` Checkpoints for `(seq, state)` from Execution enclaves `0..2f + 1`.
fn checkpoint_quorum(seq: Seq, tag: &str) -> Vec<Message> {
    (0..secrets().config.quorum() as u32)
        .map(|r| {
            let body = Checkpoint { seq, state: Digest::of(tag.as_bytes()), replica: ReplicaId(r) };
            Message::Checkpoint(fixture().sign(r, CompartmentKind::Execution, Purpose::Checkpoint, body))
        })
        .collect()
}

/// SPEC §10 "Recovery fence", with zero faulty enclaves: the host restarts a correct
/// backup Preparation after it prepared `(0, 1, a)` — with no state at all, with a sealed
/// state older than the monotonic counter, or with the latest state minus the delta that
/// records the Prepare (cut off its end) — and offers it a PrePrepare for the same slot
/// with another digest. A second Prepare for `(0, 1)` would complete a second prepare
/// certificate (P1 across restarts). The counter refuses both sealed states, so each
/// restart starts without state, behind the fence.
#[test]
fn a_host_restart_without_fresh_state_cannot_make_a_correct_backup_prepare_twice() {
    let mut p = fresh(3);
    p.enable_durability(0);
    let (_, image) = cross(&mut p, vec![pp(0, 2, "b")]);
    let (prepared, delta) = cross(&mut p, vec![pp(0, 1, "a")]);
    assert_eq!(prepared, vec![(1, d("a"))]);
    assert!(matches!(&delta[..], [r] if r.kind == RecordKind::Delta), "{delta:?}");
    let old: Vec<SealedState> = image.iter().chain(&delta).cloned().collect();
    // A stable checkpoint starts a new image; the environment advances the counter past
    // every durable record.
    let k = secrets().config.checkpoint_interval;
    let (_, newer) = cross(&mut p, checkpoint_quorum(k, "state"));
    assert_eq!(newer.last().unwrap().epoch, 2);
    let counter = newer.last().unwrap().index + 1;

    // The older image is refused as rolled back.
    assert!(matches!(restore(3, &old, counter), Err(RestoreError::RolledBack { .. })));
    // The delta cut off the end: refused against the counter of the records before the cut
    // was made. Accepted (a counter that believes the host), it forgets the Prepare.
    let cut_counter = delta[0].index + 1;
    assert!(matches!(restore(3, &image, cut_counter), Err(RestoreError::RolledBack { .. })));
    let mut believed = restore(3, &image, image.last().unwrap().index + 1).unwrap();
    assert_eq!(cross(&mut believed, vec![pp(0, 1, "x")]).0, vec![(1, d("x"))], "the cut would make it equivocate");
    for restart in ["no state", "older state", "deltas cut"] {
        let mut restarted = fresh(3);
        restarted.enable_durability(counter);
        for seq in [1, 2, k + 1] {
            let (prepared, _) = cross(&mut restarted, vec![pp(0, seq, "x")]);
            assert!(prepared.is_empty(), "{restart}: a restarted backup prepared {prepared:?} before recovering");
        }
    }
}

/// Execution(`r`)'s signed statement answering `query`.
fn statement(r: u32, query: RecoveryQuery, checkpoint: Seq) -> Message {
    let body = RecoveryStatement { query, replica: ReplicaId(r), checkpoint, view: 0 };
    Message::RecoveryStatement(fixture().sign(r, CompartmentKind::Execution, Purpose::RecoveryStatement, body))
}

/// Sends `BeginRecovery(nonce)`; returns the query it produced.
fn begin(p: &mut Preparation, nonce: u64) -> Option<RecoveryQuery> {
    let mut out = Vec::new();
    p.handle(Input::BeginRecovery { nonce }, &mut out);
    out.into_iter().find_map(|o| match o {
        Output::Send(Message::RecoveryQuery(q)) => Some(q),
        _ => None,
    })
}

/// SPEC §10 recovery fence at n = 7 (f = 2): the fence lifts only after `2f + 1` statements
/// answering the current query *and* a stable checkpoint at or above `H = max + L`;
/// replayed, foreign, forged and duplicate statements do not count; a restart from a state
/// sealed behind the fence stays behind it.
#[test]
fn a_fenced_backup_recovers_after_2f_plus_1_statements_and_a_stable_checkpoint_at_h() {
    let (k, l, quorum) = (secrets().config.checkpoint_interval, secrets().config.log_window, secrets().config.quorum());
    let mut p = fresh(3);
    p.enable_durability(1);
    assert!(p.recovering());
    let old = begin(&mut p, 10).unwrap();
    assert_eq!((old.requester.replica, old.epoch, old.nonce), (ReplicaId(3), 1, 10));
    let query = begin(&mut p, 11).unwrap();
    // A statement for the old nonce (a replay), for another enclave, forged, or duplicate.
    cross(&mut p, vec![statement(0, old, 0)]);
    let foreign =
        RecoveryQuery { requester: EnclaveId { replica: ReplicaId(4), kind: CompartmentKind::Preparation }, ..query };
    cross(&mut p, vec![statement(1, foreign, 0)]);
    let Message::RecoveryStatement(mut forged) = statement(2, query, 0) else { unreachable!() };
    forged.body.checkpoint = 0;
    forged.body.replica = ReplicaId(5);
    cross(&mut p, vec![Message::RecoveryStatement(forged)]);
    // 2f statements (one from replica 0, twice), the highest checkpoint 2K: H = 2K + L.
    let (_, sealed) = cross(&mut p, vec![statement(0, query, k), statement(0, query, k), statement(1, query, 2 * k)]);
    assert!(sealed.is_empty(), "nothing to seal before H");
    for r in 2..quorum as u32 - 1 {
        cross(&mut p, vec![statement(r, query, 0)]);
    }
    let stats = stats_of(&mut p);
    assert_eq!(stats.get(Counter::RecoveryStatementsAccepted), quorum as u64 - 1);
    assert_eq!(stats.get(Counter::RecoveryStatementNotMyQuery), 2);
    assert_eq!(stats.get(Counter::RecoveryStatementBadSignature), 1);
    assert_eq!(stats.get(Counter::RecoveryStatementDuplicate), 1);
    assert!(stats.recovering);
    let (_, sealed) = cross(&mut p, vec![statement(quorum as u32 - 1, query, 0)]);
    assert_eq!(sealed[0].kind, RecordKind::Image, "H is sealed with the fence");
    assert!(begin(&mut p, 12).is_none(), "H known: no new query");
    let horizon = 2 * k + l;

    // Still fenced: a stable checkpoint below H does not lift it.
    cross(&mut p, checkpoint_quorum(horizon - k, "below"));
    assert!(p.recovering());
    assert!(cross(&mut p, vec![pp(0, horizon - k + 1, "x")]).0.is_empty());
    // A stable checkpoint at H lifts it; slots above H are prepared again.
    cross(&mut p, checkpoint_quorum(horizon, "at"));
    assert!(!p.recovering());
    assert_eq!(stats_of(&mut p).get(Counter::RecoveriesCompleted), 1);
    assert_eq!(cross(&mut p, vec![pp(0, horizon + 1, "y")]).0, vec![(horizon + 1, d("y"))]);
}

/// A host restarting an enclave from a state it sealed while behind the fence gets an
/// enclave that is still behind it (otherwise one more restart would lift the fence).
#[test]
fn a_restart_from_state_sealed_behind_the_fence_stays_behind_it() {
    let mut p = fresh(2);
    p.enable_durability(3);
    let query = begin(&mut p, 1).unwrap();
    let (_, log) = cross(&mut p, vec![statement(0, query, 0)]);
    assert_eq!(log[0].kind, RecordKind::Image);
    let mut restored = restore(2, &log, 4).unwrap();
    assert!(restored.recovering());
    assert!(cross(&mut restored, vec![pp(0, 1, "x")]).0.is_empty());
    // With H known, the restored enclave keeps it (and asks nothing more).
    let query = begin(&mut restored, 2).unwrap();
    let (_, log2) =
        cross(&mut restored, (0..secrets().config.quorum() as u32).map(|r| statement(r, query, 0)).collect());
    let mut all = log.clone();
    all.extend(log2);
    let mut again = restore(2, &all[1..], 5).unwrap();
    assert!(again.recovering());
    assert!(begin(&mut again, 3).is_none(), "H survived the restart");
    cross(&mut again, checkpoint_quorum(secrets().config.log_window, "h"));
    assert!(!again.recovering());
}

fn stats_of(p: &mut Preparation) -> Stats {
    let mut out = Vec::new();
    p.handle(Input::QueryStats, &mut out);
    match out.pop() {
        Some(Output::Stats(s)) => s,
        other => panic!("no stats: {other:?}"),
    }
}
