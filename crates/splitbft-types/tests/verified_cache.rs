//! The PBFT baseline's shared verification (SPEC §8): a signature verified by one part of a
//! replica is not verified again by another, and the cache never lets a bad or different
//! message through.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use splitbft_types::cert::{CertError, VerifiedCache, verify_signed};
use splitbft_types::crypto::Purpose;
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::msg::{Digest, Prepare, Signed};
use splitbft_types::{CompartmentKind, ReplicaId};

#[test]
fn one_key_per_replica_and_cached_verification_never_admits_a_forgery() {
    let secrets = ClusterSecrets::generate_one_key_per_replica(3, 1, 1, {
        let mut i = 0u8;
        move || {
            i += 1;
            [i; 32]
        }
    });
    // One key per replica: the configuration lists it for all three parts.
    for keys in &secrets.config.replicas {
        assert_eq!(keys.preparation, keys.confirmation);
        assert_eq!(keys.confirmation, keys.execution);
    }
    assert_ne!(secrets.config.replicas[0].preparation, secrets.config.replicas[1].preparation);
    let mut config = secrets.config.clone();
    config.pbft_shared_verification = Some(Arc::new(VerifiedCache::default()));
    let keys = config.validate().unwrap();
    let body = Prepare { view: 0, seq: 1, digest: Digest::of(b"a"), replica: ReplicaId(2) };
    let key = secrets.enclave(ReplicaId(2), CompartmentKind::Preparation);
    let good = Signed { body, sig: key.sign(config.cluster_id, Purpose::Prepare, &body) };
    assert_eq!(verify_signed(&config, &keys, &good), Ok(ReplicaId(2)));
    assert_eq!(verify_signed(&config, &keys, &good), Ok(ReplicaId(2)), "cached");
    // The cached signature on another body, or a flipped signature, is still checked.
    let other = Signed { body: Prepare { seq: 2, ..body }, sig: good.sig };
    assert_eq!(verify_signed(&config, &keys, &other), Err(CertError::BadSignature(ReplicaId(2))));
    let mut flipped = good;
    flipped.sig.0[5] ^= 1;
    assert_eq!(verify_signed(&config, &keys, &flipped), Err(CertError::BadSignature(ReplicaId(2))));
    assert_eq!(verify_signed(&config, &keys, &flipped), Err(CertError::BadSignature(ReplicaId(2))), "not cached");
}
