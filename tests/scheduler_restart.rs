//! A scheduler process killed with SIGKILL and started again on its state dir: the
//! queries it had acknowledged finish with the right answers, the executors' finished
//! shuffle output is used again, and the clients waiting on results re-attach by query
//! id without submitting anything twice.

mod common;

use std::path::Path;
use std::time::Duration;

use baton::client::BatonClient;
use common::process::{
    Process, free_port, sample, signal, spawn_executor, spawn_scheduler, wait_for_executors,
};
use common::resume::{check_answers, submit_awaited, task_counts};

/// TPC-H queries of several stages each.
const QUERIES: [u32; 5] = [3, 5, 10, 12, 18];

/// A scheduler keeping its state in `state_dir`, with four tasks per stage even on the
/// test data.
fn spawn_durable_scheduler(
    address: &str,
    metrics: &str,
    catalog: &Path,
    state_dir: &Path,
) -> Process {
    spawn_scheduler(
        address,
        catalog,
        &[
            "--state-dir",
            state_dir.to_str().unwrap(),
            "--partitions",
            "4",
            "--partition-data-mib",
            "0",
            "--metrics",
            metrics,
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_scheduler_restarted_on_its_state_resumes_every_query_and_reuses_shuffle_output() {
    let catalog = common::tpch_catalog();
    let work = tempfile::tempdir().unwrap();
    let state_dir = work.path().join("state");
    let address = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut first = spawn_durable_scheduler(&address, &metrics, &catalog, &state_dir);
    let work_dir = work.path().to_str().unwrap();
    let a = spawn_executor(&address, work_dir, &["--id", "a"]);
    let b = spawn_executor(&address, work_dir, &["--id", "b"]);
    assert!(
        wait_for_executors(&metrics, 2).await,
        "both executors register"
    );

    // "b" is frozen: the tasks pushed to it wait, so queries cannot all finish while "a"
    // finishes its share.
    signal(&b, libc::SIGSTOP);
    let mut client = BatonClient::connect(&address).await.unwrap();
    // Each result is awaited by a client of its own, across the restart.
    let awaited = submit_awaited(&mut client, &address, &QUERIES).await;
    let progressed = common::eventually(Duration::from_secs(10), async || {
        task_counts(&mut client, &awaited).await.1 >= 8
    })
    .await;
    assert!(
        progressed,
        "\"a\" finishes tasks\n-- scheduler log:\n{}",
        first.log()
    );
    signal(&a, libc::SIGSTOP);
    let (total, done_before, unfinished) = task_counts(&mut client, &awaited).await;
    assert!(unfinished > 0, "queries still run when the scheduler dies");

    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let second = spawn_durable_scheduler(&address, &metrics, &catalog, &state_dir);
    signal(&a, libc::SIGCONT);
    signal(&b, libc::SIGCONT);

    let reference = common::single_node(&catalog).await;
    // The executors' logs too: they say which shuffle outputs each one held and served.
    let logs = || {
        format!(
            "-- scheduler log:\n{}\n-- executor a log:\n{}\n-- executor b log:\n{}",
            second.log(),
            a.log(),
            b.log()
        )
    };
    check_answers(&mut client, awaited, &reference, logs).await;
    let text = common::scrape_metrics(&metrics);
    let rerun = sample(&text, "baton_tasks_dispatched_total");
    let reused = sample(&text, "baton_recovered_tasks_total");
    assert!(reused > 0.0, "finished tasks were restored:\n{text}");
    assert!(
        rerun < f64::from(total),
        "{rerun} of {total} tasks ran again after the restart ({done_before} were done before)"
    );
    assert!(
        sample(&text, "baton_queries_resumed_total") >= 1.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_acknowledged_right_before_the_scheduler_dies_runs_after_the_restart() {
    let catalog = common::tpch_catalog();
    let work = tempfile::tempdir().unwrap();
    let state_dir = work.path().join("state");
    let address = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut first = spawn_durable_scheduler(&address, &metrics, &catalog, &state_dir);
    let only = spawn_executor(&address, work.path().to_str().unwrap(), &["--id", "only"]);
    assert!(
        wait_for_executors(&metrics, 1).await,
        "the executor registers"
    );

    // Frozen, the executor cannot finish the query before the scheduler dies.
    signal(&only, libc::SIGSTOP);
    let sql = common::GROUPED_LINEITEM;
    let mut client = BatonClient::connect(&address).await.unwrap();
    let id = client.submit_sql(sql).await.unwrap();
    first.0.kill().unwrap();
    first.0.wait().unwrap();

    let _second = spawn_durable_scheduler(&address, &metrics, &catalog, &state_dir);
    signal(&only, libc::SIGCONT);
    let reference = common::single_node(&catalog).await;
    common::expect_fetched(&mut client, &id, &reference, sql).await;
}
