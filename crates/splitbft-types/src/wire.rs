//! The connection protocol between brokers, and between clients and brokers (SPEC §5).
//!
//! Every TCP connection starts with the transport handshake (`splitbft-transport`, SPEC
//! §11), whose last message carries a [`Hello`]; after it the connection carries frames of
//! at most [`MAX_FRAME_BYTES`] unless configured otherwise, each sealed in Noise transport
//! messages, each a [`Message`](crate::Message) encoded by
//! [`encode_message`](crate::codec::encode_message).
//! Connections are one-way for replicas (a replica dials each peer and only writes on
//! that connection) and two-way for clients (requests in, replies out).

use serde::{Deserialize, Serialize};

use crate::codec::{CodecError, WIRE_VERSION, append_bytes, from_bytes};
use crate::ids::{ClientId, ReplicaId};

/// Default frame size limit (see [`crate::limits`], where every limit is named).
pub use crate::limits::MAX_FRAME_BYTES;

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
