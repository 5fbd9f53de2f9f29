//! Shared SplitBFT vocabulary: identities, the static configuration loaded into every
//! enclave (SPEC §2), messages (SPEC §3), their codec, the crypto primitives (SPEC §6,
//! first bullet), certificate checks, the per-client deduplication window (SPEC §4.3)
//! and the [`Application`] trait (SPEC §7).
//!
//! Everything here is pure: no I/O, no clock, no randomness. Compartment crates depend on
//! this crate and on nothing that does I/O (see `ARCHITECTURE.md`).

pub mod app;
pub mod attest;
pub mod boundary;
pub mod cert;

pub mod checkpoint;
pub mod codec;
pub mod config;
pub mod counters;
pub mod crypto;
pub mod dedup;
pub mod durable;
pub mod ids;
pub mod keys;
pub mod limits;
pub mod msg;
pub mod recovery;
pub mod session;
pub mod viewchange;
pub mod wire;

pub use app::{AppError, AppRecord, Application};
pub use config::ProtocolConfig;
pub use ids::{ClientId, CompartmentKind, EnclaveId, ReplicaId, Seq, Timestamp, View};
pub use msg::{Digest, Message};
