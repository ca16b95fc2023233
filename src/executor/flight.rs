//! The executor's Flight endpoint: `do_get` on a [`ShuffleTicket`] streams one stored
//! shuffle partition.

use arrow_flight::Ticket;
use arrow_flight::error::FlightError;
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use tonic::Status;

use crate::flight_service::{FlightDataStream, FlightEndpoint, FlightHandler, encode_batches};
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
        let encoded = encode_batches(schema, batches)
            .map_ok(|data| {
                metrics::counter!("baton_flight_bytes_served_total", "endpoint" => "shuffle")
                    .increment(data.data_body.len() as u64);
                data
            })
            .map_err(Status::from);
        Ok(encoded.boxed())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use futures::{StreamExt, TryStreamExt};

    use super::*;
    use crate::shuffle::fetch::FlightClients;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fetches_left_unread_do_not_stall_the_others_on_their_channel() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShuffleStore::new(dir.path(), 1 << 30).unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let key = ShuffleKey {
            query_id: "q".into(),
            stage_id: 0,
            map_partition: 0,
            output_partition: 0,
        };
        // 8 MiB: more than a stream's flow-control window.
        let mut writer = store.writer(key.clone(), schema.clone());
        for _ in 0..128 {
            let values = Int64Array::from_iter_values(0..8192);
            let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(values)]).unwrap();
            writer.push(batch).unwrap();
        }
        store.commit(vec![writer.finish().unwrap()]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let service = arrow_flight::flight_service_server::FlightServiceServer::new(
            ShuffleFlight::new(store),
        );
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(crate::net::incoming(listener)),
        );

        // Three fetches take one batch and stop reading, as a suspended task's do.
        let clients = FlightClients::default();
        let mut stalled = Vec::new();
        for _ in 0..3 {
            let mut fetch = clients.fetch(&address, &key, schema.clone()).await.unwrap();
            fetch.next().await.unwrap().unwrap();
            stalled.push(fetch);
        }
        // Their unread data (up to a stream window each, 6 MiB in all) keeps arriving
        // while the next fetch reads: with a connection window smaller than that, it
        // ends up holding the whole window and the next fetch stalls.
        let whole = async {
            clients
                .fetch(&address, &key, schema.clone())
                .await
                .unwrap()
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
        };
        let batches = tokio::time::timeout(Duration::from_secs(30), whole)
            .await
            .expect("a fetch stalled behind unread ones on the same channel");
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 128 * 8192);
        drop(stalled);
        server.abort();
    }
}
