//! The wire codec: `postcard` behind a version byte (SPEC §3: versioned, typed,
//! length-delimited; the length prefix is the broker's frame, see `splitbft-broker`).
//!
//! Decoding never panics: anything a peer, client or environment sends becomes either a
//! value or a [`CodecError`].

use serde::{Serialize, de::DeserializeOwned};

use crate::msg::{MESSAGE_KINDS, Message};

/// Version of the message encoding; the first byte of every encoded message.
pub const WIRE_VERSION: u8 = 1;

/// Why bytes did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Zero bytes.
    #[error("empty message")]
    Empty,
    /// The version byte is not [`WIRE_VERSION`].
    #[error("unsupported wire version {0}")]
    UnsupportedVersion(u8),
    /// The kind discriminant names no known message.
    #[error("unknown message kind {0}")]
    UnknownKind(u32),
    /// The body does not decode as its kind.
    #[error("malformed body: {0}")]
    Malformed(postcard::Error),
    /// Bytes left after a complete value.
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
}

/// Encodes an in-memory value. Our types always encode; failure is a programmer error.
pub fn to_bytes<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("postcard encoding of an in-memory value cannot fail")
}

/// Appends the encoding of `value` to `buf`.
pub fn append_bytes<T: Serialize + ?Sized>(value: &T, buf: Vec<u8>) -> Vec<u8> {
    postcard::to_extend(value, buf).expect("postcard encoding of an in-memory value cannot fail")
}

/// Decodes exactly one value, rejecting trailing bytes.
pub fn from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(CodecError::Malformed)?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// Encodes a message with its version byte.
pub fn encode_message(msg: &Message) -> Vec<u8> {
    append_bytes(msg, vec![WIRE_VERSION])
}

/// Offset of the message body in an encoded message: after the version byte and the kind
/// varint (which postcard also accepts in non-canonical, longer forms).
pub fn body_offset(bytes: &[u8]) -> Result<usize, CodecError> {
    let body = bytes.get(1..).ok_or(CodecError::Empty)?;
    let (_, rest) = postcard::take_from_bytes::<u32>(body).map_err(CodecError::Malformed)?;
    Ok(bytes.len() - rest.len())
}

/// The client of an encoded request body (a [`crate::msg::Request`] without the version
/// byte and kind): its first field.
pub fn request_client(body: &[u8]) -> Result<crate::ClientId, CodecError> {
    let (client, _) = postcard::take_from_bytes::<crate::ClientId>(body).map_err(CodecError::Malformed)?;
    Ok(client)
}

/// Decodes a message produced by [`encode_message`].
pub fn decode_message(bytes: &[u8]) -> Result<Message, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != WIRE_VERSION {
        return Err(CodecError::UnsupportedVersion(version));
    }
    let (kind, _) = postcard::take_from_bytes::<u32>(body).map_err(CodecError::Malformed)?;
    if kind >= MESSAGE_KINDS {
        return Err(CodecError::UnknownKind(kind));
    }
    from_bytes(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::*;
    use crate::msg::*;
    use proptest::prelude::*;

    fn digest() -> impl Strategy<Value = Digest> {
        any::<[u8; 32]>().prop_map(Digest)
    }
    fn sig() -> impl Strategy<Value = Sig> {
        (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(a, b)| {
            let mut s = [0u8; 64];
            s[..32].copy_from_slice(&a);
            s[32..].copy_from_slice(&b);
            Sig(s)
        })
    }
    fn request() -> impl Strategy<Value = Request> {
        (
            any::<u32>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..64),
            proptest::collection::vec(any::<[u8; 32]>().prop_map(Mac), 0..5),
            sig(),
        )
            .prop_map(|(c, t, op, auth, sig)| Request { client: ClientId(c), timestamp: t, op, auth, sig })
    }
    fn message() -> impl Strategy<Value = Message> {
        let vsd = || (any::<u64>(), any::<u64>(), digest());
        prop_oneof![
            request().prop_map(Message::Request),
            (vsd(), sig()).prop_map(|((view, seq, digest), sig)| Message::PrePrepare(Signed {
                body: PrePrepare { view, seq, digest },
                sig
            })),
            (vsd(), sig(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(
                |((view, seq, digest), sig, batch)| Message::Batch(BatchMsg {
                    pre_prepare: Signed { body: PrePrepare { view, seq, digest }, sig },
                    batch
                })
            ),
            (vsd(), any::<u32>(), sig()).prop_map(|((view, seq, digest), r, sig)| {
                Message::Prepare(Signed { body: Prepare { view, seq, digest, replica: ReplicaId(r) }, sig })
            }),
            (vsd(), any::<u32>(), sig()).prop_map(|((view, seq, digest), r, sig)| {
                Message::Commit(Signed { body: Commit { view, seq, digest, replica: ReplicaId(r) }, sig })
            }),
            (any::<u64>(), digest(), any::<u32>(), sig()).prop_map(|(seq, state, r, sig)| {
                Message::Checkpoint(Signed { body: Checkpoint { seq, state, replica: ReplicaId(r) }, sig })
            }),
            (
                any::<u64>(),
                any::<u32>(),
                any::<u64>(),
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 0..64),
                any::<[u8; 32]>()
            )
                .prop_map(|(view, c, t, r, result, mac)| Message::Reply(Reply {
                    view,
                    client: ClientId(c),
                    timestamp: t,
                    replica: ReplicaId(r),
                    result,
                    mac: Mac(mac),
                })),
        ]
    }

    proptest! {
        #[test]
        fn message_round_trip(msg in message()) {
            let bytes = encode_message(&msg);
            prop_assert_eq!(decode_message(&bytes), Ok(msg));
        }

        #[test]
        fn truncated_or_extended_messages_are_rejected(msg in message(), extra in 1usize..4) {
            let bytes = encode_message(&msg);
            for cut in 0..bytes.len() {
                prop_assert!(decode_message(&bytes[..cut]).is_err());
            }
            let mut longer = bytes.clone();
            longer.extend(std::iter::repeat_n(0u8, extra));
            prop_assert_eq!(decode_message(&longer), Err(CodecError::TrailingBytes(extra)));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_message(&bytes);
        }
    }

    #[test]
    fn unknown_kind_and_version_are_typed_errors() {
        assert_eq!(decode_message(&[]), Err(CodecError::Empty));
        assert_eq!(decode_message(&[9, 0]), Err(CodecError::UnsupportedVersion(9)));
        assert_eq!(decode_message(&[WIRE_VERSION, MESSAGE_KINDS as u8]), Err(CodecError::UnknownKind(MESSAGE_KINDS)));
        assert!(matches!(decode_message(&[WIRE_VERSION, 0x80]), Err(CodecError::Malformed(_))));
    }
}
