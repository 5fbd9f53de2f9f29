//! Sealed write-ahead state of the Execution enclave (SPEC §10): an image of the whole
//! checkpointed state (application, dedup windows, reply cache, sessions) with the last
//! executed sequence number, view and stable checkpoint, then one delta per crossing with
//! the certified batches executed in it. A restart restores the image and re-executes the
//! batches locally (execution is deterministic), so it fetches from peers only what it
//! missed while down.
//!
//! An image at start, at every stable checkpoint (the compaction point) and after a state
//! transfer; a delta otherwise, only for crossings that executed something or changed view.

use serde::{Deserialize, Serialize};
use splitbft_types::app::Application;
use splitbft_types::boundary::{Event, Output};
use splitbft_types::codec::{from_bytes, to_bytes};
use splitbft_types::counters::Counter;
use splitbft_types::crypto::SecretKey;
use splitbft_types::durable::{RecordKind, RestoreError, SealedState, StateSealer};
use splitbft_types::msg::{CheckpointCert, Digest};
use splitbft_types::session::{GroupSecret, ReplyBody, Sessions};
use splitbft_types::{CompartmentKind, EnclaveId, ProtocolConfig, ReplicaId, Seq, View};

use crate::{Execution, OwnedExecutionState, state_bytes};

/// Everything, at a compaction point.
#[derive(Serialize, Deserialize)]
struct Image {
    view: View,
    executed: Seq,
    stable: CheckpointCert,
    snapshots: Vec<(Seq, Digest)>,
    /// The encoded [`crate::ExecutionState`].
    #[serde(with = "serde_bytes")]
    state: Vec<u8>,
}

/// One certified batch, as executed.
#[derive(Serialize, Deserialize)]
struct Executed {
    seq: Seq,
    digest: Digest,
    #[serde(with = "serde_bytes")]
    batch: Vec<u8>,
}

/// The batches executed in one crossing, and the view after it.
#[derive(Serialize, Deserialize)]
struct Delta {
    view: View,
    batches: Vec<Executed>,
}

/// What has been handed out sealed so far, and the batches executed in this crossing.
pub(crate) struct Journal {
    sealer: StateSealer,
    view: View,
    low: Seq,
    /// `s_e` after the last record plus the batches in `pending`.
    executed: Seq,
    pending: Vec<Executed>,
    need_image: bool,
}

impl Journal {
    fn new(sealer: StateSealer, need_image: bool) -> Self {
        Journal { sealer, view: 0, low: 0, executed: 0, pending: Vec::new(), need_image }
    }

    /// Records a batch about to execute at `seq` (called from handler (4)).
    pub(crate) fn executed(&mut self, seq: Seq, digest: Digest, batch: &[u8]) {
        self.pending.push(Executed { seq, digest, batch: batch.to_vec() });
    }

    fn remember(&mut self, e: &Execution) {
        self.view = e.view;
        self.low = e.checkpoints.low();
        self.executed = e.executed;
        self.pending.clear();
    }

    /// Seals what changed since the last record, if anything.
    pub(crate) fn step(&mut self, e: &Execution, out: &mut Vec<Output>) {
        let by_batches = self.executed + self.pending.len() as u64;
        if self.need_image || e.checkpoints.low() != self.low || e.executed != by_batches {
            let image = Image {
                view: e.view,
                executed: e.executed,
                stable: e.checkpoints.stable().clone(),
                snapshots: e.snapshots.iter().map(|(s, d)| (*s, *d)).collect(),
                state: state_bytes(e.app.as_ref(), &e.windows, &e.results, &e.sessions.records()),
            };
            out.push(Output::Sealed(self.sealer.seal(RecordKind::Image, &to_bytes(&image))));
            self.need_image = false;
        } else if !self.pending.is_empty() || e.view != self.view {
            let delta = Delta { view: e.view, batches: std::mem::take(&mut self.pending) };
            out.push(Output::Sealed(self.sealer.seal(RecordKind::Delta, &to_bytes(&delta))));
        }
        self.remember(e);
    }
}

fn sealer(config: &ProtocolConfig, me: ReplicaId, secret: &SecretKey, counter: u64) -> StateSealer {
    StateSealer::new(secret, config.cluster_id, EnclaveId { replica: me, kind: CompartmentKind::Execution }, counter)
}

impl Execution {
    /// Turns on sealed write-ahead state for an enclave starting without state: its first
    /// crossing emits an image bound to `counter + 1` (SPEC §10).
    pub fn enable_durability(&mut self, counter: u64) {
        let sealer = sealer(&self.config, self.me, &self.secret, counter);
        self.durable = Some(Journal::new(sealer, true));
    }

    /// Checks, without restoring anything, that `records` can be restored under `counter`:
    /// they authenticate, follow each other, and reach the counter (SPEC §10: neither an
    /// older state nor one with records cut off its end). The environment asks before
    /// [`Execution::restore`] so that a state refused as rolled back can be replaced by a
    /// fresh start that keeps the application it was given.
    pub fn check_sealed(
        config: &ProtocolConfig,
        me: ReplicaId,
        secret: &SecretKey,
        records: &[SealedState],
        counter: u64,
    ) -> Result<(), RestoreError> {
        sealer(config, me, secret, counter).open_all(records, counter).map(drop)
    }

    /// Restarts the enclave from its sealed state: restores the image, then re-executes the
    /// batches of every delta in order (SPEC §10). Returns the enclave and the outputs of
    /// that replay (replies, checkpoints, sealed ledger blocks) for the environment to route
    /// as usual: they are the same bytes the enclave produced before it stopped.
    pub fn restore(
        config: ProtocolConfig,
        me: ReplicaId,
        secret: SecretKey,
        group: GroupSecret,
        app: Box<dyn Application>,
        records: &[SealedState],
        counter: u64,
    ) -> Result<(Self, Vec<Output>), RestoreError> {
        let mut sealer = sealer(&config, me, &secret, counter);
        let plain = sealer.open_all(records, counter)?;
        let mut e = Execution::new(config, me, secret, group, app)
            .map_err(|err| RestoreError::malformed(0, &err.to_string()))?;
        let image: Image = from_bytes(&plain[0]).map_err(|_| RestoreError::malformed(0, "image does not decode"))?;
        let state: OwnedExecutionState =
            from_bytes(&image.state).map_err(|_| RestoreError::malformed(0, "application state does not decode"))?;
        let clients = e.windows.len();
        if state.clients.len() != clients
            || state.results.len() != clients
            || state.sessions.len() != clients
            || state.results.iter().flat_map(|r| r.values()).any(|b| from_bytes::<ReplyBody>(b).is_err())
        {
            return Err(RestoreError::malformed(0, "state does not fit the configuration"));
        }
        e.app.restore(&state.app).map_err(|_| RestoreError::malformed(0, "the application refused its state"))?;
        e.windows = state.clients;
        e.results = state.results;
        e.sessions = Sessions::from_records(&state.sessions);
        // `executed` may be below the stable checkpoint: an Execution that learned a stable
        // checkpoint before executing up to it waits for state transfer, and seals that
        // state like any other (it restarts waiting, as it was).
        if image.stable.seq > 0 {
            e.checkpoints.adopt(image.stable);
        }
        e.executed = image.executed;
        e.view = image.view;
        e.snapshots = image.snapshots.into_iter().collect();
        let mut outputs = Vec::new();
        for (i, bytes) in plain.iter().enumerate().skip(1) {
            let delta: Delta = from_bytes(bytes).map_err(|_| RestoreError::malformed(i, "delta does not decode"))?;
            e.view = e.view.max(delta.view);
            for batch in delta.batches {
                if batch.seq != e.executed + 1 {
                    return Err(RestoreError::malformed(i, "executed batches are not consecutive"));
                }
                e.execute_batch(batch.seq, batch.digest, &batch.batch, &mut outputs);
                e.executed = batch.seq;
                if batch.seq.is_multiple_of(e.config.checkpoint_interval) {
                    e.send_checkpoint(batch.seq, &mut outputs);
                }
            }
        }
        let mut journal = Journal::new(sealer, false);
        journal.remember(&e);
        e.durable = Some(journal);
        e.counters.bump(Counter::RestoredFromSealedState);
        // The environment restarted with it and learns its view (SPEC §10).
        outputs.push(Output::Event(Event::Resumed { view: e.view, entered: true, low: e.checkpoints.low() }));
        Ok((e, outputs))
    }
}
