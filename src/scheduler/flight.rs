//! The scheduler's Arrow Flight endpoint: query results, spoken as Flight SQL so that
//! standard clients (ADBC, pyarrow, JDBC) connect to it as well as Baton's own client.
//!
//! - `CommandStatementQuery`: `get_flight_info` submits the SQL, waits for the query to
//!   end and answers its schema and a `TicketStatementQuery` whose handle is the query id;
//!   `do_get` on that ticket streams the final stage's partitions: small ones the
//!   executors sent back with their task status (Arrow IPC, see
//!   `RunTask.inline_result_limit`) from the scheduler's memory, the others from the
//!   executors that hold them, message by message, without decoding or buffering them
//!   (the schema is sent once; each executor stream's own schema message is dropped).
//!   The result is released once the response has taken its last message.
//! - Prepared statements: `CreatePreparedStatement` describes the SQL's result and its
//!   `$1`, `$2`, … parameters, `DoPut` binds a row of values, `get_flight_info` on
//!   `CommandPreparedStatementQuery` runs it as above, `ClosePreparedStatement` drops it.
//! - `CancelFlightInfo` cancels the query a FlightInfo describes, or frees its result.
//! - `Handshake` with HTTP Basic credentials answers a bearer token for later calls.
//! - `CommandGetCatalogs`, `CommandGetDbSchemas`, `CommandGetTables` (with schemas),
//!   `CommandGetTableTypes` and `CommandGetSqlInfo` describe the scheduler's catalog.
//!
//! Every call was authenticated before it got here; queries, results and prepared
//! statements answer only their owner (and admins).
//!
//! Baton's own client submits over gRPC and `do_get`s a `TicketStatementQuery` directly.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{
    Action, CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus, FlightData,
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage,
    SchemaAsIpc, Ticket,
};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::warn;

use super::prepared::{Prepared, PreparedError, PreparedStatements};
use super::{Origin, ResultPart, Scheduler, SchedulerError, Submission};
use crate::flight_service::{encode_batches, is_schema_message, schema_message};
use crate::ipc_types::ipc_schema;
use crate::security::caller_of;
use crate::shuffle::ShuffleKey;
use crate::shuffle::fetch::shuffle_ticket;

/// Table types the catalog reports.
const TABLE_TYPES: [&str; 2] = ["TABLE", "VIEW"];

type DataStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;

/// Serves query results and catalog metadata over Flight SQL.
pub struct ResultFlight {
    scheduler: Scheduler,
    sql_info: SqlInfoData,
    prepared: PreparedStatements,
}

impl std::fmt::Debug for ResultFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultFlight").finish_non_exhaustive()
    }
}

impl ResultFlight {
    /// A result endpoint for `scheduler`.
    pub fn new(scheduler: Scheduler) -> Self {
        let mut info = SqlInfoDataBuilder::new();
        info.append(SqlInfo::FlightSqlServerName, "Baton");
        info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        info.append(SqlInfo::FlightSqlServerArrowVersion, "59");
        info.append(SqlInfo::FlightSqlServerReadOnly, true);
        info.append(SqlInfo::FlightSqlServerSql, true);
        info.append(SqlInfo::FlightSqlServerSubstrait, false);
        info.append(SqlInfo::FlightSqlServerTransaction, 0i32);
        let sql_info = info.build().expect("static SqlInfo values are valid");
        Self {
            scheduler,
            sql_info,
            prepared: PreparedStatements::default(),
        }
    }
}

/// The Flight SQL ticket that streams query `query_id`'s result.
pub fn result_ticket(query_id: &str) -> Ticket {
    let ticket = TicketStatementQuery {
        statement_handle: query_id.as_bytes().to_vec().into(),
    };
    Ticket::new(ticket.as_any().encode_to_vec())
}

fn to_status(e: SchedulerError) -> Status {
    match e {
        SchedulerError::UnknownQuery(_) => Status::not_found(e.to_string()),
        SchedulerError::NoResult { .. } => Status::failed_precondition(e.to_string()),
        SchedulerError::ShuttingDown => Status::unavailable(e.to_string()),
        SchedulerError::NotYours(_) => Status::permission_denied(e.to_string()),
        SchedulerError::Invalid(_) => Status::invalid_argument(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

/// The header a Flight SQL client may name its session with (ADBC:
/// `adbc.flight.sql.rpc.call_header.x-baton-session`).
const SESSION_HEADER: &str = "x-baton-session";

/// Who calls, and in which session: the one `x-baton-session` names, else the one of
/// their login token (a Flight SQL connection's), else none.
fn origin_of<T>(request: &Request<T>) -> Result<Origin, Status> {
    let caller = caller_of(request)?;
    let header = |name: &str| {
        request
            .metadata()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    };
    let session = header(SESSION_HEADER).or_else(|| {
        header("authorization")
            .filter(|_| !caller.is_cluster())
            .and_then(|value| value.strip_prefix("Bearer ").map(str::to_string))
    });
    Ok(Origin {
        owner: caller.name,
        session,
    })
}

/// The Flight action that gives up a query a FlightInfo describes.
const CANCEL_FLIGHT_INFO: &str = "CancelFlightInfo";

/// The status of a refused prepared statement call.
fn prepared_status(e: PreparedError) -> Status {
    match e {
        PreparedError::Unknown => Status::not_found(e.to_string()),
        PreparedError::NotYours => Status::permission_denied(e.to_string()),
        PreparedError::Full => Status::resource_exhausted(e.to_string()),
        PreparedError::Parameters(_) => Status::invalid_argument(e.to_string()),
    }
}

/// A prepared statement handle as text.
fn handle_of(handle: &[u8]) -> Result<String, Status> {
    String::from_utf8(handle.to_vec())
        .map_err(|_| Status::invalid_argument("no prepared statement handle of Baton's"))
}

/// The query id of a result ticket.
fn query_of_ticket(ticket: &Ticket) -> Result<String, Status> {
    let not_ours = || Status::invalid_argument("the ticket is no Baton query result");
    let any = arrow_flight::sql::Any::decode(ticket.ticket.clone()).map_err(|_| not_ours())?;
    let statement = any
        .unpack::<TicketStatementQuery>()
        .map_err(|_| not_ours())?
        .ok_or_else(not_ours)?;
    String::from_utf8(statement.statement_handle.to_vec()).map_err(|_| not_ours())
}

/// `schema` as the IPC message Flight SQL describes schemas with (its written form).
fn schema_bytes(schema: &SchemaRef) -> Result<bytes::Bytes, Status> {
    let message: IpcMessage = SchemaAsIpc::new(&ipc_schema(schema), &IpcWriteOptions::default())
        .try_into()
        .map_err(internal)?;
    Ok(message.0)
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// A FlightInfo whose one endpoint's ticket is `command` itself (metadata commands).
fn command_info(
    command: impl ProstMessageExt,
    schema: &SchemaRef,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let ticket = Ticket::new(command.as_any().encode_to_vec());
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(internal)?
        .with_descriptor(descriptor)
        .with_endpoint(FlightEndpoint::new().with_ticket(ticket));
    Ok(Response::new(info))
}

/// One batch as a Flight stream (schema, then data).
fn batch_stream(batch: RecordBatch) -> Response<DataStream> {
    let schema = batch.schema();
    let stream = encode_batches(schema, futures::stream::once(async move { Ok(batch) }))
        .map_err(|e: FlightError| Status::internal(e.to_string()));
    Response::new(Box::pin(stream))
}

/// The Flight messages (no schema message) of a result partition the scheduler holds
/// as Arrow IPC, encoded as an executor's Flight endpoint encodes stored partitions.
async fn inline_messages(schema: &SchemaRef, ipc: &[u8]) -> Result<Vec<FlightData>, Status> {
    let unreadable = |e: ArrowError| Status::internal(format!("result partition unreadable: {e}"));
    let batches = StreamReader::try_new(ipc, None)
        .map_err(unreadable)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(unreadable)?;
    let messages: Vec<FlightData> = encode_batches(
        schema.clone(),
        futures::stream::iter(batches.into_iter().map(Ok)),
    )
    .try_collect()
    .await
    .map_err(|e: FlightError| Status::internal(e.to_string()))?;
    let data: Vec<FlightData> = messages
        .into_iter()
        .filter(|m| !is_schema_message(m))
        .collect();
    let bytes: usize = data.iter().map(|m| m.data_body.len()).sum();
    metrics::counter!("baton_flight_bytes_served_total", "endpoint" => "result")
        .increment(bytes as u64);
    Ok(data)
}

/// `messages` of a query's result, after whose last one, taken by the client's response
/// without an error before it, the scheduler releases the result. A client that drops
/// the stream early, or whose stream failed, can fetch the result again (until the
/// result TTL).
fn released_once_taken(
    scheduler: Scheduler,
    query_id: String,
    messages: impl Stream<Item = Result<FlightData, Status>> + Send + 'static,
) -> DataStream {
    let failed = Arc::new(AtomicBool::new(false));
    let saw_error = failed.clone();
    let release = futures::stream::once(async move {
        if !failed.load(Ordering::Relaxed) {
            scheduler.results_fetched(&query_id);
        }
    })
    .filter_map(|()| futures::future::ready(None));
    let messages = messages.inspect(move |message| {
        if message.is_err() {
            saw_error.store(true, Ordering::Relaxed);
        }
    });
    Box::pin(messages.chain(release))
}

impl ResultFlight {
    /// Runs `submission` for `origin`, waits for it to end, and describes its result:
    /// the schema and the ticket that streams it.
    async fn run(
        &self,
        submission: Submission,
        label: String,
        origin: Origin,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let id = self
            .scheduler
            .submit(submission, label, origin)
            .await
            .map_err(to_status)?;
        let (schema, _, _) = self
            .scheduler
            .wait_for_result_attended(&id)
            .await
            .map_err(to_status)?;
        let info = FlightInfo::new()
            .try_with_schema(&ipc_schema(&schema))
            .map_err(internal)?
            .with_descriptor(descriptor)
            .with_endpoint(FlightEndpoint::new().with_ticket(result_ticket(&id)))
            .with_ordered(true);
        Ok(Response::new(info))
    }

    /// Streams a finished query's result: partitions the scheduler holds itself, and
    /// the others from the executors holding them.
    async fn stream_result(&self, query_id: String) -> Result<DataStream, Status> {
        let (schema, parts, final_stage) = self
            .scheduler
            .wait_for_result_attended(&query_id)
            .await
            .map_err(to_status)?;
        let schema_message = schema_message(&schema);
        // A result the scheduler holds whole is answered at once, without a fetch.
        if parts.iter().all(|p| matches!(p, ResultPart::Inline(_))) {
            let mut messages = vec![Ok(schema_message)];
            for part in &parts {
                if let ResultPart::Inline(ipc) = part {
                    messages.extend(inline_messages(&schema, ipc).await?.into_iter().map(Ok));
                }
            }
            let messages = futures::stream::iter(messages);
            return Ok(released_once_taken(
                self.scheduler.clone(),
                query_id,
                messages,
            ));
        }
        let (tx, rx) = mpsc::channel(4);
        let scheduler = self.scheduler.clone();
        let result_query = query_id.clone();
        tokio::spawn(async move {
            if tx.send(Ok(schema_message)).await.is_err() {
                return;
            }
            let query: Arc<str> = query_id.as_str().into();
            for (map, part) in parts.iter().enumerate() {
                let location = match part {
                    ResultPart::Stored(location) => location,
                    ResultPart::Inline(ipc) => {
                        let messages = match inline_messages(&schema, ipc).await {
                            Ok(messages) => messages,
                            Err(e) => {
                                let _ = tx.send(Err(e)).await;
                                return;
                            }
                        };
                        for message in messages {
                            if tx.send(Ok(message)).await.is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                };
                let key = ShuffleKey {
                    query_id: query.clone(),
                    stage_id: final_stage,
                    map_partition: map as u32,
                    output_partition: 0,
                };
                let opened = match scheduler
                    .inner
                    .clients
                    .client(&location.flight_address)
                    .await
                {
                    Ok(mut client) => client.do_get(shuffle_ticket(&key)).await,
                    Err(e) => Err(Status::unavailable(e.to_string())),
                };
                let mut stream = match opened {
                    Ok(response) => response.into_inner(),
                    Err(e) => {
                        warn!(query_id = %query, error = %e, "result partition unavailable");
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                while let Some(message) = stream.next().await {
                    let message = match message {
                        Ok(m) if is_schema_message(&m) => continue,
                        other => other,
                    };
                    metrics::counter!("baton_flight_bytes_served_total", "endpoint" => "result")
                        .increment(message.as_ref().map_or(0, |m| m.data_body.len() as u64));
                    let failed = message.is_err();
                    if tx.send(message).await.is_err() || failed {
                        return;
                    }
                }
            }
        });
        let messages = ReceiverStream::new(rx);
        Ok(released_once_taken(
            self.scheduler.clone(),
            result_query,
            messages,
        ))
    }

    /// Every table: (catalog, schema, table, arrow schema).
    async fn tables(&self) -> Result<Vec<(String, String, String, SchemaRef)>, Status> {
        let session = self.scheduler.session();
        let mut tables = Vec::new();
        for catalog_name in session.catalog_names() {
            let Some(catalog) = session.catalog(&catalog_name) else {
                continue;
            };
            for schema_name in catalog.schema_names() {
                let Some(schema) = catalog.schema(&schema_name) else {
                    continue;
                };
                let mut names = schema.table_names();
                names.sort();
                for name in names {
                    if let Some(table) = schema.table(&name).await.map_err(internal)? {
                        tables.push((
                            catalog_name.clone(),
                            schema_name.clone(),
                            name,
                            table.schema(),
                        ));
                    }
                }
            }
        }
        Ok(tables)
    }
}

#[tonic::async_trait]
impl FlightSqlService for ResultFlight {
    type FlightService = ResultFlight;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        // The call got here with valid credentials (HTTP Basic, as ADBC and JDBC log
        // in): answer a bearer token for the calls that follow, in the payload and in
        // the `authorization` header. Without authentication the token is empty.
        let caller = caller_of(&request)?;
        let auth = self.scheduler.authenticator();
        let token = if auth.is_on() {
            auth.issue_token(&caller)
        } else {
            String::new()
        };
        let handshake = HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into(),
        };
        let mut response: Response<
            Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>,
        > = Response::new(Box::pin(futures::stream::once(async { Ok(handshake) })));
        if !token.is_empty() {
            let header = format!("Bearer {token}")
                .parse()
                .map_err(|_| Status::internal("token is no header value"))?;
            response.metadata_mut().insert("authorization", header);
        }
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let origin = origin_of(&request)?;
        let submission = Submission::Sql(query.query.clone());
        self.run(submission, query.query, origin, request.into_inner())
            .await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let origin = origin_of(&request)?;
        let (dataset, parameters) = self
            .scheduler
            .describe(&query.query, &origin)
            .await
            .map_err(to_status)?;
        let handle = self
            .prepared
            .create(Prepared {
                sql: query.query,
                origin,
                params: Vec::new(),
            })
            .map_err(prepared_status)?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into_bytes().into(),
            dataset_schema: schema_bytes(&dataset)?,
            parameter_schema: schema_bytes(&parameters)?,
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let caller = caller_of(&request)?;
        let handle = handle_of(&query.prepared_statement_handle)?;
        let data = request.into_inner().map_err(FlightError::from);
        let batches: Vec<RecordBatch> = FlightRecordBatchStream::new_from_flight_data(data)
            .try_collect()
            .await
            .map_err(|e| Status::invalid_argument(format!("parameters: {e}")))?;
        self.prepared
            .bind(&handle, &caller, &batches)
            .map_err(prepared_status)?;
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(query.prepared_statement_handle),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = caller_of(&request)?;
        let handle = handle_of(&query.prepared_statement_handle)?;
        let statement = self
            .prepared
            .get(&handle, &caller)
            .map_err(prepared_status)?;
        let label = statement.sql.clone();
        let submission = Submission::Bound {
            sql: statement.sql,
            params: statement.params,
        };
        self.run(submission, label, statement.origin, request.into_inner())
            .await
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        let caller = caller_of(&request)?;
        let handle = handle_of(&query.prepared_statement_handle)?;
        self.prepared
            .close(&handle, &caller)
            .map_err(prepared_status)
    }

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        if request.get_ref().r#type != CANCEL_FLIGHT_INFO {
            return Err(Status::invalid_argument(format!(
                "unknown action {:?}",
                request.get_ref().r#type
            )));
        }
        let caller = caller_of(&request)?;
        let cancel = CancelFlightInfoRequest::decode(request.get_ref().body.clone())
            .map_err(|e| Status::invalid_argument(format!("CancelFlightInfo: {e}")))?;
        let info = cancel
            .info
            .ok_or_else(|| Status::invalid_argument("CancelFlightInfo names no FlightInfo"))?;
        let mut status = CancelStatus::NotCancellable;
        for ticket in info.endpoint.iter().filter_map(|e| e.ticket.as_ref()) {
            let query_id = query_of_ticket(ticket)?;
            self.scheduler
                .check_access(&caller, &query_id)
                .map_err(to_status)?;
            if self.scheduler.abandon(&query_id).map_err(to_status)? {
                status = CancelStatus::Cancelled;
            }
        }
        let result = arrow_flight::Result {
            body: CancelFlightInfoResult {
                status: status as i32,
            }
            .encode_to_vec()
            .into(),
        };
        Ok(Response::new(Box::pin(futures::stream::once(async {
            Ok(result)
        }))))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let caller = caller_of(&request)?;
        let query_id = String::from_utf8(ticket.statement_handle.to_vec())
            .map_err(|_| Status::invalid_argument("statement handle is not a Baton query id"))?;
        self.scheduler
            .check_access(&caller, &query_id)
            .map_err(to_status)?;
        Ok(Response::new(self.stream_result(query_id).await?))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        command_info(query, &schema, request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        let mut names = self.scheduler.session().catalog_names();
        names.sort();
        for name in names {
            builder.append(name);
        }
        Ok(batch_stream(builder.build().map_err(internal)?))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        command_info(query, &schema, request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        let session = self.scheduler.session();
        for catalog_name in session.catalog_names() {
            if let Some(catalog) = session.catalog(&catalog_name) {
                for schema_name in catalog.schema_names() {
                    builder.append(&catalog_name, schema_name);
                }
            }
        }
        Ok(batch_stream(builder.build().map_err(internal)?))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        command_info(query, &schema, request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for (catalog, schema, table, arrow_schema) in self.tables().await? {
            builder
                .append(catalog, schema, table, "TABLE", &arrow_schema)
                .map_err(internal)?;
        }
        Ok(batch_stream(builder.build().map_err(internal)?))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        command_info(query, &schema, request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for table_type in TABLE_TYPES {
            builder.append(table_type);
        }
        Ok(batch_stream(builder.build().map_err(internal)?))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.sql_info).schema();
        command_info(query, &schema, request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let batch = query
            .into_builder(&self.sql_info)
            .build()
            .map_err(internal)?;
        Ok(batch_stream(batch))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
