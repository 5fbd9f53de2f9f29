//! The adversary of one seed (Twins-style, SPEC §1.1): which enclaves are faulty — up to
//! `f` of each kind, on any replicas, several kinds on one replica allowed — which named
//! strategy each runs, and what each hostile environment does. Faulty enclaves collude
//! through one shared [`Loot`]: what a faulty Execution can decrypt (session keys), the
//! ViewChanges a faulty Confirmation forged, the batches a faulty primary withholds.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex};

use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use splitbft_types::codec::from_bytes;
use splitbft_types::msg::{Digest, Request, Signed, ViewChange};
use splitbft_types::session::{GroupSecret, SessionKey, SessionOp};
use splitbft_types::{ClientId, CompartmentKind, ProtocolConfig, ReplicaId, View};

use crate::Scenario;
use crate::byzantine::Strategy;
use crate::byzantine_client::ClientStrategy;
use crate::power::PowerFailure;
use crate::restart::{self, Restart};

/// What a hostile environment (the untrusted broker of one host) does beyond relaying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Env {
    /// Mangles frames arriving at its host: withholds them from one compartment, hands
    /// Preparation and Confirmation different PrePrepares, replays, flips bits, delays
    /// NewViews to some compartments, injects `QueryStats` and junk `RestoreState`.
    Mangle,
    /// Strips the batch bytes off every Batch frame it sends whose digest the adversary
    /// withholds (also when answering a fetch): peers get the header alone.
    StripBatches,
    /// Injects `Suspect` into its Confirmation every so often (view changes on demand).
    InjectSuspect,
    /// Sends every Batch frame genuine to `2f` peers only (with a junk copy after it) and
    /// as a junk copy (right header, wrong bytes) to the others (see `hostile::outgoing`).
    PoisonCache,
}

impl Env {
    const ALL: [Env; 4] = [Env::Mangle, Env::StripBatches, Env::InjectSuspect, Env::PoisonCache];

    /// The name printed with a draw.
    pub fn name(self) -> &'static str {
        match self {
            Env::Mangle => "mangle",
            Env::StripBatches => "strip-batches",
            Env::InjectSuspect => "inject-suspect",
            Env::PoisonCache => "poison-cache",
        }
    }
}

/// Everything a seed drew.
#[derive(Clone, Debug)]
pub struct Draw {
    /// Faulty enclaves and their strategies.
    pub faulty: Vec<(ReplicaId, CompartmentKind, Strategy)>,
    /// Hostile environments.
    pub hosts: BTreeMap<ReplicaId, Env>,
    /// The network's misbehaviour (one of the benign scenarios).
    pub network: Scenario,
    /// A Byzantine client, if any (it does not count against `f`: liveness stays owed).
    pub client: Option<ClientStrategy>,
    /// Correct enclaves their hosts restart (each counts against `f` of its kind).
    pub restarts: Vec<Restart>,
    /// Every replica loses power at once and restarts from its own disk (`power.rs`;
    /// nothing is lost, so it does not count against `f`).
    pub power_failure: Option<PowerFailure>,
}

impl Draw {
    /// Replicas with anything faulty: an enclave, a hostile host, or (crash-primary) a
    /// replica that never comes back. Liveness is owed only while this is at most `f`.
    pub fn faulty_replicas(&self) -> usize {
        let mut set: BTreeSet<ReplicaId> = self.faulty.iter().map(|(r, _, _)| *r).collect();
        set.extend(self.hosts.keys().copied());
        set.extend(self.restarts.iter().map(|r| r.replica));
        set.len() + usize::from(self.network == Scenario::CrashPrimary)
    }

    /// The draw of a named scenario (fixed placements that aim at one finding).
    pub fn named(scenario: Scenario, config: &ProtocolConfig, rng: &mut ChaCha8Rng) -> Draw {
        use CompartmentKind::*;
        let n = config.n() as u32;
        let p0 = config.primary(0);
        let anywhere = ReplicaId(rng.random_range(0..n));
        let (faulty, hosts): (Vec<_>, Vec<_>) = match scenario {
            Scenario::Table1 => (
                vec![
                    (ReplicaId(0), Preparation, Strategy::Equivocate),
                    (ReplicaId(1), Confirmation, Strategy::CommitWithoutCertificate),
                    (ReplicaId(2), Execution, Strategy::WrongResultsAndCheckpoints),
                ],
                (0..n).map(|r| (ReplicaId(r), Env::Mangle)).collect(),
            ),
            Scenario::ForgedOp => {
                (vec![(p0, Preparation, Strategy::ForgeOps), (anywhere, Execution, Strategy::Leak)], vec![])
            }
            Scenario::RetimedRegister => (vec![(p0, Preparation, Strategy::RetimeRegister)], vec![]),
            Scenario::WithheldBatch => {
                (vec![(p0, Preparation, Strategy::WithholdBatch)], vec![(p0, Env::StripBatches)])
            }
            Scenario::HugeSeqViewChange => {
                // The Confirmation forges; the next primary's Preparation puts it in a
                // NewView; the current primary's host makes the view change happen.
                let next = config.primary(1);
                (
                    vec![
                        (anywhere, Confirmation, Strategy::HugeSeqViewChange),
                        (next, Preparation, Strategy::BadNewView),
                    ],
                    vec![(anywhere, Env::InjectSuspect), (next, Env::InjectSuspect)],
                )
            }
            Scenario::Censor => (vec![(p0, Preparation, Strategy::JunkCopies)], vec![]),
            Scenario::Fork => {
                let kind = CompartmentKind::ALL[rng.random_range(0..3usize)];
                let at = if kind == Preparation && rng.random_bool(0.5) { p0 } else { anywhere };
                (vec![(at, kind, Strategy::Fork)], vec![])
            }
            // The flooder's own host forces view changes: one faulty replica in all.
            Scenario::ViewChangeFlood => {
                (vec![(anywhere, Preparation, Strategy::ViewChangeFlood)], vec![(anywhere, Env::InjectSuspect)])
            }
            // The primary's host: every batch starts out at one backup only (SPEC §11).
            Scenario::PoisonedBatchCache => (vec![], vec![(p0, Env::PoisonCache)]),
            _ => (vec![], vec![]),
        };
        let network = Scenario::Normal;
        Draw {
            faulty,
            hosts: hosts.into_iter().collect(),
            network,
            client: None,
            restarts: Vec::new(),
            power_failure: None,
        }
    }

    /// A random draw: up to `f` faulty enclaves of each kind anywhere, a strategy each,
    /// hostile hosts, and a network misbehaviour.
    pub fn random(config: &ProtocolConfig, rng: &mut ChaCha8Rng) -> Draw {
        let n = config.n() as u32;
        let f = config.f as usize;
        let mut faulty = Vec::new();
        for kind in CompartmentKind::ALL {
            let count = rng.random_range(0..=f);
            let mut replicas: Vec<u32> = (0..n).collect();
            // An adversary aims at primaries: half the time the first faulty Preparation
            // is the primary of view 0 or 1 (it still may be anywhere, Twins-style).
            let aimed = kind == CompartmentKind::Preparation && rng.random_bool(0.5);
            if aimed {
                let target = config.primary(rng.random_range(0..2)).0;
                replicas.swap(0, target as usize);
            }
            for i in 0..count {
                let j = if i == 0 && aimed { 0 } else { rng.random_range(i..replicas.len()) };
                replicas.swap(i, j);
                let strategies = Strategy::of_kind(kind);
                let strategy = strategies[rng.random_range(0..strategies.len())];
                faulty.push((ReplicaId(replicas[i]), kind, strategy));
            }
        }
        let mut hosts = BTreeMap::new();
        // A withholding Preparation has its host strip the batches it withholds.
        for (r, _, s) in &faulty {
            if *s == Strategy::WithholdBatch {
                hosts.insert(*r, Env::StripBatches);
            }
        }
        for r in 0..n {
            if rng.random_bool(0.25) {
                hosts.entry(ReplicaId(r)).or_insert(Env::ALL[rng.random_range(0..Env::ALL.len())]);
            }
        }
        let networks = [Scenario::Normal, Scenario::Lossy, Scenario::Partition, Scenario::CrashRestart];
        let network = networks[rng.random_range(0..networks.len())];
        Draw { faulty, hosts, network, client: None, restarts: Vec::new(), power_failure: None }
    }

    /// Restarts of correct Preparation and Confirmation enclaves by their hosts, within what
    /// `f` leaves of each kind after the faulty ones (SPEC §1.1), drawn from `rng` (a stream
    /// of its own). `always`: at least one Preparation restart, the first aimed at the
    /// primary of view 0 half the time; otherwise a third of the draws restart anything.
    pub fn random_restarts(
        &mut self,
        config: &ProtocolConfig,
        fault_phase_us: u64,
        always: bool,
        rng: &mut ChaCha8Rng,
    ) {
        if !always && !rng.random_bool(1.0 / 3.0) {
            return;
        }
        let f = config.f as usize;
        let faulty: Vec<(ReplicaId, CompartmentKind)> = self.faulty.iter().map(|(r, k, _)| (*r, *k)).collect();
        let budget = |kind| f - faulty.iter().filter(|(_, k)| *k == kind).count().min(f);
        let aim = rng.random_bool(0.5).then(|| config.primary(0));
        self.restarts = restart::draw(config.n() as u32, budget, &faulty, fault_phase_us, aim, always, rng);
    }

    /// Strategies added after the first ones, from a stream of their own (so that the rest
    /// of a seed's draw stayed as it was): a sixth of the draws add a ViewChange-flooding
    /// Preparation, a sixth a forked enclave of any kind, where `f` leaves room.
    pub fn random_extras(&mut self, config: &ProtocolConfig, rng: &mut ChaCha8Rng) {
        let n = config.n() as u32;
        let f = config.f as usize;
        for strategy in [Strategy::ViewChangeFlood, Strategy::Fork] {
            if !rng.random_bool(1.0 / 6.0) {
                continue;
            }
            let kind = match strategy {
                Strategy::Fork => CompartmentKind::ALL[rng.random_range(0..3usize)],
                _ => CompartmentKind::Preparation,
            };
            let taken: Vec<ReplicaId> = self.faulty.iter().filter(|(_, k, _)| *k == kind).map(|(r, _, _)| *r).collect();
            if taken.len() >= f {
                continue;
            }
            let free: Vec<ReplicaId> = (0..n).map(ReplicaId).filter(|r| !taken.contains(r)).collect();
            let replica = free[rng.random_range(0..free.len())];
            self.faulty.push((replica, kind, strategy));
        }
    }

    /// Half the random draws add a Byzantine client, drawn from `rng` (a stream of its own,
    /// so that the rest of a seed's draw and run does not depend on it).
    pub fn random_client(&mut self, rng: &mut ChaCha8Rng) {
        if rng.random_bool(0.5) {
            self.client = Some(ClientStrategy::ALL[rng.random_range(0..ClientStrategy::ALL.len())]);
        }
    }
}

impl fmt::Display for Draw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let faulty: Vec<String> = self.faulty.iter().map(|(r, k, s)| format!("{r} {k} {}", s.name())).collect();
        let hosts: Vec<String> = self.hosts.iter().map(|(r, e)| format!("{r} {}", e.name())).collect();
        write!(
            f,
            "faulty [{}] hostile hosts [{}] network {}",
            faulty.join(", "),
            hosts.join(", "),
            self.network.name()
        )?;
        if !self.restarts.is_empty() {
            let restarts: Vec<String> = self.restarts.iter().map(|r| r.to_string()).collect();
            write!(f, " restarts [{}]", restarts.join(", "))?;
        }
        if let Some(power_failure) = &self.power_failure {
            write!(f, " {power_failure}")?;
        }
        match self.client {
            Some(c) => write!(f, " byzantine client {}", c.name()),
            None => Ok(()),
        }
    }
}

/// What the colluding faulty enclaves know, shared between them.
#[derive(Default)]
pub struct Loot {
    /// The Execution group secret, once any faulty Execution enclave exists.
    pub group: Option<GroupSecret>,
    /// Session keys recovered from Registers with the group secret.
    pub sessions: BTreeMap<ClientId, (u64, SessionKey)>,
    /// ViewChanges seen or forged, by view and sender.
    pub view_changes: BTreeMap<View, BTreeMap<ReplicaId, Signed<ViewChange>>>,
    /// ViewChanges a correct Preparation would refuse (forged by a faulty Confirmation).
    pub refusable: BTreeSet<(View, ReplicaId)>,
    /// Batch digests whose bytes the adversary withholds.
    pub withheld: BTreeSet<Digest>,
    /// ViewChanges a flooding Preparation made for its host to broadcast, by sender.
    pub flood: Vec<(ReplicaId, Signed<ViewChange>)>,
}

/// Flood ViewChanges queued for the hosts between two simulation steps, at most.
pub const FLOOD_QUEUE: usize = 256;

/// Views back from the newest for which ViewChanges are kept.
const VIEWS_KEPT: usize = 8;

impl Loot {
    /// Learns the session keys of every Register in `batch` it can open.
    pub fn scan_batch(&mut self, config: &ProtocolConfig, batch: &[u8]) {
        let Some(group) = &self.group else { return };
        let requests: Vec<Request> = from_bytes(batch).unwrap_or_default();
        for req in requests {
            if let Ok(SessionOp::Register { body, .. }) = from_bytes::<SessionOp>(&req.op)
                && let Ok(key) = group.open_session_key(config.cluster_id, req.client, body.epoch, &body.sealed)
            {
                self.sessions.insert(req.client, (body.epoch, key));
            }
        }
    }

    /// Remembers a ViewChange (bounded to the last few views).
    pub fn view_change(&mut self, vc: Signed<ViewChange>) {
        self.view_changes.entry(vc.body.view).or_default().insert(vc.body.replica, vc);
        while self.view_changes.len() > VIEWS_KEPT {
            self.view_changes.pop_first();
        }
    }
}

/// The loot shared by one seed's faulty enclaves.
pub type SharedLoot = Arc<Mutex<Loot>>;
