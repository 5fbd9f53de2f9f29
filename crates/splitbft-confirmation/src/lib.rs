//! The Confirmation compartment (SPEC §4.2, paper Fig. 2 handlers (3) (9)).
//!
//! It collects the primary's PrePrepare and the backups' Prepares for each `(v, s)` and,
//! on a complete prepare certificate, signs exactly one Commit (SPEC §9 C1, C2). It works
//! on digests alone: it never sees request bytes. No sockets, clock, threads or randomness.
//!
//! View change (handler (5), (7')) is not implemented yet: the view stays 0.

use std::collections::BTreeMap;

use splitbft_types::boundary::{Compartment, Event, Input, Output, Stats};
use splitbft_types::cert::{VoteSet, in_window, verify_signed};
use splitbft_types::checkpoint::CheckpointLog;
use splitbft_types::config::{ConfigError, Keyring};
use splitbft_types::counters::Counters;
use splitbft_types::crypto::{Purpose, SecretKey};
use splitbft_types::msg::{Checkpoint, Commit, Digest, Message, PrePrepare, Prepare, Signed};
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
    slots: BTreeMap<Seq, Slot>,
    checkpoints: CheckpointLog,
    counters: Counters,
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
            slots: BTreeMap::new(),
            checkpoints: CheckpointLog::new(genesis),
            counters: Counters::default(),
            config,
        })
    }

    /// Common checks for a message about `(view, seq)`; returns the slot if acceptable.
    fn slot(&mut self, view: View, seq: Seq, what: [&'static str; 2]) -> Option<&mut Slot> {
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
        let Some(slot) = self.slot(body.view, body.seq, ["pre_prepare_wrong_view", "pre_prepare_outside_window"])
        else {
            return;
        };
        match slot.pre_prepare {
            Some(known) if known.body.digest == body.digest => return self.counters.bump("pre_prepare_duplicate"),
            Some(_) => return self.counters.bump("pre_prepare_conflicting"),
            None => {}
        }
        if verify_signed(&self.config, &self.keys, &pp).is_err() {
            return self.counters.bump("pre_prepare_bad_signature");
        }
        self.slot_mut(body.seq).pre_prepare = Some(pp);
        self.on_prepare_certificate(body.seq, out);
    }

    /// Stores a Prepare from a backup's Preparation enclave.
    pub fn on_prepare(&mut self, prepare: Signed<Prepare>, out: &mut Vec<Output>) {
        let body = prepare.body;
        let primary = self.config.primary(body.view);
        let n = self.config.n();
        let Some(slot) = self.slot(body.view, body.seq, ["prepare_wrong_view", "prepare_outside_window"]) else {
            return;
        };
        if slot.committed.is_some() {
            // The certificate is complete: later Prepares change nothing, skip the crypto.
            return self.counters.bump("prepare_late");
        }
        if body.replica.0 as usize >= n {
            return self.counters.bump("prepare_unknown_replica");
        }
        if body.replica == primary {
            return self.counters.bump("prepare_from_primary");
        }
        if slot.prepares.has(body.replica) {
            return self.counters.bump("prepare_duplicate");
        }
        if verify_signed(&self.config, &self.keys, &prepare).is_err() {
            return self.counters.bump("prepare_bad_signature");
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
        let commit = Commit { view: pp.body.view, seq, digest, replica: self.me };
        let sig = self.secret.sign(self.config.cluster_id, Purpose::Commit, &commit);
        self.counters.bump("commits_sent");
        out.push(Output::Send(Message::Commit(Signed { body: commit, sig })));
    }

    /// Handler (9): on a checkpoint certificate, advance `h` and drop the log below it.
    pub fn on_checkpoint(&mut self, cp: Signed<Checkpoint>, out: &mut Vec<Output>) {
        match self.checkpoints.on_checkpoint(&self.config, &self.keys, &cp) {
            Err(reject) => self.counters.bump(reject.name()),
            Ok(None) => {}
            Ok(Some(stable)) => {
                let seq = stable.seq;
                self.slots = self.slots.split_off(&(seq + 1));
                self.counters.bump("checkpoints_stable");
                out.push(Output::Event(Event::Stable { seq }));
            }
        }
    }

    /// Counters and log size.
    pub fn stats(&self) -> Stats {
        Stats {
            counters: self.counters.to_vec(),
            log_entries: (self.slots.len() + self.checkpoints.pending_slots()) as u64,
            low_watermark: self.checkpoints.low(),
            view: self.view,
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
            Input::Message(_) | Input::OrderBatch(_) => self.counters.bump("unexpected_input"),
            Input::QueryStats => out.push(Output::Stats(self.stats())),
        }
    }

    fn count_malformed_input(&mut self) {
        self.counters.bump("malformed_input");
    }
}
