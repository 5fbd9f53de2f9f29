//! Handler (9), duplicated in all three compartments (SPEC §4.4): collect Checkpoints,
//! and on a checkpoint certificate for `s > h` move the low watermark to `s`.

use std::collections::BTreeMap;

use crate::cert::{CertError, VoteSet, in_window, verify_signed};
use crate::config::{Keyring, ProtocolConfig};
use crate::ids::Seq;
use crate::msg::{Checkpoint, CheckpointCert, Digest, Signed};

/// Why a Checkpoint was not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointReject {
    /// `s` is not a multiple of `K`.
    #[error("checkpoint not at a multiple of K")]
    NotAtInterval,
    /// `s` is at or below the low watermark, or beyond `h + L`.
    #[error("checkpoint outside the log window")]
    OutsideWindow,
    /// The signer already sent a Checkpoint for `s`.
    #[error("duplicate checkpoint")]
    Duplicate,
    /// Signature or signer invalid.
    #[error(transparent)]
    Cert(#[from] CertError),
}

impl CheckpointReject {
    /// Counter name.
    pub fn name(&self) -> &'static str {
        match self {
            CheckpointReject::NotAtInterval => "checkpoint_not_at_interval",
            CheckpointReject::OutsideWindow => "checkpoint_outside_window",
            CheckpointReject::Duplicate => "checkpoint_duplicate",
            CheckpointReject::Cert(CertError::BadSignature(_)) => "checkpoint_bad_signature",
            CheckpointReject::Cert(_) => "checkpoint_bad_signer",
        }
    }
}

/// Checkpoint votes for the window `(h, h + L]`: at most `L / K` slots of `n` votes.
#[derive(Clone, Debug)]
pub struct CheckpointLog {
    votes: BTreeMap<Seq, VoteSet<Checkpoint>>,
    stable: CheckpointCert,
}

impl CheckpointLog {
    /// Starts at the genesis checkpoint `(0, genesis)`.
    pub fn new(genesis: Digest) -> Self {
        CheckpointLog { votes: BTreeMap::new(), stable: CheckpointCert { seq: 0, state: genesis, proof: Vec::new() } }
    }

    /// The low watermark `h`.
    pub fn low(&self) -> Seq {
        self.stable.seq
    }

    /// The latest stable checkpoint with its certificate.
    pub fn stable(&self) -> &CheckpointCert {
        &self.stable
    }

    /// Slots with pending votes.
    pub fn pending_slots(&self) -> usize {
        self.votes.len()
    }

    /// Adopts a checkpoint certified elsewhere (a NewView's, SPEC §4.4 (7')) if it is above
    /// `h`; the caller has checked the certificate. Returns whether `h` moved.
    pub fn adopt(&mut self, cert: CheckpointCert) -> bool {
        if cert.seq <= self.low() {
            return false;
        }
        self.votes = self.votes.split_off(&(cert.seq + 1));
        self.stable = cert;
        true
    }

    /// Counts a Checkpoint; returns the new stable checkpoint when this one completes a
    /// certificate for `s > h`.
    pub fn on_checkpoint(
        &mut self,
        config: &ProtocolConfig,
        keys: &Keyring,
        msg: &Signed<Checkpoint>,
    ) -> Result<Option<&CheckpointCert>, CheckpointReject> {
        let cp = msg.body;
        if !cp.seq.is_multiple_of(config.checkpoint_interval) {
            return Err(CheckpointReject::NotAtInterval);
        }
        if !in_window(config, self.low(), cp.seq) {
            return Err(CheckpointReject::OutsideWindow);
        }
        let n = config.n();
        if self.votes.get(&cp.seq).is_some_and(|v| v.has(cp.replica)) {
            return Err(CheckpointReject::Duplicate);
        }
        verify_signed(config, keys, msg)?;
        let slot = self.votes.entry(cp.seq).or_insert_with(|| VoteSet::new(n));
        slot.insert(cp.replica, *msg);
        let same = |c: &Checkpoint| c.state == cp.state;
        if slot.count(same) < config.quorum() {
            return Ok(None);
        }
        let proof: Vec<_> = slot.matching(same).copied().collect();
        self.stable = CheckpointCert { seq: cp.seq, state: cp.state, proof };
        self.votes = self.votes.split_off(&(cp.seq + 1));
        Ok(Some(&self.stable))
    }
}
