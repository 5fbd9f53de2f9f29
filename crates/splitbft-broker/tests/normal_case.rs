//! Multi-replica normal case on the inline backend (SPEC §4.1–§4.4), through the broker
//! core and the byte boundary, with no sockets.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::{SealedClient, sealed_clients};
use splitbft_apps::kv::{KvOp, KvResult, KvStore};
use splitbft_broker::BrokerOptions;
use splitbft_broker::local::LocalCluster;
use splitbft_types::counters::Counter;
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::{ClientId, CompartmentKind, ReplicaId};

fn cluster(clients: usize, checkpoint_interval: u64, batch: usize) -> (LocalCluster, Vec<SealedClient>) {
    let mut secrets = ClusterSecrets::deterministic(7, 1, clients, 42);
    secrets.config.checkpoint_interval = checkpoint_interval;
    secrets.config.log_window = 2 * checkpoint_interval;
    let mut options = BrokerOptions::new(&secrets.config);
    options.batch_max = batch;
    let mut cluster = LocalCluster::new(&secrets, || Box::new(KvStore::new()), options);
    let keys = sealed_clients(&mut cluster, &secrets);
    (cluster, keys)
}

#[test]
fn four_replicas_execute_the_same_requests_and_reply() {
    let (mut cluster, keys) = cluster(3, 4, 5);
    let mut expected = 0;
    for round in 1..=20u64 {
        for (c, key) in keys.iter().enumerate() {
            let op = KvOp::Put { key: format!("k{c}").into_bytes(), value: round.to_le_bytes().to_vec() };
            cluster.client_sends(ReplicaId(0), &key.request(round, op.encode()));
            expected += 1;
        }
        cluster.advance(20_000);
        cluster.run(100_000);
    }
    // Every replica's Execution enclave executed everything and agrees on the state.
    let digests: Vec<_> = (0..4).map(|r| cluster.stats(ReplicaId(r), CompartmentKind::Execution)).collect();
    for s in &digests {
        assert_eq!(s.get(Counter::RequestsExecuted), expected);
        assert_eq!(s.last_executed, digests[0].last_executed);
    }
    // f + 1 = 2 matching, authentic replies per request (here: all four).
    let replies = cluster.take_replies();
    let mut votes: BTreeMap<(ClientId, u64), Vec<ReplicaId>> = BTreeMap::new();
    for reply in &replies {
        keys[reply.client.0 as usize].verify_reply(reply).unwrap();
        assert!(matches!(
            KvResult::decode(&keys[reply.client.0 as usize].open(reply)).unwrap(),
            KvResult::Stored { .. }
        ));
        votes.entry((reply.client, reply.timestamp)).or_default().push(reply.replica);
    }
    assert_eq!(votes.len(), expected as usize);
    assert!(votes.values().all(|v| v.len() == 4));
    // Checkpoints became stable and the log was garbage-collected (K = 4).
    for r in 0..4 {
        for kind in CompartmentKind::ALL {
            let s = cluster.stats(ReplicaId(r), kind);
            assert!(s.low_watermark >= 4, "{kind} of r{r} never collected a checkpoint: {s:?}");
            assert!(s.log_entries <= 2 * 4 + 2, "{kind} of r{r} holds {} entries", s.log_entries);
        }
    }
}
