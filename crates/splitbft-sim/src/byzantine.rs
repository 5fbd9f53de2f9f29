//! Named Byzantine enclaves (STYLE "named Byzantine actors"). Each wraps the honest
//! compartment — so it keeps up with the protocol — and adds the misbehaviour its name
//! says, signing with the key it holds. In PBFT mode a replica has one key for all its
//! parts, so whatever part is faulty can sign any of the replica's messages.

use std::collections::BTreeSet;

use bytes::Bytes;
use splitbft_apps::kv::KvOp;
use splitbft_types::boundary::{Compartment, Input, Output};
use splitbft_types::codec::{from_bytes, to_bytes};
use splitbft_types::config::Keyring;
use splitbft_types::crypto::{MacKey, Purpose, SecretKey, reply_mac};
use splitbft_types::msg::{
    BatchMsg, Checkpoint, Commit, Digest, Message, NewView, PrePrepare, Prepare, PreparedCert, Request, Sig, Signed,
    ViewChange,
};
use splitbft_types::viewchange::compute_o;

use crate::adversary::SharedLoot;
use splitbft_types::session::{Direction, Refusal, ReplyBody, SessionKey, SessionOp};
use splitbft_types::{ClientId, CompartmentKind, EnclaveId, ProtocolConfig, ReplicaId, Seq, View};

/// Timestamps of made-up requests: above any a simulated client reaches.
const MADE_UP_TIMESTAMP: u64 = 1 << 40;
/// The sequence number a forged prepared certificate claims (SPEC §4.1 bounds `O` by the
/// window; a compartment that builds `O` first allocates for all of it).
const HUGE_SEQ: Seq = 1 << 40;
/// The first sequence number a withholding primary withholds (the first batches, with
/// the Registers, go through, so clients get as far as ordering ops).
const WITHHELD_FROM: Seq = 3;
/// Views beyond its own a racing Confirmation signs ViewChanges for.
const RACE_AHEAD: u64 = 3;
/// How far ahead of the real one a far-ahead Checkpoint claims to be, in intervals.
const FAR_AHEAD_INTERVALS: u64 = 100;
/// ViewChanges a flooding Preparation sends per PrePrepare or ViewChange it receives.
const FLOOD: usize = 6;

/// A Byzantine behaviour (each names one attack).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Preparation at the primary: orders every batch twice, signing a second PrePrepare
    /// at the same `(v, s)` for the requests reordered plus one it made up (equivocation,
    /// and an attack on validity: without client 0's session key its op cannot
    /// authenticate, so Execution runs it as a no-op, SPEC §6).
    Equivocate,
    /// Preparation: signs a Prepare for every PrePrepare it sees, conflicting or not.
    PrepareEverything,
    /// Preparation at the primary: appends to each batch an op sealed under a session key
    /// a colluding Execution recovered from a Register (SPEC §6 validity).
    ForgeOps,
    /// Preparation at the primary: re-orders every Register at `t = u64::MAX` (SPEC §3:
    /// the client's authenticator must cover `t`).
    RetimeRegister,
    /// Preparation at the primary: withholds the bytes of some batches (its host strips
    /// them), so backups must prepare a digest whose batch no correct replica holds.
    WithholdBatch,
    /// Preparation at a new primary: a NewView from any quorum of ViewChanges, refusable
    /// ones first, with a wrong `O` (SPEC §4.1 (6)).
    BadNewView,
    /// Preparation at the primary: orders a junk copy of client 0's requests in place of
    /// the real ones (censorship by refusal, SPEC §5).
    JunkCopies,
    /// Confirmation: signs a Commit for every digest it sees, without a certificate, and
    /// for several digests per `(v, s)`.
    CommitWithoutCertificate,
    /// Confirmation: its ViewChanges claim a prepared certificate at a huge sequence number.
    HugeSeqViewChange,
    /// Confirmation: with every ViewChange, also ViewChanges for the next few views.
    RaceViews,
    /// Execution: replies with wrong (well-formed) answers and signs Checkpoints with wrong
    /// digests.
    WrongResultsAndCheckpoints,
    /// Execution: signs Checkpoints far ahead of what it executed.
    FarAheadCheckpoints,
    /// Execution: behaves, but hands the group secret to the other faulty enclaves.
    Leak,
    /// Preparation and its host: flood every peer's Preparation with ViewChange
    /// verification work on every input: replays of genuine ViewChanges, copies with a
    /// flipped signature bit, claimed for a later view, or with their prepared certificates
    /// repeated, and made-up ones in the name of every replica (SPEC §4.1 (5): checked,
    /// counted, dropped; liveness holds).
    ViewChangeFlood,
    /// Any kind: its host runs two copies of it and shows each different inputs
    /// (`fork.rs`; SPEC §1.1 counts a fork against `f`).
    Fork,
}

impl Strategy {
    /// The strategies a faulty compartment of `kind` may draw.
    pub fn of_kind(kind: CompartmentKind) -> &'static [Strategy] {
        use Strategy::*;
        match kind {
            CompartmentKind::Preparation => {
                &[Equivocate, PrepareEverything, ForgeOps, RetimeRegister, WithholdBatch, BadNewView, JunkCopies]
            }
            CompartmentKind::Confirmation => &[CommitWithoutCertificate, HugeSeqViewChange, RaceViews],
            CompartmentKind::Execution => &[WrongResultsAndCheckpoints, FarAheadCheckpoints, Leak],
        }
    }

    /// The name printed with a draw.
    pub fn name(self) -> &'static str {
        use Strategy::*;
        match self {
            Equivocate => "equivocate",
            PrepareEverything => "prepare-everything",
            ForgeOps => "forge-ops",
            RetimeRegister => "retime-register",
            WithholdBatch => "withhold-batch",
            BadNewView => "bad-new-view",
            JunkCopies => "junk-copies",
            CommitWithoutCertificate => "commit-without-certificate",
            HugeSeqViewChange => "huge-seq-view-change",
            RaceViews => "race-views",
            WrongResultsAndCheckpoints => "wrong-results",
            FarAheadCheckpoints => "far-ahead-checkpoints",
            Leak => "leak",
            ViewChangeFlood => "view-change-flood",
            Fork => "fork",
        }
    }
}

/// A faulty compartment.
pub struct Byzantine {
    inner: Box<dyn Compartment>,
    strategy: Strategy,
    me: ReplicaId,
    config: ProtocolConfig,
    key: SecretKey,
    /// PBFT: the key signs for every part of the replica, so this part also commits
    /// whatever it sees.
    replica_key: bool,
    client_macs: Vec<MacKey>,
    acted: BTreeSet<(View, Seq, Digest)>,
    loot: SharedLoot,
    /// Views this Preparation sent a NewView for.
    new_views: BTreeSet<View>,
    /// The highest view seen in an input (a flooder's made-up ViewChanges claim the next).
    view_seen: View,
    /// Flood rounds so far.
    floods: u64,
}

impl Byzantine {
    /// Wraps `inner` (the honest compartment of `me`) with `strategy`, signing with `key`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        inner: Box<dyn Compartment>,
        strategy: Strategy,
        me: ReplicaId,
        config: ProtocolConfig,
        keys: &Keyring,
        key: SecretKey,
        replica_key: bool,
        loot: SharedLoot,
    ) -> Self {
        let enclave = EnclaveId { replica: me, kind: inner.kind() };
        let client_macs = if inner.kind() == CompartmentKind::Execution {
            keys.client_mac_keys(&key, config.cluster_id, enclave)
        } else {
            Vec::new()
        };
        Byzantine {
            inner,
            strategy,
            me,
            config,
            key,
            replica_key,
            client_macs,
            acted: BTreeSet::new(),
            loot,
            new_views: BTreeSet::new(),
            view_seen: 0,
            floods: 0,
        }
    }

    /// [`FLOOD`] ViewChanges that each cost a receiving Preparation a check: genuine ones
    /// from the loot (newest views first) replayed or altered, else made up. A broker sends
    /// no ViewChange a Preparation outputs (only Confirmations sign them), so they go to
    /// the loot and the flooder's colluding host broadcasts them (`Loot::flood`).
    fn flood(&mut self) {
        self.floods += 1;
        let genuine: Vec<Signed<ViewChange>> = {
            let loot = self.loot.lock().expect("loot");
            loot.view_changes.values().rev().flat_map(|by| by.values().cloned()).take(FLOOD).collect()
        };
        let n = self.config.n() as u64;
        for i in 0..FLOOD {
            let mut vc = genuine.get(i).cloned().unwrap_or_else(|| {
                let replica = ReplicaId(((self.floods + i as u64) % n) as u32);
                let stable = splitbft_types::msg::CheckpointCert { seq: 0, state: Digest([0; 32]), proof: Vec::new() };
                let body = ViewChange { view: self.view_seen + 1, replica, stable, prepared: Vec::new() };
                Signed { body, sig: Sig([(self.floods as u8) ^ (i as u8); 64]) }
            });
            match (self.floods as usize + i) % 4 {
                0 => {}
                1 => vc.sig.0[i % 64] ^= 1,
                2 => vc.body.view += 1 + self.floods % 3,
                _ => {
                    let prepared = vc.body.prepared.clone();
                    vc.body.prepared.extend(prepared);
                    vc.body.stable.seq += self.config.checkpoint_interval;
                }
            }
            let mut loot = self.loot.lock().expect("loot");
            if loot.flood.len() < crate::adversary::FLOOD_QUEUE {
                loot.flood.push((self.me, vc));
            }
        }
    }

    fn sign_commit(&mut self, pp: PrePrepare, out: &mut Vec<Output>) {
        if !self.acted.insert((pp.view, pp.seq, pp.digest)) {
            return;
        }
        let body = Commit { view: pp.view, seq: pp.seq, digest: pp.digest, replica: self.me };
        let sig = self.key.sign(self.config.cluster_id, Purpose::Commit, &body);
        out.push(Output::Send(Message::Commit(Signed { body, sig })));
    }

    fn sign_prepare(&mut self, pp: PrePrepare, out: &mut Vec<Output>) {
        if self.config.primary(pp.view) == self.me || !self.acted.insert((pp.view, pp.seq, pp.digest)) {
            return;
        }
        let body = Prepare { view: pp.view, seq: pp.seq, digest: pp.digest, replica: self.me };
        let sig = self.key.sign(self.config.cluster_id, Purpose::Prepare, &body);
        out.push(Output::Send(Message::Prepare(Signed { body, sig })));
    }

    /// The Batch message for `requests` at `b`'s `(v, s)`, signed anew.
    fn re_sign(&self, b: &BatchMsg, requests: &[Request]) -> BatchMsg {
        let batch = to_bytes(&requests.to_vec());
        let body = PrePrepare { digest: Digest::of(&batch), ..b.pre_prepare.body };
        let sig = self.key.sign(self.config.cluster_id, Purpose::PrePrepare, &body);
        BatchMsg { pre_prepare: Signed { body, sig }, batch }
    }

    /// A second, conflicting batch for every batch the honest primary ordered.
    fn equivocate(&mut self, outputs: &[Output], out: &mut Vec<Output>) {
        for output in outputs {
            let Output::Send(Message::Batch(b)) = output else { continue };
            let mut requests: Vec<Request> = from_bytes(&b.batch).unwrap_or_default();
            requests.reverse();
            let seq = b.pre_prepare.body.seq;
            // Sealed for client 0's session epoch under a key the primary made up: it holds
            // no session key (only Execution enclaves and the client do).
            let (client, timestamp) = (ClientId(0), MADE_UP_TIMESTAMP + seq);
            let op = KvOp::Put { key: b"k0".to_vec(), value: b"made-up".to_vec() }.encode();
            let guessed = SessionKey::new([0xa5; 32]);
            let epoch = crate::workload::SESSION_EPOCH;
            let ciphertext = guessed
                .seal(self.config.cluster_id, client, timestamp, Direction::Request, epoch, &op)
                .expect("timestamp inside the nonce space");
            let op = to_bytes(&SessionOp::Sealed { epoch, ciphertext });
            requests.push(Request { client, timestamp, op, auth: Vec::new(), sig: Sig([0; 64]) });
            let forged = self.re_sign(b, &requests);
            let body = forged.pre_prepare.body;
            out.push(Output::Send(Message::Batch(forged)));
            if self.replica_key {
                self.sign_commit(body, out);
                self.sign_commit(b.pre_prepare.body, out);
            }
        }
    }

    /// Rewrites every batch this primary orders with `edit` (the same one to everyone).
    fn rewrite_batches(&mut self, outputs: &mut [Output], mut edit: impl FnMut(&Self, Seq, &mut Vec<Request>)) {
        for output in outputs.iter_mut() {
            let Output::Send(Message::Batch(b)) = output else { continue };
            let mut requests: Vec<Request> = from_bytes(&b.batch).unwrap_or_default();
            edit(self, b.pre_prepare.body.seq, &mut requests);
            *b = self.re_sign(b, &requests);
        }
    }

    /// An op sealed under every stolen session key, appended to the batch.
    fn forge(&self, seq: Seq, requests: &mut Vec<Request>) {
        let loot = self.loot.lock().expect("loot");
        for (client, (epoch, key)) in &loot.sessions {
            let timestamp = MADE_UP_TIMESTAMP + seq;
            let op = KvOp::Put { key: b"k0".to_vec(), value: b"forged".to_vec() }.encode();
            let Ok(ciphertext) = key.seal(self.config.cluster_id, *client, timestamp, Direction::Request, *epoch, &op)
            else {
                continue;
            };
            let op = to_bytes(&SessionOp::Sealed { epoch: *epoch, ciphertext });
            requests.push(Request { client: *client, timestamp, op, auth: Vec::new(), sig: Sig([0; 64]) });
        }
    }

    /// Every Register re-timed to `u64::MAX`.
    fn retime(requests: &mut [Request]) {
        for req in requests.iter_mut() {
            if matches!(from_bytes::<SessionOp>(&req.op), Ok(SessionOp::Register { .. })) {
                req.timestamp = u64::MAX;
            }
        }
    }

    /// Client 0's requests replaced by junk copies with the same `(c, t)`.
    fn junk(requests: &mut [Request]) {
        for req in requests.iter_mut().filter(|r| r.client == ClientId(0)) {
            if let Some(last) = req.op.last_mut() {
                *last ^= 0x5a;
            }
        }
    }

    /// Marks the batches this primary orders from [`WITHHELD_FROM`] on as withheld (its host strips them).
    fn withhold(&mut self, outputs: &[Output]) {
        for output in outputs {
            if let Output::Send(Message::Batch(b)) = output
                && b.pre_prepare.body.seq >= WITHHELD_FROM
            {
                self.loot.lock().expect("loot").withheld.insert(b.pre_prepare.body.digest);
            }
        }
    }

    /// At the primary of a view the loot holds a quorum of ViewChanges for: a NewView with
    /// the refusable ones first and `O` computed only from the rest (so wrong whenever a
    /// refusable one is in), and one entry short otherwise.
    fn bad_new_view(&mut self, out: &mut Vec<Output>) {
        let quorum = self.config.quorum();
        let candidate = {
            let loot = self.loot.lock().expect("loot");
            loot.view_changes
                .iter()
                .rev()
                .find(|(v, vcs)| {
                    self.config.primary(**v) == self.me && vcs.len() >= quorum && !self.new_views.contains(v)
                })
                .map(|(v, vcs)| {
                    let mut chosen: Vec<Signed<ViewChange>> = vcs.values().cloned().collect();
                    chosen.sort_by_key(|vc| !loot.refusable.contains(&(*v, vc.body.replica)));
                    chosen.truncate(quorum);
                    (*v, chosen, loot.refusable.clone())
                })
        };
        let Some((view, chosen, refusable)) = candidate else { return };
        self.new_views.insert(view);
        let sane: Vec<Signed<ViewChange>> =
            chosen.iter().filter(|vc| !refusable.contains(&(view, vc.body.replica))).cloned().collect();
        let (_, mut o) = compute_o(view, &sane);
        if sane.len() == chosen.len() {
            o.pop();
        }
        let pre_prepares = o
            .into_iter()
            .map(|body| Signed { body, sig: self.key.sign(self.config.cluster_id, Purpose::PrePrepare, &body) })
            .collect();
        let body = NewView { view, view_changes: chosen, pre_prepares };
        let sig = self.key.sign(self.config.cluster_id, Purpose::NewView, &body);
        out.push(Output::Send(Message::NewView(Signed { body, sig })));
    }

    /// ViewChanges re-signed with a made-up prepared certificate at [`HUGE_SEQ`].
    fn huge_seq(&mut self, outputs: &mut [Output]) {
        for output in outputs.iter_mut() {
            let Output::Send(Message::ViewChange(vc)) = output else { continue };
            let pp = PrePrepare { view: vc.body.view.saturating_sub(1), seq: HUGE_SEQ, digest: Digest::of(b"huge") };
            let sig = self.key.sign(self.config.cluster_id, Purpose::PrePrepare, &pp);
            vc.body.prepared.push(PreparedCert { pre_prepare: Signed { body: pp, sig }, prepares: Vec::new() });
            vc.sig = self.key.sign(self.config.cluster_id, Purpose::ViewChange, &vc.body);
            let mut loot = self.loot.lock().expect("loot");
            loot.refusable.insert((vc.body.view, self.me));
            loot.view_change(vc.clone());
        }
    }

    /// For every ViewChange, also ViewChanges for the next [`RACE_AHEAD`] views.
    fn race(&mut self, outputs: &mut Vec<Output>) {
        let mut extra = Vec::new();
        for output in outputs.iter() {
            let Output::Send(Message::ViewChange(vc)) = output else { continue };
            for ahead in 1..=RACE_AHEAD {
                let body = ViewChange { view: vc.body.view + ahead, ..vc.body.clone() };
                let sig = self.key.sign(self.config.cluster_id, Purpose::ViewChange, &body);
                self.loot.lock().expect("loot").view_change(Signed { body: body.clone(), sig });
                extra.push(Output::Send(Message::ViewChange(Signed { body, sig })));
            }
        }
        outputs.extend(extra);
    }

    fn far_ahead(&self, outputs: &mut Vec<Output>) {
        let mut extra = Vec::new();
        for output in outputs.iter() {
            if let Output::Send(Message::Checkpoint(cp)) = output {
                let seq = cp.body.seq + FAR_AHEAD_INTERVALS * self.config.checkpoint_interval;
                let body = Checkpoint { seq, state: Digest::of(&seq.to_le_bytes()), ..cp.body };
                let sig = self.key.sign(self.config.cluster_id, Purpose::Checkpoint, &body);
                extra.push(Output::Send(Message::Checkpoint(Signed { body, sig })));
            }
        }
        outputs.extend(extra);
    }

    fn lie(&self, outputs: &mut [Output]) {
        for output in outputs.iter_mut() {
            match output {
                Output::Send(Message::Reply(reply)) => {
                    // Results are sealed under session keys, so the most damaging lies
                    // that need none are final answers without a result: "you have no
                    // session" for an op that did execute, or "its result left the cache"
                    // for one the cache still holds (colluders pick the same by timestamp).
                    // Registrations are answered truthfully.
                    if matches!(from_bytes::<ReplyBody>(&reply.result), Ok(ReplyBody::Registered { .. })) {
                        continue;
                    }
                    let lie = if reply.timestamp % 2 == 0 {
                        ReplyBody::Refused(Refusal::NoSession)
                    } else {
                        ReplyBody::Evicted
                    };
                    reply.result = to_bytes(&lie);
                    if let Some(key) = self.client_macs.get(reply.client.0 as usize) {
                        reply.mac = reply_mac(key, self.config.cluster_id, reply);
                    }
                }
                Output::Send(Message::Checkpoint(cp)) => {
                    let body = Checkpoint { state: Digest::of(&cp.body.seq.to_le_bytes()), ..cp.body };
                    *cp = Signed { body, sig: self.key.sign(self.config.cluster_id, Purpose::Checkpoint, &body) };
                }
                _ => {}
            }
        }
    }

    /// Shares what this input shows with the colluders.
    fn learn(&mut self, input: &Input) {
        match input {
            Input::Message(Message::Batch(b)) => self.loot.lock().expect("loot").scan_batch(&self.config, &b.batch),
            Input::Message(Message::ViewChange(vc)) => self.loot.lock().expect("loot").view_change(vc.clone()),
            _ => {}
        }
    }
}

/// The PrePrepare header an input carries, if any.
fn pre_prepare_of(input: &Input) -> Option<PrePrepare> {
    match input {
        Input::Message(Message::PrePrepare(pp)) => Some(pp.body),
        Input::Message(Message::Batch(b)) => Some(b.pre_prepare.body),
        Input::Message(Message::Prepare(p)) => {
            Some(PrePrepare { view: p.body.view, seq: p.body.seq, digest: p.body.digest })
        }
        _ => None,
    }
}

impl Compartment for Byzantine {
    fn kind(&self) -> CompartmentKind {
        self.inner.kind()
    }

    fn handle(&mut self, input: Input, out: &mut Vec<Output>) {
        let seen = pre_prepare_of(&input);
        let is_prepare = matches!(input, Input::Message(Message::Prepare(_)));
        let floods_now = matches!(input, Input::Message(_) | Input::OrderBatch(_));
        if let Some(pp) = seen {
            self.view_seen = self.view_seen.max(pp.view);
        }
        self.learn(&input);
        let mut produced = Vec::new();
        if self.strategy == Strategy::BadNewView {
            // Ahead of the honest NewView, so compartments take this one first.
            self.bad_new_view(&mut produced);
        }
        self.inner.handle(input, &mut produced);
        for output in &produced {
            if let Output::Send(Message::Batch(b)) = output {
                self.loot.lock().expect("loot").scan_batch(&self.config, &b.batch);
            }
        }
        match self.strategy {
            Strategy::Equivocate => self.equivocate(&produced.clone(), &mut produced),
            Strategy::PrepareEverything => {
                if let Some(pp) = seen.filter(|_| !is_prepare) {
                    self.sign_prepare(pp, &mut produced);
                }
            }
            Strategy::ForgeOps => self.rewrite_batches(&mut produced, |me, seq, r| me.forge(seq, r)),
            Strategy::RetimeRegister => self.rewrite_batches(&mut produced, |_, _, r| Self::retime(r)),
            Strategy::JunkCopies => self.rewrite_batches(&mut produced, |_, _, r| Self::junk(r)),
            Strategy::WithholdBatch => self.withhold(&produced),
            Strategy::BadNewView | Strategy::Leak => {}
            Strategy::ViewChangeFlood => {
                if floods_now {
                    self.flood();
                }
            }
            Strategy::Fork => unreachable!("a fork is installed as `fork::Forked`, not wrapped"),
            Strategy::CommitWithoutCertificate => {
                if let Some(pp) = seen {
                    self.sign_commit(pp, &mut produced);
                }
            }
            Strategy::HugeSeqViewChange => self.huge_seq(&mut produced),
            Strategy::RaceViews => self.race(&mut produced),
            Strategy::WrongResultsAndCheckpoints => self.lie(&mut produced),
            Strategy::FarAheadCheckpoints => self.far_ahead(&mut produced),
        }
        if self.replica_key
            && self.strategy != Strategy::CommitWithoutCertificate
            && let Some(pp) = seen
        {
            self.sign_commit(pp, &mut produced);
        }
        out.extend(produced);
    }

    fn count_malformed_input(&mut self) {
        self.inner.count_malformed_input();
    }
}

/// Encodes a message as a compartment input (for the hostile environment).
pub fn input(msg: Message) -> Bytes {
    Bytes::from(to_bytes(&Input::Message(msg)))
}

/// Replaces the `faulty` enclaves of `cluster` with Byzantine ones sharing `loot`; a
/// faulty Execution hands the loot the group secret.
pub fn install(
    cluster: &mut splitbft_broker::local::LocalCluster,
    secrets: &splitbft_types::keys::ClusterSecrets,
    faulty: &[(ReplicaId, CompartmentKind, Strategy)],
    replica_key: bool,
    loot: &SharedLoot,
) {
    use splitbft_apps::kv::KvStore;
    use splitbft_execution::Execution;
    let config = secrets.config.clone();
    let keys = config.validate().expect("the simulator builds valid configurations");
    let genesis = Execution::genesis_digest(&config, &KvStore::new());
    for (replica, kind, strategy) in faulty {
        let key = || SecretKey::from_seed(secrets.enclave(*replica, *kind).seed());
        let honest = || -> Box<dyn Compartment> {
            match kind {
                CompartmentKind::Preparation => Box::new(
                    splitbft_preparation::Preparation::new(config.clone(), *replica, key(), genesis)
                        .expect("valid config"),
                ),
                CompartmentKind::Confirmation => Box::new(
                    splitbft_confirmation::Confirmation::new(config.clone(), *replica, key(), genesis)
                        .expect("valid config"),
                ),
                CompartmentKind::Execution => Box::new(
                    Execution::new(
                        config.clone(),
                        *replica,
                        key(),
                        secrets.execution_group_secret(),
                        Box::new(KvStore::new()),
                    )
                    .expect("valid config"),
                ),
            }
        };
        if *kind == CompartmentKind::Execution {
            loot.lock().expect("loot").group = Some(secrets.execution_group_secret());
        }
        let faulty: Box<dyn Compartment> = if *strategy == Strategy::Fork {
            // Two copies from the same (genesis) state.
            Box::new(crate::fork::Forked::new([honest(), honest()], config.cluster_id, *replica))
        } else {
            Box::new(Byzantine::new(
                honest(),
                *strategy,
                *replica,
                config.clone(),
                &keys,
                key(),
                replica_key,
                loot.clone(),
            ))
        };
        cluster.replace_enclave(*replica, *kind, Box::new(splitbft_enclave::InlineEnclave::new(faulty)));
    }
}
