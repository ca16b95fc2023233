//! Preemption inside an executor: which of its tasks may use its slots right now.
//!
//! The scheduler may push more tasks than an executor has slots when the extra ones are
//! more urgent (a lower rank) than tasks already running there. The [`SlotArbiter`] lets
//! the `slots` most urgent tasks run and suspends the rest, ranking each task as the
//! scheduler does: by its rank when pushed, raised by [`running_rank`] once it has run
//! longer than its query's estimate implies. Every operator of a task checks
//! the task's [`TaskGate`] before producing its next batch, so a suspended task stops at
//! its next batch boundary, keeps its state, and resumes where it stopped once a more
//! urgent task ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::scheduler::running_rank;

/// Whether one task may run; the operators of a closed task wait at their next batch.
#[derive(Debug)]
pub struct TaskGate {
    open: AtomicBool,
    waiting: Mutex<Vec<Waker>>,
}

impl TaskGate {
    fn closed() -> Self {
        Self {
            open: AtomicBool::new(false),
            waiting: Mutex::default(),
        }
    }

    /// Ready when the task may run; otherwise wakes `cx` once it may.
    pub fn poll_open(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.open.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        let mut waiting = self.waiting.lock().expect("gate lock");
        // Checked again under the lock: `set_open` flips the flag before it takes the lock.
        if self.open.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if !waiting.iter().any(|w| w.will_wake(cx.waker())) {
            waiting.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// True when the task may run.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    fn set_open(&self, open: bool) {
        self.open.store(open, Ordering::Release);
        if open {
            let waiting = std::mem::take(&mut *self.waiting.lock().expect("gate lock"));
            waiting.into_iter().for_each(Waker::wake);
        }
    }
}

#[derive(Debug)]
struct Admitted<K> {
    key: K,
    /// The task's query: tasks of one query keep their admission order.
    query: String,
    rank: f64,
    cost: f64,
    since: Instant,
    seq: u64,
    gate: Arc<TaskGate>,
    /// Whether the scheduler was last told the task runs (it takes a pushed task to).
    reported_open: bool,
}

#[derive(Debug)]
struct Tasks<K> {
    admitted: Vec<Admitted<K>>,
    next_seq: u64,
}

/// Opens the gates of the `slots` most urgent tasks (lowest rank; among equal ranks the
/// one admitted first) and closes the others'.
#[derive(Debug)]
pub struct SlotArbiter<K> {
    slots: usize,
    tasks: Mutex<Tasks<K>>,
}

impl<K: PartialEq + std::fmt::Debug> SlotArbiter<K> {
    /// An arbiter of `slots` slots.
    pub fn new(slots: usize) -> Self {
        Self {
            slots: slots.max(1),
            tasks: Mutex::new(Tasks {
                admitted: Vec::new(),
                next_seq: 0,
            }),
        }
    }

    /// Admits, at `now`, a task of `query` with `rank` whose query had `cost` units left;
    /// returns its gate and how many tasks this suspended.
    pub fn admit(
        &self,
        key: K,
        query: &str,
        rank: f64,
        cost: f64,
        now: Instant,
    ) -> (Arc<TaskGate>, usize) {
        let mut tasks = self.tasks.lock().expect("arbiter lock");
        // Closed until the rebalance opens it, so only tasks that were running count
        // as suspended.
        let gate = Arc::new(TaskGate::closed());
        let seq = tasks.next_seq;
        tasks.next_seq += 1;
        tasks.admitted.push(Admitted {
            key,
            query: query.to_string(),
            rank,
            cost,
            since: now,
            seq,
            gate: gate.clone(),
            reported_open: true,
        });
        let suspended = self.rebalance(&mut tasks.admitted, now);
        (gate, suspended)
    }

    /// A task ended at `now`; a suspended one may take its slot.
    pub fn leave(&self, key: &K, now: Instant) {
        let mut tasks = self.tasks.lock().expect("arbiter lock");
        let before = tasks.admitted.len();
        tasks.admitted.retain(|t| &t.key != key);
        if tasks.admitted.len() != before {
            self.rebalance(&mut tasks.admitted, now);
        }
    }

    /// The tasks stopped (`true`) or let go on (`false`) since the scheduler was last
    /// told: each task whose gate differs from what was reported, the report then
    /// taken as made. A task admitted straight into a closed gate counts as stopped.
    pub fn take_changes(&self) -> Vec<(K, bool)>
    where
        K: Clone,
    {
        let mut tasks = self.tasks.lock().expect("arbiter lock");
        let mut changes = Vec::new();
        for task in tasks.admitted.iter_mut() {
            let open = task.gate.is_open();
            if open != task.reported_open {
                task.reported_open = open;
                changes.push((task.key.clone(), !open));
            }
        }
        changes
    }

    /// Tasks admitted and waiting for a slot.
    pub fn suspended(&self) -> usize {
        let tasks = self.tasks.lock().expect("arbiter lock");
        tasks.admitted.len().saturating_sub(self.slots)
    }

    /// Opens the first `slots` gates in urgency order at `now` and closes the rest;
    /// returns how many gates it closed that were open.
    ///
    /// A query ranks as its earliest admitted task here, and its tasks keep their
    /// admission order: a task never suspends a task of its own query. Tasks of one stage
    /// share operator state (a hash join's build side is built by the first task and
    /// awaited by the others), so suspending the builder for a sibling would leave the
    /// sibling waiting on a gate that never opens.
    fn rebalance(&self, admitted: &mut [Admitted<K>], now: Instant) -> usize {
        let rank =
            |t: &Admitted<K>| running_rank(t.rank, t.cost, now.saturating_duration_since(t.since));
        let mut first: HashMap<String, (f64, u64)> = HashMap::new();
        for task in admitted.iter() {
            let entry = first
                .entry(task.query.clone())
                .or_insert((rank(task), task.seq));
            if task.seq < entry.1 {
                *entry = (rank(task), task.seq);
            }
        }
        admitted.sort_by(|a, b| {
            let (a_rank, a_first) = first[&a.query];
            let (b_rank, b_first) = first[&b.query];
            a_rank
                .total_cmp(&b_rank)
                .then(a_first.cmp(&b_first))
                .then(a.seq.cmp(&b.seq))
        });
        let mut closed = 0;
        for (i, task) in admitted.iter().enumerate() {
            let open = i < self.slots;
            if task.gate.is_open() && !open {
                closed += 1;
                tracing::debug!(task = ?task.key, rank = rank(task), "task suspended");
            }
            task.gate.set_open(open);
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_most_urgent_tasks_hold_the_slots() {
        let now = Instant::now();
        let arbiter = SlotArbiter::new(2);
        let (long_a, _) = arbiter.admit("long-a", "long-a", 9.0, 900.0, now);
        let (long_b, _) = arbiter.admit("long-b", "long-b", 8.0, 800.0, now);
        assert!(long_a.is_open() && long_b.is_open());
        // A cheap task displaces the least urgent running one.
        let (short, suspended) = arbiter.admit("short", "short", 1.0, 10.0, now);
        assert_eq!(suspended, 1);
        assert!(short.is_open() && long_b.is_open() && !long_a.is_open());
        // A task less urgent than both running ones waits at once.
        let (late, suspended) = arbiter.admit("late", "late", 10.0, 1000.0, now);
        assert_eq!(suspended, 0);
        assert!(!late.is_open());
        assert_eq!(arbiter.suspended(), 2);
        // When the cheap task ends, the suspended long task resumes before the later one.
        arbiter.leave(&"short", now);
        assert!(long_a.is_open() && long_b.is_open() && !late.is_open());
        arbiter.leave(&"long-a", now);
        assert!(late.is_open());
        assert_eq!(arbiter.suspended(), 0);
    }

    #[test]
    fn changes_name_the_tasks_stopped_and_let_go_since_the_last_report() {
        let now = Instant::now();
        let arbiter = SlotArbiter::new(1);
        arbiter.admit("long", "long", 9.0, 900.0, now);
        assert!(arbiter.take_changes().is_empty());
        arbiter.admit("short", "short", 1.0, 10.0, now);
        arbiter.admit("later", "later", 10.0, 1000.0, now);
        let mut changes = arbiter.take_changes();
        changes.sort();
        assert_eq!(changes, vec![("later", true), ("long", true)]);
        assert!(arbiter.take_changes().is_empty());
        arbiter.leave(&"short", now);
        assert_eq!(arbiter.take_changes(), vec![("long", false)]);
    }

    #[test]
    fn a_task_running_past_its_estimate_yields_to_a_newer_cheap_one() {
        let start = Instant::now();
        let arbiter = SlotArbiter::new(1);
        // Pushed as nearly done (rank of 5 units), it has run for two seconds.
        let (long, _) = arbiter.admit("long", "long", 5f64.ln(), 5.0, start);
        let later = start + std::time::Duration::from_secs(2);
        let (short, suspended) = arbiter.admit("short", "short", 40f64.ln(), 40.0, later);
        assert_eq!(suspended, 1);
        assert!(short.is_open() && !long.is_open());
    }

    #[test]
    fn a_task_never_suspends_one_of_its_own_query() {
        let start = Instant::now();
        let arbiter = SlotArbiter::new(1);
        // The first task of a stage has run for two seconds, far past its estimate.
        let (first, _) = arbiter.admit("q/1/0", "q", 5f64.ln(), 5.0, start);
        let later = start + std::time::Duration::from_secs(2);
        // A sibling pushed later, with less of the query left, still waits behind it.
        let (sibling, suspended) = arbiter.admit("q/1/1", "q", 2f64.ln(), 2.0, later);
        assert_eq!(suspended, 0);
        assert!(first.is_open() && !sibling.is_open());
        // Another, cheap query does suspend it.
        let (other, suspended) = arbiter.admit("r/0/0", "r", 40f64.ln(), 40.0, later);
        assert_eq!(suspended, 1);
        assert!(other.is_open() && !first.is_open());
    }

    #[test]
    fn equal_ranks_keep_their_admission_order() {
        let now = Instant::now();
        let arbiter = SlotArbiter::new(1);
        let (first, _) = arbiter.admit(1, "q1", 0.0, 1.0, now);
        let (second, _) = arbiter.admit(2, "q2", 0.0, 1.0, now);
        assert!(first.is_open() && !second.is_open());
        arbiter.leave(&1, now);
        assert!(second.is_open());
    }

    #[test]
    fn a_closed_gate_wakes_its_waiters_when_it_opens() {
        let now = Instant::now();
        let arbiter = SlotArbiter::new(1);
        let (_running, _) = arbiter.admit("a", "a", 1.0, 10.0, now);
        let (waiting, _) = arbiter.admit("b", "b", 2.0, 10.0, now);
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(waiting.poll_open(&mut cx).is_pending());
        // The same waker registers once.
        assert!(waiting.poll_open(&mut cx).is_pending());
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
        arbiter.leave(&"a", now);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert!(waiting.poll_open(&mut cx).is_ready());
    }
}
