//! The Confirmation compartment (SPEC §4.2, paper Fig. 2 handlers (3) (9)).
//!
//! It collects the primary's PrePrepare and the backups' Prepares for each `(v, s)` and,
//! on a complete prepare certificate, signs exactly one Commit (SPEC §9 C1, C2). It works
//! on digests alone: it never sees request bytes. No sockets, clock, threads or randomness.
//!
//! On suspicion it stops committing in the old view and signs a ViewChange with its stable
//! checkpoint and prepared certificates (5); it enters a new view on a NewView signed by
//! the new primary's Preparation enclave with valid ViewChanges, without recomputing `O`
//! (7', paper §4).

mod durable;

use std::collections::BTreeMap;

use splitbft_types::boundary::{Compartment, Event, Input, Output, Stats};
use splitbft_types::cert::{VoteSet, in_window, verify_signed};
use splitbft_types::checkpoint::CheckpointLog;
use splitbft_types::config::{ConfigError, Keyring};
use splitbft_types::counters::Counter;
use splitbft_types::counters::Counters;
use splitbft_types::crypto::{Purpose, SecretKey};
use splitbft_types::msg::{
    Checkpoint, Commit, Digest, Message, NewView, PrePrepare, Prepare, PreparedCert, Signed, ViewChange,
};
use splitbft_types::recovery::{self, Fence, RecoveryStatement};
use splitbft_types::viewchange::{Depth, check_new_view, reject_counter};
use splitbft_types::{CompartmentKind, EnclaveId, ProtocolConfig, ReplicaId, Seq, View};

/// Everything Confirmation holds for one sequence number of the current view.
#[derive(Debug)]
struct Slot {
    pre_prepare: Option<Signed<PrePrepare>>,
    prepares: VoteSet<Prepare>,
    /// The digest committed, if any (C1: at most one per `(v, s)`).
    committed: Option<Digest>,
}

/// The Confirmation enclave of one replica.
pub struct Confirmation {
    config: ProtocolConfig,
    keys: Keyring,
    me: ReplicaId,
    secret: SecretKey,
    /// `v_c`.
    view: View,
    /// Whether `v_c` has been entered (false between a ViewChange and its NewView; C4).
    active: bool,
    slots: BTreeMap<Seq, Slot>,
    /// Highest-view prepare certificate per sequence number above `h`, kept across views
    /// for ViewChanges.
    prepared: BTreeMap<Seq, PreparedCert>,
    genesis: Digest,
    checkpoints: CheckpointLog,
    counters: Counters,
    /// Sealed write-ahead state, when durability is on (SPEC §10, `durable.rs`).
    durable: Option<durable::Journal>,
    /// Behind the recovery fence (SPEC §10): no Commit or ViewChange is signed while this
    /// is set; cleared once a stable checkpoint at or above `H` is adopted.
    fence: Option<Fence>,
    /// The ViewChange signed for `view` while it is not entered (`!active`): sealed with
    /// the state, so that a restart in the middle of a view change sends the same message
    /// again (the environment's copy is gone with its memory; SPEC §10).
    view_change: Option<Signed<ViewChange>>,
}

impl Confirmation {
    /// Creates the enclave of replica `me` with its signing key.
    pub fn new(config: ProtocolConfig, me: ReplicaId, secret: SecretKey, genesis: Digest) -> Result<Self, ConfigError> {
        let keys = config.validate()?;
        let enclave = EnclaveId { replica: me, kind: CompartmentKind::Confirmation };
        assert_eq!(keys.enclave(enclave), Some(&secret.public()), "secret key does not match the configuration");
        Ok(Confirmation {
            keys,
            me,
            secret,
            view: 0,
            active: true,
            view_change: None,
            slots: BTreeMap::new(),
            prepared: BTreeMap::new(),
            genesis,
            checkpoints: CheckpointLog::new(genesis),
            counters: Counters::default(),
            durable: None,
            fence: None,
            config,
        })
    }

    /// Puts the enclave behind the recovery fence (SPEC §10): it may have committed, or
    /// sent ViewChanges, it no longer remembers. `epoch` is its monotonic counter epoch (0
    /// without a counter). [`Confirmation::enable_durability`] calls it when the counter
    /// shows an earlier life; an environment without a counter calls it on every restart.
    pub fn fence(&mut self, epoch: u64) {
        let me = EnclaveId { replica: self.me, kind: CompartmentKind::Confirmation };
        self.fence = Some(Fence::new(&self.config, me, epoch));
        self.counters.bump(Counter::RecoveriesStarted);
    }

    /// Whether the enclave is behind the recovery fence.
    pub fn recovering(&self) -> bool {
        self.fence.is_some()
    }

    /// Recovery step 1: send a query with the environment's nonce.
    fn on_begin_recovery(&mut self, nonce: u64, out: &mut Vec<Output>) {
        recovery::begin_recovery(&mut self.fence, nonce, &mut self.counters, out);
    }

    /// Recovery step 3: count a statement; with `2f + 1`, `H` is set.
    fn on_recovery_statement(&mut self, st: Signed<RecoveryStatement>, out: &mut Vec<Output>) {
        if recovery::take_statement(&mut self.fence, &self.config, &self.keys, &st, &mut self.counters, out) {
            self.maybe_lift_fence();
        }
    }

    /// Recovery step 4: the fence lifts once the low watermark reaches `H`.
    fn maybe_lift_fence(&mut self) {
        recovery::lift_if_recovered(&mut self.fence, self.checkpoints.low(), &mut self.counters);
    }

    /// Common checks for a message about `(view, seq)`; returns the slot if acceptable.
    fn slot(&mut self, view: View, seq: Seq, what: [Counter; 2]) -> Option<&mut Slot> {
        if view != self.view {
            self.counters.bump(what[0]);
            return None;
        }
        if !in_window(&self.config, self.checkpoints.low(), seq) {
            self.counters.bump(what[1]);
            return None;
        }
        let n = self.config.n();
        Some(self.slots.entry(seq).or_insert_with(|| Slot {
            pre_prepare: None,
            prepares: VoteSet::new(n),
            committed: None,
        }))
    }

    /// Stores the primary's PrePrepare (duplicated to Confirmation by the environment).
    pub fn on_pre_prepare(&mut self, pp: Signed<PrePrepare>, out: &mut Vec<Output>) {
        let body = pp.body;
        let Some(slot) =
            self.slot(body.view, body.seq, [Counter::PrePrepareWrongView, Counter::PrePrepareOutsideWindow])
        else {
            return;
        };
        match slot.pre_prepare {
            Some(known) if known.body.digest == body.digest => return self.counters.bump(Counter::PrePrepareDuplicate),
            Some(_) => return self.counters.bump(Counter::PrePrepareConflicting),
            None => {}
        }
        if verify_signed(&self.config, &self.keys, &pp).is_err() {
            return self.counters.bump(Counter::PrePrepareBadSignature);
        }
        self.slot_mut(body.seq).pre_prepare = Some(pp);
        self.on_prepare_certificate(body.seq, out);
    }

    /// Stores a Prepare from a backup's Preparation enclave.
    pub fn on_prepare(&mut self, prepare: Signed<Prepare>, out: &mut Vec<Output>) {
        let body = prepare.body;
        let primary = self.config.primary(body.view);
        let n = self.config.n();
        let Some(slot) = self.slot(body.view, body.seq, [Counter::PrepareWrongView, Counter::PrepareOutsideWindow])
        else {
            return;
        };
        if slot.committed.is_some() {
            // The certificate is complete: later Prepares change nothing, skip the crypto.
            return self.counters.bump(Counter::PrepareLate);
        }
        if body.replica.0 as usize >= n {
            return self.counters.bump(Counter::PrepareUnknownReplica);
        }
        if body.replica == primary {
            return self.counters.bump(Counter::PrepareFromPrimary);
        }
        if slot.prepares.has(body.replica) {
            return self.counters.bump(Counter::PrepareDuplicate);
        }
        if verify_signed(&self.config, &self.keys, &prepare).is_err() {
            return self.counters.bump(Counter::PrepareBadSignature);
        }
        self.slot_mut(body.seq).prepares.insert(body.replica, prepare);
        self.on_prepare_certificate(body.seq, out);
    }

    fn slot_mut(&mut self, seq: Seq) -> &mut Slot {
        self.slots.get_mut(&seq).expect("slot created by the checks above")
    }

    /// Handler (3): on a complete prepare certificate, sign and send one Commit.
    fn on_prepare_certificate(&mut self, seq: Seq, out: &mut Vec<Output>) {
        let need = 2 * self.config.f as usize;
        if !self.active {
            // C4: no Commit between our ViewChange and the NewView.
            return;
        }
        if recovery::refuses_to_sign(&self.fence, &mut self.counters) {
            // SPEC §10: it may have committed another digest here before losing its state.
            return;
        }
        let slot = self.slot_mut(seq);
        let Some(pp) = slot.pre_prepare else { return };
        if slot.committed.is_some() {
            return;
        }
        let digest = pp.body.digest;
        if slot.prepares.count(|p| p.digest == digest) < need {
            return;
        }
        slot.committed = Some(digest);
        let prepares = slot.prepares.matching(|p| p.digest == digest).take(need).copied().collect();
        let cert = PreparedCert { pre_prepare: pp, prepares };
        // SPEC §9 on this enclave's own output. C1: the slot had no Commit (checked above).
        // C2: a full prepare certificate. C4: still active in the Commit's view.
        assert!(cert.well_formed(self.config.f, self.config.primary(pp.body.view)), "C2: Commit without a certificate");
        assert!(self.active && pp.body.view == self.view, "C4: Commit after a ViewChange or outside the view");
        self.prepared.insert(seq, cert);
        let commit = Commit { view: pp.body.view, seq, digest, replica: self.me };
        let sig = self.secret.sign(self.config.cluster_id, Purpose::Commit, &commit);
        self.counters.bump(Counter::CommitsSent);
        out.push(Output::Send(Message::Commit(Signed { body: commit, sig })));
    }

    /// Handler (9): on a checkpoint certificate, advance `h` and drop the log below it.
    pub fn on_checkpoint(&mut self, cp: Signed<Checkpoint>, out: &mut Vec<Output>) {
        match self.checkpoints.on_checkpoint(&self.config, &self.keys, &cp) {
            Err(reject) => self.counters.bump(reject.counter()),
            Ok(None) => {}
            Ok(Some(stable)) => {
                let seq = stable.seq;
                self.slots = self.slots.split_off(&(seq + 1));
                self.prepared = self.prepared.split_off(&(seq + 1));
                self.counters.bump(Counter::CheckpointsStable);
                out.push(Output::Event(Event::Stable { seq }));
                self.maybe_lift_fence();
            }
        }
    }

    /// Handler (5): on suspicion of primary(`view`), move to `view + 1`: stop committing,
    /// sign a ViewChange with the stable checkpoint and every prepared certificate above it.
    /// Repeated suspicion while changing moves on to `view + 2`, and so on.
    pub fn on_suspect(&mut self, view: View, out: &mut Vec<Output>) {
        let target = view.saturating_add(1);
        if target <= self.view {
            return self.counters.bump(Counter::SuspectStale);
        }
        if recovery::refuses_to_sign(&self.fence, &mut self.counters) {
            // SPEC §10: a ViewChange now could omit a certificate it lost.
            return;
        }
        self.view = target;
        self.active = false;
        self.slots.clear();
        let low = self.checkpoints.low();
        let body = ViewChange {
            view: target,
            replica: self.me,
            stable: self.checkpoints.stable().clone(),
            prepared: self.prepared.range(low + 1..).map(|(_, cert)| cert.clone()).collect(),
        };
        let sig = self.secret.sign(self.config.cluster_id, Purpose::ViewChange, &body);
        self.counters.bump(Counter::ViewChangesSent);
        let vc = Signed { body, sig };
        self.view_change = Some(vc.clone());
        out.push(Output::Send(Message::ViewChange(vc)));
        out.push(Output::Event(Event::ViewChangeStarted { view: target }));
    }

    /// Handler (7'): enter the NewView's view and adopt its checkpoint; its PrePrepares are
    /// PrePrepares of the new view. `O` is not recomputed here (Preparation does that).
    pub fn on_new_view(&mut self, nv: Signed<NewView>, out: &mut Vec<Output>) {
        if nv.body.view < self.view || (nv.body.view == self.view && self.active) {
            return self.counters.bump(Counter::NewViewOld);
        }
        let accepted = match check_new_view(&self.config, &self.keys, &nv, self.genesis, Depth::SignaturesAndCheckpoint)
        {
            Ok(accepted) => accepted,
            Err(e) => return self.counters.bump(reject_counter(true, e)),
        };
        if accepted.view > self.view {
            self.slots.clear();
        }
        self.view = accepted.view;
        self.active = true;
        self.view_change = None;
        let stable_seq = accepted.stable.seq;
        if self.checkpoints.adopt(accepted.stable) {
            self.slots = self.slots.split_off(&(stable_seq + 1));
            self.prepared = self.prepared.split_off(&(stable_seq + 1));
            out.push(Output::Event(Event::Stable { seq: stable_seq }));
        }
        self.maybe_lift_fence();
        let low = self.checkpoints.low();
        for pp in accepted.pre_prepares.into_iter().filter(|pp| pp.body.seq > low) {
            if let Some(slot) = self.slot(
                pp.body.view,
                pp.body.seq,
                [Counter::NewViewPrePrepareWrongView, Counter::NewViewPrePrepareOutsideWindow],
            ) {
                slot.pre_prepare = Some(pp);
            }
        }
        let seqs: Vec<Seq> = self.slots.keys().copied().collect();
        for seq in seqs {
            self.on_prepare_certificate(seq, out);
        }
        self.counters.bump(Counter::ViewsEntered);
        out.push(Output::Event(Event::ViewEntered { view: self.view }));
    }

    /// Counters and log size.
    pub fn stats(&self) -> Stats {
        Stats {
            counters: self.counters.to_vec(),
            log_entries: (self.slots.len() + self.checkpoints.pending_slots()) as u64,
            low_watermark: self.checkpoints.low(),
            view: self.view,
            recovering: self.recovering(),
            ..Stats::default()
        }
    }
}

impl Compartment for Confirmation {
    fn kind(&self) -> CompartmentKind {
        CompartmentKind::Confirmation
    }

    fn handle(&mut self, input: Input, out: &mut Vec<Output>) {
        match input {
            Input::Message(Message::PrePrepare(pp)) => self.on_pre_prepare(pp, out),
            Input::Message(Message::Batch(b)) => self.on_pre_prepare(b.pre_prepare, out),
            Input::Message(Message::Prepare(p)) => self.on_prepare(p, out),
            Input::Message(Message::Checkpoint(cp)) => self.on_checkpoint(cp, out),
            Input::Message(Message::NewView(nv)) => self.on_new_view(nv, out),
            Input::Suspect(view) => self.on_suspect(view, out),
            Input::Message(Message::RecoveryStatement(st)) => self.on_recovery_statement(st, out),
            Input::BeginRecovery { nonce } => self.on_begin_recovery(nonce, out),
            Input::Message(_) | Input::OrderBatch(_) | Input::RestoreState { .. } => {
                self.counters.bump(Counter::UnexpectedInput)
            }
            Input::QueryStats => out.push(Output::Stats(self.stats())),
        }
    }

    fn count_malformed_input(&mut self) {
        self.counters.bump(Counter::MalformedInput);
    }

    fn after_crossing(&mut self, out: &mut Vec<Output>) {
        if let Some(mut journal) = self.durable.take() {
            journal.step(self, out);
            self.durable = Some(journal);
        }
    }
}
