//! The retransmission timeout, adapted to the latency the client observes (the smoothed
//! estimator of RFC 6298). Every answered request gives a sample measured from its first
//! send — an upper bound on its latency, so a retransmitted request can only raise the
//! estimate (RFC 6298's Karn rule would leave a cluster whose every request is
//! retransmitted with no sample at all).
//!
//! A fixed timeout fires for every request once the cluster is merely busy — thousands of
//! outstanding requests at an unbatched cluster wait seconds in its queues — and each
//! retransmission goes to every replica, adding load exactly when there is none to spare.
//! The configured timeout stays the floor, so an idle cluster whose primary fails is still
//! suspected that soon.

use std::time::Duration;

/// Smoothed latency and its variation, in microseconds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RttEstimator {
    srtt_us: u64,
    rttvar_us: u64,
}

impl RttEstimator {
    /// Folds in the latency of an answered request, from its first send.
    pub(crate) fn sample(&mut self, rtt: Duration) {
        let r = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX / 8);
        if self.srtt_us == 0 {
            self.srtt_us = r.max(1);
            self.rttvar_us = r / 2;
        } else {
            // RFC 6298 §2.3 with alpha = 1/8, beta = 1/4.
            self.rttvar_us = (3 * self.rttvar_us + self.srtt_us.abs_diff(r)) / 4;
            self.srtt_us = (7 * self.srtt_us + r) / 8;
        }
    }

    /// `srtt + max(srtt, 4 * rttvar)`: at least twice the smoothed latency, more when it
    /// varies; at most `cap` and never below `floor`.
    pub(crate) fn timeout(&self, floor: Duration, cap: Duration) -> Duration {
        let margin = self.srtt_us.max(self.rttvar_us.saturating_mul(4));
        let adaptive = Duration::from_micros(self.srtt_us.saturating_add(margin));
        adaptive.min(cap).max(floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOOR: Duration = Duration::from_millis(500);
    const CAP: Duration = Duration::from_secs(8);

    #[test]
    fn an_unsampled_or_fast_cluster_gets_the_floor() {
        let mut e = RttEstimator::default();
        assert_eq!(e.timeout(FLOOR, CAP), FLOOR);
        for _ in 0..100 {
            e.sample(Duration::from_micros(600));
        }
        assert_eq!(e.timeout(FLOOR, CAP), FLOOR);
    }

    #[test]
    fn a_busy_cluster_raises_the_timeout_above_its_latency_up_to_the_cap() {
        let mut e = RttEstimator::default();
        for _ in 0..50 {
            e.sample(Duration::from_millis(1500));
        }
        let t = e.timeout(FLOOR, CAP);
        assert!(t >= Duration::from_millis(2900) && t <= Duration::from_millis(3100), "{t:?}");
        for _ in 0..50 {
            e.sample(Duration::from_secs(60));
        }
        assert_eq!(e.timeout(FLOOR, CAP), CAP);
    }

    #[test]
    fn variation_widens_the_margin_and_recovery_brings_it_back() {
        let mut e = RttEstimator::default();
        for i in 0..200 {
            e.sample(Duration::from_millis(if i % 2 == 0 { 200 } else { 1200 }));
        }
        assert!(e.timeout(FLOOR, CAP) > Duration::from_millis(1700));
        for _ in 0..200 {
            e.sample(Duration::from_millis(5));
        }
        assert_eq!(e.timeout(FLOOR, CAP), FLOOR);
    }
}
