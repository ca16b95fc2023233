//! Join filters across stages on an in-process cluster (scheduler + 2 executors over
//! real gRPC and Flight on 127.0.0.1): selective star joins over TPC-H through inner,
//! left, semi and anti joins give single-node DataFusion's answers with the filters on
//! and off, with broadcast and with partitioned (both sides shuffled) joins; the filters
//! show in status and remove probe rows before a shuffle; all 22 TPC-H queries are right with them off
//! (the other end-to-end tests run them on, the default).

mod common;

use baton::client::BatonClient;
use baton::cluster::{ClusterConfig, LocalCluster};
use baton::config::Switch;
use baton::proto::QueryStatus;

/// Selective joins of `lineitem` (the fact table) with `part`, `supplier` and `orders`.
const STAR_JOINS: [&str; 13] = [
    "select p_brand, count(*) as n, sum(l_extendedprice) as revenue \
     from lineitem join part on l_partkey = p_partkey \
     where p_size = 15 and p_type like '%BRASS' group by p_brand order by p_brand",
    "select s_name, count(*) as n, sum(l_quantity) as quantity \
     from lineitem join part on l_partkey = p_partkey \
     join supplier on l_suppkey = s_suppkey \
     join orders on l_orderkey = o_orderkey \
     where p_container = 'SM BOX' and s_nationkey < 10 \
       and o_orderdate between date '1995-01-01' and date '1995-06-30' \
     group by s_name order by s_name",
    "select o_orderpriority, count(l_orderkey) as lines \
     from orders left join lineitem on o_orderkey = l_orderkey and l_shipmode = 'AIR' \
     where o_orderdate < date '1993-03-01' group by o_orderpriority order by o_orderpriority",
    "select count(*) as n, sum(l_quantity) as quantity from lineitem \
     where l_partkey in (select p_partkey from part where p_name like 'forest%')",
    "select count(*) as n from lineitem where exists \
     (select 1 from orders where o_orderkey = l_orderkey and o_totalprice > 400000)",
    "select count(*) as n from orders where not exists \
     (select 1 from lineitem where l_orderkey = o_orderkey and l_receiptdate > date '1998-10-01')",
    "select count(*) as n from lineitem join part on l_partkey = p_partkey where p_size = 999",
    "select p1.p_type, count(*) as n from part p1 join part p2 on p1.p_type = p2.p_type \
     where p2.p_size = 1 and p2.p_retailprice > 1900 group by p1.p_type order by p1.p_type",
    "select l_returnflag, count(*) as n, sum(l_extendedprice) as revenue \
     from lineitem join orders on l_orderkey = o_orderkey \
     where o_orderkey < 600 and o_orderpriority = '1-URGENT' \
     group by l_returnflag order by l_returnflag",
    // About 5,700 order keys: more than a summary lists, so a Bloom filter carries them.
    "select l_shipmode, count(*) as n from lineitem join orders on l_orderkey = o_orderkey \
     where o_orderdate >= date '1996-06-01' group by l_shipmode order by l_shipmode",
    // Partitioned, a right anti join (lineitem's few late lines are estimated the
    // smaller side): the orders' keys filter lineitem, its build side.
    "select count(*) as n from orders where o_orderdate < date '1995-01-01' and not exists \
     (select 1 from lineitem where l_orderkey = o_orderkey and l_shipdate > date '1998-11-01')",
    // Partitioned, the HAVING's few order keys become a stage of their own and filter
    // the orders scan below the orders-lineitem join.
    "select o_orderpriority, count(*) as n from orders join lineitem on o_orderkey = l_orderkey \
     where o_orderkey in (select l_orderkey from lineitem group by l_orderkey \
     having sum(l_quantity) > 250) group by o_orderpriority order by o_orderpriority",
    // Customer's filter reaches the orders scan, a stage below the join that uses it.
    "select c_name, count(*) as n, sum(l_quantity) as quantity \
     from lineitem join orders on l_orderkey = o_orderkey \
     join customer on o_custkey = c_custkey \
     where c_nationkey = 3 and c_mktsegment = 'BUILDING' group by c_name order by c_name",
];

/// Makes every hash join partitioned (both sides hash-shuffled), so that a probe side's
/// scan runs in another stage than the join and its build side.
const PARTITIONED_JOINS: [&str; 2] = [
    "set datafusion.optimizer.hash_join_single_partition_threshold = 0",
    "set datafusion.optimizer.hash_join_single_partition_threshold_rows = 0",
];

async fn cluster(filters: Switch) -> LocalCluster {
    // Two executors of two slots: a stage of four tasks fills the cluster, as scans
    // do on a busy one.
    let mut config = ClusterConfig::with_catalog(2, 2, common::tpch_catalog());
    config.scheduler.target_partitions = Some(4);
    config.scheduler.partition_data_bytes = 0;
    config.scheduler.join_filters = filters;
    LocalCluster::start(config).await.expect("start cluster")
}

/// Runs the star joins, checks them against single-node DataFusion and returns the
/// statuses of their queries.
async fn star_joins(client: &mut BatonClient) -> Vec<QueryStatus> {
    let reference = common::single_node(&common::tpch_catalog()).await;
    let mut statuses = Vec::new();
    for sql in STAR_JOINS {
        let result = client
            .sql(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let want = common::expected(&reference, sql).await;
        if let Err(diff) = common::compare(&want, &result.batches, common::is_ordered(sql)) {
            panic!("{sql}: {diff}");
        }
        statuses.push(client.status(&result.query_id).await.unwrap());
    }
    statuses
}

/// The build stage a stage's filters came from ("filter 0 from stage 2: …"), each.
fn filter_sources(text: &str) -> Vec<u32> {
    text.split("from stage ")
        .skip(1)
        .filter_map(|rest| rest.split(':').next()?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn star_joins_are_filtered_across_stages_and_answer_as_single_node_datafusion() {
    let cluster = cluster(Switch::On).await;
    let mut client = cluster.client().await.unwrap();

    // Broadcast (CollectLeft) joins: the join's own stage filters its probe side.
    let statuses = star_joins(&mut client).await;
    let filtered: Vec<_> = statuses
        .iter()
        .flat_map(|q| q.stages.iter())
        .filter(|s| !s.filters.is_empty())
        .collect();
    assert!(!filtered.is_empty(), "no stage got a join filter");
    // Right under the join (in the stage that reads the build side) a filter only
    // prunes scans: it passes every row it sees on.
    for stage in &filtered {
        assert!(
            stage.filter_rows_removed <= stage.filter_rows_in,
            "{stage:?}"
        );
        if filter_sources(&stage.filters)
            .iter()
            .all(|b| stage.input_stages.contains(b))
        {
            assert_eq!(stage.filter_rows_removed, 0, "{stage:?}");
        }
    }
    // A small build side inside the join's stage (customer) becomes a stage of its own
    // and filters the rows of a scan stages below (orders, under another join).
    let snowflake = statuses.last().unwrap();
    let deep = snowflake
        .stages
        .iter()
        .filter(|s| {
            filter_sources(&s.filters)
                .iter()
                .any(|b| !s.input_stages.contains(b))
        })
        .collect::<Vec<_>>();
    assert!(
        deep.iter().any(|s| s.filter_rows_removed > 0),
        "{:?}",
        snowflake.stages
    );
    // Partitioned joins: a probe stage that does not read the build stage waits for it
    // and gets its filter.
    for set in PARTITIONED_JOINS {
        client.sql(set).await.unwrap();
    }
    let statuses = star_joins(&mut client).await;
    let across = statuses
        .iter()
        .flat_map(|q| q.stages.iter())
        .filter(|s| {
            filter_sources(&s.filters)
                .iter()
                .any(|b| !s.input_stages.contains(b))
        })
        .count();
    assert!(across > 0, "no filter crossed to a probe stage of its own");
    // Before the shuffle they remove rows.
    let removed: u64 = statuses
        .iter()
        .flat_map(|q| q.stages.iter())
        .map(|s| s.filter_rows_removed)
        .sum();
    assert!(removed > 0, "the filters removed no probe row");
    // Past the listed values a Bloom filter removes probe rows before the shuffle.
    let bloomed = statuses[9]
        .stages
        .iter()
        .find(|s| s.filters.contains("bloom filter"))
        .unwrap_or_else(|| panic!("{:?}", statuses[9].stages));
    assert!(bloomed.filter_rows_removed > 0, "{bloomed:?}");
    // A reverse filter: the anti join's probe keys remove build rows before the shuffle.
    let reverse = statuses[10]
        .stages
        .iter()
        .find(|s| s.filter_rows_in > 0)
        .unwrap_or_else(|| panic!("{:?}", statuses[10].stages));
    assert!(reverse.filter_rows_removed > 0, "{reverse:?}");
    // A filtered build side in the join's stage (the HAVING) was made a stage: its keys
    // remove rows in a stage that does not read it.
    let having = &statuses[11];
    assert!(
        having.stages.iter().any(|s| s.filter_rows_removed > 0
            && filter_sources(&s.filters)
                .iter()
                .any(|b| !s.input_stages.contains(b))),
        "{:?}",
        having.stages
    );
    // An empty build side filters everything.
    assert!(
        statuses[6]
            .stages
            .iter()
            .any(|s| s.filters.contains("everything filtered")),
        "{:?}",
        statuses[6].stages
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_join_filters_off_every_answer_is_the_same_and_no_stage_is_filtered() {
    let cluster = cluster(Switch::Off).await;
    let mut client = cluster.client().await.unwrap();
    for statuses in [star_joins(&mut client).await, {
        for set in PARTITIONED_JOINS {
            client.sql(set).await.unwrap();
        }
        star_joins(&mut client).await
    }] {
        for stage in statuses.iter().flat_map(|q| q.stages.iter()) {
            assert!(stage.filters.is_empty(), "{stage:?}");
            assert_eq!(stage.filter_rows_in, 0);
        }
    }
    let reference = common::single_node(&common::tpch_catalog()).await;
    let mut fresh = cluster.client().await.unwrap();
    common::check_all_tpch(&mut fresh, &reference).await;
}
