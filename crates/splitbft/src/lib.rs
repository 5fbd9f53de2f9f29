//! The `splitbft` tool: key generation, replica processes, a command-line client and an
//! in-process demo cluster with a closed-loop workload, and the benchmark that runs the
//! paper's experiment matrix against SplitBFT and the PBFT baseline.

pub mod bench;
pub mod clusterfile;
pub mod compartment;
pub mod demo;
pub mod gateway;
pub mod hostport;
pub mod http;
pub mod ledger;
pub mod metrics;
mod plot;
pub mod status;
pub mod workload;

use splitbft_types::app::Application;

/// Which replicated application a cluster runs (SPEC §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AppKind {
    /// The key-value store (GET/PUT/DELETE/CAS/SCAN).
    Kv,
    /// The key-value store whose executed requests are grouped into hash-chained, encrypted
    /// blocks of 5 written to each replica's data directory (paper §6).
    Ledger,
}

impl AppKind {
    /// A fresh instance at genesis.
    pub fn build(self) -> anyhow::Result<Box<dyn Application>> {
        match self {
            AppKind::Kv => Ok(Box::new(splitbft_apps::kv::KvStore::new())),
            AppKind::Ledger => Ok(Box::new(splitbft_apps::ledger::Ledger::new())),
        }
    }

    /// The name used in JSON and CSV output.
    pub fn name(self) -> &'static str {
        match self {
            AppKind::Kv => "kv",
            AppKind::Ledger => "ledger",
        }
    }
}

/// Fills a 32-byte seed from the operating system's random source.
pub fn os_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("the OS random source is available");
    seed
}

/// `f` for `replicas = 3f + 1` (f >= 1), or a message saying what is allowed.
pub fn fault_threshold(replicas: usize) -> anyhow::Result<u32> {
    if replicas < 4 || !(replicas - 1).is_multiple_of(3) {
        anyhow::bail!("--replicas must be 3f + 1 with f >= 1 (4, 7, 10, ...), got {replicas}");
    }
    Ok(((replicas - 1) / 3) as u32)
}
