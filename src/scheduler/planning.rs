//! Planning a submission into stages, each on an OS thread of its own (kept for later
//! submissions, see [`PlanningThreads`]), off the runtime that carries the scheduler's
//! and executors' streams: a big query's planning (tens of milliseconds of CPU) then
//! never holds up a task push, a status or a small query.
//!
//! When small queries go first (the `priority` policy), a big query is planned at the
//! OS's lowest priority (the class background tasks run in). Big is told twice: once its
//! SQL is parsed (it reads more than [`SMALL_PLAN_TABLES`] tables, or more than
//! [`SMALL_PLAN_BYTES`] of table data), before any costly planning; and after logical
//! planning (more than [`SMALL_PLAN_NODES`] nodes), before optimizing and physical
//! planning, the costly part. Big plannings then wait for a turn (see
//! [`BackgroundPlannings`]): a small query submitted together with big ones has its plan,
//! and its first tasks running, before theirs, beside one of them rather than all.
//!
//! A query is planned with as many partitions (tasks per stage) as its table data
//! earns, one per [`Planner::partition_data_bytes`], up to the session's target: a
//! query over a few small tables runs as one task per stage, without the hops and
//! shuffle files of partitions that would each have next to nothing to do.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::execution::{SessionState, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement;

use super::{StageSpec, Submission};
use crate::catalog::{plan_data_bytes, table_data_bytes};
use crate::planner::{self, PlannerError};
use crate::thread_priority::{Realtime, lower_current_thread_to_idle, raise_current_thread};

/// Queries reading at most this many distinct tables (a join of three) are planned as
/// interactive work; more, and they are planned at the lowest OS priority.
const SMALL_PLAN_TABLES: usize = 3;

/// Logical plans of at most this many nodes (a join of two tables, aggregated, sorted
/// and limited) are planned as interactive work; bigger ones at the lowest OS priority.
const SMALL_PLAN_NODES: usize = 8;

/// Queries reading at most this many bytes of table data (the catalog's files, whole, as
/// measured when it was loaded) are planned as interactive work; a query that reads
/// more is a long query, whose planning (statistics of many row groups) is
/// background work like its tasks, however few nodes it has (TPC-H Q1 has 5).
const SMALL_PLAN_BYTES: u64 = 64 << 20;

/// Default bytes of table data that earn a query one partition, up to its target
/// partitions (`--partition-data-mib`).
pub const DEFAULT_PARTITION_DATA_BYTES: u64 = 32 << 20;

/// A planning thread with nothing to plan ends after this long.
const THREAD_KEEP_ALIVE: Duration = Duration::from_secs(60);

/// How a scheduler plans submissions.
#[derive(Clone)]
pub struct Planner {
    /// The session SQL is planned in.
    pub session: SessionContext,
    /// Whether bigger plans get a lower OS priority while they are planned.
    pub small_first: bool,
    /// The threads plans are made on.
    pub threads: PlanningThreads,
    /// Plannings under way at the lowest OS priority.
    pub background: BackgroundPlannings,
    /// Bytes of table data (the catalog's files, whole) that earn a query one partition,
    /// up to the session's target partitions; 0: every query gets the target. Queries
    /// reading a table of unknown size get the target too.
    pub partition_data_bytes: u64,
}

/// A planned submission.
pub struct Planned {
    /// Its stages, inputs before consumers.
    pub stages: Vec<StageSpec>,
    /// The result schema.
    pub schema: SchemaRef,
    /// True for small SQL (at most [`SMALL_PLAN_TABLES`] tables of at most
    /// [`SMALL_PLAN_BYTES`] in all, a logical plan of at most [`SMALL_PLAN_NODES`]
    /// nodes): an interactive query.
    pub small: bool,
}

/// Plannings of big queries at the lowest OS priority: how many are under way or waiting
/// for their turn (costly work the scheduler knows is coming before it has its cost), and
/// the turns themselves. At most a limit of them (half the cores by default, see
/// [`BackgroundPlannings::with_limit`]) run at once, in the order they started waiting:
/// eight big queries submitted together then plan one after the other beside a small
/// one, instead of eight idle-class threads allocating, faulting and reading table
/// metadata at once (which slowed the small query's planning and task 2–3× while they
/// ran).
#[derive(Debug, Clone)]
pub struct BackgroundPlannings(Arc<PlanningTurns>);

#[derive(Debug)]
struct PlanningTurns {
    /// Under way or waiting.
    count: AtomicUsize,
    /// Plannings that may run at once.
    limit: u64,
    /// Tickets handed out and plannings finished; ticket `t` runs once
    /// `t < finished + limit`.
    tickets: Mutex<Tickets>,
    turn: Condvar,
}

#[derive(Debug, Default)]
struct Tickets {
    issued: u64,
    finished: u64,
}

impl Default for BackgroundPlannings {
    /// Half the machine's cores, at least one.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_limit(cores / 2)
    }
}

impl BackgroundPlannings {
    /// At most `limit` (at least one) plannings at once.
    pub fn with_limit(limit: usize) -> Self {
        Self(Arc::new(PlanningTurns {
            count: AtomicUsize::new(0),
            limit: limit.max(1) as u64,
            tickets: Mutex::new(Tickets::default()),
            turn: Condvar::new(),
        }))
    }

    /// True while at least one is under way or waiting for its turn.
    pub fn any(&self) -> bool {
        self.0.count.load(Ordering::Acquire) > 0
    }

    /// Counts one, blocks the calling thread until it is its turn, and holds the turn
    /// until the returned guard is dropped.
    pub fn start(&self) -> BackgroundPlanning {
        let turns = &self.0;
        turns.count.fetch_add(1, Ordering::AcqRel);
        let mut tickets = turns.tickets.lock().expect("planning turns lock");
        let ticket = tickets.issued;
        tickets.issued += 1;
        while ticket >= tickets.finished + turns.limit {
            tickets = turns.turn.wait(tickets).expect("planning turns lock");
        }
        BackgroundPlanning(self.clone())
    }
}

/// One background planning, counted and holding its turn while it lives.
pub struct BackgroundPlanning(BackgroundPlannings);

impl Drop for BackgroundPlanning {
    fn drop(&mut self) {
        let turns = &(self.0).0;
        turns.tickets.lock().expect("planning turns lock").finished += 1;
        turns.turn.notify_all();
        turns.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One planning: runs on a planning thread, and says whether the thread may plan again
/// (it may not once it moved itself to the lowest OS priority).
type Job = Box<dyn FnOnce() -> bool + Send>;

/// Idle planning threads, each by id with the channel that hands it its next job.
type IdleThreads = Mutex<Vec<(u64, Sender<Job>)>>;

/// Planning threads kept after their planning, so the next query's planning neither
/// starts a thread (its stack mapped under the process's memory-map lock, which
/// low-priority task threads hold too) nor grows a cold malloc arena. A submission takes
/// an idle thread or starts one; threads idle for [`THREAD_KEEP_ALIVE`] end.
#[derive(Clone, Default)]
pub struct PlanningThreads {
    idle: Arc<IdleThreads>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

impl PlanningThreads {
    /// Runs `job` on an idle thread, or on a new one.
    fn run(&self, mut job: Job) -> std::io::Result<()> {
        loop {
            let idle = self.idle.lock().expect("planning threads lock").pop();
            match idle {
                // A thread that ended after it was listed hands the job back.
                Some((_, thread)) => match thread.send(job) {
                    Ok(()) => return Ok(()),
                    Err(returned) => job = returned.0,
                },
                None => {
                    let id = self
                        .next_id
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let threads = self.clone();
                    std::thread::Builder::new()
                        .name("baton-planner".into())
                        .spawn(move || threads.serve(id, job))?;
                    return Ok(());
                }
            }
        }
    }

    /// A planning thread's life: runs `job`, then waits listed as idle for the next.
    fn serve(&self, id: u64, mut job: Job) {
        let (sender, jobs): (Sender<Job>, Receiver<Job>) = std::sync::mpsc::channel();
        loop {
            if !job() {
                return;
            }
            self.idle
                .lock()
                .expect("planning threads lock")
                .push((id, sender.clone()));
            job = match jobs.recv_timeout(THREAD_KEEP_ALIVE) {
                Ok(next) => next,
                Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {
                    let mut idle = self.idle.lock().expect("planning threads lock");
                    let before = idle.len();
                    idle.retain(|(listed, _)| *listed != id);
                    if idle.len() != before {
                        return;
                    }
                    drop(idle);
                    // Taken off the list by a submission whose job is on its way.
                    match jobs.recv() {
                        Ok(next) => next,
                        Err(_) => return,
                    }
                }
            };
        }
    }
}

impl Planner {
    /// Plans `submission` into stages on a planning thread. Its async parts (catalog I/O) run
    /// on that thread too, outside any runtime: local object stores then read files
    /// inline instead of handing each read to a runtime's blocking pool and waiting to be
    /// woken, which under load cost milliseconds per table.
    pub async fn plan(&self, submission: Submission) -> Result<Planned, PlannerError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let planner = self.clone();
        let handed = std::time::Instant::now();
        self.threads
            .run(Box::new(move || {
                let mut background = None;
                // Small queries' plannings run at real-time priority where the process
                // asks for it; a big one is lowered once it is told big.
                if planner.small_first {
                    raise_current_thread(Realtime::Interactive);
                }
                let (wall, cpu) = (std::time::Instant::now(), thread_cpu_time());
                let picked_up = handed.elapsed();
                let planned =
                    futures::executor::block_on(planner.plan_here(submission, &mut background));
                let (wall, cpu) = (wall.elapsed(), thread_cpu_time().saturating_sub(cpu));
                // The planning is over (its guard dropped) before its result is out.
                let lowered = background.take().is_some();
                let _ = done.send(planned);
                tracing::debug!(
                    picked_up_micros = picked_up.as_micros() as u64,
                    wall_micros = wall.as_micros() as u64,
                    cpu_micros = cpu.as_micros() as u64,
                    "planning thread done"
                );
                // A thread lowered for a big planning may not plan again. One kept keeps
                // its priority while it waits: handing it the next small query's
                // planning wakes a real-time thread, which no idle-class thread delays.
                !lowered
            }))
            .map_err(PlannerError::Thread)?;
        result.await.map_err(|_| PlannerError::Aborted)?
    }

    /// Moves the calling thread to the lowest OS priority and waits there for a turn among
    /// the big plannings; the turn lasts while the returned guard lives.
    fn lower_for_background(&self) -> BackgroundPlanning {
        lower_current_thread_to_idle();
        self.background.start()
    }

    /// How many distinct tables a parsed statement reads, and their bytes of data (see
    /// [`table_data_bytes`]): enough to tell a big query before planning it. Tables that
    /// do not resolve count nothing here; planning then fails on them.
    async fn tables_read(
        &self,
        state: &SessionState,
        statement: &Statement,
    ) -> (usize, Option<u64>) {
        let Ok(tables) = state.resolve_table_references(statement) else {
            return (0, Some(0));
        };
        let mut bytes = Some(0u64);
        for table in &tables {
            if let Ok(provider) = self.session.table_provider(table.clone()).await {
                let read = table_data_bytes(provider.as_ref());
                bytes = bytes.zip(read).map(|(sum, read)| sum + read);
            }
        }
        (tables.len(), bytes)
    }

    /// Plans `submission`; when it moves the thread to the lowest priority, it puts in
    /// `background` the guard that counts this planning as under way.
    async fn plan_here(
        &self,
        submission: Submission,
        background: &mut Option<BackgroundPlanning>,
    ) -> Result<Planned, PlannerError> {
        let mut small = false;
        let plan = match submission {
            Submission::Sql(sql) => {
                // `SessionContext::sql` in steps, to classify the query between them.
                let state = self.session.state();
                let dialect = state.config().options().sql_parser.dialect;
                let statement = state.sql_to_statement(&sql, &dialect)?;
                let (tables, bytes) = self.tables_read(&state, &statement).await;
                if self.small_first
                    && (tables > SMALL_PLAN_TABLES || bytes.unwrap_or(0) > SMALL_PLAN_BYTES)
                {
                    tracing::debug!(tables, bytes, "planning a big query at the lowest priority");
                    *background = Some(self.lower_for_background());
                }
                let logical = state.statement_to_plan(statement).await?;
                let frame = self.session.execute_logical_plan(logical).await?;
                let nodes = plan_nodes(frame.logical_plan());
                let bytes = plan_data_bytes(frame.logical_plan());
                small = tables <= SMALL_PLAN_TABLES
                    && nodes <= SMALL_PLAN_NODES
                    && bytes.unwrap_or(0) <= SMALL_PLAN_BYTES;
                if self.small_first && !small && background.is_none() {
                    tracing::debug!(nodes, bytes, "planning a big query at the lowest priority");
                    *background = Some(self.lower_for_background());
                }
                let (mut state, plan) = frame.into_parts();
                let execution = &mut state.config_mut().options_mut().execution;
                execution.target_partitions = partitions_for(
                    bytes,
                    self.partition_data_bytes,
                    execution.target_partitions,
                );
                tracing::debug!(
                    partitions = execution.target_partitions,
                    bytes,
                    "planning with partitions for its data"
                );
                state.create_physical_plan(&plan).await?
            }
            Submission::Plan(bytes) => {
                let ctx: Arc<TaskContext> = self.session.task_ctx();
                planner::decode_plan(&bytes, &ctx)?
            }
        };
        let dag = planner::plan_stages(plan)?;
        let estimates = planner::estimate_stages(&dag);
        let stages = dag
            .stages
            .iter()
            .zip(estimates)
            .map(|(s, estimate)| {
                Ok(StageSpec {
                    cost: estimate.cost,
                    output_rows: estimate.output_rows,
                    cost_per_input_row: estimate.cost_per_input_row,
                    plan: planner::encode_plan(s.plan.clone())?.into(),
                    inputs: s.inputs.clone(),
                    tasks: s.tasks,
                })
            })
            .collect::<Result<Vec<_>, PlannerError>>()?;
        Ok(Planned {
            stages,
            schema: dag.schema,
            small,
        })
    }
}

/// CPU time the calling thread has used so far.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Nodes of a logical plan, subqueries included.
fn plan_nodes(plan: &LogicalPlan) -> usize {
    let mut nodes = 0;
    let _ = plan.apply_with_subqueries(|_| {
        nodes += 1;
        Ok(TreeNodeRecursion::Continue)
    });
    nodes
}

/// Partitions for a query reading `bytes` of table data: one per `per_partition` bytes
/// (at least one), at most `target`; `target` when the bytes are unknown or
/// `per_partition` is 0.
fn partitions_for(bytes: Option<u64>, per_partition: u64, target: usize) -> usize {
    match bytes {
        Some(bytes) if per_partition > 0 => {
            let earned = bytes.div_ceil(per_partition).max(1);
            usize::try_from(earned).map_or(target, |earned| earned.min(target))
        }
        _ => target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A planner over `session` that plans big queries at the lowest priority.
    fn small_first_planner(session: SessionContext, partition_data_bytes: u64) -> Planner {
        Planner {
            session,
            small_first: true,
            threads: Default::default(),
            background: Default::default(),
            partition_data_bytes,
        }
    }

    /// Runs a job that reports its thread and says whether the thread may plan again.
    fn run_on(threads: &PlanningThreads, keep: bool) -> std::thread::ThreadId {
        let (sender, thread) = std::sync::mpsc::channel();
        threads
            .run(Box::new(move || {
                sender.send(std::thread::current().id()).unwrap();
                keep
            }))
            .unwrap();
        thread.recv_timeout(Duration::from_secs(10)).unwrap()
    }

    /// Waits (ten seconds at most) until `count` threads are listed idle.
    fn wait_idle(threads: &PlanningThreads, count: usize) {
        for _ in 0..10_000 {
            if threads.idle.lock().unwrap().len() == count {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("never {count} idle planning threads");
    }

    #[test]
    fn planning_threads_are_reused_unless_a_planning_lowered_its_thread() {
        let threads = PlanningThreads::default();
        let first = run_on(&threads, true);
        wait_idle(&threads, 1);
        // The idle thread plans the next query; this one lowers it, so it ends.
        assert_eq!(run_on(&threads, false), first);
        wait_idle(&threads, 0);
        let third = run_on(&threads, true);
        assert_ne!(third, first);
        wait_idle(&threads, 1);
    }

    #[test]
    fn partitions_follow_the_data_up_to_the_target() {
        let mib = 1 << 20;
        assert_eq!(partitions_for(Some(0), 32 * mib, 4), 1);
        assert_eq!(partitions_for(Some(32 * mib), 32 * mib, 4), 1);
        assert_eq!(partitions_for(Some(32 * mib + 1), 32 * mib, 4), 2);
        assert_eq!(partitions_for(Some(1 << 40), 32 * mib, 4), 4);
        assert_eq!(partitions_for(None, 32 * mib, 4), 4);
        assert_eq!(partitions_for(Some(0), 0, 4), 4);
    }

    #[tokio::test]
    async fn queries_get_partitions_for_their_data_and_much_data_plans_in_the_background() {
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
        let planner = small_first_planner(session, 32 << 20);
        let plan = async |sql: &str| planner.plan(Submission::Sql(sql.into())).await.unwrap();
        let most_tasks = |planned: &Planned| planned.stages.iter().map(|s| s.tasks).max();

        // A few bytes of data: one task in every stage.
        let planned = plan("select x, count(*) from small group by x").await;
        assert!(planned.small);
        assert_eq!(most_tasks(&planned), Some(1));
        // 65 MiB: three partitions of at most 32 MiB, planned as big.
        let planned = plan("select count(*) from big").await;
        assert!(!planned.small);
        assert_eq!(most_tasks(&planned), Some(3));
        // Globs are of unknown size: the session's 4 partitions.
        let planned = plan("select x, count(*) from globbed group by x").await;
        assert!(planned.small);
        assert_eq!(most_tasks(&planned), Some(4));
        assert!(!planner.background.any());
    }

    /// Waits (ten seconds at most) until `count` tickets were handed out.
    fn wait_tickets(plannings: &BackgroundPlannings, count: u64) {
        for _ in 0..10_000 {
            if plannings.0.tickets.lock().unwrap().issued == count {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("never {count} tickets");
    }

    #[test]
    fn big_plannings_take_turns_in_the_order_they_came() {
        let plannings = BackgroundPlannings::with_limit(1);
        let first = plannings.start();
        let (turns, order) = std::sync::mpsc::channel();
        let (release_second, second_released) = std::sync::mpsc::channel::<()>();
        let waiter = |name: &'static str, release: Option<Receiver<()>>| {
            let plannings = plannings.clone();
            let turns = turns.clone();
            std::thread::spawn(move || {
                let _turn = plannings.start();
                turns.send(name).unwrap();
                if let Some(release) = release {
                    release.recv().unwrap();
                }
            })
        };
        let second = waiter("second", Some(second_released));
        wait_tickets(&plannings, 2);
        let third = waiter("third", None);
        wait_tickets(&plannings, 3);
        assert!(plannings.any());
        // Both wait while the first holds the only turn.
        assert!(order.recv_timeout(Duration::from_millis(50)).is_err());
        drop(first);
        assert_eq!(order.recv_timeout(Duration::from_secs(10)), Ok("second"));
        // The third waits for the second's turn to end.
        assert!(order.recv_timeout(Duration::from_millis(50)).is_err());
        release_second.send(()).unwrap();
        assert_eq!(order.recv_timeout(Duration::from_secs(10)), Ok("third"));
        second.join().unwrap();
        third.join().unwrap();
        assert!(!plannings.any());
    }

    #[test]
    fn as_many_big_plannings_as_the_limit_run_at_once() {
        let plannings = BackgroundPlannings::with_limit(2);
        let _first = plannings.start();
        let _second = plannings.start();
        let (turns, order) = std::sync::mpsc::channel();
        let third = {
            let plannings = plannings.clone();
            std::thread::spawn(move || {
                let _turn = plannings.start();
                turns.send(()).unwrap();
            })
        };
        wait_tickets(&plannings, 3);
        assert!(order.recv_timeout(Duration::from_millis(50)).is_err());
        drop(_first);
        assert!(order.recv_timeout(Duration::from_secs(10)).is_ok());
        third.join().unwrap();
    }

    #[tokio::test]
    async fn queries_of_many_tables_are_planned_as_big_from_their_sql() {
        let session = SessionContext::new();
        for name in ["a", "b", "c", "d"] {
            session
                .sql(&format!("create table {name} (x bigint)"))
                .await
                .unwrap();
        }
        let planner = small_first_planner(session, 0);
        let small = async |sql: &str| {
            planner
                .plan(Submission::Sql(sql.into()))
                .await
                .unwrap()
                .small
        };
        assert!(small("select count(*) from a join b on a.x = b.x").await);
        assert!(small("select count(*) from a join b on a.x = b.x join c on b.x = c.x").await);
        assert!(!small("select * from a, b, c, d").await);
        // Four tables, through subqueries.
        assert!(!small("select * from a where x in (select x from b) and x in (select x from c) and x in (select x from d)").await);
        assert!(!planner.background.any());
        // Each table counts once.
        let state = planner.session.state();
        let statement = state
            .sql_to_statement(
                "select count(*) from a join b on a.x = b.x join c on b.x = c.x join a as e on c.x = e.x",
                &state.config().options().sql_parser.dialect,
            )
            .unwrap();
        assert_eq!(planner.tables_read(&state, &statement).await.0, 3);
    }

    #[tokio::test]
    async fn plan_nodes_counts_subqueries_too() {
        let ctx = SessionContext::new();
        let plan = |sql: &'static str| {
            let ctx = ctx.clone();
            async move { ctx.sql(sql).await.unwrap().logical_plan().clone() }
        };
        let small = plan_nodes(&plan("select 1 as a").await);
        let nested = plan_nodes(&plan("select a from (select 1 as a) where a in (select 1)").await);
        assert!(small >= 2, "projection over an empty relation: {small}");
        assert!(nested > small + 2, "{nested} nodes against {small}");
    }
}
