//! Fixtures shared by splitbft's tests (STYLE: tests share fixtures through one dev-only
//! crate, not copies per file). Only `[dev-dependencies]` may name this crate; the
//! `dependency_rules` test checks that no shipped crate does.
//!
//! * [`process`] — the real `splitbft` binary as a user runs it: free ports, `keygen`,
//!   replica processes killed when a test ends, `client` invocations.
//! * [`cluster`] — deterministic cluster secrets and client keys for compartment tests.

#![allow(clippy::unwrap_used, reason = "test fixtures: a failed setup is a failed test")]

pub mod cluster;
pub mod process;
