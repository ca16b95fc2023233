//! The built `baton` binary as separate processes: a scheduler, two executors and the
//! `baton sql` / `baton status` clients, all on 127.0.0.1. Also kills an executor process
//! and checks that the cluster keeps answering.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::process::{
    BATON, Process, free_port, sample, signal, spawn, spawn_executor, spawn_scheduler,
    spawn_scheduler_with_metrics, wait_for_executors,
};

/// Runs a small query through the `baton sql` CLI against `scheduler` and checks its
/// answer.
fn assert_cluster_answers(scheduler: &str) {
    let out = baton(&[
        "sql",
        "--scheduler",
        scheduler,
        "--format",
        "csv",
        "-c",
        "select count(*) as n from region",
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "n\n5\n");
}

fn baton(args: &[&str]) -> Output {
    Command::new(BATON)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run baton")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `baton sql` until the scheduler answers (it may still be starting), at most 10 s.
async fn first_query(scheduler: &str, catalog: &Path) -> Output {
    let mut last = None;
    let answered = common::eventually(Duration::from_secs(10), async || {
        let out = baton(&[
            "sql",
            "--scheduler",
            scheduler,
            "--catalog",
            catalog.to_str().unwrap(),
            "--format",
            "csv",
            "-c",
            "select count(*) as n from nation",
        ]);
        let up = out.status.success() || !text(&out.stderr).contains("cannot reach the scheduler");
        last = Some(out);
        up
    })
    .await;
    assert!(answered, "the scheduler did not come up");
    last.expect("ran at least once")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_and_executor_processes_run_queries_from_the_cli() {
    let catalog = common::tpch_catalog();
    let work = tempfile::tempdir().unwrap();
    let scheduler = format!("127.0.0.1:{}", free_port());
    let _scheduler = spawn_scheduler(&scheduler, &catalog, &[]);
    let work_dir = work.path().to_str().unwrap();
    let _first = spawn_executor(&scheduler, work_dir, &[]);
    let mut second = spawn_executor(&scheduler, work_dir, &[]);

    // Planned by the client (it has the catalog), run by the cluster.
    let out = first_query(&scheduler, &catalog).await;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "n\n25\n");

    // Planned by the scheduler from SQL.
    let q3 = baton::tpch::query(3).unwrap().sql;
    let out = baton(&[
        "sql",
        "--scheduler",
        &scheduler,
        "--format",
        "csv",
        "-c",
        q3,
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 11, "header and 10 rows");

    // Bad SQL: non-zero exit and the cause on stderr.
    let out = baton(&[
        "sql",
        "--scheduler",
        &scheduler,
        "-c",
        "select * from nowhere",
    ]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("error:") && stderr.contains("nowhere"),
        "{stderr}"
    );

    // Status lists what ran.
    let out = baton(&["status", "--scheduler", &scheduler]);
    assert!(out.status.success());
    let listing = text(&out.stdout);
    assert!(
        listing.contains("succeeded") && listing.contains("failed"),
        "{listing}"
    );

    // Kill one executor process: the other one keeps serving.
    second.0.kill().unwrap();
    second.0.wait().unwrap();
    assert_cluster_answers(&scheduler);
}

#[test]
fn embedded_cluster_runs_sql_from_a_file_and_stops_at_the_first_failure() {
    let catalog = common::tpch_catalog();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("queries.sql");
    std::fs::write(
        &file,
        "select count(*) as n from region;\nselect oops;\nselect 1;\n",
    )
    .unwrap();
    let out = baton(&[
        "sql",
        "--catalog",
        catalog.to_str().unwrap(),
        "--format",
        "csv",
        "-f",
        file.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stdout),
        "n\n5\n",
        "the first statement ran, the third did not"
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("statement 2 failed") && stderr.contains("oops"),
        "{stderr}"
    );
    // Stopping the embedded cluster at the end is no failure: no warning about it.
    assert!(!stderr.contains("WARN"), "{stderr}");
}

#[test]
fn results_longer_than_a_table_stream_whole_as_csv_and_a_table_says_what_it_left_out() {
    let catalog = common::tpch_catalog();
    let sql = "select l_orderkey, l_linenumber from lineitem";
    let run = |format: &str| {
        let out = baton(&[
            "sql",
            "--catalog",
            catalog.to_str().unwrap(),
            "--format",
            format,
            "-c",
            sql,
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        out
    };
    let csv = run("csv");
    let rows = text(&csv.stdout).lines().count() - 1;
    assert!(rows > baton::client::TABLE_ROW_LIMIT, "{rows} rows");
    assert!(text(&csv.stderr).contains(&format!("{rows} row(s)")));
    let table = run("table");
    let stderr = text(&table.stderr);
    assert!(stderr.contains("the table shows the first"), "{stderr}");
    assert!(stderr.contains(&format!("{rows} row(s)")), "{stderr}");
}

/// The interactive shell of an embedded cluster, its standard streams piped, its history
/// kept in `home`.
fn spawn_shell(catalog: &Path, home: &Path) -> Child {
    Command::new(BATON)
        // The embedded scheduler says when it took a query.
        .env("RUST_LOG", "warn,baton::scheduler::state=info")
        .args([
            "sql",
            "--catalog",
            catalog.to_str().unwrap(),
            "--format",
            "csv",
        ])
        .env("BATON_CACHE_DIR", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn baton sql")
}

/// Runs the interactive shell with `input` on its standard input.
fn shell(catalog: &Path, input: &str) -> Output {
    use std::io::Write;
    let home = tempfile::tempdir().unwrap();
    let mut child = spawn_shell(catalog, home.path());
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn the_shell_runs_multi_line_statements_describes_tables_and_survives_errors() {
    let catalog = common::tpch_catalog();
    let out = shell(
        &catalog,
        "select count(*) as n\n  from region;\n\\d\n\\d nation\nselect oops;\nselect 40 + 2 as answer; select 'a;b' as s;\n\\q\nselect 'never' as x;\n",
    );
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    assert!(
        stdout.contains("n\n5\n"),
        "a statement over two lines ran: {stdout}"
    );
    assert!(
        stdout.contains("8 table(s)") && stdout.contains("  lineitem (16 columns)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("table nation") && stdout.contains("n_regionkey"),
        "{stdout}"
    );
    assert!(
        stderr.contains("error:") && stderr.contains("oops"),
        "{stderr}"
    );
    assert!(
        stdout.contains("answer\n42\n") && stdout.contains("s\na;b\n"),
        "the shell went on after an error: {stdout}"
    );
    assert!(!stdout.contains("never"), "\\q quits");
    assert!(
        stderr.contains("row(s) in"),
        "row count and time per query: {stderr}"
    );
}

#[test]
fn ctrl_c_in_the_shell_cancels_the_running_query_and_keeps_the_shell() {
    use std::io::{BufRead, BufReader, Write};
    let catalog = common::tpch_catalog();
    let home = tempfile::tempdir().unwrap();
    let mut child = Process(spawn_shell(&catalog, home.path()), None);
    let mut stdin = child.0.stdin.take().unwrap();
    let stderr = BufReader::new(child.0.stderr.take().unwrap());
    let heavy = "select sum(a.l_quantity * b.l_quantity) from lineitem a join lineitem b on a.l_linestatus = b.l_linestatus;\n";
    // A warm-up statement whose result line tells that the cluster is up.
    stdin.write_all(b"select 1 as one;\n").unwrap();
    let mut lines = stderr.lines();
    let ready = lines
        .by_ref()
        .take(50)
        .any(|l| l.is_ok_and(|l| l.contains("row(s) in")));
    assert!(ready, "the shell answered the first statement");
    stdin.write_all(heavy.as_bytes()).unwrap();
    stdin.flush().unwrap();
    let submitted = lines
        .by_ref()
        .take(50)
        .any(|l| l.is_ok_and(|l| l.contains("query submitted")));
    assert!(submitted, "the heavy query reached the scheduler");
    let pid = child.0.id().to_string();
    let kill = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(kill.success());
    let cancelled = lines
        .by_ref()
        .take(50)
        .any(|l| l.is_ok_and(|l| l.contains("cancelled")));
    assert!(cancelled, "Ctrl-C cancelled the query");
    stdin.write_all(b"select 7 as seven;\n\\q\n").unwrap();
    drop(stdin);
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.0.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(
        stdout.contains("seven\n7\n"),
        "the shell kept going: {stdout}"
    );
    assert!(child.0.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_json() {
    let catalog = common::tpch_catalog();
    let scheduler = format!("127.0.0.1:{}", free_port());
    let _standalone = spawn(&[
        "standalone",
        "--bind",
        &scheduler,
        "--catalog",
        catalog.to_str().unwrap(),
    ]);
    let out = first_query(&scheduler, &catalog).await;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let out = baton(&["status", "--scheduler", &scheduler, "--format", "json"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = &listing[0];
    assert_eq!(first["state"], "succeeded");
    let id = first["query_id"].as_str().unwrap();
    let out = baton(&["status", id, "--scheduler", &scheduler, "--format", "json"]);
    let one: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(one["query_id"], id);
    assert!(!one["stages"].as_array().unwrap().is_empty());
    assert!(one["label"].as_str().unwrap().contains("nation"), "{one}");
}

/// A scheduler process that gives every query four tasks per stage even on the test
/// data, and two executor processes, "steady" and `other`; both registered.
struct TwoExecutors {
    scheduler: Process,
    address: String,
    metrics: String,
    steady: Process,
    other: Process,
    _work: tempfile::TempDir,
}

async fn two_executors(catalog: &Path, other: &str) -> TwoExecutors {
    let work = tempfile::tempdir().unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let scheduler = spawn_scheduler(
        &address,
        catalog,
        &[
            "--partitions",
            "4",
            "--partition-data-mib",
            "0",
            "--metrics",
            &metrics,
        ],
    );
    let work_dir = work.path().to_str().unwrap();
    let steady = spawn_executor(&address, work_dir, &["--id", "steady"]);
    let other = spawn_executor(&address, work_dir, &["--id", other]);
    assert!(
        wait_for_executors(&metrics, 2).await,
        "both executors register"
    );
    TwoExecutors {
        scheduler,
        address,
        metrics,
        steady,
        other,
        _work: work,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_survives_losing_the_executor_that_holds_part_of_its_shuffle_output() {
    use baton::client::BatonClient;

    let catalog = common::tpch_catalog();
    let TwoExecutors {
        scheduler,
        steady,
        other: mut doomed,
        address: scheduler_address,
        ..
    } = two_executors(&catalog, "doomed").await;
    let _scheduler = scheduler;

    // "steady" is frozen: the tasks pushed to it wait, so the query cannot get past its
    // first stage while "doomed" finishes its share of that stage.
    signal(&steady, libc::SIGSTOP);
    let sql = common::GROUPED_LINEITEM;
    let mut client = BatonClient::connect(&scheduler_address).await.unwrap();
    let id = client.submit_sql(sql).await.unwrap();
    let held_by_doomed = common::first_stage_waits_on(&mut client, &id, "steady").await;
    assert!(
        held_by_doomed,
        "\"doomed\" finished part of the first stage"
    );

    // Its output is gone with it: the scheduler must compute it again on "steady".
    doomed.0.kill().unwrap();
    doomed.0.wait().unwrap();
    signal(&steady, libc::SIGCONT);
    let reference = common::single_node(&catalog).await;
    common::expect_fetched(&mut client, &id, &reference, sql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_result_outlives_the_executor_that_computed_it() {
    use baton::client::BatonClient;
    use baton::proto::QueryState;

    let catalog = common::tpch_catalog();
    let work = tempfile::tempdir().unwrap();
    let (_scheduler, scheduler, metrics) = spawn_scheduler_with_metrics(&catalog);
    let work_dir = work.path().to_str().unwrap();
    let mut only = spawn_executor(&scheduler, work_dir, &["--id", "only"]);
    assert!(
        wait_for_executors(&metrics, 1).await,
        "the executor registers"
    );

    let sql = "select n_regionkey, count(*) as n from nation group by n_regionkey \
               order by n_regionkey";
    let mut client = BatonClient::connect(&scheduler).await.unwrap();
    let id = client.submit_sql(sql).await.unwrap();
    let succeeded = common::eventually(Duration::from_secs(10), async || {
        client.status(&id).await.unwrap().state == QueryState::Succeeded as i32
    })
    .await;
    assert!(succeeded, "the query ends");

    // The executor sent the result back with its task's status: the scheduler serves it
    // with no executor left.
    only.0.kill().unwrap();
    only.0.wait().unwrap();
    assert!(
        wait_for_executors(&metrics, 0).await,
        "the executor is gone"
    );
    let result = client.fetch(&id).await.unwrap();
    let reference = common::single_node(&catalog).await;
    let want = common::expected(&reference, sql).await;
    common::compare(&want, &result.batches, true).unwrap();
    // Fetched once, the result is freed.
    let again = client.fetch(&id).await.unwrap_err().to_string();
    assert!(again.contains("fetched"), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executors_register_again_with_a_restarted_scheduler() {
    let catalog = common::tpch_catalog();
    let work = tempfile::tempdir().unwrap();
    let (mut first, scheduler, metrics) = spawn_scheduler_with_metrics(&catalog);
    let mut executor = spawn_executor(&scheduler, work.path().to_str().unwrap(), &[]);
    assert!(
        wait_for_executors(&metrics, 1).await,
        "the executor registers"
    );

    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let second = spawn_scheduler(&scheduler, &catalog, &["--metrics", &metrics]);
    assert!(
        wait_for_executors(&metrics, 1).await,
        "the executor registers with the new scheduler\n-- executor log:\n{}\n-- scheduler log:\n{}",
        executor.log(),
        second.log()
    );
    assert!(
        executor.0.try_wait().unwrap().is_none(),
        "executor still runs"
    );
    assert_cluster_answers(&scheduler);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_executor_mid_query_and_a_scheduler_after_its_queries() {
    use baton::client::BatonClient;

    let catalog = common::tpch_catalog();
    let TwoExecutors {
        scheduler: mut scheduler_process,
        address: scheduler_address,
        metrics,
        steady,
        other: mut leaving,
        ..
    } = two_executors(&catalog, "leaving").await;

    // "steady" is frozen while "leaving" finishes its share of the first stage, so the
    // rest of the query needs the output "leaving" holds.
    signal(&steady, libc::SIGSTOP);
    let sql = common::GROUPED_LINEITEM;
    let mut client = BatonClient::connect(&scheduler_address).await.unwrap();
    let id = client.submit_sql(sql).await.unwrap();
    let held_by_leaving = common::first_stage_waits_on(&mut client, &id, "steady").await;
    assert!(
        held_by_leaving,
        "\"leaving\" finished part of the first stage"
    );

    // SIGTERM: "leaving" takes no more tasks but serves its output until the query no
    // longer needs it, then stops by itself, with nothing computed again.
    signal(&leaving, libc::SIGTERM);
    signal(&steady, libc::SIGCONT);
    let result = client.fetch(&id).await.unwrap();
    let reference = common::single_node(&catalog).await;
    common::compare(
        &common::expected(&reference, sql).await,
        &result.batches,
        true,
    )
    .unwrap();
    let exited = common::eventually(Duration::from_secs(20), async || {
        leaving.0.try_wait().unwrap().is_some()
    })
    .await;
    assert!(exited, "the drained executor stops: {}", leaving.log());
    assert!(leaving.0.wait().unwrap().success(), "{}", leaving.log());
    let text = common::scrape_metrics(&metrics);
    assert_eq!(
        sample(&text, "baton_tasks_completed_total{result=\"failed\"}"),
        0.0,
        "no task failed"
    );
    assert_eq!(sample(&text, "baton_executors_connected"), 1.0);

    // SIGTERM to the scheduler while a query runs: it takes no new query, lets the
    // running one finish and be fetched, then stops.
    // "steady" is frozen until the signal is sent, so the query is still running then.
    signal(&steady, libc::SIGSTOP);
    let running = client.submit_sql(sql).await.unwrap();
    signal(&scheduler_process, libc::SIGTERM);
    signal(&steady, libc::SIGCONT);
    let refusing = common::eventually(Duration::from_secs(10), async || {
        match client.submit_sql("select 1").await {
            Err(e) => e.to_string().contains("shutting down"),
            // Taken before the signal arrived: it runs, and its result must be fetched
            // for the drain to end.
            Ok(id) => {
                let fetched = tokio::time::timeout(Duration::from_secs(10), client.fetch(&id));
                assert!(matches!(fetched.await, Ok(Ok(_))), "an accepted query runs");
                false
            }
        }
    })
    .await;
    assert!(refusing, "a draining scheduler refuses new queries");
    let result = client.fetch(&running).await.unwrap();
    common::compare(
        &common::expected(&reference, sql).await,
        &result.batches,
        true,
    )
    .unwrap();
    let stopped = common::eventually(Duration::from_secs(20), async || {
        scheduler_process.0.try_wait().unwrap().is_some()
    })
    .await;
    assert!(
        stopped,
        "the drained scheduler stops: {}",
        scheduler_process.log()
    );
    assert!(
        scheduler_process.0.wait().unwrap().success(),
        "{}",
        scheduler_process.log()
    );
}
