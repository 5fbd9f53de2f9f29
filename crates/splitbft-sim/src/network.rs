//! The simulated network: every frame gets a random delay (so frames reorder), and the
//! scenario may drop, duplicate or cut links, crash and restart replicas.

use std::collections::BTreeMap;

use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use splitbft_broker::local::{LocalCluster, Packet};
use splitbft_types::msg::{Reply, Request};
use splitbft_types::{CompartmentKind, ReplicaId};

use crate::{FAULT_PHASE_US, Scenario};

/// Something in flight.
#[derive(Debug)]
pub enum Scheduled {
    /// Broker to broker.
    Peer(Packet),
    /// Client to a replica's broker.
    ToReplica(ReplicaId, Request),
    /// Replica to client.
    ToClient(Reply),
    /// A broken link `(from, to)` reconnected: `from` resends its out-log.
    Reconnect(ReplicaId, ReplicaId),
    /// A hostile environment hands an input to one compartment later.
    Enclave(ReplicaId, CompartmentKind, bytes::Bytes),
}

/// Links, faults and the in-flight queue.
pub struct Network {
    scenario: Scenario,
    queue: BTreeMap<(u64, u64), Scheduled>,
    counter: u64,
    /// Cut off from the other replicas until the given time.
    partition: Option<(ReplicaId, u64)>,
    /// Down, to be restarted at the given time.
    crashed: Option<(ReplicaId, u64)>,
    next_fault_us: u64,
    /// Links with a reconnection pending.
    reconnecting: std::collections::BTreeSet<(ReplicaId, ReplicaId)>,
    /// Replicas a crash-restart may hit (`None`: any). A restart without persistence is
    /// amnesia, a fault of all three kinds (SPEC §1.1): only where it keeps every kind within
    /// `f` beside the seed's faulty and restarted enclaves.
    may_lose_state: Option<Vec<ReplicaId>>,
}

impl Network {
    /// A network for `scenario`; the first fault time is drawn from `rng`.
    pub fn new(scenario: Scenario, rng: &mut ChaCha8Rng) -> Self {
        let next_fault_us = rng.random_range(20_000..300_000);
        Network {
            scenario,
            queue: BTreeMap::new(),
            counter: 0,
            partition: None,
            crashed: None,
            next_fault_us,
            reconnecting: Default::default(),
            may_lose_state: None,
        }
    }

    /// Crash-restarts hit only `replicas` (see `may_lose_state`).
    pub fn limit_crashes(&mut self, replicas: Vec<ReplicaId>) {
        self.may_lose_state = Some(replicas);
    }

    fn faulty(&self, now: u64) -> bool {
        now < FAULT_PHASE_US
    }

    /// Puts `item` in flight until `at`.
    pub fn schedule(&mut self, at: u64, item: Scheduled) {
        self.counter += 1;
        self.queue.insert((at, self.counter), item);
    }

    /// Delay, drop and duplication for one frame sent at `now`: the delivery times.
    fn fate(&mut self, now: u64, rng: &mut ChaCha8Rng) -> Vec<u64> {
        let lossy = self.scenario == Scenario::Lossy && self.faulty(now);
        let max_delay = if lossy { 20_000 } else { 2_000 };
        if lossy && rng.random_bool(0.05) {
            return Vec::new();
        }
        let mut times = vec![now + rng.random_range(50..max_delay)];
        if lossy && rng.random_bool(0.05) {
            times.push(now + rng.random_range(50..max_delay * 2));
        }
        times
    }

    fn cut(&self, a: ReplicaId, b: ReplicaId) -> bool {
        self.partition.is_some_and(|(r, _)| r == a || r == b)
    }

    /// A broker sent a frame to a peer. Brokers talk over TCP, so a lost frame means the
    /// connection broke: it reconnects a little later and the sender resends its out-log.
    pub fn send_peer(&mut self, packet: Packet, now: u64, rng: &mut ChaCha8Rng) {
        let link = (packet.from, packet.to);
        let times = if self.cut(packet.from, packet.to) { Vec::new() } else { self.fate(now, rng) };
        if times.is_empty() {
            if self.reconnecting.insert(link) {
                let at = self.partition.map_or(now, |(_, until)| until.max(now)) + rng.random_range(10_000..60_000);
                self.schedule(at, Scheduled::Reconnect(link.0, link.1));
            }
            return;
        }
        for at in times {
            self.schedule(at, Scheduled::Peer(packet.clone()));
        }
    }

    /// A reconnection happened: the link may lose frames (and reconnect) again.
    pub fn reconnected(&mut self, from: ReplicaId, to: ReplicaId) {
        self.reconnecting.remove(&(from, to));
    }

    /// A client sent a request to a replica.
    pub fn send_to_replica(&mut self, replica: ReplicaId, request: Request, now: u64, rng: &mut ChaCha8Rng) {
        for at in self.fate(now, rng) {
            self.schedule(at, Scheduled::ToReplica(replica, request.clone()));
        }
    }

    /// A replica replied to a client.
    pub fn send_to_client(&mut self, reply: Reply, now: u64, rng: &mut ChaCha8Rng) {
        for at in self.fate(now, rng) {
            self.schedule(at, Scheduled::ToClient(reply.clone()));
        }
    }

    /// When the next frame is due.
    pub fn next_due(&self) -> Option<u64> {
        self.queue.keys().next().map(|(at, _)| *at)
    }

    /// The next frame due by `now`.
    pub fn pop_due(&mut self, now: u64) -> Option<Scheduled> {
        let key = *self.queue.keys().next()?;
        if key.0 > now {
            return None;
        }
        self.queue.remove(&key)
    }

    /// Every replica lost power (`power.rs`): whatever is in flight is lost — frames
    /// between brokers, requests to replicas, replies to clients (their connections broke
    /// with the processes) — and the restarted replicas are all up and connected.
    pub fn power_failure(&mut self) {
        self.queue.clear();
        self.reconnecting.clear();
        self.crashed = None;
    }

    /// Injects the scenario's crashes, restarts and partitions; heals everything once the
    /// fault phase is over.
    pub fn faults(&mut self, now: u64, cluster: &mut LocalCluster, rng: &mut ChaCha8Rng) {
        if let Some((_, until)) = self.partition
            && (now >= until || !self.faulty(now))
        {
            self.partition = None;
            self.next_fault_us = now + rng.random_range(100_000..500_000);
        }
        if let Some((replica, restart_at)) = self.crashed
            && (now >= restart_at || !self.faulty(now))
            && self.scenario == Scenario::CrashRestart
        {
            cluster.restart(replica);
            self.crashed = None;
            self.next_fault_us = now + rng.random_range(200_000..800_000);
        }
        if !self.faulty(now) || now < self.next_fault_us {
            return;
        }
        let victim = ReplicaId(rng.random_range(0..cluster.protocol.n() as u32));
        match self.scenario {
            Scenario::Partition if self.partition.is_none() => {
                self.partition = Some((victim, now + rng.random_range(200_000..800_000)));
            }
            Scenario::CrashPrimary if self.crashed.is_none() => {
                let primary = cluster.protocol.primary(cluster.core(ReplicaId(1)).view());
                cluster.down.insert(primary);
                self.crashed = Some((primary, u64::MAX));
            }
            Scenario::CrashRestart if self.may_lose_state.as_ref().is_some_and(|ok| !ok.contains(&victim)) => {
                // Amnesia there would exceed `f`: the draw spares it and waits as after a crash.
                self.next_fault_us = now + rng.random_range(200_000..800_000);
            }
            Scenario::CrashRestart if self.crashed.is_none() => {
                cluster.down.insert(victim);
                self.crashed = Some((victim, now + rng.random_range(100_000..1_000_000)));
            }
            _ => {}
        }
    }
}
