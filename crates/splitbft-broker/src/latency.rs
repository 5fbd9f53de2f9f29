//! Per-replica request latency (issue 16): from when this replica's environment first
//! learned a request (from its client, or forwarded) to when its Execution compartment
//! produced the reply. It measures ordering plus execution at this replica, not what a
//! client sees (the client library and the gateway measure that).
//!
//! Fixed buckets, so recording costs one comparison chain and no allocation on the hot
//! path; `/metrics` renders them as a Prometheus histogram.

/// Upper bounds of the buckets, in microseconds (the last bucket is everything above).
pub const LATENCY_BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

/// Request latencies in [`LATENCY_BOUNDS_US`] buckets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Count per bucket: `counts[i]` holds latencies in `(bounds[i-1], bounds[i]]`, the last
    /// entry those above every bound.
    counts: [u64; LATENCY_BOUNDS_US.len() + 1],
    sum_us: u64,
    count: u64,
}

impl LatencyHistogram {
    /// Records one latency.
    pub fn record(&mut self, us: u64) {
        let bucket = LATENCY_BOUNDS_US.iter().position(|&b| us <= b).unwrap_or(LATENCY_BOUNDS_US.len());
        self.counts[bucket] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.count += 1;
    }

    /// Latencies recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Their sum in microseconds (saturating).
    pub fn sum_us(&self) -> u64 {
        self.sum_us
    }

    /// `(upper bound in µs, count in that bucket)` for each bucket, `None` for the last
    /// (unbounded) one. Counts are per bucket, not cumulative.
    pub fn buckets(&self) -> impl Iterator<Item = (Option<u64>, u64)> + '_ {
        LATENCY_BOUNDS_US.iter().map(|b| Some(*b)).chain([None]).zip(self.counts.iter().copied())
    }

    /// The smallest bucket bound at or above the `q` quantile (0 < q <= 1); `None` if
    /// nothing was recorded or the quantile falls in the unbounded bucket.
    pub fn quantile_bound_us(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bound, n) in self.buckets() {
            seen += n;
            if seen >= rank {
                return bound;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_their_buckets() {
        let mut h = LatencyHistogram::default();
        for us in [0, 100, 101, 9_999, 10_000_000, 10_000_001, u64::MAX] {
            h.record(us);
        }
        let counts: Vec<(Option<u64>, u64)> = h.buckets().filter(|(_, n)| *n > 0).collect();
        assert_eq!(counts, vec![(Some(100), 2), (Some(250), 1), (Some(10_000), 1), (Some(10_000_000), 1), (None, 2)]);
        assert_eq!(h.count(), 7);
        assert_eq!(h.sum_us(), u64::MAX, "the sum saturates");
        assert_eq!(h.buckets().map(|(_, n)| n).sum::<u64>(), h.count());
    }

    #[test]
    fn quantiles_are_bucket_bounds() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile_bound_us(0.5), None);
        for _ in 0..90 {
            h.record(800);
        }
        for _ in 0..10 {
            h.record(40_000);
        }
        assert_eq!(h.quantile_bound_us(0.5), Some(1_000));
        assert_eq!(h.quantile_bound_us(0.9), Some(1_000));
        assert_eq!(h.quantile_bound_us(0.99), Some(50_000));
    }
}
