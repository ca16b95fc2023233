//! Tables in an S3-compatible object store: a `moto` server started here holds the TPC-H
//! test data, and a cluster whose catalog names only `s3://` paths answers all 22 queries
//! as single-node DataFusion reading the same objects does.
//!
//! `.ci/run` installs `moto[server]` into `~/.cache/baton/venv`; elsewhere set
//! `BATON_MOTO_SERVER` to a `moto_server` executable. Without one the test says so and
//! passes without running.

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use baton::cluster::{ClusterConfig, LocalCluster};
use baton::object_stores::{S3Settings, build_store};
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;

/// A `moto_server` process, killed when dropped.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `moto_server` to run, if this machine has one.
fn moto_server() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("BATON_MOTO_SERVER") {
        return Some(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    let venv = home.join(".cache/baton/venv/bin/moto_server");
    venv.exists().then_some(venv)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends one HTTP request to `address` and returns the status line.
fn http(address: &str, method: &str, path: &str) -> Option<String> {
    let mut socket = std::net::TcpStream::connect(address).ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    socket.read_to_string(&mut response).ok()?;
    response.lines().next().map(str::to_string)
}

/// Starts a moto server on loopback and waits until it answers.
async fn start_moto(binary: &PathBuf) -> Moto {
    let port = free_port();
    let child = Command::new(binary)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    let address = format!("127.0.0.1:{port}");
    let moto = Moto {
        child,
        endpoint: format!("http://{address}"),
    };
    let up = common::eventually(Duration::from_secs(60), async || {
        http(&address, "GET", "/").is_some()
    })
    .await;
    assert!(up, "moto_server did not answer on {address}");
    moto
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpch_over_s3_matches_single_node_datafusion_reading_the_same_objects() {
    let Some(binary) = moto_server() else {
        eprintln!(
            "SKIPPED: no moto_server (install moto[server] into ~/.cache/baton/venv, or set \
             BATON_MOTO_SERVER)"
        );
        return;
    };
    let moto = start_moto(&binary).await;
    let address = moto.endpoint.trim_start_matches("http://").to_string();
    let created = http(&address, "PUT", "/tpch").unwrap_or_default();
    assert!(created.contains("200"), "creating the bucket: {created}");

    // The test data's parquet files, uploaded under s3://tpch/sf/.
    let settings = S3Settings {
        endpoint: Some(moto.endpoint.clone()),
        region: Some("us-east-1".into()),
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        session_token: None,
        allow_http: Some(true),
    };
    let bucket = url::Url::parse("s3://tpch/").unwrap();
    let store = build_store(&bucket, &settings).unwrap();
    let local = common::tpch_catalog();
    let dir = tempfile::tempdir().unwrap();
    let mut catalog = String::new();
    for table in baton::datagen::TPCH_TABLES {
        let file = local.with_file_name(format!("{table}.parquet"));
        let bytes = std::fs::read(&file).unwrap();
        store
            .put(
                &ObjectPath::from(format!("sf/{table}.parquet")),
                bytes.into(),
            )
            .await
            .unwrap();
        catalog.push_str(&format!(
            "[[table]]\nname = '{table}'\nformat = 'parquet'\npath = 's3://tpch/sf/{table}.parquet'\n\n"
        ));
    }
    catalog.push_str(&format!(
        "[object_store]\nendpoint = '{}'\nregion = 'us-east-1'\naccess_key_id = 'test'\n\
         secret_access_key = 'test'\nallow_http = true\n",
        moto.endpoint
    ));
    let catalog_path = dir.path().join("catalog.toml");
    std::fs::write(&catalog_path, catalog).unwrap();

    let mut config = ClusterConfig::with_catalog(2, 2, catalog_path.clone());
    // Exchanges on the small data too, so executors read the store and each other.
    config.scheduler.partition_data_bytes = 0;
    let cluster = LocalCluster::start(config).await.unwrap();
    let reference = common::single_node(&catalog_path).await;
    let mut client = cluster.client().await.unwrap();
    common::check_all_tpch(&mut client, &reference).await;

    // An object that is not there is a clear error, not an empty table.
    std::fs::write(
        dir.path().join("missing.toml"),
        format!(
            "[[table]]\nname = 'ghost'\nformat = 'parquet'\npath = 's3://tpch/sf/ghost.parquet'\n\
             columns = [['x', 'BIGINT']]\n[object_store]\nendpoint = '{}'\nregion = 'us-east-1'\n\
             access_key_id = 'test'\nsecret_access_key = 'test'\nallow_http = true\n",
            moto.endpoint
        ),
    )
    .unwrap();
    let ghost = common::single_node(&dir.path().join("missing.toml")).await;
    let frame = ghost.sql("select * from ghost").await.unwrap();
    let error = frame.collect().await.expect_err("a missing object");
    assert!(error.to_string().contains("does not exist"), "{error}");

    // `baton datagen --out s3://…` writes the data and a catalog there, and a cluster
    // reads both from the store (settings from the environment, as a deployment sets them).
    let baton = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(args)
            .env("AWS_ENDPOINT", &moto.endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ALLOW_HTTP", "true")
            .output()
            .unwrap()
    };
    let out = baton(&[
        "datagen",
        "tpch",
        "--scale",
        "0.01",
        "--out",
        "s3://tpch/gen",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sql = "select count(*) as n, sum(l_quantity) as q from lineitem";
    let out = baton(&[
        "sql",
        "--catalog",
        "s3://tpch/gen/catalog.toml",
        "--format",
        "csv",
        "-c",
        sql,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let want = common::rows(&common::expected(&reference, sql).await);
    let cells: Vec<String> = want[0]
        .iter()
        .map(|cell| match cell {
            common::Cell::Text(text) => text.clone(),
            common::Cell::Float(f) => f.to_string(),
        })
        .collect();
    assert_eq!(
        printed.lines().nth(1),
        Some(cells.join(",").as_str()),
        "{printed}"
    );
}
