//! Property tests for the key-value store: codec round-trips and replica determinism.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use splitbft_apps::{KvDecodeError, KvError, KvOp, KvResult, KvStore};
use splitbft_types::{Application, Digest};

/// Short keys from a small alphabet, so random ops collide on keys and prefixes.
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(0u8..4, 0..4)
}

fn op() -> impl Strategy<Value = KvOp> {
    prop_oneof![
        bytes().prop_map(|key| KvOp::Get { key }),
        (bytes(), bytes()).prop_map(|(key, value)| KvOp::Put { key, value }),
        bytes().prop_map(|key| KvOp::Delete { key }),
        (bytes(), prop::option::of(bytes()), prop::option::of(bytes())).prop_map(|(key, expected, new)| KvOp::Cas {
            key,
            expected,
            new
        }),
        (bytes(), prop_oneof![0..5u32, any::<u32>()]).prop_map(|(prefix, limit)| KvOp::Scan { prefix, limit }),
        (bytes(), bytes(), prop_oneof![0..5u32, any::<u32>()]).prop_map(|(prefix, start, limit)| KvOp::ScanFrom {
            prefix,
            start,
            limit
        }),
    ]
}

fn error() -> impl Strategy<Value = KvError> {
    prop_oneof![
        Just(KvError::MalformedOp),
        (any::<u64>(), any::<u64>()).prop_map(|(len, max)| KvError::KeyTooLarge { len, max }),
        (any::<u64>(), any::<u64>()).prop_map(|(len, max)| KvError::ValueTooLarge { len, max }),
        any::<u64>().prop_map(|max| KvError::TooManyKeys { max }),
        any::<u64>().prop_map(|max| KvError::StoreFull { max }),
    ]
}

fn result() -> impl Strategy<Value = KvResult> {
    let value = || prop::option::of(bytes());
    prop_oneof![
        value().prop_map(KvResult::Value),
        value().prop_map(|previous| KvResult::Stored { previous }),
        value().prop_map(|previous| KvResult::Deleted { previous }),
        (any::<bool>(), value()).prop_map(|(swapped, current)| KvResult::Cas { swapped, current }),
        (prop::collection::vec((bytes(), bytes()), 0..5), prop::option::of(bytes()))
            .prop_map(|(entries, next)| KvResult::Page { entries, next }),
        error().prop_map(KvResult::Error),
    ]
}

/// Op bytes as a replica receives them: mostly valid ops, sometimes garbage.
fn op_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => op().prop_map(|op| op.encode()),
        1 => prop::collection::vec(any::<u8>(), 0..12),
    ]
}

fn run_all(store: &mut KvStore, ops: &[Vec<u8>]) -> Vec<Vec<u8>> {
    ops.iter().map(|op| store.execute(op)).collect()
}

proptest! {
    #[test]
    fn op_round_trips(op in op()) {
        let bytes = op.encode();
        prop_assert_eq!(KvOp::decode(&bytes), Ok(op));
        let mut longer = bytes.clone();
        longer.push(0);
        prop_assert_eq!(KvOp::decode(&longer), Err(KvDecodeError::TrailingBytes(1)));
        prop_assert!(KvOp::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn result_round_trips(result in result()) {
        let bytes = result.encode();
        prop_assert_eq!(KvResult::decode(&bytes), Ok(result));
        let mut longer = bytes.clone();
        longer.push(0);
        prop_assert_eq!(KvResult::decode(&longer), Err(KvDecodeError::TrailingBytes(1)));
    }

    #[test]
    fn same_ops_same_results_and_digest(ops in prop::collection::vec(op_bytes(), 0..60)) {
        let (mut a, mut b) = (KvStore::new(), KvStore::new());
        prop_assert_eq!(run_all(&mut a, &ops), run_all(&mut b, &ops));
        prop_assert_eq!(a.digest(), b.digest());
        prop_assert_eq!(a.digest(), Digest::of(&a.snapshot()));
    }

    #[test]
    fn restore_gives_an_equivalent_store(
        ops in prop::collection::vec(op_bytes(), 0..60),
        queries in prop::collection::vec(op_bytes(), 0..30),
    ) {
        let mut a = KvStore::new();
        run_all(&mut a, &ops);
        let mut b = KvStore::new();
        b.restore(&a.snapshot()).unwrap();
        prop_assert_eq!(b.snapshot(), a.snapshot());
        prop_assert_eq!(b.digest(), a.digest());
        prop_assert_eq!(run_all(&mut a, &queries), run_all(&mut b, &queries));
        prop_assert_eq!(a.digest(), b.digest());
    }

    #[test]
    fn garbage_ops_change_nothing(ops in prop::collection::vec(op_bytes(), 0..20),
                                  garbage in prop::collection::vec(any::<u8>(), 0..40)) {
        prop_assume!(KvOp::decode(&garbage).is_err());
        let mut s = KvStore::new();
        run_all(&mut s, &ops);
        let digest = s.digest();
        let result = KvResult::decode(&s.execute(&garbage)).unwrap();
        prop_assert_eq!(result, KvResult::Error(KvError::MalformedOp));
        prop_assert_eq!(s.digest(), digest);
    }

    #[test]
    fn bad_snapshots_keep_state(ops in prop::collection::vec(op_bytes(), 1..40),
                                garbage in prop::collection::vec(any::<u8>(), 0..40),
                                cut in any::<prop::sample::Index>()) {
        let mut s = KvStore::new();
        run_all(&mut s, &ops);
        let (digest, snapshot) = (s.digest(), s.snapshot());
        // Every strict prefix of a snapshot is refused.
        prop_assert!(s.restore(&snapshot[..cut.index(snapshot.len())]).is_err());
        prop_assert_eq!(s.digest(), digest);
        // Random bytes are either refused, leaving the state, or a canonical snapshot.
        match s.restore(&garbage) {
            Err(_) => prop_assert_eq!(s.digest(), digest),
            Ok(()) => prop_assert_eq!(s.snapshot(), garbage),
        }
    }
}
