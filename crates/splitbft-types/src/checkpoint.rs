//! Handler (9), duplicated in all three compartments (SPEC §4.4): collect Checkpoints,
//! and on a checkpoint certificate for `s > h` move the low watermark to `s`.

use std::collections::BTreeMap;

use crate::cert::{CertError, VoteSet, in_window, verify_signed};
use crate::config::{Keyring, ProtocolConfig};
use crate::counters::Counter;
use crate::ids::Seq;
use crate::msg::{Checkpoint, CheckpointCert, Digest, Signed};

/// Why a Checkpoint was not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointReject {
    /// `s` is not a multiple of `K`.
    #[error("checkpoint not at a multiple of K")]
    NotAtInterval,
    /// `s` is at or below the low watermark.
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
    /// The counter for this refusal.
    pub fn counter(&self) -> Counter {
        match self {
            CheckpointReject::NotAtInterval => Counter::CheckpointNotAtInterval,
            CheckpointReject::OutsideWindow => Counter::CheckpointOutsideWindow,
            CheckpointReject::Duplicate => Counter::CheckpointDuplicate,
            CheckpointReject::Cert(CertError::BadSignature(_)) => Counter::CheckpointBadSignature,
            CheckpointReject::Cert(_) => Counter::CheckpointBadSigner,
        }
    }
}

/// Checkpoint votes for the window `(h, h + L]`: at most `L / K` slots of `n` votes.
#[derive(Clone, Debug)]
pub struct CheckpointLog {
    votes: BTreeMap<Seq, VoteSet<Checkpoint>>,
    /// Each replica's latest Checkpoint beyond `h + L`: a replica that fell behind learns
    /// of stable checkpoints past its window from these (PBFT's state-transfer trigger),
    /// with memory bounded by `n` whatever peers send.
    ahead: Vec<Option<Signed<Checkpoint>>>,
    stable: CheckpointCert,
}

impl CheckpointLog {
    /// Starts at the genesis checkpoint `(0, genesis)`.
    pub fn new(genesis: Digest) -> Self {
        CheckpointLog {
            votes: BTreeMap::new(),
            ahead: Vec::new(),
            stable: CheckpointCert { seq: 0, state: genesis, proof: Vec::new() },
        }
    }

    /// The low watermark `h`.
    pub fn low(&self) -> Seq {
        self.stable.seq
    }

    /// The latest stable checkpoint with its certificate.
    pub fn stable(&self) -> &CheckpointCert {
        &self.stable
    }

    /// Slots with pending votes (including the per-replica votes beyond the window).
    pub fn pending_slots(&self) -> usize {
        self.votes.len() + self.ahead.iter().flatten().count()
    }

    /// Adopts a checkpoint certified elsewhere (a NewView's, SPEC §4.4 (7')) if it is above
    /// `h`; the caller has checked the certificate. Returns whether `h` moved.
    pub fn adopt(&mut self, cert: CheckpointCert) -> bool {
        if cert.seq <= self.low() {
            return false;
        }
        self.make_stable(cert);
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
        if cp.seq <= self.low() {
            return Err(CheckpointReject::OutsideWindow);
        }
        let n = config.n();
        if !in_window(config, self.low(), cp.seq) {
            return self.on_checkpoint_ahead(config, keys, msg);
        }
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
        Ok(Some(self.make_stable(CheckpointCert { seq: cp.seq, state: cp.state, proof })))
    }

    fn on_checkpoint_ahead(
        &mut self,
        config: &ProtocolConfig,
        keys: &Keyring,
        msg: &Signed<Checkpoint>,
    ) -> Result<Option<&CheckpointCert>, CheckpointReject> {
        let cp = msg.body;
        let index = cp.replica.0 as usize;
        if index >= config.n() {
            return Err(CheckpointReject::Cert(crate::cert::CertError::UnknownReplica(cp.replica)));
        }
        if self.ahead.len() != config.n() {
            self.ahead = vec![None; config.n()];
        }
        if self.ahead[index].is_some_and(|known| known.body.seq >= cp.seq) {
            return Err(CheckpointReject::Duplicate);
        }
        verify_signed(config, keys, msg)?;
        self.ahead[index] = Some(*msg);
        let proof: Vec<_> =
            self.ahead.iter().flatten().filter(|c| (c.body.seq, c.body.state) == (cp.seq, cp.state)).copied().collect();
        if proof.len() < config.quorum() {
            return Ok(None);
        }
        Ok(Some(self.make_stable(CheckpointCert { seq: cp.seq, state: cp.state, proof })))
    }

    fn make_stable(&mut self, cert: CheckpointCert) -> &CheckpointCert {
        let seq = cert.seq;
        self.votes = self.votes.split_off(&(seq + 1));
        for slot in &mut self.ahead {
            if slot.is_some_and(|c| c.body.seq <= seq) {
                *slot = None;
            }
        }
        self.stable = cert;
        &self.stable
    }
}
