//! View-change certificates (SPEC §3 ViewChange/NewView rows, §4.1 (6) (7), §4.2 (5) (7'),
//! §9 C5/L1): `compute_o` builds PBFT's set `O` — `min-s` is the highest stable checkpoint
//! among the ViewChanges, every `s` in `(min-s, max-s]` gets the digest prepared in the
//! highest view, gaps get the null batch; `check_view_change` accepts a ViewChange only
//! if it is signed by the sender's Confirmation enclave, carries a valid stable checkpoint
//! certificate and (at [`Depth::Full`]) only real prepare certificates in place;
//! `check_new_view` accepts a NewView only from the new primary's Preparation enclave,
//! with a quorum of distinct ViewChanges for its view and — at [`Depth::Full`] only, as in
//! the paper (§4) — the `O` those ViewChanges imply.
//!
//! Fixture: 4 replicas (f = 1), K = 4, L = 8.

#![allow(clippy::unwrap_used, reason = "test helpers: a failed setup step aborts the test")]

use std::sync::OnceLock;

use serde::Serialize;
use splitbft_types::cert::CertError;
use splitbft_types::config::Keyring;
use splitbft_types::crypto::Purpose;
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::msg::{
    Checkpoint, CheckpointCert, Digest, NewView, PrePrepare, Prepare, PreparedCert, Signed, ViewChange,
};
use splitbft_types::viewchange::{
    AcceptedNewView, Depth, ViewChangeError, check_checkpoint_cert, check_new_view, check_view_change, compute_o,
    null_batch, null_digest,
};
use splitbft_types::{CompartmentKind, ReplicaId, Seq, View};

use CompartmentKind::{Confirmation, Execution, Preparation};
use Depth::{Full, SignaturesAndCheckpoint as Shallow};

const K: u64 = 4;
const L: u64 = 8;

struct Setup {
    secrets: ClusterSecrets,
    keys: Keyring,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let mut secrets = ClusterSecrets::deterministic(21, 1, 1, 77);
        secrets.config.checkpoint_interval = K;
        secrets.config.log_window = L;
        let keys = secrets.config.validate().unwrap();
        Setup { secrets, keys }
    })
}

/// The initial state digest. The checks only compare it with the seq-0 certificate's
/// state, so any fixed digest stands for `Execution::genesis_digest` here.
fn genesis() -> Digest {
    Digest::of(b"genesis state")
}

fn d(tag: &str) -> Digest {
    Digest::of(tag.as_bytes())
}

fn sign<T: Serialize>(r: u32, kind: CompartmentKind, purpose: Purpose, body: T) -> Signed<T> {
    let s = &setup().secrets;
    Signed { sig: s.enclave(ReplicaId(r), kind).sign(s.config.cluster_id, purpose, &body), body }
}

fn primary(view: View) -> u32 {
    setup().secrets.config.primary(view).0
}

fn pre_prepare(view: View, seq: Seq, digest: Digest) -> Signed<PrePrepare> {
    sign(primary(view), Preparation, Purpose::PrePrepare, PrePrepare { view, seq, digest })
}

fn prepare(r: u32, view: View, seq: Seq, digest: Digest) -> Signed<Prepare> {
    sign(r, Preparation, Purpose::Prepare, Prepare { view, seq, digest, replica: ReplicaId(r) })
}

/// A real prepare certificate: the primary's PrePrepare and the Prepares of the first
/// `2f` other replicas.
fn prepared(view: View, seq: Seq, digest: Digest) -> PreparedCert {
    let backups = (0..4).filter(|r| *r != primary(view)).take(2);
    PreparedCert {
        pre_prepare: pre_prepare(view, seq, digest),
        prepares: backups.map(|r| prepare(r, view, seq, digest)).collect(),
    }
}

fn checkpoint(r: u32, seq: Seq, state: Digest) -> Signed<Checkpoint> {
    sign(r, Execution, Purpose::Checkpoint, Checkpoint { seq, state, replica: ReplicaId(r) })
}

fn genesis_cert() -> CheckpointCert {
    CheckpointCert { seq: 0, state: genesis(), proof: Vec::new() }
}

/// A checkpoint certificate from Execution enclaves 1, 2, 3.
fn checkpoint_cert(seq: Seq, state: Digest) -> CheckpointCert {
    CheckpointCert { seq, state, proof: (1..4).map(|r| checkpoint(r, seq, state)).collect() }
}

fn vc_body(r: u32, view: View, stable: CheckpointCert, prepared: Vec<PreparedCert>) -> ViewChange {
    ViewChange { view, replica: ReplicaId(r), stable, prepared }
}

/// A ViewChange signed by Confirmation(`r`).
fn view_change(r: u32, view: View, stable: CheckpointCert, prepared: Vec<PreparedCert>) -> Signed<ViewChange> {
    sign(r, Confirmation, Purpose::ViewChange, vc_body(r, view, stable, prepared))
}

/// A NewView signed by Preparation(primary(view)) carrying `o`, each PrePrepare signed by
/// the primary.
fn new_view(view: View, view_changes: Vec<Signed<ViewChange>>, o: &[PrePrepare]) -> Signed<NewView> {
    let pre_prepares = o.iter().map(|pp| sign(primary(view), Preparation, Purpose::PrePrepare, *pp)).collect();
    sign(primary(view), Preparation, Purpose::NewView, NewView { view, view_changes, pre_prepares })
}

fn check_vc(vc: &Signed<ViewChange>, depth: Depth) -> Result<ReplicaId, ViewChangeError> {
    let s = setup();
    check_view_change(&s.secrets.config, &s.keys, vc, genesis(), depth)
}

fn check_nv(nv: &Signed<NewView>, depth: Depth) -> Result<AcceptedNewView, ViewChangeError> {
    let s = setup();
    check_new_view(&s.secrets.config, &s.keys, nv, genesis(), depth)
}

fn o_entry(view: View, seq: Seq, digest: Digest) -> PrePrepare {
    PrePrepare { view, seq, digest }
}

/// Three ViewChanges for view 1 (replicas 0, 2, 3): replica 2 prepared `a` at 1 and `b` at
/// 3 in view 0, so `O` is `[a, null, b]`.
fn quorum_for_view_1() -> Vec<Signed<ViewChange>> {
    vec![
        view_change(0, 1, genesis_cert(), vec![prepared(0, 1, d("a"))]),
        view_change(2, 1, genesis_cert(), vec![prepared(0, 1, d("a")), prepared(0, 3, d("b"))]),
        view_change(3, 1, genesis_cert(), vec![]),
    ]
}

fn expected_o_view_1() -> Vec<PrePrepare> {
    vec![o_entry(1, 1, d("a")), o_entry(1, 2, null_digest()), o_entry(1, 3, d("b"))]
}

fn good_new_view_1() -> Signed<NewView> {
    new_view(1, quorum_for_view_1(), &expected_o_view_1())
}

// ---------------------------------------------------------------- compute_o (6)

/// SPEC §4.1 (6): `min-s` is the highest stable checkpoint among the ViewChanges, even
/// when another ViewChange reports prepared certificates below it; those are dropped.
#[test]
fn compute_o_starts_at_the_highest_stable_checkpoint() {
    let vcs = vec![
        view_change(0, 1, genesis_cert(), (1..=6).map(|s| prepared(0, s, d(&format!("p{s}")))).collect()),
        view_change(2, 1, checkpoint_cert(4, d("state4")), vec![prepared(0, 5, d("p5"))]),
        view_change(3, 1, genesis_cert(), vec![]),
    ];
    let (stable, o) = compute_o(1, &vcs);
    assert_eq!(stable, checkpoint_cert(4, d("state4")), "the checkpoint of the highest stable seq is chosen");
    assert_eq!(o, vec![o_entry(1, 5, d("p5")), o_entry(1, 6, d("p6"))], "nothing at or below min-s = 4");
    // Whatever the order of the ViewChanges.
    let reversed: Vec<_> = vcs.iter().rev().cloned().collect();
    assert_eq!(compute_o(1, &reversed), (stable, o));
}

/// SPEC §4.1 (6): for each `s`, the digest prepared in the highest view wins, whichever
/// ViewChange carries it and in whatever order they come.
#[test]
fn compute_o_takes_the_digest_prepared_in_the_highest_view() {
    let vcs = vec![
        view_change(0, 3, genesis_cert(), vec![prepared(0, 1, d("old")), prepared(2, 2, d("newest2"))]),
        view_change(1, 3, genesis_cert(), vec![prepared(1, 1, d("middle")), prepared(0, 2, d("older2"))]),
        view_change(2, 3, genesis_cert(), vec![prepared(2, 1, d("newest")), prepared(1, 2, d("middle2"))]),
        view_change(3, 3, genesis_cert(), vec![prepared(0, 1, d("old"))]),
    ];
    let expected = vec![o_entry(3, 1, d("newest")), o_entry(3, 2, d("newest2"))];
    // Every rotation of the list: the answer never depends on which ViewChange came first.
    for shift in 0..vcs.len() {
        let mut rotated = vcs.clone();
        rotated.rotate_left(shift);
        let (stable, o) = compute_o(3, &rotated);
        assert_eq!(o, expected, "rotation {shift}");
        assert_eq!(stable, genesis_cert());
    }
    // Only the lower views present: the highest of those wins.
    let (_, o) = compute_o(3, &vcs[..2]);
    assert_eq!(o, vec![o_entry(3, 1, d("middle")), o_entry(3, 2, d("newest2"))]);
}

/// SPEC §4.1 (6): every sequence number between `min-s` and `max-s` without a prepared
/// certificate gets the null batch (the empty request list).
#[test]
fn compute_o_fills_gaps_with_the_null_batch() {
    assert_eq!(null_digest(), Digest::of(&null_batch()));
    let vcs = vec![
        view_change(1, 2, checkpoint_cert(4, d("s4")), vec![prepared(0, 6, d("six"))]),
        view_change(2, 2, genesis_cert(), vec![prepared(1, 9, d("nine"))]),
        view_change(3, 2, genesis_cert(), vec![]),
    ];
    let (stable, o) = compute_o(2, &vcs);
    assert_eq!(stable.seq, 4);
    let null = null_digest();
    assert_eq!(
        o,
        vec![
            o_entry(2, 5, null),
            o_entry(2, 6, d("six")),
            o_entry(2, 7, null),
            o_entry(2, 8, null),
            o_entry(2, 9, d("nine")),
        ]
    );
}

/// SPEC §4.1 (6): without prepared certificates above `min-s`, `O` is empty.
#[test]
fn compute_o_without_prepared_certificates_is_empty() {
    let vcs: Vec<_> = (1..4).map(|r| view_change(r, 1, genesis_cert(), vec![])).collect();
    assert_eq!(compute_o(1, &vcs), (genesis_cert(), vec![]));
    // Prepared certificates all at or below the highest stable checkpoint count as none.
    let vcs = vec![
        view_change(1, 1, genesis_cert(), vec![prepared(0, 3, d("x")), prepared(0, 4, d("y"))]),
        view_change(2, 1, checkpoint_cert(4, d("s4")), vec![]),
        view_change(3, 1, genesis_cert(), vec![]),
    ];
    assert_eq!(compute_o(1, &vcs), (checkpoint_cert(4, d("s4")), vec![]));
}

// ---------------------------------------------------------------- check_view_change (C5)

/// A ViewChange built from real prepare certificates passes at both depths, including one
/// whose stable checkpoint is not genesis and whose last certificate sits at `h + L`.
#[test]
fn a_good_view_change_is_accepted() {
    let vc = view_change(2, 1, genesis_cert(), vec![prepared(0, 1, d("a")), prepared(0, 3, d("b"))]);
    assert_eq!(check_vc(&vc, Full), Ok(ReplicaId(2)));
    assert_eq!(check_vc(&vc, Shallow), Ok(ReplicaId(2)));
    // Certificates of several older views, the last one at stable + L.
    let vc = view_change(
        3,
        5,
        checkpoint_cert(4, d("s4")),
        vec![prepared(0, 5, d("a")), prepared(4, 6, d("b")), prepared(2, 4 + L, d("c"))],
    );
    assert_eq!(check_vc(&vc, Full), Ok(ReplicaId(3)));
    let empty = view_change(0, 1, genesis_cert(), vec![]);
    assert_eq!(check_vc(&empty, Full), Ok(ReplicaId(0)));
}

/// SPEC §9 L1: the ViewChange itself must be signed by the sender's Confirmation enclave.
#[test]
fn view_changes_with_a_bad_signature_are_refused() {
    let good = view_change(2, 1, genesis_cert(), vec![prepared(0, 1, d("a"))]);
    for byte in [0, 40, 63] {
        let mut forged = good.clone();
        forged.sig.0[byte] ^= 0x10;
        for depth in [Full, Shallow] {
            assert_eq!(check_vc(&forged, depth), Err(ViewChangeError::Cert(CertError::BadSignature(ReplicaId(2)))));
        }
    }
    // Signed by replica 2's Preparation enclave (the compartment that would profit from
    // choosing what is prepared), not its Confirmation enclave.
    let body = vc_body(2, 1, genesis_cert(), vec![prepared(0, 1, d("a"))]);
    let by_preparation = sign(2, Preparation, Purpose::ViewChange, body.clone());
    for depth in [Full, Shallow] {
        assert_eq!(check_vc(&by_preparation, depth), Err(ViewChangeError::Cert(CertError::BadSignature(ReplicaId(2)))));
    }
    // Signed by replica 3's Confirmation enclave while claiming to be replica 2.
    let impersonated = sign(3, Confirmation, Purpose::ViewChange, body.clone());
    assert_eq!(check_vc(&impersonated, Full), Err(ViewChangeError::Cert(CertError::BadSignature(ReplicaId(2)))));
    // A certificate dropped after signing (hiding a prepared request).
    let mut altered = sign(2, Confirmation, Purpose::ViewChange, body);
    altered.body.prepared.clear();
    assert_eq!(check_vc(&altered, Shallow), Err(ViewChangeError::Cert(CertError::BadSignature(ReplicaId(2)))));
    // A sender outside the cluster.
    let unknown = sign(2, Confirmation, Purpose::ViewChange, vc_body(4, 1, genesis_cert(), vec![]));
    assert_eq!(check_vc(&unknown, Full), Err(ViewChangeError::Cert(CertError::UnknownReplica(ReplicaId(4)))));
}

/// SPEC §9 C5: a prepared certificate must be a real one: the primary's PrePrepare and
/// `2f` genuine Prepares for the same `(v, s, d)`. Checked at `Depth::Full` only
/// (Confirmation and Execution do not look inside, paper §4).
#[test]
fn view_changes_with_a_fake_prepared_certificate_are_refused() {
    let check = |cert: PreparedCert| check_vc(&view_change(1, 1, genesis_cert(), vec![cert]), Full);
    assert_eq!(check(prepared(0, 1, d("a"))), Ok(ReplicaId(1)));

    // One Prepare with a forged signature.
    let mut forged = prepared(0, 1, d("a"));
    forged.prepares[1].sig.0[7] ^= 0x01;
    let forged_by = forged.prepares[1].body.replica;
    assert_eq!(check(forged.clone()), Err(ViewChangeError::Cert(CertError::BadSignature(forged_by))));
    let vc = view_change(1, 1, genesis_cert(), vec![forged]);
    assert_eq!(check_vc(&vc, Shallow), Ok(ReplicaId(1)), "the shallow check does not open certificates");

    // A Prepare signed by another replica than the one it names.
    let mut impersonated = prepared(0, 1, d("a"));
    impersonated.prepares[0] = sign(3, Preparation, Purpose::Prepare, impersonated.prepares[0].body);
    assert!(matches!(check(impersonated), Err(ViewChangeError::Cert(CertError::BadSignature(_)))));

    // A forged PrePrepare (not signed by primary(0)).
    let mut bad_pp = prepared(0, 1, d("a"));
    bad_pp.pre_prepare = sign(2, Preparation, Purpose::PrePrepare, bad_pp.pre_prepare.body);
    assert_eq!(check(bad_pp), Err(ViewChangeError::Cert(CertError::BadSignature(ReplicaId(0)))));

    // Incomplete: 2f - 1 Prepares.
    let mut incomplete = prepared(0, 1, d("a"));
    incomplete.prepares.truncate(1);
    assert_eq!(check(incomplete), Err(ViewChangeError::Cert(CertError::TooFew { have: 1, need: 2 })));

    // 2f Prepares, but one of them twice.
    let mut duplicated = prepared(0, 1, d("a"));
    duplicated.prepares[1] = duplicated.prepares[0];
    assert!(matches!(check(duplicated), Err(ViewChangeError::Cert(CertError::DuplicateSender(_)))));

    // A Prepare for another digest.
    let mut mismatched = prepared(0, 1, d("a"));
    let r = mismatched.prepares[1].body.replica.0;
    mismatched.prepares[1] = prepare(r, 0, 1, d("other"));
    assert_eq!(check(mismatched), Err(ViewChangeError::Cert(CertError::Mismatch(ReplicaId(r)))));

    // The primary's own "Prepare" does not count.
    let mut from_primary = prepared(0, 1, d("a"));
    from_primary.prepares[1] = prepare(0, 0, 1, d("a"));
    assert_eq!(check(from_primary), Err(ViewChangeError::Cert(CertError::PrepareFromPrimary(ReplicaId(0)))));
}

/// SPEC §9 C5: certificates only for views below the new one, in strictly increasing `s`
/// above the stable checkpoint and at most `L` above it.
#[test]
fn view_changes_with_misplaced_certificates_are_refused() {
    let check = |stable: CheckpointCert, certs: Vec<PreparedCert>| check_vc(&view_change(2, 2, stable, certs), Full);
    let bad = Err(ViewChangeError::BadPrepared);
    assert_eq!(check(genesis_cert(), vec![prepared(1, 1, d("a"))]), Ok(ReplicaId(2)));
    // A certificate of the new view itself, or of a later one.
    assert_eq!(check(genesis_cert(), vec![prepared(2, 1, d("a"))]), bad);
    assert_eq!(check(genesis_cert(), vec![prepared(3, 1, d("a"))]), bad);
    // Not increasing, or a sequence number twice (even with the same certificate).
    assert_eq!(check(genesis_cert(), vec![prepared(0, 2, d("a")), prepared(0, 1, d("b"))]), bad);
    assert_eq!(check(genesis_cert(), vec![prepared(0, 1, d("a")), prepared(0, 1, d("a"))]), bad);
    assert_eq!(check(genesis_cert(), vec![prepared(0, 1, d("a")), prepared(1, 1, d("b"))]), bad);
    // At or below the stable checkpoint.
    assert_eq!(check(checkpoint_cert(4, d("s4")), vec![prepared(0, 4, d("a"))]), bad);
    assert_eq!(check(genesis_cert(), vec![prepared(0, 0, d("a"))]), bad);
    // Beyond stable + L.
    assert_eq!(check(genesis_cert(), vec![prepared(0, L, d("a"))]), Ok(ReplicaId(2)));
    assert_eq!(check(genesis_cert(), vec![prepared(0, L + 1, d("a"))]), bad);
    assert_eq!(check(checkpoint_cert(4, d("s4")), vec![prepared(0, 4 + L + 1, d("a"))]), bad);
    assert_eq!(check(genesis_cert(), vec![prepared(0, 1, d("a")), prepared(0, u64::MAX, d("b"))]), bad);
}

/// SPEC §3, §4.4: the stable checkpoint certificate must be `2f + 1` genuine Checkpoints
/// for its `(s, D)` with `s` a multiple of K, or exactly the genesis checkpoint. Checked at
/// every depth: Confirmation and Execution adopt it (7').
#[test]
fn view_changes_with_a_bad_checkpoint_certificate_are_refused() {
    let bad = Err(ViewChangeError::BadCheckpoint);
    let check = |stable: CheckpointCert| {
        let vc = view_change(1, 1, stable, vec![]);
        let (full, shallow) = (check_vc(&vc, Full), check_vc(&vc, Shallow));
        assert_eq!(full, shallow, "the checkpoint is checked at every depth");
        full
    };
    assert_eq!(check(checkpoint_cert(8, d("s8"))), Ok(ReplicaId(1)));
    assert_eq!(check_checkpoint_cert(&setup().secrets.config, &setup().keys, &genesis_cert(), genesis()), Ok(()));

    // Too few: 2f Checkpoints.
    let mut few = checkpoint_cert(8, d("s8"));
    few.proof.pop();
    assert_eq!(check(few), bad);
    // A forged Checkpoint.
    let mut forged = checkpoint_cert(8, d("s8"));
    forged.proof[2].sig.0[3] ^= 0x04;
    assert_eq!(check(forged), bad);
    // One Checkpoint twice.
    let mut twice = checkpoint_cert(8, d("s8"));
    twice.proof[2] = twice.proof[0];
    assert_eq!(check(twice), bad);
    // The certificate claims another state or sequence number than its Checkpoints.
    assert_eq!(check(CheckpointCert { state: d("other"), ..checkpoint_cert(8, d("s8")) }), bad);
    assert_eq!(check(CheckpointCert { seq: 4, ..checkpoint_cert(8, d("s8")) }), bad);
    // Checkpoints signed by Confirmation enclaves.
    let by_confirmation = CheckpointCert {
        seq: 8,
        state: d("s8"),
        proof: (1..4)
            .map(|r| {
                sign(r, Confirmation, Purpose::Checkpoint, Checkpoint { seq: 8, state: d("s8"), replica: ReplicaId(r) })
            })
            .collect(),
    };
    assert_eq!(check(by_confirmation), bad);
    // A genuine certificate at a sequence number that is not a checkpoint (not % K).
    assert_eq!(check(checkpoint_cert(6, d("s6"))), bad);
    // Sequence number 0 with another state than genesis, or with a proof attached.
    assert_eq!(check(CheckpointCert { seq: 0, state: d("not genesis"), proof: vec![] }), bad);
    assert_eq!(check(checkpoint_cert(0, genesis())), bad);
    // An empty proof for a later checkpoint.
    assert_eq!(check(CheckpointCert { seq: 8, state: d("s8"), proof: vec![] }), bad);
}

// ---------------------------------------------------------------- check_new_view (7) (7')

/// SPEC §4.1 (7), §4.2 (7'): a NewView from the new primary with a quorum of valid
/// ViewChanges and the `O` they imply passes at both depths and yields its view, the
/// chosen checkpoint and its PrePrepares.
#[test]
fn a_good_new_view_is_accepted() {
    let nv = good_new_view_1();
    for depth in [Full, Shallow] {
        let accepted = check_nv(&nv, depth).unwrap();
        assert_eq!(accepted.view, 1);
        assert_eq!(accepted.stable, genesis_cert());
        assert_eq!(accepted.pre_prepares, nv.body.pre_prepares);
        assert_eq!(accepted.pre_prepares.iter().map(|pp| pp.body).collect::<Vec<_>>(), expected_o_view_1());
    }
    // With all four ViewChanges, and with a non-genesis checkpoint adopted.
    let vcs = vec![
        view_change(0, 2, checkpoint_cert(4, d("s4")), vec![prepared(1, 5, d("x"))]),
        view_change(1, 2, genesis_cert(), vec![prepared(0, 1, d("y"))]),
        view_change(2, 2, genesis_cert(), vec![]),
        view_change(3, 2, checkpoint_cert(4, d("s4")), vec![]),
    ];
    let (stable, o) = compute_o(2, &vcs);
    assert_eq!(o, vec![o_entry(2, 5, d("x"))]);
    let accepted = check_nv(&new_view(2, vcs, &o), Full).unwrap();
    assert_eq!(accepted.stable, stable);
    assert_eq!(accepted.stable.seq, 4);
    // Empty O.
    let vcs: Vec<_> = (1..4).map(|r| view_change(r, 1, genesis_cert(), vec![])).collect();
    assert!(check_nv(&new_view(1, vcs, &[]), Full).unwrap().pre_prepares.is_empty());
}

/// SPEC §4.1 (7) vs §4.2 (7'): a NewView whose `O` differs from what its ViewChanges imply
/// — a digest swapped, an entry missing, an extra entry — is refused by Preparation
/// (`Depth::Full`, `WrongO`), and by design NOT by Confirmation and Execution
/// (`Depth::SignaturesAndCheckpoint`), which rely on Preparation's check (paper §4).
#[test]
fn a_wrong_o_is_refused_at_full_depth_only() {
    let good = expected_o_view_1();
    let mut swapped = good.clone();
    swapped[0].digest = d("forged");
    let mut null_replaced = good.clone();
    null_replaced[1].digest = d("forged");
    let mut real_nulled = good.clone();
    real_nulled[2].digest = null_digest();
    let missing_middle = vec![good[0], good[2]];
    let missing_last = good[..2].to_vec();
    let missing_all = Vec::new();
    let mut extra = good.clone();
    extra.push(o_entry(1, 4, d("extra")));
    for (name, o) in [
        ("swapped", swapped),
        ("null replaced", null_replaced),
        ("prepared nulled", real_nulled),
        ("missing middle", missing_middle),
        ("missing last", missing_last),
        ("missing all", missing_all),
        ("extra", extra),
    ] {
        let nv = new_view(1, quorum_for_view_1(), &o);
        assert_eq!(check_nv(&nv, Full), Err(ViewChangeError::WrongO), "{name}");
        let accepted = check_nv(&nv, Shallow).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(accepted.pre_prepares.iter().map(|pp| pp.body).collect::<Vec<_>>(), o, "{name}");
    }
}

/// Whatever the depth, the PrePrepares a NewView carries must be the new primary's, of the
/// new view, in increasing order above the checkpoint and within `L` of it: every
/// compartment uses them as PrePrepares of `v'`.
#[test]
fn pre_prepares_in_o_must_be_signed_by_the_new_primary_for_the_new_view() {
    // One PrePrepare with a broken signature.
    let mut nv = good_new_view_1();
    nv.body.pre_prepares[1].sig.0[9] ^= 0x01;
    nv = sign(1, Preparation, Purpose::NewView, nv.body);
    for depth in [Full, Shallow] {
        assert_eq!(check_nv(&nv, depth), Err(ViewChangeError::Cert(CertError::BadSignature(ReplicaId(1)))));
    }
    // Signed by the old primary.
    let mut nv = good_new_view_1();
    nv.body.pre_prepares[0] = sign(0, Preparation, Purpose::PrePrepare, nv.body.pre_prepares[0].body);
    nv = sign(1, Preparation, Purpose::NewView, nv.body);
    for depth in [Full, Shallow] {
        assert_eq!(check_nv(&nv, depth), Err(ViewChangeError::Cert(CertError::BadSignature(ReplicaId(1)))));
    }
    // PrePrepares of the old view (signed by its primary): the digests are right, the view
    // is not.
    let old: Vec<_> = expected_o_view_1().into_iter().map(|pp| PrePrepare { view: 0, ..pp }).collect();
    let mut nv = good_new_view_1();
    nv.body.pre_prepares = old.iter().map(|pp| sign(0, Preparation, Purpose::PrePrepare, *pp)).collect();
    nv = sign(1, Preparation, Purpose::NewView, nv.body);
    for depth in [Full, Shallow] {
        assert_eq!(check_nv(&nv, depth), Err(ViewChangeError::WrongO));
    }
    // The same entries out of order or repeated.
    let good = expected_o_view_1();
    for o in [vec![good[1], good[0], good[2]], vec![good[0], good[0], good[1], good[2]]] {
        let nv = new_view(1, quorum_for_view_1(), &o);
        for depth in [Full, Shallow] {
            assert_eq!(check_nv(&nv, depth), Err(ViewChangeError::WrongO), "{o:?}");
        }
    }
    // An entry beyond the window, or at the checkpoint itself.
    for o in [vec![o_entry(1, L + 1, d("far"))], vec![o_entry(1, 0, d("zero"))]] {
        let nv = new_view(1, quorum_for_view_1(), &o);
        assert_eq!(check_nv(&nv, Shallow), Err(ViewChangeError::WrongO), "{o:?}");
    }
}

/// SPEC §3 NewView row: signed by Preparation(primary(v')), nobody else.
#[test]
fn a_new_view_not_signed_by_the_new_primarys_preparation_is_refused() {
    let body = good_new_view_1().body;
    let forged = Err(ViewChangeError::Cert(CertError::BadSignature(ReplicaId(1))));
    for (r, kind) in [(2, Preparation), (0, Preparation), (1, Confirmation), (1, Execution)] {
        let nv = sign(r, kind, Purpose::NewView, body.clone());
        for depth in [Full, Shallow] {
            assert_eq!(check_nv(&nv, depth), forged, "signed by r{r} {kind}");
        }
    }
    let mut flipped = good_new_view_1();
    flipped.sig.0[0] ^= 0x80;
    assert_eq!(check_nv(&flipped, Shallow), forged);
    // Right key, wrong domain tag.
    let nv = sign(1, Preparation, Purpose::PrePrepare, body);
    assert_eq!(check_nv(&nv, Full), forged);
}

/// SPEC §4.1 (6), §3: a NewView needs `2f + 1` ViewChanges for its own view from distinct
/// Confirmation enclaves, each valid.
#[test]
fn a_new_view_without_a_quorum_of_view_changes_is_refused() {
    let quorum = quorum_for_view_1();
    let o = expected_o_view_1();
    let bad_quorum = Err(ViewChangeError::BadQuorum);
    // 2f ViewChanges (with the O the remaining two imply).
    let two = quorum[1..].to_vec();
    let (_, o_two) = compute_o(1, &two);
    for depth in [Full, Shallow] {
        assert_eq!(check_nv(&new_view(1, two.clone(), &o_two), depth), bad_quorum);
        assert_eq!(check_nv(&new_view(1, vec![], &[]), depth), bad_quorum);
    }
    // 2f + 1 entries but one sender twice.
    let dup = vec![quorum[0].clone(), quorum[1].clone(), quorum[1].clone()];
    let (_, o_dup) = compute_o(1, &dup);
    for depth in [Full, Shallow] {
        assert_eq!(check_nv(&new_view(1, dup.clone(), &o_dup), depth), bad_quorum);
    }
    // The same sender twice with two different (both validly signed) ViewChanges.
    let mut four = quorum.clone();
    four.push(view_change(2, 1, genesis_cert(), vec![]));
    for depth in [Full, Shallow] {
        assert_eq!(check_nv(&new_view(1, four.clone(), &o), depth), bad_quorum);
    }
    // A ViewChange for another view (a higher one, or the old one).
    for other in [2, 0] {
        let mut mixed = quorum.clone();
        mixed[2] = view_change(3, other, genesis_cert(), vec![]);
        for depth in [Full, Shallow] {
            assert_eq!(check_nv(&new_view(1, mixed.clone(), &o), depth), bad_quorum, "view {other}");
        }
    }
    // A ViewChange with a forged signature inside.
    let mut forged = quorum.clone();
    forged[2].sig.0[1] ^= 0x01;
    for depth in [Full, Shallow] {
        assert_eq!(
            check_nv(&new_view(1, forged.clone(), &o), depth),
            Err(ViewChangeError::Cert(CertError::BadSignature(ReplicaId(3))))
        );
    }
    // A ViewChange with a fake prepared certificate: refused at full depth only.
    let mut fake = quorum.clone();
    let mut cert = prepared(0, 1, d("a"));
    cert.prepares.truncate(1);
    fake[2] = view_change(3, 1, genesis_cert(), vec![cert]);
    let (_, o_fake) = compute_o(1, &fake);
    let nv = new_view(1, fake, &o_fake);
    assert_eq!(check_nv(&nv, Full), Err(ViewChangeError::Cert(CertError::TooFew { have: 1, need: 2 })));
    assert!(check_nv(&nv, Shallow).is_ok());
    // A ViewChange with a bad checkpoint certificate: refused at both depths.
    let mut bad_cp = quorum;
    bad_cp[2] = view_change(3, 1, CheckpointCert { seq: 4, state: d("s4"), proof: vec![] }, vec![]);
    for depth in [Full, Shallow] {
        assert_eq!(check_nv(&new_view(1, bad_cp.clone(), &o), depth), Err(ViewChangeError::BadCheckpoint));
    }
}

/// Issue 11 finding (4): a faulty Confirmation's ViewChange claims a prepared certificate
/// at `s = 2^40` (nothing inside it is genuine) and a faulty new primary puts it in a
/// NewView. Confirmation and Execution check NewViews at the shallow depth, and on
/// 106ccbb `compute_o` then built `(stable + 1 ..= 2^40)`: an allocation of terabytes in
/// every correct Confirmation and Execution. Positions are now checked at every depth
/// before `O` is built, and `compute_o_within` bounds `O` by `L` by itself.
#[test]
fn a_huge_claimed_sequence_number_is_refused_at_every_depth_without_building_o() {
    let huge = 1u64 << 40;
    let fake = PreparedCert { pre_prepare: pre_prepare(0, huge, d("x")), prepares: vec![] };
    let vcs = vec![
        view_change(0, 1, genesis_cert(), vec![]),
        view_change(2, 1, genesis_cert(), vec![fake.clone()]),
        view_change(3, 1, genesis_cert(), vec![]),
    ];
    let nv = new_view(1, vcs.clone(), &[]);
    for depth in [Full, Shallow, Depth::Signature] {
        assert_eq!(check_vc(&vcs[1], depth), Err(ViewChangeError::BadPrepared), "{depth:?}");
        assert_eq!(check_nv(&nv, depth), Err(ViewChangeError::BadPrepared), "{depth:?}");
    }
    let (stable, o) = splitbft_types::viewchange::compute_o_within(1, L, &vcs);
    assert_eq!((stable.seq, o.len()), (0, 0), "positions beyond min-s + L are ignored");
}
