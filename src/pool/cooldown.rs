//! Cool-downs: which ANI was picked towards which destination, and when.
//!
//! Two generations of (destination, ANI) → pick time tables, each spanning one cool-down window.
//! Entries go into the current generation; when it is a window old it becomes the previous one and
//! the old previous one is dropped whole (`clear` keeps its allocation, so the steady state does
//! not allocate). Every entry dropped that way is older than the window, a lookup checks both
//! generations and the exact pick time, and memory stays within two windows' worth of calls with no
//! per-entry removal (a swept queue would cost a random cache miss per call to remove each entry).
//! Like the rest of the pool this module never reads the clock: `now` is an argument.

use std::collections::HashMap;
use std::mem;
use std::time::{Duration, Instant};

type Table = HashMap<(u64, u32), Instant>;

#[derive(Debug)]
pub(super) struct Cooldowns {
    window: Duration,
    current: Table,
    previous: Table,
    /// When `current` began; `None` until the first entry.
    started: Option<Instant>,
}

impl Cooldowns {
    pub(super) fn new(window: Duration) -> Cooldowns {
        Cooldowns {
            window,
            current: Table::new(),
            previous: Table::new(),
            started: None,
        }
    }

    /// Entries held (some may already be out of the window).
    pub(super) fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    /// Drops the generation that fell out of the window, if any. O(1) amortised.
    pub(super) fn rotate(&mut self, now: Instant) {
        let Some(started) = self.started else {
            return;
        };
        let age = now.saturating_duration_since(started);
        if age < self.window {
            return;
        }
        if age >= self.window.saturating_mul(2) {
            // Idle for two windows: the current generation is stale too (its newest entry was made
            // less than a window after `started`, or it would have rotated then).
            self.current.clear();
        }
        mem::swap(&mut self.current, &mut self.previous);
        self.current.clear();
        self.started = Some(now);
    }

    /// Whether `ani` was picked towards `destination` less than a window before `now`.
    pub(super) fn is_cooling(&self, destination: u64, ani: u32, now: Instant) -> bool {
        let key = (destination, ani);
        let within = |at: &Instant| now.saturating_duration_since(*at) < self.window;
        (!self.current.is_empty() && self.current.get(&key).is_some_and(within))
            || (!self.previous.is_empty() && self.previous.get(&key).is_some_and(within))
    }

    /// Records a pick. Call `rotate(now)` first.
    pub(super) fn insert(&mut self, destination: u64, ani: u32, now: Instant) {
        if self.window.is_zero() {
            return;
        }
        self.started.get_or_insert(now);
        self.current.insert((destination, ani), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(600);
    const S: Duration = Duration::from_secs(1);

    #[test]
    fn entries_cool_for_exactly_one_window() {
        let mut c = Cooldowns::new(W);
        let t0 = Instant::now();
        c.rotate(t0);
        c.insert(1, 7, t0);
        assert!(c.is_cooling(1, 7, t0 + W - S));
        assert!(!c.is_cooling(2, 7, t0));
        assert!(!c.is_cooling(1, 8, t0));
        c.rotate(t0 + W - S);
        c.insert(1, 8, t0 + W - S);
        // The first generation rotates out of `current` but is still consulted.
        c.rotate(t0 + W);
        assert!(!c.is_cooling(1, 7, t0 + W));
        assert!(c.is_cooling(1, 8, t0 + W));
        assert!(c.is_cooling(1, 8, t0 + 2 * W - 2 * S));
        assert!(!c.is_cooling(1, 8, t0 + 2 * W - S));
    }

    #[test]
    fn memory_is_bounded_by_two_windows() {
        let mut c = Cooldowns::new(W);
        let t0 = Instant::now();
        for i in 0..3_000u32 {
            let now = t0 + S * i;
            c.rotate(now);
            c.insert(u64::from(i), i, now);
            assert!(c.len() <= 2 * 600 + 1, "{} entries at {i}", c.len());
        }
        // After a long idle gap everything goes at once.
        c.rotate(t0 + S * 3_000 + 3 * W);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn a_zero_window_records_nothing() {
        let mut c = Cooldowns::new(Duration::ZERO);
        let t0 = Instant::now();
        c.insert(1, 1, t0);
        assert_eq!(c.len(), 0);
        assert!(!c.is_cooling(1, 1, t0));
    }
}
