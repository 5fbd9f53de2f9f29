//! Applications replicated by SplitBFT (SPEC §7).
//!
//! Each implements [`splitbft_types::Application`]: a deterministic state machine whose
//! ops and results are opaque bytes to the protocol. Shipped here: [`kv::KvStore`].

pub mod kv;

pub use kv::{
    KvDecodeError, KvError, KvOp, KvResult, KvStore, MAX_KEY_BYTES, MAX_KEYS, MAX_SCAN_ENTRIES, MAX_VALUE_BYTES,
};
