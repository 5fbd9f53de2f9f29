//! An in-memory cluster: `n` replicas, each a [`BrokerCore`] with its three compartments on
//! the inline backend, joined by a FIFO network of byte frames, driven step by step on one
//! thread. Deterministic: the same calls give the same run. It runs the production code
//! paths (the broker's routing and batching, the boundary's byte crossings, the
//! compartments) without sockets, which makes it the base for tests and the simulator.

use std::collections::{BTreeSet, VecDeque};

use bytes::Bytes;
use std::sync::Arc;

use splitbft_enclave::{Backend, EnclaveHandle, OutputSink, ReplicaSecrets, start_replica};
use splitbft_types::boundary::{Output, Stats};
use splitbft_types::codec::{decode_message, encode_message, from_bytes, to_bytes};
use splitbft_types::crypto::SecretKey;
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::limits::{Limits, MAX_FRAME_BYTES};
use splitbft_types::msg::{Message, Reply, Request};
use splitbft_types::session::GroupSecret;
use splitbft_types::{Application, ClientId, CompartmentKind, ProtocolConfig, ReplicaId};

use crate::core::{Action, BrokerCore, BrokerOptions};
use crate::drive::drive;

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
}

impl LocalCluster {
    /// Builds the cluster described by `secrets`, one application per replica.
    pub fn new(
        secrets: &ClusterSecrets,
        app: impl FnMut() -> Box<dyn Application> + 'static,
        options: BrokerOptions,
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
            app: Box::new(app),
            options,
            observer: None,
            persisted: vec![Vec::new(); secrets.config.n()],
        };
        // SPEC §11: a test cluster whose limits disagree is a mistake in the test.
        let limits = (cluster.app)().limits();
        if let Err(e) = Limits::new(&cluster.protocol, limits, MAX_FRAME_BYTES).check() {
            panic!("LocalCluster: {e}");
        }
        cluster.nodes = (0..cluster.protocol.n()).map(|i| cluster.fresh_node(ReplicaId(i as u32))).collect();
        cluster
    }

    fn fresh_node(&mut self, me: ReplicaId) -> LocalNode {
        let keys = ReplicaSecrets {
            keys: self.seeds[me.0 as usize].map(SecretKey::from_seed),
            execution_group: GroupSecret::from_bytes(&self.group).expect("the group secret round-trips"),
        };
        let sink: OutputSink = Arc::new(|_, _| unreachable!("inline enclaves answer synchronously"));
        let enclaves =
            start_replica(&self.protocol, me, keys, (self.app)(), Backend::Inline, sink).expect("valid configuration");
        LocalNode { core: BrokerCore::new(self.protocol.clone(), me, self.options.clone()), enclaves }
    }

    /// Puts another compartment in place of one of a replica's (the simulator's Byzantine
    /// enclaves). A later [`LocalCluster::restart`] brings back the honest one.
    pub fn replace_enclave(&mut self, replica: ReplicaId, kind: CompartmentKind, enclave: Box<dyn EnclaveHandle>) {
        self.nodes[replica.0 as usize].enclaves[kind.index()] = enclave;
    }

    /// Replaces a replica with a fresh one (a process restart without persistence: genesis
    /// state, view 0), brings it up and lets its peers reconnect to it.
    pub fn restart(&mut self, replica: ReplicaId) {
        self.nodes[replica.0 as usize] = self.fresh_node(replica);
        self.down.remove(&replica);
        self.reconnect(replica);
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
        out.iter()
            .find_map(|o| match from_bytes::<Output>(o) {
                Ok(Output::Stats(s)) => Some(s),
                _ => None,
            })
            .expect("a compartment answers QueryStats")
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
        let n = self.nodes.len() as u32;
        let (network, replies, observer) = (&mut self.network, &mut self.replies, &mut self.observer);
        let persisted = &mut self.persisted[replica.0 as usize];
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
        drive(
            &mut node.core,
            &mut node.enclaves,
            actions,
            self.now_us,
            |_, action| match action {
                Action::Broadcast(frame) => {
                    for to in (0..n).map(ReplicaId).filter(|to| *to != replica) {
                        network.push_back(Packet { from: replica, to, frame: frame.clone() });
                    }
                }
                Action::Send(to, frame) => network.push_back(Packet { from: replica, to, frame }),
                Action::Reply(_, frame) => {
                    if let Ok(Message::Reply(reply)) = decode_message(&frame) {
                        replies.push(reply);
                    }
                }
                Action::Persist { height, sealed } => persisted.push((height, sealed)),
                // Inline compartments of the in-memory cluster run without durability.
                Action::SealState(..) | Action::LogBatch { .. } => {}
                Action::Enclave(..) => unreachable!("drive crosses enclave inputs itself"),
            },
            observe,
        );
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
