//! The Preparation compartment (SPEC §4.1, paper Fig. 2 handlers (1) (2) (9)).
//!
//! It orders batches at the primary and prepares PrePrepares at backups. It signs
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
use splitbft_types::counters::Counters;
use splitbft_types::crypto::{MacKey, Purpose, SecretKey, verify_request_mac};
use splitbft_types::dedup::ClientWindow;
use splitbft_types::msg::{
    BatchMsg, Checkpoint, Digest, Message, NewView, PrePrepare, Prepare, Request, Signed, ViewChange,
};
use splitbft_types::viewchange::{AcceptedNewView, Depth, check_new_view, check_view_change, compute_o, reject_name};
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
    /// Latest verified ViewChange per replica (at most `n`, whatever peers send).
    view_changes: Vec<Option<Signed<ViewChange>>>,
    genesis: Digest,
    counters: Counters,
    /// Sealed write-ahead state, when durability is on (SPEC §10, `durable.rs`).
    durable: Option<durable::Journal>,
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
            genesis,
            counters: Counters::default(),
            durable: None,
            config,
        })
    }

    fn is_primary(&self) -> bool {
        self.config.primary(self.view) == self.me
    }

    /// Handler (1), OrderBatch: admit requests, assign the next sequence number, sign a
    /// PrePrepare. Only at primary(v).
    pub fn on_order_batch(&mut self, encoded: Vec<u8>, out: &mut Vec<Output>) {
        if !self.is_primary() {
            self.counters.bump("order_batch_not_primary");
            return out.push(Output::Event(Event::NotOrdered { window_full: false }));
        }
        let Ok(requests) = from_bytes::<Vec<Request>>(&encoded) else {
            self.counters.bump("order_batch_malformed");
            return out.push(Output::Event(Event::NotOrdered { window_full: false }));
        };
        if !in_window(&self.config, self.checkpoints.low(), self.next_seq) {
            self.counters.bump("order_batch_window_full");
            return out.push(Output::Event(Event::NotOrdered { window_full: true }));
        }
        let offered = requests.len();
        let mut admitted = Vec::with_capacity(offered.min(self.config.max_batch as usize));
        for request in requests {
            if admitted.len() == self.config.max_batch as usize {
                self.counters.bump("request_over_batch_limit");
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
        self.counters.add("requests_ordered", admitted.len() as u64);
        self.counters.bump("batches_ordered");
        let sig = self.secret.sign(self.config.cluster_id, Purpose::PrePrepare, &body);
        out.push(Output::Send(Message::Batch(BatchMsg { pre_prepare: Signed { body, sig }, batch })));
        out.push(Output::Event(Event::Ordered { view: body.view, seq: body.seq, requests: admitted.len() as u32 }));
    }

    /// Admission control for one request at the primary (SPEC §4.1 (1)).
    fn admit(&mut self, request: &Request) -> Result<(), &'static str> {
        let c = request.client.0 as usize;
        let (Some(mac_key), Some(window)) = (self.client_macs.get(c), self.ordered.get(c)) else {
            return Err("request_unknown_client");
        };
        if request.op.len() > self.config.max_op_bytes as usize {
            return Err("request_op_too_large");
        }
        let mac = request.auth.get(self.me.0 as usize).ok_or("request_auth_missing")?;
        if request.auth.len() != self.config.n() {
            return Err("request_auth_wrong_length");
        }
        window.check(request.timestamp).map_err(|_| "request_already_ordered")?;
        verify_request_mac(mac_key, self.config.cluster_id, request, mac).map_err(|_| "request_bad_mac")?;
        self.ordered[c].accept(request.timestamp, self.config.client_window).map_err(|_| "request_already_ordered")
    }

    /// Handler (2), PrePrepare from primary(v) at a backup: store, sign and send Prepare.
    pub fn on_pre_prepare(&mut self, pp: Signed<PrePrepare>, out: &mut Vec<Output>) {
        let body = pp.body;
        if body.view != self.view {
            return self.counters.bump("pre_prepare_wrong_view");
        }
        if !in_window(&self.config, self.checkpoints.low(), body.seq) {
            return self.counters.bump("pre_prepare_outside_window");
        }
        if self.is_primary() {
            // Our own PrePrepare coming back: the primary sends no Prepare.
            return self.counters.bump("pre_prepare_own");
        }
        match self.accepted.get(&body.seq) {
            Some(d) if *d == body.digest => return self.counters.bump("pre_prepare_duplicate"),
            Some(_) => return self.counters.bump("pre_prepare_conflicting"),
            None => {}
        }
        if verify_signed(&self.config, &self.keys, &pp).is_err() {
            return self.counters.bump("pre_prepare_bad_signature");
        }
        self.accepted.insert(body.seq, body.digest);
        let prepare = Prepare { view: body.view, seq: body.seq, digest: body.digest, replica: self.me };
        let sig = self.secret.sign(self.config.cluster_id, Purpose::Prepare, &prepare);
        self.counters.bump("prepares_sent");
        out.push(Output::Send(Message::Prepare(Signed { body: prepare, sig })));
    }

    /// Handler (9): on a checkpoint certificate, advance `h` and drop the log below it.
    pub fn on_checkpoint(&mut self, cp: Signed<Checkpoint>, out: &mut Vec<Output>) {
        match self.checkpoints.on_checkpoint(&self.config, &self.keys, &cp) {
            Err(reject) => self.counters.bump(reject.name()),
            Ok(None) => {}
            Ok(Some(stable)) => {
                let seq = stable.seq;
                self.accepted = self.accepted.split_off(&(seq + 1));
                // A primary that fell behind the certified state continues after it.
                self.next_seq = self.next_seq.max(seq + 1);
                self.counters.bump("checkpoints_stable");
                out.push(Output::Event(Event::Stable { seq }));
            }
        }
    }

    /// Handler (6), first half: store a verified ViewChange for a higher view; at the new
    /// primary, build the NewView once `2f + 1` distinct ones agree on the view.
    pub fn on_view_change(&mut self, vc: Signed<ViewChange>, out: &mut Vec<Output>) {
        let (view, replica) = (vc.body.view, vc.body.replica);
        if view <= self.view {
            return self.counters.bump("view_change_old");
        }
        let Some(slot) = self.view_changes.get(replica.0 as usize) else {
            return self.counters.bump("view_change_unknown_replica");
        };
        if slot.as_ref().is_some_and(|known| known.body.view >= view) {
            return self.counters.bump("view_change_duplicate");
        }
        // C5: every certificate it reports must really exist.
        if let Err(e) = check_view_change(&self.config, &self.keys, &vc, self.genesis, Depth::Full) {
            return self.counters.bump(reject_name("view_change", e));
        }
        self.view_changes[replica.0 as usize] = Some(vc);
        self.counters.bump("view_changes_accepted");
        if self.config.primary(view) == self.me {
            self.send_new_view(view, out);
        }
    }

    /// Handler (6), second half: at primary(v'), with `2f + 1` ViewChanges for `v'`, compute
    /// `O`, sign its PrePrepares and the NewView, and enter `v'`.
    fn send_new_view(&mut self, view: View, out: &mut Vec<Output>) {
        let view_changes: Vec<Signed<ViewChange>> = self
            .view_changes
            .iter()
            .flatten()
            .filter(|vc| vc.body.view == view)
            .take(self.config.quorum())
            .cloned()
            .collect();
        if view_changes.len() < self.config.quorum() {
            return;
        }
        let (_, o) = compute_o(view, &view_changes);
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
                self.counters.bump("new_views_sent");
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
            return self.counters.bump("new_view_old");
        }
        match check_new_view(&self.config, &self.keys, &nv, self.genesis, Depth::Full) {
            Ok(accepted) => self.enter_view(accepted, out),
            Err(e) => self.counters.bump(reject_name("new_view", e)),
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
                let prepare = Prepare { view: body.view, seq: body.seq, digest: body.digest, replica: self.me };
                let sig = self.secret.sign(self.config.cluster_id, Purpose::Prepare, &prepare);
                out.push(Output::Send(Message::Prepare(Signed { body: prepare, sig })));
            }
        }
        self.next_seq = last + 1;
        for slot in &mut self.view_changes {
            if slot.as_ref().is_some_and(|vc| vc.body.view <= self.view) {
                *slot = None;
            }
        }
        self.counters.bump("views_entered");
        out.push(Output::Event(Event::ViewEntered { view: self.view }));
    }

    /// Counters and log size.
    pub fn stats(&self) -> Stats {
        Stats {
            counters: self.counters.to_vec(),
            log_entries: (self.accepted.len() + self.checkpoints.pending_slots()) as u64,
            low_watermark: self.checkpoints.low(),
            view: self.view,
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
            Input::Message(Message::PrePrepare(pp)) => self.on_pre_prepare(pp, out),
            Input::Message(Message::Batch(b)) => self.on_pre_prepare(b.pre_prepare, out),
            Input::Message(Message::Checkpoint(cp)) => self.on_checkpoint(cp, out),
            Input::Message(Message::ViewChange(vc)) => self.on_view_change(vc, out),
            Input::Message(Message::NewView(nv)) => self.on_new_view(nv, out),
            Input::Message(_) | Input::Suspect(_) | Input::RestoreState { .. } => {
                self.counters.bump("unexpected_input")
            }
            Input::QueryStats => out.push(Output::Stats(self.stats())),
        }
    }

    fn count_malformed_input(&mut self) {
        self.counters.bump("malformed_input");
    }

    fn after_crossing(&mut self, out: &mut Vec<Output>) {
        if let Some(mut journal) = self.durable.take() {
            journal.step(self, out);
            self.durable = Some(journal);
        }
    }
}
