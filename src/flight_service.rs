//! A Flight server that answers `do_get` through a small handler trait and refuses the
//! rest: the executors' shuffle endpoint. Also how Baton encodes record batches as
//! Flight data ([`encode_batches`]) and recognises a schema message.

use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::arrow::ipc::{MessageHeader, root_as_message};
use futures::stream::BoxStream;
use futures::{Stream, TryStreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::ipc_types::{conform, ipc_schema};

/// A stream of Flight data for `do_get`.
pub type FlightDataStream = BoxStream<'static, Result<FlightData, Status>>;

/// `batches` of `schema` as Flight data, in the schema's written form ([`ipc_schema`]):
/// the schema message, then each batch (split to gRPC size) with its dictionaries,
/// which stay dictionaries since the schema says so.
/// The schema message is written from `schema` itself: arrow-flight 59's encoder
/// rewrites a `LargeList` field as `List` while it sends the batch's 64-bit offsets
/// unchanged, and a reader then decodes other lists than were sent.
pub fn encode_batches(
    schema: SchemaRef,
    batches: impl Stream<Item = Result<RecordBatch, FlightError>> + Send + 'static,
) -> impl Stream<Item = Result<FlightData, FlightError>> + Send + 'static {
    let written = ipc_schema(&schema);
    let mut faithful = Some(schema_message(&written));
    let batches = {
        let written = Arc::clone(&written);
        batches.and_then(move |batch| {
            futures::future::ready(conform(batch, &written).map_err(FlightError::from))
        })
    };
    FlightDataEncoderBuilder::new()
        .with_schema(written)
        .with_dictionary_handling(DictionaryHandling::Resend)
        .build(batches)
        .map_ok(
            move |data| match faithful.take_if(|_| is_schema_message(&data)) {
                Some(faithful) => faithful,
                None => data,
            },
        )
}

/// `schema` as a Flight schema message, in its written form ([`ipc_schema`]), as
/// [`encode_batches`] writes it.
pub fn schema_message(schema: &SchemaRef) -> FlightData {
    SchemaAsIpc::new(&ipc_schema(schema), &IpcWriteOptions::default()).into()
}

/// True when `data` is an IPC schema message.
pub fn is_schema_message(data: &FlightData) -> bool {
    root_as_message(&data.data_header).is_ok_and(|m| m.header_type() == MessageHeader::Schema)
}

/// What a Baton Flight endpoint serves.
#[tonic::async_trait]
pub trait FlightHandler: Send + Sync + 'static {
    /// Streams the data named by `ticket`.
    async fn get(&self, ticket: Ticket) -> Result<FlightDataStream, Status>;
}

/// A tonic Flight service over a [`FlightHandler`].
#[derive(Debug)]
pub struct FlightEndpoint<H>(Arc<H>);

impl<H> FlightEndpoint<H> {
    /// A service for `handler`.
    pub fn new(handler: H) -> Self {
        Self(Arc::new(handler))
    }
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn refused<T>(what: &str) -> Result<T, Status> {
    Err(Status::unimplemented(format!("{what} is not served here")))
}

#[tonic::async_trait]
impl<H: FlightHandler> FlightService for FlightEndpoint<H> {
    type HandshakeStream = Boxed<HandshakeResponse>;
    type ListFlightsStream = Boxed<FlightInfo>;
    type DoGetStream = FlightDataStream;
    type DoPutStream = Boxed<PutResult>;
    type DoExchangeStream = Boxed<FlightData>;
    type DoActionStream = Boxed<arrow_flight::Result>;
    type ListActionsStream = Boxed<ActionType>;

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        refused("handshake")
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        refused("list_flights")
    }

    async fn get_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        refused("get_flight_info")
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        refused("poll_flight_info")
    }

    async fn get_schema(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        refused("get_schema")
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        self.0.get(request.into_inner()).await.map(Response::new)
    }

    async fn do_put(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        refused("do_put")
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        refused("do_exchange")
    }

    async fn do_action(
        &self,
        _request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        refused("do_action")
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        refused("list_actions")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_flight::decode::FlightRecordBatchStream;
    use datafusion::arrow::array::{Array, Int64Array, LargeListArray};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};

    #[tokio::test]
    async fn a_large_list_column_decodes_as_it_was_sent() {
        let lists = LargeListArray::from_iter_primitive::<Int64Type, _, _>(vec![
            Some(vec![Some(1), None, Some(3)]),
            None,
            Some(vec![]),
            Some(vec![Some(4)]),
        ]);
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("l", lists.data_type().clone(), true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![0, 1, 2, 3])),
                Arc::new(lists),
            ],
        )
        .unwrap();
        let sent = futures::stream::iter(vec![Ok(batch.clone())]);
        let data = encode_batches(schema, sent);
        let decoded: Vec<RecordBatch> = FlightRecordBatchStream::new_from_flight_data(data)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(decoded, vec![batch]);
    }
}
