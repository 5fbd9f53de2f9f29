//! The ledger verifier (SPEC §7): walks a replica's block file with that replica's
//! Execution sealing key, and compares the chains of several replicas.
//!
//! For one replica it opens every record (AES-256-GCM-SIV, key re-derived from the
//! Execution enclave's secret key), decodes the block, and checks that the block's height
//! is the one the record was sealed for and that each `prev_hash` is the hash of the block
//! one below. What it reports rather than refuses:
//! * a repeated height whose record is byte-identical to the first one (a replica that
//!   restarted from genesis re-executed and rewrote it);
//! * gaps — heights never written, e.g. skipped by a state transfer — where the chain
//!   cannot be checked locally (it can against another replica's chain).
//!
//! What it refuses, naming the record: a record that does not open (tampered, moved,
//! another replica's or cluster's), a block that does not decode, a broken link, and a
//! repeated height with different bytes (a second history under the same keys).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use splitbft_apps::ledger::{Block, LedgerDecodeError};
use splitbft_broker::store::{BLOCK_FILE, RecordError, RecordReader};
use splitbft_execution::{RecordSealer, SealError};
use splitbft_types::crypto::SecretKey;
use splitbft_types::{Digest, ReplicaId};

/// What one replica's chain holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChainReport {
    /// Records in the file.
    pub records: u64,
    /// Distinct blocks (heights).
    pub blocks: u64,
    /// Entries (executed requests) in those blocks.
    pub entries: u64,
    /// Records that repeat an earlier height byte for byte (rewritten after a restart).
    pub repeated: u64,
    /// Highest height, if any block was written.
    pub head_height: Option<u64>,
    /// Hash of the block at `head_height`.
    pub head_hash: Option<String>,
    /// Missing heights below the head, as inclusive ranges.
    pub gaps: Vec<(u64, u64)>,
    /// Block hash by height (for comparing replicas).
    #[serde(skip)]
    pub hashes: BTreeMap<u64, Digest>,
}

/// Why a chain is refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The file does not read back as records.
    #[error(transparent)]
    Records(#[from] RecordError),
    /// A record does not open under this replica's key for the height it claims.
    #[error("{path}: record {index} at byte {offset} (height {height}) does not open: {source}")]
    Unsealed {
        /// File.
        path: PathBuf,
        /// Record index.
        index: u64,
        /// Byte offset.
        offset: u64,
        /// Height written beside it.
        height: u64,
        /// Cause.
        source: SealError,
    },
    /// A record opens but is not a block of that height.
    #[error("{path}: record {index} at byte {offset} (height {height}): {what}")]
    BadBlock {
        /// File.
        path: PathBuf,
        /// Record index.
        index: u64,
        /// Byte offset.
        offset: u64,
        /// Height written beside it.
        height: u64,
        /// What is wrong.
        what: String,
    },
    /// A block's `prev_hash` is not the hash of the block below it.
    #[error("{path}: record {index} (height {height}): block {upper} links to {found:?}, but {} is {expected:?}", below(*upper))]
    BrokenLink {
        /// File.
        path: PathBuf,
        /// Index of the record whose check failed.
        index: u64,
        /// Its height.
        height: u64,
        /// Height of the block whose `prev_hash` is wrong (`height` or `height + 1`).
        upper: u64,
        /// The hash of the block at `upper - 1`.
        expected: Digest,
        /// The `prev_hash` found at `upper`.
        found: Digest,
    },
    /// A height written twice with different bytes: two histories under one key.
    #[error(
        "{path}: record {index} rewrites height {height} with different content (a fork: two histories under the same keys)"
    )]
    Fork {
        /// File.
        path: PathBuf,
        /// Record index.
        index: u64,
        /// The height.
        height: u64,
    },
    /// Two replicas hold different blocks at one height.
    #[error("replicas {a} and {b} disagree at height {height}: {hash_a:?} vs {hash_b:?}")]
    Disagreement {
        /// First replica.
        a: u32,
        /// Second replica.
        b: u32,
        /// The height.
        height: u64,
        /// Block hash at `a`.
        hash_a: Digest,
        /// Block hash at `b`.
        hash_b: Digest,
    },
}

/// What the block at `upper` must link to, for messages.
fn below(upper: u64) -> String {
    match upper.checked_sub(1) {
        Some(lower) => format!("the hash of block {lower}"),
        None => "the genesis link (zeros)".into(),
    }
}

/// The sealing key of `replica`'s Execution enclave, from its secret key.
pub fn sealer(execution_secret: &SecretKey, cluster_id: u64, replica: ReplicaId) -> RecordSealer {
    RecordSealer::new(execution_secret, cluster_id, replica)
}

/// Verifies the block file in `data_dir` (`ledger.blocks`) with the replica's sealer.
pub fn verify_chain(data_dir: &Path, sealer: &RecordSealer) -> Result<ChainReport, VerifyError> {
    let path = data_dir.join(BLOCK_FILE);
    let mut report = ChainReport::default();
    // Digest of each height's sealed bytes, to tell a rewrite from a fork.
    let mut sealed_digests: BTreeMap<u64, Digest> = BTreeMap::new();
    let mut entries_by_height: BTreeMap<u64, u64> = BTreeMap::new();
    // `prev_hash` of each height, to check a link when the block below arrives later.
    let mut links: BTreeMap<u64, Digest> = BTreeMap::new();
    for record in RecordReader::open(&path)? {
        let record = record?;
        let (index, offset, height) = (record.index, record.offset, record.height);
        report.records += 1;
        let plain = sealer.open(height, &record.sealed).map_err(|source| VerifyError::Unsealed {
            path: path.clone(),
            index,
            offset,
            height,
            source,
        })?;
        let bad = |what: String| VerifyError::BadBlock { path: path.clone(), index, offset, height, what };
        let block = Block::decode(&plain).map_err(|e: LedgerDecodeError| bad(e.to_string()))?;
        if block.height != height {
            return Err(bad(format!("the block inside says height {}", block.height)));
        }
        let sealed_digest = Digest::of(&record.sealed);
        if let Some(first) = sealed_digests.get(&height) {
            if *first != sealed_digest {
                return Err(VerifyError::Fork { path, index, height });
            }
            report.repeated += 1;
            continue;
        }
        let hash = Digest::of(&plain);
        let broken = |upper: u64, expected: Digest, found: Digest| VerifyError::BrokenLink {
            path: path.clone(),
            index,
            height,
            upper,
            expected,
            found,
        };
        let below = if height == 0 { Some(&Digest::default()) } else { report.hashes.get(&(height - 1)) };
        if let Some(below) = below
            && block.prev_hash != *below
        {
            return Err(broken(height, *below, block.prev_hash));
        }
        // Heights can arrive out of order (a state transfer skipped some, a later
        // re-execution from genesis filled them in): check the link from above too.
        if let Some(above) = height.checked_add(1).and_then(|h| links.get(&h))
            && *above != hash
        {
            return Err(broken(height + 1, hash, *above));
        }
        links.insert(height, block.prev_hash);
        sealed_digests.insert(height, sealed_digest);
        entries_by_height.insert(height, block.entries.len() as u64);
        report.hashes.insert(height, hash);
    }
    report.blocks = report.hashes.len() as u64;
    report.entries = entries_by_height.values().sum();
    if let Some((&h, hash)) = report.hashes.last_key_value() {
        report.head_height = Some(h);
        report.head_hash = Some(hex::encode(hash.0));
    }
    report.gaps = gaps(&report.hashes);
    Ok(report)
}

/// Missing heights in `0..=max`, as inclusive ranges.
fn gaps(hashes: &BTreeMap<u64, Digest>) -> Vec<(u64, u64)> {
    let mut gaps = Vec::new();
    let mut expected = 0u64;
    for &h in hashes.keys() {
        if h > expected {
            gaps.push((expected, h - 1));
        }
        expected = h + 1;
    }
    gaps
}

/// Checks that replicas' chains agree at every height they both hold; returns the number
/// of heights held by all of them.
pub fn compare_chains(chains: &[(ReplicaId, &ChainReport)]) -> Result<u64, VerifyError> {
    for (i, (a, ca)) in chains.iter().enumerate() {
        for (b, cb) in &chains[i + 1..] {
            for (height, hash_a) in &ca.hashes {
                if let Some(hash_b) = cb.hashes.get(height)
                    && hash_a != hash_b
                {
                    return Err(VerifyError::Disagreement {
                        a: a.0,
                        b: b.0,
                        height: *height,
                        hash_a: *hash_a,
                        hash_b: *hash_b,
                    });
                }
            }
        }
    }
    let Some(((_, first), rest)) = chains.split_first() else { return Ok(0) };
    Ok(first.hashes.keys().filter(|h| rest.iter().all(|(_, c)| c.hashes.contains_key(h))).count() as u64)
}

/// The chains of several replicas, checked one by one and against each other.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ClusterReport {
    /// Each replica's chain.
    pub chains: Vec<(u32, ChainReport)>,
    /// Heights every replica holds (all agreeing).
    pub common_heights: u64,
}

/// Verifies each `(replica, its Execution secret key, its data directory)` and that the
/// chains agree wherever they overlap.
pub fn verify_replicas(
    cluster_id: u64,
    replicas: &[(ReplicaId, &SecretKey, &Path)],
) -> Result<ClusterReport, VerifyError> {
    let mut chains = Vec::new();
    for (replica, secret, dir) in replicas {
        chains.push((*replica, verify_chain(dir, &sealer(secret, cluster_id, *replica))?));
    }
    let refs: Vec<(ReplicaId, &ChainReport)> = chains.iter().map(|(r, c)| (*r, c)).collect();
    let common_heights = compare_chains(&refs)?;
    Ok(ClusterReport { chains: chains.into_iter().map(|(r, c)| (r.0, c)).collect(), common_heights })
}
