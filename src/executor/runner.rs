//! Runs pushed tasks: decodes the stage plan (once per stage), executes one partition
//! with the task's [`TaskEnv`], and reports the result up the stream.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{UInt32Type, UInt64Type};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::{SessionStateBuilder, TaskContext};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::prelude::SessionContext;
use futures::FutureExt;
use tokio::runtime::Handle;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::AbortHandle;
use tracing::{Instrument, debug, info_span, warn};

use super::dynamic_filters::{self, PartitionSliceExec};
use super::failure::is_transient;
use super::gated::{GatedExec, TaskGate};
use super::memory_cap::CappedPool;
use crate::analyze;
use crate::config::{DYNAMIC_FILTERS_SETTING, MEMORY_LIMIT_SETTING};
use crate::join_filters::{FilterEffect, KeySummary, apply_filters, summaries_of};
use crate::planner::decode_plan;
use crate::proto::{
    self, ExecutorMessage, PartitionStats, RunTask, TaskFailed, TaskId, TaskStatus, TaskSucceeded,
    executor_message, task_status,
};
use crate::shuffle::fetch::FlightClients;
use crate::shuffle::{MapLocation, ShuffleKey, ShuffleStore, TaskEnv, UnreadableOutput};

/// Queries whose shuffle was released, remembered so a task finishing after the release
/// does not leave output behind.
const RELEASED_MEMORY: usize = 1024;

type TaskKey = (String, u32, u32, u32);

/// How the runner knows a task attempt: its query, stage, partition and attempt. A
/// cancel or suspension meant for one attempt then never reaches a newer one, and an
/// attempt that ends late never takes a newer one's place.
fn task_key(id: &TaskId) -> TaskKey {
    (id.query_id.clone(), id.stage_id, id.partition, id.attempt)
}

/// A decoded stage plan, shared by the stage's tasks on this executor, and the bytes its
/// operators had spilled when last counted (their metrics add up over the tasks).
struct CachedPlan {
    /// The instance the stage's tasks share, ready to run.
    shared: Arc<dyn ExecutionPlan>,
    /// Each task decodes and narrows an instance of its own, which DataFusion's dynamic
    /// filters reach the scans of (see [`dynamic_filters`]).
    narrowable: bool,
    /// The partitions whose tasks started here: a later attempt of one runs on a fresh
    /// instance, never on `shared` again.
    started: HashSet<u32>,
    spilled_bytes: u64,
}

/// The plan instance a task runs, and the partition of it that is the task's.
struct TaskPlan {
    plan: Arc<dyn ExecutionPlan>,
    partition: usize,
    /// True for an instance of the task's own, not the stage's shared one.
    own: bool,
    /// True when DataFusion's dynamic filters reach the instance's scans.
    dynamic_filters: bool,
}

/// What a finished task reports besides its output.
struct TaskOutput {
    partitions: Vec<PartitionStats>,
    key_summaries: Vec<proto::KeySummary>,
    filter_effect: Option<proto::FilterEffect>,
    in_stage_filters: Option<proto::InStageFilterEffect>,
    operator_metrics: Vec<proto::OperatorMetrics>,
}

/// A task the runner holds: how to stop it, and its gate (closed while suspended).
struct RunningTask {
    abort: AbortHandle,
    gate: Arc<TaskGate>,
}

impl RunningTask {
    /// Stops the task. Its gate opens first: operators it shares with the stage's other
    /// tasks on this executor (the build side of a join, built once) run on the context
    /// of the task that started them, and would otherwise wait at a closed gate forever.
    fn stop(&self) {
        self.gate.stop();
        self.abort.abort();
    }
}

/// Runs the tasks the scheduler pushes to this executor.
pub struct TaskRunner {
    executor_id: String,
    store: ShuffleStore,
    clients: FlightClients,
    session: SessionContext,
    outbound: UnboundedSender<ExecutorMessage>,
    plans: Mutex<HashMap<(String, u32), CachedPlan>>,
    running: Mutex<HashMap<TaskKey, RunningTask>>,
    released: Mutex<VecDeque<String>>,
    completed: AtomicU64,
    suspensions: AtomicU64,
    spilled_bytes: AtomicU64,
    busy_micros: AtomicU64,
    slots: u32,
    started: Instant,
    runtime: Handle,
}

impl std::fmt::Debug for TaskRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskRunner")
            .field("executor_id", &self.executor_id)
            .field("running", &self.running())
            .finish_non_exhaustive()
    }
}

impl TaskRunner {
    /// A runner that runs tasks on `runtime` and reports on `outbound`.
    pub fn new(
        executor_id: String,
        slots: u32,
        store: ShuffleStore,
        clients: FlightClients,
        session: SessionContext,
        outbound: UnboundedSender<ExecutorMessage>,
        runtime: Handle,
    ) -> Self {
        Self {
            executor_id,
            store,
            clients,
            session,
            outbound,
            plans: Mutex::default(),
            running: Mutex::default(),
            released: Mutex::default(),
            completed: AtomicU64::new(0),
            suspensions: AtomicU64::new(0),
            spilled_bytes: AtomicU64::new(0),
            busy_micros: AtomicU64::new(0),
            slots,
            started: Instant::now(),
            runtime,
        }
    }

    /// Tasks running now.
    pub fn running(&self) -> usize {
        self.running.lock().expect("running lock").len()
    }

    /// Tasks finished (succeeded or failed) since start.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Times the scheduler suspended a running task, since start.
    pub fn suspensions(&self) -> u64 {
        self.suspensions.load(Ordering::Relaxed)
    }

    /// Bytes its tasks' operators (sorts, aggregations, joins) spilled to disk, since
    /// start.
    pub fn spilled_bytes(&self) -> u64 {
        self.spilled_bytes.load(Ordering::Relaxed)
    }

    /// Publishes slot-seconds spent running tasks and left idle since start.
    pub fn report_utilization(&self) {
        let busy = self.busy_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let capacity = self.started.elapsed().as_secs_f64() * self.slots as f64;
        let executor = self.executor_id.clone();
        metrics::gauge!("baton_executor_busy_seconds", "executor" => executor.clone()).set(busy);
        metrics::gauge!("baton_executor_idle_seconds", "executor" => executor)
            .set((capacity - busy).max(0.0));
    }

    /// Publishes how many of its tasks are suspended.
    fn report_suspended(&self) {
        let suspended = self
            .running
            .lock()
            .expect("running lock")
            .values()
            .filter(|t| !t.gate.is_open())
            .count();
        metrics::gauge!("baton_tasks_suspended", "executor" => self.executor_id.clone())
            .set(suspended as f64);
    }

    /// Starts a pushed task at once; it runs until it ends, is cancelled or is suspended.
    pub fn start(self: &Arc<Self>, task: RunTask) {
        let Some(id) = task.task.clone() else {
            return;
        };
        if task.ready_at_micros > 0 {
            metrics::histogram!("baton_task_start_latency_seconds")
                .record(micros_since(task.ready_at_micros));
        }
        let key = task_key(&id);
        let gate = Arc::new(TaskGate::default());
        let span = info_span!("task", query_id = %id.query_id, stage = id.stage_id, partition = id.partition, attempt = id.attempt);
        let runner = self.clone();
        let task_gate = gate.clone();
        // Hold the lock across spawn so the task cannot finish before it is registered.
        let mut running = self.running.lock().expect("running lock");
        let handle = self.runtime.spawn(
            async move {
                let started = Instant::now();
                debug!(
                    since_push_micros = (micros_since(task.pushed_at_micros) * 1e6) as u64,
                    "task started"
                );
                // A panicking operator fails its task (with the panic's message) instead
                // of leaving the scheduler waiting for a status that never comes.
                let result = std::panic::AssertUnwindSafe(runner.execute(&task, task_gate))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|panic| Err(panicked(panic)));
                let inline = match &result {
                    Ok(output) if task.inline_result_limit > 0 && output.partitions.len() == 1 => {
                        runner.take_inline(&id, task.inline_result_limit)
                    }
                    _ => None,
                };
                runner.finish(id, started, result, inline);
            }
            .instrument(span),
        );
        running.insert(
            key,
            RunningTask {
                abort: handle.abort_handle(),
                gate,
            },
        );
    }

    /// Stops (`suspend`) or lets go on a task the scheduler suspended for a cheaper
    /// query's task; an attempt that already ended is ignored.
    pub fn set_suspended(&self, id: &TaskId, suspend: bool) {
        let changed = self
            .running
            .lock()
            .expect("running lock")
            .get(&task_key(id))
            .is_some_and(|task| task.gate.set_open(!suspend));
        if changed {
            debug!(query_id = %id.query_id, stage = id.stage_id, partition = id.partition, suspend, "task gate changed");
            if suspend {
                self.suspensions.fetch_add(1, Ordering::Relaxed);
            }
            self.report_suspended();
        }
    }

    async fn execute(&self, task: &RunTask, gate: Arc<TaskGate>) -> Result<TaskOutput> {
        let id = task.task.as_ref().expect("checked in start");
        let base = self.query_context(&task.settings)?;
        let TaskPlan {
            plan,
            partition: run_partition,
            own,
            dynamic_filters,
        } = self.plan(id, &task.stage_plan, &task.filters, &base)?;
        let env = TaskEnv {
            query_id: id.query_id.as_str().into(),
            stage_id: id.stage_id,
            map_partition: id.partition,
            executor_id: self.executor_id.clone(),
            inputs: task
                .inputs
                .iter()
                .map(|input| {
                    let mut locations = input.locations.clone();
                    locations.sort_by_key(|l| l.map_partition);
                    let locations = locations
                        .into_iter()
                        .map(|l| MapLocation {
                            executor_id: l.executor_id,
                            flight_address: l.flight_address,
                        })
                        .collect();
                    (input.stage_id, locations)
                })
                .collect(),
            store: self.store.clone(),
            clients: self.clients.clone(),
        };
        let config = base
            .session_config()
            .clone()
            .with_extension(Arc::new(env))
            .with_extension(gate);
        let ctx = Arc::new(
            base.with_session_config(config)
                .with_task_id(format!("{}/{}/{}", id.query_id, id.stage_id, id.partition)),
        );
        let stream = plan.execute(run_partition, ctx)?;
        let batches = datafusion::physical_plan::common::collect(stream).await;
        self.count_spills(id, own.then_some(&plan));
        let partitions = stats_of(&batches?)?;
        let key_summaries = summaries_of(&plan, run_partition)
            .iter()
            .map(KeySummary::to_proto)
            .collect::<Result<_>>()?;
        let effect = FilterEffect::of(&plan, run_partition);
        let in_stage_filters = dynamic_filters.then(|| in_stage_effect(&plan)).flatten();
        let operator_metrics = match task.collect_metrics {
            // A shared instance holds every task's figures; its own holds only its own.
            true => analyze::operator_metrics(&plan, (!own).then_some(run_partition), &|p| {
                p.is::<GatedExec>() || p.is::<CooperativeExec>() || p.is::<PartitionSliceExec>()
            }),
            false => Vec::new(),
        };
        Ok(TaskOutput {
            partitions,
            key_summaries,
            filter_effect: (!task.filters.is_empty()).then_some(proto::FilterEffect {
                rows_in: effect.rows_in,
                rows_removed: effect.rows_removed,
                row_groups_pruned: effect.row_groups_pruned,
            }),
            in_stage_filters,
            operator_metrics,
        })
    }

    /// The context a query's plans decode and run in: the executor's session with the
    /// settings the query's session changed, its functions rebuilt for them (a time
    /// zone changes what `to_timestamp` returns, and the plan was made with it), and its
    /// memory limit as a cap on the task's share of the executor's pool.
    fn query_context(&self, settings: &HashMap<String, String>) -> Result<TaskContext> {
        let state = self.session.state();
        if settings.is_empty() {
            return Ok(TaskContext::from(&state));
        }
        let mut config = state.config().clone();
        let mut builder = SessionStateBuilder::new_from_existing(state.clone());
        if let Some(limit) = settings.get(MEMORY_LIMIT_SETTING) {
            let limit: usize = limit.parse().map_err(|e| {
                DataFusionError::Configuration(format!(
                    "{MEMORY_LIMIT_SETTING} {limit:?} is no byte count: {e}"
                ))
            })?;
            let mut runtime = RuntimeEnv::clone(state.runtime_env());
            runtime.memory_pool = Arc::new(CappedPool::new(runtime.memory_pool, limit));
            builder = builder.with_runtime_env(Arc::new(runtime));
        }
        // DataFusion's switch of every dynamic filter kind first: the switch of one kind
        // the session set after it then wins, as it did there.
        let mut settings: Vec<_> = settings
            .iter()
            .filter(|(key, _)| key.as_str() != MEMORY_LIMIT_SETTING)
            .collect();
        settings.sort_by_key(|(key, _)| key.as_str() != DYNAMIC_FILTERS_SETTING);
        for (key, value) in settings {
            config.options_mut().set(key, value)?;
        }
        let state = builder.with_config(config).build();
        Ok(TaskContext::from(&state))
    }

    /// Adds what the task's own plan instance spilled, or else what the stage plan's
    /// operators spilled since last counted, to the executor's count and
    /// `baton_spilled_bytes_total`.
    fn count_spills(&self, id: &TaskId, own: Option<&Arc<dyn ExecutionPlan>>) {
        let new = match own {
            Some(plan) => spilled_bytes(plan),
            None => {
                let mut plans = self.plans.lock().expect("plans lock");
                let Some(cached) = plans.get_mut(&(id.query_id.clone(), id.stage_id)) else {
                    return;
                };
                let total = spilled_bytes(&cached.shared);
                let new = total.saturating_sub(cached.spilled_bytes);
                cached.spilled_bytes = total;
                new
            }
        };
        if new > 0 {
            self.spilled_bytes.fetch_add(new, Ordering::Relaxed);
            metrics::counter!("baton_spilled_bytes_total").increment(new);
        }
    }

    /// The plan a task runs. The stage plan is decoded once per stage, with the join
    /// filters the scheduler shipped (every task of a stage is shipped the same ones),
    /// and its tasks on this executor share that instance, except:
    /// * where DataFusion's dynamic filters reach the stage's scans, each task runs an
    ///   instance of its own, narrowed to its partition ([`dynamic_filters`]);
    /// * a partition that ran on the shared instance before (a retry, a rerun) runs on a
    ///   fresh one: operators keep state across runs (a TopK its threshold, which would
    ///   drop the rows the first attempt kept).
    ///
    /// A fresh instance is decoded anew: DataFusion's own reset keeps some state shared
    /// with the instance it resets (a scalar subquery's results, which the shared
    /// instance's other tasks may be filling).
    fn plan(
        &self,
        id: &TaskId,
        bytes: &[u8],
        filters: &[proto::KeySummary],
        ctx: &TaskContext,
    ) -> Result<TaskPlan> {
        let key = (id.query_id.clone(), id.stage_id);
        let options = ctx.session_config().options();
        let cached = self
            .plans
            .lock()
            .expect("plans lock")
            .get_mut(&key)
            .map(|cached| {
                let first = cached.started.insert(id.partition);
                (cached.shared.clone(), cached.narrowable, first)
            });
        let (shared, narrowable, first) = match cached {
            Some(cached) => cached,
            None => {
                let decoded = decode_stage(bytes, filters, ctx)?;
                let narrowable = own_instance(&decoded, 0, options).is_some();
                let shared = preemptible(decoded)?;
                let cached = CachedPlan {
                    shared: shared.clone(),
                    narrowable,
                    started: HashSet::from([id.partition]),
                    spilled_bytes: 0,
                };
                self.plans.lock().expect("plans lock").insert(key, cached);
                (shared, narrowable, true)
            }
        };
        let partition = id.partition as usize;
        if narrowable {
            let fresh = decode_stage(bytes, filters, ctx)?;
            if let Some(own) = own_instance(&fresh, partition, options) {
                return Ok(TaskPlan {
                    plan: preemptible(own)?,
                    partition: 0,
                    own: true,
                    dynamic_filters: true,
                });
            }
        }
        if first {
            return Ok(TaskPlan {
                plan: shared,
                partition,
                own: false,
                dynamic_filters: false,
            });
        }
        Ok(TaskPlan {
            plan: preemptible(decode_stage(bytes, filters, ctx)?)?,
            partition,
            own: true,
            dynamic_filters: false,
        })
    }

    /// The task's single output partition as Arrow IPC, taken out of the store, when it
    /// is in memory and encodes to at most `limit` bytes: the scheduler then has the
    /// result at once and fetches nothing from here.
    fn take_inline(&self, id: &TaskId, limit: u64) -> Option<Bytes> {
        let key = ShuffleKey {
            query_id: id.query_id.as_str().into(),
            stage_id: id.stage_id,
            map_partition: id.partition,
            output_partition: 0,
        };
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        match self.store.take_inline(&key, limit) {
            Ok(encoded) => {
                let encoded = encoded.map(Bytes::from);
                if let Some(ipc) = &encoded {
                    debug!(bytes = ipc.len(), "result sent back with the status");
                }
                encoded
            }
            Err(e) => {
                warn!(error = %e, "result not inlined; it stays in the shuffle store");
                None
            }
        }
    }

    fn finish(
        &self,
        id: TaskId,
        started: Instant,
        result: Result<TaskOutput>,
        inline_result: Option<Bytes>,
    ) {
        // A stopped task was taken out already: a cancelled one was reported by
        // `cancel`, and `abort_all`'s run again anyway. Its end sends nothing more, so
        // the scheduler hears of each attempt once.
        let stopped = self
            .running
            .lock()
            .expect("running lock")
            .remove(&task_key(&id))
            .is_none();
        self.report_suspended();
        if self
            .released
            .lock()
            .expect("released lock")
            .contains(&id.query_id)
        {
            self.store.release(&id.query_id, &[]);
        }
        self.completed.fetch_add(1, Ordering::Relaxed);
        let elapsed = started.elapsed();
        debug!(
            ok = result.is_ok(),
            elapsed_ms = elapsed.as_millis() as u64,
            "task finished"
        );
        let result = match result {
            Ok(output) => {
                let bytes: u64 = output.partitions.iter().map(|p| p.bytes).sum();
                metrics::counter!("baton_shuffle_bytes_written_total").increment(bytes);
                task_status::Result::Succeeded(TaskSucceeded {
                    partitions: output.partitions,
                    elapsed_micros: elapsed.as_micros() as u64,
                    inline_result,
                    key_summaries: output.key_summaries,
                    filter_effect: output.filter_effect,
                    in_stage_filters: output.in_stage_filters,
                    operator_metrics: output.operator_metrics,
                })
            }
            Err(e) => task_status::Result::Failed(TaskFailed {
                error: e.to_string(),
                unreadable_executor: UnreadableOutput::executor_of(&e)
                    .unwrap_or_default()
                    .to_string(),
                transient: is_transient(&e),
            }),
        };
        self.busy_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        self.report_utilization();
        if stopped {
            debug!("task ended after it was stopped; nothing more to report");
            return;
        }
        let _ = self.outbound.send(ExecutorMessage {
            message: Some(executor_message::Message::TaskStatus(TaskStatus {
                task: Some(id),
                result: Some(result),
            })),
        });
    }

    /// Stops a running task: its DataFusion streams are dropped, its partial output
    /// discarded, and a Failed status reports the freed slot.
    pub fn cancel(&self, id: &TaskId) {
        let task = self
            .running
            .lock()
            .expect("running lock")
            .remove(&task_key(id));
        if let Some(task) = task {
            task.stop();
            self.report_suspended();
            let _ = self.outbound.send(ExecutorMessage {
                message: Some(executor_message::Message::TaskStatus(TaskStatus {
                    task: Some(id.clone()),
                    result: Some(task_status::Result::Failed(TaskFailed {
                        error: "cancelled".into(),
                        unreadable_executor: String::new(),
                        transient: false,
                    })),
                })),
            });
        }
    }

    /// Stops every running task (the executor shuts down, or lost its scheduler, which
    /// runs them again) and forgets the decoded plans they shared: state their stopped
    /// tasks left half-built (a join's build side) must not hold up later tasks.
    pub fn abort_all(&self) {
        for (_, task) in self.running.lock().expect("running lock").drain() {
            task.stop();
        }
        self.plans.lock().expect("plans lock").clear();
    }

    /// Drops the output of one map task (see [`ShuffleStore::release_map_task`]).
    pub fn release_map_task(&self, query_id: &str, stage_id: u32, map_partition: u32) {
        self.store
            .release_map_task(query_id, stage_id, map_partition);
    }

    /// Drops a query's shuffle output (of some stages, or all) and its cached plans.
    pub fn release(&self, query_id: &str, stages: &[u32]) {
        self.store.release(query_id, stages);
        self.plans
            .lock()
            .expect("plans lock")
            .retain(|(q, s), _| !(q == query_id && (stages.is_empty() || stages.contains(s))));
        if stages.is_empty() {
            let mut released = self.released.lock().expect("released lock");
            released.push_back(query_id.to_string());
            if released.len() > RELEASED_MEMORY {
                released.pop_front();
            }
        }
    }
}

/// What DataFusion's dynamic filters did in `plan`, a task's own instance that ran, as
/// reported to the scheduler and counted in the executor's metrics; None, and a
/// warning, where the plan cannot be read (the task's output stands).
fn in_stage_effect(plan: &Arc<dyn ExecutionPlan>) -> Option<proto::InStageFilterEffect> {
    let effect = match dynamic_filters::effect_of(plan) {
        Ok(effect) => effect,
        Err(e) => {
            warn!(error = %e, "reading what a task's dynamic filters pruned");
            return None;
        }
    };
    metrics::counter!("baton_stage_dynamic_filter_tasks_total").increment(1);
    metrics::counter!("baton_stage_dynamic_filter_row_groups_pruned_total")
        .increment(effect.row_groups_pruned);
    Some(effect)
}

/// [`dynamic_filters::task_instance`]; None, and a warning, where pushing the filters
/// fails: the task then runs without them rather than fail.
fn own_instance(
    plan: &Arc<dyn ExecutionPlan>,
    partition: usize,
    options: &datafusion::common::config::ConfigOptions,
) -> Option<Arc<dyn ExecutionPlan>> {
    dynamic_filters::task_instance(plan, partition, options)
        .inspect_err(|e| {
            warn!(error = %e, "DataFusion's dynamic filters not pushed; the task runs without them")
        })
        .ok()
        .flatten()
}

/// A stage plan decoded, with the join filters the scheduler shipped put in.
fn decode_stage(
    bytes: &[u8],
    filters: &[proto::KeySummary],
    ctx: &TaskContext,
) -> Result<Arc<dyn ExecutionPlan>> {
    let plan = decode_plan(bytes, ctx).map_err(|e| DataFusionError::External(Box::new(e)))?;
    let filters = filters
        .iter()
        .map(KeySummary::from_proto)
        .collect::<Result<Vec<_>>>()?;
    apply_filters(plan, &filters, ctx.session_config().options())
}

/// Wraps every operator of a stage plan twice:
/// - in a [`GatedExec`], so a suspended task stops at its next batch;
/// - in a [`CooperativeExec`], so its output stream spends Tokio's cooperative budget: an
///   operator looping over in-memory input (a join's probe, an aggregate over it) then
///   yields now and then, so a cancelled task's abort lands and the executor's stream,
///   heartbeats and Flight endpoint keep getting the CPU.
fn preemptible(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        if node.downcast_ref::<CooperativeExec>().is_some() {
            return Ok(Transformed::no(node));
        }
        let gated = Arc::new(GatedExec::new(node)) as Arc<dyn ExecutionPlan>;
        Ok(Transformed::yes(
            Arc::new(CooperativeExec::new(gated)) as Arc<dyn ExecutionPlan>
        ))
    })
    .map(|t| t.data)
}

/// Bytes the operators of `plan` have spilled, over every task that ran this instance.
fn spilled_bytes(plan: &Arc<dyn ExecutionPlan>) -> u64 {
    let own = plan
        .metrics()
        .and_then(|metrics| metrics.spilled_bytes())
        .unwrap_or(0) as u64;
    own + plan.children().into_iter().map(spilled_bytes).sum::<u64>()
}

/// Seconds from `unix_micros` (a wall-clock instant) to now; 0 if it lies ahead.
pub fn micros_since(unix_micros: u64) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64;
    now.saturating_sub(unix_micros) as f64 / 1e6
}

/// Reads the writer's statistics batches.
fn stats_of(batches: &[RecordBatch]) -> Result<Vec<PartitionStats>> {
    let mut stats = Vec::new();
    for batch in batches {
        if batch.num_columns() != 3 {
            return Err(DataFusionError::Internal(
                "a stage plan must end in a shuffle writer".into(),
            ));
        }
        let partitions = batch.column(0).as_primitive::<UInt32Type>();
        let rows = batch.column(1).as_primitive::<UInt64Type>();
        let bytes = batch.column(2).as_primitive::<UInt64Type>();
        for i in 0..batch.num_rows() {
            stats.push(PartitionStats {
                partition: partitions.value(i),
                rows: rows.value(i),
                bytes: bytes.value(i),
            });
        }
    }
    Ok(stats)
}

/// The error a task that panicked fails with.
fn panicked(panic: Box<dyn std::any::Any + Send>) -> DataFusionError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    DataFusionError::Execution(format!("the task panicked: {message}"))
}
