//! `baton bench tpch`: the 22 TPC-H queries on Baton (embedded clusters of several sizes,
//! or a running scheduler), optionally against single-node DataFusion on the same data in
//! the same run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use datafusion::prelude::{SessionConfig, SessionContext};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::memory::{ProcessPeak, mib, peak_rss, reset_peak_rss};
use super::processes::ProcessCluster;
use super::{BenchError, plots, text_table, write_json, write_text};
use crate::catalog::{TableFormat, register_catalog};
use crate::client::BatonClient;
use crate::cluster::{ClusterConfig, LocalCluster};
use crate::config::{host_cores, parse_mib};
use crate::datagen;
use crate::executor::ExecutorConfig;
use crate::proto::QueryStatus;
use crate::scheduler::TaskSpan;
use crate::tpch::{QUERIES, TpchQuery};

/// What to run (the flags of `baton bench tpch`).
#[derive(Debug, Clone, clap::Args)]
pub struct TpchBench {
    /// Scale factor; data is generated and cached on first use.
    #[arg(long, default_value = "0.1")]
    pub scale: f64,
    /// Executor counts to run with, a fresh cluster each (e.g. 1,2,4).
    #[arg(long, value_delimiter = ',', default_value = "2")]
    pub executors: Vec<usize>,
    /// Slots per executor; default: the executor's own (the host's cores).
    #[arg(long)]
    pub slots: Option<u32>,
    /// Partitions per stage at most; default: the scheduler's own (the executors' slots).
    #[arg(long)]
    pub partitions: Option<usize>,
    /// MiB of table data that earn a query one partition; default: the scheduler's own.
    #[arg(long = "partition-data-mib", value_name = "MIB", value_parser = parse_mib)]
    pub partition_data_bytes: Option<u64>,
    /// Partitions of the single-node baseline; default: the host's cores.
    #[arg(long)]
    pub baseline_partitions: Option<usize>,
    /// Memory limit of each executor; default: the executor's own.
    #[arg(long = "memory-limit", value_name = "MIB", value_parser = parse_mib)]
    pub memory_limit: Option<u64>,
    /// Run the cluster inside this process (and plot each executor's tasks over time)
    /// instead of as a scheduler process and executor processes.
    #[arg(long)]
    pub embedded: bool,
    /// Run the cluster with authentication and TLS on (a users file, a cluster secret
    /// and certificates made for the run), as across hosts; separate processes only.
    #[arg(long, conflicts_with = "embedded")]
    pub secure: bool,
    /// Runs of each query; the fastest counts.
    #[arg(long, default_value = "1", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub iterations: usize,
    /// Submit all queries at once instead of one after another.
    #[arg(long)]
    pub concurrent: bool,
    /// Use a running scheduler instead of embedded clusters.
    #[arg(long)]
    pub scheduler: Option<String>,
    /// Also run single-node DataFusion on the same data and print the ratios.
    #[arg(long)]
    pub baseline: bool,
    /// Only these queries (e.g. 1,5,22).
    #[arg(long, value_delimiter = ',')]
    pub queries: Vec<u32>,
    /// Directory for tpch.json and the SVG plots.
    #[arg(long, default_value = "bench-results")]
    pub out: Option<PathBuf>,
}

/// Seconds of each iteration of one query.
#[derive(Debug, Clone, Serialize)]
pub struct QueryTiming {
    /// TPC-H query number.
    pub query: u32,
    /// Wall seconds per iteration.
    pub seconds: Vec<f64>,
    /// Result rows.
    pub rows: usize,
    /// The stages of its last Baton run.
    pub stages: Vec<StageTiming>,
}

/// One stage of a query as it ran on Baton.
#[derive(Debug, Clone, Serialize)]
pub struct StageTiming {
    /// Stage id.
    pub stage: u32,
    /// Its operators, top down.
    pub operators: String,
    /// Its tasks.
    pub tasks: u32,
    /// Wall seconds from its first task's push to its last task's end.
    pub seconds: f64,
    /// Seconds its tasks ran, summed over them.
    pub task_seconds: f64,
}

impl StageTiming {
    /// The stages of a finished query's status.
    fn of(status: &QueryStatus) -> Vec<Self> {
        status
            .stages
            .iter()
            .map(|s| Self {
                stage: s.stage_id,
                operators: s.operators.clone(),
                tasks: s.tasks_total,
                seconds: s.ended_at_ms.saturating_sub(s.started_at_ms) as f64 / 1000.0,
                task_seconds: s.task_micros as f64 / 1e6,
            })
            .collect()
    }
}

impl QueryTiming {
    /// The fastest iteration.
    pub fn best(&self) -> f64 {
        self.seconds.iter().copied().fold(f64::INFINITY, f64::min)
    }
}

/// Slot-seconds an executor spent running tasks and left idle during a run.
#[derive(Debug, Clone, Serialize)]
pub struct ExecutorUse {
    /// Executor id.
    pub executor: String,
    /// Slot-seconds running tasks.
    pub busy_seconds: f64,
    /// Slot-seconds idle.
    pub idle_seconds: f64,
}

/// The timings of one system (Baton with N executors, or the baseline).
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// "baton" or "datafusion".
    pub system: String,
    /// Executors (0 for the baseline).
    pub executors: usize,
    /// Per-query timings.
    pub queries: Vec<QueryTiming>,
    /// Wall seconds of the whole run (all iterations).
    pub wall_seconds: f64,
    /// Per executor, busy and idle slot-seconds (embedded clusters only).
    pub utilization: Vec<ExecutorUse>,
    /// Peak resident memory of each process of the run (one for an embedded cluster,
    /// none for a running scheduler).
    pub peak_rss: Vec<ProcessPeak>,
}

impl RunReport {
    /// Sum over queries of the best iteration.
    pub fn total(&self) -> f64 {
        self.queries.iter().map(QueryTiming::best).sum()
    }
}

/// A whole benchmark: one report per system and size.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Scale factor.
    pub scale: f64,
    /// Slots per executor, when set.
    pub slots: Option<u32>,
    /// Partitions per stage at most, when set.
    pub partitions: Option<usize>,
    /// The runs.
    pub runs: Vec<RunReport>,
}

fn selected(queries: &[u32]) -> Vec<TpchQuery> {
    QUERIES
        .iter()
        .copied()
        .filter(|q| queries.is_empty() || queries.contains(&q.number))
        .collect()
}

async fn run_baton(
    client: &BatonClient,
    queries: &[TpchQuery],
    iterations: usize,
    concurrent: bool,
    progress: &ProgressBar,
) -> Result<Vec<QueryTiming>, BenchError> {
    let mut timings: Vec<QueryTiming> = queries
        .iter()
        .map(|q| QueryTiming {
            query: q.number,
            seconds: Vec::new(),
            rows: 0,
            stages: Vec::new(),
        })
        .collect();
    for _ in 0..iterations.max(1) {
        if concurrent {
            let runs = queries.iter().map(|q| {
                let client = client.clone();
                async move {
                    let started = Instant::now();
                    let result = run_query(client, q.number, q.sql).await;
                    progress.inc(1);
                    (started.elapsed().as_secs_f64(), result)
                }
            });
            let done = futures::future::join_all(runs).await;
            for (timing, (seconds, result)) in timings.iter_mut().zip(done) {
                let (rows, stages) = result?;
                timing.seconds.push(seconds);
                timing.rows = rows;
                timing.stages = stages;
            }
        } else {
            for (timing, q) in timings.iter_mut().zip(queries) {
                progress.set_message(format!("Q{}", q.number));
                let started = Instant::now();
                let (rows, stages) = run_query(client.clone(), q.number, q.sql).await?;
                timing.seconds.push(started.elapsed().as_secs_f64());
                timing.rows = rows;
                timing.stages = stages;
                progress.inc(1);
            }
        }
    }
    Ok(timings)
}

/// Runs TPC-H query `number` on Baton; returns its rows and its stages' timings.
async fn run_query(
    mut client: BatonClient,
    number: u32,
    sql: &str,
) -> Result<(usize, Vec<StageTiming>), BenchError> {
    let failed = |source| BenchError::Query {
        query: number,
        source,
    };
    let result = client.sql(sql).await.map_err(failed)?;
    let status = client.status(&result.query_id).await.map_err(failed)?;
    Ok((result.rows(), StageTiming::of(&status)))
}

async fn run_baseline(
    ctx: &SessionContext,
    queries: &[TpchQuery],
    iterations: usize,
    progress: &ProgressBar,
) -> Result<Vec<QueryTiming>, BenchError> {
    let mut timings = Vec::new();
    for q in queries {
        progress.set_message(format!("Q{} (datafusion)", q.number));
        let mut timing = QueryTiming {
            query: q.number,
            seconds: Vec::new(),
            rows: 0,
            stages: Vec::new(),
        };
        for _ in 0..iterations.max(1) {
            let started = Instant::now();
            let batches = async { ctx.sql(q.sql).await?.collect().await }
                .await
                .map_err(|source| BenchError::Baseline {
                    query: q.number,
                    source,
                })?;
            timing.seconds.push(started.elapsed().as_secs_f64());
            timing.rows = batches.iter().map(|b| b.num_rows()).sum();
            progress.inc(1);
        }
        timings.push(timing);
    }
    Ok(timings)
}

/// The executor of an embedded cluster as the bench's flags set it.
fn executor_config(bench: &TpchBench) -> ExecutorConfig {
    let mut config =
        ExecutorConfig::local("", bench.slots.unwrap_or_else(|| host_cores() as u32), None);
    config.memory_limit = bench.memory_limit;
    config
}

/// The peak resident memory of process `pid` (None: this one) as `process`, when known.
fn peak_of(process: &str, pid: Option<u32>) -> Vec<ProcessPeak> {
    peak_rss(pid)
        .map(|bytes| ProcessPeak {
            process: process.to_string(),
            bytes,
        })
        .into_iter()
        .collect()
}

/// Seconds the spans cover, summed; 0 (not the -0 of an empty float sum, which printed
/// as "busy -0.0 s (-0% busy)") for an executor that ran nothing.
fn busy_seconds(spans: &[plots::Span]) -> f64 {
    spans.iter().fold(0.0, |busy, s| busy + (s.end - s.start))
}

/// Busy/idle slot-seconds per executor and a timeline plot of a run, from the tasks the
/// scheduler saw finish since `started`.
fn utilization(
    cluster: &LocalCluster,
    started: Instant,
    slots: u32,
    title: &str,
) -> (Vec<ExecutorUse>, String) {
    let wall = started.elapsed().as_secs_f64();
    let spans = cluster.scheduler().timeline(started);
    let mut queries: Vec<Arc<str>> = Vec::new();
    let mut rows = Vec::new();
    let mut uses = Vec::new();
    for executor in cluster.executors() {
        let mine = executor_spans(&spans, executor.id(), started, &mut queries);
        let busy = busy_seconds(&mine);
        uses.push(ExecutorUse {
            executor: executor.id().to_string(),
            busy_seconds: busy,
            idle_seconds: (wall * slots as f64 - busy).max(0.0),
        });
        rows.push((executor.id().to_string(), slots, mine));
    }
    (uses, plots::timeline(title, wall, &rows))
}

/// The tasks `executor` ran, as timeline bars from `started`, coloured by query (each
/// query's colour its index in `queries`, which grows as new ones are seen).
pub fn executor_spans(
    spans: &[TaskSpan],
    executor: &str,
    started: Instant,
    queries: &mut Vec<Arc<str>>,
) -> Vec<plots::Span> {
    spans
        .iter()
        .filter(|s| s.executor == executor)
        .map(|s| {
            let group = queries
                .iter()
                .position(|q| *q == s.query_id)
                .unwrap_or_else(|| {
                    queries.push(s.query_id.clone());
                    queries.len() - 1
                });
            plots::Span {
                start: s.start.duration_since(started).as_secs_f64(),
                end: s.end.duration_since(started).as_secs_f64(),
                group,
                label: format!(
                    "query {} stage {} task {}{}",
                    s.query_id,
                    s.stage,
                    s.partition,
                    if s.copy { " (copy)" } else { "" }
                ),
            }
        })
        .collect()
}

/// Runs the benchmark and returns its report; with `out`, also writes tpch.json and
/// the plots there.
pub async fn run_tpch_bench(bench: &TpchBench) -> Result<BenchReport, BenchError> {
    let catalog = datagen::cached_tpch(&datagen::cache_dir(), bench.scale, TableFormat::Parquet)?;
    let queries = selected(&bench.queries);
    let systems = usize::from(bench.baseline)
        + if bench.scheduler.is_some() {
            1
        } else {
            bench.executors.len()
        };
    let progress = ProgressBar::new((systems * queries.len() * bench.iterations.max(1)) as u64);
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} queries, {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut runs = Vec::new();
    let mut timelines = Vec::new();
    if bench.baseline {
        let partitions = bench.baseline_partitions.unwrap_or_else(host_cores);
        let ctx = SessionContext::new_with_config(
            SessionConfig::new().with_target_partitions(partitions),
        );
        register_catalog(&ctx, &catalog).await?;
        reset_peak_rss(None);
        let started = Instant::now();
        let queries = run_baseline(&ctx, &queries, bench.iterations, &progress).await?;
        runs.push(RunReport {
            system: "datafusion".into(),
            executors: 0,
            queries,
            wall_seconds: started.elapsed().as_secs_f64(),
            utilization: Vec::new(),
            peak_rss: peak_of("datafusion (this process)", None),
        });
    }
    let run = async |client: &BatonClient| {
        let started = Instant::now();
        let timings = run_baton(
            client,
            &queries,
            bench.iterations,
            bench.concurrent,
            &progress,
        )
        .await?;
        Ok::<_, BenchError>((timings, started))
    };
    if let Some(address) = &bench.scheduler {
        let client = BatonClient::connect(address)
            .await
            .map_err(|source| BenchError::Query { query: 0, source })?;
        progress.set_message(format!("baton at {address}"));
        let (queries, started) = run(&client).await?;
        runs.push(RunReport {
            system: "baton".into(),
            executors: 0,
            queries,
            wall_seconds: started.elapsed().as_secs_f64(),
            utilization: Vec::new(),
            peak_rss: Vec::new(),
        });
    }
    for &executors in bench.executors.iter().filter(|_| bench.scheduler.is_none()) {
        let executors = executors.max(1);
        progress.set_message(format!("baton x{executors}"));
        let mut report = RunReport {
            system: "baton".into(),
            executors,
            queries: Vec::new(),
            wall_seconds: 0.0,
            utilization: Vec::new(),
            peak_rss: Vec::new(),
        };
        if bench.embedded {
            let mut config = ClusterConfig::with_catalog(executors, 1, catalog.clone());
            config.executor = executor_config(bench);
            config.scheduler.target_partitions = bench.partitions;
            if let Some(bytes) = bench.partition_data_bytes {
                config.scheduler.partition_data_bytes = bytes;
            }
            let slots = config.executor.slots;
            let cluster = LocalCluster::start(config).await?;
            reset_peak_rss(None);
            let (queries, started) = run(&cluster.client().await?).await?;
            report.wall_seconds = started.elapsed().as_secs_f64();
            report.queries = queries;
            report.peak_rss = peak_of("baton (this process)", None);
            let title = format!(
                "Baton x{executors} executors, TPC-H SF {}: tasks per executor slot",
                bench.scale
            );
            let (utilization, svg) = utilization(&cluster, started, slots.max(1), &title);
            timelines.push((format!("timeline-x{executors}.svg"), svg));
            report.utilization = utilization;
        } else {
            let mut scheduler_args = vec!["--catalog".to_string(), catalog.display().to_string()];
            if let Some(partitions) = bench.partitions {
                scheduler_args.extend(["--partitions".into(), partitions.to_string()]);
            }
            if let Some(bytes) = bench.partition_data_bytes {
                scheduler_args.extend(["--partition-data-mib".into(), (bytes >> 20).to_string()]);
            }
            let mut executor_args = Vec::new();
            if let Some(slots) = bench.slots {
                executor_args.extend(["--slots".into(), slots.to_string()]);
            }
            if let Some(limit) = bench.memory_limit {
                executor_args.extend(["--memory-limit".into(), (limit >> 20).to_string()]);
            }
            let cluster =
                ProcessCluster::start(&scheduler_args, executors, &executor_args, bench.secure)
                    .await?;
            let client = BatonClient::connect_as(cluster.address(), &cluster.login()?)
                .await
                .map_err(|source| BenchError::Query { query: 0, source })?;
            for (_, pid) in cluster.processes() {
                reset_peak_rss(Some(pid));
            }
            let (queries, started) = run(&client).await?;
            report.wall_seconds = started.elapsed().as_secs_f64();
            report.queries = queries;
            report.peak_rss = cluster
                .processes()
                .flat_map(|(role, pid)| peak_of(role, Some(pid)))
                .collect();
        }
        runs.push(report);
    }
    progress.finish_and_clear();
    let report = BenchReport {
        scale: bench.scale,
        slots: bench.slots,
        partitions: bench.partitions,
        runs,
    };
    if let Some(out) = &bench.out {
        write_outputs(out, &report, &timelines)?;
    }
    Ok(report)
}

/// The report as a text table: one row per query, one column per run, ratios to the
/// baseline when there is one, then each executor's busy share.
pub fn format_report(report: &BenchReport) -> String {
    let Some(first) = report.runs.first() else {
        return String::new();
    };
    let baseline = report.runs.iter().find(|r| r.system == "datafusion");
    let is_baton = |run: &RunReport| run.system != "datafusion";
    let mut header = vec!["query".to_string()];
    for run in &report.runs {
        header.push(run_name(run) + " s");
        if baseline.is_some() && is_baton(run) {
            header.push(format!("{} / df", run_name(run)));
        }
    }
    let mut rows = vec![header];
    for (i, timing) in first.queries.iter().enumerate() {
        let mut row = vec![format!("Q{}", timing.query)];
        for run in &report.runs {
            let best = run.queries[i].best();
            row.push(format!("{best:.3}"));
            if let (Some(base), true) = (baseline, is_baton(run)) {
                row.push(format!("{:.2}", best / base.queries[i].best()));
            }
        }
        rows.push(row);
    }
    let mut total = vec!["total".to_string()];
    for run in &report.runs {
        total.push(format!("{:.3}", run.total()));
        if let (Some(base), true) = (baseline, is_baton(run)) {
            total.push(format!("{:.2}", run.total() / base.total()));
        }
    }
    rows.push(total);
    let mut text = text_table(&rows);
    for run in report.runs.iter().filter(|r| !r.peak_rss.is_empty()) {
        let total: u64 = run.peak_rss.iter().map(|p| p.bytes).sum();
        let each: Vec<String> = run
            .peak_rss
            .iter()
            .map(|p| format!("{} {}", p.process, mib(p.bytes)))
            .collect();
        text.push_str(&format!(
            "\npeak RSS, {}: {} in all ({})",
            run_name(run),
            mib(total),
            each.join(", ")
        ));
        if let (Some(base), true) = (baseline.filter(|b| !b.peak_rss.is_empty()), is_baton(run)) {
            let base_total: u64 = base.peak_rss.iter().map(|p| p.bytes).sum();
            text.push_str(&format!(
                "; {:.2}x datafusion",
                total as f64 / base_total.max(1) as f64
            ));
        }
    }
    for run in report.runs.iter().filter(|r| !r.utilization.is_empty()) {
        text.push_str(&format!("\n{}:", run_name(run)));
        for u in &run.utilization {
            text.push_str(&format!(
                " {} busy {:.1} s / idle {:.1} s ({:.0}% busy);",
                u.executor,
                u.busy_seconds,
                u.idle_seconds,
                100.0 * u.busy_seconds / (u.busy_seconds + u.idle_seconds).max(f64::EPSILON)
            ));
        }
    }
    text
}

fn run_name(run: &RunReport) -> String {
    match run.system.as_str() {
        "datafusion" => "datafusion".to_string(),
        _ if run.executors == 0 => "baton".to_string(),
        _ => format!("baton x{}", run.executors),
    }
}

/// Each Baton run's stages per query: wall and task seconds, tasks and operators, the
/// slowest stage first, so a slow query's time can be placed.
pub fn format_stages(report: &BenchReport) -> String {
    let mut text = String::new();
    for run in report.runs.iter().filter(|r| r.system == "baton") {
        text.push_str(&format!("{}\n", run_name(run)));
        for query in &run.queries {
            text.push_str(&format!("Q{} {:.3} s\n", query.query, query.best()));
            let mut stages = query.stages.clone();
            stages.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
            for s in stages {
                text.push_str(&format!(
                    "  stage {:>2} {:>7.3} s {:>7.3} task-s {:>3} tasks  {}\n",
                    s.stage, s.seconds, s.task_seconds, s.tasks, s.operators
                ));
            }
        }
    }
    text
}

/// Writes tpch.json, stages.txt and the plots into `out`; returns the files written.
fn write_outputs(
    out: &Path,
    report: &BenchReport,
    timelines: &[(String, String)],
) -> Result<Vec<PathBuf>, BenchError> {
    let mut files = vec![
        write_json(out, "tpch.json", report)?,
        write_text(out, "stages.txt", &format_stages(report))?,
    ];
    if let Some(first) = report.runs.first() {
        let categories: Vec<String> = first
            .queries
            .iter()
            .map(|q| format!("Q{}", q.query))
            .collect();
        let series: Vec<(String, Vec<f64>)> = report
            .runs
            .iter()
            .map(|run| {
                (
                    run_name(run),
                    run.queries.iter().map(QueryTiming::best).collect(),
                )
            })
            .collect();
        let title = format!(
            "TPC-H SF {} per query ({} slot(s) per executor)",
            report.scale,
            report
                .slots
                .map_or_else(|| "default".to_string(), |n| n.to_string())
        );
        files.push(write_text(
            out,
            "per-query.svg",
            &plots::grouped_bars(&title, "seconds", &categories, &series),
        )?);
    }
    let sized: Vec<&RunReport> = report
        .runs
        .iter()
        .filter(|r| r.system == "baton" && r.executors > 0)
        .collect();
    if let Some(smallest) = sized.iter().min_by_key(|r| r.executors) {
        let base = smallest.total() * smallest.executors as f64;
        let points: Vec<(f64, f64)> = sized
            .iter()
            .map(|r| (r.executors as f64, base / r.total().max(f64::EPSILON)))
            .collect();
        let mut series = vec![("baton".to_string(), points)];
        if let Some(df) = report.runs.iter().find(|r| r.system == "datafusion") {
            let ratio = base / df.total().max(f64::EPSILON);
            series.push(("single-node datafusion".to_string(), vec![(1.0, ratio)]));
        }
        let title = format!("TPC-H SF {}: speedup against executor count", report.scale);
        files.push(write_text(
            out,
            "speedup.svg",
            &plots::lines(
                &title,
                "executors",
                "speedup (vs 1 executor)",
                &series,
                true,
            ),
        )?);
    }
    for (name, svg) in timelines {
        files.push(write_text(out, name, svg)?);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_executor_that_ran_nothing_was_busy_for_zero_seconds() {
        let busy = busy_seconds(&[]);
        assert_eq!(busy, 0.0);
        assert!(busy.is_sign_positive(), "{busy}");
        let span = |start, end| plots::Span {
            start,
            end,
            group: 0,
            label: String::new(),
        };
        assert_eq!(busy_seconds(&[span(0.5, 1.0), span(1.0, 2.5)]), 2.0);
    }
}
