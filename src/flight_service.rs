//! A Flight server that answers `do_get` through a small handler trait and refuses the
//! rest: the executors' shuffle endpoint.

use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::Stream;
use futures::stream::BoxStream;
use tonic::{Request, Response, Status, Streaming};

/// A stream of Flight data for `do_get`.
pub type FlightDataStream = BoxStream<'static, Result<FlightData, Status>>;

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
