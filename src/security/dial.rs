//! Dialing a peer: Baton's HTTP/2 settings, TLS when the cluster uses it, and the
//! credential every call on the connection carries.

use std::future::Future;

use tokio::runtime::Handle;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

use super::SecurityError;

/// HTTP/2 flow-control window of each stream a channel receives: how much of a fetch
/// may arrive ahead of its reader.
const STREAM_WINDOW: u32 = 2 << 20;

/// HTTP/2 flow-control window of a whole channel. Streams of one channel share it, and
/// data a reader has not taken yet holds it: a suspended task's fetches must not use it
/// all up, or the fetches of the task that preempted it would stall behind them. So it
/// is far larger than the sum of the stream windows it is shared by.
const CONNECTION_WINDOW: u32 = 1 << 30;

/// A connection whose every call carries the dialer's credential.
pub type Connection = InterceptedService<Channel, Authorize>;

/// Adds an `authorization` header to every call (none when it holds none).
#[derive(Debug, Clone, Default)]
pub struct Authorize(Option<AsciiMetadataValue>);

impl Interceptor for Authorize {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// How a process dials its peers: plain or TLS, and with which credential.
#[derive(Debug, Clone, Default)]
pub struct Dialer {
    tls: Option<ClientTlsConfig>,
    authorization: Option<AsciiMetadataValue>,
}

impl Dialer {
    /// Plain connections without credentials (authentication and TLS off).
    pub fn plain() -> Self {
        Self::default()
    }

    /// Connections over TLS as `tls` says, when Some.
    pub fn with_tls(mut self, tls: Option<ClientTlsConfig>) -> Self {
        self.tls = tls;
        self
    }

    /// Every call carries `Bearer <token>` (a login's token, or the cluster secret).
    pub fn with_bearer(mut self, token: &str) -> Result<Self, SecurityError> {
        self.authorization = Some(
            format!("Bearer {token}")
                .parse()
                .map_err(|_| SecurityError::Secret("it is no valid header value".into()))?,
        );
        Ok(self)
    }

    /// Every call carries HTTP Basic credentials (a Flight SQL handshake's login).
    pub fn with_basic(mut self, user: &str, password: &str) -> Result<Self, SecurityError> {
        use base64::Engine;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.authorization = Some(
            format!("Basic {encoded}")
                .parse()
                .map_err(|_| SecurityError::Secret("the login is no valid header value".into()))?,
        );
        Ok(self)
    }

    /// Whether connections use TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Opens a connection to `address` (host:port, any `http://`, `https://` or
    /// `grpc[+tls]://` prefix dropped); it runs on the runtime this is called on.
    pub async fn connect(&self, address: &str) -> Result<Connection, tonic::transport::Error> {
        let channel = self.endpoint(address)?.connect().await?;
        Ok(self.authorized(channel))
    }

    /// Opens a connection like [`Dialer::connect`] that lives on `runtime` whatever
    /// runtime the caller is on: the handshake runs there too, so the connection's
    /// timers (its HTTP/2 keepalive) belong to that runtime and outlive the caller's.
    pub async fn connect_on(
        &self,
        address: &str,
        runtime: Handle,
    ) -> Result<Connection, DialError> {
        let endpoint = self.endpoint(address)?.executor(OnRuntime(runtime.clone()));
        let channel = runtime
            .spawn(async move { endpoint.connect().await })
            .await??;
        Ok(self.authorized(channel))
    }

    /// `channel` with this dialer's credential on every call.
    pub fn authorized(&self, channel: Channel) -> Connection {
        InterceptedService::new(channel, Authorize(self.authorization.clone()))
    }

    fn endpoint(&self, address: &str) -> Result<Endpoint, tonic::transport::Error> {
        let host_port = strip_scheme(address);
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{host_port}"))?
            .tcp_nodelay(true)
            .http2_keep_alive_interval(crate::config::KEEPALIVE_INTERVAL)
            .keep_alive_timeout(crate::config::KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        Ok(endpoint)
    }
}

/// Why [`Dialer::connect_on`] has no connection.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The connection failed.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    /// The runtime the connection was to live on stopped first.
    #[error("the runtime to connect on stopped: {0}")]
    Runtime(#[from] tokio::task::JoinError),
}

/// `address` without a URL scheme.
pub fn strip_scheme(address: &str) -> &str {
    address.split_once("://").map_or(address, |(_, rest)| rest)
}

/// Spawns a channel's background work (its request buffer, its HTTP/2 connection) on one
/// runtime.
#[derive(Clone)]
struct OnRuntime(Handle);

impl<F: Future<Output = ()> + Send + 'static> hyper::rt::Executor<F> for OnRuntime {
    fn execute(&self, future: F) {
        self.0.spawn(future);
    }
}
