//! The `splitbft` tool: key generation, replica processes, a command-line client and an
//! in-process demo cluster with a closed-loop workload.

pub mod clusterfile;
pub mod demo;

/// Fills a 32-byte seed from the operating system's random source.
pub fn os_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("the OS random source is available");
    seed
}
