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
        let shared = memo::shared_secret(&self.0.to_bytes(), &peer.0.to_bytes(), || {
            peer.0.to_montgomery().mul_clamped(self.0.to_scalar_bytes()).to_bytes()
        });
        let salt = [DOMAIN, &cluster_id.to_le_bytes()].concat();
        let info = [
            b"mac".as_slice(),
            &client.0.to_le_bytes(),
            &enclave.replica.0.to_le_bytes(),
            &[enclave.kind.index() as u8],
        ]
        .concat();
        let mut okm = [0u8; 32];
        Hkdf::<Sha256>::new(Some(&salt), &shared)
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
        if let Some(key) = memo::public_key(bytes) {
            return Ok(PublicKey(key));
        }
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| CryptoError::InvalidPublicKey)?;
        if key.is_weak() {
            return Err(CryptoError::InvalidPublicKey);
        }
        memo::remember_public_key(bytes, key);
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
        self.verify_under(Rule::Strict, cluster_id, purpose, body, sig)
    }
}

impl PublicKey {
    /// Verifies `sig` over `body` for `purpose` with RFC 8032 §5.1.7's cofactored equation
    /// `[8][s]B = [8]R + [8][k]A`, `k = SHA-512(R || A || M)`, `s` canonical (`s < ℓ`), `R`
    /// a point. ed25519-dalek offers only cofactorless single checks (`verify_strict`), so
    /// the equation is written here with dalek's group operations.
    ///
    /// Against `verify_strict` it also accepts signatures whose `R` has a small-order
    /// component, or is small-order, or is a non-canonical encoding: only the key holder
    /// can make those (each changes `k`, so a third party cannot turn a valid signature
    /// into one), so unforgeability and non-malleability by others are the same. What it
    /// buys: batch verification that agrees with it ([`verify_request_signatures`]).
    pub fn verify_cofactored<T: Serialize>(
        &self,
        cluster_id: u64,
        purpose: Purpose,
        body: &T,
        sig: &Sig,
    ) -> Result<(), CryptoError> {
        self.verify_under(Rule::Cofactored, cluster_id, purpose, body, sig)
    }

    fn verify_under<T: Serialize>(
        &self,
        rule: Rule,
        cluster_id: u64,
        purpose: Purpose,
        body: &T,
        sig: &Sig,
    ) -> Result<(), CryptoError> {
        let bytes = signed_bytes(cluster_id, purpose, body);
        let memo = memo::id(rule, self, &bytes, sig);
        if let Some(known) = memo.and_then(memo::outcome) {
            return known.then_some(()).ok_or(CryptoError::BadSignature);
        }
        let ok = match rule {
            Rule::Strict => self.0.verify_strict(&bytes, &Signature::from_bytes(&sig.0)).is_ok(),
            Rule::Cofactored => cofactored_equation_holds(&self.0, &bytes, sig),
        };
        if let Some(id) = memo {
            memo::remember(id, ok);
        }
        ok.then_some(()).ok_or(CryptoError::BadSignature)
    }
}

/// The equation a signature was checked with. The memo keeps them apart: a signature that
/// holds under the cofactored rule need not pass the strict one.
#[derive(Clone, Copy)]
enum Rule {
    Strict,
    Cofactored,
}

fn cofactored_equation_holds(key: &VerifyingKey, message: &[u8], sig: &Sig) -> bool {
    use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
    use curve25519_dalek::scalar::Scalar;
    use curve25519_dalek::traits::IsIdentity;
    use sha2::{Digest as _, Sha512};
    let mut r_bytes = [0u8; 32];
    r_bytes.copy_from_slice(&sig.0[..32]);
    let mut s_bytes = [0u8; 32];
    s_bytes.copy_from_slice(&sig.0[32..]);
    let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)) else { return false };
    let Some(r) = CompressedEdwardsY(r_bytes).decompress() else { return false };
    let hash: [u8; 64] =
        Sha512::new().chain_update(r_bytes).chain_update(key.as_bytes()).chain_update(message).finalize().into();
    let k = Scalar::from_bytes_mod_order_wide(&hash);
    // [s]B - [k]A - R, times the cofactor.
    let minus_a = -key.to_edwards();
    (EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &minus_a, &s) - r).mul_by_cofactor().is_identity()
}

/// A process-wide memo of signatures that verified, for the simulator only (off unless
/// [`memoize_verifications`] is called). A simulated cluster runs every enclave in one
/// process, so each signature is verified by up to `3n` enclaves; the memo verifies it
/// once per (rule, key, signed bytes, signature) and answers the rest from memory, keyed
/// by SHA-256 over all four: a memo hit is exactly the outcome the check had (it is a
/// pure function of the four; failures are kept too, so a flood of one bad signature
/// costs one check): caching by message, never skipping a check. The same switch
/// memoizes the key work every enclave, client and restart repeats with the simulator's
/// few keys: parsing a public key (only keys that parsed and are not weak are kept) and
/// the X25519 secret behind each MAC key (by its inputs; pure functions, so a hit is the
/// value a computation would give).
mod memo {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use ed25519_dalek::VerifyingKey;
    use sha2::{Digest as _, Sha256};

    use super::{PublicKey, Rule};
    use crate::msg::Sig;

    /// Entries kept before the memo starts over (bounds its memory, ~10 MB).
    const LIMIT: usize = 200_000;

    pub(super) static ON: AtomicBool = AtomicBool::new(false);
    static VERIFIED: Mutex<BTreeMap<[u8; 32], bool>> = Mutex::new(BTreeMap::new());

    pub(super) fn id(rule: Rule, key: &PublicKey, bytes: &[u8], sig: &Sig) -> Option<[u8; 32]> {
        ON.load(Ordering::Relaxed).then(|| {
            let mut h = Sha256::new();
            h.update([rule as u8]);
            h.update(key.0.as_bytes());
            h.update(sig.0);
            h.update(bytes);
            h.finalize().into()
        })
    }

    /// Whether the signature `id` names verified (`Some(true)`), failed (`Some(false)`),
    /// or has not been checked yet.
    pub(super) fn outcome(id: [u8; 32]) -> Option<bool> {
        VERIFIED.lock().ok().and_then(|map| map.get(&id).copied())
    }

    /// Public keys that parsed and are not weak, by their bytes (the simulator parses the
    /// same few keys in every enclave, client and restart).
    static PUBLIC_KEYS: Mutex<BTreeMap<[u8; 32], VerifyingKey>> = Mutex::new(BTreeMap::new());
    /// X25519 shared secrets, by SHA-256 over (own seed, peer key).
    static SHARED: Mutex<BTreeMap<[u8; 32], [u8; 32]>> = Mutex::new(BTreeMap::new());
    /// Keys and shared secrets kept before their memo starts over.
    const KEY_LIMIT: usize = 20_000;

    pub(super) fn public_key(bytes: &[u8; 32]) -> Option<VerifyingKey> {
        if !ON.load(Ordering::Relaxed) {
            return None;
        }
        PUBLIC_KEYS.lock().ok().and_then(|map| map.get(bytes).copied())
    }

    pub(super) fn remember_public_key(bytes: &[u8; 32], key: VerifyingKey) {
        if ON.load(Ordering::Relaxed)
            && let Ok(mut map) = PUBLIC_KEYS.lock()
        {
            if map.len() >= KEY_LIMIT {
                map.clear();
            }
            map.insert(*bytes, key);
        }
    }

    /// The X25519 secret of `seed` and `peer`, computed by `compute` unless remembered.
    pub(super) fn shared_secret(seed: &[u8; 32], peer: &[u8; 32], compute: impl FnOnce() -> [u8; 32]) -> [u8; 32] {
        if !ON.load(Ordering::Relaxed) {
            return compute();
        }
        let id: [u8; 32] = Sha256::new().chain_update(seed).chain_update(peer).finalize().into();
        if let Some(shared) = SHARED.lock().ok().and_then(|map| map.get(&id).copied()) {
            return shared;
        }
        let shared = compute();
        if let Ok(mut map) = SHARED.lock() {
            if map.len() >= KEY_LIMIT {
                map.clear();
            }
            map.insert(id, shared);
        }
        shared
    }

    pub(super) fn remember(id: [u8; 32], verified: bool) {
        if let Ok(mut map) = VERIFIED.lock() {
            if map.len() >= LIMIT {
                map.clear();
            }
            map.insert(id, verified);
        }
    }
}

/// Turns on the process-wide memo of verified signatures and derived keys (the simulator's speed-up; see
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

/// Checks a request's client signature under the client's public key with the cofactored
/// equation (RFC 8032 §5.1.7; see [`PublicKey::verify_cofactored`]): the rule every
/// Preparation enclave decides authenticity by when a MAC fails (SPEC §6), and the one that
/// [`verify_request_signatures`]'s batch check can only under-approximate, never exceed.
pub fn verify_request_signature(key: &PublicKey, cluster_id: u64, req: &Request) -> Result<(), CryptoError> {
    let body = SignedRequest { client: req.client, timestamp: req.timestamp, op: &req.op };
    key.verify_cofactored(cluster_id, Purpose::ClientRequest, &body, &req.sig)
}

/// Most client signatures checked in one batch equation by [`verify_request_signatures`].
/// Per signature a batch of 64 costs about a third of one verification here (PERFORMANCE.md:
/// dalek AVX2 batch ≈ 17 µs against 34 µs single at 8, less at 64); larger batches gain
/// little more, while one bad signature makes the whole batch fall back to single checks.
pub const MAX_SIGNATURE_BATCH: usize = 64;

/// Checks the client signatures of many requests (the primary environment's filter, SPEC
/// §5, §6): `result[i]` is whether `requests[i]` carries a signature by `keys[i]`.
///
/// Chunks of at most [`MAX_SIGNATURE_BATCH`] are checked with ed25519-dalek's batch
/// equation; a chunk that fails is checked one signature at a time, so one bad client costs
/// single verifications for its chunk and never makes another client's request fail.
///
/// Agreement with Preparation's rule ([`verify_request_signature`]): dalek's batch
/// equation is cofactorless with random 128-bit weights `z_i` (derived from a transcript of
/// all inputs). If it holds, each `[s_i]B - R_i - [k_i]A_i` has no prime-order component
/// (except with probability about 2^-128), so it is a small-order point and the cofactored
/// equation holds for every signature: *accepted here ⇒ accepted by every Preparation
/// enclave*. The converse can fail only for a signature whose `R` a key holder built with
/// a small-order component (that `verify_strict` would reject too): dalek's batch accepts
/// it only when the weights happen to cancel the torsion, otherwise the chunk falls back
/// to single checks, which use the cofactored rule and so agree with Preparation exactly.
pub fn verify_request_signatures(cluster_id: u64, keys: &[&PublicKey], requests: &[&Request]) -> Vec<bool> {
    assert_eq!(keys.len(), requests.len(), "one key per request");
    let mut verdicts = Vec::with_capacity(requests.len());
    for (keys, requests) in keys.chunks(MAX_SIGNATURE_BATCH).zip(requests.chunks(MAX_SIGNATURE_BATCH)) {
        let single = |key: &PublicKey, req: &Request| verify_request_signature(key, cluster_id, req).is_ok();
        if requests.len() == 1 || memo::ON.load(std::sync::atomic::Ordering::Relaxed) {
            // One signature gains nothing from a batch; the simulator's memo answers repeats.
            verdicts.extend(keys.iter().zip(requests).map(|(k, r)| single(k, r)));
            continue;
        }
        let messages: Vec<Vec<u8>> = requests
            .iter()
            .map(|r| {
                let body = SignedRequest { client: r.client, timestamp: r.timestamp, op: &r.op };
                signed_bytes(cluster_id, Purpose::ClientRequest, &body)
            })
            .collect();
        let message_refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        let signatures: Vec<Signature> = requests.iter().map(|r| Signature::from_bytes(&r.sig.0)).collect();
        let verifying: Vec<VerifyingKey> = keys.iter().map(|k| k.0).collect();
        if ed25519_dalek::verify_batch(&message_refs, &signatures, &verifying).is_ok() {
            verdicts.extend(std::iter::repeat_n(true, requests.len()));
        } else {
            verdicts.extend(keys.iter().zip(requests).map(|(k, r)| single(k, r)));
        }
    }
    assert_eq!(verdicts.len(), requests.len());
    verdicts
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

    /// A request of client 0 signed by `k` over `(cluster 5, client 0, t, op)`.
    fn signed_request(k: &SecretKey, t: u64) -> Request {
        let op = vec![t as u8; 3];
        Request {
            client: ClientId(0),
            timestamp: t,
            sig: sign_request(k, 5, ClientId(0), t, &op),
            op,
            auth: Vec::new(),
        }
    }

    /// A signature a key holder builds with `R = [r]B + T`, `T` of order `torsion_order`
    /// (2, 4 or 8), and `s = r + k·a`: `verify_strict` rejects it, the cofactored equation
    /// holds. Nobody without the key can build one.
    fn torsion_signed_request(k: &SecretKey, t: u64, torsion_order: u64) -> Request {
        use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
        use curve25519_dalek::scalar::Scalar;
        use sha2::{Digest as _, Sha512};
        let mut req = signed_request(k, t);
        let body = SignedRequest { client: req.client, timestamp: t, op: &req.op };
        let message = signed_bytes(5, Purpose::ClientRequest, &body);
        let r = Scalar::from(1000 + t);
        let torsion = EIGHT_TORSION[(8 / torsion_order) as usize];
        let big_r = (ED25519_BASEPOINT_POINT * r + torsion).compress().to_bytes();
        let hash: [u8; 64] = Sha512::new()
            .chain_update(big_r)
            .chain_update(k.public().to_bytes())
            .chain_update(&message)
            .finalize()
            .into();
        let s = r + Scalar::from_bytes_mod_order_wide(&hash) * k.0.to_scalar();
        req.sig.0[..32].copy_from_slice(&big_r);
        req.sig.0[32..].copy_from_slice(s.as_bytes());
        req
    }

    /// Why Preparation's rule for client signatures is the cofactored equation (SPEC §6):
    /// dalek's batch equation accepts, for some batches, a signature `verify_strict`
    /// rejects. With the strict rule a faulty client could slip such a request past the
    /// primary's batch filter and have correct backups refuse the batch.
    #[test]
    fn batch_verification_can_accept_what_verify_strict_rejects() {
        let k = key(9);
        let bad = torsion_signed_request(&k, 1, 2);
        let body = SignedRequest { client: bad.client, timestamp: 1, op: &bad.op };
        assert_eq!(k.public().verify(5, Purpose::ClientRequest, &body, &bad.sig), Err(CryptoError::BadSignature));
        verify_request_signature(&k.public(), 5, &bad).expect("the cofactored rule accepts it");
        // The batch weights are pseudo-random: an order-2 component cancels for half of them.
        let accepted = (2..40u64).any(|t| {
            let good = signed_request(&k, t);
            let (a, b) = (signed_bytes(5, Purpose::ClientRequest, &body), {
                let body = SignedRequest { client: good.client, timestamp: t, op: &good.op };
                signed_bytes(5, Purpose::ClientRequest, &body)
            });
            let sigs = [Signature::from_bytes(&bad.sig.0), Signature::from_bytes(&good.sig.0)];
            ed25519_dalek::verify_batch(&[&a, &b], &sigs, &[k.public().0, k.public().0]).is_ok()
        });
        assert!(accepted, "no batch accepted the torsion signature");
    }

    /// The simulator's memo of verified signatures keeps the two rules apart: a torsion
    /// signature that passed the cofactored rule is still refused by `verify` (strict).
    /// (Turning the memo on here is harmless to the other tests: hits are exact.)
    #[test]
    fn the_memo_does_not_carry_a_cofactored_verdict_to_the_strict_rule() {
        memoize_verifications();
        let k = key(11);
        let bad = torsion_signed_request(&k, 3, 4);
        let body = SignedRequest { client: bad.client, timestamp: 3, op: &bad.op };
        for _ in 0..2 {
            k.public().verify_cofactored(5, Purpose::ClientRequest, &body, &bad.sig).expect("cofactored holds");
            assert_eq!(k.public().verify(5, Purpose::ClientRequest, &body, &bad.sig), Err(CryptoError::BadSignature));
        }
    }

    /// The filter's verdicts are Preparation's, signature by signature, whatever shares a
    /// batch: good ones, forged ones, key-holder torsion ones, across chunk boundaries.
    #[test]
    fn batch_verdicts_equal_single_verdicts() {
        let (k, other) = (key(9), key(10));
        let mut requests = Vec::new();
        for t in 0..(2 * MAX_SIGNATURE_BATCH as u64 + 5) {
            requests.push(match t % 11 {
                3 => torsion_signed_request(&k, t, [2, 4, 8][(t % 3) as usize]),
                7 => {
                    let mut r = signed_request(&k, t);
                    r.sig.0[40] ^= 1;
                    r
                }
                9 => signed_request(&other, t),
                _ => signed_request(&k, t),
            });
        }
        let public = k.public();
        for len in [1, 2, 11, MAX_SIGNATURE_BATCH, MAX_SIGNATURE_BATCH + 1, requests.len()] {
            let reqs: Vec<&Request> = requests[..len].iter().collect();
            let verdicts = verify_request_signatures(5, &vec![&public; len], &reqs);
            let single: Vec<bool> = reqs.iter().map(|r| verify_request_signature(&public, 5, r).is_ok()).collect();
            assert_eq!(verdicts, single, "{len}");
            assert!(verdicts.iter().any(|v| !v) == (len > 7), "{len}: forged ones are refused");
        }
        // A chunk of only good signatures passes as one batch.
        let good: Vec<Request> = (0..MAX_SIGNATURE_BATCH as u64).map(|t| signed_request(&k, 100 + t)).collect();
        let reqs: Vec<&Request> = good.iter().collect();
        assert!(verify_request_signatures(5, &vec![&public; reqs.len()], &reqs).iter().all(|v| *v));
    }

    /// The cofactored rule refuses what is not a signature by the key: another key's, a
    /// changed message, a non-canonical `s` (`s + ℓ`), an `R` that is not a point.
    #[test]
    fn the_cofactored_rule_refuses_forgeries() {
        use curve25519_dalek::scalar::Scalar;
        let k = key(9);
        let good = signed_request(&k, 1);
        verify_request_signature(&k.public(), 5, &good).unwrap();
        assert!(verify_request_signature(&key(10).public(), 5, &good).is_err());
        assert!(verify_request_signature(&k.public(), 6, &good).is_err());
        let mut changed = good.clone();
        changed.timestamp = 2;
        assert!(verify_request_signature(&k.public(), 5, &changed).is_err());
        // s + ℓ: the same residue, not canonical.
        let mut s_plus_l = good.clone();
        let s = Scalar::from_canonical_bytes(good.sig.0[32..].try_into().unwrap()).unwrap();
        let l_minus_1 = -Scalar::ONE;
        let mut carry = 0u16;
        for (i, (a, b)) in s.as_bytes().iter().zip(l_minus_1.as_bytes()).enumerate() {
            let sum = u16::from(*a) + u16::from(*b) + carry + u16::from(i == 0);
            s_plus_l.sig.0[32 + i] = sum as u8;
            carry = sum >> 8;
        }
        if carry == 0 {
            assert!(verify_request_signature(&k.public(), 5, &s_plus_l).is_err(), "non-canonical s");
        }
        let mut not_a_point = good;
        let y =
            (2u8..).find(|y| curve25519_dalek::edwards::CompressedEdwardsY([*y; 32]).decompress().is_none()).unwrap();
        not_a_point.sig.0[..32].copy_from_slice(&[y; 32]);
        assert!(verify_request_signature(&k.public(), 5, &not_a_point).is_err());
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
