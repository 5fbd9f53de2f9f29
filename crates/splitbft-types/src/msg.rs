//! Protocol messages (SPEC §3).
//!
//! Signed bodies are small fixed-layout structs; the batch of requests travels as opaque
//! bytes beside its PrePrepare header ([`BatchMsg`]). Confirmation works on digests alone;
//! Preparation backups decode the batch, because they decide request validity (SPEC §3
//! note, §4.1 (2)), and Execution decodes it to execute.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::counters::Counter;
use crate::ids::{ClientId, ReplicaId, Seq, Timestamp, View};

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// Short hex prefix for logs.
    pub fn short(&self) -> String {
        self.0[..4].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

/// An Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sig(#[serde(with = "serde_bytes")] pub [u8; 64]);

impl std::fmt::Debug for Sig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sig({:02x}{:02x}..)", self.0[0], self.0[1])
    }
}

/// An HMAC-SHA256 tag.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Mac(pub [u8; 32]);

impl std::fmt::Debug for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mac({:02x}{:02x}..)", self.0[0], self.0[1])
    }
}

/// A client request (SPEC §3). `auth[i]` is the MAC for Preparation(i); `sig` is the
/// client's Ed25519 signature. Both cover `(cluster, client, t, op)`, so nobody can re-time
/// or alter a request, and the signature settles what the MACs disagree on (SPEC §6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Issuing client.
    pub client: ClientId,
    /// Client timestamp; at most once per `(client, timestamp)`.
    pub timestamp: Timestamp,
    /// The operation: an encoded `session::SessionOp` (a Register, or the op sealed under the
    /// client's session key, SPEC §6), opaque to everything but Execution.
    #[serde(with = "serde_bytes")]
    pub op: Vec<u8>,
    /// One MAC per Preparation enclave, indexed by replica.
    pub auth: Vec<Mac>,
    /// The client's signature ([`crate::crypto::Purpose::ClientRequest`]).
    pub sig: Sig,
}

impl Request {
    /// The checks of a request's validity (SPEC §6) that need no key and no state: a client
    /// among `clients`, an op within `max_op_bytes`, one MAC per replica, a timestamp inside
    /// the session nonce space. Preparation refuses what fails them, so every broker applies
    /// them on arrival too: a request no correct primary orders starts no backup's timer.
    pub fn well_formed(&self, config: &crate::config::ProtocolConfig, clients: usize) -> Result<(), Counter> {
        if self.client.0 as usize >= clients {
            return Err(Counter::RequestUnknownClient);
        }
        if self.op.len() > config.max_op_bytes as usize {
            return Err(Counter::RequestOpTooLarge);
        }
        if self.auth.is_empty() {
            return Err(Counter::RequestAuthMissing);
        }
        if self.auth.len() != config.n() {
            return Err(Counter::RequestAuthWrongLength);
        }
        if self.timestamp >= crate::session::MAX_NONCE_TIMESTAMP {
            return Err(Counter::RequestTimestampOutOfRange);
        }
        Ok(())
    }
}

/// A PrePrepare header `(v, s, d)`, signed by Preparation(primary(v)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrePrepare {
    /// View.
    pub view: View,
    /// Sequence number.
    pub seq: Seq,
    /// SHA-256 of the encoded batch.
    pub digest: Digest,
}

/// A Prepare `(v, s, d, i)`, signed by Preparation(i).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepare {
    /// View.
    pub view: View,
    /// Sequence number.
    pub seq: Seq,
    /// Batch digest.
    pub digest: Digest,
    /// Sender.
    pub replica: ReplicaId,
}

/// A Commit `(v, s, d, i)`, signed by Confirmation(i).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// View.
    pub view: View,
    /// Sequence number.
    pub seq: Seq,
    /// Batch digest.
    pub digest: Digest,
    /// Sender.
    pub replica: ReplicaId,
}

/// A Checkpoint `(s, D, i)`, signed by Execution(i).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Last sequence number covered.
    pub seq: Seq,
    /// Digest of the Execution state after executing `seq`.
    pub state: Digest,
    /// Sender.
    pub replica: ReplicaId,
}

/// A body with the signature of the enclave that produced it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed<T> {
    /// The signed body.
    pub body: T,
    /// Ed25519 signature over the domain tag and the canonical body encoding.
    pub sig: Sig,
}

/// A PrePrepare header with its batch of requests (encoded `Vec<Request>`).
///
/// The digest in the header is the SHA-256 of `batch`; whoever receives the bytes checks
/// that, so the batch needs no signature of its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchMsg {
    /// The signed header.
    pub pre_prepare: Signed<PrePrepare>,
    /// `postcard`-encoded `Vec<Request>`.
    #[serde(with = "serde_bytes")]
    pub batch: Vec<u8>,
}

/// An Execution enclave's reply to a client (SPEC §3, §6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// View in which the request executed.
    pub view: View,
    /// Addressee.
    pub client: ClientId,
    /// Timestamp of the answered request.
    pub timestamp: Timestamp,
    /// Replying replica (its Execution enclave).
    pub replica: ReplicaId,
    /// An encoded `session::ReplyBody`: the result sealed under the client's session key
    /// with this replica's nonce, or a refusal (SPEC §6).
    #[serde(with = "serde_bytes")]
    pub result: Vec<u8>,
    /// HMAC under the (client, Execution(replica)) key.
    pub mac: Mac,
}

/// A prepare certificate (SPEC §3): the primary's PrePrepare and `2f` matching Prepares
/// from distinct other Preparation enclaves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedCert {
    /// The PrePrepare of Preparation(primary(v)).
    pub pre_prepare: Signed<PrePrepare>,
    /// `2f` Prepares for the same `(v, s, d)`.
    pub prepares: Vec<Signed<Prepare>>,
}

impl PreparedCert {
    /// The certificate's shape without its signatures (those are checked on receipt,
    /// SPEC §9 L1): `2f` Prepares from distinct backups of `v`, each for the PrePrepare's
    /// `(v, s, d)`. Confirmation asserts it on every certificate it commits on (C2).
    pub fn well_formed(&self, f: u32, primary: crate::ReplicaId) -> bool {
        let pp = self.pre_prepare.body;
        let mut replicas: Vec<_> = self.prepares.iter().map(|p| p.body.replica).collect();
        replicas.sort_unstable();
        replicas.dedup();
        replicas.len() == self.prepares.len()
            && self.prepares.len() == 2 * f as usize
            && !replicas.contains(&primary)
            && self.prepares.iter().all(|p| (p.body.view, p.body.seq, p.body.digest) == (pp.view, pp.seq, pp.digest))
    }
}

/// A checkpoint certificate (SPEC §3): `2f + 1` Checkpoints for `(s, D)`. The genesis
/// checkpoint `(0, D0)` has an empty proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointCert {
    /// Sequence number.
    pub seq: Seq,
    /// State digest.
    pub state: Digest,
    /// The Checkpoints.
    pub proof: Vec<Signed<Checkpoint>>,
}

/// A ViewChange (SPEC §3, §4.2 (5)), signed by Confirmation(replica).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewChange {
    /// The view being moved to.
    pub view: View,
    /// Sender.
    pub replica: ReplicaId,
    /// The sender's stable checkpoint.
    pub stable: CheckpointCert,
    /// For each `s` above the stable checkpoint, the prepare certificate of the highest
    /// view the sender holds, in `s` order.
    pub prepared: Vec<PreparedCert>,
}

/// A NewView (SPEC §3, §4.1 (6)), signed by Preparation(primary(view)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewView {
    /// The new view.
    pub view: View,
    /// `2f + 1` ViewChanges for `view` from distinct Confirmation enclaves.
    pub view_changes: Vec<Signed<ViewChange>>,
    /// The set `O`: one PrePrepare of `view` for every `s` in `(min-s, max-s]`, in order.
    pub pre_prepares: Vec<Signed<PrePrepare>>,
}

/// A chunk of a checkpoint snapshot, served by a peer's environment (SPEC §3, §4.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChunk {
    /// Checkpoint sequence number.
    pub seq: Seq,
    /// Certified state digest of the whole snapshot.
    pub digest: Digest,
    /// Index of this chunk.
    pub index: u32,
    /// Number of chunks.
    pub total: u32,
    /// The bytes.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// Every protocol message (SPEC §3). The variant order is part of the wire format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Client request.
    Request(Request),
    /// PrePrepare header alone (to Preparation and Confirmation).
    PrePrepare(Signed<PrePrepare>),
    /// PrePrepare header with its batch (between replicas, and to Execution).
    Batch(BatchMsg),
    /// Prepare.
    Prepare(Signed<Prepare>),
    /// Commit.
    Commit(Signed<Commit>),
    /// Checkpoint.
    Checkpoint(Signed<Checkpoint>),
    /// Reply to a client.
    Reply(Reply),
    /// ViewChange.
    ViewChange(Signed<ViewChange>),
    /// NewView.
    NewView(Signed<NewView>),
    /// (environment to environment) send me the batch with this digest, if you have it.
    FetchBatch {
        /// Sequence number it was proposed at.
        seq: Seq,
        /// Batch digest.
        digest: Digest,
    },
    /// (environment to environment) send me the snapshot of checkpoint `(seq, digest)`.
    StateRequest {
        /// Checkpoint sequence number.
        seq: Seq,
        /// Certified state digest.
        digest: Digest,
    },
    /// (environment to environment) a piece of a snapshot.
    StateChunk(StateChunk),
    /// (environment to environment) resend me your out-log (after a state transfer).
    ResendOutLog,
    /// A recovering enclave asks every Execution enclave for its checkpoint and view
    /// (SPEC §10 recovery fence).
    RecoveryQuery(crate::recovery::RecoveryQuery),
    /// An Execution enclave's signed answer, for the requester's compartment.
    RecoveryStatement(Signed<crate::recovery::RecoveryStatement>),
}

/// Number of [`Message`] variants; discriminants at or above it are unknown kinds.
pub const MESSAGE_KINDS: u32 = 15;

impl Message {
    /// Short name of the message kind, for logs and counters.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Message::Request(_) => "request",
            Message::PrePrepare(_) => "pre_prepare",
            Message::Batch(_) => "batch",
            Message::Prepare(_) => "prepare",
            Message::Commit(_) => "commit",
            Message::Checkpoint(_) => "checkpoint",
            Message::Reply(_) => "reply",
            Message::ViewChange(_) => "view_change",
            Message::NewView(_) => "new_view",
            Message::FetchBatch { .. } => "fetch_batch",
            Message::StateRequest { .. } => "state_request",
            Message::StateChunk(_) => "state_chunk",
            Message::ResendOutLog => "resend_out_log",
            Message::RecoveryQuery(_) => "recovery_query",
            Message::RecoveryStatement(_) => "recovery_statement",
        }
    }
}
