//! The Execution compartment (SPEC §4.3, paper Fig. 2 handlers (4) (8) (9)).
//!
//! It executes a batch only with a commit certificate (`2f + 1` Commits from distinct
//! Confirmation enclaves) and the batch bytes whose SHA-256 is the certified digest
//! (SPEC §9 C3/E1), strictly in sequence order; it replies with a MAC per client, and
//! every `K` sequence numbers snapshots the state and signs a Checkpoint (E2).
//! No sockets, clock, threads or randomness.
//!
//! Records the application completes (ledger blocks, SPEC §7) are sealed here, under a key
//! derived from this enclave's secret ([`seal`]), and leave as [`Output::Persist`]: the
//! environment stores them but never sees them in the clear.
//!
//! Validity and confidentiality (SPEC §6): a request executes only if it authenticates
//! under its client's session key, registered by an ordered Register request whose key is
//! HPKE-sealed to the Execution group key ([`splitbft_types::session`]). Every correct
//! Execution enclave holds the same session keys at the same sequence number, so the
//! decision "execute or no-op" is identical on all of them; a made-up request of a faulty
//! primary is a no-op. Ops arrive and results leave encrypted under the session key;
//! snapshots leave encrypted under a key derived from the group key.

mod durable;
pub mod seal;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use splitbft_types::app::Application;
use splitbft_types::attest::{BUILD_ID, CodeIdentity};
use splitbft_types::boundary::{Compartment, Event, Input, Output, Stats};
use splitbft_types::cert::{VoteSet, in_window, verify_signed};
use splitbft_types::checkpoint::CheckpointLog;
use splitbft_types::codec::{from_bytes, to_bytes};
use splitbft_types::config::{ConfigError, Keyring};
use splitbft_types::counters::Counter;
use splitbft_types::counters::Counters;
use splitbft_types::crypto::{MacKey, Purpose, SecretKey, reply_mac};
use splitbft_types::dedup::ClientWindow;
use splitbft_types::limits::REPLY_CACHE_BYTES_PER_CLIENT;
use splitbft_types::msg::{BatchMsg, Checkpoint, Commit, Digest, Message, NewView, Reply, Request, Signed};
use splitbft_types::recovery::{RecoveryQuery, RecoveryStatement};
use splitbft_types::session::{Admission, GroupSecret, ReplyBody, SessionRecord, Sessions};
use splitbft_types::viewchange::{Depth, check_new_view, null_batch, null_digest, reject_counter};
use splitbft_types::{ClientId, CompartmentKind, EnclaveId, ProtocolConfig, ReplicaId, Seq, Timestamp, View};

pub use seal::{RecordSealer, SealError};
/// What this compartment's software-attestation measurement covers (SPEC §6).
pub const CODE_IDENTITY: CodeIdentity =
    CodeIdentity { crate_name: env!("CARGO_PKG_NAME"), version: env!("CARGO_PKG_VERSION"), build: BUILD_ID };

/// Candidate batches kept per sequence number before the commit certificate decides.
/// The first is taken as it comes; a second needs a PrePrepare signed by the primary of
/// its view (a correct primary signs one per `(v, s)`, and a re-proposal after a view
/// change is one more). More could only come from an equivocating primary, which the view
/// change removes; the certified batch is always accepted, replacing an uncertified
/// candidate, and one that was crowded out is fetched by digest.
pub const MAX_BATCH_CANDIDATES: usize = 2;

/// Everything Execution holds for one sequence number.
#[derive(Debug)]
struct Slot {
    /// `(digest, batch bytes)` pairs whose hash was checked on arrival.
    batches: Vec<(Digest, Vec<u8>)>,
    commits: VoteSet<Commit>,
    /// Digest with a commit certificate.
    certified: Option<Digest>,
}

/// What a checkpoint digest covers: the application, the dedup windows (so that a
/// state transfer also restores at-most-once execution) and the client sessions (SPEC §6).
/// It leaves the enclave only encrypted ([`GroupSecret::seal_state`]).
#[derive(Serialize)]
struct ExecutionState<'a> {
    #[serde(with = "serde_bytes")]
    app: &'a [u8],
    clients: &'a [ClientWindow],
    results: &'a [Results],
    sessions: &'a [Option<SessionRecord>],
}

/// [`ExecutionState`] as decoded from a fetched snapshot.
#[derive(Deserialize)]
struct OwnedExecutionState {
    #[serde(with = "serde_bytes")]
    app: Vec<u8>,
    clients: Vec<ClientWindow>,
    results: Vec<Results>,
    sessions: Vec<Option<SessionRecord>>,
}

/// The last `W` results of one client, by timestamp, and at most
/// [`REPLY_CACHE_BYTES_PER_CLIENT`] of them (the newest kept whatever its size): part of
/// the checkpointed state (as
/// PBFT's last replies), so a replica that caught up by state transfer still answers a
/// retransmission. Each is an encoded plaintext [`ReplyBody`]; views, MACs and the
/// per-replica encryption are not: they differ between replicas.
type Results = BTreeMap<Timestamp, serde_bytes::ByteBuf>;

/// The Execution enclave of one replica, generic over the application.
pub struct Execution {
    config: ProtocolConfig,
    keys: Keyring,
    me: ReplicaId,
    secret: SecretKey,
    /// The Execution group key: opens sealed session keys, seals snapshots.
    group: GroupSecret,
    /// Registered client sessions (SPEC §6).
    sessions: Sessions,
    /// `v_e`.
    view: View,
    /// `s_e`: last executed sequence number.
    executed: Seq,
    slots: BTreeMap<Seq, Slot>,
    app: Box<dyn Application>,
    /// Executed timestamps per client (at most once per `(client, t)`).
    windows: Vec<ClientWindow>,
    /// Pre-keyed reply MAC state per client.
    client_macs: Vec<MacKey>,
    /// Digests of own checkpoints not yet superseded by a stable one.
    snapshots: BTreeMap<Seq, Digest>,
    /// The last `W` results per client, for retransmissions.
    results: Vec<Results>,
    genesis: Digest,
    checkpoints: CheckpointLog,
    /// Seals the application's records for the environment's storage (SPEC §7).
    sealer: RecordSealer,
    counters: Counters,
    /// Sealed write-ahead state, when durability is on (SPEC §10, `durable.rs`).
    durable: Option<durable::Journal>,
}

impl Execution {
    /// Creates the enclave of replica `me` around a fresh application.
    pub fn new(
        config: ProtocolConfig,
        me: ReplicaId,
        secret: SecretKey,
        group: GroupSecret,
        app: Box<dyn Application>,
    ) -> Result<Self, ConfigError> {
        let keys = config.validate()?;
        if group.public() != config.execution_group_key {
            return Err(ConfigError::InvalidKey("execution group secret does not match the configuration".into()));
        }
        let enclave = EnclaveId { replica: me, kind: CompartmentKind::Execution };
        let client_macs = keys.client_mac_keys(&secret, config.cluster_id, enclave);
        let windows = vec![ClientWindow::default(); keys.clients()];
        let sessions = Sessions::new(windows.len());
        let genesis_digest =
            Digest::of(&state_bytes(app.as_ref(), &windows, &vec![Results::new(); windows.len()], &sessions.records()));
        let mut snapshots = BTreeMap::new();
        snapshots.insert(0, genesis_digest);
        let sealer = RecordSealer::new(&secret, config.cluster_id, me);
        Ok(Execution {
            keys,
            me,
            secret,
            group,
            sessions,
            view: 0,
            executed: 0,
            slots: BTreeMap::new(),
            app,
            windows,
            client_macs,
            snapshots,
            results: vec![Results::new(); config.clients.len()],
            genesis: genesis_digest,
            checkpoints: CheckpointLog::new(genesis_digest),
            sealer,
            counters: Counters::default(),
            durable: None,
            config,
        })
    }

    /// Digest of the initial state (the genesis checkpoint every compartment starts from).
    pub fn genesis_digest(config: &ProtocolConfig, app: &dyn Application) -> Digest {
        let clients = config.clients.len();
        Digest::of(&state_bytes(
            app,
            &vec![ClientWindow::default(); clients],
            &vec![Results::new(); clients],
            &Sessions::new(clients).records(),
        ))
    }

    /// Last executed sequence number `s_e`.
    pub fn last_executed(&self) -> Seq {
        self.executed
    }

    /// Digest of the current application state: for code that holds the enclave itself
    /// (tests, the simulator's checkers), never reported across the boundary.
    pub fn app_digest(&self) -> Digest {
        self.app.digest()
    }

    fn slot(&mut self, seq: Seq) -> &mut Slot {
        let n = self.config.n();
        self.slots.entry(seq).or_insert_with(|| Slot { batches: Vec::new(), commits: VoteSet::new(n), certified: None })
    }

    /// Whether a message about `seq` can still matter: above `s_e` and inside the window.
    fn wanted(&mut self, seq: Seq, what: [Counter; 2]) -> bool {
        if seq <= self.executed {
            self.counters.bump(what[0]);
            return false;
        }
        if !in_window(&self.config, self.checkpoints.low(), seq) {
            self.counters.bump(what[1]);
            return false;
        }
        true
    }

    /// Stores a batch whose bytes hash to its header's digest (SPEC §3: its integrity comes
    /// from the digest; the commit certificate decides which candidate executes).
    ///
    /// The header's signature only rations candidate places, so it is checked only when it
    /// matters: a certified slot needs no signature (the hash matches the certified digest),
    /// and the first candidate of a slot is taken unchecked. A second candidate for the
    /// same slot must carry a PrePrepare signed by primary(v), so one faulty peer can hold
    /// at most one place with junk and cannot crowd out the genuine batch. In the normal
    /// case this saves one signature verification per batch per replica.
    pub fn on_batch(&mut self, msg: BatchMsg, out: &mut Vec<Output>) {
        let pp = msg.pre_prepare.body;
        // Batches are content-addressed: the same requests may be ordered at two sequence
        // numbers (re-sent after a view change), and a batch fetched by digest may carry
        // another sequence number's header. Every certified slot lacking these bytes takes them.
        let mut targets: Vec<Seq> = self
            .slots
            .range(self.executed + 1..)
            .filter(|(_, slot)| slot.certified == Some(pp.digest) && !slot.batches.iter().any(|(d, _)| *d == pp.digest))
            .map(|(seq, _)| *seq)
            .collect();
        let own_uncertified = !targets.contains(&pp.seq) && self.wants_candidate(pp.seq, pp.digest);
        if targets.is_empty() && !own_uncertified {
            return;
        }
        if Digest::of(&msg.batch) != pp.digest {
            return self.counters.bump(Counter::BatchWrongDigest);
        }
        if own_uncertified {
            let first = self.slots.get(&pp.seq).is_none_or(|slot| slot.batches.is_empty());
            if first || verify_signed(&self.config, &self.keys, &msg.pre_prepare).is_ok() {
                targets.push(pp.seq);
            } else {
                self.counters.bump(Counter::BatchBadSignature);
            }
        }
        for seq in targets {
            let slot = self.slot(seq);
            if slot.batches.len() >= MAX_BATCH_CANDIDATES {
                // Only a certified batch gets here when full: it replaces an uncertified one.
                slot.batches.retain(|(d, _)| Some(*d) == slot.certified);
                slot.batches.truncate(MAX_BATCH_CANDIDATES - 1);
            }
            slot.batches.push((pp.digest, msg.batch.clone()));
        }
        self.try_execute(out);
    }

    /// Whether the slot of `seq` takes a candidate batch with `digest` (counting why not).
    fn wants_candidate(&mut self, seq: Seq, digest: Digest) -> bool {
        if !self.wanted(seq, [Counter::BatchLate, Counter::BatchOutsideWindow]) {
            return false;
        }
        let slot = self.slot(seq);
        if slot.batches.iter().any(|(d, _)| *d == digest) {
            self.counters.bump(Counter::BatchDuplicate);
            return false;
        }
        if slot.batches.len() >= MAX_BATCH_CANDIDATES && slot.certified != Some(digest) {
            self.counters.bump(Counter::BatchTooManyCandidates);
            return false;
        }
        true
    }

    /// Collects a Commit; a commit certificate for `(v, s, d)` certifies `d` at `s`.
    pub fn on_commit(&mut self, commit: Signed<Commit>, out: &mut Vec<Output>) {
        let body = commit.body;
        if body.view != self.view {
            return self.counters.bump(Counter::CommitWrongView);
        }
        if !self.wanted(body.seq, [Counter::CommitLate, Counter::CommitOutsideWindow]) {
            return;
        }
        if body.replica.0 as usize >= self.config.n() {
            return self.counters.bump(Counter::CommitUnknownReplica);
        }
        let quorum = self.config.quorum();
        let slot = self.slot(body.seq);
        if slot.certified.is_some() {
            return self.counters.bump(Counter::CommitAfterCertificate);
        }
        if slot.commits.has(body.replica) {
            return self.counters.bump(Counter::CommitDuplicate);
        }
        if verify_signed(&self.config, &self.keys, &commit).is_err() {
            return self.counters.bump(Counter::CommitBadSignature);
        }
        let slot = self.slot(body.seq);
        slot.commits.insert(body.replica, commit);
        if slot.commits.count(|c| c.view == body.view && c.digest == body.digest) >= quorum {
            slot.certified = Some(body.digest);
            if !slot.batches.iter().any(|(d, _)| *d == body.digest) {
                out.push(Output::Event(Event::MissingBatch { seq: body.seq, digest: body.digest }));
            }
            self.try_execute(out);
        }
    }

    /// Handler (4): execute every certified batch in sequence order.
    fn try_execute(&mut self, out: &mut Vec<Output>) {
        loop {
            let next = self.executed + 1;
            let Some(slot) = self.slots.get(&next) else { return };
            let Some(digest) = slot.certified else { return };
            let Some(i) = slot.batches.iter().position(|(d, _)| *d == digest) else { return };
            let slot = self.slots.remove(&next).expect("slot looked up above");
            let (_, batch) = slot.batches.into_iter().nth(i).expect("index found above");
            // SPEC §9 C3/E1 on this enclave's own step: the next sequence number, with a
            // commit certificate's digest, and the bytes that digest names.
            assert!(Digest::of(&batch) == digest, "E1: executing bytes its certificate does not name");
            if let Some(journal) = &mut self.durable {
                journal.executed(next, digest, &batch);
            }
            self.execute_batch(next, digest, &batch, out);
            self.executed = next;
            if next.is_multiple_of(self.config.checkpoint_interval) {
                self.send_checkpoint(next, out);
            }
        }
    }

    fn execute_batch(&mut self, seq: Seq, digest: Digest, batch: &[u8], out: &mut Vec<Output>) {
        // A certified batch that does not decode can only come from a faulty primary: it
        // executes as an empty batch, identically on every correct Execution enclave.
        let requests = from_bytes::<Vec<Request>>(batch).unwrap_or_else(|_| {
            self.counters.bump(Counter::BatchMalformedNoop);
            Vec::new()
        });
        for request in &requests {
            self.execute_request(request, out);
        }
        self.persist_records(out);
        self.counters.bump(Counter::BatchesExecuted);
        out.push(Output::Event(Event::Executed { seq, digest, requests: requests.len() as u32 }));
    }

    /// One request of a committed batch (SPEC §4.3 (4), §6): executes only if it
    /// authenticates under the client's session key; otherwise a no-op with an error reply
    /// that leaves the timestamp unused, identically on every correct Execution enclave.
    fn execute_request(&mut self, request: &Request, out: &mut Vec<Output>) {
        let c = request.client.0 as usize;
        let Some(window) = self.windows.get(c) else {
            return self.counters.bump(Counter::RequestUnknownClientNoop);
        };
        if window.check(request.timestamp).is_err() {
            // Ordered twice (e.g. re-proposed after a view change and retransmitted): it
            // executed once. A client still waiting retransmits, and the environment hands
            // the retransmission to `on_retransmitted_request`.
            return self.counters.bump(Counter::RequestDuplicateNoop);
        }
        let cached = match self.sessions.admit(&self.config, &self.keys, &self.group, request) {
            Admission::Refused(refusal) => {
                self.counters.bump(refusal.counter());
                let reply = self.reply(request.client, request.timestamp, ReplyBody::Refused(refusal));
                return out.push(Output::Send(Message::Reply(reply)));
            }
            Admission::Registered { epoch } => {
                self.counters.bump(Counter::SessionsRegistered);
                ReplyBody::Registered { epoch }
            }
            Admission::Execute(op) => {
                self.counters.bump(Counter::RequestsExecuted);
                ReplyBody::Plain(self.app.execute(&op))
            }
        };
        if self.windows[c].accept(request.timestamp, self.config.client_window).is_err() {
            unreachable!("timestamp checked unused above, and nothing ran in between that uses it");
        }
        let cache = &mut self.results[c];
        cache.insert(request.timestamp, serde_bytes::ByteBuf::from(to_bytes(&cached)));
        // At most `W` results and REPLY_CACHE_BYTES_PER_CLIENT bytes (but at least one):
        // every client's cache is in every snapshot, which must fit state transfer (SPEC §11).
        while cache.len() as u64 > self.config.client_window
            || (cache.len() > 1 && cached_bytes(cache) > REPLY_CACHE_BYTES_PER_CLIENT)
        {
            cache.pop_first();
        }
        out.push(Output::Send(Message::Reply(self.reply(request.client, request.timestamp, cached))));
    }

    /// Seals the records the application completed (ledger blocks) for the environment to
    /// store (SPEC §7). Every correct replica seals the same record at the same height.
    fn persist_records(&mut self, out: &mut Vec<Output>) {
        for record in self.app.take_records() {
            match self.sealer.seal(record.height, &record.bytes) {
                Ok(sealed) => {
                    self.counters.bump(Counter::RecordsSealed);
                    out.push(Output::Persist { height: record.height, sealed });
                }
                // Only a record beyond the AEAD's size limit; the chain shows the gap.
                Err(_) => self.counters.bump(Counter::RecordSealFailed),
            }
        }
    }

    /// A reply from this enclave: the result sealed for the client's session, MACed for
    /// the client.
    fn reply(&self, client: ClientId, timestamp: Timestamp, body: ReplyBody) -> Reply {
        let body = self.sessions.reply_body(&self.config, client, timestamp, self.me, body);
        let result = to_bytes(&body);
        let mut reply = Reply { view: self.view, client, timestamp, replica: self.me, result, mac: Default::default() };
        reply.mac = reply_mac(&self.client_macs[client.0 as usize], self.config.cluster_id, &reply);
        reply
    }

    /// Answers a retransmitted request that executed: from the result cache (the last `W`
    /// per client, within REPLY_CACHE_BYTES_PER_CLIENT bytes), or with
    /// [`ReplyBody::Evicted`] once its result left the cache. Eviction follows execution
    /// order, so every correct Execution past the same point says the same, and `f + 1`
    /// matching answers tell the client at once instead of after its deadline.
    fn resend_reply(&mut self, client: ClientId, timestamp: Timestamp, out: &mut Vec<Output>) {
        let body = match self.results.get(client.0 as usize).and_then(|cache| cache.get(&timestamp)) {
            Some(cached) => {
                let Ok(body) = from_bytes::<ReplyBody>(cached) else {
                    unreachable!("the cache holds only encodings made by `execute_request` or restored and checked")
                };
                self.counters.bump(Counter::RepliesResent);
                body
            }
            None => {
                self.counters.bump(Counter::RetransmissionNotCached);
                ReplyBody::Evicted
            }
        };
        out.push(Output::Send(Message::Reply(self.reply(client, timestamp, body))));
    }

    /// A client retransmitted a request (delivered by the environment): resend the cached
    /// reply if it executed; otherwise ordering will take care of it.
    pub fn on_retransmitted_request(&mut self, request: Request, out: &mut Vec<Output>) {
        let executed = self.windows.get(request.client.0 as usize).is_some_and(|w| w.check(request.timestamp).is_err());
        if executed {
            self.resend_reply(request.client, request.timestamp, out);
        } else {
            self.counters.bump(Counter::RetransmissionNotExecuted);
        }
    }

    /// Handler (8): snapshot, keep it until a later checkpoint is stable, sign Checkpoint.
    fn send_checkpoint(&mut self, seq: Seq, out: &mut Vec<Output>) {
        // SPEC §9 E2: every sequence number up to `seq` was executed (in order, so `seq` last).
        assert_eq!(seq, self.executed, "E2: Checkpoint for a state not reached");
        let bytes = state_bytes(self.app.as_ref(), &self.windows, &self.results, &self.sessions.records());
        let state = Digest::of(&bytes);
        self.snapshots.insert(seq, state);
        let body = Checkpoint { seq, state, replica: self.me };
        let sig = self.secret.sign(self.config.cluster_id, Purpose::Checkpoint, &body);
        out.push(Output::Send(Message::Checkpoint(Signed { body, sig })));
        // The environment keeps it to serve state transfers: sealed under a key derived from
        // the group key, so only Execution enclaves read it (SPEC §1.1 confidentiality).
        let bytes = self.group.seal_state(self.config.cluster_id, seq, &state, &bytes);
        out.push(Output::Event(Event::Snapshot { seq, digest: state, bytes }));
    }

    /// Handler (9): on a checkpoint certificate, advance `h`, drop the log and older
    /// snapshots.
    pub fn on_checkpoint(&mut self, cp: Signed<Checkpoint>, out: &mut Vec<Output>) {
        match self.checkpoints.on_checkpoint(&self.config, &self.keys, &cp) {
            Err(reject) => self.counters.bump(reject.counter()),
            Ok(None) => {}
            Ok(Some(stable)) => {
                let seq = stable.seq;
                self.slots = self.slots.split_off(&(seq + 1));
                let state = stable.state;
                self.after_stable(seq, state, out);
                self.counters.bump(Counter::CheckpointsStable);
            }
        }
    }

    /// After `h` moved to `seq`: drop the log below it; if behind, ask for state transfer.
    fn after_stable(&mut self, seq: Seq, state: Digest, out: &mut Vec<Output>) {
        self.slots = self.slots.split_off(&(seq + 1));
        self.snapshots = self.snapshots.split_off(&seq);
        out.push(Output::Event(Event::Stable { seq }));
        if self.executed < seq {
            self.counters.bump(Counter::BehindStableCheckpoint);
            out.push(Output::Event(Event::StateNeeded { seq, digest: state }));
        }
    }

    /// Handler (7'): enter the NewView's view, adopt its checkpoint (fetching state if it
    /// is ahead), and make sure every batch of `O` is here (the null batch needs no bytes).
    pub fn on_new_view(&mut self, nv: Signed<NewView>, out: &mut Vec<Output>) {
        if nv.body.view <= self.view {
            return self.counters.bump(Counter::NewViewOld);
        }
        let accepted = match check_new_view(&self.config, &self.keys, &nv, self.genesis, Depth::SignaturesAndCheckpoint)
        {
            Ok(accepted) => accepted,
            Err(e) => return self.counters.bump(reject_counter(true, e)),
        };
        self.view = accepted.view;
        // Commit votes of older views can no longer complete a certificate.
        let n = self.config.n();
        for slot in self.slots.values_mut() {
            slot.commits = VoteSet::new(n);
        }
        let (seq, state) = (accepted.stable.seq, accepted.stable.state);
        if self.checkpoints.adopt(accepted.stable) {
            self.after_stable(seq, state, out);
        }
        let null = null_digest();
        for pp in &accepted.pre_prepares {
            let (s, d) = (pp.body.seq, pp.body.digest);
            if s <= self.executed || !in_window(&self.config, self.checkpoints.low(), s) {
                continue;
            }
            let slot = self.slot(s);
            if slot.batches.iter().any(|(have, _)| *have == d) {
                continue;
            }
            if d == null {
                slot.batches.push((null, null_batch()));
            } else {
                out.push(Output::Event(Event::MissingBatch { seq: s, digest: d }));
            }
        }
        self.counters.bump(Counter::ViewsEntered);
        out.push(Output::Event(Event::ViewEntered { view: self.view }));
        self.try_execute(out);
    }

    /// State transfer: decrypt a sealed snapshot for the stable checkpoint and restore it if
    /// the plaintext's digest is the certified one (SPEC §4.3, §6); then continue from the log.
    pub fn on_restore_state(&mut self, seq: Seq, sealed: Vec<u8>, out: &mut Vec<Output>) {
        let stable = self.checkpoints.stable();
        if seq != stable.seq || seq <= self.executed {
            return self.counters.bump(Counter::RestoreNotNeeded);
        }
        let Ok(bytes) = self.group.open_state(self.config.cluster_id, seq, &stable.state, &sealed) else {
            self.counters.bump(Counter::RestoreNotAuthentic);
            return out.push(Output::Event(Event::StateRejected { seq }));
        };
        if Digest::of(&bytes) != stable.state {
            self.counters.bump(Counter::RestoreWrongDigest);
            return out.push(Output::Event(Event::StateRejected { seq }));
        }
        let Ok(state) = from_bytes::<OwnedExecutionState>(&bytes) else {
            // Certified bytes that do not decode: only if 2f + 1 Execution enclaves signed
            // garbage, i.e. more than f faulty. Refuse rather than corrupt this replica.
            self.counters.bump(Counter::RestoreMalformed);
            return out.push(Output::Event(Event::StateRejected { seq }));
        };
        if state.clients.len() != self.windows.len()
            || state.results.len() != self.windows.len()
            || state.sessions.len() != self.windows.len()
            || state.results.iter().flat_map(|r| r.values()).any(|b| from_bytes::<ReplyBody>(b).is_err())
            || state.results.iter().any(|r| r.len() as u64 > self.config.client_window)
            || state.results.iter().any(|r| r.len() > 1 && cached_bytes(r) > REPLY_CACHE_BYTES_PER_CLIENT)
            || self.app.restore(&state.app).is_err()
        {
            self.counters.bump(Counter::RestoreMalformed);
            return out.push(Output::Event(Event::StateRejected { seq }));
        }
        self.windows = state.clients;
        self.results = state.results;
        self.sessions = Sessions::from_records(&state.sessions);
        self.executed = seq;
        let digest = stable.state;
        self.snapshots.insert(seq, digest);
        // Serve it to peers behind us too (still sealed).
        out.push(Output::Event(Event::Snapshot { seq, digest, bytes: sealed }));
        self.slots = self.slots.split_off(&(seq + 1));
        self.counters.bump(Counter::StatesRestored);
        out.push(Output::Event(Event::StateRestored { seq }));
        self.try_execute(out);
    }

    /// Counters and log size.
    pub fn stats(&self) -> Stats {
        Stats {
            counters: self.counters.to_vec(),
            log_entries: (self.slots.len() + self.snapshots.len() + self.checkpoints.pending_slots()) as u64,
            low_watermark: self.checkpoints.low(),
            view: self.view,
            last_executed: self.executed,
            // Execution signs no slot: it never fences (a restarted one catches up by
            // state transfer, SPEC §4.3).
            recovering: false,
            // No digest of the plaintext state: the host sees counts, never anything
            // derived from what Execution keeps confidential (SPEC §6 last bullet; issue
            // 11 finding 7). Checkpoint digests are the one exception the protocol needs.
        }
    }
}

/// Bytes of one client's cached results.
fn cached_bytes(cache: &Results) -> usize {
    cache.values().map(|body| body.len()).sum()
}

fn state_bytes(
    app: &dyn Application,
    windows: &[ClientWindow],
    results: &[Results],
    sessions: &[Option<SessionRecord>],
) -> Vec<u8> {
    to_bytes(&ExecutionState { app: &app.snapshot(), clients: windows, results, sessions })
}

impl Execution {
    /// Installs a client session without an ordered Register (test fixtures only: a
    /// deployment enables no such feature; see `Sessions::install`).
    #[cfg(feature = "test-support")]
    pub fn install_session(&mut self, client: ClientId, epoch: u64, key: [u8; 32]) -> bool {
        self.sessions.install(client, epoch, key)
    }

    /// Registered session epoch of `client` (tests and diagnostics; never the key).
    pub fn session_epoch(&self, client: ClientId) -> Option<u64> {
        self.sessions.epoch(client)
    }

    /// Answers a recovering enclave's query (SPEC §10 recovery fence) with a signed
    /// statement of this enclave's latest checkpoint and view, echoing the query so that
    /// the statement counts for that query only.
    pub fn on_recovery_query(&mut self, query: RecoveryQuery, out: &mut Vec<Output>) {
        if query.requester.replica.0 as usize >= self.config.n() {
            return self.counters.bump(Counter::RecoveryQueryUnknownReplica);
        }
        let checkpoint = self.executed - self.executed % self.config.checkpoint_interval;
        let body = RecoveryStatement { query, replica: self.me, checkpoint, view: self.view };
        let sig = self.secret.sign(self.config.cluster_id, Purpose::RecoveryStatement, &body);
        self.counters.bump(Counter::RecoveryStatementsSent);
        out.push(Output::Send(Message::RecoveryStatement(Signed { body, sig })));
    }

    /// Digest of the whole checkpointed Execution state (application, dedup windows, cached
    /// results, sessions): equal on every correct Execution enclave after the same order.
    pub fn state_digest(&self) -> Digest {
        Digest::of(&state_bytes(self.app.as_ref(), &self.windows, &self.results, &self.sessions.records()))
    }
}

impl Compartment for Execution {
    fn kind(&self) -> CompartmentKind {
        CompartmentKind::Execution
    }

    fn handle(&mut self, input: Input, out: &mut Vec<Output>) {
        match input {
            Input::Message(Message::Batch(b)) => self.on_batch(b, out),
            Input::Message(Message::Commit(c)) => self.on_commit(c, out),
            Input::Message(Message::Checkpoint(cp)) => self.on_checkpoint(cp, out),
            Input::Message(Message::NewView(nv)) => self.on_new_view(nv, out),
            Input::Message(Message::Request(req)) => self.on_retransmitted_request(req, out),
            Input::RestoreState { seq, bytes } => self.on_restore_state(seq, bytes, out),
            Input::Message(Message::RecoveryQuery(query)) => self.on_recovery_query(query, out),
            Input::Message(_) | Input::OrderBatch(_) | Input::Suspect(_) | Input::BeginRecovery { .. } => {
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
