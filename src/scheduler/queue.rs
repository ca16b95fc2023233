//! The work queue: ready tasks of every query, and the policy that picks whose task goes
//! to the next free slot.
//!
//! Each query keeps its ready tasks in the order they became ready, so within a query
//! every ready stage is served breadth-first; the [`Policy`] orders the queries. Pushing,
//! popping and dropping a query cost O(log q) in the number of queries with ready tasks.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::policy::{Policy, QueryInfo};
use super::query::{Query, TaskRef};
use super::registry::Urgency;

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

/// The next task to dispatch.
#[derive(Debug, Clone)]
pub struct Head {
    /// Its query.
    pub query_id: Arc<str>,
    /// The task.
    pub task: TaskRef,
    /// Its urgency; None when the policy does not preempt.
    pub urgency: Option<Urgency>,
}

#[derive(Debug)]
struct QueryTasks {
    info: QueryInfo,
    tasks: VecDeque<QueuedTask>,
}

/// Ready tasks, ordered by a policy.
#[derive(Debug)]
pub struct WorkQueue {
    policy: Box<dyn Policy>,
    queries: HashMap<Arc<str>, QueryTasks>,
    len: usize,
    epoch: Instant,
}

impl WorkQueue {
    /// An empty queue ordered by `policy`.
    pub fn new(policy: Box<dyn Policy>) -> Self {
        Self {
            policy,
            queries: HashMap::new(),
            len: 0,
            epoch: Instant::now(),
        }
    }

    /// The scheduler clock's reading of `at`, as the policy sees time.
    fn clock(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.epoch)
    }

    /// What the policy sees of `query` now.
    pub fn info(&self, query: &Query) -> QueryInfo {
        QueryInfo {
            seq: query.seq,
            arrival: self.clock(query.arrived),
            remaining_cost: query.remaining_cost(),
        }
    }

    /// The order in which queries waiting for admission start: the policy's rank where
    /// it ranks queries (`priority`: least remaining work, aged), else submission order.
    pub fn admission_key(&self, info: &QueryInfo) -> (f64, u64) {
        (self.policy.rank(info).unwrap_or(0.0), info.seq)
    }

    /// Adds tasks of a query that just became ready; `info` describes the query now.
    pub fn push(
        &mut self,
        query_id: &Arc<str>,
        info: QueryInfo,
        tasks: impl IntoIterator<Item = TaskRef>,
    ) {
        let now = Instant::now();
        let mut added = tasks
            .into_iter()
            .map(|task| QueuedTask {
                query_id: query_id.clone(),
                task,
                ready_at: now,
            })
            .peekable();
        if added.peek().is_none() {
            return;
        }
        let entry = Self::entry(&mut self.queries, query_id, &info);
        let was_empty = entry.tasks.is_empty();
        let before = entry.tasks.len();
        entry.tasks.extend(added);
        self.len += entry.tasks.len() - before;
        entry.info = info;
        if was_empty {
            self.policy.activate(query_id, &entry.info);
        } else {
            self.policy.cost_changed(query_id, &entry.info);
        }
    }

    /// Puts a task back at the head of its query (its push failed).
    pub fn push_front(&mut self, task: QueuedTask, info: QueryInfo) {
        let query_id = task.query_id.clone();
        let entry = Self::entry(&mut self.queries, &query_id, &info);
        let was_empty = entry.tasks.is_empty();
        entry.tasks.push_front(task);
        self.len += 1;
        if was_empty {
            self.policy.activate(&query_id, &entry.info);
        }
    }

    fn entry<'a>(
        queries: &'a mut HashMap<Arc<str>, QueryTasks>,
        query_id: &Arc<str>,
        info: &QueryInfo,
    ) -> &'a mut QueryTasks {
        queries
            .entry(query_id.clone())
            .or_insert_with(|| QueryTasks {
                info: info.clone(),
                tasks: VecDeque::new(),
            })
    }

    /// The next task to dispatch, as the policy orders queries.
    pub fn pop(&mut self) -> Option<QueuedTask> {
        let id = self.policy.next()?;
        let Some(entry) = self.queries.get_mut(&id) else {
            // Cannot happen while activate/deactivate pair up; recover rather than spin.
            self.policy.deactivate(&id);
            return None;
        };
        let task = entry.tasks.pop_front();
        if task.is_some() {
            self.len -= 1;
        }
        if entry.tasks.is_empty() {
            self.queries.remove(&id);
            self.policy.deactivate(&id);
        } else {
            self.policy.dispatched(&id);
        }
        task
    }

    /// The task [`WorkQueue::pop`] would return next, with its query and, when the
    /// policy preempts, its urgency.
    pub fn head(&self) -> Option<Head> {
        let query_id = self.policy.next()?;
        let entry = self.queries.get(&query_id)?;
        let task = entry.tasks.front()?.task;
        let urgency = self.urgency(&entry.info);
        Some(Head {
            query_id,
            task,
            urgency,
        })
    }

    /// The urgency of a task of a query described by `info`; None when the policy does
    /// not preempt.
    fn urgency(&self, info: &QueryInfo) -> Option<Urgency> {
        Some(Urgency {
            rank: self.policy.rank(info)?,
            cost: info.remaining_cost,
        })
    }

    /// A query's estimated remaining work changed (a task of it finished).
    pub fn update(&mut self, query_id: &Arc<str>, info: QueryInfo) {
        if let Some(entry) = self.queries.get_mut(query_id) {
            entry.info = info;
            self.policy.cost_changed(query_id, &entry.info);
        }
    }

    /// Drops every queued task of a query (it ended).
    pub fn remove_query(&mut self, query_id: &Arc<str>) {
        if let Some(entry) = self.queries.remove(query_id) {
            self.len -= entry.tasks.len();
            self.policy.deactivate(query_id);
        }
    }

    /// Tasks waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::policy::PolicyKind;

    fn info(seq: u64, cost: f64) -> QueryInfo {
        QueryInfo {
            seq,
            arrival: Duration::ZERO,
            remaining_cost: cost,
        }
    }

    fn tasks(stage: u32, n: u32) -> impl Iterator<Item = TaskRef> {
        (0..n).map(move |partition| TaskRef { stage, partition })
    }

    #[test]
    fn stages_of_a_query_are_served_breadth_first_and_queries_by_policy() {
        let mut queue = WorkQueue::new(PolicyKind::Priority.build(0.0));
        let big: Arc<str> = "big".into();
        let small: Arc<str> = "small".into();
        queue.push(&big, info(0, 100.0), tasks(0, 2));
        queue.push(&big, info(0, 100.0), tasks(1, 2));
        queue.push(&small, info(1, 1.0), tasks(0, 1));
        assert_eq!(queue.len(), 5);
        let order: Vec<_> = std::iter::from_fn(|| queue.pop())
            .map(|t| format!("{}:{}.{}", t.query_id, t.task.stage, t.task.partition))
            .collect();
        assert_eq!(
            order,
            ["small:0.0", "big:0.0", "big:0.1", "big:1.0", "big:1.1"]
        );
        assert!(queue.is_empty());
    }

    #[test]
    fn an_ended_query_leaves_no_tasks_behind() {
        let mut queue = WorkQueue::new(PolicyKind::Fair.build(0.0));
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        queue.push(&a, info(0, 1.0), tasks(0, 3));
        queue.push(&b, info(1, 1.0), tasks(0, 2));
        queue.remove_query(&a);
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.pop().unwrap().query_id, b);
        assert_eq!(queue.pop().unwrap().query_id, b);
        assert!(queue.pop().is_none());
    }

    #[test]
    fn a_task_put_back_goes_first() {
        let mut queue = WorkQueue::new(PolicyKind::Fifo.build(0.0));
        let a: Arc<str> = "a".into();
        queue.push(&a, info(0, 1.0), tasks(0, 2));
        let first = queue.pop().unwrap();
        queue.push_front(first, info(0, 1.0));
        assert_eq!(queue.pop().unwrap().task.partition, 0);
        assert_eq!(queue.pop().unwrap().task.partition, 1);
        assert!(queue.is_empty());
    }
}
