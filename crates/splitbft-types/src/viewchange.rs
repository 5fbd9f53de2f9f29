//! View-change certificates (SPEC §4.1 (6) (7), §4.2 (5) (7'), §9 C5): checking ViewChange
//! and NewView messages, and computing the NewView's set `O` exactly as PBFT does.
//!
//! Preparation checks everything, including every prepare certificate inside every
//! ViewChange, and recomputes `O` ([`Depth::Full`]). Confirmation and Execution check the
//! signatures and the checkpoint they adopt, but not `O` ([`Depth::SignaturesAndCheckpoint`]),
//! as the paper specifies: safety still rests on prepare certificates.

use std::collections::BTreeMap;

use crate::cert::{CertError, check_checkpoint_certificate, check_prepare_certificate, verify_signed};
use crate::codec::to_bytes;
use crate::config::{Keyring, ProtocolConfig};
use crate::counters::Counter;
use crate::ids::{ReplicaId, Seq, View};
use crate::msg::{CheckpointCert, Digest, NewView, PrePrepare, Request, Signed, ViewChange};

/// The encoded empty batch that fills gaps in `O` (PBFT's null request).
pub fn null_batch() -> Vec<u8> {
    to_bytes(&Vec::<Request>::new())
}

/// Digest of [`null_batch`].
pub fn null_digest() -> Digest {
    Digest::of(&null_batch())
}

/// Why a ViewChange or NewView was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ViewChangeError {
    /// A signature or certificate inside is invalid.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The stable checkpoint certificate is invalid.
    #[error("invalid checkpoint certificate")]
    BadCheckpoint,
    /// A prepared certificate is for a view not below the new one, or outside the window
    /// above the stable checkpoint, or sequence numbers repeat.
    #[error("prepared certificate out of place")]
    BadPrepared,
    /// A NewView carries ViewChanges for another view, or too few, or from one replica twice.
    #[error("view changes do not make a quorum for this view")]
    BadQuorum,
    /// The NewView's `O` differs from the one computed from its ViewChanges.
    #[error("NewView's O does not match its view changes")]
    WrongO,
}

/// The counter for a refused ViewChange (`new_view` false) or NewView (`new_view` true).
pub fn reject_counter(new_view: bool, e: ViewChangeError) -> Counter {
    match (new_view, e) {
        (false, ViewChangeError::Cert(CertError::BadSignature(_))) => Counter::ViewChangeBadSignature,
        (false, ViewChangeError::BadCheckpoint) => Counter::ViewChangeBadCheckpoint,
        (false, ViewChangeError::BadPrepared) => Counter::ViewChangeBadPrepared,
        (false, _) => Counter::ViewChangeBadCertificate,
        (true, ViewChangeError::Cert(CertError::BadSignature(_))) => Counter::NewViewBadSignature,
        (true, ViewChangeError::BadCheckpoint) => Counter::NewViewBadCheckpoint,
        (true, ViewChangeError::BadPrepared) => Counter::NewViewBadPrepared,
        (true, ViewChangeError::BadQuorum) => Counter::NewViewBadQuorum,
        (true, ViewChangeError::WrongO) => Counter::NewViewWrongO,
        (true, ViewChangeError::Cert(_)) => Counter::NewViewBadCertificate,
    }
}

/// How much of a ViewChange a compartment verifies. Every depth checks the positions of
/// the prepared certificates (views below the new one, sequence numbers strictly rising
/// inside the window above the stable checkpoint): that costs no signature and bounds
/// `O` by `L` whatever a faulty signer claims (issue 11 finding 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    /// Signature, checkpoint certificate and every prepared certificate (Preparation, C5).
    Full,
    /// Signature and checkpoint certificate only (Confirmation, Execution: paper §4).
    SignaturesAndCheckpoint,
    /// The sender's signature only: what a Preparation checks on receipt before storing a
    /// ViewChange, so that a flood of ViewChanges costs one verification each; the rest is
    /// checked once a quorum for the view is there (SPEC §4 bounded work).
    Signature,
}

/// Checks a checkpoint certificate; `genesis` is the digest of the initial state.
pub fn check_checkpoint_cert(
    config: &ProtocolConfig,
    keys: &Keyring,
    cert: &CheckpointCert,
    genesis: Digest,
) -> Result<(), ViewChangeError> {
    if cert.seq == 0 {
        return if cert.state == genesis && cert.proof.is_empty() {
            Ok(())
        } else {
            Err(ViewChangeError::BadCheckpoint)
        };
    }
    let (seq, state) =
        check_checkpoint_certificate(config, keys, &cert.proof).map_err(|_| ViewChangeError::BadCheckpoint)?;
    if (seq, state) != (cert.seq, cert.state) || !seq.is_multiple_of(config.checkpoint_interval) {
        return Err(ViewChangeError::BadCheckpoint);
    }
    Ok(())
}

/// Checks a ViewChange at `depth`; returns its sender.
pub fn check_view_change(
    config: &ProtocolConfig,
    keys: &Keyring,
    vc: &Signed<ViewChange>,
    genesis: Digest,
    depth: Depth,
) -> Result<ReplicaId, ViewChangeError> {
    let body = &vc.body;
    // Positions first: no signature needed, and nothing later may trust an unchecked one.
    let mut last = body.stable.seq;
    let top = body.stable.seq.saturating_add(config.log_window);
    for cert in &body.prepared {
        let pp = cert.pre_prepare.body;
        if pp.view >= body.view || pp.seq <= last || pp.seq > top {
            return Err(ViewChangeError::BadPrepared);
        }
        last = pp.seq;
    }
    let replica = verify_signed(config, keys, vc)?;
    if depth == Depth::Signature {
        return Ok(replica);
    }
    check_checkpoint_cert(config, keys, &body.stable, genesis)?;
    if depth == Depth::SignaturesAndCheckpoint {
        return Ok(replica);
    }
    for cert in &body.prepared {
        check_prepare_certificate(config, keys, &cert.pre_prepare, &cert.prepares)?;
    }
    Ok(replica)
}

/// `O` for view `view` from `2f + 1` ViewChanges, exactly as PBFT: `min-s` is the highest
/// stable checkpoint among them; for each `s` in `(min-s, max-s]` the digest prepared in
/// the highest view, else the null batch. Returns the chosen checkpoint and the bodies.
///
/// For ViewChanges that passed [`check_view_change`] (at any depth, which checks positions);
/// [`compute_o_within`] also bounds `O` by the window itself.
pub fn compute_o(view: View, view_changes: &[Signed<ViewChange>]) -> (CheckpointCert, Vec<PrePrepare>) {
    // Checked positions lie within `L` of their own (lower or equal) checkpoint.
    compute_o_within(view, u64::MAX, view_changes)
}

/// [`compute_o`] that ignores positions more than `log_window` (`L`) above `min-s`, so `O`
/// is bounded before it is built whatever the ViewChanges claim (issue 11 finding 4: a
/// claimed `s = 2^40` made every correct Confirmation and Execution allocate without bound).
pub fn compute_o_within(
    view: View,
    log_window: u64,
    view_changes: &[Signed<ViewChange>],
) -> (CheckpointCert, Vec<PrePrepare>) {
    let stable = view_changes
        .iter()
        .map(|vc| &vc.body.stable)
        .max_by_key(|c| c.seq)
        .cloned()
        .unwrap_or(CheckpointCert { seq: 0, state: Digest::default(), proof: Vec::new() });
    let mut best: BTreeMap<Seq, (View, Digest)> = BTreeMap::new();
    for cert in view_changes.iter().flat_map(|vc| &vc.body.prepared) {
        let pp = cert.pre_prepare.body;
        if pp.seq <= stable.seq || pp.seq > stable.seq.saturating_add(log_window) {
            continue;
        }
        let entry = best.entry(pp.seq).or_insert((pp.view, pp.digest));
        if pp.view > entry.0 {
            *entry = (pp.view, pp.digest);
        }
    }
    let max_s = best.keys().next_back().copied().unwrap_or(stable.seq);
    let o = (stable.seq + 1..=max_s)
        .map(|seq| PrePrepare { view, seq, digest: best.get(&seq).map_or_else(null_digest, |(_, d)| *d) })
        .collect();
    (stable, o)
}

/// What an accepted NewView tells a compartment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptedNewView {
    /// The new view.
    pub view: View,
    /// The checkpoint to adopt (7').
    pub stable: CheckpointCert,
    /// The PrePrepares of `O`, each signed by the new primary.
    pub pre_prepares: Vec<Signed<PrePrepare>>,
}

/// Checks a NewView: signer, a quorum of ViewChanges for its view from distinct replicas
/// (each checked at `depth`), every PrePrepare's signature, and with [`Depth::Full`] that
/// `O` is exactly what the ViewChanges imply.
pub fn check_new_view(
    config: &ProtocolConfig,
    keys: &Keyring,
    nv: &Signed<NewView>,
    genesis: Digest,
    depth: Depth,
) -> Result<AcceptedNewView, ViewChangeError> {
    verify_signed(config, keys, nv)?;
    let body = &nv.body;
    let mut seen = vec![false; config.n()];
    for vc in &body.view_changes {
        if vc.body.view != body.view {
            return Err(ViewChangeError::BadQuorum);
        }
        let replica = check_view_change(config, keys, vc, genesis, depth)?;
        let slot = seen.get_mut(replica.0 as usize).ok_or(ViewChangeError::BadQuorum)?;
        if std::mem::replace(slot, true) {
            return Err(ViewChangeError::BadQuorum);
        }
    }
    if body.view_changes.len() < config.quorum() {
        return Err(ViewChangeError::BadQuorum);
    }
    let (stable, o) = compute_o_within(body.view, config.log_window, &body.view_changes);
    let carried: Vec<PrePrepare> = body.pre_prepares.iter().map(|pp| pp.body).collect();
    if depth == Depth::Full && carried != o {
        return Err(ViewChangeError::WrongO);
    }
    // Every compartment uses these as PrePrepares of the new view: they must be the new
    // primary's, for this view, above the checkpoint, in order.
    let mut last = stable.seq;
    for pp in &body.pre_prepares {
        if pp.body.view != body.view
            || pp.body.seq <= last
            || pp.body.seq > stable.seq.saturating_add(config.log_window)
        {
            return Err(ViewChangeError::WrongO);
        }
        last = pp.body.seq;
        verify_signed(config, keys, pp)?;
    }
    Ok(AcceptedNewView { view: body.view, stable, pre_prepares: body.pre_prepares.clone() })
}
