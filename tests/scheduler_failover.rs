//! Two scheduler processes sharing their state in etcd (a real `etcd` server on loopback,
//! started by the test): one leads, the other stands by. The leader is killed with
//! SIGKILL mid-query; the standby takes over when its lease expires, resumes every
//! query, and the executors and clients (given both addresses) follow it, without any
//! query submitted twice. While it stands by, the standby answers on its port with the
//! leader's address, which an executor and a client given the standby first follow. Skipped, with a message, where no `etcd` binary is installed
//! (`.ci/run` installs Debian's etcd-server).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use baton::client::BatonClient;
use common::process::{
    Process, free_port, sample, signal, spawn_executor, spawn_scheduler, wait_for_executors,
};
use common::resume::{check_answers, submit_awaited, task_counts};

/// TPC-H queries of several stages each.
const QUERIES: [u32; 4] = [3, 5, 10, 18];

/// The etcd server binary: `$BATON_ETCD`, or `etcd` on the PATH.
fn etcd_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("BATON_ETCD") {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join("etcd"))
        .find(|candidate| candidate.is_file())
}

/// An etcd server on loopback with its data in `dir`; its client address.
fn start_etcd(binary: &Path, dir: &Path) -> (Process, String) {
    let client = format!("127.0.0.1:{}", free_port());
    let peer = format!("127.0.0.1:{}", free_port());
    let child = std::process::Command::new(binary)
        .args([
            "--name",
            "baton-test",
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen-client-urls",
            &format!("http://{client}"),
            "--advertise-client-urls",
            &format!("http://{client}"),
            "--listen-peer-urls",
            &format!("http://{peer}"),
            "--initial-advertise-peer-urls",
            &format!("http://{peer}"),
            "--initial-cluster",
            &format!("baton-test=http://{peer}"),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start etcd");
    let process = Process(child, None);
    // A scheduler started before etcd listens gives up on it; on a loaded machine
    // etcd takes a few seconds.
    let address: std::net::SocketAddr = client.parse().unwrap();
    let listening = (0..100).any(|_| {
        let up = std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok();
        if !up {
            std::thread::sleep(Duration::from_millis(100));
        }
        up
    });
    assert!(listening, "etcd does not listen on {client}");
    (process, client)
}

/// A scheduler on `address` keeping its state under `state` (an etcd URL), with a
/// short lease so that a standby takes over within about two seconds.
fn spawn_shared_scheduler(address: &str, metrics: &str, catalog: &Path, state: &str) -> Process {
    spawn_scheduler(
        address,
        catalog,
        &[
            "--state",
            state,
            "--leader-lease",
            "2",
            "--partitions",
            "4",
            "--partition-data-mib",
            "0",
            "--metrics",
            metrics,
        ],
    )
}

/// The ids of the queries the scheduler `client` reaches knows, sorted.
async fn listed(client: &mut BatonClient) -> Vec<String> {
    let mut ids: Vec<String> = client
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.query_id)
        .collect();
    ids.sort();
    ids
}

/// Waits (20 s at most) until the metrics at `metrics` say the scheduler leads (1) or
/// stands by (0).
async fn leads(metrics: &str, leader: f64) -> bool {
    common::eventually(Duration::from_secs(20), async || {
        let text = common::scrape_metrics(metrics);
        text.lines()
            .any(|l| l.starts_with("baton_scheduler_leader"))
            && sample(&text, "baton_scheduler_leader") == leader
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_a_killed_leader_and_every_query_finishes() {
    let Some(etcd) = etcd_binary() else {
        eprintln!("skipped: no etcd binary (install etcd-server, or set BATON_ETCD)");
        return;
    };
    let catalog = common::tpch_catalog();
    let work = tempfile::tempdir().unwrap();
    let (_etcd, etcd_address) = start_etcd(&etcd, &work.path().join("etcd"));
    let state = format!("etcd://{etcd_address}/failover-test");
    let (first_address, second_address) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let (first_metrics, second_metrics) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut first = spawn_shared_scheduler(&first_address, &first_metrics, &catalog, &state);
    assert!(
        leads(&first_metrics, 1.0).await,
        "the first scheduler leads\n-- its log:\n{}",
        first.log()
    );
    let second = spawn_shared_scheduler(&second_address, &second_metrics, &catalog, &state);
    assert!(
        leads(&second_metrics, 0.0).await,
        "the second stands by\n-- its log:\n{}",
        second.log()
    );

    let both = format!("{first_address},{second_address}");
    let work_dir = work.path().to_str().unwrap();
    let a = spawn_executor(&both, work_dir, &["--id", "a"]);
    // "b" dials the standby first: the standby's refusal sends it to the leader.
    let standby_first = format!("{second_address},{first_address}");
    let b = spawn_executor(&standby_first, work_dir, &["--id", "b"]);
    assert!(
        wait_for_executors(&first_metrics, 2).await,
        "both executors register"
    );

    // "b" is frozen, so the queries cannot all finish before the leader dies.
    signal(&b, libc::SIGSTOP);
    let mut client = BatonClient::connect(&both).await.unwrap();
    let awaited = submit_awaited(&mut client, &both, &QUERIES).await;
    let progressed = common::eventually(Duration::from_secs(10), async || {
        task_counts(&mut client, &awaited).await.1 >= 6
    })
    .await;
    assert!(
        progressed,
        "\"a\" finishes tasks\n-- leader log:\n{}",
        first.log()
    );
    // A client given only the standby's address is sent to the leader.
    let mut via_standby = BatonClient::connect(&second_address).await.unwrap();
    let mut ids: Vec<String> = awaited.iter().map(|q| q.id.clone()).collect();
    ids.sort();
    assert_eq!(
        listed(&mut via_standby).await,
        ids,
        "the standby's client sees the leader's queries"
    );
    signal(&a, libc::SIGSTOP);
    let unfinished = task_counts(&mut client, &awaited).await.2;
    assert!(unfinished > 0, "queries still run when the leader dies");

    first.0.kill().unwrap();
    first.0.wait().unwrap();
    signal(&a, libc::SIGCONT);
    signal(&b, libc::SIGCONT);
    assert!(
        leads(&second_metrics, 1.0).await,
        "the standby takes over\n-- its log:\n{}",
        second.log()
    );

    let reference = common::single_node(&catalog).await;
    let logs = || {
        format!(
            "-- new leader log:\n{}\n-- executor a:\n{}\n-- executor b:\n{}",
            second.log(),
            a.log(),
            b.log()
        )
    };
    check_answers(&mut client, awaited, &reference, logs).await;
    // The new leader knows exactly the queries submitted to the old one: none twice.
    assert_eq!(listed(&mut client).await, ids);
    let text = common::scrape_metrics(&second_metrics);
    assert!(
        sample(&text, "baton_queries_resumed_total") >= 1.0,
        "{text}"
    );
    assert!(sample(&text, "baton_recovered_tasks_total") > 0.0, "{text}");
}
