//! Prometheus metrics of a running in-process cluster, scraped over HTTP and parsed with a
//! Prometheus text-format parser, and the Grafana dashboard's queries checked against them.
//! One test in its own binary: the recorder is process-wide.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use baton::cluster::{ClusterConfig, LocalCluster};
use baton::telemetry;
use prometheus_parse::{Scrape, Value};

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let (status, body) = common::http_get(addr, path, None).await;
    assert_eq!(status, 200, "GET {path}");
    body
}

/// Sample values by metric name and sorted labels.
fn scrape(text: &str) -> HashMap<String, f64> {
    let parsed =
        Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("valid Prometheus text");
    let mut values = HashMap::new();
    for sample in parsed.samples {
        let mut labels: Vec<_> = sample
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        labels.sort();
        let key = format!("{}{{{}}}", sample.metric, labels.join(","));
        let value = match sample.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => continue,
        };
        values.insert(key, value);
    }
    values
}

fn sum(values: &HashMap<String, f64>, prefix: &str) -> f64 {
    values
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{prefix}{{")))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_move_with_a_query_and_cover_the_dashboard() {
    let mut config = ClusterConfig::with_catalog(2, 2, common::tpch_catalog());
    // Shuffles even for the small test data, so shuffle metrics move too.
    config.scheduler.partition_data_bytes = 0;
    let cluster = LocalCluster::start(config).await.unwrap();
    let route = cluster.scheduler().queries_api();
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let readiness = ready.clone();
    let addr = telemetry::serve_http(
        "127.0.0.1:0".parse().unwrap(),
        Some(("/api/queries", route)),
        Arc::new(move || readiness.load(std::sync::atomic::Ordering::Relaxed)),
    )
    .await
    .unwrap();
    // Health and readiness for an orchestrator's probes.
    assert_eq!(common::http_get(addr, "/healthz", None).await.0, 200);
    assert_eq!(common::http_get(addr, "/readyz", None).await.0, 200);
    ready.store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(common::http_get(addr, "/readyz", None).await.0, 503);
    assert_eq!(common::http_get(addr, "/healthz", None).await.0, 200);

    let before = scrape(&get(addr, "/metrics").await);
    let mut client = cluster.client().await.unwrap();
    let sql = baton::tpch::query(5).unwrap().sql;
    let id = client.submit_sql(sql).await.unwrap();
    let during = scrape(&get(addr, "/metrics").await);
    assert_eq!(sum(&during, "baton_executors_connected"), 2.0);
    assert_eq!(sum(&during, "baton_slots_total"), 4.0);
    // Ended, not yet fetched: the scheduler holds the small result.
    cluster.scheduler().wait(&id).await.unwrap();
    let ended = scrape(&get(addr, "/metrics").await);
    assert!(sum(&ended, "baton_result_bytes_held") > 0.0);
    let result = client.fetch(&id).await.unwrap();
    assert!(result.rows() > 0);
    let after = scrape(&get(addr, "/metrics").await);

    let status = client.status(&id).await.unwrap();
    let tasks: u32 = status.stages.iter().map(|s| s.tasks_total).sum();
    let moved = |name: &str| sum(&after, name) - sum(&before, name);
    assert_eq!(
        moved("baton_tasks_dispatched_total"),
        tasks as f64,
        "one dispatch per task"
    );
    assert_eq!(moved("baton_tasks_completed_total"), tasks as f64);
    assert_eq!(
        moved("baton_dispatch_latency_seconds"),
        tasks as f64,
        "a latency sample per dispatch"
    );
    assert_eq!(moved("baton_task_duration_seconds"), tasks as f64);
    assert_eq!(moved("baton_query_duration_seconds"), 1.0);
    assert!(moved("baton_shuffle_bytes_written_total") > 0.0);
    assert!(moved("baton_shuffle_bytes_read_total") > 0.0);
    assert!(moved("baton_flight_bytes_served_total") > 0.0);
    // Q5's selective joins (one region's nations) filter their probe sides.
    assert!(moved("baton_join_filters_shipped_total") > 0.0);
    assert!(sum(&after, "baton_executor_busy_seconds") > 0.0);
    assert!(
        after
            .keys()
            .any(|k| k.starts_with("baton_executor_idle_seconds{"))
    );
    assert_eq!(
        sum(&after, "baton_slots_busy"),
        0.0,
        "all slots free after the query"
    );
    assert_eq!(sum(&after, "baton_queue_depth"), 0.0);
    assert_eq!(
        sum(&after, "baton_result_bytes_held"),
        0.0,
        "freed once fetched"
    );
    assert!(after.contains_key("baton_queries{state=succeeded}"));

    // A TopK stage's tasks run with DataFusion's dynamic filter in their scans; status
    // and metrics show it (what it skips: the executor's unit tests, on data of many row
    // groups).
    let topk = "select l_orderkey from lineitem order by l_extendedprice desc limit 5";
    let topk_id = client.submit_sql(topk).await.unwrap();
    assert_eq!(client.fetch(&topk_id).await.unwrap().rows(), 5);
    let later = scrape(&get(addr, "/metrics").await);
    let topk_status = client.status(&topk_id).await.unwrap();
    let filtered: Vec<_> = topk_status
        .stages
        .iter()
        .filter_map(|s| Some((s, s.in_stage_filters.as_ref()?)))
        .collect();
    assert_eq!(filtered.len(), 1, "{topk_status:?}");
    let (stage, in_stage) = filtered[0];
    assert_eq!(in_stage.kinds, vec!["topk".to_string()]);
    assert_eq!(stage.in_stage_filter_tasks, stage.tasks_total);
    assert!(in_stage.scans >= stage.tasks_total as u64, "{in_stage:?}");
    assert_eq!(
        sum(&later, "baton_stage_dynamic_filter_tasks_total")
            - sum(&after, "baton_stage_dynamic_filter_tasks_total"),
        stage.tasks_total as f64
    );

    // The JSON API shows the same query.
    let one: serde_json::Value =
        serde_json::from_str(&get(addr, &format!("/api/queries/{id}")).await).unwrap();
    assert_eq!(one["state"], "succeeded");
    assert_eq!(one["stages"].as_array().unwrap().len(), status.stages.len());
    let all: serde_json::Value = serde_json::from_str(&get(addr, "/api/queries").await).unwrap();
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .any(|q| q["query_id"] == id.as_str())
    );

    // Every metric the Grafana dashboard charts is exported.
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../grafana/dashboard.json")).unwrap();
    let mut charted = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("baton_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                charted.insert(name.trim_end_matches("_bucket").to_string());
            }
        }
    }
    assert!(charted.len() >= 13, "{charted:?}");
    for name in charted {
        assert!(
            after.keys().any(|k| k.starts_with(&format!("{name}{{"))),
            "dashboard charts {name}, which is not exported"
        );
    }
}
