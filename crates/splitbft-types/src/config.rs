//! The static configuration loaded into every enclave (SPEC §2).

use serde::{Deserialize, Serialize};

use crate::crypto::{CryptoError, PublicKey};
use crate::ids::{ClientId, CompartmentKind, EnclaveId, ReplicaId, View};

/// Default checkpoint interval `K` (SPEC §2): a checkpoint costs a snapshot and one
/// signature per Execution enclave, so it is amortised over many batches.
pub const DEFAULT_CHECKPOINT_INTERVAL: u64 = 128;
/// Default maximum batch `B` (SPEC §2): signatures cost ~100× a MAC; 200 amortises them
/// (PERFORMANCE.md lesson 1) while keeping a batch of small requests under ~40 KiB.
pub const DEFAULT_MAX_BATCH: u32 = 200;
/// Default per-client window `W` (SPEC §4.3): a client may keep this many requests
/// outstanding; the issue asks for at least 64.
pub const DEFAULT_CLIENT_WINDOW: u64 = 64;
/// Default limit on a request's op (SPEC §2). Large enough for the KV store's largest op (a
/// CAS with a 1 KiB key and two 32 KiB values) sealed, small enough that a batch of `B`
/// fits the frame limit; both checked at start (`limits::Limits::check`).
pub const DEFAULT_MAX_OP_BYTES: u32 = 66 * 1024;

fn default_confidential() -> bool {
    true
}

/// Why a configuration is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `n != 3f + 1` (quorums of `2f + 1` need exactly that).
    #[error("{n} replicas do not match f = {f} (need n = 3f + 1)")]
    WrongReplicaCount {
        /// Replica count.
        n: usize,
        /// Fault threshold.
        f: u32,
    },
    /// A window or interval that makes no sense.
    #[error("invalid parameter: {0}")]
    InvalidParameter(&'static str),
    /// A key in the configuration is not a valid public key.
    #[error("invalid public key for {0}")]
    InvalidKey(String),
}

/// The three public keys of one replica's enclaves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaKeys {
    /// Preparation enclave key.
    pub preparation: [u8; 32],
    /// Confirmation enclave key.
    pub confirmation: [u8; 32],
    /// Execution enclave key.
    pub execution: [u8; 32],
}

impl ReplicaKeys {
    fn get(&self, kind: CompartmentKind) -> &[u8; 32] {
        match kind {
            CompartmentKind::Preparation => &self.preparation,
            CompartmentKind::Confirmation => &self.confirmation,
            CompartmentKind::Execution => &self.execution,
        }
    }
}

/// Protocol parameters and identities shared by every enclave and client (SPEC §2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolConfig {
    /// Distinguishes clusters in every signature's domain tag.
    pub cluster_id: u64,
    /// Tolerated faulty enclaves of each kind.
    pub f: u32,
    /// Public keys per replica; `n` is the length.
    pub replicas: Vec<ReplicaKeys>,
    /// Client public keys, indexed by [`ClientId`].
    pub clients: Vec<[u8; 32]>,
    /// `K`: checkpoint every `K` sequence numbers.
    pub checkpoint_interval: u64,
    /// `L`: sequence numbers accepted above the stable checkpoint (default `2K`).
    pub log_window: u64,
    /// `B`: most requests in one batch.
    pub max_batch: u32,
    /// `W`: per-client deduplication window.
    pub client_window: u64,
    /// Largest accepted op, in bytes.
    pub max_op_bytes: u32,
    /// Ops and results are AES-256-GCM under the client's session key (SPEC §6). `false`
    /// turns encryption off, never authentication: ops then carry a GMAC under the session
    /// key, so Execution's validity rule is the same.
    #[serde(default = "default_confidential")]
    pub confidential: bool,
    /// Public X25519 key of the Execution group, to which clients seal session keys (SPEC §6).
    #[serde(default)]
    pub execution_group_key: crate::session::GroupPublicKey,
    /// Public X25519 transport key of every replica environment, indexed by replica id
    /// (SPEC §11): the static key of its Noise handshakes. Empty only in configurations
    /// that never reach a network (enclave and simulator tests); a node refuses to start
    /// without one per replica.
    #[serde(default)]
    pub transport_keys: Vec<[u8; 32]>,
    /// PBFT baseline only (SPEC §8): the parts of one replica share verified signatures.
    /// Never set for SplitBFT, and never read from a file.
    #[serde(skip)]
    pub pbft_shared_verification: Option<std::sync::Arc<crate::cert::VerifiedCache>>,
}

impl ProtocolConfig {
    /// A configuration with the SPEC §2 defaults.
    pub fn new(cluster_id: u64, f: u32, replicas: Vec<ReplicaKeys>, clients: Vec<[u8; 32]>) -> Self {
        ProtocolConfig {
            cluster_id,
            f,
            replicas,
            clients,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            log_window: 2 * DEFAULT_CHECKPOINT_INTERVAL,
            max_batch: DEFAULT_MAX_BATCH,
            client_window: DEFAULT_CLIENT_WINDOW,
            max_op_bytes: DEFAULT_MAX_OP_BYTES,
            confidential: true,
            execution_group_key: crate::session::GroupPublicKey::default(),
            transport_keys: Vec::new(),
            pbft_shared_verification: None,
        }
    }

    /// Number of replicas `n`.
    pub fn n(&self) -> usize {
        self.replicas.len()
    }

    /// Quorum `2f + 1`.
    pub fn quorum(&self) -> usize {
        2 * self.f as usize + 1
    }

    /// Weak quorum `f + 1`.
    pub fn weak_quorum(&self) -> usize {
        self.f as usize + 1
    }

    /// `primary(v) = v mod n`.
    pub fn primary(&self, view: View) -> ReplicaId {
        ReplicaId((view % self.n() as u64) as u32)
    }

    /// Checks the parameters and parses every key once.
    pub fn validate(&self) -> Result<Keyring, ConfigError> {
        let n = self.n();
        // Quorums of 2f + 1 intersect in a correct replica only when n = 3f + 1 exactly.
        if !self.transport_keys.is_empty() && self.transport_keys.len() != n {
            return Err(ConfigError::InvalidParameter("transport_keys must list one key per replica"));
        }
        if n != 3 * self.f as usize + 1 {
            return Err(ConfigError::WrongReplicaCount { n, f: self.f });
        }
        if n > crate::session::MAX_NONCE_REPLICAS as usize {
            return Err(ConfigError::InvalidParameter("at most 127 replicas fit the session nonce (SPEC §6)"));
        }
        if self.execution_group_key.0 == [0; 32] {
            return Err(ConfigError::InvalidKey("execution group key".into()));
        }
        if self.checkpoint_interval == 0 {
            return Err(ConfigError::InvalidParameter("checkpoint_interval must be > 0"));
        }
        if self.log_window < 2 * self.checkpoint_interval || !self.log_window.is_multiple_of(self.checkpoint_interval) {
            return Err(ConfigError::InvalidParameter(
                "log_window must be a multiple of checkpoint_interval and at least twice it",
            ));
        }
        if self.max_batch == 0 {
            return Err(ConfigError::InvalidParameter("max_batch must be > 0"));
        }
        if self.client_window == 0 {
            return Err(ConfigError::InvalidParameter("client_window must be > 0"));
        }
        let parse = |bytes: &[u8; 32], what: String| {
            PublicKey::from_bytes(bytes).map_err(|_: CryptoError| ConfigError::InvalidKey(what))
        };
        let mut enclaves = Vec::with_capacity(n);
        for (i, keys) in self.replicas.iter().enumerate() {
            let mut parsed = Vec::with_capacity(3);
            for kind in CompartmentKind::ALL {
                parsed.push(parse(keys.get(kind), format!("replica {i} {kind}"))?);
            }
            enclaves.push([parsed[0], parsed[1], parsed[2]]);
        }
        let clients =
            self.clients.iter().enumerate().map(|(c, k)| parse(k, format!("client {c}"))).collect::<Result<_, _>>()?;
        Ok(Keyring { enclaves, clients })
    }
}

/// Parsed public keys of every enclave and client.
#[derive(Clone, Debug)]
pub struct Keyring {
    enclaves: Vec<[PublicKey; 3]>,
    clients: Vec<PublicKey>,
}

impl Keyring {
    /// Key of an enclave, `None` for an unknown replica.
    pub fn enclave(&self, id: EnclaveId) -> Option<&PublicKey> {
        self.enclaves.get(id.replica.0 as usize).map(|k| &k[id.kind.index()])
    }

    /// Key of a client, `None` for an unknown client.
    pub fn client(&self, id: ClientId) -> Option<&PublicKey> {
        self.clients.get(id.0 as usize)
    }

    /// Number of configured clients.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// The MAC keys `enclave` shares with every client, derived once (SPEC §6). Panics if
    /// `secret` is not the enclave's configured key: a deployment error, caught at start.
    pub fn client_mac_keys(
        &self,
        secret: &crate::crypto::SecretKey,
        cluster_id: u64,
        enclave: EnclaveId,
    ) -> Vec<crate::crypto::MacKey> {
        assert_eq!(self.enclave(enclave), Some(&secret.public()), "secret key does not match the configuration");
        self.clients
            .iter()
            .enumerate()
            .map(|(c, pk)| secret.mac_key(pk, cluster_id, ClientId(c as u32), enclave))
            .collect()
    }
}
