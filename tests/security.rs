//! Authentication, ownership and TLS on a real cluster: every endpoint asks who calls,
//! a query belongs to the user who submitted it, and TLS carries it all.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_flight::Ticket;
use arrow_flight::sql::ProstMessageExt;
use baton::client::{BatonClient, ClientError, Credential, Login};
use baton::cluster::{ClusterConfig, LocalCluster};
use baton::proto::scheduler_service_client::SchedulerServiceClient;
use baton::proto::{ExecutorMessage, RegisterExecutor, executor_message};
use baton::security::{Dialer, TlsFlags, user_entry};
use baton::shuffle::fetch::flight_client;
use baton::telemetry;
use prost::Message;
use tonic::Code;

const SECRET: &str = "a-cluster-secret-for-the-tests-0123456789";
const COUNT_NATION: &str = "select count(*) as n from nation";

/// A users file with alice and bob (users) and root (admin); each password is the
/// name followed by "-password".
fn users_file(dir: &Path) -> PathBuf {
    let path = dir.join("users.toml");
    let text: String = [("alice", false), ("bob", false), ("root", true)]
        .iter()
        .map(|(name, admin)| user_entry(name, &format!("{name}-password"), *admin).unwrap())
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// A cluster with the test users and the test secret, over TLS with `tls` (cert, key,
/// CA) when given.
async fn secured_cluster(dir: &Path, tls: Option<&TlsFlags>) -> LocalCluster {
    let mut config = ClusterConfig::with_catalog(2, 2, common::tpch_catalog());
    config.scheduler.users = Some(users_file(dir));
    config.scheduler.cluster.cluster_secret = Some(SECRET.into());
    if let Some(tls) = tls {
        // Many partitions even for the small test data, so shuffles cross executors.
        config.scheduler.partition_data_bytes = 0;
        config.scheduler.cluster.tls = tls.clone();
    }
    LocalCluster::start(config).await.unwrap()
}

async fn login(cluster: &LocalCluster, user: &str) -> BatonClient {
    cluster
        .client_as(user, &format!("{user}-password"))
        .await
        .unwrap()
}

/// The code of a call that must have been refused.
fn refused<T: std::fmt::Debug>(result: Result<T, ClientError>) -> Code {
    let error = result.expect_err("the call was refused");
    error
        .code()
        .unwrap_or_else(|| panic!("no refusal: {error}"))
}

/// The single count a `select count(*)` answered.
async fn count(client: &mut BatonClient, sql: &str) -> i64 {
    let result = client.sql(sql).await.unwrap();
    let column = result.batches[0].column(0);
    datafusion::arrow::array::cast::as_primitive_array::<datafusion::arrow::datatypes::Int64Type>(
        column,
    )
    .value(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_endpoint_refuses_callers_without_valid_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = secured_cluster(dir.path(), None).await;
    let address = cluster.scheduler_address().to_string();
    let mut alice = login(&cluster, "alice").await;
    let id = alice.submit_sql(COUNT_NATION).await.unwrap();

    // The client API and the result endpoint, with no credentials and with a made-up
    // token; a wrong password does not log in.
    for credential in [Credential::Anonymous, Credential::Token("made-up".into())] {
        let login = Login {
            tls: None,
            credential,
        };
        let mut client = BatonClient::connect_as(&address, &login).await.unwrap();
        assert_eq!(
            refused(client.submit_sql(COUNT_NATION).await),
            Code::Unauthenticated
        );
        assert_eq!(refused(client.status(&id).await), Code::Unauthenticated);
        assert_eq!(refused(client.list().await), Code::Unauthenticated);
        assert_eq!(refused(client.cancel(&id).await), Code::Unauthenticated);
        assert_eq!(refused(client.tables(None).await), Code::Unauthenticated);
        assert_eq!(refused(client.fetch(&id).await), Code::Unauthenticated);
    }
    let wrong = cluster.client_as("alice", "bob-password").await;
    assert!(
        matches!(&wrong, Err(baton::cluster::ClusterError::Client(e)) if e.code() == Some(Code::Unauthenticated)),
        "{wrong:?}"
    );

    // The executor stream: a wrong secret is refused, and so is a user.
    let register = || ExecutorMessage {
        message: Some(executor_message::Message::Register(RegisterExecutor {
            executor_id: "impostor".into(),
            flight_address: "127.0.0.1:9".into(),
            slots: 4,
            preempt_slots: 0,
            held: Vec::new(),
        })),
    };
    let wrong_secret = Dialer::plain()
        .with_bearer("not-the-cluster-secret-at-all")
        .unwrap();
    let as_alice = Dialer::plain()
        .with_basic("alice", "alice-password")
        .unwrap();
    for (dialer, code) in [
        (wrong_secret, Code::Unauthenticated),
        (as_alice.clone(), Code::PermissionDenied),
    ] {
        let mut client = SchedulerServiceClient::new(dialer.connect(&address).await.unwrap());
        let status = client
            .connect(futures::stream::iter([register()]))
            .await
            .expect_err("a stream without the cluster secret is refused");
        assert_eq!(status.code(), code, "{status}");
    }
    // With the secret, a second executor under a connected one's id is refused too.
    let secret = Dialer::plain().with_bearer(SECRET).unwrap();
    let mut client = SchedulerServiceClient::new(secret.connect(&address).await.unwrap());
    let twin = ExecutorMessage {
        message: Some(executor_message::Message::Register(RegisterExecutor {
            executor_id: cluster.executors()[0].id().to_string(),
            flight_address: "127.0.0.1:9".into(),
            slots: 4,
            preempt_slots: 0,
            held: Vec::new(),
        })),
    };
    let status = client
        .connect(futures::stream::iter([twin]))
        .await
        .expect_err("a second registration under a connected executor's id is refused");
    assert_eq!(status.code(), Code::AlreadyExists, "{status}");
    assert_eq!(cluster.scheduler().executors().0, 2);

    // An executor's Flight endpoint serves only holders of the secret.
    let executor = cluster.executors()[0].flight_address().to_string();
    for dialer in [Dialer::plain(), as_alice] {
        let mut flight = flight_client(dialer.connect(&executor).await.unwrap());
        let status = flight
            .do_get(Ticket::new("anything"))
            .await
            .expect_err("a fetch without the secret is refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{status}");
    }

    // The HTTP query API: 401 without credentials, a user's own queries with them.
    let http = telemetry::serve_http(
        "127.0.0.1:0".parse().unwrap(),
        Some(("/api/queries", cluster.scheduler().queries_api())),
        Arc::new(|| true),
    )
    .await
    .unwrap();
    let basic = |user: &str| {
        use base64::Engine;
        let pair = format!("{user}:{user}-password");
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    };
    assert_eq!(common::http_get(http, "/api/queries", None).await.0, 401);
    assert_eq!(
        common::http_get(http, "/api/queries", Some("Bearer made-up"))
            .await
            .0,
        401
    );
    let (status, mine) = common::http_get(http, "/api/queries", Some(&basic("alice"))).await;
    assert_eq!(status, 200);
    assert!(
        mine.contains(&id) && mine.contains("\"owner\":\"alice\""),
        "{mine}"
    );
    let (status, theirs) = common::http_get(http, "/api/queries", Some(&basic("bob"))).await;
    assert_eq!((status, theirs.as_str()), (200, "[]"));
    let path = format!("/api/queries/{id}");
    assert_eq!(
        common::http_get(http, &path, Some(&basic("bob"))).await.0,
        404
    );

    // /metrics stays open and shows no SQL.
    let (status, metrics) = common::http_get(http, "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(!metrics.contains("nation"), "metrics carry SQL text");

    // After all that, alice's query answers right and the cluster takes the next one.
    let result = alice.fetch(&id).await.unwrap();
    assert_eq!(result.rows(), 1);
    assert_eq!(count(&mut alice, COUNT_NATION).await, 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_query_belongs_to_the_user_who_submitted_it() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = secured_cluster(dir.path(), None).await;
    let mut alice = login(&cluster, "alice").await;
    let mut bob = login(&cluster, "bob").await;
    let mut root = login(&cluster, "root").await;
    let id = alice.submit_sql(COUNT_NATION).await.unwrap();

    assert_eq!(refused(bob.status(&id).await), Code::PermissionDenied);
    assert_eq!(refused(bob.cancel(&id).await), Code::PermissionDenied);
    assert_eq!(refused(bob.fetch(&id).await), Code::PermissionDenied);
    assert!(bob.list().await.unwrap().iter().all(|q| q.query_id != id));

    // An admin sees every query; alice sees hers, owned by her.
    let status = root.status(&id).await.unwrap();
    assert_eq!(status.owner, "alice");
    assert!(root.list().await.unwrap().iter().any(|q| q.query_id == id));
    assert_eq!(alice.list().await.unwrap().len(), 1);

    // Bob's attempts took nothing from alice: her result is whole.
    let result = alice.fetch(&id).await.unwrap();
    let reference = common::single_node(&common::tpch_catalog()).await;
    let want = common::expected(&reference, COUNT_NATION).await;
    common::compare(&want, &result.batches, false).unwrap();

    // An admin may cancel another user's query.
    let long = alice
        .submit_sql("select count(*) from lineitem a, lineitem b where a.l_orderkey = b.l_orderkey")
        .await
        .unwrap();
    root.cancel(&long).await.unwrap();
    assert!(alice.fetch(&long).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_carries_logins_tasks_shuffles_and_results() {
    let dir = tempfile::tempdir().unwrap();
    let certificates = baton::security::throwaway(dir.path()).unwrap().tls;
    let ca = certificates.tls_ca.clone().unwrap();
    let cluster = secured_cluster(dir.path(), Some(&certificates)).await;
    let address = cluster.scheduler_address().to_string();

    // A user over TLS: a query whose stages shuffle between the two executors.
    let login = Login::password("alice", "alice-password", Some(&ca)).unwrap();
    let mut alice = BatonClient::connect_as(&address, &login).await.unwrap();
    let reference = common::single_node(&common::tpch_catalog()).await;
    let sql = common::GROUPED_LINEITEM;
    let result = alice.sql(sql).await.unwrap();
    let want = common::expected(&reference, sql).await;
    common::compare(&want, &result.batches, false).unwrap();
    let fetched: u64 = cluster.executors().iter().map(|e| e.bytes_fetched()).sum();
    assert!(fetched > 0, "no shuffle crossed executors");

    // Plain text is not spoken, and TLS without credentials is still refused.
    let plain = BatonClient::connect_as(
        &address,
        &Login {
            tls: None,
            credential: Credential::Password {
                user: "alice".into(),
                password: "alice-password".into(),
            },
        },
    )
    .await;
    assert!(plain.is_err(), "a plain-text client was served");
    let anonymous = Login {
        tls: login.tls.clone(),
        credential: Credential::Anonymous,
    };
    let mut anonymous = BatonClient::connect_as(&address, &anonymous).await.unwrap();
    assert_eq!(refused(anonymous.list().await), Code::Unauthenticated);

    // An executor's Flight endpoint wants a client certificate from the CA: a peer
    // that has the secret but no certificate is turned away.
    let executor = cluster.executors()[0].flight_address().to_string();
    let trusting = baton::security::client_trusting(&ca).unwrap();
    let no_certificate = Dialer::plain()
        .with_tls(Some(trusting))
        .with_bearer(SECRET)
        .unwrap();
    let fetched = async {
        let mut flight = flight_client(no_certificate.connect(&executor).await?);
        flight
            .do_get(Ticket::new("anything"))
            .await
            .map_err(|status| status.to_string())?;
        Ok::<_, Box<dyn std::error::Error>>(())
    }
    .await;
    assert!(fetched.is_err(), "a peer without a certificate fetched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sessions_settings_and_views_are_its_own() {
    let mut config = ClusterConfig::with_catalog(2, 2, common::tpch_catalog());
    config.scheduler.allow_ddl = true;
    let cluster = LocalCluster::start(config).await.unwrap();
    let mut first = cluster.client().await.unwrap();
    let mut second = cluster.client().await.unwrap();
    let column = async |client: &mut BatonClient| {
        let result = client.sql("select 1 as MixedCase").await.unwrap();
        result.schema.field(0).name().clone()
    };

    // A SET changes the session it ran in, and no other.
    first
        .sql("set datafusion.sql_parser.enable_ident_normalization = false")
        .await
        .unwrap();
    assert_eq!(column(&mut first).await, "MixedCase");
    assert_eq!(column(&mut second).await, "mixedcase");

    // A view is seen in its session only; the catalog's tables cannot be dropped.
    first
        .sql("create view asian as select * from nation where n_regionkey = 2")
        .await
        .unwrap();
    assert_eq!(count(&mut first, "select count(*) from asian").await, 5);
    let unseen = second.sql("select count(*) from asian").await.unwrap_err();
    assert!(unseen.to_string().contains("asian"), "{unseen}");
    let dropped = second.sql("drop table nation").await.unwrap_err();
    assert!(dropped.to_string().contains("cannot change"), "{dropped}");
    assert_eq!(count(&mut second, COUNT_NATION).await, 25);

    // Settings distributed plans keep off may be set, and the session shows them; its
    // queries answer as before (the planner's unit tests check they keep them off).
    let lineitem = "select count(*) from lineitem";
    let expected = count(&mut second, lineitem).await;
    for key in baton::config::DISTRIBUTED_SETTINGS {
        first.sql(&format!("set {key} = true")).await.unwrap();
        let shown = first.sql(&format!("show {key}")).await.unwrap();
        let shown = datafusion::arrow::util::pretty::pretty_format_batches(&shown.batches)
            .unwrap()
            .to_string();
        assert!(shown.contains("true"), "{shown}");
    }
    assert_eq!(count(&mut first, lineitem).await, expected);
}

/// A Flight SQL client logged in as `user` (the way ADBC logs in: a handshake with
/// HTTP Basic, then the token it answers).
async fn flight_sql(
    cluster: &LocalCluster,
    user: &str,
) -> arrow_flight::sql::client::FlightSqlServiceClient<baton::security::Connection> {
    let connection = Dialer::plain()
        .connect(cluster.scheduler_address())
        .await
        .unwrap();
    let mut client = arrow_flight::sql::client::FlightSqlServiceClient::new_from_inner(
        flight_client(connection),
    );
    client
        .handshake(user, &format!("{user}-password"))
        .await
        .unwrap();
    client
}

/// The rows of the result a FlightInfo describes.
async fn rows_of(
    client: &mut arrow_flight::sql::client::FlightSqlServiceClient<baton::security::Connection>,
    info: arrow_flight::FlightInfo,
) -> Vec<datafusion::arrow::array::RecordBatch> {
    use futures::TryStreamExt;
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    client
        .do_get(ticket)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prepared_statements_answer_as_their_literal_queries_do() {
    use datafusion::arrow::array::{Int64Array, RecordBatch};

    let dir = tempfile::tempdir().unwrap();
    let cluster = secured_cluster(dir.path(), None).await;
    let reference = common::single_node(&common::tpch_catalog()).await;
    let mut alice = flight_sql(&cluster, "alice").await;
    let mut statement = alice
        .prepare(
            "select n_name from nation where n_regionkey = $1 and n_nationkey > $2".into(),
            None,
        )
        .await
        .unwrap();
    let parameters: Vec<_> = statement
        .parameter_schema()
        .unwrap()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(parameters, ["$1", "$2"]);
    assert_eq!(
        statement.dataset_schema().unwrap().field(0).name(),
        "n_name"
    );

    // Bound twice with other values: each run answers as its literal query does.
    for (region, above) in [(1, 0), (3, 10)] {
        let values = RecordBatch::try_from_iter([
            (
                "$1",
                std::sync::Arc::new(Int64Array::from(vec![region])) as _,
            ),
            (
                "$2",
                std::sync::Arc::new(Int64Array::from(vec![above])) as _,
            ),
        ])
        .unwrap();
        statement.set_parameters(values).unwrap();
        let info = statement.execute().await.unwrap();
        let got = rows_of(&mut alice, info).await;
        let literal = format!(
            "select n_name from nation where n_regionkey = {region} and n_nationkey > {above}"
        );
        let want = common::expected(&reference, &literal).await;
        common::compare(&want, &got, false).unwrap();
    }

    // Bob cannot run alice's statement; once closed, alice cannot either.
    let handle = create_prepared(&mut alice, "select 1").await;
    let bob = flight_sql(&cluster, "bob").await;
    let as_bob = run_prepared(&cluster, bob.token().unwrap(), &handle).await;
    assert_eq!(as_bob.unwrap_err().code(), Code::PermissionDenied);
    let token = alice.token().unwrap().clone();
    assert!(run_prepared(&cluster, &token, &handle).await.is_ok());
    statement.close().await.unwrap();
    let close = arrow_flight::sql::ActionClosePreparedStatementRequest {
        prepared_statement_handle: handle.clone(),
    };
    alice
        .do_action(arrow_flight::Action::new(
            "ClosePreparedStatement",
            close.as_any().encode_to_vec(),
        ))
        .await
        .unwrap();
    let closed = run_prepared(&cluster, &token, &handle).await;
    assert_eq!(closed.unwrap_err().code(), Code::NotFound);
}

/// The handle of a prepared statement of `sql` that `client` creates.
async fn create_prepared(
    client: &mut arrow_flight::sql::client::FlightSqlServiceClient<baton::security::Connection>,
    sql: &str,
) -> bytes::Bytes {
    use futures::TryStreamExt;
    let create = arrow_flight::sql::ActionCreatePreparedStatementRequest {
        query: sql.into(),
        transaction_id: None,
    };
    let answers: Vec<arrow_flight::Result> = client
        .do_action(arrow_flight::Action::new(
            "CreatePreparedStatement",
            create.as_any().encode_to_vec(),
        ))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let any = arrow_flight::sql::Any::decode(answers[0].body.clone()).unwrap();
    any.unpack::<arrow_flight::sql::ActionCreatePreparedStatementResult>()
        .unwrap()
        .unwrap()
        .prepared_statement_handle
}

/// Runs the prepared statement `handle` with the login `token`.
async fn run_prepared(
    cluster: &LocalCluster,
    token: &str,
    handle: &bytes::Bytes,
) -> Result<tonic::Response<arrow_flight::FlightInfo>, tonic::Status> {
    let connection = Dialer::plain()
        .with_bearer(token)
        .unwrap()
        .connect(cluster.scheduler_address())
        .await
        .unwrap();
    let command = arrow_flight::sql::CommandPreparedStatementQuery {
        prepared_statement_handle: handle.clone(),
    };
    let descriptor = arrow_flight::FlightDescriptor::new_cmd(command.as_any().encode_to_vec());
    flight_client(connection).get_flight_info(descriptor).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_flight_info_gives_up_a_query_and_its_result() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = secured_cluster(dir.path(), None).await;
    let mut alice = flight_sql(&cluster, "alice").await;
    let info = alice.execute(COUNT_NATION.into(), None).await.unwrap();
    let cancel =
        |info: arrow_flight::FlightInfo| arrow_flight::CancelFlightInfoRequest { info: Some(info) };
    let mut bob = flight_sql(&cluster, "bob").await;
    let as_bob = bob
        .do_action(arrow_flight::Action::new(
            "CancelFlightInfo",
            cancel(info.clone()).encode_to_vec(),
        ))
        .await;
    assert!(as_bob.unwrap_err().to_string().contains("another user"));
    let answer = {
        use futures::TryStreamExt;
        let answers: Vec<arrow_flight::Result> = alice
            .do_action(arrow_flight::Action::new(
                "CancelFlightInfo",
                cancel(info.clone()).encode_to_vec(),
            ))
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        arrow_flight::CancelFlightInfoResult::decode(answers[0].body.clone()).unwrap()
    };
    assert_eq!(answer.status, arrow_flight::CancelStatus::Cancelled as i32);
    // Its result was freed: fetching it now says so.
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let fetched = async {
        use futures::TryStreamExt;
        alice.do_get(ticket).await?.try_collect::<Vec<_>>().await
    }
    .await;
    assert!(fetched.unwrap_err().to_string().contains("cancelled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_command_line_logs_in_with_the_password_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = secured_cluster(dir.path(), None).await;
    let address = cluster.scheduler_address().to_string();
    let baton = |args: &[&str], password: &str| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_baton"));
        command
            .args(args)
            .env("BATON_PASSWORD", password)
            .stdin(std::process::Stdio::null());
        command
    };
    let sql = [
        "sql",
        "--scheduler",
        &address,
        "--user",
        "alice",
        "--format",
        "csv",
        "-c",
    ];
    let run = |password: &str| {
        let mut args = sql.to_vec();
        args.push(COUNT_NATION);
        let mut command = baton(&args, password);
        async move {
            tokio::task::spawn_blocking(move || command.output().unwrap())
                .await
                .unwrap()
        }
    };
    let out = run("alice-password").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "n\n25\n");

    let wrong = run("not-her-password").await;
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("wrong password"), "{stderr}");

    // Without a login, `baton status` is turned away with the reason.
    let mut status = baton(&["status", "--scheduler", &address], "");
    let out = tokio::task::spawn_blocking(move || status.output().unwrap())
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("credentials are required"), "{stderr}");
}
