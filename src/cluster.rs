//! An in-process cluster on loopback: one scheduler and N executors that talk real gRPC
//! and Flight over 127.0.0.1. The CLI's embedded default and the tests use it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::client::{BatonClient, ClientError};
use crate::config::DEFAULT_TARGET_PARTITIONS;
use crate::executor::{DEFAULT_SHUFFLE_MEMORY, Executor, ExecutorConfig, ExecutorError};
use crate::scheduler::{
    DEFAULT_AGING_HALF_LIFE, DEFAULT_INLINE_RESULT_BYTES, DEFAULT_PARTITION_DATA_BYTES,
    DEFAULT_PREEMPT_COST_RATIO, DEFAULT_RESULT_TTL, PolicyKind, Scheduler, SchedulerConfig,
    SchedulerError,
};

/// Errors of starting a cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The scheduler could not start.
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    /// An executor could not start.
    #[error(transparent)]
    Executor(#[from] ExecutorError),
    /// The scheduler address could not be bound.
    #[error("binding the scheduler to {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A client could not connect.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// How an in-process cluster is set up.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Executors to start.
    pub executors: usize,
    /// Slots per executor.
    pub slots: u32,
    /// Catalog of tables.
    pub catalog: Option<PathBuf>,
    /// Partitions (tasks per stage), at most.
    pub target_partitions: usize,
    /// Bytes of table data that earn a query one partition, up to `target_partitions`;
    /// 0: every query gets `target_partitions`.
    pub partition_data_bytes: u64,
    /// Scheduler address (port 0: any free port).
    pub bind: SocketAddr,
    /// Scheduling policy.
    pub policy: PolicyKind,
    /// Aging half-life of the `priority` policy, seconds (0: no aging).
    pub aging_half_life: f64,
    /// Tasks each executor takes beyond its slots when they are more urgent than running
    /// ones; None: as many as its slots.
    pub preempt_slots: Option<u32>,
    /// A task preempts only for a query with under 1/this of the remaining work of the
    /// task it displaces.
    pub preempt_cost_ratio: f64,
    /// Bytes of shuffle output each executor keeps in memory before spilling to disk.
    pub shuffle_memory: usize,
    /// How long an unfetched result is kept.
    pub result_ttl: Duration,
    /// Bytes of Arrow IPC each final-stage task sends back with its status for the
    /// scheduler to serve; 0: results stay on the executors until fetched.
    pub inline_result_bytes: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            executors: 2,
            slots: 2,
            catalog: None,
            target_partitions: DEFAULT_TARGET_PARTITIONS,
            partition_data_bytes: DEFAULT_PARTITION_DATA_BYTES,
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            policy: PolicyKind::default(),
            aging_half_life: DEFAULT_AGING_HALF_LIFE,
            preempt_slots: None,
            preempt_cost_ratio: DEFAULT_PREEMPT_COST_RATIO,
            shuffle_memory: DEFAULT_SHUFFLE_MEMORY,
            result_ttl: DEFAULT_RESULT_TTL,
            inline_result_bytes: DEFAULT_INLINE_RESULT_BYTES,
        }
    }
}

/// A running in-process cluster. Dropping it stops everything and removes its work dir.
#[derive(Debug)]
pub struct LocalCluster {
    scheduler: Scheduler,
    address: String,
    executors: Vec<Executor>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), SchedulerError>>,
    work_dir: PathBuf,
}

static CLUSTERS: AtomicU64 = AtomicU64::new(0);

impl LocalCluster {
    /// Starts the scheduler, then the executors, and waits until all are registered.
    pub async fn start(config: ClusterConfig) -> Result<Self, ClusterError> {
        let scheduler = Scheduler::new(SchedulerConfig {
            catalog: config.catalog.clone(),
            target_partitions: config.target_partitions,
            partition_data_bytes: config.partition_data_bytes,
            policy: config.policy,
            aging_half_life: config.aging_half_life,
            result_ttl: config.result_ttl,
            preempt_cost_ratio: config.preempt_cost_ratio,
            inline_result_bytes: config.inline_result_bytes,
        })
        .await?;
        let listener =
            TcpListener::bind(config.bind)
                .await
                .map_err(|source| ClusterError::Bind {
                    addr: config.bind,
                    source,
                })?;
        let address = listener
            .local_addr()
            .map_err(|source| ClusterError::Bind {
                addr: config.bind,
                source,
            })?
            .to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(scheduler.serve(listener, async move {
            let _ = stopped.await;
        }));
        let work_dir = std::env::temp_dir().join(format!(
            "baton-cluster-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        ));
        let mut executors = Vec::with_capacity(config.executors);
        for _ in 0..config.executors {
            let mut executor =
                ExecutorConfig::local(&address, config.slots, Some(work_dir.clone()));
            executor.memory_limit = config.shuffle_memory;
            if let Some(preempt_slots) = config.preempt_slots {
                executor.preempt_slots = preempt_slots;
            }
            executors.push(Executor::start(executor).await?);
        }
        scheduler.wait_for_executors(config.executors).await;
        Ok(Self {
            scheduler,
            address,
            executors,
            stop: Some(stop),
            server,
            work_dir,
        })
    }

    /// host:port of the scheduler (gRPC and Flight).
    pub fn scheduler_address(&self) -> &str {
        &self.address
    }

    /// The scheduler.
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// The executors.
    pub fn executors(&self) -> &[Executor] {
        &self.executors
    }

    /// A client of this cluster.
    pub async fn client(&self) -> Result<BatonClient, ClusterError> {
        Ok(BatonClient::connect(&self.address).await?)
    }

    /// Waits until the scheduler stops (it runs until the cluster is dropped).
    pub async fn wait(&mut self) -> Result<(), ClusterError> {
        match (&mut self.server).await {
            Ok(result) => Ok(result?),
            Err(_) => Ok(()),
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for executor in &self.executors {
            executor.stop();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = std::fs::remove_dir_all(&self.work_dir);
    }
}
