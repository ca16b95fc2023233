//! Planning a submission into stages on a bounded pool of planning threads, off the
//! runtime that carries the scheduler's and executors' streams: a big query's planning
//! (tens of milliseconds of CPU) then never holds up a task push, a status or a fetch.
//!
//! A query is planned with as many partitions (tasks per stage) as its table data
//! earns, one per [`Planner::partition_data_bytes`], up to the session's target: a
//! query over a few small tables runs as one task per stage, without the hops and
//! shuffle files of partitions that would each have next to nothing to do.

use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::config::ConfigOptions;
use datafusion::execution::memory_pool::MemoryLimit;
use datafusion::execution::{SessionState, TaskContext};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::analyze::AnalyzeExec;
use datafusion::prelude::SessionContext;

use tokio::sync::watch;

use super::guard::Guard;
use super::local;
use super::{ClusterSize, StageFilter, StageSpec, Submission};
use crate::analyze;
use crate::catalog::plan_data_bytes;
use crate::config;
use crate::join_filters::rule;
use crate::join_filters::rule::FilterLink;
use crate::planner::{self, PlannerError, StageDag, StageEstimate};

/// Plannings that may wait for a planning thread; a submission beyond them waits to be
/// queued (its gRPC call stays open), so a burst of submissions holds bounded memory.
const PLANNING_QUEUE: usize = 1024;

/// Tasks per stage a big query gets per task slot of the cluster: several, so that a
/// task's share of a join's build side, which cannot spill, stays small (TPC-H SF 10
/// Q18 ran out of a 1.5 GB executor budget at one per slot, and fits at four), and
/// so that slots freed early take on the rest.
const PARTITIONS_PER_SLOT: usize = 4;

/// One planning, run on a planning thread.
type Job = Box<dyn FnOnce() + Send>;

/// A fixed pool of planning threads, one per core by default, fed from a bounded queue.
/// The threads start with the first planning and end when the last handle to the pool
/// is dropped.
#[derive(Clone)]
pub struct PlanningPool {
    jobs: async_channel::Sender<Job>,
    queue: async_channel::Receiver<Job>,
    threads: usize,
    started: Arc<std::sync::Mutex<bool>>,
}

impl PlanningPool {
    /// A pool of `threads` (at least one) planning threads.
    pub fn new(threads: usize) -> Self {
        let (jobs, queue) = async_channel::bounded::<Job>(PLANNING_QUEUE);
        Self {
            jobs,
            queue,
            threads: threads.max(1),
            started: Arc::default(),
        }
    }

    /// A pool of one thread per core.
    pub fn per_core() -> Self {
        Self::new(crate::config::host_cores())
    }

    /// Queues `job`, waiting while the queue is full; starts the threads first if they
    /// are not running yet.
    async fn run(&self, job: Job) -> Result<(), PlannerError> {
        self.start_threads()?;
        self.jobs.send(job).await.map_err(|_| PlannerError::Aborted)
    }

    fn start_threads(&self) -> Result<(), PlannerError> {
        let mut started = self.started.lock().expect("planning pool lock");
        if *started {
            return Ok(());
        }
        for _ in 0..self.threads {
            // A thread holds the receiving end only: once every pool handle (and with it
            // every sender) is gone, its `recv` fails and it ends.
            let queue = self.queue.clone();
            std::thread::Builder::new()
                .name("baton-planner".into())
                .spawn(move || {
                    while let Ok(job) = queue.recv_blocking() {
                        // A panicking planning fails its query (its result sender is
                        // dropped: `PlannerError::Aborted`); the thread plans on.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                })
                .map_err(PlannerError::Thread)?;
        }
        *started = true;
        Ok(())
    }
}

/// How a scheduler plans submissions.
#[derive(Clone)]
pub struct Planner {
    /// The session SQL is planned in.
    pub session: SessionContext,
    /// The threads plans are made on.
    pub pool: PlanningPool,
    /// Bytes of table data (the catalog's files, whole) that earn a query one partition,
    /// up to the session's target partitions; 0: every query gets the target. Queries
    /// reading a table of unknown size get the target too.
    pub partition_data_bytes: u64,
    /// Bytes of file data per split unit of a scan stage (0: no splitting).
    pub split_unit_bytes: u64,
    /// The target partitions as configured; None: [`PARTITIONS_PER_SLOT`] per cluster slot.
    pub partitions: Option<usize>,
    /// The connected executors, whose slots are the target when none is configured.
    pub cluster: watch::Receiver<ClusterSize>,
    /// What SQL and which client plans are run.
    pub guard: Guard,
    /// Join filters cross stages (see [`crate::join_filters`]).
    pub join_filters: bool,
}

/// A planned submission.
pub struct Planned {
    /// Its stages, inputs before consumers (none when `answer` is set).
    pub stages: Vec<StageSpec>,
    /// The result schema.
    pub schema: SchemaRef,
    /// The result, when the scheduler ran the plan itself (see [`local`]): Arrow IPC,
    /// and the plan's operators.
    pub answer: Option<(Bytes, String)>,
    /// The settings the session changed, which its tasks run with.
    pub settings: Vec<(String, String)>,
}

impl Planner {
    /// Plans `submission` into stages on a planning thread. Its async parts (catalog
    /// and object store I/O) are polled on that thread too, so planning never occupies
    /// a worker of the scheduler's runtime; the runtime's I/O driver serves them (an
    /// object store's HTTP connections live there).
    pub async fn plan(
        &self,
        submission: Submission,
        session: SessionContext,
    ) -> Result<Planned, PlannerError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let planner = self.clone();
        let runtime = tokio::runtime::Handle::current();
        self.pool
            .run(Box::new(move || {
                let planned = runtime.block_on(planner.plan_here(submission, &session));
                let _ = done.send(planned);
            }))
            .await?;
        result.await.map_err(|_| PlannerError::Aborted)?
    }

    /// Partitions a query over enough data is planned with: as configured, or
    /// [`PARTITIONS_PER_SLOT`] per task slot of the executors connected now (`slots`; the
    /// session's target when none is), so a stage of a big query keeps every slot busy
    /// however large the cluster, with tasks small enough that a join's build side fits.
    fn target_partitions(&self, slots: usize) -> usize {
        self.partitions
            .unwrap_or(if slots > 0 {
                slots * PARTITIONS_PER_SLOT
            } else {
                self.session.state().config().target_partitions()
            })
            .max(1)
    }

    /// Plans `submission` on the calling thread, its SQL in `session`.
    async fn plan_here(
        &self,
        submission: Submission,
        session: &SessionContext,
    ) -> Result<Planned, PlannerError> {
        let (sql, params) = match submission {
            Submission::Sql(sql) => (sql, None),
            Submission::Bound { sql, params } => (sql, Some(params)),
            Submission::Plan(bytes) => {
                let ctx: Arc<TaskContext> = self.session.task_ctx();
                let plan = planner::decode_plan(&bytes, &ctx)?;
                self.guard.check_plan(&plan)?;
                let options = self.session.state().config_options().clone();
                let mut planned = self.cut(plan, &options)?;
                planned.settings = self.dynamic_filter_settings(Vec::new(), &options);
                return Ok(planned);
            }
        };
        let frame = self.guard.plan_sql(session, &sql, params).await?;
        let bytes = plan_data_bytes(frame.logical_plan());
        let (mut state, plan) = frame.into_parts();
        let options = state.config_options().clone();
        let slots = self.cluster.borrow().slots as usize;
        let execution = &mut state.config_mut().options_mut().execution;
        execution.target_partitions = partitions_for(
            bytes,
            self.partition_data_bytes,
            self.target_partitions(slots),
            slots,
        );
        tracing::debug!(
            partitions = execution.target_partitions,
            bytes,
            "planning with partitions for its data"
        );
        // Planned as every distributed plan is; a plan the scheduler answers itself runs
        // in the session's own settings (`information_schema` shows them).
        let mut planning = state.clone();
        config::plan_for_distribution(planning.config_mut().options_mut());
        let plan = planning.create_physical_plan(&plan).await?;
        if let Some(reason) = local::must_run_here(&plan) {
            return answer(plan, &state, reason).await;
        }
        match self.cut(plan.clone(), &options) {
            Ok(mut planned) => {
                let changed = changed_settings(&self.session, session);
                planned.settings = self.dynamic_filter_settings(changed, &options);
                Ok(planned)
            }
            // An operator with no wire form: the plan cannot leave the scheduler.
            Err(e) if planner::encode_plan(plan.clone()).is_err() => {
                tracing::info!(error = %e, "plan has an operator executors cannot decode; run on the scheduler");
                answer(plan, &state, local::Reason::NoWireForm).await
            }
            Err(e) => Err(e),
        }
    }

    /// The settings a query's tasks run with: what its session changed (`changed`), and
    /// the dynamic filters inside a stage as its session's `options` have them, off
    /// where the scheduler's `--dynamic-filters off` says so.
    fn dynamic_filter_settings(
        &self,
        mut changed: Vec<(String, String)>,
        options: &ConfigOptions,
    ) -> Vec<(String, String)> {
        changed.retain(|(key, _)| !config::STAGE_DYNAMIC_FILTER_SETTINGS.contains(&key.as_str()));
        let optimizer = &options.optimizer;
        let on = [
            optimizer.enable_topk_dynamic_filter_pushdown,
            optimizer.enable_join_dynamic_filter_pushdown,
            optimizer.enable_aggregate_dynamic_filter_pushdown,
        ];
        for (key, on) in config::STAGE_DYNAMIC_FILTER_SETTINGS.iter().zip(on) {
            // Executors start with them on: only an off travels.
            if !(on && self.join_filters) {
                changed.push((key.to_string(), "false".into()));
            }
        }
        changed
    }

    /// Cuts a physical plan into stages, estimates their costs and keeps the join
    /// filters that pay (none where the session's `options` turn join dynamic filters
    /// off).
    fn cut(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        options: &ConfigOptions,
    ) -> Result<Planned, PlannerError> {
        // EXPLAIN ANALYZE: its input runs as the query, and the answer is what every
        // stage measured (`crate::analyze`), in `AnalyzeExec`'s schema.
        let (plan, analyze_schema) = match plan.downcast_ref::<AnalyzeExec>() {
            Some(analyze) => (Arc::clone(analyze.input()), Some(plan.schema())),
            None => (plan, None),
        };
        let join_filters =
            self.join_filters && options.optimizer.enable_join_dynamic_filter_pushdown;
        let filters = join_filters.then_some(&[][..]);
        let mut dag = planner::plan_stages(plan.clone(), self.split_unit_bytes, filters)?;
        let slots = self.cluster.borrow().slots as usize;
        let (mut estimates, mut kept) = keep_filters(&dag, slots);
        // A build side made a stage for a filter that does not pay goes back into its
        // join's stage: cut again without that stage.
        let unused: Vec<u32> = (dag.staged_builds.iter().copied())
            .filter(|id| !kept.iter().any(|l| l.id == *id))
            .collect();
        if !unused.is_empty() {
            dag = planner::plan_stages(plan, self.split_unit_bytes, Some(&unused))?;
            (estimates, kept) = keep_filters(&dag, slots);
        }
        let stages = dag
            .stages
            .iter()
            .zip(estimates)
            .map(|(s, estimate)| {
                let plan = rule::strip_unkept(s.plan.clone(), &kept)?;
                Ok(StageSpec {
                    cost: estimate.cost,
                    output_rows: estimate.output_rows,
                    cost_per_input_row: estimate.cost_per_input_row,
                    plan: planner::encode_plan(plan.clone())?.into(),
                    inputs: s.inputs.clone(),
                    tasks: s.tasks,
                    operators: planner::operator_summary(&plan),
                    filters: kept
                        .iter()
                        .filter(|l| l.probe_stage == s.id)
                        .map(|l| StageFilter {
                            id: l.id,
                            build_stage: l.build_stage,
                        })
                        .collect(),
                    analyzed: match analyze_schema {
                        Some(_) => analyze::operator_lines(&plan),
                        None => Vec::new(),
                    },
                })
            })
            .collect::<Result<Vec<_>, PlannerError>>()?;
        Ok(Planned {
            stages,
            schema: analyze_schema.unwrap_or(dag.schema),
            answer: None,
            settings: Vec::new(),
        })
    }
}

/// The cost estimates of `dag`'s stages and the join filters worth keeping there, on a
/// cluster of `slots` task slots (0: none connected yet).
fn keep_filters(dag: &StageDag, slots: usize) -> (Vec<StageEstimate>, Vec<FilterLink>) {
    let estimates = planner::estimate_stages(dag);
    let inputs: Vec<Vec<u32>> = dag.stages.iter().map(|s| s.inputs.clone()).collect();
    let costs: Vec<f64> = estimates.iter().map(|e| e.cost).collect();
    let fills: Vec<bool> = dag
        .stages
        .iter()
        .map(|s| slots > 0 && s.tasks >= slots)
        .collect();
    let kept = rule::choose(&dag.filters, &inputs, &costs, &fills);
    tracing::debug!(filters = ?dag.filters, ?costs, ?kept, "join filters weighed");
    (estimates, kept)
}

/// Runs `plan` on the scheduler, in the session that planned it.
async fn answer(
    plan: Arc<dyn ExecutionPlan>,
    state: &SessionState,
    reason: local::Reason,
) -> Result<Planned, PlannerError> {
    let schema = plan.schema();
    let operators = planner::operator_summary(&plan);
    let ipc = local::run(plan, state.task_ctx(), reason).await?;
    Ok(Planned {
        stages: Vec::new(),
        schema,
        answer: Some((ipc, operators)),
        settings: Vec::new(),
    })
}

/// The settings `session` has that `base` (the scheduler's own) does not, as
/// (key, value): what a client `SET`. The partition count is the planner's and is left
/// out (the plan carries it), and so are the [`config::DISTRIBUTED_SETTINGS`], which
/// tasks never run with. A memory limit it set is sent in bytes.
fn changed_settings(base: &SessionContext, session: &SessionContext) -> Vec<(String, String)> {
    let limit = |ctx: &SessionContext| match ctx.runtime_env().memory_pool.memory_limit() {
        MemoryLimit::Finite(bytes) => Some(bytes),
        MemoryLimit::Infinite | MemoryLimit::Unknown => None,
    };
    let memory_limit = limit(session)
        .filter(|bytes| limit(base) != Some(*bytes))
        .map(|bytes| (config::MEMORY_LIMIT_SETTING.to_string(), bytes.to_string()));
    let defaults: std::collections::HashMap<String, Option<String>> = base
        .state()
        .config_options()
        .entries()
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect();
    session
        .state()
        .config_options()
        .entries()
        .into_iter()
        .filter(|e| e.key != "datafusion.execution.target_partitions")
        .filter(|e| !config::DISTRIBUTED_SETTINGS.contains(&e.key.as_str()))
        .filter(|e| defaults.get(&e.key) != Some(&e.value))
        .filter_map(|e| Some((e.key, e.value?)))
        .chain(memory_limit)
        .collect()
}

/// Partitions for a query reading `bytes` of table data: one per `per_partition` bytes
/// (at least one), at most `target`; `target` when the bytes are unknown or
/// `per_partition` is 0. More than `slots` (the cluster's task slots, 0: unknown) are
/// rounded down to whole waves of them: five equal tasks on four slots take two rounds,
/// as long as eight would, where four take one.
fn partitions_for(bytes: Option<u64>, per_partition: u64, target: usize, slots: usize) -> usize {
    let wanted = match bytes {
        Some(bytes) if per_partition > 0 => {
            let earned = bytes.div_ceil(per_partition).max(1);
            usize::try_from(earned).map_or(target, |earned| earned.min(target))
        }
        _ => target,
    };
    if slots > 0 && wanted > slots {
        wanted - wanted % slots
    } else {
        wanted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn plannings_run_on_the_pools_threads_and_no_more() {
        let pool = PlanningPool::new(2);
        // Two jobs meet at the barrier, so both threads plan at once.
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let (names, seen) = std::sync::mpsc::channel();
        for _ in 0..10 {
            let barrier = barrier.clone();
            let names = names.clone();
            pool.run(Box::new(move || {
                barrier.wait();
                let thread = std::thread::current();
                names
                    .send((thread.id(), thread.name().map(String::from)))
                    .unwrap();
            }))
            .await
            .unwrap();
        }
        let mut threads = std::collections::HashSet::new();
        for _ in 0..10 {
            let (id, name) = seen.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(name.as_deref(), Some("baton-planner"));
            threads.insert(id);
        }
        assert_eq!(threads.len(), 2);
    }

    #[test]
    fn partitions_follow_the_data_up_to_the_target() {
        let mib = 1 << 20;
        assert_eq!(partitions_for(Some(0), 32 * mib, 4, 0), 1);
        assert_eq!(partitions_for(Some(32 * mib), 32 * mib, 4, 0), 1);
        assert_eq!(partitions_for(Some(32 * mib + 1), 32 * mib, 4, 0), 2);
        assert_eq!(partitions_for(Some(1 << 40), 32 * mib, 4, 0), 4);
        assert_eq!(partitions_for(None, 32 * mib, 4, 0), 4);
        assert_eq!(partitions_for(Some(0), 0, 4, 0), 4);
        // Fewer than the slots stay as earned; more round down to whole waves.
        assert_eq!(partitions_for(Some(96 * mib), 32 * mib, 16, 4), 3);
        assert_eq!(partitions_for(Some(160 * mib), 32 * mib, 16, 4), 4);
        assert_eq!(partitions_for(Some(300 * mib), 32 * mib, 16, 4), 8);
        assert_eq!(partitions_for(Some(1 << 40), 32 * mib, 16, 4), 16);
        assert_eq!(partitions_for(None, 32 * mib, 6, 4), 4);
    }

    #[tokio::test]
    async fn queries_get_partitions_for_their_data() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("small.csv"), "1\n2\n").unwrap();
        // A sparse file: 65 MiB long, nothing written.
        let big = std::fs::File::create(dir.path().join("big.csv")).unwrap();
        big.set_len(65 << 20).unwrap();
        let catalog = dir.path().join("catalog.toml");
        std::fs::write(
            &catalog,
            "[[table]]\nname='small'\nformat='csv'\npath='small.csv'\nheader=false\ncolumns=[['x','BIGINT']]\n\
             [[table]]\nname='big'\nformat='csv'\npath='big.csv'\nheader=false\ncolumns=[['x','BIGINT']]\n\
             [[table]]\nname='globbed'\nformat='csv'\npath='sm*.csv'\nheader=false\ncolumns=[['x','BIGINT']]\n",
        )
        .unwrap();
        let session = SessionContext::new_with_config(crate::config::distributed_session_config(4));
        crate::catalog::register_catalog(&session, &catalog)
            .await
            .unwrap();
        let (cluster, watched) = watch::channel(ClusterSize::default());
        let mut planner = Planner {
            session,
            pool: PlanningPool::new(1),
            partition_data_bytes: 32 << 20,
            split_unit_bytes: 0,
            partitions: None,
            cluster: watched,
            guard: Guard::default(),
            join_filters: true,
        };
        let most_tasks = |planned: &Planned| planned.stages.iter().map(|s| s.tasks).max();
        {
            let plan = async |sql: &str| {
                planner
                    .plan(Submission::Sql(sql.into()), planner.session.clone())
                    .await
                    .unwrap()
            };
            // With no executor connected, data of unknown size (a glob) gets the
            // session's 4 partitions; with some, four per slot.
            let globbed = "select x, count(*) from globbed group by x";
            assert_eq!(most_tasks(&plan(globbed).await), Some(4));
            cluster.send_replace(ClusterSize {
                executors: 3,
                slots: 6,
            });
            assert_eq!(most_tasks(&plan(globbed).await), Some(24));
            // 65 MiB earns three partitions however many slots there are.
            assert_eq!(most_tasks(&plan("select count(*) from big").await), Some(3));
            cluster.send_replace(ClusterSize {
                executors: 1,
                slots: 1,
            });
            assert_eq!(most_tasks(&plan("select count(*) from big").await), Some(3));
            assert_eq!(most_tasks(&plan(globbed).await), Some(4));
        }
        // Configured partitions win over the cluster's slots.
        planner.partitions = Some(4);
        let plan = async |sql: &str| {
            planner
                .plan(Submission::Sql(sql.into()), planner.session.clone())
                .await
                .unwrap()
        };

        // A few bytes of data: one task in every stage.
        let planned = plan("select x, count(*) from small group by x").await;
        assert_eq!(most_tasks(&planned), Some(1));
        // 65 MiB: three partitions of at most 32 MiB.
        let planned = plan("select count(*) from big").await;
        assert_eq!(most_tasks(&planned), Some(3));
        // Globs are of unknown size: the session's 4 partitions.
        let planned = plan("select x, count(*) from globbed group by x").await;
        assert_eq!(most_tasks(&planned), Some(4));
    }

    #[tokio::test]
    async fn tasks_get_their_sessions_settings_and_dynamic_filters_but_not_distributed_ones() {
        let base =
            crate::config::with_dynamic_filters(crate::config::distributed_session_config(2));
        let session = SessionContext::new_with_config(base);
        session
            .sql("create table t as values (1), (2)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let (_cluster, watched) = watch::channel(ClusterSize::default());
        let mut planner = Planner {
            session: session.clone(),
            pool: PlanningPool::new(1),
            partition_data_bytes: 0,
            split_unit_bytes: 0,
            partitions: None,
            cluster: watched,
            guard: Guard::default(),
            join_filters: true,
        };
        let settings = async |planner: &Planner, session: &SessionContext| {
            let planned = planner
                .plan(Submission::Sql("select * from t".into()), session.clone())
                .await
                .unwrap();
            let mut settings = planned.settings;
            settings.sort();
            settings
        };
        let off = |key: &str| (key.to_string(), "false".to_string());
        let [topk, join, aggregate] = crate::config::STAGE_DYNAMIC_FILTER_SETTINGS;
        // Executors start with the filters on: a default session sends nothing.
        assert_eq!(settings(&planner, &session).await, vec![]);
        // A session that turns one kind off sends that.
        let own = SessionContext::new_with_state(session.state());
        own.sql(&format!("set {join} = false")).await.unwrap();
        assert_eq!(settings(&planner, &own).await, vec![off(join)]);
        // Turning them all off sends every kind's switch, which wins over the one over all.
        let all_off = SessionContext::new_with_state(session.state());
        all_off
            .sql("set datafusion.optimizer.enable_dynamic_filter_pushdown = false")
            .await
            .unwrap();
        let sent = settings(&planner, &all_off).await;
        for kind in [topk, join, aggregate] {
            assert!(sent.contains(&off(kind)), "{sent:?}");
        }
        // Settings distributed plans keep off never reach the tasks.
        let distributed = SessionContext::new_with_state(session.state());
        for key in crate::config::DISTRIBUTED_SETTINGS {
            distributed.sql(&format!("set {key} = true")).await.unwrap();
        }
        distributed
            .sql("set datafusion.execution.batch_size = 100")
            .await
            .unwrap();
        assert_eq!(
            settings(&planner, &distributed).await,
            vec![("datafusion.execution.batch_size".into(), "100".into())]
        );
        // `--dynamic-filters off` turns them off for every session.
        planner.join_filters = false;
        assert_eq!(
            settings(&planner, &session).await,
            vec![off(aggregate), off(join), off(topk)]
        );
    }
}
