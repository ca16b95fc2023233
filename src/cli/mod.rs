//! The work behind each `baton` subcommand, callable from tests as well as `main.rs`.

mod shell;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;
use tokio::net::TcpListener;

use crate::catalog::{self, CatalogError, TableFormat};
use crate::client::bench::fairness::{
    FairnessBench, format_fairness_report, run_fairness_bench as run_fairness,
};
use crate::client::bench::scheduler::{
    SchedulerBench, format_scheduler_report, run_scheduler_bench as run_sched,
};
use crate::client::bench::{
    self, BenchError, TpchBench, format_report, run_tpch_bench as run_bench,
};
use crate::client::{BatonClient, ClientError, OutputFormat, QueryResult, format_batches};
use crate::cluster::{ClusterConfig, ClusterError, LocalCluster};
use crate::config::distributed_session_config;
use crate::datagen::{self, DatagenError};
use crate::executor::{Executor, ExecutorConfig, ExecutorError};
use crate::planner::{self, PlannerError};
use crate::proto::{QueryState, QueryStatus, StageState};
use crate::scheduler::{PolicyKind, Scheduler, SchedulerConfig, SchedulerError, status_to_json};
use crate::telemetry::{self, JsonRoute, TelemetryError};

/// Scale factor of the TPC-H data an embedded cluster uses when no catalog is given.
pub const DEFAULT_SCALE: f64 = 0.1;

/// Errors a subcommand ends with; printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Starting an embedded cluster failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// Talking to the scheduler failed, or the query failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The scheduler failed.
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    /// The executor failed.
    #[error(transparent)]
    Executor(#[from] ExecutorError),
    /// Data generation failed.
    #[error(transparent)]
    Datagen(#[from] DatagenError),
    /// The catalog could not be loaded.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// Planning on the client failed.
    #[error(transparent)]
    Planner(#[from] PlannerError),
    /// Reading input or binding failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A benchmark failed.
    #[error(transparent)]
    Bench(#[from] BenchError),
    /// The metrics endpoint could not start.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    /// Results could not be printed.
    #[error("printing results: {0}")]
    Format(#[from] datafusion::arrow::error::ArrowError),
    /// A statement of a file failed.
    #[error("statement {index} failed: {cause}\n  statement: {statement}")]
    Statement {
        /// 1-based position in the file.
        index: usize,
        /// The statement, shortened.
        statement: String,
        /// Why it failed.
        cause: Box<CliError>,
    },
    /// The interactive shell's terminal failed.
    #[error("shell: {0}")]
    Shell(String),
    /// Some statements failed (with --continue-on-error).
    #[error("{0} statement(s) failed")]
    Failures(usize),
}

/// Sets up `tracing` output on stderr; `RUST_LOG` overrides `default`.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Options of an embedded or standalone cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Catalog; None means the cached TPC-H SF 0.1.
    pub catalog: Option<PathBuf>,
    /// Executors.
    pub executors: usize,
    /// Slots per executor.
    pub slots: u32,
    /// Partitions per stage, at most.
    pub partitions: usize,
    /// Bytes of table data that earn a query one partition (0: always `partitions`).
    pub partition_data_bytes: u64,
    /// Scheduling policy.
    pub policy: PolicyKind,
    /// Aging half-life of the `priority` policy, seconds.
    pub aging_half_life: f64,
    /// Tasks each executor takes beyond its slots when urgent; None: as many as slots.
    pub preempt_slots: Option<u32>,
}

/// The catalog to use: the given one, or TPC-H SF 0.1 generated into the cache.
pub fn catalog_or_default(catalog: Option<PathBuf>) -> Result<PathBuf, CliError> {
    if let Some(path) = catalog {
        return Ok(path);
    }
    let cache = datagen::cache_dir();
    let dir_name = format!("tpch-sf{DEFAULT_SCALE}-parquet");
    if !cache.join(&dir_name).join("catalog.toml").exists() {
        eprintln!(
            "generating TPC-H SF {DEFAULT_SCALE} into {} (first run only)…",
            cache.display()
        );
    }
    Ok(datagen::cached_tpch(
        &cache,
        DEFAULT_SCALE,
        TableFormat::Parquet,
    )?)
}

async fn start_cluster(
    options: ClusterOptions,
    bind: SocketAddr,
) -> Result<LocalCluster, CliError> {
    let catalog = catalog_or_default(options.catalog)?;
    Ok(LocalCluster::start(ClusterConfig {
        executors: options.executors.max(1),
        slots: options.slots.max(1),
        catalog: Some(catalog),
        target_partitions: options.partitions,
        partition_data_bytes: options.partition_data_bytes,
        bind,
        policy: options.policy,
        aging_half_life: options.aging_half_life,
        preempt_slots: options.preempt_slots,
        ..Default::default()
    })
    .await?)
}

/// Starts an executor tries, after its scheduler went away, before it gives up; each
/// start waits up to 30 s for the scheduler to answer.
const EXECUTOR_RESTARTS: u32 = 10;

/// Pause between an executor's stop and its next start.
const RESTART_DELAY: std::time::Duration = std::time::Duration::from_millis(200);

async fn until_ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

/// Serves `/metrics` on `addr`, and the scheduler's JSON query API when there is one.
async fn serve_metrics(addr: SocketAddr, scheduler: Option<&Scheduler>) -> Result<(), CliError> {
    let json = scheduler.map(|scheduler| {
        let scheduler = scheduler.clone();
        let route: JsonRoute = Arc::new(move |path: &str| scheduler.status_json(path));
        ("/api/queries", route)
    });
    let bound = telemetry::serve_http(addr, json).await?;
    tracing::info!(address = %bound, "metrics endpoint listening");
    Ok(())
}

/// `baton scheduler`.
pub async fn run_scheduler(
    bind: SocketAddr,
    config: SchedulerConfig,
    metrics: Option<SocketAddr>,
) -> Result<(), CliError> {
    let scheduler = Scheduler::new(config).await?;
    if let Some(addr) = metrics {
        serve_metrics(addr, Some(&scheduler)).await?;
    }
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|source| CliError::Io {
            what: format!("binding the scheduler to {bind}"),
            source,
        })?;
    tracing::info!(address = %bind, "scheduler listening");
    scheduler.serve(listener, until_ctrl_c()).await?;
    Ok(())
}

/// `baton executor`: runs until Ctrl-C. When its scheduler goes away (a restart, say), it
/// starts over and registers again, since a new scheduler knows nothing of the old
/// connection; it gives up after 10 starts in a row find no scheduler.
pub async fn run_executor(
    config: ExecutorConfig,
    metrics: Option<SocketAddr>,
) -> Result<(), CliError> {
    if let Some(addr) = metrics {
        serve_metrics(addr, None).await?;
    }
    // Failed starts in a row after a lost connection, each waiting for the scheduler.
    let mut failed_restarts: Option<u32> = None;
    loop {
        let started = tokio::select! {
            started = Executor::start(config.clone()) => started,
            _ = until_ctrl_c() => return Ok(()),
        };
        let mut executor = match (started, failed_restarts) {
            (Ok(executor), _) => executor,
            // The scheduler is not back yet, or the old endpoints still hold their ports.
            (Err(e), Some(failed)) if failed + 1 < EXECUTOR_RESTARTS => {
                tracing::warn!(error = %e, "executor could not start again; retrying");
                failed_restarts = Some(failed + 1);
                tokio::time::sleep(RESTART_DELAY).await;
                continue;
            }
            (Err(e), _) => return Err(e.into()),
        };
        tokio::select! {
            _ = executor.wait() => tracing::warn!("scheduler went away; connecting again"),
            _ = until_ctrl_c() => {
                tracing::info!("interrupted; executor stops");
                return Ok(());
            }
        }
        drop(executor);
        failed_restarts = Some(0);
        tokio::time::sleep(RESTART_DELAY).await;
    }
}

/// `baton standalone`.
pub async fn run_standalone(
    bind: SocketAddr,
    options: ClusterOptions,
    metrics: Option<SocketAddr>,
) -> Result<(), CliError> {
    let executors = options.executors;
    let cluster = start_cluster(options, bind).await?;
    if let Some(addr) = metrics {
        serve_metrics(addr, Some(cluster.scheduler())).await?;
    }
    eprintln!(
        "baton standalone: scheduler on {} with {executors} executors (Ctrl-C stops)",
        cluster.scheduler_address()
    );
    until_ctrl_c().await;
    Ok(())
}

/// Where `baton sql` reads statements from.
#[derive(Debug, Clone)]
pub enum SqlSource {
    /// One statement (or several separated by `;`).
    Command(String),
    /// A file of statements.
    File(PathBuf),
    /// The interactive shell (statements from the terminal or standard input).
    Interactive,
}

/// Where `baton sql` runs statements.
#[derive(Debug, Clone)]
pub enum SqlTarget {
    /// A running scheduler; with a catalog, the client plans and submits the plan.
    Remote {
        /// Scheduler address.
        address: String,
        /// Catalog to plan against locally.
        catalog: Option<PathBuf>,
    },
    /// An embedded cluster.
    Embedded(ClusterOptions),
}

/// Splits SQL text into statements at `;`, outside quotes and comments.
pub fn split_statements(text: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                current.push(c);
            }
            (Some(_), c) => current.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                current.push(c);
            }
            (None, '-') if chars.peek() == Some(&'-') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        current.push('\n');
                        break;
                    }
                }
            }
            (None, ';') => {
                statements.push(std::mem::take(&mut current));
            }
            (None, c) => current.push(c),
        }
    }
    statements.push(current);
    statements
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

struct Session {
    client: BatonClient,
    planner: Option<SessionContext>,
    _cluster: Option<LocalCluster>,
}

impl Session {
    async fn open(target: SqlTarget) -> Result<Self, CliError> {
        match target {
            SqlTarget::Remote { address, catalog } => {
                let planner = match catalog {
                    Some(path) => {
                        let ctx = SessionContext::new_with_config(distributed_session_config(
                            crate::config::DEFAULT_TARGET_PARTITIONS,
                        ));
                        catalog::register_catalog(&ctx, &path).await?;
                        Some(ctx)
                    }
                    None => None,
                };
                Ok(Self {
                    client: BatonClient::connect(&address).await?,
                    planner,
                    _cluster: None,
                })
            }
            SqlTarget::Embedded(options) => {
                let cluster = start_cluster(options, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
                Ok(Self {
                    client: cluster.client().await?,
                    planner: None,
                    _cluster: Some(cluster),
                })
            }
        }
    }

    /// Plans (when this session plans locally) and submits `sql`; returns the query id.
    async fn submit(&mut self, sql: &str) -> Result<String, CliError> {
        Ok(match &self.planner {
            Some(ctx) => {
                let plan = async {
                    let frame = ctx.sql(sql).await?;
                    frame.create_physical_plan().await
                }
                .await
                .map_err(PlannerError::from)?;
                let bytes = planner::encode_plan(plan)?;
                self.client.submit_plan(bytes, sql).await?
            }
            None => self.client.submit_sql(sql).await?,
        })
    }

    async fn run(&mut self, sql: &str) -> Result<QueryResult, CliError> {
        let id = self.submit(sql).await?;
        Ok(self.client.fetch(&id).await?)
    }
}

fn print_result(result: &QueryResult, format: OutputFormat, elapsed: f64) -> Result<(), CliError> {
    let batches = if result.batches.is_empty() {
        vec![RecordBatch::new_empty(result.schema.clone())]
    } else {
        result.batches.clone()
    };
    let text = format_batches(&batches, format)?;
    if !text.is_empty() {
        println!("{}", text.trim_end());
    }
    eprintln!(
        "{} row(s) in {elapsed:.3} s (query {})",
        result.rows(),
        result.query_id
    );
    Ok(())
}

fn shorten(statement: &str) -> String {
    let one_line = statement.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 120 {
        format!("{}…", one_line.chars().take(120).collect::<String>())
    } else {
        one_line
    }
}

/// `baton sql`.
pub async fn run_sql(
    target: SqlTarget,
    source: SqlSource,
    format: OutputFormat,
    continue_on_error: bool,
) -> Result<(), CliError> {
    let text = match &source {
        SqlSource::Command(sql) => sql.clone(),
        SqlSource::File(path) => read_file(path)?,
        SqlSource::Interactive => {
            let mut session = Session::open(target).await?;
            return shell::run_shell(&mut session, format).await;
        }
    };
    let statements = split_statements(&text);
    let mut session = Session::open(target).await?;
    let single = statements.len() == 1;
    let mut failures = 0;
    for (i, statement) in statements.iter().enumerate() {
        let started = Instant::now();
        match session.run(statement).await {
            Ok(result) => print_result(&result, format, started.elapsed().as_secs_f64())?,
            Err(e) if single => return Err(e),
            Err(e) => {
                let error = CliError::Statement {
                    index: i + 1,
                    statement: shorten(statement),
                    cause: Box::new(e),
                };
                if !continue_on_error {
                    return Err(error);
                }
                eprintln!("error: {error}");
                failures += 1;
            }
        }
    }
    if failures > 0 {
        return Err(CliError::Failures(failures));
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|source| CliError::Io {
        what: format!("reading {}", path.display()),
        source,
    })
}

/// `baton datagen tpch`.
pub fn run_datagen(scale: f64, out: PathBuf, format: TableFormat) -> Result<(), CliError> {
    let started = Instant::now();
    let catalog = datagen::generate_tpch(scale, &out, format)?;
    eprintln!(
        "TPC-H SF {scale} written to {} in {:.1} s; catalog: {}",
        out.display(),
        started.elapsed().as_secs_f64(),
        catalog.display()
    );
    Ok(())
}

fn state_name(state: i32) -> &'static str {
    match QueryState::try_from(state).unwrap_or(QueryState::Unspecified) {
        QueryState::Queued => "queued",
        QueryState::Running => "running",
        QueryState::Succeeded => "succeeded",
        QueryState::Failed => "failed",
        QueryState::Cancelled => "cancelled",
        QueryState::Unspecified => "unknown",
    }
}

fn stage_state_name(state: i32) -> &'static str {
    match StageState::try_from(state).unwrap_or(StageState::Unspecified) {
        StageState::Waiting => "waiting",
        StageState::Running => "running",
        StageState::Done => "done",
        StageState::Unspecified => "unknown",
    }
}

fn print_status(status: &QueryStatus, detailed: bool) {
    let elapsed = match (status.started_at_ms, status.ended_at_ms) {
        (s, e) if s > 0 && e >= s => format!("{:.3} s", (e - s) as f64 / 1000.0),
        _ => "-".into(),
    };
    println!(
        "{}  {:<9}  {:>9}  {}",
        status.query_id,
        state_name(status.state),
        elapsed,
        shorten(&status.label)
    );
    if !status.error.is_empty() {
        println!("  error: {}", status.error);
    }
    if detailed {
        for stage in &status.stages {
            println!(
                "  stage {:>2} {:<8} tasks {}/{} done, {} running  inputs {:?}{}",
                stage.stage_id,
                stage_state_name(stage.state),
                stage.tasks_done,
                stage.tasks_total,
                stage.tasks_running,
                stage.input_stages,
                if stage.running.is_empty() {
                    String::new()
                } else {
                    let tasks: Vec<String> = stage
                        .running
                        .iter()
                        .map(|t| {
                            let pause = if t.suspended { " (suspended)" } else { "" };
                            format!("{}@{}{pause}", t.partition, t.executor_id)
                        })
                        .collect();
                    format!("  running {}", tasks.join(","))
                }
            );
        }
    }
}

/// `baton bench tpch`.
pub async fn run_tpch_bench(bench: TpchBench) -> Result<(), CliError> {
    if !datagen::cache_dir()
        .join(format!("tpch-sf{}-parquet", bench.scale))
        .join("catalog.toml")
        .exists()
    {
        eprintln!("generating TPC-H SF {} (first run only)…", bench.scale);
    }
    let report = run_bench(&bench).await?;
    println!("{}", format_report(&report));
    if let Some(out) = &bench.out {
        eprintln!("results and plots written to {}", out.display());
    }
    Ok(())
}

/// `baton bench fairness`.
pub async fn run_fairness_bench(bench: FairnessBench, out: PathBuf) -> Result<(), CliError> {
    let preempt = bench.preempt_slots.unwrap_or(bench.slots);
    eprintln!(
        "fairness: {} long + {} short queries per policy on {} executors × {} slots \
         (+{preempt} for preemption), TPC-H SF {}",
        bench.long_queries, bench.short_queries, bench.executors, bench.slots, bench.scale
    );
    let results = run_fairness(&bench).await?;
    println!("{}", format_fairness_report(&results));
    eprintln!(
        "OS priorities: {}",
        if crate::thread_priority::realtime_in_effect() {
            "real-time for the threads interactive work waits on"
        } else {
            "normal (--no-realtime, or real-time refused by the OS)"
        }
    );
    let path = bench::write_json(&out, "fairness.json", &results)?;
    eprintln!("results written to {}", path.display());
    Ok(())
}

/// `baton bench scheduler`.
pub async fn run_scheduler_bench(bench: SchedulerBench, out: PathBuf) -> Result<(), CliError> {
    let report = run_sched(&bench).await?;
    println!("{}", format_scheduler_report(&report));
    let path = bench::write_json(&out, "scheduler.json", &report)?;
    eprintln!("results written to {}", path.display());
    Ok(())
}

/// `baton status`.
pub async fn run_status(
    scheduler: &str,
    query_id: Option<String>,
    json: bool,
) -> Result<(), CliError> {
    let mut client = BatonClient::connect(scheduler).await?;
    if json {
        let value = match query_id {
            Some(id) => status_to_json(&client.status(&id).await?),
            None => {
                serde_json::Value::Array(client.list().await?.iter().map(status_to_json).collect())
            }
        };
        println!("{value:#}");
        return Ok(());
    }
    match query_id {
        Some(id) => print_status(&client.status(&id).await?, true),
        None => {
            for status in client.list().await? {
                print_status(&status, false);
            }
        }
    }
    Ok(())
}

/// `baton cancel`.
pub async fn run_cancel(scheduler: &str, query_id: &str) -> Result<(), CliError> {
    let mut client = BatonClient::connect(scheduler).await?;
    if client.cancel(query_id).await? {
        println!("cancelled {query_id}");
    } else {
        println!("query {query_id} had already ended");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_statements_outside_quotes_and_comments() {
        let text = "select ';' as a; -- a comment; still comment\nselect 2;\n\n";
        assert_eq!(split_statements(text), vec!["select ';' as a", "select 2"]);
        assert!(split_statements(" ;; ").is_empty());
    }
}
