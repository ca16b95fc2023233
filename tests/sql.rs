//! SQL beyond TPC-H on an in-process cluster (scheduler + 3 executors over real gRPC and
//! Flight on 127.0.0.1), against single-node DataFusion: unions whose inputs are
//! partitioned alike, metadata statements, session tables and session settings.

mod common;

use baton::cluster::{ClusterConfig, LocalCluster};
use baton::proto::QueryState;

/// Three executors over the TPC-H data, every stage in four tasks, DDL allowed under
/// `prefix`.
async fn cluster(prefix: &std::path::Path) -> LocalCluster {
    let mut config = ClusterConfig::with_catalog(3, 2, common::tpch_catalog());
    config.scheduler.target_partitions = Some(4);
    config.scheduler.partition_data_bytes = 0;
    config.scheduler.allow_ddl = true;
    config.scheduler.data_prefixes = vec![prefix.display().to_string()];
    LocalCluster::start(config).await.expect("start cluster")
}

/// Runs `sql` on the cluster, checks its rows (in order) against `reference`'s, and
/// returns them.
async fn same_as_single_node(
    client: &mut baton::client::BatonClient,
    reference: &datafusion::prelude::SessionContext,
    sql: &str,
) -> baton::client::QueryResult {
    let expected = common::expected(reference, sql).await;
    let actual = client
        .sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    if let Err(diff) = common::compare(&expected, &actual.batches, true) {
        panic!("{sql}: {diff}");
    }
    actual
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unions_on_one_key_and_windows_on_a_constant_key_match_single_node_datafusion() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    let reference = common::single_node(&common::tpch_catalog()).await;
    let mut client = cluster.client().await.unwrap();
    for sql in [
        // Three aggregations by the same key, aggregated again by it: DataFusion
        // interleaves the union's hash-partitioned inputs.
        "select k, sum(v) as total, count(*) as n from (\
           select l_orderkey as k, sum(l_quantity) as v from lineitem group by l_orderkey \
           union all select o_orderkey, count(*) from orders group by o_orderkey \
           union all select l_orderkey, max(l_extendedprice) from lineitem group by l_orderkey\
         ) group by k order by k",
        // Joins on the same key.
        "select k, count(*) as n from (\
           select o_orderkey as k from orders join lineitem on o_orderkey = l_orderkey \
           where l_quantity > 40 \
           union all select l_orderkey from lineitem join orders on l_orderkey = o_orderkey \
           where o_totalprice > 300000\
         ) group by k order by n desc, k limit 50",
        // A window partitioned by a key a filter made constant: no sort is planned for
        // it, which holds only while the stage reading the shuffle knows the constant.
        "select n_regionkey, n_name, count(*) over (partition by n_regionkey order by n_regionkey) as n \
         from nation where n_regionkey = 1 order by n_name",
        // The shape: a union of aggregations by the same key, rolled up.
        "select channel, id, sum(sales) as sales from (\
           select 'store' as channel, l_suppkey as id, sum(l_extendedprice) as sales \
             from lineitem group by l_suppkey \
           union all select 'catalog', ps_suppkey, sum(ps_supplycost) \
             from partsupp group by ps_suppkey \
           union all select 'web', s_suppkey, sum(s_acctbal) from supplier group by s_suppkey\
         ) group by rollup(channel, id) order by channel, id limit 100",
    ] {
        same_as_single_node(&mut client, &reference, sql).await;
    }
}

/// What `sql` answers in `client`'s session, as a printed table.
async fn answer(client: &mut baton::client::BatonClient, sql: &str) -> String {
    let result = client
        .sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    datafusion::arrow::util::pretty::pretty_format_batches(&result.batches)
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn show_information_schema_and_prepared_statements_answer_from_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    let mut client = cluster.client().await.unwrap();
    let batch_size = "show datafusion.execution.batch_size";
    let shown = answer(&mut client, batch_size).await;
    assert!(shown.contains("8192"), "{shown}");
    // The session's own setting, and its own table, are what its metadata shows.
    answer(&mut client, "set datafusion.execution.batch_size = 1234").await;
    answer(&mut client, "create table mine as values (1, 'a')").await;
    let shown = answer(&mut client, batch_size).await;
    assert!(shown.contains("1234"), "{shown}");
    let listed = answer(
        &mut client,
        "select table_name from information_schema.tables where table_schema = 'public' order by table_name",
    )
    .await;
    assert!(
        listed.contains("lineitem") && listed.contains("mine"),
        "{listed}"
    );
    let columns = answer(
        &mut client,
        "select count(*) from information_schema.columns where table_name = 'nation'",
    )
    .await;
    assert!(columns.contains("| 4 "), "{columns}");
    // SQL prepared statements are the session's too.
    answer(
        &mut client,
        "prepare by_region(bigint) as select count(*) as n from nation where n_regionkey = $1",
    )
    .await;
    let executed = answer(&mut client, "execute by_region(1)").await;
    assert!(executed.contains("| 5 "), "{executed}");
    answer(&mut client, "deallocate by_region").await;
    assert!(client.sql("execute by_region(1)").await.is_err());
    // Another session sees neither.
    let mut other = cluster.client().await.unwrap();
    let shown = answer(&mut other, batch_size).await;
    assert!(shown.contains("8192"), "{shown}");
    let tables = other
        .sql("select table_name from information_schema.tables where table_name = 'mine'")
        .await
        .unwrap();
    assert_eq!(tables.rows(), 0);
    // Each answered by the scheduler; their status says so like any query's.
    let id = client.submit_sql("show all").await.unwrap();
    assert!(client.fetch(&id).await.unwrap().rows() > 50);
    let status = client.status(&id).await.unwrap();
    assert_eq!(status.state, QueryState::Succeeded as i32);
    assert!(
        status.stages[0].operators.contains("StreamingTable"),
        "{:?}",
        status.stages
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_tables_and_settings_reach_the_executors() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    let reference = common::single_node(&common::tpch_catalog()).await;
    let mut client = cluster.client().await.unwrap();
    for ddl in [
        "create table regions_seen (r bigint, label varchar) as values (0, 'africa'), (1, 'america')",
        "insert into regions_seen values (2, 'asia'), (3, 'europe')",
        "create table big_orders as select o_orderkey, o_custkey, o_totalprice from orders where o_totalprice > 400000",
        "insert into big_orders select o_orderkey, o_custkey, o_totalprice from orders where o_totalprice < 1000",
    ] {
        client
            .sql(ddl)
            .await
            .unwrap_or_else(|e| panic!("{ddl}: {e}"));
        reference.sql(ddl).await.unwrap().collect().await.unwrap();
    }
    // Session tables joined with catalog tables, shuffled across executors.
    for sql in [
        "select label, count(*) as n from regions_seen join nation on r = n_regionkey group by label order by label",
        "select c_mktsegment, count(*) as n, sum(o_totalprice) as total from big_orders \
         join customer on o_custkey = c_custkey group by c_mktsegment order by c_mktsegment",
        "select count(*) as n from big_orders",
        // Dictionary-encoded columns, shuffled by and returned as dictionaries.
        "select arrow_cast(c_mktsegment, 'Dictionary(Int32, Utf8)') as segment, count(*) as n \
         from customer group by segment order by segment",
        "select arrow_cast(n_name, 'Dictionary(Int16, Utf8)') as name from nation order by name",
    ] {
        same_as_single_node(&mut client, &reference, sql).await;
    }
    assert!(
        cluster
            .executors()
            .iter()
            .filter(|e| e.tasks_completed() > 0)
            .count()
            > 1,
        "the session tables' scans ran on the executors"
    );
    // A setting the session changed is the one its tasks run with: a function that
    // reads the time zone as it runs answers for the session's zone on the executors.
    let sql = "select l_orderkey, l_linenumber, to_unixtime(cast(l_shipdate as varchar)) as shipped \
               from lineitem where l_orderkey < 200 order by l_orderkey, l_linenumber";
    let in_utc = client.sql(sql).await.unwrap();
    let set = "set datafusion.execution.time_zone = '+05:00'";
    client.sql(set).await.unwrap();
    reference.sql(set).await.unwrap().collect().await.unwrap();
    let actual = same_as_single_node(&mut client, &reference, sql).await;
    assert!(
        common::compare(&in_utc.batches, &actual.batches, true).is_err(),
        "the time zone changed the answer"
    );
}

/// The `output_rows` figures of the `operator` lines in EXPLAIN ANALYZE `batches`.
fn output_rows_of(
    batches: &[datafusion::arrow::array::RecordBatch],
    operator: &str,
) -> Vec<String> {
    use datafusion::arrow::array::AsArray;
    let mut rows = Vec::new();
    for batch in batches {
        for text in batch.column(1).as_string::<i32>().iter().flatten() {
            for line in text
                .lines()
                .filter(|l| l.trim_start().starts_with(operator))
            {
                let figure = line.split("output_rows=").nth(1).unwrap_or("");
                rows.push(figure.split([',', ']']).next().unwrap_or("").to_string());
            }
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn explain_analyze_shows_every_stage_with_what_its_tasks_measured() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    let reference = common::single_node(&common::tpch_catalog()).await;
    let mut client = cluster.client().await.unwrap();
    let sql = "explain analyze select o_orderpriority, count(*) from orders \
               join lineitem on l_orderkey = o_orderkey where l_quantity > 45 \
               group by o_orderpriority";
    let id = client.submit_sql(sql).await.unwrap();
    let result = client.fetch(&id).await.unwrap();
    let status = client.status(&id).await.unwrap();
    assert_eq!(status.state(), QueryState::Succeeded);

    // One row per stage, in stage order, each with its operators' metrics and none of
    // the executors' own wrappers.
    use datafusion::arrow::array::AsArray;
    let batch = &result.batches[0];
    let kinds: Vec<&str> = batch
        .column(0)
        .as_string::<i32>()
        .iter()
        .flatten()
        .collect();
    let stages: Vec<String> = (0..status.stages.len())
        .map(|i| format!("Stage {i}"))
        .collect();
    assert_eq!(kinds, stages);
    assert!(stages.len() >= 3, "{kinds:?}");
    for (text, stage) in batch
        .column(1)
        .as_string::<i32>()
        .iter()
        .flatten()
        .zip(&status.stages)
    {
        assert!(
            text.starts_with(&format!("{} tasks ({0} reported)", stage.tasks_total)),
            "{text}"
        );
        assert!(text.contains("ShuffleWriterExec"), "{text}");
        assert!(
            !text.contains("GatedExec") && !text.contains("CooperativeExec"),
            "{text}"
        );
    }
    // The join's and the aggregation's rows, summed over tasks, are single-node
    // DataFusion's.
    let expected = common::expected(&reference, sql).await;
    for operator in ["HashJoinExec", "AggregateExec: mode=Final"] {
        let baton = output_rows_of(&result.batches, operator);
        assert_eq!(baton, output_rows_of(&expected, operator), "{operator}");
        assert!(
            baton.iter().all(|rows| !rows.is_empty() && rows != "0"),
            "{baton:?}"
        );
    }
}
