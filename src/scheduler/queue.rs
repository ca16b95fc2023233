//! The work queue: ready tasks of every query, in dispatch order.
//!
//! First come, first served for now; entries of queries that ended are skipped when
//! popped rather than searched for when the query ends.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::query::TaskRef;

/// A ready task waiting for a slot.
#[derive(Debug, Clone)]
pub struct QueuedTask {
    /// The task's query.
    pub query_id: Arc<str>,
    /// The task.
    pub task: TaskRef,
    /// When it became ready (for dispatch latency).
    pub ready_at: Instant,
}

/// Ready tasks in dispatch order.
#[derive(Debug, Default)]
pub struct WorkQueue {
    tasks: VecDeque<QueuedTask>,
}

impl WorkQueue {
    /// Adds tasks that just became ready.
    pub fn push(&mut self, query_id: &Arc<str>, tasks: impl IntoIterator<Item = TaskRef>) {
        let now = Instant::now();
        self.tasks.extend(tasks.into_iter().map(|task| QueuedTask {
            query_id: query_id.clone(),
            task,
            ready_at: now,
        }));
    }

    /// Puts a task back at the head (its push failed).
    pub fn push_front(&mut self, task: QueuedTask) {
        self.tasks.push_front(task);
    }

    /// The next task to dispatch.
    pub fn pop(&mut self) -> Option<QueuedTask> {
        self.tasks.pop_front()
    }

    /// Tasks waiting (including stale entries of ended queries).
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}
