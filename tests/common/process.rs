//! Baton as separate processes for the end-to-end tests: spawning schedulers and
//! executors from the built binary, free ports, signals and scraped metrics.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The built `baton` binary.
pub const BATON: &str = env!("CARGO_BIN_EXE_baton");

/// A child process killed when dropped, so a failing test leaves nothing running, and
/// the file its stderr (its log) goes to, if any.
pub struct Process(pub Child, pub Option<tempfile::NamedTempFile>);

impl Process {
    /// What the process logged so far, for a failing test's message.
    pub fn log(&self) -> String {
        self.1
            .as_ref()
            .and_then(|file| std::fs::read_to_string(file.path()).ok())
            .unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn spawn(args: &[&str]) -> Process {
    let log = tempfile::NamedTempFile::new().expect("log file");
    let stderr = log.reopen().expect("log file");
    let child = Command::new(BATON)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn baton");
    Process(child, Some(log))
}

/// A scheduler process on `address` over `catalog`, plus `extra` flags.
pub fn spawn_scheduler(address: &str, catalog: &Path, extra: &[&str]) -> Process {
    let mut args = vec![
        "scheduler",
        "--bind",
        address,
        "--catalog",
        catalog.to_str().unwrap(),
    ];
    // Unless the test gives it a state store, a restart starts empty.
    if !extra.iter().any(|a| a.starts_with("--state")) {
        args.extend_from_slice(&["--state", "memory"]);
    }
    args.extend_from_slice(extra);
    spawn(&args)
}

/// A scheduler process over `catalog` on a free port, with its metrics endpoint on
/// another: the process, its address and its metrics address.
pub fn spawn_scheduler_with_metrics(catalog: &Path) -> (Process, String, String) {
    let scheduler = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let process = spawn_scheduler(&scheduler, catalog, &["--metrics", &metrics]);
    (process, scheduler, metrics)
}

/// An executor process with two slots, connected to `scheduler`, plus `extra` flags.
pub fn spawn_executor(scheduler: &str, work_dir: &str, extra: &[&str]) -> Process {
    let mut args = vec![
        "executor",
        "--scheduler",
        scheduler,
        "--slots",
        "2",
        "--work-dir",
        work_dir,
    ];
    args.extend_from_slice(extra);
    spawn(&args)
}

/// A port free now, below Linux's ephemeral range (32768 and up), from which the
/// kernel picks the local ports of outgoing connections and of binds to port 0: a port
/// taken from that range could be handed to another socket (an executor dialing the
/// scheduler that just went down, say) before the process restarted on it binds again.
pub fn free_port() -> u16 {
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id();
    (0..SPAN)
        .map(|_| {
            let offset = start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed));
            FIRST + (offset % u32::from(SPAN)) as u16
        })
        .find(|&port| TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free port below the ephemeral range")
}

/// Waits (15 s at most) until the scheduler's metrics at `addr` report `n` executors.
pub async fn wait_for_executors(addr: &str, n: usize) -> bool {
    let line = format!("baton_executors_connected {n}");
    super::eventually(Duration::from_secs(15), async || {
        super::scrape_metrics(addr)
            .lines()
            .any(|l| l.trim() == line)
    })
    .await
}

/// Sends `signal` to a child process.
pub fn signal(process: &Process, signal: i32) {
    // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
    let sent = unsafe { libc::kill(process.0.id() as i32, signal) };
    assert_eq!(sent, 0, "signal {signal} to executor");
}

/// The value of the sample `line_prefix` (a metric name with its labels) in Prometheus
/// text; 0 when absent.
pub fn sample(text: &str, line_prefix: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(line_prefix))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or(0.0)
}
