//! Query lifecycle and scheduling on an in-process cluster over real gRPC and Flight:
//! many queries at once, cancelling a running query, and result retention.

mod common;

use std::time::Duration;

use baton::cluster::{ClusterConfig, LocalCluster};
use baton::proto::QueryState;
use baton::scheduler::PolicyKind;
use baton::tpch::QUERIES;
use datafusion::arrow::array::AsArray;

/// A gRPC channel to the cluster's scheduler.
async fn channel(cluster: &LocalCluster) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.scheduler_address()))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A cluster of `executors` executors with the default settings over the TPC-H test data.
async fn tpch_cluster(executors: usize) -> LocalCluster {
    LocalCluster::start(ClusterConfig::with_catalog(
        executors,
        2,
        common::tpch_catalog(),
    ))
    .await
    .unwrap()
}

/// Pairs ~1.8 billion rows at SF 0.01: minutes of work, far longer than a test waits.
const LONG_JOIN: &str = "select sum(a.l_quantity * b.l_quantity) from lineitem a \
                         join lineitem b on a.l_linestatus = b.l_linestatus";

/// One executor of `slots` slots, one partition per stage (a one-stage query is one
/// task), no aging, and preemption for any cheaper query (at SF 0.01 the estimates are
/// close together).
async fn one_partition_cluster(slots: u32) -> LocalCluster {
    let mut config = ClusterConfig::with_catalog(1, slots, common::tpch_catalog());
    config.scheduler.target_partitions = Some(1);
    config.scheduler.aging_half_life = 0.0;
    config.scheduler.preempt_cost_ratio = 1.0;
    LocalCluster::start(config).await.unwrap()
}

/// Waits (30 s at most) until the status of query `id` satisfies `check`.
async fn status_until(
    client: &mut baton::client::BatonClient,
    id: &str,
    check: impl Fn(&baton::proto::QueryStatus) -> bool,
) -> bool {
    common::eventually(Duration::from_secs(30), async || {
        check(&client.status(id).await.unwrap())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_22_tpch_queries_submitted_at_once_are_all_correct() {
    for policy in [PolicyKind::Priority, PolicyKind::Fair] {
        let mut config = ClusterConfig::with_catalog(3, 2, common::tpch_catalog());
        config.scheduler.policy = policy;
        // Every query split 4 ways (the default would run the small test data in one
        // partition): many tasks of many queries at once.
        config.scheduler.partition_data_bytes = 0;
        let cluster = LocalCluster::start(config).await.unwrap();
        let reference = common::single_node(&common::tpch_catalog()).await;
        let client = cluster.client().await.unwrap();
        // Submit all at once (under `priority` the big ones' plannings wait for their
        // turns, in line), then fetch: every query is in the scheduler at once.
        let submits = QUERIES.iter().map(|query| {
            let mut client = client.clone();
            async move { client.submit_sql(query.sql).await.unwrap() }
        });
        let ids = futures::future::join_all(submits).await;
        let fetches = ids.iter().map(|id| {
            let mut client = client.clone();
            async move { client.fetch(id).await }
        });
        let results = futures::future::join_all(fetches).await;
        let mut failures = Vec::new();
        for (query, result) in QUERIES.iter().zip(results) {
            let expected = common::expected(&reference, query.sql).await;
            match result {
                Ok(actual) => {
                    let ordered = common::is_ordered(query.sql);
                    if let Err(diff) = common::compare(&expected, &actual.batches, ordered) {
                        failures.push(format!("{policy} Q{}: {diff}", query.number));
                    }
                }
                Err(e) => failures.push(format!("{policy} Q{}: failed: {e}", query.number)),
            }
        }
        assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
        assert_eq!(cluster.scheduler().executors().1.1, 0, "every slot free");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_query_stops_frees_its_slots_and_leaves_no_shuffle_files() {
    let mut config = ClusterConfig::with_catalog(2, 2, common::tpch_catalog());
    // Every shuffle partition goes to disk, so files are there to be cleaned up.
    config.executor.shuffle_memory_percent = 0;
    // Shuffles even for the small test data.
    config.scheduler.partition_data_bytes = 0;
    let cluster = LocalCluster::start(config).await.unwrap();
    let mut client = cluster.client().await.unwrap();
    // l_linestatus has two values: a join on it pairs ~60k × 30k rows per key.
    let heavy = "select sum(a.l_quantity * b.l_quantity) from lineitem a \
                 join lineitem b on a.l_linestatus = b.l_linestatus";
    let id = client.submit_sql(heavy).await.unwrap();

    // Wait until the join stage runs (its inputs wrote shuffle files).
    let running_join = status_until(&mut client, &id, |status| {
        assert_eq!(status.state, QueryState::Running as i32, "{status:?}");
        status
            .stages
            .iter()
            .any(|s| !s.input_stages.is_empty() && s.tasks_running > 0)
    })
    .await;
    assert!(running_join, "the join stage never started");
    let files: usize = cluster
        .executors()
        .iter()
        .map(|e| e.store().files_on_disk())
        .sum();
    assert!(files > 0, "input stages spilled shuffle files");

    assert!(client.cancel(&id).await.unwrap(), "cancel a running query");
    let status = client.status(&id).await.unwrap();
    assert_eq!(status.state, QueryState::Cancelled as i32);
    assert!(
        client.fetch(&id).await.is_err(),
        "no result for a cancelled query"
    );

    let executors = cluster.executors();
    let stopped = common::eventually(Duration::from_secs(10), async || {
        executors.iter().all(|e| e.running_tasks() == 0) && cluster.scheduler().executors().1.1 == 0
    })
    .await;
    assert!(stopped, "running tasks stopped and every slot is free");
    let cleaned = common::eventually(Duration::from_secs(10), async || {
        executors
            .iter()
            .all(|e| e.store().partitions_of(&id) == 0 && e.store().files_on_disk() == 0)
    })
    .await;
    assert!(cleaned, "no shuffle partition or file of the query remains");
    assert!(
        !client.cancel(&id).await.unwrap(),
        "a second cancel finds it ended"
    );

    // The cluster serves the next query normally.
    let result = client.sql("select count(*) from nation").await.unwrap();
    assert_eq!(result.rows(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flight_sql_clients_list_tables_and_run_queries() {
    use arrow_flight::sql::client::FlightSqlServiceClient;
    use arrow_flight::sql::{CommandGetDbSchemas, CommandGetTables, SqlInfo};
    use datafusion::arrow::array::{AsArray, RecordBatch};
    use futures::TryStreamExt;

    let cluster = tpch_cluster(2).await;
    let channel = channel(&cluster).await;
    let mut client = FlightSqlServiceClient::new(channel);
    async fn collect(
        client: &mut FlightSqlServiceClient<tonic::transport::Channel>,
        info: arrow_flight::FlightInfo,
    ) -> Vec<RecordBatch> {
        let mut batches = Vec::new();
        for endpoint in info.endpoint {
            let stream = client.do_get(endpoint.ticket.unwrap()).await.unwrap();
            batches.extend(stream.try_collect::<Vec<_>>().await.unwrap());
        }
        batches
    }

    // A query, checked against single-node DataFusion.
    let sql = baton::tpch::query(3).unwrap().sql;
    let info = client.execute(sql.to_string(), None).await.unwrap();
    assert_eq!(info.clone().try_decode_schema().unwrap().fields().len(), 4);
    let actual = collect(&mut client, info).await;
    let reference = common::single_node(&common::tpch_catalog()).await;
    let expected = common::expected(&reference, sql).await;
    common::compare(&expected, &actual, true).unwrap();

    // A bad query fails with its cause.
    let error = client
        .execute("select * from nowhere".into(), None)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("nowhere"), "{error}");

    // Catalog metadata.
    let info = client.get_catalogs().await.unwrap();
    let catalogs = collect(&mut client, info).await;
    let names: Vec<String> = catalogs
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_string::<i32>()
                .iter()
                .flatten()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(names.contains(&"datafusion".to_string()), "{names:?}");
    let info = client
        .get_db_schemas(CommandGetDbSchemas::default())
        .await
        .unwrap();
    let schemas = collect(&mut client, info).await;
    assert!(schemas.iter().map(RecordBatch::num_rows).sum::<usize>() >= 1);
    let info = client
        .get_tables(CommandGetTables {
            include_schema: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let tables = collect(&mut client, info).await;
    let table_names: Vec<String> = tables
        .iter()
        .flat_map(|b| {
            b.column_by_name("table_name")
                .unwrap()
                .as_string::<i32>()
                .iter()
                .flatten()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    for table in [
        "customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier",
    ] {
        assert!(
            table_names.contains(&table.to_string()),
            "{table} in {table_names:?}"
        );
    }
    let info = client
        .get_sql_info(vec![SqlInfo::FlightSqlServerName])
        .await
        .unwrap();
    let info = collect(&mut client, info).await;
    assert_eq!(info.iter().map(RecordBatch::num_rows).sum::<usize>(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn results_are_freed_once_fetched_or_when_their_time_to_live_ends() {
    // Results left on the executors, and small results the scheduler holds itself.
    for inline_result_bytes in [0, ClusterConfig::default().scheduler.inline_result_bytes] {
        let mut config = ClusterConfig::with_catalog(2, 2, common::tpch_catalog());
        config.scheduler.result_ttl = Duration::from_millis(500);
        config.scheduler.inline_result_bytes = inline_result_bytes;
        let cluster = LocalCluster::start(config).await.unwrap();
        let mut client = cluster.client().await.unwrap();
        let stored = |id: &str| -> usize {
            cluster
                .executors()
                .iter()
                .map(|e| e.store().partitions_of(id))
                .sum()
        };

        // Fetched: freed at once, and a second fetch says why there is nothing.
        let fetched = client.submit_sql("select * from nation").await.unwrap();
        assert_eq!(client.fetch(&fetched).await.unwrap().rows(), 25);
        assert!(common::eventually(Duration::from_secs(10), async || stored(&fetched) == 0).await);
        let again = client.fetch(&fetched).await.unwrap_err().to_string();
        assert!(again.contains("already fetched"), "{again}");

        // Not fetched: kept (on an executor, or by the scheduler) until the time to live
        // ends, then freed.
        let kept = client.submit_sql("select * from region").await.unwrap();
        cluster.scheduler().wait(&kept).await.unwrap();
        let on_executors = stored(&kept);
        if inline_result_bytes == 0 {
            assert!(on_executors > 0, "the result waits for its client");
        } else {
            assert_eq!(on_executors, 0, "the scheduler holds the small result");
        }
        let freed = common::eventually(Duration::from_secs(10), async || {
            cluster.scheduler().wait_for_result(&kept).await.is_err()
        })
        .await;
        let error = cluster.scheduler().wait_for_result(&kept).await.err();
        assert!(freed, "freed after the TTL");
        assert!(error.is_some_and(|e| e.to_string().contains("expired")));
        assert!(common::eventually(Duration::from_secs(10), async || stored(&kept) == 0).await);
        let late = client.fetch(&kept).await.unwrap_err().to_string();
        assert!(late.contains("expired"), "{late}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_that_misses_its_heartbeats_is_taken_as_lost() {
    use baton::proto::scheduler_service_client::SchedulerServiceClient;
    use baton::proto::{ExecutorMessage, RegisterExecutor, executor_message};

    let cluster = tpch_cluster(1).await;
    let channel = channel(&cluster).await;
    // Registers, then stays connected but silent (the sender is kept open).
    let (outbound, outbound_rx) = tokio::sync::mpsc::unbounded_channel();
    outbound
        .send(ExecutorMessage {
            message: Some(executor_message::Message::Register(RegisterExecutor {
                executor_id: "silent".into(),
                flight_address: "127.0.0.1:9".into(),
                slots: 1,
                preempt_slots: 0,
                held: Vec::new(),
            })),
        })
        .unwrap();
    let _inbound = SchedulerServiceClient::new(channel)
        .connect(tokio_stream::wrappers::UnboundedReceiverStream::new(
            outbound_rx,
        ))
        .await
        .unwrap();
    let scheduler = cluster.scheduler();
    assert!(
        common::eventually(Duration::from_secs(5), async || scheduler.executors().0
            == 2)
        .await
    );
    let lost = common::eventually(
        baton::config::EXECUTOR_TIMEOUT + Duration::from_secs(10),
        async || scheduler.executors().0 == 1,
    )
    .await;
    assert!(lost, "the silent executor was dropped; the live one stays");
    drop(outbound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cheap_query_preempts_a_long_task_holding_the_only_slot() {
    // The long query is one task that holds the only slot.
    let cluster = one_partition_cluster(1).await;
    let mut client = cluster.client().await.unwrap();
    let id = client.submit_sql(LONG_JOIN).await.unwrap();
    // With one partition the whole query is one stage of one task.
    let join_stage = |status: &baton::proto::QueryStatus| {
        assert_eq!(status.stages.len(), 1, "{status:?}");
        (status.stages[0].tasks_running, status.stages[0].tasks_done)
    };
    let joining = status_until(&mut client, &id, |s| join_stage(s) == (1, 0)).await;
    assert!(
        joining,
        "the join task never started: {:?}",
        client.status(&id).await.unwrap()
    );

    // The only slot is held by the join task; the cheap query still runs to the end.
    let cheap = client.sql("select count(*) from nation");
    let result = tokio::time::timeout(Duration::from_secs(60), cheap)
        .await
        .expect("the cheap query waited for the long task's slot")
        .unwrap();
    let count = result.batches[0]
        .column(0)
        .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
        .value(0);
    assert_eq!(count, 25);
    let status = client.status(&id).await.unwrap();
    assert_eq!(status.state, QueryState::Running as i32, "{status:?}");
    assert_eq!(
        join_stage(&status),
        (1, 0),
        "the join task kept running (suspended) while the cheap query took its slot"
    );
    let executor = &cluster.executors()[0];
    assert!(executor.suspensions() >= 1, "the join task was suspended");

    // The suspended-then-resumed task still stops on cancel.
    assert!(client.cancel(&id).await.unwrap());
    let stopped = common::eventually(Duration::from_secs(10), async || {
        executor.running_tasks() == 0
    })
    .await;
    assert!(stopped, "no task remains after the cancel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_goes_away_while_waiting_cancels_its_query() {
    let cluster = one_partition_cluster(1).await;
    let mut client = cluster.client().await.unwrap();
    let id = client.submit_sql(LONG_JOIN).await.unwrap();
    let running = status_until(&mut client, &id, |s| {
        s.stages.iter().any(|stage| stage.tasks_running == 1)
    })
    .await;
    assert!(running, "the query's task never started");
    // The scheduler's Flight endpoint waits for the result on the client's behalf
    // (`do_get`, Flight SQL `GetFlightInfo`); the client goes away while it waits.
    let scheduler = cluster.scheduler().clone();
    let mut wait = Box::pin(scheduler.wait_for_result_attended(&id));
    assert!(futures::poll!(wait.as_mut()).is_pending());
    drop(wait);
    let cancelled = status_until(&mut client, &id, |s| {
        s.state == QueryState::Cancelled as i32
    })
    .await;
    assert!(cancelled, "{:?}", client.status(&id).await.unwrap());
    let executor = &cluster.executors()[0];
    let freed = common::eventually(Duration::from_secs(10), async || {
        executor.running_tasks() == 0
    })
    .await;
    assert!(freed, "its task stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_whose_connection_breaks_before_its_stream_opens_dials_again() {
    use tokio::io::AsyncReadExt;

    let cluster = tpch_cluster(1).await;
    // A relay to the scheduler that reads the first connection's opening bytes and
    // closes it, as a scheduler does that is killed while an executor registers.
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_address = relay.local_addr().unwrap().to_string();
    let target = cluster.scheduler_address().to_string();
    let relay_task = tokio::spawn(async move {
        let (mut first, _) = relay.accept().await.unwrap();
        let mut opening = [0u8; 4096];
        let _ = first.read(&mut opening).await;
        drop(first);
        loop {
            let (mut inbound, _) = relay.accept().await.unwrap();
            let target = target.clone();
            tokio::spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect(target).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    let work = tempfile::tempdir().unwrap();
    let executor = baton::executor::Executor::start(baton::executor::ExecutorConfig::local(
        &relay_address,
        1,
        Some(work.path().to_path_buf()),
    ))
    .await
    .expect("the executor dials again after the broken connection");
    let scheduler = cluster.scheduler();
    assert!(
        common::eventually(Duration::from_secs(5), async || scheduler.executors().0
            == 2)
        .await,
        "the executor behind the relay is registered"
    );
    drop(executor);
    relay_task.abort();
}
