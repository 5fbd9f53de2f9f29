//! The paper's view-change corner case (Messadi et al., §4; SPEC §4.1 (7), §4.2 (7'),
//! §1.1, §9 S1/P3/C2): a Byzantine Preparation enclave of the new primary sends a NewView
//! whose `O` carries a FALSE PrePrepare — a digest other than the one prepared in the old
//! view — correctly signed with its own key. Confirmation and Execution enclaves accept
//! it (they do not recompute `O`), correct Preparation enclaves refuse it
//! (`new_view_wrong_o`), so no correct Preparation sends a Prepare for the false digest, no
//! Confirmation commits it, and no Execution executes it. The request prepared in view 0
//! survives: every correct Execution enclave executes the same batches at the same
//! sequence numbers, and the false batch never.
//!
//! The cluster is [`LocalCluster`] (production broker and compartments on the inline
//! backend). The Byzantine parties are simulated on the wire: every NewView that replica 1
//! sends for view 1 is replaced by the forged one, and forged messages are injected with
//! `inject`. Fixture: 4 replicas (f = 1), K = 4, L = 8.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use common::{SealedClient, open, sealed_clients};
use serde::Serialize;
use splitbft_apps::kv::{KvOp, KvResult, KvStore};
use splitbft_broker::BrokerOptions;
use splitbft_broker::local::LocalCluster;
use splitbft_types::boundary::Stats;
use splitbft_types::codec::{decode_message, encode_message, to_bytes};
use splitbft_types::counters::Counter;
use splitbft_types::crypto::Purpose;
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::msg::{BatchMsg, Commit, Digest, Message, NewView, PrePrepare, Prepare, Reply, Request, Signed};
use splitbft_types::{ClientId, CompartmentKind, ReplicaId, Seq, View};

use CompartmentKind::{Confirmation, Execution, Preparation};

const TIMEOUT_US: u64 = 500_000;
/// The new primary of view 1, whose Preparation enclave is Byzantine.
const BYZANTINE_PRIMARY: ReplicaId = ReplicaId(1);

struct World {
    secrets: ClusterSecrets,
    cluster: LocalCluster,
    clients: Vec<SealedClient>,
    /// The request prepared in view 0 and the false batch replacing it.
    honest: Request,
    false_batch: Vec<u8>,
    /// Replicas that receive the forged NewView instead of the genuine one.
    fooled: BTreeSet<ReplicaId>,
    /// Drop every Commit frame on the wire (view 0 of the scenario).
    drop_commits: bool,
    /// Whether replica 2's Confirmation enclave is Byzantine too (commits the false digest).
    byzantine_confirmation: bool,
    forged_sent: usize,
    /// Frames we put on the wire as Byzantine parties (not counted as correct behaviour).
    injected: BTreeSet<Bytes>,
    /// What correct parties sent: Prepares and Commits by `(view, seq, digest)` with their
    /// senders, and every Checkpoint `(seq) -> {(replica, state)}`.
    prepares: BTreeMap<(View, Seq, Digest), BTreeSet<ReplicaId>>,
    commits: BTreeMap<(View, Seq, Digest), BTreeSet<ReplicaId>>,
    checkpoints: BTreeMap<Seq, BTreeSet<(ReplicaId, Digest)>>,
    replies: Vec<Reply>,
}

fn put(key: &SealedClient, t: u64, k: &str, v: &str) -> Request {
    key.request(t, KvOp::Put { key: k.as_bytes().to_vec(), value: v.as_bytes().to_vec() }.encode())
}

impl World {
    fn new(fooled: &[u32], byzantine_confirmation: bool) -> World {
        let mut secrets = ClusterSecrets::deterministic(31, 1, 2, 3);
        secrets.config.checkpoint_interval = 4;
        secrets.config.log_window = 8;
        let mut options = BrokerOptions::new(&secrets.config);
        options.batch_max = 3;
        options.view_change_timeout_us = TIMEOUT_US;
        let mut cluster = LocalCluster::new(&secrets, || Box::new(KvStore::new()), options);
        let clients = sealed_clients(&mut cluster, &secrets);
        let honest = put(&clients[0], 1, "once", "honest");
        // A genuine, client-authenticated request of another client writing the same key:
        // executing it instead would be visible in the state and in the replies.
        let false_batch = to_bytes(&vec![put(&clients[1], 1, "once", "forged")]);
        World {
            secrets,
            cluster,
            clients,
            honest,
            false_batch,
            fooled: fooled.iter().map(|r| ReplicaId(*r)).collect(),
            drop_commits: false,
            byzantine_confirmation,
            forged_sent: 0,
            injected: BTreeSet::new(),
            prepares: BTreeMap::new(),
            commits: BTreeMap::new(),
            checkpoints: BTreeMap::new(),
            replies: Vec::new(),
        }
    }

    fn false_digest(&self) -> Digest {
        Digest::of(&self.false_batch)
    }

    fn honest_digest(&self) -> Digest {
        Digest::of(&to_bytes(&vec![self.honest.clone()]))
    }

    fn sign<T: Serialize>(&self, r: ReplicaId, kind: CompartmentKind, purpose: Purpose, body: T) -> Signed<T> {
        Signed { sig: self.secrets.enclave(r, kind).sign(self.secrets.config.cluster_id, purpose, &body), body }
    }

    /// The Byzantine primary's NewView: the genuine ViewChanges, and an `O` where every
    /// entry that carried the honest digest carries the false one, all correctly signed
    /// by replica 1's Preparation enclave.
    fn forge(&self, genuine: &Signed<NewView>) -> Signed<NewView> {
        let mut body = genuine.body.clone();
        let mut replaced = 0;
        for pp in &mut body.pre_prepares {
            if pp.body.digest == self.honest_digest() {
                let forged = PrePrepare { digest: self.false_digest(), ..pp.body };
                *pp = self.sign(BYZANTINE_PRIMARY, Preparation, Purpose::PrePrepare, forged);
                replaced += 1;
            }
        }
        assert_eq!(replaced, 1, "the genuine O must re-propose the request prepared in view 0: {body:?}");
        self.sign(BYZANTINE_PRIMARY, Preparation, Purpose::NewView, body)
    }

    /// Puts a Byzantine party's message on the wire from `from` to `to`.
    fn inject(&mut self, from: ReplicaId, to: ReplicaId, msg: &Message) {
        let frame = Bytes::from(encode_message(msg));
        self.injected.insert(frame.clone());
        self.cluster.inject(from, to, frame);
    }

    /// Everything else the Byzantine replica 1 (Preparation) — and, if enabled, a
    /// Byzantine Confirmation enclave on replica 2 — can add for the false digest: the
    /// batch bytes, a "Prepare" by the primary, a Prepare forged in replica 3's name, and a
    /// Commit. (Safety must hold with one faulty enclave of each kind, SPEC §1.1.)
    fn byzantine_extras(&mut self, to: ReplicaId) {
        let pp = PrePrepare { view: 1, seq: 1, digest: self.false_digest() };
        let batch = BatchMsg {
            pre_prepare: self.sign(BYZANTINE_PRIMARY, Preparation, Purpose::PrePrepare, pp),
            batch: self.false_batch.clone(),
        };
        self.inject(BYZANTINE_PRIMARY, to, &Message::Batch(batch));
        let own = Prepare { view: 1, seq: 1, digest: pp.digest, replica: BYZANTINE_PRIMARY };
        let own = self.sign(BYZANTINE_PRIMARY, Preparation, Purpose::Prepare, own);
        self.inject(BYZANTINE_PRIMARY, to, &Message::Prepare(own));
        let in_3s_name = Prepare { view: 1, seq: 1, digest: pp.digest, replica: ReplicaId(3) };
        let in_3s_name = self.sign(BYZANTINE_PRIMARY, Preparation, Purpose::Prepare, in_3s_name);
        self.inject(BYZANTINE_PRIMARY, to, &Message::Prepare(in_3s_name));
        if self.byzantine_confirmation && to != ReplicaId(2) {
            let commit = Commit { view: 1, seq: 1, digest: pp.digest, replica: ReplicaId(2) };
            let commit = self.sign(ReplicaId(2), Confirmation, Purpose::Commit, commit);
            self.inject(ReplicaId(2), to, &Message::Commit(commit));
        }
    }

    /// Delivers frames until the network is quiet, playing the Byzantine parties and
    /// recording what correct parties send.
    fn pump(&mut self) {
        while let Some(mut packet) = self.cluster.network.pop_front() {
            let msg = decode_message(&packet.frame).unwrap();
            let injected = self.injected.contains(&packet.frame);
            match &msg {
                Message::Commit(_) if self.drop_commits => continue,
                Message::NewView(nv)
                    if packet.from == BYZANTINE_PRIMARY
                        && nv.body.view == 1
                        && !injected
                        && self.fooled.contains(&packet.to) =>
                {
                    let forged = self.forge(nv);
                    let frame = Bytes::from(encode_message(&Message::NewView(forged)));
                    self.injected.insert(frame.clone());
                    packet.frame = frame;
                    self.forged_sent += 1;
                    self.byzantine_extras(packet.to);
                }
                Message::Prepare(p) if !injected => {
                    self.prepares.entry((p.body.view, p.body.seq, p.body.digest)).or_default().insert(p.body.replica);
                }
                Message::Commit(c) if !injected => {
                    self.commits.entry((c.body.view, c.body.seq, c.body.digest)).or_default().insert(c.body.replica);
                }
                Message::Checkpoint(c) => {
                    self.checkpoints.entry(c.body.seq).or_default().insert((c.body.replica, c.body.state));
                }
                _ => {}
            }
            self.cluster.network.push_front(packet);
            self.cluster.step();
        }
        self.replies.extend(self.cluster.take_replies());
    }

    /// Pumps and advances simulated time in 50 ms steps up to `until_us`.
    fn settle(&mut self, until_us: u64) {
        while self.cluster.now_us() < until_us {
            self.pump();
            self.cluster.advance(50_000);
        }
        self.pump();
    }

    fn send_to_all(&mut self, request: &Request) {
        for r in 0..4 {
            self.cluster.client_sends(ReplicaId(r), request);
        }
    }

    fn stats(&mut self, r: u32, kind: CompartmentKind) -> Stats {
        self.cluster.stats(ReplicaId(r), kind)
    }

    /// Results with `f + 1` matching replies from distinct replicas.
    fn completed(&self) -> BTreeMap<(ClientId, u64), Vec<u8>> {
        let mut votes: BTreeMap<(ClientId, u64, Vec<u8>), BTreeSet<ReplicaId>> = BTreeMap::new();
        for r in &self.replies {
            votes.entry((r.client, r.timestamp, open(&self.clients, r))).or_default().insert(r.replica);
        }
        votes.into_iter().filter(|(_, rs)| rs.len() >= 2).map(|((c, t, res), _)| ((c, t), res)).collect()
    }

    /// View 0: the honest request is ordered at seq 1 and prepared everywhere, but every
    /// Commit is lost, so nothing executes and the request is in every ViewChange.
    fn prepare_in_view_0_without_committing(&mut self) {
        let honest = self.honest.clone();
        self.send_to_all(&honest);
        self.drop_commits = true;
        self.pump();
        self.drop_commits = false;
        let key = (0, 1, self.honest_digest());
        assert_eq!(self.prepares.get(&key).map(BTreeSet::len), Some(3), "prepared in view 0: {:?}", self.prepares);
        for r in 0..4 {
            assert_eq!(self.stats(r, Execution).get(Counter::RequestsExecuted), 0);
        }
    }

    /// The safety checks of SPEC §1.1 / §9 S1 at the end of a run.
    fn assert_safe(&mut self) {
        let false_digest = self.false_digest();
        // No correct Preparation enclave prepared the false digest; no Confirmation
        // enclave committed it (only the injected Byzantine Commit exists).
        let prepared_false: Vec<_> = self.prepares.iter().filter(|((_, _, d), _)| *d == false_digest).collect();
        assert!(prepared_false.is_empty(), "Prepares for the false digest: {prepared_false:?}");
        let committed_false: Vec<_> = self.commits.iter().filter(|((_, _, d), _)| *d == false_digest).collect();
        assert!(committed_false.is_empty(), "Commits for the false digest: {committed_false:?}");
        // C1 across the run: one digest per (v, s) among Commits of correct enclaves, and
        // one digest per s among commit certificates of any view.
        let mut certified: BTreeMap<Seq, BTreeSet<Digest>> = BTreeMap::new();
        for ((_, s, d), senders) in &self.commits {
            if senders.len() >= 3 {
                certified.entry(*s).or_default().insert(*d);
            }
        }
        for (s, digests) in &certified {
            assert_eq!(digests.len(), 1, "two digests certified at seq {s}: {digests:?}");
        }
        assert_eq!(certified.get(&1), Some(&BTreeSet::from([self.honest_digest()])), "seq 1 is the honest request");
        // Every Execution enclave: same history (executed count, app state), the honest
        // request executed once, the false one never.
        let execs: Vec<Stats> = (0..4).map(|r| self.stats(r, Execution)).collect();
        for (r, s) in execs.iter().enumerate() {
            assert_eq!(s.last_executed, execs[0].last_executed, "r{r}: {s:?}");
            assert_eq!(s.get(Counter::RequestsExecuted), execs[0].get(Counter::RequestsExecuted), "r{r}");
        }
        // Same state at every checkpoint any Execution enclave signed.
        for (seq, signed) in &self.checkpoints {
            let states: BTreeSet<Digest> = signed.iter().map(|(_, d)| *d).collect();
            assert_eq!(states.len(), 1, "checkpoint {seq}: {signed:?}");
        }
        // The client of the false request never got an answer for it.
        assert!(
            !self.replies.iter().any(|r| r.client == ClientId(1) && r.timestamp == 1),
            "the false request executed somewhere"
        );
        let done = self.completed();
        assert_eq!(
            KvResult::decode(&done[&(ClientId(0), 1)]).unwrap(),
            KvResult::Stored { previous: None },
            "the request prepared in view 0 completed"
        );
    }

    /// After the run: a read of the key shows the honest value, and a few more writes reach
    /// a checkpoint signed with the same state by every replica.
    fn read_back_and_checkpoint(&mut self) {
        let key = self.clients[0].clone();
        let get = key.request(2, KvOp::Get { key: b"once".to_vec() }.encode());
        self.send_to_all(&get);
        for t in 3..=7 {
            let request = put(&key, t, &format!("more{t}"), "x");
            self.send_to_all(&request);
            let until = self.cluster.now_us() + 100_000;
            self.settle(until);
        }
        let done = self.completed();
        assert_eq!(KvResult::decode(&done[&(ClientId(0), 2)]).unwrap(), KvResult::Value(Some(b"honest".to_vec())));
        let signed = self.checkpoints.get(&4).cloned().unwrap_or_default();
        assert!(signed.len() >= 3, "checkpoint 4 signed by {signed:?}");
        self.assert_safe();
    }
}

/// Paper §4 corner case, SPEC §4.1 (7) / §4.2 (7'): the Byzantine primary of view 1 sends
/// the forged NewView to every other replica (and the false batch, a Prepare of its own,
/// a Prepare forged in replica 3's name, and a Byzantine Confirmation's Commit). Other
/// replicas' Confirmation and Execution enclaves enter view 1 with the false `O`; their
/// Preparation enclaves refuse it and stay in view 0; nothing commits in view 1, the
/// request timers expire, view 2's correct primary re-proposes the honest request, and it
/// executes at seq 1 everywhere.
#[test]
fn a_forged_new_view_is_entered_by_confirmation_and_execution_but_never_prepared() {
    let mut w = World::new(&[0, 2, 3], true);
    w.prepare_in_view_0_without_committing();

    // Request timers expire everywhere: view change to 1; the forged NewView goes out.
    w.cluster.advance(TIMEOUT_US);
    w.pump();
    assert_eq!(w.forged_sent, 3, "the genuine NewView of replica 1 must have been sent and replaced");
    for r in [0, 2, 3] {
        let prep = w.stats(r, Preparation);
        assert_eq!((prep.view, prep.get(Counter::NewViewWrongO)), (0, 1), "r{r} Preparation: {prep:?}");
        // Confirmation and Execution do not recompute O: they are in view 1 (paper §4).
        let conf = w.stats(r, Confirmation);
        assert_eq!((conf.view, conf.get(Counter::ViewsEntered)), (1, 1), "r{r} Confirmation: {conf:?}");
        assert_eq!(w.stats(r, Execution).view, 1, "r{r} Execution");
    }
    for r in 0..4 {
        assert_eq!(w.stats(r, Execution).get(Counter::RequestsExecuted), 0, "r{r} executed something in view 1");
    }
    let false_key = (1, 1, w.false_digest());
    assert!(!w.prepares.contains_key(&false_key), "a correct Preparation prepared the false digest");
    assert!(!w.commits.contains_key(&false_key), "a correct Confirmation committed the false digest");

    // Nothing progresses in view 1: the timers expire again and view 2 (primary 2, correct)
    // re-proposes what was prepared in view 0.
    let until = w.cluster.now_us() + 4 * TIMEOUT_US;
    w.settle(until);
    for r in 0..4 {
        assert_eq!(w.stats(r, Preparation).view, 2, "r{r} Preparation did not reach view 2");
    }
    let view_2 = (2, 1, w.honest_digest());
    assert!(w.commits.get(&view_2).is_some_and(|s| s.len() >= 3), "the honest request commits at 1 in view 2");
    for r in 0..4 {
        assert_eq!(w.stats(r, Execution).get(Counter::RequestsExecuted), 1, "r{r}");
    }
    w.assert_safe();
    w.read_back_and_checkpoint();
}

/// The same Byzantine primary equivocates: replica 0 gets the forged NewView, replicas 2
/// and 3 the genuine one. Only replica 1 is faulty here, so liveness must hold too (SPEC
/// §1.1); with a second faulty replica (a Byzantine Confirmation on replica 2 voting for
/// the false digest first) replica 0's Execution would lack a commit certificate for seq
/// 1 and catch up only by state transfer — allowed, as liveness assumes at most `f`
/// faulty replicas. View 1 goes on with the honest `O` (primary 1 and backups 2, 3
/// are a quorum of Preparation enclaves); replica 0's Confirmation holds the false
/// PrePrepare for seq 1 but never gets Prepares for it, and replica 0's Execution executes
/// the honest request on the commit certificate of the others — the same history
/// everywhere.
#[test]
fn an_equivocating_new_primary_cannot_split_the_replicas() {
    let mut w = World::new(&[0], false);
    w.prepare_in_view_0_without_committing();
    w.cluster.advance(TIMEOUT_US);
    w.pump();
    assert_eq!(w.forged_sent, 1);
    let prep0 = w.stats(0, Preparation);
    assert_eq!((prep0.view, prep0.get(Counter::NewViewWrongO)), (0, 1));
    for r in [2, 3] {
        assert_eq!(w.stats(r, Preparation).view, 1, "r{r} accepted the genuine NewView");
    }
    assert_eq!(w.stats(0, Confirmation).view, 1);
    let honest_1 = (1, 1, w.honest_digest());
    assert_eq!(w.prepares.get(&honest_1).map(BTreeSet::len), Some(2), "Prepares of view 1 from 2 and 3");
    assert!(w.commits.get(&honest_1).is_some_and(|s| !s.contains(&ReplicaId(0))), "r0 holds the false PrePrepare");
    for r in 0..4 {
        let exec = w.stats(r, Execution);
        assert_eq!((exec.view, exec.get(Counter::RequestsExecuted)), (1, 1), "r{r}: {exec:?}");
    }
    let until = w.cluster.now_us() + 2 * TIMEOUT_US;
    w.settle(until);
    w.assert_safe();
    w.read_back_and_checkpoint();
}
