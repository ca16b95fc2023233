//! Copies of running tasks: a second attempt of a task on another executor while the
//! first runs on, the first to finish winning (the other is cancelled and its output
//! never read). Two kinds of task get one when an executor has a free slot and no
//! queued task to run:
//! - a straggler (speculation): it has run longer than a multiple of the median of its
//!   stage's finished tasks, and past a minimum, once enough of them finished;
//! - a suspended task (work stealing): it waits on a busy executor for a far cheaper
//!   query's task while another executor sits idle.
//!
//! Baton's queue holds every task that has not started, and hands it to whichever
//! executor frees a slot first: work that has not started is never bound to a busy
//! executor. What a copy moves is work that has started on one that turned out slow.

use std::time::{Duration, Instant};

use super::{COPY_ATTEMPT, Query, StageState, TaskCopy, TaskRef};
use crate::proto::QueryState;

/// When a running task earns a copy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CopyRule {
    /// Copies of stragglers.
    pub speculation: bool,
    /// A straggler has run this many times its stage's median task time…
    pub multiple: f64,
    /// …and at least this long.
    pub min_runtime: Duration,
    /// The share of a stage's tasks that must have finished for its median to count.
    pub quantile: f64,
    /// Copies of suspended tasks on idle executors.
    pub stealing: bool,
}

impl Default for CopyRule {
    fn default() -> Self {
        Self {
            speculation: true,
            multiple: 1.5,
            min_runtime: Duration::from_millis(100),
            quantile: 0.5,
            stealing: true,
        }
    }
}

/// Why a task is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CopyReason {
    /// It runs far longer than its stage's finished tasks took.
    Straggler,
    /// It is suspended on its executor.
    Suspended,
}

impl CopyReason {
    /// The label of its metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Straggler => "speculative",
            Self::Suspended => "stolen",
        }
    }
}

/// A running task that earns a copy.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyCandidate {
    /// The task.
    pub task: TaskRef,
    /// Where its first attempt runs: the copy runs elsewhere.
    pub running_on: String,
    /// Why.
    pub reason: CopyReason,
    /// How far past its due time it is: its run time over the stage's median (suspended
    /// tasks rank first).
    pub overdue: f64,
}

impl Query {
    /// The running tasks that earn a copy under `rule` at `now`, most overdue first.
    pub fn copy_candidates(&self, rule: &CopyRule, now: Instant) -> Vec<CopyCandidate> {
        let mut candidates = Vec::new();
        if self.state != QueryState::Running {
            return candidates;
        }
        for (sid, stage) in self.stages.iter().enumerate() {
            if stage.state != StageState::Running {
                continue;
            }
            let median = median(&stage.durations).filter(|_| {
                stage.durations.len() as f64 >= rule.quantile * stage.tasks.len() as f64
            });
            for (p, t) in stage.tasks.iter().enumerate() {
                let (Some(on), None, None) = (&t.running_on, &t.copy, &t.output) else {
                    continue;
                };
                let task = TaskRef {
                    stage: sid as u32,
                    partition: p as u32,
                };
                let candidate = |reason, overdue| CopyCandidate {
                    task,
                    running_on: on.clone(),
                    reason,
                    overdue,
                };
                if t.suspended {
                    if rule.stealing {
                        candidates.push(candidate(CopyReason::Suspended, f64::INFINITY));
                    }
                    continue;
                }
                let (Some(median), Some(started_at), true) =
                    (median, t.started_at, rule.speculation)
                else {
                    continue;
                };
                let ran = now.saturating_duration_since(started_at);
                let due = median.mul_f64(rule.multiple).max(rule.min_runtime);
                if ran > due {
                    let overdue = ran.as_secs_f64() / median.as_secs_f64().max(1e-6);
                    candidates.push(candidate(CopyReason::Straggler, overdue));
                }
            }
        }
        candidates.sort_by(|a, b| b.overdue.total_cmp(&a.overdue));
        candidates
    }

    /// When attempt `attempt` of `task` was pushed, while it runs (the first or its copy).
    pub fn attempt_started_at(&self, task: TaskRef, attempt: u32) -> Option<Instant> {
        self.find_task(task)?.running_since(attempt)
    }

    /// Whether output of `task` that `executor` wrote is read by nobody: no attempt of
    /// it runs there and its output is elsewhere (an outrun attempt's, say). While an
    /// attempt runs there, its coming output has the same keys and is kept.
    pub fn is_stray_output(&self, task: TaskRef, executor: &str) -> bool {
        let Some(t) = self.find_task(task) else {
            return false;
        };
        let runs_there = t.running_on.as_deref() == Some(executor)
            || t.copy.as_ref().is_some_and(|c| c.executor == executor);
        let output_there = t.output.as_ref().is_some_and(|o| o.executor_id == executor);
        !runs_there && !output_there
    }

    /// Records that a copy of `task` was pushed to `executor`; returns its attempt.
    pub fn copy_started(&mut self, task: TaskRef, executor: &str) -> u32 {
        let stage = &mut self.stages[task.stage as usize];
        stage.copies_started += 1;
        let t = &mut stage.tasks[task.partition as usize];
        let attempt = t.attempt | COPY_ATTEMPT;
        t.copy = Some(TaskCopy {
            attempt,
            executor: executor.to_string(),
            started_at: Instant::now(),
        });
        attempt
    }
}

impl Query {
    /// The median time its stage `stage`'s finished tasks took, None before one did.
    pub fn median_task_time(&self, stage: u32) -> Option<Duration> {
        median(&self.stages.get(stage as usize)?.durations)
    }
}

/// The median of `durations`, None for none.
fn median(durations: &[Duration]) -> Option<Duration> {
    if durations.is_empty() {
        return None;
    }
    let mut sorted = durations.to_vec();
    sorted.sort_unstable();
    Some(sorted[sorted.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::query::tests::{one_stage_query, succeed};

    fn at(p: u32) -> TaskRef {
        TaskRef {
            stage: 0,
            partition: p,
        }
    }

    #[test]
    fn a_task_far_slower_than_its_finished_siblings_earns_a_copy() {
        let mut q = one_stage_query(4);
        for p in 0..4 {
            q.task_started(at(p), if p == 3 { "slow" } else { "fast" });
        }
        let rule = CopyRule {
            min_runtime: Duration::from_millis(10),
            ..CopyRule::default()
        };
        let start = Instant::now();
        // No median before half the stage finished.
        succeed(&mut q, at(0), 0);
        assert!(
            q.copy_candidates(&rule, start + Duration::from_secs(60))
                .is_empty()
        );
        succeed(&mut q, at(1), 0);
        let now = Instant::now();
        // Within the multiple of the median (a few µs here, so the minimum rules).
        assert!(q.copy_candidates(&rule, now).is_empty());
        let late = q.copy_candidates(&rule, now + Duration::from_secs(5));
        let tasks: Vec<_> = late
            .iter()
            .map(|c| (c.task.partition, c.running_on.as_str()))
            .collect();
        assert_eq!(tasks, [(2, "fast"), (3, "slow")]);
        assert!(late.iter().all(|c| c.reason == CopyReason::Straggler));
        // Off: none.
        let off = CopyRule {
            speculation: false,
            ..rule
        };
        assert!(
            q.copy_candidates(&off, now + Duration::from_secs(5))
                .is_empty()
        );
        // A task with a copy gets no second one.
        q.copy_started(at(3), "fast");
        let once = q.copy_candidates(&rule, now + Duration::from_secs(5));
        assert_eq!(once.len(), 1);
        assert_eq!(once[0].task, at(2));
    }

    #[test]
    fn the_first_attempt_to_finish_wins_and_the_other_is_cancelled() {
        let mut q = one_stage_query(2);
        q.task_started(at(0), "slow");
        q.task_started(at(1), "fast");
        let copy = q.copy_started(at(0), "fast");
        assert_ne!(copy, q.attempt(at(0)));
        assert!(!q.is_dispatchable(at(0)));
        // The copy wins: the first attempt is to be cancelled.
        let progress = succeed(&mut q, at(0), copy);
        assert_eq!(progress.outrun.len(), 1);
        assert_eq!(progress.outrun[0].executor, "slow");
        assert_eq!(progress.outrun[0].attempt, 0);
        // What it ran tells how slow its executor is.
        assert_eq!(progress.lagged.len(), 1);
        assert_eq!(progress.lagged[0].executor, "slow");
        assert_eq!(progress.lagged[0].stage, 0);
        // Its late report changes nothing.
        let late = succeed(&mut q, at(0), 0);
        assert_eq!(late, Default::default());
        assert_eq!(q.stage(0).copies_won, 1);
        // The other task finishes first time: nothing outrun, the query is done.
        let last = succeed(&mut q, at(1), 0);
        assert!(last.outrun.is_empty() && last.lagged.is_empty());
        assert!(last.finished);
    }

    #[test]
    fn a_failed_attempt_leaves_the_other_running_and_a_lost_executor_its_copy() {
        let mut q = one_stage_query(1);
        q.task_started(at(0), "a");
        let copy = q.copy_started(at(0), "b");
        // The copy fails: the first goes on, nothing is queued.
        let (progress, cancel) = q.task_failed(at(0), copy, "disk full", true).unwrap();
        assert!(progress.ready.is_empty() && cancel.is_empty() && !progress.finished);
        assert!(!q.is_dispatchable(at(0)));
        // A new copy; then the first's executor is lost: the copy goes on alone.
        let copy = q.copy_started(at(0), "b");
        let (progress, cancel) = q.executor_lost("a");
        assert!(progress.ready.is_empty(), "{progress:?}");
        assert!(cancel.is_empty());
        assert!(!q.is_dispatchable(at(0)));
        let done = succeed(&mut q, at(0), copy);
        assert!(done.finished);
    }

    #[test]
    fn a_suspended_task_is_stolen_first() {
        let mut q = one_stage_query(2);
        q.task_started(at(0), "busy");
        q.task_started(at(1), "busy");
        q.task_suspended(at(1), 0, "busy", true);
        let rule = CopyRule::default();
        let stolen = q.copy_candidates(&rule, Instant::now());
        assert_eq!(stolen.len(), 1);
        assert_eq!(stolen[0].task, at(1));
        assert_eq!(stolen[0].reason, CopyReason::Suspended);
        let off = CopyRule {
            stealing: false,
            ..rule
        };
        assert!(q.copy_candidates(&off, Instant::now()).is_empty());
    }
}
