//! Collecting replies into a result (SPEC §6): a pure table of pending requests, no I/O.
//!
//! A result is accepted once `f + 1` authentic replies from distinct replicas carry the
//! same bytes: at least one of them comes from a correct Execution enclave. The table only
//! sees replies whose MAC already verified, so a forger can neither vote nor use up a
//! replica's single vote.

use std::collections::HashMap;

use splitbft_types::msg::Reply;
use splitbft_types::{Timestamp, View};
use tokio::sync::oneshot;

/// What a completed request hands back to its caller.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The result `f + 1` replicas agree on.
    pub(crate) result: Vec<u8>,
    /// A view at least one correct replica has reached: the lowest view among the
    /// matching replies (at most `f` of them can be Byzantine and exaggerate).
    pub(crate) view: View,
}

/// How the table treated one authentic reply.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Counted towards a result that is not yet decided.
    Counted,
    /// Counted and completed the request; send the outcome after releasing the lock.
    Completed(oneshot::Sender<Outcome>, Outcome),
    /// No pending request has this timestamp (already decided, abandoned, or invented).
    UnknownTimestamp,
    /// This replica already replied for this timestamp.
    Duplicate,
}

/// One distinct result and who vouched for it.
#[derive(Debug)]
struct Vote {
    result: Vec<u8>,
    replicas: usize,
    min_view: View,
}

/// A request waiting for its result. Memory is bounded by `n` votes of at most one frame.
#[derive(Debug)]
struct Pending {
    /// `seen[r]`: replica `r` already replied.
    seen: Vec<bool>,
    votes: Vec<Vote>,
    done: oneshot::Sender<Outcome>,
}

/// The client's pending requests, keyed by timestamp.
#[derive(Debug)]
pub(crate) struct PendingTable {
    n: usize,
    weak_quorum: usize,
    closed: bool,
    map: HashMap<Timestamp, Pending>,
}

/// The table was closed by [`PendingTable::close`].
#[derive(Debug)]
pub(crate) struct TableClosed;

impl PendingTable {
    /// An empty table for `n` replicas that decides on `weak_quorum` matching replies.
    pub(crate) fn new(n: usize, weak_quorum: usize) -> Self {
        assert!(weak_quorum >= 1 && weak_quorum <= n, "weak quorum {weak_quorum} out of 1..={n}");
        PendingTable { n, weak_quorum, closed: false, map: HashMap::new() }
    }

    /// Registers a request; its outcome is sent on `done`.
    pub(crate) fn insert(&mut self, timestamp: Timestamp, done: oneshot::Sender<Outcome>) -> Result<(), TableClosed> {
        if self.closed {
            return Err(TableClosed);
        }
        let pending = Pending { seen: vec![false; self.n], votes: Vec::new(), done };
        let previous = self.map.insert(timestamp, pending);
        assert!(previous.is_none(), "timestamp {timestamp} issued twice");
        Ok(())
    }

    /// Forgets a request (completed, timed out or cancelled).
    pub(crate) fn remove(&mut self, timestamp: Timestamp) {
        self.map.remove(&timestamp);
    }

    /// Refuses new requests and drops every waiting one (their callers see the sender gone).
    pub(crate) fn close(&mut self) {
        self.closed = true;
        self.map.clear();
    }

    /// Number of requests waiting.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Counts an authentic reply. The caller checked the client id, that `reply.replica`
    /// is below `n`, and the MAC.
    pub(crate) fn on_reply(&mut self, reply: Reply) -> Verdict {
        let replica = reply.replica.0 as usize;
        assert!(replica < self.n, "caller must range-check the replica index");
        let Some(pending) = self.map.get_mut(&reply.timestamp) else {
            return Verdict::UnknownTimestamp;
        };
        if pending.seen[replica] {
            return Verdict::Duplicate;
        }
        pending.seen[replica] = true;
        let index = match pending.votes.iter().position(|v| v.result == reply.result) {
            Some(index) => index,
            None => {
                pending.votes.push(Vote { result: reply.result, replicas: 0, min_view: reply.view });
                pending.votes.len() - 1
            }
        };
        let vote = &mut pending.votes[index];
        vote.replicas += 1;
        vote.min_view = vote.min_view.min(reply.view);
        if vote.replicas < self.weak_quorum {
            return Verdict::Counted;
        }
        let Some(mut pending) = self.map.remove(&reply.timestamp) else {
            unreachable!("entry was just borrowed");
        };
        let vote = pending.votes.swap_remove(index);
        Verdict::Completed(pending.done, Outcome { result: vote.result, view: vote.min_view })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use splitbft_types::msg::Mac;
    use splitbft_types::{ClientId, ReplicaId};

    fn reply(ts: Timestamp, replica: u32, view: View, result: &[u8]) -> Reply {
        Reply {
            view,
            client: ClientId(0),
            timestamp: ts,
            replica: ReplicaId(replica),
            result: result.to_vec(),
            mac: Mac::default(),
        }
    }

    #[test]
    fn decides_on_f_plus_one_matching_from_distinct_replicas() {
        let mut table = PendingTable::new(4, 2);
        let (tx, _rx) = oneshot::channel();
        table.insert(7, tx).expect("open");
        assert!(matches!(table.on_reply(reply(7, 0, 3, b"a")), Verdict::Counted));
        assert!(matches!(table.on_reply(reply(7, 0, 3, b"a")), Verdict::Duplicate));
        assert!(matches!(table.on_reply(reply(7, 1, 9, b"b")), Verdict::Counted));
        assert!(matches!(table.on_reply(reply(7, 2, 9, b"c")), Verdict::Counted));
        match table.on_reply(reply(7, 3, 5, b"a")) {
            Verdict::Completed(_, outcome) => {
                assert_eq!(outcome.result, b"a");
                assert_eq!(outcome.view, 3, "lowest view among the matching replies");
            }
            other => panic!("expected completion, got {other:?}"),
        }
        assert_eq!(table.len(), 0);
        assert!(matches!(table.on_reply(reply(7, 1, 0, b"a")), Verdict::UnknownTimestamp));
    }

    #[test]
    fn closed_table_refuses_and_drops_waiters() {
        let mut table = PendingTable::new(4, 2);
        let (tx, mut rx) = oneshot::channel();
        table.insert(1, tx).expect("open");
        table.close();
        assert!(rx.try_recv().is_err());
        let (tx, _rx) = oneshot::channel();
        assert!(table.insert(2, tx).is_err());
    }
}
