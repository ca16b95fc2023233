//! What a standby scheduler answers on its port while another leads: every gRPC and
//! Flight call is refused as unavailable, naming the active scheduler's address in the
//! message and in the [`ACTIVE_SCHEDULER`] metadata, so that clients and executors given
//! one name (or the standby's address first) go to the active one.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::marker::PhantomData;
use std::task::{Context, Poll};

use arrow_flight::flight_service_server::FlightServiceServer;
use futures::Stream;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http::{Request, Response};
use tonic::server::NamedService;

use super::SchedulerError;
use super::flight::ResultFlight;
use super::service::SchedulerGrpc;
use crate::proto::scheduler_service_server::SchedulerServiceServer;

/// The response metadata naming where the active scheduler serves.
pub const ACTIVE_SCHEDULER: &str = "baton-active-scheduler";

/// The refusal of a call to a standby whose active scheduler is at `active` (unknown
/// while none leads: the metadata is then empty).
pub fn refusal(active: Option<&str>) -> tonic::Status {
    let mut status = match active {
        Some(address) => tonic::Status::unavailable(format!(
            "this scheduler stands by; the active scheduler is at {address}"
        )),
        None => tonic::Status::unavailable("this scheduler stands by; no scheduler leads yet"),
    };
    let value = active
        .and_then(|address| address.parse().ok())
        .unwrap_or_else(|| tonic::metadata::MetadataValue::from_static(""));
    status.metadata_mut().insert(ACTIVE_SCHEDULER, value);
    status
}

/// When `status` is a standby's refusal, the active scheduler's address it named: empty
/// when it knew none.
pub fn active_of(status: &tonic::Status) -> Option<String> {
    if status.code() != tonic::Code::Unavailable {
        return None;
    }
    let value = status.metadata().get(ACTIVE_SCHEDULER)?.to_str().ok()?;
    Some(value.to_string())
}

/// Refuses every call to the service `S` names (see [`refusal`]).
struct Refuse<S> {
    active: watch::Receiver<Option<String>>,
    service: PhantomData<fn() -> S>,
}

impl<S> Clone for Refuse<S> {
    fn clone(&self) -> Self {
        Self {
            active: self.active.clone(),
            service: PhantomData,
        }
    }
}

impl<S: NamedService> NamedService for Refuse<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<Request<Body>> for Refuse<S> {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Body>) -> Self::Future {
        let active = self.active.borrow().clone();
        ready(Ok(refusal(active.as_deref()).into_http()))
    }
}

/// Serves the standby's refusals on the connections of `incoming` until `until`
/// completes (the scheduler was elected), then closes them gracefully.
pub async fn serve(
    incoming: impl Stream<Item = std::io::Result<TcpStream>> + Send + 'static,
    tls: Option<tonic::transport::ServerTlsConfig>,
    active: watch::Receiver<Option<String>>,
    until: impl Future<Output = ()> + Send,
) -> Result<(), SchedulerError> {
    let grpc: Refuse<SchedulerServiceServer<SchedulerGrpc>> = Refuse {
        active: active.clone(),
        service: PhantomData,
    };
    let flight: Refuse<FlightServiceServer<ResultFlight>> = Refuse {
        active,
        service: PhantomData,
    };
    let mut builder = crate::config::server_builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .add_service(grpc)
        .add_service(flight)
        .serve_with_incoming_shutdown(incoming, until)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_active_scheduler_and_only_then() {
        let named = refusal(Some("10.0.0.7:50050"));
        assert_eq!(named.code(), tonic::Code::Unavailable);
        assert!(named.message().contains("10.0.0.7:50050"));
        assert_eq!(active_of(&named).as_deref(), Some("10.0.0.7:50050"));
        assert_eq!(active_of(&refusal(None)).as_deref(), Some(""));
        assert_eq!(
            active_of(&tonic::Status::unavailable("connection refused")),
            None
        );
        // Any other failure names no scheduler, even with the same metadata.
        let mut other = tonic::Status::internal("boom");
        other
            .metadata_mut()
            .insert(ACTIVE_SCHEDULER, "10.0.0.7:50050".parse().unwrap());
        assert_eq!(active_of(&other), None);
    }
}
