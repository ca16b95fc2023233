//! Reading shuffle partitions that live on other executors, over Arrow Flight `do_get`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_flight::Ticket;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use tokio::runtime::Handle;

use super::deadline::ProgressDeadline;
use super::store::ShuffleKey;
use crate::config::MAX_MESSAGE_BYTES;
use crate::ipc_types::conform;
use crate::proto::ShuffleTicket;
use crate::security::{Connection, DialError, Dialer};

/// A Flight client with Baton's message-size limits.
pub fn flight_client(connection: Connection) -> FlightServiceClient<Connection> {
    FlightServiceClient::new(connection)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// The Flight ticket that names one shuffle partition.
pub fn shuffle_ticket(key: &ShuffleKey) -> Ticket {
    let ticket = ShuffleTicket {
        query_id: key.query_id.to_string(),
        stage_id: key.stage_id,
        map_partition: key.map_partition,
        output_partition: key.output_partition,
    };
    Ticket::new(ticket.encode_to_vec())
}

/// How long a shuffle fetch may wait for its peer (to answer, or to send the next
/// message) unless told otherwise.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Flight connections to other executors, one multiplexed channel per address, opened
/// on first use. Counts the bytes it fetched.
#[derive(Debug, Clone, Default)]
pub struct FlightClients {
    channels: Arc<Mutex<HashMap<String, Connection>>>,
    dialer: Dialer,
    bytes_fetched: Arc<AtomicU64>,
    runtime: Option<Handle>,
    fetch_timeout: Option<Duration>,
}

impl FlightClients {
    /// Clients whose connections run on `runtime`, not on the runtime of the task that
    /// happens to open them first: an executor's connections then run on its main
    /// runtime, never on task threads busy with CPU-bound operators.
    pub fn on_runtime(runtime: Handle) -> Self {
        Self {
            runtime: Some(runtime),
            ..Self::default()
        }
    }

    /// The same clients, whose fetches fail once their peer is silent for `timeout`
    /// (default [`DEFAULT_FETCH_TIMEOUT`]) while they wait.
    pub fn with_fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = Some(timeout);
        self
    }

    /// The same clients, dialing as `dialer` says (TLS, the cluster secret).
    pub fn with_dialer(mut self, dialer: Dialer) -> Self {
        self.dialer = dialer;
        self
    }

    /// Bytes of Flight data fetched from other executors since start.
    pub fn bytes_fetched(&self) -> u64 {
        self.bytes_fetched.load(Ordering::Relaxed)
    }

    /// A Flight client for the executor at `address`, over a shared channel.
    pub async fn client(&self, address: &str) -> Result<FlightServiceClient<Connection>> {
        Ok(flight_client(self.channel(address).await?))
    }

    async fn channel(&self, address: &str) -> Result<Connection> {
        if let Some(channel) = self.channels.lock().expect("clients lock").get(address) {
            return Ok(channel.clone());
        }
        let channel = match &self.runtime {
            Some(runtime) => self.dialer.connect_on(address, runtime.clone()).await,
            None => self.dialer.connect(address).await.map_err(DialError::from),
        };
        let channel = channel.map_err(|e| {
            DataFusionError::Execution(format!("connecting to executor at {address}: {e}"))
        })?;
        self.channels
            .lock()
            .expect("clients lock")
            .insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    /// Streams one shuffle partition from the executor at `address`. Fails when the peer
    /// does not answer, or sends nothing for the fetch timeout while the stream is read.
    pub async fn fetch(
        &self,
        address: &str,
        key: &ShuffleKey,
        schema: SchemaRef,
    ) -> Result<SendableRecordBatchStream> {
        let fetch_error = |e: &dyn std::fmt::Display| {
            DataFusionError::Execution(format!(
                "fetching shuffle partition {key} from {address}: {e}"
            ))
        };
        let timeout = self.fetch_timeout.unwrap_or(DEFAULT_FETCH_TIMEOUT);
        let silent = || format!("no answer within {timeout:?}");
        let response = tokio::time::timeout(timeout, async {
            let mut client = self.client(address).await?;
            client
                .do_get(shuffle_ticket(key))
                .await
                .map_err(|e| fetch_error(&e))
        })
        .await
        .map_err(|_| fetch_error(&silent()))??;
        let counter = self.bytes_fetched.clone();
        let data = response.into_inner().map_ok(move |data| {
            counter.fetch_add(
                (data.data_body.len() + data.data_header.len()) as u64,
                Ordering::Relaxed,
            );
            metrics::counter!("baton_shuffle_bytes_read_total", "source" => "remote")
                .increment((data.data_body.len() + data.data_header.len()) as u64);
            data
        });
        let key_text = key.to_string();
        let address = address.to_string();
        let data = ProgressDeadline::new(data.map_err(FlightError::from), timeout, move || {
            FlightError::ExternalError(format!("nothing received for {timeout:?}").into())
        });
        // Batches arrive in their written form (`ipc_types`) and go on as declared.
        let declared = schema.clone();
        let batches = FlightRecordBatchStream::new_from_flight_data(data)
            .and_then(move |batch| {
                futures::future::ready(conform(batch, &declared).map_err(FlightError::from))
            })
            .map_err(move |e| {
                DataFusionError::Execution(format!(
                    "fetching shuffle partition {key_text} from {address}: {e}"
                ))
            });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            batches.boxed(),
        )))
    }
}

/// Shuffle output a task could not read from the executor holding it: that executor,
/// or its copy of the output, is gone, so the scheduler computes the output again
/// instead of failing the query.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct UnreadableOutput {
    /// The executor that held the output.
    pub executor_id: String,
    source: DataFusionError,
}

impl UnreadableOutput {
    /// `source`, a failure to read output held by `executor_id`, marked as such.
    pub fn wrap(executor_id: &str, source: DataFusionError) -> DataFusionError {
        DataFusionError::External(Box::new(Self {
            executor_id: executor_id.to_string(),
            source,
        }))
    }

    /// The executor whose output `error` (why a task failed) could not be read, when
    /// that is among its causes.
    pub fn executor_of(error: &DataFusionError) -> Option<&str> {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = cause {
            if let Some(unreadable) = e.downcast_ref::<Self>() {
                return Some(&unreadable.executor_id);
            }
            cause = e.source();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::error::ArrowError;

    use super::*;

    #[test]
    fn an_unreadable_output_is_found_under_the_layers_operators_add() {
        let unreadable = || {
            UnreadableOutput::wrap(
                "exec-b",
                DataFusionError::Execution("connection refused".into()),
            )
        };
        assert_eq!(UnreadableOutput::executor_of(&unreadable()), Some("exec-b"));
        // A join's shared build side, a context, an Arrow kernel's external error.
        let shared = DataFusionError::Shared(Arc::new(unreadable()));
        let context = DataFusionError::Context("joining".into(), Box::new(shared));
        let arrow = DataFusionError::ArrowError(
            Box::new(ArrowError::ExternalError(Box::new(context))),
            None,
        );
        assert_eq!(UnreadableOutput::executor_of(&arrow), Some("exec-b"));
        assert!(arrow.to_string().contains("connection refused"));
        let other = DataFusionError::Execution("division by zero".into());
        assert_eq!(UnreadableOutput::executor_of(&other), None);
    }
}
