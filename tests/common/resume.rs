//! What the scheduler restart and failover tests share: TPC-H queries submitted and each
//! awaited by a client of its own across the scheduler's death, their progress, and
//! their answers checked against single-node DataFusion.

use std::time::Duration;

use baton::client::{BatonClient, ClientError, QueryResult};
use baton::proto::QueryState;
use datafusion::prelude::SessionContext;
use tokio::task::JoinHandle;

/// A submitted TPC-H query and the client task awaiting its result.
pub struct Awaited {
    /// The TPC-H query number.
    pub number: u32,
    /// Its query id.
    pub id: String,
    result: JoinHandle<Result<QueryResult, ClientError>>,
}

/// Submits the TPC-H queries `numbers` through `client`; each result is awaited by a
/// client of its own connected to `address` (one or several, comma-separated).
pub async fn submit_awaited(
    client: &mut BatonClient,
    address: &str,
    numbers: &[u32],
) -> Vec<Awaited> {
    let mut awaited = Vec::new();
    for &number in numbers {
        let sql = baton::tpch::query(number).unwrap().sql;
        let id = client.submit_sql(sql).await.unwrap();
        let (address, query) = (address.to_string(), id.clone());
        let result = tokio::spawn(async move {
            let mut client = BatonClient::connect(&address).await.unwrap();
            client.fetch(&query).await
        });
        awaited.push(Awaited { number, id, result });
    }
    awaited
}

/// Tasks of the queries in all, those finished, and the queries not ended, by status.
pub async fn task_counts(client: &mut BatonClient, awaited: &[Awaited]) -> (u32, u32, usize) {
    let (mut total, mut done, mut unfinished) = (0, 0, 0);
    for query in awaited {
        let status = client.status(&query.id).await.unwrap();
        total += status.stages.iter().map(|s| s.tasks_total).sum::<u32>();
        done += status.stages.iter().map(|s| s.tasks_done).sum::<u32>();
        if status.state == QueryState::Running as i32 || status.state == QueryState::Queued as i32 {
            unfinished += 1;
        }
    }
    (total, done, unfinished)
}

/// Waits (2 minutes at most each) for every awaited result and checks it against
/// `reference`; a query that does not end fails with its status and `logs`.
pub async fn check_answers(
    client: &mut BatonClient,
    awaited: Vec<Awaited>,
    reference: &SessionContext,
    logs: impl Fn() -> String,
) {
    for query in awaited {
        let number = query.number;
        let Ok(result) = tokio::time::timeout(Duration::from_secs(120), query.result).await else {
            let status = client.status(&query.id).await.unwrap();
            panic!(
                "Q{number} never ended: {}\n{}",
                baton::scheduler::status_to_json(&status),
                logs()
            );
        };
        let result = result
            .unwrap()
            .unwrap_or_else(|e| panic!("Q{number}: {e}\n{}", logs()));
        let sql = baton::tpch::query(number).unwrap().sql;
        let want = super::expected(reference, sql).await;
        if let Err(diff) = super::compare(&want, &result.batches, super::is_ordered(sql)) {
            panic!("Q{number}: {diff}");
        }
    }
}
