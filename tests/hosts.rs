//! A cluster across hosts: the scheduler and two executors each in a Linux network
//! namespace of its own, joined by a bridge, the executors bound to 0.0.0.0 and
//! advertising their addresses; this test process is the client, a fourth host on the
//! bridge. All 22 TPC-H queries must be right with shuffle data crossing between the
//! executors' addresses; then one executor's link goes down mid-query, the query still
//! finishes right, and the executor is back once its link returns.
//!
//! Needs root (CI runs as root); where a namespace cannot be created the test says so
//! and passes without running. Namespaces, links and processes go at the end, also when
//! the test fails.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use baton::client::{BatonClient, Credential, Login};

/// The secret the test's processes share.
const SECRET: &str = "the-secret-of-the-test-hosts-cluster";

const BATON: &str = env!("CARGO_BIN_EXE_baton");

/// Runs `ip` with `args`; Err with its stderr when it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The test's network: a bridge, and per host a namespace linked to it by a veth pair.
/// Dropping it kills the processes started in it, then removes namespaces and links.
struct Network {
    bridge: String,
    /// Prefix of the addresses, e.g. "10.213.7." (hosts are .1, .2, …; the bridge .254).
    subnet: String,
    hosts: Vec<Host>,
    processes: Vec<Child>,
    /// The processes' output, one file each, shown when the test fails.
    logs: tempfile::TempDir,
}

struct Host {
    namespace: String,
    /// The bridge-side end of its veth pair.
    link: String,
    address: String,
}

impl Network {
    /// A bridge with this process's address on it; Err when that is refused.
    fn new() -> Result<Self, String> {
        let id = std::process::id();
        let network = Self {
            bridge: format!("btbr{}", id % 100_000),
            subnet: format!("10.{}.{}.", 100 + (id / 256) % 150, id % 256),
            hosts: Vec::new(),
            processes: Vec::new(),
            logs: tempfile::tempdir().map_err(|e| format!("a log directory: {e}"))?,
        };
        ip(&["link", "add", &network.bridge, "type", "bridge"])?;
        ip(&["link", "set", &network.bridge, "up"])?;
        let own = format!("{}254/24", network.subnet);
        ip(&["addr", "add", &own, "dev", &network.bridge])?;
        Ok(network)
    }

    /// Adds host `n` (1..): a namespace with address `subnet.n` on the bridge.
    fn add_host(&mut self, n: u8) -> Result<String, String> {
        let id = std::process::id() % 100_000;
        let host = Host {
            namespace: format!("bt{id}h{n}"),
            link: format!("btv{id}h{n}"),
            address: format!("{}{n}", self.subnet),
        };
        ip(&["netns", "add", &host.namespace])?;
        let namespace = host.namespace.clone();
        let link = host.link.clone();
        let address = host.address.clone();
        self.hosts.push(host);
        ip(&[
            "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &namespace,
        ])?;
        ip(&["link", "set", &link, "master", &self.bridge])?;
        ip(&["link", "set", &link, "up"])?;
        let cidr = format!("{address}/24");
        ip(&["-n", &namespace, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", &namespace, "link", "set", "eth0", "up"])?;
        ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
        Ok(address)
    }

    /// Starts `baton args` in host `n`'s namespace, its output going to a log file.
    fn spawn(&mut self, n: usize, args: &[&str]) {
        let namespace = &self.hosts[n - 1].namespace;
        let path = self.logs.path().join(format!("host{n}-{}.log", args[0]));
        let log = std::fs::File::create(&path).expect("a log file");
        let child = Command::new("ip")
            .args(["netns", "exec", namespace, BATON])
            .args(args)
            .env("BATON_CLUSTER_SECRET", SECRET)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a second handle of the log"))
            .stderr(log)
            .spawn()
            .expect("start baton in a namespace");
        self.processes.push(child);
    }

    /// The last lines each process wrote, for a failure message.
    fn logs(&self) -> String {
        let mut paths: Vec<_> = std::fs::read_dir(self.logs.path())
            .map(|dir| dir.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default();
        paths.sort();
        let mut text = String::new();
        for path in paths {
            let content = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = content.lines().collect();
            let tail = &lines[lines.len().saturating_sub(30)..];
            text.push_str(&format!(
                "\n--- {} (last {} lines) ---\n{}",
                path.file_name().unwrap_or_default().to_string_lossy(),
                tail.len(),
                tail.join("\n")
            ));
        }
        text
    }

    /// Takes host `n`'s link down or up.
    fn set_link(&self, n: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["link", "set", &self.hosts[n - 1].link, state]).unwrap();
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for child in &mut self.processes {
            let _ = child.kill();
            let _ = child.wait();
        }
        for host in &self.hosts {
            let _ = ip(&["link", "del", &host.link]);
            let _ = ip(&["netns", "del", &host.namespace]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// The sum of the samples of `name` (any labels) in Prometheus text.
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn connected(metrics: &str, n: usize) -> bool {
    common::eventually(Duration::from_secs(60), async || {
        total(
            &common::scrape_metrics(metrics),
            "baton_executors_connected",
        ) == n as f64
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_across_network_namespaces_survives_a_cut_link() {
    let mut network = match Network::new() {
        Ok(network) => network,
        Err(e) => {
            eprintln!("SKIPPED: cannot create network namespaces here ({e})");
            return;
        }
    };
    let scheduler_ip = network.add_host(1).unwrap();
    let steady_ip = network.add_host(2).unwrap();
    let cut_ip = network.add_host(3).unwrap();
    let catalog = common::tpch_catalog();
    let catalog_arg = catalog.to_str().unwrap().to_string();
    let work = tempfile::tempdir().unwrap();
    let work_dir = work.path().to_str().unwrap().to_string();
    network.spawn(
        1,
        &[
            "scheduler",
            "--bind",
            "0.0.0.0:50050",
            "--catalog",
            &catalog_arg,
            "--partitions",
            "4",
            "--partition-data-mib",
            "0",
            "--metrics",
            "0.0.0.0:9464",
            "--state",
            "memory",
        ],
    );
    let scheduler = format!("{scheduler_ip}:50050");
    for (n, (name, address)) in [(2, ("steady", &steady_ip)), (3, ("cut", &cut_ip))] {
        network.spawn(
            n,
            &[
                "executor",
                "--scheduler",
                &scheduler,
                "--bind",
                "0.0.0.0:50051",
                "--advertise",
                address,
                "--id",
                name,
                "--slots",
                "2",
                "--work-dir",
                &work_dir,
                "--fetch-timeout",
                "5",
                "--metrics",
                "0.0.0.0:9464",
            ],
        );
    }
    let scheduler_metrics = format!("{scheduler_ip}:9464");
    assert!(
        connected(&scheduler_metrics, 2).await,
        "both executors register across the bridge{}",
        network.logs()
    );

    // All 22 queries from this host, right, with shuffle data crossing between hosts.
    let reference = common::single_node(&catalog).await;
    // Listening beyond loopback, the cluster asks for its secret.
    let anonymous = BatonClient::connect(&scheduler).await.unwrap().list().await;
    assert_eq!(
        anonymous.unwrap_err().code(),
        Some(tonic::Code::Unauthenticated)
    );
    let login = Login {
        tls: None,
        credential: Credential::Token(SECRET.into()),
    };
    let mut client = BatonClient::connect_as(&scheduler, &login).await.unwrap();
    common::check_all_tpch(&mut client, &reference).await;
    for address in [&steady_ip, &cut_ip] {
        let fetched = total(
            &common::scrape_metrics(&format!("{address}:9464")),
            "baton_shuffle_bytes_read_total{source=\"remote\"}",
        );
        assert!(fetched > 0.0, "executor {address} fetched from its peer");
    }

    // "cut" finishes part of a query's first stage while "steady" is frozen, then its
    // link goes down: the query must finish on "steady" alone.
    let steady_pid = network.processes[1].id() as i32;
    // SAFETY: kill(2) on a child this test spawned and has not reaped.
    assert_eq!(unsafe { libc::kill(steady_pid, libc::SIGSTOP) }, 0);
    let sql = common::GROUPED_LINEITEM;
    let id = client.submit_sql(sql).await.unwrap();
    let held_by_cut = common::first_stage_waits_on(&mut client, &id, "steady").await;
    network.set_link(3, false);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(steady_pid, libc::SIGCONT) }, 0);
    assert!(
        held_by_cut,
        "\"cut\" finished part of the first stage{}",
        network.logs()
    );
    common::expect_fetched(&mut client, &id, &reference, sql).await;
    assert!(
        connected(&scheduler_metrics, 1).await,
        "the cut executor is taken as lost{}",
        network.logs()
    );

    // Its link back, it registers again and takes work.
    network.set_link(3, true);
    assert!(
        connected(&scheduler_metrics, 2).await,
        "the executor is back after its link returns{}",
        network.logs()
    );
    let again = client.submit_sql(sql).await.unwrap();
    common::expect_fetched(&mut client, &again, &reference, sql).await;
}
