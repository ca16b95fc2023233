//! A task's memory under its session's `datafusion.runtime.memory_limit`.
//!
//! Every task draws on its executor's one memory pool. A session that sets a memory
//! limit (as single-node DataFusion lets it) has each of its tasks draw through a
//! [`CappedPool`]: at most that many bytes at once, and never more than the executor's
//! pool grants. A task over its cap spills where its operators can and fails with
//! "Resources exhausted" where they cannot; other tasks never notice.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};

/// A pool of at most `limit` bytes drawn from `inner`.
#[derive(Debug)]
pub struct CappedPool {
    inner: Arc<dyn MemoryPool>,
    limit: usize,
    used: AtomicUsize,
}

impl CappedPool {
    /// A pool of at most `limit` bytes of `inner`'s.
    pub fn new(inner: Arc<dyn MemoryPool>, limit: usize) -> Self {
        Self {
            inner,
            limit,
            used: AtomicUsize::new(0),
        }
    }
}

impl MemoryPool for CappedPool {
    fn name(&self) -> &str {
        "capped"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.inner.register(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.inner.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.used.fetch_add(additional, Ordering::Relaxed);
        self.inner.grow(reservation, additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.used.fetch_sub(shrink, Ordering::Relaxed);
        self.inner.shrink(reservation, shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(additional)
                    .filter(|&wanted| wanted <= self.limit)
            })
            .map_err(|used| {
                DataFusionError::ResourcesExhausted(format!(
                    "{} wanted {additional} more bytes with {used} of its task's {} held: \
                     the session's datafusion.runtime.memory_limit is per task",
                    reservation.consumer().name(),
                    self.limit
                ))
            })?;
        self.inner
            .try_grow(reservation, additional)
            .inspect_err(|_| {
                self.used.fetch_sub(additional, Ordering::Relaxed);
            })
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        match self.inner.memory_limit() {
            MemoryLimit::Finite(inner) => MemoryLimit::Finite(inner.min(self.limit)),
            _ => MemoryLimit::Finite(self.limit),
        }
    }
}

impl fmt::Display for CappedPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "capped(used: {}, limit: {}) of {}",
            self.reserved(),
            self.limit,
            self.inner
        )
    }
}

#[cfg(test)]
mod tests {
    use datafusion::execution::memory_pool::GreedyMemoryPool;

    use super::*;

    #[test]
    fn a_task_gets_at_most_its_cap_and_what_the_executor_has() {
        let executor: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(1_000));
        let task: Arc<dyn MemoryPool> = Arc::new(CappedPool::new(Arc::clone(&executor), 300));
        let held = MemoryConsumer::new("sort").register(&task);
        held.try_grow(200).unwrap();
        let error = held.try_grow(200).unwrap_err().to_string();
        assert!(error.starts_with("Resources exhausted"), "{error}");
        assert_eq!((task.reserved(), executor.reserved()), (200, 200));

        // The executor's pool is short before the cap is reached: nothing is counted.
        let other = MemoryConsumer::new("other").register(&executor);
        other.grow(750);
        assert!(held.try_grow(90).is_err());
        assert_eq!((task.reserved(), executor.reserved()), (200, 950));

        held.shrink(150);
        assert_eq!((task.reserved(), executor.reserved()), (50, 800));
        drop(held);
        assert_eq!((task.reserved(), executor.reserved()), (0, 750));
    }
}
