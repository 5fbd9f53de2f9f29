//! The untrusted environment of a SplitBFT replica (SPEC §5): sockets, routing, batching
//! at the primary, forwarding from backups, flow control, counters.
//!
//! * [`core`] — the sans-IO routing/batching state machine.
//! * [`node`] — the tokio driver: TCP listeners and dialers, coalesced writes, the
//!   compartments behind the enclave boundary.
//! * [`latency`] — the per-replica request latency histogram served on `/metrics`.
//! * [`store`] — the data directory: sealed ledger blocks appended to one file.
//! * [`wal`] — sealed compartment state, written ahead (SPEC §10), over [`storage`].
//! * [`commit`] — pipelined group commit: the log and the ledger synced on a writer
//!   thread while the event loop works on the next round.
//! * [`local`] — an in-memory, single-threaded cluster driving the same core and the
//!   inline compartments deterministically (tests; the simulator's seed).

pub mod commit;
pub mod core;
pub mod drive;
pub mod latency;
pub mod local;
pub mod node;
pub mod recovery;
pub mod storage;
pub mod store;
pub mod wal;

pub use core::{Action, BrokerCore, BrokerOptions};
pub use node::{
    NodeConfig, NodeError, NodeHandle, NodeReport, NodeReporter, ProcessField, spawn_node, spawn_node_processes,
};
