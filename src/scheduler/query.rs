//! The query table's entries: a query's stages, their readiness counters and their tasks.
//!
//! Pure bookkeeping, no I/O: the scheduler feeds it task results and gets back the tasks
//! that became ready. A stage's counter holds its unfinished input stages; when a stage
//! completes, each consumer's counter drops, and a consumer at zero gets its input
//! locations resolved and all of its tasks queued.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use tracing::warn;

use crate::analyze::{self, AnalyzedStage, StageMetrics};
use crate::join_filters::{KeySummary, MAX_FILTER_VALUES};
use crate::proto::{
    FilterEffect, InStageFilterEffect, KeySummary as KeySummaryProto, MapOutputLocation,
    OperatorLine, OperatorMetrics, QueryState, QueryStatus as QueryStatusProto, RunningTask,
    StageInput, StageState, StageStatus,
};
use crate::shuffle::MapLocation;

mod copies;
mod restore;

pub use copies::{CopyCandidate, CopyReason, CopyRule};

/// Attempts a task gets when executors holding it are lost.
pub const MAX_TASK_ATTEMPTS: u32 = 3;

/// A task's place in its stage, as queued: (stage, partition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskRef {
    /// The stage.
    pub stage: u32,
    /// The partition (task index within the stage).
    pub partition: u32,
}

/// A task attempt running on an executor, as handed back to be cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningAttempt {
    /// The task.
    pub task: TaskRef,
    /// Its attempt that runs there.
    pub attempt: u32,
    /// Where it runs.
    pub executor: String,
}

/// One stage as the scheduler tracks it.
#[derive(Debug)]
pub struct Stage {
    /// The stage plan's bytes, sent with every task.
    pub plan: Bytes,
    /// Input stages.
    pub inputs: Vec<u32>,
    consumers: Vec<u32>,
    /// Unfinished input stages (the readiness counter).
    waiting_on: usize,
    state: StageState,
    tasks: Vec<Task>,
    done: usize,
    /// Its operators, top down, for status.
    operators: String,
    /// When its first task was pushed, and when its last finished.
    started_at: Option<SystemTime>,
    ended_at: Option<SystemTime>,
    /// Wall time its finished tasks took on their executors, summed.
    task_micros: u64,
    /// Complete, and every consumer is too: its output was let go (see
    /// [`Progress::released`]); it is computed again should a consumer have to rerun.
    released: bool,
    /// Map-output locations of the inputs, resolved when the stage became ready.
    resolved_inputs: Vec<StageInput>,
    /// The executor holding more of those map outputs than any other, if one does.
    home: Option<String>,
    /// Estimated cost of one task (the stage's cost over its tasks).
    task_cost: f64,
    /// Estimated rows one task writes (the stage's estimate over its tasks), replaced in
    /// its consumers' costs by the rows each task reports.
    task_output_rows: f64,
    /// Cost units each row read from input stages adds.
    cost_per_input_row: f64,
    /// Join filters its tasks get from build stages.
    filters: Vec<StageFilter>,
    /// Build stages of those filters that it does not read: it waits for them too.
    waits_for: Vec<u32>,
    /// Stages that wait for this one's key summaries without reading its output.
    waiters: Vec<u32>,
    /// The merged build-side keys of its filters, shipped with its tasks; worked out
    /// once, when it first becomes ready.
    shipped_filters: Option<Vec<KeySummaryProto>>,
    /// Those filters, for status.
    filters_text: String,
    /// What its finished tasks' filters removed, summed.
    filter_effect: FilterEffect,
    /// Its finished tasks whose scans got DataFusion's dynamic filters inside the stage,
    /// and what those did, summed.
    in_stage_filter_tasks: u32,
    in_stage_filters: InStageFilterEffect,
    /// How long its finished tasks' winning attempts ran, for the median a straggler
    /// is measured against.
    durations: Vec<Duration>,
    /// Copies of its tasks started (speculative attempts and stolen suspended tasks),
    /// and those that finished before the attempt they copied.
    copies_started: u32,
    copies_won: u32,
    /// Its operators, for an EXPLAIN ANALYZE query (empty otherwise).
    analyzed: Vec<OperatorLine>,
    /// What its tasks' operators measured, for an EXPLAIN ANALYZE query.
    measured: StageMetrics,
}

impl Stage {
    /// True when every task of the stage has its output.
    fn is_complete(&self) -> bool {
        self.done == self.tasks.len()
    }
}

/// One task of a stage.
#[derive(Debug, Clone, Default)]
struct Task {
    attempt: u32,
    running_on: Option<String>,
    /// Suspended on its executor for a far cheaper query's task.
    suspended: bool,
    /// Where its last attempt failed transiently: the next runs elsewhere if it can.
    failed_on: Option<String>,
    started_at: Option<Instant>,
    output: Option<MapLocation>,
    /// The output itself (Arrow IPC), when the executor sent it back with its status
    /// instead of keeping it: a small result of the final stage.
    inline_result: Option<Bytes>,
    /// The join keys its last successful attempt summarised, per filter.
    key_summaries: Vec<KeySummaryProto>,
    /// Rows its last successful attempt wrote.
    rows_out: u64,
    /// A second attempt running beside the first on another executor (see
    /// [`copies`]): whichever finishes first wins.
    copy: Option<TaskCopy>,
}

/// A second attempt of a task, started on another executor while the first runs on.
#[derive(Debug, Clone)]
struct TaskCopy {
    /// Its attempt number: the first's with [`COPY_ATTEMPT`] set, so it is never one a
    /// first attempt has.
    attempt: u32,
    executor: String,
    started_at: Instant,
}

impl TaskCopy {
    /// This copy of `task`, as handed back to be cancelled.
    fn into_running(self, task: TaskRef) -> RunningAttempt {
        RunningAttempt {
            task,
            attempt: self.attempt,
            executor: self.executor,
        }
    }
}

/// The bit that marks a copy's attempt number.
pub const COPY_ATTEMPT: u32 = 1 << 16;

impl Task {
    /// True while an attempt of it runs (its first, or a copy).
    fn is_running(&self) -> bool {
        self.running_on.is_some() || self.copy.is_some()
    }

    /// When attempt `attempt` of it was pushed, while that attempt runs (its first or
    /// its copy); None for any other attempt.
    fn running_since(&self, attempt: u32) -> Option<Instant> {
        match &self.copy {
            Some(copy) if copy.attempt == attempt => Some(copy.started_at),
            _ if self.attempt == attempt && self.running_on.is_some() => self.started_at,
            _ => None,
        }
    }

    /// True when its output is on `executor_id`.
    fn has_output_on(&self, executor_id: &str) -> bool {
        self.inline_result.is_none()
            && self
                .output
                .as_ref()
                .is_some_and(|o| o.executor_id == executor_id)
    }
}

/// One partition of a query's result, as a client's fetch reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum ResultPart {
    /// Held in an executor's shuffle store, fetched from there over Flight.
    Stored(MapLocation),
    /// Held by the scheduler: Arrow IPC the executor sent back with the task's status.
    Inline(Bytes),
}

/// A stage as submitted: its plan bytes, inputs and task count.
#[derive(Debug, Clone)]
pub struct StageSpec {
    /// Encoded stage plan.
    pub plan: Bytes,
    /// Input stage ids.
    pub inputs: Vec<u32>,
    /// Task count.
    pub tasks: usize,
    /// Estimated work of the whole stage, in cost units (see `planner::estimate_stages`).
    pub cost: f64,
    /// Estimated rows the whole stage writes.
    pub output_rows: f64,
    /// Cost units each row read from input stages adds (see `planner::StageEstimate`).
    pub cost_per_input_row: f64,
    /// Its operators, top down, for status.
    pub operators: String,
    /// Join filters its tasks apply, each with the build stage that summarises its keys.
    pub filters: Vec<StageFilter>,
    /// Its operators, when the query is an EXPLAIN ANALYZE (see [`crate::analyze`]):
    /// its tasks then report what they measured, and the query answers with that.
    pub analyzed: Vec<OperatorLine>,
}

/// A join filter a stage's tasks apply, and the stage whose tasks summarise its
/// build-side keys (see [`crate::join_filters`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageFilter {
    /// The filter id its plan names.
    pub id: u32,
    /// The build stage.
    pub build_stage: u32,
}

/// One query in the query table.
#[derive(Debug)]
pub struct Query {
    /// Query id.
    pub id: Arc<str>,
    /// Free text (SQL) shown in status.
    pub label: String,
    /// The user who submitted it: only they (and admins) see, fetch and cancel it.
    pub owner: Arc<str>,
    /// DataFusion settings its session changed, sent with each of its tasks.
    pub settings: HashMap<String, String>,
    state: QueryState,
    error: Option<String>,
    submitted_at: SystemTime,
    started_at: Option<SystemTime>,
    ended_at: Option<SystemTime>,
    stages: Vec<Stage>,
    /// Schema of the query result.
    pub schema: Option<SchemaRef>,
    /// Submission order, set by the scheduler.
    pub seq: u64,
    /// Submission instant, for the policy's aging.
    pub arrived: Instant,
    remaining_cost: f64,
    /// Why the result partitions were freed ("fetched", "expired"), once they were.
    pub results_released: Option<&'static str>,
    /// An EXPLAIN ANALYZE query's answer (Arrow IPC), held once its last stage is done;
    /// it stands for the final stage's rows.
    analysis: Option<Bytes>,
}

/// What a task result did to its query.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Tasks that became ready.
    pub ready: Vec<TaskRef>,
    /// True when this result ended the query.
    pub finished: bool,
    /// Stages whose output no task will read any more (every consumer finished): the
    /// executors may drop it now rather than when the query ends.
    pub released: Vec<u32>,
    /// Attempts that another attempt of the same task finished before: to cancel.
    pub outrun: Vec<RunningAttempt>,
    /// First attempts that a copy started later finished before: their executors were
    /// slower than the copy's, by at least how long these ran.
    pub lagged: Vec<Lagged>,
}

/// A first attempt outrun by a copy of it (see [`Progress::lagged`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Lagged {
    /// Where it ran.
    pub executor: String,
    /// Its task's stage.
    pub stage: u32,
    /// How long it had run when the copy finished.
    pub ran: Duration,
}

/// A stage-wide quantity split evenly over `tasks` (nothing for a stage without tasks).
fn per_task(total: f64, tasks: usize) -> f64 {
    if tasks == 0 {
        0.0
    } else {
        total / tasks as f64
    }
}

fn millis(t: Option<SystemTime>) -> u64 {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

impl Query {
    /// A queued query over the given stages (inputs before consumers, the last one final).
    pub fn new(id: Arc<str>, label: String, stages: Vec<StageSpec>, schema: SchemaRef) -> Self {
        let consumers_of = |sid: u32| {
            stages
                .iter()
                .enumerate()
                .filter(|(_, s)| s.inputs.contains(&sid))
                .map(|(i, _)| i as u32)
                .collect::<Vec<_>>()
        };
        let waits_of = |s: &StageSpec| {
            let mut waits: Vec<u32> = s
                .filters
                .iter()
                .map(|f| f.build_stage)
                .filter(|b| !s.inputs.contains(b))
                .collect();
            waits.sort_unstable();
            waits.dedup();
            waits
        };
        let waiters_of = |sid: u32| {
            stages
                .iter()
                .enumerate()
                .filter(|(_, s)| waits_of(s).contains(&sid))
                .map(|(i, _)| i as u32)
                .collect::<Vec<_>>()
        };
        let tracked = stages
            .iter()
            .enumerate()
            .map(|(i, s)| Stage {
                plan: s.plan.clone(),
                inputs: s.inputs.clone(),
                consumers: consumers_of(i as u32),
                waiting_on: s.inputs.len() + waits_of(s).len(),
                filters: s.filters.clone(),
                waits_for: waits_of(s),
                waiters: waiters_of(i as u32),
                shipped_filters: None,
                filters_text: String::new(),
                filter_effect: FilterEffect::default(),
                in_stage_filter_tasks: 0,
                in_stage_filters: InStageFilterEffect::default(),
                durations: Vec::new(),
                copies_started: 0,
                copies_won: 0,
                analyzed: s.analyzed.clone(),
                measured: StageMetrics::default(),
                state: StageState::Waiting,
                tasks: vec![Task::default(); s.tasks],
                done: 0,
                released: false,
                operators: s.operators.clone(),
                started_at: None,
                ended_at: None,
                task_micros: 0,
                resolved_inputs: Vec::new(),
                home: None,
                task_cost: per_task(s.cost, s.tasks),
                task_output_rows: per_task(s.output_rows, s.tasks),
                cost_per_input_row: s.cost_per_input_row,
            })
            .collect();
        let remaining_cost = stages.iter().map(|s| s.cost).sum();
        Self {
            id,
            label,
            owner: "local".into(),
            settings: HashMap::new(),
            state: QueryState::Queued,
            error: None,
            submitted_at: SystemTime::now(),
            started_at: None,
            ended_at: None,
            stages: tracked,
            schema: Some(schema),
            seq: 0,
            arrived: Instant::now(),
            remaining_cost,
            results_released: None,
            analysis: None,
        }
    }

    /// A query that failed before it had stages (bad SQL, a plan that cannot be cut).
    pub fn failed(id: Arc<str>, label: String, error: String) -> Self {
        let now = SystemTime::now();
        Self {
            id,
            label,
            owner: "local".into(),
            settings: HashMap::new(),
            state: QueryState::Failed,
            error: Some(error),
            submitted_at: now,
            started_at: None,
            ended_at: Some(now),
            stages: Vec::new(),
            schema: None,
            seq: 0,
            arrived: Instant::now(),
            remaining_cost: 0.0,
            results_released: None,
            analysis: None,
        }
    }

    /// A query the scheduler answered itself (see `scheduler::local`): one stage of one
    /// task, done, its result `ipc` (Arrow IPC) held like a result sent back inline.
    pub fn answered(
        id: Arc<str>,
        label: String,
        schema: SchemaRef,
        ipc: Bytes,
        operators: String,
    ) -> Self {
        let spec = StageSpec {
            plan: Bytes::new(),
            inputs: Vec::new(),
            tasks: 1,
            cost: 0.0,
            output_rows: 0.0,
            cost_per_input_row: 0.0,
            operators,
            filters: Vec::new(),
            analyzed: Vec::new(),
        };
        let mut query = Self::new(id, label, vec![spec], schema);
        let now = SystemTime::now();
        metrics::gauge!("baton_result_bytes_held").increment(ipc.len() as f64);
        let stage = &mut query.stages[0];
        stage.tasks[0].inline_result = Some(ipc);
        stage.done = 1;
        stage.state = StageState::Done;
        stage.started_at = Some(now);
        stage.ended_at = Some(now);
        query.started_at = Some(now);
        query.finish(QueryState::Succeeded, None);
        query
    }

    /// Time from submission to the end (or to now while it runs).
    pub fn elapsed(&self) -> std::time::Duration {
        self.ended_at
            .unwrap_or_else(SystemTime::now)
            .duration_since(self.submitted_at)
            .unwrap_or_default()
    }

    /// Estimated work left: the cost of every task that has not succeeded.
    pub fn remaining_cost(&self) -> f64 {
        self.remaining_cost.max(0.0)
    }

    /// The query's state.
    pub fn state(&self) -> QueryState {
        self.state
    }

    /// The failure cause, if it failed.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// True once Succeeded, Failed or Cancelled.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.state,
            QueryState::Succeeded | QueryState::Failed | QueryState::Cancelled
        )
    }

    /// The stage holding the result.
    pub fn final_stage(&self) -> u32 {
        self.stages.len().saturating_sub(1) as u32
    }

    /// Number of stages.
    pub fn stage_count(&self) -> usize {
        self.stages.len()
    }

    /// Where each task of the final stage left its output (when the query succeeded).
    pub fn result_parts(&self) -> Vec<ResultPart> {
        if let Some(analysis) = &self.analysis {
            return vec![ResultPart::Inline(analysis.clone())];
        }
        let Some(stage) = self.stages.last() else {
            return Vec::new();
        };
        let part = |t: &Task| match (&t.inline_result, &t.output) {
            (Some(ipc), _) => Some(ResultPart::Inline(ipc.clone())),
            (None, Some(location)) => Some(ResultPart::Stored(location.clone())),
            (None, None) => None,
        };
        stage.tasks.iter().filter_map(part).collect()
    }

    /// Bytes of result partitions the scheduler holds itself (see [`ResultPart::Inline`]).
    pub fn inline_result_bytes(&self) -> usize {
        let analysis = self.analysis.as_ref().map_or(0, Bytes::len);
        analysis
            + self.stages.last().map_or(0, |stage| {
                stage
                    .tasks
                    .iter()
                    .filter_map(|t| t.inline_result.as_ref())
                    .map(Bytes::len)
                    .sum()
            })
    }

    /// Lets go of the result partitions the scheduler holds itself (they were fetched,
    /// kept past their time to live, or are no result: the query failed, or is being
    /// forgotten), and takes them off `baton_result_bytes_held`; returns their bytes.
    pub fn drop_inline_results(&mut self) -> usize {
        let dropped = self.inline_result_bytes();
        metrics::gauge!("baton_result_bytes_held").decrement(dropped as f64);
        self.analysis = None;
        if let Some(stage) = self.stages.last_mut() {
            for task in stage.tasks.iter_mut().filter(|t| t.inline_result.is_some()) {
                task.inline_result = None;
                task.output = None;
            }
        }
        dropped
    }

    /// A stage.
    pub fn stage(&self, id: u32) -> &Stage {
        &self.stages[id as usize]
    }

    /// The resolved input locations of a ready stage.
    pub fn stage_inputs(&self, id: u32) -> &[StageInput] {
        &self.stages[id as usize].resolved_inputs
    }

    /// The merged build-side keys a ready stage's tasks are shipped for its join filters.
    pub fn stage_filters(&self, id: u32) -> &[KeySummaryProto] {
        self.stages[id as usize]
            .shipped_filters
            .as_deref()
            .unwrap_or_default()
    }

    /// The executor where a ready stage's tasks find most of their input: it holds more
    /// of the stage's map outputs than any other executor. A task placed there reads
    /// those from its own shuffle store instead of over Flight.
    pub fn home_executor(&self, id: u32) -> Option<&str> {
        self.stages[id as usize].home.as_deref()
    }

    /// The executor where `task`'s last attempt failed transiently, if it did.
    pub fn failed_on(&self, task: TaskRef) -> Option<&str> {
        self.task(task).failed_on.as_deref()
    }

    fn task(&self, task: TaskRef) -> &Task {
        &self.stages[task.stage as usize].tasks[task.partition as usize]
    }

    /// `task`, if the query has it (a report may name any).
    fn find_task(&self, task: TaskRef) -> Option<&Task> {
        self.stages
            .get(task.stage as usize)?
            .tasks
            .get(task.partition as usize)
    }

    /// The current attempt of a task.
    pub fn attempt(&self, task: TaskRef) -> u32 {
        self.task(task).attempt
    }

    /// True when `task` waits in the queue (not running, not done) and the query runs.
    pub fn is_dispatchable(&self, task: TaskRef) -> bool {
        let stage = &self.stages[task.stage as usize];
        let t = &stage.tasks[task.partition as usize];
        self.state == QueryState::Running
            && stage.state == StageState::Running
            && !t.is_running()
            && t.output.is_none()
    }

    /// Starts the query: stages without inputs become ready.
    pub fn start(&mut self) -> Progress {
        self.state = QueryState::Running;
        self.started_at = Some(SystemTime::now());
        let mut progress = Progress::default();
        for sid in 0..self.stages.len() as u32 {
            let stage = &self.stages[sid as usize];
            if stage.waiting_on == 0 && stage.state == StageState::Waiting {
                self.make_ready(sid, &mut progress);
            }
        }
        progress
    }

    fn make_ready(&mut self, sid: u32, progress: &mut Progress) {
        let resolved: Vec<StageInput> = self.stages[sid as usize]
            .inputs
            .iter()
            .map(|&input| StageInput {
                stage_id: input,
                locations: self.stages[input as usize]
                    .tasks
                    .iter()
                    .enumerate()
                    .filter_map(|(m, t)| {
                        t.output.as_ref().map(|loc| MapOutputLocation {
                            map_partition: m as u32,
                            executor_id: loc.executor_id.clone(),
                            flight_address: loc.flight_address.clone(),
                        })
                    })
                    .collect(),
            })
            .collect();
        if self.stages[sid as usize].shipped_filters.is_none() {
            let (shipped, text) = self.merged_filters(sid);
            metrics::counter!("baton_join_filters_shipped_total").increment(shipped.len() as u64);
            let stage = &mut self.stages[sid as usize];
            stage.shipped_filters = Some(shipped);
            stage.filters_text = text;
        }
        let stage = &mut self.stages[sid as usize];
        stage.home = home_of(&resolved);
        stage.resolved_inputs = resolved;
        stage.state = StageState::Running;
        if stage.tasks.is_empty() {
            self.complete_stage(sid, progress);
        } else {
            // Tasks that finished before an input was lost and computed again keep
            // their output.
            let pending = stage
                .tasks
                .iter()
                .enumerate()
                .filter(|(_, t)| t.output.is_none() && !t.is_running());
            progress.ready.extend(pending.map(|(p, _)| TaskRef {
                stage: sid,
                partition: p as u32,
            }));
        }
    }

    /// The build-side keys of stage `sid`'s filters, each merged over its build stage's
    /// tasks, and a line for status. A filter some build task sent no summary for (or
    /// an unreadable one) is left out: filtering nothing is always right.
    fn merged_filters(&self, sid: u32) -> (Vec<KeySummaryProto>, String) {
        let mut shipped = Vec::new();
        let mut text = Vec::new();
        for filter in &self.stages[sid as usize].filters {
            let mut merged: Option<KeySummary> = None;
            let mut whole = true;
            for task in &self.stages[filter.build_stage as usize].tasks {
                let summary = task
                    .key_summaries
                    .iter()
                    .find(|k| k.filter_id == filter.id)
                    .and_then(|k| KeySummary::from_proto(k).ok());
                match (summary, merged.as_mut()) {
                    (Some(summary), Some(merged)) => merged.merge(&summary, MAX_FILTER_VALUES),
                    (Some(summary), None) => merged = Some(summary),
                    (None, _) => whole = false,
                }
            }
            let Some(encoded) = merged.filter(|_| whole).and_then(|mut m| {
                m.finish_merging();
                Some((m.to_proto().ok()?, m.describe()))
            }) else {
                warn!(query_id = %self.id, stage = sid, filter = filter.id, "join filter left out: its build side did not summarise every task");
                continue;
            };
            text.push(format!(
                "filter {} from stage {}: {}",
                filter.id, filter.build_stage, encoded.1
            ));
            shipped.push(encoded.0);
        }
        (shipped, text.join("; "))
    }

    fn complete_stage(&mut self, sid: u32, progress: &mut Progress) {
        self.stages[sid as usize].state = StageState::Done;
        self.stages[sid as usize].ended_at = Some(SystemTime::now());
        if sid == self.final_stage() {
            if self.is_analyze()
                && let Err(e) = self.answer_analysis()
            {
                // Its rows are no answer: the client expects the plan's schema.
                self.finish(
                    QueryState::Failed,
                    Some(format!("EXPLAIN ANALYZE answer could not be written: {e}")),
                );
            } else {
                self.finish(QueryState::Succeeded, None);
            }
            progress.finished = true;
            return;
        }
        for input in self.stages[sid as usize].inputs.clone() {
            let read_by_all = self.stages[input as usize]
                .consumers
                .iter()
                .all(|&c| self.stages[c as usize].is_complete());
            let stage = &mut self.stages[input as usize];
            if read_by_all && !stage.released {
                stage.released = true;
                for t in &mut stage.tasks {
                    t.output = None;
                }
                progress.released.push(input);
            }
        }
        let stage = &self.stages[sid as usize];
        let next: Vec<u32> = stage
            .consumers
            .iter()
            .chain(&stage.waiters)
            .copied()
            .collect();
        for consumer in next {
            let stage = &mut self.stages[consumer as usize];
            // A consumer that finished before this stage lost output and ran again
            // does not wait for it.
            if stage.state != StageState::Waiting {
                continue;
            }
            stage.waiting_on -= 1;
            if stage.waiting_on == 0 {
                self.make_ready(consumer, progress);
            }
        }
    }

    /// True for an EXPLAIN ANALYZE query (its stages carry their operators).
    pub fn is_analyze(&self) -> bool {
        self.stages.iter().any(|s| !s.analyzed.is_empty())
    }

    /// Replaces the final stage's rows by what every stage measured (see
    /// [`crate::analyze`]).
    fn answer_analysis(&mut self) -> datafusion::error::Result<()> {
        let Some(schema) = self.schema.clone() else {
            return Ok(());
        };
        let stages: Vec<AnalyzedStage<'_>> = self
            .stages
            .iter()
            .enumerate()
            .map(|(id, s)| AnalyzedStage {
                id: id as u32,
                inputs: &s.inputs,
                tasks: s.tasks.len(),
                wall: match (s.started_at, s.ended_at) {
                    (Some(start), Some(end)) => end.duration_since(start).unwrap_or_default(),
                    _ => Duration::ZERO,
                },
                lines: &s.analyzed,
                metrics: &s.measured,
            })
            .collect();
        let ipc = analyze::render(&schema, &stages)?;
        self.drop_inline_results();
        metrics::gauge!("baton_result_bytes_held").increment(ipc.len() as f64);
        self.analysis = Some(ipc);
        Ok(())
    }

    fn finish(&mut self, state: QueryState, error: Option<String>) {
        self.state = state;
        self.error = error;
        self.ended_at = Some(SystemTime::now());
        // Build tasks' key summaries (a Bloom filter each can be 128 KiB) serve only
        // tasks still to run; a task rerun after this filters nothing, which is right.
        for task in self.stages.iter_mut().flat_map(|s| s.tasks.iter_mut()) {
            task.key_summaries = Vec::new();
        }
    }

    /// True once it was admitted and started (it may have ended since).
    pub fn started(&self) -> bool {
        self.started_at.is_some()
    }

    /// Adds the wall time a task of `stage` took on its executor to the stage's slot time.
    pub fn add_task_time(&mut self, stage: u32, micros: u64) {
        if let Some(stage) = self.stages.get_mut(stage as usize) {
            stage.task_micros += micros;
        }
    }

    /// Records that `task` (attempt `attempt`) was pushed to `executor`.
    pub fn task_started(&mut self, task: TaskRef, executor: &str) {
        let stage = &mut self.stages[task.stage as usize];
        stage.started_at.get_or_insert_with(SystemTime::now);
        let t = &mut stage.tasks[task.partition as usize];
        t.running_on = Some(executor.to_string());
        t.started_at = Some(Instant::now());
        t.suspended = false;
    }

    /// The scheduler suspended `task` (attempt `attempt`) on `executor`, or let it go
    /// on; other attempts, or other executors, are stale and change nothing.
    pub fn task_suspended(&mut self, task: TaskRef, attempt: u32, executor: &str, suspended: bool) {
        if !self.is_current(task, attempt) {
            return;
        }
        let t = &mut self.stages[task.stage as usize].tasks[task.partition as usize];
        if t.running_on.as_deref() == Some(executor) {
            t.suspended = suspended;
        }
    }

    /// Records what a finished task's plan reported besides its output: the build-side
    /// keys it summarised (for the join filters of later stages), what its own join
    /// filters removed, and what its operators measured (EXPLAIN ANALYZE). Stale attempts
    /// change nothing. Call before
    /// [`Self::task_succeeded`], which may make the stages waiting for the keys ready.
    pub fn task_reported(
        &mut self,
        task: TaskRef,
        attempt: u32,
        key_summaries: Vec<KeySummaryProto>,
        effect: Option<FilterEffect>,
        in_stage: Option<InStageFilterEffect>,
        operator_metrics: Vec<OperatorMetrics>,
    ) {
        if !self.is_current(task, attempt) {
            return;
        }
        let stage = &mut self.stages[task.stage as usize];
        stage.tasks[task.partition as usize].key_summaries = key_summaries;
        if !stage.analyzed.is_empty() {
            stage.measured.add(&stage.analyzed, operator_metrics);
        }
        if let Some(effect) = effect {
            stage.filter_effect.rows_in += effect.rows_in;
            stage.filter_effect.rows_removed += effect.rows_removed;
            stage.filter_effect.row_groups_pruned += effect.row_groups_pruned;
            metrics::counter!("baton_join_filter_rows_removed_total")
                .increment(effect.rows_removed);
            metrics::counter!("baton_join_filter_row_groups_pruned_total")
                .increment(effect.row_groups_pruned);
        }
        if let Some(in_stage) = in_stage {
            stage.in_stage_filter_tasks += 1;
            let sum = &mut stage.in_stage_filters;
            for kind in in_stage.kinds {
                if !sum.kinds.contains(&kind) {
                    sum.kinds.push(kind);
                }
            }
            sum.scans += in_stage.scans;
            sum.file_ranges_pruned += in_stage.file_ranges_pruned;
            sum.row_groups_pruned += in_stage.row_groups_pruned;
            sum.rows_pruned += in_stage.rows_pruned;
        }
    }

    /// Whether `attempt` of `task` is one the running query waits for (its first
    /// attempt or its copy).
    pub fn is_current(&self, task: TaskRef, attempt: u32) -> bool {
        self.state == QueryState::Running
            && self
                .find_task(task)
                .is_some_and(|t| t.running_since(attempt).is_some())
    }

    /// A task finished; its output (`rows_out` rows) is at `location`, or, for a task
    /// of the final stage, in `inline_result` (Arrow IPC sent back with its status).
    ///
    /// The rows are work its consumer stages will do: their estimated cost grows by them
    /// (plan statistics rarely know what a shuffle will carry), so a query's remaining
    /// cost follows what its stages actually read.
    pub fn task_succeeded(
        &mut self,
        task: TaskRef,
        attempt: u32,
        location: MapLocation,
        rows_out: u64,
        inline_result: Option<Bytes>,
    ) -> Progress {
        let mut progress = Progress::default();
        if !self.is_current(task, attempt) {
            return progress;
        }
        let is_final = task.stage == self.final_stage();
        let stage = &mut self.stages[task.stage as usize];
        let t = &mut stage.tasks[task.partition as usize];
        // The other attempt, if one runs, lost the race: it is cancelled.
        let won_by_copy = t.copy.as_ref().is_some_and(|c| c.attempt == attempt);
        if let Some(started_at) = t.running_since(attempt) {
            stage.durations.push(started_at.elapsed());
        }
        if let Some(executor) = t.running_on.take().filter(|_| won_by_copy) {
            if let Some(started_at) = t.started_at {
                progress.lagged.push(Lagged {
                    executor: executor.clone(),
                    stage: task.stage,
                    ran: started_at.elapsed(),
                });
            }
            progress.outrun.push(RunningAttempt {
                task,
                attempt: t.attempt,
                executor,
            });
        }
        if let Some(copy) = t.copy.take().filter(|_| !won_by_copy) {
            progress.outrun.push(copy.into_running(task));
        }
        if won_by_copy {
            stage.copies_won += 1;
            metrics::counter!("baton_task_copies_won_total").increment(1);
        }
        t.output = Some(location);
        t.rows_out = rows_out;
        // Only a result is read from the scheduler; other stages' consumers fetch theirs.
        t.inline_result = inline_result.filter(|_| is_final);
        if let Some(ipc) = &t.inline_result {
            metrics::gauge!("baton_result_bytes_held").increment(ipc.len() as f64);
        }
        stage.done += 1;
        self.remaining_cost -= stage.task_cost;
        // The consumers were costed for the rows this task was expected to write.
        let surplus_rows = rows_out as f64 - stage.task_output_rows;
        for consumer in self.stages[task.stage as usize].consumers.clone() {
            let consumer = &mut self.stages[consumer as usize];
            let before = consumer.task_cost;
            let correction = surplus_rows * consumer.cost_per_input_row;
            consumer.task_cost = (before + per_task(correction, consumer.tasks.len())).max(0.0);
            let unfinished = consumer.tasks.len() - consumer.done;
            self.remaining_cost += (consumer.task_cost - before) * unfinished as f64;
        }
        let stage = &self.stages[task.stage as usize];
        if stage.done == stage.tasks.len() {
            self.complete_stage(task.stage, &mut progress);
        }
        progress
    }

    /// A task failed. A `transient` failure (I/O, a peer gone) runs the task again, up
    /// to [`MAX_TASK_ATTEMPTS`]; otherwise, or past them, the query fails with the cause
    /// and the tasks still running elsewhere are returned to be cancelled. None when the
    /// result was stale.
    pub fn task_failed(
        &mut self,
        task: TaskRef,
        attempt: u32,
        error: &str,
        transient: bool,
    ) -> Option<(Progress, Vec<RunningAttempt>)> {
        if !self.is_current(task, attempt) {
            return None;
        }
        let t = &mut self.stages[task.stage as usize].tasks[task.partition as usize];
        let failed_on = match t.copy.take_if(|c| c.attempt == attempt) {
            Some(copy) => Some(copy.executor),
            None => t.running_on.take(),
        };
        // The other attempt goes on and decides (a failure that is the task's own shows
        // there too).
        if t.is_running() {
            warn!(query_id = %self.id, stage = task.stage, partition = task.partition, error, "one of two attempts failed; the other goes on");
            return Some((Progress::default(), Vec::new()));
        }
        if transient && t.attempt + 1 < MAX_TASK_ATTEMPTS {
            t.attempt += 1;
            t.failed_on = failed_on;
            warn!(query_id = %self.id, stage = task.stage, partition = task.partition, error, "transient task failure; running it again");
            let progress = Progress {
                ready: vec![task],
                ..Progress::default()
            };
            return Some((progress, Vec::new()));
        }
        let cause = if transient {
            format!("failed {MAX_TASK_ATTEMPTS} times, last with: {error}")
        } else {
            error.to_string()
        };
        self.finish(
            QueryState::Failed,
            Some(format!(
                "stage {} task {}: {cause}",
                task.stage, task.partition
            )),
        );
        let progress = Progress {
            finished: true,
            ..Progress::default()
        };
        Some((progress, self.take_running()))
    }

    /// Cancels the query; returns its running tasks and where they run. None when it had
    /// already ended.
    pub fn cancel(&mut self) -> Option<Vec<RunningAttempt>> {
        if self.is_finished() {
            return None;
        }
        self.finish(QueryState::Cancelled, Some("cancelled by user".into()));
        Some(self.take_running())
    }

    /// Stops the running tasks `stop` picks by stage and executor: each leaves its
    /// executor and moves on to its next attempt. Returns them with where they ran.
    fn stop_running(&mut self, stop: impl Fn(u32, &str) -> bool) -> Vec<RunningAttempt> {
        let mut stopped = Vec::new();
        for (sid, stage) in self.stages.iter_mut().enumerate() {
            for (p, t) in stage.tasks.iter_mut().enumerate() {
                let task = TaskRef {
                    stage: sid as u32,
                    partition: p as u32,
                };
                if let Some(copy) = t.copy.take_if(|c| stop(sid as u32, &c.executor)) {
                    stopped.push(copy.into_running(task));
                }
                let Some(on) = t.running_on.take_if(|on| stop(sid as u32, on)) else {
                    continue;
                };
                stopped.push(RunningAttempt {
                    task,
                    attempt: t.attempt,
                    executor: on,
                });
                t.attempt += 1;
            }
        }
        stopped
    }

    fn take_running(&mut self) -> Vec<RunningAttempt> {
        let mut running = Vec::new();
        for (sid, stage) in self.stages.iter_mut().enumerate() {
            for (p, t) in stage.tasks.iter_mut().enumerate() {
                let task = TaskRef {
                    stage: sid as u32,
                    partition: p as u32,
                };
                if let Some(copy) = t.copy.take() {
                    running.push(copy.into_running(task));
                }
                if let Some(executor) = t.running_on.take() {
                    running.push(RunningAttempt {
                        task,
                        attempt: t.attempt,
                        executor,
                    });
                }
            }
        }
        running
    }

    /// An executor is gone. Its running tasks are queued again (next attempt), and the
    /// shuffle output it held that is still needed is computed again (see
    /// [`Query::outputs_lost`]). Returns the tasks to queue and the tasks to cancel.
    pub fn executor_lost(&mut self, executor_id: &str) -> (Progress, Vec<RunningAttempt>) {
        if self.state != QueryState::Running {
            return (Progress::default(), Vec::new());
        }
        let mut reset: Vec<TaskRef> = self
            .stop_running(|_, on| on == executor_id)
            .into_iter()
            .map(|stopped| stopped.task)
            .filter(|task| !self.task(*task).is_running())
            .collect();
        reset.dedup();
        self.recover(&|_, _, t| t.has_output_on(executor_id), reset)
    }

    /// `executor_id` registered again (after the scheduler restarted, say) and holds
    /// the output of only the map tasks `held` names, as (stage, partition): what the
    /// query had there besides is computed again where still needed. Returns the tasks
    /// to queue and the tasks to cancel.
    pub fn keep_held(
        &mut self,
        executor_id: &str,
        held: &std::collections::HashSet<(u32, u32)>,
    ) -> (Progress, Vec<RunningAttempt>) {
        let missing = |stage: u32, partition: u32, t: &Task| {
            t.has_output_on(executor_id) && !held.contains(&(stage, partition))
        };
        match self.state {
            QueryState::Running => self.recover(&missing, Vec::new()),
            // Restored and not yet admitted: what is missing is dropped now, so that
            // [`Query::start`] queues it rather than hand out its lost location.
            QueryState::Queued => {
                self.drop_lost(&missing, &mut Vec::new());
                self.restore_readiness();
                (Progress::default(), Vec::new())
            }
            _ => (Progress::default(), Vec::new()),
        }
    }

    /// The executors the query's finished tasks left output on.
    pub fn output_holders(&self) -> std::collections::HashSet<String> {
        self.stages
            .iter()
            .flat_map(|s| &s.tasks)
            .filter(|t| t.inline_result.is_none())
            .filter_map(|t| t.output.as_ref().map(|o| o.executor_id.clone()))
            .collect()
    }

    /// A task could not read shuffle output from `executor_id`: that output is taken
    /// as lost, so it is computed again, and the task runs again once it is. Returns
    /// the tasks to queue and the tasks to cancel; nothing when the report was stale.
    pub fn outputs_lost(
        &mut self,
        task: TaskRef,
        attempt: u32,
        executor_id: &str,
    ) -> Option<(Progress, Vec<RunningAttempt>)> {
        if !self.is_current(task, attempt) {
            return None;
        }
        let t = &mut self.stages[task.stage as usize].tasks[task.partition as usize];
        t.running_on = None;
        t.attempt += 1;
        Some(self.recover(&|_, _, t| t.has_output_on(executor_id), vec![task]))
    }

    /// Drops the lost output (the map tasks `lost_output` picks by stage, partition and
    /// task) that is still needed, and sets every stage's readiness from what is left,
    /// so that lost output is computed again from its inputs (themselves again where
    /// they were lost too). `reset` are tasks that stopped running there and are to run
    /// again. A stage that loses an input stops its running tasks (returned to be
    /// cancelled) and waits for it again; the tasks it finished keep their output.
    fn recover(
        &mut self,
        lost_output: &dyn Fn(u32, u32, &Task) -> bool,
        mut reset: Vec<TaskRef>,
    ) -> (Progress, Vec<RunningAttempt>) {
        self.drop_lost(lost_output, &mut reset);
        let mut progress = Progress::default();
        let mut waiting = vec![false; self.stages.len()];
        for (sid, waits) in waiting.iter_mut().enumerate() {
            // A stage whose filters were worked out no longer waits for their build stages.
            let stage = &self.stages[sid];
            let filter_waits = match stage.shipped_filters {
                None => &stage.waits_for[..],
                Some(_) => &[],
            };
            let incomplete_inputs = stage
                .inputs
                .iter()
                .chain(filter_waits)
                .filter(|&&i| !self.stages[i as usize].is_complete())
                .count();
            let stage = &mut self.stages[sid];
            if stage.is_complete() {
                continue;
            }
            if incomplete_inputs > 0 {
                *waits = true;
                stage.state = StageState::Waiting;
                stage.waiting_on = incomplete_inputs;
            } else if stage.state != StageState::Waiting {
                stage.state = StageState::Running;
                progress
                    .ready
                    .extend(reset.iter().filter(|t| t.stage == sid as u32));
            }
        }
        let mut cancel = self.stop_running(|sid, _| waiting[sid as usize]);
        if let Some(task) = reset
            .iter()
            .find(|t| self.attempt(**t) >= MAX_TASK_ATTEMPTS)
        {
            let msg = format!(
                "stage {} task {} lost its output or executor {} times",
                task.stage, task.partition, MAX_TASK_ATTEMPTS
            );
            self.finish(QueryState::Failed, Some(msg));
            progress.ready.clear();
            progress.finished = true;
            cancel.extend(self.take_running());
        }
        (progress, cancel)
    }

    /// Forgets the output `lost_output` picks where a stage still needs it, and the
    /// output of released stages read by a stage that has to run again; every task
    /// whose output went joins `reset`.
    fn drop_lost(
        &mut self,
        lost_output: &dyn Fn(u32, u32, &Task) -> bool,
        reset: &mut Vec<TaskRef>,
    ) {
        loop {
            let lost = self.stages_losing(lost_output);
            for &sid in &lost {
                let stage = &mut self.stages[sid as usize];
                for (p, t) in stage.tasks.iter_mut().enumerate() {
                    if lost_output(sid, p as u32, t) {
                        t.output = None;
                        t.attempt += 1;
                        stage.done -= 1;
                        self.remaining_cost += stage.task_cost;
                        reset.push(TaskRef {
                            stage: sid,
                            partition: p as u32,
                        });
                    }
                }
                warn!(query_id = %self.id, stage = sid, "shuffle output lost; computing it again");
            }
            let revived = self.revive_released(reset);
            if lost.is_empty() && revived == 0 {
                break;
            }
        }
    }

    /// True when shuffle output on `executor_id` is still needed by this query: to go
    /// on running (or start: a query restored after a scheduler restart waits queued
    /// with its finished tasks' output), or as its result, not yet fetched.
    pub fn needs_output_on(&self, executor_id: &str) -> bool {
        match self.state {
            QueryState::Running | QueryState::Queued => !self
                .stages_losing(&|_, _, t| t.has_output_on(executor_id))
                .is_empty(),
            QueryState::Succeeded => {
                self.results_released.is_none()
                    && self
                        .stages
                        .last()
                        .is_some_and(|s| s.tasks.iter().any(|t| t.has_output_on(executor_id)))
            }
            _ => false,
        }
    }

    /// Released stages read by a stage that has to run again are computed again: all of
    /// their tasks join `reset`. Returns how many stages that was.
    fn revive_released(&mut self, reset: &mut Vec<TaskRef>) -> usize {
        let revive: Vec<u32> = (0..self.stages.len() as u32)
            .filter(|&sid| {
                let stage = &self.stages[sid as usize];
                stage.released
                    && stage
                        .consumers
                        .iter()
                        .any(|&c| !self.stages[c as usize].is_complete())
            })
            .collect();
        for &sid in &revive {
            let stage = &mut self.stages[sid as usize];
            stage.released = false;
            stage.done = 0;
            self.remaining_cost += stage.task_cost * stage.tasks.len() as f64;
            for (p, t) in stage.tasks.iter_mut().enumerate() {
                t.attempt += 1;
                reset.push(TaskRef {
                    stage: sid,
                    partition: p as u32,
                });
            }
            warn!(query_id = %self.id, stage = sid, "released shuffle output needed again; computing it again");
        }
        revive.len()
    }

    /// The stages with lost output (the map tasks `lost_output` picks) that is still
    /// needed: by a stage that has not finished, by a stage that loses output itself, or
    /// as the query result.
    fn stages_losing(&self, lost_output: &dyn Fn(u32, u32, &Task) -> bool) -> Vec<u32> {
        let holds = |sid: usize, stage: &Stage| {
            stage
                .tasks
                .iter()
                .enumerate()
                .any(|(p, t)| lost_output(sid as u32, p as u32, t))
        };
        let mut lost = vec![false; self.stages.len()];
        let mut changed = true;
        while changed {
            changed = false;
            for (sid, stage) in self.stages.iter().enumerate() {
                let needed = sid as u32 == self.final_stage()
                    || stage
                        .consumers
                        .iter()
                        .any(|&c| lost[c as usize] || !self.stages[c as usize].is_complete());
                if !lost[sid] && needed && holds(sid, stage) {
                    lost[sid] = true;
                    changed = true;
                }
            }
        }
        (0..self.stages.len() as u32)
            .filter(|&sid| lost[sid as usize])
            .collect()
    }

    /// The query's status for clients.
    pub fn status(&self) -> QueryStatusProto {
        QueryStatusProto {
            query_id: self.id.to_string(),
            state: self.state as i32,
            label: self.label.clone(),
            owner: self.owner.to_string(),
            error: self.error.clone().unwrap_or_default(),
            submitted_at_ms: millis(Some(self.submitted_at)),
            started_at_ms: millis(self.started_at),
            ended_at_ms: millis(self.ended_at),
            stages: self
                .stages
                .iter()
                .enumerate()
                .map(|(sid, s)| StageStatus {
                    stage_id: sid as u32,
                    state: s.state as i32,
                    tasks_total: s.tasks.len() as u32,
                    tasks_done: s.done as u32,
                    tasks_running: s.tasks.iter().filter(|t| t.is_running()).count() as u32,
                    input_stages: s.inputs.clone(),
                    running: s
                        .tasks
                        .iter()
                        .enumerate()
                        .flat_map(|(p, t)| {
                            let first = t.running_on.clone().map(|executor_id| RunningTask {
                                partition: p as u32,
                                executor_id,
                                suspended: t.suspended,
                                copy: false,
                            });
                            let copy = t.copy.as_ref().map(|c| RunningTask {
                                partition: p as u32,
                                executor_id: c.executor.clone(),
                                suspended: false,
                                copy: true,
                            });
                            first.into_iter().chain(copy)
                        })
                        .collect(),
                    copies_started: s.copies_started,
                    copies_won: s.copies_won,
                    started_at_ms: millis(s.started_at),
                    ended_at_ms: millis(s.ended_at),
                    task_micros: s.task_micros,
                    operators: s.operators.clone(),
                    filters: s.filters_text.clone(),
                    filter_rows_in: s.filter_effect.rows_in,
                    filter_rows_removed: s.filter_effect.rows_removed,
                    filter_row_groups_pruned: s.filter_effect.row_groups_pruned,
                    in_stage_filter_tasks: s.in_stage_filter_tasks,
                    in_stage_filters: (s.in_stage_filter_tasks > 0)
                        .then(|| s.in_stage_filters.clone()),
                })
                .collect(),
        }
    }
}

/// The executor holding more of `inputs`' map outputs than any other; None on a tie or
/// without inputs.
fn home_of(inputs: &[StageInput]) -> Option<String> {
    let mut held: HashMap<&str, usize> = HashMap::new();
    for location in inputs.iter().flat_map(|input| &input.locations) {
        *held.entry(location.executor_id.as_str()).or_default() += 1;
    }
    let mut counts: Vec<(&str, usize)> = held.into_iter().collect();
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    match counts.as_slice() {
        [(only, _)] => Some(only.to_string()),
        [(first, most), (_, next), ..] if most > next => Some(first.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::ROWS_PER_UNIT;
    use datafusion::arrow::datatypes::Schema;

    fn spec(inputs: &[u32], tasks: usize) -> StageSpec {
        StageSpec {
            cost: tasks as f64,
            output_rows: 0.0,
            cost_per_input_row: 1.0 / ROWS_PER_UNIT,
            plan: Bytes::new(),
            inputs: inputs.to_vec(),
            tasks,
            operators: String::new(),
            filters: Vec::new(),
            analyzed: Vec::new(),
        }
    }

    fn loc(e: &str) -> MapLocation {
        MapLocation {
            executor_id: e.into(),
            flight_address: format!("{e}:1"),
        }
    }

    /// Query "q" of `stages`, the last one its result.
    fn query_of(stages: Vec<StageSpec>) -> Query {
        Query::new("q".into(), String::new(), stages, Arc::new(Schema::empty()))
    }

    /// A join: stages 0 and 1 feed stage 2, which feeds the final stage 3.
    fn join_query() -> Query {
        query_of(vec![
            spec(&[], 2),
            spec(&[], 1),
            spec(&[0, 1], 2),
            spec(&[2], 1),
        ])
    }

    fn run(q: &mut Query, t: TaskRef, e: &str) -> Progress {
        q.task_started(t, e);
        q.task_succeeded(t, q.attempt(t), loc(e), 0, None)
    }

    fn task(stage: u32, partition: u32) -> TaskRef {
        TaskRef { stage, partition }
    }

    /// A started query of one stage of `tasks` tasks.
    pub(super) fn one_stage_query(tasks: usize) -> Query {
        let mut q = query_of(vec![spec(&[], tasks)]);
        q.start();
        q
    }

    /// Attempt `attempt` of `t` succeeded, with its output on "out".
    pub(super) fn succeed(q: &mut Query, t: TaskRef, attempt: u32) -> Progress {
        q.task_succeeded(t, attempt, loc("out"), 0, None)
    }

    fn attempt_on(task: TaskRef, attempt: u32, executor: &str) -> RunningAttempt {
        RunningAttempt {
            task,
            attempt,
            executor: executor.into(),
        }
    }

    #[test]
    fn a_probe_stage_with_a_join_filter_waits_for_its_build_stage_and_gets_its_keys() {
        use crate::join_filters::KeyColumn;
        use datafusion::common::ScalarValue;
        let summary = |min: i64, max: i64| {
            KeySummary {
                filter_id: 0,
                bloom: None,
                columns: vec![KeyColumn {
                    range: Some((ScalarValue::Int64(Some(min)), ScalarValue::Int64(Some(max)))),
                    values: Some(vec![
                        ScalarValue::Int64(Some(min)),
                        ScalarValue::Int64(Some(max)),
                    ]),
                }],
            }
            .to_proto()
            .unwrap()
        };
        // Stage 1 (the probe side) filters by stage 0's keys; stage 2 joins both.
        let mut probe = spec(&[], 1);
        probe.filters = vec![StageFilter {
            id: 0,
            build_stage: 0,
        }];
        let mut q = query_of(vec![spec(&[], 2), probe, spec(&[0, 1], 1)]);
        assert_eq!(
            q.start().ready,
            vec![task(0, 0), task(0, 1)],
            "the probe waits"
        );
        for (partition, (min, max)) in [(0, (5, 7)), (1, (2, 3))] {
            let t = task(0, partition);
            q.task_started(t, "a");
            q.task_reported(
                t,
                q.attempt(t),
                vec![summary(min, max)],
                None,
                None,
                Vec::new(),
            );
            let progress = q.task_succeeded(t, q.attempt(t), loc("a"), 1, None);
            let expected = if partition == 0 {
                vec![]
            } else {
                vec![task(1, 0)]
            };
            assert_eq!(progress.ready, expected);
        }
        let shipped = KeySummary::from_proto(&q.stage_filters(1)[0]).unwrap();
        let column = &shipped.columns[0];
        assert_eq!(
            column.range,
            Some((ScalarValue::Int64(Some(2)), ScalarValue::Int64(Some(7))))
        );
        assert_eq!(column.values.as_ref().unwrap().len(), 4);
        assert!(
            q.status().stages[1]
                .filters
                .contains("filter 0 from stage 0")
        );
        // The join stage still waits for the probe stage, and nothing else is shipped.
        let t = task(1, 0);
        q.task_started(t, "b");
        q.task_reported(
            t,
            0,
            Vec::new(),
            Some(FilterEffect {
                rows_in: 10,
                rows_removed: 6,
                row_groups_pruned: 1,
            }),
            Some(InStageFilterEffect {
                kinds: vec!["topk".into()],
                scans: 1,
                file_ranges_pruned: 2,
                row_groups_pruned: 3,
                rows_pruned: 4,
            }),
            Vec::new(),
        );
        assert_eq!(run_reported(&mut q, t).ready, vec![task(2, 0)]);
        assert!(q.stage_filters(2).is_empty());
        let stage = &q.status().stages[1];
        assert_eq!(stage.filter_rows_removed, 6);
        // What DataFusion's filters did inside the stage is shown beside.
        assert_eq!(stage.in_stage_filter_tasks, 1);
        let in_stage = stage.in_stage_filters.as_ref().unwrap();
        assert_eq!(
            (in_stage.kinds.as_slice(), in_stage.row_groups_pruned),
            (&["topk".to_string()][..], 3)
        );
        assert!(q.status().stages[0].in_stage_filters.is_none());

        // Without the filter both sides start at once.
        let mut q = query_of(vec![spec(&[], 2), spec(&[], 1), spec(&[0, 1], 1)]);
        assert_eq!(q.start().ready, vec![task(0, 0), task(0, 1), task(1, 0)]);
    }

    /// Finishes a task that was started and reported on already.
    fn run_reported(q: &mut Query, t: TaskRef) -> Progress {
        q.task_succeeded(t, q.attempt(t), loc("b"), 0, None)
    }

    #[test]
    fn a_stage_is_ready_only_when_all_its_inputs_are_done() {
        let mut q = join_query();
        let start = q.start();
        assert_eq!(start.ready, vec![task(0, 0), task(0, 1), task(1, 0)]);
        assert!(run(&mut q, task(0, 0), "a").ready.is_empty());
        assert!(run(&mut q, task(0, 1), "b").ready.is_empty());
        let p = run(&mut q, task(1, 0), "a");
        assert_eq!(p.ready, vec![task(2, 0), task(2, 1)]);
        let inputs = q.stage_inputs(2);
        assert_eq!(inputs.len(), 2);
        assert_eq!(inputs[0].locations.len(), 2);
        assert_eq!(inputs[0].locations[1].executor_id, "b");
        // "a" holds two of stage 2's three map outputs.
        assert_eq!(q.home_executor(2), Some("a"));
        run(&mut q, task(2, 0), "a");
        assert_eq!(run(&mut q, task(2, 1), "b").ready, vec![task(3, 0)]);
        // One each: no executor is home to the final stage.
        assert_eq!(q.home_executor(3), None);
        let last = run(&mut q, task(3, 0), "a");
        assert!(last.finished);
        assert_eq!(q.state(), QueryState::Succeeded);
        assert_eq!(q.result_parts(), vec![ResultPart::Stored(loc("a"))]);
    }

    #[test]
    fn rows_a_stage_writes_become_cost_of_the_stages_reading_them() {
        let mut q = join_query();
        q.start();
        // Stage costs are their task counts: 2 + 1 + 2 + 1.
        assert_eq!(q.remaining_cost(), 6.0);
        q.task_started(task(0, 0), "a");
        q.task_succeeded(task(0, 0), 0, loc("a"), 40_000, None);
        // One task of stage 0 done (-1); stage 2 will read 40k more rows (+4).
        assert_eq!(q.remaining_cost(), 9.0);
        run(&mut q, task(0, 1), "a");
        run(&mut q, task(1, 0), "a");
        // Each of stage 2's two tasks carries half of the added cost: 1 + 2.
        run(&mut q, task(2, 0), "a");
        // Left: stage 2's other task and stage 3.
        assert_eq!(q.remaining_cost(), 3.0 + 1.0);
    }

    #[test]
    fn a_consumer_estimate_follows_the_rows_its_inputs_actually_wrote() {
        // Stage 0 is expected to write 20k rows; stage 1 passes each through 3 operators.
        let per_row = 3.0 / ROWS_PER_UNIT;
        let producer = StageSpec {
            output_rows: 20_000.0,
            ..spec(&[], 2)
        };
        let consumer = StageSpec {
            cost: 1.0 + 20_000.0 * per_row,
            cost_per_input_row: per_row,
            ..spec(&[0], 1)
        };
        let mut q = query_of(vec![producer, consumer]);
        q.start();
        assert_eq!(q.remaining_cost(), 2.0 + 7.0);
        // Nothing instead of the expected 10k rows: 3 units fewer for the consumer.
        q.task_started(task(0, 0), "a");
        q.task_succeeded(task(0, 0), 0, loc("a"), 0, None);
        assert!(
            (q.remaining_cost() - (1.0 + 4.0)).abs() < 1e-9,
            "{}",
            q.remaining_cost()
        );
        // 30k instead of 10k: 6 more.
        q.task_started(task(0, 1), "a");
        q.task_succeeded(task(0, 1), 0, loc("a"), 30_000, None);
        assert!(
            (q.remaining_cost() - 10.0).abs() < 1e-9,
            "{}",
            q.remaining_cost()
        );
    }

    #[test]
    fn stale_and_duplicate_results_are_ignored() {
        let mut q = join_query();
        q.start();
        q.task_started(task(0, 0), "a");
        assert_eq!(
            q.task_succeeded(task(0, 0), 7, loc("a"), 0, None),
            Progress::default()
        );
        assert!(q.task_failed(task(0, 0), 7, "boom", false).is_none());
        run(&mut q, task(0, 0), "a");
        assert_eq!(
            q.task_succeeded(task(0, 0), 0, loc("a"), 0, None),
            Progress::default()
        );
        assert_eq!(q.status().stages[0].tasks_done, 1);
    }

    #[test]
    fn a_failed_task_fails_the_query_and_names_the_tasks_to_cancel() {
        let mut q = join_query();
        q.start();
        q.task_started(task(0, 0), "a");
        q.task_started(task(1, 0), "b");
        let (p, cancel) = q
            .task_failed(task(0, 0), 0, "division by zero", false)
            .unwrap();
        assert!(p.finished);
        assert_eq!(cancel, vec![attempt_on(task(1, 0), 0, "b")]);
        assert_eq!(q.state(), QueryState::Failed);
        assert!(q.error().unwrap().contains("division by zero"));
    }

    #[test]
    fn a_transient_failure_runs_the_task_again_until_its_attempts_run_out() {
        let mut q = join_query();
        q.start();
        q.task_started(task(1, 0), "b");
        for attempt in 0..MAX_TASK_ATTEMPTS - 1 {
            q.task_started(task(0, 0), "a");
            let (p, cancel) = q
                .task_failed(task(0, 0), attempt, "connection reset", true)
                .unwrap();
            assert_eq!(p.ready, vec![task(0, 0)]);
            assert!(!p.finished && cancel.is_empty());
            assert_eq!(q.state(), QueryState::Running);
            assert_eq!(q.failed_on(task(0, 0)), Some("a"));
        }
        q.task_started(task(0, 0), "a");
        let (p, cancel) = q
            .task_failed(task(0, 0), MAX_TASK_ATTEMPTS - 1, "connection reset", true)
            .unwrap();
        assert!(p.finished && p.ready.is_empty());
        assert_eq!(cancel, vec![attempt_on(task(1, 0), 0, "b")]);
        assert_eq!(
            q.error(),
            Some("stage 0 task 0: failed 3 times, last with: connection reset")
        );
    }

    #[test]
    fn status_shows_the_tasks_their_executor_suspended() {
        let mut q = join_query();
        q.start();
        q.task_started(task(0, 0), "a");
        q.task_started(task(0, 1), "b");
        let suspended = |q: &Query| -> Vec<(u32, bool)> {
            q.status().stages[0]
                .running
                .iter()
                .map(|t| (t.partition, t.suspended))
                .collect()
        };
        assert_eq!(suspended(&q), vec![(0, false), (1, false)]);
        q.task_suspended(task(0, 0), 0, "a", true);
        // Another attempt's report, or another executor's, is stale.
        q.task_suspended(task(0, 1), 1, "b", true);
        q.task_suspended(task(0, 1), 0, "a", true);
        assert_eq!(suspended(&q), vec![(0, true), (1, false)]);
        q.task_suspended(task(0, 0), 0, "a", false);
        assert_eq!(suspended(&q), vec![(0, false), (1, false)]);
        // A new attempt starts out running.
        q.task_suspended(task(0, 0), 0, "a", true);
        q.executor_lost("a");
        q.task_started(task(0, 0), "b");
        assert_eq!(suspended(&q), vec![(0, false), (1, false)]);
    }

    /// `q` as a restarted scheduler gets it back from its records.
    fn restored(q: &Query) -> Query {
        Query::restore(q.to_stored(), q.stored_tasks()).unwrap()
    }

    #[test]
    fn an_explain_analyze_answers_with_what_its_stages_measured() {
        use datafusion::arrow::array::AsArray;
        use datafusion::arrow::datatypes::{DataType, Field};
        let lines = |name: &str| {
            vec![OperatorLine {
                depth: 0,
                name: name.into(),
                text: name.into(),
            }]
        };
        let stages = vec![
            StageSpec {
                analyzed: lines("ScanExec"),
                ..spec(&[], 2)
            },
            StageSpec {
                analyzed: lines("MergeExec"),
                ..spec(&[0], 1)
            },
        ];
        let schema = Arc::new(Schema::new(vec![
            Field::new("plan_type", DataType::Utf8, false),
            Field::new("plan", DataType::Utf8, false),
        ]));
        let mut q = Query::new("q".into(), String::new(), stages, schema);
        q.start();
        for t in [task(0, 0), task(0, 1), task(1, 0)] {
            q.task_started(t, "a");
            let reported = vec![OperatorMetrics {
                operator: if t.stage == 0 {
                    "ScanExec"
                } else {
                    "MergeExec"
                }
                .into(),
                metrics: Vec::new(),
            }];
            q.task_reported(t, q.attempt(t), Vec::new(), None, None, reported);
            // The final task's rows, sent back inline, are not the answer.
            let rows = (t.stage == 1).then(|| Bytes::from_static(b"rows"));
            q.task_succeeded(t, q.attempt(t), loc("a"), 0, rows);
        }
        assert_eq!(q.state(), QueryState::Succeeded);
        let parts = q.result_parts();
        let [ResultPart::Inline(ipc)] = parts.as_slice() else {
            panic!("one held part expected");
        };
        let batch = datafusion::arrow::ipc::reader::StreamReader::try_new(&ipc[..], None)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let kinds: Vec<&str> = batch
            .column(0)
            .as_string::<i32>()
            .iter()
            .flatten()
            .collect();
        assert_eq!(kinds, ["Stage 0", "Stage 1"]);
        let plan = batch.column(1).as_string::<i32>().value(0);
        assert!(
            plan.starts_with("2 tasks (2 reported)") && plan.contains("ScanExec"),
            "{plan}"
        );
        assert_eq!(q.inline_result_bytes(), ipc.len());
        // What was measured is not stored: after a restart the answer is gone.
        assert_eq!(restored(&q).results_released, Some("released"));
    }

    fn sorted(mut tasks: Vec<TaskRef>) -> Vec<TaskRef> {
        tasks.sort_by_key(|t| (t.stage, t.partition));
        tasks
    }

    #[test]
    fn a_restored_query_runs_only_what_had_not_finished() {
        let mut q = join_query();
        q.owner = "alice".into();
        q.settings
            .insert("datafusion.execution.batch_size".into(), "100".into());
        q.start();
        run(&mut q, task(0, 0), "a");
        run(&mut q, task(1, 0), "b");
        q.task_started(task(0, 1), "a");

        let mut back = restored(&q);
        assert_eq!(back.state(), QueryState::Queued);
        assert_eq!((&*back.owner, back.settings.len()), ("alice", 1));
        // Queued until admitted, it still needs what its executors hold: an executor
        // registering then must not be told to drop it.
        assert!(back.needs_output_on("a") && back.needs_output_on("b"));
        assert!(!back.needs_output_on("c"));
        // Stage 1 is done; stage 0 runs its unfinished task; stage 2 waits for it.
        assert_eq!(back.start().ready, vec![task(0, 1)]);
        let p = run(&mut back, task(0, 1), "c");
        assert_eq!(sorted(p.ready), vec![task(2, 0), task(2, 1)]);
        assert_eq!(input_holders(&back, 2), vec!["a", "c", "b"]);
    }

    /// The executors stage `stage`'s tasks read their inputs from, in input order.
    fn input_holders(q: &Query, stage: u32) -> Vec<&str> {
        q.stage_inputs(stage)
            .iter()
            .flat_map(|i| &i.locations)
            .map(|l| l.executor_id.as_str())
            .collect()
    }

    /// The join query restored after stage 0 finished on "a" and stage 1 on "b".
    fn restored_with_stage_0_on_a() -> Query {
        let mut q = join_query();
        q.start();
        run(&mut q, task(0, 0), "a");
        run(&mut q, task(0, 1), "a");
        run(&mut q, task(1, 0), "b");
        restored(&q)
    }

    #[test]
    fn a_restored_query_recomputes_what_its_executors_no_longer_hold() {
        let mut back = restored_with_stage_0_on_a();
        assert_eq!(sorted(back.start().ready), vec![task(2, 0), task(2, 1)]);
        assert_eq!(back.output_holders().len(), 2);
        // "a" came back holding stage 0's first output only: the second runs again
        // and stage 2 waits for it.
        let held = std::collections::HashSet::from([(0, 0)]);
        let (p, cancel) = back.keep_held("a", &held);
        assert!(cancel.is_empty());
        assert_eq!(p.ready, vec![task(0, 1)]);
        assert_eq!(back.status().stages[2].state, StageState::Waiting as i32);
        // "b" came back with all it had: nothing changes.
        let held = std::collections::HashSet::from([(1, 0)]);
        assert_eq!(back.keep_held("b", &held).0, Progress::default());
    }

    #[test]
    fn a_restored_query_still_queued_recomputes_what_its_executors_no_longer_hold() {
        let mut back = restored_with_stage_0_on_a();
        assert_eq!(back.state(), QueryState::Queued);
        // "a" comes back, before the query is admitted, holding stage 0's first output
        // only (the second was let go before the crash): the query must not start on
        // its old location.
        let held = std::collections::HashSet::from([(0, 0)]);
        assert_eq!(
            back.keep_held("a", &held),
            (Progress::default(), Vec::new())
        );
        assert_eq!(back.start().ready, vec![task(0, 1)]);
        assert_eq!(back.status().stages[2].state, StageState::Waiting as i32);
        let p = run(&mut back, task(0, 1), "c");
        assert_eq!(sorted(p.ready), vec![task(2, 0), task(2, 1)]);
        assert_eq!(input_holders(&back, 2), vec!["a", "c", "b"]);
    }

    #[test]
    fn a_query_restored_with_every_task_done_has_succeeded_and_keeps_its_result() {
        let mut q = query_of(vec![spec(&[], 1), spec(&[0], 1)]);
        q.start();
        run(&mut q, task(0, 0), "a");
        q.task_started(task(1, 0), "a");
        let ipc = Bytes::from_static(b"result");
        q.task_succeeded(task(1, 0), 0, loc("a"), 3, Some(ipc.clone()));
        assert!(q.is_finished());
        // Its end was written too: it comes back ended, its result held.
        let back = restored(&q);
        assert_eq!(back.state(), QueryState::Succeeded);
        assert_eq!(back.result_parts(), vec![ResultPart::Inline(ipc.clone())]);
        // Only its tasks were written: it ends as soon as it is taken back.
        let mut stored = q.to_stored();
        stored.end_state = QueryState::Unspecified as i32;
        let back = Query::restore(stored, q.stored_tasks()).unwrap();
        assert_eq!(back.state(), QueryState::Succeeded);
        assert_eq!(back.result_parts(), vec![ResultPart::Inline(ipc)]);
    }

    #[test]
    fn a_stored_query_that_does_not_hang_together_is_refused() {
        let mut stored = join_query().to_stored();
        stored.stages[0].inputs = vec![3];
        assert!(Query::restore(stored, Vec::new()).is_err());
        let mut stored = join_query().to_stored();
        stored.schema = vec![1, 2, 3];
        assert!(Query::restore(stored, Vec::new()).is_err());
        // A task record beyond the stage's tasks is skipped.
        let q = join_query();
        let mut stray = crate::proto::StoredTask {
            query_id: "q".into(),
            stage_id: 9,
            executor_id: "a".into(),
            ..Default::default()
        };
        let back = Query::restore(q.to_stored(), vec![stray.clone()]).unwrap();
        assert!(back.output_holders().is_empty());
        stray.stage_id = 0;
        stray.partition = 7;
        let back = Query::restore(q.to_stored(), vec![stray]).unwrap();
        assert!(back.output_holders().is_empty());
    }

    #[test]
    fn a_stage_is_released_once_every_consumer_has_finished() {
        // Stage 0 feeds stages 1 and 2, which feed the final stage 3.
        let mut q = query_of(vec![
            spec(&[], 1),
            spec(&[0], 1),
            spec(&[0], 1),
            spec(&[1, 2], 1),
        ]);
        q.start();
        assert!(run(&mut q, task(0, 0), "a").released.is_empty());
        // Stage 2 still reads stage 0.
        assert!(run(&mut q, task(1, 0), "a").released.is_empty());
        assert_eq!(run(&mut q, task(2, 0), "a").released, vec![0]);
        // The query's end lets go of the rest; the result stays until it is fetched.
        assert!(run(&mut q, task(3, 0), "a").finished);
        assert_eq!(q.result_parts(), vec![ResultPart::Stored(loc("a"))]);
    }

    #[test]
    fn a_released_stage_is_computed_again_when_a_consumer_must_rerun() {
        let mut q = join_query();
        q.start();
        run(&mut q, task(0, 0), "a");
        run(&mut q, task(0, 1), "a");
        run(&mut q, task(1, 0), "a");
        run(&mut q, task(2, 0), "b");
        assert_eq!(run(&mut q, task(2, 1), "c").released, vec![0, 1]);
        q.task_started(task(3, 0), "a");
        // Stage 2's output on "b" is lost; stages 0 and 1 were let go, so they run
        // again first, and the final task waits for stage 2 again.
        let (p, cancel) = q.executor_lost("b");
        assert_eq!(cancel, vec![attempt_on(task(3, 0), 0, "a")]);
        let mut ready = p.ready.clone();
        ready.sort_by_key(|t| (t.stage, t.partition));
        assert_eq!(ready, vec![task(0, 0), task(0, 1), task(1, 0)]);
        assert_eq!(q.attempt(task(0, 0)), 1);
        run(&mut q, task(0, 0), "a");
        run(&mut q, task(0, 1), "c");
        let p = run(&mut q, task(1, 0), "a");
        // Only stage 2's lost task runs again; its inputs resolve to the new outputs.
        assert_eq!(p.ready, vec![task(2, 0)]);
        let inputs = q.stage_inputs(2).to_vec();
        assert_eq!(inputs[0].locations[1].executor_id, "c");
        assert_eq!(run(&mut q, task(2, 0), "c").released, vec![0, 1]);
        let p = run(&mut q, task(3, 0), "a");
        assert!(p.finished);
        assert_eq!(q.state(), QueryState::Succeeded);
    }

    #[test]
    fn losing_an_executor_requeues_its_running_tasks() {
        let mut q = join_query();
        q.start();
        q.task_started(task(0, 0), "a");
        q.task_started(task(0, 1), "b");
        let (p, cancel) = q.executor_lost("a");
        assert_eq!(p.ready, vec![task(0, 0)]);
        assert!(cancel.is_empty());
        assert_eq!(q.attempt(task(0, 0)), 1);
        assert!(q.is_dispatchable(task(0, 0)));
    }

    #[test]
    fn a_result_sent_back_inline_is_not_computed_again_when_its_executor_is_lost() {
        // Stage 0 (two tasks) feeds the final stage 1 (two tasks).
        let mut q = query_of(vec![spec(&[], 2), spec(&[0], 2)]);
        q.start();
        let ipc = Bytes::from_static(b"arrow ipc");
        // Inline output of a stage that is not the result is ignored: it stays on "a".
        q.task_started(task(0, 0), "a");
        q.task_succeeded(task(0, 0), 0, loc("a"), 0, Some(ipc.clone()));
        run(&mut q, task(0, 1), "b");
        q.task_started(task(1, 0), "a");
        q.task_succeeded(task(1, 0), 0, loc("a"), 1, Some(ipc.clone()));
        q.task_started(task(1, 1), "b");
        // Losing "a" reruns stage 0's task there (stage 1 task 1 still needs it) but
        // not the final task whose output the scheduler holds.
        let (p, cancel) = q.executor_lost("a");
        assert_eq!(p.ready, vec![task(0, 0)]);
        assert_eq!(cancel, vec![attempt_on(task(1, 1), 0, "b")]);
        run(&mut q, task(0, 0), "b");
        let p = run(&mut q, task(1, 1), "b");
        assert!(p.finished);
        assert_eq!(
            q.result_parts(),
            vec![ResultPart::Inline(ipc), ResultPart::Stored(loc("b"))]
        );
        assert_eq!(q.inline_result_bytes(), 9);
        q.drop_inline_results();
        assert_eq!(q.result_parts(), vec![ResultPart::Stored(loc("b"))]);
        assert_eq!(q.inline_result_bytes(), 0);
    }

    #[test]
    fn lost_output_is_computed_again_while_its_consumers_wait() {
        let mut q = join_query();
        q.start();
        run(&mut q, task(0, 0), "a");
        run(&mut q, task(0, 1), "b");
        assert_eq!(
            run(&mut q, task(1, 0), "a").ready,
            vec![task(2, 0), task(2, 1)]
        );
        q.task_started(task(2, 0), "b");
        q.task_started(task(2, 1), "b");
        let before = q.remaining_cost();
        let (p, cancel) = q.executor_lost("a");
        // Stage 2 read from "a": the output there runs again, and stage 2 stops.
        assert!(!p.finished);
        assert_eq!(p.ready, vec![task(0, 0), task(1, 0)]);
        assert_eq!(
            cancel,
            vec![
                attempt_on(task(2, 0), 0, "b"),
                attempt_on(task(2, 1), 0, "b")
            ]
        );
        assert!(!q.is_dispatchable(task(2, 0)));
        assert_eq!(q.remaining_cost(), before + 2.0);
        // Stale reports of the cancelled attempts change nothing.
        assert!(
            q.task_succeeded(task(2, 0), 0, loc("b"), 0, None)
                .ready
                .is_empty()
        );
        assert!(run(&mut q, task(0, 0), "b").ready.is_empty());
        assert_eq!(
            run(&mut q, task(1, 0), "b").ready,
            vec![task(2, 0), task(2, 1)]
        );
        assert!(input_holders(&q, 2).iter().all(|&h| h == "b"));
        run(&mut q, task(2, 0), "b");
        assert_eq!(run(&mut q, task(2, 1), "b").ready, vec![task(3, 0)]);
        assert!(run(&mut q, task(3, 0), "b").finished);
        assert_eq!(q.state(), QueryState::Succeeded);
    }

    #[test]
    fn output_lost_deep_in_the_dag_reruns_what_it_came_from_and_keeps_the_rest_of_its_stage() {
        let mut q = join_query();
        q.start();
        run(&mut q, task(0, 0), "a");
        run(&mut q, task(0, 1), "b");
        run(&mut q, task(1, 0), "a");
        run(&mut q, task(2, 0), "a");
        assert_eq!(run(&mut q, task(2, 1), "b").ready, vec![task(3, 0)]);
        q.task_started(task(3, 0), "b");
        // Stage 3 needs stage 2's output on "a", whose rerun needs stages 0 and 1,
        // released when stage 2 finished: all of their tasks run again.
        let (p, cancel) = q.executor_lost("a");
        assert_eq!(p.ready, vec![task(0, 0), task(0, 1), task(1, 0)]);
        assert_eq!(cancel, vec![attempt_on(task(3, 0), 0, "b")]);
        run(&mut q, task(0, 0), "b");
        run(&mut q, task(0, 1), "b");
        // Task 2.1 kept its output on "b": only 2.0 runs again.
        assert_eq!(run(&mut q, task(1, 0), "b").ready, vec![task(2, 0)]);
        assert_eq!(run(&mut q, task(2, 0), "b").ready, vec![task(3, 0)]);
        assert!(run(&mut q, task(3, 0), "b").finished);
        assert_eq!(q.result_parts(), vec![ResultPart::Stored(loc("b"))]);
    }

    #[test]
    fn a_task_that_cannot_read_its_input_runs_again_after_it_is_recomputed() {
        let mut q = join_query();
        q.start();
        run(&mut q, task(0, 0), "a");
        run(&mut q, task(0, 1), "b");
        run(&mut q, task(1, 0), "b");
        q.task_started(task(2, 0), "b");
        q.task_started(task(2, 1), "b");
        let (p, cancel) = q.outputs_lost(task(2, 0), 0, "a").unwrap();
        assert_eq!(p.ready, vec![task(0, 0)]);
        assert_eq!(cancel, vec![attempt_on(task(2, 1), 0, "b")]);
        // The same report again, or the cancelled task's, is stale.
        assert!(q.outputs_lost(task(2, 0), 0, "a").is_none());
        assert!(q.outputs_lost(task(2, 1), 0, "a").is_none());
        assert_eq!(
            run(&mut q, task(0, 0), "c").ready,
            vec![task(2, 0), task(2, 1)]
        );
        assert_eq!(q.attempt(task(2, 0)), 1);
    }

    #[test]
    fn a_task_lost_too_often_fails_the_query() {
        let mut q = join_query();
        q.start();
        for lost in 1..=MAX_TASK_ATTEMPTS {
            q.task_started(task(0, 0), "a");
            let (p, _) = q.executor_lost("a");
            assert_eq!(p.finished, lost == MAX_TASK_ATTEMPTS);
        }
        assert_eq!(q.state(), QueryState::Failed);
        assert!(q.error().unwrap().contains("3 times"));
    }

    #[test]
    fn stages_without_tasks_complete_at_once() {
        let mut q = query_of(vec![spec(&[], 0), spec(&[0], 1)]);
        assert_eq!(q.start().ready, vec![task(1, 0)]);
    }
}
