//! An in-memory cluster: `n` replicas, each a [`BrokerCore`] with its three compartments on
//! the inline backend, joined by a FIFO network of byte frames, driven step by step on one
//! thread. Deterministic: the same calls give the same run. It runs the production code
//! paths (the broker's routing and batching, the boundary's byte crossings, the
//! compartments) without sockets, which makes it the base for tests and the simulator.
//!
//! Durable replicas are opt-in ([`LocalCluster::new_durable`]): each replica then keeps a
//! [`SimDisk`] with what the real broker's write-ahead log keeps (SPEC §10), and its
//! rounds go through the same [`Pipeline`] as the real driver's group commit: a round's
//! frames and replies leave only once its records are durable. The disk syncs when
//! simulated time moves on ([`LocalCluster::sync`]), so a power failure
//! ([`LocalCluster::power_failure`]) may land between a round's write and its sync.

use std::collections::{BTreeSet, VecDeque};

use bytes::Bytes;
use std::sync::Arc;

use splitbft_enclave::{
    Backend, DurableStart, EnclaveHandle, OutputSink, ReplicaSecrets, start_replica, start_replica_durable,
};
use splitbft_types::boundary::{Output, Stats};
use splitbft_types::codec::{decode_message, encode_message, from_bytes, to_bytes};
use splitbft_types::crypto::SecretKey;
use splitbft_types::durable::SealedState;
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::limits::{Limits, MAX_FRAME_BYTES};
use splitbft_types::msg::{Message, Reply, Request};
use splitbft_types::session::GroupSecret;
use splitbft_types::{Application, ClientId, CompartmentKind, ProtocolConfig, ReplicaId, Seq};

use crate::commit::{Pipeline, Round, Submitted};
use crate::core::{Action, BrokerCore, BrokerOptions};
use crate::drive::drive;
use crate::recovery::MAX_CACHED_BATCHES;

/// Sees every compartment output (the simulator's checkers).
pub type Observer = Box<dyn FnMut(ReplicaId, CompartmentKind, &Output)>;

/// One replica of the local cluster.
pub struct LocalNode {
    /// The broker core.
    pub core: BrokerCore,
    enclaves: [Box<dyn EnclaveHandle>; 3],
}

/// A frame in flight between two brokers.
#[derive(Clone, Debug)]
pub struct Packet {
    /// Sending replica.
    pub from: ReplicaId,
    /// Receiving replica.
    pub to: ReplicaId,
    /// The frame.
    pub frame: Bytes,
}

/// How a durable [`LocalCluster`] keeps its replicas' state (SPEC §10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Durability {
    /// Keep the batch frames the broker logs ([`Action::LogBatch`]), as the real broker's
    /// log does. `false` is a simulator-only switch that shows what the batch log prevents
    /// (after a whole-cluster restart, a batch re-proposed by digest that nobody holds).
    pub log_batches: bool,
}

/// Which of a replica's rounds a power failure loses (SPEC §10 write-ahead).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsynced {
    /// Every round written so far was synced just before the failure (their frames had
    /// not left yet, and never will).
    Synced,
    /// The rounds not synced yet are lost, records and frames together: the failure came
    /// between their write and the `fdatasync`.
    Lost,
}

/// One replica's simulated disk: what the real broker's write-ahead log (`wal.rs`) gives
/// back on open, kept in memory. Per compartment its latest image and every delta after
/// it (older epochs are compacted away, as a segment goes once every compartment has a
/// later image) and its monotonic counter (the last durable record's index plus one, as
/// `Committer::commit_group` advances it); the logged batch frames above the stable
/// checkpoint, newest [`MAX_CACHED_BATCHES`] (what `Wal::open` hands back for the cache).
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    records: [Vec<SealedState>; 3],
    counters: [u64; 3],
    batches: VecDeque<(Seq, Bytes)>,
    low: Seq,
}

impl SimDisk {
    /// Makes one round durable (the group commit of `commit.rs`, without files).
    fn commit(&mut self, round: &Round, log_batches: bool) {
        if log_batches {
            self.batches.extend(round.batches.iter().cloned());
        }
        // SPEC §10: batches at or below the stable checkpoint are no longer needed. (The
        // real log drops whole segments, so it keeps at least these.)
        self.low = self.low.max(round.low);
        let low = self.low;
        self.batches.retain(|(seq, _)| *seq > low);
        while self.batches.len() > MAX_CACHED_BATCHES {
            self.batches.pop_front();
        }
        for (kind, state) in &round.records {
            crate::wal::keep_restorable(&mut self.records[kind.index()], state.clone());
            let counter = &mut self.counters[kind.index()];
            *counter = (*counter).max(state.index.saturating_add(1));
        }
    }

    /// What each compartment starts from ([`CompartmentKind::ALL`] order).
    pub fn start(&self) -> [DurableStart; 3] {
        CompartmentKind::ALL.map(|kind| DurableStart {
            records: self.records[kind.index()].clone(),
            counter: self.counters[kind.index()],
        })
    }

    /// A compartment's durable records: its latest image and the deltas after it.
    pub fn records(&self, kind: CompartmentKind) -> &[SealedState] {
        &self.records[kind.index()]
    }

    /// Logged batch frames kept, oldest first, with their sequence numbers.
    pub fn batches(&self) -> impl Iterator<Item = &(Seq, Bytes)> {
        self.batches.iter()
    }
}

/// A durable replica's write-ahead state in a [`LocalCluster`].
struct DurableNode {
    disk: SimDisk,
    /// Rounds written and not yet synced, oldest first.
    unsynced: Vec<Round>,
    /// Their frames, held until their round is durable (the real driver's [`Pipeline`]).
    pipeline: Pipeline<Action>,
    /// Starts from the disk so far (a deterministic recovery nonce per start).
    starts: u64,
}

impl DurableNode {
    fn new() -> Self {
        DurableNode { disk: SimDisk::default(), unsynced: Vec::new(), pipeline: Pipeline::default(), starts: 0 }
    }
}

/// The whole cluster.
pub struct LocalCluster {
    /// The shared protocol configuration.
    pub protocol: ProtocolConfig,
    nodes: Vec<LocalNode>,
    /// Frames in flight, delivered in order by [`LocalCluster::step`].
    pub network: VecDeque<Packet>,
    /// Replicas whose every frame, in or out, is dropped (crashed or partitioned away).
    pub down: BTreeSet<ReplicaId>,
    replies: Vec<Reply>,
    now_us: u64,
    seeds: Vec<[[u8; 32]; 3]>,
    group: [u8; 32],
    app: Box<dyn FnMut() -> Box<dyn Application>>,
    options: BrokerOptions,
    observer: Option<Observer>,
    /// Sealed records each replica's broker would have appended to its data directory
    /// (SPEC §7), in order; kept across restarts, like a file.
    persisted: Vec<Vec<(u64, Bytes)>>,
    /// Durable replicas, if on: one per replica.
    durability: Option<Durability>,
    durable: Vec<DurableNode>,
}

impl LocalCluster {
    /// Builds the cluster described by `secrets`, one application per replica.
    pub fn new(
        secrets: &ClusterSecrets,
        app: impl FnMut() -> Box<dyn Application> + 'static,
        options: BrokerOptions,
    ) -> Self {
        Self::build(secrets, Box::new(app), options, None)
    }

    /// [`LocalCluster::new`] with durable replicas (SPEC §10): every compartment seals its
    /// state, every replica keeps a [`SimDisk`], and a round's frames leave only once its
    /// records are durable ([`LocalCluster::sync`]).
    pub fn new_durable(
        secrets: &ClusterSecrets,
        app: impl FnMut() -> Box<dyn Application> + 'static,
        options: BrokerOptions,
        durability: Durability,
    ) -> Self {
        Self::build(secrets, Box::new(app), options, Some(durability))
    }

    fn build(
        secrets: &ClusterSecrets,
        app: Box<dyn FnMut() -> Box<dyn Application>>,
        options: BrokerOptions,
        durability: Option<Durability>,
    ) -> Self {
        let protocol = secrets.config.clone();
        let seeds = (0..protocol.n())
            .map(|i| CompartmentKind::ALL.map(|kind| secrets.enclave(ReplicaId(i as u32), kind).seed()))
            .collect();
        let mut cluster = LocalCluster {
            protocol,
            nodes: Vec::new(),
            network: VecDeque::new(),
            down: BTreeSet::new(),
            replies: Vec::new(),
            now_us: 0,
            seeds,
            group: secrets.execution_group.to_bytes(),
            app,
            options,
            observer: None,
            persisted: vec![Vec::new(); secrets.config.n()],
            durability,
            durable: (0..secrets.config.n()).map(|_| DurableNode::new()).collect(),
        };
        // SPEC §11: a test cluster whose limits disagree is a mistake in the test.
        let limits = (cluster.app)().limits();
        if let Err(e) = Limits::new(&cluster.protocol, limits, MAX_FRAME_BYTES).check() {
            panic!("LocalCluster: {e}");
        }
        if durability.is_some() {
            for i in 0..cluster.protocol.n() {
                let (node, replay) = cluster.node_from_disk(ReplicaId(i as u32));
                cluster.nodes.push(node);
                assert!(replay.iter().all(Vec::is_empty), "an empty disk replays nothing");
            }
        } else {
            cluster.nodes = (0..cluster.protocol.n()).map(|i| cluster.fresh_node(ReplicaId(i as u32))).collect();
        }
        cluster
    }

    fn keys(&self, me: ReplicaId) -> ReplicaSecrets {
        ReplicaSecrets {
            keys: self.seeds[me.0 as usize].map(SecretKey::from_seed),
            execution_group: GroupSecret::from_bytes(&self.group).expect("the group secret round-trips"),
        }
    }

    fn fresh_node(&mut self, me: ReplicaId) -> LocalNode {
        let keys = self.keys(me);
        let sink: OutputSink = Arc::new(|_, _| unreachable!("inline enclaves answer synchronously"));
        let enclaves =
            start_replica(&self.protocol, me, keys, (self.app)(), Backend::Inline, sink).expect("valid configuration");
        LocalNode { core: BrokerCore::new(self.protocol.clone(), me, self.options.clone()), enclaves }
    }

    /// A durable replica started from its disk, as the real broker starts
    /// (`node.rs`: `open_durable`, then `start_driver`): each compartment restored from its
    /// own records by [`start_replica_durable`] (fresh on an empty disk), and the broker's
    /// batch cache refilled from the logged frames, each checked like a peer's
    /// ([`BrokerCore::restore_batch`]). Returns what each restore said (views, a pending
    /// ViewChange, Execution's replay) for the caller to route. Honest storage: a refused
    /// state is a bug in the model, not a finding.
    fn node_from_disk(&mut self, me: ReplicaId) -> (LocalNode, [Vec<Bytes>; 3]) {
        let keys = self.keys(me);
        let sink: OutputSink = Arc::new(|_, _| unreachable!("inline enclaves answer synchronously"));
        let durable = &mut self.durable[me.0 as usize];
        durable.unsynced.clear();
        durable.pipeline = Pipeline::default();
        let start = durable.disk.start();
        let (enclaves, replay) =
            start_replica_durable(&self.protocol, me, keys, (self.app)(), Backend::Inline, sink, start)
                .unwrap_or_else(|e| panic!("{me} restarts from its own honest disk: {e}"));
        let mut core = BrokerCore::new(self.protocol.clone(), me, self.options.clone());
        for (_, frame) in durable.disk.batches() {
            core.restore_batch(frame.clone());
        }
        (LocalNode { core, enclaves }, replay)
    }

    /// Puts another compartment in place of one of a replica's (the simulator's Byzantine
    /// enclaves). A later [`LocalCluster::restart`] brings back the honest one.
    pub fn replace_enclave(&mut self, replica: ReplicaId, kind: CompartmentKind, enclave: Box<dyn EnclaveHandle>) {
        self.nodes[replica.0 as usize].enclaves[kind.index()] = enclave;
    }

    /// Replaces a replica with a fresh one (a process restart without persistence: genesis
    /// state, view 0), brings it up and lets its peers reconnect to it. A durable replica
    /// instead restarts from its disk, its unsynced rounds lost (a `kill -9` before the
    /// sync: their frames never left).
    pub fn restart(&mut self, replica: ReplicaId) {
        if self.durability.is_some() {
            self.start_from_disk(replica);
        } else {
            self.nodes[replica.0 as usize] = self.fresh_node(replica);
        }
        self.down.remove(&replica);
        self.reconnect(replica);
    }

    /// Starts a durable replica from its disk and routes what each restore said (SPEC
    /// §10), then asks a compartment that could not prove its state fresh to recover (it
    /// ignores this when it is not recovering; with honest storage none is).
    fn start_from_disk(&mut self, replica: ReplicaId) {
        let (node, replay) = self.node_from_disk(replica);
        self.nodes[replica.0 as usize] = node;
        let durable = &mut self.durable[replica.0 as usize];
        durable.starts += 1;
        // Deterministic, and distinct per replica and start (the real broker draws it from
        // the OS): it only tells recovery queries apart.
        let nonce_seed = (u64::from(replica.0) << 32) ^ durable.starts;
        let mut actions = Vec::new();
        let now = self.now_us;
        for (kind, outputs) in CompartmentKind::ALL.into_iter().zip(replay) {
            if !outputs.is_empty() {
                self.show(replica, kind, &outputs);
                self.nodes[replica.0 as usize].core.on_enclave_outputs(kind, outputs, now, &mut actions);
            }
        }
        self.nodes[replica.0 as usize].core.begin_recovery(nonce_seed, &mut actions);
        self.execute(replica, actions);
    }

    /// Every replica loses power at once (SPEC §10 "whole-cluster restart"): frames in
    /// flight and replies not yet taken are lost, every broker's and every enclave's
    /// memory is lost, and each replica restarts from its own disk only. `unsynced` says
    /// whether the rounds written but not yet synced made it to the disk; either way their
    /// frames never left. Crashed replicas come back too. Panics on a cluster without
    /// durability (a test's mistake).
    pub fn power_failure(&mut self, unsynced: Unsynced) {
        let durability = self.durability.expect("a power failure needs durable replicas (LocalCluster::new_durable)");
        for (durable, persisted) in self.durable.iter_mut().zip(&mut self.persisted) {
            for round in std::mem::take(&mut durable.unsynced) {
                if unsynced == Unsynced::Synced {
                    durable.disk.commit(&round, durability.log_batches);
                    persisted.extend(round.blocks);
                }
            }
            durable.pipeline = Pipeline::default();
        }
        self.network.clear();
        self.replies.clear();
        self.down.clear();
        for i in 0..self.nodes.len() {
            self.start_from_disk(ReplicaId(i as u32));
        }
    }

    /// Makes every durable replica's written rounds durable and lets their frames and
    /// replies leave, in round order (one group commit per replica, `commit.rs`). Called
    /// whenever simulated time moves on ([`LocalCluster::advance`]) and when the network
    /// is otherwise quiet ([`LocalCluster::step`]). Nothing to do without durability.
    pub fn sync(&mut self) {
        let Some(durability) = self.durability else { return };
        for i in 0..self.durable.len() {
            let durable = &mut self.durable[i];
            let Some(upto) = durable.unsynced.last().map(|r| r.id) else { continue };
            for round in std::mem::take(&mut durable.unsynced) {
                durable.disk.commit(&round, durability.log_batches);
                self.persisted[i].extend(round.blocks);
            }
            let frames = durable.pipeline.on_durable(upto);
            let replica = ReplicaId(i as u32);
            for action in frames {
                self.release(replica, action);
            }
        }
    }

    /// Rounds written and not yet synced, per replica (0 without durability).
    pub fn unsynced_rounds(&self, replica: ReplicaId) -> usize {
        self.durable[replica.0 as usize].unsynced.len()
    }

    /// A durable replica's disk.
    pub fn disk(&self, replica: ReplicaId) -> &SimDisk {
        &self.durable[replica.0 as usize].disk
    }

    /// Shows outputs that did not come through [`drive`] to the observer.
    fn show(&mut self, replica: ReplicaId, kind: CompartmentKind, outputs: &[Bytes]) {
        if let Some(observer) = self.observer.as_mut() {
            for output in outputs {
                if let Ok(output) = from_bytes::<Output>(output) {
                    observer(replica, kind, &output);
                }
            }
        }
    }

    /// Sends one network action of `replica` (a frame to peers, or a reply to a client).
    fn release(&mut self, replica: ReplicaId, action: Action) {
        let n = self.nodes.len() as u32;
        match action {
            Action::Broadcast(frame) => {
                for to in (0..n).map(ReplicaId).filter(|to| *to != replica) {
                    self.network.push_back(Packet { from: replica, to, frame: frame.clone() });
                }
            }
            Action::Send(to, frame) => self.network.push_back(Packet { from: replica, to, frame }),
            Action::Reply(_, frame) => {
                if let Ok(Message::Reply(reply)) = decode_message(&frame) {
                    self.replies.push(reply);
                }
            }
            other => unreachable!("only network actions are released, not {other:?}"),
        }
    }

    /// `from`'s connection to `to` was re-established after a loss: `from` resends its
    /// out-log to `to` (SPEC §5).
    pub fn resend_out_log(&mut self, from: ReplicaId, to: ReplicaId) {
        if self.down.contains(&from) {
            return;
        }
        let mut actions = Vec::new();
        let now = self.now_us;
        self.nodes[from.0 as usize].core.on_peer_up(to, now, &mut actions);
        self.execute(from, actions);
    }

    /// Every peer sees `replica` (re)connect and resends its out-log to it (SPEC §5).
    pub fn reconnect(&mut self, replica: ReplicaId) {
        for i in 0..self.nodes.len() {
            let peer = ReplicaId(i as u32);
            if peer == replica || self.down.contains(&peer) {
                continue;
            }
            let mut actions = Vec::new();
            let now = self.now_us;
            self.nodes[i].core.on_peer_up(replica, now, &mut actions);
            self.execute(peer, actions);
        }
    }

    /// Simulated time in microseconds.
    pub fn now_us(&self) -> u64 {
        self.now_us
    }

    /// The broker core of a replica.
    pub fn core(&self, replica: ReplicaId) -> &BrokerCore {
        &self.nodes[replica.0 as usize].core
    }

    /// A client sends `request` to `replica`'s broker.
    pub fn client_sends(&mut self, replica: ReplicaId, request: &Request) {
        let frame = Bytes::from(encode_message(&Message::Request(request.clone())));
        self.client_frame(replica, request.client, frame);
    }

    /// A client connection delivers raw bytes as one frame (for bad-input tests).
    pub fn client_frame(&mut self, replica: ReplicaId, client: ClientId, frame: Bytes) {
        if self.down.contains(&replica) {
            return;
        }
        let mut actions = Vec::new();
        let now = self.now_us;
        self.nodes[replica.0 as usize].core.on_client_frame(client, frame, now, &mut actions);
        self.execute(replica, actions);
    }

    /// Puts a frame on the network as if `from` had sent it to `to`.
    pub fn inject(&mut self, from: ReplicaId, to: ReplicaId, frame: Bytes) {
        self.network.push_back(Packet { from, to, frame });
    }

    /// Delivers the oldest frame in flight; false when the network is empty.
    pub fn step(&mut self) -> bool {
        if self.network.is_empty() {
            self.sync();
        }
        let Some(packet) = self.network.pop_front() else { return false };
        self.deliver(packet);
        true
    }

    /// Delivers frames until the network is quiet or `limit` frames were delivered;
    /// returns how many were delivered.
    pub fn run(&mut self, limit: usize) -> usize {
        let mut delivered = 0;
        while delivered < limit && self.step() {
            delivered += 1;
        }
        delivered
    }

    /// Advances time by `us` and fires every broker's timers.
    pub fn advance(&mut self, us: u64) {
        self.sync();
        self.now_us += us;
        for i in 0..self.nodes.len() {
            let replica = ReplicaId(i as u32);
            if self.down.contains(&replica) {
                continue;
            }
            let mut actions = Vec::new();
            let now = self.now_us;
            self.nodes[i].core.on_tick(now, &mut actions);
            self.execute(replica, actions);
        }
    }

    /// Replies sent to clients so far (taken).
    pub fn take_replies(&mut self) -> Vec<Reply> {
        std::mem::take(&mut self.replies)
    }

    /// A compartment's stats, asked across the boundary.
    pub fn stats(&mut self, replica: ReplicaId, kind: CompartmentKind) -> Stats {
        let mut out = Vec::new();
        let query = Bytes::from(to_bytes(&splitbft_types::boundary::Input::QueryStats));
        self.nodes[replica.0 as usize].enclaves[kind.index()].submit(vec![query], &mut out);
        let mut stats = None;
        let mut others = Vec::new();
        for o in out {
            match from_bytes::<Output>(&o) {
                Ok(Output::Stats(s)) if stats.is_none() => stats = Some(s),
                _ => others.push(o),
            }
        }
        // A durable compartment may seal on any crossing (its first image, on the first
        // one): what it sealed must reach the disk like every other round's records.
        if self.durability.is_some() && !others.is_empty() {
            self.show(replica, kind, &others);
            let mut actions = Vec::new();
            let now = self.now_us;
            self.nodes[replica.0 as usize].core.on_enclave_outputs(kind, others, now, &mut actions);
            self.execute(replica, actions);
        }
        stats.expect("a compartment answers QueryStats")
    }

    /// Crosses raw bytes into a compartment (for bad-input tests); outputs are routed.
    pub fn enclave_input(&mut self, replica: ReplicaId, kind: CompartmentKind, input: Bytes) {
        self.execute(replica, vec![Action::Enclave(kind, input)]);
    }

    /// Sealed records replica `replica` has persisted so far, in order (heights and bytes).
    pub fn persisted(&self, replica: ReplicaId) -> &[(u64, Bytes)] {
        &self.persisted[replica.0 as usize]
    }

    fn execute(&mut self, replica: ReplicaId, actions: Vec<Action>) {
        let durable = self.durability.is_some();
        let (observer, persisted) = (&mut self.observer, &mut self.persisted[replica.0 as usize]);
        let node = &mut self.nodes[replica.0 as usize];
        let observe = |kind: CompartmentKind, outputs: &[Bytes]| {
            if let Some(observer) = observer.as_mut() {
                for output in outputs {
                    if let Ok(output) = from_bytes::<Output>(output) {
                        observer(replica, kind, &output);
                    }
                }
            }
        };
        let mut network = Vec::new();
        let mut round = Round::default();
        drive(
            &mut node.core,
            &mut node.enclaves,
            actions,
            self.now_us,
            |_, action| match action {
                Action::Broadcast(_) | Action::Send(..) | Action::Reply(..) => network.push(action),
                Action::Persist { height, sealed } if durable => round.blocks.push((height, sealed)),
                Action::Persist { height, sealed } => persisted.push((height, sealed)),
                Action::SealState(kind, state) if durable => round.records.push((kind, state)),
                Action::LogBatch { seq, frame } if durable => round.batches.push((seq, frame)),
                // Compartments of a cluster without durability do not seal.
                Action::SealState(..) | Action::LogBatch { .. } => {}
                Action::Enclave(..) => unreachable!("drive crosses enclave inputs itself"),
            },
            observe,
        );
        if !durable {
            for action in network {
                self.release(replica, action);
            }
            return;
        }
        // SPEC §10 write-ahead: the round's frames wait for its records (and a round
        // without records waits behind the rounds before it), as in `node.rs`.
        round.low = node.core.stable();
        let d = &mut self.durable[replica.0 as usize];
        match d.pipeline.submit(!round.is_empty(), network) {
            Submitted::SendNow(frames) => {
                for action in frames {
                    self.release(replica, action);
                }
            }
            Submitted::Held => {}
            Submitted::Write(id) => {
                round.id = id;
                d.unsynced.push(round);
            }
        }
    }

    /// Shows every compartment output to `observer` (for checkers) from now on.
    pub fn set_observer(&mut self, observer: impl FnMut(ReplicaId, CompartmentKind, &Output) + 'static) {
        self.observer = Some(Box::new(observer));
    }

    /// Delivers one frame now, whatever is queued (for simulators with their own network).
    pub fn deliver(&mut self, packet: Packet) {
        if self.down.contains(&packet.from) || self.down.contains(&packet.to) {
            return;
        }
        let mut actions = Vec::new();
        let now = self.now_us;
        self.nodes[packet.to.0 as usize].core.on_peer_frame(packet.from, packet.frame, now, &mut actions);
        self.execute(packet.to, actions);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use splitbft_types::durable::RecordKind;

    fn record(kind: RecordKind, index: u64) -> SealedState {
        SealedState { kind, epoch: 1, index, sealed: vec![index as u8] }
    }

    /// SPEC §10: the simulated disk gives back what `Wal::open` would — per compartment the
    /// latest image and the deltas after it, the counter past the last durable record, the
    /// logged batches above the stable checkpoint — and with the batch log off, no batch.
    #[test]
    fn the_disk_keeps_the_latest_image_its_deltas_and_batches_above_the_stable_checkpoint() {
        let (p, c) = (CompartmentKind::Preparation, CompartmentKind::Confirmation);
        let mut disk = SimDisk::default();
        let round = |records: Vec<(CompartmentKind, SealedState)>, batches: Vec<(Seq, Bytes)>, low: Seq| Round {
            records,
            batches,
            low,
            ..Round::default()
        };
        // A delta before any image is no state to restore.
        disk.commit(&round(vec![(c, record(RecordKind::Delta, 0))], vec![], 0), true);
        assert!(disk.records(c).is_empty());
        disk.commit(
            &round(
                vec![(p, record(RecordKind::Image, 0)), (p, record(RecordKind::Delta, 1))],
                vec![(1, Bytes::from_static(b"one")), (2, Bytes::from_static(b"two"))],
                0,
            ),
            true,
        );
        disk.commit(
            &round(vec![(p, record(RecordKind::Image, 2)), (p, record(RecordKind::Delta, 3))], vec![], 1),
            true,
        );
        let indices: Vec<u64> = disk.records(p).iter().map(|r| r.index).collect();
        assert_eq!(indices, [2, 3], "an image compacts what came before it");
        let start = disk.start();
        assert_eq!(start[p.index()].counter, 4, "the counter is past the last durable record");
        assert_eq!(start[c.index()].counter, 1);
        let kept: Vec<Seq> = disk.batches().map(|(s, _)| *s).collect();
        assert_eq!(kept, [2], "batch 1 is at the stable checkpoint");

        let mut off = SimDisk::default();
        off.commit(&round(vec![], vec![(5, Bytes::from_static(b"five"))], 0), false);
        assert_eq!(off.batches().count(), 0, "the simulator-only switch keeps no batch frame");
    }
}
