//! The broker's liveness machinery (SPEC §5): request timers that trigger `Suspect`, the
//! out-log retransmitted to reconnecting peers, a cache of batches served by digest,
//! snapshots served for state transfer, the client of a state transfer, and a buffer for
//! messages of views a compartment has not entered yet. All bounded; none of it can
//! affect safety.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use bytes::Bytes;
use splitbft_types::counters::Counter;
use splitbft_types::msg::Digest;
use splitbft_types::{ClientId, CompartmentKind, ReplicaId, Seq, Timestamp, View};

/// Default request timeout before the broker suspects the primary (doubled for each
/// successive view change without progress, SPEC §4.2 (5)). Long enough that a loaded
/// cluster (p99 ~ 30 ms here) never trips it, short enough to recover in about a second.
pub const DEFAULT_VIEW_CHANGE_TIMEOUT_US: u64 = 500_000;
/// Cap on the doubled timeout.
pub const MAX_VIEW_CHANGE_TIMEOUT_US: u64 = 16_000_000;
/// Requests a broker tracks for its timer; beyond it new ones are not timed (counted).
pub const MAX_TRACKED_REQUESTS: usize = 100_000;
/// Bytes of request frames the timer holds, all clients together (SPEC §11 byte budget);
/// each configured client gets an equal share, so a faulty client that signs junk
/// requests of the largest size fills its own share and nobody else's. 256 MiB: a full
/// window of the largest requests for 60 clients, or of 1 KiB requests for 4,000.
pub const MAX_TRACKED_BYTES: usize = 256 * 1024 * 1024;
/// Recently executed requests remembered to recognise retransmissions.
pub const MAX_COMPLETED_REMEMBERED: usize = 65_536;
/// Batches kept by digest to serve peers that missed them.
pub const MAX_CACHED_BATCHES: usize = 1024;
/// Bytes of batch frames kept (SPEC §11 byte budget): a batch can be ~13 MiB, so the count
/// alone would allow 13 GiB. 256 MiB holds the whole in-flight window of batches of small
/// requests, or about 19 of the largest; the oldest go first.
pub const MAX_CACHED_BATCH_BYTES: usize = 256 * 1024 * 1024;
/// Messages held for views a compartment has not entered yet.
pub const MAX_FUTURE_MESSAGES: usize = 16_384;
/// Bytes of messages held for views a compartment has not entered, shared out equally
/// among the sources (SPEC §11 byte budgets): a few windows of PrePrepares with batches.
pub const MAX_FUTURE_BYTES: usize = 64 * 1024 * 1024;
/// Views ahead of a compartment's own that are held at all. A replica further behind
/// catches up through the view change itself (the `f + 1` join rule and the NewView), so
/// junk for view `u64::MAX` is refused instead of squatting the buffer (issue 14).
pub const MAX_FUTURE_VIEWS_AHEAD: View = 16;
/// Bytes per state-transfer chunk, and the largest snapshot accepted in a state transfer
/// (bounds the reassembly buffer): named with every other limit in
/// [`splitbft_types::limits`] and checked against them at start.
pub use splitbft_types::limits::{MAX_STATE_BYTES, STATE_CHUNK_BYTES};
/// How long to wait for progress from one peer before asking the next.
pub const STATE_PEER_TIMEOUT_US: u64 = 1_000_000;
/// A peer's request to resend the out-log is honoured at most this often (a faulty peer
/// cannot make us amplify traffic).
pub const RESEND_INTERVAL_US: u64 = 200_000;
/// A request that waited this many (current) timeouts since it became known, or since the
/// last view change, makes the timer fire even while other requests execute: PBFT's timer
/// is per request, and a primary that serves everyone else must not starve one client
/// (issue 11 finding 5). Several timeouts, not one, so that a request queued behind an
/// overload is not mistaken for a censored one (a `bench --quick` on a machine loaded 7x
/// saw unbatched requests wait over 2 s, i.e. 4 base timeouts, without any censorship).
pub const STARVATION_TIMEOUTS: u64 = 8;
/// How long a certified-but-missing batch may still arrive by itself before it is fetched.
pub const MISSING_BATCH_GRACE_US: u64 = 20_000;

/// PBFT's request timer: runs while some known request has not executed here. It fires
/// when nothing executed for a timeout while requests wait, or when one request waited
/// [`STARVATION_TIMEOUTS`] timeouts however much else executed.
#[derive(Debug)]
pub struct RequestTimer {
    /// Known, not yet executed requests with their frames (re-routed after a view change)
    /// and when they became known.
    waiting: HashMap<(ClientId, Timestamp), (Bytes, u64)>,
    /// `waiting` ordered by age.
    ages: BTreeSet<(u64, ClientId, Timestamp)>,
    completed: HashSet<(ClientId, Timestamp)>,
    completed_order: VecDeque<(ClientId, Timestamp)>,
    /// Bytes of `waiting` frames per client, and each client's share of
    /// [`MAX_TRACKED_BYTES`].
    client_bytes: HashMap<ClientId, usize>,
    client_share: usize,
    base_us: u64,
    timeout_us: u64,
    /// Deadline of the "nothing executed" rule.
    idle_deadline_us: Option<u64>,
    /// Ages count from here at the earliest (the last view change or fire).
    restarted_us: u64,
}

impl RequestTimer {
    /// A timer with `base_us` as the first timeout, for `clients` configured clients (each
    /// gets an equal share of [`MAX_TRACKED_BYTES`]).
    pub fn new(base_us: u64, clients: usize) -> Self {
        RequestTimer {
            waiting: HashMap::new(),
            ages: BTreeSet::new(),
            completed: HashSet::new(),
            completed_order: VecDeque::new(),
            client_bytes: HashMap::new(),
            client_share: MAX_TRACKED_BYTES / clients.max(1),
            base_us,
            timeout_us: base_us,
            idle_deadline_us: None,
            restarted_us: 0,
        }
    }

    /// Whether `(client, t)` already executed here (a retransmission).
    pub fn completed(&self, key: (ClientId, Timestamp)) -> bool {
        self.completed.contains(&key)
    }

    /// Whether `(client, t)` is known and not yet executed (a retransmission too).
    pub fn waiting(&self, key: (ClientId, Timestamp)) -> bool {
        self.waiting.contains_key(&key)
    }

    /// A request (its client frame) became known at `now`; returns false if it could not
    /// be tracked.
    pub fn track(&mut self, key: (ClientId, Timestamp), frame: Bytes, now_us: u64) -> bool {
        if self.completed.contains(&key) || self.waiting.contains_key(&key) {
            return true;
        }
        let held = self.client_bytes.get(&key.0).copied().unwrap_or(0);
        if self.waiting.len() >= MAX_TRACKED_REQUESTS || held + frame.len() > self.client_share {
            return false;
        }
        self.client_bytes.insert(key.0, held + frame.len());
        self.waiting.insert(key, (frame, now_us));
        self.ages.insert((now_us, key.0, key.1));
        self.idle_deadline_us.get_or_insert(now_us + self.timeout_us);
        true
    }

    /// Stops waiting for `key`; returns when it became known, if it was waited for.
    fn remove(&mut self, key: (ClientId, Timestamp)) -> Option<u64> {
        let (frame, since) = self.waiting.remove(&key)?;
        self.ages.remove(&(since, key.0, key.1));
        if let std::collections::hash_map::Entry::Occupied(mut held) = self.client_bytes.entry(key.0) {
            *held.get_mut() -= frame.len();
            if *held.get() == 0 {
                held.remove();
            }
        }
        Some(since)
    }

    /// Bytes of request frames held, all clients together (at most [`MAX_TRACKED_BYTES`]).
    pub fn bytes(&self) -> usize {
        self.client_bytes.values().sum()
    }

    /// A request executed here: progress, so the "nothing executed" deadline restarts (or
    /// stops if idle). The ages of the other requests do not change. Returns how long it
    /// waited here, if this replica knew it before it executed.
    pub fn executed(&mut self, key: (ClientId, Timestamp), now_us: u64) -> Option<u64> {
        let since = self.remove(key);
        if since.is_some() {
            self.timeout_us = self.base_us;
        }
        if self.completed.insert(key) {
            self.completed_order.push_back(key);
            if self.completed_order.len() > MAX_COMPLETED_REMEMBERED
                && let Some(old) = self.completed_order.pop_front()
            {
                self.completed.remove(&old);
            }
        }
        self.idle_deadline_us = (!self.waiting.is_empty()).then_some(now_us + self.timeout_us);
        since.map(|since| now_us.saturating_sub(since))
    }

    /// A copy of `(client, t)` executed as a no-op whose timestamp stays unused (a refusal,
    /// SPEC §4.3 (4)): the copy this replica holds may be the genuine request or a junk one,
    /// so `(client, t)` is neither completed nor waited for any more; a retransmission is
    /// tracked and forwarded again (issue 11 finding 5: one refusal for a junk copy used to
    /// mark the genuine request completed in every broker).
    pub fn refused(&mut self, key: (ClientId, Timestamp)) {
        self.remove(key);
        if self.waiting.is_empty() {
            self.idle_deadline_us = None;
        }
    }

    /// Evidence that the cluster makes progress without a reply from this replica: a
    /// certificate for a checkpoint this replica is behind. A replica catching up is not
    /// evidence against the primary; suspecting it then would only withdraw this replica's
    /// Commits (C4). Request ages still count: starvation is judged per request.
    pub fn progress(&mut self, now_us: u64) {
        self.timeout_us = self.base_us;
        self.idle_deadline_us = (!self.waiting.is_empty()).then_some(now_us + self.timeout_us);
    }

    /// A snapshot replaced the state: the requests it covers executed without a reply from
    /// this replica, so they would wait forever. Forget them all; clients still waiting
    /// retransmit, which tracks them again.
    pub fn forget_waiting(&mut self) {
        self.waiting.clear();
        self.ages.clear();
        self.client_bytes.clear();
        self.timeout_us = self.base_us;
        self.idle_deadline_us = None;
    }

    /// A view change started or a view was entered: give the next primary a full (already
    /// doubled) timeout before suspecting it too (PBFT's view-change timer).
    pub fn restart(&mut self, now_us: u64) {
        self.restarted_us = now_us;
        if !self.waiting.is_empty() {
            self.idle_deadline_us = Some(now_us + self.timeout_us);
        }
    }

    /// When the oldest waiting request has waited too long.
    fn starvation_deadline_us(&self) -> Option<u64> {
        let (oldest, _, _) = self.ages.first()?;
        Some((*oldest).max(self.restarted_us) + STARVATION_TIMEOUTS * self.timeout_us)
    }

    /// When the timer fires, if running.
    pub fn deadline_us(&self) -> Option<u64> {
        if self.waiting.is_empty() {
            return self.idle_deadline_us;
        }
        [self.idle_deadline_us, self.starvation_deadline_us()].into_iter().flatten().min()
    }

    /// Fires if due: returns true and re-arms with a doubled timeout.
    pub fn fire(&mut self, now_us: u64) -> bool {
        match self.deadline_us() {
            Some(d) if d <= now_us && !self.waiting.is_empty() => {
                self.timeout_us = (self.timeout_us * 2).min(MAX_VIEW_CHANGE_TIMEOUT_US);
                self.idle_deadline_us = Some(now_us + self.timeout_us);
                self.restarted_us = now_us;
                true
            }
            Some(d) if d <= now_us => {
                self.idle_deadline_us = None;
                false
            }
            _ => false,
        }
    }

    /// Requests known and not executed.
    pub fn pending(&self) -> usize {
        self.waiting.len()
    }

    /// Frames of the requests still waiting, oldest timestamps first per client.
    pub fn waiting_frames(&self) -> Vec<Bytes> {
        let mut keys: Vec<_> = self.waiting.keys().copied().collect();
        keys.sort_unstable();
        keys.iter().map(|k| self.waiting[k].0.clone()).collect()
    }
}

/// Frames this replica's compartments sent, kept for peers that reconnect (SPEC §5 out-log):
/// everything above the stable checkpoint, plus the latest ViewChange and NewView.
#[derive(Debug, Default)]
pub struct OutLog {
    by_seq: BTreeMap<Seq, Vec<Bytes>>,
    view_change: Option<Bytes>,
    new_view: Option<Bytes>,
}

impl OutLog {
    /// Remembers a frame about `seq`.
    pub fn push(&mut self, seq: Seq, frame: Bytes) {
        self.by_seq.entry(seq).or_default().push(frame);
    }

    /// Remembers the latest ViewChange.
    pub fn set_view_change(&mut self, frame: Bytes) {
        self.view_change = Some(frame);
    }

    /// Remembers the latest NewView.
    pub fn set_new_view(&mut self, frame: Bytes) {
        self.new_view = Some(frame);
    }

    /// Drops frames at or below the stable checkpoint `seq` (but keeps its Checkpoints,
    /// which a lagging peer needs to learn that checkpoint).
    pub fn collect(&mut self, seq: Seq) {
        let keep = self.by_seq.split_off(&seq);
        self.by_seq = keep;
    }

    /// Everything to resend, views first.
    pub fn frames(&self) -> impl Iterator<Item = &Bytes> {
        self.new_view.iter().chain(self.view_change.iter()).chain(self.by_seq.values().flatten())
    }

    /// Frames held.
    pub fn len(&self) -> usize {
        self.by_seq.values().map(Vec::len).sum::<usize>()
            + self.view_change.iter().count()
            + self.new_view.iter().count()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Batch frames by digest, to serve `FetchBatch` and re-deliver after a view change.
///
/// Caches check before they keep (SPEC §11): the caller files a frame only after checking
/// that its batch hashes to `digest` and its header is the primary's, and the first such
/// frame stays — nothing can replace a kept entry (issue 11 finding 6).
#[derive(Debug, Default)]
pub struct BatchCache {
    frames: HashMap<Digest, (Seq, Bytes)>,
    order: VecDeque<Digest>,
    /// Bytes of `frames`, at most [`MAX_CACHED_BATCH_BYTES`].
    bytes: usize,
}

impl BatchCache {
    /// Keeps a verified batch frame, unless one is kept for `digest` already; the oldest
    /// go while more than [`MAX_CACHED_BATCHES`] or [`MAX_CACHED_BATCH_BYTES`] are kept.
    /// Returns whether the frame is new.
    pub fn insert(&mut self, digest: Digest, seq: Seq, frame: Bytes) -> bool {
        let std::collections::hash_map::Entry::Vacant(slot) = self.frames.entry(digest) else { return false };
        self.bytes += frame.len();
        slot.insert((seq, frame));
        self.order.push_back(digest);
        while self.order.len() > MAX_CACHED_BATCHES || self.bytes > MAX_CACHED_BATCH_BYTES {
            let Some(old) = self.order.pop_front() else { break };
            if let Some((_, frame)) = self.frames.remove(&old) {
                self.bytes -= frame.len();
            }
        }
        true
    }

    /// Bytes of the frames kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// A cached batch frame.
    pub fn get(&self, digest: &Digest) -> Option<&Bytes> {
        self.frames.get(digest).map(|(_, f)| f)
    }
}

/// An ongoing state transfer (the requesting side).
#[derive(Debug)]
pub struct StateFetch {
    /// Checkpoint being fetched.
    pub seq: Seq,
    /// Its certified digest.
    pub digest: Digest,
    /// Peer currently asked.
    pub peer: ReplicaId,
    /// Chunks received from that peer.
    pub chunks: Vec<Option<Vec<u8>>>,
    /// When to give up on that peer.
    pub deadline_us: u64,
}

/// Messages held until a compartment enters their view.
///
/// Bounded per source (each replica, this one included, gets an equal share of
/// [`MAX_FUTURE_MESSAGES`] and [`MAX_FUTURE_BYTES`]) and by distance
/// ([`MAX_FUTURE_VIEWS_AHEAD`]), so one Byzantine peer cannot take the space correct
/// replicas' messages need.
#[derive(Debug)]
pub struct FutureBuffer {
    held: Vec<Held>,
    /// `(items, bytes)` held per source replica.
    per_source: Vec<(usize, usize)>,
}

#[derive(Debug)]
struct Held {
    from: ReplicaId,
    kind: CompartmentKind,
    view: View,
    input: Bytes,
}

/// Why a message was not held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FutureRefusal {
    /// More than [`MAX_FUTURE_VIEWS_AHEAD`] views ahead.
    TooFarAhead,
    /// Its source used up its share.
    SourceFull,
}

impl FutureRefusal {
    /// Counter name.
    pub fn counter(self) -> Counter {
        match self {
            FutureRefusal::TooFarAhead => Counter::FutureMessagesTooFarAhead,
            FutureRefusal::SourceFull => Counter::FutureMessagesDropped,
        }
    }
}

impl FutureBuffer {
    /// A buffer for `n` sources.
    pub fn new(n: usize) -> Self {
        FutureBuffer { held: Vec::new(), per_source: vec![(0, 0); n.max(1)] }
    }

    fn share(&self) -> (usize, usize) {
        let n = self.per_source.len();
        (MAX_FUTURE_MESSAGES / n, MAX_FUTURE_BYTES / n)
    }

    /// Holds an encoded input from `from` for `kind`, now in view `current`, until it
    /// reaches `view`.
    pub fn hold(
        &mut self,
        from: ReplicaId,
        kind: CompartmentKind,
        current: View,
        view: View,
        input: Bytes,
    ) -> Result<(), FutureRefusal> {
        if view > current.saturating_add(MAX_FUTURE_VIEWS_AHEAD) {
            return Err(FutureRefusal::TooFarAhead);
        }
        let (max_items, max_bytes) = self.share();
        let Some((items, bytes)) = self.per_source.get_mut(from.0 as usize) else {
            return Err(FutureRefusal::SourceFull);
        };
        if *items + 1 > max_items || *bytes + input.len() > max_bytes {
            return Err(FutureRefusal::SourceFull);
        }
        *items += 1;
        *bytes += input.len();
        self.held.push(Held { from, kind, view, input });
        Ok(())
    }

    /// Takes the inputs for `kind` at views up to `view` (older ones are dropped: the
    /// compartment would refuse them).
    pub fn release(&mut self, kind: CompartmentKind, view: View) -> Vec<Bytes> {
        let mut ready = Vec::new();
        let per_source = &mut self.per_source;
        self.held.retain(|held| {
            if held.kind != kind || held.view > view {
                return true;
            }
            if let Some((items, bytes)) = per_source.get_mut(held.from.0 as usize) {
                *items -= 1;
                *bytes -= held.input.len();
            }
            if held.view == view {
                ready.push(held.input.clone());
            }
            false
        });
        ready
    }

    /// Inputs held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.per_source.iter().map(|(_, b)| b).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: (ClientId, Timestamp) = (ClientId(1), 1);
    const K2: (ClientId, Timestamp) = (ClientId(1), 2);

    #[test]
    fn timer_fires_after_the_timeout_and_doubles() {
        let mut t = RequestTimer::new(100, 4);
        assert!(t.track(K1, Bytes::new(), 0));
        assert!(!t.fire(99));
        assert!(t.fire(100));
        assert_eq!(t.deadline_us(), Some(300), "second timeout is doubled");
        assert!(!t.fire(299));
        assert!(t.fire(300));
        assert_eq!(t.deadline_us(), Some(700));
    }

    /// A replica that joins a view change (f + 1 rule) just before its own timer would
    /// fire must not suspect the new primary at once: the timer restarts on every view
    /// change (regression: the demo went through five views after one crash).
    #[test]
    fn a_view_change_restarts_the_timer() {
        let mut t = RequestTimer::new(100, 4);
        t.track(K1, Bytes::new(), 0);
        t.restart(95);
        assert!(!t.fire(100));
        assert!(!t.fire(194));
        assert!(t.fire(195));
    }

    /// A replica behind the cluster (new stable checkpoints, a state transfer) does not
    /// suspect the primary for requests it has not executed yet, and requests a restored
    /// snapshot covers stop waiting.
    #[test]
    fn cluster_progress_and_state_transfer_hold_the_timer() {
        let mut t = RequestTimer::new(100, 4);
        t.track(K1, Bytes::new(), 0);
        assert!(t.fire(100), "no progress at all: suspect");
        t.progress(150);
        assert_eq!(t.deadline_us(), Some(250), "a stable checkpoint is progress: base timeout again");
        assert!(!t.fire(249));
        t.track(K2, Bytes::new(), 200);
        t.forget_waiting();
        assert_eq!((t.pending(), t.deadline_us()), (0, None));
        assert!(!t.fire(10_000), "nothing left to wait for after the restore");
        t.progress(10_001);
        assert_eq!(t.deadline_us(), None, "progress does not start an idle timer");
    }

    #[test]
    fn progress_resets_the_timeout_and_an_idle_timer_stops() {
        let mut t = RequestTimer::new(100, 4);
        t.track(K1, Bytes::new(), 0);
        t.track(K2, Bytes::new(), 10);
        assert!(t.fire(100));
        t.executed(K1, 150);
        assert_eq!(t.deadline_us(), Some(250), "back to the base timeout after progress");
        assert!(t.waiting(K2) && !t.waiting(K1) && t.completed(K1));
        t.executed(K2, 160);
        assert_eq!(t.deadline_us(), None);
        assert!(!t.fire(10_000));
        assert!(t.track(K1, Bytes::new(), 200), "a completed request is not tracked again");
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn future_buffer_releases_only_the_entered_view() {
        let mut f = FutureBuffer::new(4);
        let r = ReplicaId(1);
        f.hold(r, CompartmentKind::Confirmation, 0, 2, Bytes::from_static(b"a")).unwrap();
        f.hold(r, CompartmentKind::Confirmation, 0, 3, Bytes::from_static(b"b")).unwrap();
        f.hold(r, CompartmentKind::Execution, 0, 2, Bytes::from_static(b"c")).unwrap();
        assert_eq!(f.release(CompartmentKind::Confirmation, 2), vec![Bytes::from_static(b"a")]);
        assert_eq!(f.len(), 2);
        assert!(f.release(CompartmentKind::Confirmation, 4).is_empty(), "view 3 was skipped: dropped");
        assert_eq!(f.len(), 1);
        assert_eq!(f.bytes(), 1);
    }

    /// Issue 14: junk for view `u64::MAX` cannot squat the buffer, and one source filling
    /// its share leaves the others theirs (f = 2 too: seven sources).
    #[test]
    fn junk_from_one_peer_cannot_squat_the_future_buffer() {
        for n in [4usize, 7] {
            let mut f = FutureBuffer::new(n);
            let junk = |v| (ReplicaId(3), CompartmentKind::Confirmation, 0, v, Bytes::from_static(b"junk"));
            let (from, kind, current, _, input) = junk(0);
            assert_eq!(f.hold(from, kind, current, View::MAX, input.clone()), Err(FutureRefusal::TooFarAhead));
            assert_eq!(
                f.hold(from, kind, current, MAX_FUTURE_VIEWS_AHEAD + 1, input.clone()),
                Err(FutureRefusal::TooFarAhead)
            );
            let mut held = 0;
            while f.hold(from, kind, current, MAX_FUTURE_VIEWS_AHEAD, input.clone()).is_ok() {
                held += 1;
                assert!(held <= MAX_FUTURE_MESSAGES, "unbounded");
            }
            assert_eq!(held, MAX_FUTURE_MESSAGES / n);
            // A correct peer still has its whole share.
            for _ in 0..MAX_FUTURE_MESSAGES / n {
                f.hold(ReplicaId(0), kind, current, 1, input.clone()).unwrap();
            }
            // Bytes are bounded too: one frame larger than a share is refused.
            let big = Bytes::from(vec![0u8; MAX_FUTURE_BYTES / n + 1]);
            assert_eq!(f.hold(ReplicaId(1), kind, current, 1, big), Err(FutureRefusal::SourceFull));
            // Entering view 1 releases the correct peer's messages and frees its share.
            assert_eq!(f.release(kind, 1).len(), MAX_FUTURE_MESSAGES / n);
            f.hold(ReplicaId(0), kind, 1, 2, input).unwrap();
        }
    }

    /// SPEC §11: the timer holds at most a client's share of MAX_TRACKED_BYTES per client (at
    /// the bound and one past it); another client is unaffected, and executed requests give
    /// their bytes back.
    #[test]
    fn the_timer_holds_a_bounded_share_per_client() {
        let mut t = RequestTimer::new(100, 4);
        let share = MAX_TRACKED_BYTES / 4;
        let mib = Bytes::from(vec![0u8; 1 << 20]);
        let per_share = (share / mib.len()) as u64;
        for ts in 1..=per_share {
            assert!(t.track((ClientId(0), ts), mib.clone(), 0), "within the share: {ts}");
        }
        assert_eq!(t.bytes(), share);
        assert!(!t.track((ClientId(0), per_share + 1), Bytes::from_static(b"x"), 0), "one byte past the share");
        assert!(t.track((ClientId(1), 1), mib.clone(), 0), "another client has its own share");
        assert_eq!(t.bytes(), share + mib.len());
        t.executed((ClientId(0), 1), 1);
        assert!(t.track((ClientId(0), per_share + 1), mib.clone(), 1));
        t.refused((ClientId(0), 2));
        t.forget_waiting();
        assert_eq!(t.bytes(), 0);
    }

    /// SPEC §11: the batch cache keeps at most MAX_CACHED_BATCH_BYTES, dropping the oldest.
    #[test]
    fn the_batch_cache_is_bounded_in_bytes() {
        let mut cache = BatchCache::default();
        let big = Bytes::from(vec![0u8; 16 << 20]);
        let kept = MAX_CACHED_BATCH_BYTES / big.len();
        for i in 0..(kept as u64 + 4) {
            cache.insert(Digest::of(&i.to_le_bytes()), i, big.clone());
            assert!(cache.bytes() <= MAX_CACHED_BATCH_BYTES);
        }
        assert_eq!(cache.bytes(), kept * big.len());
        assert!(cache.get(&Digest::of(&3u64.to_le_bytes())).is_none(), "the oldest went");
        assert!(cache.get(&Digest::of(&(kept as u64 + 3).to_le_bytes())).is_some(), "the newest stays");
    }
}
