//! Client counters: every rejected reply is counted by reason (STYLE "safety in the small").

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a client's counters (see [`Client::stats`](crate::Client::stats)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Requests issued (each counted once, however often it was retransmitted).
    pub requests_sent: u64,
    /// Requests that completed with `f + 1` matching replies.
    pub completed: u64,
    /// Requests that gave up with [`ClientError::Timeout`](crate::ClientError::Timeout).
    pub timeouts: u64,
    /// Retransmission rounds (each re-sends one request to every replica).
    pub retransmissions: u64,
    /// Frames not queued because a replica's send queue was full or its connection down.
    pub frames_dropped: u64,
    /// Authentic replies counted towards a result.
    pub replies_accepted: u64,
    /// Replies whose MAC did not verify for the replica they name.
    pub rejected_bad_mac: u64,
    /// Authentic replies for a timestamp with no pending request (late or stale).
    pub rejected_unknown_timestamp: u64,
    /// Replies addressed to another client.
    pub rejected_wrong_client: u64,
    /// Replies naming a replica index outside `0..n`.
    pub rejected_bad_replica: u64,
    /// Frames that did not decode, or decoded as something other than a Reply.
    pub rejected_undecodable: u64,
    /// A second authentic reply from the same replica for the same timestamp.
    pub rejected_duplicate: u64,
    /// Replies whose result did not decrypt or decode under the session (SPEC §6).
    pub rejected_bad_ciphertext: u64,
    /// Refusals a forger can provoke (a copied or made-up request was a no-op): the
    /// genuine request may still execute, so they are not answers.
    pub ignored_refusals: u64,
    /// Connections established (including reconnections).
    pub connections: u64,
    /// Failed connection attempts and connections lost.
    pub connection_errors: u64,
}

impl ClientStats {
    /// Total replies and frames rejected, for all reasons.
    pub fn rejected_total(&self) -> u64 {
        self.rejected_bad_mac
            + self.rejected_unknown_timestamp
            + self.rejected_wrong_client
            + self.rejected_bad_replica
            + self.rejected_undecodable
            + self.rejected_duplicate
            + self.rejected_bad_ciphertext
    }
}

/// Live counters shared by the client's tasks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests_sent: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) retransmissions: AtomicU64,
    pub(crate) frames_dropped: AtomicU64,
    pub(crate) replies_accepted: AtomicU64,
    pub(crate) rejected_bad_mac: AtomicU64,
    pub(crate) rejected_unknown_timestamp: AtomicU64,
    pub(crate) rejected_wrong_client: AtomicU64,
    pub(crate) rejected_bad_replica: AtomicU64,
    pub(crate) rejected_undecodable: AtomicU64,
    pub(crate) rejected_duplicate: AtomicU64,
    pub(crate) rejected_bad_ciphertext: AtomicU64,
    pub(crate) ignored_refusals: AtomicU64,
    pub(crate) connections: AtomicU64,
    pub(crate) connection_errors: AtomicU64,
}

/// Adds one to a counter (counters are statistics; no ordering with other memory needed).
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> ClientStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ClientStats {
            requests_sent: get(&self.requests_sent),
            completed: get(&self.completed),
            timeouts: get(&self.timeouts),
            retransmissions: get(&self.retransmissions),
            frames_dropped: get(&self.frames_dropped),
            replies_accepted: get(&self.replies_accepted),
            rejected_bad_mac: get(&self.rejected_bad_mac),
            rejected_unknown_timestamp: get(&self.rejected_unknown_timestamp),
            rejected_wrong_client: get(&self.rejected_wrong_client),
            rejected_bad_replica: get(&self.rejected_bad_replica),
            rejected_undecodable: get(&self.rejected_undecodable),
            rejected_duplicate: get(&self.rejected_duplicate),
            rejected_bad_ciphertext: get(&self.rejected_bad_ciphertext),
            ignored_refusals: get(&self.ignored_refusals),
            connections: get(&self.connections),
            connection_errors: get(&self.connection_errors),
        }
    }
}
