//! The Execution compartment (SPEC §4.3 handlers (4) (8), §4.4 (9), §9 C3/E1/E2/L1):
//! a batch executes only with a commit certificate (`2f + 1` Commits for one `(v, s, d)`
//! from distinct Confirmation enclaves) and bytes whose SHA-256 is `d`, strictly in
//! sequence order, each `(client, t)` at most once; malformed certified batches are no-ops
//! on every replica alike; every `K` executed sequence numbers a Checkpoint carries the
//! state digest; a checkpoint certificate garbage-collects; memory stays bounded.
//!
//! Fixture: a 4-replica cluster with K = 4, L = 8, two clients, the KV store.

#![allow(clippy::unwrap_used, reason = "test helpers: a failed setup step aborts the test")]

use std::sync::OnceLock;

use serde::Serialize;
use splitbft_apps::kv::{KvOp, KvStore};
use splitbft_execution::Execution;
use splitbft_types::boundary::{Compartment, Event, Input, Output, Stats};
use splitbft_types::codec::to_bytes;
use splitbft_types::config::Keyring;
use splitbft_types::crypto::{ClientKeys, Purpose, SecretKey};
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::msg::{BatchMsg, Checkpoint, Commit, Digest, Message, PrePrepare, Reply, Request, Signed};
use splitbft_types::{ClientId, CompartmentKind, ReplicaId, Seq, Timestamp, View};

pub const K: u64 = 4;
pub const L: u64 = 8;
pub const CLIENTS: usize = 2;

pub struct Fixture {
    pub secrets: ClusterSecrets,
    pub keys: Keyring,
    pub clients: Vec<ClientKeys>,
}

pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut secrets = ClusterSecrets::deterministic(9, 1, CLIENTS, 41);
        secrets.config.checkpoint_interval = K;
        secrets.config.log_window = L;
        let keys = secrets.config.validate().unwrap();
        let clients = (0..CLIENTS)
            .map(|c| ClientKeys::derive(&secrets.clients[c], &secrets.config, &keys, ClientId(c as u32)))
            .collect();
        Fixture { secrets, keys, clients }
    })
}

pub fn execution(me: u32) -> Execution {
    let s = &fixture().secrets;
    let secret = SecretKey::from_seed(s.enclave(ReplicaId(me), CompartmentKind::Execution).seed());
    Execution::new(s.config.clone(), ReplicaId(me), secret, Box::new(KvStore::new())).unwrap()
}

pub fn sign<T: Serialize>(r: u32, kind: CompartmentKind, purpose: Purpose, body: T) -> Signed<T> {
    let s = &fixture().secrets;
    Signed { sig: s.enclave(ReplicaId(r), kind).sign(s.config.cluster_id, purpose, &body), body }
}

/// A KV Put by client `c` at timestamp `t`, authenticated like a real client's.
pub fn put(c: u32, t: Timestamp) -> Request {
    let op = KvOp::Put { key: format!("k{c}").into_bytes(), value: t.to_le_bytes().to_vec() };
    fixture().clients[c as usize].request(t, op.encode())
}

/// A batch message for `(view 0, seq)` over raw bytes, its header signed by primary 0.
pub fn raw_batch(seq: Seq, bytes: Vec<u8>) -> BatchMsg {
    let body = PrePrepare { view: 0, seq, digest: Digest::of(&bytes) };
    BatchMsg { pre_prepare: sign(0, CompartmentKind::Preparation, Purpose::PrePrepare, body), batch: bytes }
}

pub fn batch(seq: Seq, requests: &[Request]) -> BatchMsg {
    raw_batch(seq, to_bytes(requests))
}

pub fn commit(r: u32, view: View, seq: Seq, digest: Digest) -> Message {
    Message::Commit(sign(r, CompartmentKind::Confirmation, Purpose::Commit, Commit { view, seq, digest, replica: ReplicaId(r) }))
}

pub fn checkpoint(r: u32, seq: Seq, state: Digest) -> Message {
    Message::Checkpoint(sign(r, CompartmentKind::Execution, Purpose::Checkpoint, Checkpoint { seq, state, replica: ReplicaId(r) }))
}

pub fn feed(e: &mut Execution, msg: Message) -> Vec<Output> {
    let mut out = Vec::new();
    e.handle(Input::Message(msg), &mut out);
    out
}

pub fn feed_all(e: &mut Execution, msgs: impl IntoIterator<Item = Message>) -> Vec<Output> {
    msgs.into_iter().flat_map(|m| feed(e, m)).collect()
}

/// Delivers `b` and the Commits of Confirmation enclaves 0, 1, 2 for its digest.
pub fn certify_and_deliver(e: &mut Execution, b: &BatchMsg) -> Vec<Output> {
    let (seq, digest) = (b.pre_prepare.body.seq, b.pre_prepare.body.digest);
    let mut out = feed(e, Message::Batch(b.clone()));
    out.extend(feed_all(e, (0..3).map(|r| commit(r, 0, seq, digest))));
    out
}

pub fn executed(out: &[Output]) -> Vec<(Seq, u32)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(Event::Executed { seq, requests }) => Some((*seq, *requests)),
            _ => None,
        })
        .collect()
}

pub fn replies(out: &[Output]) -> Vec<Reply> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(Message::Reply(r)) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

pub fn checkpoints(out: &[Output]) -> Vec<Signed<Checkpoint>> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(Message::Checkpoint(c)) => Some(*c),
            _ => None,
        })
        .collect()
}

pub fn stats(e: &mut Execution) -> Stats {
    let mut out = Vec::new();
    e.handle(Input::QueryStats, &mut out);
    match out.pop() {
        Some(Output::Stats(s)) => s,
        other => panic!("no stats: {other:?}"),
    }
}
