//! Ledger blocks through the whole replica (SPEC §7): the Execution enclaves seal one block
//! per 5 executed requests, the brokers hand them to storage in order, every replica's
//! blocks decrypt to the same chain, and a replica restarted from genesis that re-executes
//! rewrites the very same bytes.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::SealedClient;
use splitbft_apps::kv::KvOp;
use splitbft_apps::ledger::{BLOCK_ENTRIES, Block, Ledger};
use splitbft_broker::BrokerOptions;
use splitbft_broker::local::LocalCluster;
use splitbft_execution::RecordSealer;
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::{CompartmentKind, Digest, ReplicaId};

const CLIENTS: usize = 3;

fn cluster(checkpoint_interval: u64) -> (LocalCluster, Vec<SealedClient>, ClusterSecrets) {
    let mut secrets = ClusterSecrets::deterministic(5, 1, CLIENTS, 77);
    secrets.config.checkpoint_interval = checkpoint_interval;
    secrets.config.log_window = 2 * checkpoint_interval;
    let mut options = BrokerOptions::new(&secrets.config);
    options.batch_max = 4;
    let mut cluster = LocalCluster::new(&secrets, || Box::new(Ledger::new()), options);
    let clients = common::sealed_clients_with(&mut cluster, &secrets, || Box::new(Ledger::new()));
    (cluster, clients, secrets)
}

fn sealer(secrets: &ClusterSecrets, r: u32) -> RecordSealer {
    RecordSealer::new(
        secrets.enclave(ReplicaId(r), CompartmentKind::Execution),
        secrets.config.cluster_id,
        ReplicaId(r),
    )
}

/// Sends `rounds` rounds of one Put per client and lets the cluster settle after each.
fn load(cluster: &mut LocalCluster, keys: &[SealedClient], rounds: std::ops::Range<u64>) {
    for round in rounds {
        for (c, key) in keys.iter().enumerate() {
            let op = KvOp::Put { key: format!("k{c}").into_bytes(), value: round.to_le_bytes().to_vec() };
            cluster.client_sends(ReplicaId(0), &key.request(round, op.encode()));
        }
        cluster.advance(20_000);
        cluster.run(100_000);
    }
}

/// Opens and decodes a replica's persisted records.
fn open(secrets: &ClusterSecrets, r: u32, records: &[(u64, Bytes)]) -> Vec<Block> {
    let sealer = sealer(secrets, r);
    records.iter().map(|(h, sealed)| Block::decode(&sealer.open(*h, sealed).unwrap()).unwrap()).collect()
}

#[test]
fn every_replica_persists_the_same_chain_in_order() {
    let (mut cluster, keys, secrets) = cluster(8);
    load(&mut cluster, &keys, 1..21); // 60 requests: 12 blocks
    let chains: Vec<Vec<Block>> = (0..4).map(|r| open(&secrets, r, cluster.persisted(ReplicaId(r)))).collect();
    for (r, chain) in chains.iter().enumerate() {
        assert_eq!(chain.len(), 60 / BLOCK_ENTRIES, "replica {r}");
        let mut prev = Digest::default();
        for (h, block) in chain.iter().enumerate() {
            assert_eq!(block.height, h as u64);
            assert_eq!(block.prev_hash, prev);
            prev = block.hash();
        }
        assert_eq!(chain, &chains[0], "replica {r} agrees with replica 0");
        let heights: Vec<u64> = cluster.persisted(ReplicaId(r as u32)).iter().map(|(h, _)| *h).collect();
        assert_eq!(heights, (0..12).collect::<Vec<_>>());
    }
    // Ciphertexts differ between replicas (one key each); the broker never sees plaintext.
    assert_ne!(cluster.persisted(ReplicaId(0))[0].1, cluster.persisted(ReplicaId(1))[0].1);
}

#[test]
fn a_replica_restarted_from_genesis_rewrites_identical_blocks() {
    // K large enough that no checkpoint becomes stable: the restarted replica re-executes
    // the whole log from its peers' out-logs instead of fetching a snapshot.
    let (mut cluster, keys, secrets) = cluster(64);
    load(&mut cluster, &keys, 1..11); // 30 requests: 6 blocks
    let before = cluster.persisted(ReplicaId(3)).to_vec();
    assert_eq!(before.len(), 6);
    cluster.restart(ReplicaId(3));
    // The fresh enclave learns the sessions as re-executing the Register requests would.
    common::install_sessions_at(&mut cluster, &secrets, ReplicaId(3), Box::new(Ledger::new()));
    cluster.run(100_000);
    load(&mut cluster, &keys, 11..16); // 15 more: 9 blocks in all
    let after = cluster.persisted(ReplicaId(3));
    assert_eq!(&after[..6], &before[..], "the file keeps what was written");
    let rewritten = &after[6..];
    assert_eq!(rewritten.iter().map(|(h, _)| *h).collect::<Vec<_>>(), (0..9).collect::<Vec<_>>());
    assert_eq!(&rewritten[..6], &before[..], "re-execution seals the same bytes at the same heights");
    assert_eq!(open(&secrets, 3, &rewritten[6..]), open(&secrets, 0, &cluster.persisted(ReplicaId(0))[6..9]));
}
