//! An in-process cluster on loopback: one scheduler and N executors that talk real gRPC
//! and Flight over 127.0.0.1. The CLI's embedded default and the tests use it.

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::client::{BatonClient, ClientError, Credential, Login};
use crate::executor::{Executor, ExecutorConfig, ExecutorError};
use crate::scheduler::{Scheduler, SchedulerConfig, SchedulerError};
use crate::security::ClusterFlags;

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

/// How an in-process cluster is set up: a scheduler and `executors` executors made
/// alike from one executor configuration.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Executors to start.
    pub executors: usize,
    /// Scheduler address (port 0: any free port).
    pub bind: SocketAddr,
    /// The scheduler.
    pub scheduler: SchedulerConfig,
    /// Each executor; its scheduler address is the cluster's, its work dir one of the
    /// cluster's own (removed with it), and without a memory limit it gets its share of
    /// the default.
    pub executor: ExecutorConfig,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            executors: 2,
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            scheduler: SchedulerConfig::default(),
            executor: ExecutorConfig::default(),
        }
    }
}

impl ClusterConfig {
    /// `executors` executors of `slots` slots each over the tables of `catalog`,
    /// otherwise the defaults.
    pub fn with_catalog(executors: usize, slots: u32, catalog: PathBuf) -> Self {
        let mut config = Self {
            executors,
            ..Self::default()
        };
        config.executor.slots = slots;
        config.scheduler.catalog = Some(catalog);
        config
    }
}

/// A running in-process cluster. Dropping it stops everything and removes its work dir.
#[derive(Debug)]
pub struct LocalCluster {
    scheduler: Scheduler,
    address: String,
    /// How its own clients log in: as the cluster, with its secret.
    login: Login,
    executors: Vec<Executor>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), SchedulerError>>,
}

impl LocalCluster {
    /// Starts the scheduler, then the executors, and waits until all are registered.
    pub async fn start(mut config: ClusterConfig) -> Result<Self, ClusterError> {
        // With users, the in-process executors need a secret: a fresh one unless given.
        let secret = match config
            .scheduler
            .cluster
            .secret()
            .map_err(SchedulerError::from)?
        {
            None if config.scheduler.users.is_some() => Some(crate::security::random_secret()),
            secret => secret,
        };
        config.scheduler.cluster.cluster_secret = secret.clone();
        let scheduler = Scheduler::new(&config.scheduler).await?;
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
        })?);
        // One work dir for every embedded cluster of this host: each executor claims its
        // own directory in it and removes those that crashed processes left behind.
        let work_dir = config
            .executor
            .work_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("baton-cluster"));
        let mut executors = Vec::with_capacity(config.executors);
        // Executors of one host share its memory: by default each gets its share of
        // what one executor alone would.
        let memory_limit = config
            .executor
            .memory_limit
            .unwrap_or_else(|| config.executor.memory_limit() / config.executors.max(1) as u64);
        for _ in 0..config.executors {
            let executor = ExecutorConfig {
                scheduler: address.clone(),
                work_dir: Some(work_dir.clone()),
                memory_limit: Some(memory_limit),
                cluster: ClusterFlags {
                    cluster_secret: secret.clone(),
                    ..config.scheduler.cluster.clone()
                },
                ..config.executor.clone()
            };
            executors.push(Executor::start(executor).await?);
        }
        scheduler.wait_for_executors(config.executors).await;
        let login = Login {
            tls: config
                .scheduler
                .cluster
                .tls
                .client()
                .map_err(SchedulerError::from)?,
            credential: secret.map_or(Credential::Anonymous, Credential::Token),
        };
        Ok(Self {
            scheduler,
            address,
            login,
            executors,
            stop: Some(stop),
            server,
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

    /// A client of this cluster, logged in as the cluster itself when authentication
    /// is on (it sees every query).
    pub async fn client(&self) -> Result<BatonClient, ClusterError> {
        Ok(BatonClient::connect_as(&self.address, &self.login).await?)
    }

    /// A client of this cluster that logs in as `user` with `password` (over TLS when
    /// the cluster uses it).
    pub async fn client_as(&self, user: &str, password: &str) -> Result<BatonClient, ClusterError> {
        let login = Login {
            tls: self.login.tls.clone(),
            credential: Credential::Password {
                user: user.to_string(),
                password: password.to_string(),
            },
        };
        Ok(BatonClient::connect_as(&self.address, &login).await?)
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
        // The scheduler takes no more queries and expects its executors to go.
        self.scheduler.drain();
        for executor in &self.executors {
            executor.stop();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Each executor removes its own directory of the shared work dir.
        self.executors.clear();
    }
}
