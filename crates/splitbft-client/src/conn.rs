//! One TCP connection per replica: a writer task that owns the send queue and reconnects,
//! and a reader task per live connection that turns frames into votes (SPEC §5 wire).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt as _};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tracing::{debug, trace};

use splitbft_transport::{Identity, SecureRead, SecureWrite, initiate};

use crate::Shared;
use crate::stats::bump;

/// How long one connection attempt may take: a replica on a LAN answers in well under a
/// millisecond, so a second means it is down (and `connect` must not hang on it).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// First reconnection back-off: short enough that a restarted replica rejoins quickly.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Longest reconnection back-off: bounds the time a recovered replica stays unused.
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// Most frames coalesced into one flush, so one burst cannot starve the reader of a
/// round-trip forever; far above the default window of 64 outstanding requests.
const MAX_COALESCED_FRAMES: usize = 256;

/// A live connection after the Hello went out.
pub(crate) struct Established {
    reader: SecureRead<OwnedReadHalf>,
    writer: SecureWrite<OwnedWriteHalf>,
}

fn codec(max_frame_bytes: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().max_frame_length(max_frame_bytes).new_codec()
}

/// Connects to replica `replica` at `addr` and proves the client's identity in the
/// transport handshake (SPEC §11), which also proves the replica's: connecting (TCP) within
/// [`CONNECT_TIMEOUT`], the handshake within its own timeout.
pub(crate) async fn establish(shared: &Shared, replica: usize, addr: SocketAddr) -> std::io::Result<Established> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(stream) => stream?,
        Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")),
    };
    // Requests are small and latency-bound; the writer already coalesces.
    stream.set_nodelay(true)?;
    let (read, write) = stream.into_split();
    let mut writer = FramedWrite::new(write, codec(shared.max_frame_bytes));
    let mut reader = FramedRead::new(read, codec(shared.max_frame_bytes));
    let responder =
        shared.config.transport_keys.get(replica).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "no transport key for this replica")
        })?;
    let me = Identity::Client(shared.id, &shared.secret);
    let session = initiate(&mut reader, &mut writer, shared.config.cluster_id, responder, me)
        .await
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e))?;
    // Frames after the handshake are sealed under the session's keys (SPEC §11).
    let (reader, writer) = session.secure(reader, writer, shared.max_frame_bytes);
    Ok(Established { reader, writer })
}

/// Aborts the task when dropped, so that aborting the writer also stops its reader.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a connection's write loop ended.
enum WriteEnd {
    /// The client is gone: stop for good.
    ClientClosed,
    /// The connection failed or the replica closed it: reconnect.
    Lost,
}

/// The writer task of replica `replica`: sends queued frames over a connection, and
/// re-establishes the connection with back-off whenever it is missing or lost.
pub(crate) async fn run_connection(
    shared: Arc<Shared>,
    replica: usize,
    addr: SocketAddr,
    mut queue: mpsc::Receiver<Bytes>,
    mut initial: Option<Established>,
) {
    let mut backoff = RECONNECT_MIN;
    loop {
        // `connect` already counted the initial connection.
        let (connection, reconnected) = match initial.take() {
            Some(connection) => (connection, false),
            None => match establish(&shared, replica, addr).await {
                Ok(connection) => {
                    debug!(replica, %addr, "connected to replica");
                    (connection, true)
                }
                Err(error) => {
                    trace!(replica, %addr, %error, "connection attempt failed");
                    bump(&shared.counters.connection_errors);
                    if !discard_for(&shared, &mut queue, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                    continue;
                }
            },
        };
        backoff = RECONNECT_MIN;
        let Established { reader, mut writer } = connection;
        let mut reader = AbortOnDrop(tokio::spawn(read_loop(Arc::clone(&shared), replica, reader)));
        shared.connected[replica].store(true, Ordering::Release);
        if reconnected {
            bump(&shared.counters.connections);
        }
        let end = write_loop(&mut writer, &mut queue, &mut reader).await;
        shared.connected[replica].store(false, Ordering::Release);
        drop(reader);
        match end {
            WriteEnd::ClientClosed => return,
            WriteEnd::Lost => {
                debug!(replica, %addr, "connection to replica lost");
                bump(&shared.counters.connection_errors);
                if !discard_for(&shared, &mut queue, backoff).await {
                    return;
                }
            }
        }
    }
}

/// Forwards queued frames until the connection fails. After one frame it feeds whatever
/// else is already queued and flushes once: one syscall for a burst of requests.
async fn write_loop(
    writer: &mut SecureWrite<OwnedWriteHalf>,
    queue: &mut mpsc::Receiver<Bytes>,
    reader: &mut AbortOnDrop,
) -> WriteEnd {
    loop {
        tokio::select! {
            biased;
            _ = &mut reader.0 => return WriteEnd::Lost,
            frame = queue.recv() => {
                let Some(frame) = frame else { return WriteEnd::ClientClosed };
                if writer.feed(frame).await.is_err() {
                    return WriteEnd::Lost;
                }
                for _ in 1..MAX_COALESCED_FRAMES {
                    let Ok(frame) = queue.try_recv() else { break };
                    if writer.feed(frame).await.is_err() {
                        return WriteEnd::Lost;
                    }
                }
                if SinkExt::<Bytes>::flush(writer).await.is_err() {
                    return WriteEnd::Lost;
                }
            }
        }
    }
}

/// Waits `pause` while dropping frames queued for the missing connection (retransmission
/// to every replica covers them, and stale frames would only cost the replica work).
/// Returns `false` if the client is gone.
async fn discard_for(shared: &Shared, queue: &mut mpsc::Receiver<Bytes>, pause: Duration) -> bool {
    let sleep = tokio::time::sleep(pause);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = &mut sleep => return true,
            frame = queue.recv() => match frame {
                Some(_) => bump(&shared.counters.frames_dropped),
                None => return false,
            },
        }
    }
}

/// The reader task of one connection: every frame is untrusted bytes to check and count.
async fn read_loop(shared: Arc<Shared>, replica: usize, mut reader: SecureRead<OwnedReadHalf>) {
    while let Some(frame) = reader.next().await {
        match frame {
            Ok(frame) => shared.on_frame(&frame),
            Err(error) => {
                // An oversized or unauthenticated record, or an I/O error: the stream
                // cannot be resynced.
                debug!(replica, %error, "dropping connection after read error");
                return;
            }
        }
    }
    trace!(replica, "replica closed the connection");
}
