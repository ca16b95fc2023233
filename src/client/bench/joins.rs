//! `baton bench joins`: selective star joins over TPC-H, where a join's build side
//! filters the fact table's scan, and a TopK whose filter prunes its scan. Single-node
//! DataFusion with its dynamic filters on and off, and Baton (a scheduler process and
//! executor processes) with its filters (`--dynamic-filters`) on and off, on the same
//! data in one run.

use std::path::PathBuf;
use std::time::Instant;

use datafusion::prelude::{SessionConfig, SessionContext};
use serde::Serialize;

use super::processes::ProcessCluster;
use super::{BenchError, text_table, write_json};
use crate::catalog::{TableFormat, register_catalog};
use crate::client::BatonClient;
use crate::config::host_cores;
use crate::datagen;

/// The star joins: `lineitem` (or `orders`) joined with selective dimensions, through
/// inner, semi and left joins, one through a dimension of a dimension; and one TopK.
pub const STAR_JOINS: [(&str, &str); 8] = [
    (
        "part brand",
        "select p_brand, count(*) as n, sum(l_extendedprice) as revenue \
         from lineitem join part on l_partkey = p_partkey \
         where p_size = 15 and p_type like '%BRASS' and p_container = 'SM BOX' \
         group by p_brand order by p_brand",
    ),
    (
        "part, supplier, orders",
        "select s_nationkey, count(*) as n, sum(l_quantity) as quantity \
         from lineitem join part on l_partkey = p_partkey \
         join supplier on l_suppkey = s_suppkey \
         join orders on l_orderkey = o_orderkey \
         where p_container = 'SM BOX' and p_size < 5 and s_acctbal > 9000 \
           and o_orderdate between date '1995-01-01' and date '1995-01-31' \
         group by s_nationkey order by s_nationkey",
    ),
    (
        "recent orders",
        "select l_shipmode, count(*) as n, sum(l_extendedprice) as revenue \
         from lineitem join orders on l_orderkey = o_orderkey \
         where o_orderdate >= date '1998-07-15' group by l_shipmode order by l_shipmode",
    ),
    (
        // `lineitem` is stored in order-key order: the orders' keys prune its row groups.
        "early urgent orders",
        "select l_returnflag, count(*) as n, sum(l_extendedprice) as revenue \
         from lineitem join orders on l_orderkey = o_orderkey \
         where o_orderkey < 60000 and o_orderpriority = '1-URGENT' \
         group by l_returnflag order by l_returnflag",
    ),
    (
        // No join: a TopK's filter inside its stage, with the scan reading the row
        // groups of the largest keys first.
        "TopK: last order keys",
        "select l_orderkey, l_extendedprice from lineitem order by l_orderkey desc limit 5",
    ),
    (
        // The nation filter reaches the supplier scan, two joins and a stage below.
        "snowflake: German suppliers",
        "select s_name, count(*) as n, sum(l_extendedprice) as revenue \
         from lineitem join supplier on l_suppkey = s_suppkey \
         join nation on s_nationkey = n_nationkey \
         where n_name = 'GERMANY' group by s_name order by s_name",
    ),
    (
        "semi: forest parts",
        "select count(*) as n, sum(l_quantity) as quantity from lineitem \
         where l_partkey in (select p_partkey from part where p_name like 'forest%')",
    ),
    (
        "left: customers",
        "select c_mktsegment, count(o_orderkey) as orders from customer \
         left join orders on c_custkey = o_custkey and o_orderdate < date '1992-02-01' \
         where c_acctbal > 9990 group by c_mktsegment order by c_mktsegment",
    ),
];

/// What to run (the flags of `baton bench joins`).
#[derive(Debug, Clone, clap::Args)]
pub struct JoinsBench {
    /// Scale factor; data is generated and cached on first use.
    #[arg(long, default_value = "1")]
    pub scale: f64,
    /// Executor processes.
    #[arg(long, default_value = "2")]
    pub executors: usize,
    /// Runs of each query; the fastest counts.
    #[arg(long, default_value = "3", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub iterations: usize,
    /// Directory for joins.json.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
}

/// The fastest run of each query on each system, in seconds.
#[derive(Debug, Clone, Serialize)]
pub struct JoinTiming {
    /// The query's name.
    pub query: String,
    /// Single-node DataFusion, dynamic filters on.
    pub datafusion: f64,
    /// Single-node DataFusion, dynamic filters off.
    pub datafusion_no_filters: f64,
    /// Baton, join filters on.
    pub baton: f64,
    /// Baton, join filters off.
    pub baton_no_filters: f64,
}

/// The run.
#[derive(Debug, Clone, Serialize)]
pub struct JoinsReport {
    /// Scale factor.
    pub scale: f64,
    /// Executor processes.
    pub executors: usize,
    /// Per query.
    pub queries: Vec<JoinTiming>,
}

/// Runs the benchmark.
pub async fn run_joins_bench(bench: &JoinsBench) -> Result<JoinsReport, BenchError> {
    let catalog = datagen::cached_tpch(&datagen::cache_dir(), bench.scale, TableFormat::Parquet)?;
    let mut single = Vec::new();
    for filters in [true, false] {
        let mut config = SessionConfig::new().with_target_partitions(host_cores());
        // Each kind's own switch: DataFusion reads those, not the one over them all.
        crate::config::switch_dynamic_filters(config.options_mut(), filters);
        let ctx = SessionContext::new_with_config(config);
        register_catalog(&ctx, &catalog).await?;
        let mut times = Vec::new();
        for (number, (_, sql)) in STAR_JOINS.iter().enumerate() {
            times.push(
                fastest(bench.iterations, async || {
                    ctx.sql(sql).await?.collect().await.map(|_| ())
                })
                .await
                .map_err(|source| BenchError::Baseline {
                    query: number as u32 + 1,
                    source,
                })?,
            );
        }
        single.push(times);
    }
    let mut baton = Vec::new();
    for filters in ["on", "off"] {
        let scheduler_args = vec![
            "--catalog".to_string(),
            catalog.display().to_string(),
            "--dynamic-filters".into(),
            filters.into(),
        ];
        let cluster = ProcessCluster::start(&scheduler_args, bench.executors, &[], false).await?;
        let client = BatonClient::connect_as(cluster.address(), &cluster.login()?)
            .await
            .map_err(|source| BenchError::Query { query: 0, source })?;
        let mut times = Vec::new();
        for (number, (_, sql)) in STAR_JOINS.iter().enumerate() {
            let mut client = client.clone();
            times.push(
                fastest(bench.iterations, async || client.sql(sql).await.map(|_| ()))
                    .await
                    .map_err(|source| BenchError::Query {
                        query: number as u32 + 1,
                        source,
                    })?,
            );
        }
        baton.push(times);
    }
    let queries = STAR_JOINS
        .iter()
        .enumerate()
        .map(|(i, (name, _))| JoinTiming {
            query: name.to_string(),
            datafusion: single[0][i],
            datafusion_no_filters: single[1][i],
            baton: baton[0][i],
            baton_no_filters: baton[1][i],
        })
        .collect();
    let report = JoinsReport {
        scale: bench.scale,
        executors: bench.executors,
        queries,
    };
    write_json(&bench.out, "joins.json", &report)?;
    Ok(report)
}

/// The fastest of `iterations` runs of `run`, in seconds.
async fn fastest<E>(
    iterations: usize,
    mut run: impl AsyncFnMut() -> Result<(), E>,
) -> Result<f64, E> {
    let mut best = f64::INFINITY;
    for _ in 0..iterations.max(1) {
        let started = Instant::now();
        run().await?;
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// The report as a table: seconds per system and the two ratios the goals name.
pub fn format_joins_report(report: &JoinsReport) -> String {
    let mut rows = vec![vec![
        "query".to_string(),
        "DF".into(),
        "DF no filters".into(),
        "Baton".into(),
        "Baton no filters".into(),
        "Baton/DF".into(),
        "Baton/no filters".into(),
    ]];
    for q in &report.queries {
        rows.push(vec![
            q.query.clone(),
            format!("{:.3}", q.datafusion),
            format!("{:.3}", q.datafusion_no_filters),
            format!("{:.3}", q.baton),
            format!("{:.3}", q.baton_no_filters),
            format!("{:.2}x", q.baton / q.datafusion),
            format!("{:.2}x", q.baton / q.baton_no_filters),
        ]);
    }
    format!(
        "TPC-H SF {} star joins, Baton on {} executor processes (seconds, fastest run)\n{}",
        report.scale,
        report.executors,
        text_table(&rows)
    )
}
