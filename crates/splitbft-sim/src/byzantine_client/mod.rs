//! Byzantine clients (issue 12): a client is outside every enclave, so it may send anything
//! a client connection can carry. Each strategy is a small named module; each acts every
//! [`ACT_EVERY_US`] for the whole run (a faulty client does not heal), under the identity
//! of one extra client. A
//! Byzantine client may break its own session, never a correct client's requests (their
//! validity and linearizability are checked as always) and never liveness (every correct
//! client's operations must still complete, SPEC §1.1).

mod bad_signature;
mod flood;
mod huge_timestamp;
mod oversized_op;
mod partial_macs;
mod replay;

use std::collections::{BTreeMap, VecDeque};

use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use splitbft_apps::kv::KvOp;
use splitbft_broker::local::LocalCluster;
use splitbft_types::crypto::ClientKeys;
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::msg::Request;
use splitbft_types::session::ClientSession;
use splitbft_types::{ClientId, ProtocolConfig, ReplicaId, Timestamp};

use crate::network::Network;
use crate::workload::SESSION_EPOCH;

/// How often a Byzantine client acts.
const ACT_EVERY_US: u64 = 100_000;
/// Own requests a client keeps to replay.
const REPLAY_MEMORY: usize = 64;

/// What a Byzantine client does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientStrategy {
    /// Genuinely signed requests whose MACs verify for some Preparation enclaves only.
    PartialMacs,
    /// Valid MACs, a signature that does not verify.
    BadSignature,
    /// Its own earlier requests, again and again, to every replica.
    Replay,
    /// Genuine requests at timestamps near `u64::MAX`.
    HugeTimestamp,
    /// Genuine requests whose op exceeds the configured op limit.
    OversizedOp,
    /// Many genuine requests at once to every replica.
    Flood,
}

impl ClientStrategy {
    /// Every client strategy.
    pub const ALL: [ClientStrategy; 6] = [
        ClientStrategy::PartialMacs,
        ClientStrategy::BadSignature,
        ClientStrategy::Replay,
        ClientStrategy::HugeTimestamp,
        ClientStrategy::OversizedOp,
        ClientStrategy::Flood,
    ];

    /// The name printed with a draw.
    pub fn name(self) -> &'static str {
        match self {
            ClientStrategy::PartialMacs => "partial-macs",
            ClientStrategy::BadSignature => "bad-signature",
            ClientStrategy::Replay => "replay",
            ClientStrategy::HugeTimestamp => "huge-timestamp",
            ClientStrategy::OversizedOp => "oversized-op",
            ClientStrategy::Flood => "flood",
        }
    }
}

/// Where a forged request goes.
pub enum To {
    /// The primary of view 0's successor chain as the client believes it (view 0).
    Primary,
    /// Every replica.
    All,
}

/// One request a strategy sends.
pub struct Sent {
    to: To,
    request: Request,
    /// What the client really issued under `(client, t)`: the plaintext op or the Register.
    /// `None` for a request it did not sign (it must never execute).
    issued: Option<Vec<u8>>,
}

/// What every strategy starts from: the client's real keys and session.
pub struct Base {
    keys: ClientKeys,
    session: ClientSession,
    config: ProtocolConfig,
    next_t: Timestamp,
    /// Its own genuine requests, newest last (for replays).
    sent: VecDeque<Request>,
}

impl Base {
    /// The next timestamp.
    fn next_t(&mut self) -> Timestamp {
        let t = self.next_t;
        self.next_t += 1;
        t
    }

    /// A random key-value op.
    fn op(rng: &mut ChaCha8Rng) -> Vec<u8> {
        let key = format!("k{}", rng.random_range(0..4u32)).into_bytes();
        KvOp::Put { key, value: b"byz".to_vec() }.encode()
    }

    /// A genuine request for `op` at `t`: sealed under its session, signed and MACed.
    fn genuine(&mut self, t: Timestamp, op: &[u8]) -> Sent {
        let wire = self.session.seal_op(t, op).expect("timestamps below the nonce limit");
        let request = self.keys.request(t, wire);
        self.sent.push_back(request.clone());
        if self.sent.len() > REPLAY_MEMORY {
            self.sent.pop_front();
        }
        Sent { to: To::Primary, request, issued: Some(op.to_vec()) }
    }
}

/// One Byzantine client.
pub struct ByzantineClient {
    strategy: ClientStrategy,
    base: Base,
    register: Option<Vec<u8>>,
    next_act_us: u64,
}

impl ByzantineClient {
    /// The Byzantine client is the last configured client identity.
    pub fn new(
        strategy: ClientStrategy,
        secrets: &ClusterSecrets,
        config: &ProtocolConfig,
        rng: &mut ChaCha8Rng,
    ) -> Self {
        let keyring = config.validate().expect("the simulator builds valid configurations");
        let c = secrets.clients.len() - 1;
        let id = ClientId(c as u32);
        let key: [u8; 32] = rng.random();
        let (session, register) =
            ClientSession::register(rng, config, id, SESSION_EPOCH, key).expect("valid group key");
        let keys = ClientKeys::derive(&secrets.clients[c], config, &keyring, id);
        let base = Base { keys, session, config: config.clone(), next_t: 1, sent: VecDeque::new() };
        ByzantineClient { strategy, base, register: Some(register), next_act_us: 0 }
    }

    /// Acts if it is time: registers first (honestly), then runs its strategy. Every
    /// request it really issued is recorded in `issued` (what validity allows to execute).
    pub fn on_tick(
        &mut self,
        now: u64,
        net: &mut Network,
        cluster: &LocalCluster,
        rng: &mut ChaCha8Rng,
        issued: &mut BTreeMap<(ClientId, Timestamp), Vec<u8>>,
    ) {
        if now < self.next_act_us {
            return;
        }
        self.next_act_us = now + ACT_EVERY_US;
        let sent = match self.register.take() {
            Some(register) => {
                let t = self.base.next_t();
                let request = self.base.keys.request(t, register.clone());
                vec![Sent { to: To::All, request, issued: Some(register) }]
            }
            None => match self.strategy {
                ClientStrategy::PartialMacs => partial_macs::act(&mut self.base, rng),
                ClientStrategy::BadSignature => bad_signature::act(&mut self.base, rng),
                ClientStrategy::Replay => replay::act(&mut self.base, rng),
                ClientStrategy::HugeTimestamp => huge_timestamp::act(&mut self.base, rng),
                ClientStrategy::OversizedOp => oversized_op::act(&mut self.base, rng),
                ClientStrategy::Flood => flood::act(&mut self.base, rng),
            },
        };
        let n = cluster.protocol.n() as u32;
        let primary = self.base.config.primary(0);
        for s in sent {
            if let Some(op) = s.issued {
                issued.entry((s.request.client, s.request.timestamp)).or_insert(op);
            }
            match s.to {
                To::Primary => net.send_to_replica(primary, s.request, now, rng),
                To::All => {
                    for r in 0..n {
                        net.send_to_replica(ReplicaId(r), s.request.clone(), now, rng);
                    }
                }
            }
        }
    }
}
