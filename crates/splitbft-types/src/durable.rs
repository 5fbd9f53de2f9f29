//! Sealed write-ahead compartment state (SPEC §10), the part every compartment shares.
//!
//! A compartment hands its safety state to the environment as [`SealedState`] records:
//! an [`RecordKind::Image`] (everything, at start and at every stable checkpoint or view
//! change: the compaction point) followed by [`RecordKind::Delta`]s (what changed in one
//! boundary crossing, i.e. one round). The environment must make a record durable before
//! any other output of the same crossing leaves the replica (write-ahead); a restart
//! hands the latest image and the deltas after it back to the compartment's `restore`
//! constructor.
//!
//! Sealing: AES-256-GCM-SIV under a key HKDF-derived from the enclave's own secret key
//! (label [`STATE_SEAL_LABEL`], context enclave id), nonce = the record's index, associated
//! data = domain, cluster, enclave id, [`STATE_VERSION`], kind, epoch and index. GCM-SIV
//! because a host that rolls an enclave back makes it seal a second record under an index
//! it used before: misuse-resistant AEAD keeps that harmless (see `splitbft-execution`'s
//! `seal.rs` for the same argument on ledger blocks).
//!
//! The monotonic counter (SPEC §10 "Monotonic counter") counts this enclave's records made
//! durable: after each group commit the environment advances it to the index of the last
//! durable record plus one. A restore whose records end below the counter is refused as
//! rolled back — an older image with its deltas, or the latest image with deltas cut off
//! its end: either could make a correct enclave forget something it signed. A fresh start
//! continues the index sequence at the counter, so the counter stays meaningful across
//! it. Epoch = the number of images this enclave has sealed (informative, bound by the
//! AEAD); the counter no longer depends on it.

use aws_lc_rs::aead::{self, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};

use crate::crypto::SecretKey;
use crate::ids::EnclaveId;

/// Version of the sealed state layout; bound into every record's associated data.
pub const STATE_VERSION: u8 = 2;
/// HKDF label of the state-sealing key.
pub const STATE_SEAL_LABEL: &[u8] = b"state-seal";
/// First bytes of every record's associated data.
const AAD_DOMAIN: &[u8] = b"splitbft/v1/sealed-state";
/// Bytes the AEAD adds (its tag).
pub const STATE_SEAL_OVERHEAD: usize = 16;
/// Most delta records accepted after one image on restore. A correct compartment writes an
/// image at every stable checkpoint (every `K` batches) and every view change, and at most
/// a handful of deltas per batch, so a million bounds any honest log while stopping a
/// host from making a restore loop without end.
pub const MAX_DELTAS_PER_IMAGE: usize = 1 << 20;

/// Whether a record is a whole image or a change since the previous record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordKind {
    /// All safety state: a restore starts here.
    Image,
    /// What changed in one crossing, applied on top of the image and earlier deltas.
    Delta,
}

/// One sealed state record as the environment stores it. `kind`, `epoch` and `index` are
/// in the clear (the environment needs them to cut segments) and bound by the AEAD.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedState {
    /// Image or delta.
    pub kind: RecordKind,
    /// The monotonic counter value this record is bound to.
    pub epoch: u64,
    /// Position in the enclave's record sequence (strictly increasing, the nonce).
    pub index: u64,
    /// The AEAD ciphertext and tag.
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
}

/// Why a sealed state was refused on restore. The enclave then does not start from it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// No image to start from.
    #[error("the sealed state has no image to start from")]
    NoImage,
    /// A record does not open: another enclave's, altered, or moved.
    #[error("sealed record {index} does not authenticate (another enclave's, altered or moved)")]
    Unauthentic {
        /// The record's index.
        index: u64,
    },
    /// Records are missing between the image and a later delta, or out of order.
    #[error("sealed records are not consecutive: expected index {expected}, found {found}")]
    Gap {
        /// The index expected.
        expected: u64,
        /// The index found.
        found: u64,
    },
    /// The records end below the monotonic counter: the host handed back an old state, or
    /// cut records off its end.
    #[error("sealed state ends at record {end}, below the monotonic counter ({counter}): rolled back or cut short")]
    RolledBack {
        /// The index after the last record handed back.
        end: u64,
        /// The counter's value.
        counter: u64,
    },
    /// A record opened but its contents do not decode or do not fit the configuration.
    #[error("sealed record {index} is malformed: {reason}")]
    Malformed {
        /// The record's index.
        index: u64,
        /// What is wrong.
        reason: String,
    },
    /// More deltas than [`MAX_DELTAS_PER_IMAGE`].
    #[error("more than {MAX_DELTAS_PER_IMAGE} deltas after one image")]
    TooManyDeltas,
}

/// The state-sealing key of one enclave and where its record sequence stands.
pub struct StateSealer {
    key: LessSafeKey,
    cluster_id: u64,
    enclave: EnclaveId,
    /// Epoch of the current image.
    epoch: u64,
    /// Index of the next record.
    next_index: u64,
}

impl RestoreError {
    /// Record `index` opened but its contents are not a state this enclave can adopt.
    pub fn malformed(index: usize, reason: &str) -> Self {
        RestoreError::Malformed { index: index as u64, reason: reason.into() }
    }
}

impl StateSealer {
    /// Derives the key of `enclave` from its secret key. `counter` is the monotonic counter's
    /// value: the records go on from index `counter` (a fresh start after records were made
    /// durable continues their sequence) and the first image is of epoch `counter + 1`.
    pub fn new(secret: &SecretKey, cluster_id: u64, enclave: EnclaveId, counter: u64) -> Self {
        let context = [enclave.replica.0.to_le_bytes().as_slice(), &[enclave.kind.index() as u8]].concat();
        let bytes = secret.derive_private_key(cluster_id, STATE_SEAL_LABEL, &context);
        let key = UnboundKey::new(&aead::AES_256_GCM_SIV, &bytes).expect("HKDF yields the 32 bytes AES-256 takes");
        StateSealer { key: LessSafeKey::new(key), cluster_id, enclave, epoch: counter, next_index: counter }
    }

    /// Seals `plaintext` as the next record of `kind`; an image starts a new epoch.
    pub fn seal(&mut self, kind: RecordKind, plaintext: &[u8]) -> SealedState {
        if kind == RecordKind::Image {
            self.epoch += 1;
        }
        let index = self.next_index;
        self.next_index += 1;
        let mut sealed = Vec::with_capacity(plaintext.len() + STATE_SEAL_OVERHEAD);
        sealed.extend_from_slice(plaintext);
        let aad = self.aad(kind, self.epoch, index);
        self.key
            .seal_in_place_append_tag(nonce(index), Aad::from(&aad[..]), &mut sealed)
            .expect("a compartment's state is far below GCM-SIV's 64 GiB limit");
        SealedState { kind, epoch: self.epoch, index, sealed }
    }

    /// Opens the records of a restore: the first must be an image, the rest deltas with
    /// consecutive indices, and the last must reach `counter` (index `counter - 1` or
    /// later). Returns the plaintexts in order and leaves the sealer ready to continue the
    /// sequence.
    pub fn open_all(&mut self, records: &[SealedState], counter: u64) -> Result<Vec<Vec<u8>>, RestoreError> {
        let (first, rest) = records.split_first().ok_or(RestoreError::NoImage)?;
        if first.kind != RecordKind::Image {
            return Err(RestoreError::NoImage);
        }
        if rest.len() > MAX_DELTAS_PER_IMAGE {
            return Err(RestoreError::TooManyDeltas);
        }
        let mut plain = Vec::with_capacity(records.len());
        for (i, record) in records.iter().enumerate() {
            let expected = first.index.saturating_add(i as u64);
            if record.index != expected || (i > 0 && record.kind != RecordKind::Delta) {
                return Err(RestoreError::Gap { expected, found: record.index });
            }
            plain.push(self.open(record)?);
        }
        // Checked after authentication: indices in the clear are only trusted once the AEAD
        // has bound them.
        let end = first.index.saturating_add(records.len() as u64);
        if end < counter {
            return Err(RestoreError::RolledBack { end, counter });
        }
        self.epoch = first.epoch;
        self.next_index = first.index + records.len() as u64;
        Ok(plain)
    }

    fn open(&self, record: &SealedState) -> Result<Vec<u8>, RestoreError> {
        let unauthentic = RestoreError::Unauthentic { index: record.index };
        if record.sealed.len() < STATE_SEAL_OVERHEAD {
            return Err(unauthentic);
        }
        let mut buf = record.sealed.clone();
        let aad = self.aad(record.kind, record.epoch, record.index);
        let len =
            self.key.open_in_place(nonce(record.index), Aad::from(&aad[..]), &mut buf).map_err(|_| unauthentic)?.len();
        buf.truncate(len);
        Ok(buf)
    }

    /// Epoch of the current image.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn aad(&self, kind: RecordKind, epoch: u64, index: u64) -> Vec<u8> {
        let kind = match kind {
            RecordKind::Image => 0u8,
            RecordKind::Delta => 1u8,
        };
        [
            AAD_DOMAIN,
            &self.cluster_id.to_le_bytes(),
            &self.enclave.replica.0.to_le_bytes(),
            &[self.enclave.kind.index() as u8, STATE_VERSION, kind],
            &epoch.to_le_bytes(),
            &index.to_le_bytes(),
        ]
        .concat()
    }
}

impl std::fmt::Debug for StateSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateSealer({:?}, epoch {}, next {})", self.enclave, self.epoch, self.next_index)
    }
}

fn nonce(index: u64) -> Nonce {
    let mut bytes = [0u8; NONCE_LEN];
    bytes[NONCE_LEN - 8..].copy_from_slice(&index.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CompartmentKind, ReplicaId};

    fn sealer(seed: u8, kind: CompartmentKind, counter: u64) -> StateSealer {
        StateSealer::new(&SecretKey::from_seed([seed; 32]), 7, EnclaveId { replica: ReplicaId(1), kind }, counter)
    }

    #[test]
    fn an_image_and_its_deltas_restore_and_continue_the_sequence() {
        let mut s = sealer(1, CompartmentKind::Preparation, 0);
        let records = vec![
            s.seal(RecordKind::Image, b"image"),
            s.seal(RecordKind::Delta, b"d1"),
            s.seal(RecordKind::Delta, b"d2"),
        ];
        assert_eq!(records[0].epoch, 1);
        let mut r = sealer(1, CompartmentKind::Preparation, 1);
        assert_eq!(r.open_all(&records, 3).unwrap(), vec![b"image".to_vec(), b"d1".to_vec(), b"d2".to_vec()]);
        assert_eq!(r.seal(RecordKind::Delta, b"d3").index, 3);
        assert_eq!(r.seal(RecordKind::Image, b"i2").epoch, 2);
    }

    #[test]
    fn rollback_gaps_tampering_and_other_enclaves_are_refused() {
        let mut s = sealer(1, CompartmentKind::Confirmation, 4);
        let records = vec![
            s.seal(RecordKind::Image, b"image"),
            s.seal(RecordKind::Delta, b"d1"),
            s.seal(RecordKind::Delta, b"d2"),
        ];
        // Counter 4: the records are 4, 5 and 6; all three durable: the counter is 7.
        assert_eq!(records.iter().map(|r| r.index).collect::<Vec<_>>(), vec![4, 5, 6]);
        let fresh = || sealer(1, CompartmentKind::Confirmation, 0);
        assert!(fresh().open_all(&records, 7).is_ok());
        assert_eq!(fresh().open_all(&records, 8), Err(RestoreError::RolledBack { end: 7, counter: 8 }));
        // SPEC §10: deltas cut off the end are a rollback too (the enclave would forget
        // what the cut records say it signed).
        assert_eq!(fresh().open_all(&records[..2], 7), Err(RestoreError::RolledBack { end: 6, counter: 7 }));
        assert_eq!(fresh().open_all(&records[..1], 7), Err(RestoreError::RolledBack { end: 5, counter: 7 }));
        assert_eq!(
            fresh().open_all(&[records[0].clone(), records[2].clone()], 5),
            Err(RestoreError::Gap { expected: 5, found: 6 })
        );
        assert_eq!(fresh().open_all(&records[1..], 0), Err(RestoreError::NoImage));
        assert_eq!(fresh().open_all(&[], 0), Err(RestoreError::NoImage));
        let mut forged_epoch = records.clone();
        forged_epoch[0].epoch = 9;
        assert_eq!(fresh().open_all(&forged_epoch, 6), Err(RestoreError::Unauthentic { index: 4 }));
        let mut flipped = records.clone();
        flipped[1].sealed[0] ^= 1;
        assert_eq!(fresh().open_all(&flipped, 0), Err(RestoreError::Unauthentic { index: 5 }));
        let other_kind = sealer(1, CompartmentKind::Execution, 0).open_all(&records, 0);
        assert_eq!(other_kind, Err(RestoreError::Unauthentic { index: 4 }));
        assert_eq!(
            sealer(2, CompartmentKind::Confirmation, 0).open_all(&records, 0),
            Err(RestoreError::Unauthentic { index: 4 })
        );
    }
}
