//! Identities of replicas, compartments, enclaves and clients (SPEC §1).

use serde::{Deserialize, Serialize};

/// A PBFT view number; `primary(v) = v mod n`.
pub type View = u64;
/// A sequence number assigned by the primary's Preparation enclave.
pub type Seq = u64;
/// A client-chosen, strictly increasing request timestamp.
pub type Timestamp = u64;

/// Index of a replica, `0..n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReplicaId(pub u32);

/// Index of a client in the cluster configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClientId(pub u32);

/// The three compartments of a replica (SPEC §1 table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CompartmentKind {
    /// Orders batches, sends PrePrepare/Prepare/NewView (handlers 1, 2, 6, 7).
    Preparation,
    /// Commits on prepare certificates, sends ViewChange (handlers 3, 5).
    Confirmation,
    /// Executes on commit certificates, replies, checkpoints (handlers 4, 8).
    Execution,
}

impl CompartmentKind {
    /// All kinds, in a fixed order usable as an array index.
    pub const ALL: [CompartmentKind; 3] =
        [CompartmentKind::Preparation, CompartmentKind::Confirmation, CompartmentKind::Execution];

    /// Position in [`CompartmentKind::ALL`].
    pub fn index(self) -> usize {
        match self {
            CompartmentKind::Preparation => 0,
            CompartmentKind::Confirmation => 1,
            CompartmentKind::Execution => 2,
        }
    }

    /// Lower-case name used in file names and logs.
    pub fn name(self) -> &'static str {
        match self {
            CompartmentKind::Preparation => "preparation",
            CompartmentKind::Confirmation => "confirmation",
            CompartmentKind::Execution => "execution",
        }
    }
}

impl std::fmt::Display for CompartmentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "r{}", self.0)
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// One compartment instance on one replica (SPEC §1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EnclaveId {
    /// The hosting replica.
    pub replica: ReplicaId,
    /// Which compartment.
    pub kind: CompartmentKind,
}
