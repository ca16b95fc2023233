//! The built `baton` binary as separate processes: a scheduler, two executors and the
//! `baton sql` / `baton status` clients, all on 127.0.0.1. Also kills an executor process
//! and checks that the cluster keeps answering.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const BATON: &str = env!("CARGO_BIN_EXE_baton");

/// A child process killed when dropped, so a failing test leaves nothing running.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str]) -> Process {
    Process(
        Command::new(BATON)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn baton"),
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

/// Runs `baton sql` until the scheduler answers (it may still be starting), at most ~10 s.
fn first_query(scheduler: &str, catalog: &Path) -> Output {
    for _ in 0..100 {
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
        if out.status.success() || !text(&out.stderr).contains("cannot reach the scheduler") {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the scheduler did not come up");
}

#[test]
fn scheduler_and_executor_processes_run_queries_from_the_cli() {
    let catalog = common::tpch_catalog();
    let work = tempfile::tempdir().unwrap();
    let scheduler = format!("127.0.0.1:{}", free_port());
    let _scheduler = spawn(&[
        "scheduler",
        "--bind",
        &scheduler,
        "--catalog",
        catalog.to_str().unwrap(),
    ]);
    let work_dir = work.path().to_str().unwrap();
    let _first = spawn(&[
        "executor",
        "--scheduler",
        &scheduler,
        "--slots",
        "2",
        "--work-dir",
        work_dir,
    ]);
    let mut second = spawn(&[
        "executor",
        "--scheduler",
        &scheduler,
        "--slots",
        "2",
        "--work-dir",
        work_dir,
    ]);

    // Planned by the client (it has the catalog), run by the cluster.
    let out = first_query(&scheduler, &catalog);
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
    let out = baton(&[
        "sql",
        "--scheduler",
        &scheduler,
        "--format",
        "csv",
        "-c",
        "select count(*) as n from region",
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "n\n5\n");
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
}
