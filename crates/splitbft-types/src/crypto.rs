//! Signatures, MAC keys and MACs (SPEC §3 signing rules, SPEC §6 first bullet).
//!
//! * Every signature covers a domain-separation tag — protocol name, cluster id and
//!   message kind — followed by the canonical (`postcard`) encoding of the body.
//! * MAC keys per (client, enclave) come from X25519 on the Ed25519 keys' Montgomery forms,
//!   stretched with HKDF-SHA256: both sides derive them with no setup round trip.
//! * MACs are HMAC-SHA256 from a pre-keyed state (PERFORMANCE.md lesson 5).
//! * Signing uses aws-lc-rs (8.4 µs against dalek's 17.7 µs here, PERFORMANCE.md);
//!   Ed25519 signatures are deterministic (RFC 8032), so the bytes are the ones dalek would
//!   produce (tested). Verification stays with dalek's `verify_strict`, which is faster
//!   with the AVX-512 IFMA backend and rejects weak keys and non-canonical encodings.

use aws_lc_rs::signature::Ed25519KeyPair;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use hmac::{KeyInit, Mac as _};
use serde::Serialize;
use sha2::Sha256;

use crate::codec::append_bytes;
use crate::ids::{ClientId, EnclaveId};
use crate::msg::{Mac, Reply, Request, Sig};

/// Prefix of every signed or MACed byte string.
const DOMAIN: &[u8] = b"splitbft/v1";

/// What a signature or MAC is for; part of its domain tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Purpose {
    /// PrePrepare header.
    PrePrepare = 1,
    /// Prepare.
    Prepare = 2,
    /// Commit.
    Commit = 3,
    /// Checkpoint.
    Checkpoint = 4,
    /// Client request authenticator entry.
    Request = 5,
    /// Reply MAC.
    Reply = 6,
    /// ViewChange.
    ViewChange = 7,
    /// NewView.
    NewView = 8,
    /// Session registration, signed by the client's long-term key (SPEC §6).
    Register = 9,
    /// Attestation report, signed by the platform key (SPEC §6).
    Attestation = 10,
    /// A client's signature over `(client, t, op)` of a Request (SPEC §6).
    ClientRequest = 11,
    /// A client's proof of identity in a transport handshake (SPEC §11): its signature
    /// over the Noise handshake hash.
    Transport = 12,
    /// A recovery statement, signed by an Execution enclave (SPEC §10 recovery fence).
    RecoveryStatement = 13,
}

/// Why a signature or key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The signature does not verify under the expected key.
    #[error("bad signature")]
    BadSignature,
    /// The MAC does not verify under the expected key.
    #[error("bad MAC")]
    BadMac,
    /// Bytes that are not a valid (non-weak) Ed25519 public key.
    #[error("invalid public key")]
    InvalidPublicKey,
}

/// An enclave's or client's Ed25519 signing key; never leaves its owner.
pub struct SecretKey(SigningKey, Ed25519KeyPair);

impl SecretKey {
    /// Builds the key from its 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> SecretKey {
        let dalek = SigningKey::from_bytes(&seed);
        let fast = Ed25519KeyPair::from_seed_and_public_key(&seed, dalek.verifying_key().as_bytes())
            .expect("a 32-byte seed and the public key derived from it form a valid key pair");
        SecretKey(dalek, fast)
    }

    /// The 32-byte seed (for key files).
    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs `body` for `purpose` in cluster `cluster_id`.
    pub fn sign<T: Serialize>(&self, cluster_id: u64, purpose: Purpose, body: &T) -> Sig {
        let bytes = signed_bytes(cluster_id, purpose, body);
        let mut sig = [0u8; 64];
        sig.copy_from_slice(self.1.sign(&bytes).as_ref());
        Sig(sig)
    }

    /// Derives the MAC key this party shares with `peer` for the (client, enclave) pair.
    pub fn mac_key(&self, peer: &PublicKey, cluster_id: u64, client: ClientId, enclave: EnclaveId) -> MacKey {
        let shared = peer.0.to_montgomery().mul_clamped(self.0.to_scalar_bytes());
        let salt = [DOMAIN, &cluster_id.to_le_bytes()].concat();
        let info = [
            b"mac".as_slice(),
            &client.0.to_le_bytes(),
            &enclave.replica.0.to_le_bytes(),
            &[enclave.kind.index() as u8],
        ]
        .concat();
        let mut okm = [0u8; 32];
        Hkdf::<Sha256>::new(Some(&salt), shared.as_bytes())
            .expand(&info, &mut okm)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        MacKey::new(&okm)
    }

    /// Derives a 32-byte symmetric key that only this key's owner can compute, for `label`
    /// and `context` (HKDF-SHA256 over the seed, salted with the protocol domain and the
    /// cluster id). The Execution enclave seals ledger blocks under one (SPEC §7); an
    /// auditor holding the seed recomputes it. Distinct labels give independent keys, and
    /// none coincides with a MAC key (those come from X25519 shared secrets, label "mac").
    pub fn derive_private_key(&self, cluster_id: u64, label: &[u8], context: &[u8]) -> [u8; 32] {
        let salt = [DOMAIN, &cluster_id.to_le_bytes()].concat();
        // Length-prefix the label so that (label, context) splits never collide.
        let info = [b"private".as_slice(), &(label.len() as u64).to_le_bytes(), label, context].concat();
        let mut okm = [0u8; 32];
        Hkdf::<Sha256>::new(Some(&salt), &self.0.to_bytes())
            .expand(&info, &mut okm)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        okm
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey(public={:?})", self.public())
    }
}

/// A verified-on-load Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parses and checks a public key (rejects invalid and weak points).
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<PublicKey, CryptoError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| CryptoError::InvalidPublicKey)?;
        if key.is_weak() {
            return Err(CryptoError::InvalidPublicKey);
        }
        Ok(PublicKey(key))
    }

    /// The compressed 32-byte form.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Verifies `sig` over `body` for `purpose` (strict: no malleable signatures).
    pub fn verify<T: Serialize>(
        &self,
        cluster_id: u64,
        purpose: Purpose,
        body: &T,
        sig: &Sig,
    ) -> Result<(), CryptoError> {
        let bytes = signed_bytes(cluster_id, purpose, body);
        let memo = memo::id(self, &bytes, sig);
        if memo.is_some_and(memo::verified) {
            return Ok(());
        }
        self.0.verify_strict(&bytes, &Signature::from_bytes(&sig.0)).map_err(|_| CryptoError::BadSignature)?;
        if let Some(id) = memo {
            memo::remember(id);
        }
        Ok(())
    }
}

/// A process-wide memo of signatures that verified, for the simulator only (off unless
/// [`memoize_verifications`] is called). A simulated cluster runs every enclave in one
/// process, so each signature is verified by up to `3n` enclaves; the memo verifies it
/// once per (key, signed bytes, signature) and answers the rest from memory. Only
/// successes are kept, keyed by SHA-256 over all three, so a memo hit is exactly a
/// signature that verified: caching by message, never skipping a check.
mod memo {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use sha2::{Digest as _, Sha256};

    use super::PublicKey;
    use crate::msg::Sig;

    /// Entries kept before the memo starts over (bounds its memory, ~10 MB).
    const LIMIT: usize = 200_000;

    pub(super) static ON: AtomicBool = AtomicBool::new(false);
    static VERIFIED: Mutex<BTreeSet<[u8; 32]>> = Mutex::new(BTreeSet::new());

    pub(super) fn id(key: &PublicKey, bytes: &[u8], sig: &Sig) -> Option<[u8; 32]> {
        ON.load(Ordering::Relaxed).then(|| {
            let mut h = Sha256::new();
            h.update(key.0.as_bytes());
            h.update(sig.0);
            h.update(bytes);
            h.finalize().into()
        })
    }

    pub(super) fn verified(id: [u8; 32]) -> bool {
        VERIFIED.lock().map(|set| set.contains(&id)).unwrap_or(false)
    }

    pub(super) fn remember(id: [u8; 32]) {
        if let Ok(mut set) = VERIFIED.lock() {
            if set.len() >= LIMIT {
                set.clear();
            }
            set.insert(id);
        }
    }
}

/// Turns on the process-wide memo of verified signatures (the simulator's speed-up; see
/// the `memo` module). Never called by replicas, clients or tools.
pub fn memoize_verifications() {
    memo::ON.store(true, std::sync::atomic::Ordering::Relaxed);
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0.to_bytes();
        write!(f, "PublicKey({:02x}{:02x}{:02x}{:02x})", b[0], b[1], b[2], b[3])
    }
}

/// Identifies a (key, signed message, signature) triple, for caches of verified signatures.
pub fn signed_id<T: Serialize>(
    cluster_id: u64,
    purpose: Purpose,
    body: &T,
    sig: &Sig,
    key: &PublicKey,
) -> crate::msg::Digest {
    let mut bytes = signed_bytes(cluster_id, purpose, body);
    bytes.extend_from_slice(&sig.0);
    bytes.extend_from_slice(&key.to_bytes());
    crate::msg::Digest::of(&bytes)
}

fn signed_bytes<T: Serialize>(cluster_id: u64, purpose: Purpose, body: &T) -> Vec<u8> {
    let mut head = Vec::with_capacity(DOMAIN.len() + 9 + 64);
    head.extend_from_slice(DOMAIN);
    head.extend_from_slice(&cluster_id.to_le_bytes());
    head.push(purpose as u8);
    append_bytes(body, head)
}

/// A pre-keyed HMAC-SHA256 state; cloning it is cheaper than re-keying per message.
#[derive(Clone)]
pub struct MacKey(hmac::Hmac<Sha256>);

impl MacKey {
    /// Keys the HMAC state once.
    pub fn new(key: &[u8; 32]) -> MacKey {
        MacKey(<hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length"))
    }

    fn state(&self, purpose: Purpose, parts: &[&[u8]]) -> hmac::Hmac<Sha256> {
        let mut state = self.0.clone();
        state.update(DOMAIN);
        state.update(&[purpose as u8]);
        for part in parts {
            // Length-prefix each part so that different splits never collide.
            state.update(&(part.len() as u64).to_le_bytes());
            state.update(part);
        }
        state
    }

    /// MAC over `parts` for `purpose`.
    pub fn tag(&self, purpose: Purpose, parts: &[&[u8]]) -> Mac {
        Mac(self.state(purpose, parts).finalize().into_bytes().into())
    }

    /// Constant-time check of `mac` over `parts`.
    pub fn verify(&self, purpose: Purpose, parts: &[&[u8]], mac: &Mac) -> Result<(), CryptoError> {
        self.state(purpose, parts).verify_slice(&mac.0).map_err(|_| CryptoError::BadMac)
    }
}

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(..)")
    }
}

/// The MAC a client attaches for one enclave to a request (SPEC §6): covers cluster, client,
/// timestamp and op.
pub fn request_mac(key: &MacKey, cluster_id: u64, req: &Request) -> Mac {
    let [a, b, c] = request_parts(cluster_id, req);
    key.tag(Purpose::Request, &[&a, &b, &c, &req.op])
}

/// Checks one authenticator entry of a request.
pub fn verify_request_mac(key: &MacKey, cluster_id: u64, req: &Request, mac: &Mac) -> Result<(), CryptoError> {
    let [a, b, c] = request_parts(cluster_id, req);
    key.verify(Purpose::Request, &[&a, &b, &c, &req.op], mac)
}

/// What a client signs for a request: the cluster id and purpose come from the domain tag.
#[derive(Serialize)]
struct SignedRequest<'a> {
    client: ClientId,
    timestamp: crate::ids::Timestamp,
    #[serde(with = "serde_bytes")]
    op: &'a [u8],
}

/// The client signature of a request (SPEC §6): over `(cluster, client, t, op)`.
pub fn sign_request(secret: &SecretKey, cluster_id: u64, client: ClientId, timestamp: u64, op: &[u8]) -> Sig {
    secret.sign(cluster_id, Purpose::ClientRequest, &SignedRequest { client, timestamp, op })
}

/// Checks a request's client signature under the client's public key (strict).
pub fn verify_request_signature(key: &PublicKey, cluster_id: u64, req: &Request) -> Result<(), CryptoError> {
    let body = SignedRequest { client: req.client, timestamp: req.timestamp, op: &req.op };
    key.verify(cluster_id, Purpose::ClientRequest, &body, &req.sig)
}

fn request_parts(cluster_id: u64, req: &Request) -> [[u8; 8]; 3] {
    [cluster_id.to_le_bytes(), u64::from(req.client.0).to_le_bytes(), req.timestamp.to_le_bytes()]
}

/// The MAC an Execution enclave puts on a reply: covers every field but the MAC itself.
pub fn reply_mac(key: &MacKey, cluster_id: u64, reply: &Reply) -> Mac {
    let [a, b, c, d, e] = reply_parts(cluster_id, reply);
    key.tag(Purpose::Reply, &[&a, &b, &c, &d, &e, &reply.result])
}

/// Checks a reply's MAC.
pub fn verify_reply_mac(key: &MacKey, cluster_id: u64, reply: &Reply) -> Result<(), CryptoError> {
    let [a, b, c, d, e] = reply_parts(cluster_id, reply);
    key.verify(Purpose::Reply, &[&a, &b, &c, &d, &e, &reply.result], &reply.mac)
}

fn reply_parts(cluster_id: u64, reply: &Reply) -> [[u8; 8]; 5] {
    [
        cluster_id.to_le_bytes(),
        reply.view.to_le_bytes(),
        u64::from(reply.client.0).to_le_bytes(),
        reply.timestamp.to_le_bytes(),
        u64::from(reply.replica.0).to_le_bytes(),
    ]
}

/// A client's pre-keyed MAC states for every Preparation enclave (request authenticators)
/// and every Execution enclave (reply MACs), derived once (SPEC §6).
#[derive(Clone, Debug)]
pub struct ClientKeys {
    secret: std::sync::Arc<SecretKey>,
    cluster_id: u64,
    client: crate::ids::ClientId,
    preparation: Vec<MacKey>,
    execution: Vec<MacKey>,
}

impl ClientKeys {
    /// Derives the keys of `client` with every replica's enclaves.
    pub fn derive(
        secret: &SecretKey,
        config: &crate::config::ProtocolConfig,
        keys: &crate::config::Keyring,
        client: crate::ids::ClientId,
    ) -> Self {
        use crate::ids::{CompartmentKind, ReplicaId};
        let derive = |kind| {
            (0..config.n())
                .map(|i| {
                    let enclave = EnclaveId { replica: ReplicaId(i as u32), kind };
                    let pk = keys.enclave(enclave).expect("replica index below n");
                    secret.mac_key(pk, config.cluster_id, client, enclave)
                })
                .collect()
        };
        ClientKeys {
            secret: std::sync::Arc::new(SecretKey::from_seed(secret.seed())),
            cluster_id: config.cluster_id,
            client,
            preparation: derive(CompartmentKind::Preparation),
            execution: derive(CompartmentKind::Execution),
        }
    }

    /// A request with one authenticator entry per Preparation enclave and the client's
    /// signature (SPEC §6).
    pub fn request(&self, timestamp: crate::ids::Timestamp, op: Vec<u8>) -> Request {
        let sig = sign_request(&self.secret, self.cluster_id, self.client, timestamp, &op);
        let mut req = Request { client: self.client, timestamp, op, auth: Vec::new(), sig };
        req.auth = self.preparation.iter().map(|k| request_mac(k, self.cluster_id, &req)).collect();
        req
    }

    /// Checks a reply's MAC against its claimed replica's Execution key.
    pub fn verify_reply(&self, reply: &Reply) -> Result<(), CryptoError> {
        if reply.client != self.client {
            return Err(CryptoError::BadMac);
        }
        let key = self.execution.get(reply.replica.0 as usize).ok_or(CryptoError::BadMac)?;
        verify_reply_mac(key, self.cluster_id, reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{CompartmentKind, ReplicaId};
    use crate::msg::{Digest, PrePrepare};

    fn key(b: u8) -> SecretKey {
        SecretKey::from_seed([b; 32])
    }

    #[test]
    fn signatures_bind_cluster_purpose_and_body() {
        let k = key(1);
        let body = PrePrepare { view: 0, seq: 1, digest: Digest::of(b"x") };
        let sig = k.sign(7, Purpose::PrePrepare, &body);
        let pk = k.public();
        pk.verify(7, Purpose::PrePrepare, &body, &sig).unwrap();
        assert_eq!(pk.verify(8, Purpose::PrePrepare, &body, &sig), Err(CryptoError::BadSignature));
        assert_eq!(pk.verify(7, Purpose::Prepare, &body, &sig), Err(CryptoError::BadSignature));
        let other = PrePrepare { seq: 2, ..body };
        assert_eq!(pk.verify(7, Purpose::PrePrepare, &other, &sig), Err(CryptoError::BadSignature));
        assert_eq!(key(2).public().verify(7, Purpose::PrePrepare, &body, &sig), Err(CryptoError::BadSignature));
    }

    #[test]
    fn aws_lc_signatures_are_the_rfc8032_bytes_dalek_produces() {
        use ed25519_dalek::Signer as _;
        for seed in 0..16u8 {
            let k = key(seed);
            let body = PrePrepare { view: seed.into(), seq: 3, digest: Digest::of(&[seed]) };
            let ours = k.sign(1, Purpose::Commit, &body);
            let dalek = k.0.sign(&signed_bytes(1, Purpose::Commit, &body)).to_bytes();
            assert_eq!(ours.0, dalek);
        }
    }

    #[test]
    fn both_sides_derive_the_same_mac_key() {
        let client = key(3);
        let enclave = key(4);
        let id = EnclaveId { replica: ReplicaId(2), kind: CompartmentKind::Preparation };
        let a = client.mac_key(&enclave.public(), 9, ClientId(5), id);
        let b = enclave.mac_key(&client.public(), 9, ClientId(5), id);
        let mac = a.tag(Purpose::Request, &[b"hello"]);
        b.verify(Purpose::Request, &[b"hello"], &mac).unwrap();
        assert_eq!(b.verify(Purpose::Request, &[b"hellp"], &mac), Err(CryptoError::BadMac));
        assert_eq!(b.verify(Purpose::Reply, &[b"hello"], &mac), Err(CryptoError::BadMac));
        // A different enclave or client gets a different key.
        let other = EnclaveId { replica: ReplicaId(3), ..id };
        let c = enclave.mac_key(&client.public(), 9, ClientId(5), other);
        assert_eq!(c.verify(Purpose::Request, &[b"hello"], &mac), Err(CryptoError::BadMac));
        // Part boundaries matter.
        assert_ne!(a.tag(Purpose::Request, &[b"ab", b"c"]), a.tag(Purpose::Request, &[b"a", b"bc"]));
    }

    #[test]
    fn private_keys_depend_on_owner_cluster_label_and_context() {
        let k = key(6);
        let base = k.derive_private_key(1, b"ledger-seal", &[0]);
        assert_eq!(base, key(6).derive_private_key(1, b"ledger-seal", &[0]), "deterministic");
        assert_ne!(base, key(7).derive_private_key(1, b"ledger-seal", &[0]));
        assert_ne!(base, k.derive_private_key(2, b"ledger-seal", &[0]));
        assert_ne!(base, k.derive_private_key(1, b"ledger-sea", &[0]));
        assert_ne!(base, k.derive_private_key(1, b"ledger-seal", &[1]));
        assert_ne!(k.derive_private_key(1, b"ab", b"c"), k.derive_private_key(1, b"a", b"bc"));
    }

    #[test]
    fn weak_and_invalid_public_keys_are_refused() {
        // The identity point is weak (small order).
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(PublicKey::from_bytes(&identity), Err(CryptoError::InvalidPublicKey));
        assert!(PublicKey::from_bytes(&key(5).public().to_bytes()).is_ok());
    }
}
