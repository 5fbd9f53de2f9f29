//! Deterministic cluster secrets for compartment-level tests.

use serde::Serialize;
use splitbft_types::codec::to_bytes;
use splitbft_types::config::{Keyring, ProtocolConfig};
use splitbft_types::crypto::{ClientKeys, Purpose, SecretKey};
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::msg::{BatchMsg, Checkpoint, Commit, Digest, Message, PrePrepare, Reply, Signed};
use splitbft_types::session::{ClientSession, Opened, open_reply_body};
use splitbft_types::{ClientId, CompartmentKind, ReplicaId, Seq, Timestamp, View};

/// A cluster's secrets, its validated keyring and every client's keys.
pub struct Fixture {
    /// Every enclave's and client's secrets plus the configuration.
    pub secrets: ClusterSecrets,
    /// The validated public keys.
    pub keys: Keyring,
    /// Client `c`'s keys at index `c`.
    pub clients: Vec<ClientKeys>,
}

impl Fixture {
    /// Secrets for cluster `cluster_id` with `f` and `clients` clients, derived from `seed`;
    /// `tune` adjusts the configuration (K, L, B, ...) before it is validated.
    pub fn new(cluster_id: u64, f: u32, clients: usize, seed: u64, tune: impl FnOnce(&mut ProtocolConfig)) -> Self {
        let mut secrets = ClusterSecrets::deterministic(cluster_id, f, clients, seed);
        tune(&mut secrets.config);
        let keys = secrets.config.validate().unwrap();
        let clients = (0..clients)
            .map(|c| ClientKeys::derive(&secrets.clients[c], &secrets.config, &keys, ClientId(c as u32)))
            .collect();
        Fixture { secrets, keys, clients }
    }

    /// `body` signed for `purpose` by enclave `kind` of replica `r`.
    pub fn sign<T: Serialize>(&self, r: u32, kind: CompartmentKind, purpose: Purpose, body: T) -> Signed<T> {
        let sig = self.secrets.enclave(ReplicaId(r), kind).sign(self.secrets.config.cluster_id, purpose, &body);
        Signed { sig, body }
    }

    /// A copy of the signing key of enclave `kind` of replica `r`, to build the compartment.
    pub fn secret(&self, r: u32, kind: CompartmentKind) -> SecretKey {
        SecretKey::from_seed(self.secrets.enclave(ReplicaId(r), kind).seed())
    }

    /// The PrePrepare for `(view, seq, digest)` signed by Preparation(primary(view)).
    pub fn pre_prepare(&self, view: View, seq: Seq, digest: Digest) -> Signed<PrePrepare> {
        let primary = self.secrets.config.primary(view).0;
        self.sign(primary, CompartmentKind::Preparation, Purpose::PrePrepare, PrePrepare { view, seq, digest })
    }

    /// The encoded batch named `tag`: one genuine request of client 0 whose op is the tag
    /// (backups prepare only batches they hold and checked, SPEC §4.1 (2)).
    pub fn tagged_batch(&self, tag: &str) -> Vec<u8> {
        to_bytes(&vec![self.clients[0].request(1, tag.as_bytes().to_vec())])
    }

    /// The digest of [`Self::tagged_batch`]`(tag)`.
    pub fn tagged_digest(&self, tag: &str) -> Digest {
        Digest::of(&self.tagged_batch(tag))
    }

    /// primary(view)'s PrePrepare for batch `tag` at `seq`, with the batch.
    pub fn tagged_batch_msg(&self, view: View, seq: Seq, tag: &str) -> Message {
        let batch = self.tagged_batch(tag);
        Message::Batch(BatchMsg { pre_prepare: self.pre_prepare(view, seq, Digest::of(&batch)), batch })
    }

    /// Confirmation(`r`)'s Commit for `(view, seq, digest)`.
    pub fn commit(&self, r: u32, view: View, seq: Seq, digest: Digest) -> Signed<Commit> {
        let body = Commit { view, seq, digest, replica: ReplicaId(r) };
        self.sign(r, CompartmentKind::Confirmation, Purpose::Commit, body)
    }

    /// Execution(`r`)'s Checkpoint for `(seq, state)`.
    pub fn checkpoint(&self, r: u32, seq: Seq, state: Digest) -> Signed<Checkpoint> {
        self.sign(r, CompartmentKind::Execution, Purpose::Checkpoint, Checkpoint { seq, state, replica: ReplicaId(r) })
    }

    /// primary(view)'s batch message for `(view, seq)` over `bytes`.
    pub fn batch_msg(&self, view: View, seq: Seq, bytes: Vec<u8>) -> BatchMsg {
        BatchMsg { pre_prepare: self.pre_prepare(view, seq, Digest::of(&bytes)), batch: bytes }
    }

    /// Client `c`'s session key in epoch 1, as tests install it in every Execution enclave
    /// (`Execution::install_session`) instead of running the Register exchange.
    pub fn session_key(c: u32) -> [u8; 32] {
        [c as u8 + 1; 32]
    }

    /// Client `c`'s side of that session: seals ops like a real client (SPEC §6).
    pub fn session(&self, c: u32) -> ClientSession {
        ClientSession::installed(&self.secrets.config, ClientId(c), 1, Self::session_key(c))
    }

    /// Client `c`'s request at `t` for `op`, sealed in its session and authenticated.
    pub fn sealed_request(&self, c: u32, t: Timestamp, op: &[u8]) -> splitbft_types::msg::Request {
        self.clients[c as usize].request(t, self.session(c).seal_op(t, op).expect("timestamp in range"))
    }

    /// A reply's result as its client reads it: decrypted under the client's session key
    /// (each replica encrypts with its own nonce, so ciphertexts differ; plaintexts must
    /// not); clients without a fixture session read it in clear.
    pub fn opened(&self, r: &Reply) -> Opened {
        if (r.client.0 as usize) < self.clients.len() {
            self.session(r.client.0).open_reply(r.timestamp, r.replica, &r.result).expect("reply opens")
        } else {
            open_reply_body(None, r.client, r.timestamp, r.replica, &r.result).expect("reply opens")
        }
    }
}
