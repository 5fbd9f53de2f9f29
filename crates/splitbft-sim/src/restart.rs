//! A hostile host restarts one of its *correct* Preparation or Confirmation enclaves (SPEC
//! §1.1 "Restarts, rollback and clones", §10), as an environment action the `random`
//! scenario may draw and the `enclave-restart` scenario always draws. Each target runs
//! with sealed state on from the start (its records are what the host keeps; every record
//! is durable once sealed, so the monotonic counter is the last record's index plus one,
//! SPEC §10), and at a drawn time the host brings it back in one of four ways:
//!
//! - [`Mode::Fresh`]: without any state. It starts behind the recovery fence.
//! - [`Mode::Rollback`]: with an image of an earlier epoch and its deltas. The counter
//!   refuses it as rolled back, and it starts without state, behind the fence (as
//!   `splitbft_enclave::start_replica_durable` does). With no earlier epoch yet, the host
//!   has nothing older to hand: it is a [`Mode::WithState`] restart.
//! - [`Mode::DeltaCut`]: with its latest image and only the first half of the deltas after
//!   it (at least the last one cut): what it signed in the cut deltas is forgotten. The
//!   counter refuses it too. With no delta after the latest image it is a
//!   [`Mode::WithState`] restart.
//! - [`Mode::WithState`]: with its latest image and every delta after it.
//!
//! A restarted enclave counts against `f` of its kind and its replica against liveness's
//! `f` (SPEC §1.1: until it has recovered; the draw counts it for the whole run). The
//! checkers keep what it signed before the restart: a correct enclave never signs two
//! digests for one `(v, s)`, across restarts too (SPEC §9 P1/C1, §10).
//!
//! The guards can be weakened here only ([`Guard`], the CLI's hidden `--no-fence` and
//! `--counter-at-images`). That is how a sweep shows what each prevents.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use splitbft_apps::kv::KvStore;
use splitbft_broker::local::LocalCluster;
use splitbft_confirmation::Confirmation;
use splitbft_enclave::InlineEnclave;
use splitbft_execution::Execution;
use splitbft_preparation::Preparation;
use splitbft_types::boundary::{Compartment, Input};
use splitbft_types::codec::to_bytes;
use splitbft_types::crypto::SecretKey;
use splitbft_types::durable::{RecordKind, SealedState};
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::{CompartmentKind, ReplicaId};

/// What keeps a restarted enclave from equivocating, and a restarted cluster from
/// stalling (SPEC §10), as the simulator models it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    /// The recovery fence, a counter advanced past every durable record, and the batch log.
    Full,
    /// No fence: a fresh enclave starts unfenced, and the counter believes whatever the
    /// host hands back.
    NoFence,
    /// The fence, with the counter of the previous design: advanced at images only, so
    /// deltas cut off the end of the latest image's epoch go unnoticed.
    CounterAtImages,
    /// No batch log: the brokers of a durable cluster (`power.rs`) keep no batch frames on
    /// disk, as before the fix of the whole-cluster restart stall, so after a power
    /// failure a batch re-proposed by digest may be held by nobody.
    NoBatchLog,
}

/// How a restarted enclave comes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No state at all.
    Fresh,
    /// An image of an earlier epoch and its deltas (refused by the counter).
    Rollback,
    /// The latest image with deltas cut off its end (refused by the counter).
    DeltaCut,
    /// The latest image and every delta after it.
    WithState,
}

impl Mode {
    /// Every mode.
    pub const ALL: [Mode; 4] = [Mode::Fresh, Mode::Rollback, Mode::DeltaCut, Mode::WithState];

    /// The name printed with a draw.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Fresh => "fresh",
            Mode::Rollback => "rollback",
            Mode::DeltaCut => "delta-cut",
            Mode::WithState => "with-state",
        }
    }
}

/// One restart a seed drew.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Restart {
    /// The host.
    pub replica: ReplicaId,
    /// Preparation or Confirmation.
    pub kind: CompartmentKind,
    /// How it comes back.
    pub mode: Mode,
    /// When, in simulated microseconds.
    pub at_us: u64,
}

impl fmt::Display for Restart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {} at {} ms", self.replica, self.kind, self.mode.name(), self.at_us / 1_000)
    }
}

/// Restartable kinds: Execution restarts are whole-replica restarts (state transfer).
pub const KINDS: [CompartmentKind; 2] = [CompartmentKind::Preparation, CompartmentKind::Confirmation];

/// Sealed records kept per target: from the image before the latest one on (what a
/// rollback hands back, and what a restart with state needs).
const EPOCHS_KEPT: usize = 2;
/// How often the host asks a recovering enclave to (re)start recovery with a new nonce.
const BEGIN_RECOVERY_EVERY_US: u64 = 300_000;

/// The restarts of one run and the sealed state the host keeps for their targets.
pub struct Restarts {
    pending: Vec<Restart>,
    targets: Vec<(ReplicaId, CompartmentKind)>,
    /// Per target: its records, oldest first, from the image [`EPOCHS_KEPT`] back.
    sealed: BTreeMap<(ReplicaId, CompartmentKind), Vec<SealedState>>,
    guard: Guard,
    next_begin: u64,
    restarted: Vec<(ReplicaId, CompartmentKind)>,
}

impl Restarts {
    /// The drawn restarts whose target is a correct enclave (`faulty` lists the others).
    pub fn new(drawn: &[Restart], faulty: &[(ReplicaId, CompartmentKind)], guard: Guard) -> Self {
        let pending: Vec<Restart> = drawn.iter().filter(|r| !faulty.contains(&(r.replica, r.kind))).copied().collect();
        let mut targets: Vec<_> = pending.iter().map(|r| (r.replica, r.kind)).collect();
        targets.sort();
        targets.dedup();
        Restarts { pending, targets, sealed: BTreeMap::new(), guard, next_begin: 0, restarted: Vec::new() }
    }

    /// Whether `(replica, kind)` keeps sealed state (the observer hands its records here).
    pub fn is_target(&self, replica: ReplicaId, kind: CompartmentKind) -> bool {
        self.targets.contains(&(replica, kind))
    }

    /// Puts a durable instance in place of every target (at the start, and again when its
    /// whole replica restarts without state).
    pub fn install(&mut self, cluster: &mut LocalCluster, secrets: &ClusterSecrets) {
        for (replica, kind) in self.targets.clone() {
            self.install_one(cluster, secrets, replica, kind);
        }
    }

    fn install_one(
        &mut self,
        cluster: &mut LocalCluster,
        secrets: &ClusterSecrets,
        replica: ReplicaId,
        kind: CompartmentKind,
    ) {
        self.sealed.remove(&(replica, kind));
        let enclave = build(secrets, replica, kind, &[], 0).expect("a fresh enclave needs no state");
        cluster.replace_enclave(replica, kind, Box::new(InlineEnclave::new(enclave)));
    }

    /// A whole replica restarted without state: its targets start over, durable again.
    pub fn replica_restarted(&mut self, cluster: &mut LocalCluster, secrets: &ClusterSecrets, replica: ReplicaId) {
        for (r, kind) in self.targets.clone() {
            if r == replica {
                self.install_one(cluster, secrets, r, kind);
            }
        }
    }

    /// A target's enclave handed its host a sealed record.
    pub fn sealed(&mut self, replica: ReplicaId, kind: CompartmentKind, record: &SealedState) {
        let records = self.sealed.entry((replica, kind)).or_default();
        records.push(record.clone());
        let images: Vec<usize> =
            records.iter().enumerate().filter(|(_, r)| r.kind == RecordKind::Image).map(|(i, _)| i).collect();
        if images.len() > EPOCHS_KEPT {
            records.drain(..images[images.len() - EPOCHS_KEPT]);
        }
    }

    /// Runs the restarts due by `now`; returns the enclaves restarted (for the checkers),
    /// and keeps asking recovering ones to recover.
    pub fn step(
        &mut self,
        now: u64,
        cluster: &mut LocalCluster,
        secrets: &ClusterSecrets,
        rng: &mut ChaCha8Rng,
    ) -> Vec<(ReplicaId, CompartmentKind)> {
        let mut done = Vec::new();
        while let Some(i) = self.pending.iter().position(|r| r.at_us <= now) {
            let restart = self.pending.remove(i);
            if cluster.down.contains(&restart.replica) {
                continue;
            }
            self.restart(restart, cluster, secrets);
            done.push((restart.replica, restart.kind));
            self.next_begin = now;
        }
        if now >= self.next_begin && !self.restarted.is_empty() {
            self.next_begin = now + BEGIN_RECOVERY_EVERY_US;
            for (replica, kind) in self.restarted.clone() {
                if !cluster.down.contains(&replica) && cluster.stats(replica, kind).recovering {
                    let input = Input::BeginRecovery { nonce: rng.random() };
                    cluster.enclave_input(replica, kind, Bytes::from(to_bytes(&input)));
                }
            }
        }
        done
    }

    fn restart(&mut self, restart: Restart, cluster: &mut LocalCluster, secrets: &ClusterSecrets) {
        let key = (restart.replica, restart.kind);
        let records = self.sealed.remove(&key).unwrap_or_default();
        let images: Vec<usize> =
            records.iter().enumerate().filter(|(_, r)| r.kind == RecordKind::Image).map(|(i, _)| i).collect();
        // The trusted counter: every record the enclave sealed is durable (the host
        // advanced the counter past each, SPEC §10).
        let counter = records.last().map_or(0, |r| r.index + 1);
        let (handed, mode) = match (restart.mode, images.as_slice()) {
            (Mode::Fresh, _) => (&[][..], Mode::Fresh),
            (Mode::Rollback, [older, newer, ..]) => (&records[*older..*newer], Mode::Rollback),
            (Mode::DeltaCut, [.., latest]) if records.len() - latest > 1 => {
                let deltas = records.len() - latest - 1;
                (&records[*latest..=*latest + deltas / 2], Mode::DeltaCut)
            }
            (Mode::Rollback | Mode::DeltaCut | Mode::WithState, [.., latest]) => (&records[*latest..], Mode::WithState),
            (_, []) => (&[][..], Mode::Fresh),
        };
        // Fence off: a counter that believes the host (whatever it hands back is "fresh"),
        // and a fresh start that does not know it had an earlier life.
        let counter = match (self.guard, handed.last()) {
            (Guard::Full | Guard::NoBatchLog, _) => counter,
            (Guard::CounterAtImages, _) => images.last().map_or(0, |i| records[*i].index + 1),
            (Guard::NoFence, Some(last)) => last.index + 1,
            (Guard::NoFence, None) => 0,
        };
        let enclave = build(secrets, restart.replica, restart.kind, handed, counter)
            .or_else(|_| build(secrets, restart.replica, restart.kind, &[], counter))
            .expect("a fresh enclave needs no state");
        cluster.replace_enclave(restart.replica, restart.kind, Box::new(InlineEnclave::new(enclave)));
        // What it keeps from here on starts with what it was handed back.
        if mode == Mode::WithState {
            self.sealed.insert(key, handed.to_vec());
        }
        if !self.restarted.contains(&key) {
            self.restarted.push(key);
        }
    }
}

/// A durable Preparation or Confirmation of `replica`: restored from `records` (refused
/// when older than `counter`), or fresh with durability on (behind the fence when
/// `counter > 0`: it sealed state before, SPEC §10).
fn build(
    secrets: &ClusterSecrets,
    replica: ReplicaId,
    kind: CompartmentKind,
    records: &[SealedState],
    counter: u64,
) -> Result<Box<dyn Compartment>, splitbft_types::durable::RestoreError> {
    let config = secrets.config.clone();
    let secret = SecretKey::from_seed(secrets.enclave(replica, kind).seed());
    let genesis = Execution::genesis_digest(&config, &KvStore::new());
    let invalid = "the simulator builds valid configurations";
    Ok(match (kind, records.is_empty()) {
        (CompartmentKind::Preparation, true) => {
            let mut p = Preparation::new(config, replica, secret, genesis).expect(invalid);
            p.enable_durability(counter);
            Box::new(p)
        }
        (CompartmentKind::Preparation, false) => {
            Box::new(Preparation::restore(config, replica, secret, genesis, records, counter)?)
        }
        (CompartmentKind::Confirmation, true) => {
            let mut c = Confirmation::new(config, replica, secret, genesis).expect(invalid);
            c.enable_durability(counter);
            Box::new(c)
        }
        (CompartmentKind::Confirmation, false) => {
            Box::new(Confirmation::restore(config, replica, secret, genesis, records, counter)?)
        }
        (CompartmentKind::Execution, _) => unreachable!("only Preparation and Confirmation restart (KINDS)"),
    })
}

/// Draws up to `budget[kind]` restarts of each restartable kind on replicas where that
/// kind is correct, at times inside the fault phase.
pub fn draw(
    n: u32,
    budget: impl Fn(CompartmentKind) -> usize,
    faulty: &[(ReplicaId, CompartmentKind)],
    fault_phase_us: u64,
    aim: Option<ReplicaId>,
    at_least_one: bool,
    rng: &mut ChaCha8Rng,
) -> Vec<Restart> {
    let mut out = Vec::new();
    for kind in KINDS {
        let mut candidates: Vec<ReplicaId> = (0..n).map(ReplicaId).filter(|r| !faulty.contains(&(*r, kind))).collect();
        let most = budget(kind).min(candidates.len());
        let least = usize::from(at_least_one && kind == CompartmentKind::Preparation).min(most);
        let count = rng.random_range(least..=most);
        for i in 0..count {
            let aimed = i == 0 && kind == CompartmentKind::Preparation && aim.is_some_and(|a| candidates.contains(&a));
            let j = match aim {
                Some(a) if aimed => candidates.iter().position(|r| *r == a).expect("checked"),
                _ => rng.random_range(0..candidates.len()),
            };
            let replica = candidates.swap_remove(j);
            let mode = Mode::ALL[rng.random_range(0..Mode::ALL.len())];
            let at_us = rng.random_range(fault_phase_us / 10..fault_phase_us * 9 / 10);
            out.push(Restart { replica, kind, mode, at_us });
        }
    }
    out
}
