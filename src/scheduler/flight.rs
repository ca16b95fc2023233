//! The scheduler's Flight endpoint for query results.
//!
//! `get_flight_info` with a descriptor whose command is a [`ResultTicket`] waits for the
//! query to end and describes its result; `do_get` on that ticket streams the final
//! stage's partitions from the executors that hold them, message by message, without
//! decoding or buffering them. The scheduler sends the schema once and drops the schema
//! message that opens each executor stream.

use std::sync::Arc;

use arrow_flight::{FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, SchemaAsIpc, Ticket};
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::arrow::ipc::{MessageHeader, root_as_message};
use futures::StreamExt;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::warn;

use super::{Scheduler, SchedulerError};
use crate::flight_service::{FlightDataStream, FlightHandler};
use crate::proto::ResultTicket;
use crate::shuffle::ShuffleKey;
use crate::shuffle::fetch::shuffle_ticket;

/// Serves query results.
#[derive(Debug)]
pub struct ResultFlight {
    scheduler: Scheduler,
}

impl ResultFlight {
    /// A result endpoint for `scheduler`.
    pub fn new(scheduler: Scheduler) -> crate::flight_service::FlightEndpoint<Self> {
        crate::flight_service::FlightEndpoint::new(Self { scheduler })
    }
}

fn query_id_of(bytes: &[u8]) -> Result<String, Status> {
    ResultTicket::decode(bytes)
        .map(|t| t.query_id)
        .map_err(|e| Status::invalid_argument(format!("not a Baton result ticket: {e}")))
}

fn to_status(e: SchedulerError) -> Status {
    match e {
        SchedulerError::UnknownQuery(_) => Status::not_found(e.to_string()),
        SchedulerError::NoResult { .. } => Status::failed_precondition(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

fn is_schema_message(data: &FlightData) -> bool {
    root_as_message(&data.data_header).is_ok_and(|m| m.header_type() == MessageHeader::Schema)
}

#[tonic::async_trait]
impl FlightHandler for ResultFlight {
    async fn flight_info(&self, descriptor: FlightDescriptor) -> Result<FlightInfo, Status> {
        let query_id = query_id_of(&descriptor.cmd)?;
        let (schema, _, _) = self
            .scheduler
            .wait_for_result(&query_id)
            .await
            .map_err(to_status)?;
        let ticket = Ticket::new(ResultTicket { query_id }.encode_to_vec());
        FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| Status::internal(e.to_string()))
            .map(|info| {
                info.with_descriptor(descriptor)
                    .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
                    .with_ordered(true)
            })
    }

    async fn get(&self, ticket: Ticket) -> Result<FlightDataStream, Status> {
        let query_id = query_id_of(&ticket.ticket)?;
        let (schema, locations, final_stage) = self
            .scheduler
            .wait_for_result(&query_id)
            .await
            .map_err(to_status)?;
        let (tx, rx) = mpsc::channel(4);
        let scheduler = self.scheduler.clone();
        let schema_message: FlightData =
            SchemaAsIpc::new(&schema, &IpcWriteOptions::default()).into();
        tokio::spawn(async move {
            if tx.send(Ok(schema_message)).await.is_err() {
                return;
            }
            let query: Arc<str> = query_id.as_str().into();
            for (map, location) in locations.iter().enumerate() {
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
            scheduler.release_results(&query_id);
        });
        Ok(ReceiverStream::new(rx).boxed())
    }
}
