//! The client side: submitting queries, fetching results over Flight, status and cancel,
//! and printing results for the CLI.

pub mod bench;
mod format;

pub use format::{OutputFormat, ResultWriter, TABLE_ROW_LIMIT, Written};

use arrow_flight::HandshakeRequest;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::CommandGetTables;
use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::ipc::convert::try_schema_from_ipc_buffer;
use futures::TryStreamExt;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::ClientTlsConfig;

use crate::config::MAX_MESSAGE_BYTES;
use crate::ipc_types::{conform, declared_schema};
use crate::proto::scheduler_service_client::SchedulerServiceClient;
use crate::proto::{
    CancelQueryRequest, GetQueryStatusRequest, ListQueriesRequest, QueryStatus, SubmitQueryRequest,
    submit_query_request,
};
use crate::scheduler::standby::active_of;
use crate::security::{Connection, Dialer, SecurityError, client_trusting, strip_scheme};
use crate::shuffle::fetch::flight_client;

/// Errors a client sees.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The scheduler could not be reached.
    #[error("cannot reach the scheduler at {addr}: {source}")]
    Connect {
        /// The address.
        addr: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
    /// A call to the scheduler failed.
    #[error("{}", .0.message())]
    Rpc(#[from] tonic::Status),
    /// The query failed or was cancelled; the text is the cause.
    #[error("{0}")]
    Query(String),
    /// The login or TLS settings are unusable.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// The connection to the scheduler broke (it restarted, or a standby took over),
    /// and no scheduler answered again in time.
    #[error("lost the scheduler: {0}")]
    Disconnected(String),
    /// A standby scheduler refused the call; the active one is at this address (empty
    /// when the standby knew none).
    #[error("the scheduler stands by (active scheduler: {0:?})")]
    Redirected(String),
}

impl ClientError {
    /// The gRPC code of a refused call (`Unauthenticated`, `PermissionDenied`, …).
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Self::Rpc(status) => Some(status.code()),
            _ => None,
        }
    }
}

/// The credential a client logs in with.
#[derive(Debug, Clone, Default)]
pub enum Credential {
    /// None (a scheduler without authentication).
    #[default]
    Anonymous,
    /// A user's name and password: the client logs in with a Flight SQL handshake and
    /// sends the token it answers with every call.
    Password {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
    /// A bearer token sent with every call (the cluster secret of in-process tools).
    Token(String),
}

/// How a client reaches a scheduler and who it logs in as.
#[derive(Debug, Clone, Default)]
pub struct Login {
    /// TLS as this says (trusting the cluster's CA), when Some.
    pub tls: Option<ClientTlsConfig>,
    /// Who it is.
    pub credential: Credential,
}

impl Login {
    /// `user` with `password`, over TLS trusting the CA certificate at `tls_ca` when
    /// given.
    pub fn password(
        user: &str,
        password: &str,
        tls_ca: Option<&std::path::Path>,
    ) -> Result<Self, SecurityError> {
        Ok(Self {
            tls: tls_ca.map(client_trusting).transpose()?,
            credential: Credential::Password {
                user: user.to_string(),
                password: password.to_string(),
            },
        })
    }
}

/// A finished query's result.
#[derive(Debug)]
pub struct QueryResult {
    /// The query id.
    pub query_id: String,
    /// The result schema.
    pub schema: SchemaRef,
    /// The result batches, in order.
    pub batches: Vec<RecordBatch>,
}

impl QueryResult {
    /// Total rows.
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// How long a client that lost its scheduler tries to reach one again (it restarts, or
/// a standby takes over) before the call fails.
const FAILOVER_PATIENCE: Duration = Duration::from_secs(60);

/// Times one call re-attaches to a query after losing the scheduler.
const MAX_REATTACHES: u32 = 5;

/// How often one call follows a standby to the active scheduler it names, at most:
/// with [`FOLLOW_PAUSE`], longer than a standby takes to see an expired leader's lease.
const MAX_FOLLOWS: u32 = 120;

/// The pause before following a name that a standby gave twice in a row.
const FOLLOW_PAUSE: Duration = Duration::from_millis(250);

/// What one call did to reach the active scheduler again: re-attaches after a broken
/// connection, and standbys' refusals followed.
#[derive(Debug, Default)]
struct Attempts {
    reattached: u32,
    followed: u32,
}

/// A connection to a Baton scheduler (gRPC API and Flight results on one address).
///
/// When the connection breaks while it waits for a query's result or status, it dials
/// the scheduler addresses again until one answers (a restarted scheduler, or the
/// standby that took over) and re-attaches to the query by its id; it never submits a
/// query twice.
#[derive(Debug, Clone)]
pub struct BatonClient {
    scheduler: SchedulerServiceClient<Connection>,
    flight: FlightServiceClient<Connection>,
    /// The session this client's SQL runs in (its `SET`s, its views).
    session: String,
    /// Every scheduler address it may dial, and how it logs in.
    addresses: Vec<String>,
    login: Login,
}

impl BatonClient {
    /// Connects to the scheduler at `address` (host:port) without credentials or TLS.
    pub async fn connect(address: &str) -> Result<Self, ClientError> {
        Self::connect_as(address, &Login::default()).await
    }

    /// Connects to the scheduler at `address` (host:port, or several separated by
    /// commas: a scheduler and its standbys) and logs in as `login` says.
    pub async fn connect_as(address: &str, login: &Login) -> Result<Self, ClientError> {
        let addresses: Vec<String> = address
            .split(',')
            .map(|a| strip_scheme(a.trim()).to_string())
            .filter(|a| !a.is_empty())
            .collect();
        let channel = dial_any(&addresses, login).await?;
        Ok(Self {
            scheduler: SchedulerServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            flight: flight_client(channel),
            session: uuid::Uuid::new_v4().simple().to_string(),
            addresses,
            login: login.clone(),
        })
    }

    /// Dials the scheduler addresses until one answers, for up to [`FAILOVER_PATIENCE`].
    async fn reconnect(&mut self) -> Result<(), ClientError> {
        let deadline = tokio::time::Instant::now() + FAILOVER_PATIENCE;
        let mut backoff = Duration::from_millis(50);
        loop {
            match dial_any(&self.addresses, &self.login).await {
                Ok(channel) => {
                    self.scheduler = SchedulerServiceClient::new(channel.clone())
                        .max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(MAX_MESSAGE_BYTES);
                    self.flight = flight_client(channel);
                    tracing::info!("connected to the scheduler again");
                    return Ok(());
                }
                Err(e) if tokio::time::Instant::now() + backoff > deadline => {
                    return Err(ClientError::Disconnected(e.to_string()));
                }
                Err(e) => tracing::debug!(error = %e, "no scheduler answers yet; retrying"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Whether a call that failed with `error` is to be made again: the connection
    /// broke or a standby named the active scheduler, fewer than [`MAX_REATTACHES`]
    /// re-attaches were made, and a scheduler answers again; an error when none does.
    async fn reattach(
        &mut self,
        error: ClientError,
        attempts: &mut Attempts,
    ) -> Result<(), ClientError> {
        match error {
            ClientError::Disconnected(cause) if attempts.reattached < MAX_REATTACHES => {
                tracing::warn!(%cause, "lost the scheduler; re-attaching");
                attempts.reattached += 1;
                self.reconnect().await
            }
            other => self.follow(other, &mut attempts.followed).await,
        }
    }

    /// Whether a call that failed with `error` is to be made again because a standby
    /// refused it (the standby did nothing, so even a submit may be made again): connects
    /// to the active scheduler it named first from now on. A standby names the scheduler
    /// that led until its lease expires, so one named again (it could not be reached),
    /// or none named (none leads yet), is waited for, [`FOLLOW_PAUSE`] at a time, up to
    /// [`MAX_FOLLOWS`] times.
    async fn follow(&mut self, error: ClientError, followed: &mut u32) -> Result<(), ClientError> {
        match error {
            ClientError::Redirected(active) if *followed < MAX_FOLLOWS => {
                tracing::info!(%active, "a standby answered; going to the active scheduler");
                *followed += 1;
                if active.is_empty() || self.addresses.first() == Some(&active) {
                    tokio::time::sleep(FOLLOW_PAUSE).await;
                }
                if !active.is_empty() {
                    self.addresses.retain(|a| *a != active);
                    self.addresses.insert(0, active);
                }
                self.reconnect().await
            }
            other => Err(other),
        }
    }

    /// Submits SQL; returns the query id.
    pub async fn submit_sql(&mut self, sql: &str) -> Result<String, ClientError> {
        self.submit(
            submit_query_request::Query::Sql(sql.to_string()),
            String::new(),
        )
        .await
    }

    /// Submits a physical plan the caller serialized with [`crate::planner::encode_plan`].
    pub async fn submit_plan(&mut self, plan: Vec<u8>, label: &str) -> Result<String, ClientError> {
        self.submit(
            submit_query_request::Query::PhysicalPlan(plan),
            label.to_string(),
        )
        .await
    }

    async fn submit(
        &mut self,
        query: submit_query_request::Query,
        label: String,
    ) -> Result<String, ClientError> {
        let request = SubmitQueryRequest {
            query: Some(query),
            label,
            session_id: self.session.clone(),
        };
        let mut followed = 0;
        loop {
            match self.scheduler.submit_query(request.clone()).await {
                Ok(response) => return Ok(response.into_inner().query_id),
                Err(status) => self.follow(refused(status), &mut followed).await?,
            }
        }
    }

    /// Waits for the query and streams its result batches as written over Flight (see
    /// [`crate::ipc_types`]; [`Self::fetch`] and [`Self::fetch_each`] give them their
    /// declared types). A broken connection is [`ClientError::Disconnected`]; those two
    /// re-attach.
    pub async fn result_stream(
        &mut self,
        query_id: &str,
    ) -> Result<FlightRecordBatchStream, ClientError> {
        let ticket = crate::scheduler::result_ticket(query_id);
        let response = self.flight.do_get(ticket).await.map_err(query_error)?;
        let data = response.into_inner().map_err(FlightError::from);
        Ok(FlightRecordBatchStream::new_from_flight_data(data))
    }

    /// Waits for the query and hands each result batch to `each` as it arrives, so the
    /// result is never held whole here; returns the result's schema. When the scheduler
    /// goes away before the first batch, it re-attaches to the query.
    pub async fn fetch_each<E: From<ClientError>>(
        &mut self,
        query_id: &str,
        mut each: impl FnMut(&RecordBatch) -> Result<(), E>,
    ) -> Result<SchemaRef, E> {
        let mut attempts = Attempts::default();
        let mut stream = loop {
            let failure = match self.result_stream(query_id).await {
                Ok(mut stream) => match stream.try_next().await.map_err(flight_error) {
                    Ok(first) => break (stream, first),
                    Err(e) => e,
                },
                Err(e) => e,
            };
            self.reattach(failure, &mut attempts).await?;
        };
        let (stream, mut next) = (&mut stream.0, stream.1);
        while let Some(batch) = next {
            each(&as_declared(batch)?)?;
            next = stream.try_next().await.map_err(flight_error)?;
        }
        Ok(result_schema(stream))
    }

    /// Waits for the query and collects its result; when the scheduler goes away, it
    /// re-attaches to the query and fetches the result again.
    pub async fn fetch(&mut self, query_id: &str) -> Result<QueryResult, ClientError> {
        let mut attempts = Attempts::default();
        loop {
            match self.fetch_once(query_id).await {
                Err(e) => self.reattach(e, &mut attempts).await?,
                done => return done,
            }
        }
    }

    /// One attempt of [`Self::fetch`].
    async fn fetch_once(&mut self, query_id: &str) -> Result<QueryResult, ClientError> {
        let mut batches = Vec::new();
        let mut stream = self.result_stream(query_id).await?;
        while let Some(batch) = stream.try_next().await.map_err(flight_error)? {
            batches.push(as_declared(batch)?);
        }
        let schema = result_schema(&stream);
        Ok(QueryResult {
            query_id: query_id.to_string(),
            schema,
            batches,
        })
    }

    /// Submits SQL and collects its result.
    pub async fn sql(&mut self, sql: &str) -> Result<QueryResult, ClientError> {
        let id = self.submit_sql(sql).await?;
        self.fetch(&id).await
    }

    /// A query's status (re-attaching when the scheduler went away).
    pub async fn status(&mut self, query_id: &str) -> Result<QueryStatus, ClientError> {
        let mut attempts = Attempts::default();
        loop {
            let request = GetQueryStatusRequest {
                query_id: query_id.to_string(),
            };
            let failure = match self.scheduler.get_query_status(request).await {
                Ok(status) => return Ok(status.into_inner()),
                Err(status) => rpc_error(status),
            };
            self.reattach(failure, &mut attempts).await?;
        }
    }

    /// Every query the scheduler knows, newest first (re-attaching when the scheduler
    /// went away).
    pub async fn list(&mut self) -> Result<Vec<QueryStatus>, ClientError> {
        let mut attempts = Attempts::default();
        loop {
            let failure = match self.scheduler.list_queries(ListQueriesRequest {}).await {
                Ok(list) => return Ok(list.into_inner().queries),
                Err(status) => rpc_error(status),
            };
            self.reattach(failure, &mut attempts).await?;
        }
    }

    /// Tables of the scheduler's catalog and their schemas, over Flight SQL
    /// `CommandGetTables`; only `name` when given.
    pub async fn tables(
        &mut self,
        name: Option<&str>,
    ) -> Result<Vec<(String, SchemaRef)>, ClientError> {
        let mut followed = 0;
        loop {
            match self.tables_once(name).await {
                Err(e) => self.follow(e, &mut followed).await?,
                done => return done,
            }
        }
    }

    /// One attempt of [`Self::tables`].
    async fn tables_once(
        &mut self,
        name: Option<&str>,
    ) -> Result<Vec<(String, SchemaRef)>, ClientError> {
        let mut sql = FlightSqlServiceClient::new_from_inner(self.flight.clone());
        let info = sql
            .get_tables(CommandGetTables {
                table_name_filter_pattern: name.map(str::to_string),
                include_schema: true,
                ..Default::default()
            })
            .await
            .map_err(flight_error)?;
        let mut tables = Vec::new();
        for endpoint in info.endpoint {
            let Some(ticket) = endpoint.ticket else {
                continue;
            };
            let batches: Vec<RecordBatch> = sql
                .do_get(ticket)
                .await
                .map_err(flight_error)?
                .try_collect()
                .await
                .map_err(flight_error)?;
            for batch in batches {
                let names = batch
                    .column_by_name("table_name")
                    .and_then(|c| c.as_string_opt::<i32>().cloned());
                let schemas = batch
                    .column_by_name("table_schema")
                    .and_then(|c| c.as_binary_opt::<i32>().cloned());
                let (Some(names), Some(schemas)) = (names, schemas) else {
                    return Err(ClientError::Query("malformed GetTables answer".into()));
                };
                for row in 0..batch.num_rows() {
                    let schema = try_schema_from_ipc_buffer(schemas.value(row))
                        .map_err(|e| ClientError::Query(e.to_string()))?;
                    tables.push((names.value(row).to_string(), Arc::new(schema)));
                }
            }
        }
        Ok(tables)
    }

    /// Cancels a query; false when it had already ended.
    pub async fn cancel(&mut self, query_id: &str) -> Result<bool, ClientError> {
        let mut followed = 0;
        loop {
            let request = CancelQueryRequest {
                query_id: query_id.to_string(),
            };
            match self.scheduler.cancel_query(request).await {
                Ok(answer) => return Ok(answer.into_inner().cancelled),
                Err(status) => self.follow(refused(status), &mut followed).await?,
            }
        }
    }
}

/// A result batch as read, with the column types its query declared.
fn as_declared(batch: RecordBatch) -> Result<RecordBatch, ClientError> {
    let declared = declared_schema(batch.schema_ref());
    conform(batch, &declared).map_err(|e| ClientError::Query(format!("result batch: {e}")))
}

/// The declared schema of a result stream that ended (empty if it sent none).
fn result_schema(stream: &FlightRecordBatchStream) -> SchemaRef {
    stream
        .schema()
        .map(declared_schema)
        .unwrap_or_else(|| Arc::new(Schema::empty()))
}

fn flight_error(e: FlightError) -> ClientError {
    match e {
        FlightError::Tonic(status) => query_error(*status),
        other => ClientError::Query(other.to_string()),
    }
}

/// A failed result fetch: refusals keep their code, a broken connection is
/// [`ClientError::Disconnected`], anything else is the query's failure.
fn query_error(status: tonic::Status) -> ClientError {
    if let Some(active) = active_of(&status) {
        return ClientError::Redirected(active);
    }
    match status.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => ClientError::Rpc(status),
        _ if is_disconnect(&status) => ClientError::Disconnected(status.message().to_string()),
        _ => ClientError::Query(status.message().to_string()),
    }
}

/// A failed call to the scheduler service: a broken connection is
/// [`ClientError::Disconnected`], anything else the scheduler's answer.
fn rpc_error(status: tonic::Status) -> ClientError {
    if let Some(active) = active_of(&status) {
        ClientError::Redirected(active)
    } else if is_disconnect(&status) {
        ClientError::Disconnected(status.message().to_string())
    } else {
        ClientError::Rpc(status)
    }
}

/// A refused call: a standby's names the active scheduler, any other keeps its status.
fn refused(status: tonic::Status) -> ClientError {
    match active_of(&status) {
        Some(active) => ClientError::Redirected(active),
        None => ClientError::Rpc(status),
    }
}

/// Whether a call failed because the connection to the scheduler broke or could not be
/// made, rather than by the scheduler's answer.
fn is_disconnect(status: &tonic::Status) -> bool {
    use std::error::Error;
    if status.code() == tonic::Code::Unavailable {
        return true;
    }
    // A response stream cut mid-way: the cause is the HTTP/2 or transport error below.
    let mut source = status.source();
    while let Some(cause) = source {
        if cause.downcast_ref::<tonic::transport::Error>().is_some()
            || cause.downcast_ref::<hyper::Error>().is_some()
            || cause.downcast_ref::<std::io::Error>().is_some()
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// A connection to the first of `addresses` that answers, logged in as `login` says.
async fn dial_any(addresses: &[String], login: &Login) -> Result<Connection, ClientError> {
    let mut last = None;
    for address in addresses {
        match dial(address, login).await {
            Ok(connection) => return Ok(connection),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| ClientError::Query("no scheduler address given".into())))
}

/// A connection to the scheduler at `address`, logged in as `login` says (a password
/// login trades the password for a token with a Flight handshake).
async fn dial(address: &str, login: &Login) -> Result<Connection, ClientError> {
    let connect_error = |source| ClientError::Connect {
        addr: address.to_string(),
        source,
    };
    let dialer = Dialer::plain().with_tls(login.tls.clone());
    let dialer = match &login.credential {
        Credential::Anonymous => dialer,
        Credential::Token(token) => dialer.with_bearer(token)?,
        Credential::Password { user, password } => {
            let basic = dialer.clone().with_basic(user, password)?;
            let mut flight = flight_client(basic.connect(address).await.map_err(connect_error)?);
            let response = flight
                .handshake(futures::stream::iter([HandshakeRequest::default()]))
                .await?;
            let token = response
                .metadata()
                .get("authorization")
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "))
                .map(str::to_string);
            match token {
                Some(token) => dialer.with_bearer(&token)?,
                // A scheduler without authentication answers no token.
                None => dialer,
            }
        }
    };
    dialer.connect(address).await.map_err(connect_error)
}
