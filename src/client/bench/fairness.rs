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
use crate::datagen;
use crate::scheduler::{
    DEFAULT_AGING_HALF_LIFE, DEFAULT_PARTITION_DATA_BYTES, DEFAULT_PREEMPT_COST_RATIO, PolicyKind,
};
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

/// What to run.
#[derive(Debug, Clone)]
pub struct FairnessBench {
    /// TPC-H scale factor of the data.
    pub scale: f64,
    /// Executors of each cluster.
    pub executors: usize,
    /// Slots per executor.
    pub slots: u32,
    /// Partitions per stage, at most.
    pub partitions: usize,
    /// Bytes of table data that earn a query one partition (0: always `partitions`).
    pub partition_data_bytes: u64,
    /// Long queries submitted at the start.
    pub long_queries: usize,
    /// Short queries, one every `interval`.
    pub short_queries: usize,
    /// Time between short queries.
    pub interval: Duration,
    /// Policies to compare.
    pub policies: Vec<PolicyKind>,
    /// Tasks each executor takes beyond its slots when urgent; None: as many as slots.
    pub preempt_slots: Option<u32>,
    /// Work ratio a preempting query needs (see [`ClusterConfig::preempt_cost_ratio`]).
    pub preempt_cost_ratio: f64,
    /// Aging half-life of `priority`, seconds.
    pub aging_half_life: f64,
}

impl Default for FairnessBench {
    fn default() -> Self {
        Self {
            scale: 1.0,
            executors: 2,
            slots: 2,
            partitions: 4,
            partition_data_bytes: DEFAULT_PARTITION_DATA_BYTES,
            long_queries: 8,
            short_queries: 20,
            interval: Duration::from_millis(250),
            policies: PolicyKind::ALL.to_vec(),
            preempt_slots: None,
            preempt_cost_ratio: DEFAULT_PREEMPT_COST_RATIO,
            aging_half_life: DEFAULT_AGING_HALF_LIFE,
        }
    }
}

/// What one policy achieved.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyResult {
    /// The policy.
    pub policy: String,
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
}

/// The slowdown p99 of each pass of short queries over the idle cluster (`(kind,
/// latency)` in arrival order) against the kinds' `medians`, averaged over the passes.
fn idle_slowdown_p99(passes: &[Vec<(usize, f64)>], medians: &[f64]) -> f64 {
    let per_pass: Vec<f64> = passes
        .iter()
        .map(|pass| {
            let slowdowns: Vec<f64> = pass
                .iter()
                .map(|(kind, seconds)| seconds / medians[*kind].max(1e-6))
                .collect();
            quantile(&slowdowns, 0.99)
        })
        .collect();
    per_pass.iter().sum::<f64>() / per_pass.len().max(1) as f64
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

/// Runs the mix under each policy.
pub async fn run_fairness_bench(bench: &FairnessBench) -> Result<Vec<PolicyResult>, BenchError> {
    let catalog = datagen::cached_tpch(&datagen::cache_dir(), bench.scale, TableFormat::Parquet)?;
    let mut results = Vec::new();
    for &policy in &bench.policies {
        let cluster = LocalCluster::start(ClusterConfig {
            executors: bench.executors.max(1),
            slots: bench.slots.max(1),
            catalog: Some(catalog.clone()),
            target_partitions: bench.partitions,
            partition_data_bytes: bench.partition_data_bytes,
            policy,
            preempt_slots: bench.preempt_slots,
            preempt_cost_ratio: bench.preempt_cost_ratio,
            aging_half_life: bench.aging_half_life,
            ..Default::default()
        })
        .await?;
        let client = cluster.client().await?;
        // Each short query alone: the median of its latencies in the same stream of short
        // queries, arriving as they do under load, over the idle cluster (after a warm-up
        // run of each). Run back to back instead, they read 10–20 % faster than the same
        // queries arriving after an idle interval, without any load.
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
        let idle_slowdown_p99 = idle_slowdown_p99(&passes, &alone);
        let started = Instant::now();
        let long: Vec<_> = (0..bench.long_queries)
            .map(|i| {
                let number = LONG_QUERIES[i % LONG_QUERIES.len()];
                let sql = tpch::query(number).map_or("select 1", |q| q.sql);
                let client = client.clone();
                tokio::spawn(async move { timed(&client, sql).await })
            })
            .collect();
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
        for handle in long {
            handle
                .await
                .map_err(|e| BenchError::Simulated(e.to_string()))??;
        }
        results.push(PolicyResult {
            policy: policy.to_string(),
            short_p50: quantile(&latencies, 0.5),
            short_p99: quantile(&latencies, 0.99),
            slowdown_p50: quantile(&slowdowns, 0.5),
            slowdown_p99: quantile(&slowdowns, 0.99),
            makespan: started.elapsed().as_secs_f64(),
            idle_slowdown_p99,
        });
    }
    Ok(results)
}

/// The results as a table, with each makespan relative to `fifo`'s.
pub fn format_fairness_report(results: &[PolicyResult]) -> String {
    let fifo = results
        .iter()
        .find(|r| r.policy == "fifo")
        .map(|r| r.makespan);
    let mut rows = vec![vec![
        "policy".to_string(),
        "short p50 s".into(),
        "short p99 s".into(),
        "slowdown p50".into(),
        "slowdown p99".into(),
        "makespan s".into(),
        "makespan / fifo".into(),
        "idle slowdown p99".into(),
    ]];
    for r in results {
        rows.push(vec![
            r.policy.clone(),
            format!("{:.3}", r.short_p50),
            format!("{:.3}", r.short_p99),
            format!("{:.2}", r.slowdown_p50),
            format!("{:.2}", r.slowdown_p99),
            format!("{:.2}", r.makespan),
            fifo.map_or("-".into(), |f| format!("{:.3}", r.makespan / f)),
            format!("{:.2}", r.idle_slowdown_p99),
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
        assert_eq!(idle_slowdown_p99(&passes, &[1.0, 2.0]), 1.75);
    }
}
