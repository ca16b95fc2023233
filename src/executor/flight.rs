//! The executor's Flight endpoint: `do_get` on a [`ShuffleTicket`] streams one stored
//! shuffle partition.

use arrow_flight::Ticket;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use tonic::Status;

use crate::flight_service::{FlightDataStream, FlightEndpoint, FlightHandler};
use crate::proto::ShuffleTicket;
use crate::shuffle::{ShuffleKey, ShuffleStore};

/// Serves this executor's shuffle partitions.
#[derive(Debug)]
pub struct ShuffleFlight {
    store: ShuffleStore,
}

impl ShuffleFlight {
    /// A Flight service over `store`.
    pub fn new(store: ShuffleStore) -> FlightEndpoint<Self> {
        FlightEndpoint::new(Self { store })
    }
}

#[tonic::async_trait]
impl FlightHandler for ShuffleFlight {
    async fn get(&self, ticket: Ticket) -> Result<FlightDataStream, Status> {
        let ticket = ShuffleTicket::decode(ticket.ticket)
            .map_err(|e| Status::invalid_argument(format!("not a Baton shuffle ticket: {e}")))?;
        let key = ShuffleKey {
            query_id: ticket.query_id.into(),
            stage_id: ticket.stage_id,
            map_partition: ticket.map_partition,
            output_partition: ticket.output_partition,
        };
        let partition = self
            .store
            .get(&key)
            .map_err(|e| Status::not_found(e.to_string()))?;
        let stream = partition.stream();
        let schema = stream.schema();
        let batches = stream.map_err(|e| FlightError::ExternalError(Box::new(e)));
        let encoded = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_ok(|data| {
                metrics::counter!("baton_flight_bytes_served_total", "endpoint" => "shuffle")
                    .increment(data.data_body.len() as u64);
                data
            })
            .map_err(Status::from);
        Ok(encoded.boxed())
    }
}
