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
//! handshake message. Later frames are not encrypted: protocol messages are signed end to
//! end by enclaves, and client ops are sealed under session keys (SPEC §6). The handshake
//! protects the environment — reply routes, peer resends — not safety.
//!
//! Handshake messages are length-prefixed like every other frame ([`LengthDelimitedCodec`]),
//! but while the handshake runs the decoder accepts at most [`MAX_HANDSHAKE_FRAME`] bytes,
//! so a stranger cannot make a replica buffer a large frame before proving who it is.

use std::time::Duration;

use bytes::Bytes;
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
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

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

/// The initiator's side: proves `me` to the replica holding transport key `responder`.
/// `cluster_id` enters the prologue, so a handshake across clusters fails.
pub async fn initiate<R, W>(
    reader: &mut FramedRead<R, LengthDelimitedCodec>,
    writer: &mut FramedWrite<W, LengthDelimitedCodec>,
    cluster_id: u64,
    responder: &[u8; 32],
    me: Identity<'_>,
) -> Result<(), HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    bounded(reader, async |reader| {
        let prologue = prologue(cluster_id);
        let builder = snow::Builder::new(params());
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
        Ok(())
    })
    .await
}

/// The responder's (a replica's) side: runs the handshake with its transport secret `me`
/// and returns the hello the initiator proved. Any other outcome closes the connection.
pub async fn respond<R, W>(
    reader: &mut FramedRead<R, LengthDelimitedCodec>,
    writer: &mut FramedWrite<W, LengthDelimitedCodec>,
    config: &ProtocolConfig,
    me: &TransportSecret,
) -> Result<Hello, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    bounded(reader, async |reader| {
        let prologue = prologue(config.cluster_id);
        let mut noise =
            snow::Builder::new(params()).local_private_key(me.as_bytes())?.prologue(&prologue)?.build_responder()?;
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
        Ok(introduction.hello)
    })
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use splitbft_types::keys::ClusterSecrets;
    use tokio::io::{DuplexStream, ReadHalf, WriteHalf};

    type Ends = (
        FramedRead<ReadHalf<DuplexStream>, LengthDelimitedCodec>,
        FramedWrite<WriteHalf<DuplexStream>, LengthDelimitedCodec>,
    );

    fn pipe() -> (Ends, Ends) {
        let (a, b) = tokio::io::duplex(4096);
        let end = |s: DuplexStream| {
            let (r, w) = tokio::io::split(s);
            (FramedRead::new(r, LengthDelimitedCodec::new()), FramedWrite::new(w, LengthDelimitedCodec::new()))
        };
        (end(a), end(b))
    }

    /// Runs a handshake of `me` against replica 0 of `secrets`; returns both sides' results.
    async fn run(
        secrets: &ClusterSecrets,
        responder_key: [u8; 32],
        me: Identity<'_>,
    ) -> (Result<(), HandshakeError>, Result<Hello, HandshakeError>) {
        let ((mut ir, mut iw), (mut rr, mut rw)) = pipe();
        let config = &secrets.config;
        tokio::join!(
            initiate(&mut ir, &mut iw, config.cluster_id, &responder_key, me),
            respond(&mut rr, &mut rw, config, &secrets.transport[0]),
        )
    }

    #[tokio::test]
    async fn replicas_and_clients_prove_who_they_are() {
        let secrets = ClusterSecrets::deterministic(7, 1, 2, 1);
        let key0 = secrets.config.transport_keys[0];
        let (i, r) = run(&secrets, key0, Identity::Replica(ReplicaId(2), &secrets.transport[2])).await;
        assert!(i.is_ok());
        assert_eq!(r.unwrap(), Hello::Replica(ReplicaId(2)));
        let (i, r) = run(&secrets, key0, Identity::Client(ClientId(1), &secrets.clients[1])).await;
        assert!(i.is_ok());
        assert_eq!(r.unwrap(), Hello::Client(ClientId(1)));
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
}
