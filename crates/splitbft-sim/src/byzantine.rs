//! Named Byzantine enclaves (STYLE "named Byzantine actors"). Each wraps the honest
//! compartment — so it keeps up with the protocol — and adds the misbehaviour its name
//! says, signing with the key it holds. In PBFT mode a replica has one key for all its
//! parts, so whatever part is faulty can sign any of the replica's messages.

use std::collections::BTreeSet;

use bytes::Bytes;
use splitbft_apps::kv::KvOp;
use splitbft_types::boundary::{Compartment, Input, Output};
use splitbft_types::codec::{from_bytes, to_bytes};
use splitbft_types::config::Keyring;
use splitbft_types::crypto::{MacKey, Purpose, SecretKey, reply_mac};
use splitbft_types::msg::{BatchMsg, Checkpoint, Commit, Digest, Message, PrePrepare, Prepare, Request, Sig, Signed};
use splitbft_types::session::{Direction, Refusal, ReplyBody, SessionKey, SessionOp};
use splitbft_types::{ClientId, CompartmentKind, EnclaveId, ProtocolConfig, ReplicaId, Seq, View};

/// Timestamps of made-up requests: above any a simulated client reaches.
const MADE_UP_TIMESTAMP: u64 = 1 << 40;

/// A Byzantine behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Preparation at the primary: orders every batch twice, signing a second PrePrepare
    /// at the same `(v, s)` for the requests reordered plus one it made up (equivocation,
    /// and an attack on validity: without client 0's session key its op cannot
    /// authenticate, so Execution runs it as a no-op, SPEC §6).
    EquivocatingPrimary,
    /// Preparation: signs a Prepare for every PrePrepare it sees, conflicting or not.
    PrepareEverything,
    /// Confirmation: signs a Commit for every digest it sees, without a certificate, and
    /// for several digests per `(v, s)`.
    CommitWithoutCertificate,
    /// Execution: replies with wrong (well-formed) answers and signs Checkpoints with wrong
    /// digests.
    WrongResultsAndCheckpoints,
}

impl Strategy {
    /// The strategy of a faulty compartment of `kind` (one per kind in this simulator).
    pub fn for_kind(kind: CompartmentKind, primary: bool) -> Strategy {
        match kind {
            CompartmentKind::Preparation if primary => Strategy::EquivocatingPrimary,
            CompartmentKind::Preparation => Strategy::PrepareEverything,
            CompartmentKind::Confirmation => Strategy::CommitWithoutCertificate,
            CompartmentKind::Execution => Strategy::WrongResultsAndCheckpoints,
        }
    }
}

/// A faulty compartment.
pub struct Byzantine {
    inner: Box<dyn Compartment>,
    strategy: Strategy,
    me: ReplicaId,
    config: ProtocolConfig,
    key: SecretKey,
    /// PBFT: the key signs for every part of the replica, so this part also commits
    /// whatever it sees.
    replica_key: bool,
    client_macs: Vec<MacKey>,
    acted: BTreeSet<(View, Seq, Digest)>,
}

impl Byzantine {
    /// Wraps `inner` (the honest compartment of `me`) with `strategy`, signing with `key`.
    pub fn new(
        inner: Box<dyn Compartment>,
        strategy: Strategy,
        me: ReplicaId,
        config: ProtocolConfig,
        keys: &Keyring,
        key: SecretKey,
        replica_key: bool,
    ) -> Self {
        let enclave = EnclaveId { replica: me, kind: inner.kind() };
        let client_macs = if inner.kind() == CompartmentKind::Execution {
            keys.client_mac_keys(&key, config.cluster_id, enclave)
        } else {
            Vec::new()
        };
        Byzantine { inner, strategy, me, config, key, replica_key, client_macs, acted: BTreeSet::new() }
    }

    fn sign_commit(&mut self, pp: PrePrepare, out: &mut Vec<Output>) {
        if !self.acted.insert((pp.view, pp.seq, pp.digest)) {
            return;
        }
        let body = Commit { view: pp.view, seq: pp.seq, digest: pp.digest, replica: self.me };
        let sig = self.key.sign(self.config.cluster_id, Purpose::Commit, &body);
        out.push(Output::Send(Message::Commit(Signed { body, sig })));
    }

    fn sign_prepare(&mut self, pp: PrePrepare, out: &mut Vec<Output>) {
        if self.config.primary(pp.view) == self.me || !self.acted.insert((pp.view, pp.seq, pp.digest)) {
            return;
        }
        let body = Prepare { view: pp.view, seq: pp.seq, digest: pp.digest, replica: self.me };
        let sig = self.key.sign(self.config.cluster_id, Purpose::Prepare, &body);
        out.push(Output::Send(Message::Prepare(Signed { body, sig })));
    }

    /// A second, conflicting batch for every batch the honest primary ordered.
    fn equivocate(&mut self, outputs: &[Output], out: &mut Vec<Output>) {
        for output in outputs {
            let Output::Send(Message::Batch(b)) = output else { continue };
            let mut requests: Vec<Request> = from_bytes(&b.batch).unwrap_or_default();
            requests.reverse();
            let seq = b.pre_prepare.body.seq;
            // Sealed for client 0's session epoch under a key the primary made up: it holds
            // no session key (only Execution enclaves and the client do).
            let (client, timestamp) = (ClientId(0), MADE_UP_TIMESTAMP + seq);
            let op = KvOp::Put { key: b"k0".to_vec(), value: b"made-up".to_vec() }.encode();
            let guessed = SessionKey::new([0xa5; 32]);
            let epoch = crate::workload::SESSION_EPOCH;
            let ciphertext = guessed
                .seal(self.config.cluster_id, client, timestamp, Direction::Request, epoch, &op)
                .expect("timestamp inside the nonce space");
            let op = to_bytes(&SessionOp::Sealed { epoch, ciphertext });
            requests.push(Request { client, timestamp, op, auth: Vec::new(), sig: Sig([0; 64]) });
            let batch = to_bytes(&requests);
            let body = PrePrepare { digest: Digest::of(&batch), ..b.pre_prepare.body };
            let sig = self.key.sign(self.config.cluster_id, Purpose::PrePrepare, &body);
            out.push(Output::Send(Message::Batch(BatchMsg { pre_prepare: Signed { body, sig }, batch })));
            if self.replica_key {
                self.sign_commit(body, out);
                self.sign_commit(b.pre_prepare.body, out);
            }
        }
    }

    fn lie(&self, outputs: &mut [Output]) {
        for output in outputs.iter_mut() {
            match output {
                Output::Send(Message::Reply(reply)) => {
                    // Results are sealed under session keys, so the most damaging lie
                    // that needs none is a well-formed final refusal: "you have no session"
                    // for an op that did execute. Registrations are answered truthfully.
                    if matches!(from_bytes::<ReplyBody>(&reply.result), Ok(ReplyBody::Registered { .. })) {
                        continue;
                    }
                    reply.result = to_bytes(&ReplyBody::Refused(Refusal::NoSession));
                    if let Some(key) = self.client_macs.get(reply.client.0 as usize) {
                        reply.mac = reply_mac(key, self.config.cluster_id, reply);
                    }
                }
                Output::Send(Message::Checkpoint(cp)) => {
                    let body = Checkpoint { state: Digest::of(&cp.body.seq.to_le_bytes()), ..cp.body };
                    *cp = Signed { body, sig: self.key.sign(self.config.cluster_id, Purpose::Checkpoint, &body) };
                }
                _ => {}
            }
        }
    }
}

/// The PrePrepare header an input carries, if any.
fn pre_prepare_of(input: &Input) -> Option<PrePrepare> {
    match input {
        Input::Message(Message::PrePrepare(pp)) => Some(pp.body),
        Input::Message(Message::Batch(b)) => Some(b.pre_prepare.body),
        Input::Message(Message::Prepare(p)) => {
            Some(PrePrepare { view: p.body.view, seq: p.body.seq, digest: p.body.digest })
        }
        _ => None,
    }
}

impl Compartment for Byzantine {
    fn kind(&self) -> CompartmentKind {
        self.inner.kind()
    }

    fn handle(&mut self, input: Input, out: &mut Vec<Output>) {
        let seen = pre_prepare_of(&input);
        let is_prepare = matches!(input, Input::Message(Message::Prepare(_)));
        let mut produced = Vec::new();
        self.inner.handle(input, &mut produced);
        match self.strategy {
            Strategy::EquivocatingPrimary => self.equivocate(&produced.clone(), &mut produced),
            Strategy::PrepareEverything => {
                if let Some(pp) = seen.filter(|_| !is_prepare) {
                    self.sign_prepare(pp, &mut produced);
                }
            }
            Strategy::CommitWithoutCertificate => {
                if let Some(pp) = seen {
                    self.sign_commit(pp, &mut produced);
                }
            }
            Strategy::WrongResultsAndCheckpoints => self.lie(&mut produced),
        }
        if self.replica_key
            && self.strategy != Strategy::CommitWithoutCertificate
            && let Some(pp) = seen
        {
            self.sign_commit(pp, &mut produced);
        }
        out.extend(produced);
    }

    fn count_malformed_input(&mut self) {
        self.inner.count_malformed_input();
    }
}

/// Encodes a message as a compartment input (for the hostile environment).
pub fn input(msg: Message) -> Bytes {
    Bytes::from(to_bytes(&Input::Message(msg)))
}

/// Replaces the `faulty` enclaves of `cluster` with Byzantine ones (strategy by kind).
pub fn install(
    cluster: &mut splitbft_broker::local::LocalCluster,
    secrets: &splitbft_types::keys::ClusterSecrets,
    faulty: &[(ReplicaId, CompartmentKind)],
    replica_key: bool,
) {
    use splitbft_apps::kv::KvStore;
    use splitbft_execution::Execution;
    let config = secrets.config.clone();
    let keys = config.validate().expect("the simulator builds valid configurations");
    let genesis = Execution::genesis_digest(&config, &KvStore::new());
    for (replica, kind) in faulty {
        let key = || SecretKey::from_seed(secrets.enclave(*replica, *kind).seed());
        let honest: Box<dyn Compartment> = match kind {
            CompartmentKind::Preparation => Box::new(
                splitbft_preparation::Preparation::new(config.clone(), *replica, key(), genesis).expect("valid config"),
            ),
            CompartmentKind::Confirmation => Box::new(
                splitbft_confirmation::Confirmation::new(config.clone(), *replica, key(), genesis)
                    .expect("valid config"),
            ),
            CompartmentKind::Execution => Box::new(
                Execution::new(
                    config.clone(),
                    *replica,
                    key(),
                    secrets.execution_group_secret(),
                    Box::new(KvStore::new()),
                )
                .expect("valid config"),
            ),
        };
        let strategy = Strategy::for_kind(*kind, config.primary(0) == *replica);
        let byzantine = Byzantine::new(honest, strategy, *replica, config.clone(), &keys, key(), replica_key);
        cluster.replace_enclave(*replica, *kind, Box::new(splitbft_enclave::InlineEnclave::new(Box::new(byzantine))));
    }
}
