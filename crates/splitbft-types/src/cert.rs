//! Signature checks on receipt (SPEC §9 L1) and quorum certificates (SPEC §3):
//!
//! * prepare certificate: the PrePrepare of Preparation(primary(v)) plus `2f` Prepares with
//!   the same `(v, s, d)` from distinct Preparation enclaves other than the primary's;
//! * commit certificate: `2f + 1` Commits for one `(v, s, d)` from distinct Confirmation
//!   enclaves;
//! * checkpoint certificate: `2f + 1` Checkpoints for one `(s, D)` from distinct Execution
//!   enclaves.
//!
//! Compartments collect votes one at a time with [`VoteSet`]; whole certificates (carried
//! in ViewChange and NewView) are checked with the `check_*` functions.

use crate::config::{Keyring, ProtocolConfig};
use crate::crypto::Purpose;
use crate::ids::{CompartmentKind, EnclaveId, ReplicaId, Seq, View};
use crate::msg::{Checkpoint, Commit, Digest, PrePrepare, Prepare, Signed};

/// Why a message or certificate was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// The claimed signer is not a replica of this cluster.
    #[error("unknown replica {0}")]
    UnknownReplica(ReplicaId),
    /// The signature does not verify under the claimed signer's key.
    #[error("bad signature from {0}")]
    BadSignature(ReplicaId),
    /// Two entries from the same signer.
    #[error("duplicate sender {0}")]
    DuplicateSender(ReplicaId),
    /// An entry for another view, sequence number or digest than the rest.
    #[error("entry from {0} does not match the certificate")]
    Mismatch(ReplicaId),
    /// A Prepare from the primary, which only sends the PrePrepare.
    #[error("prepare from the primary {0}")]
    PrepareFromPrimary(ReplicaId),
    /// Fewer distinct valid entries than the quorum.
    #[error("{have} entries, need {need}")]
    TooFew {
        /// Valid distinct entries.
        have: usize,
        /// Required.
        need: usize,
    },
}

/// A signed protocol body: who signed it and for what.
pub trait SignedBody: serde::Serialize {
    /// Compartment kind of the signer.
    const SIGNER: CompartmentKind;
    /// Domain tag of the signature.
    const PURPOSE: Purpose;
    /// The replica whose enclave signed it (`primary` for a PrePrepare).
    fn signer(&self, config: &ProtocolConfig) -> ReplicaId;
}

impl SignedBody for PrePrepare {
    const SIGNER: CompartmentKind = CompartmentKind::Preparation;
    const PURPOSE: Purpose = Purpose::PrePrepare;
    fn signer(&self, config: &ProtocolConfig) -> ReplicaId {
        config.primary(self.view)
    }
}

impl SignedBody for Prepare {
    const SIGNER: CompartmentKind = CompartmentKind::Preparation;
    const PURPOSE: Purpose = Purpose::Prepare;
    fn signer(&self, _: &ProtocolConfig) -> ReplicaId {
        self.replica
    }
}

impl SignedBody for Commit {
    const SIGNER: CompartmentKind = CompartmentKind::Confirmation;
    const PURPOSE: Purpose = Purpose::Commit;
    fn signer(&self, _: &ProtocolConfig) -> ReplicaId {
        self.replica
    }
}

impl SignedBody for Checkpoint {
    const SIGNER: CompartmentKind = CompartmentKind::Execution;
    const PURPOSE: Purpose = Purpose::Checkpoint;
    fn signer(&self, _: &ProtocolConfig) -> ReplicaId {
        self.replica
    }
}

impl SignedBody for crate::msg::ViewChange {
    const SIGNER: CompartmentKind = CompartmentKind::Confirmation;
    const PURPOSE: Purpose = Purpose::ViewChange;
    fn signer(&self, _: &ProtocolConfig) -> ReplicaId {
        self.replica
    }
}

impl SignedBody for crate::msg::NewView {
    const SIGNER: CompartmentKind = CompartmentKind::Preparation;
    const PURPOSE: Purpose = Purpose::NewView;
    fn signer(&self, config: &ProtocolConfig) -> ReplicaId {
        config.primary(self.view)
    }
}

/// Verifies the signature of `msg` under its claimed signer's key; returns the signer.
pub fn verify_signed<T: SignedBody>(
    config: &ProtocolConfig,
    keys: &Keyring,
    msg: &Signed<T>,
) -> Result<ReplicaId, CertError> {
    let replica = msg.body.signer(config);
    let key = keys.enclave(EnclaveId { replica, kind: T::SIGNER }).ok_or(CertError::UnknownReplica(replica))?;
    let Some(cache) = &config.pbft_shared_verification else {
        key.verify(config.cluster_id, T::PURPOSE, &msg.body, &msg.sig).map_err(|_| CertError::BadSignature(replica))?;
        return Ok(replica);
    };
    let id = crate::crypto::signed_id(config.cluster_id, T::PURPOSE, &msg.body, &msg.sig, key);
    if !cache.contains(&id) {
        key.verify(config.cluster_id, T::PURPOSE, &msg.body, &msg.sig).map_err(|_| CertError::BadSignature(replica))?;
        cache.insert(id);
    }
    Ok(replica)
}

/// Signatures one part of a PBFT-baseline replica verified, so its other parts do not
/// verify them again: the replica is one trust domain (SPEC §8, "no duplicated work").
/// SplitBFT never uses it: every enclave verifies what it accepts (SPEC §9 L1).
#[derive(Debug, Default)]
pub struct VerifiedCache {
    ids: std::sync::Mutex<std::collections::BTreeSet<crate::msg::Digest>>,
}

/// Entries a [`VerifiedCache`] holds before it starts over (it is only an optimisation).
const VERIFIED_CACHE_ENTRIES: usize = 65_536;

impl VerifiedCache {
    fn contains(&self, id: &crate::msg::Digest) -> bool {
        self.ids.lock().is_ok_and(|ids| ids.contains(id))
    }

    fn insert(&self, id: crate::msg::Digest) {
        if let Ok(mut ids) = self.ids.lock() {
            if ids.len() >= VERIFIED_CACHE_ENTRIES {
                ids.clear();
            }
            ids.insert(id);
        }
    }
}

impl PartialEq for VerifiedCache {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for VerifiedCache {}

/// Whether `seq` lies in the log window `(h, h + L]` (SPEC §4.1).
pub fn in_window(config: &ProtocolConfig, low: Seq, seq: Seq) -> bool {
    seq > low && seq <= low.saturating_add(config.log_window)
}

/// At most one vote per replica for one log slot; the first verified vote of a replica
/// is kept, so a Byzantine sender cannot grow it past `n` entries.
#[derive(Clone, Debug)]
pub struct VoteSet<T> {
    votes: Vec<Option<Signed<T>>>,
}

impl<T: Copy> VoteSet<T> {
    /// An empty set for `n` replicas.
    pub fn new(n: usize) -> Self {
        VoteSet { votes: vec![None; n] }
    }

    /// Whether `replica` already voted.
    pub fn has(&self, replica: ReplicaId) -> bool {
        matches!(self.votes.get(replica.0 as usize), Some(Some(_)))
    }

    /// Records a verified vote; returns false if the replica already voted.
    pub fn insert(&mut self, replica: ReplicaId, vote: Signed<T>) -> bool {
        match self.votes.get_mut(replica.0 as usize) {
            Some(slot @ None) => {
                *slot = Some(vote);
                true
            }
            _ => false,
        }
    }

    /// Votes satisfying `pred`.
    pub fn matching<'a>(&'a self, pred: impl Fn(&T) -> bool + 'a) -> impl Iterator<Item = &'a Signed<T>> + 'a {
        self.votes.iter().flatten().filter(move |v| pred(&v.body))
    }

    /// Number of votes satisfying `pred`.
    pub fn count(&self, pred: impl Fn(&T) -> bool) -> usize {
        self.votes.iter().flatten().filter(|v| pred(&v.body)).count()
    }

    /// Number of votes held.
    pub fn len(&self) -> usize {
        self.votes.iter().flatten().count()
    }

    /// Whether no vote is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn check_quorum<T: SignedBody + Copy>(
    config: &ProtocolConfig,
    keys: &Keyring,
    entries: &[Signed<T>],
    same: impl Fn(&T) -> bool,
    exclude: Option<ReplicaId>,
    need: usize,
) -> Result<(), CertError> {
    let mut seen = VoteSet::<T>::new(config.n());
    for entry in entries {
        let replica = entry.body.signer(config);
        if replica.0 as usize >= config.n() {
            return Err(CertError::UnknownReplica(replica));
        }
        if seen.has(replica) {
            return Err(CertError::DuplicateSender(replica));
        }
        if Some(replica) == exclude {
            return Err(CertError::PrepareFromPrimary(replica));
        }
        if !same(&entry.body) {
            return Err(CertError::Mismatch(replica));
        }
        verify_signed(config, keys, entry)?;
        seen.insert(replica, *entry);
    }
    if seen.len() < need {
        return Err(CertError::TooFew { have: seen.len(), need });
    }
    Ok(())
}

/// Checks a prepare certificate for `pre_prepare`'s `(v, s, d)`.
pub fn check_prepare_certificate(
    config: &ProtocolConfig,
    keys: &Keyring,
    pre_prepare: &Signed<PrePrepare>,
    prepares: &[Signed<Prepare>],
) -> Result<(), CertError> {
    verify_signed(config, keys, pre_prepare)?;
    let pp = pre_prepare.body;
    check_quorum(
        config,
        keys,
        prepares,
        |p| (p.view, p.seq, p.digest) == (pp.view, pp.seq, pp.digest),
        Some(config.primary(pp.view)),
        2 * config.f as usize,
    )
}

/// Checks a commit certificate; returns its `(v, s, d)`.
pub fn check_commit_certificate(
    config: &ProtocolConfig,
    keys: &Keyring,
    commits: &[Signed<Commit>],
) -> Result<(View, Seq, Digest), CertError> {
    let first = commits.first().ok_or(CertError::TooFew { have: 0, need: config.quorum() })?.body;
    let key = (first.view, first.seq, first.digest);
    check_quorum(config, keys, commits, |c| (c.view, c.seq, c.digest) == key, None, config.quorum())?;
    Ok(key)
}

/// Checks a checkpoint certificate; returns its `(s, D)`.
pub fn check_checkpoint_certificate(
    config: &ProtocolConfig,
    keys: &Keyring,
    checkpoints: &[Signed<Checkpoint>],
) -> Result<(Seq, Digest), CertError> {
    let first = checkpoints.first().ok_or(CertError::TooFew { have: 0, need: config.quorum() })?.body;
    let key = (first.seq, first.state);
    check_quorum(config, keys, checkpoints, |c| (c.seq, c.state) == key, None, config.quorum())?;
    Ok(key)
}
