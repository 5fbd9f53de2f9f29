//! A power failure: every replica crashes at once and restarts from its own disk (SPEC §10
//! "Whole-cluster restart with honest storage needs no fence"; `kill -9` of every replica
//! loses no acknowledged write). The cluster runs durable
//! (`LocalCluster::new_durable`): every compartment seals its state, every broker logs the
//! batch frames it verified, and a round's frames leave only once its records are on the
//! simulated disk (write-ahead). At the failure frames in flight are lost, and so is every
//! broker's and enclave's memory; Preparation, Confirmation and Execution come back from
//! their latest image and every delta after it, the broker's batch cache from the logged
//! frames (`BrokerCore::restore_batch`), and the workload goes on.
//!
//! Each seed draws when, whether the rounds written but not yet synced made it to disk
//! ([`Unsynced`]: their frames never left either way), and whether the failure is *aimed*:
//! held back (a little) until some Confirmation has committed a slot that some Execution
//! has not executed yet. That window is where a batch's bytes matter: a NewView after the
//! restart re-proposes the slot by digest, and the replicas that did not execute it must
//! fetch the bytes from a peer's cache. A failure drawn uniformly in time lands in it
//! rarely, since the simulated clients leave the cluster idle most of the time.
//!
//! Nothing is lost, so nothing counts against `f`: the checkers keep what every enclave
//! signed before the failure (SPEC §9 P1/C1 across it), agreement spans it, every write
//! acknowledged before it must be in some replica's restored state
//! ([`acknowledged_writes_survive`]) and in the agreed order (linearizability), and the
//! clients must complete new operations after it (liveness).

use std::collections::BTreeMap;
use std::fmt;

use rand::RngExt;
use rand_chacha::ChaCha8Rng;
pub use splitbft_broker::local::Unsynced;
use splitbft_types::codec::from_bytes;
use splitbft_types::msg::{Digest, Request};
use splitbft_types::{ClientId, Seq, Timestamp};

use crate::checkers::History;

/// How long an aimed failure waits for its window after its drawn time before it strikes
/// anyway: a few client think times (`workload.rs`), so a window nearly always comes.
const AIM_WAIT_US: u64 = 400_000;

/// The power failure of one seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PowerFailure {
    /// When, in simulated microseconds (the earliest time, when aimed).
    pub at_us: u64,
    /// Held back until a slot is committed somewhere and not executed everywhere.
    pub aimed: bool,
    /// Whether the rounds not yet synced reach the disk.
    pub unsynced: Unsynced,
}

impl fmt::Display for PowerFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unsynced = match self.unsynced {
            Unsynced::Synced => "synced",
            Unsynced::Lost => "unsynced-lost",
        };
        let aim = if self.aimed { "aimed" } else { "anywhere" };
        write!(f, "power-failure at {} ms ({aim}, {unsynced})", self.at_us / 1_000)
    }
}

/// Draws a power failure inside the fault phase: aimed half the time, unsynced rounds
/// lost half the time.
pub fn draw(fault_phase_us: u64, rng: &mut ChaCha8Rng) -> PowerFailure {
    let at_us = rng.random_range(fault_phase_us / 10..fault_phase_us * 7 / 10);
    let aimed = rng.random_bool(0.5);
    let unsynced = if rng.random_bool(0.5) { Unsynced::Lost } else { Unsynced::Synced };
    PowerFailure { at_us, aimed, unsynced }
}

impl PowerFailure {
    /// Whether the failure strikes now. `window`: some slot is committed and not executed
    /// everywhere. An aimed failure strikes in the first window after its time, or at the
    /// latest [`AIM_WAIT_US`] later (and before the fault phase ends).
    pub fn due(&self, now: u64, window: bool, fault_phase_us: u64) -> bool {
        let latest = (self.at_us + AIM_WAIT_US).min(fault_phase_us.saturating_sub(1));
        now >= self.at_us && (!self.aimed || window || now >= latest)
    }
}

/// The first sequence number of the agreed order at which each `(client, t)` ran (later
/// copies of a request are refused as duplicates).
fn sequence_of(
    executed: &[BTreeMap<Seq, Digest>],
    batches: &BTreeMap<Digest, Vec<u8>>,
) -> BTreeMap<(ClientId, Timestamp), Seq> {
    let mut order: BTreeMap<Seq, Digest> = BTreeMap::new();
    for log in executed {
        order.extend(log.iter().map(|(s, d)| (*s, *d)));
    }
    let mut at = BTreeMap::new();
    for (seq, digest) in order {
        let Some(bytes) = batches.get(&digest) else { continue };
        for req in from_bytes::<Vec<Request>>(bytes).unwrap_or_default() {
            at.entry((req.client, req.timestamp)).or_insert(seq);
        }
    }
    at
}

/// SPEC §10 "no acknowledged write is lost": every operation a client accepted (on `f + 1`
/// matching replies) before the failure at `failed_at_us` ran at a sequence number some
/// replica's restored Execution had executed (`restored`: the highest last-executed right
/// after the restart). Its replies left only once the state that produced them was durable.
pub fn acknowledged_writes_survive(
    history: &History,
    failed_at_us: u64,
    restored: Seq,
    executed: &[BTreeMap<Seq, Digest>],
    batches: &BTreeMap<Digest, Vec<u8>>,
) -> Vec<String> {
    let at = sequence_of(executed, batches);
    history
        .iter()
        .filter(|op| op.completed_us <= failed_at_us)
        .filter_map(|op| match at.get(&(op.client, op.t)) {
            Some(seq) if *seq <= restored => None,
            Some(seq) => Some(format!(
                "durability: client {} t {} was acknowledged at seq {seq} before the power failure, but no replica restored past seq {restored}",
                op.client, op.t
            )),
            None => Some(format!(
                "durability: client {} t {} was acknowledged before the power failure but is in no agreed batch",
                op.client, op.t
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn an_aimed_failure_waits_for_its_window_within_a_bound() {
        let pf = PowerFailure { at_us: 100_000, aimed: true, unsynced: Unsynced::Lost };
        assert!(!pf.due(99_999, true, 1_500_000), "not before its time");
        assert!(!pf.due(100_000, false, 1_500_000), "waits for a window");
        assert!(pf.due(100_001, true, 1_500_000));
        assert!(pf.due(100_000 + AIM_WAIT_US, false, 1_500_000), "strikes anyway after the wait");
        assert!(pf.due(1_499_999, false, 1_500_000));
        let anywhere = PowerFailure { aimed: false, ..pf };
        assert!(anywhere.due(100_000, false, 1_500_000));
        // An aimed failure drawn late still strikes inside the fault phase.
        let late = PowerFailure { at_us: 1_400_000, ..pf };
        assert!(late.due(1_499_999, false, 1_500_000));
    }

    #[test]
    fn draws_cover_both_aims_and_both_disk_outcomes_inside_the_fault_phase() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..64 {
            let pf = draw(1_500_000, &mut rng);
            assert!((150_000..1_050_000).contains(&pf.at_us), "{pf}");
            seen.insert((pf.aimed, pf.unsynced == Unsynced::Lost));
        }
        assert_eq!(seen.len(), 4, "{seen:?}");
    }
}
