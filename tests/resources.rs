//! Bounded resources: a query that cannot fit in an executor's memory fails with a clear
//! error while the cluster goes on.

mod common;

use baton::cluster::{ClusterConfig, LocalCluster};

/// Two executors of `memory_limit` bytes each over the test data, every query split 4
/// ways.
async fn limited_cluster(memory_limit: u64) -> LocalCluster {
    let mut config = ClusterConfig::with_catalog(2, 2, common::tpch_catalog());
    config.executor.memory_limit = Some(memory_limit);
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
