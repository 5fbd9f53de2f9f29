//! The ledger application (SPEC §7, paper §6): the key-value store whose executed requests
//! are grouped into hash-chained blocks of [`BLOCK_ENTRIES`].
//!
//! Every executed op becomes an [`Entry`] `(op, result)`; every [`BLOCK_ENTRIES`] entries
//! close a [`Block`] `{height, prev_hash, entries}` whose hash is the SHA-256 of its
//! canonical encoding ([`Block::encode`]); the genesis block's `prev_hash` is all zeros.
//! Completed blocks leave through [`Application::take_records`]: the Execution compartment
//! seals them and the environment writes them to disk. The replicated state — what a
//! snapshot and its digest cover — is the store, the chain head `(height, hash)` and the
//! entries of the block being filled, never the chain itself, so checkpoints stay as cheap
//! as the store's.

use serde::{Deserialize, Serialize};
use splitbft_types::limits::AppLimits;
use splitbft_types::{AppError, AppRecord, Application, Digest};

use crate::kv::KvStore;

/// Entries per block (paper §6: "blocks of five messages").
pub const BLOCK_ENTRIES: usize = 5;

/// Format version: the first byte of every encoded block.
pub const BLOCK_VERSION: u8 = 1;

/// Format version written as the first field of every ledger snapshot.
const SNAPSHOT_VERSION: u8 = 1;

/// One executed request: the op bytes as ordered and the result bytes as replied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The op (a postcard-encoded [`crate::KvOp`], or whatever bytes the client sent).
    #[serde(with = "serde_bytes")]
    pub op: Vec<u8>,
    /// The result (a postcard-encoded [`crate::KvResult`]).
    #[serde(with = "serde_bytes")]
    pub result: Vec<u8>,
}

/// A block of the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// Position in the chain, from 0.
    pub height: u64,
    /// Hash of the block at `height - 1`; all zeros for the genesis block.
    pub prev_hash: Digest,
    /// Exactly [`BLOCK_ENTRIES`] entries, in execution order.
    pub entries: Vec<Entry>,
}

/// Why bytes are not a block or a ledger snapshot.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LedgerDecodeError {
    /// Zero bytes.
    #[error("empty block")]
    Empty,
    /// The version byte is not [`BLOCK_VERSION`] (or the snapshot's).
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u8),
    /// The bytes are not a valid postcard encoding.
    #[error("malformed encoding: {0}")]
    Malformed(#[from] postcard::Error),
    /// A valid encoding was followed by this many extra bytes.
    #[error("{0} trailing bytes after the encoding")]
    TrailingBytes(usize),
    /// A block with another number of entries than [`BLOCK_ENTRIES`].
    #[error("a block holds {0} entries, expected {BLOCK_ENTRIES}")]
    WrongEntryCount(usize),
    /// A snapshot whose pending entries would already have closed a block.
    #[error("{0} pending entries, at most {max} allowed", max = BLOCK_ENTRIES - 1)]
    TooManyPending(usize),
    /// A snapshot at height 0 with a non-zero head, or past genesis with a zero head.
    #[error("chain head inconsistent with height {0}")]
    InconsistentHead(u64),
    /// The embedded key-value snapshot was refused.
    #[error("key-value snapshot: {0}")]
    Store(String),
}

impl Block {
    /// The canonical encoding: [`BLOCK_VERSION`], then the postcard encoding of the block.
    /// This is what the block hash covers and what gets sealed.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_extend(self, vec![BLOCK_VERSION]).expect("serialising a block into a Vec cannot fail")
    }

    /// Decodes [`Block::encode`]'s output, rejecting other versions, trailing bytes and
    /// blocks that do not hold exactly [`BLOCK_ENTRIES`] entries.
    pub fn decode(bytes: &[u8]) -> Result<Block, LedgerDecodeError> {
        let (&version, body) = bytes.split_first().ok_or(LedgerDecodeError::Empty)?;
        if version != BLOCK_VERSION {
            return Err(LedgerDecodeError::UnsupportedVersion(version));
        }
        let (block, rest): (Block, _) = postcard::take_from_bytes(body)?;
        if !rest.is_empty() {
            return Err(LedgerDecodeError::TrailingBytes(rest.len()));
        }
        if block.entries.len() != BLOCK_ENTRIES {
            return Err(LedgerDecodeError::WrongEntryCount(block.entries.len()));
        }
        Ok(block)
    }

    /// The block hash: SHA-256 of [`Block::encode`].
    pub fn hash(&self) -> Digest {
        Digest::of(&self.encode())
    }
}

/// The snapshot as written.
#[derive(Serialize)]
struct SnapshotRef<'a> {
    version: u8,
    #[serde(with = "serde_bytes")]
    kv: &'a [u8],
    next_height: u64,
    head: Digest,
    pending: &'a [Entry],
}

/// The snapshot as read.
#[derive(Deserialize)]
struct SnapshotOwned {
    version: u8,
    #[serde(with = "serde_bytes")]
    kv: Vec<u8>,
    next_height: u64,
    head: Digest,
    pending: Vec<Entry>,
}

/// The replicated ledger (SPEC §7): a [`KvStore`] plus the chain of executed requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    kv: KvStore,
    /// Height of the next block to close (= blocks closed so far).
    next_height: u64,
    /// Hash of the last closed block; zeros before the genesis block closes.
    head: Digest,
    /// Entries of the block being filled (fewer than [`BLOCK_ENTRIES`]).
    pending: Vec<Entry>,
    /// Closed blocks not yet taken; emptied by `take_records` after every batch.
    completed: Vec<AppRecord>,
}

impl Ledger {
    /// An empty ledger at genesis.
    pub fn new() -> Self {
        Self::default()
    }

    /// Blocks closed so far (the height the next block will have).
    pub fn height(&self) -> u64 {
        self.next_height
    }

    /// Hash of the last closed block (zeros at genesis).
    pub fn head(&self) -> Digest {
        self.head
    }

    /// Entries waiting for the next block.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The key-value store the ops run against.
    pub fn store(&self) -> &KvStore {
        &self.kv
    }

    fn close_block(&mut self) {
        assert_eq!(self.pending.len(), BLOCK_ENTRIES, "a block closes at exactly BLOCK_ENTRIES entries");
        let block =
            Block { height: self.next_height, prev_hash: self.head, entries: std::mem::take(&mut self.pending) };
        let bytes = block.encode();
        self.head = Digest::of(&bytes);
        self.completed.push(AppRecord { height: block.height, bytes });
        self.next_height += 1;
    }

    fn decode_snapshot(snapshot: &[u8]) -> Result<Ledger, LedgerDecodeError> {
        let (s, rest): (SnapshotOwned, _) = postcard::take_from_bytes(snapshot)?;
        if !rest.is_empty() {
            return Err(LedgerDecodeError::TrailingBytes(rest.len()));
        }
        if s.version != SNAPSHOT_VERSION {
            return Err(LedgerDecodeError::UnsupportedVersion(s.version));
        }
        if s.pending.len() >= BLOCK_ENTRIES {
            return Err(LedgerDecodeError::TooManyPending(s.pending.len()));
        }
        if (s.next_height == 0) != (s.head == Digest::default()) {
            return Err(LedgerDecodeError::InconsistentHead(s.next_height));
        }
        let mut kv = KvStore::new();
        kv.restore(&s.kv).map_err(|e| LedgerDecodeError::Store(e.to_string()))?;
        Ok(Ledger { kv, next_height: s.next_height, head: s.head, pending: s.pending, completed: Vec::new() })
    }
}

impl Application for Ledger {
    /// The store's limits; the state adds the chain head and fewer than
    /// [`BLOCK_ENTRIES`] pending `(op, result)` entries.
    fn limits(&self) -> AppLimits {
        let store = self.kv.limits();
        let pending = (BLOCK_ENTRIES - 1) * (store.max_op_bytes + store.max_result_bytes + 16);
        AppLimits { max_state_bytes: store.max_state_bytes + pending + 128, ..store }
    }

    fn execute(&mut self, op: &[u8]) -> Vec<u8> {
        let result = self.kv.execute(op);
        self.pending.push(Entry { op: op.to_vec(), result: result.clone() });
        if self.pending.len() == BLOCK_ENTRIES {
            self.close_block();
        }
        result
    }

    fn snapshot(&self) -> Vec<u8> {
        let kv = self.kv.snapshot();
        let snapshot = SnapshotRef {
            version: SNAPSHOT_VERSION,
            kv: &kv,
            next_height: self.next_height,
            head: self.head,
            pending: &self.pending,
        };
        postcard::to_allocvec(&snapshot).expect("serialising a snapshot into a Vec cannot fail")
    }

    /// Replaces the state; blocks closed but not taken are dropped with the old state (the
    /// restored history continues from the snapshot's head). On error nothing changes.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), AppError> {
        *self = Self::decode_snapshot(snapshot).map_err(|e| AppError::MalformedSnapshot(e.to_string()))?;
        Ok(())
    }

    fn digest(&self) -> Digest {
        Digest::of(&self.snapshot())
    }

    fn take_records(&mut self) -> Vec<AppRecord> {
        std::mem::take(&mut self.completed)
    }
}
