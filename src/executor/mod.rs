//! The executor: one stream to the scheduler, a task runner, a shuffle store and a Flight
//! endpoint that serves the store to other executors and to the scheduler.
//!
//! Tasks run on runtimes of their own (`executor/runtimes.rs`), and a task may be
//! suspended for a more urgent one (`executor/arbiter.rs`).

mod arbiter;
mod flight;
mod gated;
#[cfg(unix)]
mod local_files;
mod movable;
mod runner;
mod runtimes;

pub use runner::micros_since;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use datafusion::prelude::SessionContext;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tracing::{info, warn};

use crate::config::{HEARTBEAT_INTERVAL, MAX_MESSAGE_BYTES, distributed_session_config};
use crate::proto::scheduler_service_client::SchedulerServiceClient;
use crate::proto::{
    ExecutorMessage, Heartbeat, RegisterExecutor, SchedulerMessage, executor_message,
    scheduler_message,
};
use crate::shuffle::fetch::{FlightClients, PriorityClients, connect_channel};
use crate::shuffle::{ShuffleStore, StoreError};
use runner::TaskRunner;
use runtimes::TaskRuntimes;

/// How long an executor keeps trying to reach its scheduler at start.
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

/// Bytes of shuffle output an executor keeps in memory before spilling, by default.
pub const DEFAULT_SHUFFLE_MEMORY: usize = 4 << 30;

/// Errors of the executor.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The Flight address could not be bound.
    #[error("binding the executor's Flight endpoint to {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The scheduler could not be reached.
    #[error("connecting to the scheduler at {addr}: {source}")]
    Connect {
        /// The scheduler address.
        addr: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
    /// The scheduler refused the stream.
    #[error("the scheduler refused the executor stream: {0}")]
    Register(#[from] tonic::Status),
    /// The runtime that runs tasks could not be started.
    #[error("starting the executor's task runtime: {0}")]
    Runtime(std::io::Error),
    /// The shuffle store could not be set up.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How an executor is set up.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// host:port of the scheduler.
    pub scheduler: String,
    /// Address to bind the Flight endpoint to (port 0: any free port).
    pub bind: SocketAddr,
    /// Address to bind the Flight endpoint for background tasks' reads to; None: `bind`'s
    /// IP, any free port.
    pub background_bind: Option<SocketAddr>,
    /// Tasks run at once.
    pub slots: u32,
    /// Tasks taken beyond `slots` when they are more urgent than running ones (which then
    /// wait suspended); 0: never more than `slots`.
    pub preempt_slots: u32,
    /// Directory for spilled shuffle files.
    pub work_dir: PathBuf,
    /// Bytes of shuffle output kept in memory before spilling to disk.
    pub memory_limit: usize,
    /// The executor id; a random one when None.
    pub executor_id: Option<String>,
}

impl ExecutorConfig {
    /// An executor of `slots` slots (at least 1) for the scheduler at `scheduler` (a
    /// leading `http://` is dropped), on loopback, that takes as many tasks again when
    /// they are urgent; its spill directory is `work_dir`, a temporary one when None.
    pub fn local(scheduler: &str, slots: u32, work_dir: Option<PathBuf>) -> Self {
        let slots = slots.max(1);
        Self {
            scheduler: scheduler.trim_start_matches("http://").to_string(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            background_bind: None,
            slots,
            preempt_slots: slots,
            work_dir: work_dir.unwrap_or_else(|| std::env::temp_dir().join("baton-executor")),
            memory_limit: DEFAULT_SHUFFLE_MEMORY,
            executor_id: None,
        }
    }
}

/// A running executor.
#[derive(Debug)]
pub struct Executor {
    id: String,
    flight_address: String,
    store: ShuffleStore,
    clients: PriorityClients,
    runner: Arc<TaskRunner>,
    shutdown: watch::Sender<bool>,
    stream_task: JoinHandle<()>,
    /// Stopped when the executor is dropped.
    _task_runtimes: TaskRuntimes,
}

impl Executor {
    /// Binds the Flight endpoint, connects to the scheduler and registers.
    pub async fn start(config: ExecutorConfig) -> Result<Self, ExecutorError> {
        crate::telemetry::recorder();
        let id = config
            .executor_id
            .clone()
            .unwrap_or_else(|| format!("exec-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
        let store = ShuffleStore::new(&config.work_dir.join(&id), config.memory_limit)?;
        let (listener, flight_address) = bind(config.bind)?;
        let background_bind = config
            .background_bind
            .unwrap_or_else(|| SocketAddr::new(config.bind.ip(), 0));
        let (background_listener, background_flight_address) = bind(background_bind)?;
        let task_runtimes = TaskRuntimes::start(&id, config.slots, config.preempt_slots)
            .map_err(ExecutorError::Runtime)?;
        let handles = task_runtimes.handles();
        let (shutdown, shutdown_rx) = watch::channel(false);
        spawn_flight_server(
            listener,
            store.clone(),
            shutdown_rx.clone(),
            &tokio::runtime::Handle::current(),
        );
        spawn_flight_server(
            background_listener,
            store.clone(),
            shutdown_rx.clone(),
            &handles.background_flight,
        );

        let register = RegisterExecutor {
            executor_id: id.clone(),
            flight_address: flight_address.clone(),
            slots: config.slots,
            preempt_slots: config.preempt_slots,
            background_flight_address,
        };
        let (outbound, inbound) = open_stream(&config.scheduler, register).await?;
        let clients = PriorityClients {
            urgent: FlightClients::on_runtime(tokio::runtime::Handle::current()),
            background: FlightClients::on_runtime(handles.background_flight.clone()),
        };
        let session = SessionContext::new_with_config(distributed_session_config(1));
        // Task scans read local files on their own threads (see `local_files`).
        #[cfg(unix)]
        session.register_object_store(
            datafusion::execution::object_store::ObjectStoreUrl::local_filesystem().as_ref(),
            Arc::new(local_files::InlineLocalFiles::default()),
        );
        let runner = Arc::new(TaskRunner::new(
            id.clone(),
            config.slots,
            store.clone(),
            clients.clone(),
            session,
            outbound.clone(),
            handles,
        ));
        spawn_heartbeat(outbound, runner.clone(), shutdown_rx.clone());
        let stream_task = tokio::spawn(serve_stream(inbound, runner.clone(), shutdown.clone()));
        info!(executor = %id, flight = %flight_address, slots = config.slots, "executor started");
        Ok(Self {
            id,
            flight_address,
            store,
            clients,
            runner,
            shutdown,
            stream_task,
            _task_runtimes: task_runtimes,
        })
    }

    /// The executor's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// host:port of its Flight endpoint.
    pub fn flight_address(&self) -> &str {
        &self.flight_address
    }

    /// Its shuffle store.
    pub fn store(&self) -> &ShuffleStore {
        &self.store
    }

    /// Bytes it fetched from other executors over Flight.
    pub fn bytes_fetched(&self) -> u64 {
        self.clients.bytes_fetched()
    }

    /// Bytes its background tasks fetched from other executors' background endpoints.
    pub fn bytes_fetched_in_background(&self) -> u64 {
        self.clients.background.bytes_fetched()
    }

    /// Tasks finished since start.
    pub fn tasks_completed(&self) -> u64 {
        self.runner.completed()
    }

    /// Tasks running now (suspended ones included).
    pub fn running_tasks(&self) -> usize {
        self.runner.running()
    }

    /// Times a running task was suspended for a more urgent one, since start.
    pub fn suspensions(&self) -> u64 {
        self.runner.suspensions()
    }

    /// Tasks moved to normal OS priority after they started (see `PromoteTask`), since
    /// start.
    pub fn promotions(&self) -> u64 {
        self.runner.promotions()
    }

    /// Waits until the scheduler stream ends (the scheduler went away or said Shutdown).
    pub async fn wait(&mut self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }

    /// Stops the executor: its stream, Flight endpoint and heartbeat.
    pub fn stop(&self) {
        self.shutdown.send_replace(true);
        self.stream_task.abort();
        self.runner.abort_all();
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What goes up the executor stream, and the stream coming down.
type OpenStream = (
    mpsc::UnboundedSender<ExecutorMessage>,
    tonic::Streaming<SchedulerMessage>,
);

/// Dials the scheduler and opens the executor stream with `register` as its first
/// message; returns the sender of what goes up the stream and the stream coming down.
/// Retries with backoff for up to [`CONNECT_PATIENCE`] while the scheduler cannot be
/// reached or the connection breaks before the stream is open: an executor may start
/// before its scheduler does, or while one goes down (it can be registered and killed
/// before it answers). A scheduler that answers with an error refuses for good.
async fn open_stream(
    address: &str,
    register: RegisterExecutor,
) -> Result<OpenStream, ExecutorError> {
    let deadline = tokio::time::Instant::now() + CONNECT_PATIENCE;
    let mut backoff = Duration::from_millis(50);
    loop {
        let failure = match try_open_stream(address, register.clone()).await {
            Ok(opened) => return Ok(opened),
            Err(ExecutorError::Register(status)) if !is_transport_failure(&status) => {
                return Err(ExecutorError::Register(status));
            }
            Err(failure) => failure,
        };
        if tokio::time::Instant::now() + backoff > deadline {
            return Err(failure);
        }
        tracing::debug!(error = %failure, "scheduler not reachable yet; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// One attempt of [`open_stream`].
async fn try_open_stream(
    address: &str,
    register: RegisterExecutor,
) -> Result<OpenStream, ExecutorError> {
    let channel = connect_channel(address)
        .await
        .map_err(|source| ExecutorError::Connect {
            addr: address.to_string(),
            source,
        })?;
    let mut client = SchedulerServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (outbound, outbound_rx) = mpsc::unbounded_channel();
    let _ = outbound.send(ExecutorMessage {
        message: Some(executor_message::Message::Register(register)),
    });
    let inbound = client
        .connect(UnboundedReceiverStream::new(outbound_rx))
        .await?
        .into_inner();
    Ok((outbound, inbound))
}

/// Whether `status` reports a broken or unreachable connection rather than an answer
/// of the scheduler.
fn is_transport_failure(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
        || std::error::Error::source(status)
            .is_some_and(|source| source.downcast_ref::<tonic::transport::Error>().is_some())
}

/// Binds a Flight endpoint's (non-blocking) listener; returns it with the host:port it
/// listens on. A std listener, so the runtime that serves it can take it over.
fn bind(address: SocketAddr) -> Result<(std::net::TcpListener, String), ExecutorError> {
    let failed = |source| ExecutorError::Bind {
        addr: address.to_string(),
        source,
    };
    let listener = std::net::TcpListener::bind(address).map_err(failed)?;
    listener.set_nonblocking(true).map_err(failed)?;
    let local = listener.local_addr().map_err(failed)?;
    Ok((listener, local.to_string()))
}

/// Serves the shuffle store over Flight on `listener`, with its connections (and the
/// encoding of what they send) on `runtime`.
fn spawn_flight_server(
    listener: std::net::TcpListener,
    store: ShuffleStore,
    mut shutdown: watch::Receiver<bool>,
    runtime: &tokio::runtime::Handle,
) {
    let service = arrow_flight::flight_service_server::FlightServiceServer::new(
        flight::ShuffleFlight::new(store),
    )
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    runtime.spawn(async move {
        let stopped = async move {
            let _ = shutdown.wait_for(|stopped| *stopped).await;
        };
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                warn!(error = %e, "executor Flight endpoint could not listen");
                return;
            }
        };
        if let Err(e) = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(service)
            .serve_with_incoming_shutdown(crate::net::incoming(listener), stopped)
            .await
        {
            warn!(error = %e, "executor Flight endpoint failed");
        }
    });
}

fn spawn_heartbeat(
    outbound: mpsc::UnboundedSender<ExecutorMessage>,
    runner: Arc<TaskRunner>,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    runner.report_utilization();
                    let beat = ExecutorMessage {
                        message: Some(executor_message::Message::Heartbeat(Heartbeat {
                            running_tasks: runner.running() as u32,
                        })),
                    };
                    if outbound.send(beat).is_err() {
                        return;
                    }
                }
                _ = shutdown.wait_for(|stopped| *stopped) => return,
            }
        }
    });
}

/// Acts on what the scheduler pushes until the stream ends.
async fn serve_stream(
    mut inbound: tonic::Streaming<SchedulerMessage>,
    runner: Arc<TaskRunner>,
    shutdown: watch::Sender<bool>,
) {
    loop {
        match inbound.message().await {
            Ok(Some(SchedulerMessage {
                message: Some(message),
            })) => match message {
                scheduler_message::Message::RunTask(task) => runner.start(task),
                scheduler_message::Message::CancelTask(cancel) => {
                    if let Some(id) = cancel.task {
                        runner.cancel(&id);
                    }
                }
                scheduler_message::Message::PromoteTask(promote) => {
                    if let Some(id) = promote.task {
                        runner.promote(&id);
                    }
                }
                scheduler_message::Message::ReleaseShuffle(release) => {
                    runner.release(&release.query_id, &release.stage_ids)
                }
                scheduler_message::Message::Shutdown(_) => break,
            },
            Ok(Some(SchedulerMessage { message: None })) => {}
            Ok(None) => {
                info!("scheduler closed the executor stream");
                break;
            }
            Err(e) => {
                warn!(error = %e, "executor stream failed");
                break;
            }
        }
    }
    shutdown.send_replace(true);
}
