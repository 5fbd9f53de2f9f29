//! Async SplitBFT client (SPEC §3 Request/Reply, SPEC §6).
//!
//! A [`Client`] keeps one TCP connection per replica. Each request carries one MAC per
//! Preparation enclave, goes first to the primary of the highest view the client has
//! seen, and is re-sent to every replica when no result arrives within the retransmission
//! timeout (at least the configured one, longer when the observed latency is: `rto.rs`;
//! doubling per retransmission, capped). A result is accepted once `f + 1` replies from distinct
//! replicas, each carrying a valid MAC from that replica's Execution enclave, agree on it.
//!
//! Sessions (SPEC §6): before its first operation a client checks every Execution
//! enclave's attestation report ([`verify_attestation`], which returns the [`Attested`]
//! token [`Client::register`] requires), draws a session key, and registers it with an
//! ordered Register request sealed to the Execution group key. Ops then travel
//! AES-256-GCM-sealed under that key (or GMAC-tagged when the cluster has
//! `confidential = false`); results come back sealed per replica and are compared as
//! plaintext: `f + 1` equal decrypted results decide.
//!
//! Nothing received from the network is trusted: every frame is decoded, checked, counted
//! by reason when rejected ([`ClientStats`]) and dropped.

mod conn;
mod quorum;
mod rto;
mod stats;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{debug, trace, warn};

use splitbft_types::attest::{Attestation, AttestationError, ExpectedExecution, verify_execution_reports};
use splitbft_types::codec::{decode_message, encode_message, from_bytes, to_bytes};
use splitbft_types::config::ConfigError;
use splitbft_types::crypto::{ClientKeys, SecretKey};
use splitbft_types::msg::Reply;
use splitbft_types::session::{ClientSession, Opened, Refusal, SessionError, open_reply_body};
use splitbft_types::wire::MAX_FRAME_BYTES;
use splitbft_types::{ClientId, Message, ProtocolConfig, Timestamp, View};

pub use stats::ClientStats;

use quorum::{Outcome, PendingTable, Verdict};
use stats::{Counters, bump};

/// Default first retransmission timeout: several PBFT rounds on a LAN, so a healthy
/// primary answers well before it fires.
pub const DEFAULT_RETRANSMIT_TIMEOUT: Duration = Duration::from_millis(500);
/// Cap on the doubling retransmission timeout: keeps probing a recovering cluster.
pub const MAX_RETRANSMIT_TIMEOUT: Duration = Duration::from_secs(8);
/// Default overall deadline of one request: long enough to ride out a view change.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Frames queued per replica connection. A request is one frame per replica, so this is
/// far above any valid `outstanding`; a replica that lets it fill is slow or dead, and
/// its frames are dropped rather than blocking callers.
const SEND_QUEUE_FRAMES: usize = 1024;

/// Tuning of a [`Client`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// Requests in flight at once; must be in `1..=protocol.client_window`.
    pub outstanding: usize,
    /// Least wait before the first retransmission to every replica. The wait adapts to the
    /// observed latency (twice the smoothed latency or more, RFC 6298) when that is longer,
    /// and doubles per retransmission, up to [`MAX_RETRANSMIT_TIMEOUT`].
    pub retransmit_timeout: Duration,
    /// Overall deadline of one request, after which it fails with [`ClientError::Timeout`].
    pub request_timeout: Duration,
    /// Largest frame sent or accepted on a replica connection.
    pub max_frame_bytes: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            outstanding: 1,
            retransmit_timeout: DEFAULT_RETRANSMIT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_frame_bytes: MAX_FRAME_BYTES,
        }
    }
}

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configuration, addresses, key or options are unusable.
    #[error("invalid client configuration: {0}")]
    Config(#[from] ConfigError),
    /// No `f + 1` matching replies arrived before the request deadline.
    #[error("request with timestamp {timestamp} timed out")]
    Timeout {
        /// Timestamp of the abandoned request.
        timestamp: Timestamp,
    },
    /// Fewer than `f + 1` replicas accepted a connection.
    #[error("fewer than f + 1 replicas are reachable")]
    NoReplicaReachable,
    /// The op (or the frame carrying it) exceeds the configured limit; nothing was sent.
    #[error("op of {len} bytes exceeds the limit of {max} bytes")]
    OpTooLarge {
        /// Size of the op.
        len: usize,
        /// Largest op allowed.
        max: usize,
    },
    /// The client was closed.
    #[error("client closed")]
    Closed,
    /// An Execution enclave's attestation report was refused; no session key was sent.
    #[error("attestation refused: {0}")]
    Attestation(#[from] AttestationError),
    /// No session is registered yet: call [`Client::register`] first.
    #[error("no session registered: register one before invoking operations")]
    NoSession,
    /// `f + 1` Execution enclaves refused the request (it executed as a no-op).
    #[error("request refused by the cluster: {0}")]
    Refused(Refusal),
    /// The request executed (its effects stand), but `f + 1` Execution enclaves no longer
    /// hold its result: the replies that carried it were lost, and by the time this client
    /// retransmitted, newer results of the same client had pushed it out of the cache (the
    /// last `W`, within 256 KiB per client). Read the state again to learn the outcome.
    #[error("request {timestamp} executed, but its result is no longer cached by the cluster")]
    ResultEvicted {
        /// The request's timestamp.
        timestamp: Timestamp,
    },
    /// Session cryptography failed locally (e.g. the timestamp left the nonce space).
    #[error("session error: {0}")]
    Session(#[from] SessionError),
}

/// Proof that every Execution enclave's attestation report was checked (SPEC §6): only
/// [`verify_attestation`] makes one, and [`Client::register`] requires it.
#[derive(Debug, Clone, Copy)]
pub struct Attested {
    platform: splitbft_types::attest::PlatformKind,
}

impl Attested {
    /// The platform whose evidence was checked (e.g. "software attestation").
    pub fn platform(&self) -> &'static str {
        self.platform.name()
    }
}

/// Checks every Execution enclave's report against `expected` with `verifier`: evidence,
/// measurement, and the configured enclave and group keys.
pub fn verify_attestation(
    protocol: &ProtocolConfig,
    verifier: &dyn Attestation,
    expected: &ExpectedExecution,
) -> Result<Attested, ClientError> {
    verify_execution_reports(verifier, protocol, expected)?;
    Ok(Attested { platform: verifier.platform() })
}

/// State shared between the caller-facing [`Client`] and its background tasks. The tasks
/// hold only this, so dropping the last `Client` really stops them.
pub(crate) struct Shared {
    config: ProtocolConfig,
    pub(crate) id: ClientId,
    /// Pre-keyed MAC states with every Preparation (requests) and Execution (replies) enclave.
    keys: ClientKeys,
    /// The registered session, if any (SPEC §6).
    session: RwLock<Option<Arc<ClientSession>>>,
    /// Timestamp of the Register in flight (0: none).
    registering: AtomicU64,
    pending: Mutex<PendingTable>,
    pub(crate) counters: Counters,
    /// `connected[r]`: a connection to replica `r` is up and introduced.
    pub(crate) connected: Vec<AtomicBool>,
    pub(crate) max_frame_bytes: usize,
    /// The client's Ed25519 key: it proves the client's identity in every transport
    /// handshake (SPEC §11).
    pub(crate) secret: SecretKey,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, PendingTable> {
        // The table stays consistent even if a holder panicked: every update is one call.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks one frame received from any replica connection and counts it as a vote.
    /// Authenticity comes from the MAC of the replica the reply names, never from the
    /// connection it arrived on.
    pub(crate) fn on_frame(&self, frame: &[u8]) {
        let reply = match decode_message(frame) {
            Ok(Message::Reply(reply)) => reply,
            Ok(other) => {
                trace!(kind = other.kind_name(), "unexpected message from replica");
                return bump(&self.counters.rejected_undecodable);
            }
            Err(error) => {
                trace!(%error, "undecodable frame from replica");
                return bump(&self.counters.rejected_undecodable);
            }
        };
        if reply.client != self.id {
            return bump(&self.counters.rejected_wrong_client);
        }
        if reply.replica.0 as usize >= self.config.n() {
            return bump(&self.counters.rejected_bad_replica);
        }
        if self.keys.verify_reply(&reply).is_err() {
            return bump(&self.counters.rejected_bad_mac);
        }
        let mut reply = reply;
        let session = self.session();
        let opened = match open_reply_body(session.as_deref(), self.id, reply.timestamp, reply.replica, &reply.result) {
            Ok(opened) => opened,
            Err(error) => {
                trace!(%error, "reply result does not open");
                return bump(&self.counters.rejected_bad_ciphertext);
            }
        };
        // A Register's answer is `Registered`; any refusal of its timestamp could come from
        // a forged copy (SPEC §6), as could a non-final refusal of an op.
        if let Opened::Refused(refusal) = opened
            && (!refusal.is_final() || self.registering.load(Ordering::Acquire) == reply.timestamp)
        {
            trace!(%refusal, "a copy or forgery of a request was refused");
            return bump(&self.counters.ignored_refusals);
        }
        // Replicas encrypt with their own nonces: votes compare plaintexts (SPEC §6).
        reply.result = to_bytes(&opened);
        self.count_vote(reply);
    }

    fn session(&self) -> Option<Arc<ClientSession>> {
        self.session.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn count_vote(&self, reply: Reply) {
        let verdict = self.pending().on_reply(reply);
        match verdict {
            Verdict::Counted => bump(&self.counters.replies_accepted),
            Verdict::Completed(done, outcome) => {
                bump(&self.counters.replies_accepted);
                // The caller may have given up in the meantime; nothing to do then.
                let _ = done.send(outcome);
            }
            Verdict::UnknownTimestamp => bump(&self.counters.rejected_unknown_timestamp),
            Verdict::Duplicate => bump(&self.counters.rejected_duplicate),
        }
    }
}

/// The client proper; [`Client`] is a cheap handle to it.
struct Inner {
    shared: Arc<Shared>,
    /// `senders[i]`: queue of frames for replica `i`'s writer task.
    senders: Vec<mpsc::Sender<Bytes>>,
    tasks: Vec<AbortHandle>,
    permits: Semaphore,
    next_timestamp: AtomicU64,
    view: AtomicU64,
    /// Latency estimate behind the retransmission timeout (`rto.rs`).
    rtt: std::sync::Mutex<rto::RttEstimator>,
    options: ClientOptions,
}

impl Inner {
    fn rtt(&self) -> std::sync::MutexGuard<'_, rto::RttEstimator> {
        // The estimator is plain data, valid even if a holder panicked.
        self.rtt.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn shutdown(&self) {
        self.permits.close();
        self.shared.pending().close();
        for task in &self.tasks {
            task.abort();
        }
    }

    /// Queues `frame` for replica `replica` without waiting; a full queue or a missing
    /// connection drops it (counted): retransmission covers it.
    fn send_to(&self, replica: usize, frame: &Bytes) {
        if !self.shared.connected[replica].load(Ordering::Acquire)
            || self.senders[replica].try_send(frame.clone()).is_err()
        {
            bump(&self.shared.counters.frames_dropped);
        }
    }

    fn send_to_all(&self, frame: &Bytes) {
        for replica in 0..self.senders.len() {
            self.send_to(replica, frame);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Removes a request from the pending table however `invoke` ends (including when its
/// future is dropped).
struct PendingGuard<'a> {
    shared: &'a Shared,
    timestamp: Timestamp,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.pending().remove(self.timestamp);
    }
}

/// A connection to a SplitBFT cluster. Clones share connections, counters and the
/// outstanding-request limit; the background tasks stop when the last clone is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("id", &self.inner.shared.id).field("view", &self.view()).finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the cluster: succeeds once at least `f + 1` replicas accept a connection;
    /// the others are retried in the background. `addresses[i]` is replica `i`'s address.
    pub async fn connect(
        protocol: ProtocolConfig,
        addresses: Vec<SocketAddr>,
        id: ClientId,
        secret: SecretKey,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let keyring = protocol.validate()?;
        let n = protocol.n();
        if addresses.len() != n {
            return Err(ConfigError::InvalidParameter("need exactly one address per replica").into());
        }
        if keyring.client(id) != Some(&secret.public()) {
            return Err(
                ConfigError::InvalidKey(format!("{id}: not configured, or the secret key does not match")).into()
            );
        }
        let window = usize::try_from(protocol.client_window).unwrap_or(usize::MAX);
        if options.outstanding == 0 || options.outstanding > window {
            return Err(ConfigError::InvalidParameter("outstanding must be in 1..=client_window").into());
        }
        if options.retransmit_timeout.is_zero() || options.request_timeout.is_zero() {
            return Err(ConfigError::InvalidParameter("timeouts must be positive").into());
        }
        if options.max_frame_bytes == 0 {
            return Err(ConfigError::InvalidParameter("max_frame_bytes must be positive").into());
        }
        if protocol.transport_keys.len() != n {
            return Err(ConfigError::InvalidParameter("need one transport key per replica (SPEC §11)").into());
        }

        // The validated keyring holds every replica's keys, so deriving cannot fail.
        let keys = ClientKeys::derive(&secret, &protocol, &keyring, id);

        let shared = Arc::new(Shared {
            pending: Mutex::new(PendingTable::new(n, protocol.weak_quorum())),
            config: protocol,
            id,
            keys,
            session: RwLock::new(None),
            registering: AtomicU64::new(0),
            counters: Counters::default(),
            connected: (0..n).map(|_| AtomicBool::new(false)).collect(),
            max_frame_bytes: options.max_frame_bytes,
            secret,
        });

        let attempts = addresses.iter().enumerate().map(|(replica, &addr)| conn::establish(&shared, replica, addr));
        let mut initial = futures_util::future::join_all(attempts).await;
        let reachable = initial.iter().filter(|attempt| attempt.is_ok()).count();
        for (replica, attempt) in initial.iter().enumerate() {
            match attempt {
                Ok(_) => bump(&shared.counters.connections),
                Err(error) => {
                    debug!(replica, addr = %addresses[replica], %error, "replica unreachable at connect");
                    bump(&shared.counters.connection_errors);
                }
            }
        }
        if reachable < shared.config.weak_quorum() {
            warn!(reachable, needed = shared.config.weak_quorum(), "too few replicas reachable");
            return Err(ClientError::NoReplicaReachable);
        }

        let mut senders = Vec::with_capacity(n);
        let mut tasks = Vec::with_capacity(n);
        for (replica, attempt) in initial.drain(..).enumerate() {
            let (tx, rx) = mpsc::channel(SEND_QUEUE_FRAMES);
            let established = attempt.ok();
            if established.is_some() {
                shared.connected[replica].store(true, Ordering::Release);
            }
            let task = conn::run_connection(Arc::clone(&shared), replica, addresses[replica], rx, established);
            tasks.push(tokio::spawn(task).abort_handle());
            senders.push(tx);
        }

        // Start from the wall clock so a restarted client with the same id never reuses a
        // timestamp the replicas have already seen.
        let first_timestamp = wall_clock_micros();

        Ok(Client {
            inner: Arc::new(Inner {
                shared,
                senders,
                tasks,
                permits: Semaphore::new(options.outstanding),
                next_timestamp: AtomicU64::new(first_timestamp),
                view: AtomicU64::new(0),
                rtt: std::sync::Mutex::new(rto::RttEstimator::default()),
                options,
            }),
        })
    }

    /// Registers a fresh session key (SPEC §6) after the attestation check that `attested`
    /// proves: draws `K_c` from the OS, seals it to the Execution group key, and waits until
    /// `f + 1` Execution enclaves confirm the ordered Register. Returns the epoch. A later
    /// call replaces the session (its epoch is higher).
    pub async fn register(&self, attested: Attested) -> Result<u64, ClientError> {
        let shared = &*self.inner.shared;
        debug!(platform = attested.platform(), "registering a session");
        let mut key = [0u8; 32];
        let mut seed = [0u8; 32];
        getrandom::fill(&mut key).map_err(|_| SessionError::BadSealedKey)?;
        getrandom::fill(&mut seed).map_err(|_| SessionError::BadSealedKey)?;
        let mut rng = <rand_chacha::ChaCha20Rng as rand_chacha::rand_core::SeedableRng>::from_seed(seed);
        // Epochs from the wall clock: a restarted client with the same id still goes up.
        let previous = shared.session().map_or(0, |s| s.epoch());
        let epoch = wall_clock_micros().max(previous + 1);
        let (session, op) = ClientSession::register(&mut rng, &shared.config, shared.id, epoch, key)?;
        let registering = &shared.registering;
        let outcome = self
            .submit_with(move |t| {
                registering.store(t, Ordering::Release);
                Ok(op)
            })
            .await;
        shared.registering.store(0, Ordering::Release);
        match outcome? {
            Opened::Registered { epoch: e } if e == epoch => {
                *shared.session.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(session));
                Ok(epoch)
            }
            Opened::Refused(r) => Err(ClientError::Refused(r)),
            // f + 1 replicas confirming anything else means more than f are faulty.
            _ => Err(ClientError::Refused(Refusal::BadRegister)),
        }
    }

    /// Resumes a session registered earlier under `key` and `epoch` (by this client's
    /// identity, e.g. in a previous process that kept `K_c`), without a Register round.
    pub fn resume_session(&self, epoch: u64, key: [u8; 32]) {
        let shared = &*self.inner.shared;
        let session = ClientSession::installed(&shared.config, shared.id, epoch, key);
        *shared.session.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(session));
    }

    /// Submits `op` and returns the result `f + 1` replicas agree on. At most
    /// `outstanding` calls run at once; the others wait for a slot. Needs a registered
    /// session ([`Client::register`]).
    pub async fn invoke(&self, op: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        let max_op = self.inner.shared.config.max_op_bytes as usize;
        if op.len() > max_op {
            return Err(ClientError::OpTooLarge { len: op.len(), max: max_op });
        }
        let session = self.inner.shared.session().ok_or(ClientError::NoSession)?;
        match self.submit_with(|t| session.seal_op(t, &op)).await? {
            Opened::Result(result) => Ok(result),
            Opened::Refused(r) => Err(ClientError::Refused(r)),
            // `submit_with` turns `Evicted` into `ClientError::ResultEvicted`.
            Opened::Registered { .. } | Opened::Evicted => Err(ClientError::Refused(Refusal::Malformed)),
        }
    }

    /// Sends the op `wrap` builds for the request's timestamp; returns what `f + 1`
    /// replicas agreed on, except that an agreed [`Opened::Evicted`] is the error
    /// [`ClientError::ResultEvicted`].
    async fn submit_with(
        &self,
        wrap: impl FnOnce(Timestamp) -> Result<Vec<u8>, SessionError>,
    ) -> Result<Opened, ClientError> {
        let inner = &*self.inner;
        let shared = &*inner.shared;
        let _permit = inner.permits.acquire().await.map_err(|_| ClientError::Closed)?;

        let timestamp = inner.next_timestamp.fetch_add(1, Ordering::Relaxed);
        let request = shared.keys.request(timestamp, wrap(timestamp)?);
        let op_len = request.op.len();
        let frame = Bytes::from(encode_message(&Message::Request(request)));
        if frame.len() > inner.options.max_frame_bytes {
            let overhead = frame.len() - op_len;
            return Err(ClientError::OpTooLarge {
                len: op_len,
                max: inner.options.max_frame_bytes.saturating_sub(overhead),
            });
        }

        let (done, mut outcome) = oneshot::channel::<Outcome>();
        shared.pending().insert(timestamp, done).map_err(|_| ClientError::Closed)?;
        let _guard = PendingGuard { shared, timestamp };
        bump(&shared.counters.requests_sent);

        let primary = shared.config.primary(self.view()).0 as usize;
        if shared.connected[primary].load(Ordering::Acquire) {
            inner.send_to(primary, &frame);
        } else {
            // Waiting a retransmission timeout for a primary we know is unreachable helps nobody.
            inner.send_to_all(&frame);
        }

        let sent_at = Instant::now();
        let deadline = sent_at + inner.options.request_timeout;
        let cap = MAX_RETRANSMIT_TIMEOUT.max(inner.options.retransmit_timeout);
        let mut retransmit = inner.rtt().timeout(inner.options.retransmit_timeout, cap);
        loop {
            let wake = (Instant::now() + retransmit).min(deadline);
            match tokio::time::timeout_at(wake, &mut outcome).await {
                Ok(Ok(Outcome { result, view })) => {
                    inner.rtt().sample(sent_at.elapsed());
                    inner.view.fetch_max(view, Ordering::Relaxed);
                    bump(&shared.counters.completed);
                    // Votes are `Opened` encodings made by `on_frame`.
                    return match from_bytes::<Opened>(&result) {
                        Ok(Opened::Evicted) => Err(ClientError::ResultEvicted { timestamp }),
                        Ok(opened) => Ok(opened),
                        Err(_) => Err(ClientError::Refused(Refusal::Malformed)),
                    };
                }
                Ok(Err(_)) => return Err(ClientError::Closed),
                Err(_) if Instant::now() >= deadline => {
                    bump(&shared.counters.timeouts);
                    debug!(timestamp, "request timed out");
                    return Err(ClientError::Timeout { timestamp });
                }
                Err(_) => {
                    trace!(timestamp, ?retransmit, "retransmitting to all replicas");
                    bump(&shared.counters.retransmissions);
                    inner.send_to_all(&frame);
                    retransmit = (retransmit * 2).min(cap);
                }
            }
        }
    }

    /// A snapshot of the client's counters.
    pub fn stats(&self) -> ClientStats {
        self.inner.shared.counters.snapshot()
    }

    /// The highest view seen in an accepted result; requests go first to its primary.
    pub fn view(&self) -> View {
        self.inner.view.load(Ordering::Relaxed)
    }

    /// This client's id.
    pub fn id(&self) -> ClientId {
        self.inner.shared.id
    }

    /// Stops the background tasks; pending and later calls on any clone fail with
    /// [`ClientError::Closed`].
    pub async fn close(self) {
        self.inner.shutdown();
    }
}

/// Microseconds since the Unix epoch, at least 1 (timestamps and session epochs).
fn wall_clock_micros() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
    u64::try_from(now).unwrap_or(u64::MAX / 2).max(1)
}
