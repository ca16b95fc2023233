//! The scheduler: query table, work queue, dispatcher, executor registry, and the gRPC
//! and Flight endpoints that clients and executors talk to.

mod flight;
mod query;
mod queue;
mod registry;
mod service;
mod state;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arrow_flight::flight_service_server::FlightServiceServer;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::TaskContext;
use datafusion::prelude::SessionContext;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::info_span;

pub use query::{MAX_TASK_ATTEMPTS, Query, StageSpec, TaskRef};
pub use state::SchedulerState;

use crate::catalog::{self, CatalogError};
use crate::config::{DEFAULT_TARGET_PARTITIONS, MAX_MESSAGE_BYTES, distributed_session_config};
use crate::planner::{self, PlannerError};
use crate::proto::scheduler_service_server::SchedulerServiceServer;
use crate::proto::{QueryState, QueryStatus};
use crate::shuffle::{MapLocation, fetch::FlightClients};

/// Errors of the scheduler.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The catalog could not be loaded.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// No query has this id.
    #[error("no query with id {0}")]
    UnknownQuery(String),
    /// The query ended without a result.
    #[error("query {id} {state}: {error}")]
    NoResult {
        /// The query.
        id: String,
        /// How it ended.
        state: &'static str,
        /// Why.
        error: String,
    },
    /// The gRPC server failed.
    #[error("scheduler server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// How a scheduler is set up.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// TOML catalog of tables that SQL can name.
    pub catalog: Option<PathBuf>,
    /// Partitions (tasks per stage) DataFusion plans with.
    pub target_partitions: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            catalog: None,
            target_partitions: DEFAULT_TARGET_PARTITIONS,
        }
    }
}

/// What a client submits.
#[derive(Debug, Clone)]
pub enum Submission {
    /// SQL that the scheduler plans against its catalog.
    Sql(String),
    /// A datafusion-proto physical plan that the client planned.
    Plan(Vec<u8>),
}

struct Inner {
    state: Mutex<SchedulerState>,
    session: SessionContext,
    executors: watch::Receiver<usize>,
    clients: FlightClients,
}

/// A handle to the scheduler; cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").finish_non_exhaustive()
    }
}

impl Scheduler {
    /// A scheduler with the tables of `config.catalog`.
    pub async fn new(config: SchedulerConfig) -> Result<Self, SchedulerError> {
        let session =
            SessionContext::new_with_config(distributed_session_config(config.target_partitions));
        if let Some(path) = &config.catalog {
            catalog::register_catalog(&session, path).await?;
        }
        Ok(Self::with_session(session))
    }

    /// A scheduler that plans SQL in `session`.
    pub fn with_session(session: SessionContext) -> Self {
        let (tx, rx) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(SchedulerState::new(tx)),
                session,
                executors: rx,
                clients: FlightClients::default(),
            }),
        }
    }

    /// The session SQL is planned in.
    pub fn session(&self) -> &SessionContext {
        &self.inner.session
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SchedulerState> {
        self.inner.state.lock().expect("scheduler state lock")
    }

    /// Plans and starts a query; returns its id at once. A query that cannot be planned
    /// is recorded as Failed with the cause.
    pub async fn submit(&self, submission: Submission, label: String) -> Arc<str> {
        let id: Arc<str> = uuid::Uuid::new_v4().simple().to_string()[..16].into();
        let span = info_span!("plan", query_id = %id);
        let query = match self.plan(submission).await {
            Ok((stages, schema)) => Query::new(id.clone(), label, stages, schema),
            Err(e) => {
                let _enter = span.enter();
                tracing::info!(error = %e, "query failed to plan");
                Query::failed(id.clone(), label, e.to_string())
            }
        };
        self.state().add_query(query);
        id
    }

    async fn plan(
        &self,
        submission: Submission,
    ) -> Result<(Vec<StageSpec>, SchemaRef), PlannerError> {
        let plan = match submission {
            Submission::Sql(sql) => {
                let frame = self.inner.session.sql(&sql).await?;
                frame.create_physical_plan().await?
            }
            Submission::Plan(bytes) => {
                let ctx: Arc<TaskContext> = self.inner.session.task_ctx();
                planner::decode_plan(&bytes, &ctx)?
            }
        };
        let dag = planner::plan_stages(plan)?;
        let stages = dag
            .stages
            .iter()
            .map(|s| {
                Ok(StageSpec {
                    plan: planner::encode_plan(s.plan.clone())?.into(),
                    inputs: s.inputs.clone(),
                    tasks: s.tasks,
                })
            })
            .collect::<Result<Vec<_>, PlannerError>>()?;
        Ok((stages, dag.schema))
    }

    /// A query's status.
    pub fn status(&self, query_id: &str) -> Option<QueryStatus> {
        self.state().query(query_id).map(Query::status)
    }

    /// Every query's status, newest first.
    pub fn list(&self) -> Vec<QueryStatus> {
        self.state().queries().map(Query::status).collect()
    }

    /// Cancels a query; false when it had already ended.
    pub fn cancel(&self, query_id: &str) -> Result<bool, SchedulerError> {
        self.state()
            .cancel(query_id)
            .ok_or_else(|| SchedulerError::UnknownQuery(query_id.to_string()))
    }

    /// Waits until the query ends and returns how it ended.
    pub async fn wait(&self, query_id: &str) -> Result<QueryState, SchedulerError> {
        let mut rx = self
            .state()
            .watch(query_id)
            .ok_or_else(|| SchedulerError::UnknownQuery(query_id.to_string()))?;
        let state = rx
            .wait_for(|s| {
                matches!(
                    s,
                    QueryState::Succeeded | QueryState::Failed | QueryState::Cancelled
                )
            })
            .await
            .map(|s| *s)
            .unwrap_or(QueryState::Failed);
        Ok(state)
    }

    /// Waits for the query to end; on success returns the result schema and where the
    /// final stage's partitions live, in partition order.
    pub async fn wait_for_result(
        &self,
        query_id: &str,
    ) -> Result<(SchemaRef, Vec<MapLocation>, u32), SchedulerError> {
        let state = self.wait(query_id).await?;
        let guard = self.state();
        let query = guard
            .query(query_id)
            .ok_or_else(|| SchedulerError::UnknownQuery(query_id.to_string()))?;
        match (state, &query.schema) {
            (QueryState::Succeeded, Some(schema)) => Ok((
                schema.clone(),
                query.result_locations(),
                query.final_stage(),
            )),
            _ => Err(SchedulerError::NoResult {
                id: query_id.to_string(),
                state: query.state().as_str_name(),
                error: query.error().unwrap_or("no result").to_string(),
            }),
        }
    }

    /// Frees a fetched query's result partitions on the executors.
    pub fn release_results(&self, query_id: &str) {
        self.state().release_results(query_id);
    }

    /// Waits until at least `n` executors are connected.
    pub async fn wait_for_executors(&self, n: usize) {
        let mut rx = self.inner.executors.clone();
        let _ = rx.wait_for(|count| *count >= n).await;
    }

    /// Connected executors and their (total, busy) slots.
    pub fn executors(&self) -> (usize, (u32, u32)) {
        let state = self.state();
        (state.registry().len(), state.registry().slots())
    }

    /// Serves the scheduler gRPC service and the Flight result endpoint on `listener`
    /// until `shutdown` completes.
    pub fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = Result<(), SchedulerError>> + Send + 'static {
        let grpc = SchedulerServiceServer::new(service::SchedulerGrpc::new(self.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let flight = FlightServiceServer::new(flight::ResultFlight::new(self.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let router = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(grpc)
            .add_service(flight);
        async move {
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
                .await?;
            Ok(())
        }
    }
}
