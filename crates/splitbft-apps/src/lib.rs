//! Applications replicated by SplitBFT (SPEC §7).
//!
//! Each implements [`splitbft_types::Application`]: a deterministic state machine whose
//! ops and results are opaque bytes to the protocol. Shipped here: [`kv::KvStore`] and
//! [`ledger::Ledger`] (the store, with executed requests chained into blocks of 5).

pub mod kv;
pub mod ledger;

pub use kv::{
    KvDecodeError, KvError, KvOp, KvResult, KvStore, MAX_KEY_BYTES, MAX_KEYS, MAX_SCAN_ENTRIES, MAX_SCAN_PAGE_BYTES,
    MAX_STORE_BYTES, MAX_VALUE_BYTES,
};
pub use ledger::{BLOCK_ENTRIES, Block, Entry, Ledger, LedgerDecodeError};
