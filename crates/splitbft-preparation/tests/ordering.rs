//! The Preparation compartment at the primary (SPEC §4.1 handler (1), §2 limits `B`, `L`
//! and op size, §6 request authenticators): OrderBatch admits requests whose
//! authenticator entry for this enclave verifies and whose timestamp was not yet ordered
//! for that client, assigns `s = next` with `h < s <= h + L`, and signs a PrePrepare.

#![allow(clippy::unwrap_used, reason = "test helpers: a failed setup step aborts the test")]

use splitbft_testkit::cluster::Fixture;
use std::sync::OnceLock;

use splitbft_preparation::Preparation;
use splitbft_types::boundary::{Compartment, Event, Input, Output, Stats};
use splitbft_types::cert::verify_signed;
use splitbft_types::codec::{from_bytes, to_bytes};
use splitbft_types::counters::Counter;
use splitbft_types::crypto::{Purpose, SecretKey};
use splitbft_types::msg::{BatchMsg, Checkpoint, Digest, Mac, Message, Request, Signed};
use splitbft_types::{ClientId, CompartmentKind, ReplicaId, Seq, Timestamp};

const K: u64 = 4;
const L: u64 = 8;
const B: u32 = 4;
const MAX_OP: u32 = 64;
const CLIENTS: usize = 3;

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        Fixture::new(5, 1, CLIENTS, 37, |c| {
            c.checkpoint_interval = K;
            c.log_window = L;
            c.max_batch = B;
            c.max_op_bytes = MAX_OP;
        })
    })
}

fn preparation(me: u32) -> Preparation {
    let s = &fixture().secrets;
    let secret = SecretKey::from_seed(s.enclave(ReplicaId(me), CompartmentKind::Preparation).seed());
    Preparation::new(s.config.clone(), ReplicaId(me), secret, Digest::of(b"genesis")).unwrap()
}

/// A correctly authenticated request of client `c`.
fn req(c: u32, t: Timestamp) -> Request {
    fixture().clients[c as usize].request(t, format!("op {c}/{t}").into_bytes())
}

fn checkpoint(r: u32, seq: Seq, state: Digest) -> Message {
    let s = &fixture().secrets;
    let body = Checkpoint { seq, state, replica: ReplicaId(r) };
    let sig = s.enclave(ReplicaId(r), CompartmentKind::Execution).sign(s.config.cluster_id, Purpose::Checkpoint, &body);
    Message::Checkpoint(Signed { body, sig })
}

/// What one OrderBatch produced.
#[derive(Debug)]
enum Ordered {
    /// A signed PrePrepare with its batch, decoded.
    Batch {
        seq: Seq,
        requests: Vec<Request>,
        msg: BatchMsg,
    },
    NotOrdered {
        window_full: bool,
    },
}

fn order_bytes(p: &mut Preparation, batch: Vec<u8>) -> Ordered {
    let mut out = Vec::new();
    p.handle(Input::OrderBatch(batch), &mut out);
    match out.as_slice() {
        [Output::Event(Event::NotOrdered { window_full })] => Ordered::NotOrdered { window_full: *window_full },
        [Output::Send(Message::Batch(msg)), Output::Event(Event::Ordered { view, seq, requests })] => {
            let f = fixture();
            // The header is signed by this (primary) enclave, names the batch's digest and
            // agrees with the event.
            assert_eq!(verify_signed(&f.secrets.config, &f.keys, &msg.pre_prepare), Ok(ReplicaId(0)));
            let body = msg.pre_prepare.body;
            assert_eq!(body.digest, Digest::of(&msg.batch));
            assert_eq!((body.view, body.seq), (*view, *seq));
            let decoded: Vec<Request> = from_bytes(&msg.batch).unwrap();
            assert_eq!(decoded.len() as u32, *requests);
            Ordered::Batch { seq: *seq, requests: decoded, msg: msg.clone() }
        }
        other => panic!("unexpected outputs {other:?}"),
    }
}

fn order(p: &mut Preparation, requests: &[Request]) -> Ordered {
    order_bytes(p, to_bytes(requests))
}

/// The admitted requests and sequence number of a batch that must have been ordered.
fn ordered(o: Ordered) -> (Seq, Vec<Request>) {
    match o {
        Ordered::Batch { seq, requests, .. } => (seq, requests),
        other => panic!("expected a batch, got {other:?}"),
    }
}

fn stats(p: &mut Preparation) -> Stats {
    let mut out = Vec::new();
    p.handle(Input::QueryStats, &mut out);
    match out.pop() {
        Some(Output::Stats(s)) => s,
        other => panic!("no stats: {other:?}"),
    }
}

/// SPEC §4.1 (1): valid requests are admitted unchanged, batches get consecutive sequence
/// numbers starting at 1, and the environment's bytes are reused when nothing is dropped.
#[test]
fn primary_orders_valid_requests_with_consecutive_sequence_numbers() {
    let mut p = preparation(0);
    let batch = vec![req(0, 1), req(1, 1), req(2, 1)];
    let encoded = to_bytes(&batch);
    let Ordered::Batch { seq, requests, msg } = order_bytes(&mut p, encoded.clone()) else { panic!("not ordered") };
    assert_eq!((seq, requests), (1, batch));
    assert_eq!(msg.batch, encoded);
    assert_eq!(ordered(order(&mut p, &[req(0, 2)])), (2, vec![req(0, 2)]));
    // Timestamps of one client may arrive out of order within the window.
    assert_eq!(ordered(order(&mut p, &[req(0, 5), req(0, 3)])), (3, vec![req(0, 5), req(0, 3)]));
    let s = stats(&mut p);
    assert_eq!(s.get(Counter::BatchesOrdered), 3);
    assert_eq!(s.get(Counter::RequestsOrdered), 6);
}

/// SPEC §4.1 (1), §6: requests that do not authenticate for this enclave (wrong MAC entry
/// and wrong signature, or an altered op), from an
/// unknown client, with an op over the limit, or with a timestamp already ordered are
/// dropped and counted; the rest of the batch is ordered, re-encoded, under its own digest.
#[test]
fn primary_drops_unauthenticated_duplicate_and_oversized_requests() {
    let mut p = preparation(0);
    let good0 = req(0, 1);
    // A wrong MAC entry for this enclave alone is settled by the signature (SPEC §6);
    // both wrong is refused.
    let mut bad_mac = req(1, 1);
    bad_mac.auth[0].0[0] ^= 1;
    bad_mac.sig.0[0] ^= 1;
    let mut tampered_op = req(1, 2);
    tampered_op.op.push(b'!');
    let mut unknown = req(2, 9);
    unknown.client = ClientId(CLIENTS as u32);
    let far = Request { client: ClientId(u32::MAX), ..req(2, 9) };
    let duplicate = req(0, 1);
    let too_large = fixture().clients[2].request(1, vec![7; MAX_OP as usize + 1]);
    let at_limit = fixture().clients[2].request(2, vec![7; MAX_OP as usize]);
    let no_auth = Request { auth: Vec::new(), ..req(2, 3) };
    let short_auth = Request { auth: req(2, 4).auth[..3].to_vec(), ..req(2, 4) };
    let long_auth = Request { auth: [req(2, 5).auth, vec![Mac::default()]].concat(), ..req(2, 5) };
    // Only this enclave's entry is checked: a wrong entry for replica 1 does not matter here.
    let mut others_wrong = req(1, 3);
    others_wrong.auth[1].0[0] ^= 1;
    let batch = vec![
        good0.clone(),
        bad_mac,
        tampered_op,
        unknown,
        far,
        duplicate,
        too_large,
        at_limit.clone(),
        no_auth,
        short_auth,
        long_auth,
        others_wrong.clone(),
    ];
    let Ordered::Batch { seq, requests, msg } = order(&mut p, &batch) else { panic!("not ordered") };
    assert_eq!(seq, 1);
    assert_eq!(requests, vec![good0, at_limit, others_wrong]);
    assert_eq!(msg.batch, to_bytes(&requests));
    let s = stats(&mut p);
    assert_eq!(s.get(Counter::RequestBadAuthenticator), 2);
    assert_eq!(s.get(Counter::RequestUnknownClient), 2);
    assert_eq!(s.get(Counter::RequestAlreadyOrdered), 1);
    assert_eq!(s.get(Counter::RequestOpTooLarge), 1);
    assert_eq!(s.get(Counter::RequestAuthMissing), 1);
    assert_eq!(s.get(Counter::RequestAuthWrongLength), 2);
    assert_eq!(s.get(Counter::RequestsOrdered), 3);

    // A refused request does not consume its timestamp: the genuine one is admitted later.
    assert_eq!(ordered(order(&mut p, &[req(1, 1), req(1, 2)])).1, vec![req(1, 1), req(1, 2)]);
    // A timestamp once ordered is never ordered again, alone or in company.
    match order(&mut p, &[req(0, 1)]) {
        Ordered::NotOrdered { window_full } => assert!(!window_full),
        other => panic!("duplicate ordered: {other:?}"),
    }
    assert_eq!(ordered(order(&mut p, &[req(1, 1), req(0, 2)])).1, vec![req(0, 2)]);
    assert_eq!(stats(&mut p).get(Counter::RequestAlreadyOrdered), 3);
}

/// SPEC §2 `B`: at most `B` requests per batch; the surplus is counted and not consumed,
/// so it is ordered in a later batch. Refused requests do not take batch room.
#[test]
fn primary_cuts_batches_at_b_requests() {
    let mut p = preparation(0);
    let mut bad = req(2, 1);
    bad.auth[0] = Mac::default();
    bad.sig.0[9] ^= 1;
    let offered: Vec<Request> = std::iter::once(bad).chain((1..=6).map(|t| req(0, t))).collect();
    let (seq, admitted) = ordered(order(&mut p, &offered));
    assert_eq!(seq, 1);
    assert_eq!(admitted, (1..=B as u64).map(|t| req(0, t)).collect::<Vec<_>>());
    assert_eq!(stats(&mut p).get(Counter::RequestOverBatchLimit), 2);
    // Exactly B is not over the limit.
    let (_, admitted) = ordered(order(&mut p, &(1..=B as u64).map(|t| req(1, t)).collect::<Vec<_>>()));
    assert_eq!(admitted.len(), B as usize);
    assert_eq!(stats(&mut p).get(Counter::RequestOverBatchLimit), 2);
    // The surplus was not marked as ordered.
    assert_eq!(ordered(order(&mut p, &[req(0, 5), req(0, 6)])), (3, vec![req(0, 5), req(0, 6)]));
}

/// SPEC §4.1 (1): `s <= h + L`. Without checkpoints the primary orders `L` batches, then
/// answers `NotOrdered { window_full: true }` without consuming the requests; a checkpoint
/// certificate for `h` frees the window up to `h + L` exactly.
#[test]
fn primary_reports_a_full_window_until_a_checkpoint() {
    let mut p = preparation(0);
    for t in 1..=L {
        assert_eq!(ordered(order(&mut p, &[req(0, t)])).0, t);
    }
    let waiting = [req(1, 1), req(2, 1)];
    for _ in 0..2 {
        match order(&mut p, &waiting) {
            Ordered::NotOrdered { window_full } => assert!(window_full),
            other => panic!("ordered past h + L: {other:?}"),
        }
    }
    assert_eq!(stats(&mut p).get(Counter::OrderBatchWindowFull), 2);

    for r in [1, 2, 3] {
        let out = {
            let mut out = Vec::new();
            p.handle(Input::Message(checkpoint(r, K, Digest::of(b"state"))), &mut out);
            out
        };
        assert_eq!(!out.is_empty(), r == 3, "Stable only on the third Checkpoint: {out:?}");
    }
    assert_eq!(stats(&mut p).low_watermark, K);
    // The requests that waited are ordered now, at L + 1.
    assert_eq!(ordered(order(&mut p, &waiting)), (L + 1, waiting.to_vec()));
    for t in L + 2..=K + L {
        assert_eq!(ordered(order(&mut p, &[req(0, t)])).0, t);
    }
    match order(&mut p, &[req(0, 100)]) {
        Ordered::NotOrdered { window_full } => assert!(window_full, "h + L + 1 must not be assigned"),
        other => panic!("ordered past h + L: {other:?}"),
    }
}

/// SPEC §4.1 (1) "only at primary(v_p)": a backup orders nothing and says so.
#[test]
fn backup_refuses_order_batch() {
    for me in 1..4 {
        let mut p = preparation(me);
        match order(&mut p, &[req(0, 1)]) {
            Ordered::NotOrdered { window_full } => assert!(!window_full),
            other => panic!("backup {me} ordered: {other:?}"),
        }
        assert_eq!(stats(&mut p).get(Counter::OrderBatchNotPrimary), 1);
        assert_eq!(stats(&mut p).log_entries, 0);
    }
}

/// Bytes that are not an encoded `Vec<Request>` and batches with nothing admissible
/// produce `NotOrdered { window_full: false }` and use no sequence number.
#[test]
fn primary_orders_nothing_from_malformed_or_empty_batches() {
    let mut p = preparation(0);
    for bytes in [vec![], vec![0xff; 12], vec![1], [to_bytes(&vec![req(0, 1)]), vec![0]].concat()] {
        match order_bytes(&mut p, bytes) {
            Ordered::NotOrdered { window_full } => assert!(!window_full),
            other => panic!("ordered garbage: {other:?}"),
        }
    }
    assert_eq!(stats(&mut p).get(Counter::OrderBatchMalformed), 4);
    match order(&mut p, &[]) {
        Ordered::NotOrdered { window_full } => assert!(!window_full),
        other => panic!("ordered an empty batch: {other:?}"),
    }
    // Nothing above consumed a sequence number or a timestamp.
    assert_eq!(ordered(order(&mut p, &[req(0, 1)])), (1, vec![req(0, 1)]));
}
