//! How slow an executor has been: how many times its stage's median its tasks took,
//! averaged over its recent tasks. An executor far slower than the others (a slower
//! machine, a noisy neighbour) gets no new task while a faster one is connected: its
//! output would hold back every consumer, which reads from it too. What was measured
//! fades (half of it every [`HALF_LIFE`]), so a left-out executor gets a task again
//! after a while and shows how it does now.

use std::time::{Duration, Instant};

/// How fast what was measured fades back to "as fast as the others".
pub const HALF_LIFE: Duration = Duration::from_secs(30);

/// A stage's median counts as at least this much: a task of a stage of tiny tasks is
/// late by what it took beyond it (an executor held to a CPU quota takes a whole
/// period for one), not by its ratio to a median of a few milliseconds.
pub const MIN_MEDIAN: Duration = Duration::from_millis(20);

/// The weight of the newest task in the average.
const WEIGHT: f64 = 0.3;

/// An executor's slowness: 1 is its stages' median pace, 4 four times slower.
#[derive(Debug, Clone, Copy)]
pub struct Slowness {
    ratio: f64,
    at: Instant,
}

impl Slowness {
    /// As fast as the others, as of `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            ratio: 1.0,
            at: now,
        }
    }

    /// Its slowness at `now`: the average measured, faded towards 1.
    pub fn at(&self, now: Instant) -> f64 {
        let faded = now.saturating_duration_since(self.at).as_secs_f64() / HALF_LIFE.as_secs_f64();
        1.0 + (self.ratio - 1.0) * 0.5f64.powf(faded)
    }

    /// Adds a task that ran `took` where its stage's median is `median` (at least
    /// [`MIN_MEDIAN`]).
    pub fn record(&mut self, took: Duration, median: Duration, now: Instant) {
        let ratio = took.as_secs_f64() / median.max(MIN_MEDIAN).as_secs_f64();
        let current = self.at(now);
        self.ratio = current + WEIGHT * (ratio - current);
        self.at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_tasks_raise_it_fast_ones_lower_it_and_it_fades_with_time() {
        let start = Instant::now();
        let mut slowness = Slowness::new(start);
        let median = Duration::from_millis(100);
        for _ in 0..10 {
            slowness.record(Duration::from_millis(500), median, start);
        }
        assert!(slowness.at(start) > 4.5, "{}", slowness.at(start));
        // A tiny task is measured against the floor: a late one counts, a quick one
        // counts as fast.
        let before = slowness.at(start);
        slowness.record(Duration::from_millis(1), Duration::from_millis(2), start);
        assert!(slowness.at(start) < before);
        let mut tiny = Slowness::new(start);
        tiny.record(Duration::from_millis(100), Duration::from_millis(2), start);
        assert!(tiny.at(start) > 2.0, "{}", tiny.at(start));
        // Half the excess is gone after a half-life.
        let later = start + HALF_LIFE;
        assert!((slowness.at(later) - (1.0 + (slowness.at(start) - 1.0) / 2.0)).abs() < 1e-9);
        for _ in 0..20 {
            slowness.record(median, median, later);
        }
        assert!(slowness.at(later) < 1.1);
    }
}
