//! `baton bench fairness`: short interactive queries arriving over time while long
//! queries keep the cluster busy, under each policy, on a fresh cluster of separate
//! processes (scheduler and executors, as deployed; the client is this process). Short
//! queries' slowdowns (latency under load ÷ their latency alone) are pooled over all
//! runs and read as percentiles: one run's 20 queries say little about a p99.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::processes::ProcessCluster;
use super::{BenchError, quantile, text_table};
use crate::catalog::TableFormat;
use crate::client::BatonClient;
use crate::config::{parse_mib, parse_millis};
use crate::datagen;
use crate::scheduler::PolicyKind;
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

/// Long queries (TPC-H numbers): joins and aggregations over lineitem.
const LONG_QUERIES: [u32; 4] = [9, 18, 21, 1];

/// What `priority` aims for: pooled slowdown p95 and p99 at most these, and a makespan
/// within [`MAKESPAN_GOAL`] of `fifo`'s (the median of per-run ratios).
pub const SLOWDOWN_GOAL_P95: f64 = 2.0;
/// See [`SLOWDOWN_GOAL_P95`].
pub const SLOWDOWN_GOAL_P99: f64 = 3.0;
/// See [`SLOWDOWN_GOAL_P95`].
pub const MAKESPAN_GOAL: f64 = 0.05;

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
    #[arg(long = "partition-data-mib", value_name = "MIB", value_parser = parse_mib, default_value = "32")]
    pub partition_data_bytes: u64,
    /// Long queries submitted at the start, one after the other.
    #[arg(long = "long", value_name = "N", default_value = "8")]
    pub long_queries: usize,
    /// Short queries, one every --interval-ms.
    #[arg(long = "short", value_name = "N", default_value = "20")]
    pub short_queries: usize,
    /// Milliseconds between short queries.
    #[arg(long = "interval-ms", value_name = "MS", value_parser = parse_millis, default_value = "250")]
    pub interval: Duration,
    /// Policies to compare.
    #[arg(long, value_delimiter = ',', default_value = "fifo,fair,priority")]
    pub policies: Vec<PolicyKind>,
    /// Runs of the whole comparison (policies taking turns); slowdowns are pooled over
    /// all runs (5 runs of 20 short queries: 100 per policy).
    #[arg(long, default_value = "5")]
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
    /// Seconds from the first submission until every long query ended: the work a
    /// policy must not delay (the short stream's own length does not count).
    pub makespan: f64,
    /// Each short query's latency under load, seconds, in arrival order.
    pub latencies: Vec<f64>,
    /// Each short query's slowdown under load (latency ÷ its kind's median alone).
    pub slowdowns: Vec<f64>,
    /// The slowdowns of the passes over the idle cluster that measure latency alone,
    /// against the same medians: the measure's own noise floor.
    pub idle_slowdowns: Vec<f64>,
}

/// The slowdowns of each pass of short queries over the idle cluster (`(kind, latency)`
/// in arrival order) against the kinds' `medians`, pooled.
fn idle_slowdowns(passes: &[Vec<(usize, f64)>], medians: &[f64]) -> Vec<f64> {
    passes
        .iter()
        .flatten()
        .map(|(kind, seconds)| seconds / medians[*kind].max(1e-6))
        .collect()
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
                worst_slowdown = quantile(&result.slowdowns, 1.0),
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
    let scheduler_args = [
        "--catalog".to_string(),
        catalog.to_string_lossy().into_owned(),
        "--policy".into(),
        policy.to_string(),
        "--partitions".into(),
        bench.partitions.to_string(),
        "--partition-data-mib".into(),
        (bench.partition_data_bytes >> 20).to_string(),
        "--preempt-cost-ratio".into(),
        bench.preempt_cost_ratio.to_string(),
        "--aging-half-life".into(),
        bench.aging_half_life.to_string(),
    ];
    let mut executor_args = vec!["--slots".to_string(), bench.slots.max(1).to_string()];
    if let Some(preempt_slots) = bench.preempt_slots {
        executor_args.extend(["--preempt-slots".into(), preempt_slots.to_string()]);
    }
    let cluster = ProcessCluster::start(
        &scheduler_args,
        bench.executors.max(1),
        &executor_args,
        false,
    )
    .await?;
    let client = BatonClient::connect(cluster.address())
        .await
        .map_err(|source| BenchError::Query { query: 0, source })?;
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
    let started = Instant::now();
    let long_sql: Vec<(u32, &'static str)> = (0..bench.long_queries)
        .map(|i| {
            let number = LONG_QUERIES[i % LONG_QUERIES.len()];
            (number, tpch::query(number).map_or("select 1", |q| q.sql))
        })
        .collect();
    let long_client = client.clone();
    let long = tokio::spawn(async move {
        submit_in_order(long_client, long_sql).await?;
        Ok::<_, BenchError>(started.elapsed())
    });
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
    let makespan = long
        .await
        .map_err(|e| BenchError::Simulated(e.to_string()))??;
    Ok(PolicyResult {
        policy: policy.to_string(),
        run,
        makespan: makespan.as_secs_f64(),
        latencies,
        slowdowns,
        idle_slowdowns: idle,
    })
}

/// What one policy achieved over all runs.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySummary {
    /// The policy.
    pub policy: String,
    /// Runs.
    pub runs: usize,
    /// Short queries under load, all runs.
    pub short_queries: usize,
    /// Their latency p50, seconds.
    pub latency_p50: f64,
    /// Their slowdown p50, p95 and p99, pooled over all runs.
    pub slowdown: [f64; 3],
    /// The same percentiles of the idle passes: the floor the measure reads alone.
    pub idle_slowdown: [f64; 3],
    /// Median makespan, seconds.
    pub makespan: f64,
    /// Median over runs of makespan ÷ `fifo`'s makespan in the same run.
    pub makespan_to_fifo: Option<f64>,
}

/// p50, p95 and p99 of `values`.
fn percentiles(values: &[f64]) -> [f64; 3] {
    [0.5, 0.95, 0.99].map(|q| quantile(values, q))
}

/// Each policy's results over all runs, in the order the policies first appear.
pub fn summarize(results: &[PolicyResult]) -> Vec<PolicySummary> {
    let fifo_makespan = |run: usize| {
        results
            .iter()
            .find(|r| r.policy == "fifo" && r.run == run)
            .map(|r| r.makespan)
    };
    let mut policies: Vec<&str> = Vec::new();
    for r in results {
        if !policies.contains(&r.policy.as_str()) {
            policies.push(&r.policy);
        }
    }
    policies
        .into_iter()
        .map(|policy| {
            let runs: Vec<&PolicyResult> = results.iter().filter(|r| r.policy == policy).collect();
            let pooled = |of: fn(&PolicyResult) -> &Vec<f64>| -> Vec<f64> {
                runs.iter().flat_map(|r| of(r).iter().copied()).collect()
            };
            let makespans: Vec<f64> = runs.iter().map(|r| r.makespan).collect();
            let to_fifo: Vec<f64> = runs
                .iter()
                .filter_map(|r| fifo_makespan(r.run).map(|fifo| r.makespan / fifo))
                .collect();
            let slowdowns = pooled(|r| &r.slowdowns);
            PolicySummary {
                policy: policy.to_string(),
                runs: runs.len(),
                short_queries: slowdowns.len(),
                latency_p50: quantile(&pooled(|r| &r.latencies), 0.5),
                slowdown: percentiles(&slowdowns),
                idle_slowdown: percentiles(&pooled(|r| &r.idle_slowdowns)),
                makespan: quantile(&makespans, 0.5),
                makespan_to_fifo: (!to_fifo.is_empty()).then(|| quantile(&to_fifo, 0.5)),
            }
        })
        .collect()
}

impl PolicySummary {
    /// Whether it meets the goal set for `priority` (see [`SLOWDOWN_GOAL_P95`]).
    pub fn meets_goal(&self) -> bool {
        self.slowdown[1] <= SLOWDOWN_GOAL_P95
            && self.slowdown[2] <= SLOWDOWN_GOAL_P99
            && self
                .makespan_to_fifo
                .is_some_and(|ratio| (ratio - 1.0).abs() <= MAKESPAN_GOAL)
    }
}

/// The results as a table, one row per policy, every measure over all runs, and a line
/// saying whether `priority` met its goal.
pub fn format_fairness_report(results: &[PolicyResult]) -> String {
    let summaries = summarize(results);
    let mut rows = vec![vec![
        "policy".to_string(),
        "runs".into(),
        "short queries".into(),
        "latency p50 s".into(),
        "slowdown p50/p95/p99".into(),
        "idle floor p50/p95/p99".into(),
        "makespan s".into(),
        "makespan / fifo".into(),
    ]];
    let triple = |t: [f64; 3]| format!("{:.2} / {:.2} / {:.2}", t[0], t[1], t[2]);
    for s in &summaries {
        rows.push(vec![
            s.policy.clone(),
            s.runs.to_string(),
            s.short_queries.to_string(),
            format!("{:.3}", s.latency_p50),
            triple(s.slowdown),
            triple(s.idle_slowdown),
            format!("{:.2}", s.makespan),
            s.makespan_to_fifo
                .map_or("-".into(), |ratio| format!("{ratio:.3}")),
        ]);
    }
    let mut report = text_table(&rows);
    if let Some(priority) = summaries.iter().find(|s| s.policy == "priority") {
        report.push_str(&format!(
            "\npriority goal (slowdown p95 <= {SLOWDOWN_GOAL_P95}, p99 <= {SLOWDOWN_GOAL_P99}, \
             makespan within {:.0} % of fifo): {}",
            MAKESPAN_GOAL * 100.0,
            if priority.meets_goal() {
                "met"
            } else {
                "not met"
            }
        ));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_slowdowns_compare_each_pass_with_the_medians() {
        let passes = vec![
            vec![(0, 1.0), (1, 2.0), (0, 1.5)],
            vec![(0, 1.0), (1, 4.0), (0, 1.0)],
        ];
        let slowdowns = idle_slowdowns(&passes, &[1.0, 2.0]);
        assert_eq!(slowdowns, vec![1.0, 1.0, 1.5, 1.0, 2.0, 1.0]);
    }

    fn result(policy: &str, run: usize, worst: f64, makespan: f64) -> PolicyResult {
        PolicyResult {
            policy: policy.into(),
            run,
            makespan,
            latencies: vec![0.01; 20],
            // 20 short queries per run: 18 at 1.0, one at 1.5 and one at `worst`.
            slowdowns: std::iter::repeat_n(1.0, 18).chain([1.5, worst]).collect(),
            idle_slowdowns: vec![1.2; 40],
        }
    }

    #[test]
    fn the_report_pools_slowdowns_over_runs_and_compares_makespans_within_each_run() {
        let mut results = Vec::new();
        for run in 0..5 {
            results.push(result("fifo", run, 100.0, 10.0));
            results.push(result(
                "priority",
                run,
                2.0 + run as f64,
                10.0 + 0.1 * run as f64,
            ));
        }
        let summaries = summarize(&results);
        let priority = &summaries[1];
        assert_eq!((priority.runs, priority.short_queries), (5, 100));
        // 100 pooled: 90 at 1.0, five at 1.5, then 2, 3, 4, 5, 6. The p95 is the 95th
        // (1.5), the p99 the 99th (5).
        assert_eq!(priority.slowdown, [1.0, 1.5, 5.0]);
        assert_eq!(priority.idle_slowdown, [1.2, 1.2, 1.2]);
        // Makespan / fifo per run: 1.00, 1.01, 1.02, 1.03, 1.04; median 1.02.
        assert!((priority.makespan_to_fifo.unwrap() - 1.02).abs() < 1e-9);
        assert!(!priority.meets_goal(), "p99 5 is over 3");
        let report = format_fairness_report(&results);
        assert!(report.contains("1.00 / 1.50 / 5.00"), "{report}");
        assert!(report.ends_with("not met"), "{report}");
    }

    #[test]
    fn the_goal_needs_both_tails_and_the_makespan() {
        let summary = |slowdown, makespan_to_fifo| PolicySummary {
            policy: "priority".into(),
            runs: 5,
            short_queries: 100,
            latency_p50: 0.01,
            slowdown,
            idle_slowdown: [1.0; 3],
            makespan: 10.0,
            makespan_to_fifo,
        };
        assert!(summary([1.0, 2.0, 3.0], Some(1.04)).meets_goal());
        assert!(summary([1.0, 2.0, 3.0], Some(0.96)).meets_goal());
        assert!(!summary([1.0, 2.1, 3.0], Some(1.0)).meets_goal());
        assert!(!summary([1.0, 2.0, 3.1], Some(1.0)).meets_goal());
        assert!(!summary([1.0, 2.0, 3.0], Some(1.06)).meets_goal());
        assert!(!summary([1.0, 2.0, 3.0], None).meets_goal());
    }
}
