//! One slow executor among fast ones: two executor processes, one held to a twentieth
//! of a core by a cgroup of its own, under a scheduler in this process. With scans split
//! into units and speculation on, the fast executor takes most of the work, copies of
//! the slow one's tasks finish first, and the answers equal single-node DataFusion's.
//! Skipped, with a message, where no cgroup can be made (CI runs as root).

mod common;

use std::time::{Duration, Instant};

use baton::client::BatonClient;
use baton::client::bench::cpu_limit::CpuLimit;
use baton::scheduler::{Scheduler, SchedulerConfig};
use common::process::spawn_executor;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_executor_takes_the_slow_ones_work_and_answers_stay_right() {
    let catalog = common::tpch_catalog();
    let config = SchedulerConfig {
        catalog: Some(catalog.clone()),
        target_partitions: Some(2),
        partition_data_bytes: 0,
        split_unit_bytes: 128 << 10,
        speculation_min_runtime: Duration::from_millis(200),
        ..SchedulerConfig::default()
    };
    let scheduler = Scheduler::new(&config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        scheduler
            .serve(listener, async move {
                let _ = stopped.await;
            })
            .unwrap(),
    );
    let work = tempfile::tempdir().unwrap();
    let work_dir = work.path().to_str().unwrap();
    let _fast = spawn_executor(&address, work_dir, &["--id", "fast"]);
    let slow = spawn_executor(&address, work_dir, &["--id", "slow"]);
    let _limit = match CpuLimit::apply(slow.0.id(), 0.05) {
        Ok(limit) => limit,
        Err(e) => {
            eprintln!("skipped: cannot slow an executor down here: {e}");
            let _ = stop.send(());
            return;
        }
    };
    let registered = common::eventually(Duration::from_secs(30), async || {
        scheduler.executors().0 == 2
    })
    .await;
    assert!(registered, "both executors register\n{}", slow.log());

    let reference = common::single_node(&catalog).await;
    let mut client = BatonClient::connect(&address).await.unwrap();
    let started = Instant::now();
    let (mut copies, mut won) = (0, 0);
    for number in [1, 6, 12, 14] {
        let query = baton::tpch::query(number).unwrap();
        let result = client.sql(query.sql).await.unwrap();
        let expected = common::expected(&reference, query.sql).await;
        if let Err(diff) =
            common::compare(&expected, &result.batches, common::is_ordered(query.sql))
        {
            panic!("Q{number}: {diff}");
        }
        let status = client.status(&result.query_id).await.unwrap();
        copies += status.stages.iter().map(|s| s.copies_started).sum::<u32>();
        won += status.stages.iter().map(|s| s.copies_won).sum::<u32>();
    }
    let spans = scheduler.timeline(started);
    let on = |id: &str| spans.iter().filter(|s| s.executor == id).count();
    let (fast, slow_tasks) = (on("fast"), on("slow"));
    eprintln!("fast: {fast} tasks, slow: {slow_tasks}; copies: {copies} started, {won} won");
    assert!(
        fast >= 3 * slow_tasks.max(1),
        "the fast executor finished {fast} tasks, the slow one {slow_tasks}"
    );
    assert!(
        copies >= 1 && won >= 1,
        "copies: {copies} started, {won} won"
    );
    assert!(spans.iter().any(|s| s.copy && s.executor == "fast"));
    let _ = stop.send(());
    let _ = server.await;
}
