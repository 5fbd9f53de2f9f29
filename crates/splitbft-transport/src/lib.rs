//! Authenticated connections (SPEC §11): every TCP connection to a replica starts with a
//! `Noise_XX_25519_ChaChaPoly_BLAKE2s` handshake, and until it completes the connection can
//! do nothing but finish it or be closed.
//!
//! * The **responder** is always a replica environment. Its static key is its transport key;
//!   the initiator checks it against the key `cluster.toml` lists for the replica it dialed.
//! * A **replica initiator** uses its own transport key as its static key; the responder
//!   accepts its `Hello::Replica(r)` only if the proven static key is replica `r`'s.
//! * A **client initiator** uses a fresh static key and signs the handshake hash (which
//!   binds both ephemeral keys and the responder's static key) with its Ed25519 key, the one
//!   the cluster already knows from request signatures; the responder accepts its
//!   `Hello::Client(c)` only if the signature verifies under client `c`'s key.
//!
//! The introduction (`Hello` and, for clients, the signature) travels encrypted in the third
//! handshake message. Every later frame travels in Noise transport messages ([`Session`],
//! [`FrameEncoder`], [`FrameDecoder`]): encrypted and authenticated with ChaChaPoly under
//! the handshake's keys, with an implicit per-direction nonce, so an on-path attacker can
//! neither read, alter, inject, drop-and-splice nor replay a frame — any of these fails
//! authentication and closes the connection. Protocol messages are still signed end to end
//! by enclaves and client ops sealed under session keys (SPEC §6): the transport protects
//! the environment — reply routes, peer resends, what an authenticated peer may send — not
//! safety.
//!
//! Handshake messages are length-prefixed like every other frame ([`LengthDelimitedCodec`]),
//! but while the handshake runs the decoder accepts at most [`MAX_HANDSHAKE_FRAME`] bytes,
//! so a stranger cannot make a replica buffer a large frame before proving who it is.
//!
//! After the handshake the stream is a sequence of *records*: a 2-byte big-endian length
//! and one Noise transport message (at most [`MAX_NOISE_MESSAGE`] bytes). A frame is
//! carried as the plaintext `u32 length ‖ frame bytes`, cut into as many records as it
//! needs; a record never spans two frames. The length is inside the authenticated
//! plaintext and checked against the frame limit before the frame is buffered.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use splitbft_types::codec::{from_bytes, to_bytes};
use splitbft_types::counters::Counter;
use splitbft_types::crypto::{PublicKey, Purpose, SecretKey};
use splitbft_types::keys::TransportSecret;
use splitbft_types::msg::Sig;
use splitbft_types::wire::Hello;
use splitbft_types::{ClientId, ProtocolConfig, ReplicaId};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Decoder, Encoder, FramedRead, FramedWrite, LengthDelimitedCodec};

/// The Noise protocol every connection runs (SPEC §11).
pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// A connection must finish its handshake within this time or it is closed: long enough
/// for a loaded replica on a WAN, short enough that half-open strangers do not pile up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest handshake message. XX messages are 32, 96 + 16 and 64 + 16 + introduction
/// bytes; an introduction is a hello (≤ 6 bytes) and a signature (64 bytes).
pub const MAX_HANDSHAKE_FRAME: usize = 512;
/// Prologue: both sides must agree on protocol version and cluster.
const PROLOGUE: &[u8] = b"splitbft/v1 transport";

/// Why a handshake failed. The connection is closed; the responder counts the reason.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The socket failed or closed, or a frame exceeded [`MAX_HANDSHAKE_FRAME`].
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection mid-handshake.
    #[error("connection closed during the handshake")]
    Closed,
    /// The handshake did not finish within [`HANDSHAKE_TIMEOUT`].
    #[error("handshake timed out")]
    Timeout,
    /// A message that is not the expected Noise message (wrong key, cluster or bytes).
    #[error("noise: {0}")]
    Noise(#[from] snow::Error),
    /// The replica at the dialed address does not hold that replica's transport key.
    #[error("responder is not the replica the configuration names")]
    WrongResponder,
    /// The introduction does not decode.
    #[error("malformed introduction")]
    BadIntroduction,
    /// `Hello::Replica(r)` for an unknown `r`, or from a static key that is not `r`'s.
    #[error("replica introduction not proven by its transport key")]
    UnprovenReplica,
    /// `Hello::Client(c)` for an unknown `c`, or without a valid signature by `c`'s key.
    #[error("client introduction not proven by its signature")]
    UnprovenClient,
}

impl HandshakeError {
    /// A counter name for the failure (the responder counts every refused connection).
    pub fn counter(&self) -> Counter {
        match self {
            HandshakeError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => Counter::HandshakeFramesOversize,
            HandshakeError::Io(_) | HandshakeError::Closed => Counter::HandshakeConnectionErrors,
            HandshakeError::Timeout => Counter::HandshakeTimeouts,
            HandshakeError::Noise(_) => Counter::HandshakeNoiseErrors,
            HandshakeError::WrongResponder => Counter::HandshakeWrongResponder,
            HandshakeError::BadIntroduction => Counter::HandshakeBadIntroductions,
            HandshakeError::UnprovenReplica => Counter::HandshakeUnprovenReplicas,
            HandshakeError::UnprovenClient => Counter::HandshakeUnprovenClients,
        }
    }
}

/// Who the initiator claims to be, with what proves it.
pub enum Identity<'a> {
    /// A replica environment and its transport secret.
    Replica(ReplicaId, &'a TransportSecret),
    /// A client and its Ed25519 key.
    Client(ClientId, &'a SecretKey),
}

/// The third handshake message's payload.
#[derive(Serialize, Deserialize)]
struct Introduction {
    hello: Hello,
    /// A client's signature over (client, handshake hash after message 2).
    proof: Option<Sig>,
}

/// What a client signs.
#[derive(Serialize)]
struct ClientProof<'a> {
    client: ClientId,
    handshake_hash: &'a [u8],
}

fn prologue(cluster_id: u64) -> Vec<u8> {
    [PROLOGUE, &cluster_id.to_le_bytes()].concat()
}

mod cipher;

fn params() -> snow::params::NoiseParams {
    NOISE_PARAMS.parse().expect("NOISE_PARAMS is a valid Noise protocol name")
}

async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut FramedRead<R, LengthDelimitedCodec>,
) -> Result<bytes::BytesMut, HandshakeError> {
    match reader.next().await {
        Some(Ok(frame)) => Ok(frame),
        Some(Err(e)) => Err(HandshakeError::Io(e)),
        None => Err(HandshakeError::Closed),
    }
}

/// Runs `handshake` with the decoder limited to [`MAX_HANDSHAKE_FRAME`] and the whole
/// exchange limited to [`HANDSHAKE_TIMEOUT`]; restores the decoder's limit afterwards.
async fn bounded<R, T>(
    reader: &mut FramedRead<R, LengthDelimitedCodec>,
    handshake: impl AsyncFnOnce(&mut FramedRead<R, LengthDelimitedCodec>) -> Result<T, HandshakeError>,
) -> Result<T, HandshakeError> {
    let limit = reader.decoder().max_frame_length();
    reader.decoder_mut().set_max_frame_length(MAX_HANDSHAKE_FRAME);
    let result = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(reader)).await {
        Ok(result) => result,
        Err(_) => Err(HandshakeError::Timeout),
    };
    reader.decoder_mut().set_max_frame_length(limit);
    result
}

/// The initiator's side: proves `me` to the replica holding transport key `responder`, and
/// returns the session that protects the frames that follow. `cluster_id` enters the
/// prologue, so a handshake across clusters fails.
pub async fn initiate<R, W>(
    reader: &mut FramedRead<R, LengthDelimitedCodec>,
    writer: &mut FramedWrite<W, LengthDelimitedCodec>,
    cluster_id: u64,
    responder: &[u8; 32],
    me: Identity<'_>,
) -> Result<Session, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    bounded(reader, async |reader| {
        let prologue = prologue(cluster_id);
        let builder = snow::Builder::with_resolver(params(), cipher::resolver());
        // A client's static key only keeps XX's shape; its identity is the signature.
        let fresh;
        let local: &[u8] = match &me {
            Identity::Replica(_, secret) => secret.as_bytes(),
            Identity::Client(..) => {
                fresh = builder.generate_keypair()?;
                &fresh.private
            }
        };
        let mut noise = builder.local_private_key(local)?.prologue(&prologue)?.build_initiator()?;
        let mut buf = [0u8; MAX_HANDSHAKE_FRAME];
        // -> e
        let len = noise.write_message(&[], &mut buf)?;
        writer.send(Bytes::copy_from_slice(&buf[..len])).await?;
        // <- e, ee, s, es
        let message = read_message(reader).await?;
        noise.read_message(&message, &mut buf)?;
        if noise.get_remote_static() != Some(responder.as_slice()) {
            return Err(HandshakeError::WrongResponder);
        }
        // -> s, se, introduction
        let introduction = match me {
            Identity::Replica(r, _) => Introduction { hello: Hello::Replica(r), proof: None },
            Identity::Client(c, key) => {
                let proof = ClientProof { client: c, handshake_hash: noise.get_handshake_hash() };
                Introduction { hello: Hello::Client(c), proof: Some(key.sign(cluster_id, Purpose::Transport, &proof)) }
            }
        };
        let len = noise.write_message(&to_bytes(&introduction), &mut buf)?;
        writer.send(Bytes::copy_from_slice(&buf[..len])).await?;
        Session::new(noise)
    })
    .await
}

/// The responder's (a replica's) side: runs the handshake with its transport secret `me`
/// and returns the hello the initiator proved, with the session that protects the frames
/// that follow. Any other outcome closes the connection.
pub async fn respond<R, W>(
    reader: &mut FramedRead<R, LengthDelimitedCodec>,
    writer: &mut FramedWrite<W, LengthDelimitedCodec>,
    config: &ProtocolConfig,
    me: &TransportSecret,
) -> Result<(Hello, Session), HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    bounded(reader, async |reader| {
        let prologue = prologue(config.cluster_id);
        let mut noise = snow::Builder::with_resolver(params(), cipher::resolver())
            .local_private_key(me.as_bytes())?
            .prologue(&prologue)?
            .build_responder()?;
        let mut buf = [0u8; MAX_HANDSHAKE_FRAME];
        // -> e
        let message = read_message(reader).await?;
        noise.read_message(&message, &mut buf)?;
        // <- e, ee, s, es
        let len = noise.write_message(&[], &mut buf)?;
        writer.send(Bytes::copy_from_slice(&buf[..len])).await?;
        let hash = noise.get_handshake_hash().to_vec();
        // -> s, se, introduction
        let message = read_message(reader).await?;
        let len = noise.read_message(&message, &mut buf)?;
        let introduction: Introduction = from_bytes(&buf[..len]).map_err(|_| HandshakeError::BadIntroduction)?;
        match introduction.hello {
            Hello::Replica(r) => {
                let expected = config.transport_keys.get(r.0 as usize).ok_or(HandshakeError::UnprovenReplica)?;
                if noise.get_remote_static() != Some(expected.as_slice()) || introduction.proof.is_some() {
                    return Err(HandshakeError::UnprovenReplica);
                }
            }
            Hello::Client(c) => {
                let key = config.clients.get(c.0 as usize).ok_or(HandshakeError::UnprovenClient)?;
                let key = PublicKey::from_bytes(key).map_err(|_| HandshakeError::UnprovenClient)?;
                let proof = ClientProof { client: c, handshake_hash: &hash };
                let sig = introduction.proof.ok_or(HandshakeError::UnprovenClient)?;
                key.verify(config.cluster_id, Purpose::Transport, &proof, &sig)
                    .map_err(|_| HandshakeError::UnprovenClient)?;
            }
        }
        Ok((introduction.hello, Session::new(noise)?))
    })
    .await
}

/// Largest Noise message (Noise specification §3): a record's ciphertext.
pub const MAX_NOISE_MESSAGE: usize = 65535;
/// ChaChaPoly's authentication tag.
const TAG_BYTES: usize = 16;
/// Plaintext carried by one full record.
pub const MAX_RECORD_PLAINTEXT: usize = MAX_NOISE_MESSAGE - TAG_BYTES;
/// A record's length prefix.
const RECORD_HEADER: usize = 2;
/// A frame's length inside its first record's plaintext.
const FRAME_HEADER: usize = 4;

/// Why a protected connection stopped. The connection is closed; the reader counts it.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The socket failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// A frame longer than the connection's frame limit, announced or offered.
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    Oversize {
        /// The frame's length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A record that does not authenticate under the session's key and the next nonce:
    /// altered, injected, replayed, reordered or cut by someone on the path.
    #[error("record does not authenticate")]
    Unauthenticated,
    /// An authenticated record that breaks the framing (a first record without the whole
    /// frame length, or one that runs past its frame): a faulty peer, not the path.
    #[error("record breaks the framing")]
    BadRecord,
    /// 2^64 − 1 records in one direction: the nonce would repeat.
    #[error("nonces exhausted")]
    Exhausted,
}

impl FrameError {
    /// The counter a reader bumps when a connection ends with this error.
    pub fn counter(&self) -> Counter {
        match self {
            FrameError::Io(_) => Counter::ConnectionErrors,
            FrameError::Oversize { .. } => Counter::FramesOversize,
            FrameError::Unauthenticated => Counter::FramesUnauthenticated,
            FrameError::BadRecord | FrameError::Exhausted => Counter::FramesBadRecords,
        }
    }
}

/// The keys a finished handshake agreed on: one ChaChaPoly key per direction. Stateless in
/// snow's sense (each side keeps its own nonce), so the read and the write half of a
/// connection each hold a copy and need no lock.
#[derive(Clone)]
pub struct Session {
    state: Arc<snow::StatelessTransportState>,
}

/// A connection's read half after the handshake.
pub type SecureRead<R> = FramedRead<R, FrameDecoder>;
/// A connection's write half after the handshake.
pub type SecureWrite<W> = FramedWrite<W, FrameEncoder>;

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session { .. }")
    }
}

impl Session {
    fn new(handshake: snow::HandshakeState) -> Result<Session, HandshakeError> {
        Ok(Session { state: Arc::new(handshake.into_stateless_transport_mode()?) })
    }

    /// The encoder of this side's outgoing frames, each at most `max_frame` bytes.
    pub fn encoder(&self, max_frame: usize) -> FrameEncoder {
        FrameEncoder { state: Arc::clone(&self.state), nonce: 0, max_frame, plaintext: Vec::new() }
    }

    /// The decoder of the other side's frames, each at most `max_frame` bytes.
    pub fn decoder(&self, max_frame: usize) -> FrameDecoder {
        FrameDecoder {
            state: Arc::clone(&self.state),
            nonce: 0,
            max_frame,
            plaintext: vec![0; MAX_NOISE_MESSAGE],
            frame: BytesMut::new(),
            expected: None,
        }
    }

    /// Turns the handshake's framed halves into protected ones. The read buffer is kept:
    /// records the initiator sent right after its last handshake message may be in it.
    pub fn secure<R, W>(
        &self,
        reader: FramedRead<R, LengthDelimitedCodec>,
        writer: FramedWrite<W, LengthDelimitedCodec>,
        max_frame: usize,
    ) -> (SecureRead<R>, SecureWrite<W>) {
        (reader.map_decoder(|_| self.decoder(max_frame)), writer.map_encoder(|_| self.encoder(max_frame)))
    }
}

/// Seals frames into records (see the module documentation for the layout).
pub struct FrameEncoder {
    state: Arc<snow::StatelessTransportState>,
    /// The next record's nonce: records are numbered from 0 in each direction.
    nonce: u64,
    max_frame: usize,
    /// Scratch for one record's plaintext.
    plaintext: Vec<u8>,
}

impl Encoder<Bytes> for FrameEncoder {
    type Error = FrameError;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        if frame.len() > self.max_frame || frame.len() > u32::MAX as usize {
            return Err(FrameError::Oversize { len: frame.len(), limit: self.max_frame });
        }
        let records = (FRAME_HEADER + frame.len()).div_ceil(MAX_RECORD_PLAINTEXT);
        dst.reserve(FRAME_HEADER + frame.len() + records * (RECORD_HEADER + TAG_BYTES));
        let mut rest = &frame[..];
        let mut first = true;
        while first || !rest.is_empty() {
            self.plaintext.clear();
            if first {
                self.plaintext.extend_from_slice(&(frame.len() as u32).to_be_bytes());
                first = false;
            }
            let take = rest.len().min(MAX_RECORD_PLAINTEXT - self.plaintext.len());
            self.plaintext.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            self.seal_record(dst)?;
        }
        Ok(())
    }
}

impl FrameEncoder {
    /// Seals the plaintext scratch as one record under the next nonce, onto `dst`.
    fn seal_record(&mut self, dst: &mut BytesMut) -> Result<(), FrameError> {
        let sealed = self.plaintext.len() + TAG_BYTES;
        assert!(sealed <= MAX_NOISE_MESSAGE, "a record's plaintext is at most MAX_RECORD_PLAINTEXT bytes");
        dst.put_u16(sealed as u16);
        let start = dst.len();
        dst.resize(start + sealed, 0);
        let written = self
            .state
            .write_message(self.nonce, &self.plaintext, &mut dst[start..])
            .map_err(|_| FrameError::Exhausted)?;
        assert_eq!(written, sealed, "ChaChaPoly adds exactly one tag");
        self.nonce += 1;
        Ok(())
    }

    /// Seals `plaintext` (at most [`MAX_RECORD_PLAINTEXT`] bytes) as one record under the
    /// next nonce, whatever it says: what a faulty but authenticated peer can send (a
    /// first record without a frame length, one that runs past its frame). Tests and
    /// fuzzing only.
    #[cfg(any(test, feature = "test-support"))]
    pub fn encode_record(&mut self, plaintext: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
        self.plaintext.clear();
        self.plaintext.extend_from_slice(&plaintext[..plaintext.len().min(MAX_RECORD_PLAINTEXT)]);
        self.seal_record(dst)
    }
}

/// One end of an in-memory connection, framed as a handshake starts.
#[cfg(any(test, feature = "test-support"))]
type PipeEnd = (
    FramedRead<tokio::io::ReadHalf<tokio::io::DuplexStream>, LengthDelimitedCodec>,
    FramedWrite<tokio::io::WriteHalf<tokio::io::DuplexStream>, LengthDelimitedCodec>,
);

/// Both ends of an in-memory connection (tests and fuzzing).
#[cfg(any(test, feature = "test-support"))]
fn pipe() -> (PipeEnd, PipeEnd) {
    let (a, b) = tokio::io::duplex(4096);
    let end = |s: tokio::io::DuplexStream| {
        let (r, w) = tokio::io::split(s);
        (FramedRead::new(r, LengthDelimitedCodec::new()), FramedWrite::new(w, LengthDelimitedCodec::new()))
    };
    (end(a), end(b))
}

/// Both ends of a real handshake run in memory, for tests and fuzzing: replica 1's session
/// as initiator and replica 0's as responder, under `secrets`.
#[cfg(any(test, feature = "test-support"))]
pub fn session_pair(secrets: &splitbft_types::keys::ClusterSecrets) -> (Session, Session) {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a current-thread runtime starts");
    runtime.block_on(async {
        let ((mut ar, mut aw), (mut br, mut bw)) = pipe();
        let config = &secrets.config;
        let me = Identity::Replica(ReplicaId(1), &secrets.transport[1]);
        let (initiator, responder) = tokio::join!(
            initiate(&mut ar, &mut aw, config.cluster_id, &config.transport_keys[0], me),
            respond(&mut br, &mut bw, config, &secrets.transport[0]),
        );
        (initiator.expect("the handshake completes"), responder.expect("the handshake completes").1)
    })
}

/// Opens records and reassembles frames; any record that does not authenticate, or that
/// breaks the framing, ends the connection.
pub struct FrameDecoder {
    state: Arc<snow::StatelessTransportState>,
    /// The nonce the next record must have been sealed under.
    nonce: u64,
    max_frame: usize,
    /// Scratch for one record's plaintext.
    plaintext: Vec<u8>,
    /// The frame being reassembled.
    frame: BytesMut,
    /// Its announced length, once its first record arrived.
    expected: Option<usize>,
}

impl Decoder for FrameDecoder {
    type Item = BytesMut;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        loop {
            if src.len() < RECORD_HEADER {
                return Ok(None);
            }
            let sealed = usize::from(u16::from_be_bytes([src[0], src[1]]));
            if src.len() < RECORD_HEADER + sealed {
                src.reserve(RECORD_HEADER + sealed - src.len());
                return Ok(None);
            }
            src.advance(RECORD_HEADER);
            let record = src.split_to(sealed);
            let opened = match self.state.read_message(self.nonce, &record, &mut self.plaintext) {
                Ok(opened) => opened,
                Err(snow::Error::State(_)) => return Err(FrameError::Exhausted),
                Err(_) => return Err(FrameError::Unauthenticated),
            };
            self.nonce += 1;
            let mut plain = &self.plaintext[..opened];
            let expected = match self.expected {
                Some(expected) => expected,
                None => {
                    let Some((header, body)) = plain.split_first_chunk::<FRAME_HEADER>() else {
                        return Err(FrameError::BadRecord);
                    };
                    let len = u32::from_be_bytes(*header) as usize;
                    if len > self.max_frame {
                        return Err(FrameError::Oversize { len, limit: self.max_frame });
                    }
                    plain = body;
                    // Grows with the records that arrive, not with the announced length.
                    self.frame = BytesMut::with_capacity(len.min(MAX_RECORD_PLAINTEXT));
                    self.expected = Some(len);
                    len
                }
            };
            if plain.len() > expected - self.frame.len() {
                return Err(FrameError::BadRecord);
            }
            self.frame.extend_from_slice(plain);
            if self.frame.len() == expected {
                self.expected = None;
                return Ok(Some(std::mem::take(&mut self.frame)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use splitbft_types::keys::ClusterSecrets;

    /// Runs a handshake of `me` against replica 0 of `secrets`; returns both sides' results.
    async fn run(
        secrets: &ClusterSecrets,
        responder_key: [u8; 32],
        me: Identity<'_>,
    ) -> (Result<Session, HandshakeError>, Result<(Hello, Session), HandshakeError>) {
        let ((mut ir, mut iw), (mut rr, mut rw)) = pipe();
        let config = &secrets.config;
        tokio::join!(
            initiate(&mut ir, &mut iw, config.cluster_id, &responder_key, me),
            respond(&mut rr, &mut rw, config, &secrets.transport[0]),
        )
    }

    /// The two sessions of a client's handshake with replica 0.
    async fn sessions() -> (Session, Session) {
        let secrets = ClusterSecrets::deterministic(7, 1, 2, 1);
        let key0 = secrets.config.transport_keys[0];
        let (i, r) = run(&secrets, key0, Identity::Client(ClientId(1), &secrets.clients[1])).await;
        (i.unwrap(), r.unwrap().1)
    }

    /// Seals `frames` with `from`'s encoder into one byte stream.
    fn seal(from: &Session, frames: &[Bytes]) -> BytesMut {
        let mut encoder = from.encoder(usize::MAX);
        let mut wire = BytesMut::new();
        for frame in frames {
            encoder.encode(frame.clone(), &mut wire).unwrap();
        }
        wire
    }

    /// Everything `to`'s decoder makes of `wire`: the frames before the first error, and it.
    fn open(to: &Session, max_frame: usize, mut wire: BytesMut) -> (Vec<BytesMut>, Option<FrameError>) {
        let mut decoder = to.decoder(max_frame);
        let mut frames = Vec::new();
        loop {
            match decoder.decode(&mut wire) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => return (frames, None),
                Err(e) => return (frames, Some(e)),
            }
        }
    }

    #[tokio::test]
    async fn replicas_and_clients_prove_who_they_are() {
        let secrets = ClusterSecrets::deterministic(7, 1, 2, 1);
        let key0 = secrets.config.transport_keys[0];
        let (i, r) = run(&secrets, key0, Identity::Replica(ReplicaId(2), &secrets.transport[2])).await;
        assert!(i.is_ok());
        assert_eq!(r.unwrap().0, Hello::Replica(ReplicaId(2)));
        let (i, r) = run(&secrets, key0, Identity::Client(ClientId(1), &secrets.clients[1])).await;
        assert!(i.is_ok());
        assert_eq!(r.unwrap().0, Hello::Client(ClientId(1)));
    }

    #[tokio::test]
    async fn a_claim_the_keys_do_not_prove_is_refused() {
        let secrets = ClusterSecrets::deterministic(7, 1, 2, 1);
        let key0 = secrets.config.transport_keys[0];
        // Replica 2's key claiming replica 3, or a replica that does not exist.
        let (_, r) = run(&secrets, key0, Identity::Replica(ReplicaId(3), &secrets.transport[2])).await;
        assert!(matches!(r, Err(HandshakeError::UnprovenReplica)), "{r:?}");
        let (_, r) = run(&secrets, key0, Identity::Replica(ReplicaId(4), &secrets.transport[2])).await;
        assert!(matches!(r, Err(HandshakeError::UnprovenReplica)), "{r:?}");
        // Client 1's key claiming client 0; an unknown client.
        let (_, r) = run(&secrets, key0, Identity::Client(ClientId(0), &secrets.clients[1])).await;
        assert!(matches!(r, Err(HandshakeError::UnprovenClient)), "{r:?}");
        let (_, r) = run(&secrets, key0, Identity::Client(ClientId(2), &secrets.clients[1])).await;
        assert!(matches!(r, Err(HandshakeError::UnprovenClient)), "{r:?}");
        // An initiator of another cluster id: the prologues differ.
        let ((mut ir, mut iw), (mut rr, mut rw)) = pipe();
        let me = Identity::Client(ClientId(0), &secrets.clients[0]);
        let (_, r) = tokio::join!(
            initiate(&mut ir, &mut iw, 8, &key0, me),
            respond(&mut rr, &mut rw, &secrets.config, &secrets.transport[0]),
        );
        assert!(r.is_err());
    }

    #[tokio::test]
    async fn the_initiator_checks_the_responder() {
        let secrets = ClusterSecrets::deterministic(7, 1, 2, 1);
        let key1 = secrets.config.transport_keys[1];
        let (i, _) = run(&secrets, key1, Identity::Client(ClientId(0), &secrets.clients[0])).await;
        assert!(matches!(i, Err(HandshakeError::WrongResponder)), "{i:?}");
    }

    #[tokio::test]
    async fn large_frames_and_silence_end_the_handshake() {
        use tokio::io::AsyncWriteExt;
        let secrets = ClusterSecrets::deterministic(7, 1, 2, 1);
        let ((_, mut iw), (mut rr, mut rw)) = pipe();
        // One byte past the limit is refused before it is buffered.
        iw.get_mut().write_all(&((MAX_HANDSHAKE_FRAME as u32) + 1).to_be_bytes()).await.unwrap();
        let r = respond(&mut rr, &mut rw, &secrets.config, &secrets.transport[0]).await;
        assert_eq!(r.as_ref().map_err(HandshakeError::counter).unwrap_err(), Counter::HandshakeFramesOversize);
        // The decoder's own limit is restored afterwards.
        assert_eq!(rr.decoder().max_frame_length(), LengthDelimitedCodec::new().max_frame_length());
        // A silent peer is dropped after the timeout.
        tokio::time::pause();
        let ((_ir, _iw), (mut rr, mut rw)) = pipe();
        let r = respond(&mut rr, &mut rw, &secrets.config, &secrets.transport[0]).await;
        assert!(matches!(r, Err(HandshakeError::Timeout)), "{r:?}");
    }

    /// Frames of every size around the record boundaries survive the round trip, both ways,
    /// and each side's frames open only with the other side's decoder.
    #[tokio::test]
    async fn frames_round_trip_across_record_boundaries() {
        let (client, replica) = sessions().await;
        let sizes = [
            0,
            1,
            MAX_RECORD_PLAINTEXT - FRAME_HEADER - 1,
            MAX_RECORD_PLAINTEXT - FRAME_HEADER,
            MAX_RECORD_PLAINTEXT - FRAME_HEADER + 1,
            3 * MAX_RECORD_PLAINTEXT,
            1 << 20,
        ];
        let frames: Vec<Bytes> =
            sizes.iter().map(|&n| Bytes::from((0..n).map(|i| (i % 251) as u8).collect::<Vec<_>>())).collect();
        for (from, to) in [(&client, &replica), (&replica, &client)] {
            let wire = seal(from, &frames);
            // Ciphertext: the plaintext of a large frame does not appear on the wire.
            assert!(!wire.windows(64).any(|w| w == &frames[6][1000..1064]));
            let (opened, error) = open(to, 1 << 20, wire.clone());
            assert!(error.is_none(), "{error:?}");
            assert_eq!(opened.iter().map(|f| f.len()).collect::<Vec<_>>(), sizes);
            assert!(opened.iter().zip(&frames).all(|(o, f)| o[..] == f[..]));
            // A side cannot open its own frames: the directions have different keys.
            assert!(matches!(open(from, 1 << 20, wire).1, Some(FrameError::Unauthenticated)));
        }
        // Fed a byte at a time, the decoder yields the same frames.
        let wire = seal(&client, &frames[..3]);
        let mut decoder = replica.decoder(1 << 20);
        let (mut buffer, mut opened) = (BytesMut::new(), 0);
        for byte in wire {
            buffer.put_u8(byte);
            while let Some(frame) = decoder.decode(&mut buffer).unwrap() {
                assert_eq!(frame[..], frames[opened][..]);
                opened += 1;
            }
        }
        assert_eq!(opened, 3);
    }

    /// SPEC §11: an on-path attacker who alters, injects, replays, reorders or drops a
    /// record is caught at that record; nothing after it is delivered.
    #[tokio::test]
    async fn tampered_records_end_the_connection() {
        let (client, replica) = sessions().await;
        let frames = [Bytes::from_static(b"first"), Bytes::from_static(b"second"), Bytes::from_static(b"third")];
        let wire = seal(&client, &frames);
        let record = RECORD_HEADER + FRAME_HEADER + 5 + TAG_BYTES;
        let (first, rest) = (&wire[..record], &wire[record..]);
        let bad = |wire: &[u8]| {
            let (opened, error) = open(&replica, 1024, BytesMut::from(wire));
            (opened.len(), error.map(|e| e.counter()))
        };
        // Untouched: all three.
        assert_eq!(bad(&wire), (3, None));
        // A flipped bit anywhere in the first record's ciphertext or tag.
        for at in [RECORD_HEADER, RECORD_HEADER + 3, record - 1] {
            let mut flipped = wire.to_vec();
            flipped[at] ^= 0x01;
            assert_eq!(bad(&flipped), (0, Some(Counter::FramesUnauthenticated)), "byte {at}");
        }
        // A record injected before the genuine ones (plaintext made to look like a frame).
        let mut injected = [&[0, 9][..], &[0, 0, 0, 1, 7], &[0; 4]].concat();
        injected.extend_from_slice(&wire);
        assert_eq!(bad(&injected), (0, Some(Counter::FramesUnauthenticated)));
        // The first record replayed after itself; the second dropped; the two swapped.
        assert_eq!(bad(&[first, first, rest].concat()), (1, Some(Counter::FramesUnauthenticated)));
        assert_eq!(bad(&[first, &rest[record + 1..]].concat()), (1, Some(Counter::FramesUnauthenticated)));
        assert_eq!(bad(&[&rest[..record + 1], first].concat()), (0, Some(Counter::FramesUnauthenticated)));
        // A session from another handshake cannot open them either.
        let (_, other) = sessions().await;
        assert!(matches!(open(&other, 1024, wire.clone()).1, Some(FrameError::Unauthenticated)));
    }

    /// An authenticated peer that breaks the framing is cut off at that record, with
    /// nothing of the broken frame delivered: a first record too short for the frame
    /// length, a record running past its frame, an announced length past the limit; a
    /// frame of length 0 is a frame.
    #[test]
    fn an_authenticated_peer_that_breaks_the_framing_is_cut_off() {
        let (client, replica) = session_pair(&ClusterSecrets::deterministic(7, 1, 2, 1));
        let records = |plaintexts: &[&[u8]]| {
            let mut encoder = client.encoder(usize::MAX);
            let mut wire = BytesMut::new();
            encoder.encode(Bytes::from_static(b"ok"), &mut wire).unwrap();
            for p in plaintexts {
                encoder.encode_record(p, &mut wire).unwrap();
            }
            let (opened, error) = open(&replica, 1024, wire);
            (opened.iter().map(|f| f.to_vec()).collect::<Vec<_>>(), error.map(|e| e.counter()))
        };
        let ok = b"ok".to_vec();
        assert_eq!(records(&[&[0, 0, 0]]), (vec![ok.clone()], Some(Counter::FramesBadRecords)));
        assert_eq!(records(&[&[0, 0, 0, 2, 1, 2, 3]]), (vec![ok.clone()], Some(Counter::FramesBadRecords)));
        assert_eq!(records(&[&[0, 0, 0, 4, 1, 2], &[3, 4, 5]]), (vec![ok.clone()], Some(Counter::FramesBadRecords)));
        assert_eq!(records(&[&[0, 0, 4, 1]]), (vec![ok.clone()], Some(Counter::FramesOversize)));
        assert_eq!(records(&[&[0, 0, 0, 0], &[0, 0, 0, 3, 7], &[8, 9]]), (vec![ok, vec![], vec![7, 8, 9]], None));
    }

    /// The frame limit holds at the bound and one past it, on both sides, and an announced
    /// length past it is refused before the frame is buffered.
    #[tokio::test]
    async fn the_frame_limit_is_checked_before_buffering() {
        let (client, replica) = sessions().await;
        let limit = 100_000;
        let at = Bytes::from(vec![1u8; limit]);
        let past = Bytes::from(vec![1u8; limit + 1]);
        let (opened, error) = open(&replica, limit, seal(&client, std::slice::from_ref(&at)));
        assert!(error.is_none() && opened.len() == 1);
        let mut wire = BytesMut::new();
        assert!(matches!(client.encoder(limit).encode(past.clone(), &mut wire), Err(FrameError::Oversize { .. })));
        // A sender without the limit: the receiver refuses at the first record.
        let wire = seal(&client, &[past]);
        let first = RECORD_HEADER + MAX_NOISE_MESSAGE;
        let (opened, error) = open(&replica, limit, BytesMut::from(&wire[..first]));
        assert!(opened.is_empty());
        assert!(matches!(error, Some(FrameError::Oversize { len, limit: l }) if len == limit + 1 && l == limit));
    }
}
