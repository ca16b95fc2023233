//! `baton bench tpch`: the 22 TPC-H queries on Baton (embedded clusters of several sizes,
//! or a running scheduler), optionally against single-node DataFusion on the same data in
//! the same run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use datafusion::prelude::{SessionConfig, SessionContext};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::{BenchError, plots, text_table, write_json, write_text};
use crate::catalog::{TableFormat, register_catalog};
use crate::client::BatonClient;
use crate::cluster::{ClusterConfig, LocalCluster};
use crate::datagen;
use crate::tpch::{QUERIES, TpchQuery};

/// What to run (the flags of `baton bench tpch`).
#[derive(Debug, Clone, clap::Args)]
pub struct TpchBench {
    /// Scale factor; data is generated and cached on first use.
    #[arg(long, default_value = "0.1")]
    pub scale: f64,
    /// Executor counts to run with, a fresh embedded cluster each (e.g. 1,2,4).
    #[arg(long, value_delimiter = ',', default_value = "2")]
    pub executors: Vec<usize>,
    /// Slots per executor.
    #[arg(long, default_value = "1")]
    pub slots: u32,
    /// Partitions per stage (and of the single-node baseline).
    #[arg(long, default_value = "2")]
    pub partitions: usize,
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
    /// Slots per executor.
    pub slots: u32,
    /// Partitions per stage.
    pub partitions: usize,
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
        })
        .collect();
    for _ in 0..iterations.max(1) {
        if concurrent {
            let runs = queries.iter().map(|q| {
                let mut client = client.clone();
                async move {
                    let started = Instant::now();
                    let result = client.sql(q.sql).await;
                    progress.inc(1);
                    (q.number, started.elapsed().as_secs_f64(), result)
                }
            });
            let done = futures::future::join_all(runs).await;
            for (timing, (number, seconds, result)) in timings.iter_mut().zip(done) {
                let result = result.map_err(|source| BenchError::Query {
                    query: number,
                    source,
                })?;
                timing.seconds.push(seconds);
                timing.rows = result.rows();
            }
        } else {
            for (timing, q) in timings.iter_mut().zip(queries) {
                progress.set_message(format!("Q{}", q.number));
                let mut client = client.clone();
                let started = Instant::now();
                let result = client
                    .sql(q.sql)
                    .await
                    .map_err(|source| BenchError::Query {
                        query: q.number,
                        source,
                    })?;
                timing.seconds.push(started.elapsed().as_secs_f64());
                timing.rows = result.rows();
                progress.inc(1);
            }
        }
    }
    Ok(timings)
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
        let mine: Vec<plots::Span> = spans
            .iter()
            .filter(|s| s.executor == executor.id())
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
                        "query {} stage {} task {}",
                        s.query_id, s.stage, s.partition
                    ),
                }
            })
            .collect();
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
        let ctx = SessionContext::new_with_config(
            SessionConfig::new().with_target_partitions(bench.partitions),
        );
        register_catalog(&ctx, &catalog).await?;
        let started = Instant::now();
        let queries = run_baseline(&ctx, &queries, bench.iterations, &progress).await?;
        runs.push(RunReport {
            system: "datafusion".into(),
            executors: 0,
            queries,
            wall_seconds: started.elapsed().as_secs_f64(),
            utilization: Vec::new(),
        });
    }
    match &bench.scheduler {
        Some(address) => {
            let client = BatonClient::connect(address)
                .await
                .map_err(|source| BenchError::Query { query: 0, source })?;
            progress.set_message(format!("baton at {address}"));
            let started = Instant::now();
            let timings = run_baton(
                &client,
                &queries,
                bench.iterations,
                bench.concurrent,
                &progress,
            )
            .await?;
            runs.push(RunReport {
                system: "baton".into(),
                executors: 0,
                queries: timings,
                wall_seconds: started.elapsed().as_secs_f64(),
                utilization: Vec::new(),
            });
        }
        None => {
            for &executors in &bench.executors {
                let executors = executors.max(1);
                let mut config =
                    ClusterConfig::with_catalog(executors, bench.slots, catalog.clone());
                config.scheduler.target_partitions = Some(bench.partitions);
                let cluster = LocalCluster::start(config).await?;
                let client = cluster.client().await?;
                progress.set_message(format!("baton x{executors}"));
                let started = Instant::now();
                let timings = run_baton(
                    &client,
                    &queries,
                    bench.iterations,
                    bench.concurrent,
                    &progress,
                )
                .await?;
                let wall_seconds = started.elapsed().as_secs_f64();
                let title = format!(
                    "Baton x{executors} executors, TPC-H SF {}: tasks per executor slot",
                    bench.scale
                );
                let (utilization, svg) = utilization(&cluster, started, bench.slots.max(1), &title);
                timelines.push((format!("timeline-x{executors}.svg"), svg));
                runs.push(RunReport {
                    system: "baton".into(),
                    executors,
                    queries: timings,
                    wall_seconds,
                    utilization,
                });
            }
        }
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

/// Writes tpch.json and the plots into `out`; returns the files written.
fn write_outputs(
    out: &Path,
    report: &BenchReport,
    timelines: &[(String, String)],
) -> Result<Vec<PathBuf>, BenchError> {
    let mut files = vec![write_json(out, "tpch.json", report)?];
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
            report.scale, report.slots
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
