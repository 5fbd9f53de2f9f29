//! The replicated application interface (SPEC §7).

use crate::msg::Digest;

/// Why an application refused a snapshot.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AppError {
    /// The snapshot bytes do not decode as this application's state.
    #[error("malformed snapshot: {0}")]
    MalformedSnapshot(String),
}

/// A record an application asks to have persisted (SPEC §7: a ledger block), in the order
/// it was produced. The Execution compartment seals it and hands it to the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppRecord {
    /// Position of the record in the application's sequence of records, from 0 without
    /// gaps (a ledger block's height). Every correct replica produces the same record at
    /// the same height: it is a function of the agreed sequence of ops.
    pub height: u64,
    /// The record's canonical encoding.
    pub bytes: Vec<u8>,
}

/// A deterministic state machine replicated by SplitBFT (SPEC §7).
///
/// Every correct Execution enclave calls these in the same order with the same inputs and
/// must reach the same state: no clock, no randomness, no iteration over unordered maps.
/// `execute` never fails: an op that does not decode yields an error *result*, identically
/// everywhere (SPEC §4.3).
pub trait Application: Send {
    /// Applies one operation and returns its encoded result.
    fn execute(&mut self, op: &[u8]) -> Vec<u8>;
    /// The sizes it promises to stay within (SPEC §11): checked against the frame and
    /// state-transfer limits at start ([`crate::limits::Limits::check`]).
    fn limits(&self) -> crate::limits::AppLimits;
    /// Serialises the whole state canonically (equal states give equal bytes).
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the state with a snapshot produced by [`Application::snapshot`].
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), AppError>;
    /// Digest of the state; equal to the SHA-256 of [`Application::snapshot`].
    fn digest(&self) -> Digest;
    /// Records completed since the last call, oldest first (SPEC §7: the ledger's blocks).
    /// They are not part of the snapshot: the environment keeps them (sealed). Called by
    /// Execution after each batch, so they never pile up. Most applications have none.
    fn take_records(&mut self) -> Vec<AppRecord> {
        Vec::new()
    }
}
