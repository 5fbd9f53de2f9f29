//! The broker's routing, batching and flow-control logic as a sans-IO state machine
//! (STYLE "sans-IO cores, thin drivers"). The tokio driver ([`crate::node`]) and the
//! in-memory test cluster drive the same core.
//!
//! The broker is untrusted (SPEC §5): it decodes only what it needs to route (SPEC §3
//! last column), and nothing it does can break safety; everything here is liveness and
//! performance.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use bytes::Bytes;
use splitbft_types::boundary::{Event, Input, Output, Stats};
use splitbft_types::cert::verify_signed;
use splitbft_types::codec::{
    CodecError, WIRE_VERSION, body_offset, decode_message, encode_message, from_bytes, request_client, to_bytes,
};
use splitbft_types::config::Keyring;
use splitbft_types::counters::Counter;
use splitbft_types::counters::Counters;
use splitbft_types::crypto::{MAX_SIGNATURE_BATCH, verify_request_signature, verify_request_signatures};
use splitbft_types::limits::{MAC_ENTRY_BYTES, REQUEST_OVERHEAD_BYTES};
use splitbft_types::msg::{BatchMsg, Digest, Message, Request, StateChunk};
use splitbft_types::session::ReplyBody;
use splitbft_types::{ClientId, CompartmentKind, ProtocolConfig, ReplicaId, Seq, View};

use crate::latency::LatencyHistogram;
use crate::recovery::{
    BatchCache, DEFAULT_VIEW_CHANGE_TIMEOUT_US, FutureBuffer, MAX_STATE_BYTES, MISSING_BATCH_GRACE_US, OutLog,
    RESEND_INTERVAL_US, RequestTimer, STATE_CHUNK_BYTES, STATE_PEER_TIMEOUT_US, StateFetch,
};

/// Default batch timeout (SPEC §5: cut at `B` requests or 10 ms).
pub const DEFAULT_BATCH_TIMEOUT_US: u64 = 10_000;
/// Default number of batches in flight below which the primary cuts a batch at once
/// instead of waiting for `B` requests or the timeout: an idle cluster answers a lone
/// request without the 10 ms wait, and a busy one batches naturally while this many
/// batches are being agreed on.
pub const DEFAULT_EAGER_INFLIGHT: u64 = 1;
/// Requests queued at the primary awaiting a batch; beyond it new requests are dropped
/// (and counted): the clients retransmit. 50 full batches.
pub const DEFAULT_MAX_PENDING_REQUESTS: usize = 10_000;
/// Bytes of requests queued at the primary (SPEC §11 byte budget; the count alone would let
/// 10,000 requests of 66 KiB pin 660 MB): about five of the largest batches, or far more
/// than 10,000 small requests. Beyond it requests are dropped (counted); clients retransmit.
pub const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;

/// The requests queued at the primary (encoded bodies), with their bytes in total and per
/// client: a client may hold an equal share of [`MAX_PENDING_BYTES`] (at least one largest
/// request), so a faulty client that signs junk fills its own share, not the queue.
#[derive(Debug, Default)]
struct PendingSet {
    set: HashSet<Bytes>,
    bytes: usize,
    per_client: HashMap<ClientId, usize>,
}

impl PendingSet {
    fn contains(&self, body: &Bytes) -> bool {
        self.set.contains(body)
    }

    /// Bytes queued for `client`.
    fn client_bytes(&self, client: ClientId) -> usize {
        self.per_client.get(&client).copied().unwrap_or(0)
    }

    /// The client a queued body counts against (bodies were decoded before they queued).
    fn owner(body: &[u8]) -> ClientId {
        request_client(body).unwrap_or(ClientId(u32::MAX))
    }

    fn insert(&mut self, body: Bytes) -> bool {
        let (len, owner) = (body.len(), Self::owner(&body));
        let new = self.set.insert(body);
        if new {
            self.bytes += len;
            *self.per_client.entry(owner).or_insert(0) += len;
        }
        new
    }

    fn remove(&mut self, body: &Bytes) {
        if self.set.remove(body) {
            self.bytes -= body.len();
            if let std::collections::hash_map::Entry::Occupied(mut held) = self.per_client.entry(Self::owner(body)) {
                *held.get_mut() -= body.len();
                if *held.get() == 0 {
                    held.remove();
                }
            }
        }
    }

    fn clear(&mut self) {
        self.set.clear();
        self.bytes = 0;
        self.per_client.clear();
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

/// Broker tuning (liveness and performance only).
#[derive(Clone, Debug)]
pub struct BrokerOptions {
    /// Cut a batch at this many requests (`B`; at most the protocol's `max_batch`).
    pub batch_max: usize,
    /// Cut a batch when its oldest request waited this long.
    pub batch_timeout_us: u64,
    /// Cut at once while fewer batches are in flight.
    pub eager_inflight: u64,
    /// At most this many batches ordered but not yet executed locally.
    pub max_inflight: u64,
    /// Bound of the primary's request queue.
    pub max_pending_requests: usize,
    /// First request timeout before suspecting the primary (doubles per failed view).
    pub view_change_timeout_us: u64,
}

impl BrokerOptions {
    /// Defaults for a protocol configuration.
    pub fn new(protocol: &ProtocolConfig) -> Self {
        BrokerOptions {
            batch_max: protocol.max_batch as usize,
            batch_timeout_us: DEFAULT_BATCH_TIMEOUT_US,
            eager_inflight: DEFAULT_EAGER_INFLIGHT,
            // Half the log window: the rest absorbs the lag of checkpoint certificates.
            max_inflight: protocol.log_window / 2,
            max_pending_requests: DEFAULT_MAX_PENDING_REQUESTS,
            view_change_timeout_us: DEFAULT_VIEW_CHANGE_TIMEOUT_US,
        }
    }
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send a frame to every peer broker.
    Broadcast(Bytes),
    /// Send a frame to one peer broker.
    Send(ReplicaId, Bytes),
    /// Send a frame to a client.
    Reply(ClientId, Bytes),
    /// Cross into a local compartment with one encoded input.
    Enclave(CompartmentKind, Bytes),
    /// Append a record sealed by the Execution enclave to the replica's data directory
    /// (SPEC §7: a ledger block); flush at the end of the round.
    Persist {
        /// The record's height.
        height: u64,
        /// The sealed bytes (opaque to the broker).
        sealed: Bytes,
    },
    /// Make a compartment's sealed state record durable before any network action of the
    /// same round is carried out (SPEC §10 write-ahead).
    SealState(CompartmentKind, splitbft_types::durable::SealedState),
    /// Make a verified batch frame (PrePrepare and batch bytes) durable with the round, as
    /// [`Action::SealState`]: a replica's Prepare, Commit or NewView for a batch leaves
    /// only once the bytes are on its disk, so a whole-cluster restart always finds every
    /// batch a certificate names held by the replicas that certified it (SPEC §10).
    LogBatch {
        /// The batch's sequence number (the log drops it once a checkpoint above it is
        /// stable).
        seq: Seq,
        /// The encoded `Message::Batch`.
        frame: Bytes,
    },
}

/// The broker state of one replica.
#[derive(Debug)]
pub struct BrokerCore {
    me: ReplicaId,
    protocol: ProtocolConfig,
    options: BrokerOptions,
    /// The view the broker believes in (for routing requests to the primary).
    view: View,
    /// Encoded requests waiting for a batch (primary), each without the version byte.
    pending: VecDeque<Bytes>,
    /// The requests in `pending`: a retransmission (from the client, or forwarded by each
    /// backup) of a request still queued here is not queued again. Under overload every
    /// request may be retransmitted several times; unbatched, each copy would otherwise
    /// cost an ordering attempt.
    pending_set: PendingSet,
    pending_since_us: Option<u64>,
    /// Requests for the queue whose client signature is not checked yet, with their bodies
    /// (also in `pending_set`): checked together at the end of the round, or once
    /// [`MAX_SIGNATURE_BATCH`] wait ([`BrokerCore::verify_queued`]).
    unverified: Vec<(Request, Bytes)>,
    /// Requests of each OrderBatch submitted but not yet answered by Preparation, oldest
    /// first (Preparation answers in order); re-queued if it found the window full.
    awaiting_order: VecDeque<Vec<Bytes>>,
    /// Low watermark `h` last reported by the local Preparation enclave.
    stable: Seq,
    last_ordered: Seq,
    last_executed: Seq,
    window_full: bool,
    /// View each local compartment is in (Confirmation: the view it moves to).
    views: [View; 3],
    timer: RequestTimer,
    /// Known-to-executed latency of the requests executed here (`/metrics`).
    latency: LatencyHistogram,
    outlog: OutLog,
    batches: BatchCache,
    /// Certified or re-proposed batches Execution lacks: digest -> (seq, when to fetch).
    missing: BTreeMap<Digest, (Seq, u64)>,
    /// Own snapshots served to peers: seq -> (digest, bytes). Holds the one of Execution's
    /// stable checkpoint and those of the uncertified checkpoints above it (at most
    /// [`BrokerCore::max_snapshots`]).
    snapshots: BTreeMap<Seq, (Digest, Bytes)>,
    /// The local Execution's stable checkpoint: its snapshot is the one a replica behind
    /// asks for (its certificate names it), so no newer one evicts it.
    execution_stable: Seq,
    fetch: Option<StateFetch>,
    future: FutureBuffer,
    /// Highest view each replica sent a (validly signed) ViewChange for.
    vc_views: Vec<View>,
    keys: Keyring,
    /// When each peer last had our out-log resent on its request.
    resent_at: Vec<Option<u64>>,
    /// When each peer last had our out-log resent on its reconnection.
    reconnect_resent_at: Vec<Option<u64>>,
    /// The snapshot each peer was last served and when (rate limit, SPEC §11).
    state_served_at: Vec<Option<(Seq, u64)>>,
    /// The encoded chunks of the snapshot served last: `(seq, digest, frames)`.
    state_frames: Option<(Seq, Digest, Vec<Bytes>)>,
    /// A reconnection inside [`RESEND_INTERVAL_US`] of the last resend: when the deferred
    /// resend is due (SPEC §11: resends to a peer are rate-limited, never lost).
    resend_due: Vec<Option<u64>>,
    counters: Counters,
    stats: [Option<Stats>; 3],
    /// Per compartment behind the recovery fence and still waiting for statements: when to
    /// ask again with a new nonce (SPEC §10). Only Preparation and Confirmation fence.
    recovery_retry_us: [Option<u64>; 3],
    /// Where the next recovery nonce comes from: the driver's random seed, then a counter.
    recovery_nonce: u64,
    /// When each peer's last recovery query reached our Execution enclave.
    queried_at: Vec<Option<u64>>,
}

/// How long a recovering compartment waits for `2f + 1` statements before asking again
/// with a new nonce (liveness only: statements answering an older nonce do not count).
pub const RECOVERY_RETRY_US: u64 = 500_000;
/// At most one recovery query per peer per this interval reaches our Execution enclave
/// (each costs it a signature; a correct peer asks every [`RECOVERY_RETRY_US`] per
/// compartment).
pub const RECOVERY_QUERY_INTERVAL_US: u64 = RECOVERY_RETRY_US / 4;

impl BrokerCore {
    /// A broker for replica `me`.
    pub fn new(protocol: ProtocolConfig, me: ReplicaId, mut options: BrokerOptions) -> Self {
        options.batch_max = options.batch_max.clamp(1, protocol.max_batch as usize);
        options.max_inflight = options.max_inflight.max(1);
        BrokerCore {
            me,
            view: 0,
            pending: VecDeque::new(),
            pending_set: PendingSet::default(),
            pending_since_us: None,
            unverified: Vec::new(),
            awaiting_order: VecDeque::new(),
            stable: 0,
            last_ordered: 0,
            last_executed: 0,
            window_full: false,
            views: [0; 3],
            timer: RequestTimer::new(options.view_change_timeout_us, protocol.clients.len()),
            latency: LatencyHistogram::default(),
            outlog: OutLog::default(),
            batches: BatchCache::default(),
            missing: BTreeMap::new(),
            snapshots: BTreeMap::new(),
            execution_stable: 0,
            fetch: None,
            future: FutureBuffer::new(protocol.n()),
            vc_views: vec![0; protocol.n()],
            keys: protocol.validate().expect("a broker is started with a validated configuration"),
            resent_at: vec![None; protocol.n()],
            resend_due: vec![None; protocol.n()],
            reconnect_resent_at: vec![None; protocol.n()],
            state_served_at: vec![None; protocol.n()],
            state_frames: None,
            counters: Counters::default(),
            stats: [None, None, None],
            recovery_retry_us: [None; 3],
            recovery_nonce: 0,
            queried_at: vec![None; protocol.n()],
            protocol,
            options,
        }
    }

    /// Batches Execution reported missing that have not arrived yet.
    pub fn missing_batches(&self) -> usize {
        self.missing.len()
    }

    /// The view this broker routes requests by (its Preparation enclave's).
    pub fn view(&self) -> View {
        self.view
    }

    /// This replica.
    pub fn me(&self) -> ReplicaId {
        self.me
    }

    fn is_primary(&self) -> bool {
        self.protocol.primary(self.view) == self.me
    }

    fn decode(&mut self, frame: &[u8], source: &'static str) -> Option<Message> {
        match decode_message(frame) {
            Ok(msg) => Some(msg),
            Err(e) => {
                self.counters.bump(match (source, e) {
                    ("peer", CodecError::UnknownKind(_)) => Counter::PeerUnknownKind,
                    ("peer", CodecError::UnsupportedVersion(_)) => Counter::PeerBadVersion,
                    ("peer", _) => Counter::PeerMalformed,
                    (_, CodecError::UnknownKind(_)) => Counter::ClientUnknownKind,
                    (_, CodecError::UnsupportedVersion(_)) => Counter::ClientBadVersion,
                    _ => Counter::ClientMalformed,
                });
                None
            }
        }
    }

    fn to_enclave(kind: CompartmentKind, msg: Message, out: &mut Vec<Action>) {
        out.push(Action::Enclave(kind, Bytes::from(to_bytes(&Input::Message(msg)))));
    }

    /// Delivers `msg` to a local compartment, or holds it until the compartment enters
    /// `view` if that is ahead of it.
    fn deliver(&mut self, from: ReplicaId, kind: CompartmentKind, view: View, msg: Message, out: &mut Vec<Action>) {
        let input = Bytes::from(to_bytes(&Input::Message(msg)));
        let current = self.views[kind.index()];
        if view <= current {
            out.push(Action::Enclave(kind, input));
        } else if let Err(refusal) = self.future.hold(from, kind, current, view, input) {
            self.counters.bump(refusal.counter());
        }
    }

    /// A frame from peer `from`'s broker (SPEC §3 routing).
    pub fn on_peer_frame(&mut self, from: ReplicaId, frame: Bytes, now_us: u64, out: &mut Vec<Action>) {
        let Some(msg) = self.decode(&frame, "peer") else { return };
        use CompartmentKind::*;
        match msg {
            Message::Request(request) => {
                if self.is_primary() {
                    self.enqueue(&request, frame, now_us, out);
                } else {
                    self.counters.bump(Counter::PeerRequestNotPrimary);
                }
            }
            Message::Batch(b) => {
                let pp = b.pre_prepare;
                if !self.batch_is_genuine(&b) {
                    // Junk neither enters the cache nor ends a pending fetch (SPEC §11).
                    return self.counters.bump(Counter::BatchFramesUnverified);
                }
                self.cache_batch(pp.body.digest, pp.body.seq, frame, out);
                self.missing.remove(&pp.body.digest);
                // A batch of an older view (fetched after a view change) is for Execution only.
                // Preparation backups need the bytes: they check every request (SPEC §4.1 (2)).
                if pp.body.view >= self.views[Preparation.index()] {
                    self.deliver(from, Preparation, pp.body.view, Message::Batch(b.clone()), out);
                }
                if pp.body.view >= self.views[Confirmation.index()] {
                    self.deliver(from, Confirmation, pp.body.view, Message::PrePrepare(pp), out);
                }
                Self::to_enclave(Execution, Message::Batch(b), out);
            }
            Message::PrePrepare(pp) => {
                self.deliver(from, Preparation, pp.body.view, Message::PrePrepare(pp), out);
                self.deliver(from, Confirmation, pp.body.view, Message::PrePrepare(pp), out);
            }
            Message::Prepare(p) => self.deliver(from, Confirmation, p.body.view, Message::Prepare(p), out),
            Message::Commit(c) => self.deliver(from, Execution, c.body.view, Message::Commit(c), out),
            Message::Checkpoint(cp) => {
                for kind in CompartmentKind::ALL {
                    Self::to_enclave(kind, Message::Checkpoint(cp), out);
                }
            }
            Message::ViewChange(vc) => {
                let (view, replica) = (vc.body.view, vc.body.replica);
                // Peer connections are not authenticated: count a ViewChange towards the
                // f + 1 rule only if its signature checks out, so one faulty peer cannot
                // speak for others and force view changes.
                let genuine = view > self.vc_views.get(replica.0 as usize).copied().unwrap_or(View::MAX)
                    && verify_signed(&self.protocol, &self.keys, &vc).is_ok();
                Self::to_enclave(Preparation, Message::ViewChange(vc), out);
                if genuine {
                    self.vc_views[replica.0 as usize] = view;
                    self.join_view_change(out);
                }
            }
            Message::NewView(nv) => {
                for kind in CompartmentKind::ALL {
                    Self::to_enclave(kind, Message::NewView(nv.clone()), out);
                }
            }
            Message::FetchBatch { digest, .. } => match self.batches.get(&digest) {
                Some(frame) => {
                    self.counters.bump(Counter::BatchesServed);
                    out.push(Action::Send(from, frame.clone()));
                }
                None => self.counters.bump(Counter::FetchBatchUnknown),
            },
            Message::StateRequest { seq, digest } => self.serve_state(from, seq, digest, now_us, out),
            Message::StateChunk(chunk) => self.on_state_chunk(from, chunk, now_us, out),
            Message::ResendOutLog => {
                let last = self.resent_at.get(from.0 as usize).copied().flatten();
                if last.is_some_and(|at| now_us < at + RESEND_INTERVAL_US) {
                    return self.counters.bump(Counter::ResendRequestsThrottled);
                }
                if let Some(slot) = self.resent_at.get_mut(from.0 as usize) {
                    *slot = Some(now_us);
                    self.resend_out_log(from, out);
                }
            }
            Message::Reply(_) => self.counters.bump(Counter::PeerUnexpectedReply),
            Message::RecoveryQuery(query) => {
                if query.requester.replica != from || query.requester.kind == CompartmentKind::Execution {
                    return self.counters.bump(Counter::RecoveryQueryNotFromSender);
                }
                let last = self.queried_at.get(from.0 as usize).copied().flatten();
                if last.is_some_and(|at| now_us < at + RECOVERY_QUERY_INTERVAL_US) {
                    return self.counters.bump(Counter::RecoveryQueriesThrottled);
                }
                if let Some(slot) = self.queried_at.get_mut(from.0 as usize) {
                    *slot = Some(now_us);
                }
                Self::to_enclave(Execution, Message::RecoveryQuery(query), out);
            }
            Message::RecoveryStatement(st) => {
                let requester = st.body.query.requester;
                if requester.replica != self.me || requester.kind == CompartmentKind::Execution {
                    return self.counters.bump(Counter::RecoveryStatementNotForUs);
                }
                Self::to_enclave(requester.kind, Message::RecoveryStatement(st), out);
            }
        }
    }

    /// Whether a batch frame is what its header claims: the bytes hash to the digest and the
    /// header is signed by the primary of its view. Only such frames are cached, served and
    /// end a fetch (SPEC §11; issue 11 finding 6). Costs one hash and one verification per
    /// batch, none per request.
    fn batch_is_genuine(&self, b: &BatchMsg) -> bool {
        Digest::of(&b.batch) == b.pre_prepare.body.digest
            && verify_signed(&self.protocol, &self.keys, &b.pre_prepare).is_ok()
    }

    /// Keeps a verified batch frame for peers and Execution, and has it logged with the
    /// round if it is new and above the stable checkpoint (SPEC §10).
    fn cache_batch(&mut self, digest: Digest, seq: Seq, frame: Bytes, out: &mut Vec<Action>) {
        if self.batches.insert(digest, seq, frame.clone()) && seq > self.stable {
            self.counters.bump(Counter::BatchesLogged);
            out.push(Action::LogBatch { seq, frame });
        }
    }

    /// Puts a batch frame read back from this replica's log into the cache, if it is
    /// genuine (the disk is the host's: it is checked like a peer's frame). Returns whether
    /// it was kept.
    pub fn restore_batch(&mut self, frame: Bytes) -> bool {
        let genuine = match decode_message(&frame) {
            Ok(Message::Batch(b)) if self.batch_is_genuine(&b) => Some(b.pre_prepare.body),
            _ => None,
        };
        let Some(pp) = genuine else {
            self.counters.bump(Counter::BatchesRestoredUnverified);
            return false;
        };
        self.batches.insert(pp.digest, pp.seq, frame);
        self.counters.bump(Counter::BatchesRestored);
        true
    }

    /// The highest checkpoint this broker has seen certified stable.
    pub fn stable(&self) -> Seq {
        self.stable
    }

    /// PBFT's liveness rule: `f + 1` replicas asking for views above ours means at least one
    /// correct replica suspects the primary: join the smallest such view.
    fn join_view_change(&mut self, out: &mut Vec<Action>) {
        let current = self.views[CompartmentKind::Confirmation.index()];
        let higher: Vec<View> = self.vc_views.iter().copied().filter(|v| *v > current).collect();
        if higher.len() > self.protocol.f as usize
            && let Some(&target) = higher.iter().min()
        {
            self.counters.bump(Counter::SuspectsFPlusOne);
            tracing::debug!(replica = self.me.0, target, "joining a view change (f + 1 rule)");
            self.suspect(target - 1, out);
        }
    }

    /// Whether this replica's Confirmation is in a view change (it asked for a view its
    /// Preparation has not entered) that fewer than `2f + 1` replicas, itself included,
    /// have asked for.
    fn view_change_short_of_quorum(&self) -> bool {
        let asked = self.views[CompartmentKind::Confirmation.index()];
        asked > self.view && self.vc_views.iter().filter(|v| **v >= asked).count() < self.protocol.quorum()
    }

    fn suspect(&mut self, view: View, out: &mut Vec<Action>) {
        out.push(Action::Enclave(CompartmentKind::Confirmation, Bytes::from(to_bytes(&Input::Suspect(view)))));
    }

    /// A frame from a connected client.
    pub fn on_client_frame(&mut self, client: ClientId, frame: Bytes, now_us: u64, out: &mut Vec<Action>) {
        let request = match self.decode(&frame, "client") {
            Some(Message::Request(req)) if req.client == client => req,
            Some(Message::Request(_)) => return self.counters.bump(Counter::ClientRequestWrongId),
            Some(_) => return self.counters.bump(Counter::ClientUnexpectedMessage),
            None => return,
        };
        let key = (request.client, request.timestamp);
        let done = self.timer.completed(key);
        if done || self.timer.waiting(key) {
            // A retransmission: Execution answers from its reply cache if it executed it.
            self.counters.bump(Counter::ClientRetransmissions);
            Self::to_enclave(CompartmentKind::Execution, Message::Request(request.clone()), out);
        }
        if done {
            return;
        }
        // Only a request that could ever be ordered keeps a timer: a faulty client's
        // unsigned or oversized requests would otherwise force a view change each (issue
        // 12, Byzantine clients; SPEC §4.2 (5), §6, §11). A backup checks on arrival (it
        // sees client frames only on retransmission); the primary checks the signature with
        // the round's others ([`BrokerCore::verify_queued`]), which stops a forgery's timer.
        let admissible = if self.is_primary() { self.orderable(&request) } else { self.admissible(&request) };
        if !admissible {
            return self.counters.bump(Counter::ClientRequestsInadmissible);
        }
        if !self.timer.track(key, frame.clone(), now_us) {
            self.counters.bump(Counter::RequestsUntracked);
        }
        if self.is_primary() {
            self.enqueue(&request, frame, now_us, out);
        } else {
            // Backups forward to the primary, unchanged (SPEC §5).
            self.counters.bump(Counter::RequestsForwarded);
            out.push(Action::Send(self.protocol.primary(self.view), frame));
        }
    }

    /// Queues a request at the primary for the next batch, once its client signature
    /// verifies: a filter, so that one faulty client cannot make this (correct) primary
    /// propose a batch that correct backups refuse (SPEC §5, §6). It decides nothing:
    /// Preparation enclaves check every request again. The signature is checked with the
    /// round's others in one batch equation ([`BrokerCore::verify_queued`]).
    fn enqueue(&mut self, request: &Request, frame: Bytes, now_us: u64, out: &mut Vec<Action>) {
        let largest =
            self.protocol.max_op_bytes as usize + self.protocol.n() * MAC_ENTRY_BYTES + REQUEST_OVERHEAD_BYTES;
        let share = (MAX_PENDING_BYTES / self.protocol.clients.len().max(1)).max(largest);
        if self.pending.len() + self.unverified.len() >= self.options.max_pending_requests
            || self.pending_set.bytes + frame.len() > MAX_PENDING_BYTES
            || self.pending_set.client_bytes(request.client) + frame.len() > share
        {
            return self.counters.bump(Counter::RequestsDroppedQueueFull);
        }
        // The encoded Request is the frame minus the version byte and the kind, so a batch
        // is built by concatenation. The frame decoded as a Request, so the offset exists.
        let Ok(offset) = body_offset(&frame) else {
            return self.counters.bump(Counter::RequestMalformed);
        };
        let body = frame.slice(offset..);
        if self.pending_set.contains(&body) {
            return self.counters.bump(Counter::RequestAlreadyPending);
        }
        if self.keys.client(request.client).is_none() || request.op.len() > self.protocol.max_op_bytes as usize {
            return self.counters.bump(Counter::RequestsBadSignatureDropped);
        }
        self.pending_set.insert(body.clone());
        self.unverified.push((request.clone(), body));
        if self.unverified.len() >= MAX_SIGNATURE_BATCH {
            self.verify_queued(now_us, out);
        }
    }

    /// Checks the client signatures of the requests enqueued since the last call, in
    /// batches (PERFORMANCE.md lesson 8): those that verify join the queue in arrival order
    /// and batches are cut; the others are counted and dropped. Drivers call it at the end
    /// of every round ([`crate::drive::drive`] does), so no request waits past its round.
    pub fn verify_queued(&mut self, now_us: u64, out: &mut Vec<Action>) {
        if self.unverified.is_empty() {
            return;
        }
        let unverified = std::mem::take(&mut self.unverified);
        let keys: Vec<_> = unverified
            .iter()
            .map(|(r, _)| self.keys.client(r.client).expect("enqueue admits known clients only"))
            .collect();
        let requests: Vec<&Request> = unverified.iter().map(|(r, _)| r).collect();
        let verdicts = verify_request_signatures(self.protocol.cluster_id, &keys, &requests);
        self.counters.bump(Counter::SignatureBatches);
        for ((request, body), genuine) in unverified.into_iter().zip(verdicts) {
            if genuine {
                self.pending.push_back(body);
                self.pending_since_us.get_or_insert(now_us);
            } else {
                self.pending_set.remove(&body);
                // A forgery starts no view change: its timer stops (a genuine copy starts
                // it again when it comes).
                self.timer.refused((request.client, request.timestamp));
                self.counters.bump(Counter::RequestsBadSignatureDropped);
            }
        }
        self.maybe_cut(now_us, out);
    }

    /// Whether a request can be ordered at all: its op within the limit and its client
    /// signature valid (Preparation enclaves check both again, SPEC §4.1 (1)-(2)). One
    /// verification per client frame; backups get client frames only on retransmission.
    fn admissible(&self, request: &Request) -> bool {
        self.orderable(request)
            && self
                .keys
                .client(request.client)
                .is_some_and(|key| verify_request_signature(key, self.protocol.cluster_id, request).is_ok())
    }

    /// The checks of [`BrokerCore::admissible`] that cost no signature: the request's shape
    /// as Preparation checks it (`Request::well_formed`: known client, op within the limit,
    /// one MAC per replica, timestamp in range).
    fn orderable(&self, request: &Request) -> bool {
        request.well_formed(&self.protocol, self.keys.clients()).is_ok()
    }

    /// Batches handed to Preparation or ordered and not yet executed here. Below the stable
    /// checkpoint nothing is outstanding: an Execution behind it waits for state transfer
    /// and executes none of those batches, and counting them would stop a primary whose
    /// Execution lags from cutting any batch (simulator, `power-failure` n = 4 seed 150:
    /// after a whole-cluster restart no snapshot of the stable checkpoint exists until the
    /// next one, and every view that primary led ordered nothing).
    fn inflight(&self) -> u64 {
        self.awaiting_order.len() as u64 + self.last_ordered.saturating_sub(self.last_executed.max(self.stable))
    }

    /// Whether Preparation has a free sequence number in `(h, h + L]` for one more batch.
    fn window_has_room(&self) -> bool {
        self.last_ordered + (self.awaiting_order.len() as u64) < self.stable + self.protocol.log_window
    }

    /// Cuts batches while the rules allow (SPEC §5: `B` requests or the timeout; at once
    /// while the pipeline is nearly idle).
    fn maybe_cut(&mut self, now_us: u64, out: &mut Vec<Action>) {
        while !self.pending.is_empty()
            && !self.window_full
            && self.window_has_room()
            && self.inflight() < self.options.max_inflight
        {
            let full = self.pending.len() >= self.options.batch_max;
            let expired =
                self.pending_since_us.is_some_and(|t| now_us.saturating_sub(t) >= self.options.batch_timeout_us);
            let idle = self.inflight() < self.options.eager_inflight;
            if !(full || expired || idle) {
                return;
            }
            let take = self.pending.len().min(self.options.batch_max);
            let batch: Vec<Bytes> = self.pending.drain(..take).collect();
            for body in &batch {
                self.pending_set.remove(body);
            }
            self.pending_since_us = if self.pending.is_empty() { None } else { Some(now_us) };
            out.push(Action::Enclave(
                CompartmentKind::Preparation,
                Bytes::from(to_bytes(&Input::OrderBatch(concat_requests(&batch)))),
            ));
            self.awaiting_order.push_back(batch);
            self.counters.bump(Counter::BatchesCut);
        }
    }

    /// When [`BrokerCore::on_tick`] must run next (batch timeout, request timer, batch
    /// fetch, state transfer), if anything waits.
    pub fn next_deadline_us(&self) -> Option<u64> {
        [
            self.pending_since_us.map(|t| t + self.options.batch_timeout_us),
            self.timer.deadline_us(),
            self.missing.values().map(|(_, at)| *at).min(),
            self.fetch.as_ref().map(|f| f.deadline_us),
            self.resend_due.iter().flatten().min().copied(),
            self.recovery_retry_us.iter().flatten().min().copied(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Time passed: cut batches whose timeout expired, suspect the primary if a request
    /// timer expired (SPEC §4.2 (5)), fetch batches still missing, move a stalled state
    /// transfer to another peer.
    pub fn on_tick(&mut self, now_us: u64, out: &mut Vec<Action>) {
        self.maybe_cut(now_us, out);
        if self.view_change_short_of_quorum() {
            // PBFT's liveness rule (Castro and Liskov, OSDI '99 §4.4): a replica that asked
            // for view `v` moves on to `v + 1` only after `2f + 1` replicas asked for `v`
            // or more. Without it replicas whose timers drifted apart leapfrog each other
            // through views and no view gathers a quorum (simulator, n = 4, seeds 8524,
            // 11383, 12295, 14068, 14119, 14304). The timer is re-armed, not fired.
            if self.timer.deadline_us().is_some_and(|d| d <= now_us) {
                self.counters.bump(Counter::SuspectsHeldForQuorum);
                self.timer.restart(now_us);
            }
        } else if self.timer.fire(now_us) {
            self.counters.bump(Counter::SuspectsTimer);
            let view = self.views[CompartmentKind::Confirmation.index()];
            tracing::debug!(replica = self.me.0, view, pending = self.timer.pending(), "request timer expired");
            self.suspect(view, out);
        }
        for (digest, (seq, at)) in self.missing.iter_mut() {
            if *at <= now_us {
                self.counters.bump(Counter::BatchesFetched);
                out.push(Action::Broadcast(Bytes::from(encode_message(&Message::FetchBatch {
                    seq: *seq,
                    digest: *digest,
                }))));
                *at = now_us + 25 * MISSING_BATCH_GRACE_US;
            }
        }
        if self.fetch.as_ref().is_some_and(|f| f.deadline_us <= now_us) {
            self.next_state_peer(now_us, out);
        }
        for i in 0..self.resend_due.len() {
            if self.resend_due[i].is_some_and(|at| at <= now_us) {
                self.resend_due[i] = None;
                self.reconnect_resent_at[i] = Some(now_us);
                self.resend_out_log(ReplicaId(i as u32), out);
            }
        }
        for kind in [CompartmentKind::Preparation, CompartmentKind::Confirmation] {
            if self.recovery_retry_us[kind.index()].is_some_and(|at| at <= now_us) {
                self.counters.bump(Counter::RecoveryRetries);
                self.send_begin_recovery(kind, out);
            }
        }
    }

    /// Starts (or restarts) the recovery fence's query in the local Preparation and
    /// Confirmation (SPEC §10). `nonce_seed` is the driver's randomness: the compartments
    /// have none. A compartment that is not recovering ignores it.
    pub fn begin_recovery(&mut self, nonce_seed: u64, out: &mut Vec<Action>) {
        self.recovery_nonce = nonce_seed;
        for kind in [CompartmentKind::Preparation, CompartmentKind::Confirmation] {
            self.send_begin_recovery(kind, out);
        }
    }

    fn send_begin_recovery(&mut self, kind: CompartmentKind, out: &mut Vec<Action>) {
        // Distinct per query (Weyl sequence); unpredictability is not what protects the
        // requester, the echo and the counter epoch are (see `splitbft_types::recovery`).
        self.recovery_nonce = self.recovery_nonce.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let input = Input::BeginRecovery { nonce: self.recovery_nonce };
        out.push(Action::Enclave(kind, Bytes::from(to_bytes(&input))));
        self.recovery_retry_us[kind.index()] = None;
    }

    /// A peer connected (or reconnected): resend the out-log (SPEC §5), at most once per
    /// [`RESEND_INTERVAL_US`] per peer (SPEC §11): a reconnection sooner than that defers
    /// the resend to the end of the interval, so reconnecting in a loop cannot multiply the
    /// traffic, and the last reconnection is still served.
    pub fn on_peer_up(&mut self, peer: ReplicaId, now_us: u64, out: &mut Vec<Action>) {
        let i = peer.0 as usize;
        if peer == self.me || i >= self.reconnect_resent_at.len() {
            return;
        }
        self.counters.bump(Counter::PeerReconnects);
        match self.reconnect_resent_at[i] {
            Some(at) if now_us < at + RESEND_INTERVAL_US => {
                self.counters.bump(Counter::PeerResendsDeferred);
                self.resend_due[i] = Some(at + RESEND_INTERVAL_US);
            }
            _ => {
                self.reconnect_resent_at[i] = Some(now_us);
                self.resend_due[i] = None;
                self.resend_out_log(peer, out);
            }
        }
    }

    fn resend_out_log(&mut self, peer: ReplicaId, out: &mut Vec<Action>) {
        self.counters.bump(Counter::PeerResends);
        for frame in self.outlog.frames() {
            out.push(Action::Send(peer, frame.clone()));
        }
    }

    fn serve_state(&mut self, to: ReplicaId, seq: Seq, digest: Digest, now_us: u64, out: &mut Vec<Action>) {
        let Some((have, bytes)) = self.snapshots.get(&seq) else {
            return self.counters.bump(Counter::StateRequestUnknown);
        };
        if *have != digest {
            return self.counters.bump(Counter::StateRequestUnknown);
        }
        // SPEC §11: one serving per peer per interval, and the chunks are encoded once per
        // snapshot and shared, so repeated requests cannot multiply copies of the state.
        // A newer snapshot than the last one served to that peer is always served.
        let i = to.0 as usize;
        let last = self.state_served_at.get(i).copied().flatten();
        if last.is_some_and(|(served, at)| seq <= served && now_us < at + STATE_PEER_TIMEOUT_US) {
            return self.counters.bump(Counter::StateRequestsThrottled);
        }
        if let Some(slot) = self.state_served_at.get_mut(i) {
            *slot = Some((seq, now_us));
        }
        if self.state_frames.as_ref().is_none_or(|(s, d, _)| (*s, *d) != (seq, digest)) {
            let total = bytes.len().div_ceil(STATE_CHUNK_BYTES).max(1) as u32;
            let frames = (0..total)
                .map(|index| {
                    let start = index as usize * STATE_CHUNK_BYTES;
                    let end = (start + STATE_CHUNK_BYTES).min(bytes.len());
                    let chunk = StateChunk { seq, digest, index, total, bytes: bytes[start..end].to_vec() };
                    Bytes::from(encode_message(&Message::StateChunk(chunk)))
                })
                .collect();
            self.state_frames = Some((seq, digest, frames));
            self.counters.bump(Counter::StateChunksEncoded);
        }
        if let Some((_, _, frames)) = &self.state_frames {
            out.extend(frames.iter().map(|frame| Action::Send(to, frame.clone())));
        }
        self.counters.bump(Counter::StatesServed);
    }

    /// Snapshots kept: the stable checkpoint's and one per checkpoint Execution may sign
    /// inside its window `(h, h + L]` (SPEC §4.3).
    fn max_snapshots(&self) -> usize {
        (self.protocol.log_window / self.protocol.checkpoint_interval.max(1)) as usize + 1
    }

    fn start_state_fetch(&mut self, seq: Seq, digest: Digest, now_us: u64, out: &mut Vec<Action>) {
        if self.fetch.as_ref().is_some_and(|f| f.seq >= seq) {
            return;
        }
        let n = self.protocol.n() as u32;
        let peer = ReplicaId((self.me.0 + 1) % n);
        self.fetch = Some(StateFetch { seq, digest, peer, chunks: Vec::new(), deadline_us: now_us });
        self.ask_state_peer(now_us, out);
    }

    fn ask_state_peer(&mut self, now_us: u64, out: &mut Vec<Action>) {
        let Some(fetch) = &mut self.fetch else { return };
        fetch.chunks.clear();
        fetch.deadline_us = now_us + STATE_PEER_TIMEOUT_US;
        self.counters.bump(Counter::StateRequestsSent);
        let msg = Message::StateRequest { seq: fetch.seq, digest: fetch.digest };
        out.push(Action::Send(fetch.peer, Bytes::from(encode_message(&msg))));
    }

    fn next_state_peer(&mut self, now_us: u64, out: &mut Vec<Action>) {
        let n = self.protocol.n() as u32;
        let me = self.me;
        if let Some(fetch) = &mut self.fetch {
            fetch.peer = ReplicaId((fetch.peer.0 + 1) % n);
            if fetch.peer == me {
                fetch.peer = ReplicaId((fetch.peer.0 + 1) % n);
            }
        }
        self.ask_state_peer(now_us, out);
    }

    fn on_state_chunk(&mut self, from: ReplicaId, chunk: StateChunk, now_us: u64, out: &mut Vec<Action>) {
        let Some(fetch) = &mut self.fetch else { return self.counters.bump(Counter::StateChunkUnexpected) };
        let total = chunk.total as usize;
        if from != fetch.peer
            || (chunk.seq, chunk.digest) != (fetch.seq, fetch.digest)
            || total == 0
            || total > MAX_STATE_BYTES / STATE_CHUNK_BYTES + 1
            || chunk.index as usize >= total
            || chunk.bytes.len() > STATE_CHUNK_BYTES
        {
            return self.counters.bump(Counter::StateChunkUnexpected);
        }
        if fetch.chunks.is_empty() {
            fetch.chunks = vec![None; total];
        } else if fetch.chunks.len() != total {
            // A peer that changes `total` mid-transfer is lying: ask the next one at once
            // rather than start over with it (issue 14: it could stall the fetch for ever).
            self.counters.bump(Counter::StateChunkInconsistent);
            return self.next_state_peer(now_us, out);
        }
        let slot = &mut fetch.chunks[chunk.index as usize];
        if slot.is_some() {
            // Not progress: a duplicate does not extend the peer's deadline.
            return self.counters.bump(Counter::StateChunkDuplicate);
        }
        self.counters.add(Counter::StateTransferBytes, chunk.bytes.len() as u64);
        *slot = Some(chunk.bytes);
        fetch.deadline_us = now_us + STATE_PEER_TIMEOUT_US;
        if fetch.chunks.iter().all(Option::is_some) {
            let bytes: Vec<u8> = fetch.chunks.iter_mut().flat_map(|c| c.take().unwrap_or_default()).collect();
            let input = Input::RestoreState { seq: fetch.seq, bytes };
            out.push(Action::Enclave(CompartmentKind::Execution, Bytes::from(to_bytes(&input))));
        }
    }

    /// Outputs of local compartment `from` (decoded defensively: only the compartments are
    /// trusted, and only for safety).
    pub fn on_enclave_outputs(
        &mut self,
        from: CompartmentKind,
        outputs: Vec<Bytes>,
        now_us: u64,
        out: &mut Vec<Action>,
    ) {
        for output in outputs {
            match from_bytes::<Output>(&output) {
                Ok(output) => self.on_enclave_output(from, output, now_us, out),
                Err(_) => self.counters.bump(Counter::EnclaveOutputMalformed),
            }
        }
    }

    fn on_enclave_output(&mut self, from: CompartmentKind, output: Output, now_us: u64, out: &mut Vec<Action>) {
        use CompartmentKind::*;
        match (from, output) {
            (Preparation, Output::Send(Message::Batch(b))) => {
                let pp = b.pre_prepare.body;
                let frame = Bytes::from(encode_message(&Message::Batch(b.clone())));
                self.cache_batch(pp.digest, pp.seq, frame.clone(), out);
                self.outlog.push(pp.seq, frame.clone());
                out.push(Action::Broadcast(frame));
                self.deliver(self.me, Confirmation, pp.view, Message::PrePrepare(b.pre_prepare), out);
                Self::to_enclave(Execution, Message::Batch(b), out);
            }
            (Preparation, Output::Send(Message::Prepare(p))) => {
                let frame = Bytes::from(encode_message(&Message::Prepare(p)));
                self.outlog.push(p.body.seq, frame.clone());
                out.push(Action::Broadcast(frame));
                self.deliver(self.me, Confirmation, p.body.view, Message::Prepare(p), out);
            }
            (Preparation, Output::Send(Message::NewView(nv))) => {
                let frame = Bytes::from(encode_message(&Message::NewView(nv.clone())));
                self.outlog.set_new_view(frame.clone());
                out.push(Action::Broadcast(frame));
                for kind in [Confirmation, Execution] {
                    Self::to_enclave(kind, Message::NewView(nv.clone()), out);
                }
            }
            (Confirmation, Output::Send(Message::Commit(c))) => {
                let frame = Bytes::from(encode_message(&Message::Commit(c)));
                self.outlog.push(c.body.seq, frame.clone());
                out.push(Action::Broadcast(frame));
                self.deliver(self.me, Execution, c.body.view, Message::Commit(c), out);
            }
            (Confirmation, Output::Send(Message::ViewChange(vc))) => {
                let frame = Bytes::from(encode_message(&Message::ViewChange(vc.clone())));
                self.outlog.set_view_change(frame.clone());
                out.push(Action::Broadcast(frame));
                if let Some(seen) = self.vc_views.get_mut(self.me.0 as usize) {
                    *seen = (*seen).max(vc.body.view);
                }
                Self::to_enclave(Preparation, Message::ViewChange(vc), out);
            }
            (Execution, Output::Send(Message::Checkpoint(cp))) => {
                let frame = Bytes::from(encode_message(&Message::Checkpoint(cp)));
                self.outlog.push(cp.body.seq, frame.clone());
                out.push(Action::Broadcast(frame));
                for kind in CompartmentKind::ALL {
                    Self::to_enclave(kind, Message::Checkpoint(cp), out);
                }
            }
            (Preparation | Confirmation, Output::Send(Message::RecoveryQuery(query))) => {
                // SPEC §10 recovery fence: every replica's Execution answers, ours included.
                self.counters.bump(Counter::RecoveryQueriesSent);
                out.push(Action::Broadcast(Bytes::from(encode_message(&Message::RecoveryQuery(query)))));
                Self::to_enclave(Execution, Message::RecoveryQuery(query), out);
                self.recovery_retry_us[from.index()] = Some(now_us + RECOVERY_RETRY_US);
            }
            (Preparation | Confirmation, Output::Event(Event::RecoveryHorizon { .. })) => {
                self.recovery_retry_us[from.index()] = None;
            }
            (Execution, Output::Send(Message::RecoveryStatement(st))) => {
                let requester = st.body.query.requester;
                if requester.replica == self.me {
                    Self::to_enclave(requester.kind, Message::RecoveryStatement(st), out);
                } else {
                    out.push(Action::Send(
                        requester.replica,
                        Bytes::from(encode_message(&Message::RecoveryStatement(st))),
                    ));
                }
            }
            (Execution, Output::Send(msg @ Message::Reply(_))) => {
                let Message::Reply(reply) = &msg else { unreachable!("matched above") };
                let key = (reply.client, reply.timestamp);
                // A refusal leaves the timestamp unused (SPEC §4.3 (4)): the genuine request
                // may still come, so it is not completed here.
                match from_bytes::<ReplyBody>(&reply.result) {
                    Ok(ReplyBody::Refused(_)) => self.timer.refused(key),
                    _ => {
                        if let Some(waited_us) = self.timer.executed(key, now_us) {
                            self.latency.record(waited_us);
                        }
                    }
                }
                out.push(Action::Reply(reply.client, Bytes::from(encode_message(&msg))));
            }
            (Preparation, Output::Event(Event::Ordered { view, seq, requests })) => {
                self.awaiting_order.pop_front();
                self.view = self.view.max(view);
                self.last_ordered = self.last_ordered.max(seq);
                self.counters.add(Counter::RequestsOrdered, u64::from(requests));
                self.counters.bump(Counter::BatchesOrdered);
                // Debug only: one span per (view, seq), nothing at info on the hot path.
                tracing::debug_span!("seq", replica = self.me.0, view, seq)
                    .in_scope(|| tracing::debug!(requests, "batch ordered"));
            }
            (Preparation, Output::Event(Event::NotOrdered { window_full })) => {
                let requests = self.awaiting_order.pop_front().unwrap_or_default();
                self.counters.bump(Counter::BatchesNotOrdered);
                if window_full {
                    // Not the requests' fault: keep them, in order, for after the checkpoint.
                    self.window_full = true;
                    for body in &requests {
                        self.pending_set.insert(body.clone());
                    }
                    let later = std::mem::replace(&mut self.pending, requests.into());
                    self.pending.extend(later);
                    self.pending_since_us.get_or_insert(now_us);
                }
            }
            (Execution, Output::Event(Event::Executed { seq, requests, .. })) => {
                self.last_executed = self.last_executed.max(seq);
                self.counters.add(Counter::RequestsExecuted, u64::from(requests));
                tracing::debug_span!("seq", replica = self.me.0, view = self.view, seq)
                    .in_scope(|| tracing::debug!(requests, "batch executed"));
                self.maybe_cut(now_us, out);
            }
            (Preparation, Output::Event(Event::Stable { seq })) => {
                tracing::debug!(replica = self.me.0, seq, "checkpoint stable");
                self.stable = self.stable.max(seq);
                self.window_full = false;
                self.outlog.collect(seq);
                self.maybe_cut(now_us, out);
            }
            (Execution, Output::Event(Event::Stable { seq })) => {
                // Keep the stable snapshot (peers may fetch it) and any newer one.
                self.execution_stable = self.execution_stable.max(seq);
                self.snapshots = self.snapshots.split_off(&self.execution_stable);
                // Progress this replica has not seen itself holds the timer; a checkpoint it
                // executed up to proves nothing about requests still waiting here.
                if self.last_executed < seq {
                    self.timer.progress(now_us);
                }
            }
            (Confirmation, Output::Event(Event::Stable { .. })) => {}
            (Confirmation, Output::Event(Event::ViewChangeStarted { view })) => {
                tracing::debug!(replica = self.me.0, view, "view change started");
                self.counters.bump(Counter::ViewChangesStarted);
                self.timer.restart(now_us);
                self.enter(Confirmation, view, out);
            }
            (kind, Output::Event(Event::Resumed { view, entered, low })) => {
                // A compartment restored from its sealed state, and this broker restarted
                // with it knowing nothing (SPEC §10): take its view, or request timers
                // would suspect a view it left long ago and nothing would move (simulator,
                // power-failure n = 4 seed 5), and its stable checkpoint, or the primary
                // would see no room in the window until a new checkpoint (seed 911). A
                // Confirmation in the middle of a view change sent its ViewChange again
                // just before this.
                tracing::debug!(replica = self.me.0, %kind, view, entered, low, "compartment resumed");
                if kind == Preparation {
                    self.view = self.view.max(view);
                    self.stable = self.stable.max(low);
                    self.last_ordered = self.last_ordered.max(low);
                }
                self.timer.restart(now_us);
                self.enter(kind, view, out);
            }
            (kind, Output::Event(Event::ViewEntered { view })) => {
                tracing::debug!(replica = self.me.0, %kind, view, "view entered");
                if kind == Preparation {
                    self.counters.bump(Counter::ViewsEntered);
                    self.timer.restart(now_us);
                    self.on_new_primary(view, now_us, out);
                }
                self.enter(kind, view, out);
            }
            (Execution, Output::Event(Event::Snapshot { seq, digest, bytes })) => {
                if seq < self.execution_stable {
                    return self.counters.bump(Counter::SnapshotBelowStable);
                }
                self.snapshots.insert(seq, (digest, Bytes::from(bytes)));
                // Checkpoints above the stable one may never be certified (a faulty
                // Execution signs other digests, peers lag): a replica restarted without
                // state can then only fetch the stable one. Evict the oldest newer one.
                while self.snapshots.len() > self.max_snapshots() {
                    let stable = self.execution_stable;
                    let Some(victim) = self.snapshots.keys().copied().find(|s| *s != stable) else { break };
                    self.snapshots.remove(&victim);
                    self.counters.bump(Counter::SnapshotsEvicted);
                }
            }
            (Execution, Output::Event(Event::StateNeeded { seq, digest })) => {
                tracing::debug!(replica = self.me.0, seq, "state transfer needed");
                self.counters.bump(Counter::StateTransfersStarted);
                // The cluster certified a checkpoint ahead of us: it is live.
                self.timer.progress(now_us);
                self.start_state_fetch(seq, digest, now_us, out);
            }
            (Execution, Output::Event(Event::StateRejected { seq })) => {
                self.counters.bump(Counter::StateTransfersRejected);
                if self.fetch.as_ref().is_some_and(|f| f.seq == seq) {
                    self.next_state_peer(now_us, out);
                }
            }
            (Execution, Output::Event(Event::StateRestored { seq })) => {
                self.counters.bump(Counter::StateTransfersCompleted);
                self.timer.forget_waiting();
                // What peers sent while we were behind fell outside our window: ask again.
                out.push(Action::Broadcast(Bytes::from(encode_message(&Message::ResendOutLog))));
                self.last_executed = self.last_executed.max(seq);
                if self.fetch.as_ref().is_some_and(|f| f.seq <= seq) {
                    self.fetch = None;
                }
            }
            (Execution, Output::Event(Event::MissingBatch { seq, digest })) => match self.batches.get(&digest) {
                Some(frame) => {
                    if let Ok(Message::Batch(b)) = decode_message(frame) {
                        Self::to_enclave(Execution, Message::Batch(b), out);
                    }
                }
                None => {
                    self.missing.entry(digest).or_insert((seq, now_us + MISSING_BATCH_GRACE_US));
                }
            },
            (kind, Output::Stats(stats)) => self.stats[kind.index()] = Some(stats),
            (kind, Output::Sealed(state)) => out.push(Action::SealState(kind, state)),
            (Execution, Output::Persist { height, sealed }) => {
                out.push(Action::Persist { height, sealed: Bytes::from(sealed) });
            }
            (_, _) => self.counters.bump(Counter::EnclaveOutputUnexpected),
        }
    }

    /// A local compartment moved to `view`: deliver what was held for it.
    fn enter(&mut self, kind: CompartmentKind, view: View, out: &mut Vec<Action>) {
        let index = kind.index();
        if view <= self.views[index] {
            return;
        }
        self.views[index] = view;
        for input in self.future.release(kind, view) {
            out.push(Action::Enclave(kind, input));
        }
    }

    /// Preparation entered `view`: route requests to its primary. Every request still
    /// waiting here goes to the new primary (it may have been lost with the old one); a
    /// replica that stopped being primary hands its queue over too. Requests the new view
    /// already re-proposed are ordered twice and execute once (SPEC §4.3 dedup).
    fn on_new_primary(&mut self, view: View, now_us: u64, out: &mut Vec<Action>) {
        self.view = self.view.max(view);
        self.window_full = false;
        // What this replica ordered as an earlier view's primary and nobody prepared is
        // gone with that view: counted as in flight, it would stop this replica from
        // cutting a batch when it leads again, and with every replica so (simulator,
        // `power-failure` n = 4 seed 911) the cluster changes view for ever. Preparation
        // reports what it orders in this view; the window check is its own.
        self.last_ordered = self.last_executed.max(self.stable);
        self.pending_set.clear();
        let unverified = std::mem::take(&mut self.unverified).into_iter().map(|(_, body)| body);
        let mut frames: Vec<Bytes> = std::mem::take(&mut self.pending)
            .into_iter()
            .chain(unverified)
            .map(|body| Bytes::from([&[WIRE_VERSION, 0][..], &body].concat()))
            .collect();
        self.pending_since_us = None;
        frames.extend(self.timer.waiting_frames());
        if self.is_primary() {
            for frame in frames {
                match decode_message(&frame) {
                    Ok(Message::Request(request)) => self.enqueue(&request, frame, now_us, out),
                    _ => self.counters.bump(Counter::RequestMalformed),
                }
            }
            self.maybe_cut(now_us, out);
        } else {
            let primary = self.protocol.primary(self.view);
            for frame in frames {
                out.push(Action::Send(primary, frame));
            }
        }
    }

    /// A compartment process died and a fresh one took its place (SPEC §5.1 `process`
    /// backend); inputs the dead one held are lost, and Preparation's unanswered batches go
    /// back to the queue. Without durable state (`resumes_state` false) the fresh one starts
    /// from its configuration: view 0, empty log, genesis state. A restarted primary
    /// Preparation then no longer knows which sequence numbers it assigned in this view, so
    /// the replica suspects its own view at once instead of waiting for the request timers.
    /// Every compartment then catches up through the next checkpoint certificate and
    /// Execution through state transfer (SPEC §4.3); a fresh Preparation or Confirmation
    /// does so behind the recovery fence (SPEC §10), for which it gets a nonce here. With
    /// durable state the fresh one resumes from its sealed records (SPEC §10): it remembers
    /// its sequence numbers, and a suspicion would only move this replica's Confirmation
    /// into a view nobody else is changing to. It still gets a nonce: a state it cannot use
    /// (none, or rolled back) puts it behind the fence.
    pub fn on_enclave_restarted(
        &mut self,
        kind: CompartmentKind,
        resumes_state: bool,
        now_us: u64,
        out: &mut Vec<Action>,
    ) {
        self.counters.bump(Counter::EnclaveRestarts);
        // The dead process's last stats describe nothing that runs: report the compartment
        // as not answering until the new one does.
        self.stats[kind.index()] = None;
        if kind != CompartmentKind::Execution {
            // The fresh process starts behind the recovery fence (SPEC §10): give it a nonce.
            self.send_begin_recovery(kind, out);
        }
        if kind == CompartmentKind::Preparation {
            let lost: Vec<Bytes> = self.awaiting_order.drain(..).flatten().collect();
            for body in lost.into_iter().rev() {
                if self.pending_set.insert(body.clone()) {
                    self.pending.push_front(body);
                }
            }
            if !self.pending.is_empty() {
                self.pending_since_us.get_or_insert(now_us);
            }
            self.window_full = false;
            if self.is_primary() && !resumes_state {
                self.counters.bump(Counter::EnclaveRestartSuspects);
                out.push(Action::Enclave(
                    CompartmentKind::Confirmation,
                    Bytes::from(to_bytes(&Input::Suspect(self.view))),
                ));
            }
        }
    }

    /// Counts a transport-level rejection (oversize frame, bad hello…) reported by the driver.
    pub fn count(&mut self, what: Counter) {
        self.counters.bump(what);
    }

    /// Adds `n` to a driver-side counter (records the driver stored, ...).
    pub fn count_n(&mut self, what: Counter, n: u64) {
        self.counters.add(what, n);
    }

    /// How long the requests executed here waited here (see [`crate::latency`]).
    pub fn latency(&self) -> &LatencyHistogram {
        &self.latency
    }

    /// Broker counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Latest stats reported by a local compartment.
    pub fn enclave_stats(&self, kind: CompartmentKind) -> Option<&Stats> {
        self.stats[kind.index()].as_ref()
    }

    /// Inputs asking every local compartment for its counters.
    pub fn query_stats(out: &mut Vec<Action>) {
        for kind in CompartmentKind::ALL {
            out.push(Action::Enclave(kind, Bytes::from(to_bytes(&Input::QueryStats))));
        }
    }
}

/// The `postcard` encoding of `Vec<Request>` from already-encoded requests.
fn concat_requests(requests: &[Bytes]) -> Vec<u8> {
    let body: usize = requests.iter().map(Bytes::len).sum();
    let mut out = to_bytes(&(requests.len() as u64));
    out.reserve(body);
    for r in requests {
        out.extend_from_slice(r);
    }
    debug_assert!(from_bytes::<Vec<Request>>(&out).is_ok(), "concatenated batch must decode");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use splitbft_types::msg::Mac;
    use splitbft_types::msg::Request;

    fn primary(log_window: u64) -> BrokerCore {
        let mut secrets = splitbft_types::keys::ClusterSecrets::deterministic(1, 1, 1, 1);
        secrets.config.checkpoint_interval = log_window / 2;
        secrets.config.log_window = log_window;
        let mut options = BrokerOptions::new(&secrets.config);
        options.batch_max = 1;
        options.max_inflight = 100;
        options.eager_inflight = 100;
        BrokerCore::new(secrets.config, ReplicaId(0), options)
    }

    fn request_frame(t: u64) -> Bytes {
        request_frame_of(0, t)
    }

    /// A request of client `c` signed like a real client's (the fixture's cluster secrets).
    fn request_frame_of(c: u32, t: u64) -> Bytes {
        let secrets = splitbft_types::keys::ClusterSecrets::deterministic(1, 1, 1, 1);
        let keyring = secrets.config.validate().unwrap();
        let keys = splitbft_types::crypto::ClientKeys::derive(
            &secrets.clients[c as usize],
            &secrets.config,
            &keyring,
            ClientId(c),
        );
        Bytes::from(encode_message(&Message::Request(keys.request(t, vec![1]))))
    }

    /// SPEC §11 byte budgets: a faulty client that signs requests of the largest size with
    /// fresh timestamps fills only its own share of the primary's queue (with two clients,
    /// half of MAX_PENDING_BYTES), counted; a correct client's request still queues and is
    /// ordered first when batches are cut.
    #[test]
    fn a_client_flooding_large_requests_fills_only_its_share_of_the_queue() {
        let secrets = splitbft_types::keys::ClusterSecrets::deterministic(1, 1, 2, 1);
        let keyring = secrets.config.validate().unwrap();
        let keys: Vec<_> = (0..2)
            .map(|c| {
                splitbft_types::crypto::ClientKeys::derive(
                    &secrets.clients[c],
                    &secrets.config,
                    &keyring,
                    ClientId(c as u32),
                )
            })
            .collect();
        let largest = secrets.config.max_op_bytes as usize;
        let mut options = BrokerOptions::new(&secrets.config);
        options.max_inflight = 0; // nothing is cut while the flood arrives
        let mut core = BrokerCore::new(secrets.config.clone(), ReplicaId(0), options);
        let mut out = Vec::new();
        let share = MAX_PENDING_BYTES / 2;
        let frame_len = encode_message(&Message::Request(keys[0].request(1, vec![0; largest]))).len();
        let fits = share / (frame_len - 2);
        for t in 1..=(fits as u64 + 20) {
            let flood = Bytes::from(encode_message(&Message::Request(keys[0].request(t, vec![t as u8; largest]))));
            core.on_client_frame(ClientId(0), flood, 0, &mut out);
            core.verify_queued(0, &mut out);
        }
        // Client 0 filled its share (to within one request) and no more; the rest was dropped.
        let held = core.pending_set.client_bytes(ClientId(0));
        assert!(held <= share && held + frame_len > share, "{held} of {share}");
        assert!(core.pending_set.bytes <= MAX_PENDING_BYTES);
        let dropped = core.counters().get(Counter::RequestsDroppedQueueFull);
        assert!(dropped >= 19, "{:?}", core.counters().to_vec());
        let queued = core.pending.len();
        let genuine = Bytes::from(encode_message(&Message::Request(keys[1].request(1, b"genuine".to_vec()))));
        core.on_client_frame(ClientId(1), genuine, 0, &mut out);
        core.verify_queued(0, &mut out);
        assert_eq!(core.pending.len(), queued + 1, "the correct client's request is queued");
        assert_eq!(core.counters().get(Counter::RequestsDroppedQueueFull), dropped);
        // Batches are cut again: everything queued leaves, and the byte counts return to 0.
        core.options.max_inflight = 1_000;
        core.options.eager_inflight = 1_000;
        core.verify_queued(0, &mut out);
        core.maybe_cut(0, &mut out);
        assert!(core.pending.is_empty() && core.pending_set.is_empty());
        assert_eq!((core.pending_set.bytes, core.pending_set.client_bytes(ClientId(0))), (0, 0));
    }

    fn order_batches(actions: &[Action]) -> Vec<Vec<u8>> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Enclave(CompartmentKind::Preparation, b) => match from_bytes::<Input>(b) {
                    Ok(Input::OrderBatch(batch)) => Some(batch),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    fn event(core: &mut BrokerCore, kind: CompartmentKind, event: Event, out: &mut Vec<Action>) {
        core.on_enclave_outputs(kind, vec![Bytes::from(to_bytes(&Output::Event(event)))], 0, out);
    }

    /// A request still queued at the primary is queued once, however often the client
    /// retransmits it or backups forward it (SPEC §5); once cut, a later copy is queued
    /// again (Preparation's dedup decides, SPEC §4.1 (1)).
    #[test]
    fn retransmissions_of_a_queued_request_are_not_queued_twice() {
        let mut core = primary(8);
        core.options.max_inflight = 1;
        core.options.eager_inflight = 1;
        let mut out = Vec::new();
        core.on_client_frame(ClientId(0), request_frame(1), 0, &mut out);
        core.verify_queued(0, &mut out);
        assert_eq!(order_batches(&out).len(), 1, "cut at once: nothing in flight");
        out.clear();
        for _ in 0..3 {
            core.on_client_frame(ClientId(0), request_frame(2), 0, &mut out);
            core.on_peer_frame(ReplicaId(1), request_frame(2), 0, &mut out);
        }
        core.verify_queued(0, &mut out);
        assert_eq!(core.pending.len(), 1);
        assert_eq!(core.counters().get(Counter::RequestAlreadyPending), 5);
        event(&mut core, CompartmentKind::Preparation, Event::Ordered { view: 0, seq: 1, requests: 1 }, &mut out);
        event(
            &mut core,
            CompartmentKind::Execution,
            Event::Executed { seq: 1, digest: Digest::of(b"1"), requests: 1 },
            &mut out,
        );
        assert_eq!(order_batches(&out).len(), 1, "the one queued copy is cut");
        assert!(core.pending.is_empty() && core.pending_set.is_empty());
        out.clear();
        core.on_client_frame(ClientId(0), request_frame(2), 0, &mut out);
        core.verify_queued(0, &mut out);
        assert_eq!(core.pending.len() + order_batches(&out).len(), 1, "a copy after the cut is queued again");
    }

    /// The primary never offers Preparation more batches than `(h, h + L]` holds, and a
    /// batch refused for a full window is re-queued, not lost (SPEC §4.1 (1), §5).
    #[test]
    fn batches_stay_inside_the_log_window_and_survive_a_full_window() {
        let mut core = primary(4);
        let mut out = Vec::new();
        for t in 1..=10 {
            core.on_client_frame(ClientId(0), request_frame(t), 0, &mut out);
        }
        core.verify_queued(0, &mut out);
        let cut = order_batches(&out);
        assert_eq!(cut.len(), 4, "L = 4 sequence numbers above h = 0");
        out.clear();
        // Preparation orders the first two, then finds its window full (e.g. it disagrees
        // with the broker about h): the third batch's request must come back.
        for seq in 1..=2 {
            event(&mut core, CompartmentKind::Preparation, Event::Ordered { view: 0, seq, requests: 1 }, &mut out);
        }
        event(&mut core, CompartmentKind::Preparation, Event::NotOrdered { window_full: true }, &mut out);
        assert!(order_batches(&out).is_empty(), "no batch while the window is full");
        assert_eq!(core.counters().get(Counter::BatchesNotOrdered), 1);
        // A checkpoint makes room: the re-queued request is cut first.
        event(&mut core, CompartmentKind::Preparation, Event::Stable { seq: 2 }, &mut out);
        let resumed = order_batches(&out);
        assert!(!resumed.is_empty());
        assert_eq!(resumed[0], cut[2], "the refused request is offered again, first");
    }

    /// PBFT's f + 1 rule in the broker counts only validly signed ViewChanges: one faulty
    /// peer cannot speak for others (connections are not authenticated) and force view
    /// changes.
    #[test]
    fn only_signed_view_changes_count_towards_joining_a_view_change() {
        use splitbft_types::crypto::Purpose;
        use splitbft_types::msg::{CheckpointCert, Signed, ViewChange};
        let secrets = splitbft_types::keys::ClusterSecrets::deterministic(1, 1, 1, 1);
        let mut core = BrokerCore::new(secrets.config.clone(), ReplicaId(0), BrokerOptions::new(&secrets.config));
        let vc = |replica: u32, good: bool| {
            let body = ViewChange {
                view: 1,
                replica: ReplicaId(replica),
                stable: CheckpointCert { seq: 0, state: Digest::default(), proof: Vec::new() },
                prepared: Vec::new(),
            };
            let signer = if good { replica } else { 3 };
            let key = secrets.enclave(ReplicaId(signer), CompartmentKind::Confirmation);
            let sig = key.sign(secrets.config.cluster_id, Purpose::ViewChange, &body);
            Bytes::from(encode_message(&Message::ViewChange(Signed { body, sig })))
        };
        let suspects = |actions: &[Action]| {
            actions
                .iter()
                .filter(|a| {
                    matches!(a, Action::Enclave(CompartmentKind::Confirmation, b)
                    if matches!(from_bytes::<Input>(b), Ok(Input::Suspect(_))))
                })
                .count()
        };
        let mut out = Vec::new();
        // Replica 3 forges ViewChanges in the names of replicas 1 and 2.
        core.on_peer_frame(ReplicaId(3), vc(1, false), 0, &mut out);
        core.on_peer_frame(ReplicaId(3), vc(2, false), 0, &mut out);
        assert_eq!(suspects(&out), 0);
        // Two genuine ones (f + 1 = 2) make the broker join.
        core.on_peer_frame(ReplicaId(1), vc(1, true), 0, &mut out);
        assert_eq!(suspects(&out), 0);
        core.on_peer_frame(ReplicaId(2), vc(2, true), 0, &mut out);
        assert_eq!(suspects(&out), 1);
    }

    /// A Byzantine client sends backups requests that can never be ordered — a signature
    /// that does not verify, an op over the limit — with valid MACs. They start no timer,
    /// so they cannot force a view change (issue 12); a genuine request still does.
    #[test]
    fn unorderable_client_requests_start_no_timer() {
        let timeout = 1_000;
        let mut core = backup(timeout);
        let secrets = splitbft_types::keys::ClusterSecrets::deterministic(1, 1, 1, 1);
        let keyring = secrets.config.validate().unwrap();
        let keys =
            splitbft_types::crypto::ClientKeys::derive(&secrets.clients[0], &secrets.config, &keyring, ClientId(0));
        let mut unsigned = keys.request(1, vec![1]);
        unsigned.sig.0[0] ^= 1;
        let oversized = keys.request(2, vec![0; secrets.config.max_op_bytes as usize + 1]);
        let mut out = Vec::new();
        for req in [unsigned, oversized] {
            core.on_client_frame(ClientId(0), Bytes::from(encode_message(&Message::Request(req))), 0, &mut out);
        }
        core.on_tick(10 * timeout, &mut out);
        assert!(!suspected(&out), "an unorderable request made the backup suspect the primary");
        assert_eq!(core.counters().get(Counter::ClientRequestsInadmissible), 2);
        core.on_client_frame(ClientId(0), request_frame(3), 10 * timeout, &mut out);
        core.on_tick(12 * timeout, &mut out);
        assert!(suspected(&out), "a genuine request left unordered must fire the timer");
    }

    /// SPEC §4.3 state transfer: a replica restarted without state asks for the snapshot of
    /// the stable checkpoint its certificate names. Checkpoints above it that never get
    /// certified (a faulty Execution signs other digests) must not evict that snapshot, or
    /// the restarted replica waits for ever (simulator `random` n = 4 seeds 71 and 386).
    #[test]
    fn the_stable_snapshot_is_served_however_many_uncertified_ones_follow() {
        let mut core = primary(16);
        let interval = core.protocol.checkpoint_interval;
        let mut out = Vec::new();
        let snapshot =
            |seq: Seq| Event::Snapshot { seq, digest: Digest::of(&seq.to_le_bytes()), bytes: vec![seq as u8] };
        let chunks = |out: &[Action]| {
            out.iter()
                .filter(|a| {
                    matches!(a, Action::Send(ReplicaId(3), f)
                        if matches!(decode_message(f), Ok(Message::StateChunk(c)) if c.seq == interval))
                })
                .count()
        };
        event(&mut core, CompartmentKind::Execution, snapshot(interval), &mut out);
        event(&mut core, CompartmentKind::Execution, Event::Stable { seq: interval }, &mut out);
        // Execution runs on to the end of its window; none of those checkpoints is certified.
        for k in 2..=3 {
            event(&mut core, CompartmentKind::Execution, snapshot(k * interval), &mut out);
        }
        assert!(core.snapshots.len() <= core.max_snapshots());
        out.clear();
        let request = Message::StateRequest { seq: interval, digest: Digest::of(&interval.to_le_bytes()) };
        core.on_peer_frame(ReplicaId(3), Bytes::from(encode_message(&request)), 0, &mut out);
        assert_eq!(chunks(&out), 1, "the stable checkpoint's snapshot was evicted");
        // Whatever Execution sends, the cache stays bounded and keeps the stable snapshot.
        for k in 4..100 {
            event(&mut core, CompartmentKind::Execution, snapshot(k * interval), &mut out);
        }
        assert_eq!(core.snapshots.len(), core.max_snapshots());
        out.clear();
        // A later request (the same snapshot is served to a peer once per interval, SPEC §11).
        core.on_peer_frame(ReplicaId(3), Bytes::from(encode_message(&request)), 1 + STATE_PEER_TIMEOUT_US, &mut out);
        assert_eq!(chunks(&out), 1);
    }

    /// A backup broker of the fixture cluster (primary(0) = 0) with a request timeout of
    /// `timeout_us`.
    fn backup(timeout_us: u64) -> BrokerCore {
        let secrets = splitbft_types::keys::ClusterSecrets::deterministic(1, 1, 1, 1);
        let mut options = BrokerOptions::new(&secrets.config);
        options.view_change_timeout_us = timeout_us;
        BrokerCore::new(secrets.config, ReplicaId(1), options)
    }

    /// Execution(1)'s reply to `(0, t)` carrying `body` (the broker reads no MAC).
    fn reply(t: u64, body: ReplyBody) -> Bytes {
        let reply = splitbft_types::msg::Reply {
            view: 0,
            client: ClientId(0),
            timestamp: t,
            replica: ReplicaId(1),
            result: to_bytes(&body),
            mac: Mac::default(),
        };
        Bytes::from(to_bytes(&Output::Send(Message::Reply(reply))))
    }

    fn forwarded(actions: &[Action]) -> usize {
        actions.iter().filter(|a| matches!(a, Action::Send(ReplicaId(0), _))).count()
    }

    fn suspected(actions: &[Action]) -> bool {
        actions.iter().any(|a| {
            matches!(a, Action::Enclave(CompartmentKind::Confirmation, b)
                if matches!(from_bytes::<Input>(b), Ok(Input::Suspect(_))))
        })
    }

    /// Issue 11 finding (5), first half: a refusal reply (the op of *some* copy of `(c, t)`
    /// did not open; the timestamp stays unused, SPEC §4.3 (4)) does not mark `(c, t)`
    /// completed. On 106ccbb it did, in every broker, so the genuine request was never
    /// forwarded to the primary again: censorship by one junk copy.
    #[test]
    fn a_refusal_does_not_complete_the_request() {
        use splitbft_types::session::Refusal;
        let mut core = backup(1_000);
        let mut out = Vec::new();
        core.on_client_frame(ClientId(0), request_frame(1), 0, &mut out);
        assert_eq!(forwarded(&out), 1);
        core.on_enclave_outputs(
            CompartmentKind::Execution,
            vec![reply(1, ReplyBody::Refused(Refusal::NotAuthentic))],
            5,
            &mut out,
        );
        out.clear();
        core.on_client_frame(ClientId(0), request_frame(1), 10, &mut out);
        assert_eq!(forwarded(&out), 1, "the genuine request goes to the primary again");
        // A real result completes it: later copies only ask Execution for its cached reply.
        core.on_enclave_outputs(
            CompartmentKind::Execution,
            vec![reply(1, ReplyBody::Sealed(vec![1, 2]))],
            20,
            &mut out,
        );
        out.clear();
        core.on_client_frame(ClientId(0), request_frame(1), 30, &mut out);
        assert_eq!(forwarded(&out), 0);
        assert_eq!(core.counters().get(Counter::ClientRetransmissions), 1);
    }

    /// Issue 11 finding (5), second half: PBFT's timer is per request. A primary that
    /// executes everyone else's requests but never client 0's `t = 1` is suspected once that
    /// request waited `STARVATION_TIMEOUTS` timeouts. On 106ccbb every execution reset the
    /// timer, so it never fired.
    #[test]
    fn a_request_starved_while_others_execute_fires_the_timer() {
        use crate::recovery::STARVATION_TIMEOUTS;
        let timeout = 1_000;
        let mut core = backup(timeout);
        let mut out = Vec::new();
        core.on_client_frame(ClientId(0), request_frame(1), 0, &mut out);
        let mut fired_at = None;
        for step in 1..200u64 {
            let now = step * 100;
            out.clear();
            // Another request arrives and executes within a tenth of a timeout.
            core.on_client_frame(ClientId(0), request_frame(step + 1), now, &mut out);
            core.on_enclave_outputs(
                CompartmentKind::Execution,
                vec![reply(step + 1, ReplyBody::Sealed(vec![0]))],
                now + 50,
                &mut out,
            );
            core.on_tick(now + 50, &mut out);
            if suspected(&out) {
                fired_at = Some(now + 50);
                break;
            }
        }
        let fired_at = fired_at.expect("the starved request never made the broker suspect the primary");
        assert!(
            fired_at >= STARVATION_TIMEOUTS * timeout && fired_at <= STARVATION_TIMEOUTS * timeout + 100,
            "{fired_at}"
        );
    }

    /// Issue 11 finding (6), SPEC §11 "caches check before they keep": on 106ccbb the batch
    /// cache kept frames without checking their hash, a later frame overwrote a kept one,
    /// and any frame naming a missing digest cancelled its fetch. Now junk is dropped before
    /// all three, and the genuine frame is the one served.
    #[test]
    fn the_batch_cache_keeps_only_verified_frames_and_never_replaces_one() {
        use splitbft_types::crypto::Purpose;
        use splitbft_types::msg::{BatchMsg, PrePrepare, Sig, Signed};
        let secrets = splitbft_types::keys::ClusterSecrets::deterministic(1, 1, 1, 1);
        let primary_key = secrets.enclave(ReplicaId(0), CompartmentKind::Preparation);
        let Ok(Message::Request(request)) = decode_message(&request_frame(1)) else { unreachable!("a request frame") };
        let batch = to_bytes(&vec![request]);
        let digest = Digest::of(&batch);
        let signed = |body: PrePrepare| Signed {
            body,
            sig: primary_key.sign(secrets.config.cluster_id, Purpose::PrePrepare, &body),
        };
        let frame = |pre_prepare, batch: &[u8]| {
            Bytes::from(encode_message(&Message::Batch(BatchMsg { pre_prepare, batch: batch.to_vec() })))
        };
        let genuine = frame(signed(PrePrepare { view: 0, seq: 1, digest }), &batch);
        let junk = [
            // Bytes that do not hash to the digest, under a genuine header.
            frame(signed(PrePrepare { view: 0, seq: 1, digest }), b"junk"),
            // The right bytes under a forged header.
            frame(Signed { body: PrePrepare { view: 0, seq: 1, digest }, sig: Sig([7; 64]) }, &batch),
        ];
        // Replica 2 asks for the batch.
        let fetch = |core: &mut BrokerCore, now: u64, out: &mut Vec<Action>| {
            core.on_peer_frame(
                ReplicaId(2),
                Bytes::from(encode_message(&Message::FetchBatch { seq: 1, digest })),
                now,
                out,
            )
        };
        let mut core = backup(1_000);
        let mut out = Vec::new();
        // Execution misses the batch: a fetch is pending.
        core.on_enclave_outputs(
            CompartmentKind::Execution,
            vec![Bytes::from(to_bytes(&Output::Event(Event::MissingBatch { seq: 1, digest })))],
            0,
            &mut out,
        );
        assert_eq!(core.missing_batches(), 1);
        for j in &junk {
            core.on_peer_frame(ReplicaId(3), j.clone(), 1, &mut out);
        }
        assert_eq!(core.missing_batches(), 1, "junk ended the fetch");
        assert_eq!(core.counters().get(Counter::BatchFramesUnverified), 2);
        out.clear();
        fetch(&mut core, 2, &mut out);
        assert!(out.is_empty(), "junk was cached and served");
        core.on_peer_frame(ReplicaId(0), genuine.clone(), 3, &mut out);
        assert_eq!(core.missing_batches(), 0);
        // SPEC §10: the verified frame is logged with the round.
        assert!(out.contains(&Action::LogBatch { seq: 1, frame: genuine.clone() }), "{out:?}");
        // A second verified frame for the digest (the same batch at another seq) does not
        // replace the first; junk never does.
        let other = frame(signed(PrePrepare { view: 0, seq: 2, digest }), &batch);
        for f in [&other, &junk[0], &junk[1]] {
            core.on_peer_frame(ReplicaId(3), f.clone(), 4, &mut out);
        }
        out.clear();
        fetch(&mut core, 5, &mut out);
        assert!(matches!(out.as_slice(), [Action::Send(ReplicaId(2), f)] if *f == genuine), "{out:?}");
        assert_eq!(core.counters().get(Counter::BatchesLogged), 1, "junk or a repeat was logged");
        // A restarted broker takes the logged frame back, checked like a peer's: junk from
        // a tampered disk is refused, the genuine frame is served again.
        let mut restarted = backup(1_000);
        assert!(!restarted.restore_batch(junk[0].clone()));
        assert!(!restarted.restore_batch(junk[1].clone()));
        assert!(restarted.restore_batch(genuine.clone()));
        assert_eq!(restarted.counters().get(Counter::BatchesRestoredUnverified), 2);
        out.clear();
        fetch(&mut restarted, 5, &mut out);
        assert!(matches!(out.as_slice(), [Action::Send(ReplicaId(2), f)] if *f == genuine), "{out:?}");
    }

    /// SPEC §11: a peer reconnecting in a loop (or strangers faking it, before the
    /// handshake) gets the out-log at most once per `RESEND_INTERVAL_US`; the last
    /// reconnection is still served when the interval ends.
    #[test]
    fn reconnections_in_a_loop_resend_the_out_log_at_most_once_per_interval() {
        let mut core = backup(1_000_000);
        let mut out = Vec::new();
        for k in 0..1000 {
            core.on_peer_up(ReplicaId(3), 1 + k * 100, &mut out);
        }
        assert_eq!(core.counters().get(Counter::PeerResends), 1);
        assert_eq!(core.counters().get(Counter::PeerResendsDeferred), 999);
        assert_eq!(core.next_deadline_us(), Some(1 + RESEND_INTERVAL_US));
        core.on_tick(RESEND_INTERVAL_US, &mut out);
        assert_eq!(core.counters().get(Counter::PeerResends), 1, "not due yet");
        core.on_tick(1 + RESEND_INTERVAL_US, &mut out);
        assert_eq!(core.counters().get(Counter::PeerResends), 2, "the deferred resend happens");
        core.on_tick(10 * RESEND_INTERVAL_US, &mut out);
        assert_eq!(core.counters().get(Counter::PeerResends), 2, "and only once");
        // Other peers have their own interval; a reconnection after it resends at once.
        core.on_peer_up(ReplicaId(0), 10 * RESEND_INTERVAL_US, &mut out);
        core.on_peer_up(ReplicaId(3), 10 * RESEND_INTERVAL_US, &mut out);
        assert_eq!(core.counters().get(Counter::PeerResends), 4);
    }

    /// SPEC §11: repeated StateRequests cannot make the replica copy its state again (the
    /// chunks are encoded once and shared) or send it faster than once per interval.
    #[test]
    fn state_requests_neither_copy_the_state_again_nor_flood_a_peer() {
        let mut core = backup(1_000_000);
        let mut out = Vec::new();
        let bytes = vec![5u8; 2 * STATE_CHUNK_BYTES + 10];
        let digest = Digest::of(&bytes);
        event(&mut core, CompartmentKind::Execution, Event::Snapshot { seq: 4, digest, bytes }, &mut out);
        let request = Bytes::from(encode_message(&Message::StateRequest { seq: 4, digest }));
        out.clear();
        for k in 0..100 {
            core.on_peer_frame(ReplicaId(3), request.clone(), 1 + k, &mut out);
        }
        assert_eq!(out.len(), 3, "one serving of three chunks");
        assert_eq!(core.counters().get(Counter::StateRequestsThrottled), 99);
        core.on_peer_frame(ReplicaId(0), request.clone(), 200, &mut out);
        core.on_peer_frame(ReplicaId(3), request, 1 + STATE_PEER_TIMEOUT_US, &mut out);
        assert_eq!(out.len(), 9);
        assert_eq!(core.counters().get(Counter::StateChunksEncoded), 1, "encoded once, shared after");
        let first = |to: u32| {
            out.iter().find_map(|a| match a {
                Action::Send(r, f) if r.0 == to => Some(f.clone()),
                _ => None,
            })
        };
        assert_eq!(first(3).unwrap().as_ptr(), first(0).unwrap().as_ptr(), "the same bytes, not a copy");
    }

    /// Issue 14: a peer alternating `total` used to restart the fetch with every chunk and
    /// keep its deadline alive for ever; now the fetch moves to the next peer.
    #[test]
    fn a_peer_alternating_total_loses_the_state_transfer() {
        let mut core = backup(1_000_000);
        let mut out = Vec::new();
        let digest = Digest::of(b"state");
        event(&mut core, CompartmentKind::Execution, Event::StateNeeded { seq: 8, digest }, &mut out);
        let asked = |out: &[Action]| -> Vec<u32> {
            out.iter()
                .filter_map(|a| match a {
                    Action::Send(r, f) if matches!(decode_message(f), Ok(Message::StateRequest { .. })) => Some(r.0),
                    _ => None,
                })
                .collect()
        };
        let first = asked(&out);
        assert_eq!(first.len(), 1);
        let liar = ReplicaId(first[0]);
        out.clear();
        let chunk = |total, index| {
            let chunk = StateChunk { seq: 8, digest, index, total, bytes: vec![1; 8] };
            Bytes::from(encode_message(&Message::StateChunk(chunk)))
        };
        core.on_peer_frame(liar, chunk(3, 0), 10, &mut out);
        // A duplicate is not progress.
        core.on_peer_frame(liar, chunk(3, 0), 11, &mut out);
        assert_eq!(core.counters().get(Counter::StateChunkDuplicate), 1);
        assert!(asked(&out).is_empty());
        core.on_peer_frame(liar, chunk(4, 1), 12, &mut out);
        assert_eq!(core.counters().get(Counter::StateChunkInconsistent), 1);
        let next = asked(&out);
        assert_eq!(next.len(), 1, "the next peer is asked at once");
        assert_ne!(next[0], liar.0);
        // The liar's later chunks are ignored.
        core.on_peer_frame(liar, chunk(3, 1), 13, &mut out);
        assert_eq!(core.counters().get(Counter::StateChunkUnexpected), 1);
    }

    /// The primary's filter (SPEC §5, §6) checks a round's client signatures together: the
    /// genuine requests are queued in arrival order, a forged one is counted and dropped
    /// without holding up the others, and a genuine copy of the forged request arriving
    /// later is queued (the forgery left nothing behind in the dedup set).
    #[test]
    fn a_forged_signature_drops_only_its_own_request() {
        let mut core = primary(64);
        core.options.eager_inflight = 0;
        core.options.batch_max = 1000;
        let forged = |t: u64| {
            let Ok(Message::Request(mut r)) = decode_message(&request_frame(t)) else { unreachable!("a request") };
            r.sig.0[7] ^= 1;
            Bytes::from(encode_message(&Message::Request(r)))
        };
        let mut out = Vec::new();
        for t in 1..=5 {
            let frame = if t == 3 { forged(t) } else { request_frame(t) };
            core.on_client_frame(ClientId(0), frame, 0, &mut out);
        }
        assert!(core.pending.is_empty(), "nothing is queued before its signature is checked");
        core.verify_queued(0, &mut out);
        assert_eq!(core.counters().get(Counter::RequestsBadSignatureDropped), 1);
        let queued: Vec<Bytes> = core.pending.iter().cloned().collect();
        let expected: Vec<Bytes> = [1, 2, 4, 5].iter().map(|t| request_frame(*t).slice(2..)).collect();
        assert_eq!(queued, expected);
        core.on_peer_frame(ReplicaId(2), request_frame(3), 0, &mut out);
        core.verify_queued(0, &mut out);
        assert_eq!(core.pending.len(), 5, "the genuine copy of request 3 is queued");
        assert_eq!(core.counters().get(Counter::RequestAlreadyPending), 0);
    }

    /// `MAX_SIGNATURE_BATCH` bounds how many requests wait for their signature check: the
    /// request that fills it triggers the check within the round; one fewer waits for the
    /// round's end.
    #[test]
    fn a_full_signature_batch_is_checked_before_the_round_ends() {
        let mut core = primary(64);
        let mut out = Vec::new();
        for t in 1..MAX_SIGNATURE_BATCH as u64 {
            core.on_client_frame(ClientId(0), request_frame(t), 0, &mut out);
        }
        assert!(order_batches(&out).is_empty());
        assert_eq!(core.unverified.len(), MAX_SIGNATURE_BATCH - 1);
        core.on_client_frame(ClientId(0), request_frame(MAX_SIGNATURE_BATCH as u64), 0, &mut out);
        assert!(core.unverified.is_empty());
        assert_eq!(order_batches(&out).len(), MAX_SIGNATURE_BATCH, "batch_max = 1, eager: one batch each");
        assert_eq!(core.counters().get(Counter::SignatureBatches), 1);
    }

    #[test]
    fn concatenated_requests_equal_the_vec_encoding() {
        let reqs: Vec<Request> = (0..300)
            .map(|i| Request {
                client: ClientId(i),
                timestamp: u64::from(i) * 7,
                op: vec![i as u8; i as usize % 13],
                auth: vec![Mac([i as u8; 32]); 4],
                sig: splitbft_types::msg::Sig([i as u8; 64]),
            })
            .collect();
        let frames: Vec<Bytes> =
            reqs.iter().map(|r| Bytes::from(encode_message(&Message::Request(r.clone()))).slice(2..)).collect();
        assert_eq!(concat_requests(&frames), to_bytes(&reqs));
    }

    /// SPEC §10 recovery fence routing: a recovering compartment's query goes to every peer
    /// and to our own Execution; statements go back to the requester's compartment only;
    /// a peer cannot ask in another replica's name, and its queries are rate-limited; the
    /// query is asked again with a new nonce until the horizon is reported.
    #[test]
    fn recovery_queries_and_statements_are_routed_to_the_right_enclaves() {
        use splitbft_types::crypto::Purpose;
        use splitbft_types::msg::Signed;
        use splitbft_types::recovery::{RecoveryQuery, RecoveryStatement};
        use splitbft_types::{CompartmentKind::*, EnclaveId};
        let secrets = splitbft_types::keys::ClusterSecrets::deterministic(1, 1, 1, 1);
        let mut core = BrokerCore::new(secrets.config.clone(), ReplicaId(0), BrokerOptions::new(&secrets.config));
        let mut out = Vec::new();
        core.begin_recovery(42, &mut out);
        let nonces: Vec<u64> = out
            .iter()
            .filter_map(|a| match a {
                Action::Enclave(Preparation | Confirmation, b) => match from_bytes::<Input>(b) {
                    Ok(Input::BeginRecovery { nonce }) => Some(nonce),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        assert_eq!(nonces.len(), 2);
        assert_ne!(nonces[0], nonces[1]);
        out.clear();
        let query =
            RecoveryQuery { requester: EnclaveId { replica: ReplicaId(0), kind: Preparation }, epoch: 1, nonce: 9 };
        core.on_enclave_outputs(
            Preparation,
            vec![Bytes::from(to_bytes(&Output::Send(Message::RecoveryQuery(query))))],
            0,
            &mut out,
        );
        assert!(out.iter().any(|a| matches!(a, Action::Broadcast(_))));
        assert!(out.iter().any(|a| matches!(a, Action::Enclave(Execution, _))));
        assert_eq!(core.next_deadline_us(), Some(RECOVERY_RETRY_US), "asks again unless answered");
        out.clear();
        core.on_tick(RECOVERY_RETRY_US, &mut out);
        assert!(out.iter().any(|a| matches!(a, Action::Enclave(Preparation, _))), "a new nonce");
        assert_eq!(core.counters().get(Counter::RecoveryRetries), 1);
        event(&mut core, Preparation, Event::RecoveryHorizon { horizon: 8 }, &mut out);
        assert_eq!(core.next_deadline_us(), None, "the horizon stops the retries");

        // Peer 1's Preparation asks: our Execution answers, once per interval.
        let peer_query = RecoveryQuery { requester: EnclaveId { replica: ReplicaId(1), kind: Preparation }, ..query };
        let frame = |m: Message| Bytes::from(encode_message(&m));
        out.clear();
        core.on_peer_frame(ReplicaId(1), frame(Message::RecoveryQuery(peer_query)), 0, &mut out);
        core.on_peer_frame(ReplicaId(1), frame(Message::RecoveryQuery(peer_query)), 1, &mut out);
        core.on_peer_frame(ReplicaId(2), frame(Message::RecoveryQuery(peer_query)), 2, &mut out);
        assert_eq!(out.iter().filter(|a| matches!(a, Action::Enclave(Execution, _))).count(), 1);
        assert_eq!(core.counters().get(Counter::RecoveryQueriesThrottled), 1);
        assert_eq!(core.counters().get(Counter::RecoveryQueryNotFromSender), 1);
        // Our Execution's statement for peer 1 goes to peer 1; a peer's statement for our
        // Confirmation goes to our Confirmation; one for another replica goes nowhere.
        let statement = |query: RecoveryQuery| {
            let body = RecoveryStatement { query, replica: ReplicaId(0), checkpoint: 0, view: 0 };
            let sig = secrets.enclave(ReplicaId(0), Execution).sign(
                secrets.config.cluster_id,
                Purpose::RecoveryStatement,
                &body,
            );
            Message::RecoveryStatement(Signed { body, sig })
        };
        out.clear();
        core.on_enclave_outputs(
            Execution,
            vec![Bytes::from(to_bytes(&Output::Send(statement(peer_query))))],
            0,
            &mut out,
        );
        assert!(matches!(out.as_slice(), [Action::Send(ReplicaId(1), _)]));
        out.clear();
        let ours = RecoveryQuery { requester: EnclaveId { replica: ReplicaId(0), kind: Confirmation }, ..query };
        core.on_peer_frame(ReplicaId(2), frame(statement(ours)), 0, &mut out);
        core.on_peer_frame(ReplicaId(2), frame(statement(peer_query)), 0, &mut out);
        assert!(matches!(out.as_slice(), [Action::Enclave(Confirmation, _)]));
        assert_eq!(core.counters().get(Counter::RecoveryStatementNotForUs), 1);
    }
}
