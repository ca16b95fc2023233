//! Bounded resources: a query that cannot fit in an executor's memory fails with a clear
//! error while the cluster goes on.

mod common;

use baton::cluster::{ClusterConfig, LocalCluster};

/// Two executors of `memory_limit` bytes each over the test data, every query split 4
/// ways.
async fn limited_cluster(memory_limit: u64) -> LocalCluster {
    let mut config = ClusterConfig::with_catalog(2, 2, common::tpch_catalog());
    config.executor.memory_limit = Some(memory_limit);
    config.scheduler.target_partitions = Some(4);
    config.scheduler.partition_data_bytes = 0;
    LocalCluster::start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_query_that_cannot_fit_fails_clearly_and_the_cluster_goes_on() {
    let cluster = limited_cluster(2 << 20).await;
    let mut client = cluster.client().await.unwrap();
    // A hash join's build side cannot spill: every comment of lineitem in one table.
    let too_big = "select count(*) from lineitem a join lineitem b \
                   on a.l_comment = b.l_comment and a.l_orderkey = b.l_orderkey";
    let big = client.submit_sql(too_big).await.unwrap();
    let small = client.sql("select count(*) from nation").await.unwrap();
    assert_eq!(small.rows(), 1);
    let error = client.fetch(&big).await.unwrap_err().to_string();
    assert!(
        error.to_lowercase().contains("resources exhausted"),
        "{error}"
    );
    // Every executor is still there and serves the next query.
    assert_eq!(cluster.scheduler().executors().0, 2);
    let again = client.sql("select count(*) from region").await.unwrap();
    assert_eq!(again.rows(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sessions_memory_limit_bounds_its_own_tasks_only() {
    let cluster = limited_cluster(256 << 20).await;
    let mut limited = cluster.client().await.unwrap();
    let mut other = cluster.client().await.unwrap();
    // A hash join's build side cannot spill; this one holds far more than 64 KiB.
    let join = "select count(*) from lineitem a join orders b on a.l_orderkey = b.o_orderkey";
    let expected = other.sql(join).await.unwrap();
    limited
        .sql("set datafusion.runtime.memory_limit = '64K'")
        .await
        .unwrap();
    let error = limited.sql(join).await.unwrap_err().to_string();
    assert!(
        error.contains("Resources exhausted") && error.contains("memory_limit is per task"),
        "{error}"
    );
    // The other session, and the executors, go on as before.
    let again = other.sql(join).await.unwrap();
    assert_eq!(again.batches, expected.batches);
    assert_eq!(cluster.scheduler().executors().0, 2);
}

/// Writes `rows` rows of (k BIGINT, v VARCHAR) to `dir/big.parquet`, `v` distinct for
/// 1.5 million of them and some 35 bytes long, and a catalog naming it `big`.
async fn big_table(dir: &std::path::Path, rows: u64) -> std::path::PathBuf {
    use datafusion::dataframe::DataFrameWriteOptions;
    let data = dir.join("big.parquet");
    let sql = format!(
        "select value as k, concat('key-', cast(value % 1500000 as varchar), '-', \
         repeat('x', 20)) as v from generate_series(1, {rows})"
    );
    datafusion::prelude::SessionContext::new()
        .sql(&sql)
        .await
        .unwrap()
        .write_parquet(
            data.to_str().unwrap(),
            DataFrameWriteOptions::new().with_single_file_output(true),
            None,
        )
        .await
        .unwrap();
    let catalog = dir.join("catalog.toml");
    std::fs::write(
        &catalog,
        "[[table]]\nname = 'big'\nformat = 'parquet'\npath = 'big.parquet'\n",
    )
    .unwrap();
    catalog
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_memory_limited_cluster_sorts_and_aggregates_more_than_its_memory_by_spilling() {
    let dir = tempfile::tempdir().unwrap();
    // Some 160 MB as Arrow arrays; each executor has 64 MiB for its tasks and its
    // shuffle output together.
    let catalog = big_table(dir.path(), 2_000_000).await;
    let mut config = ClusterConfig::with_catalog(2, 2, catalog.clone());
    config.executor.memory_limit = Some(64 << 20);
    // One task per slot: each task's share of the groups (a quarter) outgrows its
    // share of the memory (the default, four per slot, would make them fit).
    config.scheduler.target_partitions = Some(4);
    config.scheduler.partition_data_bytes = 0;
    let cluster = LocalCluster::start(config).await.unwrap();
    let mut client = cluster.client().await.unwrap();
    let reference = common::single_node(&catalog).await;
    let spilled = || -> u64 { cluster.executors().iter().map(|e| e.spilled_bytes()).sum() };

    // A sort of the whole table (the window needs every row in order).
    let sort = "select k, v, rn from (select k, v, row_number() over (order by v, k) as rn \
                from big) where rn % 100000 = 0 order by rn";
    // An aggregation to 1.5 million groups, too many to hold.
    let aggregate = "select count(*) as groups, sum(c) as n, max(c) as most from \
                     (select v, count(*) as c from big group by v)";
    let mut before = spilled();
    for sql in [sort, aggregate] {
        let result = client.sql(sql).await.unwrap();
        let want = common::expected(&reference, sql).await;
        common::compare(&want, &result.batches, common::is_ordered(sql)).unwrap();
        assert!(!result.batches.is_empty(), "{sql}");
        let now = spilled();
        assert!(now > before, "{sql}: nothing spilled ({now} bytes in all)");
        before = now;
    }
}

/// Threads of this process now (Linux `/proc/self/status`).
fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_submissions_wait_for_admission_and_all_succeed_on_bounded_threads() {
    use baton::proto::QueryState;
    let mut config = ClusterConfig::with_catalog(2, 2, common::tpch_catalog());
    // One at a time: planning (two threads here) hands queries over faster than they
    // run, so they wait for admission.
    config.scheduler.max_running_queries = Some(1);
    let cluster = LocalCluster::start(config).await.unwrap();
    let client = cluster.client().await.unwrap();
    let threads_before = threads();
    let submissions: Vec<_> = (0..200)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let sql = format!("select count(*) + {i} as n from nation");
                client.sql(&sql).await.map(|result| result.rows())
            })
        })
        .collect();
    let scheduler = cluster.scheduler().clone();
    let mut most_threads = 0;
    let all_done = common::eventually(std::time::Duration::from_secs(120), async || {
        most_threads = most_threads.max(threads());
        let statuses = scheduler.list();
        statuses
            .iter()
            .filter(|s| s.state == QueryState::Succeeded as i32)
            .count()
            == 200
    })
    .await;
    assert!(all_done, "not every query succeeded");
    for submission in submissions {
        assert_eq!(submission.await.unwrap().unwrap(), 1);
    }
    // One ran at a time: each started once the one before had ended; and some waited
    // for admission after they were planned.
    let mut statuses = scheduler.list();
    statuses.sort_by_key(|s| (s.started_at_ms, s.ended_at_ms));
    for pair in statuses.windows(2) {
        assert!(
            pair[1].started_at_ms >= pair[0].ended_at_ms,
            "two queries ran at once: {:?}",
            pair
        );
    }
    let waited = statuses
        .iter()
        .filter(|s| s.started_at_ms > s.submitted_at_ms)
        .count();
    assert!(waited > 0, "no query waited for admission");
    // Planning runs on a fixed pool: 200 submissions start no thread per query.
    assert!(
        most_threads < threads_before + 32,
        "{threads_before} threads before, {most_threads} at most"
    );
}
