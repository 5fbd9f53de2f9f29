//! A deterministic key-value store (SPEC §7: GET / PUT / DELETE / CAS / SCAN).
//!
//! Ops and results travel as postcard-encoded [`KvOp`] and [`KvResult`]. The state is a
//! `BTreeMap`, so scans, snapshots and digests depend only on the contents, never on the
//! order in which keys were inserted.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_bytes::{ByteBuf, Bytes};
use splitbft_types::limits::AppLimits;
use splitbft_types::{AppError, Application, Digest};

/// Largest key, in bytes. Keys are identifiers; 1 KiB is ample for them and keeps the
/// per-entry overhead of the ordered map and of scan prefixes small.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value, in bytes. 32 KiB so that the largest op — a CAS carrying a key and two
/// values — fits the cluster's `max_op_bytes` (66 KiB by default) once sealed: checked at
/// start against it ([`splitbft_types::limits`], SPEC §11).
pub const MAX_VALUE_BYTES: usize = 32 * 1024;
/// Most entries one Scan page returns; larger limits (and `0`) are clamped to it. Bounds the
/// work one op does and the size of its reply, which every Execution enclave produces.
pub const MAX_SCAN_ENTRIES: usize = 1000;
/// Most key and value bytes one Scan page returns: a page ends before the entry that would
/// exceed it (but holds at least one), and says where the next page starts. 256 KiB keeps a
/// reply well inside a frame and the per-client reply cache small (SPEC §11).
pub const MAX_SCAN_PAGE_BYTES: usize = 256 * 1024;
/// Most keys the store holds. Bounds the state, hence memory and the cost of every
/// snapshot and digest taken at a checkpoint, whatever clients send.
pub const MAX_KEYS: usize = 1_000_000;
/// Most key and value bytes the store holds, all entries together: with [`MAX_KEYS`] this
/// bounds a snapshot ([`MAX_STATE_BYTES`]), which must fit state transfer's limit with the
/// clients' reply caches (checked at start, SPEC §11).
pub const MAX_STORE_BYTES: usize = 512 * 1024 * 1024;
/// Largest encoded op: a CAS with a key and two values, plus tags and length prefixes.
pub const MAX_OP_BYTES: usize = MAX_KEY_BYTES + 2 * MAX_VALUE_BYTES + 32;
/// Largest encoded result: a Scan page (its entries' bytes, two length prefixes per entry,
/// the continuation key) or a single value, plus tags.
pub const MAX_RESULT_BYTES: usize = MAX_SCAN_PAGE_BYTES + 8 * MAX_SCAN_ENTRIES + MAX_KEY_BYTES + 32;
/// Largest snapshot: every byte held plus two length prefixes per key, and the header.
pub const MAX_STATE_BYTES: usize = MAX_STORE_BYTES + 8 * MAX_KEYS + 16;

/// `(key, value)` pairs in key order, as scans and snapshots carry them.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Format version written as the first byte of every snapshot.
const SNAPSHOT_VERSION: u8 = 1;

/// One operation on the store; its postcard encoding is a request's op bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOp {
    /// Reads the value under `key`.
    Get {
        /// Key to read.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Stores `value` under `key`, replacing any previous value.
    Put {
        /// Key to write.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Value to store.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Removes `key`.
    Delete {
        /// Key to remove.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Compare-and-swap: if the value under `key` equals `expected`, sets it to `new`.
    Cas {
        /// Key to swap.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Value required for the swap; `None` requires the key to be absent.
        #[serde(with = "serde_bytes")]
        expected: Option<Vec<u8>>,
        /// Value to install; `None` deletes the key.
        #[serde(with = "serde_bytes")]
        new: Option<Vec<u8>>,
    },
    /// Lists entries whose key starts with `prefix`, in key order: the first page (see
    /// [`KvResult::Page`]).
    Scan {
        /// Key prefix to match (empty matches every key).
        #[serde(with = "serde_bytes")]
        prefix: Vec<u8>,
        /// Most entries to return; `0` or anything above [`MAX_SCAN_ENTRIES`] means that.
        limit: u32,
    },
    /// The page of a Scan that starts at key `start` (a previous page's `next`).
    ScanFrom {
        /// Key prefix to match.
        #[serde(with = "serde_bytes")]
        prefix: Vec<u8>,
        /// First key to consider.
        #[serde(with = "serde_bytes")]
        start: Vec<u8>,
        /// As in [`KvOp::Scan`].
        limit: u32,
    },
    /// Adds `by` to the decimal integer under `key` (an absent key counts as 0) and stores
    /// the sum, atomically (Redis `INCR`/`INCRBY`): executed in the state machine, so
    /// concurrent increments neither race nor retry.
    Incr {
        /// Key to increment.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Amount to add (may be negative).
        by: i64,
    },
}

/// The outcome of one [`KvOp`]; its postcard encoding is the reply's result bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvResult {
    /// Answer to Get: the value, if the key is present.
    Value(#[serde(with = "serde_bytes")] Option<Vec<u8>>),
    /// Answer to Put.
    Stored {
        /// Value the key held before, if any.
        #[serde(with = "serde_bytes")]
        previous: Option<Vec<u8>>,
    },
    /// Answer to Delete.
    Deleted {
        /// Value the key held before, if any.
        #[serde(with = "serde_bytes")]
        previous: Option<Vec<u8>>,
    },
    /// Answer to Cas.
    Cas {
        /// Whether the expected value matched and `new` was installed.
        swapped: bool,
        /// Value under the key after the op (`new` if swapped, else the unchanged value).
        #[serde(with = "serde_bytes")]
        current: Option<Vec<u8>>,
    },
    /// Answer to Scan: one page of `(key, value)` pairs in increasing key order, at most
    /// `limit` entries and [`MAX_SCAN_PAGE_BYTES`] of keys and values.
    Page {
        /// The entries.
        #[serde(with = "pairs")]
        entries: Vec<(Vec<u8>, Vec<u8>)>,
        /// Where the next page starts (`KvOp::ScanFrom`), if more entries match.
        #[serde(with = "serde_bytes")]
        next: Option<Vec<u8>>,
    },
    /// The op was refused; the state is unchanged.
    Error(KvError),
    /// Answer to Incr: the value stored.
    Incremented {
        /// The sum now under the key.
        value: i64,
    },
}

/// Why the store refused an op. Part of the replicated result, hence serialisable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum KvError {
    /// The op bytes do not decode as exactly one [`KvOp`].
    #[error("op bytes do not decode as a KvOp")]
    MalformedOp,
    /// A key or scan prefix is longer than [`MAX_KEY_BYTES`].
    #[error("key of {len} bytes exceeds the maximum of {max}")]
    KeyTooLarge {
        /// Length of the offending key.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A value is longer than [`MAX_VALUE_BYTES`].
    #[error("value of {len} bytes exceeds the maximum of {max}")]
    ValueTooLarge {
        /// Length of the offending value.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Inserting a new key would exceed [`MAX_KEYS`].
    #[error("the store already holds the maximum of {max} keys")]
    TooManyKeys {
        /// The limit.
        max: u64,
    },
    /// The write would take the store past [`MAX_STORE_BYTES`] of keys and values.
    #[error("the store would exceed its maximum of {max} bytes")]
    StoreFull {
        /// The limit.
        max: u64,
    },
    /// Incr on a value that is not a decimal `i64`, or a sum that overflows one (Redis's
    /// words for both).
    #[error("value is not an integer or out of range")]
    NotAnInteger,
}

/// Why bytes did not decode as a [`KvOp`] or [`KvResult`].
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KvDecodeError {
    /// The bytes are not a valid postcard encoding of the type.
    #[error("malformed encoding: {0}")]
    Malformed(#[from] postcard::Error),
    /// A valid encoding was followed by this many extra bytes.
    #[error("{0} trailing bytes after the encoding")]
    TrailingBytes(usize),
}

impl KvOp {
    /// Encodes the op as request bytes.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("serialising a KvOp into a Vec cannot fail")
    }

    /// Decodes request bytes, rejecting trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<KvOp, KvDecodeError> {
        decode_exact(bytes)
    }
}

impl KvResult {
    /// Encodes the result as reply bytes.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("serialising a KvResult into a Vec cannot fail")
    }

    /// Decodes reply bytes, rejecting trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<KvResult, KvDecodeError> {
        decode_exact(bytes)
    }
}

fn decode_exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, KvDecodeError> {
    let (value, rest) = postcard::take_from_bytes(bytes)?;
    match rest.len() {
        0 => Ok(value),
        n => Err(KvDecodeError::TrailingBytes(n)),
    }
}

/// `(key, value)` lists as sequences of byte-string pairs (one length-prefixed copy each,
/// rather than serde's element-by-element `Vec<u8>` path).
mod pairs {
    use super::*;

    pub(super) fn serialize<S: Serializer>(pairs: &[(Vec<u8>, Vec<u8>)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(pairs.iter().map(|(k, v)| (Bytes::new(k), Bytes::new(v))))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Pairs, D::Error> {
        let raw = Vec::<(ByteBuf, ByteBuf)>::deserialize(d)?;
        Ok(raw.into_iter().map(|(k, v)| (k.into_vec(), v.into_vec())).collect())
    }
}

/// The snapshot as written: serialised straight from the live map, with no interim copy.
#[derive(Serialize)]
struct SnapshotRef<'a> {
    version: u8,
    #[serde(serialize_with = "serialize_map")]
    entries: &'a BTreeMap<Vec<u8>, Vec<u8>>,
}

/// The snapshot as read: a list, so that unordered or duplicate keys can be rejected.
#[derive(Deserialize)]
struct SnapshotOwned {
    version: u8,
    #[serde(with = "pairs")]
    entries: Pairs,
}

fn serialize_map<S: Serializer>(map: &&BTreeMap<Vec<u8>, Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(map.iter().map(|(k, v)| (Bytes::new(k), Bytes::new(v))))
}

fn check_key(key: &[u8]) -> Result<(), KvError> {
    if key.len() > MAX_KEY_BYTES {
        let (len, max) = (key.len() as u64, MAX_KEY_BYTES as u64);
        return Err(KvError::KeyTooLarge { len, max });
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), KvError> {
    if value.len() > MAX_VALUE_BYTES {
        let (len, max) = (value.len() as u64, MAX_VALUE_BYTES as u64);
        return Err(KvError::ValueTooLarge { len, max });
    }
    Ok(())
}

/// The replicated key-value store (SPEC §7).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    /// Ordered, so iteration (scans, snapshots) is deterministic.
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Key and value bytes held, at most [`MAX_STORE_BYTES`].
    bytes: usize,
}

impl KvStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Applies a decoded op; [`Application::execute`] is this plus the codec.
    pub fn apply(&mut self, op: KvOp) -> KvResult {
        self.try_apply(op).unwrap_or_else(KvResult::Error)
    }

    /// Every limit is checked before the map is touched, so an `Err` changes nothing.
    fn try_apply(&mut self, op: KvOp) -> Result<KvResult, KvError> {
        Ok(match op {
            KvOp::Get { key } => {
                check_key(&key)?;
                KvResult::Value(self.entries.get(&key).cloned())
            }
            KvOp::Put { key, value } => {
                check_key(&key)?;
                check_value(&value)?;
                self.check_room_for(&key, &value)?;
                KvResult::Stored { previous: self.insert(key, value) }
            }
            KvOp::Delete { key } => {
                check_key(&key)?;
                KvResult::Deleted { previous: self.remove(&key) }
            }
            KvOp::Cas { key, expected, new } => {
                check_key(&key)?;
                new.as_deref().map_or(Ok(()), check_value)?;
                let current = self.entries.get(&key);
                if current != expected.as_ref() {
                    return Ok(KvResult::Cas { swapped: false, current: current.cloned() });
                }
                match &new {
                    Some(value) => {
                        self.check_room_for(&key, value)?;
                        self.insert(key, value.clone());
                    }
                    None => {
                        self.remove(&key);
                    }
                }
                KvResult::Cas { swapped: true, current: new }
            }
            KvOp::Scan { prefix, limit } => {
                check_key(&prefix)?;
                self.page(&prefix, &prefix, limit)
            }
            KvOp::ScanFrom { prefix, start, limit } => {
                check_key(&prefix)?;
                check_key(&start)?;
                let start = if start < prefix { &prefix } else { &start };
                self.page(&prefix, start, limit)
            }
            KvOp::Incr { key, by } => {
                check_key(&key)?;
                let current = match self.entries.get(&key) {
                    None => 0,
                    Some(v) => {
                        std::str::from_utf8(v).ok().and_then(|s| s.parse::<i64>().ok()).ok_or(KvError::NotAnInteger)?
                    }
                };
                let value = current.checked_add(by).ok_or(KvError::NotAnInteger)?;
                let bytes = value.to_string().into_bytes();
                self.check_room_for(&key, &bytes)?;
                self.insert(key, bytes);
                KvResult::Incremented { value }
            }
        })
    }

    /// The page of entries under `prefix` from key `start` on: at most `limit` (clamped to
    /// [`MAX_SCAN_ENTRIES`]) entries and [`MAX_SCAN_PAGE_BYTES`], but at least one entry.
    fn page(&self, prefix: &[u8], start: &[u8], limit: u32) -> KvResult {
        let limit = match usize::try_from(limit) {
            Ok(0) | Err(_) => MAX_SCAN_ENTRIES,
            Ok(n) => n.min(MAX_SCAN_ENTRIES),
        };
        let from = (Bound::Included(start), Bound::Unbounded);
        let mut matching = self.entries.range::<[u8], _>(from).take_while(|(k, _)| k.starts_with(prefix));
        let (mut entries, mut bytes) = (Vec::new(), 0);
        for (key, value) in matching.by_ref() {
            let size = key.len() + value.len();
            if entries.len() == limit || (!entries.is_empty() && bytes + size > MAX_SCAN_PAGE_BYTES) {
                return KvResult::Page { entries, next: Some(key.clone()) };
            }
            bytes += size;
            entries.push((key.clone(), value.clone()));
        }
        KvResult::Page { entries, next: None }
    }

    /// Refuses to store `value` under `key` if the key is new and the store holds
    /// [`MAX_KEYS`], or if the store's bytes would exceed [`MAX_STORE_BYTES`].
    fn check_room_for(&self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        let previous = self.entries.get(key);
        if self.entries.len() >= MAX_KEYS && previous.is_none() {
            return Err(KvError::TooManyKeys { max: MAX_KEYS as u64 });
        }
        let freed = previous.map_or(0, |p| key.len() + p.len());
        if self.bytes - freed + key.len() + value.len() > MAX_STORE_BYTES {
            return Err(KvError::StoreFull { max: MAX_STORE_BYTES as u64 });
        }
        Ok(())
    }

    /// Inserts, keeping the byte count.
    fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) -> Option<Vec<u8>> {
        let (key_len, added) = (key.len(), key.len() + value.len());
        let previous = self.entries.insert(key, value);
        self.bytes = self.bytes + added - previous.as_ref().map_or(0, |p| key_len + p.len());
        previous
    }

    /// Removes, keeping the byte count.
    fn remove(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        let previous = self.entries.remove(key);
        self.bytes -= previous.as_ref().map_or(0, |p| key.len() + p.len());
        previous
    }

    /// Key and value bytes held (at most [`MAX_STORE_BYTES`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Decodes and validates a snapshot into the store it describes.
fn decode_snapshot(bytes: &[u8]) -> Result<KvStore, String> {
    let snapshot: SnapshotOwned = decode_exact(bytes).map_err(|e| e.to_string())?;
    if snapshot.version != SNAPSHOT_VERSION {
        return Err(format!("unsupported snapshot version {}", snapshot.version));
    }
    if snapshot.entries.len() > MAX_KEYS {
        return Err(format!("{} entries exceed the maximum of {MAX_KEYS}", snapshot.entries.len()));
    }
    let mut previous: Option<&[u8]> = None;
    for (i, (key, value)) in snapshot.entries.iter().enumerate() {
        check_key(key).and_then(|()| check_value(value)).map_err(|e| format!("entry {i}: {e}"))?;
        if previous.is_some_and(|p| p >= key.as_slice()) {
            return Err(format!("entry {i}: keys not strictly increasing"));
        }
        previous = Some(key);
    }
    let bytes: usize = snapshot.entries.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_STORE_BYTES {
        return Err(format!("{bytes} bytes of keys and values exceed the maximum of {MAX_STORE_BYTES}"));
    }
    Ok(KvStore { entries: snapshot.entries.into_iter().collect(), bytes })
}

impl Application for KvStore {
    fn limits(&self) -> AppLimits {
        AppLimits { max_op_bytes: MAX_OP_BYTES, max_result_bytes: MAX_RESULT_BYTES, max_state_bytes: MAX_STATE_BYTES }
    }

    fn execute(&mut self, op: &[u8]) -> Vec<u8> {
        match KvOp::decode(op) {
            Ok(op) => self.apply(op),
            Err(_) => KvResult::Error(KvError::MalformedOp),
        }
        .encode()
    }

    fn snapshot(&self) -> Vec<u8> {
        let snapshot = SnapshotRef { version: SNAPSHOT_VERSION, entries: &self.entries };
        postcard::to_allocvec(&snapshot).expect("serialising a snapshot into a Vec cannot fail")
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), AppError> {
        *self = decode_snapshot(snapshot).map_err(AppError::MalformedSnapshot)?;
        Ok(())
    }

    fn digest(&self) -> Digest {
        Digest::of(&self.snapshot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(bytes: impl AsRef<[u8]>) -> Vec<u8> {
        bytes.as_ref().to_vec()
    }
    fn o(value: Option<&str>) -> Option<Vec<u8>> {
        value.map(v)
    }
    fn get(key: impl AsRef<[u8]>) -> KvOp {
        KvOp::Get { key: v(key) }
    }
    fn put(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> KvOp {
        KvOp::Put { key: v(key), value: v(value) }
    }
    fn del(key: impl AsRef<[u8]>) -> KvOp {
        KvOp::Delete { key: v(key) }
    }
    fn cas(key: &str, expected: Option<&str>, new: Option<&str>) -> KvOp {
        KvOp::Cas { key: v(key), expected: o(expected), new: o(new) }
    }
    fn scan(prefix: impl AsRef<[u8]>, limit: u32) -> KvOp {
        KvOp::Scan { prefix: v(prefix), limit }
    }
    fn stored(previous: Option<&str>) -> KvResult {
        KvResult::Stored { previous: o(previous) }
    }
    fn swapped(swapped: bool, current: Option<&str>) -> KvResult {
        KvResult::Cas { swapped, current: o(current) }
    }

    /// Runs `op` through the byte interface, as an Execution enclave does.
    fn run(store: &mut KvStore, op: KvOp) -> KvResult {
        KvResult::decode(&store.execute(&op.encode())).unwrap()
    }

    fn scan_keys(store: &mut KvStore, prefix: &str, limit: u32) -> Vec<String> {
        let KvResult::Page { entries, .. } = run(store, scan(prefix, limit)) else { panic!() };
        entries.into_iter().map(|(k, _)| String::from_utf8_lossy(&k).into_owned()).collect()
    }

    #[test]
    fn get_put_delete() {
        let mut s = KvStore::new();
        assert_eq!(run(&mut s, get("k")), KvResult::Value(None));
        assert_eq!(run(&mut s, put("k", "1")), stored(None));
        assert_eq!(run(&mut s, put("k", "2")), stored(Some("1")));
        assert_eq!(run(&mut s, get("k")), KvResult::Value(o(Some("2"))));
        assert_eq!(s.len(), 1);
        let deleted = |previous| KvResult::Deleted { previous: o(previous) };
        assert_eq!(run(&mut s, del("k")), deleted(Some("2")));
        assert_eq!(run(&mut s, del("k")), deleted(None));
        assert!(s.is_empty());
    }

    /// Incr adds atomically in the state machine (Redis INCR/INCRBY): an absent key is 0, the
    /// sum is stored as decimal text, a non-integer or an overflow is refused and changes
    /// nothing.
    #[test]
    fn incr_adds_in_place_and_refuses_what_is_not_an_integer() {
        let mut s = KvStore::new();
        let incr = |key: &str, by| KvOp::Incr { key: v(key), by };
        let value = |value| KvResult::Incremented { value };
        assert_eq!(run(&mut s, incr("n", 1)), value(1));
        assert_eq!(run(&mut s, incr("n", 41)), value(42));
        assert_eq!(run(&mut s, incr("n", -43)), value(-1));
        assert_eq!(run(&mut s, get("n")), KvResult::Value(o(Some("-1"))));
        assert_eq!(run(&mut s, put("x", "abc")), stored(None));
        let refused = KvResult::Error(KvError::NotAnInteger);
        assert_eq!(run(&mut s, incr("x", 1)), refused);
        assert_eq!(run(&mut s, get("x")), KvResult::Value(o(Some("abc"))), "unchanged");
        assert_eq!(run(&mut s, put("m", i64::MAX.to_string())), stored(None));
        assert_eq!(run(&mut s, incr("m", 1)), refused, "overflow");
        assert_eq!(run(&mut s, incr("m", -1)), value(i64::MAX - 1));
        let long = KvOp::Incr { key: vec![b'k'; MAX_KEY_BYTES + 1], by: 1 };
        assert!(matches!(run(&mut s, long), KvResult::Error(KvError::KeyTooLarge { .. })));
    }

    #[test]
    fn cas_semantics() {
        let mut s = KvStore::new();
        let mut check = |op, expected, why| assert_eq!(run(&mut s, op), expected, "{why}");
        check(cas("k", Some("x"), Some("1")), swapped(false, None), "absent, expected a value");
        check(cas("k", None, Some("1")), swapped(true, Some("1")), "insert if absent");
        check(cas("k", None, Some("2")), swapped(false, Some("1")), "present, expected absent");
        check(cas("k", Some("0"), Some("2")), swapped(false, Some("1")), "wrong value");
        check(cas("k", Some("1"), Some("2")), swapped(true, Some("2")), "swap");
        check(cas("k", Some("2"), None), swapped(true, None), "delete");
        check(cas("k", None, None), swapped(true, None), "absent stays absent");
        assert!(s.is_empty());
    }

    #[test]
    fn scan_prefix_limit_and_order() {
        let mut s = KvStore::new();
        for key in ["b", "abc", "a", "ab", "aa", "ac", ""] {
            run(&mut s, put(key, key));
        }
        assert_eq!(scan_keys(&mut s, "a", 0), ["a", "aa", "ab", "abc", "ac"]);
        assert_eq!(scan_keys(&mut s, "a", 2), ["a", "aa"]);
        assert_eq!(scan_keys(&mut s, "ab", 10), ["ab", "abc"]);
        assert_eq!(scan_keys(&mut s, "", 0), ["", "a", "aa", "ab", "abc", "ac", "b"]);
        assert!(scan_keys(&mut s, "c", 0).is_empty());
        let KvResult::Page { entries, next } = run(&mut s, scan("ab", 1)) else { panic!() };
        assert_eq!(entries, [(v("ab"), v("ab"))]);
        assert_eq!(next, Some(v("abc")));
    }

    #[test]
    fn scan_limit_clamped_at_bound() {
        let mut s = KvStore::new();
        for i in 0..=MAX_SCAN_ENTRIES as u32 {
            s.apply(put(i.to_be_bytes(), ""));
        }
        let max = MAX_SCAN_ENTRIES as u32;
        for (limit, len) in [(0, max), (max - 1, max - 1), (max, max), (max + 1, max), (u32::MAX, max)] {
            assert_eq!(scan_keys(&mut s, "", limit).len(), len as usize, "limit {limit}");
        }
    }

    #[test]
    fn malformed_ops_are_errors_and_change_nothing() {
        let mut s = KvStore::new();
        s.apply(put("k", "v"));
        let (digest, valid) = (s.digest(), put("k", "w").encode());
        let mut trailing = valid.clone();
        trailing.push(0);
        let truncated = &valid[..valid.len() - 1];
        for bad in [&[][..], &[0xff; 8], &[5], truncated, &trailing] {
            assert!(KvOp::decode(bad).is_err());
            let result = KvResult::decode(&s.execute(bad)).unwrap();
            assert_eq!(result, KvResult::Error(KvError::MalformedOp), "{bad:?}");
            assert_eq!(s.digest(), digest);
        }
        assert_eq!(KvOp::decode(&trailing), Err(KvDecodeError::TrailingBytes(1)));
    }

    #[test]
    fn key_and_value_sizes_at_and_past_the_bound() {
        let mut s = KvStore::new();
        let (key, value) = (vec![7; MAX_KEY_BYTES], vec![8; MAX_VALUE_BYTES]);
        assert_eq!(run(&mut s, put(&key, &value)), stored(None));
        let digest = s.digest();
        let (max_key, max_value) = (MAX_KEY_BYTES as u64, MAX_VALUE_BYTES as u64);
        let key_err = KvResult::Error(KvError::KeyTooLarge { len: max_key + 1, max: max_key });
        let value_err = KvResult::Error(KvError::ValueTooLarge { len: max_value + 1, max: max_value });
        let (long_key, long_value) = (vec![7; MAX_KEY_BYTES + 1], vec![8; MAX_VALUE_BYTES + 1]);
        let long_cas = KvOp::Cas { key: key.clone(), expected: Some(value), new: Some(v(&long_value)) };
        for (op, expected) in [
            (put(&long_key, ""), &key_err),
            (get(&long_key), &key_err),
            (del(&long_key), &key_err),
            (scan(&long_key, 0), &key_err),
            (KvOp::Cas { key: long_key, expected: None, new: None }, &key_err),
            (put(&key, &long_value), &value_err),
            (long_cas, &value_err),
        ] {
            assert_eq!(&run(&mut s, op), expected);
            assert_eq!(s.digest(), digest);
        }
    }

    #[test]
    fn key_count_at_and_past_the_bound() {
        let mut s = KvStore::new();
        s.entries = (0..MAX_KEYS as u32 - 1).map(|i| (v(i.to_be_bytes()), vec![])).collect();
        s.bytes = 4 * (MAX_KEYS - 1);
        assert_eq!(run(&mut s, put("last", "")), stored(None));
        assert_eq!(s.len(), MAX_KEYS);
        let full = KvResult::Error(KvError::TooManyKeys { max: MAX_KEYS as u64 });
        assert_eq!(run(&mut s, put("one more", "")), full);
        assert_eq!(run(&mut s, cas("new", None, Some(""))), full);
        assert_eq!(run(&mut s, put("last", "again")), stored(Some("")));
        assert_eq!(s.len(), MAX_KEYS);

        // A full store's snapshot restores; one entry more does not.
        let mut copy = KvStore::new();
        copy.restore(&s.snapshot()).unwrap();
        assert_eq!(copy.digest(), s.digest());
        let mut entries: Pairs = s.entries.clone().into_iter().collect();
        entries.push((v("zzz"), vec![]));
        let over = postcard::to_allocvec(&(SNAPSHOT_VERSION, entries)).unwrap();
        assert!(KvStore::new().restore(&over).is_err());
    }

    #[test]
    fn snapshot_format_and_digest() {
        let mut s = KvStore::new();
        assert_eq!(s.snapshot(), [SNAPSHOT_VERSION, 0]);
        s.apply(put("b", "2"));
        s.apply(put("a", "1"));
        assert_eq!(s.snapshot(), [1, 2, 1, b'a', 1, b'1', 1, b'b', 1, b'2']);
        assert_eq!(s.digest(), Digest::of(&s.snapshot()));
    }

    #[test]
    fn bad_snapshots_are_refused_and_keep_state() {
        let mut s = KvStore::new();
        s.apply(put("a", "1"));
        s.apply(put("b", "2"));
        let (digest, good) = (s.digest(), s.snapshot());
        let encode = |version: u8, entries: &[(&[u8], &[u8])]| {
            let entries: Pairs = entries.iter().map(|&(k, val)| (v(k), v(val))).collect();
            postcard::to_allocvec(&(version, entries)).unwrap()
        };
        let mut trailing = good.clone();
        trailing.push(0);
        let bad = [
            vec![],
            vec![0xff; 16],
            good[..good.len() - 1].to_vec(),
            trailing,
            encode(2, &[(b"x", b"")]),
            encode(1, &[(b"b", b""), (b"a", b"")]),
            encode(1, &[(b"a", b""), (b"a", b"")]),
            encode(1, &[(&[0; MAX_KEY_BYTES + 1], b"")]),
            encode(1, &[(b"", &[0; MAX_VALUE_BYTES + 1])]),
        ];
        for snapshot in &bad {
            let err = s.restore(snapshot).unwrap_err();
            assert!(matches!(err, AppError::MalformedSnapshot(_)));
            assert_eq!(s.digest(), digest, "{err}");
        }
        let mut other = KvStore::new();
        other.restore(&encode(1, &[(b"a", b"1"), (b"b", b"2")])).unwrap();
        assert_eq!(other, s);
    }

    /// SPEC §11: a Scan pages by entries and by bytes; following `next` with ScanFrom
    /// visits every matching key exactly once, in order.
    #[test]
    fn scan_pages_by_bytes_and_continues_from_next() {
        let mut s = KvStore::new();
        let value = vec![7u8; MAX_VALUE_BYTES];
        // Keys "p000".."p019", each entry 4 + 32 KiB: 7 entries fill a 256 KiB page (8 would not).
        for i in 0..20 {
            s.apply(put(format!("p{i:03}"), &value));
        }
        s.apply(put("q", "other prefix"));
        let per_page = MAX_SCAN_PAGE_BYTES / (4 + MAX_VALUE_BYTES);
        assert_eq!(per_page, 7);
        let mut seen = Vec::new();
        let mut op = scan("p", 0);
        loop {
            let result = run(&mut s, op);
            assert!(result.encode().len() <= MAX_RESULT_BYTES);
            let KvResult::Page { entries, next } = result else { panic!() };
            let bytes: usize = entries.iter().map(|(k, v)| k.len() + v.len()).sum();
            assert!(bytes <= MAX_SCAN_PAGE_BYTES && !entries.is_empty());
            assert!(entries.len() == per_page || next.is_none(), "{} entries", entries.len());
            seen.extend(entries.into_iter().map(|(k, _)| String::from_utf8(k).unwrap()));
            match next {
                Some(start) => op = KvOp::ScanFrom { prefix: v("p"), start, limit: 0 },
                None => break,
            }
        }
        assert_eq!(seen, (0..20).map(|i| format!("p{i:03}")).collect::<Vec<_>>());
        // The entry limit still cuts pages, and `next` is the first key not returned.
        let KvResult::Page { entries, next } = run(&mut s, scan("p", 3)) else { panic!() };
        assert_eq!((entries.len(), next), (3, Some(v("p003"))));
        // A start before the prefix is the prefix; a start past every key gives an empty page.
        let KvResult::Page { entries, .. } = run(&mut s, KvOp::ScanFrom { prefix: v("p"), start: v("a"), limit: 1 })
        else {
            panic!()
        };
        assert_eq!(entries[0].0, v("p000"));
        let last = KvOp::ScanFrom { prefix: v("p"), start: v("p999"), limit: 0 };
        assert_eq!(run(&mut s, last), KvResult::Page { entries: vec![], next: None });
    }

    /// SPEC §11: the store's bytes stay within MAX_STORE_BYTES (at the bound and one past
    /// it), overwrites and deletes give bytes back, and a snapshot past it is refused.
    #[test]
    fn store_bytes_at_and_past_the_bound() {
        let mut s = KvStore::new();
        s.apply(put("a", "12345"));
        // Pretend the rest of the store is full up to 2 bytes short of the bound.
        s.bytes = MAX_STORE_BYTES - 2;
        let full = KvResult::Error(KvError::StoreFull { max: MAX_STORE_BYTES as u64 });
        assert_eq!(run(&mut s, put("b", "xy")), full);
        assert_eq!(run(&mut s, put("b", "x")), stored(None));
        assert_eq!(s.bytes(), MAX_STORE_BYTES);
        // Overwriting with a value as long is fine, one byte longer is not.
        assert_eq!(run(&mut s, put("a", "54321")), stored(Some("12345")));
        assert_eq!(run(&mut s, put("a", "543210")), full);
        assert_eq!(run(&mut s, cas("a", Some("54321"), Some("5432100"))), full);
        assert_eq!(run(&mut s, del("a")), KvResult::Deleted { previous: o(Some("54321")) });
        assert_eq!(s.bytes(), MAX_STORE_BYTES - 6);
        // The limits the store declares agree with what it produces.
        let limits = s.limits();
        assert_eq!(limits.max_state_bytes, MAX_STATE_BYTES);
        let op = KvOp::Cas {
            key: vec![1; MAX_KEY_BYTES],
            expected: Some(value_of(MAX_VALUE_BYTES)),
            new: Some(value_of(MAX_VALUE_BYTES)),
        };
        assert!(op.encode().len() <= limits.max_op_bytes);
        let mut small = KvStore::new();
        for i in 0..100u32 {
            small.apply(put(i.to_be_bytes(), value_of(1000)));
        }
        assert!(small.snapshot().len() <= small.bytes() + 8 * small.len() + 16);
        // A restored store counts its bytes again.
        let mut copy = KvStore::new();
        copy.restore(&small.snapshot()).unwrap();
        assert_eq!(copy.bytes(), small.bytes());
    }

    fn value_of(len: usize) -> Vec<u8> {
        vec![0xab; len]
    }
}
