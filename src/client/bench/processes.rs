//! A cluster of separate `baton` processes on loopback, as a user deploys it: one
//! scheduler process and one process per executor, started from the running binary,
//! with no OS privileges asked for. Benchmarks run their client in their own process
//! against it. Dropping it kills the processes and removes their work directory.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::BenchError;
use crate::client::Login;
use crate::security::{Throwaway, throwaway};

/// How long the processes may take to start and register.
const START_PATIENCE: Duration = Duration::from_secs(60);

/// A running cluster of processes.
#[derive(Debug)]
pub struct ProcessCluster {
    /// Each process with what it is ("scheduler", "executor 1", …).
    children: Vec<(String, Child)>,
    address: String,
    work_dir: PathBuf,
    /// The run's credentials when it is secure.
    credentials: Option<Throwaway>,
}

impl ProcessCluster {
    /// Starts `baton scheduler` with `scheduler_args` (besides its address and metrics
    /// endpoint) and `executors` × `baton executor` with `executor_args`, and waits until
    /// every executor is registered.
    /// With `secure`, the cluster runs with authentication and TLS on, with
    /// credentials made for the run ([`ProcessCluster::login`] logs in).
    pub async fn start(
        scheduler_args: &[String],
        executors: usize,
        executor_args: &[String],
        secure: bool,
    ) -> Result<Self, BenchError> {
        let binary = std::env::current_exe()
            .map_err(|e| BenchError::Processes(format!("finding the baton binary: {e}")))?;
        let work_dir = std::env::temp_dir().join(format!(
            "baton-bench-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let address = format!("127.0.0.1:{}", free_port()?);
        let metrics = format!("127.0.0.1:{}", free_port()?);
        let mut cluster = Self {
            children: Vec::new(),
            address: address.clone(),
            work_dir,
            credentials: None,
        };
        let mut security_args = Vec::new();
        if secure {
            std::fs::create_dir_all(&cluster.work_dir).map_err(|e| {
                BenchError::Processes(format!("creating {}: {e}", cluster.work_dir.display()))
            })?;
            let credentials =
                throwaway(&cluster.work_dir).map_err(|e| BenchError::Processes(e.to_string()))?;
            for (flag, path) in [
                ("--tls-cert", &credentials.tls.tls_cert),
                ("--tls-key", &credentials.tls.tls_key),
                ("--tls-ca", &credentials.tls.tls_ca),
            ] {
                if let Some(path) = path {
                    security_args.extend([flag.to_string(), path.display().to_string()]);
                }
            }
            cluster.credentials = Some(credentials);
        }
        let mut args = vec![
            "scheduler".to_string(),
            "--bind".into(),
            address.clone(),
            "--metrics".into(),
            metrics.clone(),
        ];
        // The scheduler keeps its state as deployed (embedded), in the run's work dir.
        if !scheduler_args.iter().any(|a| a.starts_with("--state")) {
            let state = cluster.work_dir.join("state");
            args.extend(["--state-dir".into(), state.to_string_lossy().into_owned()]);
        }
        args.extend_from_slice(scheduler_args);
        args.extend_from_slice(&security_args);
        if let Some(credentials) = &cluster.credentials {
            args.extend(["--users".into(), credentials.users.display().to_string()]);
        }
        cluster.spawn("scheduler".into(), &binary, &args)?;
        for n in 1..=executors {
            let mut args = vec![
                "executor".to_string(),
                "--scheduler".into(),
                address.clone(),
                "--work-dir".into(),
                cluster.work_dir.to_string_lossy().into_owned(),
            ];
            args.extend_from_slice(executor_args);
            args.extend_from_slice(&security_args);
            cluster.spawn(format!("executor {n}"), &binary, &args)?;
        }
        let line = format!("baton_executors_connected {executors}");
        let deadline = tokio::time::Instant::now() + START_PATIENCE;
        while !scrape(&metrics).await.lines().any(|l| l.trim() == line) {
            if tokio::time::Instant::now() > deadline {
                return Err(BenchError::Processes(format!(
                    "{executors} executor processes did not register within {START_PATIENCE:?}"
                )));
            }
            if let Some(exited) = cluster.exited() {
                return Err(BenchError::Processes(exited));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(cluster)
    }

    /// host:port of the scheduler.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// How a client logs in: as the run's admin over TLS when the cluster is secure.
    pub fn login(&self) -> Result<Login, BenchError> {
        match &self.credentials {
            None => Ok(Login::default()),
            Some(credentials) => Login::password(
                &credentials.user,
                &credentials.password,
                credentials.tls.tls_ca.as_deref(),
            )
            .map_err(|e| BenchError::Processes(e.to_string())),
        }
    }

    /// Each process with what it is ("scheduler", "executor 1", …) and its pid.
    pub fn processes(&self) -> impl Iterator<Item = (&str, u32)> {
        self.children
            .iter()
            .map(|(role, child)| (role.as_str(), child.id()))
    }

    fn spawn(&mut self, role: String, binary: &Path, args: &[String]) -> Result<(), BenchError> {
        let mut command = Command::new(binary);
        if let Some(credentials) = &self.credentials {
            command.env("BATON_CLUSTER_SECRET", &credentials.secret);
        }
        let child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| BenchError::Processes(format!("starting baton {}: {e}", args[0])))?;
        self.children.push((role, child));
        Ok(())
    }

    /// A process that ended already, named with its exit status.
    fn exited(&mut self) -> Option<String> {
        self.children.iter_mut().find_map(|(role, child)| {
            let status = child.try_wait().ok()??;
            Some(format!(
                "baton {role} (process {}) exited: {status}",
                child.id()
            ))
        })
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.work_dir);
    }
}

/// A port free on loopback now.
fn free_port() -> Result<u16, BenchError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|e| BenchError::Processes(format!("finding a free port: {e}")))
}

/// The Prometheus text of the metrics endpoint at `address`; empty while nothing
/// answers there.
async fn scrape(address: &str) -> String {
    let Ok(mut socket) = tokio::net::TcpStream::connect(address).await else {
        return String::new();
    };
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    let mut response = String::new();
    if socket.write_all(request.as_bytes()).await.is_err()
        || socket.read_to_string(&mut response).await.is_err()
    {
        return String::new();
    }
    response
}
