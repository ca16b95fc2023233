//! `baton scheduler`, `baton executor` and `baton standalone`: the long-running
//! processes. Ctrl-C (SIGINT) stops one at once; SIGTERM drains it first: a scheduler
//! takes no new query and stops once the running ones ended and their results were
//! fetched, an executor takes no new task and stops once nothing needs its shuffle
//! output; each within its `--drain-timeout`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;

use super::{CliError, start_cluster};
use crate::cluster::ClusterConfig;
use crate::executor::{Executor, ExecutorConfig};
use crate::scheduler::durable::StateLocation;
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::telemetry::{self, Readiness};

/// Starts an executor tries, after its scheduler went away, before it gives up; each
/// start waits up to 30 s for the scheduler to answer.
const EXECUTOR_RESTARTS: u32 = 10;

/// Pause between an executor's stop and its next start.
const RESTART_DELAY: std::time::Duration = std::time::Duration::from_millis(200);

/// How long a scheduler that was elected waits for the connections its standby
/// endpoint held to close.
const STANDBY_CLOSE: Duration = Duration::from_secs(2);

/// How often a draining scheduler checks whether its queries are done.
const DRAIN_CHECK: Duration = Duration::from_millis(100);

async fn until_ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

/// The signal that asks a process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Ctrl-C: stop now.
    Interrupt,
    /// SIGTERM (an orchestrator): drain, then stop.
    Terminate,
}

/// Waits for Ctrl-C or SIGTERM.
async fn stop_signal() -> Stop {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => tokio::select! {
            _ = until_ctrl_c() => Stop::Interrupt,
            _ = terminate.recv() => Stop::Terminate,
        },
        Err(e) => {
            tracing::warn!(error = %e, "SIGTERM cannot be caught; only Ctrl-C stops");
            until_ctrl_c().await;
            Stop::Interrupt
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr`, and the scheduler's JSON query
/// API when there is one.
async fn serve_metrics(
    addr: SocketAddr,
    scheduler: Option<&Scheduler>,
    ready: Readiness,
) -> Result<(), CliError> {
    let json = scheduler.map(|scheduler| ("/api/queries", scheduler.queries_api()));
    let bound = telemetry::serve_http(addr, json, ready).await?;
    tracing::info!(address = %bound, "metrics endpoint listening");
    Ok(())
}

/// Says at start that anyone on this host may use a scheduler without authentication.
fn warn_if_open(scheduler: &Scheduler) {
    if !scheduler.authenticator().is_on() {
        tracing::warn!(
            "authentication is off (no --users, no cluster secret): any process on this host \
             may submit, read and cancel queries; listening on loopback only"
        );
    }
}

/// `baton scheduler`. With its state in etcd it may first stand by (its metrics
/// endpoint up, not ready, `baton_scheduler_leader` 0) until elected; it stops with an
/// error when it loses the leadership.
pub async fn run_scheduler(
    bind: SocketAddr,
    config: SchedulerConfig,
    metrics: Option<SocketAddr>,
) -> Result<(), CliError> {
    let mut config = config;
    // A scheduler of its own keeps its queries across a restart unless told otherwise.
    config.state.get_or_insert(StateLocation::Embedded);
    config.advertise.get_or_insert_with(|| bind.to_string());
    // The metrics endpoint answers while the scheduler stands by; its query API and
    // readiness follow once it leads.
    let active: Arc<std::sync::OnceLock<Scheduler>> = Arc::default();
    if let Some(addr) = metrics {
        // Its /api/queries shows queries' SQL.
        let authenticated =
            config.users.is_some() || config.cluster.secret().ok().flatten().is_some();
        crate::security::check_exposure(addr, authenticated)?;
        let (api, ready) = (active.clone(), active.clone());
        let route: telemetry::JsonRoute = Arc::new(move |path, authorization| match api.get() {
            Some(scheduler) => (scheduler.queries_api())(path, authorization),
            None => telemetry::JsonAnswer::error("503 Service Unavailable", "standing by"),
        });
        let ready: Readiness = Arc::new(move || ready.get().is_some_and(|s| !s.is_draining()));
        let bound = telemetry::serve_http(addr, Some(("/api/queries", route)), ready).await?;
        tracing::info!(address = %bound, "metrics endpoint listening");
    }
    let authenticated = config.users.is_some() || config.cluster.secret().ok().flatten().is_some();
    crate::security::check_exposure(bind, authenticated)?;
    // With its state in etcd, the port answers from the start: while this scheduler
    // stands by, with refusals that name the active scheduler; once it leads, as the
    // scheduler. Any other scheduler listens once it is up.
    let (scheduler, bound, connections) = match &config.state {
        Some(StateLocation::Etcd(_)) => {
            let (bound, connections) = listen(bind).await?;
            (
                stand_by(&config, connections.clone()).await?,
                bound,
                connections,
            )
        }
        _ => {
            let scheduler = Scheduler::new(&config).await?;
            let (bound, connections) = listen(bind).await?;
            (scheduler, bound, connections)
        }
    };
    warn_if_open(&scheduler);
    let _ = active.set(scheduler.clone());
    let draining = scheduler.clone();
    let leading = scheduler.clone();
    let drain_timeout = config.drain_timeout;
    let lost = Arc::new(AtomicBool::new(false));
    let lost_flag = lost.clone();
    let stopped = async move {
        let stop = tokio::select! {
            stop = stop_signal() => stop,
            _ = leading.leadership_lost() => {
                lost_flag.store(true, Ordering::Relaxed);
                return;
            }
        };
        if stop == Stop::Terminate {
            draining.drain();
            let drained = async {
                while !draining.drained() {
                    tokio::time::sleep(DRAIN_CHECK).await;
                }
            };
            tokio::select! {
                _ = drained => tracing::info!("drained; scheduler stops"),
                _ = tokio::time::sleep(drain_timeout) => {
                    tracing::warn!(?drain_timeout, "drain timed out; scheduler stops with queries unfinished");
                }
                _ = until_ctrl_c() => {}
            }
        }
    };
    scheduler
        .serve_incoming(bound, connections, stopped)?
        .await?;
    if lost.load(Ordering::Relaxed) {
        return Err(CliError::LostLeadership);
    }
    Ok(())
}

/// Listens on `bind`: the address bound and the connections accepted there.
async fn listen(bind: SocketAddr) -> Result<(SocketAddr, Connections), CliError> {
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|source| CliError::Io {
            what: format!("binding the scheduler to {bind}"),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| CliError::Io {
        what: "reading the scheduler's address".into(),
        source,
    })?;
    tracing::info!(address = %bound, "scheduler listening");
    Ok((bound, crate::net::handed_over(listener)))
}

/// Connections accepted on a scheduler's port, for whichever server takes them.
type Connections = async_channel::Receiver<std::io::Result<tokio::net::TcpStream>>;

/// Builds the scheduler `config` names; meanwhile (while it stands by, with its state in
/// etcd) the calls coming on `connections` are refused with the active scheduler's
/// address.
async fn stand_by(
    config: &SchedulerConfig,
    connections: Connections,
) -> Result<Scheduler, CliError> {
    let (active, following) = tokio::sync::watch::channel(None);
    let (elected, until) = tokio::sync::oneshot::channel::<()>();
    let tls = config
        .server_tls()
        .map_err(crate::scheduler::SchedulerError::from)?;
    let refusing = tokio::spawn(crate::scheduler::standby::serve(
        connections,
        tls,
        following,
        async {
            let _ = until.await;
        },
    ));
    let scheduler = Scheduler::elected(config, &active).await;
    let _ = elected.send(());
    // Refused callers come back at once; one that keeps its connection idle is cut.
    match tokio::time::timeout(STANDBY_CLOSE, refusing).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the standby endpoint failed"),
        Ok(_) => {}
        Err(_) => tracing::debug!("standby connections still open; the scheduler takes over"),
    }
    Ok(scheduler?)
}

/// `baton executor`: runs until Ctrl-C. When its scheduler goes away (a restart, say), it
/// starts over and registers again, since a new scheduler knows nothing of the old
/// connection; it gives up after 10 starts in a row find no scheduler.
pub async fn run_executor(
    config: ExecutorConfig,
    metrics: Option<SocketAddr>,
) -> Result<(), CliError> {
    let registered = Arc::new(AtomicBool::new(false));
    if let Some(addr) = metrics {
        let ready = registered.clone();
        serve_metrics(addr, None, Arc::new(move || ready.load(Ordering::Relaxed))).await?;
    }
    // Failed starts in a row after a lost connection, each waiting for the scheduler.
    let mut failed_restarts: Option<u32> = None;
    loop {
        let started = tokio::select! {
            started = Executor::start(config.clone()) => started,
            _ = stop_signal() => return Ok(()),
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
        registered.store(true, Ordering::Relaxed);
        tokio::select! {
            _ = executor.wait() => tracing::warn!("scheduler went away; connecting again"),
            stop = stop_signal() => {
                registered.store(false, Ordering::Relaxed);
                if stop == Stop::Terminate {
                    executor.drain();
                    tokio::select! {
                        _ = executor.wait() => tracing::info!("drained; executor stops"),
                        _ = tokio::time::sleep(config.drain_timeout) => tracing::warn!(
                            drain_timeout = ?config.drain_timeout,
                            "drain timed out; executor stops with output still needed"
                        ),
                        _ = until_ctrl_c() => {}
                    }
                } else {
                    tracing::info!("interrupted; executor stops");
                }
                return Ok(());
            }
        }
        registered.store(false, Ordering::Relaxed);
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
    warn_if_open(cluster.scheduler());
    if let Some(addr) = metrics {
        crate::security::check_exposure(addr, cluster.scheduler().authenticator().is_on())?;
        serve_metrics(addr, Some(cluster.scheduler()), Arc::new(|| true)).await?;
    }
    eprintln!(
        "baton standalone: scheduler on {} with {executors} executors (Ctrl-C stops)",
        cluster.scheduler_address()
    );
    stop_signal().await;
    Ok(())
}
