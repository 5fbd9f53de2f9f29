//! Every size limit in one place, and the check that they agree (SPEC §11 "Limits agree").
//!
//! A limit that disagrees with another turns into a liveness bug far from its cause: an op
//! the application accepts whose reply cannot be framed, a state the store accepts that a
//! restarted replica can never fetch. So the limits are named here, derived from one
//! another where they can be, and [`Limits::check`] runs at start (`replica`, `demo`,
//! `LocalCluster`, every node) and refuses a configuration in which a smaller thing does
//! not fit the larger thing that must carry it, naming both.
//!
//! The `*_OVERHEAD_BYTES` figures are upper bounds of the encodings around a payload
//! (postcard varints at their longest, signatures, MACs, AEAD tags); the tests below encode
//! the largest message of each kind and check it against them.

use crate::config::ProtocolConfig;

/// Largest frame on any connection (SPEC §5 wire, §11). A batch of `B` largest requests
/// and a largest reply must fit it (checked); 16 MiB keeps one frame cheap to buffer per
/// connection while leaving room for `B = 200` requests of 66 KiB.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// Largest sealed Execution snapshot that state transfer fetches and a replica keeps
/// (SPEC §4.3, §10): the whole checkpointed state must fit it (checked), or a replica that
/// falls behind can never catch up. 1 GiB: fetched in [`STATE_CHUNK_BYTES`] chunks.
pub const MAX_STATE_BYTES: usize = 1024 * 1024 * 1024;
/// One state-transfer chunk: a frame carries one (checked), and a lying peer wastes at
/// most one chunk per request.
pub const STATE_CHUNK_BYTES: usize = 1024 * 1024;
/// Largest write-ahead record (SPEC §10): a sealed state image, bounded by
/// [`MAX_STATE_BYTES`], plus its framing.
pub const MAX_WAL_RECORD_BYTES: usize = MAX_STATE_BYTES + 1024 * 1024;
/// Results of one client that Execution keeps for retransmissions, in bytes (besides the
/// count `W`): they are part of every checkpointed snapshot, for every configured client,
/// so they must be bounded in bytes for the snapshot to fit [`MAX_STATE_BYTES`]. The newest
/// result is always kept, whatever its size.
pub const REPLY_CACHE_BYTES_PER_CLIENT: usize = 256 * 1024;

/// A request around its op: client id, timestamp, length prefixes and the client's
/// signature; MACs are counted per replica ([`MAC_ENTRY_BYTES`]).
pub const REQUEST_OVERHEAD_BYTES: usize = 128;
/// One Preparation enclave's MAC entry in a request.
pub const MAC_ENTRY_BYTES: usize = 33;
/// A batch frame around its requests: version, kind, the signed PrePrepare header and
/// length prefixes.
pub const BATCH_OVERHEAD_BYTES: usize = 512;
/// A reply frame around its result: version, kind, view, client, timestamp, replica, the
/// reply body's tag and length, the session AEAD tag and the MAC.
pub const REPLY_OVERHEAD_BYTES: usize = 256;
/// A sealed op around the application's op: body tag, epoch, length and AEAD tag (SPEC §6).
pub const SEALED_OP_OVERHEAD_BYTES: usize = 64;
/// A state chunk frame around its bytes: version, kind, sequence number, digest, index,
/// total and length prefixes.
pub const CHUNK_OVERHEAD_BYTES: usize = 256;
/// Per client in a snapshot besides its cached results: its deduplication window (up to
/// `W` timestamps, 10 bytes each), its session record and length prefixes; per cached
/// result a timestamp and length prefix. Added to [`Limits::snapshot`] per client.
const CLIENT_STATE_OVERHEAD_BYTES: usize = 128;
/// Per cached result or window timestamp.
const PER_TIMESTAMP_BYTES: usize = 16;
/// The Execution snapshot around the application's state: the length prefixes of its four
/// parts and the sealing tag.
const SNAPSHOT_OVERHEAD_BYTES: usize = 256;

/// What an application promises about sizes (SPEC §7): it refuses larger ops and state
/// rather than produce something the rest of the system cannot carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppLimits {
    /// Largest op it accepts, encoded (before sealing).
    pub max_op_bytes: usize,
    /// Largest result `execute` returns, encoded.
    pub max_result_bytes: usize,
    /// Largest snapshot it produces.
    pub max_state_bytes: usize,
}

/// Two limits that do not agree: `what` (`size` bytes) must fit in `within` (`limit`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("limits disagree (SPEC §11): {what} can be {size} bytes, but {within} is {limit} bytes")]
pub struct LimitsError {
    /// The thing that must fit.
    pub what: &'static str,
    /// Its largest size.
    pub size: u64,
    /// What must carry it.
    pub within: &'static str,
    /// Its limit.
    pub limit: u64,
}

/// Every size limit of one deployment, derived from its configuration and application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest op the application accepts, sealed for the client's session.
    pub app_op: usize,
    /// `max_op_bytes` (SPEC §2): the largest op the cluster orders.
    pub op: usize,
    /// The largest request: an op of `max_op_bytes`, `n` MACs and the signature.
    pub request: usize,
    /// The largest batch frame: `B` largest requests.
    pub batch: usize,
    /// The largest result the application returns (a SCAN page at most).
    pub result: usize,
    /// The largest reply frame.
    pub reply: usize,
    /// The largest state-transfer chunk frame.
    pub chunk: usize,
    /// Results cached per client, in bytes: [`REPLY_CACHE_BYTES_PER_CLIENT`] or one
    /// largest result, whichever is larger.
    pub reply_cache: usize,
    /// The largest application snapshot.
    pub app_state: usize,
    /// The largest sealed Execution snapshot: the application's plus, per client, its
    /// window, session and cached results.
    pub snapshot: usize,
    /// [`MAX_STATE_BYTES`].
    pub state_transfer: usize,
    /// The frame limit in use (normally [`MAX_FRAME_BYTES`]).
    pub frame: usize,
    /// [`MAX_WAL_RECORD_BYTES`].
    pub wal_record: usize,
}

impl Limits {
    /// The limits of a cluster configured by `config`, running an application with `app`'s
    /// limits, over frames of at most `frame` bytes.
    pub fn new(config: &ProtocolConfig, app: AppLimits, frame: usize) -> Limits {
        let op = config.max_op_bytes as usize;
        let request = op + config.n() * MAC_ENTRY_BYTES + REQUEST_OVERHEAD_BYTES;
        let window = usize::try_from(config.client_window).unwrap_or(usize::MAX);
        let reply_cache = REPLY_CACHE_BYTES_PER_CLIENT.max(app.max_result_bytes);
        let per_client = CLIENT_STATE_OVERHEAD_BYTES
            .saturating_add(window.saturating_mul(2 * PER_TIMESTAMP_BYTES))
            .saturating_add(reply_cache);
        Limits {
            app_op: app.max_op_bytes + SEALED_OP_OVERHEAD_BYTES,
            op,
            request,
            batch: (config.max_batch as usize).saturating_mul(request).saturating_add(BATCH_OVERHEAD_BYTES),
            result: app.max_result_bytes,
            reply: app.max_result_bytes + REPLY_OVERHEAD_BYTES,
            chunk: STATE_CHUNK_BYTES + CHUNK_OVERHEAD_BYTES,
            reply_cache,
            app_state: app.max_state_bytes,
            snapshot: app
                .max_state_bytes
                .saturating_add(config.clients.len().saturating_mul(per_client))
                .saturating_add(SNAPSHOT_OVERHEAD_BYTES),
            state_transfer: MAX_STATE_BYTES,
            frame,
            wal_record: MAX_WAL_RECORD_BYTES,
        }
    }

    /// Checks that every limit fits what carries it; the first disagreement is the error.
    pub fn check(&self) -> Result<(), LimitsError> {
        let pairs: [(&'static str, usize, &'static str, usize); 7] = [
            ("the largest op the application accepts, sealed", self.app_op, "max_op_bytes", self.op),
            ("a request (max_op_bytes, n MACs, signature)", self.request, "the frame limit", self.frame),
            ("a batch (max_batch largest requests)", self.batch, "the frame limit", self.frame),
            ("a reply (the application's largest result)", self.reply, "the frame limit", self.frame),
            ("a state-transfer chunk", self.chunk, "the frame limit", self.frame),
            (
                "the Execution snapshot (application state and every client's window and reply cache)",
                self.snapshot,
                "the state-transfer limit",
                self.state_transfer,
            ),
            ("the state-transfer limit", self.state_transfer, "the write-ahead record limit", self.wal_record),
        ];
        for (what, size, within, limit) in pairs {
            if size > limit {
                return Err(LimitsError { what, size: size as u64, within, limit: limit as u64 });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::codec::to_bytes;
    use crate::keys::ClusterSecrets;
    use crate::msg::{Message, Reply, Request};
    use crate::session::ReplyBody;
    use crate::{ClientId, ReplicaId};

    fn app(result: usize, state: usize) -> AppLimits {
        AppLimits { max_op_bytes: 1024, max_result_bytes: result, max_state_bytes: state }
    }

    /// A request and a reply of the largest sizes encode within the overheads assumed here,
    /// at n = 4 and n = 7.
    #[test]
    fn the_overheads_bound_the_encodings() {
        for f in [1, 2] {
            let config = ClusterSecrets::deterministic(3, f, 1, 1).config;
            let limits = Limits::new(&config, app(100_000, 0), MAX_FRAME_BYTES);
            let request = Request {
                client: ClientId(u32::MAX),
                timestamp: u64::MAX,
                op: vec![0xff; limits.op],
                auth: vec![Default::default(); config.n()],
                sig: crate::crypto::SecretKey::from_seed([1; 32]).sign(1, crate::crypto::Purpose::ClientRequest, &1u8),
            };
            let frame = crate::codec::encode_message(&Message::Request(request));
            assert!(frame.len() <= limits.request, "{} > {}", frame.len(), limits.request);
            let body = to_bytes(&ReplyBody::Sealed(vec![0xff; limits.result + 16]));
            let reply = Reply {
                view: u64::MAX,
                client: ClientId(u32::MAX),
                timestamp: u64::MAX,
                replica: ReplicaId(u32::MAX),
                result: body,
                mac: Default::default(),
            };
            let frame = crate::codec::encode_message(&Message::Reply(reply));
            assert!(frame.len() <= limits.reply, "{} > {}", frame.len(), limits.reply);
        }
    }

    /// The defaults agree, and each disagreement is reported with the two limits' names.
    #[test]
    fn disagreeing_limits_are_named() {
        let config = ClusterSecrets::deterministic(3, 1, 10, 1).config;
        assert_eq!(Limits::new(&config, app(1 << 20, 512 << 20), MAX_FRAME_BYTES).check(), Ok(()));
        // A result one reply overhead past the frame, and one at it.
        let at = MAX_FRAME_BYTES - REPLY_OVERHEAD_BYTES;
        assert!(Limits::new(&config, app(at, 0), MAX_FRAME_BYTES).check().is_ok());
        let e = Limits::new(&config, app(at + 1, 0), MAX_FRAME_BYTES).check().unwrap_err();
        assert_eq!((e.what, e.within), ("a reply (the application's largest result)", "the frame limit"));
        // An application state that, with the clients' caches, does not fit state transfer.
        let e = Limits::new(&config, app(1024, MAX_STATE_BYTES), MAX_FRAME_BYTES).check().unwrap_err();
        assert_eq!(e.within, "the state-transfer limit");
        assert!(e.to_string().contains("the Execution snapshot"), "{e}");
        // A batch of max_batch requests that does not fit a smaller frame.
        let mut big = config.clone();
        big.max_batch = 1000;
        let e = Limits::new(&big, app(1024, 0), MAX_FRAME_BYTES).check().unwrap_err();
        assert_eq!((e.what, e.within), ("a batch (max_batch largest requests)", "the frame limit"));
        // An op limit below what the application accepts.
        let mut small = config.clone();
        small.max_op_bytes = 1000;
        let e = Limits::new(&small, app(1024, 0), MAX_FRAME_BYTES).check().unwrap_err();
        assert_eq!(e.within, "max_op_bytes");
        // Many clients: every one's reply cache is in every snapshot.
        let mut many = config;
        many.clients = vec![many.clients[0]; 5000];
        let e = Limits::new(&many, app(1024, 0), MAX_FRAME_BYTES).check().unwrap_err();
        assert_eq!(e.within, "the state-transfer limit");
    }
}
