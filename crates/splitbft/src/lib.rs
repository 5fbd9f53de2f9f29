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

/// `f` for `replicas = 3f + 1` (f >= 1), or a message saying what is allowed.
pub fn fault_threshold(replicas: usize) -> anyhow::Result<u32> {
    if replicas < 4 || !(replicas - 1).is_multiple_of(3) {
        anyhow::bail!("--replicas must be 3f + 1 with f >= 1 (4, 7, 10, ...), got {replicas}");
    }
    Ok(((replicas - 1) / 3) as u32)
}
