//! Prometheus metrics for every Baton process, and the small HTTP endpoint that serves
//! them (`GET /metrics`) together with any JSON routes a process adds.
//!
//! One recorder is installed per process; an in-process cluster's scheduler and
//! executors all report into it, so `baton standalone` has one endpoint for everything.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{debug, warn};

/// Histogram buckets in seconds, from 10 µs (dispatch latency) to a minute (queries).
const BUCKETS: [f64; 20] = [
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 60.0,
];

/// Largest HTTP request head the endpoint reads.
const MAX_REQUEST_BYTES: usize = 16 * 1024;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder on first call; returns its handle, or
/// None when another recorder was installed first.
pub fn recorder() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&BUCKETS)
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok().map(|_| handle)
        })
        .as_ref()
}

/// The metrics in Prometheus text format.
pub fn render() -> String {
    match recorder() {
        Some(handle) => {
            handle.run_upkeep();
            handle.render()
        }
        None => String::new(),
    }
}

/// What a JSON route answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonAnswer {
    /// The HTTP status, e.g. "200 OK"; a "401 …" asks for HTTP Basic credentials.
    pub status: &'static str,
    /// The JSON body.
    pub body: String,
}

impl JsonAnswer {
    /// 200 with `body`.
    pub fn ok(body: String) -> Self {
        Self {
            status: "200 OK",
            body,
        }
    }

    /// An error status with `{"error": message}`.
    pub fn error(status: &'static str, message: &str) -> Self {
        Self {
            status,
            body: serde_json::json!({ "error": message }).to_string(),
        }
    }
}

/// A JSON route: given the path (after the route prefix) and the request's
/// `Authorization` header, its answer.
pub type JsonRoute = Arc<dyn Fn(&str, Option<&str>) -> JsonAnswer + Send + Sync>;

/// Whether a process takes work now (`/readyz`): false while it starts, reconnects or
/// drains.
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

/// Errors of the HTTP endpoint.
#[derive(Debug, thiserror::Error)]
#[error("binding the metrics endpoint to {addr}: {source}")]
pub struct TelemetryError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// Serves `/metrics`, `/healthz` (200 while the process answers), `/readyz` (200 while
/// `ready` says so, else 503) and `prefix...` paths through `json` on `addr`; returns
/// the bound address. The server runs until the process exits.
pub async fn serve_http(
    addr: SocketAddr,
    json: Option<(&'static str, JsonRoute)>,
    ready: Readiness,
) -> Result<SocketAddr, TelemetryError> {
    recorder();
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| TelemetryError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| TelemetryError { addr, source })?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((socket, _)) => {
                    let json = json.clone();
                    let ready = ready.clone();
                    tokio::spawn(async move {
                        if let Err(e) = answer(socket, json, ready).await {
                            debug!(error = %e, "metrics request failed");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "metrics endpoint stopped accepting");
                    return;
                }
            }
        }
    });
    Ok(bound)
}

async fn answer(
    mut socket: tokio::net::TcpStream,
    json: Option<(&'static str, JsonRoute)>,
    ready: Readiness,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_BYTES {
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let authorization = head.lines().skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("authorization")
            .then(|| value.trim())
    });
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", render()),
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".into()),
        ("GET", "/readyz") if ready() => ("200 OK", "text/plain", "ready\n".into()),
        ("GET", "/readyz") => (
            "503 Service Unavailable",
            "text/plain",
            "not ready\n".into(),
        ),
        ("GET", p) => match &json {
            Some((prefix, route)) if p.starts_with(prefix) => {
                let answer = route(&p[prefix.len()..], authorization);
                (answer.status, "application/json", answer.body)
            }
            _ => ("404 Not Found", "text/plain", "not found\n".into()),
        },
        _ => ("405 Method Not Allowed", "text/plain", "only GET\n".into()),
    };
    let challenge = if status.starts_with("401") {
        "WWW-Authenticate: Basic realm=\"baton\"\r\n"
    } else {
        ""
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{challenge}Connection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(response.as_bytes()).await?;
    socket.shutdown().await
}
