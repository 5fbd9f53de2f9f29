//! Sealed write-ahead state of the Preparation enclave (SPEC §10): its view, the digest it
//! accepted per sequence number (so that a restarted enclave never prepares a second digest
//! for a `(v, s)`, P1), the next sequence number it assigns, and its stable checkpoint.
//!
//! An image at start, at every stable checkpoint and at every view change (the only points
//! where entries leave `accepted`); otherwise a delta per crossing with the entries added.
//! Client admission windows and collected ViewChanges are not kept: they only serve
//! liveness (Execution deduplicates what executes, SPEC §4.3).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use splitbft_types::boundary::{Event, Output};
use splitbft_types::codec::{from_bytes, to_bytes};
use splitbft_types::counters::Counter;
use splitbft_types::crypto::SecretKey;
use splitbft_types::durable::{RecordKind, RestoreError, SealedState, StateSealer};
use splitbft_types::msg::{CheckpointCert, Digest};
use splitbft_types::recovery::Fence;
use splitbft_types::{CompartmentKind, EnclaveId, ProtocolConfig, ReplicaId, Seq, View};

use crate::Preparation;

/// Everything, at a compaction point.
#[derive(Serialize, Deserialize)]
struct Image {
    view: View,
    next_seq: Seq,
    stable: CheckpointCert,
    accepted: Vec<(Seq, Digest)>,
    /// Behind the recovery fence, with `H` once known (SPEC §10): a restart from this
    /// image stays behind it.
    fence: Option<Option<Seq>>,
}

/// Entries accepted in one crossing.
#[derive(Serialize, Deserialize)]
struct Delta {
    next_seq: Seq,
    accepted: Vec<(Seq, Digest)>,
}

/// What has been handed out sealed so far, to compute the next delta.
pub(crate) struct Journal {
    sealer: StateSealer,
    view: View,
    low: Seq,
    next_seq: Seq,
    accepted: BTreeMap<Seq, Digest>,
    /// No image written yet (fresh start).
    need_image: bool,
    fence: Option<Option<Seq>>,
}

impl Journal {
    fn new(sealer: StateSealer, need_image: bool) -> Self {
        Journal { sealer, view: 0, low: 0, next_seq: 1, accepted: BTreeMap::new(), need_image, fence: None }
    }

    /// Seals what changed since the last record, if anything.
    pub(crate) fn step(&mut self, p: &Preparation, out: &mut Vec<Output>) {
        let low = p.checkpoints.low();
        let fence = p.fence.as_ref().map(|f| f.horizon());
        if self.need_image || p.view != self.view || low != self.low || fence != self.fence {
            let image = Image {
                fence,
                view: p.view,
                next_seq: p.next_seq,
                stable: p.checkpoints.stable().clone(),
                accepted: p.accepted.iter().map(|(s, d)| (*s, *d)).collect(),
            };
            out.push(Output::Sealed(self.sealer.seal(RecordKind::Image, &to_bytes(&image))));
            self.need_image = false;
        } else {
            let added: Vec<(Seq, Digest)> =
                p.accepted.iter().filter(|(s, _)| !self.accepted.contains_key(s)).map(|(s, d)| (*s, *d)).collect();
            if added.is_empty() && p.next_seq == self.next_seq {
                return;
            }
            let delta = Delta { next_seq: p.next_seq, accepted: added };
            out.push(Output::Sealed(self.sealer.seal(RecordKind::Delta, &to_bytes(&delta))));
        }
        self.view = p.view;
        self.low = low;
        self.next_seq = p.next_seq;
        self.accepted.clone_from(&p.accepted);
        self.fence = fence;
    }
}

fn sealer(config: &ProtocolConfig, me: ReplicaId, secret: &SecretKey, counter: u64) -> StateSealer {
    StateSealer::new(secret, config.cluster_id, EnclaveId { replica: me, kind: CompartmentKind::Preparation }, counter)
}

impl Preparation {
    /// Turns on sealed write-ahead state for an enclave starting without state: its first
    /// crossing emits an image bound to `counter + 1` (SPEC §10). With `counter > 0` the
    /// enclave had state once and enters the recovery fence.
    pub fn enable_durability(&mut self, counter: u64) {
        let sealer = sealer(&self.config, self.me, &self.secret, counter);
        self.durable = Some(Journal::new(sealer, true));
        // A counter above zero means this enclave sealed state before: starting without it
        // (none handed back, or refused as rolled back) it may have signed things it no
        // longer remembers, so it recovers behind the fence (SPEC §10).
        if counter > 0 {
            self.fence(counter);
        }
    }

    /// Restarts the enclave from its sealed state (an image and the deltas after it),
    /// refusing a state older than the monotonic counter (SPEC §10). Durability stays on.
    pub fn restore(
        config: ProtocolConfig,
        me: ReplicaId,
        secret: SecretKey,
        genesis: Digest,
        records: &[SealedState],
        counter: u64,
    ) -> Result<Self, RestoreError> {
        let mut sealer = sealer(&config, me, &secret, counter);
        let plain = sealer.open_all(records, counter)?;
        let mut p =
            Preparation::new(config, me, secret, genesis).map_err(|e| RestoreError::malformed(0, &e.to_string()))?;
        let image: Image = from_bytes(&plain[0]).map_err(|_| RestoreError::malformed(0, "image does not decode"))?;
        let window = p.config.log_window;
        let in_window = |s: Seq, low: Seq| s > low && s <= low.saturating_add(window);
        if image.stable.seq > 0 {
            p.checkpoints.adopt(image.stable);
        }
        let low = p.checkpoints.low();
        p.view = image.view;
        p.next_seq = image.next_seq.max(low + 1);
        for (s, d) in image.accepted {
            if !in_window(s, low) {
                return Err(RestoreError::malformed(0, "accepted entry outside the window"));
            }
            p.accepted.insert(s, d);
        }
        for (i, bytes) in plain.iter().enumerate().skip(1) {
            let delta: Delta = from_bytes(bytes).map_err(|_| RestoreError::malformed(i, "delta does not decode"))?;
            for (s, d) in delta.accepted {
                if !in_window(s, low) {
                    return Err(RestoreError::malformed(i, "accepted entry outside the window"));
                }
                p.accepted.insert(s, d);
            }
            p.next_seq = p.next_seq.max(delta.next_seq);
        }
        if let Some(horizon) = image.fence {
            let me = EnclaveId { replica: me, kind: CompartmentKind::Preparation };
            p.fence = Some(Fence::resume(&p.config, me, counter, horizon));
        }
        let mut journal = Journal::new(sealer, false);
        journal.fence = image.fence;
        journal.view = p.view;
        journal.low = low;
        journal.next_seq = p.next_seq;
        journal.accepted.clone_from(&p.accepted);
        p.durable = Some(journal);
        p.counters.bump(Counter::RestoredFromSealedState);
        Ok(p)
    }

    /// What a restored enclave tells its environment, whose memory went with the restart
    /// (SPEC §10): the view it resumed in.
    pub fn resumed(&self) -> Vec<Output> {
        vec![Output::Event(Event::Resumed { view: self.view, entered: true, low: self.checkpoints.low() })]
    }
}
