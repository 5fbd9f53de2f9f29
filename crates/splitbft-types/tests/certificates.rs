//! Signature checks on receipt (SPEC §9 L1) and the three quorum certificates of SPEC §3:
//! prepare (PrePrepare of primary(v) + `2f` Prepares from distinct non-primary Preparation
//! enclaves), commit (`2f + 1` Commits from distinct Confirmation enclaves) and checkpoint
//! (`2f + 1` Checkpoints from distinct Execution enclaves); plus the log window
//! `(h, h + L]` of SPEC §4.1.

#![allow(clippy::unwrap_used, reason = "test helpers: a failed setup step aborts the test")]

use std::sync::OnceLock;

use proptest::prelude::*;
use serde::Serialize;
use splitbft_types::cert::{
    CertError, check_checkpoint_certificate, check_commit_certificate, check_prepare_certificate, in_window,
    verify_signed,
};
use splitbft_types::config::Keyring;
use splitbft_types::crypto::Purpose;
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::msg::{Checkpoint, Commit, Digest, PrePrepare, Prepare, PreparedCert, Signed};
use splitbft_types::{CompartmentKind, ReplicaId, Seq, View};

use CompartmentKind::{Confirmation, Execution, Preparation};

struct Setup {
    secrets: ClusterSecrets,
    keys: Keyring,
}

impl Setup {
    fn new(f: u32) -> Setup {
        let mut secrets = ClusterSecrets::deterministic(11, f, 1, 5 + u64::from(f));
        secrets.config.checkpoint_interval = 4;
        secrets.config.log_window = 8;
        let keys = secrets.config.validate().unwrap();
        Setup { secrets, keys }
    }

    fn n(&self) -> u32 {
        self.secrets.config.n() as u32
    }

    /// `body` signed by enclave (`r`, `kind`) for `purpose` in this cluster.
    fn sign<T: Serialize>(&self, r: u32, kind: CompartmentKind, purpose: Purpose, body: T) -> Signed<T> {
        let sig = self.secrets.enclave(ReplicaId(r), kind).sign(self.secrets.config.cluster_id, purpose, &body);
        Signed { body, sig }
    }

    fn pre_prepare(&self, view: View, seq: Seq, digest: Digest) -> Signed<PrePrepare> {
        let primary = self.secrets.config.primary(view).0;
        self.sign(primary, Preparation, Purpose::PrePrepare, PrePrepare { view, seq, digest })
    }

    fn prepare(&self, r: u32, view: View, seq: Seq, digest: Digest) -> Signed<Prepare> {
        self.sign(r, Preparation, Purpose::Prepare, Prepare { view, seq, digest, replica: ReplicaId(r) })
    }

    fn commit(&self, r: u32, view: View, seq: Seq, digest: Digest) -> Signed<Commit> {
        self.sign(r, Confirmation, Purpose::Commit, Commit { view, seq, digest, replica: ReplicaId(r) })
    }

    fn checkpoint(&self, r: u32, seq: Seq, state: Digest) -> Signed<Checkpoint> {
        self.sign(r, Execution, Purpose::Checkpoint, Checkpoint { seq, state, replica: ReplicaId(r) })
    }

    fn prepare_cert(&self, pp: &Signed<PrePrepare>, prepares: &[Signed<Prepare>]) -> Result<(), CertError> {
        check_prepare_certificate(&self.secrets.config, &self.keys, pp, prepares)
    }

    fn commit_cert(&self, commits: &[Signed<Commit>]) -> Result<(View, Seq, Digest), CertError> {
        check_commit_certificate(&self.secrets.config, &self.keys, commits)
    }

    fn checkpoint_cert(&self, cps: &[Signed<Checkpoint>]) -> Result<(Seq, Digest), CertError> {
        check_checkpoint_certificate(&self.secrets.config, &self.keys, cps)
    }
}

/// Setups for `f = 1` (n = 4) and `f = 2` (n = 7), built once (key derivation is not free).
fn setup(f: u32) -> &'static Setup {
    static ONE: OnceLock<Setup> = OnceLock::new();
    static TWO: OnceLock<Setup> = OnceLock::new();
    match f {
        1 => ONE.get_or_init(|| Setup::new(1)),
        2 => TWO.get_or_init(|| Setup::new(2)),
        _ => unreachable!("only f = 1 and f = 2 are used"),
    }
}

fn d(tag: &str) -> Digest {
    Digest::of(tag.as_bytes())
}

/// Flips one bit of a signature.
fn flip<T>(mut msg: Signed<T>, byte: usize) -> Signed<T> {
    msg.sig.0[byte] ^= 0x01;
    msg
}

// ---------------------------------------------------------------- verify_signed (L1)

/// SPEC §9 L1: a message is accepted only under the key of the enclave that must have
/// signed it; the signer of a PrePrepare is primary(v), not a field of the message.
#[test]
fn verify_signed_accepts_the_claimed_signer_and_nothing_else() {
    let s = setup(1);
    let cfg = &s.secrets.config;
    let prepare = s.prepare(2, 0, 1, d("a"));
    assert_eq!(verify_signed(cfg, &s.keys, &prepare), Ok(ReplicaId(2)));

    // One flipped byte anywhere in the signature.
    for byte in [0, 31, 32, 63] {
        assert_eq!(verify_signed(cfg, &s.keys, &flip(prepare, byte)), Err(CertError::BadSignature(ReplicaId(2))));
    }
    // The body changed after signing.
    let mut altered = prepare;
    altered.body.seq = 2;
    assert_eq!(verify_signed(cfg, &s.keys, &altered), Err(CertError::BadSignature(ReplicaId(2))));
    // Claims replica 2, signed by replica 3's Preparation enclave (impersonation).
    let body = Prepare { view: 0, seq: 1, digest: d("a"), replica: ReplicaId(2) };
    let forged = s.sign(3, Preparation, Purpose::Prepare, body);
    assert_eq!(verify_signed(cfg, &s.keys, &forged), Err(CertError::BadSignature(ReplicaId(2))));
    // Right replica, wrong compartment: replica 2's Confirmation key cannot sign a Prepare.
    let wrong_kind = s.sign(2, Confirmation, Purpose::Prepare, body);
    assert_eq!(verify_signed(cfg, &s.keys, &wrong_kind), Err(CertError::BadSignature(ReplicaId(2))));
    // Right key, wrong domain tag (a Commit signature replayed as a Prepare).
    let wrong_purpose = s.sign(2, Preparation, Purpose::Commit, body);
    assert_eq!(verify_signed(cfg, &s.keys, &wrong_purpose), Err(CertError::BadSignature(ReplicaId(2))));
    // Right key, another cluster.
    let sig = s.secrets.enclave(ReplicaId(2), Preparation).sign(cfg.cluster_id + 1, Purpose::Prepare, &body);
    assert_eq!(verify_signed(cfg, &s.keys, &Signed { body, sig }), Err(CertError::BadSignature(ReplicaId(2))));
    // A replica id outside 0..n.
    let unknown = s.sign(1, Preparation, Purpose::Prepare, Prepare { replica: ReplicaId(4), ..body });
    assert_eq!(verify_signed(cfg, &s.keys, &unknown), Err(CertError::UnknownReplica(ReplicaId(4))));
    let far = s.sign(1, Preparation, Purpose::Prepare, Prepare { replica: ReplicaId(u32::MAX), ..body });
    assert_eq!(verify_signed(cfg, &s.keys, &far), Err(CertError::UnknownReplica(ReplicaId(u32::MAX))));
}

/// SPEC §3: a PrePrepare is signed by Preparation(primary(v)); the same header signed by
/// another replica's Preparation enclave, or for another view, is refused.
#[test]
fn verify_signed_pre_prepare_only_from_the_primary_of_its_view() {
    let s = setup(1);
    let cfg = &s.secrets.config;
    assert_eq!(verify_signed(cfg, &s.keys, &s.pre_prepare(0, 1, d("a"))), Ok(ReplicaId(0)));
    assert_eq!(verify_signed(cfg, &s.keys, &s.pre_prepare(5, 1, d("a"))), Ok(ReplicaId(1)));
    let by_backup = s.sign(1, Preparation, Purpose::PrePrepare, PrePrepare { view: 0, seq: 1, digest: d("a") });
    assert_eq!(verify_signed(cfg, &s.keys, &by_backup), Err(CertError::BadSignature(ReplicaId(0))));
    // Primary 0's signature for view 0 does not carry over to view 4 (also primary 0)...
    let mut moved = s.pre_prepare(0, 1, d("a"));
    moved.body.view = 4;
    assert_eq!(verify_signed(cfg, &s.keys, &moved), Err(CertError::BadSignature(ReplicaId(0))));
    // ...nor to view 1, whose primary is replica 1.
    moved.body.view = 1;
    assert_eq!(verify_signed(cfg, &s.keys, &moved), Err(CertError::BadSignature(ReplicaId(1))));
}

// ---------------------------------------------------------------- prepare certificate

/// SPEC §3: PrePrepare of primary(v) plus `2f` matching Prepares from distinct backups.
#[test]
fn prepare_certificate_good_is_accepted() {
    let s = setup(1);
    let pp = s.pre_prepare(0, 3, d("a"));
    s.prepare_cert(&pp, &[s.prepare(1, 0, 3, d("a")), s.prepare(2, 0, 3, d("a"))]).unwrap();
    s.prepare_cert(&pp, &[s.prepare(3, 0, 3, d("a")), s.prepare(1, 0, 3, d("a"))]).unwrap();
    s.prepare_cert(&pp, &[s.prepare(3, 0, 3, d("a")), s.prepare(2, 0, 3, d("a")), s.prepare(1, 0, 3, d("a"))]).unwrap();
    // View 1: the primary is replica 1, so replica 0 is a backup.
    let pp1 = s.pre_prepare(1, 3, d("a"));
    s.prepare_cert(&pp1, &[s.prepare(0, 1, 3, d("a")), s.prepare(2, 1, 3, d("a"))]).unwrap();
}

#[test]
fn prepare_certificate_with_forged_signatures_is_bad_signature() {
    let s = setup(1);
    let pp = s.pre_prepare(0, 3, d("a"));
    let p1 = s.prepare(1, 0, 3, d("a"));
    let p2 = s.prepare(2, 0, 3, d("a"));
    // The PrePrepare itself: flipped, or signed by a backup.
    assert_eq!(s.prepare_cert(&flip(pp, 7), &[p1, p2]), Err(CertError::BadSignature(ReplicaId(0))));
    let by_backup = s.sign(2, Preparation, Purpose::PrePrepare, pp.body);
    assert_eq!(s.prepare_cert(&by_backup, &[p1, p2]), Err(CertError::BadSignature(ReplicaId(0))));
    // A Prepare with one byte flipped.
    assert_eq!(s.prepare_cert(&pp, &[p1, flip(p2, 40)]), Err(CertError::BadSignature(ReplicaId(2))));
    // A Prepare claiming replica 2, signed by replica 3.
    let forged = s.sign(3, Preparation, Purpose::Prepare, p2.body);
    assert_eq!(s.prepare_cert(&pp, &[p1, forged]), Err(CertError::BadSignature(ReplicaId(2))));
    // A bad entry spoils the certificate even when enough good ones are present.
    let p3 = s.prepare(3, 0, 3, d("a"));
    assert_eq!(s.prepare_cert(&pp, &[p1, p3, flip(p2, 0)]), Err(CertError::BadSignature(ReplicaId(2))));
}

#[test]
fn prepare_certificate_rejects_duplicates_mismatches_primary_unknown_and_too_few() {
    let s = setup(1);
    let pp = s.pre_prepare(0, 3, d("a"));
    let p1 = s.prepare(1, 0, 3, d("a"));
    let p2 = s.prepare(2, 0, 3, d("a"));
    // The same sender twice does not make two votes.
    assert_eq!(s.prepare_cert(&pp, &[p1, p1]), Err(CertError::DuplicateSender(ReplicaId(1))));
    // Same sender, a second (also validly signed) Prepare for the same slot.
    let p1_again = s.prepare(1, 0, 3, d("a"));
    assert_eq!(s.prepare_cert(&pp, &[p1, p2, p1_again]), Err(CertError::DuplicateSender(ReplicaId(1))));
    // Entries for another view, sequence number or digest than the PrePrepare.
    assert_eq!(s.prepare_cert(&pp, &[p1, s.prepare(2, 4, 3, d("a"))]), Err(CertError::Mismatch(ReplicaId(2))));
    assert_eq!(s.prepare_cert(&pp, &[p1, s.prepare(2, 0, 4, d("a"))]), Err(CertError::Mismatch(ReplicaId(2))));
    assert_eq!(s.prepare_cert(&pp, &[s.prepare(3, 0, 3, d("b")), p2]), Err(CertError::Mismatch(ReplicaId(3))));
    // A Prepare from the primary (which only sends the PrePrepare).
    let from_primary = s.prepare(0, 0, 3, d("a"));
    assert_eq!(s.prepare_cert(&pp, &[p1, from_primary]), Err(CertError::PrepareFromPrimary(ReplicaId(0))));
    assert_eq!(s.prepare_cert(&pp, &[from_primary, p1, p2]), Err(CertError::PrepareFromPrimary(ReplicaId(0))));
    // In view 1 replica 1 is the primary.
    let pp1 = s.pre_prepare(1, 3, d("a"));
    assert_eq!(
        s.prepare_cert(&pp1, &[s.prepare(1, 1, 3, d("a")), s.prepare(2, 1, 3, d("a"))]),
        Err(CertError::PrepareFromPrimary(ReplicaId(1)))
    );
    // Replica ids outside 0..n.
    let unknown = s.sign(1, Preparation, Purpose::Prepare, Prepare { replica: ReplicaId(4), ..p1.body });
    assert_eq!(s.prepare_cert(&pp, &[p1, unknown, p2]), Err(CertError::UnknownReplica(ReplicaId(4))));
    // Fewer than 2f.
    assert_eq!(s.prepare_cert(&pp, &[p1]), Err(CertError::TooFew { have: 1, need: 2 }));
    assert_eq!(s.prepare_cert(&pp, &[]), Err(CertError::TooFew { have: 0, need: 2 }));
}

/// `PreparedCert::well_formed`, the shape Confirmation asserts before every Commit (SPEC §9
/// C2), at f = 1 and f = 2: exactly `2f` distinct backups for the PrePrepare's `(v, s, d)`.
#[test]
fn prepared_cert_shape_is_exactly_2f_distinct_backups_for_the_slot() {
    for f in [1, 2] {
        let s = setup(f);
        let primary = s.secrets.config.primary(0);
        let pp = s.pre_prepare(0, 3, d("a"));
        let cert = |rs: &[u32], digest: Digest| PreparedCert {
            pre_prepare: pp,
            prepares: rs.iter().map(|r| s.prepare(*r, 0, 3, digest)).collect(),
        };
        let backups: Vec<u32> = (1..=2 * f).collect();
        assert!(cert(&backups, d("a")).well_formed(f, primary));
        assert!(!cert(&backups[1..], d("a")).well_formed(f, primary), "f = {f}: too few");
        assert!(!cert(&(1..=2 * f + 1).collect::<Vec<_>>(), d("a")).well_formed(f, primary), "too many");
        let mut twice = backups.clone();
        twice[0] = twice[1];
        assert!(!cert(&twice, d("a")).well_formed(f, primary), "f = {f}: one backup twice");
        let mut with_primary = backups.clone();
        with_primary[0] = primary.0;
        assert!(!cert(&with_primary, d("a")).well_formed(f, primary), "f = {f}: the primary's Prepare");
        assert!(!cert(&backups, d("b")).well_formed(f, primary), "f = {f}: another digest");
    }
}

// ---------------------------------------------------------------- commit certificate

#[test]
fn commit_certificate_good_is_accepted_and_names_its_slot() {
    let s = setup(1);
    let c: Vec<_> = (0..4).map(|r| s.commit(r, 2, 9, d("x"))).collect();
    assert_eq!(s.commit_cert(&c[..3]), Ok((2, 9, d("x"))));
    assert_eq!(s.commit_cert(&c[1..]), Ok((2, 9, d("x"))));
    assert_eq!(s.commit_cert(&[c[3], c[0], c[2], c[1]]), Ok((2, 9, d("x"))));
}

#[test]
fn commit_certificate_rejects_every_bad_entry() {
    let s = setup(1);
    let c: Vec<_> = (0..4).map(|r| s.commit(r, 2, 9, d("x"))).collect();
    assert_eq!(s.commit_cert(&[c[0], flip(c[1], 12), c[2]]), Err(CertError::BadSignature(ReplicaId(1))));
    let forged = s.sign(3, Confirmation, Purpose::Commit, c[1].body);
    assert_eq!(s.commit_cert(&[c[0], forged, c[2]]), Err(CertError::BadSignature(ReplicaId(1))));
    // A Preparation enclave cannot stand in for a Confirmation enclave.
    let wrong_kind = s.sign(1, Preparation, Purpose::Commit, c[1].body);
    assert_eq!(s.commit_cert(&[c[0], wrong_kind, c[2]]), Err(CertError::BadSignature(ReplicaId(1))));
    assert_eq!(s.commit_cert(&[c[0], c[1], c[0]]), Err(CertError::DuplicateSender(ReplicaId(0))));
    assert_eq!(s.commit_cert(&[c[0], c[1], s.commit(2, 3, 9, d("x"))]), Err(CertError::Mismatch(ReplicaId(2))));
    assert_eq!(s.commit_cert(&[c[0], c[1], s.commit(2, 2, 10, d("x"))]), Err(CertError::Mismatch(ReplicaId(2))));
    assert_eq!(s.commit_cert(&[c[0], c[1], s.commit(2, 2, 9, d("y"))]), Err(CertError::Mismatch(ReplicaId(2))));
    let unknown = s.sign(0, Confirmation, Purpose::Commit, Commit { replica: ReplicaId(7), ..c[0].body });
    assert_eq!(s.commit_cert(&[c[0], c[1], unknown]), Err(CertError::UnknownReplica(ReplicaId(7))));
    assert_eq!(s.commit_cert(&c[..2]), Err(CertError::TooFew { have: 2, need: 3 }));
    assert_eq!(s.commit_cert(&[]), Err(CertError::TooFew { have: 0, need: 3 }));
}

// ---------------------------------------------------------------- checkpoint certificate

#[test]
fn checkpoint_certificate_good_is_accepted_and_names_its_state() {
    let s = setup(1);
    let c: Vec<_> = (0..4).map(|r| s.checkpoint(r, 8, d("state"))).collect();
    assert_eq!(s.checkpoint_cert(&c[..3]), Ok((8, d("state"))));
    assert_eq!(s.checkpoint_cert(&[c[2], c[3], c[0]]), Ok((8, d("state"))));
    assert_eq!(s.checkpoint_cert(&c), Ok((8, d("state"))));
}

#[test]
fn checkpoint_certificate_rejects_every_bad_entry() {
    let s = setup(1);
    let c: Vec<_> = (0..4).map(|r| s.checkpoint(r, 8, d("state"))).collect();
    assert_eq!(s.checkpoint_cert(&[c[0], c[1], flip(c[2], 63)]), Err(CertError::BadSignature(ReplicaId(2))));
    let forged = s.sign(0, Execution, Purpose::Checkpoint, c[2].body);
    assert_eq!(s.checkpoint_cert(&[c[0], c[1], forged]), Err(CertError::BadSignature(ReplicaId(2))));
    let wrong_kind = s.sign(2, Confirmation, Purpose::Checkpoint, c[2].body);
    assert_eq!(s.checkpoint_cert(&[c[0], c[1], wrong_kind]), Err(CertError::BadSignature(ReplicaId(2))));
    assert_eq!(s.checkpoint_cert(&[c[3], c[1], c[3]]), Err(CertError::DuplicateSender(ReplicaId(3))));
    assert_eq!(
        s.checkpoint_cert(&[c[0], c[1], s.checkpoint(2, 12, d("state"))]),
        Err(CertError::Mismatch(ReplicaId(2)))
    );
    assert_eq!(
        s.checkpoint_cert(&[c[0], c[1], s.checkpoint(2, 8, d("other"))]),
        Err(CertError::Mismatch(ReplicaId(2)))
    );
    let unknown = s.sign(0, Execution, Purpose::Checkpoint, Checkpoint { replica: ReplicaId(4), ..c[0].body });
    assert_eq!(s.checkpoint_cert(&[unknown, c[0], c[1]]), Err(CertError::UnknownReplica(ReplicaId(4))));
    assert_eq!(s.checkpoint_cert(&c[1..3]), Err(CertError::TooFew { have: 2, need: 3 }));
    assert_eq!(s.checkpoint_cert(&[]), Err(CertError::TooFew { have: 0, need: 3 }));
}

// ---------------------------------------------------------------- log window

/// SPEC §4.1: `h < s <= h + L`, tested at both bounds and one past each.
#[test]
fn in_window_bounds_are_exclusive_below_and_inclusive_above() {
    let s = setup(1);
    let cfg = &s.secrets.config;
    let l = cfg.log_window;
    for h in [0, 4, 16, 1000] {
        assert!(!in_window(cfg, h, h), "h = {h}");
        assert!(in_window(cfg, h, h + 1), "h + 1, h = {h}");
        assert!(in_window(cfg, h, h + l), "h + L, h = {h}");
        assert!(!in_window(cfg, h, h + l + 1), "h + L + 1, h = {h}");
        if h > 0 {
            assert!(!in_window(cfg, h, h - 1));
        }
    }
    assert!(!in_window(cfg, 0, u64::MAX));
    // Near the top of the sequence space the upper bound saturates instead of wrapping.
    assert!(in_window(cfg, u64::MAX - 3, u64::MAX));
    assert!(!in_window(cfg, u64::MAX - 3, 1));
}

// ---------------------------------------------------------------- properties

/// Indices of a random subset of `0..n`, in random order.
fn subset(n: usize) -> impl Strategy<Value = Vec<usize>> {
    proptest::sample::subsequence((0..n).collect::<Vec<_>>(), 0..=n).prop_shuffle()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any subset of distinct valid Commits, in any order, verifies iff it has `>= 2f + 1`
    /// entries; otherwise the error is exactly `TooFew`.
    #[test]
    fn commit_certificate_verifies_iff_quorum(f in 1u32..=2, pick in subset(7), seq in 1u64..100) {
        let s = setup(f);
        let n = s.n() as usize;
        let q = s.secrets.config.quorum();
        let entries: Vec<_> = pick.iter().filter(|&&i| i < n).map(|&i| s.commit(i as u32, 0, seq, d("p"))).collect();
        let res = s.commit_cert(&entries);
        if entries.len() >= q {
            prop_assert_eq!(res, Ok((0, seq, d("p"))));
        } else {
            prop_assert_eq!(res, Err(CertError::TooFew { have: entries.len(), need: q }));
        }
    }

    /// The same for checkpoint certificates.
    #[test]
    fn checkpoint_certificate_verifies_iff_quorum(f in 1u32..=2, pick in subset(7), k in 1u64..10) {
        let s = setup(f);
        let n = s.n() as usize;
        let q = s.secrets.config.quorum();
        let seq = k * s.secrets.config.checkpoint_interval;
        let entries: Vec<_> = pick.iter().filter(|&&i| i < n).map(|&i| s.checkpoint(i as u32, seq, d("st"))).collect();
        let res = s.checkpoint_cert(&entries);
        if entries.len() >= q {
            prop_assert_eq!(res, Ok((seq, d("st"))));
        } else {
            prop_assert_eq!(res, Err(CertError::TooFew { have: entries.len(), need: q }));
        }
    }

    /// Prepare certificates: any subset of distinct backups' Prepares, in any order,
    /// verifies iff it has `>= 2f` entries.
    #[test]
    fn prepare_certificate_verifies_iff_2f_backups(f in 1u32..=2, view in 0u64..8, pick in subset(7), seq in 1u64..100) {
        let s = setup(f);
        let n = s.n() as usize;
        let primary = s.secrets.config.primary(view).0 as usize;
        let need = 2 * f as usize;
        let pp = s.pre_prepare(view, seq, d("b"));
        let entries: Vec<_> = pick
            .iter()
            .filter(|&&i| i < n && i != primary)
            .map(|&i| s.prepare(i as u32, view, seq, d("b")))
            .collect();
        let res = s.prepare_cert(&pp, &entries);
        if entries.len() >= need {
            prop_assert_eq!(res, Ok(()));
        } else {
            prop_assert_eq!(res, Err(CertError::TooFew { have: entries.len(), need }));
        }
    }

    /// A quorum-sized certificate with one entry corrupted (any entry, any signature byte)
    /// never verifies.
    #[test]
    fn one_corrupted_entry_spoils_a_commit_certificate(pick in subset(4), victim in 0usize..4, byte in 0usize..64) {
        let s = setup(1);
        prop_assume!(pick.len() >= 3);
        let mut entries: Vec<_> = pick.iter().map(|&i| s.commit(i as u32, 1, 5, d("c"))).collect();
        let v = victim % entries.len();
        entries[v] = flip(entries[v], byte);
        prop_assert_eq!(s.commit_cert(&entries), Err(CertError::BadSignature(ReplicaId(pick[v] as u32))));
    }
}
