//! The per-client deduplication window (SPEC §4.3): a client may keep up to `W` requests
//! outstanding, so "already seen" is a window of timestamps, not a single last timestamp.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::ids::Timestamp;

/// Why a timestamp was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DedupError {
    /// Already accepted once.
    #[error("timestamp {0} already seen")]
    Duplicate(Timestamp),
    /// At or below the window's low edge: older than `W` newer requests.
    #[error("timestamp {0} below the window")]
    TooOld(Timestamp),
}

/// Timestamps accepted for one client: all `t <= low`, plus `seen` (each in `(low, low + W]`).
///
/// Memory is at most `W` entries per client whatever timestamps arrive: accepting `t` beyond
/// `low + W` slides the window up to `t - W`. A client that honours its outstanding limit
/// (`<= W`) never loses a request to that slide.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientWindow {
    low: Timestamp,
    seen: BTreeSet<Timestamp>,
}

impl ClientWindow {
    /// Whether `t` would be refused by [`ClientWindow::check`].
    pub fn check(&self, t: Timestamp) -> Result<(), DedupError> {
        if t <= self.low {
            return Err(DedupError::TooOld(t));
        }
        if self.seen.contains(&t) {
            return Err(DedupError::Duplicate(t));
        }
        Ok(())
    }

    /// Accepts `t` once; `window` is `W`.
    pub fn accept(&mut self, t: Timestamp, window: u64) -> Result<(), DedupError> {
        assert!(window > 0, "dedup window must be positive");
        self.check(t)?;
        if t - self.low > window {
            self.low = t - window;
            self.seen = self.seen.split_off(&(self.low + 1));
        }
        self.seen.insert(t);
        // `low + 1` does not exist once `low` reaches `Timestamp::MAX` (a client may send
        // any timestamp): then nothing is above the window and the loop ends.
        while let Some(next) = self.low.checked_add(1)
            && self.seen.first() == Some(&next)
        {
            self.seen.pop_first();
            self.low = next;
        }
        debug_assert!(self.seen.len() as u64 <= window);
        Ok(())
    }

    /// Number of timestamps held above `low` (bounded by `W`).
    pub fn held(&self) -> usize {
        self.seen.len()
    }

    /// Every timestamp `<= low` counts as seen.
    pub fn low(&self) -> Timestamp {
        self.low
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_each_timestamp_once_out_of_order() {
        let mut w = ClientWindow::default();
        for t in [3, 1, 2, 5] {
            w.accept(t, 64).unwrap();
        }
        assert_eq!(w.low(), 3);
        assert_eq!(w.held(), 1);
        for t in [1, 2, 3] {
            assert_eq!(w.accept(t, 64), Err(DedupError::TooOld(t)));
        }
        assert_eq!(w.accept(5, 64), Err(DedupError::Duplicate(5)));
        w.accept(4, 64).unwrap();
        assert_eq!((w.low(), w.held()), (5, 0));
    }

    #[test]
    fn sixty_four_outstanding_all_accepted_in_any_order() {
        let mut w = ClientWindow::default();
        // Timestamps 1..=64 outstanding at once, delivered newest first.
        for t in (1..=64).rev() {
            w.accept(t, 64).unwrap();
        }
        assert_eq!((w.low(), w.held()), (64, 0));
    }

    #[test]
    fn window_bound_and_one_past_it() {
        let mut w = ClientWindow::default();
        // t = W is inside the window with low = 0: nothing slides.
        w.accept(64, 64).unwrap();
        assert_eq!(w.low(), 0);
        w.accept(1, 64).unwrap();
        // t = low + W + 1 slides the window: the oldest gap (2) is now too old.
        w.accept(66, 64).unwrap();
        assert_eq!(w.low(), 2);
        assert_eq!(w.accept(2, 64), Err(DedupError::TooOld(2)));
        w.accept(3, 64).unwrap();
    }

    /// Issue 11 finding (7): `low + 1` overflowed at `u64::MAX` (a debug-build panic any
    /// client could provoke, and the simulator runs debug builds).
    #[test]
    fn the_largest_timestamp_is_accepted_once_without_overflow() {
        for window in [1, 2, 64] {
            let mut w = ClientWindow::default();
            w.accept(Timestamp::MAX - 1, window).unwrap();
            w.accept(Timestamp::MAX, window).unwrap();
            assert!(w.accept(Timestamp::MAX, window).is_err(), "accepted twice");
            assert!(w.accept(Timestamp::MAX - 1, window).is_err(), "accepted twice");
            assert!(w.held() as u64 <= window);
        }
        let mut w = ClientWindow::default();
        w.accept(Timestamp::MAX, 1).unwrap();
        assert_eq!((w.low(), w.held()), (Timestamp::MAX, 0));
    }

    #[test]
    fn memory_is_bounded_by_the_window() {
        let mut w = ClientWindow::default();
        for t in (2..100_000).step_by(2) {
            w.accept(t, 64).unwrap();
            assert!(w.held() <= 64);
        }
    }
}
