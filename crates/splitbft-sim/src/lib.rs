//! Deterministic simulation (STYLE "tests that find bugs"): the production broker core and
//! compartments on the inline backend, a simulated network and simulated time on one
//! thread. One `u64` seed reproduces a whole run: message delays, drops, duplicates,
//! reordering, partitions, crashes and restarts, and the clients' workload.
//!
//! Checkers run over every execution: agreement (no two Execution enclaves execute
//! different batches at one sequence number), validity (only client-issued operations
//! execute), linearizability of the client-observed key-value history (replayed against the
//! agreed order), bounded memory per compartment, and progress once faults heal.
//!
//! The `table1` scenario (paper Table 1) places one Byzantine enclave of each kind on three
//! different replicas and makes every host's environment hostile. Run against SplitBFT it
//! must stay safe; run against the PBFT model — one key per replica, so a replica hosting
//! any faulty part is a faulty replica — it is expected to break.

mod adversary;
mod byzantine;
mod byzantine_client;
mod checkers;
pub mod enclave_restart;
mod fork;
mod hostile;
mod network;
mod power;
pub mod restart;
mod workload;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use bytes::Bytes;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use splitbft_apps::kv::KvStore;
use splitbft_broker::BrokerOptions;
use splitbft_broker::local::{Durability, LocalCluster};
use splitbft_types::boundary::{Event, Input, Output};
use splitbft_types::codec::to_bytes;
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::msg::{Digest, Message};
use splitbft_types::{CompartmentKind, ProtocolConfig, ReplicaId, Seq, View};

use adversary::{Draw, Env, SharedLoot};
use byzantine::Strategy;
use byzantine_client::{ByzantineClient, ClientStrategy};

pub use checkers::History;
use network::{Network, Scheduled};
pub use restart::Guard;
use workload::Clients;

/// Replicas in a simulated cluster unless asked otherwise (`f = 1`).
pub const REPLICAS: usize = 4;
/// Cluster sizes the simulator runs (`n = 3f + 1`).
pub const SIZES: [usize; 3] = [4, 7, 10];
/// Simulated time during which faults are injected (clients work throughout).
const FAULT_PHASE_US: u64 = 1_500_000;
/// Operations each client completes after the faults healed (the liveness check).
const OPS_AFTER_HEAL: usize = 2;
/// Simulated time after faults heal by which every client must have finished.
const HEAL_PHASE_US: u64 = 30_000_000;
/// Checkpoint interval `K` of simulated clusters (log window `L = 2K`): small, so that a
/// short run still takes several checkpoints, garbage-collects and transfers state.
const CHECKPOINT_INTERVAL: u64 = 4;
/// Granularity of broker timers in the simulation.
const TICK_US: u64 = 1_000;
/// How often compartment memory is checked.
const MEMORY_CHECK_US: u64 = 100_000;

/// What goes wrong in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// A healthy network with small random delays.
    Normal,
    /// Drops, duplicates and reordering on every link.
    Lossy,
    /// One replica at a time cut off from the others for a while.
    Partition,
    /// The primary crashes and stays down: a view change must follow.
    CrashPrimary,
    /// One replica at a time crashes and comes back with empty state (state transfer).
    CrashRestart,
    /// Paper Table 1: a faulty Preparation (the primary's), Confirmation and Execution
    /// enclave on three different replicas, and a hostile environment on every host.
    Table1,
    /// Twins-style: every seed draws its faulty enclaves (up to `f` of each kind, anywhere),
    /// their strategies, the hostile hosts and the network (SPEC §1.1).
    Random,
    /// A faulty primary Preparation orders ops sealed under session keys a faulty
    /// Execution recovered from Registers (SPEC §6 validity).
    ForgedOp,
    /// A faulty primary Preparation re-orders every Register at `t = u64::MAX` (SPEC §3).
    RetimedRegister,
    /// A faulty primary withholds some batches' bytes from everyone (SPEC §4.1).
    WithheldBatch,
    /// A faulty Confirmation claims a prepared certificate at `s = 2^40` and the next
    /// primary's faulty Preparation puts it in its NewView (SPEC §4.1 (6)).
    HugeSeqViewChange,
    /// A faulty primary orders junk copies of one client's requests instead of them (SPEC §5).
    Censor,
    /// A hostile host sends junk batch frames under real headers (SPEC §5 batch cache).
    PoisonedBatchCache,
    /// One Byzantine client runs one strategy (bad MACs or signatures, replays, huge
    /// timestamps, oversized ops, floods) next to the correct ones (SPEC §1.1, §6).
    ByzantineClients,
    /// Hostile hosts restart correct Preparation and Confirmation enclaves — without
    /// state, with a rolled-back state, or with their state — up to `f` of each kind,
    /// counted against `f` (SPEC §1.1, §10 recovery fence; `restart.rs`).
    EnclaveRestart,
    /// A host runs two copies of one enclave (any kind; the primary's Preparation half the
    /// time) and shows each different inputs, counted against `f` (SPEC §1.1; `fork.rs`).
    Fork,
    /// A faulty Preparation floods every peer with ViewChange verification work while its
    /// host forces view changes (SPEC §4.1 (5)); liveness must hold.
    ViewChangeFlood,
    /// Durable replicas; every replica loses power at once and restarts from its own disk
    /// (SPEC §10 whole-cluster restart; `power.rs`): no acknowledged write may be lost,
    /// and the cluster must go on executing.
    PowerFailure,
}

/// Which trust model the cluster runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// SplitBFT: a key per enclave; a faulty enclave is only that enclave.
    Splitbft,
    /// PBFT: one key per replica; a replica hosting any faulty part is wholly faulty.
    Pbft,
}

impl Protocol {
    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Splitbft => "splitbft",
            Protocol::Pbft => "pbft",
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "splitbft" => Ok(Protocol::Splitbft),
            "pbft" => Ok(Protocol::Pbft),
            other => Err(format!("unknown protocol {other:?} (expected splitbft or pbft)")),
        }
    }
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 18] = [
        Scenario::Normal,
        Scenario::Lossy,
        Scenario::Partition,
        Scenario::CrashPrimary,
        Scenario::CrashRestart,
        Scenario::Table1,
        Scenario::Random,
        Scenario::ForgedOp,
        Scenario::RetimedRegister,
        Scenario::WithheldBatch,
        Scenario::HugeSeqViewChange,
        Scenario::Censor,
        Scenario::PoisonedBatchCache,
        Scenario::ByzantineClients,
        Scenario::EnclaveRestart,
        Scenario::Fork,
        Scenario::ViewChangeFlood,
        Scenario::PowerFailure,
    ];

    /// The sweep `splitbft sim` runs without `--scenario`: every scenario, `random` and
    /// the named attacks of "Table 1 for real" included (they fail on the code before its
    /// fixes, by design: that is how the simulator showed it finds them), and
    /// `power-failure` (whole-cluster restarts from disk).
    pub const DEFAULT: [Scenario; 18] = Scenario::ALL;

    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Normal => "normal",
            Scenario::Lossy => "lossy",
            Scenario::Partition => "partition",
            Scenario::CrashPrimary => "crash-primary",
            Scenario::CrashRestart => "crash-restart",
            Scenario::Table1 => "table1",
            Scenario::Random => "random",
            Scenario::ForgedOp => "forged-op",
            Scenario::RetimedRegister => "retimed-register",
            Scenario::WithheldBatch => "withheld-batch",
            Scenario::HugeSeqViewChange => "huge-seq-viewchange",
            Scenario::Censor => "censor",
            Scenario::PoisonedBatchCache => "poisoned-batch-cache",
            Scenario::ByzantineClients => "byzantine-clients",
            Scenario::EnclaveRestart => "enclave-restart",
            Scenario::Fork => "fork",
            Scenario::ViewChangeFlood => "view-change-flood",
            Scenario::PowerFailure => "power-failure",
        }
    }
}

impl std::str::FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scenario::ALL.into_iter().find(|sc| sc.name() == s).ok_or_else(|| {
            let names: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
            format!("unknown scenario {s:?} (expected one of {})", names.join(", "))
        })
    }
}

/// The outcome of one seed.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// The seed.
    pub seed: u64,
    /// The scenario.
    pub scenario: Scenario,
    /// The trust model.
    pub protocol: Protocol,
    /// Replicas in the cluster.
    pub n: usize,
    /// What the adversary drew (faulty enclaves, strategies, hostile hosts, network).
    pub draw: String,
    /// Replicas with anything faulty; liveness is owed when at most `f`.
    pub faulty_replicas: usize,
    /// Broken safety properties: agreement, linearizability, bounded memory (empty when safe).
    pub safety_violations: Vec<String>,
    /// Operations executed that no client issued (SPEC §6 validity: Execution runs only
    /// ops that authenticate under the client's session key, so this stays empty).
    pub validity_violations: Vec<String>,
    /// Requests in the agreed order that Execution refused as no-ops (made-up or
    /// corrupted ops that did not authenticate, stale or sessionless requests).
    pub refused_requests: usize,
    /// Why progress stopped after the faults healed, if it did.
    pub liveness_failure: Option<String>,
    /// Client operations completed.
    pub completed: usize,
    /// Highest sequence number executed anywhere.
    pub max_seq: Seq,
    /// Highest view reached.
    pub max_view: u64,
    /// Frames delivered by the simulated network.
    pub delivered: u64,
    /// Simulated time at the end, in microseconds.
    pub sim_time_us: u64,
    /// Each replica's final state, one line each (for replaying a failure).
    pub replicas: Vec<String>,
}

/// Executions observed per replica: `seq -> digest`, and batch bytes by digest.
#[derive(Default)]
struct Observed {
    executed: Vec<BTreeMap<Seq, Digest>>,
    batches: BTreeMap<Digest, Vec<u8>>,
    violations: Vec<String>,
    max_view: u64,
    /// SPEC §9 P1 and C1: the digest each correct Preparation prepared and each correct
    /// Confirmation committed per `(v, s)`, by replica (forgotten when it restarts).
    prepared: BTreeMap<(ReplicaId, View, Seq), Digest>,
    committed: BTreeMap<(ReplicaId, View, Seq), Digest>,
    /// SPEC §9 C4: the highest view each correct Confirmation sent a ViewChange for.
    view_change_sent: BTreeMap<ReplicaId, View>,
    /// Cluster size (the primary of a view, quorum sizes).
    n: usize,
    /// SPEC §9 P2 evidence: every `(v, s, d)` the primary of `v` signed a PrePrepare for
    /// (in a Batch or in a NewView's `O`), whoever sent it.
    pre_prepared: BTreeSet<(View, Seq, Digest)>,
    /// SPEC §9 C2 evidence: the Preparation enclaves that signed a Prepare for `(v, s, d)`.
    prepares: BTreeMap<(View, Seq, Digest), BTreeSet<ReplicaId>>,
    /// SPEC §9 P3: the view each correct Preparation entered.
    preparation_view: BTreeMap<ReplicaId, View>,
    /// Prepares of a view their correct Preparation had not entered yet: one step (one
    /// input) may prepare `O` before reporting the view entered; what is left at the end of
    /// the step breaks P3.
    p3_pending: Vec<(ReplicaId, View)>,
    /// SPEC §9 E2: the prefix each correct Execution executed or restored.
    executed_prefix: BTreeMap<ReplicaId, Seq>,
    /// The highest sequence number any correct Confirmation committed.
    max_committed: Seq,
    /// What a durable cluster's unsynced rounds added to the per-enclave memory above
    /// (`power.rs`): undone when a power failure loses those rounds, whose outputs never
    /// left (an enclave may then sign that slot again; nobody saw the first).
    unsynced: Vec<Undo>,
}

/// One addition to [`Observed`]'s per-enclave memory, to undo if its round is lost.
enum Undo {
    Signed(ReplicaId, View, Seq),
    Committed(ReplicaId, View, Seq),
    ViewChange(ReplicaId, Option<View>),
}

impl Observed {
    fn primary(&self, view: View) -> ReplicaId {
        ReplicaId((view % self.n as u64) as u32)
    }

    /// Some slot is committed by a correct Confirmation and not yet executed by every
    /// replica's Execution: where a power failure makes batch bytes matter (`power.rs`).
    fn slot_in_flight(&self) -> bool {
        let lowest = (0..self.n as u32)
            .map(|r| self.executed_prefix.get(&ReplicaId(r)).copied().unwrap_or(0))
            .min()
            .unwrap_or(0);
        self.max_committed > lowest
    }

    /// Records what any enclave (correct or not) signed: the evidence SPEC §9 P2 and C2
    /// ask of a correct enclave's Prepare and Commit. Called before [`Observed::invariants`].
    fn evidence(&mut self, replica: ReplicaId, output: &Output) {
        match output {
            Output::Send(Message::Batch(b)) if self.primary(b.pre_prepare.body.view) == replica => {
                let pp = b.pre_prepare.body;
                self.pre_prepared.insert((pp.view, pp.seq, pp.digest));
            }
            Output::Send(Message::PrePrepare(pp)) if self.primary(pp.body.view) == replica => {
                self.pre_prepared.insert((pp.body.view, pp.body.seq, pp.body.digest));
            }
            Output::Send(Message::NewView(nv)) if self.primary(nv.body.view) == replica => {
                for pp in &nv.body.pre_prepares {
                    self.pre_prepared.insert((pp.body.view, pp.body.seq, pp.body.digest));
                }
            }
            Output::Send(Message::Prepare(p)) => {
                let key = (p.body.view, p.body.seq, p.body.digest);
                self.prepares.entry(key).or_default().insert(p.body.replica);
            }
            _ => {}
        }
    }

    /// Checks one output of a correct enclave against the SPEC §9 invariants it owns.
    fn invariants(&mut self, replica: ReplicaId, kind: CompartmentKind, output: &Output) {
        let f = (self.n.max(1) - 1) / 3;
        match (kind, output) {
            (CompartmentKind::Preparation, Output::Event(Event::ViewEntered { view })) => {
                let v = self.preparation_view.entry(replica).or_default();
                *v = (*v).max(*view);
                self.p3_pending.retain(|(r, pv)| *r != replica || pv > view);
            }
            (CompartmentKind::Execution, Output::Event(Event::Executed { seq, .. })) => {
                let prefix = self.executed_prefix.entry(replica).or_default();
                if *seq == *prefix + 1 {
                    *prefix = *seq;
                }
            }
            (CompartmentKind::Execution, Output::Event(Event::StateRestored { seq })) => {
                let prefix = self.executed_prefix.entry(replica).or_default();
                *prefix = (*prefix).max(*seq);
            }
            (CompartmentKind::Execution, Output::Send(Message::Checkpoint(cp))) => {
                let prefix = self.executed_prefix.get(&replica).copied().unwrap_or(0);
                if prefix < cp.body.seq {
                    self.violations.push(format!(
                        "E2: correct {replica} Execution signed a Checkpoint for s {} having executed only up to {prefix}",
                        cp.body.seq
                    ));
                }
            }
            (CompartmentKind::Preparation, Output::Send(Message::Batch(b)))
                if self.primary(b.pre_prepare.body.view) == replica =>
            {
                let pp = b.pre_prepare.body;
                self.signed_once(replica, pp.view, pp.seq, pp.digest, "PrePrepares");
            }
            (CompartmentKind::Preparation, Output::Send(Message::NewView(nv)))
                if self.primary(nv.body.view) == replica =>
            {
                for pp in &nv.body.pre_prepares {
                    self.signed_once(replica, pp.body.view, pp.body.seq, pp.body.digest, "PrePrepares");
                }
            }
            (CompartmentKind::Preparation, Output::Send(Message::Prepare(p))) => {
                let (view, seq, digest) = (p.body.view, p.body.seq, p.body.digest);
                if !self.pre_prepared.contains(&(view, seq, digest)) {
                    self.violations.push(format!(
                        "P2: correct {replica} Preparation prepared (v {view}, s {seq}) without a PrePrepare of primary(v)"
                    ));
                }
                if view > self.preparation_view.get(&replica).copied().unwrap_or(0) {
                    self.p3_pending.push((replica, view));
                }
                let key = (replica, p.body.view, p.body.seq);
                if !self.prepared.contains_key(&key) {
                    self.unsynced.push(Undo::Signed(replica, p.body.view, p.body.seq));
                }
                if *self.prepared.entry(key).or_insert(p.body.digest) != p.body.digest {
                    self.violations.push(format!(
                        "P1: correct {replica} Preparation prepared two digests at (v {}, s {})",
                        p.body.view, p.body.seq
                    ));
                }
            }
            (CompartmentKind::Confirmation, Output::Send(Message::Commit(c))) => {
                let (view, seq, digest) = (c.body.view, c.body.seq, c.body.digest);
                self.max_committed = self.max_committed.max(seq);
                let primary = self.primary(view);
                let backups = self
                    .prepares
                    .get(&(view, seq, digest))
                    .map_or(0, |senders| senders.iter().filter(|r| **r != primary).count());
                if !self.pre_prepared.contains(&(view, seq, digest)) || backups < 2 * f {
                    self.violations.push(format!(
                        "C2: correct {replica} Confirmation committed (v {view}, s {seq}) without a prepare certificate ({backups} Prepares)"
                    ));
                }
                let key = (replica, c.body.view, c.body.seq);
                if !self.committed.contains_key(&key) {
                    self.unsynced.push(Undo::Committed(replica, c.body.view, c.body.seq));
                }
                if *self.committed.entry(key).or_insert(c.body.digest) != c.body.digest {
                    self.violations.push(format!(
                        "C1: correct {replica} Confirmation committed two digests at (v {}, s {})",
                        c.body.view, c.body.seq
                    ));
                }
                if self.view_change_sent.get(&replica).is_some_and(|v| c.body.view < *v) {
                    self.violations.push(format!(
                        "C4: correct {replica} Confirmation committed in view {} after a ViewChange for a later view",
                        c.body.view
                    ));
                }
            }
            (CompartmentKind::Confirmation, Output::Send(Message::ViewChange(vc))) => {
                self.unsynced.push(Undo::ViewChange(replica, self.view_change_sent.get(&replica).copied()));
                let v = self.view_change_sent.entry(replica).or_default();
                *v = (*v).max(vc.body.view);
            }
            _ => {}
        }
    }

    /// SPEC §9 P1 (and SPEC §10 across restarts): a correct Preparation signs one digest per
    /// `(v, s)`, in its PrePrepares and Prepares alike.
    fn signed_once(&mut self, replica: ReplicaId, view: View, seq: Seq, digest: Digest, what: &str) {
        if !self.prepared.contains_key(&(replica, view, seq)) {
            self.unsynced.push(Undo::Signed(replica, view, seq));
        }
        if *self.prepared.entry((replica, view, seq)).or_insert(digest) != digest {
            self.violations.push(format!("P1: correct {replica} Preparation signed two {what} at (v {view}, s {seq})"));
        }
    }

    /// A durable cluster synced: what its rounds added stays.
    fn synced(&mut self) {
        self.unsynced.clear();
    }

    /// A power failure lost the unsynced rounds (`Unsynced::Lost`): what they signed never
    /// left, so it is forgotten, newest first.
    fn unsynced_lost(&mut self) {
        for undo in std::mem::take(&mut self.unsynced).into_iter().rev() {
            match undo {
                Undo::Signed(r, v, s) => {
                    self.prepared.remove(&(r, v, s));
                }
                Undo::Committed(r, v, s) => {
                    self.committed.remove(&(r, v, s));
                }
                Undo::ViewChange(r, Some(v)) => {
                    self.view_change_sent.insert(r, v);
                }
                Undo::ViewChange(r, None) => {
                    self.view_change_sent.remove(&r);
                }
            }
        }
    }

    /// The end of one simulation step (every input of it handled): a Prepare whose view
    /// its Preparation still has not entered breaks P3.
    fn end_of_step(&mut self) {
        for (replica, view) in std::mem::take(&mut self.p3_pending) {
            self.violations
                .push(format!("P3: correct {replica} Preparation prepared in view {view} before entering it"));
        }
    }

    /// A restarted replica starts over (amnesia counts against f, SPEC §1.1): its
    /// invariant memory goes with it.
    /// A host restarted one correct enclave (`restart.rs`). What it signed before stays
    /// remembered: the recovery fence promises it never signs a second digest for a
    /// `(v, s)` (SPEC §10). A restarted Confirmation's ViewChanges are forgotten: it commits
    /// again only above `H`, beyond every slot those could have carried.
    fn enclave_restarted(&mut self, replica: ReplicaId, kind: CompartmentKind) {
        if kind == CompartmentKind::Confirmation {
            self.view_change_sent.remove(&replica);
        }
    }

    fn restarted(&mut self, replica: ReplicaId) {
        self.prepared.retain(|(r, _, _), _| *r != replica);
        self.committed.retain(|(r, _, _), _| *r != replica);
        self.view_change_sent.remove(&replica);
        self.preparation_view.remove(&replica);
        self.p3_pending.retain(|(r, _)| *r != replica);
        self.executed_prefix.remove(&replica);
    }
}

/// The cluster of seed `seed` (its cluster id, so no signature of one seed verifies in
/// another); under PBFT the three parts of a replica share one key. The keys are the same
/// in every seed: a seed draws the adversary and the schedule, never the keys (nothing in
/// the fault model depends on their bits), and one process's sweep derives each key once
/// (see `splitbft_types::crypto::memoize_verifications`).
fn cluster_secrets(seed: u64, f: u32, clients: usize, protocol: Protocol) -> ClusterSecrets {
    let mut draws = 0u64;
    let next = move || {
        draws += 1;
        Digest::of(&[b"splitbft-sim keys".as_slice(), &draws.to_le_bytes()].concat()).0
    };
    match protocol {
        Protocol::Splitbft => ClusterSecrets::generate(seed, f, clients, next),
        Protocol::Pbft => ClusterSecrets::generate_one_key_per_replica(seed, f, clients, next),
    }
}

/// Correct simulated clients; a Byzantine client, if drawn, is one more identity.
const CORRECT_CLIENTS: usize = 3;

/// Seeds the stream enclave restarts are drawn from (apart, so that adding them left the
/// rest of every seed's draw unchanged).
const RESTART_STREAM: u64 = 0x7e57_a27e;
/// Seeds the stream of the strategies added after the first ones (forks, ViewChange
/// floods), for the same reason.
const EXTRAS_STREAM: u64 = 0xe7_7a5;
/// Seeds the stream a power failure is drawn from.
const POWER_STREAM: u64 = 0x90_3e5f;

/// The adversary of `scenario` for `seed`.
fn draw(seed: u64, scenario: Scenario, config: &ProtocolConfig, rng: &mut ChaCha8Rng) -> Draw {
    match scenario {
        Scenario::Normal | Scenario::Lossy | Scenario::Partition | Scenario::CrashPrimary | Scenario::CrashRestart => {
            Draw {
                faulty: Vec::new(),
                hosts: Default::default(),
                network: scenario,
                client: None,
                restarts: Vec::new(),
                power_failure: None,
            }
        }
        Scenario::PowerFailure => {
            // Its own stream, like the restarts'. No faulty enclave: a power failure loses
            // nothing, and nothing counts against `f`.
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ POWER_STREAM);
            let networks = [Scenario::Normal, Scenario::Lossy, Scenario::Partition];
            Draw {
                faulty: Vec::new(),
                hosts: Default::default(),
                network: networks[rng.random_range(0..networks.len())],
                client: None,
                restarts: Vec::new(),
                power_failure: Some(power::draw(FAULT_PHASE_US, &mut rng)),
            }
        }
        Scenario::Random => {
            let mut draw = Draw::random(config, rng);
            draw.random_client(&mut ChaCha8Rng::seed_from_u64(seed ^ 0xb1a5_c11e));
            draw.random_extras(config, &mut ChaCha8Rng::seed_from_u64(seed ^ EXTRAS_STREAM));
            draw.random_restarts(config, FAULT_PHASE_US, false, &mut ChaCha8Rng::seed_from_u64(seed ^ RESTART_STREAM));
            draw
        }
        Scenario::EnclaveRestart => {
            let mut draw = Draw::named(scenario, config, rng);
            draw.random_restarts(config, FAULT_PHASE_US, true, &mut ChaCha8Rng::seed_from_u64(seed ^ RESTART_STREAM));
            draw
        }
        Scenario::ByzantineClients => {
            // Seeds take the client strategies in turn: any six consecutive seeds cover all.
            let mut draw = Draw::named(scenario, config, rng);
            draw.client = Some(ClientStrategy::ALL[(seed % ClientStrategy::ALL.len() as u64) as usize]);
            draw
        }
        _ => Draw::named(scenario, config, rng),
    }
}

/// Under PBFT one key signs for a whole replica: a replica with any faulty part is wholly
/// faulty; its other parts run the default strategy of their kind.
fn pbft_faulty(draw: &Draw, config: &ProtocolConfig) -> Vec<(ReplicaId, CompartmentKind, Strategy)> {
    let replicas: std::collections::BTreeSet<ReplicaId> = draw.faulty.iter().map(|(r, _, _)| *r).collect();
    let mut all = Vec::new();
    for r in replicas {
        for kind in CompartmentKind::ALL {
            let drawn = draw.faulty.iter().find(|(fr, fk, _)| *fr == r && *fk == kind).map(|(_, _, s)| *s);
            let default = match kind {
                CompartmentKind::Preparation if config.primary(0) == r => Strategy::Equivocate,
                CompartmentKind::Preparation => Strategy::PrepareEverything,
                CompartmentKind::Confirmation => Strategy::CommitWithoutCertificate,
                CompartmentKind::Execution => Strategy::WrongResultsAndCheckpoints,
            };
            all.push((r, kind, drawn.unwrap_or(default)));
        }
    }
    all
}

/// Runs one seed of `scenario` under SplitBFT with [`REPLICAS`] replicas.
pub fn run(seed: u64, scenario: Scenario) -> RunReport {
    run_protocol(seed, scenario, Protocol::Splitbft)
}

/// Runs one seed of `scenario` under `protocol`'s trust model with [`REPLICAS`] replicas.
pub fn run_protocol(seed: u64, scenario: Scenario, protocol: Protocol) -> RunReport {
    run_with(seed, scenario, protocol, REPLICAS)
}

thread_local! {
    /// Where the last panic on this thread happened (set by [`quiet_panics`]).
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Replaces the panic hook with one that records the panic for the run's report instead
/// of printing it: a panic inside a compartment is a finding (a crash), not the end of a
/// sweep.
pub fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(info.to_string()));
    }));
}

/// Runs one seed of `scenario` under `protocol` with `replicas` replicas (4, 7 or 10). A
/// panic anywhere in the run (a compartment or broker crashing) is reported as a safety
/// violation of that seed.
pub fn run_with(seed: u64, scenario: Scenario, protocol: Protocol, replicas: usize) -> RunReport {
    run_with_fence(seed, scenario, protocol, replicas, true)
}

/// [`run_with`], with the recovery fence of restarted enclaves on or (`fence: false`, the
/// simulator-only switch that shows what the fence prevents, `restart.rs`) off.
pub fn run_with_fence(seed: u64, scenario: Scenario, protocol: Protocol, replicas: usize, fence: bool) -> RunReport {
    let guard = if fence { Guard::Full } else { Guard::NoFence };
    run_with_guard(seed, scenario, protocol, replicas, guard)
}

/// [`run_with`] under one of the rollback guards ([`Guard`]): the full ones, or a weaker
/// model that shows what the full ones prevent.
pub fn run_with_guard(seed: u64, scenario: Scenario, protocol: Protocol, replicas: usize, guard: Guard) -> RunReport {
    assert!(SIZES.contains(&replicas), "the simulator runs n = 4, 7 or 10");
    // Every enclave of the cluster runs in this process: verify each signature once.
    splitbft_types::crypto::memoize_verifications();
    let mut draw_text = String::new();
    let mut faulty_replicas = 0;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_inner(seed, scenario, protocol, replicas, guard, &mut draw_text, &mut faulty_replicas)
    }));
    outcome.unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        let location = LAST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or(message);
        RunReport {
            seed,
            scenario,
            protocol,
            n: replicas,
            draw: draw_text,
            faulty_replicas,
            safety_violations: vec![format!("crash: {location}")],
            validity_violations: Vec::new(),
            refused_requests: 0,
            liveness_failure: None,
            completed: 0,
            max_seq: 0,
            max_view: 0,
            delivered: 0,
            sim_time_us: 0,
            replicas: Vec::new(),
        }
    })
}

/// What seed `seed` of `scenario` draws (printed before a run, so a run that kills the
/// process still names its adversary), and on how many replicas it puts faults.
pub fn draw_of(seed: u64, scenario: Scenario, protocol: Protocol, n: usize) -> (String, usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut secrets = cluster_secrets(seed, ((n - 1) / 3) as u32, CORRECT_CLIENTS, protocol);
    secrets.config.checkpoint_interval = CHECKPOINT_INTERVAL;
    secrets.config.log_window = 2 * CHECKPOINT_INTERVAL;
    let draw = draw(seed, scenario, &secrets.config, &mut rng);
    (draw.to_string(), draw.faulty_replicas())
}

/// How often a hostile host injects `Suspect`.
const SUSPECT_EVERY_US: u64 = 300_000;

fn run_inner(
    seed: u64,
    scenario: Scenario,
    protocol: Protocol,
    n: usize,
    guard: Guard,
    draw_text: &mut String,
    faulty_count: &mut usize,
) -> RunReport {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let f = ((n - 1) / 3) as u32;
    let with_config = |clients: usize| {
        let mut secrets = cluster_secrets(seed, f, clients, protocol);
        secrets.config.checkpoint_interval = CHECKPOINT_INTERVAL;
        secrets.config.log_window = 2 * CHECKPOINT_INTERVAL;
        secrets
    };
    let mut secrets = with_config(CORRECT_CLIENTS);
    // The draw needs only n and the primaries; a Byzantine client adds one identity.
    let draw = draw(seed, scenario, &secrets.config, &mut rng);
    if draw.client.is_some() {
        secrets = with_config(CORRECT_CLIENTS + 1);
    }
    let config = secrets.config.clone();
    let mut options = BrokerOptions::new(&config);
    options.batch_max = 4;
    options.batch_timeout_us = 2_000;
    options.view_change_timeout_us = 150_000;
    // A power failure needs durable replicas (SPEC §10); the batch log is on unless the
    // sweep turned it off to show what it prevents.
    let mut cluster = match draw.power_failure {
        Some(_) => {
            let durability = Durability { log_batches: guard != Guard::NoBatchLog };
            LocalCluster::new_durable(&secrets, || Box::new(KvStore::new()), options, durability)
        }
        None => LocalCluster::new(&secrets, || Box::new(KvStore::new()), options),
    };
    *draw_text = draw.to_string();
    *faulty_count = draw.faulty_replicas();
    let faulty = match protocol {
        Protocol::Splitbft => draw.faulty.clone(),
        Protocol::Pbft => pbft_faulty(&draw, &config),
    };
    let loot = SharedLoot::default();
    byzantine::install(&mut cluster, &secrets, &faulty, protocol == Protocol::Pbft, &loot);
    let faulty_replicas: Vec<ReplicaId> = faulty.iter().map(|(r, _, _)| *r).collect();
    // Correct Execution enclaves: not faulty themselves, and under PBFT not on a faulty replica.
    let correct: Vec<bool> = (0..n as u32)
        .map(|r| match protocol {
            Protocol::Splitbft => {
                !faulty.iter().any(|(fr, k, _)| *fr == ReplicaId(r) && *k == CompartmentKind::Execution)
            }
            Protocol::Pbft => !faulty_replicas.contains(&ReplicaId(r)),
        })
        .collect();
    let faulty_pairs: Vec<(ReplicaId, CompartmentKind)> = faulty.iter().map(|(r, k, _)| (*r, *k)).collect();
    let mut restarts = restart::Restarts::new(&draw.restarts, &faulty_pairs, guard);
    restarts.install(&mut cluster, &secrets);
    // The targets' sealed records, as their hosts keep them (drained into `restarts`).
    let sealed_queue: Rc<RefCell<Vec<(ReplicaId, CompartmentKind, splitbft_types::durable::SealedState)>>> =
        Rc::default();
    let sealed_sink = sealed_queue.clone();
    let targets: Vec<(ReplicaId, CompartmentKind)> = (0..n as u32)
        .flat_map(|r| restart::KINDS.map(|k| (ReplicaId(r), k)))
        .filter(|(r, k)| restarts.is_target(*r, *k))
        .collect();
    let mut mangler = hostile::Hostile::default();
    let observed = Rc::new(RefCell::new(Observed { executed: vec![BTreeMap::new(); n], n, ..Default::default() }));
    let sink = observed.clone();
    let faulty_enclaves: std::collections::BTreeSet<(ReplicaId, CompartmentKind)> =
        faulty.iter().map(|(r, k, _)| (*r, *k)).collect();
    cluster.set_observer(move |replica, kind, output| {
        let mut o = sink.borrow_mut();
        o.evidence(replica, output);
        if !faulty_enclaves.contains(&(replica, kind)) {
            o.invariants(replica, kind, output);
        }
        match (kind, output) {
            (_, Output::Sealed(record)) if targets.contains(&(replica, kind)) => {
                sealed_sink.borrow_mut().push((replica, kind, record.clone()));
            }
            (CompartmentKind::Execution, Output::Event(Event::Executed { seq, digest, .. })) => {
                if let Some(prior) = o.executed[replica.0 as usize].insert(*seq, *digest)
                    && prior != *digest
                {
                    o.violations.push(format!("{replica} executed seq {seq} twice with different batches"));
                }
            }
            (CompartmentKind::Preparation, Output::Send(Message::Batch(b))) => {
                o.batches.insert(b.pre_prepare.body.digest, b.batch.clone());
            }
            (_, Output::Event(Event::ViewEntered { view })) => o.max_view = o.max_view.max(*view),
            _ => {}
        }
    });
    let mut net = Network::new(draw.network, &mut rng);
    // A crash-restart loses a replica's state (amnesia, SPEC §1.1): allowed only where every
    // kind stays within `f` beside the faulty and host-restarted enclaves. (Without this a
    // forked Confirmation on one replica and amnesia on another broke agreement: two faulty
    // Confirmations at f = 1, seed 22103.)
    let lost: Vec<(ReplicaId, CompartmentKind)> =
        faulty_pairs.iter().copied().chain(draw.restarts.iter().map(|r| (r.replica, r.kind))).collect();
    net.limit_crashes(
        (0..n as u32)
            .map(ReplicaId)
            .filter(|victim| {
                CompartmentKind::ALL.iter().all(|kind| {
                    let others: BTreeSet<ReplicaId> =
                        lost.iter().filter(|(r, k)| k == kind && r != victim).map(|(r, _)| *r).collect();
                    others.len() < f as usize
                })
            })
            .collect(),
    );
    // Session keys come from their own stream, so the run's schedule does not depend on them.
    let mut session_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5e55_10e5);
    let mut clients =
        Clients::new(&secrets, &config, CORRECT_CLIENTS, FAULT_PHASE_US, OPS_AFTER_HEAL, &mut session_rng);
    let mut byzantine_client =
        draw.client.map(|strategy| ByzantineClient::new(strategy, &secrets, &config, &mut session_rng));
    let mut byzantine_issued = BTreeMap::new();
    let memory_bound = config.log_window + config.log_window / config.checkpoint_interval + n as u64 + 4;
    let mut next_memory_check = MEMORY_CHECK_US;
    let mut next_suspect = SUSPECT_EVERY_US;
    let mut history = History::default();
    let mut delivered = 0u64;
    // Liveness is owed only while at most f replicas have anything faulty; where it is
    // not, the run stops soon after the fault phase (only safety is checked).
    let live_expected = draw.faulty_replicas() <= f as usize;
    let deadline = if live_expected { FAULT_PHASE_US + HEAL_PHASE_US } else { FAULT_PHASE_US + 2_000_000 };
    // The power failure still to strike, and once it struck: when, and the highest
    // sequence number any replica restored.
    let mut power_pending = draw.power_failure;
    let mut power_struck: Option<(u64, Seq)> = None;
    assert!(
        draw.power_failure.is_none() || (faulty.is_empty() && draw.hosts.is_empty() && draw.restarts.is_empty()),
        "a power failure restarts every enclave honest from its own disk: the draw has no faulty parts"
    );

    clients.start(&mut net, &cluster, &mut rng);
    while cluster.now_us() < deadline && !(clients.all_done() && cluster.now_us() >= FAULT_PHASE_US) {
        // Next event: a frame due, or the next tick.
        let next_tick = cluster.now_us() + TICK_US;
        let due = net.next_due().filter(|t| *t <= next_tick).unwrap_or(next_tick);
        if due > cluster.now_us() {
            cluster.advance(due - cluster.now_us());
        }
        // A durable cluster's disk syncs when time moves on: the rounds of the last
        // instant become durable and their frames leave (SPEC §10 write-ahead).
        cluster.sync();
        observed.borrow_mut().synced();
        let now = cluster.now_us();
        let down_before = cluster.down.clone();
        net.faults(now, &mut cluster, &mut rng);
        let came_back: Vec<ReplicaId> = down_before.difference(&cluster.down).copied().collect();
        for replica in came_back {
            observed.borrow_mut().restarted(replica);
            restarts.replica_restarted(&mut cluster, &secrets, replica);
        }
        for (replica, kind, record) in std::mem::take(&mut *sealed_queue.borrow_mut()) {
            restarts.sealed(replica, kind, &record);
        }
        for (replica, kind) in restarts.step(now, &mut cluster, &secrets, &mut rng) {
            observed.borrow_mut().enclave_restarted(replica, kind);
        }
        if now >= next_suspect && now < FAULT_PHASE_US {
            next_suspect = now + SUSPECT_EVERY_US;
            for (r, env) in &draw.hosts {
                if *env == Env::InjectSuspect && !cluster.down.contains(r) {
                    let view = cluster.core(*r).view();
                    let input = Bytes::from(to_bytes(&Input::Suspect(view)));
                    cluster.enclave_input(*r, CompartmentKind::Confirmation, input);
                }
            }
        }
        while let Some(item) = net.pop_due(now) {
            delivered += 1;
            match item {
                Scheduled::Peer(packet) => match draw.hosts.get(&packet.to) {
                    Some(Env::Mangle) => mangler.deliver(packet, &mut cluster, &mut net, &mut rng),
                    _ => cluster.deliver(packet),
                },
                Scheduled::Enclave(replica, kind, input) => cluster.enclave_input(replica, kind, input),
                Scheduled::ToReplica(replica, request) => cluster.client_sends(replica, &request),
                Scheduled::ToClient(reply) => clients.on_reply(reply, now, &cluster, &mut rng, &mut history),
                Scheduled::Reconnect(from, to) => {
                    net.reconnected(from, to);
                    cluster.resend_out_log(from, to);
                }
            }
        }
        clients.on_tick(now, &mut net, &cluster, &mut rng);
        if let Some(c) = byzantine_client.as_mut() {
            c.on_tick(now, &mut net, &cluster, &mut rng, &mut byzantine_issued);
        }
        // Whatever the replicas sent goes through the simulated network (and, from a
        // hostile host, through its environment first).
        while let Some(packet) = cluster.network.pop_front() {
            let packets = match draw.hosts.get(&packet.from) {
                Some(env) => hostile::outgoing(*env, packet, &loot.lock().expect("loot"), n),
                None => vec![(packet, 0)],
            };
            for (packet, later) in packets {
                net.send_peer(packet, now + later, &mut rng);
            }
        }
        // A flooding Preparation's host broadcasts the ViewChanges it made.
        let flood = std::mem::take(&mut loot.lock().expect("loot").flood);
        for (from, vc) in flood {
            let frame = Bytes::from(splitbft_types::codec::encode_message(&Message::ViewChange(vc)));
            for to in (0..n as u32).map(ReplicaId).filter(|to| *to != from && !cluster.down.contains(&from)) {
                net.send_peer(splitbft_broker::local::Packet { from, to, frame: frame.clone() }, now, &mut rng);
            }
        }
        for reply in cluster.take_replies() {
            net.send_to_client(reply, now, &mut rng);
        }
        // Every replica loses power at the end of this instant: the rounds it wrote are
        // not synced yet (`Unsynced` says whether they reach the disk), and whatever is in
        // flight is lost.
        if let Some(pf) = power_pending
            && pf.due(now, observed.borrow().slot_in_flight(), FAULT_PHASE_US)
        {
            power_pending = None;
            if pf.unsynced == power::Unsynced::Lost {
                observed.borrow_mut().unsynced_lost();
            }
            cluster.power_failure(pf.unsynced);
            net.power_failure();
            let restored = (0..n as u32)
                .map(|r| cluster.stats(ReplicaId(r), CompartmentKind::Execution).last_executed)
                .max()
                .unwrap_or(0);
            power_struck = Some((now, restored));
        }
        observed.borrow_mut().end_of_step();
        if now >= next_memory_check {
            next_memory_check = now + MEMORY_CHECK_US;
            for r in 0..n as u32 {
                if cluster.down.contains(&ReplicaId(r)) {
                    continue;
                }
                for kind in CompartmentKind::ALL {
                    let entries = cluster.stats(ReplicaId(r), kind).log_entries;
                    if entries > memory_bound {
                        observed.borrow_mut().violations.push(format!(
                            "r{r} {kind} holds {entries} log entries (bound {memory_bound}) at {now} us"
                        ));
                    }
                }
            }
        }
    }
    let replicas = (0..n as u32)
        .map(|r| {
            let replica = ReplicaId(r);
            let parts: Vec<String> = CompartmentKind::ALL
                .iter()
                .map(|k| {
                    let s = cluster.stats(replica, *k);
                    format!("{k}: view {} h {} exec {} {:?}", s.view, s.low_watermark, s.last_executed, s.counters)
                })
                .collect();
            let core = cluster.core(replica);
            format!(
                "r{r}{} broker view {} missing {} [{}] counters {:?}",
                if cluster.down.contains(&replica) { " (down)" } else { "" },
                core.view(),
                core.missing_batches(),
                parts.join("; "),
                core.counters()
            )
        })
        .collect();
    let last_executed: Vec<Seq> =
        (0..n as u32).map(|r| cluster.stats(ReplicaId(r), CompartmentKind::Execution).last_executed).collect();
    let o = observed.borrow();
    let mut safety_violations = o.violations.clone();
    let executed: Vec<BTreeMap<Seq, Digest>> =
        o.executed.iter().zip(&correct).map(|(log, ok)| if *ok { log.clone() } else { BTreeMap::new() }).collect();
    safety_violations.extend(checkers::agreement(&executed));
    // What the Byzantine client really signed may execute; the rest must not.
    let mut issued = clients.issued().clone();
    issued.extend(byzantine_issued);
    let replay =
        checkers::linearizable(&executed, &o.batches, &issued, &history, &config, &secrets.execution_group_secret());
    safety_violations.extend(replay.linearizability);
    let max_seq = o.executed.iter().filter_map(|m| m.keys().next_back().copied()).max().unwrap_or(0);
    let mut liveness_failure = (live_expected && !clients.all_done()).then(|| {
        format!(
            "{} of {} operations incomplete {} s after faults healed",
            clients.total() - history.len(),
            clients.total(),
            HEAL_PHASE_US / 1_000_000
        )
    });
    match (draw.power_failure, power_struck) {
        (Some(_), Some((at, restored))) => {
            // SPEC §10: nothing acknowledged is lost, and the cluster goes on from its disks.
            safety_violations.extend(power::acknowledged_writes_survive(&history, at, restored, &executed, &o.batches));
            if live_expected && max_seq <= restored {
                liveness_failure = Some(format!(
                    "no new batch executed after the power failure at {} ms (restored up to seq {restored}){}",
                    at / 1_000,
                    liveness_failure.map(|l| format!("; {l}")).unwrap_or_default()
                ));
            } else if let Some(l) = liveness_failure.take() {
                liveness_failure = Some(format!(
                    "{l} (power failure at {} ms; restored up to seq {restored}, executed up to {max_seq})",
                    at / 1_000
                ));
            }
        }
        (Some(_), None) => safety_violations.push("simulator: the drawn power failure never struck".to_string()),
        (None, _) => {}
    }
    if scenario == Scenario::PoisonedBatchCache && liveness_failure.is_none() {
        // A batch some correct replica holds reaches the others from a correct cache (SPEC
        // §11). The replicas the poisoner sent only junk fetch every batch, so they lag and
        // catch up by state transfer now and then; but a replica that executed no batch at
        // all got none from any correct cache (a cache that kept or served the junk).
        liveness_failure = o.executed.iter().zip(&last_executed).enumerate().find_map(|(r, (log, last))| {
            let ran = log.range(..=*last).count();
            (ran == 0 && *last > 0).then(|| {
                format!("r{r} executed none of sequence numbers 1..={last} itself: no correct cache served it a batch")
            })
        });
    }
    RunReport {
        seed,
        scenario,
        protocol,
        n,
        draw: draw.to_string(),
        faulty_replicas: draw.faulty_replicas(),
        safety_violations,
        validity_violations: replay.validity,
        refused_requests: replay.refused,
        liveness_failure,
        completed: history.len(),
        max_seq,
        max_view: o.max_view,
        delivered,
        sim_time_us: cluster.now_us(),
        replicas,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use splitbft_types::msg::{Commit, Prepare, Sig, Signed, ViewChange};

    fn commit(view: View, seq: Seq, d: u8) -> Output {
        let body = Commit { view, seq, digest: Digest([d; 32]), replica: ReplicaId(1) };
        Output::Send(Message::Commit(Signed { body, sig: Sig([0; 64]) }))
    }

    /// SPEC §9 P1, C1 and C4 flag a correct enclave's second digest per `(v, s)` and a
    /// Commit in an abandoned view; a restart forgets what the enclave did before.
    fn prepare_of(replica: u32, view: View, seq: Seq, d: u8) -> Output {
        let body = Prepare { view, seq, digest: Digest([d; 32]), replica: ReplicaId(replica) };
        Output::Send(Message::Prepare(Signed { body, sig: Sig([0; 64]) }))
    }

    /// The evidence of a prepare certificate for `(v, s, d)` at n = 4: the primary's
    /// PrePrepare (in a Batch) and Prepares of backups 1 and 2.
    fn certificate(o: &mut Observed, view: View, seq: Seq, d: u8) {
        let body = splitbft_types::msg::PrePrepare { view, seq, digest: Digest([d; 32]) };
        let batch =
            splitbft_types::msg::BatchMsg { pre_prepare: Signed { body, sig: Sig([0; 64]) }, batch: Vec::new() };
        o.evidence(ReplicaId((view % 4) as u32), &Output::Send(Message::Batch(batch)));
        for r in [1, 2, 3].into_iter().filter(|r| *r != (view % 4) as u32).take(2) {
            o.evidence(ReplicaId(r), &prepare_of(r, view, seq, d));
        }
    }

    #[test]
    fn invariants_flag_what_a_correct_enclave_must_not_do() {
        let mut o = Observed { n: 4, ..Default::default() };
        let r = ReplicaId(1);
        for (seq, d) in [(3, 1), (3, 2), (3, 3), (4, 1)] {
            certificate(&mut o, 0, seq, d);
        }
        let prepare = |d: u8| prepare_of(1, 0, 3, d);
        o.invariants(r, CompartmentKind::Preparation, &prepare(1));
        o.invariants(r, CompartmentKind::Preparation, &prepare(1));
        assert!(o.violations.is_empty());
        o.invariants(r, CompartmentKind::Preparation, &prepare(2));
        assert!(o.violations.last().is_some_and(|v| v.starts_with("P1")), "{:?}", o.violations);
        o.invariants(r, CompartmentKind::Confirmation, &commit(0, 3, 1));
        o.invariants(r, CompartmentKind::Confirmation, &commit(0, 3, 2));
        assert!(o.violations.last().is_some_and(|v| v.starts_with("C1")), "{:?}", o.violations);
        let stable = splitbft_types::msg::CheckpointCert { seq: 0, state: Digest([0; 32]), proof: Vec::new() };
        let body = ViewChange { view: 1, replica: r, stable, prepared: Vec::new() };
        o.invariants(
            r,
            CompartmentKind::Confirmation,
            &Output::Send(Message::ViewChange(Signed { body, sig: Sig([0; 64]) })),
        );
        o.invariants(r, CompartmentKind::Confirmation, &commit(0, 4, 1));
        assert!(o.violations.last().is_some_and(|v| v.starts_with("C4")), "{:?}", o.violations);
        let before = o.violations.len();
        o.restarted(r);
        o.invariants(r, CompartmentKind::Preparation, &prepare(3));
        o.invariants(r, CompartmentKind::Confirmation, &commit(0, 3, 3));
        assert_eq!(o.violations.len(), before, "a restarted enclave starts over");
    }

    /// SPEC §9 P1 for a primary (and SPEC §10 across its restarts): a correct
    /// Preparation's PrePrepares, in Batches and NewViews, name one digest per `(v, s)`.
    #[test]
    fn invariants_flag_a_primary_signing_two_preprepares() {
        let mut o = Observed { n: 4, ..Default::default() };
        let batch = |view: View, seq: Seq, d: u8| {
            let body = splitbft_types::msg::PrePrepare { view, seq, digest: Digest([d; 32]) };
            let batch =
                splitbft_types::msg::BatchMsg { pre_prepare: Signed { body, sig: Sig([0; 64]) }, batch: Vec::new() };
            Output::Send(Message::Batch(batch))
        };
        let r0 = ReplicaId(0);
        o.invariants(r0, CompartmentKind::Preparation, &batch(0, 1, 1));
        o.invariants(r0, CompartmentKind::Preparation, &batch(0, 1, 1));
        o.invariants(r0, CompartmentKind::Preparation, &batch(0, 2, 2));
        assert!(o.violations.is_empty(), "{:?}", o.violations);
        o.enclave_restarted(r0, CompartmentKind::Preparation);
        o.invariants(r0, CompartmentKind::Preparation, &batch(0, 1, 3));
        assert!(o.violations.last().is_some_and(|v| v.starts_with("P1")), "{:?}", o.violations);
        // r1 is not primary(0): its Batch is no PrePrepare of view 0 (a faulty one's forgery).
        let before = o.violations.len();
        o.invariants(ReplicaId(1), CompartmentKind::Preparation, &batch(0, 1, 4));
        assert_eq!(o.violations.len(), before);
    }

    /// SPEC §9 P2, P3, C2 and E2: a correct Prepare needs the primary's PrePrepare and a
    /// view entered, a correct Commit a prepare certificate (2f backup Prepares: at n = 7
    /// two are not enough), a correct Checkpoint an executed prefix.
    #[test]
    fn invariants_p2_p3_c2_e2() {
        let flagged = |o: &Observed, id: &str| o.violations.iter().filter(|v| v.starts_with(id)).count();
        let mut o = Observed { n: 4, ..Default::default() };
        let r = ReplicaId(1);
        // P2: no PrePrepare of primary(0) = r0 for digest 9; r3 (not the primary) signing one
        // does not count.
        let body = splitbft_types::msg::PrePrepare { view: 0, seq: 1, digest: Digest([9; 32]) };
        o.evidence(ReplicaId(3), &Output::Send(Message::PrePrepare(Signed { body, sig: Sig([0; 64]) })));
        o.invariants(r, CompartmentKind::Preparation, &prepare_of(1, 0, 1, 9));
        assert_eq!(flagged(&o, "P2"), 1, "{:?}", o.violations);
        // P3: a Prepare in view 1 before Preparation entered view 1, then after.
        certificate(&mut o, 1, 2, 5);
        o.invariants(r, CompartmentKind::Preparation, &prepare_of(1, 1, 2, 5));
        o.end_of_step();
        assert_eq!(flagged(&o, "P3"), 1, "{:?}", o.violations);
        // Preparing `O` and then reporting the view entered, in one step, is entering first.
        o.invariants(r, CompartmentKind::Preparation, &prepare_of(1, 1, 3, 5));
        o.invariants(r, CompartmentKind::Preparation, &Output::Event(Event::ViewEntered { view: 1 }));
        o.end_of_step();
        o.invariants(r, CompartmentKind::Preparation, &prepare_of(1, 1, 3, 5));
        o.end_of_step();
        assert_eq!(flagged(&o, "P3"), 1, "entered: no new P3");
        // C2: a Commit with one backup Prepare only, then with a certificate.
        o.evidence(ReplicaId(0), &Output::Send(Message::PrePrepare(Signed { body, sig: Sig([0; 64]) })));
        o.evidence(ReplicaId(2), &prepare_of(2, 0, 1, 9));
        o.invariants(r, CompartmentKind::Confirmation, &commit(0, 1, 9));
        assert_eq!(flagged(&o, "C2"), 1, "{:?}", o.violations);
        certificate(&mut o, 0, 5, 7);
        o.invariants(r, CompartmentKind::Confirmation, &commit(0, 5, 7));
        assert_eq!(flagged(&o, "C2"), 1, "{:?}", o.violations);
        // At n = 7 (f = 2) the same two backup Prepares are no certificate.
        let mut seven = Observed { n: 7, ..Default::default() };
        certificate(&mut seven, 0, 5, 7);
        seven.invariants(r, CompartmentKind::Confirmation, &commit(0, 5, 7));
        assert_eq!(flagged(&seven, "C2"), 1, "{:?}", seven.violations);
        // E2: a Checkpoint at 8 after executing 1..=7, then after 8; a restored state counts.
        let executed = |seq| Output::Event(Event::Executed { seq, digest: Digest([0; 32]), requests: 1 });
        let checkpoint = |seq| {
            let body = splitbft_types::msg::Checkpoint { seq, state: Digest([0; 32]), replica: r };
            Output::Send(Message::Checkpoint(Signed { body, sig: Sig([0; 64]) }))
        };
        for seq in 1..=7 {
            o.invariants(r, CompartmentKind::Execution, &executed(seq));
        }
        o.invariants(r, CompartmentKind::Execution, &checkpoint(8));
        assert_eq!(flagged(&o, "E2"), 1, "{:?}", o.violations);
        o.invariants(r, CompartmentKind::Execution, &executed(8));
        o.invariants(r, CompartmentKind::Execution, &checkpoint(8));
        o.invariants(r, CompartmentKind::Execution, &Output::Event(Event::StateRestored { seq: 16 }));
        o.invariants(r, CompartmentKind::Execution, &checkpoint(16));
        assert_eq!(flagged(&o, "E2"), 1, "{:?}", o.violations);
    }
}
