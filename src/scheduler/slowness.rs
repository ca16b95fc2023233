//! How slow an executor has been: the time its recent tasks took over the time their
//! stages' medians say they should have taken. An executor far slower than the others
//! (a slower machine, a noisy neighbour) gets no new task while a faster one is
//! connected: its output would hold back every consumer, which reads from it too.
//!
//! Both sums weigh a task by its length, so a burst of tiny tasks (a scan of `nation`,
//! a final merge), which a throttled executor runs as fast as any, does not hide how
//! slow its real work is. What was measured fades (half of it every [`HALF_LIFE`])
//! against a prior of [`PRIOR`] at the median pace, so a left-out executor gets a task
//! again after a while and shows how it does now.

use std::time::{Duration, Instant};

/// How fast what was measured fades back to "as fast as the others".
pub const HALF_LIFE: Duration = Duration::from_secs(30);

/// Work at the median pace that every executor starts with and that the measured
/// work fades back to: an executor is found slow after about three tasks of a
/// tenth of a second that took four times their median.
pub const PRIOR: Duration = Duration::from_millis(100);

/// A task counts as at most this many times its median, so that one task of a skewed
/// partition (far more rows than its stage's others), or a tiny one that waited out a
/// CPU quota period, does not alone make an executor slow.
const MAX_RATIO: f64 = 8.0;

/// An executor's slowness: 1 is its stages' median pace, 4 four times slower.
#[derive(Debug, Clone, Copy)]
pub struct Slowness {
    /// Seconds its recent tasks took, faded to `at`.
    took: f64,
    /// Seconds their stages' medians say they should have taken, faded to `at`.
    expected: f64,
    at: Instant,
}

impl Slowness {
    /// As fast as the others, as of `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            took: 0.0,
            expected: 0.0,
            at: now,
        }
    }

    /// Its slowness at `now`: what its tasks took over what they should have taken,
    /// both faded and with the prior added.
    pub fn at(&self, now: Instant) -> f64 {
        let fade = self.fade(now);
        let prior = PRIOR.as_secs_f64();
        (self.took * fade + prior) / (self.expected * fade + prior)
    }

    /// Adds a task that ran `took` where its stage's median is `median`.
    pub fn record(&mut self, took: Duration, median: Duration, now: Instant) {
        let expected = median.as_secs_f64();
        let fade = self.fade(now);
        self.took = self.took * fade + took.as_secs_f64().min(expected * MAX_RATIO);
        self.expected = self.expected * fade + expected;
        self.at = now;
    }

    /// How much of what was measured by its last record is left at `now`.
    fn fade(&self, now: Instant) -> f64 {
        let half_lives =
            now.saturating_duration_since(self.at).as_secs_f64() / HALF_LIFE.as_secs_f64();
        0.5f64.powf(half_lives)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_work_raises_it_fast_work_lowers_it_and_it_fades_with_time() {
        let start = Instant::now();
        let mut slowness = Slowness::new(start);
        assert_eq!(slowness.at(start), 1.0);
        let median = Duration::from_millis(100);
        for _ in 0..3 {
            slowness.record(Duration::from_millis(400), median, start);
        }
        assert!(slowness.at(start) > 3.0, "{}", slowness.at(start));
        // Tiny tasks, fast as anyone's, weigh little against the slow work.
        let before = slowness.at(start);
        for _ in 0..5 {
            slowness.record(Duration::from_millis(2), Duration::from_millis(2), start);
        }
        assert!(slowness.at(start) > 2.5, "{}", slowness.at(start));
        assert!(slowness.at(start) < before);
        // Tiny tasks that finished under their median do not make up for it either.
        for _ in 0..5 {
            slowness.record(Duration::from_millis(1), Duration::from_millis(20), start);
        }
        assert!(slowness.at(start) > 2.5, "{}", slowness.at(start));
        // One task of a skewed partition counts as at most MAX_RATIO medians.
        let mut skewed = Slowness::new(start);
        skewed.record(Duration::from_secs(100), median, start);
        assert!(skewed.at(start) <= 1.0 + MAX_RATIO / 2.0);
        // It fades towards 1 with time, and work at the median pace brings it down.
        let later = start + HALF_LIFE * 4;
        assert!(slowness.at(later) < 1.0 + (slowness.at(start) - 1.0) / 2.0);
        assert!(slowness.at(later) > 1.0);
        for _ in 0..20 {
            slowness.record(median, median, later);
        }
        assert!(slowness.at(later) < 1.2, "{}", slowness.at(later));
    }
}
