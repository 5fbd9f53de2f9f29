//! Generating a cluster's key material (used by `splitbft keygen`, the demo and tests).

use crate::attest::{ExpectedExecution, ReportBody, SoftwarePlatform};
use crate::config::{ProtocolConfig, ReplicaKeys};
use crate::crypto::SecretKey;
use crate::ids::{CompartmentKind, EnclaveId, ReplicaId};
use crate::msg::Digest;
use crate::session::GroupSecret;

/// A replica environment's X25519 transport secret (SPEC §11): the static key of its Noise
/// handshakes. Wiped from memory when dropped; never printed.
#[derive(Clone)]
pub struct TransportSecret(zeroize::Zeroizing<[u8; 32]>);

impl TransportSecret {
    /// The secret with these bytes (any 32 bytes: X25519 clamps them).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        TransportSecret(zeroize::Zeroizing::new(bytes))
    }

    /// The secret bytes (for the Noise library and the key file only).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The public half: the clamped scalar times the X25519 base point (RFC 7748).
    pub fn public(&self) -> [u8; 32] {
        curve25519_dalek::MontgomeryPoint::mul_base_clamped(*self.0).to_bytes()
    }
}

impl std::fmt::Debug for TransportSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let public = self.public();
        write!(f, "TransportSecret(public {:02x}{:02x}{:02x}{:02x}…)", public[0], public[1], public[2], public[3])
    }
}

/// Every secret of a cluster, with its public configuration.
#[derive(Debug)]
pub struct ClusterSecrets {
    /// The public configuration (SPEC §2 defaults; adjust fields before use).
    pub config: ProtocolConfig,
    /// `enclaves[i][kind.index()]` is the key of that enclave of replica `i`.
    pub enclaves: Vec<[SecretKey; 3]>,
    /// Client keys, indexed by client id.
    pub clients: Vec<SecretKey>,
    /// The Execution group key (SPEC §6): its private half goes to Execution enclaves only.
    pub execution_group: GroupSecret,
    /// Transport secrets of the replica environments (SPEC §11), indexed by replica id.
    pub transport: Vec<TransportSecret>,
}

impl ClusterSecrets {
    /// Generates `3f + 1` replicas and `clients` clients, drawing seeds from `seed`.
    pub fn generate(cluster_id: u64, f: u32, clients: usize, mut seed: impl FnMut() -> [u8; 32]) -> Self {
        let n = 3 * f as usize + 1;
        let enclaves: Vec<[SecretKey; 3]> = (0..n)
            .map(|_| [SecretKey::from_seed(seed()), SecretKey::from_seed(seed()), SecretKey::from_seed(seed())])
            .collect();
        let clients: Vec<SecretKey> = (0..clients).map(|_| SecretKey::from_seed(seed())).collect();
        let replicas = enclaves
            .iter()
            .map(|k| ReplicaKeys {
                preparation: k[0].public().to_bytes(),
                confirmation: k[1].public().to_bytes(),
                execution: k[2].public().to_bytes(),
            })
            .collect();
        // Drawn last, so adding it left every other key of a seeded cluster unchanged.
        let execution_group = GroupSecret::derive(&seed());
        let mut config =
            ProtocolConfig::new(cluster_id, f, replicas, clients.iter().map(|c| c.public().to_bytes()).collect());
        config.execution_group_key = execution_group.public();
        // Drawn after everything else, for the same reason.
        let transport: Vec<TransportSecret> = (0..n).map(|_| TransportSecret::from_bytes(seed())).collect();
        config.transport_keys = transport.iter().map(TransportSecret::public).collect();
        ClusterSecrets { config, enclaves, clients, execution_group, transport }
    }

    /// Keys for the PBFT baseline (SPEC §8): one key per replica, shared by its three parts,
    /// so the configuration lists the same public key for each of them.
    pub fn generate_one_key_per_replica(
        cluster_id: u64,
        f: u32,
        clients: usize,
        mut seed: impl FnMut() -> [u8; 32],
    ) -> Self {
        let mut current = [0u8; 32];
        let mut draws = 0usize;
        let replicas = 3 * f as usize + 1;
        Self::generate(cluster_id, f, clients, move || {
            if draws < 3 * replicas {
                if draws.is_multiple_of(3) {
                    current = seed();
                }
                draws += 1;
                current
            } else {
                draws += 1;
                seed()
            }
        })
    }

    /// Deterministic keys from a `u64` seed: for tests and the simulator only.
    pub fn deterministic(cluster_id: u64, f: u32, clients: usize, seed: u64) -> Self {
        let mut counter = 0u64;
        Self::generate(cluster_id, f, clients, move || {
            counter += 1;
            Digest::of(&[seed.to_le_bytes(), counter.to_le_bytes()].concat()).0
        })
    }

    /// One software-attestation report per Execution enclave, signed by `platform`, for code
    /// measuring `measurement` (what `keygen` writes to `cluster.toml`).
    pub fn execution_reports(&self, platform: &SoftwarePlatform, measurement: Digest) -> ExpectedExecution {
        let reports = (0..self.config.n())
            .map(|i| {
                let replica = ReplicaId(i as u32);
                platform.attest(ReportBody {
                    enclave: EnclaveId { replica, kind: CompartmentKind::Execution },
                    signing_key: self.enclave(replica, CompartmentKind::Execution).public().to_bytes(),
                    group_key: Some(self.execution_group.public()),
                    measurement,
                })
            })
            .collect();
        ExpectedExecution { measurement, reports }
    }

    /// A copy of the group secret, for one Execution enclave.
    pub fn execution_group_secret(&self) -> GroupSecret {
        GroupSecret::from_bytes(&self.execution_group.to_bytes()).expect("the group secret round-trips")
    }

    /// The secret key of one enclave.
    pub fn enclave(&self, replica: ReplicaId, kind: CompartmentKind) -> &SecretKey {
        &self.enclaves[replica.0 as usize][kind.index()]
    }
}
