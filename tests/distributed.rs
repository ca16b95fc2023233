//! End to end on an in-process cluster (scheduler + 3 executors over real gRPC and Flight
//! on 127.0.0.1): all 22 TPC-H queries against single-node DataFusion, shuffle across
//! executors, bad input, and a plan larger than gRPC's default message limit.

mod common;

use baton::catalog::TableFormat;
use baton::client::BatonClient;
use baton::cluster::{ClusterConfig, LocalCluster};
use baton::proto::QueryState;
use baton::tpch::QUERIES;
use futures::TryStreamExt;

async fn cluster(executors: usize) -> LocalCluster {
    let mut config = ClusterConfig::with_catalog(executors, 2, common::tpch_catalog());
    config.scheduler.target_partitions = Some(4);
    // Every query in 4 partitions, however little data it reads, so that the small
    // test tables are shuffled as big ones would be.
    config.scheduler.partition_data_bytes = 0;
    LocalCluster::start(config).await.expect("start cluster")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_22_tpch_queries_match_single_node_datafusion_and_shuffle_crosses_executors() {
    let cluster = cluster(3).await;
    let reference = common::single_node(&common::tpch_catalog()).await;
    let mut client = cluster.client().await.unwrap();
    let mut failures = Vec::new();
    for query in QUERIES {
        let expected = common::expected(&reference, query.sql).await;
        let actual = match client.sql(query.sql).await {
            Ok(result) => result.batches,
            Err(e) => {
                failures.push(format!("Q{}: failed: {e}", query.number));
                continue;
            }
        };
        let ordered = common::is_ordered(query.sql);
        if let Err(diff) = common::compare(&expected, &actual, ordered) {
            failures.push(format!("Q{}: {diff}", query.number));
        }
    }
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));

    let busy = cluster
        .executors()
        .iter()
        .filter(|e| e.tasks_completed() > 0)
        .count();
    assert_eq!(busy, 3, "every executor ran tasks");
    let fetched: u64 = cluster.executors().iter().map(|e| e.bytes_fetched()).sum();
    assert!(fetched > 0, "shuffle data crossed executors over Flight");
    for query in client.list().await.unwrap() {
        assert_eq!(query.state, QueryState::Succeeded as i32, "{query:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queries_over_little_data_run_one_task_per_stage_and_match_single_node_datafusion() {
    // The default partition sizing: TPC-H SF 0.01 is a few MiB, one partition's worth.
    let config = ClusterConfig::with_catalog(2, 2, common::tpch_catalog());
    let cluster = LocalCluster::start(config).await.unwrap();
    let reference = common::single_node(&common::tpch_catalog()).await;
    let mut client = cluster.client().await.unwrap();
    for number in [1, 3, 13, 18, 22] {
        let query = baton::tpch::query(number).unwrap();
        let id = client.submit_sql(query.sql).await.unwrap();
        let actual = client.fetch(&id).await.unwrap();
        let expected = common::expected(&reference, query.sql).await;
        let ordered = common::is_ordered(query.sql);
        if let Err(diff) = common::compare(&expected, &actual.batches, ordered) {
            panic!("Q{number}: {diff}");
        }
        let status = client.status(&id).await.unwrap();
        assert!(
            status.stages.iter().all(|stage| stage.tasks_total == 1),
            "Q{number}: {:?}",
            status.stages
        );
        // Each stage says what it runs and when it ran.
        for stage in &status.stages {
            assert!(
                stage.operators.starts_with("ShuffleWriter > "),
                "Q{number}: {stage:?}"
            );
            assert!(
                stage.started_at_ms >= status.started_at_ms
                    && stage.ended_at_ms >= stage.started_at_ms
                    && stage.ended_at_ms <= status.ended_at_ms
                    && stage.task_micros > 0,
                "Q{number}: {stage:?} in {status:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scans_split_at_several_unit_sizes_match_single_node_datafusion() {
    // Parquet (row groups with statistics) and tbl (text, no statistics); each query is
    // planned in two partitions, so a scan stage's tasks past two are its units.
    let runs = [
        (TableFormat::Parquet, [64 << 10, 1 << 20].as_slice()),
        (TableFormat::Tbl, [256 << 10].as_slice()),
    ];
    for (format, units) in runs {
        let catalog = common::tpch_catalog_as(format);
        let reference = common::single_node(&catalog).await;
        for &unit in units {
            let mut config = ClusterConfig::with_catalog(3, 2, catalog.clone());
            config.scheduler.split_unit_bytes = unit;
            config.scheduler.target_partitions = Some(2);
            config.scheduler.partition_data_bytes = 0;
            let cluster = LocalCluster::start(config).await.expect("start cluster");
            let mut client = cluster.client().await.unwrap();
            let mut failures = Vec::new();
            for query in QUERIES {
                let expected = common::expected(&reference, query.sql).await;
                let id = client.submit_sql(query.sql).await.unwrap();
                let actual = match client.fetch(&id).await {
                    Ok(result) => result.batches,
                    Err(e) => {
                        failures.push(format!("Q{}: failed: {e}", query.number));
                        continue;
                    }
                };
                if let Err(diff) =
                    common::compare(&expected, &actual, common::is_ordered(query.sql))
                {
                    failures.push(format!("Q{}: {diff}", query.number));
                }
                if query.number == 1 {
                    // Q1 scans lineitem (3 MiB as Parquet, 7 as text) in its first stage.
                    let status = client.status(&id).await.unwrap();
                    let scan_tasks = status.stages[0].tasks_total;
                    assert!(
                        scan_tasks >= 4,
                        "{format:?} at {unit} B: Q1's scan runs {scan_tasks} units"
                    );
                }
            }
            assert!(
                failures.is_empty(),
                "{format:?} at {unit} B units:\n{}",
                failures.join("\n")
            );
        }
    }
}

/// Two executors over the TPC-H data, `partitions` tasks per stage whatever the data,
/// and results of up to `inline_limit` bytes per partition held by the scheduler.
async fn results_cluster(partitions: usize, inline_limit: u64) -> LocalCluster {
    let mut config = ClusterConfig::with_catalog(2, 2, common::tpch_catalog());
    config.scheduler.target_partitions = Some(partitions);
    config.scheduler.partition_data_bytes = 0;
    config.scheduler.inline_result_bytes = inline_limit;
    LocalCluster::start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn results_served_by_the_scheduler_or_fetched_from_executors_match_single_node_datafusion() {
    let reference = common::single_node(&common::tpch_catalog()).await;
    let sqls = [
        baton::tpch::query(1).unwrap().sql,
        baton::tpch::query(10).unwrap().sql,
        // Four result partitions of different sizes (no ordering: no merge into one).
        "select o_orderpriority, o_orderstatus, count(*) from orders \
         group by o_orderpriority, o_orderstatus",
        // Lineitem is sorted by order key: the first scan partition holds every row
        // (kilobytes), the others none (a few hundred bytes of schema).
        "select l_orderkey, l_partkey, l_comment from lineitem where l_orderkey < 1000",
        // Megabytes: each partition over the default limit or near it.
        "select l_orderkey, l_partkey, l_suppkey, l_comment from lineitem",
    ];
    // Results left on the executors, a limit some partitions fit and others do not, and
    // the default.
    for limit in [
        0,
        2048,
        ClusterConfig::default().scheduler.inline_result_bytes,
    ] {
        let cluster = results_cluster(4, limit).await;
        let mut client = cluster.client().await.unwrap();
        for sql in sqls {
            let actual = client.sql(sql).await.unwrap();
            let expected = common::expected(&reference, sql).await;
            if let Err(diff) = common::compare(&expected, &actual.batches, common::is_ordered(sql))
            {
                panic!("inline limit {limit}: {sql}: {diff}");
            }
        }
        // Every result was fetched: the executors let go of all of it (told over their
        // streams, so it may take a moment).
        let left = || -> usize { cluster.executors().iter().map(|e| e.store().len()).sum() };
        let released =
            common::eventually(std::time::Duration::from_secs(5), async || left() == 0).await;
        assert!(
            released,
            "inline limit {limit}: {} partitions left on executors: {:?}",
            left(),
            cluster
                .executors()
                .iter()
                .map(|e| e.store().held_outputs())
                .collect::<Vec<_>>()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fetch_dropped_after_its_first_batch_leaves_the_result_to_fetch_again() {
    let reference = common::single_node(&common::tpch_catalog()).await;
    // Megabytes: far more than a stream's flow-control window, so the scheduler cannot
    // have sent it all to a client that stopped reading.
    let sql = "select l_orderkey, l_partkey, l_suppkey, l_comment from lineitem";
    let expected = common::expected(&reference, sql).await;
    // Results left on the executors, and held whole by the scheduler.
    for limit in [0, 64 << 20] {
        let cluster = results_cluster(2, limit).await;
        let mut client = cluster.client().await.unwrap();
        let id = client.submit_sql(sql).await.unwrap();
        let mut stream = client.result_stream(&id).await.unwrap();
        let first = stream.try_next().await.unwrap();
        assert!(first.is_some_and(|b| b.num_rows() > 0), "limit {limit}");
        drop(stream);
        let actual = client.fetch(&id).await.unwrap();
        if let Err(diff) = common::compare(&expected, &actual.batches, false) {
            panic!("inline limit {limit}: fetched again: {diff}");
        }
        // Fetched whole, the result is gone.
        let again = client.fetch(&id).await.expect_err("a third fetch");
        assert!(again.to_string().contains("already fetched"), "{again}");
    }
}

/// Submits `sql`, expects the query to fail with `cause` in its status and in the error
/// the client sees.
async fn expect_failure(client: &mut BatonClient, sql: &str, cause: &str) {
    let id = client.submit_sql(sql).await.unwrap();
    let error = client.fetch(&id).await.expect_err(sql).to_string();
    let status = client.status(&id).await.unwrap();
    assert_eq!(status.state, QueryState::Failed as i32, "{sql}: {status:?}");
    assert!(
        status.error.contains(cause),
        "{sql}: status error {:?} lacks {cause:?}",
        status.error
    );
    assert!(
        error.contains(cause),
        "{sql}: client error {error:?} lacks {cause:?}"
    );
    // Bad SQL or data fails the same way every time: it is not run again.
    assert!(
        !status.error.contains("times, last with"),
        "{sql}: a deterministic failure was retried: {:?}",
        status.error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_fails_the_query_with_its_cause_and_the_cluster_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    // A catalog whose `ghost` table names a file that does not exist, and whose `gone`
    // table's file is deleted after it is registered.
    std::fs::write(dir.path().join("gone.tbl"), "1|a|\n").unwrap();
    let catalog = dir.path().join("catalog.toml");
    std::fs::write(
        &catalog,
        "[[table]]\nname='ghost'\nformat='tbl'\npath='missing.tbl'\ncolumns=[['id','BIGINT'],['v','VARCHAR']]\n\
         [[table]]\nname='gone'\nformat='tbl'\npath='gone.tbl'\ncolumns=[['id','BIGINT'],['v','VARCHAR']]\n\
         [[table]]\nname='words'\nformat='csv'\npath='words.csv'\ncolumns=[['w','VARCHAR']]\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("words.csv"), "w\nalpha\nbeta\n").unwrap();
    let cluster = LocalCluster::start(ClusterConfig::with_catalog(2, 2, catalog))
        .await
        .unwrap();
    std::fs::remove_file(dir.path().join("gone.tbl")).unwrap();
    let mut client = cluster.client().await.unwrap();

    expect_failure(&mut client, "selec 1", "ParserError").await;
    expect_failure(&mut client, "select * from no_such_table", "no_such_table").await;
    expect_failure(&mut client, "select * from ghost", "missing.tbl").await;
    expect_failure(&mut client, "select * from gone", "gone.tbl").await;
    expect_failure(
        &mut client,
        "select cast(w as int) from words",
        "Cannot cast",
    )
    .await;

    // Only queries run: nothing reads or writes files the catalog does not name.
    let secret = dir.path().join("secret.csv");
    std::fs::write(&secret, "s\nhunter2\n").unwrap();
    let written = dir.path().join("written.csv");
    for (sql, cause) in [
        (
            format!(
                "create external table s (s varchar) stored as csv location '{}'",
                secret.display()
            ),
            "DDL",
        ),
        (
            format!("copy (select 1) to '{}'", written.display()),
            "COPY",
        ),
        ("insert into words values ('gamma')".to_string(), "DML"),
        ("drop table words".to_string(), "DDL"),
    ] {
        expect_failure(&mut client, &sql, "refused").await;
        expect_failure(&mut client, &sql, cause).await;
    }
    assert!(!written.exists(), "COPY wrote a file");
    // A plan the client made may read only the catalog's files.
    let outsider = datafusion::prelude::SessionContext::new();
    outsider
        .sql(&format!(
            "create external table s (s varchar) stored as csv location '{}'",
            secret.display()
        ))
        .await
        .unwrap();
    let plan = outsider
        .sql("select * from s")
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    let id = client
        .submit_plan(baton::planner::encode_plan(plan).unwrap(), "outside")
        .await
        .unwrap();
    let error = client.fetch(&id).await.unwrap_err().to_string();
    assert!(error.contains("no file of a table"), "{error}");

    let result = client.sql("select count(*) as n from words").await.unwrap();
    assert_eq!(
        common::rows(&result.batches),
        vec![vec![common::Cell::Text("2".into())]]
    );
    let (executors, (_, busy)) = cluster.scheduler().executors();
    assert_eq!(
        (executors, busy),
        (2, 0),
        "executors stay connected and slots are free"
    );
}

#[test]
fn a_bad_catalog_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.toml");
    std::fs::write(&catalog, "[[table]]\nname = 'x'\nformat = ").unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let error = runtime
        .block_on(LocalCluster::start(ClusterConfig::with_catalog(
            2,
            2,
            catalog.clone(),
        )))
        .expect_err("a bad catalog must not start");
    let text = error.to_string();
    assert!(text.contains("catalog.toml"), "{text}");
    assert!(text.contains("not valid"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plan_larger_than_grpcs_default_message_limit_runs() {
    let cluster = cluster(2).await;
    let reference = common::single_node(&common::tpch_catalog()).await;
    let keys = (1..=400_000)
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let sql = format!(
        "select count(*) as n, sum(l_quantity) as q from lineitem where l_orderkey in ({keys})"
    );
    assert!(sql.len() > 2 << 20);
    let expected = common::expected(&reference, &sql).await;
    // Planned on the client: the serialized plan (well over 4 MiB) travels in SubmitQuery
    // and in every RunTask.
    let plan = reference
        .sql(&sql)
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    let bytes = baton::planner::encode_plan(plan).unwrap();
    assert!(bytes.len() > 4 << 20, "plan is {} bytes", bytes.len());
    let mut client = cluster.client().await.unwrap();
    let id = client.submit_plan(bytes, "large IN list").await.unwrap();
    let actual = client.fetch(&id).await.unwrap();
    common::compare(&expected, &actual.batches, false).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_over_the_schedulers_limit_is_refused_and_the_next_one_served() {
    let mut config = ClusterConfig::with_catalog(1, 2, common::tpch_catalog());
    config.scheduler.max_request_bytes = 64 << 10;
    let cluster = LocalCluster::start(config).await.unwrap();
    let mut client = cluster.client().await.unwrap();
    let keys = (1..=30_000)
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let sql = format!("select count(*) from lineitem where l_orderkey in ({keys})");
    assert!(sql.len() > 64 << 10);
    let error = client.submit_sql(&sql).await.unwrap_err().to_string();
    assert!(error.contains("message length too large"), "{error}");
    let answer = client.sql("select count(*) from nation").await.unwrap();
    assert_eq!(answer.rows(), 1);
}
