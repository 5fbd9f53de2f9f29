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
//!   (SPEC §6), given to Execution enclaves only;
//! * `keys/replica-<i>-transport.key` — replica `i`'s environment (broker) X25519 transport
//!   secret for its Noise handshakes (SPEC §11); its public half is in `cluster.toml`.
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
use splitbft_types::keys::{ClusterSecrets, TransportSecret};
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
    /// The replica environment's X25519 transport key (hex): the static key its Noise
    /// handshakes prove (SPEC §11).
    pub transport: String,
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
                .zip(&c.transport_keys)
                .enumerate()
                .map(|(i, (((k, address), report), transport))| ReplicaEntry {
                    id: i as u32,
                    address,
                    preparation: hex::encode(k.preparation),
                    confirmation: hex::encode(k.confirmation),
                    execution: hex::encode(k.execution),
                    execution_report: hex::encode(to_bytes(&report)),
                    transport: hex::encode(transport),
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
        config.transport_keys = self
            .replicas
            .iter()
            .map(|r| hex32(&r.transport, &format!("replica {} transport", r.id), path))
            .collect::<Result<_, _>>()?;
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
    let text = read_secret(path)?;
    let invalid = |m: &str| ClusterFileError::Invalid { path: path.to_owned(), message: m.into() };
    let key = GroupSecret::from_bytes(&hex32(&text, "group key", path)?).map_err(|_| invalid("not an X25519 key"))?;
    if &key.public() != expected {
        return Err(invalid("group key does not match execution_group_key in cluster.toml"));
    }
    Ok(key)
}

/// Path of replica `replica`'s transport key file (SPEC §11): the broker's, not an enclave's.
pub fn transport_key_path(dir: &Path, replica: ReplicaId) -> PathBuf {
    dir.join("keys").join(format!("replica-{}-transport.key", replica.0))
}

/// Writes a replica environment's transport secret (owner-only).
pub fn write_transport_key(path: &Path, key: &TransportSecret) -> Result<(), ClusterFileError> {
    write_secret(path, key.as_bytes())
}

/// Reads a transport secret and checks it matches `expected` (from `cluster.toml`).
pub fn read_transport_key(path: &Path, expected: &[u8; 32]) -> Result<TransportSecret, ClusterFileError> {
    let text = read_secret(path)?;
    let key = TransportSecret::from_bytes(hex32(&text, "transport key", path)?);
    if &key.public() != expected {
        return Err(ClusterFileError::Invalid {
            path: path.to_owned(),
            message: "transport key does not match the replica's transport key in cluster.toml".into(),
        });
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

/// Writes a secret file (SPEC §11 secrets): created with mode 0600 from the start (never
/// chmod'ed after), written to a fresh temporary file in the same directory and renamed over
/// `path`, so no reader ever sees a partial or world-readable key; a symlink at `path` is
/// refused, and the temporary file is created exclusively (`O_EXCL` never follows one).
/// The key's hex text is wiped from memory afterwards.
fn write_secret(path: &Path, secret: &[u8; 32]) -> Result<(), ClusterFileError> {
    use std::io::Write as _;
    let io = |source| ClusterFileError::Io { path: path.to_owned(), source };
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut dirs = std::fs::DirBuilder::new();
    dirs.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut dirs, 0o700);
    dirs.create(parent).map_err(io)?;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(ClusterFileError::Invalid {
            path: path.to_owned(),
            message: "is a symbolic link: refusing to write a key through it".into(),
        });
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let text = zeroize::Zeroizing::new(format!("{}\n", hex::encode(secret)));
    let written = (|| {
        let mut file = options.open(&temp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written.map_err(io)
}

/// Reads a secret file: not through a symlink (`O_NOFOLLOW`), and only if neither group
/// nor others may read it — a key others can read is no longer a secret (SPEC §11).
/// The text is wiped from memory when dropped.
pub fn read_secret(path: &Path) -> Result<zeroize::Zeroizing<String>, ClusterFileError> {
    use std::io::Read as _;
    let io = |source| ClusterFileError::Io { path: path.to_owned(), source };
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
    let mut file = options.open(path).map_err(|source| {
        if source.raw_os_error() == Some(libc::ELOOP) {
            ClusterFileError::Invalid {
                path: path.to_owned(),
                message: "is a symbolic link: key files are read only from regular files".into(),
            }
        } else {
            io(source)
        }
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata().map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(ClusterFileError::Invalid {
                path: path.to_owned(),
                message: format!(
                    "key file is readable or writable by group or others (mode {:03o}): run `chmod 600 {}` \
                     (and consider the key compromised if others could read it)",
                    mode & 0o777,
                    path.display()
                ),
            });
        }
    }
    let mut text = zeroize::Zeroizing::new(String::new());
    file.read_to_string(&mut text).map_err(io)?;
    Ok(text)
}

/// Reads a secret key file and checks it matches the expected public key.
pub fn read_key(path: &Path, expected_public: &[u8; 32]) -> Result<SecretKey, ClusterFileError> {
    let text = read_secret(path)?;
    let seed = zeroize::Zeroizing::new(hex32(&text, "key", path)?);
    let key = SecretKey::from_seed(*seed);
    if &key.public().to_bytes() != expected_public {
        return Err(ClusterFileError::Invalid {
            path: path.to_owned(),
            message: "key does not match the public key in cluster.toml".into(),
        });
    }
    Ok(key)
}

/// Connects client `client_id` of the cluster `config_path` describes (its key file next
/// to it, in `keys/`), checks every Execution enclave's attestation and registers a session
/// (SPEC §6): what `splitbft client` and the gateway do before their first operation.
pub async fn connect_client(
    config_path: &Path,
    client_id: u32,
    options: splitbft_client::ClientOptions,
) -> anyhow::Result<splitbft_client::Client> {
    use anyhow::Context as _;
    let file = ClusterFile::load(config_path)?;
    let protocol = file.protocol(config_path)?;
    let id = ClientId(client_id);
    let Some(public) = protocol.clients.get(client_id as usize) else {
        anyhow::bail!("client id {client_id} is not in {} ({} clients)", config_path.display(), protocol.clients.len());
    };
    let dir = config_path.parent().map(Path::to_owned).unwrap_or_default();
    let secret = read_key(&client_key_path(&dir, id), public)?;
    let (verifier, expected) = file.attestation(config_path)?;
    // Every Execution enclave's report is checked before the session key leaves (SPEC §6).
    let attested = splitbft_client::verify_attestation(&protocol, &verifier, &expected)?;
    let client = splitbft_client::Client::connect(protocol, file.addresses()?, id, secret, options).await?;
    client.register(attested).await.with_context(|| format!("registering a session for client {client_id}"))?;
    Ok(client)
}

#[cfg(all(test, unix))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn key_files_are_owner_only_from_creation_and_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/replica-0-transport.key");
        let key = TransportSecret::from_bytes([7; 32]);
        write_transport_key(&path, &key).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        // Rewriting replaces the file whole; no temporary file is left behind.
        let other = TransportSecret::from_bytes([8; 32]);
        write_transport_key(&path, &other).unwrap();
        assert_eq!(read_transport_key(&path, &other.public()).unwrap().public(), other.public());
        let names: Vec<_> =
            std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("replica-0-transport.key")]);
        // A key that does not match cluster.toml is refused.
        assert!(matches!(read_transport_key(&path, &key.public()), Err(ClusterFileError::Invalid { .. })));
    }

    #[test]
    fn keys_are_never_written_or_read_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        let link = dir.path().join("client-0.key");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let key = SecretKey::from_seed([3; 32]);
        let err = write_key(&link, &key).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(!target.exists(), "the key went through the link");
        // A real key behind a link is not read either.
        write_key(&target, &key).unwrap();
        let err = read_key(&link, &key.public().to_bytes()).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(read_key(&target, &key.public().to_bytes()).is_ok());
    }

    #[test]
    fn a_key_readable_by_others_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replica-0-preparation.key");
        let key = SecretKey::from_seed([5; 32]);
        write_key(&path, &key).unwrap();
        for loose in [0o640, 0o604, 0o620] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(loose)).unwrap();
            let err = read_key(&path, &key.public().to_bytes()).unwrap_err().to_string();
            assert!(err.contains(&path.display().to_string()) && err.contains("chmod 600"), "{err}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(read_key(&path, &key.public().to_bytes()).is_ok());
    }
}
