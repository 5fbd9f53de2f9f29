//! The connection protocol between brokers, and between clients and brokers (SPEC §5).
//!
//! Every TCP connection carries frames: a 4-byte big-endian length, then that many bytes
//! (`tokio_util`'s `LengthDelimitedCodec` default layout), at most [`MAX_FRAME_BYTES`]
//! unless configured otherwise. The first frame is a [`Hello`]; every later frame is a
//! [`Message`](crate::Message) encoded by [`encode_message`](crate::codec::encode_message).
//! Connections are one-way for replicas (a replica dials each peer and only writes on
//! that connection) and two-way for clients (requests in, replies out).

use serde::{Deserialize, Serialize};

use crate::codec::{CodecError, WIRE_VERSION, append_bytes, from_bytes};
use crate::ids::{ClientId, ReplicaId};

/// Default frame size limit: a full batch of `B = 200` maximal requests is about 13 MiB,
/// but batches of small requests are a few KiB; 16 MiB bounds a connection's buffer while
/// admitting any valid batch.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// First frame on a connection: who is speaking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hello {
    /// A peer replica's broker (it will send protocol messages).
    Replica(ReplicaId),
    /// A client (it will send requests and wants replies on this connection).
    Client(ClientId),
}

impl Hello {
    /// Encodes with the version byte.
    pub fn encode(&self) -> Vec<u8> {
        append_bytes(self, vec![WIRE_VERSION])
    }

    /// Decodes a Hello frame.
    pub fn decode(bytes: &[u8]) -> Result<Hello, CodecError> {
        let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
        if version != WIRE_VERSION {
            return Err(CodecError::UnsupportedVersion(version));
        }
        from_bytes(body)
    }
}
