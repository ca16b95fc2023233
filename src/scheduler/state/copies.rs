//! Starting copies of running tasks on idle executors (see the query's copies): what
//! the scheduler does with a free slot when no queued task is left for it.

use std::time::Instant;

use tracing::debug;

use super::{SchedulerState, inline_limit, run_task};
use crate::proto::{SchedulerMessage, scheduler_message};
use crate::scheduler::query::{CopyCandidate, CopyRule};
use crate::scheduler::registry::{Held, Registry, Urgency};

impl SchedulerState {
    /// Leaves executors `factor` times slower than their stages' medians out of new
    /// work while a faster one is connected (0: never).
    pub fn set_slow_factor(&mut self, factor: f64) {
        self.registry.set_slow_factor(factor);
    }

    /// Sets which running tasks get a copy.
    pub fn set_copy_rule(&mut self, rule: CopyRule) {
        self.copy_rule = rule;
    }

    /// Pushes copies of the running tasks that earn one (see [`CopyRule`]) to executors
    /// with a free slot, while no queued task waits for it: queued work always goes
    /// first. Runs on a timer, since a task turns into a straggler by running on.
    pub fn start_copies(&mut self, now: Instant) {
        let rule = self.copy_rule;
        if !(rule.speculation || rule.stealing)
            || !self.queue.is_empty()
            || !self.registry.has_free_slot()
        {
            return;
        }
        let mut candidates: Vec<(std::sync::Arc<str>, CopyCandidate)> = self
            .queries
            .iter()
            .filter(|(_, q)| !q.is_finished())
            .flat_map(|(id, q)| {
                q.copy_candidates(&rule, now)
                    .into_iter()
                    .map(|c| (id.clone(), c))
            })
            .collect();
        candidates.sort_by(|a, b| b.1.overdue.total_cmp(&a.1.overdue));
        for (query_id, candidate) in candidates {
            let key = (query_id.clone(), candidate.task);
            let Some(target) = copy_target(&self.registry, &candidate, &key, now) else {
                continue;
            };
            let Some(query) = self.queries.get_mut(&query_id) else {
                continue;
            };
            let attempt = query.copy_started(candidate.task, &target);
            let room = self.held_result_bytes < self.held_results_cap;
            let limit = inline_limit(query, candidate.task, room, self.inline_result_limit);
            let run = run_task(&query_id, query, candidate.task, attempt, now, limit);
            let Some(executor) = self.registry.get_mut(&target) else {
                continue;
            };
            let message = SchedulerMessage {
                message: Some(scheduler_message::Message::RunTask(run)),
            };
            if !executor.send(message) {
                // The stream is closing; its end removes the executor and the copy.
                executor.slots = 0;
                continue;
            }
            executor.running.insert(
                key,
                Held {
                    urgency: Urgency {
                        rank: 0.0,
                        cost: 0.0,
                    },
                    since: now,
                    attempt,
                    suspended: false,
                },
            );
            let reason = candidate.reason.label();
            metrics::counter!("baton_task_copies_total", "reason" => reason).increment(1);
            debug!(%query_id, stage = candidate.task.stage, partition = candidate.task.partition, from = %candidate.running_on, to = %target, reason, overdue = candidate.overdue, "task copied");
        }
    }
}

/// The executor a copy of `candidate` goes to: the one with the most free slots other
/// than where the task runs that takes new tasks (not left out for slowness) and does
/// not hold an attempt of it already (a cancelled one that has not reported yet, say).
fn copy_target(
    registry: &Registry,
    candidate: &CopyCandidate,
    key: &crate::scheduler::registry::HeldKey,
    now: Instant,
) -> Option<String> {
    let takes_new_task = registry.new_task_takers(now);
    registry
        .iter()
        .filter(|e| e.location.executor_id != candidate.running_on)
        .filter(|e| !e.running.contains_key(key) && takes_new_task(e))
        .max_by_key(|e| (e.free_slots(), std::cmp::Reverse(e.generation)))
        .map(|e| e.location.executor_id.clone())
}
