//! Simulated clients: closed loop, one operation outstanding each, random key-value
//! operations on a few keys (so that operations conflict), sent to the primary they
//! believe in, retransmitted to every replica on timeout, accepted on `f + 1` matching
//! authentic replies (the client library's rules). Each client first registers a session
//! key with an ordered Register (SPEC §6), then seals its ops under it; it votes on the
//! decrypted results and waits on past refusals a forger could provoke. These clients are
//! correct; `byzantine_client` has the others.

use std::collections::BTreeMap;

use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use splitbft_apps::kv::KvOp;
use splitbft_broker::local::LocalCluster;
use splitbft_types::codec::to_bytes;
use splitbft_types::crypto::ClientKeys;
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::msg::Reply;
use splitbft_types::session::{ClientSession, Opened, open_reply_body};
use splitbft_types::{ClientId, ProtocolConfig, ReplicaId, Timestamp, View};

use crate::checkers::{Completed, History};
use crate::network::Network;

const FIRST_RETRANSMIT_US: u64 = 200_000;
const MAX_RETRANSMIT_US: u64 = 2_000_000;
const KEYS: u32 = 4;
/// While faults are injected a client pauses between operations for a time drawn from
/// this range: fewer operations per simulated second (the crypto of each one is the
/// simulator's main cost) over the same fault schedule, so more seeds per second.
const THINK_US: std::ops::Range<u64> = 100_000..250_000;
/// The epoch every simulated client registers its session with.
pub const SESSION_EPOCH: u64 = 1;

struct Pending {
    t: Timestamp,
    /// Plaintext op (empty for a Register).
    op: Vec<u8>,
    /// What goes on the wire: the Register, or the op sealed for the session.
    wire: Vec<u8>,
    register: bool,
    invoked_us: u64,
    votes: BTreeMap<ReplicaId, (View, Opened)>,
    retransmit_at: u64,
    backoff: u64,
}

struct SimClient {
    keys: ClientKeys,
    id: ClientId,
    /// Operations still to issue once the faults have healed.
    left: usize,
    next_t: Timestamp,
    view: View,
    pending: Option<Pending>,
    /// The session being registered or registered.
    session: ClientSession,
    registered: bool,
    /// When to issue the next operation (after thinking).
    issue_at: Option<u64>,
}

/// All clients of a run.
pub struct Clients {
    clients: Vec<SimClient>,
    issued: BTreeMap<(ClientId, Timestamp), Vec<u8>>,
    config: ProtocolConfig,
    /// Clients keep issuing while faults are injected, then `left` more each.
    faults_until_us: u64,
}

impl Clients {
    /// One client per configured identity; each issues operations back to back while
    /// faults are injected (until `faults_until_us`) and `ops_after` more after they heal.
    pub fn new(
        secrets: &ClusterSecrets,
        config: &ProtocolConfig,
        correct: usize,
        faults_until_us: u64,
        ops_after: usize,
        rng: &mut ChaCha8Rng,
    ) -> Self {
        let keyring = config.validate().expect("the simulator builds valid configurations");
        let clients = secrets
            .clients
            .iter()
            .take(correct)
            .enumerate()
            .map(|(c, secret)| {
                let id = ClientId(c as u32);
                let key: [u8; 32] = rng.random();
                let (session, register) =
                    ClientSession::register(rng, config, id, SESSION_EPOCH, key).expect("valid group key");
                SimClient {
                    session,
                    registered: false,
                    issue_at: None,
                    pending: Some(Pending {
                        t: 0,
                        op: Vec::new(),
                        wire: register,
                        register: true,
                        invoked_us: 0,
                        votes: BTreeMap::new(),
                        retransmit_at: 0,
                        backoff: FIRST_RETRANSMIT_US,
                    }),
                    keys: ClientKeys::derive(secret, config, &keyring, id),
                    id,
                    left: ops_after,
                    next_t: 1,
                    view: 0,
                }
            })
            .collect();
        Clients { clients, issued: BTreeMap::new(), config: config.clone(), faults_until_us }
    }

    /// Every client sends its Register; operations follow once it is registered.
    pub fn start(&mut self, net: &mut Network, cluster: &LocalCluster, rng: &mut ChaCha8Rng) {
        let now = cluster.now_us();
        for client in &mut self.clients {
            let t = client.next_t;
            client.next_t += 1;
            let Some(pending) = client.pending.as_mut() else { continue };
            pending.t = t;
            pending.invoked_us = now;
            pending.retransmit_at = now + FIRST_RETRANSMIT_US;
            self.issued.insert((client.id, t), pending.wire.clone());
            let request = client.keys.request(t, pending.wire.clone());
            net.send_to_replica(self.config.primary(client.view), request, now, rng);
        }
    }

    fn issue(&mut self, c: usize, now: u64, net: &mut Network, rng: &mut ChaCha8Rng) {
        let client = &mut self.clients[c];
        if now >= self.faults_until_us {
            if client.left == 0 {
                return;
            }
            client.left -= 1;
        }
        let key = format!("k{}", rng.random_range(0..KEYS)).into_bytes();
        let value = vec![b'a' + rng.random_range(0..26u8); 3];
        let op = match rng.random_range(0..10) {
            0..=3 => KvOp::Put { key, value },
            4..=6 => KvOp::Get { key },
            7 => KvOp::Delete { key },
            8 => KvOp::Cas { key, expected: None, new: Some(value) },
            _ => KvOp::Scan { prefix: b"k".to_vec(), limit: 0 },
        }
        .encode();
        let t = client.next_t;
        client.next_t += 1;
        self.issued.insert((client.id, t), op.clone());
        let wire = client.session.seal_op(t, &op).expect("timestamps stay inside the nonce space");
        let request = client.keys.request(t, wire.clone());
        let primary = self.config.primary(client.view);
        net.send_to_replica(primary, request, now, rng);
        client.pending = Some(Pending {
            t,
            op,
            wire,
            register: false,
            invoked_us: now,
            votes: BTreeMap::new(),
            retransmit_at: now + FIRST_RETRANSMIT_US,
            backoff: FIRST_RETRANSMIT_US,
        });
    }

    /// A reply reached its client.
    pub fn on_reply(
        &mut self,
        reply: Reply,
        now: u64,
        _cluster: &LocalCluster,
        rng: &mut ChaCha8Rng,
        history: &mut History,
    ) {
        let weak = self.config.weak_quorum();
        let Some(client) = self.clients.get_mut(reply.client.0 as usize) else { return };
        if client.keys.verify_reply(&reply).is_err() {
            return;
        }
        let Some(pending) = client.pending.as_mut() else { return };
        if pending.t != reply.timestamp {
            return;
        }
        let session = client.registered.then_some(&client.session);
        let Ok(opened) = open_reply_body(session, client.id, reply.timestamp, reply.replica, &reply.result) else {
            return;
        };
        if matches!(opened, Opened::Refused(r) if !r.is_final() || pending.register) {
            // A copy or forgery of this request was refused; the genuine one may still run.
            return;
        }
        pending.votes.entry(reply.replica).or_insert((reply.view, opened.clone()));
        let matching: Vec<View> = pending.votes.values().filter(|(_, r)| *r == opened).map(|(v, _)| *v).collect();
        if matching.len() < weak {
            return;
        }
        let view = matching.iter().copied().min().unwrap_or(0);
        client.view = client.view.max(view);
        let pending = client.pending.take().expect("checked above");
        if pending.register {
            // f + 1 agreed; only a Registered answer opens the session (lying replicas
            // answer registrations truthfully, see `byzantine.rs`).
            client.registered = opened == (Opened::Registered { epoch: SESSION_EPOCH });
            let c = reply.client.0 as usize;
            return self.think(c, now, rng);
        }
        // A final refusal is what f + 1 replicas told the client: recorded as its result, so
        // the linearizability checker flags it if no correct replica would have said it.
        let result = match opened {
            Opened::Result(result) => result,
            other => to_bytes(&other),
        };
        history.push(Completed {
            client: client.id,
            t: pending.t,
            op: pending.op,
            invoked_us: pending.invoked_us,
            completed_us: now,
            result,
        });
        let c = reply.client.0 as usize;
        self.think(c, now, rng);
    }

    /// The next operation of client `c` goes out after a pause while faults are injected,
    /// at once after they healed.
    fn think(&mut self, c: usize, now: u64, rng: &mut ChaCha8Rng) {
        let pause = if now < self.faults_until_us { rng.random_range(THINK_US) } else { 0 };
        self.clients[c].issue_at = Some(now + pause);
    }

    /// Retransmits to every replica what waited too long (with back-off).
    pub fn on_tick(&mut self, now: u64, net: &mut Network, cluster: &LocalCluster, rng: &mut ChaCha8Rng) {
        for c in 0..self.clients.len() {
            if self.clients[c].issue_at.is_some_and(|at| at <= now) {
                self.clients[c].issue_at = None;
                self.issue(c, now, net, rng);
            }
        }
        for client in &mut self.clients {
            let Some(pending) = client.pending.as_mut() else { continue };
            if now < pending.retransmit_at {
                continue;
            }
            pending.backoff = (pending.backoff * 2).min(MAX_RETRANSMIT_US);
            pending.retransmit_at = now + pending.backoff;
            let request = client.keys.request(pending.t, pending.wire.clone());
            for r in 0..cluster.protocol.n() as u32 {
                net.send_to_replica(ReplicaId(r), request.clone(), now, rng);
            }
        }
    }

    /// Whether every client finished.
    pub fn all_done(&self) -> bool {
        self.clients.iter().all(|c| c.left == 0 && c.pending.is_none() && c.issue_at.is_none())
    }

    /// Operations issued so far.
    pub fn total(&self) -> usize {
        self.issued.len()
    }

    /// Every operation issued, by `(client, t)`.
    pub fn issued(&self) -> &BTreeMap<(ClientId, Timestamp), Vec<u8>> {
        &self.issued
    }
}
