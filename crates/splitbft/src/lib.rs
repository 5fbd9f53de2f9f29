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

    /// Checks every size limit of a cluster running this application against the others
    /// (SPEC §11), before anything starts; the error names the two that disagree.
    pub fn check_limits(self, protocol: &splitbft_types::ProtocolConfig, max_frame: usize) -> anyhow::Result<()> {
        splitbft_types::limits::Limits::new(protocol, self.build()?.limits(), max_frame).check()?;
        Ok(())
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

/// Pages through a key-value Scan (SPEC §11: a page is bounded in entries and bytes): yields
/// each page's entries in key order, following each page's `next` with `ScanFrom`, until no
/// matching entry is left or `limit` entries were yielded (`0`: no limit).
pub fn scan(
    client: &splitbft_client::Client,
    prefix: Vec<u8>,
    limit: usize,
) -> impl futures_util::Stream<Item = anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>>> + '_ {
    use anyhow::Context;
    use splitbft_apps::kv::{KvOp, KvResult};
    // `None`: done; otherwise the next page's start (`None` for the first) and entries left.
    let first: Option<(Option<Vec<u8>>, usize)> = Some((None, limit));
    futures_util::stream::unfold(first, move |state| {
        let prefix = prefix.clone();
        async move {
            let (start, left) = state?;
            let page_limit = if limit == 0 { 0 } else { u32::try_from(left).unwrap_or(u32::MAX) };
            let op = match start {
                None => KvOp::Scan { prefix, limit: page_limit },
                Some(start) => KvOp::ScanFrom { prefix, start, limit: page_limit },
            };
            let result = async {
                let bytes = client.invoke(op.encode()).await?;
                KvResult::decode(&bytes).context("the cluster returned an undecodable result")
            };
            match result.await {
                Ok(KvResult::Page { entries, next }) => {
                    let left = left.saturating_sub(entries.len());
                    let more = next.filter(|_| limit == 0 || left > 0).map(|next| (Some(next), left));
                    Some((Ok(entries), more))
                }
                Ok(KvResult::Error(e)) => Some((Err(anyhow::anyhow!("the cluster refused the scan: {e}")), None)),
                Ok(_) => Some((Err(anyhow::anyhow!("the cluster answered a scan with something else")), None)),
                Err(e) => Some((Err(e), None)),
            }
        }
    })
}
