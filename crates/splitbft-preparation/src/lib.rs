//! The Preparation compartment (SPEC §4.1, paper Fig. 2 handlers (1) (2) (9)).
//!
//! It orders batches at the primary and prepares PrePrepares at backups. It decides request
//! validity (SPEC §6): a request *authenticates for* this enclave if this enclave's MAC
//! entry verifies, or else the client's signature does. The primary orders only such
//! requests; a backup hashes the batch bytes itself and prepares only if every request
//! authenticates for it, so every committed request was checked by a correct Preparation
//! enclave, with keys no Execution enclave holds. It signs
//! PrePrepare and Prepare messages with its own key and never signs two digests for one
//! `(v, s)` (SPEC §9 P1). It holds no sockets, clock, threads or randomness: the
//! environment feeds it [`Input`]s and routes its [`Output`]s.
//!
//! On view change it collects ViewChanges, and at the new primary builds the NewView with
//! `O` computed exactly as PBFT (6); every Preparation enclave recomputes and checks `O`
//! before entering the view and preparing its PrePrepares (7).

mod durable;

use std::collections::BTreeMap;

use splitbft_types::boundary::{Compartment, Event, Input, Output, Stats};
use splitbft_types::cert::{in_window, verify_signed};
use splitbft_types::checkpoint::CheckpointLog;
use splitbft_types::codec::{from_bytes, to_bytes};
use splitbft_types::config::{ConfigError, Keyring};
use splitbft_types::counters::Counter;
use splitbft_types::counters::Counters;
use splitbft_types::crypto::{MacKey, Purpose, SecretKey, verify_request_mac, verify_request_signature};
use splitbft_types::dedup::ClientWindow;
use splitbft_types::msg::{
    BatchMsg, Checkpoint, Digest, Message, NewView, PrePrepare, Prepare, Request, Signed, ViewChange,
};
use splitbft_types::recovery::{self, Fence, RecoveryStatement};
use splitbft_types::viewchange::{
    AcceptedNewView, Depth, check_new_view, check_view_change, compute_o_within, reject_counter,
};
use splitbft_types::{CompartmentKind, EnclaveId, ProtocolConfig, ReplicaId, Seq, View};

/// The Preparation enclave of one replica.
pub struct Preparation {
    config: ProtocolConfig,
    keys: Keyring,
    me: ReplicaId,
    secret: SecretKey,
    /// `v_p`.
    view: View,
    /// Next sequence number to assign (primary only).
    next_seq: Seq,
    /// Digest accepted (ordered or prepared) per sequence number in `view` (P1).
    accepted: BTreeMap<Seq, Digest>,
    /// Timestamps already ordered, per client (primary's admission dedup).
    ordered: Vec<ClientWindow>,
    /// Pre-keyed MAC state shared with each client (SPEC §6).
    client_macs: Vec<MacKey>,
    checkpoints: CheckpointLog,
    /// Latest signed ViewChange per replica (at most `n`, whatever peers send), and whether
    /// its certificates were checked yet (only once a quorum for its view is here).
    view_changes: Vec<Option<(Signed<ViewChange>, bool)>>,
    /// Per replica, the highest view for which its ViewChange failed the full check: its
    /// ViewChanges up to that view are dropped unread, so each costs at most one full check.
    refused_view_changes: Vec<View>,
    /// Per replica, the highest view whose NewView, signed by that replica as its primary,
    /// failed the checks: further NewViews it signs for views up to that one are dropped
    /// after one signature check, so a faulty primary cannot make every Preparation redo
    /// the `O(L·(2f+1))` check by resending.
    refused_new_views: Vec<View>,
    genesis: Digest,
    counters: Counters,
    /// Sealed write-ahead state, when durability is on (SPEC §10, `durable.rs`).
    durable: Option<durable::Journal>,
    /// Behind the recovery fence (SPEC §10): no PrePrepare, Prepare or NewView is signed
    /// while this is set; cleared once a stable checkpoint at or above `H` is adopted.
    fence: Option<Fence>,
}

impl Preparation {
    /// Creates the enclave of replica `me` with its signing key.
    pub fn new(config: ProtocolConfig, me: ReplicaId, secret: SecretKey, genesis: Digest) -> Result<Self, ConfigError> {
        let keys = config.validate()?;
        assert!((me.0 as usize) < config.n(), "replica id out of range");
        let enclave = EnclaveId { replica: me, kind: CompartmentKind::Preparation };
        let client_macs = keys.client_mac_keys(&secret, config.cluster_id, enclave);
        Ok(Preparation {
            ordered: vec![ClientWindow::default(); keys.clients()],
            client_macs,
            keys,
            me,
            secret,
            view: 0,
            next_seq: 1,
            accepted: BTreeMap::new(),
            checkpoints: CheckpointLog::new(genesis),
            view_changes: vec![None; config.n()],
            refused_view_changes: vec![0; config.n()],
            refused_new_views: vec![0; config.n()],
            genesis,
            counters: Counters::default(),
            durable: None,
            fence: None,
            config,
        })
    }

    /// Puts the enclave behind the recovery fence (SPEC §10): it may have signed things it
    /// no longer remembers. `epoch` is its monotonic counter epoch (0 without a counter).
    /// [`Preparation::enable_durability`] calls it when the counter shows an earlier life;
    /// an environment without a counter calls it on every restart.
    pub fn fence(&mut self, epoch: u64) {
        let me = EnclaveId { replica: self.me, kind: CompartmentKind::Preparation };
        self.fence = Some(Fence::new(&self.config, me, epoch));
        self.counters.bump(Counter::RecoveriesStarted);
    }

    /// Whether the enclave is behind the recovery fence.
    pub fn recovering(&self) -> bool {
        self.fence.is_some()
    }

    /// Whether the fence forbids signing now; counts the refusal.
    fn fenced(&mut self) -> bool {
        recovery::refuses_to_sign(&self.fence, &mut self.counters)
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
        if recovery::lift_if_recovered(&mut self.fence, self.checkpoints.low(), &mut self.counters) {
            // Nothing accepted before the fence lifted is above `H`: the log starts clean.
            self.accepted.clear();
            self.next_seq = self.next_seq.max(self.checkpoints.low() + 1);
        }
    }

    fn is_primary(&self) -> bool {
        self.config.primary(self.view) == self.me
    }

    /// Handler (1), OrderBatch: admit requests, assign the next sequence number, sign a
    /// PrePrepare. Only at primary(v).
    pub fn on_order_batch(&mut self, encoded: Vec<u8>, out: &mut Vec<Output>) {
        if self.fenced() {
            return out.push(Output::Event(Event::NotOrdered { window_full: false }));
        }
        if !self.is_primary() {
            self.counters.bump(Counter::OrderBatchNotPrimary);
            return out.push(Output::Event(Event::NotOrdered { window_full: false }));
        }
        let Ok(requests) = from_bytes::<Vec<Request>>(&encoded) else {
            self.counters.bump(Counter::OrderBatchMalformed);
            return out.push(Output::Event(Event::NotOrdered { window_full: false }));
        };
        if !in_window(&self.config, self.checkpoints.low(), self.next_seq) {
            self.counters.bump(Counter::OrderBatchWindowFull);
            return out.push(Output::Event(Event::NotOrdered { window_full: true }));
        }
        let offered = requests.len();
        let mut admitted = Vec::with_capacity(offered.min(self.config.max_batch as usize));
        for request in requests {
            if admitted.len() == self.config.max_batch as usize {
                self.counters.bump(Counter::RequestOverBatchLimit);
                continue;
            }
            match self.admit(&request) {
                Ok(()) => admitted.push(request),
                Err(reason) => self.counters.bump(reason),
            }
        }
        if admitted.is_empty() {
            return out.push(Output::Event(Event::NotOrdered { window_full: false }));
        }
        // Reuse the environment's bytes when nothing was filtered: one encoding per batch.
        let batch = if admitted.len() == offered { encoded } else { to_bytes(&admitted) };
        let body = PrePrepare { view: self.view, seq: self.next_seq, digest: Digest::of(&batch) };
        let prior = self.accepted.insert(body.seq, body.digest);
        assert!(prior.is_none(), "P1: sequence number assigned twice");
        self.next_seq += 1;
        self.counters.add(Counter::RequestsOrdered, admitted.len() as u64);
        self.counters.bump(Counter::BatchesOrdered);
        let sig = self.secret.sign(self.config.cluster_id, Purpose::PrePrepare, &body);
        out.push(Output::Send(Message::Batch(BatchMsg { pre_prepare: Signed { body, sig }, batch })));
        out.push(Output::Event(Event::Ordered { view: body.view, seq: body.seq, requests: admitted.len() as u32 }));
    }

    /// Admission control for one request at the primary (SPEC §4.1 (1)).
    fn admit(&mut self, request: &Request) -> Result<(), Counter> {
        self.well_formed(request)?;
        let c = request.client.0 as usize;
        self.ordered[c].check(request.timestamp).map_err(|_| Counter::RequestAlreadyOrdered)?;
        self.authenticates(request)?;
        self.ordered[c].accept(request.timestamp, self.config.client_window).map_err(|_| Counter::RequestAlreadyOrdered)
    }

    /// A request any correct client could have sent: a configured client, an op within the
    /// limit, one authenticator entry per Preparation enclave, a timestamp inside the nonce
    /// space (no op could ever be opened beyond it, SPEC §6).
    fn well_formed(&self, request: &Request) -> Result<(), Counter> {
        request.well_formed(&self.config, self.client_macs.len())
    }

    /// Whether a well-formed request *authenticates for* this enclave (SPEC §6): its MAC
    /// entry verifies (the fast path), or else the client's signature does, so a client
    /// whose MACs disagree between enclaves cannot make a correct primary look faulty.
    fn authenticates(&mut self, request: &Request) -> Result<(), Counter> {
        let c = request.client.0 as usize;
        let mac = &request.auth[self.me.0 as usize];
        if verify_request_mac(&self.client_macs[c], self.config.cluster_id, request, mac).is_ok() {
            return Ok(());
        }
        let key = self.keys.client(request.client).ok_or(Counter::RequestUnknownClient)?;
        verify_request_signature(key, self.config.cluster_id, request).map_err(|_| Counter::RequestBadAuthenticator)?;
        self.counters.bump(Counter::RequestMacFailedSignatureOk);
        Ok(())
    }

    /// Whether every request of a batch is well formed and authenticates for this enclave
    /// (SPEC §4.1 (2)).
    fn check_batch(&mut self, batch: &[u8]) -> Result<usize, Counter> {
        let requests = from_bytes::<Vec<Request>>(batch).map_err(|_| Counter::BatchMalformed)?;
        if requests.len() > self.config.max_batch as usize {
            return Err(Counter::BatchTooLarge);
        }
        for request in &requests {
            self.well_formed(request)?;
            self.authenticates(request)?;
        }
        Ok(requests.len())
    }

    /// A PrePrepare header without its batch: a backup cannot check the batch's requests,
    /// so it never prepares on a header alone (SPEC §3 note; issue 11 finding 3: a digest
    /// whose batch no correct replica holds halted Execution forever).
    pub fn on_pre_prepare(&mut self, pp: Signed<PrePrepare>) {
        if self.is_primary() && pp.body.view == self.view {
            return self.counters.bump(Counter::PrePrepareOwn);
        }
        self.counters.bump(Counter::PrePrepareWithoutBatch);
    }

    /// Handler (2), PrePrepare with its batch from primary(v) at a backup: hash the batch,
    /// check every request (SPEC §4.1 (2)), then store, sign and send Prepare.
    pub fn on_batch(&mut self, msg: BatchMsg, out: &mut Vec<Output>) {
        let pp = msg.pre_prepare;
        let body = pp.body;
        if body.view != self.view {
            return self.counters.bump(Counter::PrePrepareWrongView);
        }
        if !in_window(&self.config, self.checkpoints.low(), body.seq) {
            return self.counters.bump(Counter::PrePrepareOutsideWindow);
        }
        if self.is_primary() {
            // Our own PrePrepare coming back: the primary sends no Prepare.
            return self.counters.bump(Counter::PrePrepareOwn);
        }
        match self.accepted.get(&body.seq) {
            Some(d) if *d == body.digest => return self.counters.bump(Counter::PrePrepareDuplicate),
            Some(_) => return self.counters.bump(Counter::PrePrepareConflicting),
            None => {}
        }
        // Bytes that do not match the header prove nothing about the primary: any
        // environment could have altered them. Drop them and wait for a genuine copy.
        if Digest::of(&msg.batch) != body.digest {
            return self.counters.bump(Counter::BatchDigestMismatch);
        }
        if verify_signed(&self.config, &self.keys, &pp).is_err() {
            return self.counters.bump(Counter::PrePrepareBadSignature);
        }
        if self.fenced() {
            // SPEC §10: this enclave may have prepared another digest for the slot before
            // it lost its state. Not recorded either: the slot stays open for after `H`.
            return;
        }
        // The primary signed this digest: from here on the slot is decided, so a faulty
        // primary pays for one check of one batch per slot, whatever it resends.
        self.accepted.insert(body.seq, body.digest);
        if let Err(reason) = self.check_batch(&msg.batch) {
            // A correct primary's environment drops requests whose signature fails and its
            // Preparation orders only authenticated ones: the primary is faulty. No Prepare;
            // the request timers will suspect it (SPEC §4.1 (2)).
            self.counters.bump(reason);
            return self.counters.bump(Counter::BatchesRefusedPrimaryFaulty);
        }
        self.counters.bump(Counter::PreparesSent);
        out.push(Output::Send(Message::Prepare(self.sign_prepare(&body))));
    }

    /// This backup's Prepare for primary(v)'s PrePrepare `pp`, checked against SPEC §9 on
    /// its own output first. P1: the slot's one accepted digest is `pp`'s. P2: it repeats
    /// `pp`'s `(v, s, d)` and comes from a backup. P3: `v` is the view this enclave entered
    /// (only `enter_view` moves `view`).
    fn sign_prepare(&self, pp: &PrePrepare) -> Signed<Prepare> {
        assert_eq!(self.accepted.get(&pp.seq), Some(&pp.digest), "P1: one digest per (v, s)");
        assert!(!self.is_primary(), "P2: primary(v) sends no Prepare");
        assert_eq!(pp.view, self.view, "P3: Prepares only in the view entered");
        let prepare = Prepare { view: pp.view, seq: pp.seq, digest: pp.digest, replica: self.me };
        let sig = self.secret.sign(self.config.cluster_id, Purpose::Prepare, &prepare);
        Signed { body: prepare, sig }
    }

    /// Handler (9): on a checkpoint certificate, advance `h` and drop the log below it.
    pub fn on_checkpoint(&mut self, cp: Signed<Checkpoint>, out: &mut Vec<Output>) {
        match self.checkpoints.on_checkpoint(&self.config, &self.keys, &cp) {
            Err(reject) => self.counters.bump(reject.counter()),
            Ok(None) => {}
            Ok(Some(stable)) => {
                let seq = stable.seq;
                self.accepted = self.accepted.split_off(&(seq + 1));
                // A primary that fell behind the certified state continues after it.
                self.next_seq = self.next_seq.max(seq + 1);
                self.counters.bump(Counter::CheckpointsStable);
                out.push(Output::Event(Event::Stable { seq }));
                self.maybe_lift_fence();
            }
        }
    }

    /// Handler (6), first half: store a signed ViewChange for a higher view; at the new
    /// primary, build the NewView once `2f + 1` distinct ones agree on the view.
    ///
    /// On receipt only the sender's signature and the certificates' positions are checked
    /// (one verification): a faulty Confirmation sending ViewChanges for ever higher views
    /// used to cost `O(L·(2f+1))` verifications each at every Preparation (issue 11 finding
    /// 7). The certificates are checked once, when a quorum for the view is here and this
    /// enclave is its primary; NewViews are checked in full by everyone (7).
    pub fn on_view_change(&mut self, vc: Signed<ViewChange>, out: &mut Vec<Output>) {
        let (view, replica) = (vc.body.view, vc.body.replica);
        if view <= self.view {
            return self.counters.bump(Counter::ViewChangeOld);
        }
        let r = replica.0 as usize;
        let Some(slot) = self.view_changes.get(r) else {
            return self.counters.bump(Counter::ViewChangeUnknownReplica);
        };
        if slot.as_ref().is_some_and(|(known, _)| known.body.view >= view) {
            return self.counters.bump(Counter::ViewChangeDuplicate);
        }
        if view <= self.refused_view_changes[r] {
            return self.counters.bump(Counter::ViewChangeSenderRefused);
        }
        if let Err(e) = check_view_change(&self.config, &self.keys, &vc, self.genesis, Depth::Signature) {
            return self.counters.bump(reject_counter(false, e));
        }
        self.view_changes[r] = Some((vc, false));
        self.counters.bump(Counter::ViewChangesAccepted);
        if self.config.primary(view) == self.me && !self.fenced() {
            self.send_new_view(view, out);
        }
    }

    /// Checks in full (C5) every stored, not yet checked ViewChange for `view`, dropping
    /// those that fail; returns how many checked ones for `view` remain.
    fn check_stored_view_changes(&mut self, view: View) -> usize {
        let quorum = self.config.quorum();
        let stored = self.view_changes.iter().flatten().filter(|(vc, _)| vc.body.view == view).count();
        if stored < quorum {
            return 0;
        }
        let mut good = 0;
        for r in 0..self.view_changes.len() {
            let Some((vc, checked)) = &self.view_changes[r] else { continue };
            if vc.body.view != view {
                continue;
            }
            if !*checked {
                self.counters.bump(Counter::ViewChangeFullChecks);
                if let Err(e) = check_view_change(&self.config, &self.keys, vc, self.genesis, Depth::Full) {
                    self.counters.bump(reject_counter(false, e));
                    self.refused_view_changes[r] = view;
                    self.view_changes[r] = None;
                    continue;
                }
                if let Some((_, checked)) = &mut self.view_changes[r] {
                    *checked = true;
                }
            }
            good += 1;
        }
        good
    }

    /// Handler (6), second half: at primary(v'), with `2f + 1` checked ViewChanges for `v'`,
    /// compute `O`, sign its PrePrepares and the NewView, and enter `v'`.
    fn send_new_view(&mut self, view: View, out: &mut Vec<Output>) {
        if self.check_stored_view_changes(view) < self.config.quorum() {
            return;
        }
        let view_changes: Vec<Signed<ViewChange>> = self
            .view_changes
            .iter()
            .flatten()
            .filter(|(vc, checked)| *checked && vc.body.view == view)
            .take(self.config.quorum())
            .map(|(vc, _)| vc.clone())
            .collect();
        let (_, o) = compute_o_within(view, self.config.log_window, &view_changes);
        let pre_prepares = o
            .into_iter()
            .map(|body| Signed { body, sig: self.secret.sign(self.config.cluster_id, Purpose::PrePrepare, &body) })
            .collect();
        let body = NewView { view, view_changes, pre_prepares };
        let sig = self.secret.sign(self.config.cluster_id, Purpose::NewView, &body);
        let nv = Signed { body, sig };
        // Enter through the same checks every backup applies (P3), then send.
        match check_new_view(&self.config, &self.keys, &nv, self.genesis, Depth::Full) {
            Ok(accepted) => {
                self.counters.bump(Counter::NewViewsSent);
                out.push(Output::Send(Message::NewView(nv)));
                self.enter_view(accepted, out);
            }
            Err(e) => panic!("a NewView built from verified ViewChanges must verify: {e}"),
        }
    }

    /// Handler (7): check a NewView (signer, ViewChanges, recomputed `O`), enter its view,
    /// apply (7') and prepare its PrePrepares.
    pub fn on_new_view(&mut self, nv: Signed<NewView>, out: &mut Vec<Output>) {
        if nv.body.view <= self.view {
            return self.counters.bump(Counter::NewViewOld);
        }
        // Only the new primary's own signature makes a refusal count against it.
        let Ok(primary) = verify_signed(&self.config, &self.keys, &nv) else {
            return self.counters.bump(Counter::NewViewBadSignature);
        };
        let p = primary.0 as usize;
        if nv.body.view <= self.refused_new_views[p] {
            return self.counters.bump(Counter::NewViewSenderRefused);
        }
        match check_new_view(&self.config, &self.keys, &nv, self.genesis, Depth::Full) {
            Ok(accepted) if self.fence.is_some() => self.enter_view_fenced(accepted, out),
            Ok(accepted) => self.enter_view(accepted, out),
            Err(e) => {
                self.refused_new_views[p] = nv.body.view;
                self.counters.bump(reject_counter(true, e))
            }
        }
    }

    fn enter_view(&mut self, nv: AcceptedNewView, out: &mut Vec<Output>) {
        assert!(nv.view > self.view, "views only move forward");
        self.view = nv.view;
        self.accepted.clear();
        let stable_seq = nv.stable.seq;
        if self.checkpoints.adopt(nv.stable) {
            out.push(Output::Event(Event::Stable { seq: stable_seq }));
        }
        let low = self.checkpoints.low();
        let primary = self.is_primary();
        let mut last = low;
        for pp in nv.pre_prepares.iter().filter(|pp| pp.body.seq > low) {
            let body = pp.body;
            self.accepted.insert(body.seq, body.digest);
            last = body.seq;
            if !primary {
                out.push(Output::Send(Message::Prepare(self.sign_prepare(&body))));
            }
        }
        self.next_seq = last + 1;
        for slot in &mut self.view_changes {
            if slot.as_ref().is_some_and(|(vc, _)| vc.body.view <= self.view) {
                *slot = None;
            }
        }
        self.counters.bump(Counter::ViewsEntered);
        out.push(Output::Event(Event::ViewEntered { view: self.view }));
    }

    /// (7) behind the fence: enter the view and adopt its checkpoint, but sign no Prepare
    /// for `O` and accept none of its slots (they may be slots signed before the restart).
    fn enter_view_fenced(&mut self, nv: AcceptedNewView, out: &mut Vec<Output>) {
        self.counters.bump(Counter::SignaturesFenced);
        self.view = nv.view;
        self.accepted.clear();
        let stable_seq = nv.stable.seq;
        if self.checkpoints.adopt(nv.stable) {
            out.push(Output::Event(Event::Stable { seq: stable_seq }));
        }
        self.next_seq = self.checkpoints.low() + 1;
        self.counters.bump(Counter::ViewsEntered);
        out.push(Output::Event(Event::ViewEntered { view: self.view }));
        self.maybe_lift_fence();
    }

    /// Counters and log size.
    pub fn stats(&self) -> Stats {
        Stats {
            counters: self.counters.to_vec(),
            log_entries: (self.accepted.len() + self.checkpoints.pending_slots()) as u64,
            low_watermark: self.checkpoints.low(),
            view: self.view,
            recovering: self.recovering(),
            ..Stats::default()
        }
    }
}

impl Compartment for Preparation {
    fn kind(&self) -> CompartmentKind {
        CompartmentKind::Preparation
    }

    fn handle(&mut self, input: Input, out: &mut Vec<Output>) {
        match input {
            Input::OrderBatch(batch) => self.on_order_batch(batch, out),
            Input::Message(Message::PrePrepare(pp)) => self.on_pre_prepare(pp),
            Input::Message(Message::Batch(b)) => self.on_batch(b, out),
            Input::Message(Message::Checkpoint(cp)) => self.on_checkpoint(cp, out),
            Input::Message(Message::ViewChange(vc)) => self.on_view_change(vc, out),
            Input::Message(Message::NewView(nv)) => self.on_new_view(nv, out),
            Input::Message(Message::RecoveryStatement(st)) => self.on_recovery_statement(st, out),
            Input::BeginRecovery { nonce } => self.on_begin_recovery(nonce, out),
            Input::Message(_) | Input::Suspect(_) | Input::RestoreState { .. } => {
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
