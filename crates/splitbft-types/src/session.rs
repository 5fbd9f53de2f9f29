//! Client sessions: confidential ops and results (SPEC §6, §4.3 (4)).
//!
//! * A client draws a 32-byte session key `K_c` and registers it with an **ordered**
//!   [`SessionOp::Register`] request: `K_c` sealed with HPKE (RFC 9180, base mode,
//!   X25519-HKDF-SHA256 + AES-256-GCM) to the cluster's Execution group key, with a session
//!   epoch; like every request it carries the client's MACs and signature, checked by the
//!   Preparation enclaves (SPEC §4.1 (2)). Every correct Execution enclave
//!   executes it at the same sequence number, so all learn the same key at the same point
//!   of the order; only a higher epoch replaces a key ([`Sessions::admit`]).
//! * Ops travel as [`SessionOp::Sealed`] (AES-256-GCM under `K_c`) or, with
//!   `confidential = false`, as [`SessionOp::Authenticated`]: the op in clear with a GCM tag
//!   over it as associated data (GMAC under `K_c`). The session key gives confidentiality,
//!   not validity: every Execution enclave holds it, so a faulty one could seal any op;
//!   validity is decided before ordering by Preparation enclaves (SPEC §6). An op that does
//!   not open is a no-op with an error reply, decided alike by every correct Execution
//!   enclave, because they hold the same key.
//! * Results go back as [`ReplyBody::Sealed`] under `K_c`, each Execution enclave with its
//!   own nonce, inside the Reply that still carries the per-(client, enclave) MAC.
//!
//! **Nonces** (96 bits, [`nonce`]) are `client (32 bits) ‖ tag (8 bits) ‖ timestamp (56 bits)`
//! where the tag is `0` for the client's request and `0x80 | replica` for replica's reply.
//! That map is injective on `(client, timestamp < 2^56, direction, replica < 127)`, and a
//! client never uses a timestamp twice, so under one key a nonce never encrypts two
//! different plaintexts: a retransmitted reply re-encrypts the *same* cached result with
//! the same nonce. The session key is bound to one client (the HPKE associated data names
//! it), so a client that copies another's sealed key cannot make Execution reuse it.
//!
//! Nothing here draws randomness: sealing takes the caller's RNG (the client's OS RNG, the
//! simulator's seeded one), opening needs none, so compartments stay deterministic.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};

use crate::codec::{from_bytes, to_bytes};
use crate::config::{Keyring, ProtocolConfig};
use crate::counters::Counter;
use crate::crypto::CryptoError;
use crate::ids::{ClientId, ReplicaId, Timestamp};
use crate::msg::{Digest, Request};

type GroupKem = hpke::kem::X25519HkdfSha256;
type GroupKdf = hpke::kdf::HkdfSha256;
type GroupAead = hpke::aead::AesGcm256;

/// Bytes of a session key `K_c` (AES-256).
pub const SESSION_KEY_BYTES: usize = 32;
/// Bytes of an AES-GCM tag.
pub const TAG_BYTES: usize = 16;
/// Timestamps must stay below this to fit the nonce (56 bits: microseconds since 1970
/// reach it in the year 4253).
pub const MAX_NONCE_TIMESTAMP: Timestamp = 1 << 56;
/// Replica ids must stay below this to fit the nonce's tag byte next to the direction bit.
pub const MAX_NONCE_REPLICAS: u32 = 127;

const SESSION_DOMAIN: &[u8] = b"splitbft/v1/session";
const HPKE_INFO: &[u8] = b"splitbft/v1/register";
const STATE_DOMAIN: &[u8] = b"splitbft/v1/state-at-rest";

/// Why a session operation failed. Inputs from outside never panic: they end here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Timestamp or replica id outside the nonce space.
    #[error("timestamp or replica id outside the nonce space")]
    NonceSpace,
    /// AEAD tag did not verify (wrong key, corrupted or forged bytes).
    #[error("ciphertext does not authenticate")]
    NotAuthentic,
    /// HPKE could not seal or open the session key.
    #[error("session key does not unseal")]
    BadSealedKey,
    /// A group key that is not a valid X25519 key.
    #[error("invalid group key")]
    InvalidGroupKey,
    /// Bytes that do not decode.
    #[error("malformed session bytes")]
    Malformed,
}

/// Which way a session-encrypted payload travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Client to Execution: an op.
    Request,
    /// Execution(replica) to client: a result.
    Reply(ReplicaId),
}

/// The 96-bit AES-GCM nonce of a payload (see the module docs for why it never repeats).
pub fn nonce(client: ClientId, timestamp: Timestamp, direction: Direction) -> Result<[u8; NONCE_LEN], SessionError> {
    if timestamp >= MAX_NONCE_TIMESTAMP {
        return Err(SessionError::NonceSpace);
    }
    let tag = match direction {
        Direction::Request => 0u8,
        Direction::Reply(r) if r.0 < MAX_NONCE_REPLICAS => 0x80 | r.0 as u8,
        Direction::Reply(_) => return Err(SessionError::NonceSpace),
    };
    let mut n = [0u8; NONCE_LEN];
    n[..4].copy_from_slice(&client.0.to_be_bytes());
    n[4..].copy_from_slice(&timestamp.to_be_bytes());
    // The timestamp's top byte is zero (checked above): the tag takes its place.
    n[4] = tag;
    Ok(n)
}

/// Associated data: binds cluster, client, timestamp, direction and session epoch.
fn aad(cluster_id: u64, client: ClientId, timestamp: Timestamp, direction: Direction, epoch: u64) -> Vec<u8> {
    let (dir, replica) = match direction {
        Direction::Request => (0u8, 0u32),
        Direction::Reply(r) => (1u8, r.0),
    };
    let mut a = Vec::with_capacity(SESSION_DOMAIN.len() + 33);
    a.extend_from_slice(SESSION_DOMAIN);
    a.extend_from_slice(&cluster_id.to_le_bytes());
    a.extend_from_slice(&client.0.to_le_bytes());
    a.extend_from_slice(&timestamp.to_le_bytes());
    a.push(dir);
    a.extend_from_slice(&replica.to_le_bytes());
    a.extend_from_slice(&epoch.to_le_bytes());
    a
}

/// A session key `K_c` with its expanded AES-256-GCM key.
pub struct SessionKey {
    bytes: [u8; SESSION_KEY_BYTES],
    aead: LessSafeKey,
}

impl SessionKey {
    /// Builds the key from its 32 bytes.
    pub fn new(bytes: [u8; SESSION_KEY_BYTES]) -> SessionKey {
        let unbound = UnboundKey::new(&AES_256_GCM, &bytes).expect("32 bytes is an AES-256 key");
        SessionKey { bytes, aead: LessSafeKey::new(unbound) }
    }

    /// The raw key (for the checkpointed state, which is itself encrypted at rest).
    pub fn bytes(&self) -> &[u8; SESSION_KEY_BYTES] {
        &self.bytes
    }

    /// Encrypts `plaintext` for `(client, timestamp, direction)` in session `epoch`.
    pub fn seal(
        &self,
        cluster_id: u64,
        client: ClientId,
        timestamp: Timestamp,
        direction: Direction,
        epoch: u64,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SessionError> {
        let n = Nonce::assume_unique_for_key(nonce(client, timestamp, direction)?);
        let mut buf = Vec::with_capacity(plaintext.len() + TAG_BYTES);
        buf.extend_from_slice(plaintext);
        self.aead
            .seal_in_place_append_tag(n, Aad::from(aad(cluster_id, client, timestamp, direction, epoch)), &mut buf)
            .map_err(|_| SessionError::NotAuthentic)?;
        Ok(buf)
    }

    /// Decrypts and authenticates what [`SessionKey::seal`] produced.
    pub fn open(
        &self,
        cluster_id: u64,
        client: ClientId,
        timestamp: Timestamp,
        direction: Direction,
        epoch: u64,
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, SessionError> {
        let n = Nonce::assume_unique_for_key(nonce(client, timestamp, direction)?);
        let mut buf = ciphertext.to_vec();
        let len = self
            .aead
            .open_in_place(n, Aad::from(aad(cluster_id, client, timestamp, direction, epoch)), &mut buf)
            .map_err(|_| SessionError::NotAuthentic)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    /// `confidential = false`: a GCM tag over the op as associated data (GMAC), nothing
    /// encrypted. Same nonce rule as [`SessionKey::seal`].
    pub fn tag(
        &self,
        cluster_id: u64,
        client: ClientId,
        timestamp: Timestamp,
        epoch: u64,
        op: &[u8],
    ) -> Result<[u8; TAG_BYTES], SessionError> {
        let direction = Direction::Request;
        let n = Nonce::assume_unique_for_key(nonce(client, timestamp, direction)?);
        let mut a = aad(cluster_id, client, timestamp, direction, epoch);
        a.extend_from_slice(op);
        let tag =
            self.aead.seal_in_place_separate_tag(n, Aad::from(a), &mut []).map_err(|_| SessionError::NotAuthentic)?;
        let mut out = [0u8; TAG_BYTES];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Checks a tag from [`SessionKey::tag`].
    pub fn verify_tag(
        &self,
        cluster_id: u64,
        client: ClientId,
        timestamp: Timestamp,
        epoch: u64,
        op: &[u8],
        tag: &[u8; TAG_BYTES],
    ) -> Result<(), SessionError> {
        let direction = Direction::Request;
        let n = Nonce::assume_unique_for_key(nonce(client, timestamp, direction)?);
        let mut a = aad(cluster_id, client, timestamp, direction, epoch);
        a.extend_from_slice(op);
        let mut buf = tag.to_vec();
        self.aead.open_in_place(n, Aad::from(a), &mut buf).map_err(|_| SessionError::NotAuthentic)?;
        Ok(())
    }
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

/// The public half of the cluster's Execution group key (X25519), in `cluster.toml`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GroupPublicKey(pub [u8; 32]);

/// The private half of the Execution group key: held by Execution enclaves only.
pub struct GroupSecret {
    bytes: [u8; 32],
    key: <GroupKem as hpke::Kem>::PrivateKey,
    public: GroupPublicKey,
}

impl GroupSecret {
    /// Derives a group key pair from 32 bytes of input keying material (RFC 9180 DeriveKeyPair).
    pub fn derive(ikm: &[u8; 32]) -> GroupSecret {
        let (sk, _) = GroupKem::derive_keypair(ikm);
        GroupSecret::from_bytes(&sk.to_bytes().into()).expect("a derived private key parses")
    }

    /// Parses the 32-byte private key (key files).
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<GroupSecret, SessionError> {
        let key = <GroupKem as hpke::Kem>::PrivateKey::from_bytes(bytes).map_err(|_| SessionError::InvalidGroupKey)?;
        let public = GroupPublicKey(GroupKem::sk_to_pk(&key).to_bytes().into());
        Ok(GroupSecret { bytes: *bytes, key, public })
    }

    /// The 32-byte private key (key files).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.bytes
    }

    /// The public key.
    pub fn public(&self) -> GroupPublicKey {
        self.public
    }

    /// Opens a session key sealed by [`seal_session_key`] for `client` and `epoch`.
    pub fn open_session_key(
        &self,
        cluster_id: u64,
        client: ClientId,
        epoch: u64,
        sealed: &SealedKey,
    ) -> Result<SessionKey, SessionError> {
        let enc =
            <GroupKem as hpke::Kem>::EncappedKey::from_bytes(&sealed.enc).map_err(|_| SessionError::BadSealedKey)?;
        let plain = hpke::single_shot_open::<GroupAead, GroupKdf, GroupKem>(
            &OpModeR::Base,
            &self.key,
            &enc,
            &hpke_info(cluster_id),
            &sealed.ciphertext,
            &register_aad(client, epoch),
        )
        .map_err(|_| SessionError::BadSealedKey)?;
        let bytes: [u8; SESSION_KEY_BYTES] = plain.as_slice().try_into().map_err(|_| SessionError::BadSealedKey)?;
        Ok(SessionKey::new(bytes))
    }

    /// The key that seals checkpoint `(seq, digest)` at rest (SPEC §6 confidentiality of
    /// application state, §4.3 state transfer). One key per checkpoint, from HKDF over the
    /// group secret; `(seq, digest)` names one plaintext (SHA-256 collision resistance), so
    /// the fixed all-zero nonce never encrypts two different plaintexts under one key.
    fn state_key(&self, cluster_id: u64, seq: u64, digest: &Digest) -> LessSafeKey {
        let info = [STATE_DOMAIN, &cluster_id.to_le_bytes(), &seq.to_le_bytes(), &digest.0].concat();
        let mut okm = [0u8; 32];
        hkdf::Hkdf::<sha2::Sha256>::new(Some(STATE_DOMAIN), &self.bytes)
            .expand(&info, &mut okm)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &okm).expect("32 bytes is an AES-256 key"))
    }

    /// Encrypts a snapshot for the environment to store and serve to peers.
    pub fn seal_state(&self, cluster_id: u64, seq: u64, digest: &Digest, plaintext: &[u8]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(plaintext.len() + TAG_BYTES);
        buf.extend_from_slice(plaintext);
        self.state_key(cluster_id, seq, digest)
            .seal_in_place_append_tag(Nonce::assume_unique_for_key([0; NONCE_LEN]), Aad::empty(), &mut buf)
            .expect("AES-GCM seals any snapshot below 64 GiB");
        buf
    }

    /// Decrypts a fetched snapshot; the caller still checks the plaintext's certified digest.
    pub fn open_state(
        &self,
        cluster_id: u64,
        seq: u64,
        digest: &Digest,
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, SessionError> {
        let mut buf = ciphertext.to_vec();
        let len = self
            .state_key(cluster_id, seq, digest)
            .open_in_place(Nonce::assume_unique_for_key([0; NONCE_LEN]), Aad::empty(), &mut buf)
            .map_err(|_| SessionError::NotAuthentic)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

impl std::fmt::Debug for GroupSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GroupSecret(public={:02x}{:02x}..)", self.public.0[0], self.public.0[1])
    }
}

fn hpke_info(cluster_id: u64) -> Vec<u8> {
    [HPKE_INFO, &cluster_id.to_le_bytes()].concat()
}

fn register_aad(client: ClientId, epoch: u64) -> Vec<u8> {
    [&client.0.to_le_bytes()[..], &epoch.to_le_bytes()].concat()
}

/// `K_c` sealed with HPKE to the group key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedKey {
    /// HPKE encapsulated key.
    pub enc: [u8; 32],
    /// AES-256-GCM ciphertext of `K_c` (48 bytes).
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

/// Seals `key` to the group key for `client` and `epoch` (client side; needs an RNG).
pub fn seal_session_key<R: hpke::rand_core::CryptoRng>(
    rng: &mut R,
    group: &GroupPublicKey,
    cluster_id: u64,
    client: ClientId,
    epoch: u64,
    key: &SessionKey,
) -> Result<SealedKey, SessionError> {
    let pk = <GroupKem as hpke::Kem>::PublicKey::from_bytes(&group.0).map_err(|_| SessionError::InvalidGroupKey)?;
    let (enc, ciphertext) = hpke::single_shot_seal_with_rng::<GroupAead, GroupKdf, GroupKem>(
        &OpModeS::Base,
        &pk,
        &hpke_info(cluster_id),
        key.bytes(),
        &register_aad(client, epoch),
        rng,
    )
    .map_err(|_| SessionError::BadSealedKey)?;
    Ok(SealedKey { enc: enc.to_bytes().into(), ciphertext })
}

/// What a Register carries. It has no signature of its own: the Register is an ordinary
/// request, authenticated with its timestamp like every other (SPEC §6; issue 11 finding 2:
/// a signature over this body alone let a faulty primary re-time a pending Register).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterBody {
    /// The registering client (must be the request's client).
    pub client: ClientId,
    /// Session epoch: only a higher one replaces a registered key.
    pub epoch: u64,
    /// `K_c` sealed to the group key.
    pub sealed: SealedKey,
}

/// What a Request's `op` carries (SPEC §6): interpreted by the Execution compartment, not
/// the application.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionOp {
    /// Register a session key (authenticated as a request, SPEC §6).
    Register {
        /// The body.
        body: RegisterBody,
    },
    /// An op encrypted under `K_c` (`confidential = true`).
    Sealed {
        /// Session epoch the op was sealed for.
        epoch: u64,
        /// AES-256-GCM ciphertext and tag.
        #[serde(with = "serde_bytes")]
        ciphertext: Vec<u8>,
    },
    /// An op in clear with a GMAC under `K_c` (`confidential = false`).
    Authenticated {
        /// Session epoch.
        epoch: u64,
        /// The op.
        #[serde(with = "serde_bytes")]
        op: Vec<u8>,
        /// GCM tag with the op as associated data.
        tag: [u8; TAG_BYTES],
    },
}

/// Why Execution refused a request: a no-op with this as its reply (identical on every
/// correct Execution enclave). Refused requests do not consume the client's timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The op is not a session envelope.
    #[error("request is not a session envelope")]
    Malformed,
    /// The client has no registered session.
    #[error("no session registered for this client")]
    NoSession,
    /// Sealed for another epoch than the registered one.
    #[error("op sealed for another session epoch")]
    StaleSession,
    /// The op does not authenticate under the session key.
    #[error("op does not authenticate under the session key")]
    NotAuthentic,
    /// A Register whose epoch is not above the registered one (replayed or stale).
    #[error("register epoch is not above the registered one")]
    StaleEpoch,
    /// A Register for another client or with a key that does not unseal.
    #[error("register does not verify")]
    BadRegister,
    /// An op of the wrong kind for the cluster's confidentiality setting.
    #[error("op does not match the cluster's confidentiality setting")]
    WrongMode,
}

impl Refusal {
    /// Counter name.
    pub fn counter(self) -> Counter {
        match self {
            Refusal::Malformed => Counter::RequestMalformedNoop,
            Refusal::NoSession => Counter::RequestNoSessionNoop,
            Refusal::StaleSession => Counter::RequestStaleSessionNoop,
            Refusal::NotAuthentic => Counter::RequestNotAuthenticNoop,
            Refusal::StaleEpoch => Counter::RegisterStaleEpochNoop,
            Refusal::BadRegister => Counter::RegisterBadNoop,
            Refusal::WrongMode => Counter::RequestWrongModeNoop,
        }
    }

    /// Whether a client must take this as the answer to an *op*. The others can be provoked
    /// by anyone who copies or forges a request (a faulty primary, a hostile environment),
    /// so a client waits on for its genuine request instead. `WrongMode` needs an op that
    /// authenticates under the session key; `NoSession` is the truth for a client that has
    /// none — but while a Register is pending anyone can provoke it for the Register's
    /// timestamp, so a registering client takes no refusal as final.
    pub fn is_final(self) -> bool {
        matches!(self, Refusal::NoSession | Refusal::WrongMode)
    }
}

/// A Reply's `result` field (SPEC §3): the result sealed under `K_c`, or in clear with
/// `confidential = false`, or a session outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplyBody {
    /// The application result in clear (`confidential = false`; inside Execution, the form
    /// results are cached in).
    Plain(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The application result, AES-256-GCM under `K_c` with this replica's nonce.
    Sealed(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The session of this epoch is registered.
    Registered {
        /// Epoch.
        epoch: u64,
    },
    /// The request executed as a no-op.
    Refused(Refusal),
    /// The request executed, but its result has left the cache (the last `W` results and
    /// `REPLY_CACHE_BYTES_PER_CLIENT` bytes per client): the answer to a retransmission of
    /// it, so that the client learns this at once instead of waiting out its deadline.
    /// Never cached itself; sent only for a timestamp the client's window counts as seen:
    /// executed, or below the window, which for a client that keeps at most `W` requests
    /// outstanding (the client library refuses more) means executed or already answered,
    /// so a client still waiting for it learns that it executed.
    Evicted,
}

/// What Execution does with one request ([`Sessions::admit`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Execute this (decrypted, authenticated) op.
    Execute(Vec<u8>),
    /// A session was registered.
    Registered {
        /// Its epoch.
        epoch: u64,
    },
    /// A no-op with this reply; the timestamp stays unused.
    Refused(Refusal),
}

/// One registered session.
#[derive(Debug)]
struct Session {
    epoch: u64,
    key: SessionKey,
}

/// A session as stored in the checkpointed Execution state (encrypted at rest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Epoch.
    pub epoch: u64,
    /// `K_c`.
    pub key: [u8; SESSION_KEY_BYTES],
}

/// The session table of an Execution enclave: one entry per configured client (bounded by
/// the configuration, not by peers). Deterministic: same requests in, same table out.
#[derive(Debug)]
pub struct Sessions {
    sessions: Vec<Option<Session>>,
}

impl Sessions {
    /// No session for any of `clients` clients.
    pub fn new(clients: usize) -> Sessions {
        Sessions { sessions: (0..clients).map(|_| None).collect() }
    }

    /// Decides one request of a committed batch (SPEC §4.3 (4), §6). The caller has checked
    /// that the request's timestamp is unused, and consumes it unless the answer is
    /// [`Admission::Refused`]. `_keys` is no longer read: request authenticity is decided
    /// by the Preparation enclaves (SPEC §6), not here; it stays so callers need not change.
    pub fn admit(
        &mut self,
        config: &ProtocolConfig,
        _keys: &Keyring,
        group: &GroupSecret,
        request: &Request,
    ) -> Admission {
        let client = request.client;
        let Some(slot) = self.sessions.get_mut(client.0 as usize) else {
            return Admission::Refused(Refusal::Malformed);
        };
        let Ok(op) = from_bytes::<SessionOp>(&request.op) else {
            return Admission::Refused(Refusal::Malformed);
        };
        let cluster = config.cluster_id;
        match op {
            SessionOp::Register { body } => {
                // Authenticity was settled by the Preparation enclaves (SPEC §4.1 (2)).
                if body.client != client {
                    return Admission::Refused(Refusal::BadRegister);
                }
                if slot.as_ref().is_some_and(|s| s.epoch >= body.epoch) {
                    return Admission::Refused(Refusal::StaleEpoch);
                }
                match group.open_session_key(cluster, client, body.epoch, &body.sealed) {
                    Ok(key) => {
                        *slot = Some(Session { epoch: body.epoch, key });
                        Admission::Registered { epoch: body.epoch }
                    }
                    Err(_) => Admission::Refused(Refusal::BadRegister),
                }
            }
            SessionOp::Sealed { epoch, ciphertext } => {
                let session = match Self::current(slot, epoch) {
                    Ok(s) => s,
                    Err(r) => return Admission::Refused(r),
                };
                // Authenticity first: only the client can provoke the final WrongMode.
                match session.key.open(cluster, client, request.timestamp, Direction::Request, epoch, &ciphertext) {
                    Ok(_) if !config.confidential => Admission::Refused(Refusal::WrongMode),
                    Ok(op) => Admission::Execute(op),
                    Err(_) => Admission::Refused(Refusal::NotAuthentic),
                }
            }
            SessionOp::Authenticated { epoch, op, tag } => {
                let session = match Self::current(slot, epoch) {
                    Ok(s) => s,
                    Err(r) => return Admission::Refused(r),
                };
                match session.key.verify_tag(cluster, client, request.timestamp, epoch, &op, &tag) {
                    Ok(()) if config.confidential => Admission::Refused(Refusal::WrongMode),
                    Ok(()) => Admission::Execute(op),
                    Err(_) => Admission::Refused(Refusal::NotAuthentic),
                }
            }
        }
    }

    fn current(slot: &Option<Session>, epoch: u64) -> Result<&Session, Refusal> {
        match slot {
            None => Err(Refusal::NoSession),
            Some(s) if s.epoch != epoch => Err(Refusal::StaleSession),
            Some(s) => Ok(s),
        }
    }

    /// Turns a cached result into what goes on the wire for `replica`: sealed under the
    /// client's session key when confidential (SPEC §6), unchanged otherwise.
    pub fn reply_body(
        &self,
        config: &ProtocolConfig,
        client: ClientId,
        timestamp: Timestamp,
        replica: ReplicaId,
        cached: ReplyBody,
    ) -> ReplyBody {
        let ReplyBody::Plain(result) = cached else { return cached };
        if !config.confidential {
            return ReplyBody::Plain(result);
        }
        let Some(Some(session)) = self.sessions.get(client.0 as usize) else {
            return ReplyBody::Refused(Refusal::NoSession);
        };
        match session.key.seal(config.cluster_id, client, timestamp, Direction::Reply(replica), session.epoch, &result)
        {
            Ok(ct) => ReplyBody::Sealed(ct),
            // Timestamps beyond the nonce space are refused at admission; a cached result
            // always has a valid nonce.
            Err(_) => ReplyBody::Refused(Refusal::NotAuthentic),
        }
    }

    /// The table as checkpointed state.
    pub fn records(&self) -> Vec<Option<SessionRecord>> {
        self.sessions.iter().map(|s| s.as_ref().map(|s| SessionRecord { epoch: s.epoch, key: s.key.bytes })).collect()
    }

    /// Rebuilds the table from checkpointed state.
    pub fn from_records(records: &[Option<SessionRecord>]) -> Sessions {
        Sessions {
            sessions: records
                .iter()
                .map(|r| r.as_ref().map(|r| Session { epoch: r.epoch, key: SessionKey::new(r.key) }))
                .collect(),
        }
    }

    /// Installs a session directly, bypassing the ordered Register: only for fixtures that
    /// need registered clients without spending sequence numbers (the Execution crate
    /// exposes it behind its `test-support` feature). Returns false for an unknown client.
    pub fn install(&mut self, client: ClientId, epoch: u64, key: [u8; SESSION_KEY_BYTES]) -> bool {
        match self.sessions.get_mut(client.0 as usize) {
            Some(slot) => {
                *slot = Some(Session { epoch, key: SessionKey::new(key) });
                true
            }
            None => false,
        }
    }

    /// Registered epoch of `client`.
    pub fn epoch(&self, client: ClientId) -> Option<u64> {
        self.sessions.get(client.0 as usize).and_then(|s| s.as_ref().map(|s| s.epoch))
    }
}

/// What a client learns from one reply body, after decryption: what it votes on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Opened {
    /// The application result, in clear.
    Result(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Session registered.
    Registered {
        /// Its epoch.
        epoch: u64,
    },
    /// The request was a no-op.
    Refused(Refusal),
    /// The request executed, but its result is no longer cached ([`ReplyBody::Evicted`]).
    Evicted,
}

/// A client's side of its session: seals ops and opens results.
#[derive(Debug)]
pub struct ClientSession {
    cluster_id: u64,
    client: ClientId,
    epoch: u64,
    key: SessionKey,
    confidential: bool,
}

impl ClientSession {
    /// A client's view of a session registered by other means (fixtures; see
    /// [`Sessions::install`]).
    pub fn installed(config: &ProtocolConfig, client: ClientId, epoch: u64, key: [u8; SESSION_KEY_BYTES]) -> Self {
        ClientSession {
            cluster_id: config.cluster_id,
            client,
            epoch,
            key: SessionKey::new(key),
            confidential: config.confidential,
        }
    }

    /// A new session with `key` for `epoch`, and the Register op (a [`SessionOp`] encoding)
    /// that installs it. `rng` is used for HPKE's ephemeral key only.
    pub fn register<R: hpke::rand_core::CryptoRng>(
        rng: &mut R,
        config: &ProtocolConfig,
        client: ClientId,
        epoch: u64,
        key: [u8; SESSION_KEY_BYTES],
    ) -> Result<(ClientSession, Vec<u8>), SessionError> {
        let key = SessionKey::new(key);
        let sealed = seal_session_key(rng, &config.execution_group_key, config.cluster_id, client, epoch, &key)?;
        let op = to_bytes(&SessionOp::Register { body: RegisterBody { client, epoch, sealed } });
        let session =
            ClientSession { cluster_id: config.cluster_id, client, epoch, key, confidential: config.confidential };
        Ok((session, op))
    }

    /// The session epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Wraps `op` for timestamp `timestamp`: sealed, or tagged when not confidential.
    pub fn seal_op(&self, timestamp: Timestamp, op: &[u8]) -> Result<Vec<u8>, SessionError> {
        let (c, t, e) = (self.client, timestamp, self.epoch);
        let envelope = if self.confidential {
            let ciphertext = self.key.seal(self.cluster_id, c, t, Direction::Request, e, op)?;
            SessionOp::Sealed { epoch: e, ciphertext }
        } else {
            let tag = self.key.tag(self.cluster_id, c, t, e, op)?;
            SessionOp::Authenticated { epoch: e, op: op.to_vec(), tag }
        };
        Ok(to_bytes(&envelope))
    }

    /// Opens the `result` of a reply (whose MAC the caller checked) from `replica`.
    pub fn open_reply(&self, timestamp: Timestamp, replica: ReplicaId, result: &[u8]) -> Result<Opened, SessionError> {
        open_reply_body(Some(self), self.client, timestamp, replica, result)
    }
}

/// Opens a reply body; `session` may be absent (a client that has not registered yet can
/// still read [`ReplyBody::Registered`] and [`ReplyBody::Refused`]).
pub fn open_reply_body(
    session: Option<&ClientSession>,
    client: ClientId,
    timestamp: Timestamp,
    replica: ReplicaId,
    result: &[u8],
) -> Result<Opened, SessionError> {
    match from_bytes::<ReplyBody>(result).map_err(|_| SessionError::Malformed)? {
        ReplyBody::Plain(r) if session.is_none_or(|s| !s.confidential) => Ok(Opened::Result(r)),
        // A confidential client never accepts a result in clear.
        ReplyBody::Plain(_) => Err(SessionError::NotAuthentic),
        ReplyBody::Sealed(ct) => {
            let s = session.ok_or(SessionError::NotAuthentic)?;
            let r = s.key.open(s.cluster_id, client, timestamp, Direction::Reply(replica), s.epoch, &ct)?;
            Ok(Opened::Result(r))
        }
        ReplyBody::Registered { epoch } => Ok(Opened::Registered { epoch }),
        ReplyBody::Refused(r) => Ok(Opened::Refused(r)),
        ReplyBody::Evicted => Ok(Opened::Evicted),
    }
}

impl From<CryptoError> for SessionError {
    fn from(_: CryptoError) -> Self {
        SessionError::NotAuthentic
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> SessionKey {
        SessionKey::new([7; 32])
    }

    #[test]
    fn seal_open_round_trip_and_binding() {
        let k = key();
        let c = ClientId(3);
        let ct = k.seal(1, c, 10, Direction::Request, 5, b"put x").unwrap();
        assert_eq!(k.open(1, c, 10, Direction::Request, 5, &ct).unwrap(), b"put x");
        for (cl, client, t, d, e) in [
            (2, c, 10, Direction::Request, 5),
            (1, ClientId(4), 10, Direction::Request, 5),
            (1, c, 11, Direction::Request, 5),
            (1, c, 10, Direction::Reply(ReplicaId(0)), 5),
            (1, c, 10, Direction::Request, 6),
        ] {
            assert_eq!(k.open(cl, client, t, d, e, &ct), Err(SessionError::NotAuthentic));
        }
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert_eq!(k.open(1, c, 10, Direction::Request, 5, &bad), Err(SessionError::NotAuthentic));
        assert_eq!(k.open(1, c, 10, Direction::Request, 5, &ct[..3]), Err(SessionError::NotAuthentic));
        assert!(!ct.windows(5).any(|w| w == b"put x"));
    }

    #[test]
    fn tags_authenticate_the_op() {
        let k = key();
        let tag = k.tag(1, ClientId(0), 9, 1, b"op").unwrap();
        k.verify_tag(1, ClientId(0), 9, 1, b"op", &tag).unwrap();
        assert!(k.verify_tag(1, ClientId(0), 9, 1, b"oq", &tag).is_err());
        assert!(k.verify_tag(1, ClientId(0), 10, 1, b"op", &tag).is_err());
    }

    #[test]
    fn nonce_space_limits_are_typed_errors() {
        assert_eq!(nonce(ClientId(0), MAX_NONCE_TIMESTAMP, Direction::Request), Err(SessionError::NonceSpace));
        assert_eq!(
            nonce(ClientId(0), 1, Direction::Reply(ReplicaId(MAX_NONCE_REPLICAS))),
            Err(SessionError::NonceSpace)
        );
        assert!(nonce(ClientId(u32::MAX), MAX_NONCE_TIMESTAMP - 1, Direction::Reply(ReplicaId(126))).is_ok());
    }

    #[test]
    fn hpke_seals_to_the_group_and_binds_client_and_epoch() {
        let group = GroupSecret::derive(&[9; 32]);
        let mut rng = <rand_chacha::ChaCha20Rng as rand_chacha::rand_core::SeedableRng>::seed_from_u64(1);
        let k = key();
        let sealed = seal_session_key(&mut rng, &group.public(), 4, ClientId(2), 7, &k).unwrap();
        assert_eq!(group.open_session_key(4, ClientId(2), 7, &sealed).unwrap().bytes(), k.bytes());
        assert_eq!(group.open_session_key(4, ClientId(3), 7, &sealed).unwrap_err(), SessionError::BadSealedKey);
        assert_eq!(group.open_session_key(4, ClientId(2), 8, &sealed).unwrap_err(), SessionError::BadSealedKey);
        assert_eq!(group.open_session_key(5, ClientId(2), 7, &sealed).unwrap_err(), SessionError::BadSealedKey);
        let other = GroupSecret::derive(&[8; 32]);
        assert_eq!(other.open_session_key(4, ClientId(2), 7, &sealed).unwrap_err(), SessionError::BadSealedKey);
        let back = GroupSecret::from_bytes(&group.to_bytes()).unwrap();
        assert_eq!(back.public(), group.public());
    }

    #[test]
    fn state_at_rest_round_trips_and_binds_the_checkpoint() {
        let group = GroupSecret::derive(&[1; 32]);
        let d = Digest::of(b"state");
        let ct = group.seal_state(1, 128, &d, b"snapshot bytes");
        assert!(!ct.windows(8).any(|w| w == b"snapshot"));
        assert_eq!(group.open_state(1, 128, &d, &ct).unwrap(), b"snapshot bytes");
        assert!(group.open_state(1, 256, &d, &ct).is_err());
        assert!(group.open_state(1, 128, &Digest::of(b"x"), &ct).is_err());
        assert!(GroupSecret::derive(&[2; 32]).open_state(1, 128, &d, &ct).is_err());
    }

    fn direction() -> impl Strategy<Value = Direction> {
        prop_oneof![Just(Direction::Request), (0..MAX_NONCE_REPLICAS).prop_map(|r| Direction::Reply(ReplicaId(r)))]
    }

    proptest! {
        /// Nonces never repeat across distinct (client, timestamp, direction, replica).
        #[test]
        fn nonces_never_repeat(
            a in (any::<u32>(), 0..MAX_NONCE_TIMESTAMP, direction()),
            b in (any::<u32>(), 0..MAX_NONCE_TIMESTAMP, direction()),
            near in 0u64..4,
        ) {
            // Also probe neighbours: same client, adjacent timestamps, both directions.
            let b2 = (a.0, a.1.saturating_add(near).min(MAX_NONCE_TIMESTAMP - 1), b.2);
            for other in [b, b2] {
                let na = nonce(ClientId(a.0), a.1, a.2).unwrap();
                let nb = nonce(ClientId(other.0), other.1, other.2).unwrap();
                prop_assert_eq!(na == nb, a == other, "{:?} vs {:?}", a, other);
            }
        }
    }
}
