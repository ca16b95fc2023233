//! The gRPC `SchedulerService`: executor streams and the client API.

use std::pin::Pin;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use super::{Origin, Scheduler, SchedulerError, Submission};
use crate::config::EXECUTOR_TIMEOUT;
use crate::proto::scheduler_service_server::SchedulerService;
use crate::proto::{
    CancelQueryRequest, CancelQueryResponse, ExecutorMessage, GetQueryStatusRequest,
    ListQueriesRequest, ListQueriesResponse, ObjectStores, QueryStatus, SchedulerMessage,
    SubmitQueryRequest, SubmitQueryResponse, executor_message, scheduler_message,
    submit_query_request,
};
use crate::security::caller_of;
use crate::shuffle::MapLocation;

/// The status that answers a refused [`Scheduler::check_access`].
pub(super) fn access_status(e: SchedulerError) -> Status {
    match e {
        SchedulerError::NotYours(_) => Status::permission_denied(e.to_string()),
        other => Status::not_found(other.to_string()),
    }
}

/// The tonic service over a [`Scheduler`].
#[derive(Debug)]
pub struct SchedulerGrpc {
    scheduler: Scheduler,
}

impl SchedulerGrpc {
    /// A service for `scheduler`.
    pub fn new(scheduler: Scheduler) -> Self {
        Self { scheduler }
    }
}

type MessageStream = Pin<Box<dyn Stream<Item = Result<SchedulerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl SchedulerService for SchedulerGrpc {
    type ConnectStream = MessageStream;

    async fn connect(
        &self,
        request: Request<Streaming<ExecutorMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        if !caller_of(&request)?.is_cluster() {
            return Err(Status::permission_denied(
                "only processes holding the cluster secret may register as executors",
            ));
        }
        let mut inbound = request.into_inner();
        let register = match inbound.message().await? {
            Some(ExecutorMessage {
                message: Some(executor_message::Message::Register(r)),
            }) => r,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message on an executor stream must be Register",
                ));
            }
        };
        if register.executor_id.is_empty() || register.flight_address.is_empty() {
            return Err(Status::invalid_argument(
                "Register needs an executor id and a Flight address",
            ));
        }
        let executor_id = register.executor_id.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        // Before any task: where the tables' data is.
        let _ = tx.send(Ok(SchedulerMessage {
            message: Some(scheduler_message::Message::ObjectStores(ObjectStores {
                s3: self.scheduler.object_stores().to_map(),
            })),
        }));
        let location = MapLocation {
            executor_id: executor_id.clone(),
            flight_address: register.flight_address,
        };
        let Some(generation) = self.scheduler.state().register_executor(
            location,
            register.slots.max(1),
            register.preempt_slots,
            tx,
            &register.held,
        ) else {
            return Err(Status::already_exists(format!(
                "an executor named {executor_id} is connected already: give this one another \
                 --id (or, if it is the same executor reconnecting, the scheduler lets the old \
                 connection go within {EXECUTOR_TIMEOUT:?})"
            )));
        };
        let scheduler = self.scheduler.clone();
        tokio::spawn(async move {
            // True once the executor closed its stream itself (it stopped): it is gone
            // all the same, but no failure is reported.
            let closed = loop {
                // Heartbeats come every few seconds; a stream silent for longer than
                // the timeout belongs to an executor that hangs or is cut off.
                let Ok(next) = tokio::time::timeout(EXECUTOR_TIMEOUT, inbound.message()).await
                else {
                    warn!(executor = %executor_id, timeout = ?EXECUTOR_TIMEOUT, "executor missed its heartbeats");
                    break false;
                };
                match next {
                    Ok(Some(message)) => match message.message {
                        Some(executor_message::Message::TaskStatus(status)) => {
                            scheduler.state().task_status(&executor_id, status);
                        }
                        Some(executor_message::Message::Heartbeat(_)) => {}
                        Some(executor_message::Message::Drain(_)) => {
                            scheduler.state().executor_draining(&executor_id);
                        }
                        Some(executor_message::Message::Register(_)) | None => {
                            warn!(executor = %executor_id, "unexpected message on executor stream");
                        }
                    },
                    Ok(None) => break true,
                    // A stopping scheduler's executors go away with it (an embedded
                    // cluster stops both at once): no failure to report then.
                    Err(e) if scheduler.is_draining() => {
                        info!(executor = %executor_id, error = %e, "executor stream ended while the scheduler stops");
                        break true;
                    }
                    Err(e) => {
                        warn!(executor = %executor_id, error = %e, "executor stream failed");
                        break false;
                    }
                }
            };
            scheduler
                .state()
                .executor_lost(&executor_id, generation, closed);
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }

    async fn submit_query(
        &self,
        request: Request<SubmitQueryRequest>,
    ) -> Result<Response<SubmitQueryResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let origin = Origin {
            owner: caller.name,
            session: Some(request.session_id.clone()).filter(|id| !id.is_empty()),
        };
        let (submission, label) = match request.query {
            Some(submit_query_request::Query::Sql(sql)) => {
                let label = if request.label.is_empty() {
                    sql.clone()
                } else {
                    request.label
                };
                (Submission::Sql(sql), label)
            }
            Some(submit_query_request::Query::PhysicalPlan(plan)) => {
                (Submission::Plan(plan), request.label)
            }
            None => return Err(Status::invalid_argument("SubmitQuery needs SQL or a plan")),
        };
        let query_id = self
            .scheduler
            .submit(submission, label, origin)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(SubmitQueryResponse {
            query_id: query_id.to_string(),
        }))
    }

    async fn get_query_status(
        &self,
        request: Request<GetQueryStatusRequest>,
    ) -> Result<Response<QueryStatus>, Status> {
        let caller = caller_of(&request)?;
        let id = request.into_inner().query_id;
        self.scheduler
            .check_access(&caller, &id)
            .map_err(access_status)?;
        self.scheduler
            .status(&id)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no query with id {id}")))
    }

    async fn list_queries(
        &self,
        request: Request<ListQueriesRequest>,
    ) -> Result<Response<ListQueriesResponse>, Status> {
        let caller = caller_of(&request)?;
        Ok(Response::new(ListQueriesResponse {
            queries: self.scheduler.list_for(&caller),
        }))
    }

    async fn cancel_query(
        &self,
        request: Request<CancelQueryRequest>,
    ) -> Result<Response<CancelQueryResponse>, Status> {
        let caller = caller_of(&request)?;
        let id = request.into_inner().query_id;
        self.scheduler
            .check_access(&caller, &id)
            .map_err(access_status)?;
        let cancelled = self
            .scheduler
            .cancel(&id)
            .map_err(|e| Status::not_found(e.to_string()))?;
        Ok(Response::new(CancelQueryResponse { cancelled }))
    }
}
