//! Helpers shared by the end-to-end tests: cached TPC-H data, result comparison
//! against single-node DataFusion, and waiting for a condition.
#![allow(dead_code)]

pub mod process;
pub mod resume;

use std::path::PathBuf;
use std::time::Duration;

use baton::catalog::{TableFormat, register_catalog};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Float32Type, Float64Type};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::{SessionConfig, SessionContext};

/// Checks `condition` until it holds (true) or `deadline` has passed (false, after one
/// last check). The one way tests wait for something another task or process does:
/// never a fixed sleep.
pub async fn eventually(deadline: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let until = tokio::time::Instant::now() + deadline;
    let mut pause = Duration::from_millis(5);
    while tokio::time::Instant::now() < until {
        if condition().await {
            return true;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
    condition().await
}

/// Scale factor of the test data.
pub const TEST_SCALE: f64 = 0.01;

/// The TPC-H SF 0.01 catalog, generated once into the test cache and reused.
pub fn tpch_catalog() -> PathBuf {
    tpch_catalog_as(TableFormat::Parquet)
}

/// [`tpch_catalog`] with its tables in `format`.
pub fn tpch_catalog_as(format: TableFormat) -> PathBuf {
    let cache = std::env::var_os("BATON_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("baton-test-cache"));
    baton::datagen::cached_tpch(&cache, TEST_SCALE, format).expect("generate TPC-H test data")
}

/// Single-node DataFusion over the same catalog.
pub async fn single_node(catalog: &std::path::Path) -> SessionContext {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
    register_catalog(&ctx, catalog)
        .await
        .expect("register catalog");
    ctx
}

/// What single-node DataFusion (`reference`) answers to `sql`.
pub async fn expected(reference: &SessionContext, sql: &str) -> Vec<RecordBatch> {
    let frame = reference.sql(sql).await.expect("plan on single node");
    frame.collect().await.expect("run on single node")
}

/// Whether `sql`'s result rows come in a defined order (the query sorts them), so that
/// results compare row by row rather than as sets.
pub fn is_ordered(sql: &str) -> bool {
    sql.to_lowercase().contains("order by")
}

/// One result cell, floats kept apart so they can be compared with a tolerance.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
pub enum Cell {
    /// A float value.
    Float(f64),
    /// Any other value as text.
    Text(String),
}

/// Rows of `batches` as cells.
pub fn rows(batches: &[RecordBatch]) -> Vec<Vec<Cell>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for batch in batches {
        let columns: Vec<_> = batch.columns().iter().collect();
        for row in 0..batch.num_rows() {
            out.push(
                columns
                    .iter()
                    .map(|col| cell(col.as_ref(), row, &options))
                    .collect(),
            );
        }
    }
    out
}

fn cell(col: &dyn Array, row: usize, options: &FormatOptions) -> Cell {
    if col.is_null(row) {
        return Cell::Text("NULL".into());
    }
    match col.data_type() {
        DataType::Float64 => Cell::Float(col.as_primitive::<Float64Type>().value(row)),
        DataType::Float32 => Cell::Float(col.as_primitive::<Float32Type>().value(row) as f64),
        _ => Cell::Text(
            ArrayFormatter::try_new(col, options)
                .expect("formatter")
                .value(row)
                .to_string(),
        ),
    }
}

fn cells_match(a: &Cell, b: &Cell) -> bool {
    match (a, b) {
        (Cell::Float(x), Cell::Float(y)) => {
            x == y || (x - y).abs() <= 1e-9_f64.max(1e-6 * x.abs().max(y.abs()))
        }
        _ => a == b,
    }
}

/// Compares two results: same rows (floats within a relative tolerance), in the same
/// order when `ordered`, as multisets otherwise. Returns a description of the first
/// difference.
pub fn compare(
    expected: &[RecordBatch],
    actual: &[RecordBatch],
    ordered: bool,
) -> Result<(), String> {
    let mut want = rows(expected);
    let mut got = rows(actual);
    if want.len() != got.len() {
        return Err(format!(
            "{} rows expected, {} returned",
            want.len(),
            got.len()
        ));
    }
    if !ordered {
        let key = |r: &Vec<Cell>| format!("{r:?}");
        want.sort_by_key(key);
        got.sort_by_key(key);
    }
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        if w.len() != g.len() || !w.iter().zip(g).all(|(a, b)| cells_match(a, b)) {
            return Err(format!("row {i}: expected {w:?}, got {g:?}"));
        }
    }
    Ok(())
}

/// Runs all 22 TPC-H queries through `client` and checks each against `reference`.
pub async fn check_all_tpch(client: &mut baton::client::BatonClient, reference: &SessionContext) {
    for query in baton::tpch::QUERIES {
        let result = client.sql(query.sql).await.unwrap();
        let want = expected(reference, query.sql).await;
        if let Err(diff) = compare(&want, &result.batches, is_ordered(query.sql)) {
            panic!("Q{}: {diff}", query.number);
        }
    }
}

/// Waits until the first stage of query `id` has finished some of its tasks and every
/// other one of them runs on `frozen` (an executor the test stopped), so that the rest
/// of the query needs the output the other executors hold.
pub async fn first_stage_waits_on(
    client: &mut baton::client::BatonClient,
    id: &str,
    frozen: &str,
) -> bool {
    eventually(Duration::from_secs(10), async || {
        let status = client.status(id).await.unwrap();
        let first = &status.stages[0];
        first.tasks_done >= 1
            && first.tasks_done + first.tasks_running == first.tasks_total
            && first.running.iter().all(|r| r.executor_id == frozen)
    })
    .await
}

/// A query whose first stage scans `lineitem` and whose later stages read that stage's
/// shuffle output: the fault tests freeze or cut executors between the two.
pub const GROUPED_LINEITEM: &str = "select l_returnflag, l_linestatus, sum(l_quantity) as qty, \
     count(*) as n from lineitem group by l_returnflag, l_linestatus \
     order by l_returnflag, l_linestatus";

/// The Prometheus text of the metrics endpoint at `address` (host:port); empty while
/// nothing answers there.
pub fn scrape_metrics(address: &str) -> String {
    use std::io::{Read, Write};
    let Ok(socket_address) = address.parse() else {
        return String::new();
    };
    let Ok(mut socket) =
        std::net::TcpStream::connect_timeout(&socket_address, Duration::from_secs(1))
    else {
        return String::new();
    };
    let _ = socket.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    let mut response = String::new();
    if socket.write_all(request.as_bytes()).is_err()
        || socket.read_to_string(&mut response).is_err()
    {
        return String::new();
    }
    response
}

/// Fetches query `id` and checks that it succeeded (its error shown otherwise) with the
/// rows `reference` answers to `sql`, in order.
pub async fn expect_fetched(
    client: &mut baton::client::BatonClient,
    id: &str,
    reference: &SessionContext,
    sql: &str,
) {
    let result = client.fetch(id).await;
    let status = client.status(id).await.unwrap();
    assert_eq!(
        status.state,
        baton::proto::QueryState::Succeeded as i32,
        "{}",
        status.error
    );
    let want = expected(reference, sql).await;
    compare(&want, &result.unwrap().batches, true).unwrap();
}

/// A GET of `path` on the HTTP endpoint at `addr`, with an `Authorization` header when
/// given; the status code and the body.
pub async fn http_get(
    addr: std::net::SocketAddr,
    path: &str,
    authorization: Option<&str>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let header = authorization.map_or(String::new(), |value| format!("Authorization: {value}\r\n"));
    socket
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{header}\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}
