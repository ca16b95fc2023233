//! `baton bench fairness`: short interactive queries arriving over time while long
//! background queries keep the cluster busy, run under each policy on a fresh cluster
//! of the same shape. Reports per policy the short queries' latency p50/p99, their
//! slowdown (latency under load ÷ latency alone) and the makespan of the whole mix.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{BenchError, quantile, text_table};
use crate::catalog::TableFormat;
use crate::client::BatonClient;
use crate::cluster::{ClusterConfig, LocalCluster};
use crate::config::{parse_mib, parse_millis};
use crate::datagen;
use crate::scheduler::{PolicyKind, SchedulerConfig};
use crate::tpch;

/// Short queries: small tables, a few stages each.
const SHORT_QUERIES: [&str; 4] = [
    "select r_name, count(*) from nation join region on n_regionkey = r_regionkey group by r_name",
    "select n_name, count(*) as suppliers from supplier join nation on s_nationkey = n_nationkey group by n_name order by suppliers desc limit 5",
    "select c_mktsegment, count(*), avg(c_acctbal) from customer group by c_mktsegment",
    "select p_brand, count(*) from part where p_size < 5 group by p_brand order by 2 desc limit 5",
];

/// Passes of the short-query stream over the idle cluster whose per-query median is a
/// short query's latency alone.
const ALONE_PASSES: usize = 2;

/// Long background queries (TPC-H numbers): joins and aggregations over lineitem.
const LONG_QUERIES: [u32; 4] = [9, 18, 21, 1];

/// The short-query slowdown `priority` aims to keep its p99 under (while its makespan
/// stays within 5 % of `fifo`'s).
pub const SLOWDOWN_GOAL: f64 = 1.5;

/// What to run (the flags of `baton bench fairness`).
#[derive(Debug, Clone, clap::Args)]
pub struct FairnessBench {
    /// TPC-H scale factor of the data (generated and cached on first use).
    #[arg(long, default_value = "1")]
    pub scale: f64,
    /// Executors of each cluster.
    #[arg(long, default_value = "2")]
    pub executors: usize,
    /// Slots per executor.
    #[arg(long, default_value = "2")]
    pub slots: u32,
    /// Partitions per stage, at most.
    #[arg(long, default_value = "4")]
    pub partitions: usize,
    /// MiB of table data (its files, whole) that earn a query one partition, up to
    /// --partitions; 0: every query gets --partitions.
    #[arg(long = "partition-data-mib", value_parser = parse_mib, default_value = "32")]
    pub partition_data_bytes: u64,
    /// Long queries submitted at the start, one after the other.
    #[arg(long = "long", default_value = "8")]
    pub long_queries: usize,
    /// Short queries, one every --interval-ms.
    #[arg(long = "short", default_value = "20")]
    pub short_queries: usize,
    /// Milliseconds between short queries.
    #[arg(long = "interval-ms", value_parser = parse_millis, default_value = "250")]
    pub interval: Duration,
    /// Policies to compare.
    #[arg(long, value_delimiter = ',', default_value = "fifo,fair,priority")]
    pub policies: Vec<PolicyKind>,
    /// Runs of the whole comparison (policies taking turns); the report gives each
    /// measure's median over the runs and how many runs met the slowdown goal.
    #[arg(long, default_value = "1")]
    pub runs: usize,
    /// Suspended tasks each executor may hold for cheap queries' tasks (priority
    /// preempts); default: as many as --slots, 0: no preemption.
    #[arg(long)]
    pub preempt_slots: Option<u32>,
    /// A task preempts (priority policy) only for a query with under 1/this of the
    /// remaining work of the task it suspends.
    #[arg(long, default_value = "10")]
    pub preempt_cost_ratio: f64,
    /// Seconds of waiting that halve a query's cost against newer queries (priority
    /// policy); 0: no aging.
    #[arg(long, default_value = "10")]
    pub aging_half_life: f64,
}

impl Default for FairnessBench {
    /// The defaults of the flags.
    fn default() -> Self {
        crate::config::defaults_of::<Self>()
    }
}

/// What one policy achieved in one run.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyResult {
    /// The policy.
    pub policy: String,
    /// The run (from 0).
    pub run: usize,
    /// Short-query latency p50, seconds.
    pub short_p50: f64,
    /// Short-query latency p99, seconds.
    pub short_p99: f64,
    /// Slowdown (under load ÷ alone) p50.
    pub slowdown_p50: f64,
    /// Slowdown p99.
    pub slowdown_p99: f64,
    /// Seconds from the first submission until every query ended.
    pub makespan: f64,
    /// The slowdown p99 the short queries read without any load (their latencies in the
    /// passes that measure latency alone, against their medians): the metric's floor.
    pub idle_slowdown_p99: f64,
    /// Share of the short queries under load slowed down more than [`SLOWDOWN_GOAL`].
    pub over_goal: f64,
    /// The same share in the passes that measure latency alone.
    pub idle_over_goal: f64,
    /// Each short query's slowdown under load, in arrival order.
    pub slowdowns: Vec<f64>,
    /// Each short query's slowdown in the passes that measure latency alone.
    pub idle_slowdowns: Vec<f64>,
}

/// The slowdowns of each pass of short queries over the idle cluster (`(kind, latency)`
/// in arrival order) against the kinds' `medians`.
fn idle_slowdowns(passes: &[Vec<(usize, f64)>], medians: &[f64]) -> Vec<Vec<f64>> {
    passes
        .iter()
        .map(|pass| {
            pass.iter()
                .map(|(kind, seconds)| seconds / medians[*kind].max(1e-6))
                .collect()
        })
        .collect()
}

/// The p99 of each pass's slowdowns, averaged over the passes.
fn idle_slowdown_p99(passes: &[Vec<f64>]) -> f64 {
    let sum: f64 = passes.iter().map(|pass| quantile(pass, 0.99)).sum();
    sum / passes.len().max(1) as f64
}

/// Share of `slowdowns` above [`SLOWDOWN_GOAL`].
fn over_goal(slowdowns: &[f64]) -> f64 {
    let over = slowdowns.iter().filter(|&&s| s > SLOWDOWN_GOAL).count();
    over as f64 / slowdowns.len().max(1) as f64
}

/// Seconds a query took: submit → whole result fetched.
async fn timed(client: &BatonClient, sql: &str) -> Result<f64, BenchError> {
    let mut client = client.clone();
    let failed = |source| BenchError::Query { query: 0, source };
    let started = Instant::now();
    let id = client.submit_sql(sql).await.map_err(failed)?;
    let submitted = started.elapsed();
    client.fetch(&id).await.map_err(failed)?;
    let elapsed = started.elapsed();
    tracing::debug!(
        query_id = %id,
        submit_micros = submitted.as_micros() as u64,
        total_micros = elapsed.as_micros() as u64,
        "bench query done"
    );
    Ok(elapsed.as_secs_f64())
}

/// Submits `queries` (TPC-H number, SQL) one after the other, each once the scheduler
/// took the one before, then fetches all their results at once. Every policy thus sees
/// the long queries arrive in the same order; submitted all at once, they arrived in
/// whatever order their plannings ended, and `fifo`'s makespan varied with it.
async fn submit_in_order(
    client: BatonClient,
    queries: Vec<(u32, &'static str)>,
) -> Result<(), BenchError> {
    let mut fetches = Vec::with_capacity(queries.len());
    for (number, sql) in queries {
        let failed = move |source| BenchError::Query {
            query: number,
            source,
        };
        let mut client = client.clone();
        let id = client.submit_sql(sql).await.map_err(failed)?;
        fetches.push(async move { client.fetch(&id).await.map(drop).map_err(failed) });
    }
    futures::future::try_join_all(fetches).await?;
    Ok(())
}

/// Runs the mix under each policy, `bench.runs` times (policies taking turns).
pub async fn run_fairness_bench(bench: &FairnessBench) -> Result<Vec<PolicyResult>, BenchError> {
    let catalog = datagen::cached_tpch(&datagen::cache_dir(), bench.scale, TableFormat::Parquet)?;
    let mut results = Vec::new();
    for run in 0..bench.runs.max(1) {
        for &policy in &bench.policies {
            let result = run_policy(bench, &catalog, policy, run).await?;
            tracing::info!(
                run,
                policy = %result.policy,
                slowdown_p99 = result.slowdown_p99,
                makespan = result.makespan,
                "fairness run done"
            );
            results.push(result);
        }
    }
    Ok(results)
}

/// One run of the mix under `policy`, on a fresh cluster.
async fn run_policy(
    bench: &FairnessBench,
    catalog: &std::path::Path,
    policy: PolicyKind,
    run: usize,
) -> Result<PolicyResult, BenchError> {
    let mut config =
        ClusterConfig::with_catalog(bench.executors.max(1), bench.slots, catalog.to_path_buf());
    config.executor.preempt_slots = bench.preempt_slots;
    config.scheduler = SchedulerConfig {
        target_partitions: bench.partitions,
        partition_data_bytes: bench.partition_data_bytes,
        policy,
        preempt_cost_ratio: bench.preempt_cost_ratio,
        aging_half_life: bench.aging_half_life,
        ..config.scheduler
    };
    let cluster = LocalCluster::start(config).await?;
    let client = cluster.client().await?;
    // Each short query alone: the median of its latencies in the same stream of short
    // queries, arriving as they do under load, over the idle cluster (after a warm-up run
    // of each). Run back to back instead, they read 10–20 % faster than the same queries
    // arriving after an idle interval, without any load.
    for sql in SHORT_QUERIES {
        timed(&client, sql).await?;
    }
    let mut passes = Vec::with_capacity(ALONE_PASSES);
    for _ in 0..ALONE_PASSES {
        let started = Instant::now();
        let mut pass = Vec::with_capacity(bench.short_queries);
        for i in 0..bench.short_queries {
            tokio::time::sleep_until((started + bench.interval * i as u32).into()).await;
            let kind = i % SHORT_QUERIES.len();
            pass.push((kind, timed(&client, SHORT_QUERIES[kind]).await?));
        }
        passes.push(pass);
    }
    let alone: Vec<f64> = (0..SHORT_QUERIES.len())
        .map(|kind| {
            let runs: Vec<f64> = passes
                .iter()
                .flatten()
                .filter(|(k, _)| *k == kind)
                .map(|(_, seconds)| *seconds)
                .collect();
            quantile(&runs, 0.5)
        })
        .collect();
    let idle = idle_slowdowns(&passes, &alone);
    let idle_pooled = idle.concat();
    let started = Instant::now();
    let long_sql: Vec<(u32, &'static str)> = (0..bench.long_queries)
        .map(|i| {
            let number = LONG_QUERIES[i % LONG_QUERIES.len()];
            (number, tpch::query(number).map_or("select 1", |q| q.sql))
        })
        .collect();
    let long = tokio::spawn(submit_in_order(client.clone(), long_sql));
    let mut short = Vec::new();
    for i in 0..bench.short_queries {
        tokio::time::sleep_until((started + bench.interval * i as u32).into()).await;
        let kind = i % SHORT_QUERIES.len();
        let client = client.clone();
        short.push((
            kind,
            tokio::spawn(async move { timed(&client, SHORT_QUERIES[kind]).await }),
        ));
    }
    let mut latencies = Vec::new();
    let mut slowdowns = Vec::new();
    for (kind, handle) in short {
        let seconds = handle
            .await
            .map_err(|e| BenchError::Simulated(e.to_string()))??;
        latencies.push(seconds);
        slowdowns.push(seconds / alone[kind].max(1e-6));
    }
    long.await
        .map_err(|e| BenchError::Simulated(e.to_string()))??;
    Ok(PolicyResult {
        policy: policy.to_string(),
        run,
        short_p50: quantile(&latencies, 0.5),
        short_p99: quantile(&latencies, 0.99),
        slowdown_p50: quantile(&slowdowns, 0.5),
        slowdown_p99: quantile(&slowdowns, 0.99),
        makespan: started.elapsed().as_secs_f64(),
        idle_slowdown_p99: idle_slowdown_p99(&idle),
        over_goal: over_goal(&slowdowns),
        idle_over_goal: over_goal(&idle_pooled),
        slowdowns,
        idle_slowdowns: idle_pooled,
    })
}

/// The results as a table, one row per policy: each measure's median over the runs
/// (the value itself for one run), each makespan relative to `fifo`'s in the same run,
/// how many runs kept the slowdown p99 within [`SLOWDOWN_GOAL`], the share of short
/// queries over it, under load and alone, over all runs, and the slowdown p99 of all
/// runs' short queries pooled, under load and alone (with many runs, a steadier
/// measure than any one run's worst of a few).
pub fn format_fairness_report(results: &[PolicyResult]) -> String {
    let fifo_makespan = |run: usize| {
        results
            .iter()
            .find(|r| r.policy == "fifo" && r.run == run)
            .map(|r| r.makespan)
    };
    let mut rows = vec![vec![
        "policy".to_string(),
        "short p50 s".into(),
        "short p99 s".into(),
        "slowdown p50".into(),
        "slowdown p99".into(),
        "makespan s".into(),
        "makespan / fifo".into(),
        "idle slowdown p99".into(),
        format!("runs p99 <= {SLOWDOWN_GOAL}"),
        format!("short > {SLOWDOWN_GOAL} load / idle"),
        "pooled p99 load / idle".into(),
    ]];
    let mut policies: Vec<&str> = Vec::new();
    for r in results {
        if !policies.contains(&r.policy.as_str()) {
            policies.push(&r.policy);
        }
    }
    for policy in policies {
        let runs: Vec<&PolicyResult> = results.iter().filter(|r| r.policy == policy).collect();
        let median = |measure: fn(&PolicyResult) -> f64| {
            let values: Vec<f64> = runs.iter().map(|r| measure(r)).collect();
            quantile(&values, 0.5)
        };
        let pooled = |slowdowns: fn(&PolicyResult) -> &Vec<f64>| -> Vec<f64> {
            runs.iter()
                .flat_map(|r| slowdowns(r).iter().copied())
                .collect()
        };
        let mean = |measure: fn(&PolicyResult) -> f64| {
            runs.iter().map(|r| measure(r)).sum::<f64>() / runs.len() as f64
        };
        let to_fifo: Vec<f64> = runs
            .iter()
            .filter_map(|r| fifo_makespan(r.run).map(|fifo| r.makespan / fifo))
            .collect();
        let met = runs
            .iter()
            .filter(|r| r.slowdown_p99 <= SLOWDOWN_GOAL)
            .count();
        rows.push(vec![
            policy.to_string(),
            format!("{:.3}", median(|r| r.short_p50)),
            format!("{:.3}", median(|r| r.short_p99)),
            format!("{:.2}", median(|r| r.slowdown_p50)),
            format!("{:.2}", median(|r| r.slowdown_p99)),
            format!("{:.2}", median(|r| r.makespan)),
            if to_fifo.is_empty() {
                "-".into()
            } else {
                format!("{:.3}", quantile(&to_fifo, 0.5))
            },
            format!("{:.2}", median(|r| r.idle_slowdown_p99)),
            format!("{met}/{}", runs.len()),
            format!(
                "{:.1} % / {:.1} %",
                100.0 * mean(|r| r.over_goal),
                100.0 * mean(|r| r.idle_over_goal)
            ),
            format!(
                "{:.2} / {:.2}",
                quantile(&pooled(|r| &r.slowdowns), 0.99),
                quantile(&pooled(|r| &r.idle_slowdowns), 0.99)
            ),
        ]);
    }
    text_table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idle_floor_averages_the_p99_of_each_pass() {
        let passes = vec![
            vec![(0, 1.0), (1, 2.0), (0, 1.5)],
            vec![(0, 1.0), (1, 4.0), (0, 1.0)],
        ];
        // Pass one's worst is 1.5 / 1, pass two's 4 / 2.
        let slowdowns = idle_slowdowns(&passes, &[1.0, 2.0]);
        assert_eq!(idle_slowdown_p99(&slowdowns), 1.75);
        // 1.5 is within the goal, 2.0 is not.
        assert_eq!(over_goal(&slowdowns.concat()), 1.0 / 6.0);
    }

    fn result(policy: &str, run: usize, slowdown_p99: f64, makespan: f64) -> PolicyResult {
        PolicyResult {
            policy: policy.into(),
            run,
            short_p50: 0.01,
            short_p99: 0.02,
            slowdown_p50: 1.0,
            slowdown_p99,
            makespan,
            idle_slowdown_p99: 1.3,
            over_goal: 0.05 * (run + 1) as f64,
            idle_over_goal: 0.02,
            // 100 short queries per run: 98 at 1.0, one at 1.4 and one at
            // 1.1 × (run + 1); alone, all at 1.2.
            slowdowns: std::iter::repeat_n(1.0, 98)
                .chain([1.4, 1.1 * (run + 1) as f64])
                .collect(),
            idle_slowdowns: vec![1.2; 100],
        }
    }

    #[test]
    fn the_report_takes_medians_over_runs_against_fifo_of_the_same_run() {
        let results = vec![
            result("fifo", 0, 100.0, 10.0),
            result("priority", 0, 1.4, 10.5),
            result("fifo", 1, 90.0, 8.0),
            result("priority", 1, 1.7, 8.0),
            result("fifo", 2, 80.0, 9.0),
            result("priority", 2, 1.2, 9.9),
        ];
        let report = format_fairness_report(&results);
        let priority = report
            .lines()
            .find(|l| l.trim_start().starts_with("priority"))
            .unwrap();
        let cells: Vec<&str> = priority.split_whitespace().collect();
        // slowdown p99: median of 1.4, 1.7, 1.2; makespan: of 10.5, 8, 9.9; makespan /
        // fifo: of 1.05, 1.0, 1.1; two of three runs within 1.5; 10 % of short queries
        // over it on average.
        assert_eq!(
            &cells[..9],
            &[
                "priority", "0.010", "0.020", "1.00", "1.40", "9.90", "1.050", "1.30", "2/3"
            ]
        );
        assert_eq!(&cells[9..14], &["10.0", "%", "/", "2.0", "%"]);
        // Pooled, 300 short queries: 294 at 1.0, then 1.1, three at 1.4, 2.2 and 3.3;
        // the p99 is the 297th, 1.4.
        assert_eq!(&cells[14..], &["1.40", "/", "1.20"]);
        assert_eq!(report.lines().count(), 3);
    }
}
