//! Attestation (SPEC §6): an enclave proves which code holds which keys.
//!
//! A [`Report`] binds an enclave's identity and public keys (its Ed25519 key and, for
//! Execution, the group key it holds) to a *measurement* of its compartment code, and
//! carries platform evidence over that binding. A client checks every Execution enclave's
//! report with an [`Attestation`] verifier before it seals a session key to the group key.
//!
//! The only platform built is **software attestation** ([`SoftwareAttestation`],
//! [`SoftwarePlatform`]): the "platform" is an Ed25519 key held by whoever provisions the
//! cluster (`splitbft keygen`), the measurement is a SHA-256 over the compartment crate's
//! name, version and a build identity, and the evidence is the platform key's signature.
//! It proves only what the provisioner vouched for — no hardware isolation backs it. An SGX
//! DCAP, SEV-SNP or TDX verifier implements the same trait: its evidence is a quote whose
//! report data is [`ReportBody::binding`], its measurement MRENCLAVE / the launch digest.

use serde::{Deserialize, Serialize};

use crate::crypto::{CryptoError, PublicKey, Purpose, SecretKey};
use crate::ids::{CompartmentKind, EnclaveId};
use crate::msg::{Digest, Sig};
use crate::session::GroupPublicKey;

/// Build identity folded into software measurements: set `SPLITBFT_BUILD_ID` at build time
/// (e.g. to a commit hash) to tell builds of one version apart.
pub const BUILD_ID: &str = match option_env!("SPLITBFT_BUILD_ID") {
    Some(id) => id,
    None => "unversioned",
};

/// What code an enclave runs, as a software measurement's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeIdentity {
    /// Compartment crate name.
    pub crate_name: &'static str,
    /// Its version.
    pub version: &'static str,
    /// Build identity ([`BUILD_ID`]).
    pub build: &'static str,
}

impl CodeIdentity {
    /// SHA-256 over the length-prefixed name, version and build identity.
    pub fn measurement(&self) -> Digest {
        let mut bytes = b"splitbft/v1/measurement".to_vec();
        for part in [self.crate_name, self.version, self.build] {
            bytes.extend_from_slice(&(part.len() as u64).to_le_bytes());
            bytes.extend_from_slice(part.as_bytes());
        }
        Digest::of(&bytes)
    }
}

/// Which platform produced a report's evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlatformKind {
    /// Software attestation: a provisioning key signs the report. No TEE.
    Software,
}

impl PlatformKind {
    /// Name for files and CLI output.
    pub fn name(self) -> &'static str {
        match self {
            PlatformKind::Software => "software attestation",
        }
    }
}

/// What a report vouches for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportBody {
    /// The enclave.
    pub enclave: EnclaveId,
    /// Its Ed25519 public key.
    pub signing_key: [u8; 32],
    /// The Execution group public key the enclave holds the private half of (Execution only).
    pub group_key: Option<GroupPublicKey>,
    /// Measurement of the enclave's code.
    pub measurement: Digest,
}

impl ReportBody {
    /// SHA-256 of the canonical body: what hardware evidence puts in its report data.
    pub fn binding(&self) -> Digest {
        Digest::of(&crate::codec::to_bytes(self))
    }
}

/// A report with its platform evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Platform that produced the evidence.
    pub platform: PlatformKind,
    /// The claims.
    pub body: ReportBody,
    /// Platform evidence (software attestation: an Ed25519 signature).
    #[serde(with = "serde_bytes")]
    pub evidence: Vec<u8>,
}

/// Why a report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestationError {
    /// Evidence from another platform than the verifier's.
    #[error("report is from {got:?}, verifier expects {expected:?}")]
    WrongPlatform {
        /// Verifier's platform.
        expected: PlatformKind,
        /// Report's platform.
        got: PlatformKind,
    },
    /// Evidence does not verify.
    #[error("report evidence does not verify")]
    BadEvidence,
    /// The measured code is not the expected one.
    #[error("{enclave:?}: measurement {got:?} is not the expected {expected:?}")]
    WrongMeasurement {
        /// The enclave.
        enclave: EnclaveId,
        /// Expected.
        expected: Digest,
        /// Reported.
        got: Digest,
    },
    /// The report is for another enclave, or its keys are not the configured ones.
    #[error("{0:?}: report does not match the configured enclave and keys")]
    KeyMismatch(EnclaveId),
    /// No report for an enclave.
    #[error("{0:?}: no attestation report")]
    Missing(EnclaveId),
}

impl From<CryptoError> for AttestationError {
    fn from(_: CryptoError) -> Self {
        AttestationError::BadEvidence
    }
}

/// A report verifier for one platform: software attestation today, SGX DCAP / SEV-SNP /
/// TDX later behind the same trait.
pub trait Attestation {
    /// The platform whose evidence this checks.
    fn platform(&self) -> PlatformKind;
    /// Checks the evidence and that the measurement is `expected`; returns the vouched body.
    fn verify<'r>(&self, report: &'r Report, expected: &Digest) -> Result<&'r ReportBody, AttestationError>;
}

/// Software attestation, verifier side: the platform's Ed25519 public key.
#[derive(Clone, Debug)]
pub struct SoftwareAttestation {
    platform_key: PublicKey,
    cluster_id: u64,
}

impl SoftwareAttestation {
    /// A verifier trusting `platform_key` for cluster `cluster_id`.
    pub fn new(cluster_id: u64, platform_key: PublicKey) -> Self {
        SoftwareAttestation { platform_key, cluster_id }
    }
}

impl Attestation for SoftwareAttestation {
    fn platform(&self) -> PlatformKind {
        PlatformKind::Software
    }

    fn verify<'r>(&self, report: &'r Report, expected: &Digest) -> Result<&'r ReportBody, AttestationError> {
        if report.platform != PlatformKind::Software {
            return Err(AttestationError::WrongPlatform { expected: PlatformKind::Software, got: report.platform });
        }
        let sig: [u8; 64] = report.evidence.as_slice().try_into().map_err(|_| AttestationError::BadEvidence)?;
        self.platform_key.verify(self.cluster_id, Purpose::Attestation, &report.body, &Sig(sig))?;
        if report.body.measurement != *expected {
            return Err(AttestationError::WrongMeasurement {
                enclave: report.body.enclave,
                expected: *expected,
                got: report.body.measurement,
            });
        }
        Ok(&report.body)
    }
}

/// Software attestation, platform side: signs reports (run by the provisioner, never by an
/// enclave — an enclave holding this key could vouch for any code).
#[derive(Debug)]
pub struct SoftwarePlatform {
    key: SecretKey,
    cluster_id: u64,
}

impl SoftwarePlatform {
    /// A platform signing with `key` for cluster `cluster_id`.
    pub fn new(cluster_id: u64, key: SecretKey) -> Self {
        SoftwarePlatform { key, cluster_id }
    }

    /// The key clients trust.
    pub fn public(&self) -> PublicKey {
        self.key.public()
    }

    /// Signs a report over `body`.
    pub fn attest(&self, body: ReportBody) -> Report {
        let sig = self.key.sign(self.cluster_id, Purpose::Attestation, &body);
        Report { platform: PlatformKind::Software, body, evidence: sig.0.to_vec() }
    }
}

/// What a client expects of the cluster's Execution enclaves (from `cluster.toml`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedExecution {
    /// Expected code measurement of every Execution enclave.
    pub measurement: Digest,
    /// One report per replica, in replica order.
    pub reports: Vec<Report>,
}

/// Checks every Execution enclave's report (SPEC §6): evidence, measurement, and that it
/// vouches for the configured Ed25519 key and the configured group key. A client registers
/// a session only after this passes.
pub fn verify_execution_reports(
    verifier: &dyn Attestation,
    config: &crate::config::ProtocolConfig,
    expected: &ExpectedExecution,
) -> Result<(), AttestationError> {
    for (i, keys) in config.replicas.iter().enumerate() {
        let enclave = EnclaveId { replica: crate::ids::ReplicaId(i as u32), kind: CompartmentKind::Execution };
        let report = expected.reports.get(i).ok_or(AttestationError::Missing(enclave))?;
        let body = verifier.verify(report, &expected.measurement)?;
        if body.enclave != enclave
            || body.signing_key != keys.execution
            || body.group_key != Some(config.execution_group_key)
        {
            return Err(AttestationError::KeyMismatch(enclave));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::ClusterSecrets;

    const EXEC: CodeIdentity = CodeIdentity { crate_name: "splitbft-execution", version: "0.1.0", build: "t" };

    fn setup() -> (ClusterSecrets, SoftwarePlatform, ExpectedExecution) {
        let secrets = ClusterSecrets::deterministic(3, 1, 1, 9);
        let platform = SoftwarePlatform::new(3, SecretKey::from_seed([5; 32]));
        let expected = secrets.execution_reports(&platform, EXEC.measurement());
        (secrets, platform, expected)
    }

    #[test]
    fn genuine_reports_pass() {
        let (secrets, platform, expected) = setup();
        let verifier = SoftwareAttestation::new(3, platform.public());
        verify_execution_reports(&verifier, &secrets.config, &expected).unwrap();
    }

    #[test]
    fn wrong_measurement_is_refused() {
        let (secrets, platform, mut expected) = setup();
        let verifier = SoftwareAttestation::new(3, platform.public());
        // The platform honestly signs a report of other code.
        let other = CodeIdentity { build: "patched", ..EXEC }.measurement();
        let mut body = expected.reports[2].body.clone();
        body.measurement = other;
        expected.reports[2] = platform.attest(body);
        assert!(matches!(
            verify_execution_reports(&verifier, &secrets.config, &expected),
            Err(AttestationError::WrongMeasurement { got, .. }) if got == other
        ));
    }

    #[test]
    fn bad_signature_is_refused() {
        let (secrets, platform, mut expected) = setup();
        let verifier = SoftwareAttestation::new(3, platform.public());
        expected.reports[1].evidence[0] ^= 1;
        assert_eq!(verify_execution_reports(&verifier, &secrets.config, &expected), Err(AttestationError::BadEvidence));
        // A report signed by another platform key.
        let (_, _, good) = setup();
        let rogue = SoftwarePlatform::new(3, SecretKey::from_seed([6; 32]));
        let mut forged = good.clone();
        forged.reports[0] = rogue.attest(good.reports[0].body.clone());
        assert_eq!(verify_execution_reports(&verifier, &secrets.config, &forged), Err(AttestationError::BadEvidence));
    }

    #[test]
    fn report_for_other_keys_is_refused() {
        let (secrets, platform, mut expected) = setup();
        let verifier = SoftwareAttestation::new(3, platform.public());
        let mut body = expected.reports[0].body.clone();
        body.group_key = Some(GroupPublicKey([1; 32]));
        expected.reports[0] = platform.attest(body);
        assert!(matches!(
            verify_execution_reports(&verifier, &secrets.config, &expected),
            Err(AttestationError::KeyMismatch(_))
        ));
        expected.reports.pop();
        let (_, _, good) = setup();
        let mut short = good;
        short.reports.pop();
        assert!(matches!(
            verify_execution_reports(&verifier, &secrets.config, &short),
            Err(AttestationError::Missing(_))
        ));
    }
}
