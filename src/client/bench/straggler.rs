//! `baton bench straggler`: TPC-H on executor processes of which one is slow (a CPU cap
//! from a cgroup of its own), with split units, speculation and work stealing on, then
//! all off, then on the fast executors alone. The scheduler runs in the benchmark's
//! process, so that it can read the scheduler's task timeline.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::BenchError;
use super::cpu_limit::CpuLimit;
use super::plots;
use super::tpch::executor_spans;
use crate::catalog::TableFormat;
use crate::client::BatonClient;
use crate::config::Switch;
use crate::datagen;
use crate::scheduler::{Scheduler, SchedulerConfig, TaskSpan};
use crate::tpch::QUERIES;

/// How long the executor processes may take to register.
const START_PATIENCE: Duration = Duration::from_secs(60);

/// What `baton bench straggler` runs.
#[derive(Debug, Clone, clap::Args)]
pub struct StragglerBench {
    /// TPC-H scale factor.
    #[arg(long, default_value = "1")]
    pub scale: f64,
    /// Executor processes (the last one is slowed).
    #[arg(long, default_value = "3")]
    pub executors: usize,
    /// Task slots per executor.
    #[arg(long, default_value = "2")]
    pub slots: u32,
    /// Cores of CPU the slow executor may use (0.25: a quarter of one core).
    #[arg(long, default_value = "0.25")]
    pub slow_cpu: f64,
    /// TPC-H queries to run (default: all 22).
    #[arg(long, value_delimiter = ',')]
    pub queries: Vec<u32>,
    /// Directory for straggler.json and the timelines.
    #[arg(long, default_value = "bench-results")]
    pub out: Option<PathBuf>,
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct StragglerRun {
    /// "on", "off" or "fast only".
    pub name: String,
    /// Executors.
    pub executors: usize,
    /// Whether the slow one is among them.
    pub with_slow: bool,
    /// Seconds for all the queries, one after another.
    pub makespan_seconds: f64,
    /// Copies started (speculative and stolen).
    pub copies_started: u32,
    /// Copies that finished before the attempt they copied.
    pub copies_won: u32,
    /// Per executor: its id, tasks finished, busy slot-seconds.
    pub per_executor: Vec<(String, usize, f64)>,
}

/// The benchmark's report.
#[derive(Debug, Clone, Serialize)]
pub struct StragglerReport {
    /// TPC-H scale factor.
    pub scale: f64,
    /// Cores the slow executor had.
    pub slow_cpu: f64,
    /// The runs: on, off, fast only.
    pub runs: Vec<StragglerRun>,
}

/// Runs the three configurations; with `out`, writes straggler.json and a timeline per
/// run there.
pub async fn run_straggler_bench(bench: &StragglerBench) -> Result<StragglerReport, BenchError> {
    let catalog = datagen::cached_tpch(&datagen::cache_dir(), bench.scale, TableFormat::Parquet)?;
    let binary = std::env::current_exe()
        .map_err(|e| BenchError::Processes(format!("finding the baton binary: {e}")))?;
    let executors = bench.executors.max(2);
    let mut runs = Vec::new();
    let mut timelines = Vec::new();
    for (name, on, count, with_slow) in [
        ("on", true, executors, true),
        ("off", false, executors, true),
        ("fast only", true, executors - 1, false),
    ] {
        let mut config = SchedulerConfig {
            catalog: Some(catalog.clone()),
            ..SchedulerConfig::default()
        };
        if !on {
            config.speculation = Switch::Off;
            config.work_stealing = Switch::Off;
            config.split_unit_bytes = 0;
            config.slow_executor_factor = 0.0;
        }
        let (run, svg) = run_once(bench, &binary, &config, name, count, with_slow).await?;
        timelines.push((format!("straggler-{}.svg", name.replace(' ', "-")), svg));
        runs.push(run);
    }
    let report = StragglerReport {
        scale: bench.scale,
        slow_cpu: bench.slow_cpu,
        runs,
    };
    if let Some(out) = &bench.out {
        super::write_json(out, "straggler.json", &report)?;
        for (file, svg) in &timelines {
            super::write_text(out, file, svg)?;
        }
    }
    Ok(report)
}

/// One configuration: a scheduler here, `count` executor processes (the last one
/// slowed when `with_slow`), the queries one after another.
async fn run_once(
    bench: &StragglerBench,
    binary: &Path,
    config: &SchedulerConfig,
    name: &str,
    count: usize,
    with_slow: bool,
) -> Result<(StragglerRun, String), BenchError> {
    let scheduler = Scheduler::new(config).await?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| BenchError::Processes(format!("binding the scheduler: {e}")))?;
    let address = listener
        .local_addr()
        .map_err(|e| BenchError::Processes(format!("the scheduler's address: {e}")))?
        .to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(scheduler.serve(listener, async move {
        let _ = stopped.await;
    })?);
    let work =
        tempfile::tempdir().map_err(|e| BenchError::Processes(format!("a work directory: {e}")))?;
    let mut executors = Executors::default();
    for n in 1..=count {
        let id = if with_slow && n == count {
            "slow".to_string()
        } else {
            format!("fast-{n}")
        };
        executors.spawn(binary, &address, work.path(), &id, bench.slots)?;
    }
    let _limit = if with_slow {
        let pid = executors.0.last().map(|(_, c)| c.id()).unwrap_or_default();
        Some(CpuLimit::apply(pid, bench.slow_cpu).map_err(BenchError::Processes)?)
    } else {
        None
    };
    let deadline = Instant::now() + START_PATIENCE;
    while scheduler.executors().0 < count {
        if Instant::now() > deadline {
            return Err(BenchError::Processes(format!(
                "{count} executor processes did not register within {START_PATIENCE:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = BatonClient::connect(&address)
        .await
        .map_err(|source| BenchError::Query { query: 0, source })?;
    let started = Instant::now();
    let (mut copies_started, mut copies_won) = (0, 0);
    for query in QUERIES
        .iter()
        .filter(|q| bench.queries.is_empty() || bench.queries.contains(&q.number))
    {
        let failed = |source| BenchError::Query {
            query: query.number,
            source,
        };
        let result = client.sql(query.sql).await.map_err(failed)?;
        let status = client.status(&result.query_id).await.map_err(failed)?;
        copies_started += status.stages.iter().map(|s| s.copies_started).sum::<u32>();
        copies_won += status.stages.iter().map(|s| s.copies_won).sum::<u32>();
    }
    let makespan = started.elapsed().as_secs_f64();
    let spans = scheduler.timeline(started);
    let ids: Vec<String> = executors.0.iter().map(|(id, _)| id.clone()).collect();
    let (per_executor, svg) = per_executor(&ids, &spans, started, makespan, bench.slots, name);
    drop(executors);
    let _ = stop.send(());
    let _ = server.await;
    Ok((
        StragglerRun {
            name: name.to_string(),
            executors: count,
            with_slow,
            makespan_seconds: makespan,
            copies_started,
            copies_won,
            per_executor,
        },
        svg,
    ))
}

/// Tasks and busy seconds per executor, and the run's timeline plot.
fn per_executor(
    ids: &[String],
    spans: &[TaskSpan],
    started: Instant,
    wall: f64,
    slots: u32,
    name: &str,
) -> (Vec<(String, usize, f64)>, String) {
    let mut queries: Vec<Arc<str>> = Vec::new();
    let mut rows = Vec::new();
    let mut figures = Vec::new();
    for id in ids {
        let mine = executor_spans(spans, id, started, &mut queries);
        let busy = mine.iter().fold(0.0, |b, s| b + (s.end - s.start));
        figures.push((id.clone(), mine.len(), busy));
        rows.push((id.clone(), slots, mine));
    }
    let title = format!("Stragglers, {name}: tasks per executor slot");
    (figures, plots::timeline(&title, wall, &rows))
}

/// The report as text: makespans, their ratios, and each executor's share.
pub fn format_straggler_report(report: &StragglerReport) -> String {
    let mut out = format!(
        "TPC-H SF {} in sequence; the slow executor has {} cores\n",
        report.scale, report.slow_cpu
    );
    let makespan = |name: &str| {
        report
            .runs
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.makespan_seconds)
    };
    for run in &report.runs {
        out.push_str(&format!(
            "{:<10} {} executors{}: {:7.2} s, copies {} started / {} won\n",
            run.name,
            run.executors,
            if run.with_slow { " (one slow)" } else { "" },
            run.makespan_seconds,
            run.copies_started,
            run.copies_won
        ));
        for (id, tasks, busy) in &run.per_executor {
            out.push_str(&format!(
                "    {id:<8} {tasks:5} tasks, busy {busy:7.1} slot-s\n"
            ));
        }
    }
    if let (Some(on), Some(off), Some(fast)) =
        (makespan("on"), makespan("off"), makespan("fast only"))
    {
        out.push_str(&format!(
            "on / off: {:.2}x   on / fast only: {:.2}x\n",
            on / off,
            on / fast
        ));
    }
    out
}

/// Executor processes, killed when dropped.
#[derive(Default)]
struct Executors(Vec<(String, Child)>);

impl Executors {
    fn spawn(
        &mut self,
        binary: &Path,
        scheduler: &str,
        work: &Path,
        id: &str,
        slots: u32,
    ) -> Result<(), BenchError> {
        let child = Command::new(binary)
            .args(["executor", "--scheduler", scheduler, "--id", id])
            .args(["--slots", &slots.to_string()])
            .arg("--work-dir")
            .arg(work)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| BenchError::Processes(format!("starting executor {id}: {e}")))?;
        self.0.push((id.to_string(), child));
        Ok(())
    }
}

impl Drop for Executors {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
