//! View change through the broker core and inline compartments (SPEC §4.1 (6) (7), §4.2
//! (5) (7'), §4.4): a crashed primary is replaced, prepared requests survive into the new
//! view and execute exactly once.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::{SealedClient, sealed_clients};
use splitbft_apps::kv::{KvOp, KvResult, KvStore};
use splitbft_broker::BrokerOptions;
use splitbft_broker::local::LocalCluster;
use splitbft_types::counters::Counter;
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::msg::{Message, Reply, Request};
use splitbft_types::{ClientId, CompartmentKind, ReplicaId};

const TIMEOUT_US: u64 = 500_000;

fn cluster(clients: usize) -> (LocalCluster, Vec<SealedClient>) {
    let mut secrets = ClusterSecrets::deterministic(9, 1, clients, 7);
    secrets.config.checkpoint_interval = 4;
    secrets.config.log_window = 8;
    let mut options = BrokerOptions::new(&secrets.config);
    options.batch_max = 3;
    options.view_change_timeout_us = TIMEOUT_US;
    let mut cluster = LocalCluster::new(&secrets, || Box::new(KvStore::new()), options);
    let keys = sealed_clients(&mut cluster, &secrets);
    (cluster, keys)
}

fn put(key: &SealedClient, t: u64, k: &str, v: &str) -> Request {
    key.request(t, KvOp::Put { key: k.as_bytes().to_vec(), value: v.as_bytes().to_vec() }.encode())
}

/// Drives the cluster until quiet, advancing time in steps up to `until_us`.
fn settle(cluster: &mut LocalCluster, until_us: u64) {
    while cluster.now_us() < until_us {
        cluster.run(1_000_000);
        cluster.advance(50_000);
    }
    cluster.run(1_000_000);
}

/// f + 1 matching replies per (client, t), from distinct replicas.
fn completed(keys: &[SealedClient], replies: &[Reply]) -> BTreeMap<(ClientId, u64), Vec<u8>> {
    let mut votes: BTreeMap<(ClientId, u64, Vec<u8>), Vec<ReplicaId>> = BTreeMap::new();
    for r in replies {
        let v = votes.entry((r.client, r.timestamp, keys[r.client.0 as usize].open(r))).or_default();
        if !v.contains(&r.replica) {
            v.push(r.replica);
        }
    }
    votes.into_iter().filter(|(_, rs)| rs.len() >= 2).map(|((c, t, res), _)| ((c, t), res)).collect()
}

fn stats(cluster: &mut LocalCluster, r: u32, kind: CompartmentKind) -> splitbft_types::boundary::Stats {
    cluster.stats(ReplicaId(r), kind)
}

#[test]
fn a_crashed_primary_is_replaced_and_requests_complete_in_view_1() {
    let (mut cluster, keys) = cluster(2);
    // Normal case in view 0.
    for t in 1..=5 {
        cluster.client_sends(ReplicaId(0), &put(&keys[0], t, &format!("a{t}"), "x"));
    }
    settle(&mut cluster, 100_000);
    assert_eq!(completed(&keys, &cluster.take_replies()).len(), 5);

    // The primary crashes; the client times out and retransmits to every replica.
    cluster.down.insert(ReplicaId(0));
    let req = put(&keys[1], 1, "after", "crash");
    for r in 0..4 {
        cluster.client_sends(ReplicaId(r), &req);
    }
    settle(&mut cluster, 100_000 + 3 * TIMEOUT_US);
    let done = completed(&keys, &cluster.take_replies());
    assert!(matches!(KvResult::decode(&done[&(ClientId(1), 1)]).unwrap(), KvResult::Stored { .. }));
    for r in 1..4 {
        for kind in CompartmentKind::ALL {
            assert_eq!(stats(&mut cluster, r, kind).view, 1, "r{r} {kind} not in view 1");
        }
        assert_eq!(stats(&mut cluster, r, CompartmentKind::Execution).get(Counter::RequestsExecuted), 6);
    }
    assert!(cluster.core(ReplicaId(1)).counters().get(Counter::ViewsEntered) >= 1);
}

#[test]
fn successive_failed_views_reach_a_live_primary() {
    // Primaries of view 0 and view 1 are both down: f = 1 is exceeded only for liveness of
    // those two views; with replicas 2 and 3 and one of them back it must reach view 2.
    let (mut cluster, keys) = cluster(1);
    cluster.down.insert(ReplicaId(0));
    cluster.down.insert(ReplicaId(1));
    let req = put(&keys[0], 1, "k", "v");
    for r in 0..4 {
        cluster.client_sends(ReplicaId(r), &req);
    }
    settle(&mut cluster, TIMEOUT_US * 2);
    // Two replicas cannot make a quorum: nothing executes, but they move on (view 1, 2...).
    assert_eq!(stats(&mut cluster, 2, CompartmentKind::Execution).get(Counter::RequestsExecuted), 0);
    // Replica 0 comes back (an old primary, fresh from a partition): view 2's primary is
    // replica 2, and 0, 2, 3 form a quorum.
    cluster.down.remove(&ReplicaId(0));
    for r in [0, 2, 3] {
        cluster.client_sends(ReplicaId(r), &req);
    }
    settle(&mut cluster, TIMEOUT_US * 40);
    let done = completed(&keys, &cluster.take_replies());
    assert!(done.contains_key(&(ClientId(0), 1)), "request never completed");
    let view = stats(&mut cluster, 2, CompartmentKind::Preparation).view;
    assert!(view >= 2, "view {view}");
    assert_eq!(cluster.core(ReplicaId(2)).view(), view);
}

#[test]
fn requests_prepared_in_the_old_view_execute_exactly_once_in_the_new_view() {
    let (mut cluster, keys) = cluster(1);
    // The primary orders a batch; Prepares reach Confirmation everywhere, but every Commit
    // is lost: the batch is prepared, not committed, when the primary dies.
    let req = put(&keys[0], 1, "once", "only");
    cluster.client_sends(ReplicaId(0), &req);
    let mut commits_dropped = 0;
    while let Some(packet) = cluster.network.pop_front() {
        if matches!(splitbft_types::codec::decode_message(&packet.frame), Ok(Message::Commit(_))) {
            commits_dropped += 1;
            continue;
        }
        cluster.network.push_front(packet);
        cluster.step();
    }
    assert!(commits_dropped > 0);
    for r in 0..4 {
        assert_eq!(stats(&mut cluster, r, CompartmentKind::Execution).get(Counter::RequestsExecuted), 0);
    }
    cluster.down.insert(ReplicaId(0));
    for r in 1..4 {
        cluster.client_sends(ReplicaId(r), &req);
    }
    settle(&mut cluster, 4 * TIMEOUT_US);
    let replies = cluster.take_replies();
    assert!(completed(&keys, &replies).contains_key(&(ClientId(0), 1)));
    for r in 1..4 {
        let exec = stats(&mut cluster, r, CompartmentKind::Execution);
        assert_eq!(exec.get(Counter::RequestsExecuted), 1, "r{r}: {exec:?}");
        assert_eq!(exec.view, 1);
    }
    // Same history everywhere (the host sees counts, no state digest: SPEC §6).
    let digests: Vec<_> = (1..4)
        .map(|r| stats(&mut cluster, r, CompartmentKind::Execution))
        .map(|s| (s.last_executed, s.get(Counter::RequestsExecuted)))
        .collect();
    assert!(digests.windows(2).all(|w| w[0] == w[1]));
}

/// A loaded cluster loses its primary mid-stream: every request still completes, exactly
/// once, after one view change (clients retransmit to all replicas, as the client library
/// does).
#[test]
fn primary_crash_under_load_completes_every_request_once() {
    let (mut cluster, keys) = cluster(4);
    let mut all = Vec::new();
    for t in 1..=30u64 {
        for (c, key) in keys.iter().enumerate() {
            all.push(put(key, t, &format!("c{c}-{t}"), "v"));
        }
    }
    for req in &all {
        cluster.client_sends(ReplicaId(0), req);
    }
    // Let part of the work through, then the primary dies with messages in flight.
    cluster.run(400);
    cluster.down.insert(ReplicaId(0));
    let mut done = BTreeMap::new();
    for round in 0..20 {
        done.extend(completed(&keys, &cluster.take_replies()));
        let missing: Vec<&Request> = all.iter().filter(|r| !done.contains_key(&(r.client, r.timestamp))).collect();
        if missing.is_empty() {
            break;
        }
        if round > 0 {
            for req in missing {
                for r in 0..4 {
                    cluster.client_sends(ReplicaId(r), req);
                }
            }
        }
        let until = cluster.now_us() + TIMEOUT_US;
        settle(&mut cluster, until);
    }
    done.extend(completed(&keys, &cluster.take_replies()));
    let missing = all.iter().filter(|r| !done.contains_key(&(r.client, r.timestamp))).count();
    assert_eq!(missing, 0, "{missing} requests never completed");
    for r in 1..4 {
        assert_eq!(stats(&mut cluster, r, CompartmentKind::Execution).get(Counter::RequestsExecuted), all.len() as u64);
    }
    assert_eq!(stats(&mut cluster, 1, CompartmentKind::Preparation).view, 1, "one view change is enough");
}

/// SPEC §4.3 state transfer: a replica that was down while the others moved two
/// checkpoints ahead comes back (fresh, as after a restart), learns the stable checkpoint
/// from its peers' out-logs, fetches the snapshot, checks its digest, restores it and takes
/// part again — shown by losing a different replica and still making progress.
#[test]
fn a_restarted_replica_catches_up_by_state_transfer_and_takes_part_again() {
    let (mut cluster, keys) = cluster(2);
    cluster.down.insert(ReplicaId(3));
    let mut t = 0;
    let send_round = |cluster: &mut LocalCluster, t: &mut u64, to: &[u32]| {
        *t += 1;
        for key in &keys {
            let req = put(key, *t, &format!("k{}", *t % 5), &format!("v{t}"));
            for r in to {
                cluster.client_sends(ReplicaId(*r), &req);
            }
        }
    };
    // 13 rounds: the last executed batch is past the last stable checkpoint, so replica 3
    // needs the log after the snapshot too.
    for _ in 0..13 {
        send_round(&mut cluster, &mut t, &[0]);
        let until = cluster.now_us() + 20_000;
        settle(&mut cluster, until);
    }
    let leader = stats(&mut cluster, 0, CompartmentKind::Execution);
    assert!(leader.low_watermark >= 8, "two checkpoints became stable without replica 3: {leader:?}");
    cluster.take_replies();

    cluster.restart(ReplicaId(3));
    let until = cluster.now_us() + 200_000;
    settle(&mut cluster, until);
    let caught_up = stats(&mut cluster, 3, CompartmentKind::Execution);
    assert_eq!(caught_up.get(Counter::StatesRestored), 1, "{caught_up:?}");
    assert_eq!(caught_up.last_executed, leader.last_executed);
    assert!(cluster.core(ReplicaId(0)).counters().get(Counter::StatesServed) >= 1);

    // Now replica 1 fails: 0, 2 and the restored 3 must carry on together.
    cluster.down.insert(ReplicaId(1));
    for _ in 0..3 {
        send_round(&mut cluster, &mut t, &[0]);
        let until = cluster.now_us() + 20_000;
        settle(&mut cluster, until);
    }
    let done = completed(&keys, &cluster.take_replies());
    assert_eq!(done.len(), 3 * keys.len(), "requests after the second failure did not all complete");
    let r3 = stats(&mut cluster, 3, CompartmentKind::Execution);
    assert_eq!(r3.last_executed, stats(&mut cluster, 0, CompartmentKind::Execution).last_executed);
    assert_eq!(r3.last_executed, stats(&mut cluster, 2, CompartmentKind::Execution).last_executed);
}
