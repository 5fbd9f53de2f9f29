//! The ledger end to end (SPEC §7, paper §6): a 4-replica cluster over loopback TCP runs
//! the ledger, every replica's block file verifies under its own Execution key and the
//! chains agree; the `splitbft ledger verify` command says so, and names a tampered
//! record. Then the verifier's rules on hand-built files: rewrites, gaps, out-of-order
//! heights, forks, foreign and moved records, broken links, disagreeing replicas.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use splitbft::AppKind;
use splitbft::demo::{self, DemoOptions, Protocol, replica_data_dir};
use splitbft::ledger::{VerifyError, compare_chains, verify_chain, verify_replicas};
use splitbft_apps::kv::KvOp;
use splitbft_apps::ledger::{BLOCK_ENTRIES, Block, Entry, Ledger};
use splitbft_broker::store::{BLOCK_FILE, BlockFile, RecordReader};
use splitbft_enclave::Backend;
use splitbft_execution::{RecordSealer, SealError};
use splitbft_types::counters::Counter;
use splitbft_types::keys::ClusterSecrets;
use splitbft_types::{AppRecord, Application, CompartmentKind, Digest, ReplicaId};

const REQUESTS: u64 = 300;

fn verify_cli(dir: &Path, replicas: &[u32]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_splitbft"));
    cmd.args(["ledger", "verify", "--config"]).arg(dir.join("cluster.toml"));
    for r in replicas {
        cmd.args(["--replica", &r.to_string(), "--data-dir"]).arg(replica_data_dir(dir, ReplicaId(*r)));
    }
    cmd.output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_cluster_writes_chains_that_verify_and_agree_and_tampering_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let options = DemoOptions {
        protocol: Protocol::Splitbft,
        app: AppKind::Ledger,
        replicas: 4,
        clients: 3,
        outstanding: 5,
        requests: REQUESTS,
        payload: 10,
        batch: 200,
        batch_timeout_ms: 10,
        backend: Backend::Inline,
        crash_primary_after_ms: None,
        data_dir: Some(dir.clone()),
        no_confidential: false,
        no_durable: false,
        progress: false,
    };
    let summary = demo::run(options).await.unwrap();
    assert_eq!((summary.completed, summary.errors), (REQUESTS, 0));
    let blocks = REQUESTS / BLOCK_ENTRIES as u64;
    let written = summary.ledger_blocks_written.unwrap();
    // Every request was answered by f + 1 = 2 replicas that executed everything before it.
    assert!((2 * blocks..=4 * blocks).contains(&written), "{written} blocks written");
    assert!(summary.ledger_common_blocks.unwrap() >= 1);

    // The library verifier, from the files the demo left: cluster.toml and Execution keys.
    let file = splitbft::clusterfile::ClusterFile::load(&dir.join("cluster.toml")).unwrap();
    let protocol = file.protocol(&dir.join("cluster.toml")).unwrap();
    let keys: Vec<_> = (0..4u32)
        .map(|r| {
            let path = splitbft::clusterfile::enclave_key_path(&dir, ReplicaId(r), CompartmentKind::Execution);
            splitbft::clusterfile::read_key(&path, &protocol.replicas[r as usize].execution).unwrap()
        })
        .collect();
    let dirs: Vec<PathBuf> = (0..4).map(|r| replica_data_dir(&dir, ReplicaId(r))).collect();
    let inputs: Vec<_> = (0..4).map(|r| (ReplicaId(r as u32), &keys[r], dirs[r].as_path())).collect();
    let report = verify_replicas(protocol.cluster_id, &inputs).unwrap();
    let complete: Vec<_> = report.chains.iter().filter(|(_, c)| c.head_height == Some(blocks - 1)).collect();
    assert!(complete.len() >= 2, "{report:?}");
    for (_, chain) in &complete {
        assert_eq!((chain.blocks, chain.entries, chain.repeated), (blocks, REQUESTS, 0));
        assert!(chain.gaps.is_empty());
        assert_eq!(chain.head_hash, complete[0].1.head_hash, "heads agree");
    }
    assert_eq!(report.chains.iter().map(|(_, c)| c.blocks).sum::<u64>(), written);

    // The command-line verifier agrees.
    let out = verify_cli(&dir, &[0, 1, 2, 3]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("chains agree at every common height"), "{stdout}");
    assert!(stdout.contains(complete[0].1.head_hash.as_deref().unwrap()), "{stdout}");

    // Flip one byte inside record 7's ciphertext in a complete replica's file.
    let (victim, _) = complete[0];
    let path = replica_data_dir(&dir, ReplicaId(*victim)).join(BLOCK_FILE);
    let record = RecordReader::open(&path).unwrap().nth(7).unwrap().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let at = record.offset as usize;
    bytes[at + 4 + 9 + 3] ^= 0x20;
    // Damage on the disk fails the record's checksum (SPEC §10)...
    std::fs::write(&path, &bytes).unwrap();
    let err = verify_replicas(protocol.cluster_id, &inputs).unwrap_err();
    assert!(err.to_string().contains("record 7") && err.to_string().contains("checksum"), "{err}");
    // ...and a host that rewrites the checksum too is caught by the seal.
    let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let crc = crc32fast::hash(&bytes[at + 4..at + len]);
    bytes[at + len..at + 4 + len].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let err = verify_replicas(protocol.cluster_id, &inputs).unwrap_err();
    assert!(matches!(err, VerifyError::Unsealed { index: 7, source: SealError::Unauthentic, .. }), "{err}");
    let out = verify_cli(&dir, &[*victim]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("record 7 at byte") && stderr.contains("does not open"), "{stderr}");
}

// ---- the verifier's rules on hand-built files ----

fn secrets() -> ClusterSecrets {
    ClusterSecrets::deterministic(3, 1, 1, 11)
}

fn sealer(secrets: &ClusterSecrets, r: u32) -> RecordSealer {
    RecordSealer::new(
        secrets.enclave(ReplicaId(r), CompartmentKind::Execution),
        secrets.config.cluster_id,
        ReplicaId(r),
    )
}

/// The blocks of a ledger that executed `blocks * 5` puts, with `salt` in the values.
fn chain(blocks: usize, salt: u8) -> Vec<AppRecord> {
    let mut ledger = Ledger::new();
    for i in 0..blocks * BLOCK_ENTRIES {
        ledger.execute(&KvOp::Put { key: vec![i as u8], value: vec![salt] }.encode());
    }
    ledger.take_records()
}

/// Writes `records` (each sealed by replica `by` for height `claimed`) to a fresh data dir.
fn write(dir: &Path, records: &[(u64, Vec<u8>)]) {
    let _ = std::fs::remove_dir_all(dir);
    let mut file = BlockFile::open(dir).unwrap();
    for (height, sealed) in records {
        file.append(*height, sealed).unwrap();
    }
    file.flush().unwrap();
}

fn sealed(secrets: &ClusterSecrets, by: u32, record: &AppRecord) -> (u64, Vec<u8>) {
    (record.height, sealer(secrets, by).seal(record.height, &record.bytes).unwrap())
}

#[test]
fn the_verifier_accepts_rewrites_gaps_and_late_heights_and_reports_them() {
    let (s, tmp) = (secrets(), tempfile::tempdir().unwrap());
    let blocks = chain(5, 1);
    let seal = |i: usize| sealed(&s, 0, &blocks[i]);
    let check = |order: &[usize]| {
        write(tmp.path(), &order.iter().map(|&i| seal(i)).collect::<Vec<_>>());
        verify_chain(tmp.path(), &sealer(&s, 0)).unwrap()
    };
    // A restart from genesis rewrote heights 0..=2 byte for byte.
    let r = check(&[0, 1, 2, 3, 4, 0, 1, 2]);
    assert_eq!((r.records, r.blocks, r.repeated, r.entries), (8, 5, 3, 25));
    assert!(r.gaps.is_empty());
    assert_eq!(r.head_height, Some(4));
    assert_eq!(r.head_hash, Some(hex::encode(Block::decode(&blocks[4].bytes).unwrap().hash().0)));
    // A state transfer skipped height 2 (and later re-execution may fill it in).
    let r = check(&[0, 1, 3, 4]);
    assert_eq!((r.blocks, r.gaps.clone()), (4, vec![(2, 2)]));
    let r = check(&[3, 4, 0, 1, 2]);
    assert_eq!((r.blocks, r.gaps.len()), (5, 0));
    let r = check(&[4]);
    assert_eq!(r.gaps, vec![(0, 3)]);
}

#[test]
fn the_verifier_refuses_forks_foreign_moved_and_unlinked_records_naming_them() {
    let (s, tmp) = (secrets(), tempfile::tempdir().unwrap());
    let (a, b) = (chain(3, 1), chain(3, 2));
    let run = |records: Vec<(u64, Vec<u8>)>| {
        write(tmp.path(), &records);
        let err = verify_chain(tmp.path(), &sealer(&s, 0)).unwrap_err();
        assert!(err.to_string().contains("record"), "every refusal names the record: {err}");
        err
    };
    // A second history under the same keys: height 1 again with other content.
    let err = run(vec![sealed(&s, 0, &a[0]), sealed(&s, 0, &a[1]), sealed(&s, 0, &b[1])]);
    assert!(matches!(err, VerifyError::Fork { index: 2, height: 1, .. }), "{err}");
    // Replica 1's record in replica 0's file.
    let err = run(vec![sealed(&s, 0, &a[0]), sealed(&s, 1, &a[1])]);
    assert!(matches!(err, VerifyError::Unsealed { index: 1, height: 1, .. }), "{err}");
    // A record moved to another height by the environment.
    let (_, moved) = sealed(&s, 0, &a[1]);
    let err = run(vec![sealed(&s, 0, &a[0]), (2, moved)]);
    assert!(matches!(err, VerifyError::Unsealed { index: 1, height: 2, .. }), "{err}");
    // Validly sealed blocks that do not chain: from below, and from above (late height).
    let err = run(vec![sealed(&s, 0, &a[0]), sealed(&s, 0, &b[1])]);
    assert!(matches!(err, VerifyError::BrokenLink { index: 1, height: 1, upper: 1, .. }), "{err}");
    let err = run(vec![sealed(&s, 0, &b[1]), sealed(&s, 0, &a[0])]);
    assert!(matches!(err, VerifyError::BrokenLink { index: 1, height: 0, upper: 1, .. }), "{err}");
    // A genesis block that does not link to zeros, and a block at the wrong height inside.
    let bad = Block { height: 0, prev_hash: Digest([9; 32]), entries: vec![Entry { op: vec![], result: vec![] }; 5] };
    let err = run(vec![sealed(&s, 0, &AppRecord { height: 0, bytes: bad.encode() })]);
    assert!(matches!(err, VerifyError::BrokenLink { index: 0, upper: 0, .. }), "{err}");
    let err = run(vec![sealed(&s, 0, &AppRecord { height: 1, bytes: a[0].bytes.clone() })]);
    assert!(err.to_string().contains("the block inside says height 0"), "{err}");
    // Bytes that open but are no block.
    let err = run(vec![sealed(&s, 0, &AppRecord { height: 0, bytes: b"not a block".to_vec() })]);
    assert!(matches!(err, VerifyError::BadBlock { index: 0, .. }), "{err}");
}

#[test]
fn replicas_with_different_blocks_at_a_height_disagree() {
    let (s, tmp) = (secrets(), tempfile::tempdir().unwrap());
    let (a, b) = (chain(2, 1), chain(2, 2));
    let (d0, d1) = (tmp.path().join("r0"), tmp.path().join("r1"));
    write(&d0, &a.iter().map(|r| sealed(&s, 0, r)).collect::<Vec<_>>());
    write(&d1, &[sealed(&s, 1, &a[0])]);
    let (c0, c1) = (verify_chain(&d0, &sealer(&s, 0)).unwrap(), verify_chain(&d1, &sealer(&s, 1)).unwrap());
    assert_eq!(compare_chains(&[(ReplicaId(0), &c0), (ReplicaId(1), &c1)]).unwrap(), 1);
    write(&d1, &b.iter().map(|r| sealed(&s, 1, r)).collect::<Vec<_>>());
    let c1 = verify_chain(&d1, &sealer(&s, 1)).unwrap();
    let err = compare_chains(&[(ReplicaId(0), &c0), (ReplicaId(1), &c1)]).unwrap_err();
    assert!(matches!(err, VerifyError::Disagreement { a: 0, b: 1, height: 0, .. }), "{err}");
}

// ---- storage failures are counted, never fatal ----

fn spec(dir: &Path) -> demo::ClusterSpec {
    demo::ClusterSpec {
        protocol: Protocol::Splitbft,
        app: AppKind::Ledger,
        replicas: 4,
        clients: 1,
        batch: 200,
        batch_timeout_ms: 10,
        backend: Backend::Inline,
        data_dir: Some(dir.to_owned()),
        durable: false,
        confidential: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_data_dir_is_a_startup_error() {
    let tmp = tempfile::tempdir().unwrap();
    // replica-2's data dir exists as a plain file.
    std::fs::create_dir_all(tmp.path()).unwrap();
    std::fs::write(replica_data_dir(tmp.path(), ReplicaId(2)), b"not a directory").unwrap();
    let err = demo::LocalTcpCluster::start_spec(&spec(tmp.path())).await.err().unwrap();
    assert!(format!("{err:#}").contains("data directory"), "{err:#}");
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_is_counted_and_the_replica_keeps_serving() {
    if !Path::new("/dev/full").exists() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Replica 1's block file is /dev/full: every flush fails with ENOSPC.
    let victim = replica_data_dir(tmp.path(), ReplicaId(1));
    std::fs::create_dir_all(&victim).unwrap();
    std::os::unix::fs::symlink("/dev/full", victim.join(BLOCK_FILE)).unwrap();
    let cluster = demo::LocalTcpCluster::start_spec(&spec(tmp.path())).await.unwrap();
    let client = cluster.client(0, splitbft_client::ClientOptions::default()).await.unwrap();
    for i in 0..20u8 {
        client.invoke(KvOp::Put { key: vec![i], value: vec![i] }.encode()).await.unwrap();
    }
    drop(client);
    let reports = cluster.shutdown().await;
    let victim = &reports[1];
    assert!(victim.broker_counter(Counter::LedgerFlushErrors) > 0, "{:?}", victim.broker);
    assert_eq!(victim.broker_counter(Counter::LedgerRecordsWritten), 0, "nothing reached the disk");
    // The others stored every block they executed (f + 1 of them executed all 20 requests).
    let healthy = [0, 2, 3].map(|r| &reports[r]);
    assert!(healthy.iter().all(|r| r.broker_counter(Counter::LedgerFlushErrors) == 0));
    assert!(healthy.iter().filter(|r| r.broker_counter(Counter::LedgerRecordsWritten) == 4).count() >= 1);
}

/// SPEC §10: a durable replica syncs its blocks with the round, before the round's outputs
/// leave; a block file that cannot be written stops that replica (never a silent gap in
/// its ledger), with nothing of the failed round sent, and the others carry on (f = 1).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_stops_a_durable_replica_and_the_others_keep_serving() {
    if !Path::new("/dev/full").exists() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let victim = replica_data_dir(tmp.path(), ReplicaId(1));
    std::fs::create_dir_all(&victim).unwrap();
    std::os::unix::fs::symlink("/dev/full", victim.join(BLOCK_FILE)).unwrap();
    let cluster =
        demo::LocalTcpCluster::start_spec(&demo::ClusterSpec { durable: true, ..spec(tmp.path()) }).await.unwrap();
    let client = cluster.client(0, splitbft_client::ClientOptions::default()).await.unwrap();
    for i in 0..20u8 {
        client.invoke(KvOp::Put { key: vec![i], value: vec![i] }.encode()).await.unwrap();
    }
    drop(client);
    let reports = cluster.shutdown().await;
    let victim = &reports[1];
    assert_eq!(victim.broker_counter(Counter::StateWriteErrors), 1, "{:?}", victim.broker);
    // /dev/full takes the write into the page cache and fails its fsync.
    assert_eq!(victim.broker_counter(Counter::LedgerSyncErrors), 1, "{:?}", victim.broker);
    assert_eq!(victim.broker_counter(Counter::LedgerRecordsWritten), 0);
    assert_eq!(victim.broker_counter(Counter::LedgerSyncs), 0);
    let healthy = [0, 2, 3].map(|r| &reports[r]);
    assert!(healthy.iter().all(|r| r.broker_counter(Counter::StateWriteErrors) == 0));
    // Every block a healthy replica wrote was synced with its round.
    assert!(healthy.iter().filter(|r| r.broker_counter(Counter::LedgerRecordsWritten) == 4).count() >= 1);
    for r in healthy {
        let written = r.broker_counter(Counter::LedgerRecordsWritten);
        assert!(written == 0 || r.broker_counter(Counter::LedgerSyncs) >= 1, "{:?}", r.broker);
    }
}
