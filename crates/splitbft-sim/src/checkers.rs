//! Safety checkers over a finished run (SPEC §9 S1 and the list).

use std::collections::BTreeMap;

use splitbft_apps::kv::KvStore;
use splitbft_types::codec::from_bytes;
use splitbft_types::dedup::ClientWindow;
use splitbft_types::msg::{Digest, Request};
use splitbft_types::session::{Admission, GroupSecret, Sessions};
use splitbft_types::viewchange::{null_batch, null_digest};
use splitbft_types::{Application, ClientId, ProtocolConfig, Seq, Timestamp};

/// An operation a client saw complete.
#[derive(Clone, Debug)]
pub struct Completed {
    /// Client.
    pub client: ClientId,
    /// Its timestamp.
    pub t: Timestamp,
    /// The op bytes.
    pub op: Vec<u8>,
    /// When the client sent it.
    pub invoked_us: u64,
    /// When it accepted `f + 1` matching replies.
    pub completed_us: u64,
    /// The accepted result.
    pub result: Vec<u8>,
}

/// Completed operations in completion order.
pub type History = Vec<Completed>;

/// S1: no two Execution enclaves executed different batches at one sequence number.
pub fn agreement(executed: &[BTreeMap<Seq, Digest>]) -> Vec<String> {
    let mut agreed: BTreeMap<Seq, (usize, Digest)> = BTreeMap::new();
    let mut violations = Vec::new();
    for (replica, log) in executed.iter().enumerate() {
        for (seq, digest) in log {
            match agreed.get(seq) {
                Some((other, d)) if d != digest => violations.push(format!(
                    "agreement: r{other} executed {d:?} at seq {seq} but r{replica} executed {digest:?}"
                )),
                Some(_) => {}
                None => {
                    agreed.insert(*seq, (replica, *digest));
                }
            }
        }
    }
    violations
}

/// What the replay of the agreed order found.
#[derive(Debug, Default)]
pub struct Replay {
    /// Linearizability violations (safety).
    pub linearizability: Vec<String>,
    /// Executed operations no client issued (validity, SPEC §6).
    pub validity: Vec<String>,
    /// Requests the session layer refused as no-ops.
    pub refused: usize,
}

/// Validity and linearizability: replay the agreed order on a fresh store with the
/// Execution enclave's rules — the session layer decides with the group key what is
/// authentic (SPEC §6), then at most once per `(client, t)` — and every request it lets
/// through must be one a client issued (validity); every accepted result must be the
/// replayed one and the order must respect real time (an op that completed before another
/// was invoked comes first). `issued` holds plaintext ops and Register envelopes.
pub fn linearizable(
    executed: &[BTreeMap<Seq, Digest>],
    batches: &BTreeMap<Digest, Vec<u8>>,
    issued: &BTreeMap<(ClientId, Timestamp), Vec<u8>>,
    history: &History,
    config: &ProtocolConfig,
    group: &GroupSecret,
) -> Replay {
    let keys = config.validate().expect("the simulator builds valid configurations");
    let mut sessions = Sessions::new(keys.clients());
    let mut refused = 0;
    let mut order: BTreeMap<Seq, Digest> = BTreeMap::new();
    for log in executed {
        order.extend(log.iter().map(|(s, d)| (*s, *d)));
    }
    let mut violations = Vec::new();
    let mut validity = Vec::new();
    let mut kv = KvStore::new();
    let mut windows: BTreeMap<ClientId, ClientWindow> = BTreeMap::new();
    let mut replayed: BTreeMap<(ClientId, Timestamp), (usize, Vec<u8>)> = BTreeMap::new();
    let (null, empty) = (null_digest(), null_batch());
    for seq in 1.. {
        let Some(digest) = order.get(&seq) else { break };
        let bytes = if *digest == null {
            &empty
        } else if let Some(b) = batches.get(digest) {
            b
        } else {
            break;
        };
        let requests: Vec<Request> = from_bytes(bytes).unwrap_or_default();
        for req in requests {
            if (req.client.0 as usize) >= keys.clients()
                || windows.entry(req.client).or_default().check(req.timestamp).is_err()
            {
                continue;
            }
            let op = match sessions.admit(config, &keys, group, &req) {
                Admission::Refused(_) => {
                    refused += 1;
                    continue;
                }
                Admission::Registered { .. } => None,
                Admission::Execute(op) => Some(op),
            };
            let what = op.as_ref().unwrap_or(&req.op);
            if issued.get(&(req.client, req.timestamp)) != Some(what) {
                validity.push(format!("validity: seq {seq} executes an op client {} never issued", req.client));
            }
            let _ = windows.entry(req.client).or_default().accept(req.timestamp, config.client_window);
            if let Some(op) = op {
                let result = kv.execute(&op);
                replayed.insert((req.client, req.timestamp), (replayed.len(), result));
            }
        }
    }
    let mut positioned = Vec::new();
    for op in history {
        match replayed.get(&(op.client, op.t)) {
            Some((pos, result)) => {
                if *result != op.result {
                    violations.push(format!(
                        "linearizability: client {} t {} accepted a result the agreed order does not give",
                        op.client, op.t
                    ));
                }
                positioned.push((op.invoked_us, op.completed_us, *pos));
            }
            None => violations.push(format!(
                "linearizability: client {} t {} completed but is not in the agreed order",
                op.client, op.t
            )),
        }
    }
    // Real time: for B, every A that completed before B was invoked has a smaller position.
    positioned.sort_by_key(|(_, completed, _)| *completed);
    let mut prefix_max = Vec::with_capacity(positioned.len());
    let mut best = None;
    for (_, _, pos) in &positioned {
        best = best.max(Some(*pos));
        prefix_max.push(best);
    }
    for (invoked, _, pos) in &positioned {
        let before = positioned.partition_point(|(_, completed, _)| completed < invoked);
        if before > 0 && prefix_max[before - 1].is_some_and(|p| p > *pos) {
            violations.push(format!(
                "linearizability: an op invoked at {invoked} us is ordered before one that had completed"
            ));
        }
    }
    Replay { linearizability: violations, validity, refused }
}
