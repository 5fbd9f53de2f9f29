//! A hostile environment on every host (paper Table 1): the broker is untrusted, so it may
//! hand its compartments anything. For each frame arriving at a host it picks, by the
//! seed, one of: deliver normally; withhold it from one compartment; give the Preparation
//! and Confirmation compartments different PrePrepares for one `(v, s)` (when the primary
//! equivocated); replay an old frame; inject a forged copy (a flipped bit); delay a NewView
//! to some compartments.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use splitbft_broker::local::{LocalCluster, Packet};
use splitbft_types::boundary::Input;
use splitbft_types::codec::{decode_message, encode_message, to_bytes};
use splitbft_types::msg::{BatchMsg, Message};
use splitbft_types::{CompartmentKind, Seq, View};

use crate::adversary::{Env, Loot};
use crate::byzantine::input;
use crate::network::{Network, Scheduled};

/// Old frames kept for replays.
const REPLAY_MEMORY: usize = 256;
/// Conflicting batches remembered per `(v, s)`.
const BATCHES_PER_SLOT: usize = 2;

/// The adversary's memory.
#[derive(Default)]
pub struct Hostile {
    history: VecDeque<Packet>,
    batches: BTreeMap<(View, Seq), Vec<BatchMsg>>,
}

/// Which compartments a message goes to, and as what (SPEC §3 routing).
fn routed(msg: &Message) -> Vec<(CompartmentKind, Message)> {
    use CompartmentKind::*;
    match msg {
        Message::Batch(b) => vec![
            (Preparation, Message::PrePrepare(b.pre_prepare)),
            (Confirmation, Message::PrePrepare(b.pre_prepare)),
            (Execution, msg.clone()),
        ],
        Message::Prepare(_) => vec![(Confirmation, msg.clone())],
        Message::Commit(_) => vec![(Execution, msg.clone())],
        Message::ViewChange(_) => vec![(Preparation, msg.clone())],
        Message::Checkpoint(_) | Message::NewView(_) => CompartmentKind::ALL.map(|k| (k, msg.clone())).to_vec(),
        _ => Vec::new(),
    }
}

impl Hostile {
    /// Delivers (or mangles) one frame arriving at `packet.to`.
    pub fn deliver(&mut self, packet: Packet, cluster: &mut LocalCluster, net: &mut Network, rng: &mut ChaCha8Rng) {
        let to = packet.to;
        let msg = decode_message(&packet.frame).ok();
        self.remember(&packet, msg.as_ref());
        let now = cluster.now_us();
        match (rng.random_range(0..100u32), msg) {
            (0..60, _) | (_, None) => cluster.deliver(packet),
            (60..70, Some(msg)) => {
                // Withhold it from one compartment.
                let victim = CompartmentKind::ALL[rng.random_range(0..3usize)];
                for (kind, m) in routed(&msg) {
                    if kind != victim {
                        cluster.enclave_input(to, kind, input(m));
                    }
                }
            }
            (70..80, Some(Message::Batch(b))) => {
                // Different PrePrepares to Preparation and Confirmation, if there are two.
                let key = (b.pre_prepare.body.view, b.pre_prepare.body.seq);
                let other = self.batches.get(&key).and_then(|v| v.iter().find(|o| o.batch != b.batch)).cloned();
                match other {
                    Some(other) => {
                        cluster.enclave_input(
                            to,
                            CompartmentKind::Preparation,
                            input(Message::PrePrepare(b.pre_prepare)),
                        );
                        cluster.enclave_input(
                            to,
                            CompartmentKind::Confirmation,
                            input(Message::PrePrepare(other.pre_prepare)),
                        );
                        cluster.enclave_input(to, CompartmentKind::Execution, input(Message::Batch(other)));
                    }
                    None => cluster.deliver(Packet { from: packet.from, to, frame: packet.frame }),
                }
            }
            (70..80, Some(Message::NewView(nv))) => {
                // The NewView reaches Preparation now and the others much later.
                cluster.enclave_input(to, CompartmentKind::Preparation, input(Message::NewView(nv.clone())));
                for kind in [CompartmentKind::Confirmation, CompartmentKind::Execution] {
                    let at = now + rng.random_range(50_000..500_000);
                    net.schedule(at, Scheduled::Enclave(to, kind, input(Message::NewView(nv.clone()))));
                }
            }
            (80..90, _) => {
                cluster.deliver(packet);
                if !self.history.is_empty() {
                    let old = self.history[rng.random_range(0..self.history.len())].clone();
                    cluster.deliver(Packet { to, ..old });
                }
            }
            (90..95, _) => {
                // Inputs only an environment makes: a stats query, a junk state restore.
                cluster.deliver(packet);
                let kind = CompartmentKind::ALL[rng.random_range(0..3usize)];
                let injected = if rng.random_bool(0.5) {
                    Input::QueryStats
                } else {
                    let junk: Vec<u8> = (0..rng.random_range(0..64usize)).map(|_| rng.random()).collect();
                    Input::RestoreState { seq: rng.random_range(0..64), bytes: junk }
                };
                cluster.enclave_input(to, kind, Bytes::from(to_bytes(&injected)));
            }
            (_, _) => {
                let mut forged = packet.frame.to_vec();
                let bit = rng.random_range(0..forged.len() * 8);
                forged[bit / 8] ^= 1 << (bit % 8);
                cluster.deliver(Packet { from: packet.from, to, frame: forged.into() });
                cluster.deliver(packet);
            }
        }
    }

    fn remember(&mut self, packet: &Packet, msg: Option<&Message>) {
        self.history.push_back(packet.clone());
        if self.history.len() > REPLAY_MEMORY {
            self.history.pop_front();
        }
        if let Some(Message::Batch(b)) = msg {
            let key = (b.pre_prepare.body.view, b.pre_prepare.body.seq);
            let slot = self.batches.entry(key).or_default();
            if slot.len() < BATCHES_PER_SLOT && !slot.iter().any(|o| o.batch == b.batch) {
                slot.push(b.clone());
            }
            while self.batches.len() > REPLAY_MEMORY {
                self.batches.pop_first();
            }
        }
    }
}

/// How long after a batch frame a poisoning host sends its junk copy: after the genuine
/// one has arrived (delays are below 2 ms on a healthy network) and before a peer that
/// lacks the batch fetches it, so the copy would overwrite the genuine frame in a cache
/// that keeps without checking.
pub const POISON_AFTER_US: u64 = 5_000;

/// What a hostile host does to a frame it sends: strip withheld batches down to their
/// header, or poison batch caches (SPEC §11 "caches check before they keep"): of every
/// Batch frame it sends, the `2f` replicas after it get the genuine bytes (enough to
/// prepare and commit it), each followed [`POISON_AFTER_US`] later by a junk copy under the
/// same signed header; the other `f` get the junk copy alone and must fetch the bytes from
/// a correct peer's cache. A cache that keeps junk, lets it replace the genuine frame, or
/// lets it end a fetch serves them junk, and they skip the batch (state transfer).
/// Returns the frames and how much later than usual each leaves.
pub fn outgoing(env: Env, packet: Packet, loot: &Loot, n: usize) -> Vec<(Packet, u64)> {
    let Ok(Message::Batch(b)) = decode_message(&packet.frame) else { return vec![(packet, 0)] };
    match env {
        Env::StripBatches if loot.withheld.contains(&b.pre_prepare.body.digest) => {
            let frame = Bytes::from(encode_message(&Message::PrePrepare(b.pre_prepare)));
            vec![(Packet { frame, ..packet }, 0)]
        }
        Env::PoisonCache => {
            let mut junk = b.clone();
            junk.batch.push(0);
            let frame = Bytes::from(encode_message(&Message::Batch(junk)));
            let after = (packet.to.0 as usize + n - packet.from.0 as usize) % n;
            if (1..=2 * ((n - 1) / 3)).contains(&after) {
                vec![(Packet { frame, ..packet.clone() }, POISON_AFTER_US), (packet, 0)]
            } else {
                vec![(Packet { frame, ..packet }, 0)]
            }
        }
        _ => vec![(packet, 0)],
    }
}
