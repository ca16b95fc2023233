//! The scheduler: query table, work queue, dispatcher, executor registry, and the gRPC
//! and Flight endpoints that clients and executors talk to.

mod config;
pub mod durable;
mod flight;
mod guard;
mod local;
mod planning;
pub mod policy;
mod prepared;
mod query;
mod queue;
mod registry;
mod service;
mod sessions;
mod slowness;
pub mod standby;
mod state;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::prelude::SessionContext;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;

use crate::config::Switch;
use tracing::info_span;

pub use config::SchedulerConfig;
use config::SchedulerSecurity;
pub use flight::result_ticket;
use planning::{Planner, PlanningPool};
pub use policy::{Policy, PolicyKind};
pub use query::{CopyRule, MAX_TASK_ATTEMPTS, Query, ResultPart, StageFilter, StageSpec, TaskRef};
pub use sessions::Origin;
use sessions::Sessions;
pub use state::{ClusterSize, SchedulerState, TaskSpan};

use crate::catalog::{self, CatalogError};
use crate::config::{
    MAX_MESSAGE_BYTES, distributed_session_config, host_cores, with_dynamic_filters,
};
use crate::object_stores::S3Settings;
use crate::proto::scheduler_service_server::SchedulerServiceServer;
use crate::proto::{QueryState, QueryStatus};
use crate::security::{Authenticate, Authenticator, Caller, Dialer, SecurityError};
use crate::shuffle::fetch::FlightClients;
use crate::telemetry::{JsonAnswer, JsonRoute};

/// How often the scheduler looks for running tasks that earn a copy.
const COPY_CHECK: Duration = Duration::from_millis(50);

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
    /// The scheduler is shutting down and takes no new query.
    #[error("the scheduler is shutting down and takes no new query")]
    ShuttingDown,
    /// The query belongs to another user.
    #[error("query {0} belongs to another user")]
    NotYours(String),
    /// SQL that cannot be prepared.
    #[error("{0}")]
    Invalid(String),
    /// Authentication or TLS could not be set up.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// The durable state could not be read or written.
    #[error(transparent)]
    State(#[from] durable::StateError),
}

/// A query state's name in status output and metric labels: "queued", "running", ….
pub fn query_state_name(state: QueryState) -> &'static str {
    match state {
        QueryState::Queued => "queued",
        QueryState::Running => "running",
        QueryState::Succeeded => "succeeded",
        QueryState::Failed => "failed",
        QueryState::Cancelled => "cancelled",
        QueryState::Unspecified => "unknown",
    }
}

/// A stage state's name in status output: "waiting", "running" or "done".
pub fn stage_state_name(state: crate::proto::StageState) -> &'static str {
    use crate::proto::StageState;
    match state {
        StageState::Waiting => "waiting",
        StageState::Running => "running",
        StageState::Done => "done",
        StageState::Unspecified => "unknown",
    }
}

/// A query status as JSON, with states by name.
pub fn status_to_json(status: &QueryStatus) -> serde_json::Value {
    let state = QueryState::try_from(status.state).unwrap_or(QueryState::Unspecified);
    let stages: Vec<_> = status
        .stages
        .iter()
        .map(|s| {
            let stage_state = crate::proto::StageState::try_from(s.state)
                .unwrap_or(crate::proto::StageState::Unspecified);
            serde_json::json!({
                "stage_id": s.stage_id,
                "state": stage_state_name(stage_state),
                "tasks_total": s.tasks_total,
                "tasks_done": s.tasks_done,
                "tasks_running": s.tasks_running,
                "input_stages": s.input_stages,
                "started_at_ms": s.started_at_ms,
                "ended_at_ms": s.ended_at_ms,
                "task_seconds": s.task_micros as f64 / 1e6,
                "operators": s.operators,
                "join_filters": s.filters,
                "filter_rows_in": s.filter_rows_in,
                "filter_rows_removed": s.filter_rows_removed,
                "filter_row_groups_pruned": s.filter_row_groups_pruned,
                "in_stage_filter_tasks": s.in_stage_filter_tasks,
                "in_stage_filters": s.in_stage_filters.as_ref().map(|f| serde_json::json!({
                    "kinds": f.kinds,
                    "scans": f.scans,
                    "file_ranges_pruned": f.file_ranges_pruned,
                    "row_groups_pruned": f.row_groups_pruned,
                    "rows_pruned": f.rows_pruned,
                })),
                "running": s.running.iter().map(|t| serde_json::json!({
                    "partition": t.partition,
                    "executor": t.executor_id,
                    "suspended": t.suspended,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({
        "query_id": status.query_id,
        "state": query_state_name(state),
        "label": status.label,
        "owner": status.owner,
        "error": status.error,
        "submitted_at_ms": status.submitted_at_ms,
        "started_at_ms": status.started_at_ms,
        "ended_at_ms": status.ended_at_ms,
        "stages": stages,
    })
}

/// True for the states a query ends in.
fn is_final(state: QueryState) -> bool {
    matches!(
        state,
        QueryState::Succeeded | QueryState::Failed | QueryState::Cancelled
    )
}

/// What a client submits.
#[derive(Debug, Clone)]
pub enum Submission {
    /// SQL that the scheduler plans against its catalog.
    Sql(String),
    /// SQL with `$1`, `$2`, … placeholders and the values bound to them (a Flight SQL
    /// prepared statement).
    Bound {
        /// The SQL.
        sql: String,
        /// The values, for `$1` on.
        params: Vec<datafusion::common::ScalarValue>,
    },
    /// A datafusion-proto physical plan that the client planned.
    Plan(Vec<u8>),
}

struct Inner {
    state: Mutex<SchedulerState>,
    planner: Planner,
    executors: watch::Receiver<ClusterSize>,
    clients: FlightClients,
    result_ttl: Duration,
    max_request_bytes: usize,
    /// Shutting down: no new query is taken (see [`Scheduler::drain`]).
    draining: std::sync::atomic::AtomicBool,
    /// The catalog's settings for `s3://` tables, sent to every executor that registers.
    object_stores: S3Settings,
    /// Checks who calls every endpoint.
    auth: Arc<Authenticator>,
    /// TLS of the listener, when on.
    server_tls: Option<tonic::transport::ServerTlsConfig>,
    /// The clients' sessions.
    sessions: Sessions,
    /// Its leadership, when it shares its state with standbys.
    leadership: std::sync::OnceLock<durable::Leadership>,
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
    pub async fn new(config: &SchedulerConfig) -> Result<Self, SchedulerError> {
        Self::elected(config, &watch::Sender::new(None)).await
    }

    /// [`Self::new`], for a scheduler that may stand by first (its state in etcd, where
    /// another scheduler leads): until elected, `active` follows where the one that
    /// leads serves.
    pub async fn elected(
        config: &SchedulerConfig,
        active: &watch::Sender<Option<String>>,
    ) -> Result<Self, SchedulerError> {
        let security = config.security()?;
        let session = SessionContext::new_with_config(with_dynamic_filters(
            distributed_session_config(config.target_partitions.unwrap_or_else(host_cores)),
        ));
        let mut stores = S3Settings::default();
        let mut tables = Vec::new();
        if let Some(path) = &config.catalog {
            let registered = catalog::register_catalog(&session, path).await?;
            stores = registered.s3;
            tables = registered.locations;
        }
        let scheduler = Self::build(session, config, stores, tables, security);
        scheduler.keep_state(config, active).await?;
        Ok(scheduler)
    }

    /// Opens the state store `config` names and resumes what it kept (nothing for the
    /// in-memory default of an embedded cluster). With etcd this waits until the
    /// scheduler is elected to lead.
    async fn keep_state(
        &self,
        config: &SchedulerConfig,
        active: &watch::Sender<Option<String>>,
    ) -> Result<(), SchedulerError> {
        let location = config
            .state
            .clone()
            .unwrap_or(durable::StateLocation::Memory);
        let address = config.advertise.as_deref().unwrap_or("unknown");
        let opened = durable::open(
            &location,
            &config.state_dir,
            address,
            config.leader_lease,
            active,
        )
        .await?;
        if let Some((store, leadership)) = opened {
            if let Some(leadership) = leadership {
                let _ = self.inner.leadership.set(leadership);
            }
            self.resume(store, config.recovery_grace)?;
        }
        Ok(())
    }

    /// Completes when this scheduler lost the leadership it was elected to (its etcd
    /// lease expired): it must stop, since another may lead now. Never completes for a
    /// scheduler that does not share its state.
    pub async fn leadership_lost(&self) {
        match self.inner.leadership.get() {
            Some(leadership) => {
                let mut lost = leadership.lost.clone();
                let _ = lost.wait_for(|lost| *lost).await;
            }
            None => std::future::pending().await,
        }
    }

    /// Takes back the queries `store` kept and records every change in it from now on:
    /// ended queries answer status (and a succeeded one's result, while it is held),
    /// unfinished ones run on from their finished tasks. After `grace`, executors that
    /// held their output and did not register again are taken as lost.
    fn resume(
        &self,
        mut store: Box<dyn durable::StateStore>,
        grace: Duration,
    ) -> Result<(), SchedulerError> {
        let started = std::time::Instant::now();
        let stored = store.load()?;
        let mut tasks: std::collections::HashMap<String, Vec<crate::proto::StoredTask>> =
            std::collections::HashMap::new();
        for task in stored.tasks {
            tasks.entry(task.query_id.clone()).or_default().push(task);
        }
        let (mut resumed, mut ended, mut reused) = (0u64, 0u64, 0usize);
        let mut state = self.state();
        state.set_journal(durable::Journal::start(store));
        for record in stored.queries {
            let was_ended = record.end_state != QueryState::Unspecified as i32;
            let (id, label, owner, seq) = (
                record.query_id.clone(),
                record.label.clone(),
                record.owner.clone(),
                record.seq,
            );
            let finished = tasks.remove(&id).unwrap_or_default();
            let count = finished.len();
            let query = match Query::restore(record, finished) {
                Ok(query) => query,
                Err(error) => {
                    tracing::warn!(query_id = %id, %error, "stored query could not be resumed; it fails");
                    let mut failed = Query::failed(
                        id.as_str().into(),
                        label,
                        format!("the restarted scheduler could not resume it: {error}"),
                    );
                    failed.owner = owner.as_str().into();
                    failed.seq = seq;
                    state.restore_query(failed, false);
                    continue;
                }
            };
            if was_ended {
                ended += 1;
            } else {
                resumed += 1;
                reused += count;
            }
            state.restore_query(query, was_ended);
        }
        state.start_recovery();
        drop(state);
        metrics::counter!("baton_queries_resumed_total").increment(resumed);
        metrics::counter!("baton_recovered_tasks_total").increment(reused as u64);
        tracing::info!(
            resumed,
            ended,
            reused_tasks = reused,
            seconds = started.elapsed().as_secs_f64(),
            "scheduler state restored"
        );
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if let Some(inner) = weak.upgrade() {
                Scheduler { inner }.state().forget_absent_executors();
            }
        });
        Ok(())
    }

    /// A scheduler that plans SQL in `session` (its catalog ignored) as `config` says,
    /// with authentication and TLS off.
    pub async fn with_session(
        session: SessionContext,
        config: &SchedulerConfig,
    ) -> Result<Self, SchedulerError> {
        let open = SchedulerSecurity {
            auth: Authenticator::open(),
            server_tls: None,
            dialer: Dialer::plain(),
        };
        let scheduler = Self::build(session, config, S3Settings::default(), Vec::new(), open);
        scheduler
            .keep_state(config, &watch::Sender::new(None))
            .await?;
        Ok(scheduler)
    }

    /// A scheduler that plans SQL in `session`, tells executors to read `s3://` tables
    /// with `stores`, and runs client plans that read only the data of `tables`.
    fn build(
        session: SessionContext,
        config: &SchedulerConfig,
        stores: S3Settings,
        tables: Vec<String>,
        security: SchedulerSecurity,
    ) -> Self {
        crate::telemetry::recorder();
        let (tx, rx) = watch::channel(ClusterSize::default());
        let mut state = SchedulerState::new(tx, config.policy.build(config.aging_half_life));
        state.set_preempt_cost_ratio(config.preempt_cost_ratio);
        state.set_inline_result_limit(config.inline_result_bytes);
        state.set_max_running_queries(config.max_running_queries);
        state.set_held_results_cap(usize::try_from(config.held_results_cap).unwrap_or(usize::MAX));
        state.set_slow_factor(config.slow_executor_factor);
        state.set_copy_rule(CopyRule {
            speculation: config.speculation == Switch::On,
            multiple: config.speculation_multiple,
            min_runtime: config.speculation_min_runtime,
            stealing: config.work_stealing == Switch::On,
            ..CopyRule::default()
        });
        let scheduler = Self {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                sessions: Sessions::new(session.clone()),
                planner: Planner {
                    session,
                    pool: PlanningPool::per_core(),
                    partition_data_bytes: config.partition_data_bytes,
                    split_unit_bytes: config.split_unit_bytes,
                    partitions: config.target_partitions,
                    guard: guard::Guard {
                        allow_ddl: config.allow_ddl,
                        prefixes: config.data_prefixes.clone(),
                        tables,
                    },
                    cluster: rx.clone(),
                    join_filters: config.join_filters == Switch::On,
                },
                executors: rx,
                clients: FlightClients::default().with_dialer(security.dialer),
                auth: Arc::new(security.auth),
                server_tls: security.server_tls,
                result_ttl: config.result_ttl,
                object_stores: stores,
                draining: std::sync::atomic::AtomicBool::new(false),
                leadership: std::sync::OnceLock::new(),
                max_request_bytes: usize::try_from(config.max_request_bytes).unwrap_or(usize::MAX),
            }),
        };
        if config.speculation == Switch::On || config.work_stealing == Switch::On {
            scheduler.start_copy_timer();
        }
        scheduler
    }

    /// Every [`COPY_CHECK`], starts copies of the running tasks that earn one (see
    /// [`CopyRule`]); stops with the scheduler.
    fn start_copy_timer(&self) {
        // Exported at 0 from the start, so that their rates read 0 rather than nothing.
        for reason in [query::CopyReason::Straggler, query::CopyReason::Suspended] {
            metrics::counter!("baton_task_copies_total", "reason" => reason.label()).increment(0);
        }
        metrics::counter!("baton_task_copies_won_total").increment(0);
        metrics::gauge!("baton_executors_on_probation").set(0.0);
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(COPY_CHECK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                Scheduler { inner }
                    .state()
                    .start_copies(std::time::Instant::now());
            }
        });
    }

    /// Stops taking new queries (SIGTERM): those submitted already run on, and
    /// [`Scheduler::drained`] says when they have ended and their results were fetched.
    pub fn drain(&self) {
        tracing::info!("draining: no new queries");
        self.inner
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// True once [`Scheduler::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.inner
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// True when no query is queued or running and every result was fetched or freed.
    pub fn drained(&self) -> bool {
        self.state().is_idle()
    }

    /// The object store settings executors get when they register.
    pub fn object_stores(&self) -> &S3Settings {
        &self.inner.object_stores
    }

    /// The clients' sessions.
    pub fn sessions(&self) -> &Sessions {
        &self.inner.sessions
    }

    /// The session of the scheduler's catalog (sessions layer their own over it).
    pub fn session(&self) -> &SessionContext {
        &self.inner.planner.session
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SchedulerState> {
        self.inner.state.lock().expect("scheduler state lock")
    }

    /// Who may call this scheduler.
    pub fn authenticator(&self) -> &Arc<Authenticator> {
        &self.inner.auth
    }

    /// Plans (SQL in the session `origin` names) and starts a query; returns its id once
    /// it is planned. A query that cannot be planned is recorded as Failed with the
    /// cause. A draining scheduler takes none.
    pub async fn submit(
        &self,
        submission: Submission,
        label: String,
        origin: Origin,
    ) -> Result<Arc<str>, SchedulerError> {
        if self.is_draining() {
            return Err(SchedulerError::ShuttingDown);
        }
        let id: Arc<str> = uuid::Uuid::new_v4().simple().to_string()[..16].into();
        let span = info_span!("plan", query_id = %id);
        let started = std::time::Instant::now();
        let session = self.inner.sessions.context(&origin);
        let query = match self.inner.planner.plan(submission, session).await {
            Ok(planned) => {
                let micros = started.elapsed().as_micros() as u64;
                tracing::debug!(query_id = %id, micros, "query planned");
                match planned.answer {
                    Some((ipc, operators)) => {
                        Query::answered(id.clone(), label, planned.schema, ipc, operators)
                    }
                    None => {
                        let mut query =
                            Query::new(id.clone(), label, planned.stages, planned.schema);
                        query.settings = planned.settings.into_iter().collect();
                        query
                    }
                }
            }
            Err(e) => {
                let _enter = span.enter();
                tracing::info!(error = %e, "query failed to plan");
                Query::failed(id.clone(), label, e.to_string())
            }
        };
        let mut query = query;
        query.owner = origin.owner;
        self.add(query);
        self.written(&id).await?;
        Ok(id)
    }

    /// Waits until the journal wrote query `id` (at once without a durable state): a
    /// scheduler that restarts after this runs it. A query that cannot be written is
    /// cancelled, and the error is the submit's answer.
    async fn written(&self, id: &str) -> Result<(), SchedulerError> {
        let flushed = self.state().journal().map(durable::Journal::flushed);
        let Some(flushed) = flushed else {
            return Ok(());
        };
        if let Err(e) = flushed.await.unwrap_or(Err(durable::StateError::Stopped)) {
            let _ = self.cancel(id);
            return Err(e.into());
        }
        Ok(())
    }

    /// Starts a query and arranges for its result to expire after the time to live.
    fn add(&self, query: Query) {
        let id = query.id.clone();
        let mut ended = self.state().add_query(query);
        // A weak handle: a pending expiry does not keep a stopped scheduler alive.
        let weak = Arc::downgrade(&self.inner);
        let ttl = self.inner.result_ttl;
        tokio::spawn(async move {
            let Ok(state) = ended.wait_for(|s| is_final(*s)).await.map(|s| *s) else {
                return;
            };
            if state == QueryState::Succeeded {
                tokio::time::sleep(ttl).await;
                if let Some(inner) = weak.upgrade() {
                    let scheduler = Scheduler { inner };
                    scheduler.state().release_results(&id, "expired");
                }
            }
        });
    }

    /// The result schema and the parameter schema (`$1`, `$2`, …) of `sql`, planned in
    /// `origin`'s session but not run (a prepared statement's description).
    pub async fn describe(
        &self,
        sql: &str,
        origin: &Origin,
    ) -> Result<(SchemaRef, SchemaRef), SchedulerError> {
        let session = self.inner.sessions.context(origin);
        let invalid = |e: &dyn std::fmt::Display| SchedulerError::Invalid(e.to_string());
        let plan = session
            .state()
            .create_logical_plan(sql)
            .await
            .map_err(|e| invalid(&e))?;
        self.inner
            .planner
            .guard
            .check_sql(&plan)
            .map_err(|e| invalid(&e))?;
        let parameters = prepared::parameter_schema(&plan).map_err(|e| invalid(&e))?;
        Ok((Arc::new(plan.schema().as_arrow().clone()), parameters))
    }

    /// A query's status.
    pub fn status(&self, query_id: &str) -> Option<QueryStatus> {
        self.state().query(query_id).map(Query::status)
    }

    /// Every query's status, newest first.
    pub fn list(&self) -> Vec<QueryStatus> {
        self.state().queries().map(Query::status).collect()
    }

    /// The status of every query `caller` may see, newest first.
    pub fn list_for(&self, caller: &Caller) -> Vec<QueryStatus> {
        self.state()
            .queries()
            .filter(|q| caller.may_access(&q.owner))
            .map(Query::status)
            .collect()
    }

    /// Refuses `caller` a query they did not submit (unless they administer the
    /// cluster), and a query that does not exist.
    pub fn check_access(&self, caller: &Caller, query_id: &str) -> Result<(), SchedulerError> {
        let state = self.state();
        let query = state
            .query(query_id)
            .ok_or_else(|| SchedulerError::UnknownQuery(query_id.to_string()))?;
        if caller.may_access(&query.owner) {
            Ok(())
        } else {
            Err(SchedulerError::NotYours(query_id.to_string()))
        }
    }

    /// Cancels a query; false when it had already ended.
    pub fn cancel(&self, query_id: &str) -> Result<bool, SchedulerError> {
        self.state()
            .cancel(query_id)
            .ok_or_else(|| SchedulerError::UnknownQuery(query_id.to_string()))
    }

    /// Gives a query up for its client: cancels it while it runs, frees its result once
    /// it succeeded; false when there was nothing left to do.
    pub fn abandon(&self, query_id: &str) -> Result<bool, SchedulerError> {
        if self.cancel(query_id)? {
            return Ok(true);
        }
        let mut state = self.state();
        let held = state
            .query(query_id)
            .is_some_and(|q| q.state() == QueryState::Succeeded && q.results_released.is_none());
        if held {
            state.release_results(query_id, "cancelled");
        }
        Ok(held)
    }

    /// Waits until the query ends and returns how it ended.
    pub async fn wait(&self, query_id: &str) -> Result<QueryState, SchedulerError> {
        let mut rx = self
            .state()
            .watch(query_id)
            .ok_or_else(|| SchedulerError::UnknownQuery(query_id.to_string()))?;
        let state = rx
            .wait_for(|s| is_final(*s))
            .await
            .map(|s| *s)
            .unwrap_or(QueryState::Failed);
        Ok(state)
    }

    /// Waits for the query to end; on success returns the result schema and the final
    /// stage's partitions (where they live, or themselves), in partition order.
    pub async fn wait_for_result(
        &self,
        query_id: &str,
    ) -> Result<(SchemaRef, Vec<ResultPart>, u32), SchedulerError> {
        let state = self.wait(query_id).await?;
        let guard = self.state();
        let query = guard
            .query(query_id)
            .ok_or_else(|| SchedulerError::UnknownQuery(query_id.to_string()))?;
        match (state, &query.schema) {
            (QueryState::Succeeded, Some(_)) if query.results_released.is_some() => {
                Err(SchedulerError::NoResult {
                    id: query_id.to_string(),
                    state: "succeeded",
                    error: format!(
                        "its result was already {} and freed",
                        query.results_released.unwrap_or("released")
                    ),
                })
            }
            (QueryState::Succeeded, Some(schema)) => {
                Ok((schema.clone(), query.result_parts(), query.final_stage()))
            }
            _ => Err(SchedulerError::NoResult {
                id: query_id.to_string(),
                state: query_state_name(query.state()),
                error: query.error().unwrap_or("no result").to_string(),
            }),
        }
    }

    /// Like [`Self::wait_for_result`], for a client waiting on its query: when the wait
    /// is dropped before the query ended (the client disconnected), the query is
    /// cancelled, since nobody is left to fetch its result.
    pub async fn wait_for_result_attended(
        &self,
        query_id: &str,
    ) -> Result<(SchemaRef, Vec<ResultPart>, u32), SchedulerError> {
        /// Cancels the query when dropped armed.
        struct CancelOnDrop<'a> {
            scheduler: &'a Scheduler,
            query_id: &'a str,
            armed: bool,
        }
        impl Drop for CancelOnDrop<'_> {
            fn drop(&mut self) {
                if self.armed && self.scheduler.cancel(self.query_id).unwrap_or(false) {
                    tracing::info!(
                        query_id = self.query_id,
                        "client went away; query cancelled"
                    );
                }
            }
        }
        let mut guard = CancelOnDrop {
            scheduler: self,
            query_id,
            armed: true,
        };
        let result = self.wait_for_result(query_id).await;
        guard.armed = false;
        result
    }

    /// Frees a query's result partitions on the executors once its result was fetched.
    pub fn results_fetched(&self, query_id: &str) {
        self.state().release_results(query_id, "fetched");
    }

    /// Waits until at least `n` executors are connected.
    pub async fn wait_for_executors(&self, n: usize) {
        let mut rx = self.inner.executors.clone();
        let _ = rx.wait_for(|size| size.executors >= n).await;
    }

    /// The JSON answer of the HTTP API below `/api/queries` for `caller`: `""` lists
    /// the queries they may see, `"/ID"` shows one; None when there is no such query or
    /// it is not theirs.
    pub fn status_json(&self, path: &str, caller: &Caller) -> Option<String> {
        let id = path.trim_matches('/');
        let value = if id.is_empty() {
            serde_json::Value::Array(self.list_for(caller).iter().map(status_to_json).collect())
        } else {
            self.check_access(caller, id).ok()?;
            status_to_json(&self.status(id)?)
        };
        Some(value.to_string())
    }

    /// The HTTP JSON API below `/api/queries`, for the caller the request's
    /// `Authorization` header names (401 without valid credentials).
    pub fn queries_api(&self) -> JsonRoute {
        let scheduler = self.clone();
        Arc::new(move |path: &str, authorization: Option<&str>| {
            match scheduler.inner.auth.authenticate(authorization) {
                Ok(caller) => match scheduler.status_json(path, &caller) {
                    Some(body) => JsonAnswer::ok(body),
                    None => JsonAnswer::error("404 Not Found", "not found"),
                },
                Err(e) => JsonAnswer::error("401 Unauthorized", &e.to_string()),
            }
        })
    }

    /// Finished tasks that started at or after `since` (for timelines).
    pub fn timeline(&self, since: std::time::Instant) -> Vec<TaskSpan> {
        self.state().timeline(since)
    }

    /// Submits a query already cut into stages (benchmarks of the scheduler itself);
    /// returns its id once it is written, like [`Self::submit`].
    pub async fn submit_stages(
        &self,
        label: String,
        stages: Vec<StageSpec>,
        schema: SchemaRef,
    ) -> Result<Arc<str>, SchedulerError> {
        let id: Arc<str> = uuid::Uuid::new_v4().simple().to_string()[..16].into();
        self.add(Query::new(id.clone(), label, stages, schema));
        self.written(&id).await?;
        Ok(id)
    }

    /// Connected executors and their (total, busy) slots.
    pub fn executors(&self) -> (usize, (u32, u32)) {
        let state = self.state();
        (state.registry().len(), state.registry().slots())
    }

    /// The server of the scheduler gRPC service and the Flight result endpoint on
    /// `listener`, which runs until `shutdown` completes. Without authentication, a
    /// listener on a non-loopback address is refused.
    pub fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<impl Future<Output = Result<(), SchedulerError>> + Send + 'static, SchedulerError>
    {
        let address = listener.local_addr().map_err(|e| {
            SchedulerError::Security(SecurityError::Tls(format!("listener address: {e}")))
        })?;
        self.serve_incoming(address, crate::net::incoming(listener), shutdown)
    }

    /// [`Self::serve`] on the connections of `incoming`, accepted on `address`.
    pub fn serve_incoming(
        &self,
        address: std::net::SocketAddr,
        incoming: impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> + Send + 'static,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<impl Future<Output = Result<(), SchedulerError>> + Send + 'static, SchedulerError>
    {
        crate::security::check_exposure(address, self.inner.auth.is_on())?;
        let authenticate = Authenticate(self.inner.auth.clone());
        let limit = self.inner.max_request_bytes;
        let grpc = SchedulerServiceServer::new(service::SchedulerGrpc::new(self.clone()))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let flight = FlightServiceServer::new(flight::ResultFlight::new(self.clone()))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let mut builder = crate::config::server_builder();
        if let Some(tls) = &self.inner.server_tls {
            builder = builder.tls_config(tls.clone())?;
        }
        let router = builder
            .add_service(InterceptedService::new(grpc, authenticate.clone()))
            .add_service(InterceptedService::new(flight, authenticate));
        let scheduler = self.clone();
        // The executors' streams never end by themselves: once the shutdown signal came,
        // they are closed, so the server's graceful stop does not wait on them forever
        // (each executor then looks for a scheduler to register with again).
        let shutdown = async move {
            shutdown.await;
            scheduler.state().close_executor_streams();
        };
        Ok(async move {
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await?;
            Ok(())
        })
    }
}
