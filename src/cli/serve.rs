//! `baton scheduler`, `baton executor` and `baton standalone`: the long-running
//! processes, each until Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use super::{CliError, start_cluster};
use crate::cluster::ClusterConfig;
use crate::executor::{Executor, ExecutorConfig};
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::telemetry::{self, JsonRoute};

/// Starts an executor tries, after its scheduler went away, before it gives up; each
/// start waits up to 30 s for the scheduler to answer.
const EXECUTOR_RESTARTS: u32 = 10;

/// Pause between an executor's stop and its next start.
const RESTART_DELAY: std::time::Duration = std::time::Duration::from_millis(200);

async fn until_ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

/// Serves `/metrics` on `addr`, and the scheduler's JSON query API when there is one.
async fn serve_metrics(addr: SocketAddr, scheduler: Option<&Scheduler>) -> Result<(), CliError> {
    let json = scheduler.map(|scheduler| {
        let scheduler = scheduler.clone();
        let route: JsonRoute = Arc::new(move |path: &str| scheduler.status_json(path));
        ("/api/queries", route)
    });
    let bound = telemetry::serve_http(addr, json).await?;
    tracing::info!(address = %bound, "metrics endpoint listening");
    Ok(())
}

/// `baton scheduler`.
pub async fn run_scheduler(
    bind: SocketAddr,
    config: SchedulerConfig,
    metrics: Option<SocketAddr>,
) -> Result<(), CliError> {
    let scheduler = Scheduler::new(&config).await?;
    if let Some(addr) = metrics {
        serve_metrics(addr, Some(&scheduler)).await?;
    }
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|source| CliError::Io {
            what: format!("binding the scheduler to {bind}"),
            source,
        })?;
    tracing::info!(address = %bind, "scheduler listening");
    scheduler.serve(listener, until_ctrl_c()).await?;
    Ok(())
}

/// `baton executor`: runs until Ctrl-C. When its scheduler goes away (a restart, say), it
/// starts over and registers again, since a new scheduler knows nothing of the old
/// connection; it gives up after 10 starts in a row find no scheduler.
pub async fn run_executor(
    config: ExecutorConfig,
    metrics: Option<SocketAddr>,
) -> Result<(), CliError> {
    if let Some(addr) = metrics {
        serve_metrics(addr, None).await?;
    }
    // Failed starts in a row after a lost connection, each waiting for the scheduler.
    let mut failed_restarts: Option<u32> = None;
    loop {
        let started = tokio::select! {
            started = Executor::start(config.clone()) => started,
            _ = until_ctrl_c() => return Ok(()),
        };
        let mut executor = match (started, failed_restarts) {
            (Ok(executor), _) => executor,
            // The scheduler is not back yet, or the old endpoints still hold their ports.
            (Err(e), Some(failed)) if failed + 1 < EXECUTOR_RESTARTS => {
                tracing::warn!(error = %e, "executor could not start again; retrying");
                failed_restarts = Some(failed + 1);
                tokio::time::sleep(RESTART_DELAY).await;
                continue;
            }
            (Err(e), _) => return Err(e.into()),
        };
        tokio::select! {
            _ = executor.wait() => tracing::warn!("scheduler went away; connecting again"),
            _ = until_ctrl_c() => {
                tracing::info!("interrupted; executor stops");
                return Ok(());
            }
        }
        drop(executor);
        failed_restarts = Some(0);
        tokio::time::sleep(RESTART_DELAY).await;
    }
}

/// `baton standalone`.
pub async fn run_standalone(
    config: ClusterConfig,
    metrics: Option<SocketAddr>,
) -> Result<(), CliError> {
    let executors = config.executors;
    let cluster = start_cluster(config).await?;
    if let Some(addr) = metrics {
        serve_metrics(addr, Some(cluster.scheduler())).await?;
    }
    eprintln!(
        "baton standalone: scheduler on {} with {executors} executors (Ctrl-C stops)",
        cluster.scheduler_address()
    );
    until_ctrl_c().await;
    Ok(())
}
