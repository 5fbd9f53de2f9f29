//! SPEC §10 recovery fence, end to end through the production broker and compartments
//! ([`LocalCluster`], inline backend): the host of replica 2 restarts its (correct)
//! Preparation enclave without state in the middle of a workload. The enclave asks every
//! replica's Execution for a statement, sets `H` from `2f + 1` of them, prepares nothing at
//! or below `H` — so it never prepares a slot again — and lifts the fence by itself once the
//! cluster's stable checkpoint reaches `H`, after which it prepares again. Fixture: 4
//! replicas (f = 1), K = 4, L = 8.

#![allow(clippy::unwrap_used)]

mod common;

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use common::{SealedClient, sealed_clients};
use splitbft_apps::kv::{KvOp, KvStore};
use splitbft_broker::BrokerOptions;
use splitbft_broker::local::LocalCluster;
use splitbft_enclave::InlineEnclave;
use splitbft_preparation::Preparation;
use splitbft_types::boundary::{Input, Output};
use splitbft_types::codec::to_bytes;
use splitbft_types::counters::Counter;
use splitbft_types::crypto::SecretKey;
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::msg::Message;
use splitbft_types::{CompartmentKind, ReplicaId, Seq};

const VICTIM: ReplicaId = ReplicaId(2);

/// Sends `count` puts of client 0 from timestamp `first`, one at a time, each to its
/// completion (the cluster is healthy: replica 2's Preparation counts against `f`).
fn puts(cluster: &mut LocalCluster, clients: &[SealedClient], first: u64, count: u64) {
    for t in first..first + count {
        let op = KvOp::Put { key: format!("k{t}").into_bytes(), value: b"v".to_vec() }.encode();
        cluster.client_sends(ReplicaId(0), &clients[0].request(t, op));
        for _ in 0..20 {
            cluster.run(100_000);
            cluster.advance(20_000);
        }
        cluster.run(100_000);
    }
}

#[test]
fn a_preparation_restarted_without_state_recovers_behind_the_fence() {
    let mut secrets = ClusterSecrets::deterministic(41, 1, 1, 5);
    secrets.config.checkpoint_interval = 4;
    secrets.config.log_window = 8;
    let (k, l) = (4, 8);
    let mut options = BrokerOptions::new(&secrets.config);
    options.batch_max = 1;
    let mut cluster = LocalCluster::new(&secrets, || Box::new(KvStore::new()), options);
    let clients = sealed_clients(&mut cluster, &secrets);
    puts(&mut cluster, &clients, 1, 6);
    let before = cluster.stats(VICTIM, CompartmentKind::Execution).last_executed;
    assert!(before >= 6, "the workload ran: executed {before}");

    // The victim's Prepares after the restart, by slot.
    let prepared_after: Rc<RefCell<Vec<Seq>>> = Rc::default();
    let sink = prepared_after.clone();
    cluster.set_observer(move |replica, kind, output| {
        if let (ReplicaId(2), CompartmentKind::Preparation, Output::Send(Message::Prepare(p))) = (replica, kind, output)
        {
            sink.borrow_mut().push(p.body.seq);
        }
    });
    let secret = SecretKey::from_seed(secrets.enclave(VICTIM, CompartmentKind::Preparation).seed());
    let app_genesis = splitbft_execution::Execution::genesis_digest(&secrets.config, &KvStore::new());
    let mut fresh = Preparation::new(secrets.config.clone(), VICTIM, secret, app_genesis).unwrap();
    fresh.fence(0);
    cluster.replace_enclave(VICTIM, CompartmentKind::Preparation, Box::new(InlineEnclave::new(Box::new(fresh))));
    cluster.enclave_input(
        VICTIM,
        CompartmentKind::Preparation,
        Bytes::from(to_bytes(&Input::BeginRecovery { nonce: 1 })),
    );
    cluster.run(100_000);
    let stats = cluster.stats(VICTIM, CompartmentKind::Preparation);
    assert!(stats.recovering);
    assert!(stats.get(Counter::RecoveryStatementsAccepted) >= 3, "{:?}", stats.counters);
    // Every correct Execution has executed up to the last checkpoint: H = that + L.
    let horizon = (before - before % k) + l;

    puts(&mut cluster, &clients, 7, horizon + 2 * k - 6);
    let stats = cluster.stats(VICTIM, CompartmentKind::Preparation);
    assert!(!stats.recovering, "the fence lifted once the stable checkpoint reached H: {:?}", stats.counters);
    assert_eq!(stats.get(Counter::RecoveriesCompleted), 1);
    assert!(stats.low_watermark >= horizon);
    let prepared = prepared_after.borrow();
    assert!(prepared.iter().all(|s| *s > horizon), "prepared at or below H = {horizon}: {prepared:?}");
    assert!(!prepared.is_empty(), "prepares again above H");
}
