//! `cluster.toml` and key files: what `splitbft keygen` writes and `replica`/`client` read.
//!
//! Layout of a key directory:
//! * `cluster.toml` — cluster id, `f`, protocol parameters, every replica's address
//!   (`host:port`, the host an IP address or a DNS name: [`crate::hostport`]) and
//!   its three enclaves' public keys, every client's public key;
//! * `keys/replica-<i>-<compartment>.key` — one enclave's Ed25519 seed (hex), readable by
//!   the owner only;
//! * `keys/client-<c>.key` — one client's seed;
//! * `keys/replica-<i>-execution-group.key` — the Execution group's X25519 private key
//!   (SPEC §6), given to Execution enclaves only.
//!
//! `cluster.toml` also carries the Execution group public key, `confidential`, and the
//! attestation trust root: the platform key, the expected Execution measurement and one
//! report per Execution enclave (software attestation, see `splitbft_types::attest`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hostport::HostPort;
use splitbft_types::attest::{ExpectedExecution, PlatformKind, Report, SoftwareAttestation, SoftwarePlatform};
use splitbft_types::codec::{from_bytes, to_bytes};
use splitbft_types::config::{ProtocolConfig, ReplicaKeys};
use splitbft_types::crypto::{PublicKey, SecretKey};
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::msg::Digest;
use splitbft_types::session::{GroupPublicKey, GroupSecret};
use splitbft_types::{ClientId, CompartmentKind, ReplicaId};

/// Why a cluster file or key file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ClusterFileError {
    /// A host name in the file does not resolve.
    #[error("{what} {address}: {source}")]
    Resolve {
        /// Which entry.
        what: String,
        /// The address as written.
        address: HostPort,
        /// Cause.
        source: std::io::Error,
    },
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The TOML does not parse or has wrong fields.
    #[error("{path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The contents parse but do not make a valid cluster.
    #[error("{path}: {message}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// One replica's entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaEntry {
    /// Replica id (`0..n`, in order).
    pub id: u32,
    /// Address peers and clients reach the replica at (`replica --listen` binds another).
    pub address: HostPort,
    /// Preparation enclave public key (hex).
    pub preparation: String,
    /// Confirmation enclave public key (hex).
    pub confirmation: String,
    /// Execution enclave public key (hex).
    pub execution: String,
    /// The Execution enclave's attestation report (hex of its canonical encoding).
    pub execution_report: String,
    /// Where the replica serves `/metrics` and `/healthz` (`replica --metrics` overrides
    /// it; `status` scrapes it). Optional: files written before it existed stay valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<HostPort>,
}

/// The attestation trust root (SPEC §6).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationEntry {
    /// Platform: only "software attestation" exists (no TEE).
    pub platform: String,
    /// Platform public key (hex): software attestation's provisioning key.
    pub platform_key: String,
    /// Expected measurement of every Execution enclave's code (hex SHA-256).
    pub execution_measurement: String,
}

/// One client's entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientEntry {
    /// Client id (`0..clients`, in order).
    pub id: u32,
    /// Ed25519 public key (hex).
    pub public_key: String,
}

/// The contents of `cluster.toml`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Distinguishes this cluster in every signature.
    pub cluster_id: u64,
    /// Tolerated faults per compartment kind; `n = 3f + 1`.
    pub f: u32,
    /// Checkpoint interval `K`.
    pub checkpoint_interval: u64,
    /// Log window `L`.
    pub log_window: u64,
    /// Most requests per batch `B`.
    pub max_batch: u32,
    /// Primary's batch timeout in milliseconds.
    pub batch_timeout_ms: u64,
    /// Per-client window `W`.
    pub client_window: u64,
    /// Largest op in bytes.
    pub max_op_bytes: u32,
    /// Ops and results encrypted under client session keys (SPEC §6); `false` keeps them
    /// authenticated but in clear.
    pub confidential: bool,
    /// The Execution group's X25519 public key (hex).
    pub execution_group_key: String,
    /// What clients check before registering a session.
    pub attestation: AttestationEntry,
    /// Replicas, in id order.
    pub replicas: Vec<ReplicaEntry>,
    /// Clients, in id order.
    pub clients: Vec<ClientEntry>,
}

fn hex32(s: &str, what: &str, path: &Path) -> Result<[u8; 32], ClusterFileError> {
    let invalid = |m: String| ClusterFileError::Invalid { path: path.to_owned(), message: m };
    let bytes = hex::decode(s.trim()).map_err(|e| invalid(format!("{what}: not hex: {e}")))?;
    bytes.try_into().map_err(|b: Vec<u8>| invalid(format!("{what}: {} bytes, expected 32", b.len())))
}

impl ClusterFile {
    /// Describes `secrets` with replicas listening on `host:base_port + i`, Execution
    /// enclaves attested by `platform` for code measuring `measurement`.
    pub fn new(
        secrets: &ClusterSecrets,
        addresses: Vec<HostPort>,
        batch_timeout_ms: u64,
        platform: &SoftwarePlatform,
        measurement: Digest,
    ) -> Self {
        let c = &secrets.config;
        let reports = secrets.execution_reports(platform, measurement).reports;
        ClusterFile {
            cluster_id: c.cluster_id,
            f: c.f,
            checkpoint_interval: c.checkpoint_interval,
            log_window: c.log_window,
            max_batch: c.max_batch,
            batch_timeout_ms,
            client_window: c.client_window,
            max_op_bytes: c.max_op_bytes,
            confidential: c.confidential,
            execution_group_key: hex::encode(c.execution_group_key.0),
            attestation: AttestationEntry {
                platform: PlatformKind::Software.name().into(),
                platform_key: hex::encode(platform.public().to_bytes()),
                execution_measurement: hex::encode(measurement.0),
            },
            replicas: c
                .replicas
                .iter()
                .zip(addresses)
                .zip(reports)
                .enumerate()
                .map(|(i, ((k, address), report))| ReplicaEntry {
                    id: i as u32,
                    address,
                    preparation: hex::encode(k.preparation),
                    confirmation: hex::encode(k.confirmation),
                    execution: hex::encode(k.execution),
                    execution_report: hex::encode(to_bytes(&report)),
                    metrics: None,
                })
                .collect(),
            clients: c
                .clients
                .iter()
                .enumerate()
                .map(|(i, k)| ClientEntry { id: i as u32, public_key: hex::encode(k) })
                .collect(),
        }
    }

    /// Reads and validates `cluster.toml`.
    pub fn load(path: &Path) -> Result<Self, ClusterFileError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ClusterFileError::Io { path: path.to_owned(), source })?;
        let file: ClusterFile = toml::from_str(&text)
            .map_err(|e| ClusterFileError::Parse { path: path.to_owned(), message: e.to_string() })?;
        file.protocol(path)?;
        Ok(file)
    }

    /// Writes `cluster.toml`.
    pub fn save(&self, path: &Path) -> Result<(), ClusterFileError> {
        let text = toml::to_string_pretty(self)
            .map_err(|e| ClusterFileError::Invalid { path: path.to_owned(), message: e.to_string() })?;
        std::fs::write(path, text).map_err(|source| ClusterFileError::Io { path: path.to_owned(), source })
    }

    /// The protocol configuration, validated.
    pub fn protocol(&self, path: &Path) -> Result<ProtocolConfig, ClusterFileError> {
        let invalid = |m: String| ClusterFileError::Invalid { path: path.to_owned(), message: m };
        for (i, r) in self.replicas.iter().enumerate() {
            if r.id as usize != i {
                return Err(invalid(format!("replica entry {i} has id {}; ids must be 0..n in order", r.id)));
            }
        }
        for (i, c) in self.clients.iter().enumerate() {
            if c.id as usize != i {
                return Err(invalid(format!("client entry {i} has id {}; ids must be 0..clients in order", c.id)));
            }
        }
        let replicas = self
            .replicas
            .iter()
            .map(|r| {
                Ok(ReplicaKeys {
                    preparation: hex32(&r.preparation, &format!("replica {} preparation", r.id), path)?,
                    confirmation: hex32(&r.confirmation, &format!("replica {} confirmation", r.id), path)?,
                    execution: hex32(&r.execution, &format!("replica {} execution", r.id), path)?,
                })
            })
            .collect::<Result<_, ClusterFileError>>()?;
        let clients = self
            .clients
            .iter()
            .map(|c| hex32(&c.public_key, &format!("client {}", c.id), path))
            .collect::<Result<_, _>>()?;
        let mut config = ProtocolConfig::new(self.cluster_id, self.f, replicas, clients);
        config.checkpoint_interval = self.checkpoint_interval;
        config.log_window = self.log_window;
        config.max_batch = self.max_batch;
        config.client_window = self.client_window;
        config.max_op_bytes = self.max_op_bytes;
        config.confidential = self.confidential;
        config.execution_group_key = GroupPublicKey(hex32(&self.execution_group_key, "execution_group_key", path)?);
        config.validate().map_err(|e| invalid(e.to_string()))?;
        Ok(config)
    }

    /// The attestation verifier and what it must find (SPEC §6).
    pub fn attestation(&self, path: &Path) -> Result<(SoftwareAttestation, ExpectedExecution), ClusterFileError> {
        let invalid = |m: String| ClusterFileError::Invalid { path: path.to_owned(), message: m };
        let a = &self.attestation;
        if a.platform != PlatformKind::Software.name() {
            return Err(invalid(format!("attestation platform {:?} is not supported", a.platform)));
        }
        let key = PublicKey::from_bytes(&hex32(&a.platform_key, "attestation platform_key", path)?)
            .map_err(|e| invalid(format!("attestation platform_key: {e}")))?;
        let measurement = Digest(hex32(&a.execution_measurement, "attestation execution_measurement", path)?);
        let reports = self
            .replicas
            .iter()
            .map(|r| {
                let bytes = hex::decode(r.execution_report.trim())
                    .map_err(|e| invalid(format!("replica {} execution_report: not hex: {e}", r.id)))?;
                from_bytes::<Report>(&bytes).map_err(|e| invalid(format!("replica {} execution_report: {e}", r.id)))
            })
            .collect::<Result<_, _>>()?;
        Ok((SoftwareAttestation::new(self.cluster_id, key), ExpectedExecution { measurement, reports }))
    }

    /// Replica addresses in id order, host names resolved (once, now).
    pub fn addresses(&self) -> Result<Vec<SocketAddr>, ClusterFileError> {
        self.replicas
            .iter()
            .map(|r| {
                r.address.resolve().map_err(|source| ClusterFileError::Resolve {
                    what: format!("replica {} address", r.id),
                    address: r.address.clone(),
                    source,
                })
            })
            .collect()
    }
}

/// Path of an enclave's key file.
pub fn enclave_key_path(dir: &Path, replica: ReplicaId, kind: CompartmentKind) -> PathBuf {
    dir.join("keys").join(format!("replica-{}-{}.key", replica.0, kind.name()))
}

/// Path of the Execution group key file of replica `replica`'s Execution enclave.
pub fn group_key_path(dir: &Path, replica: ReplicaId) -> PathBuf {
    dir.join("keys").join(format!("replica-{}-execution-group.key", replica.0))
}

/// Writes the Execution group secret for one Execution enclave (owner-only).
pub fn write_group_key(path: &Path, key: &GroupSecret) -> Result<(), ClusterFileError> {
    write_secret(path, &key.to_bytes())
}

/// Reads the Execution group secret and checks it matches `cluster.toml`'s public key.
pub fn read_group_key(path: &Path, expected: &GroupPublicKey) -> Result<GroupSecret, ClusterFileError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ClusterFileError::Io { path: path.to_owned(), source })?;
    let invalid = |m: &str| ClusterFileError::Invalid { path: path.to_owned(), message: m.into() };
    let key = GroupSecret::from_bytes(&hex32(&text, "group key", path)?).map_err(|_| invalid("not an X25519 key"))?;
    if &key.public() != expected {
        return Err(invalid("group key does not match execution_group_key in cluster.toml"));
    }
    Ok(key)
}

/// Path of a client's key file.
pub fn client_key_path(dir: &Path, client: ClientId) -> PathBuf {
    dir.join("keys").join(format!("client-{}.key", client.0))
}

/// Writes a secret key file readable by its owner only.
pub fn write_key(path: &Path, key: &SecretKey) -> Result<(), ClusterFileError> {
    write_secret(path, &key.seed())
}

fn write_secret(path: &Path, secret: &[u8; 32]) -> Result<(), ClusterFileError> {
    let io = |source| ClusterFileError::Io { path: path.to_owned(), source };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(path, format!("{}\n", hex::encode(secret))).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    Ok(())
}

/// Reads a secret key file and checks it matches the expected public key.
pub fn read_key(path: &Path, expected_public: &[u8; 32]) -> Result<SecretKey, ClusterFileError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ClusterFileError::Io { path: path.to_owned(), source })?;
    let key = SecretKey::from_seed(hex32(&text, "key", path)?);
    if &key.public().to_bytes() != expected_public {
        return Err(ClusterFileError::Invalid {
            path: path.to_owned(),
            message: "key does not match the public key in cluster.toml".into(),
        });
    }
    Ok(key)
}
