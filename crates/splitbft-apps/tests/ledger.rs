//! The ledger application (SPEC §7, paper §6): grouping into blocks of 5, hash chaining,
//! snapshot and restore, digest determinism, and the block codec.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use splitbft_apps::{BLOCK_ENTRIES, Block, Entry, KvOp, KvStore, Ledger, LedgerDecodeError};
use splitbft_types::{AppRecord, Application, Digest};

fn put(i: u64) -> Vec<u8> {
    KvOp::Put { key: format!("k{}", i % 3).into_bytes(), value: i.to_le_bytes().to_vec() }.encode()
}

fn blocks(records: &[AppRecord]) -> Vec<Block> {
    records.iter().map(|r| Block::decode(&r.bytes).unwrap()).collect()
}

#[test]
fn every_five_entries_close_a_block_chained_to_the_previous_one() {
    let mut ledger = Ledger::new();
    let mut store = KvStore::new();
    let ops: Vec<Vec<u8>> = (0..12).map(put).chain([b"not an op".to_vec()]).collect();
    let mut records = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        // The ledger answers exactly as the store does: the same workload runs on both.
        assert_eq!(ledger.execute(op), store.execute(op));
        let taken = ledger.take_records();
        assert_eq!(taken.len(), usize::from((i + 1) % BLOCK_ENTRIES == 0), "after op {i}");
        records.extend(taken);
    }
    assert!(ledger.take_records().is_empty(), "records are handed out once");
    assert_eq!((ledger.height(), ledger.pending()), (2, 3));
    let chain = blocks(&records);
    assert_eq!(records.iter().map(|r| r.height).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(chain[0].height, 0);
    assert_eq!(chain[0].prev_hash, Digest::default(), "genesis links to zeros");
    assert_eq!(chain[1].prev_hash, chain[0].hash());
    assert_eq!(chain[1].prev_hash, Digest::of(&records[0].bytes), "hash = SHA-256 of the encoding");
    assert_eq!(ledger.head(), chain[1].hash());
    let mut replay = KvStore::new();
    for (entry, op) in chain.iter().flat_map(|b| &b.entries).zip(&ops) {
        assert_eq!(&entry.op, op);
        assert_eq!(entry.result, replay.execute(op));
    }
}

#[test]
fn a_restored_snapshot_continues_the_same_chain() {
    let mut original = Ledger::new();
    for i in 0..7 {
        original.execute(&put(i));
    }
    original.take_records();
    let snapshot = original.snapshot();
    let mut restored = Ledger::new();
    restored.execute(&put(99)); // state that the restore must replace
    restored.restore(&snapshot).unwrap();
    assert!(restored.take_records().is_empty(), "a restore drops blocks of the replaced state");
    assert_eq!(restored.digest(), original.digest());
    for i in 7..15 {
        assert_eq!(restored.execute(&put(i)), original.execute(&put(i)));
    }
    let (a, b) = (original.take_records(), restored.take_records());
    assert_eq!(a.len(), 2);
    assert_eq!(a, b, "the same blocks, byte for byte");
    assert_eq!(blocks(&a)[0].height, 1);
    assert_eq!(restored.digest(), original.digest());
}

#[test]
fn the_digest_covers_head_and_pending_entries_not_only_the_store() {
    let mut a = Ledger::new();
    let mut b = Ledger::new();
    assert_eq!(a.digest(), b.digest());
    assert_eq!(a.digest(), Digest::of(&a.snapshot()));
    a.execute(&put(1));
    b.execute(&put(1));
    assert_eq!(a.digest(), b.digest(), "same ops, same digest");
    // A GET changes no key but is an entry of the next block.
    a.execute(&KvOp::Get { key: b"k1".to_vec() }.encode());
    assert_eq!(a.store(), b.store());
    assert_ne!(a.digest(), b.digest());
    assert_eq!(a.digest(), Digest::of(&a.snapshot()));
    // Blocks handed out are not part of the state.
    let mut c = a.clone();
    for i in 0..3 {
        a.execute(&put(i));
        c.execute(&put(i));
    }
    c.take_records();
    assert_eq!(a.digest(), c.digest());
}

#[test]
fn bad_snapshots_are_refused_and_change_nothing() {
    let mut ledger = Ledger::new();
    for i in 0..6 {
        ledger.execute(&put(i));
    }
    let before = ledger.digest();
    let good = ledger.snapshot();
    let mut longer = good.clone();
    longer.push(0);
    let mut wrong_version = good.clone();
    wrong_version[0] = 9;
    for bad in [Vec::new(), good[..good.len() - 1].to_vec(), longer, wrong_version, vec![0xff; 40]] {
        assert!(ledger.restore(&bad).is_err(), "{bad:?}");
        assert_eq!(ledger.digest(), before);
    }
    // Hand-made snapshots in the same layout: only consistent ones are accepted.
    let kv = KvStore::new().snapshot();
    let entry = || Entry { op: put(1), result: vec![1] };
    let snap = |next_height, head, pending| {
        postcard::to_allocvec(&SnapshotLayout { version: 1, kv: kv.clone(), next_height, head, pending }).unwrap()
    };
    let mut fresh = Ledger::new();
    fresh.restore(&snap(3, Digest([1; 32]), vec![entry(); BLOCK_ENTRIES - 1])).unwrap();
    assert_eq!((fresh.height(), fresh.head(), fresh.pending()), (3, Digest([1; 32]), BLOCK_ENTRIES - 1));
    for (bad, why) in [
        (snap(3, Digest([1; 32]), vec![entry(); BLOCK_ENTRIES]), "5 pending entries"),
        (snap(0, Digest([1; 32]), vec![]), "inconsistent with height 0"),
        (snap(2, Digest::default(), vec![]), "inconsistent with height 2"),
    ] {
        let err = fresh.restore(&bad).unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
        assert_eq!(fresh.height(), 3, "a refused snapshot changes nothing");
    }
}

/// The ledger snapshot's field layout, to build inconsistent snapshots.
#[derive(serde::Serialize)]
struct SnapshotLayout {
    version: u8,
    #[serde(with = "serde_bytes")]
    kv: Vec<u8>,
    next_height: u64,
    head: Digest,
    pending: Vec<Entry>,
}

#[test]
fn block_decoding_rejects_bad_bytes_with_typed_errors() {
    let entry = Entry { op: vec![1, 2], result: vec![3] };
    let block = Block { height: 4, prev_hash: Digest([7; 32]), entries: vec![entry.clone(); BLOCK_ENTRIES] };
    let bytes = block.encode();
    assert_eq!(Block::decode(&bytes), Ok(block.clone()));
    assert_eq!(Block::decode(&[]), Err(LedgerDecodeError::Empty));
    let mut v2 = bytes.clone();
    v2[0] = 2;
    assert_eq!(Block::decode(&v2), Err(LedgerDecodeError::UnsupportedVersion(2)));
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0, 0]);
    assert_eq!(Block::decode(&longer), Err(LedgerDecodeError::TrailingBytes(2)));
    let short = Block { entries: vec![entry; BLOCK_ENTRIES - 1], ..block };
    assert_eq!(Block::decode(&short.encode()), Err(LedgerDecodeError::WrongEntryCount(BLOCK_ENTRIES - 1)));
    for cut in 0..bytes.len() {
        assert!(Block::decode(&bytes[..cut]).is_err());
    }
}

proptest! {
    #[test]
    fn replicas_running_the_same_ops_build_the_same_chain(
        ops in prop::collection::vec(prop::collection::vec(0u8..4, 0..6), 0..40),
        cut in 0usize..40,
    ) {
        // One replica runs everything; another takes a snapshot midway and a third
        // restores it and runs the rest: their chains and digests agree.
        let mut a = Ledger::new();
        let mut b = Ledger::new();
        let cut = cut.min(ops.len());
        let mut b_records = Vec::new();
        for op in &ops[..cut] {
            b.execute(op);
        }
        b_records.extend(b.take_records());
        let mut c = Ledger::new();
        c.restore(&b.snapshot()).unwrap();
        for op in &ops[cut..] {
            prop_assert_eq!(c.execute(op), b.execute(op));
        }
        b_records.extend(b.take_records());
        for op in &ops {
            a.execute(op);
        }
        let a_records = a.take_records();
        prop_assert_eq!(a_records.len(), ops.len() / BLOCK_ENTRIES);
        prop_assert_eq!(&a_records, &b_records);
        let c_records = c.take_records();
        prop_assert_eq!(&a_records[a_records.len() - c_records.len()..], &c_records[..]);
        prop_assert_eq!(a.digest(), b.digest());
        prop_assert_eq!(a.digest(), c.digest());
        let mut prev = Digest::default();
        for (h, record) in a_records.iter().enumerate() {
            let block = Block::decode(&record.bytes).unwrap();
            prop_assert_eq!(block.height, h as u64);
            prop_assert_eq!(block.prev_hash, prev);
            prev = block.hash();
        }
        prop_assert_eq!(a.head(), prev);
    }
}
