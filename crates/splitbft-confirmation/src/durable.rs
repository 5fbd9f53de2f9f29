//! Sealed write-ahead state of the Confirmation enclave (SPEC §10): its view and whether it
//! entered it (a ViewChange sent, C4), and every prepared certificate it committed on, so
//! that a restarted enclave neither commits a second digest for a `(v, s)` (C1) nor sends
//! a ViewChange that omits a certificate it had (C5, the safety of the view change).
//!
//! An image at start, at every stable checkpoint and at every change of view or of
//! `active`; otherwise a delta per crossing with the certificates added.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use splitbft_types::boundary::{Event, Output};
use splitbft_types::cert::VoteSet;
use splitbft_types::codec::{from_bytes, to_bytes};
use splitbft_types::counters::Counter;
use splitbft_types::crypto::SecretKey;
use splitbft_types::durable::{RecordKind, RestoreError, SealedState, StateSealer};
use splitbft_types::msg::{CheckpointCert, Digest, Message, PreparedCert, Signed, ViewChange};
use splitbft_types::recovery::Fence;
use splitbft_types::{CompartmentKind, EnclaveId, ProtocolConfig, ReplicaId, Seq, View};

use crate::{Confirmation, Slot};

/// Everything, at a compaction point.
#[derive(Serialize, Deserialize)]
struct Image {
    view: View,
    active: bool,
    stable: CheckpointCert,
    prepared: Vec<PreparedCert>,
    /// Behind the recovery fence, with `H` once known (SPEC §10): a restart from this
    /// image stays behind it.
    fence: Option<Option<Seq>>,
    /// The ViewChange sent for `view` while not `active` (an image is sealed at every
    /// change of view or of `active`, so it is the one sent): a restart sends it again.
    view_change: Option<Signed<ViewChange>>,
}

/// [`Image`] as sealed before it carried the ViewChange: still restored (its restart in the
/// middle of a view change resends nothing; the request timers move the view on).
#[derive(Deserialize)]
struct ImageWithoutViewChange {
    view: View,
    active: bool,
    stable: CheckpointCert,
    prepared: Vec<PreparedCert>,
    fence: Option<Option<Seq>>,
}

impl From<ImageWithoutViewChange> for Image {
    fn from(i: ImageWithoutViewChange) -> Self {
        Image {
            view: i.view,
            active: i.active,
            stable: i.stable,
            prepared: i.prepared,
            fence: i.fence,
            view_change: None,
        }
    }
}

/// Certificates committed on in one crossing.
#[derive(Serialize, Deserialize)]
struct Delta {
    prepared: Vec<PreparedCert>,
}

/// What has been handed out sealed so far, to compute the next delta.
pub(crate) struct Journal {
    sealer: StateSealer,
    view: View,
    active: bool,
    low: Seq,
    /// `(view, digest)` of each certificate sealed.
    prepared: BTreeMap<Seq, (View, Digest)>,
    need_image: bool,
    fence: Option<Option<Seq>>,
}

fn key(cert: &PreparedCert) -> (View, Digest) {
    (cert.pre_prepare.body.view, cert.pre_prepare.body.digest)
}

impl Journal {
    fn new(sealer: StateSealer, need_image: bool) -> Self {
        Journal { sealer, view: 0, active: true, low: 0, prepared: BTreeMap::new(), need_image, fence: None }
    }

    fn remember(&mut self, c: &Confirmation) {
        self.view = c.view;
        self.active = c.active;
        self.low = c.checkpoints.low();
        self.prepared = c.prepared.iter().map(|(s, cert)| (*s, key(cert))).collect();
        self.fence = c.fence.as_ref().map(|f| f.horizon());
    }

    /// Seals what changed since the last record, if anything.
    pub(crate) fn step(&mut self, c: &Confirmation, out: &mut Vec<Output>) {
        let fence = c.fence.as_ref().map(|f| f.horizon());
        let changed = c.view != self.view || c.active != self.active || c.checkpoints.low() != self.low;
        if self.need_image || changed || fence != self.fence {
            let image = Image {
                fence,
                view: c.view,
                active: c.active,
                stable: c.checkpoints.stable().clone(),
                prepared: c.prepared.values().cloned().collect(),
                view_change: if c.active { None } else { c.view_change.clone() },
            };
            out.push(Output::Sealed(self.sealer.seal(RecordKind::Image, &to_bytes(&image))));
            self.need_image = false;
        } else {
            let added: Vec<PreparedCert> = c
                .prepared
                .iter()
                .filter(|(s, cert)| self.prepared.get(s) != Some(&key(cert)))
                .map(|(_, cert)| cert.clone())
                .collect();
            if added.is_empty() {
                return;
            }
            out.push(Output::Sealed(self.sealer.seal(RecordKind::Delta, &to_bytes(&Delta { prepared: added }))));
        }
        self.remember(c);
    }
}

fn sealer(config: &ProtocolConfig, me: ReplicaId, secret: &SecretKey, counter: u64) -> StateSealer {
    StateSealer::new(secret, config.cluster_id, EnclaveId { replica: me, kind: CompartmentKind::Confirmation }, counter)
}

impl Confirmation {
    /// Turns on sealed write-ahead state for an enclave starting without state: its first
    /// crossing emits an image bound to `counter + 1` (SPEC §10). With `counter > 0` the
    /// enclave had state once and enters the recovery fence.
    pub fn enable_durability(&mut self, counter: u64) {
        let sealer = sealer(&self.config, self.me, &self.secret, counter);
        self.durable = Some(Journal::new(sealer, true));
        // A counter above zero means this enclave sealed state before: starting without it
        // it may have signed things it no longer remembers (SPEC §10 recovery fence).
        if counter > 0 {
            self.fence(counter);
        }
    }

    /// Restarts the enclave from its sealed state (an image and the deltas after it),
    /// refusing a state older than the monotonic counter (SPEC §10). Certificates of the
    /// current view come back as committed slots, so no second Commit is signed for them.
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
        let mut c =
            Confirmation::new(config, me, secret, genesis).map_err(|e| RestoreError::malformed(0, &e.to_string()))?;
        let image: Image = from_bytes::<Image>(&plain[0])
            .or_else(|_| from_bytes::<ImageWithoutViewChange>(&plain[0]).map(Image::from))
            .map_err(|_| RestoreError::malformed(0, "image does not decode"))?;
        if image
            .view_change
            .as_ref()
            .is_some_and(|vc| image.active || vc.body.view != image.view || vc.body.replica != me)
        {
            return Err(RestoreError::malformed(0, "the ViewChange is not this enclave's for its view"));
        }
        if image.stable.seq > 0 {
            c.checkpoints.adopt(image.stable);
        }
        c.view = image.view;
        c.active = image.active;
        c.view_change = image.view_change;
        let mut certs = vec![(0, image.prepared)];
        for (i, bytes) in plain.iter().enumerate().skip(1) {
            let delta: Delta = from_bytes(bytes).map_err(|_| RestoreError::malformed(i, "delta does not decode"))?;
            certs.push((i, delta.prepared));
        }
        let (low, window, n) = (c.checkpoints.low(), c.config.log_window, c.config.n());
        for (i, batch) in certs {
            for cert in batch {
                let (view, seq, digest) =
                    (cert.pre_prepare.body.view, cert.pre_prepare.body.seq, cert.pre_prepare.body.digest);
                if seq <= low || seq > low.saturating_add(window) || view > c.view {
                    return Err(RestoreError::malformed(i, "prepared certificate outside the window or view"));
                }
                if view == c.view {
                    c.slots.insert(
                        seq,
                        Slot {
                            pre_prepare: Some(cert.pre_prepare),
                            prepares: VoteSet::new(n),
                            committed: Some(digest),
                        },
                    );
                }
                c.prepared.insert(seq, cert);
            }
        }
        if let Some(horizon) = image.fence {
            let me = EnclaveId { replica: me, kind: CompartmentKind::Confirmation };
            c.fence = Some(Fence::resume(&c.config, me, counter, horizon));
        }
        let mut journal = Journal::new(sealer, false);
        journal.remember(&c);
        c.durable = Some(journal);
        c.counters.bump(Counter::RestoredFromSealedState);
        Ok(c)
    }

    /// What a restored enclave tells its environment, whose memory went with the restart
    /// (SPEC §10): the view it resumed in and, in the middle of a view change, the
    /// ViewChange it sent (the same signed message: nothing new is signed).
    pub fn resumed(&self) -> Vec<Output> {
        let mut out = Vec::new();
        if let (false, Some(vc)) = (self.active, &self.view_change) {
            out.push(Output::Send(Message::ViewChange(vc.clone())));
        }
        out.push(Output::Event(Event::Resumed { view: self.view, entered: self.active, low: self.checkpoints.low() }));
        out
    }
}
