//! Sealing application records (ledger blocks, SPEC §7) for the untrusted environment to
//! store: AEAD under a key that only this Execution enclave (and an auditor holding its
//! secret key) can derive.
//!
//! * Key: HKDF-SHA256 of the Execution enclave's secret seed, salted with the protocol
//!   domain and cluster id, label [`SEAL_LABEL`], context the replica id
//!   ([`SecretKey::derive_private_key`]). No other compartment, replica or broker has it.
//! * Nonce: the record's height, big-endian in the last 8 of 12 bytes.
//! * AAD: [`AAD_DOMAIN`], cluster id, replica id and height — a record moved to another
//!   height, replica or cluster does not open.
//!
//! Why the nonce may be the height. Within one history a key seals a given height at most
//! once *with a given plaintext*: agreement (SPEC §9 S1) fixes the batch at every sequence
//! number and execution is deterministic, so the block at height `h` is the same on every
//! correct replica, and a replica that restarts from genesis and re-executes produces the
//! identical block again — identical plaintext, nonce and AAD, hence identical ciphertext,
//! which reveals nothing new. A replica that caught up by state transfer skips heights and
//! never seals them. What agreement does *not* cover is a second history under the same
//! keys: without persistence, stopping every replica of a `keygen` cluster and starting
//! them again begins a new history from genesis, whose block 0 differs from the old one.
//! Under AES-GCM that would reuse a (key, nonce) pair for two plaintexts — leaking their
//! XOR and the GHASH key, i.e. allowing forgeries. We therefore use AES-256-GCM-SIV
//! (RFC 8452), which is as deterministic as AES-GCM with a fixed nonce but
//! nonce-misuse resistant: a repeated (key, nonce) with different plaintexts reveals only
//! that they differ, and authenticity holds. The verifier reports such a fork.

use aws_lc_rs::aead::{self, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use splitbft_types::ReplicaId;
use splitbft_types::crypto::SecretKey;

/// The AEAD: AES-256 in GCM-SIV mode (see the module documentation for why not plain GCM).
pub static SEAL_ALGORITHM: &aead::Algorithm = &aead::AES_256_GCM_SIV;
/// HKDF label of the sealing key.
pub const SEAL_LABEL: &[u8] = b"ledger-seal";
/// First bytes of every record's associated data.
pub const AAD_DOMAIN: &[u8] = b"splitbft/v1/ledger-block";
/// Bytes the AEAD adds to a plaintext (its tag).
pub const SEAL_OVERHEAD: usize = 16;
/// Largest plaintext sealed: GCM-SIV's per-message limit is 2^36 bytes; a record this
/// large (1 GiB) could not be written or read back sensibly anyway.
pub const MAX_SEALED_PLAINTEXT: usize = 1 << 30;

/// Why a record was not sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Sealed bytes shorter than the tag.
    #[error("sealed record of {0} bytes is shorter than the {SEAL_OVERHEAD}-byte tag")]
    TooShort(usize),
    /// The tag does not verify: another key (replica, cluster), another height, or
    /// altered bytes.
    #[error("authentication failed (wrong key, cluster, replica or height, or altered bytes)")]
    Unauthentic,
    /// A plaintext above [`MAX_SEALED_PLAINTEXT`].
    #[error("record of {0} bytes exceeds the sealing limit of {MAX_SEALED_PLAINTEXT}")]
    TooLarge(usize),
}

/// The sealing key of one replica's Execution enclave.
pub struct RecordSealer {
    key: LessSafeKey,
    cluster_id: u64,
    replica: ReplicaId,
}

impl RecordSealer {
    /// Derives the key of replica `replica`'s Execution enclave from its secret key.
    pub fn new(execution_secret: &SecretKey, cluster_id: u64, replica: ReplicaId) -> Self {
        let bytes = execution_secret.derive_private_key(cluster_id, SEAL_LABEL, &replica.0.to_le_bytes());
        let key = UnboundKey::new(SEAL_ALGORITHM, &bytes).expect("HKDF yields exactly the 32 bytes AES-256 takes");
        RecordSealer { key: LessSafeKey::new(key), cluster_id, replica }
    }

    /// Seals the record at `height`. Deterministic: the same record at the same height
    /// gives the same bytes.
    pub fn seal(&self, height: u64, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        if plaintext.len() > MAX_SEALED_PLAINTEXT {
            return Err(SealError::TooLarge(plaintext.len()));
        }
        let mut sealed = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
        sealed.extend_from_slice(plaintext);
        let aad = self.aad(height);
        self.key
            .seal_in_place_append_tag(nonce(height), Aad::from(&aad[..]), &mut sealed)
            .map_err(|_| SealError::TooLarge(plaintext.len()))?;
        debug_assert_eq!(sealed.len(), plaintext.len() + SEAL_OVERHEAD);
        Ok(sealed)
    }

    /// Opens a record sealed for `height` by this enclave.
    pub fn open(&self, height: u64, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(SealError::TooShort(sealed.len()));
        }
        let mut buf = sealed.to_vec();
        let aad = self.aad(height);
        let len = self
            .key
            .open_in_place(nonce(height), Aad::from(&aad[..]), &mut buf)
            .map_err(|_| SealError::Unauthentic)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    fn aad(&self, height: u64) -> Vec<u8> {
        [AAD_DOMAIN, &self.cluster_id.to_le_bytes(), &self.replica.0.to_le_bytes(), &height.to_le_bytes()].concat()
    }
}

impl std::fmt::Debug for RecordSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecordSealer(cluster {}, replica {})", self.cluster_id, self.replica.0)
    }
}

fn nonce(height: u64) -> Nonce {
    let mut bytes = [0u8; NONCE_LEN];
    bytes[NONCE_LEN - 8..].copy_from_slice(&height.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(seed: u8, cluster: u64, replica: u32) -> RecordSealer {
        RecordSealer::new(&SecretKey::from_seed([seed; 32]), cluster, ReplicaId(replica))
    }

    #[test]
    fn a_sealed_record_opens_only_with_its_key_cluster_replica_and_height() {
        let s = sealer(1, 7, 2);
        let plain = b"block bytes".to_vec();
        let sealed = s.seal(5, &plain).unwrap();
        assert_eq!(sealed.len(), plain.len() + SEAL_OVERHEAD);
        assert!(!sealed.windows(plain.len()).any(|w| w == plain), "the plaintext does not show");
        assert_eq!(s.open(5, &sealed), Ok(plain.clone()));
        assert_eq!(sealer(1, 7, 2).open(5, &sealed), Ok(plain.clone()), "an auditor re-derives the key");
        assert_eq!(s.open(6, &sealed), Err(SealError::Unauthentic), "other height");
        assert_eq!(sealer(2, 7, 2).open(5, &sealed), Err(SealError::Unauthentic), "other secret key");
        assert_eq!(sealer(1, 8, 2).open(5, &sealed), Err(SealError::Unauthentic), "other cluster");
        assert_eq!(sealer(1, 7, 3).open(5, &sealed), Err(SealError::Unauthentic), "other replica");
        for i in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[i] ^= 0x01;
            assert_eq!(s.open(5, &tampered), Err(SealError::Unauthentic), "byte {i} flipped");
        }
        assert_eq!(s.open(5, &sealed[..sealed.len() - 1]), Err(SealError::Unauthentic));
        assert_eq!(s.open(5, &sealed[..3]), Err(SealError::TooShort(3)));
    }

    #[test]
    fn sealing_is_deterministic_per_height_and_differs_across_heights() {
        let s = sealer(1, 7, 2);
        assert_eq!(s.seal(3, b"same").unwrap(), s.seal(3, b"same").unwrap(), "re-execution rewrites identical bytes");
        assert_ne!(s.seal(3, b"same").unwrap(), s.seal(4, b"same").unwrap());
        // A second history at the same height (GCM-SIV): both open, neither reveals the other.
        let (a, b) = (s.seal(0, b"history one").unwrap(), s.seal(0, b"history two").unwrap());
        assert_ne!(a, b);
        assert_eq!(s.open(0, &a).unwrap(), b"history one");
        assert_eq!(s.open(0, &b).unwrap(), b"history two");
        assert_eq!(s.open(0, &s.seal(0, b"").unwrap()), Ok(Vec::new()));
    }
}
