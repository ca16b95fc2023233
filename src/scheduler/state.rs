//! The scheduler's state and its one-way flow of events: executor stream → query table →
//! work queue → dispatcher → executor stream.
//!
//! All of it sits behind one mutex that is never held across an await; every change
//! ends with [`SchedulerState::dispatch`], which pushes ready tasks to free slots at once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::durable::{Change, Journal};
use super::policy::Policy;
use super::query::{COPY_ATTEMPT, CopyRule, Progress, Query, RunningAttempt, TaskRef};
use super::query_state_name;
use super::queue::{QueuedTask, WorkQueue};
use super::registry::{ExecutorSender, Held, HeldKey, Registry, Urgency};
use crate::proto::{
    CancelTask, DropMapOutput, HeldOutput, QueryState, ReleaseShuffle, ResumeTask, RunTask,
    SchedulerMessage, Shutdown, SuspendTask, TaskId, TaskStatus, scheduler_message, task_status,
};
use crate::shuffle::MapLocation;

mod copies;

/// The wire id of attempt `attempt` of `task` of `query_id`.
fn task_id(query_id: &str, task: TaskRef, attempt: u32) -> TaskId {
    TaskId {
        query_id: query_id.to_string(),
        stage_id: task.stage,
        partition: task.partition,
        attempt,
    }
}

/// The task a wire id names (any attempt).
fn task_ref(id: &TaskId) -> TaskRef {
    TaskRef {
        stage: id.stage_id,
        partition: id.partition,
    }
}

/// Ended queries whose status the scheduler keeps; older ones are forgotten first.
const ENDED_RETAINED: usize = 10_000;

/// Task spans kept for timelines; older ones are dropped first.
const TIMELINE_CAPACITY: usize = 200_000;

/// One finished task: where and when it ran (pushed → result received).
#[derive(Debug, Clone)]
pub struct TaskSpan {
    /// The query.
    pub query_id: Arc<str>,
    /// The stage.
    pub stage: u32,
    /// The partition.
    pub partition: u32,
    /// The executor that ran it.
    pub executor: String,
    /// When it was pushed.
    pub start: Instant,
    /// When its result arrived.
    pub end: Instant,
    /// It was a copy (see [`super::query`]'s copies) that finished before the attempt it
    /// copied.
    pub copy: bool,
}

/// The connected executors and their task slots in all, as the scheduler's watch shows
/// them (what `--partitions` defaults to follows the slots).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterSize {
    /// Connected executors.
    pub executors: usize,
    /// Their task slots, summed, an executor on probation for slowness counting one.
    pub slots: u32,
}

/// The cluster's size as the planner sees it.
fn cluster_size(registry: &Registry) -> ClusterSize {
    ClusterSize {
        executors: registry.len(),
        slots: registry.planning_slots(),
    }
}

/// Everything the scheduler knows.
#[derive(Debug)]
pub struct SchedulerState {
    queries: HashMap<Arc<str>, Query>,
    order: Vec<Arc<str>>,
    watchers: HashMap<Arc<str>, watch::Sender<QueryState>>,
    queue: WorkQueue,
    registry: Registry,
    executors_watch: watch::Sender<ClusterSize>,
    next_seq: u64,
    timeline: VecDeque<TaskSpan>,
    ended: VecDeque<Arc<str>>,
    ended_retained: usize,
    inline_result_limit: u64,
    /// Queries admitted and not ended.
    running: usize,
    /// Queries waiting for admission, in submission order.
    waiting: Vec<Arc<str>>,
    /// Queries that may run at once; None: [`Self::default_running_limit`].
    max_running: Option<usize>,
    /// Bytes of results the scheduler holds (sent back with final tasks' statuses).
    held_result_bytes: usize,
    /// While it holds this much, final tasks keep their output for a Flight fetch.
    held_results_cap: usize,
    /// Where every change to the queries is recorded, when the state is durable.
    journal: Option<Journal>,
    /// After a restart: the executors expected back, and how long they took.
    recovery: Option<Recovery>,
    /// Which running tasks get a copy on an idle executor.
    copy_rule: CopyRule,
}

/// A restarted scheduler's wait for the executors that held its queries' output.
#[derive(Debug)]
struct Recovery {
    started: Instant,
    /// Executors not registered again yet.
    expected: HashSet<String>,
    /// The first task was pushed since.
    pushed: bool,
}

impl Recovery {
    fn new(expected: HashSet<String>) -> Self {
        let started = Instant::now();
        Self {
            started,
            expected,
            pushed: false,
        }
    }

    fn registered(&mut self, executor_id: &str) {
        if self.expected.remove(executor_id) && self.expected.is_empty() {
            let seconds = self.started.elapsed().as_secs_f64();
            metrics::gauge!("baton_recovery_registered_seconds").set(seconds);
            info!(
                seconds,
                "every executor of the restored queries registered again"
            );
        }
    }

    /// A task was pushed: the first one since the restart ends the recovery's clock.
    fn task_pushed(&mut self) {
        if !self.pushed {
            self.pushed = true;
            let seconds = self.started.elapsed().as_secs_f64();
            metrics::gauge!("baton_recovery_seconds").set(seconds);
            info!(seconds, "first task pushed since the restart");
        }
    }
}

impl SchedulerState {
    /// An empty state whose queue is ordered by `policy`; `executors_watch` follows the
    /// connected executors and their slots.
    pub fn new(executors_watch: watch::Sender<ClusterSize>, policy: Box<dyn Policy>) -> Self {
        Self {
            queries: HashMap::new(),
            order: Vec::new(),
            watchers: HashMap::new(),
            queue: WorkQueue::new(policy),
            registry: Registry::default(),
            executors_watch,
            next_seq: 0,
            timeline: VecDeque::new(),
            ended: VecDeque::new(),
            ended_retained: ENDED_RETAINED,
            inline_result_limit: 0,
            running: 0,
            waiting: Vec::new(),
            max_running: None,
            held_result_bytes: 0,
            held_results_cap: usize::MAX,
            journal: None,
            recovery: None,
            copy_rule: CopyRule::default(),
        }
    }

    /// Records every change to the queries in `journal` from now on.
    pub fn set_journal(&mut self, journal: Journal) {
        self.journal = Some(journal);
    }

    /// The journal changes are recorded in, when the state is durable.
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    fn record(&self, change: impl FnOnce() -> Change) {
        if let Some(journal) = &self.journal {
            journal.record(change());
        }
    }

    /// Adds a query and starts it, or queues it while as many queries run as may;
    /// returns a receiver that sees its state change. The query is recorded in the
    /// journal; [`Journal::flushed`] tells when it is written.
    pub fn add_query(&mut self, mut query: Query) -> watch::Receiver<QueryState> {
        query.seq = self.next_seq;
        if let Some(journal) = &self.journal {
            journal.record(Change::PutQuery(query.to_stored()));
            for task in query.stored_tasks() {
                journal.record(Change::PutTask(task));
            }
        }
        info!(query_id = %query.id, stages = query.stage_count(), cost = query.remaining_cost(), "query submitted");
        self.insert(query)
    }

    /// Takes back a query the state store kept (the scheduler restarted): one that had
    /// `ended` as it ended, any other queued to resume (or ended now, when its stored
    /// tasks finish it).
    pub fn restore_query(&mut self, query: Query, ended: bool) -> watch::Receiver<QueryState> {
        info!(query_id = %query.id, state = query_state_name(query.state()), "query restored");
        if !ended {
            return self.insert(query);
        }
        let id = query.id.clone();
        let state = query_state_name(query.state());
        self.ended.push_back(id.clone());
        let rx = self.track(query);
        metrics::gauge!("baton_queries", "state" => state).increment(1.0);
        if self.ended.len() > self.ended_retained {
            self.forget_oldest();
        }
        rx
    }

    /// Adds a query to the table and starts it (or queues it for admission).
    fn insert(&mut self, query: Query) -> watch::Receiver<QueryState> {
        let finished = query.is_finished();
        let id = query.id.clone();
        let rx = self.track(query);
        if finished {
            metrics::gauge!("baton_queries", "state" => "running").increment(1.0);
            self.apply(&id, Progress::default());
        } else {
            metrics::gauge!("baton_queries", "state" => "queued").increment(1.0);
            self.waiting.push(id);
            self.admit();
        }
        self.dispatch();
        rx
    }

    /// Puts a query in the table, with a watch of its state.
    fn track(&mut self, query: Query) -> watch::Receiver<QueryState> {
        let id = query.id.clone();
        self.next_seq = self.next_seq.max(query.seq + 1);
        let (tx, rx) = watch::channel(query.state());
        // A query answered by the scheduler arrives holding its result.
        self.held_result_bytes += query.inline_result_bytes();
        self.order.push(id.clone());
        self.queries.insert(id.clone(), query);
        self.watchers.insert(id, tx);
        rx
    }

    /// Queries that may run at once unless set: four per task slot, at least 16.
    fn default_running_limit(&self) -> usize {
        (4 * self.registry.slots().0 as usize).max(16)
    }

    /// Sets how many queries may run at once (None: four per task slot, at least 16).
    pub fn set_max_running_queries(&mut self, limit: Option<usize>) {
        self.max_running = limit.map(|n| n.max(1));
        self.admit();
        self.dispatch();
    }

    /// Starts waiting queries, in policy order, while fewer run than may.
    fn admit(&mut self) {
        let limit = self
            .max_running
            .unwrap_or_else(|| self.default_running_limit());
        while self.running < limit && !self.waiting.is_empty() {
            let next = self
                .waiting
                .iter()
                .enumerate()
                .filter_map(|(i, id)| {
                    let query = self.queries.get(id)?;
                    Some((i, self.queue.admission_key(&self.queue.info(query))))
                })
                .min_by(|a, b| a.1.0.total_cmp(&b.1.0).then(a.1.1.cmp(&b.1.1)))
                .map(|(i, _)| i);
            let Some(next) = next else {
                self.waiting.clear();
                break;
            };
            let id = self.waiting.remove(next);
            let Some(query) = self.queries.get_mut(&id) else {
                continue;
            };
            let progress = query.start();
            self.running += 1;
            metrics::gauge!("baton_queries", "state" => "queued").decrement(1.0);
            metrics::gauge!("baton_queries", "state" => "running").increment(1.0);
            self.apply(&id, progress);
        }
    }

    /// Queues what became ready and reports an ended query.
    fn apply(&mut self, query_id: &Arc<str>, mut progress: Progress) {
        if !progress.outrun.is_empty() {
            self.cancel_tasks(query_id, std::mem::take(&mut progress.outrun));
        }
        // An attempt outrun by its copy never reports a time: what it ran so far is what
        // its executor's slowness learns (only the tasks a slow executor won would
        // otherwise count, which are the ones it was not slow at).
        for lagged in std::mem::take(&mut progress.lagged) {
            let median = self
                .queries
                .get(query_id)
                .and_then(|q| q.median_task_time(lagged.stage));
            if let Some(median) = median
                && self.registry.record_task_time(
                    &lagged.executor,
                    lagged.ran,
                    median,
                    Instant::now(),
                )
            {
                self.publish_cluster_size();
            }
        }
        let Some(query) = self.queries.get(query_id) else {
            return;
        };
        if !progress.released.is_empty() && !query.is_finished() {
            debug!(%query_id, stages = ?progress.released, "shuffle output read by every consumer; released");
            self.broadcast_release(query_id, progress.released);
        }
        if progress.finished || query.is_finished() {
            self.queue.remove_query(query_id);
            self.on_finished(query_id);
        } else if progress.ready.is_empty() {
            self.queue.update(query_id, self.queue.info(query));
        } else {
            self.queue
                .push(query_id, self.queue.info(query), progress.ready);
        }
    }

    fn on_finished(&mut self, query_id: &Arc<str>) {
        let Some(query) = self.queries.get(query_id) else {
            return;
        };
        let state = query.state();
        if let Some(tx) = self.watchers.get(query_id) {
            tx.send_replace(state);
        }
        info!(query_id = %query_id, ?state, error = query.error().unwrap_or(""), "query ended");
        self.record(|| Change::PutQuery(query.to_stored()));
        let label = query_state_name(state);
        metrics::histogram!("baton_query_duration_seconds", "state" => label)
            .record(query.elapsed().as_secs_f64());
        metrics::gauge!("baton_queries", "state" => label).increment(1.0);
        let (started, final_stage) = (query.started(), query.final_stage());
        // It ran, or it ended while it waited for admission (cancelled).
        if let Some(position) = self.waiting.iter().position(|id| id == query_id) {
            self.waiting.remove(position);
            metrics::gauge!("baton_queries", "state" => "queued").decrement(1.0);
        } else {
            metrics::gauge!("baton_queries", "state" => "running").decrement(1.0);
            if started {
                self.running = self.running.saturating_sub(1);
            }
        }
        let stages: Vec<u32> = if state == QueryState::Succeeded {
            (0..final_stage).collect()
        } else {
            Vec::new()
        };
        if state != QueryState::Succeeded || !stages.is_empty() {
            self.broadcast_release(query_id, stages);
        }
        if state != QueryState::Succeeded
            && let Some(query) = self.queries.get_mut(query_id)
        {
            // Partitions a failed or cancelled query's final tasks sent back are no result.
            self.held_result_bytes = self
                .held_result_bytes
                .saturating_sub(query.drop_inline_results());
        }
        self.ended.push_back(query_id.clone());
        if self.ended.len() > self.ended_retained {
            self.forget_oldest();
        }
        self.admit();
        self.stop_drained();
    }

    /// Forgets the oldest tenth of the retained ended queries, so the query table stays
    /// bounded; each call costs one pass over the submission order.
    fn forget_oldest(&mut self) {
        let count = (self.ended_retained / 10).max(1);
        for id in self.ended.drain(..count.min(self.ended.len())) {
            if let Some(journal) = &self.journal {
                journal.record(Change::Forget(id.to_string()));
            }
            if let Some(mut query) = self.queries.remove(&id) {
                metrics::gauge!("baton_queries", "state" => query_state_name(query.state()))
                    .decrement(1.0);
                self.held_result_bytes = self
                    .held_result_bytes
                    .saturating_sub(query.drop_inline_results());
            }
            self.watchers.remove(&id);
        }
        let queries = &self.queries;
        self.order.retain(|id| queries.contains_key(id));
    }

    fn broadcast_release(&self, query_id: &str, stage_ids: Vec<u32>) {
        let message = SchedulerMessage {
            message: Some(scheduler_message::Message::ReleaseShuffle(ReleaseShuffle {
                query_id: query_id.to_string(),
                stage_ids,
            })),
        };
        for executor in self.registry.iter() {
            executor.send(message.clone());
        }
    }

    /// Frees the result partitions of a succeeded query (fetched, or kept past their
    /// time to live); `reason` is what a later fetch is told.
    pub fn release_results(&mut self, query_id: &str, reason: &'static str) {
        let Some(query) = self.queries.get_mut(query_id) else {
            return;
        };
        if query.state() != QueryState::Succeeded || query.results_released.is_some() {
            return;
        }
        query.results_released = Some(reason);
        self.held_result_bytes = self
            .held_result_bytes
            .saturating_sub(query.drop_inline_results());
        let final_stage = query.final_stage();
        if let Some(journal) = &self.journal {
            journal.record(Change::PutQuery(query.to_stored()));
            journal.record(Change::DropTasks {
                query_id: query_id.to_string(),
                stage_id: final_stage,
            });
        }
        debug!(query_id, reason, "result partitions released");
        self.broadcast_release(query_id, vec![final_stage]);
        self.stop_drained();
    }

    /// Pushes ready tasks to free slots until either runs out; under a preempting
    /// policy, then also the most urgent tasks to executors running far less urgent
    /// ones, which it suspends.
    pub fn dispatch(&mut self) {
        let now = Instant::now();
        while !self.queue.is_empty() {
            let Some(head) = self.queue.head() else {
                break;
            };
            let query = self.queries.get(&head.query_id);
            // A task that failed transiently runs elsewhere when another executor has
            // room; otherwise where most of its input lies.
            let home: Option<String> = match query.and_then(|q| q.failed_on(head.task)) {
                Some(failed_on) => self
                    .registry
                    .most_free_except(failed_on)
                    .map(str::to_string),
                None => None,
            }
            .or_else(|| {
                query
                    .and_then(|q| q.home_executor(head.task.stage))
                    .map(str::to_string)
            });
            let preempt = head.urgency.map(|u| (&*head.query_id, u));
            let Some((executor, victim)) = self.registry.pick(preempt, home.as_deref(), now) else {
                break;
            };
            let Some(queued) = self.queue.pop() else {
                break;
            };
            let Some(query) = self.queries.get_mut(&queued.query_id) else {
                continue;
            };
            if !query.is_dispatchable(queued.task) {
                continue;
            }
            // The popped task is the head's. Without preemption every task has the same
            // urgency: executors keep their order.
            let urgency = head.urgency.unwrap_or(Urgency {
                rank: 0.0,
                cost: 0.0,
            });
            let task = queued.task;
            let room = self.held_result_bytes < self.held_results_cap;
            let inline_limit = inline_limit(query, task, room, self.inline_result_limit);
            let run = run_task(
                &queued.query_id,
                query,
                task,
                query.attempt(task),
                queued.ready_at,
                inline_limit,
            );
            // The victim stops before the new task starts, so they never share the slot.
            let suspended = victim.and_then(|victim| {
                let held = executor.running.get_mut(&victim)?;
                held.suspended = true;
                let attempt = held.attempt;
                executor.send(gate_message(&victim, attempt, true));
                Some((victim, attempt))
            });
            let message = SchedulerMessage {
                message: Some(scheduler_message::Message::RunTask(run)),
            };
            if !executor.send(message) {
                // The stream is closing; its end will remove the executor.
                executor.slots = 0;
                let info = self.queue.info(query);
                self.queue.push_front(queued, info);
                continue;
            }
            let held = Held {
                urgency,
                since: now,
                attempt: query.attempt(task),
                suspended: false,
            };
            executor
                .running
                .insert((queued.query_id.clone(), task), held);
            let executor_id = executor.location.executor_id.clone();
            query.task_started(task, &executor_id);
            record_dispatch(&queued);
            if let Some(recovery) = &mut self.recovery {
                recovery.task_pushed();
            }
            debug!(query_id = %queued.query_id, stage = task.stage, partition = task.partition, executor = %executor_id, rank = urgency.rank, preempts = suspended.is_some(), "task pushed");
            if let Some(((victim_query, victim_task), attempt)) = suspended {
                metrics::counter!("baton_task_suspensions_total").increment(1);
                if let Some(query) = self.queries.get_mut(&victim_query) {
                    query.task_suspended(victim_task, attempt, &executor_id, true);
                }
            }
        }
        metrics::gauge!("baton_queue_depth").set(self.queue.len() as f64);
        let (total, busy) = self.registry.slots();
        metrics::gauge!("baton_slots_total").set(total as f64);
        metrics::gauge!("baton_slots_busy").set(busy as f64);
    }

    /// Lets suspended tasks on `executor_id` go on, most urgent first, while fewer tasks
    /// run there than it has slots (a task there ended): a suspended task keeps its
    /// claim on a slot, so it goes on before new work takes the slot.
    fn resume_suspended(&mut self, executor_id: &str) {
        let now = Instant::now();
        let Some(executor) = self.registry.get_mut(executor_id) else {
            return;
        };
        while let Some(key) = executor.to_resume(now) {
            let Some(held) = executor.running.get_mut(&key) else {
                break;
            };
            held.suspended = false;
            let attempt = held.attempt;
            executor.send(gate_message(&key, attempt, false));
            if let Some(query) = self.queries.get_mut(&key.0) {
                query.task_suspended(key.1, attempt, executor_id, false);
            }
        }
    }

    /// A task preempts only for a query with under 1/`ratio` of the remaining work of the
    /// task it suspends (10 unless set).
    pub fn set_preempt_cost_ratio(&mut self, ratio: f64) {
        self.registry.set_preempt_cost_ratio(ratio);
    }

    /// Bytes of Arrow IPC a final-stage task may send back with its status instead of
    /// leaving its output on its executor (0, the default: never).
    pub fn set_inline_result_limit(&mut self, bytes: u64) {
        self.inline_result_limit = bytes;
    }

    /// While the scheduler holds `bytes` of results, final tasks keep their output on
    /// their executors (unbounded unless set).
    pub fn set_held_results_cap(&mut self, bytes: usize) {
        self.held_results_cap = bytes;
    }

    /// A new executor stream; returns the connection generation, or None when an
    /// executor of that id is connected already (its stream has not ended). `held` is
    /// the map output it kept (it registers again after losing its stream): the queries
    /// keep what it still holds, compute again what it lost, and it is told to drop
    /// what no query needs.
    pub fn register_executor(
        &mut self,
        location: MapLocation,
        slots: u32,
        preempt_slots: u32,
        sender: ExecutorSender,
        held: &[HeldOutput],
    ) -> Option<u64> {
        let id = location.executor_id.clone();
        let Some(generation) = self
            .registry
            .register(location, slots, preempt_slots, sender)
        else {
            warn!(executor = %id, "a second executor tried to register under a connected executor's id; refused");
            return None;
        };
        info!(executor = %id, slots, preempt_slots, held = held.len(), "executor registered");
        self.publish_cluster_size();
        metrics::gauge!("baton_executors_connected").set(self.registry.len() as f64);
        self.reconcile_held(&id, held);
        if let Some(recovery) = &mut self.recovery {
            recovery.registered(&id);
        }
        self.dispatch();
        Some(generation)
    }

    /// Matches what the queries think `executor_id` holds with what it says it holds.
    fn reconcile_held(&mut self, executor_id: &str, held: &[HeldOutput]) {
        let mut by_query: HashMap<&str, HashSet<(u32, u32)>> = HashMap::new();
        for output in held {
            let kept = by_query.entry(output.query_id.as_str()).or_default();
            kept.extend(output.map_partitions.iter().map(|&p| (output.stage_id, p)));
        }
        let unneeded: Vec<&str> = by_query
            .keys()
            .copied()
            .filter(|id| {
                !self
                    .queries
                    .get(*id)
                    .is_some_and(|q| q.needs_output_on(executor_id))
            })
            .collect();
        if let Some(executor) = self.registry.get(executor_id) {
            for query_id in unneeded {
                executor.send(SchedulerMessage {
                    message: Some(scheduler_message::Message::ReleaseShuffle(ReleaseShuffle {
                        query_id: query_id.to_string(),
                        stage_ids: Vec::new(),
                    })),
                });
            }
        }
        let affected: Vec<Arc<str>> = self
            .queries
            .iter()
            .filter(|(_, q)| !q.is_finished() && q.output_holders().contains(executor_id))
            .map(|(id, _)| id.clone())
            .collect();
        let nothing = HashSet::new();
        for query_id in affected {
            let kept = by_query.get(&*query_id).unwrap_or(&nothing);
            let Some(query) = self.queries.get_mut(&query_id) else {
                continue;
            };
            let (progress, to_cancel) = query.keep_held(executor_id, kept);
            self.cancel_tasks(&query_id, to_cancel);
            self.apply(&query_id, progress);
        }
    }

    /// Starts the wait for the executors that held restored queries' output, which a
    /// restarted scheduler expects back (see [`Self::forget_absent_executors`]).
    pub fn start_recovery(&mut self) {
        let mut expected: HashSet<String> = self
            .queries
            .values()
            .filter(|q| !q.is_finished())
            .flat_map(Query::output_holders)
            .collect();
        expected.retain(|id| self.registry.get(id).is_none());
        info!(
            executors = expected.len(),
            "waiting for the executors of restored queries"
        );
        self.recovery = Some(Recovery::new(expected));
    }

    /// The executors a restarted scheduler waited for and that did not register again
    /// in time are taken as lost: what they held is computed again elsewhere.
    pub fn forget_absent_executors(&mut self) {
        let Some(recovery) = &self.recovery else {
            return;
        };
        let absent: Vec<String> = recovery.expected.iter().cloned().collect();
        for executor_id in absent {
            warn!(executor = %executor_id, "executor did not register again after the restart; its output is computed again");
            self.requeue_lost(&executor_id);
        }
        if let Some(recovery) = &mut self.recovery {
            recovery.expected.clear();
        }
        self.dispatch();
    }

    /// Closes every executor's stream (the scheduler stops): the executors are
    /// forgotten, and each sees its stream end.
    pub fn close_executor_streams(&mut self) {
        let ids: Vec<(String, u64)> = self
            .registry
            .iter()
            .map(|e| (e.location.executor_id.clone(), e.generation))
            .collect();
        for (id, generation) in ids {
            self.registry.remove(&id, generation);
        }
        self.executors_watch.send_replace(ClusterSize::default());
    }

    /// True when no query is queued or running and every succeeded query's result was
    /// fetched or freed.
    pub fn is_idle(&self) -> bool {
        self.queries.values().all(|q| match q.state() {
            QueryState::Queued | QueryState::Running => false,
            QueryState::Succeeded => q.results_released.is_some(),
            _ => true,
        })
    }

    /// Tells the planner how many executors and task slots there are now.
    fn publish_cluster_size(&self) {
        self.executors_watch
            .send_replace(cluster_size(&self.registry));
    }

    /// An executor is leaving (it got SIGTERM): it takes no new task and is told to stop
    /// once it holds no task and no shuffle output a query still needs.
    pub fn executor_draining(&mut self, executor_id: &str) {
        let Some(executor) = self.registry.get_mut(executor_id) else {
            return;
        };
        executor.draining = true;
        info!(executor = %executor_id, running = executor.running.len(), "executor draining");
        self.publish_cluster_size();
        self.stop_drained();
    }

    /// Tells each draining executor that holds no task and no needed output to stop.
    fn stop_drained(&mut self) {
        let done: Vec<String> = self
            .registry
            .iter()
            .filter(|e| e.draining && !e.stopped && e.running.is_empty())
            .map(|e| e.location.executor_id.clone())
            .filter(|id| !self.queries.values().any(|q| q.needs_output_on(id)))
            .collect();
        for id in done {
            if let Some(executor) = self.registry.get_mut(&id) {
                info!(executor = %id, "executor drained; telling it to stop");
                executor.stopped = true;
                executor.send(SchedulerMessage {
                    message: Some(scheduler_message::Message::Shutdown(Shutdown {})),
                });
            }
        }
    }

    /// An executor's stream ended: `closed` by the executor (it stopped), or broken.
    /// Either way its running tasks and the shuffle output it held are gone.
    pub fn executor_lost(&mut self, executor_id: &str, generation: u64, closed: bool) {
        let Some(entry) = self.registry.remove(executor_id, generation) else {
            return;
        };
        let running = entry.running.len();
        if closed {
            info!(executor = %executor_id, running, "executor left");
        } else {
            warn!(executor = %executor_id, running, "executor lost");
        }
        self.publish_cluster_size();
        metrics::gauge!("baton_executors_connected").set(self.registry.len() as f64);
        self.requeue_lost(executor_id);
        self.dispatch();
    }

    /// Queues again what every unfinished query lost with `executor_id`: its running
    /// tasks and the shuffle output it held.
    fn requeue_lost(&mut self, executor_id: &str) {
        let affected: Vec<Arc<str>> = self
            .queries
            .iter()
            .filter(|(_, q)| !q.is_finished())
            .map(|(id, _)| id.clone())
            .collect();
        for query_id in affected {
            let Some(query) = self.queries.get_mut(&query_id) else {
                continue;
            };
            let (progress, to_cancel) = query.executor_lost(executor_id);
            self.cancel_tasks(&query_id, to_cancel);
            self.apply(&query_id, progress);
        }
    }

    /// A task status from `executor_id`'s stream.
    pub fn task_status(&mut self, executor_id: &str, status: TaskStatus) {
        let Some(id) = status.task else {
            return;
        };
        let query_id: Arc<str> = id.query_id.as_str().into();
        let task = task_ref(&id);
        let Some(executor) = self.registry.get_mut(executor_id) else {
            return;
        };
        let location = executor.location.clone();
        // A report of an earlier attempt (one cancelled, say) leaves the slot of a newer
        // attempt of the same task pushed to this executor since.
        let key = (query_id.clone(), task);
        if executor
            .running
            .get(&key)
            .is_some_and(|held| held.attempt == id.attempt)
        {
            executor.running.remove(&key);
        } else {
            // Only the executor an attempt was pushed to reports on it: a report for an
            // attempt it does not hold (another executor's, or one never pushed) changes
            // nothing.
            warn!(executor = %executor_id, query_id = %query_id, stage = task.stage, partition = task.partition, attempt = id.attempt, "report for a task attempt this executor does not hold; ignored");
            return;
        }
        // A report of an attempt the query no longer waits for (one outrun by its copy,
        // say, which may have written its output before it was cancelled).
        let mut stale = false;
        if let Some(query) = self.queries.get_mut(&query_id) {
            stale = !query.is_current(task, id.attempt);
            match status.result {
                Some(task_status::Result::Succeeded(ok)) => {
                    // An attempt the query no longer waits for (outrun by its copy,
                    // cancelled) is no task result.
                    if !stale {
                        metrics::histogram!("baton_task_duration_seconds")
                            .record(ok.elapsed_micros as f64 / 1e6);
                        metrics::counter!("baton_tasks_completed_total", "result" => "succeeded")
                            .increment(1);
                    }
                    let started = query.attempt_started_at(task, id.attempt);
                    if let (Some(start), Some(median)) =
                        (started, query.median_task_time(task.stage))
                        && self.registry.record_task_time(
                            executor_id,
                            start.elapsed(),
                            median,
                            Instant::now(),
                        )
                    {
                        // (Fields apart: `query` borrows the queries.)
                        self.executors_watch
                            .send_replace(cluster_size(&self.registry));
                    }
                    if let Some(start) = started {
                        if self.timeline.len() == TIMELINE_CAPACITY {
                            self.timeline.pop_front();
                        }
                        self.timeline.push_back(TaskSpan {
                            query_id: query_id.clone(),
                            stage: task.stage,
                            partition: task.partition,
                            executor: executor_id.to_string(),
                            start,
                            end: Instant::now(),
                            copy: id.attempt & COPY_ATTEMPT != 0,
                        });
                    }
                    query.add_task_time(task.stage, ok.elapsed_micros);
                    query.task_reported(
                        task,
                        id.attempt,
                        ok.key_summaries,
                        ok.filter_effect,
                        ok.in_stage_filters,
                        ok.operator_metrics,
                    );
                    let rows = ok.partitions.iter().map(|p| p.rows).sum();
                    let held = query.inline_result_bytes();
                    let progress =
                        query.task_succeeded(task, id.attempt, location, rows, ok.inline_result);
                    self.held_result_bytes += query.inline_result_bytes().saturating_sub(held);
                    if let Some(journal) = &self.journal
                        && let Some(stored) = query.stored_task(task)
                    {
                        journal.record(Change::PutTask(stored));
                    }
                    self.apply(&query_id, progress);
                }
                Some(task_status::Result::Failed(failed)) => {
                    if !stale {
                        metrics::counter!("baton_tasks_completed_total", "result" => "failed")
                            .increment(1);
                    }
                    if !failed.unreadable_executor.is_empty() {
                        let holder = &failed.unreadable_executor;
                        if let Some((progress, to_cancel)) =
                            query.outputs_lost(task, id.attempt, holder)
                        {
                            warn!(%query_id, stage = task.stage, partition = task.partition, executor = %holder, error = %failed.error, "task could not read shuffle output");
                            self.cancel_tasks(&query_id, to_cancel);
                            self.apply(&query_id, progress);
                        }
                    } else if let Some((progress, to_cancel)) =
                        query.task_failed(task, id.attempt, &failed.error, failed.transient)
                    {
                        if !progress.finished {
                            metrics::counter!("baton_task_retries_total").increment(1);
                        }
                        self.cancel_tasks(&query_id, to_cancel);
                        self.apply(&query_id, progress);
                    }
                }
                None => {}
            }
        }
        // Nobody reads what a stale attempt left on its executor.
        let stray = stale
            && self
                .queries
                .get(&query_id)
                .is_some_and(|q| q.is_stray_output(task, executor_id));
        if stray && let Some(executor) = self.registry.get(executor_id) {
            executor.send(SchedulerMessage {
                message: Some(scheduler_message::Message::DropMapOutput(DropMapOutput {
                    query_id: query_id.to_string(),
                    stage_id: task.stage,
                    map_partition: task.partition,
                })),
            });
        }
        self.resume_suspended(executor_id);
        self.dispatch();
        self.stop_drained();
    }

    fn cancel_tasks(&self, query_id: &str, attempts: Vec<RunningAttempt>) {
        for running in attempts {
            let Some(executor) = self.registry.get(&running.executor) else {
                continue;
            };
            executor.send(SchedulerMessage {
                message: Some(scheduler_message::Message::CancelTask(CancelTask {
                    task: Some(task_id(query_id, running.task, running.attempt)),
                })),
            });
        }
    }

    /// Cancels a query. None: unknown query; Some(false): it had already ended.
    pub fn cancel(&mut self, query_id: &str) -> Option<bool> {
        let id = self.queries.get_key_value(query_id)?.0.clone();
        let query = self.queries.get_mut(&id)?;
        let Some(running) = query.cancel() else {
            return Some(false);
        };
        self.cancel_tasks(&id, running);
        self.apply(
            &id,
            Progress {
                finished: true,
                ..Progress::default()
            },
        );
        self.dispatch();
        Some(true)
    }

    /// A query.
    pub fn query(&self, query_id: &str) -> Option<&Query> {
        self.queries.get(query_id)
    }

    /// A receiver of a query's state changes.
    pub fn watch(&self, query_id: &str) -> Option<watch::Receiver<QueryState>> {
        self.watchers.get(query_id).map(watch::Sender::subscribe)
    }

    /// Queries newest first.
    pub fn queries(&self) -> impl Iterator<Item = &Query> {
        self.order
            .iter()
            .rev()
            .filter_map(|id| self.queries.get(id))
    }

    /// The registry (for status and tests).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Finished tasks that started at or after `since`, oldest first.
    pub fn timeline(&self, since: Instant) -> Vec<TaskSpan> {
        self.timeline
            .iter()
            .filter(|s| s.start >= since)
            .cloned()
            .collect()
    }

    /// Ready tasks waiting for a slot.
    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }
}

/// Suspends (`suspend`) or resumes attempt `attempt` of a held task.
fn gate_message((query_id, task): &HeldKey, attempt: u32, suspend: bool) -> SchedulerMessage {
    let task = Some(task_id(query_id, *task, attempt));
    SchedulerMessage {
        message: Some(if suspend {
            scheduler_message::Message::SuspendTask(SuspendTask { task })
        } else {
            scheduler_message::Message::ResumeTask(ResumeTask { task })
        }),
    }
}

/// Bytes of output a task of `query` sends back with its status: `limit` for a final
/// task while the scheduler has `room` for results, else none (it stays on the executor;
/// an EXPLAIN ANALYZE query answers with metrics instead).
fn inline_limit(query: &Query, task: TaskRef, room: bool, limit: u64) -> u64 {
    if task.stage == query.final_stage() && room && !query.is_analyze() {
        limit
    } else {
        0
    }
}

/// The task `task` of `query` (id `query_id`) as pushed to an executor: attempt
/// `attempt`, ready since `ready_at`, sending back up to `inline_limit` bytes of its
/// output with its status.
fn run_task(
    query_id: &str,
    query: &Query,
    task: TaskRef,
    attempt: u32,
    ready_at: Instant,
    inline_limit: u64,
) -> RunTask {
    let pushed_at = wall_clock();
    RunTask {
        task: Some(task_id(query_id, task, attempt)),
        stage_plan: query.stage(task.stage).plan.clone(),
        inputs: query.stage_inputs(task.stage).to_vec(),
        ready_at_micros: ready_at_micros(ready_at, pushed_at),
        pushed_at_micros: pushed_at.as_micros() as u64,
        inline_result_limit: inline_limit,
        settings: query.settings.clone(),
        filters: query.stage_filters(task.stage).to_vec(),
        collect_metrics: query.is_analyze(),
    }
}

/// Now on the wall clock, since the Unix epoch.
fn wall_clock() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

/// `ready_at` on the wall clock, in Unix epoch microseconds, given `now` on it.
fn ready_at_micros(ready_at: Instant, now: Duration) -> u64 {
    now.saturating_sub(Instant::now().saturating_duration_since(ready_at))
        .as_micros() as u64
}

fn record_dispatch(queued: &QueuedTask) {
    metrics::counter!("baton_tasks_dispatched_total").increment(1);
    metrics::histogram!("baton_dispatch_latency_seconds")
        .record(Instant::now().duration_since(queued.ready_at).as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::{PolicyKind, StageSpec};

    #[test]
    fn the_query_table_forgets_the_oldest_ended_queries() {
        let (tx, _rx) = watch::channel(ClusterSize::default());
        let mut state = SchedulerState::new(tx, PolicyKind::Fifo.build(0.0));
        state.ended_retained = 20;
        for i in 0..25 {
            let id: Arc<str> = format!("q{i}").into();
            state.add_query(Query::failed(id, String::new(), "bad".into()));
        }
        // Each time 21 ended queries exceed 20, the oldest 2 go: at q20, q22 and q24.
        assert!((0..6).all(|i| state.query(&format!("q{i}")).is_none()));
        assert!((6..25).all(|i| state.query(&format!("q{i}")).is_some()));
        assert_eq!(state.queries().count(), 19);
        assert_eq!(
            state.queries().next().map(|q| q.id.to_string()),
            Some("q24".into())
        );
    }

    /// A stage of `tasks` tasks reading `inputs`, of cost 1.
    fn stage(inputs: Vec<u32>, tasks: usize) -> StageSpec {
        StageSpec {
            cost: 1.0,
            output_rows: 0.0,
            cost_per_input_row: 0.0,
            plan: Default::default(),
            inputs,
            tasks,
            operators: String::new(),
            filters: Vec::new(),
            analyzed: Vec::new(),
        }
    }

    type ExecutorStream =
        tokio::sync::mpsc::UnboundedReceiver<Result<SchedulerMessage, tonic::Status>>;

    /// A scheduler under `policy` with one executor "e" of `slots` (+ `preempt_slots`),
    /// and what the scheduler sends that executor.
    fn with_executor(
        policy: Box<dyn Policy>,
        slots: u32,
        preempt_slots: u32,
    ) -> (SchedulerState, ExecutorStream) {
        let (tx, _rx) = watch::channel(ClusterSize::default());
        let mut state = SchedulerState::new(tx, policy);
        let (sender, stream) = tokio::sync::mpsc::unbounded_channel();
        let location = MapLocation {
            executor_id: "e".into(),
            flight_address: "e:1".into(),
        };
        state.register_executor(location, slots, preempt_slots, sender, &[]);
        (state, stream)
    }

    /// The next message on an executor's stream.
    fn next_message(stream: &mut ExecutorStream) -> scheduler_message::Message {
        match stream.try_recv() {
            Ok(Ok(SchedulerMessage {
                message: Some(message),
            })) => message,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// A status of task `stage`.`partition`, attempt `attempt`, of query "q".
    fn status(stage: u32, partition: u32, attempt: u32, result: task_status::Result) -> TaskStatus {
        TaskStatus {
            task: Some(task_id("q", TaskRef { stage, partition }, attempt)),
            result: Some(result),
        }
    }

    /// Every message waiting on an executor's stream.
    fn pending(stream: &mut ExecutorStream) -> Vec<scheduler_message::Message> {
        std::iter::from_fn(|| stream.try_recv().ok())
            .filter_map(|m| m.ok()?.message)
            .collect()
    }

    fn status_of(task: TaskId, result: task_status::Result) -> TaskStatus {
        TaskStatus {
            task: Some(task),
            result: Some(result),
        }
    }

    fn succeeded() -> task_status::Result {
        task_status::Result::Succeeded(crate::proto::TaskSucceeded {
            partitions: Vec::new(),
            elapsed_micros: 1,
            inline_result: None,
            ..Default::default()
        })
    }

    /// Failed with `error`; `unreadable`: the executor whose output it could not read.
    fn failed(error: &str, unreadable: &str) -> task_status::Result {
        task_status::Result::Failed(crate::proto::TaskFailed {
            error: error.into(),
            unreadable_executor: unreadable.into(),
            transient: false,
        })
    }

    #[test]
    fn only_final_tasks_may_send_results_back_and_a_failed_query_keeps_none() {
        let (mut state, mut stream) = with_executor(PolicyKind::Fifo.build(0.0), 2, 0);
        state.set_inline_result_limit(4096);
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::empty());
        // Stage 0 (one task) feeds the final stage 1 (two tasks).
        let query = Query::new(
            "q".into(),
            String::new(),
            vec![stage(Vec::new(), 1), stage(vec![0], 2)],
            schema,
        );
        state.add_query(query);
        let limit_of = |message| match message {
            scheduler_message::Message::RunTask(run) => run.inline_result_limit,
            other => panic!("expected a task, got {other:?}"),
        };
        assert_eq!(limit_of(next_message(&mut stream)), 0);
        state.task_status("e", status(0, 0, 0, succeeded()));
        assert_eq!(limit_of(next_message(&mut stream)), 4096);
        assert_eq!(limit_of(next_message(&mut stream)), 4096);
        let inline = task_status::Result::Succeeded(crate::proto::TaskSucceeded {
            partitions: Vec::new(),
            elapsed_micros: 1,
            inline_result: Some(bytes::Bytes::from_static(b"arrow ipc")),
            ..Default::default()
        });
        state.task_status("e", status(1, 0, 0, inline));
        assert_eq!(state.query("q").unwrap().inline_result_bytes(), 9);
        state.task_status("e", status(1, 1, 0, failed("boom", "")));
        let query = state.query("q").unwrap();
        assert_eq!(query.state(), QueryState::Failed);
        assert_eq!(query.inline_result_bytes(), 0);
    }

    /// Executor "e" (one slot) and "f" (`f_slots`), and query "q" of one task, which
    /// went to "e"; returns the state and "f"'s stream.
    fn one_task_on_e_beside_f(f_slots: u32) -> (SchedulerState, ExecutorStream) {
        let (mut state, mut first) = with_executor(PolicyKind::Fifo.build(0.0), 1, 0);
        let (sender, second) = tokio::sync::mpsc::unbounded_channel();
        let location = MapLocation {
            executor_id: "f".into(),
            flight_address: "f:1".into(),
        };
        state.register_executor(location, f_slots, 0, sender, &[]);
        state.add_query(one_task_query("q", 1.0));
        assert!(matches!(
            next_message(&mut first),
            scheduler_message::Message::RunTask(_)
        ));
        (state, second)
    }

    #[test]
    fn a_task_that_failed_transiently_runs_again_on_another_executor() {
        let (mut state, mut second) = one_task_on_e_beside_f(1);
        let transient = task_status::Result::Failed(crate::proto::TaskFailed {
            error: "connection reset".into(),
            unreadable_executor: String::new(),
            transient: true,
        });
        state.task_status("e", status(0, 0, 0, transient));
        match next_message(&mut second) {
            scheduler_message::Message::RunTask(run) => {
                assert_eq!(run.task.unwrap().attempt, 1);
            }
            other => panic!("expected the retry on \"f\", got {other:?}"),
        }
        state.task_status("f", status(0, 0, 1, succeeded()));
        assert_eq!(state.query("q").unwrap().state(), QueryState::Succeeded);
    }

    #[test]
    fn only_the_executor_holding_an_attempt_may_report_on_it() {
        let (mut state, _second) = one_task_on_e_beside_f(0);
        // "f" reports the task "e" runs, and an attempt nobody was given: nothing changes.
        state.task_status("f", status(0, 0, 0, succeeded()));
        state.task_status("e", status(0, 0, 5, succeeded()));
        assert_eq!(state.query("q").unwrap().state(), QueryState::Running);
        state.task_status("e", status(0, 0, 0, succeeded()));
        assert_eq!(state.query("q").unwrap().state(), QueryState::Succeeded);
    }

    #[test]
    fn a_second_executor_under_a_connected_ones_id_is_refused() {
        let (mut state, mut stream) = with_executor(PolicyKind::Fifo.build(0.0), 1, 0);
        let (impostor, mut impostor_stream) = tokio::sync::mpsc::unbounded_channel();
        let location = MapLocation {
            executor_id: "e".into(),
            flight_address: "elsewhere:1".into(),
        };
        assert_eq!(state.register_executor(location, 8, 0, impostor, &[]), None);
        // The connected executor keeps its slot and gets the work.
        state.add_query(one_task_query("q", 1.0));
        assert!(matches!(
            next_message(&mut stream),
            scheduler_message::Message::RunTask(_)
        ));
        assert!(impostor_stream.try_recv().is_err());
        assert_eq!(state.registry().len(), 1);
    }

    #[test]
    fn a_late_report_of_a_cancelled_attempt_keeps_the_slot_of_the_next_one() {
        let (mut state, mut stream) = with_executor(PolicyKind::Fifo.build(0.0), 3, 0);
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::empty());
        let query = Query::new(
            "q".into(),
            String::new(),
            vec![stage(vec![], 1), stage(vec![0], 2)],
            schema,
        );
        state.add_query(query);
        let mut next = || {
            let (kind, id) = match next_message(&mut stream) {
                scheduler_message::Message::RunTask(run) => ("run", run.task),
                scheduler_message::Message::CancelTask(cancel) => ("cancel", cancel.task),
                other => panic!("expected a task pushed or cancelled, got {other:?}"),
            };
            let id = id.unwrap();
            (kind, id.stage_id, id.partition, id.attempt)
        };
        assert_eq!(next(), ("run", 0, 0, 0));
        state.task_status("e", status(0, 0, 0, succeeded()));
        assert_eq!(next(), ("run", 1, 0, 0));
        assert_eq!(next(), ("run", 1, 1, 0));
        // Task 1.0 cannot read stage 0's output: stage 0 runs again, task 1.1 is
        // cancelled (its attempt 0 named), and both run again as attempt 1.
        state.task_status("e", status(1, 0, 0, failed("fetch failed", "e")));
        assert_eq!(next(), ("cancel", 1, 1, 0));
        assert_eq!(next(), ("run", 0, 0, 1));
        state.task_status("e", status(0, 0, 1, succeeded()));
        assert_eq!(next(), ("run", 1, 0, 1));
        assert_eq!(next(), ("run", 1, 1, 1));
        // The executor's report of the cancelled attempt arrives only now: the slot of
        // attempt 1 stays taken.
        state.task_status("e", status(1, 1, 0, failed("cancelled", "")));
        let executor = state.registry().get("e").unwrap();
        assert_eq!(executor.running.len(), 2);
        assert_eq!(executor.free_slots(), 1);
        assert!(stream.try_recv().is_err());
    }

    /// A query "q…" of one stage of one task of `cost` units.
    fn one_task_query(id: &str, cost: f64) -> Query {
        let stage = StageSpec {
            cost,
            ..stage(Vec::new(), 1)
        };
        Query::new(
            id.into(),
            String::new(),
            vec![stage],
            Arc::new(datafusion::arrow::datatypes::Schema::empty()),
        )
    }

    /// The success of the one task of query `id` (see [`one_task_query`]).
    fn one_task_done(id: &str) -> TaskStatus {
        TaskStatus {
            task: Some(task_id(
                id,
                TaskRef {
                    stage: 0,
                    partition: 0,
                },
                0,
            )),
            result: Some(succeeded()),
        }
    }

    #[test]
    fn a_far_cheaper_query_suspends_a_running_task_which_resumes_when_it_ends() {
        let (mut state, mut stream) = with_executor(PolicyKind::Priority.build(0.0), 1, 1);
        let next = |stream: &mut ExecutorStream| match next_message(stream) {
            scheduler_message::Message::RunTask(run) => ("run", run.task.unwrap().query_id),
            scheduler_message::Message::SuspendTask(m) => ("suspend", m.task.unwrap().query_id),
            scheduler_message::Message::ResumeTask(m) => ("resume", m.task.unwrap().query_id),
            other => panic!("expected a task message, got {other:?}"),
        };
        let suspended = |state: &SchedulerState, id: &str| {
            state.query(id).unwrap().status().stages[0].running[0].suspended
        };
        state.add_query(one_task_query("long", 1000.0));
        assert_eq!(next(&mut stream), ("run", "long".to_string()));
        // Within ten times the long query's work: it waits for the slot.
        state.add_query(one_task_query("medium", 200.0));
        // Under a tenth: the long task is suspended first, then the cheap one pushed.
        state.add_query(one_task_query("cheap", 10.0));
        assert_eq!(next(&mut stream), ("suspend", "long".to_string()));
        assert_eq!(next(&mut stream), ("run", "cheap".to_string()));
        assert!(suspended(&state, "long"));
        // The room for suspended tasks is used up: an even cheaper query waits.
        state.add_query(one_task_query("cheaper", 1.0));
        assert!(stream.try_recv().is_err());
        // When the cheap task ends, the suspended task resumes before any new task.
        state.task_status("e", one_task_done("cheap"));
        assert_eq!(next(&mut stream), ("resume", "long".to_string()));
        // Running again, it is suspended again for the waiting cheaper query, now that
        // there is room for it.
        assert_eq!(next(&mut stream), ("suspend", "long".to_string()));
        assert_eq!(next(&mut stream), ("run", "cheaper".to_string()));
        state.task_status("e", one_task_done("cheaper"));
        assert_eq!(next(&mut stream), ("resume", "long".to_string()));
        assert!(!suspended(&state, "long"));
        // The medium query never preempts: it runs once the long task is done.
        assert!(
            stream.try_recv().is_err(),
            "the slot is the long task's again"
        );
        state.task_status("e", one_task_done("long"));
        assert_eq!(next(&mut stream), ("run", "medium".to_string()));
    }

    #[test]
    fn an_idle_executor_takes_a_suspended_task_and_the_first_copy_to_finish_wins() {
        let began = Instant::now();
        let (mut state, mut e) = with_executor(PolicyKind::Priority.build(0.0), 1, 1);
        let run_of = |stream: &mut ExecutorStream| match next_message(stream) {
            scheduler_message::Message::RunTask(run) => run.task.unwrap(),
            other => panic!("expected a task, got {other:?}"),
        };
        state.add_query(one_task_query("long", 1000.0));
        assert_eq!(run_of(&mut e).query_id, "long");
        state.add_query(one_task_query("cheap", 10.0));
        assert!(matches!(
            next_message(&mut e),
            scheduler_message::Message::SuspendTask(_)
        ));
        assert_eq!(run_of(&mut e).query_id, "cheap");
        // Executor "f" comes with a free slot and nothing is queued: it takes a copy of
        // the suspended task, not of the running one.
        let (sender, mut f) = tokio::sync::mpsc::unbounded_channel();
        let location = MapLocation {
            executor_id: "f".into(),
            flight_address: "f:1".into(),
        };
        state.register_executor(location, 1, 0, sender, &[]);
        let stealing_off = CopyRule {
            stealing: false,
            speculation: false,
            ..CopyRule::default()
        };
        state.set_copy_rule(stealing_off);
        state.start_copies(Instant::now());
        assert!(f.try_recv().is_err(), "off: no copy");
        state.set_copy_rule(CopyRule::default());
        state.start_copies(Instant::now());
        let copy = run_of(&mut f);
        assert_eq!(copy.query_id, "long");
        assert!(copy.attempt & COPY_ATTEMPT != 0);
        let running = &state.query("long").unwrap().status().stages[0].running;
        assert_eq!(running.len(), 2, "{running:?}");
        assert!(running.iter().any(|r| r.copy && r.executor_id == "f"));
        // Once is enough.
        state.start_copies(Instant::now());
        assert!(f.try_recv().is_err());
        // The copy finishes first: the suspended original is cancelled on "e".
        state.task_status("f", status_of(copy, succeeded()));
        let cancelled: Vec<_> = pending(&mut e)
            .into_iter()
            .filter_map(|m| match m {
                scheduler_message::Message::CancelTask(c) => c.task,
                _ => None,
            })
            .collect();
        assert_eq!(cancelled.len(), 1);
        assert_eq!(
            (cancelled[0].query_id.as_str(), cancelled[0].attempt),
            ("long", 0)
        );
        // It was cancelled after it wrote its output: "e" drops that output.
        state.task_status(
            "e",
            status_of(cancelled[0].clone(), failed("cancelled", "")),
        );
        let dropped: Vec<_> = pending(&mut e)
            .into_iter()
            .filter_map(|m| match m {
                scheduler_message::Message::DropMapOutput(d) => Some(d),
                _ => None,
            })
            .collect();
        assert_eq!(dropped.len(), 1);
        assert_eq!(
            (dropped[0].query_id.as_str(), dropped[0].stage_id),
            ("long", 0)
        );
        let long = state.query("long").unwrap();
        assert_eq!(long.state(), QueryState::Succeeded);
        assert_eq!(long.status().stages[0].copies_won, 1);
        assert!(state.timeline(began).iter().any(|s| s.copy));
    }

    #[test]
    fn queries_past_the_running_limit_wait_queued_and_start_in_policy_order() {
        let (mut state, mut stream) = with_executor(PolicyKind::Priority.build(0.0), 4, 0);
        state.set_max_running_queries(Some(1));
        let pushed = |stream: &mut ExecutorStream| match next_message(stream) {
            scheduler_message::Message::RunTask(run) => run.task.unwrap().query_id,
            other => panic!("expected a task, got {other:?}"),
        };
        state.add_query(one_task_query("first", 10.0));
        assert_eq!(pushed(&mut stream), "first");
        state.add_query(one_task_query("costly", 1000.0));
        state.add_query(one_task_query("cheap", 5.0));
        state.add_query(one_task_query("dropped", 1.0));
        // Free slots, but one query runs already: the others wait, queued.
        assert!(stream.try_recv().is_err());
        let state_of = |state: &SchedulerState, id: &str| state.query(id).unwrap().state();
        assert_eq!(state_of(&state, "costly"), QueryState::Queued);
        assert_eq!(state_of(&state, "cheap"), QueryState::Queued);
        // A queued query can be cancelled; it never starts.
        assert_eq!(state.cancel("dropped"), Some(true));
        assert_eq!(state_of(&state, "dropped"), QueryState::Cancelled);
        assert!(matches!(
            next_message(&mut stream),
            scheduler_message::Message::ReleaseShuffle(_)
        ));
        assert!(stream.try_recv().is_err());
        // When the running one ends, the cheapest waiting one starts (priority order).
        state.task_status("e", one_task_done("first"));
        assert_eq!(pushed(&mut stream), "cheap");
        assert_eq!(state_of(&state, "costly"), QueryState::Queued);
        state.task_status("e", one_task_done("cheap"));
        assert_eq!(pushed(&mut stream), "costly");
        state.task_status("e", one_task_done("costly"));
        assert_eq!(state_of(&state, "costly"), QueryState::Succeeded);
        assert!(stream.try_recv().is_err());
    }

    #[test]
    fn past_the_cap_on_held_results_final_tasks_keep_their_output() {
        let (mut state, mut stream) = with_executor(PolicyKind::Fifo.build(0.0), 4, 0);
        state.set_inline_result_limit(4096);
        state.set_held_results_cap(8);
        let limit_of = |stream: &mut ExecutorStream| match next_message(stream) {
            scheduler_message::Message::RunTask(run) => run.inline_result_limit,
            other => panic!("expected a task, got {other:?}"),
        };
        state.add_query(one_task_query("q", 1.0));
        assert_eq!(limit_of(&mut stream), 4096);
        let inline = task_status::Result::Succeeded(crate::proto::TaskSucceeded {
            partitions: Vec::new(),
            elapsed_micros: 1,
            inline_result: Some(bytes::Bytes::from_static(b"arrow ipc")),
            ..Default::default()
        });
        state.task_status(
            "e",
            TaskStatus {
                result: Some(inline),
                ..one_task_done("q")
            },
        );
        // 9 bytes held, over the cap of 8: the next result stays on its executor.
        state.add_query(one_task_query("r", 1.0));
        assert_eq!(limit_of(&mut stream), 0);
        // Once fetched, the held result is freed and results come back again.
        state.release_results("q", "fetched");
        assert!(matches!(
            next_message(&mut stream),
            scheduler_message::Message::ReleaseShuffle(_)
        ));
        state.add_query(one_task_query("s", 1.0));
        assert_eq!(limit_of(&mut stream), 4096);
    }
}
