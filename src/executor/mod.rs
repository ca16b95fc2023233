//! The executor: one stream to the scheduler, a task runner, a shuffle store and a Flight
//! endpoint that serves the store to other executors and to the scheduler.
//!
//! Tasks run on a runtime of their own, apart from the one of the stream, heartbeats and
//! Flight endpoint, so a CPU-bound operator never delays a pushed task, a cancel or a
//! shuffle fetch. The scheduler may suspend a running task for a far cheaper query's
//! task (`executor/gated.rs`).

mod advertise;
mod config;
mod dynamic_filters;
mod failure;
mod flight;
mod gated;
mod memory_cap;
mod runner;
mod work_dir;

pub use advertise::AdvertiseError;
pub use config::{ExecutorConfig, host_memory};
pub use gated::TaskGate;
pub use runner::micros_since;
pub use work_dir::WorkDirError;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::SessionContext;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tracing::{info, warn};

use crate::config::{
    HEARTBEAT_INTERVAL, MAX_MESSAGE_BYTES, distributed_session_config, with_dynamic_filters,
};
use crate::object_stores::{S3Settings, StoreRegistry};
use crate::proto::scheduler_service_client::SchedulerServiceClient;
use crate::proto::{
    Drain, ExecutorMessage, Heartbeat, RegisterExecutor, SchedulerMessage, executor_message,
    scheduler_message,
};
use crate::scheduler::standby::active_of;
use crate::security::{Authenticate, Authenticator, ClientCertificates, Dialer, SecurityError};
use crate::shuffle::fetch::FlightClients;
use crate::shuffle::{ShuffleStore, StoreError};
use runner::TaskRunner;
use tonic::service::interceptor::InterceptedService;
use work_dir::WorkDir;

/// How long an executor keeps trying to reach its scheduler at start.
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

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
    /// The executor's work directory could not be claimed.
    #[error(transparent)]
    WorkDir(#[from] WorkDirError),
    /// The address to register for the Flight endpoint is not one peers can dial.
    #[error(transparent)]
    Advertise(#[from] AdvertiseError),
    /// The task runtime environment (memory pool, spill directory) could not be built.
    #[error("executor task environment: {0}")]
    Environment(datafusion::error::DataFusionError),
    /// Authentication or TLS could not be set up.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// The Flight endpoint's TLS could not be set up.
    #[error("executor Flight endpoint TLS: {0}")]
    Tls(tonic::transport::Error),
    /// No scheduler address was given.
    #[error("no scheduler address given (--scheduler)")]
    NoScheduler,
}

/// A running executor.
#[derive(Debug)]
pub struct Executor {
    id: String,
    flight_address: String,
    store: ShuffleStore,
    clients: FlightClients,
    runner: Arc<TaskRunner>,
    outbound: mpsc::UnboundedSender<ExecutorMessage>,
    shutdown: watch::Sender<bool>,
    stream_task: JoinHandle<()>,
    /// Stopped when the executor is dropped.
    _task_runtime: TaskRuntime,
    /// Removed when the executor is dropped (after the runtime and store let go).
    _work_dir: WorkDir,
}

/// The runtime an executor's tasks run on: a thread per task it may hold (`slots` plus
/// `preempt_slots`), so a task pushed for a cheap query never waits for a thread while
/// the task it suspended finishes its current batch. Dropping it stops it without
/// waiting for its tasks, which is allowed on an async thread (dropping a tokio runtime
/// there panics).
#[derive(Debug)]
struct TaskRuntime(Option<tokio::runtime::Runtime>);

impl TaskRuntime {
    fn start(executor_id: &str, threads: u32) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1) as usize)
            .thread_name(format!("{executor_id}-task"))
            .enable_all()
            .build()?;
        Ok(Self(Some(runtime)))
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("running until dropped")
            .handle()
            .clone()
    }
}

impl Drop for TaskRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Executor {
    /// Binds the Flight endpoint, connects to the scheduler and registers.
    pub async fn start(config: ExecutorConfig) -> Result<Self, ExecutorError> {
        crate::telemetry::recorder();
        let id = config
            .executor_id
            .clone()
            .unwrap_or_else(|| format!("exec-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
        let work_dir = WorkDir::claim(&config.work_dir(), &id)?;
        let memory_limit = usize::try_from(config.memory_limit()).unwrap_or(usize::MAX);
        let stores = Arc::new(StoreRegistry::new());
        let environment = task_environment(memory_limit, &work_dir, stores.clone())?;
        let shuffle_cap = memory_limit / 100 * config.shuffle_memory_percent as usize;
        let store =
            ShuffleStore::in_pool(&work_dir.shuffle(), &environment.memory_pool, shuffle_cap)?;
        let secret = config.cluster.secret()?;
        let dialer = config.cluster.dialer(secret.as_deref())?;
        let flight_security = FlightSecurity {
            tls: config.cluster.tls.server(ClientCertificates::Required)?,
            auth: Arc::new(Authenticator::new(None, secret)),
        };
        let (listener, flight_address) = bind(config.bind, config.advertise.as_deref()).await?;
        let bound = listener
            .local_addr()
            .map_err(|source| ExecutorError::Bind {
                addr: config.bind.to_string(),
                source,
            })?;
        crate::security::check_exposure(bound, flight_security.auth.is_on())?;
        let slots = config.slots.max(1);
        let task_runtime = TaskRuntime::start(&id, slots + config.preempt_slots())
            .map_err(ExecutorError::Runtime)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        spawn_flight_server(
            listener,
            store.clone(),
            flight_security,
            shutdown_rx.clone(),
        )?;

        let register = RegisterExecutor {
            executor_id: id.clone(),
            flight_address: flight_address.clone(),
            slots,
            preempt_slots: config.preempt_slots(),
            held: Vec::new(),
        };
        let link = Link {
            dialer: dialer.clone(),
            addresses: config.scheduler_addresses(),
            register,
            store: store.clone(),
            grace: config.reconnect_grace,
        };
        let (up, inbound) = link.open(CONNECT_PATIENCE).await?;
        // What the runner and heartbeats send goes up whichever stream is open.
        let (outbound, pending) = mpsc::unbounded_channel();
        // Shuffle connections run on this runtime, not on the task threads that happen
        // to open them first.
        let clients = FlightClients::on_runtime(tokio::runtime::Handle::current())
            .with_fetch_timeout(config.fetch_timeout)
            .with_dialer(dialer);
        let mut session_config = with_dynamic_filters(distributed_session_config(1));
        // What a sort sets aside to merge its spill files comes out of the pool: at most
        // an even share of it per task the executor may hold (DataFusion's default of
        // 10 MB would not leave a small executor room to sort at all).
        let tasks = (slots + config.preempt_slots()) as usize;
        let execution = &mut session_config.options_mut().execution;
        execution.sort_spill_reservation_bytes = execution
            .sort_spill_reservation_bytes
            .min(memory_limit / (4 * tasks.max(1)));
        let session = SessionContext::new_with_config_rt(session_config, environment);
        let runner = Arc::new(TaskRunner::new(
            id.clone(),
            slots,
            store.clone(),
            clients.clone(),
            session,
            outbound.clone(),
            task_runtime.handle(),
        ));
        spawn_heartbeat(outbound.clone(), runner.clone(), shutdown_rx.clone());
        let stream_task = tokio::spawn(link.run(
            Stream { up, inbound },
            pending,
            runner.clone(),
            stores,
            shutdown.clone(),
        ));
        info!(executor = %id, flight = %flight_address, slots, memory_limit_mib = memory_limit >> 20, "executor started");
        Ok(Self {
            id,
            flight_address,
            store,
            clients,
            runner,
            outbound,
            shutdown,
            stream_task,
            _task_runtime: task_runtime,
            _work_dir: work_dir,
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

    /// Tasks finished since start.
    pub fn tasks_completed(&self) -> u64 {
        self.runner.completed()
    }

    /// Tasks running now (suspended ones included).
    pub fn running_tasks(&self) -> usize {
        self.runner.running()
    }

    /// Times the scheduler suspended one of its running tasks, since start.
    pub fn suspensions(&self) -> u64 {
        self.runner.suspensions()
    }

    /// Bytes its tasks' operators spilled to disk when memory was short, since start.
    pub fn spilled_bytes(&self) -> u64 {
        self.runner.spilled_bytes()
    }

    /// Asks the scheduler to let this executor go: it gets no new task, finishes those it
    /// holds and serves its shuffle output until the scheduler says Shutdown, once
    /// nothing needs that output; [`Executor::wait`] returns then.
    pub fn drain(&self) {
        info!(executor = %self.id, running = self.runner.running(), "draining");
        let _ = self.outbound.send(ExecutorMessage {
            message: Some(executor_message::Message::Drain(Drain {})),
        });
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

/// The runtime environment of an executor's tasks: one memory pool of `memory_limit`
/// bytes, shared fairly by the operators that can spill and drawn from by the shuffle
/// store, and a disk manager that spills into the executor's work dir. A task that
/// cannot get the memory it needs fails with DataFusion's "Resources exhausted" error;
/// the executor and its other tasks go on.
fn task_environment(
    memory_limit: usize,
    work_dir: &WorkDir,
    stores: Arc<StoreRegistry>,
) -> Result<Arc<RuntimeEnv>, ExecutorError> {
    let spill = work_dir.spill();
    std::fs::create_dir_all(&spill).map_err(|source| {
        ExecutorError::Environment(datafusion::error::DataFusionError::IoError(source))
    })?;
    RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(memory_limit)))
        .with_object_store_registry(stores)
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Directories(vec![spill])),
        )
        .build_arc()
        .map_err(ExecutorError::Environment)
}

/// What goes up the executor stream, and the stream coming down.
type OpenStream = (
    mpsc::UnboundedSender<ExecutorMessage>,
    tonic::Streaming<SchedulerMessage>,
);

/// Dials the schedulers at `addresses` in turn and opens the executor stream with the
/// first that takes it, with `register` as its first message; returns the sender of
/// what goes up the stream and the stream coming down.
/// Retries with backoff for up to `patience` while no scheduler can be
/// reached or the connection breaks before the stream is open: an executor may start
/// before its scheduler does, or while one goes down (it can be registered and killed
/// before it answers), or while its previous connection under the same id is still
/// registered. A scheduler that answers with another error refuses for good.
async fn open_stream(
    dialer: &Dialer,
    addresses: &[String],
    register: RegisterExecutor,
    patience: Duration,
) -> Result<OpenStream, ExecutorError> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut backoff = Duration::from_millis(50);
    // A standby that refuses names the active scheduler: that one is dialed next.
    let mut named: Option<String> = None;
    let mut followed = false;
    let mut listed = addresses.iter().cycle();
    loop {
        let address = match named.take() {
            Some(active) => active,
            None => listed.next().ok_or(ExecutorError::NoScheduler)?.clone(),
        };
        let failure = match try_open_stream(dialer, &address, register.clone()).await {
            Ok(opened) => return Ok(opened),
            // Its own previous connection may still be registered, until the scheduler
            // notices that it broke: that one clears; any other refusal is final.
            Err(ExecutorError::Register(status))
                if !is_transport_failure(&status)
                    && status.code() != tonic::Code::AlreadyExists =>
            {
                return Err(ExecutorError::Register(status));
            }
            Err(failure) => failure,
        };
        let hint = match &failure {
            ExecutorError::Register(status) => {
                active_of(status).filter(|a| !a.is_empty() && *a != address)
            }
            _ => None,
        };
        if let Some(active) = hint {
            tracing::debug!(%active, standby = %address, "a standby named the active scheduler");
            named = Some(active);
            // At once, unless the one named last time stood by too.
            if !followed {
                followed = true;
                continue;
            }
        }
        followed = false;
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
    dialer: &Dialer,
    address: &str,
    register: RegisterExecutor,
) -> Result<OpenStream, ExecutorError> {
    let channel = dialer
        .connect(address)
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

/// Binds the Flight endpoint's listener; returns it with the host:port it listens on.
/// Binds the Flight endpoint at `address`; returns it with the address peers are to
/// dial (`advertise`, see [`advertise::advertised_address`]).
async fn bind(
    address: SocketAddr,
    advertise: Option<&str>,
) -> Result<(TcpListener, String), ExecutorError> {
    let failed = |source| ExecutorError::Bind {
        addr: address.to_string(),
        source,
    };
    let listener = TcpListener::bind(address).await.map_err(failed)?;
    let local = listener.local_addr().map_err(failed)?;
    let advertised = advertise::advertised_address(advertise, local).await?;
    Ok((listener, advertised))
}

/// Who may fetch from an executor's Flight endpoint, and over what.
struct FlightSecurity {
    /// TLS, when on (peers must show a certificate).
    tls: Option<tonic::transport::ServerTlsConfig>,
    /// Only holders of the cluster secret, when there is one.
    auth: Arc<Authenticator>,
}

/// Serves the shuffle store over Flight on `listener`.
fn spawn_flight_server(
    listener: TcpListener,
    store: ShuffleStore,
    security: FlightSecurity,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ExecutorError> {
    let service = arrow_flight::flight_service_server::FlightServiceServer::new(
        flight::ShuffleFlight::new(store),
    )
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let service = InterceptedService::new(service, Authenticate(security.auth));
    let mut builder = crate::config::server_builder();
    if let Some(tls) = security.tls {
        builder = builder.tls_config(tls).map_err(ExecutorError::Tls)?;
    }
    let router = builder.add_service(service);
    tokio::spawn(async move {
        let stopped = async move {
            let _ = shutdown.wait_for(|stopped| *stopped).await;
        };
        if let Err(e) = router
            .serve_with_incoming_shutdown(crate::net::incoming(listener), stopped)
            .await
        {
            warn!(error = %e, "executor Flight endpoint failed");
        }
    });
    Ok(())
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

/// One open executor stream: what goes up, and what comes down.
struct Stream {
    up: mpsc::UnboundedSender<ExecutorMessage>,
    inbound: tonic::Streaming<SchedulerMessage>,
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamEnd {
    /// The scheduler said Shutdown: the executor stops.
    Shutdown,
    /// The stream broke or the scheduler closed it: the executor registers again.
    Lost,
}

/// The executor's link to its schedulers: opens the stream, and opens it again when it
/// is lost.
struct Link {
    dialer: Dialer,
    addresses: Vec<String>,
    /// What it registers with (the held output filled in at each registration).
    register: RegisterExecutor,
    store: ShuffleStore,
    /// How long it tries to register again after losing the stream.
    grace: Duration,
}

impl Link {
    /// Registers with a scheduler, trying for up to `patience`, reporting the output
    /// its store holds.
    async fn open(&self, patience: Duration) -> Result<OpenStream, ExecutorError> {
        let mut register = self.register.clone();
        register.held = self.store.held_outputs();
        open_stream(&self.dialer, &self.addresses, register, patience).await
    }

    /// Serves streams until the scheduler says Shutdown or none can be opened within
    /// the grace period; then the executor stops. When a stream is lost, the running
    /// tasks stop (the scheduler that takes the executor back runs them again) and the
    /// shuffle store is kept for the next registration.
    async fn run(
        self,
        mut stream: Stream,
        mut pending: mpsc::UnboundedReceiver<ExecutorMessage>,
        runner: Arc<TaskRunner>,
        stores: Arc<StoreRegistry>,
        shutdown: watch::Sender<bool>,
    ) {
        while serve_stream(&mut stream, &mut pending, &runner, &stores).await == StreamEnd::Lost {
            runner.abort_all();
            let held = self.store.held_outputs().len();
            warn!(executor = %self.register.executor_id, held, grace = ?self.grace, "lost the scheduler stream; registering again");
            match self.open(self.grace).await {
                Ok((up, inbound)) => {
                    // Reports of the stopped tasks and old heartbeats are for no one now.
                    while pending.try_recv().is_ok() {}
                    metrics::counter!("baton_executor_reconnects_total").increment(1);
                    info!(executor = %self.register.executor_id, held, "registered again");
                    stream = Stream { up, inbound };
                }
                Err(e) => {
                    warn!(error = %e, "no scheduler took the executor back; it stops");
                    break;
                }
            }
        }
        shutdown.send_replace(true);
    }
}

/// Acts on what the scheduler pushes, and sends up what the executor reports, until
/// the stream ends.
async fn serve_stream(
    stream: &mut Stream,
    pending: &mut mpsc::UnboundedReceiver<ExecutorMessage>,
    runner: &Arc<TaskRunner>,
    stores: &StoreRegistry,
) -> StreamEnd {
    loop {
        let received = tokio::select! {
            received = stream.inbound.message() => received,
            Some(report) = pending.recv() => {
                let _ = stream.up.send(report);
                continue;
            }
        };
        match received {
            Ok(Some(SchedulerMessage {
                message: Some(message),
            })) => match message {
                scheduler_message::Message::RunTask(task) => runner.start(task),
                scheduler_message::Message::CancelTask(cancel) => {
                    if let Some(id) = cancel.task {
                        runner.cancel(&id);
                    }
                }
                scheduler_message::Message::SuspendTask(suspend) => {
                    if let Some(id) = suspend.task {
                        runner.set_suspended(&id, true);
                    }
                }
                scheduler_message::Message::ResumeTask(resume) => {
                    if let Some(id) = resume.task {
                        runner.set_suspended(&id, false);
                    }
                }
                scheduler_message::Message::ReleaseShuffle(release) => {
                    runner.release(&release.query_id, &release.stage_ids)
                }
                scheduler_message::Message::DropMapOutput(drop) => {
                    runner.release_map_task(&drop.query_id, drop.stage_id, drop.map_partition);
                }
                scheduler_message::Message::ObjectStores(settings) => {
                    match S3Settings::from_map(&settings.s3) {
                        Ok(s3) => stores.set_s3(s3),
                        Err(e) => warn!(error = %e, "object store settings ignored"),
                    }
                }
                scheduler_message::Message::Shutdown(_) => return StreamEnd::Shutdown,
            },
            Ok(Some(SchedulerMessage { message: None })) => {}
            Ok(None) => {
                info!("scheduler closed the executor stream");
                return StreamEnd::Lost;
            }
            Err(e) => {
                warn!(error = %e, "executor stream failed");
                return StreamEnd::Lost;
            }
        }
    }
}
