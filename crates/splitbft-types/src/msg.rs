//! Protocol messages (SPEC §3).
//!
//! Signed bodies are small fixed-layout structs; the batch of requests travels as opaque
//! bytes beside its PrePrepare header ([`BatchMsg`]) so that Preparation backups and
//! Confirmation work on digests alone and only Execution decodes requests (SPEC §3 note,
//! PERFORMANCE.md lesson 7).

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

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

/// A client request (SPEC §3). `auth[i]` is the MAC for Preparation(i) (SPEC §6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Issuing client.
    pub client: ClientId,
    /// Client timestamp; at most once per `(client, timestamp)`.
    pub timestamp: Timestamp,
    /// The operation, opaque to everything but the application (ciphertext once §6 lands).
    #[serde(with = "serde_bytes")]
    pub op: Vec<u8>,
    /// One MAC per Preparation enclave, indexed by replica.
    pub auth: Vec<Mac>,
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
    /// Application result (ciphertext once §6 lands).
    #[serde(with = "serde_bytes")]
    pub result: Vec<u8>,
    /// HMAC under the (client, Execution(replica)) key.
    pub mac: Mac,
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
}

/// Number of [`Message`] variants; discriminants at or above it are unknown kinds.
pub const MESSAGE_KINDS: u32 = 7;

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
        }
    }
}
